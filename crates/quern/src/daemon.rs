//! `-daemonize`, as QEMU does it: the process forks at once (before any thread
//! exists); the parent waits, and exits 0 when the child says it is ready (the monitors
//! listen, the pidfile is written) or 1 with the child's error message. The child
//! starts a new session, and once ready puts /dev/null on its standard streams.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Mutex;

/// The child's end of the pipe to the waiting parent, until it has reported.
static REPORT: Mutex<Option<File>> = Mutex::new(None);

/// Forks. Returns in the child only; the parent exits with the child's verdict.
pub fn detach() -> Result<(), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe into an array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!("-daemonize: pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the descriptors are new and owned here.
    let (mut from_child, to_parent) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: fork in a process that has no other thread yet (called first thing).
    match unsafe { libc::fork() } {
        -1 => Err(format!("-daemonize: fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(from_child);
            // SAFETY: setsid in the new child.
            unsafe { libc::setsid() };
            *REPORT.lock().unwrap_or_else(|e| e.into_inner()) = Some(to_parent);
            Ok(())
        }
        _ => {
            drop(to_parent);
            let mut msg = Vec::new();
            let _ = from_child.read_to_end(&mut msg);
            match msg.split_first() {
                Some((0, _)) => std::process::exit(0),
                Some((_, _)) => {
                    eprintln!("quern: {}", String::from_utf8_lossy(&msg[1..]));
                    std::process::exit(1)
                }
                None => {
                    eprintln!("quern: the daemon ended during start-up");
                    std::process::exit(1)
                }
            }
        }
    }
}

/// The child is ready: the parent exits 0; standard streams go to /dev/null.
pub fn ready() {
    let Some(mut p) = REPORT.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
    let _ = p.write_all(&[0]);
    drop(p);
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 of an open descriptor onto the standard ones.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// The child failed before it was ready: the parent prints `msg` and exits 1.
pub fn failed(msg: &str) {
    if let Some(mut p) = REPORT.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let mut m = vec![1];
        m.extend_from_slice(msg.as_bytes());
        let _ = p.write_all(&m);
    }
}
