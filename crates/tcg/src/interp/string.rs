//! String instructions: MOVS, STOS, LODS, CMPS, SCAS, INS, OUTS (byte to quadword),
//! alone or with REP/REPE/REPNE.
//!
//! The source is seg:rSI (DS unless overridden), the destination ES:rDI (never
//! overridden); rSI, rDI and rCX are used at the instruction's address size and step by
//! the element size, down when EFLAGS.DF is set. A REP loop updates the registers after
//! every element (or every page-bounded chunk on the fast path), so a fault part-way
//! leaves a restartable state, and yields to the run loop every [`BATCH`] elements with
//! RIP still at the instruction, so interrupts are taken during long loops.

use iced_x86::{Code, Instruction, Register};
use quern_core::regs::flags::DF;

use super::{addr_mask, address_size_of, read_reg, set_cc, write_reg, Operands, Step};
use crate::cpu::{Cpu, Exception, Result};
use crate::flags::{CcKind, Width};
use crate::mmu::{Access, PAGE_MASK};
use crate::state::ES;
use crate::translate::seg_index;

/// Elements a REP loop runs before returning to the run loop.
pub const BATCH: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Movs,
    Stos,
    Lods,
    Cmps,
    Scas,
    Ins,
    Outs,
}

fn classify(code: Code) -> Option<(Op, Width)> {
    use Code::*;
    Some(match code {
        Movsb_m8_m8 => (Op::Movs, 1),
        Movsw_m16_m16 => (Op::Movs, 2),
        Movsd_m32_m32 => (Op::Movs, 4),
        Movsq_m64_m64 => (Op::Movs, 8),
        Stosb_m8_AL => (Op::Stos, 1),
        Stosw_m16_AX => (Op::Stos, 2),
        Stosd_m32_EAX => (Op::Stos, 4),
        Stosq_m64_RAX => (Op::Stos, 8),
        Lodsb_AL_m8 => (Op::Lods, 1),
        Lodsw_AX_m16 => (Op::Lods, 2),
        Lodsd_EAX_m32 => (Op::Lods, 4),
        Lodsq_RAX_m64 => (Op::Lods, 8),
        Cmpsb_m8_m8 => (Op::Cmps, 1),
        Cmpsw_m16_m16 => (Op::Cmps, 2),
        Cmpsd_m32_m32 => (Op::Cmps, 4),
        Cmpsq_m64_m64 => (Op::Cmps, 8),
        Scasb_AL_m8 => (Op::Scas, 1),
        Scasw_AX_m16 => (Op::Scas, 2),
        Scasd_EAX_m32 => (Op::Scas, 4),
        Scasq_RAX_m64 => (Op::Scas, 8),
        Insb_m8_DX => (Op::Ins, 1),
        Insw_m16_DX => (Op::Ins, 2),
        Insd_m32_DX => (Op::Ins, 4),
        Outsb_DX_m8 => (Op::Outs, 1),
        Outsw_DX_m16 => (Op::Outs, 2),
        Outsd_DX_m32 => (Op::Outs, 4),
        _ => return None,
    })
}

/// One string instruction's fixed parameters.
struct Str<'a> {
    ins: &'a Instruction,
    op: Op,
    w: Width,
    /// Address size in bits and its mask.
    bits: u32,
    amask: u64,
    /// Segment of the rSI operand.
    src_seg: usize,
    /// Per-element step of rSI/rDI, as a wrapping add.
    delta: u64,
}

const RCX: usize = 1;
const RSI: usize = 6;
const RDI: usize = 7;

impl Str<'_> {
    fn index(&self, cpu: &Cpu, r: usize) -> u64 {
        cpu.state.gpr[r] & self.amask
    }

    /// Writes an index register at the address size (16: merged, 32: zero-extended).
    fn set_index(&self, cpu: &mut Cpu, r: usize, v: u64) {
        let old = cpu.state.gpr[r];
        cpu.state.gpr[r] = match self.bits {
            16 => (old & !0xffff) | (v & 0xffff),
            32 => v & 0xffff_ffff,
            _ => v,
        };
    }

    fn advance(&self, cpu: &mut Cpu, r: usize, elems: u64) {
        let v = self.index(cpu, r).wrapping_add(self.delta.wrapping_mul(elems));
        self.set_index(cpu, r, v);
    }

    fn linear(&self, cpu: &mut Cpu, seg: usize, off: u64) -> u64 {
        Operands { cpu, ins: self.ins }.seg_linear(seg, off)
    }

    fn src(&self, cpu: &mut Cpu) -> u64 {
        let off = self.index(cpu, RSI);
        self.linear(cpu, self.src_seg, off)
    }

    fn dst(&self, cpu: &mut Cpu) -> u64 {
        let off = self.index(cpu, RDI);
        self.linear(cpu, ES, off)
    }

    fn acc(&self) -> Register {
        match self.w {
            1 => Register::AL,
            2 => Register::AX,
            4 => Register::EAX,
            _ => Register::RAX,
        }
    }

    /// Runs one element; returns whether a compare found the operands equal.
    fn one(&self, cpu: &mut Cpu) -> Result<bool> {
        let w = self.w;
        match self.op {
            Op::Movs => {
                let s = self.src(cpu);
                let v = cpu.read_n(s, w)?;
                let d = self.dst(cpu);
                cpu.write_n(d, v, w)?;
                self.advance(cpu, RSI, 1);
                self.advance(cpu, RDI, 1);
            }
            Op::Stos => {
                let d = self.dst(cpu);
                cpu.write_n(d, cpu.state.gpr[0], w)?;
                self.advance(cpu, RDI, 1);
            }
            Op::Lods => {
                let s = self.src(cpu);
                let v = cpu.read_n(s, w)?;
                write_reg(cpu, self.acc(), v);
                self.advance(cpu, RSI, 1);
            }
            Op::Cmps | Op::Scas => {
                let a = if self.op == Op::Cmps {
                    let s = self.src(cpu);
                    cpu.read_n(s, w)?
                } else {
                    read_reg(cpu, self.acc())
                };
                let d = self.dst(cpu);
                let b = cpu.read_n(d, w)?;
                set_cc(cpu, CcKind::Sub, w, a.wrapping_sub(b), b, 0);
                if self.op == Op::Cmps {
                    self.advance(cpu, RSI, 1);
                }
                self.advance(cpu, RDI, 1);
                return Ok(a == b);
            }
            Op::Ins => {
                let d = self.dst(cpu);
                // Probe the destination first: a fault must not lose the port read.
                cpu.translate(d, Access::Write)?;
                cpu.translate(cpu.wrap_linear(d.wrapping_add(u64::from(w) - 1)), Access::Write)?;
                let port = cpu.state.gpr[2] as u16;
                let mut b = [0xffu8; 8];
                if let Some(ops) = cpu.ops() {
                    ops.pio_read(port, &mut b[..w as usize]);
                }
                cpu.write(d, &b[..w as usize])?;
                self.advance(cpu, RDI, 1);
            }
            Op::Outs => {
                let s = self.src(cpu);
                let v = cpu.read_n(s, w)?;
                let port = cpu.state.gpr[2] as u16;
                if let Some(ops) = cpu.ops() {
                    ops.pio_write(port, &v.to_le_bytes()[..w as usize]);
                }
                self.advance(cpu, RSI, 1);
            }
        }
        Ok(false)
    }

    /// Elements from `off` (linear `lin`) before the page or the address space ends.
    fn room(&self, off: u64, lin: u64) -> u64 {
        let w = u64::from(self.w);
        let page = (4096 - (lin & !PAGE_MASK)) / w;
        let wrap = (self.amask - off) / w + 1;
        page.min(wrap)
    }

    /// REP MOVS/STOS forward fast path: up to `max` elements that stay inside one page
    /// on each side, copied in one access when both sides are RAM. Returns the number
    /// of elements done; 0 when the chunk would be under two elements or not RAM.
    fn chunk(&self, cpu: &mut Cpu, max: u64) -> Result<u64> {
        let w = u64::from(self.w);
        let di = self.index(cpu, RDI);
        let dst = self.dst(cpu);
        let mut n = max.min(self.room(di, dst));
        let mut src = 0;
        if self.op == Op::Movs {
            let si = self.index(cpu, RSI);
            src = self.src(cpu);
            n = n.min(self.room(si, src));
            // A destination just above the source must see the elements copied before
            // (the byte-replicating idiom): only copy what does not overlap.
            if dst > src && dst - src < n * w {
                n = n.min((dst - src) / w);
            }
        }
        if n < 2 {
            return Ok(0);
        }
        // Translate in the order the element loop accesses memory (source first), so
        // a fault is the one that loop would raise.
        let len = (n * w) as usize;
        let from = match self.op {
            Op::Movs => match cpu.host_span(src, len, Access::Read)? {
                Some(p) => Some(p),
                None => return Ok(0),
            },
            _ => None,
        };
        let Some(to) = cpu.host_span(dst, len, Access::Write)? else { return Ok(0) };
        // SAFETY: `host_span` found each side's `len` bytes inside one page of a RAM
        // (or, for the source, ROM) region, which lives as long as `cpu.mem`. The sides
        // may overlap only with the destination below the source (the case above
        // stops short of the other), where a memmove copies as the elements would.
        unsafe {
            match from {
                Some(from) => std::ptr::copy(from, to, len),
                None if w == 1 => std::ptr::write_bytes(to, cpu.state.gpr[0] as u8, len),
                None => {
                    let v = cpu.state.gpr[0];
                    for i in 0..n as usize {
                        match w {
                            2 => to.cast::<u16>().add(i).write_unaligned(v as u16),
                            4 => to.cast::<u32>().add(i).write_unaligned(v as u32),
                            _ => to.cast::<u64>().add(i).write_unaligned(v),
                        }
                    }
                }
            }
        }
        cpu.span_written();
        if self.op == Op::Movs {
            self.advance(cpu, RSI, n);
        }
        self.advance(cpu, RDI, n);
        Ok(n)
    }
}

/// Whether `ins` is a string instruction (`exec` returns `Some` or an error for it).
pub fn handles(ins: &Instruction) -> bool {
    classify(ins.code()).is_some()
}

/// Runs `ins` if it is a string instruction.
pub fn exec(cpu: &mut Cpu, ins: &Instruction) -> Result<Option<Step>> {
    let Some((op, w)) = classify(ins.code()) else { return Ok(None) };
    if matches!(op, Op::Ins | Op::Outs) {
        let s = &cpu.state;
        if s.protected() && (s.v86() || u64::from(s.cpl()) > (s.eflags >> 12) & 3) {
            return Err(Exception::gp0());
        }
    }
    let bits = address_size_of(ins, cpu.state.code_bits());
    let delta = if cpu.state.eflags & DF != 0 { (u64::from(w)).wrapping_neg() } else { u64::from(w) };
    let src_seg = seg_index(ins.memory_segment());
    let st = Str { ins, op, w, bits, amask: addr_mask(bits), src_seg, delta };

    let rep = ins.has_rep_prefix() || ins.has_repne_prefix();
    if !rep {
        st.one(cpu)?;
        return Ok(Some(Step::Next));
    }
    let compare = matches!(op, Op::Cmps | Op::Scas);
    // F3 on CMPS/SCAS is REPE (stop when different), F2 REPNE (stop when equal).
    let until_equal = ins.has_repne_prefix();
    let fast = matches!(op, Op::Movs | Op::Stos) && delta == u64::from(w);
    let io = matches!(op, Op::Ins | Op::Outs);
    let mut budget = BATCH;
    loop {
        let count = st.index(cpu, RCX);
        if count == 0 {
            break;
        }
        if budget == 0 {
            // Come back to finish after the run loop has looked for interrupts.
            cpu.state.rip = ins.ip();
            return Ok(Some(Step::Jump));
        }
        let mut n = if fast { st.chunk(cpu, count.min(budget))? } else { 0 };
        let mut equal = false;
        if n == 0 {
            equal = st.one(cpu)?;
            n = 1;
        }
        st.set_index(cpu, RCX, count - n);
        budget = budget.saturating_sub(n);
        if compare && equal == until_equal {
            break;
        }
        if io && cpu.ops().is_some_and(|o| o.stop_requested()) {
            budget = 0;
        }
    }
    Ok(Some(Step::Next))
}

#[cfg(test)]
// The comparisons with the host CPU run on x86-64 hosts only.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports, dead_code))]
mod tests {
    use super::*;
    use crate::interp::testutil::{self, asm, cpu, peek, poke, run, run_all, Ports, STATUS};
    use crate::state::DS;
    use quern_core::regs::flags::{CF, ZF};

    fn fill(cpu: &mut Cpu, a: u64, n: usize, f: impl Fn(usize) -> u8) {
        let v: Vec<u8> = (0..n).map(f).collect();
        poke(cpu, a, &v);
    }

    #[test]
    fn rep_movsb_copies_and_updates_registers() {
        let mut c = cpu(64);
        fill(&mut c, 0x10000, 10000, |i| (i * 7) as u8);
        c.state.gpr[RSI] = 0x10000;
        c.state.gpr[RDI] = 0x20003;
        c.state.gpr[RCX] = 10000;
        let code = asm(64, |a| a.rep().movsb());
        let rounds = run_all(&mut c, &code).unwrap();
        assert!(rounds >= 3, "10000 elements yield at least twice ({rounds} rounds)");
        assert_eq!(peek(&mut c, 0x20003, 10000), peek(&mut c, 0x10000, 10000));
        assert_eq!(c.state.gpr[RCX], 0);
        assert_eq!(c.state.gpr[RSI], 0x10000 + 10000);
        assert_eq!(c.state.gpr[RDI], 0x20003 + 10000);
        assert_eq!(c.state.rip, 0x1000 + code.len() as u64);
    }

    #[test]
    fn overlapping_forward_movs_replicates() {
        let mut c = cpu(32);
        poke(&mut c, 0x3000, &[0xab, 0xcd]);
        c.state.gpr[RSI] = 0x3000;
        c.state.gpr[RDI] = 0x3002;
        c.state.gpr[RCX] = 100;
        run_all(&mut c, &asm(32, |a| a.rep().movsw())).unwrap();
        let v = peek(&mut c, 0x3000, 202);
        assert!(v.chunks(2).all(|p| p == [0xab, 0xcd]));
    }

    #[test]
    fn movsd_backwards_with_df() {
        let mut c = cpu(64);
        fill(&mut c, 0x5000, 64, |i| i as u8);
        c.state.eflags |= DF;
        c.state.gpr[RSI] = 0x5000 + 60;
        c.state.gpr[RDI] = 0x6000 + 60;
        c.state.gpr[RCX] = 16;
        run_all(&mut c, &asm(64, |a| a.rep().movsd())).unwrap();
        assert_eq!(peek(&mut c, 0x6000, 64), peek(&mut c, 0x5000, 64));
        assert_eq!(c.state.gpr[RSI], 0x5000 - 4);
        assert_eq!(c.state.gpr[RDI], 0x6000 - 4);
    }

    #[test]
    fn rep_stosq_and_stosb_across_pages() {
        let mut c = cpu(64);
        c.state.gpr[0] = 0x1122_3344_5566_7788;
        c.state.gpr[RDI] = 0x7ff8;
        c.state.gpr[RCX] = 1000;
        run_all(&mut c, &asm(64, |a| a.rep().stosq())).unwrap();
        let v = peek(&mut c, 0x7ff8, 8000);
        assert!(v.chunks(8).all(|e| e == 0x1122_3344_5566_7788u64.to_le_bytes()));
        assert_eq!(c.state.gpr[RDI], 0x7ff8 + 8000);
        c.state.rip = 0x1000;
        c.state.gpr[RDI] = 0x20001;
        c.state.gpr[RCX] = 5;
        run_all(&mut c, &asm(64, |a| a.rep().stosb())).unwrap();
        assert_eq!(peek(&mut c, 0x20000, 7), [0, 0x88, 0x88, 0x88, 0x88, 0x88, 0]);
    }

    #[test]
    fn sixteen_bit_addresses_wrap_and_keep_the_high_halves() {
        let mut c = cpu(64);
        // addr32 in 64-bit mode: ESI/EDI/ECX, written zero-extended.
        c.state.gpr[RSI] = 0xdead_0000_0000_3000;
        c.state.gpr[RDI] = 0xbeef_0000_0000_4000;
        c.state.gpr[RCX] = 0xffff_0000_0000_0004;
        poke(&mut c, 0x3000, b"abcd");
        let code = [0x67, 0xf3, 0xa4]; // rep movsb with addr32
        run_all(&mut c, &code).unwrap();
        assert_eq!(peek(&mut c, 0x4000, 4), b"abcd");
        assert_eq!(c.state.gpr[RSI], 0x3004);
        assert_eq!(c.state.gpr[RDI], 0x4004);
        assert_eq!(c.state.gpr[RCX], 0);

        // Real mode: SI wraps at 64 KiB, the upper bits of ESI stay.
        let mut c = cpu(16);
        c.state.seg[DS].base = 0x20000;
        c.state.seg[ES].base = 0x30000;
        poke(&mut c, 0x2ffff, &[1]);
        poke(&mut c, 0x20000, &[2, 3]);
        c.state.gpr[RSI] = 0x1234_ffff;
        c.state.gpr[RDI] = 0x10;
        c.state.gpr[RCX] = 3;
        run_all(&mut c, &asm(16, |a| a.rep().movsb())).unwrap();
        assert_eq!(peek(&mut c, 0x30010, 3), [1, 2, 3]);
        assert_eq!(c.state.gpr[RSI], 0x1234_0002);
        assert_eq!(c.state.gpr[RCX], 0);
    }

    #[test]
    fn segment_override_applies_to_the_source_only() {
        let mut c = cpu(16);
        c.state.seg[crate::state::FS].base = 0x40000;
        c.state.seg[ES].base = 0x50000;
        poke(&mut c, 0x40020, &[0x5a]);
        c.state.gpr[RSI] = 0x20;
        c.state.gpr[RDI] = 0x30;
        run(&mut c, &[0x64, 0xa4]).unwrap(); // fs movsb
        assert_eq!(peek(&mut c, 0x50030, 1), [0x5a]);
        // LODS through the override.
        c.state.gpr[RSI] = 0x20;
        run(&mut c, &[0x64, 0xac]).unwrap(); // fs lodsb
        assert_eq!(c.state.gpr[0] & 0xff, 0x5a);
        assert_eq!(c.state.gpr[RSI], 0x21);
    }

    #[cfg(target_arch = "x86_64")]
    /// The host's REPE/REPNE CMPSB/SCASB over the same bytes as the guest.
    fn host_cmps(op: u8, a: &[u8], b: &[u8], al: u64, count: u64) -> (u64, u64, u64, u64) {
        let (mut si, mut di, mut cx) = (a.as_ptr() as u64, b.as_ptr() as u64, count);
        let f: u64;
        // SAFETY: the strings are `count` bytes long; DF is clear per the ABI.
        unsafe {
            match op {
                0 => std::arch::asm!("repe cmpsb; pushfq; pop {f}", inout("rsi") si, inout("rdi") di,
                    inout("rcx") cx, f = out(reg) f),
                1 => std::arch::asm!("repne cmpsb; pushfq; pop {f}", inout("rsi") si, inout("rdi") di,
                    inout("rcx") cx, f = out(reg) f),
                2 => std::arch::asm!("repe scasb; pushfq; pop {f}", in("al") al as u8, inout("rdi") di,
                    inout("rcx") cx, f = out(reg) f),
                _ => std::arch::asm!("repne scasb; pushfq; pop {f}", in("al") al as u8, inout("rdi") di,
                    inout("rcx") cx, f = out(reg) f),
            }
        }
        (si.wrapping_sub(a.as_ptr() as u64), di - b.as_ptr() as u64, cx, f & STATUS)
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn cmps_and_scas_match_the_host() {
        let a: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(3)).collect();
        for diff_at in [0usize, 1, 5, 39] {
            let mut b = a.clone();
            b[diff_at] = b[diff_at].wrapping_add(0x81);
            for (op, code) in [(0u8, [0xf3, 0xa6]), (1, [0xf2, 0xa6]), (2, [0xf3, 0xae]), (3, [0xf2, 0xae])] {
                for count in [0u64, 1, 3, 40] {
                    let al = if op >= 2 { u64::from(b[diff_at]) } else { 0 };
                    let want = host_cmps(op, &a, &b, al, count);
                    let mut c = cpu(64);
                    poke(&mut c, 0x10000, &a);
                    poke(&mut c, 0x20000, &b);
                    c.state.gpr[RSI] = 0x10000;
                    c.state.gpr[RDI] = 0x20000;
                    c.state.gpr[RCX] = count;
                    c.state.gpr[0] = al;
                    run_all(&mut c, &code).unwrap();
                    let s = &c.state;
                    let got = (
                        if op < 2 { s.gpr[RSI] - 0x10000 } else { 0 },
                        s.gpr[RDI] - 0x20000,
                        s.gpr[RCX],
                        s.flags() & STATUS,
                    );
                    let want =
                        (if op < 2 { want.0 } else { 0 }, want.1, want.2, if count == 0 { got.3 } else { want.3 });
                    assert_eq!(got, want, "op {op} diff at {diff_at} count {count}");
                }
            }
        }
    }

    #[test]
    fn cmpsq_flags_match_sub() {
        let mut c = cpu(64);
        poke(&mut c, 0x100, &1u64.to_le_bytes());
        poke(&mut c, 0x200, &2u64.to_le_bytes());
        c.state.gpr[RSI] = 0x100;
        c.state.gpr[RDI] = 0x200;
        run(&mut c, &asm(64, |a| a.cmpsq())).unwrap();
        let f = c.state.flags();
        assert_eq!(f & (CF | ZF), CF, "1 - 2 borrows");
        assert_eq!((c.state.gpr[RSI], c.state.gpr[RDI]), (0x108, 0x208));
    }

    #[test]
    fn fault_mid_rep_is_restartable() {
        let mut c = cpu(64);
        // Destination runs off the end of RAM... RAM is 1 MiB and unpaged: no fault
        // there. Use a page-walk fault instead: enable paging with one mapped page.
        let pml4 = 0x70000u64;
        let pdpt = 0x71000u64;
        let pd = 0x72000u64;
        let pt = 0x73000u64;
        poke(&mut c, pml4, &(pdpt | 7).to_le_bytes());
        poke(&mut c, pdpt, &(pd | 7).to_le_bytes());
        poke(&mut c, pd, &(pt | 7).to_le_bytes());
        for page in 0..16u64 {
            if page != 0xb {
                poke(&mut c, pt + page * 8, &((page << 12) | 7).to_le_bytes());
            }
        }
        c.state.cr3 = pml4;
        c.state.cr4 |= quern_core::regs::ctrl::CR4_PAE;
        c.state.cr0 |= quern_core::regs::ctrl::CR0_PG;
        c.state.gpr[0] = 0xee;
        c.state.gpr[RDI] = 0xa000 + 4000;
        c.state.gpr[RCX] = 200;
        let code = asm(64, |a| a.rep().stosb());
        let ins = testutil::decode(&c, &code);
        let e = exec(&mut c, &ins).unwrap_err();
        assert_eq!(e.vector, crate::cpu::vector::PF);
        assert_eq!(c.state.gpr[RDI], 0xb000, "stopped at the unmapped page");
        assert_eq!(c.state.gpr[RCX], 200 - 96);
        assert_eq!(peek(&mut c, 0xafff, 1), [0xee]);
    }

    #[test]
    fn ins_and_outs_use_the_ports() {
        let ports = Ports::default();
        let mut watch = testutil::NoCode;
        let mut c = cpu(32);
        // SAFETY: `ports` and `watch` outlive the attachment (detached below).
        unsafe { c.attach(&ports, &mut watch as *mut testutil::NoCode) };
        c.state.gpr[2] = 0x3f8;
        c.state.gpr[RDI] = 0x2000;
        c.state.gpr[RCX] = 3;
        run_all(&mut c, &asm(32, |a| a.rep().insw())).unwrap();
        assert_eq!(peek(&mut c, 0x2000, 6), [0, 1, 2, 3, 4, 5]);
        assert_eq!(*ports.reads.lock().unwrap(), vec![(0x3f8, 2); 3]);
        c.state.rip = 0x1000;
        c.state.gpr[RSI] = 0x2001;
        c.state.gpr[RCX] = 2;
        run_all(&mut c, &asm(32, |a| a.rep().outsb())).unwrap();
        assert_eq!(*ports.written.lock().unwrap(), vec![(0x3f8, vec![1]), (0x3f8, vec![2])]);
        assert_eq!(c.state.gpr[RSI], 0x2003);
        // CPL 3 with IOPL 0: #GP.
        c.state.seg[crate::state::CS].attr |= 3 << 5;
        c.state.rip = 0x1000;
        let e = run(&mut c, &asm(32, |a| a.outsb())).unwrap_err();
        assert_eq!(e, Exception::gp0());
        c.detach();
    }
}
