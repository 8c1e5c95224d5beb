//! The contract between order and pay: the messages they exchange and the payment states
//! pay reports.
//!
//! Two conversations go through the same outbox and inbox: an order and its payment
//! (`OrderCreated` → `PaymentCompleted` | `PaymentFailed`), and the compensation of a
//! cancelled order (`OrderCancelled` → `PaymentRefunded` | `PaymentCancelled`).
//!
//! # Why one crate
//! Order writes `OrderCreated` and `OrderCancelled` and reads pay's answers; pay reads them
//! and writes the answers; order's reconciler reads pay's lookup. When each side spelt the names, keys
//! and fields itself, a rename on one side was a message the other side refused, found at
//! run time. Here each is written once and both services use it. The test at the bottom
//! serializes every payload and compares it with the JSON examples of `docs/messages.md`
//! (and its Chinese twin), so the document and the code cannot drift apart.
//!
//! Nothing here does I/O: serde and uuid only. The `sqlx` feature makes the payment states
//! column types (pay stores them); `openapi` gives them schemas (pay documents them).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod status;

pub use status::{LookupStatus, PaymentStatus};

/// One kind of message: its name (the AMQP `type` property, the outbox's `event_type`) and
/// the routing key it is published with on the topic exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub name: &'static str,
    pub routing_key: &'static str,
}

/// order → pay: an order was taken and waits for its payment. Payload: [`OrderCreated`].
pub const ORDER_CREATED: Event = Event {
    name: "OrderCreated",
    routing_key: "order.created",
};

/// pay → order: the order's amount was debited. Payload: [`PaymentResult`].
pub const PAYMENT_COMPLETED: Event = Event {
    name: "PaymentCompleted",
    routing_key: "payment.completed",
};

/// pay → order: the payment was refused (a business outcome, not an error). Payload:
/// [`PaymentResult`], with its `reason`.
pub const PAYMENT_FAILED: Event = Event {
    name: "PaymentFailed",
    routing_key: "payment.failed",
};

/// order → pay: the client cancelled the order; pay undoes what it did about it (refunds a
/// charge, or remembers never to make one). Payload: [`OrderCancelled`].
pub const ORDER_CANCELLED: Event = Event {
    name: "OrderCancelled",
    routing_key: "order.cancelled",
};

/// pay → order: the cancelled order's charge was credited back. Payload:
/// [`PaymentRefunded`].
pub const PAYMENT_REFUNDED: Event = Event {
    name: "PaymentRefunded",
    routing_key: "payment.refunded",
};

/// pay → order: the cancelled order was never charged, and never will be (pay refuses its
/// `OrderCreated` from now on). Payload: [`PaymentCancelled`].
pub const PAYMENT_CANCELLED: Event = Event {
    name: "PaymentCancelled",
    routing_key: "payment.cancelled",
};

/// Every event, in the order the docs list them.
pub const EVENTS: [Event; 6] = [
    ORDER_CREATED,
    PAYMENT_COMPLETED,
    PAYMENT_FAILED,
    ORDER_CANCELLED,
    PAYMENT_REFUNDED,
    PAYMENT_CANCELLED,
];

/// A queue a service consumes: its default name (the service's `*_QUEUE` setting) and the
/// routing keys bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    pub default_name: &'static str,
    pub routing_keys: &'static [&'static str],
}

/// Pay's queue: the orders to pay and the orders to undo. One queue, so one consumer and
/// one inbox see both; the handler is correct in whatever order they arrive. (The name is
/// the one it had before cancellations existed: a queue is renamed only by draining it.)
pub const PAY_QUEUE: Queue = Queue {
    default_name: "pay.order-created",
    routing_keys: &[ORDER_CREATED.routing_key, ORDER_CANCELLED.routing_key],
};

/// Order's queue: pay's answers.
pub const ORDER_QUEUE: Queue = Queue {
    default_name: "order.payment-results",
    routing_keys: &[
        PAYMENT_COMPLETED.routing_key,
        PAYMENT_FAILED.routing_key,
        PAYMENT_REFUNDED.routing_key,
        PAYMENT_CANCELLED.routing_key,
    ],
};

/// [`ORDER_CREATED`]'s payload: what pay needs to debit the account, and the item for the
/// record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub order_id: Uuid,
    /// The account to debit.
    pub user_id: String,
    pub item: String,
    /// Positive.
    pub amount_cents: i64,
}

/// The payload of both answers, [`PAYMENT_COMPLETED`] and [`PAYMENT_FAILED`]: one shape, so
/// the event name alone says which it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentResult {
    /// The order the answer is about.
    pub order_id: Uuid,
    /// The payment pay recorded (completed or failed).
    pub payment_id: Uuid,
    pub amount_cents: i64,
    /// Why the payment failed (`insufficient_funds`, `unknown_user`); `null` when it
    /// completed. Order stores it as the order's `failure_reason`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// [`ORDER_CANCELLED`]'s payload: the order being undone, and its account (pay locks the
/// account before it looks at the order, as a payment does: see pay's `payments` module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    /// The account the order is paid from (and refunded to).
    pub user_id: String,
    /// The order's amount, positive. A refund credits what the payment debited, not this.
    pub amount_cents: i64,
}

/// [`PAYMENT_REFUNDED`]'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub order_id: Uuid,
    /// The payment that was refunded.
    pub payment_id: Uuid,
    /// What was credited back: the payment's amount.
    pub amount_cents: i64,
}

/// [`PAYMENT_CANCELLED`]'s payload: nothing was charged for the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentCancelled {
    pub order_id: Uuid,
}

/// `payload` as the outbox stores and the relay publishes it.
pub fn to_json(payload: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(payload)
        .expect("a payload is a struct of strings, numbers and ids: it always serializes")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::Value;

    use super::*;

    const ORDER: &str = "0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b";
    const PAYMENT: &str = "0193a1b2-c4e5-7f60-9b7c-8d9e0f1a2b3c";

    /// Each event's payload as the code writes it, by the heading it has in the docs.
    fn examples() -> Vec<(&'static str, Value)> {
        let order_id = Uuid::parse_str(ORDER).unwrap();
        let payment_id = Uuid::parse_str(PAYMENT).unwrap();
        let answer = |reason: Option<&str>| PaymentResult {
            order_id,
            payment_id,
            amount_cents: 1200,
            reason: reason.map(str::to_string),
        };
        vec![
            (
                ORDER_CREATED.name,
                to_json(&OrderCreated {
                    order_id,
                    user_id: "alice".into(),
                    item: "book".into(),
                    amount_cents: 1200,
                }),
            ),
            (PAYMENT_COMPLETED.name, to_json(&answer(None))),
            (
                PAYMENT_FAILED.name,
                to_json(&answer(Some("insufficient_funds"))),
            ),
            (
                ORDER_CANCELLED.name,
                to_json(&OrderCancelled {
                    order_id,
                    user_id: "alice".into(),
                    amount_cents: 1200,
                }),
            ),
            (
                PAYMENT_REFUNDED.name,
                to_json(&PaymentRefunded {
                    order_id,
                    payment_id,
                    amount_cents: 1200,
                }),
            ),
            (
                PAYMENT_CANCELLED.name,
                to_json(&PaymentCancelled { order_id }),
            ),
        ]
    }

    /// The first fenced `json` block under each `### ` heading of `doc`.
    fn json_blocks(doc: &str) -> HashMap<String, Value> {
        let mut blocks = HashMap::new();
        let mut heading = None;
        let mut lines = doc.lines();
        while let Some(line) = lines.next() {
            if let Some(h) = line.strip_prefix("### ") {
                heading = Some(h.trim().to_string());
            } else if line.trim() == "```json" {
                let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
                if let Some(h) = heading.take() {
                    let json = serde_json::from_str(&body.join("\n"))
                        .unwrap_or_else(|e| panic!("the example under {h:?} is not JSON: {e}"));
                    blocks.insert(h, json);
                }
            }
        }
        blocks
    }

    fn docs() -> Vec<(&'static str, String)> {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs");
        ["messages.md", "zh-CN/messages.md"]
            .into_iter()
            .map(|path| {
                let text = std::fs::read_to_string(format!("{root}/{path}"))
                    .unwrap_or_else(|e| panic!("read docs/{path}: {e}"));
                (path, text)
            })
            .collect()
    }

    #[test]
    fn every_payload_is_the_json_example_of_the_docs() {
        for (path, doc) in docs() {
            let blocks = json_blocks(&doc);
            for (event, written) in examples() {
                let documented = blocks
                    .get(event)
                    .unwrap_or_else(|| panic!("docs/{path} has no `### {event}` JSON example"));
                assert_eq!(&written, documented, "docs/{path}, {event}");
            }
            assert_eq!(
                blocks.len(),
                examples().len(),
                "docs/{path}: an example too many"
            );
        }
    }

    #[test]
    fn every_event_has_its_example_and_a_name_and_key_of_its_own() {
        let examples: Vec<&str> = examples().into_iter().map(|(name, _)| name).collect();
        let names: Vec<&str> = EVENTS.iter().map(|e| e.name).collect();
        assert_eq!(examples, names);
        for (i, a) in EVENTS.iter().enumerate() {
            for b in &EVENTS[i + 1..] {
                assert!(
                    a.name != b.name && a.routing_key != b.routing_key,
                    "{a:?} {b:?}"
                );
            }
        }
    }

    #[test]
    fn the_docs_table_names_every_event_its_key_and_its_queue() {
        let queue_of = |event: Event| {
            [PAY_QUEUE, ORDER_QUEUE]
                .into_iter()
                .find(|q| q.routing_keys.contains(&event.routing_key))
                .expect("every event is bound to a queue")
        };
        for (path, doc) in docs() {
            for event in EVENTS {
                let row = format!(
                    "| `{}` | `{}` | `{}` |",
                    event.name,
                    event.routing_key,
                    queue_of(event).default_name
                );
                assert!(doc.contains(&row), "docs/{path} lacks the row {row}");
            }
        }
    }
}
