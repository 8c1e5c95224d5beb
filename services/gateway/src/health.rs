//! `GET /readyz`: the gateway is ready when every upstream answers its own `/healthz`.
//! Liveness (`/healthz`) is `common::http::healthz` and does not look at upstreams, so an
//! orchestrator never restarts the gateway because a service behind it is down.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, response::Response};
use futures::future::join_all;

use crate::proxy::Proxy;

/// Short, because probes have their own timeouts (often 1 s) and the checks run in parallel.
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

pub async fn readyz(State(proxy): State<Arc<Proxy>>) -> Response {
    let checks = proxy.routes().iter().map(|route| {
        let proxy = Arc::clone(&proxy);
        async move {
            let ok = match route.upstream().url_for("/healthz") {
                Ok(url) => proxy
                    .client()
                    .get(url)
                    .timeout(CHECK_TIMEOUT)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()),
                Err(_) => false,
            };
            (route.name(), ok)
        }
    });
    let results = join_all(checks).await;
    common::http::readiness(&results)
}
