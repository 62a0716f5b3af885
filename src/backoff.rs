//! How long to wait before reaching again for a database or broker that is down.

use std::time::Duration;

/// The longest wait between two attempts, jitter included.
const LONGEST: Duration = Duration::from_secs(4);

/// Delays between attempts to reach a database or broker that is down: from 100 ms,
/// doubling, capped at 2 s, plus up to as much again of random jitter (backon's), so
/// many processes don't retry in lockstep: never more than 4 s. Short, because what is
/// down is often back within seconds (a restart, a cluster electing a new leader), and
/// each attempt costs a connection or a small batch.
pub struct ReconnectBackoff(backon::ExponentialBackoff);

impl ReconnectBackoff {
    pub fn new() -> Self {
        use backon::BackoffBuilder;
        Self(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(LONGEST / 2)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.0.next().unwrap_or(LONGEST)
    }
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_from_100_ms_to_2_s_and_never_exceed_4_s() {
        let mut backoff = ReconnectBackoff::new();
        let delays: Vec<Duration> = (0..40).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(100));
        assert!(delays[0] <= Duration::from_millis(200));
        assert!(delays.iter().all(|delay| *delay <= LONGEST), "{delays:?}");
        assert!(delays[39] >= Duration::from_secs(2), "{delays:?}");
    }
}
