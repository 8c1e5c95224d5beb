//! Pay's side: each `OrderCreated` is paid in one transaction (the payment row, the debit and
//! the `PaymentCompleted` in pay's relay table) and acknowledged after the commit; the relay
//! publishes the answers as order's relay publishes the orders.
//!
//! Idempotency as ruststream-sqlx's Transactional guide does it: the business row's primary
//! key (`payments.order_id`) refuses a second payment of an order, so a repeated delivery
//! inserts nothing, debits nothing, answers nothing, and is acknowledged.

use std::convert::Infallible;

use ruststream::prelude::*;
use ruststream_lapin::ConfirmsPublish;
use ruststream_sqlx::{InboxQueue, SqlxBroker};
use sqlx::{Acquire, PgPool};

use crate::{
    config::{self, Config, QueueType},
    events::{self, OrderCreated, PaymentCompleted, PaymentEvent, RelayTable},
    service,
};

/// The relay of `payment_events`.
#[subscriber(InboxQueue::<PaymentEvent>::new("payment-events"), reply)]
async fn relay(event: &PaymentCompleted) -> PaymentCompleted {
    event.clone()
}

/// The app's state: pay's database.
#[derive(Clone)]
pub(crate) struct PayState {
    pool: PgPool,
}

/// What one delivery of an order came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payment {
    /// Paid and answered (the answer waits in `payment_events`).
    Recorded,
    /// The order was paid before: nothing written.
    Duplicate,
    /// No such account, or not enough on it: nothing written. This flow has no refusal
    /// answer; the benchmark's accounts always pay.
    Refused,
}

/// Pays one order: the payment, the debit and the answer, one commit.
async fn pay(pool: &PgPool, order: &messages::OrderCreated) -> anyhow::Result<Payment> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO payments (order_id, user_id, amount_cents) VALUES ($1, $2, $3)
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order.order_id)
    .bind(&order.user_id)
    .bind(order.amount_cents)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(Payment::Duplicate);
    }
    let debited = sqlx::query(
        "UPDATE accounts SET balance_cents = balance_cents - $2
         WHERE user_id = $1 AND balance_cents >= $2",
    )
    .bind(&order.user_id)
    .bind(order.amount_cents)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if debited == 0 {
        return Ok(Payment::Refused);
    }
    let answer = messages::PaymentResult {
        order_id: order.order_id,
        // One payment per order: the order's id is the payment's.
        payment_id: order.order_id,
        amount_cents: order.amount_cents,
        reason: None,
    };
    events::enqueue(&mut tx, RelayTable::PaymentEvents, &answer).await?;
    tx.commit().await?;
    events::announce(&mut conn, RelayTable::PaymentEvents).await;
    Ok(Payment::Recorded)
}

/// Pays each `OrderCreated`; the delivery is acked after the commit (or the duplicate),
/// requeued when the database failed, rejected when the account cannot pay.
struct PayOrder;

impl Handle<OrderCreated, (), (), (), PayState> for PayOrder {
    async fn handle(
        &self,
        order: &OrderCreated,
        _outs: &(),
        ctx: &mut Context<'_, (), PayState>,
    ) -> Result<(), HandlerOutcome> {
        let pool = ctx.state().pool.clone();
        match pay(&pool, &order.0).await {
            Ok(Payment::Recorded | Payment::Duplicate) => Ok(()),
            Ok(Payment::Refused) => {
                tracing::warn!(order_id = %order.0.order_id, user = %order.0.user_id, "refused: unknown account or not enough on it");
                Err(HandlerOutcome::drop())
            }
            Err(error) => {
                tracing::warn!(%error, order_id = %order.0.order_id, "payment failed; requeued");
                Err(HandlerOutcome::retry())
            }
        }
    }
}

/// Starts pay's app: the orders' subscription (declaring pay's queue), then the relay.
pub(crate) async fn start(cfg: &Config, pool: PgPool) -> anyhow::Result<RunningApp> {
    let lapin = service::broker(cfg, "pay").bindable();
    let to_rabbit = lapin.bind(ConfirmsPublish::default().exchange(cfg.exchange.clone()));
    let relay_table = SqlxBroker::new(pool.clone())
        .listen_notify()
        .poll_interval(config::POLL_INTERVAL)
        .lease(config::LEASE);
    let orders = messages::ORDER_CREATED.routing_key;
    let state = PayState { pool };
    let app = RustStream::new(AppInfo::new(
        "peer-ruststream-pay",
        env!("CARGO_PKG_VERSION"),
    ))
    .on_startup(async move |()| Ok::<_, Infallible>(state))
    .shutdown_timeout(config::SHUTDOWN_TIMEOUT)
    .with_broker(lapin, |b| match cfg.queue_type {
        QueueType::Classic => {
            let queue = service::classic_queue(cfg, &cfg.pay_queue, orders);
            b.include(
                subscriber(queue, PayOrder)
                    .workers(config::CONSUMER_WORKERS)
                    .build(),
            );
        }
        QueueType::Quorum => {
            let queue = service::quorum_queue(cfg, &cfg.pay_queue, orders);
            b.include(
                subscriber(queue, PayOrder)
                    .workers(config::CONSUMER_WORKERS)
                    .build(),
            );
        }
    })
    .with_broker(relay_table, |b| {
        b.include(relay.workers(config::RELAY_WORKERS))
            .out_reply(to_rabbit);
    });
    Ok(app.start().await?)
}
