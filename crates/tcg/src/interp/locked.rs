//! Read-modify-write instructions on memory as host atomics: LOCK-prefixed ADD, OR,
//! ADC, SBB, AND, SUB, XOR, INC, DEC, NEG, NOT, BTS, BTR, BTC, and XCHG, XADD, CMPXCHG,
//! CMPXCHG8B and CMPXCHG16B with a memory operand (locked or not).
//!
//! The front end sends the locked ones here when more than one vCPU runs (with one,
//! the inline load-operate-store is atomic enough: nothing else runs during an
//! instruction); unlocked exchanges it does not lower come here too. The
//! operation is a compare-and-swap loop on the guest RAM's host bytes, so it is atomic
//! against other vCPUs' plain stores too (a spin unlock is a plain byte store into the
//! word other CPUs CMPXCHG), against DMA, and a full barrier, as x86's locked
//! operations are. Operands that are not naturally aligned RAM within one page
//! (split locks, MMIO) are done under one process-wide lock instead: atomic against
//! each other but not against plain stores, which hardware makes slow for the same
//! reason and Linux reports as a bug.

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;

use iced_x86::{Instruction, Mnemonic, OpKind, Register};
use quern_core::regs::flags::{CF, ZF};

use super::bits::{bit_unit_linear, update_flags};
use super::{read_reg, set_cc, write_reg, Operands, Step};
use crate::cpu::{Cpu, Exception, Result};
use crate::flags::{mask, CcKind, Width};
use crate::mmu::Access;

/// Whether `ins` is a read-modify-write of memory this family runs: the exchanges
/// (XCHG, XADD, CMPXCHG, CMPXCHG8B, CMPXCHG16B) with a memory operand, locked or not
/// (atomic is a correct way to run the unlocked ones, and their semantics then live
/// here alone; `atomic` has the register forms), and the LOCK-prefixed ALU, bit and
/// unary operations.
pub fn handles(ins: &Instruction) -> bool {
    use Mnemonic::*;
    let memory = (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory);
    memory
        && (matches!(ins.mnemonic(), Xchg | Xadd | Cmpxchg | Cmpxchg8b | Cmpxchg16b)
            || ins.has_lock_prefix()
                && matches!(
                    ins.mnemonic(),
                    Add | Or | Adc | Sbb | And | Sub | Xor | Inc | Dec | Neg | Not | Bts | Btr | Btc
                ))
}

/// Whether `ins` must be atomic against other vCPUs: a locked read-modify-write (XCHG
/// with memory is locked without the prefix). With several vCPUs the front end leaves
/// these to this family instead of lowering them.
pub fn needs_host_atomic(ins: &Instruction) -> bool {
    handles(ins) && (ins.has_lock_prefix() || ins.mnemonic() == Mnemonic::Xchg)
}

/// Serializes the locked operations host atomics cannot do.
static SPLIT_LOCK: Mutex<()> = Mutex::new(());

/// Replaces the `w` bytes at linear `lin` by `f(old)` (unchanged when `f` gives
/// `None`) atomically; returns the old value. Faults (a read-only page, #PF) come
/// before anything is written.
fn rmw(cpu: &mut Cpu, lin: u64, w: Width, f: impl Fn(u64) -> Option<u64>) -> Result<u64> {
    let lin = cpu.wrap_linear(lin);
    let aligned = lin.is_multiple_of(u64::from(w));
    if aligned {
        if let Some(p) = cpu.host_span(lin, w as usize, Access::Write)? {
            // SAFETY: `host_span` found the `w` bytes inside one page of guest RAM, which
            // lives as long as `cpu.mem`; they are naturally aligned; guest RAM is only
            // ever accessed through raw pointers and atomics, never references.
            let old = unsafe { cas_loop(p, w, &f) };
            cpu.span_written();
            return Ok(old);
        }
    }
    let _serial = SPLIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let old = cpu.read_n(lin, w)?;
    // The write cycle happens either way, as on the CPU (a read-only page faults).
    cpu.write_n(lin, f(old).unwrap_or(old), w)?;
    Ok(old)
}

/// The compare-and-swap loop on `w` aligned host bytes at `p`.
///
/// # Safety
/// `p` must be valid for `w` bytes, aligned to `w`, and accessed by others only
/// through atomics or raw pointers.
unsafe fn cas_loop(p: *mut u8, w: Width, f: &dyn Fn(u64) -> Option<u64>) -> u64 {
    macro_rules! cas {
        ($atomic:ty, $int:ty) => {{
            // SAFETY: the caller's contract.
            let a = unsafe { <$atomic>::from_ptr(p.cast::<$int>()) };
            let mut cur = a.load(Ordering::SeqCst);
            loop {
                let Some(new) = f(u64::from(cur)) else {
                    // A failed CMPXCHG is still a locked access: a full barrier.
                    std::sync::atomic::fence(Ordering::SeqCst);
                    return u64::from(cur);
                };
                match a.compare_exchange_weak(cur, new as $int, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return u64::from(cur),
                    Err(now) => cur = now,
                }
            }
        }};
    }
    match w {
        1 => cas!(AtomicU8, u8),
        2 => cas!(AtomicU16, u16),
        4 => cas!(AtomicU32, u32),
        _ => cas!(AtomicU64, u64),
    }
}

/// Runs `ins` (see [`handles`]).
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    use Mnemonic::*;
    if !handles(ins) {
        return Ok(None);
    }
    let m = ins.mnemonic();
    if matches!(m, Cmpxchg8b | Cmpxchg16b) {
        cmpxchg_wide(cpu, ins)?;
        return Ok(Some(Step::Next));
    }
    let o = Operands { cpu, ins };
    // XCHG may name its memory operand second.
    let (mi, ri) = if ins.op0_kind() == OpKind::Memory { (0, 1) } else { (1, 0) };
    let w = o.width(mi);
    let src = if ins.op_count() > 1 { Operands { cpu, ins }.read(ri)? } else { 0 };
    let o = Operands { cpu, ins };
    let lin = if matches!(m, Bts | Btr | Btc) { bit_unit_linear(&o, src) } else { o.linear() };
    let cf_in = cpu.state.flags() & CF;
    let k = mask(w);
    match m {
        Xchg => {
            let old = rmw(cpu, lin, w, |_| Some(src))?;
            write_reg(cpu, ins.op_register(ri), old);
        }
        Xadd => {
            let old = rmw(cpu, lin, w, |v| Some(v.wrapping_add(src) & k))?;
            write_reg(cpu, ins.op_register(1), old);
            set_cc(cpu, CcKind::Add, w, old.wrapping_add(src), src, 0);
        }
        Cmpxchg => {
            let acc = match w {
                1 => Register::AL,
                2 => Register::AX,
                4 => Register::EAX,
                _ => Register::RAX,
            };
            let a = read_reg(cpu, acc);
            let old = rmw(cpu, lin, w, |v| (v == a).then_some(src))?;
            if old != a {
                write_reg(cpu, acc, old);
            }
            set_cc(cpu, CcKind::Sub, w, a.wrapping_sub(old), old, 0);
        }
        Add | Or | Adc | Sbb | And | Sub | Xor => {
            let c = if matches!(m, Adc | Sbb) { cf_in } else { 0 };
            let op = |v: u64| -> u64 {
                match m {
                    Add => v.wrapping_add(src),
                    Adc => v.wrapping_add(src).wrapping_add(c),
                    Sub => v.wrapping_sub(src),
                    Sbb => v.wrapping_sub(src).wrapping_sub(c),
                    Or => v | src,
                    And => v & src,
                    _ => v ^ src,
                }
            };
            let old = rmw(cpu, lin, w, |v| Some(op(v) & k))?;
            let kind = match m {
                Add => CcKind::Add,
                Adc => CcKind::Adc,
                Sub => CcKind::Sub,
                Sbb => CcKind::Sbb,
                _ => CcKind::Logic,
            };
            set_cc(cpu, kind, w, op(old), src, c);
        }
        Inc | Dec => {
            let d = if m == Inc { 1 } else { u64::MAX };
            let old = rmw(cpu, lin, w, |v| Some(v.wrapping_add(d) & k))?;
            set_cc(cpu, if m == Inc { CcKind::Inc } else { CcKind::Dec }, w, old.wrapping_add(d), 0, cf_in);
        }
        Neg => {
            let old = rmw(cpu, lin, w, |v| Some(v.wrapping_neg() & k))?;
            set_cc(cpu, CcKind::Neg, w, old.wrapping_neg(), old, 0);
        }
        Not => {
            rmw(cpu, lin, w, |v| Some(!v & k))?;
        }
        Bts | Btr | Btc => {
            let bit = 1u64 << (src & (u64::from(w) * 8 - 1));
            let old = rmw(cpu, lin, w, |v| {
                Some(match m {
                    Bts => v | bit,
                    Btr => v & !bit,
                    _ => v ^ bit,
                })
            })?;
            update_flags(cpu, CF, u64::from(old & bit != 0));
        }
        _ => unreachable!("handles() admits no other mnemonic"),
    }
    Ok(Some(Step::Next))
}

/// CMPXCHG8B and CMPXCHG16B: EDX:EAX (RDX:RAX) against the memory operand; equal:
/// ECX:EBX (RCX:RBX) stored and ZF set, else the accumulator pair loaded.
fn cmpxchg_wide(cpu: &mut Cpu, ins: &Instruction) -> Result<()> {
    let wide = ins.mnemonic() == Mnemonic::Cmpxchg16b;
    let lin = Operands { cpu, ins }.linear();
    let lin = cpu.wrap_linear(lin);
    let s = &cpu.state;
    let equal;
    if wide {
        if lin & 15 != 0 {
            return Err(Exception::gp0());
        }
        let expect = u128::from(s.gpr[2]) << 64 | u128::from(s.gpr[0]);
        let new = u128::from(s.gpr[1]) << 64 | u128::from(s.gpr[3]);
        let old = match cpu.host_span(lin, 16, Access::Write)? {
            Some(p) => {
                // SAFETY: 16 aligned bytes of guest RAM in one page (as in `rmw`).
                let old = unsafe { cas128(p.cast(), expect, new) };
                cpu.span_written();
                old
            }
            None => {
                let _serial = SPLIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                let mut b = [0u8; 16];
                cpu.read(lin, &mut b)?;
                let old = u128::from_le_bytes(b);
                cpu.write(lin, &(if old == expect { new } else { old }).to_le_bytes())?;
                old
            }
        };
        equal = old == expect;
        if !equal {
            cpu.state.gpr[0] = old as u64;
            cpu.state.gpr[2] = (old >> 64) as u64;
        }
    } else {
        let expect = (s.gpr[2] & 0xffff_ffff) << 32 | (s.gpr[0] & 0xffff_ffff);
        let new = (s.gpr[1] & 0xffff_ffff) << 32 | (s.gpr[3] & 0xffff_ffff);
        let old = rmw(cpu, lin, 8, |v| (v == expect).then_some(new))?;
        equal = old == expect;
        if !equal {
            write_reg(cpu, Register::EAX, old & 0xffff_ffff);
            write_reg(cpu, Register::EDX, old >> 32);
        }
    }
    update_flags(cpu, ZF, if equal { ZF } else { 0 });
    Ok(())
}

/// A 16-byte compare-and-swap; returns the old value.
///
/// # Safety
/// `p` must be valid for 16 bytes, 16-aligned, accessed by others only through atomics
/// or raw pointers.
#[cfg(target_arch = "x86_64")]
unsafe fn cas128(p: *mut u128, expect: u128, new: u128) -> u128 {
    let (mut lo, mut hi) = (expect as u64, (expect >> 64) as u64);
    // SAFETY: the caller's contract; every x86-64 CPU that runs the JIT's host code
    // has CMPXCHG16B (x86-64-v2), and the instruction is what this emulates.
    unsafe {
        std::arch::asm!(
            "xchg {rbx_save}, rbx",
            "lock cmpxchg16b [{p}]",
            "mov rbx, {rbx_save}",
            p = in(reg) p,
            rbx_save = inout(reg) new as u64 => _,
            in("rcx") (new >> 64) as u64,
            inout("rax") lo,
            inout("rdx") hi,
            options(nostack),
        );
    }
    u128::from(hi) << 64 | u128::from(lo)
}

/// A 16-byte compare-and-swap; returns the old value.
///
/// # Safety
/// As on x86-64.
#[cfg(target_arch = "aarch64")]
unsafe fn cas128(p: *mut u128, expect: u128, new: u128) -> u128 {
    loop {
        let (lo, hi): (u64, u64);
        // SAFETY: the caller's contract; an exclusive pair load then a store-exclusive
        // that fails if anything wrote the bytes in between.
        unsafe {
            std::arch::asm!("ldaxp {lo}, {hi}, [{p}]", p = in(reg) p, lo = out(reg) lo, hi = out(reg) hi,
                options(nostack));
        }
        let old = u128::from(hi) << 64 | u128::from(lo);
        let store = if old == expect { new } else { old };
        let failed: u32;
        // SAFETY: as above.
        unsafe {
            std::arch::asm!("stlxp {st:w}, {lo}, {hi}, [{p}]", p = in(reg) p, st = out(reg) failed,
                lo = in(reg) store as u64, hi = in(reg) (store >> 64) as u64, options(nostack));
        }
        if failed == 0 {
            return old;
        }
    }
}

/// Hosts without an assembly version: under the split lock (the JIT has no backend
/// for them anyway).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn cas128(p: *mut u128, expect: u128, new: u128) -> u128 {
    let _serial = SPLIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the caller's contract.
    unsafe {
        let old = p.read_volatile();
        if old == expect {
            p.write_volatile(new);
        }
        old
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use iced_x86::code_asm::*;
    use quern_core::regs::flags::{CF, STATUS, ZF};

    use crate::cpu::Cpu;
    use crate::interp::testutil::{asm, cpu, cpu_on, decode, peek, poke};

    /// A CPU that moves to another thread (the test's; its machine pointers are unset).
    struct Sendable(Box<Cpu>);
    // SAFETY: the CPU is attached to nothing; it only reaches the shared guest memory.
    unsafe impl Send for Sendable {}

    const RBX: usize = 3;

    /// Runs one instruction on `c`.
    fn once(c: &mut Cpu, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> u64 {
        let ins = decode(c, &asm(64, f));
        super::exec(c, &ins).unwrap().expect("a locked instruction");
        c.state.flags()
    }

    /// Two threads, each on its own CPU over one guest memory, add to counters with
    /// every kind of locked operation: the totals come out exact only if each
    /// read-modify-write is atomic.
    #[test]
    fn locked_operations_from_two_threads_add_up() {
        const N: u64 = 20_000;
        let first = cpu(64);
        let mem = first.mem.clone();
        let second = cpu_on(mem.clone(), 64);
        let work = |s: Sendable| {
            std::thread::spawn(move || {
                let whole = s;
                let mut c = whole.0;
                let code = |f: fn(&mut CodeAssembler) -> Result<(), IcedError>| decode(&c, &asm(64, f));
                let xadd = code(|x| x.lock().xadd(dword_ptr(rbx), ecx));
                let inc = code(|x| x.lock().inc(qword_ptr(rbx + 8)));
                let add = code(|x| x.lock().add(word_ptr(rbx + 16), 3));
                let cmpxchg = code(|x| x.lock().cmpxchg(dword_ptr(rbx + 24), edx));
                let bts = code(|x| x.lock().btc(dword_ptr(rbx + 32), esi));
                let xchg = code(|x| x.xchg(qword_ptr(rbx + 40), rdi));
                c.state.gpr[RBX] = 0x5000;
                for i in 0..N {
                    c.state.gpr[1] = 1;
                    super::exec(&mut c, &xadd).unwrap();
                    super::exec(&mut c, &inc).unwrap();
                    super::exec(&mut c, &add).unwrap();
                    // A CMPXCHG loop: read, add one, retry until no one came between.
                    loop {
                        let v = c.mem.read_u32(0x5018).unwrap();
                        c.state.gpr[0] = u64::from(v);
                        c.state.gpr[2] = u64::from(v.wrapping_add(1));
                        super::exec(&mut c, &cmpxchg).unwrap();
                        if c.state.flags() & ZF != 0 {
                            break;
                        }
                    }
                    // Each thread flips its own bit; the other's flips must not undo it.
                    c.state.gpr[6] = c.state.gpr[15];
                    super::exec(&mut c, &bts).unwrap();
                    // An XCHG spin lock around a plain increment (a lost release would
                    // spin for ever: bounded, it fails the test instead).
                    for spins in 0.. {
                        assert!(spins < 100_000_000, "the XCHG spin lock was never released");
                        c.state.gpr[7] = 1;
                        super::exec(&mut c, &xchg).unwrap();
                        if c.state.gpr[7] == 0 {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    let v = c.mem.read_u64(0x5030).unwrap();
                    c.mem.write_u64(0x5030, v + 1).unwrap();
                    c.mem.write_u64(0x5028, 0).unwrap();
                    let _ = i;
                }
                Sendable(c)
            })
        };
        let (mut a, mut b) = (first, second);
        a.state.gpr[15] = 0;
        b.state.gpr[15] = 1;
        let (ta, tb) = (work(Sendable(a)), work(Sendable(b)));
        let (_a, _b) = (ta.join().unwrap(), tb.join().unwrap());
        assert_eq!(mem.read_u32(0x5000).unwrap() as u64, 2 * N, "lock xadd");
        assert_eq!(mem.read_u64(0x5008).unwrap(), 2 * N, "lock inc");
        assert_eq!(mem.read_u16(0x5010).unwrap() as u64, (6 * N) & 0xffff, "lock add");
        assert_eq!(mem.read_u32(0x5018).unwrap() as u64, 2 * N, "lock cmpxchg loop");
        assert_eq!(mem.read_u32(0x5020).unwrap(), 0, "lock btc: each bit flipped an even number of times");
        assert_eq!(mem.read_u64(0x5030).unwrap(), 2 * N, "xchg spin lock");
        let _ = Arc::strong_count(&mem);
    }

    /// The flags and results match the unlocked forms' (the interpreter's and the
    /// front end's, which the differential tests hold to the host CPU).
    #[test]
    fn flags_and_results() {
        let mut c = cpu(64);
        c.state.gpr[RBX] = 0x3000;
        poke(&mut c, 0x3000, &0xffu8.to_le_bytes());
        let f = once(&mut c, |x| x.lock().add(byte_ptr(rbx), 1));
        assert_eq!(peek(&mut c, 0x3000, 1), [0]);
        assert_eq!(f & (CF | ZF), CF | ZF);
        poke(&mut c, 0x3000, &0x8000_0000u32.to_le_bytes());
        let f = once(&mut c, |x| x.lock().dec(dword_ptr(rbx)));
        assert_eq!(peek(&mut c, 0x3000, 4), 0x7fff_ffffu32.to_le_bytes());
        assert_eq!(
            f & STATUS & !quern_core::regs::flags::AF & !quern_core::regs::flags::PF,
            quern_core::regs::flags::OF | CF,
            "OF set, CF kept"
        );
        c.state.gpr[1] = 37;
        poke(&mut c, 0x3000, &[0; 8]);
        let f = once(&mut c, |x| x.lock().bts(qword_ptr(rbx), rcx));
        assert_eq!(f & CF, 0);
        assert_eq!(peek(&mut c, 0x3000, 8), (1u64 << 37).to_le_bytes());
        // A register bit offset past the operand addresses the unit that holds it.
        c.state.gpr[1] = 64 + 3;
        once(&mut c, |x| x.lock().bts(qword_ptr(rbx), rcx));
        assert_eq!(peek(&mut c, 0x3008, 1), [8]);
        // CMPXCHG16B: mismatch loads RDX:RAX, match stores RCX:RBX.
        c.state.gpr[6] = 0x3010;
        poke(&mut c, 0x3010, &(5u128 << 64 | 6).to_le_bytes());
        (c.state.gpr[0], c.state.gpr[2], c.state.gpr[3], c.state.gpr[1]) = (0, 0, 7, 8);
        let f = once(&mut c, |x| x.lock().cmpxchg16b(xmmword_ptr(rsi)));
        assert_eq!((f & ZF, c.state.gpr[0], c.state.gpr[2]), (0, 6, 5));
        let f = once(&mut c, |x| x.lock().cmpxchg16b(xmmword_ptr(rsi)));
        assert_eq!(f & ZF, ZF);
        assert_eq!(peek(&mut c, 0x3010, 16), (8u128 << 64 | 7).to_le_bytes());
        // Misaligned (a split lock): still right, under the process-wide lock.
        c.state.gpr[RBX] = 0x3ffe;
        poke(&mut c, 0x3ffe, &0x0001_ffffu32.to_le_bytes());
        once(&mut c, |x| x.lock().inc(dword_ptr(rbx)));
        assert_eq!(c.mem.read_u32(0x3ffe).unwrap(), 0x0002_0000);
    }
}
