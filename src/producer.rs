//! The producer: what the original system's message-producer service did, folded in.
//!
//! It sends custom messages (`{"type": "custom", "message": …, "timestamp": …}`) to any
//! exchange and routing key, with a priority, a delay, headers and persistence of the
//! sender's choosing, and game events straight to `game_events` as the original
//! producer did. The HTTP routes (`/api/messages…`) and `retrocat publish` both go
//! through [`send`], so both validate the same way and publish the same bytes.

use crate::broker::{Broker, BrokerError, Headers, Message, Properties, Publish, topology};
use crate::domain::{CustomKind, CustomMessage, EventId, GameEvent, timestamp_now};
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
}
