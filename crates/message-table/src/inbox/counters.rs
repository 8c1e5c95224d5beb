//! Outcome counts since start: how many duplicates the inbox dropped, how many messages
//! failed or died. Read by tests, the chaos script and `/admin/stats`; the Prometheus
//! metrics ([`crate::metrics`]) count deliveries and retries apart.

use std::sync::atomic::{AtomicU64, Ordering};

use super::{Inbox, Outcome};

/// The counts of one inbox, by outcome.
#[derive(Debug, Default)]
pub struct InboxCounters {
    pub processed: AtomicU64,
    pub parked: AtomicU64,
    pub duplicates: AtomicU64,
    pub failed: AtomicU64,
    pub dead: AtomicU64,
    pub poison: AtomicU64,
    /// Deliveries whose outcome could not be recorded (database unreachable): not acked,
    /// handed back to the broker.
    pub unrecorded: AtomicU64,
}

impl InboxCounters {
    pub(crate) fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Processed => &self.processed,
            Outcome::Parked => &self.parked,
            Outcome::Duplicate => &self.duplicates,
            Outcome::Failed { .. } => &self.failed,
            Outcome::Dead { .. } => &self.dead,
            Outcome::Poison { .. } => &self.poison,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as plain numbers.
    pub fn snapshot(&self) -> InboxCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        InboxCounts {
            processed: get(&self.processed),
            parked: get(&self.parked),
            duplicates: get(&self.duplicates),
            failed: get(&self.failed),
            dead: get(&self.dead),
            poison: get(&self.poison),
            unrecorded: get(&self.unrecorded),
        }
    }
}

/// A reading of [`InboxCounters`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct InboxCounts {
    pub processed: u64,
    pub parked: u64,
    pub duplicates: u64,
    pub failed: u64,
    pub dead: u64,
    pub poison: u64,
    pub unrecorded: u64,
}

impl Inbox {
    /// Counts one delivery's outcome; `None`: nothing could be recorded.
    pub(super) fn count_delivery(&self, outcome: Option<&Outcome>) {
        match outcome {
            Some(o) => self.counters.count(o),
            None => {
                self.counters.unrecorded.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.metrics.delivery(outcome);
    }
}
