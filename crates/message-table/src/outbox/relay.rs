//! The relay: moves committed outbox rows to RabbitMQ, honestly.
//!
//! One round ([`Relay::run_once`]) is the whole algorithm:
//!
//! 1. **Connect first** (`Relay::channel`, through [`amqp::connect_link`]: the addresses of
//!    `AMQP_URL` in turn). Without a broker channel nothing is claimed, so a broker outage
//!    does not burn the rows' attempts.
//! 2. **Claim** ([`Relay::claim`]) up to `batch_size` due rows with `FOR UPDATE SKIP
//!    LOCKED`, stamping each with this round's claim token and a lease, and **commit** the
//!    claim before publishing.
//!    Other relays skip these rows. A row numbered within its aggregate is claimed only
//!    once every earlier row of that aggregate is `sent` (see "Order per aggregate" in
//!    [`crate::outbox`]). The claim also names this process's
//!    [owner](super::owner): if the process dies, its lock session ends and the
//!    [resend scheduler](super::resend_scheduler) of another instance hands the rows back
//!    within a tick; if it only freezes, when the lease runs out.
//! 3. **Publish the whole window pipelined** ([`Relay::publish`], which runs steps 3 to 5,
//!    and [`Relay::publish_window`]): every row goes out as a persistent message with
//!    `mandatory`, its message id and type, without waiting in between. Each publish
//!    returns its own confirm future (matched by delivery tag). One deadline, set before
//!    the first publish, bounds steps 3 and 4 together.
//! 4. **Await the confirms** together ([`await_confirms`]), under that deadline.
//! 5. **Classify the answers** ([`classify`]):
//!    - acked, and its message id not among the window's returns → confirmed;
//!    - returned (basic.return: no queue was bound) → *not* delivered, retried; without
//!      `mandatory` the broker would confirm and silently drop it. Returns are matched to
//!      rows by message id: the client may attach a return to another message's confirm;
//!    - nack, timeout, channel error → a [`PublishFailure`], retried with backoff. A
//!      failure that leaves the channel suspect ([`PublishFailure::must_drop_channel`])
//!      also closes the connection: the next round starts on a fresh one.
//! 6. **Settle** ([`Relay::settle`]): confirmed rows become `sent`, the others are retried
//!    or `dead` when exhausted — each update only applies while this round's claim token is
//!    still on the row.
//! 7. **After a refusal, catch up** ([`Relay::catch_up`]): a window the broker refused as a
//!    whole (nothing confirmed: nacks, timeouts, a broken channel) is the broker's trouble,
//!    not its rows'. While a quorum queue elects a new leader every publish is nacked, and
//!    each nack doubles its row's backoff, so a row refused four times would wait 8 s more
//!    after the broker recovered. The relay remembers the rows refused in such windows; the
//!    first window it gets confirmed again proves the broker back, and those rows still
//!    pending are made due at once. Each is brought forward once per refusal, keeps its
//!    attempts (the limit still makes a row that keeps failing `dead`), and a window only
//!    partly refused (a full queue, one bad route) starts nothing: its rows keep their backoff.
//!
//! A row is therefore `sent` only when the broker has taken responsibility for it: on a
//! quorum queue, when a majority of the queue's replicas has it. Without a majority the
//! broker answers nothing, and the deadline of step 3 fails the window like a lost confirm.
//!
//! With `DEMO_FAULTS=1` the [teaching switches](crate::faults) act here, one line each:
//! `drop_broker_connection` before step 1, `pause_relay` between steps 1 and 2, `deliver_twice` in step 3,
//! `lose_confirms` after step 5 (a lost confirm is a failure like a timeout).

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use futures::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde_json::Value;
use sqlx::{AssertSqlSafe, FromRow, PgPool, postgres::PgListener};
use tokio::{
    sync::{Notify, OnceCell},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Span;
use uuid::Uuid;

use super::{Failure, NOTIFY_CHANNEL, OutboxConfig, OutboxStatus, owner::Owner, record_failures};
use crate::{
    amqp::{self, AmqpConfig, BrokerLink},
    faults::{Faults, Switch},
    metrics::MessageTableMetrics,
    status::CLAIMABLE,
};

/// The AMQP header carrying a message's place among its aggregate's messages; the
/// aggregate itself is in the `aggregate_id` header.
pub const AGGREGATE_SEQ_HEADER: &str = "x-aggregate-seq";

/// A claimed row, as it will be published.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxRow {
    pub id: Uuid,
    pub aggregate_id: String,
    /// Sent as the `x-aggregate-seq` header when set (see "Order per aggregate" in
    /// [`crate::outbox`]).
    pub aggregate_seq: Option<i64>,
    pub event_type: String,
    pub routing_key: String,
    pub payload: Value,
    pub headers: Value,
    pub attempts: i32,
    /// Sent as the AMQP `timestamp`: the inbox refuses messages older than its memory.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The AMQP properties a row is published with (headers, id, type, age), by the relay and by
/// whoever publishes a row by hand (the out-of-order scenario): one shape for both.
pub fn properties(row: &OutboxRow, app_id: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Value::Object(map) = &row.headers {
        for (k, v) in map {
            let text = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            headers.insert(
                ShortString::from(k.as_str()),
                AMQPValue::LongString(LongString::from(text)),
            );
        }
    }
    headers.insert(
        ShortString::from("aggregate_id"),
        AMQPValue::LongString(LongString::from(row.aggregate_id.clone())),
    );
    if let Some(seq) = row.aggregate_seq {
        headers.insert(
            ShortString::from(AGGREGATE_SEQ_HEADER),
            AMQPValue::LongLongInt(seq),
        );
    }
    headers.insert(
        ShortString::from("attempt"),
        AMQPValue::LongInt(row.attempts + 1),
    );
    BasicProperties::default()
        .with_message_id(ShortString::from(row.id.to_string()))
        .with_type(ShortString::from(row.event_type.as_str()))
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2) // persistent
        .with_app_id(ShortString::from(app_id))
        // The message's creation, not this publish: a copy published again keeps its age.
        .with_timestamp(row.created_at.timestamp().max(0) as u64)
        .with_headers(headers)
}

/// The rows one round holds, and the token that proves it holds them.
#[derive(Debug, Clone)]
pub struct Claim {
    pub token: Uuid,
    pub rows: Vec<OutboxRow>,
}

/// What the broker said about one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    Confirmed,
    Failed(PublishFailure),
}

impl PublishOutcome {
    /// The `outcome` label of `outbox_publishes_total`: failures that mean the same to an
    /// operator share one value.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Failed(PublishFailure::Nacked) => "nacked",
            Self::Failed(PublishFailure::Returned { .. }) => "returned",
            // A lost confirm (teaching fault) is, to a relay, one that never came.
            Self::Failed(
                PublishFailure::ConfirmTimedOut
                | PublishFailure::PublishBlocked
                | PublishFailure::ConfirmLost,
            ) => "timed_out",
            Self::Failed(PublishFailure::PublishFailed(_) | PublishFailure::ConfirmFailed(_)) => {
                "channel_error"
            }
            Self::Failed(PublishFailure::NoChannel(_)) => "no_channel",
            Self::Failed(PublishFailure::NotInConfirmMode) => "not_in_confirm_mode",
        }
    }
}

/// Why one row was not confirmed. Its `Display` is what the row's `last_error` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishFailure {
    /// No channel to publish on (the broker is unreachable); nothing was sent.
    NoChannel(String),
    /// `basic.publish` itself failed: the channel or connection is gone.
    PublishFailed(String),
    /// `basic.publish` did not return before the deadline (flow control, dead socket).
    PublishBlocked,
    /// The confirm future failed (channel closed before the broker answered).
    ConfirmFailed(String),
    /// The deadline passed before the broker's confirm.
    ConfirmTimedOut,
    /// The broker returned it (no queue bound for its routing key), then acked it.
    Returned { reply_code: u16, reply_text: String },
    /// The broker refused it (basic.nack).
    Nacked,
    /// The channel was not in confirm mode: no confirm will ever come.
    NotInConfirmMode,
    /// Confirmed, but the `lose_confirms` teaching switch made the relay ignore it.
    ConfirmLost,
}

impl PublishFailure {
    /// Whether the channel can no longer be trusted with the next window: it broke, or it
    /// may still owe confirms (a late confirm would be matched against the wrong delivery
    /// tags). A nack or a return is an answer on a healthy channel.
    pub fn must_drop_channel(&self) -> bool {
        match self {
            Self::PublishFailed(_)
            | Self::PublishBlocked
            | Self::ConfirmFailed(_)
            | Self::ConfirmTimedOut => true,
            Self::NoChannel(_)
            | Self::Returned { .. }
            | Self::Nacked
            | Self::NotInConfirmMode
            | Self::ConfirmLost => false,
        }
    }
}

impl fmt::Display for PublishFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoChannel(e) => f.write_str(e),
            Self::PublishFailed(e) => write!(f, "publish failed: {e}"),
            Self::PublishBlocked => {
                f.write_str("publish blocked past the deadline (flow control or dead connection)")
            }
            Self::ConfirmFailed(e) => write!(f, "confirm failed: {e}"),
            Self::ConfirmTimedOut => f.write_str("no confirm before the deadline"),
            Self::Returned {
                reply_code,
                reply_text,
            } => write!(
                f,
                "returned by broker as unroutable: {reply_code} {reply_text}"
            ),
            Self::Nacked => f.write_str("nacked by broker"),
            Self::NotInConfirmMode => f.write_str("channel not in confirm mode"),
            Self::ConfirmLost => {
                f.write_str("confirm treated as lost (teaching fault lose_confirms)")
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayReport {
    pub claimed: usize,
    pub sent: usize,
    pub retried: usize,
    pub dead: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("broker unavailable: {0:#}")]
    Broker(anyhow::Error),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub struct Relay {
    pool: PgPool,
    amqp: AmqpConfig,
    cfg: OutboxConfig,
    /// The link name (`<service>/relay`): the AMQP connection is named `<name>@<node>`, and
    /// the messages carry it as their `app_id`.
    name: String,
    link: Option<(Connection, Channel)>,
    /// Which node `link` is on, for `/readyz` and `/metrics`.
    broker: BrokerLink,
    wake: Arc<Notify>,
    metrics: Arc<MessageTableMetrics>,
    faults: Faults,
    /// This process's relay owner, taken at the first claim and shared by the siblings.
    owner: Arc<OnceCell<Owner>>,
    /// Rows of the windows the broker refused as a whole since it last confirmed one.
    refused: Vec<Uuid>,
}

/// At most this many refused rows are remembered for step 7; the rest wait their backoff.
const REFUSED_REMEMBERED: usize = 10_000;

impl Relay {
    /// Claims and settles on `pool`: the services give it [`crate::db::relay_pool`], whose
    /// commits do not wait for the WAL flush (losing one only republishes a message).
    pub fn new(pool: PgPool, amqp: AmqpConfig, cfg: OutboxConfig, name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            pool,
            amqp,
            cfg,
            broker: BrokerLink::new(name.clone()),
            name,
            link: None,
            wake: Arc::new(Notify::new()),
            metrics: Arc::default(),
            faults: Faults::off(),
            owner: Arc::default(),
            refused: Vec::new(),
        }
    }

    /// Obeys these teaching switches (`DEMO_FAULTS`; by default none).
    pub fn with_faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Counts into `metrics` (by default into an unregistered set nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<MessageTableMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Broker connection state and node, for `/readyz` and `/metrics`.
    pub fn broker_link(&self) -> BrokerLink {
        self.broker.clone()
    }

    /// Notify this to make the relay run a round now (the resend scheduler does).
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// One full round: connect, claim, publish, await confirms, settle.
    #[tracing::instrument(name = "relay_round", skip(self), fields(relay = %self.name, claim_token, claimed))]
    pub async fn run_once(&mut self) -> Result<RelayReport, RelayError> {
        // Teaching faults: a dropped connection is found broken by `channel` and replaced, as
        // after an outage; a paused relay claims nothing, so committed rows wait as pending.
        // The pause is read after connecting and taking the owner: either can outlast a pause
        // switched on meanwhile, and the claim that follows would take rows committed since.
        if self.faults.take_relay_drop() {
            self.disconnect().await;
        }
        self.channel().await?;
        self.owner().await;
        if !self.faults.remaining(Switch::PauseRelay).is_zero() {
            return Ok(RelayReport::default());
        }
        let started = Instant::now();
        let claim = self.claim().await?;
        if claim.rows.is_empty() {
            return Ok(RelayReport::default());
        }
        let span = Span::current();
        span.record("claim_token", tracing::field::display(claim.token));
        span.record("claimed", claim.rows.len());
        self.metrics
            .relay_batch_rows
            .observe(claim.rows.len() as f64);
        let outcomes = self.publish(&claim).await;
        let report = self.settle(&claim, &outcomes).await?;
        self.catch_up(&claim, &outcomes).await?;
        self.metrics
            .relay_round_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(report)
    }

    /// This process's owner id, taken (a lock session opened) the first time it is asked for.
    async fn owner(&self) -> Option<i32> {
        self.owner
            .get_or_init(|| Owner::start(&self.pool))
            .await
            .id()
    }

    /// Step 2: claim due rows under a fresh token and a lease, committed before publishing.
    ///
    /// The rows are looked up by id from an array, not joined: a prepared statement's generic
    /// plan cannot see `LIMIT $1`, assumes a tenth of the table and hashes the whole outbox
    /// (a week of sent rows) for every claim; the array keeps it to the rows claimed.
    ///
    /// The rows also record this process's [owner](super::owner): should the process die,
    /// other instances take them back as soon as its lock session is gone.
    ///
    /// A sequenced row is taken only when no earlier row of its aggregate is unsent
    /// (`NOT EXISTS`, on the `outbox_unsent_seq` index): its predecessor must be settled
    /// `sent` first, so the relays never overtake within an aggregate, and one `dead` row
    /// holds back its own aggregate only. Reading an older snapshot can only make a row look
    /// blocked longer (rows become `sent`, never unsent, by a relay), never overtake.
    pub async fn claim(&self) -> sqlx::Result<Claim> {
        let token = Uuid::new_v4();
        let owner = self.owner().await;
        let mut rows: Vec<OutboxRow> = sqlx::query_as(AssertSqlSafe(format!(
            "WITH due AS (
                 SELECT id FROM outbox o
                 WHERE {CLAIMABLE}
                   AND (o.aggregate_seq IS NULL OR NOT EXISTS (
                       SELECT 1 FROM outbox e
                       WHERE e.aggregate_id = o.aggregate_id
                         AND e.aggregate_seq < o.aggregate_seq AND e.status <> 'sent'))
                 ORDER BY next_attempt_at, id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             UPDATE outbox o
             SET claim_token = $2, lease_expires_at = now() + make_interval(secs => $3),
                 claim_owner = $4
             WHERE o.id = ANY(ARRAY(SELECT id FROM due))
             RETURNING o.id, o.aggregate_id, o.aggregate_seq, o.event_type, o.routing_key, o.payload, o.headers, o.attempts,
                       o.created_at"
        )))
        .bind(self.cfg.batch_size)
        .bind(token)
        .bind(self.cfg.lease.as_secs_f64())
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        // RETURNING has no order; ids are UUIDv7, so this is creation order.
        rows.sort_by_key(|r| r.id);
        Ok(Claim { token, rows })
    }

    /// Steps 3 to 5: publish every row of the claim, await all the confirms, classify the
    /// answers. Never fails as a whole: every row gets an outcome. Drops the connection
    /// when an outcome says the channel is suspect.
    pub async fn publish(&mut self, claim: &Claim) -> Vec<PublishOutcome> {
        let outcomes = self.publish_uncounted(claim).await;
        for outcome in &outcomes {
            self.metrics.publish(outcome);
        }
        outcomes
    }

    async fn publish_uncounted(&mut self, claim: &Claim) -> Vec<PublishOutcome> {
        let channel = match self.channel().await {
            Ok(c) => c,
            Err(e) => {
                let failure = PublishFailure::NoChannel(e.to_string());
                return vec![PublishOutcome::Failed(failure); claim.rows.len()];
            }
        };
        let started = Instant::now();
        let deadline = started + self.cfg.confirm_timeout;
        let window = self.publish_window(&channel, &claim.rows, deadline).await;
        let answers = await_confirms(window, deadline).await;
        self.metrics
            .confirm_duration
            .observe(started.elapsed().as_secs_f64());
        let mut outcomes = classify(&claim.rows, answers);
        // Teaching fault: a confirm treated as lost leaves its row to be published again.
        lose_confirms(&self.faults, &mut outcomes);
        if outcomes
            .iter()
            .any(|o| matches!(o, PublishOutcome::Failed(f) if f.must_drop_channel()))
        {
            self.disconnect().await;
        }
        outcomes
    }

    /// Step 3: `basic.publish` every row without waiting for confirms in between; one
    /// confirm future per row.
    ///
    /// The deadline bounds the publishes too: a publish can block (broker flow control, a
    /// dead socket), and the window must end well inside the lease. Once one publish has
    /// failed the channel is gone, so the rows after it are not tried and share its failure.
    pub async fn publish_window(
        &self,
        channel: &Channel,
        rows: &[OutboxRow],
        deadline: Instant,
    ) -> Vec<Result<PublisherConfirm, PublishFailure>> {
        let mut window = Vec::with_capacity(rows.len());
        let mut broken: Option<PublishFailure> = None;
        for row in rows {
            let published = match &broken {
                Some(failure) => Err(failure.clone()),
                None => self.publish_one(channel, row, deadline).await,
            };
            // Teaching fault: a second copy of the message; the receiver's inbox drops it.
            if published.is_ok() && self.faults.take(Switch::DeliverTwice) {
                self.publish_copy(channel, row, deadline).await;
            }
            if let Err(failure) = &published
                && broken.is_none()
            {
                tracing::debug!(message_id = %row.id, error = %failure, "publish failed; the rest of the window is not sent");
                broken = Some(failure.clone());
            }
            window.push(published);
        }
        window
    }

    async fn publish_one(
        &self,
        channel: &Channel,
        row: &OutboxRow,
        deadline: Instant,
    ) -> Result<PublisherConfirm, PublishFailure> {
        // A `serde_json::Value` always serializes (its map keys are strings): an empty body
        // would be a message nobody can read.
        let body = serde_json::to_vec(&row.payload).expect("a JSON value serializes");
        let publish = channel.basic_publish(
            ShortString::from(self.amqp.exchange.as_str()),
            ShortString::from(row.routing_key.as_str()),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            properties(row, &self.name),
        );
        match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(confirm)) => Ok(confirm),
            Ok(Err(e)) => Err(PublishFailure::PublishFailed(e.to_string())),
            Err(_) => Err(PublishFailure::PublishBlocked),
        }
    }

    /// The `deliver_twice` copy: published and confirmed before the original's confirm is
    /// awaited, so the copy is on the broker whatever happens to the original.
    async fn publish_copy(&self, channel: &Channel, row: &OutboxRow, deadline: Instant) {
        let confirmed = match self.publish_one(channel, row, deadline).await {
            Ok(confirm) => tokio::time::timeout_at(deadline, confirm).await.is_ok(),
            Err(_) => false,
        };
        tracing::warn!(message_id = %row.id, confirmed, "teaching fault: message published twice");
    }

    /// Step 6: confirmed rows become `sent`; the others are retried or `dead`.
    pub async fn settle(
        &self,
        claim: &Claim,
        outcomes: &[PublishOutcome],
    ) -> sqlx::Result<RelayReport> {
        let mut sent_ids = Vec::new();
        let mut failures = Vec::new();
        for (row, outcome) in claim.rows.iter().zip(outcomes) {
            match outcome {
                PublishOutcome::Confirmed => sent_ids.push(row.id),
                PublishOutcome::Failed(failure) => failures.push(Failure {
                    id: row.id,
                    claim_token: claim.token,
                    attempts: row.attempts,
                    error: failure.to_string(),
                }),
            }
        }
        let sent = sqlx::query(
            "UPDATE outbox SET status = $3, sent_at = now(), attempts = attempts + 1,
                    claim_token = NULL, lease_expires_at = NULL, claim_owner = NULL, last_error = NULL
             WHERE id = ANY($1) AND claim_token = $2",
        )
        .bind(&sent_ids)
        .bind(claim.token)
        .bind(OutboxStatus::Sent)
        .execute(&self.pool)
        .await?
        .rows_affected() as usize;
        for f in &failures {
            tracing::warn!(message_id = %f.id, attempt = f.attempts + 1, error = %f.error, "publish not confirmed; will retry");
        }
        let dead = record_failures(&self.pool, &failures, &self.cfg.retry).await?;
        for id in &dead {
            tracing::error!(message_id = %id, "outbox message is dead: attempts exhausted or expired");
        }
        Ok(RelayReport {
            claimed: claim.rows.len(),
            sent,
            retried: failures.len() - dead.len(),
            dead: dead.len(),
        })
    }

    /// Step 7: remembers the rows of a window refused as a whole; once a window is confirmed
    /// again, makes those still pending due now, and wakes the relays to send them.
    pub async fn catch_up(
        &mut self,
        claim: &Claim,
        outcomes: &[PublishOutcome],
    ) -> sqlx::Result<()> {
        match refusal(outcomes) {
            Refusal::Whole => {
                let room = REFUSED_REMEMBERED.saturating_sub(self.refused.len());
                self.refused
                    .extend(claim.rows.iter().take(room).map(|row| row.id));
                return Ok(());
            }
            Refusal::NoneConfirmed => return Ok(()),
            Refusal::SomeConfirmed if self.refused.is_empty() => return Ok(()),
            Refusal::SomeConfirmed => {}
        }
        let refused = std::mem::take(&mut self.refused);
        let due = sqlx::query(
            "UPDATE outbox SET next_attempt_at = now()
             WHERE id = ANY($1) AND status = $2 AND claim_token IS NULL AND next_attempt_at > now()",
        )
        .bind(&refused)
        .bind(OutboxStatus::Pending)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if due > 0 {
            tracing::info!(relay = %self.name, rows = due, "the broker confirms again: rows it refused are due now");
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Step 1: a live confirm-mode channel, reconnecting when needed.
    async fn channel(&mut self) -> Result<Channel, RelayError> {
        if let Some((conn, ch)) = &self.link {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
            self.disconnect().await;
        }
        let connect = async {
            let (conn, node) = amqp::connect_link(&self.amqp, &self.broker).await?;
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            amqp::declare_exchange(&ch, &self.amqp).await?;
            anyhow::Ok((conn, ch, node))
        };
        match connect.await {
            Ok((conn, ch, node)) => {
                tracing::info!(relay = %self.name, %node, "relay connected to the broker");
                self.link = Some((conn, ch.clone()));
                self.broker.set_connected(&node);
                Ok(ch)
            }
            Err(e) => {
                self.broker.set_disconnected();
                Err(RelayError::Broker(e))
            }
        }
    }

    async fn disconnect(&mut self) {
        self.broker.set_disconnected();
        if let Some((conn, _)) = self.link.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                conn.close(200, ShortString::from("relay reset")),
            )
            .await;
        }
    }

    /// Runs rounds until `shutdown`, alone; see [`Relays::run`].
    pub async fn run(self, shutdown: CancellationToken) {
        Relays::new(self, 1).run(shutdown).await
    }

    /// Another relay on the same outbox: the same settings, counters, switches and wake-up,
    /// its own broker connection (and so its own confirms and returns).
    fn sibling(&self, number: usize) -> Self {
        Self {
            pool: self.pool.clone(),
            amqp: self.amqp.clone(),
            cfg: self.cfg.clone(),
            name: format!("{}-{number}", self.name),
            broker: BrokerLink::new(format!("{}-{number}", self.name)),
            link: None,
            wake: self.wake.clone(),
            metrics: self.metrics.clone(),
            faults: self.faults.clone(),
            owner: self.owner.clone(),
            refused: Vec::new(),
        }
    }

    /// Runs rounds until `shutdown`: woken by NOTIFY at commit, by the resend scheduler, or
    /// by the fallback poll. A round in progress is finished before stopping, so no claimed
    /// row is left waiting for its lease.
    async fn rounds(mut self, shutdown: CancellationToken) {
        let broker_backoff = self.amqp.reconnect;
        let mut failures_in_a_row = 0;
        while !shutdown.is_cancelled() {
            let idle = match self.run_once().await {
                Ok(report) => {
                    failures_in_a_row = 0;
                    if report.claimed > 0 {
                        tracing::debug!(?report, "relay round");
                    }
                    // A full batch means more may be waiting: go again at once.
                    if report.claimed as i64 >= self.cfg.batch_size {
                        continue;
                    }
                    self.cfg.poll_interval
                }
                Err(e) => {
                    failures_in_a_row += 1;
                    let delay = broker_backoff.delay(failures_in_a_row);
                    tracing::warn!(error = %e, retry_in = ?delay, "relay round failed");
                    // Not woken early: every commit notifies, and an outage must not turn
                    // into one connection attempt per order.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(idle) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        self.disconnect().await;
        tracing::info!(relay = %self.name, "relay stopped");
    }
}

/// Several relays on one outbox (`OUTBOX_RELAYS`), woken by one listener.
///
/// Why more than one: a round is sequential (claim, publish, await the confirms, settle), so
/// a message committed while a round awaits its confirms waits for the next round, and
/// between two windows nothing is in flight. A second relay claims what was committed
/// meanwhile and keeps a window in flight while the first settles: a backlog goes out
/// faster. The price, measured here: under a load that saturates the machine each relay's
/// windows are smaller, so every message costs more claims and settles, and one relay
/// handled more (docs/benchmarks.md); the services run one by default. It needs nothing new for
/// safety: each relay has its own connection, so confirms and returns never cross windows,
/// and relays already share an outbox safely (`FOR UPDATE SKIP LOCKED`, each claim's token
/// and lease), as several instances of a service do. Like several instances, they keep no
/// order between unnumbered messages; numbered ones keep their aggregate's order, since the
/// claim itself holds back a row whose predecessor is unsent (see [`Relay::claim`]).
pub struct Relays(Vec<Relay>);

impl Relays {
    /// `first` and `count - 1` siblings (named `<name>-2`, …), sharing its wake-up.
    pub fn new(first: Relay, count: usize) -> Self {
        let siblings: Vec<Relay> = (2..=count).map(|n| first.sibling(n)).collect();
        Self(std::iter::once(first).chain(siblings).collect())
    }

    /// Each relay's broker connection state and node, for `/readyz` and `/metrics`.
    pub fn broker_links(&self) -> Vec<BrokerLink> {
        self.0.iter().map(Relay::broker_link).collect()
    }

    /// Notify this to make an idle relay run a round now (the resend scheduler does).
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.0[0].wake_handle()
    }

    /// Runs every relay until `shutdown`, with one LISTEN session: each NOTIFY wakes one
    /// idle relay (a busy one finds the rows anyway: its next round follows a full batch,
    /// or it is woken by the permit a NOTIFY leaves when nobody waits).
    pub async fn run(self, shutdown: CancellationToken) {
        let first = &self.0[0];
        let listener = tokio::spawn(listen_for_new_messages(
            first.pool.clone(),
            first.wake.clone(),
            shutdown.clone(),
        ));
        join_all(
            self.0
                .into_iter()
                .map(|relay| relay.rounds(shutdown.clone())),
        )
        .await;
        listener.abort();
    }
}

/// Step 4: every confirm of the window, awaited together until `deadline`.
pub async fn await_confirms(
    window: Vec<Result<PublisherConfirm, PublishFailure>>,
    deadline: Instant,
) -> Vec<Result<Confirmation, PublishFailure>> {
    join_all(window.into_iter().map(|published| async move {
        match tokio::time::timeout_at(deadline, published?).await {
            Ok(Ok(confirmation)) => Ok(confirmation),
            Ok(Err(e)) => Err(PublishFailure::ConfirmFailed(e.to_string())),
            Err(_) => Err(PublishFailure::ConfirmTimedOut),
        }
    }))
    .await
}

/// Step 5: the broker's answers (in the rows' order) as one outcome per row.
pub fn classify(
    rows: &[OutboxRow],
    answers: Vec<Result<Confirmation, PublishFailure>>,
) -> Vec<PublishOutcome> {
    // A basic.return carries no delivery tag: the client hands it to whichever confirm
    // resolves next, which is not always the returned message's own (several acks can
    // arrive as one, and RabbitMQ may ack an earlier message between a return and its
    // ack). So a return is matched to its row by message id, never by which confirm
    // carried it.
    let mut returned: HashMap<String, PublishFailure> = answers
        .iter()
        .filter_map(|a| match a {
            Ok(Confirmation::Ack(Some(ret)) | Confirmation::Nack(Some(ret))) => {
                let id = ret.delivery.properties.message_id().as_ref()?.to_string();
                let failure = PublishFailure::Returned {
                    reply_code: ret.reply_code,
                    reply_text: ret.reply_text.to_string(),
                };
                Some((id, failure))
            }
            _ => None,
        })
        .collect();
    rows.iter()
        .zip(answers)
        .map(|(row, answer)| match answer {
            Ok(Confirmation::Ack(_)) => match returned.remove(&row.id.to_string()) {
                Some(returned) => PublishOutcome::Failed(returned),
                None => PublishOutcome::Confirmed,
            },
            Ok(Confirmation::Nack(_)) => PublishOutcome::Failed(PublishFailure::Nacked),
            Ok(Confirmation::NotRequested) => {
                PublishOutcome::Failed(PublishFailure::NotInConfirmMode)
            }
            Err(failure) => PublishOutcome::Failed(failure),
        })
        .collect()
}

/// How much of a window the broker refused, for [`Relay::catch_up`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// At least one row confirmed: the broker takes messages.
    SomeConfirmed,
    /// Nothing confirmed, and every row refused for a reason that is the broker's, not the
    /// row's: nacked, timed out, the channel broken or missing.
    Whole,
    /// Nothing confirmed, but some row was returned (no queue bound to its key) or lost to a
    /// teaching fault: not a broker-wide refusal.
    NoneConfirmed,
}

/// Reads a window's outcomes as a [`Refusal`].
pub fn refusal(outcomes: &[PublishOutcome]) -> Refusal {
    if outcomes.contains(&PublishOutcome::Confirmed) {
        return Refusal::SomeConfirmed;
    }
    // The broker's trouble: a suspect channel, a nack, or no channel at all.
    let brokers = |o: &PublishOutcome| match o {
        PublishOutcome::Failed(f) => {
            f.must_drop_channel()
                || matches!(f, PublishFailure::Nacked | PublishFailure::NoChannel(_))
        }
        PublishOutcome::Confirmed => false,
    };
    if !outcomes.is_empty() && outcomes.iter().all(brokers) {
        Refusal::Whole
    } else {
        Refusal::NoneConfirmed
    }
}

/// The `lose_confirms` teaching switch: each confirmed outcome it takes becomes a failure,
/// retried like a timeout, so the row is published again (it was delivered already).
fn lose_confirms(faults: &Faults, outcomes: &mut [PublishOutcome]) {
    for outcome in outcomes {
        if *outcome == PublishOutcome::Confirmed && faults.take(Switch::LoseConfirms) {
            *outcome = PublishOutcome::Failed(PublishFailure::ConfirmLost);
        }
    }
}

/// LISTENs for the NOTIFY that [`super::enqueue`] sends at commit and wakes the relay.
/// When the listener's connection drops, notifications are lost until it is back; the
/// relay's fallback poll covers that gap.
async fn listen_for_new_messages(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "outbox listener cannot connect; relying on polling");
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => continue, _ = shutdown.cancelled() => return }
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::debug!(error = %e, "outbox listener cannot LISTEN; relying on polling");
            tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => continue, _ = shutdown.cancelled() => return }
        }
        // Anything committed while we were not listening is picked up by this round.
        wake.notify_one();
        loop {
            tokio::select! {
                n = listener.recv() => match n {
                    Ok(_) => wake.notify_one(),
                    Err(e) => {
                        tracing::debug!(error = %e, "outbox listener lost its connection");
                        break;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }
}
