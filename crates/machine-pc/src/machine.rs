//! The PC: guest memory, the chipset's devices on their buses, firmware or kernel, and
//! the loop that drives the vCPU through the CPU trait.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quern_core::cpu::{IrqChipMode, SharedAccelerator};
use quern_core::log_limit::{self, LogLimiter};
use quern_core::memory::MemoryError;
use quern_core::{Bus, BusError, CpuError, GuestMemory, HostClock, MachineEvent, Vcpu, VcpuExit};

use crate::acpi::{self, AcpiConfig};
use crate::apic_bus::ApicBus;
use crate::chipset::{Chipset, PcOps};
use crate::config::MachineConfig;
use crate::control::{CpuWaker, EventQueue};
use crate::layout::{LayoutError, MemoryLayout, FOUR_GIB, KIB, MAX_BIOS};
use crate::loader::{self, LoaderError};
use crate::runstate::{RunControl, RunObserver, RunState};
use crate::timers::{TimerRearm, TimerThread};
use crate::vcpu_ops::VcpuOps;

/// Base of the ACPI PM registers (PM1a event/control, PM timer).
pub const ACPI_PM_BASE: u16 = 0x600;
/// The SCI's ISA interrupt, as the FADT says.
pub const ACPI_SCI_IRQ: u8 = 9;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("guest memory: {0}")]
    Memory(#[from] MemoryError),
    #[error("cannot read {what} '{}': {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("kernel '{}': {source}", path.display())]
    Kernel { path: PathBuf, source: LoaderError },
    #[error("ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("device wiring: {0}")]
    Bus(#[from] BusError),
    #[error(transparent)]
    Cpu(#[from] CpuError),
    #[error("{0}")]
    Config(String),
    #[error("BIOS image '{}': {problem}", path.display())]
    Bios { path: PathBuf, problem: String },
}

/// Reads a whole file the user named, with an error that names it.
pub fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, MachineError> {
    std::fs::read(path).map_err(|source| MachineError::Read { what, path: path.to_path_buf(), source })
}

/// Maps a file the user named read-only, with an error that names it. Kernels and
/// initrds are mapped rather than read: a read would first fault in and zero as much
/// fresh memory as the file is long (tens of MiB for an uncompressed kernel).
pub fn map_file(what: &'static str, path: &Path) -> Result<memmap2::Mmap, MachineError> {
    let err = |source| MachineError::Read { what, path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(err)?;
    // SAFETY: the mapping is private and read-only, and lives only while the file is
    // being loaded into guest memory (see `PcMachine::load`); a file truncated by
    // another process in that window would fault, as it would for any mapped reader.
    unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(err)
}

/// What to run first: a BIOS at the reset vector, or a kernel loaded directly (read
/// again from its files at every reset, as the files are not kept in memory).
enum Boot {
    Firmware,
    Kernel { path: PathBuf, initrd: Option<PathBuf>, cmdline: String },
}

/// The memory map, guest memory and BIOS image (if any) [`prepare_memory`] returns.
pub type PreparedMemory = (MemoryLayout, Arc<GuestMemory>, Option<Vec<u8>>);

/// Guest memory for `cfg`, sized before the accelerator exists (KVM maps it at
/// creation). Also reads and checks the BIOS image, which sets part of the map.
pub fn prepare_memory(cfg: &MachineConfig) -> Result<PreparedMemory, MachineError> {
    let bios = cfg.bios.as_deref().map(|p| read_file("BIOS image", p)).transpose()?;
    if let (Some(path), Some(image)) = (&cfg.bios, &bios) {
        check_bios(image).map_err(|problem| MachineError::Bios { path: path.clone(), problem })?;
    }
    let layout = MemoryLayout::new(cfg.ram_bytes, bios.as_ref().map_or(0, |b| b.len() as u64))?;
    let mem = Arc::new(layout.build_memory()?);
    Ok((layout, mem, bios))
}

/// Refuses firmware images that cannot run here, which would otherwise hang silently.
fn check_bios(image: &[u8]) -> Result<(), String> {
    let len = image.len() as u64;
    if len == 0 {
        return Err("the file is empty; give a firmware image (a multiple of 64 KiB, at most 16 MiB)".into());
    }
    if len > MAX_BIOS || !len.is_multiple_of(64 * KIB) {
        return Err(format!("the file is {len} bytes; a BIOS image must be a multiple of 64 KiB and at most 16 MiB"));
    }
    Ok(())
}

/// A PC ready to run.
pub struct PcMachine {
    pub(crate) mem: Arc<GuestMemory>,
    layout: MemoryLayout,
    pub(crate) chipset: Chipset,
    /// The machine as each vCPU sees it (its own local APIC), the vCPUs (0 is the
    /// bootstrap processor) and what wakes each.
    ops: Vec<Arc<VcpuOps>>,
    pub(crate) vcpus: Vec<Box<dyn Vcpu>>,
    wakers: Vec<Arc<CpuWaker>>,
    boot: Boot,
    bios: Option<Vec<u8>>,
    no_reboot: bool,
    no_shutdown: bool,
    cpus: u32,
    topology: quern_core::Topology,
    timers: Option<TimerThread>,
    pub(crate) rearm: Arc<TimerRearm>,
    /// The accelerator (its own interrupt controllers' state, for a save).
    pub(crate) accel: SharedAccelerator,
    /// Running or stopped, and the monitor's requests.
    pub(crate) run: Arc<RunControl>,
    /// A guest in a reset loop resets thousands of times a second: these say so once
    /// a second with a count (and the rest on drop).
    triple_faults: LogLimiter,
    resets: LogLimiter,
}

impl PcMachine {
    /// Builds the PC over memory from [`prepare_memory`] and an accelerator made over
    /// that same memory.
    pub fn new(
        mut cfg: MachineConfig,
        layout: MemoryLayout,
        mem: Arc<GuestMemory>,
        bios: Option<Vec<u8>>,
        accel: SharedAccelerator,
    ) -> Result<Self, MachineError> {
        let boot = match (&cfg.kernel, &bios) {
            (Some(path), None) => {
                Boot::Kernel { path: path.clone(), initrd: cfg.initrd.clone(), cmdline: cfg.append.clone() }
            }
            (None, Some(_)) => {
                if cfg.initrd.is_some() || !cfg.append.is_empty() {
                    return Err(MachineError::Config("-initrd and -append need -kernel".into()));
                }
                Boot::Firmware
            }
            (Some(_), Some(_)) => {
                return Err(MachineError::Config(
                    "-kernel together with -bios (a kernel started by the firmware through fw_cfg) is not \
                     supported yet; drop -bios to boot the kernel directly"
                        .into(),
                ))
            }
            (None, None) => {
                return Err(MachineError::Config(
                    "nothing to boot: give -kernel FILE (a bzImage, vmlinux or Multiboot kernel) or -bios FILE".into(),
                ))
            }
        };

        let wakers: Vec<Arc<CpuWaker>> = (0..cfg.cpus).map(|_| Arc::new(CpuWaker::default())).collect();
        // The 8259s' output and the timer thread wake the bootstrap processor; the
        // APIC bus wakes whichever vCPU a message is for.
        let waker = wakers[0].clone();
        let events = Arc::new(EventQueue::new(wakers.clone()));
        let clock = Arc::new(HostClock::new());
        // The APICs are ours when the PIC is: KVM's in-kernel irqchip brings its own.
        let apics = userspace_irqchip(&accel)
            .then(|| ApicBus::new(cfg.cpus, cfg.topology, clock.clone(), wakers.clone(), acpi::IOAPIC_ID));
        let mut chipset =
            Chipset::build(&mut cfg, &layout, &mem, &accel, clock, waker.clone(), events.clone(), apics.clone())?;
        if let (Boot::Firmware, Some(image)) = (&boot, &bios) {
            crate::firmware::install(&mut chipset, &cfg, &layout, &mem, &accel, image)?;
        }
        let run = RunControl::new(events.clone(), chipset.pm.clone(), cfg.start_paused, cfg.incoming);
        let pc = Arc::new(PcOps::new(&mut chipset, events));
        let rearm = Arc::new(TimerRearm::default());
        let ops: Vec<Arc<VcpuOps>> = (0..cfg.cpus as usize)
            .map(|i| Arc::new(VcpuOps::new(pc.clone(), apics.as_ref(), i, chipset.pic.clone(), rearm.clone())))
            .collect();
        let vcpus = (0..cfg.cpus).map(|i| accel.create_vcpu(i)).collect::<Result<Vec<_>, _>>()?;
        for (w, v) in wakers.iter().zip(&vcpus) {
            w.attach(v.kicker());
        }
        let timers = TimerThread::start(chipset.timers.clone(), chipset.clock.clone(), waker, rearm.clone())
            .map_err(|e| MachineError::Config(format!("cannot start the timer thread: {e}")))?;
        let timers = Some(timers);
        let triple_faults = LogLimiter::new(log::Level::Warn, module_path!());
        let resets = LogLimiter::new(log::Level::Info, module_path!());
        let mut machine = PcMachine {
            mem,
            layout,
            chipset,
            ops,
            vcpus,
            wakers,
            boot,
            bios,
            no_reboot: cfg.no_reboot,
            no_shutdown: cfg.no_shutdown,
            cpus: cfg.cpus,
            topology: cfg.topology,
            timers,
            rearm,
            accel,
            run,
            triple_faults,
            resets,
        };
        machine.load(false)?;
        Ok(machine)
    }

    /// Guest memory, for the monitor's `xp`.
    pub fn memory(&self) -> Arc<GuestMemory> {
        self.mem.clone()
    }

    /// The PCI bus, for the monitor's `info pci`.
    pub fn pci(&self) -> Arc<Mutex<quern_devices::pci::PciRoot>> {
        self.chipset.pci.clone()
    }

    /// The IDE controller, for the monitor's `eject` and `change`.
    pub fn ide(&self) -> Arc<Mutex<quern_devices::ide::PiixIde>> {
        self.chipset.ide.clone()
    }

    /// The keyboard controller, for the monitor's `sendkey`.
    pub fn i8042(&self) -> Arc<Mutex<quern_devices::i8042::I8042>> {
        self.chipset.i8042.clone()
    }

    /// The names of the devices with state, as a saved state's sections name them.
    pub fn device_names(&self) -> Vec<String> {
        self.chipset.stateful.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The translators' state, vCPU by vCPU (`info jit`).
    pub fn jit_text(&self) -> String {
        let per_cpu = self.vcpus.iter().enumerate().map(|(i, v)| match v.jit_stats() {
            Some(s) => format!("CPU #{i}:\n{s}"),
            None => format!("CPU #{i}: guest code runs natively (no translator)\n"),
        });
        per_cpu.collect()
    }

    /// vCPU `index`'s special registers (between runs: from a job).
    pub fn sregs(&self, index: usize) -> Option<quern_core::regs::SpecialRegs> {
        self.vcpus.get(index).and_then(|v| v.sregs().ok())
    }

    /// The network cards, for the monitor's `set_link`.
    pub fn nics(&self) -> Vec<crate::chipset::NicLink> {
        self.chipset.nics.clone()
    }

    /// The serial port, for the console's input thread.
    pub fn serial(&self) -> Arc<Mutex<quern_devices::uart::Serial>> {
        self.chipset.serial.clone()
    }

    /// A handle for asking the running machine to stop (console quit key, signals).
    pub fn control(&self) -> Arc<dyn quern_core::MachineControl> {
        self.events().clone()
    }

    fn events(&self) -> &Arc<EventQueue> {
        &self.ops[0].pc.events
    }

    /// Puts firmware or kernel in memory and the bootstrap processor at its entry
    /// point, the other vCPUs waiting for a start-up IPI (again, after a `reset`).
    fn load(&mut self, reset: bool) -> Result<(), MachineError> {
        for v in &mut self.vcpus {
            v.reset()?;
        }
        match &self.boot {
            Boot::Firmware => {
                let bios = self.bios.as_deref().unwrap_or_default();
                self.mem.write(FOUR_GIB - bios.len() as u64, bios)?;
            }
            Boot::Kernel { path, initrd, cmdline } => {
                let image = map_file("kernel", path)?;
                let initrd = initrd.as_deref().map(|p| map_file("initrd", p)).transpose()?;
                let rsdp = acpi::write_acpi_tables(
                    &self.mem,
                    &AcpiConfig {
                        cpus: self.cpus as u8,
                        topology: self.topology,
                        pm_base: ACPI_PM_BASE,
                        sci_irq: ACPI_SCI_IRQ,
                        pci_mmio_base: self.layout.below_4g,
                    },
                )?;
                let setup =
                    loader::load_kernel(&self.mem, &self.layout, &image, initrd.as_deref(), cmdline, Some(rsdp))
                        .map_err(|source| MachineError::Kernel { path: path.clone(), source })?;
                if !reset {
                    log::info!("loaded {:?} kernel from {}", setup.kind, path.display());
                }
                self.vcpus[0].set_sregs(&setup.sregs)?;
                self.vcpus[0].set_regs(&setup.regs)?;
            }
        }
        Ok(())
    }

    /// Runs the guest until it powers off, exits through isa-debug-exit, or resets
    /// with `-no-reboot`. Returns the emulator's exit status.
    pub fn run(mut self) -> Result<i32, MachineError> {
        let status = self.run_loop();
        self.run.drop_jobs();
        if let Some(t) = self.timers.take() {
            t.stop(&self.rearm);
        }
        self.triple_faults.flush();
        self.resets.flush();
        log_limit::flush_all();
        status
    }

    /// QEMU's -no-shutdown: the guest is over but the process stays, stopped, until the
    /// user quits (Ctrl-A x, or a signal). Returns the status to exit with.
    /// The run state, for a monitor.
    pub fn run_control(&self) -> Arc<RunControl> {
        self.run.clone()
    }

    fn run_loop(&mut self) -> Result<i32, MachineError> {
        if matches!(self.run.state(), RunState::Prelaunch | RunState::InMigrate) {
            if let Some(status) = self.stopped()? {
                return Ok(status);
            }
        }
        loop {
            let events = self.events().clone();
            let results: Vec<Result<(), CpuError>> = std::thread::scope(|s| {
                let threads: Vec<_> = self
                    .vcpus
                    .iter_mut()
                    .zip(&self.ops)
                    .zip(&self.wakers)
                    .enumerate()
                    .map(|(i, ((vcpu, ops), waker))| {
                        let events = events.clone();
                        let triple_faults = &self.triple_faults;
                        std::thread::Builder::new()
                            .name(format!("quern-vcpu{i}"))
                            .spawn_scoped(s, move || {
                                let r = run_vcpu(&mut **vcpu, ops, waker, triple_faults);
                                if r.is_err() {
                                    quern_core::MachineControl::request(&*events, MachineEvent::Exit(1));
                                }
                                r
                            })
                            .expect("spawning a vCPU thread")
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
            });
            if let Some(e) = results.into_iter().find_map(Result::err) {
                return Err(e.into());
            }
            let event = self.events().take();
            if let Some(status) = self.act(event)? {
                return Ok(status);
            }
        }
    }

    /// Acts on a machine event with every vCPU stopped; `Some(status)` ends the run.
    fn act(&mut self, event: Option<MachineEvent>) -> Result<Option<i32>, MachineError> {
        match event {
            Some(MachineEvent::Exit(status)) => {
                log::info!("exit requested with status {status}");
                self.quitting();
                return Ok(Some(status));
            }
            Some(MachineEvent::PowerOff) => {
                self.observe(|o| o.shutdown(true, "guest-shutdown"));
                if !self.no_shutdown {
                    log::info!("guest powered off");
                    return Ok(Some(0));
                }
                return self.shut_down("powered off");
            }
            Some(MachineEvent::Reset) => {
                let host = self.run.take_host_reset();
                if self.no_reboot && !host {
                    self.observe(|o| o.shutdown(true, "guest-reset"));
                    if !self.no_shutdown {
                        log::info!("guest reset with -no-reboot: exiting");
                        return Ok(Some(0));
                    }
                    return self.shut_down("reset with -no-reboot");
                }
                self.reset(host)?;
            }
            Some(MachineEvent::Pause) | None => {}
        }
        self.serve_requests();
        if let Some(state) = self.run.take_pause() {
            // The event first: `stop` answers once the state has changed, and QEMU's
            // STOP comes before that answer.
            self.observe(|o| o.stopped());
            self.run.set_state(state);
            return self.stopped();
        }
        Ok(None)
    }

    fn reset(&mut self, host: bool) -> Result<(), MachineError> {
        self.resets.log(format_args!("guest reset"));
        self.observe(|o| o.reset(!host));
        self.chipset.reset();
        self.load(true)
    }

    /// `-no-shutdown`: the guest is off but the machine stays, for a monitor's reset
    /// and `cont`, or Ctrl-A x.
    fn shut_down(&mut self, what: &str) -> Result<Option<i32>, MachineError> {
        log::warn!("guest {what}; -no-shutdown keeps the machine stopped: Ctrl-A x quits");
        self.run.set_state(RunState::Shutdown);
        self.observe(|o| o.stopped());
        self.stopped()
    }

    /// Stays stopped until `cont` (`None`: run on) or an exit (`Some(status)`); a
    /// reset meanwhile is done at once and the machine stays stopped.
    fn stopped(&mut self) -> Result<Option<i32>, MachineError> {
        loop {
            if self.run.wait_while_stopped() {
                self.observe(|o| o.resumed());
                self.run.set_state(RunState::Running);
                return Ok(None);
            }
            self.serve_requests();
            match self.events().take() {
                Some(MachineEvent::Exit(status)) => {
                    self.quitting();
                    return Ok(Some(status));
                }
                Some(MachineEvent::Reset) => {
                    let host = self.run.take_host_reset();
                    self.reset(host)?;
                }
                _ => {}
            }
        }
    }

    /// What the monitor asked to read while the vCPUs stand still.
    fn serve_requests(&mut self) {
        while let Some(job) = self.run.take_job() {
            job(self);
        }
    }

    /// Every vCPU's registers, as `info registers` shows them.
    pub fn registers_text(&self) -> String {
        self.vcpus.iter().enumerate().map(|(i, v)| registers_text(i, &**v)).collect()
    }

    /// The monitor's `quit` ends the run: its SHUTDOWN event.
    fn quitting(&self) {
        if self.run.take_quit() {
            self.observe(|o| o.shutdown(false, "host-qmp-quit"));
        }
    }

    fn observe(&self, f: impl FnOnce(&dyn RunObserver)) {
        if let Some(o) = self.run.observer() {
            f(&**o);
        }
    }
}

/// One vCPU's registers, laid out as QEMU's `info registers` lays them out.
fn registers_text(index: usize, vcpu: &dyn Vcpu) -> String {
    use std::fmt::Write;
    let (r, s) = match (vcpu.regs(), vcpu.sregs()) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => return format!("CPU#{index}: cannot read the registers: {e}\n"),
    };
    let mut t = format!("CPU#{index}\n");
    let _ = writeln!(t, "RAX={:016x} RBX={:016x} RCX={:016x} RDX={:016x}", r.rax, r.rbx, r.rcx, r.rdx);
    let _ = writeln!(t, "RSI={:016x} RDI={:016x} RBP={:016x} RSP={:016x}", r.rsi, r.rdi, r.rbp, r.rsp);
    let _ = writeln!(t, "R8 ={:016x} R9 ={:016x} R10={:016x} R11={:016x}", r.r8, r.r9, r.r10, r.r11);
    let _ = writeln!(t, "R12={:016x} R13={:016x} R14={:016x} R15={:016x}", r.r12, r.r13, r.r14, r.r15);
    let _ = writeln!(t, "RIP={:016x} RFL={:08x} CPL={}", r.rip, r.rflags, s.cs.dpl);
    for (name, g) in [
        ("ES", &s.es),
        ("CS", &s.cs),
        ("SS", &s.ss),
        ("DS", &s.ds),
        ("FS", &s.fs),
        ("GS", &s.gs),
        ("LDT", &s.ldt),
        ("TR", &s.tr),
    ] {
        let _ = writeln!(t, "{name:<3}={:04x} {:016x} {:08x}", g.selector, g.base, g.limit);
    }
    let _ = writeln!(t, "GDT=     {:016x} {:08x}", s.gdt.base, s.gdt.limit);
    let _ = writeln!(t, "IDT=     {:016x} {:08x}", s.idt.base, s.idt.limit);
    let _ = writeln!(t, "CR0={:08x} CR2={:016x} CR3={:016x} CR4={:08x}", s.cr0, s.cr2, s.cr3, s.cr4);
    let _ = writeln!(t, "EFER={:016x}", s.efer);
    t
}

fn run_vcpu(
    vcpu: &mut dyn Vcpu,
    ops: &Arc<VcpuOps>,
    waker: &CpuWaker,
    triple_faults: &LogLimiter,
) -> Result<(), CpuError> {
    let events = &ops.pc.events;
    while !events.is_pending() {
        match vcpu.run(&**ops)? {
            VcpuExit::Halted => {
                if !events.is_pending() && !quern_core::VmOps::interrupt_pending(&**ops) {
                    waker.wait(Duration::from_millis(50));
                }
            }
            VcpuExit::Shutdown => {
                // A triple fault stays at warn level, unlike QEMU, which resets silently
                // (its `-d cpu_reset` shows it): a reset loop is almost always a guest
                // that cannot start (a bad entry point, a corrupt kernel), and a silent
                // hang hides that. Limited to a line a second, it cannot flood stderr.
                triple_faults.log(format_args!("guest triple-faulted: resetting"));
                ops.pc.request(MachineEvent::Reset);
            }
            VcpuExit::Debug => quern_core::log_limited!(log::Level::Debug, "debug exit with no debugger attached"),
            VcpuExit::Kicked => {}
        }
    }
    Ok(())
}

/// Whether interrupt lines go to our models or the accelerator's.
pub(crate) fn userspace_irqchip(accel: &SharedAccelerator) -> bool {
    accel.irqchip_mode() == IrqChipMode::Userspace
}

/// Registers each `(device, base, len)` on `bus`.
pub(crate) fn insert_all(bus: &mut Bus, devs: Vec<(quern_core::bus::SharedDevice, u64, u64)>) -> Result<(), BusError> {
    devs.into_iter().try_for_each(|(d, base, len)| bus.insert(d, base, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_bios_images_are_refused_with_the_reason() {
        assert!(check_bios(&[]).unwrap_err().contains("empty"));
        assert!(check_bios(&[0xf4; 1000]).unwrap_err().contains("multiple of 64 KiB"));
        assert!(check_bios(&vec![0xf4; 32 << 20]).unwrap_err().contains("at most 16 MiB"));
        let mut sea = vec![0xf4u8; 128 << 10];
        sea[0x1234..0x1234 + 19].copy_from_slice(b"SeaBIOS (version 1)");
        assert_eq!(check_bios(&sea), Ok(()), "SeaBIOS runs on fw_cfg");
        assert_eq!(check_bios(&[0xf4; 64 << 10]), Ok(()));
    }
}
