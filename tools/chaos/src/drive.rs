//! The load, and what the clients saw of it (accepted.csv, drive.json). POSTs orders at a
//! steady rate to one or more base URLs (round robin), each with its own `Idempotency-Key`.
//! On a transport error or a 5xx it retries with the same key (on the next URL), so an order
//! whose answer was lost is replayed, not taken twice. Stops after a count of orders or when
//! told to, then finishes the orders in flight. Its progress goes to its own log.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tokio::{sync::Semaphore, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{AnyResult, now_ms};

pub struct DriveArgs {
    /// Base URLs that serve `/buy`; round robin, a retry goes to the next one.
    pub targets: Vec<String>,
    /// Orders per second.
    pub rate: f64,
    /// Orders to place (0: until stopped).
    pub count: u64,
    pub max_in_flight: usize,
    /// Directory for accepted.csv, drive.json and driver.log.
    pub out: PathBuf,
    pub request_timeout: Duration,
    /// Prefix of the Idempotency-Keys.
    pub run_id: String,
    /// Attempts per order (the first one and the retries with the same key).
    pub max_attempts: u32,
}

impl DriveArgs {
    pub fn new(targets: Vec<String>, rate: f64, count: u64, out: PathBuf, run_id: String) -> Self {
        Self {
            targets,
            rate,
            count,
            max_in_flight: 256,
            out,
            request_timeout: Duration::from_millis(15_000),
            run_id,
            max_attempts: 12,
        }
    }
}
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

pub async fn drive(a: &DriveArgs, stop: CancellationToken) -> AnyResult<()> {
    let targets: Vec<String> = a
        .targets
        .iter()
        .map(|t| t.trim().trim_end_matches('/').to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        return Err("--targets is empty".into());
    }
    let (rate, count, max_in_flight) = (a.rate, a.count, a.max_in_flight);
    if rate <= 0.0 {
        return Err("--rate must be > 0".into());
    }
    let out = &a.out;
    let driver = Arc::new(Driver {
        http: reqwest::Client::builder()
            .timeout(a.request_timeout)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?,
        targets,
        run_id: a.run_id.clone(),
        max_attempts: a.max_attempts,
        stats: DriveStats::default(),
    });

    let started_ms = now_ms();
    let started = Instant::now();
    std::fs::create_dir_all(out)?;
    let log = Mutex::new(std::fs::File::create(out.join("driver.log"))?);
    let say = |line: String| {
        let _ = writeln!(log.lock().unwrap(), "{line}");
    };
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    progress.tick().await;
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    say(format!(
        "chaos drive: {rate} orders/s to {} ({})",
        driver.targets.join(", "),
        match count {
            0 => "until stopped".to_string(),
            n => format!("{n} orders"),
        }
    ));
    let mut i: u64 = 0;
    let report = |d: &Driver, free: usize| {
        let s = &d.stats;
        say(format!(
            "chaos drive: {:>4.0} s: issued {}, accepted {}, retries {}, gave up {}, in flight {}",
            started.elapsed().as_secs_f64(),
            s.issued.load(Ordering::Relaxed),
            s.accepted.load(Ordering::Relaxed),
            s.retries.load(Ordering::Relaxed),
            s.gave_up.load(Ordering::Relaxed),
            max_in_flight - free,
        ));
    };
    let stopped_by = loop {
        if count > 0 && i >= count {
            break "count";
        }
        tokio::select! {
            _ = ticker.tick() => {}
            _ = progress.tick() => { report(&driver, in_flight.available_permits()); continue; }
            _ = stop.cancelled() => break "told to",
        }
        let permit = tokio::select! {
            p = in_flight.clone().acquire_owned() => p?,
            _ = stop.cancelled() => break "told to",
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
    say(format!(
        "chaos drive: stopped issuing ({stopped_by}); waiting for the orders in flight"
    ));
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
