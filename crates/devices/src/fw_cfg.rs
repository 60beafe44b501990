//! QEMU's firmware configuration device (fw_cfg), the way firmware (SeaBIOS, OVMF,
//! linuxboot option ROMs) asks the machine for its RAM size, CPU count, e820 map, ACPI
//! and SMBIOS tables, boot order, kernel and initrd. The interface is QEMU's
//! (docs/specs/fw_cfg.rst), on the x86 ports:
//!
//! - 0x510, 16 bits, write: the selector (an item's key); the read offset restarts at 0.
//! - 0x510/0x511, 8 bits, read: the next byte of the selected item (zeros past its end
//!   or for a key with no item). Data writes are ignored, as QEMU has done since 2.4.
//! - 0x514 (high 32 bits) and 0x518 (low 32 bits), big-endian: the guest-physical
//!   address of a `FWCfgDmaAccess` (be32 control, be32 length, be64 address); writing
//!   the low half (or all 64 bits at 0x514) runs the transfer it describes. Control
//!   bits: error 0x01, read 0x02, skip 0x04, select 0x08 (key in bits 31:16), write
//!   0x10. The device writes the control word back: 0 when done, the error bit on a
//!   failure. Reading 0x514 gives the signature "QEMU CFG".
//!
//! Items are blobs under 16-bit keys: key 0 is the signature "QEMU", key 1 the
//! feature bits (traditional interface and DMA), key 0x19 the file directory
//! (big-endian count, then per file be32 size, be16 key, be16 reserved and a
//! NUL-padded 56-byte name, sorted by name); named files get keys from 0x20 on. Every
//! item is read-only to the guest: a DMA write sets the error bit.

use std::collections::BTreeMap;
use std::sync::Arc;

use quern_core::{BusDevice, GuestMemory, RegionKind};
use thiserror::Error;

use crate::port::le_value;

/// First port of the device: selector at +0, data at +1, DMA address at +4..+12.
pub const FW_CFG_IO_BASE: u16 = 0x510;
/// Ports the device answers (0x510-0x51b).
pub const FW_CFG_IO_LEN: u64 = 12;
const DMA_OFFSET: u64 = 4;
/// Read back from the DMA address register: "QEMU CFG", big-endian.
const DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;

/// Well-known keys (QEMU's FW_CFG_*).
pub mod key {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const UUID: u16 = 0x02;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NOGRAPHIC: u16 = 0x04;
    pub const NB_CPUS: u16 = 0x05;
    pub const MACHINE_ID: u16 = 0x06;
    pub const KERNEL_ADDR: u16 = 0x07;
    pub const KERNEL_SIZE: u16 = 0x08;
    pub const KERNEL_CMDLINE: u16 = 0x09;
    pub const INITRD_ADDR: u16 = 0x0a;
    pub const INITRD_SIZE: u16 = 0x0b;
    pub const BOOT_DEVICE: u16 = 0x0c;
    pub const NUMA: u16 = 0x0d;
    pub const BOOT_MENU: u16 = 0x0e;
    pub const MAX_CPUS: u16 = 0x0f;
    pub const KERNEL_ENTRY: u16 = 0x10;
    pub const KERNEL_DATA: u16 = 0x11;
    pub const INITRD_DATA: u16 = 0x12;
    pub const CMDLINE_ADDR: u16 = 0x13;
    pub const CMDLINE_SIZE: u16 = 0x14;
    pub const CMDLINE_DATA: u16 = 0x15;
    pub const SETUP_ADDR: u16 = 0x16;
    pub const SETUP_SIZE: u16 = 0x17;
    pub const SETUP_DATA: u16 = 0x18;
    pub const FILE_DIR: u16 = 0x19;
    /// Keys of named files start here.
    pub const FILE_FIRST: u16 = 0x20;
    /// x86's own keys (bit 15): legacy ACPI and SMBIOS lists, the IRQ0 override, e820.
    pub const ACPI_TABLES: u16 = 0x8000;
    pub const SMBIOS_ENTRIES: u16 = 0x8001;
    pub const IRQ0_OVERRIDE: u16 = 0x8002;
    pub const E820_TABLE: u16 = 0x8003;
}

/// Bits of key 1 (FW_CFG_ID).
const FEATURE_TRADITIONAL: u32 = 1 << 0;
const FEATURE_DMA: u32 = 1 << 1;
/// Selector bit 14 asks for writing (unsupported: every item is read-only).
const WRITE_CHANNEL: u16 = 0x4000;

/// DMA control bits.
pub mod dma {
    pub const ERROR: u32 = 0x01;
    pub const READ: u32 = 0x02;
    pub const SKIP: u32 = 0x04;
    pub const SELECT: u32 = 0x08;
    pub const WRITE: u32 = 0x10;
}

/// Longest file name, without its NUL.
pub const MAX_NAME: usize = 55;
/// The most named files the key space after [`key::FILE_FIRST`] holds before x86's keys.
const MAX_FILES: usize = (0x4000 - key::FILE_FIRST) as usize;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("fw_cfg file name {0:?} is empty or longer than 55 bytes")]
    BadName(String),
    #[error("fw_cfg file {0:?} was added twice")]
    Duplicate(String),
    #[error("fw_cfg has no room for another file")]
    Full,
}

/// The fw_cfg device: its items and the guest's position in the selected one.
pub struct FwCfg {
    mem: Arc<GuestMemory>,
    items: BTreeMap<u16, Arc<[u8]>>,
    /// Named files: name → key.
    files: BTreeMap<String, u16>,
    selected: u16,
    offset: usize,
    /// The DMA address's high half, latched until the low half arrives.
    dma_high: u64,
}

impl FwCfg {
    /// A device with the signature, the feature bits and an empty directory, doing DMA
    /// into `mem`.
    pub fn new(mem: Arc<GuestMemory>) -> Self {
        let mut f = FwCfg { mem, items: BTreeMap::new(), files: BTreeMap::new(), selected: 0, offset: 0, dma_high: 0 };
        f.add_bytes(key::SIGNATURE, b"QEMU".to_vec());
        f.add_u32(key::ID, FEATURE_TRADITIONAL | FEATURE_DMA);
        f.rebuild_directory();
        f
    }

    /// Sets the item under `key` (replacing any).
    pub fn add_bytes(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key & !WRITE_CHANNEL, data.into());
    }

    /// Numeric items are little-endian, as firmware reads them on x86.
    pub fn add_u16(&mut self, key: u16, v: u16) {
        self.add_bytes(key, v.to_le_bytes().to_vec());
    }
    pub fn add_u32(&mut self, key: u16, v: u32) {
        self.add_bytes(key, v.to_le_bytes().to_vec());
    }
    pub fn add_u64(&mut self, key: u16, v: u64) {
        self.add_bytes(key, v.to_le_bytes().to_vec());
    }

    /// Adds a named file; returns its key.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
            return Err(FwCfgError::BadName(name.into()));
        }
        if self.files.contains_key(name) {
            return Err(FwCfgError::Duplicate(name.into()));
        }
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::Full);
        }
        let k = key::FILE_FIRST + self.files.len() as u16;
        self.files.insert(name.into(), k);
        self.add_bytes(k, data);
        self.rebuild_directory();
        Ok(k)
    }

    /// The item under `key`, if any.
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        self.items.get(&(key & !WRITE_CHANNEL)).map(|d| &d[..])
    }

    /// The named file's contents, if any.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).and_then(|&k| self.item(k))
    }

    fn rebuild_directory(&mut self) {
        let mut dir = (self.files.len() as u32).to_be_bytes().to_vec();
        for (name, &k) in &self.files {
            let size = self.items.get(&k).map_or(0, |d| d.len()) as u32;
            dir.extend(size.to_be_bytes());
            dir.extend(k.to_be_bytes());
            dir.extend([0, 0]);
            let mut n = [0u8; 56];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend(n);
        }
        self.items.insert(key::FILE_DIR, dir.into());
    }

    fn select(&mut self, k: u16) {
        self.selected = k & !WRITE_CHANNEL;
        self.offset = 0;
    }

    /// The next byte of the selected item; zero past its end or with no item.
    fn read_byte(&mut self) -> u8 {
        let b = self.items.get(&self.selected).and_then(|d| d.get(self.offset).copied());
        if b.is_some() {
            self.offset += 1;
        }
        b.unwrap_or(0)
    }

    /// Runs the DMA request whose descriptor is at `desc`. A descriptor the device
    /// cannot read is dropped (there is nowhere to report the error); every other
    /// failure sets the error bit in the descriptor's control word.
    fn dma(&mut self, desc: u64) {
        let mut raw = [0u8; 16];
        if self.mem.read(desc, &mut raw).is_err() {
            quern_core::log_limited!(log::Level::Warn, "fw_cfg: DMA descriptor at {desc:#x} is not in RAM");
            return;
        }
        let control = u32::from_be_bytes(raw[0..4].try_into().unwrap());
        let mut length = u64::from(u32::from_be_bytes(raw[4..8].try_into().unwrap()));
        let mut addr = u64::from_be_bytes(raw[8..16].try_into().unwrap());
        if control & dma::SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let op = if control & dma::READ != 0 {
            dma::READ
        } else if control & dma::WRITE != 0 {
            dma::WRITE
        } else if control & dma::SKIP != 0 {
            dma::SKIP
        } else {
            length = 0;
            0
        };
        let mut status = 0;
        let item = self.items.get(&self.selected).cloned();
        while length > 0 && status == 0 {
            let avail = item.as_ref().map_or(0, |d| d.len().saturating_sub(self.offset)) as u64;
            let n = length.min(if avail == 0 { length } else { avail });
            match op {
                // Past the item's end a read gives zeros.
                dma::READ if avail == 0 => status = u32::from(!write_ram(&self.mem, addr, &vec![0; n as usize])),
                dma::READ => {
                    let d = item.as_ref().expect("avail > 0 means an item");
                    status = u32::from(!write_ram(&self.mem, addr, &d[self.offset..self.offset + n as usize]));
                }
                dma::WRITE => status = dma::ERROR,
                _ => {}
            }
            if avail > 0 {
                self.offset += n as usize;
            }
            addr = addr.wrapping_add(n);
            length -= n;
        }
        if status != 0 {
            quern_core::log_limited!(log::Level::Debug, "fw_cfg: DMA {op:#x} of key {:#x} failed", self.selected);
        }
        // The control word is written back where the guest polls it.
        if self.mem.write(desc, &(status & dma::ERROR).to_be_bytes()).is_err() {
            quern_core::log_limited!(log::Level::Warn, "fw_cfg: cannot complete the DMA descriptor at {desc:#x}");
        }
    }
}

// The guest's place in the selected item; the items are the machine's, built again.
quern_core::snapshot_fields!(FwCfg { selected, offset, dma_high });

/// Copies `data` to guest RAM at `addr`; false (nothing written past the failure) if
/// part of the range is not RAM (ROM, device space, beyond memory).
fn write_ram(mem: &GuestMemory, mut addr: u64, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let Some(r) = mem.region(addr) else { return false };
        if r.kind != RegionKind::Ram {
            return false;
        }
        let n = data.len().min((r.guest_base + r.size - addr) as usize);
        if mem.write(addr, &data[..n]).is_err() {
            return false;
        }
        addr += n as u64;
        data = &data[n..];
    }
    true
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            // Any read of the selector/data pair gives data bytes.
            0 | 1 => data.iter_mut().for_each(|b| *b = self.read_byte()),
            o if (DMA_OFFSET..DMA_OFFSET + 8).contains(&o) => {
                let sig = DMA_SIGNATURE.to_be_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = sig.get((o - DMA_OFFSET) as usize + i).copied().unwrap_or(0xff);
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Registers are big-endian except the selector, which is an x86 port (LE).
        let be = || data.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b));
        match (offset, data.len()) {
            (0, 2) => self.select(le_value(data) as u16),
            // Data writes are ignored (QEMU 2.4 and later).
            (0 | 1, _) => {}
            (4, 4) => self.dma_high = be() << 32,
            (8, 4) => {
                let desc = self.dma_high | be();
                self.dma_high = 0;
                self.dma(desc);
            }
            (4, 8) => {
                self.dma_high = 0;
                self.dma(be());
            }
            _ => quern_core::log_limited!(log::Level::Debug, "fw_cfg: ignored {}-byte write at +{offset}", data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (Arc<GuestMemory>, FwCfg) {
        let mem = Arc::new(GuestMemory::flat(1 << 20).unwrap());
        (mem.clone(), FwCfg::new(mem))
    }

    fn select(f: &mut FwCfg, k: u16) {
        f.write(0, &k.to_le_bytes());
    }

    fn read_n(f: &mut FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| {
                let mut b = [0];
                f.read(if i % 2 == 0 { 1 } else { 0 }, &mut b);
                b[0]
            })
            .collect()
    }

    /// Writes a descriptor at `desc` and starts it through the low address half.
    fn run_dma(f: &mut FwCfg, mem: &GuestMemory, desc: u64, control: u32, len: u32, addr: u64) -> u32 {
        let mut d = control.to_be_bytes().to_vec();
        d.extend(len.to_be_bytes());
        d.extend(addr.to_be_bytes());
        mem.write(desc, &d).unwrap();
        f.write(4, &((desc >> 32) as u32).to_be_bytes());
        f.write(8, &(desc as u32).to_be_bytes());
        u32::from_be_bytes(mem.read_u32(desc).unwrap().to_le_bytes())
    }

    #[test]
    fn signature_and_features() {
        let (_, mut f) = dev();
        select(&mut f, key::SIGNATURE);
        assert_eq!(read_n(&mut f, 4), b"QEMU");
        select(&mut f, key::ID);
        assert_eq!(read_n(&mut f, 4), [3, 0, 0, 0], "traditional + DMA");
        // The DMA register reads "QEMU CFG".
        let mut sig = [0; 8];
        f.read(4, &mut sig);
        assert_eq!(&sig, b"QEMU CFG");
    }

    #[test]
    fn unknown_keys_and_reads_past_the_end_give_zeros() {
        let (_, mut f) = dev();
        select(&mut f, 0x1234);
        assert_eq!(read_n(&mut f, 3), [0, 0, 0]);
        select(&mut f, key::SIGNATURE);
        assert_eq!(read_n(&mut f, 6), [b'Q', b'E', b'M', b'U', 0, 0]);
        // Reselecting restarts at offset 0; data writes change nothing.
        f.write(1, &[0xaa]);
        select(&mut f, key::SIGNATURE);
        assert_eq!(read_n(&mut f, 1), b"Q");
    }

    #[test]
    fn directory_lists_files_sorted_big_endian() {
        let (_, mut f) = dev();
        let k1 = f.add_file("etc/zzz", vec![1, 2, 3]).unwrap();
        let k2 = f.add_file("bootorder", vec![9; 300]).unwrap();
        assert_eq!((k1, k2), (0x20, 0x21));
        assert_eq!(f.add_file("bootorder", vec![]), Err(FwCfgError::Duplicate("bootorder".into())));
        assert!(matches!(f.add_file(&"x".repeat(56), vec![]), Err(FwCfgError::BadName(_))));
        select(&mut f, key::FILE_DIR);
        let dir = read_n(&mut f, 4 + 2 * 64);
        assert_eq!(dir[..4], [0, 0, 0, 2]);
        let entry = |i: usize| &dir[4 + 64 * i..4 + 64 * (i + 1)];
        assert_eq!(entry(0)[..8], [0, 0, 1, 44, 0, 0x21, 0, 0]);
        assert_eq!(&entry(0)[8..17], b"bootorder");
        assert!(entry(0)[17..].iter().all(|&b| b == 0));
        assert_eq!(entry(1)[..8], [0, 0, 0, 3, 0, 0x20, 0, 0]);
        assert_eq!(&entry(1)[8..15], b"etc/zzz");
        select(&mut f, k1);
        assert_eq!(read_n(&mut f, 3), [1, 2, 3]);
        assert_eq!(f.file("etc/zzz"), Some(&[1u8, 2, 3][..]));
    }

    #[test]
    fn snapshot_keeps_the_place_in_the_selected_item() {
        use quern_core::snapshot::Snapshot;
        let (_, mut f) = dev();
        f.add_file("etc/data", (0..100u8).collect()).unwrap();
        select(&mut f, key::FILE_FIRST);
        assert_eq!(read_n(&mut f, 3), [0, 1, 2]);
        f.write(4, &1u32.to_be_bytes()); // a DMA address's high half, latched
        let (_, mut g) = dev();
        g.add_file("etc/data", (0..100u8).collect()).unwrap();
        crate::testutil::restore_into(&mut g, &f.save_state());
        assert_eq!(read_n(&mut g, 3), [3, 4, 5]);
        crate::testutil::assert_refuses_malformed(&mut g, &[]);
    }

    #[test]
    fn dma_select_read_skip() {
        let (mem, mut f) = dev();
        f.add_file("etc/data", (0..100u8).collect()).unwrap();
        let sel = u32::from(key::FILE_FIRST) << 16 | dma::SELECT;
        assert_eq!(run_dma(&mut f, &mem, 0x1000, sel | dma::READ, 10, 0x2000), 0);
        let mut got = [0; 10];
        mem.read(0x2000, &mut got).unwrap();
        assert_eq!(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        // Skip 80 then read 20: 10 data bytes, then zeros past the end.
        assert_eq!(run_dma(&mut f, &mem, 0x1000, dma::SKIP, 80, 0), 0);
        mem.fill(0x3000, 20, 0xee).unwrap();
        assert_eq!(run_dma(&mut f, &mem, 0x1000, dma::READ, 20, 0x3000), 0);
        let mut got = [0; 20];
        mem.read(0x3000, &mut got).unwrap();
        assert_eq!(got[..10], [90, 91, 92, 93, 94, 95, 96, 97, 98, 99]);
        assert_eq!(got[10..], [0; 10]);
        // The traditional port goes on from where DMA stopped.
        select(&mut f, key::SIGNATURE);
        assert_eq!(run_dma(&mut f, &mem, 0x1000, dma::READ, 2, 0x4000), 0);
        assert_eq!(read_n(&mut f, 2), b"MU");
        // A 64-bit write of the address runs it too.
        let mut d = (sel | dma::READ).to_be_bytes().to_vec();
        d.extend(4u32.to_be_bytes());
        d.extend(0x5000u64.to_be_bytes());
        mem.write(0x1100, &d).unwrap();
        f.write(4, &0x1100u64.to_be_bytes());
        assert_eq!(mem.read_u32(0x5000).unwrap(), u32::from_le_bytes([0, 1, 2, 3]));
        assert_eq!(mem.read_u32(0x1100).unwrap(), 0);
    }

    #[test]
    fn dma_errors_set_the_error_bit() {
        let (mem, mut f) = dev();
        // Target outside RAM.
        let sel = u32::from(key::SIGNATURE) << 16 | dma::SELECT;
        assert_eq!(run_dma(&mut f, &mem, 0x1000, sel | dma::READ, 4, 0x10_0000), dma::ERROR);
        assert_eq!(run_dma(&mut f, &mem, 0x1000, sel | dma::READ, 4, u64::MAX - 1), dma::ERROR);
        // Writes: every item is read-only.
        assert_eq!(run_dma(&mut f, &mem, 0x1000, sel | dma::WRITE, 4, 0x2000), dma::ERROR);
        select(&mut f, key::SIGNATURE);
        assert_eq!(read_n(&mut f, 4), b"QEMU", "a failed write changes nothing");
        // A descriptor outside RAM is dropped without a crash.
        f.write(4, &0xffff_ffffu32.to_be_bytes());
        f.write(8, &0xffff_f000u32.to_be_bytes());
        // Neither op bit: nothing happens, and the control word is cleared.
        assert_eq!(run_dma(&mut f, &mem, 0x1000, 0, 4, 0x2000), 0);
        // Odd accesses to the registers are ignored.
        f.write(5, &[1]);
        f.write(3, &[1, 2]);
    }

    #[test]
    fn dma_does_not_write_rom() {
        use quern_core::memory::RegionSpec;
        let mem = Arc::new(
            GuestMemory::new(
                &[0x10000, 0x1000],
                &[
                    RegionSpec { guest_base: 0, size: 0x10000, backing: 0, offset: 0, kind: RegionKind::Ram },
                    RegionSpec { guest_base: 0x10000, size: 0x1000, backing: 1, offset: 0, kind: RegionKind::Rom },
                ],
            )
            .unwrap(),
        );
        let mut f = FwCfg::new(mem.clone());
        let sel = u32::from(key::SIGNATURE) << 16 | dma::SELECT;
        assert_eq!(run_dma(&mut f, &mem, 0x100, sel | dma::READ, 8, 0xfffc), dma::ERROR);
        assert_eq!(mem.read_u32(0x10000).unwrap(), 0, "ROM untouched");
    }
}
