//! Disk benchmark, quern against `qemu-system-x86_64` on the same image in the same run:
//! the time from start to the init marker of build/guest/disk.img booted through SeaBIOS
//! and SYSLINUX (`QUERN-DISK-INIT-OK`, printed before any module loads), and sequential
//! read and write throughput inside the guest: its init, given `quern.bench` on the
//! kernel command line (so booted with -kernel/-initrd/-append, the image's own
//! syslinux.cfg being fixed), runs dd with O_DIRECT and 1 MiB blocks over the disk's
//! 64 MiB data partition, reading then writing, timed with the guest's monotonic clock.
//! Both emulators get the same command line, with `-nic none` (quern has no NIC; QEMU's
//! would load and run iPXE's option ROM). Every run boots a fresh copy of the image.
//! KVM rows where the host's KVM can run the guest; HOST LIMIT otherwise.
//! Needs `scripts/build-test-guest.sh`.
//!
//! Run: `cargo bench --bench disk` (prints tables; QEMU is skipped if missing;
//! QUERN_BENCH_REPS sets the repetitions, 3 by default).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(300);
const INIT_MARKER: &str = "QUERN-DISK-INIT-OK";
/// MiB that each dd moves (the data partition).
const MIB: f64 = 64.0;

fn guest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/guest")
}

/// A fresh sparse copy of disk.img (the bench writes to it).
fn disk_copy(dir: &Path) -> PathBuf {
    let p = dir.join("disk.img");
    let _ = std::fs::remove_file(&p);
    let ok = Command::new("cp").arg("--sparse=always").arg(guest().join("disk.img")).arg(&p).status();
    assert!(ok.is_ok_and(|s| s.success()), "cannot copy disk.img");
    p
}

/// Runs `program` with `args` until it exits (or, with `stop_at_marker`, until its
/// output holds the init marker: then it is killed). Returns the time at which the marker
/// appeared and the output, or `None` (with a message) if it never did or the run failed.
fn run(program: &str, args: &[String], stop_at_marker: bool) -> Option<(Duration, String)> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(None));
    let mut stdout = child.stdout.take().unwrap();
    let (o, s) = (out.clone(), seen.clone());
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            let mut o = o.lock().unwrap();
            o.extend_from_slice(&chunk[..n]);
            let mut s = s.lock().unwrap();
            if s.is_none() && o.windows(INIT_MARKER.len()).any(|w| w == INIT_MARKER.as_bytes()) {
                *s = Some(start.elapsed());
            }
        }
    });
    let status = loop {
        if let Some(st) = child.try_wait().ok()? {
            break Some(st);
        }
        if (stop_at_marker && seen.lock().unwrap().is_some()) || start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = reader.join();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let text = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    let at = *seen.lock().unwrap();
    let ok = at.is_some() && (stop_at_marker || status.is_some_and(|s| s.success()));
    if !ok {
        let tail: String = err.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
        eprintln!("{program} {}: no marker or no clean power-off ({status:?}): {tail}", args.join(" "));
        return None;
    }
    Some((at.unwrap(), text))
}

fn base_args(accel: &str, disk: &Path) -> Vec<String> {
    ["-accel", accel, "-m", "512", "-nographic", "-no-reboot", "-nic", "none", "-drive"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("file={},format=raw,if=ide", disk.display())])
        .collect()
}

/// Seconds from start to the init marker, booting the disk through the firmware.
fn boot_to_marker(program: &str, accel: &str, dir: &Path) -> Option<Duration> {
    let disk = disk_copy(dir);
    run(program, &base_args(accel, &disk), true).map(|r| r.0)
}

/// MiB/s of the guest's dd runs: ("disk-read-64M", x), ("disk-write-64M", y).
fn throughput(program: &str, accel: &str, dir: &Path) -> Vec<(String, f64)> {
    let disk = disk_copy(dir);
    let mut args = base_args(accel, &disk);
    let g = guest();
    args.extend([
        "-kernel".into(),
        g.join("vmlinuz").display().to_string(),
        "-initrd".into(),
        g.join("initramfs-disk.cpio.gz").display().to_string(),
        "-append".into(),
        "console=ttyS0 quern.bench".into(),
    ]);
    let Some((_, text)) = run(program, &args, false) else { return Vec::new() };
    let rows: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "QUERN-BENCH").skip(1);
            let name = w.next()?.to_string();
            let a: f64 = w.next()?.parse().ok()?;
            let b: f64 = w.next()?.parse().ok()?;
            Some((name, MIB / (b - a).max(1e-6)))
        })
        .collect();
    if rows.len() != 2 {
        eprintln!("{program}: the guest printed no QUERN-BENCH lines (is build/guest current? rerun scripts/build-test-guest.sh)");
    }
    rows
}

/// Why KVM cannot run the disk guest here, if it cannot.
fn kvm_limit() -> Option<String> {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Some(format!("HOST LIMIT: no usable /dev/kvm ({e})"));
    }
    Path::new("/sys/module/kvm_pvm").exists().then(|| {
        "HOST LIMIT (kvm_pvm): SYSLINUX's protected-mode code stops in KVM's instruction emulator (emulation \
         failure at an IRET, under QEMU -accel kvm too) and the bzImage's decompressor does not finish there: \
         no KVM rows (tests/disk_boot.rs shows how far the boot gets; docs/kvm-pvm.md)"
            .to_string()
    })
}

fn main() {
    let g = guest();
    for f in ["disk.img", "vmlinuz", "initramfs-disk.cpio.gz"] {
        if !g.join(f).exists() {
            eprintln!("build/guest/{f} is missing: run scripts/build-test-guest.sh first");
            std::process::exit(1);
        }
    }
    let quern = env!("CARGO_BIN_EXE_quern");
    let qemu = "qemu-system-x86_64";
    let have_qemu = Command::new(qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_qemu {
        eprintln!("NOT RUN: the QEMU columns: {qemu} is not installed (apt-get install qemu-system-x86)");
    }
    let reps: usize = std::env::var("QUERN_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("quern-bench-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let limit = kvm_limit();
    let accels: Vec<&str> = if limit.is_none() { vec!["tcg", "kvm"] } else { vec!["tcg"] };
    let f = |d: Option<f64>| d.map_or("n/a".into(), |d| format!("{d:.2}"));

    println!("disk boot to the init marker (SeaBIOS, SYSLINUX, kernel, {INIT_MARKER}), best of {reps}:");
    println!("| accel | quern s | QEMU s | quern/QEMU time |");
    println!("|---|---|---|---|");
    for accel in &accels {
        let best = |p: &str| (0..reps).filter_map(|_| boot_to_marker(p, accel, &dir)).min().map(|d| d.as_secs_f64());
        let q = best(quern);
        let qe = if have_qemu { best(qemu) } else { None };
        let ratio = match (q, qe) {
            (Some(a), Some(b)) => format!("{:.2}x", a / b),
            _ => "n/a".into(),
        };
        println!("| {accel} | {} | {} | {ratio} |", f(q), f(qe));
    }
    if limit.is_some() {
        println!("| kvm | HOST LIMIT (below) | | |");
    }

    println!();
    println!("inside the guest: dd with O_DIRECT, 1 MiB blocks, {MIB} MiB of /dev/sda, best of {reps}:");
    println!("| workload | accel | quern MiB/s | QEMU MiB/s | quern/QEMU throughput |");
    println!("|---|---|---|---|---|");
    for accel in &accels {
        let best = |p: &str| {
            let mut best: Vec<(String, f64)> = Vec::new();
            for _ in 0..reps {
                for (name, v) in throughput(p, accel, &dir) {
                    match best.iter_mut().find(|(n, _)| *n == name) {
                        Some(e) => e.1 = e.1.max(v),
                        None => best.push((name, v)),
                    }
                }
            }
            best
        };
        let q = best(quern);
        let qe = if have_qemu { best(qemu) } else { Vec::new() };
        for (name, v) in &q {
            let other = qe.iter().find(|(n, _)| n == name).map(|e| e.1);
            let ratio = other.map_or("n/a".into(), |o| format!("{:.2}x", v / o));
            println!("| {name} | {accel} | {v:.0} | {} | {ratio} |", other.map_or("n/a".into(), |o| format!("{o:.0}")));
        }
    }
    if let Some(l) = &limit {
        println!("| both | kvm | HOST LIMIT (below) | | |");
        println!();
        println!("{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
