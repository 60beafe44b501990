//! The i8254 programmable interval timer (ports 0x40-0x43, channel 0 on IRQ0) and
//! port 0x61 ("port B": channel 2's gate, the speaker enable, the refresh toggle and
//! channel 2's output, which Linux polls to calibrate the TSC).
//!
//! Counters are not stepped: each is a function of the time elapsed since it was
//! loaded, read from the [`Clock`] at 1.193182 MHz. Channel 0's interrupts come from
//! [`TimerDevice::tick`], at most one per call, so a stalled machine does not receive
//! a burst of catch-up interrupts.
//!
//! Channel 2's gate is port 0x61 bit 0, with the 8254's rules: in modes 0 and 4 a low
//! gate holds the count; in modes 2 and 3 it holds the count and forces OUT high, and
//! the rising edge reloads; in modes 1 and 5 the rising edge (re)starts the count.
//! Linux calibrates the TSC on it (mode 0, OUT2 polled in port 0x61 bit 5, or the MSB
//! read live); the tests run those loops against the model.

use std::sync::{Arc, Mutex};

use quern_core::bus::SharedDevice;
use quern_core::{Clock, IrqLine, TimerDevice};

use crate::port::{read_bytewise, write_bytewise, LogOnce, PortGroup, PortWindow};

/// The PIT's input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Period of the DRAM refresh toggle on port 0x61 bit 4.
const REFRESH_NS: u64 = 15_085;

fn ns_to_ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_HZ) / 1_000_000_000) as u64
}

/// The first nanosecond at which `ticks` have elapsed.
fn ticks_to_ns(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000_000).div_ceil(u128::from(PIT_HZ)) as u64
}

fn from_bcd(v: u16) -> u32 {
    (0..4).rev().fold(0, |acc, i| acc * 10 + u32::from((v >> (4 * i)) & 0xf).min(9))
}

fn to_bcd(v: u32) -> u16 {
    (0..4).fold(0, |acc, i| acc | (((v / 10u32.pow(i)) % 10) as u16) << (4 * i))
}

/// Which bytes of the count a read or write moves (control word bits 5:4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Access {
    #[default]
    Lo = 1,
    Hi = 2,
    LoHi = 3,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Channel {
    /// The counting mode, 0-5 (6 and 7 count as 2 and 3).
    mode: u8,
    /// The mode bits as written, which the status byte reports.
    mode_bits: u8,
    access: Access,
    bcd: bool,
    /// The count loaded, 1..=65536 (1..=10000 in BCD).
    reload: u32,
    /// A control word was written and no count since (status bit 6).
    null_count: bool,
    /// Counting: a count was loaded (and, in modes 1 and 5, the gate triggered it).
    armed: bool,
    /// Ticks counted before `since` (counting paused by a low gate, or in mode 0 by
    /// half of a new count).
    base_ticks: u64,
    /// When the current run of counting began; `None` while the gate holds it.
    since: Option<u64>,
    gate: bool,
    write_lsb: Option<u8>,
    read_msb_next: bool,
    latched_count: Option<u16>,
    latched_status: Option<u8>,
    /// Channel 0: interrupts already raised for this count (periods or one shot).
    irqs_done: u64,
}

impl Channel {
    fn modulus(&self) -> u32 {
        if self.bcd {
            10_000
        } else {
            65_536
        }
    }

    fn elapsed(&self, now: u64) -> u64 {
        self.base_ticks + self.since.map_or(0, |s| ns_to_ticks(now.saturating_sub(s)))
    }

    fn start(&mut self, now: u64) {
        self.armed = true;
        self.base_ticks = 0;
        self.irqs_done = 0;
        self.since = (self.gate || matches!(self.mode, 1 | 5)).then_some(now);
    }

    fn write_control(&mut self, v: u8) {
        let mode = (v >> 1) & 7;
        let access = match (v >> 4) & 3 {
            1 => Access::Lo,
            2 => Access::Hi,
            _ => Access::LoHi,
        };
        let gate = self.gate;
        // Modes 6 and 7 are aliases of 2 and 3.
        *self = Channel {
            mode: if mode > 5 { mode - 4 } else { mode },
            mode_bits: mode,
            access,
            bcd: v & 1 != 0,
            null_count: true,
            gate,
            ..Default::default()
        };
        self.reload = self.modulus();
    }

    fn write_count(&mut self, v: u8, now: u64) {
        let value = match (self.access, self.write_lsb.take()) {
            (Access::Lo, _) => u16::from(v),
            (Access::Hi, _) => u16::from(v) << 8,
            (Access::LoHi, None) => {
                self.write_lsb = Some(v);
                // Mode 0: the first byte stops counting and drives OUT low until the
                // second byte loads the new count.
                if self.mode == 0 {
                    self.pause(now);
                }
                return;
            }
            (Access::LoHi, Some(lsb)) => u16::from_le_bytes([lsb, v]),
        };
        let count = if self.bcd { from_bcd(value) } else { u32::from(value) };
        self.reload = if count == 0 { self.modulus() } else { count };
        self.null_count = false;
        // Modes 1 and 5 wait for a gate edge; the others count from now.
        if !matches!(self.mode, 1 | 5) {
            self.start(now);
        }
    }

    /// Stops counting, keeping the count where it is.
    fn pause(&mut self, now: u64) {
        self.base_ticks = self.elapsed(now);
        self.since = None;
    }

    fn count(&self, now: u64) -> u16 {
        let m = u64::from(self.modulus());
        let n = u64::from(self.reload.max(1));
        let d = self.elapsed(now);
        let raw = match self.mode {
            _ if !self.armed => n,
            2 => n - d % n,
            3 => {
                // Counts down by two, twice a period (the first half one tick longer
                // for odd counts).
                let (phase, half) = (d % n, n.div_ceil(2));
                n - 2 * if phase < half { phase } else { phase - half }
            }
            _ => (n + m - d % m) % m,
        } % m;
        if self.bcd {
            to_bcd(raw as u32)
        } else {
            raw as u16
        }
    }

    fn out(&self, now: u64) -> bool {
        let n = u64::from(self.reload.max(1));
        let d = self.elapsed(now);
        match self.mode {
            0 => self.armed && self.write_lsb.is_none() && d >= n,
            _ if !self.armed || (self.since.is_none() && matches!(self.mode, 2 | 3)) => true,
            1 => d >= n,
            2 => n < 2 || d % n != n - 1,
            3 => d % n < n.div_ceil(2),
            _ => d != n,
        }
    }

    fn status(&self, now: u64) -> u8 {
        (u8::from(self.out(now)) << 7)
            | (u8::from(self.null_count) << 6)
            | ((self.access as u8) << 4)
            | (self.mode_bits << 1)
            | u8::from(self.bcd)
    }

    fn latch_count(&mut self, now: u64) {
        if self.latched_count.is_none() {
            self.latched_count = Some(self.count(now));
            self.read_msb_next = false;
        }
    }

    fn read(&mut self, now: u64) -> u8 {
        if let Some(s) = self.latched_status.take() {
            return s;
        }
        let value = self.latched_count.unwrap_or_else(|| self.count(now));
        let [lo, hi] = value.to_le_bytes();
        match self.access {
            Access::Lo => {
                self.latched_count = None;
                lo
            }
            Access::Hi => {
                self.latched_count = None;
                hi
            }
            Access::LoHi => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    lo
                } else {
                    self.latched_count = None;
                    hi
                }
            }
        }
    }

    fn set_gate(&mut self, high: bool, now: u64) {
        if high == self.gate {
            return;
        }
        self.gate = high;
        match (self.mode, high) {
            // Modes 0 and 4 pause while the gate is low (mode 0 stays paused while
            // half of a new count is written).
            (0 | 4, false) => self.pause(now),
            (0 | 4, true) if !(self.mode == 0 && self.write_lsb.is_some()) => self.since = Some(now),
            // Modes 2 and 3 stop while low (OUT forced high) and reload on the
            // rising edge.
            (2 | 3, false) => self.pause(now),
            (2 | 3, true) if self.armed => self.start(now),
            // Modes 1 and 5 are started (or restarted) by the rising edge.
            (1 | 5, true) if !self.null_count || self.armed => self.start(now),
            _ => {}
        }
    }

    /// Channel 0's interrupt: whether OUT rose since the last call, and when it will
    /// rise next.
    fn due(&mut self, now: u64) -> (bool, Option<u64>) {
        let Some(since) = self.since.filter(|_| self.armed) else { return (false, None) };
        let n = u64::from(self.reload.max(1));
        let d = self.elapsed(now);
        let (fire, next_tick) = match self.mode {
            2 | 3 => {
                let periods = d / n;
                let fire = periods > self.irqs_done;
                self.irqs_done = self.irqs_done.max(periods);
                (fire, Some((self.irqs_done + 1) * n))
            }
            0 | 4 if self.irqs_done == 0 => {
                let fire = d >= n;
                self.irqs_done = u64::from(fire);
                (fire, (!fire).then_some(n))
            }
            _ => (false, None),
        };
        (fire, next_tick.map(|t| since + ticks_to_ns(t.saturating_sub(self.base_ticks))))
    }
}

/// The PIT and port 0x61.
pub struct Pit {
    clock: Arc<dyn Clock>,
    irq0: Arc<dyn IrqLine>,
    channels: [Channel; 3],
    /// Port 0x61 bits 0 (channel 2 gate) and 1 (speaker data enable).
    port_b: u8,
    unhandled: LogOnce,
}

impl Pit {
    pub fn new(clock: Arc<dyn Clock>, irq0: Arc<dyn IrqLine>) -> Self {
        let mut channels: [Channel; 3] = Default::default();
        // Channels 0 and 1 have their gates tied high.
        channels[0].gate = true;
        channels[1].gate = true;
        for c in &mut channels {
            c.write_control(0x36);
        }
        Pit { clock, irq0, channels, port_b: 0, unhandled: LogOnce::default() }
    }

    fn write_control(&mut self, v: u8, now: u64) {
        let sel = usize::from(v >> 6);
        if sel == 3 {
            // Read-back: bit 5 clear latches counts, bit 4 clear latches status.
            for (i, c) in self.channels.iter_mut().enumerate() {
                if v & (2 << i) != 0 {
                    if v & 0x20 == 0 {
                        c.latch_count(now);
                    }
                    if v & 0x10 == 0 && c.latched_status.is_none() {
                        c.latched_status = Some(c.status(now));
                    }
                }
            }
        } else if v & 0x30 == 0 {
            self.channels[sel].latch_count(now);
        } else {
            self.channels[sel].write_control(v);
        }
    }

    fn read_port_b(&self, now: u64) -> u8 {
        let refresh = ((now / REFRESH_NS) & 1) as u8;
        self.port_b | (refresh << 4) | (u8::from(self.channels[2].out(now)) << 5)
    }

    fn write_port_b(&mut self, v: u8, now: u64) {
        self.port_b = v & 3;
        self.channels[2].set_gate(v & 1 != 0, now);
    }
}

// Counts are kept as clock times (`since`), which go on from where they were: the
// machine restores its clock too.
quern_core::snapshot_fields!(Pit { channels, port_b });

impl TimerDevice for Pit {
    fn tick(&mut self, now_ns: u64) -> Option<u64> {
        let (fire, next) = self.channels[0].due(now_ns);
        if fire {
            self.irq0.pulse();
        }
        next
    }
}

/// The PIT's port ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PitWindow {
    /// 0x40-0x43: counters 0-2 and the control word.
    Counters,
    /// 0x61: port B.
    PortB,
}

impl PortGroup for Pit {
    type Window = PitWindow;
    fn window_read(&mut self, window: PitWindow, offset: u64, data: &mut [u8]) {
        let now = self.clock.now_ns();
        match window {
            PitWindow::Counters => read_bytewise(offset, data, 4, |off| match off {
                0..=2 => self.channels[off as usize].read(now),
                // The control word register is write-only.
                _ => 0xff,
            }),
            PitWindow::PortB => read_bytewise(offset, data, 1, |_| self.read_port_b(now)),
        }
    }
    fn window_write(&mut self, window: PitWindow, offset: u64, data: &[u8]) {
        let now = self.clock.now_ns();
        match window {
            PitWindow::Counters => write_bytewise(offset, data, 4, |off, v| match off {
                0..=2 => self.channels[off as usize].write_count(v, now),
                _ => self.write_control(v, now),
            }),
            PitWindow::PortB => write_bytewise(offset, data, 1, |_, v| {
                if v & 0xfc != 0 && self.unhandled.first(u32::from(v & 0xfc)) {
                    log::debug!("pit: port 0x61 write {v:#04x}: only bits 0-1 are modelled");
                }
                self.write_port_b(v, now)
            }),
        }
    }
}

/// The PIT's bus devices with their base ports and lengths: counters (0x40, 4) and
/// port B (0x61, 1).
pub fn pit_bus_devices(pit: &Arc<Mutex<Pit>>) -> Vec<(SharedDevice, u64, u64)> {
    vec![(PortWindow::shared(pit, PitWindow::Counters), 0x40, 4), (PortWindow::shared(pit, PitWindow::PortB), 0x61, 1)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use quern_core::clock::ManualClock;
    use quern_core::TestIrq;

    struct Rig {
        pit: Pit,
        clock: Arc<ManualClock>,
        irq: Arc<TestIrq>,
    }

    impl Rig {
        fn new() -> Self {
            let clock = Arc::new(ManualClock::default());
            let irq = Arc::new(TestIrq::default());
            Rig { pit: Pit::new(clock.clone(), irq.clone()), clock, irq }
        }
        fn out(&mut self, port: u64, v: u8) {
            self.pit.window_write(PitWindow::Counters, port, &[v]);
        }
        fn inb(&mut self, port: u64) -> u8 {
            let mut b = [0];
            self.pit.window_read(PitWindow::Counters, port, &mut b);
            b[0]
        }
        fn port_b(&mut self) -> u8 {
            let mut b = [0];
            self.pit.window_read(PitWindow::PortB, 0, &mut b);
            b[0]
        }
        fn set_port_b(&mut self, v: u8) {
            self.pit.window_write(PitWindow::PortB, 0, &[v]);
        }
        /// Moves the clock to just after `ticks` PIT ticks from the start.
        fn at_ticks(&self, ticks: u64) {
            self.clock.set_ns(ticks_to_ns(ticks));
        }
        fn read_latched(&mut self, ch: u8) -> u16 {
            self.out(3, ch << 6);
            u16::from_le_bytes([self.inb(u64::from(ch)), self.inb(u64::from(ch))])
        }
    }

    #[test]
    fn snapshot_counts_on_from_the_same_clock() {
        use quern_core::snapshot::Snapshot;
        let mut r = Rig::new();
        r.set_port_b(1);
        r.out(3, 0x34); // channel 0: mode 2, 1000
        r.out(0, 0xe8);
        r.out(0, 0x03);
        r.out(3, 0xb0); // channel 2: mode 0, 4096
        r.out(2, 0x00);
        r.out(2, 0x10);
        r.at_ticks(1500);
        assert!(r.pit.tick(r.clock.now_ns()).is_some());
        r.out(3, 0x40); // latch channel 1, read its LSB only
        r.inb(1);
        let mut q = Rig::new();
        q.clock.set_ns(r.clock.now_ns());
        crate::testutil::restore_into(&mut q.pit, &r.pit.save_state());
        assert_eq!(q.inb(1), r.inb(1), "the latched MSB");
        r.at_ticks(1600);
        q.at_ticks(1600);
        assert_eq!((q.read_latched(0), q.read_latched(2)), (400, 4096 - 1600));
        assert_eq!(q.port_b(), r.port_b());
        let now = r.clock.now_ns();
        assert_eq!(q.pit.tick(now), r.pit.tick(now));
        assert_eq!(q.irq.rising_edges(), 0, "the period already signalled is not again");
        r.at_ticks(2000);
        q.at_ticks(2000);
        assert_eq!(q.pit.tick(ticks_to_ns(2000)), r.pit.tick(ticks_to_ns(2000)));
        assert_eq!(q.irq.rising_edges(), 1);
        crate::testutil::assert_refuses_malformed(&mut q.pit, &["/channels"]);
    }

    #[test]
    fn mode2_periodic_interrupts_one_per_tick_after_a_stall() {
        let mut r = Rig::new();
        r.out(3, 0x34);
        r.out(0, (1193 & 0xff) as u8);
        r.out(0, (1193 >> 8) as u8);
        let first = r.pit.tick(0).unwrap();
        assert_eq!(first, ticks_to_ns(1193));
        assert_eq!(r.irq.rising_edges(), 0);
        r.clock.set_ns(first);
        let second = r.pit.tick(first).unwrap();
        assert_eq!(r.irq.rising_edges(), 1);
        assert_eq!(second, ticks_to_ns(2 * 1193));
        // One second late: one interrupt, and the next deadline is in the future.
        let late = first + 1_000_000_000;
        let next = r.pit.tick(late).unwrap();
        assert_eq!(r.irq.rising_edges(), 2);
        assert!(next > late && next - late <= ticks_to_ns(1193));
        assert_eq!(r.pit.tick(late), Some(next));
        assert_eq!(r.irq.rising_edges(), 2);
    }

    #[test]
    fn counter_latch_reads_the_count_down() {
        let mut r = Rig::new();
        r.out(3, 0x34);
        r.out(0, 0xe8);
        r.out(0, 0x03); // 1000
        r.at_ticks(100);
        assert_eq!(r.read_latched(0), 900);
        // The latch holds while time moves.
        r.out(3, 0x00);
        r.at_ticks(150);
        assert_eq!(u16::from_le_bytes([r.inb(0), r.inb(0)]), 900);
        r.at_ticks(1250);
        assert_eq!(r.read_latched(0), 750, "mode 2 reloads");
    }

    #[test]
    fn reload_zero_means_65536() {
        let mut r = Rig::new();
        r.out(3, 0x34);
        r.out(0, 0);
        r.out(0, 0);
        r.at_ticks(1);
        assert_eq!(r.read_latched(0), 65535);
        assert_eq!(r.pit.tick(0), Some(ticks_to_ns(65536)));
    }

    #[test]
    fn mode0_one_shot_interrupts_once() {
        let mut r = Rig::new();
        r.out(3, 0x30);
        r.out(0, 100);
        r.out(0, 0);
        assert_eq!(r.pit.tick(0), Some(ticks_to_ns(100)));
        r.at_ticks(99);
        assert_eq!(r.pit.tick(r.clock.now_ns()), Some(ticks_to_ns(100)));
        r.at_ticks(100);
        assert_eq!(r.pit.tick(r.clock.now_ns()), None);
        assert_eq!(r.irq.rising_edges(), 1);
        r.at_ticks(10_000);
        assert_eq!(r.pit.tick(r.clock.now_ns()), None);
        assert_eq!(r.irq.rising_edges(), 1);
        // The counter wraps on after the terminal count.
        r.at_ticks(101);
        assert_eq!(r.read_latched(0), 0xffff);
    }

    #[test]
    fn linux_style_calibration_on_channel2_and_port_b() {
        let mut r = Rig::new();
        // Gate high, speaker off; mode 0, lo/hi; 0xffff.
        let b = r.port_b();
        r.set_port_b((b & !2) | 1);
        r.out(3, 0xb0);
        r.out(2, 0xff);
        r.out(2, 0xff);
        assert_eq!(r.port_b() & 0x20, 0, "OUT2 low while counting");
        r.at_ticks(0x100);
        assert_eq!(r.inb(2), 0xff);
        assert_eq!(r.inb(2), 0xfe, "MSB read live after LSB");
        r.at_ticks(0xffff);
        assert_eq!(r.port_b() & 0x21, 0x21, "OUT2 high at terminal count");
    }

    /// Counts started mid-run can be a tick off: nanoseconds round to ticks.
    fn near(count: u16, expected: u16) {
        assert!(count.abs_diff(expected) <= 1, "{count} is not about {expected}");
    }

    #[test]
    fn gate_low_pauses_mode0_and_restarts_mode2() {
        let mut r = Rig::new();
        r.set_port_b(1);
        r.out(3, 0xb0);
        r.out(2, 100);
        r.out(2, 0);
        r.at_ticks(10);
        r.set_port_b(0);
        r.at_ticks(500);
        assert_eq!(r.read_latched(2), 90);
        assert_eq!(r.port_b() & 0x20, 0);
        r.set_port_b(1);
        r.at_ticks(580);
        near(r.read_latched(2), 10);

        r.out(3, 0xb4); // mode 2
        r.out(2, 100);
        r.out(2, 0);
        r.at_ticks(630);
        near(r.read_latched(2), 50);
        r.set_port_b(0);
        r.at_ticks(700);
        r.set_port_b(1);
        r.at_ticks(710);
        near(r.read_latched(2), 90); // the rising gate reloaded
    }

    #[test]
    fn mode3_square_wave_and_refresh_toggle() {
        let mut r = Rig::new();
        r.set_port_b(1);
        r.out(3, 0xb6);
        r.out(2, 100);
        r.out(2, 0);
        r.at_ticks(10);
        assert_eq!(r.port_b() & 0x20, 0x20);
        assert_eq!(r.read_latched(2), 80);
        r.at_ticks(60);
        assert_eq!(r.port_b() & 0x20, 0);
        r.at_ticks(110);
        assert_eq!(r.port_b() & 0x20, 0x20);
        r.clock.set_ns(0);
        let a = r.port_b() & 0x10;
        r.clock.set_ns(REFRESH_NS);
        assert_ne!(r.port_b() & 0x10, a);
    }

    #[test]
    fn read_back_status_and_count() {
        let mut r = Rig::new();
        r.out(3, 0x72); // channel 1, lo/hi, mode 1
        assert!(r.pit.channels[1].null_count);
        r.out(3, 0xe4); // read-back status of channel 1
        assert_eq!(r.inb(1), 0x80 | 0x40 | 0x30 | 0x02);
        r.out(1, 0x10);
        r.out(1, 0x00);
        r.out(3, 0xc4); // count and status: status first
        assert_eq!(r.inb(1) & 0x40, 0, "count loaded");
        assert_eq!(u16::from_le_bytes([r.inb(1), r.inb(1)]), 0x10);
    }

    #[test]
    fn bcd_counts_in_decimal() {
        let mut r = Rig::new();
        r.out(3, 0x35); // channel 0, lo/hi, mode 2, BCD
        r.out(0, 0x00);
        r.out(0, 0x10); // 1000 decimal
        r.at_ticks(1);
        assert_eq!(r.read_latched(0), 0x0999);
        assert_eq!(r.pit.tick(0), Some(ticks_to_ns(1000)));
    }

    #[test]
    fn gate_low_holds_the_count_in_modes_2_and_3() {
        let mut r = Rig::new();
        r.set_port_b(1);
        for (cw, held) in [(0xb4, 60), (0xb6, 20)] {
            r.clock.set_ns(0);
            r.out(3, cw);
            r.out(2, 100);
            r.out(2, 0);
            r.at_ticks(40);
            r.set_port_b(0);
            r.at_ticks(90);
            assert_eq!(r.read_latched(2), held, "mode {}: counting stopped, count held", (cw >> 1) & 7);
            assert_eq!(r.port_b() & 0x20, 0x20, "OUT forced high");
            r.set_port_b(1);
            assert_eq!(r.read_latched(2), 100, "the rising gate reloads");
        }
    }

    #[test]
    fn status_reports_the_mode_bits_as_written() {
        let mut r = Rig::new();
        r.out(3, 0x7c); // channel 1, lo/hi, mode 6 (an alias of mode 2)
        r.out(1, 10);
        r.out(1, 0);
        r.out(3, 0xe4);
        assert_eq!(r.inb(1), 0x80 | 0x30 | 0x0c);
        r.at_ticks(9);
        assert_eq!(r.read_latched(1), 1, "counts as mode 2");
    }

    #[test]
    fn mode0_first_byte_of_a_new_count_stops_counting_and_drives_out_low() {
        let mut r = Rig::new();
        r.set_port_b(1);
        r.out(3, 0xb0);
        r.out(2, 10);
        r.out(2, 0);
        r.at_ticks(20);
        assert_eq!(r.port_b() & 0x20, 0x20);
        r.out(2, 50); // LSB only
        assert_eq!(r.port_b() & 0x20, 0, "OUT low at once");
        let held = r.read_latched(2);
        r.at_ticks(120);
        assert_eq!(r.read_latched(2), held, "not counting");
        r.set_port_b(0);
        r.set_port_b(1);
        r.at_ticks(130);
        assert_eq!(r.read_latched(2), held, "the gate does not restart it either");
        r.out(2, 0); // MSB: 50 loads and counts
        r.at_ticks(170);
        assert_eq!(r.read_latched(2), 10);
        r.at_ticks(180);
        assert_eq!(r.port_b() & 0x20, 0x20);
    }

    #[test]
    fn mode1_and_mode5_start_on_the_gate_edge() {
        let mut r = Rig::new();
        r.out(3, 0xb2); // mode 1
        r.out(2, 50);
        r.out(2, 0);
        r.at_ticks(10);
        assert_eq!(r.port_b() & 0x20, 0x20, "OUT high until triggered");
        assert_eq!(r.read_latched(2), 50, "waits for the gate");
        r.set_port_b(1);
        r.at_ticks(30);
        assert_eq!(r.port_b() & 0x20, 0, "one-shot pulse low");
        assert_eq!(r.read_latched(2), 30);
        r.set_port_b(0);
        r.set_port_b(1); // retrigger
        r.at_ticks(70);
        assert_eq!(r.read_latched(2), 10);
        r.at_ticks(80);
        assert_eq!(r.port_b() & 0x20, 0x20);

        r.out(3, 0xba); // mode 5
        r.out(2, 20);
        r.out(2, 0);
        r.set_port_b(0);
        r.set_port_b(1);
        r.at_ticks(99);
        assert_eq!(r.port_b() & 0x20, 0x20);
        r.at_ticks(100);
        assert_eq!(r.port_b() & 0x20, 0, "strobe at terminal count");
        r.at_ticks(101);
        assert_eq!(r.port_b() & 0x20, 0x20);
    }

    /// A guest running Linux's PIT loops (arch/x86/kernel/tsc.c) against the model:
    /// each port access takes `io_ns`, the TSC counts nanoseconds (1 GHz).
    struct Guest {
        r: Rig,
        io_ns: u64,
    }

    impl Guest {
        fn new(io_ns: u64) -> Self {
            let r = Rig::new();
            r.clock.set_ns(1_000_000_007);
            Guest { r, io_ns }
        }
        fn inb(&mut self, port: u16) -> u8 {
            self.r.clock.advance_ns(self.io_ns / 2);
            let v = if port == 0x61 { self.r.port_b() } else { self.r.inb(u64::from(port - 0x40)) };
            self.r.clock.advance_ns(self.io_ns - self.io_ns / 2);
            v
        }
        fn outb(&mut self, v: u8, port: u16) {
            self.r.clock.advance_ns(self.io_ns / 2);
            if port == 0x61 {
                self.r.set_port_b(v);
            } else {
                self.r.out(u64::from(port - 0x40), v);
            }
            self.r.clock.advance_ns(self.io_ns - self.io_ns / 2);
        }
        fn get_cycles(&self) -> u64 {
            self.r.clock.now_ns()
        }
        fn pit_verify_msb(&mut self, val: u8) -> bool {
            self.inb(0x42);
            self.inb(0x42) == val
        }
        fn pit_expect_msb(&mut self, val: u8) -> (bool, u64, u64) {
            let (mut count, mut tsc, mut prev_tsc) = (0, 0, 0);
            while count < 50_000 && self.pit_verify_msb(val) {
                prev_tsc = tsc;
                tsc = self.get_cycles();
                count += 1;
            }
            (count > 5, tsc, self.get_cycles() - prev_tsc)
        }
        /// quick_pit_calibrate: the TSC rate in kHz, 0 for "Fast TSC calibration
        /// failed".
        fn quick_pit_calibrate(&mut self) -> u64 {
            const MAX_QUICK_PIT_ITERATIONS: u64 = 50 * PIT_HZ / 1000 / 256;
            let b = self.inb(0x61);
            self.outb((b & !0x02) | 0x01, 0x61);
            self.outb(0xb0, 0x43);
            self.outb(0xff, 0x42);
            self.outb(0xff, 0x42);
            self.pit_verify_msb(0);
            let (ok, tsc, d1) = self.pit_expect_msb(0xff);
            if !ok {
                return 0;
            }
            for i in 1..=MAX_QUICK_PIT_ITERATIONS {
                let (ok, t, d2) = self.pit_expect_msb(0xff - i as u8);
                if !ok {
                    return 0;
                }
                let delta = t - tsc;
                if i == 1 && d1 + d2 >= (delta * MAX_QUICK_PIT_ITERATIONS) >> 11 {
                    return 0;
                }
                if d1 + d2 >= delta >> 11 {
                    continue;
                }
                if !self.pit_verify_msb(0xfe - i as u8) {
                    return 0;
                }
                return delta * PIT_HZ / (i * 256 * 1000);
            }
            0
        }
        /// pit_calibrate_tsc: kHz, or `u64::MAX` for a failed sanity check.
        fn pit_calibrate_tsc(&mut self, latch: u16, ms: u64, loopmin: u32) -> u64 {
            let b = self.inb(0x61);
            self.outb((b & !0x02) | 0x01, 0x61);
            self.outb(0xb0, 0x43);
            self.outb(latch as u8, 0x42);
            self.outb((latch >> 8) as u8, 0x42);
            let t1 = self.get_cycles();
            let (mut tsc, mut t2) = (t1, t1);
            let (mut pitcnt, mut tscmin, mut tscmax) = (0, u64::MAX, 0);
            while self.inb(0x61) & 0x20 == 0 {
                t2 = self.get_cycles();
                let delta = t2 - tsc;
                tsc = t2;
                tscmin = tscmin.min(delta);
                tscmax = tscmax.max(delta);
                pitcnt += 1;
                assert!(pitcnt < 10_000_000, "OUT2 never rose");
            }
            if pitcnt < loopmin || tscmax > 10 * tscmin {
                return u64::MAX;
            }
            (t2 - t1) / ms
        }
    }

    fn ppm(khz: u64) -> u64 {
        khz.abs_diff(1_000_000)
    }

    #[test]
    fn linux_quick_pit_calibrate_finds_the_tsc_rate() {
        for io_ns in [50, 200, 700, 1000, 2000] {
            let khz = Guest::new(io_ns).quick_pit_calibrate();
            assert!(ppm(khz) < 500, "{io_ns} ns per access: {khz} kHz");
        }
    }

    #[test]
    fn linux_pit_calibrate_tsc_finds_the_tsc_rate() {
        // CAL_LATCH (10 ms, at least 1000 loops) and CAL2_LATCH (50 ms, 5000 loops).
        for (latch, ms, loopmin) in [(PIT_HZ / 100, 10, 1000), (PIT_HZ / 20, 50, 5000)] {
            for io_ns in [50, 500, 1500] {
                let khz = Guest::new(io_ns).pit_calibrate_tsc(latch as u16, ms, loopmin);
                assert!(ppm(khz) < 1000, "{io_ns} ns per access, {ms} ms: {khz} kHz");
            }
        }
    }

    #[test]
    fn linux_calibration_from_a_used_channel_2() {
        // Whatever was left behind (a beep in mode 3 with the gate high, a status and
        // a count latched and never read, half of a two-byte read) does not matter:
        // the control word resets the channel.
        let mut g = Guest::new(300);
        g.outb(0x03, 0x61);
        g.outb(0xb6, 0x43);
        g.outb(0x34, 0x42);
        g.outb(0x12, 0x42);
        g.inb(0x42);
        g.outb(0xd8, 0x43);
        let khz = g.quick_pit_calibrate();
        assert!(ppm(khz) < 500, "{khz} kHz");
        assert_eq!(g.inb(0x61) & 0x03, 0x01, "gate high, speaker off");
        g.outb(0xe8, 0x43); // read-back: status of channel 2 first
        assert_eq!(g.inb(0x42) & 0x3f, 0x30, "lo/hi, mode 0, binary");
        let khz = g.pit_calibrate_tsc((PIT_HZ / 100) as u16, 10, 1000);
        assert!(ppm(khz) < 1000, "{khz} kHz");
        assert_eq!(g.inb(0x61) & 0x20, 0x20, "OUT2 stays high after the terminal count");
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let mut r = Rig::new();
        let mut b = [0u8; 4];
        r.pit.window_read(PitWindow::Counters, 0, &mut b);
        assert_eq!(b[3], 0xff);
        r.pit.window_write(PitWindow::Counters, 2, &[1, 2, 3, 4]);
        r.pit.window_read(PitWindow::PortB, 0, &mut b);
        r.pit.window_write(PitWindow::PortB, 0, &[0xff, 0xff]);
        for v in 0..=255 {
            r.out(3, v);
            r.out(0, v);
            r.inb(0);
            r.pit.tick(r.clock.now_ns());
        }
    }
}
