//! The producer routes' bodies: an event or a message to publish, or the errors
//! they answer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| retrocat::api::fuzz::message_bodies(body));
