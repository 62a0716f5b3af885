//! The 3-node RabbitMQ cluster that `scripts/rabbitmq-cluster up` starts, for the
//! failover test: a vhost of the test's own on it, and a node's Erlang VM killed and
//! started again.

use std::process::Command;

use super::rabbitmq::rabbitmqctl_on;

/// One node of the cluster.
#[derive(Clone)]
pub struct ClusterNode {
    /// Its Erlang node name, `retrocat-cluster-N@localhost`.
    pub name: String,
    /// Its AMQP URL, on the default vhost.
    url: url::Url,
}

impl ClusterNode {
    /// The PID of the node's Erlang VM (`beam.smp`).
    fn os_pid(&self) -> u32 {
        let answer = rabbitmqctl_on(Some(&self.name), &["eval", "os:getpid()."])
            .unwrap_or_else(|error| panic!("the PID of {}: {error}", self.name));
        answer
            .trim()
            .trim_matches('"')
            .parse()
            .unwrap_or_else(|_| panic!("{} answered {answer:?} for its PID", self.name))
    }

    /// Kills the node's Erlang VM with SIGKILL: no clean shutdown, as a crashed host.
    pub fn kill(&self) {
        let pid = self.os_pid();
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid} ({})", self.name);
    }

    /// Starts the node again, on its data: it rejoins the cluster, and its queue
    /// replicas catch up.
    pub fn start(&self) {
        let short = self.name.split('@').next().expect("a node name");
        let port = self
            .url
            .port()
            .expect("a node URL names its port")
            .to_string();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-node");
        let output = Command::new(script)
            .args([short, &port])
            .output()
            .expect("run scripts/rabbitmq-node");
        assert!(
            output.status.success(),
            "starting {} again: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        rabbitmqctl_on(Some(&self.name), &["await_startup"])
            .unwrap_or_else(|error| panic!("{} did not start: {error}", self.name));
    }
}

/// The cluster, with a vhost of this test's own, deleted on drop.
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    vhost: String,
}

impl Cluster {
    /// The cluster `TEST_RABBITMQ_CLUSTER_URLS` and `TEST_RABBITMQ_CLUSTER_NODES` name,
    /// with a fresh vhost; or `None`, after saying loudly that the test is skipped.
    pub fn create() -> Option<Self> {
        let (Ok(urls), Ok(names)) = (
            std::env::var("TEST_RABBITMQ_CLUSTER_URLS"),
            std::env::var("TEST_RABBITMQ_CLUSTER_NODES"),
        ) else {
            eprintln!(
                "SKIPPED: no RabbitMQ cluster (TEST_RABBITMQ_CLUSTER_URLS and \
                 TEST_RABBITMQ_CLUSTER_NODES unset); `eval \"$(scripts/rabbitmq-cluster up)\"` \
                 starts one"
            );
            return None;
        };
        let (urls, names): (Vec<&str>, Vec<&str>) =
            (urls.split(',').collect(), names.split(',').collect());
        assert_eq!(urls.len(), names.len(), "a node name for each URL");
        let nodes: Vec<ClusterNode> = urls
            .into_iter()
            .zip(names)
            .map(|(url, name)| ClusterNode {
                name: name.to_owned(),
                url: url::Url::parse(url).expect("a node's AMQP URL"),
            })
            .collect();
        let vhost = format!("retrocat-cluster-{}", uuid::Uuid::now_v7().simple());
        let cluster = Self { nodes, vhost };
        cluster.rabbitmqctl(&["add_vhost", &cluster.vhost]);
        cluster.rabbitmqctl(&[
            "set_permissions",
            "-p",
            &cluster.vhost,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        Some(cluster)
    }

    /// `RABBITMQ_URL` for this vhost on every node: the list retrocat fails over along.
    pub fn rabbitmq_url(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                let mut url = node.url.clone();
                url.set_path(&format!("/{}", self.vhost));
                url.to_string()
            })
            .collect();
        urls.join(",")
    }

    /// The node that leads `queue` (a quorum queue) now.
    pub fn leader_of(&self, queue: &str) -> &ClusterNode {
        let listed = self.rabbitmqctl(&["list_queues", "-q", "-p", &self.vhost, "name", "leader"]);
        let leader = listed
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .find(|(name, _)| *name == queue)
            .map(|(_, leader)| leader.trim())
            .unwrap_or_else(|| panic!("no leader of {queue} in {listed:?}"));
        self.nodes
            .iter()
            .find(|node| node.name == leader)
            .unwrap_or_else(|| panic!("{queue} is led by {leader}, not a node of the cluster"))
    }

    /// Runs `rabbitmqctl ARGS` on the first node that answers.
    fn rabbitmqctl(&self, args: &[&str]) -> String {
        let mut failures = Vec::new();
        for node in &self.nodes {
            match rabbitmqctl_on(Some(&node.name), args) {
                Ok(output) => return output,
                Err(error) => failures.push(error),
            }
        }
        panic!("no node ran rabbitmqctl {}: {failures:?}", args.join(" "))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if rabbitmqctl_on(Some(&node.name), &["delete_vhost", &self.vhost]).is_ok() {
                return;
            }
        }
        eprintln!("could not delete vhost {} of the cluster", self.vhost);
    }
}
