//! A broker that refuses pay's messages, and accepts them again: the scenario of a committed
//! order whose publish RabbitMQ nacks, on the services' quorum queues.
//!
//! RabbitMQ nacks a message when any queue it is routed to refuses it, yet still delivers it
//! to the queues that took it. So the refusal comes from a queue of its own (`<queue>.refuser`,
//! [`message_table::amqp::refusing_queue_arguments`]) that takes the place of pay's queue's
//! binding: every publish is nacked and reaches no one, as it would if pay's queue itself
//! refused (a quorum queue does not refuse an empty queue's first message).

use lapin::{
    options::QueueDeleteOptions,
    types::{FieldTable, ShortString},
};
use message_table::amqp::{self, AmqpConfig};

use crate::AnyResult;

/// The refusing queue standing in for `queue`.
pub fn refuser_of(queue: &str) -> String {
    format!("{queue}.refuser")
}

/// Binds the refusing queue with `routing_key`, then unbinds `queue`: from then on every
/// publish with that key is nacked.
pub async fn refuse(amqp: &AmqpConfig, queue: &str, routing_key: &str) -> AnyResult<()> {
    let conn = amqp::connect(amqp, "chaos-refuse")
        .await
        .map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await?;
    let args = amqp::refusing_queue_arguments(amqp);
    amqp::declare_queue_with(&channel, amqp, &refuser_of(queue), &[routing_key], args).await?;
    channel
        .queue_unbind(
            ShortString::from(queue),
            ShortString::from(amqp.exchange.as_str()),
            ShortString::from(routing_key),
            FieldTable::default(),
        )
        .await?;
    let _ = conn.close(200, ShortString::from("bye")).await;
    Ok(())
}

/// Declares and binds `queue` as its service does (idempotent), then deletes the refusing
/// queue: publishes are routed to `queue` again, and confirmed.
pub async fn accept(amqp: &AmqpConfig, queue: &str, routing_key: &str) -> AnyResult<()> {
    let conn = amqp::connect(amqp, "chaos-accept")
        .await
        .map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await?;
    amqp::declare_queue(&channel, amqp, queue, &[routing_key]).await?;
    channel
        .queue_delete(
            ShortString::from(refuser_of(queue).as_str()),
            QueueDeleteOptions::default(),
        )
        .await?;
    let _ = conn.close(200, ShortString::from("bye")).await;
    Ok(())
}
