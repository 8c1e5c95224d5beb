//! The dashboard at `GET /`: a page that places orders and shows the local message table at
//! work (each order's story, both services' outbox and inbox, dead messages, the teaching
//! switches), for learners who would rather look than read SQL.
//!
//! # Why in the gateway, and why so plain
//! The gateway is the one door from outside, so the page needs no server of its own and no
//! database: it calls the gateway's existing routes (`/order/...`, `/pay/...`, and with the
//! operator's token `/admin/<route>/...`) and joins what each service says about its own
//! rows. Its files (HTML, CSS, JavaScript modules, no framework, no build step) are compiled
//! into the binary, so a deployed gateway serves the page it was built with and nothing is
//! loaded from elsewhere (the Content-Security-Policy says so to the browser too).
//!
//! # Which wins, the page or a catch-all route `/`
//! The page: `GET /` (and `HEAD`) and `/dashboard/*` are the gateway's own, like
//! `/healthz`, so a route may not have the prefix `/dashboard` ([`crate::routes`]). Every
//! other method on `/`, and every other path, still goes to the route table, so a
//! catch-all route `/` gets `POST /` and `/anything`.

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::proxy::{self, Proxy};

/// The page's files: path under `/dashboard/`, content type, content.
const ASSETS: [(&str, &str, &str); 7] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/app.js"),
    ),
    (
        "i18n.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/i18n.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../dashboard/style.css"),
    ),
    // The Markdown renderer of "Explain", vendored unchanged from npm (`marked`, MIT): no
    // CDN, so the page works offline and the Content-Security-Policy stays 'self'.
    (
        "vendor/marked.esm.js",
        "text/javascript; charset=utf-8",
        include_str!("../dashboard/vendor/marked.esm.js"),
    ),
    (
        "vendor/marked.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("../dashboard/vendor/marked.LICENSE"),
    ),
    // Each teaching switch links to its scenario's explanation; the page renders the section,
    // in the reader's language. Plain text, so a browser shows the file rather than download it.
    (
        "scenarios.md",
        "text/plain; charset=utf-8",
        include_str!("../../../docs/scenarios.md"),
    ),
    (
        "scenarios.zh-CN.md",
        "text/plain; charset=utf-8",
        include_str!("../../../docs/zh-CN/scenarios.md"),
    ),
];

const INDEX: &str = include_str!("../dashboard/index.html");

/// Only the page's own files and calls to the gateway itself; no inline script.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `GET /` and the page's files; `/` with another method is forwarded like any request.
pub fn routes() -> Router<Arc<Proxy>> {
    let mut router = Router::new().route(
        "/",
        get(|| async { page("text/html; charset=utf-8", INDEX) }).fallback(proxy::forward),
    );
    for (name, content_type, body) in ASSETS {
        router = router.route(
            &format!("/dashboard/{name}"),
            get(move || async move { page(content_type, body) }),
        );
    }
    router
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        // Small files, and a rebuilt gateway must not be hidden behind a cached page.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ),
    ];
    (StatusCode::OK, headers, body).into_response()
}
