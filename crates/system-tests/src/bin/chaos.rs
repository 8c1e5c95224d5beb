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
    let amqp = common::amqp::AmqpConfig::from_env().map_err(|e| e.to_string())?;
    let conn = common::amqp::connect(&amqp, "chaos-poison")
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

/// id, user_id, amount_cents, status, failure_reason (orders; payments keyed by order_id).
type OrderRow = (Uuid, String, i64, String, Option<String>);
type PaymentRow = OrderRow;

async fn check(a: &Args) -> AnyResult<bool> {
    let dir = PathBuf::from(a.required("dir")?);
    let deadline = Duration::from_secs(a.number("deadline-secs", 180)?);
    let initial = parse_balances(a.required("initial-balances")?)?;
    let min_each: usize = a.number("min-each", 1)?;
    let kinds: Vec<String> = a
        .get("kinds")
        .unwrap_or("")
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    let logs = PathBuf::from(a.get("logs").unwrap_or(&dir.to_string_lossy()));
    let faults = read_faults(&dir.join("faults.txt"))?;
    let accepted = read_accepted(&dir.join("accepted.csv"))?;
    let drive: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("drive.json"))
            .map_err(|e| format!("cannot read drive.json: {e}"))?,
    )?;
    let poison_ids: HashSet<Uuid> = std::fs::read_to_string(dir.join("poison.ids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Uuid::parse_str(l.trim()).ok())
        .collect();
    let order = connect(&env_url("ORDER_DATABASE_URL")?).await?;
    let pay = connect(&env_url("PAY_DATABASE_URL")?).await?;
    let mut r = Report {
        passed: 0,
        failed: 0,
    };

    // ---- convergence
    let last_fault_end = faults.iter().map(|f| f.end_ms).max();
    let load_end = drive["ended_ms"].as_i64().unwrap_or_else(now_ms);
    let waited = Instant::now();
    let mut last: Option<Progress> = None;
    let mut last_printed = Instant::now();
    let converged_at = loop {
        match progress(&order, &pay).await {
            Ok(p) if p.converged() => break Some(now_ms()),
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
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    r.check(
        converged_at.is_some(),
        &format!(
            "the system converges within {} s after the load (no order pending payment, no outbox row pending, no inbox row failed)",
            deadline.as_secs()
        ),
        || format!("still: {last:?}"),
    );

    // ---- orders
    let db_orders: Vec<OrderRow> =
        sqlx::query_as("SELECT id, user_id, amount_cents, status, failure_reason FROM orders")
            .fetch_all(&order)
            .await?;
    let orders: HashMap<Uuid, (&str, i64, &str, Option<&str>)> = db_orders
        .iter()
        .map(|(id, u, a, s, f)| (*id, (u.as_str(), *a, s.as_str(), f.as_deref())))
        .collect();
    let payments_rows: Vec<PaymentRow> = sqlx::query_as(
        "SELECT order_id, user_id, amount_cents, status, failure_reason FROM payments",
    )
    .fetch_all(&pay)
    .await?;
    let payments: HashMap<Uuid, (&str, i64, &str, Option<&str>)> = payments_rows
        .iter()
        .map(|(o, u, a, s, f)| (*o, (u.as_str(), *a, s.as_str(), f.as_deref())))
        .collect();

    let missing: Vec<String> = accepted
        .iter()
        .filter(|a| match orders.get(&a.order_id) {
            Some((u, amount, _, _)) => *u != a.user || *amount != a.amount,
            None => true,
        })
        .map(|a| a.order_id.to_string())
        .collect();
    r.check(
        missing.is_empty(),
        &format!(
            "every order answered 2xx ({}) exists in order's database with its user and amount",
            accepted.len()
        ),
        || format!("missing or different: {}", some(&missing)),
    );
    let unsettled: Vec<String> = accepted
        .iter()
        .filter(|a| {
            orders
                .get(&a.order_id)
                .is_some_and(|o| o.2 != "PAID" && o.2 != "PAYMENT_FAILED")
        })
        .map(|a| a.order_id.to_string())
        .collect();
    r.check(
        unsettled.is_empty(),
        "every order answered 2xx reached PAID or PAYMENT_FAILED",
        || format!("still pending: {}", some(&unsettled)),
    );
    let accepted_ids: HashSet<Uuid> = accepted.iter().map(|a| a.order_id).collect();
    let unanswered = db_orders
        .iter()
        .filter(|o| !accepted_ids.contains(&o.0))
        .count();
    let all_unsettled: Vec<String> = db_orders
        .iter()
        .filter(|o| o.3 != "PAID" && o.3 != "PAYMENT_FAILED")
        .map(|o| o.0.to_string())
        .collect();
    r.check(
        all_unsettled.is_empty(),
        &format!(
            "every order in order's database ({}, of which {unanswered} committed without a 2xx reaching the client) is settled",
            db_orders.len()
        ),
        || format!("pending: {}", some(&all_unsettled)),
    );
    let wrong: Vec<String> = db_orders
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

    // ---- payments
    let mut bad_paid = Vec::new();
    let mut bad_failed = Vec::new();
    for (id, (user, amount, status, reason)) in &orders {
        let p = payments.get(id);
        match *status {
            "PAID" => match p {
                Some((pu, pa, "COMPLETED", _)) if pu == user && pa == amount => {}
                other => bad_paid.push(format!("{id}: {other:?}")),
            },
            "PAYMENT_FAILED" => match p {
                Some((_, _, "FAILED", pr)) if pr == reason => {}
                other => bad_failed.push(format!("{id}: {other:?}")),
            },
            _ => {}
        }
    }
    r.check(
        bad_paid.is_empty(),
        "exactly one COMPLETED payment for each PAID order, same user and amount (payments.order_id is unique)",
        || some(&bad_paid),
    );
    let completed_elsewhere: Vec<String> = payments
        .iter()
        .filter(|(id, p)| p.2 == "COMPLETED" && orders.get(*id).is_none_or(|o| o.2 != "PAID"))
        .map(|(id, _)| id.to_string())
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

    // ---- money
    let balances: Vec<(String, i64)> =
        sqlx::query_as("SELECT user_id, balance_cents FROM accounts ORDER BY user_id")
            .fetch_all(&pay)
            .await?;
    let mut paid_by: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, user, amount, status, _) in &payments_rows {
        if status == "COMPLETED" {
            *paid_by.entry(user.as_str()).or_default() += amount;
        }
    }
    let initial_total: i64 = initial.values().sum();
    let balance_total: i64 = balances.iter().map(|b| b.1).sum();
    let paid_total: i64 = paid_by.values().sum();
    r.check(
        balance_total + paid_total == initial_total,
        &format!(
            "sum of balances ({balance_total}) + sum of COMPLETED payments ({paid_total}) = initial total ({initial_total})"
        ),
        || format!("off by {}", balance_total + paid_total - initial_total),
    );
    let per_user: Vec<String> = balances
        .iter()
        .filter(|(u, b)| {
            b + paid_by.get(u.as_str()).copied().unwrap_or(0)
                != initial.get(u).copied().unwrap_or(0)
        })
        .map(|(u, b)| {
            format!(
                "{u}: balance {b} + paid {} != initial {}",
                paid_by.get(u.as_str()).copied().unwrap_or(0),
                initial.get(u).copied().unwrap_or(0)
            )
        })
        .collect();
    r.check(
        per_user.is_empty() && balances.len() == initial.len(),
        "for each account: balance + its COMPLETED payments = its initial balance",
        || some(&per_user),
    );

    // ---- message tables
    let outbox_left = "SELECT status, count(*) FROM outbox WHERE status <> 'sent' GROUP BY status";
    let order_outbox: Vec<(String, i64)> = sqlx::query_as(outbox_left).fetch_all(&order).await?;
    r.check(
        order_outbox.is_empty(),
        "order's outbox: no row left pending or dead",
        || format!("{order_outbox:?}"),
    );
    let pay_outbox: Vec<(String, i64)> = sqlx::query_as(outbox_left).fetch_all(&pay).await?;
    r.check(
        pay_outbox.is_empty(),
        "pay's outbox: no row left pending or dead",
        || format!("{pay_outbox:?}"),
    );
    let inbox_left = "SELECT message_id, status, coalesce(last_error, '') FROM inbox WHERE status <> 'processed'";
    let order_inbox: Vec<(Uuid, String, String)> =
        sqlx::query_as(inbox_left).fetch_all(&order).await?;
    r.check(
        order_inbox.is_empty(),
        "order's inbox: no row failed or dead",
        || {
            some(
                &order_inbox
                    .iter()
                    .map(|(id, s, e)| format!("{id} {s} {e}"))
                    .collect::<Vec<_>>(),
            )
        },
    );
    let pay_inbox: Vec<(Uuid, String, String)> = sqlx::query_as(inbox_left).fetch_all(&pay).await?;
    let unexpected: Vec<String> = pay_inbox
        .iter()
        .filter(|(id, s, _)| !(s == "dead" && poison_ids.contains(id)))
        .map(|(id, s, e)| format!("{id} {s} {e}"))
        .collect();
    let poison_dead = pay_inbox
        .iter()
        .filter(|(id, s, _)| s == "dead" && poison_ids.contains(id))
        .count();
    r.check(
        unexpected.is_empty() && poison_dead == poison_ids.len(),
        &format!(
            "pay's inbox: no row failed or dead except the {} poison messages injected on purpose (dead)",
            poison_ids.len()
        ),
        || {
            format!(
                "{} of {} poison messages dead; unexpected: {}",
                poison_dead,
                poison_ids.len(),
                some(&unexpected)
            )
        },
    );
    let (order_outbox_rows, order_outbox_created): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT aggregate_id) FILTER (WHERE event_type = 'OrderCreated') FROM outbox",
    )
    .fetch_one(&order)
    .await?;
    r.check(
        order_outbox_rows == db_orders.len() as i64
            && order_outbox_created == db_orders.len() as i64,
        "order's outbox holds one OrderCreated message per order",
        || {
            format!(
                "{order_outbox_rows} rows for {order_outbox_created} orders; {} orders",
                db_orders.len()
            )
        },
    );
    let (pay_outbox_rows, pay_outbox_orders): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT aggregate_id) FROM outbox")
            .fetch_one(&pay)
            .await?;
    r.check(
        pay_outbox_rows == payments_rows.len() as i64
            && pay_outbox_orders == payments_rows.len() as i64,
        "pay's outbox holds one answer per payment",
        || {
            format!(
                "{pay_outbox_rows} rows about {pay_outbox_orders} orders; {} payments",
                payments_rows.len()
            )
        },
    );

    // ---- the load and the faults
    let refused = drive["refused_4xx"].as_u64().unwrap_or(0);
    r.check(
        refused == 0,
        "no order refused with a 4xx (a retry with the same Idempotency-Key replays)",
        || format!("{refused}: {}", drive["refusals"]),
    );
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &faults {
        *by_kind.entry(f.kind.as_str()).or_default() += 1;
    }
    let short: Vec<String> = kinds
        .iter()
        .filter(|k| by_kind.get(k.as_str()).copied().unwrap_or(0) < min_each)
        .map(|k| format!("{k}: {}", by_kind.get(k.as_str()).copied().unwrap_or(0)))
        .collect();
    r.check(
        short.is_empty(),
        &format!("every fault kind injected at least {min_each} time(s) under load"),
        || some(&short),
    );

    // ---- figures
    let retries = |pool: &PgPool, sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (i64, i64)>(sql)
                .fetch_one(&pool)
                .await
                .unwrap_or((-1, -1))
        }
    };
    let outbox_retries = "SELECT coalesce(sum(greatest(attempts - 1, 0)), 0)::int8, count(*) FILTER (WHERE attempts > 1) FROM outbox";
    let inbox_retries = "SELECT coalesce(sum(greatest(attempts - 1, 0)), 0)::int8, count(*) FILTER (WHERE attempts > 1) FROM inbox WHERE raw_body IS NULL";
    let (oo, oo_rows) = retries(&order, outbox_retries).await;
    let (po, po_rows) = retries(&pay, outbox_retries).await;
    let (oi, oi_rows) = retries(&order, inbox_retries).await;
    let (pi, pi_rows) = retries(&pay, inbox_retries).await;
    let paid = db_orders.iter().filter(|o| o.3 == "PAID").count();
    let failed = db_orders.iter().filter(|o| o.3 == "PAYMENT_FAILED").count();
    let started = drive["started_ms"].as_i64().unwrap_or(0);
    let load_ended = drive["load_ended_ms"].as_i64().unwrap_or(0);

    println!("# figures");
    println!(
        "#   load: {} orders issued in {} at {:.1}/s to {}",
        drive["issued"],
        secs(load_ended - started),
        drive["achieved_rate"].as_f64().unwrap_or(0.0),
        drive["targets"]
    );
    println!(
        "#   orders: {} answered 2xx ({} of them replays of a lost answer), {} given up after retries, {} refused 4xx; {} in order's database ({unanswered} without a 2xx)",
        drive["accepted"],
        drive["replayed"],
        drive["gave_up"],
        refused,
        db_orders.len()
    );
    println!("#   outcomes: {paid} PAID, {failed} PAYMENT_FAILED");
    println!(
        "#   client retries (same Idempotency-Key): {}; failed attempts by kind: {}",
        drive["retries"], drive["errors"]
    );
    let fault_list: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "#   faults injected: {} ({})",
        faults.len(),
        fault_list.join(", ")
    );
    if let (Some(first), Some(lastf)) = (faults.first(), faults.last()) {
        println!(
            "#   faults from {} to {} after the load started",
            secs(first.start_ms - started),
            secs(lastf.end_ms - started)
        );
    }
    println!(
        "#   duplicates dropped by the inbox: pay {}, order {}; second messages about a paid order ignored by pay: {}",
        count_in_logs(&logs, "pay", DUPLICATE_LOG),
        count_in_logs(&logs, "order", DUPLICATE_LOG),
        count_in_logs(&logs, "pay", SECOND_MESSAGE_LOG),
    );
    println!(
        "#   publish retries (outbox attempts beyond the first): order {oo} on {oo_rows} messages, pay {po} on {po_rows} messages"
    );
    println!(
        "#   handler retries (inbox attempts beyond the first): order {oi} on {oi_rows} messages, pay {pi} on {pi_rows} messages"
    );
    println!("#   poison messages injected: {}", poison_ids.len());
    match converged_at {
        Some(at) => println!(
            "#   whole system converged {} after the last order was answered{}",
            secs(at - load_end),
            last_fault_end.map_or(String::new(), |end| format!(
                " ({} after the last fault ended, load going on meanwhile)",
                secs(at - end)
            ))
        ),
        None => println!("#   did not converge within {} s", deadline.as_secs()),
    }
    // Recovery per fault, from the database's own timestamps: how long after the fault
    // ended every order taken before that moment was settled.
    let mut recoveries = Vec::new();
    let mut last_recovery = None;
    for f in &faults {
        let settled: Option<i64> = sqlx::query_scalar(
            "SELECT (extract(epoch FROM max(updated_at)) * 1000)::int8 FROM orders
             WHERE created_at <= to_timestamp($1::float8 / 1000)",
        )
        .bind(f.end_ms as f64)
        .fetch_one(&order)
        .await
        .unwrap_or(None);
        let recovery = settled.map(|t| (t - f.end_ms).max(0));
        last_recovery = recovery;
        recoveries.push(format!(
            "{} {} → {}",
            f.kind,
            secs(f.end_ms - f.start_ms),
            recovery.map_or("-".into(), secs)
        ));
    }
    if let Some(rec) = last_recovery {
        println!(
            "#   time to converge after the last fault: {} (every order taken before it ended settled)",
            secs(rec)
        );
    }
    println!(
        "#   each fault: how long it lasted → how long after it every earlier order was settled: {}",
        recoveries.join(", ")
    );
    Ok(r.failed == 0)
}
