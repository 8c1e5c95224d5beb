//! The idempotent inbox: every message is processed once, however often it arrives.
//!
//! # The problem
//! The outbox delivers at least once: a relay that crashed after the broker stored a
//! message publishes it again; RabbitMQ redelivers whatever was unacked when a consumer's
//! connection dropped. A consumer that debits an account per delivery debits twice.
//!
//! # The mechanism
//! The consumer hands over whatever deliveries have arrived, often just one, to
//! [`Inbox::receive_batch`] (`receive.rs`); [`Inbox::receive`] is a batch of one. In the
//! order they run:
//!
//! 0. **Read** each delivery (`Inbox::read`, `parse.rs`). One that cannot be read (no
//!    message id, not JSON, wrong content type, too large) is *poison*: it is recorded
//!    `dead` with its reason and raw body (`Inbox::record_poison`), acked, and the next
//!    message goes on. Nothing loops, nothing blocks the queue. One created before the
//!    inbox's memory is recorded `dead` too (`Inbox::record_dead`, see below).
//!
//! Then ONE database transaction for the readable messages (`Inbox::run`):
//!
//! 1. **Remember** (`Inbox::remember`): one `INSERT` of every message id into `inbox`. An
//!    id already there was handled (or is owned by the retry sweeper): that delivery is a
//!    duplicate and is dropped, counted on its row (`duplicates`) by the same statement's
//!    `ON CONFLICT … DO UPDATE`, so a person sees how many copies each message had. Two copies arriving
//!    *concurrently* are serialised by the primary key: the second insert waits for the
//!    first transaction and then sees the conflict.
//!
//!    Then **put in order** (`Inbox::sort_out`, `order.rs`): when some new message is numbered
//!    within its aggregate (headers `aggregate_id`, `x-aggregate-seq`), its aggregate's
//!    `inbox_sequences` row is locked (`order::lock_positions`, sorted), and the message is
//!    handled only in its turn (`order::turn`); one that came early is recorded `parked`
//!    (`order::park`) and acked, one whose number was applied already is a duplicate. See
//!    "Order per aggregate" below.
//! 2. **Handle** (`Inbox::process`): the service's [`MessageHandler`] runs over the new
//!    messages on the same transaction, so the business effect (debit, payment, reply in
//!    the outbox) commits together with the inbox rows or not at all.
//! 3. **Record a failure** (`record_failure`): a batch of one runs its handler inside a
//!    savepoint; if it fails, the savepoint is rolled back and the failure written on the
//!    message's row instead: `failed` with attempts and a backed-off next attempt (a
//!    technical error), or `dead` (a permanent one). A larger batch runs without
//!    savepoints (optimistic); if its handler fails, the whole transaction is rolled back
//!    and every message is run again alone, as a batch of one, so a failure is recorded
//!    against its own message and the others are processed.
//!
//!    Then **go on in order** (`Inbox::advance`): the numbered messages handled move their
//!    aggregates' positions, and the parked messages that are then next run, each alone,
//!    in order, in the same transaction.
//! 4. **Commit.** Only then does the consumer ack the deliveries.
//!
//! The [`retry_sweeper`] re-runs `failed` rows through the same steps 2 to 4
//! (`Inbox::process`, a batch of one): one code path decides what a run records.
//!
//! # Order per aggregate
//! Messages about one aggregate (an order) are applied in the order their sender numbered
//! them; different aggregates in parallel, and unnumbered messages as they come. The
//! aggregate's `inbox_sequences` row lock serialises the transactions that decide about
//! it, so a message parked by one is seen by the next one that applies its predecessor. A
//! `failed` or `dead` message keeps its successors parked until it succeeds (the retry
//! sweeper, or an operator's requeue); the sweeper then applies them, and each of its
//! rounds also applies any parked message whose predecessor is applied
//! (`Inbox::apply_stranded`), a safety net. The batch path hands the handler its messages
//! by lock key, then by aggregate and number, so one aggregate's messages in a batch are
//! applied in order; a handler's [`MessageHandler::lock_key`] should be the same for all
//! messages of one aggregate.
//!
//! If even recording fails (the database is down), nothing was committed: the deliveries
//! are not acked but handed back to the broker, which redelivers them later.
//!
//! # Why batches
//! Under load a batch of N costs one `BEGIN`, one dedup `INSERT` of all the ids, the
//! handler's own statements and one `COMMIT` (one flush to disk) instead of N of each.
//! Locks are taken in one order in every batch (ids sorted in the insert, then the
//! messages sorted by [`MessageHandler::lock_key`]), so two batches do not deadlock; if
//! they still do (or any transaction hits a serialization failure), that is a lost race,
//! not a failure of the message: the transaction is rolled back and run again
//! (`rerun_on_conflict`). A batch whose commit fails records nothing, and every one of its
//! deliveries is handed back.
//!
//! With `DEMO_FAULTS=1` the [teaching switch](crate::faults) `fail_handler` turns a
//! finished handler run into a failure in step 3, rolled back like any other; while it is
//! armed, every message runs alone.
//!
//! What breaks the consumer *outside* this algorithm (the process crashes on a message, or
//! the database cannot record it for long) is bounded by the broker: a quorum queue
//! dead-letters a message handed back more than its delivery limit, and [`dead_letters`]
//! records it here as `dead` with the broker's reason, requeueable like any dead row.
//!
//! The inbox remembers ids for `INBOX_RETENTION_SECS` (see [`crate::retention`]). A message
//! created before that window (its AMQP `timestamp`) may be a copy of one already processed
//! and forgotten: it is recorded `dead`, not processed, and an operator decides
//! ([`requeue_dead`]).

mod admin;
pub mod consumer;
mod counters;
pub mod dead_letters;
mod order;
mod parse;
mod receive;
pub mod retry_sweeper;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use crate::status::InboxStatus;
use crate::{backoff::RetryPolicy, faults::Faults, metrics::MessageTableMetrics};
pub use admin::{InboxStats, parked, requeue_dead, stats, status_of};
pub use consumer::Incoming;
pub use counters::{InboxCounters, InboxCounts};

/// A message as the handler sees it.
#[derive(Debug, Clone)]
pub struct InboxMessage {
    pub message_id: Uuid,
    pub event_type: String,
    pub payload: Value,
    pub headers: Value,
    /// 1 on the first delivery, then 2, 3… on the sweeper's retries.
    pub attempt: i32,
    /// Its place among its aggregate's messages, when the sender numbered it (the
    /// `aggregate_id` and `x-aggregate-seq` headers): applied in that order.
    pub position: Option<Position>,
    /// The span of this message's handling (`inbox_receive`, or the sweeper's
    /// `inbox_retry`), which continues the sender's trace: a [`MessageHandler`] writes each
    /// message's log lines inside its own span.
    pub span: tracing::Span,
}

/// A message's place among the messages about one aggregate (see "Order per aggregate").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub aggregate_id: String,
    /// 1 for the aggregate's first message, and so on.
    pub seq: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (database error, a dependency down): `failed`, retried with backoff.
    #[error("{0:#}")]
    Transient(#[from] anyhow::Error),
    /// Will never succeed (a payload the handler cannot understand): `dead` at once.
    #[error("{0}")]
    Permanent(String),
    /// Not a failure: this batch is one the handler's batch form cannot express (two
    /// orders of one account, say). The inbox rolls it back and hands over each message
    /// alone; nothing is recorded, counted or logged as a failure. A batch of one cannot
    /// be split further: there it is recorded like a transient error.
    #[error("the handler takes this batch one message at a time: {0}")]
    OneAtATime(&'static str),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Transient(e.into())
    }
}

/// A service's business logic for incoming messages. It gets the inbox's transaction:
/// everything it writes commits atomically with the "processed" mark.
///
/// # The contract
/// [`Self::handle`] gets the new messages of one transaction, sorted by [`Self::lock_key`]
/// (often just one). It applies every one of them, or returns `Err`:
/// - from a batch of more than one, any `Err` makes the inbox roll the whole transaction
///   back and hand over each message again alone, as a batch of one, so a failure is
///   recorded against its own message. A handler whose batch form cannot express some
///   batch says so with [`HandlerError::OneAtATime`]; it never loops over the messages
///   one by one to fall back itself;
/// - from a batch of one, the `Err` is recorded on the message's row:
///   [`HandlerError::Transient`] → `failed`, retried with backoff; [`HandlerError::Permanent`]
///   → `dead`.
///
/// Business outcomes (insufficient funds…) are *not* errors: the handler records them and
/// returns `Ok`. Errors are for "could not do the work".
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        msgs: &[&InboxMessage],
    ) -> Result<(), HandlerError>;

    /// The key of the row this message's handler locks (pay: the account's user id). A
    /// batch hands its messages over in the order of these keys, so concurrent batches
    /// take their locks in one order and do not deadlock. `None` (the default): message
    /// id order.
    fn lock_key(&self, _msg: &InboxMessage) -> Option<String> {
        None
    }
}

/// What happened to one delivery. Every variant means "safe to ack".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Processed,
    /// Arrived before its aggregate's previous message was applied: recorded `parked`,
    /// applied right after that one.
    Parked,
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

impl Outcome {
    /// The `outcome` label of the inbox metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::Parked => "parked",
            Outcome::Duplicate => "duplicate",
            Outcome::Failed { .. } => "failed",
            Outcome::Dead { .. } => "dead",
            Outcome::Poison { .. } => "poison",
        }
    }
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

    pub fn config(&self) -> &InboxConfig {
        &self.cfg
    }
}
