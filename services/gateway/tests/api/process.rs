//! The real binary, as an orchestrator runs it: configured by environment, stopped by
//! SIGTERM, in its own process so its memory can be read from `/proc`.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    http::StatusCode,
    routing::{get, post},
};
use futures::StreamExt;
use tokio::process::Child;

use crate::helpers::{
    Pattern, dead_addr, spawn_held_upstream, spawn_upstream, test_client, wait_until_refused,
    within,
};

/// Starts the gateway binary with only `env` (and a free address) in its environment,
/// whatever the test's own environment holds, and waits until it serves `/healthz`.
async fn spawn_binary(env: &[(&str, String)]) -> (Child, SocketAddr) {
    let addr = dead_addr();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("GATEWAY_ADDR", addr.to_string())
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary starts");
    let client = test_client();
    within("the gateway binary to serve /healthz", async {
        while !client
            .get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    (child, addr)
}

#[tokio::test]
async fn the_binary_finishes_in_flight_requests_on_sigterm_and_exits_0() {
    let upstream = spawn_held_upstream().await;
    let (mut gateway, addr) =
        spawn_binary(&[("GATEWAY_ROUTES", format!("/order=http://{}", upstream.addr))]).await;
    let in_flight = tokio::spawn(
        test_client()
            .get(format!("http://{addr}/order/slow"))
            .send(),
    );
    within(
        "the upstream to get the request",
        upstream.arrived.notified(),
    )
    .await;

    let pid = gateway.id().expect("the gateway is running");
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_until_refused(addr).await;
    upstream.release.notify_one();

    let response = within("the in-flight response", in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "finished");
    let status = within("the gateway to exit", gateway.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}

/// Peak resident memory (`VmHWM`) of process `pid`, in KiB.
#[cfg(target_os = "linux")]
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Uploads then downloads `size` bytes through the gateway at `addr`.
#[cfg(target_os = "linux")]
async fn round_trip(addr: SocketAddr, pattern: &Pattern, size: usize) {
    const CHUNK: usize = 256 * 1024;
    let client = test_client();
    let upload = futures::stream::iter(pattern.chunks(size, CHUNK).map(Ok::<_, std::io::Error>));
    let response = client
        .post(format!("http://{addr}/files/upload"))
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), size.to_string());

    let mut response = client
        .get(format!("http://{addr}/files/download/{size}"))
        .send()
        .await
        .unwrap();
    let mut check = pattern.checker();
    while let Some(chunk) = response.chunk().await.unwrap() {
        check.update(&chunk);
    }
    assert_eq!((check.received, check.first_mismatch), (size, None));
}

/// A buffering gateway would hold a whole 50 MiB body at some point; a streaming one only
/// what is in flight. The bound, half the body, leaves room for allocator noise.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_binary_streams_50_mib_each_way_without_its_memory_growing_with_the_body() {
    const SIZE: usize = 50 * 1024 * 1024;
    let pattern = Pattern::new();
    let source = pattern.clone();
    let upstream = spawn_upstream(
        Router::new()
            .route(
                "/upload",
                post(|body: Body| async move {
                    let mut stream = body.into_data_stream();
                    let mut received = 0;
                    while let Some(chunk) = stream.next().await {
                        received += chunk.unwrap().len();
                    }
                    received.to_string()
                }),
            )
            .route(
                "/download/{size}",
                get(
                    move |axum::extract::Path(size): axum::extract::Path<usize>| async move {
                        let chunks = source
                            .chunks(size, 256 * 1024)
                            .map(Ok::<Bytes, std::io::Error>);
                        Body::from_stream(futures::stream::iter(chunks))
                    },
                ),
            ),
    )
    .await;
    let (gateway, addr) = spawn_binary(&[
        ("GATEWAY_ROUTES", format!("/files=http://{upstream}")),
        ("GATEWAY_MAX_BODY_BYTES", (64 * 1024 * 1024).to_string()),
    ])
    .await;
    let pid = gateway.id().unwrap();

    // Warm up: connection pools, buffers and the allocator's arenas exist before measuring.
    round_trip(addr, &pattern, 1024 * 1024).await;
    let before = peak_rss_kib(pid);
    round_trip(addr, &pattern, SIZE).await;
    let after = peak_rss_kib(pid);

    println!("gateway peak RSS: {before} KiB after warm-up, {after} KiB after 50 MiB up and down");
    let growth_kib = after.saturating_sub(before);
    assert!(
        growth_kib < (SIZE / 2 / 1024) as u64,
        "peak RSS grew by {growth_kib} KiB moving {SIZE} bytes each way"
    );
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("the gateway binary runs");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let variables = gateway::variables();
    assert!(
        variables.iter().any(|(name, _)| name == "GATEWAY_ROUTES"),
        "{variables:?}"
    );
    for (name, default) in variables {
        let listed = common::config::help_entry(&name, &default);
        assert!(help.contains(&listed), "{listed} is not in:\n{help}");
    }
}
