//! The chaos run (`scripts/chaos.sh` builds and runs it). It starts the real binaries as its
//! own child processes (two order and two pay instances on the same databases and queues, the
//! gateway in front), drives orders at a steady rate (users with enough money, carol without,
//! an unknown user), and meanwhile injects faults:
//!
//! * `kill-order`: SIGKILL an order instance (the first, the second, both in turn), restart
//!   it; when both are hit, the first is killed again while catching up;
//! * `kill-pay`: the same for pay (both first);
//! * `pg-terminate`: `pg_terminate_backend` on every connection to the two chaos databases;
//! * `broker-restart`: `rabbitmqctl stop_app`, a few seconds down, `start_app` (node-wide!);
//! * `rolling-restart`: one instance at a time: SIGTERM, wait for its exit, start it, wait
//!   for `/readyz`.
//!
//! Then it waits for the system to converge and checks, across both databases: every order
//! answered 2xx exists and is PAID or PAYMENT_FAILED (as expected for its user); exactly one
//! COMPLETED payment per PAID order and none for any other; balances + payments = the initial
//! total (and per account); no outbox row pending or dead, no inbox row failed or dead except
//! the poison messages injected on purpose; each graceful stop exited 0; no instance died on
//! its own, none panicked. It prints the figures (orders, faults, duplicates dropped by the
//! inbox as the instances count them, read before each kill or stop and at the end, retries,
//! time to converge after the last fault), one `ok - …` / `not ok - …` line per check and
//! `N passed, M failed`, and exits non-zero when a check failed (printing the end of each
//! log).
//!
//! * `chaos` (or `--short`): about 80 s of load at 30 orders/s, every fault kind once; about
//!   1.5 minutes in all.
//! * `chaos --long`: 20,000 orders at 35/s, every fault kind at least 3 times (7 in practice);
//!   about 10 minutes.
//! * `chaos --cluster` (`scripts/cluster-test.sh`): the services on the three-node RabbitMQ
//!   cluster of `scripts/cluster.sh` (which must run), all three addresses in `AMQP_URL`,
//!   quorum queues, no poison messages, and the node faults instead (module `nodes`):
//!   `stop-busiest-node` (the node most connections are on, from the management API),
//!   `stop-another-node`, `kill-pay-leader` (SIGKILL of the node leading pay's queue),
//!   `lose-majority` (that leader and another node stopped at once: no majority, publishes
//!   unconfirmed, kept by the outbox); each node down `CHAOS_NODE_DOWN_SECS`, then started
//!   again. The checks add: the run's dead-letter queues are empty. Its own databases
//!   `lmt_chaos_cluster_order`/`_pay`, exchange `lmt.chaos-cluster.events`, ports from
//!   18860, `.run/chaos-cluster/`, its own lock: it can run beside a short run.
//!
//! Every run prints a table: for each fault, the orders accepted during it, the longest
//! commit → settled wait of the orders it could have caught, the publishes retried, and the
//! recovery after its end (figures.rs says exactly how each is counted).
//!
//! It owns its state: databases `lmt_chaos_order` and `lmt_chaos_pay` (recreated on every
//! run, left for inspection), the exchange `lmt.chaos.events` with queues named per run
//! (removed by the broker 10 minutes after last use: whatever an aborted run left in its
//! queues cannot reach the next one), ports 18762-18769, logs and results in `.run/chaos/`.
//! It never stops PostgreSQL or RabbitMQ: if it stopped RabbitMQ's app, a guard starts it
//! again whatever happens (the fault fails, the run is interrupted with SIGINT or SIGTERM, or
//! panics). The broker restart is node-wide: other users of this RabbitMQ see it
//! (`CHAOS_BROKER=0` leaves it out). Interrupted, it kills its instances (SIGKILL). One run
//! at a time on a machine (a lock file in the temp directory).
//!
//! The services' binaries (`order`, `pay`, `gateway`) are taken from the directory this
//! binary is in: `cargo build --release -p order -p pay -p gateway -p chaos` puts them all in
//! `target/release/`.
//!
//! Environment (default for the short run / the long run; each is also a flag, see `--help`):
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `CHAOS_RATE` | orders per second | 30 / 35 |
//! | `CHAOS_ORDERS` | orders to place (0 = until the faults are done) | 0 / 20000 |
//! | `CHAOS_MIN_EACH` | rounds of the fault list, i.e. injections per kind; the long run goes on with more rounds while orders are still being placed | 1 / 3 |
//! | `CHAOS_FAULTS` | the fault kinds, in order | `kill-order kill-pay rolling-restart pg-terminate broker-restart` (cluster: `stop-busiest-node stop-another-node kill-pay-leader lose-majority`) |
//! | `CHAOS_BROKER` | 0: leave out broker-restart | 1 |
//! | `CHAOS_WARMUP_SECS` | load before the first fault | 5 |
//! | `CHAOS_INTERVAL_SECS` | load between two faults | 10 / 15 (cluster 5) |
//! | `CHAOS_TAIL_SECS` | load after the last fault | 8 / 15 (cluster 5) |
//! | `CHAOS_KILL_DOWN_SECS` | how long a killed instance stays down (4 more when both are) | 1 |
//! | `CHAOS_BROKER_DOWN_SECS` | how long RabbitMQ's app stays stopped | 5 |
//! | `CHAOS_NODE_DOWN_SECS` | cluster run: how long a stopped or killed node stays down | 5 |
//! | `CHAOS_READY_SECS` | how long an instance may take to be ready again | 90 |
//! | `CHAOS_STOP_SECS` | how long a graceful stop may take before SIGKILL | 30 |
//! | `CHAOS_CONVERGE_SECS` | deadline for convergence once the load has stopped | 180 |
//! | `CHAOS_POISON` | unreadable messages published to pay on purpose | 2 (cluster 0) |
//! | `CHAOS_PORT_BASE` | pay1 +2, order1 +3, order2 +4, pay2 +5, gateway +9 | 18760 (cluster 18860) |
//! | `CHAOS_GATEWAY_MULTI` | 1: the gateway has both instances of each service behind its routes and the orders all go through it; 0: its routes name the first instances only, and the orders alternate between the gateway and the second order instance directly | 1 |
//! | `CHAOS_DB_MAX_CONNECTIONS` | each instance's pool (four instances share the server) | 8 |
//! | `CHAOS_RUN_DIR` | logs and results | `.run/chaos` (cluster `.run/chaos-cluster`) |
//! | `ORDER_DATABASE_URL` | only its server is used | the services' default |
//! | `AMQP_URL` | the broker (the cluster run: the cluster's three nodes) | the services' default |
//! | `CLUSTER_DIR`, `CLUSTER_*_PORT_BASE` | cluster run: where the nodes are (as `scripts/cluster.sh`) | `.run/cluster`, 5700, 15700, 25700 |
//! | `ADMIN_TOKEN` | the services' admin token (the checks read `/admin/stats` with it) | kept in `<run dir>/admin-token` |
//!
//! `RUST_LOG` and the rest of the environment go to the instances as they are.
//!
//! `chaos poison --count N --out FILE` only publishes N unreadable messages to pay's routing
//! key (on `AMQP_URL`, `AMQP_EXCHANGE`) and writes their ids to FILE: the poison-message
//! scenario uses it on a running stack. `chaos refuse` has RabbitMQ nack every message for
//! pay's queue (`PAY_QUEUE`) until `chaos accept` (module `refuse`): the commit-then-send-fails
//! scenario.

mod args;
mod check;
mod drive;
mod faults;
mod figures;
mod nodes;
mod poison;
mod refuse;
mod run;
mod stack;
mod stats;

use std::{
    process::ExitCode,
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

type AnyError = Box<dyn std::error::Error + Send + Sync>;
type AnyResult<T> = Result<T, AnyError>;

/// The checks' tally: one `ok - …` / `not ok - … (details)` line each.
#[derive(Default)]
pub struct Report {
    passed: AtomicU32,
    failed: AtomicU32,
}

impl Report {
    fn check(&self, ok: bool, what: &str, details: impl FnOnce() -> String) {
        if ok {
            self.passed.fetch_add(1, Ordering::Relaxed);
            println!("ok - {what}");
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            println!("not ok - {what} ({})", details());
        }
    }

    fn failed(&self) -> u32 {
        self.failed.load(Ordering::Relaxed)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
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

/// A progress line (`# …`), part of the run's output.
fn note(line: &str) {
    println!("# {line}");
}

/// A step of the run, on stderr.
fn log(line: &str) {
    eprintln!("==> {line}");
}

/// SIGINT or SIGTERM: the signal's name.
async fn interrupted() -> &'static str {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// `chaos poison`: the messages, and a line on stderr.
async fn poison(a: args::PoisonArgs) -> ExitCode {
    let amqp = message_table::amqp::AmqpConfig::from(a.amqp);
    match poison::poison(&amqp, &a.routing_key, a.count, &a.out).await {
        Ok(()) => {
            eprintln!(
                "chaos poison: published {} unreadable messages with routing key {}",
                a.count, a.routing_key
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chaos poison: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `chaos publish`: one outbox row on the broker, and a line on stderr.
async fn publish(a: args::PublishArgs) -> ExitCode {
    let amqp = message_table::amqp::AmqpConfig::from(a.amqp);
    match poison::publish_row(&amqp, &a.database_url, a.outbox_id).await {
        Ok(what) => {
            eprintln!("chaos publish: {what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chaos publish: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `chaos refuse` and `chaos accept`: the bindings changed, and a line on stderr.
async fn refuse_or_accept(refuse: bool, a: args::QueueArgs) -> ExitCode {
    let amqp = message_table::amqp::AmqpConfig::from(a.amqp);
    let (queue, key, refuser) = (&a.queue, &a.routing_key, refuse::refuser_of(&a.queue));
    let (verb, done, what) = if refuse {
        let done = refuse::refuse(&amqp, queue, key).await;
        (
            "refuse",
            done,
            format!("{refuser} bound to {key} instead of {queue}"),
        )
    } else {
        let done = refuse::accept(&amqp, queue, key).await;
        (
            "accept",
            done,
            format!("{queue} bound to {key}, {refuser} deleted"),
        )
    };
    match done {
        Ok(()) => {
            eprintln!("chaos {verb}: {what}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chaos {verb}: error: {e}");
            ExitCode::from(2)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match cli.command {
        Some(args::Command::Poison(a)) => return poison(a).await,
        Some(args::Command::Refuse(a)) => return refuse_or_accept(true, a).await,
        Some(args::Command::Accept(a)) => return refuse_or_accept(false, a).await,
        Some(args::Command::Publish(a)) => return publish(a).await,
        None => {}
    }
    let config = match args::Config::resolve(cli.run) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = Report::default();
    // An interruption drops the run: its guards start RabbitMQ's app again and kill the
    // instances.
    let aborted = tokio::select! {
        result = run::run(&config, &report) => result.err().map(|e| (e.to_string(), 1)),
        signal = interrupted() => Some((format!("interrupted by {signal}"), 130)),
    };
    let mut code = 0;
    if let Some((why, status)) = aborted {
        eprintln!("error: {why}");
        report.check(false, "the chaos run ran to the end", || why);
        code = status;
    }
    if report.failed() > 0 {
        stack::print_logs(&config.run_dir);
        code = code.max(1);
    }
    println!(
        "{} passed, {} failed",
        report.passed.load(Ordering::Relaxed),
        report.failed()
    );
    ExitCode::from(code)
}
