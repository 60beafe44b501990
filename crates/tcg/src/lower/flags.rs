//! The lazy flags as the front end sees them while it lowers a block.
//!
//! An instruction that sets flags does not write the state's record: it leaves a
//! pending [`Rec`] naming the values the flags derive from. A reader of a condition
//! gets a [`Test`] computed straight from those values (`cmp a, b; jl` becomes one
//! comparison of `a` and `b`); only an operation that needs the whole state (a memory
//! access that may fault, a helper, an exit) makes the record current first
//! ([`Flags::sync`]), and the dead-code pass removes whatever record a later one
//! replaces before anyone could see it. Nothing here keeps a list of which
//! instructions read or write which flags: each lowering says what it reads by
//! asking, and what it writes by setting a new record.

use quern_core::regs::flags::{CF, OF};

use crate::flags::{CcKind, CcOp, Width};
use crate::ir::{Bin, Block, CcOpSrc, Cond, Global, Helper, Op, Test, Un, Val};

/// A flag record: the operation and the values it was computed from.
#[derive(Clone, Copy, Debug)]
pub struct Rec {
    pub op: CcOp,
    /// The result.
    pub dst: Val,
    /// The second operand (or what the kind keeps there, see [`CcKind`]).
    pub src: Val,
    /// Carry-in, old CF or the original operand, by kind.
    pub src2: Val,
    /// ADD/SUB/ADC/SBB: the first operand, when the translator has it.
    pub a: Option<Val>,
}

/// CF (and OF) set by a rotate, CLC, BT.. over an older record that supplies the
/// other flags.
#[derive(Clone, Copy, Debug)]
pub struct Rotated {
    /// None: the older record is the state's.
    pub base: Option<Rec>,
    pub cf: Val,
    /// None: the older record's OF.
    pub of: Option<Val>,
    /// The state's record already says the same.
    pub stored: bool,
}

#[derive(Clone, Copy, Debug)]
#[allow(clippy::enum_variant_names)]
enum State {
    /// The state's record is current (block start, after a helper).
    Current,
    /// `stored`: the state's record already says the same.
    Rec {
        rec: Rec,
        stored: bool,
    },
    Rotated(Rotated),
}

pub struct Flags {
    state: State,
}

/// The single flags a condition combines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bit {
    C,
    Z,
    S,
    O,
    P,
}

impl Default for Flags {
    fn default() -> Self {
        Flags { state: State::Current }
    }
}

/// CF of a shift's record: bit [`CcOp::cf_pos`] of its `src`.
fn shift_cf(b: &mut Block, rec: &Rec) -> Val {
    let pos = rec.op.cf_pos();
    let s = if pos == 0 { rec.src } else { b.bin_k(Bin::Shr, 8, rec.src, u64::from(pos)) };
    b.bin_k(Bin::And, 8, s, 1)
}

fn sign_bit_of(b: &mut Block, w: Width, v: Val) -> Val {
    let s = b.bin_k(Bin::Shr, 8, v, 8 * w as u64 - 1);
    b.bin_k(Bin::And, 8, s, 1)
}

impl Flags {
    /// After a helper that may have changed the flags: the state has them.
    pub fn in_state(&mut self) {
        self.state = State::Current;
    }

    /// An instruction set every status flag.
    pub fn set(&mut self, rec: Rec) {
        self.state = State::Rec { rec, stored: false };
    }

    /// A rotate set CF and OF; the other flags stay as they were.
    pub fn set_cf_of(&mut self, cf: Val, of: Val) {
        self.state = State::Rotated(Rotated { base: self.base(), cf, of: Some(of), stored: false });
    }

    /// CF changed, the other flags kept (CLC, STC, CMC, BT..).
    pub fn set_cf(&mut self, cf: Val) {
        let of = match self.state {
            State::Rotated(r) => r.of,
            _ => None,
        };
        self.state = State::Rotated(Rotated { base: self.base(), cf, of, stored: false });
    }

    /// The record the flags other than CF and OF come from (None: the state's).
    fn base(&self) -> Option<Rec> {
        match self.state {
            State::Current => None,
            State::Rec { rec, .. } => Some(rec),
            State::Rotated(r) => r.base,
        }
    }

    /// Makes the state's record describe the current flags.
    pub fn sync(&mut self, b: &mut Block) {
        match self.state {
            State::Current | State::Rec { stored: true, .. } | State::Rotated(Rotated { stored: true, .. }) => {}
            State::Rec { rec, stored: false } => {
                store_rec(b, &rec);
                self.state = State::Rec { rec, stored: true };
            }
            State::Rotated(r) => {
                if r.base.is_none_or(|rec| rec.op.kind() != CcKind::Flags) {
                    // The older record with the new CF (and OF) beside it (see
                    // `CcOp::ROTATED`): no flags computed now.
                    let (base_op, clear) = match r.base {
                        Some(rec) => {
                            b.set(Global::CcDst, rec.dst);
                            b.set(Global::CcSrc, rec.src);
                            b.set(Global::CcSrc2, rec.src2);
                            (b.konst(u64::from(rec.op.0)), 0)
                        }
                        // The state's own, perhaps itself with a CF (and OF) beside
                        // it: those bits replaced, an OF kept when none is new.
                        None if r.of.is_some() => (b.get_cc_op(), 7 << CcOp::ROTATED_CF),
                        None => (b.get_cc_op(), 1 << CcOp::ROTATED_CF),
                    };
                    let base_op = b.bin_k(Bin::And, 8, base_op, !clear);
                    let c = b.bin_k(Bin::Shl, 8, r.cf, CcOp::ROTATED_CF as u64);
                    let mut op = b.bin(Bin::Or, 8, base_op, c);
                    if let Some(of) = r.of {
                        let o = b.bin_k(Bin::Shl, 8, of, CcOp::ROTATED_OF as u64);
                        op = b.bin(Bin::Or, 8, op, o);
                    }
                    let has_of = if r.of.is_some() { 1 << CcOp::ROTATED_HAS_OF } else { 0 };
                    let op = b.bin_k(Bin::Or, 8, op, u64::from(CcOp::ROTATED | has_of));
                    b.push(Op::SetCcOp(CcOpSrc::Val(op)));
                    self.state = State::Rotated(Rotated { stored: true, ..r });
                    return;
                }
                let all = self.all_from(b, r.base);
                let (cleared, new_of) = match r.of {
                    Some(of) => (CF | OF, Some(of)),
                    None => (CF, None),
                };
                let keep = b.bin_k(Bin::And, 8, all, !cleared);
                let mut merged = b.bin(Bin::Or, 8, keep, r.cf);
                if let Some(of) = new_of {
                    let o = b.bin_k(Bin::Shl, 8, of, 11);
                    merged = b.bin(Bin::Or, 8, merged, o);
                }
                let zero = b.konst(0);
                let rec = Rec { op: CcOp::new(CcKind::Flags, 8), dst: zero, src: merged, src2: zero, a: None };
                store_rec(b, &rec);
                self.state = State::Rec { rec, stored: true };
            }
        }
    }

    /// All six status flags as one value, for a rotate's merge.
    fn all_from(&mut self, b: &mut Block, base: Option<Rec>) -> Val {
        if let Some(rec) = base {
            if rec.op.kind() == CcKind::Flags {
                return rec.src;
            }
            store_rec(b, &rec);
        }
        b.call(Helper::Flags)
    }

    /// The record to compute a flag from; reading it from the state when it is only
    /// there (one helper call, whose result serves the rest of the block).
    fn rec(&mut self, b: &mut Block) -> Result<Rec, Rotated> {
        match self.state {
            State::Rec { rec, .. } => Ok(rec),
            State::Rotated(r) => Err(r),
            State::Current => {
                let v = b.call(Helper::Flags);
                let zero = b.konst(0);
                let rec = Rec { op: CcOp::new(CcKind::Flags, 8), dst: zero, src: v, src2: zero, a: None };
                self.state = State::Rec { rec, stored: true };
                Ok(rec)
            }
        }
    }

    /// CF as 0 or 1.
    pub fn carry(&mut self, b: &mut Block) -> Val {
        self.bit(b, Bit::C)
    }

    /// OF as 0 or 1.
    pub fn overflow(&mut self, b: &mut Block) -> Val {
        self.bit(b, Bit::O)
    }

    /// All six status flags (with AF) as one value in EFLAGS' layout.
    pub fn all(&mut self, b: &mut Block) -> Val {
        if let State::Rec { rec, .. } = self.state {
            if rec.op.kind() == CcKind::Flags {
                return rec.src;
            }
        }
        self.sync(b);
        if let State::Rec { rec, .. } = self.state {
            if rec.op.kind() == CcKind::Flags {
                return rec.src;
            }
        }
        // The state's record is current: the helper computes the flags from it, and
        // its result serves later readers.
        let v = b.call(Helper::Flags);
        let zero = b.konst(0);
        let rec = Rec { op: CcOp::new(CcKind::Flags, 8), dst: zero, src: v, src2: zero, a: None };
        self.state = State::Rec { rec, stored: true };
        v
    }

    fn bit(&mut self, b: &mut Block, bit: Bit) -> Val {
        // INC/DEC and ADC at a block's start: CF alone, without the flags helper when
        // the state's record is a common one.
        if let (State::Current, Bit::C) = (self.state, bit) {
            return b.state_carry();
        }
        let rec = match self.rec(b) {
            Ok(rec) => rec,
            Err(r) => match (bit, r.of) {
                (Bit::C, _) => return r.cf,
                (Bit::O, Some(of)) => return of,
                _ => match r.base {
                    Some(rec) => rec,
                    None => {
                        // The base is in the state; read it without disturbing the
                        // pending rotate.
                        let v = b.call(Helper::Flags);
                        let zero = b.konst(0);
                        Rec { op: CcOp::new(CcKind::Flags, 8), dst: zero, src: v, src2: zero, a: None }
                    }
                },
            },
        };
        rec_bit(b, &rec, bit)
    }

    /// The test for condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc).
    pub fn test(&mut self, b: &mut Block, cc: u8) -> Test {
        let neg = cc & 1 != 0;
        let t = self.test_pos(b, cc >> 1);
        if neg {
            Test { c: t.c.invert(), ..t }
        } else {
            t
        }
    }

    /// The test for the positive condition `n` (cc >> 1: O, B, E, BE, S, P, L, LE).
    fn test_pos(&mut self, b: &mut Block, n: u8) -> Test {
        if let State::Rec { rec, .. } = self.state {
            if let Some(t) = direct_test(b, &rec, n) {
                return t;
            }
        }
        let v = match n {
            0 => self.bit(b, Bit::O),
            1 => self.bit(b, Bit::C),
            2 => self.bit(b, Bit::Z),
            3 => {
                let c = self.bit(b, Bit::C);
                let z = self.bit(b, Bit::Z);
                b.bin(Bin::Or, 8, c, z)
            }
            4 => self.bit(b, Bit::S),
            5 => self.bit(b, Bit::P),
            6 => {
                let s = self.bit(b, Bit::S);
                let o = self.bit(b, Bit::O);
                b.bin(Bin::Xor, 8, s, o)
            }
            _ => {
                let s = self.bit(b, Bit::S);
                let o = self.bit(b, Bit::O);
                let lt = b.bin(Bin::Xor, 8, s, o);
                let z = self.bit(b, Bit::Z);
                b.bin(Bin::Or, 8, lt, z)
            }
        };
        b.nonzero(1, v)
    }
}

/// Writes a record into the state's globals.
fn store_rec(b: &mut Block, rec: &Rec) {
    b.set(Global::CcDst, rec.dst);
    b.set(Global::CcSrc, rec.src);
    b.set(Global::CcSrc2, rec.src2);
    b.push(Op::SetCcOp(CcOpSrc::Const(rec.op)));
}

/// A condition read off a record as one comparison, where the record allows it.
fn direct_test(b: &mut Block, rec: &Rec, n: u8) -> Option<Test> {
    let w = rec.op.width();
    let kind = rec.op.kind();
    if kind == CcKind::Flags {
        return None;
    }
    let zero = b.konst(0);
    let on_result = |c: Cond| Some(Test { c, w, a: rec.dst, b: zero });
    match (kind, n) {
        (CcKind::Sub, _) if rec.a.is_some() && !matches!(n, 0 | 4 | 5) => {
            let c = [Cond::Eq, Cond::Ltu, Cond::Eq, Cond::Leu, Cond::Eq, Cond::Eq, Cond::Lt, Cond::Le][n as usize];
            Some(Test { c, w, a: rec.a.unwrap(), b: rec.src })
        }
        (_, 2) => on_result(Cond::Eq),
        (_, 4) => on_result(Cond::Lt),
        (CcKind::Logic, 0 | 1) => Some(Test { c: Cond::Ne, w, a: zero, b: zero }),
        (CcKind::Logic, 3) => on_result(Cond::Eq),
        (CcKind::Logic, 6) => on_result(Cond::Lt),
        (CcKind::Logic, 7) => on_result(Cond::Le),
        _ => None,
    }
}

/// One flag (0 or 1) computed from a record.
fn rec_bit(b: &mut Block, rec: &Rec, bit: Bit) -> Val {
    let w = rec.op.width();
    let kind = rec.op.kind();
    if kind == CcKind::Flags {
        let shift = match bit {
            Bit::C => 0,
            Bit::P => 2,
            Bit::Z => 6,
            Bit::S => 7,
            Bit::O => 11,
        };
        let s = b.bin_k(Bin::Shr, 8, rec.src, shift);
        return b.bin_k(Bin::And, 8, s, 1);
    }
    let sb = 1u64 << (8 * w as u32 - 1);
    match bit {
        Bit::Z => {
            let z = b.konst(0);
            b.setcond(Test { c: Cond::Eq, w, a: rec.dst, b: z })
        }
        Bit::S => sign_bit_of(b, w, rec.dst),
        Bit::P => b.un(Un::Parity, 1, rec.dst),
        Bit::C => match kind {
            CcKind::Add => b.setcond(Test { c: Cond::Ltu, w, a: rec.dst, b: rec.src }),
            CcKind::Sub => {
                let a = first_operand(b, rec);
                b.setcond(Test { c: Cond::Ltu, w, a, b: rec.src })
            }
            CcKind::Adc | CcKind::Sbb => {
                // With a carry-in the borrow/carry also happens on equality.
                let a = first_operand(b, rec);
                let (lt, le) = if kind == CcKind::Adc {
                    (Test { c: Cond::Ltu, w, a: rec.dst, b: a }, Test { c: Cond::Leu, w, a: rec.dst, b: a })
                } else {
                    (Test { c: Cond::Ltu, w, a, b: rec.src }, Test { c: Cond::Leu, w, a, b: rec.src })
                };
                let x = b.setcond(lt);
                let y = b.setcond(le);
                let cin = b.nonzero(1, rec.src2);
                b.select(cin, y, x)
            }
            CcKind::Logic => b.konst(0),
            CcKind::Inc | CcKind::Dec => b.bin_k(Bin::And, 8, rec.src2, 1),
            CcKind::Shl | CcKind::Shr | CcKind::Sar => shift_cf(b, rec),
            CcKind::Mul | CcKind::Neg => {
                let z = b.konst(0);
                b.setcond(Test { c: Cond::Ne, w, a: rec.src, b: z })
            }
            CcKind::Eflags | CcKind::Flags => unreachable!("handled above"),
        },
        Bit::O => match kind {
            CcKind::Add | CcKind::Adc => {
                let a = first_operand(b, rec);
                let x = b.bin(Bin::Xor, 8, a, rec.dst);
                let y = b.bin(Bin::Xor, 8, rec.src, rec.dst);
                let v = b.bin(Bin::And, 8, x, y);
                sign_bit_of(b, w, v)
            }
            CcKind::Sub | CcKind::Sbb => {
                let a = first_operand(b, rec);
                let x = b.bin(Bin::Xor, 8, a, rec.src);
                let y = b.bin(Bin::Xor, 8, a, rec.dst);
                let v = b.bin(Bin::And, 8, x, y);
                sign_bit_of(b, w, v)
            }
            CcKind::Logic | CcKind::Sar => b.konst(0),
            CcKind::Inc | CcKind::Dec => {
                let k = if kind == CcKind::Inc { sb } else { sb - 1 };
                let kv = b.konst(k);
                b.setcond(Test { c: Cond::Eq, w, a: rec.dst, b: kv })
            }
            CcKind::Shl => {
                let s = sign_bit_of(b, w, rec.dst);
                let c = shift_cf(b, rec);
                b.bin(Bin::Xor, 8, s, c)
            }
            CcKind::Shr => sign_bit_of(b, w, rec.src2),
            CcKind::Mul => {
                let z = b.konst(0);
                b.setcond(Test { c: Cond::Ne, w, a: rec.src, b: z })
            }
            CcKind::Neg => {
                let v = b.bin(Bin::And, 8, rec.src, rec.dst);
                sign_bit_of(b, w, v)
            }
            CcKind::Eflags | CcKind::Flags => unreachable!("handled above"),
        },
    }
}

/// ADD/SUB's first operand: kept by the lowering, or recomputed from result and
/// second operand (and carry-in).
fn first_operand(b: &mut Block, rec: &Rec) -> Val {
    if let Some(a) = rec.a {
        return a;
    }
    let w = rec.op.width();
    match rec.op.kind() {
        CcKind::Add => b.bin(Bin::Sub, w, rec.dst, rec.src),
        CcKind::Adc => {
            let t = b.bin(Bin::Sub, w, rec.dst, rec.src);
            b.bin(Bin::Sub, w, t, rec.src2)
        }
        CcKind::Sub => b.bin(Bin::Add, w, rec.dst, rec.src),
        _ => {
            let t = b.bin(Bin::Add, w, rec.dst, rec.src);
            b.bin(Bin::Add, w, t, rec.src2)
        }
    }
}
