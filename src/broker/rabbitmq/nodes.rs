//! The RabbitMQ nodes `RABBITMQ_URL` names: one URL, or a comma-separated list of a
//! cluster's nodes, tried in turn; and the TLS settings of its `amqps://` nodes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use super::tls::TlsFiles;
use crate::broker::BrokerError;

/// How long one node may take to accept a connection before the next is tried: a
/// node that is down refuses at once, but an unreachable host can hang until the
/// operating system gives up, minutes later.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The AMQP heartbeat asked for unless the URL gives one (`?heartbeat=N`): a host that
/// vanished without closing its connections is noticed after two missed heartbeats,
/// rather than after RabbitMQ's default of 60 s each.
const HEARTBEAT_SECONDS: u16 = 10;

/// One node: its URL, and the address it is shown by (never the password).
#[derive(Clone)]
struct Node {
    url: String,
    uri: AMQPUri,
    address: String,
}

/// The nodes of one RabbitMQ deployment, in the order they are tried. Shown (`Debug`
/// too) by their addresses alone, so no password reaches a log.
#[derive(Clone)]
pub struct Nodes {
    nodes: Vec<Node>,
    /// The CA and client certificate of `amqps://` nodes.
    tls: OwnedTLSConfig,
}

impl Nodes {
    /// The list's first URL, as given: every node of a cluster shares its user,
    /// password and vhost.
    pub fn first_url(&self) -> &str {
        &self.nodes[0].url
    }

    /// These nodes, their TLS connections configured by `files`; refused where no node
    /// is `amqps://`, since the files would go unused.
    pub fn with_tls(self, files: TlsFiles<'_>) -> Result<Self, String> {
        if files.is_empty() {
            return Ok(self);
        }
        if !self
            .nodes
            .iter()
            .any(|node| node.uri.scheme == AMQPScheme::AMQPS)
        {
            return Err(
                "--rabbitmq-ca and the client certificate are for TLS, and no node of \
                 RABBITMQ_URL is amqps://: use amqps:// (port 5671), or drop those flags"
                    .into(),
            );
        }
        Ok(Self {
            tls: files.load()?,
            ..self
        })
    }

    /// Where a process starts going round the list: a node chosen at random, so that
    /// the connections of a deployment's processes spread over the cluster.
    pub fn random_start(&self) -> usize {
        rand::random_range(0..self.nodes.len())
    }

    /// The address (`host:port`) of the node at `index`.
    pub fn address(&self, index: usize) -> &str {
        &self.nodes[index].address
    }

    /// Connects to the first node that answers, starting at `start` and going round the
    /// list once; returns the node's index with the connection.
    pub(super) async fn connect_from(
        &self,
        start: usize,
    ) -> Result<(usize, Connection), BrokerError> {
        let runtime = lapin::runtime::default_runtime().map_err(super::classify)?;
        let mut failures = Vec::with_capacity(self.nodes.len());
        for offset in 0..self.nodes.len() {
            let index = (start + offset) % self.nodes.len();
            let node = &self.nodes[index];
            let attempt = Connection::connect_uri_with_config(
                node.uri.clone(),
                ConnectionProperties::default(),
                self.tls.clone(),
                runtime.clone(),
            );
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(connection)) => return Ok((index, connection)),
                Ok(Err(error)) => failures.push(format!("{}: {error}", node.address)),
                Err(_) => failures.push(format!(
                    "{}: no answer within {}s",
                    node.address,
                    CONNECT_TIMEOUT.as_secs()
                )),
            }
        }
        Err(BrokerError::Unavailable(format!(
            "cannot connect to RabbitMQ: {}",
            failures.join("; ")
        )))
    }
}

impl FromStr for Nodes {
    type Err = String;

    /// `amqp://…` or `amqps://…`, or several separated by commas.
    fn from_str(spec: &str) -> Result<Self, String> {
        let nodes = spec
            .split(',')
            .map(str::trim)
            .enumerate()
            .map(|(position, url)| {
                parse_node(url)
                    .map_err(|reason| format!("RABBITMQ_URL's node {}: {reason}", position + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            nodes,
            tls: OwnedTLSConfig::default(),
        })
    }
}

impl fmt::Debug for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nodes({self})")
    }
}

impl fmt::Display for Nodes {
    /// The nodes' addresses, without credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addresses: Vec<&str> = self
            .nodes
            .iter()
            .map(|node| node.address.as_str())
            .collect();
        f.write_str(&addresses.join(", "))
    }
}

fn parse_node(url: &str) -> Result<Node, String> {
    if url.is_empty() {
        return Err("empty; separate the nodes' URLs with single commas".into());
    }
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(
            "must start with amqp:// or amqps://; unset RABBITMQ_URL to use the embedded \
             broker"
                .into(),
        );
    }
    let parsed = url::Url::parse(url).map_err(|error| format!("not a URL: {error}"))?;
    let host = parsed.host().ok_or("names no host")?;
    let mut uri = AMQPUri::from_str(url)?;
    // lapin's parser takes the host from `Url::domain`, which has none for an IPv6
    // address: `amqp://[fd00::5]` would go to `localhost`.
    if let url::Host::Ipv6(ip) = &host {
        uri.authority.host = ip.to_string();
    }
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECONDS);
    Ok(Node {
        url: url.to_owned(),
        address: format!("{host}:{}", uri.authority.port),
        uri,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_names_each_node_in_turn_and_hides_passwords() {
        let nodes: Nodes = "amqp://u:secret@10.0.0.1:5672/%2f, amqps://u:secret@rabbit-2/%2f"
            .parse()
            .expect("two nodes");
        assert_eq!(nodes.to_string(), "10.0.0.1:5672, rabbit-2:5671");
        assert_eq!(nodes.first_url(), "amqp://u:secret@10.0.0.1:5672/%2f");
    }

    #[test]
    fn processes_start_at_every_node_of_a_list() {
        let nodes: Nodes = "amqp://a/%2f,amqp://b/%2f,amqp://c/%2f"
            .parse()
            .expect("three");
        let starts: std::collections::BTreeSet<usize> =
            (0..300).map(|_| nodes.random_start()).collect();
        // Missing one of three in 300 draws has a chance of 3 × (2/3)^300, about 1e-52.
        assert_eq!(starts.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn the_heartbeat_is_ten_seconds_unless_the_url_says() {
        let nodes: Nodes = "amqp://a/%2f,amqp://b/%2f?heartbeat=30"
            .parse()
            .expect("two");
        let heartbeats: Vec<_> = nodes
            .nodes
            .iter()
            .map(|node| node.uri.query.heartbeat)
            .collect();
        assert_eq!(heartbeats, [Some(10), Some(30)]);
    }

    #[test]
    fn an_ip_address_is_the_host_connected_to() {
        let nodes: Nodes = "amqp://10.0.0.5:5672/%2f,amqps://[::1]/%2f,amqp://rabbit/%2f"
            .parse()
            .expect("three nodes");
        let hosts: Vec<&str> = nodes
            .nodes
            .iter()
            .map(|node| node.uri.authority.host.as_str())
            .collect();
        assert_eq!(hosts, ["10.0.0.5", "::1", "rabbit"]);
        assert_eq!(nodes.to_string(), "10.0.0.5:5672, [::1]:5671, rabbit:5672");
    }

    #[test]
    fn a_bad_node_is_named_with_what_is_wrong() {
        for (spec, expected) in [
            ("", "node 1: empty"),
            ("amqp://a:5672,,amqp://b:5672", "node 2: empty"),
            (
                "amqp://a:5672,http://b:15672",
                "node 2: must start with amqp://",
            ),
            ("amqp://a:5672/?heartbeat=often", "node 1: "),
            ("amqp://:5672", "node 1: "),
        ] {
            let error = spec.parse::<Nodes>().expect_err(spec);
            assert!(error.contains(expected), "{spec}: {error}");
        }
    }
}
