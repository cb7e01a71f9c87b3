//! The worker's own metrics, beside the gRPC client metrics the telemetry crate's
//! middleware records: `messaging.process.duration` (semantic conventions: how long one
//! record took to handle, until it was done or dead-lettered) and the consumer lag per
//! partition (`app.kafka.consumer.lag`: records behind the partition's end; the
//! conventions define no lag metric), which librdkafka reports in its statistics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, ObservableGauge};
use rdkafka::statistics::Statistics;

/// How often librdkafka reports its statistics, and so the lag (`statistics.interval.ms`).
pub const STATISTICS_INTERVAL_MS: u32 = 5000;

/// Lag by (topic, partition), as librdkafka last reported it.
#[derive(Debug, Clone, Default)]
pub struct Lag(Arc<Mutex<HashMap<(String, i32), i64>>>);

impl Lag {
    /// From a statistics report: the partitions this consumer fetches (librdkafka lists
    /// the others with a lag of -1, unknown).
    pub fn update(&self, statistics: &Statistics) {
        let mut lag = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        lag.clear();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    lag.insert((topic.clone(), *partition), p.consumer_lag);
                }
            }
        }
    }
}

pub struct WorkerMetrics {
    process_duration: Histogram<f64>,
    group: String,
    /// Kept so its callback lives as long as the worker.
    _lag: ObservableGauge<i64>,
}

// By hand: the instruments have no useful `Debug`.
impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl WorkerMetrics {
    pub fn new(group: &str, lag: Lag) -> Self {
        let meter = opentelemetry::global::meter("worker");
        let lag_group = group.to_owned();
        Self {
            process_duration: meter
                .f64_histogram("messaging.process.duration")
                .with_unit("s")
                .with_description("Duration of processing operation.")
                .with_boundaries(telemetry::DURATION_BUCKETS_SECONDS.to_vec())
                .build(),
            group: group.to_owned(),
            _lag: meter
                .i64_observable_gauge("app.kafka.consumer.lag")
                .with_unit("{message}")
                .with_description(
                    "Records between this consumer's position and the partition's end.",
                )
                .with_callback(move |gauge| {
                    let lag = lag.0.lock().unwrap_or_else(PoisonError::into_inner);
                    for ((topic, partition), records) in lag.iter() {
                        gauge.observe(
                            *records,
                            &[
                                KeyValue::new("messaging.system", "kafka"),
                                KeyValue::new("messaging.destination.name", topic.clone()),
                                KeyValue::new(
                                    "messaging.destination.partition.id",
                                    partition.to_string(),
                                ),
                                KeyValue::new("messaging.consumer.group.name", lag_group.clone()),
                            ],
                        );
                    }
                })
                .build(),
        }
    }

    /// One record handled (`error_type`: why it was dead-lettered, if it was).
    pub fn processed(&self, started: Instant, topic: &str, error_type: Option<&'static str>) {
        let mut attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("messaging.consumer.group.name", self.group.clone()),
        ];
        if let Some(error_type) = error_type {
            attributes.push(KeyValue::new("error.type", error_type));
        }
        self.process_duration
            .record(started.elapsed().as_secs_f64(), &attributes);
    }
}
