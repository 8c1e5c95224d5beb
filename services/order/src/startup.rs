use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    routing::{get, post},
};
use message_service::service::{Service, ServiceSpec};
use sqlx::PgPool;

use crate::{OrderConfig, orders, payment_results::PaymentResultHandler};

/// Shared by the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub message_ttl: Duration,
}

/// An order request is a few hundred bytes; anything much larger is refused with 413.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The order service: its routes and its handler for pay's answers, on the shared
/// [`Service`] (database, outbox relay, inbox consumer, health, shutdown).
pub struct Application;

impl Application {
    pub async fn build(cfg: OrderConfig) -> anyhow::Result<Service> {
        let spec = ServiceSpec {
            name: "order",
            migrator: &crate::MIGRATOR,
            max_body_bytes: MAX_BODY_BYTES,
        };
        let message_ttl = cfg.messaging.outbox.message_ttl;
        Service::build(spec, &cfg, Arc::new(PaymentResultHandler), |pool| {
            Router::new()
                .route("/buy", post(orders::buy))
                .route("/orders/{id}", get(orders::get_order))
                .with_state(AppState { pool, message_ttl })
        })
        .await
    }
}
