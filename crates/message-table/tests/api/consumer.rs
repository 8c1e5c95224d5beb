//! The inbox consumer on the real broker: it survives a cut connection and a panicking
//! handler, and stops on shutdown.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{BasicProperties, types::ShortString};
use message_table::inbox::{
    Inbox, InboxCounters, InboxStatus, consumer::InboxConsumer, retry_sweeper::RetrySweeper,
};
use support::props;
use test_kit::{TcpProxy, TestDb, TestQueue};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support;

struct Running {
    _db: TestDb,
    /// The consumer's AMQP connection name (unique per test).
    name: String,
    inbox: Inbox,
    queue: String,
    handled: Arc<AtomicUsize>,
    counters: Arc<InboxCounters>,
    connected: message_table::amqp::BrokerLink,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    publisher: TestQueue,
}

async fn start(
    amqp: &message_table::amqp::AmqpConfig,
    consumer_amqp: message_table::amqp::AmqpConfig,
) -> Running {
    let db = TestDb::with_message_tables().await;
    let (inbox, handled) = support::counting_inbox(&db.pool);
    let counters = inbox.counters();
    let queue = test_kit::unique_name("test.q");
    let name = test_kit::unique_name("test-consumer");
    let consumer = InboxConsumer::new(
        inbox.clone(),
        consumer_amqp,
        queue.clone(),
        &["k"],
        name.clone(),
    );
    let (connected, stop, task) = support::run_connected(consumer).await;
    let publisher = TestQueue::bind(amqp, &["unused"]).await;
    Running {
        _db: db,
        name,
        inbox,
        queue,
        handled,
        counters,
        connected,
        stop,
        task,
        publisher,
    }
}

impl Running {
    async fn wait_handled(&self, n: usize) {
        test_kit::eventually(
            &format!("{n} messages handled"),
            Duration::from_secs(20),
            || async { (self.handled.load(Ordering::SeqCst) == n).then_some(()) },
        )
        .await;
    }
}

/// RabbitMQ closing the connection itself (an operator, a node going down) is a clean AMQP
/// close, not a cut socket: the consumer must treat it as a loss all the same.
#[tokio::test]
async fn the_consumer_reconnects_when_the_broker_closes_its_connection() {
    let amqp = test_kit::test_amqp();
    let c = start(&amqp, amqp.clone()).await;
    c.publisher.publish(&amqp, "k", props(), b"{}").await;
    c.wait_handled(1).await;

    assert_eq!(test_kit::broker_closes_connection(&c.name).await, 1);
    // Only a new connection can deliver this one: the old one is closed.
    c.publisher.publish(&amqp, "k", props(), b"{}").await;
    c.wait_handled(2).await;
    assert!(c.connected.is_connected());
    c.stop.cancel();
    c.task.await.unwrap();
}

#[tokio::test]
async fn the_consumer_reconnects_after_its_connection_is_cut() {
    let amqp = test_kit::test_amqp();
    let proxy = TcpProxy::start(test_kit::broker_addr()).await;
    let c = start(&amqp, test_kit::through_proxy(&amqp, &proxy)).await;
    c.publisher.publish(&amqp, "k", props(), b"{}").await;
    c.wait_handled(1).await;

    proxy.disable().await;
    test_kit::eventually(
        "consumer sees the loss",
        Duration::from_secs(10),
        || async { (!c.connected.is_connected()).then_some(()) },
    )
    .await;
    // Published while the consumer is away: the durable queue keeps it.
    c.publisher.publish(&amqp, "k", props(), b"{}").await;
    proxy.enable().await;
    c.wait_handled(2).await;
    assert!(c.connected.is_connected());

    c.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), c.task)
        .await
        .expect("the consumer stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn a_panicking_handler_is_a_recorded_failure_and_the_consumer_goes_on() {
    let amqp = test_kit::test_amqp();
    let c = start(&amqp, amqp.clone()).await;
    c.publisher
        .publish(&amqp, "k", props(), br#"{"boom": true}"#)
        .await;
    c.publisher.publish(&amqp, "k", props(), b"{}").await;
    c.wait_handled(1).await;
    test_kit::eventually(
        "the panic recorded as a failure",
        Duration::from_secs(10),
        || async { (c.counters.snapshot().failed >= 1).then_some(()) },
    )
    .await;
    assert!(
        !c.task.is_finished(),
        "the consumer task survived the panic"
    );
    assert!(c.connected.is_connected());
    let (status, error): (InboxStatus, String) =
        sqlx::query_as("SELECT status, last_error FROM inbox WHERE payload ? 'boom'")
            .fetch_one(&c._db.pool)
            .await
            .unwrap();
    assert_eq!(status, InboxStatus::Failed);
    assert!(error.contains("handler panicked: handler bug"), "{error}");

    // The sweeper retries it like any failure (and it panics again: attempt 2, still alive).
    sqlx::query("UPDATE inbox SET next_attempt_at = now()")
        .execute(&c._db.pool)
        .await
        .unwrap();
    let report = RetrySweeper::new(&c.inbox).run_once().await.unwrap();
    assert_eq!(report.failed, 1);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM inbox WHERE payload ? 'boom'")
        .fetch_one(&c._db.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 2);
}

/// The delivery is acked only after its outcome is committed: while the inbox cannot record
/// anything, the message is handed back to the broker again and again, and once the
/// database accepts writes it is processed. Acked early, it would be gone.
#[tokio::test]
async fn a_delivery_is_acked_only_after_its_outcome_is_committed() {
    let amqp = test_kit::test_amqp();
    let c = start(&amqp, amqp.clone()).await;
    sqlx::query("ALTER TABLE inbox ADD CONSTRAINT refuse_everything CHECK (false) NOT VALID")
        .execute(&c._db.pool)
        .await
        .unwrap();
    c.publisher.publish(&amqp, "k", props(), b"{}").await;
    test_kit::eventually(
        "handed back at least twice",
        Duration::from_secs(20),
        || async { (c.counters.snapshot().unrecorded >= 2).then_some(()) },
    )
    .await;
    assert_eq!(c.handled.load(Ordering::SeqCst), 0);

    sqlx::query("ALTER TABLE inbox DROP CONSTRAINT refuse_everything")
        .execute(&c._db.pool)
        .await
        .unwrap();
    // The handler ran; wait for its outcome to be committed and counted.
    test_kit::eventually("processed once", Duration::from_secs(20), || async {
        (c.counters.snapshot().processed == 1).then_some(())
    })
    .await;
    assert_eq!(c.handled.load(Ordering::SeqCst), 1);
}

/// Poison is acked, not merely skipped: after the consumer stops (which hands every unacked
/// delivery back to the queue), the queue is empty.
#[tokio::test]
async fn poison_deliveries_are_acked() {
    let amqp = test_kit::test_amqp();
    let c = start(&amqp, amqp.clone()).await;
    let no_id = BasicProperties::default().with_content_type(ShortString::from("application/json"));
    c.publisher.publish(&amqp, "k", no_id, b"{}").await;
    c.publisher.publish(&amqp, "k", props(), b"not json").await;
    c.publisher.publish(&amqp, "k", props(), b"{}").await;
    c.wait_handled(1).await;
    test_kit::eventually(
        "two poison messages recorded",
        Duration::from_secs(10),
        || async { (c.counters.snapshot().poison == 2).then_some(()) },
    )
    .await;
    c.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), c.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        c.publisher.ready_count(&c.queue).await,
        0,
        "nothing was left unacked"
    );
}

/// Every kind of unreadable delivery is recorded dead with its reason and (up to 64 KiB) its
/// raw body, and the good message behind them is handled.
#[tokio::test]
async fn poison_is_recorded_dead_with_its_reason_and_raw_body_and_does_not_block_the_next_one() {
    let amqp = test_kit::test_amqp();
    let c = start(&amqp, amqp.clone()).await;
    let with = |id: Option<&str>, content_type: &str| {
        let p = BasicProperties::default()
            .with_type(ShortString::from("Test"))
            .with_content_type(ShortString::from(content_type));
        match id {
            Some(id) => p.with_message_id(ShortString::from(id)),
            None => p,
        }
    };
    let json = "application/json";
    let not_json_id = Uuid::now_v7().to_string();
    let fresh = || Uuid::now_v7().to_string();
    let q = &c.publisher;
    q.publish(&amqp, "k", with(Some(&not_json_id), json), b"{not json")
        .await;
    q.publish(&amqp, "k", with(None, json), b"{}").await;
    q.publish(&amqp, "k", with(Some("not-a-uuid"), json), b"{}")
        .await;
    q.publish(&amqp, "k", with(Some(&fresh()), "text/plain"), b"hello")
        .await;
    let huge = vec![b' '; 2 << 20];
    q.publish(&amqp, "k", with(Some(&fresh()), json), &huge)
        .await;
    q.publish(&amqp, "k", props(), b"{}").await;

    c.wait_handled(1).await;
    test_kit::eventually(
        "five poison messages recorded",
        Duration::from_secs(10),
        || async { (c.counters.snapshot().poison == 5).then_some(()) },
    )
    .await;
    let dead: Vec<(String, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT last_error, raw_body FROM inbox WHERE payload IS NULL ORDER BY received_at",
    )
    .fetch_all(&c._db.pool)
    .await
    .unwrap();
    assert_eq!(dead.len(), 5);
    assert!(dead.iter().all(|(e, _)| e.starts_with("poison message:")));
    let (not_json_error, not_json_body) = sqlx::query_as::<_, (String, Option<Vec<u8>>)>(
        "SELECT last_error, raw_body FROM inbox WHERE message_id = $1::uuid",
    )
    .bind(&not_json_id)
    .fetch_one(&c._db.pool)
    .await
    .unwrap();
    assert!(
        not_json_error.contains("not valid JSON"),
        "{not_json_error}"
    );
    assert_eq!(
        not_json_body.as_deref(),
        Some(&b"{not json"[..]),
        "raw body kept"
    );
    let kept: i32 = sqlx::query_scalar("SELECT max(length(raw_body)) FROM inbox")
        .fetch_one(&c._db.pool)
        .await
        .unwrap();
    assert_eq!(kept, 64 * 1024, "a huge poison body is kept up to 64 KiB");
}

/// The `hold_ack` teaching switch ("crash after commit"): the outcome is committed, then the
/// consumer's connection goes before the ack, as in a crash. The broker delivers the message
/// again and the inbox drops the copy: handled once, and the copy counted on the message's
/// own row (`duplicates`).
#[tokio::test]
async fn hold_ack_commits_then_loses_the_ack_and_the_redelivered_copy_is_dropped() {
    let amqp = test_kit::test_amqp();
    let db = TestDb::with_message_tables().await;
    let faults = message_table::faults::Faults::on();
    let (inbox, handled) = support::counting_inbox(&db.pool);
    let inbox = inbox.with_faults(faults.clone());
    let counters = inbox.counters();
    let queue = test_kit::unique_name("test.q");
    let consumer = InboxConsumer::new(
        inbox,
        amqp.clone(),
        queue.clone(),
        &["k"],
        test_kit::unique_name("test-consumer"),
    );
    let (_, stop, task) = support::run_connected(consumer).await;
    let publisher = TestQueue::bind(&amqp, &["unused"]).await;

    faults.set(message_table::faults::Switch::HoldAck, 1);
    publisher.publish(&amqp, "k", props(), b"{}").await;
    test_kit::eventually(
        "the redelivered copy dropped as a duplicate",
        Duration::from_secs(20),
        || async { (counters.snapshot().duplicates == 1).then_some(()) },
    )
    .await;
    assert_eq!(handled.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(counters.snapshot().processed, 1);
    assert!(!faults.armed(message_table::faults::Switch::HoldAck));
    let (status, duplicates): (InboxStatus, i32) =
        sqlx::query_as("SELECT status, duplicates FROM inbox")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((status, duplicates), (InboxStatus::Processed, 1));

    // The copy was acked: once the consumer stops, nothing is left in the queue.
    stop.cancel();
    task.await.unwrap();
    assert_eq!(publisher.ready_count(&queue).await, 0);
}
