//! Liveness and readiness over HTTP (`/health/live`, `/health/ready`) for services whose
//! readiness depends on others. A background watcher sets [`Readiness`]; probes only read
//! it, so a probe never waits on a dependency. Probes are not traced: they would bury
//! the traces that matter.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// `None` when ready, otherwise what is wrong.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<RwLock<Option<String>>>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(Some("starting".to_owned()))))
    }
}

impl Readiness {
    /// Records the result of a dependency check, logging only changes. Returns whether
    /// readiness changed, for anyone who reports it elsewhere too.
    pub fn set(&self, result: Result<(), String>) -> bool {
        let problem = result.err();
        let Ok(mut current) = self.0.write() else {
            return false;
        };
        if *current == problem {
            return false;
        }
        match &problem {
            None => tracing::info!("ready"),
            Some(problem) => tracing::warn!(%problem, "not ready"),
        }
        *current = problem;
        true
    }

    pub fn problem(&self) -> Option<String> {
        self.0
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|_| Some("readiness lock poisoned".to_owned()))
    }
}

/// `GET /health/live` (the process answers) and `GET /health/ready` (its dependencies do).
pub fn routes(readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(json!({ "status": "live" })) }),
        )
        .route("/health/ready", get(ready))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, Json<serde_json::Value>) {
    match readiness.problem() {
        None => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": problem })),
        ),
    }
}

/// Serves [`routes`] on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    shutdown: CancellationToken,
) {
    let server = axum::serve(listener, routes(readiness))
        .with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(error) = server.await {
        tracing::error!(%error, "health endpoint failed");
    }
}

/// How often [`watch`] checks the dependencies.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Runs `check` now and then every [`CHECK_INTERVAL`] until `shutdown`, recording each
/// result in `readiness`.
pub async fn watch<F, Fut>(readiness: Readiness, shutdown: CancellationToken, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        readiness.set(check().await);
    }
}

/// Asks a gRPC server's standard health service whether `service` is SERVING.
/// Use a channel without the tracing layer: health checks are not traced.
pub async fn grpc_serving(channel: tonic::transport::Channel, service: &str) -> Result<(), String> {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let mut client = HealthClient::new(channel);
    let check = client.check(request);
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Err(_) => Err(format!("{service}: health check timed out")),
        Ok(Err(status)) => Err(format!("{service}: {}", status.message())),
        Ok(Ok(response)) => match response.into_inner().status() {
            ServingStatus::Serving => Ok(()),
            other => Err(format!("{service}: {}", other.as_str_name())),
        },
    }
}
