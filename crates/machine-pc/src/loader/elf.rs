//! ELF kernels: a vmlinux with a PVH entry (the Xen note XEN_ELFNOTE_PHYS32_ENTRY), as
//! QEMU and Firecracker boot an uncompressed Linux, or any ELF64 entered in long mode.
//! The parser works on the byte slice and returns errors, never panics, on bad input.

use vm_memory::ByteValued;

use super::abi::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, setup_header, XEN_HVM_START_MAGIC_VALUE};
use super::bzimage::{write_zero_page, HDR_MAGIC};
use super::{
    entry_regs, le16, le32, le64, long_mode, protected_mode, Boot, BootSetup, KernelKind, LoaderError, Result,
    BOOT_INFO_ADDR, CMDLINE_MAX, ZERO_PAGE_ADDR,
};
use crate::layout::FOUR_GIB;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// PVH boot data, all in the page at [`BOOT_INFO_ADDR`].
const MODLIST_ADDR: u64 = BOOT_INFO_ADDR + 0x40;
const MEMMAP_ADDR: u64 = BOOT_INFO_ADDR + 0x80;

/// One program header.
#[derive(Clone, Copy, Debug)]
pub struct Phdr {
    pub kind: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

/// An ELF32 or ELF64 little-endian executable.
pub struct Elf<'a> {
    pub data: &'a [u8],
    pub is64: bool,
    pub entry: u64,
    pub phdrs: Vec<Phdr>,
}

fn corrupt(what: &str) -> LoaderError {
    LoaderError::Corrupt(format!("ELF {what}"))
}

impl<'a> Elf<'a> {
    /// `Ok(None)` if `data` is not ELF at all.
    pub fn parse(data: &'a [u8]) -> Result<Option<Self>> {
        if !data.starts_with(b"\x7fELF") {
            return Ok(None);
        }
        let is64 = match data.get(4) {
            Some(1) => false,
            Some(2) => true,
            _ => return Err(corrupt("header has an unknown class")),
        };
        if data.get(5) != Some(&1) {
            return Err(corrupt("file is not little-endian"));
        }
        let machine = le16(data, 18).ok_or_else(|| corrupt("header truncated"))?;
        if machine != EM_386 && machine != EM_X86_64 {
            return Err(LoaderError::NotX86(machine));
        }
        let hdr = if is64 {
            (le64(data, 24), le64(data, 32), le16(data, 54), le16(data, 56))
        } else {
            (le32(data, 24).map(u64::from), le32(data, 28).map(u64::from), le16(data, 42), le16(data, 44))
        };
        let (Some(entry), Some(phoff), Some(phentsize), Some(phnum)) = hdr else {
            return Err(corrupt("header truncated"));
        };
        if usize::from(phentsize) < if is64 { 56 } else { 32 } {
            return Err(corrupt("program header size is too small"));
        }
        let phdrs = (0..u64::from(phnum))
            .map(|i| {
                let off = usize::try_from(phoff.checked_add(i * u64::from(phentsize))?).ok()?;
                Self::phdr(data, off, is64)
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| corrupt("program headers truncated"))?;
        Ok(Some(Elf { data, is64, entry, phdrs }))
    }

    /// ELF32 has the same fields at half the width, and p_flags moved after p_memsz.
    fn phdr(d: &[u8], o: usize, is64: bool) -> Option<Phdr> {
        let kind = le32(d, o)?;
        Some(if is64 {
            let w = |i: usize| le64(d, o + 8 + 8 * i);
            Phdr { kind, offset: w(0)?, vaddr: w(1)?, paddr: w(2)?, filesz: w(3)?, memsz: w(4)?, align: w(5)? }
        } else {
            let w = |i: usize| le32(d, o + 4 + 4 * i).map(u64::from);
            Phdr { kind, offset: w(0)?, vaddr: w(1)?, paddr: w(2)?, filesz: w(3)?, memsz: w(4)?, align: w(6)? }
        })
    }

    /// The file bytes of a segment.
    fn file_bytes(&self, ph: &Phdr) -> Result<&'a [u8]> {
        let start = usize::try_from(ph.offset).ok();
        let end = start.and_then(|s| s.checked_add(usize::try_from(ph.filesz).ok()?));
        start
            .zip(end)
            .and_then(|(s, e)| self.data.get(s..e))
            .ok_or_else(|| corrupt("segment lies past the end of the file"))
    }

    /// The PVH entry point from a `Xen` note of type XEN_ELFNOTE_PHYS32_ENTRY.
    pub fn pvh_entry(&self) -> Option<u64> {
        self.phdrs.iter().filter(|p| p.kind == PT_NOTE).find_map(|ph| {
            let notes = self.file_bytes(ph).ok()?;
            // Notes are 4-byte aligned, or 8 when the segment says so.
            let align = if ph.align == 8 { 8 } else { 4 };
            let mut pos = 0usize;
            while let (Some(namesz), Some(descsz), Some(kind)) =
                (le32(notes, pos), le32(notes, pos + 4), le32(notes, pos + 8))
            {
                let name_at = pos + 12;
                let desc_at = name_at.checked_add(namesz as usize)?.next_multiple_of(align);
                let desc = notes.get(desc_at..desc_at.checked_add(descsz as usize)?)?;
                if kind == XEN_ELFNOTE_PHYS32_ENTRY && notes.get(name_at..name_at + namesz as usize) == Some(b"Xen\0") {
                    return if descsz >= 8 { le64(desc, 0) } else { le32(desc, 0).map(u64::from) };
                }
                pos = (desc_at + descsz as usize).next_multiple_of(align);
            }
            None
        })
    }

    /// Copies the PT_LOAD segments to their physical addresses and zeroes their bss.
    /// Returns the end of the highest one. Segments must lie in RAM and, unless
    /// `low_ok` (the caller keeps its boot data clear of the kernel), above the
    /// loader's fixed area.
    pub(crate) fn load_segments(&self, boot: &Boot, low_ok: bool) -> Result<u64> {
        let mut end = 0;
        let loads: Vec<&Phdr> = self.phdrs.iter().filter(|p| p.kind == PT_LOAD && p.memsz > 0).collect();
        if loads.is_empty() {
            return Err(corrupt("file has no loadable segment"));
        }
        for ph in loads {
            let bytes = self.file_bytes(ph)?;
            if ph.filesz > ph.memsz {
                return Err(corrupt("segment is larger in the file than in memory"));
            }
            if low_ok {
                boot.check_ram(ph.paddr, ph.memsz)?;
            } else {
                boot.check_segment(ph.paddr, ph.memsz)?;
            }
            boot.mem.write(ph.paddr, bytes)?;
            boot.mem.fill(ph.paddr + ph.filesz, (ph.memsz - ph.filesz) as usize, 0)?;
            end = end.max(ph.paddr + ph.memsz);
        }
        Ok(end)
    }

    /// The [start, end) physical ranges the PT_LOAD segments occupy.
    pub fn load_ranges(&self) -> Vec<(u64, u64)> {
        let loads = self.phdrs.iter().filter(|p| p.kind == PT_LOAD && p.memsz > 0);
        loads.map(|p| (p.paddr, p.paddr.saturating_add(p.memsz))).collect()
    }

    /// The physical entry point: `e_entry` translated through the PT_LOAD whose virtual
    /// range holds it (a kernel linked at a high virtual address), else as it is.
    pub fn entry_phys(&self) -> u64 {
        self.phdrs
            .iter()
            .find(|p| p.kind == PT_LOAD && self.entry >= p.vaddr && self.entry - p.vaddr < p.memsz)
            .map_or(self.entry, |p| (self.entry - p.vaddr).wrapping_add(p.paddr))
    }
}

pub(crate) fn load(boot: &Boot, elf: &Elf) -> Result<BootSetup> {
    match (elf.pvh_entry(), elf.is64) {
        (Some(entry), _) => load_pvh(boot, elf, entry),
        (None, true) => load_elf64(boot, elf),
        (None, false) => Err(LoaderError::Elf32Unsupported),
    }
}

fn load_pvh(boot: &Boot, elf: &Elf, entry: u64) -> Result<BootSetup> {
    if entry >= FOUR_GIB {
        return Err(corrupt(&format!("PVH entry {entry:#x} is above 4 GiB")));
    }
    let end = elf.load_segments(boot, false)?;
    let cmdline = boot.write_cmdline(CMDLINE_MAX)?;
    let initrd = boot.place_initrd(end.next_multiple_of(0x1000), FOUR_GIB - 1)?;

    let e820 = boot.layout.e820();
    let memmap: Vec<u8> = e820
        .iter()
        .flat_map(|e| {
            let m = hvm_memmap_table_entry { addr: e.addr, size: e.size, kind: e.kind as u32, reserved: 0 };
            m.as_slice().to_vec()
        })
        .collect();
    boot.mem.write(MEMMAP_ADDR, &memmap)?;
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: cmdline,
        rsdp_paddr: boot.acpi_rsdp.unwrap_or(0),
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry { paddr, size, cmdline_paddr: 0, reserved: 0 };
        boot.mem.write(MODLIST_ADDR, module.as_slice())?;
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST_ADDR;
    }
    boot.mem.write(BOOT_INFO_ADDR, info.as_slice())?;

    let mut regs = entry_regs(entry);
    regs.rbx = BOOT_INFO_ADDR;
    Ok(BootSetup { regs, sregs: protected_mode(boot.mem)?, kind: KernelKind::Pvh, initrd })
}

fn load_elf64(boot: &Boot, elf: &Elf) -> Result<BootSetup> {
    let entry = elf.entry_phys();
    if entry >= FOUR_GIB {
        return Err(corrupt(&format!("entry {entry:#x} is outside the identity-mapped first 4 GiB")));
    }
    let end = elf.load_segments(boot, false)?;
    boot.write_cmdline(CMDLINE_MAX)?;
    let initrd = boot.place_initrd(end.next_multiple_of(0x1000), FOUR_GIB - 1)?;
    // What a Linux vmlinux entered at startup_64 reads from the header.
    let hdr = setup_header {
        boot_flag: 0xaa55,
        header: HDR_MAGIC,
        version: 0x20f,
        type_of_loader: 0xff,
        cmdline_size: CMDLINE_MAX as u32,
        kernel_alignment: 0x100_0000,
        ..Default::default()
    };
    write_zero_page(boot, hdr, initrd)?;
    let mut regs = entry_regs(entry);
    regs.rsi = ZERO_PAGE_ADDR;
    Ok(BootSetup { regs, sregs: long_mode(boot.mem)?, kind: KernelKind::Elf64, initrd })
}

/// Builds a minimal ELF for tests: `segs` are (vaddr, paddr, bytes, memsz).
#[cfg(test)]
pub(crate) fn build_elf(is64: bool, entry: u64, segs: &[(u64, u64, &[u8], u64)], note: Option<&[u8]>) -> Vec<u8> {
    let (ehsize, phsize) = if is64 { (64, 56) } else { (52, 32) };
    let nph = segs.len() + usize::from(note.is_some());
    let mut f = vec![0u8; 0x100];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = if is64 { 2 } else { 1 };
    f[5] = 1;
    f[6] = 1;
    let put = |f: &mut Vec<u8>, off: usize, v: u64, w: usize| f[off..off + w].copy_from_slice(&v.to_le_bytes()[..w]);
    put(&mut f, 16, 2, 2); // ET_EXEC
    put(&mut f, 18, if is64 { 62 } else { 3 }, 2);
    let word = if is64 { 8 } else { 4 };
    put(&mut f, 24, entry, word);
    put(&mut f, 24 + word, ehsize as u64, word); // phoff
    let tail = if is64 { 52 } else { 40 };
    put(&mut f, tail, ehsize as u64, 2);
    put(&mut f, tail + 2, phsize as u64, 2);
    put(&mut f, tail + 4, nph as u64, 2);
    let mut phs: Vec<(u32, u64, u64, u64, u64, u64)> = Vec::new();
    let mut data = Vec::new();
    for (vaddr, paddr, bytes, memsz) in segs {
        phs.push((PT_LOAD, 0x100 + data.len() as u64, *vaddr, *paddr, bytes.len() as u64, *memsz));
        data.extend_from_slice(bytes);
        data.resize(data.len().next_multiple_of(16), 0);
    }
    if let Some(n) = note {
        phs.push((PT_NOTE, 0x100 + data.len() as u64, 0, 0, n.len() as u64, n.len() as u64));
        data.extend_from_slice(n);
    }
    for (i, (kind, off, vaddr, paddr, filesz, memsz)) in phs.into_iter().enumerate() {
        let o = ehsize + i * phsize;
        put(&mut f, o, kind.into(), 4);
        if is64 {
            for (j, v) in [off, vaddr, paddr, filesz, memsz, 4].into_iter().enumerate() {
                put(&mut f, o + 8 + 8 * j, v, 8);
            }
        } else {
            for (j, v) in [off, vaddr, paddr, filesz, memsz].into_iter().enumerate() {
                put(&mut f, o + 4 + 4 * j, v, 4);
            }
            put(&mut f, o + 28, 4, 4);
        }
    }
    f.extend_from_slice(&data);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MIB;
    use crate::loader::abi::boot_params;
    use crate::loader::test_util::*;
    use crate::loader::{load_kernel, BOOT_AREA_END};
    use quern_core::regs::ctrl;
    use quern_core::GuestMemory;

    fn pvh_note(entry: u64) -> Vec<u8> {
        let mut n = Vec::new();
        for v in [4u32, 8, XEN_ELFNOTE_PHYS32_ENTRY] {
            n.extend_from_slice(&v.to_le_bytes());
        }
        n.extend_from_slice(b"Xen\0");
        n.extend_from_slice(&entry.to_le_bytes());
        n
    }

    fn start_info(mem: &GuestMemory) -> hvm_start_info {
        let mut si = hvm_start_info::default();
        mem.read(BOOT_INFO_ADDR, si.as_mut_slice()).unwrap();
        si
    }

    #[test]
    fn elf64_test_program_enters_long_mode_at_the_physical_entry() {
        let (layout, mem) = machine(64);
        let code = [0xf4u8; 32];
        // Linked high, loaded at 2 MiB, with 4 KiB of bss.
        let elf = build_elf(true, 0xffff_ffff_8000_0010, &[(0xffff_ffff_8000_0000, 2 * MIB, &code, 0x1020)], None);
        mem.fill(2 * MIB, 0x2000, 0xaa).unwrap();
        let b = load_kernel(&mem, &layout, &elf, None, "hello", None).unwrap();
        assert_eq!(b.kind, KernelKind::Elf64);
        assert_eq!((b.regs.rip, b.regs.rsi, b.regs.rflags), (2 * MIB + 0x10, ZERO_PAGE_ADDR, 2));
        assert_eq!(b.sregs.efer, ctrl::EFER_LME | ctrl::EFER_LMA);
        assert_eq!(b.sregs.cr0 & ctrl::CR0_PG, ctrl::CR0_PG);
        assert_gdt_matches(&mem, &b.sregs);
        assert_eq!(read_bytes(&mem, 2 * MIB, 32), code);
        assert_eq!(read_bytes(&mem, 2 * MIB + 32, 0x1000), vec![0; 0x1000], "bss is zeroed");
        let mut bp = boot_params::zeroed();
        mem.read(ZERO_PAGE_ADDR, bp.as_mut_slice()).unwrap();
        let hdr = bp.hdr;
        assert_eq!(read_cstr(&mem, u64::from(hdr.cmd_line_ptr)), "hello");
        assert_eq!(usize::from(bp.e820_entries), layout.e820().len());
    }

    #[test]
    fn bad_segments_are_refused_with_a_reason() {
        let (layout, mem) = machine(64);
        let beyond = build_elf(true, 0, &[(0, 64 * MIB, &[1; 16], 16)], None);
        let e = load_kernel(&mem, &layout, &beyond, None, "", None).unwrap_err();
        assert!(matches!(e, LoaderError::SegmentOutsideRam { .. }), "{e}");
        assert!(e.to_string().contains("give more memory"));
        let low = build_elf(true, 0x1000, &[(0x1000, 0x1000, &[1; 16], 16)], None);
        let e = load_kernel(&mem, &layout, &low, None, "", None).unwrap_err();
        assert!(matches!(e, LoaderError::SegmentInBootArea { .. }), "{e}");
        let hole = build_elf(true, 0xa0000, &[(0xa0000, 0xa0000.max(BOOT_AREA_END), &[1; 16], 16)], None);
        let e = load_kernel(&mem, &layout, &hole, None, "", None).unwrap_err();
        assert!(matches!(e, LoaderError::SegmentInHole { .. }), "VGA window is not RAM: {e}");
        assert!(!e.to_string().contains("more memory"), "{e}");
        let elf32 = build_elf(false, MIB, &[(MIB, MIB, &[1; 16], 16)], None);
        assert!(matches!(load_kernel(&mem, &layout, &elf32, None, "", None), Err(LoaderError::Elf32Unsupported)));
    }

    #[test]
    fn foreign_kernels_name_their_architecture() {
        let (layout, mem) = machine(64);
        for (machine, name) in
            [(183u16, "aarch64"), (40, "32-bit arm"), (243, "riscv"), (0x7777, "an unknown architecture")]
        {
            let mut elf = build_elf(true, MIB, &[(MIB, MIB, &[1; 16], 16)], None);
            elf[18..20].copy_from_slice(&machine.to_le_bytes());
            let e = load_kernel(&mem, &layout, &elf, None, "", None).unwrap_err().to_string();
            assert!(e.starts_with(&format!("ELF kernel is built for {name} (ELF machine {machine}),")), "{e}");
            assert!(e.contains("give an i386 or x86-64 kernel"), "{e}");
        }
    }

    #[test]
    fn pvh_note_selects_the_pvh_entry() {
        let (layout, mem) = machine(64);
        let elf = build_elf(true, 0xffff_ffff_8100_0000, &[(MIB, MIB, &[0xf4; 64], 64)], Some(&pvh_note(0x10_0020)));
        let b = load_kernel(&mem, &layout, &elf, Some(b"initrd"), "root=/dev/ram0", Some(0xe0000)).unwrap();
        assert_eq!((b.kind, b.regs.rip, b.regs.rbx), (KernelKind::Pvh, 0x10_0020, BOOT_INFO_ADDR));
        let si = start_info(&mem);
        assert_eq!((si.magic, si.version, si.rsdp_paddr, si.nr_modules), (XEN_HVM_START_MAGIC_VALUE, 1, 0xe0000, 1));
        assert_eq!(read_cstr(&mem, si.cmdline_paddr), "root=/dev/ram0");
    }

    #[test]
    fn debian_vmlinux_boots_through_pvh() {
        let kernel = guest_file("vmlinux");
        let initrd = guest_file("initramfs.cpio.gz");
        let elf = Elf::parse(&kernel).unwrap().unwrap();
        let entry = elf.pvh_entry().expect("Debian's vmlinux has a PVH note");
        assert!(elf.is64 && entry < FOUR_GIB);

        let (layout, mem) = machine(512);
        let b = load_kernel(&mem, &layout, &kernel, Some(&initrd), "console=ttyS0", Some(0xe0000)).unwrap();
        assert_eq!((b.kind, b.regs.rip, b.regs.rbx, b.regs.rflags), (KernelKind::Pvh, entry, BOOT_INFO_ADDR, 2));
        assert_eq!(b.sregs.cr0 & (ctrl::CR0_PE | ctrl::CR0_PG), ctrl::CR0_PE);
        assert!(b.sregs.cs.db && !b.sregs.cs.l && b.sregs.efer == 0);
        assert_gdt_matches(&mem, &b.sregs);

        let si = start_info(&mem);
        assert_eq!((si.magic, si.version), (XEN_HVM_START_MAGIC_VALUE, 1));
        assert_eq!(read_cstr(&mem, si.cmdline_paddr), "console=ttyS0");
        assert_eq!(si.rsdp_paddr, 0xe0000);
        let e820 = layout.e820();
        assert_eq!(si.memmap_entries as usize, e820.len());
        for (i, e) in e820.iter().enumerate() {
            let mut m = hvm_memmap_table_entry::default();
            mem.read(si.memmap_paddr + 24 * i as u64, m.as_mut_slice()).unwrap();
            assert_eq!((m.addr, m.size, m.kind), (e.addr, e.size, e.kind as u32));
        }
        assert_eq!(si.nr_modules, 1);
        let mut module = hvm_modlist_entry::default();
        mem.read(si.modlist_paddr, module.as_mut_slice()).unwrap();
        assert_eq!(Some((module.paddr, module.size)), b.initrd);
        assert_eq!(read_bytes(&mem, module.paddr, initrd.len()), initrd);
        // Every PT_LOAD segment's bytes are at its physical address.
        for ph in elf.phdrs.iter().filter(|p| p.kind == PT_LOAD) {
            let n = ph.filesz.min(4096) as usize;
            let off = ph.offset as usize;
            assert_eq!(read_bytes(&mem, ph.paddr, n), kernel[off..off + n]);
            assert!(module.paddr >= ph.paddr + ph.memsz, "initrd overlaps the kernel");
        }
    }
}
