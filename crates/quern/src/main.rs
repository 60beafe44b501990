//! quern: the command-line front end. It turns QEMU-style options into a machine
//! configuration, picks the accelerator (the one place that names one), and runs.

mod cli;
mod console;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use quern_core::cpu::{IrqChipMode, SharedAccelerator};
use quern_machine_pc::config::{CharOut, DebugExitConfig, MachineConfig};
use quern_machine_pc::layout::parse_size_mib_default;
use quern_machine_pc::machine::{prepare_memory, PcMachine};

use cli::{parse_int, split_opts, Args};

/// A user-facing error: printed as "quern: ..." with status 1.
struct Fatal(String);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(e: E) -> Self {
        Fatal(e.to_string())
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse_from(cli::normalize_args(std::env::args())) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    if let Err(e) = init_logging(&args) {
        eprintln!("quern: {}", e.0);
        return ExitCode::from(1);
    }
    match run(args) {
        Ok(status) => ExitCode::from(status.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("quern: {}", e.0);
            ExitCode::from(1)
        }
    }
}

/// `-d` items become log filters; RUST_LOG still works and wins.
fn init_logging(args: &Args) -> Result<(), Fatal> {
    let mut filter = String::from("warn");
    if let Some(items) = &args.log_items {
        for item in items.split(',') {
            let f = match item {
                "int" => "quern_machine_pc=debug,quern_devices::pic=trace,quern_tcg::interrupt=debug",
                "in_asm" => "quern_tcg::in_asm=trace",
                "exec" => "quern_tcg::exec=trace",
                "cpu" | "op" | "out_asm" => "quern_tcg=trace,quern_accel_kvm=debug",
                "unimp" | "guest_errors" => "quern_core::bus=debug,quern_devices=debug",
                "pio" | "mmio" => "quern_core::bus=trace",
                "trace" => "trace",
                "help" => {
                    return Err(Fatal(
                        "log items: int, cpu, exec, in_asm, unimp, guest_errors, pio, mmio, trace".into(),
                    ))
                }
                other => other,
            };
            filter.push(',');
            filter.push_str(f);
        }
    }
    let mut b = env_logger::Builder::new();
    b.parse_filters(&filter);
    if let Ok(env) = std::env::var("RUST_LOG") {
        b.parse_filters(&env);
    }
    if let Some(path) = &args.log_file {
        let f = std::fs::File::create(path)
            .map_err(|e| Fatal(format!("cannot create log file {}: {e}", path.display())))?;
        b.target(env_logger::Target::Pipe(Box::new(f)));
    }
    b.format_timestamp(None).init();
    Ok(())
}

/// A character device's destination: stdio, none, file:PATH.
fn char_out(spec: &str, what: &str) -> Result<Option<CharOut>, Fatal> {
    match spec {
        "stdio" | "mon:stdio" => Ok(Some(Box::new(std::io::stdout()))),
        "none" | "null" => Ok(None),
        s if s.starts_with("file:") => {
            let path = &s[5..];
            let f = std::fs::File::create(path).map_err(|e| Fatal(format!("{what}: cannot create {path}: {e}")))?;
            Ok(Some(Box::new(f)))
        }
        s => Err(Fatal(format!("{what} '{s}': use stdio, none or file:PATH"))),
    }
}

fn not_yet(what: &str) -> Fatal {
    Fatal(format!("{what} is not implemented yet in quern"))
}

/// Options the machine does not support yet fail loudly rather than being ignored.
fn reject_unsupported(args: &Args) -> Result<(), Fatal> {
    if args.hda.is_some() || args.hdb.is_some() || args.cdrom.is_some() || !args.drive.is_empty() {
        return Err(not_yet("disk emulation (-hda/-hdb/-cdrom/-drive)"));
    }
    if !args.netdev.is_empty() {
        return Err(not_yet("networking (-netdev)"));
    }
    if args.gdb_default || args.gdb.is_some() || args.start_stopped {
        return Err(not_yet("the gdb stub (-s, -S, -gdb)"));
    }
    if args.qmp.is_some() {
        return Err(not_yet("QMP (-qmp)"));
    }
    if let Some(m) = args.monitor.as_deref().filter(|m| *m != "none") {
        return Err(Fatal(format!("-monitor {m}: only -monitor none is supported")));
    }
    if let Some(d) = args.display.as_deref().filter(|d| *d != "none") {
        return Err(Fatal(format!("-display {d}: quern has no graphical display; use -display none or -nographic")));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AccelKind {
    Tcg,
    Kvm,
}

/// The machine type and its options (-M pc,kernel-irqchip=off,accel=kvm).
struct MachineOpts {
    accel: Option<AccelKind>,
    irqchip: IrqChipMode,
}

fn parse_accel(s: &str) -> Result<AccelKind, Fatal> {
    match s {
        "kvm" => Ok(AccelKind::Kvm),
        "tcg" => Ok(AccelKind::Tcg),
        other => Err(Fatal(format!("accelerator '{other}': use tcg or kvm"))),
    }
}

fn parse_machine(spec: &str) -> Result<MachineOpts, Fatal> {
    let (kind, opts) = split_opts(spec);
    match kind {
        "pc" | "pc-i440fx" | "" => {}
        "q35" => return Err(not_yet("the q35 machine (-M q35)")),
        other => return Err(Fatal(format!("machine type '{other}': supported are pc (and q35 later)"))),
    }
    let mut m = MachineOpts { accel: None, irqchip: IrqChipMode::Userspace };
    for (k, v) in opts {
        match (k, v) {
            ("kernel-irqchip", "on" | "split") => m.irqchip = IrqChipMode::InAccelerator,
            ("kernel-irqchip", "off") => m.irqchip = IrqChipMode::Userspace,
            ("accel", a) => m.accel = Some(parse_accel(a.split(':').next().unwrap_or(a))?),
            ("type", _) => {}
            _ => return Err(Fatal(format!("-machine option '{k}={v}' is not supported"))),
        }
    }
    Ok(m)
}

fn parse_devices(args: &Args, cfg: &mut MachineConfig) -> Result<(), Fatal> {
    for spec in &args.device {
        let (driver, opts) = split_opts(spec);
        let num = |k: &str, v: &str| parse_int(v).ok_or_else(|| Fatal(format!("-device {driver}: bad {k}={v}")));
        match driver {
            "isa-debug-exit" => {
                let mut d = DebugExitConfig::default();
                for (k, v) in opts {
                    match k {
                        "iobase" => d.iobase = num(k, v)? as u16,
                        "iosize" => d.iosize = num(k, v)? as u16,
                        _ => return Err(Fatal(format!("-device isa-debug-exit: unknown option {k}"))),
                    }
                }
                cfg.debug_exit = Some(d);
            }
            "isa-debugcon" => {
                if cfg.debugcon.is_none() {
                    cfg.debugcon = Some(Box::new(std::io::stdout()));
                }
            }
            "help" => return Err(Fatal("devices: isa-debug-exit[,iobase=N][,iosize=N], isa-debugcon".into())),
            other => return Err(Fatal(format!("-device {other}: not supported (try -device help)"))),
        }
    }
    Ok(())
}

fn machine_config(args: &Args) -> Result<MachineConfig, Fatal> {
    let mem_spec = args.memory.strip_prefix("size=").unwrap_or(&args.memory);
    let ram_bytes = parse_size_mib_default(mem_spec)
        .ok_or_else(|| Fatal(format!("-m {}: give a size like 512, 512M or 2G", args.memory)))?;
    let cpus_spec = args.smp.strip_prefix("cpus=").unwrap_or(&args.smp);
    let cpus = cpus_spec
        .split(',')
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Fatal(format!("-smp {}: give a number of CPUs", args.smp)))?;
    for (what, p) in [("kernel", &args.kernel), ("initrd", &args.initrd), ("BIOS image", &args.bios)] {
        if let Some(p) = p {
            check_readable(what, p)?;
        }
    }
    let mut cfg = MachineConfig {
        ram_bytes,
        cpus,
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        append: args.append.clone(),
        bios: args.bios.clone(),
        no_reboot: args.no_reboot,
        serial: Some(Box::new(std::io::stdout())),
        debugcon: None,
        debug_exit: None,
    };
    if let Some(first) = args.serial.first() {
        cfg.serial = char_out(first, "-serial")?;
    }
    if let Some(d) = &args.debugcon {
        cfg.debugcon = char_out(d, "-debugcon")?;
    }
    parse_devices(args, &mut cfg)?;
    Ok(cfg)
}

fn check_readable(what: &str, p: &Path) -> Result<(), Fatal> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Fatal(format!("{what} '{}' is not a regular file", p.display()))),
        Err(e) => Err(Fatal(format!("cannot read {what} '{}': {e}", p.display()))),
    }
}

fn make_accelerator(
    kind: AccelKind,
    irqchip: IrqChipMode,
    cpu: Option<&str>,
    cpus: u32,
    mem: Arc<quern_core::GuestMemory>,
) -> Result<SharedAccelerator, Fatal> {
    match kind {
        AccelKind::Kvm => {
            use quern_accel_kvm::{is_pvm_host, CpuidMask, KvmAccelerator, KvmConfig};
            let mut mask = if is_pvm_host() { CpuidMask::pvm_workarounds() } else { CpuidMask::default() };
            if let Some(cpu) = cpu {
                let (model, feats) = split_opts(cpu);
                if !matches!(model, "host" | "max") {
                    log::warn!("-cpu {model}: KVM runs the host CPU model; applying only the feature flags");
                }
                for (f, _) in feats {
                    mask.apply_flag(f).map_err(Fatal)?;
                }
            }
            let accel = KvmAccelerator::new(mem, KvmConfig { irqchip, cpuid_mask: mask, cpus })?;
            Ok(Arc::new(accel))
        }
        AccelKind::Tcg => Ok(Arc::new(quern_tcg::TcgAccelerator::new(mem)?)),
    }
}

fn run(args: Args) -> Result<i32, Fatal> {
    reject_unsupported(&args)?;
    let mopts = parse_machine(&args.machine)?;
    let kind = match (&args.accel, args.enable_kvm, mopts.accel) {
        (Some(a), _, _) => parse_accel(a.split(',').next().unwrap_or(a))?,
        (None, true, _) => AccelKind::Kvm,
        (None, false, Some(a)) => a,
        (None, false, None) => AccelKind::Tcg,
    };
    if !args.nographic && args.display.is_none() {
        log::info!("quern has no graphical display: running as with -nographic");
    }
    let cfg = machine_config(&args)?;
    let (layout, mem, bios) = prepare_memory(&cfg)?;
    let accel = make_accelerator(kind, mopts.irqchip, args.cpu.as_deref(), cfg.cpus, mem.clone())?;
    let machine = PcMachine::new(cfg, layout, mem, bios, accel)?;
    let _raw = console::RawTerminal::enter();
    console::spawn_input(machine.serial(), machine.control());
    let status = machine.run();
    let _ = std::io::stdout().flush();
    Ok(status?)
}
