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

use http::{HeaderMap, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{extract, inject};

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
                future.await.map(|response| {
                    response.map(|inner| TracedBody {
                        inner,
                        span: None,
                        side: Side::Server,
                    })
                })
            });
        }
        let span = rpc_span(Side::Server, request.uri().path(), None);
        // The caller's context arrives as `traceparent` metadata; it must become the
        // parent before the span is first entered.
        if let Err(error) = span.set_parent(extract(&HeaderExtractor(request.headers()))) {
            tracing::warn!(%error, "could not continue the caller's trace");
        }
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(async move { future.instrument(span.clone()).await.map(|r| trace_response(r, span, Side::Server)) })
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
        let span = rpc_span(Side::Client, request.uri().path(), Some(&self.server));
        // `traceparent` carries this CLIENT span's id: the server span becomes its child.
        inject(&span.context(), &mut HeaderInjector(request.headers_mut()));
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(async move {
            match future.instrument(span.clone()).await {
                Ok(response) => Ok(trace_response(response, span, Side::Client)),
                Err(error) => {
                    // The call never reached the server (connection refused, timeout).
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", error.to_string());
                    span.record("error.type", "transport");
                    Err(error)
                }
            }
        })
    }
}

/// A lazily connecting tonic channel to `endpoint` with the client layer on top: pass it
/// to a generated client (`OrderServiceClient::new(traced_channel(endpoint))`) and every
/// call carries the caller's trace.
pub fn traced_channel(endpoint: tonic::transport::Endpoint) -> GrpcClientService<tonic::transport::Channel> {
    let server = endpoint.uri().clone();
    GrpcClientLayer::new(server).layer(endpoint.connect_lazy())
}

// ---------------------------------------------------------------------------------------
// Shared by both sides

fn rpc_span(side: Side, path: &str, server: Option<&Uri>) -> tracing::Span {
    // `/order.v1.OrderService/CreateOrder` → ("order.v1.OrderService", "CreateOrder")
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let name = format!("{service}/{method}");
    let kind = match side {
        Side::Client => "client",
        Side::Server => "server",
    };
    tracing::info_span!(
        "gRPC call",
        otel.name = name.as_str(),
        otel.kind = kind,
        otel.status_code = Empty,
        otel.status_description = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        server.address = server.and_then(Uri::host),
        server.port = server.and_then(Uri::port_u16).map(i64::from),
        error.type = Empty,
    )
}

/// Records a status found in the headers (a "trailers-only" error response), or hands
/// the span to the body to wait for the trailers.
fn trace_response<B>(response: Response<B>, span: tracing::Span, side: Side) -> Response<TracedBody<B>> {
    let mut span = Some(span);
    if let Some(code) = grpc_status(response.headers()) {
        if let Some(span) = span.take() {
            record_grpc_status(&span, side, code);
        }
    }
    response.map(|inner| TracedBody { inner, span, side })
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn record_grpc_status(span: &tracing::Span, side: Side, code: i32) {
    span.record("rpc.grpc.status_code", i64::from(code));
    let is_error = match side {
        // A client sees every non-OK status as a failed call.
        Side::Client => code != 0,
        // A server is only at fault for these; NOT_FOUND or INVALID_ARGUMENT are the
        // caller's problem (semantic conventions for gRPC).
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    };
    if is_error {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", code.to_string());
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps the call's span open until the body ends and records
    /// the `grpc-status` from the trailers.
    #[derive(Debug)]
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Option<tracing::Span>,
        side: Side,
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
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    if let Some(span) = this.span.take() {
                        record_grpc_status(&span, *this.side, code);
                    }
                }
            }
            Some(Err(error)) => {
                if let Some(span) = this.span.take() {
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", error.to_string());
                }
            }
            // The stream ended; dropping the span ends it.
            None => *this.span = None,
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
