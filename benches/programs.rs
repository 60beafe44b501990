//! Real Debian programs inside the guest, quern's JIT against `qemu-system-x86_64 -accel
//! tcg` in the same run: the stock kernel with build/guest/initramfs-programs.cpio.gz
//! (scripts/build-programs-guest.sh), whose /init runs a workload of each program (xz,
//! bzip2, zstd, gzip, openssl, sqlite3, perl, python3 and busybox's tools), timed with
//! /proc/uptime (`QUERN-BENCH name start end`) and checked against results computed on
//! the host (`QUERN-CHECK name ok|FAIL`), then powers off. Both emulators get the same
//! command line; the runs alternate between them. The table has the best time of each
//! workload over the runs, the geometric mean of the ratios, and the wall time from
//! start to power-off.
//!
//! Fails (exit status 1, after the table) if any check says FAIL, or a run does not get
//! to the init marker and power off, on either emulator.
//!
//! Run: `cargo bench --bench programs` (QEMU is skipped if missing; QUERN_BENCH_REPS
//! sets the runs per emulator, 3 by default; QUERN_BENCH_APPEND adds kernel parameters
//! to both, e.g. `quern.quick=1` for the small inputs of tests/debian_programs.rs).

#[path = "guest_run.rs"]
mod guest_run;

use std::process::Command;

use guest_run::{boot, require_programs_guest, Best};

/// What the table calls the guest's workloads (build-programs-guest.sh has the sizes).
const LABELS: &[(&str, &str)] = &[
    ("data", "busybox awk + tr: make the 4 MiB text"),
    ("sha256sum", "busybox sha256sum"),
    ("md5sum", "busybox md5sum"),
    ("gzip", "gzip -6, and -d"),
    ("bzip2", "bzip2 -9, and -d"),
    ("xz", "xz -6, and -d"),
    ("zstd", "zstd -19, and -d"),
    ("openssl-sha256", "openssl dgst -sha256"),
    ("openssl-aes", "openssl enc aes-128-cbc, and -d"),
    ("sqlite3", "sqlite3: inserts, index, queries"),
    ("perl", "perl: regexes, a hash"),
    ("python3", "python3: dicts, strings, json"),
    ("awk", "busybox seq \\| awk, floating point"),
];

fn main() {
    require_programs_guest();
    let quern = env!("CARGO_BIN_EXE_quern");
    let qemu = "qemu-system-x86_64";
    let have_qemu = Command::new(qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_qemu {
        eprintln!("NOT RUN: the QEMU column: {qemu} is not installed (apt-get install qemu-system-x86)");
    }
    let reps: usize = std::env::var("QUERN_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let extra = std::env::var("QUERN_BENCH_APPEND").unwrap_or_default();
    let append = format!("console=ttyS0 panic=-1 {extra}").trim_end().to_string();

    let mut emulators: Vec<(&str, &str, Vec<&str>)> = vec![("quern", quern, vec!["-accel", "tcg"])];
    if have_qemu {
        emulators.push(("QEMU", qemu, vec!["-accel", "tcg", "-display", "none"]));
    }
    let mut best: Vec<Best> = emulators.iter().map(|_| Best::default()).collect();
    let mut failures: Vec<String> = Vec::new();
    for rep in 1..=reps {
        for ((name, program, pre), best) in emulators.iter().zip(best.iter_mut()) {
            let run = boot(program, pre, &append);
            eprintln!("{name} run {rep}/{reps}: {:.1} s", run.wall.as_secs_f64());
            for (w, c) in run.checks.iter().filter(|(_, c)| c != "ok") {
                failures.push(format!("{name} run {rep}: QUERN-CHECK {w} {c}"));
            }
            for (w, _) in LABELS.iter().filter(|(w, _)| !run.checks.iter().any(|(n, _)| n == w)) {
                failures.push(format!("{name} run {rep}: no QUERN-CHECK {w} line"));
            }
            if let Some(t) = &run.trouble {
                failures.push(format!("{name} run {rep}: {t}"));
            }
            best.add(&run);
        }
    }

    let quern_best = &best[0];
    let qemu_best = best.get(1);
    let cell = |v: Option<Option<f64>>| match v {
        None => "n/a".to_string(),
        Some(None) => "FAIL".to_string(),
        Some(Some(t)) => format!("{t:.2}"),
    };
    println!("Debian programs in the guest ({append}), best of {reps}:");
    println!("| program | quern s | QEMU s | quern/QEMU |");
    println!("|---|---|---|---|");
    let mut names: Vec<&str> = LABELS.iter().map(|l| l.0).collect();
    for b in &best {
        for (n, _) in &b.workloads {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    let mut ratios = Vec::new();
    for name in names {
        let label = LABELS.iter().find(|(n, _)| *n == name).map_or(name, |l| l.1);
        let q = quern_best.get(name);
        let e = qemu_best.and_then(|b| b.get(name));
        let ratio = match (q, e) {
            (Some(Some(a)), Some(Some(b))) if a > 0.0 && b > 0.0 => {
                ratios.push(a / b);
                format!("{:.2}x", a / b)
            }
            _ => "n/a".into(),
        };
        println!("| {label} | {} | {} | {ratio} |", cell(q), cell(e));
    }
    let geomean = (!ratios.is_empty())
        .then(|| (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp())
        .map_or("n/a".into(), |g| format!("{g:.2}x"));
    println!("| geometric mean ({} programs) | | | {geomean} |", ratios.len());
    let wall = |b: Option<&Best>| b.and_then(|b| b.wall).map(|w| w.as_secs_f64());
    let (qw, ew) = (wall(Some(quern_best)), wall(qemu_best));
    let ratio = qw.zip(ew).map_or("n/a".into(), |(a, b)| format!("{:.2}x", a / b));
    let f = |w: Option<f64>| w.map_or("n/a".into(), |w| format!("{w:.1}"));
    println!("| boot to power-off, wall | {} | {} | {ratio} |", f(qw), f(ew));

    if !failures.is_empty() {
        eprintln!();
        eprintln!("FAILED: {} problem(s):", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}
