//! Liveness and readiness over HTTP (`/health/live`, `/health/ready`) for services whose
//! readiness depends on others. A background watcher sets [`Readiness`]; probes only read
//! it, so a probe never waits on a dependency. Probes are not traced: they would bury
//! the traces that matter.

use std::future::Future;
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

/// Whether the service can take new work (`problem` is `None`), and any `detail` worth
/// reporting either way (a dependency that is down without stopping the service).
#[derive(Debug, Clone)]
pub struct Readiness {
    problem: Arc<RwLock<Option<String>>>,
    detail: Arc<RwLock<Option<String>>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            problem: Arc::new(RwLock::new(Some("starting".to_owned()))),
            detail: Arc::default(),
        }
    }
}

impl Readiness {
    /// Records the result of a dependency check, logging only changes. Returns whether
    /// readiness changed.
    pub fn set(&self, result: Result<(), String>) -> bool {
        let problem = result.err();
        let Ok(mut current) = self.problem.write() else {
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
        self.problem
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|_| Some("readiness lock poisoned".to_owned()))
    }

    /// Records a detail for the readiness report, logging only changes.
    pub fn set_detail(&self, detail: Option<String>) {
        let Ok(mut current) = self.detail.write() else {
            return;
        };
        if *current != detail {
            match &detail {
                Some(detail) => tracing::warn!(%detail, "degraded"),
                None => tracing::info!("no longer degraded"),
            }
            *current = detail;
        }
    }

    pub fn detail(&self) -> Option<String> {
        self.detail.read().ok().and_then(|d| d.clone())
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
    let (status, mut body) = match readiness.problem() {
        None => (StatusCode::OK, json!({ "status": "ready" })),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "not_ready", "reason": problem }),
        ),
    };
    if let Some(detail) = readiness.detail() {
        body["detail"] = json!(detail);
    }
    (status, Json(body))
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
/// result in `readiness`, and calls `on_change(ready)` whenever readiness changes, for
/// anyone who reports it elsewhere too (the gRPC health service). On shutdown it turns
/// not ready first, so load balancers stop sending work while in-flight work finishes.
///
/// Pass [`unreported`] as `on_change` when the HTTP endpoints are the only report.
pub async fn watch<Check, Checked, Change, Changed>(
    readiness: Readiness,
    shutdown: CancellationToken,
    mut check: Check,
    mut on_change: Change,
) where
    Check: FnMut() -> Checked,
    Checked: Future<Output = Result<(), String>>,
    Change: FnMut(bool) -> Changed,
    Changed: Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                if readiness.set(Err("shutting down".to_owned())) {
                    on_change(false).await;
                }
                return;
            }
            _ = ticker.tick() => {}
        }
        let result = check().await;
        let ready = result.is_ok();
        if readiness.set(result) {
            on_change(ready).await;
        }
    }
}

/// An `on_change` for [`watch`] that reports nowhere else.
pub fn unreported(_ready: bool) -> std::future::Ready<()> {
    std::future::ready(())
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
