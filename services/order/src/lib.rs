//! The order service.
//!
//! `POST /buy` creates an order in `PENDING_PAYMENT` and, in the same transaction, the
//! `OrderCreated` message in the outbox ([`orders`]). The relay delivers it to pay. Pay's
//! answer (`PaymentCompleted` / `PaymentFailed`) comes back through this service's inbox
//! ([`payment_results`]) and moves the order to `PAID` or `PAYMENT_FAILED`. The order
//! service never calls pay and never reads pay's database.

pub mod config;
pub mod orders;
pub mod payment_results;
mod startup;

pub use config::{OrderConfig, OrderSettings, variables};
pub use startup::Application;

/// The migrations of order_db (`sql/order`), applied at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/order");
