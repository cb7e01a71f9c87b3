//! The gateway's answers to bad input, through the real router and HTTP server layer
//! (`oneshot`, no socket). The order-service address points nowhere, so any request
//! that passed validation would get a 503: a 4xx here proves the gateway itself
//! answered.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use gateway::router;
use lifecycle::health::Readiness;
use opentelemetry::trace::SpanKind;
use proto::client::{ClientConfig, OrderClient};
use serde_json::{Value, json};
use telemetry::testing::CapturedService;
use tower::ServiceExt;

const MAX_BODY: usize = 1024;

/// Port 1 on loopback: nothing listens there, so calls fail fast with UNAVAILABLE.
fn unreachable_client() -> OrderClient {
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::for_url("http://127.0.0.1:1")
    };
    proto::client::connect(&config).unwrap().client
}

async fn call(request: Request<Body>) -> (StatusCode, Value, Option<String>) {
    let config = gateway::Config {
        max_body_bytes: MAX_BODY,
        ..gateway::Config::from_env(&|_: &str| None).unwrap()
    };
    let app = router(unreachable_client(), &config, Readiness::default());
    let response = app.oneshot(request).await.expect("infallible");
    let status = response.status();
    let traceresponse = response
        .headers()
        .get("traceresponse")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body, traceresponse)
}

fn post_json(body: impl Into<Body>) -> Request<Body> {
    Request::post("/api/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

fn valid_order() -> Value {
    json!({"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 1}]})
}

/// Runs `request` with spans captured, and checks the error body and the server span.
async fn expect_error(request: Request<Body>, status: StatusCode, code: &str) {
    let capture = CapturedService::new("gateway");
    let _guard = tracing::dispatcher::set_default(capture.dispatch());
    let (actual, body, traceresponse) = call(request).await;
    assert_eq!(actual, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    let trace_id = body["trace_id"]
        .as_str()
        .expect("trace_id in the error body");
    assert!(
        traceresponse
            .expect("traceresponse header")
            .contains(trace_id)
    );

    let spans = capture.spans();
    let server = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .expect("a server span");
    let recorded = server
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "http.response.status_code")
        .map(|kv| kv.value.clone());
    assert_eq!(
        recorded,
        Some(opentelemetry::Value::I64(i64::from(status.as_u16())))
    );
    // Only server-side failures mark the span as an error.
    let is_error = matches!(server.status, opentelemetry::trace::Status::Error { .. });
    assert_eq!(
        is_error,
        status.is_server_error(),
        "span status for {status}"
    );
}

#[tokio::test]
async fn malformed_json_is_400() {
    expect_error(
        post_json("{\"customer_id\": "),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
    .await;
}

#[tokio::test]
async fn missing_and_unknown_fields_are_400() {
    expect_error(
        post_json(r#"{"items": []}"#),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    let mut extra = valid_order();
    extra["coupon"] = json!("FREE");
    expect_error(
        post_json(extra.to_string()),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
    expect_error(
        post_json(r#"{"customer_id": "c", "items": [{"sku": "A", "quantity": "two"}]}"#),
        StatusCode::BAD_REQUEST,
        "invalid_body",
    )
    .await;
}

#[tokio::test]
async fn empty_items_and_non_positive_quantities_are_400() {
    expect_error(
        post_json(r#"{"customer_id": "c", "items": []}"#),
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    for quantity in [0, -1] {
        let body = json!({"customer_id": "c", "items": [{"sku": "A", "quantity": quantity}]});
        expect_error(
            post_json(body.to_string()),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        )
        .await;
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"sku": format!("SKU-{i}"), "quantity": 1}))
        .collect();
    let body = json!({"customer_id": "c", "items": items}).to_string();
    assert!(body.len() > MAX_BODY);
    expect_error(
        post_json(body),
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn a_body_without_json_content_type_is_415() {
    let request = Request::post("/api/orders")
        .body(Body::from(valid_order().to_string()))
        .unwrap();
    expect_error(
        request,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
}

#[tokio::test]
async fn ids_that_cannot_exist_and_unknown_routes_are_404() {
    let request = Request::get("/api/orders/not-a-uuid")
        .body(Body::empty())
        .unwrap();
    expect_error(request, StatusCode::NOT_FOUND, "not_found").await;
    let request = Request::get("/api/nothing-here")
        .body(Body::empty())
        .unwrap();
    expect_error(request, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn an_unreachable_order_service_is_503() {
    expect_error(
        post_json(valid_order().to_string()),
        StatusCode::SERVICE_UNAVAILABLE,
        "order_service_unavailable",
    )
    .await;
}

#[tokio::test]
async fn health_is_live_and_not_ready_until_the_order_service_answers() {
    let live = Request::get("/health/live").body(Body::empty()).unwrap();
    let (status, body, traceresponse) = call(live).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(traceresponse.is_none(), "health probes are not traced");
    let ready = Request::get("/health/ready").body(Body::empty()).unwrap();
    let (status, body, _) = call(ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "not_ready");
}
