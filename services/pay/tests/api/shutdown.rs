//! Graceful shutdown: when the shutdown future resolves, the service stops accepting HTTP,
//! stops its workers, closes its broker connections and returns.

use crate::support;

use std::time::Duration;

#[tokio::test]
async fn the_service_stops_cleanly_when_the_shutdown_future_resolves() {
    let amqp = test_kit::test_amqp();
    let pay = support::spawn_pay(&amqp).await;
    let base = pay.base.clone();

    // `stop` resolves the service's shutdown future and waits for `run_until_stopped`.
    // Shorter than the service's own drain limit (15 s): workers must stop, not be abandoned.
    let result = tokio::time::timeout(Duration::from_secs(10), pay.instance.stop())
        .await
        .expect("run_until_stopped returns after shutdown");
    assert!(result.is_ok(), "{result:?}");
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "the port is closed after shutdown"
    );
}
