use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    routing::get,
};
use common::{
    http,
    inbox::InboxCounters,
    service::{self, Messaging, Readiness},
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::{PayConfig, accounts, payments::PaymentHandler};

/// Shared by the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub readiness: Readiness,
}

pub struct Application {
    listener: TcpListener,
    router: Router,
    messaging: Messaging,
    pool: PgPool,
}

impl Application {
    /// Connects to the database, applies migrations, binds the port. Nothing runs until
    /// [`Application::run_until_stopped`].
    pub async fn build(cfg: PayConfig) -> anyhow::Result<Self> {
        let pool = common::db::connect_and_migrate(
            &cfg.database_url,
            cfg.db_max_connections,
            &crate::MIGRATOR,
        )
        .await?;
        let messaging = Messaging::new(
            pool.clone(),
            Arc::new(PaymentHandler::new(cfg.messaging.outbox.message_ttl)),
            &cfg.messaging,
            "pay",
        );
        let state = AppState {
            pool: pool.clone(),
            readiness: messaging.readiness(pool.clone()),
        };
        let listener = TcpListener::bind(&cfg.addr).await?;
        Ok(Self {
            listener,
            router: router(state),
            messaging,
            pool,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// What the inbox did so far (duplicates dropped, failures…).
    pub fn inbox_counters(&self) -> Arc<InboxCounters> {
        self.messaging.inbox_counters()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        service::serve(self.listener, self.router, self.messaging, shutdown).await
    }
}

/// Pay's API takes no bodies; anything large is refused with 413.
const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/payments/{order_id}", get(accounts::get_payment))
        .route("/accounts/{user_id}", get(accounts::get_account))
        .route("/healthz", get(http::healthz))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move { s.readiness.respond().await }),
        )
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
