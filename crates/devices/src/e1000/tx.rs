//! Transmit: the transmit ring, checksum offload and TCP segmentation (TSO).
//!
//! The ring (TDBAH:TDBAL, TDLEN bytes of 16-byte descriptors) is processed from the
//! head (TDH) up to the tail (TDT) whenever the driver writes TDT or enables TCTL.EN,
//! at most one ring's worth per write. Three kinds of descriptor:
//! - legacy (DEXT clear): buffer, length (16 bits), CSO, CMD, status, CSS, special.
//!   IC inserts a checksum of the bytes from CSS to the end at CSO;
//! - context (DEXT, DTYP 0): where the IP checksum starts, goes and ends
//!   (IPCSS/IPCSO/IPCSE), the same for TCP/UDP (TUCSS/TUCSO/TUCSE), and for
//!   segmentation (TSE) the header length, MSS and whether the packet is IPv4 and TCP.
//!   Segmentation and plain offload keep a context each, as QEMU does;
//! - data (DEXT, DTYP 1): buffer, length (20 bits), DCMD (TSE among others) and
//!   POPTS (IXSM: insert the IP checksum, TXSM: the TCP/UDP one), taken from the
//!   packet's first data descriptor.
//!
//! CMD bits common to all: EOP ends a packet, RS asks for DD written back into the
//! status (TXDW then raised), VLE inserts the 802.1Q tag (VET, then the special
//! field) after the addresses when CTRL.VME is set. IFCS is accepted and does nothing
//! (frames go to the backend without FCS); TCTL.PSP pads short frames to 60 bytes.
//!
//! Segmentation cuts the payload after the header into MSS-sized pieces and sends
//! each behind a copy of the header with: the IPv4 total length and identification
//! (plus the segment's index) or the IPv6 payload length, the TCP sequence number
//! advanced by the bytes before it and FIN/PSH only on the last (UDP: its length),
//! and the checksums: the driver leaves the pseudo-header sum without the length in
//! the TCP/UDP checksum field, the NIC adds each segment's length and sums the rest.
//!
//! A packet is assembled whole before it is sent, at most 64 KiB of payload plus 256
//! bytes of header: a longer one, or one whose buffer is not in memory, is dropped at
//! its EOP. Descriptors that cannot be read stop the ring where they are.

use super::regs::*;
use super::{Deferred, State};

const DESC_SIZE: u64 = 16;
/// The most a packet assembled from descriptors may hold.
const MAX_PACKET: usize = 0x10000 + 256;

// CMD bits (bits 31:24 of the descriptor's second dword).
const CMD_EOP: u32 = 1 << 24;
const CMD_IC: u32 = 1 << 26;
const CMD_TSE: u32 = 1 << 26;
const CMD_RS: u32 = 1 << 27;
const CMD_RPS: u32 = 1 << 28;
const CMD_DEXT: u32 = 1 << 29;
const CMD_VLE: u32 = 1 << 30;
// Context descriptor TUCMD bits.
const TUCMD_TCP: u32 = 1 << 24;
const TUCMD_IP: u32 = 1 << 25;
// Status: descriptor done; excess collisions, late collision, underrun cleared.
const STA_DD: u32 = 1 << 0;
const STA_ERRORS: u32 = 0xe;
// POPTS.
const POPTS_IXSM: u8 = 1 << 0;
const POPTS_TXSM: u8 = 1 << 1;

/// What a context descriptor sets up.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Context {
    ipcss: usize,
    ipcso: usize,
    ipcse: usize,
    tucss: usize,
    tucso: usize,
    tucse: usize,
    hdr_len: usize,
    mss: usize,
    ipv4: bool,
    tcp: bool,
}

impl Context {
    fn parse(d: &[u8; 16]) -> Self {
        let cmd = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
        Context {
            ipcss: d[0].into(),
            ipcso: d[1].into(),
            ipcse: u16::from_le_bytes([d[2], d[3]]).into(),
            tucss: d[4].into(),
            tucso: d[5].into(),
            tucse: u16::from_le_bytes([d[6], d[7]]).into(),
            hdr_len: d[13].into(),
            mss: u16::from_le_bytes([d[14], d[15]]).into(),
            ipv4: cmd & TUCMD_IP != 0,
            tcp: cmd & TUCMD_TCP != 0,
        }
    }
}

/// The transmit side's state between descriptors.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct TxState {
    ctx: Context,
    tso_ctx: Context,
    /// The packet being assembled.
    data: Vec<u8>,
    /// A descriptor of the packet has been seen (its POPTS are taken).
    started: bool,
    popts: u8,
    tse: bool,
    vlan: Option<u16>,
    /// A legacy descriptor's IC: (CSO, CSS).
    legacy_sum: Option<(usize, usize)>,
    /// The packet is lost (too long, or a buffer outside memory).
    dropped: bool,
}

impl State {
    /// Processes the ring from TDH to TDT, leaving frames to send in `d`.
    pub(super) fn start_xmit(&mut self, d: &mut Deferred) {
        if self.reg(TCTL) & TCTL_EN == 0 || !self.bus_master() {
            return;
        }
        let count = self.reg(TDLEN) / DESC_SIZE as u32;
        let (mut head, tail) = (self.reg(TDH), self.reg(TDT));
        if head == tail {
            return;
        }
        if count == 0 || head >= count || tail >= count {
            quern_core::log_limited!(
                log::Level::Debug,
                "e1000: transmit ring unusable (TDLEN {:#x}, TDH {head}, TDT {tail})",
                self.reg(TDLEN)
            );
            return;
        }
        let base = (u64::from(self.reg(TDBAH)) << 32) | u64::from(self.reg(TDBAL) & !0xf);
        let mut causes = 0;
        let mut done = 0;
        while head != tail && done < count {
            let Some(at) = base.checked_add(u64::from(head) * DESC_SIZE) else { break };
            let mut desc = [0u8; 16];
            if self.mem.read(at, &mut desc).is_err() {
                quern_core::log_limited!(log::Level::Warn, "e1000: transmit descriptor at {at:#x} is not in memory");
                break;
            }
            self.tx_descriptor(&desc, d);
            let cmd = u32::from_le_bytes([desc[8], desc[9], desc[10], desc[11]]);
            if cmd & (CMD_RS | CMD_RPS) != 0 {
                let upper = u32::from_le_bytes([desc[12], desc[13], desc[14], desc[15]]);
                let upper = (upper | STA_DD) & !STA_ERRORS;
                let _ = self.mem.dma_write(at.wrapping_add(12), &upper.to_le_bytes());
                causes |= ICR_TXDW;
            }
            head = (head + 1) % count;
            done += 1;
        }
        self.set_reg(TDH, head);
        if head == tail {
            causes |= ICR_TXQE;
        }
        if causes != 0 {
            self.set_causes(causes);
        }
    }

    fn tx_descriptor(&mut self, desc: &[u8; 16], d: &mut Deferred) {
        let addr = u64::from_le_bytes(desc[..8].try_into().unwrap_or_default());
        let cmd = u32::from_le_bytes([desc[8], desc[9], desc[10], desc[11]]);
        let upper = u32::from_le_bytes([desc[12], desc[13], desc[14], desc[15]]);
        let dtyp = (cmd >> 20) & 0xf;
        let extended = cmd & CMD_DEXT != 0;
        let tx = &mut self.tx;
        let (len, tse) = match (extended, dtyp) {
            (true, 0) => {
                let ctx = Context::parse(desc);
                if cmd & CMD_TSE != 0 {
                    tx.tso_ctx = ctx;
                } else {
                    tx.ctx = ctx;
                }
                return;
            }
            (true, 1) => {
                if !tx.started {
                    tx.popts = (upper >> 8) as u8;
                }
                ((cmd & 0xf_ffff) as usize, cmd & CMD_TSE != 0)
            }
            _ => {
                if cmd & CMD_IC != 0 {
                    tx.legacy_sum = Some((((cmd >> 16) & 0xff) as usize, ((upper >> 8) & 0xff) as usize));
                }
                ((cmd & 0xffff) as usize, false)
            }
        };
        tx.started = true;
        tx.tse = tse;
        if self.regs[(CTRL >> 2) as usize] & CTRL_VME != 0 && cmd & CMD_VLE != 0 && (tse || cmd & CMD_EOP != 0) {
            tx.vlan = Some((upper >> 16) as u16);
        }
        if len > 0 && !tx.dropped {
            let old = tx.data.len();
            if old + len > MAX_PACKET {
                quern_core::log_limited!(log::Level::Warn, "e1000: transmit packet over {MAX_PACKET} bytes dropped");
                tx.dropped = true;
            } else {
                tx.data.resize(old + len, 0);
                if self.mem.read(addr, &mut tx.data[old..]).is_err() {
                    quern_core::log_limited!(log::Level::Warn, "e1000: transmit buffer at {addr:#x} is not in memory");
                    tx.dropped = true;
                }
            }
        }
        if cmd & CMD_EOP != 0 {
            let data = std::mem::take(&mut tx.data);
            if !tx.dropped {
                if tx.tse {
                    self.tx_segments(data, d);
                } else {
                    self.tx_single(data, d);
                }
            }
            let tx = &mut self.tx;
            tx.started = false;
            tx.popts = 0;
            tx.tse = false;
            tx.vlan = None;
            tx.legacy_sum = None;
            tx.dropped = false;
        }
    }

    /// A packet sent as it is, with the checksums asked for.
    fn tx_single(&mut self, mut frame: Vec<u8>, d: &mut Deferred) {
        let (c, popts) = (self.tx.ctx, self.tx.popts);
        if popts & POPTS_TXSM != 0 {
            put_checksum(&mut frame, c.tucso, c.tucss, c.tucse);
        }
        if popts & POPTS_IXSM != 0 {
            put_checksum(&mut frame, c.ipcso, c.ipcss, c.ipcse);
        }
        if let Some((cso, css)) = self.tx.legacy_sum {
            put_checksum(&mut frame, cso, css, 0);
        }
        self.tx_frame(frame, d);
    }

    /// A TSO packet cut into segments.
    fn tx_segments(&mut self, data: Vec<u8>, d: &mut Deferred) {
        let (c, popts) = (self.tx.tso_ctx, self.tx.popts);
        if data.len() < c.hdr_len {
            quern_core::log_limited!(log::Level::Debug, "e1000: TSO packet shorter than its header dropped");
            return;
        }
        let (header, payload) = data.split_at(c.hdr_len);
        let mss = if c.mss == 0 { payload.len().max(1) } else { c.mss };
        let segments = payload.len().div_ceil(mss).max(1);
        for i in 0..segments {
            let start = i * mss;
            let chunk = &payload[start..payload.len().min(start + mss)];
            let last = i + 1 == segments;
            let mut f = Vec::with_capacity(header.len() + chunk.len() + 4);
            f.extend_from_slice(header);
            f.extend_from_slice(chunk);
            let len = f.len();
            if c.ipv4 {
                put_be16(&mut f, c.ipcss + 2, len.saturating_sub(c.ipcss) as u16);
                let id = get_be16(&f, c.ipcss + 4).wrapping_add(i as u16);
                put_be16(&mut f, c.ipcss + 4, id);
            } else {
                put_be16(&mut f, c.ipcss + 4, len.saturating_sub(c.ipcss + 40) as u16);
            }
            let l4_len = len.saturating_sub(c.tucss);
            if c.tcp {
                let seq = get_be32(&f, c.tucss + 4).wrapping_add(start as u32);
                put_be32(&mut f, c.tucss + 4, seq);
                if !last {
                    if let Some(flags) = f.get_mut(c.tucss + 13) {
                        // FIN and PSH belong to the last segment.
                        *flags &= !0x09;
                    }
                }
            } else {
                put_be16(&mut f, c.tucss + 4, l4_len as u16);
            }
            if popts & POPTS_TXSM != 0 {
                // The pseudo-header sum the driver left, plus this segment's length.
                let sum = u32::from(get_be16(&f, c.tucso)) + l4_len as u32;
                put_be16(&mut f, c.tucso, fold(u64::from(sum)));
                put_checksum(&mut f, c.tucso, c.tucss, c.tucse);
            }
            if popts & POPTS_IXSM != 0 {
                put_checksum(&mut f, c.ipcso, c.ipcss, c.ipcse);
            }
            self.tx_frame(f, d);
        }
        self.bump(TSCTC);
    }

    /// Finishes a frame (VLAN tag, padding), counts it and queues it.
    fn tx_frame(&mut self, mut frame: Vec<u8>, d: &mut Deferred) {
        if let (Some(tci), true) = (self.tx.vlan, frame.len() >= 12) {
            let vet = self.reg(VET) as u16;
            let tag = [vet.to_be_bytes(), tci.to_be_bytes()].concat();
            frame.splice(12..12, tag);
        }
        if self.reg(TCTL) & TCTL_PSP != 0 && frame.len() < 60 {
            frame.resize(60, 0);
        }
        let len = frame.len();
        self.bump(TPT);
        self.bump(GPTC);
        self.add64(TOTL, len as u64 + 4);
        self.add64(GOTCL, len as u64 + 4);
        if frame.len() >= 6 && frame[..6] == [0xff; 6] {
            self.bump(BPTC);
        } else if frame.first().is_some_and(|b| b & 1 != 0) {
            self.bump(MPTC);
        }
        self.bump_size(PTC64, len + 4);
        d.loopback = self.phy.loopback();
        d.frames.push(frame);
    }
}

fn get_be16(f: &[u8], at: usize) -> u16 {
    match f.get(at..at + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

fn put_be16(f: &mut [u8], at: usize, v: u16) {
    if let Some(b) = f.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

fn get_be32(f: &[u8], at: usize) -> u32 {
    match f.get(at..at + 4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

fn put_be32(f: &mut [u8], at: usize, v: u32) {
    if let Some(b) = f.get_mut(at..at + 4) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

/// The ones' complement sum of `data` as big-endian 16-bit words (an odd last byte
/// padded with zero), not yet folded.
pub(super) fn ones_sum(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks.by_ref().map(|w| u64::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    if let [b] = chunks.remainder() {
        sum += u64::from(*b) << 8;
    }
    sum
}

/// Folds a sum to 16 bits with end-around carry.
pub(super) fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Stores at `sloc` the Internet checksum of the bytes from `css` to `cse` inclusive
/// (0: to the end), as the NIC inserts it (a result of 0 goes out as 0xffff). Offsets
/// outside the frame insert nothing.
fn put_checksum(f: &mut [u8], sloc: usize, css: usize, cse: usize) {
    let mut end = f.len();
    if cse != 0 && cse < end {
        end = cse + 1;
    }
    if css >= end || sloc + 2 > end {
        return;
    }
    let sum = !fold(ones_sum(&f[css..end]));
    put_be16(f, sloc, if sum == 0 { 0xffff } else { sum });
}
