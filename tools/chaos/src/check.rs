//! The checks at the end of the load: wait for the system to converge, then check the
//! invariants across both databases and the services' `/admin` views.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use messages::{ORDER_CREATED, PaymentStatus};
use order::OrderStatus;
use serde_json::Value;
use sqlx::{PgPool, postgres::PgPoolOptions};
use uuid::Uuid;

use crate::{
    AnyResult, Report,
    args::Instance,
    figures, now_ms, some,
    stats::{AdminStats, Services},
};

/// What the run hands the checks: where it left its files, how to reach the databases
/// and the instances, the balances before the load, the fault schedule it meant to follow.
pub struct CheckArgs {
    pub dir: PathBuf,
    pub order_database_url: String,
    pub pay_database_url: String,
    pub admin_token: String,
    pub instances: Vec<Instance>,
    pub initial_balances: BTreeMap<String, i64>,
    pub deadline: Duration,
    pub min_each: usize,
    pub kinds: Vec<String>,
}

pub struct Fault {
    pub start_ms: i64,
    pub end_ms: i64,
    pub kind: String,
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

/// The orders from order's database; the message tables as the services report them.
async fn progress(order: &PgPool, services: &Services) -> AnyResult<Progress> {
    let (orders, orders_pending): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = $1) FROM orders")
            .bind(OrderStatus::PendingPayment)
            .fetch_one(order)
            .await?;
    let (order_stats, pay_stats) = (services.stats("order").await?, services.stats("pay").await?);
    Ok(Progress {
        orders,
        orders_pending,
        order_outbox_pending: order_stats.outbox.unsent(),
        order_inbox_failed: order_stats.inbox.failed,
        pay_outbox_pending: pay_stats.outbox.unsent(),
        pay_inbox_failed: pay_stats.inbox.failed,
    })
}

/// What the run and the driver left in the run directory, and the check's options.
pub struct Inputs {
    pub dir: PathBuf,
    pub deadline: Duration,
    initial: BTreeMap<String, i64>,
    min_each: usize,
    kinds: Vec<String>,
    pub faults: Vec<Fault>,
    accepted: Vec<AcceptedRow>,
    pub drive: Value,
    pub poison_ids: HashSet<Uuid>,
}

impl Inputs {
    fn read(a: &CheckArgs) -> AnyResult<Self> {
        let dir = a.dir.clone();
        let drive = std::fs::read_to_string(dir.join("drive.json"))
            .map_err(|e| format!("cannot read drive.json: {e}"))?;
        Ok(Self {
            deadline: a.deadline,
            initial: a.initial_balances.clone(),
            min_each: a.min_each,
            kinds: a.kinds.clone(),
            faults: read_faults(&dir.join("faults.txt"))?,
            accepted: read_accepted(&dir.join("accepted.csv"))?,
            drive: serde_json::from_str(&drive)?,
            poison_ids: std::fs::read_to_string(dir.join("poison.ids"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| Uuid::parse_str(l.trim()).ok())
                .collect(),
            dir,
        })
    }

    pub fn drive_ms(&self, field: &str) -> Option<i64> {
        self.drive[field].as_i64()
    }
}

/// Polls until the system has converged or the deadline passes: when it converged (epoch
/// ms), and the last state seen.
async fn wait_for_convergence(
    order: &PgPool,
    services: &Services,
    deadline: Duration,
) -> (Option<i64>, Option<Progress>) {
    let waited = Instant::now();
    let mut last = None;
    let mut last_printed = Instant::now();
    loop {
        match progress(order, services).await {
            Ok(p) if p.converged() => return (Some(now_ms()), Some(p)),
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
            return (None, last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// id (an order's, or the order a payment is for), user_id, amount_cents, status, failure_reason.
pub type Row<S> = (Uuid, String, i64, S, Option<String>);

/// Both databases, read once the system has converged.
pub struct Snapshot {
    pub orders: Vec<Row<OrderStatus>>,
    pub payments: Vec<Row<PaymentStatus>>,
    balances: Vec<(String, i64)>,
}

impl Snapshot {
    async fn read(order: &PgPool, pay: &PgPool) -> sqlx::Result<Self> {
        Ok(Self {
            orders: sqlx::query_as(
                "SELECT id, user_id, amount_cents, status, failure_reason FROM orders",
            )
            .fetch_all(order)
            .await?,
            payments: sqlx::query_as(
                "SELECT order_id, user_id, amount_cents, status, failure_reason FROM payments",
            )
            .fetch_all(pay)
            .await?,
            balances: sqlx::query_as(
                "SELECT user_id, balance_cents FROM accounts ORDER BY user_id",
            )
            .fetch_all(pay)
            .await?,
        })
    }
}

fn settled(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Paid | OrderStatus::PaymentFailed)
}

/// Every 2xx is an order, settled as its user's money says; so is every other order.
fn check_orders(r: &Report, input: &Inputs, snap: &Snapshot) {
    let orders: HashMap<Uuid, &Row<OrderStatus>> = snap.orders.iter().map(|o| (o.0, o)).collect();
    let missing: Vec<String> = input
        .accepted
        .iter()
        .filter(|a| {
            orders
                .get(&a.order_id)
                .is_none_or(|o| o.1 != a.user || o.2 != a.amount)
        })
        .map(|a| a.order_id.to_string())
        .collect();
    r.check(
        missing.is_empty(),
        &format!(
            "every order answered 2xx ({}) exists in order's database with its user and amount",
            input.accepted.len()
        ),
        || format!("missing or different: {}", some(&missing)),
    );
    let unsettled: Vec<String> = input
        .accepted
        .iter()
        .filter(|a| orders.get(&a.order_id).is_some_and(|o| !settled(o.3)))
        .map(|a| a.order_id.to_string())
        .collect();
    r.check(
        unsettled.is_empty(),
        "every order answered 2xx reached PAID or PAYMENT_FAILED",
        || format!("still pending: {}", some(&unsettled)),
    );
    let all_unsettled: Vec<String> = snap
        .orders
        .iter()
        .filter(|o| !settled(o.3))
        .map(|o| o.0.to_string())
        .collect();
    r.check(
        all_unsettled.is_empty(),
        &format!(
            "every order in order's database ({}, of which {} committed without a 2xx reaching the client) is settled",
            snap.orders.len(),
            unanswered(input, snap)
        ),
        || format!("pending: {}", some(&all_unsettled)),
    );
    let wrong: Vec<String> = snap
        .orders
        .iter()
        .filter(|(_, user, _, status, reason)| {
            let expected: (OrderStatus, Option<&str>) = match user.as_str() {
                "alice" | "bob" => (OrderStatus::Paid, None),
                "carol" => (OrderStatus::PaymentFailed, Some("insufficient_funds")),
                _ => (OrderStatus::PaymentFailed, Some("unknown_user")),
            };
            (*status, reason.as_deref()) != expected
        })
        .map(|(id, user, _, status, reason)| format!("{id} {user} {status} {reason:?}"))
        .collect();
    r.check(
        wrong.is_empty(),
        "each order has the expected outcome (alice, bob: PAID; carol: insufficient_funds; unknown user: unknown_user)",
        || some(&wrong),
    );
}

/// Orders in the database whose 2xx never reached the driver (committed, answer lost).
pub fn unanswered(input: &Inputs, snap: &Snapshot) -> usize {
    let accepted: HashSet<Uuid> = input.accepted.iter().map(|a| a.order_id).collect();
    snap.orders
        .iter()
        .filter(|o| !accepted.contains(&o.0))
        .count()
}

/// One payment per order: COMPLETED for a PAID one, FAILED for the others, none elsewhere.
fn check_payments(r: &Report, snap: &Snapshot) {
    let orders: HashMap<Uuid, &Row<OrderStatus>> = snap.orders.iter().map(|o| (o.0, o)).collect();
    let mut payments: HashMap<Uuid, Vec<&Row<PaymentStatus>>> = HashMap::new();
    for p in &snap.payments {
        payments.entry(p.0).or_default().push(p);
    }
    let (mut bad_paid, mut bad_failed, mut cancelled) = (Vec::new(), Vec::new(), Vec::new());
    for (id, user, amount, status, reason) in &snap.orders {
        let found = payments.get(id).map(Vec::as_slice).unwrap_or_default();
        let describe = || {
            let rows: Vec<String> = found
                .iter()
                .map(|p| format!("{} {} {} {:?}", p.1, p.2, p.3, p.4))
                .collect();
            format!("{id}: payments [{}]", rows.join(", "))
        };
        match (status, found) {
            (OrderStatus::Paid, [p])
                if p.3 == PaymentStatus::Completed && &p.1 == user && &p.2 == amount => {}
            (OrderStatus::Paid, _) => bad_paid.push(describe()),
            (OrderStatus::PaymentFailed, [p]) if p.3 == PaymentStatus::Failed && &p.4 == reason => {
            }
            (OrderStatus::PaymentFailed, _) => bad_failed.push(describe()),
            (OrderStatus::PendingPayment, _) => {}
            // The run cancels nothing: an order undone is one nobody asked to undo.
            (OrderStatus::CancelRequested | OrderStatus::Cancelled | OrderStatus::Refunded, _) => {
                cancelled.push(describe())
            }
        }
    }
    r.check(
        cancelled.is_empty(),
        "no order cancelled or refunded (the run cancels none)",
        || some(&cancelled),
    );
    r.check(
        bad_paid.is_empty(),
        "exactly one COMPLETED payment for each PAID order, same user and amount",
        || some(&bad_paid),
    );
    let completed_elsewhere: Vec<String> = snap
        .payments
        .iter()
        .filter(|p| {
            p.3 == PaymentStatus::Completed
                && orders.get(&p.0).is_none_or(|o| o.3 != OrderStatus::Paid)
        })
        .map(|p| p.0.to_string())
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
}

/// Money is neither created nor lost: balances + COMPLETED payments = the initial balances.
fn check_money(r: &Report, input: &Inputs, snap: &Snapshot) {
    let mut paid_by: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, user, amount, status, _) in &snap.payments {
        if *status == PaymentStatus::Completed {
            *paid_by.entry(user.as_str()).or_default() += amount;
        }
    }
    let initial_total: i64 = input.initial.values().sum();
    let balance_total: i64 = snap.balances.iter().map(|b| b.1).sum();
    let paid_total: i64 = paid_by.values().sum();
    r.check(
        balance_total + paid_total == initial_total,
        &format!(
            "sum of balances ({balance_total}) + sum of COMPLETED payments ({paid_total}) = initial total ({initial_total})"
        ),
        || format!("off by {}", balance_total + paid_total - initial_total),
    );
    let paid = |u: &str| paid_by.get(u).copied().unwrap_or(0);
    let initial = |u: &str| input.initial.get(u).copied().unwrap_or(0);
    let per_user: Vec<String> = snap
        .balances
        .iter()
        .filter(|(u, b)| b + paid(u) != initial(u))
        .map(|(u, b)| {
            format!(
                "{u}: balance {b} + paid {} != initial {}",
                paid(u),
                initial(u)
            )
        })
        .collect();
    r.check(
        per_user.is_empty() && snap.balances.len() == input.initial.len(),
        "for each account: balance + its COMPLETED payments = its initial balance",
        || some(&per_user),
    );
}

/// Outbox and inbox of both services: nothing left behind, nothing sent twice.
async fn check_message_tables(
    r: &Report,
    input: &Inputs,
    snap: &Snapshot,
    order: &PgPool,
    pay: &PgPool,
    services: &Services,
) -> AnyResult<()> {
    let mut stats: BTreeMap<&str, AdminStats> = BTreeMap::new();
    for name in ["order", "pay"] {
        stats.insert(name, services.stats(name).await?);
    }
    for (name, s) in &stats {
        r.check(
            s.outbox.unsent() == 0 && s.outbox.dead == 0,
            &format!("{name}'s outbox: no row left pending or dead"),
            || format!("{:?}", s.outbox),
        );
    }
    let describe = |dead: &[&crate::stats::DeadInbox]| {
        let rows: Vec<String> = dead
            .iter()
            .map(|d| format!("{} {}", d.message_id, d.last_error.as_deref().unwrap_or("")))
            .collect();
        some(&rows)
    };
    let order_inbox = &stats["order"].inbox;
    let order_dead = services.dead_inbox("order").await?;
    r.check(
        order_inbox.failed == 0 && order_inbox.dead == 0,
        "order's inbox: no row failed or dead",
        || {
            format!(
                "{order_inbox:?}; dead: {}",
                describe(&order_dead.iter().collect::<Vec<_>>())
            )
        },
    );
    let pay_inbox = &stats["pay"].inbox;
    let pay_dead = services.dead_inbox("pay").await?;
    let (poison, unexpected): (Vec<_>, Vec<_>) = pay_dead
        .iter()
        .partition(|d| input.poison_ids.contains(&d.message_id));
    r.check(
        pay_inbox.failed == 0
            && pay_inbox.dead == input.poison_ids.len() as i64
            && unexpected.is_empty()
            && poison.len() == input.poison_ids.len(),
        &format!(
            "pay's inbox: no row failed or dead except the {} poison messages injected on purpose (dead)",
            input.poison_ids.len()
        ),
        || {
            format!(
                "{pay_inbox:?}; {} of {} poison messages dead; unexpected dead: {}",
                poison.len(),
                input.poison_ids.len(),
                describe(&unexpected)
            )
        },
    );
    let (rows, orders): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT aggregate_id) FILTER (WHERE event_type = $1) FROM outbox",
    )
    .bind(ORDER_CREATED.name)
    .fetch_one(order)
    .await?;
    let n = snap.orders.len() as i64;
    r.check(
        rows == n && orders == n,
        "order's outbox holds one OrderCreated message per order",
        || format!("{rows} rows about {orders} orders; {n} orders"),
    );
    let (rows, orders): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT aggregate_id) FROM outbox")
            .fetch_one(pay)
            .await?;
    let n = snap.payments.len() as i64;
    r.check(
        rows == n && orders == n,
        "pay's outbox holds one answer per payment",
        || format!("{rows} rows about {orders} orders; {n} payments"),
    );
    Ok(())
}

/// The client side and the fault schedule.
fn check_load_and_faults(r: &Report, input: &Inputs) {
    let refused = input.drive["refused_4xx"].as_u64().unwrap_or(0);
    r.check(
        refused == 0,
        "no order refused with a 4xx (a retry with the same Idempotency-Key replays)",
        || format!("{refused}: {}", input.drive["refusals"]),
    );
    let load_stopped = input.drive_ms("load_ended_ms").unwrap_or(i64::MAX);
    let mut under_load: BTreeMap<&str, usize> = BTreeMap::new();
    for f in input.faults.iter().filter(|f| f.start_ms < load_stopped) {
        *under_load.entry(f.kind.as_str()).or_default() += 1;
    }
    let short: Vec<String> = input
        .kinds
        .iter()
        .map(|k| (k, under_load.get(k.as_str()).copied().unwrap_or(0)))
        .filter(|(_, n)| *n < input.min_each)
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    r.check(
        short.is_empty(),
        &format!(
            "every fault kind injected at least {} time(s) under load",
            input.min_each
        ),
        || some(&short),
    );
}

/// Waits for convergence, checks, prints the figures. An error is a check that could not
/// run (a database unreachable, a file missing).
pub async fn check(a: &CheckArgs, r: &Report) -> AnyResult<()> {
    let input = Inputs::read(a)?;
    let order = connect(&a.order_database_url).await?;
    let pay = connect(&a.pay_database_url).await?;
    let services = Services {
        http: crate::stats::client(Duration::from_secs(5), &a.admin_token)?,
        instances: a.instances.clone(),
    };

    let (converged_at, last) = wait_for_convergence(&order, &services, input.deadline).await;
    r.check(
        converged_at.is_some(),
        &format!(
            "the system converges within {} s after the load (no order pending payment, no outbox row pending, no inbox row failed)",
            input.deadline.as_secs()
        ),
        || format!("still: {last:?}"),
    );
    let snap = Snapshot::read(&order, &pay).await?;
    check_orders(r, &input, &snap);
    check_payments(r, &snap);
    check_money(r, &input, &snap);
    check_message_tables(r, &input, &snap, &order, &pay, &services).await?;
    check_load_and_faults(r, &input);
    figures::print(&input, &snap, converged_at, &order, &pay, &services).await;
    Ok(())
}
