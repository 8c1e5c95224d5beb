//! Starts the whole system in-process for a test: pay, order and the gateway, each on port 0,
//! each service with its own fresh database, all on a unique exchange of the real broker.

use std::{sync::Arc, time::Duration};

use common::config::Settings;
use message_table::{amqp::AmqpConfig, inbox::InboxCounters};
use serde_json::{Value, json};
use service_kit::service::ServiceConfig;
use test_kit::{Instance, TestDb};
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
    pay_config: ServiceConfig,
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
    let pay_config = test_kit::service_config(&pay_db.url, &pay_msg, pool);
    let pay = test_kit::spawn_pay(pay_config.clone()).await;
    let pay_counters = pay.counters.clone();

    let order_db = TestDb::new(&order::MIGRATOR).await;
    let mut order_msg =
        test_kit::messaging(order_amqp, "test.order", messages::ORDER_QUEUE.routing_keys);
    order_msg.demo_faults = demo_faults;
    let order =
        test_kit::spawn_order(test_kit::service_config(&order_db.url, &order_msg, pool)).await;

    let gateway = spawn_gateway(&order.base, &pay.base, None).await;

    System {
        order_db,
        pay_db,
        gateway,
        order: order.base.clone(),
        pay: pay.base.clone(),
        pay_counters,
        http: reqwest::Client::new(),
        pay_config,
        _instances: vec![pay, order],
    }
}

impl System {
    /// One more pay instance on this system's database and queue, with the same settings:
    /// it competes for pay's deliveries, and the test stops it when it likes.
    pub async fn another_pay(&self) -> Instance {
        test_kit::spawn_pay(self.pay_config.clone()).await
    }

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
