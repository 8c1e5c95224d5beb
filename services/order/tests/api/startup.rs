//! Start-up checks of the order service on configs built in code: the inbox remembers message
//! ids for as long as copies can arrive, and a lease outlasts the confirm window. A
//! configuration that could process a message twice never starts, nor one whose queue the
//! broker refuses to declare.

use std::time::Duration;

use message_table::amqp::{AmqpConfig, QueueType};
use service_kit::service::MessagingConfig;
use service_kit::service::ServiceConfig;
use test_kit::{TestDb, TestQueue};

/// Builds order on `amqp` with the test messaging settings changed by `change`.
async fn build(
    amqp: &AmqpConfig,
    change: impl FnOnce(&mut MessagingConfig),
) -> anyhow::Result<service_kit::service::Service> {
    let db = TestDb::new(&order::MIGRATOR).await;
    let mut messaging = test_kit::messaging(amqp, "test.order", messages::ORDER_QUEUE.routing_keys);
    change(&mut messaging);
    let cfg = ServiceConfig {
        addr: "127.0.0.1:0".into(),
        database_url: db.url.clone(),
        db_max_connections: 5,
        admin: test_kit::admin(),
        messaging,
    };
    order::build(cfg, None).await
}

/// [`build`] with a change that must make `Service::build` refuse the configuration; the
/// error.
async fn refused_at_start_up(change: impl FnOnce(&mut MessagingConfig)) -> String {
    match build(&test_kit::test_amqp(), change).await {
        Ok(_) => panic!("a configuration that must be refused started"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn an_inbox_retention_shorter_than_the_redelivery_horizon_is_refused_at_start_up() {
    let err = refused_at_start_up(|messaging| {
        // Messages may be published for a day; the inbox would remember them for an hour.
        messaging.outbox.message_ttl = Duration::from_secs(24 * 3600);
        messaging.inbox.retention = Duration::from_secs(3600);
    })
    .await;
    assert!(
        err.contains("INBOX_RETENTION_SECS (3600s) is shorter than the redelivery horizon"),
        "{err}"
    );
    assert!(err.contains("OUTBOX_MESSAGE_TTL_SECS 86400s"), "{err}");
}

/// Configs built in code go through the same checks as settings from the environment.
#[tokio::test]
async fn a_config_built_in_code_with_a_lease_too_short_is_refused_at_start_up() {
    let err = refused_at_start_up(|messaging| {
        // A lease that can expire while its window is in flight: duplicates.
        messaging.outbox.lease = messaging.outbox.confirm_timeout + Duration::from_secs(1);
    })
    .await;
    assert!(
        err.contains("OUTBOX_LEASE_MS") && err.contains("OUTBOX_CONFIRM_TIMEOUT_MS"),
        "{err}"
    );
}

/// A queue an earlier run declared classic, where a quorum queue is now declared: the broker
/// refuses (406 PRECONDITION_FAILED), and the service stops at start-up saying what to do,
/// instead of a consumer retrying the refused declaration for ever. With
/// `AMQP_QUEUE_TYPE=classic` the same queue is accepted.
#[tokio::test]
async fn a_classic_queue_where_a_quorum_one_is_declared_stops_the_start_up_saying_what_to_do() {
    let classic = AmqpConfig {
        queue_type: QueueType::Classic,
        ..test_kit::test_amqp()
    };
    let queue = test_kit::unique_name("test.order");
    let broker = TestQueue::bind(&classic, &[]).await;
    broker.declare(&classic, &queue, &[]).await;

    let err = refused_at_start_up(|messaging| messaging.queue = queue.clone()).await;
    assert!(
        err.contains("PRECONDITION_FAILED") && err.contains("inequivalent arg"),
        "the broker's reply: {err}"
    );
    assert!(
        err.contains(&format!("rabbitmqctl delete_queue {queue}"))
            && err.contains("AMQP_QUEUE_TYPE"),
        "what to do: {err}"
    );

    build(&classic, |messaging| messaging.queue = queue.clone())
        .await
        .expect("a classic queue declared classic starts");
}
