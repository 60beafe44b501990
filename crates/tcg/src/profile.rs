//! A sampling profiler for the question "how much time is spent in generated code?".
//!
//! With `QUERN_TCG_PROFILE=1`, SIGPROF fires every millisecond of CPU time and its
//! handler looks at the interrupted instruction pointer: inside the code buffer counts
//! as generated code, anything else as the run loop, helpers and the translator. Off,
//! it costs nothing. The code buffer's range lives in statics: the profiler is
//! process-wide by nature.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

static CODE_START: AtomicUsize = AtomicUsize::new(0);
static CODE_END: AtomicUsize = AtomicUsize::new(0);
static IN_CODE: AtomicU64 = AtomicU64::new(0);
static OUTSIDE: AtomicU64 = AtomicU64::new(0);

/// Event counters, reported with the samples (cheap relaxed increments, always on).
pub static TRANSLATIONS: AtomicU64 = AtomicU64::new(0);
pub static DISPATCHES: AtomicU64 = AtomicU64::new(0);
pub static INTERP_CALLS: AtomicU64 = AtomicU64::new(0);
pub static SLOW_ACCESSES: AtomicU64 = AtomicU64::new(0);
pub static PAGE_WALKS: AtomicU64 = AtomicU64::new(0);
pub static INVALIDATIONS: AtomicU64 = AtomicU64::new(0);
/// Whole-TLB flushes (every MMU index's entries, or all but the global ones).
pub static TLB_FLUSHES: AtomicU64 = AtomicU64::new(0);
/// Whole jump-cache flushes (one MMU index's array, or all).
pub static JMP_CACHE_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Counts one event.
pub fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

extern "C" fn on_sigprof(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler.
    let rip = unsafe { (*(ctx as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] } as usize;
    let inside = rip >= CODE_START.load(Ordering::Relaxed) && rip < CODE_END.load(Ordering::Relaxed);
    if inside { &IN_CODE } else { &OUTSIDE }.fetch_add(1, Ordering::Relaxed);
}

/// Whether profiling was asked for.
pub fn enabled() -> bool {
    std::env::var("QUERN_TCG_PROFILE").is_ok_and(|v| v == "1")
}

/// Starts sampling; `code` is the code buffer's address range.
pub fn start(code: std::ops::Range<usize>) {
    CODE_START.store(code.start, Ordering::Relaxed);
    CODE_END.store(code.end, Ordering::Relaxed);
    // SAFETY: installs a handler that only touches atomics, and a CPU-time timer.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigprof as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut());
        let t = libc::itimerval {
            it_interval: libc::timeval { tv_sec: 0, tv_usec: 1000 },
            it_value: libc::timeval { tv_sec: 0, tv_usec: 1000 },
        };
        libc::setitimer(libc::ITIMER_PROF, &t, std::ptr::null_mut());
    }
}

/// Prints the split so far to stderr.
pub fn report() {
    let (a, b) = (IN_CODE.load(Ordering::Relaxed), OUTSIDE.load(Ordering::Relaxed));
    let total = (a + b).max(1);
    eprintln!(
        "quern tcg profile: {a} samples in generated code ({:.1}%), {b} in run loop/helpers/translator ({:.1}%)",
        a as f64 * 100.0 / total as f64,
        b as f64 * 100.0 / total as f64
    );
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "quern tcg counters: {} translations, {} dispatches, {} interpreted instructions, {} TLB-miss accesses, \
         {} page walks, {} page invalidations, {} TLB flushes, {} jump-cache flushes",
        n(&TRANSLATIONS),
        n(&DISPATCHES),
        n(&INTERP_CALLS),
        n(&SLOW_ACCESSES),
        n(&PAGE_WALKS),
        n(&INVALIDATIONS),
        n(&TLB_FLUSHES),
        n(&JMP_CACHE_FLUSHES)
    );
}
