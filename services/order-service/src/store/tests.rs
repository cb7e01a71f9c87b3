//! One suite, both backends: each test below runs on SQLite (always) and on PostgreSQL
//! (`store::tests::postgres::…`, ignored unless asked for: it needs `TEST_DATABASE_URL`,
//! which scripts/test sets from the test stack's PostgreSQL and then runs them with
//! `--ignored`; without the variable they fail rather than pass unseen). Each test has
//! its own database: a fresh SQLite file, or a fresh PostgreSQL schema. A "replica" is
//! a second store on the same database (for PostgreSQL, a second pool).

use std::time::Duration;

use proto::order::v1::{Order, OrderItem, OrderStatus};
use rdkafka::mocking::MockCluster;
use tokio_postgres::NoTls;

use super::postgres::{PostgresSettings, PostgresStore};
use super::sqlite::SqliteStore;
use super::*;
use crate::config::KafkaConfig;
use crate::events::EventPublisher;
use crate::idempotency::Claim;
use crate::outbox::{Outbox, Relay, RelaySettings};

pub(crate) fn order(id: &str) -> Order {
    let mut order = Order {
        order_id: id.into(),
        customer_id: "c-1".into(),
        items: vec![OrderItem {
            sku: "SKU-1".into(),
            quantity: 2,
        }],
        ..Order::default()
    };
    order.set_status(OrderStatus::Pending);
    order
}

fn entry(order: &Order) -> NewEntry {
    NewEntry::order_created(order, String::new())
}

/// A database of a test's own, and its first store.
pub(crate) struct TestDb {
    pub store: Store,
    place: Place,
}

enum Place {
    Sqlite(std::path::PathBuf),
    Postgres { url: String, schema: String },
}

impl TestDb {
    async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("order-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self::on(Place::Sqlite(dir)).await
    }

    async fn postgres() -> Self {
        let url = std::env::var("TEST_DATABASE_URL").expect(
            "TEST_DATABASE_URL: the PostgreSQL to run the store suite on (scripts/test sets it)",
        );
        let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        Self::on(Place::Postgres { url, schema }).await
    }

    async fn on(place: Place) -> Self {
        Self {
            store: open(&place).await,
            place,
        }
    }

    /// Another store on this database, as a second replica would open it.
    async fn replica(&self) -> Store {
        open(&self.place).await
    }
}

/// A store on the test's database (each call a new one: another replica).
async fn open(place: &Place) -> Store {
    match place {
        Place::Sqlite(dir) => Store::Sqlite(SqliteStore::open(&dir.join("orders.db")).unwrap()),
        Place::Postgres { url, schema } => {
            let mut connection = PostgresSettings::parse_url(url).unwrap();
            connection.options(format!("-c search_path={schema}"));
            let settings = PostgresSettings {
                connection,
                max_connections: 4,
                connect_timeout: Duration::from_secs(5),
            };
            Store::Postgres(PostgresStore::open(&settings).await.unwrap())
        }
    }
}

impl TestDb {
    async fn execute(&self, sqlite: &'static str, postgres: &'static str) {
        match &self.store {
            Store::Sqlite(s) => s.execute(sqlite).await.unwrap(),
            Store::Postgres(s) => s.execute(postgres).await.unwrap(),
        }
    }

    async fn count(&self, sql: &'static str) -> i64 {
        match &self.store {
            Store::Sqlite(s) => s.count(sql).await.unwrap(),
            Store::Postgres(s) => s.count(sql).await.unwrap(),
        }
    }

    async fn done(self) {
        match self.place {
            Place::Sqlite(dir) => std::fs::remove_dir_all(dir).unwrap(),
            Place::Postgres { url, schema } => {
                let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                    .await
                    .unwrap();
            }
        }
    }
}

/// Each test, once per backend.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    super::$test(super::TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[ignore = "needs PostgreSQL in TEST_DATABASE_URL: scripts/test runs it"]
                async fn $test() {
                    super::$test(super::TestDb::postgres().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    orders_survive_a_reopen_and_complete_idempotently,
    an_order_and_its_event_are_stored_together_or_not_at_all,
    one_key_creates_one_order_and_refuses_another_order,
    two_replicas_creating_with_one_key_make_one_order,
    two_replicas_completing_one_order_differently_make_one_outcome,
    a_bad_entry_is_quarantined_and_the_others_are_sent,
    reconciliation_sends_again_what_is_still_pending_and_forgets_the_rest,
);

async fn orders_survive_a_reopen_and_complete_idempotently(db: TestDb) {
    db.store
        .create(
            order("o-1"),
            NewEntry::order_created(&order("o-1"), "traceparent: x".into()),
            None,
        )
        .await
        .unwrap();
    let store = db.replica().await;
    assert_eq!(store.get("o-1".into()).await.unwrap(), order("o-1"));

    let (done, changed) = store
        .complete("o-1".into(), OrderStatus::Fulfilled, None)
        .await
        .unwrap();
    assert_eq!((done.status(), changed), (OrderStatus::Fulfilled, true));
    let (again, changed) = store
        .complete("o-1".into(), OrderStatus::Fulfilled, None)
        .await
        .unwrap();
    assert_eq!((again.status(), changed), (OrderStatus::Fulfilled, false));
    let conflict = store
        .complete("o-1".into(), OrderStatus::Failed, Some("late".into()))
        .await
        .unwrap_err();
    assert!(matches!(conflict, StoreError::Conflict { .. }));
    assert!(matches!(
        store.get("missing".into()).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    store.ping().await.unwrap();
    db.done().await;
}

async fn an_order_and_its_event_are_stored_together_or_not_at_all(db: TestDb) {
    let first = order("o-1");
    db.store
        .create(first.clone(), entry(&first), None)
        .await
        .unwrap();
    // The same id again: the order's INSERT fails, and the second event with it.
    let error = db
        .store
        .create(first.clone(), entry(&first), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::Sqlite(_) | StoreError::Postgres(_)),
        "{error:?}"
    );
    assert_eq!(db.store.count_pending().await.unwrap(), 1);
    db.done().await;
}

fn claim(o: &Order, key: &str, trace_id: &str) -> Option<(Claim, String)> {
    let claim = Claim::new(key.into(), &o.customer_id, &o.items);
    Some((claim, trace_id.to_owned()))
}

async fn one_key_creates_one_order_and_refuses_another_order(db: TestDb) {
    let store = &db.store;
    let first = order("o-1");
    let created = store.create(first.clone(), entry(&first), claim(&first, "k-1", "t-1"));
    assert_eq!(created.await.unwrap(), Created::New);
    // A retry: a new order id, the same request. Nothing new is stored.
    let retry = order("o-2");
    let replayed = store.create(retry.clone(), entry(&retry), claim(&retry, "k-1", "t-2"));
    assert_eq!(
        replayed.await.unwrap(),
        Created::Replayed {
            order_id: "o-1".into(),
            trace_id: "t-1".into()
        }
    );
    assert!(matches!(
        store.get("o-2".into()).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert_eq!(store.count_pending().await.unwrap(), 1);
    // The same key for another order is refused.
    let mut other = order("o-3");
    other.items[0].quantity = 3;
    let refused = store.create(other.clone(), entry(&other), claim(&other, "k-1", "t-3"));
    assert!(matches!(
        refused.await.unwrap_err(),
        StoreError::KeyReused(key) if key == "k-1"
    ));
    // Young keys are kept.
    assert_eq!(store.forget_expired_keys().await.unwrap(), 0);
    db.done().await;
}

async fn two_replicas_creating_with_one_key_make_one_order(db: TestDb) {
    let other = db.replica().await;
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let key = format!("k-{round}");
        let (a, b) = (order(&format!("a-{round}")), order(&format!("b-{round}")));
        // Both at once, each on its own replica.
        let (from_a, from_b) = tokio::join!(
            db.store
                .create(a.clone(), entry(&a), claim(&a, &key, "t-a")),
            other.create(b.clone(), entry(&b), claim(&b, &key, "t-b")),
        );
        let outcomes = [from_a.unwrap(), from_b.unwrap()];
        let winner = match &outcomes {
            [Created::New, Created::Replayed { order_id, .. }] => {
                assert_eq!(order_id, &a.order_id);
                &a
            }
            [Created::Replayed { order_id, .. }, Created::New] => {
                assert_eq!(order_id, &b.order_id);
                &b
            }
            other => panic!("round {round}: not one new and one replayed: {other:?}"),
        };
        assert_eq!(
            db.store.get(winner.order_id.clone()).await.unwrap(),
            *winner
        );
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM orders").await, ROUNDS as i64);
    assert_eq!(db.store.count_pending().await.unwrap(), ROUNDS as i64);
    db.done().await;
}

async fn two_replicas_completing_one_order_differently_make_one_outcome(db: TestDb) {
    let other = db.replica().await;
    for round in 0..10 {
        let id = format!("o-{round}");
        db.store
            .create(order(&id), entry(&order(&id)), None)
            .await
            .unwrap();
        let (fulfilled, failed) = tokio::join!(
            db.store.complete(id.clone(), OrderStatus::Fulfilled, None),
            other.complete(id.clone(), OrderStatus::Failed, Some("out of stock".into())),
        );
        let outcome = match (fulfilled, failed) {
            (Ok((order, true)), Err(StoreError::Conflict { current, .. })) => {
                assert_eq!(current, OrderStatus::Fulfilled);
                order.status()
            }
            (Err(StoreError::Conflict { current, .. }), Ok((order, true))) => {
                assert_eq!(current, OrderStatus::Failed);
                order.status()
            }
            other => panic!("round {round}: not one completion and one conflict: {other:?}"),
        };
        assert_eq!(db.store.get(id).await.unwrap().status(), outcome);
    }
    db.done().await;
}

fn relay_settings() -> RelaySettings {
    RelaySettings {
        poll_interval: Duration::from_millis(100),
        reconcile_after: Duration::from_secs(60),
        max_republish: 3,
    }
}

fn mock_publisher(
    kafka: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
) -> EventPublisher {
    kafka.create_topic("orders", 1, 1).unwrap();
    EventPublisher::new(&KafkaConfig {
        bootstrap_servers: kafka.bootstrap_servers(),
        topic: "orders".into(),
        topic_partitions: 1,
    })
    .unwrap()
}

const SENT: &str = "SELECT COUNT(sent_at_ms) FROM outbox";
const QUARANTINED: &str = "SELECT COUNT(quarantined) FROM outbox";

async fn a_bad_entry_is_quarantined_and_the_others_are_sent(db: TestDb) {
    let kafka = MockCluster::new(1).unwrap();
    let publisher = mock_publisher(&kafka);
    let good = order("o-good");
    db.store
        .create(good.clone(), entry(&good), None)
        .await
        .unwrap();
    // An entry whose payload is no event, written behind the API's back.
    db.execute(
        "INSERT INTO outbox (order_id, payload, trace_context, created_at_ms)
         VALUES ('o-bad', x'00ff', '', 0)",
        r"INSERT INTO outbox (order_id, payload, trace_context, created_at_ms)
         VALUES ('o-bad', '\x00ff'::bytea, '', 0)",
    )
    .await;

    let relay = Relay::new(
        Outbox::default(),
        db.store.clone(),
        publisher,
        relay_settings(),
    );
    relay.send_pending().await;
    assert_eq!((db.count(SENT).await, db.count(QUARANTINED).await), (1, 1));
    assert_eq!(db.store.count_pending().await.unwrap(), 0);
    // Nothing is left to send, and the quarantined entry is not tried again.
    relay.send_pending().await;
    assert_eq!((db.count(SENT).await, db.count(QUARANTINED).await), (1, 1));
    db.done().await;
}

async fn reconciliation_sends_again_what_is_still_pending_and_forgets_the_rest(db: TestDb) {
    let store = &db.store;
    for id in ["o-pending", "o-done"] {
        store
            .create(order(id), entry(&order(id)), None)
            .await
            .unwrap();
    }
    let claimed = store.claim_pending(10).await.unwrap();
    let sent = claimed.entries.iter().map(|e| e.id).collect();
    store
        .settle(
            claimed,
            Settlement {
                sent,
                ..Settlement::default()
            },
        )
        .await
        .unwrap();
    store
        .complete("o-done".into(), OrderStatus::Fulfilled, None)
        .await
        .unwrap();
    // Not yet due: nothing changes.
    assert_eq!(store.reconcile(0, 3).await.unwrap(), 0);
    assert_eq!(store.count_pending().await.unwrap(), 0);
    // Due: the pending order's event goes again, the finished one's entry is forgotten.
    let later = now_ms() + 60_000;
    assert_eq!(store.reconcile(later, 3).await.unwrap(), 1);
    let again = store.claim_pending(10).await.unwrap();
    let ids: Vec<_> = again.entries.iter().map(|e| e.order_id.as_str()).collect();
    assert_eq!(ids, ["o-pending"]);
    drop(again);
    assert_eq!(db.count("SELECT COUNT(*) FROM outbox").await, 1);
    // At most `max_republish` times.
    assert_eq!(store.reconcile(later, 1).await.unwrap(), 0);
    db.done().await;
}

/// PostgreSQL only: SQLite is one replica's database, whose one relay needs no lock.
mod postgres_replicas {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs PostgreSQL in TEST_DATABASE_URL: scripts/test runs it"]
    async fn two_relays_never_hold_one_entry_and_a_dead_relays_entries_come_back() {
        let db = TestDb::postgres().await;
        let other = db.replica().await;
        for n in 0..10 {
            let id = format!("o-{n}");
            db.store
                .create(order(&id), entry(&order(&id)), None)
                .await
                .unwrap();
        }
        let ids = |claimed: &Claimed| claimed.entries.iter().map(|e| e.id).collect::<Vec<_>>();
        let mine = db.store.claim_pending(4).await.unwrap();
        let theirs = other.claim_pending(100).await.unwrap();
        let (mine_ids, their_ids) = (ids(&mine), ids(&theirs));
        assert_eq!(mine_ids.len(), 4);
        assert_eq!(
            their_ids.len(),
            6,
            "the other relay takes only what is free"
        );
        assert!(mine_ids.iter().all(|id| !their_ids.contains(id)));

        // The other replica dies mid-round: its connection goes, and its locks with it.
        drop(theirs);
        db.store
            .settle(
                mine,
                Settlement {
                    sent: mine_ids,
                    ..Settlement::default()
                },
            )
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let back = loop {
            let claimed = db.store.claim_pending(100).await.unwrap();
            if ids(&claimed) == their_ids {
                break claimed;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the dead relay's entries are still held: {:?}",
                ids(&claimed)
            );
            drop(claimed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        db.store
            .settle(
                back,
                Settlement {
                    sent: their_ids,
                    ..Settlement::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(db.store.count_pending().await.unwrap(), 0);
        db.done().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs PostgreSQL in TEST_DATABASE_URL: scripts/test runs it"]
    async fn two_relays_at_once_send_every_entry_once() {
        let kafka = MockCluster::new(1).unwrap();
        let publisher = mock_publisher(&kafka);
        let db = TestDb::postgres().await;
        let other = db.replica().await;
        for n in 0..600 {
            let id = format!("o-{n}");
            db.store
                .create(order(&id), entry(&order(&id)), None)
                .await
                .unwrap();
        }
        let relay = |store: Store| {
            Relay::new(
                Outbox::default(),
                store,
                publisher.clone(),
                relay_settings(),
            )
        };
        let (a, b) = (relay(db.store.clone()), relay(other));
        tokio::join!(a.send_pending(), b.send_pending());
        assert_eq!(db.store.count_pending().await.unwrap(), 0);
        // What the broker got: each event once (the producer is idempotent, so a record
        // more would be a second send of an entry).
        let bootstrap = kafka.bootstrap_servers();
        let (low, high) = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", "count")
                .create()
                .unwrap();
            consumer
                .fetch_watermarks("orders", 0, Duration::from_secs(10))
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(high - low, 600);
        db.done().await;
    }
}

#[test]
fn items_read_in_both_stored_forms() {
    let item = |sku: &str, quantity| OrderItem {
        sku: sku.into(),
        quantity,
    };
    let expected = vec![item("A", 1), item("B", 2)];
    assert_eq!(
        items_from_json(&items_to_json(&expected)).unwrap(),
        expected
    );
    assert_eq!(items_from_json(r#"[["A",1],["B",2]]"#).unwrap(), expected);
    assert!(items_from_json("{}").is_err());
}
