//! quern: the command-line front end. It parses QEMU's command line (`cli`), builds
//! the machine (`setup`), and runs it with the terminal as the serial console.

mod cli;
mod console;
mod daemon;
mod hmp;
mod logging;
mod monitor;
mod pty;
mod setup;

use std::io::Write;
use std::process::ExitCode;

use quern_machine_pc::machine::{prepare_memory, PcMachine};

use cli::{Action, Options};

// The translator allocates and frees many small vectors per block; glibc's malloc
// spent a tenth of translation time in consolidation and in re-faulting trimmed memory.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // Before anything starts a thread: the fork keeps only the calling one.
    if opts.daemonize {
        if let Err(e) = daemon::detach() {
            eprintln!("quern: {e}");
            return ExitCode::from(1);
        }
    }
    if let Err(e) = logging::init(&opts.log_items, opts.log_file.as_deref()) {
        eprintln!("quern: {e}");
        return ExitCode::from(1);
    }
    match run(*opts) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            daemon::failed(&e.0);
            eprintln!("quern: {}", e.0);
            ExitCode::from(1)
        }
    }
}

/// `-machine none`: the monitors alone, until `quit`.
fn run_without_machine(opts: &Options) -> Result<i32, Fatal> {
    let _pidfile = opts.pidfile.as_deref().map(setup::PidFile::create).transpose().map_err(Fatal)?;
    // The accelerator libvirt would get: KVM where it can be opened.
    let kvm = opts.accels.iter().any(|a| a.kind == cli::AccelKind::Kvm) && setup::kvm_present();
    let accel = if kvm { "kvm" } else { "tcg" };
    monitor::serve_without_machine(opts, accel, || {
        if opts.daemonize {
            daemon::ready();
        }
    })
    .map_err(Fatal)?;
    Ok(0)
}

fn run(opts: Options) -> Result<i32, Fatal> {
    if !opts.display_none {
        log::info!("quern has no graphical display: running as with -nographic");
    }
    if opts.machine_none {
        return run_without_machine(&opts);
    }
    let (cfg, drive_stats) = setup::machine_config(&opts).map_err(Fatal)?;
    let _pidfile = opts.pidfile.as_deref().map(setup::PidFile::create).transpose().map_err(Fatal)?;
    let (layout, mem, bios) = prepare_memory(&cfg)?;
    let accel = setup::make_accelerator(&opts, cfg.cpus, mem.clone()).map_err(Fatal)?;
    let accel_name = accel.name();
    let machine = PcMachine::new(cfg, layout, mem, bios, accel)?;
    let hmp = monitor::start(&opts, &machine, accel_name, drive_stats).map_err(Fatal)?;
    pty::spawn_input(machine.serial());
    let _raw = if opts.daemonize {
        daemon::ready();
        None
    } else {
        let raw = console::RawTerminal::enter();
        console::spawn_input(machine.serial(), machine.control(), opts.hmp_stdio.map(|m| (hmp.clone(), m)));
        Some(raw)
    };
    let status = machine.run();
    let _ = std::io::stdout().flush();
    Ok(status?)
}
