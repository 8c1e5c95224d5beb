//! The inbox consumer on the real broker: it survives a cut connection and a panicking
//! handler, and stops on shutdown.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use common::{
    inbox::{
        HandlerError, Inbox, InboxCounters, InboxMessage, MessageHandler, consumer::InboxConsumer,
    },
    testing::{self, TcpProxy, TestDb, TestQueue},
};
use lapin::{BasicProperties, types::ShortString};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Counts messages; panics on a payload `{"boom": true}`.
struct Handler(Arc<AtomicUsize>);

#[async_trait]
impl MessageHandler for Handler {
    async fn handle(&self, _tx: &mut PgConnection, msg: &InboxMessage) -> Result<(), HandlerError> {
        if msg.payload["boom"] == true {
            panic!("handler bug");
        }
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn props() -> BasicProperties {
    BasicProperties::default()
        .with_type(ShortString::from("Test"))
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(Uuid::now_v7().to_string()))
}

struct Running {
    _db: TestDb,
    handled: Arc<AtomicUsize>,
    counters: Arc<InboxCounters>,
    connected: common::amqp::BrokerStatus,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    publisher: TestQueue,
}

async fn start(
    amqp: &common::amqp::AmqpConfig,
    consumer_amqp: common::amqp::AmqpConfig,
) -> Running {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let inbox = Inbox::new(
        db.pool.clone(),
        Arc::new(Handler(handled.clone())),
        testing::fast_inbox(),
    );
    let counters = inbox.counters();
    let consumer = InboxConsumer::new(
        inbox,
        consumer_amqp,
        testing::unique_name("test.q"),
        &["k"],
        "test-consumer",
    );
    let connected = consumer.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer.run(stop.clone()));
    testing::eventually("consumer connected", Duration::from_secs(10), || async {
        connected.is_connected().then_some(())
    })
    .await;
    let publisher = TestQueue::bind(amqp, &["unused"]).await;
    Running {
        _db: db,
        handled,
        counters,
        connected,
        stop,
        task,
        publisher,
    }
}

impl Running {
    async fn wait_handled(&self, n: usize) {
        testing::eventually(
            &format!("{n} messages handled"),
            Duration::from_secs(20),
            || async { (self.handled.load(Ordering::SeqCst) == n).then_some(()) },
        )
        .await;
    }
}

#[tokio::test]
async fn the_consumer_reconnects_after_its_connection_is_cut() {
    let amqp = testing::test_amqp();
    let proxy = TcpProxy::start(testing::broker_addr()).await;
    let c = start(&amqp, testing::through_proxy(&amqp, &proxy)).await;
    c.publisher.publish(&amqp, "k", props(), b"{}").await;
    c.wait_handled(1).await;

    proxy.disable().await;
    testing::eventually(
        "consumer sees the loss",
        Duration::from_secs(10),
        || async { (!c.connected.is_connected()).then_some(()) },
    )
    .await;
    // Published while the consumer is away: the durable queue keeps it.
    c.publisher.publish(&amqp, "k", props(), b"{}").await;
    proxy.enable().await;
    c.wait_handled(2).await;
    assert!(c.connected.is_connected());

    c.stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), c.task)
        .await
        .expect("the consumer stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn a_panicking_handler_is_a_recorded_failure_and_the_consumer_goes_on() {
    let amqp = testing::test_amqp();
    let c = start(&amqp, amqp.clone()).await;
    c.publisher
        .publish(&amqp, "k", props(), br#"{"boom": true}"#)
        .await;
    c.publisher.publish(&amqp, "k", props(), b"{}").await;
    c.wait_handled(1).await;
    testing::eventually(
        "the panic recorded as a failure",
        Duration::from_secs(10),
        || async { (InboxCounters::get(&c.counters.failed) >= 1).then_some(()) },
    )
    .await;
    assert!(
        !c.task.is_finished(),
        "the consumer task survived the panic"
    );
    assert!(c.connected.is_connected());
    let (status, error): (String, String) =
        sqlx::query_as("SELECT status, last_error FROM inbox WHERE payload ? 'boom'")
            .fetch_one(&c._db.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains("handler panicked: handler bug"), "{error}");
}
