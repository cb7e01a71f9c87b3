//! The Kafka consumer: its settings (at least once) and the rebalance hook that tells the
//! dispatcher which partitions this worker just lost. Hop: where the `orders` records
//! come in; their CONSUMER spans start in `process.rs`.

use std::sync::Arc;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::metrics::{Lag, STATISTICS_INTERVAL_MS};

/// `client.id`, and `messaging.client.id` on the spans.
pub const CLIENT_ID: &str = "worker";

pub type WorkerConsumer = StreamConsumer<WorkerContext>;

/// A partition, as `(topic, partition)`.
pub type PartitionId = (String, i32);

/// The partitions taken away by each rebalance, in order.
pub type Revocations = mpsc::UnboundedReceiver<Vec<PartitionId>>;

/// Reports revoked partitions. librdkafka calls it from inside `recv()`, on the
/// dispatcher's task, before the rebalance takes effect.
#[derive(Debug)]
pub struct WorkerContext {
    revoked: mpsc::UnboundedSender<Vec<PartitionId>>,
    /// Where librdkafka's statistics put the consumer lag (`metrics.rs`).
    lag: Lag,
}

impl ClientContext for WorkerContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.update(&statistics);
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let revoked = partitions
                .elements()
                .iter()
                .map(|p| (p.topic().to_owned(), p.partition()))
                .collect();
            // Fails only once the dispatcher is gone, when nobody needs to know.
            let _ = self.revoked.send(revoked);
        }
    }
}

/// The consumer's settings, before it is created (tests add their own).
pub fn settings(config: &Config) -> ClientConfig {
    let mut settings = ClientConfig::new();
    settings
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", CLIENT_ID)
        .set("group.id", &config.group_id)
        // Events published before this worker first joined are still processed.
        .set("auto.offset.reset", "earliest")
        // Stored offsets are committed every 5 s and on shutdown and rebalance.
        .set("enable.auto.commit", "true")
        // We store an offset only once its record is handled: at-least-once.
        .set("enable.auto.offset.store", "false")
        // A partition resumed after backpressure joins the next fetch request; the broker
        // holds a fetch for idle partitions up to this long (librdkafka's default is
        // 500 ms, which stalled a busy partition each time it was resumed).
        .set("fetch.wait.max.ms", "100")
        // How long the group waits for a worker that vanished (SIGKILL, a lost node)
        // before handing its partitions to the others. librdkafka's 45 s held a killed
        // worker's orders for 41–48 s in the drills; 10 s is well above a heartbeat's
        // worst gap (every 3 s) and the broker's minimum (6 s).
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000")
        // The consumer lag for `app.kafka.consumer.lag` comes with these reports.
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS.to_string());
    settings
}

/// Creates the consumer from `settings` and subscribes it to `topic`.
pub fn create(
    settings: &ClientConfig,
    topic: &str,
    lag: Lag,
) -> KafkaResult<(Arc<WorkerConsumer>, Revocations)> {
    let (revoked, revocations) = mpsc::unbounded_channel();
    let consumer: WorkerConsumer = settings.create_with_context(WorkerContext { revoked, lag })?;
    consumer.subscribe(&[topic])?;
    Ok((Arc::new(consumer), revocations))
}
