//! The command line: `--long` or `--short`, and the `CHAOS_*` variables (each also a flag).
//! A setting left out takes its mode's default (short / long).

use std::{fmt, path::PathBuf};

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum, builder::BoolishValueParser};

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "The chaos run: the real binaries, faults under load, then the invariants (see scripts/chaos.sh)"
)]
pub struct Cli {
    /// Without one: the chaos run.
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand)]
pub enum Command {
    /// Publish unreadable messages to pay's routing key, nothing else (the poison-message
    /// scenario uses it on a running stack).
    Poison(PoisonArgs),
    /// Make RabbitMQ nack every message for pay's queue: a queue that refuses them takes
    /// that queue's binding (the commit-then-send-fails scenario).
    Refuse(QueueArgs),
    /// Undo `refuse`: pay's queue bound again, the refusing queue deleted.
    Accept(QueueArgs),
    /// Publish one outbox row by hand, as the relay would, ahead of its turn (the
    /// out-of-order scenario: an order's second message before its first).
    Publish(PublishArgs),
}

#[derive(Args)]
pub struct PublishArgs {
    /// The outbox row to publish (its id).
    #[arg(long)]
    pub outbox_id: uuid::Uuid,
    /// The database whose outbox holds it.
    #[arg(long, env = "ORDER_DATABASE_URL")]
    pub database_url: String,
    /// The broker and exchange (`AMQP_URL`, `AMQP_EXCHANGE`), as the services read them.
    #[command(flatten)]
    pub amqp: service_kit::settings::AmqpSettings,
}

#[derive(Args)]
pub struct QueueArgs {
    /// pay's queue, as pay reads it.
    #[arg(long, env = "PAY_QUEUE", default_value = messages::PAY_QUEUE.default_name)]
    pub queue: String,
    #[arg(long, default_value = crate::poison::PAY_ROUTING_KEY)]
    pub routing_key: String,
    /// The broker, exchange and queue settings (`AMQP_*`), as the services read them.
    #[command(flatten)]
    pub amqp: service_kit::settings::AmqpSettings,
}

#[derive(Args)]
pub struct PoisonArgs {
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    #[arg(long, default_value = crate::poison::PAY_ROUTING_KEY)]
    pub routing_key: String,
    /// File for the ids of the messages published, one a line.
    #[arg(long)]
    pub out: PathBuf,
    /// The broker and exchange (`AMQP_URL`, `AMQP_EXCHANGE`), as the services read them.
    #[command(flatten)]
    pub amqp: service_kit::settings::AmqpSettings,
}

/// The run's settings as given; [`Config`] completes them with the mode's defaults.
#[derive(Args)]
pub struct RunArgs {
    /// The long run: 20,000 orders at 35/s, every fault kind at least 3 times.
    #[arg(long, conflicts_with = "short")]
    pub long: bool,
    /// The short run (the default): about 80 s of load, every fault kind once.
    #[arg(long)]
    pub short: bool,
    /// The cluster run: the services on the three-node cluster (`scripts/cluster.sh start`),
    /// all three addresses in `AMQP_URL`, and the node faults (stop the node most links
    /// are on, stop another, SIGKILL the leader of pay's queue, stop two of three).
    #[arg(long, conflicts_with = "long")]
    pub cluster: bool,
    /// Orders per second [short 30, long 35].
    #[arg(long, env = "CHAOS_RATE")]
    pub rate: Option<f64>,
    /// Orders to place, 0 = until the faults are done [short 0, long 20000].
    #[arg(long, env = "CHAOS_ORDERS")]
    pub orders: Option<u64>,
    /// Rounds of the fault list, i.e. injections per kind [short 1, long 3]; the long run
    /// goes on with more rounds while orders are still being placed.
    #[arg(long, env = "CHAOS_MIN_EACH")]
    pub min_each: Option<usize>,
    /// The fault kinds, in order, space-separated [kill-order kill-pay rolling-restart
    /// pg-terminate broker-restart; cluster: stop-busiest-node stop-another-node
    /// kill-pay-leader lose-majority].
    #[arg(long, env = "CHAOS_FAULTS", value_delimiter = ' ')]
    pub faults: Vec<FaultKind>,
    /// 0 leaves out broker-restart.
    #[arg(long, env = "CHAOS_BROKER", default_value = "1", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub broker: bool,
    /// Load before the first fault, in seconds.
    #[arg(long, env = "CHAOS_WARMUP_SECS", default_value_t = 5)]
    pub warmup_secs: u64,
    /// Load between two faults, in seconds [short 10, long 15].
    #[arg(long, env = "CHAOS_INTERVAL_SECS")]
    pub interval_secs: Option<u64>,
    /// Load after the last fault, in seconds [short 8, long 15].
    #[arg(long, env = "CHAOS_TAIL_SECS")]
    pub tail_secs: Option<u64>,
    /// How long a killed instance stays down (4 s more when both instances are).
    #[arg(long, env = "CHAOS_KILL_DOWN_SECS", default_value_t = 1)]
    pub kill_down_secs: u64,
    /// How long RabbitMQ's app stays stopped.
    #[arg(long, env = "CHAOS_BROKER_DOWN_SECS", default_value_t = 5)]
    pub broker_down_secs: u64,
    /// Cluster run: how long a stopped or killed node stays down.
    #[arg(long, env = "CHAOS_NODE_DOWN_SECS", default_value_t = 5)]
    pub node_down_secs: u64,
    /// How long an instance may take to be ready again.
    #[arg(long, env = "CHAOS_READY_SECS", default_value_t = 90)]
    pub ready_secs: u64,
    /// How long a graceful stop may take before SIGKILL.
    #[arg(long, env = "CHAOS_STOP_SECS", default_value_t = 30)]
    pub stop_secs: u64,
    /// Deadline for convergence once the load has stopped.
    #[arg(long, env = "CHAOS_CONVERGE_SECS", default_value_t = 180)]
    pub converge_secs: u64,
    /// Unreadable messages published to pay on purpose [2; cluster 0].
    #[arg(long, env = "CHAOS_POISON")]
    pub poison: Option<u32>,
    /// The ports: pay1 +2, order1 +3, order2 +4, pay2 +5, gateway +9 [18760; cluster 18860].
    #[arg(long, env = "CHAOS_PORT_BASE")]
    pub port_base: Option<u16>,
    /// 1: the gateway has both instances of each service behind its routes and the orders all
    /// go through it; 0: its routes name the first instances only, and the orders alternate
    /// between the gateway and the second order instance directly.
    #[arg(long, env = "CHAOS_GATEWAY_MULTI", default_value = "1", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub gateway_multi: bool,
    /// Each instance's pool (four instances share the server).
    #[arg(long, env = "CHAOS_DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,
    /// Logs and results [.run/chaos; cluster .run/chaos-cluster].
    #[arg(long, env = "CHAOS_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Only its server is used: the run has its own databases on it.
    #[arg(
        long,
        env = "ORDER_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/order_db"
    )]
    pub database_url: String,
    /// The broker (`AMQP_URL`; the cluster run uses the cluster's three); the exchange is
    /// the run's own, whatever `AMQP_EXCHANGE` says.
    #[command(flatten)]
    pub amqp: service_kit::settings::AmqpSettings,
    /// Where the cluster is (the cluster run).
    #[command(flatten)]
    pub cluster_settings: cluster::Settings,
}

/// One kind of fault, as `CHAOS_FAULTS` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum FaultKind {
    KillOrder,
    KillPay,
    PgTerminate,
    BrokerRestart,
    RollingRestart,
    /// Cluster: stop the node most of the services' connections are on, start it again.
    StopBusiestNode,
    /// Cluster: stop another node, start it again.
    StopAnotherNode,
    /// Cluster: SIGKILL the node leading pay's queue, start it again.
    KillPayLeader,
    /// Cluster: stop two nodes of three at once (no majority), start them again.
    LoseMajority,
}

impl FaultKind {
    /// The kinds a run takes by default.
    fn defaults(cluster: bool) -> Vec<FaultKind> {
        use FaultKind::*;
        if cluster {
            vec![
                StopBusiestNode,
                StopAnotherNode,
                KillPayLeader,
                LoseMajority,
            ]
        } else {
            vec![
                KillOrder,
                KillPay,
                RollingRestart,
                PgTerminate,
                BrokerRestart,
            ]
        }
    }

    fn needs_cluster(self) -> bool {
        use FaultKind::*;
        matches!(
            self,
            StopBusiestNode | StopAnotherNode | KillPayLeader | LoseMajority
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.to_possible_value().expect("no variant is skipped");
        f.write_str(value.get_name())
    }
}

/// The run's settings, each with its mode's default.
pub struct Config {
    pub mode: &'static str,
    /// `chaos` or `chaos-cluster`: the run's own databases (`lmt_chaos_cluster_order`…),
    /// exchange (`lmt.chaos-cluster.events`), queues, lock, run directory.
    pub name: &'static str,
    pub run_dir: PathBuf,
    pub port_base: u16,
    pub poison: u32,
    pub rate: f64,
    pub orders: u64,
    pub min_each: usize,
    pub kinds: Vec<FaultKind>,
    pub interval_secs: u64,
    pub tail_secs: u64,
    pub cli: RunArgs,
}

impl Config {
    pub fn resolve(cli: RunArgs) -> Result<Self, String> {
        // rate, orders, rounds, interval, tail
        let (rate, orders, min_each, interval_secs, tail_secs) = if cli.long {
            (35.0, 20_000, 3, 15, 15)
        } else {
            (30.0, 0, 1, 10, 8)
        };
        let (interval_secs, tail_secs) = if cli.cluster {
            // The cluster run must stay short (a node takes 10 to 30 s to come back).
            (5, 5)
        } else {
            (interval_secs, tail_secs)
        };
        let kinds: Vec<FaultKind> = if cli.faults.is_empty() {
            FaultKind::defaults(cli.cluster)
        } else {
            cli.faults.clone()
        };
        let kinds: Vec<FaultKind> = kinds
            .into_iter()
            .filter(|k| cli.broker || *k != FaultKind::BrokerRestart)
            .collect();
        if kinds.is_empty() {
            return Err("CHAOS_FAULTS is empty".into());
        }
        if let Some(k) = kinds.iter().find(|k| k.needs_cluster() != cli.cluster) {
            return Err(if cli.cluster {
                format!("{k} is not a fault of the cluster run")
            } else {
                format!("{k} needs the cluster run (--cluster)")
            });
        }
        let name = if cli.cluster {
            "chaos-cluster"
        } else {
            "chaos"
        };
        Ok(Self {
            mode: match (cli.cluster, cli.long) {
                (true, _) => "cluster",
                (false, true) => "long",
                (false, false) => "short",
            },
            name,
            run_dir: cli
                .run_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(".run").join(name)),
            port_base: cli
                .port_base
                .unwrap_or(if cli.cluster { 18860 } else { 18760 }),
            poison: cli.poison.unwrap_or(if cli.cluster { 0 } else { 2 }),
            rate: cli.rate.unwrap_or(rate),
            orders: cli.orders.unwrap_or(orders),
            min_each: cli.min_each.unwrap_or(min_each),
            interval_secs: cli.interval_secs.unwrap_or(interval_secs),
            tail_secs: cli.tail_secs.unwrap_or(tail_secs),
            kinds,
            cli,
        })
    }
}

/// One order or pay instance, as the checks ask it about its service's tables.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub url: String,
}

impl Instance {
    pub fn service(&self) -> &str {
        service_of(&self.name)
    }
}

/// `order` for the instance `order2`.
pub fn service_of(instance: &str) -> &str {
    instance.trim_end_matches(|c: char| c.is_ascii_digit())
}
