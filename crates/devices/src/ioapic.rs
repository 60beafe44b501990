//! The 82093AA I/O APIC as QEMU's `pc` machine has it: one page of MMIO at
//! [`IOAPIC_BASE`] with an index register (IOREGSEL, offset 0x00) and a data window
//! (IOWIN, offset 0x10), 24 input pins and a redirection table that turns pin
//! activity into [`ApicMessage`]s for the local APICs.
//!
//! Version 0x11 (the 82093AA's): no directed-EOI register, so a guest clears a stuck
//! Remote IRR the 82093AA way, by switching the entry to edge and back, which this
//! model honours. Registers: ID (0x00, bits 27:24), version (0x01: 0x0017_0011, max
//! redirection entry 23), arbitration (0x02, read-only, loaded from the ID on an ID
//! write) and the 24 entries at 0x10 + 2n (low dword) / 0x11 + 2n (high dword).
//!
//! Like every model here the IOAPIC calls nobody: [`IoApic::set_pin`] and
//! [`IoApic::eoi`] return the messages to deliver. A register write cannot return
//! anything through [`BusDevice::write`], yet unmasking an asserted level-triggered
//! pin must deliver, so writes queue their messages and [`IoApic::take_pending`] hands
//! them out. [`IoApicMmio`] does that for the machine: it is the bus device to map,
//! and after each write it drains the queue into the machine's message sink outside
//! the IOAPIC's lock. [`IoApicPin`] is the matching [`IrqLine`] for one pin, and
//! [`IrqFanOut`] drives one ISA line into both the 8259 pair and the IOAPIC, as the
//! PC's wiring does (with [`isa_irq_to_gsi`] for the pin).
//!
//! Delivery is instantaneous, so the delivery status bit always reads 0 (QEMU and KVM
//! do the same). Edges on a masked pin are lost, as the datasheet says; a level held
//! on a masked pin is delivered when the entry is unmasked.

use std::sync::{Arc, Mutex};

use quern_core::bus::lock;
use quern_core::{BusDevice, IrqLine};

use crate::apic_bus::{ApicMessage, DeliveryMode, Destination};
use crate::port::LogOnce;

/// Where the PC's IOAPIC sits in guest-physical memory.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The MMIO range it claims (one page; registers alias every 256 bytes, as in QEMU).
pub const IOAPIC_MMIO_LEN: u64 = 0x1000;
/// Input pins (GSIs 0-23).
pub const IOAPIC_PINS: usize = 24;
/// The version register's version field.
pub const IOAPIC_VERSION: u8 = 0x11;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;

const REG_ID: u8 = 0x00;
const REG_VERSION: u8 = 0x01;
const REG_ARB: u8 = 0x02;
const REG_REDTBL: u8 = 0x10;

// Redirection entry bits.
const VECTOR: u64 = 0xff;
const DEST_LOGICAL: u64 = 1 << 11;
const DELIVERY_STATUS: u64 = 1 << 12;
const ACTIVE_LOW: u64 = 1 << 13;
const REMOTE_IRR: u64 = 1 << 14;
const LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const DEST_SHIFT: u32 = 56;
/// What software can write: vector, delivery mode, destination mode, polarity,
/// trigger mode, mask and the destination byte. Bits 17-55 are reserved (read 0);
/// delivery status and Remote IRR are read-only.
const WRITABLE: u64 = 0xff00_0000_0001_afff;

/// The sink that delivers messages to the local APICs (the machine's router).
pub type ApicSink = Arc<dyn Fn(ApicMessage) + Send + Sync>;

/// The IOAPIC's registers and pin levels.
pub struct IoApic {
    id: u8,
    arb: u8,
    ioregsel: u8,
    redtbl: [u64; IOAPIC_PINS],
    /// Input levels as driven (before polarity).
    pins: u32,
    /// Messages from register writes, waiting for [`IoApic::take_pending`].
    pending: Vec<ApicMessage>,
    unhandled: LogOnce,
}

impl IoApic {
    /// An IOAPIC whose ID register resets to `id` (the ID the MADT gives it; QEMU's
    /// `pc` uses 0).
    pub fn new(id: u8) -> Self {
        IoApic {
            id: id & 0xf,
            arb: id & 0xf,
            ioregsel: 0,
            redtbl: [MASKED; IOAPIC_PINS],
            pins: 0,
            pending: Vec::new(),
            unhandled: LogOnce::default(),
        }
    }

    fn reset_id(&mut self, id: u8) {
        self.id = id & 0xf;
        self.arb = self.id;
    }

    /// A machine reset: every entry masked, IOREGSEL and the ID back to their reset
    /// values. Pin levels are the devices' and stay.
    pub fn reset(&mut self, id: u8) {
        self.reset_id(id);
        self.ioregsel = 0;
        self.redtbl = [MASKED; IOAPIC_PINS];
        self.pending.clear();
    }

    /// The raw 64-bit redirection entry of `pin` (for tests and debugging).
    pub fn entry(&self, pin: u8) -> Option<u64> {
        self.redtbl.get(usize::from(pin)).copied()
    }

    /// Drives input `pin` (a GSI, 0-23) to `level` (the wire's level; the entry's
    /// polarity says which level asserts). Returns the message to deliver, if any: on
    /// the asserting edge of an unmasked edge-triggered entry, or while an unmasked
    /// level-triggered entry is asserted with Remote IRR clear (which then sets it).
    pub fn set_pin(&mut self, pin: u8, level: bool) -> Option<ApicMessage> {
        let Some(&entry) = self.redtbl.get(usize::from(pin)) else {
            if self.unhandled.first(0x100 | u32::from(pin)) {
                log::debug!("ioapic: pin {pin} does not exist");
            }
            return None;
        };
        let bit = 1u32 << pin;
        let was_asserted = self.asserted(pin);
        self.pins = (self.pins & !bit) | if level { bit } else { 0 };
        let asserted = self.asserted(pin);
        if is_level(entry) {
            self.service_level(pin)
        } else if asserted && !was_asserted {
            self.message(pin)
        } else {
            None
        }
    }

    /// The EOI broadcast for `vector` (from a local APIC, for a level-triggered
    /// interrupt): clears Remote IRR of the level-triggered entries with that vector
    /// and delivers again those whose pin is still asserted.
    pub fn eoi(&mut self, vector: u8) -> Vec<ApicMessage> {
        let mut out = Vec::new();
        for pin in 0..IOAPIC_PINS as u8 {
            let e = &mut self.redtbl[usize::from(pin)];
            if *e & REMOTE_IRR != 0 && (*e & VECTOR) as u8 == vector {
                *e &= !REMOTE_IRR;
                out.extend(self.service_level(pin));
            }
        }
        out
    }

    /// Messages caused by register writes since the last call (unmasking an asserted
    /// level-triggered pin, say). The machine delivers them after each write.
    pub fn take_pending(&mut self) -> Vec<ApicMessage> {
        std::mem::take(&mut self.pending)
    }

    /// The pin's level after polarity: true when it requests an interrupt.
    fn asserted(&self, pin: u8) -> bool {
        let high = self.pins & (1 << pin) != 0;
        high != (self.redtbl[usize::from(pin)] & ACTIVE_LOW != 0)
    }

    /// A level-triggered entry: deliver if asserted, unmasked and not waiting for an
    /// EOI, and then wait for one.
    fn service_level(&mut self, pin: u8) -> Option<ApicMessage> {
        let e = self.redtbl[usize::from(pin)];
        if !is_level(e) || e & (MASKED | REMOTE_IRR) != 0 || !self.asserted(pin) {
            return None;
        }
        let msg = self.message(pin)?;
        if msg.level {
            self.redtbl[usize::from(pin)] |= REMOTE_IRR;
        }
        Some(msg)
    }

    /// The message an unmasked entry sends now.
    fn message(&mut self, pin: u8) -> Option<ApicMessage> {
        let e = self.redtbl[usize::from(pin)];
        if e & MASKED != 0 {
            return None;
        }
        let mode = match DeliveryMode::from_bits((e >> 8) as u32) {
            // StartUp is not an IOAPIC delivery mode (0b110 is reserved here).
            Some(DeliveryMode::StartUp) | None => {
                if self.unhandled.first(0x200 | ((e >> 8) & 7) as u32) {
                    log::debug!("ioapic: pin {pin} uses reserved delivery mode {}", (e >> 8) & 7);
                }
                return None;
            }
            Some(m) => m,
        };
        let dest_id = (e >> DEST_SHIFT) as u32;
        Some(ApicMessage {
            dest: if e & DEST_LOGICAL != 0 { Destination::Logical(dest_id) } else { Destination::Physical(dest_id) },
            mode,
            vector: (e & VECTOR) as u8,
            level: is_level(e),
            assert: true,
            source: None,
        })
    }

    fn read_register(&self) -> u32 {
        match self.ioregsel {
            REG_ID => u32::from(self.id) << 24,
            REG_VERSION => ((IOAPIC_PINS as u32 - 1) << 16) | u32::from(IOAPIC_VERSION),
            REG_ARB => u32::from(self.arb) << 24,
            sel @ REG_REDTBL.. => match self.redtbl.get(usize::from((sel - REG_REDTBL) / 2)) {
                Some(&e) if sel & 1 == 0 => e as u32,
                Some(&e) => (e >> 32) as u32,
                None => 0,
            },
            _ => 0,
        }
    }

    fn write_register(&mut self, v: u32) {
        match self.ioregsel {
            REG_ID => self.reset_id((v >> 24) as u8),
            sel @ REG_REDTBL.. if usize::from((sel - REG_REDTBL) / 2) < IOAPIC_PINS => {
                let pin = (sel - REG_REDTBL) / 2;
                let e = &mut self.redtbl[usize::from(pin)];
                let new = if sel & 1 == 0 {
                    (*e & !0xffff_ffff) | u64::from(v)
                } else {
                    (*e & 0xffff_ffff) | u64::from(v) << 32
                };
                *e = (new & WRITABLE) | (*e & (REMOTE_IRR | DELIVERY_STATUS));
                // Remote IRR means nothing for an edge entry; Linux clears a stuck one
                // by switching the entry to edge and back.
                if !is_level(*e) {
                    *e &= !REMOTE_IRR;
                }
                // An unmasked, asserted level entry delivers now.
                let msg = self.service_level(pin);
                self.pending.extend(msg);
            }
            sel => {
                if self.unhandled.first(u32::from(sel)) {
                    log::debug!("ioapic: write {v:#x} to read-only or absent register {sel:#x}");
                }
            }
        }
    }
}

// Pin levels are state: a device re-driving its line after a restore makes no new
// edge, and a level entry waiting for its EOI keeps Remote IRR.
quern_core::snapshot_fields!(IoApic { id, arb, ioregsel, redtbl, pins, pending });

fn is_level(entry: u64) -> bool {
    entry & LEVEL != 0 && matches!((entry >> 8) & 7, 0 | 1)
}

impl BusDevice for IoApic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        match (offset & 0xff, data.len()) {
            (IOREGSEL, 1..) => data[0] = self.ioregsel,
            (IOWIN, 4) => data.copy_from_slice(&self.read_register().to_le_bytes()),
            (off, len) => {
                if self.unhandled.first(0x1000 | (off as u32) << 4 | len as u32) {
                    log::debug!("ioapic: {len}-byte read at offset {off:#x} ignored");
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset & 0xff, data.len()) {
            (IOREGSEL, 1..) => self.ioregsel = data[0],
            (IOWIN, 4) => self.write_register(u32::from_le_bytes([data[0], data[1], data[2], data[3]])),
            (off, len) => {
                if self.unhandled.first(0x1000 | (off as u32) << 4 | len as u32) {
                    log::debug!("ioapic: {len}-byte write at offset {off:#x} ignored");
                }
            }
        }
    }
}

/// The IOAPIC as the machine maps it at [`IOAPIC_BASE`]: register accesses go to the
/// shared model, and messages a write causes go to `sink` after the model's lock is
/// released (the sink may take local APIC locks, or come back for an EOI).
pub struct IoApicMmio {
    pub ioapic: Arc<Mutex<IoApic>>,
    pub sink: ApicSink,
}

impl IoApicMmio {
    pub fn new(ioapic: Arc<Mutex<IoApic>>, sink: ApicSink) -> Self {
        IoApicMmio { ioapic, sink }
    }
}

impl BusDevice for IoApicMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.ioapic).read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let msgs = {
            let mut io = lock(&self.ioapic);
            io.write(offset, data);
            io.take_pending()
        };
        msgs.into_iter().for_each(|m| (self.sink)(m));
    }
}

/// One IOAPIC input as an interrupt line: the message a level change causes goes to
/// `sink`, outside the IOAPIC's lock.
pub struct IoApicPin {
    pub ioapic: Arc<Mutex<IoApic>>,
    pub pin: u8,
    pub sink: ApicSink,
}

impl IoApicPin {
    pub fn new(ioapic: Arc<Mutex<IoApic>>, pin: u8, sink: ApicSink) -> Self {
        IoApicPin { ioapic, pin, sink }
    }
}

impl IrqLine for IoApicPin {
    fn set_level(&self, high: bool) {
        let msg = lock(&self.ioapic).set_pin(self.pin, high);
        if let Some(m) = msg {
            (self.sink)(m);
        }
    }
}

/// One device line wired to several controller inputs: an ISA IRQ reaches both the
/// 8259 pair and the IOAPIC on a PC, and the guest's choice of controller decides
/// which one listens (the other's input stays masked).
pub struct IrqFanOut(pub Vec<Arc<dyn IrqLine>>);

impl IrqLine for IrqFanOut {
    fn set_level(&self, high: bool) {
        self.0.iter().for_each(|l| l.set_level(high));
    }
}

/// The IOAPIC pin of ISA IRQ `irq` on the PC: IRQ0 (the PIT) arrives on pin 2 (the
/// MADT says so with an interrupt source override), the others on their own numbers.
pub fn isa_irq_to_gsi(irq: u8) -> u8 {
    if irq == 0 {
        2
    } else {
        irq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(io: &mut IoApic, reg: u8) -> u32 {
        io.write(IOREGSEL, &[reg]);
        let mut b = [0; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(io: &mut IoApic, reg: u8, v: u32) -> Vec<ApicMessage> {
        io.write(IOREGSEL, &(u32::from(reg)).to_le_bytes());
        io.write(IOWIN, &v.to_le_bytes());
        io.take_pending()
    }

    /// Programs `pin`'s entry: high dword first, then low, as Linux does.
    fn program(io: &mut IoApic, pin: u8, low: u32, dest: u8) -> Vec<ApicMessage> {
        let mut m = wr(io, REG_REDTBL + 2 * pin + 1, u32::from(dest) << 24);
        m.extend(wr(io, REG_REDTBL + 2 * pin, low));
        m
    }

    fn fixed(vector: u8, dest: u32, level: bool) -> ApicMessage {
        ApicMessage {
            dest: Destination::Physical(dest),
            mode: DeliveryMode::Fixed,
            vector,
            level,
            assert: true,
            source: None,
        }
    }

    const LEVEL_TRIG: u32 = 1 << 15;
    const MASK: u32 = 1 << 16;
    const LOW: u32 = 1 << 13;

    #[test]
    fn reset_values() {
        let mut io = IoApic::new(0);
        assert_eq!(rd(&mut io, REG_ID), 0);
        assert_eq!(rd(&mut io, REG_VERSION), 0x0017_0011, "version 0x11, 24 entries");
        assert_eq!(rd(&mut io, REG_ARB), 0);
        for pin in 0..24 {
            assert_eq!(rd(&mut io, REG_REDTBL + 2 * pin), 0x0001_0000, "entry {pin} masked");
            assert_eq!(rd(&mut io, REG_REDTBL + 2 * pin + 1), 0);
        }
        assert_eq!(rd(&mut io, REG_REDTBL + 48), 0, "no entry 24");
        assert_eq!(rd(&mut io, 0x03), 0);
        let mut sel = [0u8; 4];
        io.read(IOREGSEL, &mut sel);
        assert_eq!(sel, [3, 0, 0, 0], "IOREGSEL reads back");

        let mut io = IoApic::new(1);
        assert_eq!(rd(&mut io, REG_ID), 1 << 24);
        wr(&mut io, REG_ID, 0xff00_0000);
        assert_eq!(rd(&mut io, REG_ID), 0x0f00_0000, "4-bit ID");
        assert_eq!(rd(&mut io, REG_ARB), 0x0f00_0000, "arbitration ID follows an ID write");
        wr(&mut io, REG_ARB, 0);
        wr(&mut io, REG_VERSION, 0);
        assert_eq!(rd(&mut io, REG_ARB), 0x0f00_0000, "read-only");
        assert_eq!(rd(&mut io, REG_VERSION), 0x0017_0011, "read-only");
        io.reset(1);
        assert_eq!(rd(&mut io, REG_ID), 1 << 24);
    }

    #[test]
    fn redirection_round_trip_keeps_read_only_bits() {
        let mut io = IoApic::new(0);
        wr(&mut io, 0x10 + 2 * 5, 0xffff_ffff);
        wr(&mut io, 0x11 + 2 * 5, 0xffff_ffff);
        // Delivery status (12) and Remote IRR (14) read-only, 17-31 reserved; the
        // high dword keeps only the destination byte. Mode 0b111 is ExtINT: treated
        // as edge, so no Remote IRR either way.
        assert_eq!(rd(&mut io, 0x10 + 2 * 5), 0x0001_afff);
        assert_eq!(rd(&mut io, 0x11 + 2 * 5), 0xff00_0000);
        assert_eq!(io.entry(5), Some(0xff00_0000_0001_afff));
        wr(&mut io, 0x10 + 2 * 23, 0x0001_a931);
        wr(&mut io, 0x11 + 2 * 23, 0x1200_0000);
        assert_eq!(rd(&mut io, 0x10 + 2 * 23), 0x0001_a931);
        assert_eq!(rd(&mut io, 0x11 + 2 * 23), 0x1200_0000);
        assert_eq!(io.entry(24), None);
        // Only 32-bit IOWIN accesses move data.
        io.write(IOREGSEL, &[0x10 + 2 * 23]);
        io.write(IOWIN, &[0; 2]);
        let mut b = [0xaa; 2];
        io.read(IOWIN, &mut b);
        assert_eq!(b, [0, 0]);
        assert_eq!(rd(&mut io, 0x10 + 2 * 23), 0x0001_a931);
        // Registers alias every 256 bytes of the page.
        io.write(0x300 + IOREGSEL, &[0x11 + 2 * 23]);
        let mut b = [0; 4];
        io.read(0x710, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1200_0000);
    }

    #[test]
    fn snapshot_keeps_entries_pins_and_queued_messages() {
        use quern_core::snapshot::Snapshot;
        let mut io = IoApic::new(0);
        wr(&mut io, REG_ID, 0x0500_0000);
        program(&mut io, 4, 0x31, 3);
        io.set_pin(4, true);
        program(&mut io, 10, 0x41 | LEVEL_TRIG, 0);
        io.set_pin(10, true);
        program(&mut io, 9, 0x29 | LEVEL_TRIG | MASK, 1);
        io.set_pin(9, true);
        // Unmask pin 9 without taking the message it queues; IOREGSEL stays on it.
        io.write(IOWIN, &(0x29 | LEVEL_TRIG).to_le_bytes());

        let mut r = IoApic::new(0);
        crate::testutil::restore_into(&mut r, &io.save_state());
        let mut sel = [0];
        r.read(IOREGSEL, &mut sel);
        assert_eq!(sel, [0x10 + 18]);
        for reg in [REG_ID, REG_ARB].into_iter().chain(REG_REDTBL..REG_REDTBL + 48) {
            assert_eq!(rd(&mut r, reg), rd(&mut io, reg), "register {reg:#x}");
        }
        assert_eq!(r.take_pending(), vec![fixed(0x29, 1, true)]);
        assert_eq!(r.set_pin(4, true), None, "pin 4 was high: no edge");
        assert_eq!(r.set_pin(10, true), None, "Remote IRR holds pin 10");
        assert_eq!(r.eoi(0x41), vec![fixed(0x41, 0, true)], "still asserted");
        crate::testutil::assert_refuses_malformed(&mut r, &["/redtbl"]);
    }

    #[test]
    fn edge_delivers_once_per_rising_edge() {
        let mut io = IoApic::new(0);
        assert!(program(&mut io, 4, 0x31, 3).is_empty());
        assert_eq!(io.set_pin(4, true), Some(fixed(0x31, 3, false)));
        assert_eq!(io.set_pin(4, true), None, "no edge while held");
        assert_eq!(io.set_pin(4, false), None);
        assert_eq!(io.set_pin(4, true), Some(fixed(0x31, 3, false)));
        assert_eq!(io.entry(4).unwrap() & REMOTE_IRR, 0, "no Remote IRR for edges");
        io.set_pin(4, false);
        // Masked edges are lost, and unmasking does not bring them back.
        program(&mut io, 4, 0x31 | MASK, 3);
        assert_eq!(io.set_pin(4, true), None);
        io.set_pin(4, false);
        assert!(program(&mut io, 4, 0x31, 3).is_empty());
        assert_eq!(io.set_pin(30, true), None, "no such pin");
    }

    #[test]
    fn level_waits_for_eoi_and_redelivers_while_asserted() {
        let mut io = IoApic::new(0);
        program(&mut io, 10, 0x41 | LEVEL_TRIG, 0);
        assert_eq!(io.set_pin(10, true), Some(fixed(0x41, 0, true)));
        assert_ne!(rd(&mut io, 0x10 + 20) & (1 << 14), 0, "Remote IRR set");
        assert_eq!(io.set_pin(10, false), None);
        assert_eq!(io.set_pin(10, true), None, "Remote IRR holds it");
        assert!(io.eoi(0x42).is_empty(), "another vector");
        assert_eq!(io.eoi(0x41), vec![fixed(0x41, 0, true)], "still asserted: again");
        assert_ne!(rd(&mut io, 0x10 + 20) & (1 << 14), 0);
        io.set_pin(10, false);
        assert!(io.eoi(0x41).is_empty());
        assert_eq!(rd(&mut io, 0x10 + 20) & (1 << 14), 0, "EOI cleared Remote IRR");
        assert_eq!(io.set_pin(10, true), Some(fixed(0x41, 0, true)));
        // Linux's way to clear Remote IRR without an EOI register: mask, edge, back.
        program(&mut io, 10, 0x41 | MASK, 0);
        assert_eq!(rd(&mut io, 0x10 + 20) & (1 << 14), 0);
        assert_eq!(program(&mut io, 10, 0x41 | LEVEL_TRIG, 0), vec![fixed(0x41, 0, true)]);
        // One EOI serves every level entry with the vector.
        io.set_pin(10, false);
        program(&mut io, 11, 0x41 | LEVEL_TRIG, 1);
        assert_eq!(io.set_pin(11, true), Some(fixed(0x41, 1, true)));
        io.set_pin(10, true);
        assert_eq!(io.eoi(0x41), vec![fixed(0x41, 0, true), fixed(0x41, 1, true)]);
    }

    #[test]
    fn mask_holds_a_level_interrupt_until_unmasked() {
        let mut io = IoApic::new(0);
        program(&mut io, 9, 0x29 | LEVEL_TRIG | MASK, 0);
        assert_eq!(io.set_pin(9, true), None);
        assert_eq!(io.entry(9).unwrap() & REMOTE_IRR, 0);
        // Writing the high dword of a masked entry sends nothing.
        assert!(wr(&mut io, 0x11 + 18, 1 << 24).is_empty());
        // The unmasking write delivers, through the pending queue.
        let mut b = [0u8; 4];
        io.write(IOREGSEL, &[0x10 + 18]);
        io.write(IOWIN, &(0x29 | LEVEL_TRIG).to_le_bytes());
        assert_eq!(io.take_pending(), vec![fixed(0x29, 1, true)]);
        assert!(io.take_pending().is_empty());
        io.read(IOWIN, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x29 | LEVEL_TRIG | (1 << 14));
        // A line that drops while masked is not delivered on unmask.
        program(&mut io, 9, 0x29 | LEVEL_TRIG | MASK, 1);
        io.eoi(0x29);
        io.set_pin(9, false);
        assert!(program(&mut io, 9, 0x29 | LEVEL_TRIG, 1).is_empty());
    }

    #[test]
    fn polarity_inverts_the_pin() {
        let mut io = IoApic::new(0);
        // Active-low edge: the falling wire is the asserting edge.
        program(&mut io, 3, 0x33 | LOW, 0);
        assert_eq!(io.set_pin(3, true), None);
        assert_eq!(io.set_pin(3, false), Some(fixed(0x33, 0, false)));
        // Active-low level (PCI INTx): a low wire is asserted.
        program(&mut io, 16, 0x50 | LOW | LEVEL_TRIG | MASK, 0);
        io.set_pin(16, true);
        assert!(program(&mut io, 16, 0x50 | LOW | LEVEL_TRIG, 0).is_empty(), "high: idle");
        assert_eq!(io.set_pin(16, false), Some(fixed(0x50, 0, true)));
        io.set_pin(16, true);
        assert!(io.eoi(0x50).is_empty());
        // An idle low wire with the entry unmasked active-low asserts at once.
        assert!(program(&mut io, 17, 0x51 | LEVEL_TRIG, 0).is_empty());
        assert_eq!(program(&mut io, 17, 0x51 | LOW | LEVEL_TRIG, 0), vec![fixed(0x51, 0, true)]);
    }

    #[test]
    fn destinations_and_delivery_modes() {
        let mut io = IoApic::new(0);
        let cases = [
            (0x0000_0830, 0x03, Destination::Logical(3), DeliveryMode::Fixed),
            (0x0000_0130, 0xff, Destination::Physical(0xff), DeliveryMode::LowestPriority),
            (0x0000_0200, 1, Destination::Physical(1), DeliveryMode::Smi),
            (0x0000_0c00, 0x80, Destination::Logical(0x80), DeliveryMode::Nmi),
            (0x0000_0500, 2, Destination::Physical(2), DeliveryMode::Init),
            (0x0000_0700, 0, Destination::Physical(0), DeliveryMode::ExtInt),
        ];
        for (low, dest, want_dest, mode) in cases {
            program(&mut io, 1, low, dest);
            let m = io.set_pin(1, true).expect("edge delivers");
            io.set_pin(1, false);
            assert_eq!((m.dest, m.mode, m.vector, m.level), (want_dest, mode, low as u8, false));
        }
        // NMI programmed level-triggered is still an edge: no Remote IRR.
        program(&mut io, 1, 0x0000_8400, 0);
        assert_eq!(io.set_pin(1, true).map(|m| (m.mode, m.level)), Some((DeliveryMode::Nmi, false)));
        assert_eq!(io.set_pin(1, true), None);
        assert_eq!(io.entry(1).unwrap() & REMOTE_IRR, 0);
        io.set_pin(1, false);
        // Reserved modes (0b011, 0b110) send nothing.
        for low in [0x0000_0330, 0x0000_0630, 0x0000_8330] {
            program(&mut io, 1, low, 0);
            assert_eq!(io.set_pin(1, true), None);
            io.set_pin(1, false);
        }
    }

    #[test]
    fn lines_and_mmio_deliver_through_the_sink() {
        let io = Arc::new(Mutex::new(IoApic::new(0)));
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let sink: ApicSink = Arc::new(move |m| lock(&g).push(m));
        let mut mmio = IoApicMmio::new(io.clone(), sink.clone());
        let pin = IoApicPin::new(io.clone(), isa_irq_to_gsi(0), sink.clone());
        let pic = Arc::new(Mutex::new(crate::pic::PicPair::new()));
        let line =
            IrqFanOut(vec![Arc::new(crate::pic::PicIrqLine::new(pic.clone(), 0, Arc::new(|| {}))), Arc::new(pin)]);
        mmio.write(IOREGSEL, &[0x10 + 4]);
        mmio.write(IOWIN, &(0x30u32 | LEVEL_TRIG | MASK).to_le_bytes());
        line.set_level(true);
        assert!(lock(&got).is_empty(), "masked");
        let mut b = [0u8; 4];
        mmio.read(IOWIN, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x30 | LEVEL_TRIG | MASK);
        mmio.write(IOWIN, &(0x30u32 | LEVEL_TRIG).to_le_bytes());
        assert_eq!(*lock(&got), vec![fixed(0x30, 0, true)], "unmasking delivered");
        assert!(lock(&pic).intr(), "the PIC saw IRQ0 too");
        assert!(lock(&io).eoi(0x30).len() == 1);
        assert_eq!(isa_irq_to_gsi(4), 4);
    }

    /// A small deterministic generator (xorshift64*).
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn random_register_writes_never_panic() {
        let mut io = IoApic::new(0);
        let mut s = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            let r = rng(&mut s);
            let v = rng(&mut s);
            let size = [1, 2, 4, 8][(r & 3) as usize];
            let offset = [IOREGSEL, IOWIN, r >> 20 & 0xfff][(r >> 2) as usize % 3];
            match (r >> 8) % 5 {
                0 => io.write(IOREGSEL, &[(v >> 8) as u8]),
                1 => io.write(offset, &v.to_le_bytes()[..size]),
                2 => io.read(offset, &mut v.to_le_bytes()[..size]),
                3 => _ = io.set_pin((v % 32) as u8, v & 0x100 != 0),
                _ => _ = io.eoi(v as u8),
            }
            if r & 0x1000 != 0 {
                io.take_pending();
            }
        }
    }
}
