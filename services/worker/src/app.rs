//! Builds the worker (Kafka consumer, dead-letter producer, gRPC client, health endpoint)
//! and runs it until the shutdown token is cancelled. Hop: none of its own; it wires the
//! pieces that make the worker's spans.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lifecycle::health::{self, Readiness};
use proto::order::v1::SERVICE_NAME;
use rdkafka::consumer::Consumer;
use telemetry::propagation::kafka::KafkaClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::config::Config;
use crate::consumer::{self, CLIENT_ID, Revocations, WorkerConsumer};
use crate::dead_letter::DeadLetters;
use crate::dispatch::{self, Bounds, LANE_CAPACITY};
use crate::metrics::{Lag, WorkerMetrics};
use crate::process::Processor;
use crate::reporting::Reporter;

/// How long shutdown waits for dead letters still in flight.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Application {
    config: Config,
    consumer: Arc<WorkerConsumer>,
    revocations: Revocations,
    processor: Processor,
    order_service_health: Channel,
    health_listener: TcpListener,
}

// By hand: rdkafka's consumer has no `Debug`.
impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let lag = Lag::default();
        let (consumer, revocations) =
            consumer::create(&consumer::settings(&config), &config.topic, lag.clone())
                .context("creating Kafka consumer")?;
        let dead_letters = DeadLetters::new(&config).context("creating Kafka producer")?;
        let order_service = proto::client::connect(&config.order_service)
            .with_context(|| format!("ORDER_SERVICE_URL={}", config.order_service.url))?;
        let health_listener = TcpListener::bind(config.health_addr)
            .await
            .with_context(|| format!("binding HEALTH_ADDR={}", config.health_addr))?;
        let processor = Processor {
            kafka: KafkaClient::new(CLIENT_ID, &config.bootstrap_servers),
            group_id: config.group_id.clone(),
            reporter: Reporter::new(order_service.client),
            dead_letters,
            retry: config.retry,
            faults: config.fault_injection,
            metrics: Arc::new(WorkerMetrics::new(&config.group_id, lag)),
        };
        Ok(Self {
            config,
            consumer,
            revocations,
            processor,
            order_service_health: order_service.health,
            health_listener,
        })
    }

    pub fn health_addr(&self) -> std::io::Result<SocketAddr> {
        self.health_listener.local_addr()
    }

    /// Consumes until `shutdown`; each partition's lane finishes its record in hand, then
    /// the offsets are committed and the dead letters flushed.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let readiness = Readiness::default();
        let tasks = TaskTracker::new();
        tasks.spawn(health::serve(
            self.health_listener,
            readiness.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(watch_dependencies(
            readiness,
            Arc::clone(&self.consumer),
            self.config.topic.clone(),
            self.order_service_health,
            shutdown.clone(),
        ));
        tasks.close();

        tracing::info!(topic = %self.config.topic, group = %self.config.group_id, dlq = %self.config.dlq_topic, "worker consuming");
        let processor = Arc::new(self.processor);
        let handle = {
            let processor = Arc::clone(&processor);
            move |record, stop| {
                let processor = Arc::clone(&processor);
                async move { processor.handle(record, stop).await }
            }
        };
        let result = dispatch::run(
            self.consumer,
            self.revocations,
            Bounds {
                lane_capacity: LANE_CAPACITY,
                max_in_flight: self.config.max_in_flight,
            },
            handle,
            shutdown.clone(),
        )
        .await
        .context("consuming");
        // Every lane has stopped, so every write was awaited; this only makes sure.
        if let Err(error) = processor.dead_letters.flush(FLUSH_TIMEOUT) {
            tracing::warn!(%error, "dead letters not flushed");
        }
        // Whatever ended the loop, the rest of the service stops too.
        shutdown.cancel();
        tasks.wait().await;
        tracing::info!("worker stopped");
        result
    }
}

/// Ready while Kafka and the order-service answer.
async fn watch_dependencies(
    readiness: Readiness,
    consumer: Arc<WorkerConsumer>,
    topic: String,
    order_service: Channel,
    shutdown: CancellationToken,
) {
    let check = || {
        let consumer = Arc::clone(&consumer);
        let topic = topic.clone();
        let order_service = order_service.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .map(|_| ())
                    .map_err(|e| format!("kafka: {e}"))
            })
            .await
            .unwrap_or_else(|e| Err(format!("kafka check failed: {e}")))?;
            health::grpc_serving(order_service, SERVICE_NAME).await
        }
    };
    health::watch(readiness, shutdown, check, health::unreported).await;
}
