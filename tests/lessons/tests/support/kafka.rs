//! A topic on librdkafka's mock cluster with a producer and a consumer, for the lessons
//! about the Kafka hop: records really go through librdkafka, headers and all.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const TOPIC: &str = "orders";
pub const GROUP: &str = "lessons";

pub struct MockTopic {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub producer: FutureProducer,
    consumer: BaseConsumer,
}

impl MockTopic {
    pub fn new() -> Self {
        let cluster = MockCluster::new(1).expect("mock Kafka cluster");
        cluster.create_topic(TOPIC, 1, 1).expect("topic");
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("producer");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", GROUP)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        // Assigned, not subscribed: no group rebalance to wait for.
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(TOPIC, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&partitions).expect("assignment");
        Self {
            cluster,
            producer,
            consumer,
        }
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The next record with `key`, as the worker's consumer would get it.
    pub fn receive(&self, key: &str) -> OwnedMessage {
        super::wait_for(
            &format!("the record {key:?}"),
            Duration::from_secs(30),
            || match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) if message.key() == Some(key.as_bytes()) => {
                    Some(message.detach())
                }
                Some(Err(error)) => panic!("consuming: {error}"),
                _ => None,
            },
        )
    }
}
