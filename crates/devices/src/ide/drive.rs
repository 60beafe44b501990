//! One device on a channel: its copy of the task file, how it addresses sectors
//! (LBA28, LBA48, CHS), its identity and the state of the data port.

use std::sync::Arc;

use quern_block::BlockBackend;
use quern_core::snapshot::{field, Snapshot, State};
use serde::{Deserialize, Serialize};

use super::atapi::AtapiState;
use super::DriveKind;

// Status register.
pub(super) const BSY: u8 = 0x80;
pub(super) const DRDY: u8 = 0x40;
pub(super) const DSC: u8 = 0x10;
pub(super) const DRQ: u8 = 0x08;
pub(super) const ERR: u8 = 0x01;
// Error register.
pub(super) const UNC: u8 = 0x40;
pub(super) const MC: u8 = 0x20;
pub(super) const IDNF: u8 = 0x10;
pub(super) const ABRT: u8 = 0x04;
// Device register.
pub(super) const DEV_LBA: u8 = 0x40;
pub(super) const DEV_SLAVE: u8 = 0x10;
/// Bits 7 and 5, obsolete, read back set as on QEMU.
pub(super) const DEV_ALWAYS: u8 = 0xa0;

pub(super) const SECTOR: usize = 512;
/// READ/WRITE MULTIPLE's largest block (IDENTIFY word 47) and the power-on setting,
/// as QEMU's.
pub(super) const MAX_MULT: u8 = 16;

/// A CHS geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chs {
    pub cylinders: u32,
    pub heads: u32,
    pub sectors: u32,
}

/// The geometry the MBR's partitions end on: the first partition with an end head
/// and sector, if the disk holds a whole number (1-16383) of its cylinders.
fn mbr_geometry(backend: &dyn BlockBackend, total: u64) -> Option<Chs> {
    let mut mbr = [0u8; SECTOR];
    if backend.size() < SECTOR as u64 || backend.read_at(0, &mut mbr).is_err() || mbr[510..] != [0x55, 0xaa] {
        return None;
    }
    mbr[0x1be..0x1fe].chunks_exact(16).find_map(|p| {
        let nr_sects = u32::from_le_bytes([p[12], p[13], p[14], p[15]]);
        let (heads, sectors) = (u32::from(p[5]) + 1, u32::from(p[6] & 63));
        if nr_sects == 0 || heads == 1 || sectors == 0 {
            return None;
        }
        let cylinders = total / u64::from(heads * sectors);
        (1..=16383).contains(&cylinders).then_some(Chs { cylinders: cylinders as u32, heads, sectors })
    })
}

/// The standard geometry: 16 heads, 63 sectors, as many cylinders as fit (2-16383).
fn standard_geometry(total: u64) -> Chs {
    Chs { cylinders: (total / (16 * 63)).clamp(2, 16383) as u32, heads: 16, sectors: 63 }
}

/// The geometry QEMU gives a disk (hd_geometry_guess): the one its MBR's partitions
/// end on when that has at most 16 heads, otherwise the standard one (more heads
/// than ATA's 16 mean a BIOS translation made the partition table).
pub fn guess_geometry(backend: &dyn BlockBackend) -> Chs {
    let total = backend.size() / SECTOR as u64;
    match mbr_geometry(backend, total) {
        Some(chs) if chs.heads <= 16 => chs,
        _ => standard_geometry(total),
    }
}

/// The BIOS's CHS translation for a disk as QEMU picks it (its CMOS byte 0x39 code,
/// which SeaBIOS reads): 0 none, 1 LBA, 2 large. None when the partition table's
/// geometry is the disk's; large or LBA when it was made through a translation; with
/// no table, none while the geometry fits the BIOS's 1024 cylinders.
pub fn bios_translation(backend: &dyn BlockBackend) -> u8 {
    let total = backend.size() / SECTOR as u64;
    let chs = guess_geometry(backend);
    match mbr_geometry(backend, total) {
        Some(m) if m.heads <= 16 => 0,
        Some(_) if chs.cylinders * chs.heads <= 131072 => 2,
        Some(_) => 1,
        None if chs.cylinders <= 1024 => 0,
        None => 1,
    }
}

/// What the data port does while DRQ is set, and what follows the last byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Pio {
    /// No transfer: reads return 0, writes are dropped.
    Idle,
    /// Device to host.
    In(InDone),
    /// Host to device.
    Out(OutDone),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum InDone {
    /// The command is over (IDENTIFY).
    Stop,
    /// The next block of READ SECTORS/MULTIPLE.
    AtaRead,
    /// The next DRQ block of a packet command's data.
    AtapiReply,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum OutDone {
    /// A block of WRITE SECTORS/MULTIPLE to write.
    AtaWrite,
    /// The 12-byte command packet.
    Packet,
}

/// An ATA PIO read or write in progress.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct AtaXfer {
    /// Sectors still to move.
    pub remaining: u32,
    /// Sectors per DRQ block: 1, or the multiple count.
    pub block: u32,
    pub lba48: bool,
}

#[derive(Clone)]
pub(super) struct Drive {
    /// Whether a device is attached here; an absent one only keeps the task file.
    pub present: bool,
    pub kind: DriveKind,
    pub backend: Option<Arc<dyn BlockBackend>>,
    pub serial: String,
    /// The default geometry (IDENTIFY words 1, 3, 6) and the current translation,
    /// which INITIALIZE DEVICE PARAMETERS changes and CHS addresses go through.
    pub geometry: Chs,
    pub current: Chs,

    // The task file: both devices latch every write; each keeps what its commands
    // leave there. `hob_*` are the previous values (LBA48's high bytes).
    pub feature: u8,
    pub hob_feature: u8,
    pub nsector: u8,
    pub hob_nsector: u8,
    pub sector: u8,
    pub hob_sector: u8,
    pub lcyl: u8,
    pub hob_lcyl: u8,
    pub hcyl: u8,
    pub hob_hcyl: u8,
    pub select: u8,
    pub status: u8,
    pub error: u8,

    /// READ/WRITE MULTIPLE's block (0: those commands abort).
    pub mult: u8,
    /// What IDENTIFY reports and SET FEATURES 02h/82h switch; while off, every
    /// write is flushed before it completes.
    pub write_cache: bool,
    /// The last SET FEATURES 03h value (transfer mode), `None` for the default.
    pub xfer_mode: Option<u8>,

    /// The data port: `buf[pos..end]` is what is left of the DRQ block.
    pub buf: Vec<u8>,
    pub pos: usize,
    pub end: usize,
    pub pio: Pio,
    pub ata: Option<AtaXfer>,
    pub atapi: AtapiState,
}

impl Drive {
    /// No device.
    pub fn absent() -> Self {
        let chs = Chs { cylinders: 0, heads: 0, sectors: 0 };
        Drive {
            present: false,
            kind: DriveKind::Disk,
            backend: None,
            serial: String::new(),
            geometry: chs,
            current: chs,
            feature: 0,
            hob_feature: 0,
            nsector: 0,
            hob_nsector: 0,
            sector: 0,
            hob_sector: 0,
            lcyl: 0,
            hob_lcyl: 0,
            hcyl: 0,
            hob_hcyl: 0,
            select: DEV_ALWAYS,
            status: 0,
            error: 0,
            mult: MAX_MULT,
            write_cache: true,
            xfer_mode: None,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            pio: Pio::Idle,
            ata: None,
            atapi: AtapiState::default(),
        }
    }

    pub fn new(kind: DriveKind, backend: Option<Arc<dyn BlockBackend>>, serial: String) -> Self {
        let geometry = match (&backend, kind) {
            (Some(b), DriveKind::Disk) => guess_geometry(&**b),
            _ => Chs { cylinders: 0, heads: 0, sectors: 0 },
        };
        Drive { present: true, kind, backend, serial, geometry, current: geometry, ..Drive::absent() }
    }

    /// 512-byte sectors of the medium.
    pub fn sectors(&self) -> u64 {
        self.backend.as_ref().map_or(0, |b| b.size() / SECTOR as u64)
    }

    /// Whether `[lba, lba + n)` lies on the disk.
    pub fn in_range(&self, lba: u64, n: u64) -> bool {
        lba.checked_add(n).is_some_and(|end| end <= self.sectors())
    }

    pub fn read_only(&self) -> bool {
        self.backend.as_ref().is_some_and(|b| b.read_only())
    }

    /// Power-on: settings too return to their defaults.
    pub fn power_on_reset(&mut self) {
        // As QEMU: the cache mode decides (writethrough and directsync show none).
        self.write_cache = self.backend.as_ref().is_none_or(|b| b.write_cache());
        self.xfer_mode = None;
        self.current = self.geometry;
        self.soft_reset();
    }

    /// What SRST and DEVICE RESET do to a device (QEMU's ide_reset): registers,
    /// transfers and ATAPI state cleared, the signature loaded, DRDY|DSC.
    pub fn soft_reset(&mut self) {
        self.mult = MAX_MULT;
        self.feature = 0;
        self.hob_feature = 0;
        self.error = 0;
        self.nsector = 0;
        self.hob_nsector = 0;
        self.sector = 0;
        self.hob_sector = 0;
        self.lcyl = 0;
        self.hob_lcyl = 0;
        self.hcyl = 0;
        self.hob_hcyl = 0;
        self.select = DEV_ALWAYS;
        self.status = DRDY | DSC;
        self.stop_pio();
        self.ata = None;
        self.atapi.reset();
        self.set_signature();
    }

    /// The signature that tells hosts what answers here: sector count and number 1,
    /// cylinder 0 for ATA, 0xeb14 for ATAPI (0xffff with nothing attached).
    pub fn set_signature(&mut self) {
        self.select &= !0x0f;
        self.nsector = 1;
        self.sector = 1;
        (self.lcyl, self.hcyl) = match (self.present, self.kind) {
            (false, _) => (0xff, 0xff),
            (true, DriveKind::Disk) => (0, 0),
            (true, DriveKind::Cdrom) => (0x14, 0xeb),
        };
    }

    /// The command's sector count: 0 means 256 (LBA28) or 65536 (LBA48).
    pub fn count(&self, lba48: bool) -> u32 {
        if lba48 {
            match u32::from(self.hob_nsector) << 8 | u32::from(self.nsector) {
                0 => 65536,
                n => n,
            }
        } else {
            match self.nsector {
                0 => 256,
                n => u32::from(n),
            }
        }
    }

    /// The sector the task file addresses; `None` for a CHS address outside the
    /// current translation (sector 0, a head or sector past its limits).
    pub fn lba(&self, lba48: bool) -> Option<u64> {
        let b = |v: u8, shift: u32| u64::from(v) << shift;
        if self.select & DEV_LBA != 0 {
            Some(if lba48 {
                b(self.hob_hcyl, 40)
                    | b(self.hob_lcyl, 32)
                    | b(self.hob_sector, 24)
                    | b(self.hcyl, 16)
                    | b(self.lcyl, 8)
                    | b(self.sector, 0)
            } else {
                b(self.select & 0x0f, 24) | b(self.hcyl, 16) | b(self.lcyl, 8) | b(self.sector, 0)
            })
        } else {
            let c = self.current;
            let (head, sector) = (u32::from(self.select & 0x0f), u32::from(self.sector));
            if sector == 0 || sector > c.sectors || head >= c.heads {
                return None;
            }
            let cyl = u64::from(self.hcyl) << 8 | u64::from(self.lcyl);
            Some((cyl * u64::from(c.heads) + u64::from(head)) * u64::from(c.sectors) + u64::from(sector) - 1)
        }
    }

    /// Leaves `lba` in the task file, in the addressing the command used.
    pub fn set_lba(&mut self, lba: u64, lba48: bool) {
        if self.select & DEV_LBA != 0 {
            if lba48 {
                self.hob_hcyl = (lba >> 40) as u8;
                self.hob_lcyl = (lba >> 32) as u8;
                self.hob_sector = (lba >> 24) as u8;
            } else {
                self.select = (self.select & 0xf0) | ((lba >> 24) & 0x0f) as u8;
            }
            self.hcyl = (lba >> 16) as u8;
            self.lcyl = (lba >> 8) as u8;
            self.sector = lba as u8;
        } else {
            let c = self.current;
            let track = u64::from(c.heads.max(1) * c.sectors.max(1));
            let (cyl, r) = (lba / track, lba % track);
            let secs = u64::from(c.sectors.max(1));
            self.hcyl = (cyl >> 8) as u8;
            self.lcyl = cyl as u8;
            self.select = (self.select & 0xf0) | ((r / secs) & 0x0f) as u8;
            self.sector = (r % secs + 1) as u8;
        }
    }

    /// Starts a device-to-host DRQ block of `len` bytes already in `buf`.
    pub fn start_in(&mut self, len: usize, done: InDone) {
        self.pos = 0;
        self.end = len;
        self.pio = Pio::In(done);
        self.status |= DRQ;
    }

    /// Starts a host-to-device DRQ block of `len` bytes into `buf`.
    pub fn start_out(&mut self, len: usize, done: OutDone) {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        self.pos = 0;
        self.end = len;
        self.pio = Pio::Out(done);
        self.status |= DRQ;
    }

    pub fn stop_pio(&mut self) {
        self.pos = 0;
        self.end = 0;
        self.pio = Pio::Idle;
        self.status &= !DRQ;
    }

    /// Ends the command with `error` (ABRT, IDNF, UNC) in the error register.
    pub fn fail(&mut self, error: u8) {
        self.stop_pio();
        self.ata = None;
        self.status = DRDY | ERR;
        self.error = error;
    }

    /// A buffer of at least `len` bytes at the start of `buf`.
    pub fn buffer(&mut self, len: usize) -> &mut [u8] {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        &mut self.buf[..len]
    }
}

/// The task file, the settings, the DRQ block in progress (only its `buf[..end]`) and
/// the ATAPI state. What the drive is (kind, medium, serial, default geometry) comes
/// from construction.
impl Snapshot for Drive {
    fn save_state(&self) -> State {
        serde_json::json!({
            "taskfile": [
                self.feature, self.hob_feature, self.nsector, self.hob_nsector, self.sector, self.hob_sector,
                self.lcyl, self.hob_lcyl, self.hcyl, self.hob_hcyl, self.select, self.status, self.error,
            ],
            "current": self.current,
            "mult": self.mult,
            "write_cache": self.write_cache,
            "xfer_mode": self.xfer_mode,
            "block": &self.buf[..self.end],
            "pos": self.pos,
            "pio": self.pio,
            "ata": self.ata,
            "atapi": self.atapi,
        })
    }

    fn restore_state(&mut self, state: &State) -> Result<(), String> {
        let taskfile: [u8; 13] = field(state, "taskfile")?;
        let (current, mult) = (field(state, "current")?, field(state, "mult")?);
        let (write_cache, xfer_mode) = (field(state, "write_cache")?, field(state, "xfer_mode")?);
        let (block, pos): (Vec<u8>, usize) = (field(state, "block")?, field(state, "pos")?);
        let (pio, ata, atapi): (_, _, AtapiState) =
            (field(state, "pio")?, field(state, "ata")?, field(state, "atapi")?);
        if pos > block.len() || !atapi.consistent() {
            return Err("a transfer is past the end of its data".into());
        }
        [
            self.feature,
            self.hob_feature,
            self.nsector,
            self.hob_nsector,
            self.sector,
            self.hob_sector,
            self.lcyl,
            self.hob_lcyl,
            self.hcyl,
            self.hob_hcyl,
            self.select,
            self.status,
            self.error,
        ] = taskfile;
        (self.current, self.mult, self.write_cache, self.xfer_mode) = (current, mult, write_cache, xfer_mode);
        (self.end, self.buf, self.pos) = (block.len(), block, pos);
        (self.pio, self.ata, self.atapi) = (pio, ata, atapi);
        Ok(())
    }
}
