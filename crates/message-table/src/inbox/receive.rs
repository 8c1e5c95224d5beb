//! The receive algorithm, top to bottom in the order it runs (see the module docs of
//! [`crate::inbox`] for the why): [`Inbox::receive_batch`] reads the deliveries
//! (`Inbox::read`), then [`Inbox::run`] runs steps 1 to 4 in one transaction:
//! `Inbox::remember`, `Inbox::sort_out` (order per aggregate), `Inbox::process` (the
//! handler, `record_failure`), `Inbox::advance` (parked successors), commit.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    panic::AssertUnwindSafe,
};

use futures::FutureExt;
use serde_json::Value;
use sqlx::{Acquire, PgConnection};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    HandlerError, Inbox, InboxMessage, InboxStatus, Incoming, Outcome, Position,
    order::{self, Turn},
    parse::Read,
};
use crate::{backoff::RetryPolicy, faults::Switch};

/// Runs of one transaction that lost a race (deadlock, serialization failure) before its
/// deliveries are handed back to the broker instead.
const MAX_CONFLICT_RUNS: usize = 5;

impl Inbox {
    /// Handles one delivery: a batch of one ([`Self::receive_batch`]). `Some` means the
    /// outcome is committed and the delivery may be acked; `None` means nothing was
    /// recorded: do not ack.
    pub async fn receive(&self, incoming: Incoming) -> Option<Outcome> {
        self.receive_batch(vec![incoming]).await.pop().flatten()
    }

    /// Handles the deliveries that have arrived, the consumer's entry point (see the module
    /// docs). One entry per delivery, in their order: `Some` when its outcome is committed
    /// (ack it), `None` when nothing was recorded (hand it back to the broker).
    ///
    /// Each delivery gets a span (`inbox_receive`) that continues the sender's trace (the
    /// `traceparent` header), or starts one.
    pub async fn receive_batch(&self, batch: Vec<Incoming>) -> Vec<Option<Outcome>> {
        let mut results: Vec<Option<Outcome>> = vec![None; batch.len()];
        // Step 0: read every delivery; poison and too old ones are recorded on their own.
        let mut readable = Vec::with_capacity(batch.len());
        for (i, incoming) in batch.iter().enumerate() {
            let span = receive_span(incoming);
            match self.read(incoming, span.clone()).instrument(span).await {
                Ok(Read::Message(msg)) => readable.push((i, msg)),
                Ok(Read::Refused(outcome)) => results[i] = Some(outcome),
                Err(e) => {
                    tracing::warn!(message_id = ?incoming.message_id, error = %e, "could not record the delivery; handing it back to the broker")
                }
            }
        }
        // Steps 1 to 4. While the fail_handler teaching switch is armed every message
        // runs alone: the switch fails one message's run.
        let msgs: Vec<&InboxMessage> = readable.iter().map(|(_, m)| m).collect();
        let outcomes = if self.faults.armed(Switch::FailHandler) {
            let mut outcomes = Vec::with_capacity(msgs.len());
            for msg in &msgs {
                outcomes.extend(self.run_logged(std::slice::from_ref(msg)).await);
            }
            outcomes
        } else {
            self.run_logged(&msgs).await
        };
        for ((i, _), outcome) in readable.iter().zip(outcomes) {
            results[*i] = outcome;
        }
        for result in &results {
            self.count_delivery(result.as_ref());
        }
        results
    }

    /// Steps 1 to 4 for `msgs` ([`Self::run`]), one outcome each (`None`: nothing was
    /// recorded, the error logged). A handler that failed in a batch of more than one
    /// rolled it back; then each message runs again alone, as a batch of one. This
    /// fallback is the algorithm, not a shortcut: it is how a failure is recorded against
    /// its own message while the others are processed.
    async fn run_logged(&self, msgs: &[&InboxMessage]) -> Vec<Option<Outcome>> {
        if msgs.is_empty() {
            return Vec::new();
        }
        let redo_alone = match self.run(msgs).await {
            Ok(Some(outcomes)) => return outcomes.into_iter().map(Some).collect(),
            Ok(None) => msgs,
            Err(e) => {
                tracing::warn!(error = %e, deliveries = msgs.len(), "could not record the deliveries; handing them back to the broker");
                return vec![None; msgs.len()];
            }
        };
        let mut outcomes = Vec::with_capacity(msgs.len());
        for msg in redo_alone {
            let outcome = match self.run(std::slice::from_ref(msg)).await {
                Ok(outcome) => Some(
                    outcome
                        .and_then(|mut o| o.pop())
                        .expect("a batch of one records its handler's failure"),
                ),
                Err(e) => {
                    tracing::warn!(message_id = %msg.message_id, error = %e, "could not record the delivery; handing it back to the broker");
                    None
                }
            };
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Steps 1 to 4 in one transaction, run again when it loses a race
    /// ([`rerun_on_conflict`]). The outcomes are in `msgs`' order. `Ok(None)`: the handler
    /// failed in a batch of more than one and the transaction was rolled back.
    async fn run(&self, msgs: &[&InboxMessage]) -> sqlx::Result<Option<Vec<Outcome>>> {
        // A message alone runs in its own span; a batch in one of its own.
        let span = match msgs {
            [msg] => msg.span.clone(),
            _ => tracing::info_span!("inbox_batch", size = msgs.len()),
        };
        rerun_on_conflict(|| self.run_once(msgs).instrument(span.clone())).await
    }

    /// One run of [`Self::run`].
    async fn run_once(&self, msgs: &[&InboxMessage]) -> sqlx::Result<Option<Vec<Outcome>>> {
        // Lock-key order; within it, each aggregate's messages by number.
        let mut order: Vec<usize> = (0..msgs.len()).collect();
        let keys: Vec<Option<String>> = msgs.iter().map(|m| self.handler.lock_key(m)).collect();
        let place = |i: usize| msgs[i].position.as_ref().map(|p| (&p.aggregate_id, p.seq));
        order.sort_by(|&a, &b| {
            (&keys[a], place(a), msgs[a].message_id).cmp(&(&keys[b], place(b), msgs[b].message_id))
        });

        let mut tx = self.pool.begin().await?;
        // Step 1.
        let mut fresh = self.remember(&mut tx, msgs).await?;
        let mut outcomes = vec![Outcome::Duplicate; msgs.len()];
        let mut new = Vec::with_capacity(msgs.len());
        for i in order {
            // Removed when taken: a second copy in the same batch is a duplicate.
            if fresh.remove(&msgs[i].message_id) {
                new.push(i);
            }
        }
        // Step 1b: the numbered ones in their aggregate's order (see `order.rs`).
        let (new, parked, started) = self.sort_out(&mut tx, msgs, new).await?;
        let mut applied = BTreeMap::new();
        if !new.is_empty() {
            // Steps 2 and 3.
            let new_msgs: Vec<&InboxMessage> = new.iter().map(|&i| msgs[i]).collect();
            let Some(processed) = self
                .process(&mut tx, &new_msgs, InboxStatus::Processed)
                .await?
            else {
                tx.rollback().await?;
                return Ok(None);
            };
            for (i, outcome) in new.into_iter().zip(processed) {
                if outcome == Outcome::Processed
                    && let Some(p) = &msgs[i].position
                {
                    let last = applied.entry(p.aggregate_id.clone()).or_insert(p.seq);
                    *last = p.seq.max(*last);
                }
                outcomes[i] = outcome;
            }
        }
        // An aggregate started at 1 by `sort_out` is there already, and nothing is parked
        // behind it; one whose first message failed is taken back.
        for aggregate in &started {
            match applied.get(aggregate) {
                Some(1) => {
                    applied.remove(aggregate);
                }
                Some(_) => {}
                None => order::unstart(&mut tx, aggregate).await?,
            }
        }
        for i in parked {
            outcomes[i] = Outcome::Parked;
        }
        // The parked messages that are next now run too, each alone.
        let successors = self.advance(&mut tx, applied).await?;
        // Step 4. Copies alone commit too: they are counted on their messages' rows.
        tx.commit().await?;
        for outcome in &successors {
            self.counters.count(outcome);
        }
        for (msg, outcome) in msgs.iter().zip(&outcomes) {
            msg.span.in_scope(|| log_outcome(msg, outcome));
        }
        Ok(Some(outcomes))
    }

    /// Step 1b: of the new messages `new` (indexes into `msgs`, in handling order), those
    /// to handle now, those recorded `parked` (numbered, and early), and the aggregates
    /// started at 1 by this batch ([`order::start_positions`]). Those whose number was
    /// applied already are left `Duplicate`: not handled, noted on their rows. Locks the
    /// aggregates' positions; nothing to do when no message is numbered.
    async fn sort_out(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
        new: Vec<usize>,
    ) -> sqlx::Result<(Vec<usize>, Vec<usize>, HashSet<String>)> {
        let positions: Vec<&Position> = new
            .iter()
            .filter_map(|&i| msgs[i].position.as_ref())
            .collect();
        if positions.is_empty() {
            return Ok((new, Vec::new(), HashSet::new()));
        }
        let firsts: Vec<&str> = positions
            .iter()
            .filter(|p| p.seq == 1)
            .map(|p| p.aggregate_id.as_str())
            .collect();
        let started = if firsts.is_empty() {
            HashSet::new()
        } else {
            order::start_positions(tx, &firsts).await?
        };
        let others: Vec<&str> = positions
            .iter()
            .map(|p| p.aggregate_id.as_str())
            .filter(|a| !started.contains(*a))
            .collect();
        let mut applied = if others.is_empty() {
            HashMap::new()
        } else {
            order::lock_positions(tx, &others).await?
        };
        // Decided as from 0: the row's 1 is this batch's own, kept only if its message is.
        for aggregate in &started {
            applied.insert(aggregate.clone(), 0);
        }
        let (mut now, mut parked, mut late) = (Vec::new(), Vec::new(), Vec::new());
        for i in new {
            let Some(p) = &msgs[i].position else {
                now.push(i);
                continue;
            };
            let last = applied.entry(p.aggregate_id.clone()).or_default();
            match order::turn(*last, p.seq) {
                Turn::Now => {
                    *last = p.seq;
                    now.push(i);
                }
                Turn::Early => parked.push(i),
                Turn::Late => late.push(i),
            }
        }
        let ids = |is: &[usize]| is.iter().map(|&i| msgs[i].message_id).collect::<Vec<_>>();
        order::park(tx, &ids(&parked)).await?;
        order::drop_late(tx, &ids(&late)).await?;
        Ok((now, parked, started))
    }

    /// Step 1: one insert of every id (sorted, so concurrent batches lock them in one
    /// order), each row written as it reads when the handler succeeds (`processed`), so the
    /// common case costs one statement. Returns the ids that were new; the others are
    /// duplicates, each counted on its row (`duplicates`) by the same statement. A
    /// concurrent copy waits here for the first one's transaction.
    async fn remember(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> sqlx::Result<HashSet<Uuid>> {
        let ids: Vec<Uuid> = msgs.iter().map(|m| m.message_id).collect();
        let types: Vec<&str> = msgs.iter().map(|m| m.event_type.as_str()).collect();
        let payloads: Vec<&Value> = msgs.iter().map(|m| &m.payload).collect();
        let headers: Vec<&Value> = msgs.iter().map(|m| &m.headers).collect();
        let aggregates: Vec<Option<&str>> = msgs
            .iter()
            .map(|m| m.position.as_ref().map(|p| p.aggregate_id.as_str()))
            .collect();
        let seqs: Vec<Option<i64>> = msgs
            .iter()
            .map(|m| m.position.as_ref().map(|p| p.seq))
            .collect();
        // A new row has `duplicates = 0`; a known id's row counts one more copy.
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "WITH ins AS (
               INSERT INTO inbox (message_id, event_type, payload, headers, status, attempts, processed_at,
                                  aggregate_id, aggregate_seq)
               SELECT DISTINCT ON (m.id) m.id, m.event_type, m.payload, m.headers, $5, 1, clock_timestamp(),
                      m.aggregate_id, m.seq
               FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $6::text[], $7::bigint[])
                    AS m(id, event_type, payload, headers, aggregate_id, seq)
               ORDER BY m.id
               ON CONFLICT (message_id) DO UPDATE SET duplicates = inbox.duplicates + 1
               RETURNING message_id, duplicates = 0 AS fresh)
             SELECT message_id FROM ins WHERE fresh",
        )
        .bind(&ids)
        .bind(&types)
        .bind(&payloads)
        .bind(&headers)
        .bind(InboxStatus::Processed)
        .bind(&aggregates)
        .bind(&seqs)
        .fetch_all(&mut *tx)
        .await?;
        Ok(inserted.into_iter().collect())
    }

    /// Steps 2 and 3, shared by the first delivery and the retry sweeper: runs the handler
    /// over `msgs` (new in `tx`, in lock-key order) and writes what happened onto their
    /// rows, which read `row` until then. The caller commits.
    ///
    /// A batch of one runs inside a savepoint, so a failing handler leaves the transaction
    /// usable and the failure is recorded on the message's row. A larger batch runs without
    /// (optimistic): `None` when its handler failed, and the caller rolls back and runs
    /// each message alone.
    pub(crate) async fn process(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
        row: InboxStatus,
    ) -> sqlx::Result<Option<Vec<Outcome>>> {
        let started = std::time::Instant::now();
        let result = match msgs {
            [msg] => self.handle_alone(tx, msg).await?,
            _ => catch_panic(self.handler.handle(tx, msgs)).await,
        };
        // Each message's share of the handler time, once per message: a batch redone alone
        // is observed in its runs alone.
        if result.is_ok() || msgs.len() == 1 {
            let share = started.elapsed().as_secs_f64() / msgs.len() as f64;
            for _ in msgs {
                self.metrics.handler_duration.observe(share);
            }
        }
        match result.map_err(HandlerError::into_conflict) {
            Ok(()) => {
                if row != InboxStatus::Processed {
                    for msg in msgs {
                        record_processed(tx, msg).await?;
                    }
                }
                Ok(Some(vec![Outcome::Processed; msgs.len()]))
            }
            // A lost race is not the message's failure: the caller runs it again.
            Err(Ok(conflict)) => Err(conflict),
            Err(Err(e)) => match msgs {
                [msg] => Ok(Some(vec![
                    record_failure(tx, msg, &e, &self.cfg.retry).await?,
                ])),
                _ => {
                    tracing::debug!(reason = %e, "the batch is rolled back and its messages run alone");
                    Ok(None)
                }
            },
        }
    }

    /// The handler over one message, inside a savepoint of `tx`, so a failing handler
    /// leaves the transaction usable for recording the failure. The outer `Err` is a
    /// database error of the savepoint itself (the connection is gone).
    async fn handle_alone(
        &self,
        tx: &mut PgConnection,
        msg: &InboxMessage,
    ) -> sqlx::Result<Result<(), HandlerError>> {
        let mut savepoint = tx.begin().await?;
        let result = catch_panic(self.handler.handle(&mut savepoint, &[msg])).await;
        // Teaching fault: a run that did its work fails anyway, and is rolled back below.
        let result = result.and_then(|()| self.injected_failure());
        match result {
            Ok(()) => savepoint.commit().await?,
            Err(_) => savepoint.rollback().await?,
        }
        Ok(result)
    }

    /// The `fail_handler` teaching switch: `Err` when it takes this run.
    fn injected_failure(&self) -> Result<(), HandlerError> {
        if self.faults.take(Switch::FailHandler) {
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "handler failure injected by the teaching fault fail_handler"
            )));
        }
        Ok(())
    }
}

/// The span of one message's handling (`inbox_receive`): it continues the sender's trace
/// (the `traceparent` header), or starts one.
fn receive_span(incoming: &Incoming) -> tracing::Span {
    let span = tracing::info_span!(
        "inbox_receive",
        message_id = incoming.message_id.as_deref(),
        event_type = incoming.event_type.as_deref(),
        trace_id = tracing::field::Empty,
    );
    trace_context::continue_trace(
        &span,
        trace_context::from_message(&incoming.headers).as_ref(),
    );
    span
}

/// Runs one inbox transaction until it does not lose a race ([`is_conflict`]), at most
/// [`MAX_CONFLICT_RUNS`] times: a deadlock or serialization failure is nobody's failure,
/// so it is run again, never recorded against a message.
async fn rerun_on_conflict<T, F, Fut>(mut run: F) -> sqlx::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<T>>,
{
    let mut runs = 0;
    loop {
        runs += 1;
        match run().await {
            Err(e) if is_conflict(&e) && runs < MAX_CONFLICT_RUNS => {
                tracing::debug!(error = %e, "inbox transaction lost a race; running it again");
            }
            result => return result,
        }
    }
}

/// A deadlock or a serialization failure: the transaction lost a race with another one.
/// Running it again is the remedy; it says nothing about the message.
fn is_conflict(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

impl HandlerError {
    /// The database error under a transient failure, when it is a lost race
    /// ([`is_conflict`]): the caller runs the transaction again instead of recording it.
    fn into_conflict(self) -> Result<sqlx::Error, HandlerError> {
        match self {
            HandlerError::Transient(e)
                if e.chain()
                    .any(|c| c.downcast_ref::<sqlx::Error>().is_some_and(is_conflict)) =>
            {
                e.downcast::<sqlx::Error>().map_err(HandlerError::Transient)
            }
            other => Err(other),
        }
    }
}

/// Runs a handler, a panic turned into a failed attempt like any other: caught here, it is
/// rolled back, counted and retried, instead of killing the consumer or sweeper task with it.
async fn catch_panic(
    run: impl std::future::Future<Output = Result<(), HandlerError>>,
) -> Result<(), HandlerError> {
    AssertUnwindSafe(run)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(HandlerError::Transient(anyhow::anyhow!(
                "handler panicked: {what}"
            )))
        })
}

/// Marks a retried message `processed` (in the caller's transaction).
async fn record_processed(tx: &mut PgConnection, msg: &InboxMessage) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE inbox SET status = $3, attempts = $2, processed_at = clock_timestamp(),
                next_attempt_at = NULL
         WHERE message_id = $1",
    )
    .bind(msg.message_id)
    .bind(msg.attempt)
    .bind(InboxStatus::Processed)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Step 3: writes a handler failure onto the message's inbox row (in the caller's
/// transaction): `failed` with a backed-off next attempt, or `dead` when permanent or
/// exhausted. `clock_timestamp()`, not `now()`: the backoff counts from the failure, not
/// from the start of a transaction that may have run for a while.
async fn record_failure(
    tx: &mut PgConnection,
    msg: &InboxMessage,
    error: &HandlerError,
    policy: &RetryPolicy,
) -> sqlx::Result<Outcome> {
    let dead = matches!(error, HandlerError::Permanent(_)) || policy.exhausted(msg.attempt);
    let text = error.to_string();
    sqlx::query(
        "UPDATE inbox SET attempts = $2, last_error = $3, processed_at = NULL, status = $6,
                next_attempt_at = CASE WHEN $4 THEN NULL ELSE clock_timestamp() + make_interval(secs => $5) END
         WHERE message_id = $1",
    )
    .bind(msg.message_id)
    .bind(msg.attempt)
    .bind(&text)
    .bind(dead)
    .bind(policy.delay(msg.attempt).as_secs_f64())
    .bind(if dead {
        InboxStatus::Dead
    } else {
        InboxStatus::Failed
    })
    .execute(&mut *tx)
    .await?;
    Ok(if dead {
        Outcome::Dead { reason: text }
    } else {
        Outcome::Failed {
            attempts: msg.attempt,
            error: text,
        }
    })
}

/// One line per recorded outcome. The message's id comes with the caller's span
/// (`inbox_receive` or the sweeper's `inbox_retry`).
pub(super) fn log_outcome(msg: &InboxMessage, outcome: &Outcome) {
    let attempt = msg.attempt;
    match outcome {
        Outcome::Processed if attempt > 1 => {
            tracing::info!(attempt, "retried message processed")
        }
        Outcome::Processed => tracing::debug!(attempt, "message processed"),
        Outcome::Parked => {
            tracing::info!("message parked until its aggregate's previous message is applied")
        }
        Outcome::Duplicate => tracing::info!("duplicate message dropped by the inbox"),
        Outcome::Failed { error, .. } => {
            tracing::warn!(attempt, %error, "message failed; the retry sweeper will run it again")
        }
        Outcome::Dead { reason } => tracing::error!(attempt, %reason, "message is dead"),
        Outcome::Poison { .. } => {}
    }
}
