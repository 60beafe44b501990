//! The POST code port (0x80): firmware and kernels write progress codes here, and
//! some use it as a short I/O delay. Reads return the last code written.

use quern_core::BusDevice;

use crate::port::{read_bytewise, write_bytewise};

/// The POST code register at port 0x80 (one port).
#[derive(Debug, Default)]
pub struct Port80 {
    last: u8,
}

impl Port80 {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last code written.
    pub fn last(&self) -> u8 {
        self.last
    }
}

quern_core::snapshot_fields!(Port80 { last });

impl BusDevice for Port80 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, 1, |_| self.last);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, 1, |_, v| {
            log::trace!("POST code {v:#04x}");
            self.last = v;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_the_last_code() {
        let mut p = Port80::new();
        p.write(0, &[0x55]);
        let mut b = [0u8; 2];
        p.read(0, &mut b);
        assert_eq!(b, [0x55, 0xff]);
        assert_eq!(p.last(), 0x55);
    }

    #[test]
    fn snapshot_keeps_the_last_code() {
        use quern_core::snapshot::Snapshot;
        let mut p = Port80::new();
        p.write(0, &[0x55]);
        let mut q = Port80::new();
        crate::testutil::restore_into(&mut q, &p.save_state());
        assert_eq!(q.last(), 0x55);
        crate::testutil::assert_refuses_malformed(&mut q, &[]);
    }
}
