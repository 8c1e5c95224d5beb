//! Graceful shutdown: when the shutdown future resolves, the service stops accepting HTTP,
//! stops its workers, closes its broker connections and returns.

use std::time::Duration;

use common::testing::{self, TestDb};
use pay::{Application, PayConfig};

#[tokio::test]
async fn the_service_stops_cleanly_when_the_shutdown_future_resolves() {
    let amqp = testing::test_amqp();
    let db = TestDb::new(&pay::MIGRATOR).await;
    let app = Application::build(PayConfig {
        addr: "127.0.0.1:0".into(),
        database_url: db.url.clone(),
        db_max_connections: 5,
        messaging: testing::messaging(&amqp, "test.pay", pay::config::ORDER_CREATED_KEYS),
    })
    .await
    .unwrap();
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    testing::eventually("pay ready", Duration::from_secs(10), || async {
        let res = reqwest::get(format!("{base}/readyz")).await.ok()?;
        res.status().is_success().then_some(())
    })
    .await;

    stop.send(()).unwrap();
    // Shorter than the service's own drain limit (15 s): workers must stop, not be abandoned.
    let result = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("run_until_stopped returns after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "the port is closed after shutdown"
    );
}
