//! The local message table: a transactional outbox and an idempotent inbox on PostgreSQL,
//! carried over RabbitMQ. See the crate's README for what it guarantees and how a service
//! uses it.
//!
//! - [`outbox`]: [`outbox::enqueue`] a message in your transaction; the [`outbox::relay`]
//!   publishes it with publisher confirms and `mandatory`; the
//!   [`outbox::resend_scheduler`] retries and expires.
//! - [`inbox`]: [`inbox::Inbox::receive`] dedups by message id and runs your
//!   [`inbox::MessageHandler`] in the same transaction; the [`inbox::retry_sweeper`]
//!   re-runs failures; poison ends `dead`.
//! - [`retention`]: bounded deletes of what is done, one runner at a time.
//! - [`status`]: the rows' states as types ([`OutboxStatus`], [`InboxStatus`]).
//!
//! The crate owns its schema: [`migrate`] creates the `outbox` and `inbox` tables, tracked
//! in a migrations table of its own, so a service's own migrations never clash with it.
pub mod amqp;
pub mod backoff;
pub mod db;
pub mod inbox;
pub mod outbox;
pub mod retention;
pub mod status;

pub use status::{InboxStatus, OutboxStatus};

use std::{borrow::Cow, sync::LazyLock};

use sqlx::{PgPool, migrate::Migrator};

/// The table in which the crate records its own migrations (the service's own ones stay in
/// sqlx's default `_sqlx_migrations`): two migrators, two version sequences, no clash.
pub const MIGRATIONS_TABLE: &str = "_message_table_migrations";

/// The message tables' migrations (`crates/message-table/migrations`).
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name(Cow::Borrowed(MIGRATIONS_TABLE));
    migrator
});

/// Creates or upgrades the message tables (idempotent; concurrent instances are serialised
/// by sqlx's migration lock).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
