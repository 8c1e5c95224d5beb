//! The two messages on the wire and the two relay tables they wait in.
//!
//! The payloads are this system's structs from `messages` (the contract lives there once):
//! each wrapper is `#[serde(transparent)]`, so the JSON is exactly `messages`' JSON, and adds
//! only what RustStream needs to publish it, its destination. The destination is the routing
//! key; `#[outgoing(name = ..)]` takes a literal, so a test checks it against `messages`.
//!
//! A relay table is the Relay guide's event table: an inbox table in the lease form
//! (`locked_until`), written in the business transaction with [`Insert`], claimed by a relay
//! subscription that publishes each row to RabbitMQ and deletes it on the acknowledgement.

use chrono::{DateTime, Utc};
use ruststream::Outgoing;
use ruststream_sqlx::{Inbox, Insert};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

/// `OrderCreated`, order -> pay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Outgoing)]
#[serde(transparent)]
#[outgoing(name = "order.created")]
pub struct OrderCreated(pub messages::OrderCreated);

/// `PaymentCompleted`, pay -> order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Outgoing)]
#[serde(transparent)]
#[outgoing(name = "payment.completed")]
pub struct PaymentCompleted(pub messages::PaymentResult);

/// The relay table of order's database (`order_events`) and the subscription that reads it.
pub const ORDER_EVENTS: &str = "order_events";
/// The relay table of pay's database (`payment_events`).
pub const PAYMENT_EVENTS: &str = "payment_events";

/// One `OrderCreated` waiting in `order_events`.
#[derive(Inbox, sqlx::FromRow)]
#[inbox(table = "order_events")]
pub(crate) struct OrderEvent {
    #[field(id, generated)]
    id: i64,
    #[field(locked_until)]
    locked_until: Option<DateTime<Utc>>,
    #[field(payload)]
    payload: Vec<u8>,
}

/// One `PaymentCompleted` waiting in `payment_events`.
#[derive(Inbox, sqlx::FromRow)]
#[inbox(table = "payment_events")]
pub(crate) struct PaymentEvent {
    #[field(id, generated)]
    id: i64,
    #[field(locked_until)]
    locked_until: Option<DateTime<Utc>>,
    #[field(payload)]
    payload: Vec<u8>,
}

/// Writes `payload` into `table`'s relay table on `conn` (inside the caller's transaction).
pub(crate) async fn enqueue(
    conn: &mut PgConnection,
    table: RelayTable,
    payload: &impl Serialize,
) -> anyhow::Result<()> {
    let payload = serde_json::to_vec(payload)?;
    match table {
        RelayTable::OrderEvents => {
            OrderEvent {
                id: 0,
                locked_until: None,
                payload,
            }
            .insert(conn)
            .await?
        }
        RelayTable::PaymentEvents => {
            PaymentEvent {
                id: 0,
                locked_until: None,
                payload,
            }
            .insert(conn)
            .await?
        }
    }
    Ok(())
}

/// Announces new rows of `table` to its relay, on the connection that wrote them, after the
/// commit: what a publish of `SqlxBroker` does after its own write (`pg_notify(table, group)`
/// on the writing connection). An empty payload wakes every subscription of the table. A lost
/// notification costs latency only: the relay's poll finds the row within a second.
pub(crate) async fn announce(conn: &mut PgConnection, table: RelayTable) {
    let sent = sqlx::query("SELECT pg_notify($1, '')")
        .bind(table.name())
        .execute(conn)
        .await;
    if let Err(error) = sent {
        tracing::warn!(%error, table = table.name(), "the relay's notification failed");
    }
}

/// The two relay tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayTable {
    OrderEvents,
    PaymentEvents,
}

impl RelayTable {
    /// The table's name, which is also its notification channel.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            RelayTable::OrderEvents => ORDER_EVENTS,
            RelayTable::PaymentEvents => PAYMENT_EVENTS,
        }
    }
}

#[cfg(test)]
mod tests {
    use ruststream::OutgoingDestination;

    use super::*;

    #[test]
    fn the_destinations_are_the_contracts_routing_keys() {
        assert_eq!(
            <OrderCreated as OutgoingDestination>::DESTINATION,
            messages::ORDER_CREATED.routing_key
        );
        assert_eq!(
            <PaymentCompleted as OutgoingDestination>::DESTINATION,
            messages::PAYMENT_COMPLETED.routing_key
        );
    }

    #[test]
    fn the_wire_json_is_the_contracts_json() {
        let order = messages::OrderCreated {
            order_id: uuid::Uuid::nil(),
            user_id: "alice".into(),
            item: "bench".into(),
            amount_cents: 12,
        };
        assert_eq!(
            serde_json::to_value(OrderCreated(order.clone())).unwrap(),
            messages::to_json(&order)
        );
    }
}
