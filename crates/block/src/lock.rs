//! Image locking as QEMU's file-posix driver does it, so that quern and QEMU see each
//! other's locks.
//!
//! QEMU takes shared OFD locks (`F_OFD_SETLK`, `F_RDLCK`) on single bytes of the image
//! file: byte `100 + i` while it holds permission bit `i`, byte `200 + i` while it
//! refuses to share that permission with others. Opening then tests (`F_OFD_GETLK` with
//! `F_WRLCK`) that nobody else refuses what we take (bytes 200+) and that nobody holds
//! what we refuse (bytes 100+). OFD locks belong to the open file description, so two
//! opens in one process conflict just as two processes do, and the locks go away when
//! the last descriptor of the description closes.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;

/// QEMU's BLK_PERM_* bits, in bit order (their names appear in the error messages).
pub(crate) const PERM_CONSISTENT_READ: u32 = 1 << 0;
pub(crate) const PERM_WRITE: u32 = 1 << 1;
pub(crate) const PERM_WRITE_UNCHANGED: u32 = 1 << 2;
pub(crate) const PERM_RESIZE: u32 = 1 << 3;
const PERM_NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];
const PERM_ALL: u32 = 0xf;

/// What a guest drive asks for, as QEMU's block devices do: read (and write) itself,
/// and share reading and unchanged writes but not writing or resizing. Backing files
/// and `-snapshot` bases are opened as readers.
pub(crate) fn perms_for(writable: bool, resize: bool) -> (u32, u32) {
    let mut perm = PERM_CONSISTENT_READ;
    if writable {
        perm |= PERM_WRITE;
        if resize {
            perm |= PERM_RESIZE;
        }
    }
    (perm, PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED)
}

/// Why locking failed.
pub(crate) enum LockError {
    /// Another open holds or refuses what we need (QEMU's message text).
    Conflict(String),
    /// The filesystem has no OFD locks; QEMU's `locking=auto` goes on without them.
    Unsupported(io::Error),
    Other(io::Error),
}

fn flock(kind: libc::c_short, start: i64) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value (l_pid must be 0 for OFD).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = 1;
    fl
}

fn lock_byte(file: &File, off: i64) -> io::Result<()> {
    let fl = flock(libc::F_RDLCK as libc::c_short, off);
    // SAFETY: a valid descriptor and a pointer to a live flock.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on the byte.
fn byte_taken(file: &File, off: i64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, off);
    // SAFETY: a valid descriptor and a pointer to a live flock that fcntl fills in.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

fn classify(e: io::Error) -> LockError {
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) => {
            LockError::Unsupported(e)
        }
        Some(libc::EAGAIN) | Some(libc::EACCES) => LockError::Conflict(String::new()),
        _ => LockError::Other(e),
    }
}

/// Takes `perm` and refuses everything outside `shared` on `file`, as QEMU does.
pub(crate) fn lock(file: &File, perm: u32, shared: u32) -> Result<(), LockError> {
    let unshared = !shared & PERM_ALL;
    for i in 0..PERM_NAMES.len() {
        let bit = 1u32 << i;
        for (held, base) in [(perm & bit != 0, PERM_BASE), (unshared & bit != 0, SHARED_BASE)] {
            if held {
                lock_byte(file, base + i as i64).map_err(|e| match classify(e) {
                    LockError::Conflict(_) => LockError::Conflict(format!("Failed to lock byte {}", base + i as i64)),
                    other => other,
                })?;
            }
        }
    }
    for (i, name) in PERM_NAMES.iter().enumerate() {
        let bit = 1u32 << i;
        if perm & bit != 0 && byte_taken(file, SHARED_BASE + i as i64).map_err(classify)? {
            return Err(LockError::Conflict(format!("Failed to get \"{name}\" lock")));
        }
    }
    for (i, name) in PERM_NAMES.iter().enumerate() {
        let bit = 1u32 << i;
        if unshared & bit != 0 && byte_taken(file, PERM_BASE + i as i64).map_err(classify)? {
            return Err(LockError::Conflict(format!("Failed to get shared \"{name}\" lock")));
        }
    }
    Ok(())
}
