//! From the consumer to the code that handles records: one lane per partition, records
//! of different keys handled concurrently, records of one key in order, at least once.
//! Hop: none of its own; each record's CONSUMER span starts in its task (`process.rs`).
//!
//! - **Staying in the group.** The loop here does nothing but `recv()` and hand records
//!   over, so the consumer is polled however long a record takes. A record retried for
//!   minutes (the order-service is down) never lets `max.poll.interval.ms` expire, which
//!   would evict the worker from its group and hand its partitions to another.
//! - **Concurrency.** A lane starts each record in a task of its own while it holds one
//!   of `WORKER_MAX_IN_FLIGHT` permits shared by all lanes; a record whose key (the order
//!   id) already has one running waits behind it, without a permit (a slow order must not
//!   take other partitions' turns), so one order's records stay in order. Records without a key (the project writes none) count as one
//!   key: in order, one at a time.
//! - **Backpressure.** A lane holds at most `LANE_CAPACITY` records waiting for their key
//!   or a permit, then takes no more; when its channel is full, its partition is paused (`Consumer::pause`) and the record in hand
//!   waits in the lane's `parked` queue; a small task waits until half the channel is
//!   free, then the parked records go in and the partition is resumed. librdkafka drops
//!   what it had already fetched for a paused partition and fetches it again on resume,
//!   so memory stays bounded and other partitions flow on.
//! - **Offsets.** Records finish out of order, so a lane stores an offset only when that
//!   record and every earlier one of its partition are done (processed or dead-lettered):
//!   the contiguous prefix (`offsets.rs`). Auto-commit and shutdown commit what is
//!   stored. A record whose handling is interrupted is never stored, and neither is
//!   anything after it, so it comes again.
//! - **Rebalance.** Lanes of revoked partitions are stopped: each lets its running records
//!   finish, or abandon a wait to retry; records not started are dropped; their offsets
//!   can no longer be stored, so the partition's new owner handles them again.
//! - **Shutdown.** No more records are taken; running records finish, or stay unstored if
//!   shutdown cut a retry short; then the offsets are committed.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::consumer::{PartitionId, Revocations, WorkerConsumer};
use crate::offsets::Progress;

/// Records a lane's channel holds, and records it holds waiting (for their order or a
/// permit). Each pause and resume of a partition costs a refetch, and the resumed
/// partition waits for the next fetch request (up to `fetch.wait.max.ms`): with 8, a
/// lane at 500 records/s paused and resumed several times a second and the worker
/// stalled in bursts; at a few hundred bytes a record, 128 costs little memory.
pub const LANE_CAPACITY: usize = 128;

/// How the handling of one record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Done with it (processed, or dead-lettered): its offset is stored.
    Done,
    /// Stopped before it was done: its offset is not stored, so it is delivered again.
    Interrupted,
}

/// How much the dispatcher holds at once.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Records a lane's channel holds, and records a lane holds waiting for their key or
    /// a permit: past either, its partition is paused.
    pub lane_capacity: usize,
    /// Records being handled at once, across all lanes.
    pub max_in_flight: usize,
}

/// Consumes until `shutdown` is cancelled, handing each record to `handle(record, stop)`
/// in its partition's lane; `stop` is cancelled when the lane must stop (shutdown, or
/// its partition revoked). Then commits the stored offsets.
pub async fn run<H, F>(
    consumer: Arc<WorkerConsumer>,
    mut revocations: Revocations,
    bounds: Bounds,
    handle: H,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    H: Fn(OwnedMessage, CancellationToken) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Handled> + Send + 'static,
{
    let (room_sender, mut room) = mpsc::unbounded_channel();
    let mut lanes = Lanes {
        consumer: Arc::clone(&consumer),
        lanes: HashMap::new(),
        next_id: 0,
        capacity: bounds.lane_capacity.max(1),
        permits: Arc::new(Semaphore::new(bounds.max_in_flight.max(1))),
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
    permits: Arc<Semaphore>,
    handle: H,
    tasks: TaskTracker,
    room: mpsc::UnboundedSender<Room>,
    shutdown: CancellationToken,
}

impl<H, F> Lanes<H>
where
    H: Fn(OwnedMessage, CancellationToken) -> F + Clone + Send + Sync + 'static,
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
            self.capacity,
            self.handle.clone(),
            stop.clone(),
            Arc::clone(&self.permits),
            Ended {
                room: self.room.clone(),
                lane: self.next_id,
            },
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

/// One partition's records: records of different keys concurrently, records of one key
/// one after the other in offset order, each in a task of its own while it holds one of
/// the worker's `permits` (`WORKER_MAX_IN_FLIGHT`). A record waiting for its key holds
/// no permit (a slow order must not take the others' turns); the lane holds at most
/// `capacity` records that wait (for their key, or for a permit), then takes no more:
/// its channel fills and the dispatcher pauses the partition. The bounds are
/// backpressure, not buffers. Offsets are stored by [`Progress`]: only the contiguous
/// prefix of done records.
#[allow(clippy::too_many_arguments)] // one lane's whole world; a struct would only rename it
async fn lane<H, F>(
    consumer: Arc<WorkerConsumer>,
    (topic, partition): PartitionId,
    mut records: mpsc::Receiver<OwnedMessage>,
    capacity: usize,
    handle: H,
    stop: CancellationToken,
    permits: Arc<Semaphore>,
    ended: Ended,
) where
    H: Fn(OwnedMessage, CancellationToken) -> F + Sync,
    F: Future<Output = Handled> + Send + 'static,
{
    let mut progress = Progress::default();
    // Records whose key is free, in offset order, waiting for a permit.
    let mut ready: VecDeque<OwnedMessage> = VecDeque::new();
    // A key is here while one of its records runs or is ready; behind it wait the key's
    // next records.
    let mut keys: HashMap<Option<Vec<u8>>, VecDeque<OwnedMessage>> = HashMap::new();
    let mut waiting = 0; // in `ready` and behind keys
    let mut running = JoinSet::new();
    // Kept across turns of the loop, so the lane keeps its place in the semaphore's queue.
    let mut acquiring: Option<Pin<Box<Acquire>>> = None;
    loop {
        if acquiring.is_none() && !ready.is_empty() {
            acquiring = Some(Box::pin(Arc::clone(&permits).acquire_owned()));
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(joined) = running.join_next(), if !running.is_empty() => {
                let Ok((offset, key, handled)) = joined else {
                    // A handler panicked: its record is not done. Ending the lane ends
                    // the worker (see `ended`), before any later offset is stored.
                    tracing::error!(%topic, partition, "a record's handler panicked");
                    // Reported at once: the partition may get no record that would
                    // find the lane gone.
                    let _ = ended.room.send(Room {
                        partition: (topic, partition),
                        lane: ended.lane,
                        open: false,
                    });
                    return;
                };
                if handled == Handled::Interrupted {
                    // Only `stop` interrupts; the record stays pending, unstored.
                    break;
                }
                store(&consumer, &topic, partition, progress.done(offset));
                // The key's next record, if one waits, is ready now.
                match keys.get_mut(&key).and_then(VecDeque::pop_front) {
                    Some(next) => ready.push_back(next),
                    None => {
                        keys.remove(&key);
                    }
                }
            }
            acquired = async {
                match acquiring.as_mut() {
                    Some(acquire) => acquire.await,
                    None => std::future::pending().await,
                }
            }, if acquiring.is_some() => {
                acquiring = None;
                // The semaphore is never closed.
                let Ok(permit) = acquired else { break };
                if let Some(record) = ready.pop_front() {
                    waiting -= 1;
                    let (offset, key) = (record.offset(), record.key().map(<[u8]>::to_vec));
                    let handled = handle(record, stop.clone());
                    running.spawn(async move {
                        let handled = handled.await;
                        drop(permit);
                        (offset, key, handled)
                    });
                }
            }
            record = records.recv(), if waiting < capacity => {
                let Some(record) = record else { break };
                progress.taken(record.offset());
                waiting += 1;
                let key = record.key().map(<[u8]>::to_vec);
                match keys.get_mut(&key) {
                    Some(behind) => behind.push_back(record),
                    None => {
                        keys.insert(key, VecDeque::new());
                        ready.push_back(record);
                    }
                }
            }
        }
    }
    // Stopping: records not started stay unstored; those running see `stop` and finish
    // or give up, and what finished is still stored (in prefix order).
    while let Some(joined) = running.join_next().await {
        if let Ok((offset, _, Handled::Done)) = joined {
            store(&consumer, &topic, partition, progress.done(offset));
        }
    }
    if progress.pending() > 0 {
        tracing::info!(%topic, partition, left = progress.pending(), "records left for redelivery");
    }
}

/// Waiting for a permit of `WORKER_MAX_IN_FLIGHT`.
type Acquire = dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send;

fn store(consumer: &WorkerConsumer, topic: &str, partition: i32, offset: Option<i64>) {
    let Some(offset) = offset else { return };
    // Fails when a rebalance took the partition away meanwhile: its new owner handles the
    // records again (at least once).
    if let Err(error) = consumer.store_offset(topic, partition, offset) {
        tracing::warn!(%error, %topic, partition, offset, "offset not stored");
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

/// How a lane whose handler panicked tells the dispatcher.
struct Ended {
    room: mpsc::UnboundedSender<Room>,
    lane: u64,
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

    type Cluster = (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        Arc<WorkerConsumer>,
        Revocations,
    );

    /// A mock cluster with `counts[p]` keyless records in partition `p` of `topic`, and a
    /// consumer in a group of its own that must poll at least every `MAX_POLL_INTERVAL`.
    async fn cluster(topic: &str, counts: &[usize]) -> Cluster {
        let partitions: Vec<Vec<Option<&str>>> =
            counts.iter().map(|count| vec![None; *count]).collect();
        keyed_cluster(topic, &partitions).await
    }

    /// Like `cluster`, with a record per key given, in partition `p` for `keys[p]`.
    async fn keyed_cluster(topic: &str, keys: &[Vec<Option<&str>>]) -> Cluster {
        let kafka = MockCluster::new(1).unwrap();
        kafka.create_topic(topic, keys.len() as i32, 1).unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap_servers())
            .create()
            .unwrap();
        for (partition, keys) in keys.iter().enumerate() {
            for (i, key) in keys.iter().enumerate() {
                let payload = i.to_string();
                let mut record = FutureRecord::<str, str>::to(topic)
                    .partition(partition as i32)
                    .payload(&payload);
                if let Some(key) = key {
                    record = record.key(key);
                }
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
        let (consumer, revocations) =
            consumer::create(&settings, topic, Default::default()).unwrap();
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

    const BOUNDS: Bounds = Bounds {
        lane_capacity: LANE_CAPACITY,
        max_in_flight: 4,
    };

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
            Bounds {
                lane_capacity: 2,
                max_in_flight: 4,
            },
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
            BOUNDS,
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

    #[derive(Default)]
    struct Concurrency {
        running: usize,
        most: usize,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn different_keys_run_concurrently_up_to_the_bound_and_one_key_in_order() {
        let topic = "concurrent";
        // Six orders, three records each, interleaved: a b c d e f a b c d e f a b ...
        let keys: Vec<Option<&str>> = ["a", "b", "c", "d", "e", "f"]
            .into_iter()
            .cycle()
            .take(18)
            .map(Some)
            .collect();
        let (_kafka, consumer, revocations) =
            keyed_cluster(topic, std::slice::from_ref(&keys)).await;
        let bound = 4;
        let concurrency = Arc::new(Mutex::new(Concurrency::default()));
        let log: Log = Arc::default();
        let handle = {
            let (concurrency, log) = (Arc::clone(&concurrency), Arc::clone(&log));
            move |record: OwnedMessage, _stop: CancellationToken| {
                let (concurrency, log) = (Arc::clone(&concurrency), Arc::clone(&log));
                async move {
                    {
                        let mut c = concurrency.lock().unwrap();
                        c.running += 1;
                        c.most = c.most.max(c.running);
                    }
                    // Each of the first records waits until the bound is reached, so the
                    // test proves concurrency instead of hoping for it; later ones pass.
                    wait_until("the bound reached", || {
                        concurrency.lock().unwrap().most >= bound
                    })
                    .await;
                    log.lock()
                        .unwrap()
                        .push((0, record.offset(), false, Instant::now()));
                    concurrency.lock().unwrap().running -= 1;
                    Handled::Done
                }
            }
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(
            Arc::clone(&consumer),
            revocations,
            Bounds {
                lane_capacity: 2,
                max_in_flight: bound,
            },
            handle,
            shutdown.clone(),
        ));
        wait_until("every record handled", || log.lock().unwrap().len() >= 18).await;
        shutdown.cancel();
        running.await.unwrap().unwrap();

        assert_eq!(
            concurrency.lock().unwrap().most,
            bound,
            "never more than the bound"
        );
        let log = log.lock().unwrap().clone();
        for key in ["a", "b", "c", "d", "e", "f"] {
            let offsets: Vec<i64> = log
                .iter()
                .map(|e| e.1)
                .filter(|&offset| keys[offset as usize] == Some(key))
                .collect();
            assert_eq!(offsets.len(), 3, "key {key}: {log:?}");
            assert!(offsets.is_sorted(), "key {key} out of order: {offsets:?}");
        }
        assert_eq!(committed(&consumer, topic, 0), Offset::Offset(18));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_offset_is_stored_only_when_every_earlier_record_is_done() {
        let topic = "prefix";
        let keys = vec![Some("slow"), Some("b"), Some("c"), Some("d")];
        let (_kafka, consumer, revocations) = keyed_cluster(topic, &[keys]).await;
        let release = CancellationToken::new();
        let log: Log = Arc::default();
        let handle = {
            let (release, log) = (release.clone(), Arc::clone(&log));
            move |record: OwnedMessage, _stop: CancellationToken| {
                let (release, log) = (release.clone(), Arc::clone(&log));
                async move {
                    if record.offset() == 0 {
                        release.cancelled().await;
                    }
                    log.lock()
                        .unwrap()
                        .push((0, record.offset(), false, Instant::now()));
                    Handled::Done
                }
            }
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(
            Arc::clone(&consumer),
            revocations,
            BOUNDS,
            handle,
            shutdown.clone(),
        ));
        wait_until("records 1 to 3 done", || log.lock().unwrap().len() >= 3).await;
        // Done out of order: committing now must not pass record 0, still running.
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => panic!("commit failed: {error}"),
        }
        assert_eq!(committed(&consumer, topic, 0), Offset::Invalid);
        release.cancel();
        wait_until("record 0 done", || log.lock().unwrap().len() >= 4).await;
        shutdown.cancel();
        running.await.unwrap().unwrap();
        assert_eq!(committed(&consumer, topic, 0), Offset::Offset(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_interrupted_among_concurrent_ones_holds_back_the_commit() {
        let topic = "interrupted-concurrent";
        let keys = vec![Some("a"), Some("b"), Some("c"), Some("d")];
        let (_kafka, consumer, revocations) = keyed_cluster(topic, &[keys]).await;
        let log: Log = Arc::default();
        let handle = {
            let log = Arc::clone(&log);
            move |record: OwnedMessage, stop: CancellationToken| {
                let log = Arc::clone(&log);
                async move {
                    if record.offset() == 1 {
                        // A retry cut short by shutdown.
                        stop.cancelled().await;
                        return Handled::Interrupted;
                    }
                    log.lock()
                        .unwrap()
                        .push((0, record.offset(), false, Instant::now()));
                    Handled::Done
                }
            }
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(
            Arc::clone(&consumer),
            revocations,
            BOUNDS,
            handle,
            shutdown.clone(),
        ));
        wait_until("records 0, 2 and 3 done", || log.lock().unwrap().len() >= 3).await;
        shutdown.cancel();
        running.await.unwrap().unwrap();
        // 2 and 3 were done, but 1 was not: the next worker starts at 1.
        assert_eq!(committed(&consumer, topic, 0), Offset::Offset(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_handler_stops_the_worker_without_storing_past_its_record() {
        let topic = "panicking";
        let keys = vec![Some("a"), Some("b"), Some("c")];
        let (_kafka, consumer, revocations) = keyed_cluster(topic, &[keys]).await;
        let handle = move |record: OwnedMessage, _stop: CancellationToken| async move {
            if record.offset() == 1 {
                panic!("a bug in the handler");
            }
            Handled::Done
        };
        let shutdown = CancellationToken::new();
        // No record follows to find the lane gone: the lane itself must report it.
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            run(Arc::clone(&consumer), revocations, BOUNDS, handle, shutdown),
        )
        .await
        .expect("the worker stops by itself");
        let error = result.expect_err("a panicked lane is an error");
        assert!(error.to_string().contains("ended unexpectedly"), "{error}");
        // Record 0 may be stored; record 1 never is, so it comes again.
        let next = committed(&consumer, topic, 0);
        assert!(
            matches!(
                next,
                Offset::Invalid | Offset::Offset(0) | Offset::Offset(1)
            ),
            "{next:?}"
        );
    }
}
