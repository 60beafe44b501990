//! A NIC stand-in for the backends' tests: it keeps what it takes, refuses everything
//! while `full`, and lets a test wait for a frame.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::FrameSink;

/// A NIC that records frames, refusing them while `full`.
#[derive(Default)]
pub struct Nic {
    pub frames: Mutex<Vec<Vec<u8>>>,
    arrived: Condvar,
    pub full: AtomicBool,
}

impl FrameSink for Nic {
    fn receive(&self, frame: &[u8]) -> bool {
        if self.full.load(Ordering::Acquire) {
            return false;
        }
        self.frames.lock().unwrap().push(frame.to_vec());
        self.arrived.notify_all();
        true
    }
}

impl Nic {
    /// Waits up to 5 s for a frame `pick` accepts.
    #[cfg_attr(not(feature = "slirp"), allow(dead_code))]
    pub fn wait_for(&self, what: &str, pick: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut g = self.frames.lock().unwrap();
        loop {
            if let Some(f) = g.iter().find(|f| pick(f)) {
                return f.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} within 5 s; frames seen: {}", g.len());
            g = self.arrived.wait_timeout(g, left).unwrap().0;
        }
    }
}
