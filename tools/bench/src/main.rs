//! `scripts/bench.sh`: the machine's ceilings and the system on the same scenarios, measured
//! side by side in one run on this machine's PostgreSQL and RabbitMQ, with the services as
//! their real binaries (child processes) and this process as the load generator.
//!
//! Sections, in order: ceilings; drain; steady; max; relay and inbox alone; gateway
//! overhead (footprints come from the max scenario); takeover (an order instance killed
//! mid-window while another runs); events (orders bought then cancelled: four messages
//! each through both outboxes and inboxes, `events.rs`); queue_type (steady on classic against quorum queues,
//! `queue_type.rs`); cpu (each process's CPU per order at a steady rate, `cpu.rs`). Every
//! figure is reported with its ratio
//! to the matching ceiling and the target; nothing is asserted, because the machine
//! is shared and a wall-clock threshold would only make the run flaky. Compare the ratios:
//! they are measured minutes apart on the same machine. The one failure is a scenario that
//! stalls (no order handled for a minute): the run then exits non-zero.
//!
//! `--smoke`: a few seconds per section, on whatever build it is run from, so the benchmark
//! keeps working (scripts/test.sh runs it); its figures mean nothing.
//! `BENCH_SECTIONS` (default all: `ceilings,drain,steady,max,halves,gateway,takeover,events,queue_type,cpu`)
//! picks sections. Every section runs on quorum queues (the services' default) except where
//! queue_type compares them with classic ones.
//! `BENCH_PEERS=none` leaves the peer (RustStream) out; `BENCH_RATES` (comma-separated orders
//! per second) replaces the sweep's rates, `BENCH_DRAIN` (comma-separated orders) the drain's
//! backlogs; `BENCH_ARRIVALS=even` spaces orders evenly instead
//! of Poisson arrivals.
//! `BENCH_OUT` is the results folder (scripts/bench.sh: `.run/bench/<timestamp>`).

mod ceilings;
mod cpu;
mod events;
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
use stack::System;

/// Sizes of one run.
struct Plan {
    /// Rounds of the headline figures (their median is reported).
    rounds: usize,
    ceiling_secs: u64,
    broker_messages: usize,
    broker_window: usize,
    /// The first size is the headline (`rounds` rounds, both systems); the others run once,
    /// on this system: how the cost of a message grows with the backlog.
    drain: Vec<usize>,
    /// The sweep's rates, lowest first.
    steady: Vec<f64>,
    steady_secs: u64,
    max_secs: u64,
    halves_messages: usize,
    gateway_requests: usize,
    /// Kills of the takeover section (0: skipped).
    takeover_kills: usize,
    /// Orders of the events section (each bought then cancelled: four messages).
    events_orders: usize,
}

impl Plan {
    fn full() -> Self {
        Plan {
            rounds: 3,
            ceiling_secs: 5,
            broker_messages: 20_000,
            broker_window: 256,
            drain: vec![20_000, 200_000, 1_000_000],
            steady: vec![100.0, 200.0, 500.0, 1_000.0, 2_000.0],
            steady_secs: 20,
            max_secs: 20,
            halves_messages: 5_000,
            gateway_requests: 5_000,
            takeover_kills: 3,
            events_orders: 1_000,
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
            events_orders: 50,
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

/// `ours / theirs` as "1.23× RustStream's".
fn versus(ours: f64, theirs: f64) -> String {
    format!("{:.2}× {}'s", ours / theirs, System::RustStream.name())
}

async fn drain(plan: &Plan, run: &mut Run) {
    let mut headline = None;
    for (i, &orders) in plan.drain.iter().enumerate() {
        // The first size is measured on both systems, round after round, the order
        // alternating; the larger ones on this system alone, once: how the cost of a
        // message grows with the backlog.
        let (rounds, systems) = if i == 0 {
            (plan.rounds, System::measured(2))
        } else {
            (1, System::measured(1))
        };
        section(&format!(
            "drain: {orders} orders written into order's database, then order (relay + inbox) started; {rounds} round(s) of {}",
            systems
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut results: Vec<scenarios::Drain> = Vec::new();
        for round in 0..rounds {
            for k in 0..systems.len() {
                let system = systems[(k + round) % systems.len()];
                results.push(scenarios::drain(system, orders).await);
            }
        }
        let medians = |system: System| {
            let of = |f: fn(&scenarios::Drain) -> f64| {
                let v: Vec<f64> = results
                    .iter()
                    .filter(|d| d.system == system)
                    .map(f)
                    .collect();
                stats::median(&v)
            };
            (of(|d| d.hop_per_sec), of(|d| d.round_trip_per_sec))
        };
        let broker = run.broker();
        let label = |s: &str| format!("{orders} orders, {s} (median of {rounds})");
        let (hop, rt) = medians(System::This);
        let peer = systems
            .contains(&System::RustStream)
            .then(|| medians(System::RustStream));
        let mut hop_row = Row::new("drain", label("one hop"), per_sec(hop)).ratio(Run::of(
            broker,
            hop,
            "broker ceiling",
        ));
        let mut rt_row = Row::new("drain", label("round trip (PAID)"), per_sec(rt)).ratio(Run::of(
            broker,
            rt,
            "broker ceiling",
        ));
        match (headline, peer) {
            (None, Some((peer_hop, peer_rt))) => {
                hop_row = hop_row
                    .ratio(versus(hop, peer_hop))
                    .target("≥ 2× RustStream", hop >= 2.0 * peer_hop);
                rt_row = rt_row
                    .ratio(versus(rt, peer_rt))
                    .target("≥ 2× RustStream", rt >= 2.0 * peer_rt);
                run.rows.push(hop_row);
                run.rows.push(rt_row);
                let label =
                    |s: &str| format!("{orders} orders, RustStream, {s} (median of {rounds})");
                run.rows.push(
                    Row::new("drain", label("one hop"), per_sec(peer_hop)).ratio(Run::of(
                        broker,
                        peer_hop,
                        "broker ceiling",
                    )),
                );
                run.rows.push(
                    Row::new("drain", label("round trip (PAID)"), per_sec(peer_rt)).ratio(Run::of(
                        broker,
                        peer_rt,
                        "broker ceiling",
                    )),
                );
            }
            (Some((first, first_hop)), _) => {
                // The backlog's growth: the rate kept against the smallest backlog's.
                let kept = hop / first_hop;
                hop_row = hop_row.ratio(format!("{:.2}× the {first} backlog's rate", kept));
                if orders >= 1_000_000 {
                    hop_row = hop_row.target("≥ 0.8× the smallest backlog's", kept >= 0.8);
                }
                run.rows.push(hop_row);
                run.rows.push(rt_row);
            }
            (None, None) => {
                run.rows.push(hop_row);
                run.rows.push(rt_row);
            }
        }
        headline = headline.or(Some((orders, hop)));
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

/// The steady rate whose figures are the headline: its rounds' median, and its latency plot.
const HEADLINE_RATE: f64 = 200.0;

/// The sweep: each rate on each system (the headline rate `plan.rounds` times, alternating
/// which system goes first; the others once), until a system falls behind (it then skips the
/// higher rates). Every order's latency, read from the databases.
async fn steady(plan: &Plan, run: &mut Run) {
    let arrivals = generator::Arrivals::from_env();
    let mut saturated_at: Vec<(System, f64)> = Vec::new();
    for &rate in &plan.steady {
        let systems: Vec<System> = System::measured(2)
            .into_iter()
            .filter(|s| !saturated_at.iter().any(|(t, _)| t == s))
            .collect();
        if systems.is_empty() {
            break;
        }
        let rounds = if rate == HEADLINE_RATE {
            plan.rounds
        } else {
            1
        };
        section(&format!(
            "steady: {rate:.0} orders/s ({} arrivals) into order's database for {} s; latency of every order; {rounds} round(s) of {}",
            arrivals.label(),
            plan.steady_secs,
            systems
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut results: Vec<scenarios::Steady> = Vec::new();
        for round in 0..rounds {
            for k in 0..systems.len() {
                let system = systems[(k + round) % systems.len()];
                let duration = Duration::from_secs(plan.steady_secs);
                results.push(scenarios::steady(system, rate, duration, arrivals).await);
            }
        }
        let figures = |system: System| -> Option<[f64; 4]> {
            let mine: Vec<&scenarios::Steady> =
                results.iter().filter(|s| s.system == system).collect();
            if mine.is_empty() {
                return None;
            }
            let med = |ms: fn(&scenarios::Steady) -> &[f64], p: f64| {
                let v: Vec<f64> = mine.iter().map(|s| stats::percentile(ms(s), p)).collect();
                stats::median(&v)
            };
            Some([
                med(|s| &s.hop_ms, 50.0),
                med(|s| &s.hop_ms, 99.0),
                med(|s| &s.round_trip_ms, 50.0),
                med(|s| &s.round_trip_ms, 99.0),
            ])
        };
        let peer = figures(System::RustStream);
        let load = Run::of(run.order_tx, rate, "order-transaction ceiling");
        for system in &systems {
            let Some(f) = figures(*system) else { continue };
            let fell_behind = results.iter().any(|s| s.system == *system && s.saturated());
            let what = |s: &str| {
                format!(
                    "{rate:.0}/s {}, {}: {s} (median of {rounds}){}",
                    arrivals.label(),
                    system.name(),
                    if fell_behind { ", fell behind" } else { "" }
                )
            };
            let mut hop = Row::new(
                "steady",
                what("one hop p50 / p99"),
                format!("{:.1} / {:.1} ms", f[0], f[1]),
            );
            let mut rt = Row::new(
                "steady",
                what("round trip p50 / p99"),
                format!("{:.1} / {:.1} ms", f[2], f[3]),
            );
            match (system, peer) {
                (System::This, Some(p)) => {
                    hop = hop.ratio(format!(
                        "p50 {}, p99 {}",
                        versus(f[0], p[0]),
                        versus(f[1], p[1])
                    ));
                    rt = rt.ratio(format!(
                        "p50 {}, p99 {}",
                        versus(f[2], p[2]),
                        versus(f[3], p[3])
                    ));
                    hop = if rate == HEADLINE_RATE {
                        hop.target("p99 ≤ ½ RustStream's", f[1] <= p[1] / 2.0)
                    } else {
                        hop.target("p99 ≤ RustStream's", f[1] <= p[1])
                    };
                }
                (System::This, None) => hop = hop.ratio(format!("load {load}")),
                _ => {}
            }
            if *system == System::This && rate == 1_000.0 {
                hop = hop.target("p99 ≤ 20 ms", f[1] <= 20.0);
            }
            run.rows.push(hop);
            run.rows.push(rt);
            if fell_behind {
                saturated_at.push((*system, rate));
            }
        }
        run.rows.push(generator_row(
            &format!("steady {rate:.0}/s"),
            &results[0].load,
        ));
        run.raw(
            &format!("steady_{rate:.0}"),
            results
                .iter()
                .map(|s| {
                    let pct = |ms: &[f64], p| stats::percentile(ms, p);
                    json!({
                        "system": s.system, "arrivals": s.arrivals, "load": s.load, "reached": s.reached,
                        "hop_ms": { "p50": pct(&s.hop_ms, 50.0), "p99": pct(&s.hop_ms, 99.0) },
                        "round_trip_ms": { "p50": pct(&s.round_trip_ms, 50.0), "p99": pct(&s.round_trip_ms, 99.0) },
                    })
                })
                .collect::<Vec<_>>(),
        );
        run.steady.extend(results);
    }
    for (system, rate) in saturated_at {
        run.rows.push(Row::new(
            "steady",
            format!("{}: fell behind at", system.name()),
            format!("{rate:.0}/s (higher rates skipped)"),
        ));
    }
}

async fn max(plan: &Plan, run: &mut Run) {
    // Into the database on both systems, alternating; through the gateway once, on this
    // system: it is there for the footprint of every service.
    for (entry, systems) in [
        (Entry::Database, System::measured(2)),
        (Entry::Gateway, System::measured(1)),
    ] {
        let how = match entry {
            Entry::Database => "into the database",
            Entry::Gateway => "POST /buy via the gateway",
        };
        let rounds = match entry {
            Entry::Database => plan.rounds,
            Entry::Gateway => 1,
        };
        section(&format!(
            "max: {PRODUCERS} producers flat out for {} s ({how}), then until drained; {rounds} round(s) of {}",
            plan.max_secs,
            systems
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut results: Vec<scenarios::Max> = Vec::new();
        for round in 0..rounds {
            for k in 0..systems.len() {
                let system = systems[(k + round) % systems.len()];
                let secs = Duration::from_secs(plan.max_secs);
                results.push(scenarios::max(system, entry, secs).await);
            }
        }
        let medians = |system: System| {
            let of = |f: fn(&scenarios::Max) -> f64| {
                let v: Vec<f64> = results
                    .iter()
                    .filter(|m| m.system == system)
                    .map(f)
                    .collect();
                stats::median(&v)
            };
            (of(|m| m.handled_per_sec), of(|m| m.end_to_end_per_sec))
        };
        let (handled, e2e) = medians(System::This);
        let peer = systems
            .contains(&System::RustStream)
            .then(|| medians(System::RustStream));
        let ceiling = run.order_tx;
        let drained = |system: System| {
            results
                .iter()
                .filter(|m| m.system == system)
                .all(|m| m.reached.round_trip_secs.is_some())
        };
        let label =
            |system: System, s: &str| format!("{how}, {}: {s} (median of {rounds})", system.name());
        let mut handled_row = Row::new(
            "max",
            label(System::This, "handled while loaded"),
            per_sec(handled),
        )
        .ratio(Run::of(ceiling, handled, "order-transaction ceiling"));
        let mut e2e_row = Row::new(
            "max",
            label(System::This, "end to end until drained"),
            per_sec(e2e),
        )
        .ratio(Run::of(ceiling, e2e, "order-transaction ceiling"));
        if let Some((peer_handled, peer_e2e)) = peer {
            let half_ceiling = ceiling.is_some_and(|c| handled >= 0.5 * c);
            let of_ceiling = Run::of(ceiling, handled, "order-transaction ceiling");
            let ratios = [versus(handled, peer_handled), of_ceiling];
            handled_row = handled_row
                .ratio(
                    ratios
                        .into_iter()
                        .filter(|r| !r.is_empty())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
                .target(
                    "≥ 1.5× RustStream's and ≥ 50% of the ceiling",
                    handled >= 1.5 * peer_handled && half_ceiling,
                );
            e2e_row = e2e_row.ratio(versus(e2e, peer_e2e)).target(
                "drains, ≥ 1.5× RustStream's",
                drained(System::This) && e2e >= 1.5 * peer_e2e,
            );
        }
        run.rows.push(handled_row);
        run.rows.push(e2e_row);
        if let Some((peer_handled, peer_e2e)) = peer {
            let rs = System::RustStream;
            run.rows.push(
                Row::new(
                    "max",
                    label(rs, "handled while loaded"),
                    per_sec(peer_handled),
                )
                .ratio(Run::of(ceiling, peer_handled, "order-transaction ceiling")),
            );
            let drains = if drained(rs) { "" } else { ", did not drain" };
            run.rows.push(
                Row::new(
                    "max",
                    label(rs, &format!("end to end until drained{drains}")),
                    per_sec(peer_e2e),
                )
                .ratio(Run::of(ceiling, peer_e2e, "order-transaction ceiling")),
            );
        }
        let last = results
            .iter()
            .rfind(|m| m.system == System::This)
            .expect("one round of this system");
        run.rows.push(generator_row(
            &format!("max, {entry:?}").to_lowercase(),
            &last.load,
        ));
        if matches!(entry, Entry::Gateway) {
            footprint_rows(run, &last.footprints);
        } else if let Some(peer) = results.iter().rfind(|m| m.system == System::RustStream) {
            footprint_rows(run, &peer.footprints);
        }
        run.raw(&format!("max_{entry:?}").to_lowercase(), &results);
    }
}

fn footprint_rows(run: &mut Run, footprints: &[stack::Footprint]) {
    for f in footprints {
        let ours = !f.service.starts_with(System::RustStream.name());
        let mut rss = Row::new(
            "footprint",
            format!("{}: peak RSS under max", f.service),
            format!("{:.1} MiB", f.peak_rss_mib),
        );
        let mut ready = Row::new(
            "footprint",
            format!("{}: spawn to ready", f.service),
            format!("{:.0} ms", f.ready_ms),
        );
        if ours {
            rss = rss.target("≤ 50 MB", f.peak_rss_mib * 1.048_576 <= 50.0);
            ready = ready.target("< 1 s", f.ready_ms < 1_000.0);
        }
        run.rows.push(rss);
        run.rows.push(ready);
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
            // Kept at least the share nginx keeps in the same run; without nginx, 85%.
            rate = match o.way("nginx") {
                Some(nginx) => {
                    let nginx_kept = nginx.median_rate / direct.median_rate;
                    rate.target("≥ nginx's share of direct", kept >= nginx_kept)
                }
                None => rate.target("≥ 85% of direct", kept >= 0.85),
            };
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
    // Autovacuum (which also analyzes) shapes the figures of large backlogs: said with the
    // version, since some machines (CI images) turn it off.
    let postgres: String = sqlx::query_scalar(
        "SELECT current_setting('server_version') || ' (autovacuum '
                || current_setting('autovacuum') || ')'",
    )
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
    let mut plan = if smoke { Plan::smoke() } else { Plan::full() };
    // BENCH_DRAIN=20000: the drain's backlog sizes, for a run that needs only those.
    if let Ok(sizes) = std::env::var("BENCH_DRAIN") {
        plan.drain = sizes
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("BENCH_DRAIN: orders, comma-separated")
            })
            .collect();
    }
    // BENCH_RATES=200,1000: the sweep's rates, for a run that needs only those.
    if let Ok(rates) = std::env::var("BENCH_RATES") {
        plan.steady = rates
            .split(',')
            .map(|r| {
                r.trim()
                    .parse()
                    .expect("BENCH_RATES: orders per second, comma-separated")
            })
            .collect();
    }
    let sections = std::env::var("BENCH_SECTIONS").unwrap_or_else(|_| {
        "ceilings,drain,steady,max,halves,gateway,takeover,events,queue_type,cpu".into()
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
    if wanted("events") {
        events::section(&plan, &mut run).await;
    }
    if wanted("queue_type") {
        queue_type::section(&plan, &mut run).await;
    }
    if wanted("cpu") {
        cpu::section(smoke, &mut run).await;
    }

    // The headline rate's percentiles (each system's first round), and the sweep's curve.
    let headline = |system: System| {
        run.steady
            .iter()
            .find(|s| s.system == system && s.rate == HEADLINE_RATE)
    };
    let series: Vec<report::Series> = System::ALL
        .into_iter()
        .filter_map(headline)
        .flat_map(|s| {
            [
                report::Series {
                    name: format!("{}: one hop", s.system.name()),
                    ms: &s.hop_ms,
                },
                report::Series {
                    name: format!("{}: round trip", s.system.name()),
                    ms: &s.round_trip_ms,
                },
            ]
        })
        .collect();
    let sweeps: Vec<report::Sweep> = System::ALL
        .into_iter()
        .map(|system| report::Sweep {
            name: system.name().into(),
            // Each rate's median over its rounds, as in the table.
            points: plan
                .steady
                .iter()
                .filter_map(|&rate| {
                    let runs: Vec<&scenarios::Steady> = run
                        .steady
                        .iter()
                        .filter(|s| s.system == system && s.rate == rate)
                        .collect();
                    let med = |p| {
                        let v: Vec<f64> = runs
                            .iter()
                            .map(|s| stats::percentile(&s.hop_ms, p))
                            .collect();
                        stats::median(&v)
                    };
                    (!runs.is_empty()).then(|| (rate, med(50.0), med(99.0)))
                })
                .collect(),
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
    match report::write(&dir, &machine, command, &run.rows, &raw, &series, &sweeps) {
        Ok(()) => println!(
            "\nwritten: {0}/results.json, {0}/report.md, {0}/latency.svg, {0}/sweep.svg",
            dir.display()
        ),
        Err(e) => eprintln!("could not write the results to {}: {e}", dir.display()),
    }
    if scenarios::any_stalled() {
        eprintln!("a scenario stalled (see STALLED above): the system stopped handling orders");
        std::process::exit(1);
    }
}
