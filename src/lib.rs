//! retrocat — the Retro Gaming Catalog on a message-oriented architecture.
//!
//! A write to the catalog and the event that describes it commit together; everything
//! that follows happens in the background, through a broker, and survives crashes.
//! Read the modules in this order:
//!
//! - [`domain`]: games, platforms, genres and game events, parsed once at the edge so
//!   the rest of the code can trust them.
//! - [`storage`]: the catalog database, one trait per concern (catalog, processing,
//!   outbox…). Every catalog write also inserts its event into the *outbox* in the same
//!   transaction, so an event is never lost nor invented.
//! - [`outbox`]: the *relay*, which publishes outbox rows to the broker in batches and
//!   marks them sent only once the broker has confirmed them.
//! - [`broker`]: what a message broker must do (the [`broker::Broker`] trait), the
//!   embedded SQLite-backed broker used by default, and the topology every role declares.
//! - [`processing`]: the worker that consumes `game_events`, derives thumbnails, retries
//!   with backoff and dead-letters what cannot succeed. An *inbox* of processed event ids
//!   makes redeliveries harmless.
//! - [`producer`]: sends custom messages to any exchange, with priority, delay and
//!   headers, for the API's producer routes and `retrocat publish`.
//! - [`auth`]: who may change what: roles, accounts, tokens and protected mode.
//! - [`api`]: the HTTP API (the original system's routes and shapes, plus ours) and the
//!   live stream of processing updates.
//! - [`web`]: the web UI, its assets embedded in the binary.
//! - [`bench`]: `retrocat bench`, a load generator that measures a running system
//!   through its API against the ceiling of its broker.
//! - [`config`], [`cli`], [`telemetry`], [`shutdown`], [`backoff`] and [`startup`]: how a
//!   process reads its settings, logs, stops cleanly, reconnects, and composes the roles
//!   (`serve` = `api` + `worker`); [`rate`] and [`sweep`]: the rate limits, and how the
//!   tables keyed by client or host stay bounded.
//!
//! No module depends on another in a circle: `scripts/module-cycles`, run by CI, checks.

pub mod api;
pub mod auth;
pub mod backoff;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod domain;
/// Proptest strategies of hostile input, shared by the property tests of every decoder
/// and parser that strangers reach.
#[cfg(test)]
mod hostile;
pub mod outbox;
pub mod processing;
pub mod producer;
pub mod rate;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod sweep;
pub mod telemetry;
pub mod web;

/// Installs ring as this process's TLS crypto provider, which every HTTP client needs:
/// reqwest is built without a default one (`rustls-no-provider`; its default needs
/// cmake). Installing twice is harmless.
pub fn install_crypto_provider() {
    // An error means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
