//! The idempotent inbox: every message is processed once, however often it arrives.
//!
//! # The problem
//! The outbox delivers at least once: a relay that crashed after the broker stored a
//! message publishes it again; RabbitMQ redelivers whatever was unacked when a consumer's
//! connection dropped. A consumer that debits an account per delivery debits twice.
//!
//! # The mechanism
//! [`Inbox::receive`] first reads the delivery (an unreadable one is poison, see below),
//! then runs a single database transaction:
//!
//! 1. `INSERT` the message id into `inbox`. If the id is already there, the message was
//!    handled (or is owned by the retry sweeper): the delivery is a duplicate and is
//!    dropped, counted on the row (`duplicates`) by the same statement's `ON CONFLICT`. Two copies arriving *concurrently* are
//!    serialised by the primary key: the second insert waits for the first transaction and
//!    then sees the conflict.
//! 2. Run the service's [`MessageHandler`] on the same transaction, inside a savepoint: the
//!    business effect (debit, payment, reply in the outbox) commits together with the
//!    inbox row or not at all.
//! 3. If the handler fails, roll back to the savepoint and record the failure on the inbox
//!    row instead: `failed` with attempts and a backed-off next attempt (a technical error),
//!    or `dead` (a permanent one). The [`retry_sweeper`] re-runs `failed` rows through the
//!    same steps 2 and 3 (`Inbox::process`): one code path decides what a run records.
//! 4. Commit. Only then does the consumer ack the delivery.
//!
//! A message that cannot even be read (no message id, not JSON, wrong content type, too
//! large) is *poison*: it is recorded `dead` with its reason and raw body, acked, and the
//! next message goes on. Nothing loops, nothing blocks the queue.
//!
//! If even recording fails (the database is down), nothing was committed: the delivery is
//! not acked but handed back to the broker, which redelivers it later.
//!
//! # Batches
//! Under load the consumer hands over several deliveries at once ([`Inbox::receive_batch`]):
//! the same steps, for all of them in ONE transaction, so a batch of N costs one `BEGIN`, one
//! dedup `INSERT` of all the ids, the handlers' own statements and one `COMMIT` (one flush to
//! disk) instead of N of each. It is optimistic: the handlers run without savepoints, and if
//! any of them fails, the whole batch is rolled back and redone message by message through
//! the steps above, so a failing message is recorded and retried alone and the others are
//! processed. Locks are taken in one order in every batch (ids sorted in the insert, then the
//! handlers sorted by [`MessageHandler::lock_key`]), so two batches do not deadlock; if they
//! still do (or any transaction hits a serialization failure), that is a lost race, not a
//! failure of the message: the transaction is rolled back and run again. A batch whose commit
//! fails records nothing, and every one of its deliveries is handed back.
//!
//! With `DEMO_FAULTS=1` the [teaching switch](crate::faults) `fail_handler` turns a
//! finished handler run into a failure in step 3, rolled back like any other.
//!
//! The inbox remembers ids for `INBOX_RETENTION_SECS` (see [`crate::retention`]). A message
//! created before that window (its AMQP `timestamp`) may be a copy of one already processed
//! and forgotten: it is recorded `dead`, not processed, and an operator decides
//! ([`requeue_dead`]).

pub mod consumer;
pub mod retry_sweeper;

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::FutureExt;
use serde_json::Value;
use sqlx::{
    Acquire, PgConnection, PgExecutor, PgPool, Postgres, postgres::PgArguments, query::Query,
};
use tracing::Instrument;
use uuid::Uuid;

pub use crate::status::InboxStatus;
use crate::{
    backoff::RetryPolicy,
    faults::{Faults, Switch},
    metrics::MessageTableMetrics,
};
pub use consumer::Incoming;

/// A message as the handler sees it.
#[derive(Debug, Clone)]
pub struct InboxMessage {
    pub message_id: Uuid,
    pub event_type: String,
    pub payload: Value,
    pub headers: Value,
    /// 1 on the first delivery, then 2, 3… on the sweeper's retries.
    pub attempt: i32,
    /// The span of this message's handling (`inbox_receive`, or the sweeper's
    /// `inbox_retry`), which continues the sender's trace: a [`MessageHandler::handle_batch`]
    /// writes each message's log lines inside its own span.
    pub span: tracing::Span,
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (database error, a dependency down): `failed`, retried with backoff.
    #[error("{0:#}")]
    Transient(#[from] anyhow::Error),
    /// Will never succeed (a payload the handler cannot understand): `dead` at once.
    #[error("{0}")]
    Permanent(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Transient(e.into())
    }
}

/// A service's business logic for incoming messages. It gets the inbox's transaction:
/// everything it writes commits atomically with the "processed" mark.
///
/// Business outcomes (insufficient funds…) are *not* errors: the handler records them and
/// returns `Ok`. Errors are for "could not do the work".
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    async fn handle(&self, tx: &mut PgConnection, msg: &InboxMessage) -> Result<(), HandlerError>;

    /// The key of the row this message's handler locks (pay: the account's user id). A
    /// batch runs its handlers in the order of these keys, so concurrent batches take their
    /// locks in one order and do not deadlock. `None` (the default): message id order.
    fn lock_key(&self, _msg: &InboxMessage) -> Option<String> {
        None
    }

    /// Handles the new messages of a batch, in this order (sorted by [`Self::lock_key`]),
    /// on the batch's transaction. The default runs [`Self::handle`] for each; a handler
    /// may do the same work in fewer statements. Any `Err` rolls the whole batch back, and
    /// the inbox redoes it message by message through [`Self::handle`], so a failure is
    /// recorded against its own message.
    async fn handle_batch(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError> {
        for msg in msgs {
            self.handle(tx, msg).instrument(msg.span.clone()).await?;
        }
        Ok(())
    }
}

/// What happened to one delivery. Every variant means "safe to ack".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Processed,
    /// The id was already in the inbox: no effect.
    Duplicate,
    /// A technical failure, recorded; the retry sweeper takes it from here.
    Failed {
        attempts: i32,
        error: String,
    },
    /// Will not be retried (permanent error or attempts exhausted).
    Dead {
        reason: String,
    },
    /// Unreadable; recorded dead with its raw body.
    Poison {
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct InboxConfig {
    /// Deliveries the broker may push ahead, and how many are processed at once.
    pub prefetch: u16,
    /// Most deliveries handled in one transaction. A batch is whatever has arrived when a
    /// transaction can start, never a wait for more: at low rates it is one message.
    pub batch_size: usize,
    pub retry: RetryPolicy,
    /// Longest sleep of the retry sweeper between looks at the table.
    pub poll_interval: Duration,
    /// Larger bodies are poison.
    pub max_body_bytes: usize,
    /// How long a `processed` row (the memory of a message id) is kept. Must cover the
    /// redelivery horizon (checked at start-up, see [`crate::retention`]); a message created
    /// before this window is refused as `dead` rather than risk processing it twice.
    pub retention: Duration,
}

impl InboxConfig {
    /// The rules a usable inbox configuration follows (checked by the service builder).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.prefetch > 0, "INBOX_PREFETCH must be > 0");
        anyhow::ensure!(self.batch_size > 0, "INBOX_BATCH_SIZE must be > 0");
        anyhow::ensure!(
            self.retry.max_attempts > 0,
            "INBOX_MAX_ATTEMPTS must be > 0"
        );
        Ok(())
    }
}

/// The dedup insert's end: a known id is a duplicate, counted on its row (`duplicates`) in
/// the same statement, so the count costs no extra statement; `fresh` is true for a new row.
macro_rules! dedup_conflict {
    () => {
        " ON CONFLICT (message_id) DO UPDATE SET duplicates = inbox.duplicates + 1
          RETURNING message_id, duplicates = 0 AS fresh"
    };
}

/// Clocks of the sending and receiving services may differ by this much.
const CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(300);

/// Raw bodies of poison messages are kept up to this size, for a human to look at.
const MAX_KEPT_RAW_BODY: usize = 64 * 1024;

/// Runs of one transaction that lost a race (deadlock, serialization failure) before its
/// deliveries are handed back to the broker instead.
const MAX_CONFLICT_RUNS: usize = 5;

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
pub fn is_conflict(e: &sqlx::Error) -> bool {
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

impl Outcome {
    /// The `outcome` label of the inbox metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::Duplicate => "duplicate",
            Outcome::Failed { .. } => "failed",
            Outcome::Dead { .. } => "dead",
            Outcome::Poison { .. } => "poison",
        }
    }
}

/// Outcome counts since start: how many duplicates the inbox dropped, how many messages
/// failed or died. Read by tests, the chaos script and `/admin/stats`; the Prometheus
/// metrics ([`crate::metrics`]) count deliveries and retries apart.
#[derive(Debug, Default)]
pub struct InboxCounters {
    pub processed: AtomicU64,
    pub duplicates: AtomicU64,
    pub failed: AtomicU64,
    pub dead: AtomicU64,
    pub poison: AtomicU64,
    /// Deliveries whose outcome could not be recorded (database unreachable): not acked,
    /// handed back to the broker.
    pub unrecorded: AtomicU64,
}

impl InboxCounters {
    pub(crate) fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Processed => &self.processed,
            Outcome::Duplicate => &self.duplicates,
            Outcome::Failed { .. } => &self.failed,
            Outcome::Dead { .. } => &self.dead,
            Outcome::Poison { .. } => &self.poison,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as plain numbers.
    pub fn snapshot(&self) -> InboxCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        InboxCounts {
            processed: get(&self.processed),
            duplicates: get(&self.duplicates),
            failed: get(&self.failed),
            dead: get(&self.dead),
            poison: get(&self.poison),
            unrecorded: get(&self.unrecorded),
        }
    }
}

/// A reading of [`InboxCounters`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct InboxCounts {
    pub processed: u64,
    pub duplicates: u64,
    pub failed: u64,
    pub dead: u64,
    pub poison: u64,
    pub unrecorded: u64,
}

/// The inbox of one service: its pool, its handler, its settings and its counters. Cheap
/// to clone (the consumer and the retry sweeper each hold one).
#[derive(Clone)]
pub struct Inbox {
    pool: PgPool,
    handler: Arc<dyn MessageHandler>,
    cfg: InboxConfig,
    counters: Arc<InboxCounters>,
    metrics: Arc<MessageTableMetrics>,
    faults: Faults,
}

impl Inbox {
    pub fn new(pool: PgPool, handler: Arc<dyn MessageHandler>, cfg: InboxConfig) -> Self {
        Self {
            pool,
            handler,
            cfg,
            counters: Arc::default(),
            metrics: Arc::default(),
            faults: Faults::off(),
        }
    }

    /// Obeys these teaching switches (`DEMO_FAULTS`; by default none); so do the consumer
    /// and the retry sweeper built from this inbox.
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Counts into `metrics` (by default into an unregistered set nobody reads); the
    /// retry sweeper built from this inbox does too.
    pub fn with_metrics(mut self, metrics: Arc<MessageTableMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn counters(&self) -> Arc<InboxCounters> {
        self.counters.clone()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn handler(&self) -> Arc<dyn MessageHandler> {
        self.handler.clone()
    }

    pub fn config(&self) -> &InboxConfig {
        &self.cfg
    }

    /// Handles one delivery (see the module docs). `Ok` means the outcome is committed and
    /// the delivery may be acked; `Err` means nothing was recorded: do not ack.
    ///
    /// Its span (`inbox_receive`) continues the sender's trace (the `traceparent` header),
    /// or starts one.
    pub async fn receive(&self, incoming: Incoming) -> sqlx::Result<Outcome> {
        let span = receive_span(
            incoming.message_id.as_deref(),
            incoming.event_type.as_deref(),
            &incoming.headers,
        );
        let outcome = self.receive_uncounted(incoming).instrument(span).await;
        self.count(outcome.as_ref().ok());
        outcome
    }

    /// Counts one delivery's outcome; `None`: nothing could be recorded.
    fn count(&self, outcome: Option<&Outcome>) {
        match outcome {
            Some(o) => self.counters.count(o),
            None => {
                self.counters.unrecorded.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.metrics.delivery(outcome);
    }

    async fn receive_uncounted(&self, incoming: Incoming) -> sqlx::Result<Outcome> {
        let mut msg = match self.parse(&incoming) {
            Ok(msg) => msg,
            Err(poison) => return self.record_poison(&incoming, poison).await,
        };
        msg.span = tracing::Span::current();
        if let Some(reason) = self.older_than_memory(&incoming) {
            return self.record_too_old(&msg, reason).await;
        }
        rerun_on_conflict(|| self.receive_once(&msg)).await
    }

    /// Steps 1 to 4 for one readable message, in one transaction.
    async fn receive_once(&self, msg: &InboxMessage) -> sqlx::Result<Outcome> {
        let mut tx = self.pool.begin().await?;
        if !self.remember(&mut tx, msg).await? {
            // Committed: the copy is counted on the message's row.
            tx.commit().await?;
            tracing::info!("duplicate message dropped by the inbox");
            return Ok(Outcome::Duplicate);
        }
        let outcome = self.process(&mut tx, msg, InboxStatus::Processed).await?;
        tx.commit().await?;
        log_outcome(msg, &outcome);
        Ok(outcome)
    }

    /// Handles several deliveries in one transaction (see the module docs, "Batches"). One
    /// entry per delivery, in their order: `Some` when its outcome is committed (ack it),
    /// `None` when nothing was recorded (hand it back to the broker).
    pub async fn receive_batch(&self, batch: Vec<Incoming>) -> Vec<Option<Outcome>> {
        let mut results: Vec<Option<Outcome>> = vec![None; batch.len()];
        // Unreadable and too old deliveries, and everything while the fail_handler
        // teaching switch is armed, take the one-by-one path: they are rare, and it
        // records each of them on its own.
        let alone = batch.len() == 1 || self.faults.armed(Switch::FailHandler);
        let mut together = Vec::with_capacity(batch.len());
        for (i, incoming) in batch.into_iter().enumerate() {
            match self.parse(&incoming) {
                Ok(mut msg) if !alone && self.older_than_memory(&incoming).is_none() => {
                    msg.span = receive_span(
                        incoming.message_id.as_deref(),
                        incoming.event_type.as_deref(),
                        &incoming.headers,
                    );
                    together.push((i, incoming, msg))
                }
                _ => results[i] = self.receive_logged(incoming).await,
            }
        }
        if together.len() == 1 {
            let (i, incoming, _) = together.pop().expect("one");
            results[i] = self.receive_logged(incoming).await;
        }
        if together.is_empty() {
            return results;
        }

        let msgs: Vec<&InboxMessage> = together.iter().map(|(_, _, m)| m).collect();
        let span = tracing::info_span!("inbox_batch", size = msgs.len());
        let outcome = rerun_on_conflict(|| self.run_batch(&msgs).instrument(span.clone())).await;
        match outcome {
            Ok(Some(outcomes)) => {
                for ((i, _, msg), outcome) in together.into_iter().zip(outcomes) {
                    msg.span.in_scope(|| log_outcome(&msg, &outcome));
                    self.count(Some(&outcome));
                    results[i] = Some(outcome);
                }
            }
            // A handler failed: nothing was committed; each message on its own records
            // the failure against that message alone.
            Ok(None) => {
                for (i, incoming, _) in together {
                    results[i] = self.receive_logged(incoming).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, deliveries = together.len(), "could not record a batch; handing its deliveries back to the broker");
                for _ in &together {
                    self.count(None);
                }
            }
        }
        results
    }

    /// [`Self::receive`], its error logged: `None` when nothing was recorded.
    async fn receive_logged(&self, incoming: Incoming) -> Option<Outcome> {
        let message_id = incoming.message_id.clone();
        self.receive(incoming)
            .await
            .inspect_err(|e| tracing::warn!(?message_id, error = %e, "could not record the delivery; handing it back to the broker"))
            .ok()
    }

    /// One run of a batch: the dedup insert of every id, the handler on the new ones in
    /// lock-key order, no savepoints, one commit. The outcomes are in `msgs`' order.
    /// `Ok(None)`: a handler failed and the transaction was rolled back.
    async fn run_batch(&self, msgs: &[&InboxMessage]) -> sqlx::Result<Option<Vec<Outcome>>> {
        let mut order: Vec<usize> = (0..msgs.len()).collect();
        let keys: Vec<Option<String>> = msgs.iter().map(|m| self.handler.lock_key(m)).collect();
        order.sort_by(|&a, &b| (&keys[a], msgs[a].message_id).cmp(&(&keys[b], msgs[b].message_id)));

        let mut tx = self.pool.begin().await?;
        let mut fresh = self.remember_all(&mut tx, msgs).await?;
        let mut outcomes = vec![Outcome::Duplicate; msgs.len()];
        let mut new = Vec::with_capacity(msgs.len());
        for i in order {
            // Removed when taken: a second copy in the same batch is a duplicate.
            if fresh.remove(&msgs[i].message_id) {
                outcomes[i] = Outcome::Processed;
                new.push(msgs[i]);
            }
        }
        if !new.is_empty() {
            let started = std::time::Instant::now();
            let result = catch_panic(self.handler.handle_batch(&mut tx, &new)).await;
            // Each message's share of the batch's handler time.
            let share = started.elapsed().as_secs_f64() / new.len() as f64;
            for _ in &new {
                self.metrics.handler_duration.observe(share);
            }
            match result.map_err(HandlerError::into_conflict) {
                Ok(()) => {}
                Err(Ok(conflict)) => return Err(conflict),
                Err(Err(e)) => {
                    tracing::debug!(error = %e, "a handler failed in a batch; redoing the batch one by one");
                    tx.rollback().await?;
                    return Ok(None);
                }
            }
        }
        tx.commit().await?;
        Ok(Some(outcomes))
    }

    /// Step 1 for a batch: one insert of every id (sorted, so concurrent batches lock
    /// them in one order), rows written as they read when the handlers succeed. Returns
    /// the ids that were new.
    async fn remember_all(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> sqlx::Result<std::collections::HashSet<Uuid>> {
        let ids: Vec<Uuid> = msgs.iter().map(|m| m.message_id).collect();
        let types: Vec<&str> = msgs.iter().map(|m| m.event_type.as_str()).collect();
        let payloads: Vec<&Value> = msgs.iter().map(|m| &m.payload).collect();
        let headers: Vec<&Value> = msgs.iter().map(|m| &m.headers).collect();
        // A known id counts one more copy on its row (`dedup_conflict!`); only new ids return.
        let inserted: Vec<Uuid> = sqlx::query_scalar(concat!(
            "WITH ins AS (
             INSERT INTO inbox (message_id, event_type, payload, headers, status, attempts, processed_at)
             SELECT DISTINCT ON (m.id) m.id, m.event_type, m.payload, m.headers, $5, 1, clock_timestamp()
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[]) AS m(id, event_type, payload, headers)
             ORDER BY m.id",
            dedup_conflict!(),
            ") SELECT message_id FROM ins WHERE fresh"
        ))
        .bind(&ids)
        .bind(&types)
        .bind(&payloads)
        .bind(&headers)
        .bind(InboxStatus::Processed)
        .fetch_all(&mut *tx)
        .await?;
        Ok(inserted.into_iter().collect())
    }

    /// Reads the delivery; `Err` is why it is poison.
    fn parse(&self, incoming: &Incoming) -> Result<InboxMessage, String> {
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
            headers: incoming.headers.clone(),
            attempt: 1,
            span: tracing::Span::none(),
        })
    }

    async fn record_poison(&self, incoming: &Incoming, reason: String) -> sqlx::Result<Outcome> {
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

    async fn record_too_old(&self, msg: &InboxMessage, reason: String) -> sqlx::Result<Outcome> {
        let insert = sqlx::query(
            "INSERT INTO inbox (message_id, event_type, payload, headers, status, attempts, last_error)
             VALUES ($1, $2, $3, $4, $6, 0, $5)
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(msg.message_id)
        .bind(&msg.event_type)
        .bind(&msg.payload)
        .bind(&msg.headers)
        .bind(&reason);
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

    /// Step 1: inserts the message's row, written as it reads when the handler succeeds
    /// (`processed`), so the common case costs one statement. False when the id is already
    /// there: a duplicate. A concurrent copy waits here for the first one's transaction.
    async fn remember(&self, tx: &mut PgConnection, msg: &InboxMessage) -> sqlx::Result<bool> {
        sqlx::query_as(concat!(
            "INSERT INTO inbox (message_id, event_type, payload, headers, status, attempts, processed_at)
             VALUES ($1, $2, $3, $4, $5, 1, clock_timestamp())",
            dedup_conflict!()
        ))
        .bind(msg.message_id)
        .bind(&msg.event_type)
        .bind(&msg.payload)
        .bind(&msg.headers)
        .bind(InboxStatus::Processed)
        .fetch_one(&mut *tx)
        .await
        .map(|(_, fresh): (Uuid, bool)| fresh)
    }

    /// Steps 2 and 3, shared by the first delivery and the retry sweeper: runs the handler
    /// on `tx` inside a savepoint and writes what happened onto the message's row, which
    /// reads `row` until then. The caller commits.
    pub(crate) async fn process(
        &self,
        tx: &mut PgConnection,
        msg: &InboxMessage,
        row: InboxStatus,
    ) -> sqlx::Result<Outcome> {
        let started = std::time::Instant::now();
        let result = run_handler(self.handler.as_ref(), tx, msg, &self.faults).await?;
        self.metrics
            .handler_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                if row != InboxStatus::Processed {
                    record_processed(tx, msg).await?;
                }
                Ok(Outcome::Processed)
            }
            Err(e) => match e.into_conflict() {
                // A lost race is not the message's failure: the caller runs it again.
                Ok(conflict) => Err(conflict),
                Err(e) => record_failure(tx, msg, &e, &self.cfg.retry).await,
            },
        }
    }
}

/// The span of one message's handling (`inbox_receive`): it continues the sender's trace
/// (the `traceparent` header), or starts one.
fn receive_span(
    message_id: Option<&str>,
    event_type: Option<&str>,
    headers: &Value,
) -> tracing::Span {
    let span = tracing::info_span!(
        "inbox_receive",
        message_id,
        event_type,
        trace_id = tracing::field::Empty,
    );
    common::trace::continue_trace(&span, common::trace::from_message(headers).as_ref());
    span
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

/// Runs the handler inside a savepoint of `tx`, so a failing handler leaves the
/// transaction usable for recording the failure. The outer `Err` is a database error of
/// the savepoint itself (the connection is gone).
async fn run_handler(
    handler: &dyn MessageHandler,
    tx: &mut PgConnection,
    msg: &InboxMessage,
    faults: &Faults,
) -> sqlx::Result<Result<(), HandlerError>> {
    let mut savepoint = tx.begin().await?;
    let result = catch_panic(handler.handle(&mut savepoint, msg)).await;
    // Teaching fault: a run that did its work fails anyway, and is rolled back below.
    let result = result.and_then(|()| injected_failure(faults));
    match result {
        Ok(()) => {
            savepoint.commit().await?;
            Ok(Ok(()))
        }
        Err(e) => {
            savepoint.rollback().await?;
            Ok(Err(e))
        }
    }
}

/// The `fail_handler` teaching switch: `Err` when it takes this run.
fn injected_failure(faults: &Faults) -> Result<(), HandlerError> {
    if faults.take(Switch::FailHandler) {
        return Err(HandlerError::Transient(anyhow::anyhow!(
            "handler failure injected by the teaching fault fail_handler"
        )));
    }
    Ok(())
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

/// Writes a handler failure onto the message's inbox row (in the caller's transaction):
/// `failed` with a backed-off next attempt, or `dead` when permanent or exhausted.
/// `clock_timestamp()`, not `now()`: the backoff counts from the failure, not from the
/// start of a transaction that may have run for a while.
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
fn log_outcome(msg: &InboxMessage, outcome: &Outcome) {
    let attempt = msg.attempt;
    match outcome {
        Outcome::Processed if attempt > 1 => {
            tracing::info!(attempt, "retried message processed")
        }
        Outcome::Processed => tracing::debug!(attempt, "message processed"),
        Outcome::Failed { error, .. } => {
            tracing::warn!(attempt, %error, "message failed; the retry sweeper will run it again")
        }
        Outcome::Dead { reason } => tracing::error!(attempt, %reason, "message is dead"),
        Outcome::Duplicate | Outcome::Poison { .. } => {}
    }
}

/// Puts a `dead` message back for the retry sweeper (attempts reset). Poison messages,
/// which have no parsed payload, cannot be requeued. Returns false when nothing matched.
pub async fn requeue_dead(db: impl PgExecutor<'_>, message_id: Uuid) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "UPDATE inbox SET status = $2, attempts = 0, next_attempt_at = now(),
                last_error = 'requeued by operator; was: ' || coalesce(last_error, '')
         WHERE message_id = $1 AND status = $3 AND payload IS NOT NULL",
    )
    .bind(message_id)
    .bind(InboxStatus::Failed)
    .bind(InboxStatus::Dead)
    .execute(db)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Rows per status, for `/admin/stats`, metrics and tests.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct InboxStats {
    pub processed: i64,
    pub failed: i64,
    pub dead: i64,
}

pub async fn stats(db: impl PgExecutor<'_>) -> sqlx::Result<InboxStats> {
    let (processed, failed, dead): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = $1),
                count(*) FILTER (WHERE status = $2),
                count(*) FILTER (WHERE status = $3)
         FROM inbox",
    )
    .bind(InboxStatus::Processed)
    .bind(InboxStatus::Failed)
    .bind(InboxStatus::Dead)
    .fetch_one(db)
    .await?;
    Ok(InboxStats {
        processed,
        failed,
        dead,
    })
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

/// How many rows are in `status`.
pub async fn count_by_status(db: impl PgExecutor<'_>, status: InboxStatus) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM inbox WHERE status = $1")
        .bind(status)
        .fetch_one(db)
        .await
}
