use common::config::{env_or, env_string};
use message_service::service::MessagingConfig;
use message_table::{
    amqp::AmqpConfig, inbox::InboxConfig, outbox::OutboxConfig, retention::RetentionConfig,
};

/// Routing keys of pay's answers, bound to the order service's queue.
pub const PAYMENT_RESULT_KEYS: &[&str] = &["payment.completed", "payment.failed"];

#[derive(Debug, Clone)]
pub struct OrderConfig {
    /// `ORDER_ADDR` (default `127.0.0.1:8763`); port 0 picks a free port (tests).
    pub addr: String,
    /// `ORDER_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/order_db`).
    pub database_url: String,
    /// `ORDER_DB_MAX_CONNECTIONS` (default 10).
    pub db_max_connections: u32,
    /// `AMQP_*`, `OUTBOX_*`, `INBOX_*`, and `ORDER_QUEUE` (default `order.payment-results`).
    pub messaging: MessagingConfig,
}

impl OrderConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            addr: env_string("ORDER_ADDR", "127.0.0.1:8763"),
            database_url: env_string(
                "ORDER_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/order_db",
            ),
            db_max_connections: env_or("ORDER_DB_MAX_CONNECTIONS", 10)?,
            messaging: MessagingConfig {
                amqp: AmqpConfig::from_env()?,
                outbox: OutboxConfig::from_env()?,
                inbox: InboxConfig::from_env()?,
                queue: env_string("ORDER_QUEUE", "order.payment-results"),
                retention: RetentionConfig::from_env()?,
                routing_keys: PAYMENT_RESULT_KEYS.iter().map(|s| s.to_string()).collect(),
            },
        })
    }
}
