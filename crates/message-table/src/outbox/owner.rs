//! Who holds a claimed row, in a way PostgreSQL itself keeps up to date.
//!
//! Every relay process takes an owner id (from the `outbox_relay_owner` sequence: never
//! reused) and holds the session advisory lock `(OWNER_LOCK_CLASS, id)` on a connection of
//! its own, for as long as it lives. Its claims stamp the rows with that id
//! (`claim_owner`). When the process dies (SIGKILL, OOM, a lost host), the kernel or
//! PostgreSQL closes the session and the lock is gone at once; `pg_locks` no longer lists
//! it, and the resend scheduler of any other instance hands the rows back on its next tick
//! instead of waiting for their lease. A frozen process (SIGSTOP, a stuck VM) keeps its
//! session and its lock: for it the lease remains the fallback, and its claim token keeps a
//! late settle from touching rows someone else has since published.
//!
//! The lock connection is checked every [`CHECK_EVERY`]. If it is lost while the process
//! lives (a database restart), other instances may hand this process's rows back and publish
//! them again (the inbox drops the copy); the process takes a new id on a new session, and
//! its claims meanwhile go without an owner (lease only).

use std::{sync::Arc, time::Duration};

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The first key of every owner lock ("lmtl" in ASCII, 1819112556): no other advisory lock of the
/// crate uses the two-key form, so an owner lock never collides with them.
pub const OWNER_LOCK_CLASS: i32 = 0x6c6d_746c;

/// How often the lock's session is checked (one `SELECT 1` per process, not per round).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The owners whose lock is held right now, as a subquery on `pg_locks` (`objsubid = 2`:
/// the two-key form).
pub fn live_owners() -> String {
    format!(
        "SELECT l.objid::int8 FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
           AND l.classid = {OWNER_LOCK_CLASS}
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
}

/// This process's relay owner: the id its claims carry (`None` while its lock session is
/// down). Cloned by every relay of the process; the lock is released when the last clone
/// is dropped (or the process dies).
#[derive(Clone)]
pub struct Owner {
    id: watch::Receiver<Option<i32>>,
    _stop: Arc<DropGuard>,
}

impl Owner {
    /// Takes an owner id and its lock on a new session of `pool`'s database (waiting for
    /// the first attempt), then keeps it in a background task.
    pub async fn start(pool: &PgPool) -> Self {
        let (tx, rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let first = acquire(pool).await;
        let task_stop = stop.clone();
        let pool = pool.clone();
        tokio::spawn(async move { hold(pool, first, tx, task_stop).await });
        Owner {
            id: rx,
            _stop: Arc::new(stop.drop_guard()),
        }
    }

    /// The id to stamp on claims now.
    pub fn id(&self) -> Option<i32> {
        *self.id.borrow()
    }
}

/// A new session holding the lock of a fresh owner id.
async fn acquire(pool: &PgPool) -> sqlx::Result<(PgConnection, i32)> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    let id: i32 = sqlx::query_scalar("SELECT nextval('outbox_relay_owner')::int4")
        .fetch_one(&mut conn)
        .await?;
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(OWNER_LOCK_CLASS)
        .bind(id)
        .execute(&mut conn)
        .await?;
    Ok((conn, id))
}

/// Holds the session until `stop`; re-acquires (a new id) when the session is lost.
async fn hold(
    pool: PgPool,
    mut current: sqlx::Result<(PgConnection, i32)>,
    id: watch::Sender<Option<i32>>,
    stop: CancellationToken,
) {
    loop {
        match current {
            Ok((mut conn, owner)) => {
                id.send_replace(Some(owner));
                tracing::debug!(owner, "relay owner lock held");
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            let _ = conn.close().await;
                            return;
                        }
                        _ = tokio::time::sleep(CHECK_EVERY) => {}
                    }
                    if let Err(e) = sqlx::query("SELECT 1").execute(&mut conn).await {
                        tracing::warn!(owner, error = %e, "relay owner session lost; other instances may publish its rows again");
                        break;
                    }
                }
                id.send_replace(None);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a relay owner lock; claims rely on their lease");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                }
            }
        }
        current = acquire(&pool).await;
    }
}
