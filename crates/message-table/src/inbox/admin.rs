//! What an operator (and `/admin/stats`) asks of the inbox table about one message or all.
//! Lists, requeues of many and purges are in [`crate::admin`].

use sqlx::PgExecutor;
use uuid::Uuid;

use super::InboxStatus;
use crate::admin::{Selection, requeue_dead_inbox};

/// Puts a `dead` message back for the retry sweeper (attempts reset): the requeue of
/// [`requeue_dead_inbox`], for one id. Poison messages, which have no parsed payload,
/// cannot be requeued. Returns false when nothing matched.
pub async fn requeue_dead(db: impl PgExecutor<'_>, message_id: Uuid) -> sqlx::Result<bool> {
    let requeued = requeue_dead_inbox(db, &Selection::Ids(vec![message_id])).await?;
    Ok(!requeued.is_empty())
}

/// Rows per status, for `/admin/stats`, metrics and tests.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct InboxStats {
    pub processed: i64,
    pub failed: i64,
    pub dead: i64,
    /// Messages waiting for their aggregate's previous one ([`parked`]).
    pub parked: i64,
}

pub async fn stats(db: impl PgExecutor<'_>) -> sqlx::Result<InboxStats> {
    let (processed, failed, dead, parked): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = $1),
                count(*) FILTER (WHERE status = $2),
                count(*) FILTER (WHERE status = $3),
                count(*) FILTER (WHERE status = $4)
         FROM inbox",
    )
    .bind(InboxStatus::Processed)
    .bind(InboxStatus::Failed)
    .bind(InboxStatus::Dead)
    .bind(InboxStatus::Parked)
    .fetch_one(db)
    .await?;
    Ok(InboxStats {
        processed,
        failed,
        dead,
        parked,
    })
}

/// Messages parked until their aggregate's previous one is applied, for the metrics (on
/// the `inbox_parked` index).
pub async fn parked(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM inbox WHERE status = 'parked'")
        .fetch_one(db)
        .await
}

/// The status of one message, `None` when the inbox has no row for it.
pub async fn status_of(
    db: impl PgExecutor<'_>,
    message_id: Uuid,
) -> sqlx::Result<Option<InboxStatus>> {
    sqlx::query_scalar("SELECT status FROM inbox WHERE message_id = $1")
        .bind(message_id)
        .fetch_optional(db)
        .await
}
