//! The PC's physical memory map, as i440fx lays it out.
//!
//! ```text
//! 0x0000_0000  conventional RAM (640 KiB; the top 1 KiB is the EBDA, reserved)
//! 0x000a_0000  VGA window (MMIO hole)
//! 0x000c_0000  RAM (option-ROM area)
//! 0x000e_0000  BIOS area: the top 128 KiB of the BIOS ROM when -bios is given,
//!              RAM otherwise (the ACPI RSDP lives at 0xe0000 then)
//! 0x0010_0000  RAM up to min(ram, 3.5 GiB)
//! 0xe000_0000  PCI hole (MMIO: PCI BARs, IOAPIC at 0xfec00000, LAPIC at 0xfee00000)
//! 4 GiB - bios BIOS ROM (its last 16 bytes hold the reset vector)
//! 0x1_0000_0000 RAM above 4 GiB: what did not fit below the hole
//! ```

use quern_core::memory::{GuestMemory, MemoryError, RegionKind, RegionSpec};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;

/// End of conventional memory usable by the OS (the EBDA starts here).
pub const EBDA_START: u64 = 0x9fc00;
pub const VGA_START: u64 = 0xa0000;
pub const OPTION_ROM_START: u64 = 0xc0000;
pub const BIOS_AREA_START: u64 = 0xe0000;
pub const HIGH_MEMORY_START: u64 = MIB;
/// Start of the PCI hole below 4 GiB.
pub const PCI_HOLE_START: u64 = 0xe000_0000;
pub const FOUR_GIB: u64 = 4 * GIB;
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
pub const LAPIC_BASE: u64 = 0xfee0_0000;

/// The smallest and largest -m the PC accepts.
pub const MIN_RAM: u64 = 2 * MIB;
pub const MAX_RAM: u64 = 1024 * GIB;

/// Largest BIOS image: 16 MiB as on real flash parts; SeaBIOS is 128 or 256 KiB.
pub const MAX_BIOS: u64 = 16 * MIB;

/// An e820 entry type (ACPI's address range types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    Ram = 1,
    Reserved = 2,
    Acpi = 3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("-m {0} bytes is out of range: give between 2M and 1T (e.g. -m 512 or -m 2G)")]
    RamSize(u64),
    #[error("BIOS image is {0} bytes: it must be a multiple of 64 KiB and at most 16 MiB")]
    BiosSize(u64),
}

/// Where RAM and ROM go for a given -m and BIOS size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Total guest RAM in bytes.
    pub ram: u64,
    /// RAM bytes below the PCI hole (includes the legacy areas).
    pub below_4g: u64,
    /// RAM bytes mapped from 4 GiB up.
    pub above_4g: u64,
    /// BIOS ROM size, 0 without -bios.
    pub bios: u64,
}

impl MemoryLayout {
    pub fn new(ram: u64, bios: u64) -> Result<Self, LayoutError> {
        if !(MIN_RAM..=MAX_RAM).contains(&ram) {
            return Err(LayoutError::RamSize(ram));
        }
        if bios > MAX_BIOS || !bios.is_multiple_of(64 * KIB) {
            return Err(LayoutError::BiosSize(bios));
        }
        let below_4g = ram.min(PCI_HOLE_START);
        Ok(MemoryLayout { ram, below_4g, above_4g: ram - below_4g, bios })
    }

    /// Whether the BIOS ROM is aliased at 0xe0000 (only when a BIOS is loaded).
    fn bios_alias(&self) -> u64 {
        self.bios.min(128 * KIB)
    }

    /// Maps the host memory: backing 0 is RAM, backing 1 (if any) the BIOS ROM.
    pub fn build_memory(&self) -> Result<GuestMemory, MemoryError> {
        let ram = |guest_base: u64, size: u64, offset: u64| RegionSpec {
            guest_base,
            size,
            backing: 0,
            offset,
            kind: RegionKind::Ram,
        };
        let alias = self.bios_alias();
        let mut specs = vec![ram(0, VGA_START, 0)];
        let low_end = self.below_4g;
        if low_end > OPTION_ROM_START {
            // Legacy areas above the VGA window: RAM, except the BIOS alias.
            let legacy_end = (HIGH_MEMORY_START - alias).min(low_end);
            specs.push(ram(OPTION_ROM_START, legacy_end - OPTION_ROM_START, OPTION_ROM_START));
            if alias > 0 && low_end > HIGH_MEMORY_START - alias {
                specs.push(RegionSpec {
                    guest_base: HIGH_MEMORY_START - alias,
                    size: alias,
                    backing: 1,
                    offset: self.bios - alias,
                    kind: RegionKind::Rom,
                });
            }
            if low_end > HIGH_MEMORY_START {
                specs.push(ram(HIGH_MEMORY_START, low_end - HIGH_MEMORY_START, HIGH_MEMORY_START));
            }
        }
        if self.above_4g > 0 {
            specs.push(ram(FOUR_GIB, self.above_4g, self.below_4g));
        }
        let mut backings = vec![self.ram as usize];
        if self.bios > 0 {
            backings.push(self.bios as usize);
            specs.push(RegionSpec {
                guest_base: FOUR_GIB - self.bios,
                size: self.bios,
                backing: 1,
                offset: 0,
                kind: RegionKind::Rom,
            });
        }
        GuestMemory::new(&backings, &specs)
    }

    /// The e820 map handed to a kernel booted directly (no BIOS).
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut map = vec![
            E820Entry { addr: 0, size: EBDA_START, kind: E820Type::Ram },
            E820Entry { addr: EBDA_START, size: VGA_START - EBDA_START, kind: E820Type::Reserved },
            E820Entry { addr: BIOS_AREA_START, size: HIGH_MEMORY_START - BIOS_AREA_START, kind: E820Type::Reserved },
        ];
        if self.below_4g > HIGH_MEMORY_START {
            map.push(E820Entry {
                addr: HIGH_MEMORY_START,
                size: self.below_4g - HIGH_MEMORY_START,
                kind: E820Type::Ram,
            });
        }
        // IOAPIC, LAPIC and the BIOS flash at the top of the hole.
        map.push(E820Entry { addr: IOAPIC_BASE, size: FOUR_GIB - IOAPIC_BASE, kind: E820Type::Reserved });
        if self.above_4g > 0 {
            map.push(E820Entry { addr: FOUR_GIB, size: self.above_4g, kind: E820Type::Ram });
        }
        map
    }
}

/// Parses a QEMU-style size: "512" (MiB), "512M", "2G", "1T", "65536K".
pub fn parse_size_mib_default(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], KIB),
        (i, 'm' | 'M') => (&s[..i], MIB),
        (i, 'g' | 'G') => (&s[..i], GIB),
        (i, 't' | 'T') => (&s[..i], 1024 * GIB),
        _ => (s, MIB),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ram_sits_below_the_hole() {
        let l = MemoryLayout::new(512 * MIB, 0).unwrap();
        assert_eq!((l.below_4g, l.above_4g), (512 * MIB, 0));
        let m = l.build_memory().unwrap();
        assert!(m.is_memory(0x9ffff));
        assert!(!m.is_memory(0xa0000), "VGA window is MMIO");
        assert!(m.is_memory(0xe0000), "BIOS area is RAM without a BIOS");
        assert!(m.is_memory(512 * MIB - 1));
        assert!(!m.is_memory(512 * MIB));
        let e820 = l.e820();
        assert!(e820.contains(&E820Entry { addr: MIB, size: 511 * MIB, kind: E820Type::Ram }));
    }

    #[test]
    fn large_ram_splits_around_the_pci_hole() {
        let l = MemoryLayout::new(4 * GIB, 0).unwrap();
        assert_eq!(l.below_4g, PCI_HOLE_START);
        assert_eq!(l.above_4g, 4 * GIB - PCI_HOLE_START);
        assert!(l.e820().contains(&E820Entry { addr: FOUR_GIB, size: l.above_4g, kind: E820Type::Ram }));
    }

    #[test]
    fn bios_is_mapped_at_the_top_and_aliased_below_1m() {
        let l = MemoryLayout::new(64 * MIB, 256 * KIB).unwrap();
        let m = l.build_memory().unwrap();
        m.write_u32(FOUR_GIB - 16, 0x1234_5678).unwrap();
        assert_eq!(m.read_u32(MIB - 16).unwrap(), 0x1234_5678);
        assert_eq!(m.region(0xe0000).unwrap().kind, RegionKind::Rom);
        assert_eq!(m.region(0xdffff).unwrap().kind, RegionKind::Ram);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(MemoryLayout::new(MIB, 0), Err(LayoutError::RamSize(_))));
        assert!(matches!(MemoryLayout::new(64 * MIB, 1000), Err(LayoutError::BiosSize(_))));
        assert_eq!(parse_size_mib_default("512"), Some(512 * MIB));
        assert_eq!(parse_size_mib_default("2G"), Some(2 * GIB));
        assert_eq!(parse_size_mib_default("x"), None);
    }
}
