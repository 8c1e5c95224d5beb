//! Test support (a dev-dependency only): real PostgreSQL and RabbitMQ, isolated per test.
//!
//! - [`TestDb`]: a fresh database per test, migrated, dropped afterwards.
//! - [`test_amqp`]: a unique exchange per test (queues get unique names from
//!   [`unique_name`]), removed by the broker when unused.
//! - [`TcpProxy`]: stands between a service and the broker or database so a test can
//!   cut the connection ("broker down") without stopping the shared server that other
//!   tests use in parallel.
//! - [`spawn_order`], [`spawn_pay`]: a service in the test's process, on port 0, ready;
//!   [`ServiceProcess`]: a service binary as a child process (to kill it).
//! - [`eventually`]: wait for a condition with a deadline instead of sleeping.
//! - [`metrics`]: parse a `/metrics` answer and read one sample.
//! - [`takeover`]: kill a service while its relay holds a window, and read each order's
//!   commit-to-payment delay.

pub mod metrics;
pub mod openapi;
mod services;
pub mod takeover;

pub use services::{Instance, service_config, spawn_order, spawn_order_with_reconciler, spawn_pay};

use std::{future::Future, net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    AssertSqlSafe, ConnectOptions, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Mutex,
};
use tokio_util::sync::CancellationToken;

use common::config::env_string;
use message_table::{
    amqp::AmqpConfig, backoff::RetryPolicy, inbox::InboxConfig, outbox::OutboxConfig,
    retention::RetentionConfig,
};
use service_kit::service::MessagingConfig;

/// A throw-away name: `prefix-<12 hex>`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The server where per-test databases are created.
const TEST_DATABASE_URL: (&str, &str) = (
    "TEST_DATABASE_URL",
    "postgres://postgres@127.0.0.1:5432/postgres",
);
/// The broker of the tests.
const TEST_AMQP_URL: (&str, &str) = ("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");

/// The `ADMIN_TOKEN` of the services the tests build ([`admin`]).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The admin API on, with [`ADMIN_TOKEN`]: what a test's `ServiceConfig` gets.
pub fn admin() -> common::admin::AdminAuth {
    common::admin::AdminAuth::parse(ADMIN_TOKEN).expect("a valid admin token")
}

/// `Authorization: Bearer <ADMIN_TOKEN>`, for requests to the admin API.
pub fn admin_bearer() -> String {
    format!("Bearer {ADMIN_TOKEN}")
}

/// The variables the tests read, with their defaults (docs/configuration.md lists them).
pub const VARIABLES: [(&str, &str); 2] = [TEST_DATABASE_URL, TEST_AMQP_URL];

fn admin_url() -> String {
    env_string(TEST_DATABASE_URL.0, TEST_DATABASE_URL.1)
}

pub fn amqp_url() -> String {
    env_string(TEST_AMQP_URL.0, TEST_AMQP_URL.1)
}

/// A unique exchange on the local broker; queues declared by tests expire when unused.
pub fn test_amqp() -> AmqpConfig {
    AmqpConfig {
        url: amqp_url(),
        exchange: unique_name("test.events"),
        queue_type: message_table::amqp::QueueType::Quorum,
        delivery_limit: 20,
        queue_expires: Some(Duration::from_secs(120)),
        exchange_auto_delete: true,
        // Production doubles up to 5 s; tests recover within a second of the broker's return.
        reconnect: RetryPolicy {
            base: Duration::from_millis(200),
            max: Duration::from_secs(1),
            max_attempts: i32::MAX,
        },
    }
}

/// A fresh, migrated database, dropped when this value is dropped.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    name: String,
}

impl TestDb {
    /// A database with the message tables and the service's own tables (`migrator`).
    pub async fn new(migrator: &Migrator) -> Self {
        let db = Self::with_message_tables().await;
        migrator.run(&db.pool).await.expect("migrate test database");
        db
    }

    /// A database with the message tables only (the mechanism's own tests).
    pub async fn with_message_tables() -> Self {
        let name = unique_name("lmt_test").replace('-', "_");
        let admin = PgConnectOptions::from_str(&admin_url()).expect("TEST_DATABASE_URL");
        let mut conn = admin
            .connect()
            .await
            .expect("connect to PostgreSQL for tests");
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let opts = admin.clone().database(&name);
        let url = opts.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .expect("connect to test database");
        message_table::migrate(&pool)
            .await
            .expect("create the message tables");
        TestDb { pool, url, name }
    }

    /// Terminates every session on this database (the services' pools, listeners and the
    /// test's own pool), as `pg_terminate_backend` by an operator or a failover would.
    /// Returns how many were terminated.
    pub async fn terminate_connections(&self) -> i64 {
        let admin = PgConnectOptions::from_str(&admin_url()).expect("TEST_DATABASE_URL");
        let mut conn = admin.connect().await.expect("connect to PostgreSQL");
        sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_one(&mut conn)
        .await
        .expect("terminate connections")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the cleanup. The
        // pool is not closed first: the app under test may still hold connections on the
        // runtime this drop is blocking. FORCE terminates them instead.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                let admin = PgConnectOptions::from_str(&admin_url()).ok()?;
                let mut conn = admin.connect().await.ok()?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` naming
/// what was awaited. Tests wait for outcomes, never for a fixed time.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP forwarder that can be switched off: every open connection is cut and new ones
/// are refused (accepted and closed at once) until it is switched on again.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
    task: CancellationToken,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
}

struct ProxyState {
    enabled: bool,
    connections: CancellationToken,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ProxyState {
            enabled: true,
            connections: CancellationToken::new(),
        }));
        let task = CancellationToken::new();
        let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (st, stop, counter) = (state.clone(), task.clone(), attempts.clone());
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    _ = stop.cancelled() => return,
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let guard = st.lock().await;
                if !guard.enabled {
                    continue; // dropping `inbound` closes it: connection refused, in effect
                }
                let cut = guard.connections.clone();
                drop(guard);
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.cancelled() => {}
                    }
                });
            }
        });
        TcpProxy {
            addr,
            state,
            task,
            attempts,
        }
    }

    /// Connections attempted through the proxy so far, refused ones included.
    pub fn connection_attempts(&self) -> usize {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every connection through the proxy and refuses new ones.
    pub async fn disable(&self) {
        let mut s = self.state.lock().await;
        s.enabled = false;
        s.connections.cancel();
        s.connections = CancellationToken::new();
    }

    pub async fn enable(&self) {
        self.state.lock().await.enabled = true;
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.cancel();
    }
}

/// `scheme://user:pass@HOST:PORT/path?query` → (`scheme://user:pass@`, `HOST:PORT`,
/// `/path?query`).
fn split_url(url: &str) -> (&str, &str, &str) {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let start = url.rfind('@').map(|i| i + 1).unwrap_or(after_scheme);
    let end = url[start..]
        .find('/')
        .map(|i| start + i)
        .unwrap_or(url.len());
    (&url[..start], &url[start..end], &url[end..])
}

/// An AMQP config whose connections go through `proxy` instead of straight to the broker
/// (same credentials and vhost).
pub fn through_proxy(cfg: &AmqpConfig, proxy: &TcpProxy) -> AmqpConfig {
    AmqpConfig {
        url: url_through_proxy(&cfg.url, proxy),
        ..cfg.clone()
    }
}

/// `url` (AMQP or PostgreSQL) with its `host:port` replaced by the proxy's address;
/// credentials, path and query are kept.
pub fn url_through_proxy(url: &str, proxy: &TcpProxy) -> String {
    let (before, _, after) = split_url(url);
    format!("{before}{}{after}", proxy.addr())
}

/// The PostgreSQL server's address (from `TEST_DATABASE_URL`), for [`TcpProxy::start`].
pub fn database_addr() -> SocketAddr {
    socket_addr(&admin_url(), "TEST_DATABASE_URL")
}

/// The local broker's address, for [`TcpProxy::start`].
pub fn broker_addr() -> SocketAddr {
    socket_addr(&amqp_url(), "TEST_AMQP_URL")
}

fn socket_addr(url: &str, var: &str) -> SocketAddr {
    let (_, host_port, _) = split_url(url);
    host_port
        .parse()
        .unwrap_or_else(|_| panic!("{var} must name the server as IP:port, got {host_port:?}"))
}

/// Outbox settings for tests: short polls and backoffs, so retries happen within a test.
pub fn fast_outbox() -> OutboxConfig {
    OutboxConfig {
        batch_size: 100,
        relays: 2,
        lease: Duration::from_secs(30),
        confirm_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(100),
        message_ttl: Duration::from_secs(3600),
        retry: RetryPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(200),
            max_attempts: 5,
        },
        retention: Duration::from_secs(7 * 24 * 3600),
    }
}

/// Inbox settings for tests, likewise.
pub fn fast_inbox() -> InboxConfig {
    InboxConfig {
        prefetch: 16,
        batch_size: 16,
        retry: RetryPolicy {
            base: Duration::from_millis(10),
            max: Duration::from_millis(200),
            max_attempts: 5,
        },
        poll_interval: Duration::from_millis(50),
        max_body_bytes: 1 << 20,
        retention: Duration::from_secs(7 * 24 * 3600),
    }
}

/// A service's messaging settings on `amqp`, with a unique queue.
pub fn messaging(amqp: &AmqpConfig, queue_prefix: &str, routing_keys: &[&str]) -> MessagingConfig {
    MessagingConfig {
        amqp: amqp.clone(),
        outbox: fast_outbox(),
        inbox: fast_inbox(),
        queue: unique_name(queue_prefix),
        routing_keys: routing_keys.iter().map(|s| s.to_string()).collect(),
        retention: RetentionConfig {
            interval: Duration::from_secs(600),
            batch_size: 1_000,
        },
        demo_faults: false,
        management_url: None,
    }
}

/// How long a test waits for a service to be ready, or for a broker connection. The broker is
/// shared by every test binary and, under a full run's queue churn, has stopped answering for
/// most of a minute (50 s seen in CI); the services retry and become ready after it, and a
/// test must wait for that rather than fail on it.
pub const READY_WITHIN: Duration = Duration::from_secs(90);

/// A queue bound to the test exchange, read with `basic_get` so a test sees exactly what
/// the broker holds.
pub struct TestQueue {
    _conn: lapin::Connection,
    channel: lapin::Channel,
    pub name: String,
}

impl TestQueue {
    pub async fn bind(amqp: &AmqpConfig, routing_keys: &[&str]) -> Self {
        let conn = eventually("a connection to RabbitMQ", READY_WITHIN, || async {
            message_table::amqp::connect(amqp, "test-queue").await.ok()
        })
        .await;
        let channel = conn.create_channel().await.expect("channel");
        let name = unique_name("test.q");
        message_table::amqp::declare_queue(&channel, amqp, &name, routing_keys)
            .await
            .expect("declare test queue");
        TestQueue {
            _conn: conn,
            channel,
            name,
        }
    }

    /// Declares another queue bound to `routing_keys`, as a service would declare it.
    pub async fn declare(&self, amqp: &AmqpConfig, queue: &str, routing_keys: &[&str]) {
        message_table::amqp::declare_queue(&self.channel, amqp, queue, routing_keys)
            .await
            .expect("declare queue");
    }

    /// Every message now in the queue, acked.
    pub async fn take_all(&self) -> Vec<lapin::message::Delivery> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(
                lapin::types::ShortString::from(self.name.as_str()),
                Default::default(),
            )
            .await
            .expect("basic_get")
        {
            msg.delivery
                .acker
                .ack(Default::default())
                .await
                .expect("ack");
            out.push(msg.delivery);
        }
        out
    }

    /// Messages ready in `queue` (not counting deliveries a consumer holds unacked).
    pub async fn ready_count(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                lapin::types::ShortString::from(queue),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
    }

    /// Publishes raw bytes with the given properties (for poison and duplicate tests).
    /// Takes messages as they arrive until `done` holds for all taken so far; panics after
    /// `timeout` naming `what`.
    pub async fn take_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[lapin::message::Delivery]) -> bool,
    ) -> Vec<lapin::message::Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut taken = Vec::new();
        loop {
            taken.extend(self.take_all().await);
            if done(&taken) {
                return taken;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for: {what} ({} messages taken)",
                    taken.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Deletes `queue` (gone already is fine): for queues declared without an expiry.
    pub async fn delete_queue(&self, queue: &str) {
        let _ = self
            .channel
            .queue_delete(queue.into(), Default::default())
            .await;
    }

    /// Deletes the exchange: for tests whose services (real binaries) declare a durable
    /// exchange that the broker would otherwise keep.
    pub async fn delete_exchange(&self, amqp: &AmqpConfig) {
        self.channel
            .exchange_delete(
                lapin::types::ShortString::from(amqp.exchange.as_str()),
                Default::default(),
            )
            .await
            .expect("exchange.delete");
        // Its dead-letter exchange, declared with quorum queues (none with classic ones: the
        // error then closes this channel, last).
        let _ = self
            .channel
            .exchange_delete(
                lapin::types::ShortString::from(
                    message_table::amqp::dead_letter_exchange(amqp).as_str(),
                ),
                Default::default(),
            )
            .await;
    }

    pub async fn publish(
        &self,
        amqp: &AmqpConfig,
        routing_key: &str,
        properties: lapin::BasicProperties,
        body: &[u8],
    ) {
        self.channel
            .basic_publish(
                lapin::types::ShortString::from(amqp.exchange.as_str()),
                lapin::types::ShortString::from(routing_key),
                Default::default(),
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }
}

/// The path of a service's own binary (`order`, `pay` or `gateway`), for a test or a tool
/// that runs it as a process. Cargo names only a package's own binaries to its tests
/// (`CARGO_BIN_EXE_*`), so this looks where cargo puts every binary of a build: the
/// `target/<profile>/` directory of the running executable (a test runs from its `deps/`
/// subdirectory). `cargo test --workspace` builds the services' binaries in the same run
/// (they have tests of their own), and so does `cargo build -p order -p pay -p gateway`; a
/// test run of one package alone uses the binaries built last.
pub fn service_binary(name: &str) -> String {
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent().expect("the executable's directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target/<profile>/");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the services first (cargo build -p order -p pay -p gateway)",
        path.display()
    );
    path.display().to_string()
}

/// A service binary run as a child process, so a test can SIGKILL it at any moment and start
/// it again on the same port, exactly as a crash and a restart. Its log goes to a file in
/// the temp directory (the path is printed; the test harness shows it on failure).
pub struct ServiceProcess {
    bin: std::path::PathBuf,
    env: Vec<(String, String)>,
    child: Option<tokio::process::Child>,
    log: std::path::PathBuf,
    /// `http://127.0.0.1:<port>`
    pub base: String,
}

impl ServiceProcess {
    /// Starts `bin` with `env` plus `<addr_var>=127.0.0.1:<free port>`, and waits until its
    /// `/readyz` answers 200.
    pub async fn start(bin: &str, addr_var: &str, env: &[(&str, String)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        env.push((addr_var.to_string(), format!("127.0.0.1:{port}")));
        env.push(("NO_COLOR".into(), "1".into()));
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("lmt-service")));
        println!("{bin} logs to {}", log.display());
        let mut process = ServiceProcess {
            bin: bin.into(),
            env,
            child: None,
            log,
            base: format!("http://127.0.0.1:{port}"),
        };
        process.restart().await;
        process
    }

    /// Starts the process again (same port, same environment) and waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the process is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the log file");
        let child = tokio::process::Command::new(&self.bin)
            .envs(self.env.iter().cloned())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the service binary");
        self.child = Some(child);
        let url = format!("{}/readyz", self.base);
        eventually(
            &format!("{} is ready", self.bin.display()),
            READY_WITHIN,
            || async {
                let res = http_status(&url).await?;
                (res == 200).then_some(())
            },
        )
        .await;
    }

    /// SIGTERM, as an orchestrator stops a container; returns how the process exited.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the process is running");
        let pid = child.id().expect("a pid").to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the process exits within 30 s of SIGTERM")
            .expect("wait for the process")
    }

    /// The running process's id (for `/proc/<pid>/status`), `None` once it was stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// What the process logged so far (stdout and stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).expect("read the log file")
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the running process, as `kill -<signal>`.
    pub async fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the process is running").to_string();
        let sent = tokio::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid} failed");
    }

    /// SIGKILL: no shutdown code runs, connections are dropped by the kernel.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("the process is running");
        child.kill().await.expect("SIGKILL");
    }
}

/// The status of `GET url`, or `None` when nothing answers.
async fn http_status(url: &str) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    Some(client.get(url).send().await.ok()?.status().as_u16())
}

/// Has RabbitMQ itself close the connection of link `name` (as `rabbitmqctl close_connection`
/// does for an operator, or the broker on a node restart), with an AMQP `connection.close`
/// rather than a cut socket. Waits until the connection shows up first; needs `rabbitmqctl`
/// (the broker runs on this machine). Returns how many connections were closed.
pub async fn broker_closes_connection(name: &str) -> usize {
    let pids = eventually(
        &format!("RabbitMQ lists connection {name}"),
        Duration::from_secs(20),
        || async {
            let text = rabbitmqctl(&[
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "client_properties",
            ])
            .await;
            // The name a client gives its connection is in its client properties, with the
            // node it connected to: `<name>@<host:port>`.
            let wanted = format!("{{\"connection_name\",\"{name}@");
            let pids: Vec<String> = text
                .lines()
                .filter(|l| l.contains(&wanted))
                .filter_map(|l| l.split_once('\t'))
                .map(|(pid, _)| pid.trim().to_string())
                .collect();
            (!pids.is_empty()).then_some(pids)
        },
    )
    .await;
    for pid in &pids {
        rabbitmqctl(&["close_connection", pid, "closed by a test"]).await;
    }
    pids.len()
}

/// `rabbitmqctl ARGS` (the broker runs on this machine): its output; panics when it fails.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("run rabbitmqctl (RabbitMQ must run on this machine)");
    assert!(
        out.status.success(),
        "rabbitmqctl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
