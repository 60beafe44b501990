//! The CPU seam: one trait for a virtual CPU, implemented by every accelerator.
//!
//! The machine creates vCPUs through an [`Accelerator`] and then drives each one through
//! [`Vcpu`] alone. A vCPU runs guest code until something only the machine can decide:
//! a halt with no interrupt to take, a shutdown (triple fault), a debug event, or a
//! kick from another thread. Port I/O, MMIO and interrupt acknowledgement do *not*
//! return from [`Vcpu::run`]: the accelerator calls back into the machine through
//! [`VmOps`] and carries on, so a device model is exercised identically by KVM's exits
//! and by the JIT's soft-MMU slow path.
//!
//! ```text
//! machine loop ──run(ops)──► accelerator ──pio/mmio──► VmOps ──► Bus ──► device
//!      ▲                          │ INTR? ◄── VmOps::interrupt_pending ◄── PIC
//!      └───── VcpuExit ◄──────────┘ (halt, shutdown, debug, kicked)
//! ```

use std::sync::Arc;

use thiserror::Error;

use crate::regs::{DebugRegs, FpuState, MsrEntry, Regs, SpecialRegs};

/// The machine, as a vCPU sees it.
pub trait VmOps: Send + Sync {
    /// An IN instruction: fill `data` from `port`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// An OUT instruction.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// A load from guest-physical `addr` that is not RAM or ROM.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// A store to guest-physical `addr` that is not RAM (stores to ROM come here too).
    fn mmio_write(&self, addr: u64, data: &[u8]);
    /// Whether the interrupt controller asserts the CPU's INTR pin.
    fn interrupt_pending(&self) -> bool;
    /// The INTA cycle: the vector to deliver, or `None` if the request went away.
    fn acknowledge_interrupt(&self) -> Option<u8>;
    /// An event for this vCPU outside the maskable-interrupt path (NMI, INIT, SIPI,
    /// SMI), consumed by the call. Machines without local APICs have none.
    fn take_event(&self) -> Option<CpuEvent> {
        None
    }
    /// A platform MSR (the local APIC's: IA32_APIC_BASE, x2APIC, TSC deadline): `None`
    /// if `index` is not one, so the CPU handles it; `Some(Err(Gp))` raises #GP.
    fn msr_read(&self, _index: u32) -> Option<Result<u64, Gp>> {
        None
    }
    /// Whether the local APIC says this CPU is the bootstrap processor
    /// (IA32_APIC_BASE.BSP): INIT restarts it at the reset vector, the others wait for a
    /// start-up IPI. `None` without a local APIC.
    fn is_bsp(&self) -> Option<bool> {
        const APIC_BASE_BSP: u64 = 1 << 8;
        let base = self.msr_read(crate::regs::msr::IA32_APIC_BASE)?.ok()?;
        Some(base & APIC_BASE_BSP != 0)
    }
    /// Writes a platform MSR; `None` if `index` is not one.
    fn msr_write(&self, _index: u32, _value: u64) -> Option<Result<(), Gp>> {
        None
    }
    /// CR8 reads the local APIC's task priority (TPR[7:4]); `None` without an APIC.
    fn cr8(&self) -> Option<u64> {
        None
    }
    /// A MOV to CR8 sets the task priority; ignored without an APIC.
    fn set_cr8(&self, _value: u64) {}
    /// The platform's time-stamp count (before the CPU's own TSC offset), so that the
    /// CPU's RDTSC and the local APIC's TSC-deadline timer count the same time; `None`
    /// leaves the CPU to its own clock.
    fn tsc(&self) -> Option<u64> {
        None
    }
    /// Whether the machine wants the vCPU back (reset, power-off, exit requested by a
    /// device during the access just made). Checked after every I/O callback.
    fn stop_requested(&self) -> bool;
}

/// Events that reach a CPU outside the maskable-interrupt path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuEvent {
    Nmi,
    /// INIT: the CPU resets (keeping its APIC) and waits for a start-up IPI.
    Init,
    /// A start-up IPI: the CPU, waiting after INIT, starts in real mode at
    /// `vector << 12`.
    StartUp(u8),
    Smi,
}

/// A general-protection fault the machine asks the CPU to raise (a bad MSR access).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp;

/// Why [`Vcpu::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuExit {
    /// HLT executed and no interrupt could be taken: wait for one, then run again.
    Halted,
    /// The CPU shut down (triple fault): a PC resets.
    Shutdown,
    /// A debug exception or breakpoint for the debugger.
    Debug,
    /// Another thread kicked the vCPU, or a device asked to stop during I/O.
    Kicked,
}

#[derive(Debug, Error)]
pub enum CpuError {
    #[error("{accel}: {op} failed: {source}")]
    Host { accel: &'static str, op: &'static str, source: std::io::Error },
    #[error("{accel}: guest could not continue: {reason}")]
    Guest { accel: &'static str, reason: String },
    #[error("{accel}: {what} is not supported")]
    Unsupported { accel: &'static str, what: String },
    /// The `-cpu` model asks for what this accelerator cannot give (worded for the user).
    #[error("{0}")]
    CpuModel(String),
}

/// Makes a running vCPU return from [`Vcpu::run`] soon, from any thread.
pub trait VcpuKicker: Send + Sync {
    fn kick(&self);
}

/// One virtual x86 CPU.
///
/// A vCPU belongs to the thread that runs it; getters and setters are meant for use
/// between runs (loaders, reset, debugger, tests).
pub trait Vcpu: Send {
    fn regs(&self) -> Result<Regs, CpuError>;
    fn set_regs(&mut self, regs: &Regs) -> Result<(), CpuError>;
    fn sregs(&self) -> Result<SpecialRegs, CpuError>;
    fn set_sregs(&mut self, sregs: &SpecialRegs) -> Result<(), CpuError>;
    fn fpu(&self) -> Result<FpuState, CpuError>;
    fn set_fpu(&mut self, fpu: &FpuState) -> Result<(), CpuError>;
    fn debug_regs(&self) -> Result<DebugRegs, CpuError>;
    fn set_debug_regs(&mut self, dregs: &DebugRegs) -> Result<(), CpuError>;
    /// Reads the MSRs named by `entries[i].index` into `entries[i].data`.
    fn msrs(&self, entries: &mut [MsrEntry]) -> Result<(), CpuError>;
    fn set_msrs(&mut self, entries: &[MsrEntry]) -> Result<(), CpuError>;

    /// Runs guest code until an exit only the machine can handle.
    fn run(&mut self, ops: &dyn VmOps) -> Result<VcpuExit, CpuError>;

    /// A handle that interrupts [`Vcpu::run`] from another thread.
    fn kicker(&self) -> Arc<dyn VcpuKicker>;

    /// Puts the vCPU in its power-on state (what INIT/RESET do): real mode at
    /// F000:FFF0.
    fn reset(&mut self) -> Result<(), CpuError>;

    /// The vCPU's local APIC inside the accelerator (KVM's in-kernel one), for a save;
    /// `None` when the machine models it. Opaque, as [`Accelerator::irqchip_state`].
    fn lapic_state(&self) -> Result<Option<crate::snapshot::State>, CpuError> {
        Ok(None)
    }
    /// Puts back what [`Vcpu::lapic_state`] returned.
    fn set_lapic_state(&mut self, state: &crate::snapshot::State) -> Result<(), CpuError> {
        let _ = state;
        Err(CpuError::Unsupported { accel: "this accelerator", what: "an in-accelerator local APIC".into() })
    }

    /// A translator's state in a line or two (the monitor's `info jit`); `None` where
    /// guest code runs natively.
    fn jit_stats(&self) -> Option<String> {
        None
    }

    /// Whether this application processor still waits for its start-up IPI (part of
    /// a saved vCPU's state, beside its registers).
    fn waits_for_start_up(&self) -> bool;
    fn set_waits_for_start_up(&mut self, wait: bool);
}

/// How an accelerator wires interrupt lines: to the machine's own controller models,
/// or to controllers inside the accelerator (KVM's in-kernel irqchip).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqChipMode {
    /// The machine's userspace PIC (and later IOAPIC/LAPIC) models.
    Userspace,
    /// The accelerator's own controllers; the machine forwards line changes.
    InAccelerator,
}

/// An accelerator: the thing that makes vCPUs run guest code.
pub trait Accelerator: Send + Sync {
    /// A short name for logs and errors ("kvm", "tcg").
    fn name(&self) -> &'static str;
    /// Creates vCPU number `id` over the guest memory the accelerator was built with.
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, CpuError>;
    /// Where interrupt controllers live.
    fn irqchip_mode(&self) -> IrqChipMode {
        IrqChipMode::Userspace
    }
    /// Drives interrupt line `gsi` of the accelerator's own controllers. Only called in
    /// [`IrqChipMode::InAccelerator`].
    fn set_irq_line(&self, gsi: u32, high: bool) -> Result<(), CpuError> {
        let _ = (gsi, high);
        Err(CpuError::Unsupported { accel: self.name(), what: "an in-accelerator irqchip".into() })
    }
    /// Called after guest memory switched views ([`crate::GuestMemory::select_view`]),
    /// from the thread of the vCPU whose access caused it: an accelerator that maps
    /// memory itself (KVM's slots) updates those mappings before the guest goes on.
    /// One that looks regions up as it goes (the JIT) needs nothing here.
    fn sync_memory(&self) -> Result<(), CpuError> {
        Ok(())
    }
    /// The state of the accelerator's own interrupt controllers and clock (KVM's
    /// in-kernel PIC, IOAPIC, PIT and kvmclock), for a save; `None` when the machine's
    /// models are the controllers. Opaque: it loads only into the same accelerator.
    fn irqchip_state(&self) -> Result<Option<crate::snapshot::State>, CpuError> {
        Ok(None)
    }
    /// Puts back what [`Accelerator::irqchip_state`] returned.
    fn set_irqchip_state(&self, state: &crate::snapshot::State) -> Result<(), CpuError> {
        let _ = state;
        Err(CpuError::Unsupported { accel: self.name(), what: "an in-accelerator irqchip".into() })
    }
}

/// Handy for the many places that hold a shared accelerator.
pub type SharedAccelerator = Arc<dyn Accelerator>;
