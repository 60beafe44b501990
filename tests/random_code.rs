//! Random bytes as guest code never take the emulator down.
//!
//! Thousands of seeded random 64-byte strings run under the JIT in 64-bit long mode
//! (and a few hundred in 32-bit protected mode and 16-bit real mode), with random
//! registers and flags, each with a 20 ms watchdog that kicks the vCPU out of endless
//! loops. Every run must end in `Halted`, `Shutdown` (a triple fault: there is no IDT),
//! `Kicked` (the watchdog) or a `CpuError::Guest` — never a panic, a signal, or any
//! other error. A second set of runs has an IDT whose handlers record the vector and
//! halt, so exceptions are delivered instead of escalating. Memory beyond guest RAM is
//! MMIO to a machine with no devices (the accesses are counted).
//!
//! `QUERN_RANDOM_SEED=N` changes the seed; `QUERN_RANDOM_CASE=I` reruns one case of
//! every set.

mod common;
mod diff;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diff::guest::{self, MockOps, Mode, Watchdog};
use diff::layout::{CODE_BASE, DATA_BASE, FAULT_SLOT, RBX_INIT, RSP_INIT, STACK_BASE};
use diff::rng::Rng;
use quern_core::regs::Regs;
use quern_core::{CpuError, Vcpu, VcpuExit};

const DEFAULT_SEED: u64 = 0x7a4d_0c0d_e000_0001;
const LIMIT: Duration = Duration::from_millis(20);

/// How long a kicked run may take to stop: 2 s, times `QUERN_TEST_SLOWDOWN` where the
/// whole program runs slower (scripts/test-aarch64.sh sets it: an emulated host).
fn stop_grace() -> Duration {
    Duration::from_secs(2) * env_u64("QUERN_TEST_SLOWDOWN").map_or(1, |n| n.max(1) as u32)
}
const CODE_LEN: usize = 64;
/// Real-mode code and stack (CS = SS = 0).
const REAL_CODE: u64 = 0x7c00;
const REAL_SP: u64 = 0x7000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let r = if let Some(h) = v.strip_prefix("0x") { u64::from_str_radix(h, 16) } else { v.parse() };
    Some(r.unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

#[derive(Default)]
struct Tally {
    runs: usize,
    exits: BTreeMap<String, usize>,
    /// Vectors that reached an IDT handler.
    vectors: BTreeMap<u8, usize>,
    failures: Vec<String>,
}

/// One set of runs: `count` random strings in `mode`, with or without an IDT.
fn run_set(name: &str, mode: Mode, idt: bool, count: usize, seed: u64, dog: &Watchdog) -> Tally {
    let only = env_u64("QUERN_RANDOM_CASE").map(|c| c as usize);
    let ops = Arc::new(MockOps::default());
    let mut t = Tally::default();
    for i in 0..count {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let case_seed = Rng::derive(seed, i as u64);
        let mut rng = Rng::new(case_seed);
        let mem = guest::memory();
        let sregs = guest::setup(&mem, mode, idt);
        let mut code = vec![0u8; CODE_LEN];
        rng.fill(&mut code);
        // Now and then, prefixes and opcode bytes that lead somewhere interesting.
        if rng.chance(1, 4) {
            let n = rng.below(4) as usize;
            for b in code.iter_mut().take(n) {
                *b = rng.pick(&[0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x26, 0x64, 0x65, 0x48, 0x0f, 0x0f]);
            }
        }
        let mut fill = vec![0u8; 0x2000];
        rng.fill(&mut fill);
        mem.write(DATA_BASE, &fill).unwrap();
        rng.fill(&mut fill);
        mem.write(STACK_BASE, &fill).unwrap();
        let mut g = [0u64; 16];
        for v in g.iter_mut() {
            *v = match rng.below(4) {
                0 => rng.edge_value(64),
                1 => RBX_INIT + rng.below(0x100),
                _ => rng.next(),
            };
        }
        let mut regs = Regs { rflags: (rng.next() & 0x8d5) | 2, ..Default::default() };
        match mode {
            Mode::Real => {
                mem.write(REAL_CODE, &code).unwrap();
                g[4] = REAL_SP;
                regs.rip = REAL_CODE;
            }
            _ => {
                mem.write(CODE_BASE, &code).unwrap();
                g[4] = if idt || rng.chance(3, 4) { RSP_INIT } else { rng.next() };
                if mode == Mode::Protected32 {
                    for v in g.iter_mut() {
                        *v &= 0xffff_ffff;
                    }
                }
                regs.rip = CODE_BASE;
            }
        }
        regs.set_gprs(g);
        let mut vcpu = quern_tcg::TcgVcpu::new(mem.clone()).expect("tcg vcpu");
        vcpu.set_sregs(&sregs).unwrap();
        vcpu.set_regs(&regs).unwrap();
        let hex: String = code.iter().map(|b| format!("{b:02x}")).collect();
        let what = format!("{name} case {i} (seed {case_seed:#x}, code {hex})");

        ops.stop.store(false, Ordering::Release);
        dog.arm(vcpu.kicker(), ops.clone(), LIMIT);
        let started = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| vcpu.run(&*ops)));
        let fired = dog.disarm();
        t.runs += 1;
        let key = match r {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                t.failures.push(format!("{what}: the emulator panicked: {msg}"));
                "panic".to_string()
            }
            Ok(Ok(VcpuExit::Halted)) => {
                let mut slot = [0u8];
                mem.read(FAULT_SLOT, &mut slot).unwrap();
                if idt && slot[0] < 32 {
                    *t.vectors.entry(slot[0]).or_default() += 1;
                    "exception delivered, handler halted".into()
                } else {
                    "halted".into()
                }
            }
            Ok(Ok(VcpuExit::Shutdown)) => "shutdown (triple fault)".into(),
            Ok(Ok(VcpuExit::Kicked)) if fired => "kicked by the watchdog".into(),
            Ok(Err(CpuError::Guest { .. })) => "guest error".into(),
            Ok(other) => {
                t.failures.push(format!("{what}: ended in {other:?}"));
                format!("{other:?}")
            }
        };
        // A run that ignores the kick for long is a hang in the making.
        let took = started.elapsed();
        if took > LIMIT + stop_grace() {
            t.failures.push(format!("{what}: took {took:?} to stop after a {LIMIT:?} watchdog"));
        }
        *t.exits.entry(key).or_default() += 1;
    }
    let exits: Vec<String> = t.exits.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let mut line = format!("random_code {name}: {} runs; {}", t.runs, exits.join(", "));
    if idt {
        let v: Vec<String> = t.vectors.iter().map(|(k, n)| format!("#{k}: {n}")).collect();
        line += &format!("; vectors delivered {}", v.join(" "));
    }
    line +=
        &format!("; {} port and {} MMIO accesses", ops.pio.load(Ordering::Relaxed), ops.mmio.load(Ordering::Relaxed));
    common::report(&line);
    t
}

fn check(sets: &[Tally]) {
    let failures: Vec<&String> = sets.iter().flat_map(|t| &t.failures).collect();
    assert!(
        failures.is_empty(),
        "{} random-code runs went wrong:\n{}",
        failures.len(),
        failures.iter().take(20).map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn random_code_never_crashes_the_jit() {
    let seed = env_u64("QUERN_RANDOM_SEED").unwrap_or(DEFAULT_SEED);
    let dog = Watchdog::new();
    let sets = [
        run_set("long mode", Mode::Long, false, 3000, seed, &dog),
        run_set("32-bit protected mode", Mode::Protected32, false, 300, seed ^ 1, &dog),
        run_set("real mode", Mode::Real, false, 300, seed ^ 2, &dog),
    ];
    check(&sets);
}

#[test]
fn random_code_with_an_idt_delivers_exceptions() {
    let seed = env_u64("QUERN_RANDOM_SEED").unwrap_or(DEFAULT_SEED) ^ 0x1d7;
    let dog = Watchdog::new();
    let sets = [
        run_set("long mode with IDT", Mode::Long, true, 1500, seed, &dog),
        run_set("32-bit protected mode with IDT", Mode::Protected32, true, 300, seed ^ 1, &dog),
        run_set("real mode with IVT", Mode::Real, true, 300, seed ^ 2, &dog),
    ];
    // The handlers must have run: exceptions are delivered, not escalated.
    assert!(sets[0].vectors.values().sum::<usize>() > 100, "too few exceptions reached the long-mode handlers");
    check(&sets);
}
