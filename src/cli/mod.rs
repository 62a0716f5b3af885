//! The command line: one binary, one subcommand per role (DESIGN.md).

pub mod accounts;
pub mod dlq;

use crate::auth::Role;
use crate::bench::BenchArgs;
use crate::broker::{HeaderValue, dead_letters, topology};
use crate::config::{BrokerArgs, CoverArgs, DatabaseArgs, HttpArgs, ProducerArgs, WorkerArgs};
use crate::domain::time::parse_time;
use crate::producer::Outgoing;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;

/// The Retro Gaming Catalog on a message-oriented architecture.
///
/// Without a command, runs `serve`: the whole system in one process, with an SQLite
/// database and the embedded broker under ./data. Open http://127.0.0.1:8080.
#[derive(Parser, Debug)]
#[command(name = "retrocat", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub broker: BrokerArgs,

    #[command(flatten)]
    pub covers: CoverArgs,

    /// Log format: text for people, json for log collectors.
    #[arg(long, env = "RETROCAT_LOG_FORMAT", default_value = "text", global = true,
          value_parser = ["text", "json"])]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Every role in one process: HTTP API and web UI, outbox relay, workers.
    Serve(Box<ServeArgs>),
    /// HTTP API, web UI, outbox relay and live-feed subscriber.
    Api(HttpArgs),
    /// Consumers only; run several to share the work.
    Worker(WorkerCommand),
    /// Apply database migrations (schema and seed data) and exit.
    Migrate,
    /// Send a custom message ({"type": "custom", "message": …}) and print its id.
    ///
    /// Goes straight to the broker: RabbitMQ when RABBITMQ_URL is set, otherwise the
    /// embedded broker's file, which a running `retrocat serve` holds (then use its
    /// POST /api/messages instead).
    Publish(PublishArgs),
    /// Inspect a dead-letter queue and act on its messages.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Load a running system through its API and report throughput and latency.
    ///
    /// Sends the workload's requests at --rate a second or flat out, waits until every
    /// event they caused is processed (following GET /api/stream), and reports
    /// requests/s, events/s end to end, write→processed latency percentiles (from the
    /// server's stamps in each game's history), errors, and the ceiling of the broker the
    /// system runs on, measured in the same run: end-to-end figures are a share of it.
    /// Progress bars go to standard error on a terminal. Exits 1 when a request failed or
    /// an event was not processed in time.
    Bench(BenchArgs),
    /// The queues of a running system, as GET /api/queues shows them; pause and resume
    /// their consumption.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Accounts of people, for the web UI and the API (POST /api/auth/login).
    ///
    /// Works on the catalog database (DATABASE_URL), also while the system runs. The
    /// first account ends protected mode: from then on, every write needs a token.
    #[command(subcommand)]
    User(UserCommand),
    /// API tokens for machines (Authorization: Bearer TOKEN).
    ///
    /// Works on the catalog database (DATABASE_URL), also while the system runs. The
    /// first token ends protected mode: from then on, every write needs a token.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug, Clone)]
pub enum UserCommand {
    /// Add an account; asks for its password (or reads it with --password-stdin).
    Add {
        /// Letters, digits, '.', '_', '-' and '@'; at most 64.
        #[arg(value_parser = parse_name)]
        name: String,
        /// editor: games and covers; admin: everything.
        #[arg(long, value_enum)]
        role: Role,
        /// Read the password from the first line of standard input, for scripts.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every account, with its role.
    List,
    /// Remove an account; its logins stop working within a second.
    Remove { name: String },
}

#[derive(Subcommand, Debug, Clone)]
pub enum TokenCommand {
    /// Create a token and print it, once: it is stored only as a hash.
    Create {
        /// What the token is for (e.g. ci-deploy): to list and revoke it by.
        #[arg(long, value_parser = parse_name)]
        name: String,
        /// editor: games and covers; admin: everything.
        #[arg(long, value_enum)]
        role: Role,
        /// How long the token lasts (e.g. 90d, 1year). Unset: until revoked.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Every machine token, with its role and expiry (never the token itself).
    List,
    /// Revoke a token: it stops working within a second, on every API instance.
    Revoke { name: String },
}

fn parse_name(name: &str) -> Result<String, String> {
    crate::auth::check_name(name).map(|()| name.to_owned())
}

#[derive(Subcommand, Debug, Clone)]
pub enum QueueCommand {
    /// Every queue of the topology and the outbox: ready, unacknowledged, delayed,
    /// consumers and rates over the last 10 s (`-` where the broker does not say).
    List {
        /// Base URL of the running system (`retrocat serve` or `retrocat api`).
        #[arg(long, env = "RETROCAT_URL", default_value = "http://127.0.0.1:8080")]
        url: url::Url,
        /// One JSON object a line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop consumption of a queue by every worker of every process, within a second.
    ///
    /// Work in flight finishes; the messages stay in the queue, and writes go on. The
    /// pause is kept in the catalog database (DATABASE_URL), so it outlives restarts.
    Pause {
        /// game_events, catalog.rpc, custom_messages, audit, or audit.NAME.
        #[arg(value_parser = parse_pausable)]
        queue: String,
    },
    /// Let every worker consume a paused queue again, within a second.
    Resume {
        /// game_events, catalog.rpc, custom_messages, audit, or audit.NAME.
        #[arg(value_parser = parse_pausable)]
        queue: String,
    },
}

fn parse_pausable(queue: &str) -> Result<String, String> {
    crate::processing::pause::check_pausable(queue).map(|()| queue.to_owned())
}

#[derive(Subcommand, Debug, Clone)]
pub enum DlqCommand {
    /// The oldest messages, with why and when they were dead-lettered.
    List {
        #[command(flatten)]
        queue: DlqQueue,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send a message back to the queue it died in, its retry count reset; with --all,
    /// every message the filter matches (interrupted and run again, each is still
    /// processed once).
    Replay {
        /// The message's id, as `list` shows it.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        #[command(flatten)]
        bulk: DlqBulk,
        #[command(flatten)]
        queue: DlqQueue,
    },
    /// Remove a message for good; with --all, every message the filter matches.
    Purge {
        /// The message's id, as `list` shows it.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        #[command(flatten)]
        bulk: DlqBulk,
        #[command(flatten)]
        queue: DlqQueue,
    },
}

/// Every message of the queue, or those a filter matches, instead of one.
#[derive(Args, Debug, Clone)]
pub struct DlqBulk {
    /// Every message the filter below matches (all of them without one), in passes of
    /// the oldest 10,000, with progress on standard error.
    #[arg(long, conflicts_with = "id")]
    pub all: bool,
    /// With --all: only messages whose reason contains this text.
    #[arg(long, requires = "all")]
    pub reason: Option<String>,
    /// With --all: only messages dead-lettered before this time (RFC 3339, e.g.
    /// 2026-12-07T12:00:00Z).
    #[arg(long, requires = "all", value_parser = parse_time)]
    pub before: Option<DateTime<Utc>>,
    /// With --all: only messages dead-lettered at or after this time (RFC 3339).
    #[arg(long, requires = "all", value_parser = parse_time)]
    pub after: Option<DateTime<Utc>>,
}

#[derive(Args, Debug, Clone)]
pub struct DlqQueue {
    /// The dead-letter queue (or unrouted).
    #[arg(long, default_value = topology::GAME_EVENTS_DLQ,
          value_parser = clap::builder::PossibleValuesParser::new(dead_letters::QUEUES))]
    pub queue: String,
}

#[derive(Parser, Debug, Clone)]
pub struct PublishArgs {
    /// The message: JSON, or plain text (sent as a string); - reads it from stdin.
    pub message: String,

    /// Exchange to publish to, one of --publish-exchanges; "" is the default exchange
    /// (routing key = queue name), never into retrocat's own queues.
    #[arg(long, default_value = topology::CUSTOM_EXCHANGE)]
    pub exchange: String,

    /// Routing key; custom.# reaches custom_messages, other keys of catalog.custom land
    /// in the unrouted queue.
    #[arg(long, default_value = "custom.message")]
    pub routing_key: String,

    /// 0 to 10; honoured by queues with priorities (catalog.rpc).
    #[arg(long, default_value_t = 0)]
    pub priority: u8,

    /// Deliver no earlier than this (e.g. 500ms, 5s, 2m); at most 24h.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub delay: Option<Duration>,

    /// A header, NAME=VALUE (repeat for several); integers are sent as integers.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, HeaderValue)>,

    /// Not persistent (delivery mode 1): lost if the broker restarts before delivery.
    #[arg(long)]
    pub transient: bool,

    /// Wait this long (e.g. 5s) for the consumer's reply and print it; exits with an
    /// error if none comes. The custom-message consumer (custom_messages) answers once
    /// it has recorded the message. Not with --delay.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "delay")]
    pub wait: Option<Duration>,

    #[command(flatten)]
    pub producer: ProducerArgs,
}

impl PublishArgs {
    /// The message to send; reads standard input for `-`.
    pub fn outgoing(&self) -> std::io::Result<Outgoing> {
        let text = if self.message == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            self.message.clone()
        };
        let message = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok(Outgoing {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            message,
            priority: self.priority,
            delay: self.delay,
            headers: self.headers.iter().cloned().collect(),
            persistent: !self.transient,
        })
    }
}

fn parse_header(text: &str) -> Result<(String, HeaderValue), String> {
    let (name, value) = text
        .split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    let value = value
        .parse::<i64>()
        .map_or_else(|_| HeaderValue::from(value), HeaderValue::Int);
    Ok((name.to_owned(), value))
}

#[derive(Parser, Debug, Clone)]
pub struct WorkerCommand {
    #[command(flatten)]
    pub worker: WorkerArgs,

    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9090), so
    /// Prometheus and orchestrators reach the worker too. Off unless set.
    #[arg(long, env = "RETROCAT_LISTEN")]
    pub listen: Option<SocketAddr>,
}

#[derive(Parser, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

impl Command {
    /// Whether the command serves `/metrics`: `serve`, `api`, and `worker --listen`.
    pub fn serves_metrics(&self) -> bool {
        match self {
            Self::Serve(_) | Self::Api(_) => true,
            Self::Worker(worker) => worker.listen.is_some(),
            _ => false,
        }
    }

    /// `serve` with its defaults and environment: what runs when no command is given.
    pub fn default_serve() -> Self {
        Self::Serve(Box::new(ServeArgs::parse_from(["retrocat serve"])))
    }
}
