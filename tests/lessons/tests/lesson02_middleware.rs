//! Lesson 02 (docs/lessons/02-middleware.md): the server's middleware extracts the
//! caller's context and the client's middleware injects it; nobody writes these spans by
//! hand. Here the gRPC hop, the gateway or worker calling the order-service.

// Test code: a panic is how a check or a failed set-up reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use opentelemetry::trace::SpanKind;
use proto::order::v1::order_service_client::OrderServiceClient;
use proto::order::v1::order_service_server::{OrderService, OrderServiceServer};
use proto::order::v1::{
    CompleteOrderRequest, CreateOrderRequest, CreateOrderResponse, GetOrderRequest, Order,
};
use support::services::{Service, Stack};
use support::spans::{assert_child, assert_own_trace, attribute, id, is_root, one, trace};
use tonic::{Request, Response, Status};
use tower::ServiceExt;
use tracing::Instrument;

const UNKNOWN_ORDER: &str = "6f1c1f2e-1d55-4b8e-9d3a-1b9b8a6c2f00";
const GET_ORDER: &str = "order.v1.OrderService/GetOrder";

fn get_unknown_order() -> GetOrderRequest {
    GetOrderRequest {
        order_id: UNKNOWN_ORDER.into(),
    }
}

#[test]
fn broken_a_plain_channel_injects_nothing_and_the_server_starts_a_new_trace() {
    let stack = Stack::order_service();
    let caller = Service::new("gateway");
    let url = format!("http://{}", stack.order_service_addr);
    let code = caller.run(async move {
        // A tonic channel as the docs make one, without `GrpcClientLayer`.
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect_lazy();
        let mut client = OrderServiceClient::new(channel);
        async move { client.get_order(get_unknown_order()).await }
            .instrument(telemetry::internal_span!("handle request"))
            .await
            .unwrap_err()
            .code()
    });
    assert_eq!(code, tonic::Code::NotFound);

    let server = stack.order_service.wait_for_span(GET_ORDER, |_| true);
    let caller_spans = caller.spans();
    let handle = one(&caller_spans, "handle request");
    // No CLIENT span on the caller's side: nothing in Jaeger shows the call leaving.
    assert!(
        caller_spans.iter().all(|s| s.span_kind != SpanKind::Client),
        "{caller_spans:?}"
    );
    // The server's middleware found no `traceparent`: a new trace begins there.
    assert_own_trace(&server, handle);
    stack.stop();
}

/// An order-service without `GrpcServerLayer`, whose handler makes its span by hand.
#[derive(Debug)]
struct HandMadeSpans;

#[tonic::async_trait]
impl OrderService for HandMadeSpans {
    async fn create_order(
        &self,
        _: Request<CreateOrderRequest>,
    ) -> Result<Response<CreateOrderResponse>, Status> {
        Err(Status::unimplemented("not in this lesson"))
    }

    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        // The span a handler writes for itself: it knows nothing of the metadata.
        let span = tracing::info_span!("GetOrder", order_id = %request.get_ref().order_id);
        let _entered = span.enter();
        Err(Status::not_found("no such order"))
    }

    async fn complete_order(
        &self,
        _: Request<CompleteOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        Err(Status::unimplemented("not in this lesson"))
    }
}

#[test]
fn broken_a_hand_made_server_span_ignores_the_callers_context() {
    let server = Service::new("order-service");
    let addr = server.run(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(OrderServiceServer::new(HandMadeSpans))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        addr
    });
    let caller = Service::new("gateway");
    // The project's client: it does inject the caller's context.
    let mut client = caller.order_client(addr);
    caller.run(async move {
        async move { client.get_order(get_unknown_order()).await }
            .instrument(telemetry::internal_span!("handle request"))
            .await
            .unwrap_err()
    });

    let hand_made = server.wait_for_span("GetOrder", |_| true);
    let caller_spans = caller.spans();
    let client_span = one(&caller_spans, GET_ORDER);
    assert_own_trace(&hand_made, client_span);
    // Nor is it the span the conventions describe: no kind, no RPC attributes.
    assert_eq!(hand_made.span_kind, SpanKind::Internal);
    assert_eq!(attribute(&hand_made, "rpc.method"), None);
    assert_eq!(attribute(&hand_made, "rpc.response.status_code"), None);
}

#[test]
fn fixed_the_client_layer_injects_and_the_server_layer_extracts() {
    let stack = Stack::order_service();
    let caller = Service::new("gateway");
    let mut client = caller.order_client(stack.order_service_addr);
    let code = caller.run(async move {
        async move { client.get_order(get_unknown_order()).await }
            .instrument(telemetry::internal_span!("handle request"))
            .await
            .unwrap_err()
            .code()
    });
    assert_eq!(code, tonic::Code::NotFound);

    let caller_spans = caller.spans();
    let handle = one(&caller_spans, "handle request");
    let client_span = one(&caller_spans, GET_ORDER);
    assert_child(client_span, handle, SpanKind::Client);
    let server = stack
        .order_service
        .wait_for_span(GET_ORDER, |s| trace(s) == trace(handle));
    assert_child(&server, client_span, SpanKind::Server);
    assert!(server.parent_span_is_remote);
    for span in [client_span, &server] {
        assert_eq!(attribute(span, "rpc.method").as_deref(), Some(GET_ORDER));
        assert_eq!(
            attribute(span, "rpc.response.status_code").as_deref(),
            Some("NOT_FOUND")
        );
    }
    // The service's own work hangs under the server span the middleware made.
    let query = stack
        .order_service
        .wait_for_span("SELECT orders", |s| s.parent_span_id == id(&server));
    assert_child(&query, &server, SpanKind::Client);
    stack.stop();
}

// The HTTP edge: the same rule with `HttpServerLayer`, which the gateway's router carries.

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn get_with_traceparent(path: &str) -> http::Request<axum::body::Body> {
    http::Request::get(path)
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .body(axum::body::Body::empty())
        .unwrap()
}

#[test]
fn broken_an_http_handler_without_the_server_layer_ignores_the_callers_traceparent() {
    let gateway = Service::new("gateway");
    let app = axum::Router::new().route(
        "/api/orders/{id}",
        axum::routing::get(|| async {
            let span = tracing::info_span!("GET /api/orders/{id}");
            let _entered = span.enter();
            http::StatusCode::NOT_FOUND
        }),
    );
    let status = gateway.run(async move {
        app.oneshot(get_with_traceparent(&format!(
            "/api/orders/{UNKNOWN_ORDER}"
        )))
        .await
        .unwrap()
        .status()
    });
    assert_eq!(status, http::StatusCode::NOT_FOUND);
    let spans = gateway.spans();
    let hand_made = one(&spans, "GET /api/orders/{id}");
    assert!(is_root(hand_made), "the hand-made span should be a root");
    assert_ne!(trace(hand_made).to_string(), CALLER_TRACE);
}

#[test]
fn fixed_the_gateways_http_server_layer_continues_the_callers_trace() {
    let stack = Stack::order_service();
    let gateway = Service::new("gateway");
    let client = gateway.order_client(stack.order_service_addr);
    let config = gateway::Config::from_env(&|_: &str| None).unwrap();
    // The gateway's own router, with its layers.
    let app = gateway::router(client, &config, lifecycle::health::Readiness::default());
    let response = gateway.run(async move {
        app.oneshot(get_with_traceparent(&format!(
            "/api/orders/{UNKNOWN_ORDER}"
        )))
        .await
        .unwrap()
    });
    assert_eq!(response.status(), http::StatusCode::NOT_FOUND);
    let spans = gateway.spans();
    let server = one(&spans, "GET /api/orders/{id}");
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(trace(server).to_string(), CALLER_TRACE);
    assert_eq!(server.parent_span_id.to_string(), CALLER_SPAN);
    assert!(server.parent_span_is_remote);
    let traceresponse = response.headers()["traceresponse"].to_str().unwrap();
    assert!(traceresponse.contains(CALLER_TRACE), "{traceresponse}");
    // And on down the next hop.
    stack
        .order_service
        .wait_for_span(GET_ORDER, |s| trace(s) == trace(server));
    stack.stop();
}
