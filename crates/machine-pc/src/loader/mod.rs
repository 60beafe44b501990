//! Direct kernel boot, as QEMU's `-kernel/-initrd/-append` does it: the kernel is put in
//! guest memory with its boot data and the boot CPU's registers are set to its entry
//! state, so no firmware runs.
//!
//! Formats, detected in this order:
//! - Multiboot v1 ([`multiboot`]): an ELF32 kernel or the a.out kludge, entered in
//!   32-bit protected mode with EAX=0x2BADB002 and EBX pointing at multiboot_info.
//! - Linux bzImage ([`bzimage`]): boot protocol >= 2.06; a zero page, entered through
//!   the 64-bit entry (load address + 0x200) when the kernel has one, else the 32-bit
//!   entry.
//! - ELF ([`elf`]): a vmlinux with the Xen PVH note is entered at its 32-bit PVH entry
//!   with an `hvm_start_info`; any other ELF64 at `e_entry` in long mode with a zero
//!   page in RSI (quern's own 64-bit test programs boot this way).
//!
//! Low-memory map used by the loader (all in conventional RAM, below the EBDA):
//!
//! ```text
//! 0x00500  GDT: null, null, 0x10 code, 0x18 data, 0x20 TSS (16 bytes, for long mode)
//! 0x00600  TSS (104 bytes, zeroed): TR must be usable for VMX
//! 0x06000  hvm_start_info + modlist + memmap (PVH), or multiboot_info + mods + mmap
//! 0x07000  zero page (Linux boot_params)
//! 0x08ff0  initial stack pointer (grows down in 0x8000-0x8fff)
//! 0x09000  PML4;  0x0a000 PDPT;  0x0b000-0x0efff four PDs of 2 MiB pages (4 GiB identity map)
//! 0x20000  kernel command line (up to 64 KiB)
//! 0x30000  end of the loader's area: ELF segments may not start below
//! 0x100000 bzImage protected-mode code; initrd at the top of low RAM
//! ```
//!
//! Multiboot kernels do not use this area: as QEMU's loader does, quern puts their boot
//! information, command line, GDT and TSS after the kernel's highest address, so a
//! kernel may load anywhere in RAM, low memory included (OS self-tests load at 0x8000).

pub mod abi;
pub mod bzimage;
pub mod elf;
pub mod multiboot;

use quern_core::memory::MemoryError;
use quern_core::regs::{ctrl, flags, power_on_state, DescriptorTable, Regs, Segment, SpecialRegs};
use quern_core::GuestMemory;
use thiserror::Error;

use crate::layout::{E820Type, MemoryLayout, EBDA_START, FOUR_GIB, HIGH_MEMORY_START, MAX_RAM, MIB, PCI_HOLE_START};

pub const GDT_ADDR: u64 = 0x500;
pub const TSS_ADDR: u64 = 0x600;
pub const BOOT_INFO_ADDR: u64 = 0x6000;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line the loader's area holds (without the NUL).
pub const CMDLINE_MAX: usize = 0xffff;
/// The loader's own structures live in [0, BOOT_AREA_END): kernel segments may not.
pub const BOOT_AREA_END: u64 = 0x30000;
/// Where a bzImage's protected-mode code goes.
pub const KERNEL_LOAD_ADDR: u64 = MIB;

/// Linux's boot selectors (__BOOT_CS, __BOOT_DS), used for every format.
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
const BOOT_TR: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    BzImage,
    Pvh,
    Elf64,
    Multiboot,
}

/// The boot CPU's entry state and what was placed in memory.
#[derive(Clone, Debug)]
pub struct BootSetup {
    pub regs: Regs,
    pub sregs: SpecialRegs,
    pub kind: KernelKind,
    /// Guest address and length of the initrd, if one was loaded.
    pub initrd: Option<(u64, u64)>,
}

#[derive(Debug, Error)]
pub enum LoaderError {
    #[error("not a bzImage, ELF or Multiboot kernel (no 'HdrS' at 0x202, no ELF header, no Multiboot header in the first 8 KiB)")]
    UnknownFormat,
    #[error("kernel file is truncated or corrupt: {0}")]
    Corrupt(String),
    #[error("kernel file is truncated: {0}; copy the whole file again")]
    Truncated(String),
    #[error("kernel too old: boot protocol {}.{:02}, need >= 2.06", .0 >> 8, .0 & 0xff)]
    ProtocolTooOld(u16),
    #[error(
        "kernel needs {need:#x} bytes from {base:#x}, more than RAM below 4 GiB with -m {ram_mib}M; give more memory"
    )]
    KernelTooBig { need: u64, base: u64, ram_mib: u64 },
    #[error(
        "initrd of {size} bytes does not fit below the kernel's limit {limit:#x} with -m {ram_mib}M; give more memory"
    )]
    InitrdTooBig { size: u64, limit: u64, ram_mib: u64 },
    #[error("command line of {len} bytes is longer than the kernel's cmdline_size ({max}); shorten -append")]
    CmdlineTooLong { len: usize, max: usize },
    #[error(
        "kernel segment {addr:#x}-{:#x} lies beyond the end of RAM with -m {ram_mib}M; give more memory (-m {need_mib}M or more)",
        addr + len - 1
    )]
    SegmentOutsideRam { addr: u64, len: u64, ram_mib: u64, need_mib: u64 },
    #[error("kernel segment {addr:#x}-{:#x} overlaps the {hole}, which is never RAM on a PC; {advice}", addr.saturating_add(*len).saturating_sub(1))]
    SegmentInHole { addr: u64, len: u64, hole: &'static str, advice: &'static str },
    #[error("kernel segment {addr:#x}-{:#x} lies above any RAM a PC can have (-m at most 1T); link the kernel at a lower address", addr.saturating_add(*len).saturating_sub(1))]
    SegmentBeyondMaxRam { addr: u64, len: u64 },
    #[error("kernel segment {addr:#x}+{len:#x} overlaps the loader's boot area below {:#x}; link the kernel at 1 MiB or above", BOOT_AREA_END)]
    SegmentInBootArea { addr: u64, len: u64 },
    #[error("ELF kernel is built for {name} (ELF machine {0}), not for x86; quern emulates a PC: give an i386 or x86-64 kernel", name = machine_name(*.0))]
    NotX86(u16),
    #[error("32-bit ELF kernel has neither a PVH note nor a Multiboot header: quern cannot enter it")]
    Elf32Unsupported,
    #[error("Multiboot: {0}")]
    Multiboot(String),
    #[error("writing the kernel to guest memory failed: {0}")]
    Memory(#[from] MemoryError),
}

pub type Result<T> = std::result::Result<T, LoaderError>;

/// Loads `kernel` (and `initrd`, `cmdline`) into `mem` and returns the boot CPU's entry
/// state. `acpi_rsdp` is handed to kernels whose protocol can carry it.
pub fn load_kernel(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    cmdline: &str,
    acpi_rsdp: Option<u64>,
) -> Result<BootSetup> {
    let boot = Boot { mem, layout, initrd, cmdline, acpi_rsdp };
    if let Some(header) = multiboot::find_header(kernel)? {
        return multiboot::load(&boot, kernel, &header);
    }
    if bzimage::is_bzimage(kernel) {
        return bzimage::load(&boot, kernel);
    }
    if let Some(elf) = elf::Elf::parse(kernel)? {
        return elf::load(&boot, &elf);
    }
    Err(LoaderError::UnknownFormat)
}

/// What every format's loader needs besides the kernel image.
pub(crate) struct Boot<'a> {
    pub mem: &'a GuestMemory,
    pub layout: &'a MemoryLayout,
    pub initrd: Option<&'a [u8]>,
    pub cmdline: &'a str,
    pub acpi_rsdp: Option<u64>,
}

impl Boot<'_> {
    fn ram_mib(&self) -> u64 {
        self.layout.ram / MIB
    }

    /// Whether [addr, addr+len) lies inside one RAM entry of the e820 map.
    pub fn in_ram(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else { return false };
        self.layout.e820().iter().any(|e| e.kind == E820Type::Ram && addr >= e.addr && end <= e.addr + e.size)
    }

    /// Checks a kernel segment against RAM and the loader's area.
    pub fn check_segment(&self, addr: u64, len: u64) -> Result<()> {
        if addr < BOOT_AREA_END {
            return Err(LoaderError::SegmentInBootArea { addr, len });
        }
        self.check_ram(addr, len)
    }

    /// Checks that a kernel segment lies in RAM; if not, says why: a hole no -m
    /// fills, or RAM that a larger -m would provide.
    pub fn check_ram(&self, addr: u64, len: u64) -> Result<()> {
        if self.in_ram(addr, len) {
            return Ok(());
        }
        let end = addr.saturating_add(len.max(1));
        // The EBDA is RAM on real hardware, but reserved in the e820 map kernels see.
        const HOLES: [(u64, u64, &str, &str); 2] = [
            (
                EBDA_START,
                HIGH_MEMORY_START,
                "PC's legacy hole 0x9fc00-0xfffff (EBDA, VGA window, option ROMs, BIOS area with the ACPI tables)",
                "load the kernel below 0x9fc00 or at 1 MiB (0x100000) or above",
            ),
            (
                PCI_HOLE_START,
                FOUR_GIB,
                "PCI hole 0xe0000000-0xffffffff (device MMIO, IOAPIC, LAPIC, BIOS flash)",
                "load the kernel below 0xe0000000",
            ),
        ];
        if let Some(&(_, _, hole, advice)) = HOLES.iter().find(|&&(start, stop, ..)| addr < stop && end > start) {
            return Err(LoaderError::SegmentInHole { addr, len, hole, advice });
        }
        // Outside the holes, RAM runs up from 1 MiB to the PCI hole, then on from 4 GiB.
        let need = if end <= PCI_HOLE_START { end } else { end - FOUR_GIB + PCI_HOLE_START };
        if need > MAX_RAM {
            return Err(LoaderError::SegmentBeyondMaxRam { addr, len });
        }
        Err(LoaderError::SegmentOutsideRam { addr, len, ram_mib: self.ram_mib(), need_mib: need.div_ceil(MIB) })
    }

    /// Writes the NUL-terminated command line at [`CMDLINE_ADDR`] if it is at most
    /// `max` bytes long.
    pub fn write_cmdline(&self, max: usize) -> Result<u64> {
        self.write_cmdline_at(CMDLINE_ADDR, max)
    }

    /// Writes the NUL-terminated command line at `addr` if it is at most `max` bytes
    /// long.
    pub fn write_cmdline_at(&self, addr: u64, max: usize) -> Result<u64> {
        let len = self.cmdline.len();
        if len > max.min(CMDLINE_MAX) {
            return Err(LoaderError::CmdlineTooLong { len, max: max.min(CMDLINE_MAX) });
        }
        self.mem.write(addr, self.cmdline.as_bytes())?;
        self.mem.write_u8(addr + len as u64, 0)?;
        Ok(addr)
    }

    /// A page-aligned place for `size` bytes of boot data in RAM below 4 GiB that
    /// overlaps none of `taken`: `prefer` if it fits, else the lowest one that does.
    pub fn free_area(&self, prefer: u64, size: u64, taken: &[(u64, u64)]) -> Option<u64> {
        let fits = |a: u64| {
            a.checked_add(size).is_some_and(|end| end <= FOUR_GIB && self.in_ram(a, size))
                && taken.iter().all(|&(start, stop)| a.saturating_add(size) <= start || a >= stop)
        };
        // After the preferred spot: each RAM range's start and the end of each taken
        // range, leaving page 0 (real-mode IVT, BIOS data area) alone.
        let ram_starts = self.layout.e820().into_iter().filter(|e| e.kind == E820Type::Ram).map(|e| e.addr);
        let mut others: Vec<u64> = ram_starts.chain(taken.iter().map(|t| t.1)).map(|a| a.max(0x1000)).collect();
        others.sort_unstable();
        std::iter::once(prefer).chain(others).map(|a| a.next_multiple_of(0x1000)).find(|&a| fits(a))
    }

    /// Puts the initrd at the highest 4 KiB-aligned address that keeps it at or below
    /// `limit` (inclusive), in low RAM, and above `lowest` (the kernel's end).
    pub fn place_initrd(&self, lowest: u64, limit: u64) -> Result<Option<(u64, u64)>> {
        let Some(data) = self.initrd else { return Ok(None) };
        let size = data.len() as u64;
        let top = limit.saturating_add(1).min(self.layout.below_4g).min(FOUR_GIB);
        let too_big = || LoaderError::InitrdTooBig { size, limit: top.saturating_sub(1), ram_mib: self.ram_mib() };
        let addr = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
        if addr < lowest || !self.in_ram(addr, size) {
            return Err(too_big());
        }
        self.mem.write(addr, data)?;
        Ok(Some((addr, size)))
    }
}

/// Little-endian readers that return `None` past the end, so that no input panics.
pub(crate) fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off.checked_add(2)?)?.try_into().ok()?))
}
pub(crate) fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}
pub(crate) fn le64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

/// The name of an ELF e_machine value, for saying what a non-x86 kernel is for.
pub fn machine_name(machine: u16) -> &'static str {
    match machine {
        2 => "sparc",
        3 => "i386 (32-bit x86)",
        8 => "mips",
        20 => "32-bit powerpc",
        21 => "powerpc64",
        22 => "s390x",
        40 => "32-bit arm",
        43 => "sparc64",
        50 => "ia64",
        62 => "x86-64",
        183 => "aarch64",
        243 => "riscv",
        258 => "loongarch",
        _ => "an unknown architecture",
    }
}

/// Writes the GDT and TSS and returns segment state matching them: flat code and data
/// at [`BOOT_CS`]/[`BOOT_DS`], 64-bit code if `long`.
fn segments(mem: &GuestMemory, long: bool) -> Result<SpecialRegs> {
    segments_at(mem, GDT_ADDR, TSS_ADDR, long)
}

/// [`segments`] with the GDT (48 bytes) and TSS (104 bytes) at the given addresses.
fn segments_at(mem: &GuestMemory, gdt_addr: u64, tss_addr: u64, long: bool) -> Result<SpecialRegs> {
    let cs = Segment::flat(BOOT_CS, true, long);
    let ds = Segment::flat(BOOT_DS, false, false);
    // A busy 32/64-bit TSS (type 0xb): VMX refuses to enter a guest without a usable TR.
    let tr =
        Segment { base: tss_addr, limit: 0x67, selector: BOOT_TR, type_: 0xb, present: true, ..Default::default() };
    // Entry 4-5 is the TSS; its upper half (base bits 63:32) is zero.
    let gdt: [u64; 6] = [0, 0, cs.descriptor(), ds.descriptor(), tr.descriptor(), 0];
    let bytes: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    mem.write(gdt_addr, &bytes)?;
    mem.fill(tss_addr, 0x68, 0)?;
    // No I/O permission bitmap: its offset points past the TSS limit.
    mem.write_u16(tss_addr + 0x66, 0x68)?;

    let (_, reset) = power_on_state();
    Ok(SpecialRegs {
        cs,
        ds,
        es: ds,
        fs: ds,
        gs: ds,
        ss: ds,
        tr,
        gdt: DescriptorTable { base: gdt_addr, limit: (bytes.len() - 1) as u16 },
        idt: DescriptorTable { base: 0, limit: 0 },
        cr0: ctrl::CR0_PE | ctrl::CR0_ET | ctrl::CR0_NE,
        cr2: 0,
        cr3: 0,
        cr4: 0,
        efer: 0,
        ..reset
    })
}

/// 32-bit protected mode, paging off, flat segments: the state Multiboot and PVH
/// entries use (GDT and TSS written below [`BOOT_AREA_END`]). Public for tests that
/// start a vCPU the way the loader does.
pub fn protected_mode(mem: &GuestMemory) -> Result<SpecialRegs> {
    segments(mem, false)
}

/// [`protected_mode`] with the GDT and TSS where the caller put room for them.
pub(crate) fn protected_mode_at(mem: &GuestMemory, gdt_addr: u64, tss_addr: u64) -> Result<SpecialRegs> {
    segments_at(mem, gdt_addr, tss_addr, false)
}

/// 64-bit long mode with the first 4 GiB identity-mapped by 2 MiB pages (page tables
/// at [`PML4_ADDR`]). Public for tests that start a vCPU the way the loader does.
pub fn long_mode(mem: &GuestMemory) -> Result<SpecialRegs> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_2M: u64 = 0x80;
    let pdpt = PML4_ADDR + 0x1000;
    let pd = pdpt + 0x1000;
    mem.fill(PML4_ADDR, 0x2000, 0)?;
    mem.write_u64(PML4_ADDR, pdpt | PRESENT_RW)?;
    for g in 0..4u64 {
        mem.write_u64(pdpt + g * 8, (pd + g * 0x1000) | PRESENT_RW)?;
    }
    let entries: Vec<u8> = (0..2048u64).flat_map(|i| ((i << 21) | PRESENT_RW | PAGE_2M).to_le_bytes()).collect();
    mem.write(pd, &entries)?;

    let mut s = segments(mem, true)?;
    s.cr0 |= ctrl::CR0_PG;
    s.cr3 = PML4_ADDR;
    s.cr4 = ctrl::CR4_PAE;
    s.efer = ctrl::EFER_LME | ctrl::EFER_LMA;
    Ok(s)
}

/// General registers at entry: everything zero but the stack, RIP and flags (IF off).
pub(crate) fn entry_regs(rip: u64) -> Regs {
    Regs { rip, rsp: BOOT_STACK, rflags: flags::FIXED1, ..Default::default() }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use crate::layout::MemoryLayout;

    pub fn machine(mib: u64) -> (MemoryLayout, GuestMemory) {
        let layout = MemoryLayout::new(mib * MIB, 0).unwrap();
        let mem = layout.build_memory().unwrap();
        (layout, mem)
    }

    /// A file made by scripts/build-test-guest.sh; a missing one fails the test.
    pub fn guest_file(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/guest").join(name);
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!("cannot read {}: {e}; run scripts/build-test-guest.sh to build the test guests", path.display())
        })
    }

    pub fn read_bytes(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read(addr, &mut v).unwrap();
        v
    }

    pub fn read_cstr(mem: &GuestMemory, addr: u64) -> String {
        let mut s = Vec::new();
        for a in addr.. {
            match mem.read_u8(a).unwrap() {
                0 => break,
                b => s.push(b),
            }
        }
        String::from_utf8(s).unwrap()
    }

    /// Every loaded segment register matches its descriptor in the GDT in memory.
    pub fn assert_gdt_matches(mem: &GuestMemory, s: &SpecialRegs) {
        for seg in [s.cs, s.ds, s.es, s.fs, s.gs, s.ss, s.tr] {
            let idx = u64::from(seg.selector & !7);
            assert!(idx + 7 <= u64::from(s.gdt.limit), "selector {:#x} beyond the GDT limit", seg.selector);
            assert_eq!(mem.read_u64(s.gdt.base + idx).unwrap(), seg.descriptor(), "selector {:#x}", seg.selector);
            assert!(seg.present && !seg.unusable);
        }
        assert_eq!((s.tr.type_, s.tr.s), (0xb, false), "TR must be a busy TSS");
    }

    /// A tiny deterministic PRNG for the fuzz-style tests.
    pub struct XorShift(pub u64);
    impl XorShift {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    fn samples() -> Vec<Vec<u8>> {
        let mut mb = vec![0u8; 0x40];
        let flags = 1 << 16;
        for v in [
            0x1bad_b002u32,
            flags,
            0u32.wrapping_sub(0x1bad_b002 + flags),
            0x10_0040,
            0x10_0000,
            0,
            0x20_0000,
            0x10_0000,
        ] {
            mb.extend_from_slice(&v.to_le_bytes());
        }
        mb.resize(0x200, 0xf4);
        // A 32-bit PVH kernel: note "Xen" type 18 with a 4-byte entry.
        let pvh_note: Vec<u8> =
            [4u32, 4, 18, u32::from_le_bytes(*b"Xen\0"), MIB as u32].iter().flat_map(|v| v.to_le_bytes()).collect();
        vec![
            bzimage::fake_bzimage(0x20f, 1, &[0xf4; 0x400]),
            elf::build_elf(true, MIB, &[(MIB, MIB, &[0xf4; 64], 0x1000)], None),
            elf::build_elf(false, MIB, &[(MIB, MIB, &[0xf4; 64], 0x1000)], Some(&pvh_note)),
            mb,
        ]
    }

    #[test]
    fn truncated_and_random_files_give_errors_not_panics() {
        let (layout, mem) = machine(16);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for good in samples() {
            assert!(load_kernel(&mem, &layout, &good, None, "", None).is_ok());
            for len in 0..good.len() {
                let _ = load_kernel(&mem, &layout, &good[..len], Some(b"x"), "a", Some(0xe0000));
            }
            // Corrupt a few bytes at a time, mostly in the headers.
            for _ in 0..3000 {
                let mut bad = good.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let at = (rng.next() % 0x300) as usize % bad.len();
                    bad[at] = rng.next() as u8;
                }
                let _ = load_kernel(&mem, &layout, &bad, Some(b"x"), "a", Some(0xe0000));
            }
        }
        for len in [0, 1, 4, 100, 0x300, 9000] {
            for _ in 0..50 {
                let _ = load_kernel(&mem, &layout, &rng.bytes(len), None, "", None);
            }
        }
    }

    #[test]
    fn unknown_files_say_which_formats_are_accepted() {
        let (layout, mem) = machine(16);
        let e = load_kernel(&mem, &layout, b"#!/bin/sh\n", None, "", None).unwrap_err();
        assert!(e.to_string().starts_with("not a bzImage, ELF or Multiboot kernel"), "{e}");
    }
}
