//! Readiness, reported two ways: the standard gRPC health service (for gRPC clients such
//! as the gateway) and HTTP `/health/ready` (for container healthchecks).
//!
//! Ready means "can take new work": the database answers. Kafka is not needed for that:
//! the outbox keeps events while Kafka is away, so its state is reported as detail only,
//! and an orchestrator does not pull the service out during the very outage the outbox
//! exists for.

use lifecycle::health::{self, Readiness};
use proto::order::v1::SERVICE_NAME;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::events::EventPublisher;
use crate::store::Store;

pub async fn watch_dependencies(
    reporter: HealthReporter,
    readiness: Readiness,
    store: Store,
    publisher: EventPublisher,
    shutdown: CancellationToken,
) {
    let detail = readiness.clone();
    let check = || {
        let store = store.clone();
        let publisher = publisher.clone();
        let detail = detail.clone();
        async move {
            detail.set_detail(match publisher.check_connection().await {
                Ok(()) => None,
                Err(error) => Some(format!("kafka: {error}; new events wait in the outbox")),
            });
            store.ping().await.map_err(|e| format!("database: {e}"))
        }
    };
    // gRPC health watchers are told of changes only. The order service's status and the
    // server's overall status (`""`) move together.
    let report = |serving: bool| {
        let reporter = reporter.clone();
        async move {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(SERVICE_NAME, status).await;
            reporter.set_service_status("", status).await;
        }
    };
    health::watch(readiness, shutdown, check, report).await;
}
