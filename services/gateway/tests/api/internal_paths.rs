//! The services' internal paths (health, admin, metrics) are not reachable through the
//! gateway unless configured: the gateway answers its 404 without contacting the upstream.

use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use gateway::internal::InternalPaths;
use serde_json::Value;

use crate::helpers::{
    error_code, raw_request_status, spawn_app, spawn_app_with, spawn_counting_echo,
};

#[tokio::test]
async fn internal_paths_are_a_404_without_contacting_the_upstream() {
    let (order, requests) = spawn_counting_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;

    for path in [
        "/order/healthz",
        "/order/readyz",
        "/order/admin",
        "/order/admin/dead-messages?limit=5",
        "/order/internal/x",
        "/order/metrics/",
        "/order//Admin",
        "/order/%61dmin",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(response).await, "no_route", "{path}");
    }
    // Sent raw: an HTTP client would resolve the dot segments before sending.
    for request_line in [
        "GET /order/orders/../admin HTTP/1.1",
        "GET /order/x/%2e%2e/metrics HTTP/1.1",
    ] {
        assert_eq!(
            raw_request_status(app.address, request_line).await,
            404,
            "{request_line}"
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 0);

    // Only whole segments match: these are ordinary paths.
    for (path, upstream_path) in [
        ("/order/administrators", "/administrators"),
        ("/order/orders/healthz", "/orders/healthz"),
    ] {
        let seen: Value = app
            .client
            .get(app.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["path"], upstream_path);
    }
}

#[tokio::test]
async fn an_empty_list_exposes_internal_paths_and_a_custom_list_replaces_the_default() {
    let (order, _) = spawn_counting_echo().await;
    let open = spawn_app_with(&format!("/order=http://{order}"), |config| {
        config.internal_paths = InternalPaths::parse("").unwrap();
    })
    .await;
    for path in ["/order/healthz", "/order/admin/x"] {
        let seen: Value = open
            .client
            .get(open.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen["path"], path.strip_prefix("/order").unwrap());
    }

    let custom = spawn_app_with(&format!("/order=http://{order}"), |config| {
        config.internal_paths = InternalPaths::parse("/orders/secret").unwrap();
    })
    .await;
    let response = custom
        .client
        .get(custom.url("/order/orders/secret/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = custom
        .client
        .get(custom.url("/order/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
