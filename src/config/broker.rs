//! The message broker's settings, shared by every role: which broker, how to reach
//! RabbitMQ (nodes, TLS, management API), the queue type, and message encryption.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::secret::Secret;
use crate::broker::QueueType;
use crate::broker::rabbitmq::{Nodes, TlsFiles};
use crate::broker::sealed::MessageKeys;
use crate::telemetry::management::Management;

/// The message broker, shared by every role.
#[derive(Args, Clone, Debug)]
pub struct BrokerArgs {
    /// RabbitMQ URL (amqp:// or amqps://), or a cluster's nodes' URLs separated by
    /// commas: each process starts at a node chosen at random, goes round the list to
    /// the first that answers, and moves on to the next when its connection is lost. Unset: the embedded broker, in one process.
    #[arg(long, env = "RABBITMQ_URL", hide_env_values = true, global = true,
          value_parser = Secret(parse_nodes))]
    pub rabbitmq_url: Option<Nodes>,

    /// CA certificates (a PEM file) that an amqps:// node's certificate may chain to,
    /// beside the system's roots. The server is always verified.
    #[arg(long, env = "RETROCAT_RABBITMQ_CA", global = true)]
    pub rabbitmq_ca: Option<PathBuf>,

    /// A client certificate (PEM) to present to amqps:// nodes that ask for one, with
    /// --rabbitmq-client-key.
    #[arg(long, env = "RETROCAT_RABBITMQ_CLIENT_CERT", global = true)]
    pub rabbitmq_client_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM, unencrypted).
    #[arg(long, env = "RETROCAT_RABBITMQ_CLIENT_KEY", global = true)]
    pub rabbitmq_client_key: Option<PathBuf>,

    /// RabbitMQ's management API, such as http://HOST:15672, for GET /api/queues:
    /// unacknowledged messages and rates as RabbitMQ counts them, across every client.
    /// Its user and password default to RABBITMQ_URL's. Unset: rates are this
    /// process's own, and unacknowledged counts are unknown.
    #[arg(
        long,
        env = "RABBITMQ_MANAGEMENT_URL",
        hide_env_values = true,
        global = true
    )]
    pub rabbitmq_management_url: Option<String>,

    /// File of the embedded broker's durable queues (used when RABBITMQ_URL is unset).
    #[arg(
        long,
        env = "RETROCAT_BROKER_PATH",
        default_value = "data/broker.db",
        global = true
    )]
    pub broker_path: PathBuf,

    /// Type of the queues retrocat declares on RabbitMQ. quorum replicates them across a
    /// cluster's nodes, with a delivery limit and at-least-once dead-lettering
    /// (catalog.rpc stays classic: quorum queues lack its priorities). The original
    /// system's clients, which declare `game_events` as a plain classic queue, can then
    /// no longer declare it.
    #[arg(
        long,
        env = "RETROCAT_QUEUE_TYPE",
        value_enum,
        default_value_t = QueueType::Classic,
        global = true
    )]
    pub queue_type: QueueType,

    /// Encrypt message bodies: ID:BASE64KEY[,ID:BASE64KEY…], 32-byte keys; the first
    /// seals, all open (rotate by putting the new key first). Off by default: consumers
    /// that expect plain JSON, like the original system's, cannot read sealed messages.
    #[arg(long, env = "RETROCAT_MESSAGE_KEYS", hide_env_values = true, global = true,
          value_parser = Secret(parse_message_keys))]
    pub message_keys: Option<Arc<MessageKeys>>,

    /// Dead-letter plain (unsealed) messages that reach a work queue (game_events,
    /// catalog.rpc, custom_messages) instead of processing them, so that only holders of
    /// a key of RETROCAT_MESSAGE_KEYS get work done. Needs RETROCAT_MESSAGE_KEYS. Off by
    /// default: the original system's clients send plain JSON.
    #[arg(long, env = "RETROCAT_REQUIRE_SEALED", global = true)]
    pub require_sealed: bool,
}

fn parse_nodes(spec: &str) -> Result<Nodes, String> {
    spec.parse()
}

fn parse_message_keys(spec: &str) -> Result<Arc<MessageKeys>, String> {
    MessageKeys::parse(spec).map(Arc::new)
}

impl BrokerArgs {
    /// The message keys, if any, checked against `--require-sealed`: refusing plain
    /// messages with no key to seal ours would refuse every message.
    pub fn sealing(&self) -> Result<Option<Arc<MessageKeys>>, String> {
        match (&self.message_keys, self.require_sealed) {
            (None, true) => Err("--require-sealed (RETROCAT_REQUIRE_SEALED) needs message \
                 keys to seal with: set RETROCAT_MESSAGE_KEYS (or --message-keys) to \
                 ID:BASE64KEY, a 32-byte key such as `openssl rand -base64 32` gives, or \
                 turn --require-sealed off"
                .into()),
            (keys, _) => Ok(keys.clone()),
        }
    }

    /// The RabbitMQ nodes RABBITMQ_URL names, with their TLS files read and checked;
    /// `None` for the embedded broker.
    pub fn rabbitmq(&self) -> Result<Option<Nodes>, String> {
        let files = TlsFiles {
            ca: self.rabbitmq_ca.as_deref(),
            client_cert: self.rabbitmq_client_cert.as_deref(),
            client_key: self.rabbitmq_client_key.as_deref(),
        };
        match &self.rabbitmq_url {
            Some(nodes) => nodes.clone().with_tls(files).map(Some),
            None if files.is_empty() => Ok(None),
            None => Err(
                "--rabbitmq-ca and the client certificate are RabbitMQ's: set \
                 RABBITMQ_URL to amqps://… too, or drop them for the embedded broker"
                    .into(),
            ),
        }
    }

    /// RabbitMQ's management API, where RABBITMQ_MANAGEMENT_URL names it.
    pub fn management(&self) -> Result<Option<Management>, String> {
        let Some(url) = &self.rabbitmq_management_url else {
            return Ok(None);
        };
        let Some(amqp) = &self.rabbitmq_url else {
            return Err(
                "RABBITMQ_MANAGEMENT_URL is RabbitMQ's: set RABBITMQ_URL too, or \
                 unset RABBITMQ_MANAGEMENT_URL for the embedded broker"
                    .into(),
            );
        };
        Management::new(url, amqp.first_url()).map(Some)
    }
}
