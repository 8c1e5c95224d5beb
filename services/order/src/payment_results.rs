//! Pay's answers, received through the order service's inbox, and [`settle`], the one
//! place an order leaves `PENDING_PAYMENT` (with its batch form, `settle_all`, below).
//!
//! The inbox has already deduplicated the message and runs this handler in the transaction
//! that marks it processed. The reconciler ([`crate::reconciler`]) settles an order whose
//! answer never arrived through the same [`settle`], from what pay says over HTTP. Moving
//! the order is guarded by `status = 'PENDING_PAYMENT'`: an order changes state once,
//! whatever arrives later.
//!
//! # Batches
//! Under load the inbox hands over a batch of answers in one transaction
//! ([`MessageHandler::handle`]). Settled one by one, a batch of N costs N `UPDATE`s;
//! `settle_all` settles it in two statements: it locks the orders in id order (the
//! [`MessageHandler::lock_key`], so concurrent batches do not deadlock), then moves them all
//! in one `UPDATE`, under the same guard. That is only the common case, every answer about
//! its own order still `PENDING_PAYMENT`. Anything else (an answer [`settle`] would refuse
//! or find already applied, two answers about one order) is not decided there: the handler
//! says [`HandlerError::OneAtATime`], the inbox rolls the batch back and hands each answer
//! over alone, and [`settle`] decides it as it always does. A single answer goes to
//! [`settle`] directly: the per-message path stays the reference.

use std::collections::HashSet;

use async_trait::async_trait;
use message_table::inbox::{HandlerError, InboxMessage, MessageHandler};
use messages::{PAYMENT_COMPLETED, PAYMENT_FAILED, PaymentResult};
use sqlx::PgConnection;
use tracing::Instrument;
use uuid::Uuid;

use crate::status::OrderStatus;

/// What pay decided about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Completed,
    Failed { reason: Option<String> },
}

impl PaymentOutcome {
    /// The order status it leads to.
    pub fn status(&self) -> OrderStatus {
        match self {
            Self::Completed => OrderStatus::Paid,
            Self::Failed { .. } => OrderStatus::PaymentFailed,
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
        current: OrderStatus,
        wanted: OrderStatus,
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
    .bind(OrderStatus::PendingPayment)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 1 {
        tracing::info!(%order_id, status = %new_status, "order settled");
        return Ok(Settled::Now);
    }

    let current: Option<OrderStatus> =
        sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
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

pub struct PaymentResultHandler;

/// The order an answer is about and what pay decided; `Permanent` when it is not an answer
/// this handler can settle.
fn read_answer(msg: &InboxMessage) -> Result<(Uuid, PaymentOutcome), HandlerError> {
    let event = msg.event_type.as_str();
    let completed = event == PAYMENT_COMPLETED.name;
    if !completed && event != PAYMENT_FAILED.name {
        return Err(HandlerError::Permanent(format!(
            "unexpected event type {event:?}"
        )));
    }
    let answer: PaymentResult = serde_json::from_value(msg.payload.clone())
        .map_err(|e| HandlerError::Permanent(format!("invalid {event} payload: {e}")))?;
    let outcome = if completed {
        PaymentOutcome::Completed
    } else {
        PaymentOutcome::Failed {
            reason: answer.reason,
        }
    };
    Ok((answer.order_id, outcome))
}

#[async_trait]
impl MessageHandler for PaymentResultHandler {
    /// One answer: [`settle`]. Several: `settle_all`, when each is about its own order
    /// and that order is still `PENDING_PAYMENT`; otherwise [`HandlerError::OneAtATime`]
    /// (see the module docs).
    async fn handle(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError> {
        let answers = msgs
            .iter()
            .map(|m| read_answer(m))
            .collect::<Result<Vec<_>, _>>()?;
        if let [(order_id, outcome)] = answers.as_slice() {
            let span = tracing::info_span!("settle", %order_id);
            return match settle(tx, *order_id, outcome).instrument(span).await {
                Ok(_) => Ok(()),
                Err(SettleError::Database(e)) => Err(e.into()),
                // A contradicting late answer or an unknown order: recorded dead.
                Err(e) => Err(HandlerError::Permanent(e.to_string())),
            };
        }
        let orders: HashSet<Uuid> = answers.iter().map(|(id, _)| *id).collect();
        if orders.len() < answers.len() {
            return Err(HandlerError::OneAtATime("two answers about one order"));
        }
        settle_all(tx, msgs, &answers).await
    }

    /// The order the answer settles: a batch locks its orders in id order. The id is
    /// written in its one canonical form, whose string order is PostgreSQL's `uuid` order.
    fn lock_key(&self, msg: &InboxMessage) -> Option<String> {
        let id = msg.payload.get("order_id")?.as_str()?;
        Uuid::parse_str(id).ok().map(|id| id.to_string())
    }
}

/// [`settle`] for answers about distinct orders, all at once: `Ok` only when every order
/// left `PENDING_PAYMENT` now. What [`settle`] does when an order was not moved (already
/// settled, unknown, contradicted) is left to it: [`HandlerError::OneAtATime`], and the
/// inbox hands each answer over alone.
async fn settle_all(
    tx: &mut PgConnection,
    msgs: &[&InboxMessage],
    answers: &[(Uuid, PaymentOutcome)],
) -> Result<(), HandlerError> {
    let ids: Vec<Uuid> = answers.iter().map(|(id, _)| *id).collect();
    // Locked first, in id order (ORDER BY runs before FOR UPDATE locks each row it
    // returns): concurrent batches over the same orders queue instead of deadlocking.
    sqlx::query("SELECT id FROM orders WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    let statuses: Vec<OrderStatus> = answers.iter().map(|(_, o)| o.status()).collect();
    let reasons: Vec<Option<&str>> = answers
        .iter()
        .map(|(_, o)| match o {
            PaymentOutcome::Completed => None,
            PaymentOutcome::Failed { reason } => reason.as_deref(),
        })
        .collect();
    let moved: HashSet<Uuid> = sqlx::query_scalar(
        "UPDATE orders o SET status = a.status, failure_reason = a.reason, updated_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS a(id, status, reason)
         WHERE o.id = a.id AND o.status = $4
         RETURNING o.id",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&reasons)
    .bind(OrderStatus::PendingPayment)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    if moved.len() < ids.len() {
        return Err(HandlerError::OneAtATime("an order was not pending"));
    }
    // The lines settle writes, each in its message's span.
    for (msg, (order_id, outcome)) in msgs.iter().zip(answers) {
        let _in_message = msg.span.enter();
        let _in_settle = tracing::info_span!("settle", %order_id).entered();
        tracing::info!(%order_id, status = %outcome.status(), "order settled");
    }
    Ok(())
}
