//! Gateway configuration from environment variables. Every variable has a default that works
//! with the order and pay services running locally on their default ports.

use std::time::Duration;

use anyhow::{Context, bail};
use common::config::{env_millis, env_or, env_string};

use crate::routes::RouteTable;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `GATEWAY_ADDR` (default `127.0.0.1:8769`): address to listen on. Port 0 picks a free
    /// port (tests use it).
    pub addr: String,
    /// `GATEWAY_ROUTES` (default `/order=http://127.0.0.1:8763,/pay=http://127.0.0.1:8762`):
    /// comma-separated `prefix=base-url` pairs. A request goes to the route with the longest
    /// prefix matching on a path-segment boundary, with the prefix stripped
    /// (`/order/buy?x=1` reaches the order service as `/buy?x=1`). Base URLs are plain
    /// `http://`. The route name in `/readyz` is the prefix without its leading slash.
    pub routes: RouteTable,
    /// `GATEWAY_UPSTREAM_TIMEOUT_MS` (default `30000`): how long the gateway waits for an
    /// upstream's response headers, from the start of the request, before answering 504. The
    /// response body is streamed afterwards without a deadline, so long downloads work.
    pub upstream_timeout: Duration,
    /// `GATEWAY_CONNECT_TIMEOUT_MS` (default `2000`): how long opening a TCP connection to an
    /// upstream may take; failing to connect is a 502.
    pub connect_timeout: Duration,
    /// `GATEWAY_MAX_BODY_BYTES` (default `10485760`, 10 MiB): largest request body forwarded.
    /// A larger `Content-Length` is refused with 413 before any upstream is contacted; a
    /// chunked body is cut when it grows past the limit.
    pub max_body_bytes: u64,
}

impl GatewayConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let routes_spec = env_string(
            "GATEWAY_ROUTES",
            "/order=http://127.0.0.1:8763,/pay=http://127.0.0.1:8762",
        );
        let routes = RouteTable::parse(&routes_spec).map_err(|e| {
            anyhow::anyhow!("environment variable GATEWAY_ROUTES={routes_spec:?} is invalid: {e}")
        })?;
        let config = GatewayConfig {
            addr: env_string("GATEWAY_ADDR", "127.0.0.1:8769"),
            routes,
            upstream_timeout: env_millis("GATEWAY_UPSTREAM_TIMEOUT_MS", 30_000)?,
            connect_timeout: env_millis("GATEWAY_CONNECT_TIMEOUT_MS", 2_000)?,
            max_body_bytes: env_or("GATEWAY_MAX_BODY_BYTES", 10 * 1024 * 1024)?,
        };
        config.validate().context("invalid gateway configuration")?;
        Ok(config)
    }

    /// Zero would make every request fail, which is never what an operator meant.
    fn validate(&self) -> anyhow::Result<()> {
        if self.upstream_timeout.is_zero() {
            bail!("GATEWAY_UPSTREAM_TIMEOUT_MS must be greater than 0");
        }
        if self.connect_timeout.is_zero() {
            bail!("GATEWAY_CONNECT_TIMEOUT_MS must be greater than 0");
        }
        if self.max_body_bytes == 0 {
            bail!("GATEWAY_MAX_BODY_BYTES must be greater than 0");
        }
        Ok(())
    }
}
