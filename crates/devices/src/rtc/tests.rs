use super::*;
use quern_core::clock::ManualClock;
use quern_core::TestIrq;
use std::time::Duration;

/// 2024-02-29 23:59:58 UTC, a Thursday.
const LEAP_EVE: u64 = 1_709_251_198;

struct Rig {
    rtc: Rtc,
    clock: Arc<ManualClock>,
    irq: Arc<TestIrq>,
}

impl Rig {
    fn new() -> Self {
        Self::starting(SystemTime::UNIX_EPOCH + Duration::from_secs(LEAP_EVE))
    }
    fn starting(wall: SystemTime) -> Self {
        let clock = Arc::new(ManualClock::default());
        let irq = Arc::new(TestIrq::default());
        Rig { rtc: Rtc::new(clock.clone(), irq.clone(), wall), clock, irq }
    }
    fn get(&mut self, index: u8) -> u8 {
        self.rtc.write(0, &[index]);
        let mut b = [0];
        self.rtc.read(1, &mut b);
        b[0]
    }
    fn set(&mut self, index: u8, v: u8) {
        self.rtc.write(0, &[index]);
        self.rtc.write(1, &[v]);
    }
    fn time(&mut self) -> [u8; 8] {
        [0x32, 0x09, 0x08, 0x07, 0x06, 0x04, 0x02, 0x00].map(|i| self.get(i))
    }
    fn tick(&mut self) -> Option<u64> {
        let now = self.clock.now_ns();
        self.rtc.tick(now)
    }
}

#[test]
fn reads_wall_time_in_bcd_and_rolls_over_the_leap_day() {
    let mut r = Rig::new();
    // century, year, month, day, weekday, hours, minutes, seconds
    assert_eq!(r.time(), [0x20, 0x24, 0x02, 0x29, 5, 0x23, 0x59, 0x58]);
    r.clock.advance_ns(2_000_000_000);
    assert_eq!(r.time(), [0x20, 0x24, 0x03, 0x01, 6, 0x00, 0x00, 0x00]);
    assert_eq!(r.get(0x0d), 0x80, "valid RAM and time");
}

#[test]
fn binary_and_twelve_hour_formats() {
    let mut r = Rig::new();
    r.set(0x0b, B_BINARY); // binary, 12-hour
    assert_eq!(r.get(0x04), 0x80 | 11, "11 PM");
    assert_eq!(r.get(0x00), 58);
    r.set(0x0b, B_BINARY | B_24H);
    assert_eq!(r.get(0x04), 23);
}

#[test]
fn set_freezes_and_writing_the_time_moves_the_clock() {
    let mut r = Rig::new();
    r.set(0x0b, B_SET | B_24H);
    for (i, v) in [(0x32, 0x19), (0x09, 0x99), (0x08, 0x12), (0x07, 0x31), (0x04, 0x23), (0x02, 0x59), (0x00, 0x59)] {
        r.set(i, v);
    }
    r.clock.advance_ns(5_000_000_000);
    assert_eq!(r.get(0x00), 0x59, "frozen while SET");
    assert_eq!(r.get(0x0a) & A_UIP, 0, "no update in progress while SET");
    r.set(0x0b, B_24H);
    r.clock.advance_ns(1_000_000_000);
    assert_eq!(r.time(), [0x20, 0x00, 0x01, 0x01, 7, 0x00, 0x00, 0x00], "2000-01-01 was a Saturday");
    // A single register written while running keeps the rest.
    r.set(0x02, 0x30);
    r.clock.advance_ns(1_000_000_000);
    assert_eq!(r.time(), [0x20, 0x00, 0x01, 0x01, 7, 0x00, 0x30, 0x01]);
}

#[test]
fn update_in_progress_near_the_end_of_a_second() {
    let mut r = Rig::new();
    assert_eq!(r.get(0x0a), 0x26);
    r.clock.advance_ns(999_800_000);
    assert_eq!(r.get(0x0a), 0x26 | A_UIP);
    r.clock.advance_ns(300_000);
    assert_eq!(r.get(0x0a), 0x26);
}

#[test]
fn periodic_interrupt_until_register_c_is_read() {
    let mut r = Rig::new();
    assert_eq!(r.tick(), None, "nothing enabled");
    r.set(0x0b, B_24H | B_PIE);
    let due = r.tick().unwrap();
    assert_eq!(due, 976_563, "1024 Hz");
    assert!(!r.irq.level());
    r.clock.set_ns(due);
    assert_eq!(r.tick(), Some(1_953_125));
    assert!(r.irq.level());
    // A long stall: one more period flag, not a burst.
    r.clock.set_ns(1_000_000_000);
    r.tick();
    assert_eq!(r.get(0x0c), C_IRQF | C_PF);
    assert!(!r.irq.level());
    assert_eq!(r.get(0x0c), 0);
    // 2 Hz from rate select 15.
    r.set(0x0a, 0x2f);
    assert_eq!(r.tick(), Some(1_000_000_000 + 500_000_000));
    assert_eq!(r.irq.rising_edges(), 1);
}

#[test]
fn update_ended_and_alarm_interrupts() {
    let mut r = Rig::new();
    r.set(0x01, 0x00); // alarm at hh:mm:00, any hour and minute
    r.set(0x03, 0xc0);
    r.set(0x05, 0xc0);
    r.set(0x0b, B_24H | B_UIE | B_AIE);
    let due = r.tick().unwrap();
    assert_eq!(due, 1_000_000_000);
    r.clock.set_ns(due);
    r.tick();
    assert_eq!(r.get(0x0c), C_IRQF | C_UF, "23:59:59: no alarm");
    r.clock.set_ns(2_000_000_000);
    r.tick();
    assert!(r.irq.level());
    assert_eq!(r.get(0x0c), C_IRQF | C_UF | C_AF, "00:00:00 matches");
    assert_eq!(r.irq.rising_edges(), 2);
}

#[test]
fn set_clears_uie_and_stops_updates() {
    let mut r = Rig::new();
    r.set(0x0b, B_SET | B_UIE | B_24H);
    assert_eq!(r.get(0x0b), B_SET | B_24H);
    assert_eq!(r.tick(), None);
}

#[test]
fn memory_size_bytes_as_seabios_reads_them() {
    let mut r = Rig::new();
    r.rtc.set_memory_size(64 << 20, 0);
    let word = |r: &Rig, i: u8| u16::from_le_bytes([r.rtc.cmos(i), r.rtc.cmos(i + 1)]);
    assert_eq!(word(&r, 0x15), 640);
    assert_eq!(word(&r, 0x17), 63 * 1024);
    assert_eq!(word(&r, 0x30), 63 * 1024);
    assert_eq!(word(&r, 0x34), 768);
    r.rtc.set_memory_size(3 << 30, 1 << 30);
    assert_eq!(word(&r, 0x17), 0xffff);
    assert_eq!(word(&r, 0x34), 0xbf00);
    assert_eq!([r.rtc.cmos(0x5b), r.rtc.cmos(0x5c), r.rtc.cmos(0x5d)], [0x00, 0x40, 0x00]);
    r.rtc.set_cpu_count(4);
    assert_eq!(r.get(0x5f), 3);
}

#[test]
fn nmi_bit_is_ignored_and_odd_accesses_are_safe() {
    let mut r = Rig::new();
    r.set(0x80 | 0x40, 0xab);
    assert_eq!(r.get(0x40), 0xab);
    let mut b = [0u8; 4];
    r.rtc.read(0, &mut b);
    assert_eq!(b[0], 0xff);
    r.rtc.write(0, &[0x0d, 0x00, 0x00, 0x00]);
    assert_eq!(r.get(0x0d), 0x80, "D is read-only");
    r.rtc.set_cmos(200, 1);
    // Garbage time registers must not panic.
    r.set(0x0b, B_SET);
    for i in [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32] {
        r.set(i, 0xff);
    }
    r.set(0x0b, 0);
    r.time();
}

#[test]
fn snapshot_keeps_time_cmos_and_a_pending_interrupt() {
    let mut r = Rig::new();
    r.set(0x0b, B_SET | B_24H);
    for (i, v) in [(0x32, 0x99), (0x09, 0x99), (0x08, 0x12), (0x07, 0x31), (0x04, 0x23), (0x02, 0x59), (0x00, 0x50)] {
        r.set(i, v);
    }
    r.set(0x0b, B_24H | B_PIE);
    r.clock.set_ns(3_000_000_000);
    r.tick();
    assert!(r.irq.level());
    r.set(0x40, 0xab);
    let state = r.rtc.save_state();
    assert_eq!(state["base_ns"], "253402300790000000000", "9999-12-31 23:59:50 at clock 0: past i64");

    let mut q = Rig::starting(SystemTime::UNIX_EPOCH);
    q.clock.set_ns(3_000_000_000);
    crate::testutil::restore_into(&mut q.rtc, &state);
    assert!(q.irq.level(), "IRQ8 driven again for the pending IRQF");
    let mut b = [0];
    q.rtc.read(1, &mut b);
    assert_eq!(b, [0xab], "the index register came along");
    assert_eq!(q.time(), r.time());
    assert_eq!(q.get(0x0c), C_IRQF | C_PF);
    assert_eq!(q.tick(), r.tick(), "the next period is the same");
    q.clock.advance_ns(3_000_000_000);
    r.clock.advance_ns(3_000_000_000);
    assert_eq!(q.time(), r.time());
    assert_eq!(q.get(0x00), 0x56);
}

#[test]
fn snapshot_refuses_malformed_states() {
    let mut r = Rig::new();
    r.set(0x0b, B_24H | B_PIE);
    crate::testutil::assert_refuses_malformed(&mut r.rtc, &["/cmos"]);
    let mut s = r.rtc.save_state();
    s["index"] = 0x80.into();
    assert!(r.rtc.restore_state(&s).is_err(), "index past the CMOS");
}
