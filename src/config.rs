//! Configuration: command-line flag, then environment variable, then default.
//!
//! Every setting is a clap argument with an `env` fallback, so `--help` documents the
//! whole configuration and the defaults run the complete system with nothing installed.

mod broker;
mod secret;

pub use broker::BrokerArgs;

use crate::api::RouterConfig;
use crate::api::admission::AdmissionLimits;
use crate::api::server::ServerLimits;
use crate::auth::AuthMode;
use crate::outbox::RelayConfig;
use crate::processing::fetch::FetchConfig;
use crate::processing::fetch::breaker::BreakerConfig;
use crate::processing::retry::RetryPolicy;
use crate::processing::throttle::QueueRate;
use crate::processing::thumbnail::DecodeBudget;
use crate::processing::worker::WorkerConfig;
use crate::producer::PublishPolicy;
use crate::rate::RateLimit;
use crate::storage::PoolConfig;
use clap::Args;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::time::Duration;

/// The catalog database, shared by every role.
#[derive(Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// Catalog database: sqlite://PATH (default), postgres://… or mysql://… (MariaDB too)
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/retrocat.db",
        global = true
    )]
    pub database_url: String,

    /// Connections in the catalog database's pool, at most [default: 8 for SQLite, 16
    /// for PostgreSQL and MySQL]. Mind the server's own connection limit, shared by
    /// every process. On SQLite also the read connections kept open, and the lists
    /// read at once.
    #[arg(long, env = "RETROCAT_DB_MAX_CONNECTIONS", global = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub db_max_connections: Option<u32>,

    /// How long a request waits for a free database connection before it fails with
    /// 503 [default: 5s].
    #[arg(long, env = "RETROCAT_DB_ACQUIRE_TIMEOUT", global = true,
          value_parser = parse_positive_duration)]
    pub db_acquire_timeout: Option<Duration>,
}

/// What a cover image may take to decode, at upload and in the worker.
#[derive(Args, Clone, Debug)]
pub struct CoverArgs {
    /// Most memory decoding one cover image may take, in bytes, decoded pixels included:
    /// checked from the image's header at upload (422 above it) and before the worker
    /// decodes one. Decodes run one per core at most.
    #[arg(long, env = "RETROCAT_MAX_IMAGE_MEMORY", global = true,
          default_value_t = DecodeBudget::default().max_bytes,
          value_parser = clap::value_parser!(u64).range(1024 * 1024..))]
    pub max_image_memory: u64,
}

/// A duration such as `500ms` or `5s`; zero would make every wait fail at once.
fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(duration) if duration.is_zero() => Err("must be longer than 0s".into()),
        Ok(duration) => Ok(duration),
        Err(e) => Err(format!("{e} (expected e.g. 500ms, 5s, 1m)")),
    }
}

impl CoverArgs {
    pub fn decode_budget(&self) -> DecodeBudget {
        DecodeBudget {
            max_bytes: self.max_image_memory,
        }
    }
}

impl DatabaseArgs {
    /// The pool limits set here, the defaults for the rest.
    pub fn pool(&self) -> PoolConfig {
        let defaults = PoolConfig::default();
        PoolConfig {
            max_connections: self.db_max_connections.or(defaults.max_connections),
            acquire_timeout: self.db_acquire_timeout.unwrap_or(defaults.acquire_timeout),
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

    /// Names clients call this server by, besides IP addresses and localhost
    /// (repeatable or comma-separated: URLs such as https://catalog.example.com, or bare
    /// names such as a compose service's). A request whose Host names anything else gets
    /// a 421, which defeats DNS rebinding.
    #[arg(long = "public-url", env = "RETROCAT_PUBLIC_URLS", value_delimiter = ',',
          value_parser = crate::api::host::public_host)]
    pub public_hosts: Vec<String>,

    /// Largest request body accepted, in bytes (covers included).
    #[arg(long, env = "RETROCAT_MAX_BODY_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Live streams (GET /api/stream) open at once; past it, a new one gets a 503 with
    /// Retry-After. Each open stream holds about 84 KB (5,000 took 418 MB): 1000 keep
    /// them under about 90 MB, well above what one team's browsers open.
    #[arg(long, env = "RETROCAT_MAX_STREAM_SUBSCRIBERS",
          default_value_t = crate::api::stream::DEFAULT_MAX_SUBSCRIBERS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stream_subscribers: u32,

    /// Events waiting in the outbox for the broker past which catalog writes are
    /// refused with 503 and Retry-After, until the relay catches up; reads are still
    /// served. An outbox row takes about 500 bytes.
    #[arg(long, env = "RETROCAT_MAX_OUTBOX_BACKLOG",
          default_value_t = crate::api::admission::DEFAULT_MAX_BACKLOG,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_outbox_backlog: u64,

    /// Requests each client address may make to /api/, e.g. 50/s or 600/m, in bursts
    /// of as many; past it, 429 with Retry-After. Clients are told apart by address,
    /// so behind a proxy limit at the proxy. Unset: no limit.
    #[arg(long, env = "RETROCAT_RATE_LIMIT")]
    pub rate_limit: Option<RateLimit>,

    /// Also refuse catalog writes while the oldest event in the outbox has waited
    /// longer than this for the broker (e.g. 5m). Unset: its age is no limit.
    #[arg(long, env = "RETROCAT_MAX_OUTBOX_AGE", value_parser = parse_positive_duration)]
    pub max_outbox_age: Option<Duration>,

    /// Most ready messages game_events may hold: past it, the outbox relay waits, and
    /// the events wait in the outbox until the workers make room (catalog writes go on,
    /// up to --max-outbox-backlog). Retries and other processes' relays may still add
    /// to the queue. Unset: no bound.
    #[arg(long, env = "RETROCAT_MAX_QUEUE_LENGTH")]
    pub max_queue_length: Option<NonZeroU64>,

    /// Events published per broker round trip by the outbox relay, and at most awaiting
    /// the broker's confirms at once.
    #[arg(long, env = "RETROCAT_RELAY_BATCH", default_value_t = 500)]
    pub relay_batch: u32,

    /// Connections served at once; more wait, unanswered, until one closes.
    #[arg(long, env = "RETROCAT_MAX_CONNECTIONS", default_value_t = ServerLimits::default().max_connections,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Time a client has to send a request's headers, from the connection's start or
    /// the end of the previous response: a slow or idle connection is closed after it,
    /// so it is also the keep-alive idle timeout.
    #[arg(long, env = "RETROCAT_HEADER_READ_TIMEOUT", default_value = "10s",
          value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,

    /// After SIGTERM, how long requests in progress may take to finish before every
    /// connection still open is closed, whatever its client does.
    #[arg(long, env = "RETROCAT_SHUTDOWN_DEADLINE", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub shutdown_deadline: Duration,

    #[command(flatten)]
    pub producer: ProducerArgs,

    #[command(flatten)]
    pub auth: AuthArgs,
}

/// Who may change what (see README, "Security").
#[derive(Args, Clone, Debug)]
pub struct AuthArgs {
    /// When a request without a token may write. protected: peers on loopback may, while
    /// no user and no token exists (`retrocat user add` ends it); others get 401.
    /// required: never, from the start. Behind a proxy on the same host every peer is
    /// loopback: use required there.
    #[arg(long = "auth", env = "RETROCAT_AUTH", value_enum, default_value_t = AuthMode::Protected)]
    pub mode: AuthMode,

    /// How long the token of a login (POST /api/auth/login) lasts.
    #[arg(long, env = "RETROCAT_SESSION_TTL", default_value = "12h",
          value_parser = parse_session_ttl)]
    pub session_ttl: chrono::TimeDelta,
}

/// A login's lifetime: a minute to a year.
fn parse_session_ttl(value: &str) -> Result<chrono::TimeDelta, String> {
    let ttl = parse_positive_duration(value)?;
    if !(Duration::from_secs(60)..=Duration::from_secs(366 * 24 * 60 * 60)).contains(&ttl) {
        return Err("from 1m to 1year".into());
    }
    chrono::TimeDelta::from_std(ttl).map_err(|e| e.to_string())
}

/// What clients may publish to through `POST /api/messages` and `retrocat publish`.
#[derive(Args, Clone, Debug)]
pub struct ProducerArgs {
    /// Exchanges that POST /api/messages and `retrocat publish` may send to
    /// (comma-separated); "" or amq.default names the default exchange, which still
    /// never delivers to retrocat's own queues. Each exchange listed is open to every
    /// routing key: catalog.events or catalog.dlx would let clients forge events or
    /// dead letters. The original producer's routes are not limited by it.
    #[arg(long, env = "RETROCAT_PUBLISH_EXCHANGES", value_delimiter = ',',
          default_value = crate::broker::topology::CUSTOM_EXCHANGE,
          value_parser = parse_exchange)]
    pub publish_exchanges: Vec<String>,
}

/// An exchange name as AMQP takes it: at most 255 bytes (spaces around it dropped).
fn parse_exchange(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.len() > 255 {
        return Err("an exchange name has at most 255 bytes".into());
    }
    Ok(name.to_owned())
}

/// A worker's name: 1 to 255 characters, none of them a control character (it is
/// shown in the pages and logs, and keys the worker's open circuits in the database).
fn parse_worker_id(name: &str) -> Result<String, String> {
    if name.is_empty() || name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err("a worker id has 1 to 255 characters, and no control characters".into());
    }
    Ok(name.to_owned())
}

impl ProducerArgs {
    pub fn policy(&self) -> PublishPolicy {
        PublishPolicy::new(&self.publish_exchanges)
    }
}

impl HttpArgs {
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.port)))
    }

    pub fn router(&self) -> RouterConfig {
        RouterConfig {
            cors_origins: self.cors_origins.clone(),
            public_hosts: self.public_hosts.clone(),
            max_body_bytes: self.max_body_bytes,
            rate_limit: self.rate_limit,
        }
    }

    pub fn admission(&self) -> AdmissionLimits {
        AdmissionLimits {
            max_backlog: self.max_outbox_backlog,
            max_age: self.max_outbox_age,
        }
    }

    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            shutdown_deadline: self.shutdown_deadline,
        }
    }

    pub fn relay(&self) -> RelayConfig {
        RelayConfig {
            batch_size: self.relay_batch.max(1),
            max_queue_length: self.max_queue_length,
            ..RelayConfig::default()
        }
    }
}

/// Background processing.
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Events processed at the same time by this process. Their status writes share
    /// transactions, so more in flight means larger batches (covers are still fetched
    /// at most 16 at a time).
    #[arg(long, env = "RETROCAT_WORKER_CONCURRENCY", default_value_t = 128)]
    pub concurrency: usize,

    /// Unacknowledged deliveries the broker may push ahead (consumer QoS).
    #[arg(long, env = "RETROCAT_PREFETCH", default_value_t = 256)]
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

    /// Failures of a cover host (timeouts, network errors, 5xx) within
    /// --breaker-window that open its circuit breaker: its covers are then not fetched
    /// until --breaker-cool-down has passed, and the games wait without using up an
    /// attempt.
    #[arg(long, env = "RETROCAT_BREAKER_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failures: u32,

    /// How far back a cover host's failures count toward opening its breaker.
    #[arg(long, env = "RETROCAT_BREAKER_WINDOW", default_value = "30s", value_parser = parse_positive_duration)]
    pub breaker_window: Duration,

    /// How long an open breaker refuses a host before one fetch probes it again.
    #[arg(long, env = "RETROCAT_BREAKER_COOL_DOWN", default_value = "30s", value_parser = parse_positive_duration)]
    pub breaker_cool_down: Duration,

    /// Fetches of covers from one host (HOST:PORT) a worker makes, e.g. 10/s, in bursts
    /// of as many; more wait their turn. Unset: no limit.
    #[arg(long, env = "RETROCAT_FETCH_RATE_PER_HOST")]
    pub fetch_rate_per_host: Option<RateLimit>,

    /// Time limit for fetching one cover image.
    #[arg(long, env = "RETROCAT_FETCH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,

    /// Largest cover image fetched, in bytes.
    #[arg(long, env = "RETROCAT_FETCH_MAX_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub fetch_max_bytes: usize,

    /// Name recorded with each processing attempt (default: HOST-PID), to tell
    /// workers apart in a game's history.
    #[arg(long, env = "RETROCAT_WORKER_ID", value_parser = parse_worker_id)]
    pub worker_id: Option<String>,

    /// Deliveries of a queue processed per second or minute by every worker together:
    /// QUEUE=RATE, e.g. game_events=200/s (catalog.rpc too), repeated or
    /// comma-separated. Each worker takes its share, by its part of the queue's
    /// consumers, read every 2 s. Unset: as fast as the workers go.
    #[arg(long, env = "RETROCAT_MAX_RATE", value_delimiter = ',')]
    pub max_rate: Vec<QueueRate>,

    /// Subscribers of every domain event this process runs, each with its own queue and
    /// log (`GET /api/audit?subscriber=NAME`): `audit` is the audit log; more names
    /// (e.g. audit,archive) add independent subscribers.
    #[arg(long, env = "RETROCAT_SUBSCRIBERS", default_value = "audit", value_delimiter = ',',
          value_parser = crate::processing::subscriber::parse_name)]
    pub subscribers: Vec<String>,

    /// How long in-flight events may take to finish after SIGTERM.
    #[arg(long, env = "RETROCAT_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How long history is kept: the audit log and received custom messages, the inbox
    /// of processed event ids, and finished processing attempts (a game keeps those of
    /// its current version and its latest). Each serve and worker process prunes older
    /// rows every 5 minutes; dead letters are never pruned. At least 1h: an event
    /// redelivered after its inbox row is gone is processed again, and only its version
    /// then keeps it from changing a game that moved on or completed.
    #[arg(long, env = "RETROCAT_RETAIN",
          default_value = crate::processing::retention::DEFAULT_RETAIN,
          value_parser = crate::processing::retention::parse_retain)]
    pub retain: Duration,
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
            max_rates: self.max_rate.clone(),
            ..WorkerConfig::default()
        }
    }

    pub fn fetch(&self) -> FetchConfig {
        FetchConfig {
            timeout: self.fetch_timeout,
            max_bytes: self.fetch_max_bytes,
            allow_private: self.allow_private_fetch,
            rate_per_host: self.fetch_rate_per_host,
            breaker: BreakerConfig {
                failures: self.breaker_failures,
                window: self.breaker_window,
                cool_down: self.breaker_cool_down,
            },
            ..FetchConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::Cli;
    use crate::storage::PoolConfig;
    use clap::Parser;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([&["retrocat"], args, &["migrate"]].concat())
    }

    #[test]
    fn pool_flags_set_the_pool_and_default_to_the_backends_choice() {
        let cli = parse(&["--db-max-connections", "3", "--db-acquire-timeout", "250ms"]).unwrap();
        let expected = PoolConfig {
            max_connections: Some(3),
            acquire_timeout: Duration::from_millis(250),
        };
        assert_eq!(cli.database.pool(), expected);
        assert_eq!(parse(&[]).unwrap().database.pool(), PoolConfig::default());
    }

    #[test]
    fn bad_pool_flags_are_refused_with_the_flag_and_the_reason() {
        for (args, reason) in [
            (["--db-max-connections", "0"], "not in 1.."),
            (["--db-max-connections", "many"], "invalid digit"),
            (["--db-acquire-timeout", "0s"], "must be longer than 0s"),
            (["--db-acquire-timeout", "soon"], "expected e.g. 500ms"),
        ] {
            let error = parse(&args).unwrap_err().to_string();
            assert!(error.contains(args[0]), "{args:?}: {error}");
            assert!(error.contains(reason), "{args:?}: {error}");
        }
    }

    #[test]
    fn a_worker_id_that_is_empty_too_long_or_has_control_characters_is_refused() {
        let worker = |id: &str| Cli::try_parse_from(["retrocat", "worker", "--worker-id", id]);
        let long = "w".repeat(256);
        for id in ["", long.as_str(), "w1\nforged log line"] {
            let error = worker(id).expect_err(id).to_string();
            assert!(
                error.contains("a worker id has 1 to 255 characters"),
                "{error}"
            );
        }
        assert!(worker("host-a-1234").is_ok());
    }

    #[test]
    fn require_sealed_without_message_keys_is_refused_with_what_to_do() {
        let error = parse(&["--require-sealed"])
            .unwrap()
            .broker
            .sealing()
            .unwrap_err();
        assert!(error.contains("set RETROCAT_MESSAGE_KEYS"), "{error}");
        let key = "a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let sealed = parse(&["--require-sealed", "--message-keys", key]).unwrap();
        assert!(sealed.broker.require_sealed);
        assert!(sealed.broker.sealing().unwrap().is_some());
        let plain = parse(&[]).unwrap();
        assert!(!plain.broker.require_sealed);
        assert!(plain.broker.sealing().unwrap().is_none());
    }
}
