//! The AMQP side of the inbox: consume with manual ack, hand each delivery to
//! [`Inbox::receive`], ack only after its outcome is committed.
//!
//! Deliveries are processed concurrently up to the prefetch count (the broker never has
//! more than that many unacked on this channel), and at most as many as the pool can
//! serve while leaving a few connections to the rest of the service. A delivery whose outcome could not be
//! recorded (the database is down) is nacked with requeue after a pause, so the broker
//! keeps it; the pause keeps a database outage from turning into a hot redelivery loop.
//! If the connection drops, unacked deliveries go back to the queue by themselves and come
//! back (marked redelivered) to this or another consumer, where the inbox deduplicates.
//!
//! [`Incoming`] is the one place the inbox meets lapin's types: a delivery becomes plain
//! data before [`Inbox::receive`] sees it, so the inbox can be driven (and tested) without
//! a broker.

use std::time::Duration;

use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Inbox, Outcome};
use crate::{
    amqp::{self, AmqpConfig, BrokerStatus},
    faults::Switch,
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
        other => Value::String(format!("{other:?}")),
    }
}

pub struct InboxConsumer {
    inbox: Inbox,
    amqp: AmqpConfig,
    queue: String,
    routing_keys: Vec<String>,
    name: String,
    status: BrokerStatus,
}

impl InboxConsumer {
    pub fn new(
        inbox: Inbox,
        amqp: AmqpConfig,
        queue: impl Into<String>,
        routing_keys: &[&str],
        name: impl Into<String>,
    ) -> Self {
        Self {
            inbox,
            amqp,
            queue: queue.into(),
            routing_keys: routing_keys.iter().map(|s| s.to_string()).collect(),
            name: name.into(),
            status: BrokerStatus::default(),
        }
    }

    pub fn status(&self) -> BrokerStatus {
        self.status.clone()
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
            if self.status.is_connected() {
                failures = 0;
            }
            match result {
                Ok(()) => {}
                Err(e) => {
                    failures += 1;
                    let delay = backoff.delay(failures);
                    tracing::warn!(consumer = %self.name, error = format!("{e:#}"), retry_in = ?delay, "consumer lost the broker");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
            self.status.set(false);
        }
        tracing::info!(consumer = %self.name, "consumer stopped");
    }

    async fn consume_until_lost(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let conn = amqp::connect(&self.amqp, &self.name).await?;
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(self.inbox.config().prefetch, BasicQosOptions::default())
            .await?;
        let keys: Vec<&str> = self.routing_keys.iter().map(String::as_str).collect();
        amqp::declare_queue(&channel, &self.amqp, &self.queue, &keys).await?;
        let deliveries = channel
            .basic_consume(
                ShortString::from(self.queue.as_str()),
                ShortString::from(self.name.as_str()),
                BasicConsumeOptions::default(), // no_ack = false: manual ack
                FieldTable::default(),
            )
            .await?;
        self.status.set(true);
        tracing::info!(consumer = %self.name, queue = %self.queue, "consuming");

        // Each delivery in progress holds a database connection; leave some for the relay,
        // the listener, the sweeper and HTTP, or deliveries would time out waiting for one.
        let pool_size = self.inbox.pool().options().get_max_connections() as usize;
        let concurrency = (self.inbox.config().prefetch as usize)
            .min(pool_size.saturating_sub(RESERVED_CONNECTIONS))
            .max(1);
        // A stream error means the channel or connection is gone.
        let stream_error = std::sync::Mutex::new(None);
        let faults = self.inbox.faults();
        deliveries
            .take_until(shutdown.cancelled())
            // Teaching fault: drop_broker_connection ends this connection like a lost one.
            .take_until(faults.consumer_drop())
            .for_each_concurrent(concurrency, |delivery| {
                let stream_error = &stream_error;
                async move {
                    // Teaching fault: a stopped consumer holds its deliveries, unacked.
                    faults.wait_while(Switch::StopConsumer).await;
                    match delivery {
                        Ok(delivery) => handle_delivery(&self.inbox, delivery).await,
                        Err(e) => *stream_error.lock().unwrap() = Some(e),
                    }
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
}

/// Receives one delivery through the inbox and acks it once its outcome is committed.
async fn handle_delivery(inbox: &Inbox, mut delivery: Delivery) {
    let incoming = Incoming::take_from(&mut delivery);
    let message_id = incoming.message_id.clone();
    match inbox.receive(incoming).await {
        Ok(outcome) => {
            if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
                // The outcome is committed; a redelivery will be dropped as a duplicate.
                tracing::warn!(?message_id, error = %e, ?outcome, "ack failed after commit");
            }
            if matches!(outcome, Outcome::Duplicate) && delivery.redelivered {
                tracing::debug!(?message_id, "redelivered copy dropped");
            }
        }
        Err(e) => {
            tracing::warn!(?message_id, error = %e, "could not record the delivery; handing it back to the broker");
            tokio::time::sleep(NACK_PAUSE).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            if let Err(e) = delivery.acker.nack(requeue).await {
                tracing::warn!(?message_id, error = %e, "nack failed; the broker requeues the delivery when the channel closes");
            }
        }
    }
}

/// Database connections the consumer leaves to the service's other users.
const RESERVED_CONNECTIONS: usize = 4;

/// Pause before handing back a delivery that could not be recorded.
const NACK_PAUSE: Duration = Duration::from_secs(1);
