//! The 16550A UART of COM1 (ports 0x3f8-0x3ff, IRQ4), wrapping rust-vmm's
//! `vm-superio` register model.
//!
//! vm-superio signals an interrupt through a push-button [`Trigger`] each time a THR-
//! empty or received-data condition becomes pending (and, when the guest re-enables
//! IER, for conditions already pending). The PIC is edge-triggered, so each trigger
//! becomes one pulse on the line: one rising edge per interrupt the guest must see.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;

use quern_core::{BusDevice, IrqLine};
use vm_superio::Trigger;

use crate::port::{read_bytewise, write_bytewise};

/// Number of ports the UART occupies.
pub const UART_LEN: u64 = 8;

/// An [`IrqLine`] as vm-superio's interrupt trigger.
pub struct IrqTrigger(Arc<dyn IrqLine>);

impl Trigger for IrqTrigger {
    type E = Infallible;
    fn trigger(&self) -> Result<(), Infallible> {
        self.0.pulse();
        Ok(())
    }
}

type Inner = vm_superio::Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

/// A 16550A UART; output goes to `out`, input comes from [`Serial::enqueue_input`].
pub struct Serial {
    inner: Inner,
    out_failed: bool,
}

impl Serial {
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> Self {
        Serial { inner: vm_superio::Serial::new(IrqTrigger(irq), out), out_failed: false }
    }

    /// Queues bytes from the host for the guest to read, raising the receive interrupt
    /// if the guest enabled it. Returns how many bytes fitted in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.input_space() == 0 {
            return 0;
        }
        self.inner.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Free space in the receive FIFO, so the host's input thread can wait instead of
    /// dropping bytes.
    pub fn input_space(&self) -> usize {
        self.inner.fifo_capacity()
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, UART_LEN, |off| self.inner.read(off as u8));
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, UART_LEN, |off, v| {
            // The only error is a failed host write; the guest must not stall on it.
            if let Err(e) = self.inner.write(off as u8, v) {
                if !std::mem::replace(&mut self.out_failed, true) {
                    log::warn!("serial: output failed: {e}");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quern_core::TestIrq;

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const SCR: u64 = 7;

    use crate::testutil::Buf;

    fn uart() -> (Serial, Arc<TestIrq>, Buf) {
        let irq = Arc::new(TestIrq::default());
        let buf = Buf::default();
        (Serial::new(irq.clone(), Box::new(buf.clone())), irq, buf)
    }

    fn rd(s: &mut Serial, off: u64) -> u8 {
        let mut b = [0];
        s.read(off, &mut b);
        b[0]
    }

    #[test]
    fn transmit_goes_to_output_and_raises_thr_empty() {
        let (mut s, irq, buf) = uart();
        s.write(DATA, b"a");
        assert_eq!(irq.rising_edges(), 0, "THRE interrupt is disabled");
        s.write(IER, &[0x02]);
        assert_eq!(irq.rising_edges(), 1, "enabling THRE with an empty THR interrupts");
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02);
        s.write(DATA, b"b");
        assert_eq!(irq.rising_edges(), 2);
        assert!(!irq.level(), "each interrupt is a pulse");
        assert_eq!(&*buf.0.lock().unwrap(), b"ab");
        assert_eq!(rd(&mut s, LSR) & 0x60, 0x60);
    }

    #[test]
    fn input_raises_rx_interrupt_when_enabled() {
        let (mut s, irq, _) = uart();
        assert_eq!(s.enqueue_input(b"xy"), 2);
        assert_eq!(irq.rising_edges(), 0);
        s.write(IER, &[0x01]);
        assert_eq!(irq.rising_edges(), 1, "pending data interrupts once enabled");
        assert_eq!(rd(&mut s, LSR) & 1, 1);
        assert_eq!(rd(&mut s, DATA), b'x');
        assert_eq!(rd(&mut s, DATA), b'y');
        assert_eq!(rd(&mut s, LSR) & 1, 0);
        assert_eq!(s.enqueue_input(b"z"), 1);
        assert_eq!(irq.rising_edges(), 2);
        assert!(s.input_space() > 0);
        assert_eq!(s.enqueue_input(&[]), 0);
    }

    #[test]
    fn divisor_latch_and_scratch() {
        let (mut s, _, _) = uart();
        s.write(LCR, &[0x80]);
        s.write(DATA, &[0x01, 0x00]); // a 16-bit OUT writes DLL then DLM
        assert_eq!(rd(&mut s, DATA), 1);
        s.write(LCR, &[0x03]);
        s.write(SCR, &[0x5a]);
        let mut w = [0u8; 4];
        s.read(SCR, &mut w);
        assert_eq!(w, [0x5a, 0xff, 0xff, 0xff]);
    }
}
