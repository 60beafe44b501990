//! The byte layouts an x86 kernel reads at boot: Linux's zero page (`boot_params` with
//! its `setup_header`, Documentation/arch/x86/zero-page.rst and boot.rst) and the PVH
//! start info (Xen's `hvm_start_info`, version 1).
//!
//! linux-loader has these too, but compiles them only on x86-64 hosts; an emulator of
//! x86 guests needs them on every host (aarch64 included), so they are written out
//! here, with only the fields quern sets or reads named and the rest as reserved bytes.
//! The asserts at the end pin every named field's offset.

#![allow(non_camel_case_types)]

use vm_memory::ByteValued;

/// `loadflags`: the boot loader set `heap_end_ptr`.
pub const CAN_USE_HEAP: u8 = 0x80;
/// `xloadflags`: the kernel has the 64-bit entry point at `code32_start` + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// Entries of the zero page's E820 table.
pub const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;
/// `hvm_start_info.magic`.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// The real-mode kernel header, at 0x1f1 of the bzImage and of the zero page.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct setup_header {
    pub setup_sects: u8,
    pub root_flags: u16,
    pub syssize: u32,
    pub ram_size: u16,
    pub vid_mode: u16,
    pub root_dev: u16,
    pub boot_flag: u16,
    pub jump: u16,
    pub header: u32,
    pub version: u16,
    pub realmode_swtch: u32,
    pub start_sys_seg: u16,
    pub kernel_version: u16,
    pub type_of_loader: u8,
    pub loadflags: u8,
    pub setup_move_size: u16,
    pub code32_start: u32,
    pub ramdisk_image: u32,
    pub ramdisk_size: u32,
    pub bootsect_kludge: u32,
    pub heap_end_ptr: u16,
    pub ext_loader_ver: u8,
    pub ext_loader_type: u8,
    pub cmd_line_ptr: u32,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable_kernel: u8,
    pub min_alignment: u8,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub hardware_subarch: u32,
    pub hardware_subarch_data: u64,
    pub payload_offset: u32,
    pub payload_length: u32,
    pub setup_data: u64,
    pub pref_address: u64,
    pub init_size: u32,
    pub handover_offset: u32,
    pub kernel_info_offset: u32,
}

/// One entry of the zero page's memory map.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct boot_e820_entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The zero page: one 4 KiB page the kernel reads its boot parameters from.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct boot_params {
    _r0: [u8; 0x70],
    pub acpi_rsdp_addr: u64,
    _r1: [u8; 0x48],
    pub ext_ramdisk_image: u32,
    pub ext_ramdisk_size: u32,
    pub ext_cmd_line_ptr: u32,
    _r2: [u8; 0x11c],
    pub e820_entries: u8,
    _r3: [u8; 8],
    pub hdr: setup_header,
    _r4: [u8; 0x64],
    pub e820_table: [boot_e820_entry; E820_MAX_ENTRIES_ZEROPAGE],
    _r5: [u8; 0x330],
}

/// PVH: what the kernel finds at RBX when entered at its XEN_ELFNOTE_PHYS32_ENTRY.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct hvm_start_info {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

/// PVH: one module (the initrd).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct hvm_modlist_entry {
    pub paddr: u64,
    pub size: u64,
    pub cmdline_paddr: u64,
    pub reserved: u64,
}

/// PVH: one entry of the memory map (E820 types).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct hvm_memmap_table_entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

// SAFETY: plain integers and arrays of them, without padding (packed or naturally
// aligned, as the asserts below check), so every byte pattern is a valid value.
unsafe impl ByteValued for setup_header {}
// SAFETY: as above.
unsafe impl ByteValued for boot_e820_entry {}
// SAFETY: as above.
unsafe impl ByteValued for boot_params {}
// SAFETY: as above.
unsafe impl ByteValued for hvm_start_info {}
// SAFETY: as above.
unsafe impl ByteValued for hvm_modlist_entry {}
// SAFETY: as above.
unsafe impl ByteValued for hvm_memmap_table_entry {}

const _: () = {
    use std::mem::{offset_of, size_of};
    // boot.rst's offsets are from the start of the zero page; the header's start at 0x1f1.
    const H: usize = 0x1f1;
    assert!(size_of::<setup_header>() == 0x26c - H);
    assert!(offset_of!(setup_header, syssize) == 0x1f4 - H);
    assert!(offset_of!(setup_header, boot_flag) == 0x1fe - H);
    assert!(offset_of!(setup_header, header) == 0x202 - H);
    assert!(offset_of!(setup_header, version) == 0x206 - H);
    assert!(offset_of!(setup_header, type_of_loader) == 0x210 - H);
    assert!(offset_of!(setup_header, loadflags) == 0x211 - H);
    assert!(offset_of!(setup_header, code32_start) == 0x214 - H);
    assert!(offset_of!(setup_header, ramdisk_image) == 0x218 - H);
    assert!(offset_of!(setup_header, ramdisk_size) == 0x21c - H);
    assert!(offset_of!(setup_header, heap_end_ptr) == 0x224 - H);
    assert!(offset_of!(setup_header, cmd_line_ptr) == 0x228 - H);
    assert!(offset_of!(setup_header, initrd_addr_max) == 0x22c - H);
    assert!(offset_of!(setup_header, kernel_alignment) == 0x230 - H);
    assert!(offset_of!(setup_header, relocatable_kernel) == 0x234 - H);
    assert!(offset_of!(setup_header, xloadflags) == 0x236 - H);
    assert!(offset_of!(setup_header, cmdline_size) == 0x238 - H);
    assert!(offset_of!(setup_header, pref_address) == 0x258 - H);
    assert!(offset_of!(setup_header, init_size) == 0x260 - H);
    assert!(offset_of!(setup_header, kernel_info_offset) == 0x268 - H);
    assert!(size_of::<boot_e820_entry>() == 20);
    assert!(size_of::<boot_params>() == 0x1000);
    assert!(offset_of!(boot_params, acpi_rsdp_addr) == 0x070);
    assert!(offset_of!(boot_params, ext_ramdisk_image) == 0x0c0);
    assert!(offset_of!(boot_params, ext_ramdisk_size) == 0x0c4);
    assert!(offset_of!(boot_params, ext_cmd_line_ptr) == 0x0c8);
    assert!(offset_of!(boot_params, e820_entries) == 0x1e8);
    assert!(offset_of!(boot_params, hdr) == H);
    assert!(offset_of!(boot_params, e820_table) == 0x2d0);
    assert!(size_of::<hvm_start_info>() == 56);
    assert!(offset_of!(hvm_start_info, modlist_paddr) == 16);
    assert!(offset_of!(hvm_start_info, memmap_entries) == 48);
    assert!(size_of::<hvm_modlist_entry>() == 32);
    assert!(size_of::<hvm_memmap_table_entry>() == 24);
};
