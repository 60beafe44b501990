//! Boot to power-off: Debian's stock kernel and the busybox initramfs (its /init prints
//! a marker and runs `poweroff -f`), under quern's JIT and under
//! `qemu-system-x86_64 -accel tcg`, in the same run. Needs `scripts/build-test-guest.sh`.
//!
//! Run: `cargo bench --bench linux_boot` (prints a table; QEMU is skipped if missing).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn boot(program: &str, pre: &[&str], kernel: &Path) -> Option<Duration> {
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/guest");
    let start = Instant::now();
    let out = Command::new(program)
        .args(pre)
        .args(["-m", "512", "-nographic", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(guest.join("initramfs.cpio.gz"))
        .args(["-append", "console=ttyS0 panic=-1"])
        .output()
        .ok()?;
    let t = start.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("QUERN-INIT-OK") || !out.status.success() {
        eprintln!("{program} did not boot to the marker and power off: {:?}", out.status);
        return None;
    }
    Some(t)
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
}
