//! Builds the worker (Kafka consumer, gRPC client, health endpoint) and runs it until the
//! shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lifecycle::health::{self, Readiness};
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::consumer;
use crate::reporting::Reporter;

pub struct Application {
    config: Config,
    consumer: Arc<StreamConsumer>,
    reporter: Reporter,
    health_listener: TcpListener,
}

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
        let reporter = Reporter::new(&config.order_service_url)
            .with_context(|| format!("ORDER_SERVICE_URL={}", config.order_service_url))?;
        let health_listener = TcpListener::bind(config.health_addr)
            .await
            .with_context(|| format!("binding HEALTH_ADDR={}", config.health_addr))?;
        Ok(Self {
            config,
            consumer,
            reporter,
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
            self.config.clone(),
            shutdown.clone(),
        ));
        tasks.close();

        tracing::info!(topic = %self.config.topic, group = %self.config.group_id, "worker consuming");
        let result = consumer::run(
            self.consumer,
            self.config.group_id,
            self.reporter,
            shutdown.clone(),
        )
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
    config: Config,
    shutdown: CancellationToken,
) {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(config.order_service_url.clone())
    else {
        return;
    };
    let channel = endpoint.connect_lazy();
    health::watch(readiness, shutdown, || {
        let consumer = Arc::clone(&consumer);
        let topic = config.topic.clone();
        let channel = channel.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .map(|_| ())
                    .map_err(|e| format!("kafka: {e}"))
            })
            .await
            .unwrap_or_else(|e| Err(format!("kafka check failed: {e}")))?;
            health::grpc_serving(channel, "order.v1.OrderService").await
        }
    })
    .await;
}
