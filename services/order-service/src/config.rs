//! Settings from the environment (defaults fit `docker compose up` and local runs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use faults::FaultInjection;
use settings::{SettingError, Source, millis_or, parse_or, string_or};

use crate::outbox::RelaySettings;

#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`: where the gRPC server listens (default `0.0.0.0:50051`).
    pub listen_addr: SocketAddr,
    /// `HEALTH_ADDR`: liveness/readiness over HTTP for container healthchecks (default
    /// `0.0.0.0:8082`); gRPC clients use the standard gRPC health service instead.
    pub health_addr: SocketAddr,
    /// `DATABASE_PATH`: the SQLite file (default `orders.db`).
    pub database_path: PathBuf,
    pub kafka: KafkaConfig,
    /// `OUTBOX_*`: how the outbox relay paces itself.
    pub outbox: RelaySettings,
    /// `FAULT_INJECTION`: `baggage` honours `demo.fault=order_service_unavailable` and
    /// `demo.delay.create_order` in `CreateOrder` (default `off`; see the faults crate).
    pub fault_injection: FaultInjection,
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS` (default `localhost:9092`).
    pub bootstrap_servers: String,
    /// `KAFKA_TOPIC`: where `order.created` events go (default `orders`).
    pub topic: String,
    /// `KAFKA_TOPIC_PARTITIONS`: used when this service creates the topic (default 3).
    pub topic_partitions: i32,
}

impl Config {
    pub fn from_env(source: &impl Source) -> Result<Self, SettingError> {
        Ok(Self {
            listen_addr: parse_or(source, "LISTEN_ADDR", ([0, 0, 0, 0], 50051).into())?,
            health_addr: parse_or(source, "HEALTH_ADDR", ([0, 0, 0, 0], 8082).into())?,
            database_path: string_or(source, "DATABASE_PATH", "orders.db").into(),
            kafka: KafkaConfig {
                bootstrap_servers: string_or(source, "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
                topic: string_or(source, "KAFKA_TOPIC", proto::events::ORDERS_TOPIC),
                topic_partitions: parse_or(source, "KAFKA_TOPIC_PARTITIONS", 3)?,
            },
            outbox: RelaySettings {
                poll_interval: millis_or(
                    source,
                    "OUTBOX_POLL_INTERVAL_MS",
                    Duration::from_secs(1),
                )?,
                reconcile_after: millis_or(
                    source,
                    "OUTBOX_RECONCILE_AFTER_MS",
                    Duration::from_secs(60),
                )?,
                max_republish: parse_or(source, "OUTBOX_MAX_REPUBLISH", 3)?,
            },
            fault_injection: FaultInjection::from_env(source)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: &[(&str, &str)] = &[
        ("LISTEN_ADDR", ":50051"),
        ("HEALTH_ADDR", "x"),
        ("KAFKA_TOPIC_PARTITIONS", "three"),
        ("OUTBOX_POLL_INTERVAL_MS", "-5"),
        ("OUTBOX_RECONCILE_AFTER_MS", "0"),
        ("OUTBOX_MAX_REPUBLISH", "many"),
        ("FAULT_INJECTION", "on"),
    ];

    #[test]
    fn defaults_need_no_variable_and_bad_values_name_theirs() {
        settings::assert_defaults_and_named_errors(|source| Config::from_env(&source), BAD);
    }
}
