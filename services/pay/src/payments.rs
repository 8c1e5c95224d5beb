//! The payment handler: what pay does with an `OrderCreated` message.
//!
//! It runs inside the inbox's transaction (see `message_table::inbox`), so the inbox row, the
//! debit, the payment row and the reply message commit together or not at all. A
//! duplicate `OrderCreated` never reaches this code; and even a second message about the
//! same order (another message id) cannot pay twice: `payments.order_id` is unique.
//!
//! Business failures are outcomes, not errors: an unknown user or insufficient funds is
//! recorded as a FAILED payment and answered with `PaymentFailed`. It is not retried.

use std::time::Duration;

use async_trait::async_trait;
use message_table::{
    inbox::{HandlerError, InboxMessage, MessageHandler},
    outbox::{self, NewMessage},
};
use serde::Deserialize;
use serde_json::json;
use sqlx::PgConnection;
use tracing::Instrument;
use uuid::Uuid;

pub const ORDER_CREATED: &str = "OrderCreated";
pub const PAYMENT_COMPLETED: (&str, &str) = ("PaymentCompleted", "payment.completed");
pub const PAYMENT_FAILED: (&str, &str) = ("PaymentFailed", "payment.failed");

#[derive(Debug, Deserialize)]
struct OrderCreated {
    order_id: Uuid,
    user_id: String,
    amount_cents: i64,
}

pub struct PaymentHandler {
    /// Time to live of the reply messages.
    message_ttl: Duration,
}

impl PaymentHandler {
    pub fn new(message_ttl: Duration) -> Self {
        Self { message_ttl }
    }
}

#[async_trait]
impl MessageHandler for PaymentHandler {
    async fn handle(&self, tx: &mut PgConnection, msg: &InboxMessage) -> Result<(), HandlerError> {
        if msg.event_type != ORDER_CREATED {
            return Err(HandlerError::Permanent(format!(
                "unexpected event type {:?}",
                msg.event_type
            )));
        }
        let order: OrderCreated = serde_json::from_value(msg.payload.clone())
            .map_err(|e| HandlerError::Permanent(format!("invalid OrderCreated payload: {e}")))?;
        if order.amount_cents <= 0 {
            return Err(HandlerError::Permanent(format!(
                "invalid amount {}",
                order.amount_cents
            )));
        }

        let span = tracing::info_span!("payment", order_id = %order.order_id);
        self.pay(tx, msg, &order).instrument(span).await
    }

    /// The account the payment debits: a batch debits its accounts in one order.
    fn lock_key(&self, msg: &InboxMessage) -> Option<String> {
        msg.payload["user_id"].as_str().map(str::to_string)
    }
}

impl PaymentHandler {
    /// Pays `order` and enqueues the reply, in the trace of the message that asked.
    async fn pay(
        &self,
        tx: &mut PgConnection,
        msg: &InboxMessage,
        order: &OrderCreated,
    ) -> Result<(), HandlerError> {
        // The payment row first: its unique order_id is the guard against paying twice.
        let payment_id = Uuid::now_v7();
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO payments (id, order_id, user_id, amount_cents, status, message_id)
             VALUES ($1, $2, $3, $4, 'COMPLETED', $5)
             ON CONFLICT (order_id) DO NOTHING
             RETURNING id",
        )
        .bind(payment_id)
        .bind(order.order_id)
        .bind(&order.user_id)
        .bind(order.amount_cents)
        .bind(msg.message_id)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            tracing::warn!(order_id = %order.order_id, message_id = %msg.message_id, "order already has a payment; message ignored");
            return Ok(());
        }

        let debited = sqlx::query(
            "UPDATE accounts SET balance_cents = balance_cents - $2, updated_at = now()
             WHERE user_id = $1 AND balance_cents >= $2",
        )
        .bind(&order.user_id)
        .bind(order.amount_cents)
        .execute(&mut *tx)
        .await?
        .rows_affected();

        let reply = if debited == 1 {
            tracing::info!(order_id = %order.order_id, %payment_id, amount_cents = order.amount_cents, "payment completed");
            reply(PAYMENT_COMPLETED, order, payment_id, None)
        } else {
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM accounts WHERE user_id = $1)")
                    .bind(&order.user_id)
                    .fetch_one(&mut *tx)
                    .await?;
            let reason = if known {
                "insufficient_funds"
            } else {
                "unknown_user"
            };
            sqlx::query("UPDATE payments SET status = 'FAILED', failure_reason = $2 WHERE id = $1")
                .bind(payment_id)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            tracing::info!(order_id = %order.order_id, %payment_id, reason, "payment failed");
            reply(PAYMENT_FAILED, order, payment_id, Some(reason))
        };
        let trace = common::trace::outgoing(common::trace::from_message(&msg.headers).as_ref());
        let reply = reply.with_header(common::trace::TRACEPARENT, trace.to_string());
        outbox::enqueue(tx, &reply, self.message_ttl).await?;
        Ok(())
    }
}

fn reply(
    (event_type, routing_key): (&str, &str),
    order: &OrderCreated,
    payment_id: Uuid,
    reason: Option<&str>,
) -> NewMessage {
    NewMessage::new(
        order.order_id,
        event_type,
        routing_key,
        json!({
            "order_id": order.order_id,
            "payment_id": payment_id,
            "amount_cents": order.amount_cents,
            "reason": reason,
        }),
    )
}
