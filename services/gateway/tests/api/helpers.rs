use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Bytes, to_bytes},
    extract::{Request, State},
    routing::get,
};
use common::admin::AdminAuth;
use gateway::{
    Application, GatewayConfig,
    internal::{DEFAULT_INTERNAL_PATHS, InternalPaths},
    routes::RouteTable,
    upstream::EjectionPolicy,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{Notify, oneshot},
    task::JoinHandle,
};

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
    let app = Application::build(test_config(routes, configure))
        .await
        .expect("gateway builds");
    let address = app.local_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    TestApp {
        address,
        client: test_client(),
    }
}

/// Like [`spawn_app_with`]; sending on the returned channel starts a graceful shutdown, and
/// the handle resolves when the gateway has stopped serving.
pub async fn spawn_stoppable_app(
    routes: &str,
    configure: impl FnOnce(&mut GatewayConfig),
) -> (TestApp, oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
    let app = Application::build(test_config(routes, configure))
        .await
        .expect("gateway builds");
    let address = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let app = TestApp {
        address,
        client: test_client(),
    };
    (app, stop, served)
}

/// The production defaults, except the address (port 0) and whatever `configure` changes.
fn test_config(routes: &str, configure: impl FnOnce(&mut GatewayConfig)) -> GatewayConfig {
    let mut config = GatewayConfig {
        addr: "127.0.0.1:0".into(),
        routes: RouteTable::parse(routes).expect("test routes are valid"),
        upstream_timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(2),
        max_body_bytes: 10 * 1024 * 1024,
        internal_paths: InternalPaths::parse(DEFAULT_INTERNAL_PATHS).unwrap(),
        ejection: EjectionPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(30),
        },
        admin: AdminAuth::off(),
    };
    configure(&mut config);
    config
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
    spawn_upstream_at("127.0.0.1:0".parse().unwrap(), router).await
}

/// Serves `router` on `addr` for the rest of the test.
pub async fn spawn_upstream_at(addr: SocketAddr, router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// An upstream whose `/slow` signals `arrived` when it has the request and answers
/// `finished` only once `release` is notified: a request the test can keep in flight.
pub struct HeldUpstream {
    pub addr: SocketAddr,
    pub arrived: Arc<Notify>,
    pub release: Arc<Notify>,
}

pub async fn spawn_held_upstream() -> HeldUpstream {
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (a, r) = (Arc::clone(&arrived), Arc::clone(&release));
    let router = Router::new().route(
        "/slow",
        get(move || async move {
            a.notify_one();
            r.notified().await;
            "finished"
        }),
    );
    HeldUpstream {
        addr: spawn_upstream(router).await,
        arrived,
        release,
    }
}

/// Resolves once nothing accepts connections on `addr` any more.
pub async fn wait_until_refused(addr: SocketAddr) {
    within("the listener to close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// An upstream that answers every request with what it received: method, path, query,
/// headers (repeated ones joined with ", ") and body.
pub async fn spawn_echo() -> SocketAddr {
    spawn_upstream(Router::new().fallback(echo)).await
}

pub async fn echo(request: Request) -> Json<Value> {
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

/// An echo upstream that also counts the requests it received.
pub async fn spawn_counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .fallback(
            |State(count): State<Arc<AtomicUsize>>, request: Request| async move {
                count.fetch_add(1, Ordering::SeqCst);
                echo(request).await
            },
        )
        .with_state(Arc::clone(&count));
    (spawn_upstream(router).await, count)
}

/// Sends `request_head` (request line and headers, no final blank line) as raw bytes, so a
/// path reaches the gateway exactly as written (reqwest would resolve `..` itself), and
/// returns the response status.
pub async fn raw_request_status(gateway: SocketAddr, request_head: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let request = format!("{request_head}\r\nhost: {gateway}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// An address nothing listens on (connections to it are refused).
pub fn dead_addr() -> SocketAddr {
    // Port 1 on a loopback address of its own: nothing listens there, and unlike a port
    // freed by a dropped listener, it is never handed out again to a test's live server.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(2);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SocketAddr::from(([127, (n >> 16) as u8, (n >> 8) as u8, n as u8], 1))
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

/// A large body made of one pseudo-random block repeated. The block's length is prime, so
/// no chunk size lines up with it: a lost, repeated or reordered chunk shifts the content
/// and shows. Both sides generate and check it on the fly, so a test holds no whole body.
#[derive(Clone)]
pub struct Pattern(Arc<Vec<u8>>);

impl Pattern {
    const BLOCK: usize = 1_048_573;

    pub fn new() -> Self {
        let mut state: u32 = 0x9e37_79b9;
        let block = (0..Self::BLOCK)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        Pattern(Arc::new(block))
    }

    /// The body's `total` bytes, `chunk` bytes at a time.
    pub fn chunks(&self, total: usize, chunk: usize) -> impl Iterator<Item = Bytes> + use<> {
        let block = Arc::clone(&self.0);
        (0..total).step_by(chunk).map(move |offset| {
            let len = chunk.min(total - offset);
            let mut out = Vec::with_capacity(len);
            let mut at = offset % Self::BLOCK;
            while out.len() < len {
                let take = (len - out.len()).min(Self::BLOCK - at);
                out.extend_from_slice(&block[at..at + take]);
                at = 0;
            }
            Bytes::from(out)
        })
    }

    pub fn checker(&self) -> PatternCheck {
        PatternCheck {
            block: Arc::clone(&self.0),
            received: 0,
            first_mismatch: None,
        }
    }
}

/// Checks a body against [`Pattern`] as it arrives, whatever the chunking.
pub struct PatternCheck {
    block: Arc<Vec<u8>>,
    pub received: usize,
    pub first_mismatch: Option<usize>,
}

impl PatternCheck {
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let at = self.received % Pattern::BLOCK;
            let take = bytes.len().min(Pattern::BLOCK - at);
            if self.first_mismatch.is_none() && bytes[..take] != self.block[at..at + take] {
                self.first_mismatch = Some(self.received);
            }
            self.received += take;
            bytes = &bytes[take..];
        }
    }
}

/// Fails the test instead of hanging when something the test waits for never happens.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting: {what}"))
}
