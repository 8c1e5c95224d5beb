//! The transactional outbox: the only way a service sends a message.
//!
//! # The problem
//! A service must change its database *and* tell another service. Two writes to two systems
//! cannot be atomic: publish first and the transaction may roll back (a message about an
//! order that does not exist); commit first and the publish may fail (an order nobody
//! will ever pay). See README, "The problem".
//!
//! # The mechanism
//! [`enqueue`] writes the message as a row of the `outbox` table **in the caller's
//! transaction**, next to the business rows. Either both commit or neither does. A
//! `pg_notify` in the same statement wakes the [`relay`] at commit time. [`enqueue_quiet`]
//! leaves that wake-up to the caller, after the commit: the way to go for one message per
//! transaction at a high rate (order's `POST /buy`), because notifying commits queue behind
//! each other.
//!
//! The [`relay`] then publishes each row with publisher confirms and `mandatory`, and marks
//! it `sent` only after the broker acknowledged it *and* did not return it as unroutable.
//! The [`resend_scheduler`] takes care of time: it hands back rows whose relay died
//! mid-publish (its owner lock gone, or its lease expired), turns rows past their expiry
//! into `dead`, and wakes the relay when a retry falls due.
//!
//! # Row life cycle
//! ```text
//! pending ──claim (token + lease)──► in flight ──own ack──► sent
//!    ▲                                   │
//!    └── nack / return / timeout / owner gone / lease expired: attempts+1, next_attempt_at = backoff
//!        attempts ≥ max or past expires_at ──► dead (kept, visible, re-queueable)
//! ```
//! Delivery is at-least-once: a relay that dies after the broker stored a message but
//! before marking the row leaves it to be published again. The consumer's
//! [`inbox`](crate::inbox) removes that duplicate by message id.
//!
//! # Order per aggregate
//! A message may carry its place among the messages about its aggregate
//! ([`NewMessage::in_sequence`]: 1, 2, ...). [`relay::Relay::claim`] takes such a row only when
//! no earlier row of its aggregate is unsent (pending, in flight or `dead`), so an aggregate
//! has at most one message in flight and its next one is published only after the broker
//! confirmed the previous one; a retry never overtakes. Rows of different aggregates still go
//! out together in one pipelined window. A `dead` row holds back its own aggregate only
//! ([`blocked_aggregates`] counts them); requeueing it lets the aggregate go on, in order.
//! The receiving [`inbox`](crate::inbox) applies them in that order too.
//!
//! Who numbers the messages: the caller, from the aggregate's own row, which its transaction
//! already writes and locks (order: the order row's insert is message 1, its one cancellation
//! message 2). Two transactions writing messages of one aggregate are serialised by that row
//! lock, so two messages never get one number, and no counter table costs a row write per
//! message. A caller that cannot serialise its writers on such a row must not number them.
//!
//! # A dead relay's window, taken over in about a second
//! A relay killed mid-window (SIGKILL, OOM, a deploy) used to leave its claimed rows for the
//! whole lease (30 s by default). Now each relay process holds a session advisory lock under
//! an owner id of its own ([`owner`]) and its claims record that id; when the process dies,
//! PostgreSQL closes its session and frees the lock, and the next tick of any other
//! instance's [`resend_scheduler`] (at most `OUTBOX_POLL_INTERVAL_MS`) hands the rows back.
//! A frozen process keeps its session and lock: the lease stays the fallback for it, and
//! its claim token keeps its late settle from touching rows republished since.
//!
//! Why this and not a short lease renewed by the living relay: both were built and
//! measured (`BENCH_SECTIONS=takeover target/debug/bench`: two order instances, 200
//! orders/s, three SIGKILLs mid-window, debug build). Taken-over orders' worst
//! commit-to-payment delay: 1.9 s with the owner lock (poll interval 1 s), 3.4 s with a 2 s
//! lease renewed every third of it. Neither adds a statement per round (the owner is one more
//! bound value of the claim; a renewal only fires for a window longer than a third of the
//! lease). But a short lease also expires under a *living* relay that stalls for two
//! seconds (a starved CPU, a database that answers its renewal late), and its rows are
//! then published twice in steady operation; the owner lock only frees rows
//! whose session is gone. Its costs: one more connection per process, one `SELECT 1` a
//! second on it, and a `pg_locks` subquery in the scheduler's existing lease statement.

mod admin;
pub mod owner;
pub mod relay;
pub mod resend_scheduler;

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::backoff::RetryPolicy;
pub use crate::status::OutboxStatus;
pub use admin::{
    OutboxStats, blocked_aggregates, oldest_waiting_age, requeue_dead, requeue_for_republish,
    stats, status_of,
};

/// The NOTIFY channel the relay listens on.
pub const NOTIFY_CHANNEL: &str = "outbox_new";

/// A message to send, as the business code describes it.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The message id (UUIDv7: unique, ordered by creation time). Known before the insert so
    /// business rows can reference it.
    pub id: Uuid,
    /// The entity the message is about (an order id); carried as a header.
    pub aggregate_id: String,
    /// This message's place among the messages about `aggregate_id` (1, 2, ...), or `None`
    /// for a message without order. See "Order per aggregate" above for who assigns it.
    pub aggregate_seq: Option<i64>,
    /// The event name, e.g. `OrderCreated`; sent as the AMQP `type` property.
    pub event_type: String,
    /// Topic routing key, e.g. `order.created`.
    pub routing_key: String,
    pub payload: Value,
    /// Extra string headers (e.g. `traceparent`).
    pub headers: serde_json::Map<String, Value>,
}

impl NewMessage {
    pub fn new(
        aggregate_id: impl ToString,
        event_type: &str,
        routing_key: &str,
        payload: Value,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            aggregate_id: aggregate_id.to_string(),
            aggregate_seq: None,
            event_type: event_type.to_string(),
            routing_key: routing_key.to_string(),
            payload,
            headers: Default::default(),
        }
    }

    /// Makes this the `seq`-th message about its aggregate: the relay publishes it only after
    /// every earlier one of the aggregate was confirmed, and the receiving inbox applies it
    /// only right after the `seq - 1`-th.
    pub fn in_sequence(mut self, seq: i64) -> Self {
        self.aggregate_seq = Some(seq);
        self
    }

    /// Adds a string header (carried in the row and in the AMQP headers).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers
            .insert(name.to_string(), Value::String(value.into()));
        self
    }
}

/// Writes `msg` into the outbox within the caller's transaction. Nothing is published here.
///
/// One statement, one round trip: the row and the relay's wake-up. A NOTIFY is delivered
/// at commit and dropped on rollback, exactly the semantics a wake-up needs; selecting it
/// from the insert's `RETURNING` makes it fire only once the row is written.
///
/// The price: PostgreSQL serializes every notifying commit, the wait for its WAL flush
/// included, behind one lock for the whole server. Fine for a transaction that enqueues a
/// batch; a service committing one message per transaction at a high rate should use
/// [`enqueue_quiet`].
pub async fn enqueue(tx: &mut PgConnection, msg: &NewMessage, ttl: Duration) -> sqlx::Result<()> {
    enqueue_all(tx, std::slice::from_ref(msg), ttl).await
}

/// [`enqueue`] for several messages: one statement for all of them, and one wake-up for
/// the relay, within the caller's transaction.
pub async fn enqueue_all(
    tx: &mut PgConnection,
    msgs: &[NewMessage],
    ttl: Duration,
) -> sqlx::Result<()> {
    insert(tx, msgs, ttl, Some(NOTIFY_CHANNEL)).await
}

/// Writes `msg` like [`enqueue`], without the NOTIFY: the caller wakes the relay after its
/// commit with [`WakeAfterCommit::send`].
///
/// Why: a NOTIFY inside the transaction holds PostgreSQL's one notification lock through
/// the commit's WAL flush, so at a high rate of small transactions every commit waits for
/// the one before it (16 producers here: 3.8 times fewer orders per second, see
/// docs/benchmarks.md). Sent after the commit, in a statement of its own that does not wait
/// for the flush, it holds that lock for microseconds and the business commits flush
/// together. The row is committed before the relay hears of it, as before. If the process
/// dies between the commit and the send, the relay's fallback poll finds the row.
pub async fn enqueue_quiet(
    tx: &mut PgConnection,
    msg: &NewMessage,
    ttl: Duration,
) -> sqlx::Result<WakeAfterCommit> {
    insert(tx, std::slice::from_ref(msg), ttl, None).await?;
    Ok(WakeAfterCommit(()))
}

/// The relay's wake-up for rows written by [`enqueue_quiet`]: send it once their
/// transaction has committed.
#[must_use = "send it after the commit, or the relay finds the row only at its next poll"]
pub struct WakeAfterCommit(());

impl WakeAfterCommit {
    /// NOTIFYs the relays, in a transaction of its own whose commit does not wait for the
    /// WAL flush (`set_config(.., true)` is `SET LOCAL`: it ends with that transaction and
    /// never reaches the connection's next one). A failure only delays the message until the
    /// relay's fallback poll, so it is logged, not returned.
    pub async fn send(self, pool: &PgPool) {
        let sent =
            sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')")
                .bind(NOTIFY_CHANNEL)
                .execute(pool)
                .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not wake the relay; it finds the message at its next poll");
        }
    }
}

/// One statement: the rows, and when `notify` names a channel, a NOTIFY on it.
async fn insert(
    tx: &mut PgConnection,
    msgs: &[NewMessage],
    ttl: Duration,
    notify: Option<&str>,
) -> sqlx::Result<()> {
    if msgs.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&NewMessage) -> &str| msgs.iter().map(f).collect::<Vec<&str>>();
    let ids: Vec<Uuid> = msgs.iter().map(|m| m.id).collect();
    let payloads: Vec<&Value> = msgs.iter().map(|m| &m.payload).collect();
    let headers: Vec<Value> = msgs
        .iter()
        .map(|m| Value::Object(m.headers.clone()))
        .collect();
    // A data-modifying WITH runs whether or not the query reads it; the NOTIFY, selected
    // only once a row is written, is sent at commit.
    sqlx::query(
        "WITH new AS (
             INSERT INTO outbox (id, aggregate_id, aggregate_seq, event_type, routing_key, payload,
                                 headers, expires_at)
             SELECT m.id, m.aggregate_id, m.seq, m.event_type, m.routing_key, m.payload, m.headers,
                    now() + make_interval(secs => $7)
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[],
                         $9::bigint[])
                  AS m(id, aggregate_id, event_type, routing_key, payload, headers, seq)
             RETURNING 1)
         SELECT pg_notify($8, '') WHERE $8 IS NOT NULL AND EXISTS (SELECT 1 FROM new)",
    )
    .bind(&ids)
    .bind(column(|m| &m.aggregate_id))
    .bind(column(|m| &m.event_type))
    .bind(column(|m| &m.routing_key))
    .bind(&payloads)
    .bind(&headers)
    .bind(ttl.as_secs_f64())
    .bind(notify)
    .bind(msgs.iter().map(|m| m.aggregate_seq).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Outbox settings shared by the relay and the resend scheduler.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// Rows claimed (and published in one pipelined window) per round.
    pub batch_size: i64,
    /// Relays working the outbox side by side, each with its own broker connection
    /// ([`relay::Relays`]).
    pub relays: usize,
    /// How long a claim holds a row; a relay that has not finished by then is presumed dead.
    pub lease: Duration,
    /// How long the relay waits for the broker's confirm of one window.
    pub confirm_timeout: Duration,
    /// Fallback poll when no NOTIFY arrives (NOTIFY is lost while the listener reconnects).
    pub poll_interval: Duration,
    /// A new message's time to live: past it, an unsent message is `dead`.
    pub message_ttl: Duration,
    pub retry: RetryPolicy,
    /// How long a `sent` row is kept (for people to look at) before retention deletes it.
    pub retention: Duration,
}

impl OutboxConfig {
    /// The rules a usable outbox configuration follows (the service builder checks them,
    /// whether the configuration came from the environment or was built in code).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.batch_size > 0, "OUTBOX_BATCH_SIZE must be > 0");
        anyhow::ensure!(
            (1..=MAX_RELAYS).contains(&self.relays),
            "OUTBOX_RELAYS must be between 1 and {MAX_RELAYS}"
        );
        anyhow::ensure!(
            self.retry.max_attempts > 0,
            "OUTBOX_MAX_ATTEMPTS must be > 0"
        );
        // A lease that can run out while the window is still in flight would let another
        // relay re-publish rows whose confirms are on their way: duplicates in steady state.
        // The window is bounded by the confirm timeout; the margin covers claim and settle.
        anyhow::ensure!(
            self.lease >= self.confirm_timeout + LEASE_MARGIN,
            "OUTBOX_LEASE_MS ({:?}) must exceed OUTBOX_CONFIRM_TIMEOUT_MS ({:?}) by at least {LEASE_MARGIN:?}",
            self.lease,
            self.confirm_timeout
        );
        Ok(())
    }
}

/// Most relays per service: each holds a broker connection and a database connection.
pub const MAX_RELAYS: usize = 16;

/// Time a lease must leave beyond the confirm timeout, for claiming and settling.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// One publish that did not end in `sent`, as recorded against its row.
#[derive(Debug, Clone)]
pub struct Failure {
    pub id: Uuid,
    /// The claim that published it; the update only applies while that claim is current.
    pub claim_token: Uuid,
    /// Attempts before this one.
    pub attempts: i32,
    pub error: String,
}

/// Records failed publishes: attempts + 1 and a backed-off next attempt, or `dead` when
/// attempts are exhausted or the message expired. Only rows still held by the named
/// claim are touched, so a late answer from a relay whose lease was already taken over
/// changes nothing. Returns the ids that became `dead`.
pub async fn record_failures(
    db: impl PgExecutor<'_>,
    failures: &[Failure],
    policy: &RetryPolicy,
) -> sqlx::Result<Vec<Uuid>> {
    if failures.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<Uuid> = failures.iter().map(|f| f.id).collect();
    let tokens: Vec<Uuid> = failures.iter().map(|f| f.claim_token).collect();
    let errors: Vec<String> = failures.iter().map(|f| f.error.clone()).collect();
    let delays: Vec<f64> = failures
        .iter()
        .map(|f| policy.delay(f.attempts + 1).as_secs_f64())
        .collect();
    let exhausted: Vec<bool> = failures
        .iter()
        .map(|f| policy.exhausted(f.attempts + 1))
        .collect();
    sqlx::query_scalar(
        "UPDATE outbox o SET
             attempts = o.attempts + 1,
             last_error = f.error,
             claim_token = NULL,
             lease_expires_at = NULL,
             claim_owner = NULL,
             next_attempt_at = now() + make_interval(secs => f.delay),
             status = CASE WHEN f.exhausted OR o.expires_at <= now() THEN $6 ELSE $7 END
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::bool[])
              AS f(id, token, error, delay, exhausted)
         WHERE o.id = f.id AND o.claim_token = f.token
         RETURNING CASE WHEN o.status = $6 THEN o.id END",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&errors)
    .bind(&delays)
    .bind(&exhausted)
    .bind(OutboxStatus::Dead)
    .bind(OutboxStatus::Pending)
    .fetch_all(db)
    .await
    .map(|rows: Vec<Option<Uuid>>| rows.into_iter().flatten().collect())
}
