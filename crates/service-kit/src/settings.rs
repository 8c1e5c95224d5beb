//! The message table's settings as environment variables: one clap group per part of
//! [`MessagingConfig`], flattened into each service's settings ([`MessagingSettings`]), and
//! turned into the plain config structs of `message_table`. Names, units and defaults are
//! docs/configuration.md's. Nothing is checked here: [`MessagingConfig::validate`] checks settings and
//! configs built in code alike, when the service is built.

use std::{str::FromStr, time::Duration};

use message_table::{
    amqp::{AmqpConfig, QueueType},
    backoff::RetryPolicy,
    inbox::InboxConfig,
    outbox::OutboxConfig,
    retention::RetentionConfig,
};

use crate::service::MessagingConfig;

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Broker")]
pub struct AmqpSettings {
    /// The broker: one address, or the nodes of one cluster, comma-separated (tried in turn).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// The durable topic exchange every event goes through.
    #[arg(long, env = "AMQP_EXCHANGE", default_value = "lmt.events")]
    pub amqp_exchange: String,
    /// How the service's queue is declared: `quorum` (replicated, with a delivery limit and
    /// a dead-letter queue) or `classic`.
    #[arg(long, env = "AMQP_QUEUE_TYPE", default_value = "quorum", value_parser = QueueType::from_str)]
    pub amqp_queue_type: QueueType,
    /// Quorum queues: deliveries of a message before the broker dead-letters it.
    #[arg(long, env = "AMQP_DELIVERY_LIMIT", default_value_t = 20)]
    pub amqp_delivery_limit: u32,
    /// `x-expires` of the service's queue, 0 for never (throw-away set-ups only).
    #[arg(long, env = "AMQP_QUEUE_EXPIRES_MS", default_value_t = 0)]
    pub amqp_queue_expires_ms: u64,
    /// First wait before reconnecting to the broker (doubles, equal jitter).
    #[arg(long, env = "AMQP_RECONNECT_BASE_MS", default_value_t = 200)]
    pub amqp_reconnect_base_ms: u64,
    /// Longest wait between reconnection attempts.
    #[arg(long, env = "AMQP_RECONNECT_MAX_MS", default_value_t = 5_000)]
    pub amqp_reconnect_max_ms: u64,
    /// The broker's management API (`http://user:password@host:15672`), read by
    /// `/admin/queue` for the queue's unacknowledged count; unset: a passive declare (ready
    /// count only).
    #[arg(long, env = "RABBITMQ_MANAGEMENT_URL", default_value = "")]
    pub rabbitmq_management_url: String,
}

impl From<AmqpSettings> for AmqpConfig {
    fn from(s: AmqpSettings) -> Self {
        let expires = s.amqp_queue_expires_ms;
        Self {
            url: s.amqp_url,
            exchange: s.amqp_exchange,
            queue_type: s.amqp_queue_type,
            delivery_limit: s.amqp_delivery_limit,
            queue_expires: (expires > 0).then(|| Duration::from_millis(expires)),
            exchange_auto_delete: false,
            reconnect: RetryPolicy {
                base: Duration::from_millis(s.amqp_reconnect_base_ms),
                max: Duration::from_millis(s.amqp_reconnect_max_ms),
                max_attempts: i32::MAX,
            },
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Outbox")]
pub struct OutboxSettings {
    /// Rows claimed and published (in flight together) per relay round.
    #[arg(long, env = "OUTBOX_BATCH_SIZE", default_value_t = 200)]
    pub outbox_batch_size: i64,
    /// Relays side by side, each on its own broker connection (1 to 16).
    #[arg(long, env = "OUTBOX_RELAYS", default_value_t = 1)]
    pub outbox_relays: usize,
    /// How long a claim holds a row; must exceed the confirm timeout by at least 5 s.
    #[arg(long, env = "OUTBOX_LEASE_MS", default_value_t = 30_000)]
    pub outbox_lease_ms: u64,
    /// Deadline for a window's publishes and confirms.
    #[arg(long, env = "OUTBOX_CONFIRM_TIMEOUT_MS", default_value_t = 10_000)]
    pub outbox_confirm_timeout_ms: u64,
    /// Fallback poll when no NOTIFY arrives.
    #[arg(long, env = "OUTBOX_POLL_INTERVAL_MS", default_value_t = 1_000)]
    pub outbox_poll_interval_ms: u64,
    /// An unsent message older than this is dead.
    #[arg(long, env = "OUTBOX_MESSAGE_TTL_SECS", default_value_t = 24 * 3600)]
    pub outbox_message_ttl_secs: u64,
    /// First publish retry delay (doubles, equal jitter).
    #[arg(long, env = "OUTBOX_RETRY_BASE_MS", default_value_t = 500)]
    pub outbox_retry_base_ms: u64,
    /// Longest publish retry delay.
    #[arg(long, env = "OUTBOX_RETRY_MAX_MS", default_value_t = 60_000)]
    pub outbox_retry_max_ms: u64,
    /// Publish attempts before dead.
    #[arg(long, env = "OUTBOX_MAX_ATTEMPTS", default_value_t = 12)]
    pub outbox_max_attempts: i32,
    /// Sent rows are deleted this long after they were sent.
    #[arg(long, env = "OUTBOX_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub outbox_retention_secs: u64,
}

impl From<OutboxSettings> for OutboxConfig {
    fn from(s: OutboxSettings) -> Self {
        Self {
            batch_size: s.outbox_batch_size,
            relays: s.outbox_relays,
            lease: Duration::from_millis(s.outbox_lease_ms),
            confirm_timeout: Duration::from_millis(s.outbox_confirm_timeout_ms),
            poll_interval: Duration::from_millis(s.outbox_poll_interval_ms),
            message_ttl: Duration::from_secs(s.outbox_message_ttl_secs),
            retry: RetryPolicy {
                base: Duration::from_millis(s.outbox_retry_base_ms),
                max: Duration::from_millis(s.outbox_retry_max_ms),
                max_attempts: s.outbox_max_attempts,
            },
            retention: Duration::from_secs(s.outbox_retention_secs),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Inbox")]
pub struct InboxSettings {
    /// Unacked deliveries the broker may push to a consumer.
    #[arg(long, env = "INBOX_PREFETCH", default_value_t = 256)]
    pub inbox_prefetch: u16,
    /// Most deliveries handled in one transaction (whatever has arrived, never a wait).
    #[arg(long, env = "INBOX_BATCH_SIZE", default_value_t = 128)]
    pub inbox_batch_size: usize,
    /// First handler retry delay.
    #[arg(long, env = "INBOX_RETRY_BASE_MS", default_value_t = 1_000)]
    pub inbox_retry_base_ms: u64,
    /// Longest handler retry delay.
    #[arg(long, env = "INBOX_RETRY_MAX_MS", default_value_t = 300_000)]
    pub inbox_retry_max_ms: u64,
    /// Handler runs before dead.
    #[arg(long, env = "INBOX_MAX_ATTEMPTS", default_value_t = 8)]
    pub inbox_max_attempts: i32,
    /// Longest sleep of the retry sweeper.
    #[arg(long, env = "INBOX_POLL_INTERVAL_MS", default_value_t = 1_000)]
    pub inbox_poll_interval_ms: u64,
    /// Larger message bodies are poison.
    #[arg(long, env = "INBOX_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub inbox_max_body_bytes: usize,
    /// Processed rows (the memory of message ids) are deleted this long after processing;
    /// at least the redelivery horizon.
    #[arg(long, env = "INBOX_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub inbox_retention_secs: u64,
}

impl From<InboxSettings> for InboxConfig {
    fn from(s: InboxSettings) -> Self {
        Self {
            prefetch: s.inbox_prefetch,
            batch_size: s.inbox_batch_size,
            retry: RetryPolicy {
                base: Duration::from_millis(s.inbox_retry_base_ms),
                max: Duration::from_millis(s.inbox_retry_max_ms),
                max_attempts: s.inbox_max_attempts,
            },
            poll_interval: Duration::from_millis(s.inbox_poll_interval_ms),
            max_body_bytes: s.inbox_max_body_bytes,
            retention: Duration::from_secs(s.inbox_retention_secs),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Retention")]
pub struct RetentionSettings {
    /// How often the retention pass runs (one instance at a time).
    #[arg(long, env = "RETENTION_INTERVAL_SECS", default_value_t = 600)]
    pub retention_interval_secs: u64,
    /// Rows deleted per statement.
    #[arg(long, env = "RETENTION_BATCH_SIZE", default_value_t = 1_000)]
    pub retention_batch_size: i64,
}

impl From<RetentionSettings> for RetentionConfig {
    fn from(s: RetentionSettings) -> Self {
        Self {
            interval: Duration::from_secs(s.retention_interval_secs),
            batch_size: s.retention_batch_size,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Teaching")]
pub struct DemoSettings {
    /// `1`: the teaching fault switches at /admin/faults (behind ADMIN_TOKEN); never in
    /// production.
    #[arg(
        long,
        env = "DEMO_FAULTS",
        default_value = "false",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub demo_faults: bool,
}

/// Every group, flattened once into a service's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct MessagingSettings {
    #[command(flatten)]
    pub amqp: AmqpSettings,
    #[command(flatten)]
    pub outbox: OutboxSettings,
    #[command(flatten)]
    pub inbox: InboxSettings,
    #[command(flatten)]
    pub retention: RetentionSettings,
    #[command(flatten)]
    pub demo: DemoSettings,
}

impl MessagingSettings {
    /// The service's messaging: these settings, its queue and the routing keys bound to it.
    pub fn into_config(self, queue: String, routing_keys: &[&str]) -> MessagingConfig {
        let management_url =
            Some(self.amqp.rabbitmq_management_url.clone()).filter(|u| !u.is_empty());
        MessagingConfig {
            management_url,
            amqp: self.amqp.into(),
            outbox: self.outbox.into(),
            inbox: self.inbox.into(),
            queue,
            routing_keys: routing_keys.iter().map(|k| k.to_string()).collect(),
            retention: self.retention.into(),
            demo_faults: self.demo.demo_faults,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Test {
        #[command(flatten)]
        messaging: MessagingSettings,
    }

    /// The defaults, as a service without any variable set gets them.
    fn defaults() -> MessagingConfig {
        Test::parse_from(["test"])
            .messaging
            .into_config("q".into(), &["k"])
    }

    type Change = fn(&mut MessagingConfig);

    fn refused(change: Change) -> String {
        let mut cfg = defaults();
        change(&mut cfg);
        match cfg.validate() {
            Ok(()) => panic!("accepted: {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_defaults_are_valid_and_the_ones_of_today() {
        let cfg = defaults();
        cfg.validate().unwrap();
        assert_eq!(cfg.outbox.lease, Duration::from_secs(30));
        assert_eq!(cfg.outbox.message_ttl, Duration::from_secs(86_400));
        assert_eq!(cfg.inbox.max_body_bytes, 1 << 20);
        assert_eq!(cfg.amqp.queue_expires, None);
        assert_eq!(cfg.amqp.queue_type, QueueType::Quorum);
        assert_eq!(cfg.amqp.delivery_limit, 20);
        assert_eq!(cfg.routing_keys, ["k"]);
        assert!(!cfg.demo_faults);
    }

    #[test]
    fn validation_covers_every_part() {
        let cases: [(&str, Change); 14] = [
            ("AMQP_URL", |c| c.amqp.url = "amqp://a,,amqp://b".into()),
            ("AMQP_DELIVERY_LIMIT", |c| c.amqp.delivery_limit = 0),
            ("AMQP_RECONNECT_BASE_MS", |c| {
                c.amqp.reconnect.base = Duration::ZERO
            }),
            ("AMQP_RECONNECT_MAX_MS", |c| {
                c.amqp.reconnect.max = Duration::from_millis(1)
            }),
            ("OUTBOX_BATCH_SIZE", |c| c.outbox.batch_size = 0),
            ("OUTBOX_RELAYS", |c| c.outbox.relays = 0),
            ("OUTBOX_MAX_ATTEMPTS", |c| c.outbox.retry.max_attempts = 0),
            ("OUTBOX_CONFIRM_TIMEOUT_MS", |c| {
                c.outbox.lease = c.outbox.confirm_timeout
            }),
            ("INBOX_PREFETCH", |c| c.inbox.prefetch = 0),
            ("INBOX_BATCH_SIZE", |c| c.inbox.batch_size = 0),
            ("INBOX_MAX_ATTEMPTS", |c| c.inbox.retry.max_attempts = 0),
            ("RETENTION_INTERVAL_SECS", |c| {
                c.retention.interval = Duration::ZERO
            }),
            ("RETENTION_BATCH_SIZE", |c| c.retention.batch_size = 0),
            ("INBOX_RETENTION_SECS", |c| {
                c.inbox.retention = Duration::from_secs(60)
            }),
        ];
        for (variable, change) in cases {
            let err = refused(change);
            assert!(err.contains(variable), "{variable}: {err}");
        }
    }
}
