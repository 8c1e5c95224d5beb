//! `GET /readyz`: the gateway is ready when every route has at least one instance that
//! answers its own `/healthz` with a success. The body names each route (`checks`, the shape
//! every service uses) and each instance with its health and whether the balancer has
//! ejected it, so an operator sees which instance of which route is down.
//!
//! Liveness (`/healthz`) is `common::http::healthz` and does not look at upstreams, so an
//! orchestrator never restarts the gateway because a service behind it is down. The checks
//! only observe: ejection follows real traffic (see [`crate::upstream`]).

use std::{sync::Arc, time::Duration};

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse, response::Response};
use futures::future::join_all;
use serde_json::{Map, Value, json};

use crate::{proxy::Proxy, upstream::Instance};

/// Short, because probes have their own timeouts (often 1 s) and the checks run in parallel.
const CHECK_TIMEOUT: Duration = Duration::from_millis(800);

pub async fn readyz(State(proxy): State<Arc<Proxy>>) -> Response {
    let routes = join_all(proxy.backends().iter().map(|backend| {
        let proxy = &proxy;
        async move {
            let instances = join_all(
                backend
                    .upstream
                    .instances()
                    .iter()
                    .map(|instance| check(proxy.client(), instance)),
            )
            .await;
            (backend.route.name(), instances)
        }
    }))
    .await;

    let mut checks = Map::new();
    let mut instances = Map::new();
    for (route, results) in routes {
        let up = results.iter().any(|r| r["health"] == "up");
        checks.insert(route.into(), json!(if up { "up" } else { "down" }));
        instances.insert(route.into(), Value::Array(results));
    }
    let ready = checks.values().all(|c| c == "up");
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks,
        "instances": instances,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// One instance: `up` (its `/healthz` answered 2xx), `unhealthy` (it answered something
/// else, shown as `status`) or `unreachable` (no answer in time).
async fn check(client: &reqwest::Client, instance: &Instance) -> Value {
    let answer = match instance.url_for("/healthz") {
        Ok(url) => client.get(url).timeout(CHECK_TIMEOUT).send().await.ok(),
        Err(_) => None,
    };
    let mut result = json!({ "url": instance.name(), "ejected": instance.is_ejected() });
    match answer {
        Some(response) if response.status().is_success() => result["health"] = json!("up"),
        Some(response) => {
            result["health"] = json!("unhealthy");
            result["status"] = json!(response.status().as_u16());
        }
        None => result["health"] = json!("unreachable"),
    }
    result
}
