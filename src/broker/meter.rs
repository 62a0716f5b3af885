//! Deliveries and settlements per queue, counted by this process: where `GET
//! /api/queues` takes its delivery and acknowledgement rates from when the broker does
//! not report its own (RabbitMQ without its management API).
//!
//! A broker looks a queue's meter up once, when a consumer starts, and hands it to each
//! [`Delivery`](super::Delivery) it makes; a delivery then costs two relaxed atomic
//! additions, one when it is made and one when it is settled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// One queue's counts since this process started.
#[derive(Debug, Default)]
pub struct QueueMeter {
    delivered: AtomicU64,
    settled: AtomicU64,
}

impl QueueMeter {
    /// The meter of `queue`, shared by every consumer of it in this process.
    pub fn of(queue: &str) -> Arc<Self> {
        static METERS: OnceLock<Mutex<HashMap<String, Arc<QueueMeter>>>> = OnceLock::new();
        let mut meters = METERS
            .get_or_init(Mutex::default)
            .lock()
            .expect("meters lock");
        meters.entry(queue.to_owned()).or_default().clone()
    }

    pub(super) fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// `count` deliveries settled; for the outbox, rows the broker confirmed.
    pub fn settled(&self, count: u64) {
        self.settled.fetch_add(count, Ordering::Relaxed);
    }

    /// Deliveries made and settled (acknowledged, requeued, rejected or dead-lettered)
    /// so far.
    pub fn totals(&self) -> MeterTotals {
        MeterTotals {
            delivered: self.delivered.load(Ordering::Relaxed),
            settled: self.settled.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeterTotals {
    pub delivered: u64,
    pub settled: u64,
}
