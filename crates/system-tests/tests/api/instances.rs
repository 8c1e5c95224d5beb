//! Several instances of each service on the same databases and queues, as in a scaled-out
//! deployment: no payment twice, ever; no message published twice in steady state; and a
//! rolling restart (each instance stopped gracefully, then started again) under load
//! loses nothing.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use message_table::{amqp::AmqpConfig, inbox, outbox};
use serde_json::{Value, json};
use service_kit::service::MessagingConfig;
use test_kit::{Instance, TestDb, TestQueue, service_config, spawn_order, spawn_pay};
use uuid::Uuid;

const START: i64 = 100_000_000;
const POOL: u32 = 5;

struct Cluster {
    amqp: AmqpConfig,
    order_db: TestDb,
    pay_db: TestDb,
    order_msg: MessagingConfig,
    pay_msg: MessagingConfig,
}

impl Cluster {
    fn new(order_db: TestDb, pay_db: TestDb) -> Self {
        let amqp = test_kit::test_amqp();
        // Every instance of a service consumes the same queue.
        let order_msg =
            test_kit::messaging(&amqp, "test.order", messages::ORDER_QUEUE.routing_keys);
        let pay_msg = test_kit::messaging(&amqp, "test.pay", messages::PAY_QUEUE.routing_keys);
        Cluster {
            amqp,
            order_db,
            pay_db,
            order_msg,
            pay_msg,
        }
    }

    async fn pay(&self) -> Instance {
        spawn_pay(service_config(&self.pay_db.url, &self.pay_msg, POOL)).await
    }

    async fn order(&self) -> Instance {
        spawn_order(service_config(&self.order_db.url, &self.order_msg, POOL)).await
    }

    /// Waits until every order has left PENDING_PAYMENT; returns (paid, failed) order ids.
    async fn settled(&self, orders: usize) -> (HashSet<Uuid>, HashSet<Uuid>) {
        test_kit::eventually("every order settles", Duration::from_secs(60), || async {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'PENDING_PAYMENT'")
                    .fetch_one(&self.order_db.pool)
                    .await
                    .unwrap();
            (pending == 0).then_some(())
        })
        .await;
        let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, status FROM orders")
            .fetch_all(&self.order_db.pool)
            .await
            .unwrap();
        assert_eq!(rows.len(), orders, "orders in the database");
        let ids = |s: &str| rows.iter().filter(|r| r.1 == s).map(|r| r.0).collect();
        (ids("PAID"), ids("PAYMENT_FAILED"))
    }

    /// The invariants across both databases, given the orders the clients were told exist.
    async fn check(&self, accepted: &HashMap<Uuid, (String, i64)>) {
        let (paid, failed) = self.settled(accepted.len()).await;
        assert_eq!(
            paid.union(&failed).copied().collect::<HashSet<_>>(),
            accepted.keys().copied().collect()
        );
        let payments: Vec<(Uuid, String)> = sqlx::query_as("SELECT order_id, status FROM payments")
            .fetch_all(&self.pay_db.pool)
            .await
            .unwrap();
        assert_eq!(payments.len(), accepted.len(), "one payment row per order");
        let completed: HashSet<Uuid> = payments
            .iter()
            .filter(|p| p.1 == "COMPLETED")
            .map(|p| p.0)
            .collect();
        assert_eq!(
            completed, paid,
            "a completed payment for each PAID order, and only those"
        );
        let debited: i64 = accepted
            .iter()
            .filter(|(id, (user, _))| user == "alice" && paid.contains(id))
            .map(|(_, (_, amount))| amount)
            .sum();
        let alice: i64 =
            sqlx::query_scalar("SELECT balance_cents FROM accounts WHERE user_id = 'alice'")
                .fetch_one(&self.pay_db.pool)
                .await
                .unwrap();
        assert_eq!(alice, START - debited);
        for (name, db) in [("order", &self.order_db), ("pay", &self.pay_db)] {
            let outbox = outbox::stats(&db.pool).await.unwrap();
            let inbox = inbox::stats(&db.pool).await.unwrap();
            let stuck = outbox.total() - outbox.sent + inbox.failed + inbox.dead;
            assert_eq!(
                stuck, 0,
                "{name}: outbox rows not sent or inbox rows not processed"
            );
        }
    }
}

/// Who buys: every tenth order is carol's, who has no money.
fn buyer(i: usize) -> (&'static str, i64) {
    if i.is_multiple_of(10) {
        ("carol", 100)
    } else {
        ("alice", 100 + i as i64 % 50)
    }
}

/// Buys `n` orders against the order instances currently listed in `targets`, round robin;
/// a refused connection or a 5xx (an instance stopping) is retried on the next instance with
/// the same Idempotency-Key, so a retried order is still one order.
async fn buy(
    targets: Arc<RwLock<Vec<String>>>,
    n: usize,
    accepted: Arc<Mutex<HashMap<Uuid, (String, i64)>>>,
    retries: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let http = reqwest::Client::new();
    for i in 0..n {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (user, amount) = buyer(i);
        let key = Uuid::new_v4().to_string();
        let body = json!({ "user_id": user, "item": "book", "amount_cents": amount });
        for attempt in 0.. {
            let base = {
                let t = targets.read().unwrap();
                t[(i + attempt) % t.len()].clone()
            };
            let res = http
                .post(format!("{base}/buy"))
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            match res {
                Ok(res) if res.status() == reqwest::StatusCode::CREATED => {
                    let body: Value = res.json().await.unwrap();
                    let id = body["order_id"].as_str().unwrap().parse().unwrap();
                    accepted
                        .lock()
                        .unwrap()
                        .insert(id, (user.to_string(), amount));
                    break;
                }
                // A client error is a bug; a server error or a refused connection (an
                // instance stopping) is retried, as a client would.
                Ok(res) if res.status().is_client_error() => {
                    panic!("POST /buy answered {}", res.status())
                }
                _ => {
                    assert!(attempt < 100, "no order instance answers");
                    retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Four clients running [`buy`] with `per_client` orders each, sharing what they count.
struct Load {
    accepted: Arc<Mutex<HashMap<Uuid, (String, i64)>>>,
    retries: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(targets: &Arc<RwLock<Vec<String>>>, per_client: usize) -> Self {
        let accepted = Arc::new(Mutex::new(HashMap::new()));
        let retries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..4)
            .map(|_| {
                tokio::spawn(buy(
                    targets.clone(),
                    per_client,
                    accepted.clone(),
                    retries.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Load {
            accepted,
            retries,
            stop,
            clients,
        }
    }

    /// Waits for the clients to end (all orders bought, or stopped) and returns the
    /// accepted orders.
    async fn join(self) -> HashMap<Uuid, (String, i64)> {
        for c in self.clients {
            c.await.unwrap();
        }
        self.accepted.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn two_instances_of_each_service_pay_every_order_once_and_publish_nothing_twice() {
    let cluster = Cluster::new(
        TestDb::new(&order::MIGRATOR).await,
        TestDb::new(&pay::MIGRATOR).await,
    );
    // Sees every message on the exchange, to count copies.
    let spy = TestQueue::bind(
        &cluster.amqp,
        &["order.created", "payment.completed", "payment.failed"],
    )
    .await;
    let pays = [cluster.pay().await, cluster.pay().await];
    let orders = [cluster.order().await, cluster.order().await];
    let targets = Arc::new(RwLock::new(orders.iter().map(|o| o.base.clone()).collect()));
    let accepted = Load::start(&targets, 50).join().await;
    assert_eq!(accepted.len(), 200);
    cluster.check(&accepted).await;

    // 200 OrderCreated and 200 answers, each published exactly once.
    let taken = spy
        .take_until("400 messages", Duration::from_secs(20), |t| t.len() >= 400)
        .await;
    let ids: HashSet<String> = taken
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        (taken.len(), ids.len()),
        (400, 400),
        "a message was published twice"
    );
    // Both instances of each service did part of the work.
    for p in &pays {
        assert!(
            p.counters.snapshot().processed > 0,
            "a pay instance sat idle"
        );
        assert_eq!(p.counters.snapshot().duplicates, 0);
    }
    for o in &orders {
        assert!(
            o.counters.snapshot().processed > 0,
            "an order instance sat idle"
        );
    }
}

#[tokio::test]
async fn a_rolling_restart_under_load_loses_nothing_and_pays_nothing_twice() {
    let cluster = Cluster::new(
        TestDb::new(&order::MIGRATOR).await,
        TestDb::new(&pay::MIGRATOR).await,
    );
    let mut pays = vec![cluster.pay().await, cluster.pay().await];
    let mut orders = vec![cluster.order().await, cluster.order().await];
    let targets = Arc::new(RwLock::new(
        orders.iter().map(|o| o.base.clone()).collect::<Vec<_>>(),
    ));
    let load = Load::start(&targets, usize::MAX);
    let progress = |n: usize| {
        let accepted = load.accepted.clone();
        async move {
            let start = accepted.lock().unwrap().len();
            test_kit::eventually("orders keep flowing", Duration::from_secs(20), || async {
                (accepted.lock().unwrap().len() >= start + n).then_some(())
            })
            .await;
        }
    };

    // One instance at a time: stop it gracefully (SIGTERM), start its replacement.
    for _ in 0..2 {
        progress(30).await;
        pays.remove(0).stop().await.expect("pay stops cleanly");
        pays.push(cluster.pay().await);
    }
    for _ in 0..2 {
        progress(30).await;
        let old = orders.remove(0);
        let old_base = old.base.clone();
        // Clients still send to it while it stops: they are refused and go to the other.
        old.stop().await.expect("order stops cleanly");
        let new = cluster.order().await;
        {
            let mut t = targets.write().unwrap();
            t.retain(|b| *b != old_base);
            t.push(new.base.clone());
        }
        orders.push(new);
    }
    progress(30).await;
    load.stop.store(true, Ordering::Relaxed);
    let retries = load.retries.clone();
    let accepted = load.join().await;
    cluster.check(&accepted).await;
    println!(
        "rolling restart: {} orders, {} client retries on a stopping instance",
        accepted.len(),
        retries.load(Ordering::Relaxed)
    );
}
