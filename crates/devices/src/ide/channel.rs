//! One IDE channel: two devices behind one set of ports, the device control register
//! (nIEN, SRST, HOB), the interrupt line, the data port and command dispatch.
//!
//! The interrupt line is INTRQ, a level: a command raises it where the ATA protocol
//! says (each PIO-in DRQ block, each PIO-out block after the first, completion),
//! reading the status register or writing a command lowers it. nIEN keeps new
//! interrupts off the line (QEMU's rule: one already raised stays).

use std::sync::Arc;

use quern_core::snapshot::{field, Snapshot, State};
use quern_core::{GuestMemory, IrqLine};

use super::bmdma::{BusMaster, BM_ACTIVE, BM_INT};
use super::drive::*;
use super::DriveKind;
use crate::snapshot::{parts_state, restored_parts};

// Device control register.
const NIEN: u8 = 0x02;
const SRST: u8 = 0x04;
const HOB: u8 = 0x80;

/// A DMA command waiting for the bus master (or the bus master for it).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum PendingDma {
    Ata {
        unit: usize,
        write: bool,
        lba48: bool,
    },
    /// The data is the drive's ATAPI transfer.
    Atapi {
        unit: usize,
    },
}

impl PendingDma {
    pub fn unit(&self) -> usize {
        match *self {
            PendingDma::Ata { unit, .. } | PendingDma::Atapi { unit } => unit,
        }
    }
}

#[derive(Clone)]
pub(super) struct Channel {
    pub drives: [Drive; 2],
    /// The selected device (the device register's DEV bit).
    pub unit: usize,
    /// Device control as last written.
    pub ctrl: u8,
    irq: Arc<dyn IrqLine>,
    irq_level: bool,
    pub bm: BusMaster,
    pub dma: Option<PendingDma>,
    pub mem: Arc<GuestMemory>,
    /// The function's bus-master enable (PCI command bit 2).
    pub bus_master: bool,
}

/// Both devices, the selection, device control, the line's level, the bus-master
/// registers and a DMA command waiting for them. The bus-master enable follows the
/// PCI command register; [`super::PiixIde`] sets it and drives the line.
impl Snapshot for Channel {
    fn save_state(&self) -> State {
        serde_json::json!({
            "drives": parts_state(&self.drives),
            "unit": self.unit,
            "ctrl": self.ctrl,
            "irq_level": self.irq_level,
            "bm": self.bm,
            "dma": self.dma,
        })
    }

    fn restore_state(&mut self, state: &State) -> Result<(), String> {
        let drives = restored_parts(&self.drives, state, "drives")?;
        let (unit, ctrl, irq_level) = (field(state, "unit")?, field(state, "ctrl")?, field(state, "irq_level")?);
        let (bm, dma): (_, Option<PendingDma>) = (field(state, "bm")?, field(state, "dma")?);
        if unit > 1 || dma.is_some_and(|d| d.unit() > 1) {
            return Err("a unit number past 1".into());
        }
        (self.drives, self.unit, self.ctrl, self.irq_level, self.bm, self.dma) =
            (drives, unit, ctrl, irq_level, bm, dma);
        Ok(())
    }
}

/// Which devices may run `cmd`, and whether success sets DSC (QEMU's command table).
fn permitted(cmd: u8, kind: DriveKind) -> Option<bool> {
    let (disk, cd, dsc) = match cmd {
        0x08 => (false, true, false),                                    // DEVICE RESET
        0x10 | 0x70 => (true, false, true),                              // RECALIBRATE, SEEK
        0x20 => (true, true, false), // READ SECTORS (a CD-ROM aborts it with its signature)
        0x21 | 0x24 | 0x29 | 0xc4 => (true, false, false), // READ SECTORS (EXT), MULTIPLE
        0x30 | 0x31 | 0x34 | 0x39 | 0x3c | 0xc5 => (true, false, false), // WRITE ...
        0x25 | 0x35 | 0xc8 | 0xc9 | 0xca | 0xcb => (true, false, false), // READ/WRITE DMA
        0x27 | 0xf8 => (true, false, true), // READ NATIVE MAX ADDRESS (EXT)
        0x40..=0x42 => (true, false, true), // READ VERIFY SECTORS (EXT)
        0x90 => (true, true, false), // EXECUTE DEVICE DIAGNOSTIC
        0x91 | 0xc6 => (true, false, true), // INITIALIZE DEVICE PARAMETERS, SET MULTIPLE
        // STANDBY/IDLE (IMMEDIATE), SLEEP, old and new opcodes.
        0x94..=0x97 | 0x99 | 0xe0..=0xe3 | 0xe6 => (true, false, false),
        0x98 | 0xe5 => (true, false, true),  // CHECK POWER MODE
        0xa0 | 0xa1 => (false, true, false), // PACKET, IDENTIFY PACKET DEVICE
        0xe7 | 0xec => (true, true, false),  // FLUSH CACHE, IDENTIFY DEVICE
        0xea => (true, false, false),        // FLUSH CACHE EXT
        0xef => (true, true, true),          // SET FEATURES
        _ => return None,
    };
    let ok = match kind {
        DriveKind::Disk => disk,
        DriveKind::Cdrom => cd,
    };
    ok.then_some(dsc)
}

impl Channel {
    pub fn new(mem: Arc<GuestMemory>, irq: Arc<dyn IrqLine>) -> Self {
        Channel {
            drives: [Drive::absent(), Drive::absent()],
            unit: 0,
            ctrl: 0,
            irq,
            irq_level: false,
            bm: BusMaster::default(),
            dma: None,
            mem,
            bus_master: false,
        }
    }

    pub fn power_on_reset(&mut self) {
        for d in &mut self.drives {
            d.power_on_reset();
        }
        self.unit = 0;
        self.ctrl = 0;
        self.bm = BusMaster::default();
        self.dma = None;
        self.lower_irq();
    }

    pub fn sel(&mut self) -> &mut Drive {
        &mut self.drives[self.unit]
    }

    fn any_present(&self) -> bool {
        self.drives.iter().any(|d| d.present)
    }

    pub fn raise_irq(&mut self) {
        if self.ctrl & NIEN == 0 {
            self.bm.status |= BM_INT;
            if !self.irq_level {
                self.irq_level = true;
                self.irq.set_level(true);
            }
        }
    }

    /// Drives the line at the level the channel holds (after a restore).
    pub fn sync_irq(&self) {
        self.irq.set_level(self.irq_level);
    }

    fn lower_irq(&mut self) {
        if self.irq_level {
            self.irq_level = false;
            self.irq.set_level(false);
        }
    }

    /// The selected device's status; 0 when it is absent (as QEMU's empty slots read).
    fn status(&self) -> u8 {
        let d = &self.drives[self.unit];
        if d.present {
            d.status
        } else {
            0
        }
    }

    pub fn alt_status(&self) -> u8 {
        self.status()
    }

    /// A command block register (offsets 1-7; a byte read of the data port gives
    /// 0xff). With no device on the channel everything reads 0, as on QEMU.
    pub fn read_reg(&mut self, reg: u8) -> u8 {
        let hob = self.ctrl & HOB != 0;
        let any = self.any_present();
        let d = &self.drives[self.unit];
        let pick = |low: u8, high: u8| {
            if !any {
                0
            } else if hob {
                high
            } else {
                low
            }
        };
        match reg {
            0 => 0xff,
            1 if !d.present => 0,
            1 => pick(d.error, d.hob_feature),
            2 => pick(d.nsector, d.hob_nsector),
            3 => pick(d.sector, d.hob_sector),
            4 => pick(d.lcyl, d.hob_lcyl),
            5 => pick(d.hcyl, d.hob_hcyl),
            6 => pick(d.select, d.select),
            _ => {
                let v = self.status();
                self.lower_irq();
                v
            }
        }
    }

    pub fn write_reg(&mut self, reg: u8, v: u8) {
        // Registers are the selected device's while it is busy with a command.
        if reg != 7 && self.status() & (BSY | DRQ) != 0 {
            return;
        }
        // Any write to the command block ends a HOB read-back.
        self.ctrl &= !HOB;
        for d in &mut self.drives {
            match reg {
                1 => (d.hob_feature, d.feature) = (d.feature, v),
                2 => (d.hob_nsector, d.nsector) = (d.nsector, v),
                3 => (d.hob_sector, d.sector) = (d.sector, v),
                4 => (d.hob_lcyl, d.lcyl) = (d.lcyl, v),
                5 => (d.hob_hcyl, d.hcyl) = (d.hcyl, v),
                6 => d.select = v | DEV_ALWAYS,
                _ => {}
            }
        }
        match reg {
            6 => self.unit = usize::from(v & DEV_SLAVE != 0),
            7 => {
                self.lower_irq();
                self.command(v);
            }
            _ => {}
        }
    }

    /// Device control. SRST resets both devices: they are busy while it is held and
    /// come out of reset, with their signatures, when it is released.
    pub fn write_control(&mut self, v: u8) {
        let was = self.ctrl & SRST != 0;
        self.ctrl = v;
        let now = v & SRST != 0;
        if !was && now {
            self.dma = None;
            for d in self.drives.iter_mut().filter(|d| d.present) {
                d.stop_pio();
                d.ata = None;
                d.atapi.xfer = None;
                d.status = BSY;
            }
        } else if was && !now {
            self.unit = 0;
            for u in 0..2 {
                if !self.drives[u].present {
                    continue;
                }
                let d = &mut self.drives[u];
                d.soft_reset();
                // Then the diagnostic: "device 0 passed, device 1 passed or absent".
                d.error = 0x01;
                if d.kind == DriveKind::Cdrom {
                    // Packet devices leave DRDY clear (ATAPI's rule, QEMU's too).
                    d.status = 0;
                } else {
                    self.raise_irq();
                }
            }
        }
    }

    /// A 16- or 32-bit access to the data port.
    pub fn data_read(&mut self, out: &mut [u8]) {
        let d = &mut self.drives[self.unit];
        if d.status & DRQ == 0 || !matches!(d.pio, Pio::In(_)) {
            out.fill(0);
            return;
        }
        let n = out.len().min(d.end - d.pos);
        out[..n].copy_from_slice(&d.buf[d.pos..d.pos + n]);
        out[n..].fill(0);
        d.pos += n;
        if d.pos >= d.end {
            self.transfer_done();
        }
    }

    pub fn data_write(&mut self, data: &[u8]) {
        let d = &mut self.drives[self.unit];
        if d.status & DRQ == 0 || !matches!(d.pio, Pio::Out(_)) {
            return;
        }
        let n = data.len().min(d.end - d.pos);
        let pos = d.pos;
        d.buf[pos..pos + n].copy_from_slice(&data[..n]);
        d.pos += n;
        if d.pos >= d.end {
            self.transfer_done();
        }
    }

    /// The DRQ block is done: on to what the command does next.
    fn transfer_done(&mut self) {
        let d = self.sel();
        let pio = d.pio;
        d.stop_pio();
        match pio {
            Pio::Idle | Pio::In(InDone::Stop) => {}
            Pio::In(InDone::AtaRead) => self.ata_read_block(),
            Pio::In(InDone::AtapiReply) => self.atapi_next_block(),
            Pio::Out(OutDone::AtaWrite) => self.ata_write_block(),
            Pio::Out(OutDone::Packet) => self.atapi_packet(),
        }
    }

    fn command(&mut self, cmd: u8) {
        let d = self.sel();
        // Nothing answers for an absent device.
        if !d.present {
            return;
        }
        // While busy only DEVICE RESET gets through, and only to a packet device.
        if d.status & (BSY | DRQ) != 0 && !(cmd == 0x08 && d.kind == DriveKind::Cdrom) {
            return;
        }
        let Some(dsc) = permitted(cmd, d.kind) else {
            quern_core::log_limited!(log::Level::Debug, "ide: unsupported command {cmd:#04x} aborted");
            d.fail(ABRT);
            self.raise_irq();
            return;
        };
        d.status = DRDY | BSY;
        d.error = 0;
        if self.execute(cmd) {
            let d = self.sel();
            d.status &= !BSY;
            if dsc && d.error == 0 {
                d.status |= DSC;
            }
            self.raise_irq();
        }
    }

    /// Runs a permitted command. True: it is over, and the caller completes it
    /// (interrupt, DSC); false: it set status and interrupt itself, or goes on.
    fn execute(&mut self, cmd: u8) -> bool {
        match cmd {
            0x08 => self.cmd_device_reset(),
            0x10 | 0x70 | 0x94..=0x97 | 0x99 | 0xe0..=0xe3 | 0xe6 => true,
            0x20 | 0x21 | 0x24 => self.cmd_read_pio(cmd == 0x24, false),
            0x29 | 0xc4 => self.cmd_read_pio(cmd == 0x29, true),
            0x30 | 0x31 | 0x34 | 0x3c => self.cmd_write_pio(cmd == 0x34, false),
            0x39 | 0xc5 => self.cmd_write_pio(cmd == 0x39, true),
            0x25 | 0xc8 | 0xc9 => self.cmd_dma(false, cmd == 0x25),
            0x35 | 0xca | 0xcb => self.cmd_dma(true, cmd == 0x35),
            0x27 | 0xf8 => self.cmd_read_native_max(cmd == 0x27),
            0x40..=0x42 => self.cmd_verify(cmd == 0x42),
            0x90 => self.cmd_diagnostic(),
            0x91 => self.cmd_init_params(),
            0x98 | 0xe5 => {
                // Active or idle.
                self.sel().nsector = 0xff;
                true
            }
            0xa0 => self.cmd_packet(),
            0xa1 => self.cmd_identify_packet(),
            0xc6 => self.cmd_set_multiple(),
            0xe7 | 0xea => self.cmd_flush(),
            0xec => self.cmd_identify(),
            0xef => self.cmd_set_features(),
            _ => {
                self.sel().fail(ABRT);
                true
            }
        }
    }

    /// EXECUTE DEVICE DIAGNOSTIC, run by the selected device.
    fn cmd_diagnostic(&mut self) -> bool {
        let d = self.sel();
        d.set_signature();
        d.error = 0x01;
        if d.kind == DriveKind::Cdrom {
            d.status = 0;
        } else {
            d.status = DRDY | DSC;
            self.raise_irq();
        }
        false
    }

    /// DEVICE RESET (packet devices): ends whatever runs, no interrupt.
    fn cmd_device_reset(&mut self) -> bool {
        let unit = self.unit;
        if self.dma.is_some_and(|p| p.unit() == unit) {
            self.dma = None;
        }
        let d = self.sel();
        d.soft_reset();
        d.status = 0;
        false
    }

    /// A DMA command waits for the bus master; if it is already running, the
    /// transfer happens now.
    pub fn start_dma(&mut self, job: PendingDma) {
        self.dma = Some(job);
        self.try_dma();
    }

    pub fn try_dma(&mut self) {
        if self.bm.status & BM_ACTIVE != 0 {
            if let Some(job) = self.dma.take() {
                self.run_dma(job);
            }
        }
    }

    /// A write to this channel's bus-master registers.
    pub fn bm_write(&mut self, off: u64, v: u8) {
        if self.bm.write(off, v) == Some(true) {
            self.try_dma();
        }
    }
}
