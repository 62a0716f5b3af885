//! A sealed message from the broker, with any body: it opens, or is refused with a
//! reason, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use retrocat::broker::Message;
use retrocat::broker::sealed::MessageKeys;

const KEY: &str = "a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fuzz_target!(|body: &[u8]| {
    let keys = MessageKeys::parse(KEY).expect("a valid key");
    // Sealed as retrocat seals, so its headers say which key; then any body.
    let mut message = Message {
        body: Vec::new().into(),
        properties: Default::default(),
    };
    keys.seal(&mut message);
    message.body = body.to_vec().into();
    let _ = keys.open(&mut message);
});
