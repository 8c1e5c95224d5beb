//! The operator's view of the local message tables, mounted at `/admin` on every service.
//!
//! # Why
//! Nothing is dropped silently: a message the relay could not deliver, or the inbox could
//! not process, ends `dead` with its reason. Someone has to see it and, once the cause is
//! fixed, put it back in line. These endpoints are that someone's tools:
//!
//! - `GET  /admin/stats`: rows per status in the outbox and the inbox, and what the inbox
//!   did since the process started (duplicates dropped, failures, poison);
//! - `GET  /admin/outbox/dead`, `GET /admin/inbox/dead`: the dead rows and their reasons,
//!   newest first (at most 100);
//! - `POST /admin/outbox/{id}/requeue`: a dead outbox message is published again, with
//!   attempts reset and a fresh time to live;
//! - `POST /admin/inbox/{id}/requeue`: a dead inbox message is run again by the retry
//!   sweeper. Poison (unreadable) messages cannot be: 409;
//! - `GET /admin/outbox`, `GET /admin/inbox`: rows by `status`, `event_type` and age
//!   (`before`, RFC 3339), newest first, `limit` (1..=500, default 50) per page and an
//!   opaque `cursor` (the previous page's `next_cursor`) for the next page;
//! - `POST /admin/outbox/requeue`, `POST /admin/inbox/requeue`: requeue `{"ids": [...]}`
//!   or `{"all": true}` dead rows (optionally with `event_type` and `before`), answering
//!   how many;
//! - `DELETE /admin/outbox/dead?before=...`, `DELETE /admin/inbox/dead?before=...`: delete
//!   dead rows older than `before` (optionally of `event_type`), answering how many.
//!
//! Every route is behind `ADMIN_TOKEN` ([`common::admin`]): the layer sits on the whole
//! nest in [`crate::service::Service::build`]. The gateway forwards `/admin/<route>/...`
//! only with the token; its `GATEWAY_INTERNAL_PATHS` still keeps the services' own paths
//! from clients.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use common::http::{ApiError, Json, Path, Query};
use message_table::{
    InboxStatus, OutboxStatus,
    admin::{self, Filter, PageKey, Selection},
    inbox::{self, InboxCounters},
    outbox,
};

#[derive(Clone)]
struct AdminState {
    pool: PgPool,
    counters: Arc<InboxCounters>,
    message_ttl: Duration,
}

/// The `/admin` routes, to be nested (behind the token) by [`crate::service::Service`].
pub fn router(pool: PgPool, counters: Arc<InboxCounters>, message_ttl: Duration) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/outbox", get(list_outbox))
        .route("/inbox", get(list_inbox))
        .route("/outbox/dead", get(dead_outbox).delete(purge_outbox))
        .route("/inbox/dead", get(dead_inbox).delete(purge_inbox))
        .route("/outbox/requeue", post(requeue_many_outbox))
        .route("/inbox/requeue", post(requeue_many_inbox))
        .route("/outbox/{id}/requeue", post(requeue_outbox))
        .route("/inbox/{id}/requeue", post(requeue_inbox))
        .with_state(AdminState {
            pool,
            counters,
            message_ttl,
        })
}

async fn stats(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let outbox = outbox::stats(&s.pool).await?;
    let inbox = inbox::stats(&s.pool).await?;
    Ok(Json(json!({
        "outbox": outbox,
        "inbox": inbox,
        "inbox_since_start": s.counters.snapshot(),
    })))
}

/// Rows per page when `limit` is not given, and the most a page may ask for.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 500;
/// The most ids one requeue may name.
const MAX_IDS: usize = 1_000;
/// What the older `GET /admin/{outbox,inbox}/dead` answer: the newest dead rows.
const DEAD_LIST_LIMIT: i64 = 100;

/// Query parameters of the listings, as text: each is checked here, so a bad one is a 400
/// naming it rather than a generic rejection.
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    status: Option<String>,
    event_type: Option<String>,
    before: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A checked page request.
struct Page {
    filter: Filter,
    after: Option<PageKey>,
    limit: i64,
}

impl ListParams {
    fn page(&self) -> Result<Page, ApiError> {
        let limit = match &self.limit {
            None => DEFAULT_LIMIT,
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_limit",
                        format!("limit must be an integer from 1 to {MAX_LIMIT}, not {v:?}"),
                    )
                })?,
        };
        Ok(Page {
            filter: Filter {
                event_type: self.event_type.clone(),
                before: self.before.as_deref().map(parse_before).transpose()?,
            },
            after: self.cursor.as_deref().map(decode_cursor).transpose()?,
            limit,
        })
    }
}

/// `status`: one of `all`'s names, or none for every status.
fn parse_status<S: Copy + std::fmt::Display>(
    value: Option<&str>,
    all: &[S],
) -> Result<Option<S>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    all.iter()
        .find(|s| s.to_string() == value)
        .map(|s| Some(*s))
        .ok_or_else(|| {
            let names: Vec<String> = all.iter().map(ToString::to_string).collect();
            ApiError::bad_request(
                "invalid_status",
                format!("status must be one of {}, not {value:?}", names.join(", ")),
            )
        })
}

fn parse_before(value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_before",
                format!("before must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z, not {value:?}: {e}"),
            )
        })
}

/// A cursor is the last row's sort key, `<microseconds since the epoch>.<id>`: opaque to
/// clients, exact for PostgreSQL's microsecond timestamps.
fn encode_cursor(key: PageKey) -> String {
    format!("{}.{}", key.at.timestamp_micros(), key.id.simple())
}

fn decode_cursor(cursor: &str) -> Result<PageKey, ApiError> {
    let (micros, id) = cursor.split_once('.').unwrap_or_default();
    let at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros);
    match (at, Uuid::try_parse(id)) {
        (Some(at), Ok(id)) => Ok(PageKey { at, id }),
        _ => Err(ApiError::bad_request(
            "invalid_cursor",
            "cursor is not one this API returned (pass next_cursor unchanged)",
        )),
    }
}

/// `{"items": [...], "next_cursor": ...}` from up to `limit + 1` rows: the extra one only
/// says there is a next page.
fn page_body<R: Serialize>(mut rows: Vec<R>, limit: i64, key: fn(&R) -> PageKey) -> Json<Value> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = rows.last().filter(|_| more).map(|r| encode_cursor(key(r)));
    Json(json!({ "items": rows, "next_cursor": next }))
}

async fn list_outbox(
    State(s): State<AdminState>,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let status = parse_status(p.status.as_deref(), &OutboxStatus::ALL)?;
    let page = p.page()?;
    let rows =
        admin::list_outbox(&s.pool, status, &page.filter, page.after, page.limit + 1).await?;
    Ok(page_body(rows, page.limit, admin::OutboxRow::key))
}

async fn list_inbox(
    State(s): State<AdminState>,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let status = parse_status(p.status.as_deref(), &InboxStatus::ALL)?;
    let page = p.page()?;
    let rows = admin::list_inbox(&s.pool, status, &page.filter, page.after, page.limit + 1).await?;
    Ok(page_body(rows, page.limit, admin::InboxRow::key))
}

async fn dead_outbox(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let dead = Some(OutboxStatus::Dead);
    let rows = admin::list_outbox(&s.pool, dead, &Filter::default(), None, DEAD_LIST_LIMIT).await?;
    Ok(Json(json!({ "dead": rows })))
}

async fn dead_inbox(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let dead = Some(InboxStatus::Dead);
    let rows = admin::list_inbox(&s.pool, dead, &Filter::default(), None, DEAD_LIST_LIMIT).await?;
    Ok(Json(json!({ "dead": rows })))
}

/// `{"ids": [...]}` or `{"all": true}`, the latter optionally narrowed by `event_type` and
/// `before` (RFC 3339).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    ids: Option<Vec<Uuid>>,
    #[serde(default)]
    all: bool,
    event_type: Option<String>,
    before: Option<DateTime<Utc>>,
}

impl RequeueBody {
    fn selection(self) -> Result<Selection, ApiError> {
        match (self.ids, self.all) {
            (Some(ids), false) if self.event_type.is_none() && self.before.is_none() => {
                if ids.is_empty() || ids.len() > MAX_IDS {
                    return Err(ApiError::validation(format!(
                        "ids must name 1 to {MAX_IDS} messages"
                    )));
                }
                Ok(Selection::Ids(ids))
            }
            (None, true) => Ok(Selection::Matching(Filter {
                event_type: self.event_type,
                before: self.before,
            })),
            _ => Err(ApiError::validation(
                "give either ids, or all: true with optional event_type and before",
            )),
        }
    }
}

/// `{"requeued": n, "ids": [...]}`, and for a list of ids the ones that were not dead (or
/// were poison) as `not_requeued`.
fn requeued_body(selection: &Selection, requeued: Vec<Uuid>, table: &str) -> Json<Value> {
    tracing::info!(
        count = requeued.len(),
        table,
        "dead messages requeued by an operator"
    );
    let mut body = json!({ "requeued": requeued.len(), "ids": requeued });
    if let Selection::Ids(asked) = selection {
        let rest: Vec<&Uuid> = asked.iter().filter(|id| !requeued.contains(id)).collect();
        body["not_requeued"] = json!(rest);
    }
    Json(body)
}

async fn requeue_many_outbox(
    State(s): State<AdminState>,
    Json(body): Json<RequeueBody>,
) -> Result<Json<Value>, ApiError> {
    let selection = body.selection()?;
    let requeued = admin::requeue_dead_outbox(&s.pool, &selection, s.message_ttl).await?;
    Ok(requeued_body(&selection, requeued, "outbox"))
}

async fn requeue_many_inbox(
    State(s): State<AdminState>,
    Json(body): Json<RequeueBody>,
) -> Result<Json<Value>, ApiError> {
    let selection = body.selection()?;
    let requeued = admin::requeue_dead_inbox(&s.pool, &selection).await?;
    Ok(requeued_body(&selection, requeued, "inbox"))
}

/// `before` (required, RFC 3339) and `event_type` of a purge.
#[derive(Debug, Deserialize)]
struct PurgeParams {
    before: Option<String>,
    event_type: Option<String>,
}

impl PurgeParams {
    fn before(&self) -> Result<DateTime<Utc>, ApiError> {
        let before = self.before.as_deref().ok_or_else(|| {
            ApiError::bad_request("invalid_before", "before (RFC 3339) is required")
        })?;
        parse_before(before)
    }
}

fn deleted_body(deleted: u64, table: &str) -> Json<Value> {
    tracing::info!(deleted, table, "dead messages purged by an operator");
    Json(json!({ "deleted": deleted }))
}

async fn purge_outbox(
    State(s): State<AdminState>,
    Query(p): Query<PurgeParams>,
) -> Result<Json<Value>, ApiError> {
    let deleted = admin::purge_dead_outbox(&s.pool, p.before()?, p.event_type.as_deref()).await?;
    Ok(deleted_body(deleted, "outbox"))
}

async fn purge_inbox(
    State(s): State<AdminState>,
    Query(p): Query<PurgeParams>,
) -> Result<Json<Value>, ApiError> {
    let deleted = admin::purge_dead_inbox(&s.pool, p.before()?, p.event_type.as_deref()).await?;
    Ok(deleted_body(deleted, "inbox"))
}

async fn requeue_outbox(
    State(s): State<AdminState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    if outbox::requeue_dead(&s.pool, id, s.message_ttl).await? {
        tracing::info!(message_id = %id, "dead outbox message requeued by an operator");
        return Ok(Json(json!({ "requeued": id })));
    }
    Err(ApiError::NotFound(format!("no dead outbox message {id}")))
}

async fn requeue_inbox(
    State(s): State<AdminState>,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    if inbox::requeue_dead(&s.pool, id).await? {
        tracing::info!(message_id = %id, "dead inbox message requeued by an operator");
        return Ok(Json(json!({ "requeued": id })));
    }
    if admin::is_dead_poison(&s.pool, id).await? {
        return Err(ApiError::Conflict {
            code: "not_requeueable",
            message: format!(
                "inbox message {id} is poison (unreadable): there is nothing to run again"
            ),
        });
    }
    Err(ApiError::NotFound(format!("no dead inbox message {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_anything_else_is_refused() {
        let key = PageKey {
            at: DateTime::from_timestamp_micros(1_767_225_600_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(decode_cursor(&encode_cursor(key)).unwrap(), key);
        for bad in [
            "",
            "x",
            "1.",
            ".abc",
            "12.not-a-uuid",
            "99999999999999999999.0",
        ] {
            let err = decode_cursor(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_cursor", "{bad}");
        }
    }

    #[test]
    fn a_page_request_checks_each_parameter() {
        let page = |p: ListParams| p.page().map(|_| ()).map_err(|e| e.code());
        let limit = |v: &str| ListParams {
            limit: Some(v.into()),
            ..Default::default()
        };
        assert_eq!(page(limit("500")), Ok(()));
        for bad in ["0", "501", "-1", "ten"] {
            assert_eq!(page(limit(bad)), Err("invalid_limit"), "{bad}");
        }
        let before = ListParams {
            before: Some("yesterday".into()),
            ..Default::default()
        };
        assert_eq!(page(before), Err("invalid_before"));
        assert!(parse_status(Some("dead"), &OutboxStatus::ALL).is_ok());
        let err = parse_status(Some("zombie"), &InboxStatus::ALL).unwrap_err();
        assert_eq!(err.code(), "invalid_status");
    }
}
