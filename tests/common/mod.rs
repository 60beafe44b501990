//! Helpers shared by the guest tests: run the quern binary with a time limit, wrap
//! assembled guest code as a BIOS image or an ELF64 kernel, and decide loudly whether
//! an accelerator can run here.
#![allow(dead_code)]

pub mod counting;
pub mod guest;
pub mod http;
pub mod multiboot;
pub mod qmp;

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

/// A command that runs the quern binary: through `QUERN_TEST_WRAP` when it is set
/// (scripts/test-aarch64.sh sets it to QEMU's user-mode emulator, for an aarch64
/// build tested on an x86-64 machine).
pub fn quern_command() -> Command {
    match std::env::var("QUERN_TEST_WRAP") {
        Ok(wrap) if !wrap.trim().is_empty() => {
            let mut words = wrap.split_whitespace();
            let mut c = Command::new(words.next().expect("a word"));
            c.args(words).arg(quern_bin());
            c
        }
        _ => Command::new(quern_bin()),
    }
}

/// Runs quern with `args`, killing it after `limit`.
pub fn run_quern(args: &[&str], limit: Duration) -> Run {
    run_quern_until(args, limit, None)
}

/// Runs quern with `args` until it exits, `limit` passes, or its output contains
/// `stop_at` (then it is killed and `status` is `None`).
pub fn run_quern_until(args: &[&str], limit: Duration, stop_at: Option<&str>) -> Run {
    let mut child = quern_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quern");
    let (out, out_t) = collect_into(child.stdout.take().unwrap());
    let (err, err_t) = collect_into(child.stderr.take().unwrap());
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
    if !cfg!(target_arch = "x86_64") {
        report(&format!(
            "NOT RUN: {test}: KVM runs x86 guests on x86-64 hosts only, and this build is for {}",
            std::env::consts::ARCH
        ));
        return false;
    }
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
    run_qemu_tcg_for(args, 60)
}

/// [`run_qemu_tcg`] with a time limit of `secs` seconds; a run cut off by it has status 124.
pub fn run_qemu_tcg_for(args: &[&str], secs: u32) -> Option<Run> {
    let mut all = vec!["-accel", "tcg", "-display", "none", "-serial", "stdio", "-monitor", "none"];
    all.extend_from_slice(args);
    run_qemu_for(&all, secs)
}

/// Runs `qemu-system-x86_64` with exactly `args` for at most a minute; `None` if QEMU
/// is not installed.
pub fn run_qemu(args: &[&str]) -> Option<Run> {
    run_qemu_for(args, 60)
}

fn run_qemu_for(args: &[&str], secs: u32) -> Option<Run> {
    let qemu = "qemu-system-x86_64";
    let found = Command::new(qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        return None;
    }
    let out = Command::new("timeout").arg(secs.to_string()).arg(qemu).args(args).stdin(Stdio::null()).output().ok()?;
    Some(Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// quern running with its console on pipes, for tests that type into the guest's
/// shell: spawn, wait for text on stdout, write lines. The process is killed when the
/// value is dropped, so a failed assertion never leaves a guest running.
pub struct Console {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// How much of stdout `wait_for` has consumed.
    seen: usize,
    /// Numbers the markers of `command`.
    commands: u32,
}

/// Copies `r` into a shared buffer on a thread until end of file.
fn collect_into(mut r: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
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
}

impl Console {
    pub fn spawn(args: &[&str]) -> Console {
        Self::spawn_program(quern_bin(), args)
    }

    /// [`Console::spawn`] of another program (quern under `ip netns exec`, say).
    pub fn spawn_program(program: &str, args: &[&str]) -> Console {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn quern");
        let stdin = child.stdin.take();
        let (out, out_t) = collect_into(child.stdout.take().unwrap());
        let (err, err_t) = collect_into(child.stderr.take().unwrap());
        Console { child, stdin, out, err, readers: vec![out_t, err_t], seen: 0, commands: 0 }
    }

    /// Everything quern has printed so far, both streams, for failure messages.
    pub fn describe(&self) -> String {
        let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
        format!("--- stdout ---\n{}\n--- stderr ---\n{}", text(&self.out), text(&self.err))
    }

    /// Waits until stdout, past what earlier waits consumed, contains `needle`; returns
    /// the text up to it (without it) and consumes it. Fails with the whole output if
    /// quern exits or `limit` passes first.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            {
                let out = self.out.lock().unwrap();
                let rest = &out[self.seen..];
                if let Some(p) = rest.windows(needle.len()).position(|w| w == needle.as_bytes()) {
                    let before = String::from_utf8_lossy(&rest[..p]).into_owned();
                    self.seen += p + needle.len();
                    return Ok(before);
                }
            }
            let exited = self.child.try_wait().expect("wait").map(|s| s.code());
            if let Some(code) = exited {
                return Err(format!("quern exited (status {code:?}) before printing {needle:?}\n{}", self.describe()));
            }
            if start.elapsed() > limit {
                return Err(format!("{needle:?} not printed within {limit:?}\n{}", self.describe()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `bytes` as they are (escapes such as Ctrl-A included).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(bytes).expect("write to quern's stdin");
        stdin.flush().expect("flush quern's stdin");
    }

    /// Types `line` and Enter on the guest's console.
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(format!("{line}\n").as_bytes()).expect("write to quern's stdin");
        stdin.flush().expect("flush quern's stdin");
    }

    /// Runs `cmd` in the guest's shell and returns what it printed. The command is
    /// bracketed by echoes of markers whose typed form (quoted apart) differs from
    /// their output, so the terminal's echo of the typed line never matches.
    pub fn command(&mut self, cmd: &str, limit: Duration) -> Result<String, String> {
        self.commands += 1;
        let n = self.commands;
        self.send_line(&format!("echo QC{n}-'BEGIN'; {cmd}; echo QC{n}-'END'"));
        self.wait_for(&format!("QC{n}-BEGIN"), limit)?;
        let text = self.wait_for(&format!("QC{n}-END"), limit)?.replace('\r', "");
        Ok(text.strip_prefix('\n').unwrap_or(&text).to_string())
    }

    /// Closes stdin and waits for quern to exit (killing it after `limit`).
    pub fn finish(mut self, limit: Duration) -> Run {
        self.stdin = None;
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st.code();
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for t in self.readers.drain(..) {
            let _ = t.join();
        }
        let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
        Run { status, stdout: text(&self.out), stderr: text(&self.err) }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
