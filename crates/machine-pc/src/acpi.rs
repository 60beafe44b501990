//! ACPI tables: for direct kernel boot written into the BIOS area 0xe0000-0xfffff
//! (RAM and e820-reserved when no -bios is given); with firmware, handed to it through
//! fw_cfg (`etc/acpi/rsdp`, `etc/acpi/tables`) with QEMU's BIOS linker/loader script
//! (`etc/table-loader`), so SeaBIOS installs these same tables. Both paths start from
//! one relocatable [`AcpiBlob`]: the tables in one buffer with every pointer held as an
//! offset into it, and the list of pointer and checksum fixups; [`AcpiBlob::link`]
//! applies them for given addresses, the loader script asks the firmware to.
//!
//! ```text
//! 0xe0000 RSDP (rev 2) ── RSDT (32-bit) ─┬─ FACP ── DSDT, FACS
//!                      └─ XSDT (64-bit) ─┴─ APIC (MADT)
//! ```
//!
//! They describe the machine the way QEMU's `pc` (i440FX/PIIX3) does, so a kernel
//! finds what it finds there:
//! - MADT: one local APIC per CPU (APIC ID = processor UID = index), the I/O APIC
//!   (ID 0 as in QEMU, 0xfec00000, GSI base 0), ISA IRQ0 -> GSI 2, IRQs 5, 9, 10 and
//!   11 (the PCI link IRQs and the SCI) level/active-high, NMI on every LINT1, and
//!   PCAT_COMPAT. A kernel that finds no APIC in CPUID ignores the APIC entries.
//! - DSDT: `\_SB.PCI0` (PNP0A03, bus 0-0xff, I/O 0-0xcf7 and 0xd00-0xffff around the
//!   config ports, the VGA window, and MMIO from the top of low RAM to the I/O APIC);
//!   `_PRT` sends INTx of each slot to PIIX3's PIRQA-D with the board's rotation
//!   ([`pirq_for_pin`]) through link devices `\_SB.LNKA`-`LNKD` (PNP0C0F, IRQs 5, 10,
//!   11) whose `_CRS`/`_SRS`/`_DIS` read and write the PIRQ route registers at 0x60-0x63
//!   of 00:01.0 through a PCI_Config operation region, as QEMU's DSDT does; under
//!   `\_SB.PCI0.ISA_` the ISA devices (PIC, PIT, speaker, RTC, i8042 keyboard and
//!   mouse, COM1, and the PM block as motherboard resources); processor devices
//!   `\_SB.Cnnn` (ACPI0007, `_UID` = MADT processor UID); and `\_S5`.
//!
//! AML is built with acpi_tables' `aml` module, the crate that already writes the
//! FADT, FACS and XSDT: it covers devices, methods, fields, operation regions and most
//! resource descriptors, so the DSDT reads like ASL. The two descriptors it lacks
//! (IRQNoFlags, the ISA IRQ descriptor, and an Extended Interrupt listing several
//! IRQs) are small `Aml` types here. The RSDP is written by hand because the crate's
//! `Rsdp` cannot carry an RSDT address, and the RSDT and MADT are assembled with its
//! generic `Sdt` because its MADT type has no flags field (PCAT_COMPAT) and no
//! interrupt source override or local APIC NMI entries.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Arg, CreateDWordField, Device, EISAName, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, LessThan, Method, MethodCall, Name, OpRegion,
    OpRegionSpace, Package, PackageBuilder, Path, ResourceTemplate, Return, Scope, Store, IO, ZERO,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use quern_core::memory::MemoryError;
use quern_core::{GuestMemory, RegionKind};
use quern_devices::pci::{pirq_for_pin, PIRQ_ROUTE_DISABLED, PIRQ_ROUTE_REG};
use thiserror::Error;

use crate::layout::{BIOS_AREA_START, HIGH_MEMORY_START, IOAPIC_BASE, LAPIC_BASE, VGA_START};

/// The RSDP's address: 16-byte aligned at the start of the BIOS area, where a
/// BIOS-less search of 0xe0000-0xfffff finds it.
pub const RSDP_ADDR: u64 = BIOS_AREA_START;
/// The I/O APIC's ID in the MADT (QEMU's choice; APIC IDs of CPUs and I/O APICs are
/// separate on xAPIC systems), which the I/O APIC model's ID register should match.
pub const IOAPIC_ID: u8 = 0;
/// The ISA IRQs the PCI link devices offer, as on QEMU's `pc`.
pub const PCI_LINK_IRQS: [u8; 3] = [5, 10, 11];
const OEM_ID: [u8; 6] = *b"QUERN ";
const OEM_TABLE_ID: [u8; 8] = *b"QUERNPC ";
const OEM_REVISION: u32 = 1;

/// The reset register: the PIIX3 reset control port, value "hard reset now".
const RESET_PORT: u64 = 0xcf9;
const RESET_VALUE: u8 = 0x06;
/// IAPC_BOOT_ARCH: ISA devices (serial, RTC, ...) and an 8042 are present.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
/// MADT flags: dual 8259s present (the OS must mask them when using the I/O APIC).
const MADT_PCAT_COMPAT: u32 = 1;
/// PM1a event (4 bytes), PM1a control (2, at +4) and PM timer (4, at +8).
const PM_BLOCK_LEN: u8 = 12;
/// The 32-bit PCI MMIO window ends below the I/O APIC (and the LAPIC and BIOS above).
const PCI_MMIO_END: u64 = IOAPIC_BASE - 1;

#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig {
    pub cpus: u8,
    /// The CPUs' arrangement: CPU n's MADT entry carries `topology.apic_id(n)` (the
    /// default numbers them 0, 1, 2, ...).
    pub topology: quern_core::Topology,
    /// Base port of the PM1a event (+0, 4 bytes), PM1a control (+4, 2) and PM timer
    /// (+8, 4) blocks.
    pub pm_base: u16,
    /// The SCI's ISA IRQ (9 on a PC; declared level-triggered, active high).
    pub sci_irq: u8,
    /// Start of the 32-bit PCI MMIO window: the top of RAM below 4 GiB
    /// (`MemoryLayout::below_4g`). It runs to just below the I/O APIC.
    pub pci_mmio_base: u64,
}

#[derive(Debug, Error)]
pub enum AcpiError {
    #[error("ACPI tables: {0} CPUs do not fit the MADT; give 1 to 255")]
    Cpus(u8),
    #[error("ACPI tables: this topology gives CPU {0} the APIC ID {1}, past the xAPIC's 254")]
    ApicId(u8, u32),
    #[error("ACPI tables: the PCI MMIO window cannot start at {0:#x} (give 1 MiB to {PCI_MMIO_END:#x})")]
    PciWindow(u64),
    #[error("ACPI tables need RAM at {RSDP_ADDR:#x}, but the BIOS area is ROM there (firmware brings its own tables)")]
    NotRam,
    #[error("ACPI tables ({0} bytes) do not fit in the BIOS area {RSDP_ADDR:#x}-{HIGH_MEMORY_START:#x}")]
    TooLarge(u64),
    #[error("cannot write the ACPI tables: {0}")]
    Memory(#[from] MemoryError),
}

/// Which of the two blobs a fixup is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiFile {
    /// `etc/acpi/rsdp`: the RSDP alone (firmware puts it in the F segment).
    Rsdp,
    /// `etc/acpi/tables`: every other table.
    Tables,
}

impl AcpiFile {
    pub fn name(self) -> &'static str {
        match self {
            AcpiFile::Rsdp => "etc/acpi/rsdp",
            AcpiFile::Tables => "etc/acpi/tables",
        }
    }
}

/// A pointer field (`size` bytes, little-endian, at `offset` in `file`) holding an
/// offset into the tables blob, to which the blob's address is added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiPointer {
    pub file: AcpiFile,
    pub offset: u32,
    pub size: u8,
}

/// A checksum byte at `offset` in `file` making the bytes `start..start+len` sum to 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiChecksum {
    pub file: AcpiFile,
    pub offset: u32,
    pub start: u32,
    pub len: u32,
}

/// The tables, relocatable: pointers hold offsets into `tables` until linked.
#[derive(Clone, Debug)]
pub struct AcpiBlob {
    pub rsdp: Vec<u8>,
    pub tables: Vec<u8>,
    pub pointers: Vec<AcpiPointer>,
    /// In the order they must be applied (the RSDP's 20-byte sum before its full one).
    pub checksums: Vec<AcpiChecksum>,
}

/// Alignment firmware must give the tables blob (the FACS needs 64).
pub const TABLES_ALIGN: u32 = 64;
/// The linker/loader's commands and zones (QEMU's hw/acpi/bios-linker-loader.c).
const LOADER_ALLOCATE: u32 = 1;
const LOADER_ADD_POINTER: u32 = 2;
const LOADER_ADD_CHECKSUM: u32 = 3;
const LOADER_ZONE_HIGH: u8 = 1;
const LOADER_ZONE_FSEG: u8 = 2;
/// Each loader command is 128 bytes; file names are NUL-padded to 56.
pub const LOADER_ENTRY_SIZE: usize = 128;
const LOADER_NAME_LEN: usize = 56;

/// Builds the tables for `cfg`, relocatable.
pub fn build_acpi_tables(cfg: &AcpiConfig) -> Result<AcpiBlob, AcpiError> {
    if cfg.cpus == 0 {
        return Err(AcpiError::Cpus(cfg.cpus));
    }
    let last = possible_cpus(cfg) - 1;
    if cfg.topology.apic_id(u32::from(last)) > 254 {
        return Err(AcpiError::ApicId(last, cfg.topology.apic_id(u32::from(last))));
    }
    if !(HIGH_MEMORY_START..PCI_MMIO_END).contains(&cfg.pci_mmio_base) {
        return Err(AcpiError::PciWindow(cfg.pci_mmio_base));
    }
    let mut blob = AcpiBlob { rsdp: Vec::new(), tables: Vec::new(), pointers: Vec::new(), checksums: Vec::new() };
    // Each table 16-byte aligned in the blob (the FACS, first, at 0 of a 64-aligned blob).
    let place = |blob: &mut AcpiBlob, bytes: Vec<u8>, sdt: bool| {
        let at = blob.tables.len().next_multiple_of(16);
        blob.tables.resize(at, 0);
        if sdt {
            let len = bytes.len() as u32;
            blob.checksums.push(AcpiChecksum { file: AcpiFile::Tables, offset: at as u32 + 9, start: at as u32, len });
        }
        blob.tables.extend(bytes);
        at as u64
    };
    let ptr = |blob: &mut AcpiBlob, file: AcpiFile, offset: u64, size: u8| {
        blob.pointers.push(AcpiPointer { file, offset: offset as u32, size });
    };
    let facs = place(&mut blob, aml_bytes(&FACS::new()), false);
    let dsdt = place(&mut blob, dsdt(cfg), true);
    let fadt = place(&mut blob, fadt(cfg, facs, dsdt), true);
    // FIRMWARE_CTRL and DSDT (32-bit), X_DSDT (64-bit).
    ptr(&mut blob, AcpiFile::Tables, fadt + 36, 4);
    ptr(&mut blob, AcpiFile::Tables, fadt + 40, 4);
    ptr(&mut blob, AcpiFile::Tables, fadt + 140, 8);
    let madt = place(&mut blob, madt(cfg), true);
    let entries = [fadt, madt];
    let rsdt = place(&mut blob, rsdt(&entries), true);
    let xsdt = place(&mut blob, xsdt(&entries), true);
    for i in 0..entries.len() as u64 {
        ptr(&mut blob, AcpiFile::Tables, rsdt + 36 + 4 * i, 4);
        ptr(&mut blob, AcpiFile::Tables, xsdt + 36 + 8 * i, 8);
    }
    // Checksums come after the pointers they cover; keep the order pointers, then sums.
    blob.rsdp = rsdp(rsdt, xsdt).to_vec();
    ptr(&mut blob, AcpiFile::Rsdp, 16, 4);
    ptr(&mut blob, AcpiFile::Rsdp, 24, 8);
    blob.checksums.push(AcpiChecksum { file: AcpiFile::Rsdp, offset: 8, start: 0, len: 20 });
    blob.checksums.push(AcpiChecksum { file: AcpiFile::Rsdp, offset: 32, start: 0, len: 36 });
    Ok(blob)
}

impl AcpiBlob {
    /// The RSDP and tables as they must be in memory with the tables at `tables_addr`.
    pub fn link(&self, tables_addr: u64) -> (Vec<u8>, Vec<u8>) {
        let (mut rsdp, mut tables) = (self.rsdp.clone(), self.tables.clone());
        for p in &self.pointers {
            let buf = if p.file == AcpiFile::Rsdp { &mut rsdp } else { &mut tables };
            let (at, n) = (p.offset as usize, usize::from(p.size));
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&buf[at..at + n]);
            let linked = u64::from_le_bytes(v).wrapping_add(tables_addr).to_le_bytes();
            buf[at..at + n].copy_from_slice(&linked[..n]);
        }
        for c in &self.checksums {
            let buf = if c.file == AcpiFile::Rsdp { &mut rsdp } else { &mut tables };
            let range = c.start as usize..(c.start + c.len) as usize;
            let sum = buf[range].iter().fold(0u8, |a, b| a.wrapping_add(*b));
            buf[c.offset as usize] = buf[c.offset as usize].wrapping_sub(sum);
        }
        (rsdp, tables)
    }

    /// QEMU's `etc/table-loader`: allocate the RSDP in the F segment and the tables in
    /// high memory, patch the pointers, then the checksums.
    pub fn table_loader(&self) -> Vec<u8> {
        fn entry(command: u32, body: &[u8]) -> [u8; LOADER_ENTRY_SIZE] {
            let mut e = [0u8; LOADER_ENTRY_SIZE];
            e[..4].copy_from_slice(&command.to_le_bytes());
            e[4..4 + body.len()].copy_from_slice(body);
            e
        }
        fn name(f: AcpiFile) -> [u8; LOADER_NAME_LEN] {
            let mut n = [0u8; LOADER_NAME_LEN];
            n[..f.name().len()].copy_from_slice(f.name().as_bytes());
            n
        }
        let mut out = Vec::new();
        for (file, align, zone) in
            [(AcpiFile::Rsdp, 16u32, LOADER_ZONE_FSEG), (AcpiFile::Tables, TABLES_ALIGN, LOADER_ZONE_HIGH)]
        {
            let mut b = name(file).to_vec();
            b.extend(align.to_le_bytes());
            b.push(zone);
            out.extend(entry(LOADER_ALLOCATE, &b));
        }
        for p in &self.pointers {
            let mut b = name(p.file).to_vec();
            b.extend(name(AcpiFile::Tables));
            b.extend(p.offset.to_le_bytes());
            b.push(p.size);
            out.extend(entry(LOADER_ADD_POINTER, &b));
        }
        for c in &self.checksums {
            let mut b = name(c.file).to_vec();
            for v in [c.offset, c.start, c.len] {
                b.extend(v.to_le_bytes());
            }
            out.extend(entry(LOADER_ADD_CHECKSUM, &b));
        }
        out
    }
}

/// Writes the tables (RSDP at [`RSDP_ADDR`], the rest after it) for a kernel booted
/// directly and returns the RSDP's address.
pub fn write_acpi_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let blob = build_acpi_tables(cfg)?;
    if mem.region(RSDP_ADDR).map(|r| r.kind) != Some(RegionKind::Ram) {
        return Err(AcpiError::NotRam);
    }
    let tables_addr = RSDP_ADDR + u64::from(TABLES_ALIGN);
    let end = tables_addr + blob.tables.len() as u64;
    if end > HIGH_MEMORY_START {
        return Err(AcpiError::TooLarge(end - RSDP_ADDR));
    }
    let (rsdp, tables) = blob.link(tables_addr);
    // No stale signature from an earlier boot may remain in the area.
    mem.fill(RSDP_ADDR, (HIGH_MEMORY_START - RSDP_ADDR) as usize, 0)?;
    mem.write(tables_addr, &tables)?;
    mem.write(RSDP_ADDR, &rsdp)?;
    Ok(RSDP_ADDR)
}

fn aml_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

fn rsdp(rsdt: u64, xsdt: u64) -> [u8; 36] {
    let mut r = [0u8; 36];
    r[..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(&OEM_ID);
    r[15] = 2; // ACPI 2.0+: XSDT present
    r[16..20].copy_from_slice(&(rsdt as u32).to_le_bytes());
    r[20..24].copy_from_slice(&36u32.to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

fn sdt(signature: &[u8; 4], revision: u8) -> Sdt {
    Sdt::new(*signature, 36, revision, OEM_ID, OEM_TABLE_ID, OEM_REVISION)
}

fn rsdt(entries: &[u64]) -> Vec<u8> {
    let mut t = sdt(b"RSDT", 1);
    for e in entries {
        t.append_slice(&(*e as u32).to_le_bytes());
    }
    t.as_slice().to_vec()
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let mut t = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for e in entries {
        t.add_entry(*e);
    }
    aml_bytes(&t)
}

/// `IRQNoFlags() {irqs}`: the short IRQ descriptor, ISA IRQs by mask (edge, active
/// high). ISA devices use it because its numbers are ISA IRQs, which the MADT's
/// overrides translate (IRQ0 is GSI 2), while an Extended Interrupt names a GSI.
struct IrqNoFlags(u16);

impl IrqNoFlags {
    fn new(irq: u8) -> Self {
        IrqNoFlags(1 << irq)
    }
}

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x22); // small item 4 (IRQ), 2 bytes
        sink.word(self.0);
    }
}

/// `Interrupt(ResourceConsumer, Level, ActiveHigh, Shared) {irqs}`: a PCI link's
/// choices (acpi_tables' `Interrupt` holds one number).
struct SharedLevelIrqs(&'static [u8]);

impl Aml for SharedLevelIrqs {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(0x89); // large item 9: extended interrupt descriptor
        sink.word(2 + 4 * self.0.len() as u16);
        sink.byte(0x09); // consumer, level, active high, shared
        sink.byte(self.0.len() as u8);
        for &irq in self.0 {
            sink.dword(irq.into());
        }
    }
}

const LINKS: [&str; 4] = ["LNKA", "LNKB", "LNKC", "LNKD"];

/// The DSDT (see the module comment).
fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut sb = Vec::new();
    sb.extend(pci_interrupt_links());
    sb.extend(pci0(cfg));
    // The route registers, through the ISA bridge's region, for the link methods.
    let prq = |n: u8| FieldEntry::Named([b'P', b'R', b'Q', b'0' + n], 8);
    let field = Field::new(
        "PCI0.ISA_.P40C".into(),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        (0..4).map(prq).collect(),
    );
    field.to_aml_bytes(&mut sb);
    for cpu in 0..cfg.cpus {
        // ACPI 6 processor devices, tied to the MADT entries by `_UID`.
        let uid = Name::new("_UID".into(), &cpu);
        Device::new(Path::new(&format!("C{cpu:03X}")), vec![&Name::new("_HID".into(), &"ACPI0007"), &uid])
            .to_aml_bytes(&mut sb);
    }
    let mut t = sdt(b"DSDT", 2);
    t.append_slice(&Scope::raw("\\_SB_".into(), sb));
    // SLP_TYP 5 in PM1a/PM1b control means soft-off.
    let s5 = Name::new("_S5_".into(), &Package::new(vec![&5u8, &5u8, &0u8, &0u8]));
    t.append_slice(&aml_bytes(&s5));
    t.as_slice().to_vec()
}

/// `\_SB.LNKA`-`LNKD` and their helpers, on PIIX3's route register `PRQn`: bit 7 set
/// means disabled, else the low bits hold the ISA IRQ (QEMU's `pc` DSDT works alike).
fn pci_interrupt_links() -> Vec<u8> {
    let mut out = Vec::new();
    let disabled = PIRQ_ROUTE_DISABLED;
    // IQST(reg): _STA of a link, present and enabled unless the route is disabled.
    let and = aml::And::new(&ZERO, &disabled, &Arg(0));
    Method::new("IQST".into(), 1, false, vec![&If::new(&and, vec![&Return::new(&0x09u8)]), &Return::new(&0x0bu8)])
        .to_aml_bytes(&mut out);
    // IQCR(reg): _CRS of a link, its IRQ (0 when disabled). Serialized: it creates names.
    let one_irq = Interrupt::new(true, false, false, true, 0);
    let prr0 = Name::new("PRR0".into(), &ResourceTemplate::new(vec![&one_irq]));
    let (prr0_ref, prri_ref) = (Path::new("PRR0"), Path::new("PRRI"));
    let prri = CreateDWordField::new(&prri_ref, &prr0_ref, &5u8);
    let less = LessThan::new(&Arg(0), &disabled);
    let store = Store::new(&prri_ref, &Arg(0));
    let ret = Return::new(&prr0_ref);
    Method::new("IQCR".into(), 1, true, vec![&prr0, &prri, &If::new(&less, vec![&store]), &ret]).to_aml_bytes(&mut out);

    let hid = Name::new("_HID".into(), &EISAName::new("PNP0C0F"));
    let prs = Name::new("_PRS".into(), &ResourceTemplate::new(vec![&SharedLevelIrqs(&PCI_LINK_IRQS)]));
    for (n, link) in LINKS.iter().enumerate() {
        let reg = Path::new(&format!("PRQ{n}"));
        let uid = Name::new("_UID".into(), &(n as u8));
        let (iqst, iqcr) = (MethodCall::new("IQST".into(), vec![&reg]), MethodCall::new("IQCR".into(), vec![&reg]));
        let (ret_st, ret_cr) = (Return::new(&iqst), Return::new(&iqcr));
        let sta = Method::new("_STA".into(), 0, false, vec![&ret_st]);
        let crs = Method::new("_CRS".into(), 0, false, vec![&ret_cr]);
        let set_disabled = aml::Or::new(&reg, &reg, &disabled);
        let dis = Method::new("_DIS".into(), 0, false, vec![&set_disabled]);
        // _SRS gets a one-IRQ extended interrupt descriptor; its number is at byte 5.
        let prri = Path::new("PRRI");
        let srs_field = CreateDWordField::new(&prri, &Arg(0), &5u8);
        let srs_store = Store::new(&reg, &prri);
        let srs = Method::new("_SRS".into(), 1, true, vec![&srs_field, &srs_store]);
        Device::new(Path::new(link), vec![&hid, &uid, &prs, &sta, &crs, &dis, &srs]).to_aml_bytes(&mut out);
    }
    out
}

/// `\_SB.PCI0`: the root bridge, its windows, `_PRT` and the ISA bridge.
fn pci0(cfg: &AcpiConfig) -> Vec<u8> {
    let vga_end = (VGA_START + 0x2_0000 - 1) as u32;
    let crs = Raw(aml_bytes(&ResourceTemplate::new(vec![
        &AddressSpace::<u16>::new_bus_number(0, 0xff),
        // The configuration ports are the bridge's own.
        &IO::new(0xcf8, 0xcf8, 1, 8),
        &AddressSpace::<u16>::new_io(0, 0xcf7, None),
        &AddressSpace::<u16>::new_io(0xd00, 0xffff, None),
        &AddressSpace::<u32>::new_memory(AddressSpaceCacheable::Cacheable, true, VGA_START as u32, vga_end, None),
        &AddressSpace::<u32>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            cfg.pci_mmio_base as u32,
            PCI_MMIO_END as u32,
            None,
        ),
    ])));
    // Every slot's INTA-INTD: Package {address (slot << 16 | 0xffff), pin, link, 0}.
    let mut prt = PackageBuilder::new();
    for slot in 0..32u8 {
        for pin in 0..4u8 {
            let addr = u32::from(slot) << 16 | 0xffff;
            let link = Path::new(LINKS[pirq_for_pin(slot, pin)]);
            prt.add_element(&Package::new(vec![&addr, &pin, &link, &ZERO]));
        }
    }
    let isa = Raw(isa_bridge(cfg));
    aml_bytes(&Device::new(
        "PCI0".into(),
        vec![
            // No _ADR: a device has _HID or _ADR, not both (iasl warns about QEMU's).
            &Name::new("_HID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_UID".into(), &ZERO),
            &Name::new("_BBN".into(), &ZERO),
            &Name::new("_CRS".into(), &crs),
            &Name::new("_PRT".into(), &prt),
            &isa,
        ],
    ))
}

/// Already-built AML, to nest inside a builder object.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// An ISA device under the ISA bridge: its name, EISA `_HID`, `_UID` if several could
/// exist, I/O ports (base, length) and ISA IRQ.
struct IsaDevice {
    name: &'static str,
    hid: &'static str,
    uid: Option<u8>,
    ports: Vec<(u16, u8)>,
    irq: Option<u8>,
}

impl IsaDevice {
    fn new(name: &'static str, hid: &'static str, ports: &[(u16, u8)], irq: Option<u8>) -> Self {
        IsaDevice { name, hid, uid: None, ports: ports.to_vec(), irq }
    }

    fn to_aml(&self, sink: &mut dyn AmlSink) {
        let ios: Vec<IO> = self.ports.iter().map(|&(port, len)| IO::new(port, port, 1, len)).collect();
        let irq = self.irq.map(IrqNoFlags::new);
        let mut res: Vec<&dyn Aml> = ios.iter().map(|i| i as &dyn Aml).collect();
        if let Some(irq) = &irq {
            res.push(irq);
        }
        let hid = Name::new("_HID".into(), &EISAName::new(self.hid));
        let uid = self.uid.map(|u| Name::new("_UID".into(), &u));
        let crs = Name::new("_CRS".into(), &ResourceTemplate::new(res));
        let mut children: Vec<&dyn Aml> = vec![&hid];
        if let Some(uid) = &uid {
            children.push(uid);
        }
        children.push(&crs);
        Device::new(self.name.into(), children).to_aml_bytes(sink);
    }
}

/// `\_SB.PCI0.ISA_` (PIIX3, 00:01.0): the PIRQ route registers' region and the ISA
/// devices, with the ports and IRQs the chipset gives them.
fn isa_bridge(cfg: &AcpiConfig) -> Vec<u8> {
    let devices = [
        // The 8259 pair, with the ELCR.
        IsaDevice::new("PIC_", "PNP0000", &[(0x20, 2), (0xa0, 2), (0x4d0, 2)], Some(2)),
        IsaDevice::new("TMR_", "PNP0100", &[(0x40, 4)], Some(0)),
        IsaDevice::new("SPKR", "PNP0800", &[(0x61, 1)], None),
        IsaDevice::new("RTC_", "PNP0B00", &[(0x70, 2)], Some(8)),
        IsaDevice::new("KBD_", "PNP0303", &[(0x60, 1), (0x64, 1)], Some(1)),
        IsaDevice::new("MOU_", "PNP0F13", &[], Some(12)),
        IsaDevice { uid: Some(1), ..IsaDevice::new("COM1", "PNP0501", &[(0x3f8, 8)], Some(4)) },
        // Motherboard resources: the ACPI PM block, so nothing else is put there.
        IsaDevice { uid: Some(1), ..IsaDevice::new("PMRS", "PNP0C02", &[(cfg.pm_base, PM_BLOCK_LEN)], None) },
    ];
    let mut out = Vec::new();
    for d in &devices {
        d.to_aml(&mut out);
    }
    let region = OpRegion::new("P40C".into(), OpRegionSpace::PCIConfig, &PIRQ_ROUTE_REG, &4u8);
    let adr: u32 = 1 << 16; // device 1, function 0
    let devices = Raw(out);
    aml_bytes(&Device::new("ISA_".into(), vec![&Name::new("_ADR".into(), &adr), &region, &devices]))
}

/// A full (not hardware-reduced) FADT: ACPI is always enabled (SMI_CMD 0), so the OS
/// never switches modes; sleep and power-off go through PM1a_CNT.
fn fadt(cfg: &AcpiConfig, facs: u64, dsdt: u64) -> Vec<u8> {
    let pm = u32::from(cfg.pm_base);
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .firmware_ctrl_32(facs as u32)
        .dsdt_32(dsdt as u32)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton) // no sleep button
        .flag(Flags::ResetRegSup);
    f.x_dsdt = dsdt.into();
    f.sci_int = u16::from(cfg.sci_irq).into();
    f.pm1a_evt_blk = pm.into();
    f.pm1_evt_len = 4;
    f.pm1a_cnt_blk = (pm + 4).into();
    f.pm1_cnt_len = 2;
    f.pm_tmr_blk = (pm + 8).into();
    f.pm_tmr_len = 4;
    // C2 and C3 unsupported (latencies above 100 and 1000 us).
    f.p_lvl2_lat = 0x0fff.into();
    f.p_lvl3_lat = 0xffff.into();
    f.century = 0x32; // the RTC's CMOS century byte
    f.iapc_boot_arch = (IAPC_LEGACY_DEVICES | IAPC_8042).into();
    f.reset_reg = GAS::new(GasSpace::SystemIo, 8, 0, AccessSize::ByteAccess, RESET_PORT);
    f.reset_value = RESET_VALUE;
    aml_bytes(&f.finalize())
}

/// MADT interrupt source override flags: polarity active high, trigger level.
const MPS_ACTIVE_HIGH: u16 = 0b01;
const MPS_LEVEL: u16 = 0b11 << 2;

/// The CPUs the MADT lists: `-smp`'s maxcpus (its topology's room), at least the
/// present ones, at most the xAPIC's 255.
fn possible_cpus(cfg: &AcpiConfig) -> u8 {
    u8::try_from(cfg.topology.max_cpus().max(u32::from(cfg.cpus))).unwrap_or(u8::MAX)
}

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = sdt(b"APIC", 5);
    t.append_slice(&(LAPIC_BASE as u32).to_le_bytes());
    t.append_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    // Every possible CPU, those past the present ones disabled but online-capable (as
    // QEMU lists them for later hot-plugging, which quern does not do yet: the OS counts
    // them as such; a MADT of revision 5 needs the online-capable flag for that).
    for cpu in 0..possible_cpus(cfg) {
        let id = cfg.topology.apic_id(u32::from(cpu)) as u8;
        let status = if cpu < cfg.cpus { EnabledStatus::Enabled } else { EnabledStatus::DisabledOnlineCapable };
        t.append_slice(&aml_bytes(&ProcessorLocalApic::new(cpu, id, status)));
    }
    t.append_slice(&aml_bytes(&IoApic::new(IOAPIC_ID, IOAPIC_BASE as u32, 0)));
    // ISA IRQ0 (PIT) is wired to I/O APIC pin 2, with the ISA bus's edge/high.
    t.append_slice(&interrupt_override(0, 2, 0));
    // The PCI link IRQs and the SCI are level-triggered and active high at the
    // I/O APIC (as QEMU's MADT says for IRQs 5, 9, 10 and 11).
    let mut level = PCI_LINK_IRQS.to_vec();
    level.push(cfg.sci_irq);
    level.sort_unstable();
    level.dedup();
    for irq in level {
        t.append_slice(&interrupt_override(irq, irq.into(), MPS_ACTIVE_HIGH | MPS_LEVEL));
    }
    // LINT1 of every processor (UID 0xff) is the NMI input.
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.as_slice().to_vec()
}

/// MADT entry type 2.
fn interrupt_override(irq: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut e = [2, 10, 0, irq, 0, 0, 0, 0, 0, 0];
    e[4..8].copy_from_slice(&gsi.to_le_bytes());
    e[8..10].copy_from_slice(&flags.to_le_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MemoryLayout, MIB};

    fn table(mem: &GuestMemory, addr: u64) -> Vec<u8> {
        let len = mem.read_u32(addr + 4).unwrap() as usize;
        let mut t = vec![0; len];
        mem.read(addr, &mut t).unwrap();
        assert_eq!(checksum(&t), 0, "{} checksum", String::from_utf8_lossy(&t[..4]));
        t
    }

    fn le32(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn le16(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    fn config(cpus: u8) -> AcpiConfig {
        AcpiConfig { cpus, topology: Default::default(), pm_base: 0x600, sci_irq: 9, pci_mmio_base: 256 * MIB }
    }

    /// Writes the tables for `cfg` into a 256 MiB machine and returns the DSDT and MADT
    /// found through the RSDP, XSDT and FADT (every table's checksum checked).
    fn dsdt_and_madt(cfg: &AcpiConfig) -> (Vec<u8>, Vec<u8>) {
        let mem = MemoryLayout::new(256 * MIB, 0).unwrap().build_memory().unwrap();
        let rsdp = write_acpi_tables(&mem, cfg).unwrap();
        let xsdt = table(&mem, mem.read_u64(rsdp + 24).unwrap());
        let fadt = table(&mem, u64::from_le_bytes(xsdt[36..44].try_into().unwrap()));
        let madt = table(&mem, u64::from_le_bytes(xsdt[44..52].try_into().unwrap()));
        let dsdt = table(&mem, le32(&fadt, 40).into());
        assert_eq!((&dsdt[..4], &madt[..4]), (&b"DSDT"[..], &b"APIC"[..]));
        (dsdt, madt)
    }

    fn madt_structs(madt: &[u8]) -> Vec<Vec<u8>> {
        let mut structs = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            let len = usize::from(madt[at + 1]);
            assert!(len >= 2 && at + len <= madt.len(), "MADT entry at {at} overruns");
            structs.push(madt[at..at + len].to_vec());
            at += len;
        }
        structs
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    /// An EISA ID as AML stores it: three 5-bit letters and four hex digits, most
    /// significant byte first, as an integer (a word when the digits' bytes are zero).
    fn eisa(id: &str) -> Vec<u8> {
        let b = id.as_bytes();
        let letters = (u32::from(b[0] - 0x40) << 26) | (u32::from(b[1] - 0x40) << 21) | (u32::from(b[2] - 0x40) << 16);
        let v = (letters | u32::from_str_radix(&id[3..], 16).unwrap()).to_be_bytes();
        if v[2..] == [0, 0] {
            vec![0x0b, v[0], v[1]]
        } else {
            vec![0x0c, v[0], v[1], v[2], v[3]]
        }
    }

    /// A PkgLength at `b[at]`: (value, bytes it takes).
    fn pkg_length(b: &[u8], at: usize) -> (usize, usize) {
        let lead = b[at];
        let follow = usize::from(lead >> 6);
        if follow == 0 {
            return (usize::from(lead & 0x3f), 1);
        }
        let mut v = usize::from(lead & 0x0f);
        for i in 0..follow {
            v |= usize::from(b[at + 1 + i]) << (4 + 8 * i);
        }
        (v, 1 + follow)
    }

    /// An integer term at `b[at]`: (value, bytes it takes).
    fn integer(b: &[u8], at: usize) -> (u64, usize) {
        match b[at] {
            0x00 => (0, 1),
            0x01 => (1, 1),
            0x0a => (b[at + 1].into(), 2),
            0x0b => (le16(b, at + 1).into(), 3),
            0x0c => (le32(b, at + 1).into(), 5),
            op => panic!("not an integer: {op:#x} at {at}"),
        }
    }

    /// The resource descriptors of the buffer that `Name(name, Buffer)` holds, first
    /// such name in `aml` after `from`: (item tag, body).
    fn resources(aml: &[u8], from: usize, name: &[u8; 4]) -> Vec<(u8, Vec<u8>)> {
        let mut pat = vec![0x08];
        pat.extend(name);
        pat.push(0x11);
        let at = from + find(&aml[from..], &pat).expect("Name(_, Buffer)") + pat.len();
        let (_, n) = pkg_length(aml, at);
        let (size, m) = integer(aml, at + n);
        let buf = &aml[at + n + m..at + n + m + size as usize];
        let (mut out, mut i) = (Vec::new(), 0);
        loop {
            let tag = buf[i];
            let (kind, body_at, len) = if tag & 0x80 != 0 {
                (tag, i + 3, usize::from(le16(buf, i + 1)))
            } else {
                (tag >> 3, i + 1, usize::from(tag & 7))
            };
            if kind == 0x0f {
                assert_eq!(i + 2, buf.len(), "end tag ends the buffer");
                return out;
            }
            out.push((kind, buf[body_at..body_at + len].to_vec()));
            i = body_at + len;
        }
    }

    #[test]
    fn tables_parse_back() {
        let layout = MemoryLayout::new(256 * MIB, 0).unwrap();
        let mem = layout.build_memory().unwrap();
        let cfg = config(2);
        let rsdp_addr = write_acpi_tables(&mem, &cfg).unwrap();
        assert_eq!(rsdp_addr, 0xe0000);

        // A BIOS-style scan of 0xe0000-0xfffff on 16-byte boundaries finds it.
        let found = (0xe0000..0x100000u64).step_by(16).find(|&a| {
            let mut sig = [0; 8];
            mem.read(a, &mut sig).unwrap();
            &sig == b"RSD PTR "
        });
        assert_eq!(found, Some(rsdp_addr));
        let mut rsdp = [0u8; 36];
        mem.read(rsdp_addr, &mut rsdp).unwrap();
        assert_eq!((checksum(&rsdp[..20]), checksum(&rsdp), rsdp[15]), (0, 0, 2));

        let xsdt = table(&mem, u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();
        let sigs: Vec<Vec<u8>> = entries.iter().map(|&a| table(&mem, a)[..4].to_vec()).collect();
        assert_eq!(sigs, [b"FACP".to_vec(), b"APIC".to_vec()]);
        let rsdt = table(&mem, le32(&rsdp, 16).into());
        assert_eq!(&rsdt[..4], b"RSDT");
        let rsdt_entries: Vec<u64> = rsdt[36..].chunks(4).map(|c| le32(c, 0).into()).collect();
        assert_eq!(rsdt_entries, entries);

        let fadt = table(&mem, entries[0]);
        assert_eq!(fadt[8], 6, "FADT revision");
        assert_eq!(le16(&fadt, 46), 9, "SCI_INT");
        assert_eq!(le32(&fadt, 48), 0, "SMI_CMD: no mode switch");
        assert_eq!((le32(&fadt, 56), le32(&fadt, 64), le32(&fadt, 76)), (0x600, 0x604, 0x608));
        assert_eq!((fadt[88], fadt[89], fadt[91]), (4, 2, 4), "block lengths");
        assert_eq!(le16(&fadt, 109), 3, "IAPC_BOOT_ARCH");
        let flags = le32(&fadt, 112);
        assert_eq!(flags & (1 << 20), 0, "not hardware-reduced");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        assert_eq!(
            (fadt[116], fadt[117], fadt[120..128].to_vec(), fadt[128]),
            (1, 8, 0xcf9u64.to_le_bytes().to_vec(), 6)
        );
        let facs = le32(&fadt, 36);
        assert_eq!((facs % 64, table_sig(&mem, facs.into())), (0, *b"FACS"));
        let dsdt_addr = u64::from(le32(&fadt, 40));
        assert_eq!(u64::from_le_bytes(fadt[140..148].try_into().unwrap()), dsdt_addr, "X_DSDT");
        let dsdt = table(&mem, dsdt_addr);
        assert_eq!(&dsdt[..4], b"DSDT");
        let s5 = find(&dsdt, b"_S5_").expect("DSDT defines _S5_");
        // NameOp _S5_ PackageOp len 4 elements: BytePrefix 5, BytePrefix 5, Zero, Zero.
        assert_eq!(dsdt[s5 + 4..], [0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]);
        assert_eq!(table(&mem, entries[1])[..4], *b"APIC");
    }

    fn table_sig(mem: &GuestMemory, addr: u64) -> [u8; 4] {
        let mut s = [0; 4];
        mem.read(addr, &mut s).unwrap();
        s
    }

    #[test]
    fn madt_lists_cpus_ioapic_overrides_and_nmi() {
        for cpus in [1u8, 2, 4] {
            let (_, madt) = dsdt_and_madt(&config(cpus));
            assert_eq!(madt[8], 5, "MADT revision");
            assert_eq!((le32(&madt, 36), le32(&madt, 40)), (0xfee0_0000, 1), "LAPIC address, PCAT_COMPAT");
            let structs = madt_structs(&madt);
            let n = usize::from(cpus);
            for (i, s) in structs[..n].iter().enumerate() {
                // Processor local APIC: UID i, APIC ID i, enabled.
                assert_eq!(*s, [0, 8, i as u8, i as u8, 1, 0, 0, 0], "cpu {i}");
            }
            assert_eq!(structs[n], [1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0], "I/O APIC id 0 at 0xfec00000, GSI 0");
            assert_eq!(structs[n + 1], [2, 10, 0, 0, 2, 0, 0, 0, 0, 0], "IRQ0 -> GSI2, bus defaults");
            for (k, irq) in [5u8, 9, 10, 11].into_iter().enumerate() {
                assert_eq!(structs[n + 2 + k], [2, 10, 0, irq, irq, 0, 0, 0, 0x0d, 0], "IRQ{irq} level, active high");
            }
            assert_eq!(structs[n + 6], [4, 6, 0xff, 0, 0, 1], "NMI on LINT1 of all processors");
            assert_eq!(structs.len(), n + 7);
        }
    }

    /// `-smp 2,maxcpus=4`: four processor entries, the last two disabled and
    /// online-capable (room for CPUs the OS counts as hot-pluggable, as under QEMU).
    #[test]
    fn madt_lists_possible_cpus_disabled() {
        let mut cfg = config(2);
        cfg.topology = quern_core::Topology { sockets: 4, dies: 1, modules: 1, cores: 1, threads: 1 };
        let (_, madt) = dsdt_and_madt(&cfg);
        let flags: Vec<u8> = madt_structs(&madt).iter().filter(|s| s[0] == 0).map(|s| s[4]).collect();
        assert_eq!(flags, [1, 1, 2, 2]);
    }

    #[test]
    fn dsdt_describes_pci_root_links_and_isa_devices() {
        let cfg = config(2);
        let (dsdt, _) = dsdt_and_madt(&cfg);
        assert_eq!(dsdt[8], 2, "revision 2: 64-bit integers");
        for name in ["PCI0", "_PRT", "_BBN", "ISA_", "P40C", "LNKA", "LNKB", "LNKC", "LNKD", "IQST", "IQCR", "_S5_"] {
            assert!(find(&dsdt, name.as_bytes()).is_some(), "{name}");
        }
        for link in ["LNKA", "LNKB", "LNKC", "LNKD"] {
            // Device(LNKx): ExtOpPrefix DeviceOp PkgLength (2 bytes) name.
            let at = find(&dsdt, link.as_bytes()).unwrap();
            assert_eq!(dsdt[at - 4..at - 2], [0x5b, 0x82], "{link} is a device");
        }
        // PNP IDs: root bridge, links, PIC, PIT, speaker, RTC, keyboard, mouse, COM1,
        // motherboard resources.
        let ids = [
            ("PNP0A03", 1),
            ("PNP0C0F", 4),
            ("PNP0000", 1),
            ("PNP0100", 1),
            ("PNP0800", 1),
            ("PNP0B00", 1),
            ("PNP0303", 1),
            ("PNP0F13", 1),
            ("PNP0501", 1),
            ("PNP0C02", 1),
        ];
        for (id, n) in ids {
            assert_eq!(count(&dsdt, &eisa(id)), n, "{id}");
        }
        assert_eq!(eisa("PNP0A03"), [0x0c, 0x41, 0xd0, 0x0a, 0x03]);
        assert_eq!(count(&dsdt, b"ACPI0007\0"), 2, "a processor device per CPU");
        assert!(find(&dsdt, b"C000").is_some() && find(&dsdt, b"C001").is_some());

        // PCI0's _CRS: buses, config ports, I/O around them, VGA and the MMIO hole.
        let pci0 = find(&dsdt, b"PCI0").unwrap();
        let crs = resources(&dsdt, pci0, b"_CRS");
        let word = |kind: u8, min: u16, max: u16| {
            let mut b = vec![kind, 0x0c, if kind == 1 { 3 } else { 0 }, 0, 0];
            for v in [min, max, 0, max - min + 1] {
                b.extend(v.to_le_bytes());
            }
            (0x88, b)
        };
        let dword = |flags: u8, min: u32, max: u32| {
            let mut b = vec![0, 0x0c, flags, 0, 0, 0, 0];
            for v in [min, max, 0, max - min + 1] {
                b.extend(v.to_le_bytes());
            }
            (0x87, b)
        };
        assert_eq!(
            crs,
            [
                word(2, 0, 0xff),
                (0x08, vec![1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]),
                word(1, 0, 0x0cf7),
                word(1, 0x0d00, 0xffff),
                dword(0b011, 0xa_0000, 0xb_ffff),
                dword(0b001, 0x1000_0000, 0xfebf_ffff),
            ]
        );

        // _PRT: 32 slots x 4 pins, each {slot << 16 | 0xffff, pin, LNKx, 0} with LNKx
        // PIRQ (slot + pin - 1) mod 4.
        let at = find(&dsdt, b"_PRT").unwrap() + 4;
        assert_eq!(dsdt[at], 0x12, "_PRT is a package");
        let (_, n) = pkg_length(&dsdt, at + 1);
        let mut i = at + 1 + n;
        assert_eq!(dsdt[i], 128, "entries");
        i += 1;
        for slot in 0..32u64 {
            for pin in 0..4u64 {
                assert_eq!(dsdt[i], 0x12);
                let (len, n) = pkg_length(&dsdt, i + 1);
                let end = i + 1 + len;
                let mut j = i + 1 + n;
                assert_eq!(dsdt[j], 4);
                j += 1;
                let (addr, n) = integer(&dsdt, j);
                let (p, m) = integer(&dsdt, j + n);
                j += n + m;
                let link = ["LNKA", "LNKB", "LNKC", "LNKD"][((slot + pin + 3) % 4) as usize];
                assert_eq!((addr, p, &dsdt[j..j + 4], dsdt[j + 4]), (slot << 16 | 0xffff, pin, link.as_bytes(), 0));
                assert_eq!(j + 5, end);
                i = end;
            }
        }

        // The ISA bridge at 00:01.0, its PCI config region over the route registers,
        // and the field the links use.
        let isa = find(&dsdt, b"ISA_").unwrap();
        assert_eq!(dsdt[isa + 4..isa + 10], [0x08, b'_', b'A', b'D', b'R', 0x0c]);
        assert_eq!(le32(&dsdt, isa + 10), 0x0001_0000);
        let mut region = vec![0x5b, 0x80];
        region.extend(b"P40C");
        region.extend([0x02, 0x0a, 0x60, 0x0a, 0x04]);
        assert!(find(&dsdt, &region).is_some(), "OperationRegion(P40C, PCI_Config, 0x60, 4)");
        let mut field = vec![0x2f, 3];
        field.extend(b"PCI0ISA_P40C");
        field.push(0x01); // ByteAcc, NoLock, Preserve
        for n in 0..4 {
            field.extend(format!("PRQ{n}").as_bytes());
            field.push(8);
        }
        assert!(find(&dsdt, &field).is_some(), "Field(PCI0.ISA.P40C) PRQ0-3");
        // Links offer IRQs 5, 10, 11: level, active high, shared.
        let prs = resources(&dsdt, find(&dsdt, b"LNKA").unwrap(), b"_PRS");
        assert_eq!(prs, [(0x89, vec![0x09, 3, 5, 0, 0, 0, 10, 0, 0, 0, 11, 0, 0, 0])]);

        // ISA devices' ports and IRQs (IRQNoFlags masks).
        let io = |port: u16, len: u8| {
            let p = port.to_le_bytes();
            (0x08, vec![1, p[0], p[1], p[0], p[1], 1, len])
        };
        let irq = |n: u8| (0x04, (1u16 << n).to_le_bytes().to_vec());
        let expect = [
            ("PIC_", vec![io(0x20, 2), io(0xa0, 2), io(0x4d0, 2), irq(2)]),
            ("TMR_", vec![io(0x40, 4), irq(0)]),
            ("SPKR", vec![io(0x61, 1)]),
            ("RTC_", vec![io(0x70, 2), irq(8)]),
            ("KBD_", vec![io(0x60, 1), io(0x64, 1), irq(1)]),
            ("MOU_", vec![irq(12)]),
            ("COM1", vec![io(0x3f8, 8), irq(4)]),
            ("PMRS", vec![io(0x600, 12)]),
        ];
        for (name, res) in expect {
            let at = find(&dsdt, name.as_bytes()).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(resources(&dsdt, at, b"_CRS"), res, "{name}");
        }
    }

    /// Runs `iasl` with `args` in `dir`; its status and output.
    fn iasl(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("iasl").args(args).current_dir(dir).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    #[test]
    fn dsdt_disassembles_and_recompiles_with_iasl() {
        if std::process::Command::new("iasl").arg("-v").output().is_err() {
            // Written to the stderr handle itself, past the harness's output capture,
            // so the line shows in every run.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr().lock(),
                "NOT RUN: dsdt_disassembles_and_recompiles_with_iasl: iasl is missing (apt-get install acpica-tools)"
            );
            return;
        }
        let (dsdt, _) = dsdt_and_madt(&config(2));
        let dir = std::env::temp_dir().join(format!("quern-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dsdt.aml"), &dsdt).unwrap();
        let (ok, log) = iasl(&dir, &["-d", "dsdt.aml"]);
        assert!(ok, "iasl -d failed:\n{log}");
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
        for want in [
            "Device (PCI0)",
            "EisaId (\"PNP0A03\")",
            "Method (_STA, 0, NotSerialized)",
            "OperationRegion (P40C, PCI_Config, 0x60, 0x04)",
            "Device (LNKA)",
            "Device (COM1)",
            "Name (_S5, Package",
        ] {
            assert!(dsl.contains(want), "disassembly lacks {want:?}:\n{dsl}");
        }
        let (ok, log) = iasl(&dir, &["-p", "recompiled", "dsdt.dsl"]);
        if std::env::var_os("QUERN_KEEP_DSL").is_none() {
            std::fs::remove_dir_all(&dir).ok();
        }
        assert!(ok, "the disassembled DSDT does not compile:\n{log}");
        let summary = log.lines().find(|l| l.contains("Errors")).unwrap_or_default();
        assert!(summary.contains(" 0 Errors") && summary.contains(" 0 Warnings"), "{log}");
    }

    /// Runs a table-loader script the way SeaBIOS's romfile_loader does, with the
    /// files at the given addresses; returns the files' final bytes by name.
    fn run_loader(script: &[u8], files: &[(&str, Vec<u8>, u64)]) -> Vec<(String, Vec<u8>)> {
        let name = |b: &[u8]| String::from_utf8(b.iter().take_while(|&&c| c != 0).copied().collect()).unwrap();
        let mut loaded: Vec<(String, Vec<u8>, u64)> = Vec::new();
        assert_eq!(script.len() % LOADER_ENTRY_SIZE, 0);
        for e in script.chunks(LOADER_ENTRY_SIZE) {
            let b = &e[4..];
            match le32(e, 0) {
                LOADER_ALLOCATE => {
                    let n = name(&b[..56]);
                    let (_, data, addr) = files.iter().find(|f| f.0 == n).expect("allocated file exists");
                    assert_eq!(addr % u64::from(le32(b, 56)), 0, "{n} alignment");
                    let zone = b[60];
                    assert_eq!(zone, if n == "etc/acpi/rsdp" { LOADER_ZONE_FSEG } else { LOADER_ZONE_HIGH });
                    loaded.push((n, data.clone(), *addr));
                }
                LOADER_ADD_POINTER => {
                    let (dest, src) = (name(&b[..56]), name(&b[56..112]));
                    let (off, size) = (le32(b, 112) as usize, usize::from(b[116]));
                    let src_addr = loaded.iter().find(|f| f.0 == src).expect("src allocated first").2;
                    let d = &mut loaded.iter_mut().find(|f| f.0 == dest).expect("dest allocated first").1;
                    let mut v = [0u8; 8];
                    v[..size].copy_from_slice(&d[off..off + size]);
                    let p = (u64::from_le_bytes(v) + src_addr).to_le_bytes();
                    d[off..off + size].copy_from_slice(&p[..size]);
                }
                LOADER_ADD_CHECKSUM => {
                    let f = name(&b[..56]);
                    let (off, start, len) = (le32(b, 56) as usize, le32(b, 60) as usize, le32(b, 64) as usize);
                    let d = &mut loaded.iter_mut().find(|x| x.0 == f).unwrap().1;
                    let sum = d[start..start + len].iter().fold(0u8, |a, b| a.wrapping_add(*b));
                    d[off] = d[off].wrapping_sub(sum);
                }
                other => panic!("unknown loader command {other}"),
            }
        }
        loaded.into_iter().map(|(n, d, _)| (n, d)).collect()
    }

    #[test]
    fn table_loader_installs_the_same_tables() {
        let blob = build_acpi_tables(&config(2)).unwrap();
        let (rsdp_addr, tables_addr) = (0xf5a30u64, 0x7ffe_0040u64);
        let script = blob.table_loader();
        assert_eq!(script.len(), LOADER_ENTRY_SIZE * (2 + blob.pointers.len() + blob.checksums.len()));
        let out = run_loader(
            &script,
            &[("etc/acpi/rsdp", blob.rsdp.clone(), rsdp_addr), ("etc/acpi/tables", blob.tables.clone(), tables_addr)],
        );
        let (rsdp, tables) = blob.link(tables_addr);
        assert_eq!(out[0], ("etc/acpi/rsdp".to_string(), rsdp.clone()));
        assert_eq!(out[1], ("etc/acpi/tables".to_string(), tables.clone()));

        // Parse the linked tables back from a memory image holding them.
        let mem = GuestMemory::flat(0x100_0000).unwrap();
        let base = 0x80_0000u64;
        mem.write(base, &tables).unwrap();
        let at = |addr: u64| addr - tables_addr + base;
        assert_eq!((checksum(&rsdp[..20]), checksum(&rsdp)), (0, 0));
        let xsdt = table(&mem, at(u64::from_le_bytes(rsdp[24..32].try_into().unwrap())));
        let rsdt = table(&mem, at(le32(&rsdp, 16).into()));
        assert_eq!((&xsdt[..4], &rsdt[..4]), (&b"XSDT"[..], &b"RSDT"[..]));
        let fadt = table(&mem, at(u64::from_le_bytes(xsdt[36..44].try_into().unwrap())));
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(u64::from(le32(&rsdt, 36)), u64::from_le_bytes(xsdt[36..44].try_into().unwrap()));
        let dsdt = table(&mem, at(le32(&fadt, 40).into()));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(u64::from_le_bytes(fadt[140..148].try_into().unwrap()), u64::from(le32(&fadt, 40)), "X_DSDT");
        assert_eq!(u64::from(le32(&fadt, 36)), tables_addr, "FACS first in the blob");
        assert_eq!(fadt[132..140], [0; 8], "no X_FIRMWARE_CTRL to patch");
        assert_eq!(table_sig(&mem, at(tables_addr)), *b"FACS");
        let madt = table(&mem, at(u64::from_le_bytes(xsdt[44..52].try_into().unwrap())));
        assert_eq!(&madt[..4], b"APIC");
    }

    #[test]
    fn bad_configs_are_refused() {
        let layout = MemoryLayout::new(64 * MIB, 0).unwrap();
        let mem = layout.build_memory().unwrap();
        let cfg = config(0);
        assert!(matches!(write_acpi_tables(&mem, &cfg), Err(AcpiError::Cpus(0))));
        for base in [0, 0xfec0_0000] {
            let cfg = AcpiConfig { pci_mmio_base: base, ..config(1) };
            assert!(matches!(write_acpi_tables(&mem, &cfg), Err(AcpiError::PciWindow(_))));
        }
        let with_bios = MemoryLayout::new(64 * MIB, 128 * 1024).unwrap();
        let mem = with_bios.build_memory().unwrap();
        assert!(matches!(write_acpi_tables(&mem, &config(1)), Err(AcpiError::NotRam)));
    }

    #[test]
    fn madt_apic_ids_follow_the_topology() {
        // Two sockets of three cores: the core field is two bits wide.
        let topology = quern_core::Topology { sockets: 2, cores: 3, ..Default::default() };
        let (_, madt) = dsdt_and_madt(&AcpiConfig { topology, ..config(6) });
        let ids: Vec<(u8, u8)> = madt_structs(&madt).iter().filter(|s| s[0] == 0).map(|s| (s[2], s[3])).collect();
        assert_eq!(ids, [(0, 0), (1, 1), (2, 2), (3, 4), (4, 5), (5, 6)], "(processor UID, APIC ID)");
        // 128 sockets of three cores: CPU 254 (socket 84, core 2) would be APIC ID 338.
        let topology = quern_core::Topology { sockets: 128, cores: 3, ..Default::default() };
        let e = build_acpi_tables(&AcpiConfig { topology, ..config(255) }).unwrap_err();
        assert!(matches!(e, AcpiError::ApicId(254, 338)), "{e}");
    }

    #[test]
    fn the_most_cpus_fit() {
        let (dsdt, madt) = dsdt_and_madt(&config(255));
        assert_eq!(madt_structs(&madt).iter().filter(|s| s[0] == 0).count(), 255);
        assert_eq!(count(&dsdt, b"ACPI0007\0"), 255);
        assert!(find(&dsdt, b"C0FE").is_some());
    }
}
