//! The project's own services in this process: each on a runtime of its own whose spans
//! are captured separately (`telemetry::testing::CapturedService`), Kafka played by
//! librdkafka's in-process mock cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use telemetry::testing::CapturedService;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TOPIC: &str = "orders";
pub const GROUP: &str = "lessons";

/// A service (or a caller) whose spans are captured: everything that runs on `runtime`
/// records into `capture`.
pub struct Service {
    pub capture: CapturedService,
    pub runtime: Runtime,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl Service {
    pub fn new(name: &str) -> Self {
        let capture = CapturedService::new(name);
        let runtime = capture.runtime().expect("a runtime for the service");
        Self {
            capture,
            runtime,
            handle: None,
        }
    }

    /// Runs `work` on this service's runtime (so its spans are this service's) and
    /// returns its output. A future run with `block_on` would run on the test's own
    /// thread, where no service records.
    pub fn run<F>(&self, work: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime
            .block_on(self.runtime.spawn(work))
            .expect("the work panicked")
    }

    /// Spans finished so far.
    pub fn spans(&self) -> Vec<opentelemetry_sdk::trace::SpanData> {
        self.capture.spans()
    }

    /// Waits for the finished span called `name` for which `matches` holds.
    pub fn wait_for_span(
        &self,
        name: &str,
        matches: impl Fn(&opentelemetry_sdk::trace::SpanData) -> bool,
    ) -> opentelemetry_sdk::trace::SpanData {
        super::wait_for(
            &format!("{}'s span {name:?}", self.capture.name()),
            Duration::from_secs(30),
            || {
                self.spans()
                    .into_iter()
                    .find(|s| s.name == name && matches(s))
            },
        )
    }

    /// A client of the order-service at `addr` the way the gateway and the worker make
    /// one (`proto::client::connect`: the CLIENT layer on the channel).
    pub fn order_client(&self, addr: SocketAddr) -> proto::client::OrderClient {
        let _runtime = self.runtime.enter();
        proto::client::connect(&proto::client::ClientConfig::for_url(format!(
            "http://{addr}"
        )))
        .expect("a valid order-service URL")
        .client
    }
}

/// The order-service alone, or all three services.
pub struct Stack {
    pub kafka: MockCluster<'static, DefaultProducerContext>,
    pub order_service: Service,
    pub order_service_addr: SocketAddr,
    pub worker: Option<Service>,
    pub gateway: Option<Service>,
    pub gateway_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    data_dir: PathBuf,
}

impl Stack {
    /// The order-service (gRPC on a free port, SQLite in a fresh directory) on a mock
    /// Kafka cluster.
    pub fn order_service() -> Self {
        let kafka = MockCluster::new(1).expect("mock Kafka cluster");
        kafka.create_topic(TOPIC, 1, 1).expect("topic");
        let shutdown = CancellationToken::new();
        let data_dir = fresh_dir();
        let mut order_service = Service::new("order-service");
        let config = order_service::Config {
            listen_addr: loopback(),
            health_addr: loopback(),
            database_path: data_dir.join("orders.db"),
            kafka: order_service::config::KafkaConfig {
                bootstrap_servers: kafka.bootstrap_servers(),
                topic: TOPIC.into(),
                topic_partitions: 1,
            },
            outbox: order_service::outbox::RelaySettings {
                poll_interval: Duration::from_millis(500),
                reconcile_after: Duration::from_secs(60),
                max_republish: 3,
            },
            // Settings this lesson does not need keep their defaults.
            ..order_service::Config::from_env(&|_: &str| None).expect("default settings")
        };
        let app = order_service
            .runtime
            .block_on(order_service::Application::build(config))
            .expect("the order-service builds");
        let order_service_addr = app.local_addr().expect("its address");
        let run = app.run_until_stopped(shutdown.clone());
        order_service.handle = Some(
            order_service
                .runtime
                .spawn(async move { run.await.map_err(|e| format!("{e:#}")) }),
        );
        Self {
            kafka,
            order_service,
            order_service_addr,
            worker: None,
            gateway: None,
            gateway_addr: None,
            shutdown,
            data_dir,
        }
    }

    /// The order-service, the worker and the gateway, wired as in docker compose.
    pub fn full() -> Self {
        let mut stack = Self::order_service();
        let order_service =
            proto::client::ClientConfig::for_url(format!("http://{}", stack.order_service_addr));

        let mut worker = Service::new("worker");
        let mut config = worker::Config::from_env(&|_: &str| None).expect("worker defaults");
        config.bootstrap_servers = stack.kafka.bootstrap_servers();
        config.topic = TOPIC.into();
        config.group_id = GROUP.into();
        config.order_service = order_service.clone();
        config.health_addr = loopback();
        let app = worker
            .runtime
            .block_on(worker::Application::build(config))
            .expect("the worker builds");
        let run = app.run_until_stopped(stack.shutdown.clone());
        worker.handle = Some(
            worker
                .runtime
                .spawn(async move { run.await.map_err(|e| format!("{e:#}")) }),
        );

        let mut gateway = Service::new("gateway");
        let config = gateway::Config {
            listen_addr: loopback(),
            order_service,
            ..gateway::Config::from_env(&|_: &str| None).expect("gateway defaults")
        };
        let app = gateway
            .runtime
            .block_on(gateway::Application::build(config))
            .expect("the gateway builds");
        stack.gateway_addr = Some(app.local_addr().expect("its address"));
        let run = app.run_until_stopped(stack.shutdown.clone());
        gateway.handle = Some(
            gateway
                .runtime
                .spawn(async move { run.await.map_err(|e| format!("{e:#}")) }),
        );

        stack.worker = Some(worker);
        stack.gateway = Some(gateway);
        stack
    }

    pub fn worker(&self) -> &Service {
        self.worker.as_ref().expect("a full stack")
    }

    pub fn gateway(&self) -> &Service {
        self.gateway.as_ref().expect("a full stack")
    }

    pub fn gateway_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway_addr.expect("a full stack"))
    }

    /// Stops every service the way a SIGTERM does, and checks each stopped cleanly.
    pub fn stop(mut self) {
        self.shutdown.cancel();
        let services = [
            self.gateway.as_mut(),
            self.worker.as_mut(),
            Some(&mut self.order_service),
        ];
        for service in services.into_iter().flatten() {
            if let Some(handle) = service.handle.take() {
                let stopped = service.runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(20), handle).await
                });
                match stopped {
                    Ok(Ok(Ok(()))) => {}
                    other => panic!("{} did not stop cleanly: {other:?}", service.capture.name()),
                }
            }
            service.capture.shutdown();
        }
    }
}

impl Drop for Stack {
    /// After `stop`, or after a failed test: the database goes either way.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A new, empty directory: the counter keeps tests on parallel threads apart, the time
/// keeps this run apart from an earlier one that had the same process id.
fn fresh_dir() -> PathBuf {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "lessons-{}-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir(&dir).expect("a new data directory");
    dir
}
