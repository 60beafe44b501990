//! The i8259A programmable interrupt controller pair: master at 0x20-0x21, slave at
//! 0xa0-0xa1 cascaded on master IRQ2, and the PIIX edge/level control registers
//! (ELCR) at 0x4d0-0x4d1. Its output is the CPU's INTR pin.
//!
//! Lines are edge-triggered unless their ELCR bit is set. In edge mode a rising edge
//! latches the request in IRR until the CPU acknowledges it; in level mode IRR follows
//! the line. The slave's output is fed to master IRQ2 as a level, recomputed whenever
//! the slave changes, so a slave request pending after an INTA is never lost.

use std::sync::{Arc, Mutex};

use quern_core::bus::{lock, SharedDevice};
use quern_core::snapshot::{Snapshot, State};
use quern_core::IrqLine;

use crate::port::{read_bytewise, write_bytewise, LogOnce, PortGroup, PortWindow};
use crate::snapshot::{parts_state, restored_parts};

/// The IRQ the slave is cascaded on.
const CASCADE: u8 = 2;

/// One i8259A.
#[derive(Clone, Debug, Default)]
struct Chip {
    /// Current input pin levels.
    pins: u8,
    irr: u8,
    imr: u8,
    isr: u8,
    /// The lowest-priority IRQ is `priority_add - 1` (rotation).
    priority_add: u8,
    irq_base: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    /// Which ICW the data port expects next (0 = none: the data port is IMR).
    init_state: u8,
    init4: bool,
    single: bool,
    auto_eoi: bool,
    rotate_on_auto_eoi: bool,
    special_fully_nested: bool,
    elcr: u8,
    elcr_mask: u8,
    is_master: bool,
}

// `elcr_mask` and `is_master` are the chip's wiring.
quern_core::snapshot_fields!(Chip {
    pins,
    irr,
    imr,
    isr,
    priority_add,
    irq_base,
    read_isr,
    poll,
    special_mask,
    init_state,
    init4,
    single,
    auto_eoi,
    rotate_on_auto_eoi,
    special_fully_nested,
    elcr,
});

/// The priority (0 = highest) of the best request in `mask`, 8 if none.
fn priority(mask: u8, priority_add: u8) -> u8 {
    (0..8).find(|p| mask & (1 << ((p + priority_add) & 7)) != 0).unwrap_or(8)
}

impl Chip {
    fn new(is_master: bool) -> Self {
        // ELCR bits the PIIX lets software set: not the timer, keyboard, cascade, RTC
        // or FPU lines.
        let elcr_mask = if is_master { 0xf8 } else { 0xde };
        Chip { is_master, elcr_mask, ..Default::default() }
    }

    fn set_pin(&mut self, irq: u8, high: bool) {
        let bit = 1 << irq;
        if self.elcr & bit != 0 {
            self.irr = (self.irr & !bit) | if high { bit } else { 0 };
        } else if high && self.pins & bit == 0 {
            self.irr |= bit;
        }
        self.pins = (self.pins & !bit) | if high { bit } else { 0 };
    }

    /// The IRQ this chip would present to the CPU now, if any.
    fn best(&self) -> Option<u8> {
        let p = priority(self.irr & !self.imr, self.priority_add);
        if p == 8 {
            return None;
        }
        let mut in_service = self.isr;
        if self.special_mask {
            in_service &= !self.imr;
        }
        if self.special_fully_nested && self.is_master {
            // Let a higher-priority slave request nest inside one being serviced.
            in_service &= !(1 << CASCADE);
        }
        (p < priority(in_service, self.priority_add)).then_some((p + self.priority_add) & 7)
    }

    fn intack(&mut self, irq: u8) {
        let bit = 1 << irq;
        if self.auto_eoi {
            if self.rotate_on_auto_eoi {
                self.priority_add = (irq + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        if self.elcr & bit == 0 {
            self.irr &= !bit;
        }
    }

    fn init_reset(&mut self) {
        *self = Chip { pins: self.pins, elcr: self.elcr, irr: self.irr & self.elcr, ..Chip::new(self.is_master) };
    }

    fn write_command(&mut self, v: u8, unhandled: &mut LogOnce) {
        if v & 0x10 != 0 {
            // ICW1
            self.init_reset();
            self.init_state = 1;
            self.init4 = v & 1 != 0;
            self.single = v & 2 != 0;
            if v & 0x08 != 0 && unhandled.first(0x100 | u32::from(v)) {
                log::debug!("pic: LTIM (all-level mode) ignored; use ELCR");
            }
        } else if v & 0x08 != 0 {
            // OCW3
            self.poll = v & 0x04 != 0;
            if v & 0x02 != 0 {
                self.read_isr = v & 1 != 0;
            }
            if v & 0x40 != 0 {
                self.special_mask = v & 0x20 != 0;
            }
        } else {
            // OCW2
            let irq = v & 7;
            match v >> 5 {
                0 | 4 => self.rotate_on_auto_eoi = v >> 7 != 0,
                1 | 5 => {
                    let p = priority(self.isr, self.priority_add);
                    if p != 8 {
                        let irq = (p + self.priority_add) & 7;
                        self.isr &= !(1 << irq);
                        if v >> 5 == 5 {
                            self.priority_add = (irq + 1) & 7;
                        }
                    }
                }
                3 => self.isr &= !(1 << irq),
                6 => self.priority_add = (irq + 1) & 7,
                7 => {
                    self.isr &= !(1 << irq);
                    self.priority_add = (irq + 1) & 7;
                }
                _ => {}
            }
        }
    }

    fn write_data(&mut self, v: u8) {
        match self.init_state {
            1 => {
                self.irq_base = v & 0xf8;
                self.init_state = match (self.single, self.init4) {
                    (false, _) => 2,
                    (true, true) => 3,
                    (true, false) => 0,
                };
            }
            2 => self.init_state = if self.init4 { 3 } else { 0 },
            3 => {
                self.special_fully_nested = v & 0x10 != 0;
                self.auto_eoi = v & 0x02 != 0;
                self.init_state = 0;
            }
            _ => self.imr = v,
        }
    }
}

/// The master/slave pair, IRQs 0-15.
#[derive(Debug)]
pub struct PicPair {
    chips: [Chip; 2],
    unhandled: LogOnce,
}

impl Default for PicPair {
    fn default() -> Self {
        Self::new()
    }
}

impl PicPair {
    pub fn new() -> Self {
        PicPair { chips: [Chip::new(true), Chip::new(false)], unhandled: LogOnce::default() }
    }

    /// Drives ISA line `irq` (0-15). IRQ2 is the cascade and cannot be driven.
    pub fn set_irq(&mut self, irq: u8, high: bool) {
        match irq {
            0..=15 if irq != CASCADE => {
                self.chips[usize::from(irq >> 3)].set_pin(irq & 7, high);
                self.sync_cascade();
            }
            _ => {
                if self.unhandled.first(u32::from(irq)) {
                    log::debug!("pic: line {irq} does not exist");
                }
            }
        }
    }

    /// The INTR pin: an unmasked request of higher priority than any in service.
    pub fn intr(&self) -> bool {
        self.chips[0].best().is_some()
    }

    /// The INTA cycle: the vector to deliver. If the request went away, the vector of
    /// IRQ7 (or IRQ15 for the slave) with no ISR bit set: a spurious interrupt.
    pub fn acknowledge(&mut self) -> u8 {
        let [master, slave] = &mut self.chips;
        let vector = match master.best() {
            Some(CASCADE) => {
                let v = match slave.best() {
                    Some(irq) => {
                        slave.intack(irq);
                        slave.irq_base + irq
                    }
                    None => slave.irq_base + 7,
                };
                master.intack(CASCADE);
                v
            }
            Some(irq) => {
                master.intack(irq);
                master.irq_base + irq
            }
            None => master.irq_base + 7,
        };
        self.sync_cascade();
        vector
    }

    /// The slave's INT output is master IRQ2's input.
    fn sync_cascade(&mut self) {
        let bit = if self.chips[1].best().is_some() { 1 << CASCADE } else { 0 };
        let master = &mut self.chips[0];
        master.irr = (master.irr & !(1 << CASCADE)) | bit;
        master.pins = (master.pins & !(1 << CASCADE)) | bit;
    }

    /// Poll mode (OCW3 with P set): the next read acknowledges the best request and
    /// returns its number with bit 7 set, or 0 if none.
    fn poll_read(&mut self, chip: usize) -> u8 {
        self.chips[chip].poll = false;
        let Some(irq) = self.chips[chip].best() else { return 0 };
        self.chips[chip].intack(irq);
        if chip == 0 && irq == CASCADE {
            if let Some(s) = self.chips[1].best() {
                self.chips[1].intack(s);
            }
        }
        self.sync_cascade();
        irq | 0x80
    }

    fn read_port(&mut self, chip: usize, offset: u64) -> u8 {
        let c = &self.chips[chip];
        if c.poll {
            return self.poll_read(chip);
        }
        match (offset, c.read_isr) {
            (0, false) => c.irr,
            (0, true) => c.isr,
            _ => c.imr,
        }
    }

    fn write_port(&mut self, chip: usize, offset: u64, v: u8) {
        let c = &mut self.chips[chip];
        if offset == 0 {
            c.write_command(v, &mut self.unhandled);
        } else {
            c.write_data(v);
        }
        self.sync_cascade();
    }

    fn set_elcr(&mut self, chip: usize, v: u8) {
        let c = &mut self.chips[chip];
        c.elcr = v & c.elcr_mask;
        // Level lines report their pin; edge lines keep what they latched.
        c.irr = (c.irr & !c.elcr) | (c.pins & c.elcr);
        self.sync_cascade();
    }
}

/// Both chips, their input pin levels among their state.
impl Snapshot for PicPair {
    fn save_state(&self) -> State {
        serde_json::json!({ "chips": parts_state(&self.chips) })
    }

    fn restore_state(&mut self, state: &State) -> Result<(), String> {
        self.chips = restored_parts(&self.chips, state, "chips")?;
        Ok(())
    }
}

/// The PIC's port ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PicWindow {
    /// 0x20-0x21.
    Master,
    /// 0xa0-0xa1.
    Slave,
    /// 0x4d0 (master lines) and 0x4d1 (slave lines).
    Elcr,
}

impl PortGroup for PicPair {
    type Window = PicWindow;
    fn window_read(&mut self, window: PicWindow, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, 2, |off| match window {
            PicWindow::Master => self.read_port(0, off),
            PicWindow::Slave => self.read_port(1, off),
            PicWindow::Elcr => self.chips[off as usize].elcr,
        });
    }
    fn window_write(&mut self, window: PicWindow, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, 2, |off, v| match window {
            PicWindow::Master => self.write_port(0, off, v),
            PicWindow::Slave => self.write_port(1, off, v),
            PicWindow::Elcr => self.set_elcr(off as usize, v),
        });
    }
}

/// The PIC's bus devices with their base ports and lengths: master (0x20, 2), slave
/// (0xa0, 2), ELCR (0x4d0, 2).
pub fn pic_bus_devices(pic: &Arc<Mutex<PicPair>>) -> Vec<(SharedDevice, u64, u64)> {
    vec![
        (PortWindow::shared(pic, PicWindow::Master), 0x20, 2),
        (PortWindow::shared(pic, PicWindow::Slave), 0xa0, 2),
        (PortWindow::shared(pic, PicWindow::Elcr), 0x4d0, 2),
    ]
}

/// One ISA interrupt line into the PIC. After raising the line, if INTR is asserted, it
/// calls `on_intr` (outside the PIC's lock), which the machine uses to kick the vCPU.
pub struct PicIrqLine {
    pub pic: Arc<Mutex<PicPair>>,
    pub irq: u8,
    pub on_intr: Arc<dyn Fn() + Send + Sync>,
}

impl PicIrqLine {
    pub fn new(pic: Arc<Mutex<PicPair>>, irq: u8, on_intr: Arc<dyn Fn() + Send + Sync>) -> Self {
        PicIrqLine { pic, irq, on_intr }
    }
}

impl IrqLine for PicIrqLine {
    fn set_level(&self, high: bool) {
        let intr = {
            let mut pic = lock(&self.pic);
            pic.set_irq(self.irq, high);
            pic.intr()
        };
        // Lowering a line never creates a request, so only a raise needs the kick.
        if high && intr {
            (self.on_intr)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A PIC programmed the way Linux and SeaBIOS do: vectors 0x20 and 0x28, cascade
    /// on IRQ2, 8086 mode, all lines unmasked.
    fn programmed() -> PicPair {
        let mut p = PicPair::new();
        for (chip, base, icw3) in [(PicWindow::Master, 0x20, 0x04), (PicWindow::Slave, 0x28, 0x02)] {
            p.window_write(chip, 0, &[0x11]);
            p.window_write(chip, 1, &[base]);
            p.window_write(chip, 1, &[icw3]);
            p.window_write(chip, 1, &[0x01]);
            p.window_write(chip, 1, &[0x00]);
        }
        p
    }

    fn rd(p: &mut PicPair, w: PicWindow, off: u64) -> u8 {
        let mut b = [0];
        p.window_read(w, off, &mut b);
        b[0]
    }

    fn eoi(p: &mut PicPair, w: PicWindow) {
        p.window_write(w, 0, &[0x20]);
    }

    #[test]
    fn edge_request_is_delivered_once() {
        let mut p = programmed();
        assert!(!p.intr());
        p.set_irq(0, true);
        p.set_irq(0, false);
        assert!(p.intr());
        assert_eq!(p.acknowledge(), 0x20);
        assert!(!p.intr());
        p.window_write(PicWindow::Master, 0, &[0x0b]); // OCW3: read ISR
        assert_eq!(rd(&mut p, PicWindow::Master, 0), 0x01);
        eoi(&mut p, PicWindow::Master);
        assert_eq!(rd(&mut p, PicWindow::Master, 0), 0x00);
        assert!(!p.intr());
    }

    #[test]
    fn higher_priority_nests_lower_waits_for_eoi() {
        let mut p = programmed();
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), 0x24);
        p.set_irq(3, true);
        assert!(p.intr(), "IRQ3 outranks IRQ4 in service");
        assert_eq!(p.acknowledge(), 0x23);
        p.set_irq(5, true);
        assert!(!p.intr(), "IRQ5 waits");
        eoi(&mut p, PicWindow::Master); // ends IRQ3
        assert!(!p.intr(), "IRQ4 still in service");
        eoi(&mut p, PicWindow::Master);
        assert_eq!(p.acknowledge(), 0x25);
    }

    #[test]
    fn mask_holds_request_until_unmasked() {
        let mut p = programmed();
        p.window_write(PicWindow::Master, 1, &[0x02]);
        p.set_irq(1, true);
        assert!(!p.intr());
        assert_eq!(rd(&mut p, PicWindow::Master, 1), 0x02);
        assert_eq!(rd(&mut p, PicWindow::Master, 0), 0x02, "IRR shows the masked request");
        p.window_write(PicWindow::Master, 1, &[0x00]);
        assert_eq!(p.acknowledge(), 0x21);
    }

    #[test]
    fn slave_cascades_through_irq2() {
        let mut p = programmed();
        p.set_irq(8, true);
        p.set_irq(8, false);
        p.set_irq(12, true);
        p.set_irq(12, false);
        assert!(p.intr());
        assert_eq!(p.acknowledge(), 0x28);
        assert!(!p.intr(), "master IRQ2 in service");
        eoi(&mut p, PicWindow::Slave);
        eoi(&mut p, PicWindow::Master);
        assert!(p.intr(), "IRQ12 still pending on the slave");
        assert_eq!(p.acknowledge(), 0x2c);
    }

    #[test]
    fn vanished_requests_are_spurious() {
        let mut p = programmed();
        assert_eq!(p.acknowledge(), 0x27);
        p.window_write(PicWindow::Master, 0, &[0x0b]);
        assert_eq!(rd(&mut p, PicWindow::Master, 0), 0, "no ISR bit for a spurious IRQ7");
        // A level request on the slave that drops before INTA: spurious IRQ15.
        p.window_write(PicWindow::Elcr, 1, &[0x08]); // IRQ11 level
        p.set_irq(11, true);
        assert!(p.intr());
        p.set_irq(11, false);
        assert!(!p.intr());
        p.set_irq(11, true);
        // The line drops between the CPU seeing INTR and the INTA cycle.
        let [master, slave] = &mut p.chips;
        slave.set_pin(3, false);
        assert_eq!(master.best(), Some(CASCADE));
        assert_eq!(p.acknowledge(), 0x2f);
    }

    #[test]
    fn level_lines_stay_pending_while_high() {
        let mut p = programmed();
        p.window_write(PicWindow::Elcr, 0, &[0xff]);
        assert_eq!(rd(&mut p, PicWindow::Elcr, 0), 0xf8, "IRQ0-2 cannot be level");
        p.set_irq(5, true);
        assert_eq!(p.acknowledge(), 0x25);
        eoi(&mut p, PicWindow::Master);
        assert!(p.intr(), "still high: requested again");
        p.set_irq(5, false);
        assert!(!p.intr());
    }

    #[test]
    fn elcr_switch_with_the_line_already_high() {
        let mut p = programmed();
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), 0x24);
        eoi(&mut p, PicWindow::Master);
        assert!(!p.intr(), "edge: one request per rising edge");
        // Level-triggered now, with the line still high: IRR follows the wire.
        p.window_write(PicWindow::Elcr, 0, &[0x10]);
        assert!(p.intr());
        assert_eq!(p.acknowledge(), 0x24);
        eoi(&mut p, PicWindow::Master);
        assert!(p.intr(), "still high: requested again");
        p.set_irq(4, false);
        assert!(!p.intr());
        // A pulse on a level input leaves nothing behind: devices must hold a level.
        p.set_irq(4, true);
        p.set_irq(4, false);
        assert!(!p.intr());
        // Back to edge with the line high: the latched request is delivered once.
        p.set_irq(4, true);
        p.window_write(PicWindow::Elcr, 0, &[0x00]);
        assert_eq!(p.acknowledge(), 0x24);
        eoi(&mut p, PicWindow::Master);
        assert!(!p.intr());
    }

    #[test]
    fn auto_eoi_and_specific_eoi_and_rotation() {
        let mut p = PicPair::new();
        p.window_write(PicWindow::Master, 0, &[0x13]); // single, ICW4
        p.window_write(PicWindow::Master, 1, &[0x08]);
        p.window_write(PicWindow::Master, 1, &[0x03]); // auto-EOI
        p.set_irq(1, true);
        assert_eq!(p.acknowledge(), 0x09);
        p.window_write(PicWindow::Master, 0, &[0x0b]);
        assert_eq!(rd(&mut p, PicWindow::Master, 0), 0, "auto-EOI leaves no ISR bit");

        let mut p = programmed();
        p.set_irq(3, true);
        p.set_irq(6, true);
        assert_eq!(p.acknowledge(), 0x23);
        p.window_write(PicWindow::Master, 0, &[0x63]); // specific EOI of IRQ3
        p.window_write(PicWindow::Master, 0, &[0xc7]); // IRQ7 lowest: IRQ0 highest again
        assert_eq!(p.acknowledge(), 0x26);
        p.window_write(PicWindow::Master, 0, &[0xc5]); // IRQ5 lowest: IRQ6 highest
        p.window_write(PicWindow::Master, 0, &[0x66]);
        p.set_irq(0, false);
        p.set_irq(0, true);
        p.set_irq(7, true);
        assert_eq!(p.acknowledge(), 0x27, "IRQ7 outranks IRQ0 after rotation");
    }

    #[test]
    fn poll_mode_acknowledges_by_read() {
        let mut p = programmed();
        p.set_irq(6, true);
        p.window_write(PicWindow::Master, 0, &[0x0c]);
        assert_eq!(rd(&mut p, PicWindow::Master, 0), 0x86);
        assert!(!p.intr());
        p.window_write(PicWindow::Master, 0, &[0x0c]);
        assert_eq!(rd(&mut p, PicWindow::Master, 0), 0);
    }

    #[test]
    fn irq_line_kicks_when_intr_rises() {
        let pic = Arc::new(Mutex::new(programmed()));
        let kicks = Arc::new(AtomicUsize::new(0));
        let k = kicks.clone();
        let line = PicIrqLine::new(pic.clone(), 4, Arc::new(move || _ = k.fetch_add(1, Ordering::SeqCst)));
        line.pulse();
        assert_eq!(kicks.load(Ordering::SeqCst), 1, "one kick for the rising edge");
        assert!(lock(&pic).intr());
        assert_eq!(lock(&pic).acknowledge(), 0x24);
        let devs = pic_bus_devices(&pic);
        let mut b = [0];
        lock(&devs[0].0).read(1, &mut b);
        assert_eq!(b, [0]);
        assert_eq!(devs.iter().map(|d| (d.1, d.2)).collect::<Vec<_>>(), [(0x20, 2), (0xa0, 2), (0x4d0, 2)]);
    }

    #[test]
    fn snapshot_keeps_requests_in_service_and_pins() {
        let mut p = programmed();
        p.window_write(PicWindow::Elcr, 1, &[0x08]); // IRQ11 level
        p.window_write(PicWindow::Master, 1, &[0x40]); // IRQ6 masked
        p.set_irq(4, true);
        assert_eq!(p.acknowledge(), 0x24);
        for irq in [3, 6, 11] {
            p.set_irq(irq, true);
        }
        let mut q = PicPair::new();
        crate::testutil::restore_into(&mut q, &p.save_state());
        for (w, off) in [(PicWindow::Master, 0), (PicWindow::Master, 1), (PicWindow::Elcr, 0), (PicWindow::Elcr, 1)] {
            assert_eq!(rd(&mut q, w, off), rd(&mut p, w, off));
        }
        assert_eq!(q.acknowledge(), 0x2b, "the slave's IRQ11 first");
        eoi(&mut q, PicWindow::Slave);
        eoi(&mut q, PicWindow::Master);
        assert!(q.intr(), "IRQ11 is level-triggered and still high");
        q.set_irq(11, false);
        assert_eq!(q.acknowledge(), 0x23, "IRQ3 nests inside IRQ4, still in service");
        q.set_irq(4, true);
        eoi(&mut q, PicWindow::Master);
        eoi(&mut q, PicWindow::Master);
        assert!(!q.intr(), "IRQ4's line was high already: no new edge; IRQ6 masked");
    }

    #[test]
    fn snapshot_refuses_malformed_states() {
        let mut p = programmed();
        p.set_irq(5, true);
        crate::testutil::assert_refuses_malformed(&mut p, &["/chips"]);
        let good = p.save_state();
        let mut bad = good.clone();
        bad["chips"][1]["irr"] = 300.into();
        assert!(p.restore_state(&bad).is_err());
        assert_eq!(p.save_state(), good, "the master is not restored alone");
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let mut p = programmed();
        p.set_irq(2, true);
        p.set_irq(200, true);
        let mut b = [0u8; 4];
        p.window_read(PicWindow::Elcr, 1, &mut b);
        p.window_write(PicWindow::Elcr, 0, &[1, 2, 3, 4]);
        assert!(!p.intr());
    }
}
