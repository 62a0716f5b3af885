//! A circuit breaker per cover host, so that a host that is down is not asked for every
//! attempt of every game.
//!
//! A breaker starts closed: fetches go through, and it counts the transient failures
//! (timeouts, network errors, 5xx, 408, 429) of the last [`BreakerConfig::window`].
//! At [`BreakerConfig::failures`] of them it opens: fetches from the host are refused
//! at once, without a request, for [`BreakerConfig::cool_down`]. Then it is half-open:
//! one fetch goes through as a probe while the others are still refused; its success
//! closes the breaker, its failure opens it again. A probe that has not told within
//! another cool-down (its task was cancelled, say) is taken as lost: the next fetch
//! probes. An answer that says the request
//! itself was wrong (a 404) shows the host is up, and counts as a success.
//!
//! A refused fetch is [`super::FetchError::CircuitOpen`], which the worker retries
//! once the breaker may let it through, without counting it as an attempt. The state of
//! each host's breaker is the gauge `retrocat_circuit_state{target}`: 0 closed, 1
//! half-open, 2 open. A forgotten host's series stays at 0 until the process ends:
//! the Prometheus exporter has no way to drop one.

use crate::shutdown::Shutdown;
use crate::storage::{Circuit, CircuitState, Circuits};
use crate::sweep::Sweeps;
use crate::telemetry::metrics::CIRCUIT_STATE;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a worker reports its open breakers to the database, while it has any.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The open breakers a worker reports at most (the first by host name): enough to see
/// an outage, and a bound on the report's rows when every host fails.
const REPORTED_AT_MOST: usize = 100;

/// When a host's breaker opens, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Transient failures within `window` that open the breaker.
    pub failures: u32,
    pub window: Duration,
    /// How long an open breaker refuses fetches before it lets a probe through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(30),
            cool_down: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
enum State {
    /// The times of the recent transient failures, oldest first.
    Closed(VecDeque<Instant>),
    Open {
        until: Instant,
    },
    /// The probe is out; the other fetches wait for its outcome until `until`, when
    /// another may probe.
    HalfOpen {
        until: Instant,
    },
}

impl State {
    fn gauge(&self) -> f64 {
        match self {
            Self::Closed(_) => 0.0,
            Self::HalfOpen { .. } => 1.0,
            Self::Open { .. } => 2.0,
        }
    }
}

/// The breakers of every host fetched from.
#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    hosts: Mutex<HashMap<String, State>>,
    /// When the recovered hosts are forgotten: past `HOSTS_KEPT`.
    sweeps: Sweeps,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            hosts: Mutex::default(),
            sweeps: Sweeps::past(super::HOSTS_KEPT),
        }
    }

    /// Whether a fetch from `host` may go out now; if not, how long until one may.
    pub fn admit(&self, host: &str) -> Result<(), Duration> {
        let mut hosts = self.hosts.lock().expect("breakers lock");
        let Some(state) = hosts.get_mut(host) else {
            return Ok(());
        };
        let now = Instant::now();
        match state {
            State::Closed(_) => Ok(()),
            State::Open { until } | State::HalfOpen { until } if now >= *until => {
                *state = State::HalfOpen {
                    until: now + self.config.cool_down,
                };
                publish(host, state);
                Ok(())
            }
            State::Open { until } | State::HalfOpen { until } => Err(*until - now),
        }
    }

    /// What became of a fetch from `host` that [`Breakers::admit`] let out: `true` when
    /// the host answered (whatever it answered, save a transient failure).
    pub fn record(&self, host: &str, answered: bool) {
        let mut hosts = self.hosts.lock().expect("breakers lock");
        let now = Instant::now();
        if answered {
            if let Some(state) = hosts.remove(host)
                && !matches!(state, State::Closed(_))
            {
                publish(host, &State::Closed(VecDeque::new()));
            }
            return;
        }
        if !hosts.contains_key(host) && self.sweeps.due(hosts.len() + 1) {
            self.forget_recovered(&mut hosts, now);
            self.sweeps.swept(hosts.len());
        }
        let state = hosts
            .entry(host.to_owned())
            .or_insert_with(|| State::Closed(VecDeque::new()));
        let opens = match state {
            State::Closed(failures) => {
                failures.push_back(now);
                while failures
                    .front()
                    .is_some_and(|at| now.duration_since(*at) > self.config.window)
                {
                    failures.pop_front();
                }
                failures.len() >= self.config.failures as usize
            }
            // The probe failed (or a fetch let out before the breaker opened).
            State::HalfOpen { .. } | State::Open { .. } => true,
        };
        if opens {
            *state = State::Open {
                until: now + self.config.cool_down,
            };
            tracing::warn!(host, cool_down = ?self.config.cool_down, "cover host failing: circuit open");
        }
        publish(host, state);
    }

    /// Forgets the closed breakers whose failures are all older than the window: they
    /// would count none of them. The map then holds the hosts that failed within one
    /// window, and those whose breaker is open or half-open, however many hosts came
    /// and went before.
    fn forget_recovered(&self, hosts: &mut HashMap<String, State>, now: Instant) {
        hosts.retain(|_, state| match state {
            State::Closed(failures) => failures
                .back()
                .is_some_and(|at| now.duration_since(*at) <= self.config.window),
            State::Open { .. } | State::HalfOpen { .. } => true,
        });
    }

    /// The breakers that hold fetches back now, by host.
    pub fn open_circuits(&self) -> Vec<Circuit> {
        let hosts = self.hosts.lock().expect("breakers lock");
        let (now, wall) = (Instant::now(), chrono::Utc::now());
        let mut open: Vec<Circuit> = hosts
            .iter()
            .filter_map(|(host, state)| {
                let (state, until) = match state {
                    State::Closed(_) => return None,
                    State::Open { until } => (CircuitState::Open, until),
                    State::HalfOpen { until } => (CircuitState::HalfOpen, until),
                };
                Some(Circuit {
                    target: host.clone(),
                    state,
                    until: wall + until.saturating_duration_since(now),
                })
            })
            .collect();
        open.sort_by(|a, b| a.target.cmp(&b.target));
        open
    }

    /// Reports this process's open breakers as `worker`'s to `store` once a second
    /// while it has any, and once more when the last has closed, until shutdown: the
    /// API's `GET /api/queues` reads them there.
    pub async fn report(&self, store: &dyn Circuits, worker: &str, shutdown: Shutdown) {
        let reported_any = AtomicBool::new(false);
        let report = || async {
            let mut open = self.open_circuits();
            open.truncate(REPORTED_AT_MOST);
            if open.is_empty() && !reported_any.load(Ordering::Relaxed) {
                return;
            }
            match store.report_circuits(worker, &open).await {
                Ok(()) => reported_any.store(!open.is_empty(), Ordering::Relaxed),
                Err(error) => {
                    tracing::warn!(%error, "could not report the open circuit breakers");
                }
            }
        };
        shutdown.every(REPORT_EVERY, report).await;
    }
}

fn publish(host: &str, state: &State) {
    metrics::gauge!(CIRCUIT_STATE, "target" => host.to_owned()).set(state.gauge());
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: BreakerConfig = BreakerConfig {
        failures: 3,
        window: Duration::from_secs(60),
        cool_down: Duration::from_millis(50),
    };

    #[test]
    fn a_breaker_opens_after_its_failures_then_lets_one_probe_through() {
        let breakers = Breakers::new(FAST);
        for _ in 0..2 {
            assert_eq!(breakers.admit("down"), Ok(()));
            breakers.record("down", false);
        }
        assert_eq!(breakers.admit("down"), Ok(()), "two failures of three");
        breakers.record("down", false);
        let wait = breakers.admit("down").unwrap_err();
        assert!(wait <= FAST.cool_down, "{wait:?}");
        assert_eq!(
            breakers.admit("up"),
            Ok(()),
            "another host is not held back"
        );

        std::thread::sleep(FAST.cool_down);
        assert_eq!(breakers.admit("down"), Ok(()), "the probe");
        assert!(breakers.admit("down").is_err(), "one probe at a time");
        breakers.record("down", false);
        assert!(
            breakers.admit("down").is_err(),
            "a failed probe opens it again"
        );

        std::thread::sleep(FAST.cool_down);
        assert_eq!(breakers.admit("down"), Ok(()));
        breakers.record("down", true);
        for _ in 0..5 {
            assert_eq!(breakers.admit("down"), Ok(()), "closed again");
        }
    }

    #[test]
    fn a_probe_that_never_tells_is_taken_as_lost_after_a_cool_down() {
        let breakers = Breakers::new(FAST);
        for _ in 0..3 {
            breakers.record("down", false);
        }
        std::thread::sleep(FAST.cool_down);
        assert_eq!(breakers.admit("down"), Ok(()), "the probe, never recorded");
        assert!(breakers.admit("down").is_err(), "one probe at a time");
        std::thread::sleep(FAST.cool_down);
        assert_eq!(breakers.admit("down"), Ok(()), "another probe");
        breakers.record("down", true);
        assert_eq!(breakers.admit("down"), Ok(()), "closed");
    }

    #[test]
    fn past_the_hosts_kept_the_breakers_with_no_recent_failure_are_forgotten() {
        let breakers = Breakers::new(BreakerConfig {
            window: Duration::from_millis(20),
            ..FAST
        });
        for _ in 0..3 {
            breakers.record("down", false);
        }
        for n in 1..super::super::HOSTS_KEPT {
            breakers.record(&format!("once-{n}"), false);
        }
        std::thread::sleep(Duration::from_millis(30));
        breakers.record("new", false);
        let hosts = breakers.hosts.lock().unwrap();
        let mut kept: Vec<&str> = hosts.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            ["down", "new"],
            "the open breaker and the newest failure"
        );
    }

    #[test]
    fn failures_older_than_the_window_are_forgotten_and_a_success_resets_the_count() {
        let breakers = Breakers::new(BreakerConfig {
            window: Duration::from_millis(20),
            ..FAST
        });
        breakers.record("flaky", false);
        breakers.record("flaky", false);
        std::thread::sleep(Duration::from_millis(30));
        breakers.record("flaky", false);
        assert_eq!(
            breakers.admit("flaky"),
            Ok(()),
            "one failure within the window"
        );
        breakers.record("flaky", false);
        breakers.record("flaky", true);
        breakers.record("flaky", false);
        assert_eq!(
            breakers.admit("flaky"),
            Ok(()),
            "the success reset the count"
        );
    }
}
