//! Settings from the environment (defaults fit `docker compose up` and local runs).

use std::net::SocketAddr;

use proto::client::ClientConfig;
use settings::{SettingError, Source, parse_or, string_or};

#[derive(Debug, Clone)]
pub struct Config {
    /// `KAFKA_BOOTSTRAP_SERVERS` (default `localhost:9092`).
    pub bootstrap_servers: String,
    /// `KAFKA_TOPIC`: the `order.created` events (default `orders`).
    pub topic: String,
    /// `KAFKA_GROUP_ID`: the consumer group; workers in one group share the partitions
    /// (default `worker`).
    pub group_id: String,
    /// `ORDER_SERVICE_*`: where outcomes are reported, and how long one call may take.
    pub order_service: ClientConfig,
    /// `HEALTH_ADDR`: the liveness/readiness HTTP endpoint (default `0.0.0.0:8081`).
    pub health_addr: SocketAddr,
}

impl Config {
    pub fn from_env(source: &impl Source) -> Result<Self, SettingError> {
        Ok(Self {
            bootstrap_servers: string_or(source, "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            topic: string_or(source, "KAFKA_TOPIC", proto::events::ORDERS_TOPIC),
            group_id: string_or(source, "KAFKA_GROUP_ID", "worker"),
            order_service: ClientConfig::from_source(source)?,
            health_addr: parse_or(source, "HEALTH_ADDR", ([0, 0, 0, 0], 8081).into())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: &[(&str, &str)] = &[
        ("HEALTH_ADDR", "localhost"),
        ("ORDER_SERVICE_URL", "grpc://x"),
        ("ORDER_SERVICE_TIMEOUT_MS", "-1"),
    ];

    #[test]
    fn defaults_need_no_variable_and_bad_values_name_theirs() {
        assert!(Config::from_env(&|_: &str| None).is_ok());
        for (key, value) in BAD {
            let source = |k: &str| (k == *key).then(|| value.to_string());
            let error = Config::from_env(&source).unwrap_err();
            assert_eq!(error.variable, *key, "{key}={value}");
        }
    }
}
