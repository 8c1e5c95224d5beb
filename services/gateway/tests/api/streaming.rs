//! Bodies are streamed, not buffered: each test holds back the rest of a 20 MiB body until the
//! other side has seen the first chunk, which only happens if the gateway forwards chunks as
//! they arrive. A buffering gateway would make the test give up waiting.

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

use crate::helpers::{spawn_app_with, spawn_upstream, test_bytes, within};

const SIZE: usize = 20 * 1024 * 1024;
const CHUNK: usize = 256 * 1024;

/// What the upstream got: the body and its `Content-Length` header.
struct Received {
    body: Vec<u8>,
    content_length: Option<String>,
}

#[derive(Clone, Default)]
struct Upload {
    first_chunk_seen: Arc<Notify>,
    received: Arc<Mutex<Option<Received>>>,
}

async fn receive(State(upload): State<Upload>, headers: HeaderMap, body: Body) -> &'static str {
    let content_length = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().unwrap().to_string());
    let mut stream = body.into_data_stream();
    let mut received = Vec::new();
    while let Some(chunk) = stream.next().await {
        if received.is_empty() {
            upload.first_chunk_seen.notify_one();
        }
        received.extend_from_slice(&chunk.unwrap());
    }
    *upload.received.lock().unwrap() = Some(Received {
        body: received,
        content_length,
    });
    "stored"
}

#[tokio::test]
async fn a_large_upload_streams_to_the_upstream_intact() {
    let upload = Upload::default();
    let upstream = spawn_upstream(
        Router::new()
            .route("/upload", post(receive))
            .with_state(upload.clone()),
    )
    .await;
    let app = spawn_app_with(&format!("/pay=http://{upstream}"), |config| {
        config.max_body_bytes = 32 * 1024 * 1024;
    })
    .await;
    let data = test_bytes(SIZE);
    let (mut tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let request = app
        .client
        .post(app.url("/pay/upload"))
        .header(header::CONTENT_LENGTH, SIZE)
        .body(reqwest::Body::wrap_stream(rx))
        .send();
    let response = tokio::spawn(request);

    let mut chunks = data.chunks(CHUNK).map(Bytes::copy_from_slice);
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
    let Received {
        body: received,
        content_length,
    } = upload.received.lock().unwrap().take().unwrap();
    assert_eq!(received.len(), SIZE);
    assert!(received == data, "the upstream received different bytes");
    assert_eq!(content_length, Some(SIZE.to_string()));
}

#[derive(Clone, Default)]
struct Download {
    send_the_rest: Arc<Notify>,
}

async fn serve_download(
    State(download): State<Download>,
) -> ([(header::HeaderName, String); 1], Body) {
    let (mut tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let data = test_bytes(SIZE);
        let mut chunks = data.chunks(CHUNK).map(Bytes::copy_from_slice);
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
    let download = Download::default();
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

    let first = within(
        "the first chunk before the upstream sends the rest",
        response.chunk(),
    )
    .await
    .unwrap()
    .expect("a first chunk");
    let mut received = first.to_vec();
    download.send_the_rest.notify_one();
    while let Some(chunk) = within("the rest of the download", response.chunk())
        .await
        .unwrap()
    {
        received.extend_from_slice(&chunk);
    }

    assert_eq!(received.len(), SIZE);
    assert!(
        received == test_bytes(SIZE),
        "the client received different bytes"
    );
}
