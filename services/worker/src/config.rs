//! Settings from the environment (defaults fit `docker compose up` and local runs). No hop
//! of its own: it names the topics and the endpoint the worker's hops use.

use std::net::SocketAddr;

use faults::FaultInjection;
use proto::client::ClientConfig;
use settings::{SettingError, Source, millis_or, parse_or, positive_or, string_or};

use crate::failure::RetryPolicy;

/// Default `WORKER_MAX_IN_FLIGHT`: see the README's benchmark for how it was chosen.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 64;

/// Default `KAFKA_DLQ_TOPIC`.
pub const DLQ_TOPIC: &str = "orders.dlq";

#[derive(Debug, Clone)]
pub struct Config {
    /// `KAFKA_BOOTSTRAP_SERVERS` (default `localhost:9092`).
    pub bootstrap_servers: String,
    /// `KAFKA_TOPIC`: the `order.created` events (default `orders`).
    pub topic: String,
    /// `KAFKA_GROUP_ID`: the consumer group; workers in one group share the partitions
    /// (default `worker`).
    pub group_id: String,
    /// `KAFKA_DLQ_TOPIC`: where records that can never be handled go (default
    /// `orders.dlq`). Created by Kafka on the first write where topics are auto-created,
    /// otherwise by the operator.
    pub dlq_topic: String,
    /// How failures are retried; `WORKER_RETRY_MAX_BACKOFF_MS` sets the longest wait
    /// between two tries (default 5000). See `failure.rs`.
    pub retry: RetryPolicy,
    /// `ORDER_SERVICE_*`: where outcomes are reported, and how long one call may take.
    pub order_service: ClientConfig,
    /// `WORKER_MAX_IN_FLIGHT`: records handled at once, across all partitions (default
    /// 64). Records of one order are still handled one after the other.
    pub max_in_flight: usize,
    /// `HEALTH_ADDR`: the liveness/readiness HTTP endpoint (default `0.0.0.0:8081`).
    pub health_addr: SocketAddr,
    /// `FAULT_INJECTION`: `baggage` honours `demo.fault=stock_out|payment_declined` and
    /// `demo.delay.reserve_stock|charge_payment` (default `off`; see the faults crate).
    pub fault_injection: FaultInjection,
}

impl Config {
    pub fn from_env(source: &impl Source) -> Result<Self, SettingError> {
        let topic = string_or(source, "KAFKA_TOPIC", proto::events::ORDERS_TOPIC);
        let dlq_topic = string_or(source, "KAFKA_DLQ_TOPIC", DLQ_TOPIC);
        if dlq_topic == topic {
            // Every dead letter would be consumed and dead-lettered again, for ever.
            return Err(SettingError::new(
                "KAFKA_DLQ_TOPIC",
                &dlq_topic,
                "must differ from KAFKA_TOPIC",
            ));
        }
        Ok(Self {
            bootstrap_servers: string_or(source, "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            topic,
            group_id: string_or(source, "KAFKA_GROUP_ID", "worker"),
            dlq_topic,
            retry: RetryPolicy {
                max_backoff: millis_or(
                    source,
                    "WORKER_RETRY_MAX_BACKOFF_MS",
                    RetryPolicy::default().max_backoff,
                )?,
                ..RetryPolicy::default()
            },
            order_service: ClientConfig::from_source(source)?,
            max_in_flight: max_in_flight(source)?,
            health_addr: parse_or(source, "HEALTH_ADDR", ([0, 0, 0, 0], 8081).into())?,
            fault_injection: FaultInjection::from_env(source)?,
        })
    }
}

/// More than this many records at once only adds memory and tasks: the order-service and
/// the payment step are the limit long before.
const MAX_IN_FLIGHT_LIMIT: u64 = 10_000;

fn max_in_flight(source: &impl Source) -> Result<usize, SettingError> {
    let n = positive_or(source, "WORKER_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT)?;
    if n > MAX_IN_FLIGHT_LIMIT {
        return Err(SettingError::new(
            "WORKER_MAX_IN_FLIGHT",
            n,
            format!("at most {MAX_IN_FLIGHT_LIMIT}"),
        ));
    }
    // At most 10,000: fits every usize.
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD: &[(&str, &str)] = &[
        ("HEALTH_ADDR", "localhost"),
        ("ORDER_SERVICE_URL", "grpc://x"),
        ("ORDER_SERVICE_TIMEOUT_MS", "-1"),
        ("WORKER_RETRY_MAX_BACKOFF_MS", "0"),
        ("WORKER_RETRY_MAX_BACKOFF_MS", "5s"),
        ("KAFKA_DLQ_TOPIC", "orders"),
        ("WORKER_MAX_IN_FLIGHT", "0"),
        ("WORKER_MAX_IN_FLIGHT", "many"),
        ("WORKER_MAX_IN_FLIGHT", "10001"),
        ("FAULT_INJECTION", "yes"),
    ];

    #[test]
    fn defaults_need_no_variable_and_bad_values_name_theirs() {
        let defaults = Config::from_env(&|_: &str| None).unwrap();
        assert_eq!(defaults.dlq_topic, "orders.dlq");
        assert_eq!(defaults.retry, RetryPolicy::default());
        let source = |k: &str| match k {
            "KAFKA_DLQ_TOPIC" => Some("orders.dead".to_owned()),
            "WORKER_RETRY_MAX_BACKOFF_MS" => Some("30000".to_owned()),
            _ => None,
        };
        let set = Config::from_env(&source).unwrap();
        assert_eq!(set.dlq_topic, "orders.dead");
        assert_eq!(set.retry.max_backoff, std::time::Duration::from_secs(30));
        settings::assert_defaults_and_named_errors(|source| Config::from_env(&source), BAD);
    }
}
