//! Building and running the server: bind first (so a test can use port 0 and ask for the port),
//! serve later until the shutdown future resolves.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{self, Poll, ready},
};

use anyhow::Context;
use axum::{
    Router, ServiceExt,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue},
    response::Response,
    routing::get,
};
use common::metrics::HttpMetrics;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::{config::GatewayConfig, dashboard, health, openapi, proxy};

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
        // The gateway's own registry: see `common::metrics` for why not a global one.
        let mut registry = Registry::default();
        let http_metrics = HttpMetrics::register(&mut registry);
        proxy.metrics().register(&mut registry);
        let listener = TcpListener::bind(&config.addr)
            .await
            .with_context(|| format!("binding GATEWAY_ADDR={}", config.addr))?;
        let local_addr = listener.local_addr()?;
        Ok(Application {
            listener,
            local_addr,
            router: router(proxy, Arc::new(registry), http_metrics),
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
            with_request_layers(self.router).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")
    }
}

fn router(proxy: Arc<proxy::Proxy>, registry: Arc<Registry>, http_metrics: HttpMetrics) -> Router {
    Router::new()
        .route("/healthz", get(common::http::healthz))
        .route("/readyz", get(health::readyz))
        // The gateway's own; the services' `/metrics` stay internal (`GATEWAY_INTERNAL_PATHS`).
        .route("/metrics", get(metrics).with_state(registry))
        // The services' documents, merged under the route prefixes.
        .route("/openapi.json", get(openapi::openapi_json))
        // The page at `/` and its files; see `dashboard` for who wins over a route `/`.
        .merge(dashboard::routes())
        .method_not_allowed_fallback(common::http::method_not_allowed)
        .fallback(proxy::forward)
        .with_state(proxy)
        // Proxied requests have no route template: they count as `unmatched`, and per
        // instance in `gateway_upstream_results_total`. Inside the router: it needs the
        // matched route.
        .layer(http_metrics)
}

/// The layers that need no route, around the whole router rather than `Router::layer`:
/// that boxes each layer around every route and clones the boxes per request, 10% of the
/// gateway's instructions per proxied request.
fn with_request_layers(
    router: Router,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone + Send + 'static
{
    // Top to bottom, outermost first. The client's `x-request-id` is kept or one is made,
    // so the gateway log, the upstream's log (the forwarded headers carry it) and the
    // client name the same request; the response echoes it, also on errors the gateway
    // answers itself.
    ServiceBuilder::new()
        .layer_fn(|inner| WithRequestId { inner })
        .map_response(|response: axum::http::Response<_>| response.map(Body::new))
        .layer(
            TraceLayer::new_for_http()
                // The request id and the trace (the client's, or a new one) on every line.
                .make_span_with(common::trace::request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // The access line already has the status, and an upstream's 5xx is the
                // upstream's error, not the gateway's; the gateway's own failures are
                // logged where they happen.
                .on_failure(()),
        )
        .service(router)
}

/// The request id, in one layer: the client's `x-request-id` when it is not empty (an
/// empty one names no request), else a new one, on the request; on the response unless the
/// response names one itself (an upstream's own wins). What tower-http's `SetRequestId`
/// and `PropagateRequestId` and a function dropping an empty id did, without their
/// `RequestId` extensions (nothing reads them) on the request and the response: 1,700
/// instructions per request.
#[derive(Clone)]
struct WithRequestId<S> {
    inner: S,
}

impl<S> Service<Request> for WithRequestId<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = WithRequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut task::Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> WithRequestIdFuture<S::Future> {
        let id = match request.headers().get(&X_REQUEST_ID) {
            Some(id) if !id.is_empty() => Some(id.clone()),
            _ => {
                // Every line of an empty id goes, as the new one replaces them all.
                request.headers_mut().remove(&X_REQUEST_ID);
                let id = new_request_id();
                if let Some(id) = &id {
                    request.headers_mut().insert(X_REQUEST_ID, id.clone());
                }
                id
            }
        };
        WithRequestIdFuture {
            inner: self.inner.call(request),
            id,
        }
    }
}

struct WithRequestIdFuture<F> {
    inner: F,
    id: Option<HeaderValue>,
}

impl<F, E> Future for WithRequestIdFuture<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(Pin::new(&mut self.inner).poll(cx))?;
        if let Some(id) = self.id.take()
            && !response.headers().contains_key(&X_REQUEST_ID)
        {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(response))
    }
}

async fn metrics(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    common::metrics::encode(common::metrics::Format::from_accept(&headers), &[&registry])
}

/// A random (v4) UUID, as tower-http's `MakeRequestUuid` makes, from the thread's CSPRNG:
/// that one asks the OS for each id, a system call per request.
fn new_request_id() -> Option<HeaderValue> {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut text = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut text)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_request_ids_are_distinct_lowercase_v4_uuids() {
        let id = || new_request_id().unwrap().to_str().unwrap().to_string();
        let (a, b) = (id(), id());
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(parsed.hyphenated().to_string(), a);
    }
}
