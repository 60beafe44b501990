//! The timer thread: runs timer devices' deadlines (PIT, RTC) against the host clock.
//!
//! Devices only say when they next need attention ([`TimerDevice::tick`]); this thread
//! sleeps until the earliest such time, ticks them, and wakes the vCPU when an
//! interrupt went up. It also ticks at least every [`MAX_SLEEP`], so a device the guest
//! has just reprogrammed is seen soon without devices knowing about this thread; a
//! reprogramming that needs it sooner (a local APIC timer armed for a few
//! microseconds) wakes it through [`TimerRearm`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use quern_core::bus::lock;
use quern_core::clock::{Clock, TimerDevice};

use crate::control::CpuWaker;

/// The longest the thread sleeps without looking at the devices again.
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// Wakes the timer thread early, to look at deadlines again.
#[derive(Default)]
pub struct TimerRearm {
    pending: Mutex<bool>,
    cond: Condvar,
}

impl TimerRearm {
    pub fn rearm(&self) {
        *lock(&self.pending) = true;
        self.cond.notify_one();
    }

    /// Sleeps for `d` or until rearmed.
    fn sleep(&self, d: Duration) {
        let pending = lock(&self.pending);
        let (mut pending, _) = self.cond.wait_timeout_while(pending, d, |p| !*p).unwrap_or_else(|e| e.into_inner());
        *pending = false;
    }
}

pub struct TimerThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl TimerThread {
    pub fn start(
        devices: Vec<Arc<Mutex<dyn TimerDevice>>>,
        clock: Arc<dyn Clock>,
        waker: Arc<CpuWaker>,
        rearm: Arc<TimerRearm>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new().name("quern-timers".into()).spawn(move || {
            while !flag.load(Ordering::Acquire) {
                let now = clock.now_ns();
                let next = devices.iter().filter_map(|d| lock(d).tick(now)).min();
                let max = now + MAX_SLEEP.as_nanos() as u64;
                let until = next.unwrap_or(max).min(max);
                let now = clock.now_ns();
                if until > now {
                    rearm.sleep(Duration::from_nanos(until - now));
                }
            }
            // Wake a vCPU that might be waiting on us as we leave.
            waker.wake();
        })?;
        Ok(TimerThread { stop, handle })
    }

    pub fn stop(self, rearm: &TimerRearm) {
        self.stop.store(true, Ordering::Release);
        rearm.rearm();
        let _ = self.handle.join();
    }
}
