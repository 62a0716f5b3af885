//! What `retrocat dlq …` does, on the broker: list a dead-letter queue, and replay or
//! purge one message or, with `--all`, every message a filter matches.

use super::{DlqBulk, DlqCommand};
use crate::broker::Broker;
use crate::broker::dead_letters::{self, BulkAction, BulkReport, DeadLetter, Filter};
use anyhow::bail;

pub async fn run(broker: &dyn Broker, command: DlqCommand) -> anyhow::Result<()> {
    let (id, bulk, queue, action) = match command {
        DlqCommand::List { queue, limit } => {
            for dead in dead_letters::list(broker, &queue.queue, limit).await? {
                println!("{}", serde_json::to_string(&dead)?);
            }
            return Ok(());
        }
        DlqCommand::Replay { id, bulk, queue } => (id, bulk, queue.queue, BulkAction::Replay),
        DlqCommand::Purge { id, bulk, queue } => (id, bulk, queue.queue, BulkAction::Purge),
    };
    let Some(id) = id else {
        return all(broker, &queue, bulk, action).await;
    };
    let acted = if action == BulkAction::Replay {
        dead_letters::replay(broker, &queue, &id).await?
    } else {
        dead_letters::purge(broker, &queue, &id).await?
    };
    let Some(dead): Option<DeadLetter> = acted else {
        bail!(
            "no message {id} among the oldest {} of {queue}",
            dead_letters::MAX_SCAN
        );
    };
    println!("{}", serde_json::to_string(&dead)?);
    Ok(())
}

/// `--all`: passes of the oldest 10,000 until the queue holds no more, or a pass did
/// nothing (the rest is kept by the filter). Progress goes to standard error, the
/// totals to standard output as one JSON object.
async fn all(
    broker: &dyn Broker,
    queue: &str,
    bulk: DlqBulk,
    action: BulkAction,
) -> anyhow::Result<()> {
    let filter = Filter {
        reason: bulk.reason,
        before: bulk.before,
        after: bulk.after,
    };
    let verb = if action == BulkAction::Replay {
        "replayed"
    } else {
        "purged"
    };
    let mut total = BulkReport::default();
    loop {
        let done_before = total.done;
        let pass = dead_letters::bulk(broker, queue, &filter, action, |so_far| {
            eprintln!("{verb} {} of {queue}", done_before + so_far.done);
        })
        .await?;
        total = BulkReport {
            scanned: total.scanned + pass.scanned,
            matched: total.matched + pass.matched,
            done: total.done + pass.done,
            skipped: total.skipped + pass.skipped,
            left: pass.left,
        };
        if pass.left == 0 || pass.done == 0 {
            break;
        }
    }
    println!("{}", serde_json::to_string(&total)?);
    if total.skipped > 0 {
        eprintln!(
            "{} could not be replayed and stay in {queue}: `retrocat dlq list` says why",
            total.skipped
        );
    }
    if total.left > 0 {
        eprintln!(
            "{} more in {queue} were not looked at: the oldest 10,000 hold none the \
             filter takes; purge or replay those first",
            total.left
        );
    }
    Ok(())
}
