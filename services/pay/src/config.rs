use common::config::{env_or, env_string};
use message_service::service::MessagingConfig;
use message_table::{
    amqp::AmqpConfig, inbox::InboxConfig, outbox::OutboxConfig, retention::RetentionConfig,
};

/// Routing keys bound to pay's queue.
pub const ORDER_CREATED_KEYS: &[&str] = &["order.created"];

#[derive(Debug, Clone)]
pub struct PayConfig {
    /// `PAY_ADDR` (default `127.0.0.1:8762`); port 0 picks a free port (tests).
    pub addr: String,
    /// `PAY_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/pay_db`).
    pub database_url: String,
    /// `PAY_DB_MAX_CONNECTIONS` (default 10).
    pub db_max_connections: u32,
    /// `AMQP_*`, `OUTBOX_*`, `INBOX_*`, and `PAY_QUEUE` (default `pay.order-created`).
    pub messaging: MessagingConfig,
}

impl PayConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            addr: env_string("PAY_ADDR", "127.0.0.1:8762"),
            database_url: env_string(
                "PAY_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/pay_db",
            ),
            db_max_connections: env_or("PAY_DB_MAX_CONNECTIONS", 10)?,
            messaging: MessagingConfig {
                amqp: AmqpConfig::from_env()?,
                outbox: OutboxConfig::from_env()?,
                inbox: InboxConfig::from_env()?,
                queue: env_string("PAY_QUEUE", "pay.order-created"),
                retention: RetentionConfig::from_env()?,
                routing_keys: ORDER_CREATED_KEYS.iter().map(|s| s.to_string()).collect(),
            },
        })
    }
}
