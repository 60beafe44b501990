//! Helpers shared by the guest tests: run the quern binary with a time limit, wrap
//! assembled guest code as a BIOS image or an ELF64 kernel, and decide loudly whether
//! an accelerator can run here.
#![allow(dead_code)]

pub mod guest;
pub mod multiboot;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a run of quern produced.
#[derive(Debug)]
pub struct Run {
    /// Exit status, `None` if it had to be killed at the time limit.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!("status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

pub fn quern_bin() -> &'static str {
    env!("CARGO_BIN_EXE_quern")
}

/// Runs quern with `args`, killing it after `limit`.
pub fn run_quern(args: &[&str], limit: Duration) -> Run {
    run_quern_until(args, limit, None)
}

/// Runs quern with `args` until it exits, `limit` passes, or its output contains
/// `stop_at` (then it is killed and `status` is `None`).
pub fn run_quern_until(args: &[&str], limit: Duration, stop_at: Option<&str>) -> Run {
    let mut child = Command::new(quern_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quern");
    let collect = |mut r: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let t = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (buf, t)
    };
    let (out, out_t) = collect(Box::new(child.stdout.take().unwrap()));
    let (err, err_t) = collect(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        let seen = stop_at.is_some_and(|m| String::from_utf8_lossy(&out.lock().unwrap()).contains(m));
        if seen || start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = (out_t.join(), err_t.join());
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    Run { status, stdout: text(&out), stderr: text(&err) }
}

/// A scratch directory for this test binary's files.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("quern-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

/// A 64 KiB BIOS image: `code` (assembled to run at F000:0000) at its start and a far
/// jump to F000:`entry` at the reset vector (F000:FFF0).
pub fn bios_image(code: &[u8], entry: u16) -> Vec<u8> {
    assert!(code.len() < 0xfff0, "guest code too big for the BIOS image");
    let mut img = vec![0xf4u8; 0x10000];
    img[..code.len()].copy_from_slice(code);
    let [lo, hi] = entry.to_le_bytes();
    img[0xfff0..0xfff5].copy_from_slice(&[0xea, lo, hi, 0x00, 0xf0]);
    img
}

/// A minimal ELF64 executable: one PT_LOAD of `code` at physical/virtual `addr`,
/// entered at `entry`.
pub fn elf64(code: &[u8], addr: u64, entry: u64) -> Vec<u8> {
    let mut f = Vec::new();
    let phoff = 64u64;
    let off = 0x1000u64;
    // e_ident
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&entry.to_le_bytes()); // e_entry
    f.extend_from_slice(&phoff.to_le_bytes());
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx

    // Program header.
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&7u32.to_le_bytes()); // RWX
    f.extend_from_slice(&off.to_le_bytes());
    f.extend_from_slice(&addr.to_le_bytes()); // vaddr
    f.extend_from_slice(&addr.to_le_bytes()); // paddr
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&(code.len() as u64).to_le_bytes());
    f.extend_from_slice(&0x1000u64.to_le_bytes());
    f.resize(off as usize, 0);
    f.extend_from_slice(code);
    f
}

/// Prints a NOT RUN / HOST LIMIT line past the test harness's output capture, so it
/// shows in every run, passing or not.
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Whether the KVM accelerator can run here. Without a usable /dev/kvm the test
/// fails, unless QUERN_NO_KVM=1 says the host has none: then it says so loudly and the
/// caller returns without claiming a pass of what it could not run.
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) if std::env::var("QUERN_NO_KVM").as_deref() == Ok("1") => {
            report(&format!("NOT RUN: {test}: no usable /dev/kvm ({e}); QUERN_NO_KVM=1 given"));
            false
        }
        Err(e) => panic!("{test}: /dev/kvm is not usable ({e}); set QUERN_NO_KVM=1 on hosts without KVM"),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file of the Debian test guest; missing files fail with what to run.
pub fn guest_file(name: &str) -> PathBuf {
    let p = root().join("build/guest").join(name);
    assert!(p.exists(), "{} is missing: run scripts/build-test-guest.sh first", p.display());
    p
}

/// Runs `qemu-system-x86_64 -accel tcg` with `args` (no display, serial on stdout) for
/// at most a minute; `None` if QEMU is not installed.
pub fn run_qemu_tcg(args: &[&str]) -> Option<Run> {
    let mut all = vec!["-accel", "tcg", "-display", "none", "-serial", "stdio", "-monitor", "none"];
    all.extend_from_slice(args);
    run_qemu(&all)
}

/// Runs `qemu-system-x86_64` with exactly `args` for at most a minute; `None` if QEMU
/// is not installed.
pub fn run_qemu(args: &[&str]) -> Option<Run> {
    let qemu = "qemu-system-x86_64";
    let found = Command::new(qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        return None;
    }
    let out = Command::new("timeout").arg("60").arg(qemu).args(args).stdin(Stdio::null()).output().ok()?;
    Some(Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
