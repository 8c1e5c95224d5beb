//! A three-node RabbitMQ cluster on this machine, beside the main broker, with no Docker:
//! three `rabbitmq-server` instances (`lmt-a`, `lmt-b`, `lmt-c@localhost`) with their own
//! node names, ports and data folders and the main node's Erlang cookie, joined with
//! `join_cluster`. It exists to run quorum queues and broker faults for real
//! (`scripts/cluster.sh`, and `chaos --cluster`, which uses this library).
//!
//! [`Cluster::start`] runs, in order: [`Cluster::launch`] for each node (its configuration
//! written by `prepare_node`, its VM started detached), [`Cluster::await_node`] for each,
//! [`Cluster::join`] for B and C, then waits until A sees three running nodes.
//! [`Cluster::start_node`] is the same for one node; [`Cluster::stop_node`] is
//! `rabbitmqctl stop` (a clean shutdown: clients get a connection close), SIGKILL after the
//! stop deadline; [`Cluster::kill_node`] is a crash (SIGKILL of the VM).
//! [`Cluster::leader`] asks Raft itself (`rabbitmq-queues quorum_status`) which node leads a
//! quorum queue: the management API's view can lag.
//!
//! Why these details:
//! - the scripts are run from RabbitMQ's own folder (`/usr/lib/rabbitmq/bin`): the
//!   packages' wrappers in `/usr/sbin` switch to the `rabbitmq` user, whose files these
//!   nodes do not use;
//! - `RABBITMQ_CONF_ENV_FILE` points at the node's own (empty) file: the system's
//!   `rabbitmq-env.conf` names the main node;
//! - the nodes' `HOME` holds only a link to the main node's cookie (no copy of the secret),
//!   so `rabbitmqctl -n lmt-a@localhost` works from anywhere on the machine; every CLI call
//!   names its node with `-n`, so the main node (`rabbit@localhost`) is never stopped,
//!   reset or joined;
//! - only a node that knows no other member is reset and joined: a member's data (its
//!   queue replicas) is never thrown away;
//! - all three start at once: a node that was stopped with the others waits for them while
//!   it boots.

mod commands;
mod node;
pub mod process;

use std::{path::PathBuf, time::Duration};

pub use commands::{Leader, NodeState};
pub use node::{HOST, Node};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where the nodes live and listen, and how long they may take; each is also a variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Data, logs and configuration of each node (`<dir>/lmt-a`, ...).
    #[arg(
        long = "cluster-dir",
        env = "CLUSTER_DIR",
        default_value = ".run/cluster"
    )]
    pub dir: PathBuf,
    /// Node A's AMQP port is this + 1 (all on 127.0.0.1).
    #[arg(long, env = "CLUSTER_AMQP_PORT_BASE", default_value_t = 5700)]
    pub amqp_port_base: u16,
    /// Node A's management port is this + 1.
    #[arg(long, env = "CLUSTER_MGMT_PORT_BASE", default_value_t = 15700)]
    pub mgmt_port_base: u16,
    /// Node A's Erlang distribution port is this + 1.
    #[arg(long, env = "CLUSTER_DIST_PORT_BASE", default_value_t = 25700)]
    pub dist_port_base: u16,
    /// How long a node may take to boot, and the cluster to show three running nodes.
    #[arg(long, env = "START_DEADLINE_SECS", default_value_t = 180)]
    pub start_deadline_secs: u64,
    /// How long a clean stop may take before SIGKILL.
    #[arg(long, env = "STOP_DEADLINE_SECS", default_value_t = 60)]
    pub stop_deadline_secs: u64,
}

/// The cluster on this machine, as [`Settings`] place it.
#[derive(Debug, Clone)]
pub struct Cluster {
    settings: Settings,
    /// The folder holding the RabbitMQ scripts themselves.
    bin: PathBuf,
}

impl Cluster {
    pub fn new(mut settings: Settings) -> Result<Self> {
        // The nodes start in their own folders: every path they get must be absolute.
        settings.dir = std::path::absolute(&settings.dir)?;
        Ok(Self {
            settings,
            bin: rabbitmq_bin_dir()?,
        })
    }

    fn start_deadline(&self) -> Duration {
        Duration::from_secs(self.settings.start_deadline_secs)
    }

    fn stop_deadline(&self) -> Duration {
        Duration::from_secs(self.settings.stop_deadline_secs)
    }
}

/// The folder holding the RabbitMQ scripts themselves: the Debian and RPM packages put
/// wrappers in /usr/sbin that switch to the `rabbitmq` user.
fn rabbitmq_bin_dir() -> Result<PathBuf> {
    let packaged = PathBuf::from("/usr/lib/rabbitmq/bin");
    if packaged.join("rabbitmq-server").is_file() {
        return Ok(packaged);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("rabbitmq-server"))
        .find(|server| server.is_file())
        .and_then(|server| server.canonicalize().ok()?.parent().map(PathBuf::from))
        .ok_or_else(|| {
            Error::Failed(
                "rabbitmq-server is not installed (apt-get install rabbitmq-server)".into(),
            )
        })
}

/// A step, on stderr (as the scripts' `log`).
pub fn log(line: &str) {
    eprintln!("==> {line}");
}

/// A warning, on stderr.
pub fn warn(line: &str) {
    eprintln!("warning: {line}");
}
