//! The Prometheus families move by exactly what the workers did, and encode to text that
//! parses. Each test registers its own set: nothing is shared between tests.

use std::{sync::Arc, time::Duration};

use message_table::{
    inbox::{Inbox, Outcome, retry_sweeper::RetrySweeper},
    metrics::{self, MessageTableMetrics},
    outbox::{self, NewMessage, relay::Relay},
};
use prometheus_client::{encoding::text, registry::Registry};
use serde_json::json;
use support::{RecordingHandler, incoming};
use test_kit::{TestQueue, metrics::Metrics};
use uuid::Uuid;

use crate::support;

fn registered() -> (Registry, Arc<MessageTableMetrics>) {
    let mut registry = Registry::default();
    let m = Arc::new(MessageTableMetrics::register(&mut registry));
    (registry, m)
}

fn read(registry: &Registry) -> Metrics {
    let mut body = String::new();
    text::encode(&mut body, registry).unwrap();
    Metrics::parse(&body)
}

#[tokio::test]
async fn inbox_deliveries_and_retries_are_counted_by_outcome() {
    let db = support::test_db().await;
    let (registry, m) = registered();
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::failing(1),
        test_kit::fast_inbox(),
    )
    .with_metrics(m);

    let first = incoming(json!({ "n": 1 }));
    assert!(matches!(
        inbox.receive(first.clone()).await.unwrap(),
        Outcome::Failed { .. }
    ));
    let second = incoming(json!({ "n": 2 }));
    assert_eq!(
        inbox.receive(second.clone()).await.unwrap(),
        Outcome::Processed
    );
    assert_eq!(inbox.receive(second).await.unwrap(), Outcome::Duplicate);
    let mut poison = incoming(json!({}));
    poison.body = b"not json".to_vec();
    assert!(matches!(
        inbox.receive(poison).await.unwrap(),
        Outcome::Poison { .. }
    ));
    let sweeper = RetrySweeper::new(&inbox);
    test_kit::eventually(
        "the failed message is retried",
        Duration::from_secs(10),
        || async { (sweeper.run_once().await.unwrap().processed == 1).then_some(()) },
    )
    .await;

    let m = read(&registry);
    let delivered = |outcome| m.value("inbox_deliveries_total", &[("outcome", outcome)]);
    assert_eq!(delivered("processed"), 1.0);
    assert_eq!(delivered("duplicate"), 1.0);
    assert_eq!(delivered("failed"), 1.0);
    assert_eq!(delivered("poison"), 1.0);
    assert_eq!(delivered("dead"), 0.0);
    assert_eq!(delivered("unrecorded"), 0.0);
    let retried = |outcome| m.value("inbox_retries_total", &[("outcome", outcome)]);
    assert_eq!((retried("processed"), retried("failed")), (1.0, 0.0));
    assert!(m.value("inbox_retry_sweeps_total", &[]) >= 1.0);
    // The handler ran for the failure, the success and the retry; not for the duplicate
    // or the poison.
    assert_eq!(m.value("inbox_handler_duration_seconds_count", &[]), 3.0);
    // The old counters still count both paths together.
    assert_eq!(inbox.counters().snapshot().processed, 2);
}

#[tokio::test]
async fn relay_rounds_count_publishes_by_outcome_and_the_batch() {
    let db = support::test_db().await;
    let amqp = test_kit::test_amqp();
    let _queue = TestQueue::bind(&amqp, &["m.routed"]).await;
    let (registry, m) = registered();
    let mut relay =
        Relay::new(db.pool.clone(), amqp, test_kit::fast_outbox(), "test-relay").with_metrics(m);

    let mut tx = db.pool.begin().await.unwrap();
    for key in ["m.routed", "m.routed", "m.routed", "m.nowhere"] {
        let msg = NewMessage::new(Uuid::now_v7(), "TestEvent", key, json!({}));
        outbox::enqueue(&mut tx, &msg, Duration::from_secs(60))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.sent), (4, 3));

    let m = read(&registry);
    let published = |outcome| m.value("outbox_publishes_total", &[("outcome", outcome)]);
    assert_eq!(published("confirmed"), 3.0);
    assert_eq!(published("returned"), 1.0);
    assert_eq!(published("nacked"), 0.0);
    assert_eq!(published("timed_out"), 0.0);
    assert_eq!(m.value("outbox_relay_batch_rows_count", &[]), 1.0);
    assert_eq!(m.value("outbox_relay_batch_rows_sum", &[]), 4.0);
    assert_eq!(
        m.value("outbox_relay_round_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(m.value("outbox_confirm_duration_seconds_count", &[]), 1.0);
    let in_bucket = m.value("outbox_relay_batch_rows_bucket", &[("le", "5.0")]);
    assert_eq!(in_bucket, 1.0);

    // The scrape-time gauges read the table: 3 sent, the returned one pending again.
    let mut scrape = Registry::default();
    metrics::outbox_gauges(&db.pool, &mut scrape).await.unwrap();
    let gauges = read(&scrape);
    let rows = |status| gauges.value("outbox_messages", &[("status", status)]);
    assert_eq!(
        (
            rows("sent"),
            rows("pending"),
            rows("in_flight"),
            rows("dead")
        ),
        (3.0, 1.0, 0.0, 0.0)
    );
    assert!(
        gauges
            .find("outbox_oldest_pending_age_seconds", &[])
            .is_some()
    );
}
