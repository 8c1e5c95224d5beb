//! `scripts/chaos.sh`'s load generator and judge. The script starts the processes and injects
//! the faults; this binary does the rest, in four modes:
//!
//! * `chaos drive`: POSTs orders at a steady rate to one or more base URLs (round robin),
//!   each with its own `Idempotency-Key`. On a transport error or a 5xx it retries with the
//!   same key (on the next URL), so an order whose answer was lost is replayed, not taken
//!   twice. Writes every order answered 2xx to `accepted.csv` and the counts to
//!   `drive.json`. Stops after `--count` orders, `--duration-secs`, or on SIGTERM/SIGINT
//!   (then it finishes the orders in flight).
//! * `chaos poison`: publishes `--count` unreadable messages to pay's routing key (poison on
//!   purpose: the check expects exactly those as `dead` in pay's inbox).
//! * `chaos snapshot`: appends an instance's inbox counters (`GET /admin/stats`) to the run's
//!   `counters.jsonl`. The script calls it just before it kills or stops an instance, whose
//!   counters die with the process.
//! * `chaos check`: waits until the system has converged, then checks the invariants across
//!   both databases and the services' `/admin` views, and prints the figures. Each check is
//!   one `ok - …` / `not ok - …` line; the exit status is 1 when one failed.
//!
//! Databases: `ORDER_DATABASE_URL`, `PAY_DATABASE_URL`; broker: `AMQP_URL`, `AMQP_EXCHANGE`
//! (the services' own variables, exported by the script).

mod args;
mod check;
mod drive;
mod figures;
mod poison;
mod stats;

use std::{
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use clap::Parser;

use args::{Cli, Command};

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn env_url(name: &str) -> AnyResult<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{name} must be set").into())
}

/// The first few items, for a failure message.
fn some<T: std::fmt::Display>(items: &[T]) -> String {
    let mut s: Vec<String> = items.iter().take(5).map(ToString::to_string).collect();
    if items.len() > 5 {
        s.push(format!("… {} in all", items.len()));
    }
    s.join("; ")
}

fn secs(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (mode, result) = match cli.command {
        Command::Drive(a) => ("drive", drive::drive(&a).await.map(|()| true)),
        Command::Poison(a) => ("poison", poison::poison(&a).await.map(|()| true)),
        Command::Snapshot(a) => ("snapshot", figures::snapshot(&a).await.map(|()| true)),
        Command::Check(a) => ("check", check::check(&a).await),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos {mode}: error: {e}");
            ExitCode::from(2)
        }
    }
}
