//! What an operator (and `/admin/stats`, the reconciler) asks of the outbox table about
//! one message or all. Lists, requeues of many and purges are in [`crate::admin`].

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgExecutor};
use uuid::Uuid;

use super::OutboxStatus;
use crate::{
    admin::{Selection, requeue_outbox},
    status::{IN_FLIGHT, WAITING},
};

/// Puts a `dead` message back in line: attempts reset, due now, a fresh time to live.
/// Returns false when no dead message has that id.
pub async fn requeue_dead(db: impl PgExecutor<'_>, id: Uuid, ttl: Duration) -> sqlx::Result<bool> {
    let requeued = requeue_outbox(
        db,
        &Selection::Ids(vec![id]),
        ttl,
        None,
        "requeued by operator",
    )
    .await?;
    Ok(!requeued.is_empty())
}

/// Puts a `sent` or `dead` message back in line to be published again with the SAME id
/// (the consumer's inbox drops the copy if it already has it): attempts reset, due now,
/// a fresh time to live. A `sent` row only when it was sent more than `sent_before` ago
/// (a recent copy may still be in the queue). Never a `pending` row: it is already in line
/// or in flight. Returns false when nothing was requeued.
pub async fn requeue_for_republish(
    db: impl PgExecutor<'_>,
    id: Uuid,
    ttl: Duration,
    sent_before: Duration,
) -> sqlx::Result<bool> {
    let requeued = requeue_outbox(
        db,
        &Selection::Ids(vec![id]),
        ttl,
        Some(sent_before),
        "requeued for re-publish",
    )
    .await?;
    Ok(!requeued.is_empty())
}

/// Counts by status, for `/readyz`-style reports, metrics and tests.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
    pub pending: i64,
    pub in_flight: i64,
    pub sent: i64,
    pub dead: i64,
    /// Aggregates whose oldest unsent message is `dead`: their later messages wait for an
    /// operator's requeue ([`blocked_aggregates`]).
    pub blocked_aggregates: i64,
}

impl OutboxStats {
    /// Every row, whatever its status.
    pub fn total(&self) -> i64 {
        self.pending + self.in_flight + self.sent + self.dead
    }
}

pub async fn stats(db: impl PgExecutor<'_> + Copy) -> sqlx::Result<OutboxStats> {
    let (pending, in_flight, sent, dead): (i64, i64, i64, i64) =
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE {WAITING}),
                    count(*) FILTER (WHERE {IN_FLIGHT}),
                    count(*) FILTER (WHERE status = $1),
                    count(*) FILTER (WHERE status = $2)
             FROM outbox"
        )))
        .bind(OutboxStatus::Sent)
        .bind(OutboxStatus::Dead)
        .fetch_one(db)
        .await?;
    Ok(OutboxStats {
        pending,
        in_flight,
        sent,
        dead,
        blocked_aggregates: blocked_aggregates(db).await?,
    })
}

/// Aggregates whose oldest unsent sequenced message is `dead`: the relay publishes none of
/// their later messages until it is requeued (see "Order per aggregate" in [`crate::outbox`]).
/// Served by the `outbox_dead` and `outbox_unsent_seq` indexes.
pub async fn blocked_aggregates(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(DISTINCT d.aggregate_id) FROM outbox d
         WHERE d.status = 'dead' AND d.aggregate_seq IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM outbox e
                           WHERE e.aggregate_id = d.aggregate_id
                             AND e.aggregate_seq < d.aggregate_seq AND e.status <> 'sent')",
    )
    .fetch_one(db)
    .await
}

/// Seconds since the oldest row waiting to be published (pending, not in flight) was
/// written, 0 when none: how far the relay is behind.
pub async fn oldest_waiting_age(db: impl PgExecutor<'_>) -> sqlx::Result<f64> {
    // The literal predicate lets PostgreSQL use the partial index (see `crate::status`).
    let age: f64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0)
         FROM outbox WHERE {WAITING}"
    )))
    .fetch_one(db)
    .await?;
    Ok(age.max(0.0))
}

/// The status of one message, `None` when there is no such row (or retention deleted it).
pub async fn status_of(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<OutboxStatus>> {
    sqlx::query_scalar("SELECT status FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}
