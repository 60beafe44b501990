//! The time source of timer devices (PIT, RTC, ACPI PM timer).
//!
//! Devices read time only through [`Clock`], in nanoseconds since an arbitrary start,
//! so their tests can step a fake clock and a deterministic mode can count
//! instructions instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A monotonic clock in nanoseconds.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;
    /// Makes the clock read `ns` now and run on from there: a restored machine's
    /// devices then find the time their saved deadlines were taken against.
    fn set_now_ns(&self, ns: u64);
}

/// The host's monotonic clock, from the machine's creation (or from the time a
/// restored machine had reached when it was saved).
#[derive(Debug)]
pub struct HostClock {
    start: Instant,
    /// Added to the host's elapsed time: set by a restore.
    offset: std::sync::atomic::AtomicI64,
}

impl HostClock {
    pub fn new() -> Self {
        HostClock { start: Instant::now(), offset: Default::default() }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        (self.start.elapsed().as_nanos() as i64 + self.offset.load(Ordering::Relaxed)) as u64
    }
    fn set_now_ns(&self, ns: u64) {
        let elapsed = self.start.elapsed().as_nanos() as i64;
        self.offset.store(ns as i64 - elapsed, Ordering::SeqCst);
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    pub fn advance_ns(&self, ns: u64) {
        self.now.fetch_add(ns, Ordering::SeqCst);
    }
    pub fn set_ns(&self, ns: u64) {
        self.now.store(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
    fn set_now_ns(&self, ns: u64) {
        self.set_ns(ns);
    }
}

/// A device with its own sense of time (PIT, RTC). The machine's timer thread calls
/// [`TimerDevice::tick`] when the deadline it returned last has passed (and now and
/// then besides, so a device reprogrammed by the guest is seen soon).
pub trait TimerDevice: Send {
    /// Does whatever is due at `now_ns` (raising interrupt lines) and returns the next
    /// absolute time anything will be due, if any.
    fn tick(&mut self, now_ns: u64) -> Option<u64>;
}
