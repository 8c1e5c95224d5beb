use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use axum::{Json, Router, body::to_bytes, extract::Request};
use gateway::{Application, GatewayConfig, routes::RouteTable};
use serde_json::{Value, json};

pub struct TestApp {
    /// `127.0.0.1:port` of the gateway.
    pub address: SocketAddr,
    pub client: reqwest::Client,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

/// The gateway with `routes` (a `GATEWAY_ROUTES` value) and defaults that suit tests.
pub async fn spawn_app(routes: &str) -> TestApp {
    spawn_app_with(routes, |_| {}).await
}

/// Like [`spawn_app`], with a chance to change the configuration first.
pub async fn spawn_app_with(routes: &str, configure: impl FnOnce(&mut GatewayConfig)) -> TestApp {
    let mut config = GatewayConfig {
        addr: "127.0.0.1:0".into(),
        routes: RouteTable::parse(routes).expect("test routes are valid"),
        upstream_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(2),
        max_body_bytes: 10 * 1024 * 1024,
    };
    configure(&mut config);
    let app = Application::build(config).await.expect("gateway builds");
    let address = app.local_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        address,
        client: test_client(),
    }
}

/// A client that neither follows redirects nor uses a proxy from the environment, so a test
/// sees exactly what the gateway answered.
pub fn test_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// Serves `router` on a free port for the rest of the test.
pub async fn spawn_upstream(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// An upstream that answers every request with what it received: method, path, query,
/// headers (repeated ones joined with ", ") and body.
pub async fn spawn_echo() -> SocketAddr {
    spawn_upstream(Router::new().fallback(echo)).await
}

async fn echo(request: Request) -> Json<Value> {
    let (parts, body) = request.into_parts();
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let body = to_bytes(body, usize::MAX).await.unwrap();
    Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// An address nothing listens on: bound, then released.
pub fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Asserts the project's error shape and returns `error.code`.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("error body is JSON");
    assert!(
        body["error"]["message"].is_string(),
        "not the project's error shape: {body}"
    );
    body["error"]["code"]
        .as_str()
        .expect("error.code is a string")
        .to_string()
}

/// `len` bytes that are not a short repeating pattern, so a dropped or reordered chunk shows.
pub fn test_bytes(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

/// Fails the test instead of hanging when something the test waits for never happens.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting: {what}"))
}
