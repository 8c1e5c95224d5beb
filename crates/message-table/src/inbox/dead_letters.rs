//! What the broker gave up on: the service's dead-letter queue, recorded in the inbox.
//!
//! A quorum queue hands a message out at most `AMQP_DELIVERY_LIMIT` times more; a message
//! that keeps coming back (the process crashes on it, or its outcome cannot be recorded)
//! is then moved by the broker, at least once, to the service's dead-letter queue
//! (`<queue>.dead`, see [`crate::amqp::declare_queue`]). A second consumer of the inbox
//! ([`super::consumer::InboxConsumer::dead_letters`], connection `<service>/dead-letters`)
//! takes it from there, so the inbox's `dead` rows stay the one place where a person finds
//! stuck work, on the dashboard and in the admin API. Per delivery, in the order they run
//! ([`Inbox::receive_dead_letters`]):
//!
//! 1. **Say why** (`death_reason`): the broker's `x-death` header (reason, queue, count)
//!    and the delivery count, as the row's `last_error`.
//! 2. **Read** it like any delivery (`Inbox::parse`): one that cannot be read is recorded
//!    as poison (`Inbox::record_poison`), with the reason in front.
//! 3. **Record it `dead`** (`Inbox::record_dead`) with its payload, so the operator's
//!    requeue ([`super::requeue_dead`]) hands it to the retry sweeper like any dead row. A
//!    message whose id the inbox already has (processed, failed, dead) keeps its row: its
//!    effect is there, or the sweeper owns it.
//! 4. The consumer acks it; if nothing could be recorded it hands it back, as the main
//!    consumer does.

use serde_json::Value;

use super::{Inbox, Incoming, Outcome};

impl Inbox {
    /// Records dead letters (steps 1 to 3 of the module docs), one outcome per delivery in
    /// their order: `Some` when recorded (ack it), `None` when nothing could be (hand it
    /// back).
    pub async fn receive_dead_letters(&self, batch: Vec<Incoming>) -> Vec<Option<Outcome>> {
        let mut results = Vec::with_capacity(batch.len());
        for incoming in &batch {
            let reason = death_reason(&incoming.headers);
            let recorded = match self.parse(incoming, tracing::Span::current()) {
                Ok(msg) => self.record_dead(&msg, reason).await,
                Err(poison) => {
                    self.record_poison(incoming, format!("{reason}; {poison}"))
                        .await
                }
            };
            let outcome = match recorded {
                Ok(outcome) => Some(outcome),
                Err(e) => {
                    tracing::warn!(message_id = ?incoming.message_id, error = %e, "could not record a dead letter; handing it back to the broker");
                    None
                }
            };
            self.count_delivery(outcome.as_ref());
            results.push(outcome);
        }
        results
    }
}

/// Step 1: why the broker dead-lettered a message, from its headers: the latest `x-death`
/// entry's reason, queue and count, and how often it had been delivered.
pub fn death_reason(headers: &Value) -> String {
    let death = headers.get("x-death").and_then(|d| d.get(0));
    let field = |name: &str| {
        death
            .and_then(|d| d.get(name))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
            .unwrap_or_else(|| "unknown".into())
    };
    let mut reason = format!(
        "dead-lettered by the broker: {} (queue {}, count {})",
        field("reason"),
        field("queue"),
        field("count")
    );
    if let Some(deliveries) = headers.get("x-delivery-count") {
        reason.push_str(&format!(", delivered {deliveries} times before"));
    }
    reason
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::death_reason;

    #[test]
    fn the_reason_names_the_brokers_reason_queue_and_count() {
        let headers = json!({
            "x-death": [{"reason": "delivery_limit", "queue": "pay.order-created", "count": 1}],
            "x-delivery-count": 3,
        });
        assert_eq!(
            death_reason(&headers),
            "dead-lettered by the broker: delivery_limit (queue pay.order-created, count 1), \
             delivered 3 times before"
        );
        assert_eq!(
            death_reason(&json!({})),
            "dead-lettered by the broker: unknown (queue unknown, count unknown)"
        );
    }
}
