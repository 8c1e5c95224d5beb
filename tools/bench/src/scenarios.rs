//! The system's scenarios, each on a fresh stack (fresh databases, fresh queues, the real
//! binaries): drain a backlog, a steady rate, producers flat out, and the two halves of the
//! message path alone (the relay, the inbox), and a takeover (an order instance killed
//! mid-window).
//!
//! One hop is an order committed → its payment committed in pay's database; the round trip
//! is the order committed → the order PAID in order's database (pay's reply handled). Both
//! are read from the databases: counts for rates, the rows' own timestamps for latencies, so
//! the generator's polling adds nothing to a latency.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use message_table::outbox::{
    OutboxConfig,
    relay::{Claim, Relay, Relays},
};

use crate::{
    generator::{self, Arrivals, Generated, Writer},
    stack::{Footprint, Stack, System},
};

/// Producers of every backlog and of the flat-out scenario (the 16).
pub const PRODUCERS: usize = 16;

/// The services' default claim size (`OUTBOX_BATCH_SIZE`).
const RELAY_BATCH: i64 = 200;
/// Relays side by side in the "alone" section's last run (`OUTBOX_RELAYS=2`).
const RELAYS: usize = 2;

/// How long a scenario may go without progress before it is reported as stalled.
const STALL: Duration = Duration::from_secs(60);

/// Whether a scenario stalled: its figures are then meaningless, and the run fails.
static STALLED: AtomicBool = AtomicBool::new(false);

pub fn stalled(label: &str, at: &str) {
    eprintln!("    [{label}] STALLED: no progress for {STALL:?} at {at}");
    STALLED.store(true, Ordering::Relaxed);
}

/// Whether any scenario of this run stalled (the system stopped handling orders).
pub fn any_stalled() -> bool {
    STALLED.load(Ordering::Relaxed)
}

/// When the stack got through `total` orders, in seconds from the start of the watch.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Reached {
    /// Every payment committed (one hop).
    pub hop_secs: Option<f64>,
    /// Every order settled (round trip).
    pub round_trip_secs: Option<f64>,
}

impl Reached {
    pub fn hop_rate(&self, total: usize) -> f64 {
        self.hop_secs.map_or(0.0, |s| total as f64 / s)
    }

    pub fn round_trip_rate(&self, total: usize) -> f64 {
        self.round_trip_secs.map_or(0.0, |s| total as f64 / s)
    }
}

/// Polls pay's payments and order's settled orders (every 100 ms: little load on the
/// database under test) until both reach `total`, printing the progress every second; gives
/// up after [`STALL`] without progress.
pub async fn watch(stack: &Stack, label: &str, total: usize, since: Instant) -> Reached {
    let total = total as i64;
    let mut reached = Reached::default();
    let (mut last, mut last_change, mut last_print) = (-1, Instant::now(), Instant::now());
    loop {
        let paid = stack.payments().await;
        let settled = total - stack.pending().await;
        let secs = since.elapsed().as_secs_f64();
        if paid >= total && reached.hop_secs.is_none() {
            reached.hop_secs = Some(secs);
        }
        if settled >= total {
            reached.round_trip_secs = Some(secs);
            return reached;
        }
        if paid + settled != last {
            (last, last_change) = (paid + settled, Instant::now());
        } else if last_change.elapsed() > STALL {
            stalled(label, &format!("{paid} paid, {settled} settled of {total}"));
            eprintln!("{}", stack.diagnose().await);
            return reached;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("    [{label}] {secs:5.1} s: {paid} of {total} paid, {settled} settled");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Drain {
    pub system: System,
    pub orders: usize,
    pub backlog: Generated,
    pub reached: Reached,
    pub hop_per_sec: f64,
    pub round_trip_per_sec: f64,
}

/// `orders` written straight into order's database with order stopped, then order (its
/// relay, its inbox) started: how fast the stack works through the backlog. The time runs
/// from order's start, so its time to ready is included.
pub async fn drain(system: System, orders: usize) -> Drain {
    let label = format!("drain {orders}, {}", system.name());
    let mut stack = Stack::with_pay(system).await;
    let writer = stack.writer(PRODUCERS).await;
    eprintln!("    [{label}] writing the backlog");
    let backlog = generator::backlog(&writer, PRODUCERS, orders).await;
    let since = Instant::now();
    stack.start_order().await;
    let reached = watch(&stack, &label, backlog.written, since).await;
    stack.finish().await;
    Drain {
        system,
        orders,
        hop_per_sec: reached.hop_rate(backlog.written),
        round_trip_per_sec: reached.round_trip_rate(backlog.written),
        backlog,
        reached,
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Steady {
    pub system: System,
    pub rate: f64,
    pub arrivals: Arrivals,
    pub load: Generated,
    /// From the end of the load: a system that keeps up is done within moments.
    pub reached: Reached,
    #[serde(skip)]
    pub hop_ms: Vec<f64>,
    #[serde(skip)]
    pub round_trip_ms: Vec<f64>,
}

impl Steady {
    /// Whether the system fell behind: work left 2 s (or a tenth of the load's length) after
    /// the last order was written, or a stall.
    pub fn saturated(&self) -> bool {
        let grace = (self.load.secs / 10.0).max(2.0);
        self.reached.hop_secs.is_none_or(|s| s > grace)
    }
}

/// Orders at `rate` for `duration` into order's database, on `arrivals`' schedule; every
/// order's latency.
pub async fn steady(system: System, rate: f64, duration: Duration, arrivals: Arrivals) -> Steady {
    let label = format!("steady {rate}/s, {}", system.name());
    let stack = Stack::running(system).await;
    let writer = stack.writer(PRODUCERS).await;
    eprintln!(
        "    [{label}] {:.0} s of load, {} arrivals",
        duration.as_secs_f64(),
        arrivals.label()
    );
    let load = generator::at_rate(&writer, rate, duration, arrivals).await;
    let reached = watch(&stack, &label, load.written, Instant::now()).await;
    let (hop_ms, round_trip_ms) = latencies(&stack).await;
    stack.finish().await;
    Steady {
        system,
        rate,
        arrivals,
        load,
        reached,
        hop_ms,
        round_trip_ms,
    }
}

/// Each order's one hop and round trip in ms, from the rows' timestamps (both databases are
/// on the same server, so on one clock). Each timestamp is its transaction's start, a little
/// before its commit, on both ends alike.
async fn latencies(stack: &Stack) -> (Vec<f64>, Vec<f64>) {
    if stack.system == System::RustStream {
        let (order, pay) = (&stack.order_db.pool, &stack.pay_db.pool);
        return (
            peer_ruststream::hop_ms(order, pay).await,
            peer_ruststream::round_trip_ms(order).await,
        );
    }
    let hop = test_kit::takeover::commit_to_payment_ms(&stack.order_db.pool, &stack.pay_db.pool)
        .await
        .into_iter()
        .map(|(_, ms)| ms)
        .collect();
    let round_trip: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM updated_at - created_at)::float8 * 1e3
         FROM orders WHERE status <> $1",
    )
    .bind(order::OrderStatus::PendingPayment)
    .fetch_all(&stack.order_db.pool)
    .await
    .expect("read the orders");
    (hop, round_trip)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Max {
    pub system: System,
    pub load: Generated,
    /// Payments committed while the producers ran, per second of load.
    pub handled_per_sec: f64,
    pub reached: Reached,
    /// Orders written / time from the first order to the last one settled.
    pub end_to_end_per_sec: f64,
    pub footprints: Vec<Footprint>,
}

/// How the flat-out producers write.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    Database,
    /// `POST /order/buy` through the gateway: every service under load, for the footprint.
    Gateway,
}

/// [`PRODUCERS`] flat out for `duration`, then the wait until every order is settled.
pub async fn max(system: System, entry: Entry, duration: Duration) -> Max {
    let mut stack = Stack::running(system).await;
    let writer = match entry {
        Entry::Database => stack.writer(PRODUCERS).await,
        Entry::Gateway => {
            stack.start_gateway().await;
            Writer::http(&format!("{}/order", stack.gateway_url()))
        }
    };
    let label = format!("max, {}, {}", writer.label(), system.name());
    eprintln!(
        "    [{label}] {PRODUCERS} producers for {:.0} s",
        duration.as_secs_f64()
    );
    let since = Instant::now();
    let load = generator::flat_out(&writer, PRODUCERS, duration).await;
    let handled = stack.payments().await;
    let reached = watch(&stack, &label, load.written, since).await;
    let footprints = stack.footprints();
    stack.finish().await;
    Max {
        system,
        handled_per_sec: handled as f64 / load.secs,
        end_to_end_per_sec: reached.round_trip_rate(load.written),
        load,
        reached,
        footprints,
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Halves {
    pub messages: usize,
    /// The relay awaiting each confirm before the next publish.
    pub relay_one_at_a_time_per_sec: f64,
    /// One relay's rounds: a claimed batch published, then its confirms awaited together.
    pub relay_per_sec: f64,
    /// Two relays side by side as a service runs them ([`Relays`], `OUTBOX_RELAYS=2`).
    pub relays_per_sec: f64,
    /// Pay's inbox alone, on its queue filled beforehand (both relay runs' messages).
    pub inbox_per_sec: f64,
}

/// The message path's halves alone, on one stack with order stopped: `messages` orders'
/// messages relayed one confirm at a time, as many pipelined (the relay of the services),
/// both into pay's queue while pay is stopped; then pay started on the full queue.
pub async fn halves(messages: usize) -> Halves {
    let label = format!("relay and inbox, {messages} messages");
    let mut stack = Stack::with_pay(System::This).await;
    stack.stop_pay().await;
    let writer = Writer::direct(&stack.order_db.url, PRODUCERS).await;
    eprintln!("    [{label}] writing the outbox");
    generator::backlog(&writer, PRODUCERS, 2 * messages).await;
    let cfg = OutboxConfig {
        // Claims of the services' default size (`OUTBOX_BATCH_SIZE`), not the tests' 100.
        batch_size: RELAY_BATCH,
        ..test_kit::fast_outbox()
    };
    // The relay's own pool, as the services build it (asynchronous commit).
    let mut relay = Relay::new(
        message_table::db::relay_pool(&stack.order_db.pool, RELAYS),
        stack.amqp.clone(),
        cfg,
        "bench-relay",
    );
    let relay_one_at_a_time_per_sec = relay_rate(&mut relay, false, messages).await;
    let relay_per_sec = relay_rate(&mut relay, true, messages).await;
    let relays_per_sec = relays_rate(relay, &stack.order_db.pool, messages).await;
    eprintln!(
        "    [{label}] relay: {relay_one_at_a_time_per_sec:.0} msg/s one confirm at a time, {relay_per_sec:.0} msg/s pipelined, {relays_per_sec:.0} msg/s with {RELAYS} relays side by side; starting pay"
    );
    let since = Instant::now();
    stack.restart_pay().await;
    let total = 3 * messages as i64;
    let (mut last, mut last_change, mut last_print) = (0, Instant::now(), Instant::now());
    loop {
        let paid = stack.payments().await;
        if paid >= total {
            break;
        }
        if paid != last {
            (last, last_change) = (paid, Instant::now());
        } else if last_change.elapsed() > STALL {
            stalled(&label, &format!("{paid} of {total} paid"));
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!("    [{label}] inbox: {paid} of {total} paid");
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inbox_per_sec = stack.payments().await as f64 / since.elapsed().as_secs_f64();
    stack.finish().await;
    Halves {
        messages,
        relay_one_at_a_time_per_sec,
        relay_per_sec,
        relays_per_sec,
        inbox_per_sec,
    }
}

/// Relays `messages` outbox rows as a service with `OUTBOX_RELAYS=2` does ([`Relays::run`]).
/// The relays are started, connected and listening first, on an outbox with nothing due;
/// then the messages are committed at once (one `enqueue_all`, one NOTIFY), and the time
/// runs from that commit until all are sent.
async fn relays_rate(relay: Relay, pool: &sqlx::PgPool, messages: usize) -> f64 {
    let sent = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE status = 'sent'")
            .fetch_one(pool)
            .await
            .expect("count sent")
    };
    let relays = Relays::new(relay, RELAYS);
    let links = relays.broker_links();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relays.run(shutdown.clone()));
    let connecting = Instant::now();
    // Connected, and their LISTEN session listening (else the commit below is found by
    // the fallback poll, not the NOTIFY).
    let listening = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE datname = current_database() AND query ILIKE 'LISTEN%')",
        )
        .fetch_one(pool)
        .await
        .expect("look for the LISTEN session")
    };
    while !(links.iter().all(|l| l.is_connected()) && listening().await)
        && connecting.elapsed() < STALL
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let batch: Vec<_> = (0..messages)
        .map(|i| generator::order_created(&generator::account(i), 1 + (i % 100) as i64).1)
        .collect();
    let from = sent().await;
    let mut tx = pool.begin().await.expect("begin");
    message_table::outbox::enqueue_all(&mut tx, &batch, Duration::from_secs(24 * 3600))
        .await
        .expect("enqueue the relays' messages");
    tx.commit().await.expect("commit");
    let started = Instant::now();
    let goal = from + messages as i64;
    let mut last_change = (from, Instant::now());
    let rate = loop {
        let now = sent().await;
        if now >= goal {
            break (now - from) as f64 / started.elapsed().as_secs_f64();
        }
        if now != last_change.0 {
            last_change = (now, Instant::now());
        } else if last_change.1.elapsed() > STALL {
            stalled("relays", &format!("{} of {messages} sent", now - from));
            break 0.0;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    shutdown.cancel();
    let _ = running.await;
    rate
}

/// Relays `messages` outbox rows with the relay's own claim, publish and settle; with
/// `pipelined` false each row of a claim is published and confirmed before the next.
async fn relay_rate(relay: &mut Relay, pipelined: bool, messages: usize) -> f64 {
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let claim = relay.claim().await.expect("claim");
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
        sent += relay.settle(&claim, &outcomes).await.expect("settle").sent;
    }
    sent as f64 / started.elapsed().as_secs_f64()
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Takeover {
    pub load: Generated,
    /// Rows each killed relay held when it died.
    pub held: Vec<i64>,
    /// Orders whose message was published again after a kill.
    pub taken_over: usize,
    /// Every order's commit-to-payment delay (ms).
    #[serde(skip)]
    pub all_ms: Vec<f64>,
    /// The taken-over orders' delays (ms).
    pub taken_over_ms: Vec<f64>,
    /// Payments in pay's database, and copies pay's inbox dropped as duplicates.
    pub payments: i64,
    pub duplicates: i64,
}

/// Two order instances relay one outbox while orders flow at `rate` into its database;
/// `kills` times, one instance (in turn) is SIGKILLed while its relay holds a window
/// ([`test_kit::takeover::kill_mid_window`]) and started again. Every order's
/// commit-to-payment delay, and the taken-over ones apart.
pub async fn takeover(rate: f64, kills: usize) -> Takeover {
    let label = "takeover";
    let mut stack = Stack::running(System::This).await;
    let mut instances = [
        stack.order.take().expect("order is running"),
        stack.another_order().await,
    ];
    let writer = Writer::direct(&stack.order_db.url, PRODUCERS).await;
    // Load for the kills (about 2 s apart) and a little after the last.
    let secs = 2.0 * kills as f64 + 2.0;
    eprintln!("    [{label}] {rate:.0} orders/s for {secs:.0} s, {kills} kill(s)");
    let load = tokio::spawn(async move {
        let arrivals = generator::Arrivals::from_env();
        generator::at_rate(&writer, rate, Duration::from_secs_f64(secs), arrivals).await
    });
    let mut held = Vec::new();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let victim = &mut instances[k % 2];
        let rows = test_kit::takeover::kill_mid_window(victim, &stack.order_db.pool).await;
        eprintln!("    [{label}] kill {}: the relay held {rows} row(s)", k + 1);
        held.push(rows);
        victim.restart().await;
    }
    let load = load.await.expect("the generator");
    watch(&stack, label, load.written, Instant::now()).await;
    let delays =
        test_kit::takeover::commit_to_payment_ms(&stack.order_db.pool, &stack.pay_db.pool).await;
    let taken = test_kit::takeover::taken_over(&stack.order_db.pool).await;
    let taken_over_ms = delays
        .iter()
        .filter(|(id, _)| taken.contains(id))
        .map(|(_, ms)| *ms)
        .collect();
    let payments = stack.payments().await;
    let duplicates: i64 = sqlx::query_scalar("SELECT coalesce(sum(duplicates), 0) FROM inbox")
        .fetch_one(&stack.pay_db.pool)
        .await
        .unwrap_or(-1);
    let [first, _second] = instances;
    stack.order = Some(first);
    stack.finish().await;
    Takeover {
        load,
        held,
        taken_over: taken.len(),
        all_ms: delays.into_iter().map(|(_, ms)| ms).collect(),
        taken_over_ms,
        payments,
        duplicates,
    }
}
