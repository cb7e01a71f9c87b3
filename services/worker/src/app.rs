//! Builds the worker (Kafka consumer, gRPC client, health endpoint) and runs it until the
//! shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lifecycle::health::{self, Readiness};
use proto::order::v1::SERVICE_NAME;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::config::Config;
use crate::consumer;
use crate::reporting::Reporter;

pub struct Application {
    config: Config,
    consumer: Arc<StreamConsumer>,
    reporter: Reporter,
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
        let consumer = consumer::create(&config).context("creating Kafka consumer")?;
        let order_service = proto::client::connect(&config.order_service)
            .with_context(|| format!("ORDER_SERVICE_URL={}", config.order_service.url))?;
        let health_listener = TcpListener::bind(config.health_addr)
            .await
            .with_context(|| format!("binding HEALTH_ADDR={}", config.health_addr))?;
        Ok(Self {
            config,
            consumer,
            reporter: Reporter::new(order_service.client),
            order_service_health: order_service.health,
            health_listener,
        })
    }

    pub fn health_addr(&self) -> std::io::Result<SocketAddr> {
        self.health_listener.local_addr()
    }

    /// Consumes until `shutdown`, finishes the record in hand, commits offsets.
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

        tracing::info!(topic = %self.config.topic, group = %self.config.group_id, "worker consuming");
        let result = consumer::run(self.consumer, &self.config, self.reporter, shutdown.clone())
            .await
            .context("consuming");
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
    consumer: Arc<StreamConsumer>,
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
