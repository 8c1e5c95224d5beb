//! The resend scheduler: everything in the outbox that depends on the clock.
//!
//! The relay only ever claims rows that are due and unclaimed. Time moves rows into that
//! state, and this component is where it happens, on each [`ResendScheduler::tick`]:
//!
//! 1. **Claims that are over.** A row still claimed by a relay process that is gone (its
//!    [owner lock](super::owner) no longer in `pg_locks`), or still claimed after its lease
//!    ran out (a relay that froze or stalled), belongs to a relay that died between
//!    publishing and marking it sent. The broker may or may not have it. It is handed back
//!    (attempts + 1, backed-off next attempt, or `dead`): publishing it again is safe
//!    because the consumer's inbox drops the duplicate. No look-back window guesses what
//!    is "stuck": only a released lock or an expired lease says so. A dead relay's rows
//!    come back within a tick (at most the poll interval), a frozen one's after the lease.
//! 2. **Expired messages.** An unsent row past its `expires_at` becomes `dead`:
//!    kept, visible, re-queueable with [`super::requeue_dead`], never silently dropped.
//! 3. **Due retries.** When a backed-off row falls due, the relay is woken right away
//!    instead of waiting for its fallback poll. The scheduler then sleeps until the next
//!    due time or lease expiry, so retry timing is precise without busy polling.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Failure, OutboxConfig, OutboxStatus, owner, record_failures};
use crate::status::{CLAIMABLE, IN_FLIGHT, WAITING};

pub const LEASE_EXPIRED: &str =
    "lease expired before the publish was confirmed (relay crashed or stalled); publishing again";

pub const OWNER_GONE: &str =
    "the relay process that claimed it is gone (its owner lock was released); publishing again";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerReport {
    /// Rows whose lease had expired or whose relay is gone, handed back for another publish.
    pub released: usize,
    /// Of the rows handed back (or made dead), those whose relay process is gone: taken
    /// back before their lease ran out.
    pub orphaned: usize,
    /// Rows that became `dead` (expired lease with attempts exhausted, or past their TTL).
    pub dead: usize,
    /// Whether a due row was waiting and the relay was woken.
    pub woke_relay: bool,
}

pub struct ResendScheduler {
    pool: PgPool,
    cfg: OutboxConfig,
    relay_wake: Arc<Notify>,
}

impl ResendScheduler {
    /// The services give it the relay's pool ([`crate::db::relay_pool`]): what it writes,
    /// lost in a crash, is written again by a later tick.
    pub fn new(pool: PgPool, cfg: OutboxConfig, relay_wake: Arc<Notify>) -> Self {
        Self {
            pool,
            cfg,
            relay_wake,
        }
    }

    pub async fn tick(&self) -> sqlx::Result<SchedulerReport> {
        let mut report = SchedulerReport::default();

        // 1. Leases over: expired, or held by a relay process that is gone (its owner lock
        //    is no longer in pg_locks). Compare-and-set on the claim token, so a relay that
        //    settles at the same moment wins or loses cleanly, never both.
        let over: Vec<(Uuid, Uuid, i32, bool)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id, claim_token, attempts, lease_expires_at < now() FROM outbox
             WHERE {IN_FLIGHT}
               AND (lease_expires_at < now() OR claim_owner NOT IN ({live}))
             ORDER BY lease_expires_at LIMIT $1",
            live = owner::live_owners()
        )))
        .bind(self.cfg.batch_size)
        .fetch_all(&self.pool)
        .await?;
        if !over.is_empty() {
            let failures: Vec<Failure> = over
                .iter()
                .map(|(id, token, attempts, expired)| Failure {
                    id: *id,
                    claim_token: *token,
                    attempts: *attempts,
                    error: if *expired { LEASE_EXPIRED } else { OWNER_GONE }.to_string(),
                })
                .collect();
            let dead = record_failures(&self.pool, &failures, &self.cfg.retry).await?;
            let orphaned = over.iter().filter(|o| !o.3).count();
            tracing::warn!(
                count = failures.len(),
                orphaned,
                dead = dead.len(),
                "outbox claims over (lease expired or relay gone); messages handed back"
            );
            report.released = failures.len() - dead.len();
            report.orphaned = orphaned;
            report.dead += dead.len();
        }

        // 2. Expired messages.
        let expired_ids: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
            "UPDATE outbox SET status = $1,
                    last_error = 'expired before it could be published'
                                 || coalesce('; last error: ' || last_error, '')
             WHERE {WAITING} AND expires_at <= now()
             RETURNING id"
        )))
        .bind(OutboxStatus::Dead)
        .fetch_all(&self.pool)
        .await?;
        for id in &expired_ids {
            tracing::error!(message_id = %id, "outbox message expired unsent; it is dead");
        }
        report.dead += expired_ids.len();

        // 3. Due retries.
        let due: bool = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE {CLAIMABLE})"
        )))
        .fetch_one(&self.pool)
        .await?;
        if due {
            self.relay_wake.notify_one();
            report.woke_relay = true;
        }
        Ok(report)
    }

    /// When the next thing happens: the next retry falls due or the next lease expires.
    async fn next_event(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT least(
                 (SELECT min(next_attempt_at) FROM outbox WHERE {WAITING} AND next_attempt_at > now()),
                 (SELECT min(lease_expires_at) FROM outbox WHERE {IN_FLIGHT}))"
        )))
        .fetch_one(&self.pool)
        .await
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let max_sleep = self.cfg.poll_interval;
        while !shutdown.is_cancelled() {
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "resend scheduler tick failed");
            }
            let next = self.next_event().await.ok().flatten();
            let sleep = crate::backoff::sleep_until(next, max_sleep);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
}
