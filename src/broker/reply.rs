//! Request/reply, the requester's side, shared by both brokers.
//!
//! A request carries a correlation id and the address its reply comes back to
//! (`reply_to`); whoever handles it publishes the answer to that address with the same
//! correlation id ([`Message::reply`]). On RabbitMQ the address is direct reply-to: no
//! queue to declare or clean up, the reply goes straight to the requesting channel. The
//! embedded broker answers to the same name in-process.
//!
//! The requester keeps one entry per request in flight, removed when its reply arrives,
//! when the wait times out, or when the caller gives up and drops the future. A reply
//! that comes later finds no entry and is dropped, as RabbitMQ drops a reply whose
//! requester has gone: nothing is left behind by callers that stop waiting.

use super::{BrokerError, Message, Publish};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// RabbitMQ's direct reply-to pseudo-queue; the embedded broker uses the same name.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// True for a routing key (on the default exchange) that addresses a waiting requester.
pub fn is_reply_address(routing_key: &str) -> bool {
    routing_key.starts_with(DIRECT_REPLY_TO)
}

/// The requests of one broker handle that wait for their reply, by correlation id.
#[derive(Debug, Default)]
pub struct Replies {
    waiting: Mutex<HashMap<String, oneshot::Sender<Message>>>,
}

impl Replies {
    /// Registers a new request; its entry lasts as long as the returned [`PendingReply`].
    pub fn expect(self: &Arc<Self>) -> PendingReply {
        let correlation_id = uuid::Uuid::now_v7().to_string();
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(correlation_id.clone(), sender);
        PendingReply {
            replies: self.clone(),
            correlation_id,
            receiver,
        }
    }

    /// Hands a reply to the request it answers. False when nobody waits for it (the
    /// requester timed out or gave up, or the correlation id is not ours): it is dropped.
    pub fn deliver(&self, reply: Message) -> bool {
        let waiter = reply
            .properties
            .correlation_id
            .as_deref()
            .and_then(|id| self.lock().remove(id));
        match waiter {
            Some(waiter) => waiter.send(reply).is_ok(),
            None => {
                tracing::debug!(
                    correlation_id = reply.properties.correlation_id,
                    "reply for no waiting request dropped"
                );
                false
            }
        }
    }

    /// Requests waiting for their reply now.
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Message>>> {
        self.waiting.lock().expect("replies lock")
    }
}

/// One request waiting for its reply. Dropping it forgets the request.
pub struct PendingReply {
    replies: Arc<Replies>,
    correlation_id: String,
    receiver: oneshot::Receiver<Message>,
}

impl PendingReply {
    /// Addresses `message` as this request: its correlation id, and replies to
    /// [`DIRECT_REPLY_TO`].
    pub fn address(&self, message: &mut Message) {
        message.properties.correlation_id = Some(self.correlation_id.clone());
        message.properties.reply_to = Some(DIRECT_REPLY_TO.into());
    }

    /// The reply, or [`BrokerError::NoReply`] once `timeout` has passed.
    pub async fn wait(mut self, timeout: Duration) -> Result<Message, BrokerError> {
        match tokio::time::timeout(timeout, &mut self.receiver).await {
            Ok(Ok(reply)) => Ok(reply),
            // The sender went with the broker handle: no reply can come any more.
            Ok(Err(_)) => Err(BrokerError::Unavailable(
                "the broker connection closed".into(),
            )),
            Err(_) => Err(BrokerError::NoReply(timeout)),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        self.replies.lock().remove(&self.correlation_id);
    }
}

impl Message {
    /// The reply to this message, if it is a request (it names a `reply_to`): `body`
    /// with the request's correlation id, to the requester's address. Replies are
    /// transient: a requester that is gone cannot read them anyway.
    pub fn reply(&self, body: impl Into<Bytes>) -> Option<Publish> {
        let reply_to = self.properties.reply_to.as_deref()?;
        let properties = super::Properties {
            correlation_id: self.properties.correlation_id.clone(),
            content_type: Some("application/json".into()),
            persistent: false,
            ..super::Properties::default()
        };
        Some(Publish::to_queue(
            reply_to,
            Message {
                body: body.into(),
                properties,
            },
        ))
    }

    /// Whether this message asks for a reply.
    pub fn is_request(&self) -> bool {
        self.properties.reply_to.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(replies: &Arc<Replies>) -> (PendingReply, Message) {
        let pending = replies.expect();
        let mut message = Message {
            body: Bytes::from_static(b"{}"),
            properties: super::super::Properties::default(),
        };
        pending.address(&mut message);
        (pending, message)
    }

    #[tokio::test]
    async fn a_reply_reaches_the_request_with_its_correlation_id() {
        let replies = Arc::new(Replies::default());
        let (first, first_request) = request(&replies);
        let (second, second_request) = request(&replies);
        let answer =
            |request: &Message, body: &'static str| request.reply(body).expect("a request").message;
        assert!(replies.deliver(answer(&second_request, "two")));
        assert!(replies.deliver(answer(&first_request, "one")));
        let timeout = Duration::from_secs(1);
        assert_eq!(first.wait(timeout).await.unwrap().body, "one");
        assert_eq!(second.wait(timeout).await.unwrap().body, "two");
        assert_eq!(replies.waiting(), 0);
    }

    #[tokio::test]
    async fn a_request_that_times_out_or_is_dropped_leaves_nothing_behind() {
        let replies = Arc::new(Replies::default());
        let (timed_out, request_one) = request(&replies);
        let (abandoned, request_two) = request(&replies);
        assert_eq!(replies.waiting(), 2);
        assert!(matches!(
            timed_out.wait(Duration::from_millis(10)).await,
            Err(BrokerError::NoReply(_))
        ));
        drop(abandoned);
        assert_eq!(replies.waiting(), 0);
        // Late replies find nobody and are dropped.
        assert!(!replies.deliver(request_one.reply("late").unwrap().message));
        assert!(!replies.deliver(request_two.reply("late").unwrap().message));
    }

    #[test]
    fn only_requests_get_replies() {
        let plain = Message {
            body: Bytes::new(),
            properties: super::super::Properties::default(),
        };
        assert!(!plain.is_request());
        assert!(plain.reply("x").is_none());
        assert!(is_reply_address("amq.rabbitmq.reply-to.g1h2AA"));
        assert!(!is_reply_address("game_events"));
    }
}
