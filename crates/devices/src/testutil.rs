//! Test doubles and checks shared by the device tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

use quern_core::snapshot::{Snapshot, State};
use serde_json::json;

/// A character device output that keeps everything written, readable from the test
/// while the device owns a clone.
#[derive(Clone, Default)]
pub struct Buf(pub Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Restores `state` into `fresh` (a device built the way the saved one was), which
/// must then save that same state.
pub fn restore_into<T: Snapshot + ?Sized>(fresh: &mut T, state: &State) {
    fresh.restore_state(state).unwrap();
    assert_eq!(fresh.save_state(), *state, "restored state saves back the same");
}

/// Malformed states are refused and leave `dev` as it was: not an object, each
/// top-level field missing or of the wrong type, and each list at the JSON pointers
/// `fixed` (arrays of a fixed length) one entry short.
pub fn assert_refuses_malformed<T: Snapshot + ?Sized>(dev: &mut T, fixed: &[&str]) {
    let good = dev.save_state();
    let mut bad = vec![(State::Null, "null".to_string())];
    for name in good.as_object().expect("an object state").keys() {
        let mut s = good.clone();
        s.as_object_mut().unwrap().remove(name);
        bad.push((s, format!("without {name}")));
        let mut s = good.clone();
        s[name] = json!("wrong");
        bad.push((s, format!("{name} of the wrong type")));
    }
    for &ptr in fixed {
        let mut s = good.clone();
        s.pointer_mut(ptr).and_then(State::as_array_mut).unwrap_or_else(|| panic!("no list at {ptr}")).pop();
        bad.push((s, format!("{ptr} one short")));
    }
    for (s, what) in bad {
        assert!(dev.restore_state(&s).is_err(), "{what}: accepted");
        assert_eq!(dev.save_state(), good, "{what}: the device changed");
    }
}
