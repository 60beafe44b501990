//! PCI bus 0 behind configuration mechanism #1: CONFIG_ADDRESS at 0xcf8 (dword
//! accesses only: 0xcf9 is PIIX's reset control register) and CONFIG_DATA at
//! 0xcfc-0xcff. The root comes with the i440FX host bridge (00.0) and the PIIX3
//! PCI-to-ISA bridge (01.0); later devices plug in through [`PciDevice`], most of them
//! keeping their registers in a [`ConfigSpace`].
//!
//! Locking: the root's mutex is taken first, then a device's. A device that is also
//! on the I/O bus (its BARs) must never lock the root while holding its own lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use quern_core::bus::{lock, SharedDevice};
use quern_core::snapshot::{field, Snapshot, State};
use thiserror::Error;

use crate::port::{le_value, PortGroup, PortWindow};
use crate::snapshot::{array_field, part, restored};

pub mod i440fx;
pub use i440fx::{I440fx, PamListener};

/// A function on the PCI bus, seen through its configuration space.
pub trait PciDevice: Send {
    /// Reads the dword at `reg` (a multiple of 4 below 256).
    fn config_read(&mut self, reg: u16) -> u32;
    /// Writes the bytes of `value` that `mask` selects (0xff per byte written) into
    /// the dword at `reg`.
    fn config_write(&mut self, reg: u16, value: u32, mask: u32);
    /// Reads `data.len()` bytes at I/O `port` if one of the function's I/O BARs (with
    /// I/O decoding on) covers it, and says whether it did. The machine offers every
    /// port no fixed device claims here, so BAR registers follow wherever the guest
    /// places the BAR.
    fn io_read(&mut self, _port: u16, _data: &mut [u8]) -> bool {
        false
    }
    /// The write side of [`PciDevice::io_read`].
    fn io_write(&mut self, _port: u16, _data: &[u8]) -> bool {
        false
    }
    /// Reads `data.len()` bytes at physical `addr` if one of the function's memory
    /// BARs (with memory decoding on) covers it, and says whether it did. The machine
    /// offers every MMIO address no fixed device claims.
    fn mmio_read(&mut self, _addr: u64, _data: &mut [u8]) -> bool {
        false
    }
    /// The write side of [`PciDevice::mmio_read`].
    fn mmio_write(&mut self, _addr: u64, _data: &[u8]) -> bool {
        false
    }
}

pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI slot {dev:02x}.{func} is already taken; pick a free device number")]
    SlotTaken { dev: u8, func: u8 },
    #[error("PCI address {dev:#x}.{func} is out of range (device 0-31, function 0-7)")]
    BadAddress { dev: u8, func: u8 },
}

/// A base address register's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
}

/// The expansion ROM base address register of a type 0 header.
pub const ROM_BAR: u8 = 0x30;
/// The smallest expansion ROM window: its address bits 10:1 are reserved.
const ROM_BAR_MIN: u32 = 2048;

/// A type 0 configuration header: 256 bytes, a per-bit writable mask and a per-bit
/// write-1-to-clear mask. BAR sizing falls out of the writable mask: a BAR of size
/// `n` has its low address bits read-only zero, so writing all ones reads back `!(n-1)`.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; 256],
    writable: [u8; 256],
    w1c: [u8; 256],
    bars: [Option<BarKind>; 6],
}

impl ConfigSpace {
    /// A header with IDs and class code; the command register's usual bits, the
    /// status error bits (write 1 to clear) and the interrupt line are writable.
    pub fn new(vendor: u16, device: u16, class: [u8; 3], revision: u8) -> Self {
        let mut c = ConfigSpace { bytes: [0; 256], writable: [0; 256], w1c: [0; 256], bars: [None; 6] };
        c.set_u16(0x00, vendor);
        c.set_u16(0x02, device);
        c.set_u8(0x08, revision);
        // Programming interface, subclass, class.
        c.bytes[0x09..0x0c].copy_from_slice(&[class[2], class[1], class[0]]);
        // I/O, memory, bus master, parity, SERR, INTx disable.
        c.set_writable(0x04, &[0x47, 0x05]);
        c.w1c[0x07] = 0xf9;
        c.set_writable(0x3c, &[0xff]);
        c
    }

    pub fn u8(&self, off: u8) -> u8 {
        self.bytes[usize::from(off)]
    }
    pub fn u16(&self, off: u8) -> u16 {
        u16::from_le_bytes([self.u8(off), self.u8(off.wrapping_add(1))])
    }
    pub fn u32(&self, off: u8) -> u32 {
        u32::from(self.u16(off)) | u32::from(self.u16(off.wrapping_add(2))) << 16
    }
    pub fn set_u8(&mut self, off: u8, v: u8) {
        self.bytes[usize::from(off)] = v;
    }
    pub fn set_u16(&mut self, off: u8, v: u16) {
        self.set_bytes(off, &v.to_le_bytes());
    }
    pub fn set_u32(&mut self, off: u8, v: u32) {
        self.set_bytes(off, &v.to_le_bytes());
    }
    fn set_bytes(&mut self, off: u8, v: &[u8]) {
        for (i, &b) in v.iter().enumerate() {
            self.bytes[usize::from(off.wrapping_add(i as u8))] = b;
        }
    }

    /// Makes the bits set in `mask` (bytes from `off` on) guest-writable.
    pub fn set_writable(&mut self, off: u8, mask: &[u8]) {
        for (i, &m) in mask.iter().enumerate() {
            self.writable[usize::from(off.wrapping_add(i as u8))] = m;
        }
    }

    /// Declares BAR `index` (0-5) of `size` bytes (rounded up to a power of two, at
    /// least 4 for I/O and 16 for memory).
    pub fn add_bar(&mut self, index: usize, size: u32, kind: BarKind) {
        let Some(slot) = self.bars.get_mut(index) else { return };
        *slot = Some(kind);
        let (min, low) = match kind {
            BarKind::Io => (4, 1),
            BarKind::Mem32 => (16, 0),
        };
        let size = size.max(min).checked_next_power_of_two().unwrap_or(1 << 31);
        let off = 0x10 + 4 * index as u8;
        self.set_u32(off, low);
        self.set_writable(off, &(!(size - 1) & !(min - 1)).to_le_bytes());
    }

    /// The address the guest gave BAR `index`, if it is declared and non-zero.
    pub fn bar(&self, index: usize) -> Option<u64> {
        let kind = (*self.bars.get(index)?)?;
        let v = self.u32(0x10 + 4 * index as u8);
        let addr = match kind {
            BarKind::Io => v & !3,
            BarKind::Mem32 => v & !0xf,
        };
        (addr != 0).then_some(u64::from(addr))
    }

    /// Declares an expansion ROM BAR (config offset 0x30) of `size` bytes, rounded up
    /// to a power of two and at least 2 KiB: the address bits above the size and the
    /// enable bit (bit 0) become writable, so sizing reads back `!(size-1) | enable`.
    pub fn add_rom_bar(&mut self, size: u32) {
        let size = size.max(ROM_BAR_MIN).checked_next_power_of_two().unwrap_or(1 << 31);
        self.set_u32(ROM_BAR, 0);
        self.set_writable(ROM_BAR, &((!(size - 1) & !(ROM_BAR_MIN - 1)) | 1).to_le_bytes());
    }

    /// The expansion ROM's address, if its BAR is enabled (bit 0) and non-zero. The
    /// ROM decodes only while memory decoding is on as well (see [`Self::decodes`]).
    pub fn rom_bar(&self) -> Option<u64> {
        let v = self.u32(ROM_BAR);
        let addr = v & !(ROM_BAR_MIN - 1);
        (v & 1 != 0 && addr != 0).then_some(u64::from(addr))
    }

    /// Where `addr` falls inside BAR `index`, `size` bytes long: `None` unless the BAR
    /// is declared and given an address, its kind of decoding is on in the command
    /// register, and `addr` lies in it.
    pub fn bar_offset(&self, index: usize, addr: u64, size: u64) -> Option<u64> {
        let kind = (*self.bars.get(index)?)?;
        if !self.decodes(kind) {
            return None;
        }
        addr.checked_sub(self.bar(index)?).filter(|&off| off < size)
    }

    /// Whether the command register enables I/O (bit 0) or memory (bit 1) decoding.
    pub fn decodes(&self, kind: BarKind) -> bool {
        self.u8(0x04) & if kind == BarKind::Io { 1 } else { 2 } != 0
    }
}

/// The 256 bytes (BARs, command, interrupt line and the rest); which bits are
/// writable and which BARs exist come from construction.
impl Snapshot for ConfigSpace {
    fn save_state(&self) -> State {
        serde_json::json!({ "bytes": &self.bytes[..] })
    }

    fn restore_state(&mut self, state: &State) -> Result<(), String> {
        let bytes: [u8; 256] = array_field(state, "bytes")?;
        if bytes[..4] != self.bytes[..4] {
            return Err(format!("the state is of PCI device {:02x?}, not this one", &bytes[..4]));
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl PciDevice for ConfigSpace {
    fn config_read(&mut self, reg: u16) -> u32 {
        self.u32((reg & 0xfc) as u8)
    }
    fn config_write(&mut self, reg: u16, value: u32, mask: u32) {
        let base = usize::from(reg & 0xfc);
        for i in 0..4 {
            if (mask >> (8 * i)) & 0xff == 0 {
                continue;
            }
            let (v, o) = ((value >> (8 * i)) as u8, base + i);
            let (w, c) = (self.writable[o], self.w1c[o]);
            self.bytes[o] = ((self.bytes[o] & !w) | (v & w)) & !(v & c);
        }
    }
}

/// The i440FX host bridge's configuration space (8086:1237). Chipset registers from
/// 0x40 up are stored so firmware reads back what it wrote; [`I440fx`] tells the
/// machine about PAM changes. The subsystem IDs are QEMU's (1af4:1100), by which
/// SeaBIOS knows it runs on QEMU's i440fx and uses fw_cfg.
pub fn i440fx_host_bridge() -> ConfigSpace {
    let mut c = ConfigSpace::new(0x8086, 0x1237, [0x06, 0x00, 0x00], 0x02);
    c.set_u16(0x2c, 0x1af4);
    c.set_u16(0x2e, 0x1100);
    c.set_writable(0x40, &[0xff; 0xc0]);
    c.set_u8(0x72, 0x02); // SMRAM: compatible SMRAM at 0xa0000
    c
}

/// PIIX3's PIRQ route control registers PIRQRC[A-D], one byte each from here.
pub const PIRQ_ROUTE_REG: u8 = 0x60;
/// Bit 7 of a route register: PIRQx reaches no ISA IRQ (the reset value, 0x80).
pub const PIRQ_ROUTE_DISABLED: u8 = 0x80;

/// The PIIX3 PCI-to-ISA bridge (8086:7000), function 0 of a multi-function device
/// (IDE joins as 01.1). PIRQ routing (0x60-0x63) starts disabled; firmware, or the
/// OS through the DSDT's link devices, programs it.
pub fn piix3_isa_bridge() -> ConfigSpace {
    let mut c = ConfigSpace::new(0x8086, 0x7000, [0x06, 0x01, 0x00], 0x00);
    c.set_u8(0x0e, 0x80);
    c.set_writable(0x40, &[0xff; 0xc0]);
    c.set_bytes(PIRQ_ROUTE_REG, &[PIRQ_ROUTE_DISABLED; 4]);
    // Route registers: bit 7 and the IRQ in bits 3:0; bits 6:4 are reserved zeros.
    c.set_writable(PIRQ_ROUTE_REG, &[0x8f; 4]);
    c.set_bytes(0x70, &[0x80, 0x80]);
    c
}

/// The ISA IRQ a PIRQ route register value sends its PIRQ to: `None` when routing is
/// disabled or names an IRQ PIIX3 reserves (0, 1, 2, 8, 13: timer, keyboard, cascade,
/// RTC, FPU), which the hardware does not drive either.
pub fn pirq_route_irq(reg: u8) -> Option<u8> {
    let irq = reg & 0x0f;
    (reg & PIRQ_ROUTE_DISABLED == 0 && !matches!(irq, 0 | 1 | 2 | 8 | 13)).then_some(irq)
}

/// The PIRQ (0 = PIRQA) that INTx pin `intx` (0 = INTA) of device `slot` on bus 0
/// drives: the PC board's rotation, (slot + pin - 1) mod 4, as QEMU's `pc` wires it
/// (slot 1 INTA is PIRQA, slot 0 INTA is PIRQD). The DSDT's `_PRT` says the same.
pub fn pirq_for_pin(slot: u8, intx: u8) -> usize {
    (usize::from(slot) + usize::from(intx) + 3) & 3
}

/// The functions on bus 0, by device and function number.
#[derive(Default)]
pub struct PciBus {
    devices: BTreeMap<u8, SharedPciDevice>,
}

fn devfn(dev: u8, func: u8) -> Result<u8, PciError> {
    if dev < 32 && func < 8 {
        Ok(dev << 3 | func)
    } else {
        Err(PciError::BadAddress { dev, func })
    }
}

impl PciBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `dev`.`func`.
    pub fn add(&mut self, dev: u8, func: u8, device: SharedPciDevice) -> Result<(), PciError> {
        let key = devfn(dev, func)?;
        if self.devices.contains_key(&key) {
            return Err(PciError::SlotTaken { dev, func });
        }
        self.devices.insert(key, device);
        Ok(())
    }

    /// The first device number with nothing at function 0.
    pub fn free_slot(&self) -> Option<u8> {
        (0..32).find(|d| !self.devices.contains_key(&(d << 3)))
    }

    fn get(&self, dev: u8, func: u8) -> Option<&SharedPciDevice> {
        self.devices.get(&devfn(dev, func).ok()?)
    }

    /// Reads a dword of configuration space; absent functions read all ones.
    pub fn config_read(&self, dev: u8, func: u8, reg: u16) -> u32 {
        self.get(dev, func).map_or(0xffff_ffff, |d| lock(d).config_read(reg & !3))
    }

    /// Writes the `mask`ed bytes of a dword; writes to absent functions are dropped.
    pub fn config_write(&self, dev: u8, func: u8, reg: u16, value: u32, mask: u32) {
        if let Some(d) = self.get(dev, func) {
            lock(d).config_write(reg & !3, value, mask);
        }
    }

    /// Offers a port read to the functions' I/O BARs; false if none claims it.
    pub fn io_read(&self, port: u16, data: &mut [u8]) -> bool {
        self.devices.values().any(|d| lock(d).io_read(port, data))
    }

    /// Offers a port write to the functions' I/O BARs; false if none claims it.
    pub fn io_write(&self, port: u16, data: &[u8]) -> bool {
        self.devices.values().any(|d| lock(d).io_write(port, data))
    }

    /// Offers an MMIO read to the functions' memory BARs; false if none claims it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.devices.values().any(|d| lock(d).mmio_read(addr, data))
    }

    /// Offers an MMIO write to the functions' memory BARs; false if none claims it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        self.devices.values().any(|d| lock(d).mmio_write(addr, data))
    }
}

/// The host side of configuration mechanism #1, and bus 0.
pub struct PciRoot {
    address: u32,
    bus: PciBus,
    /// The host bridge and the ISA bridge, also on `bus`: kept typed so the machine can
    /// read PIIX3's PIRQ routing and reset both.
    host: Arc<Mutex<I440fx>>,
    isa: Arc<Mutex<ConfigSpace>>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// Bus 0 with the host bridge at 00.0 and the ISA bridge at 01.0.
    pub fn new() -> Self {
        let mut bus = PciBus::new();
        let host = Arc::new(Mutex::new(I440fx::new()));
        let isa = Arc::new(Mutex::new(piix3_isa_bridge()));
        // An empty bus always has these slots free.
        let _ = bus.add(0, 0, host.clone());
        let _ = bus.add(1, 0, isa.clone());
        PciRoot { address: 0, bus, host, isa }
    }

    /// The ISA IRQ PIRQ `n` (0-3 for PIRQA-D) is routed to by PIIX3's route register,
    /// `None` while disabled (the reset state) or invalid. PCI INTx lines reach the PIC
    /// (and the same-numbered IOAPIC input) through this; they are level-triggered, so
    /// the IRQ's ELCR bit must be set, which the OS does when it enables a link.
    pub fn pirq_route(&self, n: usize) -> Option<u8> {
        let n = u8::try_from(n).ok().filter(|&n| n < 4)?;
        pirq_route_irq(lock(&self.isa).u8(PIRQ_ROUTE_REG + n))
    }

    /// A system reset: the bridges return to their power-on configuration (PIRQ
    /// routing disabled) and CONFIG_ADDRESS clears. Added devices keep their state.
    pub fn reset(&mut self) {
        self.address = 0;
        lock(&self.host).reset();
        *lock(&self.isa) = piix3_isa_bridge();
    }

    /// Tells `listener` the PAM registers now and whenever they change (and on reset).
    pub fn set_pam_listener(&mut self, listener: PamListener) {
        lock(&self.host).set_pam_listener(listener);
    }

    pub fn bus(&self) -> &PciBus {
        &self.bus
    }

    /// PIIX3's configuration space (its PIRQ route registers), for the interrupt router.
    pub fn isa_bridge(&self) -> Arc<Mutex<ConfigSpace>> {
        self.isa.clone()
    }

    pub fn bus_mut(&mut self) -> &mut PciBus {
        &mut self.bus
    }

    /// The function and register CONFIG_ADDRESS selects, if enabled and on bus 0.
    fn target(&self) -> Option<(u8, u8, u16)> {
        let a = self.address;
        (a >> 31 == 1 && (a >> 16) & 0xff == 0).then_some((
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 7) as u8,
            (a & 0xfc) as u16,
        ))
    }
}

/// CONFIG_ADDRESS and the two bridges; functions the machine adds are its to save.
impl Snapshot for PciRoot {
    fn save_state(&self) -> State {
        serde_json::json!({
            "address": self.address,
            "host": lock(&self.host).save_state(),
            "isa": lock(&self.isa).save_state(),
        })
    }

    fn restore_state(&mut self, state: &State) -> Result<(), String> {
        let address = field(state, "address")?;
        let isa = restored(&*lock(&self.isa), state, "isa")?;
        // The last step that can fail (and it changes nothing when it does).
        lock(&self.host).restore_state(part(state, "host")?).map_err(|e| format!("host: {e}"))?;
        self.address = address;
        *lock(&self.isa) = isa;
        Ok(())
    }
}

/// The configuration mechanism's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciWindow {
    /// CONFIG_ADDRESS (0xcf8): claims dword accesses only.
    Address,
    /// CONFIG_DATA (0xcfc-0xcff).
    Data,
}

impl PortGroup for PciRoot {
    type Window = PciWindow;
    fn window_read(&mut self, window: PciWindow, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match window {
            PciWindow::Address if offset == 0 && data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            PciWindow::Address => {}
            PciWindow::Data => {
                let Some((dev, func, reg)) = self.target() else { return };
                let dword = self.bus.config_read(dev, func, reg).to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    if let Some(&v) = dword.get(offset as usize + i) {
                        *b = v;
                    }
                }
            }
        }
    }
    fn window_write(&mut self, window: PciWindow, offset: u64, data: &[u8]) {
        match window {
            // Bits 30:24 are reserved and bits 1:0 select type 0/1 cycles: keep neither.
            PciWindow::Address if offset == 0 && data.len() == 4 => self.address = le_value(data) as u32 & 0x80ff_fffc,
            PciWindow::Address => {}
            PciWindow::Data => {
                let Some((dev, func, reg)) = self.target() else { return };
                let n = data.len().min(4usize.saturating_sub(offset as usize));
                if n == 0 {
                    return;
                }
                let shift = 8 * offset as u32;
                let value = (le_value(&data[..n]) as u32) << shift;
                let mask = (u32::MAX >> (32 - 8 * n as u32)) << shift;
                self.bus.config_write(dev, func, reg, value, mask);
            }
        }
    }
}

/// The configuration mechanism's bus devices with their base ports and lengths:
/// CONFIG_ADDRESS (0xcf8, 1: the bus resolves a dword access by its start, and 0xcf9
/// stays free for [`crate::ResetControl`]) and CONFIG_DATA (0xcfc, 4).
pub fn pci_bus_devices(root: &Arc<Mutex<PciRoot>>) -> Vec<(SharedDevice, u64, u64)> {
    vec![
        (PortWindow::shared(root, PciWindow::Address), 0xcf8, 1),
        (PortWindow::shared(root, PciWindow::Data), 0xcfc, 4),
    ]
}

#[cfg(test)]
mod tests;
