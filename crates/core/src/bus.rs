//! Port-I/O and MMIO buses.
//!
//! A [`Bus`] maps address ranges to devices. A device sees only the offset into its
//! own range, so the same model serves wherever the machine places it. The bus is
//! built once when the machine is assembled and then shared read-only between vCPU
//! threads; each device sits behind its own mutex.
//!
//! Unclaimed addresses read as all ones (as an ISA bus with nothing driving it does)
//! and ignore writes. At debug level (`-d unimp`/`guest_errors`) the first access to
//! each such address is logged; later ones are counted and summarised once a second, so
//! a guest polling a missing port cannot flood the log.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use crate::log_limit::LogLimiter;

/// A device on a bus: a register state machine addressed by offset.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes (1, 2, 4 or 8) at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared, lockable bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("{name} bus: range {base:#x}+{len:#x} overlaps a device already there")]
    Overlap { name: &'static str, base: u64, len: u64 },
    #[error("{name} bus: empty range at {base:#x}")]
    Empty { name: &'static str, base: u64 },
}

/// How many distinct unassigned addresses a bus reports one by one; past that (a
/// guest scanning the address space), new ones are only counted.
const MAX_REPORTED: usize = 4096;

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// A bus: devices registered by address range.
pub struct Bus {
    name: &'static str,
    ranges: BTreeMap<u64, Entry>,
    /// Unassigned addresses already reported.
    reported: Mutex<HashSet<u64>>,
    /// Other unassigned accesses: counted, printed at most once a second.
    repeats: LogLimiter,
}

impl Bus {
    /// A new, empty bus; `name` ("pio", "mmio") appears in log messages.
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: BTreeMap::new(),
            reported: Mutex::new(HashSet::new()),
            repeats: LogLimiter::new(log::Level::Debug, module_path!()),
        }
    }

    /// Registers `device` for `[base, base+len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty { name: self.name, base });
        }
        let overlap = BusError::Overlap { name: self.name, base, len };
        if let Some((&b, e)) = self.ranges.range(..=base).next_back() {
            if b + e.len > base {
                return Err(overlap);
            }
        }
        if let Some((&b, _)) = self.ranges.range(base..).next() {
            if b < base + len {
                return Err(overlap);
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` in its range.
    pub fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (&base, e) = self.ranges.range(..=addr).next_back()?;
        (addr - base < e.len).then_some((&e.device, addr - base))
    }

    /// Reads from whatever device covers `addr`; returns false (and all-ones data) if
    /// none does.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                self.unassigned(addr, "read", data.len());
                false
            }
        }
    }

    /// Writes to whatever device covers `addr`; returns false if none does.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                lock(dev).write(offset, data);
                true
            }
            None => {
                self.unassigned(addr, "write", data.len());
                false
            }
        }
    }

    fn unassigned(&self, addr: u64, what: &str, len: usize) {
        // Without -d, a guest polling a missing port costs no lock.
        if log::Level::Debug > log::max_level() {
            return;
        }
        let new = {
            let mut reported = lock(&self.reported);
            reported.len() < MAX_REPORTED && reported.insert(addr)
        };
        if new {
            log::debug!("{} bus: unhandled {len}-byte {what} at {addr:#x}", self.name);
        } else {
            self.repeats.log(format_args!(
                "{} bus: more unhandled accesses (latest: {len}-byte {what} at {addr:#x})",
                self.name
            ));
        }
    }
}

/// Locks a device, carrying on if another thread panicked while holding it: a device
/// model's state is plain registers, and one failed access must not wedge the machine.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Scratch {
        last: Option<(u64, Vec<u8>)>,
    }
    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_offset() {
        let dev = Arc::new(Mutex::new(Scratch::default()));
        let mut bus = Bus::new("pio");
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fb, &mut b));
        assert_eq!(b[0], 3);
        assert!(bus.write(0x3f9, &[7, 8]));
        assert_eq!(dev.lock().unwrap().last, Some((1, vec![7, 8])));
    }

    #[test]
    fn unclaimed_reads_all_ones() {
        let bus = Bus::new("pio");
        let mut b = [0u8; 2];
        assert!(!bus.read(0x80, &mut b));
        assert_eq!(b, [0xff, 0xff]);
        assert!(!bus.write(0x80, &[1]));
    }

    #[test]
    fn a_polled_missing_port_is_logged_with_a_count() {
        let bus = Bus::new("pollbus");
        let lines = || crate::log_limit::test_log::lines(module_path!().trim_end_matches("::tests"), "pollbus");
        lines();
        let mut b = [0u8; 1];
        for _ in 0..10_000 {
            bus.read(0x61, &mut b);
        }
        bus.write(0x62, &[0]);
        drop(bus);
        assert_eq!(
            lines(),
            [
                "pollbus bus: unhandled 1-byte read at 0x61",
                "pollbus bus: more unhandled accesses (latest: 1-byte read at 0x61)",
                "pollbus bus: unhandled 1-byte write at 0x62",
                "pollbus bus: more unhandled accesses (latest: 1-byte read at 0x61) (repeated 9998 more times in the last 0.0s)",
            ]
        );
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new("mmio");
        let d = || Arc::new(Mutex::new(Scratch::default())) as SharedDevice;
        bus.insert(d(), 0x1000, 0x100).unwrap();
        assert!(bus.insert(d(), 0x10ff, 1).is_err());
        assert!(bus.insert(d(), 0xf00, 0x101).is_err());
        assert!(bus.insert(d(), 0, 0).is_err());
        bus.insert(d(), 0x1100, 1).unwrap();
        bus.insert(d(), 0xf00, 0x100).unwrap();
    }
}
