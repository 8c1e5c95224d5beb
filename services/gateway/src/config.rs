//! The gateway's settings ([`GatewaySettings`], from the environment, `gateway --help`) and
//! the configuration it runs with ([`GatewayConfig`], which tests build in code). Every
//! variable has a default that works with the order and pay services running locally on
//! their default ports.

use std::time::Duration;

use anyhow::bail;
use common::{
    admin::{AdminAuth, AdminSettings},
    config::Settings,
    telemetry::LogSettings,
};

use crate::{
    internal::{DEFAULT_INTERNAL_PATHS, InternalPaths},
    routes::RouteTable,
    upstream::EjectionPolicy,
};

/// Every variable the gateway reads, with its default. docs/configuration.md (and
/// [`GatewayConfig`]) say more about each.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", version, about)]
pub struct GatewaySettings {
    /// Listen address; port 0 picks a free port.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:8769")]
    pub gateway_addr: String,
    /// Comma-separated: `prefix=base-url` starts a route, a bare `http://…` entry adds an
    /// instance to the route before it.
    #[arg(
        long,
        env = "GATEWAY_ROUTES",
        default_value = "/order=http://127.0.0.1:8763,/pay=http://127.0.0.1:8762",
        value_parser = RouteTable::parse
    )]
    pub gateway_routes: RouteTable,
    /// Comma-separated `prefix=milliseconds` pairs overriding GATEWAY_UPSTREAM_TIMEOUT_MS.
    #[arg(long, env = "GATEWAY_ROUTE_TIMEOUTS", default_value = "")]
    pub gateway_route_timeouts: String,
    /// Wait for an upstream's response headers, then 504.
    #[arg(long, env = "GATEWAY_UPSTREAM_TIMEOUT_MS", default_value_t = 30_000)]
    pub gateway_upstream_timeout_ms: u64,
    /// Connect to one instance; failing ejects it and the next one is tried.
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT_MS", default_value_t = 2_000)]
    pub gateway_connect_timeout_ms: u64,
    /// Larger request bodies get 413.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub gateway_max_body_bytes: u64,
    /// Services' paths the gateway answers 404 itself; set but empty exposes them.
    #[arg(
        long,
        env = "GATEWAY_INTERNAL_PATHS",
        default_value = DEFAULT_INTERNAL_PATHS,
        value_parser = InternalPaths::parse
    )]
    pub gateway_internal_paths: InternalPaths,
    /// An instance that refused a connection is tried last for this long.
    #[arg(long, env = "GATEWAY_EJECT_BASE_MS", default_value_t = 1_000)]
    pub gateway_eject_base_ms: u64,
    /// That wait doubles per failed trial, up to this.
    #[arg(long, env = "GATEWAY_EJECT_MAX_MS", default_value_t = 30_000)]
    pub gateway_eject_max_ms: u64,
    #[command(flatten)]
    pub admin: AdminSettings,
    #[command(flatten)]
    pub log: LogSettings,
}

impl Settings for GatewaySettings {
    /// Set but empty, nothing is blocked.
    const KEEP_EMPTY: &'static [&'static str] = &["GATEWAY_INTERNAL_PATHS"];
}

impl GatewaySettings {
    /// Applies the route timeouts to the routes; the rest is checked when the gateway is
    /// built ([`GatewayConfig::validate`]).
    pub fn into_config(self) -> anyhow::Result<GatewayConfig> {
        let timeouts = &self.gateway_route_timeouts;
        let routes = self.gateway_routes.with_timeouts(timeouts).map_err(|e| {
            anyhow::anyhow!(
                "environment variable GATEWAY_ROUTE_TIMEOUTS={timeouts:?} is invalid: {e}"
            )
        })?;
        Ok(GatewayConfig {
            addr: self.gateway_addr,
            routes,
            upstream_timeout: Duration::from_millis(self.gateway_upstream_timeout_ms),
            connect_timeout: Duration::from_millis(self.gateway_connect_timeout_ms),
            max_body_bytes: self.gateway_max_body_bytes,
            internal_paths: self.gateway_internal_paths,
            ejection: EjectionPolicy {
                base: Duration::from_millis(self.gateway_eject_base_ms),
                max: Duration::from_millis(self.gateway_eject_max_ms),
            },
            admin: self.admin.admin_token,
        })
    }
}

/// Every variable the gateway reads, with its default (docs/configuration.md lists them).
pub fn variables() -> Vec<(String, String)> {
    GatewaySettings::variables()
}

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
    /// `ADMIN_TOKEN` (default empty, off): with it, `/admin/<route>/<path>` is forwarded
    /// to that route's `/admin/<path>` when the request carries `Authorization: Bearer
    /// <ADMIN_TOKEN>` (401 otherwise); off, those paths are a 404 like any missing route.
    pub admin: AdminAuth,
}

impl GatewayConfig {
    /// Zero would make every request fail (or, for ejection, retry a dead instance on every
    /// request), which is never what an operator meant. [`crate::Application::build`] runs
    /// this, on settings and on configs built in code alike.
    pub fn validate(&self) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> anyhow::Result<GatewayConfig> {
        let args = std::iter::once("gateway").chain(args.iter().copied());
        GatewaySettings::try_load_from(args)?.into_config()
    }

    /// One test, since the variables are the process's.
    #[test]
    fn settings_become_the_configuration_with_todays_defaults_and_rules() {
        let cfg = load(&[]).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.addr, "127.0.0.1:8769");
        assert_eq!(cfg.routes.iter().count(), 2);
        assert_eq!(cfg.upstream_timeout, Duration::from_secs(30));
        assert_eq!(cfg.connect_timeout, Duration::from_secs(2));
        assert_eq!(cfg.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(cfg.ejection.base, Duration::from_secs(1));
        assert_eq!(cfg.ejection.max, Duration::from_secs(30));
        assert!(cfg.internal_paths.blocks("/admin/stats"));

        let err = load(&["--gateway-route-timeouts", "/nope=5"]).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_ROUTE_TIMEOUTS"), "{err}");
        let err = load(&["--gateway-routes", "order"]).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_ROUTES"), "{err}");
        let cfg = load(&["--gateway-eject-max-ms", "10"]).unwrap();
        let err = cfg.validate().unwrap_err();
        assert!(err.to_string().contains("GATEWAY_EJECT_MAX_MS"), "{err}");

        // Set but empty: nothing blocked, where other variables fall back to their default.
        // SAFETY: no other test of this crate reads the environment.
        unsafe {
            std::env::set_var("GATEWAY_INTERNAL_PATHS", "");
            std::env::set_var("GATEWAY_ADDR", "");
        }
        let cfg = load(&[]).unwrap();
        assert!(!cfg.internal_paths.blocks("/admin/stats"));
        assert_eq!(cfg.addr, "127.0.0.1:8769");
    }
}
