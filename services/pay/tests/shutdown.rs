//! Graceful shutdown: when the shutdown future resolves, the service stops accepting HTTP,
//! stops its workers, closes its broker connections and returns.

mod support;

use std::time::Duration;

#[tokio::test]
async fn the_service_stops_cleanly_when_the_shutdown_future_resolves() {
    let amqp = test_kit::test_amqp();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let pay = support::spawn_pay(&amqp, async {
        let _ = stopped.await;
    })
    .await;
    let base = pay.base.clone();

    stop.send(()).unwrap();
    // Shorter than the service's own drain limit (15 s): workers must stop, not be abandoned.
    let result = tokio::time::timeout(Duration::from_secs(10), pay.running)
        .await
        .expect("run_until_stopped returns after shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "the port is closed after shutdown"
    );
}
