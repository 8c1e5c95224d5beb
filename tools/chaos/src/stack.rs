//! The instances as child processes of this one, so that their exit status is ours to read:
//! started on fixed ports with their logs appended to `<run dir>/<name>.log`, stopped with
//! SIGTERM (SIGKILL after a deadline) or killed with SIGKILL, waited for on `/readyz`.
//! A problem (an instance that died on its own, a stop that was not clean, an instance not
//! ready in time) is recorded here and reported as a check at the end.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

use crate::{AnyResult, args::Instance};

/// The instances in start order: pay first (its queue must exist for orders to be
/// routable), the gateway last.
pub const INSTANCES: [&str; 5] = ["pay1", "pay2", "order1", "order2", "gateway"];
/// The order of a rolling restart and of the final stop.
pub const ROLLING: [&str; 5] = ["order1", "order2", "pay1", "pay2", "gateway"];

struct Process {
    name: &'static str,
    port: u16,
    child: Option<Child>,
}

pub struct Stack {
    processes: Vec<Process>,
    /// Where `order`, `pay` and `gateway` are.
    bin_dir: PathBuf,
    run_dir: PathBuf,
    /// The variables every instance gets (databases, broker, pools, admin token).
    env: Vec<(String, String)>,
    gateway_multi: bool,
    ready_within: Duration,
    stop_within: Duration,
    http: reqwest::Client,
    /// What the fault being injected is called, for the problems recorded meanwhile.
    pub current: String,
    pub unexpected_exits: Vec<String>,
    pub unclean_stops: Vec<String>,
    pub not_ready: Vec<String>,
}

/// `order` for `order2`.
fn service(name: &str) -> &str {
    crate::args::service_of(name)
}

/// An exit status as a shell reports it: the code, or 128 + the signal.
pub fn status_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

pub struct StackSettings {
    pub bin_dir: PathBuf,
    pub run_dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub port_base: u16,
    pub gateway_multi: bool,
    pub ready_within: Duration,
    pub stop_within: Duration,
}

impl Stack {
    pub fn new(s: StackSettings) -> AnyResult<Self> {
        let port = |name: &str| match name {
            "pay1" => 2,
            "order1" => 3,
            "order2" => 4,
            "pay2" => 5,
            _ => 9,
        };
        Ok(Self {
            processes: INSTANCES
                .iter()
                .map(|&name| Process {
                    name,
                    port: s.port_base + port(name),
                    child: None,
                })
                .collect(),
            bin_dir: s.bin_dir,
            run_dir: s.run_dir,
            env: s.env,
            gateway_multi: s.gateway_multi,
            ready_within: s.ready_within,
            stop_within: s.stop_within,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?,
            current: "start-up".into(),
            unexpected_exits: Vec::new(),
            unclean_stops: Vec::new(),
            not_ready: Vec::new(),
        })
    }

    fn process(&mut self, name: &str) -> &mut Process {
        self.processes
            .iter_mut()
            .find(|p| p.name == name)
            .expect("one of INSTANCES")
    }

    pub fn port(&self, name: &str) -> u16 {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .expect("one of INSTANCES")
            .port
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(name))
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.log"))
    }

    /// The one place that knows the gateway's route syntax: a bare URL entry adds an
    /// instance to the preceding route, and the gateway spreads the load over the instances.
    pub fn gateway_routes(&self) -> String {
        let u = |n| self.url(n);
        if self.gateway_multi {
            format!(
                "/order={},{},/pay={},{}",
                u("order1"),
                u("order2"),
                u("pay1"),
                u("pay2")
            )
        } else {
            format!("/order={},/pay={}", u("order1"), u("pay1"))
        }
    }

    /// Where the driver POSTs (`<base>/buy`), round robin; a retry goes to the next one.
    pub fn driver_targets(&self) -> Vec<String> {
        let gateway = format!("{}/order", self.url("gateway"));
        if self.gateway_multi {
            vec![gateway]
        } else {
            vec![gateway, self.url("order2")]
        }
    }

    /// The order and pay instances, for the checks.
    pub fn instances(&self) -> Vec<Instance> {
        INSTANCES
            .iter()
            .filter(|&&n| n != "gateway")
            .map(|&n| Instance {
                name: n.into(),
                url: self.url(n),
            })
            .collect()
    }

    /// The ports of the instances already taken by something else.
    pub fn ports_in_use(&self) -> Vec<String> {
        self.processes
            .iter()
            .filter(|p| std::net::TcpListener::bind(("127.0.0.1", p.port)).is_err())
            .map(|p| format!("port {} ({})", p.port, p.name))
            .collect()
    }

    pub fn start(&mut self, name: &str) -> AnyResult<()> {
        let svc = service(name).to_string();
        let addr = format!("127.0.0.1:{}", self.port(name));
        let log_path = self.log_path(name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        writeln!(
            log,
            "----- {}: starting {name} on {addr} -----",
            chrono::Local::now().format("%Y-%m-%d %H:%M:%S")
        )?;
        let mut cmd = Command::new(self.bin_dir.join(&svc));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(format!("{}_ADDR", svc.to_uppercase()), &addr)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if svc == "gateway" {
            cmd.env("GATEWAY_ROUTES", self.gateway_routes());
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin_dir.join(&svc).display()))?;
        self.process(name).child = Some(child);
        Ok(())
    }

    fn pid(&mut self, name: &str) -> String {
        self.process(name)
            .child
            .as_ref()
            .and_then(Child::id)
            .map_or("?".into(), |p| p.to_string())
    }

    /// The instance's process has exited (or was never started): its status, reaped.
    fn exited(&mut self, name: &str) -> Option<ExitStatus> {
        let child = self.process(name).child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// SIGKILL and reap: the exit status.
    pub async fn kill(&mut self, name: &str) -> i32 {
        let Some(mut child) = self.process(name).child.take() else {
            return -1;
        };
        let _ = child.start_kill();
        child.wait().await.map_or(-1, status_code)
    }

    /// SIGTERM, then wait for the exit (SIGKILL after the stop deadline); a stop that was
    /// not clean (the deadline, an exit status other than 0) is recorded.
    pub async fn stop(&mut self, name: &str) {
        let pid = self.pid(name);
        let Some(mut child) = self.process(name).child.take() else {
            return;
        };
        let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
        match tokio::time::timeout(self.stop_within, child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => self.unclean_stops.push(format!(
                "{name} (pid {pid}) exited with status {} after SIGTERM",
                status_code(status)
            )),
            Ok(Err(e)) => self
                .unclean_stops
                .push(format!("{name} (pid {pid}): cannot wait for it: {e}")),
            Err(_) => {
                let _ = child.kill().await;
                self.unclean_stops.push(format!(
                    "{name} (pid {pid}) still running {} s after SIGTERM",
                    self.stop_within.as_secs()
                ));
            }
        }
    }

    /// Stops whatever still runs: SIGTERM to all, 20 s, then SIGKILL (the end of an aborted
    /// run; nothing is recorded).
    pub async fn stop_all(&mut self) {
        let running: Vec<String> = self
            .processes
            .iter()
            .filter_map(|p| Some(p.child.as_ref()?.id()?.to_string()))
            .collect();
        if !running.is_empty() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .args(&running)
                .status()
                .await;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for p in &mut self.processes {
            if let Some(mut child) = p.child.take()
                && tokio::time::timeout_at(deadline.into(), child.wait())
                    .await
                    .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    async fn ready(&self, name: &str) -> bool {
        let url = format!("{}/readyz", self.url(name));
        matches!(self.http.get(&url).send().await, Ok(r) if r.status() == 200)
    }

    /// Every one of `names` answers `/readyz` 200 within the ready deadline; records those
    /// that do not (with what their `/readyz` said last).
    pub async fn wait_ready(&mut self, names: &[&str]) -> bool {
        let deadline = Instant::now() + self.ready_within;
        loop {
            let mut pending = Vec::new();
            for &name in names {
                if !self.ready(name).await {
                    pending.push(name);
                }
            }
            if pending.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                for name in pending {
                    let url = format!("{}/readyz", self.url(name));
                    let said = match self.http.get(&url).send().await {
                        Ok(r) => r.text().await.unwrap_or_default(),
                        Err(_) => "no answer".into(),
                    };
                    self.not_ready
                        .push(format!("{name} after {}: {said}", self.current));
                }
                return false;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An instance that died without being told is a failure; it is started again.
    pub async fn check_alive(&mut self) -> AnyResult<()> {
        for name in INSTANCES {
            let running = self.process(name).child.is_some();
            let status = self.exited(name);
            if running && status.is_none() {
                continue;
            }
            let pid = self.pid(name);
            self.process(name).child = None;
            self.unexpected_exits.push(format!(
                "{name} (pid {pid}) exited with status {} before {}",
                status.map_or(-1, status_code),
                self.current
            ));
            self.start(name)?;
            self.wait_ready(&[name]).await;
        }
        Ok(())
    }

    /// The instances whose log says one of its threads panicked.
    pub fn panicked(&self) -> Vec<&'static str> {
        INSTANCES
            .into_iter()
            .filter(|n| {
                std::fs::read_to_string(self.log_path(n)).is_ok_and(|t| t.contains("panicked at"))
            })
            .collect()
    }
}

/// The last 30 lines of each log (instances, then the driver's), for a failed run.
pub fn print_logs(run_dir: &Path) {
    for name in INSTANCES.iter().chain(&["driver"]) {
        print_tail(&run_dir.join(format!("{name}.log")), 30);
    }
    println!("-----");
}

fn print_tail(path: &Path, lines: usize) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    println!("----- last {lines} lines of {} -----", path.display());
    let all: Vec<&str> = text.lines().collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        println!("{line}");
    }
}
