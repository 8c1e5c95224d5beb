//! Pay's answers, received through the order service's inbox, and [`settle`], the one
//! place an order leaves `PENDING_PAYMENT`.
//!
//! The inbox has already deduplicated the message and runs this handler in the transaction
//! that marks it processed. The reconciler ([`crate::reconciler`]) settles an order whose
//! answer never arrived through the same [`settle`], from what pay says over HTTP. Moving
//! the order is guarded by `status = 'PENDING_PAYMENT'`: an order changes state once,
//! whatever arrives later.

use async_trait::async_trait;
use message_table::inbox::{HandlerError, InboxMessage, MessageHandler};
use serde::Deserialize;
use sqlx::PgConnection;
use tracing::Instrument;
use uuid::Uuid;

pub const PAYMENT_COMPLETED: &str = "PaymentCompleted";
pub const PAYMENT_FAILED: &str = "PaymentFailed";

/// The order states (the `orders.status` column).
pub const PENDING_PAYMENT: &str = "PENDING_PAYMENT";
pub const PAID: &str = "PAID";
pub const PAYMENT_FAILED_STATUS: &str = "PAYMENT_FAILED";

/// What pay decided about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Completed,
    Failed { reason: Option<String> },
}

impl PaymentOutcome {
    /// The order status it leads to.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Completed => PAID,
            Self::Failed { .. } => PAYMENT_FAILED_STATUS,
        }
    }
}

/// What [`settle`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The order left `PENDING_PAYMENT` now.
    Now,
    /// It already had this outcome (a duplicate answer): nothing to do.
    Already,
}

/// Why [`settle`] refused.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("order {0} does not exist")]
    NoOrder(Uuid),
    /// The order is already settled the other way: a contradicting late answer.
    #[error("order {order_id} is already {current}; refusing {wanted}")]
    Contradiction {
        order_id: Uuid,
        current: String,
        wanted: &'static str,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Moves order `order_id` from `PENDING_PAYMENT` to what `outcome` says, in the caller's
/// transaction.
pub async fn settle(
    tx: &mut PgConnection,
    order_id: Uuid,
    outcome: &PaymentOutcome,
) -> Result<Settled, SettleError> {
    let new_status = outcome.status();
    let reason = match outcome {
        PaymentOutcome::Completed => None,
        PaymentOutcome::Failed { reason } => reason.as_deref(),
    };
    let updated = sqlx::query(
        "UPDATE orders SET status = $2, failure_reason = $3, updated_at = now()
         WHERE id = $1 AND status = $4",
    )
    .bind(order_id)
    .bind(new_status)
    .bind(reason)
    .bind(PENDING_PAYMENT)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 1 {
        tracing::info!(%order_id, status = new_status, "order settled");
        return Ok(Settled::Now);
    }

    let current: Option<String> = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_optional(&mut *tx)
        .await?;
    match current {
        None => Err(SettleError::NoOrder(order_id)),
        Some(s) if s == new_status => Ok(Settled::Already),
        Some(current) => Err(SettleError::Contradiction {
            order_id,
            current,
            wanted: new_status,
        }),
    }
}

#[derive(Debug, Deserialize)]
struct PaymentResult {
    order_id: Uuid,
    #[serde(default)]
    reason: Option<String>,
}

pub struct PaymentResultHandler;

/// The order an answer is about and what pay decided; `Permanent` when it is not an answer
/// this handler can settle.
fn read_answer(msg: &InboxMessage) -> Result<(Uuid, PaymentOutcome), HandlerError> {
    let result: Result<PaymentResult, _> = serde_json::from_value(msg.payload.clone());
    match (msg.event_type.as_str(), result) {
        (PAYMENT_COMPLETED, Ok(r)) => Ok((r.order_id, PaymentOutcome::Completed)),
        (PAYMENT_FAILED, Ok(r)) => Ok((r.order_id, PaymentOutcome::Failed { reason: r.reason })),
        (PAYMENT_COMPLETED | PAYMENT_FAILED, Err(e)) => Err(HandlerError::Permanent(format!(
            "invalid {} payload: {e}",
            msg.event_type
        ))),
        (other, _) => Err(HandlerError::Permanent(format!(
            "unexpected event type {other:?}"
        ))),
    }
}

#[async_trait]
impl MessageHandler for PaymentResultHandler {
    async fn handle(&self, tx: &mut PgConnection, msg: &InboxMessage) -> Result<(), HandlerError> {
        let (order_id, outcome) = read_answer(msg)?;
        let span = tracing::info_span!("settle", %order_id);
        match settle(tx, order_id, &outcome).instrument(span).await {
            Ok(_) => Ok(()),
            Err(SettleError::Database(e)) => Err(e.into()),
            // A contradicting late answer or an unknown order: recorded dead.
            Err(e) => Err(HandlerError::Permanent(e.to_string())),
        }
    }
}
