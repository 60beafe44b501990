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
