use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{
    Router,
    body::{Body, Bytes, to_bytes},
    extract::State,
    http::StatusCode,
    routing::post,
};

use crate::helpers::{dead_addr, error_code, spawn_app_with, spawn_upstream};

/// An upstream that reads the whole body before answering and counts complete bodies, so a
/// cut body can never get a 200 and the test sees whether anything arrived.
async fn spawn_counting_sink() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let complete = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route(
            "/upload",
            post(
                |State(complete): State<Arc<AtomicUsize>>, body: Body| async move {
                    match to_bytes(body, usize::MAX).await {
                        Ok(bytes) => {
                            complete.fetch_add(1, Ordering::SeqCst);
                            (StatusCode::OK, bytes.len().to_string())
                        }
                        Err(_) => (StatusCode::BAD_REQUEST, "body aborted".to_string()),
                    }
                },
            ),
        )
        .with_state(Arc::clone(&complete));
    (spawn_upstream(router).await, complete)
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_a_413_without_contacting_the_upstream() {
    // Nothing listens there: any attempt to reach the upstream would be a 502.
    let app = spawn_app_with(&format!("/order=http://{}", dead_addr()), |config| {
        config.max_body_bytes = 16;
    })
    .await;

    let response = app
        .client
        .post(app.url("/order/upload"))
        .body(vec![b'x'; 17])
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(response).await, "body_too_large");
}

#[tokio::test]
async fn a_body_exactly_at_the_limit_is_forwarded() {
    let (upstream, complete) = spawn_counting_sink().await;
    let app = spawn_app_with(&format!("/order=http://{upstream}"), |config| {
        config.max_body_bytes = 16;
    })
    .await;

    let response = app
        .client
        .post(app.url("/order/upload"))
        .body(vec![b'x'; 16])
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "16");
    assert_eq!(complete.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_chunked_body_growing_past_the_limit_is_cut_and_answered_413() {
    let (upstream, complete) = spawn_counting_sink().await;
    let app = spawn_app_with(&format!("/order=http://{upstream}"), |config| {
        config.max_body_bytes = 1024;
    })
    .await;
    // A stream has no Content-Length, so only counting while forwarding can catch it.
    let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 512])));
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));

    let response = app
        .client
        .post(app.url("/order/upload"))
        .body(body)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(response).await, "body_too_large");
    assert_eq!(complete.load(Ordering::SeqCst), 0);
}
