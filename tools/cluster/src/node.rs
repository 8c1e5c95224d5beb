//! One node of the cluster: its name, ports, folder and environment, and whether it runs.

use std::{
    fmt,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    str::FromStr,
    time::Duration,
};

use crate::{Cluster, Error, process};

/// Short node names on `localhost`, as the main node's: no DNS needed.
pub const HOST: &str = "localhost";

/// The three nodes; A is the one the others join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    A,
    B,
    C,
}

impl Node {
    pub const ALL: [Node; 3] = [Node::A, Node::B, Node::C];
    /// The node the others join.
    pub const FIRST: Node = Node::A;

    pub fn letter(self) -> char {
        match self {
            Node::A => 'a',
            Node::B => 'b',
            Node::C => 'c',
        }
    }

    /// 1, 2, 3: added to each port base.
    fn index(self) -> u16 {
        match self {
            Node::A => 1,
            Node::B => 2,
            Node::C => 3,
        }
    }

    /// `lmt-a@localhost`.
    pub fn name(self) -> String {
        format!("lmt-{}@{HOST}", self.letter())
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// `a`, `A`, `lmt-a` or `lmt-a@HOST`.
impl FromStr for Node {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let lower = s.to_ascii_lowercase();
        let short = lower.split('@').next().unwrap_or_default();
        match short.strip_prefix("lmt-").unwrap_or(short) {
            "a" => Ok(Node::A),
            "b" => Ok(Node::B),
            "c" => Ok(Node::C),
            _ => Err(Error::Failed(format!(
                "unknown node '{s}': a, b or c (or lmt-a, lmt-a@{HOST}, ...)"
            ))),
        }
    }
}

impl Cluster {
    pub fn amqp_port(&self, n: Node) -> u16 {
        self.settings.amqp_port_base + n.index()
    }

    pub fn mgmt_port(&self, n: Node) -> u16 {
        self.settings.mgmt_port_base + n.index()
    }

    pub fn dist_port(&self, n: Node) -> u16 {
        self.settings.dist_port_base + n.index()
    }

    pub fn amqp_url(&self, n: Node) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port(n))
    }

    /// The management API's base URL (user guest, password guest).
    pub fn mgmt_url(&self, n: Node) -> String {
        format!("http://127.0.0.1:{}", self.mgmt_port(n))
    }

    /// The three AMQP URLs, comma-separated (for `AMQP_URL`).
    pub fn urls(&self) -> String {
        Node::ALL.map(|n| self.amqp_url(n)).join(",")
    }

    /// `.run/cluster/lmt-a`: data, logs, configuration, pid file.
    pub fn node_dir(&self, n: Node) -> PathBuf {
        self.settings.dir.join(format!("lmt-{}", n.letter()))
    }

    /// The nodes' HOME: only the Erlang cookie is in it.
    pub(crate) fn home(&self) -> PathBuf {
        self.settings.dir.join("home")
    }

    /// A RabbitMQ script run with X's environment, bounded by `deadline`.
    pub(crate) fn in_node_env(&self, n: Node, script: &str, deadline: Duration) -> Command {
        let mut cmd = process::bounded(self.bin.join(script), deadline, false);
        self.node_env(n, &mut cmd);
        cmd
    }

    /// X's environment: its name, ports, folders, configuration and cookie.
    pub(crate) fn node_env(&self, n: Node, cmd: &mut Command) {
        let dir = self.node_dir(n);
        cmd.env("HOME", self.home())
            // Read instead of the system's rabbitmq-env.conf, which names the main node.
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", n.name())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port(n).to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port(n).to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            );
    }

    /// The pid of X's Erlang VM when it is alive: the pid its node wrote, checked to be an
    /// Erlang VM working in X's folder (`launch` starts it there), never a recycled pid.
    pub fn pid(&self, n: Node) -> Option<u32> {
        let dir = self.node_dir(n);
        let text = std::fs::read_to_string(dir.join("pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
        (process::alive(pid) && comm.starts_with("beam") && cwd == dir.canonicalize().ok()?)
            .then_some(pid)
    }

    /// X's broker accepts AMQP connections (the listener opens once the node has booted).
    pub fn is_up(&self, n: Node) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.amqp_port(n)));
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    }

    /// The first node that accepts AMQP connections.
    pub fn first_up(&self) -> Option<Node> {
        Node::ALL.into_iter().find(|&n| self.is_up(n))
    }

    /// X's ports that something else already listens on.
    pub(crate) fn ports_taken(&self, n: Node) -> Vec<u16> {
        [self.amqp_port(n), self.mgmt_port(n), self.dist_port(n)]
            .into_iter()
            .filter(|&port| TcpListener::bind(("127.0.0.1", port)).is_err())
            .collect()
    }
}
