//! `cluster`: the three-node RabbitMQ cluster on this machine (`scripts/cluster.sh` runs it;
//! the library's doc says what each command does and why).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cluster::{Cluster, Node, NodeState, Settings};

#[derive(Parser)]
#[command(
    name = "cluster",
    about = "A three-node RabbitMQ cluster on this machine (lmt-a, lmt-b, lmt-c@localhost), beside the main broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Subcommand)]
enum Command {
    /// Start A, B and C, join B and C to A, wait for three running nodes; print the URLs.
    Start,
    /// Stop all three (their data stays: `start` brings the same cluster back).
    Stop,
    /// Each node's state and ports, and the running nodes the cluster sees; exit 1 unless all three run.
    Status,
    /// Start node X (a, b, c, lmt-a or lmt-a@localhost).
    StartNode { node: Node },
    /// Stop node X cleanly (rabbitmqctl stop).
    StopNode { node: Node },
    /// SIGKILL node X's Erlang VM.
    KillNode { node: Node },
    /// The node that leads quorum queue QUEUE (virtual host /).
    Leader { queue: String },
    /// The three nodes' AMQP URLs, comma-separated (for AMQP_URL).
    Urls,
    /// Stop all three and delete their data (the next start forms a new cluster).
    Wipe,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match Cluster::new(cli.settings).and_then(|c| run(&c, cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(c: &Cluster, command: Command) -> cluster::Result<ExitCode> {
    match command {
        Command::Start => {
            c.start()?;
            println!("{}", c.urls());
        }
        Command::Stop => c.stop()?,
        Command::Status => return Ok(status(c)),
        Command::StartNode { node } => c.start_node(node)?,
        Command::StopNode { node } => c.stop_node(node)?,
        Command::KillNode { node } => c.kill_node(node)?,
        Command::Leader { queue } => {
            let leader = c.leader(&queue)?;
            if !leader.lagging.is_empty() {
                cluster::warn(&format!(
                    "members of '{queue}' not following the leader: {}",
                    leader.lagging.join(" ")
                ));
            }
            println!("{}", leader.node);
        }
        Command::Urls => println!("{}", c.urls()),
        Command::Wipe => c.wipe()?,
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per node, then the cluster's running nodes; success when all three run.
fn status(c: &Cluster) -> ExitCode {
    let mut all = true;
    for n in Node::ALL {
        let state = match c.state(n) {
            NodeState::Running(pid) => format!("running (pid {pid})"),
            NodeState::Booting(pid) => format!("booting (pid {pid})"),
            NodeState::Stopped => "stopped".into(),
        };
        all &= matches!(c.state(n), NodeState::Running(_));
        println!(
            "{:<18} {state:<22} amqp 127.0.0.1:{}  management {}  distribution {}",
            n.name(),
            c.amqp_port(n),
            c.mgmt_url(n),
            c.dist_port(n)
        );
    }
    if let Some(n) = c.first_up() {
        let seen = c.running_nodes(n);
        println!(
            "running cluster members (as {n} sees them): {}",
            if seen.is_empty() {
                "none".into()
            } else {
                seen.join(" ")
            }
        );
        all &= seen.len() == 3;
    }
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
