use std::sync::Arc;

use axum::{
    Router,
    routing::{get, post},
};
use service_kit::service::{Extras, Service, ServiceConfig, ServiceSpec};
use sqlx::PgPool;

use crate::{accounts, payments::PaymentHandler, story};

/// Shared by the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

/// Pay's largest body is a lookup of at most 100 order ids; anything large is refused with 413.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The pay service: its read routes, its payment handler and the story's admin route, on
/// the shared [`Service`] (database, outbox relay, inbox consumer, health, shutdown).
pub async fn build(cfg: ServiceConfig) -> anyhow::Result<Service> {
    let spec = ServiceSpec {
        name: "pay",
        migrator: &crate::MIGRATOR,
        max_body_bytes: MAX_BODY_BYTES,
        openapi: crate::accounts::openapi,
        extras: Some(Box::new(|pool, _| Extras {
            workers: Vec::new(),
            admin_routes: story::admin_routes(pool),
        })),
    };
    let handler = Arc::new(PaymentHandler::new(cfg.messaging.outbox.message_ttl));
    Service::build(spec, &cfg, handler, |pool| {
        Router::new()
            .route("/payments/{order_id}", get(accounts::get_payment))
            .route("/accounts/{user_id}", get(accounts::get_account))
            .route("/payments/lookup", post(accounts::lookup_payments))
            .with_state(AppState { pool })
    })
    .await
}
