//! `/admin/<route>/...`: forwarded to the route's `/admin/...` with the admin token only;
//! without `ADMIN_TOKEN` on the gateway, a 404 like any missing route.

use std::sync::atomic::Ordering;

use axum::{
    Router,
    http::{StatusCode, Uri},
};
use common::admin::AdminAuth;
use serde_json::Value;

use crate::helpers::{
    TestApp, error_code, raw_request_status, spawn_app, spawn_app_with, spawn_counting_echo,
    spawn_upstream,
};

const TOKEN: &str = "gateway-test-admin-token";

async fn get(app: &TestApp, path: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn admin_paths_are_forwarded_with_the_token_only() {
    let (order, requests) = spawn_counting_echo().await;
    let (pay, _) = spawn_counting_echo().await;
    let app = spawn_app_with(&format!("/order=http://{order},/pay=http://{pay}"), |c| {
        c.admin = AdminAuth::parse(TOKEN).unwrap();
    })
    .await;

    // Missing, wrong, of another length, another scheme: 401 naming the scheme, and the
    // upstream never hears of it.
    for authorization in [
        None,
        Some("Bearer gateway-test-admin-tokem".to_string()),
        Some(format!("Bearer {TOKEN}-and-more")),
        Some("Bearer x".to_string()),
        Some(format!("Basic {TOKEN}")),
    ] {
        let response = get(&app, "/admin/order/stats", authorization.as_deref()).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{authorization:?}"
        );
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(error_code(response).await, "unauthorized");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 0);

    // The right token: the route's /admin/..., query and Authorization kept.
    let bearer = format!("Bearer {TOKEN}");
    let seen: Value = get(&app, "/admin/order/outbox?status=dead", Some(&bearer))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["path"], "/admin/outbox");
    assert_eq!(seen["query"], "status=dead");
    assert_eq!(seen["headers"]["authorization"], bearer);
    let seen: Value = get(&app, "/admin/pay/stats", Some(&bearer))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["path"], "/admin/stats");

    // An unknown route is a 404.
    let response = get(&app, "/admin/nope/stats", Some(&bearer)).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let before = requests.load(Ordering::SeqCst);
    // The services' own internal paths stay closed, token or not.
    for path in [
        "/order/metrics",
        "/order/healthz",
        "/order/readyz",
        "/order/admin/stats",
    ] {
        let response = get(&app, path, Some(&bearer)).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(response).await, "no_route");
    }
    assert_eq!(requests.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn dot_segments_cannot_climb_out_of_admin() {
    // 200 below /admin, 418 anywhere else (/metrics, /healthz...).
    let upstream = spawn_upstream(Router::new().fallback(|uri: Uri| async move {
        if uri.path().starts_with("/admin/") {
            StatusCode::OK
        } else {
            StatusCode::IM_A_TEAPOT
        }
    }))
    .await;
    let app = spawn_app_with(&format!("/order=http://{upstream}"), |c| {
        c.admin = AdminAuth::parse(TOKEN).unwrap();
    })
    .await;
    // Sent raw: an HTTP client would resolve the dot segments before sending.
    for path in [
        "/admin/order/../metrics",
        "/admin/order/../../healthz",
        "/admin/order/%2e%2e/%2E%2e/readyz",
        "/admin/order/x/../../../metrics",
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nauthorization: Bearer {TOKEN}");
        assert_eq!(raw_request_status(app.address, &head).await, 200, "{path}");
    }
}

#[tokio::test]
async fn without_a_token_on_the_gateway_admin_paths_do_not_exist() {
    let (order, requests) = spawn_counting_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;
    for authorization in [None, Some(format!("Bearer {TOKEN}"))] {
        let response = get(&app, "/admin/order/stats", authorization.as_deref()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(response).await, "no_route");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 0);
}
