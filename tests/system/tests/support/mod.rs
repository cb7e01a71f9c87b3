//! Starts the three services in this process, each on a runtime of its own whose spans
//! are captured separately, with Kafka played by librdkafka's in-process mock cluster.

#![allow(dead_code)] // each test binary uses a different part

pub mod client;
pub mod collector;
pub mod jaeger;
pub mod native;
pub mod order_trace;
pub mod prometheus;
pub mod spans;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use telemetry::testing::CapturedService;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

pub const TOPIC: &str = "orders";
pub const GROUP: &str = "worker-test";

pub struct Service {
    pub capture: CapturedService,
    pub runtime: Runtime,
    pub handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Service {
    fn new(name: &str) -> Self {
        let capture = CapturedService::new(name);
        let runtime = capture.runtime().expect("runtime");
        Self {
            capture,
            runtime,
            handle: None,
        }
    }
}

pub struct Stack {
    pub kafka: MockCluster<'static, DefaultProducerContext>,
    pub order_service: Service,
    pub worker: Service,
    pub gateway: Service,
    pub order_service_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    pub worker_health_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub data_dir: PathBuf,
}

impl Stack {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`Stack::start`], with `settings` in every service's environment (for
    /// example `FAULT_INJECTION=baggage`, `INBOUND_TRACE_CONTEXT=restart`).
    pub fn start_with(settings: &[(&str, &str)]) -> Self {
        let source = |key: &str| {
            settings
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        };
        let kafka = MockCluster::new(1).expect("mock Kafka cluster");
        kafka.create_topic(TOPIC, 3, 1).expect("topic");
        let bootstrap = kafka.bootstrap_servers();
        let shutdown = CancellationToken::new();
        let data_dir = fresh_data_dir("system-test");

        let mut order_service = Service::new("order-service");
        let mut config =
            order_service_config(&bootstrap, &data_dir, "127.0.0.1:0".parse().unwrap());
        config.fault_injection = faults::FaultInjection::from_env(&source).unwrap();
        let app = order_service
            .runtime
            .block_on(order_service::Application::build(config))
            .expect("order-service builds");
        let order_service_addr = app.local_addr().unwrap();
        order_service.handle = Some(
            order_service
                .runtime
                .spawn(app.run_until_stopped(shutdown.clone())),
        );

        let mut worker = Service::new("worker");
        // The defaults, then what this stack needs (new settings need no change here).
        let mut config = worker::Config::from_env(&source).unwrap();
        config.bootstrap_servers = bootstrap;
        config.topic = TOPIC.into();
        config.group_id = GROUP.into();
        config.order_service =
            proto::client::ClientConfig::for_url(format!("http://{order_service_addr}"));
        config.health_addr = "127.0.0.1:0".parse().unwrap();
        let app = worker
            .runtime
            .block_on(worker::Application::build(config))
            .expect("worker builds");
        let worker_health_addr = app.health_addr().unwrap();
        worker.handle = Some(
            worker
                .runtime
                .spawn(app.run_until_stopped(shutdown.clone())),
        );

        let mut gateway = Service::new("gateway");
        let config = gateway::Config {
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            order_service: proto::client::ClientConfig::for_url(format!(
                "http://{order_service_addr}"
            )),
            ..gateway::Config::from_env(&source).unwrap()
        };
        let app = gateway
            .runtime
            .block_on(gateway::Application::build(config))
            .expect("gateway builds");
        let gateway_addr = app.local_addr().unwrap();
        gateway.handle = Some(
            gateway
                .runtime
                .spawn(app.run_until_stopped(shutdown.clone())),
        );

        Self {
            kafka,
            order_service,
            worker,
            gateway,
            order_service_addr,
            gateway_addr,
            worker_health_addr,
            shutdown,
            data_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway_addr)
    }

    /// Stops every service the way a SIGTERM does and checks that each exits cleanly.
    pub fn stop(mut self) {
        self.shutdown.cancel();
        for service in [&mut self.gateway, &mut self.worker, &mut self.order_service] {
            if let Some(handle) = service.handle.take() {
                let result = service.runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(20), handle).await
                });
                match result {
                    Ok(Ok(Ok(()))) => {}
                    other => panic!("{} did not stop cleanly: {other:?}", service.capture.name()),
                }
            }
            service.capture.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The order-service's settings for an in-process test: `listen_addr`, its database in
/// `data_dir`, the mock cluster's topic, and an outbox relay that retries every 500 ms.
pub fn order_service_config(
    bootstrap: &str,
    data_dir: &std::path::Path,
    listen_addr: SocketAddr,
) -> order_service::Config {
    order_service::Config {
        listen_addr,
        health_addr: "127.0.0.1:0".parse().unwrap(),
        database_path: data_dir.join("orders.db"),
        postgres: None,
        kafka: order_service::config::KafkaConfig {
            bootstrap_servers: bootstrap.to_owned(),
            topic: TOPIC.into(),
            topic_partitions: 3,
        },
        outbox: order_service::outbox::RelaySettings {
            poll_interval: Duration::from_millis(500),
            reconcile_after: Duration::from_secs(60),
            max_republish: 3,
        },
        fault_injection: faults::FaultInjection::Off,
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new, empty directory under the system's temp dir for one test's database. Unique
/// within this process (the counter: tests run on parallel threads, and two of them once
/// read the same clock value and shared a database) and across runs (the process id and
/// the time: a reused process id must not find an earlier run's files).
pub fn fresh_data_dir(prefix: &str) -> PathBuf {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// `n` ports that were free a moment ago, for service processes that bind them a moment
/// later. Taken below the kernel's ephemeral range: a port the kernel handed out (port 0)
/// could be handed out again as the source port of any outgoing connection (to Kafka, to
/// the Collector) before the service binds it; a port below that range never is.
pub fn free_ports(n: usize) -> Vec<u16> {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Spread runs over the range, so two runs in a row do not race for the same ports.
    let low = 20_000.min(first_ephemeral / 2);
    let span = first_ephemeral - low;
    let start = low + (std::process::id() as u16 % span);
    let mut ports = Vec::with_capacity(n);
    for offset in 0..span {
        let port = low + (start - low + offset) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
            if ports.len() == n {
                return ports;
            }
        }
    }
    panic!("fewer than {n} free ports below {first_ephemeral}")
}
