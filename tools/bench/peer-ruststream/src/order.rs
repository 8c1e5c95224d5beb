//! Order's side: an order and its `OrderCreated` commit in one transaction
//! ([`write_order`](crate::write_order)); the relay subscription publishes each event to
//! RabbitMQ with publisher confirms; pay's `PaymentCompleted` sets the order `PAID`.
//!
//! This is the Relay guide of ruststream-sqlx ("relaying events to another broker"): the event
//! table is an inbox table in the lease form, the relay a subscription on it whose reply goes
//! out through the lapin broker, and the acknowledgement (after the confirm) deletes the row.

use std::convert::Infallible;

use ruststream::prelude::*;
use ruststream_lapin::ConfirmsPublish;
use ruststream_sqlx::{InboxQueue, SqlxBroker};
use sqlx::PgPool;

use crate::{
    OrderStatus,
    config::{self, Config, QueueType},
    events::{OrderCreated, OrderEvent, PaymentCompleted},
    service,
};

/// The relay of `order_events`: each row goes out as it was written; a publish that failed
/// (or was not confirmed) requeues the row.
#[subscriber(InboxQueue::<OrderEvent>::new("order-events"), reply)]
async fn relay(event: &OrderCreated) -> OrderCreated {
    event.clone()
}

/// The app's state: the order database.
#[derive(Clone)]
pub(crate) struct OrderState {
    pool: PgPool,
}

/// Sets the order of a `PaymentCompleted` `PAID`, once: a repeated answer matches no pending
/// order and changes nothing.
struct MarkPaid;

impl Handle<PaymentCompleted, (), (), (), OrderState> for MarkPaid {
    async fn handle(
        &self,
        answer: &PaymentCompleted,
        _outs: &(),
        ctx: &mut Context<'_, (), OrderState>,
    ) -> Result<(), HandlerOutcome> {
        let pool = ctx.state().pool.clone();
        let paid = sqlx::query(
            "UPDATE orders SET status = $2, updated_at = now() WHERE id = $1 AND status = $3",
        )
        .bind(answer.0.order_id)
        .bind(OrderStatus::Paid)
        .bind(OrderStatus::Pending)
        .execute(&pool)
        .await;
        match paid {
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::warn!(%error, order_id = %answer.0.order_id, "order not updated; requeued");
                Err(HandlerOutcome::retry())
            }
        }
    }
}

/// Starts order's app: the answers' subscription first (it declares order's queue before the
/// relay can publish an order whose answer would need it), then the relay.
pub(crate) async fn start(cfg: &Config, pool: PgPool) -> anyhow::Result<RunningApp> {
    let lapin = service::broker(cfg, "order").bindable();
    // Publisher confirms: the relay acks a row only once RabbitMQ took its message.
    let to_rabbit = lapin.bind(ConfirmsPublish::default().exchange(cfg.exchange.clone()));
    let relay_table = SqlxBroker::new(pool.clone())
        .listen_notify()
        .poll_interval(config::POLL_INTERVAL)
        .lease(config::LEASE);
    let answers = messages::PAYMENT_COMPLETED.routing_key;
    let state = OrderState { pool };
    let app = RustStream::new(AppInfo::new(
        "peer-ruststream-order",
        env!("CARGO_PKG_VERSION"),
    ))
    .on_startup(async move |()| Ok::<_, Infallible>(state))
    .shutdown_timeout(config::SHUTDOWN_TIMEOUT)
    .with_broker(lapin, |b| match cfg.queue_type {
        QueueType::Classic => {
            let queue = service::classic_queue(cfg, &cfg.order_queue, answers);
            b.include(
                subscriber(queue, MarkPaid)
                    .workers(config::CONSUMER_WORKERS)
                    .build(),
            );
        }
        QueueType::Quorum => {
            let queue = service::quorum_queue(cfg, &cfg.order_queue, answers);
            b.include(
                subscriber(queue, MarkPaid)
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
