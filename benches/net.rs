//! The network as guests use it: quern against QEMU with the same backend and card
//! (`-netdev user -device e1000`) on the same guest, in the same run. The stock kernel
//! with build/guest/initramfs-net.cpio.gz (`quern.bench=`, scripts/build-net-guest.sh)
//! gets a DHCP lease, then busybox wget downloads 64 MiB from an HTTP server this
//! benchmark runs on 127.0.0.1 (host to guest), POSTs 16 MiB to it (guest to host), and
//! pings the gateway 20 times. Throughputs from the guest's own clock around each
//! transfer; latency is ping's average. Each emulator runs QUERN_BENCH_REPS times (2 by
//! default), alternating; the table has the best.
//!
//! Fails (exit status 1, after the table) if a run does not finish cleanly or a
//! transfer's size is wrong. Run: `cargo bench --bench net`.

#[path = "../tests/common/http.rs"]
mod http;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DOWN_BYTES: usize = 64 << 20;
const UP_BYTES: usize = 16 << 20;
const LIMIT: Duration = Duration::from_secs(600);

fn guest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/guest")
}

/// One run's figures: MB/s down, MB/s up, ms ping average.
#[derive(Clone, Copy, Debug)]
struct Figures {
    down: f64,
    up: f64,
    ping: f64,
}

fn words_after<'a>(text: &'a str, tag: &str) -> Option<Vec<&'a str>> {
    text.lines().find_map(|l| Some(l[l.find(tag)? + tag.len()..].split_whitespace().collect()))
}

fn run(program: &str, pre: &[&str], port: u16) -> Result<Figures, String> {
    let g = guest();
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(pre)
        .args(["-m", "512", "-nographic", "-no-reboot", "-kernel"])
        .arg(g.join("vmlinuz"))
        .arg("-initrd")
        .arg(g.join("initramfs-net.cpio.gz"))
        .args(["-netdev", "user,id=n0", "-device", "e1000,netdev=n0", "-append"])
        .arg(format!("console=ttyS0 panic=-1 quern.ip=dhcp quern.bench=http://10.0.2.2:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    });
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap_or_default();
    let tail = || text.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
    if !status.is_some_and(|s| s.success()) || !text.contains("QUERN-NET-DONE") {
        return Err(format!("{program}: no clean finish ({status:?}): {}", tail()));
    }
    let secs = |name: &str| -> Option<f64> {
        let w = words_after(&text, &format!("QUERN-BENCH {name} "))?;
        Some(w.get(1)?.parse::<f64>().ok()? - w.first()?.parse::<f64>().ok()?)
    };
    let bytes = words_after(&text, "QUERN-BENCH-BYTES ").ok_or_else(|| format!("no byte counts: {}", tail()))?;
    if bytes.first() != Some(&DOWN_BYTES.to_string().as_str()) || bytes.get(1) != Some(&UP_BYTES.to_string().as_str()) {
        return Err(format!("{program}: moved {bytes:?} bytes, not {DOWN_BYTES} and {UP_BYTES}"));
    }
    let ping = words_after(&text, "QUERN-BENCH-PING ")
        .and_then(|w| w.first()?.split('/').nth(1)?.parse().ok())
        .ok_or_else(|| format!("no ping figures: {}", tail()))?;
    let (down, up) = (secs("net-down").ok_or("no net-down")?, secs("net-up").ok_or("no net-up")?);
    Ok(Figures { down: DOWN_BYTES as f64 / 1e6 / down, up: UP_BYTES as f64 / 1e6 / up, ping })
}

fn main() {
    if !guest().join("initramfs-net.cpio.gz").exists() {
        eprintln!("build/guest/initramfs-net.cpio.gz is missing: run scripts/build-test-guest.sh first");
        std::process::exit(1);
    }
    let reps: usize = std::env::var("QUERN_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let data: Vec<u8> = (0..DOWN_BYTES).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let server = http::HttpServer::start(data);
    let quern = env!("CARGO_BIN_EXE_quern");
    let qemu = "qemu-system-x86_64";
    let have_qemu = Command::new(qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_qemu {
        eprintln!("NOT RUN: the QEMU column: {qemu} is not installed (apt-get install qemu-system-x86)");
    }
    let mut emulators: Vec<(&str, &str, Vec<&str>)> = vec![("quern", quern, vec!["-accel", "tcg"])];
    if have_qemu {
        emulators.push(("QEMU", qemu, vec!["-accel", "tcg", "-display", "none"]));
    }
    let mut best: Vec<Option<Figures>> = vec![None; emulators.len()];
    let mut failures = Vec::new();
    for rep in 1..=reps {
        for ((name, program, pre), b) in emulators.iter().zip(best.iter_mut()) {
            match run(program, pre, server.port) {
                Ok(f) => {
                    eprintln!(
                        "{name} run {rep}/{reps}: down {:.1} MB/s, up {:.1} MB/s, ping {:.3} ms",
                        f.down, f.up, f.ping
                    );
                    *b = Some(match *b {
                        None => f,
                        Some(o) => Figures { down: o.down.max(f.down), up: o.up.max(f.up), ping: o.ping.min(f.ping) },
                    });
                }
                Err(e) => failures.push(format!("{name} run {rep}: {e}")),
            }
        }
    }
    let show = |f: Option<f64>, prec: usize| f.map_or("-".to_string(), |v| format!("{v:.prec$}"));
    let q = best[0];
    let r = best.get(1).copied().flatten();
    println!("| measure | quern | QEMU | quern/QEMU |");
    println!("|---|---:|---:|---:|");
    type Pick = fn(&Figures) -> f64;
    let rows: [(&str, Pick, usize); 3] = [
        ("host to guest, TCP (wget 64 MiB), MB/s", |f| f.down, 1),
        ("guest to host, TCP (POST 16 MiB), MB/s", |f| f.up, 1),
        ("ping to the gateway, average ms", |f| f.ping, 3),
    ];
    for (label, pick, prec) in rows {
        let (a, b) = (q.as_ref().map(pick), r.as_ref().map(pick));
        let ratio = a.zip(b).map(|(a, b)| format!("{:.2}x", a / b)).unwrap_or_else(|| "-".into());
        println!("| {label} | {} | {} | {ratio} |", show(a, prec), show(b, prec));
    }
    println!("\n(throughput: higher is better, ratio > 1 = quern faster; ping: lower is better)");
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}
