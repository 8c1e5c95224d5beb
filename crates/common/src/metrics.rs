//! Prometheus metrics shared by the three services: the HTTP request metrics (a middleware)
//! and the `/metrics` answer.
//!
//! # Why a registry per service, and no global recorder
//! Each service builds its own [`Registry`] and hands the metric families to the parts that
//! update them. Several services run in one process in the system tests (order, pay and the
//! gateway, sometimes several instances of one): a global recorder would add their counts
//! together, and no test could say "order published exactly N messages". A library user who
//! wants no metrics gets unregistered instances that count into nothing anyone reads.
//!
//! The answer's format is negotiated ([`Format::from_accept`]): the classic Prometheus text
//! format (0.0.4) unless the scraper asks for OpenMetrics, as Prometheus and the official
//! clients do in their `Accept` header. A tool that reads the classic format (`promtool check
//! metrics`, `curl` and a human) would read an OpenMetrics counter family (`http_requests`,
//! samples `http_requests_total`) as a family without help text. Both formats come from
//! `prometheus-client`; counters end in `_total`, durations are in seconds.

use std::{
    borrow::Cow,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text, text},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// The `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of the classic Prometheus text format, the default answer.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The exposition format of a `/metrics` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the `Accept` header names it (with a weight above zero), else the
    /// classic format, which every reader understands.
    pub fn from_accept(headers: &HeaderMap) -> Self {
        let asks_openmetrics = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            });
        if asks_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// The route label of a request no route matched (the gateway's proxied requests, 404s):
/// the raw path would make the label unbounded.
pub const UNMATCHED: &str = "unmatched";

/// Buckets for durations from a millisecond to ten seconds, in seconds.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A histogram with [`DURATION_BUCKETS`].
pub fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// Borrowed for [`UNMATCHED`]: most of the gateway's requests, counted without a copy.
    pub route: Cow<'static, str>,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: Cow<'static, str>,
}

/// `http_requests_total` and `http_request_duration_seconds`.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        }
    }
}

impl HttpMetrics {
    /// New families, registered into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to the response's head, by route template and method",
            metrics.duration.clone(),
        );
        metrics
    }

    fn observe(
        &self,
        method: &'static str,
        route: Cow<'static, str>,
        status: StatusCode,
        seconds: f64,
    ) {
        self.duration
            .get_or_create(&RouteLabels {
                method,
                route: route.clone(),
            })
            .observe(seconds);
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status: status.as_u16(),
            })
            .inc();
    }
}

/// The `route` label: the matched route template, or `unmatched` (never the raw path).
fn route_label(request: &Request) -> Cow<'static, str> {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(Cow::Borrowed(UNMATCHED), |p| {
            Cow::Owned(p.as_str().to_string())
        })
}

/// The middleware: `router.layer(axum::middleware::from_fn_with_state(metrics, track))`.
/// Added with `Router::layer`, it runs after routing, so the route template
/// ([`MatchedPath`], e.g. `/orders/{id}`) is known: never the raw path, which holds ids.
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let method = method_label(request.method());
    let route = route_label(&request);
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(
        method,
        route,
        response.status(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// [`track`] as a tower layer, for `Router::layer(metrics.clone())`: the same counts, the
/// same duration (from the call to the response's head), without `from_fn`'s clone of the
/// route and boxed futures per request. The gateway uses it.
impl<S> tower::Layer<S> for HttpMetrics {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked {
            inner,
            metrics: self.clone(),
        }
    }
}

/// A service whose requests [`HttpMetrics`] counts.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    metrics: HttpMetrics,
}

impl<S> tower::Service<Request> for Tracked<S>
where
    S: tower::Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> TrackedFuture<S::Future> {
        let method = method_label(request.method());
        let route = route_label(&request);
        TrackedFuture {
            inner: self.inner.call(request),
            labels: Some((self.metrics.clone(), method, route)),
            started: Instant::now(),
        }
    }
}

/// The response of a [`Tracked`] service, counted when it is ready.
pub struct TrackedFuture<F> {
    inner: F,
    labels: Option<(HttpMetrics, &'static str, Cow<'static, str>)>,
    started: Instant,
}

impl<F, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = ready!(Pin::new(&mut self.inner).poll(cx));
        if let (Ok(response), Some((metrics, method, route))) = (&result, self.labels.take()) {
            let seconds = self.started.elapsed().as_secs_f64();
            metrics.observe(method, route, response.status(), seconds);
        }
        Poll::Ready(result)
    }
}

/// The standard methods by name; any other (a client may send anything) is `other`.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|m| *m == method)
        .map_or("other", |m| m.as_str())
}

/// The `/metrics` answer in the negotiated `format`: `registries` encoded one after the other
/// (a service may add one built at scrape time), then, for OpenMetrics, the end marker.
pub fn encode(format: Format, registries: &[&Registry]) -> Response {
    let mut body = String::new();
    let (encoded, content_type) = match format {
        Format::Prometheus => (
            registries
                .iter()
                .try_for_each(|r| prometheus_text::encode(&mut body, r)),
            CONTENT_TYPE,
        ),
        Format::OpenMetrics => (
            registries
                .iter()
                .try_for_each(|r| text::encode_registry(&mut body, r))
                .and_then(|()| text::encode_eof(&mut body)),
            OPENMETRICS_CONTENT_TYPE,
        ),
    };
    match encoded {
        Ok(()) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "other"
        );
    }

    #[test]
    fn the_format_is_openmetrics_only_when_the_scraper_asks_for_it() {
        let accept = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, value.parse().unwrap());
            Format::from_accept(&headers)
        };
        assert_eq!(Format::from_accept(&HeaderMap::new()), Format::Prometheus);
        assert_eq!(accept("*/*"), Format::Prometheus);
        assert_eq!(accept("text/plain;version=0.0.4"), Format::Prometheus);
        // What Prometheus sends.
        assert_eq!(
            accept(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ),
            Format::OpenMetrics
        );
        assert_eq!(
            accept("text/plain, application/openmetrics-text;q=0"),
            Format::Prometheus
        );
    }

    #[test]
    fn requests_are_counted_by_route_method_and_status() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        metrics.observe("POST", "/buy".into(), StatusCode::CREATED, 0.002);
        metrics.observe("POST", "/buy".into(), StatusCode::CREATED, 0.003);
        let mut text = String::new();
        text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"http_requests_total{method="POST",route="/buy",status="201"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_request_duration_seconds_count{method="POST",route="/buy"} 2"#),
            "{text}"
        );
    }
}
