//! A relay killed mid-window, its window taken over: two order instances (the real binary,
//! child processes) share one outbox while orders flow; one is SIGKILLed while its relay
//! holds claimed rows, then started again. Every order is paid exactly once, and the worst
//! commit-to-payment delay is printed; it is asserted only against the lease (what the
//! delay was before the owner lock), never against a wall-clock target.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use message_table::amqp::AmqpConfig;
use serde_json::json;
use test_kit::{ServiceProcess, TestDb, TestQueue};

/// The services' default lease, set explicitly so the bound below is the one in force.
const LEASE_MS: u64 = 30_000;

async fn start(
    bin: &str,
    prefix: &str,
    db: &TestDb,
    queue: &str,
    shared: &[(&str, String)],
) -> ServiceProcess {
    let mut env = shared.to_vec();
    env.push((
        if prefix == "PAY" {
            "PAY_DATABASE_URL"
        } else {
            "ORDER_DATABASE_URL"
        },
        db.url.clone(),
    ));
    env.push((
        if prefix == "PAY" {
            "PAY_QUEUE"
        } else {
            "ORDER_QUEUE"
        },
        queue.to_string(),
    ));
    ServiceProcess::start(bin, &format!("{prefix}_ADDR"), &env).await
}

/// `POST /buy` on `base` about every 10 ms until `stop`; counts the orders answered 201.
async fn buy_until(base: String, stop: Arc<AtomicBool>, accepted: Arc<AtomicUsize>) {
    let http = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        let res = http
            .post(format!("{base}/buy"))
            .json(&json!({ "user_id": "alice", "item": "book", "amount_cents": 100 }))
            .send()
            .await
            .expect("the surviving instance answers");
        assert_eq!(res.status(), reqwest::StatusCode::CREATED);
        accepted.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_order_instance_killed_mid_window_is_taken_over_and_every_order_paid_once() {
    let order_db = TestDb::new(&order::MIGRATOR).await;
    let pay_db = TestDb::new(&pay::MIGRATOR).await;
    let amqp = AmqpConfig {
        // The binaries declare a durable exchange: the test deletes it at the end.
        exchange_auto_delete: false,
        ..test_kit::test_amqp()
    };
    // Order's reply queue exists before pay replies (order instances come and go).
    let broker = TestQueue::bind(&amqp, &[]).await;
    let order_queue = test_kit::unique_name("test.order");
    broker
        .declare(&amqp, &order_queue, messages::ORDER_QUEUE.routing_keys)
        .await;
    let shared = [
        ("AMQP_URL", amqp.url.clone()),
        ("AMQP_EXCHANGE", amqp.exchange.clone()),
        ("AMQP_QUEUE_EXPIRES_MS", "120000".to_string()),
        ("OUTBOX_LEASE_MS", LEASE_MS.to_string()),
        ("RUST_LOG", "info,sqlx=warn,lapin=warn".into()),
    ];
    let pay_queue = test_kit::unique_name("test.pay");
    let pay = start(
        &test_kit::service_binary("pay"),
        "PAY",
        &pay_db,
        &pay_queue,
        &shared,
    )
    .await;
    let mut shared = shared.to_vec();
    shared.push(("ORDER_PAY_URL", pay.base.clone()));
    let order_bin = test_kit::service_binary("order");
    let mut victim = start(&order_bin, "ORDER", &order_db, &order_queue, &shared).await;
    let survivor = start(&order_bin, "ORDER", &order_db, &order_queue, &shared).await;

    // Orders come in through the survivor; both instances' relays claim them.
    let (stop, accepted) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let load = tokio::spawn(buy_until(
        survivor.base.clone(),
        stop.clone(),
        accepted.clone(),
    ));
    test_kit::eventually("orders are flowing", Duration::from_secs(30), || async {
        (accepted.load(Ordering::Relaxed) >= 50).then_some(())
    })
    .await;
    let held = test_kit::takeover::kill_mid_window(&mut victim, &order_db.pool).await;
    victim.restart().await;
    let after = accepted.load(Ordering::Relaxed);
    test_kit::eventually(
        "orders flow after the restart",
        Duration::from_secs(30),
        || async { (accepted.load(Ordering::Relaxed) >= after + 50).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let orders = accepted.load(Ordering::Relaxed) as i64;

    test_kit::eventually("every order is paid", Duration::from_secs(60), || async {
        let paid: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PAID'")
            .fetch_one(&order_db.pool)
            .await
            .unwrap();
        (paid == orders).then_some(())
    })
    .await;
    let delays = test_kit::takeover::commit_to_payment_ms(&order_db.pool, &pay_db.pool).await;
    assert_eq!(delays.len() as i64, orders, "one payment per order");
    let payments: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
        .fetch_one(&pay_db.pool)
        .await
        .unwrap();
    assert_eq!(payments, orders, "no order paid twice");
    let taken = test_kit::takeover::taken_over(&order_db.pool).await;
    let worst = delays.iter().map(|d| d.1).fold(0.0, f64::max);
    let worst_taken = delays
        .iter()
        .filter(|d| taken.contains(&d.0))
        .map(|d| d.1)
        .fold(0.0, f64::max);
    println!(
        "{orders} orders; the killed relay held {held} row(s), {} taken over; worst commit -> payment {worst:.0} ms ({worst_taken:.0} ms among the taken over)",
        taken.len()
    );
    assert!(
        worst < LEASE_MS as f64,
        "worst delay {worst:.0} ms is not below the lease"
    );
    broker.delete_exchange(&amqp).await;
}
