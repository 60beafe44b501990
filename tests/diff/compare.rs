//! Outcomes of one case on one backend, and the comparison of two.

use quern_core::regs::flags::{DF, STATUS};

use super::gen::Case;

/// What the GPRs, flags and memory were at the end of a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub gprs: [u64; 16],
    pub rflags: u64,
    pub data: Vec<u8>,
    pub stack: Vec<u8>,
    /// Where a guest stopped (after its `hlt`); `None` natively.
    pub rip: Option<u64>,
    /// XMM0..XMM15.
    pub xmm: Vec<[u8; 16]>,
    pub mxcsr: u32,
    pub x87: super::gen::X87,
}

/// The state where a case faulted: the general registers (RSP aside: the guest's
/// exception frame and the host's signal frame differ), RFLAGS and the data buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub gprs: [u64; 16],
    pub rflags: u64,
    pub data: Vec<u8>,
}

/// How a case ended.
// One short-lived value per case: boxing the state would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Outcome {
    Ok(State),
    /// Native: the child died of this signal (with the state its handler saw).
    Signal(i32, Option<Box<Fault>>),
    /// Guest: exception `vector` reached its IDT handler (with the state it found).
    Exception(u8, Option<Box<Fault>>),
    /// Guest: triple fault (no IDT).
    Shutdown,
    /// The accelerator could not run the case (KVM's instruction emulator on kvm_pvm,
    /// or any `CpuError::Guest`): never a pass.
    HostLimit(String),
    Error(String),
}

impl Outcome {
    pub fn short(&self) -> String {
        match self {
            Outcome::Ok(_) => "ran to the end".into(),
            Outcome::Signal(s, _) => format!("native fault (signal {s}: {})", signal_name(*s)),
            Outcome::Exception(v, _) => format!("guest exception {}", vector_name(*v)),
            Outcome::Shutdown => "guest triple fault (shutdown)".into(),
            Outcome::HostLimit(r) => format!("host limit: {r}"),
            Outcome::Error(e) => format!("error: {e}"),
        }
    }
}

pub fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGFPE => "SIGFPE",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGALRM => "SIGALRM (timeout)",
        _ => "?",
    }
}

pub fn vector_name(v: u8) -> String {
    let n = match v {
        0 => "#DE",
        1 => "#DB",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        17 => "#AC",
        _ => "#?",
    };
    format!("{n} (vector {v})")
}

/// Whether a host signal is how the host's kernel reports exception `v`.
fn signal_matches(sig: i32, v: u8) -> bool {
    match sig {
        libc::SIGFPE => v == 0,
        libc::SIGILL => v == 6,
        libc::SIGSEGV => (12..=14).contains(&v),
        libc::SIGBUS => matches!(v, 13 | 17),
        libc::SIGTRAP => matches!(v, 1 | 3),
        _ => false,
    }
}

pub const GPR_NAMES: [&str; 16] =
    ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

fn flag_names(f: u64) -> String {
    let mut s = String::new();
    for (b, n) in [(1u64, "CF"), (4, "PF"), (0x10, "AF"), (0x40, "ZF"), (0x80, "SF"), (0x400, "DF"), (0x800, "OF")] {
        if f & b != 0 {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(n);
        }
    }
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn mem_diff(name: &str, base: u64, a: &[u8], b: &[u8], out: &mut Vec<String>) {
    let diffs: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    if diffs.is_empty() {
        return;
    }
    let first = diffs[0];
    let last = *diffs.last().unwrap();
    out.push(format!(
        "  {name}: {} bytes differ in {:#x}..={:#x}",
        diffs.len(),
        base + first as u64,
        base + last as u64
    ));
    let lo = first & !15;
    let hi = ((last | 15) + 1).min(a.len()).min(lo + 64);
    for row in (lo..hi).step_by(16) {
        let hex = |v: &[u8]| v.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ");
        out.push(format!("    {:#08x} expected {}", base + row as u64, hex(&a[row..row + 16])));
        out.push(format!("    {:#08x} got      {}", base + row as u64, hex(&b[row..row + 16])));
    }
}

/// Compares `got` (a backend) with `want` (the host CPU); `Err` holds the differences.
pub fn compare(case: &Case, want: &Outcome, got: &Outcome) -> Result<(), String> {
    match (want, got) {
        (Outcome::Ok(a), Outcome::Ok(b)) => {
            let mut out = Vec::new();
            gpr_diff(case, &a.gprs, &b.gprs, false, &mut out);
            let mask = (STATUS & !case.undefined_flags) | DF;
            if (a.rflags ^ b.rflags) & mask != 0 {
                out.push(format!(
                    "  flags expected [{}] got [{}] (differ: {}; compared: {}; undefined: {}; initial [{}])",
                    flag_names(a.rflags & mask),
                    flag_names(b.rflags & mask),
                    flag_names((a.rflags ^ b.rflags) & mask),
                    flag_names(mask),
                    flag_names(case.undefined_flags),
                    flag_names(case.rflags),
                ));
            }
            for i in 0..16 {
                if a.xmm[i] != b.xmm[i] {
                    let hex = |v: &[u8; 16]| v.iter().rev().map(|b| format!("{b:02x}")).collect::<String>();
                    out.push(format!(
                        "  xmm{i:<2} expected {} got {} (initial {})",
                        hex(&a.xmm[i]),
                        hex(&b.xmm[i]),
                        hex(&case.xmm[i])
                    ));
                }
            }
            if a.mxcsr != b.mxcsr {
                out.push(format!(
                    "  mxcsr expected {:#06x} got {:#06x} (initial {:#06x})",
                    a.mxcsr, b.mxcsr, case.mxcsr
                ));
            }
            x87_diff(&a.x87, &b.x87, &case.x87, &mut out);
            mem_diff("data", super::layout::DATA_BASE, &a.data, &b.data, &mut out);
            mem_diff("stack", super::layout::STACK_BASE, &a.stack, &b.stack, &mut out);
            if let Some(rip) = b.rip {
                let end = super::gen::code_ip(case.bits) + case.body_len as u64 + 1;
                if rip != end {
                    out.push(format!("  halted at rip {rip:#x}, not after the case's hlt at {:#x}", end - 1));
                }
            }
            if out.is_empty() {
                Ok(())
            } else {
                Err(out.join("\n"))
            }
        }
        (Outcome::Signal(s, a), Outcome::Exception(v, b)) if signal_matches(*s, *v) => match (a, b) {
            (Some(a), Some(b)) => fault_diff(case, a, b),
            _ => Ok(()),
        },
        _ => Err(format!("  expected: {}\n  got:      {}", want.short(), got.short())),
    }
}

/// The x87 registers' differences: control, status and tag words, and every register's
/// 80 bits (empty ones too: pops leave their contents).
fn x87_diff(a: &super::gen::X87, b: &super::gen::X87, init: &super::gen::X87, out: &mut Vec<String>) {
    for (name, x, y, i) in [
        ("fcw", a.fcw, b.fcw, init.fcw),
        ("fsw", a.fsw, b.fsw, init.fsw),
        ("ftw", u16::from(a.ftw), u16::from(b.ftw), u16::from(init.ftw)),
    ] {
        if x != y {
            out.push(format!("  {name} expected {x:#06x} got {y:#06x} (initial {i:#06x})"));
        }
    }
    let hex = |v: &[u8; 10]| v.iter().rev().map(|b| format!("{b:02x}")).collect::<String>();
    for i in 0..8 {
        if a.st[i] != b.st[i] {
            out.push(format!(
                "  st{i} expected {} got {} (initial {})",
                hex(&a.st[i]),
                hex(&b.st[i]),
                hex(&init.st[i])
            ));
        }
    }
}

/// The general registers' differences: for 32- and 16-bit code the eight registers it
/// can name and their low halves (the upper ones are undefined after compatibility
/// mode); `at_fault`: RSP aside (exception and signal frames differ).
fn gpr_diff(case: &Case, a: &[u64; 16], b: &[u64; 16], at_fault: bool, out: &mut Vec<String>) {
    let (n, m) = if case.bits != 64 { (8, u64::from(u32::MAX)) } else { (16, u64::MAX) };
    let at = if at_fault { "at the fault: " } else { "" };
    for (i, name) in GPR_NAMES.iter().enumerate().take(n) {
        if !(at_fault && i == super::RSP) && (a[i] ^ b[i]) & m != 0 {
            out.push(format!(
                "  {at}{name:<4} expected {:#018x} got {:#018x} (initial {:#018x})",
                a[i], b[i], case.gprs[i]
            ));
        }
    }
}

/// The precise state at a fault: registers (RSP aside) and the status flags defined
/// wherever the fault happened, and the data buffer (the stores before it done, the
/// faulting one not).
fn fault_diff(case: &Case, a: &Fault, b: &Fault) -> Result<(), String> {
    let mut out = Vec::new();
    gpr_diff(case, &a.gprs, &b.gprs, true, &mut out);
    let mask = (STATUS & !case.undefined_at_faults) | DF;
    if (a.rflags ^ b.rflags) & mask != 0 {
        out.push(format!(
            "  at the fault: flags expected [{}] got [{}] (compared: {})",
            flag_names(a.rflags & mask),
            flag_names(b.rflags & mask),
            flag_names(mask)
        ));
    }
    mem_diff("data at the fault", super::layout::DATA_BASE, &a.data, &b.data, &mut out);
    if out.is_empty() {
        Ok(())
    } else {
        Err(out.join("\n"))
    }
}

/// The full report of one mismatch.
pub fn describe(case: &Case, backend: &str, diff: &str, seed: u64) -> String {
    format!(
        "{backend} differs from the host CPU on case {} ({}, case seed {:#x}):\n{}\nrerun alone: \
         QUERN_DIFF_SEED={seed:#x} QUERN_DIFF_CASE={} cargo test -p quern --release --test differential\n\
         initial: {}\n         flags [{}], undefined at the end [{}]\ncode:\n{}",
        case.index,
        case.kind,
        case.seed,
        diff,
        case.index,
        (0..16).map(|i| format!("{}={:#x}", GPR_NAMES[i], case.gprs[i])).collect::<Vec<_>>().join(" "),
        flag_names(case.rflags),
        flag_names(case.undefined_flags),
        case.disassembly(),
    )
}
