//! The tree and the waterfall of traces captured from a real run (the native stack:
//! Kafka, Collector, Jaeger 2.13 and the three services, `FAULT_INJECTION=baggage`),
//! stored as Jaeger's `/api/v3/traces/{id}` answered them.

#![allow(clippy::unwrap_used)]

use trace::Trace;
use trace::model::{Kind, Status};

const FULFILLED: &str = include_str!("fixtures/fulfilled.json");
const STOCK_OUT: &str = include_str!("fixtures/stock_out.json");
const UNAVAILABLE: &str = include_str!("fixtures/order_service_unavailable.json");

/// (service, tree prefix + name, kind) of each row, in print order.
fn shape(trace: &Trace) -> Vec<(String, String, &'static str)> {
    trace
        .rows()
        .iter()
        .map(|row| {
            let span = &trace.spans[row.span];
            (
                span.service.clone(),
                format!("{}{}", row.prefix, span.name),
                span.kind.as_str(),
            )
        })
        .collect()
}

fn row(service: &str, name: &str, kind: &'static str) -> (String, String, &'static str) {
    (service.to_owned(), name.to_owned(), kind)
}

#[test]
fn a_fulfilled_order_is_the_readmes_tree() {
    let trace = Trace::from_jaeger(FULFILLED).unwrap();
    assert_eq!(trace.trace_id, "4edc19819a9c44f20246707d5af19b36");
    assert_eq!(trace.services(), ["gateway", "order-service", "worker"]);
    assert_eq!(
        shape(&trace),
        [
            row("gateway", "POST /api/orders", "SERVER"),
            row("gateway", "└─ order.v1.OrderService/CreateOrder", "CLIENT"),
            row(
                "order-service",
                "   └─ order.v1.OrderService/CreateOrder",
                "SERVER"
            ),
            row("order-service", "      ├─ INSERT orders", "CLIENT"),
            row("order-service", "      └─ send orders-fixture", "PRODUCER"),
            row("worker", "         └─ process orders-fixture", "CONSUMER"),
            row("worker", "            ├─ reserve stock", "INTERNAL"),
            row("worker", "            ├─ charge payment", "INTERNAL"),
            row(
                "worker",
                "            └─ order.v1.OrderService/CompleteOrder",
                "CLIENT"
            ),
            row(
                "order-service",
                "               └─ order.v1.OrderService/CompleteOrder",
                "SERVER"
            ),
            row(
                "order-service",
                "                  └─ UPDATE orders",
                "CLIENT"
            ),
        ]
    );
    assert!(trace.spans.iter().all(|s| !s.is_error()));
}

#[test]
fn the_text_shows_offsets_durations_status_key_attributes_and_links() {
    let trace = Trace::from_jaeger(FULFILLED).unwrap();
    let text = trace::text::render(&trace, false);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "trace 4edc19819a9c44f20246707d5af19b36: 11 spans from 3 services (gateway, order-service, worker), {}",
            trace::text::duration(trace.duration_ns())
        )
    );
    assert_eq!(lines.len(), 2 + 11, "{text}");
    let root = lines[2];
    assert!(root.trim_start().starts_with("0.00 ms "), "{root}");
    assert!(root.contains("http.response.status_code=201"), "{root}");
    let consumer = lines
        .iter()
        .find(|l| l.contains("process orders-fixture"))
        .unwrap();
    assert!(
        consumer.contains("link→ send orders-fixture (order-service)"),
        "{consumer}"
    );
    assert!(consumer.contains("messaging.kafka.offset="), "{consumer}");
    let client = lines[3];
    assert!(client.contains("rpc.response.status_code=OK"), "{client}");
    assert!(
        !client.contains("server.port"),
        "only key attributes: {client}"
    );
    // Each line's offset and duration are the span's own.
    let span = &trace.spans[trace.rows()[1].span];
    assert!(
        client.contains(&trace::text::duration(span.duration_ns())),
        "{client}"
    );
    assert!(
        client.contains(&trace::text::duration(span.start_ns - trace.start_ns())),
        "{client}"
    );

    let all = trace::text::render(&trace, true);
    assert!(
        all.lines().nth(3).unwrap().contains("server.port="),
        "{all}"
    );
}

#[test]
fn an_injected_stock_out_shows_on_the_step_it_failed() {
    let trace = Trace::from_jaeger(STOCK_OUT).unwrap();
    let reserve = trace
        .spans
        .iter()
        .find(|s| s.name == "reserve stock")
        .unwrap();
    assert_eq!(reserve.kind, Kind::Internal);
    assert_eq!(
        reserve.status,
        Status::Error("out of stock: asked for by baggage demo.fault=stock_out".into())
    );
    assert_eq!(reserve.attribute("demo.fault"), Some("stock_out"));
    let text = trace::text::render(&trace, false);
    let line = text.lines().find(|l| l.contains("reserve stock")).unwrap();
    assert!(line.contains(" ERROR "), "{line}");
    assert!(line.contains("demo.fault=stock_out"), "{line}");
    assert!(line.contains("error.type=out_of_stock"), "{line}");
    assert!(
        line.contains("\"out of stock: asked for by baggage demo.fault=stock_out\""),
        "{line}"
    );
    let charge = text.lines().find(|l| l.contains("charge payment")).unwrap();
    assert!(!charge.contains("ERROR"), "{charge}");
}

#[test]
fn an_injected_outage_stops_the_trace_at_the_order_service() {
    let trace = Trace::from_jaeger(UNAVAILABLE).unwrap();
    assert_eq!(
        shape(&trace),
        [
            row("gateway", "POST /api/orders", "SERVER"),
            row("gateway", "└─ order.v1.OrderService/CreateOrder", "CLIENT"),
            row(
                "order-service",
                "   └─ order.v1.OrderService/CreateOrder",
                "SERVER"
            ),
        ]
    );
    assert!(trace.spans.iter().all(|s| s.is_error()));
    let server = &trace.spans[trace.rows()[2].span];
    assert_eq!(
        server.attribute("demo.fault"),
        Some("order_service_unavailable")
    );
    assert_eq!(
        server.attribute("rpc.response.status_code"),
        Some("UNAVAILABLE")
    );
}

#[test]
fn the_waterfall_is_one_self_contained_file_with_a_bar_per_span() {
    let trace = Trace::from_jaeger(STOCK_OUT).unwrap();
    let html = trace::html::render(&trace);
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.trim_end().ends_with("</html>"));
    for external in ["src=", "href=", "url(", "@import", "<script", "<link"] {
        assert!(!html.contains(external), "{external} in the page");
    }
    assert_eq!(html.matches("<details>").count(), 11);
    assert_eq!(html.matches("class=\"bar").count(), 11);
    assert_eq!(html.matches("class=\"bar error\"").count(), 1);
    for span in &trace.spans {
        assert!(html.contains(&span.name), "{}", span.name);
        assert!(html.contains(&span.span_id), "{}", span.span_id);
    }
    assert!(html.contains("demo.fault"));
    assert!(html.contains("ERROR: out of stock: asked for by baggage demo.fault=stock_out"));
    assert!(html.contains("link</td><td class=\"mono\">send orders-fixture (order-service)"));
}

#[test]
fn a_span_whose_parent_is_missing_is_a_root_of_its_own() {
    // The gateway's spans arrive a moment after the others: until then the
    // order-service's SERVER span has no parent in the trace.
    let without_gateway = {
        let mut answer: serde_json::Value = serde_json::from_str(FULFILLED).unwrap();
        let resources = answer["result"]["resourceSpans"].as_array_mut().unwrap();
        resources.retain(|r| !r.to_string().contains("\"stringValue\":\"gateway\""));
        answer.to_string()
    };
    let trace = Trace::from_jaeger(&without_gateway).unwrap();
    let rows = trace.rows();
    assert_eq!(rows.len(), 9);
    assert_eq!(
        trace.spans[rows[0].span].name,
        "order.v1.OrderService/CreateOrder"
    );
    assert_eq!(rows[0].depth, 0);
}

#[test]
fn answers_in_several_chunks_are_one_trace_and_no_spans_is_an_error() {
    let answer: serde_json::Value = serde_json::from_str(FULFILLED).unwrap();
    let chunks: String = answer["result"]["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::json!({"result": {"resourceSpans": [r]}}).to_string() + "\n")
        .collect();
    assert_eq!(Trace::from_jaeger(&chunks).unwrap().spans.len(), 11);
    assert!(Trace::from_jaeger(r#"{"result":{"resourceSpans":[]}}"#).is_err());
    assert!(Trace::from_jaeger("{\"error\":{}}").is_err());
    assert!(Trace::from_jaeger("<html>").is_err());
}
