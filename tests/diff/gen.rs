//! The case generator.
//!
//! The instruction forms come from iced-x86's own tables: every `Code` of the wanted
//! mnemonics that exists in 64-bit mode and whose operands are general registers,
//! memory or immediates (so every form of IMUL, every short AL/AX/EAX/RAX form, every
//! shift by 1, imm8 and CL, ...). Operands are chosen at random; memory operands
//! address the data buffer through RBX (which no instruction writes), optionally with
//! an index register loaded with a small value just before. Stack traffic stays
//! balanced; branches only go forward, inside the case. The body is block-encoded at
//! [`CODE_BASE`] twice: once ending in `hlt` (guest) and once ending in a jump to the
//! native epilogue; the bytes before the tail are identical.

use std::collections::BTreeMap;

use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Encoder, Formatter, Instruction, InstructionBlock, InstructionInfoFactory,
    IntelFormatter, MemoryOperand, Mnemonic, OpAccess, OpCodeOperandKind as K, Register, RepPrefixKind, RflagsBits,
};

use super::layout::{CODE_BASE, CODE_SIZE, DATA_SIZE, RBX_INIT, RSP_INIT, STACK_SIZE};
use super::rng::Rng;

/// One test case: code, initial state, and which flags are undefined at its end.
#[derive(Clone, Debug)]
pub struct Case {
    /// Where it came from, to rerun it alone (`QUERN_DIFF_CASE`).
    pub index: usize,
    pub seed: u64,
    pub kind: &'static str,
    /// The code's default operand and address size: 64 (long mode), 32 (a 32-bit code
    /// segment: compatibility mode natively, protected mode in the guest) or 16 (a
    /// 16-bit code segment based at the code page: natively from the LDT, in the guest
    /// in real mode).
    pub bits: u32,
    /// Body + `hlt`.
    pub guest_code: Vec<u8>,
    /// Body + `jmp epilogue`.
    pub native_code: Vec<u8>,
    pub body_len: usize,
    pub gprs: [u64; 16],
    /// Initial RFLAGS: random status flags, bit 1; DF, TF, IF clear.
    pub rflags: u64,
    pub data: Vec<u8>,
    pub stack: Vec<u8>,
    /// EFLAGS bits (of the six status flags) some path leaves undefined at the end.
    pub undefined_flags: u64,
    /// Status flags undefined where some instruction starts (a fault's state).
    pub undefined_at_faults: u64,
    /// Mnemonics in the body, for the per-mnemonic summary.
    pub mnemonics: Vec<Mnemonic>,
    /// XMM0..XMM15 and MXCSR (every exception masked; any rounding mode, DAZ, FTZ).
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
    pub x87: X87,
}

/// The x87 registers a case starts or ends with, as FXSAVE lays them out: `st[i]` is
/// ST(i) (relative to TOP), `ftw` the abridged tag word by physical register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X87 {
    pub fcw: u16,
    pub fsw: u16,
    pub ftw: u8,
    pub st: [[u8; 10]; 8],
}

impl Case {
    /// The body's disassembly, one instruction a line with address and bytes.
    pub fn disassembly(&self) -> String {
        let mut out = String::new();
        let mut dec =
            iced_x86::Decoder::with_ip(self.bits, &self.guest_code, code_ip(self.bits), iced_x86::DecoderOptions::NONE);
        let mut fmt = IntelFormatter::new();
        fmt.options_mut().set_hex_prefix("0x");
        fmt.options_mut().set_hex_suffix("");
        let mut text = String::new();
        while dec.can_decode() {
            let ins = dec.decode();
            text.clear();
            fmt.format(&ins, &mut text);
            let start = (ins.ip() - code_ip(self.bits)) as usize;
            let bytes: String = self.guest_code[start..start + ins.len()].iter().map(|b| format!("{b:02x}")).collect();
            out += &format!("  {:#08x}  {:<24} {}\n", ins.ip(), bytes, text);
        }
        out
    }
}

/// The IP of a case's first instruction: 16-bit code runs with CS's base at
/// [`CODE_BASE`], the others with a flat CS.
pub fn code_ip(bits: u32) -> u64 {
    if bits == 16 {
        0
    } else {
        CODE_BASE
    }
}

/// Host CPU features that decide which instructions may be generated.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    pub popcnt: bool,
    pub lzcnt: bool,
    pub bmi1: bool,
    pub cx16: bool,
}

impl Features {
    /// What the host CPU runs (the cases are compared with it). Elsewhere than on
    /// x86-64 (random code for the aarch64 build), the baseline without them.
    #[cfg(not(target_arch = "x86_64"))]
    pub fn host() -> Self {
        Features { popcnt: false, lzcnt: false, bmi1: false, cx16: false }
    }

    #[cfg(target_arch = "x86_64")]
    pub fn host() -> Self {
        Features {
            popcnt: std::arch::is_x86_feature_detected!("popcnt"),
            lzcnt: std::arch::is_x86_feature_detected!("lzcnt"),
            bmi1: std::arch::is_x86_feature_detected!("bmi1"),
            cx16: std::arch::is_x86_feature_detected!("cmpxchg16b"),
        }
    }
}

const CC_MNEMONICS: [Mnemonic; 32] = {
    use Mnemonic::*;
    [
        Seto, Setno, Setb, Setae, Sete, Setne, Setbe, Seta, Sets, Setns, Setp, Setnp, Setl, Setge, Setle, Setg, Cmovo,
        Cmovno, Cmovb, Cmovae, Cmove, Cmovne, Cmovbe, Cmova, Cmovs, Cmovns, Cmovp, Cmovnp, Cmovl, Cmovge, Cmovle,
        Cmovg,
    ]
};

/// The mnemonics the generator draws from (string instructions and branches are
/// generated separately).
const MNEMONICS: &[Mnemonic] = {
    use Mnemonic::*;
    &[
        Mov, Movzx, Movsx, Movsxd, Lea, Add, Or, Adc, Sbb, And, Sub, Xor, Cmp, Test, Inc, Dec, Neg, Not, Shl, Sal, Shr,
        Sar, Rol, Ror, Rcl, Rcr, Shld, Shrd, Push, Pop, Xchg, Bswap, Bt, Bts, Btr, Btc, Bsf, Bsr, Popcnt, Lzcnt, Tzcnt,
        Mul, Imul, Div, Idiv, Cmpxchg, Xadd, Cmpxchg8b, Cmpxchg16b, Cbw, Cwde, Cdqe, Cwd, Cdq, Cqo, Lahf, Sahf, Clc,
        Stc, Cmc, Cld, Std, Leave,
    ]
};

/// The x87 instructions quern computes exactly (FPREM, FSCALE out of range and the
/// transcendentals go through f64; FLDCW could unmask exceptions, and quern does not
/// deliver #MF).
const X87_MNEMONICS: &[Mnemonic] = {
    use Mnemonic::*;
    &[
        Fld, Fst, Fstp, Fild, Fist, Fistp, Fisttp, Fadd, Faddp, Fiadd, Fsub, Fsubp, Fisub, Fsubr, Fsubrp, Fisubr, Fmul,
        Fmulp, Fimul, Fdiv, Fdivp, Fidiv, Fdivr, Fdivrp, Fidivr, Fxch, Fchs, Fabs, Fsqrt, Fcom, Fcomp, Fcompp, Fucom,
        Fucomp, Fucompp, Fcomi, Fcomip, Fucomi, Fucomip, Ficom, Ficomp, Ftst, Fxam, Fld1, Fldz, Fldpi, Fldl2e, Fldl2t,
        Fldlg2, Fldln2, Fcmovb, Fcmove, Fcmovbe, Fcmovu, Fcmovnb, Fcmovne, Fcmovnbe, Fcmovnu, Frndint, Fnstsw, Fnstcw,
        Fincstp, Fdecstp, Ffree, Fnop, Fnclex, Fxtract,
    ]
};

pub fn is_x87_form(code: Code) -> bool {
    X87_MNEMONICS.contains(&code.mnemonic())
}

fn kind_supported(k: K) -> bool {
    use K::*;
    matches!(
        k,
        r8_or_mem
            | r16_or_mem
            | r32_or_mem
            | r64_or_mem
            | r8_reg
            | r8_opcode
            | r16_reg
            | r16_opcode
            | r32_reg
            | r32_opcode
            | r64_reg
            | r64_opcode
            | imm8
            | imm16
            | imm32
            | imm64
            | imm8sex16
            | imm8sex32
            | imm8sex64
            | imm32sex64
            | imm8_const_1
            | al
            | ax
            | eax
            | rax
            | cl
            | mem
            | mem_offs
            | xmm_reg
            | xmm_rm
            | xmm_or_mem
            | st0
            | sti_opcode
    )
}

/// SSE and SSE2 forms on XMM registers (not MMX), but for what the comparison cannot
/// use: MXCSR loads (they could unmask exceptions), MASKMOVDQU (stores at RDI), the
/// approximations RCP/RSQRT (their bits differ by CPU) and the cache/fence ones.
fn is_sse_form(code: Code) -> bool {
    use iced_x86::CpuidFeature;
    use Mnemonic::*;
    let f = code.cpuid_features();
    !f.is_empty()
        && f.iter().all(|x| matches!(x, CpuidFeature::SSE | CpuidFeature::SSE2))
        && code.op_code().op_kinds().iter().any(|k| matches!(k, K::xmm_reg | K::xmm_rm | K::xmm_or_mem))
        && !matches!(
            code.mnemonic(),
            Ldmxcsr
                | Stmxcsr
                | Maskmovdqu
                | Rcpps
                | Rcpss
                | Rsqrtps
                | Rsqrtss
                | Fxsave
                | Fxrstor
                | Fxsave64
                | Fxrstor64
        )
}

/// 80-bit values worth testing (sign and exponent, significand): zeros, ones,
/// infinities, NaNs (quiet, signalling, the indefinite), denormals and a
/// pseudo-denormal, the extremes, values near 1 and an unnormal.
const F80_EDGES: [(u16, u64); 18] = [
    (0x0000, 0),
    (0x8000, 0),
    (0x3fff, 0x8000_0000_0000_0000),
    (0xbfff, 0x8000_0000_0000_0000),
    (0x7fff, 0x8000_0000_0000_0000),
    (0xffff, 0x8000_0000_0000_0000),
    (0x7fff, 0xc000_0000_0000_0001),
    (0xffff, 0xc000_0000_0000_0000),
    (0x7fff, 0x8000_0000_0000_1234),
    (0x0000, 0x0000_0000_0000_0001),
    (0x8000, 0x7fff_ffff_ffff_ffff),
    (0x0000, 0x8000_0000_0000_0000),
    (0x0001, 0x8000_0000_0000_0000),
    (0x7ffe, 0xffff_ffff_ffff_ffff),
    (0x3ffe, 0xffff_ffff_ffff_ffff),
    (0x3fff, 0x8000_0000_0000_0001),
    (0x403e, 0xffff_ffff_ffff_fffe),
    (0x4000, 0x4000_0000_0000_0000),
];

/// A random x87 state: any TOP, most registers valid, edge and ordinary values, every
/// exception masked (an unmasked one would end the native run in SIGFPE, and quern
/// does not deliver #MF), any rounding mode and precision control, sticky flags and
/// condition codes now and then.
fn random_x87(rng: &mut Rng) -> X87 {
    let mut st = [[0u8; 10]; 8];
    for r in st.iter_mut() {
        let (se, m) = match rng.below(4) {
            0 => rng.pick(&F80_EDGES),
            // Ordinary values of moderate size, some of them integers.
            1 => ((0x3fc0 + rng.below(0x80) as u16) | ((rng.below(2) as u16) << 15), rng.next() | 1 << 63),
            2 => (0x3fff + rng.below(40) as u16, (rng.next() | 1 << 63) & !((1 << rng.below(63)) - 1)),
            _ => ((rng.next() as u16 % 0x7ffe + 1) | (rng.next() as u16 & 0x8000), rng.next() | 1 << 63),
        };
        r[..8].copy_from_slice(&m.to_le_bytes());
        r[8..].copy_from_slice(&se.to_le_bytes());
    }
    let ftw =
        if rng.chance(1, 4) { rng.next() as u8 } else { !((1u8 << rng.below(3)) - 1).rotate_left(rng.below(8) as u32) };
    let pc = [0u16, 2, 3][rng.below(3) as usize];
    // Half the cases run with FNINIT's control word, the one compiled code keeps and
    // the JIT computes inline under; the rest with any precision and rounding.
    let fcw = if rng.chance(1, 2) { 0x37f } else { 0x3f | pc << 8 | (rng.below(4) as u16) << 10 | 0x40 };
    let mut fsw = (rng.below(8) as u16) << 11;
    if rng.chance(1, 3) {
        fsw |= rng.next() as u16 & 0x4700;
    }
    if rng.chance(1, 4) {
        fsw |= rng.next() as u16 & 0x3f;
    }
    X87 { fcw, fsw, ftw, st }
}

const ST: [Register; 8] = {
    use Register::*;
    [ST0, ST1, ST2, ST3, ST4, ST5, ST6, ST7]
};

const XMM: [Register; 16] = {
    use Register::*;
    [XMM0, XMM1, XMM2, XMM3, XMM4, XMM5, XMM6, XMM7, XMM8, XMM9, XMM10, XMM11, XMM12, XMM13, XMM14, XMM15]
};

/// Float lanes worth testing: zeros, ones, infinities, NaNs (quiet, signalling, both
/// signs), denormals, extremes and ordinary values.
const F32_EDGES: [u32; 16] = [
    0,
    0x8000_0000,
    0x3f80_0000,
    0xbf80_0000,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_0000,
    0xffc0_1234,
    0x7f80_0001,
    0x0000_0001,
    0x807f_ffff,
    0x7f7f_ffff,
    0x0080_0000,
    0x4f00_0000,
    0xcf00_0001,
    0x3eaa_aaab,
];
const F64_EDGES: [u64; 16] = [
    0,
    0x8000_0000_0000_0000,
    0x3ff0_0000_0000_0000,
    0xbff0_0000_0000_0000,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    0x7ff8_0000_0000_0000,
    0xfff8_0000_0000_1234,
    0x7ff0_0000_0000_0001,
    0x0000_0000_0000_0001,
    0x800f_ffff_ffff_ffff,
    0x7fef_ffff_ffff_ffff,
    0x0010_0000_0000_0000,
    0x43e0_0000_0000_0000,
    0xc1e0_0000_0020_0000,
    0x3fd5_5555_5555_5555,
];

/// The instruction forms to draw from, by mnemonic.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// 64 or 32: the forms are those of that code size.
    pub bits: u32,
    pub by_mnemonic: BTreeMap<Mnemonic, Vec<Code>>,
    pub forms: Vec<Code>,
    pub strings: Vec<Code>,
}

impl Catalog {
    pub fn new(f: Features, bits: u32) -> Self {
        let mut by_mnemonic: BTreeMap<Mnemonic, Vec<Code>> = BTreeMap::new();
        let mut strings = Vec::new();
        for code in Code::values() {
            let oc = code.op_code();
            let m = code.mnemonic();
            let in_mode = match bits {
                16 => oc.mode16(),
                32 => oc.mode32(),
                _ => oc.mode64(),
            };
            if !in_mode || oc.decoder_option() != 0 || oc.encoding() != iced_x86::EncodingKind::Legacy {
                continue;
            }
            if matches!(code, Code::Bswap_r16) {
                // The result is undefined.
                continue;
            }
            let is_string = oc.op_kinds().iter().any(|k| matches!(k, K::es_rDI | K::seg_rSI));
            if is_string {
                if matches!(
                    m,
                    Mnemonic::Movsb
                        | Mnemonic::Movsw
                        | Mnemonic::Movsd
                        | Mnemonic::Movsq
                        | Mnemonic::Stosb
                        | Mnemonic::Stosw
                        | Mnemonic::Stosd
                        | Mnemonic::Stosq
                        | Mnemonic::Lodsb
                        | Mnemonic::Lodsw
                        | Mnemonic::Lodsd
                        | Mnemonic::Lodsq
                        | Mnemonic::Cmpsb
                        | Mnemonic::Cmpsw
                        | Mnemonic::Cmpsd
                        | Mnemonic::Cmpsq
                        | Mnemonic::Scasb
                        | Mnemonic::Scasw
                        | Mnemonic::Scasd
                        | Mnemonic::Scasq
                ) {
                    strings.push(code);
                }
                continue;
            }
            if !(MNEMONICS.contains(&m) || CC_MNEMONICS.contains(&m) || is_sse_form(code) || is_x87_form(code)) {
                continue;
            }
            if !oc.op_kinds().iter().all(|&k| kind_supported(k)) {
                continue;
            }
            let available = match m {
                Mnemonic::Popcnt => f.popcnt,
                Mnemonic::Lzcnt => f.lzcnt,
                Mnemonic::Tzcnt => f.bmi1,
                Mnemonic::Cmpxchg16b => f.cx16,
                _ => true,
            };
            if !available {
                continue;
            }
            by_mnemonic.entry(m).or_default().push(code);
        }
        by_mnemonic.retain(|_, v| !v.is_empty());
        let all_codes = by_mnemonic.values().flatten().copied().collect();
        Catalog { bits, by_mnemonic, forms: all_codes, strings }
    }
}

const GPR8: [Register; 20] = {
    use Register::*;
    [AL, CL, DL, BL, AH, CH, DH, BH, SPL, BPL, SIL, DIL, R8L, R9L, R10L, R11L, R12L, R13L, R14L, R15L]
};
const GPR16: [Register; 16] = {
    use Register::*;
    [AX, CX, DX, BX, SP, BP, SI, DI, R8W, R9W, R10W, R11W, R12W, R13W, R14W, R15W]
};
const GPR32: [Register; 16] = {
    use Register::*;
    [EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI, R8D, R9D, R10D, R11D, R12D, R13D, R14D, R15D]
};
const GPR64: [Register; 16] = {
    use Register::*;
    [RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15]
};

fn reg_of_width(n: usize, w: u32) -> Register {
    match w {
        1 => GPR8[n],
        2 => GPR16[n],
        4 => GPR32[n],
        _ => GPR64[n],
    }
}

const JCC: [Code; 16] = {
    use Code::*;
    [
        Jo_rel32_64,
        Jno_rel32_64,
        Jb_rel32_64,
        Jae_rel32_64,
        Je_rel32_64,
        Jne_rel32_64,
        Jbe_rel32_64,
        Ja_rel32_64,
        Js_rel32_64,
        Jns_rel32_64,
        Jp_rel32_64,
        Jnp_rel32_64,
        Jl_rel32_64,
        Jge_rel32_64,
        Jle_rel32_64,
        Jg_rel32_64,
    ]
};

const JCC32: [Code; 16] = {
    use Code::*;
    [
        Jo_rel32_32,
        Jno_rel32_32,
        Jb_rel32_32,
        Jae_rel32_32,
        Je_rel32_32,
        Jne_rel32_32,
        Jbe_rel32_32,
        Ja_rel32_32,
        Js_rel32_32,
        Jns_rel32_32,
        Jp_rel32_32,
        Jnp_rel32_32,
        Jl_rel32_32,
        Jge_rel32_32,
        Jle_rel32_32,
        Jg_rel32_32,
    ]
};

const JCC16: [Code; 16] = {
    use Code::*;
    [
        Jo_rel16, Jno_rel16, Jb_rel16, Jae_rel16, Je_rel16, Jne_rel16, Jbe_rel16, Ja_rel16, Js_rel16, Jns_rel16,
        Jp_rel16, Jnp_rel16, Jl_rel16, Jge_rel16, Jle_rel16, Jg_rel16,
    ]
};

/// One generated operand.
#[derive(Clone, Copy, Debug)]
enum Op {
    R(Register),
    M(MemoryOperand),
    I(i64),
    I64(u64),
}

fn build(code: Code, ops: &[Op]) -> Option<Instruction> {
    use Op::*;
    let r = match *ops {
        [] => Ok(Instruction::with(code)),
        [R(a)] => Instruction::with1(code, a),
        [M(m)] => Instruction::with1(code, m),
        [I(i)] => Instruction::with1(code, i as i32),
        [R(a), R(b)] => Instruction::with2(code, a, b),
        [R(a), M(m)] => Instruction::with2(code, a, m),
        [M(m), R(b)] => Instruction::with2(code, m, b),
        [R(a), I(i)] => Instruction::with2(code, a, i),
        [R(a), I64(u)] => Instruction::with2(code, a, u),
        [M(m), I(i)] => Instruction::with2(code, m, i as i32),
        [R(a), R(b), R(c)] => Instruction::with3(code, a, b, c),
        [R(a), R(b), I(i)] => Instruction::with3(code, a, b, i as i32),
        [R(a), M(m), I(i)] => Instruction::with3(code, a, m, i as i32),
        [M(m), R(b), R(c)] => Instruction::with3(code, m, b, c),
        [M(m), R(b), I(i)] => Instruction::with3(code, m, b, i as i32),
        _ => return None,
    };
    r.ok()
}

/// An instruction of the body. Instructions come in groups (set-up, then the
/// instruction it prepares); branches land only on a group's first instruction.
/// `target` is a branch's target group (past the last: the tail).
#[derive(Clone, Debug)]
struct Item {
    ins: Instruction,
    target: Option<usize>,
    group_start: bool,
}

/// How a case is built.
#[derive(Clone, Copy, Debug)]
pub enum Recipe {
    /// A random sequence of `len` instructions.
    Random { len: usize },
    /// One form with edge-valued operands, in a short random context.
    Structured { code: Code },
    /// A string instruction with small counts.
    String { code: Code },
}

pub struct Gen<'a> {
    rng: Rng,
    cat: &'a Catalog,
    items: Vec<Item>,
    pushed: Vec<u32>,
    gprs: [u64; 16],
    data: Vec<u8>,
    xmm: [[u8; 16]; 16],
    mxcsr: u32,
    x87: X87,
    info: InstructionInfoFactory,
    /// Edge values for operands (structured cases).
    edges: bool,
    /// Undefined-flag tracking while generating: the state after the last item, whether
    /// it falls through, and what forward branches bring to later items.
    flow_out: u64,
    falls: bool,
    pending: BTreeMap<usize, u64>,
    /// Groups started so far (the next group's number).
    groups: usize,
    /// An STD was generated: string instructions get a CLD first.
    std_seen: bool,
}

impl<'a> Gen<'a> {
    pub fn new(seed: u64, cat: &'a Catalog) -> Self {
        let mut rng = Rng::new(seed);
        let mut gprs = [0u64; 16];
        for g in gprs.iter_mut() {
            *g = if rng.chance(1, 4) { rng.edge_value(64) } else { rng.next() };
        }
        gprs[super::RBX] = RBX_INIT;
        gprs[super::RSP] = RSP_INIT;
        if cat.bits == 16 {
            // Offsets in DS and SS, whose bases are the buffer's and the stack's pages.
            gprs[super::RBX] = RBX_INIT - super::layout::DATA_BASE;
            gprs[super::RSP] = RSP_INIT - super::layout::STACK_BASE;
        }
        let mut data = vec![0u8; DATA_SIZE];
        rng.fill(&mut data);
        let mut xmm = [[0u8; 16]; 16];
        for x in xmm.iter_mut() {
            match rng.below(3) {
                0 => rng.fill(x),
                1 => {
                    for l in 0..4 {
                        let v = if rng.chance(1, 2) { rng.pick(&F32_EDGES) } else { (rng.next() as u32) & 0xc7ff_ffff };
                        x[4 * l..4 * l + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
                _ => {
                    for l in 0..2 {
                        let v =
                            if rng.chance(1, 2) { rng.pick(&F64_EDGES) } else { rng.next() & 0xc0ff_ffff_ffff_ffff };
                        x[8 * l..8 * l + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        // Every rounding mode; DAZ, FTZ and sticky flags now and then.
        let mut mxcsr = 0x1f80 | (rng.below(4) as u32) << 13;
        if rng.chance(1, 4) {
            mxcsr |= 1 << 6;
        }
        if rng.chance(1, 4) {
            mxcsr |= 1 << 15;
        }
        if rng.chance(1, 4) {
            mxcsr |= rng.below(64) as u32;
        }
        let x87 = random_x87(&mut rng);
        Gen {
            xmm,
            mxcsr,
            x87,
            rng,
            cat,
            items: Vec::new(),
            pushed: Vec::new(),
            gprs,
            data,
            info: InstructionInfoFactory::new(),
            edges: false,
            flow_out: 0,
            falls: true,
            pending: BTreeMap::new(),
            std_seen: false,
            groups: 0,
        }
    }

    /// A random register of `w` bytes (any of the sixteen; RSP and RBX are refused
    /// later if written).
    fn reg(&mut self, w: u32) -> Register {
        match w {
            1 if self.b32() => self.rng.pick(&GPR8[..8]),
            1 => self.rng.pick(&GPR8),
            _ => reg_of_width(self.rng.below(self.nregs()) as usize, w),
        }
    }

    /// 32-bit code: eight registers, no REX.
    fn b32(&self) -> bool {
        self.cat.bits != 64
    }

    fn b16(&self) -> bool {
        self.cat.bits == 16
    }

    fn nregs(&self) -> u64 {
        if self.b32() {
            8
        } else {
            16
        }
    }

    /// General register `n` at the code's address size.
    fn gpr(&self, n: usize) -> Register {
        match self.cat.bits {
            16 => GPR16[n],
            32 => GPR32[n],
            _ => GPR64[n],
        }
    }

    /// The address size's displacement size (the encoder's 8 means 64-bit).
    fn dsz(&self) -> u32 {
        self.cat.bits / 8
    }

    fn xmm_reg(&mut self) -> Register {
        let n = if self.b32() { 8 } else { 16 };
        self.rng.pick(&XMM[..n])
    }

    /// A register that may hold an index or count: not RSP/RBX.
    fn scratch_reg(&mut self) -> usize {
        loop {
            let n = self.rng.below(self.nregs()) as usize;
            if n != super::RSP && n != super::RBX {
                return n;
            }
        }
    }

    /// A memory operand in the data buffer (or now and then the stack page), aligned
    /// to `align`; may need `pre` instructions to load its index register.
    fn mem(&mut self, size: u32, align: u32, allow_index: bool, pre: &mut Vec<Instruction>) -> MemoryOperand {
        if self.b16() {
            return self.mem16(size, align, allow_index, pre);
        }
        if align == 1 && self.rng.chance(1, 10) {
            // The stack, around RSP.
            let d = self.rng.range(-0x60, 0x60);
            let dsz = if (-128..128).contains(&d) { 1 } else { self.dsz() };
            return MemoryOperand::with_base_displ_size(self.gpr(super::RSP), d, dsz);
        }
        let span = 0x300i64;
        let mut d = self.rng.range(-span, span - i64::from(size));
        d -= d.rem_euclid(i64::from(align));
        if allow_index && align == 1 && self.rng.chance(1, 3) {
            // Not RAX or RDX: the set-up of DIV and CMPXCHG writes them.
            let mut idx = self.scratch_reg();
            while idx == 0 || idx == 2 {
                idx = self.scratch_reg();
            }
            let scale = self.rng.pick(&[1u32, 2, 4, 8]);
            let v = self.rng.below(16) as i64;
            pre.push(Instruction::with2(Code::Mov_r32_imm32, GPR32[idx], v as u32).unwrap());
            let dsz = if (-128..128).contains(&d) && self.rng.chance(1, 2) { 1 } else { self.dsz() };
            return MemoryOperand::with_base_index_scale_displ_size(self.gpr(super::RBX), self.gpr(idx), scale, d, dsz);
        }
        if self.b32() {
            return match self.rng.below(8) {
                // An absolute address.
                0 => MemoryOperand::with_base_displ_size(Register::None, (RBX_INIT as i64) + d, 4),
                _ => {
                    let dsz = if (-128..128).contains(&d) && self.rng.chance(1, 2) { 1 } else { 4 };
                    MemoryOperand::with_base_displ_size(Register::EBX, d, dsz)
                }
            };
        }
        match self.rng.below(8) {
            // RIP-relative: the encoder takes the absolute target.
            0 => MemoryOperand::with_base_displ_size(Register::RIP, (RBX_INIT as i64) + d, 8),
            // 32-bit address size (67h): EBX holds the whole address.
            1 => {
                let dsz = if (-128..128).contains(&d) && self.rng.chance(1, 2) { 1 } else { 4 };
                MemoryOperand::with_base_displ_size(Register::EBX, d, dsz)
            }
            _ => {
                // The encoder's displacement size is the address size (8) or 1.
                let dsz = if (-128..128).contains(&d) && self.rng.chance(1, 2) { 1 } else { 8 };
                MemoryOperand::with_base_displ_size(Register::RBX, d, dsz)
            }
        }
    }

    /// 16-bit addressing: BX (the buffer's offset in DS) with SI or DI as index, or an
    /// absolute offset.
    fn mem16(&mut self, size: u32, align: u32, allow_index: bool, pre: &mut Vec<Instruction>) -> MemoryOperand {
        let mut d = self.rng.range(-0x300, 0x300 - i64::from(size));
        d -= d.rem_euclid(i64::from(align));
        let bx_off = (RBX_INIT - super::layout::DATA_BASE) as i64;
        if allow_index && align == 1 && self.rng.chance(1, 3) {
            let idx = self.rng.pick(&[Register::SI, Register::DI]);
            let v = self.rng.below(16) as u32;
            pre.push(Instruction::with2(Code::Mov_r32_imm32, GPR32[idx.number()], v).unwrap());
            let dsz = if (-128..128).contains(&d) && self.rng.chance(1, 2) { 1 } else { 2 };
            return MemoryOperand::with_base_index_scale_displ_size(Register::BX, idx, 1, d, dsz);
        }
        match self.rng.below(8) {
            0 => MemoryOperand::with_base_displ_size(Register::None, bx_off + d, 2),
            _ => {
                let dsz = if (-128..128).contains(&d) && self.rng.chance(1, 2) { 1 } else { 2 };
                MemoryOperand::with_base_displ_size(Register::BX, d, dsz)
            }
        }
    }

    /// A memory operand for LEA: any base, index, scale and displacement (LEA touches
    /// no memory), in 64- or 32-bit address size, or RIP-relative.
    fn lea_mem(&mut self) -> MemoryOperand {
        if self.b16() {
            // The 16-bit forms: BX or BP, SI or DI, either or both.
            let base = self.rng.pick(&[Register::None, Register::BX, Register::BP]);
            let index = self.rng.pick(&[Register::None, Register::SI, Register::DI]);
            let d = self.rng.range(-0x8000, 0x7fff);
            return MemoryOperand::with_base_index_scale_displ_size(base, index, 1, d, 2);
        }
        let addr32 = self.b32() || self.rng.chance(1, 4);
        let table = if self.b32() {
            &GPR32[..8]
        } else if addr32 {
            &GPR32[..]
        } else {
            &GPR64[..]
        };
        if !addr32 && self.rng.chance(1, 8) {
            let target = CODE_BASE.wrapping_add(self.rng.range(-0x1000, 0x1000) as u64);
            return MemoryOperand::with_base_displ_size(Register::RIP, target as i64, 8);
        }
        let base = if self.rng.chance(1, 8) { Register::None } else { self.rng.pick(table) };
        let index = if self.rng.chance(1, 2) {
            let mut i = self.rng.pick(table);
            while i.full_register() == Register::RSP {
                i = self.rng.pick(table);
            }
            i
        } else {
            Register::None
        };
        let scale = self.rng.pick(&[1u32, 2, 4, 8]);
        let d = match self.rng.below(4) {
            0 => 0,
            1 => self.rng.range(-128, 127),
            2 => self.rng.next() as i32 as i64,
            _ => self.rng.edge_value(32) as i32 as i64,
        };
        let dsz = if base != Register::None && (-128..128).contains(&d) && self.rng.chance(1, 2) {
            1
        } else if addr32 {
            4
        } else {
            8
        };
        MemoryOperand::with_base_index_scale_displ_size(base, index, scale, d, dsz)
    }

    fn imm(&mut self, k: K, opsize: u32) -> Op {
        let r = &mut self.rng;
        match k {
            K::imm8 => {
                // Shift/rotate counts and BT offsets favour the interesting ones.
                let bits = opsize * 8;
                Op::I(match r.below(3) {
                    0 => r.pick(&[0, 1, bits - 1, bits, bits + 1, 2 * bits - 1, 31, 32, 33, 63, 64, 255]) as i64,
                    1 => r.below(64) as i64,
                    _ => r.below(256) as i64,
                })
            }
            K::imm8sex16 | K::imm8sex32 | K::imm8sex64 => Op::I(r.edge_value(8) as i8 as i64),
            K::imm16 => Op::I(r.edge_value(16) as i64),
            K::imm32 => Op::I(r.edge_value(32) as u32 as i32 as i64),
            K::imm32sex64 => Op::I(r.edge_value(32) as u32 as i32 as i64),
            K::imm64 => Op::I64(r.edge_value(64)),
            _ => Op::I(1),
        }
    }

    /// Draws operands for `code`; `None` when the form cannot be built.
    fn operands(&mut self, code: Code, pre: &mut Vec<Instruction>) -> Option<Vec<Op>> {
        let oc = code.op_code();
        let m = code.mnemonic();
        let opsize = match oc.op_kinds().first() {
            Some(K::r8_or_mem | K::r8_reg | K::r8_opcode | K::al) => 1,
            Some(K::r16_or_mem | K::r16_reg | K::r16_opcode | K::ax) => 2,
            Some(K::r32_or_mem | K::r32_reg | K::r32_opcode | K::eax) => 4,
            _ => 8,
        };
        let mut ops = Vec::new();
        let bt_mem_reg = matches!(m, Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc);
        let sse = is_sse_form(code);
        // Vector memory operands are 16-byte aligned but now and then.
        let sse_align = if self.rng.chance(1, 16) { 1 } else { 16 };
        for (i, &k) in oc.op_kinds().iter().enumerate() {
            let op = match k {
                K::xmm_reg | K::xmm_rm => Op::R(self.xmm_reg()),
                K::st0 => Op::R(Register::ST0),
                K::sti_opcode => Op::R(self.rng.pick(&ST)),
                // x87 memory operands: up to 10 bytes (m80, FNSTSW/FNSTCW's m16 too).
                K::mem if is_x87_form(code) => Op::M(self.mem(16, 1, true, pre)),
                K::xmm_or_mem => {
                    if self.rng.chance(1, 2) {
                        Op::R(self.xmm_reg())
                    } else {
                        Op::M(self.mem(16, sse_align, false, pre))
                    }
                }
                K::r32_or_mem | K::r64_or_mem | K::mem if sse && self.rng.chance(1, 2) => {
                    Op::M(self.mem(16, sse_align, false, pre))
                }
                K::r8_or_mem | K::r16_or_mem | K::r32_or_mem | K::r64_or_mem => {
                    let w = match k {
                        K::r8_or_mem => 1,
                        K::r16_or_mem => 2,
                        K::r32_or_mem => 4,
                        _ => 8,
                    };
                    if self.rng.chance(1, 2) {
                        Op::R(self.reg(w))
                    } else {
                        Op::M(self.mem(w, 1, !bt_mem_reg, pre))
                    }
                }
                K::r8_reg | K::r8_opcode => Op::R(self.reg(1)),
                K::r16_reg | K::r16_opcode => Op::R(self.reg(2)),
                K::r32_reg | K::r32_opcode => Op::R(self.reg(4)),
                K::r64_reg | K::r64_opcode => Op::R(self.reg(8)),
                K::al => Op::R(Register::AL),
                K::ax => Op::R(Register::AX),
                K::eax => Op::R(Register::EAX),
                K::rax => Op::R(Register::RAX),
                K::cl => Op::R(Register::CL),
                K::mem => {
                    if m == Mnemonic::Lea {
                        Op::M(self.lea_mem())
                    } else if m == Mnemonic::Cmpxchg16b {
                        Op::M(self.mem(16, 16, false, pre))
                    } else {
                        Op::M(self.mem(8, 1, true, pre))
                    }
                }
                K::mem_offs => {
                    let off = self.rng.range(-0x300, 0x2f8);
                    let base = if self.b16() { (RBX_INIT - super::layout::DATA_BASE) as i64 } else { RBX_INIT as i64 };
                    Op::M(MemoryOperand::with_base_displ_size(Register::None, base + off, self.dsz()))
                }
                K::imm8_const_1 => Op::I(1),
                _ if i > 0 || matches!(k, K::imm64) || oc.op_count() == 1 => self.imm(k, opsize),
                _ => return None,
            };
            ops.push(op);
        }
        Some(ops)
    }

    /// Whether `ins` writes RBX or RSP (RSP is allowed for PUSH/POP's own use).
    fn writes_reserved(&mut self, ins: &Instruction) -> bool {
        let stack_op = matches!(ins.mnemonic(), Mnemonic::Push | Mnemonic::Pop | Mnemonic::Leave);
        let info = self.info.info(ins);
        info.used_registers().iter().any(|u| {
            let full = u.register().full_register();
            let writes = !matches!(u.access(), OpAccess::Read | OpAccess::CondRead | OpAccess::NoMemAccess);
            writes && (full == Register::RBX || (full == Register::RSP && !stack_op))
        }) || (stack_op && ins.op_count() == 1 && ins.op0_register().full_register() == Register::RSP)
    }

    fn encodable(&self, ins: &Instruction) -> bool {
        let mut e = Encoder::new(self.cat.bits);
        e.encode(ins, CODE_BASE).is_ok()
    }

    /// The possibly-undefined flags on entry to the next group.
    fn state_in(&self) -> u64 {
        (if self.falls { self.flow_out } else { 0 }) | self.pending.get(&self.groups).copied().unwrap_or(0)
    }

    /// Whether the group `seq`, appended now, would read a flag that may be undefined:
    /// its result would be undefined too, and the harness cannot mask that.
    fn reads_undefined(&self, seq: &[Instruction]) -> bool {
        let mut st = self.state_in();
        for ins in seq {
            if eflags_of(ins.rflags_read()) & st != 0 {
                return true;
            }
            st = flag_step(ins, st);
        }
        false
    }

    /// Appends a group of instructions.
    fn push_group(&mut self, seq: &[Instruction]) {
        for (i, &ins) in seq.iter().enumerate() {
            self.push_one(ins, i == 0, None);
        }
    }

    fn push_item(&mut self, ins: Instruction) {
        self.push_one(ins, true, None);
    }

    /// Appends one instruction; a branch (`skip`: groups to jump over) is a group.
    fn push_one(&mut self, ins: Instruction, group_start: bool, skip: Option<usize>) {
        let mut st = if self.falls { self.flow_out } else { 0 };
        let mut target = None;
        if group_start {
            st |= self.pending.remove(&self.groups).unwrap_or(0);
            if let Some(k) = skip {
                target = Some(self.groups + 1 + k);
            }
            self.groups += 1;
        }
        let out = flag_step(&ins, st);
        if let Some(t) = target {
            *self.pending.entry(t).or_default() |= out;
        }
        self.flow_out = out;
        self.falls = ins.mnemonic() != Mnemonic::Jmp;
        self.items.push(Item { ins, target, group_start });
    }

    /// Tries to add one instruction of form `code` (with its set-up); false if the
    /// drawn operands do not fit.
    fn try_form(&mut self, code: Code) -> bool {
        let m = code.mnemonic();
        let oc = code.op_code();
        // Stack discipline: POP only what was pushed, at the same width.
        let stack_w = if oc.operand_size() == 16 {
            2
        } else if self.b32() {
            4
        } else {
            8
        };
        if m == Mnemonic::Pop && self.pushed.last() != Some(&stack_w) {
            return false;
        }
        let mut pre = Vec::new();
        let Some(ops) = self.operands(code, &mut pre) else { return false };
        let Some(mut ins) = build(code, &ops) else { return false };
        if oc.can_use_lock_prefix()
            && ins.op0_kind() == iced_x86::OpKind::Memory
            && m != Mnemonic::Xchg
            && self.rng.chance(1, 4)
        {
            ins.set_has_lock_prefix(true);
        }
        if !self.encodable(&ins) || self.writes_reserved(&ins) {
            return false;
        }
        if !self.count_rules(&ins, &mut pre) {
            return false;
        }
        self.setup(&ins, &mut pre);
        if pre.iter().any(|p| !self.encodable(p)) {
            return false;
        }
        if pre.clone().iter().any(|p| self.writes_reserved(p)) {
            return false;
        }
        let mut seq = pre.clone();
        seq.push(ins);
        if self.reads_undefined(&seq) {
            return false;
        }
        match m {
            Mnemonic::Push => self.pushed.push(stack_w),
            Mnemonic::Pop => {
                self.pushed.pop();
            }
            Mnemonic::Std => self.std_seen = true,
            _ => {}
        }
        self.push_group(&seq);
        true
    }

    /// Shift and rotate counts the comparison cannot use: SHLD/SHRD of 16 bits by more
    /// than 16 leave result and flags undefined. An immediate count that breaks a rule
    /// rejects the form; a CL count gets a `mov cl, n` that keeps to the rules.
    fn count_rules(&mut self, ins: &Instruction, pre: &mut Vec<Instruction>) -> bool {
        use iced_x86::OpKind;
        use Mnemonic::*;
        let m = ins.mnemonic();
        if !matches!(m, Rol | Ror | Rcl | Rcr | Shld | Shrd | Shl | Sal | Shr | Sar) {
            return true;
        }
        let w = match ins.op0_kind() {
            OpKind::Register => ins.op0_register().size() as u64,
            _ => ins.memory_size().size() as u64,
        };
        let bits = w * 8;
        // SHLD/SHRD of 16 bits by more than 16 leave the result undefined.
        let bad = |c: u64| {
            let n = c & if w == 8 { 63 } else { 31 };
            matches!(m, Shld | Shrd) && w == 2 && n > 16
        };
        let count_op = ins.op_count() - 1;
        if ins.op_kind(count_op) != OpKind::Register {
            return !bad(ins.immediate(count_op));
        }
        if !(0..256).any(bad) {
            return true;
        }
        let choices: Vec<u64> = [0, 1, 2, bits - 1, bits, bits + 1, 2 * bits - 1, 2 * bits, 31, 32, 33, 63, 64, 255]
            .into_iter()
            .chain(std::iter::once(self.rng.below(256)))
            .filter(|&c| c < 256 && !bad(c))
            .collect();
        let c = self.rng.pick(&choices);
        pre.push(Instruction::with2(Code::Mov_r8_imm8, Register::CL, c as u32).unwrap());
        true
    }

    /// Set-up some instructions need to do something useful: BT's bit offset kept near
    /// the buffer, DIV/IDIV made mostly valid, CMPXCHG made to succeed now and then,
    /// edge-valued registers and memory in structured cases.
    fn setup(&mut self, ins: &Instruction, pre: &mut Vec<Instruction>) {
        use iced_x86::OpKind;
        let m = ins.mnemonic();
        if matches!(m, Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc)
            && ins.op0_kind() == OpKind::Memory
            && ins.op1_kind() == OpKind::Register
        {
            // The bit offset is a signed register value: keep it within ±128 bytes.
            let full = ins.op1_register().full_register();
            let v = self.rng.range(-1024, 1023);
            let mov = if self.b32() {
                Instruction::with2(Code::Mov_r32_imm32, GPR32[full.number()], v as u32)
            } else {
                Instruction::with2(Code::Mov_rm64_imm32, full, v)
            };
            pre.push(mov.unwrap());
        }
        if self.edges {
            // Edge values in the registers the instruction reads (structured cases).
            for i in 0..ins.op_count() {
                if ins.op_kind(i) == OpKind::Register {
                    let r = ins.op_register(i);
                    if r.is_xmm() {
                        // Edge lanes: singles or doubles.
                        let x = &mut self.xmm[r.number()];
                        if self.rng.chance(1, 2) {
                            for l in 0..4 {
                                x[4 * l..4 * l + 4].copy_from_slice(&self.rng.pick(&F32_EDGES).to_le_bytes());
                            }
                        } else {
                            for l in 0..2 {
                                x[8 * l..8 * l + 8].copy_from_slice(&self.rng.pick(&F64_EDGES).to_le_bytes());
                            }
                        }
                        continue;
                    }
                    let full = r.full_register();
                    if !r.is_gpr() || full == Register::RBX || full == Register::RSP {
                        continue;
                    }
                    let n = full.number();
                    let bits = r.size() as u32 * 8;
                    let v = self.rng.edge_value(bits);
                    let shift =
                        if matches!(r, Register::AH | Register::CH | Register::DH | Register::BH) { 8 } else { 0 };
                    let mask = (if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 }) << shift;
                    if r == Register::CL && i > 0 {
                        // A shift count: the interesting ones.
                        let opbits = match ins.op_kind(0) {
                            OpKind::Register => ins.op0_register().size() as u64 * 8,
                            _ => ins.memory_size().size() as u64 * 8,
                        };
                        let c = self.rng.pick(&[
                            0,
                            1,
                            opbits - 1,
                            opbits,
                            opbits + 1,
                            2 * opbits - 1,
                            2 * opbits,
                            63,
                            64,
                            255,
                        ]);
                        self.gprs[n] = (self.gprs[n] & !0xff) | (c & 0xff);
                        continue;
                    }
                    self.gprs[n] = (self.gprs[n] & !mask) | (v << shift);
                }
            }
            if ins.op0_kind() == OpKind::Memory && ins.memory_base().full_register() == Register::RBX {
                let size = ins.memory_size().size();
                if size > 0 && size <= 16 && ins.memory_index() == Register::None {
                    let off = (RBX_INIT as i64 + ins.memory_displacement64() as i64 - super::layout::DATA_BASE as i64)
                        as usize;
                    let mut v = [0u8; 16];
                    let lo = self.rng.edge_value((size.min(8) * 8) as u32);
                    v[..8].copy_from_slice(&lo.to_le_bytes());
                    let hi = self.rng.edge_value(64);
                    v[8..].copy_from_slice(&hi.to_le_bytes());
                    if off + size <= DATA_SIZE {
                        self.data[off..off + size].copy_from_slice(&v[..size]);
                    }
                }
            }
        }
        match m {
            Mnemonic::Leave => {
                // A frame to leave: PUSH rBP; MOV rBP, rSP (LEAVE pops rBP back).
                // The push by LEAVE's operand size, the move by the stack's size.
                let (push, bp) = match ins.code() {
                    Code::Leavew => (Code::Push_r16, Register::BP),
                    Code::Leaved => (Code::Push_r32, Register::EBP),
                    _ => (Code::Push_r64, Register::RBP),
                };
                let (mov, fp, sp) = match self.cat.bits {
                    16 => (Code::Mov_r16_rm16, Register::BP, Register::SP),
                    32 => (Code::Mov_r32_rm32, Register::EBP, Register::ESP),
                    _ => (Code::Mov_r64_rm64, Register::RBP, Register::RSP),
                };
                pre.push(Instruction::with1(push, bp).unwrap());
                pre.push(Instruction::with2(mov, fp, sp).unwrap());
            }
            Mnemonic::Div | Mnemonic::Idiv if self.rng.chance(6, 7) => {
                let w = match ins.op0_kind() {
                    OpKind::Register => ins.op0_register().size(),
                    _ => ins.memory_size().size(),
                };
                let signed = m == Mnemonic::Idiv;
                pre.push(match (w, signed) {
                    (1, false) => Instruction::with2(Code::Movzx_r32_rm8, Register::EAX, Register::AL).unwrap(),
                    (1, true) => Instruction::with(Code::Cbw),
                    (2, true) => Instruction::with(Code::Cwd),
                    (4, true) => Instruction::with(Code::Cdq),
                    (8, true) => Instruction::with(Code::Cqo),
                    _ => Instruction::with2(Code::Mov_r32_imm32, Register::EDX, 0u32).unwrap(),
                });
                // A nonzero divisor.
                let code = match w {
                    1 => Code::Or_rm8_imm8,
                    2 => Code::Or_rm16_imm8,
                    4 => Code::Or_rm32_imm8,
                    _ => Code::Or_rm64_imm8,
                };
                let or1 = match ins.op0_kind() {
                    OpKind::Register => Instruction::with2(code, ins.op0_register(), 1i32).unwrap(),
                    _ => Instruction::with2(code, memory_operand_of(ins), 1i32).unwrap(),
                };
                pre.push(or1);
            }
            Mnemonic::Cmpxchg if self.rng.chance(1, 3) => {
                // Make the comparison succeed: accumulator = destination.
                let w = ins.op1_register().size() as u32;
                let acc = reg_of_width(0, w);
                let code = match w {
                    1 => Code::Mov_r8_rm8,
                    2 => Code::Mov_r16_rm16,
                    4 => Code::Mov_r32_rm32,
                    _ => Code::Mov_r64_rm64,
                };
                let mv = match ins.op0_kind() {
                    OpKind::Register => Instruction::with2(code, acc, ins.op0_register()),
                    _ => Instruction::with2(code, acc, memory_operand_of(ins)),
                };
                if let Ok(mv) = mv {
                    pre.push(mv);
                }
            }
            Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b if self.rng.chance(1, 3) => {
                let wide = m == Mnemonic::Cmpxchg16b;
                let mo = memory_operand_of(ins);
                let dsz = match mo.base.size() {
                    2 => 2,
                    4 => 4,
                    _ => 8,
                };
                let hi =
                    MemoryOperand { displacement: mo.displacement + if wide { 8 } else { 4 }, displ_size: dsz, ..mo };
                let (code, a, d) = if wide {
                    (Code::Mov_r64_rm64, Register::RAX, Register::RDX)
                } else {
                    (Code::Mov_r32_rm32, Register::EAX, Register::EDX)
                };
                pre.push(Instruction::with2(code, a, MemoryOperand { displ_size: dsz, ..mo }).unwrap());
                pre.push(Instruction::with2(code, d, hi).unwrap());
            }
            _ => {}
        }
    }

    /// A string instruction with RSI/RDI in the buffer and a small count.
    fn string_op(&mut self, code: Code) {
        let m = code.mnemonic();
        let addr32 = self.b32() || self.rng.chance(1, 4);
        let (rsi, rdi, rcx, lea) = if self.b16() {
            (Register::SI, Register::DI, Register::ECX, Code::Lea_r16_m)
        } else if addr32 {
            (Register::ESI, Register::EDI, Register::ECX, Code::Lea_r32_m)
        } else {
            (Register::RSI, Register::RDI, Register::ECX, Code::Lea_r64_m)
        };
        let mut disp = || self.rng.range(-0x200, 0x1c0);
        let (ds, dd) = (disp(), disp());
        let n = self.rng.pick(&[0u32, 1, 2, 3, 5, 8]);
        let mut seq = vec![
            Instruction::with2(lea, rsi, MemoryOperand::with_base_displ_size(self.gpr(super::RBX), ds, self.dsz()))
                .unwrap(),
            Instruction::with2(lea, rdi, MemoryOperand::with_base_displ_size(self.gpr(super::RBX), dd, self.dsz()))
                .unwrap(),
            Instruction::with2(Code::Mov_r32_imm32, rcx, n).unwrap(),
        ];
        if self.std_seen {
            // Forwards through the buffer.
            seq.insert(0, Instruction::with(Code::Cld));
        }
        let is_cmp = matches!(
            m,
            Mnemonic::Cmpsb
                | Mnemonic::Cmpsw
                | Mnemonic::Cmpsd
                | Mnemonic::Cmpsq
                | Mnemonic::Scasb
                | Mnemonic::Scasw
                | Mnemonic::Scasd
                | Mnemonic::Scasq
        );
        let rep = match self.rng.below(3) {
            0 => RepPrefixKind::None,
            1 => RepPrefixKind::Repe,
            _ if is_cmp => RepPrefixKind::Repne,
            _ => RepPrefixKind::Repe,
        };
        let asz = if self.b16() {
            16
        } else if addr32 {
            32
        } else {
            64
        };
        let seg = Register::None;
        use Mnemonic::*;
        let ins = match m {
            Movsb => Instruction::with_movsb(asz, seg, rep),
            Movsw => Instruction::with_movsw(asz, seg, rep),
            Movsd => Instruction::with_movsd(asz, seg, rep),
            Movsq => Instruction::with_movsq(asz, seg, rep),
            Stosb => Instruction::with_stosb(asz, rep),
            Stosw => Instruction::with_stosw(asz, rep),
            Stosd => Instruction::with_stosd(asz, rep),
            Stosq => Instruction::with_stosq(asz, rep),
            Lodsb => Instruction::with_lodsb(asz, seg, rep),
            Lodsw => Instruction::with_lodsw(asz, seg, rep),
            Lodsd => Instruction::with_lodsd(asz, seg, rep),
            Lodsq => Instruction::with_lodsq(asz, seg, rep),
            Cmpsb => Instruction::with_cmpsb(asz, seg, rep),
            Cmpsw => Instruction::with_cmpsw(asz, seg, rep),
            Cmpsd => Instruction::with_cmpsd(asz, seg, rep),
            Cmpsq => Instruction::with_cmpsq(asz, seg, rep),
            Scasb => Instruction::with_scasb(asz, rep),
            Scasw => Instruction::with_scasw(asz, rep),
            Scasd => Instruction::with_scasd(asz, rep),
            _ => Instruction::with_scasq(asz, rep),
        }
        .unwrap();
        seq.push(ins);
        if !self.reads_undefined(&seq) {
            self.push_group(&seq);
        }
    }

    /// A forward branch over the next 0..4 instructions (resolved when encoding).
    fn branch(&mut self) {
        let (b16, b32) = (self.b16(), self.b32());
        let jcxz = match self.cat.bits {
            16 => Code::Jcxz_rel8_16,
            32 => Code::Jecxz_rel8_32,
            _ => Code::Jrcxz_rel8_64,
        };
        let code = match self.rng.below(10) {
            0 if b16 => Code::Jmp_rel16,
            1 if b16 => self.rng.pick(&[
                Code::Loop_rel8_16_CX,
                Code::Loope_rel8_16_CX,
                Code::Loopne_rel8_16_CX,
                Code::Jcxz_rel8_16,
            ]),
            _ if b16 => self.rng.pick(&JCC16),
            0 if b32 => Code::Jmp_rel32_32,
            0 => Code::Jmp_rel32_64,
            1 if b32 => self.rng.pick(&[
                Code::Loop_rel8_32_ECX,
                Code::Loope_rel8_32_ECX,
                Code::Loopne_rel8_32_ECX,
                Code::Jecxz_rel8_32,
            ]),
            1 => self.rng.pick(&[
                Code::Loop_rel8_64_RCX,
                Code::Loope_rel8_64_RCX,
                Code::Loopne_rel8_64_RCX,
                Code::Jrcxz_rel8_64,
            ]),
            _ if b32 => self.rng.pick(&JCC32),
            _ => self.rng.pick(&JCC),
        };
        let skip = self.rng.below(5) as usize;
        let mut ins = Instruction::with_branch(code, 0).unwrap();
        if self.reads_undefined(&[ins]) {
            ins = Instruction::with_branch(jcxz, 0).unwrap();
        }
        self.push_one(ins, true, Some(skip));
    }

    fn random_form(&mut self) -> Code {
        let ms: Vec<Mnemonic> = self.cat.by_mnemonic.keys().copied().collect();
        let m = self.rng.pick(&ms);
        let codes = &self.cat.by_mnemonic[&m];
        codes[self.rng.below(codes.len() as u64) as usize]
    }

    /// Builds the case.
    pub fn generate(mut self, recipe: Recipe, epilogue: u64, index: usize, seed: u64) -> Case {
        let mut stack = vec![0u8; STACK_SIZE];
        self.rng.fill(&mut stack);
        let rflags = (self.rng.next() & 0x8d5) | 2;
        let kind = match recipe {
            Recipe::Random { len } => {
                let mut n = 0;
                while n < len {
                    let r = self.rng.below(100);
                    if r < 8 {
                        self.branch();
                    } else if r < 12 && !self.cat.strings.is_empty() {
                        let c = self.rng.pick(&self.cat.strings);
                        self.string_op(c);
                    } else {
                        let code = self.random_form();
                        if !self.try_form(code) {
                            continue;
                        }
                    }
                    n += 1;
                }
                "random"
            }
            Recipe::Structured { code } => {
                self.edges = true;
                if code.mnemonic() == Mnemonic::Pop {
                    let push = match code.op_code().operand_size() {
                        16 => Code::Push_r16,
                        _ if self.b32() => Code::Push_r32,
                        _ => Code::Push_r64,
                    };
                    while !self.try_form(push) {}
                }
                let mut tries = 0;
                while !self.try_form(code) {
                    tries += 1;
                    assert!(tries < 10_000, "cannot build {code:?}");
                }
                self.edges = false;
                // A flag reader afterwards, so the flags matter to a register too.
                for _ in 0..100 {
                    let cc = self.rng.pick(&CC_MNEMONICS[..16]);
                    let setcc = self.cat.by_mnemonic.get(&cc).map(|v| v[0]);
                    if setcc.is_some_and(|c| self.try_form(c)) {
                        break;
                    }
                }
                "structured"
            }
            Recipe::String { code } => {
                self.string_op(code);
                "string"
            }
        };
        // Balance the stack.
        while let Some(w) = self.pushed.pop() {
            loop {
                let n = self.scratch_reg();
                let r = reg_of_width(n, w);
                let code = match w {
                    2 => Code::Pop_r16,
                    4 => Code::Pop_r32,
                    _ => Code::Pop_r64,
                };
                let ins = Instruction::with1(code, r).unwrap();
                if !self.writes_reserved(&ins) {
                    self.push_item(ins);
                    break;
                }
            }
        }
        self.finish(rflags, stack, epilogue, index, seed, kind)
    }

    fn finish(self, rflags: u64, stack: Vec<u8>, epilogue: u64, index: usize, seed: u64, kind: &'static str) -> Case {
        let n = self.items.len();
        // Fake IPs identify branch targets for the block encoder.
        let fake_base = match self.cat.bits {
            16 => 0x4000u64,
            32 => 0x4000_0000,
            _ => 0x1_0000_0000,
        };
        let ip = code_ip(self.cat.bits);
        let fake = |i: usize| fake_base + i as u64 * 0x20;
        let mut body: Vec<Instruction> = Vec::with_capacity(n + 1);
        let mut targets = vec![None; n];
        let group_starts: Vec<usize> = (0..n).filter(|&i| self.items[i].group_start).collect();
        for (i, it) in self.items.iter().enumerate() {
            let mut ins = it.ins;
            ins.set_ip(fake(i));
            if let Some(g) = it.target {
                let t = group_starts.get(g).copied().unwrap_or(n);
                targets[i] = Some(t);
                ins.set_near_branch64(fake(t));
            }
            body.push(ins);
        }
        let encode = |tail: Instruction| -> (Vec<u8>, usize) {
            let mut all = body.clone();
            let mut t = tail;
            t.set_ip(fake(n));
            all.push(t);
            let r = BlockEncoder::encode(
                self.cat.bits,
                InstructionBlock::new(&all, ip),
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .expect("block-encoding a case");
            let tail_off = r.new_instruction_offsets[n] as usize;
            (r.code_buffer, tail_off)
        };
        let (guest_code, body_len) = encode(Instruction::with(Code::Hlt));
        let jmp = match self.cat.bits {
            16 => Code::Jmp_rel16,
            32 => Code::Jmp_rel32_32,
            _ => Code::Jmp_rel32_64,
        };
        let (native_code, nbody) = encode(Instruction::with_branch(jmp, epilogue).unwrap());
        assert_eq!(body_len, nbody, "native and guest bodies differ in length");
        assert_eq!(guest_code[..body_len], native_code[..body_len], "native and guest bodies differ");
        assert!((native_code.len() as u64) < CODE_SIZE, "case too long");
        let (undefined_flags, undefined_at_faults) = undefined_at_end(&body, &targets);
        Case {
            index,
            seed,
            kind,
            bits: self.cat.bits,
            guest_code,
            native_code,
            body_len,
            gprs: self.gprs,
            rflags,
            data: self.data,
            stack,
            undefined_flags,
            undefined_at_faults,
            mnemonics: body.iter().map(|i| i.mnemonic()).collect(),
            xmm: self.xmm,
            mxcsr: self.mxcsr,
            x87: self.x87,
        }
    }
}

fn memory_operand_of(ins: &Instruction) -> MemoryOperand {
    MemoryOperand::with_base_index_scale_displ_size(
        ins.memory_base(),
        ins.memory_index(),
        ins.memory_index_scale(),
        ins.memory_displacement64() as i64,
        if ins.memory_displ_size() == 0 { 1 } else { ins.memory_displ_size().max(1) },
    )
}

/// iced's RflagsBits → EFLAGS bits (the six status flags).
pub fn eflags_of(bits: u32) -> u64 {
    let mut f = 0;
    for (b, e) in [
        (RflagsBits::CF, 1u64 << 0),
        (RflagsBits::PF, 1 << 2),
        (RflagsBits::AF, 1 << 4),
        (RflagsBits::ZF, 1 << 6),
        (RflagsBits::SF, 1 << 7),
        (RflagsBits::OF, 1 << 11),
    ] {
        if bits & b != 0 {
            f |= e;
        }
    }
    f
}

/// Whether an instruction's flag writes may not happen at all (a shift or rotate by a
/// count that may mask to 0, a REP-prefixed compare that may run 0 times): its written
/// flags then keep whatever (possibly undefined) value they had.
fn conditional_flags(ins: &Instruction) -> Option<bool> {
    use Mnemonic::*;
    let m = ins.mnemonic();
    if matches!(m, Shl | Sal | Shr | Sar | Rol | Ror | Rcl | Rcr | Shld | Shrd) {
        let count_op = ins.op_count() - 1;
        let w = match ins.op0_kind() {
            iced_x86::OpKind::Register => ins.op0_register().size(),
            _ => ins.memory_size().size(),
        };
        let mask = if w == 8 { 63 } else { 31 };
        return match ins.op_kind(count_op) {
            iced_x86::OpKind::Register => Some(true),
            // A masked count of 0 changes no flag: no effect at all.
            _ if ins.immediate(count_op) & mask == 0 => None,
            _ => Some(false),
        };
    }
    if matches!(m, Cmpsb | Cmpsw | Cmpsd | Cmpsq | Scasb | Scasw | Scasd | Scasq)
        && (ins.has_rep_prefix() || ins.has_repne_prefix())
    {
        return Some(true);
    }
    Some(false)
}

/// The possibly-undefined status flags after `ins`, given those before it.
pub fn flag_step(ins: &Instruction, state: u64) -> u64 {
    match conditional_flags(ins) {
        None => state,
        Some(cond) => {
            let undef = eflags_of(ins.rflags_undefined());
            let modified = eflags_of(ins.rflags_modified());
            if cond {
                state | undef
            } else {
                (state & !modified) | undef
            }
        }
    }
}

/// The status flags left undefined at the end on some path through the body
/// (branches only go forward; `targets[i]` is branch i's target index, n = the end).
/// The status flags some path leaves undefined at the end, and those undefined at
/// some instruction's start (where a fault would find them).
pub fn undefined_at_end(body: &[Instruction], targets: &[Option<usize>]) -> (u64, u64) {
    let n = body.len();
    let mut incoming = vec![0u64; n + 1];
    let mut reachable = vec![false; n + 1];
    reachable[0] = true;
    for i in 0..n {
        if !reachable[i] {
            continue;
        }
        let ins = &body[i];
        let out = flag_step(ins, incoming[i]);
        let falls_through = ins.mnemonic() != Mnemonic::Jmp;
        if falls_through {
            incoming[i + 1] |= out;
            reachable[i + 1] = true;
        }
        if let Some(t) = targets[i] {
            incoming[t] |= out;
            reachable[t] = true;
        }
    }
    let anywhere = (0..=n).filter(|&i| reachable[i]).fold(0, |a, i| a | incoming[i]);
    (incoming[n], anywhere)
}

/// Every catalogued form, for the structured cases.
pub fn structured_forms(cat: &Catalog) -> Vec<Code> {
    cat.forms.clone()
}
