//! Teaching fault switches: break the mechanism on purpose and watch it recover.
//!
//! # Why
//! This project is teaching material. Reading that "a lost confirm is re-published and the
//! inbox drops the copy" is one thing; turning a switch and seeing exactly one payment is
//! another. Each switch injects one real failure at the point where it would happen, and
//! the normal code then deals with it: nothing here repairs anything.
//!
//! # Rules
//! - Off unless the service runs with `DEMO_FAULTS=1`: a disabled [`Faults`] is `None`, and
//!   every check on the hot path is one `Option` test.
//! - A fault never weakens a guarantee. `lose_confirms` leaves the row pending (it is
//!   published again), `fail_handler` turns a finished handler run into a failure that is
//!   rolled back like any other, `deliver_twice` only adds a copy, `hold_ack` only withholds
//!   an ack after the commit (the broker redelivers), the pauses only delay.
//! - Each check is one line at the point it acts, in the relay, the inbox or the consumer.
//!
//! The HTTP side (`/admin/faults`) is `service_kit::faults`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// One teaching switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Switch {
    /// The relay skips its rounds: committed rows wait as `pending`.
    PauseRelay,
    /// The next N handler runs fail (their effect rolled back): retries, then success.
    FailHandler,
    /// The next N confirms are treated as lost: the row stays pending and is published
    /// again; the receiver's inbox drops the copy.
    LoseConfirms,
    /// Once: the service closes its broker connections (relay and consumer); they reconnect.
    DropBrokerConnection,
    /// The consumer takes no deliveries for a while; they wait in the queue (or unacked).
    StopConsumer,
    /// The next N messages are published twice.
    DeliverTwice,
    /// "Crash after commit": for the next N deliveries (batches) the consumer commits the
    /// inbox transaction, then drops its connection before acking, as a process crash would.
    /// The broker redelivers; the inbox drops the copy as a duplicate.
    HoldAck,
}

/// How a switch is turned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// `{"count": N}`: the next N occasions.
    Count,
    /// `{"seconds": S}`: for S seconds.
    Seconds,
    /// `{}`: once.
    Once,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Count => "count",
            Unit::Seconds => "seconds",
            Unit::Once => "once",
        }
    }
}

impl Switch {
    pub const ALL: [Switch; 7] = [
        Switch::PauseRelay,
        Switch::FailHandler,
        Switch::LoseConfirms,
        Switch::DropBrokerConnection,
        Switch::StopConsumer,
        Switch::DeliverTwice,
        Switch::HoldAck,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Switch::PauseRelay => "pause_relay",
            Switch::FailHandler => "fail_handler",
            Switch::LoseConfirms => "lose_confirms",
            Switch::DropBrokerConnection => "drop_broker_connection",
            Switch::StopConsumer => "stop_consumer",
            Switch::DeliverTwice => "deliver_twice",
            Switch::HoldAck => "hold_ack",
        }
    }

    pub fn parse(name: &str) -> Option<Switch> {
        Switch::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn unit(self) -> Unit {
        match self {
            Switch::PauseRelay | Switch::StopConsumer => Unit::Seconds,
            Switch::FailHandler | Switch::LoseConfirms | Switch::DeliverTwice | Switch::HoldAck => {
                Unit::Count
            }
            Switch::DropBrokerConnection => Unit::Once,
        }
    }

    /// The failure scenario it shows: its script is `scripts/scenarios/<scenario>.sh`.
    pub fn scenario(self) -> &'static str {
        match self {
            Switch::PauseRelay => "02-commit-then-send-fails",
            Switch::FailHandler => "10-handler-fails-then-succeeds",
            Switch::LoseConfirms => "05-lost-confirm",
            Switch::DropBrokerConnection => "03-broker-down-at-order-time",
            Switch::StopConsumer => "08-duplicate-delivery",
            Switch::DeliverTwice => "08-duplicate-delivery",
            Switch::HoldAck => "07-consumer-killed-before-ack",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a switch is doing now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchState {
    pub switch: Switch,
    pub active: bool,
    /// Occasions left (`count` switches).
    pub remaining_count: Option<u64>,
    /// Seconds left (`seconds` switches), rounded up.
    pub remaining_seconds: Option<u64>,
}

/// The switches of one service, shared by its relay, inbox, consumer and admin routes.
/// Cheap to clone; [`Faults::off`] (the default) does nothing and costs an `Option` check.
#[derive(Clone, Default)]
pub struct Faults(Option<Arc<Switches>>);

struct Switches {
    /// Counted switches: occasions left. Timed switches: end as milliseconds since `epoch`.
    values: [AtomicU64; Switch::ALL.len()],
    epoch: Instant,
    /// `drop_broker_connection`: still to do by the relay, and by the consumer.
    relay_drop: AtomicBool,
    consumer_drop: AtomicBool,
    /// `hold_ack` acted: the consumer is to drop its connection without acking.
    consumer_crash: AtomicBool,
    /// Wakes the consumer, which is waiting for deliveries, to drop its connection.
    consumer_drop_now: Notify,
}

impl Faults {
    /// No switches (`DEMO_FAULTS` unset): every check is a no-op.
    pub fn off() -> Self {
        Faults(None)
    }

    /// Switches that can be turned on, all off for now.
    pub fn on() -> Self {
        Faults(Some(Arc::new(Switches {
            values: Default::default(),
            epoch: Instant::now(),
            relay_drop: AtomicBool::new(false),
            consumer_drop: AtomicBool::new(false),
            consumer_crash: AtomicBool::new(false),
            consumer_drop_now: Notify::new(),
        })))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Turns `switch` on for `amount` (a count or seconds, per its [`Unit`]; ignored for
    /// `Once`). No-op when off.
    pub fn set(&self, switch: Switch, amount: u64) {
        let Some(s) = &self.0 else { return };
        tracing::warn!(switch = switch.name(), amount, "teaching fault switched on");
        match switch.unit() {
            Unit::Count => s.values[switch.index()].store(amount, Ordering::Relaxed),
            Unit::Seconds => {
                let end = s.now_ms() + amount.saturating_mul(1000);
                s.values[switch.index()].store(end, Ordering::Relaxed)
            }
            Unit::Once => {
                s.relay_drop.store(true, Ordering::Relaxed);
                s.consumer_drop.store(true, Ordering::Relaxed);
                s.consumer_drop_now.notify_one();
            }
        }
    }

    /// Turns `switch` off. No-op when off.
    pub fn clear(&self, switch: Switch) {
        let Some(s) = &self.0 else { return };
        tracing::info!(switch = switch.name(), "teaching fault switched off");
        s.values[switch.index()].store(0, Ordering::Relaxed);
        if switch == Switch::DropBrokerConnection {
            s.relay_drop.store(false, Ordering::Relaxed);
            s.consumer_drop.store(false, Ordering::Relaxed);
        }
    }

    /// Every switch and what it is doing; empty when off.
    pub fn states(&self) -> Vec<SwitchState> {
        let Some(s) = &self.0 else { return Vec::new() };
        Switch::ALL
            .into_iter()
            .map(|switch| {
                let value = s.values[switch.index()].load(Ordering::Relaxed);
                let (active, count, seconds) = match switch.unit() {
                    Unit::Count => (value > 0, Some(value), None),
                    Unit::Seconds => {
                        let left_ms = value.saturating_sub(s.now_ms());
                        (left_ms > 0, None, Some(left_ms.div_ceil(1000)))
                    }
                    Unit::Once => {
                        let pending = s.relay_drop.load(Ordering::Relaxed)
                            || s.consumer_drop.load(Ordering::Relaxed);
                        (pending, None, None)
                    }
                };
                SwitchState {
                    switch,
                    active,
                    remaining_count: count,
                    remaining_seconds: seconds,
                }
            })
            .collect()
    }

    /// Takes one occasion of a counted switch: true when this occasion is to fail.
    pub fn take(&self, switch: Switch) -> bool {
        let Some(s) = &self.0 else { return false };
        let taken = s.values[switch.index()]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if taken {
            tracing::warn!(switch = switch.name(), "teaching fault acts");
        }
        taken
    }

    /// Whether `switch` would act now (a count left, or time), without taking it.
    pub fn armed(&self, switch: Switch) -> bool {
        let Some(s) = &self.0 else { return false };
        let value = s.values[switch.index()].load(Ordering::Relaxed);
        match switch.unit() {
            Unit::Count => value > 0,
            Unit::Seconds => value > s.now_ms(),
            Unit::Once => {
                s.relay_drop.load(Ordering::Relaxed) || s.consumer_drop.load(Ordering::Relaxed)
            }
        }
    }

    /// How much longer a timed switch is on (zero when it is not).
    pub fn remaining(&self, switch: Switch) -> Duration {
        let Some(s) = &self.0 else {
            return Duration::ZERO;
        };
        let end = s.values[switch.index()].load(Ordering::Relaxed);
        Duration::from_millis(end.saturating_sub(s.now_ms()))
    }

    /// Waits while a timed switch is on (it may be switched off or extended meanwhile).
    pub async fn wait_while(&self, switch: Switch) {
        loop {
            let left = self.remaining(switch);
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_millis(200))).await;
        }
    }

    /// `drop_broker_connection`, the relay's part: true once per switching on.
    pub fn take_relay_drop(&self) -> bool {
        let Some(s) = &self.0 else { return false };
        let taken = s.relay_drop.swap(false, Ordering::Relaxed);
        if taken {
            tracing::warn!("teaching fault acts: the relay closes its broker connection");
        }
        taken
    }

    /// `hold_ack`, taken by the consumer once a batch is committed: true when this batch is
    /// not to be acked. The consumer's connection then goes ([`Self::consumer_drop`]
    /// resolves), as if its process had crashed between the commit and the ack.
    pub fn take_hold_ack(&self) -> bool {
        let Some(s) = &self.0 else { return false };
        if !self.take(Switch::HoldAck) {
            return false;
        }
        tracing::warn!(
            "teaching fault acts: committed, the consumer drops its connection before the ack"
        );
        s.consumer_crash.store(true, Ordering::Relaxed);
        s.consumer_drop_now.notify_one();
        true
    }

    /// The consumer's connection is to go: `drop_broker_connection` was turned on (at once
    /// if it is on and the consumer has not dropped yet), or `hold_ack` acted. Never, when
    /// off.
    pub async fn consumer_drop(&self) {
        let Some(s) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            if s.consumer_drop.swap(false, Ordering::Relaxed) {
                tracing::warn!("teaching fault acts: the consumer closes its broker connection");
                return;
            }
            if s.consumer_crash.swap(false, Ordering::Relaxed) {
                return;
            }
            s.consumer_drop_now.notified().await;
        }
    }
}

impl Switches {
    fn now_ms(&self) -> u64 {
        // Never 0: 0 means "off" for a timed switch.
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_does_nothing() {
        let f = Faults::off();
        f.set(Switch::FailHandler, 3);
        assert!(!f.take(Switch::FailHandler));
        assert!(f.states().is_empty());
        assert!(f.remaining(Switch::PauseRelay).is_zero());
        assert!(!f.take_relay_drop());
    }

    #[test]
    fn a_count_is_taken_once_per_occasion() {
        let f = Faults::on();
        f.set(Switch::LoseConfirms, 2);
        assert!(f.take(Switch::LoseConfirms));
        assert!(!f.take(Switch::DeliverTwice));
        let state = &f.states()[Switch::LoseConfirms.index()];
        assert_eq!((state.active, state.remaining_count), (true, Some(1)));
        assert!(f.take(Switch::LoseConfirms));
        assert!(!f.take(Switch::LoseConfirms));
        assert!(!f.states()[Switch::LoseConfirms.index()].active);
    }

    #[test]
    fn a_timed_switch_runs_until_cleared_and_a_drop_happens_once() {
        let f = Faults::on();
        f.set(Switch::PauseRelay, 60);
        assert!(!f.remaining(Switch::PauseRelay).is_zero());
        assert!(f.states()[Switch::PauseRelay.index()].active);
        f.clear(Switch::PauseRelay);
        assert!(f.remaining(Switch::PauseRelay).is_zero());

        f.set(Switch::DropBrokerConnection, 0);
        assert!(f.take_relay_drop());
        assert!(!f.take_relay_drop());
        // The consumer has not dropped yet.
        assert!(f.states()[Switch::DropBrokerConnection.index()].active);
    }

    #[test]
    fn hold_ack_is_taken_per_batch_and_ends_the_consumer_connection_only() {
        let f = Faults::on();
        assert!(!f.take_hold_ack());
        f.set(Switch::HoldAck, 1);
        assert!(f.take_hold_ack());
        assert!(!f.take_hold_ack());
        // Not drop_broker_connection: the relay keeps its connection.
        assert!(!f.take_relay_drop());
        assert!(!f.states()[Switch::DropBrokerConnection.index()].active);
        assert!(Faults::off().states().is_empty());
        assert_eq!(Switch::HoldAck.scenario(), "07-consumer-killed-before-ack");
    }

    #[test]
    fn names_round_trip() {
        for s in Switch::ALL {
            assert_eq!(Switch::parse(s.name()), Some(s));
            assert_eq!(s.index(), Switch::ALL.iter().position(|x| *x == s).unwrap());
        }
        assert_eq!(Switch::parse("nope"), None);
    }
}
