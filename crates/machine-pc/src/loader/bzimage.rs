//! The Linux/x86 boot protocol (Documentation/arch/x86/boot.rst) for bzImage files.
//!
//! The struct layouts (`boot_params`, `setup_header`) are in [`super::abi`]; the header
//! is parsed here from the byte slice.

use vm_memory::ByteValued;

use super::abi::{boot_e820_entry, boot_params, setup_header, CAN_USE_HEAP, E820_MAX_ENTRIES_ZEROPAGE, XLF_KERNEL_64};
use super::{
    entry_regs, long_mode, protected_mode, Boot, BootSetup, KernelKind, LoaderError, Result, CMDLINE_ADDR,
    KERNEL_LOAD_ADDR, ZERO_PAGE_ADDR,
};

/// Where the setup header starts, in the file and in the zero page.
const HDR_OFFSET: usize = 0x1f1;
/// "HdrS".
pub const HDR_MAGIC: u32 = 0x5372_6448;
const MIN_VERSION: u16 = 0x206;
/// `acpi_rsdp_addr` exists from protocol 2.14.
const RSDP_VERSION: u16 = 0x20e;

pub fn is_bzimage(kernel: &[u8]) -> bool {
    kernel.get(0x202..0x206) == Some(b"HdrS")
}

/// The kernel's setup header, as far as this kernel's protocol version defines it.
pub fn parse_header(kernel: &[u8]) -> Result<setup_header> {
    let mut hdr = setup_header::zeroed();
    // The header ends where the jump at 0x200 lands: 0x202 + its 8-bit displacement.
    // Bytes past that are setup code, not fields, and must not be copied.
    let jump = *kernel.get(0x201).ok_or_else(|| LoaderError::Corrupt("bzImage header truncated".into()))?;
    let len = (0x202 + usize::from(jump) - HDR_OFFSET).min(std::mem::size_of::<setup_header>());
    let src = kernel
        .get(HDR_OFFSET..HDR_OFFSET + len)
        .ok_or_else(|| LoaderError::Corrupt("bzImage header truncated".into()))?;
    hdr.as_mut_slice()[..len].copy_from_slice(src);
    let version = hdr.version;
    if version < MIN_VERSION {
        return Err(LoaderError::ProtocolTooOld(version));
    }
    Ok(hdr)
}

pub(crate) fn load(boot: &Boot, kernel: &[u8]) -> Result<BootSetup> {
    let mut hdr = parse_header(kernel)?;
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => usize::from(n),
    };
    // A cut-short file (an interrupted copy or download) would load and then crash the
    // guest in a reset loop: the header's sizes say how long the file must be.
    let setup_len = (setup_sects + 1) * 512;
    let code = kernel.get(setup_len..).filter(|c| !c.is_empty()).ok_or_else(|| {
        LoaderError::Truncated(format!(
            "its setup header says the real-mode setup code alone takes {setup_len} bytes \
             (setup_sects {setup_sects}), but the file has {} bytes",
            kernel.len()
        ))
    })?;
    let sys_len = u64::from(hdr.syssize) * 16;
    if (code.len() as u64) < sys_len {
        return Err(LoaderError::Truncated(format!(
            "its setup header says the protected-mode kernel takes {sys_len} bytes (syssize {:#x}), \
             but the file has only {} bytes after the setup code",
            { hdr.syssize },
            code.len()
        )));
    }

    // A relocatable kernel decompresses to max(load address, pref_address) and needs
    // init_size bytes there (protocol 2.10+); the initrd must stay clear of all of it.
    let run_base = if hdr.version >= 0x20a && hdr.relocatable_kernel != 0 {
        KERNEL_LOAD_ADDR.max(hdr.pref_address)
    } else {
        KERNEL_LOAD_ADDR
    };
    let kernel_end = (KERNEL_LOAD_ADDR + code.len() as u64).max(run_base.saturating_add(u64::from(hdr.init_size)));
    let need = kernel_end - KERNEL_LOAD_ADDR;
    if !boot.in_ram(KERNEL_LOAD_ADDR, need) {
        return Err(LoaderError::KernelTooBig { need, base: KERNEL_LOAD_ADDR, ram_mib: boot.layout.ram >> 20 });
    }
    boot.mem.write(KERNEL_LOAD_ADDR, code)?;
    boot.write_cmdline(hdr.cmdline_size as usize)?;
    // Even with XLF_CAN_BE_LOADED_ABOVE_4G the initrd stays below 4 GiB, as QEMU does.
    let initrd = boot.place_initrd(kernel_end.next_multiple_of(0x1000), u64::from(hdr.initrd_addr_max))?;

    hdr.type_of_loader = 0xff;
    hdr.loadflags |= CAN_USE_HEAP;
    // Relative to the real-mode segment, and unused on the 32/64-bit entries.
    hdr.heap_end_ptr = 0xfe00;
    hdr.code32_start = KERNEL_LOAD_ADDR as u32;
    write_zero_page(boot, hdr, initrd)?;

    let (mut regs, sregs) = if hdr.xloadflags & XLF_KERNEL_64 != 0 {
        (entry_regs(KERNEL_LOAD_ADDR + 0x200), long_mode(boot.mem)?)
    } else {
        (entry_regs(KERNEL_LOAD_ADDR), protected_mode(boot.mem)?)
    };
    regs.rsi = ZERO_PAGE_ADDR;
    Ok(BootSetup { regs, sregs, kind: KernelKind::BzImage, initrd })
}

/// Writes the zero page at [`ZERO_PAGE_ADDR`]: `hdr` plus the command line (already
/// written at [`CMDLINE_ADDR`]), initrd, e820 map and RSDP address.
pub(crate) fn write_zero_page(boot: &Boot, mut hdr: setup_header, initrd: Option<(u64, u64)>) -> Result<()> {
    let mut bp = boot_params::zeroed();
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    if let Some((addr, len)) = initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = len as u32;
        bp.ext_ramdisk_image = (addr >> 32) as u32;
        bp.ext_ramdisk_size = (len >> 32) as u32;
    }
    if let Some(rsdp) = boot.acpi_rsdp.filter(|_| hdr.version >= RSDP_VERSION) {
        bp.acpi_rsdp_addr = rsdp;
    }
    let e820 = boot.layout.e820();
    for (i, e) in e820.iter().take(E820_MAX_ENTRIES_ZEROPAGE).enumerate() {
        bp.e820_table[i] = boot_e820_entry { addr: e.addr, size: e.size, kind: e.kind as u32 };
    }
    bp.e820_entries = e820.len().min(E820_MAX_ENTRIES_ZEROPAGE) as u8;
    bp.hdr = hdr;
    boot.mem.write(ZERO_PAGE_ADDR, bp.as_slice())?;
    Ok(())
}

#[cfg(test)]
/// A fake bzImage: one setup sector, a 2.15 header and `code` as the kernel.
pub(crate) fn fake_bzimage(version: u16, xloadflags: u16, code: &[u8]) -> Vec<u8> {
    let mut k = vec![0u8; 1024];
    k[0x1f1] = 1; // setup_sects
    k[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    k[0x200] = 0xeb;
    k[0x201] = 0x6a; // header ends at 0x26c
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&version.to_le_bytes());
    k[0x211] = 1; // LOADED_HIGH
    k[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    k[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
    k[0x238..0x23c].copy_from_slice(&255u32.to_le_bytes()); // cmdline_size
    k[0x260..0x264].copy_from_slice(&0x10_0000u32.to_le_bytes()); // init_size
    k.extend_from_slice(code);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{E820Type, MIB};
    use crate::loader::test_util::*;
    use crate::loader::{load_kernel, BOOT_CS, PML4_ADDR};
    use quern_core::regs::ctrl;
    use quern_core::GuestMemory;

    fn zero_page(mem: &GuestMemory) -> boot_params {
        let mut bp = boot_params::zeroed();
        mem.read(ZERO_PAGE_ADDR, bp.as_mut_slice()).unwrap();
        bp
    }

    #[test]
    fn fake_kernel_boots_in_long_mode_with_a_zero_page() {
        let (layout, mem) = machine(64);
        let k = fake_bzimage(0x20f, XLF_KERNEL_64, &[0xf4; 0x300]);
        let b = load_kernel(&mem, &layout, &k, Some(&[7; 5000]), "console=ttyS0", Some(0xe0000)).unwrap();
        assert_eq!(b.kind, KernelKind::BzImage);
        assert_eq!((b.regs.rip, b.regs.rsi, b.regs.rflags), (0x100200, ZERO_PAGE_ADDR, 2));
        assert_eq!(b.sregs.efer & ctrl::EFER_LMA, ctrl::EFER_LMA);
        assert!(b.sregs.cs.l && b.sregs.cs.selector == BOOT_CS);
        assert_gdt_matches(&mem, &b.sregs);
        let bp = zero_page(&mem);
        let hdr = bp.hdr;
        assert_eq!((hdr.type_of_loader, hdr.loadflags & CAN_USE_HEAP), (0xff, CAN_USE_HEAP));
        assert_eq!(read_cstr(&mem, u64::from(hdr.cmd_line_ptr)), "console=ttyS0");
        // The initrd sits at the top of RAM, page-aligned.
        let (addr, len) = b.initrd.unwrap();
        assert_eq!((addr, len), ((64 * MIB - 5000) & !0xfff, 5000));
        assert_eq!((hdr.ramdisk_image, hdr.ramdisk_size), (addr as u32, 5000));
        assert_eq!({ bp.acpi_rsdp_addr }, 0xe0000, "protocol 2.15 carries the RSDP");
    }

    #[test]
    fn kernel_without_64_bit_entry_starts_in_protected_mode() {
        let (layout, mem) = machine(64);
        let k = fake_bzimage(0x20a, 0, &[0xf4; 0x300]);
        let b = load_kernel(&mem, &layout, &k, None, "", Some(0xe0000)).unwrap();
        assert_eq!((b.regs.rip, b.regs.rsi, b.regs.rbx, b.regs.rbp, b.regs.rdi), (0x100000, ZERO_PAGE_ADDR, 0, 0, 0));
        assert_eq!(b.sregs.cr0 & (ctrl::CR0_PE | ctrl::CR0_PG), ctrl::CR0_PE);
        assert!(b.sregs.cs.db && !b.sregs.cs.l && b.sregs.efer == 0);
        assert_gdt_matches(&mem, &b.sregs);
        assert_eq!({ zero_page(&mem).acpi_rsdp_addr }, 0, "2.10 has no acpi_rsdp_addr");
    }

    #[test]
    fn user_errors_say_what_to_do() {
        let (layout, mem) = machine(64);
        let old = fake_bzimage(0x205, 0, &[0; 16]);
        let e = load_kernel(&mem, &layout, &old, None, "", None).unwrap_err();
        assert_eq!(e.to_string(), "kernel too old: boot protocol 2.05, need >= 2.06");
        let k = fake_bzimage(0x20f, 1, &[0; 16]);
        let e = load_kernel(&mem, &layout, &k, None, &"x".repeat(256), None).unwrap_err();
        assert!(matches!(e, LoaderError::CmdlineTooLong { len: 256, max: 255 }), "{e}");
        let e = load_kernel(&mem, &layout, &k, Some(&vec![0; 63 * MIB as usize]), "", None).unwrap_err();
        assert!(e.to_string().contains("give more memory"), "{e}");
    }

    #[test]
    fn truncated_files_are_refused_as_truncated() {
        let (layout, mem) = machine(64);
        let mut k = fake_bzimage(0x20f, 1, &[0xf4; 0x400]);
        k[0x1f4..0x1f8].copy_from_slice(&0x40u32.to_le_bytes()); // syssize: 0x400 bytes
        assert!(load_kernel(&mem, &layout, &k, None, "", None).is_ok());
        for (len, says) in [(k.len() - 1, "syssize 0x40"), (1024, "setup_sects 1"), (0x300, "setup_sects 1")] {
            let e = load_kernel(&mem, &layout, &k[..len], None, "", None).unwrap_err();
            assert!(matches!(e, LoaderError::Truncated(_)), "{len}: {e}");
            let msg = e.to_string();
            assert!(msg.starts_with("kernel file is truncated:") && msg.contains(says), "{len}: {msg}");
        }
        // setup_sects beyond the file.
        k[0x1f1] = 30;
        let e = load_kernel(&mem, &layout, &k, None, "", None).unwrap_err();
        assert!(e.to_string().contains("takes 15872 bytes (setup_sects 30), but the file has 2048 bytes"), "{e}");
    }

    #[test]
    fn debian_bzimage_cut_short_is_truncated() {
        let kernel = guest_file("vmlinuz");
        let (layout, mem) = machine(512);
        let e = load_kernel(&mem, &layout, &kernel[..kernel.len() / 2], None, "", None).unwrap_err();
        assert!(e.to_string().contains("truncated") && e.to_string().contains("syssize"), "{e}");
    }

    #[test]
    fn debian_bzimage() {
        let kernel = guest_file("vmlinuz");
        let initrd = guest_file("initramfs.cpio.gz");
        let hdr = parse_header(&kernel).unwrap();
        let (version, xlf, limit) = (hdr.version, hdr.xloadflags, hdr.initrd_addr_max);
        assert!(version >= 0x20c, "protocol {version:#x}");
        assert_ne!(xlf & XLF_KERNEL_64, 0);

        let (layout, mem) = machine(512);
        let b = load_kernel(&mem, &layout, &kernel, Some(&initrd), "console=ttyS0 quiet", Some(0xe0000)).unwrap();
        assert_eq!((b.kind, b.regs.rip, b.regs.rsi), (KernelKind::BzImage, 0x100200, ZERO_PAGE_ADDR));
        assert_gdt_matches(&mem, &b.sregs);
        // The protected-mode code is at 1 MiB.
        let off = (usize::from(kernel[0x1f1]) + 1) * 512;
        assert_eq!(read_bytes(&mem, KERNEL_LOAD_ADDR, 4096), kernel[off..off + 4096]);
        // Identity map: the PD entry for 0xfee00000 maps itself.
        let pd3 = PML4_ADDR + 0x5000;
        assert_eq!(mem.read_u64(pd3 + 8 * 503).unwrap(), 0xfee0_0000 | 0x83);

        let bp = zero_page(&mem);
        let h = bp.hdr;
        assert_eq!((h.header, h.version, h.type_of_loader), (HDR_MAGIC, version, 0xff));
        assert_eq!(read_cstr(&mem, u64::from(h.cmd_line_ptr)), "console=ttyS0 quiet");
        assert_eq!({ bp.acpi_rsdp_addr }, 0xe0000);
        let e820: Vec<_> =
            (0..usize::from(bp.e820_entries)).map(|i| bp.e820_table[i]).map(|e| (e.addr, e.size, e.kind)).collect();
        let want: Vec<_> = layout.e820().iter().map(|e| (e.addr, e.size, e.kind as u32)).collect();
        assert_eq!(e820, want);
        assert!(want.contains(&(0xe0000, 0x20000, E820Type::Reserved as u32)));

        let (addr, len) = b.initrd.unwrap();
        assert_eq!((u64::from(h.ramdisk_image), u64::from(h.ramdisk_size)), (addr, len));
        assert_eq!(addr % 4096, 0);
        assert!(addr + len <= u64::from(limit) + 1 && addr + len <= layout.below_4g);
        assert!(addr >= KERNEL_LOAD_ADDR.max(h.pref_address) + u64::from(h.init_size), "initrd overlaps the kernel");
        assert_eq!(read_bytes(&mem, addr, initrd.len()), initrd);
    }

    #[test]
    fn debian_bzimage_needs_its_init_size() {
        let kernel = guest_file("vmlinuz");
        let (layout, mem) = machine(32);
        let e = load_kernel(&mem, &layout, &kernel, None, "", None).unwrap_err();
        assert!(matches!(e, LoaderError::KernelTooBig { .. }), "{e}");
    }
}
