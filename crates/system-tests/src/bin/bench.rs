//! `scripts/bench.sh`: figures measured side by side in one run, on this machine's real
//! PostgreSQL and RabbitMQ. Nothing here is asserted; it reports.
//!
//! 1. Relay throughput: the same outbox drained (a) by claiming a batch and awaiting each
//!    message's confirm before publishing the next (what many outbox libraries do), and
//!    (b) by this project's relay, which publishes the whole batch and then awaits all
//!    confirms together. Same claim size, same database work; alternating, several rounds.
//! 2. End to end, latency: orders posted one at a time; for each, the time from its commit
//!    to PAID, read from the database's own timestamps (created_at → updated_at), so
//!    client-side polling adds nothing.
//! 3. End to end, throughput: orders posted at a fixed concurrency until all are settled.
//! 4. The gateway's cost: the same `GET /orders/{id}` at a fixed concurrency, straight to the
//!    order service and through the gateway, alternating which goes first, several rounds.
//!
//! `BENCH_SECTIONS` (default `relay,latency,throughput,gateway`) picks the sections to run.

use std::time::{Duration, Instant};

use futures::StreamExt;
use message_table::outbox::{
    self, NewMessage,
    relay::{Claim, Relay},
};
use serde_json::json;
use test_kit::{TestDb, TestQueue};
use uuid::Uuid;

/// Each service's database pool: the services' default.
const POOL: u32 = 10;

fn arg(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Drains `messages` outbox rows with batches of `batch`; `pipelined` publishes a batch
/// and then awaits all its confirms, otherwise each confirm is awaited before the next publish.
async fn relay_round(pipelined: bool, batch: i64, messages: usize) -> f64 {
    let db = TestDb::new(&order::MIGRATOR).await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &["order.created"]).await;
    let mut tx = db.pool.begin().await.unwrap();
    for i in 0..messages {
        let msg = NewMessage::new(
            Uuid::now_v7(),
            "OrderCreated",
            "order.created",
            json!({ "n": i, "pad": "x".repeat(200) }),
        );
        outbox::enqueue(&mut tx, &msg, Duration::from_secs(3600))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let mut cfg = test_kit::fast_outbox();
    cfg.batch_size = batch;
    let mut relay = Relay::new(db.pool.clone(), amqp, cfg, "bench-relay");
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let claim = relay.claim().await.unwrap();
        let outcomes = if pipelined {
            relay.publish(&claim).await
        } else {
            let mut outcomes = Vec::new();
            for row in &claim.rows {
                let one = Claim {
                    token: claim.token,
                    rows: vec![row.clone()],
                };
                outcomes.extend(relay.publish(&one).await);
            }
            outcomes
        };
        sent += relay.settle(&claim, &outcomes).await.unwrap().sent;
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    drop(queue.take_all().await);
    rate
}

fn summary(label: &str, ms: &mut [f64]) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{label}: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(ms, 50.0),
        percentile(ms, 90.0),
        percentile(ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

async fn post(http: &reqwest::Client, url: &str, i: usize) -> f64 {
    let user = if i % 10 == 9 { "carol" } else { "alice" };
    let t = Instant::now();
    let res = http
        .post(url)
        .json(&json!({ "user_id": user, "item": "bench", "amount_cents": 1 + i as i64 % 100 }))
        .send()
        .await
        .expect("POST /buy");
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    t.elapsed().as_secs_f64() * 1e3
}

/// `requests` GETs of `url` at `concurrency`: requests per second and each latency in ms.
async fn load(
    http: &reqwest::Client,
    url: &str,
    requests: usize,
    concurrency: usize,
) -> (f64, Vec<f64>) {
    let started = Instant::now();
    let ms: Vec<f64> = futures::stream::iter(0..requests)
        .map(|_| async {
            let t = Instant::now();
            let res = http.get(url).send().await.expect("GET");
            assert_eq!(res.status(), reqwest::StatusCode::OK);
            res.bytes().await.expect("body");
            t.elapsed().as_secs_f64() * 1e3
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    (requests as f64 / started.elapsed().as_secs_f64(), ms)
}

/// Section 4: direct vs through the gateway, same system, same order, same client.
async fn gateway_overhead(rounds: usize, requests: usize, concurrency: usize) {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start_with_pools(&amqp, &amqp, POOL).await;
    let order_id = sys.buy("alice", 1).await;
    let direct = format!("{}/orders/{order_id}", sys.order);
    let through = format!("{}/order/orders/{order_id}", sys.gateway);
    let http = reqwest::Client::new();
    // Warm-up: connection pools (client → order, client → gateway → order) and caches.
    load(&http, &direct, requests / 10, concurrency).await;
    load(&http, &through, requests / 10, concurrency).await;

    let (mut direct_rates, mut gateway_rates) = (Vec::new(), Vec::new());
    let (mut direct_ms, mut gateway_ms) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        // Alternate which goes first, so neither always gets the warmer machine.
        let gateway_first = r % 2 == 0;
        let (mut direct_run, mut gateway_run) = (None, None);
        for through_gateway in [gateway_first, !gateway_first] {
            if through_gateway {
                gateway_run = Some(load(&http, &through, requests, concurrency).await);
            } else {
                direct_run = Some(load(&http, &direct, requests, concurrency).await);
            }
        }
        let ((d_rate, mut d_ms), (g_rate, mut g_ms)) = (direct_run.unwrap(), gateway_run.unwrap());
        d_ms.sort_by(f64::total_cmp);
        g_ms.sort_by(f64::total_cmp);
        println!(
            "round {r}: direct {d_rate:>7.0} req/s (p50 {:.2} ms, p99 {:.2} ms)   through the gateway {g_rate:>7.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
            percentile(&d_ms, 50.0),
            percentile(&d_ms, 99.0),
            percentile(&g_ms, 50.0),
            percentile(&g_ms, 99.0),
        );
        direct_rates.push(d_rate);
        gateway_rates.push(g_rate);
        direct_ms.extend(d_ms);
        gateway_ms.extend(g_ms);
    }
    direct_rates.sort_by(f64::total_cmp);
    gateway_rates.sort_by(f64::total_cmp);
    let (d, g) = (
        percentile(&direct_rates, 50.0),
        percentile(&gateway_rates, 50.0),
    );
    println!(
        "median: direct {d:.0} req/s, through the gateway {g:.0} req/s: the gateway keeps {:.0}% of the throughput ({:.2}x)",
        100.0 * g / d,
        g / d
    );
    summary("direct, all rounds", &mut direct_ms);
    summary("through the gateway, all rounds", &mut gateway_ms);
}

async fn settle_times(sys: &system_tests::System, since: Instant) -> (f64, Vec<f64>) {
    let settled = test_kit::eventually("every order settled", Duration::from_secs(300), || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING_PAYMENT'")
                .fetch_one(&sys.order_db.pool)
                .await
                .ok()?;
        (pending == 0).then(|| since.elapsed().as_secs_f64())
    })
    .await;
    let to_settled: Vec<f64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM updated_at - created_at) * 1000)::float8 FROM orders",
    )
    .fetch_all(&sys.order_db.pool)
    .await
    .unwrap();
    (settled, to_settled)
}

async fn relay_section(rounds: usize, messages: usize, batch: i64) {
    println!(
        "== 1. relay throughput: {messages} messages per round, claims of {batch}, {rounds} rounds, alternating"
    );
    let (mut one, mut piped) = (Vec::new(), Vec::new());
    for r in 1..=rounds {
        let a = relay_round(false, batch, messages).await;
        let b = relay_round(true, batch, messages).await;
        println!("round {r}: one confirm at a time {a:>8.0} msg/s   pipelined {b:>8.0} msg/s");
        one.push(a);
        piped.push(b);
    }
    one.sort_by(f64::total_cmp);
    piped.sort_by(f64::total_cmp);
    let (m1, mp) = (percentile(&one, 50.0), percentile(&piped, 50.0));
    println!(
        "median: one confirm at a time {m1:.0} msg/s, pipelined {mp:.0} msg/s: {:.1}x",
        mp / m1
    );
}

async fn latency_section(sequential: usize) {
    let http = reqwest::Client::new();
    println!(
        "\n== 2. end-to-end latency: {sequential} orders, one at a time (9 of 10 alice, 1 of 10 carol)"
    );
    {
        let amqp = test_kit::test_amqp();
        let sys = system_tests::start_with_pools(&amqp, &amqp, POOL).await;
        let url = format!("{}/buy", sys.order);
        let started = Instant::now();
        let mut post_ms = Vec::new();
        for i in 0..sequential {
            post_ms.push(post(&http, &url, i).await);
            // Wait for this order to settle before the next: the system is never backlogged.
            settle_times(&sys, started).await;
        }
        let (_, mut to_settled) = settle_times(&sys, started).await;
        summary("POST /buy", &mut post_ms);
        summary("commit → PAID/PAYMENT_FAILED", &mut to_settled);
    }
}

async fn throughput_section(orders: usize, concurrency: usize) {
    let http = reqwest::Client::new();
    println!("\n== 3. end-to-end throughput: {orders} orders, {concurrency} concurrent POST /buy");
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start_with_pools(&amqp, &amqp, POOL).await;
    let url = format!("{}/buy", sys.order);
    let started = Instant::now();
    let mut post_ms: Vec<f64> = futures::stream::iter(0..orders)
        .map(|i| {
            let (http, url) = (&http, &url);
            async move { post(http, url, i).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let post_secs = started.elapsed().as_secs_f64();
    let (settled, mut to_settled) = settle_times(&sys, started).await;
    let (paid, failed): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'PAID'), count(*) FILTER (WHERE status = 'PAYMENT_FAILED') FROM orders",
    )
    .fetch_one(&sys.order_db.pool)
    .await
    .unwrap();
    let payments: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE status = 'COMPLETED'")
            .fetch_one(&sys.pay_db.pool)
            .await
            .unwrap();
    println!(
        "accepted: {:.0} orders/s over {post_secs:.1} s",
        orders as f64 / post_secs
    );
    summary("POST /buy under load", &mut post_ms);
    println!(
        "settled: all {orders} within {settled:.1} s of the first request ({:.0} orders/s end to end): {paid} PAID, {failed} PAYMENT_FAILED, {payments} completed payments",
        orders as f64 / settled
    );
    summary("commit → settled, backlog included", &mut to_settled);
    println!(
        "pay inbox: {} processed, {} duplicates dropped",
        sys.pay_counters.snapshot().processed,
        sys.pay_counters.snapshot().duplicates
    );
}

#[tokio::main]
async fn main() {
    let rounds = arg("BENCH_ROUNDS", 3);
    let messages = arg("BENCH_MESSAGES", 3000);
    let sequential = arg("BENCH_SEQUENTIAL_ORDERS", 200);
    let orders = arg("BENCH_ORDERS", 2000);
    let concurrency = arg("BENCH_CONCURRENCY", 16);
    let gateway_requests = arg("BENCH_GATEWAY_REQUESTS", 5000);
    let sections = std::env::var("BENCH_SECTIONS")
        .unwrap_or_else(|_| "relay,latency,throughput,gateway".into());
    let run = |name: &str| sections.split(',').any(|s| s.trim() == name);
    let batch = 200;

    if run("relay") {
        relay_section(rounds, messages, batch).await;
    }
    if run("latency") {
        latency_section(sequential).await;
    }
    if run("throughput") {
        throughput_section(orders, concurrency).await;
    }
    if run("gateway") {
        println!(
            "\n== 4. gateway overhead: GET /orders/{{id}}, {gateway_requests} requests at {concurrency} concurrent, direct vs through the gateway, {rounds} rounds, alternating"
        );
        gateway_overhead(rounds, gateway_requests, concurrency).await;
    }
}
