//! The command line: one subcommand per mode, `--name value` flags.

use std::{path::PathBuf, str::FromStr};

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "scripts/chaos.sh's load generator and judge (see scripts/chaos.sh)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// POST orders at a steady rate until a count, a duration or SIGTERM/SIGINT.
    Drive(DriveArgs),
    /// Publish unreadable messages to pay's routing key.
    Poison(PoisonArgs),
    /// Save an instance's inbox counters (GET /admin/stats) before it is killed or stopped.
    Snapshot(SnapshotArgs),
    /// Wait for convergence, check the invariants, print the figures.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct DriveArgs {
    /// Base URLs that serve `/buy`, comma-separated; round robin, a retry goes to the next one.
    #[arg(long, value_delimiter = ',', required = true)]
    pub targets: Vec<String>,
    /// Orders per second.
    #[arg(long, default_value_t = 30.0)]
    pub rate: f64,
    /// Orders to place (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// How long to place orders (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    pub duration_secs: f64,
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Directory for accepted.csv and drive.json.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 15_000)]
    pub request_timeout_ms: u64,
    /// Prefix of the Idempotency-Keys (default: chaos-<uuid>).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Attempts per order (the first one and the retries with the same key).
    #[arg(long, default_value_t = 12)]
    pub max_attempts: u32,
}

#[derive(Args)]
pub struct PoisonArgs {
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    #[arg(long, default_value = messages::ORDER_CREATED.routing_key)]
    pub routing_key: String,
    /// File for the ids of the messages published, one a line.
    #[arg(long)]
    pub out: PathBuf,
    /// The broker and exchange (`AMQP_URL`, `AMQP_EXCHANGE`), as the services read them.
    #[command(flatten)]
    pub amqp: message_service::settings::AmqpSettings,
}

#[derive(Args)]
pub struct SnapshotArgs {
    /// The run directory: the reading is appended to its counters.jsonl.
    #[arg(long)]
    pub dir: PathBuf,
    /// NAME=BASE_URL of the instance, e.g. pay1=http://127.0.0.1:18762.
    #[arg(long)]
    pub instance: Instance,
}

#[derive(Args)]
pub struct CheckArgs {
    /// The run directory (drive.json, accepted.csv, faults.txt, poison.ids, counters.jsonl).
    #[arg(long)]
    pub dir: PathBuf,
    /// The running order and pay instances, NAME=BASE_URL, comma-separated; a name is its
    /// service's followed by a number (order1, pay2).
    #[arg(long, value_delimiter = ',', required = true)]
    pub instances: Vec<Instance>,
    /// Balances before the load, user=cents, comma-separated.
    #[arg(long)]
    pub initial_balances: String,
    /// How long the system may take to converge once the load has stopped.
    #[arg(long, default_value_t = 180)]
    pub deadline_secs: u64,
    /// Injections each fault kind must have had under load.
    #[arg(long, default_value_t = 1)]
    pub min_each: usize,
    /// The fault kinds of the run, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
}

/// One order or pay instance.
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

impl FromStr for Instance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, url) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not NAME=BASE_URL"))?;
        Ok(Self {
            name: name.trim().to_string(),
            url: url.trim().trim_end_matches('/').to_string(),
        })
    }
}
