//! Gateway configuration from environment variables. Every variable has a default that works
//! with the order and pay services running locally on their default ports.

use std::{env::VarError, time::Duration};

use anyhow::{Context, bail};
use common::config::{env_millis, env_or, env_string};

use crate::{
    internal::{DEFAULT_INTERNAL_PATHS, InternalPaths},
    routes::RouteTable,
    upstream::EjectionPolicy,
};

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `GATEWAY_ADDR` (default `127.0.0.1:8769`): address to listen on. Port 0 picks a free
    /// port (tests use it).
    pub addr: String,
    /// `GATEWAY_ROUTES` (default `/order=http://127.0.0.1:8763,/pay=http://127.0.0.1:8762`):
    /// comma-separated entries. `prefix=base-url` starts a route; a bare `http://…` entry
    /// adds another instance to the route before it, so
    /// `/order=http://a:8763,http://b:8763,/pay=http://c:8762` gives order two instances,
    /// balanced round robin. A request goes to the route with the longest prefix matching on
    /// a path-segment boundary, with the prefix stripped (`/order/buy?x=1` reaches the order
    /// service as `/buy?x=1`). Base URLs are plain `http://`. The route name in `/readyz` is
    /// the prefix without its leading slash.
    ///
    /// `GATEWAY_ROUTE_TIMEOUTS` (default empty): comma-separated `prefix=milliseconds`
    /// pairs, e.g. `/pay=5000`, overriding `GATEWAY_UPSTREAM_TIMEOUT_MS` for those routes.
    pub routes: RouteTable,
    /// `GATEWAY_UPSTREAM_TIMEOUT_MS` (default `30000`): how long the gateway waits for an
    /// upstream's response headers, from the start of the request (connect attempts on
    /// every instance included), before answering 504. The response body is streamed
    /// afterwards without a deadline, so long downloads work.
    pub upstream_timeout: Duration,
    /// `GATEWAY_CONNECT_TIMEOUT_MS` (default `2000`): how long opening a TCP connection to an
    /// upstream instance may take; failing to connect ejects the instance and the next one
    /// is tried, and when none connects the answer is 502.
    pub connect_timeout: Duration,
    /// `GATEWAY_MAX_BODY_BYTES` (default `10485760`, 10 MiB): largest request body forwarded.
    /// A larger `Content-Length` is refused with 413 before any upstream is contacted; a
    /// chunked body is cut when it grows past the limit.
    pub max_body_bytes: u64,
    /// `GATEWAY_INTERNAL_PATHS` (default `/healthz,/readyz,/admin,/internal,/metrics`):
    /// comma-separated paths, matched on the path the upstream would see (after the prefix is
    /// stripped) on segment boundaries, that the gateway answers 404 `no_route` itself. Set
    /// but empty, nothing is blocked (unlike other variables, where empty means default).
    pub internal_paths: InternalPaths,
    /// `GATEWAY_EJECT_BASE_MS` (default `1000`) and `GATEWAY_EJECT_MAX_MS` (default
    /// `30000`): an instance that refused a connection is skipped for the base time, then one
    /// request tries it first; each failed trial doubles the wait, up to the maximum.
    pub ejection: EjectionPolicy,
}

impl GatewayConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let routes_spec = env_string(
            "GATEWAY_ROUTES",
            "/order=http://127.0.0.1:8763,/pay=http://127.0.0.1:8762",
        );
        let timeouts_spec = env_string("GATEWAY_ROUTE_TIMEOUTS", "");
        let routes = RouteTable::parse(&routes_spec)
            .map_err(|e| {
                anyhow::anyhow!(
                    "environment variable GATEWAY_ROUTES={routes_spec:?} is invalid: {e}"
                )
            })?
            .with_timeouts(&timeouts_spec)
            .map_err(|e| {
                anyhow::anyhow!(
                    "environment variable GATEWAY_ROUTE_TIMEOUTS={timeouts_spec:?} is invalid: {e}"
                )
            })?;
        let internal_spec = match std::env::var("GATEWAY_INTERNAL_PATHS") {
            Ok(spec) => spec,
            Err(VarError::NotPresent) => DEFAULT_INTERNAL_PATHS.to_string(),
            Err(e) => bail!("environment variable GATEWAY_INTERNAL_PATHS is invalid: {e}"),
        };
        let internal_paths = InternalPaths::parse(&internal_spec).map_err(|e| {
            anyhow::anyhow!(
                "environment variable GATEWAY_INTERNAL_PATHS={internal_spec:?} is invalid: {e}"
            )
        })?;
        let config = GatewayConfig {
            addr: env_string("GATEWAY_ADDR", "127.0.0.1:8769"),
            routes,
            upstream_timeout: env_millis("GATEWAY_UPSTREAM_TIMEOUT_MS", 30_000)?,
            connect_timeout: env_millis("GATEWAY_CONNECT_TIMEOUT_MS", 2_000)?,
            max_body_bytes: env_or("GATEWAY_MAX_BODY_BYTES", 10 * 1024 * 1024)?,
            internal_paths,
            ejection: EjectionPolicy {
                base: env_millis("GATEWAY_EJECT_BASE_MS", 1_000)?,
                max: env_millis("GATEWAY_EJECT_MAX_MS", 30_000)?,
            },
        };
        config.validate().context("invalid gateway configuration")?;
        Ok(config)
    }

    /// Zero would make every request fail (or, for ejection, retry a dead instance on every
    /// request), which is never what an operator meant.
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
        if self.ejection.base.is_zero() {
            bail!("GATEWAY_EJECT_BASE_MS must be greater than 0");
        }
        if self.ejection.max < self.ejection.base {
            bail!("GATEWAY_EJECT_MAX_MS must be at least GATEWAY_EJECT_BASE_MS");
        }
        Ok(())
    }
}
