//! The retry sweeper: re-runs `failed` inbox rows when their backoff has passed.
//!
//! The message is already safe in the inbox (it was recorded before its delivery was
//! acked), so a retry needs no broker: the sweeper locks one due row with
//! `FOR UPDATE SKIP LOCKED` (`RetrySweeper::retry_next`) and runs it through the very steps
//! a first delivery takes, as a batch of one (`Inbox::process`: the handler in a savepoint
//! of that transaction), committing `processed`, or `failed` with the next backoff, or
//! `dead` when attempts are exhausted.
//! A message numbered within its aggregate is run only in its turn, and once it succeeds
//! the parked messages after it run too (`Inbox::advance`); each round ends with the
//! safety net `Inbox::apply_stranded` (see `order.rs`).
//! The row lock keeps several sweepers (several instances) from running the same message
//! at once. A failing message is rescheduled
//! and the sweeper moves on; rows are retried one after another, so a handler that hangs
//! delays this instance's later retries (fresh deliveries are not affected).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{AssertSqlSafe, FromRow};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    Inbox, InboxMessage, InboxStatus, Outcome, Position,
    order::{self, Turn},
    receive::log_outcome,
};
use crate::status::{AWAITING_RETRY, RETRY_DUE};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub processed: usize,
    pub failed: usize,
    pub dead: usize,
}

/// A due `failed` row.
#[derive(FromRow)]
struct FailedRow {
    message_id: Uuid,
    event_type: String,
    payload: Option<Value>,
    headers: Value,
    attempts: i32,
    aggregate_id: Option<String>,
    aggregate_seq: Option<i64>,
}

pub struct RetrySweeper {
    /// The same inbox the consumer uses: same handler, settings and counters.
    inbox: Inbox,
    /// Rows retried per round at most, so a round ends and shutdown is noticed.
    batch: usize,
}

impl RetrySweeper {
    pub fn new(inbox: &Inbox) -> Self {
        Self {
            inbox: inbox.clone(),
            batch: 100,
        }
    }

    /// Retries every due row (up to the batch size), one transaction each, each row at most
    /// once: a row that fails again with a backoff shorter than the round must wait for the
    /// next round, not burn its attempts now.
    #[tracing::instrument(name = "inbox_retry_sweep", skip_all, fields(batch = self.batch))]
    pub async fn run_once(&self) -> sqlx::Result<SweepReport> {
        self.inbox.metrics.sweeps.inc();
        let mut report = SweepReport::default();
        let mut tried = Vec::new();
        let mut outcomes = Vec::new();
        for _ in 0..self.batch {
            match self.retry_next(&mut tried).await? {
                None => break,
                Some(ran) => outcomes.extend(ran),
            }
        }
        // The safety net of per-aggregate order: parked messages whose predecessor is applied.
        outcomes.extend(self.inbox.apply_stranded(self.batch as i64).await?);
        for outcome in outcomes {
            match outcome {
                Outcome::Processed => report.processed += 1,
                Outcome::Failed { .. } => report.failed += 1,
                Outcome::Dead { .. } | Outcome::Poison { .. } => report.dead += 1,
                Outcome::Parked | Outcome::Duplicate => {}
            }
        }
        if report != SweepReport::default() {
            tracing::debug!(?report, "retry sweep");
        }
        Ok(report)
    }

    /// Retries the next due row; the outcomes of the runs (that row's, then those of the
    /// parked messages of its aggregate it let through), `None` when no row is due.
    async fn retry_next(&self, tried: &mut Vec<Uuid>) -> sqlx::Result<Option<Vec<Outcome>>> {
        let mut tx = self.inbox.pool().begin().await?;
        let row: Option<FailedRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT message_id, event_type, payload, headers, attempts, aggregate_id, aggregate_seq
             FROM inbox
             WHERE {RETRY_DUE} AND message_id <> ALL($1)
             ORDER BY next_attempt_at
             LIMIT 1
             FOR UPDATE SKIP LOCKED"
        )))
        .bind(&*tried)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        tried.push(row.message_id);
        let span = tracing::info_span!(
            "inbox_retry",
            message_id = %row.message_id,
            event_type = %row.event_type,
            trace_id = tracing::field::Empty,
        );
        trace_context::continue_trace(&span, trace_context::from_message(&row.headers).as_ref());
        let position = match (row.aggregate_id, row.aggregate_seq) {
            (Some(aggregate_id), Some(seq)) => Some(Position { aggregate_id, seq }),
            _ => None,
        };
        let msg = InboxMessage {
            message_id: row.message_id,
            event_type: row.event_type,
            payload: row.payload.unwrap_or(Value::Null),
            headers: row.headers,
            attempt: row.attempts + 1,
            position,
            span: span.clone(),
        };
        async {
            // A numbered message runs only in its turn (it always is: it failed in its turn,
            // and its successors are parked behind it).
            let turn = match &msg.position {
                None => Turn::Now,
                Some(p) => {
                    let applied =
                        order::lock_positions(&mut tx, &[p.aggregate_id.as_str()]).await?;
                    order::turn(applied.get(&p.aggregate_id).copied().unwrap_or(0), p.seq)
                }
            };
            let outcome = match turn {
                Turn::Now => self
                    .inbox
                    .process(&mut tx, &[&msg], InboxStatus::Failed)
                    .await?
                    .and_then(|mut outcomes| outcomes.pop())
                    .expect("a batch of one records its handler's failure"),
                Turn::Early => {
                    order::park(&mut tx, &[msg.message_id]).await?;
                    Outcome::Parked
                }
                Turn::Late => {
                    order::settle_late(&mut tx, msg.message_id).await?;
                    Outcome::Duplicate
                }
            };
            let mut applied = BTreeMap::new();
            if outcome == Outcome::Processed
                && let Some(p) = &msg.position
            {
                applied.insert(p.aggregate_id.clone(), p.seq);
            }
            let successors = self.inbox.advance(&mut tx, applied).await?;
            tx.commit().await?;
            self.inbox.counters.count(&outcome);
            self.inbox.metrics.retry(&outcome);
            log_outcome(&msg, &outcome);
            for o in &successors {
                self.inbox.counters.count(o);
            }
            Ok(Some(std::iter::once(outcome).chain(successors).collect()))
        }
        .instrument(span)
        .await
    }

    async fn next_due(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT min(next_attempt_at) FROM inbox WHERE {AWAITING_RETRY}"
        )))
        .fetch_one(self.inbox.pool())
        .await
    }

    /// Sweeps until `shutdown`, sleeping until the next row is due (at most the poll
    /// interval, so rows failed by other instances are seen too).
    pub async fn run(self, shutdown: CancellationToken) {
        let max_sleep = self.inbox.config().poll_interval;
        while !shutdown.is_cancelled() {
            let sleep = match self.run_once().await {
                Ok(_) => {
                    crate::backoff::sleep_until(self.next_due().await.ok().flatten(), max_sleep)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retry sweep failed");
                    max_sleep
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
}
