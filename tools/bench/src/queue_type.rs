//! The `queue_type` section: the price of replication, measured in one run. The steady
//! scenario (orders at a fixed rate into order's database, every order's latency) on classic
//! queues and on quorum queues (the services' default), round after round, the order
//! alternating so a drift of the machine hits both; each figure is the median over the
//! rounds, with the quorum/classic ratio. On one broker node a quorum queue is a Raft group
//! of one: the price here is its log and fsync, not the network to other replicas.

use std::time::Duration;

use message_table::amqp::QueueType;
use serde_json::json;

use crate::{
    Plan, Run, generator,
    report::Row,
    scenarios, stack,
    stats::{median, percentile},
};

/// The rate of the comparison: the steady section's headline.
const RATE: f64 = 200.0;

/// One round on one queue type: (hop p50, hop p99, round trip p50, round trip p99) in ms.
async fn once(queue_type: QueueType, secs: u64) -> ([f64; 4], generator::Generated) {
    stack::use_queue_type(Some(queue_type));
    let arrivals = generator::Arrivals::from_env();
    let s = scenarios::steady(
        stack::System::This,
        RATE,
        Duration::from_secs(secs),
        arrivals,
    )
    .await;
    let pct = |ms: &[f64], p| percentile(ms, p);
    let figures = [
        pct(&s.hop_ms, 50.0),
        pct(&s.hop_ms, 99.0),
        pct(&s.round_trip_ms, 50.0),
        pct(&s.round_trip_ms, 99.0),
    ];
    eprintln!(
        "    [queue_type {queue_type}] one hop p50 / p99 {:.1} / {:.1} ms, round trip {:.1} / {:.1} ms",
        figures[0], figures[1], figures[2], figures[3]
    );
    (figures, s.load)
}

pub async fn section(plan: &Plan, run: &mut Run) {
    crate::section(&format!(
        "queue_type: steady {RATE:.0} orders/s for {} s on classic, then quorum queues; {} round(s), alternating",
        plan.steady_secs, plan.rounds
    ));
    let mut classic = Vec::new();
    let mut quorum = Vec::new();
    for round in 1..=plan.rounds {
        let order = if round % 2 == 1 {
            [QueueType::Classic, QueueType::Quorum]
        } else {
            [QueueType::Quorum, QueueType::Classic]
        };
        for queue_type in order {
            let (figures, load) = once(queue_type, plan.steady_secs).await;
            match queue_type {
                QueueType::Classic => classic.push((figures, load)),
                QueueType::Quorum => quorum.push((figures, load)),
            }
        }
    }
    // The other sections run on the run's queue type again.
    stack::use_queue_type(None);
    let medians = |runs: &[([f64; 4], generator::Generated)]| -> [f64; 4] {
        std::array::from_fn(|i| median(&runs.iter().map(|(f, _)| f[i]).collect::<Vec<_>>()))
    };
    let (c, q) = (medians(&classic), medians(&quorum));
    let of = |i: usize| format!("quorum {:.2}× classic", q[i] / c[i]);
    let label = |s: &str| format!("{RATE:.0}/s: {s} (median of {})", plan.rounds);
    for (what, p50, p99) in [("one hop", 0, 1), ("round trip", 2, 3)] {
        run.rows.push(Row::new(
            "queue_type",
            label(&format!("classic, {what} p50 / p99")),
            format!("{:.1} / {:.1} ms", c[p50], c[p99]),
        ));
        run.rows.push(
            Row::new(
                "queue_type",
                label(&format!("quorum, {what} p50 / p99")),
                format!("{:.1} / {:.1} ms", q[p50], q[p99]),
            )
            .ratio(format!("p50 {}, p99 {}", of(p50), of(p99))),
        );
    }
    let raw = |runs: &[([f64; 4], generator::Generated)]| {
        runs.iter()
            .map(|(f, load)| json!({ "load": load, "hop_ms": { "p50": f[0], "p99": f[1] }, "round_trip_ms": { "p50": f[2], "p99": f[3] } }))
            .collect::<Vec<_>>()
    };
    run.raw(
        "queue_type",
        json!({ "rate": RATE, "classic": raw(&classic), "quorum": raw(&quorum) }),
    );
}
