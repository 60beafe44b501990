//! Shared plumbing for port-I/O models: one adapter for devices that answer at several
//! port ranges, the ISA rule for wide accesses to byte registers, and once-only logs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use quern_core::bus::{lock, BusDevice, SharedDevice};

/// A device that answers at several port ranges ("windows"), told apart by
/// `Self::Window` (say, the PIC's master, slave and ELCR ports).
pub trait PortGroup: Send + 'static {
    type Window: Copy + Send + 'static;
    fn window_read(&mut self, window: Self::Window, offset: u64, data: &mut [u8]);
    fn window_write(&mut self, window: Self::Window, offset: u64, data: &[u8]);
}

/// One window of a shared [`PortGroup`], as a bus device.
pub struct PortWindow<T: PortGroup> {
    dev: Arc<Mutex<T>>,
    window: T::Window,
}

impl<T: PortGroup> PortWindow<T> {
    pub fn new(dev: &Arc<Mutex<T>>, window: T::Window) -> Self {
        PortWindow { dev: dev.clone(), window }
    }

    /// The window as a bus device ready to insert.
    pub fn shared(dev: &Arc<Mutex<T>>, window: T::Window) -> SharedDevice {
        Arc::new(Mutex::new(Self::new(dev, window)))
    }
}

impl<T: PortGroup> BusDevice for PortWindow<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.dev).window_read(self.window, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.dev).window_write(self.window, offset, data);
    }
}

/// Serves a wide read from byte registers the way the ISA bus does: one byte access
/// per port, at consecutive offsets. Bytes past the device's `len` read 0xff, as
/// an undriven bus does.
pub fn read_bytewise(offset: u64, data: &mut [u8], len: u64, mut read: impl FnMut(u64) -> u8) {
    for (i, b) in data.iter_mut().enumerate() {
        let off = offset.saturating_add(i as u64);
        *b = if off < len { read(off) } else { 0xff };
    }
}

/// The write counterpart of [`read_bytewise`]; bytes past `len` are dropped.
pub fn write_bytewise(offset: u64, data: &[u8], len: u64, mut write: impl FnMut(u64, u8)) {
    for (i, &b) in data.iter().enumerate() {
        let off = offset.saturating_add(i as u64);
        if off < len {
            write(off, b);
        }
    }
}

/// A little-endian value from an access of up to 8 bytes.
pub fn le_value(data: &[u8]) -> u64 {
    data.iter().take(8).rev().fold(0, |v, &b| (v << 8) | u64::from(b))
}

/// Fills `data` with the little-endian bytes of `value` (zero past 8 bytes).
pub fn put_le(data: &mut [u8], value: u64) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = if i < 8 { (value >> (8 * i)) as u8 } else { 0 };
    }
}

/// Remembers which unusual guest accesses were already logged, so a guest hammering
/// an unmodelled register does not flood the log.
#[derive(Debug, Default)]
pub struct LogOnce(HashSet<u32>);

impl LogOnce {
    /// True the first time `key` is seen.
    pub fn first(&mut self, key: u32) -> bool {
        self.0.len() < 256 && self.0.insert(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_access_to_byte_registers_splits_per_port() {
        let mut data = [0u8; 4];
        read_bytewise(0, &mut data, 2, |off| off as u8 + 10);
        assert_eq!(data, [10, 11, 0xff, 0xff]);
        let mut seen = vec![];
        write_bytewise(1, &[1, 2, 3], 2, |off, b| seen.push((off, b)));
        assert_eq!(seen, [(1, 1)]);
    }

    #[test]
    fn little_endian_helpers_round_trip() {
        assert_eq!(le_value(&[0x34, 0x12]), 0x1234);
        let mut d = [0; 3];
        put_le(&mut d, 0xabcdef);
        assert_eq!(d, [0xef, 0xcd, 0xab]);
    }
}
