//! quern's core: the seams that the machine, the devices and both accelerators share.
//!
//! Nothing here knows about a particular device or accelerator. The pieces:
//! - [`memory`]: guest RAM and ROM, host mappings made with memmap2, bounds-checked
//!   access, and the raw mapping that KVM and the soft-MMU use directly.
//! - [`bus`]: port-I/O and MMIO buses; devices registered by address range and
//!   addressed by offset.
//! - [`irq`]: interrupt lines from devices to interrupt controllers, and the CPU's
//!   INTR pin as seen by an accelerator.
//! - [`clock`]: the time source that timer devices read, so tests can fake it.
//! - [`events`]: reset, power-off and exit requests from devices to the machine.
//! - [`log_limit`]: logging for guest errors that repeat: a count, not a line each.
//! - [`regs`]: neutral x86 register types, converted per backend.
//! - [`cpu_model`]: CPU models for `-cpu` (vendor, family, CPUID features), shared by
//!   both accelerators.
//! - [`topology`]: the CPU topology of `-smp`, and the APIC IDs and CPUID fields it
//!   gives.
//! - [`snapshot`]: the versioned state stream of save/restore and migration, and
//!   [`snapshot::Snapshot`], what a device implements to be in it.
//! - [`cpu`]: the vCPU and accelerator traits, and [`cpu::VmOps`], the one callback
//!   interface through which either accelerator reaches the machine.

pub mod bus;
pub mod clock;
pub mod cpu;
pub mod cpu_model;
pub mod events;
pub mod irq;
pub mod log_limit;
pub mod memory;
pub mod regs;
pub mod snapshot;
pub mod topology;

pub use bus::{Bus, BusDevice, BusError};
pub use clock::{Clock, HostClock, TimerDevice};
pub use cpu::{Accelerator, CpuError, Vcpu, VcpuExit, VcpuKicker, VmOps};
pub use cpu_model::CpuModel;
pub use events::{MachineControl, MachineEvent, RunState};
pub use irq::{IrqLine, NullIrq, TestIrq};
pub use memory::{GuestMemory, MemoryError, RegionKind};
pub use topology::Topology;
