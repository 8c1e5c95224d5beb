//! The peer's settings: what the caller gives per run (environment) and what RustStream's
//! documentation recommends (constants; README.md says where each comes from).

use std::{net::SocketAddr, num::NonZeroU16, num::NonZeroUsize, str::FromStr, time::Duration};

use anyhow::{Context as _, bail};

/// Relay workers per relay table: rows published at once, each awaiting its confirm.
pub const RELAY_WORKERS: NonZeroUsize = NonZeroUsize::new(32).unwrap();
/// Consumer workers per RabbitMQ subscription: deliveries handled at once.
pub const CONSUMER_WORKERS: NonZeroUsize = NonZeroUsize::new(32).unwrap();
/// Unacknowledged deliveries per subscription (`basic.qos`), the lapin production guide's.
pub const PREFETCH: NonZeroU16 = NonZeroU16::new(64).unwrap();
/// How long a relay claim leases its row: ruststream-sqlx's default, set explicitly.
pub const LEASE: Duration = Duration::from_secs(30);
/// The relay's fallback poll when no notification woke it: ruststream-sqlx's default.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a SIGTERM waits for handlers in flight before they are aborted.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Database connections: one per consumer worker (each runs a transaction), one the relay's
/// claims and settlements share, and one `listen_notify` holds for the process's life (the
/// production guide's sizing, workers + 1, plus the listener).
pub const POOL_SIZE: u32 = CONSUMER_WORKERS.get() as u32 + 2;

/// Which side of the flow the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Order,
    Pay,
}

impl FromStr for Role {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "order" => Ok(Role::Order),
            "pay" => Ok(Role::Pay),
            other => bail!("unknown role {other:?}: expected `order` or `pay`"),
        }
    }
}

/// The RabbitMQ queue type both sides declare (the run's, as for this system).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    Classic,
    #[default]
    Quorum,
}

impl FromStr for QueueType {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => bail!("unknown queue type {other:?}: expected `classic` or `quorum`"),
        }
    }
}

/// One process's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PEER_ADDR`: where `GET /readyz` is served.
    pub addr: SocketAddr,
    /// `DATABASE_URL`: this side's database.
    pub database_url: String,
    /// `AMQP_URL`.
    pub amqp_url: String,
    /// `PEER_EXCHANGE`: the run's topic exchange, unique per run.
    pub exchange: String,
    /// `PEER_ORDER_QUEUE`: order's queue of pay's answers.
    pub order_queue: String,
    /// `PEER_PAY_QUEUE`: pay's queue of orders.
    pub pay_queue: String,
    /// `PEER_QUEUE_TYPE`: `classic` or `quorum` (default).
    pub queue_type: QueueType,
    /// `PEER_QUEUE_EXPIRES_MS` (optional): the queue's `x-expires`, so queues of a test or a
    /// run on a shared broker go away once unused.
    pub queue_expires: Option<Duration>,
}

impl Config {
    /// Reads the environment; names the variable that is missing or wrong.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
        let optional = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Ok(Config {
            addr: var("PEER_ADDR")?
                .parse()
                .context("PEER_ADDR: expected host:port")?,
            database_url: var("DATABASE_URL")?,
            amqp_url: var("AMQP_URL")?,
            exchange: var("PEER_EXCHANGE")?,
            order_queue: var("PEER_ORDER_QUEUE")?,
            pay_queue: var("PEER_PAY_QUEUE")?,
            queue_type: optional("PEER_QUEUE_TYPE")
                .map(|v| v.parse().context("PEER_QUEUE_TYPE"))
                .transpose()?
                .unwrap_or_default(),
            queue_expires: optional("PEER_QUEUE_EXPIRES_MS")
                .map(|v| {
                    v.parse()
                        .map(Duration::from_millis)
                        .context("PEER_QUEUE_EXPIRES_MS: expected milliseconds")
                })
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_queue_types_parse_and_refuse_the_rest() {
        assert_eq!("order".parse::<Role>().unwrap(), Role::Order);
        assert_eq!("pay".parse::<Role>().unwrap(), Role::Pay);
        assert!("gateway".parse::<Role>().is_err());
        assert_eq!("classic".parse::<QueueType>().unwrap(), QueueType::Classic);
        assert_eq!("quorum".parse::<QueueType>().unwrap(), QueueType::Quorum);
        assert!("stream".parse::<QueueType>().is_err());
    }
}
