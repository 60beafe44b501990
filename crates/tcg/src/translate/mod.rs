//! Guest code → decoded blocks → IR → host code.
//!
//! A block starts at a guest RIP and runs until an unconditional branch, a page
//! boundary, an instruction that may change the CPU mode, or [`MAX_INSNS`]; a Jcc does
//! not end it (its taken side leaves out of line and translation goes on along the
//! fall-through). Each instruction is decoded with iced-x86; [`translate_block`] hands
//! the block to the front end ([`crate::lower`]), the passes ([`crate::ir::opt`]) and
//! the host backend ([`crate::backend`]).

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use crate::backend::{Backend, Env, Helpers, Host};
use crate::cpu::{Cpu, Exception};
use crate::flags::Width;
use crate::mmu::{Access, PAGE_MASK};
use crate::state::{CS, DS, ES, FS, GS, SS};

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
    /// SSE instructions run (see [`crate::state::CpuState::sse_enabled`]).
    pub sse: bool,
    /// MXCSR masks every exception: floating-point SSE instructions cannot fault.
    pub mx_masked: bool,
    /// The MMU index of the block's memory accesses (`CpuState::mmu_index`; the CPL is
    /// in the block's key): which TLB and jump-cache arrays its code probes.
    pub mmu_idx: usize,
    /// The privilege level (part of the block's key): CLI at CPL 0 cannot fault.
    pub cpl: u8,
    /// The x87 control word, TOP and tags as the block started when it was translated,
    /// if the FPU runs and the control word masks every exception: x87 instructions
    /// are then translated for that stack behind a guard
    /// ([`crate::ir::Op::X87Guard`]); otherwise they run in the interpreter.
    pub x87: Option<crate::lower::x87::Stack>,
    /// Other vCPUs run: locked instructions go to host atomics
    /// ([`crate::interp::locked`]) and fences to host fences.
    pub atomic: bool,
}

/// A translated block, ready to copy into the code buffer.
pub struct Translated {
    pub code: Vec<u8>,
    /// (jump offset, stub offset) of each chainable exit.
    pub chain_sites: Vec<(usize, usize)>,
    /// The instructions the interpreter helper is called with.
    #[allow(clippy::vec_box)] // boxed: generated code holds their addresses
    pub insns: Vec<Box<crate::interp::Resolved>>,
    /// Guest-physical pages the block's bytes came from.
    pub pages: Vec<u64>,
}

/// Whether an interpreted instruction must end its block even when it falls through:
/// it may change the mode, the segment bases, interrupt flags, or reach devices.
pub(crate) fn ends_block(ins: &Instruction) -> bool {
    use Mnemonic::*;
    let special_reg = |i: u32| {
        ins.op_kind(i) == OpKind::Register && {
            let r = ins.op_register(i);
            r.is_segment_register() || r.is_cr() || r.is_dr()
        }
    };
    match ins.mnemonic() {
        // A write to a segment, control or debug register; reading one changes
        // nothing (the kernel reads SS and CS on every exception).
        Mov => special_reg(0),
        Pop => special_reg(0),
        Lds | Les | Lfs | Lgs | Lss | Lgdt | Lidt | Lldt | Ltr | Lmsw | Clts | Invlpg | Wrmsr | Popf | Popfd
        | Popfq | Out | Outsb | Outsw | Outsd | In | Insb | Insw | Insd | Sysret | Sysexit | Swapgs | Wbinvd | Invd
        | Xsetbv | Rsm | Hlt => true,
        // MXCSR's exception masks are part of the block mode.
        Ldmxcsr | Fxrstor | Fxrstor64 | Xrstor | Xrstor64 | Xrstors | Xrstors64 => true,
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
    stubs: crate::backend::Stubs,
    helpers: &Helpers,
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

    let paged = cpu.state.cr0 & quern_core::regs::ctrl::CR0_PG != 0;
    let (mut block, table) = crate::lower::lower_block(&insns, mode);
    crate::ir::opt::optimize(&mut block);
    if log::log_enabled!(target: "quern_tcg::op", log::Level::Trace) {
        log::trace!(target: "quern_tcg::op", "OP: {start_rip:#x}\n{block}");
    }
    let env = Env {
        base,
        stubs,
        helpers: *helpers,
        page: paged.then_some(linear & PAGE_MASK),
        block_rip: start_rip,
        single: mode.single,
        mmu_idx: mode.mmu_idx,
        tso: mode.atomic,
    };
    let code = Host::emit(&block, &env);
    if log::log_enabled!(target: "quern_tcg::out_asm", log::Level::Trace) {
        log_host(&code.bytes, base);
    }
    Ok(Translated { code: code.bytes, chain_sites: code.chain_sites, insns: table, pages })
}

/// `-d out_asm`: the host code of each new block.
fn log_host(bytes: &[u8], base: usize) {
    use iced_x86::Formatter;
    let mut f = iced_x86::IntelFormatter::new();
    let mut out = format!("OUT: {base:#x}\n");
    // An x86-64 host's code; another host's backend would log its own way.
    for ins in Decoder::with_ip(64, bytes, base as u64, DecoderOptions::NONE) {
        let mut t = String::new();
        f.format(&ins, &mut t);
        out.push_str(&format!("{:#x}:  {t}\n", ins.ip()));
    }
    log::trace!(target: "quern_tcg::out_asm", "{out}");
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
