//! The real-stack tests' side of the native stack (`scripts/stack`, started by
//! `scripts/test`): where it listens, the three service binaries as child processes
//! configured only by environment (as in containers), and placing orders over HTTP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::jaeger::{StoredSpan, parse};
use super::{free_ports, wait_for};

/// How long an order may take to reach its final state.
pub const WAIT: Duration = Duration::from_secs(120);

/// Where the native stack listens; `scripts/test` exports these.
pub struct StackEnv {
    pub kafka: String,
    pub collector_grpc: String,
    pub collector_http: String,
    pub collector_metrics: String,
    pub jaeger: String,
    /// Where `scripts/stack` keeps its pids and logs.
    pub run_dir: PathBuf,
    /// `STACK_DATABASE_URL`, if set: the order-service keeps its orders in this
    /// PostgreSQL (`DATABASE_URL`) instead of a SQLite file.
    pub database_url: Option<String>,
}

impl StackEnv {
    pub fn from_env() -> Self {
        let port = |var: &str| {
            std::env::var(var).unwrap_or_else(|_| {
                panic!("{var} is not set: run this test through scripts/test, which starts the native stack")
            })
        };
        Self {
            kafka: format!("127.0.0.1:{}", port("STACK_KAFKA_PORT")),
            collector_grpc: format!("http://127.0.0.1:{}", port("STACK_COLLECTOR_GRPC_PORT")),
            collector_http: format!("http://127.0.0.1:{}", port("STACK_COLLECTOR_HTTP_PORT")),
            collector_metrics: format!(
                "http://127.0.0.1:{}/metrics",
                port("STACK_COLLECTOR_METRICS_PORT")
            ),
            jaeger: format!("http://127.0.0.1:{}", port("STACK_JAEGER_QUERY_PORT")),
            run_dir: PathBuf::from(port("STACK_RUN_DIR")),
            database_url: std::env::var("STACK_DATABASE_URL").ok(),
        }
    }
}

/// A service binary running as a child process, its stderr in a log file.
pub struct ServiceProcess {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// The binaries `cargo build` made: SERVICE_BIN_DIR, else the target directory's debug/.
pub fn bin_dir() -> PathBuf {
    std::env::var("SERVICE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
                .join("debug")
        })
}

impl ServiceProcess {
    pub fn start(name: &'static str, dir: &Path, env: &[(&str, String)]) -> Self {
        let bin_dir = bin_dir();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin_dir.join(name))
            // Only what a container would get: the environment below.
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} from {}: {e}", bin_dir.display()));
        Self { name, child, log }
    }

    /// SIGTERM, as `docker stop` sends; the service must exit 0 after flushing.
    /// Returns the number of spans it recorded.
    pub fn stop(mut self) -> u64 {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop after SIGTERM:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            exit.success(),
            "{} exited with {exit}:\n{}",
            self.name,
            self.log_tail()
        );
        let log = std::fs::read_to_string(&self.log).unwrap();
        let recorded = log
            .lines()
            .rev()
            .find_map(|line| line.split("spans_recorded=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok());
        recorded.unwrap_or_else(|| {
            panic!(
                "{} did not report spans_recorded:\n{}",
                self.name,
                self.log_tail()
            )
        })
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

pub struct Order {
    pub id: String,
    pub trace_id: String,
    /// The caller's span id, when the request carried a `traceparent`.
    pub caller_span_id: Option<String>,
}

pub fn unique() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub async fn place_order(http: &reqwest::Client, gateway: &str, n: usize) -> Order {
    let mut request = http.post(format!("{gateway}/api/orders")).json(&json!({
        "customer_id": format!("customer-{n}"),
        "items": [{"sku": format!("SKU-{}", n % 7), "quantity": 1 + (n % 3) as i64}],
    }));
    // A third continue a caller's trace, a third carry baggage, some both.
    let mut caller_span_id = None;
    let mut sent_trace_id = None;
    if n.is_multiple_of(3) || n.is_multiple_of(5) {
        let trace_id = format!("{:032x}", unique() ^ ((n as u128) << 64));
        let span_id = format!("{:016x}", 0x1000 + n as u64);
        request = request.header("traceparent", format!("00-{trace_id}-{span_id}-01"));
        caller_span_id = Some(span_id);
        sent_trace_id = Some(trace_id);
    }
    if n % 3 == 1 || n.is_multiple_of(5) {
        request = request.header("baggage", format!("tenant=acme,session=s{n}"));
    }
    let response = request.send().await.expect("gateway answers");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    let trace_id = body["trace_id"].as_str().unwrap().to_owned();
    if let Some(sent) = sent_trace_id {
        assert_eq!(trace_id, sent, "the gateway continued the caller's trace");
    }
    Order {
        id: body["order_id"].as_str().unwrap().to_owned(),
        trace_id,
        caller_span_id,
    }
}

pub async fn wait_until_final(http: &reqwest::Client, gateway: &str, order: &Order) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let body: Value = http
            .get(format!("{gateway}/api/orders/{}", order.id))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status = body["status"].as_str().unwrap_or_default().to_owned();
        if status != "PENDING" {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "order {} still PENDING",
            order.id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The three services as processes, on ports of their own, with a topic and group of
/// their own, so runs never see each other's events.
pub struct Services {
    pub gateway: ServiceProcess,
    pub order_service: ServiceProcess,
    pub worker: ServiceProcess,
    pub gateway_url: String,
    pub topic: String,
    pub dir: PathBuf,
    /// Every span of this run carries it as `service.instance.id`.
    pub run_id: String,
}

impl Services {
    /// Starts them and returns once each answers `/health/ready`.
    pub fn start(stack: &StackEnv, name: &str, runtime: &tokio::runtime::Runtime) -> Self {
        Self::start_with(stack, name, runtime, &[])
    }

    /// Like [`Services::start`], with `settings` added to each service's environment
    /// (for example `FAULT_INJECTION=baggage`).
    pub fn start_with(
        stack: &StackEnv,
        name: &str,
        runtime: &tokio::runtime::Runtime,
        settings: &[(&'static str, &str)],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = unique() % 1_000_000_000;
        let topic = format!("orders-{name}-{run}");
        let ports = free_ports(4);
        let (gateway_addr, orders_addr, worker_health, orders_health) = (
            format!("127.0.0.1:{}", ports[0]),
            format!("127.0.0.1:{}", ports[1]),
            format!("127.0.0.1:{}", ports[2]),
            format!("127.0.0.1:{}", ports[3]),
        );

        let run_id = format!("{name}-{run}");
        // `service.instance.id` ends with the run's id, so the run can tell its spans from
        // those of an earlier run against the same Jaeger.
        let telemetry = |protocol: &str, endpoint: &str| {
            vec![
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
                ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
                // The services' own metrics within a test's patience (the default is 60 s).
                ("OTEL_METRIC_EXPORT_INTERVAL", "2000".to_owned()),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    format!("deployment.environment.name=e2e,service.instance.id={run_id}"),
                ),
            ]
        };
        // The order-service exports over OTLP/gRPC, the others over OTLP/HTTP: both paths
        // into the real Collector are exercised.
        let mut order_env = telemetry("grpc", &stack.collector_grpc);
        order_env.extend([
            ("LISTEN_ADDR", orders_addr.clone()),
            ("HEALTH_ADDR", orders_health.clone()),
            ("DATABASE_PATH", dir.join("orders.db").display().to_string()),
            ("KAFKA_BOOTSTRAP_SERVERS", stack.kafka.clone()),
            ("KAFKA_TOPIC", topic.clone()),
        ]);
        if let Some(url) = &stack.database_url {
            order_env.push(("DATABASE_URL", url.clone()));
        }
        let mut worker_env = telemetry("http/protobuf", &stack.collector_http);
        worker_env.extend([
            ("HEALTH_ADDR", worker_health.clone()),
            ("KAFKA_BOOTSTRAP_SERVERS", stack.kafka.clone()),
            ("KAFKA_TOPIC", topic.clone()),
            ("KAFKA_GROUP_ID", format!("worker-{name}-{run}")),
            ("ORDER_SERVICE_URL", format!("http://{orders_addr}")),
        ]);
        let mut gateway_env = telemetry("http/protobuf", &stack.collector_http);
        gateway_env.extend([
            ("LISTEN_ADDR", gateway_addr.clone()),
            ("ORDER_SERVICE_URL", format!("http://{orders_addr}")),
        ]);

        for env in [&mut order_env, &mut worker_env, &mut gateway_env] {
            env.extend(settings.iter().map(|(k, v)| (*k, (*v).to_owned())));
        }
        let order_service = ServiceProcess::start("order-service", &dir, &order_env);
        let worker = ServiceProcess::start("worker", &dir, &worker_env);
        let gateway = ServiceProcess::start("gateway", &dir, &gateway_env);
        let gateway_url = format!("http://{gateway_addr}");

        let http = super::client::idle_safe_client();
        for url in [
            format!("http://{orders_health}/health/ready"),
            format!("{gateway_url}/health/ready"),
            format!("http://{worker_health}/health/ready"),
        ] {
            wait_for(
                &format!("{url} to answer 200"),
                Duration::from_secs(60),
                || {
                    runtime
                        .block_on(http.get(&url).send())
                        .ok()
                        .filter(|r| r.status() == 200)
                },
            );
        }
        Self {
            gateway,
            order_service,
            worker,
            gateway_url,
            topic,
            dir,
            run_id,
        }
    }

    /// SIGTERM to each, intake first; returns the spans they recorded, together.
    pub fn stop(self) -> u64 {
        [self.gateway, self.worker, self.order_service]
            .into_iter()
            .map(ServiceProcess::stop)
            .sum()
    }
}

/// An HTTP client, and the runtime the test thread drives it on.
pub fn http_client() -> (tokio::runtime::Runtime, reqwest::Client) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    (runtime, super::client::idle_safe_client())
}

/// Sends SIGSTOP or SIGCONT to a component of the native stack.
pub fn signal_component(stack: &StackEnv, component: &str, signal: &str) {
    let pid = std::fs::read_to_string(stack.run_dir.join(format!("{component}.pid")))
        .unwrap_or_else(|e| panic!("no pid file for {component}: {e}"));
    let status = Command::new("kill")
        .args([&format!("-{signal}"), pid.trim()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {component}");
}

pub async fn fetch_trace(http: &reqwest::Client, jaeger: &str, trace_id: &str) -> Vec<StoredSpan> {
    let response = http
        .get(format!("{jaeger}/api/v3/traces/{trace_id}"))
        .send()
        .await
        .unwrap();
    if !response.status().is_success() {
        return Vec::new();
    }
    parse(&response.json().await.unwrap())
}

/// The spans of `trace_id` once Jaeger has at least `count` of them; panics after
/// [`WAIT`] saying what is there.
pub fn wait_for_spans(
    runtime: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    jaeger: &str,
    trace_id: &str,
    count: usize,
) -> Vec<StoredSpan> {
    let deadline = Instant::now() + WAIT;
    loop {
        let spans = runtime.block_on(fetch_trace(http, jaeger, trace_id));
        if spans.len() >= count {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} has {} of {count} spans in Jaeger after {WAIT:?}: {:?}",
            spans.len(),
            spans
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
