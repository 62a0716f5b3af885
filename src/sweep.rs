//! When to sweep a table whose keys come with its traffic (the API's clients, the cover
//! hosts) of the keys it no longer needs, so that it stays bounded: once it holds more
//! than a floor, and after that each time it has doubled what the last sweep kept. A
//! table whose keys are all still needed then costs one sweep per doubling, not one
//! for every new key.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The size past which a table is swept next.
#[derive(Debug)]
pub struct Sweeps {
    floor: usize,
    past: AtomicUsize,
}

impl Sweeps {
    /// Sweeps of a table once it holds more than `floor` keys.
    pub const fn past(floor: usize) -> Self {
        Self {
            floor,
            past: AtomicUsize::new(floor),
        }
    }

    /// Whether a table of `len` keys is due a sweep.
    pub fn due(&self, len: usize) -> bool {
        len > self.past.load(Ordering::Relaxed)
    }

    /// A sweep left `kept` keys: the next is due at twice as many (the floor at least).
    pub fn swept(&self, kept: usize) {
        let next = kept.saturating_mul(2).max(self.floor);
        self.past.store(next, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_is_due_past_the_floor_then_past_twice_what_was_kept() {
        let sweeps = Sweeps::past(10);
        assert!(!sweeps.due(10));
        assert!(sweeps.due(11));
        sweeps.swept(11); // every key still needed
        assert!(!sweeps.due(22));
        assert!(sweeps.due(23));
        sweeps.swept(2); // most were idle
        assert!(!sweeps.due(10));
        assert!(sweeps.due(11));
    }
}
