//! The reconciler (补单): the last line of defence, when something outside the mechanism
//! went wrong.
//!
//! # Why
//! The outbox and the inbox deliver every message at least once and process it once, as
//! long as nobody works against them. But a queue can be deleted or purged by hand, an
//! inbox row requeued or deleted wrongly, a dead message left unlooked-at: then an order
//! stays `PENDING_PAYMENT` for ever, and nothing in the mechanism notices. Every
//! `RECONCILER_INTERVAL_SECS`, this worker looks at the orders still `PENDING_PAYMENT`
//! `RECONCILER_PENDING_AFTER_SECS` after their creation, asks pay what it knows about them
//! (one `POST /payments/lookup` per batch of `RECONCILER_BATCH_SIZE`), and repairs what is
//! safe to repair:
//!
//! - **pay never saw the order**: its `OrderCreated` is published again with the SAME
//!   message id ([`outbox::requeue_for_republish`]). Always safe: if a copy does reach pay
//!   twice, pay's inbox drops it, and `payments.order_id` is unique. Not while the message
//!   is still on its way (pending, in flight, or sent less than the threshold ago).
//! - **pay settled it but the answer never arrived**: the order is settled from pay's
//!   answer through [`payment_results::settle`], the very code the answer message runs,
//!   state guard included. If the message turns up later, it finds the order settled.
//!   An order the client cancelled meanwhile is never settled as paid: the state machine
//!   keeps it cancelled, and pay's compensation answers for any charge.
//!
//! What it cannot repair (the outbox row is gone, pay's payment is not this order's user
//! or amount, the order changed the other way meanwhile) it reports and leaves alone.
//!
//! One instance at a time: a pass runs under a PostgreSQL advisory lock
//! ([`message_table::advisory_lock`]); the others skip their turn. The last report and the
//! totals since start are served at `GET /admin/reconciliation`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use axum::{Router, extract::State, routing::get};
use chrono::{DateTime, Utc};
use common::http::Json;
use message_table::{advisory_lock::AdvisoryLock, outbox};
use messages::LookupStatus;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{AssertSqlSafe, FromRow, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    payment_results::{self, PaymentOutcome},
    status::{OrderStatus, PENDING},
    transition::{Applied, TransitionError},
};

/// The advisory lock key of a reconciliation pass (per database, like retention's).
pub const LOCK_KEY: i64 = 0x6c6d_745f_7265_636f; // "lmt_reco"

/// Most orders per lookup: pay's limit (`pay::accounts::MAX_LOOKUP`).
pub const MAX_BATCH_SIZE: i64 = 100;

/// How long one lookup may take before the pass gives up.
const PAY_TIMEOUT: Duration = Duration::from_secs(10);

/// Unrepaired orders listed in a report (the count is always exact).
const MAX_UNFIXED_LISTED: usize = 100;

#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    /// pay's base URL (`ORDER_PAY_URL`).
    pub pay_url: String,
    pub interval: Duration,
    /// How old a `PENDING_PAYMENT` order must be to be looked at.
    pub pending_after: Duration,
    pub batch_size: i64,
}

impl ReconcilerConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.interval.is_zero(),
            "RECONCILER_INTERVAL_SECS must be > 0"
        );
        anyhow::ensure!(
            (1..=MAX_BATCH_SIZE).contains(&self.batch_size),
            "RECONCILER_BATCH_SIZE must be 1 to {MAX_BATCH_SIZE} (pay's lookup limit)"
        );
        anyhow::ensure!(
            self.pay_url.starts_with("http://") || self.pay_url.starts_with("https://"),
            "ORDER_PAY_URL must be an http:// URL, got {:?}",
            self.pay_url
        );
        Ok(())
    }
}

/// What a pass found wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Found {
    /// Pay never saw the order.
    pub unknown_to_pay: u64,
    /// Pay settled it; its answer never arrived.
    pub settled_by_pay: u64,
}

/// What a pass repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Fixed {
    /// `OrderCreated` put back in the outbox, same message id.
    pub republished: u64,
    /// Order settled from pay's answer.
    pub settled: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Unfixed {
    pub order_id: Uuid,
    pub reason: String,
}

/// One pass, as `GET /admin/reconciliation` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Orders still `PENDING_PAYMENT` past the threshold.
    pub looked_at: u64,
    pub found: Found,
    /// Unknown to pay, but their `OrderCreated` is still on its way: left alone.
    pub on_its_way: u64,
    pub fixed: Fixed,
    pub unfixed_count: u64,
    /// The first [`MAX_UNFIXED_LISTED`] of them, with why.
    pub unfixed: Vec<Unfixed>,
    /// Why the pass stopped early (pay or the database unreachable); the counts are what
    /// it did until then.
    pub error: Option<String>,
}

impl Report {
    fn new() -> Self {
        let now = Utc::now();
        Self {
            started_at: now,
            finished_at: now,
            looked_at: 0,
            found: Found::default(),
            on_its_way: 0,
            fixed: Fixed::default(),
            unfixed_count: 0,
            unfixed: Vec::new(),
            error: None,
        }
    }

    fn cannot_fix(&mut self, order_id: Uuid, reason: String) {
        tracing::warn!(%order_id, reason, "reconciler cannot repair this order");
        self.unfixed_count += 1;
        if self.unfixed.len() < MAX_UNFIXED_LISTED {
            self.unfixed.push(Unfixed { order_id, reason });
        }
    }
}

/// What this instance's passes did since it started (what metrics would count).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Totals {
    pub passes: u64,
    /// Turns skipped because another instance held the lock.
    pub skipped: u64,
    /// Passes that stopped early (see [`Report::error`]).
    pub failed: u64,
    pub looked_at: u64,
    pub found: Found,
    pub fixed: Fixed,
    pub unfixed: u64,
}

impl Totals {
    fn add(&mut self, r: &Report) {
        self.passes += 1;
        self.failed += u64::from(r.error.is_some());
        self.looked_at += r.looked_at;
        self.found.unknown_to_pay += r.found.unknown_to_pay;
        self.found.settled_by_pay += r.found.settled_by_pay;
        self.fixed.republished += r.fixed.republished;
        self.fixed.settled += r.fixed.settled;
        self.unfixed += r.unfixed_count;
    }
}

/// This instance's last report and totals, shared with the admin route.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reports {
    pub last_report: Option<Report>,
    pub since_start: Totals,
}

pub type SharedReports = Arc<Mutex<Reports>>;

#[derive(Debug, FromRow)]
struct StaleOrder {
    id: Uuid,
    message_id: Uuid,
    user_id: String,
    amount_cents: i64,
    created_at: DateTime<Utc>,
}

/// One order in pay's `POST /payments/lookup` answer.
#[derive(Debug, Deserialize)]
struct PayAnswer {
    order_id: Uuid,
    status: LookupStatus,
    user_id: Option<String>,
    amount_cents: Option<i64>,
    failure_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LookupResponse {
    payments: Vec<PayAnswer>,
}

/// The HTTP client for pay's lookups.
pub fn pay_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(PAY_TIMEOUT)
        .build()
        .context("build the HTTP client for pay")
}

pub struct Reconciler {
    pool: PgPool,
    cfg: ReconcilerConfig,
    /// A re-published message's fresh time to live (`OUTBOX_MESSAGE_TTL_SECS`).
    message_ttl: Duration,
    http: reqwest::Client,
    reports: SharedReports,
    metrics: ReconcilerMetrics,
}

/// What every pass found and fixed, as Prometheus counters (the same numbers as
/// [`Totals`], which `/admin/reconciliation` shows; these add up across instances).
#[derive(Clone, Default)]
pub struct ReconcilerMetrics {
    passes: Family<[(&'static str, &'static str); 1], Counter>,
    looked_at: Counter,
    found: Family<[(&'static str, &'static str); 1], Counter>,
    fixed: Family<[(&'static str, &'static str); 1], Counter>,
    unfixed: Counter,
}

impl ReconcilerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "reconciler_passes",
            "Reconciliation passes by result: completed, failed (stopped early), skipped (another instance held the lock)",
            m.passes.clone(),
        );
        registry.register(
            "reconciler_orders_looked_at",
            "Orders still PENDING_PAYMENT past the threshold that a pass looked at",
            m.looked_at.clone(),
        );
        registry.register(
            "reconciler_found",
            "Stuck orders by what pay knew: unknown_to_pay, settled_by_pay",
            m.found.clone(),
        );
        registry.register(
            "reconciler_fixed",
            "Repairs by kind: republished (OrderCreated again, same message id), settled (from pay's answer)",
            m.fixed.clone(),
        );
        registry.register(
            "reconciler_unfixed",
            "Stuck orders the reconciler could not repair (reported at /admin/reconciliation)",
            m.unfixed.clone(),
        );
        // Every label value from 0, so a rate() has a starting point.
        for result in ["completed", "failed", "skipped"] {
            let _ = m.passes.get_or_create(&[("result", result)]);
        }
        for kind in ["unknown_to_pay", "settled_by_pay"] {
            let _ = m.found.get_or_create(&[("kind", kind)]);
        }
        for kind in ["republished", "settled"] {
            let _ = m.fixed.get_or_create(&[("kind", kind)]);
        }
        m
    }

    fn skipped(&self) {
        self.passes.get_or_create(&[("result", "skipped")]).inc();
    }

    fn pass(&self, r: &Report) {
        let result = if r.error.is_some() {
            "failed"
        } else {
            "completed"
        };
        self.passes.get_or_create(&[("result", result)]).inc();
        self.looked_at.inc_by(r.looked_at);
        let count = |family: &Family<[(&'static str, &'static str); 1], Counter>, kind, n| {
            family.get_or_create(&[("kind", kind)]).inc_by(n);
        };
        count(&self.found, "unknown_to_pay", r.found.unknown_to_pay);
        count(&self.found, "settled_by_pay", r.found.settled_by_pay);
        count(&self.fixed, "republished", r.fixed.republished);
        count(&self.fixed, "settled", r.fixed.settled);
        self.unfixed.inc_by(r.unfixed_count);
    }
}

impl Reconciler {
    pub fn new(
        pool: PgPool,
        cfg: ReconcilerConfig,
        message_ttl: Duration,
        http: reqwest::Client,
    ) -> Self {
        Self {
            pool,
            cfg,
            message_ttl,
            http,
            reports: SharedReports::default(),
            metrics: ReconcilerMetrics::default(),
        }
    }

    /// Counts into `metrics` (registered in the service's registry) as well as the report.
    pub fn with_metrics(mut self, metrics: ReconcilerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn reports(&self) -> SharedReports {
        self.reports.clone()
    }

    /// A pass every `RECONCILER_INTERVAL_SECS` until `shutdown` (which also interrupts a
    /// pass: each repair is its own transaction, and the lock goes with its session).
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.interval) => {}
                _ = shutdown.cancelled() => break,
            }
            tokio::select! {
                result = self.run_once() => match result {
                    Ok(Some(_)) => {}
                    Ok(None) => tracing::debug!("reconciliation skipped: another instance runs it"),
                    Err(e) => tracing::warn!(error = format!("{e:#}"), "reconciliation could not start"),
                },
                _ = shutdown.cancelled() => break,
            }
        }
    }

    /// One pass; `None` when another instance holds the lock (it is doing this work).
    pub async fn run_once(&self) -> sqlx::Result<Option<Report>> {
        let Some(lock) = AdvisoryLock::try_acquire(&self.pool, LOCK_KEY).await? else {
            self.update(|r| r.since_start.skipped += 1);
            self.metrics.skipped();
            return Ok(None);
        };
        let mut report = Report::new();
        if let Err(e) = self.reconcile(&mut report).await {
            report.error = Some(format!("{e:#}"));
        }
        report.finished_at = Utc::now();
        lock.unlock().await;
        log(&report);
        self.metrics.pass(&report);
        self.update(|r| {
            r.since_start.add(&report);
            r.last_report = Some(report.clone());
        });
        Ok(Some(report))
    }

    fn update(&self, f: impl FnOnce(&mut Reports)) {
        f(&mut self.reports.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Every stale order, oldest first, one batch (and one lookup) at a time.
    async fn reconcile(&self, report: &mut Report) -> anyhow::Result<()> {
        let mut after: Option<(DateTime<Utc>, Uuid)> = None;
        loop {
            let batch = self.stale_orders(after).await?;
            let Some(last) = batch.last() else {
                return Ok(());
            };
            after = Some((last.created_at, last.id));
            report.looked_at += batch.len() as u64;
            let answers = self.ask_pay(&batch).await?;
            for order in &batch {
                self.repair(order, answers.get(&order.id), report).await?;
            }
            if (batch.len() as i64) < self.cfg.batch_size {
                return Ok(());
            }
        }
    }

    async fn stale_orders(
        &self,
        after: Option<(DateTime<Utc>, Uuid)>,
    ) -> sqlx::Result<Vec<StaleOrder>> {
        // The state is spelt out for the partial index `orders_pending` (see
        // [`crate::status`]: a bound parameter would not use it).
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id, message_id, user_id, amount_cents, created_at FROM orders
             WHERE {PENDING}
               AND created_at < now() - make_interval(secs => $1)
               AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
             ORDER BY created_at, id LIMIT $4",
        )))
        .bind(self.cfg.pending_after.as_secs_f64())
        .bind(after.map(|(at, _)| at))
        .bind(after.map(|(_, id)| id))
        .bind(self.cfg.batch_size)
        .fetch_all(&self.pool)
        .await
    }

    /// Pay's answers for `batch`, by order id.
    async fn ask_pay(&self, batch: &[StaleOrder]) -> anyhow::Result<HashMap<Uuid, PayAnswer>> {
        let ids: Vec<Uuid> = batch.iter().map(|o| o.id).collect();
        let url = format!("{}/payments/lookup", self.cfg.pay_url.trim_end_matches('/'));
        let response: LookupResponse = self
            .http
            .post(&url)
            .json(&json!({ "order_ids": ids }))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("POST {url}"))?
            .json()
            .await
            .with_context(|| format!("POST {url}: unreadable answer"))?;
        Ok(response
            .payments
            .into_iter()
            .map(|p| (p.order_id, p))
            .collect())
    }

    /// What is safe for one order, given pay's answer (none counts as unknown).
    async fn repair(
        &self,
        order: &StaleOrder,
        answer: Option<&PayAnswer>,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let (answer, outcome) = match answer.map(|a| (a, a.status)) {
            Some((a, LookupStatus::Completed)) => (a, PaymentOutcome::Completed),
            Some((a, LookupStatus::Failed)) => (
                a,
                PaymentOutcome::Failed {
                    reason: a.failure_reason.clone(),
                },
            ),
            Some((_, LookupStatus::Unknown)) | None => {
                report.found.unknown_to_pay += 1;
                return self.republish(order, report).await;
            }
            Some((_, undone @ (LookupStatus::Cancelled | LookupStatus::Refunded))) => {
                return self.undone_by_pay(order, undone, report).await;
            }
        };
        report.found.settled_by_pay += 1;
        if answer.user_id.as_deref() != Some(&order.user_id)
            || answer.amount_cents != Some(order.amount_cents)
        {
            report.cannot_fix(
                order.id,
                format!(
                    "pay's payment ({:?}, {:?} cents) is not the order's ({:?}, {} cents)",
                    answer.user_id, answer.amount_cents, order.user_id, order.amount_cents
                ),
            );
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        match payment_results::settle(&mut tx, order.id, &outcome).await {
            Ok(Applied::Moved(_)) => {
                tx.commit().await?;
                report.fixed.settled += 1;
            }
            // The answer arrived meanwhile, or the client cancelled the order meanwhile
            // (never PAID then: pay's compensation answers for the charge).
            Ok(Applied::Kept { .. }) => {}
            Err(TransitionError::Database(e)) => return Err(e.into()),
            Err(e) => report.cannot_fix(order.id, e.to_string()),
        }
        Ok(())
    }

    /// Pay undid the order (a tombstone or a refund): it does that only for an order the
    /// client cancelled, so the order was cancelled after this pass read it, and pay's
    /// answer settles it. Still pending here, it is something nobody here can explain.
    async fn undone_by_pay(
        &self,
        order: &StaleOrder,
        undone: LookupStatus,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let status: Option<OrderStatus> =
            sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
                .bind(order.id)
                .fetch_optional(&self.pool)
                .await?;
        if status == Some(OrderStatus::PendingPayment) {
            report.cannot_fix(
                order.id,
                format!(
                    "pay has undone it ({}) but the order was never cancelled",
                    undone.as_str()
                ),
            );
        }
        Ok(())
    }

    async fn republish(&self, order: &StaleOrder, report: &mut Report) -> anyhow::Result<()> {
        let requeued = outbox::requeue_for_republish(
            &self.pool,
            order.message_id,
            self.message_ttl,
            self.cfg.pending_after,
        )
        .await?;
        if requeued {
            tracing::info!(order_id = %order.id, message_id = %order.message_id, "OrderCreated requeued for re-publish");
            report.fixed.republished += 1;
        } else if outbox::status_of(&self.pool, order.message_id)
            .await?
            .is_some()
        {
            report.on_its_way += 1;
        } else {
            report.cannot_fix(
                order.id,
                format!(
                    "its OrderCreated message {} is no longer in the outbox",
                    order.message_id
                ),
            );
        }
        Ok(())
    }
}

fn log(r: &Report) {
    if let Some(error) = &r.error {
        tracing::warn!(
            error,
            looked_at = r.looked_at,
            "reconciliation pass stopped early"
        );
    } else if r.looked_at > 0 {
        tracing::info!(
            looked_at = r.looked_at,
            republished = r.fixed.republished,
            settled = r.fixed.settled,
            on_its_way = r.on_its_way,
            unfixed = r.unfixed_count,
            "reconciliation pass"
        );
    }
}

#[derive(Clone)]
struct AdminState {
    reports: SharedReports,
    cfg: ReconcilerConfig,
}

/// `GET /reconciliation`, to be nested under `/admin`: the settings, this instance's last
/// report (`null` before its first pass) and its totals since start.
pub fn admin_routes(reports: SharedReports, cfg: ReconcilerConfig) -> Router {
    Router::new()
        .route("/reconciliation", get(reconciliation))
        .with_state(AdminState { reports, cfg })
}

/// `GET /admin/reconciliation`'s body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reconciliation {
    /// `RECONCILER_INTERVAL_SECS`.
    pub interval_secs: f64,
    /// `RECONCILER_PENDING_AFTER_SECS`: how old a pending order must be to be looked at.
    pub pending_after_secs: f64,
    /// `RECONCILER_BATCH_SIZE`.
    pub batch_size: i64,
    /// `null` before this instance's first pass.
    pub last_report: Option<Report>,
    pub since_start: Totals,
}

/// The reconciler's settings, this instance's last report and its totals since start.
#[utoipa::path(get, path = "/admin/reconciliation", tag = "admin",
    security(("admin_token" = [])),
    responses((status = 200, description = "the last report", body = Reconciliation),
        common::openapi::AdminErrors))]
async fn reconciliation(State(s): State<AdminState>) -> Json<Reconciliation> {
    let reports = s.reports.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(Reconciliation {
        interval_secs: s.cfg.interval.as_secs_f64(),
        pending_after_secs: s.cfg.pending_after.as_secs_f64(),
        batch_size: s.cfg.batch_size,
        last_report: reports.last_report,
        since_start: reports.since_start,
    })
}

/// The reconciler's admin route, for order's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(reconciliation))]
pub struct ReconcilerDoc;
