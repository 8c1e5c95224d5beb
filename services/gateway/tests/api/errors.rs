use std::time::Duration;

use axum::{Router, http::StatusCode, routing::get};

use crate::helpers::{
    dead_addr, error_code, spawn_app, spawn_app_with, spawn_echo, spawn_upstream, within,
};

#[tokio::test]
async fn a_path_without_a_route_is_a_404_in_the_error_shape() {
    let order = spawn_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;

    let response = app.client.get(app.url("/nowhere")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "no_route");
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let app = spawn_app(&format!("/order=http://{}", dead_addr())).await;

    let response = app.client.get(app.url("/order/x")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_code(response).await, "bad_gateway");
}

#[tokio::test]
async fn an_upstream_slower_than_the_timeout_is_a_504() {
    let slow = spawn_upstream(Router::new().route(
        "/slow",
        get(|| async {
            std::future::pending::<()>().await;
        }),
    ))
    .await;
    let app = spawn_app_with(&format!("/order=http://{slow}"), |config| {
        config.upstream_timeout = Duration::from_millis(100);
    })
    .await;

    let response = within(
        "the gateway to give up",
        app.client.get(app.url("/order/slow")).send(),
    )
    .await
    .unwrap();

    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_code(response).await, "gateway_timeout");
}

#[tokio::test]
async fn a_route_timeout_overrides_the_default_timeout() {
    let slow = spawn_upstream(Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "late but fine"
        }),
    ))
    .await;
    let app = spawn_app_with(
        &format!("/impatient=http://{slow},/patient=http://{slow}"),
        |config| {
            config.upstream_timeout = Duration::from_millis(100);
            config.routes = config
                .routes
                .clone()
                .with_timeouts("/patient=20000")
                .unwrap();
        },
    )
    .await;

    let response = within(
        "the impatient route to give up",
        app.client.get(app.url("/impatient/slow")).send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_code(response).await, "gateway_timeout");

    let response = app
        .client
        .get(app.url("/patient/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "late but fine");
}
