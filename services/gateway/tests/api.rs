//! The gateway's answers to bad input, through the real router and HTTP server layer
//! (`oneshot`, no socket). The order-service address points nowhere, so any request
//! that passed validation would get a 503: a 4xx here proves the gateway itself
//! answered.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use gateway::router;
use lifecycle::health::Readiness;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
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

fn config() -> gateway::Config {
    gateway::Config {
        max_body_bytes: MAX_BODY,
        ..gateway::Config::from_env(&|_: &str| None).unwrap()
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn traceresponse(&self) -> Option<&str> {
        self.headers
            .get("traceresponse")
            .map(|v| v.to_str().unwrap())
    }
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

async fn call(request: Request<Body>) -> Answer {
    let app = router(unreachable_client(), &config(), Readiness::default());
    send(&app, request).await
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
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

/// Checks an error answer: status, the JSON envelope, its trace id in `traceresponse`,
/// and the server span among `spans` that carries that trace id and status.
fn assert_error(answer: &Answer, spans: &[SpanData], status: StatusCode, code: &str) {
    let body = &answer.body;
    assert_eq!(answer.status, status, "{body}");
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/json",
        "{body}"
    );
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    let trace_id = body["trace_id"]
        .as_str()
        .expect("trace_id in the error body");
    assert!(
        answer
            .traceresponse()
            .expect("traceresponse header")
            .contains(trace_id)
    );

    let server = spans
        .iter()
        .find(|s| {
            s.span_kind == SpanKind::Server && s.span_context.trace_id().to_string() == trace_id
        })
        .expect("a server span for this request");
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

/// Runs `request` with spans captured, and checks the error body and the server span.
async fn expect_error(request: Request<Body>, status: StatusCode, code: &str) -> Answer {
    let capture = CapturedService::new("gateway");
    let _guard = tracing::dispatcher::set_default(capture.dispatch());
    let answer = call(request).await;
    assert_error(&answer, &capture.spans(), status, code);
    answer
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
    expect_error(
        get("/api/orders/not-a-uuid"),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(get("/api/nothing-here"), StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_405_with_allow_in_the_envelope() {
    let request = Request::delete("/api/orders").body(Body::empty()).unwrap();
    let answer = expect_error(
        request,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    assert_eq!(answer.headers[header::ALLOW], "POST");
    let request = Request::put("/api/orders/00000000-0000-4000-8000-000000000000")
        .body(Body::empty())
        .unwrap();
    let answer = expect_error(
        request,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    assert_eq!(answer.headers[header::ALLOW], "GET,HEAD");
}

#[tokio::test]
async fn a_path_that_does_not_decode_is_400_in_the_envelope() {
    // %FF is not UTF-8: axum's Path extractor rejects it before the handler runs.
    let answer = expect_error(
        get("/api/orders/%FF"),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("%FF") || message.contains("UTF"),
        "{message}"
    );
}

#[tokio::test]
async fn a_method_a_health_route_does_not_take_is_405_in_the_envelope_untraced() {
    let answer = call(Request::post("/health/live").body(Body::empty()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.headers[header::ALLOW], "GET,HEAD");
    assert_eq!(answer.body["error"]["code"], "method_not_allowed");
    // Health routes are not traced, so there is no trace to point at.
    assert_eq!(answer.body["trace_id"], Value::Null);
    assert!(answer.traceresponse().is_none());
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
    let live = call(get("/health/live")).await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.body);
    assert!(
        live.traceresponse().is_none(),
        "health probes are not traced"
    );
    let ready = call(get("/health/ready")).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["status"], "not_ready");
}
