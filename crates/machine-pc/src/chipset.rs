//! The i440fx/PIIX3 chipset's devices, placed on the buses at their ISA addresses, and
//! [`PcOps`], the buses every vCPU shares.
//!
//! Port map: 0x20/0xa0 PIC, 0x40/0x61 PIT, 0x60/0x64 i8042, 0x70 RTC, 0x80 POST,
//! 0x3f8 COM1 (IRQ4), 0x4d0 ELCR, 0x600 ACPI PM (SCI IRQ9), 0xcf8/0xcfc PCI,
//! 0xcf9 reset control, 0xe9 debugcon, isa-debug-exit where configured, PIIX3 IDE
//! (0x1f0/0x3f6 IRQ14, 0x170/0x376 IRQ15; its PCI function 00:01.1 with the
//! bus-master registers in BAR4, wherever the guest maps it: see [`PcOps::pio_read`]).
//! MMIO: the IOAPIC at 0xfec00000 (the local APICs are per vCPU: `vcpu_ops`).
//!
//! Each ISA interrupt line goes to the 8259 pair and to the IOAPIC pin of the same
//! number (IRQ0 to pin 2), as on a PC with APICs.

use std::sync::{Arc, Mutex};

use quern_core::bus::{lock, SharedDevice};
use quern_core::clock::{Clock, TimerDevice};
use quern_core::cpu::SharedAccelerator;
use quern_core::snapshot::Snapshot;
use quern_core::{Bus, GuestMemory, IrqLine, MachineControl, MachineEvent};
use quern_devices::acpi_pm::{AcpiPm, PM_IO_LEN};
use quern_devices::debug_exit::DebugExit;
use quern_devices::debugcon::Debugcon;
use quern_devices::e1000::{E1000Config, E1000};
use quern_devices::i8042::{i8042_bus_devices, I8042};
use quern_devices::ide::{self, ide_bus_devices, DriveKind, IdeDriveConfig, PiixIde};
use quern_devices::ioapic::{isa_irq_to_gsi, IoApicMmio, IoApicPin, IrqFanOut, IOAPIC_BASE, IOAPIC_MMIO_LEN};
use quern_devices::pci::{pci_bus_devices, PciRoot};
use quern_devices::pic::{pic_bus_devices, PicIrqLine, PicPair};
use quern_devices::pit::{pit_bus_devices, Pit};
use quern_devices::port80::Port80;
use quern_devices::reset_control::ResetControl;
use quern_devices::rtc::Rtc;
use quern_devices::uart::Serial;

use crate::apic_bus::ApicBus;
use crate::config::{DriveConfig, MachineConfig, Media, NicConfig};
use crate::control::{CpuWaker, EventQueue};
use crate::layout::MemoryLayout;
use crate::machine::{MachineError, ACPI_PM_BASE, ACPI_SCI_IRQ};
use crate::pci_irq::PciIrqRouter;

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
    pub ide: Arc<Mutex<PiixIde>>,
    pub i8042: Arc<Mutex<I8042>>,
    /// The network cards, in the order configured.
    pub nics: Vec<NicLink>,
    pub serial: Arc<Mutex<Serial>>,
    /// The ACPI PM block (the power button).
    pub pm: Arc<Mutex<AcpiPm>>,
    pub timers: Vec<Arc<Mutex<dyn TimerDevice>>>,
    pub clock: Arc<dyn Clock>,
    pub waker: Arc<CpuWaker>,
    /// The devices with state, each under the name of its section in a saved state.
    pub(crate) stateful: Vec<(String, Arc<Mutex<dyn Snapshot + Send>>)>,
}

fn shared<T: quern_core::BusDevice + 'static>(dev: T) -> SharedDevice {
    Arc::new(Mutex::new(dev))
}

impl Chipset {
    // The machine's shared pieces, each needed by some device; a struct of them would
    // only move the list.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        cfg: &mut MachineConfig,
        layout: &MemoryLayout,
        mem: &Arc<GuestMemory>,
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
        let mut stateful: Vec<(String, Arc<Mutex<dyn Snapshot + Send>>)> = Vec::new();
        if let Some(pic) = &pic {
            stateful.push(("pic".into(), pic.clone()));
            crate::machine::insert_all(&mut pio, pic_bus_devices(pic))?;
            // With an in-accelerator irqchip the accelerator's PIT drives IRQ0 too.
            let pit = Arc::new(Mutex::new(Pit::new(clock.clone(), irq(0))));
            crate::machine::insert_all(&mut pio, pit_bus_devices(&pit))?;
            stateful.push(("pit".into(), pit.clone()));
            timers.push(pit);
        }

        let out = cfg.serial.take().unwrap_or_else(|| Box::new(std::io::sink()));
        let serial = Arc::new(Mutex::new(Serial::new(irq(4), out)));
        pio.insert(serial.clone(), 0x3f8, 8)?;
        stateful.push(("serial0".into(), serial.clone()));

        let now = std::time::SystemTime::now();
        let start = if cfg.rtc_offset_secs >= 0 {
            now + std::time::Duration::from_secs(cfg.rtc_offset_secs.unsigned_abs())
        } else {
            now - std::time::Duration::from_secs(cfg.rtc_offset_secs.unsigned_abs())
        };
        let rtc = Arc::new(Mutex::new(Rtc::new(clock.clone(), irq(8), start)));
        {
            let mut r = lock(&rtc);
            r.set_memory_size(layout.below_4g, layout.above_4g);
            r.set_cpu_count(cfg.cpus);
            let (order, order2) = crate::firmware::boot_order_cmos(cfg.boot_order.as_deref());
            r.set_cmos(0x3d, order);
            r.set_cmos(0x38, order2);
            ide_cmos(&mut r, &cfg.drives);
        }
        pio.insert(rtc.clone(), 0x70, 2)?;
        stateful.push(("rtc".into(), rtc.clone()));
        timers.push(rtc);

        let i8042 = Arc::new(Mutex::new(I8042::new(control.clone(), irq(1), irq(12))));
        crate::machine::insert_all(&mut pio, i8042_bus_devices(&i8042))?;
        stateful.push(("i8042".into(), i8042.clone()));
        pio.insert(shared(Port80::new()), 0x80, 1)?;

        let pci = Arc::new(Mutex::new(PciRoot::new()));
        crate::machine::insert_all(&mut pio, pci_bus_devices(&pci))?;
        stateful.push(("pci".into(), pci.clone()));
        let reset_control = Arc::new(Mutex::new(ResetControl::new(control.clone())));
        pio.insert(reset_control.clone(), 0xcf9, 1)?;
        stateful.push(("reset-control".into(), reset_control));

        // PIIX3 IDE, there even without drives (as on QEMU's pc).
        let drives = cfg
            .drives
            .iter()
            .map(|d| IdeDriveConfig {
                backend: d.backend.clone(),
                kind: match d.media {
                    Media::Disk => DriveKind::Disk,
                    Media::Cdrom => DriveKind::Cdrom,
                },
                bus: d.bus,
                unit: d.unit,
            })
            .collect();
        let ide =
            PiixIde::new(mem.clone(), [irq(14), irq(15)], drives).map_err(|e| MachineError::Config(e.to_string()))?;
        let ide = Arc::new(Mutex::new(ide));
        crate::machine::insert_all(&mut pio, ide_bus_devices(&ide))?;
        stateful.push(("ide".into(), ide.clone()));
        lock(&pci)
            .bus_mut()
            .add(ide::PCI_DEVICE, ide::PCI_FUNCTION, ide.clone())
            .map_err(|e| MachineError::Config(e.to_string()))?;

        let router = PciIrqRouter::new(lock(&pci).isa_bridge(), irq);
        let nics = add_nics(&mut cfg.nics, &pci, mem, &router)?;

        let pm = Arc::new(Mutex::new(AcpiPm::new(clock.clone(), control.clone(), irq(ACPI_SCI_IRQ))));
        pio.insert(pm.clone(), u64::from(ACPI_PM_BASE), PM_IO_LEN)?;
        stateful.push(("acpi-pm".into(), pm.clone()));
        timers.push(pm.clone());

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
            stateful.push(("ioapic".into(), a.ioapic.clone()));
            for (i, l) in a.lapics.iter().enumerate() {
                stateful.push((format!("lapic{i}"), l.clone()));
            }
        }
        for n in &nics {
            stateful.push((format!("nic.{}", n.id), n.nic.state()));
        }

        Ok(Chipset { pio, mmio, pic, apics, pci, ide, i8042, nics, serial, pm, timers, clock, waker, stateful })
    }

    /// What a system reset does to the chipset: the interrupt controller forgets its
    /// programming (firmware or kernel sets it up again); PCI functions and the IDE
    /// drives return to their power-on state.
    pub fn reset(&mut self) {
        if let Some(pic) = &self.pic {
            *lock(pic) = PicPair::new();
        }
        if let Some(a) = &self.apics {
            a.reset(crate::acpi::IOAPIC_ID);
        }
        lock(&self.pci).reset();
        lock(&self.ide).reset();
        for link in &self.nics {
            link.nic.reset();
        }
    }
}

/// A network card and the names a monitor knows it by.
#[derive(Clone)]
pub struct NicLink {
    /// The card's `id=` (or the name quern gave it).
    pub id: String,
    /// Its netdev's id.
    pub netdev: Option<String>,
    pub mac: [u8; 6],
    pub nic: Arc<E1000>,
}

impl NicLink {
    /// `set_link`: the cable in or out (the guest sees link status change).
    pub fn set_up(&self, up: bool) {
        self.nic.set_link(up);
    }
}

/// Puts the network cards on the bus, each in its slot (or the first free one) with its
/// INTA through the PIRQ router, and starts their backends.
fn add_nics(
    nics: &mut [NicConfig],
    pci: &Arc<Mutex<PciRoot>>,
    mem: &Arc<GuestMemory>,
    router: &Arc<PciIrqRouter>,
) -> Result<Vec<NicLink>, MachineError> {
    let mut out = Vec::new();
    for n in nics {
        let mut root = lock(pci);
        let slot = match n.slot {
            Some(s) => s,
            None => {
                root.bus().free_slot().ok_or_else(|| MachineError::Config(format!("{}: no free PCI slot", n.id)))?
            }
        };
        let nic = E1000::new(mem.clone(), router.intx(slot, 0), E1000Config { mac: n.mac, rom: n.rom.take() });
        root.bus_mut().add(slot, 0, nic.pci_function()).map_err(|e| MachineError::Config(format!("{}: {e}", n.id)))?;
        drop(root);
        if let Some(netdev) = &n.netdev {
            let backend = quern_net::start(netdev, nic.sink()).map_err(MachineError::Config)?;
            nic.connect(backend);
        } else {
            log::warn!("{}: no netdev: the card's link goes nowhere", n.id);
        }
        out.push(NicLink { id: n.id.clone(), netdev: n.netdev.as_ref().map(|d| d.id.clone()), mac: n.mac, nic });
    }
    Ok(out)
}

/// The hard disks in CMOS, as QEMU's pc puts them there: 0x12 which of the primary
/// channel's two are present (type 47, user-defined, in 0x19/0x1a), their geometry
/// at 0x1b and 0x24, and 0x39, the BIOS translation of all four positions, which
/// SeaBIOS reads to pick its CHS translation.
fn ide_cmos(rtc: &mut Rtc, drives: &[DriveConfig]) {
    let (mut present, mut translation) = (0u8, 0u8);
    for d in drives.iter().filter(|d| d.media == Media::Disk && d.bus < 2 && d.unit < 2) {
        let Some(b) = &d.backend else { continue };
        translation |= ide::bios_translation(&**b) << (2 * (2 * d.bus + d.unit));
        if d.bus != 0 {
            continue;
        }
        let g = ide::guess_geometry(&**b);
        let (ty, info) = if d.unit == 0 { (0x19, 0x1b) } else { (0x1a, 0x24) };
        present |= if d.unit == 0 { 0xf0 } else { 0x0f };
        let (cyl, heads) = (g.cylinders as u16, g.heads as u8);
        let bytes = [cyl as u8, (cyl >> 8) as u8, heads, 0xff, 0xff, 0xc0 | u8::from(heads > 8) << 3];
        rtc.set_cmos(ty, 47);
        for (i, v) in bytes.into_iter().chain([cyl as u8, (cyl >> 8) as u8, g.sectors as u8]).enumerate() {
            rtc.set_cmos(info + i as u8, v);
        }
    }
    rtc.set_cmos(0x12, present);
    rtc.set_cmos(0x39, translation);
}

/// The buses every vCPU reaches devices through, and the machine's event queue.
pub struct PcOps {
    pio: Bus,
    mmio: Bus,
    /// For the I/O BARs of PCI functions.
    pci: Arc<Mutex<PciRoot>>,
    pub events: Arc<EventQueue>,
}

impl PcOps {
    /// Takes the buses out of the chipset: from here on, only vCPUs reach devices
    /// through them.
    pub fn new(chipset: &mut Chipset, events: Arc<EventQueue>) -> Self {
        PcOps {
            pio: std::mem::replace(&mut chipset.pio, Bus::new("pio")),
            mmio: std::mem::replace(&mut chipset.mmio, Bus::new("mmio")),
            pci: chipset.pci.clone(),
            events,
        }
    }

    pub fn request(&self, event: MachineEvent) {
        self.events.request(event);
    }

    /// A port no fixed device claims goes to the PCI functions' I/O BARs (the IDE
    /// controller's bus-master registers), which sit where the guest programs them:
    /// SeaBIOS puts BAR4 at 0xc000 or so, Linux booted without firmware picks its own.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        let addr = u64::from(port);
        if self.pio.resolve(addr).is_none() && lock(&self.pci).bus().io_read(port, data) {
            return;
        }
        self.pio.read(addr, data);
    }
    pub fn pio_write(&self, port: u16, data: &[u8]) {
        let addr = u64::from(port);
        if self.pio.resolve(addr).is_none() && lock(&self.pci).bus().io_write(port, data) {
            return;
        }
        self.pio.write(addr, data);
    }
    /// An address no fixed device claims goes to the PCI functions' memory BARs (a
    /// NIC's registers), as ports do to their I/O BARs.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if self.mmio.resolve(addr).is_none() && lock(&self.pci).bus().mmio_read(addr, data) {
            return;
        }
        self.mmio.read(addr, data);
    }
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        if self.mmio.resolve(addr).is_none() && lock(&self.pci).bus().mmio_write(addr, data) {
            return;
        }
        self.mmio.write(addr, data);
    }
    pub fn stop_requested(&self) -> bool {
        self.events.is_pending()
    }
}

#[cfg(test)]
mod tests {
    use quern_block::MemBackend;
    use quern_core::BusDevice;

    use super::*;

    #[test]
    fn ide_disks_in_cmos_as_qemu_puts_them() {
        let clock = Arc::new(quern_core::clock::ManualClock::default());
        let mut rtc = Rtc::new(clock, Arc::new(quern_core::NullIrq), std::time::SystemTime::now());
        let drive = |sectors: usize, media, bus, unit| DriveConfig {
            backend: Some(Arc::new(MemBackend::new(vec![0; sectors * 512], false))),
            media,
            bus,
            unit,
            bootindex: None,
            id: String::new(),
        };
        // A 20-cylinder disk as primary master, a CD-ROM as primary slave (not in
        // CMOS), a disk as secondary slave (only in the translation byte).
        let drives = [drive(20 * 1008, Media::Disk, 0, 0), drive(16, Media::Cdrom, 0, 1), drive(64, Media::Disk, 1, 1)];
        ide_cmos(&mut rtc, &drives);
        let mut cmos = |i: u8| {
            rtc.write(0, &[i]);
            let mut b = [0];
            rtc.read(1, &mut b);
            b[0]
        };
        assert_eq!(cmos(0x12), 0xf0);
        assert_eq!((cmos(0x19), cmos(0x1a)), (47, 0));
        let info: Vec<u8> = (0x1b..0x24).map(&mut cmos).collect();
        assert_eq!(info, [20, 0, 16, 0xff, 0xff, 0xc8, 20, 0, 63]);
        assert_eq!(cmos(0x39), 0, "no translation for small disks");
    }
}
