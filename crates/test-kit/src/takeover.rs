//! A relay killed mid-window, on purpose: the system test and the benchmark's takeover
//! section kill an order instance while its relay holds claimed rows, then read how long
//! each order waited for its payment.
//!
//! A plain SIGKILL at a random moment mostly lands between two windows (a window lasts
//! milliseconds), which tests nothing. So the process is frozen first (SIGSTOP), and
//! killed only if a claim token it holds is still on rows a moment later (the other
//! instance's windows come and go within milliseconds; a frozen one's stays); otherwise it
//! is thawed and tried again. The freeze (about [`FREEZE`]) is part of the measured delay.

use std::{collections::HashSet, time::Duration};

use sqlx::PgPool;
use uuid::Uuid;

use crate::ServiceProcess;

/// How long the process stays frozen before the second look at the claim tokens.
pub const FREEZE: Duration = Duration::from_millis(150);

/// Claim tokens on in-flight rows now.
async fn tokens(db: &PgPool) -> HashSet<Uuid> {
    sqlx::query_scalar(
        "SELECT DISTINCT claim_token FROM outbox WHERE status = 'pending' AND claim_token IS NOT NULL",
    )
    .fetch_all(db)
    .await
    .expect("read the claim tokens")
    .into_iter()
    .collect()
}

/// SIGKILLs `process` while its relay holds a claimed window on `db` (the outbox it
/// relays); returns how many rows that window held. Panics if no window is caught in 500
/// tries (no messages flowing).
pub async fn kill_mid_window(process: &mut ServiceProcess, db: &PgPool) -> i64 {
    for attempt in 0..500u64 {
        process.signal("STOP").await;
        let first = tokens(db).await;
        if !first.is_empty() {
            tokio::time::sleep(FREEZE).await;
            let held: Vec<Uuid> = tokens(db).await.intersection(&first).copied().collect();
            if !held.is_empty() {
                process.kill().await;
                return sqlx::query_scalar(
                    "SELECT count(*) FROM outbox WHERE claim_token = ANY($1)",
                )
                .bind(&held)
                .fetch_one(db)
                .await
                .expect("count the held rows");
            }
        }
        process.signal("CONT").await;
        // A different phase of the next window each try.
        tokio::time::sleep(Duration::from_millis(7 + attempt % 13 * 3)).await;
    }
    panic!("no window in flight caught in 500 tries: are messages flowing?")
}

/// Each paid order's delay from its commit (its row's `created_at` in `order_db`) to its
/// payment's (`payments.created_at` in `pay_db`), in ms, with the order id. Both databases
/// are on one server, so on one clock; each timestamp is its transaction's start, a little
/// before its commit, on both ends alike.
pub async fn commit_to_payment_ms(order_db: &PgPool, pay_db: &PgPool) -> Vec<(Uuid, f64)> {
    let orders: Vec<(Uuid, f64)> =
        sqlx::query_as("SELECT id, extract(epoch FROM created_at)::float8 FROM orders")
            .fetch_all(order_db)
            .await
            .expect("read the orders");
    let payments: std::collections::HashMap<Uuid, f64> =
        sqlx::query_as("SELECT order_id, extract(epoch FROM created_at)::float8 FROM payments")
            .fetch_all(pay_db)
            .await
            .expect("read the payments")
            .into_iter()
            .collect();
    orders
        .into_iter()
        .filter_map(|(id, created)| Some((id, (payments.get(&id)? - created) * 1e3)))
        .collect()
}

/// The orders whose message was published more than once (its first relay died, or
/// stalled, with it claimed): the ones a takeover delayed.
pub async fn taken_over(order_db: &PgPool) -> HashSet<Uuid> {
    sqlx::query_scalar::<_, String>("SELECT aggregate_id FROM outbox WHERE attempts > 1")
        .fetch_all(order_db)
        .await
        .expect("read the outbox")
        .into_iter()
        .filter_map(|id| id.parse().ok())
        .collect()
}
