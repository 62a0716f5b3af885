//! What the cargo-fuzz targets in `fuzz/` drive in the HTTP API: the parser of each
//! query string and body a stranger sends. Built only with `--cfg fuzzing`, as
//! `cargo fuzz` builds; the message decoders they also drive are public already.

pub use super::games::fuzz::{game_body, list_query};
pub use super::messages::fuzz::message_bodies;
