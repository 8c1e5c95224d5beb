//! What an order costs in CPU, per process: PostgreSQL, RabbitMQ, order, pay and the gateway,
//! at a steady rate through `POST /order/buy` on the gateway. These are the figures a
//! capacity plan multiplies: a rate alone says what this machine carries, the cost per order
//! says what each part needs anywhere.
//!
//! Steps, per rate: [`measure`] starts the stack with the gateway and snapshots every process's
//! CPU ([`Snapshot::take`]), waits [`IDLE`] and snapshots again (the broker and the database
//! server are shared: their idle rate is subtracted), writes orders at the rate for the
//! section's seconds, waits until each is settled ([`scenarios::watch`]), snapshots a last
//! time and divides what each part used over the load ([`used`]) by the orders settled
//! ([`Costs::of`]).
//!
//! CPU is user + system time from `/proc/<pid>/stat` (every thread of the process), read
//! directly: two fields of one line, no crate needed. PostgreSQL is a process per connection:
//! the backends of order's and of pay's database are told apart by the database name in their
//! process title,
//! and the rest of the server (WAL writer, checkpointer, other databases, connections that
//! ended: the postmaster's reaped children) is what the postmaster's tree used besides them.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    Run,
    generator::{self, Generated, Writer},
    report::{Row, share},
    scenarios,
    stack::{Stack, System},
};

/// The quiet window before the load: the shared processes' rate without this stack's work.
const IDLE: Duration = Duration::from_secs(3);

/// One process's CPU so far (user + system, all threads) and its reaped children's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcCpu {
    pub parent: u32,
    pub own: Duration,
    pub children: Duration,
}

/// `/proc/<pid>/stat` of `pid` (a number or `self`).
pub fn read(pid: &str) -> Option<ProcCpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it are plain.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Counted from 1: ppid is field 4, utime 14, stime 15, cutime 16, cstime 17; `rest`
    // starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    // USER_HZ is 100 on every Linux the project targets.
    let ticks = |t: u64| Duration::from_millis(t * 10);
    Some(ProcCpu {
        parent: u32::try_from(field(4)?).ok()?,
        own: ticks(field(14)? + field(15)?),
        children: ticks(field(16)? + field(17)?),
    })
}

/// The process listening on TCP `port` (the postmaster, the broker's `beam.smp`): the socket's
/// inode from `/proc/net/tcp{,6}`, then the process holding it among `/proc/*/fd`.
fn listener(port: u16) -> Option<u32> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|file| {
            let table = std::fs::read_to_string(file).ok()?;
            table.lines().skip(1).find_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let local_port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
                // State 0A is LISTEN; field 9 the socket's inode.
                let listening = local_port == port && *f.get(3)? == "0A";
                listening.then(|| f.get(9).map(|s| s.to_string())).flatten()
            })
        })?;
    let socket = format!("socket:[{inode}]");
    pids().into_iter().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == &*socket))
        })
    })
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The process title PostgreSQL gives a backend: `postgres: <user> <database> <client> …`.
fn title(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The processes whose CPU is read, found once per stack.
struct Watched {
    postmaster: Option<u32>,
    broker: Option<u32>,
    /// The service whose database a backend serves, by ` <database> ` in its title.
    databases: Vec<(&'static str, String)>,
    services: Vec<(&'static str, u32)>,
}

/// Every watched process's CPU at one moment.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    at: Option<Instant>,
    /// The postmaster's own CPU and its reaped children's.
    postmaster: Duration,
    /// The postmaster's live children, each with the service whose database it serves.
    backends: HashMap<u32, (Option<&'static str>, Duration)>,
    /// The server's WAL position, in bytes.
    wal: f64,
    broker: Duration,
    services: HashMap<&'static str, Duration>,
    generator: Duration,
}

impl Snapshot {
    async fn take(w: &Watched, db: &sqlx::PgPool) -> Self {
        let wal = sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
            .fetch_one(db)
            .await
            .unwrap_or(0.0);
        let mut s = Snapshot {
            at: Some(Instant::now()),
            wal,
            generator: read("self").map(|c| c.own).unwrap_or_default(),
            ..Default::default()
        };
        if let Some(pm) = w.postmaster.and_then(|p| read(&p.to_string())) {
            s.postmaster = pm.own + pm.children;
            for pid in pids() {
                match read(&pid.to_string()) {
                    Some(c) if Some(c.parent) == w.postmaster => {
                        let t = title(pid);
                        let service = w.databases.iter().find(|(_, d)| t.contains(d.as_str()));
                        s.backends
                            .insert(pid, (service.map(|(name, _)| *name), c.own));
                    }
                    _ => {}
                }
            }
        }
        s.broker = w
            .broker
            .and_then(|p| read(&p.to_string()))
            .map(|c| c.own)
            .unwrap_or_default();
        for &(name, pid) in &w.services {
            let cpu = read(&pid.to_string()).map(|c| c.own).unwrap_or_default();
            s.services.insert(name, cpu);
        }
        s
    }

    fn secs_since(&self, earlier: &Snapshot) -> f64 {
        match (self.at, earlier.at) {
            (Some(a), Some(b)) => a.duration_since(b).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// PostgreSQL's CPU in seconds from `a` to `b`: the backends of each watched service's
/// database, and the rest of the server (under `None`). A backend that ended in between has
/// its whole life in the postmaster's reaped children's time: what it had used by `a` is
/// taken off, and it counts as the rest of the server.
fn postgres(a: &Snapshot, b: &Snapshot) -> HashMap<Option<&'static str>, f64> {
    let mut total = b.postmaster.as_secs_f64() - a.postmaster.as_secs_f64();
    for (pid, &(_, before)) in &a.backends {
        if !b.backends.contains_key(pid) {
            total -= before.as_secs_f64();
        }
    }
    let mut used: HashMap<Option<&'static str>, f64> = HashMap::new();
    for (pid, &(service, now)) in &b.backends {
        let before = a.backends.get(pid).map_or(0.0, |(_, d)| d.as_secs_f64());
        total += now.as_secs_f64() - before;
        if service.is_some() {
            *used.entry(service).or_default() += now.as_secs_f64() - before;
        }
    }
    let ours: f64 = used.values().sum();
    used.insert(None, total - ours);
    used
}

/// CPU per order of each part, in µs, over one load, and the WAL it wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Costs {
    pub rate: f64,
    pub orders: usize,
    pub load: Generated,
    /// Seconds from the start of the load until every order was settled.
    pub secs: f64,
    /// `(part, µs per order)`, in the order the report prints them.
    pub per_order_us: Vec<(String, f64)>,
    /// WAL written per order by the whole server, less its idle rate.
    pub wal_bytes_per_order: f64,
    /// The shared parts' rates over the idle window (subtracted above): CPU in ms per second,
    /// WAL in bytes per second.
    pub idle_per_sec: Vec<(String, f64)>,
}

/// What each part used from `a` to `b`, in seconds of CPU (WAL in bytes).
fn used(a: &Snapshot, b: &Snapshot) -> Vec<(&'static str, f64)> {
    let pg = postgres(a, b);
    let pg = |k| pg.get(&k).copied().unwrap_or(0.0);
    let service = |name| {
        let cpu = |s: &Snapshot| s.services.get(name).map_or(0.0, |d| d.as_secs_f64());
        cpu(b) - cpu(a)
    };
    vec![
        (
            "PostgreSQL: order's database (its backends)",
            pg(Some("order")),
        ),
        ("PostgreSQL: pay's database (its backends)", pg(Some("pay"))),
        (SERVER, pg(None)),
        (BROKER, b.broker.as_secs_f64() - a.broker.as_secs_f64()),
        ("order", service("order")),
        ("pay", service("pay")),
        ("gateway", service("gateway")),
        (WAL, b.wal - a.wal),
    ]
}

/// The parts shared with whatever else the server and the broker run: their idle rate is
/// taken off.
const SERVER: &str = "PostgreSQL: the rest of the server, less its idle rate";
const BROKER: &str = "RabbitMQ (beam.smp), less its idle rate";
const WAL: &str = "WAL";
/// The total row, and the generator's (not part of the system).
pub const SYSTEM: &str = "the system (all of the above)";
const GENERATOR: &str = "the load generator (this process)";

impl Costs {
    /// Each part's use from `start` to `end` per order, the shared ones less their rate
    /// from `idle.0` to `idle.1` (= `start`).
    fn of(rate: f64, load: Generated, idle: (&Snapshot, &Snapshot), end: &Snapshot) -> Self {
        let (i0, start) = idle;
        let (idle_secs, secs) = (start.secs_since(i0), end.secs_since(start));
        let orders = load.written.max(1) as f64;
        let quiet: HashMap<_, _> = used(i0, start)
            .into_iter()
            .filter(|(part, _)| [SERVER, BROKER, WAL].contains(part))
            .map(|(part, v)| (part, if idle_secs > 0.0 { v / idle_secs } else { 0.0 }))
            .collect();
        let mut per_order_us = Vec::new();
        let mut wal_bytes_per_order = 0.0;
        for (part, v) in used(start, end) {
            let net = (v - quiet.get(part).unwrap_or(&0.0) * secs).max(0.0) / orders;
            match part {
                WAL => wal_bytes_per_order = net,
                _ => per_order_us.push((part.to_string(), 1e6 * net)),
            }
        }
        let system = per_order_us.iter().map(|(_, v)| v).sum();
        per_order_us.push((SYSTEM.into(), system));
        let generator = end.generator.as_secs_f64() - start.generator.as_secs_f64();
        per_order_us.push((GENERATOR.into(), 1e6 * generator / orders));
        let idle_per_sec = quiet
            .into_iter()
            .map(|(part, v)| (part.to_string(), if part == WAL { v } else { 1e3 * v }))
            .collect();
        Costs {
            rate,
            orders: load.written,
            load,
            secs,
            per_order_us,
            wal_bytes_per_order,
            idle_per_sec,
        }
    }
}

/// `rate` orders/s through `POST /order/buy` on the gateway for `duration`, then until each
/// order is settled: every part's CPU per order.
pub async fn measure(rate: f64, duration: Duration) -> Costs {
    let label = format!("cpu {rate}/s");
    let mut stack = Stack::running(System::This).await;
    stack.start_gateway().await;
    let writer = Writer::http(&format!("{}/order", stack.gateway_url()));
    let port = |url: &str, default| {
        reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.port())
            .unwrap_or(default)
    };
    let database = |url: &str| {
        let name = url.rsplit('/').next().unwrap_or_default();
        format!(" {} ", name.split('?').next().unwrap_or_default())
    };
    let amqp = stack
        .amqp
        .url
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string();
    let watched = Watched {
        postmaster: listener(port(&stack.order_db.url, 5432)),
        broker: listener(port(&amqp, 5672)),
        databases: vec![
            ("order", database(&stack.order_db.url)),
            ("pay", database(&stack.pay_db.url)),
        ],
        services: [
            ("order", stack.order.as_ref()),
            ("pay", Some(&stack.pay)),
            ("gateway", stack.gateway.as_ref()),
        ]
        .into_iter()
        .filter_map(|(name, p)| Some((name, p?.pid()?)))
        .collect(),
    };
    if watched.postmaster.is_none() || watched.broker.is_none() {
        eprintln!(
            "    [{label}] the PostgreSQL or RabbitMQ process was not found (not on this machine, or /proc/<pid>/fd not readable): its cost reads 0"
        );
    }
    let idle = Snapshot::take(&watched, &stack.order_db.pool).await;
    tokio::time::sleep(IDLE).await;
    let start = Snapshot::take(&watched, &stack.order_db.pool).await;
    eprintln!("    [{label}] {:.0} s of load", duration.as_secs_f64());
    let load = generator::at_rate(&writer, rate, duration, generator::Arrivals::from_env()).await;
    scenarios::watch(&stack, &label, load.written, Instant::now()).await;
    let end = Snapshot::take(&watched, &stack.order_db.pool).await;
    stack.finish().await;
    Costs::of(rate, load, (&idle, &start), &end)
}

/// The section: each rate's costs as rows, each part with its share of the system's.
pub async fn section(smoke: bool, run: &mut Run) {
    let (rates, secs) = if smoke {
        (vec![50.0], 2)
    } else {
        (vec![200.0, 600.0], 20)
    };
    crate::section(&format!(
        "cpu: POST /order/buy through the gateway at {rates:?} orders/s for {secs} s each, then until settled; CPU per order of every process"
    ));
    let mut all = Vec::new();
    for &rate in &rates {
        let c = measure(rate, Duration::from_secs(secs)).await;
        let system = c
            .per_order_us
            .iter()
            .find(|(p, _)| p == SYSTEM)
            .map_or(0.0, |(_, v)| *v);
        for (i, (part, us)) in c.per_order_us.iter().enumerate() {
            let row = Row::new(
                "cpu",
                format!("{rate:.0}/s: {part}"),
                format!("{us:.0} µs/order"),
            );
            // The parts of the system, then its total and the generator.
            let part_of_system = i + 2 < c.per_order_us.len();
            run.rows.push(if part_of_system {
                row.ratio(share(*us, system, "the system"))
            } else {
                row
            });
        }
        run.rows.push(Row::new(
            "cpu",
            format!("{rate:.0}/s: WAL written, less its idle rate"),
            format!("{:.0} bytes/order", c.wal_bytes_per_order),
        ));
        run.rows
            .push(crate::generator_row(&format!("cpu {rate:.0}/s"), &c.load));
        all.push(c);
    }
    run.raw("cpu_per_order", &all);
}
