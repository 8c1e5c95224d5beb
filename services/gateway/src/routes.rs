//! The route table: which upstream serves a request path, and what path it sees.
//!
//! A route is a path prefix mapped to an [`Upstream`]. Matching picks the longest prefix that
//! ends on a path-segment boundary, so `/order` serves `/order` and `/order/buy` but never
//! `/orders`, and a more specific route (`/order/admin`) wins over a shorter one.

use reqwest::Url;

/// Paths the gateway answers itself; a route with one of these prefixes would never be reached.
const RESERVED_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Where a route's requests go.
///
/// Holds a list of base URLs so load balancing can be added without changing the route table;
/// today the list always has exactly one entry.
#[derive(Debug, Clone)]
pub struct Upstream {
    base_urls: Vec<Url>,
}

impl Upstream {
    /// Validates `base` as an upstream base URL: plain `http` (the gateway is built without
    /// TLS and talks to services on a private network), a host, no query or fragment.
    pub fn parse(base: &str) -> Result<Self, String> {
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
        Ok(Upstream {
            base_urls: vec![url],
        })
    }

    /// The base URL to send the next request to.
    pub fn base_url(&self) -> &Url {
        &self.base_urls[0]
    }

    /// The upstream URL for `path_and_query` (which starts with `/`): the base URL's path
    /// followed by it, so a base of `http://h/api` serves `/buy` as `http://h/api/buy`.
    pub fn url_for(&self, path_and_query: &str) -> Result<Url, String> {
        let base = self.base_url().as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path_and_query}")).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Without a trailing slash; empty for the catch-all route `/`.
    prefix: String,
    upstream: Upstream,
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

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The rest of `path` after this route's prefix, or `None` when the prefix does not match
    /// on a segment boundary. Never empty: `/order` maps to `/`.
    fn strip<'p>(&self, path: &'p str) -> Option<&'p str> {
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
    routes: Vec<Route>,
}

impl RouteTable {
    /// Parses `prefix=base-url` pairs separated by commas, e.g.
    /// `/order=http://127.0.0.1:8763,/pay=http://127.0.0.1:8762`. Blank entries (a trailing
    /// comma) are skipped; anything else that is not a valid pair is an error.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut routes: Vec<Route> = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (prefix, base) = entry
                .split_once('=')
                .ok_or_else(|| format!("entry {entry:?} is not prefix=base-url"))?;
            let prefix = parse_prefix(prefix.trim())?;
            if routes.iter().any(|r| r.prefix == prefix) {
                return Err(format!("prefix {entry:?} is listed twice"));
            }
            let upstream =
                Upstream::parse(base.trim()).map_err(|e| format!("entry {entry:?}: {e}"))?;
            routes.push(Route { prefix, upstream });
        }
        if routes.is_empty() {
            return Err("no routes".into());
        }
        // Longest first, so the first match is the longest match.
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Ok(RouteTable { routes })
    }

    /// The route for `path` and the path the upstream should see.
    pub fn find<'p>(&self, path: &'p str) -> Option<(&Route, &'p str)> {
        self.routes
            .iter()
            .find_map(|route| route.strip(path).map(|rest| (route, rest)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
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
    fn url_keeps_the_base_path() {
        let table = table();
        let (route, rest) = table.find("/pay/charge").unwrap();
        let url = route.upstream().url_for(&format!("{rest}?a=1")).unwrap();
        assert_eq!(url.as_str(), "http://p:2/api/charge?a=1");
    }

    #[test]
    fn rejects_invalid_entries() {
        for spec in [
            "",
            "/order",
            "order=http://o:1",
            "/order=not a url",
            "/order=https://o:1",
            "/order=http://o:1?x=1",
            "/order=http://o:1,/order/=http://o:2",
            "/healthz=http://o:1",
            "/o rder=http://o:1",
        ] {
            assert!(RouteTable::parse(spec).is_err(), "{spec:?} was accepted");
        }
    }
}
