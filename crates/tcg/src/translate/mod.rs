//! Guest code → translation blocks.
//!
//! A block starts at a guest RIP and runs until a branch, a page boundary, an
//! instruction that may change the CPU mode, or [`MAX_INSNS`]. Each instruction is
//! decoded with iced-x86 and handed to the family that implements it:
//!
//! | family | instructions (inline host code) |
//! | --- | --- |
//! | [`mov`] | MOV, MOVZX, MOVSX(D), LEA, XCHG (registers), NOP |
//! | [`alu`] | ADD, OR, ADC, SBB, AND, SUB, XOR, CMP, TEST, INC, DEC, NEG, NOT |
//! | [`shift`] | SHL/SAL, SHR, SAR by 1, imm8 or CL |
//! | [`stack`] | PUSH, POP, CALL, RET (near) |
//! | [`branch`] | JMP, Jcc, LOOP, JrCXZ, SETcc, CMOVcc |
//!
//! Every other instruction runs through the interpreter helper ([`crate::interp`]),
//! called from the block with the decoded instruction: one definition of each
//! instruction's semantics, inline or helper, never both.

mod alu;
mod branch;
mod mov;
mod shift;
mod stack;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::cpu::{Cpu, Exception};
use crate::flags::{CcOp, Width};
use crate::mmu::{Access, PAGE_MASK};
use crate::state::{CS, DS, ES, FS, GS, SS};
use crate::x64::{exit, Arg, Emitter, HelperAddrs, OnCodeWrite, Stubs, T};

/// Longest block, in guest instructions.
pub const MAX_INSNS: usize = 64;

/// What a block's code depends on besides its bytes.
#[derive(Clone, Copy, Debug)]
pub struct BlockMode {
    /// Code bitness: 16, 32 or 64.
    pub bits: u32,
    /// Stack-pointer width in bytes (SS.B, or 8 in long mode).
    pub stack_width: Width,
    /// DS, ES and SS have base 0 (always so in long mode).
    pub flat: bool,
    pub long: bool,
    /// Exactly one instruction, with no exit-request check at its head: the run loop
    /// steps over the instruction in an STI or MOV SS interrupt shadow this way, so a
    /// waiting interrupt is taken right after it, as on the CPU.
    pub single: bool,
    /// The MMU index of the block's memory accesses (`CpuState::mmu_index`; the CPL is
    /// in the block's key): which TLB and jump-cache arrays its code probes.
    pub mmu_idx: usize,
}

/// A translated block, ready to copy into the code buffer.
pub struct Translated {
    pub code: Vec<u8>,
    /// (jump offset, stub offset) of each chainable exit.
    pub chain_sites: Vec<(usize, usize)>,
    /// The decoded instructions the interpreter helper is called with.
    pub insns: Box<[Instruction]>,
    /// Guest-physical pages the block's bytes came from.
    pub pages: Vec<u64>,
}

/// What a family did with an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The family emitted the block's exit.
    End,
}

/// Per-instruction translation context.
pub struct Ctx<'a> {
    pub em: &'a mut Emitter,
    pub h: &'a HelperAddrs,
    pub mode: BlockMode,
    pub ins: &'a Instruction,
    /// Address of `ins` inside the block's instruction table (for the interpreter).
    pub ins_addr: usize,
    /// RIP of this instruction and of the next.
    pub ip: u64,
    pub next: u64,
    /// The lazy-flag operation as of this point, when known at translation time.
    pub cc: Option<CcOp>,
    /// Whether anything may read the status flags this instruction writes (see
    /// [`flag_uses`]); when not, the lazy-flag record is not stored.
    pub flags_needed: bool,
    /// Whether CF is live after this instruction.
    pub carry_needed: bool,
    /// The status flags live after this instruction (iced-x86 `RflagsBits`).
    pub live_flags: u32,
    /// RIP of the block's first instruction (a branch there is a loop).
    pub block_rip: u64,
}

impl Ctx<'_> {
    /// Operand width in bytes of operand `i`; an immediate takes its destination's.
    pub fn width(&self, i: u32) -> Width {
        match self.ins.op_kind(i) {
            OpKind::Register => self.ins.op_register(i).size() as Width,
            OpKind::Memory => self.ins.memory_size().size() as Width,
            OpKind::Immediate8 | OpKind::Immediate8_2nd if i == 0 => 1,
            OpKind::Immediate16 | OpKind::Immediate8to16 if i == 0 => 2,
            OpKind::Immediate32 | OpKind::Immediate8to32 if i == 0 => 4,
            _ if i == 0 => 8,
            _ => self.width(0),
        }
    }

    /// Loads operand `i` (register, memory or immediate) zero-extended into `t`.
    pub fn load_op(&mut self, i: u32, t: T) {
        let w = self.width(i);
        match self.ins.op_kind(i) {
            OpKind::Register => {
                let (r, hi) = gpr(self.ins.op_register(i));
                self.em.load_gpr(t, r, w, hi);
            }
            OpKind::Memory => {
                self.ea();
                self.em.load_mem(t, w, self.ip, self.h);
            }
            _ => {
                let v = self.ins.immediate(i) & crate::flags::mask(w);
                self.em.load_imm(t, v);
            }
        }
    }

    /// Stores `t` to operand `i` (register or memory). A memory store is the last
    /// thing its instruction does, so one that overwrites translated code leaves the
    /// block at the next instruction.
    pub fn store_op(&mut self, i: u32, t: T) {
        let w = self.width(i);
        match self.ins.op_kind(i) {
            OpKind::Register => {
                let (r, hi) = gpr(self.ins.op_register(i));
                self.em.store_gpr(r, t, w, hi);
            }
            _ => {
                self.ea();
                let on_code = OnCodeWrite::Exit { next: self.next, then: None };
                self.em.store_mem(t, w, self.ip, on_code, self.h);
            }
        }
    }

    /// Computes the memory operand's linear address into the address register.
    pub fn ea(&mut self) {
        self.effective_address();
        let seg = seg_index(self.ins.memory_segment());
        self.add_segment(seg);
    }

    /// The memory operand's offset (base + index*scale + displacement, wrapped to the
    /// address size) into the address register, without a segment base (LEA).
    pub fn effective_address(&mut self) {
        let ins = self.ins;
        let base = ins.memory_base();
        let index = ins.memory_index();
        self.em.addr_clear();
        if base == Register::RIP || base == Register::EIP {
            self.em.addr_add_const(ins.memory_displacement64());
        } else {
            if base != Register::None {
                self.em.addr_add_gpr(gpr(base).0, 1);
            }
            if index != Register::None {
                self.em.addr_add_gpr(gpr(index).0, ins.memory_index_scale() as u8);
            }
            self.em.addr_add_const(ins.memory_displacement64());
        }
        self.em.addr_truncate(address_bits(ins, self.mode.bits));
    }

    /// Adds a segment base where the mode requires it, and wraps to 32 bits outside
    /// long mode.
    pub fn add_segment(&mut self, seg: usize) {
        let needs_base = match seg {
            FS | GS => true,
            _ if self.mode.long => false,
            DS | ES | SS => !self.mode.flat,
            _ => true,
        };
        if needs_base {
            self.em.addr_add_seg(seg);
            if !self.mode.long {
                self.em.addr_truncate(32);
            }
        }
    }

    /// Runs this instruction through the interpreter helper; ends the block when the
    /// helper says control or mode changed.
    pub fn interp(&mut self) -> Flow {
        self.em.call_helper(self.h.interp, &[Arg::Imm(self.ins_addr as u64)], self.ip, true, true);
        let go_on = self.em.label();
        let halt = self.em.label();
        self.em.test_t0_dispatch(go_on, halt);
        // 1: leave for the run loop (RIP set by the helper; the state is authoritative).
        self.em.exit_raw(exit::NEXT);
        self.em.bind(halt);
        self.em.exit_raw(exit::HALT);
        self.em.bind(go_on);
        self.em.sync_in();
        self.cc = None;
        if ends_block(self.ins) {
            self.em.store_rip(self.next);
            self.em.exit_with(exit::NEXT);
            return Flow::End;
        }
        Flow::Continue
    }
}

/// Whether an interpreted instruction must end its block even when it falls through:
/// it may change the mode, the segment bases, interrupt flags, or reach devices.
fn ends_block(ins: &Instruction) -> bool {
    use Mnemonic::*;
    let special_reg = |i: u32| {
        ins.op_kind(i) == OpKind::Register && {
            let r = ins.op_register(i);
            r.is_segment_register() || r.is_cr() || r.is_dr()
        }
    };
    match ins.mnemonic() {
        Mov => special_reg(0) || special_reg(1),
        Pop => special_reg(0),
        Lds | Les | Lfs | Lgs | Lss | Lgdt | Lidt | Lldt | Ltr | Lmsw | Clts | Invlpg | Wrmsr | Popf | Popfd
        | Popfq | Sti | Cli | Out | Outsb | Outsw | Outsd | In | Insb | Insw | Insd | Sysret | Sysexit | Swapgs
        | Wbinvd | Invd | Xsetbv | Rsm | Hlt => true,
        _ => false,
    }
}

/// The guest register number (encoding order) of a general register, and whether it
/// is one of AH, CH, DH, BH.
pub fn gpr(r: Register) -> (usize, bool) {
    let hi = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
    (r.full_register().number(), hi)
}

pub fn seg_index(r: Register) -> usize {
    match r {
        Register::ES => ES,
        Register::CS => CS,
        Register::SS => SS,
        Register::FS => FS,
        Register::GS => GS,
        _ => DS,
    }
}

/// The address size of a memory operand.
pub fn address_bits(ins: &Instruction, code_bits: u32) -> u32 {
    let r = if ins.memory_base() != Register::None { ins.memory_base() } else { ins.memory_index() };
    match r {
        Register::None => match ins.memory_displ_size() {
            2 => 16,
            4 if code_bits != 64 => 32,
            _ => code_bits,
        },
        Register::RIP => 64,
        Register::EIP => 32,
        r => r.size() as u32 * 8,
    }
}

/// Reads the code bytes of the page holding `linear`, from `linear` to the page's end.
fn fetch_page(cpu: &mut Cpu, linear: u64) -> Result<(u64, Vec<u8>), Exception> {
    let phys = cpu.translate(linear, Access::Fetch)?;
    let n = (4096 - (linear & !PAGE_MASK)) as usize;
    let mut buf = vec![0u8; n];
    if cpu.mem.read(phys, &mut buf).is_err() {
        // Code outside RAM/ROM (device space): nothing to run there.
        return Err(Exception::with_code(crate::cpu::vector::GP, 0));
    }
    Ok((phys, buf))
}

/// Translates the block starting at the CPU's current RIP into host code that will
/// live at `base`.
pub fn translate_block(
    cpu: &mut Cpu,
    mode: BlockMode,
    base: usize,
    stubs: Stubs,
    h: &HelperAddrs,
) -> Result<Translated, Exception> {
    let start_rip = cpu.state.rip;
    let cs_base = cpu.state.seg[CS].base;
    let linear = cpu.wrap_linear(cs_base.wrapping_add(start_rip));
    let (phys, mut bytes) = fetch_page(cpu, linear)?;
    let mut pages = vec![phys >> 12];
    let in_page = bytes.len();

    // Decode first, so the instruction table has its final address before emitting.
    let mut insns = Vec::new();
    {
        let mut extra_fetched = false;
        loop {
            let mut dec = Decoder::with_ip(mode.bits, &bytes, start_rip, DecoderOptions::NONE);
            insns.clear();
            let mut consumed = 0usize;
            let mut needs_more = false;
            let max = if mode.single { 1 } else { MAX_INSNS };
            while insns.len() < max && consumed < in_page {
                let ins = dec.decode();
                if ins.code() == Code::INVALID {
                    if dec.last_error() == iced_x86::DecoderError::NoMoreBytes {
                        needs_more = insns.is_empty();
                    } else {
                        insns.push(ins);
                    }
                    break;
                }
                consumed += ins.len();
                let stop = is_block_end(&ins);
                insns.push(ins);
                if stop {
                    break;
                }
            }
            if needs_more && !extra_fetched {
                // The block's first instruction crosses into the next page.
                let (p2, more) = fetch_page(cpu, cpu.wrap_linear(linear.wrapping_add(in_page as u64)))?;
                pages.push(p2 >> 12);
                bytes.extend_from_slice(&more[..more.len().min(16)]);
                extra_fetched = true;
                continue;
            }
            break;
        }
        if insns.is_empty() {
            return Err(Exception::ud());
        }
    }
    let insns: Box<[Instruction]> = insns.into_boxed_slice();
    if log::log_enabled!(target: "quern_tcg::in_asm", log::Level::Trace) {
        log_block(&insns, cs_base, phys);
    }

    let uses = flag_uses(&insns, start_rip);
    let mut em = Emitter::new(base, stubs);
    em.set_mmu_index(mode.mmu_idx);
    em.map_registers(&hot_registers(&insns));
    if !mode.single {
        em.loop_head(start_rip);
    }
    if cpu.state.cr0 & quern_core::regs::ctrl::CR0_PG != 0 {
        em.set_paged(linear & PAGE_MASK);
    }
    let mut cc = None;
    let mut ended = false;
    for (i, ins) in insns.iter().enumerate() {
        let mut ctx = Ctx {
            em: &mut em,
            h,
            mode,
            ins,
            ins_addr: &insns[i] as *const Instruction as usize,
            ip: ins.ip(),
            next: ins.next_ip(),
            cc,
            flags_needed: uses[i].needed,
            carry_needed: uses[i].carry,
            live_flags: uses[i].live,
            // A single step has no loop head to branch back to.
            block_rip: if mode.single { u64::MAX } else { start_rip },
        };
        let flow = if ins.code() == Code::INVALID { ctx.interp() } else { translate_one(&mut ctx) };
        cc = ctx.cc;
        if flow == Flow::End {
            ended = true;
            break;
        }
    }
    if !ended {
        let next = insns.last().map_or(start_rip, |i| i.next_ip());
        em.exit_chain(next);
    }
    let (code, chain_sites) = em.finish();
    Ok(Translated { code, chain_sites, insns, pages })
}

/// The guest registers worth keeping in host registers for a block: the most used,
/// at most five, each used at least twice.
fn hot_registers(insns: &[Instruction]) -> Vec<usize> {
    let mut uses = [0u32; 16];
    let mut count = |r: Register| {
        if r.is_gpr() {
            uses[gpr(r).0] += 1;
        }
    };
    for ins in insns {
        for i in 0..ins.op_count() {
            match ins.op_kind(i) {
                OpKind::Register => count(ins.op_register(i)),
                OpKind::Memory => {
                    count(ins.memory_base());
                    count(ins.memory_index());
                }
                _ => {}
            }
        }
        if matches!(ins.mnemonic(), Mnemonic::Push | Mnemonic::Pop | Mnemonic::Call | Mnemonic::Ret) {
            count(Register::RSP);
        }
    }
    let mut order: Vec<usize> = (0..16).filter(|&r| uses[r] >= 2).collect();
    order.sort_by_key(|&r| std::cmp::Reverse(uses[r]));
    order.truncate(5);
    order
}

/// What the flag analysis found for one instruction.
#[derive(Clone, Copy, Debug)]
pub struct FlagUse {
    /// Something may read the status flags this instruction writes: store its lazy
    /// record.
    pub needed: bool,
    /// CF is live after it (INC/DEC must then carry the old CF into their record).
    pub carry: bool,
    /// The status flags live after it (iced-x86 `RflagsBits`).
    pub live: u32,
}

/// Status-flag liveness over a block, walking backwards: a flag is live until an
/// instruction overwrites it. Flags are live at the block's end and before anything
/// that may fault (memory operands, stack operations, interpreted instructions), so an
/// exception always sees the flags the guest computed. A taken Jcc needs what is live
/// at its target: everything, unless the target is this block's start (a loop), whose
/// live-in is found by iterating to a fixed point.
fn flag_uses(insns: &[Instruction], start: u64) -> Vec<FlagUse> {
    use iced_x86::RflagsBits as F;
    use Mnemonic::*;
    const STATUS: u32 = F::OF | F::SF | F::ZF | F::AF | F::CF | F::PF;
    let mut loop_in = STATUS;
    loop {
        let mut live = STATUS;
        let mut uses = vec![FlagUse { needed: true, carry: true, live: STATUS }; insns.len()];
        for (i, ins) in insns.iter().enumerate().rev() {
            uses[i] = FlagUse { needed: live != 0, carry: live & F::CF != 0, live };
            let mut read = ins.rflags_read() & STATUS;
            // The inline INC/DEC carry the old CF forward from the previous record.
            if uses[i].carry && matches!(ins.mnemonic(), Inc | Dec) {
                read |= F::CF;
            }
            if may_fault(ins) {
                read = STATUS;
            }
            if is_jcc(ins) {
                read |= if ins.near_branch_target() == start { loop_in } else { STATUS };
            }
            // A shift by CL writes no flag when the count masks to 0: the flags it would
            // write stay live through it.
            let by_cl = matches!(ins.mnemonic(), Shl | Sal | Shr | Sar | Rol | Ror | Rcl | Rcr | Shld | Shrd)
                && ins.op_kind(ins.op_count() - 1) == OpKind::Register;
            if by_cl {
                read |= ins.rflags_modified() & STATUS;
            }
            live = (live & !(ins.rflags_modified() & STATUS)) | read;
        }
        if live == loop_in {
            return uses;
        }
        // The live-in only shrinks from "everything", so this ends.
        loop_in = live;
    }
}

/// Whether an instruction may raise an exception or leave the block early.
fn may_fault(ins: &Instruction) -> bool {
    use Mnemonic::*;
    // Register-only forms of the inline families cannot fault; anything else might
    // (memory operands, special registers, the interpreter).
    let inline = matches!(
        ins.mnemonic(),
        Mov | Movzx
            | Movsx
            | Movsxd
            | Lea
            | Nop
            | Xchg
            | Add
            | Or
            | Adc
            | Sbb
            | And
            | Sub
            | Xor
            | Cmp
            | Test
            | Inc
            | Dec
            | Neg
            | Not
            | Shl
            | Sal
            | Shr
            | Sar
    ) || (ins.mnemonic() == Imul && ins.op_count() >= 2);
    let special = (0..ins.op_count()).any(|i| {
        ins.op_kind(i) == OpKind::Register && {
            let r = ins.op_register(i);
            r.is_segment_register() || r.is_cr() || r.is_dr()
        }
    });
    !inline || special || (0..ins.op_count()).any(|i| ins.op_kind(i) == OpKind::Memory)
}

/// `-d in_asm`: the guest instructions of each new block, as QEMU prints them.
fn log_block(insns: &[Instruction], cs_base: u64, phys: u64) {
    use iced_x86::Formatter;
    let mut f = iced_x86::IntelFormatter::new();
    let mut out = format!("IN: (cs base {cs_base:#x}, phys {phys:#x})\n");
    for ins in insns {
        let mut text = String::new();
        f.format(ins, &mut text);
        out.push_str(&format!("{:#010x}:  {text}\n", ins.ip()));
    }
    log::trace!(target: "quern_tcg::in_asm", "{out}");
}

/// Instructions after which decoding stops (the block's last instruction).
fn is_block_end(ins: &Instruction) -> bool {
    use iced_x86::FlowControl::*;
    // A Jcc does not end the block: its taken side leaves through an out-of-line exit
    // and translation goes on along the fall-through (an extended basic block), which
    // keeps what is known about the flags and saves a dispatch.
    let jcc = ins.flow_control() == ConditionalBranch && is_jcc(ins);
    !(matches!(ins.flow_control(), Next) || jcc) || ends_block(ins)
}

/// Jcc proper (not LOOP/JrCXZ, which end their block).
pub fn is_jcc(ins: &Instruction) -> bool {
    ins.condition_code() != iced_x86::ConditionCode::None
        && ins.flow_control() == iced_x86::FlowControl::ConditionalBranch
}

/// Routes one instruction to its family, or to the interpreter.
fn translate_one(ctx: &mut Ctx) -> Flow {
    use Mnemonic::*;
    let ins = ctx.ins;
    // LOCK needs nothing more with one vCPU: each inline access is atomic to the guest.
    // REP only matters to string instructions, which the interpreter runs.
    match ins.mnemonic() {
        Mov | Movzx | Movsx | Movsxd | Lea | Nop | Xchg => mov::translate(ctx),
        Add | Or | Adc | Sbb | And | Sub | Xor | Cmp | Test | Inc | Dec | Neg | Not => alu::translate(ctx),
        Imul if ins.op_count() >= 2 => alu::translate(ctx),
        Shl | Sal | Shr | Sar => shift::translate(ctx),
        // Rotates run on the host (see shift::rotate); RCL/RCR read CF, so they always
        // bring the guest's flags in.
        Rol | Ror | Rcl | Rcr if ins.op0_kind() == OpKind::Register || ins.op1_kind() != OpKind::Register => {
            let cf_of = iced_x86::RflagsBits::CF | iced_x86::RflagsBits::OF;
            let with_flags = ctx.live_flags & cf_of != 0 || matches!(ins.mnemonic(), Rcl | Rcr);
            shift::rotate(ctx, with_flags)
        }
        Bswap if ins.op0_register().size() >= 4 => {
            let w = ins.op0_register().size() as u8;
            let (r, _) = gpr(ins.op0_register());
            ctx.em.load_gpr(T::T0, r, w, false);
            ctx.em.bswap(T::T0, w);
            ctx.em.store_gpr(r, T::T0, w, false);
            Flow::Continue
        }
        Push | Pop | Call | Ret => stack::translate(ctx),
        Jmp | Ja | Jae | Jb | Jbe | Je | Jne | Jg | Jge | Jl | Jle | Jo | Jno | Jp | Jnp | Js | Jns | Loop | Jcxz
        | Jecxz | Jrcxz => branch::translate(ctx),
        m if branch::is_setcc(m) || branch::is_cmovcc(m) => branch::translate(ctx),
        _ => ctx.interp(),
    }
}
