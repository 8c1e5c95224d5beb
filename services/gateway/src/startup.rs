//! Building and running the server: bind first (so a test can use port 0 and ask for the port),
//! serve later until the shutdown future resolves.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use axum::{
    Router,
    extract::Request,
    http::{HeaderName, HeaderValue},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use tokio::net::TcpListener;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::{config::GatewayConfig, health, proxy};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
}

impl Application {
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        config.validate().context("invalid gateway configuration")?;
        let proxy = Arc::new(proxy::Proxy::new(&config)?);
        let listener = TcpListener::bind(&config.addr)
            .await
            .with_context(|| format!("binding GATEWAY_ADDR={}", config.addr))?;
        let local_addr = listener.local_addr()?;
        Ok(Application {
            listener,
            local_addr,
            router: router(proxy),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr, "gateway listening");
        axum::serve(
            self.listener,
            // The client address feeds x-forwarded-for.
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")
    }
}

fn router(proxy: Arc<proxy::Proxy>) -> Router {
    Router::new()
        .route("/healthz", get(common::http::healthz))
        .route("/readyz", get(health::readyz))
        .method_not_allowed_fallback(common::http::method_not_allowed)
        .fallback(proxy::forward)
        .with_state(proxy)
        // Layers run bottom-up: the request id exists before the access-log span reads it.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let request_id = request
                        .headers()
                        .get(&X_REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        uri = %request.uri(),
                        request_id,
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // The access line already has the status, and an upstream's 5xx is the
                // upstream's error, not the gateway's; the gateway's own failures are
                // logged where they happen.
                .on_failure(()),
        )
        .layer(middleware::from_fn(request_id))
}

/// Keeps the client's `x-request-id` or makes one, so the gateway log, the upstream's log and
/// the client can name the same request; the forwarded headers carry it upstream. The
/// response always echoes the gateway's id, also on errors the gateway answers itself.
async fn request_id(mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(&X_REQUEST_ID) {
        Some(id) if !id.is_empty() => id.clone(),
        _ => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .expect("a UUID is a valid header value"),
    };
    request.headers_mut().insert(X_REQUEST_ID, id.clone());
    let mut response = next.run(request).await;
    response.headers_mut().insert(X_REQUEST_ID, id);
    response
}
