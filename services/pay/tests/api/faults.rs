//! Pay when its database goes away mid-stream: no delivery is acked before its effect is
//! committed, so everything that arrived during the outage is paid, once, after it.

use crate::support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::order_created_props as props;
use test_kit::{TcpProxy, TestQueue};
use uuid::Uuid;

const START: i64 = 100_000_000;

#[tokio::test]
async fn deliveries_during_a_database_outage_are_not_acked_and_are_paid_once_it_is_back() {
    let amqp = test_kit::test_amqp();
    let proxy = TcpProxy::start(test_kit::database_addr()).await;
    let pay = support::spawn_pay_through(&amqp, &proxy).await;
    let publisher = TestQueue::bind(&amqp, &[]).await;

    proxy.disable().await;
    let mut total = 0;
    for i in 0..20 {
        let amount = 100 + i;
        total += amount;
        let body = json!({ "order_id": Uuid::now_v7(), "user_id": "alice", "item": "book", "amount_cents": amount });
        publisher
            .publish(
                &amqp,
                "order.created",
                props(&Uuid::now_v7().to_string()),
                &serde_json::to_vec(&body).unwrap(),
            )
            .await;
    }
    // The consumer took deliveries, could not record them, and handed them back.
    test_kit::eventually(
        "deliveries handed back",
        Duration::from_secs(20),
        || async { (pay.counters.snapshot().unrecorded >= 1).then_some(()) },
    )
    .await;
    let (status, ready) = async {
        let res = reqwest::get(format!("{}/readyz", pay.base)).await.unwrap();
        (res.status(), res.json::<serde_json::Value>().await.unwrap())
    }
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready["checks"]["database"], "down", "{ready}");
    // The test's own pool reaches the database directly: nothing was written meanwhile.
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pay.db.pool)
        .await
        .unwrap();
    assert_eq!(payments, 0);

    proxy.enable().await;

    test_kit::eventually("all 20 paid", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
            .fetch_one(&pay.db.pool)
            .await
            .unwrap();
        (n == 20).then_some(())
    })
    .await;
    let (distinct, balance): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(DISTINCT order_id) FROM payments),
                (SELECT balance_cents FROM accounts WHERE user_id = 'alice')",
    )
    .fetch_one(&pay.db.pool)
    .await
    .unwrap();
    assert_eq!((distinct, balance), (20, START - total));
    // The counters follow the commit that made the payments visible.
    let c = test_kit::eventually("20 processed", Duration::from_secs(10), || async {
        let c = pay.counters.snapshot();
        (c.processed >= 20).then_some(c)
    })
    .await;
    assert_eq!(c.processed, 20, "{c:?}");
    assert_eq!((c.failed, c.dead, c.poison), (0, 0, 0), "{c:?}");
}
