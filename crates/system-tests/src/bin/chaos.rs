//! `scripts/chaos.sh`'s load generator and judge. The script starts the processes and injects
//! the faults; this binary does the rest, in three modes:
//!
//! * `chaos drive`: POSTs orders at a steady rate to one or more base URLs (round robin),
//!   each with its own `Idempotency-Key`. On a transport error or a 5xx it retries with the
//!   same key (on the next URL), so an order whose answer was lost is replayed, not taken
//!   twice. Writes every order answered 2xx to `accepted.csv` and the counts to
//!   `drive.json`. Stops after `--count` orders, `--duration-secs`, or on SIGTERM/SIGINT
//!   (then it finishes the orders in flight).
//! * `chaos poison`: publishes `--count` unreadable messages to pay's routing key (poison on
//!   purpose: the check expects exactly those as `dead` in pay's inbox).
//! * `chaos check`: waits until the system has converged, then checks the invariants across
//!   both databases and prints the figures. Each check is one `ok - …` / `not ok - …` line;
//!   the exit status is 1 when one failed.
//!
//! Databases: `ORDER_DATABASE_URL`, `PAY_DATABASE_URL`; broker: `AMQP_URL`, `AMQP_EXCHANGE`
//! (the services' own variables, exported by the script).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Semaphore,
    time::MissedTickBehavior,
};
use uuid::Uuid;

/// The message the inbox logs for every duplicate it drops (crates/common/src/inbox/mod.rs).
const DUPLICATE_LOG: &str = "duplicate message dropped by the inbox";
/// What pay logs when a second message about an already paid order arrives.
const SECOND_MESSAGE_LOG: &str = "order already has a payment; message ignored";

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------------
// Arguments: `--name value` pairs after the mode.

struct Args {
    values: HashMap<String, String>,
}

impl Args {
    fn parse(raw: &[String]) -> AnyResult<Self> {
        let mut values = HashMap::new();
        let mut it = raw.iter();
        while let Some(name) = it.next() {
            let key = name
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --name value, got {name:?}"))?;
            let value = it.next().ok_or_else(|| format!("{name} needs a value"))?;
            values.insert(key.to_string(), value.clone());
        }
        Ok(Self { values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn required(&self, name: &str) -> AnyResult<&str> {
        self.get(name)
            .ok_or_else(|| format!("--{name} is required").into())
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> AnyResult<T> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name} {v:?} is not a number").into()),
        }
    }
}

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

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        eprintln!("usage: chaos drive|poison|check --name value ...  (see scripts/chaos.sh)");
        return ExitCode::from(2);
    };
    let result = match Args::parse(rest) {
        Err(e) => Err(e),
        Ok(a) => match mode.as_str() {
            "drive" => drive(&a).await.map(|()| true),
            "poison" => poison(&a).await.map(|()| true),
            "check" => check(&a).await,
            other => Err(format!("unknown mode {other:?} (drive, poison or check)").into()),
        },
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

// ---------------------------------------------------------------------------------------------
// drive

/// Users and what should become of their orders: alice and bob hold far more than the
/// orders can spend, carol holds nothing, nobody is not a customer at all.
const USERS: [(&str, u64); 4] = [("alice", 45), ("bob", 40), ("carol", 10), ("mallory", 5)];
const MAX_AMOUNT_CENTS: u64 = 1000;

/// A reproducible pseudo-random number per order (splitmix64).
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn pick(i: u64) -> (&'static str, i64) {
    let r = mix(i);
    let mut slot = r % 100;
    let mut user = USERS[0].0;
    for (name, weight) in USERS {
        if slot < weight {
            user = name;
            break;
        }
        slot -= weight;
    }
    let amount = 1 + (r >> 32) % MAX_AMOUNT_CENTS;
    (user, amount as i64)
}

struct Accepted {
    order_id: Uuid,
    key: String,
    user: &'static str,
    amount: i64,
    attempts: u32,
    replayed: bool,
}

#[derive(Default)]
struct DriveStats {
    issued: AtomicU64,
    accepted: AtomicU64,
    replayed: AtomicU64,
    retries: AtomicU64,
    gave_up: AtomicU64,
    refused_4xx: AtomicU64,
    /// Failed attempts by kind: `http 502`, `connect`, `timeout`…
    errors: Mutex<BTreeMap<String, u64>>,
    /// 4xx answers, first few, for the report.
    refusals: Mutex<Vec<String>>,
    records: Mutex<Vec<Accepted>>,
}

impl DriveStats {
    fn error(&self, kind: String) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }
}

struct Driver {
    http: reqwest::Client,
    targets: Vec<String>,
    run_id: String,
    max_attempts: u32,
    stats: DriveStats,
}

fn transport_kind(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connect".into()
    } else if e.is_timeout() {
        "timeout".into()
    } else if e.is_body() || e.is_decode() {
        "response body".into()
    } else {
        "transport".into()
    }
}

impl Driver {
    /// One order: POST until a 2xx, a 4xx, or the attempts are spent.
    async fn place(&self, i: u64) {
        let (user, amount) = pick(i);
        let key = format!("{}-{i}", self.run_id);
        let body = json!({ "user_id": user, "item": "chaos", "amount_cents": amount });
        let s = &self.stats;
        for attempt in 0..self.max_attempts {
            if attempt > 0 {
                s.retries.fetch_add(1, Ordering::Relaxed);
                let backoff = (100u64 << (attempt - 1).min(5)).min(2000);
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
            let target = &self.targets[(i as usize + attempt as usize) % self.targets.len()];
            let res = self
                .http
                .post(format!("{target}/buy"))
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await;
            let res = match res {
                Ok(res) => res,
                Err(e) => {
                    s.error(transport_kind(&e));
                    continue;
                }
            };
            let status = res.status();
            if status.is_server_error() {
                s.error(format!("http {}", status.as_u16()));
                continue;
            }
            if !status.is_success() {
                s.refused_4xx.fetch_add(1, Ordering::Relaxed);
                let text = res.text().await.unwrap_or_default();
                let mut refusals = s.refusals.lock().unwrap();
                if refusals.len() < 10 {
                    refusals.push(format!("{key}: HTTP {status}: {text}"));
                }
                return;
            }
            let replayed = res
                .headers()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true");
            let answer: Value = match res.json().await {
                Ok(v) => v,
                Err(e) => {
                    // The answer was cut: the order may or may not exist; the same key tells.
                    s.error(transport_kind(&e));
                    continue;
                }
            };
            let Some(order_id) = answer
                .get("order_id")
                .and_then(Value::as_str)
                .and_then(|t| Uuid::parse_str(t).ok())
            else {
                s.refused_4xx.fetch_add(1, Ordering::Relaxed);
                s.refusals.lock().unwrap().push(format!(
                    "{key}: HTTP {status} without an order id: {answer}"
                ));
                return;
            };
            s.accepted.fetch_add(1, Ordering::Relaxed);
            if replayed {
                s.replayed.fetch_add(1, Ordering::Relaxed);
            }
            s.records.lock().unwrap().push(Accepted {
                order_id,
                key,
                user,
                amount,
                attempts: attempt + 1,
                replayed,
            });
            return;
        }
        s.gave_up.fetch_add(1, Ordering::Relaxed);
    }
}

async fn drive(a: &Args) -> AnyResult<()> {
    let targets: Vec<String> = a
        .required("targets")?
        .split(',')
        .map(|t| t.trim().trim_end_matches('/').to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        return Err("--targets is empty".into());
    }
    let rate: f64 = a.number("rate", 30.0)?;
    if rate <= 0.0 {
        return Err("--rate must be > 0".into());
    }
    let count: u64 = a.number("count", 0)?;
    let duration: f64 = a.number("duration-secs", 0.0)?;
    let max_in_flight: usize = a.number("max-in-flight", 256)?;
    let out = PathBuf::from(a.required("out")?);
    let request_timeout: u64 = a.number("request-timeout-ms", 15_000)?;
    let driver = Arc::new(Driver {
        http: reqwest::Client::builder()
            .timeout(Duration::from_millis(request_timeout))
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?,
        targets,
        run_id: a
            .get("run-id")
            .map(str::to_string)
            .unwrap_or_else(|| format!("chaos-{}", Uuid::now_v7())),
        max_attempts: a.number("max-attempts", 12)?,
        stats: DriveStats::default(),
    });

    let started_ms = now_ms();
    let started = Instant::now();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    progress.tick().await;
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    eprintln!(
        "chaos drive: {rate} orders/s to {} ({})",
        driver.targets.join(", "),
        match (count, duration) {
            (0, d) if d <= 0.0 => "until stopped".to_string(),
            (0, d) => format!("for {d} s"),
            (n, _) => format!("{n} orders"),
        }
    );
    let mut i: u64 = 0;
    let report = |d: &Driver, free: usize| {
        let s = &d.stats;
        eprintln!(
            "chaos drive: {:>4.0} s: issued {}, accepted {}, retries {}, gave up {}, in flight {}",
            started.elapsed().as_secs_f64(),
            s.issued.load(Ordering::Relaxed),
            s.accepted.load(Ordering::Relaxed),
            s.retries.load(Ordering::Relaxed),
            s.gave_up.load(Ordering::Relaxed),
            max_in_flight - free,
        );
    };
    let stopped_by = loop {
        if count > 0 && i >= count {
            break "count";
        }
        if duration > 0.0 && started.elapsed().as_secs_f64() >= duration {
            break "duration";
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = progress.tick() => { report(&driver, in_flight.available_permits()); continue; }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => p?,
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        };
        i += 1;
        driver.stats.issued.fetch_add(1, Ordering::Relaxed);
        let d = driver.clone();
        let n = i;
        tokio::spawn(async move {
            d.place(n).await;
            drop(permit);
        });
    };
    let load_ended_ms = now_ms();
    eprintln!("chaos drive: stopped issuing ({stopped_by}); waiting for the orders in flight");
    let _all = in_flight.acquire_many(max_in_flight as u32).await?;
    report(&driver, max_in_flight);
    let ended_ms = now_ms();

    let s = &driver.stats;
    let mut csv = String::from("order_id,idempotency_key,user_id,amount_cents,attempts,replayed\n");
    for r in s.records.lock().unwrap().iter() {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{}",
            r.order_id, r.key, r.user, r.amount, r.attempts, r.replayed
        );
    }
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("accepted.csv"), csv)?;
    let issued = s.issued.load(Ordering::Relaxed);
    let stats = json!({
        "targets": driver.targets,
        "rate": rate,
        "issued": issued,
        "accepted": s.accepted.load(Ordering::Relaxed),
        "replayed": s.replayed.load(Ordering::Relaxed),
        "retries": s.retries.load(Ordering::Relaxed),
        "gave_up": s.gave_up.load(Ordering::Relaxed),
        "refused_4xx": s.refused_4xx.load(Ordering::Relaxed),
        "refusals": *s.refusals.lock().unwrap(),
        "errors": *s.errors.lock().unwrap(),
        "started_ms": started_ms,
        "load_ended_ms": load_ended_ms,
        "ended_ms": ended_ms,
        "achieved_rate": issued as f64 / ((load_ended_ms - started_ms).max(1) as f64 / 1000.0),
    });
    std::fs::write(
        out.join("drive.json"),
        serde_json::to_string_pretty(&stats)?,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// poison

async fn poison(a: &Args) -> AnyResult<()> {
    use lapin::{
        BasicProperties,
        options::{BasicPublishOptions, ConfirmSelectOptions},
        types::ShortString,
    };
    let count: u32 = a.number("count", 1)?;
    let routing_key = a.get("routing-key").unwrap_or("order.created");
    let out = PathBuf::from(a.required("out")?);
    let amqp = message_table::amqp::AmqpConfig::from_env().map_err(|e| e.to_string())?;
    let conn = message_table::amqp::connect(&amqp, "chaos-poison")
        .await
        .map_err(|e| e.to_string())?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut ids = String::new();
    for n in 0..count {
        let id = Uuid::now_v7();
        let props = BasicProperties::default()
            .with_message_id(ShortString::from(id.to_string()))
            .with_type(ShortString::from("OrderCreated"))
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                ShortString::from(amqp.exchange.as_str()),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                format!("chaos poison {n}: this is not JSON {{").as_bytes(),
                props,
            )
            .await?
            .await?;
        if !confirm.is_ack() || confirm.take_message().is_some() {
            return Err(
                format!("poison message {id} was not routed (is pay's queue bound?)").into(),
            );
        }
        let _ = writeln!(ids, "{id}");
    }
    std::fs::write(&out, ids)?;
    let _ = conn.close(200, ShortString::from("bye")).await;
    eprintln!("chaos poison: published {count} unreadable messages with routing key {routing_key}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// check

struct Report {
    passed: u32,
    failed: u32,
}

impl Report {
    fn check(&mut self, ok: bool, what: &str, details: impl FnOnce() -> String) {
        if ok {
            self.passed += 1;
            println!("ok - {what}");
        } else {
            self.failed += 1;
            println!("not ok - {what} ({})", details());
        }
    }
}

/// The first few items, for a failure message.
fn some<T: std::fmt::Display>(items: &[T]) -> String {
    let mut s: Vec<String> = items.iter().take(5).map(ToString::to_string).collect();
    if items.len() > 5 {
        s.push(format!("… {} in all", items.len()));
    }
    s.join("; ")
}

struct Fault {
    start_ms: i64,
    end_ms: i64,
    kind: String,
}

fn read_faults(path: &Path) -> AnyResult<Vec<Fault>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut faults = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split_whitespace();
        let (Some(start), Some(end), Some(kind)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("bad line in {}: {line:?}", path.display()).into());
        };
        faults.push(Fault {
            start_ms: start.parse()?,
            end_ms: end.parse()?,
            kind: kind.to_string(),
        });
    }
    Ok(faults)
}

struct AcceptedRow {
    order_id: Uuid,
    user: String,
    amount: i64,
}

fn read_accepted(path: &Path) -> AnyResult<Vec<AcceptedRow>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 4 {
            return Err(format!("bad line in {}: {line:?}", path.display()).into());
        }
        rows.push(AcceptedRow {
            order_id: Uuid::parse_str(f[0])?,
            user: f[2].to_string(),
            amount: f[3].parse()?,
        });
    }
    Ok(rows)
}

/// Lines containing `needle` in the `<prefix>*.log` files of `dir`.
fn count_in_logs(dir: &Path, prefix: &str, needle: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix)
            && name.ends_with(".log")
            && let Ok(bytes) = std::fs::read(e.path())
        {
            n += String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| l.contains(needle))
                .count() as u64;
        }
    }
    n
}

async fn connect(url: &str) -> AnyResult<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?)
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Progress {
    orders: i64,
    orders_pending: i64,
    order_outbox_pending: i64,
    order_inbox_failed: i64,
    pay_outbox_pending: i64,
    pay_inbox_failed: i64,
}

impl Progress {
    fn converged(&self) -> bool {
        self.orders_pending == 0
            && self.order_outbox_pending == 0
            && self.order_inbox_failed == 0
            && self.pay_outbox_pending == 0
            && self.pay_inbox_failed == 0
    }
}

async fn progress(order: &PgPool, pay: &PgPool) -> sqlx::Result<Progress> {
    let (orders, orders_pending): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status = 'PENDING_PAYMENT') FROM orders",
    )
    .fetch_one(order)
    .await?;
    let pending = "SELECT count(*) FROM outbox WHERE status = 'pending'";
    let failed = "SELECT count(*) FROM inbox WHERE status = 'failed'";
    Ok(Progress {
        orders,
        orders_pending,
        order_outbox_pending: sqlx::query_scalar(pending).fetch_one(order).await?,
        order_inbox_failed: sqlx::query_scalar(failed).fetch_one(order).await?,
        pay_outbox_pending: sqlx::query_scalar(pending).fetch_one(pay).await?,
        pay_inbox_failed: sqlx::query_scalar(failed).fetch_one(pay).await?,
    })
}

fn parse_balances(spec: &str) -> AnyResult<BTreeMap<String, i64>> {
    let mut map = BTreeMap::new();
    for pair in spec.split(',').filter(|p| !p.is_empty()) {
        let (user, cents) = pair
            .split_once('=')
            .ok_or_else(|| format!("--initial-balances: {pair:?} is not user=cents"))?;
        map.insert(user.to_string(), cents.parse()?);
    }
    Ok(map)
}

fn secs(ms: i64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// What the script and the driver left in the run directory, and the check's options.
struct Inputs {
    deadline: Duration,
    initial: BTreeMap<String, i64>,
    min_each: usize,
    kinds: Vec<String>,
    logs: PathBuf,
    faults: Vec<Fault>,
    accepted: Vec<AcceptedRow>,
    drive: Value,
    poison_ids: HashSet<Uuid>,
}

impl Inputs {
    fn read(a: &Args) -> AnyResult<Self> {
        let dir = PathBuf::from(a.required("dir")?);
        let drive = std::fs::read_to_string(dir.join("drive.json"))
            .map_err(|e| format!("cannot read drive.json: {e}"))?;
        Ok(Self {
            deadline: Duration::from_secs(a.number("deadline-secs", 180)?),
            initial: parse_balances(a.required("initial-balances")?)?,
            min_each: a.number("min-each", 1)?,
            kinds: a
                .get("kinds")
                .unwrap_or("")
                .split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect(),
            logs: a.get("logs").map_or_else(|| dir.clone(), PathBuf::from),
            faults: read_faults(&dir.join("faults.txt"))?,
            accepted: read_accepted(&dir.join("accepted.csv"))?,
            drive: serde_json::from_str(&drive)?,
            poison_ids: std::fs::read_to_string(dir.join("poison.ids"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| Uuid::parse_str(l.trim()).ok())
                .collect(),
        })
    }

    fn drive_ms(&self, field: &str) -> Option<i64> {
        self.drive[field].as_i64()
    }
}

/// Polls until the system has converged or the deadline passes: when it converged (epoch
/// ms), and the last state seen.
async fn wait_for_convergence(
    order: &PgPool,
    pay: &PgPool,
    deadline: Duration,
) -> (Option<i64>, Option<Progress>) {
    let waited = Instant::now();
    let mut last = None;
    let mut last_printed = Instant::now();
    loop {
        match progress(order, pay).await {
            Ok(p) if p.converged() => return (Some(now_ms()), Some(p)),
            Ok(p) => {
                if last_printed.elapsed() >= Duration::from_secs(10) {
                    eprintln!("chaos check: not converged yet: {p:?}");
                    last_printed = Instant::now();
                }
                last = Some(p);
            }
            Err(e) => eprintln!("chaos check: query failed (will retry): {e}"),
        }
        if waited.elapsed() >= deadline {
            return (None, last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// id (an order's, or the order a payment is for), user_id, amount_cents, status, failure_reason.
type Row = (Uuid, String, i64, String, Option<String>);

/// Both databases, read once the system has converged.
struct Snapshot {
    orders: Vec<Row>,
    payments: Vec<Row>,
    balances: Vec<(String, i64)>,
}

impl Snapshot {
    async fn read(order: &PgPool, pay: &PgPool) -> sqlx::Result<Self> {
        Ok(Self {
            orders: sqlx::query_as(
                "SELECT id, user_id, amount_cents, status, failure_reason FROM orders",
            )
            .fetch_all(order)
            .await?,
            payments: sqlx::query_as(
                "SELECT order_id, user_id, amount_cents, status, failure_reason FROM payments",
            )
            .fetch_all(pay)
            .await?,
            balances: sqlx::query_as(
                "SELECT user_id, balance_cents FROM accounts ORDER BY user_id",
            )
            .fetch_all(pay)
            .await?,
        })
    }
}

fn settled(status: &str) -> bool {
    status == "PAID" || status == "PAYMENT_FAILED"
}

/// Every 2xx is an order, settled as its user's money says; so is every other order.
fn check_orders(r: &mut Report, input: &Inputs, snap: &Snapshot) {
    let orders: HashMap<Uuid, &Row> = snap.orders.iter().map(|o| (o.0, o)).collect();
    let missing: Vec<String> = input
        .accepted
        .iter()
        .filter(|a| {
            orders
                .get(&a.order_id)
                .is_none_or(|o| o.1 != a.user || o.2 != a.amount)
        })
        .map(|a| a.order_id.to_string())
        .collect();
    r.check(
        missing.is_empty(),
        &format!(
            "every order answered 2xx ({}) exists in order's database with its user and amount",
            input.accepted.len()
        ),
        || format!("missing or different: {}", some(&missing)),
    );
    let unsettled: Vec<String> = input
        .accepted
        .iter()
        .filter(|a| orders.get(&a.order_id).is_some_and(|o| !settled(&o.3)))
        .map(|a| a.order_id.to_string())
        .collect();
    r.check(
        unsettled.is_empty(),
        "every order answered 2xx reached PAID or PAYMENT_FAILED",
        || format!("still pending: {}", some(&unsettled)),
    );
    let all_unsettled: Vec<String> = snap
        .orders
        .iter()
        .filter(|o| !settled(&o.3))
        .map(|o| o.0.to_string())
        .collect();
    r.check(
        all_unsettled.is_empty(),
        &format!(
            "every order in order's database ({}, of which {} committed without a 2xx reaching the client) is settled",
            snap.orders.len(),
            unanswered(input, snap)
        ),
        || format!("pending: {}", some(&all_unsettled)),
    );
    let wrong: Vec<String> = snap
        .orders
        .iter()
        .filter(|(_, user, _, status, reason)| {
            let expected: (&str, Option<&str>) = match user.as_str() {
                "alice" | "bob" => ("PAID", None),
                "carol" => ("PAYMENT_FAILED", Some("insufficient_funds")),
                _ => ("PAYMENT_FAILED", Some("unknown_user")),
            };
            (status.as_str(), reason.as_deref()) != expected
        })
        .map(|(id, user, _, status, reason)| format!("{id} {user} {status} {reason:?}"))
        .collect();
    r.check(
        wrong.is_empty(),
        "each order has the expected outcome (alice, bob: PAID; carol: insufficient_funds; unknown user: unknown_user)",
        || some(&wrong),
    );
}

/// Orders in the database whose 2xx never reached the driver (committed, answer lost).
fn unanswered(input: &Inputs, snap: &Snapshot) -> usize {
    let accepted: HashSet<Uuid> = input.accepted.iter().map(|a| a.order_id).collect();
    snap.orders
        .iter()
        .filter(|o| !accepted.contains(&o.0))
        .count()
}

/// One payment per order: COMPLETED for a PAID one, FAILED for the others, none elsewhere.
fn check_payments(r: &mut Report, snap: &Snapshot) {
    let orders: HashMap<Uuid, &Row> = snap.orders.iter().map(|o| (o.0, o)).collect();
    let mut payments: HashMap<Uuid, Vec<&Row>> = HashMap::new();
    for p in &snap.payments {
        payments.entry(p.0).or_default().push(p);
    }
    let (mut bad_paid, mut bad_failed) = (Vec::new(), Vec::new());
    for (id, user, amount, status, reason) in &snap.orders {
        let found = payments.get(id).map(Vec::as_slice).unwrap_or_default();
        let describe = || {
            let rows: Vec<String> = found
                .iter()
                .map(|p| format!("{} {} {} {:?}", p.1, p.2, p.3, p.4))
                .collect();
            format!("{id}: payments [{}]", rows.join(", "))
        };
        match (status.as_str(), found) {
            ("PAID", [p]) if p.3 == "COMPLETED" && &p.1 == user && &p.2 == amount => {}
            ("PAID", _) => bad_paid.push(describe()),
            ("PAYMENT_FAILED", [p]) if p.3 == "FAILED" && &p.4 == reason => {}
            ("PAYMENT_FAILED", _) => bad_failed.push(describe()),
            _ => {}
        }
    }
    r.check(
        bad_paid.is_empty(),
        "exactly one COMPLETED payment for each PAID order, same user and amount",
        || some(&bad_paid),
    );
    let completed_elsewhere: Vec<String> = snap
        .payments
        .iter()
        .filter(|p| p.3 == "COMPLETED" && orders.get(&p.0).is_none_or(|o| o.3 != "PAID"))
        .map(|p| p.0.to_string())
        .collect();
    r.check(
        completed_elsewhere.is_empty(),
        "no COMPLETED payment for any order that is not PAID",
        || some(&completed_elsewhere),
    );
    r.check(
        bad_failed.is_empty(),
        "each PAYMENT_FAILED order has one FAILED payment with the same reason, no money moved",
        || some(&bad_failed),
    );
    let orphans: Vec<String> = payments
        .keys()
        .filter(|id| !orders.contains_key(*id))
        .map(ToString::to_string)
        .collect();
    r.check(
        orphans.is_empty(),
        "no payment for an order unknown to order's database",
        || some(&orphans),
    );
}

/// Money is neither created nor lost: balances + COMPLETED payments = the initial balances.
fn check_money(r: &mut Report, input: &Inputs, snap: &Snapshot) {
    let mut paid_by: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, user, amount, status, _) in &snap.payments {
        if status == "COMPLETED" {
            *paid_by.entry(user.as_str()).or_default() += amount;
        }
    }
    let initial_total: i64 = input.initial.values().sum();
    let balance_total: i64 = snap.balances.iter().map(|b| b.1).sum();
    let paid_total: i64 = paid_by.values().sum();
    r.check(
        balance_total + paid_total == initial_total,
        &format!(
            "sum of balances ({balance_total}) + sum of COMPLETED payments ({paid_total}) = initial total ({initial_total})"
        ),
        || format!("off by {}", balance_total + paid_total - initial_total),
    );
    let paid = |u: &str| paid_by.get(u).copied().unwrap_or(0);
    let initial = |u: &str| input.initial.get(u).copied().unwrap_or(0);
    let per_user: Vec<String> = snap
        .balances
        .iter()
        .filter(|(u, b)| b + paid(u) != initial(u))
        .map(|(u, b)| {
            format!(
                "{u}: balance {b} + paid {} != initial {}",
                paid(u),
                initial(u)
            )
        })
        .collect();
    r.check(
        per_user.is_empty() && snap.balances.len() == input.initial.len(),
        "for each account: balance + its COMPLETED payments = its initial balance",
        || some(&per_user),
    );
}

/// Outbox and inbox of both services: nothing left behind, nothing sent twice.
async fn check_message_tables(
    r: &mut Report,
    input: &Inputs,
    snap: &Snapshot,
    order: &PgPool,
    pay: &PgPool,
) -> sqlx::Result<()> {
    let outbox_left = "SELECT status, count(*) FROM outbox WHERE status <> 'sent' GROUP BY status";
    for (name, pool) in [("order", order), ("pay", pay)] {
        let left: Vec<(String, i64)> = sqlx::query_as(outbox_left).fetch_all(pool).await?;
        r.check(
            left.is_empty(),
            &format!("{name}'s outbox: no row left pending or dead"),
            || format!("{left:?}"),
        );
    }
    let inbox_left = "SELECT message_id, status, coalesce(last_error, '') FROM inbox WHERE status <> 'processed'";
    let describe = |rows: &[&(Uuid, String, String)]| {
        let rows: Vec<String> = rows
            .iter()
            .map(|(id, s, e)| format!("{id} {s} {e}"))
            .collect();
        some(&rows)
    };
    let order_inbox: Vec<(Uuid, String, String)> =
        sqlx::query_as(inbox_left).fetch_all(order).await?;
    r.check(
        order_inbox.is_empty(),
        "order's inbox: no row failed or dead",
        || describe(&order_inbox.iter().collect::<Vec<_>>()),
    );
    let pay_inbox: Vec<(Uuid, String, String)> = sqlx::query_as(inbox_left).fetch_all(pay).await?;
    let (poison, unexpected): (Vec<_>, Vec<_>) = pay_inbox
        .iter()
        .partition(|(id, s, _)| s == "dead" && input.poison_ids.contains(id));
    r.check(
        unexpected.is_empty() && poison.len() == input.poison_ids.len(),
        &format!(
            "pay's inbox: no row failed or dead except the {} poison messages injected on purpose (dead)",
            input.poison_ids.len()
        ),
        || {
            format!(
                "{} of {} poison messages dead; unexpected: {}",
                poison.len(),
                input.poison_ids.len(),
                describe(&unexpected)
            )
        },
    );
    let (rows, orders): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT aggregate_id) FILTER (WHERE event_type = 'OrderCreated') FROM outbox",
    )
    .fetch_one(order)
    .await?;
    let n = snap.orders.len() as i64;
    r.check(
        rows == n && orders == n,
        "order's outbox holds one OrderCreated message per order",
        || format!("{rows} rows about {orders} orders; {n} orders"),
    );
    let (rows, orders): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT aggregate_id) FROM outbox")
            .fetch_one(pay)
            .await?;
    let n = snap.payments.len() as i64;
    r.check(
        rows == n && orders == n,
        "pay's outbox holds one answer per payment",
        || format!("{rows} rows about {orders} orders; {n} payments"),
    );
    Ok(())
}

/// The client side and the fault schedule.
fn check_load_and_faults(r: &mut Report, input: &Inputs) {
    let refused = input.drive["refused_4xx"].as_u64().unwrap_or(0);
    r.check(
        refused == 0,
        "no order refused with a 4xx (a retry with the same Idempotency-Key replays)",
        || format!("{refused}: {}", input.drive["refusals"]),
    );
    let load_stopped = input.drive_ms("load_ended_ms").unwrap_or(i64::MAX);
    let mut under_load: BTreeMap<&str, usize> = BTreeMap::new();
    for f in input.faults.iter().filter(|f| f.start_ms < load_stopped) {
        *under_load.entry(f.kind.as_str()).or_default() += 1;
    }
    let short: Vec<String> = input
        .kinds
        .iter()
        .map(|k| (k, under_load.get(k.as_str()).copied().unwrap_or(0)))
        .filter(|(_, n)| *n < input.min_each)
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    r.check(
        short.is_empty(),
        &format!(
            "every fault kind injected at least {} time(s) under load",
            input.min_each
        ),
        || some(&short),
    );
}

async fn print_figures(
    input: &Inputs,
    snap: &Snapshot,
    converged_at: Option<i64>,
    order: &PgPool,
    pay: &PgPool,
) {
    let drive = &input.drive;
    let faults = &input.faults;
    let started = input.drive_ms("started_ms").unwrap_or(0);
    let load_stopped = input.drive_ms("load_ended_ms").unwrap_or(0);
    let load_end = input.drive_ms("ended_ms").unwrap_or_else(now_ms);
    let count = |status: &str| snap.orders.iter().filter(|o| o.3 == status).count();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for f in faults {
        *by_kind.entry(f.kind.as_str()).or_default() += 1;
    }
    let by_kind: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();

    println!("# figures");
    println!(
        "#   load: {} orders issued in {} at {:.1}/s to {}",
        drive["issued"],
        secs(load_stopped - started),
        drive["achieved_rate"].as_f64().unwrap_or(0.0),
        drive["targets"]
    );
    println!(
        "#   orders: {} answered 2xx ({} of them replays of a lost answer), {} given up after retries, {} refused 4xx; {} in order's database ({} without a 2xx)",
        drive["accepted"],
        drive["replayed"],
        drive["gave_up"],
        drive["refused_4xx"],
        snap.orders.len(),
        unanswered(input, snap)
    );
    println!(
        "#   outcomes: {} PAID, {} PAYMENT_FAILED",
        count("PAID"),
        count("PAYMENT_FAILED")
    );
    println!(
        "#   client retries (same Idempotency-Key): {}; failed attempts by kind: {}",
        drive["retries"], drive["errors"]
    );
    println!(
        "#   faults injected: {} ({})",
        faults.len(),
        by_kind.join(", ")
    );
    if let (Some(first), Some(last)) = (faults.first(), faults.last()) {
        println!(
            "#   faults from {} to {} after the load started",
            secs(first.start_ms - started),
            secs(last.end_ms - started)
        );
    }
    println!(
        "#   duplicates dropped by the inbox: pay {}, order {}; second messages about a paid order ignored by pay: {}",
        count_in_logs(&input.logs, "pay", DUPLICATE_LOG),
        count_in_logs(&input.logs, "order", DUPLICATE_LOG),
        count_in_logs(&input.logs, "pay", SECOND_MESSAGE_LOG),
    );
    // Attempts beyond the first, and on how many messages (poison excluded).
    let retries = |pool: &PgPool, sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(sql)
                .fetch_one(&pool)
                .await
                .unwrap_or((-1, -1))
        }
    };
    let outbox = "SELECT coalesce(sum(greatest(attempts - 1, 0)), 0)::int8, count(*) FILTER (WHERE attempts > 1) FROM outbox";
    let inbox = "SELECT coalesce(sum(greatest(attempts - 1, 0)), 0)::int8, count(*) FILTER (WHERE attempts > 1) FROM inbox WHERE raw_body IS NULL";
    let (oo, oo_rows) = retries(order, outbox).await;
    let (po, po_rows) = retries(pay, outbox).await;
    let (oi, oi_rows) = retries(order, inbox).await;
    let (pi, pi_rows) = retries(pay, inbox).await;
    println!(
        "#   publish retries (outbox attempts beyond the first): order {oo} on {oo_rows} messages, pay {po} on {po_rows} messages"
    );
    println!(
        "#   handler retries (inbox attempts beyond the first): order {oi} on {oi_rows} messages, pay {pi} on {pi_rows} messages"
    );
    println!("#   poison messages injected: {}", input.poison_ids.len());

    // Polled every 0.5 s from the moment the load stopped: an upper bound.
    let whole =
        "whole system converged (no order pending, no outbox row pending, no inbox row failed)";
    match (converged_at, faults.iter().map(|f| f.end_ms).max()) {
        (Some(at), Some(end)) if end >= load_end => println!(
            "#   {whole} {} after the last fault ended (the load had stopped {} before it ended)",
            secs(at - end),
            secs(end - load_end)
        ),
        (Some(at), Some(end)) => println!(
            "#   {whole} {} after the last order was answered (the load went on {} after the last fault)",
            secs(at - load_end),
            secs(load_end - end)
        ),
        (Some(at), None) => println!(
            "#   {whole} {} after the last order was answered",
            secs(at - load_end)
        ),
        (None, _) => println!("#   did not converge within {} s", input.deadline.as_secs()),
    }

    // Recovery, from the database's own timestamps: how long after a fault ended the orders
    // it could have caught (taken from 2 s before it began until it ended) were all settled;
    // and after the last fault, how long until every order taken before its end was settled.
    let settled_by = |from_ms: i64, to_ms: i64| {
        let order = order.clone();
        async move {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT (extract(epoch FROM max(updated_at)) * 1000)::int8 FROM orders
                 WHERE created_at BETWEEN to_timestamp($1::float8 / 1000) AND to_timestamp($2::float8 / 1000)",
            )
            .bind(from_ms as f64)
            .bind(to_ms as f64)
            .fetch_one(&order)
            .await
            .ok()
            .flatten()
        }
    };
    if let Some(f) = faults.last()
        && let Some(t) = settled_by(0, f.end_ms).await
    {
        println!(
            "#   time to converge after the last fault ({}): {} until every order taken before its end was settled",
            f.kind,
            secs((t - f.end_ms).max(0))
        );
    }
    let mut recoveries = Vec::new();
    for f in faults {
        let recovery = settled_by(f.start_ms - 2000, f.end_ms)
            .await
            .map(|t| (t - f.end_ms).max(0));
        recoveries.push(format!(
            "{} {} → {}",
            f.kind,
            secs(f.end_ms - f.start_ms),
            recovery.map_or("-".into(), secs)
        ));
    }
    println!(
        "#   each fault: how long it lasted → how long after its end the orders taken during it (from 2 s before) were all settled: {}",
        recoveries.join(", ")
    );
}

async fn check(a: &Args) -> AnyResult<bool> {
    let input = Inputs::read(a)?;
    let order = connect(&env_url("ORDER_DATABASE_URL")?).await?;
    let pay = connect(&env_url("PAY_DATABASE_URL")?).await?;
    let mut r = Report {
        passed: 0,
        failed: 0,
    };

    let (converged_at, last) = wait_for_convergence(&order, &pay, input.deadline).await;
    r.check(
        converged_at.is_some(),
        &format!(
            "the system converges within {} s after the load (no order pending payment, no outbox row pending, no inbox row failed)",
            input.deadline.as_secs()
        ),
        || format!("still: {last:?}"),
    );
    let snap = Snapshot::read(&order, &pay).await?;
    check_orders(&mut r, &input, &snap);
    check_payments(&mut r, &snap);
    check_money(&mut r, &input, &snap);
    check_message_tables(&mut r, &input, &snap, &order, &pay).await?;
    check_load_and_faults(&mut r, &input);
    print_figures(&input, &snap, converged_at, &order, &pay).await;
    Ok(r.failed == 0)
}
