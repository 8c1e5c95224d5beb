//! Bodies are streamed, not buffered: 50 MiB each way, generated and checked on the fly on
//! both sides (no side holds a whole body). Each test holds back the rest of the body until
//! the other side has seen the first chunk, which only happens if the gateway forwards chunks
//! as they arrive: a buffering gateway would make the test give up waiting.

use std::sync::{Arc, Mutex};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, header},
    routing::{get, post},
};
use futures::{SinkExt, StreamExt, channel::mpsc};
use tokio::sync::Notify;

use crate::helpers::{Pattern, spawn_app_with, spawn_upstream, within};

const SIZE: usize = 50 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

/// What the upstream got: the byte count, where it first differed from the pattern, and
/// its `Content-Length` header.
struct Received {
    bytes: usize,
    first_mismatch: Option<usize>,
    content_length: Option<String>,
}

#[derive(Clone)]
struct Upload {
    pattern: Pattern,
    first_chunk_seen: Arc<Notify>,
    received: Arc<Mutex<Option<Received>>>,
}

async fn receive(State(upload): State<Upload>, headers: HeaderMap, body: Body) -> &'static str {
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().unwrap().to_string());
    let mut stream = body.into_data_stream();
    let mut check = upload.pattern.checker();
    while let Some(chunk) = stream.next().await {
        if check.received == 0 {
            upload.first_chunk_seen.notify_one();
        }
        check.update(&chunk.unwrap());
    }
    *upload.received.lock().unwrap() = Some(Received {
        bytes: check.received,
        first_mismatch: check.first_mismatch,
        content_length,
    });
    "stored"
}

#[tokio::test]
async fn a_large_upload_streams_to_the_upstream_intact() {
    let pattern = Pattern::new();
    let upload = Upload {
        pattern: pattern.clone(),
        first_chunk_seen: Arc::default(),
        received: Arc::default(),
    };
    let upstream = spawn_upstream(
        Router::new()
            .route("/upload", post(receive))
            .with_state(upload.clone()),
    )
    .await;
    let app = spawn_app_with(&format!("/pay=http://{upstream}"), |config| {
        config.max_body_bytes = 64 * 1024 * 1024;
    })
    .await;
    let (mut tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let request = app
        .client
        .post(app.url("/pay/upload"))
        .header(header::CONTENT_LENGTH, SIZE)
        .body(reqwest::Body::wrap_stream(rx))
        .send();
    let response = tokio::spawn(request);

    let mut chunks = pattern.chunks(SIZE, CHUNK);
    tx.send(Ok(chunks.next().unwrap())).await.unwrap();
    within(
        "the upstream to see the first chunk before the rest is sent",
        upload.first_chunk_seen.notified(),
    )
    .await;
    for chunk in chunks {
        tx.send(Ok(chunk)).await.unwrap();
    }
    drop(tx);

    let response = within("the upload response", response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = upload.received.lock().unwrap().take().unwrap();
    assert_eq!(received.bytes, SIZE);
    assert_eq!(
        received.first_mismatch, None,
        "the upstream received different bytes"
    );
    assert_eq!(received.content_length, Some(SIZE.to_string()));
}

#[derive(Clone)]
struct Download {
    pattern: Pattern,
    send_the_rest: Arc<Notify>,
}

async fn serve_download(
    State(download): State<Download>,
) -> ([(header::HeaderName, String); 1], Body) {
    let (mut tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut chunks = download.pattern.chunks(SIZE, CHUNK);
        tx.send(Ok(chunks.next().unwrap())).await.unwrap();
        download.send_the_rest.notified().await;
        for chunk in chunks {
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    (
        [(header::CONTENT_LENGTH, SIZE.to_string())],
        Body::from_stream(rx),
    )
}

#[tokio::test]
async fn a_large_download_streams_back_intact() {
    let pattern = Pattern::new();
    let download = Download {
        pattern: pattern.clone(),
        send_the_rest: Arc::default(),
    };
    let upstream = spawn_upstream(
        Router::new()
            .route("/download", get(serve_download))
            .with_state(download.clone()),
    )
    .await;
    let app = spawn_app_with(&format!("/pay=http://{upstream}"), |_| {}).await;

    let mut response = within(
        "the download's response headers",
        app.client.get(app.url("/pay/download")).send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[header::CONTENT_LENGTH], SIZE.to_string());

    let mut check = pattern.checker();
    let first = within(
        "the first chunk before the upstream sends the rest",
        response.chunk(),
    )
    .await
    .unwrap()
    .expect("a first chunk");
    check.update(&first);
    download.send_the_rest.notify_one();
    while let Some(chunk) = within("the rest of the download", response.chunk())
        .await
        .unwrap()
    {
        check.update(&chunk);
    }

    assert_eq!(check.received, SIZE);
    assert_eq!(
        check.first_mismatch, None,
        "the client received different bytes"
    );
}
