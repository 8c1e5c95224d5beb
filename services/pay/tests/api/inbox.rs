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
        HandlerError, Inbox, InboxCounters, InboxMessage, InboxStatus, Incoming, MessageHandler,
        Outcome, retry_sweeper::RetrySweeper,
    },
};
use pay::payments::PaymentHandler;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use test_kit::{TestDb, TestQueue};
use uuid::Uuid;

use crate::support;

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
    async fn handle(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError> {
        self.inner.handle(tx, msgs).await?;
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

async fn inbox_row(pool: &PgPool, id: &str) -> (InboxStatus, i32, Option<String>) {
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

#[tokio::test]
async fn concurrent_copies_of_a_message_pay_once() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let inbox = Inbox::new(db.pool.clone(), handler(), test_kit::fast_inbox());
    let (order_id, msg) = order_created("bob", 700);

    let outcomes = futures::future::join_all((0..8).map(|_| inbox.receive(msg.clone()))).await;
    let processed = outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Processed)))
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|o| matches!(o, Some(Outcome::Duplicate)))
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
        (InboxStatus::Processed, 1, None)
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
    let pay = support::spawn_pay(amqp).await;
    // A queue of our own on the same exchange, only to publish through.
    let queue = TestQueue::bind(amqp, &["unused"]).await;
    RunningPay {
        db: pay.db,
        counters: pay.instance.counters,
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

/// A failed attempt takes its debit, payment and reply back with it; the retry pays once.
#[tokio::test]
async fn a_failed_attempt_rolls_the_debit_back_and_the_retry_pays_once() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let mut cfg = test_kit::fast_inbox();
    cfg.retry.base = Duration::ZERO; // due again at once
    cfg.retry.max = Duration::ZERO;
    let inbox = Inbox::new(db.pool.clone(), failing(1), cfg);
    let (order_id, msg) = order_created("alice", 2500);
    let id = msg.message_id.clone().unwrap();

    let first = inbox.receive(msg).await.unwrap();
    assert!(matches!(first, Outcome::Failed { .. }), "{first:?}");
    assert!(payments(&db.pool, order_id).await.is_empty());
    assert_eq!(balance(&db.pool, "alice").await, START);
    assert!(replies(&db.pool).await.is_empty());

    let report = RetrySweeper::new(&inbox).run_once().await.unwrap();
    assert_eq!(report.processed, 1, "{report:?}");
    assert_eq!(inbox_row(&db.pool, &id).await.1, 2);
    assert_eq!(
        payments(&db.pool, order_id).await,
        vec![("COMPLETED".into(), None)]
    );
    assert_eq!(balance(&db.pool, "alice").await, START - 2500);
    assert_eq!(replies(&db.pool).await.len(), 1);
}

/// Everything a run of the inbox left behind, comparable between two databases: each
/// order's payment, the balances, and the replies (without their fresh payment ids).
async fn state(pool: &PgPool, orders: &[Uuid]) -> Vec<String> {
    let mut out = Vec::new();
    for order in orders {
        out.push(format!("{order}: {:?}", payments(pool, *order).await));
    }
    for user in ["alice", "bob", "carol", "dave"] {
        out.push(format!("{user}: {}", balance(pool, user).await));
    }
    let mut replies: Vec<String> = replies(pool)
        .await
        .into_iter()
        .map(|(t, p)| {
            format!(
                "{t} {} {} {}",
                p["order_id"], p["amount_cents"], p["reason"]
            )
        })
        .collect();
    replies.sort();
    out.extend(replies);
    out
}

/// Pay's batch handler does in a few statements what the handler does message by
/// message, with the same outcomes: completed, insufficient funds, unknown user, a second
/// message about a paid order, and (message by message inside the batch) one account with
/// two orders of which only the first fits its balance.
#[tokio::test]
async fn a_batch_pays_exactly_as_its_messages_one_by_one() {
    let batched = TestDb::new(&pay::MIGRATOR).await;
    let one_by_one = TestDb::new(&pay::MIGRATOR).await;
    for db in [&batched, &one_by_one] {
        sqlx::query("INSERT INTO accounts (user_id, balance_cents) VALUES ('dave', 1000)")
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let (alice, alice_msg) = order_created("alice", 500);
    let (bob, bob_msg) = order_created("bob", 700);
    let (carol, carol_msg) = order_created("carol", 100);
    let (ghost, ghost_msg) = order_created("nobody", 100);
    // Another message about alice's order (a different message id).
    let mut again = order_created("alice", 500).1;
    let mut body: Value = serde_json::from_slice(&again.body).unwrap();
    body["order_id"] = json!(alice);
    again.body = serde_json::to_vec(&body).unwrap();
    let distinct = vec![alice_msg, bob_msg, carol_msg, ghost_msg];
    let (dave1, dave1_msg) = order_created("dave", 600);
    let (dave2, dave2_msg) = order_created("dave", 600);
    let same_account = vec![dave1_msg, dave2_msg];

    let inbox = Inbox::new(batched.pool.clone(), handler(), test_kit::fast_inbox());
    for batch in [distinct.clone(), vec![again.clone()], same_account.clone()] {
        let outcomes = inbox.receive_batch(batch).await;
        assert!(
            outcomes.iter().all(|o| *o == Some(Outcome::Processed)),
            "{outcomes:?}"
        );
    }
    let inbox = Inbox::new(one_by_one.pool.clone(), handler(), test_kit::fast_inbox());
    for msg in distinct.into_iter().chain([again]).chain(same_account) {
        assert_eq!(inbox.receive(msg).await.unwrap(), Outcome::Processed);
    }

    let orders = [alice, bob, carol, ghost, dave1, dave2];
    let expected = state(&one_by_one.pool, &orders).await;
    assert_eq!(state(&batched.pool, &orders).await, expected);
    // Two orders of one account are paid in the batch's one transaction, each seeing the
    // balance the one before left (600 of 1,000, then 600 refused), not one at a time.
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM payments WHERE order_id = ANY($1)",
    )
    .bind([dave1, dave2])
    .fetch_one(&batched.pool)
    .await
    .unwrap();
    assert_eq!(transactions, 1, "dave's two payments in one transaction");
    // Two messages about one order, for different accounts, in one batch: one payment.
    let (twice, first) = order_created("alice", 50);
    let mut second = order_created("bob", 50).1;
    let mut body: Value = serde_json::from_slice(&second.body).unwrap();
    body["order_id"] = json!(twice);
    second.body = serde_json::to_vec(&body).unwrap();
    let inbox = Inbox::new(batched.pool.clone(), handler(), test_kit::fast_inbox());
    let outcomes = inbox.receive_batch(vec![first, second]).await;
    assert!(
        outcomes.iter().all(|o| *o == Some(Outcome::Processed)),
        "{outcomes:?}"
    );
    assert_eq!(payments(&batched.pool, twice).await.len(), 1);
    assert_eq!(
        balance(&batched.pool, "alice").await + balance(&batched.pool, "bob").await,
        2 * START - 500 - 700 - 50,
        "one debit of 50 for the order, not two"
    );
    assert_eq!(replies(&batched.pool).await.len(), 7);
    // And what the first batches did, spelled out for the batch of distinct accounts.
    assert_eq!(
        payments(&batched.pool, carol).await,
        [("FAILED".into(), Some("insufficient_funds".into()))]
    );
    assert_eq!(
        payments(&batched.pool, ghost).await,
        [("FAILED".into(), Some("unknown_user".into()))]
    );
    assert_eq!(balance(&batched.pool, "dave").await, 400);
    assert_eq!(
        payments(&batched.pool, dave2).await,
        [("FAILED".into(), Some("insufficient_funds".into()))]
    );
}
