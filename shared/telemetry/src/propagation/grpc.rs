//! gRPC (tonic): gRPC metadata is HTTP/2 headers, so both sides are tower layers over
//! plain `http` requests.
//!
//! - [`GrpcServerLayer`] (on `tonic::transport::Server`) extracts the caller's context and
//!   wraps the call in a SERVER span. Hop: gateway/worker → order-service.
//! - [`GrpcClientLayer`] (on the client's `Channel`) makes the CLIENT span and injects its
//!   context into the request headers. Without it the order-service starts a new trace.
//!
//! Both name the span `{package.Service}/{Method}` and record `rpc.grpc.status_code`. The
//! status of a successful unary call arrives in the trailers, after the headers, so the
//! span travels with the response body and ends when the body does.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Instant;

use http::{HeaderMap, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{extract, inject};
use crate::request_metrics;
use crate::semconv::{self, RpcConventions};
use crate::span::mark_error;

/// Which side of the call a span describes; the two mark errors differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

// ---------------------------------------------------------------------------------------
// Server

/// Requests to the standard health service (`grpc.health.v1.Health`) are not traced.
const HEALTH_SERVICE_PATH: &str = "/grpc.health.v1.Health/";

#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcServerLayer;

impl<S> Layer<S> for GrpcServerLayer {
    type Service = GrpcServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcServerService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcServerService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Health probes arrive every few seconds and would bury the traces that matter.
        if request.uri().path().starts_with(HEALTH_SERVICE_PATH) {
            let future = self.inner.call(request);
            return Box::pin(async move {
                future
                    .await
                    .map(|response| response.map(|inner| TracedBody { inner, call: None }))
            });
        }
        let call = Call::new(Side::Server, request.uri().path(), None);
        // The caller's context arrives as `traceparent` metadata; it must become the
        // parent before the span is first entered.
        if let Err(error) = call
            .span
            .set_parent(extract(&HeaderExtractor(request.headers())))
        {
            tracing::warn!(%error, "could not continue the caller's trace");
        }
        let future = call.span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            future
                .instrument(call.span.clone())
                .await
                .map(|r| trace_response(r, call))
        })
    }
}

// ---------------------------------------------------------------------------------------
// Client

/// Give it the address the channel connects to: tonic adds the origin below this layer,
/// so the request URI here has only the path.
#[derive(Debug, Clone)]
pub struct GrpcClientLayer {
    server: Uri,
}

impl GrpcClientLayer {
    pub fn new(server: Uri) -> Self {
        Self { server }
    }
}

impl<S> Layer<S> for GrpcClientLayer {
    type Service = GrpcClientService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcClientService {
            inner,
            server: self.server.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcClientService<S> {
    inner: S,
    server: Uri,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcClientService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // A child of whatever span the caller is in (the HTTP server span in the
        // gateway, the consumer span in the worker).
        let call = Call::new(Side::Client, request.uri().path(), Some(&self.server));
        // `traceparent` carries this CLIENT span's id: the server span becomes its child.
        inject(
            &call.span.context(),
            &mut HeaderInjector(request.headers_mut()),
        );
        let future = call.span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            match future.instrument(call.span.clone()).await {
                Ok(response) => Ok(trace_response(response, call)),
                Err(error) => {
                    // The call never reached the server (connection refused, timeout).
                    call.failed("transport", &error.to_string());
                    Err(error)
                }
            }
        })
    }
}

/// A tonic channel with the client layer on top.
pub type TracedChannel = GrpcClientService<tonic::transport::Channel>;

/// A lazily connecting tonic channel to `endpoint` with the client layer on top: pass it
/// to a generated client (`OrderServiceClient::new(traced_channel(endpoint))`) and every
/// call carries the caller's trace.
pub fn traced_channel(endpoint: tonic::transport::Endpoint) -> TracedChannel {
    let server = endpoint.uri().clone();
    GrpcClientLayer::new(server).layer(endpoint.connect_lazy())
}

// ---------------------------------------------------------------------------------------
// Shared by both sides

/// The span of one call, named by its fully qualified method (`order.v1.OrderService/
/// CreateOrder`), with the current RPC conventions' attributes and, for `rpc/dup`, the
/// pre-stable ones beside them. Both generations name an attribute `rpc.method`; it keeps
/// the current, fully qualified value.
fn rpc_span(
    side: Side,
    path: &str,
    server: Option<&Uri>,
    conventions: RpcConventions,
) -> tracing::Span {
    // `/order.v1.OrderService/CreateOrder` → "order.v1.OrderService/CreateOrder"
    let method = path.trim_start_matches('/');
    let service = method.split_once('/').map_or("", |(service, _)| service);
    let kind = match side {
        Side::Client => "client",
        Side::Server => "server",
    };
    let duplicate = conventions == RpcConventions::Duplicate;
    tracing::info_span!(
        "gRPC call",
        otel.name = method,
        otel.kind = kind,
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system.name = "grpc",
        rpc.method = method,
        rpc.response.status_code = Empty,
        server.address = server.and_then(Uri::host),
        server.port = server.and_then(Uri::port_u16).map(i64::from),
        error.type = Empty,
        // Pre-stable names, only for `OTEL_SEMCONV_STABILITY_OPT_IN=rpc/dup`.
        rpc.system = duplicate.then_some("grpc"),
        rpc.service = duplicate.then_some(service),
        rpc.grpc.status_code = Empty,
    )
}

/// One traced call: its span, and what its duration metric needs when it ends.
#[derive(Debug)]
struct Call {
    span: tracing::Span,
    side: Side,
    method: String,
    started: Instant,
}

impl Call {
    fn new(side: Side, path: &str, server: Option<&Uri>) -> Self {
        Self {
            span: rpc_span(side, path, server, semconv::rpc()),
            side,
            method: path.trim_start_matches('/').to_owned(),
            started: Instant::now(),
        }
    }

    /// The status came back: on the span, and the call's duration with it.
    fn ended(self, code: i32) {
        let (status, failed) = record_grpc_status(&self.span, self.side, code);
        request_metrics::rpc_call(
            self.side == Side::Server,
            self.started,
            &self.method,
            Some(status),
            failed.then_some(status),
        );
    }

    /// No status will come: the transport failed.
    fn failed(self, error_type: &str, message: &str) {
        mark_error(&self.span, error_type, message);
        request_metrics::rpc_call(
            self.side == Side::Server,
            self.started,
            &self.method,
            None,
            Some(error_type),
        );
    }
}

/// Records a status found in the headers (a "trailers-only" error response), or hands
/// the call to the body to wait for the trailers.
fn trace_response<B>(response: Response<B>, call: Call) -> Response<TracedBody<B>> {
    let call = match grpc_status(response.headers()) {
        Some(code) => {
            call.ended(code);
            None
        }
        None => Some(call),
    };
    response.map(|inner| TracedBody { inner, call })
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Returns the status's name and whether the span was marked failed.
fn record_grpc_status(span: &tracing::Span, side: Side, code: i32) -> (&'static str, bool) {
    let code = tonic::Code::from_i32(code);
    let name = status_name(code);
    span.record("rpc.response.status_code", name);
    if semconv::rpc() == RpcConventions::Duplicate {
        span.record("rpc.grpc.status_code", i64::from(code as i32));
    }
    let is_error = match side {
        // A client sees every non-OK status as a failed call.
        Side::Client => code != tonic::Code::Ok,
        // A server is only at fault for these; NOT_FOUND or INVALID_ARGUMENT are the
        // caller's problem (semantic conventions for gRPC).
        Side::Server => matches!(
            code,
            tonic::Code::Unknown
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unimplemented
                | tonic::Code::Internal
                | tonic::Code::Unavailable
                | tonic::Code::DataLoss
        ),
    };
    if is_error {
        mark_error(span, name, &format!("gRPC status {name}"));
    }
    (name, is_error)
}

/// The status code's name as the gRPC spec writes it (`DEADLINE_EXCEEDED`).
fn status_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps the call's span open until the body ends and records
    /// the `grpc-status` from the trailers (and the call's duration with it).
    #[derive(Debug)]
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for TracedBody<B>
where
    B::Error: std::fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status)
                    && let Some(call) = this.call.take()
                {
                    call.ended(code);
                }
            }
            Some(Err(error)) => {
                if let Some(call) = this.call.take() {
                    call.failed("transport", &error.to_string());
                }
            }
            // The stream ended; dropping the span ends it.
            None => *this.call = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{CapturedService, attribute};
    use opentelemetry::trace::SpanKind;
    use std::convert::Infallible;

    /// A body that is just the trailers frame, as at the end of a unary tonic response.
    #[derive(Debug)]
    struct Trailers(Option<HeaderMap>);

    impl Body for Trailers {
        // `VecDeque<u8>` implements `bytes::Buf`, which saves a dependency.
        type Data = std::collections::VecDeque<u8>;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut TaskContext<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Infallible>>> {
            Poll::Ready(self.0.take().map(|t| Ok(Frame::trailers(t))))
        }
    }

    fn trailers_body(code: &str) -> Trailers {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", code.parse().unwrap());
        Trailers(Some(map))
    }

    async fn drain<B: Body + Unpin>(mut body: B)
    where
        B::Error: std::fmt::Debug,
    {
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.unwrap();
        }
    }

    #[test]
    fn duplicate_conventions_add_the_pre_stable_names() {
        let capture = CapturedService::new("grpc-test");
        tracing::dispatcher::with_default(capture.dispatch(), || {
            let server: Uri = "http://orders:50051".parse().unwrap();
            drop(rpc_span(
                Side::Client,
                "/order.v1.OrderService/GetOrder",
                Some(&server),
                RpcConventions::Duplicate,
            ));
        });
        let spans = capture.spans();
        let span = &spans[0];
        assert_eq!(span.name, "order.v1.OrderService/GetOrder");
        assert_eq!(attribute(span, "rpc.system").as_deref(), Some("grpc"));
        assert_eq!(
            attribute(span, "rpc.service").as_deref(),
            Some("order.v1.OrderService")
        );
        assert_eq!(attribute(span, "rpc.system.name").as_deref(), Some("grpc"));
        assert_eq!(
            attribute(span, "rpc.method").as_deref(),
            Some("order.v1.OrderService/GetOrder")
        );
        assert_eq!(attribute(span, "server.port").as_deref(), Some("50051"));
    }

    #[tokio::test]
    async fn client_injects_and_server_extracts_through_grpc_metadata() {
        let capture = CapturedService::new("grpc-test");
        let _guard = tracing::dispatcher::set_default(capture.dispatch());

        // What the client puts on the wire must parse as tonic metadata.
        let server = GrpcServerLayer.layer(tower::service_fn(|request: Request<()>| async move {
            let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
            assert!(
                metadata.get("traceparent").is_some(),
                "traceparent travels as metadata"
            );
            Ok::<_, Infallible>(Response::new(trailers_body("0")))
        }));
        let mut client = GrpcClientLayer::new("http://orders:50051".parse().unwrap()).layer(server);
        let request = Request::post("/order.v1.OrderService/CreateOrder")
            .body(())
            .unwrap();
        let response = tracing::info_span!("caller")
            .in_scope(|| client.call(request))
            .await
            .unwrap();
        drain(response.into_body()).await;

        let spans = capture.spans();
        let find = |kind: SpanKind| spans.iter().find(|s| s.span_kind == kind).expect("span");
        let client_span = find(SpanKind::Client);
        let server_span = find(SpanKind::Server);
        assert_eq!(client_span.name, "order.v1.OrderService/CreateOrder");
        assert_eq!(server_span.name, "order.v1.OrderService/CreateOrder");
        assert_eq!(
            server_span.parent_span_id,
            client_span.span_context.span_id()
        );
        assert!(server_span.parent_span_is_remote);
        for span in [client_span, server_span] {
            assert_eq!(attribute(span, "rpc.system.name").as_deref(), Some("grpc"));
            assert_eq!(
                attribute(span, "rpc.method").as_deref(),
                Some("order.v1.OrderService/CreateOrder")
            );
            assert_eq!(
                attribute(span, "rpc.response.status_code").as_deref(),
                Some("OK")
            );
            // The pre-stable names only under `rpc/dup`.
            for old in ["rpc.system", "rpc.service", "rpc.grpc.status_code"] {
                assert_eq!(attribute(span, old), None, "{old}");
            }
        }
        let server_address = client_span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "server.address");
        assert_eq!(
            server_address.map(|kv| kv.value.as_str().into_owned()),
            Some("orders".into())
        );
    }

    #[tokio::test]
    async fn server_errors_and_client_errors_are_marked_by_their_own_rules() {
        let capture = CapturedService::new("grpc-test");
        let _guard = tracing::dispatcher::set_default(capture.dispatch());
        // NOT_FOUND (5): the caller's problem, an error only for the client.
        let server = GrpcServerLayer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(trailers_body("5")))
        }));
        let mut client = GrpcClientLayer::new("http://orders:50051".parse().unwrap()).layer(server);
        let response = client
            .call(
                Request::post("/order.v1.OrderService/GetOrder")
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap();
        drain(response.into_body()).await;
        let spans = capture.spans();
        let is_error = |kind: SpanKind| {
            spans
                .iter()
                .find(|s| s.span_kind == kind)
                .map(|s| matches!(s.status, opentelemetry::trace::Status::Error { .. }))
        };
        assert_eq!(is_error(SpanKind::Client), Some(true));
        assert_eq!(is_error(SpanKind::Server), Some(false));
        let client = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Client)
            .unwrap();
        assert_eq!(
            attribute(client, "error.type").as_deref(),
            Some("NOT_FOUND")
        );
        assert_eq!(
            attribute(client, "rpc.response.status_code").as_deref(),
            Some("NOT_FOUND")
        );
    }

    #[tokio::test]
    async fn an_invalid_traceparent_in_metadata_starts_a_fresh_trace() {
        let capture = CapturedService::new("grpc-test");
        let _guard = tracing::dispatcher::set_default(capture.dispatch());
        let mut server = GrpcServerLayer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(trailers_body("0")))
        }));
        let mut request = Request::post("/order.v1.OrderService/GetOrder")
            .body(())
            .unwrap();
        request
            .headers_mut()
            .insert("traceparent", "00-xyz-abc-01".parse().unwrap());
        drain(server.call(request).await.unwrap().into_body()).await;
        let spans = capture.spans();
        assert_eq!(spans.len(), 1);
        assert_eq!(
            spans[0].parent_span_id,
            opentelemetry::trace::SpanId::INVALID
        );
    }
}
