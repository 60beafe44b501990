//! The i440fx/PIIX3 chipset's devices, placed on the buses at their ISA addresses, and
//! [`PcOps`], the buses every vCPU shares.
//!
//! Port map: 0x20/0xa0 PIC, 0x40/0x61 PIT, 0x60/0x64 i8042, 0x70 RTC, 0x80 POST,
//! 0x3f8 COM1 (IRQ4), 0x4d0 ELCR, 0x600 ACPI PM (SCI IRQ9), 0xcf8/0xcfc PCI,
//! 0xcf9 reset control, 0xe9 debugcon, isa-debug-exit where configured.
//! MMIO: the IOAPIC at 0xfec00000 (the local APICs are per vCPU: `vcpu_ops`).
//!
//! Each ISA interrupt line goes to the 8259 pair and to the IOAPIC pin of the same
//! number (IRQ0 to pin 2), as on a PC with APICs.

use std::sync::{Arc, Mutex};

use quern_core::bus::{lock, SharedDevice};
use quern_core::clock::{Clock, TimerDevice};
use quern_core::cpu::SharedAccelerator;
use quern_core::{Bus, IrqLine, MachineControl, MachineEvent};
use quern_devices::acpi_pm::{AcpiPm, PM_IO_LEN};
use quern_devices::debug_exit::DebugExit;
use quern_devices::debugcon::Debugcon;
use quern_devices::i8042::{i8042_bus_devices, I8042};
use quern_devices::ioapic::{isa_irq_to_gsi, IoApicMmio, IoApicPin, IrqFanOut, IOAPIC_BASE, IOAPIC_MMIO_LEN};
use quern_devices::pci::{pci_bus_devices, PciRoot};
use quern_devices::pic::{pic_bus_devices, PicIrqLine, PicPair};
use quern_devices::pit::{pit_bus_devices, Pit};
use quern_devices::port80::Port80;
use quern_devices::reset_control::ResetControl;
use quern_devices::rtc::Rtc;
use quern_devices::uart::Serial;

use crate::apic_bus::ApicBus;
use crate::config::MachineConfig;
use crate::control::{CpuWaker, EventQueue};
use crate::layout::MemoryLayout;
use crate::machine::{MachineError, ACPI_PM_BASE, ACPI_SCI_IRQ};

/// An interrupt line into the accelerator's own interrupt controllers (KVM's
/// in-kernel irqchip).
struct AccelIrqLine {
    accel: SharedAccelerator,
    gsi: u32,
}

impl IrqLine for AccelIrqLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.accel.set_irq_line(self.gsi, high) {
            quern_core::log_limited!(log::Level::Warn, "irq {}: {e}", self.gsi);
        }
    }
}

/// The chipset: buses, the devices the machine talks to directly, and time.
pub struct Chipset {
    pub pio: Bus,
    pub mmio: Bus,
    /// The userspace PIC pair; `None` when the accelerator has its own.
    pub pic: Option<Arc<Mutex<PicPair>>>,
    /// The local APICs and the IOAPIC, when the PIC is ours too.
    pub apics: Option<Arc<ApicBus>>,
    pub(crate) pci: Arc<Mutex<PciRoot>>,
    pub serial: Arc<Mutex<Serial>>,
    pub timers: Vec<Arc<Mutex<dyn TimerDevice>>>,
    pub clock: Arc<dyn Clock>,
    pub waker: Arc<CpuWaker>,
}

fn shared<T: quern_core::BusDevice + 'static>(dev: T) -> SharedDevice {
    Arc::new(Mutex::new(dev))
}

impl Chipset {
    pub fn build(
        cfg: &mut MachineConfig,
        layout: &MemoryLayout,
        accel: &SharedAccelerator,
        clock: Arc<dyn Clock>,
        waker: Arc<CpuWaker>,
        events: Arc<EventQueue>,
        apics: Option<Arc<ApicBus>>,
    ) -> Result<Self, MachineError> {
        let mut pio = Bus::new("pio");
        let control: Arc<dyn MachineControl> = events;

        // Interrupt lines: to our PIC models, or into the accelerator.
        let pic = crate::machine::userspace_irqchip(accel).then(|| Arc::new(Mutex::new(PicPair::new())));
        let irq = |n: u8| -> Arc<dyn IrqLine> {
            match (&pic, &apics) {
                (Some(pic), apics) => {
                    let w = waker.clone();
                    let to_pic: Arc<dyn IrqLine> =
                        Arc::new(PicIrqLine::new(pic.clone(), n, Arc::new(move || w.wake())));
                    match apics {
                        Some(a) => {
                            let to_ioapic = Arc::new(IoApicPin::new(a.ioapic.clone(), isa_irq_to_gsi(n), a.sink()));
                            Arc::new(IrqFanOut(vec![to_pic, to_ioapic]))
                        }
                        None => to_pic,
                    }
                }
                (None, _) => Arc::new(AccelIrqLine { accel: accel.clone(), gsi: u32::from(n) }),
            }
        };
        let mut timers: Vec<Arc<Mutex<dyn TimerDevice>>> = Vec::new();
        if let Some(pic) = &pic {
            crate::machine::insert_all(&mut pio, pic_bus_devices(pic))?;
            // With an in-accelerator irqchip the accelerator's PIT drives IRQ0 too.
            let pit = Arc::new(Mutex::new(Pit::new(clock.clone(), irq(0))));
            crate::machine::insert_all(&mut pio, pit_bus_devices(&pit))?;
            timers.push(pit);
        }

        let out = cfg.serial.take().unwrap_or_else(|| Box::new(std::io::sink()));
        let serial = Arc::new(Mutex::new(Serial::new(irq(4), out)));
        pio.insert(serial.clone(), 0x3f8, 8)?;

        let rtc = Arc::new(Mutex::new(Rtc::new(clock.clone(), irq(8), std::time::SystemTime::now())));
        {
            let mut r = lock(&rtc);
            r.set_memory_size(layout.below_4g, layout.above_4g);
            r.set_cpu_count(cfg.cpus);
            let (order, order2) = crate::firmware::boot_order_cmos(cfg.boot_order.as_deref());
            r.set_cmos(0x3d, order);
            r.set_cmos(0x38, order2);
        }
        pio.insert(rtc.clone(), 0x70, 2)?;
        timers.push(rtc);

        let i8042 = Arc::new(Mutex::new(I8042::new(control.clone(), irq(1), irq(12))));
        crate::machine::insert_all(&mut pio, i8042_bus_devices(&i8042))?;
        pio.insert(shared(Port80::new()), 0x80, 1)?;

        let pci = Arc::new(Mutex::new(PciRoot::new()));
        crate::machine::insert_all(&mut pio, pci_bus_devices(&pci))?;
        pio.insert(shared(ResetControl::new(control.clone())), 0xcf9, 1)?;

        let pm = Arc::new(Mutex::new(AcpiPm::new(clock.clone(), control.clone(), irq(ACPI_SCI_IRQ))));
        pio.insert(pm.clone(), u64::from(ACPI_PM_BASE), PM_IO_LEN)?;
        timers.push(pm);

        if let Some(out) = cfg.debugcon.take() {
            pio.insert(shared(Debugcon::new(out)), 0xe9, 1)?;
        }
        if let Some(d) = cfg.debug_exit {
            pio.insert(shared(DebugExit::new(control.clone())), u64::from(d.iobase), u64::from(d.iosize.max(1)))?;
        }

        let mut mmio = Bus::new("mmio");
        if let Some(a) = &apics {
            mmio.insert(shared(IoApicMmio::new(a.ioapic.clone(), a.sink())), IOAPIC_BASE, IOAPIC_MMIO_LEN)?;
            timers.extend(a.timers());
        }

        Ok(Chipset { pio, mmio, pic, apics, pci, serial, timers, clock, waker })
    }

    /// What a system reset does to the chipset: the interrupt controller forgets its
    /// programming (firmware or kernel sets it up again).
    pub fn reset(&mut self) {
        if let Some(pic) = &self.pic {
            *lock(pic) = PicPair::new();
        }
        if let Some(a) = &self.apics {
            a.reset(crate::acpi::IOAPIC_ID);
        }
        lock(&self.pci).reset();
    }
}

/// The buses every vCPU reaches devices through, and the machine's event queue.
pub struct PcOps {
    pio: Bus,
    mmio: Bus,
    pub events: Arc<EventQueue>,
}

impl PcOps {
    /// Takes the buses out of the chipset: from here on, only vCPUs reach devices
    /// through them.
    pub fn new(chipset: &mut Chipset, events: Arc<EventQueue>) -> Self {
        PcOps {
            pio: std::mem::replace(&mut chipset.pio, Bus::new("pio")),
            mmio: std::mem::replace(&mut chipset.mmio, Bus::new("mmio")),
            events,
        }
    }

    pub fn request(&self, event: MachineEvent) {
        self.events.request(event);
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.pio.read(u64::from(port), data);
    }
    pub fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio.write(u64::from(port), data);
    }
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.mmio.read(addr, data);
    }
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio.write(addr, data);
    }
    pub fn stop_requested(&self) -> bool {
        self.events.is_pending()
    }
}
