//! `-netdev tap`: a TAP interface of the host kernel (/dev/net/tun), each of its frames
//! the guest's. Making the interface needs CAP_NET_ADMIN; quern opens the one named by
//! `ifname=` (creating it when allowed) and runs no scripts (`script=no`).
//!
//! With `vnet_hdr=on` each frame crosses the device after a virtio-net header; no
//! offloads are turned on, so the header quern writes is all zeros and the one it reads
//! is skipped.
//!
//! A reader thread waits in poll(2) on the device and an eventfd (which ends it); a
//! frame the NIC refuses stays in hand until [`NetBackend::resume`], and nothing more is
//! read meanwhile, so the kernel's queue takes the back-pressure (and drops past it).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::{FrameSink, NetBackend, MAX_FRAME};

/// `-netdev tap`'s settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TapConfig {
    /// The interface's name; the kernel picks `tapN` when unset.
    pub ifname: Option<String>,
    /// Frames after a virtio-net header (`vnet_hdr=on`).
    pub vnet_hdr: bool,
}

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// The virtio-net header with `num_buffers` (what TUNSETVNETHDRSZ is set to).
const VNET_HDR_LEN: usize = 12;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

struct Shared {
    resumed: AtomicBool,
    stop: AtomicBool,
    wake: OwnedFd,
}

impl Shared {
    fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: 8 bytes from a live buffer to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

/// A TAP device backend.
pub struct TapBackend {
    dev: File,
    vnet_hdr: bool,
    /// The interface's name, as the kernel made it.
    pub ifname: String,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
}

impl TapBackend {
    pub fn start(cfg: &TapConfig, sink: Arc<dyn FrameSink>) -> io::Result<TapBackend> {
        let dev = OpenOptions::new().read(true).write(true).open("/dev/net/tun").map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e} (a tap needs the tun module and root)"))
        })?;
        let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
        if cfg.vnet_hdr {
            req.flags |= IFF_VNET_HDR;
        }
        if let Some(name) = &cfg.ifname {
            if name.len() >= 16 || name.contains('\0') {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("ifname={name}: at most 15 bytes")));
            }
            req.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        // SAFETY: TUNSETIFF reads and writes an ifreq we own.
        if unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("cannot attach to the tap interface: {e}")));
        }
        if cfg.vnet_hdr {
            let len = VNET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads an int we own.
            if unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETVNETHDRSZ, &len) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let ifname = String::from_utf8_lossy(&req.name).trim_end_matches('\0').to_string();
        // SAFETY: plain eventfd creation; checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nobody else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared { resumed: AtomicBool::new(false), stop: AtomicBool::new(false), wake });
        let (mut rd, s, skip) = (dev.try_clone()?, shared.clone(), if cfg.vnet_hdr { VNET_HDR_LEN } else { 0 });
        let reader = std::thread::Builder::new()
            .name("quern-net-tap".into())
            .spawn(move || read_frames(&mut rd, skip, &*sink, &s))?;
        log::info!("net: tap {ifname} attached");
        Ok(TapBackend { dev, vnet_hdr: cfg.vnet_hdr, ifname, shared, reader: Some(reader) })
    }
}

/// Waits until `fd` is readable or the backend is told something; false to stop.
fn wait(fd: i32, shared: &Shared) -> bool {
    let mut p = [
        libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: shared.wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    // SAFETY: a live array of two pollfds.
    unsafe { libc::poll(p.as_mut_ptr(), 2, -1) };
    let mut drain = [0u8; 8];
    // SAFETY: reading into a live 8-byte buffer from our non-blocking eventfd.
    unsafe { libc::read(shared.wake.as_raw_fd(), drain.as_mut_ptr().cast(), 8) };
    !shared.stop.load(Ordering::Acquire)
}

fn read_frames(dev: &mut File, skip: usize, sink: &dyn FrameSink, shared: &Shared) {
    let mut buf = vec![0u8; MAX_FRAME + skip];
    loop {
        if !wait(dev.as_raw_fd(), shared) {
            return;
        }
        let n = match dev.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("net: tap: {e}; the link is down");
                return;
            }
        };
        let Some(frame) = buf.get(skip..n) else { continue };
        while !sink.receive(frame) {
            // Hold the frame until the NIC has room.
            if !shared.resumed.swap(false, Ordering::AcqRel) && !wait(shared.wake.as_raw_fd(), shared) {
                return;
            }
        }
    }
}

impl NetBackend for TapBackend {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(frame.len() + VNET_HDR_LEN);
        if self.vnet_hdr {
            out.resize(VNET_HDR_LEN, 0);
        }
        out.extend_from_slice(frame);
        (&self.dev).write_all(&out)
    }

    fn resume(&self) {
        self.shared.resumed.store(true, Ordering::Release);
        self.shared.kick();
    }
}

impl Drop for TapBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.kick();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}
