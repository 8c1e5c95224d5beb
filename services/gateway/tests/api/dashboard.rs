//! The dashboard at `/`: the page and its files come from the binary, and a catch-all
//! route `/` still gets every other method on `/` and every other path.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{error_code, spawn_app, spawn_echo};

#[tokio::test]
async fn the_page_and_its_files_are_served_from_the_binary() {
    let order = spawn_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;

    for (path, content_type, contains) in [
        ("/", "text/html", "<title>Local message table"),
        (
            "/dashboard/app.js",
            "text/javascript",
            "/order/orders?limit=",
        ),
        ("/dashboard/style.css", "text/css", ":focus-visible"),
        ("/dashboard/scenarios.md", "text/plain", "## 10 "),
        ("/dashboard/scenarios.zh-CN.md", "text/plain", "## 10 "),
        ("/dashboard/i18n.js", "text/javascript", "localStorage"),
        (
            "/dashboard/vendor/marked.esm.js",
            "text/javascript",
            "marked v",
        ),
        ("/dashboard/vendor/marked.LICENSE", "text/plain", "MIT"),
    ] {
        let res = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let headers = res.headers().clone();
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{path}: {headers:?}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(headers.contains_key("x-request-id"), "{path}");
        let body = res.text().await.unwrap();
        assert!(body.contains(contains), "{path}");
    }
    // Nothing from elsewhere: every script and style sheet is the gateway's own.
    let page = app.client.get(app.url("/")).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert!(!page.contains("http://") && !page.contains("https://"));

    let res = app
        .client
        .get(app.url("/dashboard/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(res).await, "no_route");
    // Without a route `/`, another method on `/` has no route either.
    let res = app.client.post(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(res).await, "no_route");
}

#[tokio::test]
async fn with_a_catch_all_route_the_page_keeps_get_slash_and_the_route_gets_the_rest() {
    let root = spawn_echo().await;
    let app = spawn_app(&format!("/=http://{root}")).await;

    let res = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("<title>Local message table")
    );

    for (method, path, seen_path) in [
        (reqwest::Method::POST, "/", "/"),
        (reqwest::Method::GET, "/anything", "/anything"),
        (reqwest::Method::GET, "/dashboards", "/dashboards"),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{method} {path}");
        let seen: Value = res.json().await.unwrap();
        assert_eq!(seen["method"], method.as_str());
        assert_eq!(seen["path"], seen_path);
    }
}
