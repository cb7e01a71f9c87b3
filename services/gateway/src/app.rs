//! Builds the gateway (router, gRPC client, listener) and serves until shutdown.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use lifecycle::health::{self, Readiness};
use proto::client::OrderServiceConnection;
use proto::order::v1::SERVICE_NAME;
use telemetry::propagation::http::HttpServerLayer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::orders;
use crate::{conformance, edge, error, replicas::Replicas};

/// The API routes (and `/test` when enabled), traced and limited, plus the health routes,
/// untraced and never shed: a probe must see the gateway alive even at capacity.
///
/// A request passes, outermost first: the server span (`HttpServerLayer`), the JSON
/// envelope for axum's own error answers, the in-flight limit and the request timeout,
/// the body limit, the handler. `replicas`: the order-service's, or one client.
pub fn router(replicas: impl Into<Replicas>, config: &Config, readiness: Readiness) -> Router {
    let mut api = Router::new()
        .route("/api/orders", post(orders::create))
        .route("/api/orders/{id}", get(orders::get))
        .with_state(replicas.into());
    if config.w3c_test_endpoint {
        api = api.route(
            "/test",
            post(conformance::run).with_state(reqwest::Client::new()),
        );
    }
    let api = api
        .fallback(orders::unknown_route)
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
    let api = edge::limit_requests(api, config)
        .layer(middleware::from_fn(error::envelope))
        // Outside the limits, so a shed or timed-out request still gets its span (with
        // its 503 or 504) and a `traceresponse`. Added with `Router::layer`, so it sees
        // the matched route for the span name. It is also the trust boundary: continue
        // or restart the caller's trace.
        .layer(HttpServerLayer::new(config.inbound_trace_context));
    // A wrong method on a health route (`POST /health/live`) gets the envelope too, with
    // a null trace id: health routes are not traced.
    let health = health::routes(readiness).layer(middleware::from_fn(error::envelope));
    api.merge(health)
}

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    config: Config,
    /// Each replica's URL and connection, in `ORDER_SERVICE_URL`'s order.
    order_services: Vec<(String, OrderServiceConnection)>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let order_services = config
            .order_services()
            .into_iter()
            .map(|replica| {
                let connection = proto::client::connect(&replica)
                    .with_context(|| format!("ORDER_SERVICE_URL={}", replica.url))?;
                Ok((replica.url, connection))
            })
            .collect::<anyhow::Result<_>>()?;
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding LISTEN_ADDR={}", config.listen_addr))?;
        Ok(Self {
            listener,
            config,
            order_services,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; in-flight requests finish first. A request ends within
    /// `REQUEST_TIMEOUT_MS` and a connection sends its headers within
    /// `HEADER_READ_TIMEOUT_MS`, so the drain ends by itself, inside the shutdown
    /// deadline (`SHUTDOWN_TIMEOUT_MS`) with the defaults: every request in it answered
    /// and traced.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let readiness = Readiness::default();
        // Ready while at least one order-service replica reports SERVING.
        let channels: Vec<_> = (self.order_services.iter())
            .map(|(url, connection)| (url.clone(), connection.health.clone()))
            .collect();
        let watcher = tokio::spawn(health::watch(
            readiness.clone(),
            shutdown.clone(),
            move || any_serving(channels.clone()),
            health::unreported,
        ));
        let replicas = Replicas::new(
            (self.order_services.into_iter()).map(|(url, connection)| (url, connection.client)),
        );
        let app = router(replicas, &self.config, readiness);
        if self.config.w3c_test_endpoint {
            tracing::warn!(
                "W3C_TEST_ENDPOINT is on: POST /test sends requests to any URL it is given"
            );
        }
        tracing::info!(
            addr = %self.listener.local_addr()?,
            max_in_flight = self.config.max_in_flight,
            max_connections = self.config.max_connections,
            "gateway listening"
        );
        edge::serve(self.listener, app, &self.config, shutdown).await;
        let _ = watcher.await;
        tracing::info!("gateway stopped");
        Ok(())
    }
}

/// `Ok` once one replica reports SERVING; otherwise each replica's reason (with its URL
/// when there are several).
async fn any_serving(channels: Vec<(String, tonic::transport::Channel)>) -> Result<(), String> {
    let several = channels.len() > 1;
    let mut reasons = Vec::new();
    for (url, channel) in channels {
        match health::grpc_serving(channel, SERVICE_NAME).await {
            Ok(()) => return Ok(()),
            Err(reason) if several => reasons.push(format!("{url}: {reason}")),
            Err(reason) => reasons.push(reason),
        }
    }
    Err(reasons.join("; "))
}
