//! What the commands do to the nodes (see the crate's doc for why each detail).

use std::{fs, process::Stdio, time::Duration};

use serde_json::Value;

use crate::{Cluster, Error, Node, Result, log, process, warn};

/// The nodes' plugins: the management API (status, the connections' nodes) and the
/// consistent-hash exchange (queues sharded by a routing key's hash).
const PLUGINS: &str = "[rabbitmq_management,rabbitmq_consistent_hash_exchange].";
/// The main node's cookie: the packaged server runs as the `rabbitmq` user, whose home
/// holds it; a server run by hand uses the caller's.
const MAIN_HOME_COOKIE: &str = "/var/lib/rabbitmq/.erlang.cookie";
/// A CLI call's deadline (`join_cluster` and `stop` can take a while).
const CTL_DEADLINE: Duration = Duration::from_secs(120);
/// A node's VM has exited this long after SIGKILL.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// One node as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    Running(u32),
    Booting(u32),
    Stopped,
}

/// The node leading a quorum queue, and the members not following it.
#[derive(Debug, Clone)]
pub struct Leader {
    pub node: Node,
    /// `lmt-b@localhost (noproc)`: with one such member the queue no longer survives the
    /// loss of another node.
    pub lagging: Vec<String>,
}

impl Cluster {
    /// `rabbitmqctl -n X ARGS` with X's environment: its standard output.
    fn ctl(&self, n: Node, args: &[&str]) -> Result<String> {
        process::output(
            self.in_node_env(n, "rabbitmqctl", CTL_DEADLINE)
                .arg("-n")
                .arg(n.name())
                .args(args),
        )
    }

    /// The cluster as X sees it (`cluster_status`).
    fn cluster_status(&self, n: Node) -> Result<Value> {
        let out = self.ctl(n, &["cluster_status", "--formatter", "json"])?;
        serde_json::from_str(&out)
            .map_err(|e| Error::Failed(format!("cannot read {n}'s cluster status: {e}")))
    }

    /// The running cluster members as X sees them.
    pub fn running_nodes(&self, n: Node) -> Vec<String> {
        self.cluster_status(n)
            .map(|s| names(&s["running_nodes"]))
            .unwrap_or_default()
    }

    fn has_three(&self) -> bool {
        self.running_nodes(Node::FIRST).len() == 3
    }

    /// The nodes' HOME: a link to the main node's cookie (no copy of the secret). Without a
    /// main cookie, Erlang writes a new one there on first start.
    fn prepare_home(&self, n: Node) -> Result<()> {
        let home = self.home();
        fs::create_dir_all(&home)?;
        let caller =
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".erlang.cookie"));
        let main = std::iter::once(MAIN_HOME_COOKIE.into())
            .chain(caller)
            .find(|f: &std::path::PathBuf| fs::File::open(f).is_ok());
        if let Some(cookie) = main {
            // Made under X's own name, then renamed over: nodes started at once don't race.
            let tmp = home.join(format!(".erlang.cookie.{n}"));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(cookie, &tmp)?;
            fs::rename(tmp, home.join(".erlang.cookie"))?;
        }
        Ok(())
    }

    /// X's folders and configuration, rewritten on every start so that a changed port base
    /// takes effect.
    fn prepare_node(&self, n: Node) -> Result<()> {
        let dir = self.node_dir(n);
        fs::create_dir_all(dir.join("mnesia"))?;
        fs::create_dir_all(dir.join("log"))?;
        fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "# Written by the cluster tool on each start.\n\
                 listeners.tcp.1 = 127.0.0.1:{}\n\
                 management.tcp.ip = 127.0.0.1\n\
                 management.tcp.port = {}\n\
                 log.console = false\n\
                 log.file.level = info\n",
                self.amqp_port(n),
                self.mgmt_port(n)
            ),
        )?;
        fs::write(dir.join("enabled_plugins"), format!("{PLUGINS}\n"))?;
        fs::write(
            dir.join("rabbitmq-env.conf"),
            "# Written by the cluster tool: the settings are in its environment variables.\n",
        )?;
        Ok(())
    }

    /// Starts X's VM in the background: it boots on its own ([`Cluster::await_node`] waits).
    pub fn launch(&self, n: Node) -> Result<()> {
        if self.pid(n).is_some() {
            log(&format!("{n} is already running"));
            return Ok(());
        }
        let taken = self.ports_taken(n);
        if !taken.is_empty() {
            return Err(Error::Failed(format!(
                "port {taken:?} (for {n}) is taken by another process: pick other CLUSTER_*_PORT_BASE values"
            )));
        }
        self.prepare_home(n)?;
        self.prepare_node(n)?;
        log(&format!(
            "starting {n} (AMQP {}, management {}, distribution {})",
            self.amqp_port(n),
            self.mgmt_port(n),
            self.dist_port(n)
        ));
        let dir = self.node_dir(n);
        let launch_log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log/launch.log"))?;
        // setsid: the node must not die with the caller's process group.
        let mut cmd = std::process::Command::new("setsid");
        cmd.arg(self.bin.join("rabbitmq-server"))
            .arg("-detached")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(launch_log.try_clone()?)
            .stderr(launch_log);
        self.node_env(n, &mut cmd);
        let status = cmd.status()?;
        if !status.success() {
            return Err(Error::Failed(format!(
                "{n} did not start: see {}",
                dir.join("log/launch.log").display()
            )));
        }
        Ok(())
    }

    /// X has booted (a node of a cluster waits for its peers while booting).
    pub fn await_node(&self, n: Node) -> Result<()> {
        if process::wait_until(self.start_deadline(), || self.is_up(n)) {
            return Ok(());
        }
        Err(Error::Failed(format!(
            "{n} did not open AMQP port {} within {} s: see {}",
            self.amqp_port(n),
            self.settings.start_deadline_secs,
            self.node_dir(n).join("log").display()
        )))
    }

    /// Makes X a member of the first node's cluster. Only a node that knows no other member
    /// is reset and joined: a member's data (its queue replicas) is never thrown away here.
    pub fn join(&self, n: Node) -> Result<()> {
        let status = self.cluster_status(n)?;
        let mut members = names(&status["disk_nodes"]);
        members.extend(names(&status["ram_nodes"]));
        if members.contains(&Node::FIRST.name()) {
            return Ok(());
        }
        if members != [n.name()] {
            return Err(Error::Failed(format!(
                "{n} belongs to another cluster ({}): run 'wipe' to start afresh",
                members.join(" ")
            )));
        }
        log(&format!("joining {n} to {}", Node::FIRST));
        // Its output only when it fails: joining prints harmless feature-flag warnings.
        for args in [
            &["stop_app"][..],
            &["reset"],
            &["join_cluster", &Node::FIRST.name()],
            &["start_app"],
        ] {
            self.ctl(n, args)?;
        }
        Ok(())
    }

    /// Starts A, B and C, joins B and C to A, waits for three running nodes.
    pub fn start(&self) -> Result<()> {
        if Node::ALL.iter().all(|&n| self.pid(n).is_some()) && self.has_three() {
            log("the cluster is already running (3 nodes)");
            return Ok(());
        }
        // All at once: a node that was stopped with the others waits for them while it boots.
        for n in Node::ALL {
            self.launch(n)?;
        }
        for n in Node::ALL {
            self.await_node(n)?;
        }
        for n in Node::ALL.into_iter().filter(|&n| n != Node::FIRST) {
            self.join(n)?;
        }
        if !process::wait_until(self.start_deadline(), || self.has_three()) {
            return Err(Error::Failed(format!(
                "the cluster does not show three running nodes after {} s: {}",
                self.settings.start_deadline_secs,
                self.running_nodes(Node::FIRST).join(" ")
            )));
        }
        log(&format!(
            "cluster running: {}",
            self.running_nodes(Node::FIRST).join(" ")
        ));
        Ok(())
    }

    /// Starts X (a member rejoins by itself; a fresh node is joined).
    pub fn start_node(&self, n: Node) -> Result<()> {
        self.launch(n)?;
        self.await_node(n)?;
        if n != Node::FIRST {
            self.join(n)?;
        }
        log(&format!("{n} is running"));
        Ok(())
    }

    /// Stops X cleanly (`rabbitmqctl stop`), SIGKILL after the stop deadline.
    pub fn stop_node(&self, n: Node) -> Result<()> {
        let Some(pid) = self.pid(n) else {
            log(&format!("{n} is not running"));
            return Ok(());
        };
        log(&format!("stopping {n}"));
        // With the pid file, `stop` returns once the VM has exited.
        let pid_file = self.node_dir(n).join("pid");
        if let Err(e) = self.ctl(n, &["stop", &pid_file.to_string_lossy()]) {
            warn(&format!("rabbitmqctl stop failed for {n}: {e}"));
        }
        if process::wait_until(self.stop_deadline(), || !process::alive(pid)) {
            return Ok(());
        }
        warn(&format!(
            "{n} still runs after {} s: SIGKILL",
            self.settings.stop_deadline_secs
        ));
        self.sigkill(n, pid)
    }

    /// SIGKILL of X's Erlang VM.
    pub fn kill_node(&self, n: Node) -> Result<()> {
        let pid = self
            .pid(n)
            .ok_or_else(|| Error::Failed(format!("{n} is not running")))?;
        log(&format!("SIGKILL {n} (pid {pid})"));
        self.sigkill(n, pid)
    }

    fn sigkill(&self, n: Node, pid: u32) -> Result<()> {
        process::signal(pid, "KILL");
        if process::wait_until(KILL_DEADLINE, || !process::alive(pid)) {
            Ok(())
        } else {
            Err(Error::Failed(format!("{n} (pid {pid}) does not exit")))
        }
    }

    /// Stops C, B, then A; their data stays.
    pub fn stop(&self) -> Result<()> {
        for n in Node::ALL.into_iter().rev() {
            self.stop_node(n)?;
        }
        Ok(())
    }

    /// Stops all three and deletes their data: the next start forms a new cluster.
    pub fn wipe(&self) -> Result<()> {
        self.stop()?;
        log(&format!("deleting {}", self.settings.dir.display()));
        match fs::remove_dir_all(&self.settings.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Each node's state.
    pub fn state(&self, n: Node) -> NodeState {
        match self.pid(n) {
            Some(pid) if self.is_up(n) => NodeState::Running(pid),
            Some(pid) => NodeState::Booting(pid),
            None => NodeState::Stopped,
        }
    }

    /// The node whose replica of quorum queue `queue` (virtual host /) leads, asked of the
    /// members through any running node (Raft's own view, current at once).
    pub fn leader(&self, queue: &str) -> Result<Leader> {
        let n = self
            .first_up()
            .ok_or_else(|| Error::Failed("no node of the cluster is running".into()))?;
        let out = process::output(
            self.in_node_env(n, "rabbitmq-queues", Duration::from_secs(60))
                .args(["-n", &n.name(), "quorum_status", queue, "--formatter", "json"]),
        )
        .map_err(|e| {
            Error::Failed(format!(
                "cannot read the state of queue '{queue}' (is it a quorum queue on this cluster?): {e}"
            ))
        })?;
        let members: Vec<Value> = serde_json::from_str(&out)
            .map_err(|e| Error::Failed(format!("cannot read quorum_status of '{queue}': {e}")))?;
        let field = |m: &Value, f: &str| m[f].as_str().unwrap_or_default().to_string();
        let lagging = members
            .iter()
            .filter(|m| !matches!(field(m, "Raft State").as_str(), "leader" | "follower"))
            .map(|m| format!("{} ({})", field(m, "Node Name"), field(m, "Raft State")))
            .collect();
        let leader = members
            .iter()
            .find(|m| field(m, "Raft State") == "leader")
            .ok_or_else(|| {
                Error::Failed(format!(
                    "queue '{queue}' has no leader now (no majority of its members is running?)"
                ))
            })?;
        Ok(Leader {
            node: field(leader, "Node Name").parse()?,
            lagging,
        })
    }
}

/// A JSON array of node names.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| Some(v.as_str()?.to_string()))
        .collect()
}
