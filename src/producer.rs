//! The producer: what the original system's message-producer service did, folded in.
//!
//! It sends custom messages (`{"type": "custom", "message": …, "timestamp": …}`) to any
//! exchange and routing key, with a priority, a delay, headers and persistence of the
//! sender's choosing, and game events straight to `game_events` as the original
//! producer did. The HTTP routes (`/api/messages…`) and `retrocat publish` both go
//! through [`send`], so both validate the same way and publish the same bytes.
//!
//! Where a client chooses the destination and the headers (`POST /api/messages`,
//! `retrocat publish`), [`PublishPolicy`] is checked first: only the exchanges of
//! `--publish-exchanges`, never a header retrocat or the broker sets, never one of
//! retrocat's own queues through the default exchange. The original producer's routes
//! choose their destination themselves, as the original did, and are not subject to it.

use crate::broker::{
    Broker, BrokerError, Headers, Message, Properties, Publish, headers, topology,
};
use crate::domain::{CustomKind, CustomMessage, EventId, GameEvent, timestamp_now};
use std::sync::Arc;
use std::time::Duration;

/// Longest delay a message may ask for: a delayed message waits in the broker, and a
/// typo in the unit should not park it for a year.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A custom message and how to send it, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    /// What the sender wrote; it travels as the `message` field of the envelope.
    pub message: serde_json::Value,
    /// 0..=[`topology::RPC_MAX_PRIORITY`]; only a queue with priorities honours it.
    pub priority: u8,
    pub delay: Option<Duration>,
    pub headers: Headers,
    /// Delivery mode 2: survives a broker restart.
    pub persistent: bool,
}

/// Why an outgoing message was refused before anything was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Refused {
    pub field: &'static str,
    pub reason: String,
}

impl Outgoing {
    /// A custom message to `catalog.custom` with the routing key `custom.message`,
    /// which `custom_messages` receives: what `POST /api/messages/custom` sends.
    pub fn custom(message: serde_json::Value) -> Self {
        Self {
            exchange: topology::CUSTOM_EXCHANGE.into(),
            routing_key: "custom.message".into(),
            message,
            priority: 0,
            delay: None,
            headers: Headers::new(),
            persistent: true,
        }
    }

    /// Checks what AMQP limits: names of at most 255 bytes, priorities up to 10 (the
    /// highest any of our queues declares), and a bounded delay.
    pub fn validate(&self) -> Result<(), Refused> {
        let refuse = |field, reason: &str| {
            Err(Refused {
                field,
                reason: reason.into(),
            })
        };
        if self.exchange.len() > 255 {
            return refuse("exchange", "at most 255 bytes");
        }
        if self.routing_key.len() > 255 {
            return refuse("routingKey", "at most 255 bytes");
        }
        if self.exchange.is_empty() && self.routing_key.is_empty() {
            return refuse(
                "routingKey",
                "the default exchange routes by queue name: name the queue",
            );
        }
        if self.priority > topology::RPC_MAX_PRIORITY {
            return refuse("priority", "from 0 to 10");
        }
        if self.delay.is_some_and(|delay| delay > MAX_DELAY) {
            return refuse("delay", "at most 24 hours");
        }
        if self.message.is_null() {
            return refuse("message", "required");
        }
        Ok(())
    }
}

/// What a client may send to: the exchanges it may name (`--publish-exchanges`,
/// [`topology::CUSTOM_EXCHANGE`] by default), and what no client may use whatever the
/// exchanges: a reserved header, or one of retrocat's queues through the default
/// exchange. An exchange listed is trusted with every routing key: listing
/// `catalog.events` or `catalog.dlx` would let clients inject events or dead letters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishPolicy {
    /// `""` is the default exchange. Shared: the policy is cloned with the API's context
    /// for every request.
    exchanges: Arc<[String]>,
}

/// Another name of the default exchange (`""`), for where an empty value is awkward to
/// write: a comma-separated flag, an environment variable, a form.
const DEFAULT_EXCHANGE_ALIAS: &str = "amq.default";

impl Default for PublishPolicy {
    fn default() -> Self {
        Self::new([topology::CUSTOM_EXCHANGE])
    }
}

impl PublishPolicy {
    /// Clients may publish to `exchanges`; `""` or `amq.default` names the default one.
    pub fn new<Name: AsRef<str>>(exchanges: impl IntoIterator<Item = Name>) -> Self {
        let mut names: Vec<String> = Vec::new();
        for name in exchanges {
            let name = default_as_empty(name.as_ref().trim()).to_owned();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        Self {
            exchanges: names.into(),
        }
    }

    /// Admits a client's message, with `amq.default` written `""`; or refuses it
    /// before anything is sent: a reserved header ([`headers::is_reserved`]) with a
    /// [`SendError::ReservedHeaders`], an exchange not listed, or the default exchange
    /// straight into an internal queue ([`topology::is_internal_queue`]) with a
    /// [`Refused`].
    pub fn admit(&self, mut outgoing: Outgoing) -> Result<Outgoing, SendError> {
        let reserved: Vec<String> = outgoing
            .headers
            .keys()
            .filter(|name| headers::is_reserved(name))
            .cloned()
            .collect();
        if !reserved.is_empty() {
            return Err(SendError::ReservedHeaders(reserved));
        }
        outgoing.exchange = default_as_empty(&outgoing.exchange).to_owned();
        let exchange = outgoing.exchange.as_str();
        if !self.exchanges.iter().any(|allowed| allowed == exchange) {
            return Err(Refused {
                field: "exchange",
                reason: format!(
                    "{} is not an exchange clients may publish to; allowed: {} \
                     (--publish-exchanges)",
                    exchange_name(exchange),
                    self.allowed()
                ),
            }
            .into());
        }
        if exchange.is_empty() && topology::is_internal_queue(&outgoing.routing_key) {
            return Err(Refused {
                field: "routingKey",
                reason: format!(
                    "`{}` is a queue of retrocat's own (or the broker's): the default \
                     exchange may not deliver to it; publish to an exchange instead",
                    outgoing.routing_key
                ),
            }
            .into());
        }
        Ok(outgoing)
    }

    /// The exchanges clients may publish to, for messages: `catalog.custom, "" (the
    /// default exchange)`.
    pub fn allowed(&self) -> String {
        let names: Vec<String> = self
            .exchanges
            .iter()
            .map(|name| exchange_name(name))
            .collect();
        names.join(", ")
    }
}

/// Why the headers `names` were refused, naming them.
pub fn reserved_reason(names: &[String]) -> String {
    let verb = if names.len() == 1 { "is" } else { "are" };
    format!(
        "{} {verb} reserved for retrocat and the broker (retries, dead letters, \
         encryption), not for clients",
        names.join(", ")
    )
}

fn default_as_empty(exchange: &str) -> &str {
    if exchange == DEFAULT_EXCHANGE_ALIAS {
        ""
    } else {
        exchange
    }
}

fn exchange_name(exchange: &str) -> String {
    if exchange.is_empty() {
        r#""" (the default exchange)"#.to_owned()
    } else {
        exchange.to_owned()
    }
}

/// Validates and publishes a custom message, returning its message id once the broker
/// has confirmed it.
pub async fn send(broker: &dyn Broker, outgoing: Outgoing) -> Result<String, SendError> {
    let (id, publish) = envelope(outgoing)?;
    broker.publish(vec![publish]).await?;
    Ok(id)
}

/// Validates and publishes a custom message as a request, then waits up to `wait` for
/// the reply of whoever consumes it (the custom-message consumer answers once it has
/// recorded the message). Returns the message id and the reply.
pub async fn request(
    broker: &dyn Broker,
    outgoing: Outgoing,
    wait: Duration,
) -> Result<(String, Message), SendError> {
    let (id, publish) = envelope(outgoing)?;
    if publish.delay.is_some() {
        return Err(Refused {
            field: "delay",
            reason: "a message that waits for its reply cannot be delayed".into(),
        }
        .into());
    }
    let reply = broker.request(publish, wait).await?;
    Ok((id, reply))
}

/// The custom message in the original producer's envelope, with a fresh message id.
fn envelope(outgoing: Outgoing) -> Result<(String, Publish), Refused> {
    outgoing.validate()?;
    let envelope = CustomMessage {
        kind: CustomKind::Custom,
        message: outgoing.message,
        timestamp: Some(timestamp_now()),
    };
    let id = EventId::generate().to_string();
    let mut properties = Properties::json(&id);
    properties.priority = outgoing.priority;
    properties.persistent = outgoing.persistent;
    properties.headers = outgoing.headers;
    let publish = Publish {
        exchange: outgoing.exchange,
        routing_key: outgoing.routing_key,
        message: Message {
            body: serde_json::to_vec(&envelope)
                .expect("a custom message always serializes")
                .into(),
            properties,
        },
        delay: outgoing.delay,
    };
    Ok((id, publish))
}

/// Publishes a game event straight to `game_events`, as the original producer did
/// (`POST /api/messages/game-event`); returns its event id.
pub async fn send_game_event(broker: &dyn Broker, event: GameEvent) -> Result<String, SendError> {
    let id = event.id().to_string();
    let message = Message {
        body: event.encode().into(),
        properties: Properties::json(&id),
    };
    broker
        .publish(vec![Publish::to_queue(
            topology::GAME_EVENTS_QUEUE,
            message,
        )])
        .await?;
    Ok(id)
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Refused(#[from] Refused),
    /// Headers only retrocat and the broker may set ([`headers::is_reserved`]), named.
    #[error("headers: {}", reserved_reason(.0))]
    ReservedHeaders(Vec<String>),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_before_sending() {
        let valid = Outgoing::custom("hello".into());
        assert_eq!(valid.validate(), Ok(()));
        let cases = [
            (
                Outgoing {
                    priority: 11,
                    ..valid.clone()
                },
                "priority",
            ),
            (
                Outgoing {
                    exchange: "x".repeat(256),
                    ..valid.clone()
                },
                "exchange",
            ),
            (
                Outgoing {
                    delay: Some(MAX_DELAY + Duration::from_secs(1)),
                    ..valid.clone()
                },
                "delay",
            ),
            (
                Outgoing {
                    exchange: String::new(),
                    routing_key: String::new(),
                    ..valid.clone()
                },
                "routingKey",
            ),
            (
                Outgoing {
                    message: serde_json::Value::Null,
                    ..valid.clone()
                },
                "message",
            ),
        ];
        for (outgoing, field) in cases {
            assert_eq!(outgoing.validate().unwrap_err().field, field);
        }
    }

    fn to(exchange: &str, routing_key: &str) -> Outgoing {
        Outgoing {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            ..Outgoing::custom("hello".into())
        }
    }

    #[test]
    fn clients_publish_to_the_listed_exchanges_only() {
        let policy = PublishPolicy::default();
        assert!(policy.admit(Outgoing::custom("hello".into())).is_ok());
        for exchange in [
            "catalog.events",
            "catalog.dlx",
            "no.such",
            "",
            "amq.default",
        ] {
            let Err(SendError::Refused(refused)) = policy.admit(to(exchange, "orders")) else {
                panic!("{exchange:?} was let through");
            };
            assert_eq!(refused.field, "exchange");
            assert!(
                refused.reason.contains("allowed: catalog.custom"),
                "{refused}"
            );
        }
        let wider = PublishPolicy::new(["catalog.custom", " orders ", "amq.default"]);
        assert_eq!(
            wider.allowed(),
            r#"catalog.custom, orders, "" (the default exchange)"#
        );
        for (exchange, routing_key) in [("orders", "x"), ("", "my_queue"), ("amq.default", "q")] {
            let admitted = wider.admit(to(exchange, routing_key)).unwrap();
            assert_eq!(admitted.exchange, exchange.replace("amq.default", ""));
        }
    }

    #[test]
    fn the_default_exchange_never_reaches_retrocats_queues() {
        let policy = PublishPolicy::new([""]);
        for queue in [
            "game_events",
            "game_events.dlq",
            "catalog.rpc",
            "audit",
            "amq.x",
        ] {
            for exchange in ["", "amq.default"] {
                let Err(SendError::Refused(refused)) = policy.admit(to(exchange, queue)) else {
                    panic!("{exchange:?} into {queue} was let through");
                };
                assert_eq!(refused.field, "routingKey");
                assert!(refused.reason.contains(queue), "{refused}");
            }
        }
    }

    #[test]
    fn reserved_headers_are_refused_by_name_whatever_the_exchange() {
        let policy = PublishPolicy::default();
        let mut forged = Outgoing::custom("hello".into());
        forged.headers.insert("X-Retry-Count".into(), 41.into());
        forged
            .headers
            .insert("x-dead-letter-reason".into(), "forged".into());
        forged.headers.insert("x-origin".into(), "test".into());
        let Err(error @ SendError::ReservedHeaders(_)) = policy.admit(forged) else {
            panic!("reserved headers were let through");
        };
        assert_eq!(
            error.to_string(),
            "headers: X-Retry-Count, x-dead-letter-reason are reserved for retrocat and \
             the broker (retries, dead letters, encryption), not for clients"
        );
    }

    mod properties {
        use super::*;
        use crate::broker::HeaderValue;
        use crate::hostile::{self, boundary_text, json_value, nasty_string};
        use proptest::collection::{btree_map, vec};
        use proptest::option;
        use proptest::prelude::*;

        /// A header retrocat or the broker sets, in any ASCII case.
        fn reserved_name() -> impl Strategy<Value = String> {
            let name = prop::sample::select(
                &[
                    headers::RETRY_COUNT,
                    crate::broker::dead_letters::REPLAY_COUNT,
                    headers::DEAD_LETTER_REASON,
                    headers::DEAD_LETTER_QUEUE,
                    headers::DEAD_LETTERED_AT,
                    headers::ENCRYPTION,
                    headers::KEY_ID,
                    headers::UNOPENABLE,
                    "x-death",
                    "x-dead-letter-anything",
                    "x-first-death-queue",
                    "x-last-death-reason",
                ][..],
            );
            (name, vec(any::<bool>(), 32)).prop_map(|(name, upper)| {
                name.chars()
                    .zip(upper.into_iter().cycle())
                    .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                    .collect()
            })
        }

        fn header_value() -> impl Strategy<Value = HeaderValue> {
            prop_oneof![
                any::<i64>().prop_map(HeaderValue::Int),
                any::<bool>().prop_map(HeaderValue::Bool),
                nasty_string().prop_map(HeaderValue::Str),
            ]
        }

        /// A name as a client may write it: one that means something here, or not.
        fn name(known: &'static [&'static str]) -> impl Strategy<Value = String> {
            prop_oneof![
                3 => prop::sample::select(known).prop_map(str::to_owned),
                2 => nasty_string(),
                1 => boundary_text(),
            ]
        }

        /// A custom message as `POST /api/messages` or `retrocat publish` could build it
        /// from what a client sent.
        fn outgoing() -> impl Strategy<Value = Outgoing> {
            let exchange = name(&[
                "catalog.custom",
                "",
                "amq.default",
                "catalog.events",
                "orders",
            ]);
            let routing_key = name(&["custom.message", "", "game_events", "audit", "amq.x", "q"]);
            let header = prop_oneof![1 => reserved_name(), 4 => nasty_string()];
            (
                (exchange, routing_key, json_value()),
                any::<u8>(),
                option::of((0..2 * MAX_DELAY.as_millis() as u64).prop_map(Duration::from_millis)),
                btree_map(header, header_value(), 0..4),
                any::<bool>(),
            )
                .prop_map(
                    |((exchange, routing_key, message), priority, delay, headers, persistent)| {
                        Outgoing {
                            exchange,
                            routing_key,
                            message,
                            priority,
                            delay,
                            headers,
                            persistent,
                        }
                    },
                )
        }

        fn policy() -> impl Strategy<Value = PublishPolicy> {
            prop_oneof![
                Just(PublishPolicy::default()),
                Just(PublishPolicy::new([
                    "catalog.custom",
                    "orders",
                    "amq.default"
                ])),
            ]
        }

        proptest! {
            #![proptest_config(hostile::config(512))]

            /// What a policy admits carries no reserved header, goes to a listed
            /// exchange and not, through the default exchange, into one of retrocat's
            /// queues; what it refuses, it refuses naming the field or the headers.
            #[test]
            fn a_policy_admits_only_what_it_lists(policy in policy(), sent in outgoing()) {
                let reserved: Vec<String> = sent
                    .headers
                    .keys()
                    .filter(|name| headers::is_reserved(name))
                    .cloned()
                    .collect();
                match policy.admit(sent.clone()) {
                    Ok(admitted) => {
                        prop_assert!(reserved.is_empty());
                        prop_assert!(policy.exchanges.contains(&admitted.exchange));
                        prop_assert!(
                            !admitted.exchange.is_empty()
                                || !topology::is_internal_queue(&admitted.routing_key)
                        );
                        prop_assert_eq!(
                            admitted,
                            Outgoing { exchange: default_as_empty(&sent.exchange).into(), ..sent }
                        );
                    }
                    Err(SendError::ReservedHeaders(names)) => prop_assert_eq!(names, reserved),
                    Err(SendError::Refused(refused)) => {
                        prop_assert!(reserved.is_empty());
                        prop_assert!(["exchange", "routingKey"].contains(&refused.field), "{refused}");
                    }
                    Err(SendError::Broker(error)) => prop_assert!(false, "{error}"),
                }
            }

            /// A header retrocat or the broker sets is refused in any case.
            #[test]
            fn reserved_headers_are_refused_in_any_case(
                mut sent in outgoing(),
                name in reserved_name(),
                value in header_value(),
            ) {
                sent.headers.insert(name.clone(), value);
                let refused = PublishPolicy::default().admit(sent);
                prop_assert!(
                    matches!(&refused, Err(SendError::ReservedHeaders(names)) if names.contains(&name)),
                    "{name}: {refused:?}"
                );
            }

            /// A message that validates fits AMQP's limits and ours; one that does not
            /// is refused naming the field.
            #[test]
            fn validation_keeps_the_limits(sent in outgoing()) {
                match sent.validate() {
                    Ok(()) => {
                        prop_assert!(sent.exchange.len() <= 255 && sent.routing_key.len() <= 255);
                        prop_assert!(!sent.exchange.is_empty() || !sent.routing_key.is_empty());
                        prop_assert!(sent.priority <= topology::RPC_MAX_PRIORITY);
                        prop_assert!(sent.delay.is_none_or(|delay| delay <= MAX_DELAY));
                        prop_assert!(!sent.message.is_null());
                    }
                    Err(refused) => prop_assert!(
                        ["exchange", "routingKey", "priority", "delay", "message"]
                            .contains(&refused.field),
                        "{refused}"
                    ),
                }
            }
        }
    }
}
