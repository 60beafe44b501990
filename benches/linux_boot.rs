//! Boot to power-off: Debian's stock kernel and the busybox initramfs (its /init prints
//! a marker and runs `poweroff -f`), under quern's JIT and under
//! `qemu-system-x86_64 -accel tcg`, in the same run. Needs `scripts/build-test-guest.sh`.
//!
//! A second table times work inside the guest (sha256sum and gzip|gunzip of 16 MiB,
//! from the bench initramfs's /proc/uptime stamps).
//!
//! Run: `cargo bench --bench linux_boot` (prints tables; QEMU is skipped if missing).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Boots `kernel` with `initrd` (a file of build/guest); returns the wall time and what
/// the guest printed, if it reached its marker and powered off.
fn run_guest(program: &str, pre: &[&str], kernel: &Path, initrd: &str) -> Option<(Duration, String)> {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/guest");
    let start = Instant::now();
    let out = Command::new(program)
        .args(pre)
        .args(["-m", "512", "-nographic", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(guest.join(initrd))
        .args(["-append", "console=ttyS0 panic=-1"])
        .output()
        .ok()?;
    let t = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !text.contains("QUERN-INIT-OK") || !out.status.success() {
        eprintln!("{program} did not boot to the marker and power off: {:?}", out.status);
        return None;
    }
    Some((t, text))
}

/// In-guest timings: "QUERN-BENCH name start end" lines (seconds of /proc/uptime).
fn guest_timings(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "QUERN-BENCH").skip(1);
            let name = w.next()?.to_string();
            let a: f64 = w.next()?.parse().ok()?;
            let b: f64 = w.next()?.parse().ok()?;
            Some((name, b - a))
        })
        .collect()
}

fn boot(program: &str, pre: &[&str], kernel: &Path) -> Option<Duration> {
    run_guest(program, pre, kernel, "initramfs.cpio.gz").map(|r| r.0)
}

fn main() {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/guest");
    if !guest.join("vmlinuz").exists() {
        eprintln!("build/guest is missing: run scripts/build-test-guest.sh first");
        std::process::exit(1);
    }
    let quern = env!("CARGO_BIN_EXE_quern");
    let qemu = "qemu-system-x86_64";
    let have_qemu = Command::new(qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    let reps: usize = std::env::var("QUERN_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    println!("boot to power-off, best of {reps}:");
    println!("| kernel | quern tcg s | QEMU tcg s | quern/QEMU time |");
    println!("|---|---|---|---|");
    for k in ["vmlinuz", "vmlinux"] {
        let kernel = guest.join(k);
        let best = |f: &dyn Fn() -> Option<Duration>| (0..reps).filter_map(|_| f()).min();
        let q = best(&|| boot(quern, &["-accel", "tcg"], &kernel));
        let qe = if have_qemu { best(&|| boot(qemu, &["-accel", "tcg", "-display", "none"], &kernel)) } else { None };
        let f = |d: Option<Duration>| d.map_or("n/a".into(), |d| format!("{:.2}", d.as_secs_f64()));
        let ratio = match (q, qe) {
            (Some(a), Some(b)) => format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64()),
            _ => "n/a".into(),
        };
        println!("| {k} | {} | {} | {ratio} |", f(q), f(qe));
    }

    // Work inside the guest (the bench initramfs times it with /proc/uptime).
    let kernel = guest.join("vmlinuz");
    if !guest.join("initramfs-bench.cpio.gz").exists() {
        eprintln!("initramfs-bench.cpio.gz is missing: run scripts/build-test-guest.sh");
        return;
    }
    let best_timings = |program: &str, pre: &[&str]| -> Vec<(String, f64)> {
        let mut best: Vec<(String, f64)> = Vec::new();
        for _ in 0..reps {
            let Some((_, text)) = run_guest(program, pre, &kernel, "initramfs-bench.cpio.gz") else { continue };
            for (name, t) in guest_timings(&text) {
                match best.iter_mut().find(|(n, _)| *n == name) {
                    Some(e) => e.1 = e.1.min(t),
                    None => best.push((name, t)),
                }
            }
        }
        best
    };
    let q = best_timings(quern, &["-accel", "tcg"]);
    let qe = if have_qemu { best_timings(qemu, &["-accel", "tcg", "-display", "none"]) } else { Vec::new() };
    println!();
    println!("inside the guest (16 MiB), best of {reps}:");
    println!("| workload | quern tcg s | QEMU tcg s | quern/QEMU time |");
    println!("|---|---|---|---|");
    for (name, t) in &q {
        let other = qe.iter().find(|(n, _)| n == name).map(|e| e.1);
        let ratio = other.filter(|o| *o > 0.0).map_or("n/a".into(), |o| format!("{:.2}x", t / o));
        let o = other.map_or("n/a".into(), |o| format!("{o:.2}"));
        println!("| {name} | {t:.2} | {o} | {ratio} |");
    }
}
