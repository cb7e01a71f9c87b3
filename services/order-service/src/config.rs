//! Settings from the environment (defaults fit `docker compose up` and local runs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use faults::FaultInjection;
use settings::{SettingError, Source, millis_or, parse_or, positive_or, string_or};

use crate::outbox::RelaySettings;
use crate::store::PostgresSettings;

#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`: where the gRPC server listens (default `0.0.0.0:50051`).
    pub listen_addr: SocketAddr,
    /// `HEALTH_ADDR`: liveness/readiness over HTTP for container healthchecks (default
    /// `0.0.0.0:8082`); gRPC clients use the standard gRPC health service instead.
    pub health_addr: SocketAddr,
    /// `DATABASE_PATH`: the SQLite file (default `orders.db`), when `DATABASE_URL` is unset.
    pub database_path: PathBuf,
    /// `DATABASE_URL` (`postgres://` or `postgresql://`): orders in PostgreSQL instead,
    /// for several replicas; with `DATABASE_MAX_CONNECTIONS` (pool size per replica,
    /// default 16) and `DATABASE_CONNECT_TIMEOUT_MS` (default 5000).
    pub postgres: Option<PostgresSettings>,
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
            postgres: postgres_settings(source)?,
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

/// PostgreSQL's settings when `DATABASE_URL` is set. The pool's settings are checked
/// either way, so a bad value fails at start whichever backend is in use.
fn postgres_settings(source: &impl Source) -> Result<Option<PostgresSettings>, SettingError> {
    let max_connections = positive_or(source, "DATABASE_MAX_CONNECTIONS", 16)?;
    let connect_timeout = millis_or(
        source,
        "DATABASE_CONNECT_TIMEOUT_MS",
        Duration::from_secs(5),
    )?;
    let Some(url) = settings::value(source, "DATABASE_URL") else {
        return Ok(None);
    };
    let connection = PostgresSettings::parse_url(&url)
        .map_err(|reason| SettingError::new("DATABASE_URL", without_password(&url), reason))?;
    Ok(Some(PostgresSettings {
        connection,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        connect_timeout,
    }))
}

/// `url` with the password (if any) left out, for an error message.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
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
        ("DATABASE_URL", "sqlite://orders.db"),
        ("DATABASE_URL", "postgres://orders@/orders"),
        ("DATABASE_URL", "postgres://orders@db:5432"),
        ("DATABASE_URL", "postgres://orders@db:port/orders"),
        ("DATABASE_MAX_CONNECTIONS", "0"),
        ("DATABASE_CONNECT_TIMEOUT_MS", "soon"),
    ];

    #[test]
    fn defaults_need_no_variable_and_bad_values_name_theirs() {
        settings::assert_defaults_and_named_errors(|source| Config::from_env(&source), BAD);
    }

    #[test]
    fn a_postgres_url_chooses_postgres_and_its_password_stays_out_of_errors() {
        let url = "postgresql://orders:s3cret@db.internal:6432/orders";
        let config =
            Config::from_env(&|key: &str| (key == "DATABASE_URL").then(|| url.to_owned())).unwrap();
        let postgres = config.postgres.unwrap();
        assert_eq!(postgres.connection.get_dbname(), Some("orders"));
        assert_eq!(postgres.connection.get_ports(), [6432]);
        assert_eq!(postgres.max_connections, 16);
        assert!(
            Config::from_env(&|_: &str| None)
                .unwrap()
                .postgres
                .is_none()
        );

        let bad = "postgres://orders:s3cret@db:port/orders";
        let error = Config::from_env(&|key: &str| (key == "DATABASE_URL").then(|| bad.to_owned()))
            .unwrap_err();
        assert_eq!(error.variable, "DATABASE_URL");
        assert!(!error.to_string().contains("s3cret"), "{error}");
        assert!(error.to_string().contains("orders:***@db:port"), "{error}");
    }
}
