//! Messages published by hand: unreadable ones to pay's routing key (the check expects
//! exactly those as `dead` in pay's inbox), and an outbox row ahead of its turn (the
//! out-of-order scenario), with the relay's own properties.

use std::{fmt::Write as _, path::Path};

use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use message_table::{
    amqp::AmqpConfig,
    outbox::relay::{OutboxRow, properties},
};
use uuid::Uuid;

use crate::AnyResult;

/// The routing key of the messages pay consumes (`OrderCreated`).
pub const PAY_ROUTING_KEY: &str = messages::ORDER_CREATED.routing_key;

/// Publishes `count` of them with `routing_key`; their ids go to `out`, one a line.
pub async fn poison(amqp: &AmqpConfig, routing_key: &str, count: u32, out: &Path) -> AnyResult<()> {
    let (conn, channel) = confirming_channel(amqp, "chaos-poison").await?;
    let mut ids = String::new();
    for n in 0..count {
        let id = Uuid::now_v7();
        let props = BasicProperties::default()
            .with_message_id(ShortString::from(id.to_string()))
            .with_type(ShortString::from(messages::ORDER_CREATED.name))
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                ShortString::from(amqp.exchange.as_str()),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                format!("chaos poison {n}: this is not JSON {{").as_bytes(),
                props,
            )
            .await?
            .await?;
        if !confirm.is_ack() || confirm.take_message().is_some() {
            return Err(
                format!("poison message {id} was not routed (is pay's queue bound?)").into(),
            );
        }
        let _ = writeln!(ids, "{id}");
    }
    std::fs::write(out, ids)?;
    let _ = conn.close(200, ShortString::from("bye")).await;
    Ok(())
}

/// Publishes outbox row `id` (read from `database_url`) as the relay would, whatever its
/// status: the row is left as it is, so the relay still sends it in its turn.
pub async fn publish_row(amqp: &AmqpConfig, database_url: &str, id: Uuid) -> AnyResult<String> {
    let pool = sqlx::PgPool::connect(database_url).await?;
    let row: OutboxRow = sqlx::query_as(
        "SELECT id, aggregate_id, aggregate_seq, event_type, routing_key, payload, headers, attempts, created_at
         FROM outbox WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&pool)
    .await?
    .ok_or_else(|| format!("no outbox row {id}"))?;
    pool.close().await;
    let (conn, channel) = confirming_channel(amqp, "chaos-publish").await?;
    let confirm = channel
        .basic_publish(
            ShortString::from(amqp.exchange.as_str()),
            ShortString::from(row.routing_key.as_str()),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &serde_json::to_vec(&row.payload)?,
            properties(&row, "chaos-publish"),
        )
        .await?
        .await?;
    let _ = conn.close(200, ShortString::from("bye")).await;
    if !confirm.is_ack() || confirm.take_message().is_some() {
        return Err(format!("outbox row {id} was not routed").into());
    }
    Ok(format!(
        "{} {id} (aggregate {} #{}) published with routing key {}",
        row.event_type,
        row.aggregate_id,
        row.aggregate_seq.map_or("-".into(), |n| n.to_string()),
        row.routing_key
    ))
}

/// A connection named `name` and a channel on it in confirm mode; the caller closes the
/// connection when done.
async fn confirming_channel(
    amqp: &AmqpConfig,
    name: &str,
) -> AnyResult<(lapin::Connection, lapin::Channel)> {
    let conn = message_table::amqp::connect(amqp, name)
        .await
        .map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}
