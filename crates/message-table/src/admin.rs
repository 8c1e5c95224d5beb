//! What an operator does with the rows of the message tables (the HTTP side is
//! `service-kit`'s `admin.rs`): list them by status, page by page; requeue dead ones,
//! one, a list, or all matching a filter; purge old dead ones; find the rows about one
//! business object ([`outbox_about`], [`inbox_about`]), for a service's story of it.
//!
//! Paging is keyset on `(created_at, id)` (outbox) or `(received_at, message_id)` (inbox),
//! newest first: a page starts strictly after the last row of the previous one, so rows
//! inserted meanwhile never shift a page and every row is seen once. Filters are bound as
//! parameters (`$n IS NULL OR ...`): one statement per operation, no SQL built from input.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{
    FromRow, PgExecutor, Postgres,
    postgres::PgArguments,
    query::{QueryAs, QueryScalar},
};
use uuid::Uuid;

use crate::status::{InboxStatus, OutboxStatus};

/// Which rows an operation applies to; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub event_type: Option<String>,
    /// Rows created (outbox) or received (inbox) strictly before this.
    pub before: Option<DateTime<Utc>>,
}

/// Where a page starts: the sort key of the last row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageKey {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

/// An outbox row as an operator sees it (without payload and headers).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, serde::Serialize, FromRow)]
pub struct OutboxRow {
    pub id: Uuid,
    pub event_type: String,
    pub routing_key: String,
    pub aggregate_id: String,
    pub status: OutboxStatus,
    /// Held by a relay right now.
    pub in_flight: bool,
    /// While held: when the relay's claim lapses and another relay may take the row.
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

impl OutboxRow {
    pub fn key(&self) -> PageKey {
        PageKey {
            at: self.created_at,
            id: self.id,
        }
    }
}

/// An inbox row as an operator sees it (without payload and raw body).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, serde::Serialize, FromRow)]
pub struct InboxRow {
    pub message_id: Uuid,
    pub event_type: String,
    pub status: InboxStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// False for poison: nothing readable to run again.
    pub requeueable: bool,
    pub received_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub processed_at: Option<DateTime<Utc>>,
    /// Copies of this message dropped as duplicates after the first (per-message count).
    pub duplicates: i32,
}

impl InboxRow {
    pub fn key(&self) -> PageKey {
        PageKey {
            at: self.received_at,
            id: self.message_id,
        }
    }
}

/// Up to `limit` outbox rows in `status` (any when `None`) matching `filter`, newest
/// first, starting after `after`.
pub async fn list_outbox(
    db: impl PgExecutor<'_>,
    status: Option<OutboxStatus>,
    filter: &Filter,
    after: Option<PageKey>,
    limit: i64,
) -> sqlx::Result<Vec<OutboxRow>> {
    let query = sqlx::query_as(
        "SELECT id, event_type, routing_key, aggregate_id, status,
                claim_token IS NOT NULL AS in_flight, lease_expires_at, attempts, last_error,
                created_at, next_attempt_at, expires_at, sent_at
         FROM outbox
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR event_type = $2)
           AND ($3::timestamptz IS NULL OR created_at < $3)
           AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
         ORDER BY created_at DESC, id DESC
         LIMIT $6",
    )
    .bind(status);
    bind_page(query, filter, after, limit).fetch_all(db).await
}

/// Binds `$2` to `$6` of a listing, after its status (`$1`).
fn bind_page<'q, R>(
    query: QueryAs<'q, Postgres, R, PgArguments>,
    filter: &'q Filter,
    after: Option<PageKey>,
    limit: i64,
) -> QueryAs<'q, Postgres, R, PgArguments> {
    query
        .bind(&filter.event_type)
        .bind(filter.before)
        .bind(after.map(|k| k.at))
        .bind(after.map(|k| k.id))
        .bind(limit)
}

/// Like [`list_outbox`], for the inbox.
pub async fn list_inbox(
    db: impl PgExecutor<'_>,
    status: Option<InboxStatus>,
    filter: &Filter,
    after: Option<PageKey>,
    limit: i64,
) -> sqlx::Result<Vec<InboxRow>> {
    let query = sqlx::query_as(
        "SELECT message_id, event_type, status, attempts, last_error,
                payload IS NOT NULL AS requeueable, received_at, next_attempt_at, processed_at,
                duplicates
         FROM inbox
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR event_type = $2)
           AND ($3::timestamptz IS NULL OR received_at < $3)
           AND ($4::timestamptz IS NULL OR (received_at, message_id) < ($4, $5))
         ORDER BY received_at DESC, message_id DESC
         LIMIT $6",
    )
    .bind(status);
    bind_page(query, filter, after, limit).fetch_all(db).await
}

/// The outbox rows about `aggregate_id` of one of `event_types`, oldest first: the
/// messages a service sent about one order, say. No index serves it (none is paid for on
/// every write): it is an operator's look at one object, at a click's rate.
pub async fn outbox_about(
    db: impl PgExecutor<'_>,
    aggregate_id: &str,
    event_types: &[&str],
) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "SELECT id, event_type, routing_key, aggregate_id, status,
                claim_token IS NOT NULL AS in_flight, lease_expires_at, attempts, last_error,
                created_at, next_attempt_at, expires_at, sent_at
         FROM outbox
         WHERE aggregate_id = $1 AND event_type = ANY($2)
         ORDER BY created_at, id",
    )
    .bind(aggregate_id)
    .bind(event_types)
    .fetch_all(db)
    .await
}

/// The inbox rows of one of `event_types` whose payload's `field` is the string `value`,
/// oldest first: the messages a service received about one order, say (the inbox has no
/// aggregate column). Poison rows have no payload and are not found. Unindexed, like
/// [`outbox_about`].
pub async fn inbox_about(
    db: impl PgExecutor<'_>,
    field: &str,
    value: &str,
    event_types: &[&str],
) -> sqlx::Result<Vec<InboxRow>> {
    sqlx::query_as(
        "SELECT message_id, event_type, status, attempts, last_error,
                payload IS NOT NULL AS requeueable, received_at, next_attempt_at, processed_at,
                duplicates
         FROM inbox
         WHERE event_type = ANY($3) AND payload ->> $1 = $2
         ORDER BY received_at, message_id",
    )
    .bind(field)
    .bind(value)
    .bind(event_types)
    .fetch_all(db)
    .await
}

/// Which dead rows a requeue applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These ids (those not dead are left alone).
    Ids(Vec<Uuid>),
    /// Every dead row matching the filter.
    Matching(Filter),
}

impl Selection {
    /// Binds `$1` (ids, NULL for all), `$2` (event type) and `$3` (before) of a requeue.
    fn bind<'q>(
        &'q self,
        query: QueryScalar<'q, Postgres, Uuid, PgArguments>,
    ) -> QueryScalar<'q, Postgres, Uuid, PgArguments> {
        let (ids, event_type, before) = match self {
            Selection::Ids(ids) => (Some(ids.as_slice()), None, None),
            Selection::Matching(f) => (None, f.event_type.as_deref(), f.before),
        };
        query.bind(ids).bind(event_type).bind(before)
    }
}

/// Puts the selected dead outbox messages back in line, as
/// [`crate::outbox::requeue_dead`] does for one. Returns the ids requeued.
pub async fn requeue_dead_outbox(
    db: impl PgExecutor<'_>,
    selection: &Selection,
    ttl: Duration,
) -> sqlx::Result<Vec<Uuid>> {
    requeue_outbox(db, selection, ttl, None, "requeued by operator").await
}

/// The outbox's one requeue: the selected `dead` rows, and with `sent_before` also `sent`
/// rows sent longer ago than that, back in line: attempts reset, due now, a fresh time to
/// live, `note` in front of the last error. Returns the ids requeued.
pub(crate) async fn requeue_outbox(
    db: impl PgExecutor<'_>,
    selection: &Selection,
    ttl: Duration,
    sent_before: Option<Duration>,
    note: &str,
) -> sqlx::Result<Vec<Uuid>> {
    let query = sqlx::query_scalar(
        "UPDATE outbox SET status = $5, attempts = 0, next_attempt_at = now(), sent_at = NULL,
                expires_at = now() + make_interval(secs => $4),
                last_error = $9 || '; was: ' || coalesce(last_error, '')
         WHERE (status = $6
                OR (status = $7 AND $8::float8 IS NOT NULL
                    AND sent_at < now() - make_interval(secs => $8::float8)))
           AND ($1::uuid[] IS NULL OR id = ANY($1))
           AND ($2::text IS NULL OR event_type = $2)
           AND ($3::timestamptz IS NULL OR created_at < $3)
         RETURNING id",
    );
    selection
        .bind(query)
        .bind(ttl.as_secs_f64())
        .bind(OutboxStatus::Pending)
        .bind(OutboxStatus::Dead)
        .bind(OutboxStatus::Sent)
        .bind(sent_before.map(|d| d.as_secs_f64()))
        .bind(note)
        .fetch_all(db)
        .await
}

/// Hands the selected dead inbox messages to the retry sweeper, as
/// [`crate::inbox::requeue_dead`] does for one; poison is skipped. The inbox's one
/// requeue. Returns the ids requeued.
pub async fn requeue_dead_inbox(
    db: impl PgExecutor<'_>,
    selection: &Selection,
) -> sqlx::Result<Vec<Uuid>> {
    let query = sqlx::query_scalar(
        "UPDATE inbox SET status = $4, attempts = 0, next_attempt_at = now(),
                last_error = 'requeued by operator; was: ' || coalesce(last_error, '')
         WHERE status = $5 AND payload IS NOT NULL
           AND ($1::uuid[] IS NULL OR message_id = ANY($1))
           AND ($2::text IS NULL OR event_type = $2)
           AND ($3::timestamptz IS NULL OR received_at < $3)
         RETURNING message_id",
    );
    selection
        .bind(query)
        .bind(InboxStatus::Failed)
        .bind(InboxStatus::Dead)
        .fetch_all(db)
        .await
}

/// Deletes dead outbox rows created before `before` (and of `event_type`, when given).
/// Rows in any other status are never touched. Returns how many were deleted.
pub async fn purge_dead_outbox(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    event_type: Option<&str>,
) -> sqlx::Result<u64> {
    let sql = "DELETE FROM outbox
               WHERE status = $1 AND created_at < $2 AND ($3::text IS NULL OR event_type = $3)";
    purge(db, sql, OutboxStatus::Dead, before, event_type).await
}

/// Like [`purge_dead_outbox`], for the inbox. A purged id is forgotten; a dead message's
/// effect never committed, so a later copy cannot apply it twice.
pub async fn purge_dead_inbox(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    event_type: Option<&str>,
) -> sqlx::Result<u64> {
    let sql = "DELETE FROM inbox
               WHERE status = $1 AND received_at < $2 AND ($3::text IS NULL OR event_type = $3)";
    purge(db, sql, InboxStatus::Dead, before, event_type).await
}

async fn purge<S>(
    db: impl PgExecutor<'_>,
    sql: &'static str,
    dead: S,
    before: DateTime<Utc>,
    event_type: Option<&str>,
) -> sqlx::Result<u64>
where
    S: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Send,
{
    let res = sqlx::query(sql)
        .bind(dead)
        .bind(before)
        .bind(event_type)
        .execute(db)
        .await?;
    Ok(res.rows_affected())
}

/// True when `message_id` is a dead poison message (nothing readable to run again).
pub async fn is_dead_poison(db: impl PgExecutor<'_>, message_id: Uuid) -> sqlx::Result<bool> {
    let poison: Option<bool> = sqlx::query_scalar(
        "SELECT payload IS NULL FROM inbox WHERE message_id = $1 AND status = $2",
    )
    .bind(message_id)
    .bind(InboxStatus::Dead)
    .fetch_optional(db)
    .await?;
    Ok(poison == Some(true))
}
