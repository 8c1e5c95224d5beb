use axum::{
    Json, Router,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect},
    routing::get,
};
use serde_json::{Value, json};

use crate::helpers::{error_code, spawn_app, spawn_echo, spawn_upstream};

#[tokio::test]
async fn strips_the_prefix_and_forwards_method_query_and_body() {
    let order = spawn_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;

    let seen: Value = app
        .client
        .post(app.url("/order/buy?x=1&y=two%20words"))
        .body("hello upstream")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/buy");
    assert_eq!(seen["query"], "x=1&y=two%20words");
    assert_eq!(seen["body"], "hello upstream");

    let seen: Value = app
        .client
        .patch(app.url("/order"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["method"], "PATCH");
    assert_eq!(seen["path"], "/");
    assert_eq!(seen["body"], "{}");
}

#[tokio::test]
async fn longest_prefix_on_a_segment_boundary_wins() {
    let order = spawn_echo().await;
    let admin = spawn_echo().await;
    let app = spawn_app(&format!(
        "/order=http://{order},/order/admin=http://{admin}"
    ))
    .await;

    let seen: Value = app
        .client
        .get(app.url("/order/admin/users"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The upstream's own address in `host` tells which upstream answered.
    assert_eq!(seen["headers"]["host"], admin.to_string());
    assert_eq!(seen["path"], "/users");

    let seen: Value = app
        .client
        .get(app.url("/order/administrators"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["host"], order.to_string());
    assert_eq!(seen["path"], "/administrators");

    let response = app.client.get(app.url("/orders")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(response).await, "no_route");
}

#[tokio::test]
async fn upstream_error_statuses_and_bodies_pass_through() {
    let upstream = spawn_upstream(
        Router::new()
            .route(
                "/missing",
                get(|| async {
                    (
                        StatusCode::NOT_FOUND,
                        [(header::CONTENT_TYPE, "text/plain")],
                        "no such order",
                    )
                }),
            )
            .route(
                "/broken",
                get(|| async {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Json(json!({"error": {"code": "database_unavailable", "message": "x"}})),
                    )
                }),
            ),
    )
    .await;
    let app = spawn_app(&format!("/order=http://{upstream}")).await;

    let response = app
        .client
        .get(app.url("/order/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
    assert_eq!(response.text().await.unwrap(), "no such order");

    let response = app
        .client
        .get(app.url("/order/broken"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(response).await, "database_unavailable");
}

#[tokio::test]
async fn redirects_are_passed_to_the_client_not_followed() {
    let upstream = spawn_upstream(
        Router::new()
            .route("/old", get(|| async { Redirect::to("/new") }))
            .route("/new", get(|| async { "followed".into_response() })),
    )
    .await;
    let app = spawn_app(&format!("/order=http://{upstream}")).await;

    let response = app.client.get(app.url("/order/old")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/new");
}
