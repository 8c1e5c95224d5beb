//! RabbitMQ connections and topology.
//!
//! One durable topic exchange carries every event; each consuming service declares its own
//! durable queue and binds it with the routing keys it wants. Producers declare the
//! exchange too (declarations are idempotent), so any start-up order works.
//!
//! The relay and the consumer of a service use separate connections: RabbitMQ applies flow
//! control per connection, and a publisher that is being throttled must not stall
//! deliveries (RabbitMQ's own advice). Each component reconnects by itself.
//!
//! # Several broker addresses
//! `AMQP_URL` may name several nodes of one cluster, comma-separated
//! ([`AmqpConfig::addresses`], checked at start-up by [`AmqpConfig::validate`]). Every node
//! accepts clients for every queue (it forwards to the queue's leader), so any will do. Each
//! connection of a service is a [`BrokerLink`] ("pay/relay", "pay/consumer"…); [`connect_link`]
//! tries the addresses in turn, from the link's starting address, and the caller sleeps its
//! reconnect back-off only after a whole round failed. The first connect of a link starts
//! at an address picked from its name and a per-process random number, so the links of a
//! service, and the instances of a service, spread over the nodes instead of all landing
//! on the first one; every later connect starts at the address after the one the link was
//! last on (that node has just failed it). The connection is named
//! `<service>/<role>@<node>` (the management UI shows it), and the link records its node
//! for `/readyz` and `/metrics`.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    str::FromStr,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use lapin::{
    Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
    uri::AMQPUri,
};

use crate::backoff::RetryPolicy;

/// Where the broker is and what the shared topology is called.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// One broker address, or the nodes of one cluster, comma-separated
    /// ([`Self::addresses`]).
    pub url: String,
    /// The durable topic exchange every event goes through.
    pub exchange: String,
    /// How the services' queues are declared (`AMQP_QUEUE_TYPE`).
    pub queue_type: QueueType,
    /// Quorum queues: deliveries of a message after which the broker dead-letters it
    /// instead of handing it out again (`AMQP_DELIVERY_LIMIT`).
    pub delivery_limit: u32,
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
        anyhow::ensure!(self.delivery_limit > 0, "AMQP_DELIVERY_LIMIT must be > 0");
        self.addresses()?;
        Ok(())
    }

    /// The broker addresses of `url`, in its order. Refuses an empty entry and one that is
    /// not an AMQP URL, naming its position (never its text: it holds a password).
    pub fn addresses(&self) -> anyhow::Result<Vec<BrokerAddress>> {
        let entries: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let count = entries.len();
        entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                let position = i + 1;
                anyhow::ensure!(
                    !entry.is_empty(),
                    "AMQP_URL: address {position} of {count} is empty (a stray comma?)"
                );
                let uri = AMQPUri::from_str(entry).map_err(|e| {
                    anyhow::anyhow!(
                        "AMQP_URL: address {position} of {count} is not an AMQP URL \
                         (amqp://user:password@host:port/vhost): {e}"
                    )
                })?;
                Ok(BrokerAddress {
                    url: entry.to_string(),
                    node: format!("{}:{}", uri.authority.host, uri.authority.port),
                })
            })
            .collect()
    }
}

/// How a service's queue is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Replicated on several nodes (a Raft group): it survives the loss of a node, and a
    /// publisher confirm means a majority of its replicas has the message.
    #[default]
    Quorum,
    /// On one node; kept for comparison and for brokers whose queues are classic already.
    Classic,
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            other => Err(format!("{other:?} is not a queue type: quorum or classic")),
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        })
    }
}

/// One address of `AMQP_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub url: String,
    /// `host:port`: how connection names, `/readyz` and `/metrics` name the node.
    pub node: String,
}

/// One broker connection of a service (its relay, its consumer…): its name, the address
/// its next connect starts at, and the node it is on now (`/readyz` and `/metrics` read
/// it). Clones share that state.
#[derive(Debug, Clone)]
pub struct BrokerLink {
    name: Arc<str>,
    state: Arc<Mutex<LinkState>>,
}

#[derive(Debug, Default)]
struct LinkState {
    /// The node of the working connection, while there is one.
    node: Option<String>,
    /// The address the next connect tries first; `None` before the first connect.
    next: Option<usize>,
}

impl BrokerLink {
    /// `name` is `<service>/<role>` ("pay/relay").
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into().into(),
            state: Arc::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node of the working connection, `None` while disconnected.
    pub fn node(&self) -> Option<String> {
        self.state().node.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.state().node.is_some()
    }

    /// The link works, on `node` (its user calls this once it is really usable: the
    /// consumer after its consume started).
    pub fn set_connected(&self, node: &str) {
        self.state().node = Some(node.to_string());
    }

    pub fn set_disconnected(&self) {
        self.state().node = None;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where this link's next connect starts among `count` addresses: after its first one,
    /// the address after the last it reached.
    fn first_address(&self, count: usize) -> usize {
        let mut state = self.state();
        *state.next.get_or_insert_with(|| {
            let mut hasher = DefaultHasher::new();
            (*PROCESS_SPREAD, &*self.name).hash(&mut hasher);
            hasher.finish() as usize
        }) % count
    }

    fn reached(&self, index: usize) {
        self.state().next = Some(index + 1);
    }
}

/// Mixed into each link's first address, so two instances of a service with the same
/// link names do not pick the same node.
static PROCESS_SPREAD: LazyLock<u64> = LazyLock::new(rand::random);

/// A working connection of `link` and the node it reached: the addresses are tried in turn
/// from the link's starting one (see the module docs), each within [`CONNECT_TIMEOUT`].
/// `Err` after a whole round failed; the caller backs off before the next round. The
/// connection is named `<link>@<node>` in the management UI.
pub async fn connect_link(
    cfg: &AmqpConfig,
    link: &BrokerLink,
) -> anyhow::Result<(Connection, String)> {
    let addresses = cfg.addresses()?;
    let start = link.first_address(addresses.len());
    let mut errors = Vec::with_capacity(addresses.len());
    for offset in 0..addresses.len() {
        let index = (start + offset) % addresses.len();
        let address = &addresses[index];
        let name = format!("{}@{}", link.name(), address.node);
        let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
        // lapin's own connect has no deadline; a black-holed node must not hang a relay.
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&address.url, props)).await
        {
            Ok(Ok(conn)) => {
                link.reached(index);
                return Ok((conn, address.node.clone()));
            }
            Ok(Err(e)) => errors.push(format!("{}: {e}", address.node)),
            Err(_) => errors.push(format!(
                "{}: timed out after {CONNECT_TIMEOUT:?}",
                address.node
            )),
        }
    }
    anyhow::bail!("no broker address answered ({})", errors.join("; "))
}

/// A one-off connection named `name` (tests, tools, the admin probe): [`connect_link`]
/// without a link to keep.
pub async fn connect(cfg: &AmqpConfig, name: &str) -> anyhow::Result<Connection> {
    Ok(connect_link(cfg, &BrokerLink::new(name)).await?.0)
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn declare_exchange(channel: &Channel, cfg: &AmqpConfig) -> lapin::Result<()> {
    declare_exchange_named(channel, cfg, &cfg.exchange, ExchangeKind::Topic).await
}

async fn declare_exchange_named(
    channel: &Channel,
    cfg: &AmqpConfig,
    name: &str,
    kind: ExchangeKind,
) -> lapin::Result<()> {
    channel
        .exchange_declare(
            ShortString::from(name),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                auto_delete: cfg.exchange_auto_delete,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The dead-letter exchange of the services' exchange: `<exchange>.dead`, direct.
pub fn dead_letter_exchange(cfg: &AmqpConfig) -> String {
    format!("{}.dead", cfg.exchange)
}

/// The dead-letter queue of `queue`: `<queue>.dead`, bound to [`dead_letter_exchange`] with
/// the queue's name as routing key (each queue's dead letters carry it).
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declares the exchange and a durable `queue` bound for each routing key; a quorum queue
/// ([`QueueType::Quorum`]) with its dead-letter path declared first ([`queue_arguments`]),
/// so a message dead-lettered at once already has somewhere to go. A declaration that
/// differs from the existing queue's is [`DeclareError::Incompatible`].
pub async fn declare_queue(
    channel: &Channel,
    cfg: &AmqpConfig,
    queue: &str,
    routing_keys: &[&str],
) -> Result<(), DeclareError> {
    declare_exchange(channel, cfg).await?;
    if cfg.queue_type == QueueType::Quorum {
        let dead_letters = dead_letter_queue(queue);
        let exchange = dead_letter_exchange(cfg);
        declare_exchange_named(channel, cfg, &exchange, ExchangeKind::Direct).await?;
        declare_one(channel, &dead_letters, dead_letter_queue_arguments(cfg)).await?;
        bind(channel, &dead_letters, &exchange, queue).await?;
    }
    declare_queue_with(
        channel,
        cfg,
        queue,
        routing_keys,
        queue_arguments(cfg, queue),
    )
    .await
}

/// Declares a durable `queue` with `args`, bound to the exchange for each routing key: what
/// [`declare_queue`] does for a service's queue, for a queue of other arguments (a test's
/// control, [`refusing_queue_arguments`]).
pub async fn declare_queue_with(
    channel: &Channel,
    cfg: &AmqpConfig,
    queue: &str,
    routing_keys: &[&str],
    args: FieldTable,
) -> Result<(), DeclareError> {
    declare_one(channel, queue, args).await?;
    for key in routing_keys {
        bind(channel, queue, &cfg.exchange, key).await?;
    }
    Ok(())
}

async fn declare_one(channel: &Channel, queue: &str, args: FieldTable) -> Result<(), DeclareError> {
    channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map(|_| ())
        .map_err(|e| DeclareError::from_lapin(e, queue))
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// The arguments of a service's queue. Classic: only `x-expires` (tests). Quorum:
/// - `x-queue-type: quorum`;
/// - `x-delivery-limit`: a message handed back more often than this (a consumer that
///   crashes on it, or cannot read it) is dead-lettered instead of looping for ever;
/// - `x-dead-letter-exchange` and `x-dead-letter-routing-key`: to this queue's dead-letter
///   queue;
/// - `x-dead-letter-strategy: at-least-once`, the broker keeps a dead letter until the
///   dead-letter queue confirmed it, *with* `x-overflow: reject-publish`: without it RabbitMQ
///   accepts the declaration and silently dead-letters at most once (dropping what it
///   cannot route).
pub fn queue_arguments(cfg: &AmqpConfig, queue: &str) -> FieldTable {
    let mut args = expiry(cfg);
    if cfg.queue_type == QueueType::Quorum {
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        args.insert("x-queue-type".into(), text("quorum"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(cfg.delivery_limit.into()),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            text(&dead_letter_exchange(cfg)),
        );
        args.insert("x-dead-letter-routing-key".into(), text(queue));
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
    }
    args
}

/// The arguments of a queue that refuses every message, so that RabbitMQ nacks each publish
/// routed to it (the tests' and the failure scenarios' broker that says no): a classic queue
/// with `x-max-length` 0 and `x-overflow: reject-publish`. Classic, because a quorum queue
/// admits one message into an empty queue before it refuses. Expires as the services'
/// queues do ([`AmqpConfig::queue_expires`]).
pub fn refusing_queue_arguments(cfg: &AmqpConfig) -> FieldTable {
    let mut args = expiry(cfg);
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    args.insert("x-queue-type".into(), text("classic"));
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    args.insert("x-overflow".into(), text("reject-publish"));
    args
}

/// A dead-letter queue: a quorum queue (it survives a node like the queue it serves),
/// without a dead-letter path of its own.
fn dead_letter_queue_arguments(cfg: &AmqpConfig) -> FieldTable {
    let mut args = expiry(cfg);
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args
}

fn expiry(cfg: &AmqpConfig) -> FieldTable {
    let mut args = FieldTable::default();
    if let Some(exp) = cfg.queue_expires {
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(exp.as_millis() as i64),
        );
    }
    args
}

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum DeclareError {
    /// The queue exists with other arguments (406 PRECONDITION_FAILED): retrying cannot
    /// help, an operator has to act.
    #[error(
        "queue {queue:?} exists with other arguments than this service declares ({reply}). \
         A queue keeps its type and arguments for life: delete it once it is drained \
         (rabbitmqctl delete_queue {queue}; it is declared again at start-up), or set \
         AMQP_QUEUE_TYPE to the type it has (classic for a queue made before quorum queues \
         were the default)"
    )]
    Incompatible { queue: String, reply: String },
    /// The broker is unreachable or the channel broke: worth another try.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

impl DeclareError {
    fn from_lapin(e: lapin::Error, queue: &str) -> Self {
        match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406 => {
                DeclareError::Incompatible {
                    queue: queue.to_string(),
                    reply: amqp.get_message().to_string(),
                }
            }
            _ => DeclareError::Broker(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> AmqpConfig {
        AmqpConfig {
            url: url.into(),
            exchange: "x".into(),
            queue_type: QueueType::Quorum,
            delivery_limit: 20,
            queue_expires: None,
            exchange_auto_delete: false,
            reconnect: RetryPolicy {
                base: Duration::from_millis(200),
                max: Duration::from_secs(5),
                max_attempts: i32::MAX,
            },
        }
    }

    #[test]
    fn a_list_of_addresses_is_read_in_order_with_each_node() {
        let cfg = config(
            "amqp://guest:guest@127.0.0.1:5701/%2f, amqp://guest:guest@127.0.0.1:5702/%2f,amqp://h",
        );
        let nodes: Vec<String> = cfg
            .addresses()
            .unwrap()
            .into_iter()
            .map(|a| a.node)
            .collect();
        assert_eq!(nodes, ["127.0.0.1:5701", "127.0.0.1:5702", "h:5672"]);
        cfg.validate().unwrap();
    }

    #[test]
    fn an_empty_entry_or_a_bad_url_is_refused_by_position_without_the_password() {
        let empty = config("amqp://u:secret@a:1/%2f,,amqp://u:secret@b:2/%2f")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(empty.contains("address 2 of 3 is empty"), "{empty}");
        let bad = config("amqp://u:secret@a:1/%2f,http://u:secret@b")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(bad.contains("address 2 of 2 is not an AMQP URL"), "{bad}");
        assert!(!bad.contains("secret") && !empty.contains("secret"));
        assert!(config("").validate().is_err());
    }

    #[test]
    fn links_spread_over_the_nodes_and_move_on_after_the_node_they_were_on() {
        let starts: std::collections::HashSet<usize> = (0..32)
            .map(|i| BrokerLink::new(format!("svc/relay-{i}")).first_address(3))
            .collect();
        assert_eq!(starts.len(), 3, "32 links all start on {starts:?}");
        let link = BrokerLink::new("svc/consumer");
        let first = link.first_address(3);
        assert_eq!(
            link.first_address(3),
            first,
            "stable until it reaches a node"
        );
        link.reached(2);
        assert_eq!(
            link.first_address(3),
            0,
            "the address after the one it was on"
        );
    }
}
