//! The command line: one binary, one subcommand per role (DESIGN.md).

use crate::config::{HttpArgs, StorageArgs, WorkerArgs};
use clap::{Parser, Subcommand};

/// The Retro Gaming Catalog on a message-oriented architecture.
///
/// Without a command, runs `serve`: the whole system in one process, with an SQLite
/// database and the embedded broker under ./data. Open http://127.0.0.1:8080.
#[derive(Parser, Debug)]
#[command(name = "retrocat", version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub storage: StorageArgs,

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
    Serve(ServeArgs),
    /// HTTP API, web UI, outbox relay and live-feed subscriber.
    Api(HttpArgs),
    /// Consumers only; run several to share the work.
    Worker(WorkerArgs),
    /// Apply database migrations (schema and seed data) and exit.
    Migrate,
}

#[derive(Parser, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

impl Command {
    /// `serve` with its defaults and environment: what runs when no command is given.
    pub fn default_serve() -> Self {
        Self::Serve(ServeArgs::parse_from(["retrocat serve"]))
    }
}
