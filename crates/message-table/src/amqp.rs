//! RabbitMQ connections and topology.
//!
//! One durable topic exchange carries every event; each consuming service declares its own
//! durable queue and binds it with the routing keys it wants. Producers declare the
//! exchange too (declarations are idempotent), so any start-up order works.
//!
//! The relay and the consumer of a service use separate connections: RabbitMQ applies flow
//! control per connection, and a publisher that is being throttled must not stall
//! deliveries (RabbitMQ's own advice). Each component reconnects by itself.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::backoff::RetryPolicy;

/// Where the broker is and what the shared topology is called.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    pub url: String,
    /// The durable topic exchange every event goes through.
    pub exchange: String,
    /// Tests set this so their throw-away queues are removed by the broker when unused.
    pub queue_expires: Option<Duration>,
    /// Tests set this so their throw-away exchange disappears with its last binding.
    pub exchange_auto_delete: bool,
    /// How the relay and the consumer space their reconnection attempts while the broker is
    /// unreachable. The cap bounds how long a service stays disconnected after the broker is
    /// back; the doubling keeps an outage from becoming a storm of connection attempts.
    pub reconnect: RetryPolicy,
}

impl AmqpConfig {
    /// The rules a usable broker configuration follows (checked by the service builder).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.reconnect.base.is_zero() && self.reconnect.base <= self.reconnect.max,
            "AMQP_RECONNECT_BASE_MS must be > 0 and at most AMQP_RECONNECT_MAX_MS"
        );
        Ok(())
    }
}

/// Opens a connection named after its user (it shows in the management UI).
pub async fn connect(cfg: &AmqpConfig, name: &str) -> anyhow::Result<Connection> {
    let props =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_string()));
    // lapin's own connect has no deadline; a black-holed broker must not hang a relay.
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&cfg.url, props)).await {
        Ok(res) => Ok(res?),
        Err(_) => anyhow::bail!("timed out after {CONNECT_TIMEOUT:?} connecting to the broker"),
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn declare_exchange(channel: &Channel, cfg: &AmqpConfig) -> lapin::Result<()> {
    channel
        .exchange_declare(
            ShortString::from(cfg.exchange.as_str()),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                auto_delete: cfg.exchange_auto_delete,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Declares the exchange, a durable queue, and binds the queue for each routing key.
pub async fn declare_queue(
    channel: &Channel,
    cfg: &AmqpConfig,
    queue: &str,
    routing_keys: &[&str],
) -> lapin::Result<()> {
    declare_exchange(channel, cfg).await?;
    let mut args = FieldTable::default();
    if let Some(exp) = cfg.queue_expires {
        args.insert(
            ShortString::from("x-expires"),
            AMQPValue::LongLongInt(exp.as_millis() as i64),
        );
    }
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    for key in routing_keys {
        channel
            .queue_bind(
                ShortString::from(queue),
                ShortString::from(cfg.exchange.as_str()),
                ShortString::from(*key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Whether a component currently holds a working broker connection; `/readyz` reads it.
#[derive(Debug, Clone, Default)]
pub struct BrokerStatus(Arc<AtomicBool>);

impl BrokerStatus {
    pub fn set(&self, connected: bool) {
        self.0.store(connected, Ordering::Relaxed);
    }
    pub fn is_connected(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
