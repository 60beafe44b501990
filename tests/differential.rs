//! The JIT against the host CPU, instruction by instruction (and KVM, where it runs).
//!
//! Every case is a short sequence of user-mode integer, SSE/SSE2 and x87 instructions
//! (see `diff/gen.rs`) with random registers, flags, MXCSR (every rounding mode, DAZ,
//! FTZ), x87 stack and control word (every rounding and precision mode), data buffer
//! and stack, in 64-bit, 32-bit or 16-bit code (32-bit: natively in compatibility mode,
//! in the guest in protected mode; 16-bit: natively in LDT code and data segments
//! based at the case's pages, in the guest in real mode with the same bases). It runs natively in a forked child at the guest's
//! addresses, under the JIT, and under KVM; general registers (the low halves of the
//! eight for 32-bit code), the defined status flags, DF, XMM registers, MXCSR, the x87
//! registers, status, control and tag words, the data buffer and the stack page must
//! match the host CPU's, and a case that faults natively must raise the matching
//! exception in the guest with the same state at the fault: general registers (RSP
//! aside), the status flags defined there and the data buffer (natively from the
//! signal's context, in the guest from the handler's registers and exception frame).
//!
//! Environment:
//! - `QUERN_DIFF_SEED=N`: the run's seed (default fixed, so CI is deterministic).
//! - `QUERN_DIFF_CASE=I`: run only case I (as printed with a mismatch).
//! - `QUERN_DIFF_CASES=N`: number of random cases (default 3000).
//! - `QUERN_DIFF_RECORD=FILE` (x86-64): also write the host CPU's outcomes to FILE.
//! - `QUERN_DIFF_RECORDED=FILE` (other hosts, where there is no x86 CPU to compare
//!   with): compare with the outcomes recorded in FILE; the run's seed, case count and
//!   CPU features are the record's.

mod common;
mod diff;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diff::compare::{compare, describe, Outcome};
#[cfg(target_arch = "x86_64")]
use diff::gen::Features;
use diff::gen::{structured_forms, Case, Catalog, Gen, Recipe};
use diff::guest::{self, MockOps, Mode, Watchdog};
#[cfg(target_arch = "x86_64")]
use diff::record;
use diff::record::Header;
#[cfg(not(target_arch = "x86_64"))]
use diff::record::Record;
use diff::rng::Rng;
use quern_core::Vcpu;

#[cfg(target_arch = "x86_64")]
const DEFAULT_SEED: u64 = 0x0d1f_f5ee_d000_0001;
#[cfg(target_arch = "x86_64")]
const DEFAULT_RANDOM_CASES: usize = 3000;
/// Variants of each instruction form with edge-valued operands.
const STRUCTURED_PER_FORM: usize = 3;
const STRING_PER_FORM: usize = 6;
const RUN_LIMIT: Duration = Duration::from_secs(5);

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let r = if let Some(h) = v.strip_prefix("0x") { u64::from_str_radix(h, 16) } else { v.parse() };
    Some(r.unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

/// Every case of a run, in index order, with its code size: the 64-bit forms, then
/// the 32-bit ones (a third as many random cases).
fn recipes(cats: &[&Catalog], random: usize) -> Vec<(u32, Recipe)> {
    let mut r = Vec::new();
    for cat in cats {
        let random = if cat.bits == 64 { random } else { random / 3 };
        for code in structured_forms(cat) {
            for _ in 0..STRUCTURED_PER_FORM {
                r.push((cat.bits, Recipe::Structured { code }));
            }
        }
        for &code in &cat.strings {
            for _ in 0..STRING_PER_FORM {
                r.push((cat.bits, Recipe::String { code }));
            }
        }
        let mut len_rng = Rng::new(0x1e57 ^ u64::from(cat.bits));
        for _ in 0..random {
            r.push((cat.bits, Recipe::Random { len: 1 + len_rng.below(24) as usize }));
        }
    }
    r
}

fn mode_of(case: &Case) -> Mode {
    match case.bits {
        16 => Mode::Real,
        32 => Mode::Protected32,
        _ => Mode::Long,
    }
}

/// The special registers case `case` starts with.
fn sregs_of(mem: &quern_core::GuestMemory, case: &Case) -> quern_core::regs::SpecialRegs {
    let mut s = guest::setup(mem, mode_of(case), true);
    if case.bits == 16 {
        guest::base_16bit_segments(&mut s);
    }
    s
}

#[derive(Default)]
struct Tally {
    ran: usize,
    passed: usize,
    faulted: usize,
    /// Of the matching faults: those whose registers, flags and data at the fault
    /// were compared too.
    fault_states: usize,
    host_limits: usize,
    host_limit_examples: Vec<String>,
    /// Of the host limits: cases the backend ran but got differently from the host CPU.
    diverged: usize,
    divergence_examples: Vec<String>,
    mismatches: Vec<String>,
    /// One line a mismatch: case, code, first difference.
    brief: Vec<String>,
}

/// `emulated`: the backend is kvm_pvm, whose instruction emulator runs this ring-0 code;
/// its divergences from the host CPU are host limits (reported, never passes), not
/// quern's failures.
fn check(name: &str, case: &Case, native: &Outcome, got: &Outcome, seed: u64, emulated: bool, t: &mut Tally) {
    t.ran += 1;
    if let Outcome::HostLimit(reason) = got {
        t.host_limits += 1;
        if t.host_limit_examples.len() < 3 {
            t.host_limit_examples.push(format!("case {}: {reason}", case.index));
        }
        return;
    }
    match compare(case, native, got) {
        Ok(()) => {
            t.passed += 1;
            if !matches!(got, Outcome::Ok(_)) {
                t.faulted += 1;
            }
            if matches!((native, got), (Outcome::Signal(_, Some(_)), Outcome::Exception(_, Some(_)))) {
                t.fault_states += 1;
            }
        }
        Err(d) if emulated => {
            t.host_limits += 1;
            t.diverged += 1;
            if t.divergence_examples.len() < 3 {
                let code = case
                    .disassembly()
                    .lines()
                    .map(|l| l.split_at(36.min(l.len())).1.trim().to_string())
                    .collect::<Vec<_>>();
                t.divergence_examples.push(format!(
                    "case {}: {} :: {}",
                    case.index,
                    code.join("; "),
                    d.lines().next().unwrap_or("").trim()
                ));
            }
        }
        Err(d) => {
            let code = case
                .disassembly()
                .lines()
                .map(|l| l.split_at(36.min(l.len())).1.trim().to_string())
                .collect::<Vec<_>>();
            t.brief.push(format!(
                "case {}: {} :: {}",
                case.index,
                code.join("; "),
                d.lines().next().unwrap_or("").trim()
            ));
            t.mismatches.push(describe(case, name, &d, seed));
        }
    }
}

#[test]
fn jit_matches_the_host_cpu() {
    let started = Instant::now();
    let Some(reference) = Reference::new() else { return };
    let header = reference.header;
    let seed = header.seed;
    let only = env_u64("QUERN_DIFF_CASE").map(|c| c as usize);
    let cat64 = Catalog::new(header.features, 64);
    let cat32 = Catalog::new(header.features, 32);
    let cat16 = Catalog::new(header.features, 16);
    let mut cats = vec![&cat64, &cat32];
    if header.with_16bit {
        cats.push(&cat16);
    }
    let recipes = recipes(&cats, header.random as usize);
    let cases: Vec<Case> = recipes
        .iter()
        .enumerate()
        .filter(|(i, _)| only.is_none_or(|o| o == *i))
        .map(|(i, &(bits, r))| {
            let s = Rng::derive(seed, i as u64);
            let cat = match bits {
                16 => &cat16,
                32 => &cat32,
                _ => &cat64,
            };
            Gen::new(s, cat).generate(r, header.epilogues.for_bits(bits), i, s)
        })
        .collect();
    assert!(!cases.is_empty(), "no case {only:?}: the run has {} cases", recipes.len());
    let generated = started.elapsed();

    let native = reference.outcomes(&cases, only.is_none());
    let native_time = started.elapsed() - generated;
    let native_faults = native.iter().filter(|o| matches!(o, Outcome::Signal(..))).count();
    // The JIT: a fresh vCPU and memory for every case.
    let dog = Watchdog::new();
    let ops = Arc::new(MockOps::default());
    let mut tcg = Tally::default();
    let t0 = Instant::now();
    for (case, want) in cases.iter().zip(&native) {
        let mem = guest::memory();
        let sregs = sregs_of(&mem, case);
        let regs = guest::load_case(&mem, case);
        let mut vcpu = quern_tcg::TcgVcpu::new(mem.clone()).expect("tcg vcpu");
        vcpu.set_sregs(&sregs).unwrap();
        vcpu.set_regs(&regs).unwrap();
        vcpu.set_fpu(&guest::fpu_of(case)).unwrap();
        let got = guest::run_case(&mut vcpu, &mem, &ops, &dog, RUN_LIMIT);
        check("tcg", case, want, &got, seed, false, &mut tcg);
    }
    let tcg_time = t0.elapsed();

    let (kvm, kvm_ran, kvm_time) = kvm_leg(&cases, &native, &ops, &dog, seed);

    // What ran, by mnemonic, for the record.
    let mut by_mnemonic: BTreeMap<String, usize> = BTreeMap::new();
    for c in &cases {
        for m in &c.mnemonics {
            *by_mnemonic.entry(format!("{m:?}").to_lowercase()).or_default() += 1;
        }
    }
    let insns: usize = by_mnemonic.values().sum();
    common::report(&format!(
        "differential: seed {seed:#x}, {} cases ({} structured, {} random; {} of them 32-bit and {} 16-bit code; {insns} \
         instructions, {} mnemonics); \
         {}: {} ran, {native_faults} faulted; tcg: {}/{} passed ({} as matching faults, {} with the state at the fault), {} mismatches; \
         kvm: {}; time: gen {:.1}s native {:.1}s tcg {:.1}s kvm {:.1}s",
        cases.len(),
        cases.iter().filter(|c| !matches!(recipes[c.index].1, Recipe::Random { .. })).count(),
        cases.iter().filter(|c| matches!(recipes[c.index].1, Recipe::Random { .. })).count(),
        cases.iter().filter(|c| c.bits == 32).count(),
        cases.iter().filter(|c| c.bits == 16).count(),
        by_mnemonic.len(),
        reference.name,
        cases.len() - native_faults,
        tcg.passed,
        tcg.ran,
        tcg.faulted,
        tcg.fault_states,
        tcg.mismatches.len(),
        if kvm_ran {
            format!(
                "{}/{} passed ({} as matching faults), {} host limits, {} mismatches",
                kvm.passed,
                kvm.ran,
                kvm.faulted,
                kvm.host_limits,
                kvm.mismatches.len()
            )
        } else {
            "not run".into()
        },
        generated.as_secs_f64(),
        native_time.as_secs_f64(),
        tcg_time.as_secs_f64(),
        kvm_time.as_secs_f64(),
    ));
    if kvm.host_limits > kvm.diverged {
        common::report(&format!(
            "HOST LIMIT: differential (KVM leg): KVM could not run {} of {} cases (e.g. {}); they are not counted as \
             passes",
            kvm.host_limits - kvm.diverged,
            kvm.ran,
            kvm.host_limit_examples.join("; ")
        ));
    }
    if kvm.diverged > 0 {
        common::report(&format!(
            "HOST LIMIT (kvm_pvm): differential (KVM leg): KVM's instruction emulator, which runs this ring-0 code on \
             kvm_pvm, differs from the host CPU on {} of {} cases; they are not counted as passes. E.g.:\n  {}",
            kvm.diverged,
            kvm.ran,
            kvm.divergence_examples.join("\n  ")
        ));
    }
    let mut failures = Vec::new();
    for (name, t) in [("tcg", &tcg), ("kvm", &kvm)] {
        if !t.mismatches.is_empty() {
            failures.push(format!(
                "{name}: {} of {} cases differ from the host CPU:\n{}\n\nthe first in full:\n\n{}",
                t.mismatches.len(),
                t.ran,
                t.brief.iter().take(60).cloned().collect::<Vec<_>>().join("\n"),
                t.mismatches.iter().take(3).cloned().collect::<Vec<_>>().join("\n\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Where the expected outcomes come from: the host CPU (x86-64), or a record of its
/// outcomes made on x86-64 (elsewhere).
struct Reference {
    header: Header,
    name: &'static str,
    #[cfg(not(target_arch = "x86_64"))]
    record: Record,
}

impl Reference {
    #[cfg(target_arch = "x86_64")]
    fn new() -> Option<Reference> {
        let seed = env_u64("QUERN_DIFF_SEED").unwrap_or(DEFAULT_SEED);
        let random = env_u64("QUERN_DIFF_CASES").unwrap_or(DEFAULT_RANDOM_CASES as u64);
        let with_16bit = diff::native::can_run_16bit();
        if !with_16bit {
            common::report(
                "NOT RUN: differential: 16-bit code (this kernel refuses modify_ldt, so the host cannot run 16-bit \
                 code segments to compare with)",
            );
        }
        let (_, epilogues) = diff::native::stub();
        let header = Header { seed, random, features: Features::host(), with_16bit, epilogues };
        Some(Reference { header, name: "native" })
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn new() -> Option<Reference> {
        let Some(path) = std::env::var_os("QUERN_DIFF_RECORDED") else {
            common::report(
                "NOT RUN: differential: this host is not x86-64, so the cases need the outcomes recorded on one: \
                 run the test on x86-64 with QUERN_DIFF_RECORD=FILE, then here with QUERN_DIFF_RECORDED=FILE \
                 (scripts/test-aarch64.sh does both)",
            );
            return None;
        };
        let record = Record::read(std::path::Path::new(&path))
            .unwrap_or_else(|e| panic!("QUERN_DIFF_RECORDED={}: {e}", path.to_string_lossy()));
        let header = record.header;
        for (name, ours, theirs) in [
            ("QUERN_DIFF_SEED", env_u64("QUERN_DIFF_SEED"), header.seed),
            ("QUERN_DIFF_CASES", env_u64("QUERN_DIFF_CASES"), header.random),
        ] {
            if let Some(v) = ours {
                assert_eq!(v, theirs, "{name}={v}, but the record was made with {theirs}: record that run");
            }
        }
        if !header.with_16bit {
            common::report(
                "NOT RUN: differential: 16-bit code (the x86-64 host that recorded the outcomes could not run it)",
            );
        }
        Some(Reference { header, name: "recorded on x86-64", record })
    }

    /// The expected outcome of every case; `full`: all the run's cases (a record is
    /// written only of those).
    #[cfg(target_arch = "x86_64")]
    fn outcomes(&self, cases: &[Case], full: bool) -> Vec<Outcome> {
        let native = diff::native::run(cases);
        for (c, o) in cases.iter().zip(&native) {
            if let Outcome::Error(e) = o {
                panic!("case {}: {e}", c.index);
            }
        }
        if let Some(path) = std::env::var_os("QUERN_DIFF_RECORD") {
            if !full {
                common::report("differential: QUERN_DIFF_RECORD ignored: it records whole runs, not one case");
                return native;
            }
            let path = std::path::Path::new(&path);
            record::write(path, &self.header, cases, &native)
                .unwrap_or_else(|e| panic!("QUERN_DIFF_RECORD={}: {e}", path.display()));
            common::report(&format!("differential: the host CPU's outcomes recorded in {}", path.display()));
        }
        native
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn outcomes(&self, cases: &[Case], _full: bool) -> Vec<Outcome> {
        cases.iter().map(|c| self.record.outcome(c).unwrap_or_else(|e| panic!("QUERN_DIFF_RECORDED: {e}"))).collect()
    }
}

/// KVM: one VM, reloaded for every case. Returns the tally, whether KVM ran and the
/// time.
#[cfg(target_arch = "x86_64")]
fn kvm_leg(
    cases: &[Case],
    native: &[Outcome],
    ops: &Arc<MockOps>,
    dog: &Watchdog,
    seed: u64,
) -> (Tally, bool, Duration) {
    let mut kvm = Tally::default();
    let t0 = Instant::now();
    let kvm_ran = common::kvm_usable("jit_matches_the_host_cpu (KVM leg)");
    let pvm = quern_accel_kvm::is_pvm_host();
    if kvm_ran {
        let mem = guest::memory();
        let accel = quern_accel_kvm::KvmAccelerator::new(mem.clone(), quern_accel_kvm::KvmConfig::default())
            .expect("KVM accelerator");
        let mut vcpu = quern_core::Accelerator::create_vcpu(&accel, 0).expect("KVM vCPU");
        for (case, want) in cases.iter().zip(native) {
            let sregs = sregs_of(&mem, case);
            let regs = guest::load_case(&mem, case);
            vcpu.set_sregs(&sregs).unwrap();
            vcpu.set_regs(&regs).unwrap();
            vcpu.set_fpu(&guest::fpu_of(case)).unwrap();
            let got = guest::run_case(&mut *vcpu, &mem, ops, dog, RUN_LIMIT);
            check("kvm", case, want, &got, seed, pvm, &mut kvm);
        }
    }
    (kvm, kvm_ran, t0.elapsed())
}

/// KVM runs guests of the host's own architecture only.
#[cfg(not(target_arch = "x86_64"))]
fn kvm_leg(_: &[Case], _: &[Outcome], _: &Arc<MockOps>, _: &Watchdog, _: u64) -> (Tally, bool, Duration) {
    let ran = common::kvm_usable("jit_matches_the_host_cpu (KVM leg)");
    (Tally::default(), ran, Duration::ZERO)
}
