//! Builds the service (binds the port, opens the database, connects to Kafka) and runs
//! it until the shutdown token is cancelled.

use std::net::SocketAddr;

use anyhow::Context as _;
use proto::order::v1::order_service_server::OrderServiceServer;
use telemetry::propagation::grpc::GrpcServerLayer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::events::{self, EventPublisher};
use crate::health;
use crate::metrics::OrderMetrics;
use crate::orders::OrderApi;
use crate::outbox::{Outbox, Relay};
use crate::store::Store;
use lifecycle::health::Readiness;

#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    health_listener: TcpListener,
    config: Config,
    store: Store,
    publisher: EventPublisher,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = Store::open(&config).await.context(match &config.postgres {
            Some(_) => "opening the PostgreSQL database (DATABASE_URL)".to_owned(),
            None => format!("opening database {}", config.database_path.display()),
        })?;
        tracing::info!(database = %store.describe(), "orders stored");
        let publisher = EventPublisher::new(&config.kafka).context("creating Kafka producer")?;
        // Not fatal: Kafka may come up later. Events wait in the outbox meanwhile.
        if let Err(error) = events::ensure_topic(&config.kafka).await {
            tracing::warn!(%error, topic = %config.kafka.topic, "could not ensure the topic exists");
        }
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding LISTEN_ADDR={}", config.listen_addr))?;
        let health_listener = TcpListener::bind(config.health_addr)
            .await
            .with_context(|| format!("binding HEALTH_ADDR={}", config.health_addr))?;
        Ok(Self {
            listener,
            health_listener,
            config,
            store,
            publisher,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn health_addr(&self) -> std::io::Result<SocketAddr> {
        self.health_listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets in-flight calls finish, lets the
    /// relay send what was committed, and flushes the producer.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let readiness = Readiness::default();
        tasks.spawn(lifecycle::health::serve(
            self.health_listener,
            readiness.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(health::watch_dependencies(
            reporter,
            readiness,
            self.store.clone(),
            self.publisher.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(forget_expired_keys(self.store.clone(), shutdown.clone()));
        let outbox = Outbox::default();
        tasks.spawn(
            Relay::new(
                outbox.clone(),
                self.store.clone(),
                self.publisher.clone(),
                self.config.outbox.clone(),
            )
            .run(shutdown.clone()),
        );
        tasks.close();

        tracing::info!(addr = %self.listener.local_addr()?, "order-service listening");
        let metrics = OrderMetrics::new(outbox.backlog());
        let api = OrderApi::new(
            self.store.clone(),
            outbox,
            self.config.fault_injection,
            metrics,
        );
        tonic::transport::Server::builder()
            // Extracts `traceparent` from the metadata and makes the SERVER span.
            .layer(GrpcServerLayer)
            .add_service(health_service)
            .add_service(OrderServiceServer::new(api))
            .serve_with_incoming_shutdown(TcpIncoming::from(self.listener), shutdown.cancelled())
            .await
            .context("gRPC server failed")?;

        tasks.wait().await;
        self.publisher
            .flush(std::time::Duration::from_secs(5))
            .context("flushing Kafka producer")?;
        // With the number of orders, how many writes each fsync carried (SQLite).
        match self.store.commits() {
            Some(commits) => tracing::info!(database_commits = commits, "order-service stopped"),
            None => tracing::info!("order-service stopped"),
        }
        Ok(())
    }
}

/// Forgets idempotency keys past their time, hourly (untraced housekeeping).
async fn forget_expired_keys(store: Store, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(60 * 60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match store.forget_expired_keys().await {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(forgotten, "expired idempotency keys forgotten"),
            Err(error) => tracing::warn!(%error, "cannot forget expired idempotency keys"),
        }
    }
}
