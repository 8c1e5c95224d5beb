//! The `events` section: an order's whole life through both outboxes and both inboxes, for
//! many orders at once. Each order is bought and then cancelled through order's API, so it
//! carries the four messages this system has for one order (docs/benchmarks.md, "What each
//! figure is"): `OrderCreated` and `OrderCancelled` (order → pay), `PaymentCompleted` and
//! `PaymentRefunded` (pay → order). An event is one of those messages: its outbox row
//! committed on one side, its inbox row and effect committed on the other.
//!
//! RustStream, the peer, has no cancel flow, so this section runs on this system only.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    Plan, Run,
    generator::account,
    per_sec,
    report::Row,
    scenarios::PRODUCERS,
    stack::{Stack, System},
    stats,
};

/// Messages one order carries from its purchase to its refund.
pub const EVENTS_PER_ORDER: usize = 4;

/// The messages of one order, in the order they are sent.
const LIFE: [&str; EVENTS_PER_ORDER] = [
    "OrderCreated",
    "PaymentCompleted",
    "OrderCancelled",
    "PaymentRefunded",
];

/// How long the orders may go without one more of them settled before the run gives up.
const STALL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, serde::Serialize)]
pub struct Events {
    pub orders: usize,
    /// Requests (`POST /buy` or `POST /orders/{id}/cancel`) not answered with success.
    pub failed: usize,
    /// Messages whose receiving inbox row was found (`EVENTS_PER_ORDER` per order when all
    /// went through).
    pub events: usize,
    /// From the first request to the last order `REFUNDED`.
    pub secs: f64,
    pub per_sec: f64,
    /// By message type: (events, p50 ms, p99 ms).
    pub by_type: Vec<(String, usize, f64, f64)>,
    #[serde(skip)]
    pub event_ms: Vec<f64>,
}

/// `orders` bought then cancelled by `PRODUCERS` clients at once, each cancel sent as soon
/// as its purchase is answered (so it may overtake the payment: both orders of events are
/// exercised); then every message's latency from the rows.
pub async fn measure(orders: usize) -> Events {
    let stack = Stack::running(System::This).await;
    let client = reqwest::Client::new();
    let base = stack.order_url().to_string();
    let (next, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let since = Instant::now();
    let clients: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let (client, base, next, failed) =
                (client.clone(), base.clone(), next.clone(), failed.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= orders {
                        break;
                    }
                    if !buy_and_cancel(&client, &base, i).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.await.expect("a client task");
    }
    let failed = failed.load(Ordering::Relaxed);
    let secs = settle(&stack, orders - failed, since).await;
    let mut ms: HashMap<String, Vec<f64>> = HashMap::new();
    for (from, to) in [
        (&stack.order_db.pool, &stack.pay_db.pool),
        (&stack.pay_db.pool, &stack.order_db.pool),
    ] {
        for (event_type, latency) in latencies(from, to).await {
            ms.entry(event_type).or_default().push(latency);
        }
    }
    stack.finish().await;
    let mut by_type: Vec<(String, usize, f64, f64)> = ms
        .iter()
        .map(|(t, v)| {
            let (p50, p99) = (stats::percentile(v, 50.0), stats::percentile(v, 99.0));
            (t.clone(), v.len(), p50, p99)
        })
        .collect();
    // In an order's life: created, paid, cancelled, refunded.
    let life = |t: &str| LIFE.iter().position(|l| *l == t).unwrap_or(LIFE.len());
    by_type.sort_by_key(|(t, ..)| life(t));
    let event_ms: Vec<f64> = ms.into_values().flatten().collect();
    Events {
        orders,
        failed,
        events: event_ms.len(),
        secs,
        per_sec: secs_rate(event_ms.len(), secs),
        by_type,
        event_ms,
    }
}

fn secs_rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// `POST /buy`, then `POST /orders/{id}/cancel`; whether both were taken.
async fn buy_and_cancel(client: &reqwest::Client, base: &str, i: usize) -> bool {
    let body =
        json!({ "user_id": account(i), "item": "bench events", "amount_cents": 1 + (i % 100) });
    let Ok(bought) = client.post(format!("{base}/buy")).json(&body).send().await else {
        return false;
    };
    if bought.status() != reqwest::StatusCode::CREATED {
        return false;
    }
    let Ok(order) = bought.json::<serde_json::Value>().await else {
        return false;
    };
    let Some(id) = order["order_id"].as_str() else {
        return false;
    };
    client
        .post(format!("{base}/orders/{id}/cancel"))
        .send()
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::ACCEPTED)
}

/// Waits until `total` orders are `REFUNDED` (every event handled): the seconds since
/// `since`; 0 after [`STALL`] without progress (reported as stalled, the run then fails).
async fn settle(stack: &Stack, total: usize, since: Instant) -> f64 {
    let (mut last, mut last_change, mut last_print) = (-1, Instant::now(), Instant::now());
    loop {
        let refunded: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = $1")
            .bind(order::OrderStatus::Refunded)
            .fetch_one(&stack.order_db.pool)
            .await
            .unwrap_or(0);
        if refunded >= total as i64 {
            return since.elapsed().as_secs_f64();
        }
        if refunded != last {
            (last, last_change) = (refunded, Instant::now());
        } else if last_change.elapsed() > STALL {
            crate::scenarios::stalled("events", &format!("{refunded} of {total} refunded"));
            eprintln!("{}", stack.diagnose().await);
            return 0.0;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            let secs = since.elapsed().as_secs_f64();
            eprintln!("    [events] {secs:5.1} s: {refunded} of {total} orders refunded");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each message sent from `from`'s outbox and handled by `to`'s inbox: its type and ms from
/// the outbox row's transaction to the inbox row's recording (in the transaction that applies
/// the message's effect). Both databases are on one server, so on one clock.
async fn latencies(from: &PgPool, to: &PgPool) -> Vec<(String, f64)> {
    let sent: Vec<(Uuid, String, f64)> =
        sqlx::query_as("SELECT id, event_type, extract(epoch FROM created_at)::float8 FROM outbox")
            .fetch_all(from)
            .await
            .expect("read the outbox");
    let handled: HashMap<Uuid, f64> = sqlx::query_as::<_, (Uuid, f64)>(
        "SELECT message_id, extract(epoch FROM processed_at)::float8 FROM inbox
         WHERE status = 'processed'",
    )
    .fetch_all(to)
    .await
    .expect("read the inbox")
    .into_iter()
    .collect();
    sent.into_iter()
        .filter_map(|(id, t, at)| handled.get(&id).map(|done| (t, (done - at) * 1e3)))
        .collect()
}

/// The section: its rows in the summary and its raw figures.
pub async fn section(plan: &Plan, run: &mut Run) {
    let orders = plan.events_orders;
    crate::section(&format!(
        "events: {orders} orders bought and cancelled through order's API by {PRODUCERS} clients; {EVENTS_PER_ORDER} messages each (OrderCreated, PaymentCompleted, OrderCancelled, PaymentRefunded), this system only (RustStream has no cancel flow)"
    ));
    let e = measure(orders).await;
    let p = |p| stats::percentile(&e.event_ms, p);
    run.rows.push(
        Row::new(
            "events",
            format!(
                "{orders} orders × {EVENTS_PER_ORDER} messages: handled ({} events in {:.1} s)",
                e.events, e.secs
            ),
            per_sec(e.per_sec),
        )
        .ratio(format!(
            "{} request(s) failed; RustStream has no cancel flow",
            e.failed
        )),
    );
    run.rows.push(Row::new(
        "events",
        "every event: outbox row committed → inbox row and effect, p50 / p99".to_string(),
        format!("{:.0} / {:.0} ms", p(50.0), p(99.0)),
    ));
    for (t, n, p50, p99) in &e.by_type {
        run.rows.push(Row::new(
            "events",
            format!("{t} ({n}), p50 / p99"),
            format!("{p50:.0} / {p99:.0} ms"),
        ));
    }
    run.raw("events", &e);
}
