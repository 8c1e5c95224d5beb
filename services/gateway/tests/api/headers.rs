use axum::{
    Router,
    http::{HeaderName, StatusCode},
    routing::get,
};
use common::trace::TraceParent;
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_echo, spawn_upstream};

/// What the echo upstream saw for `request`.
async fn echoed(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn x_forwarded_headers_reach_the_upstream() {
    let order = spawn_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;

    let seen = echoed(app.client.get(app.url("/order/x"))).await;
    let headers = &seen["headers"];
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], app.address.to_string());
    // The upstream is addressed by its own name, not the gateway's.
    assert_eq!(headers["host"], order.to_string());

    // An earlier proxy's chain is extended, not replaced.
    let seen = echoed(
        app.client
            .get(app.url("/order/x"))
            .header("x-forwarded-for", "203.0.113.7"),
    )
    .await;
    assert_eq!(seen["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
}

/// The trace the upstream was sent when the client sent `traceparent`.
async fn forwarded_trace(traceparent: Option<&str>) -> TraceParent {
    let order = spawn_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;
    let mut request = app.client.get(app.url("/order/x"));
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    let seen = echoed(request).await;
    let sent = seen["headers"]["traceparent"]
        .as_str()
        .expect("a traceparent");
    TraceParent::parse(sent).unwrap_or_else(|| panic!("invalid traceparent {sent:?}"))
}

#[tokio::test]
async fn the_clients_trace_is_continued_and_a_missing_or_invalid_one_started() {
    let client = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let kept = forwarded_trace(Some(client)).await;
    let sent = TraceParent::parse(client).unwrap();
    assert_eq!((kept.trace_id, kept.flags), (sent.trace_id, sent.flags));
    // The upstream's parent is the gateway's span, not the client's.
    assert_ne!(kept.parent_id, sent.parent_id);

    let started = forwarded_trace(None).await;
    let invalid = "00-00000000000000000000000000000000-b7ad6b7169203331-01";
    let replaced = forwarded_trace(Some(invalid)).await;
    assert_ne!(started.trace_id, replaced.trace_id);
    assert_ne!(replaced.trace_id, 0);
}

/// The echo upstream's `response` carries a generated (UUID) request id, the one it was sent.
async fn assert_generated_id_sent_upstream_and_echoed(response: reqwest::Response) {
    let echoed_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    uuid::Uuid::parse_str(&echoed_id).expect("generated id is a UUID");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], echoed_id);
}

#[tokio::test]
async fn a_missing_request_id_is_generated_sent_upstream_and_echoed() {
    let order = spawn_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;

    let response = app.client.get(app.url("/order/x")).send().await.unwrap();

    assert_generated_id_sent_upstream_and_echoed(response).await;
}

#[tokio::test]
async fn a_given_request_id_is_kept_sent_upstream_and_echoed() {
    let order = spawn_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;

    let response = app
        .client
        .get(app.url("/order/x"))
        .header("x-request-id", "client-chose-this-42")
        .send()
        .await
        .unwrap();

    assert_eq!(response.headers()["x-request-id"], "client-chose-this-42");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-request-id"], "client-chose-this-42");
}

#[tokio::test]
async fn an_empty_request_id_is_replaced_by_a_generated_one() {
    let order = spawn_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;

    let response = app
        .client
        .get(app.url("/order/x"))
        .header("x-request-id", "")
        .send()
        .await
        .unwrap();

    assert_generated_id_sent_upstream_and_echoed(response).await;
}

#[tokio::test]
async fn errors_answered_by_the_gateway_carry_the_request_id() {
    let order = spawn_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;

    let response = app
        .client
        .get(app.url("/nowhere"))
        .header("x-request-id", "lost-request-1")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["x-request-id"], "lost-request-1");
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let order = spawn_echo().await;
    let app = spawn_app(&format!("/order=http://{order}")).await;

    let seen = echoed(
        app.client
            .get(app.url("/order/x"))
            .header("connection", "x-secret, keep-alive")
            .header("x-secret", "for the gateway only")
            .header("keep-alive", "timeout=5")
            .header("proxy-authorization", "Basic Z2F0ZXdheTpzZWNyZXQ=")
            .header("x-end-to-end", "kept"),
    )
    .await;

    let headers = seen["headers"].as_object().unwrap();
    for name in ["x-secret", "keep-alive", "proxy-authorization"] {
        assert!(
            !headers.contains_key(name),
            "{name} was forwarded: {headers:?}"
        );
    }
    assert_eq!(headers["x-end-to-end"], "kept");
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_returned() {
    let upstream = spawn_upstream(Router::new().route(
        "/x",
        get(|| async {
            [
                ("connection", "x-upstream-secret"),
                ("x-upstream-secret", "for the gateway only"),
                ("keep-alive", "timeout=5"),
                ("x-end-to-end", "kept"),
            ]
        }),
    ))
    .await;
    let app = spawn_app(&format!("/order=http://{upstream}")).await;

    let response = app.client.get(app.url("/order/x")).send().await.unwrap();

    let headers = response.headers();
    for name in ["x-upstream-secret", "keep-alive"] {
        assert!(
            !headers.contains_key(HeaderName::from_static(name)),
            "{name} was returned: {headers:?}"
        );
    }
    assert_eq!(headers["x-end-to-end"], "kept");
}
