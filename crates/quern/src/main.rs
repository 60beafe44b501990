//! quern: the command-line front end. It parses QEMU's command line (`cli`), builds
//! the machine (`setup`), and runs it with the terminal as the serial console.

mod cli;
mod console;
mod logging;
mod setup;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use quern_core::cpu::{IrqChipMode, SharedAccelerator};
use quern_machine_pc::machine::{prepare_memory, PcMachine};

use cli::{AccelKind, Action, Options};

/// A user-facing error: printed as "quern: ..." with status 1.
struct Fatal(String);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal(e.to_string())
    }
}

fn main() -> ExitCode {
    let opts = match cli::parse(std::env::args_os()) {
        Ok(Action::Run(o)) => o,
        Ok(Action::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("quern: {}", e.0);
            return ExitCode::from(1);
        }
    };
    if let Err(e) = logging::init(&opts.log_items, opts.log_file.as_deref()) {
        eprintln!("quern: {e}");
        return ExitCode::from(1);
    }
    match run(*opts) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("quern: {}", e.0);
            ExitCode::from(1)
        }
    }
}

/// The one place that names an accelerator. `cpu` is the parsed `-cpu` (default
/// qemu64); what the accelerator cannot give of it is a `-cpu` error.
fn make_accelerator(
    kind: AccelKind,
    irqchip: IrqChipMode,
    cpu: &quern_core::CpuModel,
    cpus: u32,
    mem: Arc<quern_core::GuestMemory>,
) -> Result<SharedAccelerator, Fatal> {
    let cpu_error = |e: String| Fatal(format!("-cpu {}: {e}", cpu.spec()));
    match kind {
        AccelKind::Kvm => {
            use quern_accel_kvm::{is_pvm_host, CpuidMask, KvmAccelerator, KvmConfig, KvmError};
            let cpuid_mask = if is_pvm_host() { CpuidMask::pvm_workarounds() } else { CpuidMask::default() };
            let config = KvmConfig { irqchip, cpuid_mask, cpus, cpu: cpu.clone() };
            match KvmAccelerator::new(mem, config) {
                Ok(accel) => Ok(Arc::new(accel)),
                Err(KvmError::CpuModel(e)) => Err(cpu_error(e)),
                Err(e) => Err(e.into()),
            }
        }
        AccelKind::Tcg => match quern_tcg::TcgAccelerator::with_cpu_model(mem, cpu) {
            Ok(accel) => Ok(Arc::new(accel)),
            Err(quern_core::CpuError::CpuModel(e)) => Err(cpu_error(e)),
            Err(e) => Err(e.into()),
        },
    }
}

fn run(opts: Options) -> Result<i32, Fatal> {
    if !opts.display_none {
        log::info!("quern has no graphical display: running as with -nographic");
    }
    let cfg = setup::machine_config(&opts).map_err(Fatal)?;
    let _pidfile = opts.pidfile.as_deref().map(setup::PidFile::create).transpose().map_err(Fatal)?;
    let (layout, mem, bios) = prepare_memory(&cfg)?;
    let accel = setup::make_accelerator(&opts, cfg.cpus, mem.clone()).map_err(Fatal)?;
    let machine = PcMachine::new(cfg, layout, mem, bios, accel)?;
    let _raw = console::RawTerminal::enter();
    console::spawn_input(machine.serial(), machine.control());
    let status = machine.run();
    let _ = std::io::stdout().flush();
    Ok(status?)
}
