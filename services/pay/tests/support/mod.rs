//! Shared by pay's integration tests: the pay service on port 0, on a fresh database.
// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::{future::Future, sync::Arc, time::Duration};

use lapin::{BasicProperties, types::ShortString};
use message_service::service::ServiceConfig;
use message_table::{amqp::AmqpConfig, inbox::InboxCounters};
use test_kit::{TcpProxy, TestDb};
use tokio::task::JoinHandle;

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

pub struct Pay {
    pub db: TestDb,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub counters: Arc<InboxCounters>,
    /// The service's `run_until_stopped`; it ends when the shutdown future resolves.
    pub running: JoinHandle<anyhow::Result<()>>,
}

/// Builds pay on `amqp`, runs it until `shutdown` resolves, and waits until it is ready.
pub async fn spawn_pay(
    amqp: &AmqpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Pay {
    spawn(amqp, shutdown, None).await
}

/// [`spawn_pay`], reaching its database through `proxy` (so a test can cut it).
pub async fn spawn_pay_through(
    amqp: &AmqpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    proxy: &TcpProxy,
) -> Pay {
    spawn(amqp, shutdown, Some(proxy)).await
}

async fn spawn(
    amqp: &AmqpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    proxy: Option<&TcpProxy>,
) -> Pay {
    let db = TestDb::new(&pay::MIGRATOR).await;
    let database_url = match proxy {
        Some(p) => test_kit::url_through_proxy(&db.url, p),
        None => db.url.clone(),
    };
    let app = pay::build(ServiceConfig {
        addr: "127.0.0.1:0".into(),
        database_url,
        db_max_connections: 5,
        admin: test_kit::admin(),
        messaging: test_kit::messaging(amqp, "test.pay", messages::PAY_QUEUE.routing_keys),
    })
    .await
    .expect("build pay");
    let base = format!("http://{}", app.local_addr());
    let counters = app.inbox_counters();
    let running = tokio::spawn(app.run_until_stopped(shutdown));
    test_kit::eventually("pay is ready", Duration::from_secs(10), || async {
        let res = reqwest::get(format!("{base}/readyz")).await.ok()?;
        res.status().is_success().then_some(())
    })
    .await;
    Pay {
        db,
        base,
        counters,
        running,
    }
}
