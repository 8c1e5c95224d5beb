//! The promises of the README, end to end: order → outbox → RabbitMQ → pay's inbox →
//! pay's outbox → RabbitMQ → order's inbox, through the gateway.

use std::time::Duration;

use message_table::{
    InboxStatus, OutboxStatus,
    outbox::{
        self, NewMessage,
        relay::{PublishOutcome, Relay},
        resend_scheduler::ResendScheduler,
    },
};
use serde_json::json;
use test_kit::TcpProxy;
use uuid::Uuid;

const START: i64 = 100_000_000;
const SETTLE: Duration = Duration::from_secs(20);

async fn count(pool: &sqlx::PgPool, sql: &'static str, order_id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(order_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_order_is_paid_once_and_the_balance_debited() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start(&amqp, &amqp).await;

    let order_id = sys.buy("alice", 1299).await;
    let order = sys.settled(order_id, SETTLE).await;
    assert_eq!(order["status"], "PAID");

    let (status, payment) = sys.get(&format!("/pay/payments/{order_id}")).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(payment["status"], "COMPLETED");
    assert_eq!(payment["amount_cents"], 1299);
    let (_, account) = sys.get("/pay/accounts/alice").await;
    assert_eq!(account["balance_cents"], START - 1299);

    let payments = count(
        &sys.pay_db.pool,
        "SELECT count(*) FROM payments WHERE order_id = $1",
        order_id,
    )
    .await;
    assert_eq!(payments, 1);
    // Both outboxes end empty of work: every message sent.
    for pool in [&sys.order_db.pool, &sys.pay_db.pool] {
        test_kit::eventually("outbox drained", SETTLE, || async {
            let s = outbox::stats(pool).await.unwrap();
            (s.pending == 0 && s.in_flight == 0 && s.dead == 0 && s.sent == 1).then_some(())
        })
        .await;
    }
}

/// Records, from inside every statement that writes `tables`, the session's
/// `synchronous_commit`: what the commit of that transaction will do.
async fn record_commit_modes(pool: &sqlx::PgPool, tables: &[&str]) {
    sqlx::raw_sql(
        "CREATE TABLE commit_modes (tbl text NOT NULL, op text NOT NULL, mode text NOT NULL);
         CREATE FUNCTION record_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO commit_modes VALUES (TG_TABLE_NAME, TG_OP, current_setting('synchronous_commit'));
             RETURN NULL;
         END $$;",
    )
    .execute(pool)
    .await
    .unwrap();
    for table in tables {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TRIGGER record_commit_mode AFTER INSERT OR UPDATE ON {table}
             FOR EACH ROW EXECUTE FUNCTION record_commit_mode()"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
}

/// (table, operation, the distinct `synchronous_commit` values seen), sorted.
async fn commit_modes(pool: &sqlx::PgPool) -> Vec<(String, String, Vec<String>)> {
    sqlx::query_as(
        "SELECT tbl, op, array_agg(DISTINCT mode ORDER BY mode) FROM commit_modes
         GROUP BY tbl, op ORDER BY tbl, op",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Only the relays' bookkeeping (claim, mark sent) commits without waiting for the WAL
/// flush: the order transaction and both inbox transactions (pay's reply enqueued in it)
/// commit synchronously. Seen from inside the statements themselves.
#[tokio::test]
async fn only_the_relays_bookkeeping_commits_asynchronously() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start(&amqp, &amqp).await;
    record_commit_modes(&sys.order_db.pool, &["orders", "outbox", "inbox"]).await;
    record_commit_modes(
        &sys.pay_db.pool,
        &["payments", "accounts", "outbox", "inbox"],
    )
    .await;

    let order_id = sys.buy("alice", 1299).await;
    assert_eq!(sys.settled(order_id, SETTLE).await["status"], "PAID");
    for pool in [&sys.order_db.pool, &sys.pay_db.pool] {
        test_kit::eventually("outbox drained", SETTLE, || async {
            (outbox::stats(pool).await.unwrap().sent == 1).then_some(())
        })
        .await;
    }

    let row = |tbl: &str, op: &str, mode: &str| (tbl.into(), op.into(), vec![mode.into()]);
    // order: POST /buy writes the order and its message; the relay claims and marks it sent;
    // the payment result goes through the inbox and updates the order.
    let order = commit_modes(&sys.order_db.pool).await;
    assert!(order.contains(&row("orders", "INSERT", "on")), "{order:?}");
    assert!(order.contains(&row("outbox", "INSERT", "on")), "{order:?}");
    assert!(order.contains(&row("inbox", "INSERT", "on")), "{order:?}");
    assert!(order.contains(&row("outbox", "UPDATE", "off")), "{order:?}");
    // pay: the inbox transaction debits, records the payment and enqueues the reply.
    let pay = commit_modes(&sys.pay_db.pool).await;
    assert!(pay.contains(&row("payments", "INSERT", "on")), "{pay:?}");
    assert!(pay.contains(&row("accounts", "UPDATE", "on")), "{pay:?}");
    assert!(pay.contains(&row("outbox", "INSERT", "on")), "{pay:?}");
    assert!(pay.contains(&row("outbox", "UPDATE", "off")), "{pay:?}");
    // Nothing else is asynchronous, and nothing on the relay's side is synchronous.
    for (tbl, op, modes) in order.iter().chain(&pay) {
        let expected = if (tbl.as_str(), op.as_str()) == ("outbox", "UPDATE") {
            "off"
        } else {
            "on"
        };
        assert_eq!(modes, &[expected], "{tbl} {op}");
    }
}

#[tokio::test]
async fn insufficient_funds_end_in_payment_failed_without_retries() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start(&amqp, &amqp).await;

    let order_id = sys.buy("carol", 500).await;
    let order = sys.settled(order_id, SETTLE).await;
    assert_eq!(order["status"], "PAYMENT_FAILED");
    assert_eq!(order["failure_reason"], "insufficient_funds");
    let (_, payment) = sys.get(&format!("/pay/payments/{order_id}")).await;
    assert_eq!(payment["status"], "FAILED");
    let (_, account) = sys.get("/pay/accounts/carol").await;
    assert_eq!(account["balance_cents"], 0);

    // A business failure is an outcome: handled once, never retried.
    let (status, attempts): (InboxStatus, i32) =
        sqlx::query_as("SELECT status, attempts FROM inbox")
            .fetch_one(&sys.pay_db.pool)
            .await
            .unwrap();
    assert_eq!((status, attempts), (InboxStatus::Processed, 1));
    assert_eq!(sys.pay_counters.snapshot().failed, 0);
}

#[tokio::test]
async fn an_order_taken_while_the_broker_is_unreachable_is_paid_once_it_is_back() {
    let amqp = test_kit::test_amqp();
    let proxy = TcpProxy::start(test_kit::broker_addr()).await;
    // Only the order service loses the broker, after it has declared its queue (the broker
    // dies under a running system); pay is healthy and waiting.
    let sys = system_tests::start(&amqp, &test_kit::through_proxy(&amqp, &proxy)).await;
    test_kit::eventually("order ready", SETTLE, || async {
        let res = reqwest::get(format!("{}/readyz", sys.order)).await.ok()?;
        res.status().is_success().then_some(())
    })
    .await;
    proxy.disable().await;

    let order_id = sys.buy("alice", 777).await;
    let ready: serde_json::Value =
        test_kit::eventually("order reports the broker down", SETTLE, || async {
            let res = reqwest::get(format!("{}/readyz", sys.order)).await.ok()?;
            (res.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(())?;
            res.json().await.ok()
        })
        .await;
    assert_eq!(ready["checks"]["broker_publisher"], "down");
    assert_eq!(ready["checks"]["database"], "up");
    let (_, order) = sys.get(&format!("/order/orders/{order_id}")).await;
    assert_eq!(order["status"], "PENDING_PAYMENT");
    // The order is taken; its message waits in the outbox, and the relay's failed rounds
    // (it has been retrying the connection meanwhile) burnt none of its attempts.
    let (attempts, status): (i32, OutboxStatus) =
        sqlx::query_as("SELECT attempts, status FROM outbox")
            .fetch_one(&sys.order_db.pool)
            .await
            .unwrap();
    assert_eq!((attempts, status), (0, OutboxStatus::Pending));

    proxy.enable().await;
    let order = sys.settled(order_id, Duration::from_secs(40)).await;
    assert_eq!(order["status"], "PAID");
    let payments = count(
        &sys.pay_db.pool,
        "SELECT count(*) FROM payments WHERE order_id = $1",
        order_id,
    )
    .await;
    assert_eq!(payments, 1);
}

/// The relay publishes, then dies before marking the row sent. After the lease expires the
/// message is published again; pay's inbox drops the second copy: one payment.
#[tokio::test]
async fn a_relay_crash_after_publish_republishes_and_the_inbox_drops_the_duplicate() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start(&amqp, &amqp).await;
    // A second order database stands in for an order service whose relay we drive by hand.
    let db = test_kit::TestDb::new(&order::MIGRATOR).await;
    let order_id = Uuid::now_v7();
    let msg = NewMessage::new(
        order_id,
        "OrderCreated",
        "order.created",
        json!({ "order_id": order_id, "user_id": "bob", "item": "lamp", "amount_cents": 4321 }),
    );
    let mut tx = db.pool.begin().await.unwrap();
    outbox::enqueue(&mut tx, &msg, Duration::from_secs(60))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let cfg = test_kit::fast_outbox();
    let mut crashed = Relay::new(db.pool.clone(), amqp.clone(), cfg.clone(), "crashing-relay");
    let claim = crashed.claim().await.unwrap();
    assert_eq!(
        crashed.publish(&claim).await,
        vec![PublishOutcome::Confirmed]
    );
    drop(crashed); // dies before settle: the row stays claimed

    sqlx::query(
        "UPDATE outbox SET lease_expires_at = now() - interval '1 second', next_attempt_at = now()",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut survivor = Relay::new(db.pool.clone(), amqp.clone(), cfg.clone(), "survivor-relay");
    let scheduler = ResendScheduler::new(db.pool.clone(), cfg, survivor.wake_handle());
    assert_eq!(scheduler.tick().await.unwrap().released, 1);
    sqlx::query("UPDATE outbox SET next_attempt_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(survivor.run_once().await.unwrap().sent, 1);

    test_kit::eventually("pay saw both copies", SETTLE, || async {
        let c = &sys.pay_counters;
        (c.snapshot().processed == 1 && c.snapshot().duplicates == 1).then_some(())
    })
    .await;
    let payments = count(
        &sys.pay_db.pool,
        "SELECT count(*) FROM payments WHERE order_id = $1",
        order_id,
    )
    .await;
    assert_eq!(payments, 1);
    let (_, account) = sys.get("/pay/accounts/bob").await;
    assert_eq!(account["balance_cents"], START - 4321);
}

/// A body over pay's limit (64 KiB) but under the gateway's (10 MiB), through the gateway:
/// pay's 413 must reach the client. Pay answering with the body unread reset the connection
/// while the gateway was still sending it; the gateway then saw a broken pipe and answered
/// 502 (schemathesis found it; about one request in four of a megabyte).
#[tokio::test]
async fn an_oversized_body_through_the_gateway_gets_the_services_413() {
    let amqp = test_kit::test_amqp();
    let sys = system_tests::start(&amqp, &amqp).await;
    let ids: Vec<Uuid> = (0..25_000).map(|_| Uuid::new_v4()).collect();
    let body = serde_json::to_vec(&json!({ "order_ids": ids })).unwrap();
    for _ in 0..40 {
        let res = sys
            .http
            .post(format!("{}/pay/payments/lookup", sys.gateway))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("an answer from the gateway");
        assert_eq!(res.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE);
        let answer: serde_json::Value = res.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "body_too_large", "{answer}");
    }
}
