//! Order per aggregate: the relay never publishes an aggregate's message before the one
//! before it is confirmed, and the inbox applies an aggregate's messages in their order,
//! parking what arrives early. Other aggregates are never held up.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use message_table::{
    inbox::{self, retry_sweeper::RetrySweeper},
    inbox::{Inbox, InboxStatus, Incoming, Outcome, consumer::InboxConsumer},
    outbox::{self, NewMessage, OutboxStatus, relay::Relay},
};
use serde_json::json;
use sqlx::PgPool;
use test_kit::{TestDb, TestQueue};
use uuid::Uuid;

use crate::support::{self, RecordingHandler, id_of, incoming};

const KEY: &str = "test.ordered";
/// Bound to no queue at first: a message sent there is returned until it is.
const LATE_KEY: &str = "test.ordered-late";

/// Writes messages, each `(aggregate, seq, routing key)`, in one transaction.
async fn enqueue(pool: &PgPool, messages: &[(&str, i64, &str)]) -> Vec<Uuid> {
    let mut tx = pool.begin().await.unwrap();
    let msgs: Vec<NewMessage> = messages
        .iter()
        .map(|(aggregate, seq, key)| {
            NewMessage::new(aggregate, "TestEvent", key, json!({ "seq": seq })).in_sequence(*seq)
        })
        .collect();
    outbox::enqueue_all(&mut tx, &msgs, Duration::from_secs(60))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    msgs.iter().map(|m| m.id).collect()
}

async fn status(pool: &PgPool, id: Uuid) -> OutboxStatus {
    outbox::status_of(pool, id).await.unwrap().unwrap()
}

fn ids_and_seqs(deliveries: &[lapin::message::Delivery]) -> Vec<(Uuid, i64)> {
    deliveries
        .iter()
        .map(|d| {
            let id = d.properties.message_id().as_ref().unwrap().as_str();
            let headers = d.properties.headers().as_ref().unwrap();
            let seq = match headers.inner().get("x-aggregate-seq") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                other => panic!("no x-aggregate-seq header: {other:?}"),
            };
            (id.parse().unwrap(), seq)
        })
        .collect()
}

/// The ordering gauges of a scrape: blocked aggregates, parked inbox messages.
async fn gauges(pool: &PgPool) -> (f64, f64) {
    let mut registry = prometheus_client::registry::Registry::default();
    message_table::metrics::outbox_gauges(pool, &mut registry)
        .await
        .unwrap();
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry).unwrap();
    let m = test_kit::metrics::Metrics::parse(&body);
    (
        m.value("outbox_blocked_aggregates", &[]),
        m.value("inbox_parked_messages", &[]),
    )
}

async fn make_due(pool: &PgPool) {
    sqlx::query("UPDATE outbox SET next_attempt_at = now() WHERE status = 'pending'")
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_aggregates_next_message_waits_until_the_one_before_is_sent_and_others_go_on() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    // a1 cannot be delivered yet (returned); a2 could, but must not overtake it; b1 is free.
    let ids = enqueue(
        &db.pool,
        &[("a", 1, LATE_KEY), ("a", 2, KEY), ("b", 1, KEY)],
    )
    .await;
    let (a1, a2, b1) = (ids[0], ids[1], ids[2]);
    let mut relay = Relay::new(
        db.pool.clone(),
        amqp.clone(),
        test_kit::fast_outbox(),
        "test-relay",
    );

    let first = relay.run_once().await.unwrap();
    assert_eq!((first.claimed, first.sent, first.retried), (2, 1, 1));
    assert_eq!(ids_and_seqs(&queue.take_all().await), vec![(b1, 1)]);
    assert_eq!(status(&db.pool, a2).await, OutboxStatus::Pending);
    // Due again, a1 still refused: a2 is still not claimed.
    make_due(&db.pool).await;
    assert_eq!(relay.run_once().await.unwrap().claimed, 1);
    assert!(queue.take_all().await.is_empty());

    // a1 becomes deliverable: it goes first, alone; a2 follows in the next round.
    queue.declare(&amqp, &queue.name, &[LATE_KEY]).await;
    make_due(&db.pool).await;
    let round = relay.run_once().await.unwrap();
    assert_eq!((round.claimed, round.sent), (1, 1));
    let round = relay.run_once().await.unwrap();
    assert_eq!((round.claimed, round.sent), (1, 1));
    assert_eq!(
        ids_and_seqs(&queue.take_all().await),
        vec![(a1, 1), (a2, 2)]
    );
}

#[tokio::test]
async fn a_dead_message_blocks_its_own_aggregate_until_it_is_requeued() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let ids = enqueue(
        &db.pool,
        &[("a", 1, LATE_KEY), ("a", 2, KEY), ("b", 1, KEY)],
    )
    .await;
    let (a1, a2, b1) = (ids[0], ids[1], ids[2]);
    let mut cfg = test_kit::fast_outbox();
    cfg.retry.max_attempts = 1;
    let mut relay = Relay::new(db.pool.clone(), amqp.clone(), cfg, "test-relay");

    let round = relay.run_once().await.unwrap();
    assert_eq!((round.claimed, round.sent, round.dead), (2, 1, 1));
    assert_eq!(status(&db.pool, a1).await, OutboxStatus::Dead);
    make_due(&db.pool).await;
    assert_eq!(relay.run_once().await.unwrap().claimed, 0, "a2 waits");
    assert_eq!(status(&db.pool, a2).await, OutboxStatus::Pending);
    assert_eq!(outbox::stats(&db.pool).await.unwrap().blocked_aggregates, 1);
    assert_eq!(gauges(&db.pool).await.0, 1.0);
    assert_eq!(ids_and_seqs(&queue.take_all().await), vec![(b1, 1)]);

    queue.declare(&amqp, &queue.name, &[LATE_KEY]).await;
    assert!(
        outbox::requeue_dead(&db.pool, a1, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(relay.run_once().await.unwrap().sent, 1);
    assert_eq!(relay.run_once().await.unwrap().sent, 1);
    assert_eq!(
        ids_and_seqs(&queue.take_all().await),
        vec![(a1, 1), (a2, 2)]
    );
    assert_eq!(outbox::stats(&db.pool).await.unwrap().blocked_aggregates, 0);
}

/// A delivery numbered `seq` within `aggregate`, with a fresh message id.
fn numbered(aggregate: &str, seq: i64) -> Incoming {
    let mut msg = incoming(json!({ "aggregate": aggregate, "seq": seq }));
    msg.headers = json!({ "aggregate_id": aggregate, "x-aggregate-seq": seq });
    msg
}

/// The `(aggregate, seq)` of each handler run that committed, in the order they ran.
async fn applied(pool: &PgPool) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT payload->>'aggregate', (payload->>'seq')::bigint FROM effects ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn applied_as(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    pairs.iter().map(|(a, s)| (a.to_string(), *s)).collect()
}

#[tokio::test]
async fn a_message_that_arrives_early_is_parked_and_applied_right_after_its_predecessor() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let (one, two) = (numbered("a", 1), numbered("a", 2));

    assert_eq!(inbox.receive(two.clone()).await, Some(Outcome::Parked));
    assert_eq!(
        inbox::status_of(&db.pool, id_of(&two)).await.unwrap(),
        Some(InboxStatus::Parked)
    );
    assert_eq!(inbox::stats(&db.pool).await.unwrap().parked, 1);
    assert_eq!(gauges(&db.pool).await.1, 1.0);
    assert!(applied(&db.pool).await.is_empty());

    assert_eq!(inbox.receive(one.clone()).await, Some(Outcome::Processed));
    assert_eq!(applied(&db.pool).await, applied_as(&[("a", 1), ("a", 2)]));
    assert_eq!(
        inbox::status_of(&db.pool, id_of(&two)).await.unwrap(),
        Some(InboxStatus::Processed)
    );
    assert_eq!(inbox::stats(&db.pool).await.unwrap().parked, 0);

    // A copy of 1, and another message numbered 1: neither is applied again.
    assert_eq!(inbox.receive(one).await, Some(Outcome::Duplicate));
    assert_eq!(
        inbox.receive(numbered("a", 1)).await,
        Some(Outcome::Duplicate)
    );
    assert_eq!(applied(&db.pool).await.len(), 2);
    let counts = inbox.counters().snapshot();
    assert_eq!((counts.processed, counts.parked), (2, 1));
}

#[tokio::test]
async fn interleaved_aggregates_are_each_applied_in_their_own_order() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let outcomes = [
        inbox.receive(numbered("a", 2)).await,
        inbox.receive(numbered("b", 2)).await,
        inbox.receive(numbered("b", 1)).await,
        inbox.receive(numbered("a", 3)).await,
        inbox.receive(numbered("a", 1)).await,
    ];
    use Outcome::{Parked, Processed};
    assert_eq!(
        outcomes.map(Option::unwrap),
        [Parked, Parked, Processed, Parked, Processed]
    );
    assert_eq!(
        applied(&db.pool).await,
        applied_as(&[("b", 1), ("b", 2), ("a", 1), ("a", 2), ("a", 3)])
    );
}

#[tokio::test]
async fn a_batch_applies_each_aggregate_in_order_whatever_the_order_of_delivery() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let batch = vec![
        numbered("a", 2),
        numbered("b", 1),
        numbered("a", 1),
        numbered("b", 3),
        incoming(json!({ "aggregate": "none", "seq": 0 })),
    ];
    let outcomes = inbox.receive_batch(batch).await;
    use Outcome::{Parked, Processed};
    assert_eq!(
        outcomes.into_iter().map(Option::unwrap).collect::<Vec<_>>(),
        [Processed, Processed, Processed, Parked, Processed]
    );
    let applied = applied(&db.pool).await;
    let of = |aggregate: &str| -> Vec<i64> {
        applied
            .iter()
            .filter(|(a, _)| a == aggregate)
            .map(|(_, s)| *s)
            .collect()
    };
    assert_eq!(
        (of("a"), of("b"), of("none")),
        (vec![1, 2], vec![1], vec![0])
    );
}

#[tokio::test]
async fn a_failing_message_keeps_its_successors_parked_until_the_sweeper_succeeds_it() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::failing(1),
        test_kit::fast_inbox(),
    );
    let one = numbered("a", 1);
    assert!(matches!(
        inbox.receive(one.clone()).await,
        Some(Outcome::Failed { .. })
    ));
    assert_eq!(inbox.receive(numbered("a", 2)).await, Some(Outcome::Parked));
    assert!(applied(&db.pool).await.is_empty());

    // Another aggregate is not held up.
    assert_eq!(
        inbox.receive(numbered("b", 1)).await,
        Some(Outcome::Processed)
    );

    let sweeper = RetrySweeper::new(&inbox);
    test_kit::eventually("the retry succeeds", Duration::from_secs(10), || async {
        sweeper.run_once().await.unwrap();
        (inbox::status_of(&db.pool, id_of(&one)).await.unwrap() == Some(InboxStatus::Processed))
            .then_some(())
    })
    .await;
    assert_eq!(
        applied(&db.pool).await,
        applied_as(&[("b", 1), ("a", 1), ("a", 2)])
    );
    assert_eq!(inbox::stats(&db.pool).await.unwrap().parked, 0);
}

#[tokio::test]
async fn the_sweeper_applies_a_parked_message_whose_predecessor_is_applied() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let two = numbered("a", 2);
    assert_eq!(inbox.receive(two.clone()).await, Some(Outcome::Parked));
    // As if message 1 had been applied by a transaction that did not see 2 parked.
    sqlx::query("UPDATE inbox_sequences SET applied_seq = 1 WHERE aggregate_id = 'a'")
        .execute(&db.pool)
        .await
        .unwrap();

    let report = RetrySweeper::new(&inbox).run_once().await.unwrap();
    assert_eq!(report.processed, 1);
    assert_eq!(applied(&db.pool).await, applied_as(&[("a", 2)]));
}

/// Through the broker: copies published by hand, 2 before 1, reach a consumer that applies
/// them in order.
#[tokio::test]
async fn deliveries_published_out_of_order_are_applied_in_order_by_the_consumer() {
    let db = support::test_db().await;
    let amqp = test_kit::test_amqp();
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let queue = test_kit::unique_name("test.q");
    let consumer = InboxConsumer::new(
        inbox.clone(),
        amqp.clone(),
        queue.clone(),
        &[KEY],
        test_kit::unique_name("test-consumer"),
    );
    let (_link, stop, task) = support::run_connected(consumer).await;
    let publisher = TestQueue::bind(&amqp, &["unused"]).await;
    for seq in [2, 1] {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from("aggregate_id"),
            AMQPValue::LongString(LongString::from("a")),
        );
        headers.insert(
            ShortString::from("x-aggregate-seq"),
            AMQPValue::LongLongInt(seq),
        );
        let body = serde_json::to_vec(&json!({ "aggregate": "a", "seq": seq })).unwrap();
        publisher
            .publish(&amqp, KEY, support::props().with_headers(headers), &body)
            .await;
    }
    test_kit::eventually("both applied", Duration::from_secs(10), || async {
        (applied(&db.pool).await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(applied(&db.pool).await, applied_as(&[("a", 1), ("a", 2)]));
    stop.cancel();
    task.await.unwrap();
    publisher.delete_queue(&queue).await;
}

/// Each aggregate's messages delivered at the same moment by concurrent transactions, in
/// reverse: the position row serialises them, so every aggregate ends applied in order,
/// nothing left parked.
#[tokio::test]
async fn concurrent_deliveries_of_one_aggregate_are_applied_in_order() {
    let db = support::test_db().await;
    let inbox = Inbox::new(
        db.pool.clone(),
        RecordingHandler::new(),
        test_kit::fast_inbox(),
    );
    let aggregates: Vec<String> = (0..20).map(|n| format!("agg-{n}")).collect();
    let deliveries = aggregates
        .iter()
        .flat_map(|a| (1..=3).rev().map(move |seq| numbered(a, seq)));
    let outcomes = futures::future::join_all(deliveries.map(|d| inbox.receive(d))).await;
    assert!(outcomes.iter().all(Option::is_some), "{outcomes:?}");

    assert_eq!(inbox::stats(&db.pool).await.unwrap().parked, 0);
    let applied = applied(&db.pool).await;
    for a in &aggregates {
        let seqs: Vec<i64> = applied
            .iter()
            .filter(|(x, _)| x == a)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, [1, 2, 3], "{a}");
    }
}
