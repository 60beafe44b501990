//! The PC's physical memory map, as i440fx lays it out.
//!
//! ```text
//! 0x0000_0000  conventional RAM (640 KiB; the top 1 KiB is the EBDA, reserved)
//! 0x000a_0000  VGA window (MMIO hole)
//! 0x000c_0000  option-ROM area: RAM without a BIOS; with one, PAM segments (below)
//! 0x000e_0000  BIOS area: RAM without a BIOS (the ACPI RSDP lives at 0xe0000 then);
//!              with one, PAM segments showing the top 128 KiB of the BIOS ROM
//! 0x0010_0000  RAM up to min(ram, 3.5 GiB)
//! 0xe000_0000  PCI hole (MMIO: PCI BARs, IOAPIC at 0xfec00000, LAPIC at 0xfee00000)
//! 4 GiB - bios BIOS ROM (its last 16 bytes hold the reset vector)
//! 0x1_0000_0000 RAM above 4 GiB: what did not fit below the hole
//! ```
//!
//! With a BIOS, 0xc0000-0xfffff is QEMU's `pc` layout under the i440FX PAM registers:
//! 13 regions (twelve of 16 KiB, then 0xf0000-0xfffff), each with three views
//! ([`PAM_VIEW_ROM`], [`PAM_VIEW_RAM`], [`PAM_VIEW_RAM_RO`]) that `firmware::Pam`
//! switches. The ROM side of 0xe0000-0xfffff is the BIOS image's last 128 KiB (fewer
//! if the image is smaller; the rest, like 0xc0000-0xdffff, reads zeros, QEMU's
//! empty `pc.rom`); the RAM side is the shadow RAM under it.

use quern_core::memory::{GuestMemory, MemoryError, RegionKind, RegionSpec, ViewSpec};
use quern_devices::pci::i440fx::PAM_SEGMENTS;

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

/// Views of each PAM segment (with a BIOS): the ROM side, read-only (the power-on
/// state, PAM 0), ...
pub const PAM_VIEW_ROM: usize = 0;
/// ... shadow RAM, read-write, ...
pub const PAM_VIEW_RAM: usize = 1;
/// ... and shadow RAM, write-protected.
pub const PAM_VIEW_RAM_RO: usize = 2;
/// The backing of the ROM side that is not the BIOS image (zeros), as 0xc0000 + offset.
const LEGACY_ROM_BACKING: usize = 2;

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

    /// How much of the BIOS ROM's top shows below 1 MiB (0 without a BIOS).
    fn bios_alias(&self) -> u64 {
        self.bios.min(128 * KIB)
    }

    /// Maps the host memory: backing 0 is RAM; with a BIOS, backing 1 is its ROM and
    /// backing 2 the rest of the legacy ROM side (see the module comment).
    pub fn build_memory(&self) -> Result<GuestMemory, MemoryError> {
        if self.bios > 0 {
            return self.build_memory_with_bios();
        }
        let ram = |guest_base: u64, size: u64, offset: u64| RegionSpec {
            guest_base,
            size,
            backing: 0,
            offset,
            kind: RegionKind::Ram,
        };
        // RAM below 4 GiB is at least MIN_RAM (2 MiB), so all the legacy areas exist.
        let mut specs =
            vec![ram(0, VGA_START, 0), ram(OPTION_ROM_START, HIGH_MEMORY_START - OPTION_ROM_START, OPTION_ROM_START)];
        specs.push(ram(HIGH_MEMORY_START, self.below_4g - HIGH_MEMORY_START, HIGH_MEMORY_START));
        if self.above_4g > 0 {
            specs.push(ram(FOUR_GIB, self.above_4g, self.below_4g));
        }
        GuestMemory::new(&[self.ram as usize], &specs)
    }

    fn build_memory_with_bios(&self) -> Result<GuestMemory, MemoryError> {
        let spec = |guest_base: u64, size: u64, backing: usize, offset: u64, kind: RegionKind| RegionSpec {
            guest_base,
            size,
            backing,
            offset,
            kind,
        };
        let alias_start = HIGH_MEMORY_START - self.bios_alias();
        // Where the ROM side of a legacy address lives: the BIOS image or zeros.
        let rom_side = |addr: u64| {
            if addr >= alias_start {
                (1, self.bios - (HIGH_MEMORY_START - addr))
            } else {
                (LEGACY_ROM_BACKING, addr - OPTION_ROM_START)
            }
        };
        let mut specs = vec![spec(0, VGA_START, 0, 0, RegionKind::Ram)];
        for &(base, size) in &PAM_SEGMENTS {
            let (backing, offset) = rom_side(base);
            specs.push(spec(base, size, backing, offset, RegionKind::Rom));
        }
        specs.push(spec(HIGH_MEMORY_START, self.below_4g - HIGH_MEMORY_START, 0, HIGH_MEMORY_START, RegionKind::Ram));
        if self.above_4g > 0 {
            specs.push(spec(FOUR_GIB, self.above_4g, 0, self.below_4g, RegionKind::Ram));
        }
        specs.push(spec(FOUR_GIB - self.bios, self.bios, 1, 0, RegionKind::Rom));
        let backings = [self.ram as usize, self.bios as usize, (HIGH_MEMORY_START - OPTION_ROM_START) as usize];
        let mut mem = GuestMemory::new(&backings, &specs)?;
        for &(base, _) in &PAM_SEGMENTS {
            let rw = mem.add_view(base, ViewSpec { backing: 0, offset: base, kind: RegionKind::Ram })?;
            let ro = mem.add_view(base, ViewSpec { backing: 0, offset: base, kind: RegionKind::Rom })?;
            debug_assert_eq!((rw, ro), (PAM_VIEW_RAM, PAM_VIEW_RAM_RO));
        }
        Ok(mem)
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
        assert_eq!(m.region(0x9ffff).unwrap().kind, RegionKind::Ram);
        // Below the alias the ROM side reads zeros (QEMU's empty pc.rom).
        assert_eq!((m.region(0xdffff).unwrap().kind, m.read_u8(0xdffff).unwrap()), (RegionKind::Rom, 0));
        assert_eq!(m.switchable_regions().len(), 13);
    }

    #[test]
    fn pam_views_show_shadow_ram() {
        let l = MemoryLayout::new(64 * MIB, 64 * KIB).unwrap();
        let m = l.build_memory().unwrap();
        m.write_u32(FOUR_GIB - 16, 0xabcd).unwrap();
        assert_eq!(m.read_u32(MIB - 16).unwrap(), 0xabcd, "a 64 KiB image shows at 0xf0000 only");
        assert_eq!(m.read_u32(0xe0000).unwrap(), 0);
        m.select_view(0xf0000, PAM_VIEW_RAM).unwrap();
        assert_eq!(m.read_u32(MIB - 16).unwrap(), 0, "shadow RAM starts empty");
        assert_eq!(m.region(0xf0000).unwrap().kind, RegionKind::Ram);
        m.write_u32(MIB - 16, 0x5555).unwrap();
        m.select_view(0xf0000, PAM_VIEW_RAM_RO).unwrap();
        assert_eq!((m.region(0xf0000).unwrap().kind, m.read_u32(MIB - 16).unwrap()), (RegionKind::Rom, 0x5555));
        m.select_view(0xf0000, PAM_VIEW_ROM).unwrap();
        assert_eq!(m.read_u32(MIB - 16).unwrap(), 0xabcd);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(MemoryLayout::new(MIB, 0), Err(LayoutError::RamSize(_))));
        assert!(matches!(MemoryLayout::new(64 * MIB, 1000), Err(LayoutError::BiosSize(_))));
    }
}
