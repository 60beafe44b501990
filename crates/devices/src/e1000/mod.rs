//! The Intel 82540EM gigabit Ethernet controller ("e1000", PCI 8086:100e, class
//! 02 00 00, revision 3), as QEMU's `e1000` models it, for Linux's `e1000` driver and
//! iPXE's `intel` driver.
//!
//! The function: BAR0 is the 128 KiB register window; BAR1 64 I/O ports giving the
//! same registers indirectly (IOADDR at +0 selects a register, IODATA at +4 reads or
//! writes it: Linux resets the 82540 through it); an optional expansion ROM (iPXE)
//! answers through the ROM BAR. INTA is level-triggered: high while a cause in ICR is
//! unmasked in IMS and the command register's INTx disable bit is clear.
//!
//! Modules: `regs` (offsets and bits), `eeprom` (the serial EEPROM behind EECD and
//! EERD), `phy` (the 88E1011 PHY behind MDIC), `rx` (receive filtering and the
//! receive ring), `tx` (the transmit ring, checksum offload and TCP segmentation).
//!
//! Registers are dwords; narrower accesses read or update the bytes they cover, wider
//! ones are split. Interrupt moderation (ITR, RDTR/RADV, TIDV/TADV) is stored but not
//! modelled: causes raise the line at once, as on QEMU without its mitigation timer.
//! Flow control, wake-up and management registers are stored and do nothing. Unknown
//! offsets read 0 and ignore writes. Statistics count what is received and sent and
//! clear on read.
//!
//! Locking: the NIC's state sits behind a mutex of its own, apart from the bus-facing
//! wrapper's. Frames go to the backend, and the backend is told to resume, only after
//! that mutex is released: a backend may deliver a frame (through [`FrameSink`])
//! from inside `send`, which takes it again.
//!
//! DMA goes through [`GuestMemory`] only: reads of descriptors and buffers come from
//! RAM or ROM, writes land in RAM only (ROM drops them, MMIO holes fail), and with
//! bus mastering off in the command register the NIC does no DMA at all.

mod eeprom;
mod phy;
mod regs;
mod rx;
#[cfg(test)]
mod tests;
mod tx;

use std::sync::{Arc, Mutex, Weak};

use quern_core::bus::lock;
use quern_core::snapshot::{self, field, Snapshot};
use quern_core::{GuestMemory, IrqLine};
use quern_net::{FrameSink, NetBackend};

use crate::pci::{BarKind, ConfigSpace, PciDevice, SharedPciDevice};
use crate::snapshot::restored;
use eeprom::Eeprom;
use phy::Phy;
use regs::*;

/// The 82540EM's PCI device ID.
pub const DEVICE_ID: u16 = 0x100e;
/// Dwords in the register window.
const REG_COUNT: usize = (MMIO_SIZE / 4) as usize;
/// PCI command register bits.
const CMD_BUS_MASTER: u16 = 1 << 2;
const CMD_INTX_DISABLE: u16 = 1 << 10;
/// PCI status: interrupt pending.
const STATUS_INTERRUPT: u8 = 1 << 3;

/// How the machine configures the NIC.
#[derive(Clone, Debug)]
pub struct E1000Config {
    /// The MAC address the EEPROM holds.
    pub mac: [u8; 6],
    /// The option ROM served read-only through the expansion ROM BAR; `None` gives
    /// the function no ROM BAR.
    pub rom: Option<Vec<u8>>,
}

/// The NIC. Its bus side is [`E1000::pci_function`], its wire side
/// [`E1000::sink`] (frames in) and the backend given to [`E1000::connect`] (frames
/// out).
pub struct E1000 {
    state: Mutex<State>,
    backend: Mutex<Option<Arc<dyn NetBackend>>>,
}

/// What a register access leaves to do once the state lock is released.
#[derive(Default)]
struct Deferred {
    /// Frames to send, in order.
    frames: Vec<Vec<u8>>,
    /// The PHY loops them back to the NIC instead.
    loopback: bool,
    /// The receive ring has room again: the backend may offer held frames.
    resume: bool,
}

/// The register windows the split accesses go to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Window {
    Regs,
    Io,
}

struct State {
    mem: Arc<GuestMemory>,
    intx: Arc<dyn IrqLine>,
    config: ConfigSpace,
    rom: Option<Vec<u8>>,
    regs: Vec<u32>,
    eeprom: Eeprom,
    phy: Phy,
    tx: tx::TxState,
    /// IOADDR: the register IODATA reaches.
    io_addr: u32,
    /// The cable, as [`E1000::set_link`] last said.
    cable: bool,
    /// The level INTA is driven at.
    line: bool,
}

impl E1000 {
    pub fn new(mem: Arc<GuestMemory>, intx: Arc<dyn IrqLine>, cfg: E1000Config) -> Arc<E1000> {
        let mut state = State {
            mem,
            intx,
            config: config_space(cfg.rom.as_ref().map(Vec::len)),
            rom: cfg.rom,
            regs: vec![0; REG_COUNT],
            eeprom: Eeprom::new(cfg.mac, DEVICE_ID),
            phy: Phy::new(true),
            tx: tx::TxState::default(),
            io_addr: 0,
            cable: true,
            line: false,
        };
        state.reset_mac();
        Arc::new(E1000 { state: Mutex::new(state), backend: Mutex::new(None) })
    }

    /// The PCI function to put on the bus.
    pub fn pci_function(self: &Arc<Self>) -> SharedPciDevice {
        Arc::new(Mutex::new(E1000Function { nic: self.clone() }))
    }

    /// Where the backend delivers received frames (from its own thread).
    pub fn sink(self: &Arc<Self>) -> Arc<dyn FrameSink> {
        Arc::new(Sink(Arc::downgrade(self)))
    }

    /// The NIC as a [`Snapshot`], to keep among the devices the machine saves (the NIC
    /// itself is shared, and saved and restored through this).
    pub fn state(self: &Arc<Self>) -> Arc<Mutex<dyn Snapshot + Send>> {
        Arc::new(Mutex::new(Shared(self.clone())))
    }

    /// Attaches the backend frames are sent to. Until then they are dropped.
    pub fn connect(&self, backend: Arc<dyn NetBackend>) {
        *lock(&self.backend) = Some(backend);
    }

    /// Plugs the cable in or pulls it: STATUS.LU and the PHY's link follow, with a
    /// link status change interrupt when STATUS changes.
    pub fn set_link(&self, up: bool) {
        let resume = {
            let mut s = lock(&self.state);
            s.cable = up;
            s.phy.set_link(up);
            let old = s.reg(STATUS);
            s.set_reg(STATUS, if up { old | STATUS_LU } else { old & !STATUS_LU });
            if s.reg(STATUS) != old {
                s.set_causes(ICR_LSC);
            }
            up
        };
        self.finish(Deferred { resume, ..Deferred::default() });
    }

    /// A system reset: the power-on state. Configuration space returns to unassigned
    /// BARs, the PHY and MAC to their defaults (the MAC address from the EEPROM, rings
    /// and interrupts off). The cable keeps the state [`E1000::set_link`] gave it.
    pub fn reset(&self) {
        {
            let mut s = lock(&self.state);
            let rom_len = s.rom.as_ref().map(Vec::len);
            s.config = config_space(rom_len);
            s.phy = Phy::new(s.cable);
            s.reset_mac();
        }
        self.finish(Deferred { resume: true, ..Deferred::default() });
    }

    /// Takes a frame from the wire; false when the receive ring has no room for it now.
    fn receive_frame(&self, frame: &[u8]) -> bool {
        lock(&self.state).receive(frame)
    }

    /// Sends what a register access produced, outside the state lock.
    fn finish(&self, d: Deferred) {
        if d.frames.is_empty() && !d.resume {
            return;
        }
        if d.loopback {
            for f in &d.frames {
                self.receive_frame(f);
            }
        }
        let backend = lock(&self.backend).clone();
        let Some(backend) = backend else { return };
        if !d.loopback && !d.frames.is_empty() {
            for f in &d.frames {
                if let Err(e) = backend.send(f) {
                    quern_core::log_limited!(log::Level::Debug, "e1000: frame of {} bytes lost: {e}", f.len());
                }
            }
            backend.flush();
        }
        if d.resume {
            backend.resume();
        }
    }
}

/// [`E1000::state`]: the shared NIC as a device to save.
struct Shared(Arc<E1000>);

impl Snapshot for Shared {
    fn save_state(&self) -> snapshot::State {
        lock(&self.0.state).save_state()
    }

    fn restore_state(&mut self, state: &snapshot::State) -> Result<(), String> {
        lock(&self.0.state).restore_state(state)?;
        // As after a reset, the backend may offer the frames it holds.
        self.0.finish(Deferred { resume: true, ..Deferred::default() });
        Ok(())
    }
}

/// The configuration space at power-on, with a ROM BAR for a ROM of `rom_len` bytes.
fn config_space(rom_len: Option<usize>) -> ConfigSpace {
    let mut c = ConfigSpace::new(0x8086, DEVICE_ID, [0x02, 0x00, 0x00], 0x03);
    // QEMU's PCI core gives its devices these subsystem IDs.
    c.set_u16(0x2c, 0x1af4);
    c.set_u16(0x2e, 0x1100);
    // Cache line size and latency timer: kept for software.
    c.set_writable(0x0c, &[0xff, 0xff]);
    c.set_u8(0x3d, 1);
    c.add_bar(0, MMIO_SIZE, BarKind::Mem32);
    c.add_bar(1, IO_SIZE, BarKind::Io);
    if let Some(len) = rom_len {
        c.add_rom_bar(u32::try_from(len).unwrap_or(u32::MAX));
    }
    c
}

impl State {
    fn reg(&self, off: u32) -> u32 {
        self.regs[(off >> 2) as usize]
    }

    fn set_reg(&mut self, off: u32, v: u32) {
        self.regs[(off >> 2) as usize] = v;
    }

    fn bus_master(&self) -> bool {
        self.config.u16(0x04) & CMD_BUS_MASTER != 0
    }

    /// The MAC's registers at power-on or after CTRL.RST: link as the cable is, the
    /// address from the EEPROM in RA[0], rings, filters and interrupts off.
    fn reset_mac(&mut self) {
        self.regs.fill(0);
        self.set_reg(PBA, 0x0010_0030);
        self.set_reg(LEDCTL, 0x602);
        self.set_reg(CTRL, CTRL_SWDPIN2 | CTRL_SWDPIN0 | CTRL_SPD_1000 | CTRL_SLU);
        let link = if self.cable { STATUS_LU } else { 0 };
        self.set_reg(
            STATUS,
            0x8000_0000 | STATUS_GIO_MASTER | STATUS_ASDV_1000 | STATUS_MTXCKOK | STATUS_SPEED_1000 | STATUS_FD | link,
        );
        self.set_reg(MANC, MANC_INIT);
        self.set_reg(VET, 0x8100);
        let mac = self.eeprom.mac();
        self.set_reg(RA, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        self.set_reg(RA + 4, u32::from(u16::from_le_bytes([mac[4], mac[5]])) | RAH_AV);
        self.eeprom.reset_interface();
        self.tx = tx::TxState::default();
        self.io_addr = 0;
        self.update_irq();
    }

    /// Adds interrupt causes.
    fn set_causes(&mut self, causes: u32) {
        self.set_icr(self.reg(ICR) | causes);
    }

    /// Sets ICR (INT_ASSERTED follows whether any cause is set) and the line.
    fn set_icr(&mut self, causes: u32) {
        let causes = causes & !ICR_INT_ASSERTED;
        self.set_reg(ICR, if causes != 0 { causes | ICR_INT_ASSERTED } else { 0 });
        self.update_irq();
    }

    /// Drives INTA and the PCI interrupt status bit from ICR, IMS and INTx disable.
    fn update_irq(&mut self) {
        let pending = self.reg(ICR) & self.reg(IMS) != 0;
        let status = self.config.u8(0x06) & !STATUS_INTERRUPT;
        self.config.set_u8(0x06, status | if pending { STATUS_INTERRUPT } else { 0 });
        let level = pending && self.config.u16(0x04) & CMD_INTX_DISABLE == 0;
        if level != self.line {
            self.line = level;
            self.intx.set_level(level);
        }
    }

    /// Whether `off` holds a plain register (stored, read back) and which of its bits
    /// are writable.
    fn plain_mask(off: u32) -> Option<u32> {
        let mask = match off {
            CTRL_EXT | FCAL | TXCW | RXCW | TIPG | LEDCTL | PBA | FCRTL | FCRTH | RDBAH | RXDCTL | TDBAH | TXDCTL
            | RXCSUM | WUC | WUFC | WUS | MANC | IPAV | SWSM | WUPL => !0,
            FCAH | FCT | VET | ITR | FCTTV | AIT | RDTR | RADV | TIDV | TADV => 0xffff,
            RDBAL | TDBAL => !0xf,
            TXDMAC => 1,
            RSRPD => 0xfff,
            o if (MTA..MTA + 0x200).contains(&o) || (VFTA..VFTA + 0x200).contains(&o) => !0,
            o if (RA..RA + 0x80).contains(&o) => {
                if o & 4 == 0 {
                    !0
                } else {
                    0x8003_ffff
                }
            }
            o if (IP4AT..IP4AT + 0x18).contains(&o)
                || (IP6AT..IP6AT + 0x10).contains(&o)
                || (WUPM..WUPM + 0x80).contains(&o)
                || (FFLT..FFLT + 0x20).contains(&o) =>
            {
                !0
            }
            _ => return None,
        };
        Some(mask)
    }

    /// A register read, with its side effects (ICR and statistics clear).
    fn read_reg(&mut self, off: u32) -> u32 {
        match off {
            ICR => {
                let v = self.reg(ICR);
                self.set_icr(0);
                v
            }
            STATS_START..STATS_END => {
                let v = self.reg(off);
                // The low half of a 64-bit counter clears with its high half.
                if !STATS_PAIRS.contains(&off) {
                    self.set_reg(off, 0);
                    if STATS_PAIRS.contains(&(off - 4)) {
                        self.set_reg(off - 4, 0);
                    }
                }
                v
            }
            _ => self.peek_reg(off),
        }
    }

    /// A register's value without side effects.
    fn peek_reg(&self, off: u32) -> u32 {
        match off {
            CTRL | STATUS | MDIC | ICR | IMS | RCTL | TCTL | RDLEN | RDH | RDT | TDLEN | TDH | TDT => self.reg(off),
            STATS_START..STATS_END => self.reg(off),
            // ICS reads as ICR does, without clearing it.
            ICS => self.reg(ICR),
            EECD => self.eeprom.eecd_read(),
            EERD => self.eeprom.eerd_read(self.reg(EERD)),
            o if Self::plain_mask(o).is_some() => self.reg(o),
            _ => {
                quern_core::log_limited!(log::Level::Debug, "e1000: read of unknown register {off:#x}");
                0
            }
        }
    }

    /// A register write.
    fn write_reg(&mut self, off: u32, v: u32, d: &mut Deferred) {
        match off {
            CTRL => {
                if v & CTRL_RST != 0 {
                    self.reset_mac();
                } else {
                    self.set_reg(CTRL, v);
                }
            }
            EECD => self.eeprom.eecd_write(v),
            EERD => self.set_reg(EERD, v),
            MDIC => self.write_mdic(v),
            ICR => self.set_icr(self.reg(ICR) & !v),
            ICS => self.set_causes(v),
            IMS => {
                self.set_reg(IMS, self.reg(IMS) | v);
                self.update_irq();
            }
            IMC => {
                self.set_reg(IMS, self.reg(IMS) & !v);
                self.update_irq();
            }
            RCTL => {
                self.set_reg(RCTL, v);
                d.resume |= self.rx_has_room();
            }
            TCTL => {
                self.set_reg(TCTL, v);
                self.start_xmit(d);
            }
            TDT => {
                self.set_reg(TDT, v & 0xffff);
                self.start_xmit(d);
            }
            RDT => {
                self.set_reg(RDT, v & 0xffff);
                d.resume |= self.rx_has_room();
            }
            RDH | TDH => self.set_reg(off, v & 0xffff),
            RDLEN | TDLEN => self.set_reg(off, v & 0xf_ff80),
            // Read-only: STATUS, statistics.
            STATUS | STATS_START..STATS_END => {}
            o => match Self::plain_mask(o) {
                Some(mask) => self.set_reg(o, (self.reg(o) & !mask) | (v & mask)),
                None => {
                    quern_core::log_limited!(log::Level::Debug, "e1000: write of {v:#x} to unknown register {off:#x}")
                }
            },
        }
    }

    /// MDIC: one PHY register read or write, complete at once. Only PHY address 1
    /// answers; others set ERROR.
    fn write_mdic(&mut self, v: u32) {
        let reg = ((v >> MDIC_REG_SHIFT) & 0x1f) as usize;
        let mut out = v & !(MDIC_READY | MDIC_ERROR);
        let mut lsc = false;
        if (v >> MDIC_PHY_SHIFT) & 0x1f != 1 {
            out |= MDIC_ERROR;
        } else if v & (3 << 26) == MDIC_OP_READ {
            out = (out & !0xffff) | u32::from(self.phy.read(reg));
        } else if v & (3 << 26) == MDIC_OP_WRITE {
            lsc = self.phy.write(reg, v as u16);
        }
        self.set_reg(MDIC, out | MDIC_READY);
        let causes = if v & MDIC_IE != 0 { ICR_MDAC } else { 0 } | if lsc { ICR_LSC } else { 0 };
        if causes != 0 {
            self.set_causes(causes);
        }
    }

    /// The dword at `off` of a window, with read side effects.
    fn dword_read(&mut self, w: Window, off: u32) -> u32 {
        match (w, off) {
            (Window::Regs, _) => self.read_reg(off),
            (Window::Io, 0) => self.io_addr,
            (Window::Io, 4) => self.read_reg(self.io_addr & (MMIO_SIZE - 4)),
            (Window::Io, _) => 0,
        }
    }

    /// What the bytes a narrow write leaves alone are merged with.
    fn dword_merge_base(&self, w: Window, off: u32) -> u32 {
        let reg = match (w, off) {
            (Window::Regs, _) => off,
            (Window::Io, 0) => return self.io_addr,
            (Window::Io, 4) => self.io_addr & (MMIO_SIZE - 4),
            (Window::Io, _) => return 0,
        };
        match reg {
            // Registers that act on the bits written: the other bytes write zeros.
            ICR | ICS | IMS | IMC => 0,
            _ => self.peek_reg(reg),
        }
    }

    fn dword_write(&mut self, w: Window, off: u32, v: u32, d: &mut Deferred) {
        match (w, off) {
            (Window::Regs, _) => self.write_reg(off, v, d),
            (Window::Io, 0) => self.io_addr = v & (MMIO_SIZE - 1),
            (Window::Io, 4) => self.write_reg(self.io_addr & (MMIO_SIZE - 4), v, d),
            (Window::Io, _) => {}
        }
    }

    /// Reads `data` at `off` of a window of `size` bytes, dword by dword.
    fn window_read(&mut self, w: Window, size: u32, off: u64, data: &mut [u8]) {
        let mut i = 0;
        while i < data.len() {
            let at = off + i as u64;
            let (dw, byte) = (at & !3, (at & 3) as usize);
            let n = (4 - byte).min(data.len() - i);
            let v = if dw < u64::from(size) { self.dword_read(w, dw as u32) } else { !0 };
            data[i..i + n].copy_from_slice(&v.to_le_bytes()[byte..byte + n]);
            i += n;
        }
    }

    /// Writes `data` at `off` of a window; a partial dword merges with its other bytes.
    fn window_write(&mut self, w: Window, size: u32, off: u64, data: &[u8], d: &mut Deferred) {
        let mut i = 0;
        while i < data.len() {
            let at = off + i as u64;
            let (dw, byte) = (at & !3, (at & 3) as usize);
            let n = (4 - byte).min(data.len() - i);
            if dw < u64::from(size) {
                let dw = dw as u32;
                let mut bytes = if n == 4 { [0; 4] } else { self.dword_merge_base(w, dw).to_le_bytes() };
                bytes[byte..byte + n].copy_from_slice(&data[i..i + n]);
                self.dword_write(w, dw, u32::from_le_bytes(bytes), d);
            }
            i += n;
        }
    }

    /// A configuration write: enabling bus mastering lets held receive frames and
    /// pending transmit descriptors move.
    fn config_write(&mut self, reg: u16, value: u32, mask: u32, d: &mut Deferred) {
        let was_master = self.bus_master();
        self.config.config_write(reg, value, mask);
        self.update_irq();
        if !was_master && self.bus_master() {
            d.resume = true;
            self.start_xmit(d);
        }
    }

    /// Where BAR `index` decodes, if enabled.
    /// The ROM byte at `addr`, if the ROM BAR decodes there.
    fn rom_offset(&self, addr: u64) -> Option<usize> {
        let rom = self.rom.as_ref()?;
        if !self.config.decodes(BarKind::Mem32) {
            return None;
        }
        let off = addr.checked_sub(self.config.rom_bar()?)?;
        let size = (rom.len() as u64).max(2048).next_power_of_two();
        (off < size).then_some(off as usize)
    }
}

/// The configuration space (BARs, command, interrupt line), the register file, the
/// EEPROM with its microwire interface, the PHY, the transmit side's contexts and
/// partly assembled packet, IOADDR, the cable and INTA's level. Not the option ROM.
impl Snapshot for State {
    fn save_state(&self) -> snapshot::State {
        serde_json::json!({
            "config": self.config.save_state(),
            "regs": self.regs,
            "eeprom": self.eeprom,
            "phy": self.phy,
            "tx": self.tx,
            "io_addr": self.io_addr,
            "cable": self.cable,
            "line": self.line,
        })
    }

    fn restore_state(&mut self, state: &snapshot::State) -> Result<(), String> {
        let config = restored(&self.config, state, "config")?;
        let regs: Vec<u32> = field(state, "regs")?;
        if regs.len() != REG_COUNT {
            return Err(format!("field 'regs': {} registers, not {REG_COUNT}", regs.len()));
        }
        let (eeprom, phy, tx) = (field(state, "eeprom")?, field(state, "phy")?, field(state, "tx")?);
        let (io_addr, cable, line) = (field(state, "io_addr")?, field(state, "cable")?, field(state, "line")?);
        (self.config, self.regs, self.eeprom, self.phy, self.tx) = (config, regs, eeprom, phy, tx);
        (self.io_addr, self.cable, self.line) = (io_addr, cable, line);
        self.intx.set_level(self.line);
        Ok(())
    }
}

/// The NIC on the PCI bus.
struct E1000Function {
    nic: Arc<E1000>,
}

impl E1000Function {
    fn access(&self, f: impl FnOnce(&mut State, &mut Deferred) -> bool) -> bool {
        let mut d = Deferred::default();
        let claimed = f(&mut lock(&self.nic.state), &mut d);
        self.nic.finish(d);
        claimed
    }
}

impl PciDevice for E1000Function {
    fn config_read(&mut self, reg: u16) -> u32 {
        lock(&self.nic.state).config.config_read(reg)
    }

    fn config_write(&mut self, reg: u16, value: u32, mask: u32) {
        self.access(|s, d| {
            s.config_write(reg, value, mask, d);
            true
        });
    }

    fn io_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        let mut s = lock(&self.nic.state);
        let Some(off) = s.config.bar_offset(1, u64::from(port), u64::from(IO_SIZE)) else { return false };
        s.window_read(Window::Io, IO_SIZE, off, data);
        true
    }

    fn io_write(&mut self, port: u16, data: &[u8]) -> bool {
        self.access(|s, d| {
            let Some(off) = s.config.bar_offset(1, u64::from(port), u64::from(IO_SIZE)) else { return false };
            s.window_write(Window::Io, IO_SIZE, off, data, d);
            true
        })
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let mut s = lock(&self.nic.state);
        if let Some(off) = s.config.bar_offset(0, addr, u64::from(MMIO_SIZE)) {
            s.window_read(Window::Regs, MMIO_SIZE, off, data);
            return true;
        }
        let Some(off) = s.rom_offset(addr) else { return false };
        let rom = s.rom.as_deref().unwrap_or_default();
        for (i, b) in data.iter_mut().enumerate() {
            *b = rom.get(off + i).copied().unwrap_or(0xff);
        }
        true
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        self.access(|s, d| {
            if let Some(off) = s.config.bar_offset(0, addr, u64::from(MMIO_SIZE)) {
                s.window_write(Window::Regs, MMIO_SIZE, off, data, d);
                return true;
            }
            // The ROM is read-only: writes to it are claimed and dropped.
            s.rom_offset(addr).is_some()
        })
    }
}

/// The NIC as the backend sees it. Weak, so the backend holding it does not keep
/// the NIC (which holds the backend) alive.
struct Sink(Weak<E1000>);

impl FrameSink for Sink {
    fn receive(&self, frame: &[u8]) -> bool {
        // A NIC that is gone takes (drops) everything.
        self.0.upgrade().is_none_or(|nic| nic.receive_frame(frame))
    }
}
