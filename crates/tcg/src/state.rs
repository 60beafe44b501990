//! The guest CPU's state as generated code sees it.
//!
//! One `#[repr(C)]` struct; generated code holds a pointer to it in one pinned host
//! register and reaches every field by `offset_of!`. Guest registers live here, not in
//! host registers across instructions, so the state is precise whenever a helper runs
//! or an exception is raised: only RIP must be stored first, and that happens on the
//! out-of-line slow paths.

use std::mem::offset_of;

use quern_core::regs::{self, DescriptorTable, Segment};

use crate::flags::{self, CcOp};
use crate::mmu::{SlotLog, Tlb, TlbTable, MMU_MODES};

/// Segment register numbers, in the order of the ModRM/SReg encoding.
pub const ES: usize = 0;
pub const CS: usize = 1;
pub const SS: usize = 2;
pub const DS: usize = 3;
pub const FS: usize = 4;
pub const GS: usize = 5;

/// A segment register with its descriptor cache, as generated code reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Seg {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    /// Descriptor attribute bits 8..23 of the high dword, packed: type(4) S DPL(2) P |
    /// AVL L D/B G (bits 12..15), as VMX stores them.
    pub attr: u16,
}

pub mod attr {
    pub const S: u16 = 1 << 4;
    pub const P: u16 = 1 << 7;
    pub const L: u16 = 1 << 13;
    pub const DB: u16 = 1 << 14;
    pub const G: u16 = 1 << 15;
}

impl Seg {
    pub fn dpl(&self) -> u8 {
        ((self.attr >> 5) & 3) as u8
    }
    pub fn db(&self) -> bool {
        self.attr & attr::DB != 0
    }
    pub fn long(&self) -> bool {
        self.attr & attr::L != 0
    }
}

impl From<&Segment> for Seg {
    fn from(s: &Segment) -> Self {
        let a = u16::from(s.type_ & 0xf)
            | u16::from(s.s) << 4
            | u16::from(s.dpl & 3) << 5
            | u16::from(s.present) << 7
            | u16::from(s.avl) << 12
            | u16::from(s.l) << 13
            | u16::from(s.db) << 14
            | u16::from(s.g) << 15;
        Seg { base: s.base, limit: s.limit, selector: s.selector, attr: a }
    }
}

impl From<&Seg> for Segment {
    fn from(s: &Seg) -> Self {
        Segment {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: (s.attr & 0xf) as u8,
            s: s.attr & attr::S != 0,
            dpl: s.dpl(),
            present: s.attr & attr::P != 0,
            avl: s.attr & (1 << 12) != 0,
            l: s.long(),
            db: s.db(),
            g: s.attr & attr::G != 0,
            unusable: s.attr & attr::P == 0,
        }
    }
}

/// The MSRs the software CPU keeps (others read as 0 and ignore writes).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Msrs {
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub pat: u64,
    pub tsc_offset: u64,
    pub misc_enable: u64,
}

/// One entry of the indirect-jump cache: guest RIP → host code of its block. 16 bytes
/// (generated code indexes with `rip & mask << 4`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct JmpEntry {
    pub rip: u64,
    pub host: u64,
}

const _: () = assert!(std::mem::size_of::<JmpEntry>() == 16);

pub const JMP_CACHE_BITS: u32 = 14;
pub const JMP_CACHE_SIZE: usize = 1 << JMP_CACHE_BITS;

/// The jump-cache slot of a RIP: its low bits mixed with its page number, so that
/// aligned function entries and the same offset in different pages spread out
/// (generated code computes the same).
pub fn jmp_index(rip: u64) -> usize {
    ((rip ^ (rip >> JMP_CACHE_BITS)) as usize) & (JMP_CACHE_SIZE - 1)
}

/// What one jump-cache array holds, for dropping entries without a scan of it all.
#[derive(Debug)]
pub struct JmpTrack {
    /// Slots filled for code on non-global pages since the last CR3 write (which
    /// empties just those).
    local: SlotLog<{ JMP_CACHE_SIZE / 4 }>,
    /// Bit (linear page number mod 4096): some entry may have code on such a page,
    /// non-global or global. INVLPG of a page with neither bit set scans nothing.
    local_pages: [u64; 64],
    global_pages: [u64; 64],
}

impl Default for JmpTrack {
    fn default() -> Self {
        JmpTrack { local: SlotLog::default(), local_pages: [0; 64], global_pages: [0; 64] }
    }
}

impl JmpTrack {
    fn bit(page: u64) -> (usize, u64) {
        let n = (page >> 12) as usize & 4095;
        (n / 64, 1 << (n % 64))
    }

    /// Notes the entry just put in `slot` for code at `linear` (and up to 14 bytes on,
    /// which may lie on the next page).
    pub fn note(&mut self, slot: usize, linear: u64, global: bool) {
        let pages = if global { &mut self.global_pages } else { &mut self.local_pages };
        for page in [linear, linear.wrapping_add(14)] {
            let (w, b) = Self::bit(page);
            pages[w] |= b;
        }
        if !global {
            self.local.note(slot);
        }
    }

    /// The array was emptied whole.
    pub fn reset(&mut self) {
        self.local.clear();
        self.local_pages = [0; 64];
        self.global_pages = [0; 64];
    }

    /// Empties the non-global entries of `array` (a CR3 write). Returns whether that
    /// took emptying the whole array (more of them than were noted).
    pub fn drop_local(&mut self, array: &mut [JmpEntry], empty: JmpEntry) -> bool {
        if !self.local.drain(|slot| array[slot] = empty) {
            array.fill(empty);
            self.reset();
            return true;
        }
        self.local_pages = [0; 64];
        false
    }

    /// Whether some entry may have code on linear page `page`.
    pub fn may_hold(&self, page: u64) -> bool {
        let (w, b) = Self::bit(page);
        (self.local_pages[w] | self.global_pages[w]) & b != 0
    }
}

/// A pending guest exception raised by a helper or a slow path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Fault {
    /// Vector, or `NO_FAULT`.
    pub vector: u32,
    pub error_code: u32,
    pub has_error_code: u32,
    pub _pad: u32,
    /// CR2 for a page fault.
    pub address: u64,
}

pub const NO_FAULT: u32 = u32::MAX;

/// The whole CPU, as generated code and helpers see it.
#[repr(C)]
pub struct CpuState {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15.
    pub gpr: [u64; 16],
    pub rip: u64,
    /// EFLAGS; the six status bits are valid only while `cc_op` is [`CcOp::EFLAGS`].
    pub eflags: u64,
    pub cc_op: u32,
    /// Nonzero asks generated code to return to the run loop at the next block entry
    /// (a kick from another thread, an interrupt to deliver). Written atomically.
    pub exit_request: u32,
    pub cc_dst: u64,
    pub cc_src: u64,
    pub cc_src2: u64,
    pub seg: [Seg; 6],
    pub ldtr: Seg,
    pub tr: Seg,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
    pub dr: [u64; 8],
    pub msr: Msrs,
    /// FPU and SSE state; `fpu.st[p]` is physical register R`p` (not ST(p), as in the
    /// FXSAVE layout elsewhere), so a push or pop only moves TOP.
    pub fpu: regs::FpuState,
    /// Scratch of translated x87 code, dead between guest instructions: the register
    /// [`crate::ir::X87_TMP`], a value on its way between a host register and the host
    /// FPU, and the host FPU's status word.
    pub x87_tmp: [u8; 16],
    pub x87_io: u64,
    pub x87_sw: u16,
    pub fault: Fault,
    /// HLT executed; cleared by an interrupt.
    pub halted: u32,
    /// One-instruction interrupt shadow after STI and MOV SS.
    pub inhibit_irq: u32,
    /// Host address of the jump an unchained exit left through (see `x64::exit`).
    pub chain_site: u64,
    /// Indirect branches (RET, JMP/CALL through a register or memory) look their target
    /// up here inline before returning to the run loop. Entries that miss point at a
    /// stub that returns to the run loop, so an empty entry is harmless. One array per
    /// MMU index, as the TLB: a block uses its own index's array (a constant offset,
    /// [`off::jmp_cache_offset`]), and the run loop keeps each array valid for the mode
    /// that index was last entered in (see `exec`), so a privilege change flushes none.
    pub jmp_cache: [[JmpEntry; JMP_CACHE_SIZE]; MMU_MODES],
    /// Per array: what it holds (see [`JmpTrack`]).
    pub jmp_track: [JmpTrack; MMU_MODES],
    pub tlb: Tlb,
    /// Scratch vectors of translated code ([`crate::ir::VReg::Tmp`]): dead between
    /// guest instructions.
    pub vtmp: [[u8; 16]; 4],
    /// The MXCSR Rust code runs with (0x1f80), reloaded after guest floating point.
    pub host_mxcsr: u32,
}

impl CpuState {
    /// Writes the power-on state at `p` in place: the jump caches and TLBs make the
    /// state too big to build on a thread's stack and move.
    ///
    /// # Safety
    /// `p` must be valid for writes of a `CpuState` and hold zeros (a fresh zeroed
    /// allocation, whose untouched pages cost nothing).
    pub unsafe fn init(p: *mut CpuState) {
        // SAFETY: all-zero bytes are a valid value of every field (integers, arrays and
        // plain structs of them) except the vectors, which are written before any
        // reference to the state is made.
        let s = unsafe {
            (&raw mut (*p).jmp_track).write(Default::default());
            Tlb::init(&raw mut (*p).tlb);
            &mut *p
        };
        s.eflags = regs::flags::FIXED1;
        s.cc_op = CcOp::EFLAGS.0;
        s.seg = [Seg::default(); 6];
        s.ldtr = Seg::default();
        s.tr = Seg::default();
        s.gdt = DescriptorTable::default();
        s.idt = DescriptorTable::default();
        s.msr = Msrs::default();
        s.fpu = regs::FpuState::default();
        s.fault = Fault { vector: NO_FAULT, ..Default::default() };
        for a in &mut s.jmp_cache {
            a.fill(JmpEntry { rip: u64::MAX, host: 0 });
        }
        s.host_mxcsr = 0x1f80;
        s.msr.pat = 0x0007_0406_0007_0406;
        // Fast-string operations enabled, as firmware leaves them.
        s.msr.misc_enable = 1;
    }

    /// EFLAGS with the status flags computed from the lazy record.
    pub fn flags(&self) -> u64 {
        let st = flags::compute(CcOp(self.cc_op), self.cc_dst, self.cc_src, self.cc_src2, self.eflags);
        (self.eflags & !regs::flags::STATUS) | st | regs::flags::FIXED1
    }

    /// Sets all of EFLAGS and drops the lazy record.
    pub fn set_flags(&mut self, v: u64) {
        self.eflags = (v & 0x003f_7fd5) | regs::flags::FIXED1;
        self.cc_op = CcOp::EFLAGS.0;
    }

    /// Folds the lazy record into `eflags`.
    pub fn materialize_flags(&mut self) {
        let f = self.flags();
        self.set_flags(f);
    }

    pub fn protected(&self) -> bool {
        self.cr0 & regs::ctrl::CR0_PE != 0
    }
    pub fn long_mode(&self) -> bool {
        self.efer & regs::ctrl::EFER_LMA != 0
    }
    pub fn v86(&self) -> bool {
        self.eflags & (1 << 17) != 0
    }
    /// The current privilege level.
    pub fn cpl(&self) -> u8 {
        if !self.protected() {
            0
        } else if self.v86() {
            3
        } else {
            self.seg[CS].dpl()
        }
    }

    /// The MMU index of the current privilege's ordinary accesses (which TLB and jump
    /// cache array a block translated now uses).
    pub fn mmu_index(&self) -> usize {
        crate::mmu::mmu_index(self.cpl())
    }

    /// The decoder's bitness: 64 in a long-mode code segment, else 32 or 16 by CS.D.
    pub fn code_bits(&self) -> u32 {
        if self.long_mode() && self.seg[CS].long() {
            64
        } else if self.protected() && !self.v86() && self.seg[CS].db() {
            32
        } else {
            16
        }
    }

    /// The bits of state a translation depends on, besides the code bytes: a block
    /// translated under one value is only valid under the same value. It holds the CPL,
    /// so a block's MMU index ([`Self::mmu_index`]) is fixed at translation.
    pub fn mode_key(&self) -> u32 {
        let bits = match self.code_bits() {
            64 => 2,
            32 => 1,
            _ => 0,
        };
        // SS.B sizes the stack only outside 64-bit code (the kernel's SS flips between
        // its data selector and null on every interrupt; that must not split blocks).
        let ss32 = bits != 2 && self.seg[SS].db();
        bits | u32::from(ss32) << 2
            | u32::from(self.protected()) << 3
            | u32::from(self.cpl()) << 4
            | u32::from(self.v86()) << 6
            | u32::from(self.cr0 & regs::ctrl::CR0_PG != 0) << 7
            | u32::from(self.seg_flat()) << 8
            | u32::from(self.sse_enabled()) << 9
            | u32::from(self.fpu.mxcsr & MXCSR_ALL_MASKED == MXCSR_ALL_MASKED) << 10
            | u32::from(self.fpu_enabled()) << 11
    }

    /// Whether x87 instructions run (CR0.EM and CR0.TS clear) rather than raise #NM.
    pub fn fpu_enabled(&self) -> bool {
        self.cr0 & (crate::interp::x87::CR0_EM | crate::interp::x87::CR0_TS) == 0
    }

    /// Whether SSE instructions run (CR0.EM and CR0.TS clear, CR4.OSFXSR set) rather
    /// than raise #UD or #NM.
    pub fn sse_enabled(&self) -> bool {
        self.fpu_enabled() && self.cr4 & regs::ctrl::CR4_OSFXSR != 0
    }

    /// Whether DS, ES and SS all have base 0: translations may then skip adding bases.
    pub fn seg_flat(&self) -> bool {
        self.long_mode() || (self.seg[DS].base | self.seg[ES].base | self.seg[SS].base) == 0
    }
}

/// MXCSR's exception mask bits (IM DM ZM OM UM PM).
pub const MXCSR_ALL_MASKED: u32 = 0x1f80;

/// Field offsets for generated code.
pub mod off {
    use super::*;

    pub const fn gpr(r: usize) -> i32 {
        (offset_of!(CpuState, gpr) + 8 * r) as i32
    }
    pub const RIP: i32 = offset_of!(CpuState, rip) as i32;
    pub const EFLAGS: i32 = offset_of!(CpuState, eflags) as i32;
    pub const CC_OP: i32 = offset_of!(CpuState, cc_op) as i32;
    pub const CC_DST: i32 = offset_of!(CpuState, cc_dst) as i32;
    pub const CC_SRC: i32 = offset_of!(CpuState, cc_src) as i32;
    pub const CC_SRC2: i32 = offset_of!(CpuState, cc_src2) as i32;
    pub const EXIT_REQUEST: i32 = offset_of!(CpuState, exit_request) as i32;
    pub const fn seg_base(s: usize) -> i32 {
        (offset_of!(CpuState, seg) + s * std::mem::size_of::<Seg>() + offset_of!(Seg, base)) as i32
    }
    pub const CHAIN_SITE: i32 = offset_of!(CpuState, chain_site) as i32;
    pub const fn xmm(r: usize) -> i32 {
        (offset_of!(CpuState, fpu) + offset_of!(regs::FpuState, xmm) + 16 * r) as i32
    }
    pub const fn vtmp(t: usize) -> i32 {
        (offset_of!(CpuState, vtmp) + 16 * t) as i32
    }
    pub const MXCSR: i32 = (offset_of!(CpuState, fpu) + offset_of!(regs::FpuState, mxcsr)) as i32;
    /// x87 register `r`: physical R0..R7, or 8 for the scratch one.
    pub const fn x87(r: u8) -> i32 {
        if r < 8 {
            (offset_of!(CpuState, fpu) + offset_of!(regs::FpuState, st) + 16 * r as usize) as i32
        } else {
            offset_of!(CpuState, x87_tmp) as i32
        }
    }
    pub const FCW: i32 = (offset_of!(CpuState, fpu) + offset_of!(regs::FpuState, fcw)) as i32;
    pub const FSW: i32 = (offset_of!(CpuState, fpu) + offset_of!(regs::FpuState, fsw)) as i32;
    pub const FTW: i32 = (offset_of!(CpuState, fpu) + offset_of!(regs::FpuState, ftw)) as i32;
    pub const X87_IO: i32 = offset_of!(CpuState, x87_io) as i32;
    pub const X87_SW: i32 = offset_of!(CpuState, x87_sw) as i32;
    pub const HOST_MXCSR: i32 = offset_of!(CpuState, host_mxcsr) as i32;
    /// The jump-cache array of MMU index `mmu_idx`.
    pub const fn jmp_cache_offset(mmu_idx: usize) -> i32 {
        (offset_of!(CpuState, jmp_cache) + mmu_idx * std::mem::size_of::<[JmpEntry; JMP_CACHE_SIZE]>()) as i32
    }
    /// The TLB entries of MMU index `mmu_idx` (`TlbEntry`s, indexed by linear page).
    pub const fn tlb_offset(mmu_idx: usize) -> i32 {
        (offset_of!(CpuState, tlb)
            + offset_of!(Tlb, tables)
            + mmu_idx * std::mem::size_of::<TlbTable>()
            + offset_of!(TlbTable, entries)) as i32
    }
    pub const FAULT_VECTOR: i32 = (offset_of!(CpuState, fault) + offset_of!(Fault, vector)) as i32;
    pub const FAULT_HAS_ERROR_CODE: i32 = (offset_of!(CpuState, fault) + offset_of!(Fault, has_error_code)) as i32;
}
