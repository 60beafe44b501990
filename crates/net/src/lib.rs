//! Network backends: the other end of a NIC's wire.
//!
//! A NIC model (e1000, later virtio-net) hands each frame it transmits to a
//! [`NetBackend`], and a backend hands each frame it receives to the NIC through a
//! [`FrameSink`]. Backends run their receiving side on a thread of their own, off the
//! vCPU threads, and apply back-pressure rather than queueing without bound: a NIC
//! with no free receive descriptor refuses a frame, the backend holds it (and stops
//! reading from its socket) until the NIC calls [`NetBackend::resume`].
//!
//! - [`slirp`]: `-netdev user`, a user-mode TCP/IP stack (libslirp) that turns the
//!   guest's connections into the host's sockets.
//! - [`tap`]: `-netdev tap`, a host TAP interface (in a network namespace, for tests).
//! - [`netdev`]: a `-netdev`'s configuration, and starting its backend for a NIC.
//! - [`stream`]: QEMU's `-netdev stream` / `-netdev socket` framing (each frame after
//!   its length, 32-bit big-endian) over a TCP or UNIX socket: two emulators connected
//!   back to back.

pub mod netdev;
#[cfg(feature = "slirp")]
pub mod slirp;
pub mod slirp_config;
pub mod stream;
pub mod tap;
#[cfg(test)]
mod testutil;

pub use netdev::{start, Netdev, NetdevKind, StreamAddr};
pub use slirp_config::{GuestFwd, HostFwd, SlirpConfig};

/// The largest frame a backend passes: a jumbo frame with a VLAN tag, and room to
/// spare (QEMU's socket backends take up to 68 KiB, NET_BUFSIZE + headers).
pub const MAX_FRAME: usize = 69 * 1024;

/// Where a backend delivers the frames it receives: the NIC.
pub trait FrameSink: Send + Sync {
    /// Takes one Ethernet frame; `false` when there is no room now: the backend holds
    /// the frame and offers it again after [`NetBackend::resume`].
    fn receive(&self, frame: &[u8]) -> bool;
}

/// The outside of a NIC.
pub trait NetBackend: Send + Sync {
    /// Sends one Ethernet frame. An error means the frame is lost, as on a wire that
    /// went down; the NIC goes on.
    fn send(&self, frame: &[u8]) -> std::io::Result<()>;
    /// The NIC has sent what it had for now (a ring's worth, a TSO packet's segments):
    /// a backend that works in batches acts on them now.
    fn flush(&self) {}
    /// The NIC has room again for frames it refused.
    fn resume(&self);
}
