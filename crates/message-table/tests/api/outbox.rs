//! The outbox relay and resend scheduler against a real database and a real broker.
//! Workers are driven one round at a time, so each test says exactly what happened.

use std::{collections::HashSet, time::Duration};

use message_table::outbox::{
    self, NewMessage, OutboxConfig, OutboxStatus,
    relay::{PublishFailure, PublishOutcome, Relay, RelayReport, Relays},
    resend_scheduler::{LEASE_EXPIRED, OWNER_GONE, ResendScheduler},
};
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool};
use test_kit::{TcpProxy, TestDb, TestQueue};
use uuid::Uuid;

use crate::support;

const KEY: &str = "test.created";
/// Bound to a queue that rejects every publish: the broker nacks.
const NACKED_KEY: &str = "test.rejected";

async fn enqueue(pool: &PgPool, n: usize, ttl: Duration) -> Vec<Uuid> {
    let mut tx = pool.begin().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let msg = NewMessage::new(Uuid::now_v7(), "TestEvent", KEY, json!({ "n": i }));
        outbox::enqueue(&mut tx, &msg, ttl).await.unwrap();
        ids.push(msg.id);
    }
    tx.commit().await.unwrap();
    ids
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    status: OutboxStatus,
    attempts: i32,
    last_error: Option<String>,
    claim_token: Option<Uuid>,
}

async fn row(pool: &PgPool, id: Uuid) -> Row {
    sqlx::query_as("SELECT status, attempts, last_error, claim_token FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn message_ids(deliveries: &[lapin::message::Delivery]) -> Vec<Uuid> {
    deliveries
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .unwrap()
                .as_str()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Makes every backed-off row due now (instead of sleeping through its backoff).
async fn make_due(pool: &PgPool) {
    sqlx::query("UPDATE outbox SET next_attempt_at = now() WHERE status = $1")
        .bind(OutboxStatus::Pending)
        .execute(pool)
        .await
        .unwrap();
}

fn relay(db: &TestDb, amqp: &message_table::amqp::AmqpConfig, cfg: OutboxConfig) -> Relay {
    Relay::new(db.pool.clone(), amqp.clone(), cfg, "test-relay")
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_business_row_no_message_row_and_publishes_nothing() {
    let db = support::test_db().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;

    let mut tx = db.pool.begin().await.unwrap();
    let note_id = Uuid::now_v7();
    let msg = NewMessage::new(note_id, "NoteWritten", KEY, json!({ "note_id": note_id }));
    sqlx::query("INSERT INTO notes (id, body) VALUES ($1, 'hello')")
        .bind(note_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox::enqueue(&mut tx, &msg, Duration::from_secs(60))
        .await
        .unwrap();
    // A later statement of the same transaction fails (a note must not be empty)...
    let failed = sqlx::query("INSERT INTO notes (id, body) VALUES ($1, '')")
        .bind(Uuid::now_v7())
        .execute(&mut *tx)
        .await;
    assert!(failed.is_err());
    tx.rollback().await.unwrap();

    // ...so neither the note nor its message exists, and nothing is ever published.
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((notes, messages), (0, 0));
    let report = relay(&db, &amqp, test_kit::fast_outbox())
        .run_once()
        .await
        .unwrap();
    assert_eq!(report.claimed, 0);
    assert!(queue.take_all().await.is_empty());
}

/// One window holds messages the broker acks, nacks and returns, interleaved: each row
/// ends as its own answer says. A matching that shifted by one, or took a neighbour's
/// confirm, would mark a nacked or returned row sent (lost) or an acked one pending.
#[tokio::test]
async fn confirms_are_pipelined_and_each_row_is_matched_to_its_own_confirm() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let (full, _conn) = refusing_queue(&amqp, NACKED_KEY).await;

    // 250 rows in creation order: every 5th is nacked, every 7th (not 5th) returned.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Answer {
        Ack,
        Nack,
        Return,
    }
    let answer = |i: usize| match i {
        _ if i.is_multiple_of(5) => Answer::Nack,
        _ if i.is_multiple_of(7) => Answer::Return,
        _ => Answer::Ack,
    };
    let mut tx = db.pool.begin().await.unwrap();
    let mut rows = Vec::new();
    for i in 0..250 {
        let key = match answer(i) {
            Answer::Ack => KEY,
            Answer::Nack => NACKED_KEY,
            // Bound to nothing: with `mandatory` the broker returns it.
            Answer::Return => "test.nobody-listens",
        };
        let msg = NewMessage::new(Uuid::now_v7(), "TestEvent", key, json!({ "n": i }));
        outbox::enqueue(&mut tx, &msg, Duration::from_secs(60))
            .await
            .unwrap();
        rows.push((msg.id, answer(i)));
    }
    tx.commit().await.unwrap();

    let mut cfg = test_kit::fast_outbox();
    // A failed row is not due again during the test: each row is published once.
    cfg.retry.base = Duration::from_secs(600);
    cfg.retry.max = Duration::from_secs(600);
    let mut relay = relay(&db, &amqp, cfg);
    let mut total = RelayReport::default();
    loop {
        let report = relay.run_once().await.unwrap();
        if report.claimed == 0 {
            break;
        }
        total.claimed += report.claimed;
        total.sent += report.sent;
        total.retried += report.retried;
    }
    let count = |a: Answer| rows.iter().filter(|(_, x)| *x == a).count();
    assert!(count(Answer::Nack) > 0 && count(Answer::Return) > 0);
    assert_eq!(total.claimed, 250, "each row claimed once: windows of 100");
    assert_eq!(total.sent, count(Answer::Ack));
    assert_eq!(total.retried, count(Answer::Nack) + count(Answer::Return));

    for (id, answer) in &rows {
        let r = row(&db.pool, *id).await;
        assert_eq!(r.attempts, 1, "{id} ({answer:?})");
        assert!(r.claim_token.is_none(), "{id} ({answer:?})");
        let error = r.last_error.as_deref().unwrap_or("");
        match answer {
            Answer::Ack => assert_eq!((r.status, error), (OutboxStatus::Sent, ""), "{id}"),
            Answer::Nack => {
                assert_eq!(r.status, OutboxStatus::Pending, "{id} nacked");
                assert!(error.contains("nacked"), "{id}: {error}");
            }
            Answer::Return => {
                assert_eq!(r.status, OutboxStatus::Pending, "{id} returned");
                assert!(error.contains("NO_ROUTE"), "{id}: {error}");
            }
        }
    }
    let acked: Vec<Uuid> = rows
        .iter()
        .filter(|(_, a)| *a == Answer::Ack)
        .map(|(id, _)| *id)
        .collect();
    let delivered = message_ids(&queue.take_all().await);
    assert_eq!(
        delivered, acked,
        "the acked ones published once each, in creation order"
    );
    assert_eq!(
        queue.ready_count(&full).await,
        0,
        "the full queue took nothing"
    );
}

/// A queue that is always full and rejects what comes (`x-max-length` 0 with `x-overflow`
/// reject-publish), bound to `key` on the test's exchange (declared already): RabbitMQ nacks every message routed to it. Its name and
/// the connection that declared it (deleting the queue lifts the refusal).
async fn refusing_queue(
    amqp: &message_table::amqp::AmqpConfig,
    key: &str,
) -> (String, lapin::Connection) {
    let full = test_kit::unique_name("test.full");
    let conn = message_table::amqp::connect(amqp, "test-full-queue")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let args = message_table::amqp::refusing_queue_arguments(amqp);
    message_table::amqp::declare_queue_with(&channel, amqp, &full, &[key], args)
        .await
        .unwrap();
    (full, conn)
}

/// Whether the row's next attempt is due (its backoff over or brought forward).
async fn is_due(pool: &PgPool, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT next_attempt_at <= now() FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// While the broker refuses every publish (a quorum queue electing a new leader nacks them
/// all), each refusal backs its row off; the first window confirmed again proves the broker
/// back, and the rows it refused are due at once instead of waiting out their backoff
/// (here ten minutes), with their attempts kept.
#[tokio::test]
async fn once_the_broker_confirms_again_the_rows_it_refused_are_due_at_once() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    // Declares the exchange, with nothing bound yet but the refusing queue.
    let _exchange = TestQueue::bind(&amqp, &[]).await;
    let (full, conn) = refusing_queue(&amqp, KEY).await;
    let refused = enqueue(&db.pool, 3, Duration::from_secs(60)).await;
    let mut cfg = test_kit::fast_outbox();
    cfg.retry.base = Duration::from_secs(600);
    cfg.retry.max = Duration::from_secs(600);
    let mut relay = relay(&db, &amqp, cfg);
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.sent, report.retried), (3, 0, 3));
    for id in &refused {
        let r = row(&db.pool, *id).await;
        assert_eq!((r.status, r.attempts), (OutboxStatus::Pending, 1), "{id}");
        assert!(r.last_error.unwrap_or_default().contains("nacked"), "{id}");
        assert!(!is_due(&db.pool, *id).await, "{id} backed off");
    }

    // The broker accepts again; a new message is confirmed.
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete(full.as_str().into(), Default::default())
        .await
        .unwrap();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let fresh = enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    let report = relay.run_once().await.unwrap();
    assert_eq!(
        (report.claimed, report.sent),
        (1, 1),
        "only the new row was due"
    );
    for id in &refused {
        assert!(is_due(&db.pool, *id).await, "{id} brought forward");
    }

    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.sent), (3, 3));
    for id in &refused {
        let r = row(&db.pool, *id).await;
        assert_eq!(
            (r.status, r.attempts),
            (OutboxStatus::Sent, 2),
            "{id}: attempts kept"
        );
    }
    let mut delivered = message_ids(&queue.take_all().await);
    delivered.sort();
    let mut expected = [fresh, refused].concat();
    expected.sort();
    assert_eq!(delivered, expected, "each published once after the refusal");
}

/// A window the broker refused only in part (a full queue behind one key) is no broker-wide
/// refusal: its refused row keeps its backoff when later windows are confirmed.
#[tokio::test]
async fn a_row_refused_beside_confirmed_ones_keeps_its_backoff() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let _queue = TestQueue::bind(&amqp, &[KEY]).await;
    let (_full, _conn) = refusing_queue(&amqp, NACKED_KEY).await;
    let mut tx = db.pool.begin().await.unwrap();
    let nacked = NewMessage::new(Uuid::now_v7(), "TestEvent", NACKED_KEY, json!({}));
    outbox::enqueue(&mut tx, &nacked, Duration::from_secs(60))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    let mut cfg = test_kit::fast_outbox();
    cfg.retry.base = Duration::from_secs(600);
    cfg.retry.max = Duration::from_secs(600);
    let mut relay = relay(&db, &amqp, cfg);
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.sent, report.retried), (2, 1, 1));
    enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.sent), (1, 1));
    assert!(!is_due(&db.pool, nacked.id).await, "still backed off");
    assert_eq!(row(&db.pool, nacked.id).await.attempts, 1);
}

#[tokio::test]
async fn an_unroutable_message_is_not_marked_sent() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    // No queue is bound to the exchange: with `mandatory` the broker returns the message.
    let ids = enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    let mut relay = relay(&db, &amqp, test_kit::fast_outbox());

    let report = relay.run_once().await.unwrap();
    assert_eq!(
        report,
        RelayReport {
            claimed: 1,
            sent: 0,
            retried: 1,
            dead: 0
        }
    );
    let r = row(&db.pool, ids[0]).await;
    assert_eq!((r.status, r.attempts), (OutboxStatus::Pending, 1));
    assert!(
        r.last_error.as_deref().unwrap().contains("NO_ROUTE"),
        "{:?}",
        r.last_error
    );
    assert!(r.claim_token.is_none());

    // Once a queue is bound, the retry goes through.
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    make_due(&db.pool).await;
    assert_eq!(relay.run_once().await.unwrap().sent, 1);
    assert_eq!(row(&db.pool, ids[0]).await.status, OutboxStatus::Sent);
    assert_eq!(message_ids(&queue.take_all().await), ids);
}

#[tokio::test]
async fn exhausted_attempts_make_a_message_dead_with_its_last_error_and_it_can_be_requeued() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let ids = enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    let mut cfg = test_kit::fast_outbox();
    cfg.retry.max_attempts = 3;
    let mut relay = relay(&db, &amqp, cfg);

    let mut reports = Vec::new();
    for _ in 0..3 {
        make_due(&db.pool).await;
        reports.push(relay.run_once().await.unwrap());
    }
    assert_eq!(reports.iter().map(|r| r.retried).sum::<usize>(), 2);
    assert_eq!(reports[2].dead, 1);
    let r = row(&db.pool, ids[0]).await;
    assert_eq!((r.status, r.attempts), (OutboxStatus::Dead, 3));
    assert!(r.last_error.unwrap().contains("NO_ROUTE"));
    // Dead rows are never claimed again by themselves.
    make_due(&db.pool).await;
    assert_eq!(relay.run_once().await.unwrap().claimed, 0);

    // An operator requeues it after fixing the routing.
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    assert!(
        outbox::requeue_dead(&db.pool, ids[0], Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(relay.run_once().await.unwrap().sent, 1);
    assert_eq!(message_ids(&queue.take_all().await), ids);
}

#[tokio::test]
async fn a_broker_lost_in_the_middle_of_a_window_leaves_every_row_to_retry() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let proxy = TcpProxy::start(test_kit::broker_addr()).await;
    let ids = enqueue(&db.pool, 20, Duration::from_secs(60)).await;
    let mut relay = relay(
        &db,
        &test_kit::through_proxy(&amqp, &proxy),
        test_kit::fast_outbox(),
    );

    relay.run_once().await.unwrap(); // connected; nothing due yet beyond these 20…
    let ids2 = enqueue(&db.pool, 20, Duration::from_secs(60)).await;
    let claim = relay.claim().await.unwrap();
    assert_eq!(claim.rows.len(), 20);
    proxy.disable().await; // the connection dies under the relay
    let outcomes = relay.publish(&claim).await;
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, PublishOutcome::Failed(_))),
        "{outcomes:?}"
    );
    let report = relay.settle(&claim, &outcomes).await.unwrap();
    assert_eq!((report.sent, report.retried), (0, 20));
    for id in &ids2 {
        let r = row(&db.pool, *id).await;
        assert_eq!((r.status, r.attempts), (OutboxStatus::Pending, 1));
    }

    // The broker is back: the relay reconnects by itself and delivers the rows.
    proxy.enable().await;
    make_due(&db.pool).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match relay.run_once().await {
            Ok(r) if r.sent == 20 => break,
            _ if tokio::time::Instant::now() > deadline => {
                panic!("relay did not reconnect and send")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let delivered: HashSet<Uuid> = message_ids(&queue.take_all().await).into_iter().collect();
    assert_eq!(delivered, ids.iter().chain(&ids2).copied().collect());
}

/// One connection to the broker, forwarded; once frozen, the broker's bytes are no longer
/// passed on (the client waits for confirms that never come, as behind a quorum queue that
/// lost its leader's node), and `cut` then closes both sides (the node is gone).
struct FreezingProxy {
    addr: std::net::SocketAddr,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio_util::sync::CancellationToken,
}

impl FreezingProxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = tokio_util::sync::CancellationToken::new();
        let (frozen2, cut2) = (frozen.clone(), cut.clone());
        tokio::spawn(async move {
            let (inbound, _) = listener.accept().await.unwrap();
            let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
            let (mut from_client, mut to_client) = inbound.into_split();
            let (mut from_broker, mut to_broker) = outbound.into_split();
            let up = tokio::io::copy(&mut from_client, &mut to_broker);
            let down = async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = from_broker.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<_, std::io::Error>(());
                    }
                    if !frozen2.load(Ordering::SeqCst) {
                        to_client.write_all(&buf[..n]).await?;
                    }
                }
            };
            // Returning drops every half: both sockets close.
            tokio::select! { _ = up => {}, _ = down => {}, _ = cut2.cancelled() => {} }
        });
        Self { addr, frozen, cut }
    }

    /// `amqp` with its connections through this proxy.
    fn amqp(&self, amqp: &message_table::amqp::AmqpConfig) -> message_table::amqp::AmqpConfig {
        let (credentials, rest) = amqp.url.split_once('@').unwrap();
        let vhost = rest.split_once('/').map_or("", |(_, v)| v);
        let mut through = amqp.clone();
        through.url = format!("{credentials}@{}/{vhost}", self.addr);
        through
    }
}

#[tokio::test]
async fn a_connection_that_dies_with_confirms_pending_fails_the_window_at_once() {
    // The confirm timeout is far longer than the test may take: an outcome that waited for
    // it would show as ConfirmTimedOut, and the guard below would fire first.
    let cfg = OutboxConfig {
        confirm_timeout: Duration::from_secs(300),
        lease: Duration::from_secs(600),
        ..test_kit::fast_outbox()
    };
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let _queue = TestQueue::bind(&amqp, &[KEY]).await;
    let proxy = FreezingProxy::start(test_kit::broker_addr()).await;
    let mut relay = relay(&db, &proxy.amqp(&amqp), cfg);
    relay.run_once().await.unwrap(); // connected
    let ids = enqueue(&db.pool, 20, Duration::from_secs(60)).await;
    let claim = relay.claim().await.unwrap();
    assert_eq!(claim.rows.len(), 20);

    // The broker's answers stop; once the window is out, the connection dies.
    proxy
        .frozen
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let cut = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.cut.cancel();
        std::future::pending::<()>().await
    };
    let outcomes = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::select! { o = relay.publish(&claim) => o, _ = cut => unreachable!() }
    })
    .await
    .expect("the window waits for its confirm timeout instead of failing when the connection dies");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            PublishOutcome::Failed(
                PublishFailure::ConfirmFailed(_) | PublishFailure::PublishFailed(_)
            )
        )),
        "{outcomes:?}"
    );

    // Released for resend at once: pending, unclaimed, one attempt counted.
    let report = relay.settle(&claim, &outcomes).await.unwrap();
    assert_eq!((report.sent, report.retried), (0, 20));
    for id in &ids {
        let r = row(&db.pool, *id).await;
        assert_eq!(
            (r.status, r.attempts, r.claim_token),
            (OutboxStatus::Pending, 1, None)
        );
    }
}

#[tokio::test]
async fn without_a_broker_nothing_is_claimed_and_no_attempt_is_burnt() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let proxy = TcpProxy::start(test_kit::broker_addr()).await;
    proxy.disable().await;
    let ids = enqueue(&db.pool, 3, Duration::from_secs(60)).await;
    let mut relay = relay(
        &db,
        &test_kit::through_proxy(&amqp, &proxy),
        test_kit::fast_outbox(),
    );

    for _ in 0..3 {
        assert!(matches!(
            relay.run_once().await,
            Err(message_table::outbox::relay::RelayError::Broker(_))
        ));
    }
    assert!(!relay.broker_link().is_connected());
    for id in ids {
        let r = row(&db.pool, id).await;
        assert_eq!(
            (r.status, r.attempts, r.claim_token),
            (OutboxStatus::Pending, 0, None)
        );
    }
}

/// The relay publishes, then dies before marking the row sent. The lease runs out, the
/// resend scheduler hands the row back, and it is published again: a duplicate that the
/// consumer's inbox drops (see the pay and system tests).
#[tokio::test]
async fn an_expired_lease_is_handed_back_and_published_again() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let ids = enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    let cfg = test_kit::fast_outbox();
    let mut crashed = relay(&db, &amqp, cfg.clone());
    let claim = crashed.claim().await.unwrap();
    let outcomes = crashed.publish(&claim).await;
    assert_eq!(outcomes, vec![PublishOutcome::Confirmed]);
    // ...and the process dies here: no settle. Time passes beyond the lease:
    sqlx::query("UPDATE outbox SET lease_expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();

    let mut survivor = relay(&db, &amqp, cfg.clone());
    assert_eq!(
        survivor.run_once().await.unwrap().claimed,
        0,
        "a leased row is not claimable"
    );
    let scheduler = ResendScheduler::new(db.pool.clone(), cfg, survivor.wake_handle());
    let tick = scheduler.tick().await.unwrap();
    assert_eq!(tick.released, 1);
    let r = row(&db.pool, ids[0]).await;
    assert_eq!((r.status, r.attempts), (OutboxStatus::Pending, 1));
    assert_eq!(r.last_error.as_deref(), Some(LEASE_EXPIRED));

    make_due(&db.pool).await;
    assert_eq!(survivor.run_once().await.unwrap().sent, 1);
    // The crashed relay's late settle changes nothing: its claim token is gone.
    let late = crashed.settle(&claim, &outcomes).await.unwrap();
    assert_eq!(late.sent, 0);
    let r = row(&db.pool, ids[0]).await;
    assert_eq!((r.status, r.attempts), (OutboxStatus::Sent, 2));

    assert_eq!(
        message_ids(&queue.take_all().await),
        vec![ids[0], ids[0]],
        "at-least-once: two copies"
    );
}

/// The relay publishes its window, then its process dies before settling: its owner lock's
/// session ends with it. The next tick of another instance's scheduler hands the rows back
/// while their lease still runs (the lease is the upper bound this beats), and a second
/// relay publishes them.
#[tokio::test]
async fn a_dead_relays_window_is_taken_over_before_its_lease_runs_out() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let ids = enqueue(&db.pool, 3, Duration::from_secs(60)).await;
    let cfg = test_kit::fast_outbox();
    let mut dying = relay(&db, &amqp, cfg.clone());
    let claim = dying.claim().await.unwrap();
    assert_eq!(claim.rows.len(), 3);
    assert_eq!(
        dying.publish(&claim).await,
        vec![PublishOutcome::Confirmed; 3]
    );

    let mut survivor = relay(&db, &amqp, cfg.clone());
    let scheduler = ResendScheduler::new(db.pool.clone(), cfg, survivor.wake_handle());
    assert_eq!(
        scheduler.tick().await.unwrap().released,
        0,
        "a living relay keeps its rows"
    );
    drop(dying); // the process dies: no settle, its session closes

    let tick = test_kit::eventually(
        "the dead relay's rows are handed back",
        Duration::from_secs(20),
        || async {
            let tick = scheduler.tick().await.unwrap();
            (tick.released > 0).then_some(tick)
        },
    )
    .await;
    assert_eq!(
        (tick.released, tick.orphaned),
        (3, 3),
        "handed back because the owner is gone, not because a lease expired"
    );
    for id in &ids {
        let r = row(&db.pool, *id).await;
        assert_eq!(
            (r.status, r.attempts, r.claim_token),
            (OutboxStatus::Pending, 1, None)
        );
        assert_eq!(r.last_error.as_deref(), Some(OWNER_GONE));
    }
    make_due(&db.pool).await;
    assert_eq!(survivor.run_once().await.unwrap().sent, 3);
    let delivered = message_ids(&queue.take_all().await);
    assert_eq!(
        delivered.len(),
        6,
        "at-least-once: the dead relay's copies and the survivor's"
    );
    assert_eq!(
        delivered.into_iter().collect::<HashSet<_>>(),
        ids.into_iter().collect()
    );
}

/// A frozen relay (SIGSTOP) keeps its session and its owner lock, so only its lease frees its
/// rows; once another relay has claimed and published them, the frozen one's late settle
/// changes nothing: its claim token is gone (see also the expired-lease test above).
#[tokio::test]
async fn a_frozen_relays_late_settle_cannot_touch_rows_claimed_since() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let ids = enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    let cfg = test_kit::fast_outbox();
    let mut frozen = relay(&db, &amqp, cfg.clone());
    let claim = frozen.claim().await.unwrap();
    let outcomes = frozen.publish(&claim).await;
    let mut survivor = relay(&db, &amqp, cfg.clone());
    let scheduler = ResendScheduler::new(db.pool.clone(), cfg, survivor.wake_handle());
    assert_eq!(
        scheduler.tick().await.unwrap().released,
        0,
        "its owner lock is held"
    );
    sqlx::query("UPDATE outbox SET lease_expires_at = now() - interval '1 second'")
        .execute(&db.pool)
        .await
        .unwrap();
    let tick = scheduler.tick().await.unwrap();
    assert_eq!(
        (tick.released, tick.orphaned),
        (1, 0),
        "the lease, not the owner"
    );
    make_due(&db.pool).await;
    let again = survivor.claim().await.unwrap();
    assert_eq!(again.rows.len(), 1);
    // Thawed between the survivor's claim and its settle: the frozen relay's settle is late.
    assert_eq!(frozen.settle(&claim, &outcomes).await.unwrap().sent, 0);
    assert_eq!(row(&db.pool, ids[0]).await.claim_token, Some(again.token));
    let outcomes = survivor.publish(&again).await;
    assert_eq!(survivor.settle(&again, &outcomes).await.unwrap().sent, 1);
    assert_eq!(message_ids(&queue.take_all().await), vec![ids[0], ids[0]]);
}

#[tokio::test]
async fn two_relays_on_one_outbox_publish_every_message_exactly_once() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let ids = enqueue(&db.pool, 400, Duration::from_secs(60)).await;
    let mut cfg = test_kit::fast_outbox();
    cfg.batch_size = 25;

    let drive = |mut relay: Relay| async move {
        let mut sent = 0;
        loop {
            let report = relay.run_once().await.unwrap();
            if report.claimed == 0 {
                return sent;
            }
            assert_eq!(report.sent, report.claimed);
            sent += report.sent;
        }
    };
    let (a, b) = tokio::join!(
        drive(relay(&db, &amqp, cfg.clone())),
        drive(relay(&db, &amqp, cfg))
    );
    assert_eq!(a + b, 400);
    assert!(a > 0 && b > 0, "both relays took part ({a} + {b})");

    let delivered = message_ids(&queue.take_all().await);
    let distinct: HashSet<Uuid> = delivered.iter().copied().collect();
    assert_eq!(delivered.len(), 400, "no message published twice");
    assert_eq!(distinct, ids.into_iter().collect());
}

#[tokio::test]
async fn a_message_past_its_expiry_is_dead_not_published() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let expired = enqueue(&db.pool, 1, Duration::ZERO).await;
    let live = enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    let cfg = test_kit::fast_outbox();
    let mut relay = relay(&db, &amqp, cfg.clone());
    let scheduler = ResendScheduler::new(db.pool.clone(), cfg, relay.wake_handle());

    let tick = scheduler.tick().await.unwrap();
    assert_eq!(tick.dead, 1);
    assert!(tick.woke_relay, "a due row wakes the relay");
    assert_eq!(relay.run_once().await.unwrap().sent, 1);
    let r = row(&db.pool, expired[0]).await;
    assert_eq!(r.status, OutboxStatus::Dead);
    assert!(r.last_error.unwrap().contains("expired"));
    assert_eq!(message_ids(&queue.take_all().await), live);
}

/// A window mixing routable and unroutable messages. The client may hand a basic.return to
/// another message's confirm; the relay must match returns by message id, or an unroutable
/// row is marked `sent` and lost.
#[tokio::test]
async fn an_unroutable_row_in_a_mixed_window_is_never_marked_sent() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let mut unroutable = Vec::new();
    let mut tx = db.pool.begin().await.unwrap();
    for i in 0..2000 {
        // Every 7th row goes to a routing key nobody binds (say, a new event type).
        let key = if i % 7 == 0 {
            "order.nobody-listens"
        } else {
            KEY
        };
        let msg = NewMessage::new(Uuid::now_v7(), "TestEvent", key, json!({ "n": i }));
        outbox::enqueue(&mut tx, &msg, Duration::from_secs(60))
            .await
            .unwrap();
        if i % 7 == 0 {
            unroutable.push(msg.id);
        }
    }
    tx.commit().await.unwrap();
    let mut cfg = test_kit::fast_outbox();
    cfg.batch_size = 200;
    let mut relay = relay(&db, &amqp, cfg);
    loop {
        if relay.run_once().await.unwrap().claimed == 0 {
            break;
        }
    }
    let wrongly_sent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE id = ANY($1) AND status = $2")
            .bind(&unroutable)
            .bind(OutboxStatus::Sent)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(wrongly_sent, 0, "unroutable messages marked sent: lost");
    let delivered = queue.take_all().await.len();
    assert_eq!(
        delivered,
        2000 - unroutable.len(),
        "every routable message delivered once"
    );
    let routable_sent: i64 = outbox::stats(&db.pool).await.unwrap().sent;
    assert_eq!(routable_sent as usize, delivered);
}

/// RabbitMQ closes the relay's connection itself (an operator, a node going down): the
/// relay reconnects and publishes what comes next, and nothing is marked sent unconfirmed.
#[tokio::test]
async fn the_relay_reconnects_when_the_broker_closes_its_connection() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let name = test_kit::unique_name("test-relay");
    let relay = Relay::new(
        db.pool.clone(),
        amqp.clone(),
        test_kit::fast_outbox(),
        name.clone(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    let first = enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    queue
        .take_until("the first message", Duration::from_secs(10), |t| {
            t.len() == 1
        })
        .await;

    assert_eq!(test_kit::broker_closes_connection(&name).await, 1);
    let second = enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    let taken = queue
        .take_until("the second message", Duration::from_secs(20), |t| {
            !t.is_empty()
        })
        .await;
    assert_eq!(message_ids(&taken), second);
    for id in first.iter().chain(&second) {
        test_kit::eventually("marked sent", Duration::from_secs(10), || async {
            (row(&db.pool, *id).await.status == OutboxStatus::Sent).then_some(())
        })
        .await;
    }
    stop.cancel();
    task.await.unwrap();
}

/// While the broker is down, every commit's NOTIFY wakes the relay; the reconnect backoff
/// must hold anyway, or an outage becomes one connection attempt per order.
#[tokio::test]
async fn wake_ups_do_not_bypass_the_reconnect_backoff() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let proxy = TcpProxy::start(test_kit::broker_addr()).await;
    proxy.disable().await;
    let relay = relay(
        &db,
        &test_kit::through_proxy(&amqp, &proxy),
        test_kit::fast_outbox(),
    );
    let wake = relay.wake_handle();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    for _ in 0..100 {
        enqueue(&db.pool, 1, Duration::from_secs(60)).await; // commits, NOTIFYs
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap();
    // 100 wake-ups over the outage; the backoff (200 ms doubling) allows a handful of tries.
    let attempts = proxy.connection_attempts();
    assert!(
        attempts < 20,
        "{attempts} connection attempts for 100 wake-ups"
    );
}

/// A commit wakes the relay through LISTEN/NOTIFY: with the fallback poll set to a minute,
/// a message enqueued after the relay went idle is still sent at once.
#[tokio::test]
async fn a_commit_wakes_the_relay_through_notify() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let mut cfg = test_kit::fast_outbox();
    cfg.poll_interval = Duration::from_secs(60);
    let relay = relay(&db, &amqp, cfg);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));

    let sent = |id: Uuid| {
        let pool = db.pool.clone();
        async move { (row(&pool, id).await.status == OutboxStatus::Sent).then_some(()) }
    };
    // The first one may be picked up by the relay's start-up round or the listener's
    // first wake-up; once it is sent, the relay is idle until woken.
    let first = enqueue(&db.pool, 1, Duration::from_secs(60)).await[0];
    test_kit::eventually("first message sent", Duration::from_secs(10), || {
        sent(first)
    })
    .await;
    let second = enqueue(&db.pool, 1, Duration::from_secs(60)).await[0];
    test_kit::eventually(
        "second message sent well before the 60 s poll",
        Duration::from_secs(10),
        || sent(second),
    )
    .await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(message_ids(&queue.take_all().await), vec![first, second]);
}

/// `enqueue`'s wake-up, folded into its insert, still behaves as a NOTIFY of the caller's
/// transaction: delivered at commit, never for a rollback. A marker notification committed
/// after each transaction tells what arrived before it, without waiting for silence.
#[tokio::test]
async fn the_wake_up_is_delivered_at_commit_and_dropped_on_rollback() {
    let db = TestDb::with_message_tables().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen(outbox::NOTIFY_CHANNEL).await.unwrap();
    let marker = |payload: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(outbox::NOTIFY_CHANNEL)
                .bind(payload)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let msg = || NewMessage::new(Uuid::now_v7(), "TestEvent", KEY, json!({}));

    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &msg(), Duration::from_secs(60))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    marker("after rollback").await;
    assert_eq!(listener.recv().await.unwrap().payload(), "after rollback");

    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &msg(), Duration::from_secs(60))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    marker("after commit").await;
    assert_eq!(listener.recv().await.unwrap().payload(), "");
    assert_eq!(listener.recv().await.unwrap().payload(), "after commit");
}

/// `enqueue_quiet` sends nothing at commit; its wake-up comes when the caller sends it,
/// after the commit. Markers, as above, tell what arrived when.
#[tokio::test]
async fn a_quiet_enqueue_wakes_the_relay_only_when_its_wake_up_is_sent() {
    let db = TestDb::with_message_tables().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen(outbox::NOTIFY_CHANNEL).await.unwrap();
    let msg = NewMessage::new(Uuid::now_v7(), "TestEvent", KEY, json!({}));

    let mut tx = db.pool.begin().await.unwrap();
    let wake = outbox::enqueue_quiet(&mut tx, &msg, Duration::from_secs(60))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(row(&db.pool, msg.id).await.status, OutboxStatus::Pending);
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(outbox::NOTIFY_CHANNEL)
        .execute(&db.pool)
        .await
        .unwrap();
    wake.send(&db.pool).await;
    assert_eq!(
        listener.recv().await.unwrap().payload(),
        "marker",
        "the commit itself notified nobody"
    );
    assert_eq!(listener.recv().await.unwrap().payload(), "");
}

/// The wake-up's own transaction commits without waiting for the WAL flush, and that setting
/// ends with it: the next transaction on the same connection (a business one) is
/// synchronous again.
#[tokio::test]
async fn the_wake_up_after_commit_leaves_its_connection_synchronous() {
    let db = TestDb::with_message_tables().await;
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let mut tx = one.begin().await.unwrap();
    let msg = NewMessage::new(Uuid::now_v7(), "TestEvent", KEY, json!({}));
    let wake = outbox::enqueue_quiet(&mut tx, &msg, Duration::from_secs(60))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wake.send(&one).await;
    let mode: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&one)
        .await
        .unwrap();
    assert_eq!(mode, "on");
    // And inside such a statement it is off (what `send` relies on).
    let inside: String = sqlx::query_scalar(
        "SELECT set_config('synchronous_commit', 'off', true) || current_setting('synchronous_commit')",
    )
    .fetch_one(&one)
    .await
    .unwrap();
    assert_eq!(inside, "offoff");
}

/// `Relays` as the services run them: three relays on one outbox, one listener. Every
/// message is published exactly once, each relay has its own connection, and a quiet
/// enqueue's wake-up reaches an idle relay (the fallback poll is a minute).
#[tokio::test]
async fn relays_side_by_side_publish_every_message_once_and_share_the_wake_up() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let mut cfg = test_kit::fast_outbox();
    cfg.batch_size = 20;
    cfg.poll_interval = Duration::from_secs(60);
    let relays = Relays::new(relay(&db, &amqp, cfg), 3);
    let statuses = relays.broker_links();
    assert_eq!(statuses.len(), 3);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relays.run(stop.clone()));
    let mut ids = enqueue(&db.pool, 300, Duration::from_secs(60)).await;
    for i in 0..20 {
        let msg = NewMessage::new(Uuid::now_v7(), "TestEvent", KEY, json!({ "quiet": i }));
        let mut tx = db.pool.begin().await.unwrap();
        let wake = outbox::enqueue_quiet(&mut tx, &msg, Duration::from_secs(60))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        wake.send(&db.pool).await;
        ids.push(msg.id);
    }
    let pool = db.pool.clone();
    test_kit::eventually("all 320 sent", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status = 'sent'")
                .fetch_one(&pool)
                .await
                .unwrap();
            (sent == 320).then_some(())
        }
    })
    .await;
    assert!(
        statuses.iter().all(|s| s.is_connected()),
        "three live links"
    );
    stop.cancel();
    task.await.unwrap();
    let delivered = message_ids(&queue.take_all().await);
    let distinct: HashSet<Uuid> = delivered.iter().copied().collect();
    assert_eq!(delivered.len(), 320, "no message published twice");
    assert_eq!(distinct, ids.into_iter().collect());
}

/// The relay's pool (`db::relay_pool`) commits asynchronously and plans each statement when
/// it runs (a generic plan made while the outbox was empty updates a claim's rows with a
/// sequential scan of the whole outbox once it has grown); the pool it is made from, where
/// the business transactions run, keeps PostgreSQL's defaults.
#[tokio::test]
async fn only_the_relay_pool_commits_asynchronously_and_plans_every_statement() {
    let db = TestDb::with_message_tables().await;
    let relay_pool = message_table::db::relay_pool(&db.pool, 1);
    let show = |pool: PgPool, setting: &'static str| async move {
        sqlx::query_scalar::<_, String>(AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(show(relay_pool.clone(), "synchronous_commit").await, "off");
    assert_eq!(
        show(relay_pool, "plan_cache_mode").await,
        "force_custom_plan"
    );
    assert_eq!(show(db.pool.clone(), "synchronous_commit").await, "on");
    assert_eq!(show(db.pool.clone(), "plan_cache_mode").await, "auto");
}

#[test]
fn a_lease_must_outlast_the_confirm_timeout_by_the_margin() {
    let mut cfg = test_kit::fast_outbox();
    cfg.confirm_timeout = cfg.lease - Duration::from_secs(1);
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("OUTBOX_LEASE_MS"), "{err}");
    assert!(test_kit::fast_outbox().validate().is_ok());
}

#[tokio::test]
async fn a_sent_message_is_requeued_for_republish_with_its_id_but_never_while_in_line_or_in_flight()
{
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let ids = enqueue(&db.pool, 1, Duration::from_secs(60)).await;
    let (ttl, recent) = (Duration::from_secs(60), Duration::from_secs(3600));
    let republish = || outbox::requeue_for_republish(&db.pool, ids[0], ttl, recent);

    // Waiting in line, then held by a relay: already on its way.
    assert!(!republish().await.unwrap());
    sqlx::query("UPDATE outbox SET claim_token = gen_random_uuid(), lease_expires_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(!republish().await.unwrap());
    sqlx::query("UPDATE outbox SET claim_token = NULL, lease_expires_at = NULL")
        .execute(&db.pool)
        .await
        .unwrap();

    let mut relay = relay(&db, &amqp, test_kit::fast_outbox());
    assert_eq!(relay.run_once().await.unwrap().sent, 1);
    assert_eq!(message_ids(&queue.take_all().await), ids);
    // Sent a moment ago: a copy may still be in a queue.
    assert!(!republish().await.unwrap());

    // Sent long ago (and lost since): published again, same id, attempts reset.
    sqlx::query("UPDATE outbox SET sent_at = now() - interval '2 hours', attempts = 3")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(republish().await.unwrap());
    let r = row(&db.pool, ids[0]).await;
    assert_eq!((r.status, r.attempts), (OutboxStatus::Pending, 0));
    assert!(r.last_error.unwrap().starts_with("requeued for re-publish"));
    assert_eq!(relay.run_once().await.unwrap().sent, 1);
    assert_eq!(message_ids(&queue.take_all().await), ids);

    // A dead row too; an unknown id is not requeued.
    sqlx::query("UPDATE outbox SET status = $1")
        .bind(OutboxStatus::Dead)
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(republish().await.unwrap());
    assert!(
        !outbox::requeue_for_republish(&db.pool, Uuid::now_v7(), ttl, recent)
            .await
            .unwrap()
    );
}

/// A statement prepared by sqlx may run on a generic plan, which cannot see `LIMIT $1` and
/// assumes a tenth of the table. Joined to its rows, the claim then hashed the whole outbox
/// every round (a week of sent rows in production; a drain of 100,000 ran at a third of the
/// speed of one of 20,000). Forced onto its generic plan here, a claim of a few rows must not
/// read the table.
#[tokio::test]
async fn a_claim_reads_the_rows_it_claims_not_the_whole_outbox() {
    let db = TestDb::with_message_tables().await;
    sqlx::query(
        "INSERT INTO outbox (id, aggregate_id, event_type, routing_key, payload, expires_at)
         SELECT gen_random_uuid(), 'a', 'Test', 'k', '{}', now() + interval '1 day'
         FROM generate_series(1, 20000)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE outbox")
        .execute(&db.pool)
        .await
        .unwrap();
    let generic =
        support::one_connection_with(&db.url, "plan_cache_mode", "force_generic_plan").await;
    let relay = Relay::new(
        generic.clone(),
        test_kit::test_amqp(),
        test_kit::fast_outbox(),
        "generic-plan",
    );

    for _ in 0..3 {
        assert_eq!(relay.claim().await.unwrap().rows.len(), 100);
    }
    // A session's statistics reach the shared ones when it ends.
    generic.close().await;
    let (claims, read_by_scans): (i64, i64) = test_kit::eventually(
        "the claims' statistics",
        Duration::from_secs(10),
        || async {
            let (idx, seq): (i64, i64) = sqlx::query_as(
                "SELECT coalesce(idx_scan, 0), coalesce(seq_tup_read, 0)
                 FROM pg_stat_user_tables WHERE relname = 'outbox'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (idx >= 3).then_some((idx, seq))
        },
    )
    .await;
    assert!(
        read_by_scans < 20_000,
        "{claims} index scans, and sequential scans read {read_by_scans} rows"
    );
}

/// `WakeAfterCommit::send`'s own transaction commits asynchronously: the setting in force
/// when its statement runs (and so at its commit, `set_config(..., true)` lasting to the end
/// of the transaction) is `synchronous_commit = off`. Seen from inside that very statement,
/// trigger-free: the connection's `search_path` puts a schema before `pg_catalog`, whose
/// `pg_notify` records `current_setting('synchronous_commit')` and then notifies as usual.
#[tokio::test]
async fn the_wake_up_is_sent_by_a_transaction_that_commits_asynchronously() {
    let db = TestDb::with_message_tables().await;
    sqlx::raw_sql(
        "CREATE SCHEMA spy;
         CREATE TABLE spy.seen (setting text NOT NULL, channel text NOT NULL);
         CREATE FUNCTION spy.pg_notify(channel text, payload text) RETURNS void
         LANGUAGE sql AS $$
             INSERT INTO spy.seen VALUES (current_setting('synchronous_commit'), channel);
             SELECT pg_catalog.pg_notify(channel, payload);
         $$;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let spied = support::one_connection_with(&db.url, "search_path", "spy,pg_catalog,public").await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen(outbox::NOTIFY_CHANNEL).await.unwrap();

    let mut tx = db.pool.begin().await.unwrap();
    let msg = NewMessage::new(Uuid::now_v7(), "TestEvent", KEY, json!({}));
    let wake = outbox::enqueue_quiet(&mut tx, &msg, Duration::from_secs(60))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let before: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&spied)
        .await
        .unwrap();
    assert_eq!(
        before, "on",
        "the connection commits synchronously by default"
    );
    wake.send(&spied).await;

    let seen: Vec<(String, String)> = sqlx::query_as("SELECT setting, channel FROM spy.seen")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        seen,
        [("off".to_string(), outbox::NOTIFY_CHANNEL.to_string())],
        "send's one statement ran (and committed) with synchronous_commit off"
    );
    assert_eq!(
        listener.recv().await.unwrap().payload(),
        "",
        "and it woke the relay"
    );
}

/// No NOTIFY arrives (a wake-up never sent, as when its sender died after the commit): the
/// relay's fallback poll still finds the row. Two rows, neither with a wake-up: once the
/// first is sent, the relay's start-up round is over and it sleeps until woken or polled; a
/// marker notification afterwards shows that nothing woke it, so the poll found the second.
#[tokio::test]
async fn without_a_notify_the_fallback_poll_finds_the_row() {
    let db = TestDb::with_message_tables().await;
    let amqp = test_kit::test_amqp();
    let queue = TestQueue::bind(&amqp, &[KEY]).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen(outbox::NOTIFY_CHANNEL).await.unwrap();
    let mut cfg = test_kit::fast_outbox();
    cfg.poll_interval = Duration::from_millis(300);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay(&db, &amqp, cfg).run(stop.clone()));

    let mut sent = Vec::new();
    for _ in 0..2 {
        let mut tx = db.pool.begin().await.unwrap();
        let msg = NewMessage::new(Uuid::now_v7(), "TestEvent", KEY, json!({}));
        let wake = outbox::enqueue_quiet(&mut tx, &msg, Duration::from_secs(60))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // The wake-up is never sent.
        drop(wake);
        test_kit::eventually(
            "the row sent without a NOTIFY",
            Duration::from_secs(20),
            || {
                let pool = db.pool.clone();
                async move { (row(&pool, msg.id).await.status == OutboxStatus::Sent).then_some(()) }
            },
        )
        .await;
        sent.push(msg.id);
    }
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(outbox::NOTIFY_CHANNEL)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        listener.recv().await.unwrap().payload(),
        "marker",
        "no NOTIFY was sent for either row: the poll found them"
    );
    stop.cancel();
    task.await.unwrap();
    assert_eq!(message_ids(&queue.take_all().await), sent);
}
