//! From checked [`Options`] to a machine: opens the files the options name, builds the
//! machine configuration and picks the accelerator (the one place that names one).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quern_core::cpu::{IrqChipMode, SharedAccelerator};
use quern_core::GuestMemory;
use quern_machine_pc::config::{CharOut, DebugExitConfig, MachineConfig};

use crate::cli::{AccelChoice, CharDev, Device, KernelIrqchip, Options};

/// Opens a character device's destination.
fn char_out(dev: &CharDev, opt: &str) -> Result<Option<CharOut>, String> {
    Ok(match dev {
        CharDev::Stdio => Some(Box::new(std::io::stdout())),
        CharDev::Null => None,
        CharDev::File(p) => {
            let f = File::create(p).map_err(|e| format!("-{opt} file:{}: cannot create: {e}", p.display()))?;
            Some(Box::new(f))
        }
    })
}

/// A relative `-bios` name is looked up in the `-L` directories, as QEMU does.
fn find_firmware(name: &Path, dirs: &[PathBuf]) -> PathBuf {
    if name.is_relative() && !name.exists() {
        if let Some(p) = dirs.iter().map(|d| d.join(name)).find(|p| p.exists()) {
            return p;
        }
    }
    name.to_path_buf()
}

fn check_readable(opt: &str, p: &Path) -> Result<(), String> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("-{opt} {}: not a regular file", p.display())),
        Err(e) => Err(format!("-{opt} {}: cannot read: {e}", p.display())),
    }
}

/// The machine configuration the options describe.
pub fn machine_config(o: &Options) -> Result<MachineConfig, String> {
    let bios = o.bios.as_deref().map(|b| find_firmware(b, &o.firmware_dirs));
    for (opt, p) in [("kernel", o.kernel.as_deref()), ("initrd", o.initrd.as_deref()), ("bios", bios.as_deref())] {
        if let Some(p) = p {
            check_readable(opt, p)?;
        }
    }
    let mut cfg = MachineConfig {
        ram_bytes: o.ram_bytes,
        cpus: o.cpus,
        kernel: o.kernel.clone(),
        initrd: o.initrd.clone(),
        append: o.append.clone().unwrap_or_default(),
        bios,
        no_reboot: o.no_reboot,
        no_shutdown: o.no_shutdown,
        serial: None,
        debugcon: None,
        debug_exit: None,
        drives: Vec::new(),
        boot_order: None,
    };
    if let Some(dev) = &o.serial {
        cfg.serial = char_out(dev, "serial")?;
    }
    if let Some(dev) = &o.debugcon {
        cfg.debugcon = char_out(dev, "debugcon")?;
    }
    for d in &o.devices {
        match *d {
            Device::DebugExit { iobase, iosize } => cfg.debug_exit = Some(DebugExitConfig { iobase, iosize }),
            Device::DebugCon => unreachable!("the parser folds isa-debugcon into Options::debugcon"),
        }
    }
    Ok(cfg)
}

/// The text `-cpu help` prints.
pub fn cpu_help() -> String {
    quern_core::cpu_model::help_text()
}

/// Creates the first accelerator that works, in the order the options give (QEMU's
/// `accel=kvm:tcg` fallback); the errors of all that failed if none does.
pub fn make_accelerator(o: &Options, cpus: u32, mem: Arc<GuestMemory>) -> Result<SharedAccelerator, String> {
    let mut errors = Vec::new();
    for choice in &o.accels {
        match try_accelerator(o, choice, cpus, mem.clone()) {
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
    cpus: u32,
    mem: Arc<GuestMemory>,
) -> Result<SharedAccelerator, String> {
    let irqchip = match choice.kernel_irqchip.or(o.machine_irqchip) {
        Some(KernelIrqchip::On) => IrqChipMode::InAccelerator,
        Some(KernelIrqchip::Off) | None => IrqChipMode::Userspace,
    };
    let cpu = quern_core::CpuModel::parse(&o.cpu).map_err(|e| format!("-cpu {}: {e}", o.cpu))?;
    crate::make_accelerator(choice.kind, irqchip, &cpu, cpus, mem).map_err(|e| e.0)
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
