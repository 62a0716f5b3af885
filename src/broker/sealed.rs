//! Message encryption: a [`Broker`] that seals every body it publishes and opens every
//! body it delivers, around any other broker.
//!
//! Bodies are sealed with XChaCha20-Poly1305 (RustCrypto): a random 24-byte nonce, then
//! the ciphertext and its tag. The key's id travels in the `x-key-id` header so keys can
//! rotate: the first key of `RETROCAT_MESSAGE_KEYS` seals, every listed key opens. The
//! message id is authenticated with the body, so a ciphertext cannot be passed off as
//! another message.
//!
//! Nothing is dropped. A delivery that cannot be opened (unknown key, tampered bytes)
//! goes to its queue's dead-letter queue with the reason. A queue without one (a
//! dead-letter queue itself, `unrouted`, a subscriber's queue) cannot send it anywhere,
//! and dropping it would lose what may be the only copy: its consumer gets it as it is,
//! still sealed, with the reason in the [`headers::UNOPENABLE`] header (so
//! `GET /api/dlq` lists it, and it stays in the queue).
//!
//! Off by default: consumers that expect plain JSON, such as the original system's,
//! cannot read sealed messages. Plain messages are still delivered as they are, so those
//! clients' messages keep working; encryption then keeps payloads confidential on the
//! broker, it does not authenticate producers. With `--require-sealed`
//! ([`SealedBroker::requiring_sealed`]) it does: a plain message that reaches a queue with
//! a dead-letter queue (`game_events`, `catalog.rpc`, `custom_messages`: the queues whose
//! messages cause work) is dead-lettered unprocessed, so only holders of a key get work
//! done.

use super::{
    Broker, BrokerError, Confirms, Consumer, Delivery, ExchangeSpec, Message, Publish, QueueSpec,
    QueueStats, headers,
};
use async_trait::async_trait;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The cipher a sealed message names in its `x-encryption` header.
pub const CIPHER: &str = "xchacha20poly1305";
const NONCE_LEN: usize = 24;

/// The keys messages are sealed and opened with.
pub struct MessageKeys {
    current: String,
    ciphers: HashMap<String, XChaCha20Poly1305>,
}

impl std::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("MessageKeys")
            .field("current", &self.current)
            .field("ids", &self.ciphers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MessageKeys {
    /// Parses `ID:BASE64KEY,ID:BASE64KEY,…`, each key 32 random bytes (e.g.
    /// `openssl rand -base64 32`); the first seals.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut current = None;
        let mut ciphers = HashMap::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, key) = entry
                .split_once(':')
                .filter(|(id, _)| !id.is_empty())
                .ok_or_else(|| format!("{entry:?} is not ID:BASE64KEY"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(key)
                .map_err(|e| format!("key {id:?} is not base64: {e}"))?;
            let key = Key::try_from(bytes.as_slice())
                .map_err(|_| format!("key {id:?} has {} bytes; it needs 32", bytes.len()))?;
            if ciphers
                .insert(id.to_owned(), XChaCha20Poly1305::new(&key))
                .is_some()
            {
                return Err(format!("key id {id:?} appears twice"));
            }
            current.get_or_insert_with(|| id.to_owned());
        }
        let current = current.ok_or("no keys: expected ID:BASE64KEY[,ID:BASE64KEY…]")?;
        Ok(Self { current, ciphers })
    }

    fn aad(message: &Message) -> Vec<u8> {
        let id = message.properties.message_id.as_deref().unwrap_or("");
        format!("retrocat/{CIPHER}/{id}").into_bytes()
    }

    /// Replaces the body with its sealed form and names the key in the headers.
    pub fn seal(&self, message: &mut Message) {
        let cipher = &self.ciphers[&self.current];
        let nonce = XNonce::generate();
        let aad = Self::aad(message);
        let payload = Payload {
            msg: &message.body,
            aad: &aad,
        };
        let sealed = cipher
            .encrypt(&nonce, payload)
            .expect("XChaCha20-Poly1305 seals any message that fits in memory");
        let mut body = Vec::with_capacity(NONCE_LEN + sealed.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&sealed);
        message.body = body.into();
        let headers = &mut message.properties.headers;
        headers.insert(headers::ENCRYPTION.into(), CIPHER.into());
        headers.insert(headers::KEY_ID.into(), self.current.as_str().into());
    }

    /// Opens a sealed body in place; a plain message is left as it is.
    pub fn open(&self, message: &mut Message) -> Result<(), String> {
        let Some(cipher_name) = message.properties.header_str(headers::ENCRYPTION) else {
            return Ok(());
        };
        if cipher_name != CIPHER {
            return Err(format!("cannot decrypt: unknown cipher {cipher_name:?}"));
        }
        let key_id = message
            .properties
            .header_str(headers::KEY_ID)
            .ok_or("cannot decrypt: no x-key-id header")?;
        let cipher = self.ciphers.get(key_id).ok_or_else(|| {
            format!("cannot decrypt: unknown key id {key_id:?} (not in RETROCAT_MESSAGE_KEYS)")
        })?;
        if message.body.len() < NONCE_LEN {
            return Err("cannot decrypt: body shorter than a nonce".into());
        }
        let (nonce, sealed) = message.body.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).expect("split at the nonce length");
        let aad = Self::aad(message);
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| format!("cannot decrypt with key {key_id:?}: tampered or wrong key"))?;
        message.body = plain.into();
        let headers = &mut message.properties.headers;
        headers.remove(headers::ENCRYPTION);
        headers.remove(headers::KEY_ID);
        Ok(())
    }
}

/// Why `--require-sealed` refused a plain message, in its dead letter.
pub const PLAIN_REFUSED: &str = "plain message refused: --require-sealed \
    (RETROCAT_REQUIRE_SEALED) accepts only messages sealed with a key of RETROCAT_MESSAGE_KEYS";

/// Any broker, with every body sealed on the way in and opened on the way out.
pub struct SealedBroker {
    inner: Arc<dyn Broker>,
    keys: Arc<MessageKeys>,
    /// Queues declared (by this process) with a dead-letter queue: where a message that
    /// cannot be opened, or a refused plain one, is dead-lettered. Any other queue's
    /// consumer gets it as it is, marked (see the module's comment).
    with_dlq: Mutex<HashSet<String>>,
    /// Dead-letter plain messages on queues with a dead-letter queue.
    require_sealed: bool,
}

impl SealedBroker {
    pub fn new(inner: Arc<dyn Broker>, keys: Arc<MessageKeys>) -> Self {
        Self {
            inner,
            keys,
            with_dlq: Mutex::default(),
            require_sealed: false,
        }
    }

    /// With `require`, a plain message on a queue with a dead-letter queue is
    /// dead-lettered with [`PLAIN_REFUSED`] instead of delivered (`--require-sealed`).
    pub fn requiring_sealed(mut self, require: bool) -> Self {
        self.require_sealed = require;
        self
    }
}

#[async_trait]
impl Broker for SealedBroker {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn declare_exchange(&self, spec: &ExchangeSpec) -> Result<(), BrokerError> {
        self.inner.declare_exchange(spec).await
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        self.inner.declare_queue(spec).await?;
        let mut with_dlq = self.with_dlq.lock().expect("queue set lock");
        if spec.dead_letter_queue.is_some() {
            with_dlq.insert(spec.name.clone());
        } else {
            with_dlq.remove(&spec.name);
        }
        Ok(())
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        pattern: &str,
    ) -> Result<(), BrokerError> {
        self.inner.bind_queue(queue, exchange, pattern).await
    }

    async fn delete_queue(&self, name: &str) -> Result<(), BrokerError> {
        self.inner.delete_queue(name).await
    }

    async fn send(&self, mut batch: Vec<Publish>) -> Result<Confirms, BrokerError> {
        for publish in &mut batch {
            self.keys.seal(&mut publish.message);
        }
        self.inner.send(batch).await
    }

    async fn request(
        &self,
        mut publish: Publish,
        timeout: Duration,
    ) -> Result<Message, BrokerError> {
        self.keys.seal(&mut publish.message);
        let mut reply = self.inner.request(publish, timeout).await?;
        self.keys.open(&mut reply).map_err(BrokerError::Other)?;
        Ok(reply)
    }

    fn waiting_requests(&self) -> usize {
        self.inner.waiting_requests()
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
        let mut inner = self.inner.consume(queue, prefetch).await?;
        let opener = Opener {
            keys: self.keys.clone(),
            has_dlq: self
                .with_dlq
                .lock()
                .expect("queue set lock")
                .contains(queue),
            require_sealed: self.require_sealed,
            queue: queue.to_owned(),
        };
        let (sender, receiver) = mpsc::channel(usize::from(prefetch.max(1)));
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inner.next() => next,
                    () = sender.closed() => break,
                };
                let Some(delivery) = next else { break };
                let Some(delivery) = opener.open(delivery).await else {
                    continue;
                };
                if sender.send(delivery).await.is_err() {
                    break;
                }
            }
        });
        Ok(Consumer::new(receiver))
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        self.inner.queue_stats(queue).await
    }

    async fn queue_glance(&self, queue: &str) -> Result<QueueStats, BrokerError> {
        self.inner.queue_glance(queue).await
    }

    async fn ping(&self) -> Result<(), BrokerError> {
        self.inner.ping().await
    }

    async fn close(&self) -> Result<(), BrokerError> {
        self.inner.close().await
    }
}

/// Opens the deliveries of one consumer.
struct Opener {
    keys: Arc<MessageKeys>,
    has_dlq: bool,
    require_sealed: bool,
    queue: String,
}

impl Opener {
    /// The delivery, opened; or, when it cannot be opened or is a refused plain one,
    /// `None` once it is dead-lettered, or the delivery as it is, marked with the reason,
    /// on a queue without a dead-letter queue. Never dropped: a read must not lose data.
    async fn open(&self, mut delivery: Delivery) -> Option<Delivery> {
        let message = &mut delivery.message;
        // Only this layer says why a body could not be opened; a sender cannot.
        message.properties.headers.remove(headers::UNOPENABLE);
        let plain = message.properties.header_str(headers::ENCRYPTION).is_none();
        let refused = if plain && self.require_sealed && self.has_dlq {
            Err(PLAIN_REFUSED.to_owned())
        } else {
            self.keys.open(message)
        };
        let Err(reason) = refused else {
            return Some(delivery);
        };
        let queue = &self.queue;
        if !self.has_dlq {
            tracing::warn!(%queue, %reason, "message handed on unopened: its queue has no dead-letter queue");
            let headers = &mut delivery.message.properties.headers;
            headers.insert(headers::UNOPENABLE.into(), reason.into());
            return Some(delivery);
        }
        tracing::warn!(%queue, %reason, "message dead-lettered unopened");
        if let Err(error) = delivery.dead_letter(&reason).await {
            // Unsettled, it goes back to the queue: delivered again, never lost.
            tracing::warn!(%queue, %error, "could not dead-letter an unopened message; it will come back");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Properties;

    const KEY_A: &str = "a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "b:HxscGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQAfHh0=";

    fn message(body: &str) -> Message {
        Message {
            body: body.as_bytes().to_vec().into(),
            properties: Properties::json("event-1"),
        }
    }

    #[test]
    fn a_sealed_message_opens_to_the_original() {
        let keys = MessageKeys::parse(KEY_A).unwrap();
        let mut sealed = message(r#"{"gameId":1}"#);
        keys.seal(&mut sealed);
        assert!(!String::from_utf8_lossy(&sealed.body).contains("gameId"));
        assert_eq!(sealed.properties.header_str(headers::KEY_ID), Some("a"));
        keys.open(&mut sealed).unwrap();
        assert_eq!(sealed, message(r#"{"gameId":1}"#));
    }

    #[test]
    fn after_rotation_the_old_key_still_opens() {
        let old = MessageKeys::parse(KEY_A).unwrap();
        let rotated = MessageKeys::parse(&format!("{KEY_B},{KEY_A}")).unwrap();
        let mut sealed = message("before the rotation");
        old.seal(&mut sealed);
        rotated.open(&mut sealed).unwrap();
        assert_eq!(sealed.body.as_ref(), b"before the rotation");
        let mut fresh = message("after");
        rotated.seal(&mut fresh);
        assert_eq!(fresh.properties.header_str(headers::KEY_ID), Some("b"));
    }

    #[test]
    fn tampering_an_unknown_key_or_another_message_id_fails_with_a_reason() {
        let keys = MessageKeys::parse(KEY_A).unwrap();
        let mut sealed = message("secret");
        keys.seal(&mut sealed);

        let mut tampered = sealed.clone();
        let mut bytes = tampered.body.to_vec();
        *bytes.last_mut().unwrap() ^= 1;
        tampered.body = bytes.into();
        assert!(keys.open(&mut tampered).unwrap_err().contains("tampered"));

        let mut moved = sealed.clone();
        moved.properties.message_id = Some("event-2".into());
        assert!(keys.open(&mut moved).is_err());

        let other = MessageKeys::parse(KEY_B).unwrap();
        assert!(
            other
                .open(&mut sealed)
                .unwrap_err()
                .contains("unknown key id")
        );
    }

    #[test]
    fn key_lists_are_checked() {
        for bad in [
            "",
            "a",
            ":AAAA",
            "a:not base64!",
            "a:AAAA",
            &format!("{KEY_A},{KEY_A}"),
        ] {
            assert!(MessageKeys::parse(bad).is_err(), "{bad:?}");
        }
    }

    mod properties {
        use super::*;
        use crate::hostile::{self, nasty_string};
        use proptest::collection::vec;
        use proptest::option;
        use proptest::prelude::*;
        use proptest::sample::Index;

        /// A message as a client may publish it: any body, message id and headers but
        /// those only retrocat sets (`PublishPolicy` refuses them before sealing).
        fn message() -> impl Strategy<Value = Message> {
            let name = nasty_string().prop_filter("not reserved", |n| !headers::is_reserved(n));
            hostile::message(name, 3)
        }

        proptest! {
            #![proptest_config(hostile::config(256))]

            #[test]
            fn a_sealed_message_opens_to_the_original(original in message()) {
                let keys = MessageKeys::parse(&format!("{KEY_B},{KEY_A}")).unwrap();
                let mut sealed = original.clone();
                keys.seal(&mut sealed);
                prop_assert_ne!(&sealed.body, &original.body);
                keys.open(&mut sealed).unwrap();
                prop_assert_eq!(sealed, original);
            }

            /// One flipped bit anywhere in the sealed body, or another message id, and
            /// the message does not open: no panic, and no other plaintext.
            #[test]
            fn a_tampered_message_never_opens(
                original in message(),
                bit in any::<Index>(),
                other_id in option::of(nasty_string()),
            ) {
                let keys = MessageKeys::parse(KEY_A).unwrap();
                let mut sealed = original.clone();
                keys.seal(&mut sealed);

                let mut flipped = sealed.clone();
                let mut body = flipped.body.to_vec();
                let bit = bit.index(body.len() * 8);
                body[bit / 8] ^= 1 << (bit % 8);
                flipped.body = body.into();
                let before = flipped.clone();
                prop_assert!(keys.open(&mut flipped).is_err());
                prop_assert_eq!(&flipped, &before, "a refused message is left as it was");

                let mut moved = sealed.clone();
                moved.properties.message_id = other_id;
                // An absent id and an empty one authenticate alike: both are "no id".
                let same = moved.properties.message_id.as_deref().unwrap_or("")
                    == original.properties.message_id.as_deref().unwrap_or("");
                prop_assert_eq!(keys.open(&mut moved).is_ok(), same);

                let mut short = sealed;
                let len = short.body.len();
                short.body = short.body.slice(..len - 1);
                prop_assert!(keys.open(&mut short).is_err());
            }

            /// Bodies that claim to be sealed, with any cipher and key id: refused with a
            /// reason, never a panic; a plain message is left as it is.
            #[test]
            fn arbitrary_bodies_open_only_when_sealed_with_a_key(
                original in message(),
                cipher in option::of(prop_oneof![Just(CIPHER.to_owned()), nasty_string()]),
                key_id in option::of(prop_oneof![Just("a".to_owned()), nasty_string()]),
            ) {
                let keys = MessageKeys::parse(KEY_A).unwrap();
                let mut message = original.clone();
                let headers = &mut message.properties.headers;
                if let Some(cipher) = &cipher {
                    headers.insert(headers::ENCRYPTION.into(), cipher.as_str().into());
                }
                if let Some(key_id) = key_id {
                    headers.insert(headers::KEY_ID.into(), key_id.into());
                }
                let before = message.clone();
                let opened = keys.open(&mut message);
                match cipher {
                    None => prop_assert_eq!(opened, Ok(())),
                    Some(_) => prop_assert!(opened.unwrap_err().starts_with("cannot decrypt")),
                }
                prop_assert_eq!(message, before);
            }

            #[test]
            fn key_lists_parse_or_give_a_reason(
                spec in prop_oneof![
                    nasty_string(),
                    vec((nasty_string(), vec(any::<u8>(), 30..34)), 0..4).prop_map(|keys| {
                        keys.iter()
                            .map(|(id, key)| {
                                format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(key))
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    }),
                ],
                body in vec(any::<u8>(), 0..64),
            ) {
                match MessageKeys::parse(&spec) {
                    Ok(keys) => {
                        let original = Message {
                            body: body.into(),
                            properties: Properties::json("event-1"),
                        };
                        let mut sealed = original.clone();
                        keys.seal(&mut sealed);
                        keys.open(&mut sealed).unwrap();
                        prop_assert_eq!(sealed, original);
                    }
                    Err(reason) => prop_assert!(!reason.is_empty()),
                }
            }
        }
    }
}
