//! The PC machine: memory map, buses, devices, firmware and kernel loading, ACPI.
//! It drives vCPUs through quern-core's CPU trait alone and never names an accelerator.
//!
//! - [`layout`]: the physical memory map and e820.
//! - [`chipset`]: the i440fx/PIIX3 devices on their buses, and [`chipset::PcOps`], the
//!   buses the vCPUs share.
//! - [`pci_irq`]: PCI INTx pins through PIIX3's PIRQ routes to ISA IRQs.
//! - [`apic_bus`]: the local APICs, the IOAPIC and the router between them.
//! - [`vcpu_ops`]: the machine as one vCPU sees it (its local APIC, the PIC behind
//!   LINT0).
//! - [`firmware`]: booting through SeaBIOS: PAM shadowing, fw_cfg contents.
//! - [`loader`]: `-kernel` (bzImage, PVH vmlinux, ELF64, Multiboot).
//! - [`acpi`]: the ACPI tables a directly booted kernel finds (and firmware installs).
//! - [`smbios`]: the SMBIOS tables firmware installs.
//! - [`timers`]: the thread that runs timer devices' deadlines.
//! - [`control`]: requests from devices and wake-ups of the vCPU.
//! - [`machine`]: the machine loop.
//! - [`runstate`]: running, paused, shut down, as a monitor sees and changes it.

pub mod acpi;
pub mod apic_bus;
pub mod chipset;
pub mod config;
pub mod control;
pub mod firmware;
pub mod layout;
pub mod loader;
pub mod machine;
pub mod pagewalk;
pub mod pci_irq;
pub mod runstate;
pub mod smbios;
pub mod snapshot;
pub mod timers;
pub mod vcpu_ops;

pub use quern_devices::uart::Serial;
