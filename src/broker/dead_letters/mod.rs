//! Inspecting and acting on a dead-letter queue: list, replay, purge; [`bulk`] acts on
//! every letter a filter matches.
//!
//! Built on the [`Broker`] trait alone, so it works the same on both brokers: the
//! messages are taken as deliveries and, unless acted on, requeued, which puts them
//! back where they were. Reading a DLQ this way marks its messages redelivered,
//! which nothing downstream relies on. Two operators acting on the same DLQ at the same
//! moment may each see part of it; neither loses a message.
//!
//! A dead letter whose sealed body this process cannot open (a key no longer in
//! `RETROCAT_MESSAGE_KEYS`, tampered bytes, or no keys at all) is listed too, with
//! [`DeadLetter::unopenable`] saying why and its body in base64. It can be purged, but
//! not replayed: sent back, its body would be sealed again over the old seal, and no
//! consumer could ever read it. [`replay`] refuses it with
//! [`DeadLetterError::Unopenable`]; put its key back in the list to replay it.

mod bulk;
mod scan;

pub use bulk::{BulkAction, BulkReport, Filter, bulk};
use scan::{Scan, put_back};

use super::{Broker, BrokerError, Delivery, Message, Publish, headers, topology};
use crate::domain::EventId;
use base64::Engine as _;
use serde::Serialize;
use std::time::Duration;

/// How long a search that missed waits before it looks once more (see [`find`]).
const SCAN_AGAIN_AFTER: Duration = Duration::from_millis(250);

/// How many of the oldest messages replay and purge look through for the one named:
/// each is held, unsettled, until the search ends, so the search is bounded.
pub const MAX_SCAN: usize = 10_000;

/// The queues whose messages can be listed, replayed and purged: the dead-letter
/// queues, and `unrouted` (listed; its messages name no queue to replay to).
pub const QUEUES: [&str; 4] = [
    topology::GAME_EVENTS_DLQ,
    topology::CUSTOM_DLQ,
    topology::RPC_DLQ,
    topology::UNROUTED_QUEUE,
];

/// Counts a replay of an event: the worker treats a replayed event as a new one (its
/// inbox already holds the failed attempt's event id).
pub const REPLAY_COUNT: &str = "x-replay-count";

/// A dead-lettered message, as `GET /api/dlq` and `retrocat dlq list` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The message id, or a digest of the body for messages sent without one.
    pub id: String,
    /// The queue it died in.
    pub queue: Option<String>,
    pub reason: Option<String>,
    pub dead_lettered_at: Option<String>,
    /// Attempts made before it was dead-lettered (`x-retry-count` + 1).
    pub attempts: i64,
    pub replays: i64,
    /// Why its sealed body cannot be opened here; absent for a readable one. Such a
    /// dead letter can be purged, not replayed.
    pub unopenable: Option<String>,
    /// The body as text (lossy for binary bodies); still sealed, in base64, when it
    /// cannot be opened.
    pub body: String,
}

impl DeadLetter {
    fn of(message: &Message) -> Self {
        let properties = &message.properties;
        let unopenable = unopenable(message);
        let body = match unopenable {
            Some(_) => base64::engine::general_purpose::STANDARD.encode(&message.body),
            None => String::from_utf8_lossy(&message.body).into_owned(),
        };
        Self {
            id: id_of(message),
            queue: properties
                .header_str(headers::DEAD_LETTER_QUEUE)
                .map(str::to_owned),
            reason: properties
                .header_str(headers::DEAD_LETTER_REASON)
                .map(str::to_owned),
            dead_lettered_at: properties
                .header_str(headers::DEAD_LETTERED_AT)
                .map(str::to_owned),
            // Counts as anyone with access to the broker may have set them: a negative
            // one is none, and i64::MAX stays i64::MAX rather than overflowing.
            attempts: count(properties.header_int(headers::RETRY_COUNT)).saturating_add(1),
            replays: count(properties.header_int(REPLAY_COUNT)),
            unopenable,
            body,
        }
    }
}

/// A count from a header: absent or negative, none.
fn count(header: Option<i64>) -> i64 {
    header.unwrap_or(0).max(0)
}

/// Why `message` is still sealed: the reason the sealing layer gave, or, where no keys
/// are set (the body still names its cipher), that there is nothing to open it with.
fn unopenable(message: &Message) -> Option<String> {
    let properties = &message.properties;
    if let Some(reason) = properties.header_str(headers::UNOPENABLE) {
        return Some(reason.to_owned());
    }
    properties
        .header_str(headers::ENCRYPTION)
        .map(|cipher| format!("sealed ({cipher}), and RETROCAT_MESSAGE_KEYS is not set to open it"))
}

/// Why a dead letter could not be acted on.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// Its body cannot be opened, so it is left where it is (see the module's comment).
    #[error(
        "message {id} cannot be replayed: {reason}. Sent back, it would be sealed again \
         over its old seal and no consumer could read it. Add its key to \
         RETROCAT_MESSAGE_KEYS and replay it, or purge it"
    )]
    Unopenable { id: String, reason: String },
}

fn id_of(message: &Message) -> String {
    match &message.properties.message_id {
        Some(id) if !id.is_empty() => id.clone(),
        _ => EventId::from_body(&message.body).to_string(),
    }
}

/// Up to `limit` messages of `dlq`, oldest first, left in place.
pub async fn list(
    broker: &dyn Broker,
    dlq: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, BrokerError> {
    let taken = take(broker, dlq, limit, |_| false).await?;
    Ok(taken.seen)
}

/// Sends the message `id` back to the queue it died in, with its retry count reset, and
/// removes it from `dlq`. `Ok(None)` when `dlq` holds no such message. One that cannot
/// be opened is refused, and stays in `dlq`.
pub async fn replay(
    broker: &dyn Broker,
    dlq: &str,
    id: &str,
) -> Result<Option<DeadLetter>, DeadLetterError> {
    let Some((found, delivery)) = find(broker, dlq, id).await? else {
        return Ok(None);
    };
    let copy = match replay_copy(&found, &delivery.message) {
        Ok(copy) => copy,
        Err(refused) => {
            put_back(broker, dlq, vec![delivery]).await;
            return Err(refused);
        }
    };
    // Published before the dead letter is removed: a crash in between leaves a copy in
    // both places, never in neither.
    broker.publish(vec![copy]).await?;
    delivery.ack().await?;
    Ok(Some(found))
}

/// What replaying `dead` (read from `message`) publishes: the message, back to the
/// queue it died in, without the headers of its death and with its replay count one
/// up. Refused for a letter that cannot be opened, or that names no queue.
fn replay_copy(dead: &DeadLetter, message: &Message) -> Result<Publish, DeadLetterError> {
    if let Some(reason) = dead.unopenable.clone() {
        return Err(DeadLetterError::Unopenable {
            id: dead.id.clone(),
            reason,
        });
    }
    let Some(queue) = dead.queue.as_deref() else {
        // `unrouted` holds such messages: no queue refused them, none took them.
        return Err(BrokerError::NotFound(format!(
            "message {} does not say which queue it died in ({} header): there is no \
             queue to replay it to",
            dead.id,
            headers::DEAD_LETTER_QUEUE
        ))
        .into());
    };
    let mut message = message.clone();
    let headers = &mut message.properties.headers;
    for name in [
        headers::RETRY_COUNT,
        headers::DEAD_LETTER_REASON,
        headers::DEAD_LETTER_QUEUE,
        headers::DEAD_LETTERED_AT,
    ] {
        headers.remove(name);
    }
    headers.insert(REPLAY_COUNT.into(), dead.replays.saturating_add(1).into());
    Ok(Publish::to_queue(queue, message))
}

/// Removes the message `id` from `dlq`. `Ok(None)` when it holds no such message.
pub async fn purge(
    broker: &dyn Broker,
    dlq: &str,
    id: &str,
) -> Result<Option<DeadLetter>, BrokerError> {
    let Some((found, delivery)) = find(broker, dlq, id).await? else {
        return Ok(None);
    };
    delivery.ack().await?;
    Ok(Some(found))
}

/// The dead letter `id` of `dlq`, held. A message being put back by a reader just
/// before (a list, on RabbitMQ) is not counted ready for a moment: a scan that misses is
/// made once more, shortly after, before saying there is no such message.
async fn find(
    broker: &dyn Broker,
    dlq: &str,
    id: &str,
) -> Result<Option<(DeadLetter, Delivery)>, BrokerError> {
    for pause in [Duration::ZERO, SCAN_AGAIN_AFTER] {
        tokio::time::sleep(pause).await;
        let taken = take(broker, dlq, MAX_SCAN, |message| id_of(message) == id).await?;
        if let Some(found) = taken.seen.into_iter().last().zip(taken.found) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

struct Taken {
    seen: Vec<DeadLetter>,
    /// The delivery `wanted` picked, still unsettled; the others went back.
    found: Option<Delivery>,
}

/// Takes deliveries from `queue` until `limit`, the end of what it holds, or one that
/// `wanted` picks; every other delivery is put back in its place.
async fn take(
    broker: &dyn Broker,
    queue: &str,
    limit: usize,
    wanted: impl Fn(&Message) -> bool,
) -> Result<Taken, BrokerError> {
    let count = broker.queue_depth(queue).await?.min(limit as u64);
    let mut scan = Scan::begin(broker, queue, count).await?;
    let mut taken = Taken {
        seen: Vec::new(),
        found: None,
    };
    while let Some(delivery) = scan.next().await {
        taken.seen.push(DeadLetter::of(&delivery.message));
        if wanted(&delivery.message) {
            taken.found = Some(delivery);
            break;
        }
        scan.keep(delivery);
    }
    scan.end().await;
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostile::{self, nasty_string};
    use proptest::prelude::*;

    /// A message in a dead-letter queue: any body, and the headers a dead letter is read
    /// from, set by retrocat, by RabbitMQ or by a stranger with access to the broker.
    fn dead_message() -> impl Strategy<Value = Message> {
        let name = prop_oneof![
            prop::sample::select(
                &[
                    headers::RETRY_COUNT,
                    REPLAY_COUNT,
                    headers::DEAD_LETTER_QUEUE,
                    headers::DEAD_LETTER_REASON,
                    headers::DEAD_LETTERED_AT,
                    headers::ENCRYPTION,
                    headers::UNOPENABLE,
                ][..]
            )
            .prop_map(str::to_owned),
            nasty_string(),
        ];
        hostile::message(name, 5)
    }

    proptest! {
        #![proptest_config(hostile::config(512))]

        /// Whatever a dead letter's headers say, it lists with at least one attempt,
        /// no negative replay count, an id, and its body shown as it is.
        #[test]
        fn any_dead_letter_lists(message in dead_message()) {
            let listed = DeadLetter::of(&message);
            prop_assert!(listed.attempts >= 1, "{listed:?}");
            prop_assert!(listed.replays >= 0, "{listed:?}");
            prop_assert!(!listed.id.is_empty());
            let properties = &message.properties;
            prop_assert_eq!(
                listed.queue.as_deref(),
                properties.header_str(headers::DEAD_LETTER_QUEUE)
            );
            prop_assert_eq!(
                listed.reason.as_deref(),
                properties.header_str(headers::DEAD_LETTER_REASON)
            );
            let sealed = properties.header_str(headers::UNOPENABLE).is_some()
                || properties.header_str(headers::ENCRYPTION).is_some();
            prop_assert_eq!(listed.unopenable.is_some(), sealed);
            if sealed {
                let body = base64::engine::general_purpose::STANDARD.decode(&listed.body);
                prop_assert_eq!(body.as_deref(), Ok(message.body.as_ref()));
            } else if let Ok(text) = std::str::from_utf8(&message.body) {
                prop_assert_eq!(listed.body.as_str(), text);
            }
        }
    }
}
