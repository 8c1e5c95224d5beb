//! Forwarding one request to its upstream, top to bottom:
//!
//! 1. pick the route by longest path prefix (404 `no_route` if none);
//! 2. work out the path the upstream will see (prefix stripped, dot segments resolved, query
//!    unchanged); an internal path is answered 404 `no_route` like a missing route. The
//!    one exception is the operator's `/admin/<route>/<path>` ([`admin_target`]);
//! 3. refuse a declared `Content-Length` above the limit (413) before touching the upstream;
//! 4. copy the headers minus hop-by-hop ones, add `x-forwarded-*` and a `traceparent` that
//!    continues the client's trace (or starts one);
//! 5. stream the body through a length limit, so a chunked body cannot exceed it either;
//! 6. try the route's instances in [`Upstream::attempt_order`]: an instance that refuses the
//!    connection is ejected and the next one is tried, as the request has not left the
//!    gateway; any other outcome ends the loop. All of it within the route's timeout, which
//!    covers connecting, sending the body and receiving the response headers;
//! 7. stream the response back with its status and end-to-end headers, whatever the status.
//!
//! Retrying is safe only while nothing was sent: after a connect failure, never after the
//! body started flowing ([`ClientBody`] enforces it), a timeout or any response.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{self, Poll, ready},
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, header},
    response::Response,
};
use futures::{Stream, StreamExt, TryStreamExt};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use reqwest::Url;

use common::admin::{AdminAuth, Denied};

use crate::{
    config::GatewayConfig, error::GatewayError, internal::InternalPaths, metrics::UpstreamMetrics,
    routes::Route, upstream::Upstream,
};

/// Headers that describe one connection rather than the message (RFC 9110 §7.6.1), so they
/// must not cross the proxy in either direction. `proxy-connection` is the non-standard
/// predecessor of `connection` that some clients still send. A `static`, not a `const`: a
/// `const` array is built and dropped again at each use, for each header of each request.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The request headers the gateway drops or sets itself (see [`upstream_request_headers`]).
static REPLACED: [HeaderName; 5] = [
    header::HOST,
    header::EXPECT,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// What every forwarded request shares: one connection-pooling client, the routes with their
/// instances, and the limits.
pub struct Proxy {
    /// Forwarding: hyper's pooling client itself. reqwest (built on it) parsed the URL twice
    /// more and ran its redirect and retry layers on every request, about a third of the
    /// gateway's instructions per request.
    upstream_client: Client<HttpConnector, AttemptBody>,
    /// The gateway's own requests to the services (readiness, the OpenAPI documents).
    client: reqwest::Client,
    backends: Vec<Backend>,
    upstream_timeout: Duration,
    max_body_bytes: u64,
    internal_paths: InternalPaths,
    metrics: UpstreamMetrics,
    admin: AdminAuth,
}

/// A route and the run-time state of its instances.
pub struct Backend {
    pub route: Route,
    pub upstream: Upstream,
    /// `route.name()`, for the response body's failure log, which outlives the request.
    route_name: Arc<str>,
}

impl Proxy {
    pub fn new(config: &GatewayConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            // A redirect is the client's business: pass it through, don't follow it.
            .redirect(reqwest::redirect::Policy::none())
            // HTTP_PROXY in the gateway's environment must not reroute service traffic.
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .build()
            .context("building the gateway's HTTP client")?;
        // reqwest's settings, as forwarding had them: TCP_NODELAY, TCP keepalive, the user
        // timeout, idle connections kept 90 s. No proxy, no redirects, no headers added
        // (reqwest added `accept: */*`): hyper has none of them.
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(15)));
        connector.set_keepalive_interval(Some(Duration::from_secs(15)));
        connector.set_keepalive_retries(Some(3));
        connector.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        let upstream_client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let backends = config
            .routes
            .iter()
            .map(|route| Backend {
                route: route.clone(),
                upstream: Upstream::new(route.instances(), config.ejection),
                route_name: route.name().into(),
            })
            .collect::<Vec<Backend>>();
        let metrics = UpstreamMetrics::new(
            backends
                .iter()
                .flat_map(|b| b.upstream.instances().iter().map(|i| i.name())),
        );
        Ok(Proxy {
            upstream_client,
            client,
            backends,
            upstream_timeout: config.upstream_timeout,
            max_body_bytes: config.max_body_bytes,
            internal_paths: config.internal_paths.clone(),
            metrics,
            admin: config.admin.clone(),
        })
    }

    /// The upstream results, to register into the gateway's registry.
    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// `GATEWAY_INTERNAL_PATHS`.
    pub fn internal_paths(&self) -> &InternalPaths {
        &self.internal_paths
    }

    /// Whether `/admin/<route>/...` is forwarded (`ADMIN_TOKEN` set).
    pub fn admin_enabled(&self) -> bool {
        self.admin.is_on()
    }

    /// Longest prefix first, as in the route table.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    fn find<'p>(&self, path: &'p str) -> Option<(&Backend, &'p str)> {
        self.backends
            .iter()
            .find_map(|b| b.route.strip(path).map(|rest| (b, rest)))
    }
}

/// The fallback handler: every request the gateway does not answer itself comes here.
pub async fn forward(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(client_addr): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, GatewayError> {
    let (parts, body) = request.into_parts();

    // 1 and 2. Route and the upstream's path, checked against the internal paths; or the
    // operator's way to a service's admin API.
    let (backend, path_and_query) = match admin_target(&proxy, &parts)? {
        Some(target) => target,
        None => {
            let (backend, rest) = proxy.find(parts.uri.path()).ok_or(GatewayError::NoRoute)?;
            let (path, path_and_query) = upstream_target(rest, parts.uri.query())?;
            if proxy.internal_paths.blocks(&path) {
                return Err(GatewayError::NoRoute);
            }
            (backend, path_and_query)
        }
    };
    let route = &backend.route;

    // 3. A declared length over the limit is refused without reading or forwarding anything.
    let limit = proxy.max_body_bytes;
    if content_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }

    // 4. Headers.
    let mut headers = upstream_request_headers(&parts.headers, &parts.uri, client_addr);
    common::trace::forward_headers(&mut headers);

    // 5. Body. `exceeded` tells a cut body apart from other send failures below, instead of
    // digging the limit error out of the HTTP client's error, whose shape depends on when
    // the body failed.
    let exceeded = Arc::new(AtomicBool::new(false));
    let body = if body.is_end_stream() {
        // Without a body the upstream request has none either, rather than an empty chunked one.
        ClientBody::Empty
    } else {
        let flag = Arc::clone(&exceeded);
        let limited = Limited::new(body, limit_as_usize(limit))
            .into_data_stream()
            .inspect_err(move |e| {
                if e.is::<LengthLimitError>() {
                    flag.store(true, Ordering::Relaxed);
                }
            });
        ClientBody::Stream(Arc::new(Mutex::new(Some(Box::pin(limited)))))
    };

    // 6. Attempts. Dropping the future on timeout closes the upstream connection; `trying`
    // names the instance the deadline interrupted.
    let metrics = &proxy.metrics;
    let trying: Mutex<Option<&str>> = Mutex::new(None);
    let attempts = async {
        let mut last_error = None;
        let order = backend.upstream.attempt_order();
        let mut headers = Some(headers);
        for (i, instance) in order.iter().enumerate() {
            if body.is_spent() {
                break;
            }
            let uri = instance
                .uri_for(&path_and_query)
                .map_err(GatewayError::InvalidUri)?;
            let mut upstream_request = axum::http::Request::new(body.for_attempt());
            *upstream_request.method_mut() = parts.method.clone();
            *upstream_request.uri_mut() = uri;
            // The last instance takes the headers; a copy only for one that may be followed.
            let attempt_headers = if i + 1 == order.len() {
                headers.take()
            } else {
                headers.clone()
            };
            *upstream_request.headers_mut() = attempt_headers.unwrap_or_default();
            let started = Instant::now();
            *lock(&trying) = Some(instance.name());
            let result = proxy.upstream_client.request(upstream_request).await;
            *lock(&trying) = None;
            match result {
                Ok(response) => {
                    instance.connected(started);
                    let result = if response.status().is_server_error() {
                        "5xx"
                    } else {
                        "ok"
                    };
                    metrics.record(instance.name(), result);
                    return Ok(response);
                }
                Err(e) if e.is_connect() => {
                    metrics.record(instance.name(), "connect_failure");
                    if instance.connect_failed(started) {
                        metrics.record(instance.name(), "ejected");
                    }
                    tracing::debug!(route = route.name(), instance = instance.name(), error = %error_chain(&e), "connect failed, trying the next instance");
                    last_error = Some(e);
                }
                Err(e) => {
                    instance.connected(started);
                    metrics.record(instance.name(), "error");
                    last_error = Some(e);
                    break;
                }
            }
        }
        if exceeded.load(Ordering::Relaxed) {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        let error = last_error.map(|e| error_chain(&e)).unwrap_or_default();
        tracing::warn!(route = route.name(), %error, "upstream request failed");
        Err(GatewayError::BadGateway)
    };
    let timeout = route.timeout().unwrap_or(proxy.upstream_timeout);
    let upstream_response = match tokio::time::timeout(timeout, attempts).await {
        Ok(result) => result?,
        Err(_) if exceeded.load(Ordering::Relaxed) => {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        Err(_elapsed) => {
            if let Some(instance) = *lock(&trying) {
                metrics.record(instance, "timeout");
            }
            tracing::warn!(route = route.name(), "upstream did not answer in time");
            return Err(GatewayError::GatewayTimeout);
        }
    };

    // 7. Response, streamed. A failure mid-body aborts the client's response, which is the
    // only honest signal once the status line has been sent.
    let (upstream_parts, upstream_body) = upstream_response.into_parts();
    let mut response_headers = upstream_parts.headers;
    strip_hop_by_hop(&mut response_headers);
    let body = ResponseBody {
        inner: upstream_body,
        route: Arc::clone(&backend.route_name),
    };
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = upstream_parts.status;
    *response.headers_mut() = response_headers;
    Ok(response)
}

/// `/admin/<route>/<rest>` goes to `<route>`'s `/admin/<rest>`, for a request with the
/// admin token only: without `ADMIN_TOKEN` on the gateway 404 `no_route` (as if the path
/// did not exist), without the right bearer token 401. The token is checked before the route
/// is looked up, so a caller without it learns nothing about the routes. `<rest>` has its
/// dot segments resolved *before* `/admin` is put in front, so the upstream path is always
/// below `/admin`: never the services' `/metrics`, `/healthz` or `/readyz`. The
/// `Authorization` header is forwarded: the service checks the token again.
fn admin_target<'a>(
    proxy: &'a Proxy,
    parts: &axum::http::request::Parts,
) -> Result<Option<(&'a Backend, String)>, GatewayError> {
    let Some(rest) = parts.uri.path().strip_prefix("/admin/") else {
        return Ok(None);
    };
    proxy
        .admin
        .check(&parts.headers)
        .map_err(|denied| match denied {
            Denied::Off => GatewayError::NoRoute,
            Denied::Unauthorized => GatewayError::Unauthorized,
        })?;
    let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let backend = proxy
        .backends
        .iter()
        .find(|b| b.route.name() == name)
        .ok_or(GatewayError::NoRoute)?;
    let (rest, _) = upstream_target(&format!("/{rest}"), None)?;
    let (_, path_and_query) = upstream_target(&format!("/admin{rest}"), parts.uri.query())?;
    Ok(Some((backend, path_and_query)))
}

/// The client's request body, given to at most one upstream attempt: the attempt takes it
/// when the HTTP client first polls it, which happens only once the connection is open. A
/// connect failure leaves it in place for the next instance; once taken it is spent, and no
/// other attempt may start, since the upstream may have received part of it.
enum ClientBody {
    Empty,
    Stream(Arc<Mutex<Option<BodyStream>>>),
}

impl ClientBody {
    fn is_spent(&self) -> bool {
        match self {
            ClientBody::Empty => false,
            ClientBody::Stream(slot) => lock(slot).is_none(),
        }
    }

    fn for_attempt(&self) -> AttemptBody {
        AttemptBody {
            slot: match self {
                ClientBody::Empty => None,
                ClientBody::Stream(slot) => Some(Arc::clone(slot)),
            },
            taken: None,
        }
    }
}

/// One attempt's request body: none, or the client's, taken from the slot on first poll.
pub struct AttemptBody {
    slot: Option<Arc<Mutex<Option<BodyStream>>>>,
    taken: Option<BodyStream>,
}

impl HttpBody for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(slot) = &this.slot else {
            return Poll::Ready(None);
        };
        if this.taken.is_none() {
            this.taken = lock(slot).take();
        }
        match this.taken.as_mut() {
            Some(stream) => stream
                .poll_next_unpin(cx)
                .map(|chunk| chunk.map(|data| data.map(Frame::data))),
            // Unreachable while attempts check `is_spent` first; never send a truncated
            // body if that ever changes.
            None => Poll::Ready(Some(Err(BoxError::from(
                "the request body was already sent to another instance",
            )))),
        }
    }

    /// No body is sent as none (no `content-length: 0`, no empty chunked body).
    fn is_end_stream(&self) -> bool {
        self.slot.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.slot {
            None => SizeHint::with_exact(0),
            Some(_) => SizeHint::default(),
        }
    }
}

/// The upstream's response body on its way to the client: its data frames (trailers are
/// not forwarded) and a warning when it fails mid-way. No size hint: the upstream's
/// `content-length` header, forwarded, is what the client is told.
struct ResponseBody {
    inner: Incoming,
    route: Arc<str>,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) if !frame.is_data() => continue,
                Some(Err(e)) => {
                    tracing::warn!(route = &*self.route, error = %error_chain(&e), "upstream response body failed");
                    return Poll::Ready(Some(Err(e)));
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

/// Holding the lock never panics, so a poisoned lock still holds a consistent value.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The path the upstream will see and the same with the query: `rest` with dot segments
/// resolved as any URL parser would (also `%2e%2e`), so what the internal-path check sees is
/// what the upstream gets, and a path cannot climb above an instance's base path.
fn upstream_target(rest: &str, query: Option<&str>) -> Result<(String, String), GatewayError> {
    // Most paths are ones the parser returns unchanged: no need to run it (5% of the
    // instructions per proxied request).
    if is_plain_path(rest) && query.is_none_or(is_plain_query) {
        let path_and_query = match query {
            Some(query) => format!("{rest}?{query}"),
            None => rest.to_string(),
        };
        return Ok((rest.to_string(), path_and_query));
    }
    parsed_target(rest, query)
}

/// A path the URL parser leaves as it is: no dot segment possible (no `.`, no `%`, so no
/// `%2e`), no `\` (the parser reads it as `/`), nothing it percent-encodes.
fn is_plain_path(path: &str) -> bool {
    static PLAIN: [bool; 256] = byte_set(b"/-_~!$&'()*+,;=:@");
    path.starts_with('/') && path.bytes().all(|b| PLAIN[usize::from(b)])
}

/// A query the URL parser leaves as it is (it encodes `'` in an http URL's query).
fn is_plain_query(query: &str) -> bool {
    static PLAIN: [bool; 256] = byte_set(b"/?-_~!$&()*+,;=:@.%");
    query.bytes().all(|b| PLAIN[usize::from(b)])
}

/// ASCII letters and digits and `extra`, as a table: one load per byte of a path, where
/// searching `extra` for each byte cost 900 instructions per request.
const fn byte_set(extra: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut b = 0;
    while b < 256 {
        set[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        set[extra[i] as usize] = true;
        i += 1;
    }
    set
}

fn parsed_target(rest: &str, query: Option<&str>) -> Result<(String, String), GatewayError> {
    let target = match query {
        Some(query) => format!("http://upstream{rest}?{query}"),
        None => format!("http://upstream{rest}"),
    };
    let url = Url::parse(&target).map_err(|e| GatewayError::InvalidUri(e.to_string()))?;
    let path = url.path().to_string();
    let path_and_query = match url.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.clone(),
    };
    Ok((path, path_and_query))
}

/// The headers sent upstream: the client's, minus hop-by-hop headers, `host` (the client
/// named the gateway, not the upstream; the HTTP client sets it from the URL) and `expect`
/// (the gateway's server already answered `100-continue` to the client), plus `x-forwarded-*`.
fn upstream_request_headers(
    incoming: &HeaderMap,
    uri: &axum::http::Uri,
    client_addr: SocketAddr,
) -> HeaderMap {
    // One pass copying what is kept, rather than a copy and a dozen removals.
    let named = connection_named(incoming);
    // Room for what is added: the three `x-forwarded-*`, `traceparent`, and `host`, which
    // the HTTP client sets. One short made the map grow (rehash) on every request.
    let mut headers = HeaderMap::with_capacity(incoming.len() + 5);
    for (name, value) in incoming {
        if !is_hop_by_hop(name, &named) && !REPLACED.contains(name) {
            headers.append(name, value.clone());
        }
    }

    // Append to the chain an earlier proxy may have started; several header lines count as
    // one comma-separated list.
    let client_ip = IpText::new(client_addr.ip());
    let client_ip = client_ip.as_str();
    let previous: Vec<&str> = incoming
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded_for = if previous.is_empty() {
        HeaderValue::from_str(client_ip)
    } else {
        HeaderValue::from_str(&format!("{}, {client_ip}", previous.join(", ")))
    };
    match forwarded_for {
        Ok(value) => {
            headers.insert(X_FORWARDED_FOR, value);
        }
        // Cannot happen (visible ASCII only): then the client's chain as it came.
        Err(_) if !named.contains(&X_FORWARDED_FOR) => {
            for value in incoming.get_all(&X_FORWARDED_FOR) {
                headers.append(X_FORWARDED_FOR, value.clone());
            }
        }
        Err(_) => {}
    }

    // The gateway only speaks plain HTTP.
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));

    // HTTP/1.1 puts the host in `Host`; HTTP/2 puts it in the URI authority.
    let original_host = incoming
        .get(header::HOST)
        .cloned()
        .or_else(|| uri.authority().and_then(|a| a.as_str().parse().ok()));
    match original_host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    headers
}

/// An IP address as text, on the stack: `to_string` (`Display`) took 1,400 instructions for
/// an IPv4 address, as much as copying all the other headers. IPv4 is written by hand, IPv6
/// through `Display`.
struct IpText {
    buf: [u8; 64],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut buf = [0u8; 64];
        let len = match ip {
            IpAddr::V4(v4) => {
                let mut n = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    if octet >= 100 {
                        buf[n] = b'0' + octet / 100;
                        n += 1;
                    }
                    if octet >= 10 {
                        buf[n] = b'0' + octet / 10 % 10;
                        n += 1;
                    }
                    buf[n] = b'0' + octet % 10;
                    n += 1;
                }
                n
            }
            IpAddr::V6(v6) => {
                // At most 45 characters: it fits.
                let mut rest = &mut buf[..];
                let _ = write!(rest, "{v6}");
                64 - rest.len()
            }
        };
        IpText { buf, len }
    }

    fn as_str(&self) -> &str {
        // ASCII digits, dots, colons and hex digits only.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// Removes the fixed hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = connection_named(headers);
    // Usually none: no allocation, and no removal (a hash lookup each) of absent names.
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name, &named))
        .cloned()
        .collect();
    for name in found {
        headers.remove(name);
    }
}

/// The headers the `Connection` header names.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

fn is_hop_by_hop(name: &HeaderName, connection_named: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name) || connection_named.contains(name)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Limited` counts in `usize`; a limit beyond it is no limit on this platform.
fn limit_as_usize(limit: u64) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// reqwest's `Display` shows only the outermost error ("error sending request"); the cause
/// (connection refused, reset) is what an operator needs.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "X-Secret, keep-alive".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn forwarded_for_appends_to_an_existing_chain() {
        let mut incoming = HeaderMap::new();
        incoming.append(X_FORWARDED_FOR, "10.0.0.1".parse().unwrap());
        incoming.append(X_FORWARDED_FOR, "10.0.0.2".parse().unwrap());
        incoming.insert(header::HOST, "gw.example".parse().unwrap());
        let uri = "/order".parse().unwrap();
        let headers =
            upstream_request_headers(&incoming, &uri, "192.168.1.9:5000".parse().unwrap());
        assert_eq!(
            headers.get(X_FORWARDED_FOR).unwrap(),
            "10.0.0.1, 10.0.0.2, 192.168.1.9"
        );
        assert_eq!(headers.get(X_FORWARDED_HOST).unwrap(), "gw.example");
        assert!(headers.get(header::HOST).is_none());
    }

    #[test]
    fn ip_text_is_the_displayed_address() {
        let mut ips: Vec<IpAddr> = [
            "0.0.0.0",
            "127.0.0.1",
            "10.0.0.9",
            "255.255.255.255",
            "192.168.100.10",
            "1.20.199.250",
            "::1",
            "::",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.128",
            "fe80:1:2:3:4:5:6:7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
        ips.extend((0..=255u8).map(|b| IpAddr::from([b, 255 - b, b / 3, b % 10])));
        for ip in ips {
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn upstream_headers_drop_hop_by_hop_and_replaced_ones_and_keep_the_rest_in_order() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::CONNECTION, "x-secret".parse().unwrap());
        incoming.insert("x-secret", "1".parse().unwrap());
        incoming.insert(header::TE, "trailers".parse().unwrap());
        incoming.insert(header::EXPECT, "100-continue".parse().unwrap());
        incoming.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        incoming.insert(X_FORWARDED_HOST, "spoofed".parse().unwrap());
        incoming.append("x-multi", "a".parse().unwrap());
        incoming.append("x-multi", "b".parse().unwrap());
        let uri = "/order".parse().unwrap();
        let headers = upstream_request_headers(&incoming, &uri, "10.0.0.9:1".parse().unwrap());
        let names: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-multi", "x-forwarded-for", "x-forwarded-proto"]);
        let multi: Vec<_> = headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert_eq!(headers.get(X_FORWARDED_PROTO).unwrap(), "http");
    }

    #[test]
    fn the_upstream_target_has_dot_segments_resolved_and_the_query_kept() {
        let target = |rest, query| upstream_target(rest, query).unwrap();
        assert_eq!(
            target("/buy", Some("x=1&y=two%20words")),
            ("/buy".into(), "/buy?x=1&y=two%20words".into())
        );
        assert_eq!(target("/x/../admin", None).0, "/admin");
        assert_eq!(target("/x/%2e%2E/admin", None).0, "/admin");
        assert_eq!(target("/../../admin/./y", None).0, "/admin/y");
        assert_eq!(target("//evil.example/x", None).0, "//evil.example/x");
    }

    #[test]
    fn the_plain_path_shortcut_agrees_with_the_url_parser() {
        let mut cases: Vec<(String, Option<String>)> = Vec::new();
        for b in 0x20u8..0x7f {
            let c = char::from(b);
            for path in [format!("/a{c}b"), format!("/{c}"), format!("/x/{c}{c}/y")] {
                cases.push((path.clone(), None));
                cases.push((path, Some(format!("q={c}&r"))));
            }
        }
        cases.push(("".into(), None));
        cases.push(("//x".into(), Some("".into())));
        cases.push((
            "/orders/01a23205-985c-7766".into(),
            Some("a=1&b=%zz".into()),
        ));
        for (path, query) in &cases {
            let query = query.as_deref();
            let Ok(parsed) = parsed_target(path, query) else {
                continue;
            };
            assert_eq!(
                upstream_target(path, query).unwrap(),
                parsed,
                "{path:?} {query:?}"
            );
        }
    }
}
