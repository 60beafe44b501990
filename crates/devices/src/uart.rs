//! The 16550A UART of COM1 (ports 0x3f8-0x3ff, IRQ4), wrapping rust-vmm's
//! `vm-superio` register model.
//!
//! A 16550's INTR output is a level: high while an enabled interrupt is pending
//! (IIR bit 0 clear), low once the guest has serviced it (read IIR for THRE, drained
//! the receive buffer for received data) or disabled it in IER. The model drives its
//! line that way, recomputed after every access, rather than through vm-superio's
//! push-button [`Trigger`]: a pulse is invisible to an input the guest made
//! level-triggered in the ELCR (the PIC's IRR follows the wire there), and on an
//! edge-triggered input the level gives the same rising edges.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;

use quern_core::snapshot::{Snapshot, State};
use quern_core::{BusDevice, IrqLine};
use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::Trigger;

use crate::port::{read_bytewise, write_bytewise};

/// Number of ports the UART occupies.
pub const UART_LEN: u64 = 8;

/// vm-superio's trigger, unused: [`Serial`] derives its line from the IIR and IER.
struct NoTrigger;

impl Trigger for NoTrigger {
    type E = Infallible;
    fn trigger(&self) -> Result<(), Infallible> {
        Ok(())
    }
}

type Inner = vm_superio::Serial<NoTrigger, NoEvents, Box<dyn Write + Send>>;

// vm-superio's IIR and IER bits.
const IIR_THR_EMPTY: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IER_RDA: u8 = 0x01;
const IER_THR_EMPTY: u8 = 0x02;

/// A 16550A UART; output goes to `out`, input comes from [`Serial::enqueue_input`].
pub struct Serial {
    inner: Inner,
    irq: Arc<dyn IrqLine>,
    /// The level last driven on `irq`.
    irq_level: bool,
    out_failed: bool,
}

impl Serial {
    pub fn new(irq: Arc<dyn IrqLine>, out: Box<dyn Write + Send>) -> Self {
        Serial { inner: vm_superio::Serial::new(NoTrigger, out), irq, irq_level: false, out_failed: false }
    }

    /// Drives the line to what the registers say: an interrupt vm-superio has
    /// flagged in IIR and the guest still enables in IER.
    fn update_irq(&mut self) {
        let state = self.inner.state();
        let (iir, ier) = (state.interrupt_identification, state.interrupt_enable);
        let level =
            (iir & IIR_RDA != 0 && ier & IER_RDA != 0) || (iir & IIR_THR_EMPTY != 0 && ier & IER_THR_EMPTY != 0);
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// Queues bytes from the host for the guest to read, raising the receive interrupt
    /// if the guest enabled it. Returns how many bytes fitted in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.input_space() == 0 {
            return 0;
        }
        let n = self.inner.enqueue_raw_bytes(bytes).unwrap_or(0);
        self.update_irq();
        n
    }

    /// Free space in the receive FIFO, so the host's input thread can wait instead of
    /// dropping bytes.
    pub fn input_space(&self) -> usize {
        self.inner.fifo_capacity()
    }
}

/// vm-superio's register state, which has no serde of its own.
#[derive(Serialize, Deserialize)]
#[serde(remote = "SerialState")]
struct SerialRegs {
    baud_divisor_low: u8,
    baud_divisor_high: u8,
    interrupt_enable: u8,
    interrupt_identification: u8,
    line_control: u8,
    line_status: u8,
    modem_control: u8,
    modem_status: u8,
    scratch: u8,
    in_buffer: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    #[serde(with = "SerialRegs")]
    regs: SerialState,
    irq_level: bool,
}

/// The registers, the receive FIFO and the line's level; the output stays.
impl Snapshot for Serial {
    fn save_state(&self) -> State {
        quern_core::snapshot::to_state(&Saved { regs: self.inner.state(), irq_level: self.irq_level })
    }

    fn restore_state(&mut self, state: &State) -> Result<(), String> {
        let saved = Saved::deserialize(state).map_err(|e| e.to_string())?;
        // vm-superio checks the FIFO; the output writer moves over once it has.
        let mut inner = Inner::from_state(&saved.regs, NoTrigger, NoEvents, Box::new(std::io::sink()))
            .map_err(|e| format!("serial registers: {e}"))?;
        std::mem::swap(inner.writer_mut(), self.inner.writer_mut());
        self.inner = inner;
        self.irq_level = saved.irq_level;
        self.irq.set_level(self.irq_level);
        Ok(())
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, UART_LEN, |off| self.inner.read(off as u8));
        self.update_irq();
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
        self.update_irq();
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
        assert!(irq.level(), "the line is a level, held while pending");
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02);
        assert!(!irq.level(), "reading IIR services THRE");
        s.write(DATA, b"b");
        assert_eq!(irq.rising_edges(), 2);
        // Disabling the interrupt in IER drops the line; enabling it again raises it.
        s.write(IER, &[0x00]);
        assert!(!irq.level());
        s.write(IER, &[0x02]);
        assert_eq!(irq.rising_edges(), 3);
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02);
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x01, "nothing pending");
        assert!(!irq.level());
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
        assert!(!irq.level(), "reading data services the interrupt");
        assert_eq!(rd(&mut s, DATA), b'y');
        assert_eq!(rd(&mut s, LSR) & 1, 0);
        assert_eq!(s.enqueue_input(b"z"), 1);
        assert_eq!(irq.rising_edges(), 2);
        assert!(s.input_space() > 0);
        assert_eq!(s.enqueue_input(&[]), 0);
    }

    /// `printf '\020' | dd of=/dev/port seek=$((0x4d0))` in a `noapic` guest: IRQ4
    /// level-triggered at the PIC. A level input follows the wire, so the UART must
    /// hold its line high while an interrupt is pending, or the PIC never sees it.
    #[test]
    fn level_triggered_pic_input_sees_pending_interrupts() {
        use crate::pic::{PicIrqLine, PicPair, PicWindow};
        use crate::port::PortGroup;
        use std::sync::Mutex;

        let pic = Arc::new(Mutex::new(PicPair::new()));
        {
            let mut p = pic.lock().unwrap();
            for (w, base, icw3) in [(PicWindow::Master, 0x20, 0x04), (PicWindow::Slave, 0x28, 0x02)] {
                for (off, v) in [(0, 0x11), (1, base), (1, icw3), (1, 0x01), (1, 0x00)] {
                    p.window_write(w, off, &[v]);
                }
            }
        }
        let line = Arc::new(PicIrqLine::new(pic.clone(), 4, Arc::new(|| {})));
        let mut s = Serial::new(line, Box::new(std::io::sink()));
        // THRE pending (the console's TX interrupt) before the switch to level.
        s.write(IER, &[0x02]);
        pic.lock().unwrap().window_write(PicWindow::Elcr, 0, &[0x10]);
        let eoi = |pic: &Arc<Mutex<PicPair>>| pic.lock().unwrap().window_write(PicWindow::Master, 0, &[0x20]);
        let intr = |pic: &Arc<Mutex<PicPair>>| pic.lock().unwrap().intr();
        assert!(intr(&pic), "the pending THRE interrupt is seen after the ELCR switch");
        assert_eq!(pic.lock().unwrap().acknowledge(), 0x24);
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02);
        eoi(&pic);
        assert!(!intr(&pic), "reading IIR dropped the line");
        // New events while level-triggered: a byte sent, a byte received.
        s.write(DATA, b"a");
        assert!(intr(&pic), "THRE after a write");
        assert_eq!(pic.lock().unwrap().acknowledge(), 0x24);
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02);
        eoi(&pic);
        s.write(IER, &[0x01]);
        assert!(!intr(&pic));
        s.enqueue_input(b"k");
        assert!(intr(&pic), "received data");
        assert_eq!(pic.lock().unwrap().acknowledge(), 0x24);
        assert_eq!(rd(&mut s, DATA), b'k');
        eoi(&pic);
        assert!(!intr(&pic), "reading the data dropped the line");
    }

    #[test]
    fn snapshot_keeps_the_fifo_registers_and_the_line() {
        let (mut s, _, _) = uart();
        s.write(LCR, &[0x80]);
        s.write(DATA, &[0x0c, 0x00]);
        s.write(LCR, &[0x03]);
        s.write(SCR, &[0x5a]);
        s.write(IER, &[0x01]);
        s.enqueue_input(b"xy");
        assert_eq!(rd(&mut s, DATA), b'x');
        s.enqueue_input(b"z");

        let (mut r, irq, buf) = uart();
        crate::testutil::restore_into(&mut r, &s.save_state());
        assert!(irq.level(), "the receive interrupt is driven again");
        assert_eq!((rd(&mut r, SCR), rd(&mut r, LCR), rd(&mut r, IER)), (0x5a, 0x03, 0x01));
        assert_eq!([rd(&mut r, DATA), rd(&mut r, DATA)], *b"yz");
        assert!(!irq.level());
        r.write(LCR, &[0x83]);
        assert_eq!(rd(&mut r, DATA), 0x0c, "the divisor latch");
        r.write(LCR, &[0x03]);
        r.write(DATA, b"!");
        assert_eq!(&*buf.0.lock().unwrap(), b"!", "output goes where the restored device's went");
    }

    #[test]
    fn snapshot_refuses_malformed_states() {
        let (mut s, _, _) = uart();
        s.enqueue_input(b"ab");
        crate::testutil::assert_refuses_malformed(&mut s, &[]);
        let mut full = s.save_state();
        full["regs"]["in_buffer"] = vec![0u8; 65].into();
        assert!(s.restore_state(&full).unwrap_err().contains("FIFO"));
        assert_eq!(rd(&mut s, DATA), b'a');
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
