//! Database pool and migrations. Each service owns its database; nothing here ever joins
//! across two of them.

use std::time::Duration;

use anyhow::Context;
use sqlx::{PgPool, migrate::Migrator, postgres::PgPoolOptions};

/// Opens the pool and applies the message tables' migrations, then the service's (idempotent; concurrent instances
/// are serialised by sqlx's migration lock).
pub async fn connect_and_migrate(
    url: &str,
    max_connections: u32,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    let pool = pool_options(max_connections)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {}", redact(url)))?;
    crate::migrate(&pool)
        .await
        .context("the message tables' migrations failed")?;
    migrator
        .run(&pool)
        .await
        .context("the service's migrations failed")?;
    Ok(pool)
}

/// Connections of [`relay_pool`] besides one per relay: the relays' LISTEN session and the
/// resend scheduler hold at most one each (each works one statement at a time).
/// The relays' owner lock session ([`crate::outbox::owner`]) is one more, outside the pool.
pub const RELAY_POOL_SHARED_CONNECTIONS: u32 = 2;

/// The outbox's own pool, for the relay and the resend scheduler: the service's database
/// with `synchronous_commit = off` and `plan_cache_mode = force_custom_plan`, set as
/// connection options (no extra round trip).
///
/// Custom plans: the outbox swings from empty to a backlog of millions and back within
/// minutes, and its statistics lag (or never come: autovacuum, which also analyzes, may be
/// off). A prepared statement's generic plan is made once, for the table as it was then: the
/// claim planned on an empty outbox updates its rows by id with a sequential scan, 0.4 s per
/// window at 200,000 rows. Planned at each execution, with the parameters and the table's
/// size now, it takes the primary key. Planning costs well under a millisecond, once per
/// window of up to `OUTBOX_BATCH_SIZE` rows.
///
/// `synchronous_commit = off`: their commits return without waiting for the WAL flush.
/// Safe because they only write bookkeeping the mechanism already survives losing. A
/// database crash can lose the last fraction of a second of them (WAL is flushed in order,
/// so never one that a later synchronous commit followed): a lost claim or lease hand-back
/// leaves the row to be claimed again; a lost `sent` mark or retry record republishes the
/// message, and the receiver's inbox drops the copy by its id; a lost `dead` mark is made
/// again by the next pass. The business transactions (orders, the inbox) stay on the
/// service's pool: synchronous.
pub fn relay_pool(pool: &PgPool, relays: usize) -> PgPool {
    let options = (*pool.connect_options()).clone().options([
        ("synchronous_commit", "off"),
        ("plan_cache_mode", "force_custom_plan"),
    ]);
    pool_options(relays as u32 + RELAY_POOL_SHARED_CONNECTIONS).connect_lazy_with(options)
}

fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // Fail fast when the database is gone, so HTTP answers 503 instead of hanging.
        .acquire_timeout(Duration::from_secs(3))
}

/// Readiness probe: one round trip.
pub async fn ping(pool: &PgPool) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query("SELECT 1").execute(pool)
        )
        .await,
        Ok(Ok(_))
    )
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_password_only() {
        assert_eq!(
            super::redact("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
