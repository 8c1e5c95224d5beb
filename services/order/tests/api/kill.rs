//! Order killed with SIGKILL while it takes orders, then restarted: every order that exists
//! has exactly one message, and every message is published. An order whose commit happened
//! just before the kill (its client got no answer) is published too. The real binary runs
//! as a child process, on the real database and broker.

use crate::support;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use message_table::{amqp::AmqpConfig, outbox};
use serde_json::{Value, json};
use support::order_ids;
use test_kit::{ServiceProcess, TestDb, TestQueue};
use uuid::Uuid;

/// Buys `n` orders, `concurrency` at a time, with an Idempotency-Key each; records the ids
/// answered 201. Refused or failed requests (the process is dead) are not retried.
async fn buy_many(base: String, n: usize, concurrency: usize, accepted: Arc<Mutex<HashSet<Uuid>>>) {
    let http = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..concurrency).map(|_| {
        let (http, base, next, accepted) =
            (http.clone(), base.clone(), next.clone(), accepted.clone());
        async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let res = http
                    .post(format!("{base}/buy"))
                    .header("Idempotency-Key", Uuid::new_v4().to_string())
                    .json(&json!({"user_id": "alice", "item": "book", "amount_cents": 100}))
                    .send()
                    .await;
                let Ok(res) = res else {
                    // Dead: slow down instead of spinning on refused connections.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                if res.status() == reqwest::StatusCode::CREATED {
                    let body: Value = res.json().await.unwrap();
                    let id = body["order_id"].as_str().unwrap().parse().unwrap();
                    accepted.lock().unwrap().insert(id);
                }
            }
        }
    });
    futures::future::join_all(workers).await;
}

#[tokio::test]
async fn order_killed_while_taking_orders_publishes_every_committed_order_once_restarted() {
    let db = TestDb::new(&order::MIGRATOR).await;
    let amqp = AmqpConfig {
        exchange_auto_delete: false,
        ..test_kit::test_amqp()
    };
    let published = TestQueue::bind(&amqp, &["order.created"]).await;
    let env = [
        ("ORDER_DATABASE_URL", db.url.clone()),
        ("ORDER_DB_MAX_CONNECTIONS", "6".into()),
        ("AMQP_URL", amqp.url.clone()),
        ("AMQP_EXCHANGE", amqp.exchange.clone()),
        ("ORDER_QUEUE", test_kit::unique_name("test.order")),
        ("AMQP_QUEUE_EXPIRES_MS", "120000".into()),
        ("OUTBOX_LEASE_MS", "6000".into()),
        ("OUTBOX_CONFIRM_TIMEOUT_MS", "1000".into()),
        ("RUST_LOG", "info".into()),
    ];
    let mut order = ServiceProcess::start(env!("CARGO_BIN_EXE_order"), "ORDER_ADDR", &env).await;

    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let load = tokio::spawn(buy_many(order.base.clone(), 400, 8, accepted.clone()));
    test_kit::eventually("orders are flowing", Duration::from_secs(30), || async {
        (accepted.lock().unwrap().len() >= 100).then_some(())
    })
    .await;
    order.kill().await;
    load.await.unwrap();
    let before_restart = accepted.lock().unwrap().len();
    order.restart().await;
    buy_many(order.base.clone(), 50, 4, accepted.clone()).await;
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(
        accepted.len(),
        before_restart + 50,
        "a restarted order refused orders"
    );

    // Every order in the database, including any committed but never answered, is published.
    let orders: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        accepted.is_subset(&orders),
        "an order answered 201 is missing"
    );
    let taken = published
        .take_until("every order is published", Duration::from_secs(60), |t| {
            order_ids(t).len() >= orders.len()
        })
        .await;
    let (seen, copies) = (order_ids(&taken), taken.len());
    assert_eq!(seen, orders);
    // One message per order: the order and its message were committed together.
    let stats = outbox::stats(&db.pool).await.unwrap();
    let (messages, sent) = (stats.total(), stats.sent);
    assert_eq!(messages as usize, orders.len());
    test_kit::eventually(
        "every row is marked sent",
        Duration::from_secs(30),
        || async {
            let sent = outbox::stats(&db.pool).await.unwrap().sent;
            (sent == messages).then_some(())
        },
    )
    .await;
    // Only now: the relay may still be re-publishing rows whose lease it took over.
    published.delete_exchange(&amqp).await;
    println!(
        "accepted {} ({} committed in all), {} sent at first look, {} copies published for {} orders",
        accepted.len(),
        orders.len(),
        sent,
        copies,
        seen.len()
    );
}
