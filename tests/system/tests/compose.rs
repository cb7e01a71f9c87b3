//! docker-compose.yml, checked without a Docker engine: the properties the learning
//! stack promises (pinned images, healthchecks, start order, loopback-only ports, memory
//! limits within 1.9 GiB in all, non-root read-only services, no capabilities and no privilege gain anywhere,
//! Kafka's data on a named volume, a stop grace period longer than the services'
//! shutdown deadline), and that every variable it sets for our services is one they
//! actually read, with addresses that match the compose services.
//! The file's validity against the Compose Specification schema is checked by
//! `scripts/test` (check-jsonschema).

// Test-only crate: a panic is how a helper reports a failed set-up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use lifecycle::shutdown::ShutdownConfig;
use serde_yaml_ng::Value;

const OUR_SERVICES: [&str; 3] = ["gateway", "order-service", "worker"];

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `.env`, which docker compose reads for `${VAR}` interpolation.
fn dotenv() -> BTreeMap<String, String> {
    repo_file(".env")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Resolves `${VAR:-default}` the way compose does with `.env`, and checks that the
/// default written in the file agrees with `.env`.
fn interpolate(text: &str) -> String {
    let env = dotenv();
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let expression = &rest[start + 2..end];
        let (var, default) = expression.split_once(":-").unwrap_or((expression, ""));
        if let Some(value) = env.get(var) {
            assert_eq!(
                value, default,
                "the default of ${{{var}}} in docker-compose.yml differs from .env"
            );
        }
        out.push_str(env.get(var).map_or(default, String::as_str));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn compose() -> Value {
    let mut value: Value = serde_yaml_ng::from_str(&repo_file("docker-compose.yml")).unwrap();
    value.apply_merge().unwrap();
    value
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => interpolate(s),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.as_str().unwrap().to_owned(), text(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The exact version from `NAME=...` in scripts/stack.
fn stack_version(name: &str) -> String {
    repo_file("scripts/stack")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} not in scripts/stack"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Every image a service runs: `image:` for pulled ones, the `*_IMAGE` build args (the
/// official base images) for ones built here.
fn upstream_images(service: &Value) -> Vec<String> {
    let mut images: Vec<String> = service["build"]["args"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str().unwrap().ends_with("_IMAGE"))
        .map(|(_, v)| text(v))
        .collect();
    if service.get("build").is_none() {
        images.push(text(&service["image"]));
    }
    images
}

fn tag(image: &str) -> &str {
    image.rsplit_once(':').map_or("", |(_, tag)| tag)
}

/// `1.2.3`, or `v1.2.3` (Prometheus tags its images so).
fn is_exact_version(tag: &str) -> bool {
    let parts: Vec<&str> = tag.strip_prefix('v').unwrap_or(tag).split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

#[test]
fn images_are_pinned_and_match_the_native_stack() {
    let services = services(&compose());
    let mut upstream = BTreeMap::new();
    for (name, service) in &services {
        for image in upstream_images(service) {
            assert!(
                is_exact_version(tag(&image)),
                "{name}: {image} is not pinned to an exact version"
            );
            upstream.insert(
                image.split(':').next().unwrap().to_owned(),
                tag(&image).to_owned(),
            );
        }
        if let Some(image) = service["image"].as_str() {
            assert!(
                !image.ends_with(":latest") && image.contains(':'),
                "{name}: image {image} has no exact tag"
            );
        }
    }
    // The Dockerfile's own defaults are pinned the same way.
    for line in repo_file("Dockerfile")
        .lines()
        .filter(|l| l.starts_with("ARG ") && l.contains("_IMAGE="))
    {
        let image = line.split_once('=').unwrap().1;
        let tag = tag(image);
        assert!(
            is_exact_version(tag)
                || tag.starts_with("1.")
                || tag.ends_with(":nonroot")
                || tag == "nonroot",
            "Dockerfile: {line} is not pinned"
        );
        assert!(!image.ends_with(":latest"), "Dockerfile: {line}");
    }
    assert_eq!(upstream["apache/kafka"], stack_version("KAFKA_VERSION"));
    assert_eq!(
        format!("v{}", upstream["otel/opentelemetry-collector-contrib"]),
        stack_version("COLLECTOR_VERSION")
    );
    // Jaeger v2 releases are tagged v1.x on the Go module path: v1.76.0 is v2.13.0.
    assert_eq!(stack_version("JAEGER_MODULE_VERSION"), "v1.76.0");
    assert_eq!(upstream["jaegertracing/jaeger"], "2.13.0");
    // Prometheus 3.x is tagged v0.3xx.y on the Go module path: v0.316.0 is v3.16.0.
    let prometheus = stack_version("PROMETHEUS_VERSION");
    assert_eq!(upstream["prom/prometheus"], format!("v{prometheus}"));
    let (major, rest) = prometheus.split_once('.').unwrap();
    let (minor, patch) = rest.split_once('.').unwrap();
    assert_eq!(major, "3");
    assert_eq!(
        stack_version("PROMETHEUS_MODULE_VERSION"),
        format!("v0.{}.{patch}", 300 + minor.parse::<u32>().unwrap())
    );
}

#[test]
fn every_service_has_a_healthcheck_and_starts_after_healthy_dependencies() {
    let services = services(&compose());
    for (name, service) in &services {
        let test = service["healthcheck"]["test"].as_sequence();
        assert!(
            test.is_some_and(|t| t.len() >= 2),
            "{name} has no healthcheck"
        );
        for (dependency, condition) in service["depends_on"].as_mapping().into_iter().flatten() {
            let dependency = dependency.as_str().unwrap();
            assert!(
                services.contains_key(dependency),
                "{name} depends on unknown {dependency}"
            );
            assert_eq!(
                condition["condition"].as_str(),
                Some("service_healthy"),
                "{name} → {dependency}"
            );
        }
    }
    let depends = |name: &str| -> BTreeSet<String> {
        services[name]["depends_on"]
            .as_mapping()
            .map(|m| m.keys().map(|k| k.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    // The order-service creates the topic, so the worker waits for it.
    assert!(
        depends("order-service").is_superset(&["kafka".into(), "otel-collector".into()].into())
    );
    assert!(
        depends("worker").is_superset(
            &[
                "kafka".into(),
                "order-service".into(),
                "otel-collector".into()
            ]
            .into()
        )
    );
    assert!(
        depends("gateway").is_superset(&["order-service".into(), "otel-collector".into()].into())
    );
    assert!(depends("otel-collector").contains("jaeger"));
    // The Collector pushes metrics to Prometheus; Jaeger's Monitor tab reads them there.
    assert!(depends("otel-collector").contains("prometheus"));
    assert!(depends("jaeger").contains("prometheus"));
}

#[test]
fn published_ports_listen_on_loopback_only() {
    let services = services(&compose());
    let mut published = BTreeMap::new();
    for (name, service) in &services {
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let port = text(port);
            assert!(
                port.starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond loopback"
            );
            published.insert(name.clone(), port);
        }
    }
    assert!(
        ["gateway", "jaeger", "prometheus"]
            .iter()
            .all(|name| published.contains_key(*name)),
        "{published:?}"
    );
    assert!(
        !published.contains_key("kafka"),
        "Kafka is not for the host"
    );
}

/// `768M`, `1G` in MiB.
fn mebibytes(limit: &str) -> u64 {
    let (number, unit) = limit.split_at(limit.len() - 1);
    let number: u64 = number.parse().unwrap();
    match unit {
        "M" => number,
        "G" => number * 1024,
        other => panic!("unexpected unit {other:?} in {limit:?}"),
    }
}

#[test]
fn memory_limits_add_up_to_at_most_1_9_gib() {
    let services = services(&compose());
    let limits: BTreeMap<&String, u64> = services
        .iter()
        .map(|(name, service)| {
            let limit = text(&service["deploy"]["resources"]["limits"]["memory"]);
            (name, mebibytes(&limit))
        })
        .collect();
    let total: u64 = limits.values().sum();
    // 1.9 GiB = 1945.6 MiB: what the stack promises a laptop.
    assert!(total * 10 <= 19 * 1024, "{total} MiB in all: {limits:?}");
}

#[test]
fn prometheus_runs_as_the_native_stack_runs_it() {
    let services = services(&compose());
    let prometheus = &services["prometheus"];
    let command: Vec<String> = prometheus["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let stack = repo_file("scripts/stack");
    // What the Collector and Jaeger rely on: the OTLP push endpoint, exemplars.
    for flag in [
        "--web.enable-otlp-receiver",
        "--enable-feature=exemplar-storage",
    ] {
        assert!(command.iter().any(|c| c == flag), "compose lacks {flag}");
        assert!(stack.contains(flag), "scripts/stack lacks {flag}");
    }
    let config = command
        .iter()
        .find_map(|c| c.strip_prefix("--config.file="))
        .unwrap();
    assert!(
        format!("{:?}", prometheus["volumes"]).contains(&format!("./prometheus.yml:{config}:ro")),
        "compose mounts the prometheus.yml that scripts/stack loads"
    );
    assert!(stack.contains(r#"--config.file="$ROOT/prometheus.yml""#));
    // Its data outlives the container, on a named volume at --storage.tsdb.path.
    let data = command
        .iter()
        .find_map(|c| c.strip_prefix("--storage.tsdb.path="))
        .unwrap();
    assert!(
        prometheus["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|v| text(v) == format!("prometheus-data:{data}"))
    );
    assert_eq!(
        prometheus["read_only"].as_bool(),
        Some(true),
        "read-only root filesystem"
    );
    // The healthcheck asks Prometheus itself, on the port it listens on.
    let probe = text(
        prometheus["healthcheck"]["test"]
            .as_sequence()
            .unwrap()
            .last()
            .unwrap(),
    );
    assert_eq!(probe, "http://127.0.0.1:9090/-/ready");
    let published = text(&prometheus["ports"][0]);
    assert!(published.ends_with(":9090"), "{published}");
    // The Collector pushes to, and Jaeger reads from, this service at that port.
    assert!(
        repo_file("otel-collector.yaml")
            .contains("${env:PROMETHEUS_OTLP_ENDPOINT:-http://prometheus:9090/api/v1/otlp}")
    );
    assert!(
        repo_file("jaeger.yaml").contains("${env:PROMETHEUS_ENDPOINT:-http://prometheus:9090}")
    );
}

#[test]
fn every_service_has_a_memory_limit_and_ours_run_hardened() {
    let compose = compose();
    let services = services(&compose);
    for (name, service) in &services {
        let limit = &service["deploy"]["resources"]["limits"]["memory"];
        assert!(
            limit
                .as_str()
                .is_some_and(|l| l.ends_with('M') || l.ends_with('G')),
            "{name} has no memory limit"
        );
    }
    for name in OUR_SERVICES {
        let service = &services[name];
        assert_eq!(
            service["read_only"].as_bool(),
            Some(true),
            "{name}: read-only root filesystem"
        );
        let user = text(&service["user"]);
        assert!(
            !user.starts_with('0') && user != "root",
            "{name} runs as root"
        );
        assert!(
            service["restart"].as_str().is_some(),
            "{name} has no restart policy"
        );
    }
    // The order database lives on a named volume (removed by `down -v`).
    let volumes = services["order-service"]["volumes"].as_sequence().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v.as_str().unwrap().starts_with("orders-data:"))
    );
    assert!(
        compose["volumes"]["orders-data"].is_null()
            || compose["volumes"]["orders-data"].is_mapping()
    );
    assert!(
        compose["volumes"]
            .as_mapping()
            .unwrap()
            .contains_key("orders-data")
    );
    // The image's own user is not root either.
    assert!(
        repo_file("Dockerfile")
            .lines()
            .any(|l| l == "USER 65532:65532")
    );
}

/// The variables a service reads, found by letting its own config parser run over the
/// compose environment and noting what it asks for.
fn variables_read(service: &str, env: &BTreeMap<String, String>) -> BTreeSet<String> {
    let read = RefCell::new(BTreeSet::new());
    let source = |key: &str| {
        read.borrow_mut().insert(key.to_owned());
        env.get(key).cloned()
    };
    let result = match service {
        "gateway" => gateway::Config::from_env(&source).map(|_| ()),
        "order-service" => order_service::Config::from_env(&source).map(|_| ()),
        "worker" => worker::Config::from_env(&source).map(|_| ()),
        other => panic!("unknown service {other}"),
    };
    result.unwrap_or_else(|e| panic!("{service}: compose sets an invalid value: {e}"));
    telemetry::TelemetryConfig::from_source(service, "test", &source)
        .unwrap_or_else(|e| panic!("{service}: compose sets an invalid telemetry value: {e}"));
    // Every main.rs reads SHUTDOWN_TIMEOUT_MS through lifecycle.
    ShutdownConfig::from_env(&source)
        .unwrap_or_else(|e| panic!("{service}: compose sets an invalid shutdown value: {e}"));
    read.into_inner()
}

fn host_port(address: &str) -> (String, u16) {
    let without_scheme = address.split("://").last().unwrap();
    let authority = without_scheme.split('/').next().unwrap();
    let (host, port) = authority.rsplit_once(':').unwrap();
    (host.to_owned(), port.parse().unwrap())
}

#[test]
fn compose_sets_only_variables_the_services_read_with_matching_addresses() {
    let services = services(&compose());
    let env_of = |name: &str| environment(&services[name]);
    for name in OUR_SERVICES {
        let env = env_of(name);
        let read = variables_read(name, &env);
        for key in env.keys() {
            assert!(
                read.contains(key),
                "compose sets {key} for {name}, which {name} never reads"
            );
        }
        assert_eq!(
            env["OTEL_SERVICE_NAME"], name,
            "service.name = compose service name"
        );

        // The healthcheck probes the port the service listens on.
        let probe = text(&services[name]["healthcheck"]["test"][2]);
        let health = env.get("HEALTH_ADDR").or(env.get("LISTEN_ADDR")).unwrap();
        assert_eq!(
            host_port(&probe).1,
            host_port(health).1,
            "{name}: healthcheck port"
        );

        // Telemetry goes to the collector's OTLP/HTTP port (otel-collector.yaml).
        let (host, port) = host_port(&env["OTEL_EXPORTER_OTLP_ENDPOINT"]);
        assert!(
            services.contains_key(&host),
            "{name}: {host} is not a compose service"
        );
        assert!(
            repo_file("otel-collector.yaml").contains(&format!("-0.0.0.0:{port}}}")),
            "collector listens on {port}"
        );
    }
    let order_port = host_port(&env_of("order-service")["LISTEN_ADDR"]).1;
    for name in ["gateway", "worker"] {
        let (host, port) = host_port(&env_of(name)["ORDER_SERVICE_URL"]);
        assert_eq!(
            (host.as_str(), port),
            ("order-service", order_port),
            "{name}: ORDER_SERVICE_URL"
        );
    }
    let kafka_listener = text(&services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]);
    for name in ["order-service", "worker"] {
        let env = env_of(name);
        let bootstrap = &env["KAFKA_BOOTSTRAP_SERVERS"];
        assert!(
            kafka_listener.ends_with(&format!("//{bootstrap}")),
            "{name}: {bootstrap} vs {kafka_listener}"
        );
        assert_eq!(
            env["KAFKA_TOPIC"],
            env_of("worker")["KAFKA_TOPIC"],
            "one topic"
        );
    }
    let gateway_port = host_port(&env_of("gateway")["LISTEN_ADDR"]).1;
    let published = text(&services["gateway"]["ports"][0]);
    assert!(
        published.ends_with(&format!(":{gateway_port}")),
        "gateway publishes {published}"
    );
    // Jaeger's and the Collector's config files are the ones the native stack loads.
    let volumes = |name: &str| format!("{:?}", services[name]["volumes"]);
    assert!(volumes("otel-collector").contains("./otel-collector.yaml:"));
    assert!(volumes("jaeger").contains("./jaeger.yaml:"));
}

#[test]
fn every_container_drops_all_capabilities_and_cannot_gain_privileges() {
    // All of them, Kafka, the Collector and Jaeger included, run as non-root users and
    // listen above 1024, so none needs a capability.
    for (name, service) in &services(&compose()) {
        let security_opt: Vec<String> = service["security_opt"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        assert!(
            security_opt.iter().any(|o| o == "no-new-privileges:true"),
            "{name}: security_opt {security_opt:?}"
        );
        let cap_drop: Vec<String> = service["cap_drop"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        assert_eq!(cap_drop, ["ALL"], "{name}: cap_drop");
        assert!(
            service.get("cap_add").is_none(),
            "{name} adds capabilities back"
        );
        assert!(
            service
                .get("privileged")
                .is_none_or(|p| p.as_bool() == Some(false)),
            "{name} is privileged"
        );
    }
}

#[test]
fn kafka_keeps_its_topic_and_offsets_on_a_named_volume() {
    let compose = compose();
    let kafka = &services(&compose)["kafka"];
    let env = environment(kafka);
    // The image's own data directory: it is owned by the image's user (appuser), and a
    // named volume mounted there starts with that ownership, so the broker can write it.
    // The default, /tmp/kraft-combined-logs, is lost with the container.
    let log_dirs = &env["KAFKA_LOG_DIRS"];
    assert_eq!(log_dirs, "/var/lib/kafka/data");
    let mounts: Vec<String> = kafka["volumes"]
        .as_sequence()
        .expect("kafka has volumes")
        .iter()
        .map(text)
        .collect();
    let volume = mounts
        .iter()
        .find_map(|m| m.strip_suffix(&format!(":{log_dirs}")))
        .unwrap_or_else(|| panic!("{log_dirs} is not mounted: {mounts:?}"));
    assert!(
        compose["volumes"]
            .as_mapping()
            .unwrap()
            .contains_key(volume),
        "{volume} is not a named volume"
    );
    // A fixed cluster id: the storage formatted on the first start is recognised on the
    // next, instead of being refused as another cluster's.
    let cluster_id = &env["CLUSTER_ID"];
    assert_eq!(
        cluster_id.len(),
        22,
        "a base64 UUID, as kafka-storage makes"
    );
}

/// `30s`, `1m`, `1m30s`: the forms of a compose duration this file uses.
fn compose_duration(value: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut number = String::new();
    for c in value.chars() {
        match c {
            '0'..='9' => number.push(c),
            'm' | 's' => {
                let n: u64 = number.parse().unwrap();
                total += Duration::from_secs(if c == 'm' { n * 60 } else { n });
                number.clear();
            }
            other => panic!("unexpected {other:?} in duration {value:?}"),
        }
    }
    assert!(number.is_empty(), "duration {value:?} lacks a unit");
    total
}

#[test]
fn docker_waits_longer_than_our_shutdown_deadline_and_flush() {
    // opentelemetry_sdk bounds the provider's shutdown (the flush) at 5 s.
    const FLUSH: Duration = Duration::from_secs(5);
    let services = services(&compose());
    for name in OUR_SERVICES {
        let env = environment(&services[name]);
        let source = |key: &str| env.get(key).cloned();
        let deadline = ShutdownConfig::from_env(&source).unwrap().timeout;
        let grace = compose_duration(&text(&services[name]["stop_grace_period"]));
        assert!(
            grace >= deadline + FLUSH,
            "{name}: stop_grace_period {grace:?} < SHUTDOWN_TIMEOUT_MS {deadline:?} + flush {FLUSH:?}"
        );
        if name == "gateway" {
            // The gateway's drain ends by itself before the deadline: each request within
            // REQUEST_TIMEOUT_MS, each connection's headers within HEADER_READ_TIMEOUT_MS.
            let config = gateway::Config::from_env(&source).unwrap();
            assert!(config.request_timeout < deadline);
            assert!(config.header_read_timeout < deadline);
        }
    }
}
