//! The timer thread: runs timer devices' deadlines (PIT, RTC) against the host clock.
//!
//! Devices only say when they next need attention ([`TimerDevice::tick`]); this thread
//! sleeps until the earliest such time, ticks them, and wakes the vCPU when an
//! interrupt went up. It also ticks at least every [`MAX_SLEEP`], so a device the guest
//! has just reprogrammed is seen soon without devices knowing about this thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use quern_core::bus::lock;
use quern_core::clock::{Clock, TimerDevice};

use crate::control::CpuWaker;

/// The longest the thread sleeps without looking at the devices again.
const MAX_SLEEP: Duration = Duration::from_millis(1);

pub struct TimerThread {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

impl TimerThread {
    pub fn start(
        devices: Vec<Arc<Mutex<dyn TimerDevice>>>,
        clock: Arc<dyn Clock>,
        waker: Arc<CpuWaker>,
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
                    std::thread::sleep(Duration::from_nanos(until - now));
                }
            }
            // Wake a vCPU that might be waiting on us as we leave.
            waker.wake();
        })?;
        Ok(TimerThread { stop, handle })
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.handle.join();
    }
}
