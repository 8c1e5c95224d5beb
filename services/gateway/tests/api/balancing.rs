//! Several instances per route: round robin, a dead instance ejected without failing a
//! request, readmitted once it is back, and retries only where they are safe.

use std::{net::SocketAddr, sync::atomic::Ordering, time::Duration};

use axum::{Router, http::StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::helpers::{
    TestApp, dead_addr, echo, error_code, spawn_app, spawn_app_with, spawn_counting_echo,
    spawn_echo, spawn_upstream, spawn_upstream_at, within,
};

/// The address of the echo instance that answered `GET path`.
async fn answered_by(app: &TestApp, path: &str) -> String {
    let response = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let seen: Value = response.json().await.unwrap();
    seen["headers"]["host"].as_str().unwrap().to_string()
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn requests_take_turns_across_the_instances_of_a_route() {
    let a = spawn_echo().await;
    let b = spawn_echo().await;
    let c = spawn_echo().await;
    let app = spawn_app(&format!(
        "/order=http://{a},http://{b},http://{c},/pay=http://{a}"
    ))
    .await;

    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(answered_by(&app, "/order/x").await);
    }

    let [a, b, c] = [a, b, c].map(|addr| addr.to_string());
    assert_eq!(seen, [&a, &b, &c, &a, &b, &c].map(String::as_str));
}

#[tokio::test]
async fn with_one_of_two_instances_down_every_request_succeeds_and_the_dead_one_is_ejected() {
    let dead = dead_addr();
    let (live, live_requests) = spawn_counting_echo().await;
    let app = spawn_app_with(&format!("/order=http://{dead},http://{live}"), |config| {
        // No trial during the test: the dead instance is tried once, then only last.
        config.ejection.base = Duration::from_secs(3600);
        config.ejection.max = Duration::from_secs(3600);
    })
    .await;

    // The first request goes to the dead instance first: its body must survive the retry.
    for i in 0..10 {
        let response = app
            .client
            .post(app.url("/order/buy"))
            .body(format!("order {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen["headers"]["host"], live.to_string());
        assert_eq!(seen["body"], format!("order {i}"));
    }
    assert_eq!(live_requests.load(Ordering::SeqCst), 10);

    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["order"], "up");
    assert_eq!(
        body["instances"]["order"],
        json!([
            { "url": format!("http://{dead}"), "health": "unreachable", "ejected": true },
            { "url": format!("http://{live}"), "health": "up", "ejected": false },
        ])
    );
}

#[tokio::test]
async fn an_ejected_instance_gets_requests_again_once_it_accepts_connections() {
    let revived: SocketAddr = dead_addr();
    let live = spawn_echo().await;
    let app = spawn_app_with(
        &format!("/order=http://{revived},http://{live}"),
        |config| {
            config.ejection.base = Duration::from_millis(20);
            config.ejection.max = Duration::from_millis(100);
        },
    )
    .await;
    assert_eq!(answered_by(&app, "/order/x").await, live.to_string());
    let (_, body) = readyz(&app).await;
    assert_eq!(body["instances"]["order"][0]["ejected"], true, "{body}");

    spawn_upstream_at(revived, Router::new().fallback(echo)).await;

    // A trial is due every ≤ 100 ms; the first that connects puts the instance back.
    within("a request to reach the revived instance", async {
        while answered_by(&app, "/order/x").await != revived.to_string() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["instances"]["order"][0],
        json!({ "url": format!("http://{revived}"), "health": "up", "ejected": false })
    );
    // Back in rotation: the two instances take turns again.
    let next = [
        answered_by(&app, "/order/x").await,
        answered_by(&app, "/order/x").await,
    ];
    assert_ne!(next[0], next[1]);
}

#[tokio::test]
async fn a_request_is_a_502_only_when_no_instance_accepts_a_connection() {
    let (a, b) = (dead_addr(), dead_addr());
    let app = spawn_app(&format!("/order=http://{a},http://{b}")).await;

    let response = app.client.get(app.url("/order/x")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_code(response).await, "bad_gateway");
    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["order"], "down");
    for instance in body["instances"]["order"].as_array().unwrap() {
        assert_eq!(instance["health"], "unreachable");
        assert_eq!(instance["ejected"], true);
    }
}

/// An upstream that reads the start of a request and closes the connection without
/// answering: the request has reached it, so it must not be sent anywhere else.
async fn spawn_closing_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
        }
    });
    addr
}

#[tokio::test]
async fn only_a_connect_failure_moves_a_request_to_the_next_instance() {
    let closing = spawn_closing_upstream().await;
    let hanging = spawn_upstream(Router::new().fallback(std::future::pending::<()>)).await;
    let failing = spawn_upstream(
        Router::new().fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, "busy") }),
    )
    .await;
    let (spare, spare_requests) = spawn_counting_echo().await;

    // A fresh gateway per request, so it goes to the first instance first. Without a body
    // only the kind of failure stops a retry; with one, also the body having been sent.
    for (first, expected, timeout_ms) in [
        (closing, StatusCode::BAD_GATEWAY, 30_000),
        (hanging, StatusCode::GATEWAY_TIMEOUT, 300),
        (failing, StatusCode::SERVICE_UNAVAILABLE, 30_000),
    ] {
        for with_body in [false, true] {
            let app = spawn_app_with(&format!("/order=http://{first},http://{spare}"), |config| {
                config.upstream_timeout = Duration::from_millis(timeout_ms);
            })
            .await;
            let request = if with_body {
                app.client.post(app.url("/order/buy")).body("pay once")
            } else {
                app.client.get(app.url("/order/orders/1"))
            };
            let response = within("the gateway's answer", request.send())
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                expected,
                "first instance {first}, body: {with_body}"
            );
        }
    }

    assert_eq!(spare_requests.load(Ordering::SeqCst), 0);
}
