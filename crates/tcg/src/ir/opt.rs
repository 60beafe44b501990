//! Passes over a block: forwarding of globals, constant folding and copy
//! propagation (one forward walk), then dead-code removal (one backward walk) that
//! also drops writes of globals overwritten before anything can read them.
//!
//! Every operation declares what it reads and whether it has effects
//! ([`Op::for_each_use`], [`Op::has_effect`], [`Op::needs_state`]), so nothing here
//! knows about particular guest instructions: a flag computation nobody reads, or a
//! register write overwritten by the next instruction, is removed like any dead value.

use super::{Bin, Block, Cond, Global, Op, Test, Un, Val};
use crate::flags::{mask, Width};

/// Runs every pass.
pub fn optimize(b: &mut Block) {
    forward(b);
    dead_code(b);
}

/// What the forward walk knows about a value.
#[derive(Clone, Copy, Default)]
struct Fact {
    konst: Option<u64>,
    /// The value is zero above this many bytes (8: nothing known).
    zext: Width,
}

fn fold_bin(op: Bin, w: Width, a: u64, b: u64) -> u64 {
    let m = mask(w);
    let bits = 8 * w as u32;
    let count = (b & if w == 8 { 63 } else { 31 }) as u32;
    let sext = |x: u64| {
        let sh = 64 - bits;
        (((x & m) << sh) as i64 >> sh) as u64
    };
    let r = match op {
        Bin::Add => a.wrapping_add(b),
        Bin::Sub => a.wrapping_sub(b),
        Bin::And => a & b,
        Bin::Or => a | b,
        Bin::Xor => a ^ b,
        Bin::Mul => a.wrapping_mul(b),
        Bin::MulHu => ((u128::from(a & m) * u128::from(b & m)) >> bits) as u64,
        Bin::MulHs => ((i128::from(sext(a) as i64) * i128::from(sext(b) as i64)) >> bits) as u64,
        Bin::Shl => {
            if count >= bits {
                0
            } else {
                (a & m) << count
            }
        }
        Bin::Shr => {
            if count >= bits {
                0
            } else {
                (a & m) >> count
            }
        }
        Bin::Sar => ((sext(a) as i64) >> count.min(bits - 1).min(63)) as u64,
        Bin::Rol | Bin::Ror => {
            let n = count % bits;
            let v = a & m;
            if n == 0 {
                v
            } else if op == Bin::Rol {
                (v << n) | (v >> (bits - n))
            } else {
                (v >> n) | (v << (bits - n))
            }
        }
    };
    r & m
}

fn fold_un(op: Un, w: Width, a: u64) -> u64 {
    let m = mask(w);
    match op {
        Un::Neg => a.wrapping_neg() & m,
        Un::Not => !a & m,
        Un::Bswap => {
            if w == 8 {
                a.swap_bytes()
            } else {
                (a as u32).swap_bytes() as u64
            }
        }
        Un::Sext => {
            let sh = 64 - 8 * w as u32;
            (((a & m) << sh) as i64 >> sh) as u64
        }
        Un::Zext => a & m,
        Un::Parity => u64::from((a as u8).count_ones().is_multiple_of(2)),
        Un::Ctz => u64::from((a & m).trailing_zeros().min(8 * w as u32)),
        Un::Clz => u64::from((a & m).leading_zeros() - (64 - 8 * w as u32)),
        Un::Popcnt => u64::from((a & m).count_ones()),
    }
}

/// Forwarding of globals, constant folding, copy propagation.
fn forward(b: &mut Block) {
    let n = b.val_count();
    let mut facts = vec![Fact { konst: None, zext: 8 }; n];
    // repl[v]: the value v is a copy of.
    let mut repl: Vec<Val> = (0..n as u32).map(Val).collect();
    // The value each global holds, when known since the last state change.
    let mut globals: [Option<Val>; Global::COUNT] = [None; Global::COUNT];
    let ops = std::mem::take(&mut b.ops);
    let mut out = Vec::with_capacity(ops.len());
    // ext[v]: v = Zext/Sext of `w` bytes of another value (an operation reading only
    // `w` bytes or fewer of v can read that value instead).
    let mut ext: Vec<Option<(Width, Val)>> = vec![None; n];
    for mut op in ops {
        op.map_uses(|v| repl[v.0 as usize]);
        narrow_uses(&mut op, &ext);
        if let Op::Un { op: Un::Zext | Un::Sext, w, d, a } = op {
            ext[d.0 as usize] = Some((w, a));
        }
        let k = |v: Val, facts: &[Fact]| facts[v.0 as usize].konst;
        let z = |v: Val, facts: &[Fact]| facts[v.0 as usize].zext;
        // Replaces `op`'s definition of `d` by a copy of `s` (dropping the op).
        let mut copy_of = |d: Val, s: Val| {
            repl[d.0 as usize] = s;
        };
        match op {
            Op::Const { d, v } => {
                let zext = if v <= 0xff {
                    1
                } else if v <= 0xffff {
                    2
                } else if v <= 0xffff_ffff {
                    4
                } else {
                    8
                };
                facts[d.0 as usize] = Fact { konst: Some(v), zext };
            }
            Op::Get { d, g } => {
                if let Some(s) = globals[g.index()] {
                    copy_of(d, s);
                    continue;
                }
                globals[g.index()] = Some(d);
            }
            Op::Set { g, s } => {
                globals[g.index()] = Some(s);
            }
            Op::Bin { op: bop, w, d, a, b: bb } => {
                if let (Some(x), Some(y)) = (k(a, &facts), k(bb, &facts)) {
                    let v = fold_bin(bop, w, x, y);
                    op = Op::Const { d, v };
                    facts[d.0 as usize] = Fact { konst: Some(v), zext: w };
                } else {
                    // Identities that leave `a` as it is when it already fits in w.
                    let kb = k(bb, &facts);
                    let ka = k(a, &facts);
                    let identity = match (bop, kb) {
                        (Bin::Add | Bin::Sub | Bin::Or | Bin::Xor | Bin::Shl | Bin::Shr | Bin::Sar, Some(0)) => true,
                        (Bin::And, Some(m)) => m & mask(w) == mask(w),
                        _ => false,
                    };
                    if identity && z(a, &facts) <= w {
                        copy_of(d, a);
                        continue;
                    }
                    let commuted = match (bop, ka) {
                        (Bin::Add | Bin::Or | Bin::Xor, Some(0)) => true,
                        (Bin::And, Some(m)) => m & mask(w) == mask(w),
                        _ => false,
                    };
                    if commuted && z(bb, &facts) <= w {
                        copy_of(d, bb);
                        continue;
                    }
                    let zext = match bop {
                        Bin::And => z(a, &facts).min(z(bb, &facts)).min(w),
                        _ => w,
                    };
                    facts[d.0 as usize] = Fact { konst: None, zext };
                }
            }
            Op::Un { op: uop, w, d, a } => {
                if let Some(x) = k(a, &facts) {
                    let v = fold_un(uop, w, x);
                    op = Op::Const { d, v };
                    facts[d.0 as usize] = Fact { konst: Some(v), zext: 8 };
                } else if uop == Un::Zext && z(a, &facts) <= w {
                    copy_of(d, a);
                    continue;
                } else {
                    let zext = match uop {
                        Un::Sext => 8,
                        Un::Parity | Un::Ctz | Un::Clz | Un::Popcnt => 1,
                        _ => w,
                    };
                    facts[d.0 as usize] = Fact { konst: None, zext };
                }
            }
            Op::Setcond { t, d } => {
                if let Some(v) = fold_test(&t, &facts) {
                    op = Op::Const { d, v: u64::from(v) };
                    facts[d.0 as usize] = Fact { konst: Some(u64::from(v)), zext: 1 };
                } else {
                    facts[d.0 as usize] = Fact { konst: None, zext: 1 };
                }
            }
            Op::Select { t, d, a, b: bb } => {
                if let Some(v) = fold_test(&t, &facts) {
                    copy_of(d, if v { a } else { bb });
                    continue;
                }
                if a == bb {
                    copy_of(d, a);
                    continue;
                }
                facts[d.0 as usize] = Fact { konst: None, zext: z(a, &facts).max(z(bb, &facts)) };
            }
            Op::MulOverflow { d, .. } => facts[d.0 as usize] = Fact { konst: None, zext: 1 },
            Op::Div { rem, w, d, hi, lo, div } => {
                let m = mask(w);
                let folded = match (k(hi, &facts), k(lo, &facts), k(div, &facts)) {
                    (Some(h), Some(l), Some(v)) if h & m < v & m => {
                        let bits = 8 * w as u32;
                        let n = u128::from(h & m) << bits | u128::from(l & m);
                        let v = u128::from(v & m);
                        Some((if rem { n % v } else { n / v }) as u64)
                    }
                    _ => None,
                };
                match folded {
                    Some(v) => {
                        op = Op::Const { d, v };
                        facts[d.0 as usize] = Fact { konst: Some(v), zext: w };
                    }
                    None => facts[d.0 as usize] = Fact { konst: None, zext: w },
                }
            }
            Op::TrapIf { t, .. } if fold_test(&t, &facts) == Some(false) => continue,
            Op::Load { w, d, .. } | Op::VGet { w, d, .. } => facts[d.0 as usize] = Fact { konst: None, zext: w },
            Op::ExitIf { t, rip } => match fold_test(&t, &facts) {
                Some(true) => op = Op::Exit { rip },
                Some(false) => continue,
                None => {}
            },
            Op::Loop { t: Some(t) } => match fold_test(&t, &facts) {
                Some(true) => op = Op::Loop { t: None },
                Some(false) => continue,
                None => {}
            },
            Op::Interp { .. } => globals = [None; Global::COUNT],
            _ => {}
        }
        let ends = op.ends_block();
        out.push(op);
        if ends {
            break;
        }
    }
    b.ops = out;
}

/// Operations that read only the low `w` bytes of an input take it from before a
/// zero or sign extension of at least that width (the extension often dies then).
fn narrow_uses(op: &mut Op, ext: &[Option<(Width, Val)>]) {
    let bypass = |v: &mut Val, w: Width| {
        if let Some((ew, src)) = ext[v.0 as usize] {
            if ew >= w {
                *v = src;
            }
        }
    };
    match op {
        Op::Bin { op: b, w, a, b: y, .. } if *w < 8 => {
            bypass(a, *w);
            // A count is read modulo 32 (64 at width 8): its low byte suffices.
            let yw = if matches!(b, Bin::Shl | Bin::Shr | Bin::Sar | Bin::Rol | Bin::Ror) { 1 } else { *w };
            bypass(y, yw);
        }
        Op::Un { op: Un::Neg | Un::Not | Un::Bswap | Un::Zext | Un::Sext, w, a, .. } if *w < 8 => bypass(a, *w),
        Op::Un { op: Un::Parity, a, .. } => bypass(a, 1),
        Op::Setcond { t, .. } | Op::Select { t, .. } if t.w < 8 => {
            let w = t.w;
            bypass(&mut t.a, w);
            bypass(&mut t.b, w);
        }
        Op::Store { w, s, .. } if *w < 8 => bypass(s, *w),
        Op::MulOverflow { w, a, b, .. } if *w < 8 => {
            bypass(a, *w);
            bypass(b, *w);
        }
        _ => {}
    }
}

fn fold_test(t: &Test, facts: &[Fact]) -> Option<bool> {
    if t.a == t.b {
        return Some(matches!(t.c, Cond::Eq | Cond::Geu | Cond::Leu | Cond::Ge | Cond::Le));
    }
    let a = facts[t.a.0 as usize].konst?;
    let b = facts[t.b.0 as usize].konst?;
    Some(t.c.eval(t.w, a, b))
}

/// Removes operations whose results nothing reads, and writes of globals (and of the
/// flag operation) that a later write replaces before the state can be observed.
fn dead_code(b: &mut Block) {
    let mut live = vec![false; b.val_count()];
    // Globals written later with no possible reader in between.
    let mut overwritten = [false; Global::COUNT];
    let mut cc_op_overwritten = false;
    let mut keep = vec![true; b.ops.len()];
    // A store onto translated code leaves the block once its instruction is done, so
    // the state must be complete at the end of every instruction that stores.
    let mut state_at = vec![false; b.ops.len()];
    let mut stored = false;
    for (i, op) in b.ops.iter().enumerate() {
        match op {
            Op::Insn { .. } => {
                state_at[i] = stored;
                stored = false;
            }
            Op::Store { .. } | Op::VStore { .. } => stored = true,
            _ => {}
        }
    }
    for (i, op) in b.ops.iter().enumerate().rev() {
        if state_at[i] {
            overwritten = [false; Global::COUNT];
            cc_op_overwritten = false;
        }
        let needed = match *op {
            Op::Set { g, .. } => {
                let dead = overwritten[g.index()];
                overwritten[g.index()] = true;
                !dead
            }
            Op::SetCcOp(_) => {
                let dead = cc_op_overwritten;
                cc_op_overwritten = true;
                !dead
            }
            Op::Get { d, g } => {
                let needed = live[d.0 as usize];
                if needed {
                    overwritten[g.index()] = false;
                }
                needed
            }
            Op::GetCcOp { d } => {
                let needed = live[d.0 as usize];
                if needed {
                    cc_op_overwritten = false;
                }
                needed
            }
            _ => op.has_effect() || op.def().is_some_and(|d| live[d.0 as usize]),
        };
        if !needed {
            keep[i] = false;
            continue;
        }
        if op.needs_state() {
            overwritten = [false; Global::COUNT];
            cc_op_overwritten = false;
        }
        op.for_each_use(|v| live[v.0 as usize] = true);
    }
    let mut i = 0;
    b.ops.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    // One walk suffices: every use of a value is visited before its definition.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::{CcKind, CcOp};
    use crate::ir::CcOpSrc;

    #[test]
    fn a_register_written_twice_is_stored_once() {
        let mut b = Block::new();
        let x = b.konst(5);
        b.set(Global::Gpr(0), x);
        let y = b.get(Global::Gpr(0));
        let z = b.bin_k(Bin::Add, 8, y, 1);
        b.set(Global::Gpr(0), z);
        b.push(Op::Exit { rip: 0 });
        optimize(&mut b);
        let sets: Vec<_> = b.ops.iter().filter(|o| matches!(o, Op::Set { .. })).collect();
        assert_eq!(sets.len(), 1);
        // 5 + 1 folded.
        assert!(b.ops.iter().any(|o| matches!(o, Op::Const { v: 6, .. })), "{b}");
    }

    #[test]
    fn a_flag_record_replaced_before_any_reader_is_dropped() {
        let mut b = Block::new();
        let a = b.get(Global::Gpr(1));
        let r = b.bin_k(Bin::Rol, 4, a, 3);
        b.set(Global::CcDst, r);
        b.push(Op::SetCcOp(CcOpSrc::Const(CcOp::new(CcKind::Logic, 4))));
        b.set(Global::Gpr(1), r);
        let c = b.get(Global::Gpr(2));
        let d = b.bin_k(Bin::Sub, 4, c, 1);
        b.set(Global::CcDst, d);
        b.push(Op::SetCcOp(CcOpSrc::Const(CcOp::new(CcKind::Dec, 4))));
        b.set(Global::Gpr(2), d);
        b.push(Op::Exit { rip: 0 });
        optimize(&mut b);
        let cc_sets = b.ops.iter().filter(|o| matches!(o, Op::Set { g: Global::CcDst, .. } | Op::SetCcOp(_))).count();
        assert_eq!(cc_sets, 2, "{b}");
    }

    #[test]
    fn a_fault_point_keeps_the_record_it_may_expose() {
        let mut b = Block::new();
        let a = b.get(Global::Gpr(1));
        b.set(Global::CcDst, a);
        let v = b.load(4, a);
        b.set(Global::CcDst, v);
        b.push(Op::Exit { rip: 0 });
        optimize(&mut b);
        let n = b.ops.iter().filter(|o| matches!(o, Op::Set { g: Global::CcDst, .. })).count();
        assert_eq!(n, 2, "{b}");
    }

    #[test]
    fn folding_matches_width_rules() {
        assert_eq!(fold_bin(Bin::Shl, 1, 0x81, 1), 0x02);
        assert_eq!(fold_bin(Bin::Sar, 1, 0x80, 3), 0xf0);
        assert_eq!(fold_bin(Bin::Rol, 2, 0x8001, 17), 0x0003);
        assert_eq!(fold_bin(Bin::Shr, 4, 0xffff_ffff_0000_0010, 4), 1);
        assert_eq!(fold_bin(Bin::Shl, 8, 1, 64), 1);
        assert_eq!(fold_un(Un::Sext, 2, 0x8000), 0xffff_ffff_ffff_8000);
        assert_eq!(fold_un(Un::Parity, 1, 3), 1);
        assert_eq!(fold_bin(Bin::MulHu, 8, u64::MAX, u64::MAX), u64::MAX - 1);
        assert_eq!(fold_bin(Bin::MulHs, 8, u64::MAX, u64::MAX), 0);
        assert_eq!(fold_bin(Bin::MulHs, 1, 0x80, 0x7f), 0xc0);
        assert_eq!(fold_bin(Bin::MulHu, 4, 0xffff_ffff, 2), 1);
        assert_eq!(fold_un(Un::Ctz, 2, 0x1_0000), 16);
        assert_eq!(fold_un(Un::Clz, 4, 1), 31);
        assert_eq!(fold_un(Un::Clz, 1, 0), 8);
        assert_eq!(fold_un(Un::Popcnt, 2, 0xf_ffff), 16);
    }
}
