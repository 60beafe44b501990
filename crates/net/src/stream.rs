//! `-netdev stream` / `-netdev socket`: frames over a connected TCP or UNIX socket, each
//! after its length as a 32-bit big-endian number (QEMU's framing, so that quern and
//! QEMU guests can be wired to each other).
//!
//! A reader thread takes frames off the socket and offers them to the NIC; when the NIC
//! refuses one (no free receive descriptor) the thread waits for [`NetBackend::resume`]
//! with the frame in hand, and reads nothing more meanwhile: the socket's buffers, then
//! the peer, feel the back-pressure. A length past [`MAX_FRAME`] means the peer does not
//! speak this framing: the connection is dropped with a warning, never trusted.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{FrameSink, NetBackend, MAX_FRAME};

/// A connected socket of either family.
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(Shutdown::Both),
            Socket::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            Socket::Unix(s) => s.flush(),
        }
    }
}

/// What the reader thread and the NIC's side share.
struct Shared {
    /// Set by `resume`; the reader sleeps on `room` until it is.
    resumed: Mutex<bool>,
    room: Condvar,
    closed: AtomicBool,
}

/// Frames queued for the writer thread; past this, frames are dropped as on a
/// congested wire. A vCPU never blocks on the peer: two guests each blocked writing to
/// the other, whose readers wait for their NICs, would never wake.
const WRITE_QUEUE: usize = 512;

/// A stream-socket backend.
pub struct StreamBackend {
    queue: Mutex<Option<SyncSender<Vec<u8>>>>,
    socket: Socket,
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl StreamBackend {
    /// Starts the backend on a connected socket, delivering received frames to `sink`.
    pub fn start(socket: Socket, sink: Arc<dyn FrameSink>) -> io::Result<StreamBackend> {
        let shared =
            Arc::new(Shared { resumed: Mutex::new(false), room: Condvar::new(), closed: AtomicBool::new(false) });
        let mut reading = socket.try_clone()?;
        let s = shared.clone();
        let reader = std::thread::Builder::new().name("quern-net-stream".into()).spawn(move || {
            if let Err(e) = read_frames(&mut reading, &*sink, &s) {
                if !s.closed.load(Ordering::Acquire) {
                    log::warn!("net: stream backend: {e}; the link is down");
                }
            }
            s.closed.store(true, Ordering::Release);
        })?;
        let (queue, frames) = sync_channel::<Vec<u8>>(WRITE_QUEUE);
        let mut writing = socket.try_clone()?;
        let writer = std::thread::Builder::new().name("quern-net-stream-tx".into()).spawn(move || {
            for f in frames {
                let framed = writing.write_all(&(f.len() as u32).to_be_bytes()).and_then(|()| writing.write_all(&f));
                if framed.is_err() {
                    return;
                }
            }
        })?;
        Ok(StreamBackend { queue: Mutex::new(Some(queue)), socket, shared, reader: Some(reader), writer: Some(writer) })
    }

    /// Whether the connection has ended (peer gone, or a malformed length).
    pub fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

/// The reader thread: frames off the socket to the sink, until end of file or error.
fn read_frames(socket: &mut Socket, sink: &dyn FrameSink, shared: &Shared) -> io::Result<()> {
    let mut frame = Vec::with_capacity(2048);
    loop {
        let mut len = [0u8; 4];
        match socket.read_exact(&mut len) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            r => r?,
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the peer sent a frame length of {len} (at most {MAX_FRAME}): not QEMU's stream framing"),
            ));
        }
        frame.resize(len, 0);
        socket.read_exact(&mut frame)?;
        // Offer the frame until the NIC takes it; in between, wait for its `resume`
        // (with a timeout, to notice the backend going away).
        while !sink.receive(&frame) {
            let mut resumed = shared.resumed.lock().unwrap_or_else(|e| e.into_inner());
            if !*resumed {
                resumed = shared
                    .room
                    .wait_timeout(resumed, Duration::from_millis(100))
                    .map(|r| r.0)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            *resumed = false;
            if shared.closed.load(Ordering::Acquire) {
                return Ok(());
            }
        }
    }
}

impl NetBackend for StreamBackend {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("a frame of {} bytes", frame.len())));
        }
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        match q.as_ref().map(|q| q.try_send(frame.to_vec())) {
            Some(Ok(())) => Ok(()),
            Some(Err(TrySendError::Full(_))) => Err(io::ErrorKind::WouldBlock.into()),
            _ => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn resume(&self) {
        *self.shared.resumed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.room.notify_all();
    }
}

impl Drop for StreamBackend {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.socket.shutdown();
        self.resume();
        for t in [self.reader.take(), self.writer.take()].into_iter().flatten() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::testutil::Nic;

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn pair() -> (StreamBackend, Arc<Nic>, StreamBackend, Arc<Nic>) {
        let (a, b) = UnixStream::pair().unwrap();
        let (na, nb) = (Arc::new(Nic::default()), Arc::new(Nic::default()));
        let ba = StreamBackend::start(Socket::Unix(a), na.clone()).unwrap();
        let bb = StreamBackend::start(Socket::Unix(b), nb.clone()).unwrap();
        (ba, na, bb, nb)
    }

    #[test]
    fn frames_cross_both_ways_in_order() {
        let (a, na, b, nb) = pair();
        let frames: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 60 + usize::from(i) * 30]).collect();
        for f in &frames {
            a.send(f).unwrap();
        }
        b.send(&[0xee; 1514]).unwrap();
        wait_until("50 frames at b", || nb.frames.lock().unwrap().len() == 50);
        assert_eq!(*nb.frames.lock().unwrap(), frames);
        wait_until("the frame at a", || na.frames.lock().unwrap().len() == 1);
        assert_eq!(na.frames.lock().unwrap()[0], vec![0xee; 1514]);
        assert!(a.send(&vec![0; MAX_FRAME + 1]).is_err(), "oversized frames are refused");
    }

    /// A full NIC holds frames back, in order, until it resumes the backend.
    #[test]
    fn a_full_nic_holds_frames_back_until_resumed() {
        let (a, _na, b, nb) = pair();
        nb.full.store(true, Ordering::Release);
        for i in 0..3u8 {
            a.send(&[i; 64]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(nb.frames.lock().unwrap().is_empty());
        nb.full.store(false, Ordering::Release);
        b.resume();
        wait_until("the held frames", || nb.frames.lock().unwrap().len() == 3);
        assert_eq!(*nb.frames.lock().unwrap(), vec![vec![0u8; 64], vec![1; 64], vec![2; 64]]);
    }

    /// A peer that does not speak the framing (a length past MAX_FRAME) closes the link
    /// without anything reaching the NIC; a peer that goes away closes it too.
    #[test]
    fn a_malformed_or_vanished_peer_closes_the_link() {
        let (mut raw, theirs) = UnixStream::pair().unwrap();
        let nic = Arc::new(Nic::default());
        let b = StreamBackend::start(Socket::Unix(theirs), nic.clone()).unwrap();
        raw.write_all(&0x7fff_ffffu32.to_be_bytes()).unwrap();
        wait_until("the link to close", || b.closed());
        assert!(nic.frames.lock().unwrap().is_empty());

        let (raw, theirs) = UnixStream::pair().unwrap();
        let b = StreamBackend::start(Socket::Unix(theirs), nic.clone()).unwrap();
        drop(raw);
        wait_until("the link to close", || b.closed());
    }

    /// Over TCP on the loopback, as `-netdev stream,addr.type=inet` uses it.
    #[test]
    fn tcp_on_the_loopback() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        let (nc, ns) = (Arc::new(Nic::default()), Arc::new(Nic::default()));
        let c = StreamBackend::start(Socket::Tcp(client), nc).unwrap();
        let _s = StreamBackend::start(Socket::Tcp(server), ns.clone()).unwrap();
        c.send(b"\xff\xff\xff\xff\xff\xff frame").unwrap();
        wait_until("the frame", || ns.frames.lock().unwrap().len() == 1);
    }
}
