//! Interrupt lines.
//!
//! The flow of an interrupt in quern: a device calls [`IrqLine::set_level`] on the line
//! the machine gave it; the line belongs to an interrupt controller model (the i8259
//! pair now, the IOAPIC later) or, with KVM's in-kernel irqchip, forwards to KVM. The
//! controller's output is the CPU's INTR pin: an accelerator asks
//! [`crate::VmOps::interrupt_pending`] before it enters guest code and, when the guest
//! can take it, [`crate::VmOps::acknowledge_interrupt`] for the vector (the INTA cycle).
//! A line that changes while the vCPU runs guest code kicks it (see
//! [`crate::VcpuKicker`]) so the interrupt is seen promptly.

/// One interrupt line from a device. ISA lines are edge-triggered at the PIC: a device
/// that wants one interrupt per event raises and then lowers the line.
pub trait IrqLine: Send + Sync {
    /// Drives the line high or low.
    fn set_level(&self, high: bool);

    /// One edge: high, then low.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// A line connected to nothing, for devices whose interrupt is not wired.
#[derive(Clone, Copy, Debug, Default)]
pub struct NullIrq;

impl IrqLine for NullIrq {
    fn set_level(&self, _high: bool) {}
}

/// A line that records its level, for tests of devices.
#[derive(Debug, Default)]
pub struct TestIrq {
    level: std::sync::atomic::AtomicBool,
    edges: std::sync::atomic::AtomicUsize,
}

impl TestIrq {
    /// The line's current level.
    pub fn level(&self) -> bool {
        self.level.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// How many rising edges the line has seen.
    pub fn rising_edges(&self) -> usize {
        self.edges.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl IrqLine for TestIrq {
    fn set_level(&self, high: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        if high && !self.level.swap(true, SeqCst) {
            self.edges.fetch_add(1, SeqCst);
        }
        if !high {
            self.level.store(false, SeqCst);
        }
    }
}
