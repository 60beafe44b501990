//! The translator's intermediate representation: what a guest block does, in
//! operations no host architecture shapes.
//!
//! The front end ([`crate::lower`]) turns each guest instruction into a few [`Op`]s on
//! [`Val`]s — 64-bit temporaries, each defined once — and on [`Global`]s, the guest
//! state a block reads and writes (general registers, the lazy-flag record). The
//! passes ([`opt`]) fold constants, propagate copies and drop what nothing reads; a
//! backend (one module per host, e.g. [`crate::backend::x64`]) allocates host
//! registers and emits code. The IR never names a host register, a host flag or a host
//! condition code.
//!
//! Conventions every backend implements:
//! - A `Val` is 64 bits. An operation of width `w` (1, 2, 4 or 8 bytes) reads only
//!   the low `w` bytes of its inputs and produces a result zero-extended from `w`
//!   bytes (except [`Un::Sext`], which sign-extends).
//! - Shift and rotate counts are taken modulo 64 when `w` is 8 and modulo 32
//!   otherwise (x86's rule); a shift by at least the width gives 0 (SAR: the sign),
//!   a rotate turns by the count modulo the width in bits.
//! - Guest memory is reached only by [`Op::Load`]/[`Op::Store`] on linear addresses,
//!   through the soft TLB; they may fault, and the backend's slow path then makes
//!   the guest state precise (every global stored, RIP of the instruction) before
//!   leaving. An instruction's memory accesses come before its register writes.
//! - The lazy-flag record's operation (`cc_op`) is set by [`Op::SetCcOp`]; it is not a
//!   `Val` so a backend can keep it as a translation-time constant and store it only
//!   where the state must be complete (exits, helpers, faults).
//! - 128-bit vector data is never a `Val`: vector operations ([`Op::VBin`],
//!   [`Op::VLoad`], ...) name [`VReg`]s, locations in the guest state (the XMM
//!   registers and a few temporaries), and read and write them there in program
//!   order; a backend may cache them in host vector registers as long as the state
//!   is current wherever [`Op::needs_state`] says so. Lanes are little-endian.
//! - Floating-point vector operations ([`VBin::is_float`], [`VRead`] conversions
//!   and compares, [`VWrite`]) round as the guest's MXCSR says (RC, DAZ, FTZ) and OR
//!   the exceptions they raise into its sticky flags. The front end emits them only
//!   when the guest masks every exception (a block-mode bit), so they never fault.
//! - x87 operations ([`Op::X87Bin`], ...) name physical registers (R0..R7 in the
//!   state, and a scratch one): the front end tracks TOP and the tags from the
//!   values a guard ([`Op::X87Guard`]) checks, which include a control word that
//!   masks every exception. They round as that control word says, read and write
//!   the state in program order and OR their exception flags into FSW.

pub mod opt;

use std::fmt;

use crate::flags::{CcOp, Width};
use crate::state::off;

/// A temporary: defined by exactly one operation, read by any later ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Val(pub u32);

/// Guest state an operation reads or writes by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Global {
    /// General register in encoding order (RAX = 0 .. R15 = 15), all 64 bits.
    Gpr(u8),
    /// The lazy-flag record's values (see [`crate::flags`]).
    CcDst,
    CcSrc,
    CcSrc2,
    /// A segment's base (read-only to the IR).
    SegBase(u8),
    /// EFLAGS' non-status bits (DF, IF, ...). Its status bits are meaningful only
    /// while the lazy record's operation is [`crate::flags::CcKind::Eflags`]; a
    /// lowering that changes a control flag keeps the other bits as it found them.
    Eflags,
}

impl Global {
    /// How many globals there are (for dense tables indexed by [`Global::index`]).
    pub const COUNT: usize = 16 + 3 + 6 + 1;

    pub fn index(self) -> usize {
        match self {
            Global::Gpr(r) => r as usize,
            Global::CcDst => 16,
            Global::CcSrc => 17,
            Global::CcSrc2 => 18,
            Global::SegBase(s) => 19 + s as usize,
            Global::Eflags => 25,
        }
    }

    pub fn from_index(i: usize) -> Global {
        match i {
            0..=15 => Global::Gpr(i as u8),
            16 => Global::CcDst,
            17 => Global::CcSrc,
            18 => Global::CcSrc2,
            25 => Global::Eflags,
            _ => Global::SegBase((i - 19) as u8),
        }
    }

    /// Offset of the global inside [`crate::state::CpuState`].
    pub fn offset(self) -> i32 {
        match self {
            Global::Gpr(r) => off::gpr(r as usize),
            Global::CcDst => off::CC_DST,
            Global::CcSrc => off::CC_SRC,
            Global::CcSrc2 => off::CC_SRC2,
            Global::SegBase(s) => off::seg_base(s as usize),
            Global::Eflags => off::EFLAGS,
        }
    }
}

/// A 16-byte vector location in the guest state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VReg {
    /// XMM0..XMM15.
    Xmm(u8),
    /// A scratch vector of the translator (e.g. a memory operand), dead between
    /// instructions.
    Tmp(u8),
}

impl VReg {
    /// Offset of the vector inside [`crate::state::CpuState`].
    pub fn offset(self) -> i32 {
        match self {
            VReg::Xmm(r) => off::xmm(r as usize),
            VReg::Tmp(t) => off::vtmp(t as usize),
        }
    }
}

/// Lane layouts of the floating-point vector operations: packed singles or doubles,
/// or the low single or double only (the other lanes of the first operand stay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FShape {
    Ps,
    Pd,
    Ss,
    Sd,
}

/// Floating-point lane operations (IEEE 754 with x86's NaN, zero-sign and
/// MIN/MAX rules: MIN/MAX return the second operand when either is NaN or both are
/// zeros; a NaN result is the first NaN operand, quieted, or the default NaN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    /// Of the second operand.
    Sqrt,
    /// All-ones where `a pred b` holds, else zero; pred = the immediate (0..7: EQ,
    /// LT, LE, UNORD, NEQ, NLT, NLE, ORD).
    Cmp,
}

/// The formats an x87 register converts from and to ([`Op::X87In`], [`Op::X87Out`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum X87Fmt {
    F32,
    F64,
    I16,
    I32,
    I64,
}

impl X87Fmt {
    pub fn bytes(self) -> Width {
        match self {
            X87Fmt::I16 => 2,
            X87Fmt::F32 | X87Fmt::I32 => 4,
            X87Fmt::F64 | X87Fmt::I64 => 8,
        }
    }
}

/// One-register x87 operations ([`Op::X87Un`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum X87Un {
    /// A copy of all 80 bits.
    Mov,
    /// The sign bit flipped (FCHS) or cleared (FABS).
    Chs,
    Abs,
    /// The square root, as FSQRT rounds it and raises its exceptions.
    Sqrt,
}

/// The x87 scratch register (beside the physical R0..R7) that [`Op::X87Un`] and
/// friends may name: FXCH swaps through it.
pub const X87_TMP: u8 = 8;

/// Conversions between vector formats (the scalar forms merge into the low lane of
/// `a`; the packed ones read `b`; a narrowing packed form zeroes the upper half).
/// Float → int conversions give 0x80000000 for NaN and out-of-range inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cvt {
    Ss2Sd,
    Sd2Ss,
    Ps2Pd,
    Pd2Ps,
    Dq2Ps,
    Dq2Pd,
    /// Rounded as MXCSR says.
    Ps2Dq,
    /// Truncated.
    Tps2Dq,
    Pd2Dq,
    Tpd2Dq,
}

/// Vector operations `d = f(a, b, imm)` (each variant says which inputs it reads).
/// Lanes: B 8 bits, W 16, D 32, Q 64; S signed, U unsigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VBin {
    /// b.
    Mov,
    /// Bitwise a & b, !a & b, a | b, a ^ b.
    And,
    AndN,
    Or,
    Xor,
    /// Lane-wise wrapping add/sub.
    AddB,
    AddW,
    AddD,
    AddQ,
    SubB,
    SubW,
    SubD,
    SubQ,
    /// Saturating add/sub.
    AddSatUB,
    AddSatUW,
    AddSatSB,
    AddSatSW,
    SubSatUB,
    SubSatUW,
    SubSatSB,
    SubSatSW,
    /// All-ones lanes where a == b / a > b (signed).
    CmpEqB,
    CmpEqW,
    CmpEqD,
    CmpGtB,
    CmpGtW,
    CmpGtD,
    MinUB,
    MaxUB,
    MinSW,
    MaxSW,
    /// (a + b + 1) >> 1, unsigned.
    AvgB,
    AvgW,
    /// Low/high 16 bits of the 32-bit products (signed; MulHiUW unsigned).
    MulLoW,
    MulHiW,
    MulHiUW,
    /// Unsigned products of the even D lanes into Q lanes.
    MulUDQ,
    /// Sums of adjacent signed W products into D lanes.
    MAddWD,
    /// Sums of absolute B differences of each half into its low W (rest zero).
    SadBW,
    /// Interleaves the low (Lo) or high (Hi) halves' lanes: a0 b0 a1 b1 ...
    UnpackLoB,
    UnpackLoW,
    UnpackLoD,
    UnpackLoQ,
    UnpackHiB,
    UnpackHiW,
    UnpackHiD,
    UnpackHiQ,
    /// Narrows a's then b's lanes with saturation (signed W→B, D→W; W→unsigned B).
    PackSSWB,
    PackSSDW,
    PackUSWB,
    /// Shifts of a's lanes by b's low 64 bits (a count above the lane width gives 0,
    /// or the sign for the arithmetic ones).
    SllW,
    SllD,
    SllQ,
    SrlW,
    SrlD,
    SrlQ,
    SraW,
    SraD,
    /// The same by the immediate.
    SllWI,
    SllDI,
    SllQI,
    SrlWI,
    SrlDI,
    SrlQI,
    SraWI,
    SraDI,
    /// a shifted by imm bytes (16 or more gives 0).
    SllDQI,
    SrlDQI,
    /// b's D lanes picked by imm's 2-bit fields; the same for b's low or high four W
    /// lanes (the other half copied from b).
    ShufD,
    ShufLoW,
    ShufHiW,
    /// Low two D lanes from a, high two from b, each picked by imm's 2-bit fields.
    ShufPs,
    /// Low Q from a (imm bit 0), high Q from b (imm bit 1).
    ShufPd,
    /// a with its low D (MovLo32) or Q (MovLo64) lane from b.
    MovLo32,
    MovLo64,
    /// b's low Q, zero-extended.
    MovQ,
    /// a with its high Q = b's low Q; a with its low Q = b's high Q.
    MovLH,
    MovHL,
    Float(FOp, FShape),
    Cvt(Cvt),
}

impl VBin {
    /// Whether the operation follows MXCSR (see the module notes).
    pub fn is_float(self) -> bool {
        matches!(self, VBin::Float(..) | VBin::Cvt(_))
    }
}

/// Vector → value operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VRead {
    /// The sign bits of a's B, D or Q lanes.
    MskB,
    MskPs,
    MskPd,
    /// a's low single (`dbl` false) or double as a `w`-byte signed integer, rounded
    /// as MXCSR says or truncated; the integer indefinite (sign bit alone) when it
    /// does not fit.
    ToInt {
        dbl: bool,
        w: u8,
        trunc: bool,
    },
    /// Compares the low lanes of a and b: CF, PF and ZF in their EFLAGS positions
    /// (unordered: all three; less: CF; equal: ZF), the other bits zero. `signal`:
    /// a quiet NaN is invalid too (COMIS*), not only a signalling one (UCOMIS*).
    Comi {
        dbl: bool,
        signal: bool,
    },
}

impl VRead {
    pub fn is_float(self) -> bool {
        matches!(self, VRead::ToInt { .. } | VRead::Comi { .. })
    }
}

/// Value → vector operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VWrite {
    /// d's low single or double = the `w`-byte signed integer, rounded as MXCSR says.
    FromInt { dbl: bool, w: u8 },
}

/// Two-input operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bin {
    Add,
    Sub,
    And,
    Or,
    Xor,
    /// Low half of the product.
    Mul,
    /// High half (bytes `w..2w`) of the `2w`-byte product of the low `w` bytes of the
    /// inputs read as unsigned numbers.
    MulHu,
    /// As [`Bin::MulHu`], the inputs read as two's complement numbers.
    MulHs,
    Shl,
    Shr,
    Sar,
    Rol,
    Ror,
}

/// One-input operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Un {
    Neg,
    Not,
    /// Byte reversal of the low `w` bytes (4 or 8).
    Bswap,
    /// The low `w` bytes sign-extended to 64 bits.
    Sext,
    /// The low `w` bytes zero-extended (a copy when `w` is 8).
    Zext,
    /// 1 when the low byte has an even number of set bits (x86's PF), else 0.
    Parity,
    /// Number of trailing zero bits of the low `w` bytes; `8 * w` when they are 0.
    Ctz,
    /// Number of leading zero bits of the low `w` bytes; `8 * w` when they are 0.
    Clz,
    /// Number of set bits in the low `w` bytes.
    Popcnt,
}

/// A comparison of two values at a width; the signed forms read them as two's
/// complement numbers of that width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cond {
    Eq,
    Ne,
    Ltu,
    Geu,
    Leu,
    Gtu,
    Lt,
    Ge,
    Le,
    Gt,
}

impl Cond {
    pub fn invert(self) -> Cond {
        use Cond::*;
        match self {
            Eq => Ne,
            Ne => Eq,
            Ltu => Geu,
            Geu => Ltu,
            Leu => Gtu,
            Gtu => Leu,
            Lt => Ge,
            Ge => Lt,
            Le => Gt,
            Gt => Le,
        }
    }

    /// Evaluates the comparison on constants (for folding and for tests).
    pub fn eval(self, w: Width, a: u64, b: u64) -> bool {
        let m = crate::flags::mask(w);
        let (ua, ub) = (a & m, b & m);
        let sh = 64 - 8 * w as u32;
        let (sa, sb) = (((ua << sh) as i64) >> sh, ((ub << sh) as i64) >> sh);
        use Cond::*;
        match self {
            Eq => ua == ub,
            Ne => ua != ub,
            Ltu => ua < ub,
            Geu => ua >= ub,
            Leu => ua <= ub,
            Gtu => ua > ub,
            Lt => sa < sb,
            Ge => sa >= sb,
            Le => sa <= sb,
            Gt => sa > sb,
        }
    }
}

/// A comparison ready for a branch, SETcc or select: `a c b` at width `w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Test {
    pub c: Cond,
    pub w: Width,
    pub a: Val,
    pub b: Val,
}

/// Where the lazy-flag operation comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcOpSrc {
    Const(CcOp),
    /// Known only at run time (a shift by CL that may leave the flags alone).
    Val(Val),
}

/// Helpers an [`Op::Call`] can name; the backend knows their addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helper {
    /// `d` = the guest's status flags from the lazy record in the state.
    Flags,
    /// `d` = the time-stamp counter.
    Tsc,
    /// STI's part outside the globals: opens the one-instruction interrupt shadow if
    /// IF was clear, and when an interrupt is waiting asks for the run loop
    /// (`exit_request`); `d` = whether one is waiting.
    Sti,
}

impl Helper {
    /// Whether the call only computes its value (dead code may drop it).
    pub fn is_pure(self) -> bool {
        !matches!(self, Helper::Sti)
    }
}

/// One operation. Those with `d` define that value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Marks the start of a guest instruction (RIP for slow paths and faults; `next`
    /// for a store that overwrote translated code).
    Insn {
        rip: u64,
        next: u64,
    },
    Const {
        d: Val,
        v: u64,
    },
    Get {
        d: Val,
        g: Global,
    },
    Set {
        g: Global,
        s: Val,
    },
    Bin {
        op: Bin,
        w: Width,
        d: Val,
        a: Val,
        b: Val,
    },
    Un {
        op: Un,
        w: Width,
        d: Val,
        a: Val,
    },
    /// d = 1 if the test holds, else 0.
    Setcond {
        t: Test,
        d: Val,
    },
    /// d = test ? a : b (all 64 bits).
    Select {
        t: Test,
        d: Val,
        a: Val,
        b: Val,
    },
    /// d = 1 if the product of a and b (signed) does not fit in `w` bytes.
    MulOverflow {
        w: Width,
        d: Val,
        a: Val,
        b: Val,
    },
    /// Unsigned division of the `2w`-byte dividend `hi:lo` (the low `w` bytes of each)
    /// by the low `w` bytes of `div`: d = the quotient, or the remainder when `rem`.
    /// Defined only when the quotient fits in `w` bytes (`hi < div`, so `div` is not
    /// 0): the front end checks that first ([`Op::TrapIf`]); a backend may fault on
    /// other inputs.
    Div {
        rem: bool,
        w: Width,
        d: Val,
        hi: Val,
        lo: Val,
        div: Val,
    },
    SetCcOp(CcOpSrc),
    /// d = the state's `cc_op` (as last set: a pending [`Op::SetCcOp`] included).
    GetCcOp {
        d: Val,
    },
    /// d = CF (0 or 1) of the flag record in the state (a block's start, after a
    /// helper): computed inline for the common records, else by the flags helper.
    StateCarry {
        d: Val,
    },
    /// d = guest memory at linear address `addr`, `w` bytes, zero-extended.
    Load {
        w: Width,
        d: Val,
        addr: Val,
    },
    /// Guest memory at `addr` = low `w` bytes of `s`. A store onto translated code
    /// finishes its instruction and leaves the block.
    Store {
        w: Width,
        addr: Val,
        s: Val,
    },
    /// Vector `d` = `w` bytes (1, 2, 4, 8 or 16) of guest memory at `addr`, zero-
    /// extended; `align`: a 16-byte access at an address that is not a multiple of
    /// 16 raises #GP(0).
    VLoad {
        w: Width,
        d: VReg,
        addr: Val,
        align: bool,
    },
    /// Guest memory at `addr` = the low `w` bytes of vector `s` (as [`Op::Store`]).
    VStore {
        w: Width,
        addr: Val,
        s: VReg,
        align: bool,
    },
    VBin {
        op: VBin,
        d: VReg,
        a: VReg,
        b: VReg,
        imm: u8,
    },
    /// d = lane `lane` (of `w` bytes: 1, 2, 4 or 8) of vector `s`, zero-extended.
    VGet {
        d: Val,
        s: VReg,
        w: Width,
        lane: u8,
    },
    /// Lane `lane` (of `w` bytes) of vector `d` = `s`; `zero`: the other lanes
    /// become 0, else they stay.
    VSet {
        d: VReg,
        s: Val,
        w: Width,
        lane: u8,
        zero: bool,
    },
    VRead {
        op: VRead,
        d: Val,
        a: VReg,
        b: VReg,
    },
    /// d = a with what `op` computes from `s` merged in.
    VWrite {
        op: VWrite,
        d: VReg,
        a: VReg,
        s: Val,
    },
    /// A Rust helper that reads the state (all globals are made current first).
    Call {
        helper: Helper,
        d: Val,
    },
    /// Runs one instruction in the interpreter (`ins`: its decoded form, which lives
    /// as long as the block). Reads and writes the whole state; leaves the block when
    /// the instruction changed control flow or the mode, or halted.
    Interp {
        ins: usize,
    },
    /// Raises guest exception `vector` (one without an error code, e.g. #DE) at the
    /// current instruction when the test holds: the state is that before the
    /// instruction, RIP its address.
    TrapIf {
        t: Test,
        vector: u8,
    },
    /// Leaves when the test holds, to the guest instruction at `rip` (a direct
    /// branch, chainable).
    ExitIf {
        t: Test,
        rip: u64,
    },
    /// Back to the block's first instruction when the test holds (None: always).
    Loop {
        t: Option<Test>,
    },
    /// Leaves to the direct branch target `rip` (chainable).
    Exit {
        rip: u64,
    },
    /// Leaves to the RIP in `rip` (indirect branch, through the jump cache).
    ExitJump {
        rip: Val,
    },
    /// Leaves to the run loop with RIP = `rip` (after an instruction that changes what
    /// the next block's translation depends on).
    ExitToLoop {
        rip: u64,
    },
    /// Unless the x87 control word is `fcw`, TOP is `top` and the abridged tag word
    /// `ftw`, leaves to the run loop, which runs the instruction at `rip` alone (in
    /// the interpreter). The x87 operations after it were translated for that stack:
    /// they name physical registers and need no checks for empty or full ones. Also
    /// starts collecting the exception flags of the operations after it.
    X87Guard {
        fcw: u16,
        top: u8,
        ftw: u8,
        rip: u64,
    },
    /// x87 register `r` (R0..R7, or [`X87_TMP`]) = the low bytes of `s` read as `f`,
    /// converted exactly (an SNaN or denormal raises IE or DE, as FLD does).
    X87In {
        f: X87Fmt,
        r: u8,
        s: Val,
    },
    /// d = x87 register `r` converted to `f` (zero-extended): rounded as FCW says, or
    /// towards zero when `trunc` (FISTTP); raises what FST/FIST raise and sets C1.
    X87Out {
        f: X87Fmt,
        trunc: bool,
        d: Val,
        r: u8,
    },
    /// x87 register `r` = the 80-bit value with significand `lo` and sign and
    /// exponent the low 16 bits of `hi` (FLD m80: nothing raised).
    X87SetRaw {
        r: u8,
        lo: Val,
        hi: Val,
    },
    /// x87 register `r` = `a op b` (Add, Sub, Mul or Div) with FCW's precision and
    /// rounding, the exception flags and C1 as the hardware sets them.
    X87Bin {
        op: FOp,
        r: u8,
        a: u8,
        b: u8,
    },
    /// x87 register `r` = `a op s`, `s` read from the low bytes of a value as `f`
    /// (F32, F64, I16 or I32: FADD m32fp .. FIDIVR m32int), or `s op a` when `rev`.
    X87BinMem {
        op: FOp,
        rev: bool,
        f: X87Fmt,
        r: u8,
        a: u8,
        s: Val,
    },
    /// x87 register `r` = `op` of register `a` (only [`X87Un::Sqrt`] raises anything).
    X87Un {
        op: X87Un,
        r: u8,
        a: u8,
    },
    /// d = the comparison of x87 registers `a` and `b` as FCOMI sets the flags (ZF, PF
    /// and CF in their EFLAGS positions, as [`VRead::Comi`]); `signal`: a quiet NaN
    /// raises IE too (FCOMI), not only a signalling one (FUCOMI). C1 stays (as on the
    /// CPUs checked, although the manuals say it is cleared).
    X87Cmp {
        d: Val,
        a: u8,
        b: u8,
        signal: bool,
    },
    /// FSW's TOP = `top`, the abridged tag word = `ftw`, and C1 cleared when
    /// `clear_c1` (an instruction whose C1 no host operation set).
    X87Stack {
        top: u8,
        ftw: u8,
        clear_c1: bool,
    },
}

impl Op {
    /// The value this operation defines.
    pub fn def(&self) -> Option<Val> {
        match *self {
            Op::Const { d, .. }
            | Op::Get { d, .. }
            | Op::GetCcOp { d }
            | Op::StateCarry { d }
            | Op::Bin { d, .. }
            | Op::Un { d, .. }
            | Op::Setcond { d, .. }
            | Op::Select { d, .. }
            | Op::MulOverflow { d, .. }
            | Op::Div { d, .. }
            | Op::Load { d, .. }
            | Op::Call { d, .. }
            | Op::VGet { d, .. }
            | Op::VRead { d, .. }
            | Op::X87Out { d, .. }
            | Op::X87Cmp { d, .. } => Some(d),
            _ => None,
        }
    }

    /// Calls `f` on every value this operation reads.
    pub fn for_each_use(&self, mut f: impl FnMut(Val)) {
        let test = |t: &Test, f: &mut dyn FnMut(Val)| {
            f(t.a);
            f(t.b)
        };
        match self {
            Op::Set { s, .. } => f(*s),
            Op::Bin { a, b, .. } | Op::MulOverflow { a, b, .. } => {
                f(*a);
                f(*b)
            }
            Op::Un { a, .. } => f(*a),
            Op::Div { hi, lo, div, .. } => {
                f(*hi);
                f(*lo);
                f(*div)
            }
            Op::Setcond { t, .. } => test(t, &mut f),
            Op::Select { t, a, b, .. } => {
                test(t, &mut f);
                f(*a);
                f(*b)
            }
            Op::SetCcOp(CcOpSrc::Val(v)) => f(*v),
            Op::Load { addr, .. } | Op::VLoad { addr, .. } | Op::VStore { addr, .. } => f(*addr),
            Op::Store { addr, s, .. } => {
                f(*addr);
                f(*s)
            }
            Op::VSet { s, .. } | Op::VWrite { s, .. } => f(*s),
            Op::ExitIf { t, .. } | Op::TrapIf { t, .. } | Op::Loop { t: Some(t) } => test(t, &mut f),
            Op::ExitJump { rip } => f(*rip),
            Op::X87In { s, .. } | Op::X87BinMem { s, .. } => f(*s),
            Op::X87SetRaw { lo, hi, .. } => {
                f(*lo);
                f(*hi)
            }
            _ => {}
        }
    }

    /// Rewrites every value this operation reads.
    pub fn map_uses(&mut self, mut f: impl FnMut(Val) -> Val) {
        fn t(x: &mut Test, f: &mut dyn FnMut(Val) -> Val) {
            x.a = f(x.a);
            x.b = f(x.b);
        }
        match self {
            Op::Set { s, .. } => *s = f(*s),
            Op::Bin { a, b, .. } | Op::MulOverflow { a, b, .. } => {
                *a = f(*a);
                *b = f(*b)
            }
            Op::Un { a, .. } => *a = f(*a),
            Op::Div { hi, lo, div, .. } => {
                *hi = f(*hi);
                *lo = f(*lo);
                *div = f(*div)
            }
            Op::Setcond { t: x, .. } => t(x, &mut f),
            Op::Select { t: x, a, b, .. } => {
                t(x, &mut f);
                *a = f(*a);
                *b = f(*b)
            }
            Op::SetCcOp(CcOpSrc::Val(v)) => *v = f(*v),
            Op::Load { addr, .. } | Op::VLoad { addr, .. } | Op::VStore { addr, .. } => *addr = f(*addr),
            Op::Store { addr, s, .. } => {
                *addr = f(*addr);
                *s = f(*s)
            }
            Op::VSet { s, .. } | Op::VWrite { s, .. } => *s = f(*s),
            Op::ExitIf { t: x, .. } | Op::TrapIf { t: x, .. } | Op::Loop { t: Some(x) } => t(x, &mut f),
            Op::ExitJump { rip } => *rip = f(*rip),
            Op::X87In { s, .. } | Op::X87BinMem { s, .. } => *s = f(*s),
            Op::X87SetRaw { lo, hi, .. } => {
                *lo = f(*lo);
                *hi = f(*hi)
            }
            _ => {}
        }
    }

    /// Whether the operation does something beyond defining its value (so dead-code
    /// removal must keep it even when nothing reads the value).
    pub fn has_effect(&self) -> bool {
        !matches!(
            self,
            Op::Const { .. }
                | Op::Get { .. }
                | Op::GetCcOp { .. }
                | Op::StateCarry { .. }
                | Op::Bin { .. }
                | Op::Un { .. }
                | Op::Setcond { .. }
                | Op::Select { .. }
                | Op::MulOverflow { .. }
                | Op::Div { .. }
                | Op::VGet { .. }
        ) && !matches!(self, Op::VRead { op, .. } if !op.is_float())
            && !matches!(self, Op::Call { helper, .. } if helper.is_pure())
    }

    /// Whether the whole guest state must be current when the operation runs: it may
    /// fault, call Rust that reads the state, or leave the block.
    pub fn needs_state(&self) -> bool {
        matches!(
            self,
            Op::Load { .. }
                | Op::StateCarry { .. }
                | Op::Store { .. }
                | Op::VLoad { .. }
                | Op::VStore { .. }
                | Op::Call { .. }
                | Op::Interp { .. }
                | Op::TrapIf { .. }
                | Op::ExitIf { .. }
                | Op::Loop { .. }
                | Op::Exit { .. }
                | Op::ExitJump { .. }
                | Op::ExitToLoop { .. }
                | Op::X87Guard { .. }
        )
    }

    /// Whether control never falls through past the operation.
    pub fn ends_block(&self) -> bool {
        matches!(self, Op::Loop { t: None } | Op::Exit { .. } | Op::ExitJump { .. } | Op::ExitToLoop { .. })
    }
}

/// A block's operations, as built by the front end.
#[derive(Default)]
pub struct Block {
    pub ops: Vec<Op>,
    next_val: u32,
}

impl Block {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many values have been defined (values are numbered densely from 0).
    pub fn val_count(&self) -> usize {
        self.next_val as usize
    }

    fn fresh(&mut self) -> Val {
        let v = Val(self.next_val);
        self.next_val += 1;
        v
    }

    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    pub fn insn(&mut self, rip: u64, next: u64) {
        self.push(Op::Insn { rip, next });
    }

    pub fn konst(&mut self, v: u64) -> Val {
        let d = self.fresh();
        self.push(Op::Const { d, v });
        d
    }

    pub fn state_carry(&mut self) -> Val {
        let d = self.fresh();
        self.push(Op::StateCarry { d });
        d
    }

    pub fn get_cc_op(&mut self) -> Val {
        let d = self.fresh();
        self.push(Op::GetCcOp { d });
        d
    }

    pub fn get(&mut self, g: Global) -> Val {
        let d = self.fresh();
        self.push(Op::Get { d, g });
        d
    }

    pub fn set(&mut self, g: Global, s: Val) {
        self.push(Op::Set { g, s });
    }

    pub fn bin(&mut self, op: Bin, w: Width, a: Val, b: Val) -> Val {
        let d = self.fresh();
        self.push(Op::Bin { op, w, d, a, b });
        d
    }

    /// `a op constant`.
    pub fn bin_k(&mut self, op: Bin, w: Width, a: Val, k: u64) -> Val {
        let b = self.konst(k);
        self.bin(op, w, a, b)
    }

    pub fn un(&mut self, op: Un, w: Width, a: Val) -> Val {
        let d = self.fresh();
        self.push(Op::Un { op, w, d, a });
        d
    }

    pub fn setcond(&mut self, t: Test) -> Val {
        let d = self.fresh();
        self.push(Op::Setcond { t, d });
        d
    }

    pub fn select(&mut self, t: Test, a: Val, b: Val) -> Val {
        let d = self.fresh();
        self.push(Op::Select { t, d, a, b });
        d
    }

    pub fn mul_overflow(&mut self, w: Width, a: Val, b: Val) -> Val {
        let d = self.fresh();
        self.push(Op::MulOverflow { w, d, a, b });
        d
    }

    /// Quotient (or remainder) of `hi:lo / div`, see [`Op::Div`].
    pub fn div(&mut self, rem: bool, w: Width, hi: Val, lo: Val, div: Val) -> Val {
        let d = self.fresh();
        self.push(Op::Div { rem, w, d, hi, lo, div });
        d
    }

    pub fn load(&mut self, w: Width, addr: Val) -> Val {
        let d = self.fresh();
        self.push(Op::Load { w, d, addr });
        d
    }

    pub fn store(&mut self, w: Width, addr: Val, s: Val) {
        self.push(Op::Store { w, addr, s });
    }

    pub fn vget(&mut self, s: VReg, w: Width, lane: u8) -> Val {
        let d = self.fresh();
        self.push(Op::VGet { d, s, w, lane });
        d
    }

    pub fn vread(&mut self, op: VRead, a: VReg, b: VReg) -> Val {
        let d = self.fresh();
        self.push(Op::VRead { op, d, a, b });
        d
    }

    pub fn vbin(&mut self, op: VBin, d: VReg, a: VReg, b: VReg, imm: u8) {
        self.push(Op::VBin { op, d, a, b, imm });
    }

    pub fn call(&mut self, helper: Helper) -> Val {
        let d = self.fresh();
        self.push(Op::Call { helper, d });
        d
    }

    pub fn x87_out(&mut self, f: X87Fmt, trunc: bool, r: u8) -> Val {
        let d = self.fresh();
        self.push(Op::X87Out { f, trunc, d, r });
        d
    }

    pub fn x87_cmp(&mut self, a: u8, b: u8, signal: bool) -> Val {
        let d = self.fresh();
        self.push(Op::X87Cmp { d, a, b, signal });
        d
    }

    /// A test that `a` (at width `w`) is nonzero.
    pub fn nonzero(&mut self, w: Width, a: Val) -> Test {
        let z = self.konst(0);
        Test { c: Cond::Ne, w, a, b: z }
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} {:?}.{} {}", self.a, self.c, self.w, self.b)
    }
}

impl fmt::Display for Block {
    /// One op per line, as `-d op` prints it.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for op in &self.ops {
            match op {
                Op::Insn { rip, .. } => writeln!(f, " ---- {rip:#x}")?,
                Op::Const { d, v } => writeln!(f, "{d} = {v:#x}")?,
                Op::Get { d, g } => writeln!(f, "{d} = {g:?}")?,
                Op::Set { g, s } => writeln!(f, "{g:?} = {s}")?,
                Op::Bin { op, w, d, a, b } => writeln!(f, "{d} = {op:?}.{w} {a}, {b}")?,
                Op::Un { op, w, d, a } => writeln!(f, "{d} = {op:?}.{w} {a}")?,
                Op::Setcond { t, d } => writeln!(f, "{d} = setcond {t}")?,
                Op::Select { t, d, a, b } => writeln!(f, "{d} = {t} ? {a} : {b}")?,
                Op::MulOverflow { w, d, a, b } => writeln!(f, "{d} = mulovf.{w} {a}, {b}")?,
                Op::Div { rem, w, d, hi, lo, div } => {
                    writeln!(f, "{d} = {}.{w} {hi}:{lo}, {div}", if *rem { "remu" } else { "divu" })?
                }
                Op::TrapIf { t, vector } => writeln!(f, "trap_if {t} -> #{vector}")?,
                Op::SetCcOp(CcOpSrc::Const(c)) => writeln!(f, "cc_op = {:?}.{}", c.kind(), c.width())?,
                Op::SetCcOp(CcOpSrc::Val(v)) => writeln!(f, "cc_op = {v}")?,
                Op::GetCcOp { d } => writeln!(f, "{d} = cc_op")?,
                Op::StateCarry { d } => writeln!(f, "{d} = carry of the state's record")?,
                Op::Load { w, d, addr } => writeln!(f, "{d} = load.{w} [{addr}]")?,
                Op::Store { w, addr, s } => writeln!(f, "store.{w} [{addr}], {s}")?,
                Op::Call { helper, d } => writeln!(f, "{d} = call {helper:?}")?,
                Op::VLoad { w, d, addr, align } => {
                    writeln!(f, "{d:?} = vload.{w}{} [{addr}]", if *align { "a" } else { "" })?
                }
                Op::VStore { w, addr, s, align } => {
                    writeln!(f, "vstore.{w}{} [{addr}], {s:?}", if *align { "a" } else { "" })?
                }
                Op::VBin { op, d, a, b, imm } => writeln!(f, "{d:?} = {op:?} {a:?}, {b:?}, {imm:#x}")?,
                Op::VGet { d, s, w, lane } => writeln!(f, "{d} = vget.{w} {s:?}[{lane}]")?,
                Op::VSet { d, s, w, lane, zero } => {
                    writeln!(f, "{d:?}[{lane}].{w} = {s}{}", if *zero { " (rest 0)" } else { "" })?
                }
                Op::VRead { op, d, a, b } => writeln!(f, "{d} = {op:?} {a:?}, {b:?}")?,
                Op::VWrite { op, d, a, s } => writeln!(f, "{d:?} = {op:?} {a:?}, {s}")?,
                Op::Interp { ins } => writeln!(f, "interp {ins:#x}")?,
                Op::ExitIf { t, rip } => writeln!(f, "exit_if {t} -> {rip:#x}")?,
                Op::Loop { t: Some(t) } => writeln!(f, "loop_if {t}")?,
                Op::Loop { t: None } => writeln!(f, "loop")?,
                Op::Exit { rip } => writeln!(f, "exit -> {rip:#x}")?,
                Op::ExitJump { rip } => writeln!(f, "exit_jump -> {rip}")?,
                Op::ExitToLoop { rip } => writeln!(f, "exit_to_loop {rip:#x}")?,
                Op::X87Guard { fcw, top, ftw, rip } => {
                    writeln!(f, "x87_guard fcw {fcw:#x} top {top} ftw {ftw:#04x} else step {rip:#x}")?
                }
                Op::X87In { f: fmt, r, s } => writeln!(f, "r{r} = x87_in.{fmt:?} {s}")?,
                Op::X87Out { f: fmt, trunc, d, r } => {
                    writeln!(f, "{d} = x87_out.{fmt:?}{} r{r}", if *trunc { "t" } else { "" })?
                }
                Op::X87SetRaw { r, lo, hi } => writeln!(f, "r{r} = x87_raw {hi}:{lo}")?,
                Op::X87Bin { op, r, a, b } => writeln!(f, "r{r} = x87 {op:?} r{a}, r{b}")?,
                Op::X87Un { op, r, a } => writeln!(f, "r{r} = x87 {op:?} r{a}")?,
                Op::X87BinMem { op, rev, f: fmt, r, a, s } => {
                    writeln!(f, "r{r} = x87 {op:?}{} r{a}, {s}.{fmt:?}", if *rev { "R" } else { "" })?
                }
                Op::X87Cmp { d, a, b, signal } => {
                    writeln!(f, "{d} = x87_{}comi r{a}, r{b}", if *signal { "" } else { "u" })?
                }
                Op::X87Stack { top, ftw, clear_c1 } => {
                    writeln!(f, "x87 top {top} ftw {ftw:#04x}{}", if *clear_c1 { " c1=0" } else { "" })?
                }
            }
        }
        Ok(())
    }
}
