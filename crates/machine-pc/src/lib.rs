//! The PC machine: memory map, buses, devices, firmware and kernel loading, ACPI.
//! It drives vCPUs through quern-core's CPU trait alone and never names an accelerator.

pub mod acpi;
pub mod layout;
pub mod loader;
