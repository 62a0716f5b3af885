//! Configuration: command-line flag, then environment variable, then default.
//!
//! Every setting is a clap argument with an `env` fallback, so `--help` documents the
//! whole configuration and the defaults run the complete system with nothing installed.

use crate::broker::QueueType;
use crate::broker::sealed::MessageKeys;
use crate::broker::topology::TopologyConfig;
use crate::outbox::RelayConfig;
use crate::processing::fetch::FetchConfig;
use crate::processing::retry::RetryPolicy;
use crate::processing::worker::WorkerConfig;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the catalog and the messages live; shared by every role.
#[derive(Args, Clone, Debug)]
pub struct StorageArgs {
    /// Catalog database: sqlite://PATH (default), postgres://… or mysql://…
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/retrocat.db",
        global = true
    )]
    pub database_url: String,

    /// RabbitMQ URL (amqp:// or amqps://). Unset: the embedded broker, in one process.
    #[arg(long, env = "RABBITMQ_URL", global = true)]
    pub rabbitmq_url: Option<String>,

    /// File of the embedded broker's durable queues (used when RABBITMQ_URL is unset).
    #[arg(
        long,
        env = "RETROCAT_BROKER_PATH",
        default_value = "data/broker.db",
        global = true
    )]
    pub broker_path: PathBuf,

    /// Type of `game_events` and its dead-letter queue on RabbitMQ. quorum replicates
    /// them across a cluster, but the original system's clients, which declare
    /// `game_events` as a plain classic queue, can then no longer declare it.
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
          value_parser = parse_message_keys)]
    pub message_keys: Option<Arc<MessageKeys>>,
}

fn parse_message_keys(spec: &str) -> Result<Arc<MessageKeys>, String> {
    MessageKeys::parse(spec).map(Arc::new)
}

impl StorageArgs {
    pub fn topology(&self) -> TopologyConfig {
        TopologyConfig {
            queue_type: self.queue_type,
        }
    }
}

/// The HTTP API and web UI.
#[derive(Args, Clone, Debug)]
pub struct HttpArgs {
    /// Address to listen on. Overrides PORT.
    #[arg(long, env = "RETROCAT_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Port to listen on at 127.0.0.1 (the original system's variable).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Origins allowed to call the API from a browser (comma-separated), e.g.
    /// http://localhost for the original page served by nginx. Empty: same origin only.
    #[arg(long, env = "RETROCAT_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Largest request body accepted, in bytes (covers included).
    #[arg(long, env = "RETROCAT_MAX_BODY_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Events published per broker round trip by the outbox relay.
    #[arg(long, env = "RETROCAT_RELAY_BATCH", default_value_t = 500)]
    pub relay_batch: u32,
}

impl HttpArgs {
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    pub fn relay(&self) -> RelayConfig {
        RelayConfig {
            batch_size: self.relay_batch.max(1),
            ..RelayConfig::default()
        }
    }
}

/// Background processing.
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Events processed at the same time by this process.
    #[arg(long, env = "RETROCAT_WORKER_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,

    /// Unacknowledged deliveries the broker may push ahead (consumer QoS).
    #[arg(long, env = "RETROCAT_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,

    /// Attempts per event before it is marked failed and dead-lettered.
    #[arg(long, env = "RETROCAT_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Delay before the first retry; doubled for each next one (with jitter).
    #[arg(long, env = "RETROCAT_RETRY_BASE_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_base_delay: Duration,

    /// Longest delay between two retries.
    #[arg(long, env = "RETROCAT_RETRY_MAX_DELAY", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_max_delay: Duration,

    /// Pretend each event takes this long, for demos (the original used 2s).
    #[arg(long, env = "RETROCAT_SIMULATE_WORK", default_value = "0s", value_parser = humantime::parse_duration)]
    pub simulate_work: Duration,

    /// Let cover URLs reach private and loopback addresses. Off: such URLs are refused
    /// (server-side request forgery guard).
    #[arg(long, env = "RETROCAT_ALLOW_PRIVATE_FETCH")]
    pub allow_private_fetch: bool,

    /// Time limit for fetching one cover image.
    #[arg(long, env = "RETROCAT_FETCH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,

    /// Largest cover image fetched, in bytes.
    #[arg(long, env = "RETROCAT_FETCH_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub fetch_max_bytes: usize,

    /// Name recorded with each processing attempt (default: HOST-PID), to tell
    /// workers apart in a game's history.
    #[arg(long, env = "RETROCAT_WORKER_ID")]
    pub worker_id: Option<String>,

    /// Subscribers of every domain event this process runs, each with its own queue and
    /// log (`GET /api/audit?subscriber=NAME`): `audit` is the audit log; more names
    /// (e.g. audit,archive) add independent subscribers.
    #[arg(long, env = "RETROCAT_SUBSCRIBERS", default_value = "audit", value_delimiter = ',',
          value_parser = crate::processing::subscriber::parse_name)]
    pub subscribers: Vec<String>,

    /// How long in-flight events may take to finish after SIGTERM.
    #[arg(long, env = "RETROCAT_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl WorkerArgs {
    pub fn worker(&self) -> WorkerConfig {
        WorkerConfig {
            concurrency: self.concurrency.max(1),
            prefetch: self.prefetch.max(1),
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                base_delay: self.retry_base_delay,
                max_delay: self.retry_max_delay.max(self.retry_base_delay),
            },
            simulate_work: self.simulate_work,
            shutdown_grace: self.shutdown_grace,
            worker_id: self
                .worker_id
                .clone()
                .unwrap_or_else(crate::processing::worker::default_worker_id),
            ..WorkerConfig::default()
        }
    }

    pub fn fetch(&self) -> FetchConfig {
        FetchConfig {
            timeout: self.fetch_timeout,
            max_bytes: self.fetch_max_bytes,
            allow_private: self.allow_private_fetch,
            ..FetchConfig::default()
        }
    }
}
