//! Every device takes arbitrary guest accesses without panicking: offsets inside and
//! past its range, every access size, any value, with time moving on.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use quern_core::bus::{lock, SharedDevice};
use quern_core::clock::ManualClock;
use quern_core::events::RecordingControl;
use quern_core::{NullIrq, TimerDevice};

use crate::*;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_accesses_never_panic() {
    let clock = Arc::new(ManualClock::default());
    let control = Arc::new(RecordingControl::default());
    let irq = Arc::new(NullIrq);
    let pic = Arc::new(Mutex::new(PicPair::new()));
    let pit = Arc::new(Mutex::new(Pit::new(clock.clone(), irq.clone())));
    let rtc = Arc::new(Mutex::new(Rtc::new(clock.clone(), irq.clone(), SystemTime::now())));
    let pm = Arc::new(Mutex::new(AcpiPm::new(clock.clone(), control.clone(), irq.clone())));
    let kbd = Arc::new(Mutex::new(I8042::new(control.clone(), irq.clone(), irq.clone())));
    let pci = Arc::new(Mutex::new(PciRoot::new()));
    let mut devs: Vec<(SharedDevice, u64)> = vec![
        (Arc::new(Mutex::new(uart::Serial::new(irq.clone(), Box::new(std::io::sink())))), 8),
        (rtc.clone(), 2),
        (pm.clone(), acpi_pm::PM_IO_LEN),
        (Arc::new(Mutex::new(Port80::new())), 1),
        (Arc::new(Mutex::new(DebugExit::new(control.clone()))), 2),
        (Arc::new(Mutex::new(Debugcon::new(Box::new(std::io::sink())))), 1),
        (Arc::new(Mutex::new(ResetControl::new(control.clone()))), 1),
        // The IOAPIC's registers sit in its first 0x14 bytes (aliased every 0x100).
        (Arc::new(Mutex::new(IoApic::new(0))), 0x20),
    ];
    for list in [pic_bus_devices(&pic), pit_bus_devices(&pit), i8042_bus_devices(&kbd), pci_bus_devices(&pci)] {
        devs.extend(list.into_iter().map(|(d, _, len)| (d, len)));
    }
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..200_000 {
        let r = rng.next();
        let (dev, len) = &devs[(r % devs.len() as u64) as usize];
        let size = [1, 2, 4, 8][((r >> 8) & 3) as usize];
        let offset = (r >> 16) % (len + 2);
        let mut data = (rng.next()).to_le_bytes();
        if r & (1 << 60) != 0 {
            lock(dev).write(offset, &data[..size]);
        } else {
            lock(dev).read(offset, &mut data[..size]);
        }
        if r & (1 << 61) != 0 {
            clock.advance_ns(rng.next() % 5_000_000);
            let now = quern_core::Clock::now_ns(&*clock);
            lock(&pit).tick(now);
            lock(&rtc).tick(now);
            lock(&pm).tick(now);
            let mut p = lock(&pic);
            if p.intr() {
                p.acknowledge();
            }
        }
    }
}

/// The local APIC is not a bus device (its writes return messages for the machine to
/// route), so it has its own loop: two APICs take random accesses anywhere in the
/// xAPIC page and to their MSRs (valid IA32_APIC_BASE modes among them), the messages
/// they send are routed between them, and time, LINT pins and the CPU side move on.
#[test]
fn lapic_random_accesses_never_panic() {
    use crate::apic_bus::ApicAction;
    use crate::lapic::{CpuSignal, LocalApic, APIC_MMIO_SIZE, MSR_APIC_BASE, MSR_TSC_DEADLINE};

    let clock = Arc::new(ManualClock::default());
    let mut apics =
        [LocalApic::new(0, true, clock.clone(), 2_500_000_000), LocalApic::new(1, false, clock.clone(), 2_500_000_000)];
    let mut rng = Rng(0x0bad_5eed_1234_5678);
    let mut sent = 0u32;
    for _ in 0..200_000 {
        let r = rng.next();
        let mut v = rng.next();
        if r & (1 << 59) != 0 {
            v &= 0xffff_ffff;
        }
        let a = &mut apics[(r & 1) as usize];
        let action = match (r >> 1) % 5 {
            0 | 1 => {
                let size = [1, 2, 4, 8][((r >> 8) & 3) as usize];
                let offset = (r >> 16) % (APIC_MMIO_SIZE + 2);
                let mut data = v.to_le_bytes();
                if r & (1 << 60) != 0 {
                    a.mmio_write(offset, &data[..size])
                } else {
                    a.mmio_read(offset, &mut data[..size]);
                    None
                }
            }
            2 => {
                let index =
                    [MSR_APIC_BASE, MSR_TSC_DEADLINE, 0x800 + ((r >> 16) % 0x100) as u32][((r >> 8) % 3) as usize];
                if index == MSR_APIC_BASE && r & (1 << 58) != 0 {
                    v = [0xfee0_0800, 0xfee0_0c00, 0xfee0_0000, 0xfed0_0800][((r >> 12) & 3) as usize];
                }
                if r & (1 << 60) != 0 {
                    a.msr_write(index, v).ok().flatten()
                } else {
                    let _ = a.msr_read(index);
                    None
                }
            }
            3 => {
                a.set_lint(((r >> 8) % 3) as u8, r & (1 << 12) != 0);
                match a.poll(r & (1 << 13) != 0) {
                    Some(CpuSignal::Interrupt) => {
                        a.acknowledge();
                    }
                    Some(s) => a.take(s),
                    None => {}
                }
                match (r >> 14) % 64 {
                    0 => a.init(),
                    1 => a.reset(),
                    _ => {}
                }
                None
            }
            _ => {
                clock.advance_ns(v % 50_000);
                let now = quern_core::Clock::now_ns(&*clock);
                for a in &mut apics {
                    // Whatever was due has been raised: the next expiry is ahead.
                    if let Some(d) = a.tick(now) {
                        assert!(d > now, "deadline {d} not after {now}");
                    }
                }
                None
            }
        };
        if let Some(ApicAction::Send(m)) = action {
            sent += 1;
            for a in &mut apics {
                if a.accepts(&m.dest, m.source) {
                    a.deliver(&m);
                }
            }
        }
    }
    assert!(sent > 0);
}
