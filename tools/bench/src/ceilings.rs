//! The machine's ceilings, measured in the same run as the system so that each system figure
//! can be put against what PostgreSQL and RabbitMQ can do here at all:
//!
//! - the order transaction alone (order row + outbox row, one commit per order, then the
//!   NOTIFY) at the producers' concurrency: what no scenario can exceed while writing
//!   orders; and beside it the same with the NOTIFY inside the transaction, what that costs;
//! - persistent publishes with confirms, a window in flight: what a relay can reach;
//! - consume with manual acks: what an inbox can reach before doing any work.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream::FuturesUnordered};
use lapin::{
    BasicProperties, Channel,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use test_kit::TestDb;

use crate::generator::{self, Generated, Writer};

/// The order transaction by `producers` at once for `duration`, on a fresh order database;
/// with `notify_inside`, the NOTIFY inside the transaction instead of after its commit.
pub async fn order_transaction(
    producers: usize,
    duration: Duration,
    notify_inside: bool,
) -> Generated {
    let db = TestDb::new(&order::MIGRATOR).await;
    let writer = if notify_inside {
        Writer::direct_notify_inside(&db.url, producers).await
    } else {
        Writer::direct(&db.url, producers).await
    };
    generator::flat_out(&writer, producers, duration).await
}

/// Both broker ceilings on one fresh durable queue: `messages` persistent publishes with up
/// to `window` confirms outstanding, then the same messages consumed with `prefetch` and
/// acked one by one. Returns (publish msg/s, consume + ack msg/s).
pub async fn broker(messages: usize, window: usize, prefetch: u16) -> (f64, f64) {
    let amqp = test_kit::test_amqp();
    let conn = message_table::amqp::connect(&amqp, "bench-ceiling")
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("channel");
    let queue = test_kit::unique_name("bench.ceiling");
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
    channel
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare the ceiling queue");
    let publish = publish_with_confirms(&channel, &queue, messages, window).await;
    let consume = consume_and_ack(&conn, &queue, messages, prefetch).await;
    let _ = channel
        .queue_delete(
            ShortString::from(queue.as_str()),
            QueueDeleteOptions::default(),
        )
        .await;
    (publish, consume)
}

async fn publish_with_confirms(
    channel: &Channel,
    queue: &str,
    messages: usize,
    window: usize,
) -> f64 {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    // The size of an OrderCreated message.
    let body = vec![b'x'; 200];
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..messages {
        if in_flight.len() >= window {
            in_flight.next().await;
        }
        let confirm = channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        in_flight.push(async move { confirm.await.expect("confirm") });
    }
    while in_flight.next().await.is_some() {}
    messages as f64 / started.elapsed().as_secs_f64()
}

async fn consume_and_ack(
    conn: &lapin::Connection,
    queue: &str,
    messages: usize,
    prefetch: u16,
) -> f64 {
    let channel = conn.create_channel().await.expect("channel");
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut deliveries = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from("bench-ceiling"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let started = Instant::now();
    for _ in 0..messages {
        let delivery = deliveries
            .next()
            .await
            .expect("a delivery")
            .expect("a good delivery");
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    messages as f64 / started.elapsed().as_secs_f64()
}
