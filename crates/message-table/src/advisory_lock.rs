//! One instance at a time: a PostgreSQL session advisory lock held on one pooled
//! connection for the length of a pass (retention, order's reconciler).
//!
//! Every instance of a service runs the same periodic jobs; a pass starts only after
//! `pg_try_advisory_lock`, so one instance does the work and the others skip their turn.
//! If that instance dies, PostgreSQL releases the lock with its session. A connection that
//! may still hold the lock (the unlock failed, or the pass ended early) is closed, never
//! returned to the pool, where the lock would outlive the pass.

use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};

/// A held session advisory lock. [`AdvisoryLock::unlock`] releases it; dropping it
/// without unlocking closes the session (which releases it too).
pub struct AdvisoryLock {
    conn: PoolConnection<Postgres>,
    key: i64,
    held: bool,
}

impl AdvisoryLock {
    /// Takes lock `key` on a pooled connection; `None` when another session holds it.
    /// Keys are per database; each job uses a fixed number no other code uses.
    pub async fn try_acquire(pool: &PgPool, key: i64) -> sqlx::Result<Option<Self>> {
        let mut conn = pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        Ok(locked.then_some(Self {
            conn,
            key,
            held: true,
        }))
    }

    /// The session holding the lock, for work that should run on it.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Releases the lock and returns the connection to the pool (or closes it when the
    /// unlock did not succeed).
    pub async fn unlock(mut self) {
        let unlocked: sqlx::Result<bool> = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .fetch_one(&mut *self.conn)
            .await;
        self.held = !matches!(unlocked, Ok(true));
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if self.held {
            self.conn.close_on_drop();
        }
    }
}
