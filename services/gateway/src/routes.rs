//! The route table: which upstream serves a request path, and what path it sees.
//!
//! A route is a path prefix mapped to one or more upstream instances (base URLs). Matching
//! picks the longest prefix that ends on a path-segment boundary, so `/order` serves `/order`
//! and `/order/buy` but never `/orders`, and a more specific route (`/order/admin`) wins over
//! a shorter one.
//!
//! This module is configuration only: which instance of a route gets a request, and which
//! instances are ejected, is runtime state kept in [`crate::upstream`].

use std::time::Duration;

use reqwest::Url;

/// Paths the gateway answers itself (`/admin` is its forwarding to the services' admin
/// APIs, `/openapi.json` their merged documents, `/dashboard` the page's files); a route
/// with one of these prefixes would never be reached. `GET /` is the page too, but a
/// catch-all route `/` still gets every other path (see [`crate::dashboard`]).
const RESERVED_PATHS: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/admin",
    "/dashboard",
];

#[derive(Debug, Clone)]
pub struct Route {
    /// Without a trailing slash; empty for the catch-all route `/`.
    prefix: String,
    /// At least one, no duplicates, in the order they were configured.
    instances: Vec<Url>,
    /// Overrides the gateway's default upstream timeout for this route.
    timeout: Option<Duration>,
}

impl Route {
    /// The route's name in readiness checks and logs: the prefix without its leading slash
    /// (`/order` is `order`), or `root` for `/`.
    pub fn name(&self) -> &str {
        match self.prefix.strip_prefix('/') {
            Some(name) => name,
            None => "root",
        }
    }

    /// The gateway path of an upstream `path`: the prefix in front (`/` is the prefix itself).
    pub fn public_path(&self, path: &str) -> String {
        match path {
            "/" if !self.prefix.is_empty() => self.prefix.clone(),
            _ => format!("{}{path}", self.prefix),
        }
    }

    pub fn instances(&self) -> &[Url] {
        &self.instances
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The rest of `path` after this route's prefix, or `None` when the prefix does not match
    /// on a segment boundary. Never empty: `/order` maps to `/`.
    pub fn strip<'p>(&self, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix(self.prefix.as_str())?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Longest prefix first, so the first match is the longest match.
    routes: Vec<Route>,
}

impl RouteTable {
    /// Parses a `GATEWAY_ROUTES` value: comma-separated entries, where `prefix=base-url`
    /// starts a route and a bare `http://…` entry adds another instance to the route before
    /// it. `/order=http://a:8763,http://b:8763,/pay=http://c:8762` is two routes, the first
    /// with two instances; a one-instance-per-route list reads as before. Blank entries (a
    /// trailing comma) are skipped; anything else that does not fit is an error naming it.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut routes: Vec<Route> = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.starts_with('/') {
                let (prefix, base) = entry
                    .split_once('=')
                    .ok_or_else(|| format!("entry {entry:?} is not prefix=base-url"))?;
                let prefix = parse_prefix(prefix.trim())?;
                if routes.iter().any(|r| r.prefix == prefix) {
                    return Err(format!("prefix {entry:?} is listed twice"));
                }
                let url =
                    parse_instance(base.trim()).map_err(|e| format!("entry {entry:?}: {e}"))?;
                routes.push(Route {
                    prefix,
                    instances: vec![url],
                    timeout: None,
                });
            } else if entry.contains("://") && !entry.contains('=') {
                let url = parse_instance(entry)?;
                let route = routes.last_mut().ok_or_else(|| {
                    format!("instance {entry:?} comes before any prefix=base-url entry")
                })?;
                if route.instances.contains(&url) {
                    return Err(format!(
                        "instance {entry:?} is listed twice for route {:?}",
                        route.name()
                    ));
                }
                route.instances.push(url);
            } else {
                return Err(format!(
                    "entry {entry:?} is neither /prefix=http://host:port nor http://host:port \
                     (another instance of the route before it)"
                ));
            }
        }
        if routes.is_empty() {
            return Err("no routes".into());
        }
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Ok(RouteTable { routes })
    }

    /// Applies a `GATEWAY_ROUTE_TIMEOUTS` value: comma-separated `prefix=milliseconds`
    /// pairs, e.g. `/pay=5000`. Each prefix must be a configured route; a route not listed
    /// keeps the default timeout.
    pub fn with_timeouts(mut self, spec: &str) -> Result<Self, String> {
        let mut seen: Vec<String> = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (prefix, millis) = entry
                .split_once('=')
                .ok_or_else(|| format!("entry {entry:?} is not prefix=milliseconds"))?;
            let prefix = parse_prefix(prefix.trim())?;
            let millis: u64 = millis
                .trim()
                .parse()
                .map_err(|e| format!("entry {entry:?}: {e}"))?;
            if millis == 0 {
                return Err(format!(
                    "entry {entry:?}: the timeout must be greater than 0"
                ));
            }
            if seen.contains(&prefix) {
                return Err(format!("prefix {entry:?} is listed twice"));
            }
            let route = self
                .routes
                .iter_mut()
                .find(|r| r.prefix == prefix)
                .ok_or_else(|| format!("entry {entry:?} names no route of GATEWAY_ROUTES"))?;
            route.timeout = Some(Duration::from_millis(millis));
            seen.push(prefix);
        }
        Ok(self)
    }

    /// The route for `path` and the path the upstream should see.
    pub fn find<'p>(&self, path: &'p str) -> Option<(&Route, &'p str)> {
        self.routes
            .iter()
            .find_map(|route| route.strip(path).map(|rest| (route, rest)))
    }

    /// Longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// Validates an instance base URL: plain `http` (the gateway is built without TLS and talks
/// to services on a private network), a host, no query or fragment.
fn parse_instance(base: &str) -> Result<Url, String> {
    let url = Url::parse(base).map_err(|e| format!("{base:?} is not a URL: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "{base:?} must use http:// (the gateway has no TLS)"
        ));
    }
    if url.host_str().is_none() {
        return Err(format!("{base:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{base:?} must not have a query or fragment"));
    }
    Ok(url)
}

fn parse_prefix(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err(format!("prefix {prefix:?} must start with /"));
    }
    if prefix
        .chars()
        .any(|c| c == '?' || c == '#' || c.is_whitespace())
    {
        return Err(format!("prefix {prefix:?} must be a plain path"));
    }
    let prefix = prefix.trim_end_matches('/');
    if RESERVED_PATHS
        .iter()
        .any(|reserved| prefix == *reserved || prefix.starts_with(&format!("{reserved}/")))
    {
        return Err(format!("prefix {prefix:?} is served by the gateway itself"));
    }
    Ok(prefix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::parse("/order=http://o:1,/pay=http://p:2/api,/order/admin=http://a:3").unwrap()
    }

    fn lookup(path: &str) -> Option<(String, String)> {
        let table = table();
        table
            .find(path)
            .map(|(route, rest)| (route.name().to_string(), rest.to_string()))
    }

    fn instances(table: &RouteTable, name: &str) -> Vec<String> {
        let route = table.iter().find(|r| r.name() == name).unwrap();
        route.instances().iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn matches_on_segment_boundaries_only() {
        assert_eq!(lookup("/order"), Some(("order".into(), "/".into())));
        assert_eq!(lookup("/order/"), Some(("order".into(), "/".into())));
        assert_eq!(lookup("/order/buy"), Some(("order".into(), "/buy".into())));
        assert_eq!(lookup("/orders"), None);
        assert_eq!(lookup("/"), None);
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(
            lookup("/order/admin/x"),
            Some(("order/admin".into(), "/x".into()))
        );
        assert_eq!(
            lookup("/order/administer"),
            Some(("order".into(), "/administer".into()))
        );
    }

    #[test]
    fn root_route_catches_everything_else() {
        let table = RouteTable::parse("/=http://r:1,/pay=http://p:2").unwrap();
        let (route, rest) = table.find("/anything").unwrap();
        assert_eq!((route.name(), rest), ("root", "/anything"));
        let (route, rest) = table.find("/pay/x").unwrap();
        assert_eq!((route.name(), rest), ("pay", "/x"));
    }

    #[test]
    fn bare_urls_add_instances_to_the_route_before_them() {
        let table = RouteTable::parse(
            "/order=http://a:8763, http://b:8763 ,http://c:8763/,/pay=http://d:8762,",
        )
        .unwrap();
        assert_eq!(
            instances(&table, "order"),
            ["http://a:8763/", "http://b:8763/", "http://c:8763/"]
        );
        assert_eq!(instances(&table, "pay"), ["http://d:8762/"]);

        // The one-instance format is unchanged.
        let table =
            RouteTable::parse("/order=http://127.0.0.1:8763,/pay=http://127.0.0.1:8762").unwrap();
        assert_eq!(instances(&table, "order"), ["http://127.0.0.1:8763/"]);
        assert_eq!(instances(&table, "pay"), ["http://127.0.0.1:8762/"]);
    }

    #[test]
    fn rejects_invalid_entries() {
        for (spec, expected) in [
            ("", "no routes"),
            ("/order", "not prefix=base-url"),
            ("order=http://o:1", "neither"),
            ("/order=not a url", "not a URL"),
            ("/order=https://o:1", "http://"),
            ("/order=http://o:1?x=1", "query"),
            ("/order=http://o:1,/order/=http://o:2", "listed twice"),
            ("/healthz=http://o:1", "gateway itself"),
            ("/admin/x=http://o:1", "gateway itself"),
            ("/dashboard=http://o:1", "gateway itself"),
            ("/o rder=http://o:1", "plain path"),
            ("http://a:1,/order=http://o:1", "before any prefix"),
            ("/order=http://o:1,http://o:1", "listed twice"),
            ("/order=http://o:1,https://o:2", "http://"),
            ("/order=http://o:1,o:2", "neither"),
        ] {
            let err = RouteTable::parse(spec).expect_err(spec);
            assert!(err.contains(expected), "{spec:?}: {err:?}");
        }
    }

    #[test]
    fn timeouts_override_the_default_per_route() {
        let table = table().with_timeouts(" /pay=5000, /order/=250 ").unwrap();
        let timeout = |path| table.find(path).unwrap().0.timeout();
        assert_eq!(timeout("/pay/x"), Some(Duration::from_millis(5000)));
        assert_eq!(timeout("/order/x"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("/order/admin/x"), None);
        assert!(table.with_timeouts("").is_ok());
    }

    #[test]
    fn rejects_invalid_timeouts() {
        for (spec, expected) in [
            ("/pay", "not prefix=milliseconds"),
            ("/pay=soon", "invalid digit"),
            ("/pay=0", "greater than 0"),
            ("/nowhere=100", "names no route"),
            ("/pay=1,/pay=2", "listed twice"),
        ] {
            let err = table().with_timeouts(spec).expect_err(spec);
            assert!(err.contains(expected), "{spec:?}: {err:?}");
        }
    }
}
