//! The `trace` command (tools/trace) against the real Jaeger of the native stack: an
//! order placed through the three service processes, its trace read back by the command
//! as a person would run it (`JAEGER_QUERY_URL=… trace <trace_id> --html FILE`), the
//! printed tree checked line by line, and the command's answers when the trace or Jaeger
//! is not there. `scripts/test` runs it; a plain `cargo test` skips it.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Output};

use support::free_ports;
use support::native::{
    Services, StackEnv, bin_dir, http_client, place_order, wait_for_spans, wait_until_final,
};

/// Runs the `trace` binary `cargo build` made, with only `JAEGER_QUERY_URL` set.
fn trace_command(jaeger: &str, args: &[&str]) -> Output {
    Command::new(bin_dir().join("trace"))
        .env_clear()
        .env("JAEGER_QUERY_URL", jaeger)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin_dir().join("trace").display()))
}

#[test]
#[ignore = "needs the native stack: run scripts/test"]
fn the_trace_command_prints_a_real_orders_tree_and_writes_its_waterfall() {
    let stack = StackEnv::from_env();
    let (runtime, http) = http_client();
    let services = Services::start(&stack, "trace-tool", &runtime);
    let (gateway, topic) = (services.gateway_url.clone(), services.topic.clone());

    // Order 2 of the real-stack test's series: no caller traceparent, no baggage.
    let order = runtime.block_on(place_order(&http, &gateway, 2));
    assert_eq!(
        runtime.block_on(wait_until_final(&http, &gateway, &order)),
        "FULFILLED"
    );
    wait_for_spans(&runtime, &http, &stack.jaeger, &order.trace_id, 11);

    let html = services.dir.join("trace.html");
    let output = trace_command(
        &stack.jaeger,
        &[&order.trace_id, "--html", html.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "trace {}: 11 spans from 3 services (gateway, order-service, worker), ",
            order.trace_id
        )),
        "{stdout}"
    );
    // The README's tree: (service, tree and name, kind), one line each, in this order.
    let send = format!("send {topic}");
    let process = format!("process {topic}");
    let expected = [
        ("gateway", "POST /api/orders".to_owned(), "SERVER"),
        (
            "gateway",
            "└─ order.v1.OrderService/CreateOrder".to_owned(),
            "CLIENT",
        ),
        (
            "order-service",
            "   └─ order.v1.OrderService/CreateOrder".to_owned(),
            "SERVER",
        ),
        (
            "order-service",
            "      ├─ INSERT orders".to_owned(),
            "CLIENT",
        ),
        ("order-service", format!("      └─ {send}"), "PRODUCER"),
        ("worker", format!("         └─ {process}"), "CONSUMER"),
        (
            "worker",
            "            ├─ reserve stock".to_owned(),
            "INTERNAL",
        ),
        (
            "worker",
            "            ├─ charge payment".to_owned(),
            "INTERNAL",
        ),
        (
            "worker",
            "            └─ order.v1.OrderService/CompleteOrder".to_owned(),
            "CLIENT",
        ),
        (
            "order-service",
            "               └─ order.v1.OrderService/CompleteOrder".to_owned(),
            "SERVER",
        ),
        (
            "order-service",
            "                  └─ UPDATE orders".to_owned(),
            "CLIENT",
        ),
    ];
    assert_eq!(lines.len(), 2 + expected.len() + 1, "{stdout}");
    // The two spawned steps start at the same moment: either may print first.
    let steps_swapped = lines[8].contains("charge payment");
    for (n, (service, tree, kind)) in expected.iter().enumerate() {
        let n = match n {
            6 | 7 if steps_swapped => 13 - n,
            n => n,
        };
        let line = lines[2 + n];
        assert!(
            line.contains(&format!("  {service:<13}  {tree} ")),
            "line {n} should show {service} {tree:?}:\n{stdout}"
        );
        assert!(line.contains(&format!(" {kind} ")), "{kind}: {line}");
        assert!(!line.contains("ERROR"), "{line}");
    }
    assert!(lines[2].trim_start().starts_with("0.00 ms"), "{stdout}");
    assert!(
        lines[2].contains("http.response.status_code=201"),
        "{stdout}"
    );
    assert!(
        lines[7].contains(&format!("link→ {send} (order-service)")),
        "{stdout}"
    );
    assert_eq!(
        lines[13],
        format!("waterfall written to {}", html.display())
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains(&order.trace_id));
    assert_eq!(page.matches("class=\"bar").count(), 11);

    // A trace Jaeger does not have, and a Jaeger that is not there: exit 1, and why.
    let missing = trace_command(&stack.jaeger, &["4bf92f3577b34da6a3ce929d0e0e4736"]);
    assert_eq!(missing.status.code(), Some(1));
    let message = String::from_utf8_lossy(&missing.stderr);
    assert!(
        message.contains("trace 4bf92f3577b34da6a3ce929d0e0e4736 not found in Jaeger"),
        "{message}"
    );
    let nowhere = format!("http://127.0.0.1:{}", free_ports(1)[0]);
    let unreachable = trace_command(&nowhere, &[&order.trace_id]);
    assert_eq!(unreachable.status.code(), Some(1));
    let message = String::from_utf8_lossy(&unreachable.stderr);
    assert!(
        message.contains(&format!("cannot reach Jaeger at {nowhere}")),
        "{message}"
    );
    let bad = trace_command(&stack.jaeger, &["not-a-trace"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a trace id"));

    services.stop();
}
