//! [`VcpuOps`]: the machine as one vCPU sees it. The buses are shared; the local APIC
//! is this vCPU's own: its MMIO page (at the address its IA32_APIC_BASE says), its
//! MSRs, CR8, its TSC, and its interrupts, with the 8259 pair behind LINT0 (the
//! virtual wire) as on a PC.

use std::sync::{Arc, Mutex};

use quern_core::bus::lock;
use quern_core::cpu::{CpuEvent, Gp};
use quern_core::VmOps;
use quern_devices::apic_bus::ApicAction;
use quern_devices::lapic::{CpuSignal, LocalApic, APIC_MMIO_SIZE};
use quern_devices::pic::PicPair;

use crate::apic_bus::ApicBus;
use crate::chipset::PcOps;
use crate::timers::TimerRearm;

pub struct VcpuOps {
    pub pc: Arc<PcOps>,
    /// This vCPU's local APIC and the bus it sits on; `None` when the accelerator has
    /// its own interrupt controllers (KVM's in-kernel irqchip).
    apic: Option<(Arc<Mutex<LocalApic>>, Arc<ApicBus>)>,
    pic: Option<Arc<Mutex<PicPair>>>,
    /// Told when a register write moved the APIC timer's deadline.
    rearm: Arc<TimerRearm>,
}

impl VcpuOps {
    pub fn new(
        pc: Arc<PcOps>,
        apics: Option<&Arc<ApicBus>>,
        cpu: usize,
        pic: Option<Arc<Mutex<PicPair>>>,
        rearm: Arc<TimerRearm>,
    ) -> Self {
        let apic = apics.and_then(|b| Some((b.lapics.get(cpu)?.clone(), b.clone())));
        VcpuOps { pc, apic, pic, rearm }
    }

    /// Runs a register write on the local APIC, then what it asked for, with the lock
    /// released; wakes the timer thread if the timer's deadline moved.
    fn apic_write<T>(
        &self,
        l: &Mutex<LocalApic>,
        bus: &ApicBus,
        write: impl FnOnce(&mut LocalApic) -> (T, Option<ApicAction>),
    ) -> T {
        let mut lapic = lock(l);
        let before = lapic.timer_deadline();
        let (r, action) = write(&mut lapic);
        let moved = lapic.timer_deadline() != before;
        drop(lapic);
        if moved {
            self.rearm.rearm();
        }
        if let Some(a) = action {
            bus.act(a);
        }
        r
    }

    fn pic_intr(&self) -> bool {
        self.pic.as_ref().is_some_and(|p| lock(p).intr())
    }

    /// The APIC's offset for a guest-physical address in its MMIO page, if it is one.
    fn apic_offset(l: &LocalApic, addr: u64) -> Option<u64> {
        let base = l.mmio_base()?;
        (addr >= base && addr < base + APIC_MMIO_SIZE).then(|| addr - base)
    }

    /// What the CPU's INTR input should take now: a fixed APIC vector, or the PIC
    /// through LINT0. The PIC's output is fed to LINT0 first, as the wire would.
    fn maskable(&self, l: &mut LocalApic) -> Option<CpuSignal> {
        l.set_lint(0, self.pic_intr());
        l.poll(true).filter(|s| matches!(s, CpuSignal::Interrupt | CpuSignal::ExtInt))
    }
}

impl VmOps for VcpuOps {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.pc.pio_read(port, data);
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.pc.pio_write(port, data);
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if let Some((l, _)) = &self.apic {
            let mut l = lock(l);
            if let Some(off) = Self::apic_offset(&l, addr) {
                return l.mmio_read(off, data);
            }
        }
        self.pc.mmio_read(addr, data);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if let Some((l, bus)) = &self.apic {
            let off = Self::apic_offset(&lock(l), addr);
            if let Some(off) = off {
                // The base cannot move between the two locks: only this vCPU writes it.
                return self.apic_write(l, bus, |a| ((), a.mmio_write(off, data)));
            }
        }
        self.pc.mmio_write(addr, data);
    }
    fn interrupt_pending(&self) -> bool {
        match &self.apic {
            Some((l, _)) => self.maskable(&mut lock(l)).is_some(),
            None => self.pic_intr(),
        }
    }
    fn acknowledge_interrupt(&self) -> Option<u8> {
        let Some((l, _)) = &self.apic else { return self.pic.as_ref().map(|p| lock(p).acknowledge()) };
        let mut l = lock(l);
        match self.maskable(&mut l)? {
            CpuSignal::Interrupt => Some(l.acknowledge()),
            _ => {
                // ExtINT: the INTA cycle goes to the 8259s.
                l.take(CpuSignal::ExtInt);
                drop(l);
                self.pic.as_ref().map(|p| lock(p).acknowledge())
            }
        }
    }
    fn take_event(&self) -> Option<CpuEvent> {
        let (l, _) = self.apic.as_ref()?;
        let mut l = lock(l);
        let (signal, event) = match l.poll(false)? {
            CpuSignal::Nmi => (CpuSignal::Nmi, CpuEvent::Nmi),
            CpuSignal::Init => (CpuSignal::Init, CpuEvent::Init),
            CpuSignal::StartUp(v) => (CpuSignal::StartUp(v), CpuEvent::StartUp(v)),
            CpuSignal::Smi => (CpuSignal::Smi, CpuEvent::Smi),
            CpuSignal::Interrupt | CpuSignal::ExtInt => return None,
        };
        l.take(signal);
        if event == CpuEvent::Init {
            // INIT resets the local APIC too, keeping its ID and base.
            l.init();
        }
        Some(event)
    }
    fn msr_read(&self, index: u32) -> Option<Result<u64, Gp>> {
        let (l, _) = self.apic.as_ref().filter(|_| LocalApic::handles_msr(index))?;
        Some(lock(l).msr_read(index).map_err(|_| Gp))
    }
    fn msr_write(&self, index: u32, value: u64) -> Option<Result<(), Gp>> {
        let (l, bus) = self.apic.as_ref().filter(|_| LocalApic::handles_msr(index))?;
        Some(self.apic_write(l, bus, |a| match a.msr_write(index, value) {
            Ok(action) => (Ok(()), action),
            Err(_) => (Err(Gp), None),
        }))
    }
    fn cr8(&self) -> Option<u64> {
        self.apic.as_ref().map(|(l, _)| lock(l).cr8())
    }
    fn set_cr8(&self, value: u64) {
        if let Some((l, _)) = &self.apic {
            lock(l).set_cr8(value);
        }
    }
    fn tsc(&self) -> Option<u64> {
        self.apic.as_ref().map(|(l, _)| lock(l).tsc_now())
    }
    fn stop_requested(&self) -> bool {
        self.pc.stop_requested()
    }
}
