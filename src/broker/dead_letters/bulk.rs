//! Acting on many dead letters at once: replay or purge every message of a dead-letter
//! queue that a [`Filter`] matches (`POST /api/dlq/replay`, `DELETE /api/dlq`,
//! `retrocat dlq replay --all`, `purge --all`), or count them first.
//!
//! A pass looks at the messages the queue held when it began, oldest first, up to
//! [`MAX_SCAN`] (the rest waits for the next pass). Those that match are acted on as they come, in batches of [`BATCH`];
//! the others are held, unsettled, and put back in their place at the end.
//!
//! A replay publishes a batch's copies, waits until the broker has confirmed them, and
//! only then removes the letters. Interrupted in between, it leaves letters that were
//! both replayed and kept; run again, it replays those again with the same replay
//! count, which is the same event id for the worker's inbox
//! (`processing::worker`): the second copy is a duplicate, and changes nothing. So
//! each letter is processed once, however often a bulk replay is interrupted.

use super::{DeadLetter, MAX_SCAN, SCAN_AGAIN_AFTER, Scan, replay_copy};
use crate::broker::{Broker, BrokerError, Delivery, Publish};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// Letters acted on per broker round trip.
const BATCH: usize = 200;

/// Which dead letters a bulk action takes; an empty filter takes every one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// A part of the reason it was dead-lettered for.
    pub reason: Option<String>,
    /// Dead-lettered before this time (exclusive).
    pub before: Option<DateTime<Utc>>,
    /// Dead-lettered at or after this time.
    pub after: Option<DateTime<Utc>>,
}

impl Filter {
    /// Whether `dead` matches. A time bound never matches a letter that does not say
    /// when it was dead-lettered.
    pub fn matches(&self, dead: &DeadLetter) -> bool {
        if let Some(part) = &self.reason
            && !dead
                .reason
                .as_deref()
                .is_some_and(|reason| reason.contains(part))
        {
            return false;
        }
        if self.before.is_none() && self.after.is_none() {
            return true;
        }
        let Some(at) = dead
            .dead_lettered_at
            .as_deref()
            .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        else {
            return false;
        };
        self.before.is_none_or(|before| at < before) && self.after.is_none_or(|after| at >= after)
    }
}

/// What a bulk action does with each letter its filter matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkAction {
    /// Nothing: count them, to show before acting.
    Count,
    /// Send it back to the queue it died in, as [`super::replay`] does.
    Replay,
    /// Remove it for good.
    Purge,
}

/// What a bulk action did, so far or in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkReport {
    /// Messages looked at.
    pub scanned: u64,
    /// Of those, the ones the filter matched.
    pub matched: u64,
    /// Matched letters replayed or purged (none for a count).
    pub done: u64,
    /// Matched letters a replay left in place: unopenable, or naming no queue to
    /// replay to.
    pub skipped: u64,
    /// Messages the queue held past the 10,000 one pass looks at: run it again for
    /// them.
    pub left: u64,
}

/// Does `action` to every letter of `dlq` that `filter` matches, among the messages
/// it holds now (the oldest [`MAX_SCAN`]: those not acted on are held until the pass
/// ends); `progress` hears of each batch done.
pub async fn bulk(
    broker: &dyn Broker,
    dlq: &str,
    filter: &Filter,
    action: BulkAction,
    mut progress: impl FnMut(&BulkReport),
) -> Result<BulkReport, BrokerError> {
    let mut ready = broker.queue_depth(dlq).await?;
    if ready == 0 {
        // Letters just put back by another reader (a pass before this one, on RabbitMQ)
        // are not counted ready for a moment: look once more before saying none.
        tokio::time::sleep(SCAN_AGAIN_AFTER).await;
        ready = broker.queue_depth(dlq).await?;
    }
    let count = ready.min(MAX_SCAN as u64);
    let mut report = BulkReport {
        left: ready - count,
        ..BulkReport::default()
    };
    if count == 0 {
        return Ok(report);
    }
    let mut scan = Scan::begin(broker, dlq, count).await?;
    let mut batch = Batch::default();
    while let Some(delivery) = scan.next().await {
        report.scanned += 1;
        let dead = DeadLetter::of(&delivery.message);
        if !filter.matches(&dead) {
            scan.keep(delivery);
            continue;
        }
        report.matched += 1;
        match action {
            BulkAction::Count => scan.keep(delivery),
            BulkAction::Purge => batch.letters.push(delivery),
            BulkAction::Replay => match replay_copy(&dead, &delivery.message) {
                Ok(copy) => {
                    batch.copies.push(copy);
                    batch.letters.push(delivery);
                }
                Err(_) => {
                    report.skipped += 1;
                    scan.keep(delivery);
                }
            },
        }
        if batch.letters.len() >= BATCH {
            report.done += batch.settle(broker).await?;
            progress(&report);
        }
    }
    report.done += batch.settle(broker).await?;
    scan.end().await;
    progress(&report);
    Ok(report)
}

/// Letters to remove, and for a replay their copies, to publish first.
#[derive(Default)]
struct Batch {
    letters: Vec<Delivery>,
    copies: Vec<Publish>,
}

impl Batch {
    /// Publishes the copies, waits for the broker's confirms, then removes the
    /// letters; how many it removed.
    async fn settle(&mut self, broker: &dyn Broker) -> Result<u64, BrokerError> {
        if !self.copies.is_empty() {
            broker.publish(std::mem::take(&mut self.copies)).await?;
        }
        let letters = std::mem::take(&mut self.letters);
        let removed = letters.len() as u64;
        for letter in letters {
            letter.ack().await?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(reason: Option<&str>, at: Option<&str>) -> DeadLetter {
        DeadLetter {
            id: "m-1".into(),
            queue: Some("game_events".into()),
            reason: reason.map(str::to_owned),
            dead_lettered_at: at.map(str::to_owned),
            attempts: 3,
            replays: 0,
            unopenable: None,
            body: "{}".into(),
        }
    }

    fn time(at: &str) -> Option<DateTime<Utc>> {
        Some(DateTime::parse_from_rfc3339(at).unwrap().to_utc())
    }

    #[test]
    fn a_filter_matches_by_reason_and_time_and_an_empty_one_matches_all() {
        let noon = dead(Some("cover: HTTP 503"), Some("2026-12-07T12:00:00+00:00"));
        let silent = dead(None, None);
        assert!(Filter::default().matches(&noon));
        assert!(Filter::default().matches(&silent));

        let reason = |part: &str| Filter {
            reason: Some(part.into()),
            ..Filter::default()
        };
        assert!(reason("503").matches(&noon));
        assert!(!reason("404").matches(&noon));
        assert!(!reason("503").matches(&silent));

        let between = |after: &str, before: &str| Filter {
            after: time(after),
            before: time(before),
            ..Filter::default()
        };
        assert!(between("2026-12-07T12:00:00Z", "2026-12-07T12:00:01Z").matches(&noon));
        assert!(!between("2026-12-07T11:00:00Z", "2026-12-07T12:00:00Z").matches(&noon));
        assert!(!between("2026-12-07T12:00:01Z", "2026-12-08T00:00:00Z").matches(&noon));
        assert!(!between("2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z").matches(&silent));
    }
}
