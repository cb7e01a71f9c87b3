//! From the consumer to the code that handles records: one lane (a task and a bounded
//! channel) per partition, in order within a partition, at least once. Hop: none of its
//! own; each record's CONSUMER span starts in its lane (`process.rs`).
//!
//! - **Staying in the group.** The loop here does nothing but `recv()` and hand records
//!   over, so the consumer is polled however long a record takes. A record retried for
//!   minutes (the order-service is down) never lets `max.poll.interval.ms` expire, which
//!   would evict the worker from its group and hand its partitions to another.
//! - **Backpressure.** When a lane's channel is full, its partition is paused
//!   (`Consumer::pause`) and the record in hand waits in the lane's `parked` queue; a
//!   small task waits until half the channel is free, then the parked records go in and
//!   the partition is resumed. librdkafka drops what it had already fetched for a paused
//!   partition and fetches it again on resume, so memory stays bounded and other
//!   partitions flow on.
//! - **Offsets.** A lane stores a record's offset once the record is fully handled
//!   (processed or dead-lettered), in order; auto-commit and shutdown commit what is
//!   stored. A record whose handling is interrupted is not stored, so it comes again.
//! - **Rebalance.** Lanes of revoked partitions are stopped: each finishes its record in
//!   hand, or abandons it if it was waiting to retry; either way its offset can no
//!   longer be stored, so the partition's new owner handles it again.
//! - **Shutdown.** No more records are taken; each lane finishes the record in hand or
//!   leaves it unstored if shutdown cut a retry short; then the offsets are committed.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::consumer::{PartitionId, Revocations, WorkerConsumer};

/// Records a lane holds besides the one in hand. Small: a lane works through them one at
/// a time anyway, and what is not buffered here stays in Kafka.
pub const LANE_CAPACITY: usize = 8;

/// How the handling of one record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Done with it (processed, or dead-lettered): its offset is stored.
    Done,
    /// Stopped before it was done: its offset is not stored, so it is delivered again.
    Interrupted,
}

/// Consumes until `shutdown` is cancelled, handing each record to `handle(record, stop)`
/// in its partition's lane; `stop` is cancelled when the lane must stop (shutdown, or
/// its partition revoked). Then commits the stored offsets.
pub async fn run<H, F>(
    consumer: Arc<WorkerConsumer>,
    mut revocations: Revocations,
    capacity: usize,
    handle: H,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    H: Fn(OwnedMessage, CancellationToken) -> F + Clone + Send + 'static,
    F: Future<Output = Handled> + Send + 'static,
{
    let (room_sender, mut room) = mpsc::unbounded_channel();
    let mut lanes = Lanes {
        consumer: Arc::clone(&consumer),
        lanes: HashMap::new(),
        next_id: 0,
        capacity: capacity.max(1),
        handle,
        tasks: TaskTracker::new(),
        room: room_sender,
        shutdown: shutdown.clone(),
    };
    let result = loop {
        let step = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            Some(revoked) = revocations.recv() => {
                lanes.revoke(revoked);
                Ok(())
            }
            Some(room) = room.recv() => lanes.room(room),
            received = consumer.recv() => {
                // A rebalance runs inside `recv`: retire the revoked lanes before this
                // record can reach one of them.
                while let Ok(revoked) = revocations.try_recv() {
                    lanes.revoke(revoked);
                }
                match received {
                    Ok(message) => lanes.dispatch(message.detach()),
                    Err(error) => {
                        // Errors arrive as events, some again and again while a broker
                        // is down: do not spin on them.
                        tracing::warn!(%error, "Kafka receive error");
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        Ok(())
                    }
                }
            }
        };
        if let Err(error) = step {
            break Err(error);
        }
    };
    lanes.stop_all().await;
    // Even after an error: stored offsets cover only records fully handled.
    let committed = match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {
            tracing::info!("offsets committed");
            Ok(())
        }
        // Nothing was stored since the last commit.
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(error) => Err(error).context("committing offsets"),
    };
    // The first error is the one that matters.
    result.and(committed)
}

struct Lane {
    /// Tells a lane from the one before it on the same partition (revoked, then
    /// assigned again).
    id: u64,
    records: mpsc::Sender<OwnedMessage>,
    /// Records that came while the channel was full, oldest first. Not empty exactly
    /// while the partition is paused.
    parked: VecDeque<OwnedMessage>,
    stop: CancellationToken,
}

/// Half a lane's channel is free again (`open`), or the lane has ended (`!open`).
struct Room {
    partition: PartitionId,
    lane: u64,
    open: bool,
}

struct Lanes<H> {
    consumer: Arc<WorkerConsumer>,
    lanes: HashMap<PartitionId, Lane>,
    next_id: u64,
    capacity: usize,
    handle: H,
    tasks: TaskTracker,
    room: mpsc::UnboundedSender<Room>,
    shutdown: CancellationToken,
}

impl<H, F> Lanes<H>
where
    H: Fn(OwnedMessage, CancellationToken) -> F + Clone + Send + 'static,
    F: Future<Output = Handled> + Send + 'static,
{
    fn dispatch(&mut self, record: OwnedMessage) -> anyhow::Result<()> {
        let partition = (record.topic().to_owned(), record.partition());
        if !self.lanes.contains_key(&partition) {
            let lane = self.open(partition.clone());
            self.lanes.insert(partition.clone(), lane);
        }
        let Some(lane) = self.lanes.get_mut(&partition) else {
            return Ok(());
        };
        // Behind parked records, to keep the partition's order.
        if !lane.parked.is_empty() {
            lane.parked.push_back(record);
            return Ok(());
        }
        match lane.records.try_send(record) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(record)) => {
                lane.parked.push_back(record);
                if let Err(error) = self.consumer.pause(&partition_list(&partition)) {
                    // Records keep coming and wait in `parked`: more memory, nothing lost.
                    tracing::warn!(%error, topic = %partition.0, partition = partition.1, "could not pause a full partition");
                }
                wait_for_room(&self.tasks, &self.room, partition, lane, self.capacity);
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(ended(&partition)),
        }
    }

    fn room(&mut self, room: Room) -> anyhow::Result<()> {
        // Otherwise the lane was revoked meanwhile, and its records with it.
        let Some(lane) = self
            .lanes
            .get_mut(&room.partition)
            .filter(|lane| lane.id == room.lane)
        else {
            return Ok(());
        };
        if !room.open {
            return Err(ended(&room.partition));
        }
        while let Some(record) = lane.parked.pop_front() {
            match lane.records.try_send(record) {
                Ok(()) => {}
                Err(TrySendError::Full(record)) => {
                    lane.parked.push_front(record);
                    wait_for_room(&self.tasks, &self.room, room.partition, lane, self.capacity);
                    return Ok(());
                }
                Err(TrySendError::Closed(_)) => return Err(ended(&room.partition)),
            }
        }
        if let Err(error) = self.consumer.resume(&partition_list(&room.partition)) {
            tracing::warn!(%error, topic = %room.partition.0, partition = room.partition.1, "could not resume a partition");
        }
        Ok(())
    }

    /// Stops the lanes of partitions this worker no longer owns. A paused partition is
    /// resumed, so it is not still paused if it comes back to this worker.
    fn revoke(&mut self, partitions: Vec<PartitionId>) {
        for partition in partitions {
            if let Some(lane) = self.lanes.remove(&partition) {
                lane.stop.cancel();
                if !lane.parked.is_empty() {
                    // Fails when librdkafka has forgotten the partition: nothing to undo.
                    let _ = self.consumer.resume(&partition_list(&partition));
                }
                tracing::info!(topic = %partition.0, partition = partition.1, "partition revoked");
            }
        }
    }

    fn open(&mut self, partition: PartitionId) -> Lane {
        let (records, receiver) = mpsc::channel(self.capacity);
        let stop = self.shutdown.child_token();
        self.next_id += 1;
        self.tasks.spawn(lane(
            Arc::clone(&self.consumer),
            partition,
            receiver,
            self.handle.clone(),
            stop.clone(),
        ));
        Lane {
            id: self.next_id,
            records,
            parked: VecDeque::new(),
            stop,
        }
    }

    /// Stops every lane and waits for each to finish its record in hand.
    async fn stop_all(self) {
        for lane in self.lanes.values() {
            lane.stop.cancel();
        }
        // The channels close with their lanes, which ends the waits for room.
        drop(self.lanes);
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// One partition's records, one at a time, in order.
async fn lane<H, F>(
    consumer: Arc<WorkerConsumer>,
    (topic, partition): PartitionId,
    mut records: mpsc::Receiver<OwnedMessage>,
    handle: H,
    stop: CancellationToken,
) where
    H: Fn(OwnedMessage, CancellationToken) -> F,
    F: Future<Output = Handled>,
{
    loop {
        let record = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            record = records.recv() => match record {
                Some(record) => record,
                None => return,
            },
        };
        let offset = record.offset();
        match handle(record, stop.clone()).await {
            Handled::Done => {
                // Fails when a rebalance took the partition away meanwhile: its new owner
                // handles the record again (at least once).
                if let Err(error) = consumer.store_offset(&topic, partition, offset) {
                    tracing::warn!(%error, %topic, partition, offset, "offset not stored");
                }
            }
            Handled::Interrupted => return,
        }
    }
}

/// Reports on `room` when half of `lane`'s channel is free, or when the lane has ended.
/// Waiting for half rather than one slot saves a pause and resume (and a refetch) per
/// record while a lane is slow.
fn wait_for_room(
    tasks: &TaskTracker,
    room: &mpsc::UnboundedSender<Room>,
    partition: PartitionId,
    lane: &Lane,
    capacity: usize,
) {
    let records = lane.records.clone();
    let room = room.clone();
    let id = lane.id;
    tasks.spawn(async move {
        // The permits are dropped at once: this only waits for the space.
        let open = records.reserve_many(capacity.div_ceil(2)).await.is_ok();
        // Fails only once the dispatcher has stopped.
        let _ = room.send(Room {
            partition,
            lane: id,
            open,
        });
    });
}

/// A lane ends only when told to stop, so one that ended by itself panicked. Its records
/// were dropped unstored; carrying on would store later offsets past them. The worker
/// stops instead, and they are delivered again after the restart.
fn ended((topic, partition): &PartitionId) -> anyhow::Error {
    anyhow!("the lane of {topic} [{partition}] ended unexpectedly")
}

fn partition_list((topic, partition): &PartitionId) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, *partition);
    list
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Offset};

    use super::*;
    use crate::config::Config;
    use crate::consumer;

    /// Low, so that a record held longer costs only seconds. (librdkafka against the mock
    /// cluster did not join the group with 1500 ms.)
    const MAX_POLL_INTERVAL: Duration = Duration::from_millis(3000);

    /// A mock cluster with `counts[p]` records in partition `p` of `topic`, and a
    /// consumer in a group of its own that must poll at least every `MAX_POLL_INTERVAL`.
    async fn cluster(
        topic: &str,
        counts: &[usize],
    ) -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        Arc<WorkerConsumer>,
        Revocations,
    ) {
        let kafka = MockCluster::new(1).unwrap();
        kafka.create_topic(topic, counts.len() as i32, 1).unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap_servers())
            .create()
            .unwrap();
        for (partition, count) in counts.iter().enumerate() {
            for i in 0..*count {
                let payload = i.to_string();
                let record = FutureRecord::<str, str>::to(topic)
                    .partition(partition as i32)
                    .payload(&payload);
                producer.send(record, Duration::from_secs(5)).await.unwrap();
            }
        }
        let config = Config {
            bootstrap_servers: kafka.bootstrap_servers(),
            topic: topic.into(),
            group_id: format!("{topic}-group"),
            ..Config::from_env(&|_: &str| None).unwrap()
        };
        let mut settings = consumer::settings(&config);
        settings
            .set(
                "max.poll.interval.ms",
                MAX_POLL_INTERVAL.as_millis().to_string(),
            )
            .set(
                "session.timeout.ms",
                MAX_POLL_INTERVAL.as_millis().to_string(),
            )
            // Well inside the session, or the broker ends the membership itself.
            .set("heartbeat.interval.ms", "500");
        let (consumer, revocations) = consumer::create(&settings, topic).unwrap();
        (kafka, consumer, revocations)
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn committed(consumer: &WorkerConsumer, topic: &str, partition: i32) -> Offset {
        let committed = consumer.committed(Duration::from_secs(5)).unwrap();
        committed
            .find_partition(topic, partition)
            .map_or(Offset::Invalid, |p| p.offset())
    }

    /// (partition, offset, its lane told to stop?, when it was done)
    type Log = Arc<Mutex<Vec<(i32, i64, bool, Instant)>>>;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_partition_is_paused_while_others_flow_and_the_group_is_kept() {
        let topic = "lanes";
        let (_kafka, consumer, revocations) = cluster(topic, &[12, 3]).await;
        let log: Log = Arc::default();
        let handle = {
            let log = Arc::clone(&log);
            move |record: OwnedMessage, stop: CancellationToken| {
                let log = Arc::clone(&log);
                async move {
                    if (record.partition(), record.offset()) == (0, 0) {
                        // Held well past max.poll.interval.ms, like a record retried
                        // through an outage.
                        tokio::time::sleep(MAX_POLL_INTERVAL * 2).await;
                    }
                    let entry = (
                        record.partition(),
                        record.offset(),
                        stop.is_cancelled(),
                        Instant::now(),
                    );
                    log.lock().unwrap().push(entry);
                    Handled::Done
                }
            }
        };
        let shutdown = CancellationToken::new();
        // A lane of 2: partition 0 fills it at once and is paused and resumed over and over.
        let running = tokio::spawn(run(
            Arc::clone(&consumer),
            revocations,
            2,
            handle,
            shutdown.clone(),
        ));
        wait_until("every record handled", || log.lock().unwrap().len() >= 15).await;
        shutdown.cancel();
        running.await.unwrap().unwrap();

        let log = log.lock().unwrap().clone();
        let offsets = |partition| -> Vec<i64> {
            log.iter()
                .filter(|e| e.0 == partition)
                .map(|e| e.1)
                .collect()
        };
        // Each once and in order. Evicted from the group, the worker would have seen its
        // lanes stopped, and partition 0's first record delivered again.
        assert_eq!(offsets(0), (0..12).collect::<Vec<_>>());
        assert_eq!(offsets(1), [0, 1, 2]);
        assert!(log.iter().all(|e| !e.2), "a lane was stopped: {log:?}");
        // Partition 1 did not wait for partition 0's slow record.
        let slow_done = log.iter().find(|e| (e.0, e.1) == (0, 0)).unwrap().3;
        assert!(log.iter().filter(|e| e.0 == 1).all(|e| e.3 < slow_done));
        // Shutdown committed what was handled.
        assert_eq!(committed(&consumer, topic, 0), Offset::Offset(12));
        assert_eq!(committed(&consumer, topic, 1), Offset::Offset(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_interrupted_by_shutdown_is_left_for_redelivery() {
        let topic = "interrupted";
        let (_kafka, consumer, revocations) = cluster(topic, &[3]).await;
        let log: Log = Arc::default();
        let handle = {
            let log = Arc::clone(&log);
            move |record: OwnedMessage, stop: CancellationToken| {
                let log = Arc::clone(&log);
                async move {
                    log.lock()
                        .unwrap()
                        .push((0, record.offset(), false, Instant::now()));
                    if record.offset() == 1 {
                        // A retry that never succeeds, cut short by shutdown.
                        stop.cancelled().await;
                        return Handled::Interrupted;
                    }
                    Handled::Done
                }
            }
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(
            Arc::clone(&consumer),
            revocations,
            LANE_CAPACITY,
            handle,
            shutdown.clone(),
        ));
        wait_until("the second record started", || {
            log.lock().unwrap().len() >= 2
        })
        .await;
        shutdown.cancel();
        running.await.unwrap().unwrap();
        // Record 1 is where the next worker starts; record 2 was never taken.
        assert_eq!(committed(&consumer, topic, 0), Offset::Offset(1));
        assert_eq!(log.lock().unwrap().len(), 2);
    }
}
