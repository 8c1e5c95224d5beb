//! Start-up checks of the order service's configuration: a configuration that could process a
//! message twice never starts.

use std::time::Duration;

use order::{Application, OrderConfig};
use test_kit::TestDb;

#[tokio::test]
async fn an_inbox_retention_shorter_than_the_redelivery_horizon_is_refused_at_start_up() {
    let db = TestDb::new(&order::MIGRATOR).await;
    let amqp = test_kit::test_amqp();
    let mut messaging =
        test_kit::messaging(&amqp, "test.order", order::config::PAYMENT_RESULT_KEYS);
    // Messages may be published for a day; the inbox would remember them for an hour.
    messaging.outbox.message_ttl = Duration::from_secs(24 * 3600);
    messaging.inbox.retention = Duration::from_secs(3600);
    let cfg = OrderConfig {
        addr: "127.0.0.1:0".into(),
        database_url: db.url.clone(),
        db_max_connections: 5,
        messaging,
    };
    let err = match Application::build(cfg).await {
        Ok(_) => panic!("a configuration that can process a message twice started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("INBOX_RETENTION_SECS (3600s) is shorter than the redelivery horizon"),
        "{err}"
    );
    assert!(err.contains("OUTBOX_MESSAGE_TTL_SECS 86400s"), "{err}");
}
