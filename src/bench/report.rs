//! What a run measured, as text for people and JSON for machines.

use super::ceiling::Ceiling;
use super::load::Sent;
use super::tracker::Events;
use super::{BenchArgs, Workload};
use clap::ValueEnum;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// Durations from 1 µs to an hour, in microseconds to three significant digits;
/// longer ones count as an hour.
#[derive(Debug)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Self {
        const HOUR_MICROS: u64 = 3_600_000_000;
        Self(hdrhistogram::Histogram::new_with_bounds(1, HOUR_MICROS, 3).expect("valid bounds"))
    }
}

impl Histogram {
    pub fn record(&mut self, duration: Duration) {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    /// p50, p90, p99 and max in milliseconds; `None` when nothing was recorded.
    fn percentiles(&self) -> Option<Percentiles> {
        let ms = |micros: u64| micros as f64 / 1000.0;
        (!self.0.is_empty()).then(|| Percentiles {
            p50: ms(self.0.value_at_quantile(0.50)),
            p90: ms(self.0.value_at_quantile(0.90)),
            p99: ms(self.0.value_at_quantile(0.99)),
            max: ms(self.0.max()),
        })
    }
}

/// Milliseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} / p90 {} / p99 {} / max {} ms",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Failures counted, the first few kept word for word.
#[derive(Debug, Default)]
pub struct ErrorLog {
    pub count: u64,
    pub first: Vec<String>,
}

impl ErrorLog {
    const KEPT: usize = 5;

    pub fn add(&mut self, error: String) {
        self.count += 1;
        if self.first.len() < Self::KEPT && !self.first.contains(&error) {
            self.first.push(error);
        }
    }

    pub fn first(&self) -> Option<&String> {
        self.first.first()
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub url: String,
    pub workload: Workload,
    /// Requests a second asked for; `None`: flat out.
    pub rate: Option<u32>,
    pub concurrency: u32,
    /// `embedded` or `rabbitmq`, as the system's `/health` says.
    pub broker: String,
    pub requests: Requests,
    /// `None` for workloads that write nothing.
    pub events: Option<EventReport>,
    pub ceiling: Option<Ceiling>,
    /// End-to-end events a second over the ceiling's messages a second.
    pub share_of_ceiling: Option<f64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Requests {
    pub sent: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub seconds: f64,
    pub per_second: f64,
    /// Due (or sent) → answered, client clock.
    pub latency_ms: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventReport {
    pub expected: u64,
    pub completed: u64,
    pub failed: u64,
    pub unfinished: u64,
    /// From the first request to the last event processed.
    pub seconds: f64,
    pub per_second: f64,
    /// The write's stamp → its final status written (the `timestamp` of its
    /// `game.processed`), server clock (milliseconds resolution).
    pub latency_ms: Option<Percentiles>,
    pub latency_errors: u64,
    pub first_latency_errors: Vec<String>,
}

impl Report {
    pub fn new(
        args: &BenchArgs,
        broker: String,
        sent: Sent,
        events: Events,
        ceiling: Option<Ceiling>,
    ) -> Self {
        let seconds = sent.elapsed.as_secs_f64();
        let requests = Requests {
            sent: sent.requests,
            errors: sent.errors.count,
            first_errors: sent.errors.first,
            seconds,
            per_second: sent.requests as f64 / seconds,
            latency_ms: sent.latency.percentiles(),
        };
        let events = (events.expected > 0).then(|| {
            let seconds = events
                .last_processed
                .map_or(0.0, |last| (last - sent.started).as_secs_f64());
            let processed = events.completed + events.failed;
            EventReport {
                expected: events.expected,
                completed: events.completed,
                failed: events.failed,
                unfinished: events.unfinished,
                seconds,
                per_second: if seconds > 0.0 {
                    processed as f64 / seconds
                } else {
                    0.0
                },
                latency_ms: events.latency.percentiles(),
                latency_errors: events.errors.count,
                first_latency_errors: events.errors.first,
            }
        });
        let share_of_ceiling = match (&events, &ceiling) {
            (Some(events), Some(ceiling)) => Some(events.per_second / ceiling.per_second),
            _ => None,
        };
        Self {
            url: args.endpoint(""),
            workload: args.workload,
            rate: args.rate,
            concurrency: args.concurrency,
            broker,
            requests,
            events,
            ceiling,
            share_of_ceiling,
        }
    }

    /// Fails when a request failed or an event was not processed in time.
    pub fn verdict(&self) -> anyhow::Result<()> {
        let unfinished = self.events.as_ref().map_or(0, |events| events.unfinished);
        let problems: Vec<String> = [
            (self.requests.errors > 0).then(|| format!("{} requests failed", self.requests.errors)),
            (unfinished > 0).then(|| {
                format!("{unfinished} events were not processed in time (--wait-timeout)")
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", problems.join("; "))
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pace = match self.rate {
            Some(rate) => format!("at {rate}/s"),
            None => "flat out".to_owned(),
        };
        let workload = self.workload.to_possible_value();
        let workload = workload
            .as_ref()
            .map_or("?", clap::builder::PossibleValue::get_name);
        writeln!(
            f,
            "retrocat bench: {workload}, {} requests {pace}, at most {} at once, against {} \
             ({} broker)",
            count(self.requests.sent as f64),
            self.concurrency,
            self.url,
            self.broker,
        )?;
        let requests = &self.requests;
        writeln!(
            f,
            "requests  {} in {:.2} s: {}/s, {} failed",
            count(requests.sent as f64),
            requests.seconds,
            count(requests.per_second),
            requests.errors
        )?;
        if let Some(latency) = requests.latency_ms {
            writeln!(f, "          answered in {latency} (client clock)")?;
        }
        for error in &requests.first_errors {
            writeln!(f, "          error: {error}")?;
        }
        if let Some(events) = &self.events {
            writeln!(
                f,
                "events    {} completed, {} failed, {} unfinished; {}/s end to end \
                 (first request to last processed: {:.2} s)",
                count(events.completed as f64),
                events.failed,
                events.unfinished,
                count(events.per_second),
                events.seconds
            )?;
            if let Some(latency) = events.latency_ms {
                writeln!(f, "          write → completed {latency} (server clock)")?;
            }
            for error in &events.first_latency_errors {
                writeln!(f, "          latency not read: {error}")?;
            }
        }
        if let Some(ceiling) = &self.ceiling {
            write!(
                f,
                "broker    ceiling {}/s: {} persistent messages published with confirms \
                 and acknowledged, {}",
                count(ceiling.per_second),
                count(ceiling.messages as f64),
                ceiling.broker
            )?;
            match self.share_of_ceiling {
                Some(share) => writeln!(f, "; end to end = {:.0}% of it", share * 100.0)?,
                None => writeln!(f)?,
            }
        }
        Ok(())
    }
}

/// A whole number with thousands separators: 12,345.
fn count(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// Milliseconds to a precision that suits their size: 0.42, 4.2, 42, 420.
fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.4), "999");
        assert_eq!(count(1234.0), "1,234");
        assert_eq!(count(1_234_567.0), "1,234,567");
    }

    #[test]
    fn percentiles_come_from_what_was_recorded() {
        let mut histogram = Histogram::default();
        assert!(histogram.percentiles().is_none());
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        let percentiles = histogram.percentiles().unwrap();
        assert!((49.9..=50.1).contains(&percentiles.p50), "{percentiles:?}");
        assert!((98.9..=99.1).contains(&percentiles.p99), "{percentiles:?}");
        assert!((99.9..=100.1).contains(&percentiles.max), "{percentiles:?}");
    }

    #[test]
    fn an_error_log_counts_every_error_and_keeps_a_few_distinct_ones() {
        let mut log = ErrorLog::default();
        for n in 0..20 {
            log.add(format!("error {}", n % 7));
        }
        assert_eq!(log.count, 20);
        assert_eq!(
            log.first,
            ["error 0", "error 1", "error 2", "error 3", "error 4"]
        );
    }
}
