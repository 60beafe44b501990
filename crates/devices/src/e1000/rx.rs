//! Receive: filtering, and the receive ring of legacy 16-byte descriptors.
//!
//! A descriptor is the buffer's address (8 bytes), then what the NIC writes back:
//! length (2), checksum (2), status (1: DD, EOP, IXSM, VP), errors (1) and special
//! (2: the VLAN tag stripped off). The ring lies at RDBAH:RDBAL, RDLEN bytes long; the
//! NIC fills descriptors from the head (RDH) up to, not including, the tail (RDT),
//! which the driver advances as it hands buffers back.
//!
//! A frame is taken while the link is up and RCTL.EN is set (otherwise it is dropped);
//! shorter than 60 bytes it is padded to 60 (the minimum without FCS), longer than
//! 1518 (1522 with FCS) without RCTL.LPE or 16124 with it it is dropped unless SBP.
//! It passes the filters if: its VLAN (if 802.1Q tagged with VET's type and VFE is
//! set) has its VFTA bit, its CFI matches RCTL.CFI when CFIEN is set, and its
//! destination is broadcast with BAM, multicast with MPE, unicast with UPE, in the
//! RA table (valid entries), or hashed into the MTA (12 address bits picked by
//! RCTL.MO). With CTRL.VME the tag is stripped into the descriptor's special field
//! with VP set. Without RCTL.SECRC, 4 bytes of (zero) FCS follow the frame, as the
//! length Linux subtracts them from expects.
//!
//! A frame larger than a buffer (RCTL.BSIZE/BSEX) spans descriptors, EOP on its last.
//! With no free descriptor at all, or a ring that makes no sense (length 0, head or
//! tail past its end), or bus mastering off, the frame is refused: the backend holds
//! it until RDT moves (or bus mastering comes on) and the NIC resumes it. With some
//! free descriptors but too few, it is dropped and counted (MPC, RNBC) with RXO, as
//! QEMU does. Each frame raises RXT0, SRPD when it is no longer than RSRPD, and
//! RXDMT0 when the free descriptors left drop to the RCTL.RDMTS fraction of the ring.
//!
//! Receive checksum offload (RXCSUM.IPOFLD, TUOFLD), as the 82540 does it for IPv4:
//! the last descriptor of an unfragmented IPv4 frame says IPCS (header checked) and
//! TCPCS (TCP or UDP checked), with IPE or TCPE when the check failed; anything else
//! gets IXSM (ignore the checksum indication) and the driver checks for itself.
//! QEMU sets IXSM always; checking here, in native code, spares the guest a pass over
//! every byte it receives, which under a JIT is the dearer place for it.

use super::regs::*;
use super::tx::{fold, ones_sum};
use super::State;

const DESC_SIZE: u64 = 16;
/// The shortest frame without FCS.
const MIN_FRAME: usize = 60;
/// The longest frames without FCS, without and with RCTL.LPE.
const MAX_FRAME_SHORT: usize = 1518;
const MAX_FRAME_LONG: usize = 16128 - 4;
const FCS_LEN: usize = 4;
/// Zeros for padding and the FCS.
static ZEROS: [u8; MIN_FRAME + FCS_LEN] = [0; MIN_FRAME + FCS_LEN];

// Descriptor status bits.
const STAT_DD: u8 = 1 << 0;
const STAT_EOP: u8 = 1 << 1;
const STAT_IXSM: u8 = 1 << 2;
const STAT_VP: u8 = 1 << 3;
const STAT_TCPCS: u8 = 1 << 5;
const STAT_IPCS: u8 = 1 << 6;
// Descriptor error bits.
const ERR_TCPE: u8 = 1 << 5;
const ERR_IPE: u8 = 1 << 6;
// RXCSUM bits.
const RXCSUM_IPOFLD: u32 = 1 << 8;
const RXCSUM_TUOFLD: u32 = 1 << 9;

/// The checksum status and error bits of `frame` (as it came off the wire, tagged or
/// not) under RXCSUM's offloads.
fn rx_checksums(frame: &[u8], rxcsum: u32) -> (u8, u8) {
    const NONE: (u8, u8) = (STAT_IXSM, 0);
    if rxcsum & (RXCSUM_IPOFLD | RXCSUM_TUOFLD) == 0 {
        return NONE;
    }
    let mut l3 = 14;
    let mut ethertype = frame.get(12..14).map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
    if ethertype == 0x8100 {
        ethertype = frame.get(16..18).map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
        l3 = 18;
    }
    let Some(ip) = frame.get(l3..).filter(|_| ethertype == 0x0800) else { return NONE };
    let ihl = usize::from(ip.first().copied().unwrap_or(0) & 0xf) * 4;
    if ip.len() < 20 || ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl {
        return NONE;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < ihl || total > ip.len() {
        return NONE;
    }
    let (mut status, mut errors) = (0, 0);
    if rxcsum & RXCSUM_IPOFLD != 0 {
        status |= STAT_IPCS;
        if fold(ones_sum(&ip[..ihl])) != 0xffff {
            errors |= ERR_IPE;
        }
    }
    // Fragments are checked only whole, by the OS.
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let l4 = &ip[ihl..total];
    let proto = ip[9];
    let checkable = match proto {
        6 => l4.len() >= 20,
        17 => l4.len() >= 8 && l4[6..8] != [0, 0],
        _ => false,
    };
    if rxcsum & RXCSUM_TUOFLD != 0 && !fragment && checkable {
        status |= STAT_TCPCS;
        let pseudo = ones_sum(&ip[12..20]) + u64::from(proto) + l4.len() as u64;
        if fold(pseudo + ones_sum(l4)) != 0xffff {
            errors |= ERR_TCPE;
        }
    }
    if status == 0 {
        NONE
    } else {
        (status, errors)
    }
}

impl State {
    /// The receive ring's base and descriptor count, if it makes sense.
    fn rx_ring(&self) -> Option<(u64, u32)> {
        let count = self.reg(RDLEN) / DESC_SIZE as u32;
        let (head, tail) = (self.reg(RDH), self.reg(RDT));
        if count == 0 || head >= count || tail >= count {
            return None;
        }
        Some(((u64::from(self.reg(RDBAH)) << 32) | u64::from(self.reg(RDBAL) & !0xf), count))
    }

    /// Free descriptors: from the head up to the tail.
    fn rx_free(&self, count: u32) -> u32 {
        let (head, tail) = (self.reg(RDH), self.reg(RDT));
        if tail >= head {
            tail - head
        } else {
            count - head + tail
        }
    }

    /// Whether a frame refused for want of room could be taken now.
    pub(super) fn rx_has_room(&self) -> bool {
        self.rx_ring().is_some_and(|(_, count)| self.rx_free(count) > 0)
    }

    /// The receive buffer size RCTL selects.
    fn rx_buf_size(&self) -> usize {
        let rctl = self.reg(RCTL);
        match ((rctl >> RCTL_BSIZE_SHIFT) & 3, rctl & RCTL_BSEX != 0) {
            (1, false) => 1024,
            (2, false) => 512,
            (3, false) => 256,
            (1, true) => 16384,
            (2, true) => 8192,
            (3, true) => 4096,
            _ => 2048,
        }
    }

    /// Whether the destination and VLAN filters pass a frame starting with `hdr`
    /// (its first 18 bytes, padded).
    fn rx_filter(&self, hdr: &[u8; 18], tagged: bool) -> bool {
        let rctl = self.reg(RCTL);
        if tagged {
            let tci = u16::from_be_bytes([hdr[14], hdr[15]]);
            if rctl & RCTL_CFIEN != 0 && (tci & 0x1000 != 0) != (rctl & RCTL_CFI != 0) {
                return false;
            }
            if rctl & RCTL_VFE != 0 {
                let vid = u32::from(tci & 0xfff);
                if self.reg(VFTA + 4 * (vid >> 5)) & (1 << (vid & 0x1f)) == 0 {
                    return false;
                }
            }
        }
        let dest = &hdr[..6];
        if dest == [0xff; 6] {
            if rctl & RCTL_BAM != 0 {
                return true;
            }
        } else if dest[0] & 1 != 0 {
            if rctl & RCTL_MPE != 0 {
                return true;
            }
        } else if rctl & RCTL_UPE != 0 {
            return true;
        }
        for i in 0..16 {
            let (lo, hi) = (self.reg(RA + 8 * i), self.reg(RA + 8 * i + 4));
            if hi & RAH_AV != 0 && dest[..4] == lo.to_le_bytes() && dest[4..] == hi.to_le_bytes()[..2] {
                return true;
            }
        }
        // The multicast table: 12 bits of the address's last two bytes.
        let shift = [4, 3, 2, 0][((rctl >> RCTL_MO_SHIFT) & 3) as usize];
        let hash = ((u32::from(dest[5]) << 8 | u32::from(dest[4])) >> shift) & 0xfff;
        self.reg(MTA + 4 * (hash >> 5)) & (1 << (hash & 0x1f)) != 0
    }

    /// Takes one frame from the wire. False means no room now (the backend holds it).
    pub(super) fn receive(&mut self, frame: &[u8]) -> bool {
        if self.reg(STATUS) & STATUS_LU == 0 || self.reg(RCTL) & RCTL_EN == 0 {
            return true;
        }
        if !self.bus_master() {
            return false;
        }
        let Some((base, count)) = self.rx_ring() else {
            quern_core::log_limited!(
                log::Level::Debug,
                "e1000: receive ring unusable (RDLEN {:#x}, RDH {}, RDT {})",
                self.reg(RDLEN),
                self.reg(RDH),
                self.reg(RDT)
            );
            return false;
        };
        let free = self.rx_free(count);
        if free == 0 {
            return false;
        }
        let rctl = self.reg(RCTL);
        let padded = frame.len().max(MIN_FRAME);
        let max = if rctl & RCTL_LPE != 0 { MAX_FRAME_LONG } else { MAX_FRAME_SHORT };
        if padded > max && rctl & RCTL_SBP == 0 {
            self.bump(ROC);
            return true;
        }
        let mut hdr = [0u8; 18];
        let n = frame.len().min(hdr.len());
        hdr[..n].copy_from_slice(&frame[..n]);
        let tagged = frame.len() >= 18 && u16::from_be_bytes([hdr[12], hdr[13]]) == self.reg(VET) as u16;
        if !self.rx_filter(&hdr, tagged) {
            return true;
        }

        // The frame as it goes to memory: its bytes (less the tag when stripped),
        // padding, FCS.
        let strip = tagged && self.reg(CTRL) & CTRL_VME != 0;
        let (parts, special, vp) = if strip {
            ([&frame[..12], &frame[16..]], u16::from_be_bytes([hdr[14], hdr[15]]), STAT_VP)
        } else {
            ([frame, &[][..]], 0, 0)
        };
        let pad = &ZEROS[..padded - frame.len()];
        let size = padded - if strip { 4 } else { 0 };
        let fcs = if rctl & RCTL_SECRC != 0 { 0 } else { FCS_LEN };
        let total = size + fcs;
        let stream = [parts[0], parts[1], pad, &ZEROS[..fcs]];

        let buf_size = self.rx_buf_size();
        if total.div_ceil(buf_size) > free as usize {
            self.rx_overrun();
            return true;
        }
        let (csum_status, csum_errors) = rx_checksums(frame, self.reg(RXCSUM));
        let (mut head, tail) = (self.reg(RDH), self.reg(RDT));
        let mut done = 0;
        while done < total {
            let Some(at) = base.checked_add(u64::from(head) * DESC_SIZE) else { break };
            let Ok(buf) = self.mem.read_u64(at) else {
                quern_core::log_limited!(log::Level::Warn, "e1000: receive descriptor at {at:#x} is not in memory");
                self.set_reg(RDH, head);
                return true;
            };
            let (mut len, mut status, mut errors) = (0, STAT_DD | vp, 0);
            // A descriptor without a buffer is skipped (written back, no data).
            if buf != 0 {
                len = (total - done).min(buf_size);
                if write_stream(&self.mem, buf, &stream, done, len).is_err() {
                    quern_core::log_limited!(log::Level::Warn, "e1000: receive buffer at {buf:#x} is not in RAM");
                }
                done += len;
                if done >= total {
                    status |= STAT_EOP | csum_status;
                    errors = csum_errors;
                }
            }
            // Length and checksum, errors and special, then the status with DD.
            let mut wb = [0u8; 8];
            wb[..2].copy_from_slice(&(len as u16).to_le_bytes());
            wb[5] = errors;
            wb[6..].copy_from_slice(&special.to_le_bytes());
            let _ = self.mem.dma_write(at.wrapping_add(8), &wb[..4]);
            let _ = self.mem.dma_write(at.wrapping_add(13), &wb[5..]);
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            let _ = self.mem.dma_write(at.wrapping_add(12), &[status]);
            head = (head + 1) % count;
            if done < total && head == tail {
                // Buffers without addresses used up the room.
                self.set_reg(RDH, head);
                self.rx_overrun();
                return true;
            }
        }
        self.set_reg(RDH, head);

        self.rx_stats(&hdr[..6], size, total);
        let mut causes = ICR_RXT0;
        // Small receive packet detection: frames of at most RSRPD bytes (with FCS).
        let small = self.reg(RSRPD) as usize;
        if small != 0 && total <= small {
            causes |= ICR_SRPD;
        }
        let shift = ((rctl >> RCTL_RDMTS_SHIFT) & 3) + 1;
        if u64::from(self.rx_free(count)) * DESC_SIZE <= u64::from(self.reg(RDLEN) >> shift) {
            causes |= ICR_RXDMT0;
        }
        self.set_causes(causes);
        true
    }

    /// No room for a frame that was not held: counted as missed.
    fn rx_overrun(&mut self) {
        self.bump(RNBC);
        self.bump(MPC);
        self.set_causes(ICR_RXO);
    }

    fn rx_stats(&mut self, dest: &[u8], size: usize, total: usize) {
        self.bump(TPR);
        self.bump(GPRC);
        self.add64(TORL, size as u64 + 4);
        self.add64(GORCL, size as u64 + 4);
        if dest == [0xff; 6] {
            self.bump(BPRC);
        } else if dest[0] & 1 != 0 {
            self.bump(MPRC);
        }
        self.bump_size(PRC64, total);
    }

    /// Adds one to a statistics counter, which sticks at its maximum.
    pub(super) fn bump(&mut self, off: u32) {
        self.set_reg(off, self.reg(off).saturating_add(1));
    }

    /// Adds to a 64-bit counter whose low half is at `lo`.
    pub(super) fn add64(&mut self, lo: u32, n: u64) {
        let v = (u64::from(self.reg(lo + 4)) << 32 | u64::from(self.reg(lo))).saturating_add(n);
        self.set_reg(lo, v as u32);
        self.set_reg(lo + 4, (v >> 32) as u32);
    }

    /// Counts a frame of `size` bytes (with FCS) in the size bins from `base` (64,
    /// 65-127, 128-255, 256-511, 512-1023, 1024 and up).
    pub(super) fn bump_size(&mut self, base: u32, size: usize) {
        let bin = match size {
            0..=63 => return,
            64 => 0,
            65..=127 => 1,
            128..=255 => 2,
            256..=511 => 3,
            512..=1023 => 4,
            _ => 5,
        };
        self.bump(base + 4 * bin);
    }
}

/// Writes `len` bytes from offset `start` of the concatenation of `parts` to `addr`.
fn write_stream(
    mem: &quern_core::GuestMemory,
    mut addr: u64,
    parts: &[&[u8]],
    mut start: usize,
    mut len: usize,
) -> Result<(), quern_core::MemoryError> {
    for part in parts {
        if len == 0 {
            break;
        }
        if start >= part.len() {
            start -= part.len();
            continue;
        }
        let chunk = &part[start..part.len().min(start + len)];
        mem.dma_write(addr, chunk)?;
        addr = addr.wrapping_add(chunk.len() as u64);
        len -= chunk.len();
        start = 0;
    }
    Ok(())
}
