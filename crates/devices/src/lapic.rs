//! The local APIC of one vCPU (Intel SDM vol. 3, "Advanced Programmable Interrupt
//! Controller"): the xAPIC MMIO page, the x2APIC MSRs, IA32_APIC_BASE and
//! IA32_TSC_DEADLINE, the IRR/ISR/TMR priority machinery, the local vector table
//! (timer, thermal, performance counter, LINT0, LINT1, error) and the timer.
//!
//! A pure model: no locks, no threads, no calls into other devices. A register write
//! that must reach other interrupt controllers (an IPI through the ICR, the EOI
//! broadcast of a level-triggered vector) returns an [`ApicAction`] that the caller
//! carries out after releasing this model's lock. Messages from elsewhere come in
//! through [`LocalApic::accepts`] / [`LocalApic::deliver`], the 8259's INTR and the
//! NMI line through [`LocalApic::set_lint`].
//!
//! The vCPU side asks [`LocalApic::poll`] for the most urgent thing to take, then
//! [`LocalApic::acknowledge`]s a fixed interrupt (INTA: IRR → ISR, returns the vector)
//! or [`LocalApic::take`]s an NMI/SMI/INIT/SIPI/ExtINT latch (on ExtINT it then asks
//! the PIC for the vector). When it takes INIT it calls [`LocalApic::init`]; a
//! StartUp it is not waiting for it takes and discards. CR8 is
//! [`LocalApic::cr8`] / [`LocalApic::set_cr8`] (TPR[7:4]).
//!
//! Time: the timer counts at [`APIC_TIMER_HZ`] (1 GHz, one tick per nanosecond before
//! the divider, as QEMU's model) and is a function of [`Clock::now_ns`], so the current
//! count is computed on read and nothing steps. The guest TSC is
//! `now_ns * tsc_hz / 1e9` ([`LocalApic::tsc_at`]); the CPU's RDTSC must use the same
//! formula so TSC-deadline mode and TSC calibration against the APIC timer agree.
//! Expiries are raised by [`TimerDevice::tick`], at most one per call (missed
//! periods coalesce, as they would in the single IRR bit anyway); a periodic timer is
//! re-armed no sooner than [`MIN_PERIODIC_NS`] after it fired, so a guest programming
//! a 1 ns period cannot spin the timer thread. Register writes that change the timer
//! process what was already due, and a TSC deadline already in the past fires during
//! the write; after any APIC write the machine should re-read
//! [`LocalApic::timer_deadline`] to re-arm its timer thread.
//!
//! Choices where the SDM leaves room (following QEMU or KVM):
//! - Version 0x50014 (version 0x14, six LVT entries). Directed EOI (SVR bit 12,
//!   version bit 24) only when [`LapicFeatures::directed_eoi`] is set.
//! - The BSP's LINT0 comes out of [`LocalApic::reset`] as ExtINT, unmasked (virtual
//!   wire), so guests without firmware get the 8259's interrupts, as KVM does by
//!   default (QEMU 7.2's TCG APIC masks it, the SDM's power-up state); INIT and the
//!   SDM's power-up state otherwise mask every LVT entry.
//! - Software disable (SVR bit 8 clear) masks every LVT entry and keeps them masked;
//!   fixed interrupts arriving then are dropped (KVM), those already in the IRR are
//!   still delivered (SDM: "held and require handling by the CPU"). NMI, SMI, INIT and
//!   SIPI messages are accepted.
//! - Global disable (IA32_APIC_BASE.EN clear) returns the registers to their power-up
//!   state (keeping the ID; the SDM allows this). While disabled the APIC accepts no
//!   messages, LINT0 is the CPU's INTR pin and LINT1 its NMI pin.
//! - A vector below 16 sent (ICR, SELF IPI) or received (messages, LVT entries) is not
//!   delivered and sets ESR bit 5 / bit 6; a reserved register in the xAPIC page sets
//!   bit 7. The first error after an ESR write raises the LVT error entry.
//! - MMIO: 32-bit accesses at 16-byte strides are the architecture; wider reads read
//!   the register and zeros, narrower reads take bytes of the register, writes
//!   narrower than 4 bytes or not at a register's start are ignored (as QEMU). In
//!   x2APIC mode and while disabled the page is not the APIC: reads return all ones,
//!   writes are dropped ([`LocalApic::mmio_base`] says where it is mapped, if at all).
//! - x2APIC: every reserved bit, a read of a write-only register (EOI, SELF IPI) and a
//!   write of a read-only one raise #GP; read-only status bits (delivery status,
//!   remote IRR) written back as read are ignored. An IOAPIC/MSI destination 0xff
//!   reaches x2APIC-mode APICs as a broadcast (KVM's quirk).
//! - Lowest-priority arbitration is the router's: it may use
//!   [`LocalApic::arbitration_priority`] and [`LocalApic::is_focus`].

use std::fmt;
use std::sync::Arc;

use quern_core::{Clock, TimerDevice};

use crate::apic_bus::{ApicAction, ApicMessage, DeliveryMode, Destination};

/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// The x2APIC register MSRs: 0x800 + (xAPIC offset >> 4).
pub const MSR_X2APIC_FIRST: u32 = 0x800;
pub const MSR_X2APIC_LAST: u32 = 0x8ff;
/// Where the xAPIC page is after reset.
pub const DEFAULT_APIC_BASE: u64 = 0xfee0_0000;
/// Size of the xAPIC MMIO page.
pub const APIC_MMIO_SIZE: u64 = 0x1000;
/// The timer's input clock (the APIC bus clock) before the divider: 1 GHz, as QEMU.
pub const APIC_TIMER_HZ: u64 = 1_000_000_000;
/// The version register: version 0x14, maximum LVT entry 5 (six entries).
pub const APIC_VERSION: u32 = 0x0005_0014;
/// A periodic timer fires again no sooner than this after it fired (100 kHz at most).
pub const MIN_PERIODIC_NS: u64 = 10_000;

const BASE_BSP: u64 = 1 << 8;
const BASE_EXTD: u64 = 1 << 10;
const BASE_EN: u64 = 1 << 11;

// Register indices: xAPIC offset >> 4, x2APIC MSR - 0x800.
const R_ID: usize = 0x02;
const R_VERSION: usize = 0x03;
const R_TPR: usize = 0x08;
const R_APR: usize = 0x09;
const R_PPR: usize = 0x0a;
const R_EOI: usize = 0x0b;
const R_LDR: usize = 0x0d;
const R_DFR: usize = 0x0e;
const R_SVR: usize = 0x0f;
const R_ISR: usize = 0x10;
const R_TMR: usize = 0x18;
const R_IRR: usize = 0x20;
const R_ESR: usize = 0x28;
const R_ICR_LO: usize = 0x30;
const R_ICR_HI: usize = 0x31;
const R_LVT_TIMER: usize = 0x32;
const R_LVT_ERROR: usize = 0x37;
const R_TMICT: usize = 0x38;
const R_TMCCT: usize = 0x39;
const R_TDCR: usize = 0x3e;
const R_SELF_IPI: usize = 0x3f;

// LVT entries, in register order (1 is thermal, 2 performance counter).
const LVT_TIMER: usize = 0;
const LVT_LINT0: usize = 3;
const LVT_LINT1: usize = 4;
const LVT_ERROR: usize = 5;
const LVT_COUNT: usize = 6;

const LVT_VECTOR: u32 = 0xff;
const LVT_MODE: u32 = 7 << 8;
const LVT_DELIVERY_STATUS: u32 = 1 << 12;
const LVT_POLARITY_LOW: u32 = 1 << 13;
const LVT_REMOTE_IRR: u32 = 1 << 14;
const LVT_LEVEL: u32 = 1 << 15;
const LVT_MASKED: u32 = 1 << 16;
const LVT_TIMER_MODE: u32 = 3 << 17;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const LVT_TIMER_TSC_DEADLINE: u32 = 2 << 17;

/// The bits software may set in each LVT entry (the timer's mode bits are adjusted
/// for TSC-deadline support in [`LocalApic::lvt_writable`]).
const LVT_WRITABLE: [u32; LVT_COUNT] = [
    LVT_VECTOR | LVT_MASKED | LVT_TIMER_MODE,
    LVT_VECTOR | LVT_MODE | LVT_MASKED,
    LVT_VECTOR | LVT_MODE | LVT_MASKED,
    LVT_VECTOR | LVT_MODE | LVT_POLARITY_LOW | LVT_LEVEL | LVT_MASKED,
    LVT_VECTOR | LVT_MODE | LVT_POLARITY_LOW | LVT_LEVEL | LVT_MASKED,
    LVT_VECTOR | LVT_MASKED,
];

// LVT delivery modes.
const DM_FIXED: u32 = 0;
const DM_SMI: u32 = 2;
const DM_NMI: u32 = 4;
const DM_INIT: u32 = 5;
const DM_EXTINT: u32 = 7;

const SVR_ENABLE: u32 = 1 << 8;
const SVR_FOCUS_DISABLE: u32 = 1 << 9;
const SVR_SUPPRESS_EOI_BROADCAST: u32 = 1 << 12;

const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
const ESR_ILLEGAL_REGISTER: u32 = 1 << 7;

const ICR_DELIVERY_STATUS: u32 = 1 << 12;
const ICR_LOGICAL: u32 = 1 << 11;
const ICR_ASSERT: u32 = 1 << 14;
const ICR_LEVEL: u32 = 1 << 15;
/// Vector, delivery mode, destination mode, level, trigger mode, shorthand.
const ICR_WRITABLE: u32 = 0xff | (7 << 8) | ICR_LOGICAL | ICR_ASSERT | ICR_LEVEL | (3 << 18);

/// A general-protection fault the WRMSR/RDMSR must raise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp;

impl fmt::Display for Gp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("#GP(0)")
    }
}

impl std::error::Error for Gp {}

/// What the CPU should take from its local APIC now (see [`LocalApic::poll`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuSignal {
    /// An INIT: take it, then [`LocalApic::init`] and wait for SIPI.
    Init,
    /// A start-up IPI with its vector (the real-mode page `vector << 12`).
    StartUp(u8),
    Smi,
    Nmi,
    /// The 8259 has an interrupt for the CPU (virtual wire or an ExtINT message): run
    /// the PIC's INTA for the vector.
    ExtInt,
    /// A fixed interrupt: [`LocalApic::acknowledge`] gives its vector.
    Interrupt,
}

/// The mode IA32_APIC_BASE selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApicMode {
    Disabled,
    XApic,
    X2Apic,
}

/// CPU features that change what the APIC accepts; they must agree with CPUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LapicFeatures {
    /// x2APIC mode may be entered (CPUID.1:ECX.x2APIC).
    pub x2apic: bool,
    /// The timer's TSC-deadline mode and IA32_TSC_DEADLINE (CPUID.1:ECX.TSC_Deadline).
    pub tsc_deadline: bool,
    /// Directed EOI: SVR bit 12 (suppress EOI broadcast) is writable, version bit 24.
    pub directed_eoi: bool,
    /// MAXPHYADDR: IA32_APIC_BASE bits from here up are reserved.
    pub phys_addr_bits: u8,
}

impl Default for LapicFeatures {
    fn default() -> Self {
        LapicFeatures { x2apic: true, tsc_deadline: true, directed_eoi: false, phys_addr_bits: 40 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

fn get_bit(a: &[u32; 8], v: u8) -> bool {
    a[usize::from(v >> 5)] & (1 << (v & 31)) != 0
}

fn set_bit(a: &mut [u32; 8], v: u8, on: bool) {
    let (w, m) = (usize::from(v >> 5), 1u32 << (v & 31));
    if on {
        a[w] |= m;
    } else {
        a[w] &= !m;
    }
}

fn highest(a: &[u32; 8]) -> Option<u8> {
    (0..8).rev().find(|&i| a[i] != 0).map(|i| (i * 32 + 31 - a[i].leading_zeros() as usize) as u8)
}

/// One vCPU's local APIC.
pub struct LocalApic {
    /// The initial APIC ID (CPUID), the x2APIC ID.
    initial_id: u32,
    bsp: bool,
    clock: Arc<dyn Clock>,
    tsc_hz: u64,
    features: LapicFeatures,

    /// IA32_APIC_BASE as read.
    base: u64,
    /// The xAPIC ID register's bits 31:24.
    xapic_id: u8,
    tpr: u8,
    /// xAPIC LDR (bits 31:24); x2APIC derives its LDR from the ID.
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: [u32; 8],
    tmr: [u32; 8],
    irr: [u32; 8],
    /// ESR as read (errors up to the last ESR write).
    esr: u32,
    /// Errors since the last ESR write.
    esr_pending: u32,
    icr_lo: u32,
    /// xAPIC: destination in bits 31:24; x2APIC: the 32-bit destination.
    icr_hi: u32,
    lvt: [u32; LVT_COUNT],
    /// Levels of the LINT0/LINT1 pins as driven (before polarity).
    lint_level: [bool; 2],

    timer_initial: u32,
    timer_divide: u32,
    /// One-shot/periodic: counting (a one-shot stops when it fires).
    timer_running: bool,
    /// The count is `timer_base + (now - timer_since) >> shift` ticks into the run.
    timer_since: u64,
    timer_base: u64,
    /// The tick count at which the timer next fires.
    timer_next_tick: u64,
    /// IA32_TSC_DEADLINE; 0 = disarmed.
    tsc_deadline: u64,

    nmi: bool,
    smi: bool,
    init: bool,
    sipi: Option<u8>,
    extint: bool,
}

impl fmt::Debug for LocalApic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalApic")
            .field("id", &self.id())
            .field("base", &format_args!("{:#x}", self.base))
            .field("tpr", &self.tpr)
            .field("svr", &format_args!("{:#x}", self.svr))
            .field("irr", &highest(&self.irr))
            .field("isr", &highest(&self.isr))
            .field("lvt", &self.lvt)
            .finish_non_exhaustive()
    }
}

impl LocalApic {
    /// A local APIC in its power-on state, with the default [`LapicFeatures`].
    /// `tsc_hz` is the guest TSC's frequency.
    pub fn new(apic_id: u32, bsp: bool, clock: Arc<dyn Clock>, tsc_hz: u64) -> Self {
        let mut apic = LocalApic {
            initial_id: apic_id,
            bsp,
            clock,
            tsc_hz: tsc_hz.max(1),
            features: LapicFeatures::default(),
            base: 0,
            xapic_id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr_lo: 0,
            icr_hi: 0,
            lvt: [0; LVT_COUNT],
            lint_level: [false; 2],
            timer_initial: 0,
            timer_divide: 0,
            timer_running: false,
            timer_since: 0,
            timer_base: 0,
            timer_next_tick: 0,
            tsc_deadline: 0,
            nmi: false,
            smi: false,
            init: false,
            sipi: None,
            extint: false,
        };
        apic.reset();
        apic
    }

    /// The same APIC with other CPU features; it is reset.
    pub fn with_features(mut self, features: LapicFeatures) -> Self {
        self.features = features;
        self.reset();
        self
    }

    pub fn features(&self) -> LapicFeatures {
        self.features
    }

    /// Power-on / machine reset: xAPIC mode at 0xFEE00000, the SDM's power-up register
    /// state, and the BSP's LINT0 as an unmasked ExtINT (virtual wire, as KVM).
    pub fn reset(&mut self) {
        self.base = DEFAULT_APIC_BASE | BASE_EN | if self.bsp { BASE_BSP } else { 0 };
        self.xapic_id = self.initial_id as u8;
        self.reset_registers();
        if self.bsp {
            self.lvt[LVT_LINT0] = DM_EXTINT << 8;
        }
        self.nmi = false;
        self.smi = false;
        self.init = false;
        self.sipi = None;
        self.extint = false;
    }

    /// The effect of an INIT on the APIC (SDM "Local APIC State After an INIT Reset"):
    /// registers to their power-up values except the APIC ID and IA32_APIC_BASE (the
    /// mode, x2APIC included, stays). Pending NMI/SMI/INIT/ExtINT latches are
    /// dropped; a start-up IPI that already arrived is kept for the wait-for-SIPI
    /// state.
    pub fn init(&mut self) {
        self.reset_registers();
        self.nmi = false;
        self.smi = false;
        self.init = false;
        self.extint = false;
    }

    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = 0xffff_ffff;
        self.svr = 0xff;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_lo = 0;
        self.icr_hi = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.timer_initial = 0;
        self.timer_divide = 0;
        self.timer_running = false;
        self.timer_since = 0;
        self.timer_base = 0;
        self.timer_next_tick = 0;
        self.tsc_deadline = 0;
    }

    // ---- identity and mode ----

    pub fn mode(&self) -> ApicMode {
        match (self.base & BASE_EN != 0, self.base & BASE_EXTD != 0) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    fn hw_enabled(&self) -> bool {
        self.base & BASE_EN != 0
    }

    fn x2apic(&self) -> bool {
        self.mode() == ApicMode::X2Apic
    }

    /// Software enabled (SVR bit 8).
    pub fn sw_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// The APIC ID as the architecture sees it now: the 32-bit x2APIC ID in x2APIC
    /// mode, else the xAPIC ID register's 8 bits. Messages it sends carry this.
    pub fn id(&self) -> u32 {
        if self.x2apic() {
            self.initial_id
        } else {
            u32::from(self.xapic_id)
        }
    }

    /// The initial APIC ID this APIC was created with.
    pub fn initial_id(&self) -> u32 {
        self.initial_id
    }

    pub fn is_bsp(&self) -> bool {
        self.bsp
    }

    /// IA32_APIC_BASE as RDMSR returns it.
    pub fn apic_base(&self) -> u64 {
        self.base
    }

    fn base_address_mask(&self) -> u64 {
        let bits = u32::from(self.features.phys_addr_bits).clamp(32, 52);
        ((1u64 << bits) - 1) & !0xfff
    }

    /// The xAPIC page's guest-physical address while the APIC is enabled in xAPIC
    /// mode; `None` when disabled or in x2APIC mode (the page is then not the APIC).
    pub fn mmio_base(&self) -> Option<u64> {
        (self.mode() == ApicMode::XApic).then_some(self.base & self.base_address_mask())
    }

    fn x2apic_ldr(&self) -> u32 {
        ((self.initial_id >> 4) << 16) | (1 << (self.initial_id & 0xf))
    }

    fn version(&self) -> u32 {
        APIC_VERSION | if self.features.directed_eoi { 1 << 24 } else { 0 }
    }

    // ---- time ----

    fn now(&self) -> u64 {
        self.clock.now_ns()
    }

    /// The guest TSC at `now_ns` of the clock: `now_ns * tsc_hz / 1e9`.
    pub fn tsc_at(&self, now_ns: u64) -> u64 {
        (u128::from(now_ns) * u128::from(self.tsc_hz) / 1_000_000_000) as u64
    }

    /// The guest TSC now.
    pub fn tsc_now(&self) -> u64 {
        self.tsc_at(self.now())
    }

    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// The first clock nanosecond at which the TSC has reached `tsc`.
    fn tsc_to_ns(&self, tsc: u64) -> u64 {
        let ns = (u128::from(tsc) * 1_000_000_000).div_ceil(u128::from(self.tsc_hz));
        ns.min(u128::from(u64::MAX)) as u64
    }

    // ---- priorities ----

    /// The task priority register (CR8 is its bits 7:4).
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// CR8: TPR[7:4].
    pub fn cr8(&self) -> u64 {
        u64::from(self.tpr >> 4)
    }

    /// A MOV to CR8: TPR[7:4] = CR8[3:0], TPR[3:0] = 0. (Reserved CR8 bits are the
    /// CPU's #GP to raise.)
    pub fn set_cr8(&mut self, cr8: u64) {
        self.tpr = ((cr8 & 0xf) as u8) << 4;
    }

    /// The processor priority: the higher of TPR and the class of the highest vector
    /// in service.
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The arbitration priority (SDM "Arbitration Priority Register"), for the
    /// router's lowest-priority choice.
    pub fn arbitration_priority(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0) & 0xf0;
        let irrv = highest(&self.irr).unwrap_or(0) & 0xf0;
        let tpr = self.tpr & 0xf0;
        if tpr >= irrv && tpr > isrv {
            self.tpr
        } else {
            tpr.max(isrv).max(irrv)
        }
    }

    /// With focus processor checking enabled (SVR bit 9 clear), whether this APIC is
    /// the focus of a lowest-priority `vector` (already pending or in service here).
    pub fn is_focus(&self, vector: u8) -> bool {
        self.svr & SVR_FOCUS_DISABLE == 0 && (get_bit(&self.irr, vector) || get_bit(&self.isr, vector))
    }

    /// The highest pending vector if its class is above the PPR.
    fn deliverable(&self) -> Option<u8> {
        let v = highest(&self.irr)?;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    // ---- vCPU side ----

    /// The most urgent thing the CPU should take now, if any: SMI, INIT, SIPI, NMI,
    /// then (only with `if_enabled`, EFLAGS.IF) a fixed interrupt above the PPR, then
    /// an ExtINT (the 8259 through LINT0's virtual wire or an ExtINT message).
    /// NMI blocking, SMM and the wait-for-SIPI state are the CPU's to apply.
    pub fn poll(&self, if_enabled: bool) -> Option<CpuSignal> {
        if self.smi {
            return Some(CpuSignal::Smi);
        }
        if self.init {
            return Some(CpuSignal::Init);
        }
        if let Some(v) = self.sipi {
            return Some(CpuSignal::StartUp(v));
        }
        if self.nmi {
            return Some(CpuSignal::Nmi);
        }
        if !if_enabled {
            return None;
        }
        if self.hw_enabled() && self.deliverable().is_some() {
            return Some(CpuSignal::Interrupt);
        }
        if self.extint || self.extint_active() {
            return Some(CpuSignal::ExtInt);
        }
        None
    }

    /// INTA for a fixed interrupt: the highest pending vector above the PPR moves from
    /// the IRR to the ISR and is returned; if none is deliverable any more (the TPR
    /// rose in between), the spurious vector, with no ISR bit set.
    pub fn acknowledge(&mut self) -> u8 {
        match self.deliverable() {
            Some(v) if self.hw_enabled() => {
                set_bit(&mut self.irr, v, false);
                set_bit(&mut self.isr, v, true);
                v
            }
            _ => self.svr as u8,
        }
    }

    /// Clears the latch of a signal the CPU has taken (NMI, SMI, INIT, SIPI, ExtINT
    /// message). `Interrupt` is taken through [`LocalApic::acknowledge`]; an ExtINT
    /// from LINT0's level stays pending while the pin is active.
    pub fn take(&mut self, s: CpuSignal) {
        match s {
            CpuSignal::Init => self.init = false,
            CpuSignal::StartUp(_) => self.sipi = None,
            CpuSignal::Smi => self.smi = false,
            CpuSignal::Nmi => self.nmi = false,
            CpuSignal::ExtInt => self.extint = false,
            CpuSignal::Interrupt => {}
        }
    }

    fn extint_active(&self) -> bool {
        if !self.hw_enabled() {
            return self.lint_level[0];
        }
        (0..2).any(|i| {
            let v = self.lvt[LVT_LINT0 + i];
            v & LVT_MASKED == 0 && (v & LVT_MODE) >> 8 == DM_EXTINT && self.lint_active(i)
        })
    }

    // ---- incoming ----

    /// Whether a message to `dest` from `sender` (an APIC ID, `None` for an IOAPIC or
    /// MSI) is for this APIC. A disabled APIC accepts nothing.
    pub fn accepts(&self, dest: &Destination, sender: Option<u32>) -> bool {
        let me = self.id();
        match self.mode() {
            ApicMode::Disabled => false,
            ApicMode::XApic => match *dest {
                Destination::Physical(id) => id == 0xff || id == u32::MAX || id == me,
                Destination::Logical(mda) => {
                    if mda == 0xff || mda == u32::MAX {
                        return true;
                    }
                    if mda > 0xff {
                        return false;
                    }
                    let lid = self.ldr >> 24;
                    match self.dfr >> 28 {
                        0xf => lid & mda != 0,
                        0x0 => lid >> 4 == mda >> 4 && lid & mda & 0xf != 0,
                        _ => false,
                    }
                }
                _ => self.accepts_shorthand(dest, sender),
            },
            ApicMode::X2Apic => {
                // An xAPIC-format broadcast from the IOAPIC or an MSI reaches
                // x2APIC-mode APICs too.
                let legacy_broadcast =
                    sender.is_none() && matches!(*dest, Destination::Physical(0xff) | Destination::Logical(0xff));
                match *dest {
                    Destination::Physical(id) => legacy_broadcast || id == u32::MAX || id == me,
                    Destination::Logical(mda) => {
                        let ldr = self.x2apic_ldr();
                        legacy_broadcast || mda == u32::MAX || (mda >> 16 == ldr >> 16 && mda & ldr & 0xffff != 0)
                    }
                    _ => self.accepts_shorthand(dest, sender),
                }
            }
        }
    }

    fn accepts_shorthand(&self, dest: &Destination, sender: Option<u32>) -> bool {
        let me = Some(self.id());
        match *dest {
            Destination::SelfOnly => sender == me,
            Destination::AllIncludingSelf => true,
            Destination::AllExcludingSelf => sender != me,
            Destination::Physical(_) | Destination::Logical(_) => false,
        }
    }

    /// Takes a message the router found for this APIC ([`LocalApic::accepts`]):
    /// fixed and lowest-priority set the IRR (and the TMR when level-triggered; not
    /// while software-disabled), NMI/SMI/INIT/SIPI/ExtINT are latched for
    /// [`LocalApic::poll`]. An INIT level de-assert is ignored.
    pub fn deliver(&mut self, msg: &ApicMessage) {
        if !self.hw_enabled() {
            return;
        }
        match msg.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                if self.sw_enabled() {
                    self.accept_local(msg.vector, msg.level);
                }
            }
            DeliveryMode::Smi => self.smi = true,
            DeliveryMode::Nmi => self.nmi = true,
            DeliveryMode::Init => {
                if msg.assert || !msg.level {
                    self.init = true;
                }
            }
            DeliveryMode::StartUp => self.sipi = Some(msg.vector),
            DeliveryMode::ExtInt => self.extint = true,
        }
    }

    /// Sets a vector pending; false (and an error) for an illegal vector.
    fn accept_local(&mut self, vector: u8, level: bool) -> bool {
        if vector < 16 {
            self.error(ESR_RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        set_bit(&mut self.irr, vector, true);
        set_bit(&mut self.tmr, vector, level);
        true
    }

    /// Records errors; the first since the last ESR write raises the LVT error entry.
    fn error(&mut self, bits: u32) {
        let armed = self.esr_pending == 0;
        self.esr_pending |= bits;
        if armed {
            self.lvt_event(LVT_ERROR);
        }
    }

    /// An edge on an LVT entry's source: delivered per the entry's mode unless masked.
    fn lvt_event(&mut self, idx: usize) {
        let v = self.lvt[idx];
        if v & LVT_MASKED != 0 {
            return;
        }
        match (v & LVT_MODE) >> 8 {
            DM_FIXED => {
                self.accept_local(v as u8, false);
            }
            DM_SMI => self.smi = true,
            DM_NMI => self.nmi = true,
            DM_INIT => self.init = true,
            DM_EXTINT => self.extint = true,
            _ => {}
        }
    }

    fn lint_active(&self, i: usize) -> bool {
        self.lint_level[i] ^ (self.lvt[LVT_LINT0 + i] & LVT_POLARITY_LOW != 0)
    }

    fn lint_is_level_fixed(&self, i: usize) -> bool {
        let v = self.lvt[LVT_LINT0 + i];
        (v & LVT_MODE) >> 8 == DM_FIXED && v & LVT_LEVEL != 0
    }

    /// A level-triggered fixed LINT entry: deliver while the pin is active and the
    /// previous one has not been EOI'd (remote IRR).
    fn lint_level_check(&mut self, i: usize) {
        let v = self.lvt[LVT_LINT0 + i];
        if v & (LVT_MASKED | LVT_REMOTE_IRR) != 0 || !self.lint_is_level_fixed(i) || !self.lint_active(i) {
            return;
        }
        if self.accept_local(v as u8, true) {
            self.lvt[LVT_LINT0 + i] |= LVT_REMOTE_IRR;
        }
    }

    /// Drives the LINT0 (`pin` 0) or LINT1 (`pin` 1) input. Per the LVT entry:
    /// ExtINT is pending while the pin is active; NMI, SMI, INIT and edge-triggered
    /// fixed entries fire on the rising (active-going) edge; level-triggered fixed
    /// entries deliver while active, with remote IRR. Polarity and masks apply. While
    /// the APIC is globally disabled LINT0 is INTR (ExtINT while high) and LINT1 is
    /// NMI (on its rising edge).
    pub fn set_lint(&mut self, pin: u8, level: bool) {
        let i = usize::from(pin);
        if i > 1 {
            return;
        }
        let old_level = self.lint_level[i];
        let was_active = self.lint_active(i);
        self.lint_level[i] = level;
        if !self.hw_enabled() {
            if i == 1 && level && !old_level {
                self.nmi = true;
            }
            return;
        }
        let active = self.lint_active(i);
        let v = self.lvt[LVT_LINT0 + i];
        if v & LVT_MASKED != 0 {
            return;
        }
        if self.lint_is_level_fixed(i) {
            if active {
                self.lint_level_check(i);
            } else if v & LVT_REMOTE_IRR != 0 && get_bit(&self.irr, v as u8) {
                // Withdrawn before the CPU took it.
                set_bit(&mut self.irr, v as u8, false);
                self.lvt[LVT_LINT0 + i] &= !LVT_REMOTE_IRR;
            }
        } else if (v & LVT_MODE) >> 8 != DM_EXTINT && active && !was_active {
            self.lvt_event(LVT_LINT0 + i);
        }
    }

    // ---- EOI and IPIs ----

    fn eoi(&mut self) -> Option<ApicAction> {
        let v = highest(&self.isr)?;
        set_bit(&mut self.isr, v, false);
        for i in 0..2 {
            let lvt = self.lvt[LVT_LINT0 + i];
            if lvt & LVT_REMOTE_IRR != 0 && lvt as u8 == v {
                self.lvt[LVT_LINT0 + i] &= !LVT_REMOTE_IRR;
                self.lint_level_check(i);
            }
        }
        (get_bit(&self.tmr, v) && self.svr & SVR_SUPPRESS_EOI_BROADCAST == 0).then_some(ApicAction::EoiBroadcast(v))
    }

    /// An ICR write: the message to send, if any.
    fn send_ipi(&mut self, lo: u32, dest: u32) -> Option<ApicAction> {
        let vector = lo as u8;
        let mode = match DeliveryMode::from_bits(lo >> 8) {
            None | Some(DeliveryMode::ExtInt) => return None, // reserved for the ICR
            Some(m) => m,
        };
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && vector < 16 {
            self.error(ESR_SEND_ILLEGAL_VECTOR);
            return None;
        }
        let level = lo & ICR_LEVEL != 0;
        // Only INIT has a de-assert form; every other message is sent asserted.
        let assert = mode != DeliveryMode::Init || !level || lo & ICR_ASSERT != 0;
        let dest = if mode == DeliveryMode::Init && !assert {
            // INIT level de-assert goes to everyone whatever the shorthand says.
            Destination::AllIncludingSelf
        } else {
            match (lo >> 18) & 3 {
                0 if lo & ICR_LOGICAL != 0 => Destination::Logical(dest),
                0 => Destination::Physical(dest),
                1 => Destination::SelfOnly,
                2 => Destination::AllIncludingSelf,
                _ => Destination::AllExcludingSelf,
            }
        };
        Some(ApicAction::Send(ApicMessage { dest, mode, vector, level, assert, source: Some(self.id()) }))
    }

    fn self_ipi(&mut self, vector: u8) -> Option<ApicAction> {
        if vector < 16 {
            self.error(ESR_SEND_ILLEGAL_VECTOR);
            return None;
        }
        Some(ApicAction::Send(ApicMessage {
            dest: Destination::SelfOnly,
            mode: DeliveryMode::Fixed,
            vector,
            level: false,
            assert: true,
            source: Some(self.id()),
        }))
    }

    // ---- timer ----

    fn timer_mode(&self) -> TimerMode {
        match self.lvt[LVT_TIMER] & LVT_TIMER_MODE {
            LVT_TIMER_PERIODIC => TimerMode::Periodic,
            LVT_TIMER_TSC_DEADLINE => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }

    /// log2 of the divider: TDCR bits 3,1:0 = 0b000 → 2, ..., 0b110 → 128, 0b111 → 1.
    fn timer_shift(&self) -> u32 {
        let d = self.timer_divide;
        (((d & 3) | ((d >> 1) & 4)) + 1) & 7
    }

    fn elapsed_ticks(&self, now: u64) -> u64 {
        self.timer_base + (now.saturating_sub(self.timer_since) >> self.timer_shift())
    }

    fn current_count(&self, now: u64) -> u32 {
        if !self.timer_running || self.timer_initial == 0 || self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        let init = u64::from(self.timer_initial);
        let e = self.elapsed_ticks(now);
        match self.timer_mode() {
            TimerMode::Periodic => (init - e % init) as u32,
            _ => init.saturating_sub(e) as u32,
        }
    }

    /// When the timer next fires (clock nanoseconds), if it is armed. The machine's
    /// timer thread should re-read this after every APIC register write.
    pub fn timer_deadline(&self) -> Option<u64> {
        match self.timer_mode() {
            TimerMode::TscDeadline => (self.tsc_deadline != 0).then(|| self.tsc_to_ns(self.tsc_deadline)),
            _ if self.timer_running => {
                let ticks = u128::from(self.timer_next_tick.saturating_sub(self.timer_base));
                let ns = u128::from(self.timer_since) + (ticks << self.timer_shift());
                Some(ns.min(u128::from(u64::MAX)) as u64)
            }
            _ => None,
        }
    }

    fn timer_fire(&mut self) {
        let v = self.lvt[LVT_TIMER];
        if v & LVT_MASKED == 0 {
            self.accept_local(v as u8, false);
        }
    }

    fn timer_tick(&mut self, now: u64) {
        match self.timer_mode() {
            TimerMode::TscDeadline => {
                if self.tsc_deadline != 0 && self.tsc_at(now) >= self.tsc_deadline {
                    self.tsc_deadline = 0;
                    self.timer_fire();
                }
            }
            mode => {
                let Some(due) = self.timer_deadline() else { return };
                if now < due {
                    return;
                }
                self.timer_fire();
                if mode == TimerMode::Periodic {
                    let init = u64::from(self.timer_initial);
                    let period_ns = init << self.timer_shift();
                    let from = if period_ns < MIN_PERIODIC_NS { now.saturating_add(MIN_PERIODIC_NS) } else { now };
                    self.timer_next_tick = (self.elapsed_ticks(from) / init + 1) * init;
                } else {
                    self.timer_running = false;
                }
            }
        }
    }

    fn timer_start(&mut self, now: u64) {
        self.timer_since = now;
        self.timer_base = 0;
        self.timer_next_tick = u64::from(self.timer_initial);
        self.timer_running = self.timer_initial != 0;
    }

    /// Restarts the count's bookkeeping at `now` from the current position (before a
    /// divider or mode change), so what follows counts from here.
    fn timer_rebase(&mut self, now: u64) {
        if !self.timer_running || self.timer_mode() == TimerMode::TscDeadline {
            return;
        }
        let init = u64::from(self.timer_initial);
        let e = self.elapsed_ticks(now);
        self.timer_base = if self.timer_mode() == TimerMode::Periodic { e % init } else { e.min(init) };
        self.timer_since = now;
        self.timer_next_tick = init;
    }

    fn write_tmict(&mut self, v: u32) {
        if self.timer_mode() == TimerMode::TscDeadline {
            return;
        }
        let now = self.now();
        self.timer_tick(now);
        self.timer_initial = v;
        self.timer_start(now);
    }

    fn write_tdcr(&mut self, v: u32) {
        let now = self.now();
        self.timer_tick(now);
        self.timer_rebase(now);
        self.timer_divide = v & 0xb;
    }

    fn write_lvt_timer(&mut self, v: u32) {
        let now = self.now();
        self.timer_tick(now);
        let old = self.timer_mode();
        self.timer_rebase(now);
        self.lvt[LVT_TIMER] = v;
        let new = self.timer_mode();
        if (old == TimerMode::TscDeadline) != (new == TimerMode::TscDeadline) {
            // Switching into or out of TSC-deadline mode disarms the timer.
            self.timer_initial = 0;
            self.timer_running = false;
            self.tsc_deadline = 0;
        }
    }

    fn write_tsc_deadline(&mut self, v: u64) {
        if self.timer_mode() != TimerMode::TscDeadline {
            return;
        }
        self.tsc_deadline = v;
        let now = self.now();
        self.timer_tick(now);
    }

    // ---- registers ----

    fn lvt_writable(&self, idx: usize) -> u32 {
        let mut m = LVT_WRITABLE[idx];
        if idx == LVT_TIMER && !self.features.tsc_deadline {
            m &= !LVT_TIMER_TSC_DEADLINE;
        }
        m
    }

    fn svr_writable(&self) -> u32 {
        0xff | SVR_ENABLE | SVR_FOCUS_DISABLE | if self.features.directed_eoi { SVR_SUPPRESS_EOI_BROADCAST } else { 0 }
    }

    fn write_svr(&mut self, v: u32) {
        self.svr = v & self.svr_writable();
        if !self.sw_enabled() {
            for lvt in &mut self.lvt {
                *lvt |= LVT_MASKED;
            }
        }
    }

    fn write_lvt(&mut self, idx: usize, v: u32) {
        let mut v = v & self.lvt_writable(idx);
        if !self.sw_enabled() {
            v |= LVT_MASKED;
        }
        if idx == LVT_TIMER {
            self.write_lvt_timer(v);
            return;
        }
        if idx == LVT_LINT0 || idx == LVT_LINT1 {
            let i = idx - LVT_LINT0;
            // Remote IRR is the APIC's; it stays while the entry is level-triggered fixed.
            let rirr = self.lvt[idx] & LVT_REMOTE_IRR;
            self.lvt[idx] = v;
            if self.lint_is_level_fixed(i) {
                self.lvt[idx] |= rirr;
                self.lint_level_check(i);
            }
            return;
        }
        self.lvt[idx] = v;
    }

    fn latch_esr(&mut self) {
        self.esr = self.esr_pending;
        self.esr_pending = 0;
    }

    /// The 32-bit value of register `idx` in the current mode; `None` if there is no
    /// such register (reserved). Write-only registers read 0 here.
    fn reg_value(&self, idx: usize) -> Option<u32> {
        let x2 = self.x2apic();
        Some(match idx {
            R_ID if x2 => self.initial_id,
            R_ID => u32::from(self.xapic_id) << 24,
            R_VERSION => self.version(),
            R_TPR => u32::from(self.tpr),
            R_APR => u32::from(self.arbitration_priority()),
            R_PPR => u32::from(self.ppr()),
            R_EOI => 0,
            R_LDR if x2 => self.x2apic_ldr(),
            R_LDR => self.ldr,
            R_DFR => self.dfr,
            R_SVR => self.svr,
            R_ISR..=0x17 => self.isr[idx - R_ISR],
            R_TMR..=0x1f => self.tmr[idx - R_TMR],
            R_IRR..=0x27 => self.irr[idx - R_IRR],
            R_ESR => self.esr,
            R_ICR_LO => self.icr_lo & !ICR_DELIVERY_STATUS,
            R_ICR_HI => self.icr_hi,
            R_LVT_TIMER..=R_LVT_ERROR => self.lvt[idx - R_LVT_TIMER] & !LVT_DELIVERY_STATUS,
            R_TMICT => self.timer_initial,
            R_TMCCT => self.current_count(self.now()),
            R_TDCR => self.timer_divide,
            R_SELF_IPI if x2 => 0,
            _ => return None,
        })
    }

    fn xapic_read(&mut self, idx: usize) -> u32 {
        match self.reg_value(idx) {
            Some(v) => v,
            None => {
                self.error(ESR_ILLEGAL_REGISTER);
                0
            }
        }
    }

    fn xapic_write(&mut self, idx: usize, v: u32) -> Option<ApicAction> {
        match idx {
            R_ID => self.xapic_id = (v >> 24) as u8,
            R_TPR => self.tpr = v as u8,
            R_EOI => return self.eoi(),
            R_LDR => self.ldr = v & 0xff00_0000,
            R_DFR => self.dfr = v | 0x0fff_ffff,
            R_SVR => self.write_svr(v),
            R_ESR => self.latch_esr(),
            R_ICR_LO => {
                self.icr_lo = v & ICR_WRITABLE;
                return self.send_ipi(self.icr_lo, self.icr_hi >> 24);
            }
            R_ICR_HI => self.icr_hi = v & 0xff00_0000,
            R_LVT_TIMER..=R_LVT_ERROR => self.write_lvt(idx - R_LVT_TIMER, v),
            R_TMICT => self.write_tmict(v),
            R_TDCR => self.write_tdcr(v),
            // Read-only: ignored.
            R_VERSION | R_APR | R_PPR | R_ISR..=0x27 | R_TMCCT => {}
            _ => self.error(ESR_ILLEGAL_REGISTER),
        }
        None
    }

    // ---- xAPIC MMIO ----

    /// A read at `offset` into the xAPIC page. Registers are 32 bits at 16-byte
    /// strides; other widths and offsets read the bytes they cover (zeros past a
    /// register's 4 bytes). All ones when the page is not the APIC (x2APIC, disabled).
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        if self.mode() != ApicMode::XApic {
            data.fill(0xff);
            return;
        }
        let mut i = 0;
        while i < data.len() {
            let off = offset.wrapping_add(i as u64) & (APIC_MMIO_SIZE - 1);
            let byte = (off & 0xf) as usize;
            let n = (16 - byte).min(data.len() - i);
            let v = if byte < 4 { self.xapic_read((off >> 4) as usize) } else { 0 };
            for (k, d) in data[i..i + n].iter_mut().enumerate() {
                let b = byte + k;
                *d = if b < 4 { (v >> (8 * b)) as u8 } else { 0 };
            }
            i += n;
        }
    }

    /// A write at `offset` into the xAPIC page: 4 bytes or more at a register's start
    /// write the register (the low 32 bits); anything else is ignored. Returns what
    /// the write asks the machine to do (an IPI, an EOI broadcast).
    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) -> Option<ApicAction> {
        if self.mode() != ApicMode::XApic {
            return None;
        }
        if offset & 0xf != 0 || data.len() < 4 {
            log::trace!("lapic: ignored {}-byte write at {offset:#x}", data.len());
            return None;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        self.xapic_write(((offset & (APIC_MMIO_SIZE - 1)) >> 4) as usize, v)
    }

    // ---- MSRs ----

    /// Whether `index` is an MSR this model implements (IA32_APIC_BASE,
    /// IA32_TSC_DEADLINE, the x2APIC range).
    pub fn handles_msr(index: u32) -> bool {
        matches!(index, MSR_APIC_BASE | MSR_TSC_DEADLINE | MSR_X2APIC_FIRST..=MSR_X2APIC_LAST)
    }

    /// RDMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE (0 unless in TSC-deadline mode) or an
    /// x2APIC register (only in x2APIC mode; write-only and absent registers #GP).
    pub fn msr_read(&mut self, index: u32) -> Result<u64, Gp> {
        match index {
            MSR_APIC_BASE => Ok(self.base),
            MSR_TSC_DEADLINE if self.features.tsc_deadline => {
                Ok(if self.timer_mode() == TimerMode::TscDeadline { self.tsc_deadline } else { 0 })
            }
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST if self.x2apic() => {
                let idx = (index - MSR_X2APIC_FIRST) as usize;
                match idx {
                    R_ICR_LO => Ok((u64::from(self.icr_hi) << 32) | u64::from(self.icr_lo)),
                    R_APR | R_DFR | R_ICR_HI | R_EOI | R_SELF_IPI => Err(Gp),
                    _ => self.reg_value(idx).map(u64::from).ok_or(Gp),
                }
            }
            _ => Err(Gp),
        }
    }

    /// WRMSR of IA32_APIC_BASE, IA32_TSC_DEADLINE or an x2APIC register, with the
    /// x2APIC rules (MSRs only in x2APIC mode, reserved bits and read-only registers
    /// #GP, ICR as one 64-bit register, SELF IPI).
    pub fn msr_write(&mut self, index: u32, v: u64) -> Result<Option<ApicAction>, Gp> {
        match index {
            MSR_APIC_BASE => self.write_apic_base(v).map(|()| None),
            MSR_TSC_DEADLINE if self.features.tsc_deadline => {
                self.write_tsc_deadline(v);
                Ok(None)
            }
            MSR_X2APIC_FIRST..=MSR_X2APIC_LAST if self.x2apic() => {
                self.x2apic_write((index - MSR_X2APIC_FIRST) as usize, v)
            }
            _ => Err(Gp),
        }
    }

    fn x2apic_write(&mut self, idx: usize, v: u64) -> Result<Option<ApicAction>, Gp> {
        if idx == R_ICR_LO {
            let lo = v as u32;
            if lo & !(ICR_WRITABLE | ICR_DELIVERY_STATUS) != 0 {
                return Err(Gp);
            }
            self.icr_lo = lo & ICR_WRITABLE;
            self.icr_hi = (v >> 32) as u32;
            return Ok(self.send_ipi(self.icr_lo, self.icr_hi));
        }
        if v >> 32 != 0 {
            return Err(Gp);
        }
        let v = v as u32;
        let check = |ok: bool| if ok { Ok(()) } else { Err(Gp) };
        match idx {
            R_TPR => {
                check(v <= 0xff)?;
                self.tpr = v as u8;
            }
            R_EOI => {
                check(v == 0)?;
                return Ok(self.eoi());
            }
            R_SVR => {
                check(v & !self.svr_writable() == 0)?;
                self.write_svr(v);
            }
            R_ESR => {
                check(v == 0)?;
                self.latch_esr();
            }
            R_LVT_TIMER..=R_LVT_ERROR => {
                let n = idx - R_LVT_TIMER;
                let mut allowed = self.lvt_writable(n) | LVT_DELIVERY_STATUS;
                if n == LVT_LINT0 || n == LVT_LINT1 {
                    allowed |= LVT_REMOTE_IRR;
                }
                check(v & !allowed == 0)?;
                if n == LVT_TIMER {
                    check(v & LVT_TIMER_MODE != LVT_TIMER_MODE)?;
                }
                self.write_lvt(n, v);
            }
            R_TMICT => self.write_tmict(v),
            R_TDCR => {
                check(v & !0xb == 0)?;
                self.write_tdcr(v);
            }
            R_SELF_IPI => {
                check(v <= 0xff)?;
                return Ok(self.self_ipi(v as u8));
            }
            _ => return Err(Gp),
        }
        Ok(None)
    }

    fn write_apic_base(&mut self, v: u64) -> Result<(), Gp> {
        let mut reserved = 0xff | (1 << 9) | !(self.base_address_mask() | 0xfff);
        if !self.features.x2apic {
            reserved |= BASE_EXTD;
        }
        if v & reserved != 0 {
            return Err(Gp);
        }
        let new = match (v & BASE_EN != 0, v & BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(Gp),
        };
        let old = self.mode();
        if matches!((old, new), (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic)) {
            return Err(Gp);
        }
        // The BSP flag is the hardware's; writes do not change it.
        self.base = (v & !BASE_BSP) | (self.base & BASE_BSP);
        match (old, new) {
            (ApicMode::XApic | ApicMode::X2Apic, ApicMode::Disabled) => {
                self.reset_registers();
                if old == ApicMode::X2Apic {
                    self.xapic_id = self.initial_id as u8;
                }
            }
            (ApicMode::XApic, ApicMode::X2Apic) => {
                // The x2APIC ID and LDR come from the initial ID; the ICR's destination
                // changes format.
                self.icr_hi = 0;
            }
            _ => {}
        }
        Ok(())
    }
}

// The registers, the timer (clock times, which go on from where they were: the machine
// restores its clock too) and the latched signals; not what the APIC was built with
// (its initial ID, BSP flag, clock, TSC rate and features).
quern_core::snapshot_fields!(LocalApic {
    base,
    xapic_id,
    tpr,
    ldr,
    dfr,
    svr,
    isr,
    tmr,
    irr,
    esr,
    esr_pending,
    icr_lo,
    icr_hi,
    lvt,
    lint_level,
    timer_initial,
    timer_divide,
    timer_running,
    timer_since,
    timer_base,
    timer_next_tick,
    tsc_deadline,
    nmi,
    smi,
    init,
    sipi,
    extint,
});

impl TimerDevice for LocalApic {
    /// Raises the timer vector if the timer is due at `now_ns` (one-shot, periodic
    /// with re-arm, or TSC deadline) and returns when it is next due.
    fn tick(&mut self, now_ns: u64) -> Option<u64> {
        if self.hw_enabled() {
            self.timer_tick(now_ns);
        }
        self.timer_deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quern_core::clock::ManualClock;

    const TSC_HZ: u64 = 3_000_000_000;

    fn apic(id: u32, bsp: bool) -> (Arc<ManualClock>, LocalApic) {
        let clock = Arc::new(ManualClock::default());
        let a = LocalApic::new(id, bsp, clock.clone(), TSC_HZ);
        (clock, a)
    }

    fn rd(a: &mut LocalApic, off: u64) -> u32 {
        let mut d = [0u8; 4];
        a.mmio_read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(a: &mut LocalApic, off: u64, v: u32) -> Option<ApicAction> {
        a.mmio_write(off, &v.to_le_bytes())
    }

    fn enabled(id: u32) -> (Arc<ManualClock>, LocalApic) {
        let (c, mut a) = apic(id, true);
        wr(&mut a, 0xf0, 0x1ff);
        (c, a)
    }

    fn fixed(vector: u8, level: bool) -> ApicMessage {
        ApicMessage {
            dest: Destination::Physical(0),
            mode: DeliveryMode::Fixed,
            vector,
            level,
            assert: true,
            source: None,
        }
    }

    fn msg(mode: DeliveryMode, vector: u8) -> ApicMessage {
        ApicMessage { mode, ..fixed(vector, false) }
    }

    /// Takes and EOIs every deliverable interrupt, returning the vectors in order.
    fn drain(a: &mut LocalApic) -> Vec<u8> {
        let mut out = vec![];
        while a.poll(true) == Some(CpuSignal::Interrupt) {
            out.push(a.acknowledge());
            wr(a, 0xb0, 0);
        }
        out
    }

    fn sent(action: Option<ApicAction>) -> ApicMessage {
        match action {
            Some(ApicAction::Send(m)) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[test]
    fn snapshot_keeps_registers_pending_signals_and_the_timer() {
        use quern_core::snapshot::Snapshot;
        let (ca, mut a) = enabled(2);
        wr(&mut a, 0x80, 0x20);
        wr(&mut a, 0xd0, 0x0300_0000);
        wr(&mut a, 0x320, 0x2_0041); // periodic, divide by 2: 20 us
        wr(&mut a, 0x3e0, 0);
        wr(&mut a, 0x380, 10_000);
        a.deliver(&fixed(0x50, false));
        assert_eq!(a.acknowledge(), 0x50);
        a.deliver(&fixed(0x60, true));
        a.deliver(&msg(DeliveryMode::Nmi, 0));
        a.deliver(&msg(DeliveryMode::StartUp, 0x9a));
        a.set_lint(1, true);
        ca.set_ns(25_000);
        a.tick(25_000);

        let (cb, mut b) = apic(2, true);
        cb.set_ns(25_000);
        crate::testutil::restore_into(&mut b, &a.save_state());
        for idx in 0..0x40 {
            assert_eq!(b.reg_value(idx), a.reg_value(idx), "register {idx:#x}");
        }
        assert_eq!(b.timer_deadline(), Some(40_000));
        assert_eq!(b.poll(false), Some(CpuSignal::StartUp(0x9a)));
        b.take(CpuSignal::StartUp(0x9a));
        assert_eq!(b.poll(false), Some(CpuSignal::Nmi));
        b.take(CpuSignal::Nmi);
        assert_eq!(drain(&mut b), vec![0x60], "the timer's 0x41 waits below 0x50 in service");
        wr(&mut b, 0xb0, 0);
        assert_eq!(drain(&mut b), vec![0x41]);
        cb.set_ns(40_000);
        assert_eq!(b.tick(40_000), Some(60_000));
        assert_eq!(drain(&mut b), vec![0x41]);
        crate::testutil::assert_refuses_malformed(&mut b, &["/isr", "/lvt"]);
    }

    #[test]
    fn reset_values() {
        let (_c, mut a) = apic(3, true);
        assert_eq!(a.msr_read(MSR_APIC_BASE), Ok(0xfee0_0900));
        assert_eq!(a.mmio_base(), Some(0xfee0_0000));
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(rd(&mut a, 0x20), 3 << 24);
        assert_eq!(rd(&mut a, 0x30), 0x0005_0014);
        for off in [0x80, 0x90, 0xa0, 0xd0, 0x280, 0x300, 0x310, 0x380, 0x390, 0x3e0] {
            assert_eq!(rd(&mut a, off), 0, "offset {off:#x}");
        }
        assert_eq!(rd(&mut a, 0xe0), 0xffff_ffff);
        assert_eq!(rd(&mut a, 0xf0), 0xff);
        for r in 0..24 {
            assert_eq!(rd(&mut a, 0x100 + r * 0x10), 0);
        }
        for off in [0x320, 0x330, 0x340, 0x360, 0x370] {
            assert_eq!(rd(&mut a, off), 0x1_0000, "offset {off:#x}");
        }
        // The BSP's virtual wire.
        assert_eq!(rd(&mut a, 0x350), 0x700);
        assert_eq!(a.poll(true), None);
        assert_eq!(a.timer_deadline(), None);

        let (_c, mut ap) = apic(1, false);
        assert_eq!(ap.msr_read(MSR_APIC_BASE), Ok(0xfee0_0800));
        assert_eq!(rd(&mut ap, 0x350), 0x1_0000);
        assert!(!ap.is_bsp());
    }

    #[test]
    fn register_widths_and_reserved_offsets() {
        let (_c, mut a) = apic(0x12, true);
        let mut b = [0u8; 1];
        a.mmio_read(0x23, &mut b);
        assert_eq!(b[0], 0x12);
        let mut q = [0xaau8; 8];
        a.mmio_read(0x30, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x0005_0014);
        let mut w = [0u8; 16];
        a.mmio_read(0x2e, &mut w);
        assert_eq!(&w[..4], &[0, 0, 0x14, 0]);
        // A byte write is ignored; a misaligned dword too.
        a.mmio_write(0x80, &[0x70]);
        a.mmio_write(0x84, &0x70u32.to_le_bytes());
        assert_eq!(rd(&mut a, 0x80), 0);
        // A 64-bit write writes the register.
        a.mmio_write(0x80, &0x60u64.to_le_bytes());
        assert_eq!(rd(&mut a, 0x80), 0x60);
        // Reserved register: illegal register address, seen after an ESR write.
        assert_eq!(rd(&mut a, 0x40), 0);
        assert_eq!(rd(&mut a, 0x280), 0);
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), ESR_ILLEGAL_REGISTER);
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), 0);
        // Read-only registers ignore writes.
        wr(&mut a, 0x30, 0);
        wr(&mut a, 0xa0, 0xff);
        assert_eq!(rd(&mut a, 0x30), 0x0005_0014);
        assert_eq!(rd(&mut a, 0xa0), 0x60);
        // Writable bits only.
        wr(&mut a, 0x20, 0xffff_ffff);
        assert_eq!(rd(&mut a, 0x20), 0xff00_0000);
        wr(&mut a, 0xd0, 0xffff_ffff);
        assert_eq!(rd(&mut a, 0xd0), 0xff00_0000);
        wr(&mut a, 0xe0, 0);
        assert_eq!(rd(&mut a, 0xe0), 0x0fff_ffff);
        wr(&mut a, 0xf0, 0xffff_ffff);
        assert_eq!(rd(&mut a, 0xf0), 0x3ff);
        wr(&mut a, 0x3e0, 0xffff_ffff);
        assert_eq!(rd(&mut a, 0x3e0), 0xb);
        wr(&mut a, 0x360, 0xffff_ffff);
        assert_eq!(rd(&mut a, 0x360), 0x1_a7ff);
        wr(&mut a, 0x370, 0xffff_ffff);
        assert_eq!(rd(&mut a, 0x370), 0x1_00ff);
        wr(&mut a, 0x320, 0xffff_ffff);
        assert_eq!(rd(&mut a, 0x320), 0x7_00ff);
    }

    #[test]
    fn tpr_masks_and_priority_orders_vectors() {
        let (_c, mut a) = enabled(0);
        for v in [0x31, 0x45, 0x52, 0x5f] {
            a.deliver(&fixed(v, false));
        }
        assert_eq!(rd(&mut a, 0x210), 1 << 17);
        assert_eq!(rd(&mut a, 0x220), 1 << 31 | 1 << 18 | 1 << 5);
        wr(&mut a, 0x80, 0x50);
        assert_eq!(rd(&mut a, 0xa0), 0x50);
        // Class 5 is not above TPR class 5.
        assert_eq!(a.poll(true), None);
        wr(&mut a, 0x80, 0x4f);
        assert_eq!(a.poll(false), None);
        assert_eq!(a.poll(true), Some(CpuSignal::Interrupt));
        assert_eq!(a.acknowledge(), 0x5f);
        // PPR is the in-service class: 0x52 waits for the EOI.
        assert_eq!(rd(&mut a, 0xa0), 0x50);
        assert_eq!(a.poll(true), None);
        // The TPR rose after INTA was signalled: spurious vector, no ISR bit.
        assert_eq!(a.acknowledge(), 0xff);
        assert_eq!(rd(&mut a, 0x120), 1 << 31);
        wr(&mut a, 0xb0, 0);
        assert_eq!(rd(&mut a, 0xa0), 0x4f);
        assert_eq!(drain(&mut a), vec![0x52]);
        // CR8.
        assert_eq!(a.cr8(), 4);
        a.set_cr8(2);
        assert_eq!(a.tpr(), 0x20);
        assert_eq!(drain(&mut a), vec![0x45, 0x31]);
        a.set_tpr(0);
        assert_eq!(a.acknowledge(), 0xff);
    }

    #[test]
    fn isr_nesting_and_eoi_order() {
        let (_c, mut a) = enabled(0);
        a.deliver(&fixed(0x40, true));
        assert_eq!(a.acknowledge(), 0x40);
        a.deliver(&fixed(0x30, false));
        // Lower class waits; a higher one nests.
        assert_eq!(a.poll(true), None);
        a.deliver(&fixed(0x80, false));
        assert_eq!(a.acknowledge(), 0x80);
        assert_eq!(rd(&mut a, 0xa0), 0x80);
        assert_eq!(rd(&mut a, 0x180 + 0x20), 1 << 0);
        // EOI clears the highest in-service vector first: 0x80 (edge), then 0x40 (level).
        assert_eq!(wr(&mut a, 0xb0, 0), None);
        assert_eq!(rd(&mut a, 0xa0), 0x40);
        assert_eq!(wr(&mut a, 0xb0, 0), Some(ApicAction::EoiBroadcast(0x40)));
        assert_eq!(wr(&mut a, 0xb0, 0), None);
        assert_eq!(drain(&mut a), vec![0x30]);
        // With nothing in service an EOI does nothing.
        assert_eq!(wr(&mut a, 0xb0, 0), None);
    }

    #[test]
    fn directed_eoi_suppresses_broadcast() {
        let clock = Arc::new(ManualClock::default());
        let features = LapicFeatures { directed_eoi: true, ..LapicFeatures::default() };
        let mut a = LocalApic::new(0, true, clock, TSC_HZ).with_features(features);
        assert_eq!(rd(&mut a, 0x30), 0x0105_0014);
        wr(&mut a, 0xf0, 0x11ff);
        a.deliver(&fixed(0x40, true));
        assert_eq!(a.acknowledge(), 0x40);
        assert_eq!(wr(&mut a, 0xb0, 0), None);
        // Without the feature, bit 12 is not writable.
        let (_c, mut b) = apic(0, true);
        wr(&mut b, 0xf0, 0x11ff);
        assert_eq!(rd(&mut b, 0xf0), 0x1ff);
    }

    #[test]
    fn software_disable_masks_lvts() {
        let (_c, mut a) = enabled(0);
        for off in [0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            wr(&mut a, off, 0x40);
            assert_eq!(rd(&mut a, off) & LVT_MASKED, 0);
        }
        a.deliver(&fixed(0x50, false));
        wr(&mut a, 0xf0, 0xff);
        for off in [0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            assert_eq!(rd(&mut a, off), 0x1_0040, "{off:#x}");
            // Unmasking while software-disabled does not take.
            wr(&mut a, off, 0x41);
            assert_eq!(rd(&mut a, off), 0x1_0041, "{off:#x}");
        }
        // Fixed messages are dropped, NMI still accepted, pending ones still delivered.
        a.deliver(&fixed(0x60, false));
        a.deliver(&msg(DeliveryMode::Nmi, 0));
        assert_eq!(a.poll(true), Some(CpuSignal::Nmi));
        a.take(CpuSignal::Nmi);
        assert_eq!(drain(&mut a), vec![0x50]);
        // Re-enabling leaves them masked.
        wr(&mut a, 0xf0, 0x1ff);
        assert_eq!(rd(&mut a, 0x350), 0x1_0041);
    }

    #[test]
    fn timer_one_shot_and_divide() {
        let (c, mut a) = enabled(0);
        wr(&mut a, 0x320, 0x40);
        wr(&mut a, 0x3e0, 0x3); // divide by 16
        wr(&mut a, 0x380, 100);
        assert_eq!(a.timer_deadline(), Some(1600));
        assert_eq!(rd(&mut a, 0x390), 100);
        c.set_ns(800);
        assert_eq!(rd(&mut a, 0x390), 50);
        c.set_ns(1599);
        assert_eq!(rd(&mut a, 0x390), 1);
        assert_eq!(a.tick(1599), Some(1600));
        assert_eq!(a.poll(true), None);
        c.set_ns(1600);
        assert_eq!(a.tick(1600), None);
        assert_eq!(rd(&mut a, 0x390), 0);
        assert_eq!(drain(&mut a), vec![0x40]);
        c.set_ns(100_000);
        assert_eq!(a.tick(100_000), None);
        assert_eq!(drain(&mut a), Vec::<u8>::new());

        // Every divider encoding.
        for (tdcr, div) in [(0, 2), (1, 4), (2, 8), (3, 16), (8, 32), (9, 64), (0xa, 128), (0xb, 1)] {
            wr(&mut a, 0x3e0, tdcr);
            let t0 = c.now_ns();
            wr(&mut a, 0x380, 1000);
            assert_eq!(a.timer_deadline(), Some(t0 + 1000 * div), "tdcr {tdcr:#x}");
            c.advance_ns(10 * div);
            assert_eq!(rd(&mut a, 0x390), 990, "tdcr {tdcr:#x}");
        }

        // A divider change mid-count keeps the count and counts on at the new rate.
        wr(&mut a, 0x3e0, 0xb);
        wr(&mut a, 0x380, 1000);
        c.advance_ns(400);
        wr(&mut a, 0x3e0, 0x0);
        assert_eq!(rd(&mut a, 0x390), 600);
        c.advance_ns(200);
        assert_eq!(rd(&mut a, 0x390), 500);
        assert_eq!(a.timer_deadline(), Some(c.now_ns() + 1000));

        // Initial count 0 stops the timer; a masked timer counts but raises nothing.
        wr(&mut a, 0x380, 0);
        assert_eq!(a.timer_deadline(), None);
        wr(&mut a, 0x320, 0x1_0040);
        wr(&mut a, 0x380, 10);
        c.advance_ns(100);
        let now = c.now_ns();
        assert_eq!(a.tick(now), None);
        assert_eq!(drain(&mut a), Vec::<u8>::new());
    }

    #[test]
    fn timer_periodic_counts_against_the_clock() {
        let (c, mut a) = enabled(0);
        wr(&mut a, 0x320, 0x2_0041);
        wr(&mut a, 0x3e0, 0); // divide by 2: period 20 us
        wr(&mut a, 0x380, 10_000);
        assert_eq!(rd(&mut a, 0x320), 0x2_0041);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut count = 0;
        let mut deadline = a.timer_deadline().unwrap();
        assert_eq!(deadline, 20_000);
        while c.now_ns() < 10_000_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            c.advance_ns(1 + rng % 7000);
            let now = c.now_ns();
            assert_eq!(rd(&mut a, 0x390), 10_000 - ((now / 2) % 10_000) as u32, "at {now}");
            if now >= deadline {
                deadline = a.tick(now).unwrap();
                assert!(deadline > now);
                assert_eq!(deadline % 20_000, 0);
            }
            count += drain(&mut a).len() as u64;
        }
        assert_eq!(count, c.now_ns() / 20_000);

        // Periodic -> one-shot mid-period: fires at the end of this period, then stops.
        c.set_ns(10_005_000);
        wr(&mut a, 0x320, 0x41);
        assert_eq!(rd(&mut a, 0x390), 7500);
        let d = a.timer_deadline().unwrap();
        assert_eq!(d, 10_020_000);
        a.tick(d);
        assert_eq!(drain(&mut a), vec![0x41]);
        assert_eq!(a.timer_deadline(), None);
    }

    #[test]
    fn timer_periodic_minimum_period() {
        let (c, mut a) = enabled(0);
        wr(&mut a, 0x320, 0x2_0041);
        wr(&mut a, 0x3e0, 0xb);
        wr(&mut a, 0x380, 1);
        c.set_ns(1);
        let next = a.tick(1).unwrap();
        assert!(next > MIN_PERIODIC_NS);
        assert_eq!(drain(&mut a), vec![0x41]);
    }

    #[test]
    fn timer_tsc_deadline() {
        let (c, mut a) = enabled(0);
        assert_eq!(a.tsc_now(), 0);
        c.set_ns(1000);
        assert_eq!(a.tsc_now(), 3000);
        // Not in TSC-deadline mode: the MSR reads 0 and ignores writes.
        a.msr_write(MSR_TSC_DEADLINE, 5000).unwrap();
        assert_eq!(a.msr_read(MSR_TSC_DEADLINE), Ok(0));
        // A running one-shot timer is disarmed by the switch.
        wr(&mut a, 0x380, 100_000);
        wr(&mut a, 0x320, 0x4_0042);
        assert_eq!(a.timer_deadline(), None);
        assert_eq!(rd(&mut a, 0x380), 0);
        // Initial-count writes are ignored in TSC-deadline mode.
        wr(&mut a, 0x380, 10);
        assert_eq!(rd(&mut a, 0x380), 0);
        assert_eq!(rd(&mut a, 0x390), 0);

        a.msr_write(MSR_TSC_DEADLINE, 6001).unwrap();
        assert_eq!(a.msr_read(MSR_TSC_DEADLINE), Ok(6001));
        // TSC 6001 at 3 GHz is reached at ns 2001 (ceil(2000.33)).
        assert_eq!(a.timer_deadline(), Some(2001));
        assert_eq!(a.tick(2000), Some(2001));
        assert_eq!(a.poll(true), None);
        assert_eq!(a.tick(2001), None);
        assert_eq!(a.msr_read(MSR_TSC_DEADLINE), Ok(0));
        assert_eq!(drain(&mut a), vec![0x42]);

        // A deadline in the past fires during the write.
        c.set_ns(10_000);
        a.msr_write(MSR_TSC_DEADLINE, 1).unwrap();
        assert_eq!(drain(&mut a), vec![0x42]);
        // Writing 0 disarms.
        a.msr_write(MSR_TSC_DEADLINE, 40_000).unwrap();
        a.msr_write(MSR_TSC_DEADLINE, 0).unwrap();
        assert_eq!(a.timer_deadline(), None);

        // Expiry count over many deadlines against the manual clock.
        let mut fired = 0;
        for k in 1..=500u64 {
            let target = a.tsc_now() + 777 * k;
            a.msr_write(MSR_TSC_DEADLINE, target).unwrap();
            let d = a.timer_deadline().unwrap();
            c.set_ns(d - 1);
            assert_eq!(a.tick(d - 1), Some(d));
            c.set_ns(d);
            assert!(a.tsc_at(d) >= target && a.tsc_at(d - 1) < target);
            assert_eq!(a.tick(d), None);
            fired += drain(&mut a).len();
        }
        assert_eq!(fired, 500);

        // Leaving TSC-deadline mode disarms it.
        let t = a.tsc_now() + 1000;
        a.msr_write(MSR_TSC_DEADLINE, t).unwrap();
        wr(&mut a, 0x320, 0x42);
        assert_eq!(a.timer_deadline(), None);
        assert_eq!(a.msr_read(MSR_TSC_DEADLINE), Ok(0));
    }

    #[test]
    fn icr_sends_messages() {
        let (_c, mut a) = enabled(5);
        let base = ApicMessage {
            dest: Destination::Physical(3),
            mode: DeliveryMode::Fixed,
            vector: 0x40,
            level: false,
            assert: true,
            source: Some(5),
        };
        wr(&mut a, 0x310, 3 << 24);
        assert_eq!(sent(wr(&mut a, 0x300, 0x4040)), base);
        // Delivery status reads idle; the destination stays in ICR high.
        assert_eq!(rd(&mut a, 0x300), 0x4040);
        assert_eq!(rd(&mut a, 0x310), 3 << 24);
        // Logical, lowest priority, level-triggered.
        assert_eq!(
            sent(wr(&mut a, 0x300, 0xc941)),
            ApicMessage {
                dest: Destination::Logical(3),
                mode: DeliveryMode::LowestPriority,
                vector: 0x41,
                level: true,
                ..base
            }
        );
        for (lo, dest) in [
            (0x4_4050, Destination::SelfOnly),
            (0x8_4050, Destination::AllIncludingSelf),
            (0xc_4050, Destination::AllExcludingSelf),
        ] {
            assert_eq!(sent(wr(&mut a, 0x300, lo)), ApicMessage { dest, vector: 0x50, ..base });
        }
        assert_eq!(sent(wr(&mut a, 0x300, 0x4200)), ApicMessage { mode: DeliveryMode::Smi, vector: 0, ..base });
        assert_eq!(
            sent(wr(&mut a, 0x300, 0xc_4400)),
            ApicMessage { dest: Destination::AllExcludingSelf, mode: DeliveryMode::Nmi, vector: 0, ..base }
        );
        // INIT assert (level), INIT de-assert (to everyone), SIPI.
        assert_eq!(
            sent(wr(&mut a, 0x300, 0xc500)),
            ApicMessage { mode: DeliveryMode::Init, vector: 0, level: true, ..base }
        );
        assert_eq!(
            sent(wr(&mut a, 0x300, 0x8500)),
            ApicMessage {
                dest: Destination::AllIncludingSelf,
                mode: DeliveryMode::Init,
                vector: 0,
                level: true,
                assert: false,
                ..base
            }
        );
        assert_eq!(
            sent(wr(&mut a, 0x300, 0x4_0500)),
            ApicMessage { dest: Destination::SelfOnly, mode: DeliveryMode::Init, vector: 0, ..base }
        );
        assert_eq!(sent(wr(&mut a, 0x300, 0x4698)), ApicMessage { mode: DeliveryMode::StartUp, vector: 0x98, ..base });
        // Broadcast in physical mode.
        wr(&mut a, 0x310, 0xff << 24);
        assert_eq!(sent(wr(&mut a, 0x300, 0x4060)).dest, Destination::Physical(0xff));
        // Reserved modes send nothing; an illegal vector sets ESR bit 5.
        assert_eq!(wr(&mut a, 0x300, 0x4360), None);
        assert_eq!(wr(&mut a, 0x300, 0x4760), None);
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), 0);
        assert_eq!(wr(&mut a, 0x300, 0x400f), None);
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), ESR_SEND_ILLEGAL_VECTOR);
        // NMI with vector 0 is fine.
        assert!(wr(&mut a, 0x300, 0x4400).is_some());
        // A changed xAPIC ID is the source.
        wr(&mut a, 0x20, 9 << 24);
        assert_eq!(sent(wr(&mut a, 0x300, 0x4_4050)).source, Some(9));
    }

    #[test]
    fn esr_latches_and_error_interrupt() {
        let (_c, mut a) = enabled(0);
        wr(&mut a, 0x370, 0xfe);
        a.deliver(&fixed(3, false));
        // Not visible until an ESR write; the first error raised the error vector.
        assert_eq!(rd(&mut a, 0x280), 0);
        assert_eq!(drain(&mut a), vec![0xfe]);
        rd(&mut a, 0x40);
        // Only the first error after an ESR write interrupts.
        assert_eq!(drain(&mut a), Vec::<u8>::new());
        wr(&mut a, 0x280, 0x1234);
        assert_eq!(rd(&mut a, 0x280), ESR_RECEIVE_ILLEGAL_VECTOR | ESR_ILLEGAL_REGISTER);
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), 0);
        assert_eq!(rd(&mut a, 0x200), 0);
        // An illegal error vector records itself without looping.
        wr(&mut a, 0x370, 0x02);
        rd(&mut a, 0x40);
        wr(&mut a, 0x280, 0);
        assert_eq!(rd(&mut a, 0x280), ESR_RECEIVE_ILLEGAL_VECTOR | ESR_ILLEGAL_REGISTER);
    }

    #[test]
    fn init_sipi_nmi_smi_latches() {
        let (_c, mut a) = enabled(2);
        a.deliver(&msg(DeliveryMode::Nmi, 0));
        assert_eq!(a.poll(false), Some(CpuSignal::Nmi));
        a.deliver(&msg(DeliveryMode::Init, 0));
        assert_eq!(a.poll(false), Some(CpuSignal::Init));
        a.deliver(&msg(DeliveryMode::Smi, 0));
        assert_eq!(a.poll(false), Some(CpuSignal::Smi));
        a.take(CpuSignal::Smi);
        assert_eq!(a.poll(false), Some(CpuSignal::Init));
        a.take(CpuSignal::Init);
        assert_eq!(a.poll(false), Some(CpuSignal::Nmi));
        a.take(CpuSignal::Nmi);
        assert_eq!(a.poll(true), None);
        // INIT level de-assert is ignored.
        a.deliver(&ApicMessage { level: true, assert: false, ..msg(DeliveryMode::Init, 0) });
        assert_eq!(a.poll(true), None);

        // INIT resets the registers but keeps the ID and the base; a SIPI survives it.
        wr(&mut a, 0x20, 7 << 24);
        wr(&mut a, 0x80, 0x30);
        wr(&mut a, 0x320, 0x40);
        a.deliver(&fixed(0x70, false));
        a.deliver(&msg(DeliveryMode::Init, 0));
        a.deliver(&msg(DeliveryMode::StartUp, 0x9a));
        assert_eq!(a.poll(true), Some(CpuSignal::Init));
        a.take(CpuSignal::Init);
        a.init();
        assert_eq!(rd(&mut a, 0x20), 7 << 24);
        assert_eq!(a.apic_base(), 0xfee0_0900);
        assert_eq!(rd(&mut a, 0x80), 0);
        assert_eq!(rd(&mut a, 0xf0), 0xff);
        assert_eq!(rd(&mut a, 0x320), 0x1_0000);
        assert_eq!(rd(&mut a, 0x350), 0x1_0000);
        assert_eq!(rd(&mut a, 0x230), 0);
        assert_eq!(a.poll(true), Some(CpuSignal::StartUp(0x9a)));
        a.take(CpuSignal::StartUp(0x9a));
        assert_eq!(a.poll(true), None);
        // ExtINT messages latch until taken.
        a.deliver(&msg(DeliveryMode::ExtInt, 0));
        assert_eq!(a.poll(false), None);
        assert_eq!(a.poll(true), Some(CpuSignal::ExtInt));
        a.take(CpuSignal::ExtInt);
        assert_eq!(a.poll(true), None);

        // reset() goes back to power-on: the original ID, virtual wire, latches clear.
        a.deliver(&msg(DeliveryMode::Nmi, 0));
        a.reset();
        assert_eq!(rd(&mut a, 0x20), 2 << 24);
        assert_eq!(rd(&mut a, 0x350), 0x700);
        assert_eq!(a.poll(true), None);
    }

    #[test]
    fn x2apic_msr_rules() {
        let (_c, mut a) = apic(0x23, true);
        wr(&mut a, 0xf0, 0x1ff);
        // No x2APIC MSRs in xAPIC mode.
        assert_eq!(a.msr_read(0x802), Err(Gp));
        assert_eq!(a.msr_write(0x808, 0), Err(Gp));
        // Disabled → x2APIC and EXTD without EN are illegal; reserved bits too.
        assert_eq!(a.msr_write(MSR_APIC_BASE, 0xfee0_0400), Err(Gp));
        assert_eq!(a.msr_write(MSR_APIC_BASE, 0xfee0_0c01), Err(Gp));
        assert_eq!(a.msr_write(MSR_APIC_BASE, 0xfee0_0a00), Err(Gp));
        assert_eq!(a.msr_write(MSR_APIC_BASE, 0x100_fee0_0800), Err(Gp));
        a.msr_write(MSR_APIC_BASE, 0xfee0_0c00).unwrap();
        assert_eq!(a.mode(), ApicMode::X2Apic);
        assert_eq!(a.msr_read(MSR_APIC_BASE), Ok(0xfee0_0d00));
        // The MMIO page is gone.
        assert_eq!(a.mmio_base(), None);
        assert_eq!(rd(&mut a, 0x20), 0xffff_ffff);
        assert_eq!(wr(&mut a, 0x80, 0x20), None);
        assert_eq!(a.tpr(), 0);
        // Registers through MSRs.
        assert_eq!(a.msr_read(0x802), Ok(0x23));
        assert_eq!(a.msr_read(0x803), Ok(0x0005_0014));
        assert_eq!(a.msr_read(0x80d), Ok((2 << 16) | (1 << 3)));
        assert_eq!(a.msr_read(0x80f), Ok(0x1ff));
        a.msr_write(0x808, 0x30).unwrap();
        assert_eq!(a.msr_read(0x808), Ok(0x30));
        assert_eq!(a.msr_read(0x80a), Ok(0x30));
        // Read-only registers, write-only ones, absent ones.
        for r in [0x802, 0x803, 0x80a, 0x80d, 0x810, 0x818, 0x820, 0x839] {
            assert_eq!(a.msr_write(r, 0), Err(Gp), "{r:#x}");
        }
        for r in [0x80b, 0x83f, 0x809, 0x80e, 0x831, 0x82f, 0x800, 0x840, 0x8ff] {
            assert_eq!(a.msr_read(r), Err(Gp), "{r:#x}");
        }
        for r in [0x809, 0x80e, 0x831, 0x82f, 0x800, 0x840, 0x8ff] {
            assert_eq!(a.msr_write(r, 0), Err(Gp), "{r:#x}");
        }
        // Reserved bits.
        assert_eq!(a.msr_write(0x808, 0x100), Err(Gp));
        assert_eq!(a.msr_write(0x808, 1 << 32), Err(Gp));
        assert_eq!(a.msr_write(0x80b, 1), Err(Gp));
        assert_eq!(a.msr_write(0x828, 1), Err(Gp));
        assert_eq!(a.msr_write(0x80f, 0x400), Err(Gp));
        assert_eq!(a.msr_write(0x80f, 0x1000), Err(Gp));
        assert_eq!(a.msr_write(0x832, 0x6_0040), Err(Gp));
        assert_eq!(a.msr_write(0x832, 0x700), Err(Gp));
        assert_eq!(a.msr_write(0x835, 0x2_0000), Err(Gp));
        assert_eq!(a.msr_write(0x83e, 0x4), Err(Gp));
        assert_eq!(a.msr_write(0x83f, 0x100), Err(Gp));
        assert_eq!(a.msr_write(0x830, 1 << 13), Err(Gp));
        assert_eq!(a.msr_write(0x830, 1 << 20), Err(Gp));
        // Read-only status bits written back are fine.
        a.msr_write(0x835, u64::from(0x1_5700 | LVT_DELIVERY_STATUS)).unwrap();
        assert_eq!(a.msr_read(0x835), Ok(0x1_0700));
        a.msr_write(0x83e, 0xb).unwrap();
        a.msr_write(0x828, 0).unwrap();
        assert_eq!(a.msr_write(0x80b, 0), Ok(None));
        // ICR: one 64-bit register with a 32-bit destination.
        let m = sent(a.msr_write(0x830, (0x1234_5678u64 << 32) | 0x4040).unwrap());
        assert_eq!(m.dest, Destination::Physical(0x1234_5678));
        assert_eq!(m.source, Some(0x23));
        assert_eq!(a.msr_read(0x830), Ok((0x1234_5678u64 << 32) | 0x4040));
        let m = sent(a.msr_write(0x830, (0x0002_0008u64 << 32) | 0x840).unwrap());
        assert_eq!(m.dest, Destination::Logical(0x0002_0008));
        // SELF IPI.
        let m = sent(a.msr_write(0x83f, 0x61).unwrap());
        assert_eq!(
            m,
            ApicMessage {
                dest: Destination::SelfOnly,
                mode: DeliveryMode::Fixed,
                vector: 0x61,
                level: false,
                assert: true,
                source: Some(0x23)
            }
        );
        assert!(a.accepts(&m.dest, m.source));
        a.deliver(&m);
        a.msr_write(0x808, 0).unwrap();
        assert_eq!(a.poll(true), Some(CpuSignal::Interrupt));
        assert_eq!(a.acknowledge(), 0x61);
        assert_eq!(a.msr_read(0x813), Ok(1 << 1));
        a.msr_write(0x80b, 0).unwrap();
        assert_eq!(a.msr_read(0x813), Ok(0));
        assert_eq!(a.msr_write(0x83f, 0x05), Ok(None));
        a.msr_write(0x828, 0).unwrap();
        assert_eq!(a.msr_read(0x828), Ok(u64::from(ESR_SEND_ILLEGAL_VECTOR)));
        // Timer through MSRs.
        a.msr_write(0x832, 0x40).unwrap();
        a.msr_write(0x838, 500).unwrap();
        assert_eq!(a.msr_read(0x839), Ok(500));
        // x2APIC → xAPIC directly is illegal; through disabled it is fine.
        assert_eq!(a.msr_write(MSR_APIC_BASE, 0xfee0_0800), Err(Gp));
        a.msr_write(MSR_APIC_BASE, 0xfee0_0000).unwrap();
        assert_eq!(a.mode(), ApicMode::Disabled);
        assert_eq!(a.msr_read(0x802), Err(Gp));
        a.msr_write(MSR_APIC_BASE, 0xfee0_0800).unwrap();
        assert_eq!(a.mode(), ApicMode::XApic);
        assert_eq!(rd(&mut a, 0x20), 0x23 << 24);
        assert_eq!(rd(&mut a, 0x380), 0);
        // Writing the same value again is fine.
        a.msr_write(MSR_APIC_BASE, 0xfee0_0800).unwrap();

        // Without the x2APIC feature, EXTD is reserved.
        let clock = Arc::new(ManualClock::default());
        let features = LapicFeatures { x2apic: false, tsc_deadline: false, ..LapicFeatures::default() };
        let mut b = LocalApic::new(0, false, clock, TSC_HZ).with_features(features);
        assert_eq!(b.msr_write(MSR_APIC_BASE, 0xfee0_0c00), Err(Gp));
        assert_eq!(b.msr_read(MSR_TSC_DEADLINE), Err(Gp));
        assert_eq!(b.msr_write(MSR_TSC_DEADLINE, 0), Err(Gp));
        wr(&mut b, 0xf0, 0x1ff);
        wr(&mut b, 0x320, 0x4_0040);
        assert_eq!(rd(&mut b, 0x320), 0x40);
        assert!(!LocalApic::handles_msr(0x10));
        assert!(LocalApic::handles_msr(0x1b) && LocalApic::handles_msr(0x6e0) && LocalApic::handles_msr(0x8ff));
    }

    #[test]
    fn apic_base_relocation_and_global_disable() {
        let (_c, mut a) = enabled(0);
        a.msr_write(MSR_APIC_BASE, 0xfed0_0800).unwrap();
        assert_eq!(a.mmio_base(), Some(0xfed0_0000));
        // The BSP bit is not writable.
        assert_eq!(a.apic_base(), 0xfed0_0900);
        assert_eq!(rd(&mut a, 0x30), 0x0005_0014);
        wr(&mut a, 0x80, 0x20);
        wr(&mut a, 0x360, 0x400);
        a.deliver(&fixed(0x50, false));
        // Global disable: no page, no messages, registers back to power-up.
        a.msr_write(MSR_APIC_BASE, 0xfed0_0000).unwrap();
        assert_eq!(a.mmio_base(), None);
        assert_eq!(a.apic_base(), 0xfed0_0100);
        assert!(!a.accepts(&Destination::AllIncludingSelf, None));
        assert!(!a.accepts(&Destination::Physical(0), None));
        assert_eq!(a.poll(true), None);
        // LINT0 is INTR, LINT1 is NMI.
        a.set_lint(0, true);
        assert_eq!(a.poll(false), None);
        assert_eq!(a.poll(true), Some(CpuSignal::ExtInt));
        a.set_lint(0, false);
        assert_eq!(a.poll(true), None);
        a.set_lint(1, true);
        assert_eq!(a.poll(false), Some(CpuSignal::Nmi));
        a.take(CpuSignal::Nmi);
        a.set_lint(1, true);
        assert_eq!(a.poll(false), None);
        a.set_lint(1, false);
        // Re-enabled: power-up state at the address it was given.
        a.msr_write(MSR_APIC_BASE, 0xfed0_0800).unwrap();
        assert_eq!(a.mmio_base(), Some(0xfed0_0000));
        assert_eq!(rd(&mut a, 0x80), 0);
        assert_eq!(rd(&mut a, 0xf0), 0xff);
        assert_eq!(rd(&mut a, 0x360), 0x1_0000);
        assert_eq!(rd(&mut a, 0x210), 0);
        // The base sits within MAXPHYADDR.
        assert_eq!(a.msr_write(MSR_APIC_BASE, (1 << 40) | 0x800), Err(Gp));
        a.msr_write(MSR_APIC_BASE, 0xff_ffff_f800).unwrap();
        assert_eq!(a.mmio_base(), Some(0xff_ffff_f000));
    }

    #[test]
    fn lint0_virtual_wire_and_lint_modes() {
        let (_c, mut a) = apic(0, true);
        // Virtual wire straight out of reset, even software-disabled.
        a.set_lint(0, true);
        assert_eq!(a.poll(false), None);
        assert_eq!(a.poll(true), Some(CpuSignal::ExtInt));
        // Taking it leaves it pending while the pin is high (the PIC lowers INTR).
        a.take(CpuSignal::ExtInt);
        assert_eq!(a.poll(true), Some(CpuSignal::ExtInt));
        a.set_lint(0, false);
        assert_eq!(a.poll(true), None);
        // An AP's LINT0 is masked.
        let (_c, mut ap) = apic(1, false);
        ap.set_lint(0, true);
        assert_eq!(ap.poll(true), None);

        wr(&mut a, 0xf0, 0x1ff);
        // Masked ExtINT: nothing.
        wr(&mut a, 0x350, 0x1_0700);
        a.set_lint(0, true);
        assert_eq!(a.poll(true), None);
        // Active-low polarity.
        wr(&mut a, 0x350, 0x2700);
        assert_eq!(a.poll(true), None);
        a.set_lint(0, false);
        assert_eq!(a.poll(true), Some(CpuSignal::ExtInt));

        // LINT1 as NMI, on rising edges only.
        wr(&mut a, 0x360, 0x400);
        a.set_lint(1, true);
        assert_eq!(a.poll(false), Some(CpuSignal::Nmi));
        a.take(CpuSignal::Nmi);
        a.set_lint(1, true);
        assert_eq!(a.poll(false), None);
        a.set_lint(1, false);
        assert_eq!(a.poll(false), None);
        a.set_lint(1, true);
        assert_eq!(a.poll(false), Some(CpuSignal::Nmi));
        a.take(CpuSignal::Nmi);
        a.set_lint(1, false);
        // Masked LINT1: no NMI.
        wr(&mut a, 0x360, 0x1_0400);
        a.set_lint(1, true);
        assert_eq!(a.poll(false), None);
        a.set_lint(1, false);

        // LINT0 fixed, edge-triggered.
        a.set_lint(0, false);
        wr(&mut a, 0x350, 0x0055);
        a.set_lint(0, true);
        a.set_lint(0, true);
        assert_eq!(drain(&mut a), vec![0x55]);
        a.set_lint(0, false);
        assert_eq!(drain(&mut a), Vec::<u8>::new());

        // LINT0 fixed, level-triggered: remote IRR until EOI, re-delivered while high.
        wr(&mut a, 0x350, 0x8056);
        a.set_lint(0, true);
        assert_eq!(rd(&mut a, 0x350), 0xc056);
        assert_eq!(a.acknowledge(), 0x56);
        assert_eq!(a.poll(true), None);
        assert_eq!(wr(&mut a, 0xb0, 0), Some(ApicAction::EoiBroadcast(0x56)));
        assert_eq!(rd(&mut a, 0x350), 0xc056);
        assert_eq!(a.acknowledge(), 0x56);
        a.set_lint(0, false);
        wr(&mut a, 0xb0, 0);
        assert_eq!(rd(&mut a, 0x350), 0x8056);
        assert_eq!(a.poll(true), None);
        // Dropped before INTA: withdrawn.
        a.set_lint(0, true);
        a.set_lint(0, false);
        assert_eq!(a.poll(true), None);
        assert_eq!(rd(&mut a, 0x350), 0x8056);
        // Unmasking a level entry with the pin active delivers.
        wr(&mut a, 0x350, 0x1_8057);
        a.set_lint(0, true);
        assert_eq!(a.poll(true), None);
        wr(&mut a, 0x350, 0x8057);
        assert_eq!(a.acknowledge(), 0x57);
        a.set_lint(0, false);
        wr(&mut a, 0xb0, 0);
        assert_eq!(a.poll(true), None);

        // LINT0 as SMI, LINT1 as INIT.
        a.set_lint(0, false);
        wr(&mut a, 0x350, 0x200);
        wr(&mut a, 0x360, 0x500);
        a.set_lint(0, true);
        a.set_lint(1, true);
        assert_eq!(a.poll(false), Some(CpuSignal::Smi));
        a.take(CpuSignal::Smi);
        assert_eq!(a.poll(false), Some(CpuSignal::Init));
    }

    #[test]
    fn destinations() {
        let (_c, mut a) = enabled(3);
        let me = Some(3);
        let other = Some(4);
        assert!(a.accepts(&Destination::Physical(3), None));
        assert!(!a.accepts(&Destination::Physical(4), None));
        assert!(a.accepts(&Destination::Physical(0xff), None));
        assert!(a.accepts(&Destination::SelfOnly, me));
        assert!(!a.accepts(&Destination::SelfOnly, other));
        assert!(a.accepts(&Destination::AllIncludingSelf, me));
        assert!(!a.accepts(&Destination::AllExcludingSelf, me));
        assert!(a.accepts(&Destination::AllExcludingSelf, other));
        // Flat logical.
        assert!(!a.accepts(&Destination::Logical(0x01), None));
        wr(&mut a, 0xd0, 0x0400_0000);
        assert!(a.accepts(&Destination::Logical(0x04), None));
        assert!(a.accepts(&Destination::Logical(0x0c), None));
        assert!(!a.accepts(&Destination::Logical(0x03), None));
        assert!(a.accepts(&Destination::Logical(0xff), None));
        // Cluster logical: cluster 2, member bit 1.
        wr(&mut a, 0xe0, 0x0fff_ffff);
        wr(&mut a, 0xd0, 0x2200_0000);
        assert!(a.accepts(&Destination::Logical(0x22), None));
        assert!(a.accepts(&Destination::Logical(0x23), None));
        assert!(!a.accepts(&Destination::Logical(0x32), None));
        assert!(!a.accepts(&Destination::Logical(0x21), None));
        assert!(a.accepts(&Destination::Logical(0xff), None));
        // x2APIC: 32-bit IDs, cluster LDR.
        let (_c, mut b) = apic(0x41, false);
        b.msr_write(MSR_APIC_BASE, 0xfee0_0c00).unwrap();
        assert!(b.accepts(&Destination::Physical(0x41), None));
        assert!(!b.accepts(&Destination::Physical(0x141), None));
        assert!(b.accepts(&Destination::Physical(u32::MAX), None));
        assert!(b.accepts(&Destination::Physical(0xff), None));
        assert!(!b.accepts(&Destination::Physical(0xff), Some(7)));
        assert!(b.accepts(&Destination::Logical(0x0004_0002), None));
        assert!(!b.accepts(&Destination::Logical(0x0004_0001), None));
        assert!(!b.accepts(&Destination::Logical(0x0003_0002), None));
        assert!(b.accepts(&Destination::SelfOnly, Some(0x41)));
    }

    #[test]
    fn random_register_accesses_never_panic() {
        let (c, mut a) = apic(1, true);
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let regs = [
            0x20, 0x80, 0xb0, 0xd0, 0xe0, 0xf0, 0x280, 0x300, 0x310, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370, 0x380,
            0x3e0,
        ];
        for _ in 0..50_000 {
            let r = next();
            let v = next();
            match r % 10 {
                0..=2 => {
                    let off = regs[(r >> 8) as usize % regs.len()];
                    let _ = a.mmio_write(off, &(v as u32).to_le_bytes());
                }
                3 => {
                    let size = [1, 2, 4, 8, 16][(r >> 8) as usize % 5];
                    let mut d = v.to_le_bytes().repeat(2);
                    if r & (1 << 20) != 0 {
                        a.mmio_read(r >> 24, &mut d[..size]);
                    } else {
                        let _ = a.mmio_write(r >> 24, &d[..size]);
                    }
                }
                4 => {
                    let idx = [0x1b, 0x6e0, 0x800 + (r >> 8) as u32 % 0x100][(r >> 20) as usize % 3];
                    let base = [0xfee0_0800, 0xfee0_0c00, 0xfee0_0000, v][(r >> 30) as usize % 4];
                    let v = if idx == 0x1b {
                        base
                    } else if r & (1 << 40) != 0 {
                        v & 0xffff_ffff
                    } else {
                        v
                    };
                    if r & (1 << 41) != 0 {
                        let _ = a.msr_write(idx, v);
                    } else {
                        let _ = a.msr_read(idx);
                    }
                }
                5 => {
                    c.advance_ns(v % 20_000);
                    let _ = a.tick(c.now_ns());
                }
                6 => {
                    let mode = DeliveryMode::from_bits((v >> 8) as u32).unwrap_or(DeliveryMode::Fixed);
                    a.deliver(&ApicMessage { mode, vector: v as u8, level: v & (1 << 20) != 0, ..fixed(0, false) });
                }
                7 => a.set_lint((v % 3) as u8, v & 4 != 0),
                8 => {
                    if let Some(s) = a.poll(v & 1 != 0) {
                        if s == CpuSignal::Interrupt {
                            a.acknowledge();
                        } else {
                            a.take(s);
                        }
                    }
                }
                _ => match v % 4 {
                    0 => a.init(),
                    1 if v & 0xff == 0 => a.reset(),
                    _ => a.set_cr8(v),
                },
            }
            // Invariants: no illegal vectors pending; PPR and the deadline are sane.
            assert_eq!(a.irr[0] & 0xffff, 0);
            assert_eq!(a.isr[0] & 0xffff, 0);
            let _ = a.ppr();
            let _ = a.arbitration_priority();
            if let Some(d) = a.timer_deadline() {
                assert!(d >= a.timer_since || a.timer_mode() == TimerMode::TscDeadline);
            }
        }
    }
}
