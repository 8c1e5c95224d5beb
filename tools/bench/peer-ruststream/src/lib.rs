//! The benchmark's peer: this system's order -> pay flow written on RustStream, the best Rust
//! peer, so the benchmark measures both on the same scenarios in the same run.
//!
//! # Why a peer of our own writing
//! A figure for "this system" means little alone; beside a well-kept framework doing the same
//! work on the same machine it says what the design costs or saves. The peer is written the
//! way RustStream's documentation recommends (README.md names the guide behind each choice),
//! not tuned against this system: the point is the comparison, not a win.
//!
//! # The flow
//! - order ([`write_order`], and the `order` process): the order row and its `OrderCreated`
//!   in `order_events` commit together; a relay subscription (ruststream-sqlx) publishes each
//!   event to RabbitMQ (ruststream-lapin, publisher confirms) and deletes it; pay's answer
//!   sets the order `PAID`.
//! - pay (the `pay` process): each `OrderCreated` is paid in one transaction (payment, debit,
//!   `PaymentCompleted` in `payment_events`) and acked after the commit; its relay publishes
//!   the answers.
//!
//! The library gives the bench what it needs around the processes: the migrations, the order
//! transaction, and the figures it reads (payments, pending orders, latencies), read the
//! same way as this system's.

mod config;
mod events;
mod order;
mod pay;
mod service;

pub use config::{Config, QueueType, Role};
pub use events::{ORDER_EVENTS, OrderCreated, PAYMENT_EVENTS, PaymentCompleted};

use std::collections::HashMap;

use sqlx::{Acquire, PgPool, migrate::Migrator};
use uuid::Uuid;

/// The order database's tables (`migrations/order`).
pub static ORDER_MIGRATOR: Migrator = sqlx::migrate!("migrations/order");
/// The pay database's tables (`migrations/pay`).
pub static PAY_MIGRATOR: Migrator = sqlx::migrate!("migrations/pay");

/// An order's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "UPPERCASE")]
pub enum OrderStatus {
    /// Written, waiting for pay's answer.
    Pending,
    /// Pay's `PaymentCompleted` arrived.
    Paid,
}

/// Creates order's tables in a fresh database. Panics when it cannot (a bench set-up).
pub async fn migrate_order(pool: &PgPool) {
    ORDER_MIGRATOR
        .run(pool)
        .await
        .expect("create the peer's order tables");
}

/// Creates pay's tables in a fresh database. Panics when it cannot (a bench set-up).
pub async fn migrate_pay(pool: &PgPool) {
    PAY_MIGRATOR
        .run(pool)
        .await
        .expect("create the peer's pay tables");
}

/// One order: the order row and its `OrderCreated` in `order_events`, one commit, then the
/// relay's wake-up (`pg_notify` on the same connection, as a RustStream publish sends it).
/// `orders.created_at` is the transaction's `now()`, as in this system.
pub async fn write_order(pool: &PgPool, user: &str, amount: i64) -> anyhow::Result<()> {
    let order = messages::OrderCreated {
        order_id: Uuid::now_v7(),
        user_id: user.to_string(),
        item: "bench".to_string(),
        amount_cents: amount,
    };
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO orders (id, user_id, item, amount_cents) VALUES ($1, $2, $3, $4)")
        .bind(order.order_id)
        .bind(&order.user_id)
        .bind(&order.item)
        .bind(order.amount_cents)
        .execute(&mut *tx)
        .await?;
    events::enqueue(&mut tx, events::RelayTable::OrderEvents, &order).await?;
    tx.commit().await?;
    events::announce(&mut conn, events::RelayTable::OrderEvents).await;
    Ok(())
}

/// Payments committed in pay's database.
pub async fn payments(pay: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(pay)
        .await
        .unwrap_or(0)
}

/// Orders not yet `PAID` (on the partial index of pending orders: cheap to poll).
pub async fn pending(order: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING'")
        .fetch_one(order)
        .await
        .unwrap_or(0)
}

/// Per paid order, `payments.created_at - orders.created_at` in ms (both databases are on one
/// server, so one clock), as the bench reads this system's.
pub async fn hop_ms(order: &PgPool, pay: &PgPool) -> Vec<f64> {
    let orders: Vec<(Uuid, f64)> =
        sqlx::query_as("SELECT id, extract(epoch FROM created_at)::float8 FROM orders")
            .fetch_all(order)
            .await
            .expect("read the peer's orders");
    let payments: HashMap<Uuid, f64> =
        sqlx::query_as("SELECT order_id, extract(epoch FROM created_at)::float8 FROM payments")
            .fetch_all(pay)
            .await
            .expect("read the peer's payments")
            .into_iter()
            .collect();
    orders
        .into_iter()
        .filter_map(|(id, created)| Some((payments.get(&id)? - created) * 1e3))
        .collect()
}

/// Per `PAID` order, `updated_at - created_at` in ms: the round trip order -> pay -> order.
pub async fn round_trip_ms(order: &PgPool) -> Vec<f64> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM updated_at - created_at)::float8 * 1e3
         FROM orders WHERE status = $1",
    )
    .bind(OrderStatus::Paid)
    .fetch_all(order)
    .await
    .expect("read the peer's orders")
}

/// Runs one side until SIGTERM: connects, starts the app (its subscriptions consuming), serves
/// `GET /readyz` on `cfg.addr`, and shuts down gracefully.
pub async fn run(role: Role, cfg: Config) -> anyhow::Result<()> {
    let pool = service::pool(&cfg).await?;
    let running = match role {
        Role::Order => order::start(&cfg, pool.clone()).await?,
        Role::Pay => pay::start(&cfg, pool.clone()).await?,
    };
    let served = service::serve(&cfg, running).await;
    pool.close().await;
    served
}
