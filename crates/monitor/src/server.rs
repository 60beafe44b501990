//! Where QMP clients come from: a listening UNIX or TCP socket (made by quern from
//! `-qmp`/`-chardev socket,server=on`, or inherited as a file descriptor, as libvirt
//! passes one), accepting one client after another (QEMU serves one at a time per
//! monitor; several monitors serve several). Each listener has a thread; each client
//! is served on it until it goes away, then the next is accepted.

use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use crate::{session, Monitor};

/// A monitor's socket, as the command line gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
    },
    /// A listening socket inherited from the parent (`fd=N`).
    Fd(i32),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Endpoint::Fd(fd) => write!(f, "fd={fd}"),
        }
    }
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Endpoint {
    /// Binds the socket now (so that it listens before quern says it is ready).
    pub fn listen(&self) -> io::Result<Listening> {
        let l = match self {
            Endpoint::Unix(p) => {
                // A stale socket file from an earlier run would make bind fail.
                if std::fs::symlink_metadata(p).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    let _ = std::fs::remove_file(p);
                }
                Listener::Unix(UnixListener::bind(p)?)
            }
            Endpoint::Tcp { host, port } => Listener::Tcp(TcpListener::bind((host.as_str(), *port))?),
            Endpoint::Fd(fd) => {
                // SAFETY: fcntl on a number the user gave: checked to be an open socket
                // before it is taken over.
                if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
                    return Err(io::Error::new(io::ErrorKind::NotFound, format!("fd={fd} is not open")));
                }
                let mut domain: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: getsockopt into an int we own.
                let r = unsafe {
                    libc::getsockopt(
                        *fd,
                        libc::SOL_SOCKET,
                        libc::SO_DOMAIN,
                        (&mut domain as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                if r < 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("fd={fd} is not a socket")));
                }
                // SAFETY: the descriptor is open and ours from here on (the command line
                // handed it over).
                let owned = unsafe { OwnedFd::from_raw_fd(*fd) };
                if domain == libc::AF_UNIX {
                    Listener::Unix(UnixListener::from(owned))
                } else {
                    Listener::Tcp(TcpListener::from(owned))
                }
            }
        };
        Ok(Listening { listener: l, endpoint: self.clone() })
    }
}

/// A bound monitor socket, not yet serving.
pub struct Listening {
    listener: Listener,
    endpoint: Endpoint,
}

impl Listening {
    /// Serves clients, one after another, on a thread of its own.
    pub fn serve(self, monitor: Arc<Monitor>) -> io::Result<()> {
        std::thread::Builder::new().name("quern-qmp".into()).spawn(move || loop {
            let accepted = match &self.listener {
                Listener::Unix(l) => l.accept().and_then(|(s, _)| {
                    let r = FdPassingReader { sock: s.try_clone()?, monitor: monitor.clone() };
                    Ok((Box::new(r) as Box<dyn io::Read + Send>, Box::new(s) as Box<dyn io::Write + Send>))
                }),
                Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                    let r = s.try_clone()?;
                    Ok((Box::new(r) as Box<dyn io::Read + Send>, Box::new(s) as Box<dyn io::Write + Send>))
                }),
            };
            match accepted {
                Ok((r, w)) => session::serve(&monitor, r, w),
                Err(e) => {
                    log::warn!("qmp: {}: accept failed: {e}", self.endpoint);
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        })?;
        Ok(())
    }
}

/// Reads a UNIX socket keeping the file descriptors that come with the bytes
/// (SCM_RIGHTS, as libvirt sends one with `getfd`) for the monitor's `getfd`.
struct FdPassingReader {
    sock: std::os::unix::net::UnixStream,
    monitor: Arc<Monitor>,
}

impl io::Read for FdPassingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        const MAX_FDS: usize = 8;
        // Room for a control message of MAX_FDS descriptors (u64 keeps it aligned).
        let mut control = [0u64; 16];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: the header points at `buf` and `control`, both live and of the sizes given.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: walking the control messages the kernel wrote, with its macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                    let count =
                        ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<libc::c_int>();
                    for i in 0..count.min(MAX_FDS) {
                        // Each received descriptor is new and ours.
                        self.monitor.fd_received(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(n as usize)
    }
}
