//! Multiboot v1 (the GNU Multiboot Specification 0.6.96): ELF32 kernels, or any image
//! when the header's address fields are valid (flag 16, the "a.out kludge").
//! Entered in 32-bit protected mode with EAX=0x2BADB002 and EBX = multiboot_info.

use super::elf::Elf;
use super::{entry_regs, le32, protected_mode_at, Boot, BootSetup, KernelKind, LoaderError, Result, CMDLINE_MAX};
use crate::layout::{E820Type, FOUR_GIB, MIB};

const HEADER_MAGIC: u32 = 0x1bad_b002;
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// The header must lie in the first 8 KiB, 4-aligned.
const SEARCH_LIMIT: usize = 8192;

const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// A video mode request: like QEMU, quern boots without setting one.
const FLAG_VIDEO_MODE: u32 = 1 << 2;
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;

// multiboot_info flags.
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

// The boot information block, by offset from its base (which EBX points at): a page of
// multiboot_info, module list, memory map, names, GDT and TSS, then the command line.
const MODS_OFF: u64 = 0x80;
const MMAP_OFF: u64 = 0x100;
const GDT_OFF: u64 = 0x400;
const TSS_OFF: u64 = 0x480;
const LOADER_NAME_OFF: u64 = 0xfe0;
const MODULE_STRING_OFF: u64 = 0xff0;
const CMDLINE_OFF: u64 = 0x1000;

/// A Multiboot header found in the image.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// File offset of the magic.
    pub offset: usize,
    pub flags: u32,
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

fn err(msg: impl Into<String>) -> LoaderError {
    LoaderError::Multiboot(msg.into())
}

/// The first valid header (magic and checksum) in the first 8 KiB.
pub fn find_header(kernel: &[u8]) -> Result<Option<Header>> {
    let end = kernel.len().min(SEARCH_LIMIT);
    let Some(offset) = (0..end).step_by(4).find(|&o| {
        matches!((le32(kernel, o), le32(kernel, o + 4), le32(kernel, o + 8)),
            (Some(HEADER_MAGIC), Some(f), Some(c)) if HEADER_MAGIC.wrapping_add(f).wrapping_add(c) == 0)
    }) else {
        return Ok(None);
    };
    let flags = le32(kernel, offset + 4).unwrap_or(0);
    let unknown = flags & 0xffff & !(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE);
    if unknown != 0 {
        return Err(err(format!("the kernel requires features quern does not provide (header flags {unknown:#x})")));
    }
    let mut h =
        Header { offset, flags, header_addr: 0, load_addr: 0, load_end_addr: 0, bss_end_addr: 0, entry_addr: 0 };
    if flags & FLAG_AOUT_KLUDGE != 0 {
        let f = |i: usize| le32(kernel, offset + 12 + 4 * i).ok_or_else(|| err("header truncated"));
        (h.header_addr, h.load_addr, h.load_end_addr, h.bss_end_addr, h.entry_addr) =
            (f(0)?, f(1)?, f(2)?, f(3)?, f(4)?);
    }
    if flags & FLAG_VIDEO_MODE != 0 {
        // Once per load, so once per reset: limited.
        quern_core::log_limited!(log::Level::Warn, "Multiboot kernel asks for a video mode; booting in text mode");
    }
    Ok(Some(h))
}

pub(crate) fn load(boot: &Boot, kernel: &[u8], h: &Header) -> Result<BootSetup> {
    let (entry, ranges) =
        if h.flags & FLAG_AOUT_KLUDGE != 0 { load_aout(boot, kernel, h)? } else { load_elf(boot, kernel)? };
    // Kernels may load anywhere in RAM, low memory included, so the boot data goes
    // where the kernel is not: after its highest address, as QEMU puts it, or failing
    // that in the lowest free RAM.
    let end = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let size = CMDLINE_OFF + boot.cmdline.len().min(CMDLINE_MAX) as u64 + 1;
    let base = boot.free_area(end, size, &ranges).ok_or_else(|| {
        err(format!(
            "no room in RAM below 4 GiB for the {size}-byte boot information beside the kernel; give more memory"
        ))
    })?;
    let cmdline = boot.write_cmdline_at(base + CMDLINE_OFF, CMDLINE_MAX)?;
    // Modules go page-aligned above the kernel and the boot data (place_initrd aligns).
    let initrd = boot.place_initrd(end.max(base + size).next_multiple_of(0x1000), FOUR_GIB - 1)?;

    let mem = boot.mem;
    let e820 = boot.layout.e820();
    let ram_at = |base: u64| e820.iter().find(|e| e.kind == E820Type::Ram && e.addr == base).map_or(0, |e| e.size);
    let mmap: Vec<u8> = e820
        .iter()
        .flat_map(|e| {
            let mut m = 20u32.to_le_bytes().to_vec(); // size of the rest of the entry
            m.extend_from_slice(&e.addr.to_le_bytes());
            m.extend_from_slice(&e.size.to_le_bytes());
            m.extend_from_slice(&(e.kind as u32).to_le_bytes());
            m
        })
        .collect();
    let (mods_addr, mmap_addr) = (base + MODS_OFF, base + MMAP_OFF);
    let (loader_name_addr, module_string_addr) = (base + LOADER_NAME_OFF, base + MODULE_STRING_OFF);
    mem.fill(base, CMDLINE_OFF as usize, 0)?;
    mem.write(mmap_addr, &mmap)?;
    mem.write(loader_name_addr, b"quern\0")?;
    // The module's string would be the initrd's path, which the loader does not know.
    mem.write_u8(module_string_addr, 0)?;

    let mut info = [0u32; 22];
    info[0] = INFO_MEMORY | INFO_CMDLINE | INFO_MMAP | INFO_LOADER_NAME;
    info[1] = (ram_at(0) / 1024) as u32; // mem_lower, KiB from 0
    info[2] = (ram_at(MIB) / 1024).min(u64::from(u32::MAX)) as u32; // mem_upper, KiB from 1 MiB
    info[4] = cmdline as u32;
    if let Some((addr, len)) = initrd {
        info[0] |= INFO_MODS;
        info[5] = 1;
        info[6] = mods_addr as u32;
        let module = [addr as u32, (addr + len) as u32, module_string_addr as u32, 0];
        mem.write(mods_addr, &module.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
    }
    info[11] = mmap.len() as u32;
    info[12] = mmap_addr as u32;
    info[16] = loader_name_addr as u32;
    mem.write(base, &info.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;

    let mut regs = entry_regs(entry);
    regs.rax = BOOTLOADER_MAGIC.into();
    regs.rbx = base;
    let sregs = protected_mode_at(mem, base + GDT_OFF, base + TSS_OFF)?;
    Ok(BootSetup { regs, sregs, kind: KernelKind::Multiboot, initrd })
}

/// The kernel's entry point and the [start, end) ranges it occupies.
type Loaded = (u64, Vec<(u64, u64)>);

/// Loads by the header's address fields.
fn load_aout(boot: &Boot, kernel: &[u8], h: &Header) -> Result<Loaded> {
    let (header_addr, load_addr) = (u64::from(h.header_addr), u64::from(h.load_addr));
    // The file offset that load_addr corresponds to.
    let file_start = (h.offset as u64)
        .checked_sub(header_addr.checked_sub(load_addr).ok_or_else(|| err("load_addr is above header_addr"))?)
        .ok_or_else(|| err("load_addr lies before the start of the file"))?;
    let file_len = kernel.len() as u64 - file_start;
    let load_end = match h.load_end_addr {
        0 => load_addr + file_len,
        e => u64::from(e),
    };
    let size = load_end.checked_sub(load_addr).filter(|&s| s <= file_len);
    let size = size.ok_or_else(|| err("load_end_addr is before load_addr or past the end of the file"))?;
    let bss_end = match h.bss_end_addr {
        0 => load_end,
        e => u64::from(e),
    };
    if bss_end < load_end {
        return Err(err("bss_end_addr is before load_end_addr"));
    }
    boot.check_ram(load_addr, bss_end - load_addr)?;
    boot.mem.write(load_addr, &kernel[file_start as usize..(file_start + size) as usize])?;
    boot.mem.fill(load_end, (bss_end - load_end) as usize, 0)?;
    Ok((h.entry_addr.into(), vec![(load_addr, bss_end)]))
}

fn load_elf(boot: &Boot, kernel: &[u8]) -> Result<Loaded> {
    match Elf::parse(kernel)? {
        Some(elf) if !elf.is64 => {
            elf.load_segments(boot, true)?;
            Ok((elf.entry_phys(), elf.load_ranges()))
        }
        Some(_) => {
            Err(err("the kernel is a 64-bit ELF; Multiboot v1 needs a 32-bit ELF or the a.out kludge (header flag 16)"))
        }
        None => Err(err("the kernel is not ELF and its header does not set the address fields (flag 16)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::elf::build_elf;
    use crate::loader::test_util::*;
    use crate::loader::{load_kernel, BootSetup};
    use quern_core::regs::ctrl;
    use quern_core::GuestMemory;

    fn header(flags: u32, fields: &[u32]) -> Vec<u8> {
        let checksum = 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags);
        [HEADER_MAGIC, flags, checksum].iter().chain(fields).flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Checks the entry state and multiboot_info that every Multiboot boot shares;
    /// the boot data must lie in RAM clear of `kernel` ([start, end)).
    fn check_boot(
        mem: &GuestMemory,
        layout: &crate::layout::MemoryLayout,
        b: &BootSetup,
        entry: u64,
        initrd: &[u8],
        kernel: (u64, u64),
    ) {
        assert_eq!(b.kind, KernelKind::Multiboot);
        assert_eq!((b.regs.rax, b.regs.rip, b.regs.rflags), (0x2bad_b002, entry, 2));
        let base = b.regs.rbx;
        let block = (base, base + CMDLINE_OFF + "kernel arg=1".len() as u64 + 1);
        let clear = |a: (u64, u64), b: (u64, u64)| a.1 <= b.0 || b.1 <= a.0;
        assert!(clear(block, kernel), "boot data {block:x?} overlaps the kernel {kernel:x?}");
        assert!(block.1 <= layout.below_4g && (block.0 >= MIB || block.1 <= crate::layout::EBDA_START));
        assert!(base.is_multiple_of(4096) && b.sregs.gdt.base >= base && b.sregs.tr.base < base + 0x1000);
        assert_eq!(b.sregs.cr0 & (ctrl::CR0_PE | ctrl::CR0_PG), ctrl::CR0_PE);
        assert!(b.sregs.cs.db && b.sregs.cs.g && b.sregs.cs.base == 0 && b.sregs.cs.limit == 0xffff_ffff);
        for s in [b.sregs.ds, b.sregs.es, b.sregs.fs, b.sregs.gs, b.sregs.ss] {
            assert_eq!((s.base, s.limit, s.type_ & 0xa), (0, 0xffff_ffff, 0x2), "flat writable data");
        }
        assert_gdt_matches(mem, &b.sregs);

        let info = |i: u64| mem.read_u32(base + 4 * i).unwrap();
        assert_eq!(info(0), INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME);
        assert_eq!((info(1), info(2)), (639, (layout.below_4g - MIB) as u32 / 1024));
        assert_eq!(read_cstr(mem, info(4).into()), "kernel arg=1");
        assert_eq!(info(5), 1);
        let module = |i: u64| mem.read_u32(u64::from(info(6)) + 4 * i).unwrap();
        let (start, end) = (u64::from(module(0)), u64::from(module(1)));
        assert_eq!((start % 4096, end - start), (0, initrd.len() as u64));
        assert!(clear((start, end), kernel) && clear((start, end), block), "module overlaps kernel or boot data");
        assert_eq!(read_bytes(mem, start, initrd.len()), initrd);
        assert_eq!(read_cstr(mem, module(2).into()), "");
        let e820 = layout.e820();
        assert_eq!(info(11) as usize, 24 * e820.len());
        for (i, e) in e820.iter().enumerate() {
            let at = u64::from(info(12)) + 24 * i as u64;
            let got = (mem.read_u32(at).unwrap(), mem.read_u64(at + 4).unwrap(), mem.read_u64(at + 12).unwrap());
            assert_eq!((got, mem.read_u32(at + 20).unwrap()), ((20, e.addr, e.size), e.kind as u32));
        }
        assert_eq!(read_cstr(mem, info(16).into()), "quern");
    }

    #[test]
    fn elf32_kernel() {
        let (layout, mem) = machine(128);
        // Header, then `cli; hlt; jmp $-1`.
        let mut seg = header(FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO, &[]);
        seg.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
        let elf = build_elf(false, 0x10_000c, &[(0x10_0000, 0x10_0000, &seg, 0x2000)], None);
        let b = load_kernel(&mem, &layout, &elf, Some(&[0x5a; 3000]), "kernel arg=1", None).unwrap();
        check_boot(&mem, &layout, &b, 0x10_000c, &[0x5a; 3000], (0x10_0000, 0x10_2000));
        assert_eq!(b.regs.rbx, 0x10_2000, "boot data right after the kernel, as QEMU puts it");
        assert_eq!(read_bytes(&mem, 0x10_0000, seg.len()), seg);
        assert_eq!(b.initrd.unwrap().0, (128 * MIB - 3000) & !0xfff);
    }

    #[test]
    fn aout_kludge_kernel() {
        let (layout, mem) = machine(64);
        // A flat image loaded at 2 MiB whose header sits 0x40 bytes in.
        let mut img = vec![0x90u8; 0x40];
        let base = 2 * MIB as u32;
        img.extend(header(FLAG_AOUT_KLUDGE | FLAG_MEMORY_INFO, &[base + 0x40, base, 0, base + 0x3000, base + 0x60]));
        img.resize(0x60, 0);
        img.extend_from_slice(&[0xfa, 0xf4]);
        mem.fill(u64::from(base), 0x3000, 0xcc).unwrap();
        let b = load_kernel(&mem, &layout, &img, Some(b"module"), "kernel arg=1", None).unwrap();
        check_boot(&mem, &layout, &b, u64::from(base) + 0x60, b"module", (base.into(), u64::from(base) + 0x3000));
        assert_eq!(read_bytes(&mem, base.into(), img.len()), img);
        assert_eq!(read_bytes(&mem, u64::from(base) + img.len() as u64, 16), vec![0; 16], "bss is zeroed");
    }

    /// A flat a.out-kludge image loaded at `load`, `len` bytes of it from the file and
    /// `bss` more zeroed, entered at its start + 0x20.
    fn aout_at(load: u32, len: usize, bss: u32) -> Vec<u8> {
        let end = load + len as u32;
        let mut img = header(FLAG_AOUT_KLUDGE | FLAG_MEMORY_INFO, &[load, load, end, end + bss, load + 0x20]);
        img.resize(len, 0xf4);
        img
    }

    #[test]
    fn kernel_in_low_memory_at_0x8000() {
        let (layout, mem) = machine(64);
        // As OS self-tests are linked: at 0x8000, over where the fixed boot area was.
        let img = aout_at(0x8000, 0x3000, 0x21000);
        let b = load_kernel(&mem, &layout, &img, Some(b"module"), "kernel arg=1", None).unwrap();
        check_boot(&mem, &layout, &b, 0x8020, b"module", (0x8000, 0x2c000));
        assert_eq!(b.regs.rbx, 0x2c000);
        assert_eq!(read_bytes(&mem, 0x8000, img.len()), img, "the loader's data did not overwrite the kernel");
        // An ELF32 kernel there too.
        let mut seg = header(FLAG_MEMORY_INFO, &[]);
        seg.extend_from_slice(&[0xfa, 0xf4]);
        let elf = build_elf(false, 0x800c, &[(0x8000, 0x8000, &seg, 0x100)], None);
        let b = load_kernel(&mem, &layout, &elf, Some(b"module"), "kernel arg=1", None).unwrap();
        check_boot(&mem, &layout, &b, 0x800c, b"module", (0x8000, 0x8100));
        assert_eq!(read_bytes(&mem, 0x8000, seg.len()), seg);
    }

    #[test]
    fn boot_data_goes_elsewhere_when_the_kernel_fills_its_ram_range() {
        let (layout, mem) = machine(64);
        // From 0x1000 to the EBDA: nothing fits after it below 1 MiB.
        let img = aout_at(0x1000, 0x1000, 0x9fc00 - 0x2000);
        let b = load_kernel(&mem, &layout, &img, Some(b"module"), "kernel arg=1", None).unwrap();
        check_boot(&mem, &layout, &b, 0x1020, b"module", (0x1000, 0x9fc00));
        assert_eq!(b.regs.rbx, MIB);
        // Up to the end of RAM: the data goes below the kernel.
        let img = aout_at(0x20_0000, 0x1000, 62 * MIB as u32 - 0x1000);
        let b = load_kernel(&mem, &layout, &img, None, "", None).unwrap();
        assert!(b.regs.rbx + 0x1000 <= 0x20_0000, "{:#x}", b.regs.rbx);
    }

    #[test]
    fn segments_outside_ram_say_why() {
        let (layout, mem) = machine(64);
        let msg = |img: &[u8]| load_kernel(&mem, &layout, img, None, "", None).unwrap_err().to_string();
        for load in [0x9f000, 0xa0000, 0xb8000, 0xe0000, 0xf0000] {
            let m = msg(&aout_at(load, 0x2000, 0));
            assert!(m.contains("overlaps the PC's legacy hole 0x9fc00-0xfffff"), "{m}");
            assert!(m.contains("below 0x9fc00 or at 1 MiB") && !m.contains("more memory"), "{m}");
        }
        let m = msg(&aout_at(0xe000_0000, 0x1000, 0));
        assert!(m.contains("PCI hole") && !m.contains("more memory"), "{m}");
        let m = msg(&aout_at(100 * MIB as u32, 0x1000, 0));
        assert_eq!(
            m,
            "kernel segment 0x6400000-0x6400fff lies beyond the end of RAM with -m 64M; \
             give more memory (-m 101M or more)"
        );
    }

    #[test]
    fn bad_headers() {
        let (layout, mem) = machine(64);
        let mut seg = header(1 << 5, &[]);
        seg.extend_from_slice(&[0xf4; 4]);
        let elf = build_elf(false, MIB, &[(MIB, MIB, &seg, 16)], None);
        let e = load_kernel(&mem, &layout, &elf, None, "", None).unwrap_err();
        assert!(e.to_string().contains("requires features"), "{e}");
        let mut seg = header(0, &[]);
        seg.extend_from_slice(&[0xf4; 4]);
        let elf64 = build_elf(true, MIB, &[(MIB, MIB, &seg, 16)], None);
        let e = load_kernel(&mem, &layout, &elf64, None, "", None).unwrap_err();
        assert!(e.to_string().contains("64-bit ELF"), "{e}");
        // A bad checksum is no header: the image is then just an ELF64.
        let mut seg = header(0, &[]);
        seg[8] ^= 1;
        let elf64 = build_elf(true, MIB, &[(MIB, MIB, &seg, 16)], None);
        assert_eq!(load_kernel(&mem, &layout, &elf64, None, "", None).unwrap().kind, KernelKind::Elf64);
        // a.out fields pointing outside the file.
        let img = header(FLAG_AOUT_KLUDGE, &[MIB as u32 + 0x100, MIB as u32, 0, 0, MIB as u32]);
        let e = load_kernel(&mem, &layout, &img, None, "", None).unwrap_err();
        assert!(e.to_string().contains("before the start of the file"), "{e}");
    }
}
