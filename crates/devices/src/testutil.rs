//! Test doubles shared by the device tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

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
