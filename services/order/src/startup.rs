use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    routing::{get, post},
};
use service_kit::service::{Extras, Service, ServiceConfig, ServiceSpec, Worker};
use sqlx::PgPool;

use crate::{
    orders,
    payment_results::PaymentResultHandler,
    reconciler::{self, Reconciler, ReconcilerConfig, ReconcilerMetrics},
    story,
};

/// Shared by the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub message_ttl: Duration,
}

/// An order request is a few hundred bytes; anything much larger is refused with 413.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The order service: its routes, its handler for pay's answers and the story's admin
/// route, on the shared [`Service`] (database, outbox relay, inbox consumer, health,
/// shutdown). With `reconciler` ([`crate::reconciler`]), also its worker and
/// `GET /admin/reconciliation`; tests of the other parts leave it out.
pub async fn build(
    cfg: ServiceConfig,
    reconciler: Option<ReconcilerConfig>,
) -> anyhow::Result<Service> {
    let reconciler = match reconciler {
        Some(rc) => {
            rc.validate()
                .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
            Some((rc, reconciler::pay_client()?))
        }
        None => None,
    };
    let message_ttl = cfg.messaging.outbox.message_ttl;
    let extras = Box::new(move |pool: PgPool, registry: &mut _| {
        let mut extras = Extras {
            workers: Vec::new(),
            admin_routes: story::admin_routes(pool.clone()),
        };
        if let Some((rc, http)) = reconciler {
            let worker = Reconciler::new(pool, rc.clone(), message_ttl, http)
                .with_metrics(ReconcilerMetrics::register(registry));
            extras.admin_routes = extras
                .admin_routes
                .merge(reconciler::admin_routes(worker.reports(), rc));
            let run: Worker = Box::new(move |shutdown| Box::pin(worker.run(shutdown)));
            extras.workers.push(run);
        }
        extras
    });
    let spec = ServiceSpec {
        name: "order",
        migrator: &crate::MIGRATOR,
        max_body_bytes: MAX_BODY_BYTES,
        openapi: crate::orders::openapi,
        extras: Some(extras),
    };
    Service::build(spec, &cfg, Arc::new(PaymentResultHandler), |pool| {
        Router::new()
            .route("/buy", post(orders::buy))
            .route("/orders", get(orders::list_orders))
            .route("/orders/{id}", get(orders::get_order))
            .route("/orders/{id}/cancel", post(orders::cancel_order))
            .with_state(AppState { pool, message_ttl })
    })
    .await
}
