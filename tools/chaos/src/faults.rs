//! The faults. Each is appended to the run's `faults.txt` as `START_MS END_MS KIND DETAIL`,
//! END being when the fault's action is over (the process restarted, the broker's app
//! started), before readiness.
//!
//! The broker restart stops RabbitMQ's app node-wide. [`BrokerStopped`] starts it again
//! whatever happens: when the restart goes through, when it fails half-way, when the run is
//! interrupted (SIGINT or SIGTERM drop the run, and with it the guard) or panics.

use std::{collections::BTreeMap, fs::OpenOptions, io::Write as _, path::PathBuf, time::Duration};

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use crate::{AnyResult, args::FaultKind, now_ms, stack::Stack};

pub struct Faults {
    pub file: PathBuf,
    /// The run directory, where the counters are saved before a kill or a stop.
    pub run_dir: PathBuf,
    /// The admin API's client (short deadline: the instance is about to be killed).
    pub admin_http: reqwest::Client,
    /// The server's `postgres` database, to terminate the run's connections from.
    pub admin: PgConnectOptions,
    pub databases: [String; 2],
    pub kill_down: Duration,
    pub broker_down: Duration,
    pub injected: BTreeMap<FaultKind, usize>,
    /// The cluster run's nodes (`None` in the other runs).
    pub nodes: Option<crate::nodes::Nodes>,
}

/// Which instances a kill hits, in turn: order: the first (behind the gateway), the second,
/// both; pay: both (the hardest case first, so that the short run has it), the first, the
/// second.
fn kill_targets(service: &str, n: usize) -> Vec<String> {
    let n = if service == "pay" { n + 2 } else { n };
    match n % 3 {
        0 => vec![format!("{service}1")],
        1 => vec![format!("{service}2")],
        _ => vec![format!("{service}1"), format!("{service}2")],
    }
}

impl Faults {
    fn record(&self, start_ms: i64, kind: FaultKind, detail: &str) -> AnyResult<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        writeln!(file, "{start_ms} {} {kind} {detail}", now_ms())?;
        Ok(())
    }

    /// Injects one fault of `kind`, then waits until every instance is ready again. Returns
    /// what it did, for the line the run prints.
    pub async fn inject(&mut self, kind: FaultKind, stack: &mut Stack) -> AnyResult<String> {
        let n = self.injected.get(&kind).copied().unwrap_or(0);
        stack.current = format!("{kind} #{}", n + 1);
        stack.check_alive().await?;
        let start = now_ms();
        let detail = match kind {
            FaultKind::KillOrder => self.kill(stack, "order", n).await?,
            FaultKind::KillPay => self.kill(stack, "pay", n).await?,
            FaultKind::PgTerminate => self.pg_terminate().await,
            FaultKind::BrokerRestart => self.broker_restart().await?,
            FaultKind::RollingRestart => self.rolling_restart(stack).await?,
            FaultKind::StopBusiestNode
            | FaultKind::StopAnotherNode
            | FaultKind::KillPayLeader
            | FaultKind::LoseMajority => {
                let nodes = self.nodes.as_mut().ok_or("node faults need --cluster")?;
                nodes.inject(kind).await?
            }
        };
        self.record(start, kind, &detail)?;
        *self.injected.entry(kind).or_default() += 1;
        Ok(detail)
    }

    /// SIGKILL, down for a while, started again. When both instances are hit, they stay down
    /// longer (a backlog builds up in the queue or the outbox), and the first one is killed
    /// once more as soon as it is ready again, in the middle of catching up: deliveries it
    /// held unacked come back, some of them already committed (duplicates for the inbox).
    async fn kill(&self, stack: &mut Stack, service: &str, n: usize) -> AnyResult<String> {
        let names = kill_targets(service, n);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut killed = Vec::new();
        for name in &names {
            killed.push(self.kill_now(stack, name).await);
        }
        let mut down = self.kill_down;
        if names.len() > 1 {
            down += Duration::from_secs(4);
        }
        tokio::time::sleep(down).await;
        for name in &names {
            stack.start(name)?;
        }
        let mut detail = killed.join(",");
        if names.len() > 1 {
            stack.wait_ready(&names[..1]).await;
            detail = format!(
                "{detail},{} again while catching up",
                self.kill_now(stack, names[0]).await
            );
            stack.start(names[0])?;
        }
        stack.wait_ready(&names).await;
        Ok(detail)
    }

    /// `pg_terminate_backend` on every connection to the run's two databases.
    async fn pg_terminate(&self) -> String {
        let terminated = async {
            let mut conn = PgConnection::connect_with(&self.admin).await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = ANY($1) AND pid <> pg_backend_pid()",
            )
            .bind(&self.databases[..])
            .fetch_one(&mut conn)
            .await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(n)
        };
        match terminated.await {
            Ok(n) => format!("terminated={n}"),
            Err(e) => format!("terminated=error:{}", e.to_string().replace(' ', "_")),
        }
    }

    /// Saves the instance's inbox counters (they die with the process), then SIGKILL:
    /// `name(status=137)`.
    async fn kill_now(&self, stack: &mut Stack, name: &str) -> String {
        self.snapshot(stack, name).await;
        format!("{name}(status={})", stack.kill(name).await)
    }

    async fn snapshot(&self, stack: &Stack, name: &str) {
        if let Some(instance) = stack.instances().into_iter().find(|i| i.name == name) {
            crate::figures::snapshot(&self.admin_http, &self.run_dir, &instance).await;
        }
    }

    /// One instance at a time: SIGTERM, wait for its exit, start it, wait for `/readyz`.
    async fn rolling_restart(&self, stack: &mut Stack) -> AnyResult<String> {
        for name in crate::stack::ROLLING {
            self.snapshot(stack, name).await;
            stack.stop(name).await;
            stack.start(name)?;
            stack.wait_ready(&[name]).await;
        }
        Ok(crate::stack::ROLLING.join(" "))
    }

    async fn broker_restart(&self) -> AnyResult<String> {
        let stopped = BrokerStopped::arm();
        if !rabbitmqctl(&["stop_app"]).await {
            eprintln!("warning: rabbitmqctl stop_app failed");
        }
        tokio::time::sleep(self.broker_down).await;
        stopped.start_again().await?;
        Ok(format!("down={}s", self.broker_down.as_secs()))
    }
}

/// `rabbitmqctl ARGS` (as root, through `sudo -n` when needed), at most 120 s: whether it
/// succeeded. Blocking, so that [`BrokerStopped`]'s `drop` can run it too.
fn rabbitmqctl_blocking(args: &[&str]) -> bool {
    cluster::process::bounded("rabbitmqctl", Duration::from_secs(120), true)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// [`rabbitmqctl_blocking`] off the runtime's threads (the load goes on meanwhile).
pub async fn rabbitmqctl(args: &[&str]) -> bool {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rabbitmqctl_blocking(&args)
    })
    .await
    .unwrap_or(false)
}

/// `start_app`, three attempts, then `await_startup`.
fn start_app() -> bool {
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        if rabbitmqctl_blocking(&["start_app"]) {
            rabbitmqctl_blocking(&["await_startup"]);
            return true;
        }
    }
    false
}

/// RabbitMQ's app may be stopped while this lives: dropped without
/// [`BrokerStopped::start_again`], it starts the app.
struct BrokerStopped {
    armed: bool,
}

impl BrokerStopped {
    fn arm() -> Self {
        Self { armed: true }
    }

    /// Starts the app; on failure the guard stays armed and tries again when dropped.
    async fn start_again(mut self) -> AnyResult<()> {
        if tokio::task::spawn_blocking(start_app).await? {
            self.armed = false;
            Ok(())
        } else {
            Err("rabbitmqctl start_app failed".into())
        }
    }
}

impl Drop for BrokerStopped {
    fn drop(&mut self) {
        if self.armed {
            eprintln!("warning: RabbitMQ's app was left stopped: starting it");
            if !start_app() {
                eprintln!(
                    "warning: rabbitmqctl start_app failed: start RabbitMQ's app by hand (rabbitmqctl start_app)"
                );
            }
        }
    }
}
