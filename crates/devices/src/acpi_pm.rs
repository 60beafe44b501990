//! ACPI fixed-hardware power management registers, in one I/O block the machine
//! places (0x600) and the FADT describes: the PM1a event block (PM1_STS, PM1_EN), the
//! PM1a control block (PM1_CNT) and the 24-bit PM timer.
//!
//! The machine is always in ACPI mode (SCI_EN reads 1), so there is no SMI command
//! port. Writing SLP_EN with SLP_TYP = [`S5_SLP_TYP`] powers off. The SCI is a level:
//! high while an enabled status bit is set.

use std::sync::Arc;

use quern_core::{BusDevice, Clock, IrqLine, MachineControl, MachineEvent, TimerDevice};

use crate::port::LogOnce;

/// Ports the block occupies.
pub const PM_IO_LEN: u64 = 12;
/// PM1a_EVT_BLK: PM1_STS (2 bytes) then PM1_EN (2 bytes).
pub const PM1A_EVT_OFFSET: u64 = 0;
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a_CNT_BLK: PM1_CNT.
pub const PM1A_CNT_OFFSET: u64 = 4;
pub const PM1_CNT_LEN: u8 = 2;
/// PM_TMR_BLK: the 24-bit timer.
pub const PM_TMR_OFFSET: u64 = 8;
pub const PM_TMR_LEN: u8 = 4;
/// SLP_TYP of soft-off, as the DSDT's \_S5 package gives it.
pub const S5_SLP_TYP: u16 = 5;
/// The PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;

const TMR_STS: u16 = 1 << 0;
const PWRBTN_STS: u16 = 1 << 8;
const WAK_STS: u16 = 1 << 15;
/// Status bits that can raise the SCI (timer, global, power and sleep button, RTC).
const SCI_EVENTS: u16 = 0x0721;

const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;
/// The timer's status bit is set each time bit 23 of the counter toggles.
const TMR_STS_SHIFT: u32 = 23;

/// The PM1a event and control blocks and the PM timer.
pub struct AcpiPm {
    clock: Arc<dyn Clock>,
    control: Arc<dyn MachineControl>,
    sci: Arc<dyn IrqLine>,
    sts: u16,
    en: u16,
    cnt: u16,
    sci_level: bool,
    /// Toggles of counter bit 23 already reflected in TMR_STS.
    tmr_toggles: u64,
    unhandled: LogOnce,
}

fn ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PM_TIMER_HZ) / 1_000_000_000) as u64
}

impl AcpiPm {
    pub fn new(clock: Arc<dyn Clock>, control: Arc<dyn MachineControl>, sci_irq: Arc<dyn IrqLine>) -> Self {
        let tmr_toggles = ticks(clock.now_ns()) >> TMR_STS_SHIFT;
        AcpiPm {
            clock,
            control,
            sci: sci_irq,
            sts: 0,
            en: 0,
            cnt: SCI_EN,
            sci_level: false,
            tmr_toggles,
            unhandled: LogOnce::default(),
        }
    }

    /// A press of the power button: the guest's ACPI driver decides what to do.
    pub fn power_button(&mut self) {
        self.sts |= PWRBTN_STS;
        self.update_sci();
    }

    fn update_timer(&mut self, now: u64) {
        let toggles = ticks(now) >> TMR_STS_SHIFT;
        if toggles > self.tmr_toggles {
            self.tmr_toggles = toggles;
            self.sts |= TMR_STS;
        }
    }

    fn update_sci(&mut self) {
        let level = self.sts & self.en & SCI_EVENTS != 0;
        if level != self.sci_level {
            self.sci_level = level;
            self.sci.set_level(level);
        }
    }

    fn write_cnt(&mut self, value: u16, mask: u16) {
        self.cnt = ((self.cnt & !mask) | (value & mask) | SCI_EN) & !SLP_EN;
        if value & mask & SLP_EN == 0 {
            return;
        }
        let slp_typ = (self.cnt >> 10) & 7;
        if slp_typ == S5_SLP_TYP {
            self.control.request(MachineEvent::PowerOff);
        } else {
            if self.unhandled.first(u32::from(slp_typ)) {
                log::debug!("acpi: sleep type {slp_typ} is not supported; waking at once");
            }
            self.sts |= WAK_STS;
        }
    }

    /// The block's bytes as the guest sees them.
    fn image(&mut self, now: u64) -> [u8; PM_IO_LEN as usize] {
        self.update_timer(now);
        self.update_sci();
        let mut img = [0; PM_IO_LEN as usize];
        img[0..2].copy_from_slice(&self.sts.to_le_bytes());
        img[2..4].copy_from_slice(&self.en.to_le_bytes());
        img[4..6].copy_from_slice(&self.cnt.to_le_bytes());
        img[8..12].copy_from_slice(&((ticks(now) & 0xff_ffff) as u32).to_le_bytes());
        img
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let img = self.image(self.clock.now_ns());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| img.get(o.checked_add(i)?)).copied().unwrap_or(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.update_timer(self.clock.now_ns());
        // Gather the bytes written to each 16-bit register, then act once per register.
        let mut regs = [(0u16, 0u16); 3];
        for (i, &b) in data.iter().enumerate() {
            let off = offset.saturating_add(i as u64);
            if off < 6 {
                let (value, mask) = &mut regs[(off / 2) as usize];
                let shift = 8 * (off % 2);
                *value |= u16::from(b) << shift;
                *mask |= 0xff << shift;
            } else if self.unhandled.first(0x100 | off as u32) {
                log::debug!("acpi: write to read-only PM offset {off:#x}");
            }
        }
        let [(sts, sts_mask), (en, en_mask), (cnt, cnt_mask)] = regs;
        // PM1_STS bits are cleared by writing 1.
        self.sts &= !(sts & sts_mask);
        self.en = (self.en & !en_mask) | (en & en_mask);
        if cnt_mask != 0 {
            self.write_cnt(cnt, cnt_mask);
        }
        self.update_sci();
    }
}

// The PM1 registers and the SCI's level. The timer reads the machine's clock, which
// is restored too; `tmr_toggles` counts against it.
quern_core::snapshot_fields!(AcpiPm { sts, en, cnt, sci_level, tmr_toggles } then drive_sci);

impl AcpiPm {
    /// A restored SCI level goes out on the line.
    fn drive_sci(&mut self) {
        self.sci.set_level(self.sci_level);
    }
}

impl TimerDevice for AcpiPm {
    /// Raises the SCI for timer overflows when the guest enabled TMR_EN.
    fn tick(&mut self, now_ns: u64) -> Option<u64> {
        self.update_timer(now_ns);
        self.update_sci();
        if self.en & TMR_STS == 0 {
            return None;
        }
        let next = u128::from(self.tmr_toggles + 1) << TMR_STS_SHIFT;
        Some((next * 1_000_000_000).div_ceil(u128::from(PM_TIMER_HZ)) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quern_core::clock::ManualClock;
    use quern_core::events::RecordingControl;
    use quern_core::snapshot::Snapshot;
    use quern_core::TestIrq;

    struct Rig {
        pm: AcpiPm,
        clock: Arc<ManualClock>,
        control: Arc<RecordingControl>,
        sci: Arc<TestIrq>,
    }

    fn rig() -> Rig {
        let clock = Arc::new(ManualClock::default());
        let control = Arc::new(RecordingControl::default());
        let sci = Arc::new(TestIrq::default());
        Rig { pm: AcpiPm::new(clock.clone(), control.clone(), sci.clone()), clock, control, sci }
    }

    fn r16(pm: &mut AcpiPm, off: u64) -> u16 {
        let mut b = [0; 2];
        pm.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    fn r32(pm: &mut AcpiPm, off: u64) -> u32 {
        let mut b = [0; 4];
        pm.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn s5_sleep_powers_off() {
        let mut r = rig();
        assert_eq!(r16(&mut r.pm, PM1A_CNT_OFFSET) & SCI_EN, SCI_EN, "ACPI mode from the start");
        r.pm.write(PM1A_CNT_OFFSET, &(S5_SLP_TYP << 10).to_le_bytes());
        assert!(r.control.events().is_empty(), "SLP_TYP alone does nothing");
        r.pm.write(PM1A_CNT_OFFSET, &((S5_SLP_TYP << 10) | SLP_EN).to_le_bytes());
        assert_eq!(r.control.events(), [MachineEvent::PowerOff]);
        assert_eq!(r16(&mut r.pm, PM1A_CNT_OFFSET) & SLP_EN, 0, "SLP_EN is write-only");
        // Byte writes: the high byte alone carries SLP_TYP and SLP_EN.
        r.pm.write(PM1A_CNT_OFFSET + 1, &[(((S5_SLP_TYP << 10) | SLP_EN) >> 8) as u8]);
        assert_eq!(r.control.events().len(), 2);
    }

    #[test]
    fn other_sleep_types_wake_at_once() {
        let mut r = rig();
        r.pm.write(PM1A_CNT_OFFSET, &((1 << 10) | SLP_EN).to_le_bytes());
        assert!(r.control.events().is_empty());
        assert_eq!(r16(&mut r.pm, PM1A_EVT_OFFSET) & WAK_STS, WAK_STS);
        r.pm.write(PM1A_EVT_OFFSET, &WAK_STS.to_le_bytes());
        assert_eq!(r16(&mut r.pm, PM1A_EVT_OFFSET) & WAK_STS, 0);
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz_and_wraps_at_24_bits() {
        let mut r = rig();
        r.clock.set_ns(1_000_000_000);
        assert_eq!(r32(&mut r.pm, PM_TMR_OFFSET), PM_TIMER_HZ as u32);
        r.clock.set_ns(10_000_000_000);
        assert_eq!(r32(&mut r.pm, PM_TMR_OFFSET), ((PM_TIMER_HZ * 10) & 0xff_ffff) as u32);
        r.pm.write(PM_TMR_OFFSET, &[0; 4]);
        assert_eq!(r32(&mut r.pm, PM_TMR_OFFSET), ((PM_TIMER_HZ * 10) & 0xff_ffff) as u32, "read-only");
    }

    #[test]
    fn power_button_and_timer_overflow_raise_the_sci_when_enabled() {
        let mut r = rig();
        r.pm.power_button();
        assert!(!r.sci.level(), "PWRBTN_EN clear");
        r.pm.write(PM1A_EVT_OFFSET + 2, &PWRBTN_STS.to_le_bytes());
        assert!(r.sci.level());
        r.pm.write(PM1A_EVT_OFFSET, &PWRBTN_STS.to_le_bytes());
        assert!(!r.sci.level());
        // Timer overflow: bit 23 toggles every 2^23 ticks (~2.34 s).
        r.pm.write(PM1A_EVT_OFFSET + 2, &TMR_STS.to_le_bytes());
        let due = r.pm.tick(0).unwrap();
        assert_eq!(due, ((1u128 << 23) * 1_000_000_000).div_ceil(u128::from(PM_TIMER_HZ)) as u64);
        r.pm.tick(due - 1);
        assert!(!r.sci.level());
        r.pm.tick(due);
        assert!(r.sci.level());
        r.pm.write(PM1A_EVT_OFFSET, &[0x01, 0x00, 0x00, 0x00]); // clear TMR_STS, disable all
        assert!(!r.sci.level());
        assert_eq!(r.pm.tick(due), None);
    }

    #[test]
    fn snapshot_keeps_status_enables_and_the_sci() {
        let mut r = rig();
        r.pm.write(PM1A_EVT_OFFSET + 2, &(PWRBTN_STS | TMR_STS).to_le_bytes());
        r.pm.write(PM1A_CNT_OFFSET, &(3u16 << 10).to_le_bytes());
        r.clock.set_ns(3_000_000_000);
        r.pm.power_button();
        assert!(r.sci.level());
        let mut s = rig();
        s.clock.set_ns(3_000_000_000);
        crate::testutil::restore_into(&mut s.pm, &r.pm.save_state());
        assert!(s.sci.level(), "the SCI is driven again");
        for off in [PM1A_EVT_OFFSET, PM1A_CNT_OFFSET, PM_TMR_OFFSET] {
            assert_eq!(r32(&mut s.pm, off), r32(&mut r.pm, off), "offset {off}");
        }
        let due = s.pm.tick(3_000_000_000);
        assert_eq!(due, r.pm.tick(3_000_000_000), "the next overflow");
        s.pm.write(PM1A_EVT_OFFSET, &(PWRBTN_STS | TMR_STS).to_le_bytes());
        assert!(!s.sci.level());
        s.pm.tick(due.unwrap());
        assert!(s.sci.level(), "overflow at 2^24 ticks, after the one already seen");
        crate::testutil::assert_refuses_malformed(&mut r.pm, &[]);
    }

    #[test]
    fn wide_and_stray_accesses() {
        let mut r = rig();
        r.pm.write(PM1A_EVT_OFFSET + 2, &0x0100u16.to_le_bytes());
        // One dword read covers PM1_STS and PM1_EN.
        assert_eq!(r32(&mut r.pm, PM1A_EVT_OFFSET), 0x0100_0000);
        let mut b = [0u8; 8];
        r.pm.read(10, &mut b);
        assert_eq!(b[2..], [0xff; 6]);
        r.pm.write(11, &[1, 2, 3, 4, 5, 6, 7, 8]);
        r.pm.read(u64::MAX, &mut b);
        r.pm.write(u64::MAX - 1, &[1, 2, 3]);
    }
}
