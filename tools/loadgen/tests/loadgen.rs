//! loadgen against a tiny in-process stand-in for the gateway, on port 0: the mix it
//! sends, the orders it tracks (and loses), its open loop, and its client spans. Every
//! assertion is on counts; none on timing.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use clap::Parser as _;
use loadgen::{Args, Summary, run};
use opentelemetry::trace::SpanKind;
use serde_json::{Value, json};
use telemetry::testing::{CapturedService, attribute};
use tokio_util::sync::CancellationToken;

/// The gateway's order API, as far as loadgen can tell: an order is PENDING on its
/// first read and final on the second (FAILED for an `OOS-` SKU or over 100 units, as
/// the demo does), unless `finish` is off.
#[derive(Default)]
struct FakeGateway {
    finish: bool,
    orders: Mutex<HashMap<String, (bool, u32)>>,
    next_id: AtomicU64,
    /// Trace ids of the `traceparent` headers received.
    traceparents: Mutex<Vec<String>>,
}

async fn create(
    State(gateway): State<Arc<FakeGateway>>,
    headers: HeaderMap,
    Json(order): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let trace_id = traceparent.split('-').nth(1).unwrap_or_default().to_owned();
        gateway.traceparents.lock().unwrap().push(trace_id);
    }
    let item = &order["items"][0];
    let fails = item["sku"].as_str().unwrap().starts_with("OOS-")
        || item["quantity"].as_i64().unwrap() > 100;
    let id = format!("order-{}", gateway.next_id.fetch_add(1, Ordering::Relaxed));
    gateway
        .orders
        .lock()
        .unwrap()
        .insert(id.clone(), (fails, 0));
    (
        StatusCode::CREATED,
        Json(json!({"order_id": id, "status": "PENDING", "trace_id": format!("{:032x}", 7)})),
    )
}

async fn read(
    State(gateway): State<Arc<FakeGateway>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, StatusCode> {
    let mut orders = gateway.orders.lock().unwrap();
    let (fails, reads) = orders.get_mut(&id).ok_or(StatusCode::NOT_FOUND)?;
    *reads += 1;
    let status = match (gateway.finish && *reads > 1, *fails) {
        (false, _) => "PENDING",
        (true, false) => "FULFILLED",
        (true, true) => "FAILED",
    };
    Ok(Json(json!({"order_id": id, "status": status})))
}

/// Serves the fake on a port of its own; returns its base URL.
async fn serve(gateway: Arc<FakeGateway>) -> String {
    let app = Router::new()
        .route("/api/orders", post(create))
        .route("/api/orders/{id}", get(read))
        .with_state(gateway);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Bound before the load starts, so the first connection waits in the backlog.
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn args(target: &str, flags: &[&str]) -> Args {
    let mut argv = vec!["loadgen", "--target", target, "--no-progress"];
    argv.extend_from_slice(flags);
    Args::try_parse_from(argv).unwrap()
}

async fn load(target: &str, flags: &[&str], traced: bool) -> Summary {
    run(&args(target, flags), traced, CancellationToken::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn sends_the_mix_asked_for_and_follows_every_order_to_its_end() {
    let gateway = Arc::new(FakeGateway {
        finish: true,
        ..Default::default()
    });
    let target = serve(gateway.clone()).await;
    // One connection: each read comes after the creates before it, so the counts are exact.
    let flags = [
        "--connections",
        "1",
        "--requests",
        "50",
        "--read-ratio",
        "0.2",
        "--fail-ratio",
        "0.1",
        "--track-orders",
        "--poll-interval",
        "1ms",
    ];
    let summary = load(&target, &flags, false).await;

    assert_eq!((summary.create.count, summary.read.count), (40, 10));
    assert_eq!(summary.create.status_codes, [("201".to_owned(), 40)].into());
    assert_eq!(summary.read.status_codes, [("200".to_owned(), 10)].into());
    assert_eq!(summary.errors, 0);
    let orders = summary.orders.as_ref().unwrap();
    assert_eq!(
        (orders.created, orders.fulfilled, orders.failed, orders.lost),
        (40, 36, 4, 0)
    );
    assert!(orders.unexpected.is_empty(), "{:?}", orders.unexpected);
    let polls = summary.poll.as_ref().unwrap().count;
    assert_eq!(summary.http_requests, 50 + polls);
    assert_eq!(summary.mode, "closed");
    assert!(!summary.traced && gateway.traceparents.lock().unwrap().is_empty());
    // The figures a script reads, and the table a person reads.
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["orders"]["final"], 40);
    assert!(loadgen::render(&summary).contains("| POST /api/orders | 40 |"));
}

#[tokio::test]
async fn an_order_never_final_by_its_deadline_is_lost_and_named() {
    let gateway = Arc::new(FakeGateway {
        finish: false,
        ..Default::default()
    });
    let target = serve(gateway).await;
    let flags = [
        "--connections",
        "1",
        "--requests",
        "3",
        "--track-orders",
        "--track-deadline",
        "50ms",
        "--poll-interval",
        "10ms",
    ];
    let summary = load(&target, &flags, false).await;

    let orders = summary.orders.unwrap();
    assert_eq!(
        (
            orders.created,
            orders.lost,
            orders.fulfilled + orders.failed
        ),
        (3, 3, 0)
    );
    let lost: HashSet<&str> = orders
        .lost_orders
        .iter()
        .map(|l| l.order_id.as_str())
        .collect();
    assert_eq!(lost, HashSet::from(["order-0", "order-1", "order-2"]));
    assert!(
        orders
            .lost_orders
            .iter()
            .all(|l| l.last_seen == "PENDING" && l.trace_id.is_some())
    );
}

#[tokio::test]
async fn a_refused_connection_is_an_error_with_its_cause() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let summary = load(&target, &["--connections", "2", "--requests", "5"], false).await;

    assert_eq!(
        summary.create.status_codes,
        [("connect".to_owned(), 5)].into()
    );
    assert_eq!(summary.errors, 5);
}

#[test]
fn open_loop_sends_each_request_as_a_client_span_of_its_own() {
    let client = CapturedService::new("loadgen");
    let runtime = client.runtime().unwrap();
    let gateway = Arc::new(FakeGateway {
        finish: true,
        ..Default::default()
    });
    let summary = runtime.block_on(async {
        let target = serve(gateway.clone()).await;
        // A long window: the run ends when the 20 requests are answered, never by overflow.
        let flags = ["--rate", "200", "--requests", "20", "--duration", "60s"];
        load(&target, &flags, true).await
    });

    let open = summary.open_loop.as_ref().unwrap();
    assert_eq!((open.scheduled, open.sent, open.overflow), (20, 20, 0));
    assert_eq!(summary.create.status_codes, [("201".to_owned(), 20)].into());
    let spans: Vec<_> = client
        .spans()
        .into_iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    assert_eq!(spans.len(), 20);
    for span in &spans {
        assert_eq!(span.name, "POST");
        assert_eq!(
            attribute(span, "http.response.status_code").as_deref(),
            Some("201")
        );
        assert_eq!(
            span.parent_span_id,
            opentelemetry::trace::SpanId::INVALID,
            "a root each"
        );
    }
    // Each request carried its own span's context to the gateway.
    let sent: HashSet<String> = gateway
        .traceparents
        .lock()
        .unwrap()
        .iter()
        .cloned()
        .collect();
    let traced: HashSet<String> = spans
        .iter()
        .map(|s| s.span_context.trace_id().to_string())
        .collect();
    assert_eq!(sent.len(), 20);
    assert_eq!(sent, traced);
}
