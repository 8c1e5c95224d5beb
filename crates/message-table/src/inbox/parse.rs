//! Step 0 of the inbox: reading a delivery. What cannot be read is poison, and what was
//! created before the inbox's memory is too old to deduplicate: both are recorded `dead`
//! on their own, outside the batch's transaction, and acked.

use std::time::Duration;

use serde_json::Value;
use sqlx::{Postgres, postgres::PgArguments, query::Query};
use uuid::Uuid;

use super::{Inbox, InboxMessage, InboxStatus, Incoming, Outcome, Position, receive::log_outcome};
use crate::outbox::relay::AGGREGATE_SEQ_HEADER;

/// The message's place in its aggregate (`aggregate_id` and `x-aggregate-seq` headers),
/// `None` without a number; `Err` (poison) for a number that cannot be one, or without
/// the aggregate it counts in.
fn position(headers: &Value) -> Result<Option<Position>, String> {
    let Some(seq) = headers.get(AGGREGATE_SEQ_HEADER) else {
        return Ok(None);
    };
    let seq = seq
        .as_i64()
        .or_else(|| seq.as_str().and_then(|s| s.parse().ok()))
        .filter(|&n| n >= 1)
        .ok_or_else(|| format!("{AGGREGATE_SEQ_HEADER} {seq} is not a number from 1 up"))?;
    let aggregate_id = headers
        .get("aggregate_id")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| format!("{AGGREGATE_SEQ_HEADER} without an aggregate_id header"))?;
    Ok(Some(Position {
        aggregate_id: aggregate_id.to_string(),
        seq,
    }))
}

/// Clocks of the sending and receiving services may differ by this much.
const CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(300);

/// Raw bodies of poison messages are kept up to this size, for a human to look at.
const MAX_KEPT_RAW_BODY: usize = 64 * 1024;

/// What reading a delivery gave.
pub(super) enum Read {
    /// A message for steps 1 to 4.
    Message(InboxMessage),
    /// Refused and recorded `dead` (poison, or older than the inbox's memory), or found
    /// already recorded (`Duplicate`).
    Refused(Outcome),
}

impl Inbox {
    /// Step 0: reads `incoming`; a delivery that is poison or too old is recorded here.
    /// `span` is the message's span (`inbox_receive`). `Err`: nothing could be recorded.
    pub(super) async fn read(
        &self,
        incoming: &Incoming,
        span: tracing::Span,
    ) -> sqlx::Result<Read> {
        let msg = match self.parse(incoming, span) {
            Ok(msg) => msg,
            Err(poison) => {
                return self
                    .record_poison(incoming, poison)
                    .await
                    .map(Read::Refused);
            }
        };
        match self.older_than_memory(incoming) {
            Some(reason) => self.record_dead(&msg, reason).await.map(Read::Refused),
            None => Ok(Read::Message(msg)),
        }
    }

    /// Reads the delivery; `Err` is why it is poison.
    pub(super) fn parse(
        &self,
        incoming: &Incoming,
        span: tracing::Span,
    ) -> Result<InboxMessage, String> {
        let id_text = incoming
            .message_id
            .as_deref()
            .ok_or("no message_id property")?;
        let message_id = Uuid::parse_str(id_text)
            .map_err(|e| format!("message_id {id_text:?} is not a UUID: {e}"))?;
        if incoming.body.len() > self.cfg.max_body_bytes {
            return Err(format!(
                "body of {} bytes exceeds the limit of {} bytes",
                incoming.body.len(),
                self.cfg.max_body_bytes
            ));
        }
        match incoming.content_type.as_deref() {
            Some(ct) if ct.starts_with("application/json") => {}
            other => return Err(format!("content type {other:?} is not application/json")),
        }
        let event_type = incoming
            .event_type
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or("no type property (event type)")?;
        let payload: Value = serde_json::from_slice(&incoming.body)
            .map_err(|e| format!("body is not valid JSON: {e}"))?;
        Ok(InboxMessage {
            message_id,
            event_type,
            payload,
            position: position(&incoming.headers)?,
            headers: incoming.headers.clone(),
            attempt: 1,
            span,
        })
    }

    pub(super) async fn record_poison(
        &self,
        incoming: &Incoming,
        reason: String,
    ) -> sqlx::Result<Outcome> {
        // A readable id is kept (a redelivered copy is then a duplicate); otherwise a new one.
        let id = incoming
            .message_id
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok())
            .unwrap_or_else(Uuid::now_v7);
        let raw = &incoming.body[..incoming.body.len().min(MAX_KEPT_RAW_BODY)];
        let insert = sqlx::query(
            "INSERT INTO inbox (message_id, event_type, raw_body, headers, status, attempts, last_error)
             VALUES ($1, $2, $3, $4, $6, 1, $5)
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(id)
        .bind(incoming.event_type.as_deref().unwrap_or(""))
        .bind(raw)
        .bind(&incoming.headers)
        .bind(format!("poison message: {reason}"));
        if !self.insert_dead(insert).await? {
            return Ok(Outcome::Duplicate);
        }
        tracing::error!(recorded_as = %id, %reason, "poison message recorded dead");
        Ok(Outcome::Poison { reason })
    }

    /// Why a message is too old to be deduplicated reliably, if it is: created before the
    /// inbox retention window (less a margin for clock differences between the services).
    fn older_than_memory(&self, incoming: &Incoming) -> Option<String> {
        let created = i64::try_from(incoming.timestamp?).ok()?;
        let window = self.cfg.retention.saturating_sub(CLOCK_SKEW_MARGIN);
        let age = chrono::Utc::now().timestamp() - created;
        (age > window.as_secs() as i64).then(|| {
            format!(
                "created {age}s ago, before the inbox retention window ({}s): it may be a copy of \
                 a message already processed and forgotten, so it is not processed automatically",
                self.cfg.retention.as_secs()
            )
        })
    }

    /// Records a readable message `dead` without running it, with `reason` (too old, or
    /// dead-lettered by the broker): requeueable like any dead row. `Duplicate` when the id
    /// already has a row, which stays as it is.
    pub(super) async fn record_dead(
        &self,
        msg: &InboxMessage,
        reason: String,
    ) -> sqlx::Result<Outcome> {
        let insert = sqlx::query(
            "INSERT INTO inbox (message_id, event_type, payload, headers, status, attempts, last_error,
                                aggregate_id, aggregate_seq)
             VALUES ($1, $2, $3, $4, $8, 0, $5, $6, $7)
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(msg.message_id)
        .bind(&msg.event_type)
        .bind(&msg.payload)
        .bind(&msg.headers)
        .bind(&reason)
        .bind(msg.position.as_ref().map(|p| &p.aggregate_id))
        .bind(msg.position.as_ref().map(|p| p.seq));
        if !self.insert_dead(insert).await? {
            return Ok(Outcome::Duplicate);
        }
        let outcome = Outcome::Dead { reason };
        log_outcome(msg, &outcome);
        Ok(outcome)
    }

    /// Runs an `INSERT ... ON CONFLICT DO NOTHING` of a message that is not processed,
    /// whose last parameter is its status: `dead`. False when the id was already there.
    async fn insert_dead(&self, insert: Query<'_, Postgres, PgArguments>) -> sqlx::Result<bool> {
        let inserted = insert
            .bind(InboxStatus::Dead)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(inserted == 1)
    }
}
