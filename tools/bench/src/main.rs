//! `scripts/bench.sh`: the machine's ceilings and the system on the same scenarios, measured
//! side by side in one run on this machine's PostgreSQL and RabbitMQ, with the services as
//! their real binaries (child processes) and this process as the load generator.
//!
//! Sections, in order: ceilings; drain; steady; max; relay and inbox alone; gateway
//! overhead (footprints come from the max scenario); takeover (an order instance killed
//! mid-window while another runs); queue_type (steady on classic against quorum queues,
//! `queue_type.rs`); cpu (each process's CPU per order at a steady rate, `cpu.rs`). Every
//! figure is reported with its ratio
//! to the matching ceiling and the target; nothing is asserted, because the machine
//! is shared and a wall-clock threshold would only make the run flaky. Compare the ratios:
//! they are measured minutes apart on the same machine. The one failure is a scenario that
//! stalls (no order handled for a minute): the run then exits non-zero.
//!
//! `--smoke`: a few seconds per section, on whatever build it is run from, so the benchmark
//! keeps working (scripts/test.sh runs it); its figures mean nothing.
//! `BENCH_SECTIONS` (default all: `ceilings,drain,steady,max,halves,gateway,takeover,queue_type,cpu`)
//! picks sections. Every section runs on quorum queues (the services' default) except where
//! queue_type compares them with classic ones.
//! `BENCH_OUT` is the results folder (scripts/bench.sh: `.run/bench/<timestamp>`).

mod ceilings;
mod cpu;
mod gateway;
mod generator;
mod queue_type;
mod report;
mod scenarios;
mod stack;
mod stats;

use std::{path::PathBuf, time::Duration};

use report::{Row, share};
use scenarios::{Entry, PRODUCERS};
use serde_json::{Value, json};

/// Sizes of one run.
struct Plan {
    /// Rounds of the headline figures (their median is reported).
    rounds: usize,
    ceiling_secs: u64,
    broker_messages: usize,
    broker_window: usize,
    /// The first size is the headline (`rounds` rounds); the others run once.
    drain: Vec<usize>,
    steady: Vec<f64>,
    steady_secs: u64,
    max_secs: u64,
    halves_messages: usize,
    gateway_requests: usize,
    /// Kills of the takeover section (0: skipped).
    takeover_kills: usize,
}

impl Plan {
    fn full() -> Self {
        Plan {
            rounds: 3,
            ceiling_secs: 5,
            broker_messages: 20_000,
            broker_window: 256,
            drain: vec![20_000, 100_000],
            steady: vec![200.0, 1_000.0],
            steady_secs: 20,
            max_secs: 20,
            halves_messages: 5_000,
            gateway_requests: 5_000,
            takeover_kills: 3,
        }
    }

    fn smoke() -> Self {
        Plan {
            rounds: 1,
            ceiling_secs: 1,
            broker_messages: 1_000,
            broker_window: 256,
            drain: vec![300],
            steady: vec![50.0],
            steady_secs: 2,
            max_secs: 2,
            halves_messages: 200,
            gateway_requests: 300,
            takeover_kills: 1,
        }
    }
}

/// Everything measured, for the summary and the JSON.
#[derive(Default)]
struct Run {
    rows: Vec<Row>,
    raw: serde_json::Map<String, Value>,
    /// The matching ceilings, once measured.
    order_tx: Option<f64>,
    publish: Option<f64>,
    consume: Option<f64>,
    steady: Vec<scenarios::Steady>,
}

impl Run {
    fn raw(&mut self, key: &str, value: impl serde::Serialize) {
        self.raw.insert(
            key.into(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    /// `value` as a share of a ceiling, or empty when that ceiling was not measured.
    fn of(ceiling: Option<f64>, value: f64, name: &str) -> String {
        ceiling.map_or(String::new(), |c| share(value, c, name))
    }

    /// The slower of the broker's two ceilings: a message is published and consumed.
    fn broker(&self) -> Option<f64> {
        Some(self.publish?.min(self.consume?))
    }
}

fn section(title: &str) {
    eprintln!("\n== {title}");
}

fn per_sec(v: f64) -> String {
    format!("{v:.0}/s")
}

async fn ceilings(plan: &Plan, run: &mut Run) {
    section(&format!(
        "ceilings: the order transaction alone at {PRODUCERS} producers; RabbitMQ persistent publish with confirms (window {}) and consume + manual ack",
        plan.broker_window
    ));
    let (mut tx, mut inside, mut publish, mut consume) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=plan.rounds {
        let secs = Duration::from_secs(plan.ceiling_secs);
        // Alternating which goes first, so a drift of the machine hits both.
        let (g, n) = if round % 2 == 1 {
            let g = ceilings::order_transaction(PRODUCERS, secs, false).await;
            (g, ceilings::order_transaction(PRODUCERS, secs, true).await)
        } else {
            let n = ceilings::order_transaction(PRODUCERS, secs, true).await;
            (ceilings::order_transaction(PRODUCERS, secs, false).await, n)
        };
        let (p, c) = ceilings::broker(plan.broker_messages, plan.broker_window, 256).await;
        eprintln!(
            "    [ceilings, round {round}/{}] order transaction {:.0}/s ({:.0}/s with the NOTIFY inside), publish {p:.0}/s, consume + ack {c:.0}/s",
            plan.rounds, g.achieved_per_sec, n.achieved_per_sec
        );
        tx.push(g.achieved_per_sec);
        inside.push(n.achieved_per_sec);
        publish.push(p);
        consume.push(c);
    }
    let (t, p, c) = (
        stats::median(&tx),
        stats::median(&publish),
        stats::median(&consume),
    );
    (run.order_tx, run.publish, run.consume) = (Some(t), Some(p), Some(c));
    let what = |s: &str| format!("{s} (median of {})", plan.rounds);
    run.rows.push(Row::new(
        "ceiling",
        what(&format!(
            "PostgreSQL: order transaction, {PRODUCERS} producers"
        )),
        per_sec(t),
    ));
    let n = stats::median(&inside);
    run.rows.push(
        Row::new(
            "ceiling",
            what("the same with the NOTIFY inside the transaction"),
            per_sec(n),
        )
        .ratio(share(n, t, "the order transaction")),
    );
    run.rows.push(Row::new(
        "ceiling",
        what(&format!(
            "RabbitMQ: persistent publish + confirms, window {}",
            plan.broker_window
        )),
        per_sec(p),
    ));
    run.rows.push(Row::new(
        "ceiling",
        what("RabbitMQ: consume + manual ack, prefetch 256"),
        per_sec(c),
    ));
    run.raw(
        "ceilings",
        json!({ "order_transaction": tx, "order_transaction_notify_inside": inside, "publish": publish, "consume_ack": consume }),
    );
}

async fn drain(plan: &Plan, run: &mut Run) {
    for (i, &orders) in plan.drain.iter().enumerate() {
        let rounds = if i == 0 { plan.rounds } else { 1 };
        section(&format!(
            "drain: {orders} orders written into order's database, then order (relay + inbox) started; {rounds} round(s)"
        ));
        let mut results = Vec::new();
        for _ in 0..rounds {
            results.push(scenarios::drain(orders).await);
        }
        let hop = stats::median(&results.iter().map(|d| d.hop_per_sec).collect::<Vec<_>>());
        let rt = stats::median(
            &results
                .iter()
                .map(|d| d.round_trip_per_sec)
                .collect::<Vec<_>>(),
        );
        let broker = run.broker();
        let label = |s: &str| format!("{orders} orders, {s} (median of {rounds})");
        run.rows.push(
            Row::new("drain", label("one hop"), per_sec(hop))
                .ratio(Run::of(broker, hop, "broker ceiling"))
                .target("≥ 2,500/s", hop >= 2_500.0),
        );
        run.rows.push(
            Row::new("drain", label("round trip (PAID)"), per_sec(rt))
                .ratio(Run::of(broker, rt, "broker ceiling"))
                .target("≥ 1,500/s", rt >= 1_500.0),
        );
        let backlog = &results[0].backlog;
        run.rows.push(generator_row(
            &format!("drain {orders}: backlog writer"),
            backlog,
        ));
        run.raw(&format!("drain_{orders}"), &results);
    }
}

/// The generator's own figures: asked, achieved, its CPU.
fn generator_row(what: &str, g: &generator::Generated) -> Row {
    let asked = g
        .asked_per_sec
        .map_or("flat out".into(), |a| format!("{a:.0}/s asked"));
    Row::new(
        "generator",
        format!("{what} ({})", g.writer),
        format!(
            "{:.0}/s achieved, {asked}, {} failed",
            g.achieved_per_sec, g.failed
        ),
    )
    .ratio(format!(
        "CPU {:.0}% of one core",
        100.0 * g.cpu_share_of_one_core
    ))
}

async fn steady(plan: &Plan, run: &mut Run) {
    for &rate in &plan.steady {
        section(&format!(
            "steady: {rate:.0} orders/s into order's database for {} s; latency of every order",
            plan.steady_secs
        ));
        let s = scenarios::steady(rate, Duration::from_secs(plan.steady_secs)).await;
        let pct = |ms: &[f64], p| stats::percentile(ms, p);
        let (hop50, hop99) = (pct(&s.hop_ms, 50.0), pct(&s.hop_ms, 99.0));
        let (rt50, rt99) = (pct(&s.round_trip_ms, 50.0), pct(&s.round_trip_ms, 99.0));
        let load = Run::of(run.order_tx, rate, "order-transaction ceiling");
        let headline = rate == 200.0;
        let mut hop = Row::new(
            "steady",
            format!("{rate:.0}/s: one hop p50 / p99"),
            format!("{hop50:.1} / {hop99:.1} ms"),
        )
        .ratio(format!("load {load}"));
        let mut rt = Row::new(
            "steady",
            format!("{rate:.0}/s: round trip p50 / p99"),
            format!("{rt50:.1} / {rt99:.1} ms"),
        );
        if headline {
            hop = hop.target("p99 ≤ 5 ms", hop99 <= 5.0);
            rt = rt.target("p99 ≤ 15 ms", rt99 <= 15.0);
        }
        run.rows.push(hop);
        run.rows.push(rt);
        run.rows
            .push(generator_row(&format!("steady {rate:.0}/s"), &s.load));
        run.raw(
            &format!("steady_{rate:.0}"),
            json!({ "load": s.load, "hop_ms": { "p50": hop50, "p99": hop99 }, "round_trip_ms": { "p50": rt50, "p99": rt99 } }),
        );
        run.steady.push(s);
    }
}

async fn max(plan: &Plan, run: &mut Run) {
    for entry in [Entry::Database, Entry::Gateway] {
        let how = match entry {
            Entry::Database => "into the database",
            Entry::Gateway => "POST /buy via the gateway",
        };
        section(&format!(
            "max: {PRODUCERS} producers flat out for {} s ({how}), then until drained",
            plan.max_secs
        ));
        // Through the gateway once: it is there for the footprint of every service.
        let rounds = match entry {
            Entry::Database => plan.rounds,
            Entry::Gateway => 1,
        };
        let mut results = Vec::new();
        for _ in 0..rounds {
            results.push(scenarios::max(entry, Duration::from_secs(plan.max_secs)).await);
        }
        let handled = stats::median(
            &results
                .iter()
                .map(|m| m.handled_per_sec)
                .collect::<Vec<_>>(),
        );
        let e2e = stats::median(
            &results
                .iter()
                .map(|m| m.end_to_end_per_sec)
                .collect::<Vec<_>>(),
        );
        let label = |s: &str| format!("{how}: {s} (median of {rounds})");
        let ceiling = run.order_tx;
        run.rows.push(
            Row::new("max", label("handled while loaded"), per_sec(handled))
                .ratio(Run::of(ceiling, handled, "order-transaction ceiling"))
                .target("≥ 1,500/s", handled >= 1_500.0),
        );
        let drained = results.iter().all(|m| m.reached.round_trip_secs.is_some());
        run.rows.push(
            Row::new("max", label("end to end until drained"), per_sec(e2e))
                .ratio(Run::of(ceiling, e2e, "order-transaction ceiling"))
                .target("drains, ≥ 1,700/s", drained && e2e >= 1_700.0),
        );
        let last = results.last().expect("one round");
        run.rows.push(generator_row(
            &format!("max, {entry:?}").to_lowercase(),
            &last.load,
        ));
        if matches!(entry, Entry::Gateway) {
            footprint_rows(run, &last.footprints);
        }
        run.raw(&format!("max_{entry:?}").to_lowercase(), &results);
    }
}

fn footprint_rows(run: &mut Run, footprints: &[stack::Footprint]) {
    for f in footprints {
        run.rows.push(
            Row::new(
                "footprint",
                format!("{}: peak RSS under max", f.service),
                format!("{:.1} MiB", f.peak_rss_mib),
            )
            .target("≤ 50 MB", f.peak_rss_mib * 1.048_576 <= 50.0),
        );
        run.rows.push(
            Row::new(
                "footprint",
                format!("{}: spawn to ready", f.service),
                format!("{:.0} ms", f.ready_ms),
            )
            .target("< 1 s", f.ready_ms < 1_000.0),
        );
    }
}

async fn halves(plan: &Plan, run: &mut Run) {
    section(&format!(
        "relay alone and inbox alone: {} messages per relay mode, then pay on the filled queue; {} round(s)",
        plan.halves_messages, plan.rounds
    ));
    let mut results = Vec::new();
    for _ in 0..plan.rounds {
        results.push(scenarios::halves(plan.halves_messages).await);
    }
    let med = |f: fn(&scenarios::Halves) -> f64| {
        stats::median(&results.iter().map(f).collect::<Vec<_>>())
    };
    let one = med(|h| h.relay_one_at_a_time_per_sec);
    let relay = med(|h| h.relay_per_sec);
    let relays = med(|h| h.relays_per_sec);
    let inbox = med(|h| h.inbox_per_sec);
    let n = plan.rounds;
    run.rows.push(
        Row::new(
            "alone",
            format!("relay, one confirm awaited per message (median of {n})"),
            per_sec(one),
        )
        .ratio(Run::of(run.publish, one, "publish ceiling")),
    );
    let ratio = run.publish.map(|p| relay / p);
    run.rows.push(
        Row::new(
            "alone",
            format!("one relay's pipelined windows, the default (median of {n})"),
            per_sec(relay),
        )
        .ratio(Run::of(run.publish, relay, "publish ceiling"))
        .target("≥ 60% of publish ceiling", ratio.is_some_and(|r| r >= 0.6)),
    );
    run.rows.push(
        Row::new(
            "alone",
            format!("two relays side by side, OUTBOX_RELAYS=2 (median of {n})"),
            per_sec(relays),
        )
        .ratio(Run::of(run.publish, relays, "publish ceiling")),
    );
    run.rows.push(
        Row::new(
            "alone",
            format!("pay's inbox on a filled queue (median of {n})"),
            per_sec(inbox),
        )
        .ratio(Run::of(run.consume, inbox, "consume + ack ceiling")),
    );
    run.raw("relay_and_inbox_alone", &results);
}

async fn gateway(plan: &Plan, run: &mut Run, dir: &std::path::Path) {
    section(&format!(
        "gateway overhead: GET /orders/{{id}}, {} requests at {PRODUCERS} concurrent per round, direct / gateway / nginx (when installed), {} rounds, alternating",
        plan.gateway_requests,
        plan.rounds.max(2)
    ));
    let o = gateway::overhead(plan.rounds.max(2), plan.gateway_requests, PRODUCERS, dir).await;
    let direct = o.way("direct").expect("the direct way").clone();
    for way in o.ways.iter().filter(|w| w.name != "direct") {
        let kept = way.median_rate / direct.median_rate;
        let added = way.median_p99_ms - direct.median_p99_ms;
        let mut rate = Row::new(
            "gateway",
            format!("through {} (median of {})", way.name, o.rounds),
            format!(
                "{} vs direct {}",
                per_sec(way.median_rate),
                per_sec(direct.median_rate)
            ),
        )
        .ratio(format!("keeps {:.0}% of direct", 100.0 * kept));
        let mut p99 = Row::new(
            "gateway",
            format!("through {}: p99 added", way.name),
            format!(
                "{added:+.2} ms ({:.2} → {:.2} ms)",
                direct.median_p99_ms, way.median_p99_ms
            ),
        );
        if way.name == "gateway" {
            rate = rate.target("≥ 85% of direct", kept >= 0.85);
            p99 = p99.target("≤ 2 ms", added <= 2.0);
        }
        run.rows.push(rate);
        run.rows.push(p99);
    }
    if o.way("nginx").is_none() {
        run.rows.push(Row::new(
            "gateway",
            "nginx reference",
            "skipped: nginx is not installed or did not start",
        ));
    }
    run.rows.push(
        Row::new("generator", "gateway section (HTTP client)", "closed loop").ratio(format!(
            "CPU {:.0}% of one core",
            100.0 * o.cpu_share_of_one_core
        )),
    );
    run.raw("gateway", &o);
}

/// Orders per second during the takeover section: steady traffic, far from any ceiling.
const TAKEOVER_RATE: f64 = 200.0;

async fn takeover(plan: &Plan, run: &mut Run) {
    section(&format!(
        "takeover: two order instances, {TAKEOVER_RATE:.0} orders/s into the database, one instance SIGKILLed mid-window and restarted, {} time(s)",
        plan.takeover_kills
    ));
    let t = scenarios::takeover(TAKEOVER_RATE, plan.takeover_kills).await;
    let worst = |ms: &[f64]| ms.iter().copied().fold(0.0, f64::max);
    let pct = |ms: &[f64], p| stats::percentile(ms, p);
    let kills = plan.takeover_kills;
    let taken = &t.taken_over_ms;
    run.rows.push(
        Row::new(
            "takeover",
            format!(
                "{kills} kill(s): taken-over orders' commit → payment, worst / p99 ({} orders)",
                taken.len()
            ),
            format!("{:.0} / {:.0} ms", worst(taken), pct(taken, 99.0)),
        )
        .target("worst ≤ 5 s", !taken.is_empty() && worst(taken) <= 5_000.0),
    );
    run.rows.push(
        Row::new(
            "takeover",
            format!(
                "{kills} kill(s): every order's commit → payment, worst / p99 ({} orders)",
                t.all_ms.len()
            ),
            format!("{:.0} / {:.0} ms", worst(&t.all_ms), pct(&t.all_ms, 99.0)),
        )
        .ratio(format!(
            "{} payment(s) for {} orders, {} duplicate(s) dropped",
            t.payments, t.load.written, t.duplicates
        )),
    );
    run.rows.push(generator_row("takeover", &t.load));
    run.raw("takeover", &t);
}

async fn machine(smoke: bool) -> report::Machine {
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let db = test_kit::TestDb::with_message_tables().await;
    let postgres: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&db.pool)
        .await
        .unwrap_or_else(|_| "unknown".into());
    let rabbitmq = tokio::process::Command::new("rabbitmqctl")
        .args(["version"])
        .output()
        .await
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into());
    report::Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib,
        postgres,
        rabbitmq,
        build: match (cfg!(debug_assertions), smoke) {
            (true, false) => "debug",
            (false, false) => "release",
            (true, true) => "debug (smoke: figures not judged)",
            (false, true) => "release (smoke: figures not judged)",
        },
    }
}

#[tokio::main]
async fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let plan = if smoke { Plan::smoke() } else { Plan::full() };
    let sections = std::env::var("BENCH_SECTIONS").unwrap_or_else(|_| {
        "ceilings,drain,steady,max,halves,gateway,takeover,queue_type,cpu".into()
    });
    let wanted = |name: &str| sections.split(',').any(|s| s.trim() == name);
    let dir = PathBuf::from(std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!(".run/bench/{secs}")
    }));
    let machine = machine(smoke).await;
    eprintln!(
        "bench{}: {} cores, PostgreSQL {}, RabbitMQ {}; results in {}",
        if smoke { " --smoke" } else { "" },
        machine.cores,
        machine.postgres,
        machine.rabbitmq,
        dir.display()
    );

    let mut run = Run::default();
    if wanted("ceilings") {
        ceilings(&plan, &mut run).await;
    }
    if wanted("drain") {
        drain(&plan, &mut run).await;
    }
    if wanted("steady") {
        steady(&plan, &mut run).await;
    }
    if wanted("max") {
        max(&plan, &mut run).await;
    }
    if wanted("halves") {
        halves(&plan, &mut run).await;
    }
    if wanted("gateway") {
        gateway(&plan, &mut run, &dir).await;
    }
    if wanted("takeover") {
        takeover(&plan, &mut run).await;
    }
    if wanted("queue_type") {
        queue_type::section(&plan, &mut run).await;
    }
    if wanted("cpu") {
        cpu::section(smoke, &mut run).await;
    }

    let series: Vec<report::Series> = run
        .steady
        .iter()
        .flat_map(|s| {
            [
                report::Series {
                    name: format!("{:.0}/s one hop", s.rate),
                    ms: &s.hop_ms,
                },
                report::Series {
                    name: format!("{:.0}/s round trip", s.rate),
                    ms: &s.round_trip_ms,
                },
            ]
        })
        .collect();
    let command = if smoke {
        "scripts/bench.sh --smoke"
    } else {
        "scripts/bench.sh"
    };
    println!("\n== summary (targets are the issue's; reported, never asserted)\n");
    print!("{}", report::table(&run.rows));
    let raw = Value::Object(run.raw.clone());
    match report::write(&dir, &machine, command, &run.rows, &raw, &series) {
        Ok(()) => println!(
            "\nwritten: {0}/results.json, {0}/report.md, {0}/latency.svg",
            dir.display()
        ),
        Err(e) => eprintln!("could not write the results to {}: {e}", dir.display()),
    }
    if scenarios::any_stalled() {
        eprintln!("a scenario stalled (see STALLED above): the system stopped handling orders");
        std::process::exit(1);
    }
}
