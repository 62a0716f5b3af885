//! `POST /api/games`'s body: a game draft, or the errors it answers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| retrocat::api::fuzz::game_body(body));
