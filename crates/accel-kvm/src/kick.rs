//! Kicking a vCPU out of KVM_RUN from another thread.
//!
//! A kick sets a flag and sends the vCPU thread a real-time signal. The run loop checks
//! the flag before each KVM_RUN, but the signal could land just after that check and
//! just before the ioctl; so the handler also sets `immediate_exit` in the thread's
//! `kvm_run`, which makes the coming KVM_RUN return EINTR at once (KVM_CAP_IMMEDIATE_EXIT).
//! A signal arriving during KVM_RUN interrupts it as any signal does; the handler is
//! installed without SA_RESTART so the ioctl returns EINTR instead of restarting.
//!
//! A kick that lands between runs only sets the flag, which the next run() honours. A
//! late signal from a kick already honoured can cause one spurious `Kicked` exit, which
//! callers treat as "check your state and run again".

use std::cell::Cell;
use std::io;
use std::ptr::addr_of_mut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use kvm_bindings::kvm_run;
use quern_core::VcpuKicker;

use crate::run_page::RunPage;

thread_local! {
    /// The run page of the vCPU this thread is running, or null. Const-initialised and
    /// without a destructor, so reading it from a signal handler is a plain TLS load.
    static CURRENT_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal. SIGRTMIN itself is left to other libraries that conventionally take it.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_kick(_signal: libc::c_int) {
    let _ = CURRENT_RUN.try_with(|run| {
        let p = run.get();
        if !p.is_null() {
            // SAFETY: a non-null pointer is registered only while run() executes on this
            // thread, and the run page outlives that call; a volatile byte store is
            // async-signal-safe.
            unsafe { addr_of_mut!((*p).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler once per process.
pub(crate) fn install_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: sigaction is fully initialised (zeroed, then mask emptied) before use,
        // and on_kick only does async-signal-safe work.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
            act.sa_flags = 0; // no SA_RESTART: KVM_RUN must come back with EINTR
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(kick_signal(), &act, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EINVAL));
            }
        }
        Ok(())
    });
    result.map_err(io::Error::from_raw_os_error)
}

/// Shared between a vCPU and its kickers.
#[derive(Default)]
pub(crate) struct KickState {
    kicked: AtomicBool,
    /// The thread inside run(), if any. Kicks signal it under this lock, and run() clears
    /// it under the lock before returning, so a signal never goes to a thread that has
    /// left (or exited).
    thread: Mutex<Option<libc::pthread_t>>,
}

impl KickState {
    /// Consumes a pending kick.
    pub fn take(&self) -> bool {
        self.kicked.swap(false, Ordering::SeqCst)
    }

    /// Registers the calling thread as running the vCPU whose run page is `run`.
    pub fn enter(self: &Arc<Self>, run: &RunPage) -> RunGuard {
        CURRENT_RUN.with(|c| c.set(run.as_ptr()));
        // SAFETY: pthread_self has no preconditions.
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(unsafe { libc::pthread_self() });
        unblock_kick_signal();
        // A stale signal may have set immediate_exit; any kick it stood for left the
        // flag set first, and the loop checks the flag after this.
        run.set_immediate_exit(false);
        RunGuard { state: self.clone() }
    }

    fn kick(&self) {
        self.kicked.store(true, Ordering::SeqCst);
        if let Some(thread) = *self.thread.lock().unwrap_or_else(|e| e.into_inner()) {
            // SAFETY: the thread is inside run() while it is recorded here (see `thread`).
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
    }
}

fn unblock_kick_signal() {
    // SAFETY: the set is initialised by sigemptyset before use; changing this thread's
    // mask for one signal has no other effect.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Unregisters the thread when run() returns, however it returns.
pub(crate) struct RunGuard {
    state: Arc<KickState>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        *self.state.thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
        CURRENT_RUN.with(|c| c.set(std::ptr::null_mut()));
    }
}

/// The [`VcpuKicker`] of a KVM vCPU.
pub struct KvmKicker(pub(crate) Arc<KickState>);

impl VcpuKicker for KvmKicker {
    fn kick(&self) {
        self.0.kick();
    }
}
