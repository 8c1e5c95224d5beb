//! Pay's answers, received through the order service's inbox.
//!
//! The inbox has already deduplicated the message and runs this handler in the transaction
//! that marks it processed. Moving the order is guarded by `status = 'PENDING_PAYMENT'`:
//! an order changes state once, whatever arrives later.

use async_trait::async_trait;
use message_table::inbox::{HandlerError, InboxMessage, MessageHandler};
use serde::Deserialize;
use sqlx::PgConnection;
use tracing::Instrument;
use uuid::Uuid;

pub const PAYMENT_COMPLETED: &str = "PaymentCompleted";
pub const PAYMENT_FAILED: &str = "PaymentFailed";

#[derive(Debug, Deserialize)]
struct PaymentResult {
    order_id: Uuid,
    #[serde(default)]
    reason: Option<String>,
}

pub struct PaymentResultHandler;

#[async_trait]
impl MessageHandler for PaymentResultHandler {
    async fn handle(&self, tx: &mut PgConnection, msg: &InboxMessage) -> Result<(), HandlerError> {
        let new_status = match msg.event_type.as_str() {
            PAYMENT_COMPLETED => "PAID",
            PAYMENT_FAILED => "PAYMENT_FAILED",
            other => {
                return Err(HandlerError::Permanent(format!(
                    "unexpected event type {other:?}"
                )));
            }
        };
        let result: PaymentResult = serde_json::from_value(msg.payload.clone()).map_err(|e| {
            HandlerError::Permanent(format!("invalid {} payload: {e}", msg.event_type))
        })?;

        let span = tracing::info_span!("settle", order_id = %result.order_id);
        settle(tx, msg, &result, new_status).instrument(span).await
    }
}

/// Moves the order to `new_status`, once.
async fn settle(
    tx: &mut PgConnection,
    msg: &InboxMessage,
    result: &PaymentResult,
    new_status: &str,
) -> Result<(), HandlerError> {
    let updated = sqlx::query(
        "UPDATE orders SET status = $2, failure_reason = $3, updated_at = now()
             WHERE id = $1 AND status = 'PENDING_PAYMENT'",
    )
    .bind(result.order_id)
    .bind(new_status)
    .bind(&result.reason)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 1 {
        tracing::info!(order_id = %result.order_id, status = new_status, "order settled");
        return Ok(());
    }

    let current: Option<String> = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(result.order_id)
        .fetch_optional(&mut *tx)
        .await?;
    match current {
        None => Err(HandlerError::Permanent(format!(
            "order {} does not exist",
            result.order_id
        ))),
        Some(s) if s == new_status => Ok(()), // already applied
        Some(s) => Err(HandlerError::Permanent(format!(
            "order {} is already {s}; refusing {}",
            result.order_id, msg.event_type
        ))),
    }
}
