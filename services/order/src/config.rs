//! The order service's settings ([`OrderSettings`], from the environment, `order --help`),
//! turned into the [`ServiceConfig`] and [`ReconcilerConfig`] it runs with (which tests
//! build in code).

use std::time::Duration;

use common::{admin::AdminSettings, config::Settings, telemetry::LogSettings};
use messages::ORDER_QUEUE;
use service_kit::{service::ServiceConfig, settings::MessagingSettings};

use crate::reconciler::ReconcilerConfig;

/// Every variable the order service reads, with its default.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "order", version, about)]
pub struct OrderSettings {
    /// Listen address; port 0 picks a free port.
    #[arg(long, env = "ORDER_ADDR", default_value = "127.0.0.1:8763")]
    pub order_addr: String,
    /// order's database (migrated at start-up).
    #[arg(
        long,
        env = "ORDER_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/order_db"
    )]
    pub order_database_url: String,
    /// Pool size.
    #[arg(long, env = "ORDER_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub order_db_max_connections: u32,
    /// The queue order consumes (bound to payment.completed, payment.failed, payment.refunded,
    /// payment.cancelled).
    #[arg(long, env = "ORDER_QUEUE", default_value = ORDER_QUEUE.default_name)]
    pub order_queue: String,
    #[command(flatten)]
    pub reconciler: ReconcilerSettings,
    #[command(flatten)]
    pub messaging: MessagingSettings,
    #[command(flatten)]
    pub admin: AdminSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

/// The reconciler's settings (see [`crate::reconciler`]).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Reconciler")]
pub struct ReconcilerSettings {
    /// pay's base URL, for the reconciler's lookups.
    #[arg(long, env = "ORDER_PAY_URL", default_value = "http://127.0.0.1:8762")]
    pub order_pay_url: String,
    /// How often a reconciliation pass runs.
    #[arg(long, env = "RECONCILER_INTERVAL_SECS", default_value_t = 60)]
    pub reconciler_interval_secs: u64,
    /// An order still PENDING_PAYMENT this long after its creation is looked at.
    #[arg(long, env = "RECONCILER_PENDING_AFTER_SECS", default_value_t = 300)]
    pub reconciler_pending_after_secs: u64,
    /// Orders asked about per lookup to pay (1 to 100).
    #[arg(long, env = "RECONCILER_BATCH_SIZE", default_value_t = 100)]
    pub reconciler_batch_size: i64,
}

impl From<ReconcilerSettings> for ReconcilerConfig {
    fn from(s: ReconcilerSettings) -> Self {
        Self {
            pay_url: s.order_pay_url,
            interval: Duration::from_secs(s.reconciler_interval_secs),
            pending_after: Duration::from_secs(s.reconciler_pending_after_secs),
            batch_size: s.reconciler_batch_size,
        }
    }
}

impl Settings for OrderSettings {}

impl OrderSettings {
    /// The reconciler's part (checked by [`crate::build`]).
    pub fn reconciler_config(&self) -> ReconcilerConfig {
        self.reconciler.clone().into()
    }

    /// The configuration order runs with (`ORDER_ADDR`, `ORDER_DATABASE_URL`,
    /// `ORDER_DB_MAX_CONNECTIONS`, `ORDER_QUEUE`, the messaging and `ADMIN_TOKEN`), checked
    /// when the service is built ([`service_kit::service::Service::build`]).
    pub fn into_config(self) -> ServiceConfig {
        ServiceConfig {
            addr: self.order_addr,
            database_url: self.order_database_url,
            db_max_connections: self.order_db_max_connections,
            admin: self.admin.admin_token,
            messaging: self
                .messaging
                .into_config(self.order_queue, ORDER_QUEUE.routing_keys),
        }
    }
}

/// Every variable the order service reads, with its default (docs/configuration.md lists them).
pub fn variables() -> Vec<(String, String)> {
    OrderSettings::variables()
}
