//! Several vCPUs: quern's JIT against QEMU's multi-threaded TCG in the same run. The
//! programs guest (benches/programs.rs) with `quern.parallel=N` runs N copies of gzip,
//! bzip2, xz, perl and python3 at once, each batch timed inside the guest and every
//! copy's result checked. Each emulator runs it twice: `-smp 1` with one copy and
//! `-smp N` with N copies (N = 2 by default, QUERN_SMP_CPUS), alternating between the
//! emulators; the table has the best of QUERN_BENCH_REPS runs (2 by default).
//!
//! - speed-up: N x (one copy's time on -smp 1) / (N copies' time on -smp N), the
//!   throughput gained from the extra vCPUs (N would be perfect; on a host with fewer
//!   free cores than N, less);
//! - quern/QEMU: quern's time for the N copies on -smp N over QEMU's;
//! - boot: the guest's uptime when /init starts, with -smp N.
//!
//! Fails (exit status 1, after the table) if a copy's result is wrong or a run does not
//! power off cleanly. Run: `cargo bench --bench smp`.

#[path = "guest_run.rs"]
mod guest_run;

use std::process::Command;

use guest_run::{boot, require_programs_guest, Best, Run};

const WORKLOADS: &[&str] = &["gzip", "bzip2", "xz", "perl", "python3"];

/// The guest's uptime when /init started its first workload (`QUERN-BENCH data a b`).
fn boot_secs(run: &Run) -> Option<f64> {
    run.starts.iter().find(|(n, _)| n == "data").map(|(_, a)| *a)
}

fn main() {
    require_programs_guest();
    let cpus: usize = std::env::var("QUERN_SMP_CPUS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let reps: usize = std::env::var("QUERN_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let host_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let quern = env!("CARGO_BIN_EXE_quern");
    let qemu = "qemu-system-x86_64";
    let have_qemu = Command::new(qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_qemu {
        eprintln!("NOT RUN: the QEMU columns: {qemu} is not installed (apt-get install qemu-system-x86)");
    }
    let mut emulators: Vec<(&str, &str, Vec<&str>)> = vec![("quern", quern, vec!["-accel", "tcg"])];
    if have_qemu {
        // QEMU's TCG is multi-threaded by default for x86 guests on x86 hosts; said
        // explicitly so that a build where it is not fails rather than measures less.
        emulators.push(("QEMU", qemu, vec!["-accel", "tcg,thread=multi", "-display", "none"]));
    }
    // Per emulator: (best of -smp 1, best of -smp N, boot times with -smp N).
    let mut best: Vec<(Best, Best, Vec<f64>)> = emulators.iter().map(|_| Default::default()).collect();
    let mut failures: Vec<String> = Vec::new();
    for rep in 1..=reps {
        for ((name, program, pre), (one, many, boots)) in emulators.iter().zip(best.iter_mut()) {
            for (n, into) in [(1, &mut *one), (cpus, &mut *many)] {
                let smp = n.to_string();
                let mut args = pre.clone();
                args.extend(["-smp", &smp]);
                let run = boot(program, &args, &format!("console=ttyS0 panic=-1 quern.parallel={n}"));
                eprintln!("{name} -smp {n} run {rep}/{reps}: {:.1} s", run.wall.as_secs_f64());
                for w in WORKLOADS {
                    let key = format!("par-{w}");
                    match run.checks.iter().find(|(c, _)| *c == key) {
                        Some((_, c)) if c == "ok" => {}
                        Some((_, c)) => failures.push(format!("{name} -smp {n} run {rep}: {key} {c}")),
                        None => failures.push(format!("{name} -smp {n} run {rep}: no QUERN-CHECK {key} line")),
                    }
                }
                if let Some(t) = &run.trouble {
                    failures.push(format!("{name} -smp {n} run {rep}: {t}"));
                }
                if n == cpus {
                    boots.extend(boot_secs(&run));
                }
                into.add(&run);
            }
        }
    }

    println!();
    println!(
        "SMP: {cpus} copies on -smp {cpus} against one on -smp 1 ({host_cores} host cores); best of {reps}, seconds in \
         the guest"
    );
    let mut header = format!("| workload | quern -smp 1 | quern -smp {cpus} | quern speed-up |");
    let mut rule = "|---|---:|---:|---:|".to_string();
    if have_qemu {
        header += &format!(" QEMU -smp 1 | QEMU -smp {cpus} | QEMU speed-up | quern/QEMU (-smp {cpus}) |");
        rule += "---:|---:|---:|---:|";
    }
    println!("{header}\n{rule}");
    let secs = |b: &Best, w: &str| b.get(&format!("par-{w}")).flatten();
    let fmt = |v: Option<f64>, digits: usize| v.map_or("fail".to_string(), |v| format!("{v:.digits$}"));
    let speedup = |one: Option<f64>, many: Option<f64>| one.zip(many).map(|(a, b)| cpus as f64 * a / b);
    let (mut gains, mut ratios) = (Vec::new(), Vec::new());
    for w in WORKLOADS {
        let (q1, qn) = (secs(&best[0].0, w), secs(&best[0].1, w));
        let gain = speedup(q1, qn);
        gains.extend(gain);
        let mut row = format!("| {w} | {} | {} | {}x |", fmt(q1, 2), fmt(qn, 2), fmt(gain, 2));
        if let Some((e1, en, _)) = best.get(1) {
            let (m1, mn) = (secs(e1, w), secs(en, w));
            let ratio = qn.zip(mn).map(|(a, b)| a / b);
            ratios.extend(ratio);
            row += &format!(" {} | {} | {}x | {}x |", fmt(m1, 2), fmt(mn, 2), fmt(speedup(m1, mn), 2), fmt(ratio, 2));
        }
        println!("{row}");
    }
    let geo = |v: &[f64]| (!v.is_empty()).then(|| (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp());
    let mut row = format!("| geometric mean | | | {}x |", fmt(geo(&gains), 2));
    if have_qemu {
        row += &format!(" | | | {}x |", fmt(geo(&ratios), 2));
    }
    println!("{row}");
    let min = |v: &[f64]| v.iter().copied().reduce(f64::min);
    let mut row = format!("| boot to /init, -smp {cpus} | | {} | |", fmt(min(&best[0].2), 2));
    if let Some((_, _, b)) = best.get(1) {
        let ratio = min(&best[0].2).zip(min(b)).map(|(a, b)| a / b);
        row += &format!(" | {} | | {}x |", fmt(min(b), 2), fmt(ratio, 2));
    }
    println!("{row}");

    if !failures.is_empty() {
        eprintln!("\nFAILED:");
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}
