//! The ATA command set of a hard disk: IDENTIFY, PIO and DMA reads and writes in
//! LBA28, LBA48 and CHS, VERIFY, FLUSH, SET FEATURES, SET MULTIPLE and the rest.
//!
//! Errors: an address outside the disk (or outside the CHS translation) is IDNF, a
//! write to a read-only medium or anything refused is ABRT, a read the medium fails is
//! UNC; the LBA registers then hold the first sector not transferred.

use quern_block::BlockError;

use super::channel::{Channel, PendingDma};
use super::drive::*;
use super::DriveKind;

/// QEMU's firmware revision for the `pc` machines (its hw_version "2.5+").
pub(super) const FIRMWARE: &str = "2.5+";
const MODEL_DISK: &str = "QEMU HARDDISK";
const MODEL_CD: &str = "QEMU DVD-ROM";

/// Puts `s` into IDENTIFY words as ATA strings are: two characters a word, the first
/// in the high byte, padded with spaces.
fn put_str(words: &mut [u16], s: &str) {
    let mut bytes = s.bytes().chain(std::iter::repeat(b' '));
    for w in words {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *w = u16::from(hi) << 8 | u16::from(lo);
    }
}

/// Words 62, 63 and 88 (single-word DMA, multiword DMA, UDMA: supported modes in the
/// low byte, the selected one in the high byte) after SET FEATURES `mode`; the default
/// selects UDMA5, as QEMU's does.
fn dma_mode_words(mode: Option<u8>) -> [u16; 3] {
    let sel = |v: u8| 1u16 << (8 + (v & 7));
    match mode {
        None => [0x07, 0x07, 0x3f | sel(5)],
        Some(m) => match m >> 3 {
            2 => [0x07 | sel(m), 0x07, 0x3f],
            4 => [0x07, 0x07 | sel(m), 0x3f],
            8 => [0x07, 0x07, 0x3f | sel(m)],
            _ => [0x07, 0x07, 0x3f],
        },
    }
}

/// IDENTIFY DEVICE data, QEMU's words (SMART left out: it is not implemented).
pub(super) fn identify_disk(d: &Drive) -> [u16; 256] {
    let mut w = [0u16; 256];
    let (g, c) = (d.geometry, d.current);
    let n = d.sectors();
    w[0] = 0x0040; // fixed disk
    w[1] = g.cylinders as u16;
    w[3] = g.heads as u16;
    w[4] = (512 * g.sectors) as u16;
    w[5] = 512;
    w[6] = g.sectors as u16;
    put_str(&mut w[10..20], &d.serial);
    w[20] = 3;
    w[21] = 512;
    w[22] = 4;
    put_str(&mut w[23..27], FIRMWARE);
    put_str(&mut w[27..47], MODEL_DISK);
    w[47] = 0x8000 | u16::from(MAX_MULT);
    w[48] = 1; // dword PIO
    w[49] = 1 << 11 | 1 << 9 | 1 << 8; // IORDY, LBA, DMA
    w[51] = 0x200;
    w[52] = 0x200;
    w[53] = 0x7; // words 54-58, 64-70 and 88 valid
    w[54] = c.cylinders as u16;
    w[55] = c.heads as u16;
    w[56] = c.sectors as u16;
    let current = c.cylinders * c.heads * c.sectors;
    w[57] = current as u16;
    w[58] = (current >> 16) as u16;
    if d.mult != 0 {
        w[59] = 0x100 | u16::from(d.mult);
    }
    let lba28 = n.min((1 << 28) - 1);
    w[60] = lba28 as u16;
    w[61] = (lba28 >> 16) as u16;
    [w[62], w[63], w[88]] = dma_mode_words(d.xfer_mode);
    w[64] = 0x03; // PIO 3 and 4
    w[65..69].fill(120);
    w[80] = 0xf0; // ATA-4 to ATA-7
    w[81] = 0x16;
    // Supported: NOP, write cache; FLUSH CACHE EXT, FLUSH CACHE, 48-bit addresses.
    w[82] = 1 << 14 | 1 << 5;
    w[83] = 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10;
    w[84] = 1 << 14;
    // Enabled: the same, the write cache as set.
    w[85] = 1 << 14 | u16::from(d.write_cache) << 5;
    w[86] = 1 << 13 | 1 << 12 | 1 << 10;
    w[87] = 1 << 14;
    w[93] = 1 | 1 << 14 | 0x2000; // 80-conductor cable
    for i in 0..4 {
        w[100 + i] = (n >> (16 * i)) as u16;
    }
    w
}

/// IDENTIFY PACKET DEVICE data, QEMU's words.
pub(super) fn identify_cdrom(d: &Drive) -> [u16; 256] {
    let mut w = [0u16; 256];
    // ATAPI, CD-ROM, removable, DRQ within 50 us, 12-byte packets.
    w[0] = 2 << 14 | 5 << 8 | 1 << 7 | 2 << 5;
    put_str(&mut w[10..20], &d.serial);
    w[20] = 3;
    w[21] = 512;
    w[22] = 4;
    put_str(&mut w[23..27], FIRMWARE);
    put_str(&mut w[27..47], MODEL_CD);
    w[48] = 1;
    w[49] = 1 << 9 | 1 << 8; // LBA, DMA
    w[53] = 7;
    [w[62], w[63], w[88]] = dma_mode_words(d.xfer_mode);
    w[64] = 3;
    w[65] = 0xb4;
    w[66] = 0xb4;
    w[67] = 0x12c;
    w[68] = 0xb4;
    w[71] = 30;
    w[72] = 30;
    w[80] = 0x1e; // up to ATA/ATAPI-4
    w
}

fn words_to_bytes(w: &[u16; 256], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(2).zip(w) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

/// The error bits a failed read or write of the medium reports.
fn medium_error(e: &BlockError, write: bool) -> u8 {
    match e {
        BlockError::OutOfRange { .. } => IDNF,
        BlockError::ReadOnly => ABRT,
        _ if write => ABRT,
        _ => UNC,
    }
}

fn log_medium_error(e: &BlockError) {
    if !matches!(e, BlockError::OutOfRange { .. } | BlockError::ReadOnly) {
        quern_core::log_limited!(log::Level::Warn, "ide: {e}");
    }
}

impl Channel {
    /// Ends the selected device's command with `error` and an interrupt.
    pub(super) fn ata_fail(&mut self, error: u8) {
        self.sel().fail(error);
        self.raise_irq();
    }

    pub(super) fn cmd_identify(&mut self) -> bool {
        let d = self.sel();
        if d.kind == DriveKind::Cdrom {
            // What a host sends first: the abort and the signature say "ATAPI".
            d.set_signature();
            d.fail(ABRT);
            return true;
        }
        let w = identify_disk(d);
        words_to_bytes(&w, d.buffer(SECTOR));
        d.status = DRDY | DSC;
        d.start_in(SECTOR, InDone::Stop);
        self.raise_irq();
        false
    }

    pub(super) fn cmd_identify_packet(&mut self) -> bool {
        let d = self.sel();
        let w = identify_cdrom(d);
        words_to_bytes(&w, d.buffer(SECTOR));
        d.status = DRDY | DSC;
        d.start_in(SECTOR, InDone::Stop);
        self.raise_irq();
        false
    }

    pub(super) fn cmd_read_pio(&mut self, lba48: bool, multiple: bool) -> bool {
        let d = self.sel();
        if d.kind == DriveKind::Cdrom {
            d.set_signature();
            d.fail(ABRT);
            return true;
        }
        if multiple && d.mult == 0 {
            d.fail(ABRT);
            return true;
        }
        let block = if multiple { u32::from(d.mult) } else { 1 };
        d.ata = Some(AtaXfer { remaining: d.count(lba48), block, lba48 });
        self.ata_read_block();
        false
    }

    /// Loads the next block of a PIO read into the data port, or ends the command.
    pub(super) fn ata_read_block(&mut self) {
        let d = self.sel();
        let Some(mut x) = d.ata else { return };
        d.status = DRDY | DSC;
        d.error = 0;
        if x.remaining == 0 {
            d.ata = None;
            return;
        }
        let n = x.remaining.min(x.block);
        let Some(lba) = d.lba(x.lba48).filter(|&l| d.in_range(l, u64::from(n))) else {
            return self.ata_fail(IDNF);
        };
        let len = n as usize * SECTOR;
        let Some(backend) = d.backend.clone() else { return self.ata_fail(ABRT) };
        if let Err(e) = backend.read_at(lba * SECTOR as u64, d.buffer(len)) {
            log_medium_error(&e);
            return self.ata_fail(medium_error(&e, false));
        }
        x.remaining -= n;
        d.ata = Some(x);
        d.set_lba(lba + u64::from(n), x.lba48);
        d.nsector = x.remaining as u8;
        d.start_in(len, InDone::AtaRead);
        self.raise_irq();
    }

    pub(super) fn cmd_write_pio(&mut self, lba48: bool, multiple: bool) -> bool {
        let d = self.sel();
        if (multiple && d.mult == 0) || d.read_only() {
            d.fail(ABRT);
            return true;
        }
        let block = if multiple { u32::from(d.mult) } else { 1 };
        let x = AtaXfer { remaining: d.count(lba48), block, lba48 };
        d.ata = Some(x);
        // The first block is asked for without an interrupt (PIO-out protocol).
        d.status = DRDY | DSC;
        d.start_out(x.remaining.min(block) as usize * SECTOR, OutDone::AtaWrite);
        false
    }

    /// Writes the block the host has sent; asks for the next or ends the command.
    pub(super) fn ata_write_block(&mut self) {
        let d = self.sel();
        let Some(mut x) = d.ata else { return };
        let n = x.remaining.min(x.block);
        let Some(lba) = d.lba(x.lba48).filter(|&l| d.in_range(l, u64::from(n))) else {
            return self.ata_fail(IDNF);
        };
        let len = n as usize * SECTOR;
        let Some(backend) = d.backend.clone() else { return self.ata_fail(ABRT) };
        let mut r = backend.write_at(lba * SECTOR as u64, &d.buf[..len]);
        if r.is_ok() && !d.write_cache {
            r = backend.flush();
        }
        if let Err(e) = r {
            log_medium_error(&e);
            return self.ata_fail(medium_error(&e, true));
        }
        x.remaining -= n;
        d.set_lba(lba + u64::from(n), x.lba48);
        d.nsector = x.remaining as u8;
        d.status = DRDY | DSC;
        if x.remaining == 0 {
            d.ata = None;
        } else {
            d.ata = Some(x);
            d.start_out(x.remaining.min(x.block) as usize * SECTOR, OutDone::AtaWrite);
        }
        self.raise_irq();
    }

    pub(super) fn cmd_dma(&mut self, write: bool, lba48: bool) -> bool {
        let unit = self.unit;
        let d = self.sel();
        if write && d.read_only() {
            d.fail(ABRT);
            return true;
        }
        // DRQ until the bus master has moved the data.
        d.status = DRDY | DSC | DRQ;
        self.start_dma(PendingDma::Ata { unit, write, lba48 });
        false
    }

    pub(super) fn cmd_verify(&mut self, lba48: bool) -> bool {
        let d = self.sel();
        let n = u64::from(d.count(lba48));
        if d.lba(lba48).is_none_or(|lba| !d.in_range(lba, n)) {
            d.fail(IDNF);
        }
        true
    }

    pub(super) fn cmd_read_native_max(&mut self, lba48: bool) -> bool {
        let d = self.sel();
        match d.sectors() {
            0 => d.fail(ABRT),
            n => d.set_lba(n - 1, lba48),
        }
        true
    }

    pub(super) fn cmd_set_multiple(&mut self) -> bool {
        let d = self.sel();
        match d.nsector {
            n if n == 0 || (n <= MAX_MULT && n.is_power_of_two()) => d.mult = n,
            _ => d.fail(ABRT),
        }
        true
    }

    /// INITIALIZE DEVICE PARAMETERS: the CHS translation (heads from the device
    /// register, sectors per track from the count) that CHS addresses use from now on.
    pub(super) fn cmd_init_params(&mut self) -> bool {
        let d = self.sel();
        let heads = u32::from(d.select & 0x0f) + 1;
        let sectors = u32::from(d.nsector);
        if sectors == 0 {
            d.fail(ABRT);
            return true;
        }
        let cylinders = (d.sectors() / u64::from(heads * sectors)).min(65535) as u32;
        d.current = super::Chs { cylinders, heads, sectors };
        true
    }

    pub(super) fn cmd_flush(&mut self) -> bool {
        let d = self.sel();
        if let Some(b) = d.backend.clone() {
            if let Err(e) = b.flush() {
                log_medium_error(&e);
                d.fail(ABRT);
                return true;
            }
        }
        d.status = DRDY | DSC;
        self.raise_irq();
        false
    }

    pub(super) fn cmd_set_features(&mut self) -> bool {
        let d = self.sel();
        match d.feature {
            0x02 => d.write_cache = true,
            0x82 => {
                d.write_cache = false;
                return self.cmd_flush();
            }
            0x03 => {
                let mode = d.nsector;
                let ok = match mode >> 3 {
                    0 => true,
                    1 => mode & 7 <= 4,
                    2 | 4 => mode & 7 <= 2,
                    8 => mode & 7 <= 5,
                    _ => false,
                };
                if ok {
                    d.xfer_mode = Some(mode);
                } else {
                    d.fail(ABRT);
                }
            }
            // Accepted and ignored, as QEMU does: look-ahead, power-on defaults,
            // power management, acoustics, vendor NOPs.
            0xcc | 0x66 | 0xaa | 0x55 | 0x05 | 0x85 | 0x69 | 0x67 | 0x96 | 0x9a | 0x42 | 0xc2 => {}
            _ => d.fail(ABRT),
        }
        true
    }
}
