//! The message tables' Prometheus metric families, updated by the relay, the inbox, the
//! retry sweeper and the retention runner.
//!
//! One [`MessageTableMetrics`] per service, registered into that service's own `Registry`
//! ([`MessageTableMetrics::register`]) and shared as an `Arc` by its workers: several
//! services in one process (the system tests) must not add into each other's counts, so
//! there is no global recorder. Without a registry ([`Default`]) the families still count,
//! but nobody reads them: the workers' constructors need no metrics.
//!
//! Every label value is one of a few fixed words, never an id. The outbox gauges (rows by
//! status, the oldest pending row's age) are read from the database at scrape time
//! ([`outbox_gauges`]), so they are right whichever instance did the work.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use sqlx::PgPool;

use crate::{
    amqp::BrokerLink,
    inbox::Outcome,
    outbox::{self, relay::PublishOutcome},
};

type Labels = [(&'static str, &'static str); 1];
type Counters = Family<Labels, Counter>;

/// `outbox_publishes_total` outcomes (see [`PublishOutcome::label`]).
pub const PUBLISH_OUTCOMES: [&str; 7] = [
    "confirmed",
    "nacked",
    "returned",
    "timed_out",
    "channel_error",
    "no_channel",
    "not_in_confirm_mode",
];

/// `inbox_deliveries_total` outcomes.
pub const DELIVERY_OUTCOMES: [&str; 7] = [
    "processed",
    "parked",
    "duplicate",
    "failed",
    "dead",
    "poison",
    "unrecorded",
];

/// `inbox_retries_total` outcomes.
pub const RETRY_OUTCOMES: [&str; 3] = ["processed", "failed", "dead"];

/// Buckets for rows per relay round, up to the largest batch size one would configure.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// The families of one service (names and meanings: [`MessageTableMetrics::register`]).
pub struct MessageTableMetrics {
    pub publishes: Counters,
    pub confirm_duration: Histogram,
    pub relay_round_duration: Histogram,
    pub relay_batch_rows: Histogram,
    pub deliveries: Counters,
    pub handler_duration: Histogram,
    pub sweeps: Counter,
    pub retries: Counters,
    pub retention_deleted: Counters,
}

impl Default for MessageTableMetrics {
    fn default() -> Self {
        let duration = duration_histogram;
        let metrics = Self {
            publishes: Counters::default(),
            confirm_duration: duration(),
            relay_round_duration: duration(),
            relay_batch_rows: Histogram::new(BATCH_BUCKETS),
            deliveries: Counters::default(),
            handler_duration: duration(),
            sweeps: Counter::default(),
            retries: Counters::default(),
            retention_deleted: Counters::default(),
        };
        // Every series exists from the start at 0, so a rate never starts from nothing.
        for (family, key, values) in [
            (&metrics.publishes, "outcome", &PUBLISH_OUTCOMES[..]),
            (&metrics.deliveries, "outcome", &DELIVERY_OUTCOMES[..]),
            (&metrics.retries, "outcome", &RETRY_OUTCOMES[..]),
            (
                &metrics.retention_deleted,
                "table",
                &["outbox", "inbox"][..],
            ),
        ] {
            for value in values {
                family.get_or_create_owned(&[(key, *value)]);
            }
        }
        metrics
    }
}

/// Durations from a millisecond to ten seconds (the same buckets as the HTTP metrics).
fn duration_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
    ])
}

impl MessageTableMetrics {
    /// New families, registered into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "outbox_publishes",
            "Outbox rows published, by the broker's answer",
            m.publishes.clone(),
        );
        registry.register(
            "outbox_confirm_duration_seconds",
            "From the first publish of a relay window to the last of its confirms",
            m.confirm_duration.clone(),
        );
        registry.register(
            "outbox_relay_round_duration_seconds",
            "Relay rounds that claimed rows: claim, publish, confirms and settle",
            m.relay_round_duration.clone(),
        );
        registry.register(
            "outbox_relay_batch_rows",
            "Rows claimed per relay round that claimed any",
            m.relay_batch_rows.clone(),
        );
        registry.register(
            "inbox_deliveries",
            "Broker deliveries received by the inbox, by recorded outcome",
            m.deliveries.clone(),
        );
        registry.register(
            "inbox_handler_duration_seconds",
            "Runs of the message handler (first deliveries and retries)",
            m.handler_duration.clone(),
        );
        registry.register(
            "inbox_retry_sweeps",
            "Rounds of the inbox retry sweeper",
            m.sweeps.clone(),
        );
        registry.register(
            "inbox_retries",
            "Failed inbox rows retried by the sweeper, by outcome",
            m.retries.clone(),
        );
        registry.register(
            "retention_deleted_rows",
            "Rows deleted by retention, by table",
            m.retention_deleted.clone(),
        );
        m
    }

    pub(crate) fn publish(&self, outcome: &PublishOutcome) {
        self.publishes
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    pub(crate) fn delivery(&self, outcome: Option<&Outcome>) {
        let label = outcome.map_or("unrecorded", Outcome::label);
        self.deliveries.get_or_create(&[("outcome", label)]).inc();
    }

    pub(crate) fn retry(&self, outcome: &Outcome) {
        self.retries
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    pub(crate) fn deleted(&self, table: &'static str, rows: u64) {
        self.retention_deleted
            .get_or_create(&[("table", table)])
            .inc_by(rows);
    }
}

/// Registers, into `registry` (one built for this scrape), the outbox rows by status
/// (`outbox_messages{status}`: pending, in_flight, sent, dead) and the age of the oldest
/// row waiting to be published, not in flight (`outbox_oldest_pending_age_seconds`, 0
/// when none): how far the relay is behind. Also the ordering gauges: aggregates blocked
/// behind a dead message (`outbox_blocked_aggregates`) and parked inbox messages
/// (`inbox_parked_messages`).
pub async fn outbox_gauges(pool: &PgPool, registry: &mut Registry) -> sqlx::Result<()> {
    let stats = outbox::stats(pool).await?;
    let oldest = outbox::oldest_waiting_age(pool).await?;
    let rows = Family::<Labels, Gauge>::default();
    for (status, count) in [
        ("pending", stats.pending),
        ("in_flight", stats.in_flight),
        ("sent", stats.sent),
        ("dead", stats.dead),
    ] {
        rows.get_or_create(&[("status", status)]).set(count);
    }
    registry.register(
        "outbox_messages",
        "Outbox rows by status, read at scrape time",
        rows,
    );
    let age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    age.set(oldest);
    let blocked = Gauge::<i64>::default();
    blocked.set(stats.blocked_aggregates);
    registry.register(
        "outbox_blocked_aggregates",
        "Aggregates whose oldest unsent message is dead: their later messages wait for its requeue",
        blocked,
    );
    let parked = Gauge::<i64>::default();
    parked.set(crate::inbox::parked(pool).await?);
    registry.register(
        "inbox_parked_messages",
        "Inbox messages that arrived before their aggregate's previous one was applied, waiting for it",
        parked,
    );
    registry.register(
        "outbox_oldest_pending_age_seconds",
        "Age of the oldest pending outbox row not in flight, read at scrape time; 0 when none",
        age,
    );
    Ok(())
}

/// `amqp_connection_up{link, node}`: 1 for each broker connection of the service that works,
/// labelled with the node it is on; 0 with `node=""` for one that is down. Read at scrape
/// time from the links themselves; a handful of series per service.
pub fn broker_link_gauges(links: &[BrokerLink], registry: &mut Registry) {
    let up = Family::<[(&'static str, String); 2], Gauge>::default();
    for link in links {
        let node = link.node();
        up.get_or_create(&[
            ("link", link.name().to_string()),
            ("node", node.clone().unwrap_or_default()),
        ])
        .set(node.is_some().into());
    }
    registry.register(
        "amqp_connection_up",
        "Each broker connection of the service (link): 1 on the node it is on, 0 while down",
        up,
    );
}
