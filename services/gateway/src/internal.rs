//! Internal paths: the services' own health, admin and metrics endpoints, which clients of
//! the gateway must not reach.
//!
//! Why at the gateway: the services listen on a private network and trust it; the gateway is
//! the one door from outside, so it is where "outside may not call /admin" is enforced,
//! once, for every service. A blocked path is answered with the same 404 as a path without a
//! route, without contacting the upstream, so it reveals nothing.
//!
//! Why match generously: the check looks at the path the upstream will receive (prefix
//! stripped, dot segments resolved), percent-decoded, with empty segments dropped and ASCII
//! case ignored, so `/order//%41dmin/x` is as blocked as `/order/admin/x`. Blocking a path a
//! framework would not have routed costs nothing; missing one it would have routed is the
//! hole this exists to close.

/// `GATEWAY_INTERNAL_PATHS` when unset.
use std::borrow::Cow;

pub const DEFAULT_INTERNAL_PATHS: &str = "/healthz,/readyz,/admin,/internal,/metrics";

#[derive(Debug, Clone, Default)]
pub struct InternalPaths {
    /// Each path as its lower-cased segments.
    paths: Vec<Vec<Vec<u8>>>,
}

impl InternalPaths {
    /// Parses comma-separated paths, e.g. `/healthz,/admin`; empty means none.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut paths = Vec::new();
        for path in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if !path.starts_with('/') {
                return Err(format!("path {path:?} must start with /"));
            }
            if path
                .chars()
                .any(|c| c == '?' || c == '#' || c.is_whitespace())
            {
                return Err(format!("path {path:?} must be a plain path"));
            }
            let segments = segments(path);
            if segments.is_empty() {
                return Err(format!("path {path:?} would block every path"));
            }
            paths.push(segments);
        }
        Ok(InternalPaths { paths })
    }

    /// True when `upstream_path` (the path the upstream would receive, no query) is one of
    /// the internal paths or below one, on a segment boundary.
    pub fn blocks(&self, upstream_path: &str) -> bool {
        if self.paths.is_empty() {
            return false;
        }
        // As `segments`, compared in place: no allocation per segment on every request.
        // Most paths have nothing to decode: no copy for them.
        let bytes = upstream_path.as_bytes();
        let decoded = if bytes.contains(&b'%') {
            Cow::Owned(percent_decode(bytes))
        } else {
            Cow::Borrowed(bytes)
        };
        self.paths.iter().any(|internal| {
            let mut requested = decoded.split(|b| *b == b'/').filter(|s| !s.is_empty());
            internal.iter().all(|segment| {
                requested
                    .next()
                    .is_some_and(|r| r.eq_ignore_ascii_case(segment))
            })
        })
    }
}

/// `path` percent-decoded, split on `/`, empty segments dropped, ASCII lower-cased. Decoding
/// comes first so an encoded slash (`%2F`) splits too, as some servers treat it.
fn segments(path: &str) -> Vec<Vec<u8>> {
    percent_decode(path.as_bytes())
        .split(|b| *b == b'/')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_ascii_lowercase())
        .collect()
}

/// `%XX` with two hex digits becomes that byte; anything else is kept as it is.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_internal_paths_and_below_on_segment_boundaries() {
        let internal = InternalPaths::parse(DEFAULT_INTERNAL_PATHS).unwrap();
        for path in [
            "/healthz",
            "/readyz/",
            "/admin",
            "/admin/dead-messages",
            "/internal/x/y",
            "/metrics",
            "//admin",
            "/Admin",
            "/%61dmin/x",
            "/%2Fmetrics",
        ] {
            assert!(internal.blocks(path), "{path} was not blocked");
        }
        for path in [
            "/",
            "/buy",
            "/administrators",
            "/orders/healthz",
            "/%zzadmin",
        ] {
            assert!(!internal.blocks(path), "{path} was blocked");
        }
    }

    #[test]
    fn nested_paths_and_an_empty_list() {
        let internal = InternalPaths::parse(" /accounts/admin/ ,").unwrap();
        assert!(internal.blocks("/accounts/admin/x"));
        assert!(!internal.blocks("/accounts/alice"));
        assert!(!internal.blocks("/admin"));

        let none = InternalPaths::parse("").unwrap();
        assert!(!none.blocks("/healthz"));
    }

    #[test]
    fn rejects_invalid_paths() {
        for spec in ["admin", "/", "//", "/a?b", "/a b"] {
            assert!(InternalPaths::parse(spec).is_err(), "{spec:?} was accepted");
        }
    }
}
