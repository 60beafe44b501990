//! Bus-master IDE (PIIX3's BM registers in BAR4) and its DMA through guest memory.
//!
//! Per channel: command (+0: start bit 0, direction bit 3), status (+2: active bit 0,
//! error bit 1 and interrupt bit 2, write 1 to clear; drive 0/1 DMA-capable bits 5-6
//! kept for software) and the PRD table address (+4, dword aligned). A PRD is two
//! dwords: a physical address (bit 0 ignored) and a byte count in bits 15:0 (bit 0
//! ignored, 0 meaning 64 KiB) with end-of-table in bit 31. The table is read no
//! further than 4 KiB (512 entries), QEMU's guard against tables without EOT.
//!
//! A transfer runs once the drive has its DMA command and the start bit is set
//! (either order). The whole command moves at once, in sector-aligned chunks through
//! the medium. Outcomes, as on PIIX (and QEMU):
//! - done: interrupt (status bit 2 with it), active cleared, unless the PRDs
//!   described more than the command moved, which leaves it set;
//! - PRDs shorter than the command: nothing moves, active cleared, no interrupt (the
//!   host sees the engine stop without one), the drive ends its command;
//! - a PRD table or a buffer outside RAM, or bus mastering disabled in the PCI command
//!   register (a master abort): error bit, active cleared, interrupt, and the command
//!   ends with ABRT. Writes to ROM are dropped, as the bus drops them.
//!
//! The direction bit is not checked against the command, as QEMU does not.

use quern_block::BlockError;
use quern_core::{GuestMemory, MemoryError};

use super::channel::{Channel, PendingDma};
use super::drive::*;

pub(super) const BM_START: u8 = 0x01;
pub(super) const BM_TO_MEMORY: u8 = 0x08;
pub(super) const BM_ACTIVE: u8 = 0x01;
pub(super) const BM_ERROR: u8 = 0x02;
pub(super) const BM_INT: u8 = 0x04;
const BM_CAPABLE: u8 = 0x60;
const PRD_TABLE_MAX: u64 = 4096;
/// Sectors per chunk between the medium and guest memory.
const CHUNK_SECTORS: usize = 128;

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct BusMaster {
    pub cmd: u8,
    pub status: u8,
    pub prd_table: u32,
}

impl BusMaster {
    pub fn read(&self, off: u64) -> u8 {
        match off {
            0 => self.cmd,
            2 => self.status,
            4..=7 => (self.prd_table >> (8 * (off - 4))) as u8,
            _ => 0,
        }
    }

    /// A byte write; returns `Some(start)` when the start bit changed.
    pub fn write(&mut self, off: u64, v: u8) -> Option<bool> {
        match off {
            0 => {
                let changed = (self.cmd ^ v) & BM_START != 0;
                self.cmd = v & (BM_START | BM_TO_MEMORY);
                if !changed {
                    return None;
                }
                // Starting sets active; stopping clears it (and abandons nothing: a
                // transfer never outlives the access that runs it).
                if v & BM_START != 0 {
                    self.status |= BM_ACTIVE;
                } else {
                    self.status &= !BM_ACTIVE;
                }
                Some(v & BM_START != 0)
            }
            2 => {
                self.status = (v & BM_CAPABLE) | (self.status & BM_ACTIVE) | (self.status & !v & (BM_ERROR | BM_INT));
                None
            }
            4..=7 => {
                let shift = 8 * (off - 4);
                self.prd_table = (self.prd_table & !(0xff << shift)) | u32::from(v) << shift;
                self.prd_table &= !3;
                None
            }
            _ => None,
        }
    }
}

/// The memory a PRD table describes, consumed front to back.
pub(super) struct Prds {
    entries: Vec<(u64, usize)>,
    index: usize,
    offset: usize,
}

impl Prds {
    /// Reads the table at `table`; returns it and the bytes it describes.
    pub fn load(mem: &GuestMemory, table: u32) -> Result<(Self, u64), MemoryError> {
        let (mut entries, mut total) = (Vec::new(), 0u64);
        let mut at = u64::from(table);
        while at - u64::from(table) < PRD_TABLE_MAX {
            let prd = mem.read_u64(at)?;
            at += 8;
            let addr = prd & 0xffff_fffe;
            let len = match (prd >> 32) & 0xfffe {
                0 => 0x10000,
                n => n as usize,
            };
            entries.push((addr, len));
            total += len as u64;
            if prd >> 63 != 0 {
                break;
            }
        }
        Ok((Prds { entries, index: 0, offset: 0 }, total))
    }

    /// Runs `f(guest address, chunk range)` over the next `len` bytes.
    fn walk(
        &mut self,
        len: usize,
        mut f: impl FnMut(u64, std::ops::Range<usize>) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        let mut done = 0;
        while done < len {
            let Some(&(addr, size)) = self.entries.get(self.index) else {
                return Err(MemoryError::Unmapped { addr: 0, len });
            };
            let n = (size - self.offset).min(len - done);
            f(addr + self.offset as u64, done..done + n)?;
            done += n;
            self.offset += n;
            if self.offset == size {
                self.index += 1;
                self.offset = 0;
            }
        }
        Ok(())
    }

    /// Device to memory.
    pub fn scatter(&mut self, mem: &GuestMemory, data: &[u8]) -> Result<(), MemoryError> {
        self.walk(data.len(), |addr, r| mem.dma_write(addr, &data[r]))
    }

    /// Memory to device.
    pub fn gather(&mut self, mem: &GuestMemory, out: &mut [u8]) -> Result<(), MemoryError> {
        self.walk(out.len(), |addr, r| mem.read(addr, &mut out[r]))
    }
}

/// Why a transfer stopped.
enum Failure {
    /// Guest memory (or bus mastering) failed: a master abort.
    Bus,
    /// The medium failed, reading or (`true`) writing.
    Medium(BlockError, bool),
}

impl From<MemoryError> for Failure {
    fn from(_: MemoryError) -> Self {
        Failure::Bus
    }
}

impl Channel {
    /// Moves a DMA command's data now that both it and the bus master are ready.
    pub(super) fn run_dma(&mut self, job: PendingDma) {
        let unit = job.unit();
        // What the command moves, and for ATA from where.
        let (need, ata) = {
            let d = &self.drives[unit];
            match job {
                PendingDma::Ata { lba48, .. } => {
                    let count = d.count(lba48);
                    match d.lba(lba48).filter(|&l| d.in_range(l, u64::from(count))) {
                        Some(lba) => (u64::from(count) * SECTOR as u64, Some((lba, count))),
                        None => return self.dma_done(unit, Err(Failure::Medium(out_of_range(), false)), false),
                    }
                }
                PendingDma::Atapi { .. } => (d.atapi.xfer.as_ref().map_or(0, |x| x.remaining()), None),
            }
        };
        if !self.bus_master {
            return self.dma_done(unit, Err(Failure::Bus), false);
        }
        let (mut prds, total) = match Prds::load(&self.mem, self.bm.prd_table) {
            Ok(v) => v,
            Err(_) => return self.dma_done(unit, Err(Failure::Bus), false),
        };
        if total < need {
            // The engine runs out of descriptors: it stops, the drive gives up, and no
            // interrupt says so.
            let d = &mut self.drives[unit];
            d.status = DRDY | DSC;
            d.ata = None;
            d.atapi.xfer = None;
            self.bm.status &= !BM_ACTIVE;
            return;
        }
        let result = match (job, ata) {
            (PendingDma::Ata { write, lba48, .. }, Some((lba, count))) => {
                let r = self.ata_dma(unit, &mut prds, lba, count, write);
                if r.is_ok() {
                    let d = &mut self.drives[unit];
                    d.set_lba(lba + u64::from(count), lba48);
                    d.nsector = 0;
                }
                r
            }
            _ => self.atapi_dma(unit, &mut prds, need),
        };
        self.dma_done(unit, result, total > need);
    }

    fn ata_dma(&mut self, unit: usize, prds: &mut Prds, lba: u64, count: u32, write: bool) -> Result<(), Failure> {
        let d = &self.drives[unit];
        let medium = |e| Failure::Medium(e, write);
        let backend = d.backend.clone().ok_or(medium(BlockError::ReadOnly))?;
        let mut buf = vec![0u8; CHUNK_SECTORS * SECTOR];
        let mut done = 0u64;
        while done < u64::from(count) {
            let n = (u64::from(count) - done).min(CHUNK_SECTORS as u64);
            let chunk = &mut buf[..n as usize * SECTOR];
            let at = (lba + done) * SECTOR as u64;
            if write {
                prds.gather(&self.mem, chunk)?;
                backend.write_at(at, chunk).map_err(medium)?;
            } else {
                backend.read_at(at, chunk).map_err(medium)?;
                prds.scatter(&self.mem, chunk)?;
            }
            done += n;
        }
        if write && !d.write_cache {
            backend.flush().map_err(medium)?;
        }
        Ok(())
    }

    fn atapi_dma(&mut self, unit: usize, prds: &mut Prds, need: u64) -> Result<(), Failure> {
        let d = &mut self.drives[unit];
        let Some(mut x) = d.atapi.xfer.take() else { return Ok(()) };
        let backend = d.backend.clone();
        let mut buf = vec![0u8; CHUNK_SECTORS * SECTOR];
        let mut done = 0u64;
        while done < need {
            let n = (need - done).min(buf.len() as u64) as usize;
            x.fill(backend.as_deref(), &mut buf[..n]).map_err(|e| Failure::Medium(e, false))?;
            prds.scatter(&self.mem, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    /// Ends a DMA command: status, error, bus-master bits and the interrupt.
    fn dma_done(&mut self, unit: usize, result: Result<(), Failure>, more: bool) {
        // The device with the command is the selected one: the device register
        // ignores writes while its DRQ is set.
        debug_assert_eq!(self.unit, unit);
        let cdrom = self.drives[unit].kind == super::DriveKind::Cdrom;
        match result {
            Ok(()) => {
                if !more {
                    self.bm.status &= !BM_ACTIVE;
                }
                if cdrom {
                    self.atapi_ok();
                } else {
                    let d = &mut self.drives[unit];
                    d.status = DRDY | DSC;
                    d.error = 0;
                    self.raise_irq();
                }
            }
            Err(Failure::Bus) => {
                quern_core::log_limited!(log::Level::Debug, "ide: DMA outside guest RAM (or bus mastering off)");
                self.bm.status = (self.bm.status & !BM_ACTIVE) | BM_ERROR;
                if cdrom {
                    self.atapi_dma_aborted();
                } else {
                    self.ata_fail(ABRT);
                }
            }
            Err(Failure::Medium(e, write)) => {
                self.bm.status &= !BM_ACTIVE;
                if cdrom {
                    self.atapi_io_error(&e);
                } else {
                    let error = match e {
                        BlockError::OutOfRange { .. } => IDNF,
                        BlockError::ReadOnly => ABRT,
                        ref e => {
                            quern_core::log_limited!(log::Level::Warn, "ide: DMA: {e}");
                            if write {
                                ABRT
                            } else {
                                UNC
                            }
                        }
                    };
                    self.ata_fail(error);
                }
            }
        }
    }
}

fn out_of_range() -> BlockError {
    BlockError::OutOfRange { offset: 0, len: 0, size: 0 }
}
