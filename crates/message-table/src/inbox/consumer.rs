//! The AMQP side of the inbox: consume with manual ack, hand the deliveries to
//! [`Inbox::receive_batch`], ack each only after its outcome is committed.
//!
//! Deliveries are taken in batches of whatever has arrived (up to `batch_size`, never
//! waiting for more) and each batch is one inbox transaction ([`Inbox::receive_batch`]).
//! Batches run concurrently, at most as many as the pool can serve while leaving a few
//! connections to the rest of the service; the broker never has more than the prefetch
//! count unacked on this channel (a per-consumer prefetch: quorum queues refuse a global
//! one). A delivery whose outcome could not be recorded (the database is down) is nacked
//! with requeue after a pause, so the broker keeps it; the pause keeps a database outage
//! from turning into a hot redelivery loop, and it grows while the outage lasts, since
//! every hand-back counts towards a quorum queue's delivery limit.
//!
//! The same consumer, built with [`InboxConsumer::dead_letters`], takes the service's
//! dead-letter queue instead and records what is there through
//! [`Inbox::receive_dead_letters`] ([`super::dead_letters`]); the rest is the same.
//!
//! Acks go through an [`AckWindow`]: one `basic.ack` with `multiple` settles every delivery
//! up to a tag, so it is sent only when every earlier delivery on the channel is settled.
//! A batch that finishes before an earlier one waits for it; acking it at once would also
//! ack the earlier batch's deliveries, still being handled, and a crash would lose them.
//! If the connection drops, unacked deliveries go back to the queue by themselves and come
//! back (marked redelivered) to this or another consumer, where the inbox deduplicates.
//!
//! [`Incoming`] is the one place the inbox meets lapin's types: a delivery becomes plain
//! data before [`Inbox::receive_batch`] sees it, so the inbox can be driven (and tested) without
//! a broker.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    Acker,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Inbox, Outcome};
use crate::{
    amqp::{self, AmqpConfig, BrokerLink, DeclareError},
    backoff::RetryPolicy,
    faults::{Faults, Switch},
};

/// A delivery as it came off the wire, independent of the AMQP client.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    pub message_id: Option<String>,
    pub event_type: Option<String>,
    pub content_type: Option<String>,
    /// The AMQP `timestamp` (seconds since the epoch): when the message was created.
    pub timestamp: Option<u64>,
    pub headers: Value,
    pub body: Vec<u8>,
}

impl Incoming {
    /// Takes the body out of `d` (no copy); the rest of the delivery stays usable for the ack.
    pub fn take_from(d: &mut Delivery) -> Self {
        let p = &d.properties;
        let headers = p
            .headers()
            .as_ref()
            .map(|t| {
                Value::Object(
                    t.inner()
                        .iter()
                        .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
                        .collect(),
                )
            })
            .unwrap_or(Value::Object(Default::default()));
        Incoming {
            message_id: p.message_id().as_ref().map(|s| s.to_string()),
            event_type: p.kind().as_ref().map(|s| s.to_string()),
            content_type: p.content_type().as_ref().map(|s| s.to_string()),
            timestamp: *p.timestamp(),
            headers,
            body: std::mem::take(&mut d.data),
        }
    }
}

fn amqp_to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(s) => Value::String(s.to_string()),
        AMQPValue::LongInt(i) => Value::from(*i),
        AMQPValue::LongLongInt(i) => Value::from(*i),
        AMQPValue::Boolean(b) => Value::Bool(*b),
        // The broker's `x-death`: an array of tables.
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(amqp_to_json).collect()),
        AMQPValue::FieldTable(t) => Value::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
                .collect(),
        ),
        AMQPValue::Timestamp(t) => Value::from(*t),
        other => Value::String(format!("{other:?}")),
    }
}

pub struct InboxConsumer {
    inbox: Inbox,
    amqp: AmqpConfig,
    queue: String,
    routing_keys: Vec<String>,
    name: String,
    broker: BrokerLink,
    role: Role,
    /// Batches in a row whose outcomes could not be recorded: the pause before handing the
    /// next one back grows with it.
    unrecorded_in_a_row: AtomicU32,
}

/// What a consumer of the inbox takes from which queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The service's queue, through [`Inbox::receive_batch`].
    Messages,
    /// Its dead-letter queue, through [`Inbox::receive_dead_letters`] (see
    /// [`super::dead_letters`]).
    DeadLetters,
}

impl InboxConsumer {
    pub fn new(
        inbox: Inbox,
        amqp: AmqpConfig,
        queue: impl Into<String>,
        routing_keys: &[&str],
        name: impl Into<String>,
    ) -> Self {
        let name = name.into();
        Self {
            inbox,
            amqp,
            queue: queue.into(),
            routing_keys: routing_keys.iter().map(|s| s.to_string()).collect(),
            broker: BrokerLink::new(name.clone()),
            name,
            role: Role::Messages,
            unrecorded_in_a_row: AtomicU32::new(0),
        }
    }

    /// The consumer of this one's dead-letter queue ([`amqp::dead_letter_queue`]), named
    /// `name`: it records what the broker dead-lettered as `dead` in the same inbox.
    pub fn dead_letters(&self, name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            inbox: self.inbox.clone(),
            amqp: self.amqp.clone(),
            queue: self.queue.clone(),
            routing_keys: self.routing_keys.clone(),
            broker: BrokerLink::new(name.clone()),
            name,
            role: Role::DeadLetters,
            unrecorded_in_a_row: AtomicU32::new(0),
        }
    }

    /// Broker connection state and node, for `/readyz` and `/metrics`.
    pub fn broker_link(&self) -> BrokerLink {
        self.broker.clone()
    }

    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker goes away.
    /// On shutdown it stops taking deliveries, lets those in progress finish and ack, then
    /// closes the channel (the broker requeues anything prefetched but not started).
    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = &self.amqp.reconnect;
        let mut failures = 0;
        while !shutdown.is_cancelled() {
            let result = self.consume_until_lost(&shutdown).await;
            // A connection that got as far as consuming was healthy: the next outage starts
            // its backoff from the beginning.
            if self.broker.is_connected() {
                failures = 0;
            }
            match result {
                Ok(()) => {}
                Err(e) => {
                    failures += 1;
                    let delay = backoff.delay(failures);
                    if e.downcast_ref::<DeclareError>()
                        .is_some_and(|d| matches!(d, DeclareError::Incompatible { .. }))
                    {
                        // Not the broker's hiccup: nothing changes until an operator acts.
                        tracing::error!(consumer = %self.name, error = %e, retry_in = ?delay, "the queue cannot be declared");
                    } else {
                        tracing::warn!(consumer = %self.name, error = format!("{e:#}"), retry_in = ?delay, "consumer lost the broker");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
            self.broker.set_disconnected();
        }
        tracing::info!(consumer = %self.name, "consumer stopped");
    }

    async fn consume_until_lost(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let (conn, node) = amqp::connect_link(&self.amqp, &self.broker).await?;
        let channel = conn.create_channel().await?;
        // Per consumer (`global: false`, the default): quorum queues refuse global QoS.
        channel
            .basic_qos(self.inbox.config().prefetch, BasicQosOptions::default())
            .await?;
        let keys: Vec<&str> = self.routing_keys.iter().map(String::as_str).collect();
        amqp::declare_queue(&channel, &self.amqp, &self.queue, &keys).await?;
        let queue = match self.role {
            Role::Messages => self.queue.clone(),
            Role::DeadLetters => amqp::dead_letter_queue(&self.queue),
        };
        let deliveries = channel
            .basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(self.name.as_str()),
                BasicConsumeOptions::default(), // no_ack = false: manual ack
                FieldTable::default(),
            )
            .await?;
        self.broker.set_connected(&node);
        tracing::info!(consumer = %self.name, %queue, %node, "consuming");

        // Each delivery in progress holds a database connection; leave some for the relay,
        // the listener, the sweeper and HTTP, or deliveries would time out waiting for one.
        let pool_size = self.inbox.pool().options().get_max_connections() as usize;
        let concurrency = (self.inbox.config().prefetch as usize)
            .min(pool_size.saturating_sub(RESERVED_CONNECTIONS))
            .max(1);
        // A stream error means the channel or connection is gone.
        let stream_error = std::sync::Mutex::new(None);
        // The teaching switches act on the service's queue, never on its dead letters.
        let faults = match self.role {
            Role::Messages => self.inbox.faults().clone(),
            Role::DeadLetters => Faults::off(),
        };
        let faults = &faults;
        let acks = tokio::sync::Mutex::new(AckWindow::default());
        deliveries
            .take_until(shutdown.cancelled())
            // Teaching fault: drop_broker_connection ends this connection like a lost one.
            .take_until(faults.consumer_drop())
            .ready_chunks(self.inbox.config().batch_size)
            .for_each_concurrent(concurrency, |chunk| {
                let (stream_error, acks) = (&stream_error, &acks);
                async move {
                    // Teaching fault: a stopped consumer holds its deliveries, unacked.
                    faults.wait_while(Switch::StopConsumer).await;
                    let mut batch = Vec::with_capacity(chunk.len());
                    for delivery in chunk {
                        match delivery {
                            Ok(delivery) => batch.push(delivery),
                            Err(e) => *stream_error.lock().unwrap() = Some(e),
                        }
                    }
                    self.handle_batch(batch, acks, faults).await;
                }
            })
            .await;
        let stream_error = stream_error.into_inner().unwrap();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            conn.close(200, ShortString::from("bye")),
        )
        .await;
        match stream_error {
            Some(e) => Err(e.into()),
            None if shutdown.is_cancelled() => Ok(()),
            // Closed by the broker, or by the drop_broker_connection teaching switch.
            None => anyhow::bail!("the consumer's connection was closed"),
        }
    }

    /// Receives a batch through the inbox (or records dead letters), hands back what could
    /// not be recorded, and acks the rest through the window once its outcomes are
    /// committed.
    async fn handle_batch(
        &self,
        mut batch: Vec<Delivery>,
        acks: &tokio::sync::Mutex<AckWindow>,
        faults: &Faults,
    ) {
        if batch.is_empty() {
            return;
        }
        let incoming = batch.iter_mut().map(Incoming::take_from).collect();
        let outcomes = match self.role {
            Role::Messages => self.inbox.receive_batch(incoming).await,
            Role::DeadLetters => self.inbox.receive_dead_letters(incoming).await,
        };
        // Teaching fault hold_ack: committed, then "crash" before the ack (the connection goes).
        if outcomes.iter().any(Option::is_some) && faults.take_hold_ack() {
            return;
        }
        let mut settled = Vec::with_capacity(batch.len());
        let mut handed_back = Vec::new();
        for (delivery, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Some(outcome) => {
                    if matches!(outcome, Outcome::Duplicate) && delivery.redelivered {
                        tracing::debug!(
                            delivery_tag = delivery.delivery_tag,
                            "redelivered copy dropped"
                        );
                    }
                    settled.push((delivery.delivery_tag, Some(delivery.acker)));
                }
                None => handed_back.push(delivery),
            }
        }
        if handed_back.is_empty() {
            self.unrecorded_in_a_row.store(0, Ordering::Relaxed);
        } else {
            // Each hand-back counts towards a quorum queue's delivery limit: the pause grows
            // while the database stays away, so a long outage spends few of them.
            let in_a_row = self.unrecorded_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
            tokio::time::sleep(NACK_PAUSE.delay(in_a_row as i32)).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            for delivery in handed_back {
                if let Err(e) = delivery.acker.nack(requeue).await {
                    tracing::warn!(delivery_tag = delivery.delivery_tag, error = %e, "nack failed; the broker requeues the delivery when the channel closes");
                }
                // Settled by the nack; no acker: a later `multiple` ack passes over it.
                settled.push((delivery.delivery_tag, None));
            }
        }
        // Held while acking: acks go out in tag order, never one that an earlier ack covered.
        let mut window = acks.lock().await;
        let Acks { multiple, single } = window.settle(settled);
        let sends = multiple
            .map(|a| (a, true))
            .into_iter()
            .chain(single.into_iter().map(|a| (a, false)));
        for (acker, multiple) in sends {
            if let Err(e) = acker.ack(BasicAckOptions { multiple }).await {
                // The outcomes are committed; redeliveries will be dropped as duplicates.
                tracing::warn!(error = %e, "ack failed after commit");
            }
        }
    }
}

/// The acks one settling calls for.
#[derive(Debug, PartialEq, Eq)]
pub struct Acks<A> {
    /// Ack with `multiple`: it settles this delivery and every one before it.
    pub multiple: Option<A>,
    /// Ack each alone: settled while an earlier delivery is still in progress.
    pub single: Vec<A>,
}

/// Which deliveries of one channel are settled (their outcomes committed, or handed back),
/// so that a `multiple` ack is sent only when it covers settled deliveries alone. Tags start
/// at 1 on a channel and grow by one per delivery, and every delivery of the channel passes
/// here. A batch that settles behind a delivery still in progress is acked delivery by
/// delivery instead: a slow message must not hold back the acks of the ones after it
/// (the broker would stop delivering once the prefetch count is unacked).
#[derive(Debug)]
pub struct AckWindow<A = Acker> {
    /// The lowest delivery tag not yet settled.
    next: u64,
    /// Settled tags above `next`: their acker until acked, then `None` (as when nacked).
    settled: BTreeMap<u64, Option<A>>,
}

impl<A> Default for AckWindow<A> {
    fn default() -> Self {
        Self {
            next: 1,
            settled: BTreeMap::new(),
        }
    }
}

impl<A> AckWindow<A> {
    /// Records settled deliveries and says how to ack them: with one `multiple` ack of the
    /// last acked delivery of the settled run that starts at the first unsettled tag (every
    /// tag it covers is settled), and each one beyond a gap alone.
    pub fn settle(&mut self, tags: impl IntoIterator<Item = (u64, Option<A>)>) -> Acks<A> {
        self.settled.extend(tags);
        let mut multiple = None;
        while let Some(acker) = self.settled.remove(&self.next) {
            if acker.is_some() {
                multiple = acker;
            }
            self.next += 1;
        }
        let single = self.settled.values_mut().filter_map(Option::take).collect();
        Acks { multiple, single }
    }

    /// The lowest tag not yet settled.
    #[cfg(test)]
    fn first_unsettled(&self) -> u64 {
        self.next
    }
}

/// Database connections the consumer leaves to the service's other users.
const RESERVED_CONNECTIONS: usize = 4;

/// Pause before handing back a delivery that could not be recorded: 1 s, doubling per batch
/// in a row that could not be recorded, up to 30 s (with jitter).
const NACK_PAUSE: RetryPolicy = RetryPolicy {
    base: Duration::from_secs(1),
    max: Duration::from_secs(30),
    max_attempts: i32::MAX,
};

#[cfg(test)]
mod tests {
    use super::{AckWindow, Acks};

    fn acked(tags: &[u64]) -> Vec<(u64, Option<u64>)> {
        tags.iter().map(|&t| (t, Some(t))).collect()
    }

    fn acks(multiple: Option<u64>, single: &[u64]) -> Acks<u64> {
        Acks {
            multiple,
            single: single.to_vec(),
        }
    }

    #[test]
    fn batches_settled_in_order_take_one_multiple_ack_each() {
        let mut window = AckWindow::default();
        assert_eq!(window.settle(acked(&[1, 2, 3])), acks(Some(3), &[]));
        assert_eq!(window.settle(acked(&[4, 5])), acks(Some(5), &[]));
        assert_eq!(window.first_unsettled(), 6);
    }

    #[test]
    fn a_batch_settled_behind_one_in_progress_is_acked_one_by_one_never_with_multiple() {
        let mut window = AckWindow::default();
        // 1..=4 are still being handled; 5..=8 finished first. A `multiple` ack of 8 would
        // ack 1..=4 too: lost on a crash.
        assert_eq!(
            window.settle(acked(&[5, 6, 7, 8])),
            acks(None, &[5, 6, 7, 8])
        );
        assert_eq!(window.first_unsettled(), 1);
        // The earlier batch settles: one `multiple` ack of 4; 5..=8 are not acked again.
        assert_eq!(window.settle(acked(&[1, 2, 3, 4])), acks(Some(4), &[]));
        assert_eq!(window.first_unsettled(), 9);
        assert_eq!(window.settle(acked(&[9])), acks(Some(9), &[]));
    }

    #[test]
    fn handed_back_deliveries_are_passed_over_and_never_acked() {
        let mut window = AckWindow::default();
        // 1 and 2 were nacked (requeued): nothing to ack.
        assert_eq!(window.settle([(1, None), (2, None)]), acks(None, &[]));
        // 3 acked, 4 nacked: the ack is 3's, and 4 is settled.
        assert_eq!(window.settle([(3, Some(3)), (4, None)]), acks(Some(3), &[]));
        assert_eq!(window.first_unsettled(), 5);
        // 6 nacked ahead of 5: passed over once 5 settles.
        assert_eq!(window.settle([(6, None)]), acks(None, &[]));
        assert_eq!(window.settle(acked(&[5])), acks(Some(5), &[]));
        assert_eq!(window.first_unsettled(), 7);
    }
}
