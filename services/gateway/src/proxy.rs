//! Forwarding one request to its upstream, top to bottom:
//!
//! 1. pick the route by longest path prefix (404 `no_route` if none);
//! 2. refuse a declared `Content-Length` above the limit (413) before touching the upstream;
//! 3. build the upstream URL: the path without the route prefix, the query unchanged;
//! 4. copy the headers minus hop-by-hop ones, add `x-forwarded-*`;
//! 5. stream the body through a length limit, so a chunked body cannot exceed it either;
//! 6. send, waiting at most the upstream timeout for the response headers;
//! 7. stream the response back with its status and end-to-end headers, whatever the status.
//!
//! Failures the gateway itself answers use the project's JSON error shape: 413
//! `body_too_large`, 502 `bad_gateway`, 504 `gateway_timeout`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use axum::{
    body::{Body, HttpBody},
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::Response,
};
use common::http::error_response;
use futures::TryStreamExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::{config::GatewayConfig, routes::RouteTable};

/// Headers that describe one connection rather than the message (RFC 9110 §7.6.1), so they
/// must not cross the proxy in either direction. `proxy-connection` is the non-standard
/// predecessor of `connection` that some clients still send.
const HOP_BY_HOP: [HeaderName; 9] = [
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

/// What every forwarded request shares: one connection-pooling client and the limits.
pub struct Proxy {
    client: reqwest::Client,
    routes: RouteTable,
    upstream_timeout: Duration,
    max_body_bytes: u64,
}

impl Proxy {
    pub fn new(config: &GatewayConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            // A redirect is the client's business: pass it through, don't follow it.
            .redirect(reqwest::redirect::Policy::none())
            // HTTP_PROXY in the gateway's environment must not reroute service traffic.
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            // reqwest adds `accept: */*` when the client sent no Accept, which means the same.
            .build()
            .context("building the upstream HTTP client")?;
        Ok(Proxy {
            client,
            routes: config.routes.clone(),
            upstream_timeout: config.upstream_timeout,
            max_body_bytes: config.max_body_bytes,
        })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }
}

/// The fallback handler: every request the gateway does not answer itself comes here.
pub async fn forward(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(client_addr): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();

    // 1. Route.
    let Some((route, rest)) = proxy.routes.find(parts.uri.path()) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "no_route",
            "no upstream serves this path",
        );
    };

    // 2. A declared length over the limit is refused without reading or forwarding anything.
    if content_length(&parts.headers).is_some_and(|len| len > proxy.max_body_bytes) {
        return body_too_large(proxy.max_body_bytes);
    }

    // 3. Upstream URL.
    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_string(),
    };
    let url = match route.upstream().url_for(&path_and_query) {
        Ok(url) => url,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_uri",
                &format!("cannot forward this path: {e}"),
            );
        }
    };

    // 4. Headers.
    let headers = upstream_request_headers(&parts.headers, &parts.uri, client_addr);

    // 5. Body. `exceeded` tells a cut body apart from other send failures below, instead of
    // digging the limit error out of the HTTP client's error, whose shape depends on when
    // the body failed.
    let exceeded = Arc::new(AtomicBool::new(false));
    let mut upstream_request = reqwest::Request::new(parts.method.clone(), url);
    *upstream_request.headers_mut() = headers;
    // Without a body the upstream request has none either, rather than an empty chunked one.
    if !body.is_end_stream() {
        let flag = Arc::clone(&exceeded);
        let limited = Limited::new(body, limit_as_usize(proxy.max_body_bytes))
            .into_data_stream()
            .inspect_err(move |e| {
                if e.is::<LengthLimitError>() {
                    flag.store(true, Ordering::Relaxed);
                }
            });
        *upstream_request.body_mut() = Some(reqwest::Body::wrap_stream(limited));
    }

    // 6. Send. The timeout covers connecting, sending the body and receiving the response
    // headers; dropping the future on timeout closes the upstream connection.
    let sent = tokio::time::timeout(
        proxy.upstream_timeout,
        proxy.client.execute(upstream_request),
    )
    .await;
    let upstream_response = match sent {
        Ok(Ok(response)) => response,
        _ if exceeded.load(Ordering::Relaxed) => return body_too_large(proxy.max_body_bytes),
        Err(_elapsed) => {
            tracing::warn!(route = route.name(), "upstream did not answer in time");
            return error_response(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "the upstream service did not answer in time",
            );
        }
        Ok(Err(e)) => {
            tracing::warn!(route = route.name(), error = %error_chain(&e), "upstream request failed");
            return error_response(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the upstream service is unreachable or closed the connection",
            );
        }
    };

    // 7. Response, streamed. A failure mid-body aborts the client's response, which is the
    // only honest signal once the status line has been sent.
    let status = upstream_response.status();
    let mut response_headers = upstream_response.headers().clone();
    strip_hop_by_hop(&mut response_headers);
    let route_name = route.name().to_string();
    let body = upstream_response.bytes_stream().inspect_err(move |e| {
        tracing::warn!(route = route_name, error = %error_chain(e), "upstream response body failed");
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = status;
    *response.headers_mut() = response_headers;
    response
}

/// The headers sent upstream: the client's, minus hop-by-hop headers, `host` (the client
/// named the gateway, not the upstream; the HTTP client sets it from the URL) and `expect`
/// (the gateway's server already answered `100-continue` to the client), plus `x-forwarded-*`.
fn upstream_request_headers(
    incoming: &HeaderMap,
    uri: &axum::http::Uri,
    client_addr: SocketAddr,
) -> HeaderMap {
    let mut headers = incoming.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);

    // Append to the chain an earlier proxy may have started; several header lines count as
    // one comma-separated list.
    let client_ip = client_addr.ip().to_string();
    let previous: Vec<&str> = incoming
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let forwarded_for = if previous.is_empty() {
        client_ip
    } else {
        format!("{}, {client_ip}", previous.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, value);
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

/// Removes the fixed hop-by-hop headers and every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
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

fn body_too_large(limit: u64) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("the request body exceeds {limit} bytes"),
    )
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
}
