//! The gateway's answers to bad input and to more traffic than it takes, through the real
//! router and HTTP server layer (`oneshot`, no socket); and, as a process, how it stops.
//! The order-service address points nowhere (calls fail fast with UNAVAILABLE) or at a
//! stand-in whose `CreateOrder` answers only when the test says so, which holds a
//! request in flight for as long as a test needs.

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use gateway::router;
use lifecycle::health::Readiness;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use proto::client::{ClientConfig, OrderClient};
use proto::order::v1::order_service_server::{OrderService, OrderServiceServer};
use proto::order::v1::{
    CompleteOrderRequest, CreateOrderRequest, CreateOrderResponse, GetOrderRequest, Order,
};
use serde_json::{Value, json};
use telemetry::testing::CapturedService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tonic::transport::server::TcpIncoming;
use tower::ServiceExt;

const MAX_BODY: usize = 1024;
/// How long a test waits for something that should happen at once; only a broken
/// gateway makes a test wait this long.
const PATIENCE: Duration = Duration::from_secs(30);

/// Port 1 on loopback: nothing listens there, so calls fail fast with UNAVAILABLE.
fn unreachable_client() -> OrderClient {
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::for_url("http://127.0.0.1:1")
    };
    proto::client::connect(&config).unwrap().client
}

/// An order-service whose `CreateOrder` never answers by itself: each call hands the
/// test a sender, and stays in flight until the test sends its answer or drops the
/// sender (UNAVAILABLE). No health service: the gateway stays not ready, which no test
/// here minds.
#[derive(Debug)]
struct HeldOrderService {
    calls: mpsc::UnboundedSender<oneshot::Sender<Status>>,
}

#[tonic::async_trait]
impl OrderService for HeldOrderService {
    async fn create_order(
        &self,
        _request: tonic::Request<CreateOrderRequest>,
    ) -> Result<tonic::Response<CreateOrderResponse>, Status> {
        let (answer, answered) = oneshot::channel();
        let _ = self.calls.send(answer);
        Err(answered
            .await
            .unwrap_or_else(|_| Status::unavailable("released by the test")))
    }

    async fn get_order(
        &self,
        _request: tonic::Request<GetOrderRequest>,
    ) -> Result<tonic::Response<Order>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn complete_order(
        &self,
        _request: tonic::Request<CompleteOrderRequest>,
    ) -> Result<tonic::Response<Order>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Starts a [`HeldOrderService`]; returns its URL and the calls as they arrive.
async fn held_order_service() -> (String, mpsc::UnboundedReceiver<oneshot::Sender<Status>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (calls, arrived) = mpsc::unbounded_channel();
    let server = tonic::transport::Server::builder()
        .add_service(OrderServiceServer::new(HeldOrderService { calls }))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    (url, arrived)
}

/// Waits for the next `CreateOrder` call to arrive, and returns the means to answer it.
async fn next_call(
    calls: &mut mpsc::UnboundedReceiver<oneshot::Sender<Status>>,
) -> oneshot::Sender<Status> {
    tokio::time::timeout(PATIENCE, calls.recv())
        .await
        .expect("a CreateOrder call reached the order-service")
        .unwrap()
}

/// A client of the held order-service that never gives up by itself.
fn patient_client(url: &str) -> OrderClient {
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(3600),
        request_timeout: Duration::from_secs(3600),
        ..ClientConfig::for_url(url)
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

/// A gateway with room for one request in flight, and that request held: a
/// `POST /api/orders` waiting for the held order-service's answer.
struct OneSlotTaken {
    app: Router,
    in_flight: tokio::task::JoinHandle<Answer>,
    release: oneshot::Sender<Status>,
}

async fn one_slot_taken() -> OneSlotTaken {
    let (url, mut calls) = held_order_service().await;
    let config = gateway::Config {
        max_in_flight: 1,
        ..config()
    };
    let app = router(patient_client(&url), &config, Readiness::default());
    let first = app.clone();
    let in_flight =
        tokio::spawn(async move { send(&first, post_json(valid_order().to_string())).await });
    // The order-service is called from inside the handler, so once the call arrives
    // the request holds the slot.
    let release = next_call(&mut calls).await;
    OneSlotTaken {
        app,
        in_flight,
        release,
    }
}

#[tokio::test]
async fn beyond_max_in_flight_a_request_is_shed_at_once_with_503_and_retry_after() {
    let capture = CapturedService::new("gateway");
    let _guard = tracing::dispatcher::set_default(capture.dispatch());
    let held = one_slot_taken().await;

    let shed = send(&held.app, get("/api/orders/not-a-uuid")).await;
    assert_error(
        &shed,
        &capture.spans(),
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    );
    assert_eq!(shed.headers[header::RETRY_AFTER], "1");
    // The span is the route's, like any other request's: visible in Jaeger as a 503.
    let trace_id = shed.body["trace_id"].as_str().unwrap();
    let spans = capture.spans();
    let span = spans
        .iter()
        .find(|s| s.span_context.trace_id().to_string() == trace_id)
        .unwrap();
    assert_eq!(span.name, "GET /api/orders/{id}");

    // Once the held request ends, its slot is free again.
    drop(held.release);
    let first = tokio::time::timeout(PATIENCE, held.in_flight)
        .await
        .expect("the held request ended")
        .unwrap();
    assert_eq!(first.body["error"]["code"], "order_service_unavailable");
    let admitted = send(&held.app, get("/api/orders/not-a-uuid")).await;
    assert_eq!(admitted.status, StatusCode::NOT_FOUND, "{}", admitted.body);
}

#[tokio::test]
async fn health_is_never_shed() {
    let held = one_slot_taken().await;
    let live = send(&held.app, get("/health/live")).await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.body);
    let ready = send(&held.app, get("/health/ready")).await;
    // Not ready (no readiness check ran here), but answered by the probe, not shed.
    assert_eq!(ready.body["status"], "not_ready", "{}", ready.body);
    assert!(
        !held.in_flight.is_finished(),
        "the request is still in flight"
    );
}

#[tokio::test]
async fn a_request_past_request_timeout_is_504_in_the_envelope() {
    let capture = CapturedService::new("gateway");
    let _guard = tracing::dispatcher::set_default(capture.dispatch());
    let (url, _calls) = held_order_service().await;
    let config = gateway::Config {
        request_timeout: Duration::from_millis(200),
        ..config()
    };
    let app = router(patient_client(&url), &config, Readiness::default());
    let answer = send(&app, post_json(valid_order().to_string())).await;
    assert_error(
        &answer,
        &capture.spans(),
        StatusCode::GATEWAY_TIMEOUT,
        "request_timeout",
    );
}

/// The gateway binary, started as a container would start it: configured only by its
/// environment, stopped by signals.
struct GatewayProcess {
    child: std::process::Child,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    async fn start(env: &[(&str, &str)]) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env_clear()
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let record = Arc::clone(&log);
        // A thread of its own: the pipe is read whatever the test's runtime is doing, so
        // the gateway never blocks on a full stderr.
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                record.lock().unwrap().push(line);
            }
        });
        let mut gateway = Self {
            child,
            addr: String::new(),
            log,
        };
        gateway.wait_for_log("gateway listening").await;
        let log = gateway.log();
        let addr = log.split("gateway listening addr=").nth(1).unwrap();
        gateway.addr = addr.split_whitespace().next().unwrap().to_owned();
        gateway
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn wait_for_log(&self, text: &str) {
        tokio::time::timeout(PATIENCE, async {
            while !self.log().contains(text) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {text:?} in the log:\n{}", self.log()));
    }

    /// Waits for the process to end; its exit code.
    async fn exit_code(&mut self) -> Option<i32> {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let status = waited.unwrap_or_else(|_| panic!("the gateway did not exit:\n{}", self.log()));
        status.code()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OTLP/HTTP endpoint that keeps the body of every export request.
async fn collector() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let exports: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let record = Arc::clone(&exports);
    let app = Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            record.lock().unwrap().push(body);
            // An empty ExportTraceServiceResponse: everything accepted.
            async {
                (
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    Bytes::new(),
                )
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, exports)
}

/// Sends `POST /api/orders` in the background and returns once the held
/// order-service has it; the request stays in flight while the returned sender lives.
async fn hold_a_request(
    gateway: &GatewayProcess,
    calls: &mut mpsc::UnboundedReceiver<oneshot::Sender<Status>>,
) -> oneshot::Sender<Status> {
    let request = reqwest::Client::new()
        .post(gateway.url("/api/orders"))
        .json(&valid_order())
        .send();
    tokio::spawn(request);
    next_call(calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_shutdown_deadline_the_gateway_flushes_its_spans_and_exits_non_zero() {
    let (order_service, mut calls) = held_order_service().await;
    let (otlp, exports) = collector().await;
    let mut gateway = GatewayProcess::start(&[
        ("ORDER_SERVICE_URL", &order_service),
        ("ORDER_SERVICE_TIMEOUT_MS", "3600000"),
        ("REQUEST_TIMEOUT_MS", "3600001"),
        ("SHUTDOWN_TIMEOUT_MS", "300"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp),
        // Nothing is exported before the shutdown flush.
        ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
    ])
    .await;

    // A finished request, whose span waits in the batch processor.
    let done = reqwest::get(gateway.url("/api/orders/not-a-uuid"))
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::NOT_FOUND);
    let traceresponse = done.headers()["traceresponse"].to_str().unwrap();
    let trace_id = traceresponse.split('-').nth(1).unwrap().to_owned();
    let _held = hold_a_request(&gateway, &mut calls).await;
    assert!(exports.lock().unwrap().is_empty());

    gateway.sigterm();
    assert_eq!(gateway.exit_code().await, Some(1), "{}", gateway.log());
    let log = gateway.log();
    let deadline = log.find("shutdown deadline passed").expect(&log);
    let flushed = log.find("telemetry shut down").expect(&log);
    assert!(deadline < flushed, "{log}");
    // The finished request's span was exported by that flush, after the deadline.
    let trace_id = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    let exported = exports.lock().unwrap().concat();
    assert!(
        exported.windows(16).any(|w| w == trace_id.as_slice()),
        "the finished request's span was not exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let (order_service, mut calls) = held_order_service().await;
    let mut gateway = GatewayProcess::start(&[
        ("ORDER_SERVICE_URL", &order_service),
        ("ORDER_SERVICE_TIMEOUT_MS", "3600000"),
        ("REQUEST_TIMEOUT_MS", "3600001"),
        // Only the second signal can end this process within the test.
        ("SHUTDOWN_TIMEOUT_MS", "3600000"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ])
    .await;
    let _held = hold_a_request(&gateway, &mut calls).await;

    gateway.sigterm();
    gateway.wait_for_log("shutdown signal received").await;
    gateway.sigterm();
    assert_eq!(
        gateway.exit_code().await,
        Some(128 + 15),
        "{}",
        gateway.log()
    );
}
