//! The machine's side of [`MachineControl`]: device requests and vCPU wake-ups.
//!
//! [`CpuWaker`] is how anything outside the vCPU thread gets its attention: an
//! interrupt line that went up, a device asking for reset or power-off, the console's
//! quit key. It kicks a vCPU out of guest code and wakes one waiting in HLT.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use quern_core::bus::lock;
use quern_core::{MachineControl, MachineEvent, VcpuKicker};

/// Wakes the vCPU: kicks it out of guest code, or out of its wait in HLT.
#[derive(Default)]
pub struct CpuWaker {
    kicker: OnceLock<Arc<dyn VcpuKicker>>,
    /// Set by every wake; the halted vCPU sleeps until it sees it.
    woken: Mutex<bool>,
    cond: Condvar,
}

impl CpuWaker {
    /// Connects the waker to the vCPU once it exists.
    pub fn attach(&self, kicker: Arc<dyn VcpuKicker>) {
        let _ = self.kicker.set(kicker);
    }

    pub fn wake(&self) {
        if let Some(k) = self.kicker.get() {
            k.kick();
        }
        *lock(&self.woken) = true;
        self.cond.notify_all();
    }

    /// Sleeps until woken or `timeout` passes. A wake that came before the call is not
    /// lost: it returns at once.
    pub fn wait(&self, timeout: Duration) {
        let mut woken = lock(&self.woken);
        if !*woken {
            woken = self.cond.wait_timeout(woken, timeout).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
        }
        *woken = false;
    }
}

/// Requests from devices, acted on by the machine loop.
pub struct EventQueue {
    pending: AtomicBool,
    event: Mutex<Option<MachineEvent>>,
    /// Every vCPU's: a request stops them all.
    wakers: Vec<Arc<CpuWaker>>,
}

impl EventQueue {
    pub fn new(wakers: Vec<Arc<CpuWaker>>) -> Self {
        EventQueue { pending: AtomicBool::new(false), event: Mutex::new(None), wakers }
    }

    /// Whether a request waits; cheap enough to call after every I/O access.
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    pub fn take(&self) -> Option<MachineEvent> {
        let mut e = lock(&self.event);
        self.pending.store(false, Ordering::Release);
        e.take()
    }
}

impl MachineControl for EventQueue {
    fn request(&self, event: MachineEvent) {
        let mut e = lock(&self.event);
        // An exit or power-off outranks a reset asked for in the same breath.
        // A pause never hides another request (the machine pauses after acting on it).
        let outranked =
            matches!((*e, event), (Some(MachineEvent::Exit(_) | MachineEvent::PowerOff), MachineEvent::Reset))
                || (e.is_some() && event == MachineEvent::Pause);
        if !outranked {
            *e = Some(event);
        }
        self.pending.store(true, Ordering::Release);
        drop(e);
        self.wakers.iter().for_each(|w| w.wake());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_before_the_wait_is_not_lost() {
        let w = CpuWaker::default();
        w.wake();
        let t = std::time::Instant::now();
        w.wait(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn exit_outranks_reset() {
        let q = EventQueue::new(vec![Arc::new(CpuWaker::default())]);
        assert!(!q.is_pending());
        q.request(MachineEvent::Exit(3));
        q.request(MachineEvent::Reset);
        assert!(q.is_pending());
        assert_eq!(q.take(), Some(MachineEvent::Exit(3)));
        assert!(!q.is_pending());
    }
}
