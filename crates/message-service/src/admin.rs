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
//!   sweeper. Poison (unreadable) messages cannot be: 409.
//!
//! They are internal: the gateway does not expose `/admin` unless configured to (see its
//! `GATEWAY_INTERNAL_PATHS`).

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use common::http::{ApiError, Json, Path};
use message_table::{
    InboxStatus, OutboxStatus,
    inbox::{self, InboxCounters},
    outbox,
};

#[derive(Clone)]
struct AdminState {
    pool: PgPool,
    counters: Arc<InboxCounters>,
    message_ttl: Duration,
}

/// The `/admin` routes, to be nested by [`crate::service::Service`].
pub fn router(pool: PgPool, counters: Arc<InboxCounters>, message_ttl: Duration) -> Router {
    Router::new()
        .route("/stats", get(stats))
        .route("/outbox/dead", get(dead_outbox))
        .route("/inbox/dead", get(dead_inbox))
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

#[derive(Serialize, FromRow)]
struct DeadOutbox {
    id: Uuid,
    event_type: String,
    routing_key: String,
    aggregate_id: String,
    attempts: i32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

async fn dead_outbox(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let rows: Vec<DeadOutbox> = sqlx::query_as(
        "SELECT id, event_type, routing_key, aggregate_id, attempts, last_error, created_at, expires_at
         FROM outbox WHERE status = $1 ORDER BY created_at DESC LIMIT 100",
    )
    .bind(OutboxStatus::Dead)
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(json!({ "dead": rows })))
}

#[derive(Serialize, FromRow)]
struct DeadInbox {
    message_id: Uuid,
    event_type: String,
    attempts: i32,
    last_error: Option<String>,
    /// False for poison: nothing readable to run again.
    requeueable: bool,
    received_at: DateTime<Utc>,
}

async fn dead_inbox(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let rows: Vec<DeadInbox> = sqlx::query_as(
        "SELECT message_id, event_type, attempts, last_error, payload IS NOT NULL AS requeueable,
                received_at
         FROM inbox WHERE status = $1 ORDER BY received_at DESC LIMIT 100",
    )
    .bind(InboxStatus::Dead)
    .fetch_all(&s.pool)
    .await?;
    Ok(Json(json!({ "dead": rows })))
}

async fn requeue_outbox(
    State(s): State<AdminState>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if outbox::requeue_dead(&s.pool, id, s.message_ttl).await? {
        tracing::info!(message_id = %id, "dead outbox message requeued by an operator");
        return Ok((StatusCode::OK, Json(json!({ "requeued": id }))));
    }
    Err(ApiError::NotFound(format!("no dead outbox message {id}")))
}

async fn requeue_inbox(
    State(s): State<AdminState>,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if inbox::requeue_dead(&s.pool, id).await? {
        tracing::info!(message_id = %id, "dead inbox message requeued by an operator");
        return Ok((StatusCode::OK, Json(json!({ "requeued": id }))));
    }
    let poison: Option<bool> = sqlx::query_scalar(
        "SELECT payload IS NULL FROM inbox WHERE message_id = $1 AND status = $2",
    )
    .bind(id)
    .bind(InboxStatus::Dead)
    .fetch_optional(&s.pool)
    .await?;
    match poison {
        Some(true) => Err(ApiError::Conflict {
            code: "not_requeueable",
            message: format!(
                "inbox message {id} is poison (unreadable): there is nothing to run again"
            ),
        }),
        _ => Err(ApiError::NotFound(format!("no dead inbox message {id}"))),
    }
}
