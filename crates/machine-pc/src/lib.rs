//! The PC machine: memory map, buses, devices, firmware and kernel loading, ACPI.
//! It drives vCPUs through quern-core's CPU trait alone and never names an accelerator.
//!
//! - [`layout`]: the physical memory map and e820.
//! - [`chipset`]: the i440fx/PIIX3 devices on their buses, and [`chipset::PcOps`], the
//!   machine as a vCPU sees it.
//! - [`loader`]: `-kernel` (bzImage, PVH vmlinux, ELF64, Multiboot).
//! - [`acpi`]: the ACPI tables a directly booted kernel finds.
//! - [`timers`]: the thread that runs timer devices' deadlines.
//! - [`control`]: requests from devices and wake-ups of the vCPU.
//! - [`machine`]: the machine loop.

pub mod acpi;
pub mod chipset;
pub mod config;
pub mod control;
pub mod layout;
pub mod loader;
pub mod machine;
pub mod timers;

pub use quern_devices::uart::Serial;
