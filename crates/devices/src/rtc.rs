//! The MC146818 real-time clock and its 128 bytes of CMOS RAM (index port 0x70, data
//! port 0x71, IRQ8).
//!
//! Guest time is the host wall clock at creation plus the machine's [`Clock`], plus
//! whatever offset the guest set. Time registers are computed when read, in the BCD or
//! binary and 12- or 24-hour format register B selects; while B's SET bit is on they
//! are frozen and writable, and clearing SET starts the clock from them. Periodic
//! (register A's rate), update-ended and alarm interrupts come from
//! [`TimerDevice::tick`]; IRQ8 goes high with register C's IRQF and low when the guest
//! reads C.

use std::sync::Arc;
use std::time::SystemTime;

use quern_core::snapshot::{field, Snapshot, State};
use quern_core::{BusDevice, Clock, IrqLine, TimerDevice};

use crate::port::{read_bytewise, write_bytewise};
use crate::snapshot::array_field;

const NS_PER_SEC: i128 = 1_000_000_000;

const SECONDS: usize = 0x00;
const SECONDS_ALARM: usize = 0x01;
const MINUTES: usize = 0x02;
const MINUTES_ALARM: usize = 0x03;
const HOURS: usize = 0x04;
const HOURS_ALARM: usize = 0x05;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
const CENTURY: usize = 0x32;

const A_UIP: u8 = 0x80;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24H: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const D_VRT: u8 = 0x80;

/// UIP is set this long before each update (the datasheet's 244 µs).
const UIP_NS: i128 = 244_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// The date of a day count since 1970-01-01: (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The MC146818 RTC and CMOS RAM.
pub struct Rtc {
    clock: Arc<dyn Clock>,
    irq: Arc<dyn IrqLine>,
    cmos: [u8; 128],
    index: u8,
    /// Guest wall time (Unix ns) when the clock read 0.
    base_ns: i128,
    /// Periodic interrupts signalled: the number of periods since the clock's start.
    periods_done: u64,
    /// Update cycles signalled: the guest's Unix second of the last one.
    seconds_done: i128,
}

impl Rtc {
    pub fn new(clock: Arc<dyn Clock>, irq8: Arc<dyn IrqLine>, wall_start: SystemTime) -> Self {
        let wall_ns = match wall_start.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        let now = clock.now_ns();
        let mut cmos = [0; 128];
        cmos[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz periodic rate
        cmos[REG_B] = B_24H;
        cmos[REG_D] = D_VRT;
        let mut rtc =
            Rtc { clock, irq: irq8, cmos, index: 0, base_ns: wall_ns - now as i128, periods_done: 0, seconds_done: 0 };
        rtc.resync(now);
        rtc
    }

    /// Stores a raw CMOS byte (for the machine's configuration bytes).
    pub fn set_cmos(&mut self, index: u8, value: u8) {
        if let Some(b) = self.cmos.get_mut(usize::from(index)) {
            *b = value;
        }
    }

    /// A raw CMOS byte, as last stored.
    pub fn cmos(&self, index: u8) -> u8 {
        self.cmos.get(usize::from(index)).copied().unwrap_or(0xff)
    }

    /// Fills the memory-size bytes the way QEMU does and SeaBIOS reads them.
    pub fn set_memory_size(&mut self, below_4g: u64, above_4g: u64) {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        let mut put16 = |lo: u8, v: u64| {
            let v = v.min(0xffff) as u16;
            self.set_cmos(lo, v as u8);
            self.set_cmos(lo + 1, (v >> 8) as u8);
        };
        put16(0x15, (below_4g / KIB).min(640));
        let extended = below_4g.saturating_sub(MIB) / KIB;
        put16(0x17, extended);
        put16(0x30, extended);
        put16(0x34, below_4g.saturating_sub(16 * MIB) / (64 * KIB));
        let high = (above_4g / (64 * KIB)).min(0xff_ffff);
        for (i, reg) in [0x5b, 0x5c, 0x5d].into_iter().enumerate() {
            self.set_cmos(reg, (high >> (8 * i)) as u8);
        }
    }

    /// Records the number of CPUs for the firmware (0x5f holds n - 1).
    pub fn set_cpu_count(&mut self, n: u32) {
        self.set_cmos(0x5f, n.saturating_sub(1).min(0xff) as u8);
    }

    fn reg_b(&self) -> u8 {
        self.cmos[REG_B]
    }

    /// Whether the time base runs: register A's divider in its normal setting.
    fn oscillating(&self) -> bool {
        (self.cmos[REG_A] >> 4) & 7 == 2
    }

    /// Whether the time updates: the time base runs and SET is clear.
    fn running(&self) -> bool {
        self.oscillating() && self.reg_b() & B_SET == 0
    }

    fn guest_ns(&self, now: u64) -> i128 {
        self.base_ns + now as i128
    }

    fn encode(&self, v: i64) -> u8 {
        let v = v.rem_euclid(100) as u8;
        if self.reg_b() & B_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode(&self, v: u8) -> i64 {
        let v = i64::from(v);
        if self.reg_b() & B_BINARY != 0 {
            v
        } else {
            (v >> 4) * 10 + (v & 0xf)
        }
    }

    fn encode_hour(&self, h: i64) -> u8 {
        if self.reg_b() & B_24H != 0 {
            self.encode(h)
        } else {
            let h12 = if h % 12 == 0 { 12 } else { h % 12 };
            self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
        }
    }

    fn decode_hour(&self, v: u8) -> i64 {
        if self.reg_b() & B_24H != 0 {
            self.decode(v)
        } else {
            self.decode(v & 0x7f) % 12 + if v & 0x80 != 0 { 12 } else { 0 }
        }
    }

    /// Writes the guest's current time into the time registers.
    fn store_time(&mut self, now: u64) {
        let secs = self.guest_ns(now).div_euclid(NS_PER_SEC) as i64;
        let (days, tod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let (y, m, d) = civil_from_days(days);
        self.cmos[SECONDS] = self.encode(tod % 60);
        self.cmos[MINUTES] = self.encode(tod / 60 % 60);
        self.cmos[HOURS] = self.encode_hour(tod / 3600);
        // Day 0 was a Thursday; the RTC counts Sunday as 1.
        self.cmos[WEEKDAY] = self.encode((days + 4).rem_euclid(7) + 1);
        self.cmos[DAY] = self.encode(d);
        self.cmos[MONTH] = self.encode(m);
        self.cmos[YEAR] = self.encode(y);
        self.cmos[CENTURY] = self.encode(y.div_euclid(100));
    }

    /// Starts the guest's clock from the time registers, at the start of a second.
    fn load_time(&mut self, now: u64) {
        let c = &self.cmos;
        let year = self.decode(c[CENTURY]) * 100 + self.decode(c[YEAR]);
        let month = self.decode(c[MONTH]).clamp(1, 12);
        let day = self.decode(c[DAY]).clamp(1, 31);
        let secs = days_from_civil(year, month, day) * 86_400
            + self.decode_hour(c[HOURS]) * 3600
            + self.decode(c[MINUTES]) * 60
            + self.decode(c[SECONDS]);
        self.base_ns = i128::from(secs) * NS_PER_SEC - now as i128;
        self.resync(now);
    }

    /// The length of a periodic-interrupt period in 32.768 kHz ticks, if enabled.
    fn period_ticks(&self) -> Option<u64> {
        let rs = self.cmos[REG_A] & 0xf;
        let code = match rs {
            0 => return None,
            1 | 2 => rs + 7,
            _ => rs,
        };
        Some(1 << (code - 1))
    }

    fn periods_at(&self, now: u64, period: u64) -> u64 {
        (u128::from(now) * 32_768 / 1_000_000_000 / u128::from(period)) as u64
    }

    /// Forgets events already due, so enabling an interrupt does not fire at once for
    /// the past.
    fn resync(&mut self, now: u64) {
        if let Some(p) = self.period_ticks() {
            self.periods_done = self.periods_at(now, p);
        }
        self.seconds_done = self.guest_ns(now).div_euclid(NS_PER_SEC);
    }

    fn update_irq(&mut self) {
        let c = self.cmos[REG_C];
        if c & C_IRQF == 0 && c & self.reg_b() & (C_PF | C_AF | C_UF) != 0 {
            self.cmos[REG_C] |= C_IRQF;
            self.irq.set_level(true);
        }
    }

    fn alarm_matches(&self) -> bool {
        [(SECONDS_ALARM, SECONDS), (MINUTES_ALARM, MINUTES), (HOURS_ALARM, HOURS)]
            .iter()
            .all(|&(a, t)| self.cmos[a] & 0xc0 == 0xc0 || self.cmos[a] == self.cmos[t])
    }

    fn read_data(&mut self, now: u64) -> u8 {
        let i = usize::from(self.index);
        match i {
            SECONDS | MINUTES | HOURS | WEEKDAY..=YEAR | CENTURY if self.reg_b() & B_SET == 0 => {
                self.store_time(now);
                self.cmos[i]
            }
            REG_A => {
                let to_update = NS_PER_SEC - self.guest_ns(now).rem_euclid(NS_PER_SEC);
                let uip = self.running() && to_update <= UIP_NS;
                self.cmos[REG_A] | if uip { A_UIP } else { 0 }
            }
            REG_C => {
                // Bring the flags up to date before the read clears them.
                self.tick(now);
                let c = std::mem::take(&mut self.cmos[REG_C]);
                if c & C_IRQF != 0 {
                    self.irq.set_level(false);
                }
                c
            }
            _ => self.cmos[i],
        }
    }

    fn write_data(&mut self, v: u8, now: u64) {
        let i = usize::from(self.index);
        match i {
            SECONDS | MINUTES | HOURS | WEEKDAY..=YEAR | CENTURY => {
                if self.reg_b() & B_SET != 0 {
                    self.cmos[i] = v;
                } else {
                    self.store_time(now);
                    self.cmos[i] = v;
                    self.load_time(now);
                }
            }
            REG_A => {
                self.cmos[REG_A] = v & !A_UIP;
                self.resync(now);
            }
            REG_B => {
                let old = self.reg_b();
                if old & B_SET == 0 {
                    // Freeze the time in the old format before the format changes.
                    self.store_time(now);
                }
                // Setting SET clears UIE (datasheet).
                self.cmos[REG_B] = if v & B_SET != 0 { v & !B_UIE } else { v };
                if old & B_SET == 0 && v & B_SET == 0 {
                    // A format change alone: keep the clock as it was.
                    self.resync(now);
                } else if old & B_SET != 0 && v & B_SET == 0 {
                    self.load_time(now);
                }
                self.update_irq();
            }
            REG_C | REG_D => {}
            _ => self.cmos[i] = v,
        }
    }
}

impl TimerDevice for Rtc {
    fn tick(&mut self, now_ns: u64) -> Option<u64> {
        if !self.oscillating() {
            return None;
        }
        let b = self.reg_b();
        let mut next: Option<u64> = None;
        if let Some(p) = self.period_ticks().filter(|_| b & B_PIE != 0) {
            let done = self.periods_at(now_ns, p);
            if done > self.periods_done {
                self.periods_done = done;
                self.cmos[REG_C] |= C_PF;
            }
            let due = (u128::from(self.periods_done + 1) * u128::from(p) * 1_000_000_000).div_ceil(32_768);
            next = Some(due as u64);
        }
        if b & (B_UIE | B_AIE) != 0 && b & B_SET == 0 {
            let second = self.guest_ns(now_ns).div_euclid(NS_PER_SEC);
            if second > self.seconds_done {
                self.seconds_done = second;
                self.cmos[REG_C] |= C_UF;
                self.store_time(now_ns);
                if self.alarm_matches() {
                    self.cmos[REG_C] |= C_AF;
                }
            }
            let due = ((self.seconds_done + 1) * NS_PER_SEC - self.base_ns).max(0) as u64;
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        self.update_irq();
        next
    }
}

/// The CMOS bytes, the index and the guest's clock (kept against the machine's clock,
/// which is restored too). IRQ8's level is register C's IRQF.
impl Snapshot for Rtc {
    fn save_state(&self) -> State {
        // A guest may set its clock past 2262, beyond a JSON number's i64 nanoseconds.
        serde_json::json!({
            "cmos": &self.cmos[..],
            "index": self.index,
            "base_ns": self.base_ns.to_string(),
            "periods_done": self.periods_done,
            "seconds_done": self.seconds_done,
        })
    }

    fn restore_state(&mut self, state: &State) -> Result<(), String> {
        let cmos: [u8; 128] = array_field(state, "cmos")?;
        let index: u8 = field(state, "index")?;
        if usize::from(index) >= cmos.len() {
            return Err(format!("field 'index': {index} is past the CMOS"));
        }
        let base_ns = field::<String>(state, "base_ns")?.parse().map_err(|e| format!("field 'base_ns': {e}"))?;
        let periods_done = field(state, "periods_done")?;
        let seconds_done = field(state, "seconds_done")?;
        (self.cmos, self.index, self.base_ns) = (cmos, index, base_ns);
        (self.periods_done, self.seconds_done) = (periods_done, seconds_done);
        self.irq.set_level(self.cmos[REG_C] & C_IRQF != 0);
        Ok(())
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let now = self.clock.now_ns();
        // The index port is write-only.
        read_bytewise(offset, data, 2, |off| if off == 0 { 0xff } else { self.read_data(now) });
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let now = self.clock.now_ns();
        write_bytewise(offset, data, 2, |off, v| {
            if off == 0 {
                // Bit 7 masks NMIs, which this machine does not raise.
                self.index = v & 0x7f;
            } else {
                self.write_data(v, now);
            }
        });
    }
}

#[cfg(test)]
mod tests;
