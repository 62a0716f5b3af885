//! `retrocat bench`: a load generator that drives a running system through its public
//! API, as its users do.
//!
//! A run has up to three steps, each with a progress bar on a terminal:
//! 1. *setup*: the games the workload needs (updates and reads need games to act on),
//!    created and processed before anything is measured;
//! 2. *ceiling*: a minimal confirmed-publish / acknowledged-consume loop on the same
//!    kind of broker the system runs on ([`ceiling`]), so that end-to-end figures read
//!    as a share of what the broker alone does on this machine, now;
//! 3. *load*: the workload's requests, at a fixed rate or flat out ([`load`]), while
//!    `GET /api/stream` tells which of the events they caused have been processed
//!    ([`tracker`]), and when: each event's create→completed time is taken from the
//!    server's own stamps, the write's `createdAt`/`updatedAt` to the `timestamp` of
//!    its `game.processed` (or `game.failed`), written with the game's final status.
//!
//! The [`report`] says what was measured and how; `--json` prints it for machines.

mod ceiling;
mod load;
mod report;
mod tracker;

use crate::config::BrokerArgs;
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use std::time::Duration;
use url::Url;

pub use report::Report;

/// What `retrocat bench` sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// `POST /api/games`: each create is one event to process.
    Create,
    /// `PUT /api/games/{id}` of games the setup created, each once: one event each.
    Update,
    /// `GET /api/games/{id}` of existing games.
    Read,
    /// `GET /api/games?limit=50`: the first page of the catalog.
    List,
    /// `GET /api/games?search=TITLE&limit=50`, TITLE that of an existing game: finding
    /// one game by name.
    Search,
    /// Of every 10 requests: 1 create, 1 update, 2 lists, 6 reads.
    Mixed,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of the running system (`retrocat serve` or `retrocat api`).
    #[arg(
        long,
        env = "RETROCAT_BENCH_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: Url,

    /// What to send.
    #[arg(long, value_enum, default_value_t = Workload::Create)]
    pub workload: Workload,

    /// Requests to send (the measured ones; the setup's come on top).
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub count: u64,

    /// Requests per second, started on a fixed schedule; unset: flat out.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,

    /// Requests in flight at once, at most (and HTTP connections).
    #[arg(long, default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,

    /// How long to wait, once the last request is answered, for the events to be
    /// processed; events still unprocessed then are reported as unfinished.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,

    /// Messages sent through the broker for its ceiling; 0 skips the ceiling. On
    /// RabbitMQ it needs RABBITMQ_URL (a queue `bench.ceiling.*` is made and deleted);
    /// for the embedded broker it uses a fresh broker file in the temporary directory.
    #[arg(long, default_value_t = 20_000)]
    pub ceiling_messages: u64,

    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// An editor's or admin's token (`retrocat token create`), sent with every request:
    /// needed once the system has accounts (protected mode lets loopback in before).
    #[arg(long, env = "RETROCAT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl BenchArgs {
    /// The URL of `path` on the system under test.
    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.url.as_str().trim_end_matches('/'))
    }
}

/// Runs the benchmark and prints its report; fails when a request failed or an event
/// was not processed, after printing the report that says so.
pub async fn run(args: BenchArgs, brokers: &BrokerArgs) -> anyhow::Result<()> {
    let client = load::client(&args)?;
    let broker = system_broker(&client, &args).await?;
    let pool = std::sync::Arc::new(load::setup(&client, &args).await?);
    let ceiling = match args.ceiling_messages {
        0 => None,
        messages => Some(ceiling::measure(&broker, brokers, messages).await?),
    };
    let tracker = tracker::Tracker::follow(&args).await?;
    let sent = load::send(&client, &args, &pool).await;
    let events = tracker.wait(&client, &args, &sent.expected).await;
    let report = Report::new(&args, broker, sent, events, ceiling);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    report.verdict()
}

/// Which broker the system under test runs on (`embedded` or `rabbitmq`), from its
/// `/health`; also shows early that the URL is a retrocat.
async fn system_broker(client: &reqwest::Client, args: &BenchArgs) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct Health {
        broker: String,
    }
    let url = args.endpoint("/health");
    let fail = || format!("no retrocat answers at {url}: start one (retrocat serve) or set --url");
    let response = client.get(&url).send().await.with_context(fail)?;
    if !response.status().is_success() {
        bail!("{}: {}", fail(), response.status());
    }
    let health: Health = response.json().await.with_context(fail)?;
    Ok(health.broker)
}
