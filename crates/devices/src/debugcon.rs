//! QEMU's isa-debugcon (port 0xe9, Bochs' "port e9 hack"): every byte written goes
//! straight to the host, with no UART to program first. Reads return 0xe9, which is
//! how guests detect it.

use std::io::Write;

use quern_core::BusDevice;

use crate::port::{read_bytewise, write_bytewise};

/// The debug console port (one port).
pub struct Debugcon {
    out: Box<dyn Write + Send>,
    failed: bool,
}

impl Debugcon {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Debugcon { out, failed: false }
    }
}

impl BusDevice for Debugcon {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, 1, |_| 0xe9);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, 1, |_, b| {
            // Flush each byte: the log must be complete if the guest dies right after.
            if let Err(e) = self.out.write_all(&[b]).and_then(|_| self.out.flush()) {
                if !std::mem::replace(&mut self.failed, true) {
                    log::warn!("debugcon: output failed: {e}");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::Buf;

    #[test]
    fn bytes_go_out_and_reads_identify_the_port() {
        let buf = Buf::default();
        let mut d = Debugcon::new(Box::new(buf.clone()));
        d.write(0, b"h");
        d.write(0, b"i");
        assert_eq!(&*buf.0.lock().unwrap(), b"hi");
        let mut b = [0];
        d.read(0, &mut b);
        assert_eq!(b, [0xe9]);
    }
}
