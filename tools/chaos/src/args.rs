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
    /// The fault kinds, in order, space-separated.
    #[arg(
        long,
        env = "CHAOS_FAULTS",
        value_delimiter = ' ',
        default_value = "kill-order kill-pay rolling-restart pg-terminate broker-restart"
    )]
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
    /// How long an instance may take to be ready again.
    #[arg(long, env = "CHAOS_READY_SECS", default_value_t = 90)]
    pub ready_secs: u64,
    /// How long a graceful stop may take before SIGKILL.
    #[arg(long, env = "CHAOS_STOP_SECS", default_value_t = 30)]
    pub stop_secs: u64,
    /// Deadline for convergence once the load has stopped.
    #[arg(long, env = "CHAOS_CONVERGE_SECS", default_value_t = 180)]
    pub converge_secs: u64,
    /// Unreadable messages published to pay on purpose.
    #[arg(long, env = "CHAOS_POISON", default_value_t = 2)]
    pub poison: u32,
    /// The ports: pay1 +2, order1 +3, order2 +4, pay2 +5, gateway +9.
    #[arg(long, env = "CHAOS_PORT_BASE", default_value_t = 18760)]
    pub port_base: u16,
    /// 1: the gateway has both instances of each service behind its routes and the orders all
    /// go through it; 0: its routes name the first instances only, and the orders alternate
    /// between the gateway and the second order instance directly.
    #[arg(long, env = "CHAOS_GATEWAY_MULTI", default_value = "1", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub gateway_multi: bool,
    /// Each instance's pool (four instances share the server).
    #[arg(long, env = "CHAOS_DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,
    /// Logs and results.
    #[arg(long, env = "CHAOS_RUN_DIR", default_value = ".run/chaos")]
    pub run_dir: PathBuf,
    /// Only its server is used: the run has its own databases on it.
    #[arg(
        long,
        env = "ORDER_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/order_db"
    )]
    pub database_url: String,
    /// The broker (`AMQP_URL`); the exchange is the run's own, whatever `AMQP_EXCHANGE` says.
    #[command(flatten)]
    pub amqp: service_kit::settings::AmqpSettings,
}

/// One kind of fault, as `CHAOS_FAULTS` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum FaultKind {
    KillOrder,
    KillPay,
    PgTerminate,
    BrokerRestart,
    RollingRestart,
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
        let kinds: Vec<FaultKind> = cli
            .faults
            .iter()
            .copied()
            .filter(|k| cli.broker || *k != FaultKind::BrokerRestart)
            .collect();
        if kinds.is_empty() {
            return Err("CHAOS_FAULTS is empty".into());
        }
        Ok(Self {
            mode: if cli.long { "long" } else { "short" },
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
