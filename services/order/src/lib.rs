//! The order service.
//!
//! `POST /buy` creates an order in `PENDING_PAYMENT` and, in the same transaction, the
//! `OrderCreated` message in the outbox ([`orders`]). The relay delivers it to pay. Pay's
//! answer (`PaymentCompleted` / `PaymentFailed`) comes back through this service's inbox
//! ([`payment_results`]) and moves the order to `PAID` or `PAYMENT_FAILED`.
//! `POST /orders/{id}/cancel` undoes an order the same way: its `OrderCancelled` goes to
//! pay, whose `PaymentRefunded` / `PaymentCancelled` comes back through the same inbox. The
//! states and what moves them are [`status`]; [`transition`] is the one place they change.
//! The order service never reads pay's database; the only call to pay is the
//! [`reconciler`]'s batch lookup, the last line of defence when a message was lost outside
//! the mechanism. [`story`] shows an operator order's rows about one order (the dashboard's
//! story).

pub mod config;
pub mod idempotency;
pub mod orders;
pub mod payment_results;
pub mod reconciler;
mod startup;
pub mod status;
pub mod story;
pub mod transition;

pub use config::{OrderSettings, variables};
pub use startup::build;
pub use status::{OrderEvent, OrderStatus};

/// The migrations of order_db (`sql/order`), applied at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/order");
