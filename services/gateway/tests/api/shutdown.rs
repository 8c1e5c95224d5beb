//! Graceful shutdown: stop accepting, finish what is in flight, then return. (The binary
//! on SIGTERM: `process.rs`.)

use axum::http::StatusCode;

use crate::helpers::{spawn_held_upstream, spawn_stoppable_app, wait_until_refused, within};

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_the_in_flight_request_finish() {
    let upstream = spawn_held_upstream().await;
    let (app, stop, served) =
        spawn_stoppable_app(&format!("/order=http://{}", upstream.addr), |_| {}).await;
    let in_flight = tokio::spawn(app.client.get(app.url("/order/slow")).send());
    within(
        "the upstream to get the request",
        upstream.arrived.notified(),
    )
    .await;

    stop.send(()).unwrap();
    wait_until_refused(app.address).await;
    upstream.release.notify_one();

    let response = within("the in-flight response", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "finished");
    within("the gateway to stop", served)
        .await
        .unwrap()
        .expect("the gateway stops without an error");
}
