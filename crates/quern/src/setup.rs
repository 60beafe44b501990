//! From checked [`Options`] to a machine: opens the files the options name, builds the
//! machine configuration and picks the accelerator (the one place that names one).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quern_block::{BlockBackend, BlockStats, Counted};
use quern_core::cpu::{IrqChipMode, SharedAccelerator};
use quern_core::{CpuError, CpuModel, GuestMemory};
use quern_machine_pc::config::{CharOut, DebugExitConfig, DriveConfig, MachineConfig};

use crate::cli::drives::DriveSpec;
use crate::cli::{AccelChoice, AccelKind, CharDev, Device, KernelIrqchip, Options};

/// Opens a character device's destination.
fn char_out(dev: &CharDev, opt: &str) -> Result<Option<CharOut>, String> {
    Ok(match dev {
        CharDev::Stdio => Some(Box::new(std::io::stdout())),
        CharDev::Null => None,
        CharDev::File(p) => {
            let f = File::create(p).map_err(|e| format!("-{opt} file:{}: cannot create: {e}", p.display()))?;
            Some(Box::new(f))
        }
        CharDev::Pty(label, log) => Some(crate::pty::open(label, log.as_ref())?),
    })
}

/// Whether /dev/kvm can be opened for use here (what QMP's `query-kvm` calls present).
pub fn kvm_present() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The BIOS quern boots when neither -kernel nor -bios is given.
pub const DEFAULT_BIOS: &str = "bios-256k.bin";

/// Where firmware files are looked for, in this order: the `-L` directories
/// (`l_dirs`), `$QUERN_FIRMWARE_DIR`, the `build/roms` cache that
/// `roms/fetch-firmware.sh` fills (of the checkout the running binary sits in, then of
/// the one it was built from), and the system's: Debian's `seabios` package
/// (/usr/share/seabios), QEMU's data files (/usr/share/qemu) and `ipxe-qemu`
/// (/usr/lib/ipxe/qemu).
pub fn firmware_dirs(l_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = l_dirs.to_vec();
    dirs.extend(std::env::var_os("QUERN_FIRMWARE_DIR").map(PathBuf::from));
    // target/release/quern -> the checkout's build/roms.
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().nth(3).map(|root| root.join("build/roms")));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/roms"));
    dirs.extend(["/usr/share/seabios", "/usr/share/qemu", "/usr/lib/ipxe/qemu"].map(PathBuf::from));
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let key = d.canonicalize().unwrap_or_else(|_| d.clone());
        let new = !seen.contains(&key);
        seen.push(key);
        new
    });
    dirs
}

/// A relative firmware name that is not a file in the current directory is looked up
/// in [`firmware_dirs`], as QEMU looks in its data directories.
fn find_firmware(name: &Path, l_dirs: &[PathBuf]) -> PathBuf {
    if name.is_relative() && !name.exists() {
        if let Some(p) = firmware_dirs(l_dirs).iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            return p;
        }
    }
    name.to_path_buf()
}

/// The default BIOS ([`DEFAULT_BIOS`], SeaBIOS) from the `-L` directories or the
/// usual places ([`firmware_dirs`]), or an error that says how to get it.
pub fn default_bios_in(l_dirs: &[PathBuf]) -> Result<PathBuf, String> {
    bios_in(&firmware_dirs(l_dirs))
}

fn bios_in(dirs: &[PathBuf]) -> Result<PathBuf, String> {
    dirs.iter().map(|d| d.join(DEFAULT_BIOS)).find(|p| p.is_file()).ok_or_else(|| {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!(
            "no firmware to boot: {DEFAULT_BIOS} is in none of {}; install Debian's seabios package or run \
             roms/fetch-firmware.sh (or give -bios FILE, or -kernel FILE to boot a kernel directly)",
            list.join(", ")
        )
    })
}

/// [`default_bios_in`] without `-L` directories.
#[allow(dead_code)] // for the CLI, as default_bios_in
pub fn default_bios() -> Result<PathBuf, String> {
    default_bios_in(&[])
}

fn check_readable(opt: &str, p: &Path) -> Result<(), String> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("-{opt} {}: not a regular file", p.display())),
        Err(e) => Err(format!("-{opt} {}: cannot read: {e}", p.display())),
    }
}

/// Opens a drive's image as the options say (its requests counted for the monitor);
/// errors name the option's image.
fn open_drive(d: &DriveSpec) -> Result<(DriveConfig, Option<Arc<BlockStats>>), String> {
    let backend = match &d.file {
        None => None,
        Some(path) => {
            let mut opts = quern_block::OpenOptions::new(path);
            let err = |e: &dyn std::fmt::Display| format!("{}: {e}", d.origin);
            opts.format = d.format.as_deref().map(str::parse).transpose().map_err(|e| err(&e))?;
            opts.cache = d.cache.parse().map_err(|e| err(&e))?;
            (opts.read_only, opts.snapshot, opts.locking) = (d.read_only, d.snapshot, d.locking);
            Some(quern_block::open(&opts).map_err(|e| err(&e))?)
        }
    };
    let (backend, stats) = match backend {
        Some(b) => {
            let (counted, stats) = Counted::new(b);
            (Some(counted as Arc<dyn BlockBackend>), Some(stats))
        }
        None => (None, None),
    };
    let drive =
        DriveConfig { backend, media: d.media, bus: d.bus, unit: d.unit, bootindex: d.bootindex, id: d.id.clone() };
    Ok((drive, stats))
}

/// Each drive's request counters (`None` for an empty CD-ROM drive), in `-drive` order.
pub type DriveStats = Vec<Option<Arc<BlockStats>>>;

/// The machine configuration the options describe, and its drives' counters.
pub fn machine_config(o: &Options) -> Result<(MachineConfig, DriveStats), String> {
    let mut bios = o.bios.as_deref().map(|b| find_firmware(b, &o.firmware_dirs));
    // Drives or network cards asked for and nothing to boot directly: the firmware
    // boots them (PXE through a card's option ROM), as QEMU's default. QEMU's default
    // card alone does not make a bare `quern` try PXE forever; it says what to give.
    if bios.is_none() && o.kernel.is_none() && (!o.drives.is_empty() || o.nics.iter().any(|n| !n.implicit)) {
        bios = Some(default_bios_in(&o.firmware_dirs)?);
    }
    for (opt, p) in [("kernel", o.kernel.as_deref()), ("initrd", o.initrd.as_deref()), ("bios", bios.as_deref())] {
        if let Some(p) = p {
            check_readable(opt, p)?;
        }
    }
    let (drives, stats): (Vec<DriveConfig>, DriveStats) =
        o.drives.iter().map(open_drive).collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
    let mut cfg = MachineConfig {
        ram_bytes: o.ram_bytes,
        cpus: o.cpus,
        topology: o.topology,
        kernel: o.kernel.clone(),
        initrd: o.initrd.clone(),
        append: o.append.clone().unwrap_or_default(),
        bios,
        no_reboot: o.no_reboot,
        no_shutdown: o.no_shutdown,
        serial: None,
        debugcon: None,
        debug_exit: None,
        drives,
        boot_order: o.boot_order.clone(),
        boot_strict: o.boot_strict,
        boot_menu: o.boot_menu,
        uuid: o.uuid,
        nics: Vec::new(),
        start_paused: o.start_paused,
        incoming: o.incoming.is_some(),
        rtc_offset_secs: if o.rtc_localtime { local_utc_offset() } else { 0 },
    };
    if let Some(dev) = &o.serial {
        cfg.serial = char_out(dev, "serial")?;
    }
    if let Some(dev) = &o.debugcon {
        cfg.debugcon = char_out(dev, "debugcon")?;
    }
    cfg.nics = o.nics.iter().enumerate().map(|(i, n)| nic_config(o, &cfg, i, n)).collect::<Result<_, _>>()?;
    for d in &o.devices {
        match *d {
            Device::DebugExit { iobase, iosize } => cfg.debug_exit = Some(DebugExitConfig { iobase, iosize }),
            Device::DebugCon => unreachable!("the parser folds isa-debugcon into Options::debugcon"),
        }
    }
    Ok((cfg, stats))
}

/// The host's offset from UTC now, in seconds (its time zone, daylight saving time
/// included), for `-rtc base=localtime`.
fn local_utc_offset() -> i64 {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as libc::time_t);
    // SAFETY: localtime_r fills a tm we own from a time_t we own.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    }
}

/// The option ROM an e1000 gets when `romfile=` is not given: iPXE's, as QEMU's `pc`
/// (Debian's ipxe-qemu, which QEMU's data directory links to).
pub const DEFAULT_NIC_ROM: &str = "efi-e1000.rom";

/// A card's machine configuration: its netdev, and its option ROM, read in whole
/// (`romfile=` must exist; the default is looked for only when firmware runs, and its
/// absence costs only PXE).
fn nic_config(
    o: &Options,
    cfg: &MachineConfig,
    index: usize,
    n: &crate::cli::net::NicSpec,
) -> Result<quern_machine_pc::config::NicConfig, String> {
    let id = n.id.clone().unwrap_or_else(|| format!("net{index}"));
    let rom = match &n.romfile {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => {
            let path = find_firmware(p, &o.firmware_dirs);
            Some(std::fs::read(&path).map_err(|e| format!("-device e1000,romfile={}: {e}", p.display()))?)
        }
        None if cfg.bios.is_some() => {
            let found = firmware_dirs(&o.firmware_dirs).iter().map(|d| d.join(DEFAULT_NIC_ROM)).find(|p| p.is_file());
            match found.map(std::fs::read) {
                Some(Ok(rom)) => Some(rom),
                _ => {
                    log::warn!("{id}: no {DEFAULT_NIC_ROM} (Debian's ipxe-qemu): the card cannot PXE boot");
                    None
                }
            }
        }
        None => None,
    };
    let netdev = n.netdev.as_ref().and_then(|id| o.netdevs.iter().find(|d| &d.id == id)).cloned();
    Ok(quern_machine_pc::config::NicConfig {
        mac: n.mac.unwrap_or(crate::cli::net::DEFAULT_MAC),
        slot: n.addr,
        netdev,
        rom,
        id,
    })
}

/// The text `-cpu help` prints.
pub fn cpu_help() -> String {
    quern_core::cpu_model::help_text()
}

/// Creates the first accelerator that works, in the order the options give (QEMU's
/// `accel=kvm:tcg` fallback); the errors of all that failed if none does.
pub fn make_accelerator(o: &Options, cpus: u32, mem: Arc<GuestMemory>) -> Result<SharedAccelerator, String> {
    let mut cpu = CpuModel::parse(&o.cpu).map_err(|e| format!("-cpu {}: {e}", o.cpu))?;
    cpu.topology = o.topology;
    let mut errors = Vec::new();
    for choice in &o.accels {
        match try_accelerator(o, choice, &cpu, cpus, mem.clone()) {
            Ok(a) => return Ok(a),
            Err(e) if o.accels.len() > 1 => {
                log::warn!("{e}; trying the next accelerator");
                errors.push(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(errors.join("; "))
}

fn try_accelerator(
    o: &Options,
    choice: &AccelChoice,
    cpu: &CpuModel,
    cpus: u32,
    mem: Arc<GuestMemory>,
) -> Result<SharedAccelerator, String> {
    let irqchip = match choice.kernel_irqchip.or(o.machine_irqchip) {
        Some(KernelIrqchip::On) => IrqChipMode::InAccelerator,
        Some(KernelIrqchip::Off) => IrqChipMode::Userspace,
        // KVM's in-kernel LAPIC/IOAPIC/PIC/PIT by default, as QEMU does: interrupts
        // and timers without exits to us, and x2APIC and TSC-deadline, which the
        // userspace LAPIC cannot give under KVM. kvm_pvm hosts too: the APIC programs
        // of tests/guest_programs.rs pass there in-kernel, while the userspace LAPIC
        // misses CR8 being lowered (no KVM_EXIT_SET_TPR from pvm's emulator).
        None if choice.kind == AccelKind::Kvm => IrqChipMode::InAccelerator,
        None => IrqChipMode::Userspace,
    };
    let cpu_error = |e: String| format!("-cpu {}: {e}", cpu.spec());
    match choice.kind {
        #[cfg(not(target_arch = "x86_64"))]
        AccelKind::Kvm => {
            let _ = (cpus, irqchip);
            Err(format!(
                "-accel kvm: KVM runs guests of the host's own architecture, and this host is {}, not x86-64: \
                 use -accel tcg",
                std::env::consts::ARCH
            ))
        }
        #[cfg(target_arch = "x86_64")]
        AccelKind::Kvm => {
            use quern_accel_kvm::{is_pvm_host, CpuidMask, KvmAccelerator, KvmConfig, KvmError};
            let cpuid_mask = if is_pvm_host() { CpuidMask::pvm_workarounds() } else { CpuidMask::default() };
            let config = KvmConfig { irqchip, cpuid_mask, cpus, cpu: cpu.clone() };
            match KvmAccelerator::new(mem, config) {
                Ok(accel) => Ok(Arc::new(accel)),
                Err(KvmError::CpuModel(e)) => Err(cpu_error(e)),
                Err(e) => Err(e.to_string()),
            }
        }
        AccelKind::Tcg => match quern_tcg::TcgAccelerator::with_cpu_model(mem, cpu) {
            Ok(accel) => Ok(Arc::new(accel)),
            Err(CpuError::CpuModel(e)) => Err(cpu_error(e)),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// `-pidfile`: the process ID, written at start and removed at exit, as QEMU does.
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn create(path: &Path) -> Result<PidFile, String> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("-pidfile {}: cannot write: {e}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod firmware_tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("quern-fw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn search_order_puts_l_dirs_first_and_the_system_last() {
        let l = scratch("order");
        let dirs = firmware_dirs(&[l.clone(), l.clone()]);
        assert_eq!(dirs[0], l);
        assert_eq!(dirs.iter().filter(|d| **d == l).count(), 1, "duplicates dropped");
        let tail: Vec<_> = dirs.iter().rev().take(3).rev().cloned().collect();
        assert_eq!(tail, ["/usr/share/seabios", "/usr/share/qemu", "/usr/lib/ipxe/qemu"].map(PathBuf::from));
        assert!(dirs.iter().any(|d| d.ends_with("build/roms")));
    }

    #[test]
    fn relative_names_are_found_in_l_dirs_and_the_default_bios_too() {
        let dir = scratch("find");
        std::fs::write(dir.join("my-bios.bin"), [0u8; 16]).unwrap();
        std::fs::write(dir.join(DEFAULT_BIOS), [0u8; 16]).unwrap();
        let l = [dir.clone()];
        let dir = &dir;
        assert_eq!(find_firmware(Path::new("my-bios.bin"), &l), dir.join("my-bios.bin"));
        // Absolute paths and names found nowhere are left as given (the open fails later).
        assert_eq!(find_firmware(Path::new("/nonexistent/x.bin"), &l), PathBuf::from("/nonexistent/x.bin"));
        assert_eq!(find_firmware(Path::new("no-such.bin"), &l), PathBuf::from("no-such.bin"));
        assert_eq!(default_bios_in(&l).unwrap(), dir.join(DEFAULT_BIOS));
    }

    #[test]
    fn a_missing_default_bios_says_how_to_get_it() {
        let l = scratch("missing");
        let e = bios_in(&[l]).unwrap_err();
        assert!(
            e.contains("bios-256k.bin") && e.contains("seabios package") && e.contains("roms/fetch-firmware.sh"),
            "{e}"
        );
    }
}
