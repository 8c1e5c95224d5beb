use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    routing::{get, post},
};
use message_service::service::{Extras, ExtrasBuilder, Service, ServiceSpec, Worker};
use sqlx::PgPool;

use crate::{
    OrderConfig, orders,
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

/// The order service: its routes and its handler for pay's answers, on the shared
/// [`Service`] (database, outbox relay, inbox consumer, health, shutdown).
pub struct Application;

impl Application {
    /// Order without the reconciler (tests of the other parts).
    pub async fn build(cfg: OrderConfig) -> anyhow::Result<Service> {
        Self::build_service(cfg, None).await
    }

    /// Order with its reconciler ([`crate::reconciler`]): a worker, and
    /// `GET /admin/reconciliation`.
    pub async fn build_with_reconciler(
        cfg: OrderConfig,
        reconciler: ReconcilerConfig,
    ) -> anyhow::Result<Service> {
        reconciler
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let http = reconciler::pay_client()?;
        let message_ttl = cfg.messaging.outbox.message_ttl;
        let extras: ExtrasBuilder = Box::new(move |pool, registry| {
            let worker = Reconciler::new(pool, reconciler.clone(), message_ttl, http)
                .with_metrics(ReconcilerMetrics::register(registry));
            let admin_routes = reconciler::admin_routes(worker.reports(), reconciler);
            let run: Worker = Box::new(move |shutdown| Box::pin(worker.run(shutdown)));
            Extras {
                workers: vec![run],
                admin_routes,
            }
        });
        Self::build_service(cfg, Some(extras)).await
    }

    async fn build_service(
        cfg: OrderConfig,
        extras: Option<ExtrasBuilder>,
    ) -> anyhow::Result<Service> {
        // The story's admin route in every build, beside the reconciler's when there is one.
        let extras: ExtrasBuilder = Box::new(move |pool, registry| {
            let mut extras = extras
                .map(|build| build(pool.clone(), registry))
                .unwrap_or_default();
            extras.admin_routes = extras.admin_routes.merge(story::admin_routes(pool));
            extras
        });
        let spec = ServiceSpec {
            name: "order",
            migrator: &crate::MIGRATOR,
            max_body_bytes: MAX_BODY_BYTES,
            openapi: crate::orders::openapi,
            extras: Some(extras),
        };
        let message_ttl = cfg.messaging.outbox.message_ttl;
        Service::build(spec, &cfg, Arc::new(PaymentResultHandler), |pool| {
            Router::new()
                .route("/buy", post(orders::buy))
                .route("/orders", get(orders::list_orders))
                .route("/orders/{id}", get(orders::get_order))
                .with_state(AppState { pool, message_ttl })
        })
        .await
    }
}
