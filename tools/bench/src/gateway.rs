//! The gateway's cost: the same `GET /orders/{id}` at the same concurrency straight to order,
//! through the gateway, and (when nginx is installed) through nginx with one worker and
//! keepalive upstreams as a reference, in alternating rounds so that none always gets the
//! warmer or the quieter machine.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use futures::StreamExt;

use crate::{
    generator::Writer,
    stack::{Stack, System},
    stats,
};

/// One way in, its rates per round and its latencies over all rounds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Way {
    pub name: String,
    pub rates: Vec<f64>,
    pub p99_ms: Vec<f64>,
    pub median_rate: f64,
    pub median_p99_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Overhead {
    pub requests: usize,
    pub concurrency: usize,
    pub rounds: usize,
    pub ways: Vec<Way>,
    /// The load generator's CPU over the whole section, as a share of one core.
    pub cpu_share_of_one_core: f64,
}

impl Overhead {
    pub fn way(&self, name: &str) -> Option<&Way> {
        self.ways.iter().find(|p| p.name == name)
    }
}

/// `rounds` rounds of `requests` GETs at `concurrency` through each way in.
pub async fn overhead(rounds: usize, requests: usize, concurrency: usize, dir: &Path) -> Overhead {
    let mut stack = Stack::running(System::This).await;
    stack.start_gateway().await;
    let writer = Writer::http(stack.order_url());
    writer.write(0).await;
    let order_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM orders LIMIT 1")
        .fetch_one(&stack.order_db.pool)
        .await
        .expect("the order");
    let nginx = Nginx::start(dir, stack.order_url()).await;
    let mut ways = vec![
        ("direct", format!("{}/orders/{order_id}", stack.order_url())),
        (
            "gateway",
            format!("{}/order/orders/{order_id}", stack.gateway_url()),
        ),
    ];
    if let Some(nginx) = &nginx {
        ways.push(("nginx", format!("{}/order/orders/{order_id}", nginx.base)));
    }
    let http = reqwest::Client::new();
    for (_, url) in &ways {
        load(&http, url, requests / 10, concurrency).await; // warm the connection pools
    }
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); ways.len()];
    let (cpu, started) = (stats::own_cpu(), Instant::now());
    for round in 0..rounds {
        // Rotate which way goes first.
        for k in 0..ways.len() {
            let i = (round + k) % ways.len();
            let (rate, ms) = load(&http, &ways[i].1, requests, concurrency).await;
            samples[i].0.push(rate);
            samples[i].1.push(stats::percentile(&ms, 99.0));
            eprintln!(
                "    [gateway, round {}/{rounds}] {:<8} {rate:>7.0} req/s, p99 {:.2} ms",
                round + 1,
                ways[i].0,
                stats::percentile(&ms, 99.0)
            );
        }
    }
    let cpu_share_of_one_core =
        (stats::own_cpu() - cpu).as_secs_f64() / started.elapsed().as_secs_f64();
    drop(nginx);
    stack.finish().await;
    let measured = ways
        .iter()
        .zip(samples)
        .map(|((name, _), (rates, p99_ms))| Way {
            name: name.to_string(),
            median_rate: stats::median(&rates),
            median_p99_ms: stats::median(&p99_ms),
            rates,
            p99_ms,
        })
        .collect();
    Overhead {
        requests,
        concurrency,
        rounds,
        ways: measured,
        cpu_share_of_one_core,
    }
}

/// `requests` GETs of `url` at `concurrency`: requests per second and each latency in ms.
async fn load(
    http: &reqwest::Client,
    url: &str,
    requests: usize,
    concurrency: usize,
) -> (f64, Vec<f64>) {
    let started = Instant::now();
    let ms: Vec<f64> = futures::stream::iter(0..requests)
        .map(|_| async {
            let t = Instant::now();
            let res = http.get(url).send().await.expect("GET");
            assert_eq!(res.status(), reqwest::StatusCode::OK, "GET {url}");
            res.bytes().await.expect("body");
            t.elapsed().as_secs_f64() * 1e3
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    (requests as f64 / started.elapsed().as_secs_f64(), ms)
}

/// nginx in front of order: one worker, keepalive connections to the upstream, no access
/// log; stopped when dropped. `None` when nginx is not installed.
struct Nginx {
    base: String,
    _child: tokio::process::Child,
}

impl Nginx {
    async fn start(dir: &Path, upstream: &str) -> Option<Self> {
        let nginx = which("nginx")?;
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(&prefix).ok()?;
        // nginx reads relative paths against its prefix: give it absolute ones.
        let prefix = prefix.canonicalize().ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let upstream = upstream.trim_start_matches("http://");
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config(&prefix, port, upstream)).ok()?;
        let child = tokio::process::Command::new(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let base = format!("http://127.0.0.1:{port}");
        let ready = format!("{base}/order/healthz");
        for _ in 0..100 {
            if reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Some(Nginx {
                    base,
                    _child: child,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "    nginx did not answer; see {}",
            prefix.join("error.log").display()
        );
        None
    }
}

fn config(prefix: &Path, port: u16, upstream: &str) -> String {
    let p = prefix.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {p}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    upstream order {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location /order/ {{
            proxy_pass http://order/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    )
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}
