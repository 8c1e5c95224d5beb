//! The load generator: orders written straight into order's database (the same transaction
//! `POST /buy` runs: order row + outbox row, then the NOTIFY) or through `POST /buy`, either flat out
//! by a number of producers or at a fixed rate. Every run reports what it was asked for, what
//! it achieved and the CPU time it took, so a figure limited by the generator shows as such.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use message_table::outbox::{self, NewMessage};
use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

use crate::stats;

/// Orders are spread over this many accounts, so no account row is hot.
pub const ACCOUNTS: usize = 1_000;

/// What an order message lives for in order's outbox (the service's default).
const MESSAGE_TTL: Duration = Duration::from_secs(24 * 3600);

pub fn account(i: usize) -> String {
    format!("bench-{:04}", i % ACCOUNTS)
}

/// The benchmark's accounts in pay's database, each with a balance no run can exhaust.
pub async fn seed_accounts(pay: &PgPool) {
    sqlx::query(
        "INSERT INTO accounts (user_id, balance_cents)
         SELECT 'bench-' || lpad(g::text, 4, '0'), 1000000000000000 FROM generate_series(0, $1 - 1) g",
    )
    .bind(ACCOUNTS as i32)
    .execute(pay)
    .await
    .expect("seed the accounts");
}

/// How orders get in.
#[derive(Clone)]
pub enum Writer {
    /// order's own transaction, run by the generator on order's database.
    Direct(PgPool, Wakeup),
    /// The peer's order transaction (RustStream's outbox), on the peer's order database.
    Peer(PgPool),
    /// `POST {base}/buy` (order itself, or `/order` through a proxy).
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl Writer {
    /// A direct writer with a pool big enough for `producers` at once.
    pub async fn direct(database_url: &str, producers: usize) -> Self {
        let pool = pool(database_url, producers).await;
        // BENCH_NOTIFY_INSIDE=1: every direct writer NOTIFYs inside its transaction, to
        // compare whole scenarios with and without that (`POST /buy` is not affected).
        let wakeup = match std::env::var("BENCH_NOTIFY_INSIDE").as_deref() {
            Ok("1") => Wakeup::InTransaction,
            _ => Wakeup::AfterCommit,
        };
        Writer::Direct(pool, wakeup)
    }

    /// As [`Self::direct`], with the NOTIFY inside the transaction (`outbox::enqueue`), to
    /// measure what that costs.
    pub async fn direct_notify_inside(database_url: &str, producers: usize) -> Self {
        match Self::direct(database_url, producers).await {
            Writer::Direct(pool, _) => Writer::Direct(pool, Wakeup::InTransaction),
            http => http,
        }
    }

    /// A writer of the peer's orders with a pool big enough for `producers` at once.
    pub async fn peer(database_url: &str, producers: usize) -> Self {
        Writer::Peer(pool(database_url, producers).await)
    }

    pub fn http(base: &str) -> Self {
        Writer::Http {
            client: reqwest::Client::new(),
            url: format!("{base}/buy"),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Writer::Direct(..) | Writer::Peer(_) => "into the database",
            Writer::Http { .. } => "POST /buy",
        }
    }

    /// Writes order number `i`; returns whether it was taken.
    pub async fn write(&self, i: usize) -> bool {
        let user = account(i);
        let amount = 1 + (i % 100) as i64;
        WRITTEN.fetch_add(1, Ordering::Relaxed);
        match self {
            Writer::Direct(pool, wakeup) => order_transaction(pool, *wakeup, &user, amount)
                .await
                .is_ok(),
            Writer::Peer(pool) => peer_ruststream::write_order(pool, &user, amount)
                .await
                .is_ok(),
            Writer::Http { client, url } => client
                .post(url)
                .json(&json!({ "user_id": user, "item": "bench", "amount_cents": amount }))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::CREATED),
        }
    }
}

async fn pool(database_url: &str, producers: usize) -> PgPool {
    PgPoolOptions::new()
        .max_connections(producers as u32)
        .connect(database_url)
        .await
        .expect("connect to order's database")
}

/// A new order's id and its `OrderCreated` message, as `POST /buy` writes it.
pub fn order_created(user: &str, amount: i64) -> (Uuid, NewMessage) {
    let order_id = Uuid::now_v7();
    let message = NewMessage::new(
        order_id,
        messages::ORDER_CREATED.name,
        messages::ORDER_CREATED.routing_key,
        json!({ "order_id": order_id, "user_id": user, "item": "bench", "amount_cents": amount }),
    )
    .in_sequence(1);
    (order_id, message)
}

/// How a direct writer wakes the relay.
#[derive(Debug, Clone, Copy)]
pub enum Wakeup {
    /// As `POST /buy` does: `outbox::enqueue_quiet`, the NOTIFY after the commit.
    AfterCommit,
    /// `outbox::enqueue`: the NOTIFY inside the transaction.
    InTransaction,
}

/// order's `POST /buy` transaction without HTTP: the order row and its `OrderCreated`
/// outbox row, one commit, and the relay's wake-up as `wakeup` says.
pub async fn order_transaction(
    pool: &PgPool,
    wakeup: Wakeup,
    user: &str,
    amount: i64,
) -> sqlx::Result<()> {
    let (order_id, message) = order_created(user, amount);
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO orders (id, user_id, item, amount_cents, message_id) VALUES ($1, $2, 'bench', $3, $4)",
    )
    .bind(order_id)
    .bind(user)
    .bind(amount)
    .bind(message.id)
    .execute(&mut *tx)
    .await?;
    match wakeup {
        Wakeup::InTransaction => {
            outbox::enqueue(&mut tx, &message, MESSAGE_TTL).await?;
            tx.commit().await
        }
        Wakeup::AfterCommit => {
            let wake = outbox::enqueue_quiet(&mut tx, &message, MESSAGE_TTL).await?;
            tx.commit().await?;
            wake.send(pool).await;
            Ok(())
        }
    }
}

/// What one generator run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generated {
    pub writer: &'static str,
    /// Orders per second asked for (`None`: flat out).
    pub asked_per_sec: Option<f64>,
    pub written: usize,
    pub failed: usize,
    pub secs: f64,
    pub achieved_per_sec: f64,
    /// The generator's CPU time over the run, as a share of one core.
    pub cpu_share_of_one_core: f64,
}

/// `producers` loops writing orders until `duration` has passed.
pub async fn flat_out(writer: &Writer, producers: usize, duration: Duration) -> Generated {
    let next = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + duration;
    run(writer, None, |writer, failed| {
        let tasks = (0..producers).map(|_| {
            let (writer, next, failed) = (writer.clone(), next.clone(), failed.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if !writer.write(i).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        });
        let tasks: Vec<_> = tasks.collect();
        async move {
            for t in tasks {
                t.await.expect("a producer panicked");
            }
            next.load(Ordering::Relaxed)
        }
    })
    .await
}

/// `total` orders by `producers` loops, as fast as they go (a backlog).
pub async fn backlog(writer: &Writer, producers: usize, total: usize) -> Generated {
    let next = Arc::new(AtomicUsize::new(0));
    run(writer, None, |writer, failed| {
        let tasks: Vec<_> = (0..producers)
            .map(|_| {
                let (writer, next, failed) = (writer.clone(), next.clone(), failed.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return;
                        }
                        if !writer.write(i).await {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        async move {
            for t in tasks {
                t.await.expect("a producer panicked");
            }
            total
        }
    })
    .await
}

/// How the orders of a rate are spread in time.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum Arrivals {
    /// Independent arrivals (exponential gaps of mean `1/rate`), as real traffic comes: bursts
    /// and lulls. The default.
    Poisson,
    /// One order every `1/rate` s exactly (`BENCH_ARRIVALS=even`).
    Even,
}

impl Arrivals {
    /// `BENCH_ARRIVALS` (`poisson`, the default, or `even`).
    pub fn from_env() -> Self {
        match std::env::var("BENCH_ARRIVALS").as_deref() {
            Ok("even") => Arrivals::Even,
            Ok("poisson") | Err(_) => Arrivals::Poisson,
            Ok(other) => panic!("BENCH_ARRIVALS={other}: poisson or even"),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Arrivals::Poisson => "Poisson",
            Arrivals::Even => "even",
        }
    }

    /// When each of the orders of `rate` over `duration` is written, as offsets from the
    /// start. The same rate and duration give the same schedule in every run (a fixed
    /// seed), so two systems measured one after the other get the same timestamps.
    pub fn schedule(self, rate: f64, duration: Duration) -> Vec<Duration> {
        use rand::{Rng, SeedableRng};
        let total = (rate * duration.as_secs_f64()).round() as usize;
        let mut rng = rand::rngs::StdRng::seed_from_u64(rate.to_bits());
        let mut at = 0.0;
        (0..total)
            .map(|i| match self {
                Arrivals::Even => Duration::from_secs_f64(i as f64 / rate),
                Arrivals::Poisson => {
                    let offset = Duration::from_secs_f64(at);
                    // Inverse transform: 1 - U is in (0, 1], so the log is finite.
                    at += -(1.0 - rng.random::<f64>()).ln() / rate;
                    offset
                }
            })
            .collect()
    }
}

/// Orders on `arrivals`' schedule at `rate` for `duration`, each in its own task, so a slow
/// write does not delay the next one (an open-loop load: the schedule, not the system, sets
/// the pace).
pub async fn at_rate(
    writer: &Writer,
    rate: f64,
    duration: Duration,
    arrivals: Arrivals,
) -> Generated {
    run(writer, Some(rate), |writer, failed| {
        let writer = writer.clone();
        async move {
            let schedule = arrivals.schedule(rate, duration);
            let start = tokio::time::Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for (i, offset) in schedule.iter().enumerate() {
                tokio::time::sleep_until(start + *offset).await;
                let (writer, failed) = (writer.clone(), failed.clone());
                tasks.spawn(async move {
                    if !writer.write(i).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            tasks.join_all().await;
            schedule.len()
        }
    })
    .await
}

/// Orders written since the start, by every writer: the progress lines read it.
static WRITTEN: AtomicUsize = AtomicUsize::new(0);

/// Prints every 5 s how many orders the run has written so far, until dropped.
fn progress(writer: &'static str) -> tokio::task::JoinHandle<()> {
    let start = WRITTEN.load(Ordering::Relaxed);
    tokio::spawn(async move {
        let began = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            let n = WRITTEN.load(Ordering::Relaxed) - start;
            eprintln!(
                "    generator ({writer}): {n} orders in {:.0} s",
                began.elapsed().as_secs_f64()
            );
        }
    })
}

/// Times `load` (which returns how many orders it attempted) and the CPU it costs.
async fn run<F, Fut>(writer: &Writer, asked: Option<f64>, load: F) -> Generated
where
    F: FnOnce(&Writer, Arc<AtomicUsize>) -> Fut,
    Fut: Future<Output = usize>,
{
    let failed = Arc::new(AtomicUsize::new(0));
    let (cpu, started) = (stats::own_cpu(), Instant::now());
    let ticker = progress(writer.label());
    let attempted = load(writer, failed.clone()).await;
    ticker.abort();
    let secs = started.elapsed().as_secs_f64();
    let cpu = (stats::own_cpu() - cpu).as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    let written = attempted - failed;
    Generated {
        writer: writer.label(),
        asked_per_sec: asked,
        written,
        failed,
        secs,
        achieved_per_sec: written as f64 / secs,
        cpu_share_of_one_core: cpu / secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_arrivals_keep_the_rate_and_are_the_same_in_every_run() {
        let (rate, duration) = (200.0, Duration::from_secs(50));
        let schedule = Arrivals::Poisson.schedule(rate, duration);
        assert_eq!(schedule.len(), 10_000);
        assert_eq!(schedule, Arrivals::Poisson.schedule(rate, duration));
        assert!(schedule.windows(2).all(|w| w[0] <= w[1]));
        let gaps: Vec<f64> = schedule
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        // 10,000 exponential gaps: the mean is within 5% of 1/rate (its standard error is 1%).
        assert!((mean * rate - 1.0).abs() < 0.05, "mean gap {mean}");
        // Bursty: exponential gaps have a standard deviation equal to their mean; even ones 0.
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!((sd / mean - 1.0).abs() < 0.1, "sd/mean {}", sd / mean);
    }

    #[test]
    fn even_arrivals_are_evenly_spaced() {
        let schedule = Arrivals::Even.schedule(100.0, Duration::from_secs(1));
        assert_eq!(schedule.len(), 100);
        assert_eq!(schedule[1], Duration::from_millis(10));
        assert_eq!(schedule[99], Duration::from_millis(990));
    }
}
