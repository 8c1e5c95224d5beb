//! The cluster run's faults: RabbitMQ nodes stopped, killed and started again under load
//! (the nodes themselves are the cluster tool's, `tools/cluster`), and what the management
//! API says about them: which node most of the services' connections are on, and the
//! run's dead-letter queues.
//!
//! Each fault ([`Nodes::inject`]) picks its nodes first, then takes them down, waits the
//! node-down time, and starts them again (every start waits until the node is a running
//! member). The cluster calls block, so they run off the runtime's threads: the load goes
//! on meanwhile.

use std::{collections::BTreeMap, time::Duration};

use cluster::{Cluster, Node};
use serde_json::Value;

use crate::{AnyResult, args::FaultKind};

pub struct Nodes {
    pub cluster: Cluster,
    /// The start of the run's queue names.
    pub queue_prefix: String,
    /// Pay's queue: fault 3 kills the node leading it.
    pub pay_queue: String,
    pub down: Duration,
    http: reqwest::Client,
    /// The node the last fault stopped: "another node" is the next one.
    last: Option<Node>,
}

/// A blocking cluster call, off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> cluster::Result<T> + Send + 'static,
) -> AnyResult<T> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

impl Nodes {
    pub fn new(
        cluster: Cluster,
        queue_prefix: String,
        pay_queue: String,
        down: Duration,
    ) -> AnyResult<Self> {
        Ok(Self {
            cluster,
            queue_prefix,
            pay_queue,
            down,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            last: None,
        })
    }

    /// `GET /api/PATH` of the first node whose management API answers.
    async fn api(&self, path: &str) -> AnyResult<Value> {
        let mut last_error: crate::AnyError = "no node of the cluster answers".into();
        for n in Node::ALL {
            let url = format!("{}/api/{path}", self.cluster.mgmt_url(n));
            let answer = self
                .http
                .get(&url)
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            match answer {
                Ok(res) => return Ok(res.json().await?),
                Err(e) => last_error = e.into(),
            }
        }
        Err(last_error)
    }

    /// How many of the cluster's client connections each node holds (the cluster serves
    /// this run only).
    pub async fn links(&self) -> AnyResult<BTreeMap<Node, usize>> {
        let mut links: BTreeMap<Node, usize> = Node::ALL.iter().map(|&n| (n, 0)).collect();
        for conn in self
            .api("connections")
            .await?
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(node) = conn["node"].as_str().and_then(|n| n.parse().ok()) {
                *links.entry(node).or_default() += 1;
            }
        }
        Ok(links)
    }

    /// Messages in the run's dead-letter queues (its queues with `dead` in their name):
    /// name and count.
    pub async fn dead_letters(&self) -> AnyResult<Vec<(String, u64)>> {
        let prefix = &self.queue_prefix;
        let queues = self.api("queues/%2f").await?;
        Ok(queues
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|q| {
                let name = q["name"].as_str()?;
                (name.starts_with(prefix) && name.contains("dead"))
                    .then(|| (name.to_string(), q["messages"].as_u64().unwrap_or(0)))
            })
            .collect())
    }

    /// The node leading pay's queue; a member not following is a warning (the queue would
    /// not survive one more node).
    async fn pay_leader(&self) -> AnyResult<Node> {
        let (cluster, queue) = (self.cluster.clone(), self.pay_queue.clone());
        let leader = blocking(move || cluster.leader(&queue)).await?;
        if !leader.lagging.is_empty() {
            eprintln!(
                "warning: members of {} not following its leader: {}",
                self.pay_queue,
                leader.lagging.join(" ")
            );
        }
        Ok(leader.node)
    }

    /// Injects one node fault: what it did, for the line the run prints.
    pub async fn inject(&mut self, kind: FaultKind) -> AnyResult<String> {
        let (nodes, kill, why) = match kind {
            FaultKind::StopBusiestNode => {
                let links = self.links().await?;
                let busiest = links
                    .iter()
                    .max_by_key(|(n, count)| (**count, std::cmp::Reverse(**n)))
                    .map_or(Node::FIRST, |(n, _)| *n);
                let listed: Vec<String> = links.iter().map(|(n, c)| format!("{n}={c}")).collect();
                (vec![busiest], false, format!("links {}", listed.join(",")))
            }
            FaultKind::StopAnotherNode => {
                let next = match self.last {
                    Some(Node::A) => Node::B,
                    Some(Node::B) => Node::C,
                    _ => Node::A,
                };
                (vec![next], false, "another node".into())
            }
            FaultKind::KillPayLeader => {
                let leader = self.pay_leader().await?;
                (vec![leader], true, format!("leader of {}", self.pay_queue))
            }
            FaultKind::LoseMajority => {
                // The leader and one more: the survivor must elect nobody.
                let leader = self.pay_leader().await?;
                let other = Node::ALL
                    .into_iter()
                    .find(|&n| n != leader)
                    .expect("three nodes");
                (vec![leader, other], false, "two of three at once".into())
            }
            other => return Err(format!("{other} is not a node fault").into()),
        };
        let downs = nodes.iter().map(|&n| {
            let cluster = self.cluster.clone();
            blocking(move || {
                if kill {
                    cluster.kill_node(n)
                } else {
                    cluster.stop_node(n)
                }
            })
        });
        for down in futures::future::join_all(downs).await {
            down?;
        }
        tokio::time::sleep(self.down).await;
        let ups = nodes.iter().map(|&n| {
            let cluster = self.cluster.clone();
            blocking(move || cluster.start_node(n))
        });
        for up in futures::future::join_all(ups).await {
            up?;
        }
        self.last = nodes.first().copied();
        let names: Vec<String> = nodes.iter().map(|n| n.name()).collect();
        Ok(format!(
            "{}={} ({why}) down={}s",
            if kill { "killed" } else { "stopped" },
            names.join("+"),
            self.down.as_secs()
        ))
    }
}
