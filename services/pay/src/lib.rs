//! The pay service.
//!
//! It consumes `OrderCreated` through its inbox ([`payments`]): in one transaction the
//! message id is recorded (duplicates dropped), the account is debited, the payment row is
//! written, and the answer (`PaymentCompleted` or `PaymentFailed`) is put in pay's own
//! outbox, which its relay delivers back to the order service. Pay never calls order and
//! never reads order's database. [`story`] shows an operator pay's rows about one order
//! (the dashboard's story).

pub mod accounts;
pub mod config;
pub mod payments;
mod startup;
pub mod story;

pub use config::{PaySettings, variables};
pub use startup::build;

/// The migrations of pay_db (`sql/pay`), applied at start-up.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../sql/pay");
