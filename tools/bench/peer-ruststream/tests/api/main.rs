//! The peer end to end, as the bench runs it: both roles as processes (the real binary) on
//! fresh databases, a unique exchange and unique queues of the local broker.
//!
//! - every order written with `write_order` is paid once, the accounts debited exactly, and
//!   answered (`PAID`), on quorum queues and on classic ones;
//! - an `OrderCreated` delivered again (republished by hand) changes nothing;
//! - SIGTERM stops both processes cleanly, with no delivery left behind.

use std::{collections::HashMap, time::Duration};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{FieldTable, ShortString},
};
use sqlx::PgPool;
use test_kit::{ServiceProcess, TestDb, eventually, unique_name};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_peer-ruststream");
const USERS: [&str; 4] = ["ann", "bob", "cy", "dee"];
const BALANCE: i64 = 10_000_000;
/// Generous: the whole flow of a test takes seconds; this only bounds a hang.
const SETTLED: Duration = Duration::from_secs(90);

/// One pair of processes at a time: each process may open a connection per consumer worker
/// (34), and two pairs at once would take more than the 100 the local PostgreSQL allows.
static ONE_PAIR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The names one test's processes share.
struct Names {
    exchange: String,
    order_queue: String,
    pay_queue: String,
    queue_type: &'static str,
}

impl Names {
    fn new(queue_type: &'static str) -> Self {
        Names {
            exchange: unique_name("peer.test"),
            order_queue: unique_name("peer.order"),
            pay_queue: unique_name("peer.pay"),
            queue_type,
        }
    }

    fn env(&self, role: &str, db: &TestDb) -> Vec<(&'static str, String)> {
        vec![
            ("PEER_ROLE", role.to_string()),
            ("DATABASE_URL", db.url.clone()),
            ("AMQP_URL", test_kit::amqp_url()),
            ("PEER_EXCHANGE", self.exchange.clone()),
            ("PEER_ORDER_QUEUE", self.order_queue.clone()),
            ("PEER_PAY_QUEUE", self.pay_queue.clone()),
            ("PEER_QUEUE_TYPE", self.queue_type.to_string()),
            // A test that fails half-way leaves no queue behind for long.
            ("PEER_QUEUE_EXPIRES_MS", "120000".to_string()),
            ("RUST_LOG", "info".to_string()),
        ]
    }
}

/// Both databases, pay's accounts seeded, and both processes ready (pay first, as the bench
/// starts them).
struct Peer {
    order_db: TestDb,
    pay_db: TestDb,
    names: Names,
    pay: ServiceProcess,
    order: ServiceProcess,
    /// Kept open for `channel`.
    _amqp: Connection,
    channel: Channel,
}

impl Peer {
    async fn start(queue_type: &'static str) -> Self {
        let order_db = TestDb::new(&peer_ruststream::ORDER_MIGRATOR).await;
        let pay_db = TestDb::new(&peer_ruststream::PAY_MIGRATOR).await;
        for user in USERS {
            sqlx::query("INSERT INTO accounts (user_id, balance_cents) VALUES ($1, $2)")
                .bind(user)
                .bind(BALANCE)
                .execute(&pay_db.pool)
                .await
                .expect("seed an account");
        }
        let names = Names::new(queue_type);
        let pay = ServiceProcess::start(BIN, "PEER_ADDR", &names.env("pay", &pay_db)).await;
        let order = ServiceProcess::start(BIN, "PEER_ADDR", &names.env("order", &order_db)).await;
        let amqp = Connection::connect(&test_kit::amqp_url(), ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = amqp.create_channel().await.expect("a channel");
        Peer {
            order_db,
            pay_db,
            names,
            pay,
            order,
            _amqp: amqp,
            channel,
        }
    }

    /// Writes `n` orders, eight at a time; returns each order's user and amount.
    async fn write(&self, n: usize) -> Vec<(String, i64)> {
        let written: Vec<(String, i64)> = (0..n)
            .map(|i| (USERS[i % USERS.len()].to_string(), 1 + (i % 97) as i64))
            .collect();
        for chunk in written.chunks(8) {
            let mut tasks = tokio::task::JoinSet::new();
            for (user, amount) in chunk.iter().cloned() {
                let pool = self.order_db.pool.clone();
                tasks.spawn(async move {
                    peer_ruststream::write_order(&pool, &user, amount)
                        .await
                        .expect("write an order")
                });
            }
            tasks.join_all().await;
        }
        written
    }

    /// Waits until every order is `PAID` and both relay tables are empty.
    async fn settled(&self) {
        let (order, pay) = (&self.order_db.pool, &self.pay_db.pool);
        eventually(
            "every order paid and both relay tables empty",
            SETTLED,
            || async {
                let quiet = peer_ruststream::pending(order).await == 0
                    && count(order, "SELECT count(*) FROM order_events").await == 0
                    && count(pay, "SELECT count(*) FROM payment_events").await == 0;
                quiet.then_some(())
            },
        )
        .await;
    }

    /// Messages ready in `queue`.
    async fn ready(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    /// SIGTERM to both; each exits cleanly (handlers in flight finish first), and no delivery
    /// went back to a queue. The databases stay for the checks after.
    async fn stop(&mut self) {
        assert!(self.pay.terminate().await.success(), "pay exits cleanly");
        assert!(
            self.order.terminate().await.success(),
            "order exits cleanly"
        );
        for queue in [&self.names.pay_queue, &self.names.order_queue] {
            assert_eq!(self.ready(queue).await, 0, "{queue} is empty");
            self.channel
                .queue_delete(
                    ShortString::from(queue.as_str()),
                    QueueDeleteOptions::default(),
                )
                .await
                .expect("delete a queue");
        }
        self.channel
            .exchange_delete(
                ShortString::from(self.names.exchange.as_str()),
                ExchangeDeleteOptions::default(),
            )
            .await
            .expect("delete the exchange");
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count rows")
}

/// Each account's balance.
async fn balances(pay: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as("SELECT user_id, balance_cents FROM accounts")
        .fetch_all(pay)
        .await
        .expect("read the accounts")
        .into_iter()
        .collect()
}

/// Each account's balance once `written` was paid.
fn expected(written: &[(String, i64)]) -> HashMap<String, i64> {
    let mut balances: HashMap<String, i64> =
        USERS.iter().map(|u| (u.to_string(), BALANCE)).collect();
    for (user, amount) in written {
        *balances.get_mut(user).expect("a seeded user") -= amount;
    }
    balances
}

/// Checks that every order was paid once and the accounts debited exactly.
async fn assert_paid_once(peer: &Peer, written: &[(String, i64)]) {
    let (order, pay) = (&peer.order_db.pool, &peer.pay_db.pool);
    let orders: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT id, user_id, amount_cents FROM orders ORDER BY id")
            .fetch_all(order)
            .await
            .expect("read the orders");
    let payments: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT order_id, user_id, amount_cents FROM payments ORDER BY order_id")
            .fetch_all(pay)
            .await
            .expect("read the payments");
    assert_eq!(orders.len(), written.len(), "every order written");
    assert_eq!(payments, orders, "each order paid once, as it was ordered");
    assert_eq!(balances(pay).await, expected(written), "debited exactly");
    assert_eq!(peer_ruststream::payments(pay).await, written.len() as i64);
    assert_eq!(
        peer_ruststream::hop_ms(order, pay).await.len(),
        written.len()
    );
    assert_eq!(
        peer_ruststream::round_trip_ms(order).await.len(),
        written.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_is_paid_once_and_a_duplicate_delivery_changes_nothing() {
    let _pair = ONE_PAIR.lock().await;
    let mut peer = Peer::start("quorum").await;
    let mut written = peer.write(200).await;
    peer.settled().await;
    assert_paid_once(&peer, &written).await;

    // One order's OrderCreated again, as a redelivery would bring it.
    let (order_id, user, amount): (Uuid, String, i64) =
        sqlx::query_as("SELECT id, user_id, amount_cents FROM orders LIMIT 1")
            .fetch_one(&peer.order_db.pool)
            .await
            .expect("an order");
    let again = serde_json::to_vec(&messages::OrderCreated {
        order_id,
        user_id: user,
        item: "bench".into(),
        amount_cents: amount,
    })
    .expect("serialize");
    peer.channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let confirmation = peer
        .channel
        .basic_publish(
            ShortString::from(peer.names.exchange.as_str()),
            ShortString::from(messages::ORDER_CREATED.routing_key),
            // Mandatory: a message no queue takes comes back, so the ack says pay's queue has it.
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &again,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("the broker answered");
    assert!(confirmation.is_ack(), "the broker took it");
    assert!(confirmation.take_message().is_none(), "pay's queue took it");
    // One more order behind it: pay's workers take deliveries in queue order, so once this
    // one is paid the duplicate was handed to a worker, and SIGTERM waits for that worker.
    written.extend(peer.write(1).await);
    peer.settled().await;
    peer.stop().await;
    assert_paid_once(&peer, &written).await;
}

/// `GET` `path` (or `POST` when `post`) on `base`: the status and the JSON body.
async fn call(base: &str, path: &str, post: bool) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let url = format!("{base}{path}");
    let request = if post {
        client.post(url)
    } else {
        client.get(url)
    };
    let response = request.send().await.expect("the peer answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_carry_the_same_flow() {
    let _pair = ONE_PAIR.lock().await;
    let mut peer = Peer::start("classic").await;
    for process in [&peer.pay, &peer.order] {
        let (status, body) = call(&process.base, "/readyz", false).await;
        assert_eq!((status, &body["status"]), (200, &"ready".into()));
        let (status, body) = call(&process.base, "/readyz", true).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (405, &"method_not_allowed".into())
        );
        let (status, body) = call(&process.base, "/nothing", false).await;
        assert_eq!((status, &body["error"]["code"]), (404, &"not_found".into()));
    }
    let written = peer.write(40).await;
    peer.settled().await;
    peer.stop().await;
    assert_paid_once(&peer, &written).await;
}
