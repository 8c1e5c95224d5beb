//! Pay's inbox against a real database (and, where it matters, the real broker).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use lapin::{BasicProperties, types::ShortString};
use message_table::{
    amqp::AmqpConfig,
    inbox::{
        self, HandlerError, Inbox, InboxCounters, InboxMessage, Incoming, MessageHandler, Outcome,
        retry_sweeper::RetrySweeper,
    },
};
use pay::payments::PaymentHandler;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use test_kit::{TestDb, TestQueue};
use uuid::Uuid;

mod support;

fn order_created(user: &str, amount: i64) -> (Uuid, Incoming) {
    let order_id = Uuid::now_v7();
    let body =
        json!({ "order_id": order_id, "user_id": user, "item": "book", "amount_cents": amount });
    let incoming = Incoming {
        message_id: Some(Uuid::now_v7().to_string()),
        event_type: Some("OrderCreated".into()),
        content_type: Some("application/json".into()),
        timestamp: None,
        headers: json!({}),
        body: serde_json::to_vec(&body).unwrap(),
    };
    (order_id, incoming)
}

fn handler() -> Arc<dyn MessageHandler> {
    Arc::new(PaymentHandler::new(Duration::from_secs(60)))
}

/// Runs the real payment handler, then fails the first `failures` times: the debit it made
/// must be rolled back with the failure.
struct FailsAfterEffect {
    inner: Arc<dyn MessageHandler>,
    failures_left: AtomicU32,
}

#[async_trait]
impl MessageHandler for FailsAfterEffect {
    async fn handle(&self, tx: &mut PgConnection, msg: &InboxMessage) -> Result<(), HandlerError> {
        self.inner.handle(tx, msg).await?;
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(HandlerError::Transient(anyhow::anyhow!("simulated outage")));
        }
        Ok(())
    }
}

fn failing(failures: u32) -> Arc<dyn MessageHandler> {
    Arc::new(FailsAfterEffect {
        inner: handler(),
        failures_left: AtomicU32::new(failures),
    })
}

async fn balance(pool: &PgPool, user: &str) -> i64 {
    sqlx::query_scalar("SELECT balance_cents FROM accounts WHERE user_id = $1")
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn payments(pool: &PgPool, order_id: Uuid) -> Vec<(String, Option<String>)> {
    sqlx::query_as("SELECT status, failure_reason FROM payments WHERE order_id = $1")
        .bind(order_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn replies(pool: &PgPool) -> Vec<(String, Value)> {
    sqlx::query_as("SELECT event_type, payload FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn inbox_row(pool: &PgPool, id: &str) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, last_error FROM inbox WHERE message_id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

const START: i64 = 100_000_000;

#[tokio::test]
async fn the_same_message_twice_pays_once() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = Inbox::new(db.pool.clone(), handler(), test_kit::fast_inbox());
    let (order_id, msg) = order_created("alice", 1500);

    assert_eq!(
        inbox.receive(msg.clone()).await.unwrap(),
        Outcome::Processed
    );
    assert_eq!(inbox.receive(msg).await.unwrap(), Outcome::Duplicate);

    assert_eq!(
        payments(&db.pool, order_id).await,
        vec![("COMPLETED".into(), None)]
    );
    assert_eq!(balance(&db.pool, "alice").await, START - 1500);
    let replies = replies(&db.pool).await;
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].0, "PaymentCompleted");
    assert_eq!(replies[0].1["order_id"], order_id.to_string());
    assert_eq!(inbox.counters().snapshot().duplicates, 1);
}

/// The inbox remembers ids for its retention (7 days in the test settings). A message created
/// before that window may be a copy of one processed and forgotten: it is dead, not paid,
/// until an operator requeues it.
#[tokio::test]
async fn a_message_older_than_the_inbox_memory_is_dead_not_paid_until_requeued() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = Inbox::new(db.pool.clone(), handler(), test_kit::fast_inbox());
    let now = chrono::Utc::now().timestamp() as u64;

    let (old_order, mut old) = order_created("alice", 300);
    old.timestamp = Some(now - 8 * 24 * 3600);
    let id = old.message_id.clone().unwrap();
    match inbox.receive(old.clone()).await.unwrap() {
        Outcome::Dead { reason } => assert!(
            reason.contains("before the inbox retention window"),
            "{reason}"
        ),
        other => panic!("expected dead, got {other:?}"),
    }
    assert_eq!(payments(&db.pool, old_order).await, vec![]);
    assert_eq!(balance(&db.pool, "alice").await, START);
    let (status, attempts, _) = inbox_row(&db.pool, &id).await;
    assert_eq!((status.as_str(), attempts), ("dead", 0));
    // Another copy is a duplicate of the dead row, not a second chance.
    assert_eq!(inbox.receive(old).await.unwrap(), Outcome::Duplicate);

    // A recent message (an hour old) is processed as usual.
    let (recent_order, mut recent) = order_created("alice", 200);
    recent.timestamp = Some(now - 3600);
    assert_eq!(inbox.receive(recent).await.unwrap(), Outcome::Processed);
    assert_eq!(payments(&db.pool, recent_order).await.len(), 1);

    // The operator checked the old order was never paid, and requeues it.
    assert!(
        inbox::requeue_dead(&db.pool, id.parse().unwrap())
            .await
            .unwrap()
    );
    RetrySweeper::new(&inbox).run_once().await.unwrap();
    assert_eq!(
        payments(&db.pool, old_order).await,
        vec![("COMPLETED".into(), None)]
    );
    assert_eq!(balance(&db.pool, "alice").await, START - 500);
}

#[tokio::test]
async fn concurrent_copies_of_a_message_pay_once() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = Inbox::new(db.pool.clone(), handler(), test_kit::fast_inbox());
    let (order_id, msg) = order_created("bob", 700);

    let outcomes = futures::future::join_all((0..8).map(|_| inbox.receive(msg.clone()))).await;
    let processed = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Outcome::Processed)))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(Outcome::Duplicate)))
        .count();
    assert_eq!((processed, duplicates), (1, 7), "{outcomes:?}");
    assert_eq!(payments(&db.pool, order_id).await.len(), 1);
    assert_eq!(balance(&db.pool, "bob").await, START - 700);
    assert_eq!(replies(&db.pool).await.len(), 1);
}

#[tokio::test]
async fn a_second_message_about_the_same_order_cannot_pay_twice() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = Inbox::new(db.pool.clone(), handler(), test_kit::fast_inbox());
    let (order_id, first) = order_created("alice", 300);
    let mut second = first.clone();
    second.message_id = Some(Uuid::now_v7().to_string()); // same order, another message id

    assert_eq!(inbox.receive(first).await.unwrap(), Outcome::Processed);
    assert_eq!(inbox.receive(second).await.unwrap(), Outcome::Processed);
    assert_eq!(payments(&db.pool, order_id).await.len(), 1);
    assert_eq!(balance(&db.pool, "alice").await, START - 300);
    assert_eq!(replies(&db.pool).await.len(), 1);
}

#[tokio::test]
async fn a_handler_that_fails_twice_is_retried_with_backoff_and_pays_once() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let mut cfg = test_kit::fast_inbox();
    cfg.retry.base = Duration::from_secs(10); // long enough to see, not to wait for
    cfg.retry.max = Duration::from_secs(60);
    let inbox = Inbox::new(db.pool.clone(), failing(2), cfg);
    let sweeper = RetrySweeper::new(&inbox);
    let (order_id, msg) = order_created("alice", 2500);
    let id = msg.message_id.clone().unwrap();

    let first = inbox.receive(msg).await.unwrap();
    assert!(
        matches!(first, Outcome::Failed { attempts: 1, .. }),
        "{first:?}"
    );
    // The failure is durable (the delivery may be acked) and its effect rolled back.
    let (status, attempts, error) = inbox_row(&db.pool, &id).await;
    assert_eq!((status.as_str(), attempts), ("failed", 1));
    assert_eq!(error.as_deref(), Some("simulated outage"));
    let backed_off: bool = sqlx::query_scalar(
        // First retry: 10 s with equal jitter, so at least 5 s away.
        "SELECT next_attempt_at > now() + interval '4 seconds' FROM inbox WHERE message_id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(backed_off, "the retry is scheduled later, not immediately");
    assert!(payments(&db.pool, order_id).await.is_empty());
    assert_eq!(balance(&db.pool, "alice").await, START);

    assert_eq!(
        sweeper.run_once().await.unwrap(),
        Default::default(),
        "not due yet: not retried"
    );
    test_kit::eventually(
        "the sweeper processes the message",
        Duration::from_secs(10),
        || async {
            // Time passes: make the backed-off retry due.
            sqlx::query("UPDATE inbox SET next_attempt_at = now() WHERE status = 'failed'")
                .execute(&db.pool)
                .await
                .unwrap();
            sweeper.run_once().await.unwrap();
            let (status, attempts, _) = inbox_row(&db.pool, &id).await;
            (status == "processed").then_some(attempts)
        },
    )
    .await;
    let (_, attempts, _) = inbox_row(&db.pool, &id).await;
    assert_eq!(attempts, 3, "two failures, then success");
    assert_eq!(payments(&db.pool, order_id).await.len(), 1);
    assert_eq!(balance(&db.pool, "alice").await, START - 2500);
    assert_eq!(replies(&db.pool).await.len(), 1);
    let c = inbox.counters();
    assert_eq!((c.snapshot().failed, c.snapshot().processed), (2, 1));
}

#[tokio::test]
async fn exhausted_attempts_end_dead_with_the_last_error_and_can_be_requeued() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let mut cfg = test_kit::fast_inbox();
    cfg.retry.max_attempts = 3;
    let inbox = Inbox::new(db.pool.clone(), failing(u32::MAX), cfg.clone());
    let sweeper = RetrySweeper::new(&inbox);
    let (order_id, msg) = order_created("alice", 100);
    let id = msg.message_id.clone().unwrap();

    inbox.receive(msg).await.unwrap();
    test_kit::eventually("the message is dead", Duration::from_secs(10), || async {
        sweeper.run_once().await.unwrap();
        (inbox_row(&db.pool, &id).await.0 == "dead").then_some(())
    })
    .await;
    let (_, attempts, error) = inbox_row(&db.pool, &id).await;
    assert_eq!(attempts, 3);
    assert_eq!(error.as_deref(), Some("simulated outage"));
    assert!(payments(&db.pool, order_id).await.is_empty());
    // Dead is final: the sweeper leaves it alone.
    assert_eq!(sweeper.run_once().await.unwrap(), Default::default());

    // An operator requeues it once the cause is fixed.
    assert!(
        inbox::requeue_dead(&db.pool, id.parse().unwrap())
            .await
            .unwrap()
    );
    let healthy = Inbox::new(db.pool.clone(), handler(), cfg);
    RetrySweeper::new(&healthy).run_once().await.unwrap();
    assert_eq!(inbox_row(&db.pool, &id).await.0, "processed");
    assert_eq!(payments(&db.pool, order_id).await.len(), 1);
}

#[tokio::test]
async fn insufficient_funds_and_unknown_users_are_failed_payments_not_retries() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = Inbox::new(db.pool.clone(), handler(), test_kit::fast_inbox());
    let (poor, poor_msg) = order_created("carol", 100);
    let (ghost, ghost_msg) = order_created("nobody", 100);
    let poor_id = poor_msg.message_id.clone().unwrap();

    assert_eq!(inbox.receive(poor_msg).await.unwrap(), Outcome::Processed);
    assert_eq!(inbox.receive(ghost_msg).await.unwrap(), Outcome::Processed);
    assert_eq!(
        payments(&db.pool, poor).await,
        vec![("FAILED".into(), Some("insufficient_funds".into()))]
    );
    assert_eq!(
        payments(&db.pool, ghost).await,
        vec![("FAILED".into(), Some("unknown_user".into()))]
    );
    assert_eq!(balance(&db.pool, "carol").await, 0);
    assert_eq!(
        inbox_row(&db.pool, &poor_id).await,
        ("processed".into(), 1, None)
    );
    let replies = replies(&db.pool).await;
    assert_eq!(replies.len(), 2);
    assert!(
        replies
            .iter()
            .all(|(t, p)| t == "PaymentFailed" && p["reason"].is_string())
    );
}

#[tokio::test]
async fn a_payload_the_handler_cannot_understand_is_dead_at_once() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = Inbox::new(db.pool.clone(), handler(), test_kit::fast_inbox());
    let (_, mut msg) = order_created("alice", 100);
    msg.body = br#"{"order_id": "not-a-uuid"}"#.to_vec();
    let outcome = inbox.receive(msg).await.unwrap();
    assert!(matches!(outcome, Outcome::Dead { .. }), "{outcome:?}");
    assert_eq!(balance(&db.pool, "alice").await, START);
}

struct RunningPay {
    db: TestDb,
    counters: Arc<InboxCounters>,
    queue: TestQueue,
}

async fn spawn_pay(amqp: &AmqpConfig) -> RunningPay {
    let pay = support::spawn_pay(amqp, std::future::pending()).await;
    // A queue of our own on the same exchange, only to publish through.
    let queue = TestQueue::bind(amqp, &["unused"]).await;
    RunningPay {
        db: pay.db,
        counters: pay.counters,
        queue,
    }
}

fn props(message_id: Option<&str>, content_type: &str) -> BasicProperties {
    let p = BasicProperties::default()
        .with_type(ShortString::from("OrderCreated"))
        .with_content_type(ShortString::from(content_type));
    match message_id {
        Some(id) => p.with_message_id(ShortString::from(id)),
        None => p,
    }
}

#[tokio::test]
async fn a_message_published_twice_to_the_broker_pays_once() {
    let amqp = test_kit::test_amqp();
    let pay = spawn_pay(&amqp).await;
    let (order_id, msg) = order_created("alice", 4200);
    let id = msg.message_id.clone().unwrap();
    for _ in 0..2 {
        pay.queue
            .publish(
                &amqp,
                "order.created",
                props(Some(&id), "application/json"),
                &msg.body,
            )
            .await;
    }
    test_kit::eventually("both copies handled", Duration::from_secs(10), || async {
        let c = &pay.counters;
        (c.snapshot().processed == 1 && c.snapshot().duplicates == 1).then_some(())
    })
    .await;
    assert_eq!(payments(&pay.db.pool, order_id).await.len(), 1);
    assert_eq!(balance(&pay.db.pool, "alice").await, START - 4200);
}

#[tokio::test]
async fn poison_messages_are_recorded_dead_acked_and_do_not_block_the_next_one() {
    let amqp = test_kit::test_amqp();
    let pay = spawn_pay(&amqp).await;
    let ct = "application/json";
    let bad_id = Uuid::now_v7().to_string();
    let q = &pay.queue;
    q.publish(
        &amqp,
        "order.created",
        props(Some(&bad_id), ct),
        b"{not json",
    )
    .await;
    q.publish(&amqp, "order.created", props(None, ct), b"{}")
        .await;
    q.publish(&amqp, "order.created", props(Some("not-a-uuid"), ct), b"{}")
        .await;
    q.publish(
        &amqp,
        "order.created",
        props(Some(&Uuid::now_v7().to_string()), "text/plain"),
        b"hello",
    )
    .await;
    let huge = vec![b' '; 2 << 20];
    q.publish(
        &amqp,
        "order.created",
        props(Some(&Uuid::now_v7().to_string()), ct),
        &huge,
    )
    .await;
    let (order_id, good) = order_created("bob", 999);
    q.publish(
        &amqp,
        "order.created",
        props(good.message_id.as_deref(), ct),
        &good.body,
    )
    .await;

    test_kit::eventually(
        "the good message after the poison is paid",
        Duration::from_secs(10),
        || async { (payments(&pay.db.pool, order_id).await.len() == 1).then_some(()) },
    )
    .await;
    test_kit::eventually(
        "five poison messages recorded",
        Duration::from_secs(10),
        || async { (pay.counters.snapshot().poison == 5).then_some(()) },
    )
    .await;
    let dead: Vec<(String, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT last_error, raw_body FROM inbox WHERE status = 'dead' ORDER BY received_at",
    )
    .fetch_all(&pay.db.pool)
    .await
    .unwrap();
    assert_eq!(dead.len(), 5);
    assert!(dead.iter().all(|(e, _)| e.starts_with("poison message:")));
    let (not_json_error, not_json_body) = sqlx::query_as::<_, (String, Option<Vec<u8>>)>(
        "SELECT last_error, raw_body FROM inbox WHERE message_id = $1::uuid",
    )
    .bind(&bad_id)
    .fetch_one(&pay.db.pool)
    .await
    .unwrap();
    assert!(not_json_error.contains("not valid JSON"));
    let kept: i32 =
        sqlx::query_scalar("SELECT max(length(raw_body)) FROM inbox WHERE status = 'dead'")
            .fetch_one(&pay.db.pool)
            .await
            .unwrap();
    assert_eq!(kept, 64 * 1024, "a huge poison body is kept up to 64 KiB");
    assert_eq!(
        not_json_body.as_deref(),
        Some(&b"{not json"[..]),
        "raw body kept"
    );
}

/// One sweep tries a failing row once, even when its backoff is shorter than the sweep:
/// otherwise a round would burn several attempts of the same message at once.
#[tokio::test]
async fn one_sweep_retries_a_failing_message_once() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let mut cfg = test_kit::fast_inbox();
    cfg.retry.base = Duration::ZERO; // due again at once
    cfg.retry.max = Duration::ZERO;
    cfg.retry.max_attempts = 50;
    let inbox = Inbox::new(db.pool.clone(), failing(u32::MAX), cfg);
    let (_, msg) = order_created("alice", 100);
    let id = msg.message_id.clone().unwrap();
    inbox.receive(msg).await.unwrap();

    let report = RetrySweeper::new(&inbox).run_once().await.unwrap();
    assert_eq!(report.failed, 1);
    assert_eq!(
        inbox_row(&db.pool, &id).await.1,
        2,
        "one retry in one sweep"
    );
}
