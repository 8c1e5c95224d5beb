//! Retention: deleting what the local message tables no longer need.
//!
//! # Why rows can go, and when
//! A `sent` outbox row has done its job once the broker confirmed it; it is kept for a while
//! only so people can look at it. A `processed` inbox row is different: it *is* the
//! deduplication. Delete it while a copy of its message can still arrive, and that copy is
//! processed a second time. So the inbox retention must outlast the **redelivery horizon**:
//! the longest time after its creation that a message can still be published
//! (`OUTBOX_MESSAGE_TTL_SECS`, plus one lease for a publish in flight at expiry), plus a
//! margin for a backlog in the queue. [`validate`] refuses a configuration that breaks
//! this rule at start-up. And because a copy can sit in a queue for longer than any margin
//! (a consumer down for a week), the inbox also refuses, as `dead`, any message created
//! before its retention window (see [`crate::inbox`]): what it may have forgotten, it does
//! not process blindly.
//!
//! `dead` and `failed` rows are never deleted here: they wait for a human or the sweeper.
//!
//! # How
//! Oldest first, in batches of `RETENTION_BATCH_SIZE` rows, each its own short statement:
//! no long transaction, no long lock on hot tables. Every instance of a service runs the
//! runner, but a pass only starts after taking a PostgreSQL advisory lock, so one instance
//! at a time does the work and the others skip their turn (see [`crate::advisory_lock`]).

use std::{sync::Arc, time::Duration};

use sqlx::{Encode, PgConnection, PgPool, Postgres, Type};
use tokio_util::sync::CancellationToken;

use crate::{
    advisory_lock::AdvisoryLock,
    inbox::InboxConfig,
    metrics::MessageTableMetrics,
    outbox::OutboxConfig,
    status::{InboxStatus, OutboxStatus},
};

/// The advisory lock key of the retention pass (advisory locks are per database, so each
/// service's database has its own). Any fixed number no other code uses.
pub const LOCK_KEY: i64 = 0x6c6d_745f_7265_7465; // "lmt_rete"

/// How far beyond the publishing horizon a processed message is still remembered: time
/// for a backlog in the queue to drain.
pub const REDELIVERY_MARGIN: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// How often a pass runs.
    pub interval: Duration,
    /// Rows deleted per statement.
    pub batch_size: i64,
}

impl RetentionConfig {
    /// The rules a usable retention configuration follows (checked by the service builder).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.interval.is_zero(),
            "RETENTION_INTERVAL_SECS must be > 0"
        );
        anyhow::ensure!(self.batch_size > 0, "RETENTION_BATCH_SIZE must be > 0");
        Ok(())
    }
}

/// The longest time after its creation that a copy of a message may still be published.
pub fn redelivery_horizon(outbox: &OutboxConfig) -> Duration {
    outbox.message_ttl + outbox.lease + REDELIVERY_MARGIN
}

/// Refuses an inbox retention shorter than the redelivery horizon: the inbox would forget
/// messages whose copies can still arrive, and process those copies twice.
pub fn validate(outbox: &OutboxConfig, inbox: &InboxConfig) -> anyhow::Result<()> {
    let horizon = redelivery_horizon(outbox);
    anyhow::ensure!(
        inbox.retention >= horizon,
        "INBOX_RETENTION_SECS ({}s) is shorter than the redelivery horizon ({}s = \
         OUTBOX_MESSAGE_TTL_SECS {}s + OUTBOX_LEASE_MS {}s + {}s margin): the inbox would forget \
         messages that can still be delivered again, and process those copies twice. Raise \
         INBOX_RETENTION_SECS or lower OUTBOX_MESSAGE_TTL_SECS.",
        inbox.retention.as_secs(),
        horizon.as_secs(),
        outbox.message_ttl.as_secs(),
        outbox.lease.as_secs(),
        REDELIVERY_MARGIN.as_secs(),
    );
    Ok(())
}

/// What one pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub outbox_rows: u64,
    pub inbox_rows: u64,
    /// DELETE statements run (each at most `batch_size` rows).
    pub batches: u32,
}

pub struct RetentionRunner {
    pool: PgPool,
    outbox_retention: Duration,
    inbox_retention: Duration,
    cfg: RetentionConfig,
    metrics: Arc<MessageTableMetrics>,
}

impl RetentionRunner {
    pub fn new(
        pool: PgPool,
        outbox: &OutboxConfig,
        inbox: &InboxConfig,
        cfg: RetentionConfig,
    ) -> Self {
        Self {
            pool,
            outbox_retention: outbox.retention,
            inbox_retention: inbox.retention,
            cfg,
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics` (by default into an unregistered set nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<MessageTableMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// One pass; `None` when another runner holds the lock (it is doing this work).
    pub async fn run_once(&self) -> sqlx::Result<Option<Purged>> {
        let Some(mut lock) = AdvisoryLock::try_acquire(&self.pool, LOCK_KEY).await? else {
            return Ok(None);
        };
        // On error the lock is dropped held: its session is closed, not pooled.
        let purged = self.purge(lock.conn()).await?;
        lock.unlock().await;
        self.metrics.deleted("outbox", purged.outbox_rows);
        self.metrics.deleted("inbox", purged.inbox_rows);
        Ok(Some(purged))
    }

    /// Each batch's rows are deleted by id from an array, so a generic plan (which cannot
    /// see `LIMIT $2`) does not hash the whole table per batch.
    async fn purge(&self, conn: &mut PgConnection) -> sqlx::Result<Purged> {
        let (outbox_rows, outbox_batches) = self
            .delete_in_batches(
                conn,
                "DELETE FROM outbox WHERE id = ANY(ARRAY(
                     SELECT id FROM outbox
                     WHERE status = $3 AND sent_at < now() - make_interval(secs => $1)
                     ORDER BY sent_at LIMIT $2))",
                self.outbox_retention,
                OutboxStatus::Sent,
            )
            .await?;
        let (inbox_rows, inbox_batches) = self
            .delete_in_batches(
                conn,
                "DELETE FROM inbox WHERE message_id = ANY(ARRAY(
                     SELECT message_id FROM inbox
                     WHERE status = $3 AND processed_at < now() - make_interval(secs => $1)
                     ORDER BY processed_at LIMIT $2))",
                self.inbox_retention,
                InboxStatus::Processed,
            )
            .await?;
        Ok(Purged {
            outbox_rows,
            inbox_rows,
            batches: outbox_batches + inbox_batches,
        })
    }

    async fn delete_in_batches(
        &self,
        conn: &mut PgConnection,
        sql: &'static str,
        retention: Duration,
        status: impl for<'t> Encode<'t, Postgres> + Type<Postgres> + Copy,
    ) -> sqlx::Result<(u64, u32)> {
        let (mut total, mut batches) = (0, 0);
        loop {
            let deleted = sqlx::query(sql)
                .bind(retention.as_secs_f64())
                .bind(self.cfg.batch_size)
                .bind(status)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            total += deleted;
            batches += 1;
            if deleted < self.cfg.batch_size as u64 {
                return Ok((total, batches));
            }
            // Let the service's own work in between two batches.
            tokio::task::yield_now().await;
        }
    }

    /// A pass every `RETENTION_INTERVAL_SECS` until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.interval) => {}
                _ = shutdown.cancelled() => break,
            }
            match self.run_once().await {
                Ok(Some(p)) if p.outbox_rows + p.inbox_rows > 0 => tracing::info!(
                    outbox_rows = p.outbox_rows,
                    inbox_rows = p.inbox_rows,
                    batches = p.batches,
                    "retention deleted old rows"
                ),
                Ok(Some(_)) => {}
                Ok(None) => tracing::debug!("retention pass skipped: another instance runs it"),
                Err(e) => tracing::warn!(error = format!("{e:#}"), "retention pass failed"),
            }
        }
    }
}
