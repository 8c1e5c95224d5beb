//! Shared by pay's integration tests: the pay service on port 0, on a fresh database.

use std::ops::Deref;

use lapin::{BasicProperties, types::ShortString};
use message_table::amqp::AmqpConfig;
use test_kit::{Instance, TcpProxy, TestDb};

/// The AMQP properties of an OrderCreated message as order's relay sends it (persistent).
pub fn order_created_props(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(ShortString::from(message_id))
        .with_type(ShortString::from("OrderCreated"))
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
}

/// Sends `request` with the admin token; the status and the JSON body.
pub async fn admin_call(
    request: reqwest::RequestBuilder,
) -> (reqwest::StatusCode, serde_json::Value) {
    let res = request
        .header("authorization", test_kit::admin_bearer())
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

/// Pay on a database of its own; reads as its [`Instance`] (`base`, `counters`).
pub struct Pay {
    pub db: TestDb,
    pub instance: Instance,
}

impl Deref for Pay {
    type Target = Instance;

    fn deref(&self) -> &Instance {
        &self.instance
    }
}

/// Pay on a fresh database and `amqp`, ready; it runs until the test ends or
/// [`Instance::stop`].
pub async fn spawn_pay(amqp: &AmqpConfig) -> Pay {
    spawn(amqp, None).await
}

/// [`spawn_pay`], reaching its database through `proxy` (so a test can cut it).
pub async fn spawn_pay_through(amqp: &AmqpConfig, proxy: &TcpProxy) -> Pay {
    spawn(amqp, Some(proxy)).await
}

async fn spawn(amqp: &AmqpConfig, proxy: Option<&TcpProxy>) -> Pay {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let database_url = match proxy {
        Some(p) => test_kit::url_through_proxy(&db.url, p),
        None => db.url.clone(),
    };
    let messaging = test_kit::messaging(amqp, "test.pay", messages::PAY_QUEUE.routing_keys);
    let instance =
        test_kit::spawn_pay(test_kit::service_config(&database_url, &messaging, 5)).await;
    Pay { db, instance }
}
