//! The order service when its database goes away: it stays up, answers 503 in the error
//! shape where it needs the database, reports not ready, and recovers by itself. The
//! database is cut with a [`TcpProxy`] (the shared PostgreSQL keeps running for the other
//! tests) or by terminating the service's sessions, as an operator or a failover would.

use crate::support;

use std::{collections::HashSet, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::order_ids;
use test_kit::{TcpProxy, TestDb, TestQueue};
use uuid::Uuid;

struct Order {
    base: String,
    db: TestDb,
    http: reqwest::Client,
}

/// Order on a fresh database reached through `proxy` (when given).
async fn spawn_order(amqp: &message_table::amqp::AmqpConfig, proxy: Option<&TcpProxy>) -> Order {
    let db = TestDb::new(&order::MIGRATOR).await;
    let database_url = match proxy {
        Some(p) => test_kit::url_through_proxy(&db.url, p),
        None => db.url.clone(),
    };
    let mut messaging = test_kit::messaging(amqp, "test.order", messages::ORDER_QUEUE.routing_keys);
    // A claim can commit while its answer is lost with the connection: that row waits for
    // its lease. A short lease keeps the wait within the tests' deadlines.
    messaging.outbox.lease = Duration::from_secs(6);
    messaging.outbox.confirm_timeout = Duration::from_secs(1);
    let app = test_kit::spawn_order(test_kit::service_config(&database_url, &messaging, 6)).await;
    Order {
        base: app.base,
        db,
        http: reqwest::Client::new(),
    }
}

impl Order {
    async fn buy(&self) -> (StatusCode, Value) {
        let res = self
            .http
            .post(format!("{}/buy", self.base))
            .json(&json!({"user_id": "alice", "item": "book", "amount_cents": 100}))
            .send()
            .await
            .expect("POST /buy");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Buys until one is accepted (the service recovering), asserting that every refusal
    /// on the way is a 503 in the error shape.
    async fn buy_once_recovered(&self) -> Uuid {
        test_kit::eventually(
            "POST /buy is accepted again",
            Duration::from_secs(20),
            || async {
                match self.buy().await {
                    (StatusCode::CREATED, body) => body["order_id"].as_str()?.parse().ok(),
                    (StatusCode::SERVICE_UNAVAILABLE, body) => {
                        assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
                        None
                    }
                    (status, body) => panic!("unexpected {status} while recovering: {body}"),
                }
            },
        )
        .await
    }
}

async fn order_ids_published(queue: &TestQueue, want: usize) -> HashSet<Uuid> {
    let taken = queue
        .take_until("the messages are published", Duration::from_secs(30), |t| {
            order_ids(t).len() >= want
        })
        .await;
    order_ids(&taken)
}

#[tokio::test]
async fn without_its_database_order_answers_503_is_not_ready_and_recovers_by_itself() {
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &["order.created"]).await;
    let proxy = TcpProxy::start(test_kit::database_addr()).await;
    let order = spawn_order(&amqp, Some(&proxy)).await;
    let (status, before) = order.buy().await;
    assert_eq!(status, StatusCode::CREATED, "{before}");
    let before: Uuid = before["order_id"].as_str().unwrap().parse().unwrap();

    proxy.disable().await;

    let (status, body) = order.buy().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "database_unavailable");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "internal details leaked: {body}"
    );
    let (status, body) = order.get(&format!("/orders/{before}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, ready) = order.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["checks"]["database"], "down", "{ready}");
    assert_eq!(
        order.get("/healthz").await.0,
        StatusCode::OK,
        "the process is alive"
    );

    proxy.enable().await;

    let after = order.buy_once_recovered().await;
    test_kit::eventually("order is ready again", Duration::from_secs(10), || async {
        (order.get("/readyz").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    // Both orders' messages went out: the relay recovered too.
    let published = order_ids_published(&queue, 2).await;
    assert_eq!(published, HashSet::from([before, after]));
    // Nothing half-written by the refused requests: two orders, two messages.
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&order.db.pool)
        .await
        .unwrap();
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&order.db.pool)
        .await
        .unwrap();
    assert_eq!((orders, messages), (2, 2));
}

#[tokio::test]
async fn terminated_database_sessions_are_replaced_and_nothing_is_lost() {
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &["order.created"]).await;
    let order = spawn_order(&amqp, None).await;
    let mut accepted = HashSet::new();
    for round in 0..3 {
        for _ in 0..5 {
            let (status, body) = order.buy().await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            accepted.insert(body["order_id"].as_str().unwrap().parse().unwrap());
        }
        let killed = order.db.terminate_connections().await;
        assert!(killed > 0, "round {round}: no session to terminate");
        accepted.insert(order.buy_once_recovered().await);
    }
    // Every accepted order was published, the relay's LISTEN session included.
    let published = order_ids_published(&queue, accepted.len()).await;
    assert_eq!(published, accepted);
}
