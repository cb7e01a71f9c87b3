//! One request to the gateway, as a real client would send it: a CLIENT span of its own,
//! its context in the `traceparent` header, its status on the span.
//!
//! Hop: loadgen → gateway. Without the header the gateway starts a trace of its own and
//! the load's client spans stand alone in Jaeger. When telemetry exports nowhere
//! (`OTEL_TRACES_EXPORTER=none`) no span is made and no header sent: the load then costs
//! the client nothing in tracing, and the gateway sees what an untraced caller sends.

use std::time::Duration;

use anyhow::Context as _;
use http::{HeaderMap, HeaderValue, Method, header};
use telemetry::propagation::http::{client_span, inject_headers, record_client_status};
use telemetry::span::mark_error;
use tracing::Instrument;

use crate::stats::Outcome;
use crate::target::Target;

/// The gateway's answer (or why there was none), with the body read in full: a
/// connection goes back to the pool only once its response body has been read.
#[derive(Debug)]
pub struct Reply {
    pub outcome: Outcome,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    target: Target,
    traced: bool,
}

impl Client {
    /// `connections`: how many connections the pool keeps open for reuse.
    pub fn new(
        target: Target,
        timeout: Duration,
        connections: usize,
        traced: bool,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            // A proxy from the environment would send the load off this machine.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true);
        if let Some((host, addr)) = target.pinned() {
            builder = builder.resolve(host, addr);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self {
            http,
            target,
            traced,
        })
    }

    pub fn traced(&self) -> bool {
        self.traced
    }

    /// `POST /api/orders` with a JSON body, and an `Idempotency-Key` when one is given.
    pub async fn create(&self, body: String, idempotency_key: Option<&str>) -> Reply {
        self.send(Method::POST, "/api/orders", Some(body), idempotency_key)
            .await
    }

    /// `GET /api/orders/{id}`.
    pub async fn get_order(&self, order_id: &str) -> Reply {
        self.send(Method::GET, &format!("/api/orders/{order_id}"), None, None)
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        idempotency_key: Option<&str>,
    ) -> Reply {
        let url = self.target.url(path);
        let span = match self.traced.then(|| url.parse::<http::Uri>()) {
            Some(Ok(uri)) => client_span(&method, &uri),
            _ => tracing::Span::none(),
        };
        let mut headers = HeaderMap::new();
        if self.traced {
            // `traceparent` (and `tracestate`, `baggage`): the gateway continues this
            // span's trace.
            inject_headers(&span, &mut headers);
        }
        if let Some(key) = idempotency_key.and_then(|key| HeaderValue::from_str(key).ok()) {
            headers.insert("idempotency-key", key);
        }
        let mut request = self.http.request(method, url).headers(headers);
        if let Some(body) = body {
            request = request
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )
                .body(body);
        }
        let exchange = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body.to_vec()))
        };
        // The span covers the whole exchange, connection and body included.
        match exchange.instrument(span.clone()).await {
            Ok((status, body)) => {
                if self.traced {
                    record_client_status(&span, status);
                }
                Reply {
                    outcome: Outcome::Status(status),
                    body,
                }
            }
            Err(error) => {
                let kind = classify(&error);
                if self.traced {
                    mark_error(&span, kind, &error.to_string());
                }
                Reply {
                    outcome: Outcome::Transport(kind),
                    body: Vec::new(),
                }
            }
        }
    }
}

/// A low-cardinality name for a failure without an HTTP answer (`error.type` on the span,
/// and the column in the status table).
fn classify(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else if error.is_request() {
        "request"
    } else {
        "other"
    }
}
