//! The x86-64 host backend: everything that knows the host's instruction set.
//!
//! The translator (`translate/`) describes each guest instruction through the
//! operations of [`Emitter`]: load and store guest registers, compute addresses,
//! load/store guest memory through the inline TLB, host ALU operations, lazy-flag
//! records, conditions, helper calls and block exits. A second host architecture would
//! provide the same operations; nothing outside this file emits host code.
//!
//! Host register use inside generated code:
//! - `r14`: the [`crate::state::CpuState`] (the `Cpu`), pinned for the whole run.
//! - `rax`, `rcx`, `rdx`: the temporaries T0, T1, T2 of the translator.
//! - `rsi`: the guest linear address of the current memory access (then its host
//!   address after a TLB hit).
//! - `rdi`, `r8`: scratch for the TLB probe and helper-call set-up.
//! - The stack is 16-byte aligned at block level, so helpers can be called directly.

// dynasm's expansion of dynamic registers (`Rq(n)`) converts u8 to u8.
#![allow(clippy::useless_conversion)]

use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};

use crate::flags::{CcOp, Width};
use crate::mmu::{entry_off, TLB_BITS};
use crate::state::off;

/// A translator temporary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum T {
    T0,
    T1,
    T2,
}

impl T {
    fn reg(self) -> u8 {
        match self {
            T::T0 => 0, // rax
            T::T1 => 1, // rcx
            T::T2 => 2, // rdx
        }
    }
}

/// Why generated code returned to the run loop (in eax).
pub mod exit {
    /// RIP is in the state; look up the next block.
    pub const NEXT: u32 = 0;
    /// A direct branch not yet chained: RIP is stored and `Cpu::chain_site` names the
    /// jump to patch.
    pub const CHAIN: u32 = 1;
    /// A guest exception is pending in `state.fault`; RIP is the faulting instruction.
    pub const FAULT: u32 = 2;
    /// `exit_request` was set (kick, interrupt); RIP is the next block's start.
    pub const REQUEST: u32 = 3;
    /// HLT; RIP is after it.
    pub const HALT: u32 = 4;
}

/// Binary ALU operations the host runs directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alu {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
    Cmp,
}

/// Shift operations by CL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shift {
    Rol,
    Ror,
    Rcl,
    Rcr,
    Shl,
    Shr,
    Sar,
}

/// Addresses of the run loop's common stubs inside the code buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stubs {
    /// Returns to the run loop with the exit code in eax.
    pub epilogue: usize,
}

/// What the block does when a store's slow path overwrote translated code: the
/// block itself may be among what was invalidated, so its remaining instructions may
/// be stale.
#[derive(Clone, Copy, Debug)]
pub enum OnCodeWrite {
    /// Leave once the instruction is complete, with RIP = `next`; `then` is a guest
    /// register write the instruction still had to do after its store (PUSH's RSP):
    /// (register, temporary holding it, width).
    Exit { next: u64, then: Option<(usize, T, Width)> },
    /// The instruction ends the block itself right after the store (CALL); whatever
    /// block it reaches sees the exit request the write made at its head.
    Continue,
}

/// An out-of-line slow path, emitted after the block's main body.
enum SlowPath {
    Load {
        at: DynamicLabel,
        resume: DynamicLabel,
        dst: T,
        width: Width,
        rip: u64,
        helper: usize,
    },
    Store {
        at: DynamicLabel,
        resume: DynamicLabel,
        src: T,
        width: Width,
        rip: u64,
        helper: usize,
        on_code: OnCodeWrite,
    },
}

/// Emits host code for one translation block.
pub struct Emitter {
    pub ops: VecAssembler<X64Relocation>,
    base: usize,
    stubs: Stubs,
    slow: Vec<SlowPath>,
    fault_exit: DynamicLabel,
    /// Offsets (from block start) of rel32 jumps to patch when chaining, with the
    /// offset of their unchained stub.
    pub chain_sites: Vec<(usize, usize)>,
    /// Guest registers kept in host callee-saved registers for this block:
    /// (guest register number, host register number).
    mapped: Vec<(usize, u8)>,
    /// Exits emitted out of line at the end: (label, direct branch target).
    deferred: Vec<(DynamicLabel, u64)>,
    /// Where a loop onto the block's start jumps: after the registers are loaded, at
    /// the check for `exit_request`.
    head: DynamicLabel,
    /// The head's exit for `exit_request`, emitted out of line.
    deferred_request: Option<DynamicLabel>,
    /// The block's RIP, for its request exit.
    block_rip: u64,
    /// With paging on, the block's linear page: a direct branch out of it cannot be
    /// chained (the target page's mapping may change) and goes through the jump cache.
    page: Option<u64>,
    /// The block's MMU index: which TLB and jump-cache arrays it probes. Unset is a
    /// translator bug (a user block probing the kernel's TLB would bypass the page
    /// protections), so it panics rather than defaults.
    mmu_idx: Option<usize>,
}

/// Host registers that hold guest registers inside a block (callee-saved, so helper
/// calls keep them; r14 is the Cpu).
const CACHE_REGS: [u8; 5] = [3, 5, 12, 13, 15]; // rbx, rbp, r12, r13, r15

/// Helpers called from generated code, by address.
#[derive(Clone, Copy, Debug)]
pub struct HelperAddrs {
    pub load: usize,
    pub store: usize,
    pub flags: usize,
    pub interp: usize,
}

impl Emitter {
    /// Starts a block that will live at host address `base`.
    pub fn new(base: usize, stubs: Stubs) -> Self {
        let mut ops = VecAssembler::new(base);
        let fault_exit = ops.new_dynamic_label();
        let head = ops.new_dynamic_label();
        Emitter {
            ops,
            base,
            stubs,
            slow: Vec::new(),
            fault_exit,
            chain_sites: Vec::new(),
            mapped: Vec::new(),
            deferred: Vec::new(),
            head,
            deferred_request: None,
            block_rip: 0,
            page: None,
            mmu_idx: None,
        }
    }

    /// Sets the block's MMU index (`CpuState::mmu_index` at translation; the mode key
    /// holds the CPL, so it is the same whenever the block runs).
    pub fn set_mmu_index(&mut self, mmu_idx: usize) {
        assert!(mmu_idx < crate::mmu::MMU_MODES);
        self.mmu_idx = Some(mmu_idx);
    }

    fn mmu_index(&self) -> usize {
        self.mmu_idx.expect("Emitter::set_mmu_index before memory accesses and indirect exits")
    }

    /// Offset of the next byte from the block's start.
    pub fn offset(&self) -> usize {
        self.ops.offset().0
    }

    pub fn label(&mut self) -> DynamicLabel {
        self.ops.new_dynamic_label()
    }

    pub fn bind(&mut self, l: DynamicLabel) {
        dynasm!(self.ops ; .arch x64 ; =>l);
    }

    /// An absolute rel32 jump/call to `target` (a stub or helper).
    fn rel32_to(&mut self, opcode: u8, target: usize) {
        let here = self.base + self.offset() + 5;
        let rel = target as i64 - here as i64;
        assert!(i32::try_from(rel).is_ok(), "code buffer and target out of rel32 reach");
        self.ops.push(opcode);
        self.ops.push_i32(rel as i32);
    }

    fn call_abs(&mut self, helper: usize) {
        dynasm!(self.ops ; .arch x64 ; mov rax, QWORD helper as i64 ; call rax);
    }

    /// Stores a 64-bit constant to a state field.
    fn store_const(&mut self, field: i32, v: u64) {
        if i32::try_from(v as i64).is_ok() {
            dynasm!(self.ops ; .arch x64 ; mov QWORD [r14 + field], v as i32);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov rdi, QWORD v as i64 ; mov [r14 + field], rdi);
        }
    }

    pub fn store_rip(&mut self, rip: u64) {
        self.store_const(off::RIP, rip);
    }

    /// The block's head, right after its registers are loaded: leave if the run loop
    /// asked for it (RIP = this block's start). Every entry, and every lap of a loop
    /// onto the block's start, passes here.
    pub fn loop_head(&mut self, block_rip: u64) {
        self.block_rip = block_rip;
        let head = self.head;
        self.bind(head);
        let leave = self.label();
        dynasm!(self.ops ; .arch x64 ; cmp DWORD [r14 + off::EXIT_REQUEST], 0 ; jne =>leave);
        self.deferred_request = Some(leave);
    }

    /// Declares the block's linear page when paging is on (see `page`).
    pub fn set_paged(&mut self, linear_page: u64) {
        self.page = Some(linear_page);
    }

    /// The label a loop onto the block's start jumps to.
    pub fn loop_head_label(&self) -> DynamicLabel {
        self.head
    }

    /// Keeps `guests` (at most five guest register numbers) in host registers for the
    /// rest of the block, loading them now. Every way out of the block stores them back
    /// first, and so does every helper call that reads or writes guest registers.
    pub fn map_registers(&mut self, guests: &[usize]) {
        self.mapped = guests.iter().copied().zip(CACHE_REGS).collect();
        self.sync_in();
    }

    fn host_reg(&self, guest: usize) -> Option<u8> {
        self.mapped.iter().find(|m| m.0 == guest).map(|m| m.1)
    }

    /// Host registers → state.
    pub fn sync_out(&mut self) {
        for (g, h) in self.mapped.clone() {
            dynasm!(self.ops ; .arch x64 ; mov [r14 + off::gpr(g)], Rq(h));
        }
    }

    /// State → host registers (after a helper that may have changed them).
    pub fn sync_in(&mut self) {
        for (g, h) in self.mapped.clone() {
            dynasm!(self.ops ; .arch x64 ; mov Rq(h), [r14 + off::gpr(g)]);
        }
    }

    /// Returns to the run loop with `code`, storing cached registers first.
    pub fn exit_with(&mut self, code: u32) {
        self.sync_out();
        self.exit_raw(code);
    }

    /// Returns to the run loop with `code` when the state is already authoritative (a
    /// helper ran after the registers were stored, and may have changed them).
    pub fn exit_raw(&mut self, code: u32) {
        dynasm!(self.ops ; .arch x64 ; mov eax, code as i32);
        self.rel32_to(0xe9, self.stubs.epilogue);
    }

    /// Ends the block at an indirect branch to the RIP in `t` (already stored): jumps
    /// straight to the target's block if the jump cache knows it, else returns to the
    /// run loop.
    pub fn exit_indirect(&mut self, t: T) {
        use crate::state::JMP_CACHE_BITS;
        let mask = (1i32 << JMP_CACHE_BITS) - 1;
        let r = t.reg();
        let cache = off::jmp_cache_offset(self.mmu_index());
        self.sync_out();
        dynasm!(self.ops ; .arch x64
            ; mov rdi, Rq(r)
            ; and edi, mask
            ; shl edi, 4
            ; cmp Rq(r), [r14 + rdi + cache]
            ; jne >miss
            ; jmp QWORD [r14 + rdi + cache + 8]
            ; miss:
        );
        self.exit_raw(exit::NEXT);
    }

    /// Ends the block at a direct branch to `target`: a patchable jump, first aimed at
    /// a stub that stores RIP and asks the run loop to chain.
    pub fn exit_chain(&mut self, target: u64) {
        if self.page.is_some_and(|p| p != target & !0xfff) {
            // Another page under paging: look the target up in the jump cache (which is
            // flushed whenever mappings change) rather than chain to it.
            self.store_rip(target);
            self.load_imm(T::T0, target);
            self.exit_indirect(T::T0);
            return;
        }
        // The next block, chained or not, reads guest registers from the state.
        self.sync_out();
        let site = self.offset();
        let stub = self.label();
        // Always the 5-byte rel32 form, so it can be re-aimed at another block.
        dynasm!(self.ops ; .arch x64 ; jmp =>stub);
        let stub_off = self.offset();
        self.bind(stub);
        self.store_rip(target);
        let site_abs = (self.base + site) as i64;
        dynasm!(self.ops ; .arch x64 ; mov rdi, QWORD site_abs ; mov [r14 + off::CHAIN_SITE], rdi);
        self.chain_sites.push((site, stub_off));
        self.exit_raw(exit::CHAIN);
    }

    // ---- guest registers ----

    /// Loads guest register `r` (`high8`: AH/CH/DH/BH) zero-extended into `t`.
    pub fn load_gpr(&mut self, t: T, r: usize, w: Width, high8: bool) {
        let d = t.reg();
        if let Some(h) = self.host_reg(r) {
            match (w, high8) {
                (1, true) => dynasm!(self.ops ; .arch x64 ; mov Rq(d), Rq(h) ; shr Rq(d), 8 ; movzx Rd(d), Rb(d)),
                (1, false) => dynasm!(self.ops ; .arch x64 ; movzx Rd(d), Rb(h)),
                (2, _) => dynasm!(self.ops ; .arch x64 ; movzx Rd(d), Rw(h)),
                (4, _) => dynasm!(self.ops ; .arch x64 ; mov Rd(d), Rd(h)),
                _ => dynasm!(self.ops ; .arch x64 ; mov Rq(d), Rq(h)),
            }
            return;
        }
        let o = off::gpr(r);
        match (w, high8) {
            (1, true) => dynasm!(self.ops ; .arch x64 ; movzx Rd(d), BYTE [r14 + o + 1]),
            (1, false) => dynasm!(self.ops ; .arch x64 ; movzx Rd(d), BYTE [r14 + o]),
            (2, _) => dynasm!(self.ops ; .arch x64 ; movzx Rd(d), WORD [r14 + o]),
            (4, _) => dynasm!(self.ops ; .arch x64 ; mov Rd(d), DWORD [r14 + o]),
            _ => dynasm!(self.ops ; .arch x64 ; mov Rq(d), QWORD [r14 + o]),
        }
    }

    /// Stores `t` to guest register `r` with x86's merge rules: 8/16-bit writes keep
    /// the other bits, 32-bit writes clear the upper half.
    pub fn store_gpr(&mut self, r: usize, t: T, w: Width, high8: bool) {
        let s = t.reg();
        if let Some(h) = self.host_reg(r) {
            match (w, high8) {
                (1, true) => dynasm!(self.ops ; .arch x64
                    ; movzx edi, Rb(s)
                    ; shl edi, 8
                    ; and Rq(h), -0xff01
                    ; or Rq(h), rdi
                ),
                (1, false) => dynasm!(self.ops ; .arch x64 ; mov Rb(h), Rb(s)),
                (2, _) => dynasm!(self.ops ; .arch x64 ; mov Rw(h), Rw(s)),
                (4, _) => dynasm!(self.ops ; .arch x64 ; mov Rd(h), Rd(s)),
                _ => dynasm!(self.ops ; .arch x64 ; mov Rq(h), Rq(s)),
            }
            return;
        }
        let o = off::gpr(r);
        match (w, high8) {
            (1, true) => dynasm!(self.ops ; .arch x64 ; mov BYTE [r14 + o + 1], Rb(s)),
            (1, false) => dynasm!(self.ops ; .arch x64 ; mov BYTE [r14 + o], Rb(s)),
            (2, _) => dynasm!(self.ops ; .arch x64 ; mov WORD [r14 + o], Rw(s)),
            // One 8-byte store of the zero-extended value: two 4-byte halves would
            // defeat store-to-load forwarding for the next 8-byte read of the register.
            (4, _) => dynasm!(self.ops ; .arch x64 ; mov Rd(s), Rd(s) ; mov QWORD [r14 + o], Rq(s)),
            _ => dynasm!(self.ops ; .arch x64 ; mov QWORD [r14 + o], Rq(s)),
        }
    }

    pub fn load_imm(&mut self, t: T, v: u64) {
        let d = t.reg();
        if v <= u32::MAX as u64 {
            dynasm!(self.ops ; .arch x64 ; mov Rd(d), v as i32);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov Rq(d), QWORD v as i64);
        }
    }

    pub fn mov(&mut self, d: T, s: T) {
        dynasm!(self.ops ; .arch x64 ; mov Rq(d.reg()), Rq(s.reg()));
    }

    /// Sign- or zero-extends the low `from` bytes of `t` to 64 bits.
    pub fn extend(&mut self, t: T, from: Width, signed: bool) {
        let r = t.reg();
        match (from, signed) {
            (1, false) => dynasm!(self.ops ; .arch x64 ; movzx Rd(r), Rb(r)),
            (2, false) => dynasm!(self.ops ; .arch x64 ; movzx Rd(r), Rw(r)),
            (4, false) => dynasm!(self.ops ; .arch x64 ; mov Rd(r), Rd(r)),
            (1, true) => dynasm!(self.ops ; .arch x64 ; movsx Rq(r), Rb(r)),
            (2, true) => dynasm!(self.ops ; .arch x64 ; movsx Rq(r), Rw(r)),
            (4, true) => dynasm!(self.ops ; .arch x64 ; movsxd Rq(r), Rd(r)),
            _ => {}
        }
    }

    // ---- addresses ----

    /// rsi = 0.
    pub fn addr_clear(&mut self) {
        dynasm!(self.ops ; .arch x64 ; xor esi, esi);
    }

    /// rsi += guest register `r` (full width; truncation comes after).
    pub fn addr_add_gpr(&mut self, r: usize, scale: u8) {
        let sh = scale.trailing_zeros() as i8;
        match self.host_reg(r) {
            Some(h) => dynasm!(self.ops ; .arch x64 ; mov rdi, Rq(h)),
            None => dynasm!(self.ops ; .arch x64 ; mov rdi, QWORD [r14 + off::gpr(r)]),
        }
        if sh > 0 {
            dynasm!(self.ops ; .arch x64 ; shl rdi, sh);
        }
        dynasm!(self.ops ; .arch x64 ; add rsi, rdi);
    }

    /// rsi += a constant.
    pub fn addr_add_const(&mut self, v: u64) {
        if v == 0 {
            return;
        }
        if i32::try_from(v as i64).is_ok() {
            dynasm!(self.ops ; .arch x64 ; add rsi, v as i32);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov rdi, QWORD v as i64 ; add rsi, rdi);
        }
    }

    /// rsi &= the address-size mask (16 or 32 bits).
    pub fn addr_truncate(&mut self, bits: u32) {
        match bits {
            16 => dynasm!(self.ops ; .arch x64 ; movzx esi, si),
            32 => dynasm!(self.ops ; .arch x64 ; mov esi, esi),
            _ => {}
        }
    }

    /// rsi += the base of segment `seg`.
    pub fn addr_add_seg(&mut self, seg: usize) {
        dynasm!(self.ops ; .arch x64 ; add rsi, QWORD [r14 + off::seg_base(seg)]);
    }

    /// t = rsi (for LEA).
    pub fn addr_to(&mut self, t: T) {
        dynasm!(self.ops ; .arch x64 ; mov Rq(t.reg()), rsi);
    }

    /// rsi = t (an address computed in a temporary).
    pub fn addr_from(&mut self, t: T) {
        dynasm!(self.ops ; .arch x64 ; mov rsi, Rq(t.reg()));
    }

    // ---- memory ----

    /// Probes the block's MMU index's TLB for an access of `w` bytes at linear rsi; on
    /// a hit leaves the host address in rsi and falls through, on a miss jumps to `miss`.
    fn tlb_probe(&mut self, w: Width, tag: i32, miss: DynamicLabel) {
        let mask = (1i32 << TLB_BITS) - 1;
        let tlb = off::tlb_offset(self.mmu_index());
        dynasm!(self.ops ; .arch x64
            ; mov rdi, rsi
            ; shr rdi, 12
            ; and edi, mask
            ; shl edi, entry_off::SIZE_SHIFT as i8
            ; lea r8, [rsi + (w as i32 - 1)]
            ; and r8, -4096
            ; cmp r8, [r14 + rdi + tlb + tag]
            ; jne =>miss
            ; add rsi, [r14 + rdi + tlb + entry_off::ADDEND]
        );
    }

    /// t = guest memory[rsi], `w` bytes, zero-extended.
    pub fn load_mem(&mut self, t: T, w: Width, rip: u64, helpers: &HelperAddrs) {
        let miss = self.label();
        let resume = self.label();
        self.tlb_probe(w, entry_off::READ, miss);
        let d = t.reg();
        match w {
            1 => dynasm!(self.ops ; .arch x64 ; movzx Rd(d), BYTE [rsi]),
            2 => dynasm!(self.ops ; .arch x64 ; movzx Rd(d), WORD [rsi]),
            4 => dynasm!(self.ops ; .arch x64 ; mov Rd(d), DWORD [rsi]),
            _ => dynasm!(self.ops ; .arch x64 ; mov Rq(d), QWORD [rsi]),
        }
        self.bind(resume);
        self.slow.push(SlowPath::Load { at: miss, resume, dst: t, width: w, rip, helper: helpers.load });
    }

    /// guest memory[rsi] = t, `w` bytes. Pages with translated code are never in the
    /// TLB's write tags, so a store to code always takes the slow path, which then
    /// does what `on_code` says.
    pub fn store_mem(&mut self, t: T, w: Width, rip: u64, on_code: OnCodeWrite, helpers: &HelperAddrs) {
        let miss = self.label();
        let resume = self.label();
        self.tlb_probe(w, entry_off::WRITE, miss);
        let s = t.reg();
        match w {
            1 => dynasm!(self.ops ; .arch x64 ; mov BYTE [rsi], Rb(s)),
            2 => dynasm!(self.ops ; .arch x64 ; mov WORD [rsi], Rw(s)),
            4 => dynasm!(self.ops ; .arch x64 ; mov DWORD [rsi], Rd(s)),
            _ => dynasm!(self.ops ; .arch x64 ; mov QWORD [rsi], Rq(s)),
        }
        self.bind(resume);
        self.slow.push(SlowPath::Store { at: miss, resume, src: t, width: w, rip, helper: helpers.store, on_code });
    }

    // ---- arithmetic ----

    /// d = d op s at width `w` (CMP leaves d alone).
    pub fn alu(&mut self, op: Alu, w: Width, d: T, s: T) {
        let (d, s) = (d.reg(), s.reg());
        macro_rules! by_width {
            ($ins:ident) => {
                match w {
                    1 => dynasm!(self.ops ; .arch x64 ; $ins Rb(d), Rb(s)),
                    2 => dynasm!(self.ops ; .arch x64 ; $ins Rw(d), Rw(s)),
                    4 => dynasm!(self.ops ; .arch x64 ; $ins Rd(d), Rd(s)),
                    _ => dynasm!(self.ops ; .arch x64 ; $ins Rq(d), Rq(s)),
                }
            };
        }
        match op {
            Alu::Add => by_width!(add),
            Alu::Or => by_width!(or),
            Alu::Adc => by_width!(adc),
            Alu::Sbb => by_width!(sbb),
            Alu::And => by_width!(and),
            Alu::Sub => by_width!(sub),
            Alu::Xor => by_width!(xor),
            Alu::Cmp => by_width!(cmp),
        }
    }

    /// d = d * s, signed, truncated to `w` (2, 4 or 8 bytes); the host's OF (= CF) tells
    /// whether the full product did not fit.
    pub fn imul(&mut self, w: Width, d: T, s: T) {
        let (d, s) = (d.reg(), s.reg());
        match w {
            2 => dynasm!(self.ops ; .arch x64 ; imul Rw(d), Rw(s)),
            4 => dynasm!(self.ops ; .arch x64 ; imul Rd(d), Rd(s)),
            _ => dynasm!(self.ops ; .arch x64 ; imul Rq(d), Rq(s)),
        }
    }

    /// t = -t / !t at width `w`.
    pub fn neg(&mut self, t: T, w: Width, not: bool) {
        let r = t.reg();
        match (w, not) {
            (1, false) => dynasm!(self.ops ; .arch x64 ; neg Rb(r)),
            (2, false) => dynasm!(self.ops ; .arch x64 ; neg Rw(r)),
            (4, false) => dynasm!(self.ops ; .arch x64 ; neg Rd(r)),
            (_, false) => dynasm!(self.ops ; .arch x64 ; neg Rq(r)),
            (1, true) => dynasm!(self.ops ; .arch x64 ; not Rb(r)),
            (2, true) => dynasm!(self.ops ; .arch x64 ; not Rw(r)),
            (4, true) => dynasm!(self.ops ; .arch x64 ; not Rd(r)),
            (_, true) => dynasm!(self.ops ; .arch x64 ; not Rq(r)),
        }
    }

    /// t += 1 or t -= 1.
    pub fn inc_dec(&mut self, t: T, w: Width, dec: bool) {
        let r = t.reg();
        match (w, dec) {
            (1, false) => dynasm!(self.ops ; .arch x64 ; inc Rb(r)),
            (2, false) => dynasm!(self.ops ; .arch x64 ; inc Rw(r)),
            (4, false) => dynasm!(self.ops ; .arch x64 ; inc Rd(r)),
            (_, false) => dynasm!(self.ops ; .arch x64 ; inc Rq(r)),
            (1, true) => dynasm!(self.ops ; .arch x64 ; dec Rb(r)),
            (2, true) => dynasm!(self.ops ; .arch x64 ; dec Rw(r)),
            (4, true) => dynasm!(self.ops ; .arch x64 ; dec Rd(r)),
            (_, true) => dynasm!(self.ops ; .arch x64 ; dec Rq(r)),
        }
    }

    /// t = t shifted by `count` — a constant (already masked by the guest's rule,
    /// nonzero), or CL when `None` (the host masks it as the guest does).
    pub fn shift(&mut self, op: Shift, w: Width, t: T, count: Option<u8>) {
        let r = t.reg();
        macro_rules! by_width {
            ($ins:ident) => {
                match (w, count) {
                    (1, Some(n)) => dynasm!(self.ops ; .arch x64 ; $ins Rb(r), n as i8),
                    (2, Some(n)) => dynasm!(self.ops ; .arch x64 ; $ins Rw(r), n as i8),
                    (4, Some(n)) => dynasm!(self.ops ; .arch x64 ; $ins Rd(r), n as i8),
                    (_, Some(n)) => dynasm!(self.ops ; .arch x64 ; $ins Rq(r), n as i8),
                    (1, None) => dynasm!(self.ops ; .arch x64 ; $ins Rb(r), cl),
                    (2, None) => dynasm!(self.ops ; .arch x64 ; $ins Rw(r), cl),
                    (4, None) => dynasm!(self.ops ; .arch x64 ; $ins Rd(r), cl),
                    (_, None) => dynasm!(self.ops ; .arch x64 ; $ins Rq(r), cl),
                }
            };
        }
        match op {
            Shift::Rol => by_width!(rol),
            Shift::Ror => by_width!(ror),
            Shift::Rcl => by_width!(rcl),
            Shift::Rcr => by_width!(rcr),
            Shift::Shl => by_width!(shl),
            Shift::Shr => by_width!(shr),
            Shift::Sar => by_width!(sar),
        }
    }

    /// Stores the host's status flags as the guest's EFLAGS status bits (the lazy
    /// record becomes "flags in EFLAGS"). Leaves T0..T2 alone.
    pub fn host_flags_to_state(&mut self) {
        dynasm!(self.ops ; .arch x64
            ; pushfq
            ; pop rdi
            ; and edi, 0x8d5
            ; mov r8, [r14 + off::EFLAGS]
            ; and r8, -0x8d6
            ; or r8, rdi
            ; mov [r14 + off::EFLAGS], r8
            ; mov DWORD [r14 + off::CC_OP], 0
        );
    }

    /// t = t with its bytes reversed (4 or 8 bytes).
    pub fn bswap(&mut self, t: T, w: Width) {
        let r = t.reg();
        if w == 8 {
            dynasm!(self.ops ; .arch x64 ; bswap Rq(r));
        } else {
            dynasm!(self.ops ; .arch x64 ; bswap Rd(r));
        }
    }

    /// Records a lazy-flag record: op, result (t_dst) and source (t_src).
    pub fn set_cc(&mut self, op: CcOp, dst: Option<T>, src: Option<T>, src2: Option<T>) {
        dynasm!(self.ops ; .arch x64 ; mov DWORD [r14 + off::CC_OP], op.0 as i32);
        if let Some(t) = dst {
            dynasm!(self.ops ; .arch x64 ; mov QWORD [r14 + off::CC_DST], Rq(t.reg()));
        }
        if let Some(t) = src {
            dynasm!(self.ops ; .arch x64 ; mov QWORD [r14 + off::CC_SRC], Rq(t.reg()));
        }
        if let Some(t) = src2 {
            dynasm!(self.ops ; .arch x64 ; mov QWORD [r14 + off::CC_SRC2], Rq(t.reg()));
        }
    }

    /// t += imm at width `w` (no flags wanted).
    pub fn add_imm(&mut self, t: T, w: Width, imm: i32) {
        let r = t.reg();
        match w {
            2 => dynasm!(self.ops ; .arch x64 ; add Rw(r), imm as i16),
            4 => dynasm!(self.ops ; .arch x64 ; add Rd(r), imm),
            _ => dynasm!(self.ops ; .arch x64 ; add Rq(r), imm),
        }
    }

    /// t &= imm (zero-extended 32-bit immediate).
    pub fn and_imm(&mut self, t: T, imm: u32) {
        dynasm!(self.ops ; .arch x64 ; and Rd(t.reg()), imm as i32);
    }

    /// RIP = t.
    pub fn store_rip_t(&mut self, t: T) {
        dynasm!(self.ops ; .arch x64 ; mov [r14 + off::RIP], Rq(t.reg()));
    }

    /// Puts the guest's status flags in the host's flags, so a host Jcc/SETcc/CMOVcc
    /// with the guest's condition code decides as the guest would. `known` is the
    /// lazy-flag operation when the translator knows it statically: SUB/CMP, ADD and
    /// logic results are re-run on the host (same flags by construction); anything
    /// INC/DEC are re-run too when the condition `cond` (a Jcc nibble) ignores CF. Anything
    /// else asks the Rust flag computation and loads its result with POPF.
    /// Preserves T0..T2.
    pub fn flags_to_host(&mut self, known: Option<CcOp>, cond: u8, helper_flags: usize) {
        self.flags_to_host_for(known, Some(cond), helper_flags);
    }

    /// All six status flags in the host's flags (for an instruction that updates some
    /// and keeps the rest): SUB/ADD re-runs give every flag; a logic re-run gives every
    /// defined one (AF is undefined after a logic operation, so the host's value is as
    /// good as any); INC/DEC cannot give CF and go through Rust.
    pub fn all_flags_to_host(&mut self, known: Option<CcOp>, helper_flags: usize) {
        use crate::flags::CcKind;
        let known = known.filter(|k| matches!(k.kind(), CcKind::Sub | CcKind::Add | CcKind::Logic));
        self.flags_to_host_for(known, None, helper_flags);
    }

    fn flags_to_host_for(&mut self, known: Option<CcOp>, cond: Option<u8>, helper_flags: usize) {
        use crate::flags::CcKind;
        let rerun = |em: &mut Self, w: Width, sub: bool| {
            dynasm!(em.ops ; .arch x64 ; mov rdi, [r14 + off::CC_DST] ; mov r8, [r14 + off::CC_SRC]);
            if sub {
                // src1 = result + src2; cmp src1, src2.
                dynasm!(em.ops ; .arch x64 ; lea r9, [rdi + r8]);
                match w {
                    1 => dynasm!(em.ops ; .arch x64 ; cmp r9b, r8b),
                    2 => dynasm!(em.ops ; .arch x64 ; cmp r9w, r8w),
                    4 => dynasm!(em.ops ; .arch x64 ; cmp r9d, r8d),
                    _ => dynasm!(em.ops ; .arch x64 ; cmp r9, r8),
                }
            } else {
                // src1 = result - src2; add src1, src2.
                dynasm!(em.ops ; .arch x64 ; mov r9, rdi ; sub r9, r8);
                match w {
                    1 => dynasm!(em.ops ; .arch x64 ; add r9b, r8b),
                    2 => dynasm!(em.ops ; .arch x64 ; add r9w, r8w),
                    4 => dynasm!(em.ops ; .arch x64 ; add r9d, r8d),
                    _ => dynasm!(em.ops ; .arch x64 ; add r9, r8),
                }
            }
        };
        match known.map(|op| (op.kind(), op.width())) {
            Some((CcKind::Sub, w)) => rerun(self, w, true),
            Some((CcKind::Add, w)) => rerun(self, w, false),
            Some((k @ (CcKind::Inc | CcKind::Dec), w)) if cond.is_some_and(|c| !matches!(c >> 1, 1 | 3)) => {
                // src1 = result -/+ 1; the host's INC/DEC gives every flag but CF.
                let dec = k == CcKind::Dec;
                dynasm!(self.ops ; .arch x64 ; mov r9, [r14 + off::CC_DST]);
                match (w, dec) {
                    (1, false) => dynasm!(self.ops ; .arch x64 ; dec r9b ; inc r9b),
                    (2, false) => dynasm!(self.ops ; .arch x64 ; dec r9w ; inc r9w),
                    (4, false) => dynasm!(self.ops ; .arch x64 ; dec r9d ; inc r9d),
                    (_, false) => dynasm!(self.ops ; .arch x64 ; dec r9 ; inc r9),
                    (1, true) => dynasm!(self.ops ; .arch x64 ; inc r9b ; dec r9b),
                    (2, true) => dynasm!(self.ops ; .arch x64 ; inc r9w ; dec r9w),
                    (4, true) => dynasm!(self.ops ; .arch x64 ; inc r9d ; dec r9d),
                    (_, true) => dynasm!(self.ops ; .arch x64 ; inc r9 ; dec r9),
                }
            }
            Some((CcKind::Logic, w)) => {
                dynasm!(self.ops ; .arch x64 ; mov rdi, [r14 + off::CC_DST]);
                match w {
                    1 => dynasm!(self.ops ; .arch x64 ; test dil, dil),
                    2 => dynasm!(self.ops ; .arch x64 ; test di, di),
                    4 => dynasm!(self.ops ; .arch x64 ; test edi, edi),
                    _ => dynasm!(self.ops ; .arch x64 ; test rdi, rdi),
                }
            }
            _ => {
                dynasm!(self.ops ; .arch x64 ; push rax ; push rcx ; push rdx ; sub rsp, 8 ; mov rdi, r14);
                self.call_abs(helper_flags);
                // Only the status flags: never let the guest set the host's AC or TF.
                dynasm!(self.ops ; .arch x64
                    ; and eax, 0x8d5
                    ; mov [rsp], rax
                    ; popfq
                    ; pop rdx ; pop rcx ; pop rax
                );
            }
        }
    }

    /// Jumps to `l` if host condition `cc` (the guest's condition-code nibble) holds.
    pub fn jcc_host(&mut self, cc: u8, l: DynamicLabel) {
        // 0F 80+cc rel32, with the label resolved by dynasm through a tiny trampoline:
        // emit the inverse short jump over an unconditional rel32 jump.
        let skip = self.label();
        self.ops.push(0x70 | (cc ^ 1));
        self.ops.push(5);
        dynasm!(self.ops ; .arch x64 ; jmp =>l ; =>skip);
    }

    /// t = host condition `cc` ? 1 : 0.
    pub fn setcc_host(&mut self, cc: u8, t: T) {
        // SETcc r8 is 0F 90+cc /0; a REX prefix keeps the low byte of rax..rdx plain.
        let r = t.reg();
        self.ops.push(0x0f);
        self.ops.push(0x90 | cc);
        self.ops.push(0xc0 | r);
        dynasm!(self.ops ; .arch x64 ; movzx Rd(r), Rb(r));
    }

    /// d = s if host condition `cc` holds (64-bit move; callers pass zero-extended values).
    pub fn cmov_host(&mut self, cc: u8, d: T, s: T) {
        // REX.W 0F 40+cc /r with mod=11, reg=d, rm=s.
        self.ops.push(0x48);
        self.ops.push(0x0f);
        self.ops.push(0x40 | cc);
        self.ops.push(0xc0 | (d.reg() << 3) | s.reg());
    }

    /// Host CF = bit 0 of t (for ADC/SBB's carry-in).
    pub fn carry_from(&mut self, t: T) {
        dynasm!(self.ops ; .arch x64 ; bt Rd(t.reg()), 0);
    }

    /// t = t masked to `w` bytes.
    pub fn zero_extend(&mut self, t: T, w: Width) {
        self.extend(t, w, false);
    }

    /// Calls `helper(cpu, a1, a2, a3)` with temporaries as arguments; the result lands
    /// in T0. Stores `rip` first so a helper that faults reports the right
    /// instruction; leaves the block through the fault exit if it did. A helper that
    /// reads or writes guest registers (`uses_regs`) gets the cached ones stored first;
    /// the caller reloads them ([`Self::sync_in`]) if it goes on in the block.
    pub fn call_helper(&mut self, helper: usize, args: &[Arg], rip: u64, may_fault: bool, uses_regs: bool) {
        if uses_regs {
            self.sync_out();
        }
        self.store_rip(rip);
        // Arguments go to rsi, rdx, rcx in the SysV order; T1 (rcx) and T2 (rdx) are
        // themselves argument registers, so stage through the stack-free scratch r8-r10.
        let dests = [6u8, 2, 1];
        let scratch = [8u8, 9, 10];
        for (i, a) in args.iter().enumerate() {
            match *a {
                Arg::T(t) => dynasm!(self.ops ; .arch x64 ; mov Rq(scratch[i]), Rq(t.reg())),
                Arg::Imm(v) => dynasm!(self.ops ; .arch x64 ; mov Rq(scratch[i]), QWORD v as i64),
                Arg::Addr => dynasm!(self.ops ; .arch x64 ; mov Rq(scratch[i]), rsi),
            }
        }
        for i in 0..args.len() {
            dynasm!(self.ops ; .arch x64 ; mov Rq(dests[i]), Rq(scratch[i]));
        }
        dynasm!(self.ops ; .arch x64 ; mov rdi, r14);
        self.call_abs(helper);
        if may_fault {
            dynasm!(self.ops ; .arch x64 ; cmp DWORD [r14 + off::FAULT_VECTOR], -1 ; jne =>self.fault_exit);
        }
    }

    /// t = the lazy record's `cc_src2` (INC/DEC keep the old CF there).
    pub fn load_cc_src2(&mut self, t: T) {
        dynasm!(self.ops ; .arch x64 ; mov Rq(t.reg()), [r14 + off::CC_SRC2]);
    }

    /// Jumps to `l` if t is zero.
    pub fn jz_t(&mut self, t: T, l: DynamicLabel) {
        dynasm!(self.ops ; .arch x64 ; test Rq(t.reg()), Rq(t.reg()) ; jz =>l);
    }

    pub fn jmp(&mut self, l: DynamicLabel) {
        dynasm!(self.ops ; .arch x64 ; jmp =>l);
    }

    /// After the interpreter helper: 0 → `go_on`, 2 → `halt`, 1 falls through.
    pub fn test_t0_dispatch(&mut self, go_on: DynamicLabel, halt: DynamicLabel) {
        dynasm!(self.ops ; .arch x64 ; test eax, eax ; jz =>go_on ; cmp eax, 2 ; je =>halt);
    }

    /// A chainable exit to `target`, placed after the block's main body, reached by
    /// jumping to `label`.
    pub fn defer_chain_exit(&mut self, label: DynamicLabel, target: u64) {
        self.deferred.push((label, target));
    }

    /// Emits the out-of-line exits, slow paths and the fault exit; returns the code.
    pub fn finish(mut self) -> (Vec<u8>, Vec<(usize, usize)>) {
        for (label, target) in std::mem::take(&mut self.deferred) {
            self.bind(label);
            self.exit_chain(target);
        }
        if let Some(leave) = self.deferred_request.take() {
            self.bind(leave);
            let rip = self.block_rip;
            self.store_rip(rip);
            self.exit_with(exit::REQUEST);
        }
        // Shared by the stores that overwrote translated code: RIP is stored.
        let mut code_written = None;
        for sp in std::mem::take(&mut self.slow) {
            match sp {
                SlowPath::Load { at, resume, dst, width, rip, helper } => {
                    self.bind(at);
                    // Keep the temporaries across the call (four pushes keep the stack
                    // 16-byte aligned), then hand the value over through rdi.
                    dynasm!(self.ops ; .arch x64 ; push rax ; push rcx ; push rdx ; sub rsp, 8);
                    // A fault must find the guest's registers in the state.
                    self.sync_out();
                    self.store_rip(rip);
                    dynasm!(self.ops ; .arch x64 ; mov rdi, r14 ; mov edx, width as i32);
                    self.call_abs(helper);
                    dynasm!(self.ops ; .arch x64 ; mov rdi, rax ; add rsp, 8 ; pop rdx ; pop rcx ; pop rax);
                    dynasm!(self.ops ; .arch x64 ; cmp DWORD [r14 + off::FAULT_VECTOR], -1 ; jne =>self.fault_exit);
                    dynasm!(self.ops ; .arch x64 ; mov Rq(dst.reg()), rdi ; jmp =>resume);
                }
                SlowPath::Store { at, resume, src, width, rip, helper, on_code } => {
                    self.bind(at);
                    dynasm!(self.ops ; .arch x64 ; push rax ; push rcx ; push rdx ; sub rsp, 8);
                    self.sync_out();
                    self.store_rip(rip);
                    dynasm!(self.ops ; .arch x64 ; mov rdx, Rq(src.reg()) ; mov ecx, width as i32 ; mov rdi, r14);
                    self.call_abs(helper);
                    // Keep the helper's "overwrote translated code" past the pops.
                    dynasm!(self.ops ; .arch x64 ; mov edi, eax ; add rsp, 8 ; pop rdx ; pop rcx ; pop rax);
                    dynasm!(self.ops ; .arch x64 ; cmp DWORD [r14 + off::FAULT_VECTOR], -1 ; jne =>self.fault_exit);
                    if let OnCodeWrite::Exit { next, then } = on_code {
                        // The write invalidated translations, maybe this block's own
                        // later instructions: finish this instruction and leave, so the
                        // run loop translates the new code. Only the slow path pays.
                        dynasm!(self.ops ; .arch x64 ; test edi, edi ; jz =>resume);
                        if let Some((r, t, w)) = then {
                            self.store_gpr(r, t, w, false);
                        }
                        self.store_rip(next);
                        let out = *code_written.get_or_insert_with(|| self.ops.new_dynamic_label());
                        dynasm!(self.ops ; .arch x64 ; jmp =>out);
                    } else {
                        dynasm!(self.ops ; .arch x64 ; jmp =>resume);
                    }
                }
            }
        }
        if let Some(out) = code_written {
            self.bind(out);
            self.exit_with(exit::NEXT);
        }
        let fe = self.fault_exit;
        self.bind(fe);
        // Every path here stored the registers before its helper ran.
        self.exit_raw(exit::FAULT);
        let sites = std::mem::take(&mut self.chain_sites);
        (self.ops.finalize().expect("assembling a block"), sites)
    }
}

/// A helper-call argument.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    T(T),
    Imm(u64),
    /// The current address in rsi.
    Addr,
}
