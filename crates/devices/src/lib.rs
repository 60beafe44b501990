//! Device models of the PC: each a register state machine that raises interrupt lines.
//!
//! Every model is addressed by offset (see [`quern_core::BusDevice`]), owns no
//! threads and no globals, reads time only through a [`quern_core::Clock`], and asks
//! the machine for resets and exits through a [`quern_core::MachineControl`].
//!
//! | module | device | ports | IRQ |
//! | --- | --- | --- | --- |
//! | [`uart`] | 16550A UART (COM1) | 0x3f8-0x3ff | 4 |
//! | [`pic`] | i8259A master/slave pair, ELCR | 0x20-0x21, 0xa0-0xa1, 0x4d0-0x4d1 | drives INTR |
//! | [`ioapic`] | 82093AA I/O APIC, 24 pins | MMIO 0xfec00000 (0x1000) | sends APIC messages |
//! | [`pit`] | i8254 PIT, port B (speaker, gate 2) | 0x40-0x43, 0x61 | 0 |
//! | [`rtc`] | MC146818 RTC and CMOS | 0x70-0x71 | 8 |
//! | [`i8042`] | PS/2 controller and keyboard | 0x60, 0x64 | 1 (keyboard), 12 (aux) |
//! | [`port80`] | POST code port | 0x80 | - |
//! | [`debug_exit`] | isa-debug-exit | machine's choice (0x501) | - |
//! | [`debugcon`] | isa-debugcon | 0xe9 | - |
//! | [`fw_cfg`] | QEMU's firmware configuration device (with DMA) | 0x510-0x51b | - |
//! | [`pci`] | PCI host bridge, config mechanism #1; i440FX, PIIX3 | 0xcf8, 0xcfc-0xcff | - |
//! | [`reset_control`] | PIIX3 reset control register | 0xcf9 | - |
//! | [`acpi_pm`] | ACPI PM1a event/control blocks and PM timer | machine's choice (0x600-0x60b) | SCI (9) |
//! | [`ide`] | PIIX3 IDE (PCI 00:01.1): ATA disks, ATAPI CD-ROMs, bus-master DMA | 0x1f0-0x1f7, 0x3f6, 0x170-0x177, 0x376; BAR4 | 14, 15 |
//! | [`e1000`] | Intel 82540EM gigabit Ethernet (PCI 8086:100e): registers, EEPROM, PHY, DMA rings, checksum offload, TSO | BAR0 (MMIO 128 KiB), BAR1 (I/O 64), expansion ROM | INTA |
//! | [`lapic`] | local APIC, one per vCPU (xAPIC page, x2APIC MSRs, timer) | MMIO at IA32_APIC_BASE (0xfee00000), MSRs 0x1b, 0x6e0, 0x800-0x8ff | LINT0/LINT1 in, [`apic_bus`] messages out |
//!
//! Devices that answer at several port ranges (PIC, PIT, i8042, PCI) sit behind one
//! mutex and are put on the bus once per range through [`port::PortWindow`].
//!
//! Every model with state implements [`quern_core::snapshot::Snapshot`] (the shared
//! e1000 through [`e1000::E1000::state`]): registers, FIFOs and transfers in progress,
//! not wiring, backends or what is fixed at construction. A restore re-drives the
//! device's interrupt lines at their restored levels, which the interrupt controllers
//! (restored too, in either order) take without a new edge.

pub mod acpi_pm;
pub mod apic_bus;
pub mod debug_exit;
pub mod debugcon;
pub mod e1000;
pub mod fw_cfg;
pub mod i8042;
pub mod ide;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod port;
pub mod port80;
pub mod reset_control;
pub mod rtc;
mod snapshot;
pub mod uart;

pub use acpi_pm::AcpiPm;
pub use debug_exit::DebugExit;
pub use debugcon::Debugcon;
pub use fw_cfg::FwCfg;
pub use i8042::{i8042_bus_devices, I8042};
pub use ioapic::{IoApic, IoApicMmio, IoApicPin, IrqFanOut};
pub use pci::{pci_bus_devices, BarKind, ConfigSpace, PciBus, PciDevice, PciRoot, SharedPciDevice};
pub use pic::{pic_bus_devices, PicIrqLine, PicPair};
pub use pit::{pit_bus_devices, Pit};
pub use port::{PortGroup, PortWindow};
pub use port80::Port80;
pub use reset_control::ResetControl;
pub use rtc::Rtc;
pub use uart::Serial;

#[cfg(test)]
mod robustness;
#[cfg(test)]
mod testutil;
