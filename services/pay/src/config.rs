//! The pay service's settings ([`PaySettings`], from the environment, `pay --help`),
//! turned into the [`ServiceConfig`] it runs with (which tests build in code).

use common::{admin::AdminSettings, config::Settings, telemetry::LogSettings};
use messages::PAY_QUEUE;
use service_kit::{service::ServiceConfig, settings::MessagingSettings};

/// Every variable the pay service reads, with its default.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "pay", version, about)]
pub struct PaySettings {
    /// Listen address; port 0 picks a free port.
    #[arg(long, env = "PAY_ADDR", default_value = "127.0.0.1:8762")]
    pub pay_addr: String,
    /// pay's database (migrated at start-up).
    #[arg(
        long,
        env = "PAY_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/pay_db"
    )]
    pub pay_database_url: String,
    /// Pool size.
    #[arg(long, env = "PAY_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub pay_db_max_connections: u32,
    /// The queue pay consumes (bound to order.created and order.cancelled).
    #[arg(long, env = "PAY_QUEUE", default_value = PAY_QUEUE.default_name)]
    pub pay_queue: String,
    #[command(flatten)]
    pub messaging: MessagingSettings,
    #[command(flatten)]
    pub admin: AdminSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

impl Settings for PaySettings {}

impl PaySettings {
    /// The configuration pay runs with (`PAY_ADDR`, `PAY_DATABASE_URL`,
    /// `PAY_DB_MAX_CONNECTIONS`, `PAY_QUEUE`, the messaging and `ADMIN_TOKEN`), checked when
    /// the service is built ([`service_kit::service::Service::build`]).
    pub fn into_config(self) -> ServiceConfig {
        ServiceConfig {
            addr: self.pay_addr,
            database_url: self.pay_database_url,
            db_max_connections: self.pay_db_max_connections,
            admin: self.admin.admin_token,
            messaging: self
                .messaging
                .into_config(self.pay_queue, PAY_QUEUE.routing_keys),
        }
    }
}

/// Every variable the pay service reads, with its default (docs/configuration.md lists them).
pub fn variables() -> Vec<(String, String)> {
    PaySettings::variables()
}
