//! Moving an order: [`apply`] is the one place `orders.status` changes after `POST /buy`,
//! for pay's answers, the client's cancel and the reconciler alike.
//!
//! What an event may do is [`OrderEvent::at`] (`crate::status`); this module makes it so in
//! the database. Every move is an `UPDATE … WHERE id = $1 AND status = ANY($from)` with the
//! states the machine allows the event to leave, and the rows it touched are checked: the
//! guard is in SQL, not only in Rust, so two transactions racing on one order (a cancel and
//! the payment's answer, say) cannot both move it. The one that comes second finds the
//! state the first left, and the machine decides again from there.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::status::{OrderEvent, OrderStatus, Step};

/// What [`apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The order moved to this state now.
    Moved(OrderStatus),
    /// The order stays as it is, and that is right (see [`Step::Keep`]).
    Kept {
        status: OrderStatus,
        why: &'static str,
    },
}

/// Why [`apply`] refused.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error("order {0} does not exist")]
    NoOrder(Uuid),
    /// The event contradicts the order's state ([`Step::Refuse`]).
    #[error("order {order_id} is already {current}; refusing {event}")]
    Refused {
        order_id: Uuid,
        current: OrderStatus,
        event: OrderEvent,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Applies `event` to order `order_id` in the caller's transaction. `reason` is kept as the
/// order's `failure_reason` (pay's `PaymentFailed` has one).
///
/// The common case is one statement: the guarded `UPDATE`. When it moves nothing, the order
/// is read under a row lock and the machine says why: kept, refused, or (a move committed
/// by another transaction between the two statements) movable now, and then moved under
/// that lock.
pub async fn apply(
    tx: &mut PgConnection,
    order_id: Uuid,
    event: OrderEvent,
    reason: Option<&str>,
) -> Result<Applied, TransitionError> {
    if let Some(to) = guarded_update(tx, order_id, event, reason).await? {
        return Ok(Applied::Moved(to));
    }
    let current: Option<OrderStatus> =
        sqlx::query_scalar("SELECT status FROM orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(current) = current else {
        return Err(TransitionError::NoOrder(order_id));
    };
    match event.at(current) {
        Step::Keep(why) => Ok(Applied::Kept {
            status: current,
            why,
        }),
        Step::Refuse => Err(TransitionError::Refused {
            order_id,
            current,
            event,
        }),
        // The row is locked and in a state the guard allows: the update cannot miss.
        Step::Move(_) => guarded_update(tx, order_id, event, reason)
            .await?
            .map(Applied::Moved)
            .ok_or(TransitionError::Database(sqlx::Error::RowNotFound)),
    }
}

/// The move itself: the new state is looked up from the current one in the same statement
/// (`to[array_position(from, status)]`), so a row that another transaction changed while
/// this one waited for its lock is re-checked and moved from what it is now.
async fn guarded_update(
    tx: &mut PgConnection,
    order_id: Uuid,
    event: OrderEvent,
    reason: Option<&str>,
) -> sqlx::Result<Option<OrderStatus>> {
    let (from, to): (Vec<OrderStatus>, Vec<OrderStatus>) = event.moves().into_iter().unzip();
    if from.is_empty() {
        return Ok(None);
    }
    sqlx::query_scalar(
        "UPDATE orders
         SET status = ($3::text[])[array_position($2::text[], status)],
             failure_reason = coalesce($4, failure_reason), updated_at = now()
         WHERE id = $1 AND status = ANY($2::text[])
         RETURNING status",
    )
    .bind(order_id)
    .bind(&from)
    .bind(&to)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await
}
