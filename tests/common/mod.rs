//! Helpers shared by the guest tests: run the quern binary with a time limit, wrap
//! assembled guest code as a BIOS image or an ELF64 kernel, and decide loudly whether
//! an accelerator can run here.
#![allow(dead_code)]

pub mod guest;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    let mut child = Command::new(quern_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quern");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: String::from_utf8_lossy(&out_t.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into_owned(),
    }
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

/// Whether the KVM accelerator can run here. Without a usable /dev/kvm the test
/// fails, unless QUERN_NO_KVM=1 says the host has none: then it says so loudly and the
/// caller returns without claiming a pass of what it could not run.
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => true,
        Err(e) if std::env::var("QUERN_NO_KVM").as_deref() == Ok("1") => {
            eprintln!("NOT RUN: {test}: no usable /dev/kvm ({e}); QUERN_NO_KVM=1 given");
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
