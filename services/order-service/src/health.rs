//! Readiness, reported two ways: the standard gRPC health service (for gRPC clients such
//! as the gateway) and HTTP `/health/ready` (for container healthchecks). SERVING only
//! while both the database and Kafka answer; checked periodically, off the request path.

use std::time::Duration;

use lifecycle::health::Readiness;
use proto::order::v1::order_service_server::OrderServiceServer;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use crate::events::EventPublisher;
use crate::orders::OrderApi;
use crate::store::Store;

const CHECK_INTERVAL: Duration = Duration::from_secs(5);

pub async fn watch_dependencies(
    reporter: HealthReporter,
    readiness: Readiness,
    store: Store,
    publisher: EventPublisher,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    let mut last = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                // Tell load balancers to stop sending work while in-flight calls finish.
                readiness.set(Err("shutting down".to_owned()));
                reporter.set_not_serving::<OrderServiceServer<OrderApi>>().await;
                reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                return;
            }
            _ = ticker.tick() => {}
        }
        let problem = match (store.ping().await, publisher.check_connection().await) {
            (Ok(()), Ok(())) => None,
            (Err(e), _) => Some(format!("database: {e}")),
            (_, Err(e)) => Some(format!("kafka: {e}")),
        };
        readiness.set(problem.clone().map_or(Ok(()), Err));
        if last.as_ref() != Some(&problem) {
            match &problem {
                None => {
                    reporter.set_serving::<OrderServiceServer<OrderApi>>().await;
                    reporter
                        .set_service_status("", tonic_health::ServingStatus::Serving)
                        .await;
                }
                Some(_) => {
                    reporter
                        .set_not_serving::<OrderServiceServer<OrderApi>>()
                        .await;
                    reporter
                        .set_service_status("", tonic_health::ServingStatus::NotServing)
                        .await;
                }
            }
            last = Some(problem);
        }
    }
}
