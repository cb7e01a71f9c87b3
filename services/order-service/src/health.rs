//! Readiness, reported two ways: the standard gRPC health service (for gRPC clients such
//! as the gateway) and HTTP `/health/ready` (for container healthchecks). SERVING only
//! while both the database and Kafka answer; checked periodically, off the request path.

use lifecycle::health::{CHECK_INTERVAL, Readiness};
use proto::order::v1::order_service_server::OrderServiceServer;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::events::EventPublisher;
use crate::orders::OrderApi;
use crate::store::Store;

pub async fn watch_dependencies(
    reporter: HealthReporter,
    readiness: Readiness,
    store: Store,
    publisher: EventPublisher,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                // Tell load balancers to stop sending work while in-flight calls finish.
                readiness.set(Err("shutting down".to_owned()));
                report(&reporter, false).await;
                return;
            }
            _ = ticker.tick() => {}
        }
        let result = match (store.ping().await, publisher.check_connection().await) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), _) => Err(format!("database: {e}")),
            (_, Err(e)) => Err(format!("kafka: {e}")),
        };
        let serving = result.is_ok();
        // gRPC health watchers are told of changes only.
        if readiness.set(result) {
            report(&reporter, serving).await;
        }
    }
}

/// The order service's status and the server's overall status (`""`) move together.
async fn report(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter
        .set_service_status(<OrderServiceServer<OrderApi> as NamedService>::NAME, status)
        .await;
    reporter.set_service_status("", status).await;
}
