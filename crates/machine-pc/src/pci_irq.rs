//! PCI interrupts on the PC: a function's INTx pin drives one of PIIX3's four PIRQ
//! lines (the board's rotation, [`pirq_for_pin`]); PIIX3's route register for that PIRQ
//! picks the ISA IRQ it reaches, which goes on to the 8259 pair and the I/O APIC pin of
//! the same number, as every ISA line does. PCI lines are level-triggered and shared:
//! a PIRQ is high while any function on it asserts, and an ISA IRQ is high while any
//! PIRQ routed to it is.
//!
//! Firmware or the OS (through the DSDT's link devices) programs the routes before
//! enabling a device's interrupts. A PIRQ keeps the IRQ it was raised on until it
//! drops, so a route rewritten while a line is high moves on the next assertion.
//!
//! Locking: a device raises its line with its own lock held, maybe under the PCI
//! root's (a configuration write); this takes the ISA bridge's lock briefly (to read a
//! route) and then its own, and neither is held by anyone who takes a device's lock.

use std::sync::{Arc, Mutex};

use quern_core::bus::lock;
use quern_core::IrqLine;
use quern_devices::pci::{pirq_for_pin, pirq_route_irq, ConfigSpace, PIRQ_ROUTE_REG};

/// One PIRQ's state.
#[derive(Clone, Copy, Default)]
struct Pirq {
    /// Which INTx sources assert it (one bit each).
    asserted: u64,
    /// The ISA IRQ it drives while asserted.
    irq: Option<u8>,
}

/// The four PIRQs and where they go.
pub struct PciIrqRouter {
    /// PIIX3 (00:01.0), whose configuration space holds the route registers.
    isa_bridge: Arc<Mutex<ConfigSpace>>,
    /// The ISA interrupt lines, by number.
    isa: Vec<Arc<dyn IrqLine>>,
    pirqs: Mutex<[Pirq; 4]>,
    sources: Mutex<u32>,
}

impl PciIrqRouter {
    /// `isa(n)` is ISA IRQ n's line (0-15).
    pub fn new(isa_bridge: Arc<Mutex<ConfigSpace>>, isa: impl Fn(u8) -> Arc<dyn IrqLine>) -> Arc<Self> {
        Arc::new(PciIrqRouter {
            isa_bridge,
            isa: (0..16).map(isa).collect(),
            pirqs: Mutex::new([Pirq::default(); 4]),
            sources: Mutex::new(0),
        })
    }

    /// The line of INTx pin `pin` (0 = INTA) of the function in `slot`.
    pub fn intx(self: &Arc<Self>, slot: u8, pin: u8) -> Arc<dyn IrqLine> {
        let mut n = lock(&self.sources);
        let bit = 1u64 << (*n % 64);
        *n += 1;
        Arc::new(IntxLine { router: self.clone(), pirq: pirq_for_pin(slot, pin), bit })
    }

    fn set(&self, pirq: usize, bit: u64, high: bool) {
        let route = pirq_route_irq(lock(&self.isa_bridge).u8(PIRQ_ROUTE_REG + pirq as u8));
        let mut pirqs = lock(&self.pirqs);
        let p = &mut pirqs[pirq];
        let was = p.asserted != 0;
        if high {
            p.asserted |= bit;
        } else {
            p.asserted &= !bit;
        }
        let now = p.asserted != 0;
        let changed = match (was, now) {
            (false, true) => {
                p.irq = route;
                route
            }
            (true, false) => p.irq.take(),
            _ => None,
        };
        // The ISA IRQ is the OR of every PIRQ on it.
        if let Some(irq) = changed {
            let level = pirqs.iter().any(|q| q.irq == Some(irq) && q.asserted != 0);
            if let Some(line) = self.isa.get(usize::from(irq)) {
                line.set_level(level);
            }
        }
    }
}

/// A function's INTx pin.
struct IntxLine {
    router: Arc<PciIrqRouter>,
    pirq: usize,
    bit: u64,
}

impl IrqLine for IntxLine {
    fn set_level(&self, high: bool) {
        self.router.set(self.pirq, self.bit, high);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use quern_devices::pci::piix3_isa_bridge;

    use super::*;

    #[derive(Default)]
    struct Level(AtomicBool);
    impl IrqLine for Level {
        fn set_level(&self, high: bool) {
            self.0.store(high, Ordering::SeqCst);
        }
    }

    #[test]
    fn shared_lines_follow_the_routes() {
        let bridge = Arc::new(Mutex::new(piix3_isa_bridge()));
        let lines: Vec<Arc<Level>> = (0..16).map(|_| Arc::new(Level::default())).collect();
        let l = lines.clone();
        let r = PciIrqRouter::new(bridge.clone(), move |n| l[usize::from(n)].clone());
        let high = |n: usize| lines[n].0.load(Ordering::SeqCst);
        // Slot 3 INTA is PIRQC, slot 4 INTA PIRQD; both routed to IRQ 11.
        let (a, b) = (r.intx(3, 0), r.intx(4, 0));
        a.set_level(true);
        assert!((0..16).all(|n| !high(n)), "an unrouted PIRQ reaches nothing");
        a.set_level(false);
        {
            let mut c = lock(&bridge);
            c.set_u8(PIRQ_ROUTE_REG + 2, 11);
            c.set_u8(PIRQ_ROUTE_REG + 3, 11);
        }
        a.set_level(true);
        b.set_level(true);
        assert!(high(11));
        a.set_level(false);
        assert!(high(11), "still held by the other PIRQ");
        b.set_level(false);
        assert!(!high(11));
        // Two functions on one PIRQ.
        let c = r.intx(3, 0);
        a.set_level(true);
        c.set_level(true);
        a.set_level(false);
        assert!(high(11));
        c.set_level(false);
        assert!(!high(11));
    }
}
