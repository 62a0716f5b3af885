//! Background processing of game events.
//!
//! [`worker`] consumes `game_events` and turns each event into its effect: the game's
//! status, its thumbnail ([`thumbnail`], from an uploaded cover or one fetched by
//! [`fetch`]), and an attempt in its history. [`retry`] decides what happens after a
//! failure: retry later with backoff, or dead-letter. [`subscriber`] keeps what the
//! audit subscribers and the custom-message consumer receive. [`retention`] prunes
//! that history, and the worker's, once older than `--retain`. [`pause`] stops and
//! restarts every consumer of a queue that an operator paused, and [`throttle`] keeps
//! a queue's processing within `--max-rate`.

pub mod fetch;
pub mod outcome;
pub mod pause;
pub mod retention;
pub mod retry;
pub mod subscriber;
pub mod throttle;
pub mod thumbnail;
pub mod worker;
