//! Pay killed with SIGKILL in the middle of a stream of orders, then restarted: every order is
//! paid exactly once and answered. The real binary runs as a child process; the broker and the
//! database are the real ones. Unacked deliveries are redelivered after the kill and the inbox
//! drops those it had already committed; replies whose publish was cut are sent after the
//! relay's lease expires. At the end, SIGTERM stops the process cleanly.

use crate::support;

use std::{collections::HashMap, time::Duration};

use message_table::{amqp::AmqpConfig, inbox};
use serde_json::{Value, json};
use test_kit::{ServiceProcess, TestDb, TestQueue};
use uuid::Uuid;

const START: i64 = 100_000_000;

async fn publish_orders(
    amqp: &AmqpConfig,
    q: &TestQueue,
    n: usize,
    expected: &mut HashMap<Uuid, (&'static str, i64)>,
) {
    for i in 0..n {
        // One in five is carol's, who has no money: a failed payment, answered too.
        let user = if i.is_multiple_of(5) {
            "carol"
        } else {
            "alice"
        };
        let amount = 100 + i as i64;
        let order_id = Uuid::now_v7();
        expected.insert(order_id, (user, amount));
        let body = json!({ "order_id": order_id, "user_id": user, "item": "book", "amount_cents": amount });
        let props = support::order_created_props(&Uuid::now_v7().to_string());
        q.publish(
            amqp,
            "order.created",
            props,
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
    }
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn pay_killed_mid_stream_pays_every_order_exactly_once_after_restart() {
    let db = TestDb::new(&pay::MIGRATOR).await;
    // A real binary declares a durable exchange; the test deletes it at the end.
    let amqp = AmqpConfig {
        exchange_auto_delete: false,
        ..test_kit::test_amqp()
    };
    let queue = test_kit::unique_name("test.pay");
    let replies = TestQueue::bind(&amqp, &["payment.completed", "payment.failed"]).await;
    let env = [
        ("PAY_DATABASE_URL", db.url.clone()),
        ("PAY_DB_MAX_CONNECTIONS", "5".into()),
        ("AMQP_URL", amqp.url.clone()),
        ("AMQP_EXCHANGE", amqp.exchange.clone()),
        ("PAY_QUEUE", queue),
        ("AMQP_QUEUE_EXPIRES_MS", "120000".into()),
        // A killed relay's claims come back after its lease: keep it short for the test.
        ("OUTBOX_LEASE_MS", "6000".into()),
        ("OUTBOX_CONFIRM_TIMEOUT_MS", "1000".into()),
        ("RUST_LOG", "info".into()),
    ];
    let mut pay = ServiceProcess::start(env!("CARGO_BIN_EXE_pay"), "PAY_ADDR", &env).await;

    let mut expected = HashMap::new();
    publish_orders(&amqp, &replies, 300, &mut expected).await;
    test_kit::eventually(
        "pay is in the middle of the stream",
        Duration::from_secs(30),
        || async { (count(&db.pool, "SELECT count(*) FROM payments").await >= 30).then_some(()) },
    )
    .await;
    pay.kill().await;
    let paid_at_kill = count(&db.pool, "SELECT count(*) FROM payments").await;
    // Orders keep coming while pay is down; the queue holds them.
    publish_orders(&amqp, &replies, 100, &mut expected).await;
    pay.restart().await;

    test_kit::eventually(
        "every order has its payment row",
        Duration::from_secs(60),
        || async { (count(&db.pool, "SELECT count(*) FROM payments").await == 400).then_some(()) },
    )
    .await;
    // Every order is answered (some possibly twice: the inbox on order's side drops those).
    let answered_by_order = |taken: &[lapin::message::Delivery]| {
        let mut answered: HashMap<Uuid, usize> = HashMap::new();
        for d in taken {
            let body: Value = serde_json::from_slice(&d.data).unwrap();
            *answered
                .entry(body["order_id"].as_str().unwrap().parse().unwrap())
                .or_default() += 1;
        }
        answered
    };
    let taken = replies
        .take_until("every order is answered", Duration::from_secs(60), |t| {
            answered_by_order(t).len() == 400
        })
        .await;
    let answered = answered_by_order(&taken);
    // And a SIGTERM now stops it cleanly: exit status 0.
    let exit = pay.terminate().await;
    assert!(exit.success(), "pay exited with {exit} on SIGTERM");
    replies.delete_exchange(&amqp).await;

    assert!(paid_at_kill < 400, "the kill came after the stream ended");
    let expected_debit: i64 = expected
        .values()
        .filter(|(user, _)| *user == "alice")
        .map(|(_, amount)| amount)
        .sum();
    let (distinct, completed, failed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT order_id),
                count(*) FILTER (WHERE status = 'COMPLETED'),
                count(*) FILTER (WHERE status = 'FAILED')
         FROM payments",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((distinct, completed, failed), (400, 320, 80));
    assert_eq!(
        count(
            &db.pool,
            "SELECT balance_cents FROM accounts WHERE user_id = 'alice'"
        )
        .await,
        START - expected_debit
    );
    let inbox = inbox::stats(&db.pool).await.unwrap();
    assert_eq!((inbox.failed, inbox.dead), (0, 0), "{inbox:?}");
    assert!(answered.keys().all(|id| expected.contains_key(id)));
    println!(
        "paid before the kill: {paid_at_kill}; replies published more than once: {}",
        answered.values().filter(|n| **n > 1).count()
    );
}
