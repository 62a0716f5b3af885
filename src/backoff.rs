//! How long to wait before reaching again for a database or broker that is down.

use std::time::Duration;

/// Delays between attempts to reach a database or broker that is down: from 100 ms,
/// doubling, capped at 5 s, plus up to as much again of random jitter (backon's), so
/// many processes don't retry in lockstep: never more than 10 s.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_from_100_ms_and_never_exceed_10_s() {
        let delays: Vec<Duration> = reconnect_backoff().take(40).collect();
        assert!(delays[0] >= Duration::from_millis(100));
        assert!(delays[0] <= Duration::from_millis(200));
        assert!(
            delays.iter().all(|delay| *delay <= Duration::from_secs(10)),
            "{delays:?}"
        );
        assert!(delays[39] >= Duration::from_secs(5), "{delays:?}");
    }
}
