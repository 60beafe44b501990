//! Booting through firmware (SeaBIOS) as QEMU's `pc` does it: the i440FX PAM
//! registers switching 0xc0000-0xfffff between the BIOS ROM and shadow RAM ([`Pam`]),
//! and fw_cfg filled with what SeaBIOS reads ([`build_fw_cfg`]): RAM size, CPU
//! counts, `etc/e820`, the ACPI tables with their linker/loader script, SMBIOS,
//! `bootorder`, `etc/sercon-port` (quern has no display, so the BIOS and boot loaders
//! print on COM1) and `etc/boot-fail-wait`.

use std::sync::{Arc, Mutex};

use quern_core::bus::lock;
use quern_core::cpu::SharedAccelerator;
use quern_core::{BusDevice, GuestMemory};
use quern_devices::fw_cfg::{key, FwCfg, FW_CFG_IO_BASE, FW_CFG_IO_LEN};
use quern_devices::pci::i440fx::{pam_modes, PamMode, PAM_REGS, PAM_SEGMENTS};

use crate::acpi::{build_acpi_tables, AcpiBlob, AcpiConfig, AcpiFile};
use crate::chipset::Chipset;
use crate::config::{DriveConfig, MachineConfig};
use crate::layout::{MemoryLayout, OPTION_ROM_START, PAM_VIEW_RAM, PAM_VIEW_RAM_RO, PAM_VIEW_ROM};
use crate::machine::{MachineError, ACPI_PM_BASE, ACPI_SCI_IRQ};
use crate::smbios::{build_smbios, SmbiosConfig};

/// Length of the PAM area, 0xc0000-0xfffff.
pub const PAM_AREA_LEN: u64 = 0x4_0000;
/// COM1, where SeaBIOS's serial console goes.
const SERCON_PORT: u16 = 0x3f8;

/// The PAM state: which view each segment shows and where writes go.
pub struct Pam {
    mem: Arc<GuestMemory>,
    accel: SharedAccelerator,
    modes: Mutex<[PamMode; PAM_SEGMENTS.len()]>,
}

impl Pam {
    pub fn new(mem: Arc<GuestMemory>, accel: SharedAccelerator) -> Arc<Self> {
        let off = PamMode { read_ram: false, write_ram: false };
        Arc::new(Pam { mem, accel, modes: Mutex::new([off; PAM_SEGMENTS.len()]) })
    }

    /// Applies PAM register values: each segment reads ROM or shadow RAM, and RAM that
    /// is not write-enabled is shown read-only (its writes reach [`PamWrites`]).
    pub fn apply(&self, regs: &[u8; PAM_REGS]) {
        let modes = pam_modes(regs);
        let mut changed = false;
        for (&(base, _), m) in PAM_SEGMENTS.iter().zip(&modes) {
            let view = match (m.read_ram, m.write_ram) {
                (true, true) => PAM_VIEW_RAM,
                (true, false) => PAM_VIEW_RAM_RO,
                (false, _) => PAM_VIEW_ROM,
            };
            match self.mem.select_view(base, view) {
                Ok(c) => changed |= c,
                Err(e) => log::error!("PAM: {e}"),
            }
        }
        *lock(&self.modes) = modes;
        if changed {
            log::debug!("PAM: {regs:02x?}");
            if let Err(e) = self.accel.sync_memory() {
                log::error!("PAM: {e}");
            }
        }
    }

    /// The listener the host bridge calls with its PAM registers.
    pub fn listener(self: &Arc<Self>) -> quern_devices::pci::PamListener {
        let pam = self.clone();
        Box::new(move |regs| pam.apply(regs))
    }
}

/// Guest writes to the PAM area that did not land in RAM (the segment shows ROM or
/// write-protected RAM): those to a write-enabled segment go to its shadow RAM, the
/// rest are lost, as on the chipset. On the MMIO bus at 0xc0000.
pub struct PamWrites(pub Arc<Pam>);

impl BusDevice for PamWrites {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Every segment is memory in every mode: reads never get here.
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let modes = *lock(&self.0.modes);
        for (i, &b) in data.iter().enumerate() {
            let addr = OPTION_ROM_START + offset + i as u64;
            let Some(seg) = PAM_SEGMENTS.iter().position(|&(base, size)| (base..base + size).contains(&addr)) else {
                continue;
            };
            if modes[seg].write_ram {
                if let Err(e) = self.0.mem.write_view(addr, PAM_VIEW_RAM, &[b]) {
                    log::error!("PAM: {e}");
                }
            }
        }
    }
}

/// What fw_cfg describes besides the memory map.
pub struct FwCfgSetup<'a> {
    pub cpus: u32,
    /// `-smp`'s maxcpus.
    pub max_cpus: u32,
    pub acpi: &'a AcpiBlob,
    pub smbios: SmbiosConfig,
    pub drives: &'a [DriveConfig],
    /// `-boot strict=on`: nothing but the boot order is tried (QEMU's "HALT" entry).
    pub strict: bool,
    /// `-boot menu=on`.
    pub menu: bool,
}

/// The fw_cfg device holding what SeaBIOS reads.
pub fn build_fw_cfg(mem: Arc<GuestMemory>, layout: &MemoryLayout, s: &FwCfgSetup) -> FwCfg {
    let mut f = FwCfg::new(mem);
    let cpus = u16::try_from(s.cpus).unwrap_or(u16::MAX);
    f.add_u64(key::RAM_SIZE, layout.ram);
    f.add_u16(key::NB_CPUS, cpus);
    f.add_u16(key::MAX_CPUS, u16::try_from(s.max_cpus.max(s.cpus)).unwrap_or(u16::MAX));
    f.add_u16(key::NOGRAPHIC, 1);
    f.add_u16(key::BOOT_MENU, u16::from(s.menu));
    f.add_bytes(key::UUID, s.smbios.uuid.to_vec());
    // The IOAPIC has ISA IRQ0 on pin 2 (SeaBIOS's MP table says so then).
    f.add_u32(key::IRQ0_OVERRIDE, 1);
    let mut files: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut e820 = Vec::new();
    for e in layout.e820() {
        e820.extend(e.addr.to_le_bytes());
        e820.extend(e.size.to_le_bytes());
        e820.extend((e.kind as u32).to_le_bytes());
    }
    files.push(("etc/e820", e820));
    files.push(("etc/boot-cpus", cpus.to_le_bytes().to_vec()));
    // Wait forever after "No bootable device." (QEMU's default, -1), rather than reboot.
    files.push(("etc/boot-fail-wait", u32::MAX.to_le_bytes().to_vec()));
    files.push(("etc/sercon-port", SERCON_PORT.to_le_bytes().to_vec()));
    files.push((AcpiFile::Rsdp.name(), s.acpi.rsdp.clone()));
    files.push((AcpiFile::Tables.name(), s.acpi.tables.clone()));
    files.push(("etc/table-loader", s.acpi.table_loader()));
    let (tables, anchor) = build_smbios(&s.smbios, layout);
    files.push(("etc/smbios/smbios-tables", tables));
    files.push(("etc/smbios/smbios-anchor", anchor.to_vec()));
    let mut order = bootorder(s.drives);
    if s.strict && !order.is_empty() {
        order.push_str("HALT\n");
    }
    if !order.is_empty() {
        files.push(("bootorder", order.into_bytes()));
    }
    for (name, data) in files {
        // Names are fixed and distinct here.
        if let Err(e) = f.add_file(name, data) {
            log::error!("fw_cfg: {e}");
        }
    }
    f
}

/// Puts the firmware's devices on the chipset: PAM shadowing of 0xc0000-0xfffff and
/// fw_cfg (with this machine's ACPI and SMBIOS tables, e820 and boot order).
pub fn install(
    chipset: &mut Chipset,
    cfg: &MachineConfig,
    layout: &MemoryLayout,
    mem: &Arc<GuestMemory>,
    accel: &SharedAccelerator,
    image: &[u8],
) -> Result<(), MachineError> {
    let pam = Pam::new(mem.clone(), accel.clone());
    chipset.mmio.insert(Arc::new(Mutex::new(PamWrites(pam.clone()))), OPTION_ROM_START, PAM_AREA_LEN)?;
    lock(&chipset.pci).set_pam_listener(pam.listener());
    let cpus = u8::try_from(cfg.cpus).map_err(|_| MachineError::Config(format!("-smp {}: too many CPUs", cfg.cpus)))?;
    let acpi = build_acpi_tables(&AcpiConfig {
        cpus,
        topology: cfg.topology,
        pm_base: ACPI_PM_BASE,
        sci_irq: ACPI_SCI_IRQ,
        pci_mmio_base: layout.below_4g,
    })?;
    let (bios_vendor, bios_version, bios_date) = firmware_identity(image);
    let smbios = SmbiosConfig { cpus: cfg.cpus, bios_vendor, bios_version, bios_date, uuid: cfg.uuid };
    let setup = FwCfgSetup {
        cpus: cfg.cpus,
        max_cpus: cfg.topology.max_cpus(),
        acpi: &acpi,
        smbios,
        drives: &cfg.drives,
        strict: cfg.boot_strict,
        menu: cfg.boot_menu,
    };
    let fw = Arc::new(Mutex::new(build_fw_cfg(mem.clone(), layout, &setup)));
    chipset.pio.insert(fw.clone(), u64::from(FW_CFG_IO_BASE), FW_CFG_IO_LEN)?;
    chipset.stateful.push(("fw-cfg".into(), fw));
    Ok(())
}

/// The OpenFirmware path SeaBIOS matches a PIIX IDE drive by.
pub fn ide_device_path(bus: u8, unit: u8) -> String {
    format!("/pci@i0cf8/ide@1,1/drive@{bus:x}/disk@{unit:x}")
}

/// QEMU's `bootorder` file: the drives with a `bootindex`, lowest first, one path a
/// line. Drives without one keep the firmware's order (after these).
pub fn bootorder(drives: &[DriveConfig]) -> String {
    let mut v: Vec<(u32, String)> =
        drives.iter().filter_map(|d| d.bootindex.map(|i| (i, ide_device_path(d.bus, d.unit)))).collect();
    v.sort();
    v.into_iter().map(|(_, p)| p + "\n").collect()
}

/// CMOS bytes 0x3d and 0x38 for `-boot order=` (letters a/b floppy, c disk, d CD-ROM,
/// n network; the first three count), as QEMU sets them; SeaBIOS orders the device
/// classes by them. QEMU's default is "cad". Bit 0 of 0x38 skips the floppy
/// boot-signature check, which QEMU sets too.
pub fn boot_order_cmos(order: Option<&str>) -> (u8, u8) {
    let nibble = |c: char| match c.to_ascii_lowercase() {
        'a' | 'b' => 1,
        'c' => 2,
        'd' => 3,
        'n' => 4,
        _ => 0,
    };
    let mut n = order.unwrap_or("cad").chars().map(nibble).chain(std::iter::repeat(0));
    let (a, b, c) = (n.next().unwrap_or(0), n.next().unwrap_or(0), n.next().unwrap_or(0));
    ((b << 4) | a, (c << 4) | 1)
}

/// Vendor, version and release date for SMBIOS type 0, from the firmware's banner
/// ("SeaBIOS (version X)") when it has one.
pub fn firmware_identity(image: &[u8]) -> (String, String, String) {
    const BANNER: &[u8] = b"SeaBIOS (version ";
    if let Some(at) = image.windows(BANNER.len()).position(|w| w == BANNER) {
        let rest = &image[at + BANNER.len()..];
        let end = rest.iter().take(80).position(|&c| c == b')' || c == 0).unwrap_or(0);
        let mut version = String::from_utf8_lossy(&rest[..end]).into_owned();
        if version.contains('%') {
            // The banner is SeaBIOS's printf format ("SeaBIOS (version %s)"): the version
            // is its VERSION string, which the build (out/version.c) puts right after
            // BUILDINFO ("gcc: ... binutils: ...").
            version = seabios_version_string(image).unwrap_or_default();
        }
        // SeaBIOS's own type 0 gives this date (src/fw/biostables.c).
        return ("SeaBIOS".into(), version, "04/01/2014".into());
    }
    ("quern".into(), env!("CARGO_PKG_VERSION").into(), String::new())
}

/// SeaBIOS's VERSION string: the first string after BUILDINFO's "binutils: ..." text.
fn seabios_version_string(image: &[u8]) -> Option<String> {
    const BUILDINFO: &[u8] = b"binutils: ";
    let at = image.windows(BUILDINFO.len()).position(|w| w == BUILDINFO)?;
    let rest = &image[at..];
    let rest = &rest[rest.iter().position(|&c| c == 0)?..];
    let rest = &rest[rest.iter().position(|&c| c != 0)?..];
    let end = rest.iter().take(65).position(|&c| c == 0)?;
    let v = &rest[..end];
    (!v.is_empty() && v.iter().all(|c| c.is_ascii_graphic())).then(|| String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Media;
    use crate::layout::{FOUR_GIB, KIB, MIB};
    use quern_core::RegionKind;

    struct NoAccel;
    impl quern_core::Accelerator for NoAccel {
        fn name(&self) -> &'static str {
            "none"
        }
        fn create_vcpu(&self, _id: u32) -> Result<Box<dyn quern_core::Vcpu>, quern_core::CpuError> {
            unreachable!()
        }
    }

    fn machine_memory() -> Arc<GuestMemory> {
        let l = MemoryLayout::new(64 * MIB, 256 * KIB).unwrap();
        let mem = Arc::new(l.build_memory().unwrap());
        let mut bios = vec![0u8; 256 << 10];
        bios[(256 << 10) - 16] = 0xea;
        mem.write(FOUR_GIB - bios.len() as u64, &bios).unwrap();
        mem
    }

    #[test]
    fn pam_switches_reads_and_writes_per_segment() {
        let mem = machine_memory();
        let pam = Pam::new(mem.clone(), Arc::new(NoAccel));
        let mut writes = PamWrites(pam.clone());
        let f_seg = 0xffff0 - OPTION_ROM_START;
        // Power-on: reads ROM, writes lost.
        pam.apply(&[0; 7]);
        assert_eq!(mem.read_u8(0xffff0).unwrap(), 0xea);
        writes.write(f_seg, &[0x11]);
        assert_eq!(mem.read_u8(0xffff0).unwrap(), 0xea);
        // Write-only (0x20): reads still ROM, writes into shadow RAM.
        pam.apply(&[0x20, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mem.region(0xffff0).unwrap().kind, RegionKind::Rom);
        writes.write(f_seg, &[0x22]);
        assert_eq!(mem.read_u8(0xffff0).unwrap(), 0xea);
        // Read-write RAM (0x30): the shadow copy shows, writes land directly.
        let g = mem.generation();
        pam.apply(&[0x30, 0, 0, 0, 0, 0, 0]);
        assert!(mem.generation() > g);
        assert_eq!(mem.read_u8(0xffff0).unwrap(), 0x22);
        assert_eq!(mem.region(0xffff0).unwrap().kind, RegionKind::Ram);
        // Read-only RAM (0x10): the copy shows, bus writes are lost.
        pam.apply(&[0x10, 0, 0, 0, 0, 0, 0]);
        assert_eq!(mem.region(0xffff0).unwrap().kind, RegionKind::Rom);
        writes.write(f_seg, &[0x33]);
        assert_eq!(mem.read_u8(0xffff0).unwrap(), 0x22);
        // 16 KiB segments: PAM1's high nibble is 0xc4000, apart from 0xc0000.
        pam.apply(&[0x10, 0x30, 0, 0, 0, 0, 0]);
        assert_eq!(mem.region(0xc4000).unwrap().kind, RegionKind::Ram);
        assert_eq!(mem.region(0xc0000).unwrap().kind, RegionKind::Rom);
        assert_eq!(mem.read_u8(0xc0000).unwrap(), 0, "empty option-ROM side");
        // A write across two segments splits by their modes: 0xc0000 off, 0xc4000
        // write-only.
        pam.apply(&[0x10, 0x20, 0, 0, 0, 0, 0]);
        writes.write(0x3fff, &[1, 2]);
        pam.apply(&[0x10, 0x33, 0, 0, 0, 0, 0]);
        assert_eq!((mem.read_u8(0xc3fff).unwrap(), mem.read_u8(0xc4000).unwrap()), (0, 2));
    }

    #[test]
    fn fw_cfg_holds_what_seabios_reads() {
        let mem = machine_memory();
        let layout = MemoryLayout::new(64 * MIB, 256 * KIB).unwrap();
        let acpi = build_acpi_tables(&AcpiConfig {
            cpus: 2,
            topology: Default::default(),
            pm_base: 0x600,
            sci_irq: 9,
            pci_mmio_base: 64 * MIB,
        })
        .unwrap();
        let (vendor, version, date) = firmware_identity(b"xxSeaBIOS (version 1.16.2-debian-1.16.2-1)\0");
        assert_eq!((vendor.as_str(), version.as_str()), ("SeaBIOS", "1.16.2-debian-1.16.2-1"));
        // Debian's build prints the banner with a format; the version is stored apart.
        let rom = b"xxSeaBIOS (version %s)\n\0..gcc: (Debian 12.2.0-14) 12.2.0 binutils: (GNU Binutils \
                    for Debian) 2.40\x001.16.2-debian-1.16.2-1\0\x90";
        assert_eq!(firmware_identity(rom).1, "1.16.2-debian-1.16.2-1");
        assert_eq!(firmware_identity(b"SeaBIOS (version %s)\0").1, "");
        let smbios =
            SmbiosConfig { cpus: 2, bios_vendor: vendor, bios_version: version, bios_date: date, uuid: [0; 16] };
        let f = build_fw_cfg(
            mem.clone(),
            &layout,
            &FwCfgSetup {
                cpus: 2,
                max_cpus: 2,
                acpi: &acpi,
                smbios: smbios.clone(),
                drives: &[],
                strict: false,
                menu: false,
            },
        );
        assert_eq!(f.item(key::BOOT_MENU), Some(&[0u8, 0][..]));
        assert!(f.file("bootorder").is_none(), "no bootindex, no bootorder");
        // -boot strict=on,menu=on and -uuid.
        let disk = DriveConfig {
            backend: None,
            media: crate::config::Media::Disk,
            bus: 0,
            unit: 0,
            bootindex: Some(1),
            id: "d".into(),
        };
        let uuid = *b"\x5d\x3c\x0a\x0e\x6c\x8f\x4c\x3e\x9a\x3b\x1f\x0e\x6b\x1c\x2d\x3e";
        let strict = FwCfgSetup {
            cpus: 2,
            max_cpus: 4,
            acpi: &acpi,
            smbios: SmbiosConfig { uuid, ..smbios.clone() },
            drives: std::slice::from_ref(&disk),
            strict: true,
            menu: true,
        };
        let g = build_fw_cfg(mem.clone(), &layout, &strict);
        assert_eq!(g.file("bootorder"), Some(&b"/pci@i0cf8/ide@1,1/drive@0/disk@0\nHALT\n"[..]));
        assert_eq!(g.item(key::BOOT_MENU), Some(&[1u8, 0][..]));
        assert_eq!(g.item(key::UUID), Some(&uuid[..]));
        assert_eq!(g.item(key::MAX_CPUS), Some(&[4u8, 0][..]), "-smp 2,maxcpus=4");
        assert_eq!(f.item(key::RAM_SIZE), Some(&(64 * MIB).to_le_bytes()[..]));
        assert_eq!(f.item(key::NB_CPUS), Some(&[2u8, 0][..]));
        assert_eq!(f.item(key::MAX_CPUS), Some(&[2u8, 0][..]));
        assert_eq!(f.file("etc/sercon-port"), Some(&[0xf8u8, 3][..]));
        assert_eq!(f.file("etc/boot-fail-wait"), Some(&[0xffu8; 4][..]));
        let e820 = f.file("etc/e820").unwrap();
        assert_eq!(e820.len() % 20, 0);
        let entries: Vec<(u64, u64, u32)> = e820
            .chunks(20)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().unwrap()),
                    u64::from_le_bytes(c[8..16].try_into().unwrap()),
                    u32::from_le_bytes(c[16..].try_into().unwrap()),
                )
            })
            .collect();
        assert!(entries.contains(&(MIB, 63 * MIB, 1)), "{entries:x?}");
        assert_eq!(f.file("etc/acpi/rsdp").map(<[u8]>::len), Some(36));
        assert_eq!(f.file("etc/table-loader").map(|t| t.len() % 128), Some(0));
        assert_eq!(f.file("etc/smbios/smbios-anchor").map(<[u8]>::len), Some(31));
        let tables = f.file("etc/smbios/smbios-tables").unwrap();
        let anchor = f.file("etc/smbios/smbios-anchor").unwrap();
        assert_eq!(usize::from(u16::from_le_bytes([anchor[0x16], anchor[0x17]])), tables.len());
        assert!(f.file("bootorder").is_none(), "no bootindex, no file");
    }

    #[test]
    fn boot_order_paths_and_cmos() {
        let drive = |bus, unit, bootindex| DriveConfig {
            backend: None,
            media: Media::Cdrom,
            bus,
            unit,
            bootindex,
            id: String::new(),
        };
        let drives = [drive(0, 0, Some(2)), drive(1, 0, Some(1)), drive(0, 1, None)];
        assert_eq!(bootorder(&drives), "/pci@i0cf8/ide@1,1/drive@1/disk@0\n/pci@i0cf8/ide@1,1/drive@0/disk@0\n");
        assert_eq!(boot_order_cmos(None), (0x12, 0x31), "cad: disk, floppy, CD-ROM");
        assert_eq!(boot_order_cmos(Some("dc")), (0x23, 0x01));
        assert_eq!(boot_order_cmos(Some("n")), (0x04, 0x01));
        assert_eq!(firmware_identity(b"\0\0").0, "quern");
    }
}
