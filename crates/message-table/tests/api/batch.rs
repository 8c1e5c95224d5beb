//! The inbox's batches against a real database (and one against the real broker): a batch
//! has the same effects as its messages one by one, a failing message is recorded alone,
//! concurrent batches neither double an effect nor deadlock into a failure, and a batch that
//! finishes first never acks an earlier delivery still being handled.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use message_table::inbox::{
    HandlerError, Inbox, InboxMessage, InboxStatus, MessageHandler, Outcome,
    consumer::InboxConsumer,
};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use support::{RecordingHandler, effects, id_of, inbox_row, incoming, props};
use test_kit::{TcpProxy, TestQueue};
use uuid::Uuid;

use crate::support;

#[tokio::test]
async fn a_batch_has_one_effect_per_new_message_and_drops_every_copy() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let seen = incoming(json!({ "n": "seen" }));
    assert_eq!(
        inbox.receive(seen.clone()).await.unwrap(),
        Outcome::Processed
    );
    let (a, b) = (incoming(json!({ "n": "a" })), incoming(json!({ "n": "b" })));

    let outcomes = inbox
        .receive_batch(vec![a.clone(), seen.clone(), b.clone(), a.clone()])
        .await;

    use Outcome::{Duplicate, Processed};
    assert_eq!(
        outcomes,
        [
            Some(Processed),
            Some(Duplicate),
            Some(Processed),
            Some(Duplicate)
        ]
    );
    for msg in [&a, &b, &seen] {
        assert_eq!(effects(&db.pool, id_of(msg)).await, 1);
        assert_eq!(
            inbox_row(&db.pool, id_of(msg)).await.0,
            InboxStatus::Processed
        );
    }
    let counts = inbox.counters().snapshot();
    assert_eq!((counts.processed, counts.duplicates), (3, 2));
}

/// The batch is rolled back and redone message by message: the failure is recorded against
/// its message alone, with no effect, and the others' effects commit once.
#[tokio::test]
async fn a_failing_message_in_a_batch_is_recorded_alone_and_the_others_are_processed() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let ok1 = incoming(json!({ "n": 1 }));
    let bad = incoming(json!({ "n": 2, "permanent": true }));
    let ok2 = incoming(json!({ "n": 3 }));
    let poison = unreadable();

    let outcomes = inbox
        .receive_batch(vec![ok1.clone(), bad.clone(), poison, ok2.clone()])
        .await;

    assert_eq!(outcomes[0], Some(Outcome::Processed));
    assert!(
        matches!(outcomes[1], Some(Outcome::Dead { .. })),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[2], Some(Outcome::Poison { .. })),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[3], Some(Outcome::Processed));
    assert_eq!(effects(&db.pool, id_of(&ok1)).await, 1);
    assert_eq!(effects(&db.pool, id_of(&ok2)).await, 1);
    assert_eq!(effects(&db.pool, id_of(&bad)).await, 0);
    let (status, attempts, _) = inbox_row(&db.pool, id_of(&bad)).await;
    assert_eq!((status, attempts), (InboxStatus::Dead, 1));
}

/// A transient failure in a batch: the rolled-back effects of the messages before it do not
/// stay, and the failing message goes to the retry sweeper as `failed`.
#[tokio::test]
async fn a_transient_failure_in_a_batch_leaves_no_effect_behind() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::failing(2),
        test_kit::fast_inbox(),
    );
    let msgs: Vec<_> = (0..4).map(|n| incoming(json!({ "n": n }))).collect();

    let outcomes = inbox.receive_batch(msgs.clone()).await;

    // The batch's first run took one failure; redone one by one, the first message takes
    // the second; the rest are processed.
    assert!(outcomes.iter().all(Option::is_some), "{outcomes:?}");
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Failed { .. })))
        .collect();
    assert_eq!(failed.len(), 1, "{outcomes:?}");
    for (msg, outcome) in msgs.iter().zip(&outcomes) {
        let expected = i64::from(*outcome == Some(Outcome::Processed));
        assert_eq!(effects(&db.pool, id_of(msg)).await, expected, "{outcome:?}");
    }
}

/// Two batches of the same messages at once (a redelivery racing the original): the
/// primary key serialises them, each message has one effect.
#[tokio::test]
async fn concurrent_batches_of_the_same_messages_have_one_effect_each() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let msgs: Vec<_> = (0..20).map(|n| incoming(json!({ "n": n }))).collect();
    let mut reversed = msgs.clone();
    reversed.reverse();

    let (x, y) = tokio::join!(
        inbox.receive_batch(msgs.clone()),
        inbox.receive_batch(reversed)
    );

    let processed = x
        .iter()
        .chain(&y)
        .filter(|o| **o == Some(Outcome::Processed))
        .count();
    let duplicates = x
        .iter()
        .chain(&y)
        .filter(|o| **o == Some(Outcome::Duplicate))
        .count();
    assert_eq!((processed, duplicates), (20, 20), "{x:?} {y:?}");
    for msg in &msgs {
        assert_eq!(effects(&db.pool, id_of(msg)).await, 1);
    }
}

/// Adds the message's `amount` to the counter of its `account` (a row lock, like pay's
/// debit), then waits a little so that two batches really hold their locks at once.
struct CounterHandler {
    sorted: bool,
}

#[async_trait]
impl MessageHandler for CounterHandler {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError> {
        for msg in msgs {
            sqlx::query("UPDATE counters SET total = total + 1 WHERE account = $1")
                .bind(msg.payload["account"].as_str())
                .execute(&mut *tx)
                .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }

    fn lock_key(&self, msg: &InboxMessage) -> Option<String> {
        self.sorted
            .then(|| msg.payload["account"].as_str().map(str::to_string))
            .flatten()
    }
}

async fn counters(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT account, total FROM counters ORDER BY account")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Batch one touches accounts x then y, batch two y then x, both at once. Returns the
/// database, for its deadlock count.
async fn crossing_batches(sorted: bool) -> test_kit::TestDb {
    let db = support::test_db().await;
    sqlx::raw_sql(
        "CREATE TABLE counters (account text PRIMARY KEY, total bigint NOT NULL);
         INSERT INTO counters VALUES ('x', 0), ('y', 0);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let inbox = Inbox::new(
        db.pool.clone(),
        Arc::new(CounterHandler { sorted }),
        test_kit::fast_inbox(),
    );
    // Message ids are UUIDv7: created in this order, sorted in this order.
    let one = vec![
        incoming(json!({ "account": "x" })),
        incoming(json!({ "account": "y" })),
    ];
    let two = vec![
        incoming(json!({ "account": "y" })),
        incoming(json!({ "account": "x" })),
    ];

    let (a, b) = tokio::join!(
        inbox.receive_batch(one.clone()),
        inbox.receive_batch(two.clone())
    );

    assert!(
        a.iter().chain(&b).all(|o| *o == Some(Outcome::Processed)),
        "{a:?} {b:?}"
    );
    assert_eq!(
        counters(&db.pool).await,
        [("x".to_string(), 2), ("y".to_string(), 2)]
    );
    for msg in one.iter().chain(&two) {
        assert_eq!(
            inbox_row(&db.pool, id_of(msg)).await,
            (InboxStatus::Processed, 1, None)
        );
    }
    let counts = inbox.counters().snapshot();
    assert_eq!((counts.processed, counts.failed), (4, 0));
    db
}

async fn deadlocks(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// With a lock key the handlers of both batches lock x before y: no deadlock to begin with.
#[tokio::test]
async fn batches_take_their_locks_in_lock_key_order() {
    let db = crossing_batches(true).await;
    // PostgreSQL flushes its statistics within a second of a transaction's end; read
    // earlier, a deadlock could be missed (a pass by luck), never invented.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(deadlocks(&db.pool).await, 0);
}

/// Without one the batches deadlock; PostgreSQL aborts one of them, which is run again:
/// a lost race, never a failure recorded against a message.
#[tokio::test]
async fn a_deadlocked_batch_is_run_again_not_recorded_as_failed() {
    let db = crossing_batches(false).await;
    test_kit::eventually(
        "the batches deadlocked",
        Duration::from_secs(10),
        || async { (deadlocks(&db.pool).await >= 1).then_some(()) },
    )
    .await;
}

fn unreadable() -> message_table::inbox::Incoming {
    message_table::inbox::Incoming {
        message_id: Some(Uuid::now_v7().to_string()),
        event_type: Some("TestEvent".into()),
        content_type: Some("application/json".into()),
        body: b"not json".to_vec(),
        ..Default::default()
    }
}

/// Blocks on a message `{"slow": true}` until released; records the others at once.
struct SlowHandler {
    started: AtomicBool,
    release: tokio::sync::Notify,
}

#[async_trait]
impl MessageHandler for SlowHandler {
    async fn handle(
        &self,
        _tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError> {
        for msg in msgs {
            if msg.payload["slow"] == true {
                self.started.store(true, Ordering::SeqCst);
                self.release.notified().await;
            }
        }
        Ok(())
    }
}

/// A slow delivery, then five fast ones that finish first in batches of their own. Their
/// acks must not be `multiple` (that would ack the slow one too): when the connection is
/// cut, the broker still holds the slow one and hands it back, and nothing is lost.
#[tokio::test]
async fn a_batch_that_finishes_first_does_not_ack_an_earlier_delivery_still_in_progress() {
    let amqp = test_kit::test_amqp();
    let proxy = TcpProxy::start(test_kit::broker_addr()).await;
    let db = support::test_db().await;
    let handler = Arc::new(SlowHandler {
        started: AtomicBool::new(false),
        release: tokio::sync::Notify::new(),
    });
    let inbox = Inbox::new(db.pool.clone(), handler.clone(), test_kit::fast_inbox());
    let queue = test_kit::unique_name("test.q");
    let consumer = InboxConsumer::new(
        inbox.clone(),
        test_kit::through_proxy(&amqp, &proxy),
        queue.clone(),
        &["k"],
        test_kit::unique_name("test-consumer"),
    );
    let (_, stop, task) = support::run_connected(consumer).await;
    let publisher = TestQueue::bind(&amqp, &["unused"]).await;

    publisher
        .publish(&amqp, "k", props(), br#"{"slow": true}"#)
        .await;
    test_kit::eventually("the slow one started", Duration::from_secs(10), || async {
        handler.started.load(Ordering::SeqCst).then_some(())
    })
    .await;
    for _ in 0..5 {
        publisher.publish(&amqp, "k", props(), b"{}").await;
    }
    test_kit::eventually(
        "the fast ones processed",
        Duration::from_secs(20),
        || async { (inbox.counters().snapshot().processed == 5).then_some(()) },
    )
    .await;
    // Give their acks a moment to reach the broker before the cut (a test that waited for
    // nothing here could pass by luck, never fail by it).
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The broker sees the socket close and takes back whatever was unacked. (The consumer
    // notices once its slow handler returns.)
    proxy.disable().await;
    test_kit::eventually(
        "the broker holds the slow delivery again, and only it",
        Duration::from_secs(10),
        || async { (publisher.ready_count(&queue).await == 1).then_some(()) },
    )
    .await;

    handler.release.notify_waiters();
    proxy.enable().await;
    // The first run commits (its ack fails: the channel is gone); the redelivered copy is
    // then a duplicate. Either way it is processed exactly once.
    test_kit::eventually(
        "the slow one processed",
        Duration::from_secs(20),
        || async { (inbox_status_count(&db.pool).await == 6).then_some(()) },
    )
    .await;
    test_kit::eventually("the queue drained", Duration::from_secs(20), || async {
        (publisher.ready_count(&queue).await == 0).then_some(())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the consumer stops on shutdown")
        .unwrap();
}

async fn inbox_status_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM inbox WHERE status = 'processed'")
        .fetch_one(pool)
        .await
        .unwrap()
}
