#![doc = include_str!("../README.md")]
pub mod admin;
pub mod advisory_lock;
pub mod amqp;
pub mod backoff;
pub mod db;
pub mod faults;
pub mod inbox;
pub mod metrics;
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
