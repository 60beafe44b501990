//! `-netdev user`: the guest's network is a user-mode TCP/IP stack inside the emulator
//! (libslirp, the library QEMU uses), which turns the guest's connections into the
//! host's own sockets. No privileges, no host interface: the guest sees a router at
//! 10.0.2.2 (connections to it reach the host's 127.0.0.1), DNS at 10.0.2.3, a DHCP
//! server handing out 10.0.2.15 on, TFTP for PXE boots, and `hostfwd` rules that
//! listen on the host and connect into the guest.
//!
//! libslirp is single-threaded and driven from outside: the application polls the file
//! descriptors it asks for, runs its timers, and feeds it the guest's frames. Here one
//! thread (`quern-net-slirp`) owns the polling; every call into libslirp, from that
//! thread or from a vCPU sending a frame, happens under one mutex. A frame the guest
//! sends goes in at once on the vCPU's thread (replies the stack makes at once, an
//! ARP answer, reach the NIC re-entrantly); once the NIC has sent a batch
//! ([`NetBackend::flush`]), one poll round that does not sleep follows there, so that what the frame made possible (window for more data from a host
//! socket, data to write to one) happens at once rather than a thread switch later;
//! then the poller is woken to re-arm its polls and timeouts, at most one wake-up per
//! poll round.
//!
//! Frames for a NIC with no free receive buffer wait in a bounded queue until the NIC
//! calls [`NetBackend::resume`]; TCP's window keeps that queue short, and past its bound
//! frames are dropped as on a congested wire.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use libslirp_sys as sys;

pub use crate::slirp_config::{GuestFwd, HostFwd, SlirpConfig};
use crate::{FrameSink, NetBackend, MAX_FRAME};

/// Frames held for a NIC that has no room, before the stack's further frames drop.
const MAX_HELD: usize = 2048;

/// A timer libslirp asked for (router advertisements, with IPv6).
struct Timer {
    cb: sys::SlirpTimerCb,
    cb_opaque: *mut c_void,
    /// Expiry in ms of [`Ctx::start`]'s clock, when armed.
    expire: Cell<Option<i64>>,
}

/// What libslirp's callbacks reach through their opaque pointer. Only touched by the
/// thread that holds [`Shared::engine`]'s lock (every libslirp call is made under it),
/// hence the single-threaded cells.
struct Ctx {
    sink: Arc<dyn FrameSink>,
    /// Frames the NIC refused, oldest first.
    held: RefCell<VecDeque<Vec<u8>>>,
    timers: RefCell<Vec<*mut Timer>>,
    /// The poll set of the current round; entry 0 is the wake-up eventfd.
    polls: RefCell<Vec<libc::pollfd>>,
    start: Instant,
    dropped: Cell<u64>,
    shared: *const Shared,
    /// Poll rounds filled so far (the poller's results are for its round only).
    round: Cell<u64>,
    /// The poll set of a vCPU's immediate round, kept to spare an allocation a frame.
    scratch: Cell<Vec<libc::pollfd>>,
}

/// libslirp's instance and its context.
struct Engine {
    slirp: *mut sys::Slirp,
    ctx: Box<Ctx>,
    /// Strings libslirp keeps pointers to for its lifetime.
    _strings: Vec<CString>,
}

// SAFETY: the engine is only used under `Shared::engine`'s mutex; libslirp keeps no
// thread affinity (it is single-threaded, not thread-local), and the raw pointers it
// holds are owned by this struct.
unsafe impl Send for Engine {}

/// What the poller, the NIC's side and the backend handle share.
struct Shared {
    engine: Mutex<Option<Engine>>,
    wake_fd: OwnedFd,
    /// Set by whoever wrote `wake_fd` since the poller last cleared it: one write per
    /// round is enough.
    wake_pending: AtomicBool,
    resumed: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writing 8 bytes from a live buffer to our eventfd.
            unsafe { libc::write(self.wake_fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }

    fn engine(&self) -> MutexGuard<'_, Option<Engine>> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The user-mode network backend.
pub struct SlirpBackend {
    shared: Arc<Shared>,
    poller: Option<JoinHandle<()>>,
}

/// libslirp's version, for messages and the monitor.
pub fn version() -> String {
    // SAFETY: returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(sys::slirp_version_string()) }.to_string_lossy().into_owned()
}

fn in_addr(a: Ipv4Addr) -> sys::in_addr {
    sys::in_addr::from(a)
}

fn cstring(s: &str, what: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte")))
}

impl SlirpBackend {
    /// Starts the stack with `cfg`, delivering the frames it makes to `sink`. Fails
    /// with a message naming the rule when a forward cannot be set up (a host port in
    /// use, say).
    pub fn start(cfg: &SlirpConfig, sink: Arc<dyn FrameSink>) -> io::Result<SlirpBackend> {
        // SAFETY: plain eventfd creation; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared {
            engine: Mutex::new(None),
            wake_fd,
            wake_pending: AtomicBool::new(false),
            resumed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let engine = Engine::new(cfg, sink, &shared)?;
        *shared.engine() = Some(engine);
        let s = shared.clone();
        let poller = std::thread::Builder::new().name("quern-net-slirp".into()).spawn(move || poll_loop(&s))?;
        Ok(SlirpBackend { shared, poller: Some(poller) })
    }

    /// Frames dropped because the NIC's queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.shared.engine().as_ref().map_or(0, |e| e.ctx.dropped.get())
    }

    /// libslirp's description of its connections (`info usernet`).
    pub fn connection_info(&self) -> String {
        let g = self.shared.engine();
        let Some(e) = g.as_ref() else { return String::new() };
        // SAFETY: the engine is live under the lock; the string is malloc'd by libslirp.
        unsafe {
            let p = sys::slirp_connection_info(e.slirp);
            if p.is_null() {
                return String::new();
            }
            let s = CStr::from_ptr(p).to_string_lossy().into_owned();
            libc::free(p.cast());
            s
        }
    }
}

impl Engine {
    fn new(cfg: &SlirpConfig, sink: Arc<dyn FrameSink>, shared: &Arc<Shared>) -> io::Result<Engine> {
        let mut strings = Vec::new();
        let mut keep = |s: Option<&str>, what: &str| -> io::Result<*const c_char> {
            let Some(s) = s else { return Ok(std::ptr::null()) };
            let c = cstring(s, what)?;
            let p = c.as_ptr();
            strings.push(c);
            Ok(p)
        };
        let tftp = cfg.tftp.as_ref().map(|p| p.to_string_lossy().into_owned());
        let config = sys::SlirpConfig {
            // Version 3: the fields this binding declares up to `disable_dns`.
            version: 3,
            restricted: c_int::from(cfg.restrict),
            in_enabled: true,
            vnetwork: in_addr(cfg.net),
            vnetmask: in_addr(cfg.mask),
            vhost: in_addr(cfg.host),
            in6_enabled: cfg.ipv6,
            vprefix_addr6: "fec0::"
                .parse::<std::net::Ipv6Addr>()
                .map(sys::in6_addr::from)
                .unwrap_or(sys::in6_addr { s6_addr: [0; 16] }),
            vprefix_len: 64,
            vhost6: "fec0::2"
                .parse::<std::net::Ipv6Addr>()
                .map(sys::in6_addr::from)
                .unwrap_or(sys::in6_addr { s6_addr: [0; 16] }),
            vhostname: keep(cfg.hostname.as_deref(), "hostname")?,
            tftp_server_name: keep(cfg.tftp_server_name.as_deref(), "tftp-server-name")?,
            tftp_path: keep(tftp.as_deref(), "tftp")?,
            bootfile: keep(cfg.bootfile.as_deref(), "bootfile")?,
            vdhcp_start: in_addr(cfg.dhcp_start),
            vnameserver: in_addr(cfg.dns),
            vnameserver6: "fec0::3"
                .parse::<std::net::Ipv6Addr>()
                .map(sys::in6_addr::from)
                .unwrap_or(sys::in6_addr { s6_addr: [0; 16] }),
            vdnssearch: std::ptr::null_mut(),
            vdomainname: keep(cfg.domainname.as_deref(), "domainname")?,
            if_mtu: 0,
            if_mru: 0,
            disable_host_loopback: false,
            enable_emu: false,
            outbound_addr: std::ptr::null(),
            outbound_addr6: std::ptr::null(),
            disable_dns: false,
            disable_dhcp: false,
        };
        let ctx = Box::new(Ctx {
            sink,
            held: RefCell::new(VecDeque::new()),
            timers: RefCell::new(Vec::new()),
            polls: RefCell::new(Vec::new()),
            start: Instant::now(),
            dropped: Cell::new(0),
            shared: Arc::as_ptr(shared),
            round: Cell::new(0),
            scratch: Cell::new(Vec::new()),
        });
        let opaque = (&*ctx as *const Ctx).cast_mut().cast::<c_void>();
        // SAFETY: the config's strings live in `strings` for the engine's lifetime; the
        // callback table, which libslirp keeps a pointer to, is static; the context
        // outlives the instance (dropped after slirp_cleanup).
        let slirp = unsafe { sys::slirp_new(&config, &CALLBACKS, opaque) };
        if slirp.is_null() {
            return Err(io::Error::other("libslirp could not start (check net=, host=, dhcpstart=)"));
        }
        let engine = Engine { slirp, ctx, _strings: strings };
        for f in &cfg.hostfwd {
            let guest = f.guest_addr.unwrap_or(cfg.dhcp_start);
            // SAFETY: a live instance; plain values.
            let r = unsafe {
                sys::slirp_add_hostfwd(
                    slirp,
                    c_int::from(f.udp),
                    in_addr(f.host_addr),
                    c_int::from(f.host_port),
                    in_addr(guest),
                    c_int::from(f.guest_port),
                )
            };
            if r < 0 {
                let proto = if f.udp { "udp" } else { "tcp" };
                return Err(io::Error::other(format!(
                    "hostfwd={proto}:{}:{}-{guest}:{}: could not set up the forward (is the host port in use?)",
                    f.host_addr, f.host_port, f.guest_port
                )));
            }
        }
        for f in &cfg.guestfwd {
            let cmd = cstring(&f.command, "guestfwd's command")?;
            let mut addr = in_addr(f.addr);
            // SAFETY: a live instance; libslirp copies the command line.
            let r = unsafe { sys::slirp_add_exec(slirp, cmd.as_ptr(), &mut addr, c_int::from(f.port)) };
            if r < 0 {
                return Err(io::Error::other(format!(
                    "guestfwd=tcp:{}:{}-cmd:{}: the address must be in the guest's network and not the host's",
                    f.addr, f.port, f.command
                )));
            }
        }
        Ok(engine)
    }

    /// Offers held frames to the NIC again, oldest first, until it refuses one.
    fn flush_held(&self) {
        let mut held = self.ctx.held.borrow_mut();
        while let Some(f) = held.front() {
            if !self.ctx.sink.receive(f) {
                break;
            }
            held.pop_front();
        }
    }

    /// Runs the timers whose time has come; returns ms until the next one.
    fn run_timers(&self) -> Option<i64> {
        let now = self.ctx.now_ms();
        let due: Vec<*mut Timer> = self
            .ctx
            .timers
            .borrow()
            .iter()
            .copied()
            // SAFETY: listed timers are live (removed from the list before freeing).
            .filter(|&t| unsafe { (*t).expire.get() }.is_some_and(|e| e <= now))
            .collect();
        for t in due {
            // SAFETY: as above; a callback may free other timers, so check it is listed.
            unsafe {
                if !self.ctx.timers.borrow().contains(&t) {
                    continue;
                }
                (*t).expire.set(None);
                if let Some(cb) = (*t).cb {
                    cb((*t).cb_opaque);
                }
            }
        }
        let now = self.ctx.now_ms();
        // SAFETY: as above.
        self.ctx.timers.borrow().iter().filter_map(|&t| unsafe { (*t).expire.get() }).map(|e| (e - now).max(0)).min()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: the instance is live and used by nobody else (we own it).
        unsafe { sys::slirp_cleanup(self.slirp) };
        for t in self.ctx.timers.borrow_mut().drain(..) {
            // SAFETY: timers were made by Box::into_raw and are freed once.
            drop(unsafe { Box::from_raw(t) });
        }
    }
}

impl Ctx {
    fn now_ms(&self) -> i64 {
        self.start.elapsed().as_millis() as i64
    }

    /// # Safety
    /// `opaque` is the pointer given to slirp_new, and the caller holds the engine lock.
    unsafe fn from<'a>(opaque: *mut c_void) -> &'a Ctx {
        // SAFETY: by the caller.
        unsafe { &*opaque.cast::<Ctx>() }
    }
}

impl Engine {
    fn opaque(&self) -> *mut c_void {
        (&*self.ctx as *const Ctx).cast_mut().cast::<c_void>()
    }

    /// Asks libslirp for its poll set (after the wake-up eventfd); returns it with the
    /// timeout in ms (-1: none) and the round's number.
    fn fill(&self, wake_fd: i32, into: &mut Vec<libc::pollfd>) -> (c_int, u64) {
        let mut p = self.ctx.polls.borrow_mut();
        p.clear();
        p.push(libc::pollfd { fd: wake_fd, events: libc::POLLIN, revents: 0 });
        drop(p);
        let mut timeout: u32 = u32::MAX;
        // SAFETY: a live instance under the lock; the callback fills our set.
        unsafe { sys::slirp_pollfds_fill(self.slirp, &mut timeout, Some(cb_add_poll), self.opaque()) };
        if let Some(t) = self.run_timers() {
            timeout = timeout.min(t.clamp(0, i64::from(u32::MAX)) as u32);
        }
        into.clear();
        into.extend_from_slice(&self.ctx.polls.borrow());
        let round = self.ctx.round.get() + 1;
        self.ctx.round.set(round);
        (if timeout == u32::MAX { -1 } else { timeout.min(i32::MAX as u32) as c_int }, round)
    }

    /// Hands libslirp the results of a poll of the set `fill` gave (reads, writes,
    /// accepts), then runs due timers.
    fn dispatch(&self, polls: &[libc::pollfd], error: bool) {
        self.ctx.polls.borrow_mut().clone_from_slice(polls);
        // SAFETY: a live instance under the lock; get_revents reads the set it filled.
        unsafe { sys::slirp_pollfds_poll(self.slirp, c_int::from(error), Some(cb_get_revents), self.opaque()) };
        self.run_timers();
    }

    /// A whole round without sleeping: what is ready now is done now.
    fn round_now(&self, wake_fd: i32, scratch: &mut Vec<libc::pollfd>) {
        self.fill(wake_fd, scratch);
        // SAFETY: a live array of pollfd of the given length.
        let r = unsafe { libc::poll(scratch.as_mut_ptr(), scratch.len() as libc::nfds_t, 0) };
        if r != 0 {
            self.dispatch(scratch, r < 0);
        }
    }
}

/// The poller: fill the poll set from libslirp, sleep in poll(2) without the lock,
/// hand libslirp the results, run its timers; the eventfd ends a sleep early. A round
/// run meanwhile by a vCPU (after a guest frame) makes this one's results stale (the
/// set's indices are libslirp's per round): they are dropped and the loop fills again.
fn poll_loop(shared: &Shared) {
    let mut polls: Vec<libc::pollfd> = Vec::new();
    let wake_fd = shared.wake_fd.as_raw_fd();
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        // Clear before draining and refilling: a wake-up after this point writes the
        // eventfd again, one before it is seen by this round's fill.
        shared.wake_pending.store(false, Ordering::Release);
        let mut drain = [0u8; 8];
        // SAFETY: reading into a live 8-byte buffer from our non-blocking eventfd.
        unsafe { libc::read(wake_fd, drain.as_mut_ptr().cast(), 8) };
        let (ms, round) = {
            let g = shared.engine();
            let Some(e) = g.as_ref() else { return };
            if shared.resumed.swap(false, Ordering::AcqRel) {
                e.flush_held();
            }
            e.fill(wake_fd, &mut polls)
        };
        // SAFETY: `polls` is a live array of pollfd of the given length.
        let r = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
        let g = shared.engine();
        let Some(e) = g.as_ref() else { return };
        if e.ctx.round.get() == round {
            e.dispatch(&polls, r < 0);
        }
    }
}

impl NetBackend for SlirpBackend {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame too long"));
        }
        {
            let g = self.shared.engine();
            let Some(e) = g.as_ref() else { return Err(io::ErrorKind::NotConnected.into()) };
            // SAFETY: a live instance under the lock; libslirp copies the frame.
            unsafe { sys::slirp_input(e.slirp, frame.as_ptr(), frame.len() as c_int) };
        }
        Ok(())
    }

    fn flush(&self) {
        {
            let g = self.shared.engine();
            let Some(e) = g.as_ref() else { return };
            // What the frames made possible happens now, not after the poller wakes:
            // an ACK that frees window gets the next data read from the host socket
            // and sent, data for a host socket is written, a new connection watched.
            let mut scratch = e.ctx.scratch.take();
            e.round_now(self.shared.wake_fd.as_raw_fd(), &mut scratch);
            e.ctx.scratch.set(scratch);
        }
        // New sockets, a delayed ACK: the poller re-arms its polls and timeouts.
        self.shared.wake();
    }

    fn resume(&self) {
        self.shared.resumed.store(true, Ordering::Release);
        self.shared.wake();
    }
}

impl Drop for SlirpBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake_pending.store(false, Ordering::Release);
        self.shared.wake();
        if let Some(t) = self.poller.take() {
            let _ = t.join();
        }
        self.shared.engine().take();
    }
}

// libslirp's callbacks. Each runs inside a libslirp call, made under the engine lock.

/// The callback table: libslirp keeps the pointer, not a copy.
static CALLBACKS: sys::SlirpCb = sys::SlirpCb {
    send_packet: Some(cb_send_packet),
    guest_error: Some(cb_guest_error),
    clock_get_ns: Some(cb_clock_get_ns),
    timer_new: Some(cb_timer_new),
    timer_free: Some(cb_timer_free),
    timer_mod: Some(cb_timer_mod),
    register_poll_fd: Some(cb_poll_fd),
    unregister_poll_fd: Some(cb_poll_fd),
    notify: Some(cb_notify),
};

unsafe extern "C" fn cb_send_packet(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: libslirp passes our context and a frame of `len` bytes.
    let (ctx, frame) = unsafe { (Ctx::from(opaque), std::slice::from_raw_parts(buf.cast::<u8>(), len)) };
    let mut held = ctx.held.borrow_mut();
    // Frames keep their order: once one waits, the ones after it wait too.
    if held.is_empty() && ctx.sink.receive(frame) {
        return len as isize;
    }
    if held.len() >= MAX_HELD {
        ctx.dropped.set(ctx.dropped.get() + 1);
    } else {
        held.push_back(frame.to_vec());
    }
    len as isize
}

unsafe extern "C" fn cb_guest_error(msg: *const c_char, _opaque: *mut c_void) {
    // SAFETY: libslirp passes a NUL-terminated message.
    let msg = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
    log::warn!("net: user-mode stack: guest error: {msg}");
}

unsafe extern "C" fn cb_clock_get_ns(opaque: *mut c_void) -> i64 {
    // SAFETY: our context.
    unsafe { Ctx::from(opaque) }.start.elapsed().as_nanos() as i64
}

unsafe extern "C" fn cb_timer_new(cb: sys::SlirpTimerCb, cb_opaque: *mut c_void, opaque: *mut c_void) -> *mut c_void {
    // SAFETY: our context.
    let ctx = unsafe { Ctx::from(opaque) };
    let t = Box::into_raw(Box::new(Timer { cb, cb_opaque, expire: Cell::new(None) }));
    ctx.timers.borrow_mut().push(t);
    t.cast()
}

unsafe extern "C" fn cb_timer_free(timer: *mut c_void, opaque: *mut c_void) {
    // SAFETY: our context.
    let ctx = unsafe { Ctx::from(opaque) };
    let t = timer.cast::<Timer>();
    let mut timers = ctx.timers.borrow_mut();
    if let Some(i) = timers.iter().position(|&x| x == t) {
        timers.swap_remove(i);
        // SAFETY: made by cb_timer_new, listed once, freed once.
        drop(unsafe { Box::from_raw(t) });
    }
}

unsafe extern "C" fn cb_timer_mod(timer: *mut c_void, expire_ms: i64, opaque: *mut c_void) {
    // SAFETY: our context; the timer is one of ours (checked against the list).
    let ctx = unsafe { Ctx::from(opaque) };
    let t = timer.cast::<Timer>();
    if ctx.timers.borrow().contains(&t) {
        // SAFETY: listed, so live.
        unsafe { (*t).expire.set(Some(expire_ms)) };
        // SAFETY: the backend's shared part outlives the engine.
        unsafe { (*ctx.shared).wake() };
    }
}

unsafe extern "C" fn cb_poll_fd(_fd: c_int, _opaque: *mut c_void) {}

unsafe extern "C" fn cb_notify(opaque: *mut c_void) {
    // SAFETY: our context; the shared part outlives the engine.
    unsafe { (*Ctx::from(opaque).shared).wake() };
}

unsafe extern "C" fn cb_add_poll(fd: c_int, events: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: our context.
    let ctx = unsafe { Ctx::from(opaque) };
    let mut ev = 0;
    if events & sys::SLIRP_POLL_IN != 0 {
        ev |= libc::POLLIN;
    }
    if events & sys::SLIRP_POLL_OUT != 0 {
        ev |= libc::POLLOUT;
    }
    if events & sys::SLIRP_POLL_PRI != 0 {
        ev |= libc::POLLPRI;
    }
    let mut p = ctx.polls.borrow_mut();
    p.push(libc::pollfd { fd, events: ev, revents: 0 });
    (p.len() - 1) as c_int
}

unsafe extern "C" fn cb_get_revents(idx: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: our context.
    let ctx = unsafe { Ctx::from(opaque) };
    let p = ctx.polls.borrow();
    let Some(pfd) = usize::try_from(idx).ok().and_then(|i| p.get(i)) else { return 0 };
    let r = pfd.revents;
    let mut out = 0;
    if r & libc::POLLIN != 0 {
        out |= sys::SLIRP_POLL_IN;
    }
    if r & libc::POLLOUT != 0 {
        out |= sys::SLIRP_POLL_OUT;
    }
    if r & libc::POLLPRI != 0 {
        out |= sys::SLIRP_POLL_PRI;
    }
    if r & libc::POLLERR != 0 {
        out |= sys::SLIRP_POLL_ERR;
    }
    if r & libc::POLLHUP != 0 {
        out |= sys::SLIRP_POLL_HUP;
    }
    out
}

#[cfg(test)]
mod tests;
