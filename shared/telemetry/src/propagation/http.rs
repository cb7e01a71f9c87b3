//! HTTP. Server side: a tower layer for axum that extracts the caller's context from the
//! request headers, wraps the request in an HTTP server span (`{method} {route}`, kind
//! SERVER) and answers with a `traceresponse` header. Client side: [`client_span`] and
//! [`inject_headers`] for outgoing requests.
//!
//! Hop: client → gateway. Without this layer every request starts a trace of its own
//! and a caller's `traceparent` is ignored.
//!
//! The layer is also the trust boundary: [`InboundContext::Restart`] starts a new trace at
//! the edge for callers you do not trust, keeping theirs only as a link.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{HeaderValue, Request, Response};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::HeaderExtractor;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{extract, inject, traceresponse};
use crate::request_metrics;
use crate::span::mark_error;

/// Response header with the trace id of the server span (W3C Trace Context Level 2).
pub const TRACERESPONSE: &str = "traceresponse";

/// What the server does with the context a caller sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InboundContext {
    /// Continue the caller's trace, with its `tracestate` and `baggage`. For callers you
    /// trust: your own services, or people with `curl` who want to follow their request.
    #[default]
    Continue,
    /// Start a new trace here and keep the caller's span only as a link; drop its
    /// `tracestate` and `baggage`. For a public edge: a caller cannot then choose your
    /// trace ids, force sampling with the sampled flag, or smuggle baggage to your backends.
    Restart,
}

impl std::str::FromStr for InboundContext {
    type Err = String;

    /// `continue` or `restart`, the words `INBOUND_TRACE_CONTEXT` takes.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "continue" => Ok(Self::Continue),
            "restart" => Ok(Self::Restart),
            _ => Err("expected continue or restart".to_owned()),
        }
    }
}

/// Add with `Router::layer` so that it sees the matched route (`/api/orders/{id}`),
/// which keeps span names low-cardinality.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpServerLayer {
    inbound: InboundContext,
}

impl HttpServerLayer {
    pub fn new(inbound: InboundContext) -> Self {
        Self { inbound }
    }
}

impl<S> Layer<S> for HttpServerLayer {
    type Service = HttpServerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpServerService {
            inner,
            inbound: self.inbound,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpServerService<S> {
    inner: S,
    inbound: InboundContext,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpServerService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let method = semconv_method(request.method());
        let route = matched_route(&request);
        let scheme = request.uri().scheme_str().unwrap_or("http").to_owned();
        let span = server_span(&request, route.as_deref());
        let remote = extract(&HeaderExtractor(request.headers()));
        match self.inbound {
            // The remote parent must be set before the span is first entered.
            InboundContext::Continue => {
                if let Err(error) = span.set_parent(remote) {
                    tracing::warn!(%error, "could not continue the caller's trace");
                }
            }
            InboundContext::Restart => {
                // Explicitly a root: not even a context current on this thread is a parent.
                if let Err(error) = span.set_parent(opentelemetry::Context::new()) {
                    tracing::warn!(%error, "could not start a new trace");
                }
                let caller = remote.span().span_context().clone();
                if caller.is_valid() {
                    span.add_link(caller);
                }
            }
        }
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = future.await?;
                let span = tracing::Span::current();
                let status = response.status().as_u16();
                record_status(&span, status);
                request_metrics::http_server_request(
                    started,
                    method,
                    route.as_deref(),
                    &scheme,
                    status,
                );
                if let Some(value) = traceresponse(span.context().span().span_context())
                    .and_then(|v| HeaderValue::from_str(&v).ok())
                {
                    response.headers_mut().insert(TRACERESPONSE, value);
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The route axum matched (`/api/orders/{id}`), never the raw path.
fn matched_route<B>(request: &Request<B>) -> Option<String> {
    request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
}

fn server_span<B>(request: &Request<B>, route: Option<&str>) -> tracing::Span {
    let method = semconv_method(request.method());
    // `{method} {route}`; without a matched route only the method (semantic conventions).
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let user_agent = request
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "HTTP request",
        otel.name = name.as_str(),
        otel.kind = "server",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
        url.path = request.uri().path(),
        url.scheme = request.uri().scheme_str().unwrap_or("http"),
        server.address = host.split(':').next().unwrap_or_default(),
        user_agent.original = user_agent,
        error.type = Empty,
    )
}

/// Known methods keep their name; anything else is `_OTHER` (no unbounded names).
fn semconv_method(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::TRACE => "TRACE",
        http::Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// The CLIENT span for an outgoing HTTP request (name: the method, as the semantic
/// conventions ask when there is no route template). Create it in the caller's context,
/// inject it with [`inject_headers`], and keep it entered (`.instrument`) until the
/// response arrives; then [`record_client_status`].
pub fn client_span(method: &http::Method, url: &http::Uri) -> tracing::Span {
    let method = semconv_method(method);
    tracing::info_span!(
        "HTTP client request",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = method,
        http.response.status_code = Empty,
        url.full = url.to_string().as_str(),
        server.address = url.host(),
        server.port = url.port_u16().map(i64::from),
        error.type = Empty,
    )
}

/// Writes the context of `span` into outgoing request headers (`traceparent`,
/// `tracestate`, `baggage`), replacing any already there.
pub fn inject_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    inject(
        &span.context(),
        &mut opentelemetry_http::HeaderInjector(headers),
    );
}

/// Records the response status on a client span: for a client, any 4xx or 5xx failed.
pub fn record_client_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    if status >= 400 {
        mark_error(span, &status.to_string(), &format!("HTTP {status}"));
    }
}

fn record_status(span: &tracing::Span, status: u16) {
    span.record("http.response.status_code", i64::from(status));
    // A 4xx is the client's mistake, not a server failure: only 5xx marks the span.
    if status >= 500 {
        mark_error(span, &status.to_string(), &format!("HTTP {status}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::CapturedService;
    use opentelemetry::trace::{SpanKind, TraceId};
    use std::convert::Infallible;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    async fn serve(
        traceparent: Option<&str>,
    ) -> (Response<()>, Vec<opentelemetry_sdk::trace::SpanData>) {
        let capture = CapturedService::new("http-test");
        let _guard = tracing::dispatcher::set_default(capture.dispatch());
        let mut request = Request::get("/orders").body(()).unwrap();
        if let Some(value) = traceparent {
            request
                .headers_mut()
                .insert("traceparent", HeaderValue::from_str(value).unwrap());
        }
        let inner = tower::service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::builder().status(503).body(()).unwrap())
        });
        let response = HttpServerLayer::default()
            .layer(inner)
            .call(request)
            .await
            .unwrap();
        (response, capture.spans())
    }

    /// Runs a request through the layer in `inbound` mode; the handler reports the headers
    /// it would send downstream.
    async fn forwarded(
        inbound: InboundContext,
        headers: &[(&'static str, &str)],
    ) -> (http::HeaderMap, Vec<opentelemetry_sdk::trace::SpanData>) {
        let capture = CapturedService::new("http-test");
        let _guard = tracing::dispatcher::set_default(capture.dispatch());
        let mut request = Request::get("/orders").body(()).unwrap();
        for (k, v) in headers {
            request
                .headers_mut()
                .append(*k, HeaderValue::from_str(v).unwrap());
        }
        let inner = tower::service_fn(|_req: Request<()>| async {
            let span = client_span(&http::Method::GET, &"http://backend:80/x".parse().unwrap());
            let mut outgoing = http::HeaderMap::new();
            inject_headers(&span, &mut outgoing);
            drop(span);
            Ok::<_, Infallible>(
                Response::builder()
                    .status(200)
                    .extension(outgoing)
                    .body(())
                    .unwrap(),
            )
        });
        let response = HttpServerLayer::new(inbound)
            .layer(inner)
            .call(request)
            .await
            .unwrap();
        let outgoing = response
            .extensions()
            .get::<http::HeaderMap>()
            .unwrap()
            .clone();
        (outgoing, capture.spans())
    }

    const CALLER: &[(&str, &str)] = &[
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "vendor=x"),
        ("baggage", "user=alice"),
    ];

    #[tokio::test]
    async fn continue_forwards_the_callers_trace_state_and_baggage() {
        let (outgoing, spans) = forwarded(InboundContext::Continue, CALLER).await;
        assert!(outgoing["traceparent"].to_str().unwrap().contains(TRACE));
        assert_eq!(outgoing["tracestate"], "vendor=x");
        assert_eq!(outgoing["baggage"], "user=alice");
        let server = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Server)
            .unwrap();
        assert_eq!(server.parent_span_id.to_string(), PARENT);
    }

    #[tokio::test]
    async fn restart_begins_a_new_trace_linked_to_the_caller_and_drops_what_it_sent() {
        let (outgoing, spans) = forwarded(InboundContext::Restart, CALLER).await;
        let traceparent = outgoing["traceparent"].to_str().unwrap();
        assert!(!traceparent.contains(TRACE), "{traceparent}");
        assert!(outgoing.get("tracestate").is_none());
        assert!(outgoing.get("baggage").is_none());
        let server = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Server)
            .unwrap();
        assert_eq!(server.parent_span_id, opentelemetry::trace::SpanId::INVALID);
        let link = server
            .links
            .iter()
            .next()
            .expect("a link to the caller's span");
        assert_eq!(
            link.span_context.trace_id(),
            TraceId::from_hex(TRACE).unwrap()
        );
        assert_eq!(link.span_context.span_id().to_string(), PARENT);
        let client = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Client)
            .unwrap();
        assert_eq!(client.parent_span_id, server.span_context.span_id());
    }

    #[tokio::test]
    async fn continues_a_valid_traceparent_and_answers_with_traceresponse() {
        let (response, spans) = serve(Some(&format!("00-{TRACE}-{PARENT}-01"))).await;
        let span = &spans[0];
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(
            span.span_context.trace_id(),
            TraceId::from_hex(TRACE).unwrap()
        );
        assert_eq!(span.parent_span_id.to_string(), PARENT);
        let traceresponse = response.headers()[TRACERESPONSE].to_str().unwrap();
        assert_eq!(
            traceresponse,
            format!("00-{TRACE}-{}-01", span.span_context.span_id())
        );
        // 5xx is the server's failure.
        assert!(matches!(
            span.status,
            opentelemetry::trace::Status::Error { .. }
        ));
    }

    #[tokio::test]
    async fn invalid_or_missing_traceparent_starts_a_fresh_trace() {
        for header in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        ] {
            let (response, spans) = serve(header).await;
            assert_eq!(spans.len(), 1);
            assert_eq!(
                spans[0].parent_span_id,
                opentelemetry::trace::SpanId::INVALID,
                "{header:?}"
            );
            assert!(spans[0].span_context.is_valid());
            assert_eq!(
                response.status(),
                503,
                "the request itself is never failed by a header"
            );
        }
    }
}
