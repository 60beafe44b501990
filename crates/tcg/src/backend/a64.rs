//! The aarch64 backend, first version: correct and simple before fast.
//!
//! - The guest state stays in memory: `Get`/`Set` load and store it at once, so the
//!   state is precise wherever a helper runs or a fault leaves, with nothing to sync.
//! - Values live in the callee-saved registers x22..x28 (helpers preserve them), taken
//!   in order of definition and given back after a value's last reader; when all are
//!   taken, in frame slots at `sp`. Operations read their inputs where they are and
//!   write their result to its register (through scratch registers for slots and
//!   constants, which are materialized where read).
//! - Memory: the soft TLB probed inline (both ways of the set), the Rust helpers
//!   (`helper_load`/`helper_store`) on a miss.
//! - A direct branch within the block's page jumps through an 8-byte literal at the
//!   block's end (`ldr x16, lit; br x16`), which the run loop re-aims at the target's
//!   block once it exists: chaining and unchaining write data, not instructions, so
//!   they need no instruction-cache maintenance, an aligned 8-byte store is atomic
//!   against a vCPU running the code, and emulators that miss code written through
//!   another mapping (qemu-user 7.2, where CI runs this backend) see it too. A
//!   branch to another page, and an indirect one, go through the jump cache.
//! - No vector or x87 code ([`Backend::VECTOR`], [`Backend::X87`] false): the lowering
//!   hands those instructions to the interpreter.
//!
//! Registers: x19 holds the `Cpu` (its state at offset 0), x20 is nonzero once a store
//! in this block overwrote translated code (the block leaves at the next instruction
//! boundary), x21 points at the block's MMU index's TLB entries, x22..x28 hold values,
//! x9..x17 are scratch, x0..x3 carry helper arguments (C ABI).

// dynasm's aarch64 dynamic registers (`X(r)`) expand to `r.into()`.
#![allow(clippy::useless_conversion)]

use dynasmrt::aarch64::Aarch64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};

use super::{exit, Backend, Code, Env, Helpers, Trampoline};
use crate::flags::Width;
use crate::ir::{Bin, Block, CcOpSrc, Cond, Helper, Op, Test, Un, Val};
use crate::mmu::{entry_off, TLB_ENTRIES};
use crate::state::{off, JMP_CACHE_BITS, JMP_CACHE_SIZE};

/// (set index) * entry size, from an address shifted right by 12 - SIZE_SHIFT.
const SET_MASK: u64 = ((TLB_ENTRIES as u64) - 1) << entry_off::SIZE_SHIFT;

/// 8-byte value slots the trampoline reserves below the saved registers.
pub const FRAME_SLOTS: usize = 2048;
/// The frame in 4 KiB units (SUB's immediate shifted by 12).
const FRAME_PAGES: u32 = (FRAME_SLOTS * 8 / 4096) as u32;
const _: () = assert!((FRAME_SLOTS * 8).is_multiple_of(4096));

pub struct A64;

/// The registers that hold values: callee-saved, so live across helper calls.
const VALUE_REGS: [u8; 7] = [28, 27, 26, 25, 24, 23, 22];

/// Where a value lives.
#[derive(Clone, Copy, Debug)]
enum Loc {
    Reg(u8),
    Slot(u16),
}

type Asm = VecAssembler<Aarch64Relocation>;

impl Backend for A64 {
    const VECTOR: bool = false;
    const X87: bool = false;

    fn emit(block: &Block, env: &Env) -> Code {
        Emit::new(block, env).run()
    }

    /// enter(cpu, block): saves x19..x28 and the frame and link registers, reserves
    /// the value slots, pins the Cpu in x19 and branches to the block; the epilogue
    /// returns the exit code the block left in w0.
    fn trampoline(base: usize, helpers: &Helpers) -> Trampoline {
        let mut ops = Asm::new(base);
        dynasm!(ops ; .arch aarch64
            ; stp x29, x30, [sp, #-96]!
            ; stp x19, x20, [sp, #16]
            ; stp x21, x22, [sp, #32]
            ; stp x23, x24, [sp, #48]
            ; stp x25, x26, [sp, #64]
            ; stp x27, x28, [sp, #80]
            ; mov x29, sp
            ; sub sp, sp, #FRAME_PAGES, lsl #12
            ; mov x19, x0
            ; br x1
        );
        let epilogue = ops.offset().0;
        dynasm!(ops ; .arch aarch64
            ; ->epi:
            ; add sp, sp, #FRAME_PAGES, lsl #12
            ; ldp x27, x28, [sp, #80]
            ; ldp x25, x26, [sp, #64]
            ; ldp x23, x24, [sp, #48]
            ; ldp x21, x22, [sp, #32]
            ; ldp x19, x20, [sp, #16]
            ; ldp x29, x30, [sp], #96
            ; ret
        );
        let next_stub = ops.offset().0;
        dynasm!(ops ; .arch aarch64 ; movz w0, exit::NEXT ; b ->epi);
        // Entered by a branch from a block, the state stored.
        let lookup = ops.offset().0;
        dynasm!(ops ; .arch aarch64 ; mov x0, x19);
        mov_imm(&mut ops, 16, helpers.lookup as u64);
        dynasm!(ops ; .arch aarch64
            ; blr x16
            ; cbz x0, >miss
            ; br x0
            ; miss:
            ; movz w0, exit::MISS
            ; b ->epi
        );
        // Zero words are UDF #0.
        let helper_table = helpers.append_table(&mut ops, 0);
        let code = ops.finalize().expect("assembling the trampoline");
        Trampoline { code, enter: 0, epilogue, next_stub, lookup, helper_table }
    }

    /// The chain site is the literal its `ldr x16, lit; br x16` loads: the target.
    fn jump(_site: usize, target: usize) -> Vec<u8> {
        (target as u64).to_le_bytes().to_vec()
    }
}

/// x = imm, in MOVZ/MOVK steps (the zero halfwords skipped).
fn mov_imm(ops: &mut Asm, r: u8, k: u64) {
    dynasm!(ops ; .arch aarch64 ; movz X(r), (k & 0xffff) as u32);
    for shift in [16u32, 32, 48] {
        let h = ((k >> shift) & 0xffff) as u32;
        if h != 0 {
            match shift {
                16 => dynasm!(ops ; .arch aarch64 ; movk X(r), h, lsl #16),
                32 => dynasm!(ops ; .arch aarch64 ; movk X(r), h, lsl #32),
                _ => dynasm!(ops ; .arch aarch64 ; movk X(r), h, lsl #48),
            }
        }
    }
}

/// The AArch64 condition an IR comparison branches on after `cmp a, b`.
#[derive(Clone, Copy)]
enum Cc {
    Eq,
    Ne,
    Lo,
    Hs,
    Ls,
    Hi,
    Lt,
    Ge,
    Le,
    Gt,
}

fn cc_of(c: Cond) -> Cc {
    match c {
        Cond::Eq => Cc::Eq,
        Cond::Ne => Cc::Ne,
        Cond::Ltu => Cc::Lo,
        Cond::Geu => Cc::Hs,
        Cond::Leu => Cc::Ls,
        Cond::Gtu => Cc::Hi,
        Cond::Lt => Cc::Lt,
        Cond::Ge => Cc::Ge,
        Cond::Le => Cc::Le,
        Cond::Gt => Cc::Gt,
    }
}

fn signed(c: Cond) -> bool {
    matches!(c, Cond::Lt | Cond::Ge | Cond::Le | Cond::Gt)
}

/// Out-of-line code at a block's end.
enum Deferred {
    /// Leave for the run loop with exit code `code` and RIP = `rip` (None: stored).
    Leave { at: DynamicLabel, rip: Option<u64>, code: u32 },
    /// Raise exception `vector` (no error code) at `rip`.
    Trap { at: DynamicLabel, rip: u64, vector: u8 },
    /// A side exit (taken conditional branch) to `rip`: chainable.
    Side { at: DynamicLabel, rip: u64 },
}

struct Emit<'a> {
    block: &'a Block,
    env: &'a Env,
    ops: Asm,
    /// Each value's place while it lives, and its constant if it is one.
    loc: Vec<Option<Loc>>,
    konst: Vec<Option<u64>>,
    last_use: Vec<usize>,
    free_regs: Vec<u8>,
    free_slots: Vec<u16>,
    next_slot: u16,
    /// The instruction being emitted, and whether one of this block's stores came
    /// before it since the last check of x20.
    rip: u64,
    stored: bool,
    head: DynamicLabel,
    fault: DynamicLabel,
    epilogue: DynamicLabel,
    deferred: Vec<Deferred>,
    /// Each chainable exit's literal and the offset of its stub (the literals go
    /// after the code, see [`Self::finish`]).
    literals: Vec<(DynamicLabel, usize)>,
}

impl<'a> Emit<'a> {
    fn new(block: &'a Block, env: &'a Env) -> Self {
        let n = block.val_count();
        let mut last_use = vec![usize::MAX; n];
        let mut konst = vec![None; n];
        for (i, op) in block.ops.iter().enumerate() {
            op.for_each_use(|v| last_use[v.0 as usize] = i);
            if let Op::Const { d, v } = *op {
                konst[d.0 as usize] = Some(v);
            }
        }
        let mut ops = Asm::new(env.base);
        let (head, fault, epilogue) = (ops.new_dynamic_label(), ops.new_dynamic_label(), ops.new_dynamic_label());
        Emit {
            block,
            env,
            ops,
            loc: vec![None; n],
            konst,
            last_use,
            free_regs: VALUE_REGS.to_vec(),
            free_slots: Vec::new(),
            next_slot: 0,
            rip: env.block_rip,
            stored: false,
            head,
            fault,
            epilogue,
            deferred: Vec::new(),
            literals: Vec::new(),
        }
    }

    fn run(mut self) -> Code {
        dynasm!(self.ops ; .arch aarch64 ; movz x20, 0);
        mov_imm(&mut self.ops, 21, off::tlb_offset(self.env.mmu_idx) as u64);
        dynasm!(self.ops ; .arch aarch64 ; add x21, x19, x21 ; =>self.head);
        if !self.env.single {
            let at = self.ops.new_dynamic_label();
            self.ld_state(9, off::EXIT_REQUEST, 4);
            dynasm!(self.ops ; .arch aarch64 ; cbnz w9, =>at);
            self.deferred.push(Deferred::Leave { at, rip: Some(self.env.block_rip), code: exit::REQUEST });
        }
        for (i, &op) in self.block.ops.iter().enumerate() {
            self.op(op);
            self.free_dead(i, &op);
        }
        self.finish()
    }

    // ---- values ----

    /// Loads value `v` into x`r`.
    fn get(&mut self, r: u8, v: Val) {
        if let Some(k) = self.konst[v.0 as usize] {
            mov_imm(&mut self.ops, r, k);
            return;
        }
        match self.loc[v.0 as usize].expect("a value is defined before it is read") {
            Loc::Reg(x) if x == r => {}
            Loc::Reg(x) => dynasm!(self.ops ; .arch aarch64 ; mov X(r), X(x)),
            Loc::Slot(s) => {
                let o = u32::from(s) * 8;
                dynasm!(self.ops ; .arch aarch64 ; ldr X(r), [sp, o]);
            }
        }
    }

    /// The register that holds value `v`: its own, or `scratch` loaded with it.
    fn src(&mut self, v: Val, scratch: u8) -> u8 {
        // (Constants have no place: they are materialized.)
        match self.loc[v.0 as usize] {
            Some(Loc::Reg(x)) => x,
            _ => {
                self.get(scratch, v);
                scratch
            }
        }
    }

    /// Gives value `d` a place; returns the register to compute it in: its own, or
    /// x11 for a slot (then [`Self::spill`] stores it).
    fn dst(&mut self, d: Val) -> u8 {
        let l = match self.free_regs.pop() {
            Some(r) => Loc::Reg(r),
            None => Loc::Slot(self.free_slots.pop().unwrap_or_else(|| {
                self.next_slot += 1;
                assert!(usize::from(self.next_slot) <= FRAME_SLOTS, "a64 backend: more live values than frame slots");
                self.next_slot - 1
            })),
        };
        self.loc[d.0 as usize] = Some(l);
        match l {
            Loc::Reg(r) => r,
            Loc::Slot(_) => 11,
        }
    }

    /// Stores value `d` (computed in the register [`Self::dst`] gave) if it lives in a slot.
    fn spill(&mut self, d: Val) {
        if let Some(Loc::Slot(s)) = self.loc[d.0 as usize] {
            let o = u32::from(s) * 8;
            dynasm!(self.ops ; .arch aarch64 ; str x11, [sp, o]);
        }
    }

    /// Stores x`r` as value `d`.
    fn put(&mut self, d: Val, r: u8) {
        let x = self.dst(d);
        if x != r {
            dynasm!(self.ops ; .arch aarch64 ; mov X(x), X(r));
        }
        self.spill(d);
    }

    /// Gives back the places of values op `i` read for the last time, and of a value
    /// it defined that nothing reads.
    fn free_dead(&mut self, i: usize, op: &Op) {
        let (last_use, loc) = (&self.last_use, &mut self.loc);
        let (regs, slots) = (&mut self.free_regs, &mut self.free_slots);
        // A value read twice by the op is freed once: its place is taken.
        let mut release = |v: Val| match loc[v.0 as usize].take() {
            Some(Loc::Reg(r)) => regs.push(r),
            Some(Loc::Slot(s)) => slots.push(s),
            None => {}
        };
        op.for_each_use(|v| {
            if last_use[v.0 as usize] == i {
                release(v);
            }
        });
        if let Some(d) = op.def().filter(|d| last_use[d.0 as usize] == usize::MAX) {
            release(d);
        }
    }

    /// x`d` = x`s`'s low `w` bytes, zero- or (`signed`) sign-extended.
    fn ext(&mut self, d: u8, s: u8, w: Width, signed: bool) {
        match (w, signed) {
            (1, false) => dynasm!(self.ops ; .arch aarch64 ; and XSP(d), X(s), #0xff),
            (2, false) => dynasm!(self.ops ; .arch aarch64 ; and XSP(d), X(s), #0xffff),
            (4, false) => dynasm!(self.ops ; .arch aarch64 ; mov W(d), W(s)),
            (1, true) => dynasm!(self.ops ; .arch aarch64 ; sxtb X(d), W(s)),
            (2, true) => dynasm!(self.ops ; .arch aarch64 ; sxth X(d), W(s)),
            (4, true) => dynasm!(self.ops ; .arch aarch64 ; sxtw X(d), W(s)),
            _ if d != s => dynasm!(self.ops ; .arch aarch64 ; mov X(d), X(s)),
            _ => {}
        }
    }

    /// x`r` = its low `w` bytes, zero-extended.
    fn zext(&mut self, r: u8, w: Width) {
        self.ext(r, r, w, false);
    }

    // ---- the state ----

    /// The scaled immediate form's offset for a `size`-byte access to the state
    /// field at `o`, or None after putting `o` in x17 (beyond that form's reach).
    fn state_at(&mut self, o: i32, size: u32) -> Option<u32> {
        let o = o as u32;
        if o.is_multiple_of(size) && o / size < 4096 {
            return Some(o);
        }
        mov_imm(&mut self.ops, 17, u64::from(o));
        None
    }

    /// x`r` = the `size`-byte state field at `o` (zero-extended).
    fn ld_state(&mut self, r: u8, o: i32, size: u32) {
        match (self.state_at(o, size), size) {
            (Some(o), 8) => dynasm!(self.ops ; .arch aarch64 ; ldr X(r), [x19, o]),
            (Some(o), 4) => dynasm!(self.ops ; .arch aarch64 ; ldr W(r), [x19, o]),
            (Some(o), 2) => dynasm!(self.ops ; .arch aarch64 ; ldrh W(r), [x19, o]),
            (Some(o), _) => dynasm!(self.ops ; .arch aarch64 ; ldrb W(r), [x19, o]),
            (None, 8) => dynasm!(self.ops ; .arch aarch64 ; ldr X(r), [x19, x17]),
            (None, 4) => dynasm!(self.ops ; .arch aarch64 ; ldr W(r), [x19, x17]),
            (None, 2) => dynasm!(self.ops ; .arch aarch64 ; ldrh W(r), [x19, x17]),
            (None, _) => dynasm!(self.ops ; .arch aarch64 ; ldrb W(r), [x19, x17]),
        }
    }

    /// The `size`-byte state field at `o` = x`r`'s low bytes.
    fn st_state(&mut self, r: u8, o: i32, size: u32) {
        match (self.state_at(o, size), size) {
            (Some(o), 8) => dynasm!(self.ops ; .arch aarch64 ; str X(r), [x19, o]),
            (Some(o), 4) => dynasm!(self.ops ; .arch aarch64 ; str W(r), [x19, o]),
            (Some(o), 2) => dynasm!(self.ops ; .arch aarch64 ; strh W(r), [x19, o]),
            (Some(o), _) => dynasm!(self.ops ; .arch aarch64 ; strb W(r), [x19, o]),
            (None, 8) => dynasm!(self.ops ; .arch aarch64 ; str X(r), [x19, x17]),
            (None, 4) => dynasm!(self.ops ; .arch aarch64 ; str W(r), [x19, x17]),
            (None, 2) => dynasm!(self.ops ; .arch aarch64 ; strh W(r), [x19, x17]),
            (None, _) => dynasm!(self.ops ; .arch aarch64 ; strb W(r), [x19, x17]),
        }
    }

    fn store_rip(&mut self, rip: u64) {
        mov_imm(&mut self.ops, 9, rip);
        self.st_state(9, off::RIP, 8);
    }

    /// Calls Rust function `f` (arguments already in x0..).
    fn call(&mut self, f: usize) {
        mov_imm(&mut self.ops, 16, f as u64);
        dynasm!(self.ops ; .arch aarch64 ; blr x16);
    }

    /// Leaves through the fault exit if the helper just called raised an exception.
    fn check_fault(&mut self) {
        self.ld_state(10, off::FAULT_VECTOR, 4);
        let fault = self.fault;
        dynasm!(self.ops ; .arch aarch64 ; cmn w10, #1 ; b.ne =>fault);
    }

    fn leave(&mut self, code: u32) {
        let epi = self.epilogue;
        dynasm!(self.ops ; .arch aarch64 ; movz w0, code ; b =>epi);
    }

    /// [`Self::jump_cache`], unless a store of this block overwrote translated code:
    /// then the cached blocks may be stale, and the run loop looks.
    fn jump_cache_checked(&mut self) {
        let at = self.ops.new_dynamic_label();
        dynasm!(self.ops ; .arch aarch64 ; cbnz x20, =>at);
        self.deferred.push(Deferred::Leave { at, rip: None, code: exit::NEXT });
        self.jump_cache();
    }

    /// Goes on to the block for the RIP in x9 (stored already) if the jump cache of
    /// the block's MMU index has it, else to the trampoline's refill stub (which
    /// returns to the run loop if it finds nothing).
    fn jump_cache(&mut self) {
        let mask = (JMP_CACHE_SIZE - 1) as u64;
        dynasm!(self.ops ; .arch aarch64
            ; lsr x10, x9, #JMP_CACHE_BITS
            ; eor x10, x10, x9
            ; and x10, x10, #mask
        );
        mov_imm(&mut self.ops, 11, off::jmp_cache_offset(self.env.mmu_idx) as u64);
        dynasm!(self.ops ; .arch aarch64
            ; add x11, x11, x19
            ; add x10, x11, x10, lsl #4
            ; ldr x11, [x10]
            ; cmp x11, x9
            ; b.ne >miss
            ; ldr x12, [x10, #8]
            ; br x12
            ; miss:
        );
        mov_imm(&mut self.ops, 16, self.env.stubs.lookup as u64);
        dynasm!(self.ops ; .arch aarch64 ; br x16);
    }

    /// Leaves for `target`: a B the run loop re-aims at the target's block once it
    /// exists (a branch to the stub after it until then), or, for another page under
    /// paging (its mapping may change), the jump cache.
    fn chain_to(&mut self, target: u64) {
        if self.env.page.is_some_and(|p| p != target & !0xfff) {
            self.store_rip(target);
            self.jump_cache_checked();
            return;
        }
        let lit = self.ops.new_dynamic_label();
        dynasm!(self.ops ; .arch aarch64 ; ldr x16, =>lit ; br x16);
        // The stub the literal holds until the run loop chains the exit.
        let stub_off = self.ops.offset().0;
        self.store_rip(target);
        dynasm!(self.ops ; .arch aarch64 ; adr x9, =>lit);
        self.st_state(9, off::CHAIN_SITE, 8);
        self.literals.push((lit, stub_off));
        self.leave(exit::CHAIN);
    }

    /// The soft-TLB probe for a `w`-byte access at x1 against the tag at `tag` in
    /// the entry: on a hit x12 holds the addend (host = x1 + x12); else to `miss`.
    /// x9..x11 clobbered.
    fn probe(&mut self, w: Width, tag: i32, miss: DynamicLabel) {
        let (tag, last, shift) = (tag as u32, w as u32 - 1, 12 - entry_off::SIZE_SHIFT);
        let hit = self.ops.new_dynamic_label();
        dynasm!(self.ops ; .arch aarch64
            ; lsr x9, x1, #shift
            ; and x9, x9, #SET_MASK
            ; add x9, x9, x21
            // The tag of the access's last byte's page (mmu::page_tag).
            ; add x10, x1, #last
            ; orr x10, x10, #0xfff
            ; ldr x11, [x9, tag]
            ; cmp x11, x10
            ; b.eq =>hit
        );
        mov_imm(&mut self.ops, 11, entry_off::WAY1 as u64);
        dynasm!(self.ops ; .arch aarch64
            ; add x9, x9, x11
            ; ldr x11, [x9, tag]
            ; cmp x11, x10
            ; b.ne =>miss
            ; =>hit
            ; ldr x12, [x9, #entry_off::ADDEND as u32]
        );
    }

    // ---- comparisons ----

    /// Sets the host flags for `t` (x9, x10 clobbered) and returns the condition.
    /// 32- and 64-bit operands compare as they are (a 32-bit compare's flags are
    /// those of the low halves, signed or not), narrower ones extended first.
    fn compare(&mut self, t: &Test) -> Cc {
        let k = self.konst[t.b.0 as usize].map(|k| k & crate::flags::mask(t.w)).filter(|&k| k < 4096);
        if t.w < 4 {
            let a = self.src(t.a, 9);
            self.ext(9, a, t.w, signed(t.c));
            let b = self.src(t.b, 10);
            self.ext(10, b, t.w, signed(t.c));
            dynasm!(self.ops ; .arch aarch64 ; cmp x9, x10);
        } else {
            let a = self.src(t.a, 9);
            match (k, t.w) {
                (Some(k), 4) => dynasm!(self.ops ; .arch aarch64 ; cmp WSP(a), k as u32),
                (Some(k), _) => dynasm!(self.ops ; .arch aarch64 ; cmp XSP(a), k as u32),
                (None, w) => {
                    let b = self.src(t.b, 10);
                    if w == 4 {
                        dynasm!(self.ops ; .arch aarch64 ; cmp W(a), W(b));
                    } else {
                        dynasm!(self.ops ; .arch aarch64 ; cmp X(a), X(b));
                    }
                }
            }
        }
        cc_of(t.c)
    }

    fn branch(&mut self, cc: Cc, l: DynamicLabel) {
        match cc {
            Cc::Eq => dynasm!(self.ops ; .arch aarch64 ; b.eq =>l),
            Cc::Ne => dynasm!(self.ops ; .arch aarch64 ; b.ne =>l),
            Cc::Lo => dynasm!(self.ops ; .arch aarch64 ; b.lo =>l),
            Cc::Hs => dynasm!(self.ops ; .arch aarch64 ; b.hs =>l),
            Cc::Ls => dynasm!(self.ops ; .arch aarch64 ; b.ls =>l),
            Cc::Hi => dynasm!(self.ops ; .arch aarch64 ; b.hi =>l),
            Cc::Lt => dynasm!(self.ops ; .arch aarch64 ; b.lt =>l),
            Cc::Ge => dynasm!(self.ops ; .arch aarch64 ; b.ge =>l),
            Cc::Le => dynasm!(self.ops ; .arch aarch64 ; b.le =>l),
            Cc::Gt => dynasm!(self.ops ; .arch aarch64 ; b.gt =>l),
        }
    }

    /// x`r` = 1 if `cc` holds, else 0.
    fn cset(&mut self, r: u8, cc: Cc) {
        match cc {
            Cc::Eq => dynasm!(self.ops ; .arch aarch64 ; cset X(r), eq),
            Cc::Ne => dynasm!(self.ops ; .arch aarch64 ; cset X(r), ne),
            Cc::Lo => dynasm!(self.ops ; .arch aarch64 ; cset X(r), lo),
            Cc::Hs => dynasm!(self.ops ; .arch aarch64 ; cset X(r), hs),
            Cc::Ls => dynasm!(self.ops ; .arch aarch64 ; cset X(r), ls),
            Cc::Hi => dynasm!(self.ops ; .arch aarch64 ; cset X(r), hi),
            Cc::Lt => dynasm!(self.ops ; .arch aarch64 ; cset X(r), lt),
            Cc::Ge => dynasm!(self.ops ; .arch aarch64 ; cset X(r), ge),
            Cc::Le => dynasm!(self.ops ; .arch aarch64 ; cset X(r), le),
            Cc::Gt => dynasm!(self.ops ; .arch aarch64 ; cset X(r), gt),
        }
    }

    /// x`d` = `cc` ? x`a` : x`b`.
    fn csel(&mut self, cc: Cc, d: u8, a: u8, b: u8) {
        match cc {
            Cc::Eq => dynasm!(self.ops ; .arch aarch64 ; csel X(d), X(a), X(b), eq),
            Cc::Ne => dynasm!(self.ops ; .arch aarch64 ; csel X(d), X(a), X(b), ne),
            Cc::Lo => dynasm!(self.ops ; .arch aarch64 ; csel X(d), X(a), X(b), lo),
            Cc::Hs => dynasm!(self.ops ; .arch aarch64 ; csel X(d), X(a), X(b), hs),
            Cc::Ls => dynasm!(self.ops ; .arch aarch64 ; csel X(d), X(a), X(b), ls),
            Cc::Hi => dynasm!(self.ops ; .arch aarch64 ; csel X(d), X(a), X(b), hi),
            Cc::Lt => dynasm!(self.ops ; .arch aarch64 ; csel X(d), X(a), X(b), lt),
            Cc::Ge => dynasm!(self.ops ; .arch aarch64 ; csel X(d), X(a), X(b), ge),
            Cc::Le => dynasm!(self.ops ; .arch aarch64 ; csel X(d), X(a), X(b), le),
            Cc::Gt => dynasm!(self.ops ; .arch aarch64 ; csel X(d), X(a), X(b), gt),
        }
    }

    // ---- operations ----

    fn op(&mut self, op: Op) {
        match op {
            Op::Insn { rip, .. } => {
                // A store before this instruction overwrote translated code: the rest
                // of the block may be stale.
                if std::mem::take(&mut self.stored) {
                    let at = self.ops.new_dynamic_label();
                    dynasm!(self.ops ; .arch aarch64 ; cbnz x20, =>at);
                    self.deferred.push(Deferred::Leave { at, rip: Some(rip), code: exit::NEXT });
                }
                self.rip = rip;
            }
            Op::Const { .. } => {}
            Op::Get { d, g } => {
                let r = self.dst(d);
                self.ld_state(r, g.offset(), 8);
                self.spill(d);
            }
            Op::Set { g, s } => {
                let r = self.src(s, 9);
                self.st_state(r, g.offset(), 8);
            }
            Op::Bin { op, w, d, a, b } => {
                let (a, b) = (self.src(a, 9), self.src(b, 10));
                let r = self.dst(d);
                self.bin(op, w, r, a, b);
                self.spill(d);
            }
            Op::Un { op, w, d, a } => {
                let a = self.src(a, 9);
                let r = self.dst(d);
                self.un(op, w, r, a);
                self.spill(d);
            }
            Op::Setcond { t, d } => {
                let cc = self.compare(&t);
                let r = self.dst(d);
                self.cset(r, cc);
                self.spill(d);
            }
            Op::Select { t, d, a, b } => {
                // Loads leave the flags alone.
                let cc = self.compare(&t);
                let (a, b) = (self.src(a, 12), self.src(b, 13));
                let r = self.dst(d);
                self.csel(cc, r, a, b);
                self.spill(d);
            }
            Op::MulOverflow { w, d, a, b } => {
                let (a, b) = (self.src(a, 9), self.src(b, 10));
                if w == 8 {
                    dynasm!(self.ops ; .arch aarch64
                        ; mul x12, X(a), X(b)
                        ; smulh x13, X(a), X(b)
                        ; cmp x13, x12, asr #63
                    );
                } else {
                    self.ext(9, a, w, true);
                    self.ext(10, b, w, true);
                    dynasm!(self.ops ; .arch aarch64 ; mul x12, x9, x10);
                    self.ext(13, 12, w, true);
                    dynasm!(self.ops ; .arch aarch64 ; cmp x12, x13);
                }
                let r = self.dst(d);
                dynasm!(self.ops ; .arch aarch64 ; cset X(r), ne);
                self.spill(d);
            }
            Op::Div { rem, w, d, hi, lo, div } => {
                if w == 8 {
                    self.get(0, hi);
                    self.get(1, lo);
                    self.get(2, div);
                    dynasm!(self.ops ; .arch aarch64 ; movz x3, u32::from(rem));
                    self.call(helper_div128 as *const () as usize);
                    self.put(d, 0);
                } else {
                    self.get(9, hi);
                    self.get(10, lo);
                    self.get(11, div);
                    self.zext(9, w);
                    self.zext(10, w);
                    self.zext(11, w);
                    let bits = 8 * w as u32;
                    dynasm!(self.ops ; .arch aarch64
                        ; movz x12, bits
                        ; lsl x9, x9, x12
                        ; orr x9, x9, x10
                        ; udiv x12, x9, x11
                    );
                    if rem {
                        dynasm!(self.ops ; .arch aarch64 ; msub x12, x12, x11, x9);
                    }
                    self.zext(12, w);
                    self.put(d, 12);
                }
            }
            Op::SetCcOp(CcOpSrc::Const(c)) => {
                mov_imm(&mut self.ops, 9, u64::from(c.0));
                self.st_state(9, off::CC_OP, 4);
            }
            Op::SetCcOp(CcOpSrc::Val(v)) => {
                let r = self.src(v, 9);
                self.st_state(r, off::CC_OP, 4);
            }
            Op::GetCcOp { d } => {
                let r = self.dst(d);
                self.ld_state(r, off::CC_OP, 4);
                self.spill(d);
            }
            Op::StateCarry { d } => {
                dynasm!(self.ops ; .arch aarch64 ; mov x0, x19);
                self.call(self.env.helpers.flags);
                dynasm!(self.ops ; .arch aarch64 ; and x0, x0, #1);
                self.put(d, 0);
            }
            Op::Load { w, d, addr } => {
                self.get(1, addr);
                let (miss, done) = (self.ops.new_dynamic_label(), self.ops.new_dynamic_label());
                self.probe(w, entry_off::READ, miss);
                let r = self.dst(d);
                match w {
                    1 => dynasm!(self.ops ; .arch aarch64 ; ldrb W(r), [x1, x12]),
                    2 => dynasm!(self.ops ; .arch aarch64 ; ldrh W(r), [x1, x12]),
                    4 => dynasm!(self.ops ; .arch aarch64 ; ldr W(r), [x1, x12]),
                    _ => dynasm!(self.ops ; .arch aarch64 ; ldr X(r), [x1, x12]),
                }
                if self.env.tso {
                    // x86 orders a load before every later load and store.
                    dynasm!(self.ops ; .arch aarch64 ; dmb ishld);
                }
                dynasm!(self.ops ; .arch aarch64 ; b =>done ; =>miss);
                self.store_rip(self.rip);
                dynasm!(self.ops ; .arch aarch64 ; mov x0, x19 ; movz x2, w as u32);
                self.call(self.env.helpers.load);
                dynasm!(self.ops ; .arch aarch64 ; mov X(r), x0);
                self.check_fault();
                dynasm!(self.ops ; .arch aarch64 ; =>done);
                self.spill(d);
            }
            Op::Store { w, addr, s } => {
                self.get(1, addr);
                let v = self.src(s, 2);
                let (miss, done) = (self.ops.new_dynamic_label(), self.ops.new_dynamic_label());
                // A write hit is never a page with translated code (mmu.rs).
                self.probe(w, entry_off::WRITE, miss);
                if self.env.tso {
                    // x86 orders a store after every earlier store (and the loads
                    // before it, by their own barrier).
                    dynasm!(self.ops ; .arch aarch64 ; dmb ishst);
                }
                match w {
                    1 => dynasm!(self.ops ; .arch aarch64 ; strb W(v), [x1, x12]),
                    2 => dynasm!(self.ops ; .arch aarch64 ; strh W(v), [x1, x12]),
                    4 => dynasm!(self.ops ; .arch aarch64 ; str W(v), [x1, x12]),
                    _ => dynasm!(self.ops ; .arch aarch64 ; str X(v), [x1, x12]),
                }
                dynasm!(self.ops ; .arch aarch64 ; b =>done ; =>miss);
                self.store_rip(self.rip);
                if v != 2 {
                    dynasm!(self.ops ; .arch aarch64 ; mov x2, X(v));
                }
                dynasm!(self.ops ; .arch aarch64 ; mov x0, x19 ; movz x3, w as u32);
                self.call(self.env.helpers.store);
                dynasm!(self.ops ; .arch aarch64 ; orr x20, x20, x0);
                self.check_fault();
                dynasm!(self.ops ; .arch aarch64 ; =>done);
                self.stored = true;
            }
            Op::Call { helper, d } => {
                dynasm!(self.ops ; .arch aarch64 ; mov x0, x19);
                let h = &self.env.helpers;
                self.call(match helper {
                    Helper::Flags => h.flags,
                    Helper::Tsc => h.tsc,
                    Helper::Sti => h.sti,
                });
                self.put(d, 0);
            }
            Op::Interp { ins } => {
                self.store_rip(self.rip);
                dynasm!(self.ops ; .arch aarch64 ; mov x0, x19);
                mov_imm(&mut self.ops, 1, ins as u64);
                self.call(self.env.helpers.interp);
                dynasm!(self.ops ; .arch aarch64 ; mov w11, w0);
                self.check_fault();
                // 0: go on; 2: HLT; 1: leave, the state authoritative.
                dynasm!(self.ops ; .arch aarch64 ; cbz w11, >go_on ; cmp w11, #2 ; b.ne >leave);
                self.leave(exit::HALT);
                dynasm!(self.ops ; .arch aarch64 ; leave:);
                self.leave(exit::INTERP);
                dynasm!(self.ops ; .arch aarch64 ; go_on:);
            }
            Op::TrapIf { t, vector } => {
                let cc = self.compare(&t);
                let at = self.ops.new_dynamic_label();
                self.branch(cc, at);
                self.deferred.push(Deferred::Trap { at, rip: self.rip, vector });
            }
            Op::ExitIf { t, rip } => {
                let cc = self.compare(&t);
                let at = self.ops.new_dynamic_label();
                self.branch(cc, at);
                self.deferred.push(Deferred::Side { at, rip });
            }
            Op::Loop { t } => {
                // A store onto code in the last lap: leave, the block may be stale.
                let at = self.ops.new_dynamic_label();
                dynasm!(self.ops ; .arch aarch64 ; cbnz x20, =>at);
                self.deferred.push(Deferred::Leave { at, rip: Some(self.env.block_rip), code: exit::NEXT });
                let head = self.head;
                match t {
                    Some(t) => {
                        let cc = self.compare(&t);
                        self.branch(cc, head);
                    }
                    None => dynasm!(self.ops ; .arch aarch64 ; b =>head),
                }
            }
            Op::Exit { rip } => self.chain_to(rip),
            Op::ExitJump { rip } => {
                self.get(9, rip);
                self.st_state(9, off::RIP, 8);
                self.jump_cache_checked();
            }
            Op::ExitToLoop { rip } => {
                self.store_rip(rip);
                self.leave(exit::MODE);
            }
            Op::VLoad { .. }
            | Op::VStore { .. }
            | Op::VBin { .. }
            | Op::VGet { .. }
            | Op::VSet { .. }
            | Op::VRead { .. }
            | Op::VWrite { .. }
            | Op::X87Guard { .. }
            | Op::X87In { .. }
            | Op::X87Out { .. }
            | Op::X87SetRaw { .. }
            | Op::X87Bin { .. }
            | Op::X87BinMem { .. }
            | Op::X87Un { .. }
            | Op::X87Cmp { .. }
            | Op::X87Stack { .. } => {
                unreachable!("a64 backend: {op:?} (the lowering interprets vector and x87 code for this backend)")
            }
        }
    }

    /// x`r` = x`a` `op` x`b` at width `w`, `r` apart from `a` and `b`, which stay
    /// as they are (x9, x10, x12, x13 clobbered).
    fn bin(&mut self, op: Bin, w: Width, r: u8, a: u8, b: u8) {
        let bits = 8 * w as u32;
        match op {
            Bin::Add => dynasm!(self.ops ; .arch aarch64 ; add X(r), X(a), X(b)),
            Bin::Sub => dynasm!(self.ops ; .arch aarch64 ; sub X(r), X(a), X(b)),
            Bin::And => dynasm!(self.ops ; .arch aarch64 ; and X(r), X(a), X(b)),
            Bin::Or => dynasm!(self.ops ; .arch aarch64 ; orr X(r), X(a), X(b)),
            Bin::Xor => dynasm!(self.ops ; .arch aarch64 ; eor X(r), X(a), X(b)),
            Bin::Mul => dynasm!(self.ops ; .arch aarch64 ; mul X(r), X(a), X(b)),
            Bin::MulHu if w == 8 => dynasm!(self.ops ; .arch aarch64 ; umulh X(r), X(a), X(b)),
            Bin::MulHs if w == 8 => dynasm!(self.ops ; .arch aarch64 ; smulh X(r), X(a), X(b)),
            Bin::MulHu | Bin::MulHs => {
                // The 2w-byte product fits in 64 bits.
                let signed = op == Bin::MulHs;
                self.ext(9, a, w, signed);
                self.ext(10, b, w, signed);
                dynasm!(self.ops ; .arch aarch64 ; mul X(r), x9, x10 ; movz x12, bits ; asr X(r), X(r), x12);
            }
            Bin::Shl | Bin::Shr | Bin::Sar => {
                // The count modulo 64 (w = 8) or 32; a count of the width or more
                // leaves 0 (SAR: the sign), as 64-bit shifts of the extended value do.
                if w == 8 {
                    dynasm!(self.ops ; .arch aarch64 ; and x10, X(b), #63);
                } else {
                    dynasm!(self.ops ; .arch aarch64 ; and x10, X(b), #31);
                }
                match op {
                    Bin::Shl => dynasm!(self.ops ; .arch aarch64 ; lsl X(r), X(a), x10),
                    Bin::Shr => {
                        self.ext(9, a, w, false);
                        dynasm!(self.ops ; .arch aarch64 ; lsr X(r), x9, x10);
                    }
                    _ => {
                        self.ext(9, a, w, true);
                        dynasm!(self.ops ; .arch aarch64 ; asr X(r), x9, x10);
                    }
                }
            }
            Bin::Rol | Bin::Ror => {
                match w {
                    // RORV takes the count modulo the width.
                    8 if op == Bin::Rol => dynasm!(self.ops ; .arch aarch64 ; neg x10, X(b) ; ror X(r), X(a), x10),
                    8 => dynasm!(self.ops ; .arch aarch64 ; ror X(r), X(a), X(b)),
                    4 if op == Bin::Rol => dynasm!(self.ops ; .arch aarch64 ; neg w10, W(b) ; ror W(r), W(a), w10),
                    4 => dynasm!(self.ops ; .arch aarch64 ; ror W(r), W(a), W(b)),
                    _ => {
                        // Narrow rotates: c = count mod width, then the two shifts
                        // (a shift by the width of the zero-extended value gives 0).
                        self.ext(9, a, w, false);
                        dynasm!(self.ops ; .arch aarch64
                            ; movz x12, bits - 1
                            ; and x10, X(b), x12
                            ; movz x13, bits
                            ; sub x13, x13, x10
                        );
                        if op == Bin::Rol {
                            dynasm!(self.ops ; .arch aarch64 ; lsl X(r), x9, x10 ; lsr x12, x9, x13);
                        } else {
                            dynasm!(self.ops ; .arch aarch64 ; lsr X(r), x9, x10 ; lsl x12, x9, x13);
                        }
                        dynasm!(self.ops ; .arch aarch64 ; orr X(r), X(r), x12);
                    }
                }
            }
        }
        self.zext(r, w);
    }

    /// x`r` = `op` x`a` at width `w`, `r` apart from `a`, which stays as it is (x9,
    /// x12, x13 clobbered).
    fn un(&mut self, op: Un, w: Width, r: u8, a: u8) {
        let bits = 8 * w as u32;
        match op {
            Un::Neg => dynasm!(self.ops ; .arch aarch64 ; neg X(r), X(a)),
            Un::Not => dynasm!(self.ops ; .arch aarch64 ; mvn X(r), X(a)),
            Un::Bswap if w == 8 => dynasm!(self.ops ; .arch aarch64 ; rev X(r), X(a)),
            Un::Bswap => dynasm!(self.ops ; .arch aarch64 ; rev W(r), W(a)),
            Un::Sext => {
                self.ext(r, a, w, true);
                return;
            }
            Un::Zext => dynasm!(self.ops ; .arch aarch64 ; mov X(r), X(a)),
            Un::Parity => dynasm!(self.ops ; .arch aarch64
                ; and XSP(r), X(a), #0xff
                ; eor X(r), X(r), X(r), lsr #4
                ; eor X(r), X(r), X(r), lsr #2
                ; eor X(r), X(r), X(r), lsr #1
                ; and XSP(r), X(r), #1
                ; eor XSP(r), X(r), #1
            ),
            Un::Ctz => {
                // A bit at 8w stops the count at the width when the value is 0.
                self.ext(9, a, w, false);
                if w < 8 {
                    dynasm!(self.ops ; .arch aarch64 ; movz x12, 1 ; movz x13, bits ; lsl x12, x12, x13 ; orr x9, x9, x12);
                }
                dynasm!(self.ops ; .arch aarch64 ; rbit X(r), x9 ; clz X(r), X(r));
            }
            Un::Clz => {
                self.ext(9, a, w, false);
                dynasm!(self.ops ; .arch aarch64 ; clz X(r), x9);
                if w < 8 {
                    dynasm!(self.ops ; .arch aarch64 ; sub XSP(r), XSP(r), 64 - bits);
                }
            }
            Un::Popcnt => {
                self.ext(9, a, w, false);
                dynasm!(self.ops ; .arch aarch64
                    ; fmov d0, x9
                    ; cnt v0.b8, v0.b8
                    ; addv b0, v0.b8
                    ; fmov W(r), s0
                );
            }
        }
        self.zext(r, w);
    }

    fn finish(mut self) -> Code {
        // A side exit's code may defer more (its jump-cache check).
        while let Some(d) = self.deferred.pop() {
            match d {
                Deferred::Leave { at, rip, code } => {
                    dynasm!(self.ops ; .arch aarch64 ; =>at);
                    if let Some(rip) = rip {
                        self.store_rip(rip);
                    }
                    self.leave(code);
                }
                Deferred::Side { at, rip } => {
                    dynasm!(self.ops ; .arch aarch64 ; =>at);
                    self.chain_to(rip);
                }
                Deferred::Trap { at, rip, vector } => {
                    dynasm!(self.ops ; .arch aarch64 ; =>at);
                    self.store_rip(rip);
                    mov_imm(&mut self.ops, 9, u64::from(vector));
                    self.st_state(9, off::FAULT_VECTOR, 4);
                    self.st_state(31, off::FAULT_HAS_ERROR_CODE, 4);
                    self.leave(exit::FAULT);
                }
            }
        }
        let fault = self.fault;
        dynasm!(self.ops ; .arch aarch64 ; =>fault);
        self.leave(exit::FAULT);
        // The trampoline's epilogue, through x16 (it may be beyond B's reach).
        let epi = self.epilogue;
        dynasm!(self.ops ; .arch aarch64 ; =>epi);
        mov_imm(&mut self.ops, 16, self.env.stubs.epilogue as u64);
        dynasm!(self.ops ; .arch aarch64 ; br x16);
        // The chain literals, 8-byte aligned in memory (an aligned store re-aims one
        // atomically); the padding is a UDF word nothing reaches.
        if !(self.env.base + self.ops.offset().0).is_multiple_of(8) {
            self.ops.extend([0u8; 4]);
        }
        let mut chain_sites = Vec::new();
        for (lit, stub_off) in std::mem::take(&mut self.literals) {
            chain_sites.push((self.ops.offset().0, stub_off));
            dynasm!(self.ops ; .arch aarch64 ; =>lit);
            self.ops.extend(((self.env.base + stub_off) as u64).to_le_bytes());
        }
        let bytes = self.ops.finalize().expect("assembling a block");
        Code { bytes, chain_sites }
    }
}

/// The 128-by-64-bit unsigned division AArch64 has no instruction for: `hi:lo / div`,
/// the quotient or (`rem`) the remainder. The front end traps a quotient that does
/// not fit first; anything else here gives 0 rather than a host fault.
extern "C" fn helper_div128(hi: u64, lo: u64, div: u64, rem: u64) -> u64 {
    let n = u128::from(hi) << 64 | u128::from(lo);
    let d = u128::from(div);
    if d == 0 {
        return 0;
    }
    (if rem != 0 { n % d } else { n / d }) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, Helpers, Stubs};
    use crate::ir::{Block, Op};

    /// The instruction words of a block with one load and one store, emitted with or
    /// without x86's order to keep.
    fn words(tso: bool) -> Vec<u32> {
        let mut b = Block::new();
        b.insn(0x1000, 0x1004);
        let addr = b.konst(0x2000);
        let v = b.load(4, addr);
        b.store(4, addr, v);
        b.push(Op::Exit { rip: 0x1004 });
        let helpers =
            Helpers { load: 0, store: 0, flags: 0, tsc: 0, sti: 0, interp: 0, vload: 0, vstore: 0, lookup: 0 };
        let env = Env {
            base: 0x1000,
            stubs: Stubs::default(),
            helpers,
            page: None,
            block_rip: 0x1000,
            single: false,
            mmu_idx: 0,
            tso,
        };
        let code = A64::emit(&b, &env);
        code.bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    /// With other vCPUs, a load is followed by DMB ISHLD and a store preceded by DMB
    /// ISHST (x86's TSO on aarch64's weaker order); alone, neither.
    #[test]
    fn tso_barriers_only_with_other_vcpus() {
        const DMB_ISHLD: u32 = 0xd503_39bf;
        const DMB_ISHST: u32 = 0xd503_3abf;
        let with = words(true);
        assert_eq!(with.iter().filter(|&&w| w == DMB_ISHLD).count(), 1, "{with:08x?}");
        assert_eq!(with.iter().filter(|&&w| w == DMB_ISHST).count(), 1, "{with:08x?}");
        let without = words(false);
        assert!(!without.iter().any(|&w| w == DMB_ISHLD || w == DMB_ISHST), "{without:08x?}");
    }
}
