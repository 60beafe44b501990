//! The KVM accelerator: quern's CPU trait on Linux KVM.
//!
//! - [`accel`]: [`KvmAccelerator`], the VM: capability checks, one memory slot per guest
//!   region, optional in-kernel irqchip and PIT.
//! - [`vcpu`]: [`KvmVcpu`], register access and the run loop (for the userspace
//!   irqchip: interrupt and NMI injection, CR8 and IA32_APIC_BASE carried between KVM
//!   and the machine's local APIC; exits to [`quern_core::VmOps`]).
//! - `irq_routing`: the in-kernel irqchip's GSI routing, as on QEMU's `pc` machine.
//! - [`exit`]: [`handle_exit`], the mapping from one KVM exit to device calls and
//!   [`quern_core::VcpuExit`]s, as a free function testable without /dev/kvm.
//! - [`convert`]: `From` conversions between quern's register types and KVM's.
//! - [`cpuid`]: the CPUID a vCPU shows and [`CpuidMask`], the features to hide.
//! - [`kick`]: how another thread makes a vCPU leave KVM_RUN (signal + immediate_exit).
//!
//! KVM runs guests of the host's own architecture: the crate is empty on hosts other
//! than x86-64 (`-accel kvm` is refused there by the command line, with a pointer to
//! `-accel tcg`).
#![cfg(target_arch = "x86_64")]

pub mod accel;
pub mod convert;
pub mod cpuid;
mod error;
pub mod exit;
mod irq_routing;
pub mod kick;
mod run_page;
mod saved_state;
pub mod vcpu;

pub use accel::{KvmAccelerator, KvmConfig};
pub use convert::KvmRepr;
pub use cpuid::CpuidMask;
pub use error::KvmError;
pub use exit::{handle_exit, ExitAction, RunState};
pub use quern_core::cpu::IrqChipMode;
pub use vcpu::KvmVcpu;

pub(crate) const ACCEL_NAME: &str = "kvm";

/// Whether the host's KVM is kvm_pvm (pagetable-based, no hardware virtualization), whose
/// instruction emulator cannot run everything a guest kernel may use.
pub fn is_pvm_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}
