//! Order per aggregate in the inbox: a numbered message is applied only right after the
//! message of its aggregate numbered one less.
//!
//! Where each aggregate stands is a row of `inbox_sequences` (the last number applied).
//! Every transaction that decides about a numbered message first locks its aggregate's row
//! ([`lock_positions`]), so two transactions never apply messages of one aggregate side by
//! side, and each sees what the other committed. Then, per message ([`turn`]):
//! - its turn (`applied + 1`): handled like any message;
//! - early (a gap before it): recorded `parked` ([`park`]) and acked, not handled;
//! - late (`<= applied`): another copy of something applied; dropped as a duplicate.
//!
//! After the handler, [`Inbox::advance`] writes the new positions and, in the same
//! statement, finds the parked messages that are now next; each runs alone (a failure is
//! recorded on it, and its successors stay parked), and so on until none is next. The retry
//! sweeper does the same after a failed message finally succeeds, and a tick of it applies
//! any parked message whose predecessor is applied (a safety net: the row lock already
//! makes the receive path find them).
//!
//! Messages without a number never touch any of this.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::{Inbox, InboxMessage, InboxStatus, Outcome, Position, receive::log_outcome};

/// Where a numbered message stands against its aggregate's last applied number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    Now,
    Early,
    Late,
}

pub(super) fn turn(applied: i64, seq: i64) -> Turn {
    match seq.cmp(&(applied + 1)) {
        std::cmp::Ordering::Equal => Turn::Now,
        std::cmp::Ordering::Greater => Turn::Early,
        std::cmp::Ordering::Less => Turn::Late,
    }
}

/// Locks the position rows of `aggregates` (created at 0 when new), in sorted order so
/// concurrent transactions lock them in one order, and returns the last number applied of
/// each. One statement.
pub(super) async fn lock_positions(
    tx: &mut PgConnection,
    aggregates: &[&str],
) -> sqlx::Result<HashMap<String, i64>> {
    let mut sorted: Vec<&str> = aggregates.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "INSERT INTO inbox_sequences (aggregate_id, applied_seq)
         SELECT a, 0 FROM unnest($1::text[]) WITH ORDINALITY AS t(a, n) ORDER BY n
         ON CONFLICT (aggregate_id) DO UPDATE SET applied_seq = inbox_sequences.applied_seq
         RETURNING aggregate_id, applied_seq",
    )
    .bind(&sorted)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The fast path of the common case, an aggregate's first message: writes the position
/// rows of `firsts` (aggregates whose message numbered 1 is in the batch) at 1 where the
/// aggregate has none yet, and returns those. No row means nothing of the aggregate was
/// ever applied or parked (parking writes the row), so that message is due now and nothing
/// waits behind it: one statement, one row written, instead of a lock and an update. A
/// concurrent transaction that writes the same row waits for this one, as for the lock.
pub(super) async fn start_positions(
    tx: &mut PgConnection,
    firsts: &[&str],
) -> sqlx::Result<HashSet<String>> {
    let mut sorted: Vec<&str> = firsts.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let started: Vec<String> = sqlx::query_scalar(
        "INSERT INTO inbox_sequences (aggregate_id, applied_seq)
         SELECT a, 1 FROM unnest($1::text[]) WITH ORDINALITY AS t(a, n) ORDER BY n
         ON CONFLICT (aggregate_id) DO NOTHING
         RETURNING aggregate_id",
    )
    .bind(&sorted)
    .fetch_all(&mut *tx)
    .await?;
    Ok(started.into_iter().collect())
}

/// Takes back [`start_positions`] for an aggregate whose first message failed: nothing of
/// it is applied.
pub(super) async fn unstart(tx: &mut PgConnection, aggregate_id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE inbox_sequences SET applied_seq = 0 WHERE aggregate_id = $1")
        .bind(aggregate_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Records `ids` as `parked`: acked, waiting for their predecessor.
pub(super) async fn park(tx: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE inbox SET status = $2, attempts = 0, processed_at = NULL WHERE message_id = ANY($1)",
    )
    .bind(ids)
    .bind(InboxStatus::Parked)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Notes on `ids`' rows (kept `processed`, never handled) that their number was applied
/// already: copies under another message id.
pub(super) async fn drop_late(tx: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE inbox SET last_error = 'not handled: its aggregate had applied this number already'
         WHERE message_id = ANY($1)",
    )
    .bind(ids)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Marks a retried message whose number its aggregate applied meanwhile (under another
/// message id) `processed` without running it, with a note.
pub(super) async fn settle_late(tx: &mut PgConnection, id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE inbox SET status = $2, processed_at = clock_timestamp(), next_attempt_at = NULL
         WHERE message_id = $1",
    )
    .bind(id)
    .bind(InboxStatus::Processed)
    .execute(&mut *tx)
    .await?;
    drop_late(tx, &[id]).await
}

/// A parked row, as the handler will get it.
#[derive(FromRow)]
struct ParkedRow {
    message_id: Uuid,
    event_type: String,
    payload: Option<Value>,
    headers: Value,
    attempts: i32,
    aggregate_id: String,
    aggregate_seq: i64,
}

impl Inbox {
    /// Writes `applied` (aggregate → last number applied, whose rows the caller locked) and
    /// runs the parked messages that are then next, each alone, in order, until none is:
    /// the outcomes of those it ran. Their counters are the caller's to count after commit.
    pub(super) async fn advance(
        &self,
        tx: &mut PgConnection,
        mut applied: BTreeMap<String, i64>,
    ) -> sqlx::Result<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        while !applied.is_empty() {
            let (ids, seqs): (Vec<String>, Vec<i64>) =
                std::mem::take(&mut applied).into_iter().unzip();
            // One statement: the new positions, and the parked messages right after them.
            let next: Vec<ParkedRow> = sqlx::query_as(
                "WITH moved AS (
                     UPDATE inbox_sequences s SET applied_seq = a.seq
                     FROM unnest($1::text[], $2::bigint[]) AS a(id, seq)
                     WHERE s.aggregate_id = a.id
                     RETURNING s.aggregate_id, s.applied_seq)
                 SELECT i.message_id, i.event_type, i.payload, i.headers, i.attempts,
                        i.aggregate_id, i.aggregate_seq
                 FROM inbox i JOIN moved m
                   ON i.aggregate_id = m.aggregate_id AND i.aggregate_seq = m.applied_seq + 1
                 WHERE i.status = 'parked'
                 ORDER BY i.aggregate_id",
            )
            .bind(&ids)
            .bind(&seqs)
            .fetch_all(&mut *tx)
            .await?;
            for row in next {
                let msg = parked_message(row);
                let outcome = self
                    .process(tx, &[&msg], InboxStatus::Parked)
                    .await?
                    .and_then(|mut o| o.pop())
                    .expect("a batch of one records its handler's failure");
                msg.span.in_scope(|| log_outcome(&msg, &outcome));
                if outcome == Outcome::Processed
                    && let Some(p) = &msg.position
                {
                    applied.insert(p.aggregate_id.clone(), p.seq);
                }
                outcomes.push(outcome);
            }
        }
        Ok(outcomes)
    }

    /// The safety net of the retry sweeper: aggregates with a parked message whose
    /// predecessor is applied (at most `limit`), each advanced in a transaction of its own.
    /// Returns the outcomes of the messages run.
    pub(super) async fn apply_stranded(&self, limit: i64) -> sqlx::Result<Vec<Outcome>> {
        let stranded: Vec<String> = sqlx::query_scalar(
            "SELECT i.aggregate_id FROM inbox i
             JOIN inbox_sequences s ON s.aggregate_id = i.aggregate_id
             WHERE i.status = 'parked' AND i.aggregate_seq = s.applied_seq + 1
             LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut outcomes = Vec::new();
        for aggregate in stranded {
            let mut tx = self.pool.begin().await?;
            let applied = lock_positions(&mut tx, &[aggregate.as_str()]).await?;
            let ran = self.advance(&mut tx, applied.into_iter().collect()).await?;
            tx.commit().await?;
            for outcome in &ran {
                self.counters.count(outcome);
            }
            outcomes.extend(ran);
        }
        Ok(outcomes)
    }
}

fn parked_message(row: ParkedRow) -> InboxMessage {
    let span = tracing::info_span!(
        "inbox_parked",
        message_id = %row.message_id,
        event_type = %row.event_type,
        trace_id = tracing::field::Empty,
    );
    trace_context::continue_trace(&span, trace_context::from_message(&row.headers).as_ref());
    InboxMessage {
        message_id: row.message_id,
        event_type: row.event_type,
        payload: row.payload.unwrap_or(Value::Null),
        headers: row.headers,
        attempt: row.attempts + 1,
        position: Some(Position {
            aggregate_id: row.aggregate_id,
            seq: row.aggregate_seq,
        }),
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_due_right_after_the_last_applied() {
        assert_eq!(turn(0, 1), Turn::Now);
        assert_eq!(turn(0, 2), Turn::Early);
        assert_eq!(turn(3, 3), Turn::Late);
        assert_eq!(turn(3, 1), Turn::Late);
        assert_eq!(turn(3, 4), Turn::Now);
    }
}
