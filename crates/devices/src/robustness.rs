//! Every device takes arbitrary guest accesses without panicking: offsets inside and
//! past its range, every access size, any value, with time moving on. Whatever state
//! that leaves saves and restores whole.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use quern_core::bus::{lock, SharedDevice};
use quern_core::clock::ManualClock;
use quern_core::events::RecordingControl;
use quern_core::snapshot::Snapshot;
use quern_core::{NullIrq, TimerDevice};

use crate::testutil::restore_into;
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
    let serial = Arc::new(Mutex::new(uart::Serial::new(irq.clone(), Box::new(std::io::sink()))));
    let ioapic = Arc::new(Mutex::new(IoApic::new(0)));
    let mut devs: Vec<(SharedDevice, u64)> = vec![
        (serial.clone(), 8),
        (rtc.clone(), 2),
        (pm.clone(), acpi_pm::PM_IO_LEN),
        (Arc::new(Mutex::new(Port80::new())), 1),
        (Arc::new(Mutex::new(DebugExit::new(control.clone()))), 2),
        (Arc::new(Mutex::new(Debugcon::new(Box::new(std::io::sink())))), 1),
        (Arc::new(Mutex::new(ResetControl::new(control.clone()))), 1),
        // The IOAPIC's registers sit in its first 0x14 bytes (aliased every 0x100).
        (ioapic.clone(), 0x20),
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
    // Whatever state the accesses left saves whole and restores the same.
    restore_into(&mut PicPair::new(), &lock(&pic).save_state());
    restore_into(&mut Pit::new(clock.clone(), irq.clone()), &lock(&pit).save_state());
    restore_into(&mut Rtc::new(clock.clone(), irq.clone(), SystemTime::now()), &lock(&rtc).save_state());
    restore_into(&mut AcpiPm::new(clock.clone(), control.clone(), irq.clone()), &lock(&pm).save_state());
    restore_into(&mut I8042::new(control.clone(), irq.clone(), irq.clone()), &lock(&kbd).save_state());
    restore_into(&mut PciRoot::new(), &lock(&pci).save_state());
    restore_into(&mut uart::Serial::new(irq.clone(), Box::new(std::io::sink())), &lock(&serial).save_state());
    restore_into(&mut IoApic::new(0), &lock(&ioapic).save_state());
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
    for (id, a) in apics.iter().enumerate() {
        restore_into(&mut LocalApic::new(id as u32, id == 0, clock.clone(), 2_500_000_000), &a.save_state());
    }
}

/// The IDE controller takes random register, data-port, bus-master and configuration
/// accesses without panicking: commands and packet opcodes drawn mostly from what it
/// implements (so transfers start and run), task files with small and huge
/// addresses, PRD tables pointing inside, across and outside RAM, resets and medium
/// changes in between.
#[test]
fn ide_random_accesses_never_panic() {
    use crate::ide::{ide_bus_devices, DriveKind, IdeDriveConfig, PiixIde};
    use quern_block::{BlockBackend, MemBackend};
    use quern_core::GuestMemory;

    let mem = Arc::new(GuestMemory::flat(64 << 10).unwrap());
    let medium =
        |fill: u8, len: usize, ro: bool| Some(Arc::new(MemBackend::new(vec![fill; len], ro)) as Arc<dyn BlockBackend>);
    let drives = || {
        vec![
            IdeDriveConfig { backend: medium(0x11, 64 * 512, false), kind: DriveKind::Disk, bus: 0, unit: 0 },
            IdeDriveConfig { backend: medium(0x22, 16 * 2048, true), kind: DriveKind::Cdrom, bus: 0, unit: 1 },
            IdeDriveConfig { backend: medium(0x33, 8 * 512 + 100, true), kind: DriveKind::Disk, bus: 1, unit: 0 },
            IdeDriveConfig { backend: None, kind: DriveKind::Cdrom, bus: 1, unit: 1 },
        ]
    };
    let irq: Arc<dyn quern_core::IrqLine> = Arc::new(NullIrq);
    let new_ide = || PiixIde::new(mem.clone(), [irq.clone(), irq.clone()], drives()).unwrap();
    let ide = Arc::new(Mutex::new(new_ide()));
    let windows: Vec<(SharedDevice, u64, u64)> = ide_bus_devices(&ide);
    let commands = [
        0x08, 0x10, 0x20, 0x21, 0x24, 0x25, 0x27, 0x29, 0x30, 0x34, 0x35, 0x39, 0x40, 0x42, 0x70, 0x90, 0x91, 0xa0,
        0xa0, 0xa0, 0xa1, 0xc4, 0xc5, 0xc6, 0xc8, 0xca, 0xe5, 0xe7, 0xea, 0xec, 0xef, 0xf8, 0xb0, 0x00,
    ];
    let opcodes =
        [0x00, 0x03, 0x12, 0x1b, 0x1e, 0x25, 0x28, 0x2b, 0x43, 0x46, 0x4a, 0x51, 0x5a, 0xa8, 0xbb, 0xbd, 0xbe, 0xff];
    let bm_base = 0xc000u16;
    {
        let mut i = lock(&ide);
        i.config_write(0x20, u32::from(bm_base), !0);
        i.config_write(0x04, 5, !0);
    }
    let mut rng = Rng(0x1de_cafe_f00d_1234);
    for _ in 0..300_000 {
        let r = rng.next();
        let v = rng.next();
        let ch = ((r >> 4) & 1) as usize;
        // Command block (0), control block (1) of the channel.
        let (cmd_block, ctrl_block) = (&windows[2 * ch].0, &windows[2 * ch + 1].0);
        match r % 10 {
            0 => {
                let (dev, len) = (&windows[((r >> 8) % 4) as usize].0, [8, 1][((r >> 8) % 2) as usize]);
                let size = [1, 2, 4][((r >> 12) % 3) as usize];
                let offset = (r >> 16) % (len + 2);
                let mut data = v.to_le_bytes();
                if r & (1 << 40) != 0 {
                    lock(dev).write(offset, &data[..size]);
                } else {
                    lock(dev).read(offset, &mut data[..size]);
                }
            }
            1 => {
                let c = if v & 7 == 0 { v as u8 } else { commands[((v >> 8) % commands.len() as u64) as usize] };
                lock(cmd_block).write(7, &[c]);
            }
            2 | 3 => {
                // A whole command as a driver issues it: task file, command, the packet
                // for PACKET, a bus-master run for DMA, then the data port for a while.
                let unit = (v >> 1) & 1;
                let mut cb = lock(cmd_block);
                cb.write(6, &[0xe0 | (unit as u8) << 4]);
                cb.write(1, &[(v >> 2) as u8 & 1]);
                cb.write(2, &[(v >> 8) as u8 & 0x0f]);
                for (reg, shift) in [(3, 16), (4, 24), (5, 32)] {
                    let b = if v & (1 << 62) != 0 { (v >> shift) as u8 } else { (v >> shift) as u8 & 3 };
                    cb.write(reg, &[b]);
                }
                let c = commands[((v >> 40) % commands.len() as u64) as usize];
                cb.write(7, &[c]);
                if c == 0xa0 {
                    let w = rng.next();
                    let mut packet = w.to_le_bytes().repeat(2);
                    packet[0] = opcodes[(w % opcodes.len() as u64) as usize];
                    if w & (1 << 20) == 0 {
                        packet[2..6].copy_from_slice(&[0, 0, 0, (w >> 24) as u8 & 0x0f]);
                        packet[6..10].copy_from_slice(&[0, 0, (w >> 32) as u8 & 3, (w >> 36) as u8 & 0x3f]);
                    }
                    for pair in packet[..12].chunks(2) {
                        cb.write(0, pair);
                    }
                }
                drop(cb);
                if v & (1 << 63) != 0 {
                    let mut i = lock(&ide);
                    // Random configuration writes and resets move or disable BAR4.
                    crate::pci::PciDevice::config_write(&mut *i, 0x20, u32::from(bm_base), !0);
                    crate::pci::PciDevice::config_write(&mut *i, 0x04, 5, !0);
                    let base = bm_base + 8 * ch as u16;
                    crate::pci::PciDevice::io_write(&mut *i, base + 4, &0x2000u32.to_le_bytes());
                    crate::pci::PciDevice::io_write(&mut *i, base + 2, &[0x06]);
                    crate::pci::PciDevice::io_write(&mut *i, base, &[0x09]);
                    crate::pci::PciDevice::io_write(&mut *i, base, &[0x00]);
                }
                for _ in 0..(r >> 20) % 2000 {
                    let w = rng.next();
                    let mut d = [0u8; 4];
                    let size = 2 + 2 * ((w >> 1) & 1) as usize;
                    if w & 1 == 0 {
                        lock(cmd_block).read(0, &mut d[..size]);
                    } else {
                        lock(cmd_block).write(0, &w.to_le_bytes()[..size]);
                    }
                }
            }
            4 => {
                // A task file: device, count, LBA (small or anything), byte count limit.
                let regs = [
                    (6, 0xe0 | (v as u8 & 0x1f) | ((v >> 5) as u8 & 0x40)),
                    (2, (v >> 8) as u8 & 0x0f),
                    (1, (v >> 60) as u8 & 3),
                ];
                for (reg, val) in regs {
                    lock(cmd_block).write(reg, &[val]);
                }
                for reg in 3..=5 {
                    let b = if v & (1 << 50) != 0 { (v >> (8 * reg)) as u8 } else { (v >> (4 * reg)) as u8 & 7 };
                    lock(cmd_block).write(reg, &[b]);
                }
            }
            5 => {
                let port = bm_base + (v % 18) as u16;
                let mut data = (v >> 8).to_le_bytes();
                let size = [1, 2, 4][((v >> 5) % 3) as usize];
                let mut i = lock(&ide);
                if r & (1 << 41) != 0 {
                    let table = [(v >> 16) as u32 & 0xfff8, 0x2000, 0xffff_fff0][((v >> 60) % 3) as usize];
                    crate::pci::PciDevice::io_write(&mut *i, bm_base + 4 + 8 * ch as u16, &table.to_le_bytes());
                    crate::pci::PciDevice::io_write(&mut *i, bm_base + 8 * ch as u16, &[(v as u8) & 0x09]);
                } else if r & (1 << 42) != 0 {
                    crate::pci::PciDevice::io_write(&mut *i, port, &data[..size]);
                } else {
                    crate::pci::PciDevice::io_read(&mut *i, port, &mut data[..size]);
                }
            }
            6 => {
                // A PRD table at 0x2000: entries inside RAM, across its end, or outside.
                for e in 0..(1 + v % 4) {
                    let w = rng.next();
                    let addr = [(w as u32) & 0xfffe, 0xfff0, 0xfee0_0000][((w >> 40) % 3) as usize];
                    let eot = if e == v % 4 { 0x8000_0000 } else { 0 };
                    mem.write_u32(0x2000 + 8 * e, addr).unwrap();
                    mem.write_u32(0x2004 + 8 * e, ((w >> 16) as u32 & 0xffff) | eot).unwrap();
                }
            }
            7 => {
                let reg = ((v % 64) * 4) as u16;
                let mask = [0xff, 0xffff, 0xffff_ffff][((v >> 8) % 3) as usize];
                // Keep BAR4 and decoding mostly in place so DMA gets exercised.
                if reg != 0x20 && reg != 0x04 || v & (1 << 20) != 0 {
                    crate::pci::PciDevice::config_write(&mut *lock(&ide), reg, (v >> 32) as u32, mask);
                }
            }
            8 => lock(ctrl_block).write(0, &[[0x00, 0x02, 0x04, 0x06, 0x80][(v % 5) as usize]]),
            _ => {
                let mut i = lock(&ide);
                match v % 50 {
                    0 => i.reset(),
                    1 => {
                        let m =
                            (v & (1 << 10) != 0).then(|| medium(0x44, (v >> 12) as usize % (8 * 2048), true).unwrap());
                        let _ = i.change_medium(((v >> 8) & 1) as u8, ((v >> 9) & 1) as u8, m);
                    }
                    _ => {}
                }
            }
        }
    }
    restore_into(&mut new_ide(), &lock(&ide).save_state());
}

/// The e1000 takes random register accesses (through BAR0 and the I/O window, every
/// size, offsets mostly at the registers it implements), random descriptor rings and
/// buffers (inside, across and outside RAM), random frames from the wire, link
/// changes and resets, without panicking.
#[test]
fn e1000_random_accesses_never_panic() {
    use crate::e1000::{E1000Config, E1000};
    use quern_core::GuestMemory;
    use quern_net::{FrameSink, NetBackend};

    struct Loop(Mutex<Option<Arc<dyn FrameSink>>>, std::sync::atomic::AtomicUsize);
    impl NetBackend for Loop {
        fn send(&self, frame: &[u8]) -> std::io::Result<()> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Answer some frames at once, from inside send.
            if frame.len() % 3 == 1 {
                if let Some(s) = self.0.lock().unwrap().clone() {
                    s.receive(frame);
                }
            }
            Ok(())
        }
        fn resume(&self) {}
    }

    let mem = Arc::new(GuestMemory::flat(256 << 10).unwrap());
    let nic = E1000::new(
        mem.clone(),
        Arc::new(NullIrq),
        E1000Config { mac: [2, 0, 0, 0, 0, 1], rom: Some(vec![0x55; 3000]) },
    );
    let backend = Arc::new(Loop(Mutex::new(Some(nic.sink())), Default::default()));
    nic.connect(backend.clone());
    let sink = nic.sink();
    let pci = nic.pci_function();
    let (bar0, io) = (0xfebc_0000u64, 0xc000u16);
    let setup = |p: &mut dyn crate::pci::PciDevice| {
        p.config_write(0x10, bar0 as u32, !0);
        p.config_write(0x14, u32::from(io), !0);
        p.config_write(0x30, 0xfeb0_0001, !0);
        p.config_write(0x04, 7, !0);
    };
    setup(&mut *lock(&pci));
    let regs: [u32; 24] = [
        0x0, 0x10, 0x14, 0x20, 0xc0, 0xc8, 0xd0, 0xd8, 0x100, 0x400, 0x2800, 0x2804, 0x2808, 0x2810, 0x2818, 0x3800,
        0x3804, 0x3808, 0x3810, 0x3818, 0x5400, 0x5404, 0x5600, 0x4000,
    ];
    let mut rng = Rng(0xe100_05ee_d0ba_dcaf);
    for _ in 0..200_000 {
        let r = rng.next();
        let v = rng.next();
        match r % 12 {
            0..=4 => {
                // A register: mostly a known one with a plausible value.
                let off = if r & (1 << 8) != 0 { regs[((r >> 9) % 24) as usize] } else { (r >> 9) as u32 % 0x2_0004 };
                let value = match off {
                    0x2808 | 0x3808 => (v as u32 % 8) * 128,
                    0x2810 | 0x2818 | 0x3810 | 0x3818 => v as u32 % 40,
                    0x2800 | 0x3800 => [0x1000, 0x3_fff0, 0x8000_0000, v as u32][(v >> 40) as usize % 4],
                    0x2804 | 0x3804 => [0, 0, 0, v as u32][(v >> 40) as usize % 4],
                    0x0 => v as u32 & !(1 << 26) | if v & (1 << 50) != 0 { 1 << 26 } else { 0 },
                    _ => v as u32,
                };
                let size = [1, 2, 4, 8][((r >> 40) & 3) as usize];
                let mut data = u64::from(value).to_le_bytes();
                let mut p = lock(&pci);
                if r & (1 << 44) != 0 {
                    p.mmio_read(bar0 + u64::from(off), &mut data[..size]);
                } else {
                    p.mmio_write(bar0 + u64::from(off), &data[..size]);
                }
            }
            5 => {
                let port = io + (r >> 8) as u16 % 0x44;
                let size = [1, 2, 4][((r >> 20) % 3) as usize];
                let mut data = (v as u32 % 0x2_0000).to_le_bytes();
                let mut p = lock(&pci);
                if r & (1 << 30) != 0 {
                    p.io_read(port, &mut data[..size]);
                } else {
                    p.io_write(port, &data[..size]);
                }
            }
            6 | 7 => {
                // Descriptors at the rings' usual places: buffers inside, across the
                // end of, or outside RAM, any length and command.
                for _ in 0..8 {
                    let w = rng.next();
                    let at = [0x1000u64, 0x3_fff0][(w & 1) as usize] + 16 * ((w >> 1) % 16);
                    let buf = [0x8000 + (w >> 8) % 0x3_0000, 0x3_ff00, 0xfee0_0000, 0][((w >> 40) % 4) as usize];
                    let _ = mem.write_u64(at, buf);
                    let _ = mem.write_u64(at + 8, rng.next());
                }
            }
            8 | 9 => {
                let len = [0, 10, 60, 100, 1514, 1600, 9000, 70_000][(v % 8) as usize];
                let mut f = vec![(v >> 8) as u8; len];
                if len >= 14 && v & (1 << 20) != 0 {
                    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
                    f[12..14].copy_from_slice(&[0x81, 0x00]);
                }
                sink.receive(&f);
            }
            10 => {
                let reg = ((v % 64) * 4) as u16;
                if reg != 0x10 && reg != 0x14 || v & (1 << 20) != 0 {
                    lock(&pci).config_write(reg, (v >> 32) as u32, [0xff, 0xffff, !0][((v >> 8) % 3) as usize]);
                }
                if v & (1 << 21) != 0 {
                    setup(&mut *lock(&pci));
                }
            }
            _ => match v % 20 {
                0 => {
                    nic.reset();
                    setup(&mut *lock(&pci));
                }
                1 => nic.set_link(v & (1 << 8) != 0),
                _ => {}
            },
        }
    }
    assert!(backend.1.load(std::sync::atomic::Ordering::Relaxed) > 0, "frames were sent");
    let fresh = E1000::new(mem, Arc::new(NullIrq), E1000Config { mac: [2, 0, 0, 0, 0, 2], rom: None });
    restore_into(&mut *lock(&fresh.state()), &lock(&nic.state()).save_state());
}
