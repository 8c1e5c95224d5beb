//! Starts the whole system in-process for a test: pay, order and the gateway, each on port 0,
//! each service with its own fresh database, all on a unique exchange of the real broker.

use std::{sync::Arc, time::Duration};

use common::config::Settings;
use message_service::service::{MessagingConfig, ServiceConfig};
use message_table::{amqp::AmqpConfig, inbox::InboxCounters};
use serde_json::{Value, json};
use test_kit::TestDb;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct System {
    pub order_db: TestDb,
    pub pay_db: TestDb,
    /// Base URL of the gateway: `/order/...` and `/pay/...`.
    pub gateway: String,
    pub order: String,
    /// Base URL of the pay service itself.
    pub pay: String,
    pub pay_counters: Arc<InboxCounters>,
    pub http: reqwest::Client,
    _instances: Vec<Instance>,
}

/// Starts pay (whose queue must exist before orders are routable), order, then the gateway.
/// `order_amqp` lets a test route the order service's broker connections through a proxy.
/// Pools are small (5) so that tests running in parallel stay within PostgreSQL's limit.
pub async fn start(amqp: &AmqpConfig, order_amqp: &AmqpConfig) -> System {
    start_with_pools(amqp, order_amqp, 5).await
}

/// [`start`] with each service's pool size (the services' default is 10).
pub async fn start_with_pools(amqp: &AmqpConfig, order_amqp: &AmqpConfig, pool: u32) -> System {
    start_system(amqp, order_amqp, pool, false).await
}

/// [`start`] with the teaching fault switches on (`DEMO_FAULTS=1`) in order and pay.
pub async fn start_with_faults(amqp: &AmqpConfig) -> System {
    start_system(amqp, amqp, 5, true).await
}

async fn start_system(
    amqp: &AmqpConfig,
    order_amqp: &AmqpConfig,
    pool: u32,
    demo_faults: bool,
) -> System {
    let pay_db = TestDb::new(&pay::MIGRATOR).await;
    let mut pay_msg = test_kit::messaging(amqp, "test.pay", messages::PAY_QUEUE.routing_keys);
    pay_msg.demo_faults = demo_faults;
    let pay = spawn_pay(&pay_db.url, &pay_msg, pool).await;
    let pay_counters = pay.counters.clone();

    let order_db = TestDb::new(&order::MIGRATOR).await;
    let mut order_msg =
        test_kit::messaging(order_amqp, "test.order", messages::ORDER_QUEUE.routing_keys);
    order_msg.demo_faults = demo_faults;
    let order = spawn_order(&order_db.url, &order_msg, pool).await;

    let gateway = spawn_gateway(&order.base, &pay.base, None).await;

    System {
        order_db,
        pay_db,
        gateway,
        order: order.base.clone(),
        pay: pay.base.clone(),
        pay_counters,
        http: reqwest::Client::new(),
        _instances: vec![pay, order],
    }
}

/// One running instance of order or pay, stopped gracefully by [`Instance::stop`] (as
/// SIGTERM would) or with the test.
pub struct Instance {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub counters: Arc<InboxCounters>,
    stop: CancellationToken,
    running: JoinHandle<anyhow::Result<()>>,
}

impl Instance {
    async fn run(app: message_service::service::Service) -> Self {
        let base = format!("http://{}", app.local_addr());
        let counters = app.inbox_counters();
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let running = tokio::spawn(app.run_until_stopped(shutdown));
        wait_ready(&base).await;
        Instance {
            base,
            counters,
            stop,
            running,
        }
    }

    /// Graceful shutdown: stop accepting, finish requests and deliveries in flight, close
    /// the broker channels. Returns what `run_until_stopped` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.running.await.expect("the service task panicked")
    }
}

/// A pay instance on `database_url` (several instances share a database and a queue).
pub async fn spawn_pay(database_url: &str, messaging: &MessagingConfig, pool: u32) -> Instance {
    spawn_pay_on("127.0.0.1:0", database_url, messaging, pool).await
}

/// [`spawn_pay`] listening on `addr` (a test that must know pay's URL before it starts).
pub async fn spawn_pay_on(
    addr: &str,
    database_url: &str,
    messaging: &MessagingConfig,
    pool: u32,
) -> Instance {
    let app = pay::build(ServiceConfig {
        addr: addr.into(),
        database_url: database_url.into(),
        db_max_connections: pool,
        admin: test_kit::admin(),
        messaging: messaging.clone(),
    })
    .await
    .expect("build pay");
    Instance::run(app).await
}

/// An order instance on `database_url`.
pub async fn spawn_order(database_url: &str, messaging: &MessagingConfig, pool: u32) -> Instance {
    let app = order::build(order_config(database_url, messaging, pool), None)
        .await
        .expect("build order");
    Instance::run(app).await
}

/// [`spawn_order`] with its reconciler.
pub async fn spawn_order_with_reconciler(
    database_url: &str,
    messaging: &MessagingConfig,
    pool: u32,
    reconciler: order::reconciler::ReconcilerConfig,
) -> Instance {
    let cfg = order_config(database_url, messaging, pool);
    let app = order::build(cfg, Some(reconciler))
        .await
        .expect("build order");
    Instance::run(app).await
}

fn order_config(database_url: &str, messaging: &MessagingConfig, pool: u32) -> ServiceConfig {
    ServiceConfig {
        addr: "127.0.0.1:0".into(),
        database_url: database_url.into(),
        db_max_connections: pool,
        admin: test_kit::admin(),
        messaging: messaging.clone(),
    }
}

async fn wait_ready(base: &str) {
    test_kit::eventually(
        &format!("{base}/readyz is 200"),
        Duration::from_secs(20),
        || async {
            let res = reqwest::get(format!("{base}/readyz")).await.ok()?;
            res.status().is_success().then_some(())
        },
    )
    .await;
}

impl System {
    /// `POST /order/buy` through the gateway; returns the order id.
    pub async fn buy(&self, user: &str, amount_cents: i64) -> Uuid {
        let res = self
            .http
            .post(format!("{}/order/buy", self.gateway))
            .json(&json!({ "user_id": user, "item": "book", "amount_cents": amount_cents }))
            .send()
            .await
            .expect("POST /order/buy");
        assert_eq!(res.status(), reqwest::StatusCode::CREATED);
        let body: Value = res.json().await.unwrap();
        body["order_id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.gateway))
            .send()
            .await
            .expect("GET through the gateway");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the order leaves PENDING_PAYMENT and returns it.
    pub async fn settled(&self, order_id: Uuid, within: Duration) -> Value {
        test_kit::eventually(&format!("order {order_id} settles"), within, || async {
            let (_, order) = self.get(&format!("/order/orders/{order_id}")).await;
            (order["status"] != order::OrderStatus::PendingPayment.as_str()).then_some(order)
        })
        .await
    }
}

/// The gateway's configuration as its environment gives it (`GATEWAY_*`, else the defaults).
pub fn gateway_config() -> gateway::GatewayConfig {
    gateway::GatewaySettings::try_load_from(["gateway"])
        .expect("gateway settings")
        .into_config()
        .expect("gateway config")
}

/// The gateway on port 0 in front of one order and one pay (their base URLs), forwarding
/// the admin API when given its token (the services' is [`test_kit::admin`]), with
/// [`gateway_config`]'s other settings; returns its base URL.
pub async fn spawn_gateway(
    order: &str,
    pay: &str,
    admin: Option<common::admin::AdminAuth>,
) -> String {
    let mut gw = gateway_config();
    gw.addr = "127.0.0.1:0".into();
    if let Some(admin) = admin {
        gw.admin = admin;
    }
    gw.routes =
        gateway::routes::RouteTable::parse(&format!("/order={order},/pay={pay}")).expect("routes");
    let app = gateway::Application::build(gw)
        .await
        .expect("build gateway");
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    base
}
