//! Quorum queues and their dead-letter path on the real broker: a message handed back more
//! often than the delivery limit ends `dead` in the inbox with the broker's reason and can
//! be requeued; dead-lettering is at least once, not the silent at-most-once fallback.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeleteOptions},
    types::{FieldTable, ShortString},
};
use message_table::{
    amqp::{self, AmqpConfig},
    inbox::{self, InboxStatus, consumer::InboxConsumer, retry_sweeper::RetrySweeper},
};
use test_kit::{TestDb, TestQueue};
use uuid::Uuid;

use crate::support::{self, props};

/// A consumer that crashes on every message: takes it and hands it back, each time, and
/// counts the deliveries.
async fn crashing_consumer(amqp: &AmqpConfig, queue: &str, deliveries: Arc<AtomicUsize>) {
    let conn = amqp::connect(amqp, "test/crashing").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut stream = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from("crashing"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(delivery)) = stream.next().await {
            deliveries.fetch_add(1, Ordering::SeqCst);
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            let _ = delivery.acker.nack(requeue).await;
        }
    });
}

#[tokio::test]
async fn a_message_over_the_delivery_limit_ends_dead_with_the_brokers_reason_and_is_requeued() {
    let amqp = AmqpConfig {
        delivery_limit: 1,
        ..test_kit::test_amqp()
    };
    let db = TestDb::with_message_tables().await;
    let (inbox, handled) = support::counting_inbox(&db.pool);
    let queue = test_kit::unique_name("test.q");
    let consumer = InboxConsumer::new(
        inbox.clone(),
        amqp.clone(),
        queue.clone(),
        &["k"],
        test_kit::unique_name("test/consumer"),
    );
    // Only the dead-letter consumer runs: the service's queue is taken by one that crashes.
    let dead_letters = consumer.dead_letters(test_kit::unique_name("test/dead-letters"));
    let (_, stop, task) = support::run_connected(dead_letters).await;
    let deliveries = Arc::new(AtomicUsize::new(0));
    crashing_consumer(&amqp, &queue, deliveries.clone()).await;

    let publisher = TestQueue::bind(&amqp, &["unused"]).await;
    let id = Uuid::now_v7();
    let properties = props().with_message_id(ShortString::from(id.to_string()));
    publisher
        .publish(&amqp, "k", properties, br#"{"order": 1}"#)
        .await;

    let reason: String = test_kit::eventually(
        "the message recorded dead",
        Duration::from_secs(30),
        || async {
            sqlx::query_scalar(
                "SELECT last_error FROM inbox WHERE message_id = $1 AND status = 'dead'",
            )
            .bind(id)
            .fetch_optional(&db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert!(
        reason.contains("delivery_limit") && reason.contains(&queue),
        "{reason}"
    );
    // Delivered the first time and once more (the limit), then dead-lettered.
    assert_eq!(deliveries.load(Ordering::SeqCst), 2);
    assert_eq!(handled.load(Ordering::SeqCst), 0);

    // The operator's requeue: the retry sweeper runs it like any requeued dead row.
    assert!(inbox::requeue_dead(&db.pool, id).await.unwrap());
    RetrySweeper::new(&inbox).run_once().await.unwrap();
    assert_eq!(
        inbox::status_of(&db.pool, id).await.unwrap(),
        Some(InboxStatus::Processed)
    );
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    stop.cancel();
    task.await.unwrap();
}

/// RabbitMQ honours `x-dead-letter-strategy: at-least-once` only with `x-overflow:
/// reject-publish`; otherwise it accepts the declaration and silently dead-letters at most
/// once, dropping what it cannot route. The difference shows when the dead-letter exchange
/// routes nowhere: the service's queue keeps the rejected message, and the broker's
/// at-least-once worker says it cannot forward it yet; a control queue declared the same way
/// but without `x-overflow` drops it, and the broker logs its fallback.
#[tokio::test]
async fn dead_lettering_is_at_least_once_a_dead_letter_with_nowhere_to_go_is_kept() {
    let amqp = test_kit::test_amqp();
    let publisher = TestQueue::bind(&amqp, &["unused"]).await;
    let queue = test_kit::unique_name("test.q");
    publisher.declare(&amqp, &queue, &["k"]).await;
    let conn = amqp::connect(&amqp, "test/at-least-once").await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    // The control: the service's arguments without `x-overflow`.
    let control = test_kit::unique_name("test.q");
    let mut args = FieldTable::default();
    for (k, v) in amqp::queue_arguments(&amqp, &control).inner() {
        if k.as_str() != "x-overflow" {
            args.insert(k.clone(), v.clone());
        }
    }
    amqp::declare_queue_with(&channel, &amqp, &control, &["c"], args)
        .await
        .unwrap();
    // The dead-letter exchange now routes nowhere, for either queue.
    channel
        .queue_delete(
            ShortString::from(amqp::dead_letter_queue(&queue).as_str()),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    for (q, key) in [(&queue, "k"), (&control, "c")] {
        publisher.publish(&amqp, key, props(), b"{}").await;
        let delivery = test_kit::eventually(
            "the message in the queue",
            Duration::from_secs(10),
            || async {
                channel
                    .basic_get(ShortString::from(q.as_str()), Default::default())
                    .await
                    .unwrap()
            },
        )
        .await;
        // requeue: false, so the broker dead-letters it.
        delivery
            .acker
            .nack(BasicNackOptions::default())
            .await
            .unwrap();
    }
    let kept =
        format!("Cannot forward any dead-letter messages from source quorum queue '{queue}'");
    let fell_back = "Falling back to dead-letter-strategy at-most-once";
    test_kit::eventually(
        "the broker's word on both queues",
        Duration::from_secs(30),
        || async {
            let log = broker_log().await;
            let control_fell_back = log
                .lines()
                .any(|l| l.contains(fell_back) && l.contains(control.as_str()));
            let ours_fell_back = log
                .lines()
                .any(|l| l.contains(fell_back) && l.contains(queue.as_str()));
            assert!(
                !ours_fell_back,
                "the service's queue fell back to at-most-once"
            );
            (log.contains(&kept) && control_fell_back).then_some(())
        },
    )
    .await;
    // Held by the service's queue (not ready, still its message); gone from the control.
    test_kit::eventually("the queues' counts", Duration::from_secs(30), || async {
        (queue_counts(&queue).await == (0, 1) && queue_counts(&control).await == (0, 0))
            .then_some(())
    })
    .await;
}

/// The end of the broker's log (it runs on this machine).
async fn broker_log() -> String {
    let out = tokio::process::Command::new("rabbitmq-diagnostics")
        .args(["log_tail", "-N", "5000"])
        .output()
        .await
        .expect("run rabbitmq-diagnostics (RabbitMQ must run on this machine)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (ready, messages) of `queue` as `rabbitmqctl list_queues` reports them.
async fn queue_counts(queue: &str) -> (u64, u64) {
    let text = test_kit::rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages",
    ])
    .await;
    text.lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            if cols.next()?.trim() != queue {
                return None;
            }
            Some((
                cols.next()?.trim().parse().ok()?,
                cols.next()?.trim().parse().ok()?,
            ))
        })
        .next()
        .unwrap_or_else(|| panic!("rabbitmqctl lists no queue {queue}: {text}"))
}
