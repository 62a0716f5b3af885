//! History retention (`--retain`): every process that runs workers prunes, in the
//! background, the history older than the retention period, so that no history table
//! grows without bound: the audit log and the custom-message consumer's log, the inbox
//! of processed event ids, and the finished processing attempts (a game keeps those of
//! its current version and its latest one). Dead letters are never pruned.
//!
//! The inbox is what makes a redelivered event a duplicate. Once an event's inbox row
//! is pruned, a copy of it delivered again would be processed again; the game's
//! version still stops it from changing anything that moved on: a copy of an older
//! version is skipped, and one of a version already completed is left as it is. Only a
//! version that failed would be tried once more. Redeliveries come within minutes (a
//! worker's crash, a relay publishing a batch again, retries at most
//! `--retry-max-delay` apart), so the retention must stay far above that: at least an
//! hour, 30 days by default.

use crate::shutdown::Shutdown;
use crate::storage::Store;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

/// `--retain`'s default.
pub const DEFAULT_RETAIN: &str = "30days";
/// The shortest retention: far above any redelivery (see the module documentation).
const MIN_RETAIN: Duration = Duration::from_secs(60 * 60);
/// The longest: a century keeps everything, and a cutoff further back than the
/// calendar reaches would not be a time. 100years as humantime reads it (a year of
/// 365.25 days).
const MAX_RETAIN: Duration = Duration::from_secs(100 * 31_557_600);
/// How often a process prunes. Between two prunes the tables grow by a few minutes of
/// history, which the next one removes in a few chunks.
const PRUNE_EVERY: Duration = Duration::from_secs(5 * 60);

/// `--retain`: a duration such as `30days` or `12h`, from an hour to a century.
pub fn parse_retain(value: &str) -> Result<Duration, String> {
    let retain = humantime::parse_duration(value)
        .map_err(|e| format!("{e} (expected e.g. 30days, 12h, 1week)"))?;
    if retain < MIN_RETAIN {
        return Err(format!(
            "must be at least 1h: with less, a redelivered event could find its inbox row \
             pruned and be processed again (default {DEFAULT_RETAIN})"
        ));
    }
    if retain > MAX_RETAIN {
        return Err("must be at most 100years".into());
    }
    Ok(retain)
}

/// The background prune of one process.
pub struct Retention {
    store: Arc<dyn Store>,
    retain: Duration,
}

impl Retention {
    /// Prunes `store`'s history older than `retain` (see [`parse_retain`]).
    pub fn new(store: Arc<dyn Store>, retain: Duration) -> Self {
        Self { store, retain }
    }

    /// Prunes at once, then every few minutes, until shutdown. A prune under way when
    /// shutdown comes is dropped: each chunk is a statement of its own, so the chunks
    /// deleted stay deleted and the rest waits for the next start.
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                () = self.prune() => {}
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                () = tokio::time::sleep(PRUNE_EVERY) => {}
            }
        }
    }

    /// One prune, logged when it deleted anything; a failure is logged and left to the
    /// next one.
    async fn prune(&self) {
        let retain = chrono::Duration::from_std(self.retain).expect("at most a century");
        let before = Utc::now() - retain;
        match self.store.prune_history(before).await {
            Ok(report) if report.total() > 0 => tracing::info!(
                received_messages = report.received,
                inbox = report.inbox,
                processing_attempts = report.attempts,
                "pruned the history older than {}: rows deleted per table",
                humantime::format_duration(self.retain),
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning the history failed; next try in 5 min"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn retain(args: &[&str]) -> Result<Duration, clap::Error> {
        let cli = Cli::try_parse_from([&["retrocat", "worker"], args].concat())?;
        match cli.command {
            Some(Command::Worker(worker)) => Ok(worker.worker.retain),
            other => panic!("not a worker: {other:?}"),
        }
    }

    #[test]
    fn retain_defaults_to_30_days_and_reads_a_human_duration() {
        assert_eq!(retain(&[]).unwrap(), Duration::from_secs(30 * 24 * 60 * 60));
        assert_eq!(
            retain(&["--retain", "12h"]).unwrap(),
            Duration::from_secs(12 * 60 * 60)
        );
        assert_eq!(
            retain(&["--retain", "1week"]).unwrap(),
            Duration::from_secs(7 * 24 * 60 * 60)
        );
        assert_eq!(retain(&["--retain", "1h"]).unwrap(), MIN_RETAIN);
        assert_eq!(retain(&["--retain", "100years"]).unwrap(), MAX_RETAIN);
    }

    #[test]
    fn retain_refuses_zero_too_short_too_long_and_nonsense_with_the_reason() {
        for (value, reason) in [
            ("0s", "at least 1h"),
            ("59min", "at least 1h"),
            ("101years", "at most 100years"),
            ("forever", "expected e.g. 30days"),
            ("-1d", "expected e.g. 30days"),
        ] {
            let flag = format!("--retain={value}");
            let error = retain(&[&flag]).unwrap_err().to_string();
            assert!(error.contains("--retain"), "{value}: {error}");
            assert!(error.contains(reason), "{value}: {error}");
        }
    }
}
