//! The figures the run prints after its checks, all read from the databases, the driver's
//! files and the services' counters; and [`snapshot`], which saves an instance's counters
//! before it is killed or stopped.

use std::{collections::BTreeMap, fs::OpenOptions, io::Write as _, path::Path};

use order::OrderStatus;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::{
    args::{Instance, service_of},
    check::{Fault, Inputs, Snapshot, unanswered},
    now_ms, secs,
    stats::{self, Services},
};

/// The readings [`snapshot`] saved in the run directory, one JSON object a line.
const COUNTERS_FILE: &str = "counters.jsonl";

/// One reading of an instance's inbox counters (they count since the process started), or
/// why there is none.
#[derive(Debug, Serialize, Deserialize)]
struct Reading {
    instance: String,
    taken_ms: i64,
    /// Duplicates the instance's inbox dropped since the process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duplicates: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn read_counters(http: &reqwest::Client, instance: &Instance) -> Reading {
    let (duplicates, error) = match stats::admin_stats(http, instance).await {
        Ok(s) => (Some(s.inbox_since_start.duplicates), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Reading {
        instance: instance.name.clone(),
        taken_ms: now_ms(),
        duplicates,
        error,
    }
}

/// One reading appended to the run's counters file, taken just before the instance is
/// killed or stopped. A reading that fails is saved as missed (the figures say so): the kill
/// goes on.
pub async fn snapshot(http: &reqwest::Client, dir: &Path, instance: &Instance) {
    let reading = read_counters(http, instance).await;
    let saved = serde_json::to_string(&reading).map(|line| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(COUNTERS_FILE))
            .and_then(|mut file| writeln!(file, "{line}"))
    });
    if !matches!(saved, Ok(Ok(()))) {
        eprintln!(
            "chaos: cannot save {}'s counters in {COUNTERS_FILE}",
            instance.name
        );
    }
}

/// Duplicates dropped per service over every process that ran: the readings saved before
/// each kill or stop, and one of each instance still running now. What a process counted
/// after its last reading is not in them: nothing much before a kill, which follows at once;
/// the deliveries it finishes while draining after a SIGTERM.
struct Duplicates {
    by_service: BTreeMap<String, u64>,
    readings: usize,
    missed: Vec<String>,
}

async fn duplicates(dir: &Path, services: &Services) -> Duplicates {
    let saved = std::fs::read_to_string(dir.join(COUNTERS_FILE)).unwrap_or_default();
    let mut readings: Vec<Reading> = Vec::new();
    let mut missed = Vec::new();
    for line in saved.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(r) => readings.push(r),
            Err(e) => missed.push(format!("unreadable line in {COUNTERS_FILE}: {e}")),
        }
    }
    for instance in &services.instances {
        readings.push(read_counters(&services.http, instance).await);
    }
    let mut by_service: BTreeMap<String, u64> = BTreeMap::new();
    for r in &readings {
        match (r.duplicates, &r.error) {
            (Some(n), _) => {
                *by_service
                    .entry(service_of(&r.instance).to_string())
                    .or_default() += n
            }
            (None, e) => missed.push(format!("{}: {}", r.instance, e.as_deref().unwrap_or("?"))),
        }
    }
    Duplicates {
        by_service,
        readings: readings.len(),
        missed,
    }
}

pub async fn print(
    input: &Inputs,
    snap: &Snapshot,
    converged_at: Option<i64>,
    order: &PgPool,
    pay: &PgPool,
    services: &Services,
) {
    let drive = &input.drive;
    let faults = &input.faults;
    let started = input.drive_ms("started_ms").unwrap_or(0);
    let load_stopped = input.drive_ms("load_ended_ms").unwrap_or(0);
    let load_end = input.drive_ms("ended_ms").unwrap_or_else(now_ms);
    let count = |status: OrderStatus| snap.orders.iter().filter(|o| o.3 == status).count();
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
        count(OrderStatus::Paid),
        count(OrderStatus::PaymentFailed)
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
    let dups = duplicates(&input.dir, services).await;
    let dup = |service: &str| dups.by_service.get(service).copied().unwrap_or(0);
    // A message about an already paid order is processed without a payment of its own.
    let ignored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inbox i WHERE i.payload IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.message_id = i.message_id)",
    )
    .fetch_one(pay)
    .await
    .unwrap_or(-1);
    println!(
        "#   duplicates dropped by the inbox: pay {}, order {} (the instances' counters, {} readings: before each kill or stop and at the end{}); second messages about a paid order ignored by pay: {ignored}",
        dup("pay"),
        dup("order"),
        dups.readings,
        if dups.missed.is_empty() {
            String::new()
        } else {
            format!("; missed: {}", dups.missed.join(", "))
        },
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
    fault_table(faults, order, pay).await;
}

/// One fault as the table shows it.
#[derive(Default)]
struct FaultFigures {
    /// Orders committed while it lasted.
    accepted: i64,
    /// The longest commit → settled of the orders it could have caught.
    longest_wait_ms: Option<i64>,
    /// When the last of them was settled (epoch ms).
    settled_ms: Option<i64>,
    /// Publishes beyond the first, over both outboxes.
    retried: i64,
}

/// Per fault: orders accepted during it, the longest time an order waited (commit →
/// settled) among those it could have caught (committed from 2 s before it began until it
/// ended), publishes retried (attempts beyond the first of the messages created from 2 s
/// before it until those orders were settled, both services), and the recovery: from its
/// end until those orders were all settled. From the databases' own timestamps.
async fn fault_table(faults: &[Fault], order: &PgPool, pay: &PgPool) {
    const CAUGHT_FROM_MS: i64 = 2000;
    let ts = |ms: i64| ms as f64 / 1000.0;
    println!("#   each fault (orders caught: committed from 2 s before it began until it ended):");
    println!(
        "#   | fault | lasted | orders accepted during it | longest wait, commit → settled | publishes retried | recovery after its end |"
    );
    println!("#   |---|---|---|---|---|---|");
    for f in faults {
        let from = f.start_ms - CAUGHT_FROM_MS;
        let mut fig = FaultFigures::default();
        if let Ok((accepted, longest, settled)) =
            sqlx::query_as::<_, (i64, Option<i64>, Option<i64>)>(
                "SELECT count(*) FILTER (WHERE created_at >= to_timestamp($1)),
                    (extract(epoch FROM max(updated_at - created_at)) * 1000)::int8,
                    (extract(epoch FROM max(updated_at)) * 1000)::int8
             FROM orders WHERE created_at BETWEEN to_timestamp($2) AND to_timestamp($3)",
            )
            .bind(ts(f.start_ms))
            .bind(ts(from))
            .bind(ts(f.end_ms))
            .fetch_one(order)
            .await
        {
            (fig.accepted, fig.longest_wait_ms, fig.settled_ms) = (accepted, longest, settled);
        }
        let until = fig.settled_ms.unwrap_or(f.end_ms).max(f.end_ms);
        for pool in [order, pay] {
            fig.retried += sqlx::query_scalar::<_, i64>(
                "SELECT coalesce(sum(greatest(attempts - 1, 0)), 0)::int8 FROM outbox
                 WHERE created_at BETWEEN to_timestamp($1) AND to_timestamp($2)",
            )
            .bind(ts(from))
            .bind(ts(until))
            .fetch_one(pool)
            .await
            .unwrap_or(-1);
        }
        println!(
            "#   | {} | {} | {} | {} | {} | {} |",
            f.kind,
            secs(f.end_ms - f.start_ms),
            fig.accepted,
            fig.longest_wait_ms.map_or("-".into(), secs),
            fig.retried,
            fig.settled_ms
                .map_or("-".into(), |t| secs((t - f.end_ms).max(0))),
        );
    }
}
