//! The gateway's own `GET /metrics`: requests by route and status, and each upstream
//! instance's results, counted exactly. The services' `/metrics` stay internal.

use axum::{Router, http::StatusCode, routing::get};

use crate::helpers::{dead_addr, error_code, spawn_app_with, spawn_held_upstream, spawn_upstream};

/// The value of the sample line `series` (`name{labels}` as the gateway writes it).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn upstream_results_are_counted_per_instance() {
    let good = spawn_upstream(
        Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/boom", get(|| async { StatusCode::INTERNAL_SERVER_ERROR })),
    )
    .await;
    let held = spawn_held_upstream().await;
    let dead = dead_addr();
    let routes = format!(
        "/good=http://{good},/dead=http://{dead},/held=http://{}",
        held.addr
    );
    let app = spawn_app_with(&routes, |config| {
        config.routes = config.routes.clone().with_timeouts("/held=100").unwrap();
    })
    .await;
    let get = |path: &'static str| {
        let request = app.client.get(app.url(path)).send();
        async move { request.await.unwrap().status() }
    };

    assert_eq!(get("/good/ok").await, StatusCode::OK);
    assert_eq!(get("/good/ok").await, StatusCode::OK);
    assert_eq!(get("/good/boom").await, StatusCode::INTERNAL_SERVER_ERROR);
    // Refused twice: ejected by the first refusal only.
    assert_eq!(get("/dead/x").await, StatusCode::BAD_GATEWAY);
    assert_eq!(get("/dead/x").await, StatusCode::BAD_GATEWAY);
    assert_eq!(get("/held/slow").await, StatusCode::GATEWAY_TIMEOUT);
    // Internal on the upstream: answered by the gateway, no attempt.
    let response = app
        .client
        .get(app.url("/good/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response).await, "no_route");

    // The classic text format by default, OpenMetrics when the scraper asks for it.
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let classic = response.text().await.unwrap();
    assert!(
        classic.contains("# TYPE gateway_upstream_results_total counter"),
        "{classic}"
    );
    assert!(!classic.contains("# EOF"), "{classic}");
    let response = app
        .client
        .get(app.url("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let results = |instance: String, result: &str| {
        sample(
            &text,
            &format!(
                "gateway_upstream_results_total{{instance=\"http://{instance}\",result=\"{result}\"}}"
            ),
        )
    };
    let (good, dead, held) = (good.to_string(), dead.to_string(), held.addr.to_string());
    assert_eq!(results(good.clone(), "ok"), 2.0);
    assert_eq!(results(good.clone(), "5xx"), 1.0);
    assert_eq!(results(good.clone(), "connect_failure"), 0.0);
    assert_eq!(results(dead.clone(), "connect_failure"), 2.0);
    assert_eq!(results(dead.clone(), "ejected"), 1.0);
    assert_eq!(results(dead, "ok"), 0.0);
    assert_eq!(results(held.clone(), "timeout"), 1.0);
    assert_eq!(results(held, "ok"), 0.0);

    let requests = |status: u16| {
        sample(
            &text,
            &format!(
                "http_requests_total{{method=\"GET\",route=\"unmatched\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(requests(200), 2.0);
    assert_eq!(requests(500), 1.0);
    assert_eq!(requests(502), 2.0);
    assert_eq!(requests(504), 1.0);
    assert_eq!(requests(404), 1.0);
    // The gateway has no message tables.
    assert!(!text.contains("outbox_"), "{text}");
}
