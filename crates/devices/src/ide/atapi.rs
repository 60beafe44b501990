//! The packet interface of a CD-ROM drive: PACKET (0xa0) carries a 12-byte SCSI/MMC
//! command, the data goes by PIO in DRQ blocks no longer than the host's byte count
//! limit, or by DMA; the outcome is in the status, error (sense key in bits 7-4) and
//! interrupt reason (sector count: CoD, IO) registers, the details in REQUEST SENSE.
//!
//! The commands and their answers are QEMU's (hw/ide/atapi.c): a DVD-ROM drive whose
//! disc is the backend's bytes in 2048-byte sectors, one data track. A changed medium
//! is reported as QEMU does it: NOT READY to the next command, then UNIT ATTENTION
//! (medium may have changed), which holds off every command but REQUEST SENSE,
//! INQUIRY, GET CONFIGURATION and GET EVENT STATUS NOTIFICATION until REQUEST SENSE
//! clears it; GESN reports media events (new media, eject request, and, unlike QEMU,
//! media removal). Like QEMU, the drive reports no unit attention at power-on.
//! MEDIUM NOT PRESENT carries the tray's state in its qualifier (01h closed, 02h
//! open), as SCSI drives report it.

use quern_block::{BlockBackend, BlockError};
use serde::{Deserialize, Serialize};

use super::ata::FIRMWARE;
use super::channel::{Channel, PendingDma};
use super::drive::*;

pub(super) const CD_SECTOR: usize = 2048;
const CD_RAW_SECTOR: usize = 2352;
/// Larger media are DVDs (80 minutes of 2048-byte frames, QEMU's limit).
const CD_MAX_BYTES: u64 = 80 * 60 * 75 * 2048;

// Interrupt reason (sector count register).
const COD: u8 = 0x01;
const IO: u8 = 0x02;

// Sense keys.
const NO_SENSE: u8 = 0x00;
const NOT_READY: u8 = 0x02;
const MEDIUM_ERROR: u8 = 0x03;
const ILLEGAL_REQUEST: u8 = 0x05;
pub(super) const UNIT_ATTENTION: u8 = 0x06;
const ABORTED_COMMAND: u8 = 0x0b;
// Additional sense codes and qualifiers (ASC << 8 | ASCQ).
const ASC_UNRECOVERED_READ: u16 = 0x1100;
const ASC_INVALID_OPCODE: u16 = 0x2000;
const ASC_LBA_OUT_OF_RANGE: u16 = 0x2100;
const ASC_INVALID_FIELD: u16 = 0x2400;
const ASC_MEDIUM_MAY_HAVE_CHANGED: u16 = 0x2800;
const ASC_SAVING_NOT_SUPPORTED: u16 = 0x3900;
const ASC_NO_MEDIUM_TRAY_CLOSED: u16 = 0x3a01;
const ASC_NO_MEDIUM_TRAY_OPEN: u16 = 0x3a02;
const ASC_REMOVAL_PREVENTED: u16 = 0x5302;

// GET EVENT STATUS NOTIFICATION: media event codes and status bits.
const MEC_EJECT_REQUESTED: u8 = 1;
const MEC_NEW_MEDIA: u8 = 2;
const MEC_MEDIA_REMOVAL: u8 = 3;
const MS_TRAY_OPEN: u8 = 1;
const MS_MEDIA_PRESENT: u8 = 2;

/// The sense data REQUEST SENSE returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Sense {
    pub key: u8,
    pub asc: u8,
    /// Absent from states saved before it was kept.
    #[serde(default)]
    pub ascq: u8,
}

impl Sense {
    fn new(key: u8, asc: u16) -> Sense {
        Sense { key, asc: (asc >> 8) as u8, ascq: asc as u8 }
    }
}

/// What a packet command sends to the host.
#[derive(Clone, Serialize, Deserialize)]
pub(super) enum Payload {
    /// A reply built in memory.
    Reply(Vec<u8>),
    /// Disc sectors from `lba`: 2048 bytes each, or 2352-byte raw frames (READ CD).
    Sectors { lba: u64, frame: usize },
}

#[derive(Clone, Serialize, Deserialize)]
pub(super) struct AtapiXfer {
    pub payload: Payload,
    /// Bytes sent so far, of `total`.
    pub offset: u64,
    pub total: u64,
}

fn no_medium() -> BlockError {
    BlockError::Io(std::io::Error::new(std::io::ErrorKind::NotFound, "no medium"))
}

fn lba_to_msf(lba: u64) -> [u8; 3] {
    let lba = lba + 150;
    [((lba / 75) / 60) as u8, ((lba / 75) % 60) as u8, (lba % 75) as u8]
}

impl AtapiXfer {
    pub fn remaining(&self) -> u64 {
        self.total - self.offset
    }

    /// The next `out.len()` bytes of the payload.
    pub fn fill(&mut self, backend: Option<&dyn BlockBackend>, out: &mut [u8]) -> Result<(), BlockError> {
        if out.is_empty() {
            return Ok(());
        }
        let off = self.offset;
        match self.payload {
            Payload::Reply(ref v) => out.copy_from_slice(&v[off as usize..off as usize + out.len()]),
            Payload::Sectors { lba, frame: CD_SECTOR } => {
                // Whole sectors from the medium (controllers read sector-aligned).
                let b = backend.ok_or_else(no_medium)?;
                let sector = CD_SECTOR as u64;
                let (first, last) = (off / sector, (off + out.len() as u64 - 1) / sector);
                let mut tmp = vec![0u8; ((last - first + 1) * sector) as usize];
                b.read_at((lba + first) * sector, &mut tmp)?;
                let skip = (off - first * sector) as usize;
                out.copy_from_slice(&tmp[skip..skip + out.len()]);
            }
            Payload::Sectors { lba, .. } => {
                // Raw mode-1 frames: sync, header (MSF, mode 1), data, EDC/ECC left 0.
                let b = backend.ok_or_else(no_medium)?;
                let mut raw = [0u8; CD_RAW_SECTOR];
                let mut done = 0;
                while done < out.len() {
                    let pos = off + done as u64;
                    let (f, inner) = (pos / CD_RAW_SECTOR as u64, (pos % CD_RAW_SECTOR as u64) as usize);
                    raw.fill(0);
                    raw[1..11].fill(0xff);
                    raw[12..15].copy_from_slice(&lba_to_msf(lba + f));
                    raw[15] = 0x01;
                    b.read_at((lba + f) * CD_SECTOR as u64, &mut raw[16..16 + CD_SECTOR])?;
                    let n = (CD_RAW_SECTOR - inner).min(out.len() - done);
                    out[done..done + n].copy_from_slice(&raw[inner..inner + n]);
                    done += n;
                }
            }
        }
        self.offset += out.len() as u64;
        Ok(())
    }
}

/// A CD-ROM drive's own state.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(super) struct AtapiState {
    pub sense: Sense,
    pub tray_open: bool,
    /// PREVENT ALLOW MEDIUM REMOVAL.
    pub tray_locked: bool,
    /// A medium change still to report: 1 NOT READY next, 2 UNIT ATTENTION next.
    pub changed: u8,
    /// GET EVENT STATUS NOTIFICATION's media events, not yet reported.
    pub new_media: bool,
    #[serde(default)]
    pub eject_request: bool,
    #[serde(default)]
    pub media_removal: bool,
    /// The PACKET command asked for DMA (features bit 0).
    pub dma: bool,
    pub xfer: Option<AtapiXfer>,
}

impl AtapiState {
    /// QEMU's ide_reset: sense, pending change, tray (closed, unlocked) and transfer
    /// cleared; events not yet polled stay.
    pub fn reset(&mut self) {
        let (new_media, eject_request, media_removal) = (self.new_media, self.eject_request, self.media_removal);
        *self = AtapiState { new_media, eject_request, media_removal, ..AtapiState::default() };
    }

    /// Whether a transfer in progress lies within its payload (a restored state's is
    /// checked before it is used).
    pub fn consistent(&self) -> bool {
        self.xfer.as_ref().is_none_or(|x| {
            x.offset <= x.total && !matches!(&x.payload, Payload::Reply(v) if (v.len() as u64) < x.total)
        })
    }

    /// The host moved the tray (QEMU's ide_cd_change_cb): the guest hears of it as a
    /// changed medium, both by sense codes and by GESN once the tray is shut.
    pub fn tray_moved(&mut self, open: bool) {
        self.tray_open = open;
        self.changed = 1;
        self.new_media = true;
        self.eject_request = false;
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// `s` padded with spaces to `len` bytes, as SCSI strings are.
fn pad(s: &str, len: usize) -> impl Iterator<Item = u8> + '_ {
    s.bytes().chain(std::iter::repeat(b' ')).take(len)
}

/// 2048-byte sectors of the disc in the drive (0 without one or with the tray open).
fn blocks(d: &Drive) -> u64 {
    match &d.backend {
        Some(b) if !d.atapi.tray_open => b.size() / CD_SECTOR as u64,
        _ => 0,
    }
}

/// MEDIUM NOT PRESENT, with the tray's state in the qualifier.
fn no_medium_asc(d: &Drive) -> u16 {
    if d.atapi.tray_open {
        ASC_NO_MEDIUM_TRAY_OPEN
    } else {
        ASC_NO_MEDIUM_TRAY_CLOSED
    }
}

/// How a command is treated before it runs: (runs under a unit attention, needs a
/// medium).
fn flags(op: u8) -> (bool, bool) {
    match op {
        0x03 | 0x12 | 0x46 | 0x4a => (true, false),
        0x00 | 0x25 | 0x28 | 0x2b | 0x43 | 0x51 | 0xa8 | 0xbe => (false, true),
        _ => (false, false),
    }
}

/// What a command does.
pub(super) enum Reply {
    /// Done, no data.
    Ok,
    /// Data, of which the host takes at most the allocation length.
    Data(Vec<u8>, usize),
    /// Disc sectors.
    Read { lba: u64, count: u64, frame: usize },
    /// CHECK CONDITION with a sense key and additional sense code (and qualifier).
    Error(u8, u16),
}

/// READ(10)/(12)/CD: `count` sectors from `lba`, if they lie on the disc.
fn read(d: &Drive, lba: u64, count: u64, frame: usize) -> Reply {
    if count == 0 {
        Reply::Ok
    } else if lba + count > blocks(d) {
        Reply::Error(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
    } else {
        Reply::Read { lba, count, frame }
    }
}

/// Runs packet command `cdb` on `d` (flags already checked).
pub(super) fn handle(d: &mut Drive, cdb: &[u8; 12]) -> Reply {
    let n = blocks(d);
    match cdb[0] {
        // TEST UNIT READY: ready if it got here.
        0x00 => Reply::Ok,
        // REQUEST SENSE: fixed format, then the sense is consumed.
        0x03 => {
            let mut v = vec![0u8; 18];
            v[0] = 0xf0; // valid, current errors
            v[2] = d.atapi.sense.key;
            v[7] = 10;
            v[12] = d.atapi.sense.asc;
            v[13] = d.atapi.sense.ascq;
            d.atapi.sense = Sense::default();
            Reply::Data(v, usize::from(cdb[4]))
        }
        // INQUIRY
        0x12 => {
            let alloc = usize::from(be16(&cdb[3..5]));
            if cdb[1] & 1 != 0 {
                // Vital product data: only the list of pages, which lists itself.
                return match cdb[2] {
                    0x00 => Reply::Data(vec![0x05, 0x00, 0x00, 0x01, 0x00], alloc),
                    _ => Reply::Error(ILLEGAL_REQUEST, ASC_INVALID_FIELD),
                };
            }
            // CD-ROM, removable, ATAPI-2 response format, 31 more bytes.
            let mut v = vec![0x05, 0x80, 0x00, 0x21, 31, 0, 0, 0];
            v.extend(pad("QEMU", 8));
            v.extend(pad("QEMU DVD-ROM", 16));
            v.extend(pad(FIRMWARE, 4));
            Reply::Data(v, alloc)
        }
        // START STOP UNIT: LoEj opens or closes the tray (not while locked).
        0x1b => {
            let (start, loej) = (cdb[4] & 1 != 0, cdb[4] & 2 != 0);
            if cdb[4] & 0xf0 == 0 && loej {
                if !start && !d.atapi.tray_open && d.atapi.tray_locked {
                    let key = if d.backend.is_some() { NOT_READY } else { ILLEGAL_REQUEST };
                    return Reply::Error(key, ASC_REMOVAL_PREVENTED);
                }
                d.atapi.tray_open = !start;
            }
            Reply::Ok
        }
        // PREVENT ALLOW MEDIUM REMOVAL
        0x1e => {
            d.atapi.tray_locked = cdb[4] & 1 != 0;
            Reply::Ok
        }
        // READ CAPACITY: the last sector and the sector size.
        0x25 => {
            let mut v = ((n - 1) as u32).to_be_bytes().to_vec();
            v.extend((CD_SECTOR as u32).to_be_bytes());
            Reply::Data(v, 8)
        }
        0x28 => read(d, u64::from(be32(&cdb[2..6])), u64::from(be16(&cdb[7..9])), CD_SECTOR),
        0xa8 => read(d, u64::from(be32(&cdb[2..6])), u64::from(be32(&cdb[6..10])), CD_SECTOR),
        // READ CD: user data only, or whole raw frames.
        0xbe => {
            let (lba, count) = (u64::from(be32(&cdb[2..6])), u64::from(be32(&[0, cdb[6], cdb[7], cdb[8]])));
            match cdb[9] & 0xf8 {
                _ if count == 0 => Reply::Ok,
                0x00 => Reply::Ok,
                0x10 => read(d, lba, count, CD_SECTOR),
                0xf8 => read(d, lba, count, CD_RAW_SECTOR),
                _ => Reply::Error(ILLEGAL_REQUEST, ASC_INVALID_FIELD),
            }
        }
        // SEEK(10)
        0x2b if u64::from(be32(&cdb[2..6])) >= n => Reply::Error(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE),
        0x2b => Reply::Ok,
        // READ TOC/PMA/ATIP: the format in byte 2 (MMC) or bits 7-6 of byte 9 (SFF-8020).
        0x43 => {
            let alloc = usize::from(be16(&cdb[7..9]));
            let msf = cdb[1] & 2 != 0;
            let format = match cdb[2] & 0x0f {
                0 => cdb[9] >> 6,
                f => f,
            };
            match format {
                0 => toc(n, msf, cdb[6])
                    .map_or(Reply::Error(ILLEGAL_REQUEST, ASC_INVALID_FIELD), |v| Reply::Data(v, alloc)),
                1 => {
                    // Multi-session information: one session, track 1 starts it at 0.
                    let mut v = vec![0, 0x0a, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0];
                    if msf {
                        v[9..12].copy_from_slice(&lba_to_msf(0));
                    }
                    Reply::Data(v, alloc)
                }
                2 => Reply::Data(raw_toc(n, msf), alloc),
                _ => Reply::Error(ILLEGAL_REQUEST, ASC_INVALID_FIELD),
            }
        }
        // GET CONFIGURATION: the profile list (feature 0) only.
        0x46 => {
            if cdb[2] != 0 || cdb[3] != 0 {
                return Reply::Error(ILLEGAL_REQUEST, ASC_INVALID_FIELD);
            }
            let size = d.backend.as_ref().filter(|_| n > 0).map_or(0, |b| b.size());
            let current: u16 = match size {
                0 => 0,
                s if s > CD_MAX_BYTES => 0x0010, // DVD-ROM
                _ => 0x0008,                     // CD-ROM
            };
            let mut v = vec![0u8; 20];
            v[0..4].copy_from_slice(&16u32.to_be_bytes());
            v[6..8].copy_from_slice(&current.to_be_bytes());
            v[10] = 0x03; // persistent, current
            v[11] = 8;
            for (i, profile) in [0x0010u16, 0x0008].into_iter().enumerate() {
                v[12 + 4 * i..14 + 4 * i].copy_from_slice(&profile.to_be_bytes());
                v[14 + 4 * i] = u8::from(profile == current);
            }
            Reply::Data(v, usize::from(be16(&cdb[7..9])).min(512))
        }
        // GET EVENT STATUS NOTIFICATION: polled, media class only.
        0x4a => {
            if cdb[1] & 1 == 0 {
                return Reply::Error(ILLEGAL_REQUEST, ASC_INVALID_FIELD);
            }
            let alloc = usize::from(be16(&cdb[7..9]));
            if cdb[4] & 0x10 == 0 {
                // No event available; media events are what the drive supports.
                return Reply::Data(vec![0, 0, 0x80, 0x10], alloc);
            }
            let a = &mut d.atapi;
            let status = if a.tray_open {
                MS_TRAY_OPEN
            } else if d.backend.is_some() {
                MS_MEDIA_PRESENT
            } else {
                0
            };
            // One event per poll, oldest kind first. A removal is news whatever the
            // tray does; the others wait for it to shut, as on QEMU.
            let event = if std::mem::take(&mut a.media_removal) {
                MEC_MEDIA_REMOVAL
            } else if a.tray_open {
                0
            } else if std::mem::take(&mut a.new_media) {
                MEC_NEW_MEDIA
            } else if std::mem::take(&mut a.eject_request) {
                MEC_EJECT_REQUESTED
            } else {
                0
            };
            Reply::Data(vec![0, 4, 0x04, 0x10, event, status, 0, 0], alloc)
        }
        // READ DISC INFORMATION: a finalized disc, one session, one track.
        0x51 => {
            if cdb[1] & 7 != 0 {
                return Reply::Error(ILLEGAL_REQUEST, ASC_INVALID_FIELD);
            }
            let mut v = vec![0u8; 34];
            v[1] = 32;
            v[2] = 0x0e;
            v[3..7].fill(1);
            v[7] = 0x20;
            Reply::Data(v, usize::from(be16(&cdb[7..9])))
        }
        // MODE SENSE(10)
        0x5a => mode_sense(d, cdb),
        // SET CD SPEED
        0xbb => Reply::Ok,
        // MECHANISM STATUS: no changer, door state, one slot.
        0xbd => {
            let door = u8::from(d.atapi.tray_open) << 4;
            Reply::Data(vec![0, door, 0, 0, 0, 1, 0, 0], usize::from(be16(&cdb[8..10])))
        }
        _ => Reply::Error(ILLEGAL_REQUEST, ASC_INVALID_OPCODE),
    }
}

/// READ TOC format 0: track 1 (data) from sector 0 and the lead-out, from track
/// `start` on (0 or 1: both; 0xaa: the lead-out only).
fn toc(blocks: u64, msf: bool, start: u8) -> Option<Vec<u8>> {
    if start > 1 && start != 0xaa {
        return None;
    }
    let addr = |v: &mut Vec<u8>, lba: u64| {
        if msf {
            v.push(0);
            v.extend(lba_to_msf(lba));
        } else {
            v.extend((lba as u32).to_be_bytes());
        }
    };
    let mut v = vec![0, 0, 1, 1];
    if start <= 1 {
        v.extend([0, 0x14, 1, 0]);
        addr(&mut v, 0);
    }
    v.extend([0, 0x16, 0xaa, 0]);
    addr(&mut v, blocks);
    let len = (v.len() - 2) as u16;
    v[0..2].copy_from_slice(&len.to_be_bytes());
    Some(v)
}

/// READ TOC format 2 (full TOC): points A0 (first track), A1 (last track), A2
/// (lead-out) and track 1, in session 1.
fn raw_toc(blocks: u64, msf: bool) -> Vec<u8> {
    let mut v = vec![0, 0, 1, 1];
    v.extend([1, 0x14, 0, 0xa0, 0, 0, 0, 0, 1, 0, 0]);
    v.extend([1, 0x14, 0, 0xa1, 0, 0, 0, 0, 1, 0, 0]);
    v.extend([1, 0x14, 0, 0xa2, 0, 0, 0]);
    if msf {
        v.push(0);
        v.extend(lba_to_msf(blocks));
    } else {
        v.extend((blocks as u32).to_be_bytes());
    }
    v.extend([1, 0x14, 0, 1, 0, 0, 0]);
    if msf {
        v.push(0);
        v.extend(lba_to_msf(0));
    } else {
        v.extend([0; 4]);
    }
    let len = (v.len() - 2) as u16;
    v[0..2].copy_from_slice(&len.to_be_bytes());
    v
}

/// MODE SENSE(10): current values of the error recovery (0x01), CD audio control
/// (0x0e) and capabilities (0x2a) pages, or all three (0x3f).
fn mode_sense(d: &Drive, cdb: &[u8; 12]) -> Reply {
    let alloc = usize::from(be16(&cdb[7..9]));
    let (control, code) = (cdb[2] >> 6, cdb[2] & 0x3f);
    match control {
        0 => {}
        3 => return Reply::Error(ILLEGAL_REQUEST, ASC_SAVING_NOT_SUPPORTED),
        _ => return Reply::Error(ILLEGAL_REQUEST, ASC_INVALID_FIELD),
    }
    let error_recovery = [0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0];
    let mut audio = [0u8; 16];
    audio[..2].copy_from_slice(&[0x0e, 0x0e]);
    // Ports 0 and 1: channels 0 and 1, full volume.
    audio[8..12].copy_from_slice(&[0x01, 0xff, 0x02, 0xff]);
    let mut caps = [0u8; 20];
    // Page 0x2a, 18 bytes; reads CD-R/RW, DVD-ROM/R/RAM.
    caps[..4].copy_from_slice(&[0x2a, 0x12, 0x3b, 0x00]);
    // Audio play (some Linux code checks it to automount), CD-DA, lock, eject,
    // tray loader; 4x speed, 2 volume levels, 512 KiB buffer.
    caps[4] = 0x71;
    caps[5] = 0x60;
    caps[6] = 0x29 | u8::from(d.atapi.tray_locked) << 1;
    caps[8..10].copy_from_slice(&704u16.to_be_bytes());
    caps[10..12].copy_from_slice(&2u16.to_be_bytes());
    caps[12..14].copy_from_slice(&512u16.to_be_bytes());
    caps[14..16].copy_from_slice(&704u16.to_be_bytes());
    let pages: Vec<&[u8]> = match code {
        0x01 => vec![&error_recovery],
        0x0e => vec![&audio],
        0x2a => vec![&caps],
        0x3f => vec![&error_recovery, &audio, &caps],
        _ => return Reply::Error(ILLEGAL_REQUEST, ASC_INVALID_FIELD),
    };
    // Header: mode data length, medium type (QEMU's 0x70), no block descriptors.
    let mut v = vec![0, 0, 0x70, 0, 0, 0, 0, 0];
    for p in pages {
        v.extend_from_slice(p);
    }
    let len = (v.len() - 2) as u16;
    v[0..2].copy_from_slice(&len.to_be_bytes());
    Reply::Data(v, alloc)
}

impl Channel {
    pub(super) fn cmd_packet(&mut self) -> bool {
        let d = self.sel();
        // Overlapped commands are not supported.
        if d.feature & 0x02 != 0 {
            d.fail(ABRT);
            return true;
        }
        d.atapi.dma = d.feature & 0x01 != 0;
        // Ready for the packet: CoD, no interrupt (DRQ within 50 us, IDENTIFY word 0).
        d.status = DRDY | DSC;
        d.nsector = COD;
        d.start_out(12, OutDone::Packet);
        false
    }

    /// The packet has arrived.
    pub(super) fn atapi_packet(&mut self) {
        let d = self.sel();
        let mut cdb = [0u8; 12];
        cdb.copy_from_slice(&d.buf[..12]);
        let (allow_ua, check_ready) = flags(cdb[0]);
        if d.atapi.sense.key == UNIT_ATTENTION && !allow_ua {
            return self.atapi_check_status();
        }
        if !allow_ua && d.atapi.changed != 0 && !d.atapi.tray_open && d.backend.is_some() {
            // A changed disc: first "no medium", as if the tray had opened, then the
            // unit attention (QEMU's order: guests that never poll GESN see the tray
            // go out and in).
            if d.atapi.changed == 1 {
                d.atapi.changed = 2;
                return self.atapi_error(NOT_READY, ASC_NO_MEDIUM_TRAY_OPEN);
            }
            d.atapi.changed = 0;
            return self.atapi_error(UNIT_ATTENTION, ASC_MEDIUM_MAY_HAVE_CHANGED);
        }
        if check_ready && blocks(d) == 0 {
            let asc = no_medium_asc(d);
            return self.atapi_error(NOT_READY, asc);
        }
        match handle(d, &cdb) {
            Reply::Ok => self.atapi_ok(),
            Reply::Error(key, asc) => self.atapi_error(key, asc),
            Reply::Data(mut v, alloc) => {
                v.truncate(alloc);
                let n = v.len() as u64;
                self.atapi_reply(Payload::Reply(v), n);
            }
            Reply::Read { lba, count, frame } => {
                self.atapi_reply(Payload::Sectors { lba, frame }, count * frame as u64)
            }
        }
    }

    /// Completion without error.
    pub(super) fn atapi_ok(&mut self) {
        let d = self.sel();
        d.stop_pio();
        d.atapi.xfer = None;
        d.error = 0;
        d.status = DRDY | DSC;
        d.nsector = (d.nsector & !7) | IO | COD;
        if d.atapi.sense.key != UNIT_ATTENTION {
            d.atapi.sense = Sense::new(NO_SENSE, 0);
        }
        self.raise_irq();
    }

    /// CHECK CONDITION: the sense key in the error register, the details kept for
    /// REQUEST SENSE.
    pub(super) fn atapi_error(&mut self, key: u8, asc: u16) {
        let d = self.sel();
        d.stop_pio();
        d.atapi.xfer = None;
        d.error = key << 4;
        d.status = DRDY | ERR;
        d.nsector = (d.nsector & !7) | IO | COD;
        d.atapi.sense = Sense::new(key, asc);
        self.raise_irq();
    }

    /// A command refused while a unit attention is pending (media changed, MC).
    fn atapi_check_status(&mut self) {
        let d = self.sel();
        d.stop_pio();
        d.error = MC | UNIT_ATTENTION << 4;
        d.status = DRDY | ERR;
        d.nsector = (d.nsector & !7) | IO | COD;
        self.raise_irq();
    }

    /// A failed read of the disc.
    pub(super) fn atapi_io_error(&mut self, e: &BlockError) {
        let d = self.sel();
        if blocks(d) == 0 {
            let asc = no_medium_asc(d);
            return self.atapi_error(NOT_READY, asc);
        }
        match e {
            BlockError::OutOfRange { .. } => self.atapi_error(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE),
            _ => {
                quern_core::log_limited!(log::Level::Warn, "ide: CD-ROM: {e}");
                self.atapi_error(MEDIUM_ERROR, ASC_UNRECOVERED_READ)
            }
        }
    }

    /// A failed DMA: the command aborts.
    pub(super) fn atapi_dma_aborted(&mut self) {
        self.atapi_error(ABORTED_COMMAND, 0);
        self.sel().error |= ABRT;
    }

    /// Sends `total` bytes of `payload`: DMA if the PACKET command asked for it, else
    /// PIO in DRQ blocks.
    fn atapi_reply(&mut self, payload: Payload, total: u64) {
        if total == 0 {
            return self.atapi_ok();
        }
        let unit = self.unit;
        let d = self.sel();
        d.atapi.xfer = Some(AtapiXfer { payload, offset: 0, total });
        if d.atapi.dma {
            d.status = DRDY | DSC | DRQ;
            self.start_dma(PendingDma::Atapi { unit });
        } else if d.lcyl == 0 && d.hcyl == 0 {
            // PIO data needs a byte count limit: without one the ATA command aborts.
            d.atapi.xfer = None;
            self.ata_fail(ABRT);
        } else {
            d.status = DRDY | DSC;
            self.atapi_next_block();
        }
    }

    /// The next PIO DRQ block of the reply (as many bytes as the byte count limit
    /// allows, even unless it is the last), or the end of the command.
    pub(super) fn atapi_next_block(&mut self) {
        let d = self.sel();
        let Some(mut x) = d.atapi.xfer.take() else { return };
        let remaining = x.remaining();
        if remaining == 0 {
            return self.atapi_ok();
        }
        let limit = match u64::from(d.lcyl) | u64::from(d.hcyl) << 8 {
            0xffff => 0xfffe,
            l => l,
        };
        let size = match remaining {
            r if r <= limit => r,
            _ if limit >= 2 => limit & !1,
            _ => remaining.min(0xfffe),
        } as usize;
        d.lcyl = size as u8;
        d.hcyl = (size >> 8) as u8;
        d.nsector = (d.nsector & !7) | IO;
        // An odd count ends with a padded word.
        let padded = (size + 1) & !1;
        let backend = d.backend.clone();
        let buf = d.buffer(padded);
        buf[size..].fill(0);
        if let Err(e) = x.fill(backend.as_deref(), &mut buf[..size]) {
            return self.atapi_io_error(&e);
        }
        d.atapi.xfer = Some(x);
        d.status = DRDY | DSC;
        d.start_in(padded, InDone::AtapiReply);
        self.raise_irq();
    }
}
