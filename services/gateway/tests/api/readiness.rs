use axum::{Router, http::StatusCode, routing::get};
use serde_json::{Value, json};

use crate::helpers::{dead_addr, spawn_app, spawn_upstream};

async fn spawn_healthy() -> std::net::SocketAddr {
    spawn_upstream(Router::new().route("/healthz", get(common::http::healthz))).await
}

#[tokio::test]
async fn readyz_is_200_when_every_upstream_is_healthy() {
    let order = spawn_healthy().await;
    let pay = spawn_healthy().await;
    let app = spawn_app(&format!("/order=http://{order},/pay=http://{pay}")).await;

    let response = app.client.get(app.url("/readyz")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["order"], "up");
    assert_eq!(body["checks"]["pay"], "up");
}

#[tokio::test]
async fn readyz_is_503_naming_the_dead_upstream() {
    let order = spawn_healthy().await;
    let app = spawn_app(&format!(
        "/order=http://{order},/pay=http://{}",
        dead_addr()
    ))
    .await;

    let response = app.client.get(app.url("/readyz")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["order"], "up");
    assert_eq!(body["checks"]["pay"], "down");
}

#[tokio::test]
async fn healthz_is_200_even_when_upstreams_are_down() {
    let app = spawn_app(&format!("/order=http://{}", dead_addr())).await;

    let response = app.client.get(app.url("/healthz")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn readyz_is_503_when_an_upstream_answers_but_is_not_healthy() {
    let order = spawn_healthy().await;
    let pay = spawn_upstream(Router::new().route(
        "/healthz",
        get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
    ))
    .await;
    let app = spawn_app(&format!("/order=http://{order},/pay=http://{pay}")).await;

    let response = app.client.get(app.url("/readyz")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["pay"], "down");
    assert_eq!(
        body["instances"]["pay"],
        json!([{ "url": format!("http://{pay}"), "health": "unhealthy", "status": 503, "ejected": false }])
    );
}
