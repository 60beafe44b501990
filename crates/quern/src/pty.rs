//! `-chardev pty` (and `-serial pty`): COM1 on a new pseudo-terminal, as QEMU makes
//! one for `virsh console`. The slave's path is printed ("char device redirected to
//! /dev/pts/N (label ID)", QEMU's words, which tools read) and reported by QMP's
//! `query-chardev`. Bytes the guest sends go to the master; a thread feeds what is
//! typed on the slave to the UART. With nobody on the slave, reads fail (EIO) and the
//! thread waits for someone to open it; the guest's output is dropped meanwhile, never
//! blocking the vCPU.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quern_machine_pc::Serial;

/// The pseudo-terminal made for COM1: its label, its slave's path, the master.
struct Pty {
    label: String,
    path: String,
    master: File,
}

static PTY: OnceLock<Pty> = OnceLock::new();

/// Makes the pseudo-terminal; returns COM1's output (the master, non-blocking, and a
/// copy to `log`, QEMU's `logfile=` (path, append), if given).
pub fn open(label: &str, log: Option<&(std::path::PathBuf, bool)>) -> Result<Box<dyn Write + Send>, String> {
    let err = |what: &str| format!("-chardev pty: {what}: {}", io::Error::last_os_error());
    // SAFETY: plain libc calls on a descriptor this function owns; checked.
    let (master, path) = unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(err("posix_openpt"));
        }
        let master = File::from_raw_fd(fd);
        if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
            return Err(err("unlockpt"));
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) != 0 {
            return Err(err("ptsname"));
        }
        // Raw mode on the line, as QEMU sets it: bytes pass untouched both ways.
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        (master, CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned())
    };
    eprintln!("char device redirected to {path} (label {label})");
    let writer = master.try_clone().map_err(|e| format!("-chardev pty: {e}"))?;
    let _ = PTY.set(Pty { label: label.to_string(), path, master });
    let log = match log {
        Some((p, append)) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(*append)
                .truncate(!*append)
                .open(p)
                .map_err(|e| format!("-chardev pty,logfile={}: {e}", p.display()))?,
        ),
        None => None,
    };
    Ok(Box::new(DropWhenFull(writer, log)))
}

/// Writes that never block: with nobody reading the slave, output is dropped (the log
/// file, if any, still gets it).
struct DropWhenFull(File, Option<File>);

impl Write for DropWhenFull {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(log) = &mut self.1 {
            if let Err(e) = log.write_all(buf) {
                log::warn!("chardev log file: {e}: logging stops");
                self.1 = None;
            }
        }
        match self.0.write(buf) {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock) || e.raw_os_error() == Some(libc::EIO) => {
                Ok(buf.len())
            }
            r => r,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// (label, "pty:/dev/pts/N") of the pseudo-terminal, if one was made.
pub fn chardev() -> Option<(String, String)> {
    PTY.get().map(|p| (p.label.clone(), format!("pty:{}", p.path)))
}

/// Feeds what is typed on the slave to `serial`, on a thread of its own.
pub fn spawn_input(serial: Arc<Mutex<Serial>>) {
    let Some(p) = PTY.get() else { return };
    let Ok(mut master) = p.master.try_clone() else { return };
    let spawned = std::thread::Builder::new().name("quern-pty".into()).spawn(move || {
        let mut buf = [0u8; 256];
        loop {
            let mut pfd = libc::pollfd { fd: master.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: poll on one live pollfd.
            unsafe { libc::poll(&mut pfd, 1, 200) };
            match master.read(&mut buf) {
                Ok(0) => std::thread::sleep(Duration::from_millis(200)),
                Ok(n) => {
                    for &b in &buf[..n] {
                        crate::console::send(&serial, b);
                    }
                }
                // No one on the slave (EIO), or nothing yet (EAGAIN).
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("no input on the pty: {e}");
    }
}
