//! `/metrics` of order, pay and the gateway after a flow: each service counts exactly what
//! it did (each has its own registry, though all three run in this one process), and the
//! answers parse.

use std::time::Duration;

use lapin::{BasicProperties, types::ShortString};
use serde_json::Value;
use test_kit::{
    TestQueue,
    metrics::{Metrics, scrape},
};
use uuid::Uuid;

const N: usize = 3;
const SETTLE: Duration = Duration::from_secs(20);

/// Scrapes `base/metrics` until `done` holds, and returns that reading.
async fn scrape_until(base: &str, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let url = format!("{base}/metrics");
    test_kit::eventually(what, SETTLE, || async {
        let m = scrape(&url).await;
        done(&m).then_some(m)
    })
    .await
}

fn publishes(m: &Metrics, outcome: &str) -> f64 {
    m.value("outbox_publishes_total", &[("outcome", outcome)])
}

fn deliveries(m: &Metrics, outcome: &str) -> f64 {
    m.value("inbox_deliveries_total", &[("outcome", outcome)])
}

#[tokio::test]
async fn each_service_counts_what_the_flow_did() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start(&amqp, &amqp).await;
    let mut orders = Vec::new();
    for _ in 0..N {
        orders.push(sys.buy("alice", 100).await);
    }
    for id in &orders {
        assert_eq!(sys.settled(*id, SETTLE).await["status"], "PAID");
    }
    let n = N as f64;

    // A confirm can reach the relay after the reply has come back: wait for it.
    let order = scrape_until(&sys.order, "order counted its confirms", |m| {
        publishes(m, "confirmed") == n
    })
    .await;
    let buys = [("method", "POST"), ("route", "/buy"), ("status", "201")];
    assert_eq!(order.value("http_requests_total", &buys), n);
    assert_eq!(
        order.value(
            "http_request_duration_seconds_count",
            &[("method", "POST"), ("route", "/buy")]
        ),
        n
    );
    assert_eq!(deliveries(&order, "processed"), n);
    assert_eq!(order.value("outbox_relay_batch_rows_sum", &[]), n);
    for outcome in ["nacked", "returned", "timed_out", "channel_error"] {
        assert_eq!(publishes(&order, outcome), 0.0, "{outcome}");
    }
    // The order row is sent once its confirm is counted: the gauges follow the table.
    let order = scrape_until(&sys.order, "order's outbox rows all sent", |m| {
        m.value("outbox_messages", &[("status", "sent")]) == n
    })
    .await;
    assert_eq!(
        order.value("outbox_messages", &[("status", "pending")]),
        0.0
    );
    assert_eq!(order.value("outbox_oldest_pending_age_seconds", &[]), 0.0);

    let pay = scrape_until(&sys.pay, "pay counted its confirms", |m| {
        publishes(m, "confirmed") == n
    })
    .await;
    assert_eq!(deliveries(&pay, "processed"), n);
    assert_eq!(deliveries(&pay, "duplicate"), 0.0);
    assert_eq!(pay.value("inbox_handler_duration_seconds_count", &[]), n);
    assert_eq!(pay.find("http_requests_total", &buys), None);

    // The gateway: its own families only, the proxied requests under `unmatched`.
    let gateway = scrape(&format!("{}/metrics", sys.gateway)).await;
    let proxied = [
        ("method", "POST"),
        ("route", "unmatched"),
        ("status", "201"),
    ];
    assert_eq!(gateway.value("http_requests_total", &proxied), n);
    let upstream = |instance: &str, result| {
        gateway.value(
            "gateway_upstream_results_total",
            &[("instance", instance), ("result", result)],
        )
    };
    assert!(upstream(&sys.order, "ok") >= n);
    for result in ["5xx", "connect_failure", "timeout", "ejected", "error"] {
        assert_eq!(upstream(&sys.order, result), 0.0, "{result}");
        assert_eq!(upstream(&sys.pay, result), 0.0, "{result}");
    }
    assert!(!gateway.has_family("outbox_"));
    // The services' `/metrics` are internal: not reachable through the gateway.
    for path in ["/order/metrics", "/pay/metrics"] {
        let (status, _) = sys.get(path).await;
        assert_eq!(status, reqwest::StatusCode::NOT_FOUND, "{path}");
    }

    // A copy of an order's message, published again: pay drops it, and counts one duplicate.
    let (id, key, payload): (Uuid, String, Value) =
        sqlx::query_as("SELECT id, routing_key, payload FROM outbox LIMIT 1")
            .fetch_one(&sys.order_db.pool)
            .await
            .unwrap();
    let queue = TestQueue::bind(&amqp, &["unused"]).await;
    let props = BasicProperties::default()
        .with_message_id(ShortString::from(id.to_string()))
        .with_type(ShortString::from("OrderCreated"))
        .with_content_type(ShortString::from("application/json"));
    queue
        .publish(&amqp, &key, props, &serde_json::to_vec(&payload).unwrap())
        .await;
    let pay = scrape_until(&sys.pay, "pay counted the duplicate", |m| {
        deliveries(m, "duplicate") == 1.0
    })
    .await;
    assert_eq!(deliveries(&pay, "processed"), n);
}
