//! The PC's APIC bus: the local APICs (one per vCPU), the IOAPIC, and the router that
//! carries [`ApicMessage`]s between them (IOAPIC redirections, IPIs, EOI broadcasts).
//!
//! Device models return what they send; the router delivers it after their locks are
//! released, so a self-IPI or an EOI that re-raises a level interrupt never deadlocks.
//! Locking order: a local APIC's lock, or the IOAPIC's, never both at once.

use std::sync::{Arc, Mutex};

use quern_core::bus::lock;
use quern_core::clock::{Clock, TimerDevice};
use quern_devices::apic_bus::{ApicAction, ApicMessage, DeliveryMode};
use quern_devices::ioapic::{ApicSink, IoApic};
use quern_devices::lapic::LocalApic;

use crate::control::CpuWaker;

/// The guest TSC's frequency. 1 GHz keeps TSC and nanoseconds the same number, which
/// the local APIC timer (also 1 GHz, as QEMU's) and the JIT share.
pub const TSC_HZ: u64 = 1_000_000_000;

/// The interrupt controllers with APICs, and the wake-up of each vCPU.
pub struct ApicBus {
    pub lapics: Vec<Arc<Mutex<LocalApic>>>,
    pub ioapic: Arc<Mutex<IoApic>>,
    wakers: Vec<Arc<CpuWaker>>,
}

impl ApicBus {
    /// One local APIC per vCPU (APIC IDs from `topology`, vCPU 0 the bootstrap
    /// processor) and the IOAPIC with ID `ioapic_id`.
    pub fn new(
        cpus: u32,
        topology: quern_core::Topology,
        clock: Arc<dyn Clock>,
        wakers: Vec<Arc<CpuWaker>>,
        ioapic_id: u8,
    ) -> Arc<Self> {
        let lapic = |i: u32| Arc::new(Mutex::new(LocalApic::new(topology.apic_id(i), i == 0, clock.clone(), TSC_HZ)));
        let lapics = (0..cpus).map(lapic).collect();
        Arc::new(ApicBus { lapics, ioapic: Arc::new(Mutex::new(IoApic::new(ioapic_id))), wakers })
    }

    /// Where the IOAPIC's messages go.
    pub fn sink(self: &Arc<Self>) -> ApicSink {
        let bus = Arc::downgrade(self);
        Arc::new(move |msg| {
            if let Some(bus) = bus.upgrade() {
                bus.deliver(&msg);
            }
        })
    }

    /// Delivers a message to every local APIC it is for (lowest priority: the one
    /// with the lowest arbitration priority, focus first) and wakes their vCPUs.
    pub fn deliver(&self, msg: &ApicMessage) {
        let targets: Vec<usize> =
            (0..self.lapics.len()).filter(|&i| lock(&self.lapics[i]).accepts(&msg.dest, msg.source)).collect();
        let chosen: Vec<usize> = if msg.mode == DeliveryMode::LowestPriority && targets.len() > 1 {
            let key = |&i: &usize| {
                let l = lock(&self.lapics[i]);
                (!l.is_focus(msg.vector), l.arbitration_priority(), i)
            };
            targets.iter().min_by_key(|i| key(i)).into_iter().copied().collect()
        } else {
            targets
        };
        for i in chosen {
            lock(&self.lapics[i]).deliver(msg);
            if let Some(w) = self.wakers.get(i) {
                w.wake();
            }
        }
    }

    /// Carries out what a local APIC register write asked for.
    pub fn act(&self, action: ApicAction) {
        match action {
            ApicAction::Send(msg) => self.deliver(&msg),
            ApicAction::EoiBroadcast(vector) => {
                let again = lock(&self.ioapic).eoi(vector);
                for msg in again {
                    self.deliver(&msg);
                }
            }
        }
    }

    /// A machine reset: every controller back to its power-on state.
    pub fn reset(&self, ioapic_id: u8) {
        for l in &self.lapics {
            lock(l).reset();
        }
        lock(&self.ioapic).reset(ioapic_id);
    }

    /// The timer-thread side of each local APIC's timer.
    pub fn timers(&self) -> Vec<Arc<Mutex<dyn TimerDevice>>> {
        self.lapics
            .iter()
            .zip(&self.wakers)
            .map(|(l, w)| Arc::new(Mutex::new(LapicTimer { lapic: l.clone(), waker: w.clone() })) as _)
            .collect()
    }
}

/// Ticks a local APIC's timer and wakes its vCPU when that raised an interrupt, so a
/// guest spinning in chained code or halted sees it promptly.
struct LapicTimer {
    lapic: Arc<Mutex<LocalApic>>,
    waker: Arc<CpuWaker>,
}

impl TimerDevice for LapicTimer {
    fn tick(&mut self, now_ns: u64) -> Option<u64> {
        let mut l = lock(&self.lapic);
        let before = l.poll(true);
        let next = l.tick(now_ns);
        let after = l.poll(true);
        drop(l);
        if after.is_some() && after != before {
            self.waker.wake();
        }
        next
    }
}
