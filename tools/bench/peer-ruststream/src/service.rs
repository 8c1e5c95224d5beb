//! What both roles share: the RabbitMQ side (broker, queue descriptors), the database pool,
//! and the process around the app: `GET /readyz` beside it, SIGTERM to stop it.
//!
//! The app runs as the core docs' HTTP page shows a service beside a server: `start()` opens
//! every subscription (declaring its queue) before `/readyz` answers, and the health probe
//! keeps answering 503 once a subscription stopped consuming.

use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use ruststream::runtime::{HealthProbe, HealthState, RunningApp};
use ruststream_lapin::{AMQPValue, LapinBroker, RabbitExchange, RabbitQueue, RabbitQuorumQueue};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
};

use crate::config::{self, Config};

/// The broker as the lapin production guide configures it: a named connection, prefetch 64,
/// and, here, the topology declared by the service (each run brings its own names).
pub(crate) fn broker(cfg: &Config, role: &str) -> LapinBroker {
    LapinBroker::new(cfg.amqp_url.clone())
        .connection_name(format!("peer-ruststream {role}"))
        .prefetch(config::PREFETCH)
        .declare_topology(true)
}

/// A classic queue bound to the run's exchange under `routing_key`.
pub(crate) fn classic_queue(cfg: &Config, queue: &str, routing_key: &str) -> RabbitQueue {
    let q = RabbitQueue::new(queue).bind(RabbitExchange::topic(&cfg.exchange), routing_key);
    match cfg.queue_expires {
        Some(ttl) => q.argument("x-expires", expires(ttl)),
        None => q,
    }
}

/// A quorum queue bound to the run's exchange under `routing_key`.
pub(crate) fn quorum_queue(cfg: &Config, queue: &str, routing_key: &str) -> RabbitQuorumQueue {
    let q = RabbitQuorumQueue::new(queue).bind(RabbitExchange::topic(&cfg.exchange), routing_key);
    match cfg.queue_expires {
        Some(ttl) => q.argument("x-expires", expires(ttl)),
        None => q,
    }
}

fn expires(ttl: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

/// The side's pool, shared by its handlers and its `SqlxBroker`.
pub(crate) async fn pool(cfg: &Config) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(config::POOL_SIZE)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&cfg.database_url)
        .await?)
}

/// Serves `/readyz` on `cfg.addr` until SIGTERM, SIGINT or the app failing, then shuts the
/// app down gracefully (handlers in flight finish, their deliveries are acked).
pub(crate) async fn serve(cfg: &Config, running: RunningApp) -> anyhow::Result<()> {
    let router = Router::new()
        .route("/readyz", get(readyz).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(running.health());
    let listener = TcpListener::bind(cfg.addr).await?;
    tracing::info!(addr = %cfg.addr, "ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stopping = running.stopping();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                () = stopping => {}
            }
        })
        .await?;
    tracing::info!("stopping");
    running.shutdown().await?;
    Ok(())
}

/// 200 while every subscription consumes; 503 otherwise (stopping, failed, one stopped).
async fn readyz(State(health): State<HealthProbe>) -> (StatusCode, Json<Value>) {
    let count = health.subscriptions();
    match health.state() {
        HealthState::Running if count.active == count.started => {
            (StatusCode::OK, Json(json!({ "status": "ready" })))
        }
        HealthState::Running => unavailable(format!(
            "{} of {} subscriptions consuming",
            count.active, count.started
        )),
        state => unavailable(format!("{state:?}")),
    }
}

fn unavailable(message: String) -> (StatusCode, Json<Value>) {
    error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
}

async fn method_not_allowed() -> (StatusCode, Json<Value>) {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "GET only".into(),
    )
}

async fn not_found() -> (StatusCode, Json<Value>) {
    error(StatusCode::NOT_FOUND, "not_found", "no such route".into())
}

fn error(status: StatusCode, code: &str, message: String) -> (StatusCode, Json<Value>) {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
}
