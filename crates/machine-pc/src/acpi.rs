//! Minimal ACPI tables for direct kernel boot, in the BIOS area 0xe0000-0xfffff (RAM
//! and e820-reserved when no -bios is given; firmware builds its own tables).
//!
//! ```text
//! 0xe0000 RSDP (rev 2) ── RSDT (32-bit) ─┬─ FACP ── DSDT (\_S5), FACS
//!                      └─ XSDT (64-bit) ─┴─ APIC (MADT)
//! ```
//!
//! acpi_tables builds the FADT, FACS, XSDT, the DSDT's AML and the MADT's processor
//! and I/O APIC entries. The RSDP is written by hand because the crate's `Rsdp` cannot
//! carry an RSDT address, and the RSDT and MADT are assembled with its generic `Sdt`
//! because its MADT type has no flags field (PCAT_COMPAT) and no interrupt source
//! override entries.

use acpi_tables::aml::{Name, Package};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use quern_core::memory::MemoryError;
use quern_core::{GuestMemory, RegionKind};
use thiserror::Error;

use crate::layout::{BIOS_AREA_START, HIGH_MEMORY_START, IOAPIC_BASE, LAPIC_BASE};

/// The RSDP's address: 16-byte aligned at the start of the BIOS area, where a
/// BIOS-less search of 0xe0000-0xfffff finds it.
pub const RSDP_ADDR: u64 = BIOS_AREA_START;
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

#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig {
    pub cpus: u8,
    /// Base port of the PM1a event (+0, 4 bytes), PM1a control (+4, 2) and PM timer
    /// (+8, 4) blocks.
    pub pm_base: u16,
    /// The SCI's ISA IRQ (9 on a PC; declared level-triggered, active high).
    pub sci_irq: u8,
}

#[derive(Debug, Error)]
pub enum AcpiError {
    #[error("ACPI tables: {0} CPUs do not fit the MADT (the I/O APIC takes the next APIC ID); give 1 to 254")]
    Cpus(u8),
    #[error("ACPI tables need RAM at {RSDP_ADDR:#x}, but the BIOS area is ROM there (firmware brings its own tables)")]
    NotRam,
    #[error("ACPI tables ({0} bytes) do not fit in the BIOS area {RSDP_ADDR:#x}-{HIGH_MEMORY_START:#x}")]
    TooLarge(u64),
    #[error("cannot write the ACPI tables: {0}")]
    Memory(#[from] MemoryError),
}

/// Writes the tables and returns the RSDP's address.
pub fn write_acpi_tables(mem: &GuestMemory, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    if cfg.cpus == 0 || cfg.cpus == u8::MAX {
        return Err(AcpiError::Cpus(cfg.cpus));
    }
    if mem.region(RSDP_ADDR).map(|r| r.kind) != Some(RegionKind::Ram) {
        return Err(AcpiError::NotRam);
    }
    // Tables go after the RSDP, each 16-byte aligned (the FACS needs 64).
    let mut next = RSDP_ADDR + 0x40;
    let mut tables: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut place = |bytes: Vec<u8>, align: u64| {
        let addr = next.next_multiple_of(align);
        next = addr + bytes.len() as u64;
        tables.push((addr, bytes));
        addr
    };
    let facs = place(aml_bytes(&FACS::new()), 64);
    let dsdt = place(dsdt(), 16);
    let fadt = place(fadt(cfg, facs, dsdt), 16);
    let madt = place(madt(cfg), 16);
    let rsdt = place(rsdt(&[fadt, madt]), 16);
    let xsdt = place(xsdt(&[fadt, madt]), 16);
    if next > HIGH_MEMORY_START {
        return Err(AcpiError::TooLarge(next - RSDP_ADDR));
    }
    // No stale signature from an earlier boot may remain in the area.
    mem.fill(RSDP_ADDR, (HIGH_MEMORY_START - RSDP_ADDR) as usize, 0)?;
    for (addr, bytes) in tables {
        mem.write(addr, &bytes)?;
    }
    mem.write(RSDP_ADDR, &rsdp(rsdt, xsdt))?;
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

/// The DSDT holds only `\_S5`: SLP_TYP 5 in PM1a/PM1b control means soft-off.
fn dsdt() -> Vec<u8> {
    let s5 = Name::new("_S5_".into(), &Package::new(vec![&5u8, &5u8, &0u8, &0u8]));
    let mut t = sdt(b"DSDT", 2);
    t.append_slice(&aml_bytes(&s5));
    t.as_slice().to_vec()
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
    f.reset_reg = GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, RESET_PORT);
    f.reset_value = RESET_VALUE;
    aml_bytes(&f.finalize())
}

fn madt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut t = sdt(b"APIC", 5);
    t.append_slice(&(LAPIC_BASE as u32).to_le_bytes());
    t.append_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for cpu in 0..cfg.cpus {
        t.append_slice(&aml_bytes(&ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled)));
    }
    t.append_slice(&aml_bytes(&IoApic::new(cfg.cpus, IOAPIC_BASE as u32, 0)));
    // ISA IRQ0 (PIT) is wired to I/O APIC pin 2; the SCI is level, active high.
    t.append_slice(&interrupt_override(0, 2, 0));
    const ACTIVE_HIGH: u16 = 0b01;
    const LEVEL: u16 = 0b11 << 2;
    t.append_slice(&interrupt_override(cfg.sci_irq, cfg.sci_irq.into(), ACTIVE_HIGH | LEVEL));
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

    #[test]
    fn tables_parse_back() {
        let layout = MemoryLayout::new(256 * MIB, 0).unwrap();
        let mem = layout.build_memory().unwrap();
        let cfg = AcpiConfig { cpus: 2, pm_base: 0x600, sci_irq: 9 };
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
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9, "SCI_INT");
        assert_eq!(le32(&fadt, 48), 0, "SMI_CMD: no mode switch");
        assert_eq!((le32(&fadt, 56), le32(&fadt, 64), le32(&fadt, 76)), (0x600, 0x604, 0x608));
        assert_eq!((fadt[88], fadt[89], fadt[91]), (4, 2, 4), "block lengths");
        assert_eq!(u16::from_le_bytes([fadt[109], fadt[110]]), 3, "IAPC_BOOT_ARCH");
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
        let s5 = dsdt.windows(4).position(|w| w == b"_S5_").expect("DSDT defines _S5_");
        // NameOp _S5_ PackageOp len 4 elements: BytePrefix 5, BytePrefix 5, Zero, Zero.
        assert_eq!(dsdt[s5 + 4..], [0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00]);

        let madt = table(&mem, entries[1]);
        assert_eq!((le32(&madt, 36), le32(&madt, 40)), (0xfee0_0000, 1));
        let mut structs = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            structs.push(madt[at..at + usize::from(madt[at + 1])].to_vec());
            at += usize::from(madt[at + 1]);
        }
        assert_eq!(structs[0], [0, 8, 0, 0, 1, 0, 0, 0]);
        assert_eq!(structs[1], [0, 8, 1, 1, 1, 0, 0, 0]);
        assert_eq!(structs[2], [1, 12, 2, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0], "I/O APIC id 2 at 0xfec00000");
        assert_eq!(structs[3], [2, 10, 0, 0, 2, 0, 0, 0, 0, 0], "IRQ0 -> GSI2");
        assert_eq!(structs[4], [2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0], "IRQ9 level, active high");
    }

    fn table_sig(mem: &GuestMemory, addr: u64) -> [u8; 4] {
        let mut s = [0; 4];
        mem.read(addr, &mut s).unwrap();
        s
    }

    #[test]
    fn bad_configs_are_refused() {
        let layout = MemoryLayout::new(64 * MIB, 0).unwrap();
        let mem = layout.build_memory().unwrap();
        let cfg = AcpiConfig { cpus: 0, pm_base: 0x600, sci_irq: 9 };
        assert!(matches!(write_acpi_tables(&mem, &cfg), Err(AcpiError::Cpus(0))));
        let with_bios = MemoryLayout::new(64 * MIB, 128 * 1024).unwrap();
        let mem = with_bios.build_memory().unwrap();
        let cfg = AcpiConfig { cpus: 1, ..cfg };
        assert!(matches!(write_acpi_tables(&mem, &cfg), Err(AcpiError::NotRam)));
    }
}
