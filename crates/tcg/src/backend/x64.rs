//! The x86-64 host backend.
//!
//! Host registers inside generated code:
//! - `r14`: the [`crate::state::CpuState`], pinned for the whole run.
//! - `rdi`, `r8`, `rcx`: scratch (the TLB probe, helper arguments; `cl` holds shift
//!   counts). Never allocated.
//! - The other eleven: the block's most used guest registers (callee-saved host
//!   registers first, so helper calls keep them), the rest for values.
//! - The stack is 16-byte aligned at block level; the run loop's frame reserves
//!   [`FRAME_SLOTS`] 8-byte slots at `rsp`: values spilled when registers run out,
//!   and registers saved around helper calls.
//!
//! Guest registers live in host registers across the whole block (a loop onto the
//! block's start keeps them there) and are stored only on the way out: at exits and
//! on the slow paths of memory accesses, which store them before calling Rust so a
//! fault sees the precise state without the fast path paying for it.

// dynasm's expansion of dynamic registers (`Rq(n)`) converts u8 to u8.
#![allow(clippy::useless_conversion)]

use dynasmrt::x64::X64Relocation;
use dynasmrt::{dynasm, DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler};

use super::{exit, Backend, Code, Env, Helpers, Trampoline};
use crate::flags::{CcKind, CcOp, Width};
use crate::ir::{
    Bin, Block, CcOpSrc, Cond, FOp, FShape, Global, Helper, Op, Test, Un, VBin, VRead, VReg, VWrite, Val, X87Fmt, X87Un,
};
use crate::mmu::{entry_off, TLB_BITS};
use crate::state::off;

/// 8-byte slots the run loop's frame reserves below its saved registers: 0..16 for
/// spilled values, 16..32 to save host register r around a call (slot 16 + r).
pub const FRAME_SLOTS: usize = 32;
const SPILL_SLOTS: usize = 16;

const RDI: u8 = 7;

/// Allocatable host registers: callee-saved first (rbx, rbp, r12, r13, r15), then
/// caller-saved (rax, rdx, rsi, r9, r10, r11).
const POOL: [u8; 11] = [3, 5, 12, 13, 15, 0, 2, 6, 9, 10, 11];
/// At most this many guest registers are mapped (fewer when a block's ops would run
/// short of value registers).
const MAX_MAPPED: usize = 8;

/// Loops of fewer guest instructions keep the flag record in mapped registers.
const SHORT_LOOP: usize = 16;

/// The flag record's globals, in `Alloc::ccv` order.
const CC_GLOBALS: [Global; 3] = [Global::CcDst, Global::CcSrc, Global::CcSrc2];

fn cc_index(g: usize) -> Option<usize> {
    CC_GLOBALS.iter().position(|c| c.index() == g)
}

fn caller_saved(r: u8) -> bool {
    matches!(r, 0 | 1 | 2 | 6 | 7 | 8 | 9 | 10 | 11)
}

pub struct X64;

impl Backend for X64 {
    const VECTOR: bool = true;
    const X87: bool = true;
    fn emit(block: &Block, env: &Env) -> Code {
        // As many guest registers mapped as leave every op the value registers it
        // needs at once; a block whose ops run short is emitted again with one fewer.
        let mut mapped = MAX_MAPPED;
        loop {
            let (code, starved) = Emit::new(block, env, mapped).run();
            if !starved || mapped == 0 {
                assert!(!starved, "tcg backend: an op needs more value registers than the host has");
                return code;
            }
            mapped -= 1;
            crate::profile::count(&crate::profile::REEMITS);
        }
    }

    /// Saves the callee-saved registers, reserves the frame's slots, pins the Cpu in
    /// r14 and jumps to the block; the epilogue returns the exit code in eax.
    fn trampoline(base: usize, helpers: &Helpers) -> Trampoline {
        // Alignment padding plus the slots generated code spills to.
        const FRAME: i32 = 8 + FRAME_SLOTS as i32 * 8;
        let mut ops: VecAssembler<X64Relocation> = VecAssembler::new(base);
        dynasm!(ops ; .arch x64
            ; push rbx ; push rbp ; push r12 ; push r13 ; push r14 ; push r15
            ; sub rsp, FRAME
            ; mov r14, rdi
            ; jmp rsi
        );
        let epilogue = ops.offset().0;
        dynasm!(ops ; .arch x64
            ; ->epi:
            ; add rsp, FRAME
            ; pop r15 ; pop r14 ; pop r13 ; pop r12 ; pop rbp ; pop rbx
            ; ret
        );
        let next_stub = ops.offset().0;
        dynasm!(ops ; .arch x64 ; mov eax, exit::NEXT as i32 ; jmp ->epi);
        // Entered by a jump from a block (the frame as in the block, the state stored).
        let lookup = ops.offset().0;
        dynasm!(ops ; .arch x64
            ; mov rdi, r14
            ; mov rax, QWORD helpers.lookup as i64
            ; call rax
            ; test rax, rax
            ; jz >miss
            ; jmp rax
            ; miss:
            ; mov eax, exit::MISS as i32
            ; jmp ->epi
        );
        let helper_table = helpers.append_table(&mut ops, 0xcc);
        let code = ops.finalize().expect("assembling the trampoline");
        Trampoline { code, enter: 0, epilogue, next_stub, lookup, helper_table }
    }

    fn jump(site: usize, target: usize) -> Vec<u8> {
        // JMP rel32, the form every chainable exit is emitted in.
        let rel = (target as i64 - (site as i64 + 5)) as i32;
        let mut b = vec![0xe9u8];
        b.extend_from_slice(&rel.to_le_bytes());
        b
    }
}

/// A few host registers an allocation must not take, kept on the stack (the
/// translator builds one for most operations).
struct Lock {
    regs: [u8; 8],
    n: usize,
}

impl Lock {
    fn of(regs: &[u8]) -> Self {
        let mut l = Lock { regs: [0; 8], n: regs.len() };
        l.regs[..regs.len()].copy_from_slice(regs);
        l
    }

    fn and(mut self, r: u8) -> Self {
        self.regs[self.n] = r;
        self.n += 1;
        self
    }
}

impl std::ops::Deref for Lock {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.regs[..self.n]
    }
}

/// Where a value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    /// Not defined yet, or dead.
    None,
    Const(u64),
    Reg(u8),
    /// In the host register of a mapped guest register (a `Get` not yet overwritten).
    Global(u8),
    Slot(u8),
    /// In the state's slot of global `g`, not mapped to a register (see
    /// `Alloc::in_state`): loaded when used, dropped rather than spilled.
    State(u8),
}

/// Whether the state's `cc_op` is what the block last set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CcState {
    Stored,
    Pending(u32),
}

/// Register allocation state at a point of the block (cloned for out-of-line code).
#[derive(Clone)]
struct Alloc {
    loc: Vec<Loc>,
    reg_val: [Option<Val>; 16],
    slot_val: [Option<Val>; SPILL_SLOTS],
    /// Mapped globals whose host register differs from the state.
    dirty: u32,
    cc: CcState,
    /// The flag record's values (`cc_dst`, `cc_src`, `cc_src2`) set since the state
    /// last had them: they stay where they are and reach the state only on a way out
    /// (a slow path, helper or exit), so a record that the next one replaces costs
    /// nothing on the fast path.
    ccv: [Option<Val>; 3],
    /// The host MXCSR holds the guest's (loaded by the first floating-point op, put
    /// back before anything else runs: a helper, an exit, the loop's head), so a
    /// run of SSE arithmetic pays for one switch, not one per instruction.
    mx: bool,
    /// Values that were `Loc::Global(g)` when pushed, per global (checked when used:
    /// one may have moved since).
    aliases: [Vec<Val>; Global::COUNT],
    /// The value the state's slot of each unmapped global (not a flag-record one)
    /// is known to hold: a `Get` not loaded yet, or a `Set` done. A value there needs
    /// no spill slot; an op that may write guest registers (a helper, the
    /// interpreter) forgets them all.
    in_state: [Option<Val>; Global::COUNT],
}

/// The allocation state the rest of an instruction starts from, for replaying it out
/// of line: registers, and where the values it reads are.
struct Snapshot {
    in_state: [Option<Val>; Global::COUNT],
    reg_val: [Option<Val>; 16],
    slot_val: [Option<Val>; SPILL_SLOTS],
    dirty: u32,
    cc: CcState,
    ccv: [Option<Val>; 3],
    mx: bool,
    locs: Vec<(Val, Loc)>,
}

/// What must be stored at a way out: the dirty globals and `cc_op`.
#[derive(Clone, Copy)]
struct Sync {
    dirty: u32,
    cc: CcState,
    /// Where the pending flag-record values are (`Loc::None`: not pending).
    ccv: [Loc; 3],
    /// The guest's MXCSR is loaded (see `Alloc::mx`).
    mx: bool,
}

/// Where a TLB probe found its set's first entry: at a constant offset in the state
/// (with the page's tag, a constant too), or at `rdi` + the table's offset with the
/// tag in r8.
#[derive(Clone, Copy)]
enum Entry {
    Const(i32, i32),
    Indexed(i32),
}

enum Deferred {
    /// A TLB probe that missed the set's first way tries the second, then the slow
    /// path `miss`.
    Way1 {
        at: DynamicLabel,
        hit: DynamicLabel,
        miss: DynamicLabel,
        entry: Entry,
        tag: i32,
    },
    Load {
        at: DynamicLabel,
        resume: DynamicLabel,
        /// The register loaded, or (vector loads) the state offset of the vector and
        /// whether the access must be aligned.
        d: LoadDst,
        w: Width,
        /// The address: register `addr` + `disp`.
        addr: u8,
        disp: i32,
        rip: u64,
        sync: Sync,
    },
    Store {
        at: DynamicLabel,
        resume: DynamicLabel,
        src: StoreSrc,
        w: Width,
        addr: u8,
        disp: i32,
        rip: u64,
        next: u64,
        sync: Sync,
        /// The state after the store, and the rest of its instruction, for the way
        /// out when the store overwrote translated code.
        after: Box<Snapshot>,
        tail: std::ops::Range<usize>,
    },
    SideExit {
        at: DynamicLabel,
        rip: u64,
        sync: Sync,
    },
    /// A failed guard: leave for the run loop to step over `rip` alone.
    Step {
        at: DynamicLabel,
        rip: u64,
        sync: Sync,
    },
    Request {
        at: DynamicLabel,
        sync: Sync,
    },
    Trap {
        at: DynamicLabel,
        rip: u64,
        vector: u8,
        sync: Sync,
    },
    /// CF of an uncommon record in the state: the flags helper, bit 0 into `r`.
    Carry {
        at: DynamicLabel,
        resume: DynamicLabel,
        r: u8,
        sync: Sync,
    },
}

/// What a store's slow path stores.
#[derive(Clone, Copy, Debug)]
enum StoreSrc {
    Val(Operand),
    /// The vector at this state offset; whether the access must be aligned.
    Vec(i32, bool),
}

#[derive(Clone, Copy, Debug)]
enum LoadDst {
    Reg(u8),
    Vec(i32, bool),
}

/// SSE encodings of the vector operations on host xmm0 (destination and first
/// input) and xmm1: mandatory prefix (0: none), the opcode after 0F, the ModRM reg
/// field of the immediate shifts (which take xmm0 alone), and whether an imm8
/// follows.
fn sse_encoding(op: VBin) -> (u8, u8, Option<u8>, bool) {
    use VBin::*;
    let p = |opc: u8| (0x66, opc, None, false);
    let g = |opc: u8, r: u8| (0x66, opc, Some(r), true);
    match op {
        Mov => (0x66, 0x6f, None, false),
        And => p(0xdb),
        AndN => p(0xdf),
        Or => p(0xeb),
        Xor => p(0xef),
        AddB => p(0xfc),
        AddW => p(0xfd),
        AddD => p(0xfe),
        AddQ => p(0xd4),
        SubB => p(0xf8),
        SubW => p(0xf9),
        SubD => p(0xfa),
        SubQ => p(0xfb),
        AddSatUB => p(0xdc),
        AddSatUW => p(0xdd),
        AddSatSB => p(0xec),
        AddSatSW => p(0xed),
        SubSatUB => p(0xd8),
        SubSatUW => p(0xd9),
        SubSatSB => p(0xe8),
        SubSatSW => p(0xe9),
        CmpEqB => p(0x74),
        CmpEqW => p(0x75),
        CmpEqD => p(0x76),
        CmpGtB => p(0x64),
        CmpGtW => p(0x65),
        CmpGtD => p(0x66),
        MinUB => p(0xda),
        MaxUB => p(0xde),
        MinSW => p(0xea),
        MaxSW => p(0xee),
        AvgB => p(0xe0),
        AvgW => p(0xe3),
        MulLoW => p(0xd5),
        MulHiW => p(0xe5),
        MulHiUW => p(0xe4),
        MulUDQ => p(0xf4),
        MAddWD => p(0xf5),
        SadBW => p(0xf6),
        UnpackLoB => p(0x60),
        UnpackLoW => p(0x61),
        UnpackLoD => p(0x62),
        UnpackLoQ => p(0x6c),
        UnpackHiB => p(0x68),
        UnpackHiW => p(0x69),
        UnpackHiD => p(0x6a),
        UnpackHiQ => p(0x6d),
        PackSSWB => p(0x63),
        PackSSDW => p(0x6b),
        PackUSWB => p(0x67),
        SllW => p(0xf1),
        SllD => p(0xf2),
        SllQ => p(0xf3),
        SrlW => p(0xd1),
        SrlD => p(0xd2),
        SrlQ => p(0xd3),
        SraW => p(0xe1),
        SraD => p(0xe2),
        SllWI => g(0x71, 6),
        SllDI => g(0x72, 6),
        SllQI => g(0x73, 6),
        SrlWI => g(0x71, 2),
        SrlDI => g(0x72, 2),
        SrlQI => g(0x73, 2),
        SraWI => g(0x71, 4),
        SraDI => g(0x72, 4),
        SllDQI => g(0x73, 7),
        SrlDQI => g(0x73, 3),
        ShufD => (0x66, 0x70, None, true),
        ShufLoW => (0xf2, 0x70, None, true),
        ShufHiW => (0xf3, 0x70, None, true),
        ShufPs => (0, 0xc6, None, true),
        ShufPd => (0x66, 0xc6, None, true),
        MovLo32 => (0xf3, 0x10, None, false),
        MovLo64 => (0xf2, 0x10, None, false),
        MovQ => (0xf3, 0x7e, None, false),
        MovLH => (0, 0x16, None, false),
        MovHL => (0, 0x12, None, false),
        Float(f, shape) => {
            let prefix = match shape {
                FShape::Ps => 0,
                FShape::Pd => 0x66,
                FShape::Ss => 0xf3,
                FShape::Sd => 0xf2,
            };
            let opc = match f {
                FOp::Add => 0x58,
                FOp::Mul => 0x59,
                FOp::Sub => 0x5c,
                FOp::Min => 0x5d,
                FOp::Div => 0x5e,
                FOp::Max => 0x5f,
                FOp::Sqrt => 0x51,
                FOp::Cmp => 0xc2,
            };
            (prefix, opc, None, f == FOp::Cmp)
        }
        Cvt(c) => {
            let (prefix, opc) = match c {
                crate::ir::Cvt::Ss2Sd => (0xf3, 0x5a),
                crate::ir::Cvt::Sd2Ss => (0xf2, 0x5a),
                crate::ir::Cvt::Ps2Pd => (0, 0x5a),
                crate::ir::Cvt::Pd2Ps => (0x66, 0x5a),
                crate::ir::Cvt::Dq2Ps => (0, 0x5b),
                crate::ir::Cvt::Ps2Dq => (0x66, 0x5b),
                crate::ir::Cvt::Tps2Dq => (0xf3, 0x5b),
                crate::ir::Cvt::Dq2Pd => (0xf3, 0xe6),
                crate::ir::Cvt::Pd2Dq => (0xf2, 0xe6),
                crate::ir::Cvt::Tpd2Dq => (0x66, 0xe6),
            };
            (prefix, opc, None, false)
        }
    }
}

/// A source operand: a register or a 32-bit immediate (sign-extended).
#[derive(Clone, Copy, Debug)]
enum Operand {
    Reg(u8),
    Imm(i32),
}

struct Emit<'a> {
    ops: VecAssembler<X64Relocation>,
    env: &'a Env,
    block: &'a Block,
    /// Each value's last reader, or for a flag-record value the op that replaces it
    /// if later (see `Alloc::ccv`).
    last_use: Vec<usize>,
    /// Each value's last reader.
    own_last_use: Vec<usize>,
    /// The values `Op::Const` defines: one in a register goes back to being a
    /// constant rather than to a spill slot when registers run out.
    konsts: Vec<Option<u64>>,
    /// An address `base + disp` only loads and stores read: not computed, the
    /// accesses address `[base + disp]` themselves.
    fused: Vec<Option<(Val, i32)>>,
    /// A shift left by 1..3 that one addition reads: not computed, the addition is a
    /// LEA with the scaled index `(value, scale)`.
    scaled: Vec<Option<(Val, u8)>>,
    /// The mapped global a value is about to be written to with nothing in between
    /// that could see the register change early: computed in that register.
    target: Vec<Option<u8>>,
    /// Host register of each mapped global.
    gmap: [Option<u8>; Global::COUNT],
    temps: Vec<u8>,
    a: Alloc,
    deferred: Vec<Deferred>,
    fault_exit: DynamicLabel,
    head: DynamicLabel,
    chain_sites: Vec<(usize, usize)>,
    rip: u64,
    next: u64,
    /// Index of the op after the current instruction's last.
    insn_end: usize,
    /// The flag record's values stay pending instead of going to their globals (see
    /// `Alloc::ccv`): blocks without a loop shorter than `SHORT_LOOP`.
    pending_cc: bool,
    /// The op being emitted.
    cur: usize,
    /// An op found no value register free: the code is wrong, emit with fewer
    /// mapped guest registers.
    starved: bool,
    /// Inside out-of-line code replaying an instruction's tail: exits do not chain.
    replay: bool,
    /// The block's shared slow-path routines (emitted at the end when used): store
    /// every mapped global and save the caller-saved registers; restore them.
    state_out: Option<DynamicLabel>,
    regs_back: Option<DynamicLabel>,
    regs_back_checked: Option<DynamicLabel>,
    /// Reloads every mapped global from the state (after the interpreter).
    regs_in: Option<DynamicLabel>,
}

fn cc_of(c: Cond) -> u8 {
    match c {
        Cond::Eq => 0x4,
        Cond::Ne => 0x5,
        Cond::Ltu => 0x2,
        Cond::Geu => 0x3,
        Cond::Leu => 0x6,
        Cond::Gtu => 0x7,
        Cond::Lt => 0xc,
        Cond::Ge => 0xd,
        Cond::Le => 0xe,
        Cond::Gt => 0xf,
    }
}

impl<'a> Emit<'a> {
    fn new(block: &'a Block, env: &'a Env, max_mapped: usize) -> Self {
        // Sized from the block: about 20 bytes of host code and two labels per op, so
        // the assembler does not keep growing (and copying) while it emits.
        let n_ops = block.ops.len();
        let mut ops =
            VecAssembler::new_with_capacity(env.base, 20 * n_ops + 512, 16, 1, 2 * n_ops + 8, 16, 2 * n_ops + 8);
        let fault_exit = ops.new_dynamic_label();
        let head = ops.new_dynamic_label();
        let n = block.val_count();
        let mut u = uses(block);
        let (scaled, fused) = fold_addressing(block, &mut u);
        let own_last_use = u.last;
        let konsts = u.konst;
        let mut last_use = own_last_use.clone();
        let mut uses = [0u32; Global::COUNT];
        // A flag-record value lives on, pending, until the next record's replaces it
        // (see `Alloc::ccv`); it reaches the state at a loop's back edge too, which a
        // short loop would pay for at every turn: there the record's globals are
        // mapped like the guest registers instead.
        let has_loop = block.ops.iter().any(|o| matches!(o, Op::Loop { .. }));
        let insns = block.ops.iter().filter(|o| matches!(o, Op::Insn { .. })).count();
        let pending_cc = !has_loop || insns >= SHORT_LOOP;
        let mut pending: [Option<Val>; 3] = [None; 3];
        for (i, op) in block.ops.iter().enumerate() {
            match op {
                Op::Get { g, .. } => uses[g.index()] += 1,
                Op::Set { g, s } => {
                    uses[g.index()] += 1;
                    if let Some(k) = cc_index(g.index()).filter(|_| pending_cc) {
                        if let Some(old) = pending[k].replace(*s) {
                            last_use[old.0 as usize] = last_use[old.0 as usize].max(i);
                        }
                    }
                }
                _ => {}
            }
        }
        for v in pending.into_iter().flatten() {
            last_use[v.0 as usize] = n_ops;
        }
        // Every global the block names is worth a register (a write-only one is then
        // stored once at the exit instead of at each write), the most used first.
        let mut order: Vec<usize> =
            (0..Global::COUNT).filter(|&g| uses[g] >= 1 && !(pending_cc && cc_index(g).is_some())).collect();
        order.sort_by_key(|&g| std::cmp::Reverse(uses[g]));
        order.truncate(max_mapped);
        let mut gmap = [None; Global::COUNT];
        for (k, &g) in order.iter().enumerate() {
            gmap[g] = Some(POOL[k]);
        }
        let temps = POOL[order.len()..].to_vec();
        let target = targets(block, &gmap);
        Emit {
            ops,
            env,
            block,
            last_use,
            own_last_use,
            konsts,
            fused,
            scaled,
            target,
            gmap,
            temps,
            a: Alloc {
                loc: vec![Loc::None; n],
                reg_val: [None; 16],
                slot_val: [None; SPILL_SLOTS],
                dirty: 0,
                cc: CcState::Stored,
                ccv: [None; 3],
                mx: false,
                aliases: Default::default(),
                in_state: [None; Global::COUNT],
            },
            deferred: Vec::with_capacity(n_ops / 4 + 4),
            fault_exit,
            head,
            chain_sites: Vec::new(),
            rip: 0,
            next: 0,
            insn_end: 0,
            pending_cc,
            cur: 0,
            starved: false,
            replay: false,
            state_out: None,
            regs_back: None,
            regs_back_checked: None,
            regs_in: None,
        }
    }

    fn run(mut self) -> (Code, bool) {
        let has_loop = self.block.ops.iter().any(|o| matches!(o, Op::Loop { .. }));
        // Every mapped global is loaded: the slow paths store them all back (a
        // compact shared routine), so none may hold garbage.
        let mut written = 0u32;
        for op in &self.block.ops {
            if let Op::Set { g, .. } = op {
                written |= 1 << g.index();
            }
        }
        for g in 0..Global::COUNT {
            if let Some(h) = self.gmap[g] {
                let o = Global::from_index(g).offset();
                dynasm!(self.ops ; .arch x64 ; mov Rq(h), [r14 + o]);
            }
        }
        if has_loop {
            self.a.dirty = written & self.mapped_mask();
        }
        let head = self.head;
        dynasm!(self.ops ; .arch x64 ; =>head);
        if !self.env.single {
            let leave = self.ops.new_dynamic_label();
            dynasm!(self.ops ; .arch x64 ; cmp DWORD [r14 + off::EXIT_REQUEST], 0 ; jne =>leave);
            self.deferred.push(Deferred::Request { at: leave, sync: self.sync_now() });
        }
        let n = self.block.ops.len();
        self.emit_range(0..n);
        self.finish()
    }

    fn mapped_mask(&self) -> u32 {
        (0..Global::COUNT).filter(|&g| self.gmap[g].is_some()).fold(0, |m, g| m | 1 << g)
    }

    fn sync_now(&self) -> Sync {
        let ccv = self.a.ccv.map(|v| v.map_or(Loc::None, |v| self.a.loc[v.0 as usize]));
        Sync { dirty: self.a.dirty, cc: self.a.cc, ccv, mx: self.a.mx }
    }

    /// The state has the flag record: values kept only for it are free.
    fn clear_ccv(&mut self) {
        for v in std::mem::take(&mut self.a.ccv).into_iter().flatten() {
            let own = self.own_last_use[v.0 as usize];
            if own <= self.cur {
                // Read by the current op at most: free now, or when the op is done.
                self.last_use[v.0 as usize] = own;
                if own < self.cur {
                    self.free_dead_val(v);
                }
            }
        }
    }

    /// Before an op that may write guest registers in the state: values only there
    /// and still needed after op `i` move to registers, and the slots are unknown.
    fn forget_state_values(&mut self, i: usize) {
        for g in 0..Global::COUNT {
            if let Some(v) = self.a.in_state[g].take() {
                if self.a.loc[v.0 as usize] == Loc::State(g as u8) && !self.is_dead_after(v, i) {
                    self.reg(v, &[]);
                }
            }
        }
    }

    /// Stores the pending flag-record values at `locs` (through rdi when one is in a
    /// spill slot or a wide constant).
    fn store_ccv(&mut self, locs: [Loc; 3]) {
        for (k, loc) in locs.into_iter().enumerate() {
            let o = CC_GLOBALS[k].offset();
            match loc {
                Loc::None => {}
                Loc::Reg(r) => dynasm!(self.ops ; .arch x64 ; mov [r14 + o], Rq(r)),
                Loc::Global(g) => {
                    let h = self.gmap[g as usize].expect("mapped");
                    dynasm!(self.ops ; .arch x64 ; mov [r14 + o], Rq(h))
                }
                Loc::Const(c) if i32::try_from(c as i64).is_ok() => {
                    dynasm!(self.ops ; .arch x64 ; mov QWORD [r14 + o], c as i32)
                }
                Loc::Const(c) => dynasm!(self.ops ; .arch x64 ; mov rdi, QWORD c as i64 ; mov [r14 + o], rdi),
                Loc::Slot(sl) => {
                    let so = (sl as usize * 8) as i32;
                    dynasm!(self.ops ; .arch x64 ; mov rdi, [rsp + so] ; mov [r14 + o], rdi)
                }
                Loc::State(g) => {
                    let go = Global::from_index(g as usize).offset();
                    dynasm!(self.ops ; .arch x64 ; mov rdi, [r14 + go] ; mov [r14 + o], rdi)
                }
            }
        }
    }

    fn emit_range(&mut self, range: std::ops::Range<usize>) {
        for i in range {
            let op = self.block.ops[i];
            if let Op::Insn { rip, next } = op {
                self.rip = rip;
                self.next = next;
                self.insn_end = (i + 1..self.block.ops.len())
                    .find(|&j| matches!(self.block.ops[j], Op::Insn { .. }))
                    .unwrap_or(self.block.ops.len());
                continue;
            }
            self.cur = i;
            self.op(i, op);
            if let Some(d) = op.def() {
                // A value nothing reads (a load kept for its fault) frees at once.
                if self.last_use[d.0 as usize] <= i {
                    self.free_dead_val(d);
                }
            }
            if op.ends_block() {
                return;
            }
        }
    }

    // ---- allocation ----

    fn is_dead_after(&self, v: Val, i: usize) -> bool {
        self.last_use[v.0 as usize] <= i
    }

    /// A free value register not in `lock`; spills the value used furthest ahead when
    /// none is free.
    fn alloc(&mut self, lock: &[u8]) -> u8 {
        if let Some(&r) = self.temps.iter().find(|&&r| self.a.reg_val[r as usize].is_none() && !lock.contains(&r)) {
            return r;
        }
        // A value that costs nothing to put away goes back where it came from: a
        // constant (an immediate move brings it back) before a value the state also
        // holds; the furthest used first.
        let droppable = self
            .temps
            .iter()
            .copied()
            .filter(|r| !lock.contains(r))
            .filter_map(|r| {
                let v = self.a.reg_val[r as usize]?;
                let home = match self.konsts[v.0 as usize] {
                    Some(k) => (0, Loc::Const(k)),
                    None => (1, Loc::State(self.a.in_state.iter().position(|&s| s == Some(v))? as u8)),
                };
                Some((r, v, home))
            })
            .min_by_key(|&(_, v, (rank, _))| (rank, std::cmp::Reverse(self.last_use[v.0 as usize])));
        if let Some((r, v, (_, home))) = droppable {
            self.a.reg_val[r as usize] = None;
            self.a.loc[v.0 as usize] = home;
            return r;
        }
        let victim = self
            .temps
            .iter()
            .copied()
            .filter(|r| !lock.contains(r))
            .max_by_key(|&r| self.a.reg_val[r as usize].map_or(0, |v| self.last_use[v.0 as usize]));
        let slot = self.a.slot_val.iter().position(|s| s.is_none());
        let (Some(victim), Some(slot)) = (victim, slot) else {
            // Out of registers or slots: the code is thrown away (see `X64::emit`).
            self.starved = true;
            return RDI;
        };
        let v = self.a.reg_val[victim as usize].take().expect("occupied");
        self.a.slot_val[slot] = Some(v);
        self.a.loc[v.0 as usize] = Loc::Slot(slot as u8);
        let o = (slot * 8) as i32;
        dynasm!(self.ops ; .arch x64 ; mov [rsp + o], Rq(victim));
        victim
    }

    fn define(&mut self, d: Val, r: u8) {
        self.a.loc[d.0 as usize] = Loc::Reg(r);
        self.a.reg_val[r as usize] = Some(d);
    }

    /// The register holding `v`, loading it into one (not in `lock`) if needed.
    fn reg(&mut self, v: Val, lock: &[u8]) -> u8 {
        match self.a.loc[v.0 as usize] {
            Loc::Reg(r) => r,
            Loc::Global(g) => self.gmap[g as usize].expect("mapped"),
            Loc::Const(k) => {
                let r = self.alloc(lock);
                self.mov_imm(r, k);
                self.define(v, r);
                r
            }
            Loc::Slot(s) => {
                let r = self.alloc(lock);
                let o = (s as usize * 8) as i32;
                dynasm!(self.ops ; .arch x64 ; mov Rq(r), [rsp + o]);
                self.a.slot_val[s as usize] = None;
                self.define(v, r);
                r
            }
            Loc::State(g) => {
                let r = self.alloc(lock);
                let o = Global::from_index(g as usize).offset();
                dynasm!(self.ops ; .arch x64 ; mov Rq(r), [r14 + o]);
                self.define(v, r);
                r
            }
            Loc::None => panic!("tcg backend: {v} used before its definition"),
        }
    }

    /// `v`'s value when it is a constant.
    fn konst(&self, v: Val) -> Option<u64> {
        match self.a.loc[v.0 as usize] {
            Loc::Const(k) => Some(k),
            _ => None,
        }
    }

    /// `v` as an operand: a 32-bit immediate when it is such a constant.
    fn operand(&mut self, v: Val, lock: &[u8]) -> Operand {
        match self.a.loc[v.0 as usize] {
            Loc::Const(k) if i32::try_from(k as i64).is_ok() => Operand::Imm(k as i32),
            _ => Operand::Reg(self.reg(v, lock)),
        }
    }

    fn free_dead_val(&mut self, v: Val) {
        match self.a.loc[v.0 as usize] {
            Loc::Reg(r) if self.a.reg_val[r as usize] == Some(v) => self.a.reg_val[r as usize] = None,
            Loc::Slot(s) => self.a.slot_val[s as usize] = None,
            _ => {}
        }
        self.a.loc[v.0 as usize] = Loc::None;
    }

    /// Frees what values dying at op `i` occupy.
    fn free_dead(&mut self, i: usize, op: &Op) {
        let mut dying = [Val(0); 16];
        let mut n = 0;
        op.for_each_use(|v| {
            let base = self.fused[v.0 as usize].map(|f| f.0);
            let index = self.scaled[v.0 as usize].map(|f| f.0);
            for v in std::iter::once(v).chain(base).chain(index) {
                if self.last_use[v.0 as usize] <= i {
                    dying[n] = v;
                    n += 1;
                }
            }
        });
        for &v in &dying[..n] {
            self.free_dead_val(v);
        }
    }

    /// A register for the result of op `i`: `a`'s own when `a` dies here and sits in
    /// a value register (and the op reads it nowhere else, `others`), else a fresh one
    /// (after copying `a` into it when `copy`).
    fn result_from_excl(&mut self, i: usize, a: Val, lock: &[u8], copy: bool, others: &[Val]) -> u8 {
        if let Loc::Reg(r) = self.a.loc[a.0 as usize] {
            if self.is_dead_after(a, i) && !lock.contains(&r) && !others.contains(&a) {
                self.a.reg_val[r as usize] = None;
                self.a.loc[a.0 as usize] = Loc::None;
                return r;
            }
        }
        let d = self.alloc(lock);
        if copy {
            self.mov_loc(d, a);
        }
        d
    }

    /// The register for op `i`'s result `d` computed from `a` (copied in first): the
    /// register of the global `d` is headed for when that is safe (see `target`),
    /// else as [`Self::result_from_excl`]. `others`: the op's other inputs.
    fn dest(&mut self, i: usize, d: Val, a: Val, lock: &[u8], others: &[Val]) -> u8 {
        let (rd, holds_a) = self.dest_or_fresh(i, d, a, lock, others);
        if !holds_a {
            self.mov_loc(rd, a);
        }
        rd
    }

    /// As [`Self::dest`] without the copy: the register, and whether it holds `a`.
    fn dest_or_fresh(&mut self, i: usize, d: Val, a: Val, lock: &[u8], others: &[Val]) -> (u8, bool) {
        let headed = self.target[d.0 as usize].map(|g| (g, self.gmap[g as usize].expect("targets are mapped")));
        let Some((g, h)) = headed.filter(|&(g, h)| {
            !lock.contains(&h) && !others.iter().any(|&o| self.a.loc[o.0 as usize] == Loc::Global(g))
        }) else {
            if let Loc::Reg(r) = self.a.loc[a.0 as usize] {
                if self.is_dead_after(a, i) && !lock.contains(&r) && !others.contains(&a) {
                    self.a.reg_val[r as usize] = None;
                    self.a.loc[a.0 as usize] = Loc::None;
                    return (r, true);
                }
            }
            return (self.alloc(lock), false);
        };
        // Whatever still needs the global's old value moves out first, `a` too unless
        // this op is its last use; the register still holds it then.
        let holds_a = self.a.loc[a.0 as usize] == Loc::Global(g);
        if holds_a && self.is_dead_after(a, i) && !others.contains(&a) {
            self.a.loc[a.0 as usize] = Loc::None;
        }
        let l2 = Lock::of(lock).and(h);
        self.evict_aliases(g as usize, &l2);
        (h, holds_a)
    }

    /// Records `d` in `r`: a value register, or a global's register (which then holds
    /// the global's new value).
    fn define_at(&mut self, d: Val, r: u8) {
        if let Some(g) = self.gmap.iter().position(|&m| m == Some(r)) {
            self.alias(d, g);
            self.a.dirty |= 1 << g;
        } else {
            self.define(d, r);
        }
    }

    /// Host register `h` = value `v`, wherever `v` is.
    fn mov_loc(&mut self, h: u8, v: Val) {
        match self.a.loc[v.0 as usize] {
            Loc::Const(k) => self.mov_imm(h, k),
            Loc::Reg(r) => dynasm!(self.ops ; .arch x64 ; mov Rq(h), Rq(r)),
            Loc::Global(g) => {
                let hg = self.gmap[g as usize].expect("mapped");
                dynasm!(self.ops ; .arch x64 ; mov Rq(h), Rq(hg))
            }
            Loc::Slot(sl) => {
                let o = (sl as usize * 8) as i32;
                dynasm!(self.ops ; .arch x64 ; mov Rq(h), [rsp + o])
            }
            Loc::State(g) => {
                let o = Global::from_index(g as usize).offset();
                dynasm!(self.ops ; .arch x64 ; mov Rq(h), [r14 + o])
            }
            Loc::None => panic!("tcg backend: {v} used before its definition"),
        }
    }

    fn mov_imm(&mut self, r: u8, k: u64) {
        if k == 0 {
            dynasm!(self.ops ; .arch x64 ; xor Rd(r), Rd(r));
        } else if k <= u32::MAX as u64 {
            dynasm!(self.ops ; .arch x64 ; mov Rd(r), k as i32);
        } else if i32::try_from(k as i64).is_ok() {
            dynasm!(self.ops ; .arch x64 ; mov Rq(r), k as i32);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov Rq(r), QWORD k as i64);
        }
    }

    /// Values that alias global `g`'s host register get their own before it changes.
    fn evict_aliases(&mut self, g: usize, lock: &[u8]) {
        for v in std::mem::take(&mut self.a.aliases[g]) {
            if self.a.loc[v.0 as usize] == Loc::Global(g as u8) {
                let h = self.gmap[g].expect("mapped");
                let r = self.alloc(lock);
                dynasm!(self.ops ; .arch x64 ; mov Rq(r), Rq(h));
                self.define(v, r);
            }
        }
    }

    /// Records that `v` lives in global `g`'s register.
    fn alias(&mut self, v: Val, g: usize) {
        self.a.loc[v.0 as usize] = Loc::Global(g as u8);
        self.a.aliases[g].push(v);
    }

    // ---- the state ----

    /// Stores what `s` says is not in the state yet.
    fn store_state(&mut self, s: Sync) {
        for g in 0..Global::COUNT {
            if s.dirty & (1 << g) != 0 {
                let h = self.gmap[g].expect("dirty globals are mapped");
                let o = Global::from_index(g).offset();
                dynasm!(self.ops ; .arch x64 ; mov [r14 + o], Rq(h));
            }
        }
        self.store_ccv(s.ccv);
        if let CcState::Pending(k) = s.cc {
            dynasm!(self.ops ; .arch x64 ; mov DWORD [r14 + off::CC_OP], k as i32);
        }
        self.host_mxcsr(s.mx);
    }

    /// Stores the state and marks it current (on a path every execution takes).
    fn sync_all(&mut self) {
        let s = self.sync_now();
        self.store_state(s);
        self.a.dirty = 0;
        self.a.cc = CcState::Stored;
        self.clear_ccv();
        self.a.mx = false;
    }

    fn store_rip(&mut self, rip: u64) {
        if i32::try_from(rip as i64).is_ok() {
            dynasm!(self.ops ; .arch x64 ; mov QWORD [r14 + off::RIP], rip as i32);
        } else {
            dynasm!(self.ops ; .arch x64 ; mov rdi, QWORD rip as i64 ; mov [r14 + off::RIP], rdi);
        }
    }

    /// Calls helper `f`: `call [rip + disp32]` through the trampoline's table (6
    /// bytes), else through rax.
    fn call_abs(&mut self, f: usize) {
        let here = self.env.base + self.ops.offset().0 + 6;
        let slot = self.env.helpers.all().iter().position(|&h| h == f).map(|i| self.env.stubs.helper_table + 8 * i);
        match slot.and_then(|s| i32::try_from(s as i64 - here as i64).ok()) {
            Some(rel) => {
                self.ops.extend([0xff, 0x15]);
                self.ops.push_i32(rel);
            }
            None => dynasm!(self.ops ; .arch x64 ; mov rax, QWORD f as i64 ; call rax),
        }
    }

    fn exit_raw(&mut self, code: u32) {
        dynasm!(self.ops ; .arch x64 ; mov eax, code as i32);
        self.jmp_abs(self.env.stubs.epilogue);
    }

    /// JMP rel32 to a trampoline stub (the code buffer is far smaller than 2 GiB).
    fn jmp_abs(&mut self, target: usize) {
        let here = self.env.base + self.ops.offset().0 + 5;
        let rel = target as i64 - here as i64;
        assert!(i32::try_from(rel).is_ok(), "code buffer and trampoline out of rel32 reach");
        self.ops.push(0xe9);
        self.ops.push_i32(rel as i32);
    }

    /// Leaves for `target` (state already stored): a patchable jump, or the jump
    /// cache when the target is on another page under paging.
    fn chain_to(&mut self, target: u64) {
        if self.replay || self.env.page.is_some_and(|p| p != target & !0xfff) {
            self.store_rip(target);
            if self.replay {
                self.exit_raw(exit::NEXT);
                return;
            }
            self.jump_cache_const(target);
            return;
        }
        let site = self.ops.offset().0;
        let stub = self.ops.new_dynamic_label();
        // Always the 5-byte rel32 form, so it can be re-aimed at another block.
        dynasm!(self.ops ; .arch x64 ; jmp =>stub);
        let stub_off = self.ops.offset().0;
        dynasm!(self.ops ; .arch x64 ; =>stub);
        self.store_rip(target);
        let site_abs = (self.env.base + site) as i64;
        dynasm!(self.ops ; .arch x64 ; mov rdi, QWORD site_abs ; mov [r14 + off::CHAIN_SITE], rdi);
        self.chain_sites.push((site, stub_off));
        self.exit_raw(exit::CHAIN);
    }

    /// Jumps to the block for the RIP in `r` (already stored) if the jump cache has
    /// it, else to the shared refill stub (which returns to the run loop if it finds
    /// nothing).
    fn jump_cache(&mut self, r: u8) {
        use crate::state::JMP_CACHE_BITS;
        let mask = (1i32 << JMP_CACHE_BITS) - 1;
        // The array of the block's MMU index (see exec.rs's JmpSync).
        let jc = off::jmp_cache_offset(self.env.mmu_idx);
        // r8 = state::jmp_index(target) * 16.
        dynasm!(self.ops ; .arch x64
            ; mov r8, Rq(r)
            ; shr r8, JMP_CACHE_BITS as i8
            ; xor r8, Rq(r)
            ; and r8d, mask
            ; shl r8d, 4
            ; cmp Rq(r), [r14 + r8 + jc]
            ; jne >miss
            ; jmp QWORD [r14 + r8 + jc + 8]
            ; miss:
        );
        self.jmp_abs(self.env.stubs.lookup);
    }

    /// As [`Emit::jump_cache`] for a RIP known now (stored already): its slot is too.
    fn jump_cache_const(&mut self, target: u64) {
        let e = off::jmp_cache_offset(self.env.mmu_idx) + (crate::state::jmp_index(target) * 16) as i32;
        match i32::try_from(target as i64) {
            Ok(t) => dynasm!(self.ops ; .arch x64 ; cmp QWORD [r14 + e], t),
            Err(_) => dynasm!(self.ops ; .arch x64 ; mov rdi, QWORD target as i64 ; cmp [r14 + e], rdi),
        }
        dynasm!(self.ops ; .arch x64
            ; jne >miss
            ; jmp QWORD [r14 + e + 8]
            ; miss:
        );
        self.jmp_abs(self.env.stubs.lookup);
    }

    // ---- operations ----

    fn op(&mut self, i: usize, op: Op) {
        match op {
            Op::Insn { .. } => {}
            Op::Const { d, v } => self.a.loc[d.0 as usize] = Loc::Const(v),
            Op::Get { d, g } => match (self.gmap[g.index()], cc_index(g.index()).and_then(|k| self.a.ccv[k])) {
                (Some(_), _) => self.alias(d, g.index()),
                // A pending flag-record value: the state does not have it yet.
                (None, Some(v)) => {
                    let r = self.alloc(&[]);
                    self.mov_loc(r, v);
                    self.define(d, r);
                }
                // Loaded when first used, from a state slot that holds no other
                // value being tracked.
                (None, None) if cc_index(g.index()).is_none() && self.a.in_state[g.index()].is_none() => {
                    self.a.in_state[g.index()] = Some(d);
                    self.a.loc[d.0 as usize] = Loc::State(g.index() as u8);
                }
                (None, None) => {
                    let r = self.alloc(&[]);
                    let o = g.offset();
                    dynasm!(self.ops ; .arch x64 ; mov Rq(r), [r14 + o]);
                    self.define(d, r);
                }
            },
            Op::Set { g, s } => self.set(i, g, s),
            // A fused address: its accesses compute it (see `fused`).
            Op::Bin { d, .. } if self.fused[d.0 as usize].is_some() || self.scaled[d.0 as usize].is_some() => {}
            Op::Bin { op: b, w, d, a, b: y } => self.bin(i, b, w, d, a, y),
            Op::Un { op: u, w, d, a } => self.un(i, u, w, d, a),
            Op::Setcond { t, d } => {
                self.compare(&t, &[]);
                self.free_dead(i, &op);
                let r = self.alloc(&[]);
                let cc = cc_of(t.c);
                self.setcc(cc, r);
                self.define(d, r);
                return;
            }
            Op::Select { t, d, a, b } => {
                let ra = self.reg(a, &[]);
                let lock = [ra];
                let rd = self.result_from_excl(i, b, &lock, true, &[t.a, t.b, a]);
                let lock = [ra, rd];
                self.compare(&t, &lock);
                // CMOVcc r64, r64: REX.W 0F 40+cc /r.
                let cc = cc_of(t.c);
                self.rex_rr(true, rd, ra);
                self.ops.extend([0x0f, 0x40 | cc, 0xc0 | ((rd & 7) << 3) | (ra & 7)]);
                self.free_dead(i, &op);
                self.define(d, rd);
                return;
            }
            Op::MulOverflow { w, d, a, b } => {
                let ra = self.reg(a, &[]);
                let rb = self.reg(b, &[ra]);
                dynasm!(self.ops ; .arch x64 ; mov rdi, Rq(ra));
                match w {
                    2 => dynasm!(self.ops ; .arch x64 ; imul di, Rw(rb)),
                    4 => dynasm!(self.ops ; .arch x64 ; imul edi, Rd(rb)),
                    _ => dynasm!(self.ops ; .arch x64 ; imul rdi, Rq(rb)),
                }
                self.free_dead(i, &op);
                let r = self.alloc(&[]);
                self.setcc(0x0, r);
                self.define(d, r);
                return;
            }
            Op::Div { rem, w, d, hi, lo, div } => return self.divide(i, rem, w, d, hi, lo, div),
            Op::TrapIf { t, vector } => {
                self.compare(&t, &[]);
                let at = self.ops.new_dynamic_label();
                self.jcc(cc_of(t.c), at);
                self.deferred.push(Deferred::Trap { at, rip: self.rip, vector, sync: self.sync_now() });
            }
            Op::SetCcOp(CcOpSrc::Const(c)) => self.a.cc = CcState::Pending(c.0),
            Op::SetCcOp(CcOpSrc::Val(v)) => {
                let r = self.reg(v, &[]);
                dynasm!(self.ops ; .arch x64 ; mov [r14 + off::CC_OP], Rd(r));
                self.a.cc = CcState::Stored;
            }
            Op::StateCarry { d } => self.state_carry(d),
            Op::GetCcOp { d } => match self.a.cc {
                CcState::Pending(k) => self.a.loc[d.0 as usize] = Loc::Const(u64::from(k)),
                CcState::Stored => {
                    let r = self.alloc(&[]);
                    dynasm!(self.ops ; .arch x64 ; mov Rd(r), [r14 + off::CC_OP]);
                    self.define(d, r);
                }
            },
            Op::Load { w, d, addr } => return self.load(i, w, d, addr, &op),
            Op::VLoad { w, d, addr, align } => return self.vload(i, w, d, addr, align, &op),
            Op::VStore { w, addr, s, align } => return self.vstore(i, w, addr, s, align, &op),
            Op::VBin { op: v, d, a, b, imm } => self.vbin(v, d, a, b, imm),
            Op::VGet { d, s, w, lane } => {
                let r = self.alloc(&[]);
                let o = s.offset() + i32::from(lane) * w as i32;
                match w {
                    1 => dynasm!(self.ops ; .arch x64 ; movzx Rd(r), BYTE [r14 + o]),
                    2 => dynasm!(self.ops ; .arch x64 ; movzx Rd(r), WORD [r14 + o]),
                    4 => dynasm!(self.ops ; .arch x64 ; mov Rd(r), DWORD [r14 + o]),
                    _ => dynasm!(self.ops ; .arch x64 ; mov Rq(r), QWORD [r14 + o]),
                }
                self.define(d, r);
                return;
            }
            Op::VSet { d, s, w, lane, zero } => {
                let r = self.reg(s, &[]);
                let o = d.offset();
                if zero {
                    dynasm!(self.ops ; .arch x64 ; xorps xmm0, xmm0 ; movdqu [r14 + o], xmm0);
                }
                let o = o + i32::from(lane) * w as i32;
                match w {
                    1 => dynasm!(self.ops ; .arch x64 ; mov BYTE [r14 + o], Rb(r)),
                    2 => dynasm!(self.ops ; .arch x64 ; mov WORD [r14 + o], Rw(r)),
                    4 => dynasm!(self.ops ; .arch x64 ; mov DWORD [r14 + o], Rd(r)),
                    _ => dynasm!(self.ops ; .arch x64 ; mov QWORD [r14 + o], Rq(r)),
                }
            }
            Op::VRead { op: v, d, a, b } => {
                let r = self.alloc(&[]);
                self.vread(v, r, a, b);
                self.define(d, r);
                return;
            }
            Op::VWrite { op: VWrite::FromInt { dbl, w }, d, a, s } => {
                let r = self.reg(s, &[]);
                let (oa, od) = (a.offset(), d.offset());
                dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [r14 + oa]);
                self.guest_mxcsr();
                // CVTSI2SS/SD xmm0, r: F3/F2 [REX.W] 0F 2A /r.
                self.sse_rr(if dbl { 0xf2 } else { 0xf3 }, w == 8, 0x2a, 0, r);
                dynasm!(self.ops ; .arch x64 ; movdqu [r14 + od], xmm0);
            }
            Op::Store { w, addr, s } => return self.store(i, w, addr, s, &op),
            Op::Call { helper, d } => {
                self.free_dead(i, &op);
                self.forget_state_values(i);
                self.state_out_for_call();
                dynasm!(self.ops ; .arch x64 ; mov rdi, r14);
                let h = &self.env.helpers;
                self.call_abs(match helper {
                    Helper::Flags => h.flags,
                    Helper::Tsc => h.tsc,
                    Helper::Sti => h.sti,
                });
                dynasm!(self.ops ; .arch x64 ; mov rdi, rax);
                self.slow_path_back();
                let r = self.alloc(&[]);
                dynasm!(self.ops ; .arch x64 ; mov Rq(r), rdi);
                self.define(d, r);
                return;
            }
            Op::Interp { ins } => {
                self.free_dead(i, &op);
                self.forget_state_values(i);
                self.state_out_for_call();
                self.store_rip(self.rip);
                dynasm!(self.ops ; .arch x64 ; mov rdi, r14 ; mov rsi, QWORD ins as i64);
                self.call_abs(self.env.helpers.interp);
                dynasm!(self.ops ; .arch x64 ; mov edi, eax);
                self.slow_path_back_checked();
                // 0: go on; 2: HLT; 1: leave, the state authoritative.
                dynasm!(self.ops ; .arch x64 ; test edi, edi ; jz >go_on ; cmp edi, 2 ; jne >leave);
                self.exit_raw(exit::HALT);
                dynasm!(self.ops ; .arch x64 ; leave:);
                self.exit_raw(exit::INTERP);
                dynasm!(self.ops ; .arch x64 ; go_on:);
                // The helper may have changed any guest register.
                let l = *self.regs_in.get_or_insert_with(|| self.ops.new_dynamic_label());
                dynasm!(self.ops ; .arch x64 ; call =>l);
                return;
            }
            Op::ExitIf { t, rip } => {
                self.compare(&t, &[]);
                let at = self.ops.new_dynamic_label();
                self.jcc(cc_of(t.c), at);
                self.deferred.push(Deferred::SideExit { at, rip, sync: self.sync_now() });
            }
            Op::Loop { t: None } if self.replay => {
                // Replaying after a store onto code: the block may be stale, leave.
                self.sync_all();
                self.store_rip(self.env.block_rip);
                self.exit_raw(exit::NEXT);
            }
            Op::Loop { t } => {
                // The head finds cc_op in the state, and the host's MXCSR.
                self.leave_guest_mxcsr();
                if let CcState::Pending(k) = self.a.cc {
                    dynasm!(self.ops ; .arch x64 ; mov DWORD [r14 + off::CC_OP], k as i32);
                    self.a.cc = CcState::Stored;
                }
                let locs = self.sync_now().ccv;
                self.store_ccv(locs);
                self.clear_ccv();
                let head = self.head;
                match t {
                    Some(t) => {
                        self.compare(&t, &[]);
                        self.jcc(cc_of(t.c), head);
                    }
                    None => dynasm!(self.ops ; .arch x64 ; jmp =>head),
                }
            }
            Op::Exit { rip } => {
                self.sync_all();
                self.chain_to(rip);
            }
            Op::ExitJump { rip } => {
                let r = self.reg(rip, &[]);
                self.sync_all();
                dynasm!(self.ops ; .arch x64 ; mov [r14 + off::RIP], Rq(r));
                if self.replay {
                    self.exit_raw(exit::NEXT);
                } else {
                    self.jump_cache(r);
                }
            }
            Op::ExitToLoop { rip } => {
                self.sync_all();
                self.store_rip(rip);
                self.exit_raw(exit::MODE);
            }
            Op::X87Guard { fcw, top, ftw, rip } => {
                let at = self.ops.new_dynamic_label();
                dynasm!(self.ops ; .arch x64
                    ; cmp WORD [r14 + off::FCW], fcw as i16
                    ; jne =>at
                    ; cmp BYTE [r14 + off::FTW], ftw as i8
                    ; jne =>at
                    ; movzx edi, WORD [r14 + off::FSW]
                    ; and edi, 0x3800
                    ; cmp edi, i32::from(top) << 11
                    ; jne =>at
                );
                // The host FPU computes with the guest's precision and rounding (it
                // masks every exception, as the guest does; nothing else on this
                // thread uses the x87 FPU), and collects the exception flags the
                // operations after the guard raise, from none.
                self.x87_mem(0xd9, 5, off::FCW); // FLDCW
                self.ops.extend([0xdb, 0xe2]); // FNCLEX
                self.deferred.push(Deferred::Step { at, rip, sync: self.sync_now() });
            }
            Op::X87In { f, r, s } => {
                self.x87_io_in(s);
                let (opc, digit) = match f {
                    X87Fmt::F32 => (0xd9, 0),
                    X87Fmt::F64 => (0xdd, 0),
                    X87Fmt::I16 => (0xdf, 0),
                    X87Fmt::I32 => (0xdb, 0),
                    X87Fmt::I64 => (0xdf, 5),
                };
                self.x87_mem(opc, digit, off::X87_IO);
                self.x87_status();
                self.x87_store_pop(r);
                self.x87_merge();
            }
            Op::X87Out { f, trunc, d, r } => {
                self.x87_load(r);
                let (opc, digit) = match (f, trunc) {
                    (X87Fmt::F32, _) => (0xd9, 3),
                    (X87Fmt::F64, _) => (0xdd, 3),
                    (X87Fmt::I16, false) => (0xdf, 3),
                    (X87Fmt::I32, false) => (0xdb, 3),
                    (X87Fmt::I64, false) => (0xdf, 7),
                    (X87Fmt::I16, true) => (0xdf, 1),
                    (X87Fmt::I32, true) => (0xdb, 1),
                    (X87Fmt::I64, true) => (0xdd, 1),
                };
                self.x87_mem(opc, digit, off::X87_IO);
                self.x87_status();
                self.x87_merge();
                let rd = self.alloc(&[]);
                match f.bytes() {
                    2 => dynasm!(self.ops ; .arch x64 ; movzx Rd(rd), WORD [r14 + off::X87_IO]),
                    4 => dynasm!(self.ops ; .arch x64 ; mov Rd(rd), DWORD [r14 + off::X87_IO]),
                    _ => dynasm!(self.ops ; .arch x64 ; mov Rq(rd), QWORD [r14 + off::X87_IO]),
                }
                self.define(d, rd);
                return;
            }
            Op::X87SetRaw { r, lo, hi } => {
                let rl = self.reg(lo, &[]);
                let rh = self.reg(hi, &[rl]);
                let o = off::x87(r);
                dynasm!(self.ops ; .arch x64
                    ; mov [r14 + o], Rq(rl)
                    ; mov [r14 + o + 8], Rw(rh)
                    ; mov DWORD [r14 + o + 10], 0
                    ; mov WORD [r14 + o + 14], 0
                );
            }
            Op::X87Bin { op, r, a, b } => {
                // ST(0) = a, ST(1) = b; then FADD/FMUL/FSUB/FDIV ST(0), ST(1).
                self.x87_load(b);
                self.x87_load(a);
                let modrm = match op {
                    FOp::Add => 0xc1,
                    FOp::Mul => 0xc9,
                    FOp::Sub => 0xe1,
                    _ => 0xf1,
                };
                self.ops.extend([0xd8, modrm]);
                self.x87_status();
                self.x87_store_pop(r);
                self.ops.extend([0xdd, 0xd8]); // FSTP ST(0): b off the host stack
                self.x87_merge();
            }
            Op::X87BinMem { op, rev, f, r, a, s } => {
                self.x87_io_in(s);
                self.x87_load(a);
                let opc = match f {
                    X87Fmt::F32 => 0xd8,
                    X87Fmt::F64 => 0xdc,
                    X87Fmt::I32 => 0xda,
                    _ => 0xde,
                };
                let digit = match (op, rev) {
                    (FOp::Add, _) => 0,
                    (FOp::Mul, _) => 1,
                    (FOp::Sub, false) => 4,
                    (FOp::Sub, true) => 5,
                    (_, false) => 6,
                    (_, true) => 7,
                };
                self.x87_mem(opc, digit, off::X87_IO);
                self.x87_status();
                self.x87_store_pop(r);
                self.x87_merge();
            }
            Op::X87Un { op, r, a } => {
                let (oa, or) = (off::x87(a), off::x87(r));
                match op {
                    X87Un::Mov | X87Un::Chs | X87Un::Abs => {
                        if r != a {
                            dynasm!(self.ops ; .arch x64
                                ; mov rdi, [r14 + oa]
                                ; mov [r14 + or], rdi
                                ; mov rdi, [r14 + oa + 8]
                                ; mov [r14 + or + 8], rdi
                            );
                        }
                        // The sign is bit 7 of the tenth byte.
                        match op {
                            X87Un::Chs => dynasm!(self.ops ; .arch x64 ; xor BYTE [r14 + or + 9], 0x80u8 as i8),
                            X87Un::Abs => dynasm!(self.ops ; .arch x64 ; and BYTE [r14 + or + 9], 0x7f),
                            _ => {}
                        }
                    }
                    X87Un::Sqrt => {
                        self.x87_load(a);
                        self.ops.extend([0xd9, 0xfa]); // FSQRT
                        self.x87_status();
                        self.x87_store_pop(r);
                        self.x87_merge();
                    }
                }
            }
            Op::X87Cmp { d, a, b, signal } => {
                self.x87_load(b);
                self.x87_load(a);
                // FCOMI / FUCOMI ST(0), ST(1).
                self.ops.extend([0xdb, if signal { 0xf1 } else { 0xe9 }]);
                let rd = self.alloc(&[]);
                // Nothing after the compare and before this touches the host flags.
                dynasm!(self.ops ; .arch x64 ; pushfq ; pop Rq(rd) ; and Rd(rd), 0x45);
                self.x87_status();
                self.ops.extend([0xdd, 0xd8, 0xdd, 0xd8]); // FSTP ST(0), twice
                                                           // The CPUs this was checked on leave C1 alone.
                self.x87_merge_flags();
                self.define(d, rd);
                return;
            }
            Op::X87Stack { top, ftw, clear_c1 } => {
                let keep = !(0x3800u16 | if clear_c1 { 0x200 } else { 0 });
                dynasm!(self.ops ; .arch x64
                    ; and WORD [r14 + off::FSW], keep as i16
                    ; mov BYTE [r14 + off::FTW], ftw as i8
                );
                if top != 0 {
                    dynasm!(self.ops ; .arch x64 ; or WORD [r14 + off::FSW], (u16::from(top) << 11) as i16);
                }
            }
        }
        self.free_dead(i, &op);
    }

    // ---- x87 (on the host FPU, which holds nothing between operations) ----

    /// An x87 instruction with the memory operand `[r14 + o]`: `opc /digit`.
    fn x87_mem(&mut self, opc: u8, digit: u8, o: i32) {
        // REX.B (r14), ModRM mod 10 (disp32), rm 110 (r14 & 7).
        self.ops.extend([0x41, opc, 0x80 | (digit << 3) | 6]);
        self.ops.push_i32(o);
    }

    /// FLD of x87 register `r` (m80) onto the host's stack.
    fn x87_load(&mut self, r: u8) {
        self.x87_mem(0xdb, 5, off::x87(r));
    }

    /// FSTP of the host's ST(0) into x87 register `r` (m80).
    fn x87_store_pop(&mut self, r: u8) {
        self.x87_mem(0xdb, 7, off::x87(r));
    }

    /// Value `s` into the state's scratch, where the host FPU reads memory operands.
    fn x87_io_in(&mut self, s: Val) {
        let rs = self.reg(s, &[]);
        dynasm!(self.ops ; .arch x64 ; mov [r14 + off::X87_IO], Rq(rs));
    }

    /// FNSTSW into the state's scratch: the host's exception flags since the guard, and
    /// C1 of the operation just done.
    fn x87_status(&mut self) {
        self.x87_mem(0xdd, 7, off::X87_SW);
    }

    /// ORs the exception flags [`Emit::x87_status`] saved into the guest's FSW and sets
    /// its C1 to the host's.
    fn x87_merge(&mut self) {
        dynasm!(self.ops ; .arch x64
            ; movzx edi, WORD [r14 + off::X87_SW]
            ; and edi, 0x23f
            ; and WORD [r14 + off::FSW], !0x200u16 as i16
            ; or WORD [r14 + off::FSW], di
        );
    }

    /// As [`Emit::x87_merge`], C1 left as it was.
    fn x87_merge_flags(&mut self) {
        dynasm!(self.ops ; .arch x64
            ; movzx edi, WORD [r14 + off::X87_SW]
            ; and edi, 0x3f
            ; or WORD [r14 + off::FSW], di
        );
    }

    // ---- vectors (on host xmm0 and xmm1, from and to the state) ----

    /// `[prefix] [REX] 0F opc` with a register ModRM (reg field `reg`, rm field `rm`).
    fn sse_rr(&mut self, prefix: u8, w: bool, opc: u8, reg: u8, rm: u8) {
        if prefix != 0 {
            self.ops.push(prefix);
        }
        self.rex_rr(w, reg, rm);
        self.ops.extend([0x0f, opc, 0xc0 | ((reg & 7) << 3) | (rm & 7)]);
    }

    /// Before a floating-point op: the guest's MXCSR (which masks every exception, see
    /// the block mode) in the host's, if not there yet (see `Alloc::mx`).
    fn guest_mxcsr(&mut self) {
        if !self.a.mx {
            dynasm!(self.ops ; .arch x64 ; ldmxcsr [r14 + off::MXCSR]);
            self.a.mx = true;
        }
    }

    /// Keeps the flags the guest's operations raised and restores the host's MXCSR,
    /// where the guest's is loaded (`mx`: as of the code this leads away from).
    fn host_mxcsr(&mut self, mx: bool) {
        if mx {
            dynasm!(self.ops ; .arch x64 ; stmxcsr [r14 + off::MXCSR] ; ldmxcsr [r14 + off::HOST_MXCSR]);
        }
    }

    /// Back from a slow path's helper to code that had the guest's MXCSR loaded.
    fn reload_guest_mxcsr(&mut self, mx: bool) {
        if mx {
            dynasm!(self.ops ; .arch x64 ; ldmxcsr [r14 + off::MXCSR]);
        }
    }

    /// Puts the host's MXCSR back on the main path.
    fn leave_guest_mxcsr(&mut self) {
        self.host_mxcsr(self.a.mx);
        self.a.mx = false;
    }

    fn vbin(&mut self, op: VBin, d: VReg, a: VReg, b: VReg, imm: u8) {
        let (oa, ob, od) = (a.offset(), b.offset(), d.offset());
        if op == VBin::Mov {
            dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [r14 + ob] ; movdqu [r14 + od], xmm0);
            return;
        }
        let (prefix, opc, group, has_imm) = sse_encoding(op);
        dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [r14 + oa]);
        if group.is_none() {
            dynasm!(self.ops ; .arch x64 ; movdqu xmm1, [r14 + ob]);
        }
        if op.is_float() {
            self.guest_mxcsr();
        }
        match group {
            Some(r) => self.sse_rr(prefix, false, opc, r, 0),
            None => self.sse_rr(prefix, false, opc, 0, 1),
        }
        if has_imm {
            self.ops.push(imm);
        }
        dynasm!(self.ops ; .arch x64 ; movdqu [r14 + od], xmm0);
    }

    fn vread(&mut self, op: VRead, r: u8, a: VReg, b: VReg) {
        let (oa, ob) = (a.offset(), b.offset());
        dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [r14 + oa]);
        match op {
            // PMOVMSKB / MOVMSKPS / MOVMSKPD r32, xmm0.
            VRead::MskB => self.sse_rr(0x66, false, 0xd7, r, 0),
            VRead::MskPs => self.sse_rr(0, false, 0x50, r, 0),
            VRead::MskPd => self.sse_rr(0x66, false, 0x50, r, 0),
            VRead::ToInt { dbl, w, trunc } => {
                self.guest_mxcsr();
                // CVT(T)SS2SI / CVT(T)SD2SI r, xmm0: F3/F2 [REX.W] 0F 2C/2D /r.
                self.sse_rr(if dbl { 0xf2 } else { 0xf3 }, w == 8, if trunc { 0x2c } else { 0x2d }, r, 0);
            }
            VRead::Comi { dbl, signal } => {
                dynasm!(self.ops ; .arch x64 ; movdqu xmm1, [r14 + ob]);
                self.guest_mxcsr();
                // (U)COMISS / (U)COMISD xmm0, xmm1: [66] 0F 2E/2F /r.
                self.sse_rr(if dbl { 0x66 } else { 0 }, false, if signal { 0x2f } else { 0x2e }, 0, 1);
                // Neither MXCSR access touches the host flags.
                dynasm!(self.ops ; .arch x64 ; pushfq ; pop Rq(r) ; and Rd(r), 0x45);
            }
        }
    }

    /// A vector load: the probe, then the vector from memory into the state.
    fn vload(&mut self, i: usize, w: Width, d: VReg, addr: Val, align: bool, op: &Op) {
        let k = self.konst(addr);
        let ra = self.reg(addr, &[]);
        let sync = self.sync_now();
        self.free_dead(i, op);
        let miss = self.ops.new_dynamic_label();
        let resume = self.ops.new_dynamic_label();
        if align && w == 16 {
            dynasm!(self.ops ; .arch x64 ; test Rb(ra), 15 ; jnz =>miss);
        }
        self.probe(ra, k, w, entry_off::READ, miss);
        match w {
            16 => dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [Rq(ra) + r8]),
            8 => dynasm!(self.ops ; .arch x64 ; movq xmm0, QWORD [Rq(ra) + r8]),
            4 => dynasm!(self.ops ; .arch x64 ; movd xmm0, DWORD [Rq(ra) + r8]),
            2 => dynasm!(self.ops ; .arch x64 ; movzx ecx, WORD [Rq(ra) + r8] ; movd xmm0, ecx),
            _ => dynasm!(self.ops ; .arch x64 ; movzx ecx, BYTE [Rq(ra) + r8] ; movd xmm0, ecx),
        }
        let od = d.offset();
        dynasm!(self.ops ; .arch x64 ; movdqu [r14 + od], xmm0 ; =>resume);
        let d = LoadDst::Vec(od, align);
        self.deferred.push(Deferred::Load { at: miss, resume, d, w, addr: ra, disp: 0, rip: self.rip, sync });
    }

    fn vstore(&mut self, i: usize, w: Width, addr: Val, s: VReg, align: bool, op: &Op) {
        let k = self.konst(addr);
        let ra = self.reg(addr, &[]);
        let miss = self.ops.new_dynamic_label();
        let resume = self.ops.new_dynamic_label();
        if align && w == 16 {
            dynasm!(self.ops ; .arch x64 ; test Rb(ra), 15 ; jnz =>miss);
        }
        self.probe(ra, k, w, entry_off::WRITE, miss);
        let os = s.offset();
        match w {
            16 => dynasm!(self.ops ; .arch x64 ; movdqu xmm0, [r14 + os] ; movdqu [Rq(ra) + r8], xmm0),
            8 => dynasm!(self.ops ; .arch x64 ; mov rcx, [r14 + os] ; mov [Rq(ra) + r8], rcx),
            4 => dynasm!(self.ops ; .arch x64 ; mov ecx, [r14 + os] ; mov [Rq(ra) + r8], ecx),
            2 => dynasm!(self.ops ; .arch x64 ; mov cx, [r14 + os] ; mov [Rq(ra) + r8], cx),
            _ => dynasm!(self.ops ; .arch x64 ; mov cl, [r14 + os] ; mov [Rq(ra) + r8], cl),
        }
        dynasm!(self.ops ; .arch x64 ; =>resume);
        self.defer_store(i, op, miss, resume, StoreSrc::Vec(os, align), w, (ra, 0));
    }

    /// The slow path of store op `i` (emitted at the block's end): what the state must
    /// hold, and what the rest of the instruction starts from if the store hit code.
    #[allow(clippy::too_many_arguments)]
    fn defer_store(
        &mut self,
        i: usize,
        op: &Op,
        at: DynamicLabel,
        resume: DynamicLabel,
        src: StoreSrc,
        w: Width,
        (addr, disp): (u8, i32),
    ) {
        let sync = self.sync_now();
        self.free_dead(i, op);
        let tail = i + 1..self.insn_end;
        let after = self.snapshot(tail.clone());
        self.deferred.push(Deferred::Store {
            at,
            resume,
            src,
            w,
            addr,
            disp,
            rip: self.rip,
            next: self.next,
            sync,
            after,
            tail,
        });
    }

    /// What replaying the ops `tail` out of line starts from.
    fn snapshot(&self, tail: std::ops::Range<usize>) -> Box<Snapshot> {
        let mut locs = Vec::new();
        for op in &self.block.ops[tail] {
            op.for_each_use(|v| {
                locs.push((v, self.a.loc[v.0 as usize]));
                let base = self.fused[v.0 as usize].map(|f| f.0);
                let index = self.scaled[v.0 as usize].map(|f| f.0);
                for b in base.into_iter().chain(index) {
                    locs.push((b, self.a.loc[b.0 as usize]));
                }
            });
        }
        for v in self.a.ccv.into_iter().flatten() {
            locs.push((v, self.a.loc[v.0 as usize]));
        }
        Box::new(Snapshot {
            reg_val: self.a.reg_val,
            slot_val: self.a.slot_val,
            dirty: self.a.dirty,
            cc: self.a.cc,
            ccv: self.a.ccv,
            mx: self.a.mx,
            in_state: self.a.in_state,
            locs,
        })
    }

    fn evict_all_aliases(&mut self) {
        for g in 0..Global::COUNT {
            if self.gmap[g].is_some() {
                self.evict_aliases(g, &[]);
            }
        }
    }

    fn set(&mut self, i: usize, g: Global, s: Val) {
        if let Some(k) = cc_index(g.index()).filter(|_| self.pending_cc) {
            if let Some(old) = self.a.ccv[k].replace(s) {
                if old != s && self.is_dead_after(old, i) && !self.a.ccv.contains(&Some(old)) {
                    self.free_dead_val(old);
                }
            }
            return;
        }
        match self.gmap[g.index()] {
            Some(h) => {
                if self.a.loc[s.0 as usize] == Loc::Global(g.index() as u8) {
                    return; // Set g = Get g, or a result computed in place
                }
                self.evict_aliases(g.index(), &[h]);
                self.mov_loc(h, s);
                self.a.dirty |= 1 << g.index();
            }
            None => {
                let gi = g.index();
                if self.a.loc[s.0 as usize] == Loc::State(gi as u8) {
                    return; // Set g = Get g
                }
                // The value the slot held moves to a register if still needed.
                if let Some(old) = self.a.in_state[gi].take() {
                    if self.a.loc[old.0 as usize] == Loc::State(gi as u8) && !self.is_dead_after(old, i) {
                        self.reg(old, &[]);
                    }
                }
                let o = g.offset();
                match self.operand(s, &[]) {
                    Operand::Imm(k) => dynasm!(self.ops ; .arch x64 ; mov QWORD [r14 + o], k),
                    Operand::Reg(r) => dynasm!(self.ops ; .arch x64 ; mov [r14 + o], Rq(r)),
                }
                if cc_index(gi).is_none() {
                    self.a.in_state[gi] = Some(s);
                }
            }
        }
        let _ = i;
    }

    /// `lea dst, [base + index * scale + disp]` (no base: `[index * scale + disp32]`),
    /// encoded here: dynasm takes no register operand as a scaled index.
    fn lea_scaled(&mut self, w64: bool, dst: u8, base: Option<u8>, index: u8, scale: u8, disp: i32) {
        debug_assert!(index != 4, "RSP cannot be an index");
        let ss = scale.trailing_zeros() as u8;
        let b = base.unwrap_or(5);
        let rex =
            0x40 | u8::from(w64) << 3 | (dst >> 3) << 2 | (index >> 3) << 1 | (u8::from(base.is_some()) * (b >> 3));
        if rex != 0x40 {
            self.ops.push(rex);
        }
        self.ops.push(0x8d);
        let sib = ss << 6 | (index & 7) << 3 | (b & 7);
        match base {
            None => {
                self.ops.extend([(dst & 7) << 3 | 4, sib]);
                self.ops.push_i32(disp);
            }
            // RBP and R13 as a base need a displacement byte.
            Some(_) if disp == 0 && b & 7 != 5 => self.ops.extend([(dst & 7) << 3 | 4, sib]),
            Some(_) => match i8::try_from(disp) {
                Ok(d8) => self.ops.extend([0x40 | (dst & 7) << 3 | 4, sib, d8 as u8]),
                Err(_) => {
                    self.ops.extend([0x80 | (dst & 7) << 3 | 4, sib]);
                    self.ops.push_i32(disp);
                }
            },
        }
    }

    /// REX prefix for a register-register instruction (reg field `r`, rm field `b`).
    fn rex_rr(&mut self, w: bool, r: u8, b: u8) {
        let rex = 0x40 | (u8::from(w) << 3) | ((r >> 3) << 2) | (b >> 3);
        if rex != 0x40 {
            self.ops.push(rex);
        }
    }

    /// host `cmp`/`test` of a test's operands, leaving the condition in host flags.
    fn compare(&mut self, t: &Test, lock: &[u8]) {
        let zero_b = matches!(self.a.loc[t.b.0 as usize], Loc::Const(0));
        let ra = self.reg(t.a, lock);
        if zero_b && matches!(t.c, Cond::Eq | Cond::Ne | Cond::Lt | Cond::Ge | Cond::Le | Cond::Gt) {
            match t.w {
                1 => dynasm!(self.ops ; .arch x64 ; test Rb(ra), Rb(ra)),
                2 => dynasm!(self.ops ; .arch x64 ; test Rw(ra), Rw(ra)),
                4 => dynasm!(self.ops ; .arch x64 ; test Rd(ra), Rd(ra)),
                _ => dynasm!(self.ops ; .arch x64 ; test Rq(ra), Rq(ra)),
            }
            return;
        }
        if let Loc::State(g) = self.a.loc[t.b.0 as usize] {
            let o = Global::from_index(g as usize).offset();
            match t.w {
                1 => dynasm!(self.ops ; .arch x64 ; cmp Rb(ra), BYTE [r14 + o]),
                2 => dynasm!(self.ops ; .arch x64 ; cmp Rw(ra), WORD [r14 + o]),
                4 => dynasm!(self.ops ; .arch x64 ; cmp Rd(ra), DWORD [r14 + o]),
                _ => dynasm!(self.ops ; .arch x64 ; cmp Rq(ra), QWORD [r14 + o]),
            }
            return;
        }
        let l2 = Lock::of(lock).and(ra);
        match self.operand(t.b, &l2) {
            Operand::Imm(k) => match t.w {
                1 => dynasm!(self.ops ; .arch x64 ; cmp Rb(ra), k as i8),
                2 => dynasm!(self.ops ; .arch x64 ; cmp Rw(ra), k as i16),
                4 => dynasm!(self.ops ; .arch x64 ; cmp Rd(ra), k),
                _ => dynasm!(self.ops ; .arch x64 ; cmp Rq(ra), k),
            },
            Operand::Reg(rb) => match t.w {
                1 => dynasm!(self.ops ; .arch x64 ; cmp Rb(ra), Rb(rb)),
                2 => dynasm!(self.ops ; .arch x64 ; cmp Rw(ra), Rw(rb)),
                4 => dynasm!(self.ops ; .arch x64 ; cmp Rd(ra), Rd(rb)),
                _ => dynasm!(self.ops ; .arch x64 ; cmp Rq(ra), Rq(rb)),
            },
        }
    }

    /// r = host condition `cc` ? 1 : 0.
    fn setcc(&mut self, cc: u8, r: u8) {
        // SETcc r/m8: 0F 90+cc /0, with a REX prefix so SPL..DIL and R8B.. are plain.
        self.ops.push(0x40 | (r >> 3));
        self.ops.extend([0x0f, 0x90 | cc, 0xc0 | (r & 7)]);
        dynasm!(self.ops ; .arch x64 ; movzx Rd(r), Rb(r));
    }

    /// Jcc rel32 to `l` (the usual direction, not taken, falls through).
    fn jcc(&mut self, cc: u8, l: DynamicLabel) {
        match cc {
            0x2 => dynasm!(self.ops ; .arch x64 ; jb =>l),
            0x3 => dynasm!(self.ops ; .arch x64 ; jae =>l),
            0x4 => dynasm!(self.ops ; .arch x64 ; je =>l),
            0x5 => dynasm!(self.ops ; .arch x64 ; jne =>l),
            0x6 => dynasm!(self.ops ; .arch x64 ; jbe =>l),
            0x7 => dynasm!(self.ops ; .arch x64 ; ja =>l),
            0xc => dynasm!(self.ops ; .arch x64 ; jl =>l),
            0xd => dynasm!(self.ops ; .arch x64 ; jge =>l),
            0xe => dynasm!(self.ops ; .arch x64 ; jle =>l),
            0xf => dynasm!(self.ops ; .arch x64 ; jg =>l),
            _ => unreachable!("condition code {cc:#x} is not one cc_of makes"),
        }
    }

    /// Zero-extends the low `w` bytes of r in place (after a 32-bit operation).
    fn narrow(&mut self, r: u8, w: Width) {
        match w {
            1 => dynasm!(self.ops ; .arch x64 ; movzx Rd(r), Rb(r)),
            2 => dynasm!(self.ops ; .arch x64 ; movzx Rd(r), Rw(r)),
            _ => {}
        }
    }

    fn bin(&mut self, i: usize, op: Bin, w: Width, d: Val, a: Val, b: Val) {
        let full = w == 8;
        match op {
            Bin::MulHu | Bin::MulHs => self.mul_high(i, op == Bin::MulHs, w, d, a, b),
            Bin::Shl | Bin::Shr | Bin::Sar | Bin::Rol | Bin::Ror => {
                let count = match self.a.loc[b.0 as usize] {
                    Loc::Const(k) => Some((k & if full { 63 } else { 31 }) as i8),
                    _ => None,
                };
                if count.is_none() {
                    let rb = self.reg(b, &[]);
                    dynasm!(self.ops ; .arch x64 ; mov ecx, Rd(rb));
                }
                let rd = self.dest(i, d, a, &[], &[b]);
                macro_rules! sh {
                    ($ins:ident) => {
                        match (w, count) {
                            (1, Some(n)) => dynasm!(self.ops ; .arch x64 ; $ins Rb(rd), n),
                            (2, Some(n)) => dynasm!(self.ops ; .arch x64 ; $ins Rw(rd), n),
                            (4, Some(n)) => dynasm!(self.ops ; .arch x64 ; $ins Rd(rd), n),
                            (_, Some(n)) => dynasm!(self.ops ; .arch x64 ; $ins Rq(rd), n),
                            (1, None) => dynasm!(self.ops ; .arch x64 ; $ins Rb(rd), cl),
                            (2, None) => dynasm!(self.ops ; .arch x64 ; $ins Rw(rd), cl),
                            (4, None) => dynasm!(self.ops ; .arch x64 ; $ins Rd(rd), cl),
                            (_, None) => dynasm!(self.ops ; .arch x64 ; $ins Rq(rd), cl),
                        }
                    };
                }
                // A constant count of 0 leaves the value (zero-extended).
                if count != Some(0) {
                    match op {
                        Bin::Shl => sh!(shl),
                        Bin::Shr => sh!(shr),
                        Bin::Sar => sh!(sar),
                        Bin::Rol => sh!(rol),
                        _ => sh!(ror),
                    }
                }
                match w {
                    1 | 2 => self.narrow(rd, w),
                    // A zero count may leave the upper half: the IR wants it clear.
                    4 if count.is_none_or(|n| n == 0) => dynasm!(self.ops ; .arch x64 ; mov Rd(rd), Rd(rd)),
                    _ => {}
                }
                self.free_dead(i, &Op::Bin { op, w, d, a, b });
                self.define_at(d, rd);
            }
            Bin::Add if self.scaled[a.0 as usize].is_some() || self.scaled[b.0 as usize].is_some() => {
                self.add_scaled(i, w, d, a, b)
            }
            _ => {
                // Commutative operations take as the destination the operand already
                // in the register the result is headed for, else the dying register.
                let commutes = matches!(op, Bin::Add | Bin::And | Bin::Or | Bin::Xor | Bin::Mul);
                let headed = self.target[d.0 as usize].map(Loc::Global);
                let swap = commutes
                    && if headed.is_some_and(|t| self.a.loc[a.0 as usize] == t || self.a.loc[b.0 as usize] == t) {
                        self.a.loc[b.0 as usize] == headed.unwrap()
                    } else {
                        let (la, lb) = (self.a.loc[a.0 as usize], self.a.loc[b.0 as usize]);
                        (!matches!(la, Loc::Reg(_)) && matches!(lb, Loc::Reg(_)) && self.is_dead_after(b, i))
                            // The state's slot as the memory operand.
                            || (matches!(la, Loc::State(_)) && !matches!(lb, Loc::State(_) | Loc::Const(_)))
                    };
                let (a, b) = if swap { (b, a) } else { (a, b) };
                // An operand only in the state's slot is read from there.
                if let Loc::State(g) = self.a.loc[b.0 as usize] {
                    if op != Bin::Mul && a != b {
                        let o = Global::from_index(g as usize).offset();
                        let rd = self.dest(i, d, a, &[], &[b]);
                        macro_rules! alu_mem {
                            ($ins:ident) => {
                                if full {
                                    dynasm!(self.ops ; .arch x64 ; $ins Rq(rd), QWORD [r14 + o])
                                } else {
                                    dynasm!(self.ops ; .arch x64 ; $ins Rd(rd), DWORD [r14 + o])
                                }
                            };
                        }
                        match op {
                            Bin::Add => alu_mem!(add),
                            Bin::Sub => alu_mem!(sub),
                            Bin::And => alu_mem!(and),
                            Bin::Or => alu_mem!(or),
                            _ => alu_mem!(xor),
                        }
                        if !full {
                            self.narrow(rd, w);
                        }
                        self.free_dead(i, &Op::Bin { op, w, d, a, b });
                        self.define_at(d, rd);
                        return;
                    }
                }
                let rb = if op == Bin::Mul { Operand::Reg(self.reg(b, &[])) } else { self.operand(b, &[]) };
                let lock = match rb {
                    Operand::Reg(r) => Lock::of(&[r]),
                    _ => Lock::of(&[]),
                };
                let same = a == b;
                // An addition of a constant into another register is one LEA.
                let lea = match (op, rb) {
                    (Bin::Add, Operand::Imm(k)) if w >= 4 && !same => Some(k),
                    (Bin::Sub, Operand::Imm(k)) if w >= 4 && !same && k != i32::MIN => Some(-k),
                    _ => None,
                };
                if let Some(k) = lea {
                    let (rd, holds_a) = self.dest_or_fresh(i, d, a, &lock, &[b]);
                    if holds_a {
                        match (full, op) {
                            (true, Bin::Add) => dynasm!(self.ops ; .arch x64 ; add Rq(rd), k),
                            (false, Bin::Add) => dynasm!(self.ops ; .arch x64 ; add Rd(rd), k),
                            (true, _) => dynasm!(self.ops ; .arch x64 ; sub Rq(rd), -k),
                            (false, _) => dynasm!(self.ops ; .arch x64 ; sub Rd(rd), -k),
                        }
                    } else {
                        let ra = self.reg(a, &[rd]);
                        if full {
                            dynasm!(self.ops ; .arch x64 ; lea Rq(rd), [Rq(ra) + k]);
                        } else {
                            dynasm!(self.ops ; .arch x64 ; lea Rd(rd), [Rq(ra) + k]);
                        }
                    }
                    self.free_dead(i, &Op::Bin { op, w, d, a, b });
                    self.define_at(d, rd);
                    return;
                }
                let rd = self.dest(i, d, a, &lock, &[b]);
                let rb = if same { Operand::Reg(rd) } else { rb };
                macro_rules! alu {
                    ($ins:ident) => {
                        match (full, rb) {
                            (true, Operand::Reg(s)) => dynasm!(self.ops ; .arch x64 ; $ins Rq(rd), Rq(s)),
                            (false, Operand::Reg(s)) => dynasm!(self.ops ; .arch x64 ; $ins Rd(rd), Rd(s)),
                            (true, Operand::Imm(k)) => dynasm!(self.ops ; .arch x64 ; $ins Rq(rd), k),
                            (false, Operand::Imm(k)) => dynasm!(self.ops ; .arch x64 ; $ins Rd(rd), k),
                        }
                    };
                }
                match op {
                    Bin::Add => alu!(add),
                    Bin::Sub => alu!(sub),
                    Bin::And => alu!(and),
                    Bin::Or => alu!(or),
                    Bin::Xor => alu!(xor),
                    _ => match (full, rb) {
                        (true, Operand::Reg(s)) => dynasm!(self.ops ; .arch x64 ; imul Rq(rd), Rq(s)),
                        (false, Operand::Reg(s)) => dynasm!(self.ops ; .arch x64 ; imul Rd(rd), Rd(s)),
                        _ => unreachable!("MUL takes a register"),
                    },
                }
                if !full {
                    self.narrow(rd, w);
                }
                self.free_dead(i, &Op::Bin { op, w, d, a, b });
                self.define_at(d, rd);
            }
        }
    }

    /// d = a + b where one is a shifted index (see `scaled`): one LEA.
    fn add_scaled(&mut self, i: usize, w: Width, d: Val, a: Val, b: Val) {
        let (s, other) = if self.scaled[a.0 as usize].is_some() { (a, b) } else { (b, a) };
        let (x, scale) = self.scaled[s.0 as usize].expect("a scaled operand");
        let rx = self.reg(x, &[]);
        let imm = match self.a.loc[other.0 as usize] {
            Loc::Const(k) => i32::try_from(k as i64).ok(),
            _ => None,
        };
        let ro = match imm {
            Some(_) => None,
            None => Some(self.reg(other, &[rx])),
        };
        let lock: Vec<u8> = std::iter::once(rx).chain(ro).collect();
        let (rd, _) = self.dest_or_fresh(i, d, other, &lock, &[x]);
        // The index and the other operand may have moved out of the destination.
        let rx = self.reg(x, &[rd]);
        let ro = ro.map(|_| self.reg(other, &[rd, rx]));
        self.lea_scaled(w == 8, rd, ro, rx, scale, imm.unwrap_or(0));
        self.free_dead(i, &Op::Bin { op: Bin::Add, w, d, a, b });
        self.define_at(d, rd);
    }

    fn un(&mut self, i: usize, op: Un, w: Width, d: Val, a: Val) {
        let rd = match op {
            Un::Parity => {
                let ra = self.reg(a, &[]);
                dynasm!(self.ops ; .arch x64 ; test Rb(ra), Rb(ra));
                self.free_dead(i, &Op::Un { op, w, d, a });
                let r = self.alloc(&[]);
                self.setcc(0xa, r);
                self.define(d, r);
                return;
            }
            // An extension reads its source where it is: one instruction.
            Un::Zext | Un::Sext if matches!(self.a.loc[a.0 as usize], Loc::Reg(_) | Loc::Global(_) | Loc::State(_)) => {
                let src = self.a.loc[a.0 as usize];
                let (rd, holds_a) = self.dest_or_fresh(i, d, a, &[], &[]);
                let ra = match src {
                    _ if holds_a => Some(rd),
                    Loc::State(_) => None,
                    _ => Some(self.reg(a, &[rd])),
                };
                let o = match src {
                    Loc::State(g) => Global::from_index(g as usize).offset(),
                    _ => 0,
                };
                match (op, w, ra) {
                    (Un::Zext, 1, Some(r)) => dynasm!(self.ops ; .arch x64 ; movzx Rd(rd), Rb(r)),
                    (Un::Zext, 2, Some(r)) => dynasm!(self.ops ; .arch x64 ; movzx Rd(rd), Rw(r)),
                    (Un::Zext, 4, Some(r)) => dynasm!(self.ops ; .arch x64 ; mov Rd(rd), Rd(r)),
                    (Un::Sext, 1, Some(r)) => dynasm!(self.ops ; .arch x64 ; movsx Rq(rd), Rb(r)),
                    (Un::Sext, 2, Some(r)) => dynasm!(self.ops ; .arch x64 ; movsx Rq(rd), Rw(r)),
                    (Un::Sext, 4, Some(r)) => dynasm!(self.ops ; .arch x64 ; movsxd Rq(rd), Rd(r)),
                    (Un::Zext, 1, None) => dynasm!(self.ops ; .arch x64 ; movzx Rd(rd), BYTE [r14 + o]),
                    (Un::Zext, 2, None) => dynasm!(self.ops ; .arch x64 ; movzx Rd(rd), WORD [r14 + o]),
                    (Un::Zext, 4, None) => dynasm!(self.ops ; .arch x64 ; mov Rd(rd), DWORD [r14 + o]),
                    (Un::Sext, 1, None) => dynasm!(self.ops ; .arch x64 ; movsx Rq(rd), BYTE [r14 + o]),
                    (Un::Sext, 2, None) => dynasm!(self.ops ; .arch x64 ; movsx Rq(rd), WORD [r14 + o]),
                    (Un::Sext, 4, None) => dynasm!(self.ops ; .arch x64 ; movsxd Rq(rd), DWORD [r14 + o]),
                    // Eight bytes: the value as it is.
                    (_, _, Some(r)) => {
                        if r != rd {
                            dynasm!(self.ops ; .arch x64 ; mov Rq(rd), Rq(r))
                        }
                    }
                    (_, _, None) => dynasm!(self.ops ; .arch x64 ; mov Rq(rd), QWORD [r14 + o]),
                }
                self.free_dead(i, &Op::Un { op, w, d, a });
                self.define_at(d, rd);
                return;
            }
            _ => self.dest(i, d, a, &[], &[]),
        };
        match (op, w) {
            (Un::Neg, 8) => dynasm!(self.ops ; .arch x64 ; neg Rq(rd)),
            (Un::Neg, _) => {
                dynasm!(self.ops ; .arch x64 ; neg Rd(rd));
                self.narrow(rd, w)
            }
            (Un::Not, 8) => dynasm!(self.ops ; .arch x64 ; not Rq(rd)),
            (Un::Not, _) => {
                dynasm!(self.ops ; .arch x64 ; not Rd(rd));
                self.narrow(rd, w)
            }
            (Un::Bswap, 8) => dynasm!(self.ops ; .arch x64 ; bswap Rq(rd)),
            (Un::Bswap, _) => dynasm!(self.ops ; .arch x64 ; bswap Rd(rd)),
            (Un::Sext, 1) => dynasm!(self.ops ; .arch x64 ; movsx Rq(rd), Rb(rd)),
            (Un::Sext, 2) => dynasm!(self.ops ; .arch x64 ; movsx Rq(rd), Rw(rd)),
            (Un::Sext, 4) => dynasm!(self.ops ; .arch x64 ; movsxd Rq(rd), Rd(rd)),
            (Un::Zext, 1) => dynasm!(self.ops ; .arch x64 ; movzx Rd(rd), Rb(rd)),
            (Un::Zext, 2) => dynasm!(self.ops ; .arch x64 ; movzx Rd(rd), Rw(rd)),
            (Un::Zext, 4) => dynasm!(self.ops ; .arch x64 ; mov Rd(rd), Rd(rd)),
            (Un::Ctz | Un::Clz | Un::Popcnt, _) => {
                self.extend(rd, w, false);
                let bits = 8 * w as i32;
                match op {
                    // BSF/BSR leave the destination undefined for 0: CMOVZ supplies it.
                    Un::Ctz => dynasm!(self.ops ; .arch x64
                        ; mov edi, bits ; bsf Rq(rd), Rq(rd) ; cmovz Rq(rd), rdi),
                    Un::Clz => dynasm!(self.ops ; .arch x64
                        ; mov rdi, -1 ; bsr Rq(rd), Rq(rd) ; cmovz Rq(rd), rdi
                        ; neg Rq(rd) ; add Rq(rd), bits - 1),
                    _ => self.popcnt(rd),
                }
            }
            _ => {}
        }
        self.free_dead(i, &Op::Un { op, w, d, a });
        self.define_at(d, rd);
    }

    /// Zero- (or sign-) extends the low `w` bytes of r to 64 bits in place.
    fn extend(&mut self, r: u8, w: Width, signed: bool) {
        match (w, signed) {
            (1, false) => dynasm!(self.ops ; .arch x64 ; movzx Rd(r), Rb(r)),
            (2, false) => dynasm!(self.ops ; .arch x64 ; movzx Rd(r), Rw(r)),
            (4, false) => dynasm!(self.ops ; .arch x64 ; mov Rd(r), Rd(r)),
            (1, true) => dynasm!(self.ops ; .arch x64 ; movsx Rq(r), Rb(r)),
            (2, true) => dynasm!(self.ops ; .arch x64 ; movsx Rq(r), Rw(r)),
            (4, true) => dynasm!(self.ops ; .arch x64 ; movsxd Rq(r), Rd(r)),
            _ => {}
        }
    }

    /// r = the number of set bits in r (64 bits).
    fn popcnt(&mut self, r: u8) {
        if std::arch::is_x86_feature_detected!("popcnt") {
            dynasm!(self.ops ; .arch x64 ; popcnt Rq(r), Rq(r));
            return;
        }
        dynasm!(self.ops ; .arch x64
            ; mov rdi, Rq(r) ; shr rdi, 1 ; mov r8, QWORD 0x5555_5555_5555_5555 ; and rdi, r8 ; sub Rq(r), rdi
            ; mov r8, QWORD 0x3333_3333_3333_3333 ; mov rdi, Rq(r) ; shr rdi, 2 ; and rdi, r8 ; and Rq(r), r8
            ; add Rq(r), rdi
            ; mov rdi, Rq(r) ; shr rdi, 4 ; add Rq(r), rdi ; mov r8, QWORD 0x0f0f_0f0f_0f0f_0f0f ; and Rq(r), r8
            ; mov r8, QWORD 0x0101_0101_0101_0101 ; imul Rq(r), r8 ; shr Rq(r), 56
        );
    }

    /// Slots of the call-save area that hold RAX and RDX while a widening multiply
    /// or a divide borrows them (no call is in progress then).
    const RAX_SLOT: i32 = (SPILL_SLOTS * 8) as i32;
    const RDX_SLOT: i32 = ((SPILL_SLOTS + 2) * 8) as i32;

    /// The high half of a widening multiply.
    fn mul_high(&mut self, i: usize, signed: bool, w: Width, d: Val, a: Val, b: Val) {
        let op = Op::Bin { op: if signed { Bin::MulHs } else { Bin::MulHu }, w, d, a, b };
        let ra = self.reg(a, &[]);
        let rb = self.reg(b, &[ra]);
        if w < 8 {
            // Both factors extended to 64 bits: the product fits.
            let rd = self.result_from_excl(i, a, &[rb], true, &[b]);
            dynasm!(self.ops ; .arch x64 ; mov rdi, Rq(rb));
            self.extend(rd, w, signed);
            self.extend(RDI, w, signed);
            let bits = 8 * w as i8;
            dynasm!(self.ops ; .arch x64 ; imul Rq(rd), rdi ; shr Rq(rd), bits);
            match w {
                4 => dynasm!(self.ops ; .arch x64 ; mov Rd(rd), Rd(rd)),
                _ => self.narrow(rd, w),
            }
            self.free_dead(i, &op);
            self.define(d, rd);
            return;
        }
        let rd = self.alloc(&[ra, rb]);
        let (sa, sd) = (Self::RAX_SLOT, Self::RDX_SLOT);
        dynasm!(self.ops ; .arch x64
            ; mov [rsp + sa], rax ; mov [rsp + sd], rdx
            ; mov rdi, Rq(rb) ; mov rax, Rq(ra)
        );
        if signed {
            dynasm!(self.ops ; .arch x64 ; imul rdi);
        } else {
            dynasm!(self.ops ; .arch x64 ; mul rdi);
        }
        dynasm!(self.ops ; .arch x64
            ; mov rdi, rdx ; mov rax, [rsp + sa] ; mov rdx, [rsp + sd] ; mov Rq(rd), rdi
        );
        self.free_dead(i, &op);
        self.define(d, rd);
    }

    /// Unsigned `hi:lo / div` (quotient or remainder), the quotient known to fit.
    #[allow(clippy::too_many_arguments)]
    fn divide(&mut self, i: usize, rem: bool, w: Width, d: Val, hi: Val, lo: Val, div: Val) {
        let op = Op::Div { rem, w, d, hi, lo, div };
        let rh = self.reg(hi, &[]);
        let rl = self.reg(lo, &[rh]);
        let rv = self.reg(div, &[rh, rl]);
        let rd = self.alloc(&[rh, rl, rv]);
        let (sa, sd) = (Self::RAX_SLOT, Self::RDX_SLOT);
        dynasm!(self.ops ; .arch x64
            ; mov [rsp + sa], rax ; mov [rsp + sd], rdx
            ; mov rcx, Rq(rv) ; mov rdi, Rq(rl) ; mov r8, Rq(rh)
        );
        match w {
            1 => {
                dynasm!(self.ops ; .arch x64
                    ; movzx eax, dil ; movzx edx, r8b ; shl edx, 8 ; or eax, edx ; div cl
                );
                if rem {
                    dynasm!(self.ops ; .arch x64 ; shr eax, 8);
                }
                dynasm!(self.ops ; .arch x64 ; movzx edi, al);
            }
            2 => {
                dynasm!(self.ops ; .arch x64 ; mov eax, edi ; mov edx, r8d ; div cx);
                if rem {
                    dynasm!(self.ops ; .arch x64 ; movzx edi, dx);
                } else {
                    dynasm!(self.ops ; .arch x64 ; movzx edi, ax);
                }
            }
            4 => {
                dynasm!(self.ops ; .arch x64 ; mov eax, edi ; mov edx, r8d ; div ecx);
                if rem {
                    dynasm!(self.ops ; .arch x64 ; mov edi, edx);
                } else {
                    dynasm!(self.ops ; .arch x64 ; mov edi, eax);
                }
            }
            _ => {
                dynasm!(self.ops ; .arch x64 ; mov rax, rdi ; mov rdx, r8 ; div rcx);
                if rem {
                    dynasm!(self.ops ; .arch x64 ; mov rdi, rdx);
                } else {
                    dynasm!(self.ops ; .arch x64 ; mov rdi, rax);
                }
            }
        }
        dynasm!(self.ops ; .arch x64
            ; mov rax, [rsp + sa] ; mov rdx, [rsp + sd] ; mov Rq(rd), rdi
        );
        self.free_dead(i, &op);
        self.define(d, rd);
    }

    /// The inline TLB probe for an access of `w` bytes at linear address `addr`: on
    /// a hit r8 holds the addend (host = addr + r8) and execution falls through; a
    /// miss jumps to `miss`.
    fn probe(&mut self, addr: u8, k: Option<u64>, w: Width, tag: i32, miss: DynamicLabel) {
        self.probe_at(addr, 0, k, w, tag, miss)
    }

    /// As [`Self::probe`] for the address `addr + disp`.
    fn probe_at(&mut self, addr: u8, disp: i32, k: Option<u64>, w: Width, tag: i32, miss: DynamicLabel) {
        let mask = (1i32 << TLB_BITS) - 1;
        // The TLB of the block's MMU index: a user block never sees kernel entries.
        let tlb = off::tlb_offset(self.env.mmu_idx);
        // A constant address (a global variable, RIP-relative) within one page: its
        // entry and tag are known now.
        let way1 = self.ops.new_dynamic_label();
        let hit = self.ops.new_dynamic_label();
        if let Some(k) = k.filter(|&k| k & 0xfff <= 0x1000 - w as u64) {
            if let Ok(page) = i32::try_from(crate::mmu::page_tag(k) as i64) {
                let e = tlb + ((((k >> 12) as i32) & mask) << entry_off::SIZE_SHIFT);
                dynasm!(self.ops ; .arch x64
                    ; cmp QWORD [r14 + e + tag], page
                    ; jne =>way1
                    ; mov r8, [r14 + e + entry_off::ADDEND]
                    ; =>hit
                );
                self.deferred.push(Deferred::Way1 { at: way1, hit, miss, entry: Entry::Const(e, page), tag });
                return;
            }
        }
        // rdi = the entry's offset: (addr >> 12 & mask) << SIZE_SHIFT, in two steps.
        if disp == 0 {
            dynasm!(self.ops ; .arch x64 ; mov rdi, Rq(addr));
        } else {
            dynasm!(self.ops ; .arch x64 ; lea rdi, [Rq(addr) + disp]);
        }
        dynasm!(self.ops ; .arch x64
            ; shr rdi, (12 - entry_off::SIZE_SHIFT) as i8
            ; and edi, mask << entry_off::SIZE_SHIFT
        );
        if w == 1 && disp == 0 {
            dynasm!(self.ops ; .arch x64 ; mov r8, Rq(addr));
        } else {
            dynasm!(self.ops ; .arch x64 ; lea r8, [Rq(addr) + disp + (w as i32 - 1)]);
        }
        dynasm!(self.ops ; .arch x64
            ; or r8, 0xfff
            ; cmp r8, [r14 + rdi + tlb + tag]
            ; jne =>way1
            ; mov r8, [r14 + rdi + tlb + entry_off::ADDEND]
            ; =>hit
        );
        self.deferred.push(Deferred::Way1 { at: way1, hit, miss, entry: Entry::Indexed(tlb), tag });
    }

    /// A scalar access's address: a register and a displacement (see `fused`), and
    /// the address when it is a constant.
    fn address(&mut self, addr: Val) -> (u8, i32, Option<u64>) {
        match self.fused[addr.0 as usize] {
            Some((base, disp)) => (self.reg(base, &[]), disp, None),
            None => {
                let k = self.konst(addr);
                (self.reg(addr, &[]), 0, k)
            }
        }
    }

    fn load(&mut self, i: usize, w: Width, d: Val, addr: Val, op: &Op) {
        let (ra, disp, k) = self.address(addr);
        // A global's register the value is headed for is the destination when free of
        // other values (moved out before the state is captured): the load writes it
        // last, and the slow path stores the old value before.
        let headed = self.target[d.0 as usize].map(|g| {
            let h = self.gmap[g as usize].expect("targets are mapped");
            self.evict_aliases(g as usize, &[ra, h]);
            h
        });
        let sync = self.sync_now();
        self.free_dead(i, op);
        // Otherwise allocated before the probe (a spill must not sit on the fast path
        // only), and apart from the address: the slow path reads both.
        let rd = headed.unwrap_or_else(|| self.alloc(&[ra]));
        let miss = self.ops.new_dynamic_label();
        let resume = self.ops.new_dynamic_label();
        self.probe_at(ra, disp, k, w, entry_off::READ, miss);
        match w {
            1 => dynasm!(self.ops ; .arch x64 ; movzx Rd(rd), BYTE [Rq(ra) + r8 + disp]),
            2 => dynasm!(self.ops ; .arch x64 ; movzx Rd(rd), WORD [Rq(ra) + r8 + disp]),
            4 => dynasm!(self.ops ; .arch x64 ; mov Rd(rd), DWORD [Rq(ra) + r8 + disp]),
            _ => dynasm!(self.ops ; .arch x64 ; mov Rq(rd), QWORD [Rq(ra) + r8 + disp]),
        }
        dynasm!(self.ops ; .arch x64 ; =>resume);
        let dst = LoadDst::Reg(rd);
        self.deferred.push(Deferred::Load { at: miss, resume, d: dst, w, addr: ra, disp, rip: self.rip, sync });
        self.define_at(d, rd);
    }

    fn store(&mut self, i: usize, w: Width, addr: Val, s: Val, op: &Op) {
        let (ra, disp, k) = self.address(addr);
        let src = match self.a.loc[s.0 as usize] {
            Loc::Const(k) if w < 8 || i32::try_from(k as i64).is_ok() => Operand::Imm(k as i32),
            _ => Operand::Reg(self.reg(s, &[ra])),
        };
        let miss = self.ops.new_dynamic_label();
        let resume = self.ops.new_dynamic_label();
        self.probe_at(ra, disp, k, w, entry_off::WRITE, miss);
        match (w, src) {
            (1, Operand::Reg(r)) => dynasm!(self.ops ; .arch x64 ; mov BYTE [Rq(ra) + r8 + disp], Rb(r)),
            (2, Operand::Reg(r)) => dynasm!(self.ops ; .arch x64 ; mov WORD [Rq(ra) + r8 + disp], Rw(r)),
            (4, Operand::Reg(r)) => dynasm!(self.ops ; .arch x64 ; mov DWORD [Rq(ra) + r8 + disp], Rd(r)),
            (_, Operand::Reg(r)) => dynasm!(self.ops ; .arch x64 ; mov QWORD [Rq(ra) + r8 + disp], Rq(r)),
            (1, Operand::Imm(k)) => dynasm!(self.ops ; .arch x64 ; mov BYTE [Rq(ra) + r8 + disp], k as i8),
            (2, Operand::Imm(k)) => dynasm!(self.ops ; .arch x64 ; mov WORD [Rq(ra) + r8 + disp], k as i16),
            (4, Operand::Imm(k)) => dynasm!(self.ops ; .arch x64 ; mov DWORD [Rq(ra) + r8 + disp], k),
            (_, Operand::Imm(k)) => dynasm!(self.ops ; .arch x64 ; mov QWORD [Rq(ra) + r8 + disp], k),
        }
        dynasm!(self.ops ; .arch x64 ; =>resume);
        self.defer_store(i, op, miss, resume, StoreSrc::Val(src), w, (ra, disp));
    }

    fn finish(mut self) -> (Code, bool) {
        let mut code_written: Option<DynamicLabel> = None;
        let deferred = std::mem::take(&mut self.deferred);
        for d in deferred {
            match d {
                Deferred::Way1 { at, hit, miss, entry, tag } => {
                    let w1 = entry_off::WAY1;
                    match entry {
                        Entry::Const(e, page) => dynasm!(self.ops ; .arch x64
                            ; =>at
                            ; cmp QWORD [r14 + e + w1 + tag], page
                            ; jne =>miss
                            ; mov r8, [r14 + e + w1 + entry_off::ADDEND]
                            ; jmp =>hit
                        ),
                        Entry::Indexed(tlb) => dynasm!(self.ops ; .arch x64
                            ; =>at
                            ; cmp r8, [r14 + rdi + tlb + w1 + tag]
                            ; jne =>miss
                            ; mov r8, [r14 + rdi + tlb + w1 + entry_off::ADDEND]
                            ; jmp =>hit
                        ),
                    }
                }
                Deferred::Request { at, sync } => {
                    dynasm!(self.ops ; .arch x64 ; =>at);
                    self.store_state(sync);
                    self.store_rip(self.env.block_rip);
                    self.exit_raw(exit::REQUEST);
                }
                Deferred::SideExit { at, rip, sync } => {
                    dynasm!(self.ops ; .arch x64 ; =>at);
                    self.store_state(sync);
                    self.chain_to(rip);
                }
                Deferred::Step { at, rip, sync } => self.emit_step(at, rip, sync),
                Deferred::Trap { at, rip, vector, sync } => self.emit_trap(at, rip, vector, sync),
                Deferred::Carry { at, resume, r, sync } => self.emit_carry_slow(at, resume, r, sync),
                Deferred::Load { at, resume, d, w, addr, disp, rip, sync } => {
                    dynasm!(self.ops ; .arch x64 ; =>at);
                    let mx = sync.mx;
                    self.slow_path_out(sync);
                    self.store_rip(rip);
                    match d {
                        LoadDst::Reg(d) => {
                            dynasm!(self.ops ; .arch x64 ; lea rsi, [Rq(addr) + disp] ; mov edx, w as i32 ; mov rdi, r14);
                            self.call_abs(self.env.helpers.load);
                            dynasm!(self.ops ; .arch x64 ; mov rdi, rax);
                            self.slow_path_back_checked();
                            self.reload_guest_mxcsr(mx);
                            dynasm!(self.ops ; .arch x64 ; mov Rq(d), rdi ; jmp =>resume);
                        }
                        LoadDst::Vec(o, align) => {
                            let wa = w as i32 | i32::from(align) << 8;
                            dynasm!(self.ops ; .arch x64 ; lea rsi, [Rq(addr) + disp] ; mov edx, wa ; mov ecx, o ; mov rdi, r14);
                            self.call_abs(self.env.helpers.vload);
                            self.slow_path_back_checked();
                            self.reload_guest_mxcsr(mx);
                            dynasm!(self.ops ; .arch x64 ; jmp =>resume);
                        }
                    }
                }
                Deferred::Store { at, resume, src, w, addr, disp, rip, next, sync, after, tail } => {
                    dynasm!(self.ops ; .arch x64 ; =>at);
                    let mx = sync.mx;
                    self.slow_path_out(sync);
                    self.store_rip(rip);
                    match src {
                        StoreSrc::Val(src) => {
                            // Through scratch r8: the value or the address may sit in rsi/rdx.
                            match src {
                                Operand::Reg(r) => dynasm!(self.ops ; .arch x64 ; mov r8, Rq(r)),
                                Operand::Imm(k) => dynasm!(self.ops ; .arch x64 ; mov r8, k),
                            }
                            dynasm!(self.ops ; .arch x64
                                ; lea rsi, [Rq(addr) + disp] ; mov rdx, r8 ; mov ecx, w as i32 ; mov rdi, r14
                            );
                            self.call_abs(self.env.helpers.store);
                        }
                        StoreSrc::Vec(o, align) => {
                            let wa = w as i32 | i32::from(align) << 8;
                            dynasm!(self.ops ; .arch x64 ; lea rsi, [Rq(addr) + disp] ; mov edx, wa ; mov ecx, o ; mov rdi, r14);
                            self.call_abs(self.env.helpers.vstore);
                        }
                    }
                    dynasm!(self.ops ; .arch x64 ; mov edi, eax);
                    self.slow_path_back_checked();
                    self.reload_guest_mxcsr(mx);
                    // The store overwrote translated code, maybe this block's: finish
                    // the instruction out of line and leave.
                    dynasm!(self.ops ; .arch x64 ; test edi, edi ; jz =>resume);
                    let ends = self.block.ops[tail.clone()].iter().any(|o| o.ends_block());
                    self.a.reg_val = after.reg_val;
                    self.a.slot_val = after.slot_val;
                    self.a.dirty = after.dirty;
                    self.a.cc = after.cc;
                    self.a.ccv = after.ccv;
                    self.a.mx = after.mx;
                    self.a.in_state = after.in_state;
                    for &(v, loc) in &after.locs {
                        self.a.loc[v.0 as usize] = loc;
                        if let Loc::Global(g) = loc {
                            self.a.aliases[g as usize].push(v);
                        }
                    }
                    self.rip = rip;
                    self.next = next;
                    self.replay = true;
                    self.emit_range(tail);
                    self.replay = false;
                    if !ends {
                        self.sync_all();
                        self.store_rip(next);
                        let out = *code_written.get_or_insert_with(|| self.ops.new_dynamic_label());
                        dynasm!(self.ops ; .arch x64 ; jmp =>out);
                    }
                    // Replayed ops may have deferred more out-of-line code.
                    for more in std::mem::take(&mut self.deferred) {
                        self.emit_replay_deferred(more);
                    }
                }
            }
        }
        if let Some(out) = code_written {
            dynasm!(self.ops ; .arch x64 ; =>out);
            self.exit_raw(exit::NEXT);
        }
        // Inside the routines the return address sits at [rsp]: slots are 8 further.
        if let Some(l) = self.state_out {
            dynasm!(self.ops ; .arch x64 ; =>l);
            for g in 0..Global::COUNT {
                if let Some(h) = self.gmap[g] {
                    let o = Global::from_index(g).offset();
                    dynasm!(self.ops ; .arch x64 ; mov [r14 + o], Rq(h));
                }
            }
            for r in POOL.iter().copied().filter(|&r| caller_saved(r)) {
                let o = 8 + ((SPILL_SLOTS + r as usize) * 8) as i32;
                dynasm!(self.ops ; .arch x64 ; mov [rsp + o], Rq(r));
            }
            dynasm!(self.ops ; .arch x64 ; ret);
        }
        if let Some(l) = self.regs_in {
            dynasm!(self.ops ; .arch x64 ; =>l);
            for g in 0..Global::COUNT {
                if let Some(h) = self.gmap[g] {
                    let o = Global::from_index(g).offset();
                    dynasm!(self.ops ; .arch x64 ; mov Rq(h), [r14 + o]);
                }
            }
            dynasm!(self.ops ; .arch x64 ; ret);
        }
        let fe = self.fault_exit;
        for (l, checked) in [(self.regs_back, false), (self.regs_back_checked, true)] {
            let Some(l) = l else { continue };
            dynasm!(self.ops ; .arch x64 ; =>l);
            for r in POOL.iter().copied().filter(|&r| caller_saved(r)) {
                let o = 8 + ((SPILL_SLOTS + r as usize) * 8) as i32;
                dynasm!(self.ops ; .arch x64 ; mov Rq(r), [rsp + o]);
            }
            if checked {
                // A fault leaves through the block's fault exit, dropping the return
                // address.
                dynasm!(self.ops ; .arch x64
                    ; cmp DWORD [r14 + off::FAULT_VECTOR], -1 ; jne >fault ; ret
                    ; fault: ; add rsp, 8 ; jmp =>fe
                );
            } else {
                dynasm!(self.ops ; .arch x64 ; ret);
            }
        }
        dynasm!(self.ops ; .arch x64 ; =>fe);
        // Every path here stored the state before its helper ran.
        self.exit_raw(exit::FAULT);
        let bytes = self.ops.finalize().expect("assembling a block");
        (Code { bytes, chain_sites: self.chain_sites }, self.starved)
    }

    /// A slow path's way out to Rust: every mapped global to the state and the
    /// caller-saved registers to the frame (one shared routine), then `cc_op`.
    fn slow_path_out(&mut self, sync: Sync) {
        let l = *self.state_out.get_or_insert_with(|| self.ops.new_dynamic_label());
        dynasm!(self.ops ; .arch x64 ; call =>l);
        self.store_ccv(sync.ccv);
        if let CcState::Pending(k) = sync.cc {
            dynasm!(self.ops ; .arch x64 ; mov DWORD [r14 + off::CC_OP], k as i32);
        }
        self.host_mxcsr(sync.mx);
    }

    /// Before a helper on the main path (one every execution takes): values out of
    /// the guest registers' host registers, the state complete (and marked so).
    fn state_out_for_call(&mut self) {
        self.evict_all_aliases();
        let s = self.sync_now();
        self.slow_path_out(s);
        self.a.dirty = 0;
        self.a.cc = CcState::Stored;
        self.clear_ccv();
        self.a.mx = false;
    }

    /// Back from Rust: the caller-saved registers as they were.
    fn slow_path_back(&mut self) {
        let l = *self.regs_back.get_or_insert_with(|| self.ops.new_dynamic_label());
        dynasm!(self.ops ; .arch x64 ; call =>l);
    }

    /// As [`Emit::slow_path_back`], then on to the fault exit if the helper raised
    /// a guest exception (one shared routine: the check costs a call site nothing).
    fn slow_path_back_checked(&mut self) {
        let l = *self.regs_back_checked.get_or_insert_with(|| self.ops.new_dynamic_label());
        dynasm!(self.ops ; .arch x64 ; call =>l);
    }

    /// Out-of-line code for ops replayed after a store onto code: side exits only
    /// (an instruction's tail has no memory accesses).
    fn emit_replay_deferred(&mut self, d: Deferred) {
        match d {
            Deferred::SideExit { at, rip, sync } => {
                dynasm!(self.ops ; .arch x64 ; =>at);
                self.store_state(sync);
                self.store_rip(rip);
                self.exit_raw(exit::NEXT);
            }
            Deferred::Step { at, rip, sync } => self.emit_step(at, rip, sync),
            Deferred::Trap { at, rip, vector, sync } => self.emit_trap(at, rip, vector, sync),
            Deferred::Carry { at, resume, r, sync } => self.emit_carry_slow(at, resume, r, sync),
            _ => panic!("tcg backend: memory access in an instruction's tail after a store"),
        }
    }

    fn emit_step(&mut self, at: DynamicLabel, rip: u64, sync: Sync) {
        dynasm!(self.ops ; .arch x64 ; =>at);
        self.store_state(sync);
        self.store_rip(rip);
        self.exit_raw(exit::STEP);
    }

    /// d = CF of the state's flag record: inline for logic operations, INC/DEC and
    /// 8/32/64-bit ADD/SUB/CMP (the records blocks most often start with), else the
    /// flags helper out of line.
    fn state_carry(&mut self, d: Val) {
        // The state must hold the record (it does at a block's start and after a
        // helper; anything pending goes there first).
        let s = self.sync_now();
        self.store_ccv(s.ccv);
        self.clear_ccv();
        if let CcState::Pending(k) = self.a.cc {
            dynasm!(self.ops ; .arch x64 ; mov DWORD [r14 + off::CC_OP], k as i32);
            self.a.cc = CcState::Stored;
        }
        let r = self.alloc(&[]);
        let slow = self.ops.new_dynamic_label();
        let resume = self.ops.new_dynamic_label();
        let (op, dst, src, src2) = (off::CC_OP, off::CC_DST, off::CC_SRC, off::CC_SRC2);
        let sub = |w: u8| CcOp::new(CcKind::Sub, w).0 as i32;
        let add = |w: u8| CcOp::new(CcKind::Add, w).0 as i32;
        let logic = CcOp::new(CcKind::Logic, 1).0 as i32;
        let inc = CcOp::new(CcKind::Inc, 1).0 as i32;
        // SUB/CMP: CF = the operand above the first one, dst + src; ADD: CF = the sum
        // below the operand.
        dynasm!(self.ops ; .arch x64
            ; mov edi, [r14 + op]
            ; cmp edi, sub(4) ; jne >n1
            ; mov r8, [r14 + dst] ; add r8d, DWORD [r14 + src] ; cmp r8d, DWORD [r14 + src] ; jmp >cf
            ; n1: ; cmp edi, sub(8) ; jne >n2
            ; mov r8, [r14 + dst] ; add r8, QWORD [r14 + src] ; cmp r8, QWORD [r14 + src] ; jmp >cf
            ; n2: ; cmp edi, sub(1) ; jne >n3
            ; mov r8, [r14 + dst] ; add r8b, BYTE [r14 + src] ; cmp r8b, BYTE [r14 + src] ; jmp >cf
            ; n3: ; cmp edi, add(4) ; jne >n4
            ; mov r8, [r14 + dst] ; cmp r8d, DWORD [r14 + src] ; jmp >cf
            ; n4: ; cmp edi, add(8) ; jne >n5
            ; mov r8, [r14 + dst] ; cmp r8, QWORD [r14 + src] ; jmp >cf
            ; n5: ; lea r8d, [rdi - logic] ; cmp r8d, 3 ; jbe >zero
            ; lea r8d, [rdi - inc] ; cmp r8d, 7 ; ja =>slow
            // INC/DEC keep the CF they found in src2.
            ; mov r8, [r14 + src2] ; bt r8d, 0 ; jmp >cf
            ; zero: ; clc
            ; cf:
        );
        // CF to r (SETB, without touching the flags before it).
        self.setcc(0x2, r);
        dynasm!(self.ops ; .arch x64 ; =>resume);
        let sync = self.sync_now();
        self.deferred.push(Deferred::Carry { at: slow, resume, r, sync });
        self.define(d, r);
    }

    fn emit_carry_slow(&mut self, at: DynamicLabel, resume: DynamicLabel, r: u8, sync: Sync) {
        dynasm!(self.ops ; .arch x64 ; =>at);
        let mx = sync.mx;
        self.slow_path_out(sync);
        dynasm!(self.ops ; .arch x64 ; mov rdi, r14);
        self.call_abs(self.env.helpers.flags);
        dynasm!(self.ops ; .arch x64 ; mov rdi, rax);
        self.slow_path_back();
        self.reload_guest_mxcsr(mx);
        dynasm!(self.ops ; .arch x64 ; and edi, 1 ; mov Rq(r), rdi ; jmp =>resume);
    }

    /// The way out raising guest exception `vector` at `rip`.
    fn emit_trap(&mut self, at: DynamicLabel, rip: u64, vector: u8, sync: Sync) {
        dynasm!(self.ops ; .arch x64 ; =>at);
        self.store_state(sync);
        self.store_rip(rip);
        dynasm!(self.ops ; .arch x64
            ; mov DWORD [r14 + off::FAULT_VECTOR], vector as i32
            ; mov DWORD [r14 + off::FAULT_HAS_ERROR_CODE], 0
        );
        self.exit_raw(exit::FAULT);
    }
}

/// For each value, the mapped global it is computed for: the value is written to
/// that global later in the same stretch with nothing in between that reads the
/// global or could expose the state (a memory access, helper or exit).
/// Each value's last reader (not counting the flag record's hold on it).
/// Per value: its last reader, how many ops read it (and as a scalar access's
/// address), its constant: one walk over the block.
struct Uses {
    last: Vec<usize>,
    count: Vec<u32>,
    as_addr: Vec<u32>,
    konst: Vec<Option<u64>>,
}

fn uses(block: &Block) -> Uses {
    let n = block.val_count();
    let mut u = Uses { last: vec![0; n], count: vec![0; n], as_addr: vec![0; n], konst: vec![None; n] };
    for (i, op) in block.ops.iter().enumerate() {
        op.for_each_use(|v| {
            u.last[v.0 as usize] = i;
            u.count[v.0 as usize] += 1;
        });
        match *op {
            Op::Const { d, v } => u.konst[d.0 as usize] = Some(v),
            Op::Load { addr, .. } | Op::Store { addr, .. } => u.as_addr[addr.0 as usize] += 1,
            _ => {}
        }
    }
    u
}

/// Address arithmetic folded into the host's addressing modes, one walk:
/// - `scaled` (see `Emit::scaled`): a value shifted left by 1..3 that only one
///   addition at most as wide reads; the shifted value then lives until the addition;
/// - `fused` (see `Emit::fused`): a 64-bit sum of a value and a constant that only
///   scalar loads and stores read; the base then lives until the last of them.
///
/// `u.last` is extended for both.
#[allow(clippy::type_complexity)]
fn fold_addressing(block: &Block, u: &mut Uses) -> (Vec<Option<(Val, u8)>>, Vec<Option<(Val, i32)>>) {
    let n = block.val_count();
    let mut scaled = vec![None; n];
    let mut fused = vec![None; n];
    // shl[v]: v = x << k (k in 1..=3) at width w, read once.
    let mut shl: Vec<Option<(Val, u8, Width)>> = vec![None; n];
    for (i, op) in block.ops.iter().enumerate() {
        match *op {
            Op::Bin { op: Bin::Shl, w, d, a, b } if w >= 4 => {
                if let Some(k @ 1..=3) = u.konst[b.0 as usize] {
                    if u.count[d.0 as usize] == 1 && u.konst[a.0 as usize].is_none() {
                        shl[d.0 as usize] = Some((a, 1 << k, w));
                    }
                }
            }
            Op::Bin { op: Bin::Add, w, d, a, b } if w >= 4 => {
                if a != b {
                    if let Some(v) = [a, b].into_iter().find(|v| shl[v.0 as usize].is_some_and(|s| s.2 >= w)) {
                        let (x, scale, _) = shl[v.0 as usize].expect("found");
                        scaled[v.0 as usize] = Some((x, scale));
                        u.last[x.0 as usize] = u.last[x.0 as usize].max(i);
                    }
                }
                let (di, ai) = (d.0 as usize, a.0 as usize);
                let disp = u.konst[b.0 as usize]
                    .and_then(|k| i32::try_from(k as i64).ok())
                    .filter(|k| k.checked_add(8).is_some());
                let plain = w == 8 && u.konst[ai].is_none() && scaled[ai].is_none();
                let only_addr = u.count[di] > 0 && u.count[di] == u.as_addr[di];
                if let Some(disp) = disp.filter(|_| plain && only_addr) {
                    fused[di] = Some((a, disp));
                    u.last[ai] = u.last[ai].max(u.last[di]);
                }
            }
            _ => {}
        }
    }
    (scaled, fused)
}

fn targets(block: &Block, gmap: &[Option<u8>; Global::COUNT]) -> Vec<Option<u8>> {
    let mut t = vec![None; block.val_count()];
    // Walking backwards: the (value, global) writes reachable from here with nothing
    // in between that reads or writes that global or needs the state.
    let mut wanted: Vec<(Val, usize)> = Vec::new();
    for op in block.ops.iter().rev() {
        if let Some(d) = op.def() {
            if let Some(&(_, g)) = wanted.iter().find(|w| w.0 == d) {
                t[d.0 as usize] = Some(g as u8);
            }
        }
        match *op {
            Op::Set { g, s } => {
                wanted.retain(|w| w.1 != g.index());
                if gmap[g.index()].is_some() {
                    wanted.push((s, g.index()));
                }
            }
            Op::Get { g, .. } => wanted.retain(|w| w.1 != g.index()),
            ref o if o.needs_state() => wanted.clear(),
            _ => {}
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    /// The hand-encoded LEA decodes as the instruction meant, for every register
    /// pairing (R12/R13 and RBP need their own ModRM and SIB forms).
    #[test]
    fn scaled_lea_encodes_every_register_pairing() {
        let block = Block::new();
        let helpers =
            Helpers { load: 0, store: 0, flags: 0, tsc: 0, sti: 0, interp: 0, vload: 0, vstore: 0, lookup: 0 };
        let env = Env {
            base: 0x1000,
            stubs: crate::backend::Stubs::default(),
            helpers,
            page: None,
            block_rip: 0,
            single: false,
            mmu_idx: 0,
            tso: false,
        };
        use iced_x86::Register as R;
        let regs = [
            R::RAX,
            R::RCX,
            R::RDX,
            R::RBX,
            R::RSP,
            R::RBP,
            R::RSI,
            R::RDI,
            R::R8,
            R::R9,
            R::R10,
            R::R11,
            R::R12,
            R::R13,
            R::R14,
            R::R15,
        ];
        for dst in POOL {
            for index in POOL {
                for base in std::iter::once(None).chain(POOL.iter().copied().map(Some)) {
                    for (scale, disp) in [(2u8, 0i32), (4, 8), (8, -0x1000), (4, 0x20_0000)] {
                        let mut e = Emit::new(&block, &env, 0);
                        e.lea_scaled(true, dst, base, index, scale, disp);
                        let bytes = e.ops.finalize().unwrap();
                        let ins = Decoder::with_ip(64, &bytes, 0, DecoderOptions::NONE).decode();
                        let what = format!("dst {dst} base {base:?} index {index} *{scale} {disp:#x}: {bytes:02x?}");
                        assert_eq!(ins.len(), bytes.len(), "{what}");
                        assert_eq!(ins.mnemonic(), Mnemonic::Lea, "{what}");
                        assert_eq!(ins.op0_register(), regs[dst as usize], "{what}");
                        assert_eq!(ins.memory_base(), base.map_or(R::None, |b| regs[b as usize]), "{what}");
                        assert_eq!(ins.memory_index(), regs[index as usize], "{what}");
                        assert_eq!(ins.memory_index_scale(), u32::from(scale), "{what}");
                        assert_eq!(ins.memory_displacement64(), disp as i64 as u64, "{what}");
                    }
                }
            }
        }
    }
}
