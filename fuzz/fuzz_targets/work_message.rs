//! A message body from the broker, as a worker decodes it: a game event or the
//! original producer's custom message, or a reason to dead-letter it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retrocat::domain::{GameEvent, WorkMessage};

fuzz_target!(|body: &[u8]| {
    let _ = WorkMessage::decode(body, None);
    let _ = GameEvent::decode(body, Some("fuzz-message-id"));
});
