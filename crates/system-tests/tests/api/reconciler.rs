//! The reconciler repairs what went wrong outside the mechanism, with order and pay running
//! on the real broker and databases: a message deleted from a queue before pay saw it, an
//! answer that never reached order, and what it cannot repair it reports.

use std::time::Duration;

use message_table::amqp::AmqpConfig;
use messages::{ORDER_CREATED, ORDER_QUEUE};
use order::reconciler::{ReconcilerConfig, Reports, Totals};
use serde_json::{Value, json};
use test_kit::{
    Instance, TestDb, TestQueue, service_config, spawn_order_with_reconciler, spawn_pay,
};
use uuid::Uuid;

const POOL: u32 = 5;
const SETTLE: Duration = Duration::from_secs(30);

/// Short enough for a test, long enough that a message is not re-published while the
/// normal flow is still delivering it.
fn reconciler(pay: &str) -> ReconcilerConfig {
    ReconcilerConfig {
        pay_url: pay.into(),
        interval: Duration::from_millis(200),
        pending_after: Duration::from_millis(500),
        batch_size: 10,
    }
}

async fn buy(order: &Instance, user: &str, amount_cents: i64) -> Uuid {
    let res = reqwest::Client::new()
        .post(format!("{}/buy", order.base))
        .json(&json!({ "user_id": user, "item": "book", "amount_cents": amount_cents }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::CREATED);
    let body: Value = res.json().await.unwrap();
    body["order_id"].as_str().unwrap().parse().unwrap()
}

async fn settled(order: &Instance, order_id: Uuid) -> Value {
    test_kit::eventually(&format!("order {order_id} settles"), SETTLE, || async {
        let url = format!("{}/orders/{order_id}", order.base);
        let order: Value = reqwest::get(url).await.ok()?.json().await.ok()?;
        (order["status"] != "PENDING_PAYMENT").then_some(order)
    })
    .await
}

async fn reports(order: &Instance) -> Reports {
    let url = format!("{}/admin/reconciliation", order.base);
    // A service's own admin route is behind the token like the message tables' ones.
    let anonymous = reqwest::get(&url).await.unwrap();
    assert_eq!(anonymous.status(), reqwest::StatusCode::UNAUTHORIZED);
    let res = reqwest::Client::new()
        .get(url)
        .header("authorization", test_kit::admin_bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    res.json().await.unwrap()
}

/// The totals since start once `counted` holds: a pass commits each fix before it adds the
/// pass to the totals, so a fix a test has just seen may not be counted yet.
async fn totals_once(order: &Instance, counted: impl Fn(&Totals) -> bool) -> Totals {
    test_kit::eventually("the pass that fixed it is counted", SETTLE, || async {
        let totals = reports(order).await.since_start;
        counted(&totals).then_some(totals)
    })
    .await
}

/// Pay on its own database and queue, listening on `addr`.
async fn start_pay(amqp: &AmqpConfig, addr: &str) -> (TestDb, Instance) {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let msg = test_kit::messaging(amqp, "test.pay", messages::PAY_QUEUE.routing_keys);
    let mut config = service_config(&db.url, &msg, POOL);
    config.addr = addr.into();
    let pay = spawn_pay(config).await;
    (db, pay)
}

fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn a_message_deleted_before_pay_saw_it_is_published_again_and_the_order_paid() {
    let amqp = test_kit::test_amqp();
    // Until pay starts, this queue alone is bound to order.created: the relay's publish is
    // routed and confirmed (`sent`), and the test takes it away, as a purge by hand would.
    let purged = TestQueue::bind(&amqp, &[ORDER_CREATED.routing_key]).await;
    let pay_addr = free_addr();
    let order_db = TestDb::new(&order::MIGRATOR).await;
    let order_msg = test_kit::messaging(&amqp, "test.order", ORDER_QUEUE.routing_keys);
    let order = spawn_order_with_reconciler(
        service_config(&order_db.url, &order_msg, POOL),
        reconciler(&format!("http://{pay_addr}")),
    )
    .await;

    let order_id = buy(&order, "alice", 1299).await;
    purged
        .take_until("OrderCreated published", SETTLE, |d| !d.is_empty())
        .await;
    let message_id: Uuid = sqlx::query_scalar("SELECT message_id FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_one(&order_db.pool)
        .await
        .unwrap();

    // Pay starts after the message is gone: its queue never held it.
    let (pay_db, _pay) = start_pay(&amqp, &pay_addr).await;

    assert_eq!(settled(&order, order_id).await["status"], "PAID");
    // Paid once, by the very message that was lost: same message id.
    let paid_by: Vec<Uuid> = sqlx::query_scalar("SELECT message_id FROM payments")
        .fetch_all(&pay_db.pool)
        .await
        .unwrap();
    assert_eq!(paid_by, vec![message_id]);
    // The copy the reconciler had published reached the purged queue too: same id.
    let copies = purged
        .take_until("the copy", SETTLE, |d| !d.is_empty())
        .await;
    let copy_id = copies[0].properties.message_id().as_ref().unwrap().as_str();
    assert_eq!(copy_id, message_id.to_string());
    let totals = totals_once(&order, |t| t.fixed.republished >= 1).await;
    assert_eq!(totals.fixed.settled, 0, "the answer message settled it");
    assert_eq!(totals.unfixed, 0, "{totals:?}");
    let metrics = scrape(&order).await;
    let fixed = |kind| metrics.value("reconciler_fixed_total", &[("kind", kind)]);
    assert_eq!(fixed("republished"), totals.fixed.republished as f64);
    assert_eq!(fixed("settled"), 0.0);
    assert_eq!(
        metrics.value("reconciler_found_total", &[("kind", "unknown_to_pay")]),
        totals.found.unknown_to_pay as f64
    );
}

#[tokio::test]
async fn an_answer_lost_after_pay_committed_is_settled_from_pays_record() {
    let amqp = test_kit::test_amqp();
    let (_pay_db, pay) = start_pay(&amqp, "127.0.0.1:0").await;
    // Order's queue is bound to nothing pay sends (as if unbound by hand); pay's answers
    // end in this queue, which nobody reads.
    let answers = TestQueue::bind(&amqp, ORDER_QUEUE.routing_keys).await;
    let order_db = TestDb::new(&order::MIGRATOR).await;
    let order_msg = test_kit::messaging(&amqp, "test.order", &["test.nothing"]);
    let order = spawn_order_with_reconciler(
        service_config(&order_db.url, &order_msg, POOL),
        reconciler(&pay.base),
    )
    .await;

    let paid = buy(&order, "alice", 1299).await;
    let refused = buy(&order, "carol", 500).await;
    answers
        .take_until("pay answered both", SETTLE, |d| d.len() == 2)
        .await;

    assert_eq!(settled(&order, paid).await["status"], "PAID");
    let failed = settled(&order, refused).await;
    assert_eq!(failed["status"], "PAYMENT_FAILED");
    assert_eq!(failed["failure_reason"], "insufficient_funds");
    let received: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&order_db.pool)
        .await
        .unwrap();
    assert_eq!(
        received, 0,
        "no answer reached order: the reconciler settled both"
    );
    let totals = totals_once(&order, |t| t.fixed.settled >= 2).await;
    assert_eq!(totals.fixed.settled, 2, "{totals:?}");
    assert_eq!(totals.fixed.republished, 0, "{totals:?}");
    let metrics = scrape(&order).await;
    let fixed = |kind| metrics.value("reconciler_fixed_total", &[("kind", kind)]);
    assert_eq!((fixed("settled"), fixed("republished")), (2.0, 0.0));
    assert_eq!(
        metrics.value("reconciler_found_total", &[("kind", "settled_by_pay")]),
        2.0
    );
    assert_eq!(metrics.value("reconciler_unfixed_total", &[]), 0.0);
}

/// Order's `/metrics`, parsed.
async fn scrape(order: &Instance) -> test_kit::metrics::Metrics {
    test_kit::metrics::scrape(&format!("{}/metrics", order.base)).await
}

#[tokio::test]
async fn what_cannot_be_repaired_is_reported_and_left_alone() {
    let amqp = test_kit::test_amqp();
    let (pay_db, pay) = start_pay(&amqp, "127.0.0.1:0").await;
    let order_db = TestDb::new(&order::MIGRATOR).await;
    let order_msg = test_kit::messaging(&amqp, "test.order", ORDER_QUEUE.routing_keys);

    // An order whose OrderCreated row is gone, and one whose payment at pay is for another
    // amount: written straight into the databases, an hour old.
    let (no_message, other_amount) = (Uuid::now_v7(), Uuid::now_v7());
    for id in [no_message, other_amount] {
        sqlx::query(
            "INSERT INTO orders (id, user_id, item, amount_cents, message_id, created_at)
             VALUES ($1, 'alice', 'book', 700, $2, now() - interval '1 hour')",
        )
        .bind(id)
        .bind(Uuid::now_v7())
        .execute(&order_db.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO payments (id, order_id, user_id, amount_cents, status, message_id)
         VALUES ($1, $2, 'alice', 999, 'COMPLETED', $3)",
    )
    .bind(Uuid::now_v7())
    .bind(other_amount)
    .bind(Uuid::now_v7())
    .execute(&pay_db.pool)
    .await
    .unwrap();

    let order = spawn_order_with_reconciler(
        service_config(&order_db.url, &order_msg, POOL),
        reconciler(&pay.base),
    )
    .await;
    let report = test_kit::eventually("a reconciliation pass", SETTLE, || async {
        reports(&order).await.last_report
    })
    .await;
    assert_eq!(report.error, None);
    assert_eq!((report.looked_at, report.unfixed_count), (2, 2));
    assert_eq!(report.found.unknown_to_pay, 1);
    assert_eq!(report.found.settled_by_pay, 1);
    assert_eq!((report.fixed.republished, report.fixed.settled), (0, 0));
    let reason = |id: Uuid| {
        report
            .unfixed
            .iter()
            .find(|u| u.order_id == id)
            .map(|u| u.reason.clone())
            .unwrap_or_default()
    };
    assert!(reason(no_message).contains("no longer in the outbox"));
    assert!(reason(other_amount).contains("999"));
    for id in [no_message, other_amount] {
        let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(&order_db.pool)
            .await
            .unwrap();
        assert_eq!(status, "PENDING_PAYMENT");
    }
}

/// Pay's limit and the reconciler's bound on its batch are the same number.
#[test]
fn the_reconcilers_batch_fits_pays_lookup() {
    assert_eq!(
        order::reconciler::MAX_BATCH_SIZE,
        pay::accounts::MAX_LOOKUP as i64
    );
}
