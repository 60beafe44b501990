//! A `-netdev`: which backend, and starting it once its NIC exists.
//!
//! A backend delivers to its NIC's [`FrameSink`], and the NIC sends through the
//! backend, so the machine makes the NIC first and then [`start`]s its netdev with the
//! NIC's sink. A listening stream socket (`server=on`, `listen=`) is up at once and
//! connects later: until a peer comes, the link drops what the guest sends, as QEMU's.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

#[cfg(feature = "slirp")]
use crate::slirp::SlirpBackend;
use crate::slirp_config::SlirpConfig;
use crate::stream::{Socket, StreamBackend};
use crate::tap::{TapBackend, TapConfig};
use crate::{FrameSink, NetBackend};

/// Where a stream socket is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamAddr {
    /// `addr.type=inet,addr.host=,addr.port=` or `socket,listen=|connect=HOST:PORT`.
    Inet { host: String, port: u16 },
    /// `addr.type=unix,addr.path=`.
    Unix(PathBuf),
}

impl std::fmt::Display for StreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamAddr::Inet { host, port } => write!(f, "{host}:{port}"),
            StreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A backend's configuration, as the command line gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetdevKind {
    /// `-netdev user`.
    User(SlirpConfig),
    /// `-netdev stream` / `-netdev socket`: listen (`server`) or connect.
    Stream { server: bool, addr: StreamAddr },
    /// `-netdev tap`.
    Tap(TapConfig),
}

/// A `-netdev` (or the backend of `-nic` or `-net`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netdev {
    pub id: String,
    pub kind: NetdevKind,
}

/// Starts `netdev` for the NIC behind `sink`. Errors name the netdev.
pub fn start(netdev: &Netdev, sink: Arc<dyn FrameSink>) -> Result<Arc<dyn NetBackend>, String> {
    let err = |e: &dyn std::fmt::Display| format!("-netdev id={}: {e}", netdev.id);
    match &netdev.kind {
        #[cfg(feature = "slirp")]
        NetdevKind::User(cfg) => Ok(Arc::new(SlirpBackend::start(cfg, sink).map_err(|e| err(&e))?)),
        #[cfg(not(feature = "slirp"))]
        NetdevKind::User(_) => {
            Err(err(&"this quern was built without the user-mode network (cargo feature slirp, libslirp-dev)"))
        }
        NetdevKind::Stream { server: false, addr } => {
            let socket = match addr {
                StreamAddr::Inet { host, port } => TcpStream::connect((host.as_str(), *port)).map(Socket::Tcp),
                StreamAddr::Unix(p) => UnixStream::connect(p).map(Socket::Unix),
            }
            .map_err(|e| err(&format!("cannot connect to {addr}: {e}")))?;
            Ok(Arc::new(StreamBackend::start(socket, sink).map_err(|e| err(&e))?))
        }
        NetdevKind::Stream { server: true, addr } => Ok(Arc::new(listen(addr, sink).map_err(|e| err(&e))?)),
        NetdevKind::Tap(cfg) => Ok(Arc::new(TapBackend::start(cfg, sink).map_err(|e| err(&e))?)),
    }
}

/// A listening stream socket: the backend once a peer has connected.
struct Listening {
    connected: Arc<OnceLock<StreamBackend>>,
}

fn listen(addr: &StreamAddr, sink: Arc<dyn FrameSink>) -> io::Result<Listening> {
    enum L {
        Tcp(TcpListener),
        Unix(UnixListener),
    }
    let l = match addr {
        StreamAddr::Inet { host, port } => L::Tcp(TcpListener::bind((host.as_str(), *port))?),
        StreamAddr::Unix(p) => L::Unix(UnixListener::bind(p)?),
    };
    let connected = Arc::new(OnceLock::new());
    let slot = connected.clone();
    let shown = addr.to_string();
    std::thread::Builder::new().name("quern-net-listen".into()).spawn(move || {
        let socket = match &l {
            L::Tcp(l) => l.accept().map(|(s, _)| Socket::Tcp(s)),
            L::Unix(l) => l.accept().map(|(s, _)| Socket::Unix(s)),
        };
        match socket.and_then(|s| StreamBackend::start(s, sink)) {
            Ok(b) => {
                log::info!("net: {shown}: peer connected");
                let _ = slot.set(b);
            }
            Err(e) => log::warn!("net: {shown}: no peer: {e}"),
        }
    })?;
    Ok(Listening { connected })
}

impl NetBackend for Listening {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        match self.connected.get() {
            Some(b) => b.send(frame),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&self) {
        if let Some(b) = self.connected.get() {
            b.flush();
        }
    }
    fn resume(&self) {
        if let Some(b) = self.connected.get() {
            b.resume();
        }
    }
}
