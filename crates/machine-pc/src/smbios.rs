//! SMBIOS tables (DMTF DSP0134, version 2.8 structures behind a 2.1 entry point), as
//! QEMU's `pc` hands them to SeaBIOS through fw_cfg (`etc/smbios/smbios-tables` and
//! `etc/smbios/smbios-anchor`): the firmware copies the structures into its F segment
//! or high memory, puts their address into the anchor and fixes its checksums.
//!
//! Structures, with QEMU's handle numbering: BIOS (type 0), system (1), enclosure
//! (3), one processor per CPU (4), the physical memory array (16), one memory device
//! per 16 GiB of RAM (17), one mapped address range per RAM range (19), boot status
//! (32) and the end marker (127).

use crate::layout::{MemoryLayout, FOUR_GIB, GIB, KIB, MIB};

/// What the tables describe.
#[derive(Clone, Debug)]
pub struct SmbiosConfig {
    pub cpus: u32,
    /// The firmware's vendor, version and release date (type 0).
    pub bios_vendor: String,
    pub bios_version: String,
    pub bios_date: String,
    /// System UUID (type 1); zeros when the user gave none.
    pub uuid: [u8; 16],
}

pub const MANUFACTURER: &str = "quern";
pub const PRODUCT: &str = "Standard PC (i440FX + PIIX, 1996)";
/// The machine type `-machine pc` stands for.
pub const MACHINE_VERSION: &str = "pc-i440fx-7.2";

/// Size of the 2.1 ("_SM_") entry point.
pub const ANCHOR_LEN: usize = 0x1f;
/// QEMU's DIMM size for type 17.
const DIMM_MAX: u64 = 16 * GIB;

const HANDLE_T0: u16 = 0x000;
const HANDLE_T1: u16 = 0x100;
const HANDLE_T3: u16 = 0x300;
const HANDLE_T4: u16 = 0x400;
const HANDLE_T16: u16 = 0x1000;
const HANDLE_T17: u16 = 0x1100;
const HANDLE_T19: u16 = 0x1300;
const HANDLE_T32: u16 = 0x2000;
const HANDLE_T127: u16 = 0x7f00;

/// One structure: its formatted area (header included) and its strings.
struct Structure {
    bytes: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    fn new(kind: u8, len: u8, handle: u16) -> Self {
        let mut bytes = vec![0u8; usize::from(len)];
        bytes[0] = kind;
        bytes[1] = len;
        bytes[2..4].copy_from_slice(&handle.to_le_bytes());
        Structure { bytes, strings: Vec::new() }
    }
    fn u8(&mut self, at: usize, v: u8) -> &mut Self {
        self.bytes[at] = v;
        self
    }
    fn u16(&mut self, at: usize, v: u16) -> &mut Self {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
        self
    }
    /// A string field: its 1-based number in the string set, 0 for an empty one.
    fn string(&mut self, at: usize, s: &str) -> &mut Self {
        let n = if s.is_empty() {
            0
        } else {
            self.strings.push(s.replace('\0', ""));
            self.strings.len() as u8
        };
        self.u8(at, n)
    }
    fn encode(&self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend(&self.bytes);
        for s in &self.strings {
            out.extend(s.as_bytes());
            out.push(0);
        }
        // The set ends with a second NUL; with no strings the area is two NULs.
        if self.strings.is_empty() {
            out.push(0);
        }
        out.push(0);
        out.len() - start
    }
}

/// RAM ranges as (start, end exclusive).
fn ram_ranges(layout: &MemoryLayout) -> Vec<(u64, u64)> {
    let mut r = vec![(0, layout.below_4g)];
    if layout.above_4g > 0 {
        r.push((FOUR_GIB, FOUR_GIB + layout.above_4g));
    }
    r
}

/// Builds the structure table and its entry point (table address left 0 for the
/// firmware to fill, checksums valid as they stand).
pub fn build_smbios(cfg: &SmbiosConfig, layout: &MemoryLayout) -> (Vec<u8>, [u8; ANCHOR_LEN]) {
    let mut structs = Vec::new();

    let mut t0 = Structure::new(0, 0x18, HANDLE_T0);
    t0.string(4, &cfg.bios_vendor).string(5, &cfg.bios_version).u16(6, 0xe800).string(8, &cfg.bios_date);
    // Characteristics "not supported" (bit 3); extension byte 2: targeted content
    // distribution and "virtual machine" (bits 2 and 4), as QEMU says.
    t0.u64(0x0a, 1 << 3).u8(0x13, 0x14).u8(0x16, 0xff).u8(0x17, 0xff);
    structs.push(t0);

    let mut t1 = Structure::new(1, 0x1b, HANDLE_T1);
    t1.string(4, MANUFACTURER).string(5, PRODUCT).string(6, MACHINE_VERSION);
    // SMBIOS 2.6+ stores the first three UUID fields little-endian (as QEMU does).
    let mut uuid = cfg.uuid;
    uuid[0..4].reverse();
    uuid[4..6].reverse();
    uuid[6..8].reverse();
    t1.bytes[8..0x18].copy_from_slice(&uuid);
    t1.u8(0x18, 0x06); // woken by the power switch
    structs.push(t1);

    let mut t3 = Structure::new(3, 0x16, HANDLE_T3);
    t3.string(4, MANUFACTURER).u8(5, 0x01).string(6, MACHINE_VERSION);
    // Boot-up, power supply and thermal states "safe", security "unknown".
    t3.u8(9, 3).u8(0x0a, 3).u8(0x0b, 3).u8(0x0c, 2);
    structs.push(t3);

    for cpu in 0..cfg.cpus {
        let mut t4 = Structure::new(4, 0x2a, HANDLE_T4 + cpu as u16);
        t4.string(4, &format!("CPU {cpu}")).u8(5, 0x03).u8(6, 0x01).string(7, MANUFACTURER);
        t4.string(0x10, MACHINE_VERSION);
        // Speeds in MHz as QEMU gives them; socket populated, CPU enabled.
        t4.u16(0x14, 2000).u16(0x16, 2000).u8(0x18, 0x41).u8(0x19, 0x01);
        t4.u16(0x1a, 0xffff).u16(0x1c, 0xffff).u16(0x1e, 0xffff);
        t4.u8(0x23, 1).u8(0x24, 1).u8(0x25, 1).u16(0x26, 0x02).u16(0x28, 0x01);
        structs.push(t4);
    }

    let dimms = layout.ram.div_ceil(DIMM_MAX);
    let mut t16 = Structure::new(16, 0x17, HANDLE_T16);
    // Other location, system memory, multi-bit ECC (QEMU's choices); capacity in KiB.
    t16.u8(4, 0x01).u8(5, 0x03).u8(6, 0x06).u16(0x0b, 0xfffe).u16(0x0d, dimms as u16);
    let kib = layout.ram / KIB;
    match u32::try_from(kib) {
        Ok(k) if k < 0x8000_0000 => t16.u32(7, k),
        _ => t16.u32(7, 0x8000_0000).u64(0x0f, layout.ram),
    };
    structs.push(t16);

    for i in 0..dimms {
        let size_mib = (layout.ram - i * DIMM_MAX).min(DIMM_MAX) / MIB;
        let mut t17 = Structure::new(17, 0x28, HANDLE_T17 + i as u16);
        t17.u16(4, HANDLE_T16).u16(6, 0xfffe).u16(8, 0xffff).u16(0x0a, 0xffff);
        if size_mib < 0x7fff {
            t17.u16(0x0c, size_mib as u16);
        } else {
            t17.u16(0x0c, 0x7fff).u32(0x1c, size_mib as u32);
        }
        // A DIMM of RAM ("other" detail), no known speed or voltage.
        t17.u8(0x0e, 0x09).string(0x10, &format!("DIMM {i}")).u8(0x12, 0x07).u16(0x13, 0x02);
        t17.string(0x17, MANUFACTURER);
        structs.push(t17);
    }

    for (i, (start, end)) in ram_ranges(layout).into_iter().enumerate() {
        let mut t19 = Structure::new(19, 0x1f, HANDLE_T19 + i as u16);
        let (s, e) = (start / KIB, end / KIB - 1);
        match (u32::try_from(s), u32::try_from(e)) {
            (Ok(s), Ok(e)) if e < u32::MAX => t19.u32(4, s).u32(8, e),
            _ => t19.u32(4, u32::MAX).u32(8, u32::MAX).u64(0x0f, start).u64(0x17, end - 1),
        };
        t19.u16(0x0c, HANDLE_T16).u8(0x0e, 1);
        structs.push(t19);
    }

    structs.push(Structure::new(32, 0x0b, HANDLE_T32)); // boot status 0: no errors
    structs.push(Structure::new(127, 4, HANDLE_T127));

    let mut table = Vec::new();
    let mut max = 0;
    for s in &structs {
        max = max.max(s.encode(&mut table));
    }

    let mut a = [0u8; ANCHOR_LEN];
    a[0..4].copy_from_slice(b"_SM_");
    a[5] = ANCHOR_LEN as u8;
    a[6] = 2;
    a[7] = 8;
    a[8..10].copy_from_slice(&(max as u16).to_le_bytes());
    a[0x10..0x15].copy_from_slice(b"_DMI_");
    a[0x16..0x18].copy_from_slice(&(table.len() as u16).to_le_bytes());
    a[0x1c..0x1e].copy_from_slice(&(structs.len() as u16).to_le_bytes());
    a[0x1e] = 0x28; // BCD revision 2.8
    a[0x15] = 0u8.wrapping_sub(a[0x10..].iter().fold(0u8, |s, b| s.wrapping_add(*b)));
    a[4] = 0u8.wrapping_sub(a[..0x10].iter().fold(0u8, |s, b| s.wrapping_add(*b)));
    (table, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cpus: u32) -> SmbiosConfig {
        SmbiosConfig {
            cpus,
            bios_vendor: "SeaBIOS".into(),
            bios_version: "1.16.2-debian-1.16.2-1".into(),
            bios_date: "04/01/2014".into(),
            uuid: [0; 16],
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    /// Walks the table: (type, handle, formatted area, strings) per structure.
    fn parse(table: &[u8]) -> Vec<(u8, u16, Vec<u8>, Vec<String>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < table.len() {
            let len = usize::from(table[at + 1]);
            assert!(len >= 4 && at + len <= table.len());
            let area = table[at..at + len].to_vec();
            let mut p = at + len;
            let mut strings = Vec::new();
            loop {
                let end = p + table[p..].iter().position(|&c| c == 0).expect("NUL");
                if end == p {
                    // An empty string ends the set (after one string, or a second NUL).
                    p += if strings.is_empty() { 2 } else { 1 };
                    break;
                }
                strings.push(String::from_utf8(table[p..end].to_vec()).unwrap());
                p = end + 1;
            }
            out.push((area[0], u16::from_le_bytes([area[2], area[3]]), area, strings));
            at = p;
        }
        assert_eq!(at, table.len());
        out
    }

    #[test]
    fn tables_parse_with_checksums_and_types() {
        let layout = MemoryLayout::new(5 * GIB, 256 * KIB).unwrap();
        let (table, anchor) = build_smbios(&cfg(2), &layout);
        assert_eq!(&anchor[..4], b"_SM_");
        assert_eq!(sum(&anchor[..0x10]), 0, "entry point checksum");
        assert_eq!(sum(&anchor[0x10..]), 0, "intermediate checksum");
        assert_eq!(&anchor[0x10..0x15], b"_DMI_");
        assert_eq!(usize::from(u16::from_le_bytes([anchor[0x16], anchor[0x17]])), table.len());
        let s = parse(&table);
        assert_eq!(usize::from(u16::from_le_bytes([anchor[0x1c], anchor[0x1d]])), s.len());
        let types: Vec<u8> = s.iter().map(|x| x.0).collect();
        assert_eq!(types, [0, 1, 3, 4, 4, 16, 17, 19, 19, 32, 127]);
        let handles: Vec<u16> = s.iter().map(|x| x.1).collect();
        assert_eq!(handles, [0, 0x100, 0x300, 0x400, 0x401, 0x1000, 0x1100, 0x1300, 0x1301, 0x2000, 0x7f00]);
        // The largest structure fits the advertised maximum.
        let max = u16::from_le_bytes([anchor[8], anchor[9]]);
        // Formatted area, each string and its NUL, and the final NUL.
        let size = |x: &(u8, u16, Vec<u8>, Vec<String>)| x.2.len() + x.3.iter().map(|t| t.len() + 1).sum::<usize>() + 1;
        assert!(s.iter().all(|x| size(x) <= usize::from(max)));

        let t0 = &s[0];
        assert_eq!(t0.3, ["SeaBIOS", "1.16.2-debian-1.16.2-1", "04/01/2014"]);
        assert_eq!((t0.2[4], t0.2[5], t0.2[8]), (1, 2, 3), "string numbers");
        let t1 = &s[1];
        assert_eq!(t1.3, [MANUFACTURER, PRODUCT, MACHINE_VERSION]);
        assert_eq!(s[3].3[0], "CPU 0");
        assert_eq!(s[4].3[0], "CPU 1");
        // 5 GiB: capacity in KiB, one 5 GiB DIMM, ranges below the hole and above 4 GiB.
        let t16 = &s[5].2;
        assert_eq!(u32::from_le_bytes(t16[7..11].try_into().unwrap()), 5 * 1024 * 1024);
        let t17 = &s[6].2;
        assert_eq!(u16::from_le_bytes([t17[0x0c], t17[0x0d]]), 5 * 1024, "MiB");
        assert_eq!(u16::from_le_bytes([t17[4], t17[5]]), 0x1000, "in the array");
        let range = |t: &[u8]| {
            (u32::from_le_bytes(t[4..8].try_into().unwrap()), u32::from_le_bytes(t[8..12].try_into().unwrap()))
        };
        assert_eq!(range(&s[7].2), (0, (layout.below_4g / KIB - 1) as u32));
        assert_eq!(range(&s[8].2), ((FOUR_GIB / KIB) as u32, ((FOUR_GIB + layout.above_4g) / KIB - 1) as u32));
        assert_eq!(s[10].2.len(), 4);
    }

    #[test]
    fn large_memory_splits_into_dimms() {
        let layout = MemoryLayout::new(40 * GIB, 0).unwrap();
        let (table, _) = build_smbios(&cfg(1), &layout);
        let s = parse(&table);
        let dimms: Vec<_> = s.iter().filter(|x| x.0 == 17).collect();
        assert_eq!(dimms.len(), 3, "16 + 16 + 8 GiB");
        let t17 = &dimms[0].2;
        assert_eq!(u16::from_le_bytes([t17[0x0c], t17[0x0d]]), 16 * 1024, "MiB, below the extended-size mark");
        assert_eq!(u16::from_le_bytes([dimms[2].2[0x0c], dimms[2].2[0x0d]]), 8 * 1024);
        assert_eq!(dimms[2].3, ["DIMM 2", MANUFACTURER]);
        let t16 = &s.iter().find(|x| x.0 == 16).unwrap().2;
        assert_eq!(u32::from_le_bytes(t16[7..11].try_into().unwrap()), 40 * 1024 * 1024);
    }

    #[test]
    fn empty_strings_are_left_out() {
        let c = SmbiosConfig { bios_version: String::new(), ..cfg(1) };
        let (table, _) = build_smbios(&c, &MemoryLayout::new(64 * MIB, 0).unwrap());
        let t0 = &parse(&table)[0];
        assert_eq!((t0.2[4], t0.2[5], t0.2[8]), (1, 0, 2));
    }
}
