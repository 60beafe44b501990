//! A sampling profiler for the question "where does the time go: generated code,
//! helpers, or the translator?".
//!
//! With `QUERN_TCG_PROFILE=1`, SIGPROF fires every millisecond of CPU time and its
//! handler looks at the interrupted instruction pointer: inside the code buffer counts
//! as generated code; outside, the phase the vCPU thread marked (translating, in the
//! interpreter helper) decides, the rest is the run loop, the soft-MMU slow paths and
//! the devices. Off, it costs a relaxed store per phase change. The code buffer's
//! range lives in statics: the profiler is process-wide by nature.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::Instant;

/// Each vCPU's code buffer (start, end), `CODE_RANGES_USED` of them.
static CODE_RANGES: [(AtomicUsize, AtomicUsize); crate::coherence::MAX_VCPUS as usize] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 64];
static CODE_RANGES_USED: AtomicUsize = AtomicUsize::new(0);
/// The report is printed once, by the first vCPU to go (the counters are shared).
static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static IN_CODE: AtomicU64 = AtomicU64::new(0);
static OUTSIDE: AtomicU64 = AtomicU64::new(0);
static IN_TRANSLATOR: AtomicU64 = AtomicU64::new(0);
static IN_INTERP: AtomicU64 = AtomicU64::new(0);

/// What the vCPU thread is doing outside generated code.
static PHASE: AtomicU8 = AtomicU8::new(0);
const PHASE_OTHER: u8 = 0;
const PHASE_TRANSLATE: u8 = 1;
const PHASE_INTERP: u8 = 2;

/// Nanoseconds spent translating (always counted: one clock read per translation).
pub static TRANSLATE_NS: AtomicU64 = AtomicU64::new(0);

/// Marks the translator at work while alive, and adds its time to [`TRANSLATE_NS`].
pub struct Translating(Instant);

impl Translating {
    pub fn start() -> Self {
        PHASE.store(PHASE_TRANSLATE, Ordering::Relaxed);
        Translating(Instant::now())
    }
}

impl Drop for Translating {
    fn drop(&mut self) {
        TRANSLATE_NS.fetch_add(self.0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        PHASE.store(PHASE_OTHER, Ordering::Relaxed);
    }
}

/// Marks the interpreter helper at work while alive.
pub struct Interpreting;

impl Interpreting {
    pub fn start() -> Self {
        PHASE.store(PHASE_INTERP, Ordering::Relaxed);
        Interpreting
    }
}

impl Drop for Interpreting {
    fn drop(&mut self) {
        PHASE.store(PHASE_OTHER, Ordering::Relaxed);
    }
}

/// Event counters, reported with the samples (cheap relaxed increments, always on).
pub static TRANSLATIONS: AtomicU64 = AtomicU64::new(0);
pub static DISPATCHES: AtomicU64 = AtomicU64::new(0);
pub static INTERP_CALLS: AtomicU64 = AtomicU64::new(0);
pub static SLOW_ACCESSES: AtomicU64 = AtomicU64::new(0);
pub static PAGE_WALKS: AtomicU64 = AtomicU64::new(0);
pub static INVALIDATIONS: AtomicU64 = AtomicU64::new(0);
/// Pages posted to another vCPU (or from the host) to drop its translations of.
pub static REMOTE_INVALIDATIONS: AtomicU64 = AtomicU64::new(0);
/// Returns to the run loop by exit code (`backend::exit`).
pub static EXITS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];
/// Host code bytes emitted, and how often the full code buffer was emptied.
pub static CODE_BYTES: AtomicU64 = AtomicU64::new(0);
/// Blocks the backend emitted again with fewer guest registers mapped.
pub static REEMITS: AtomicU64 = AtomicU64::new(0);
pub static BUFFER_FLUSHES: AtomicU64 = AtomicU64::new(0);
/// Whole-TLB flushes (every MMU index's entries, or all but the global ones).
pub static TLB_FLUSHES: AtomicU64 = AtomicU64::new(0);
/// Jump-cache refills from generated code, and those that found the block.
pub static LOOKUPS: AtomicU64 = AtomicU64::new(0);
pub static LOOKUP_HITS: AtomicU64 = AtomicU64::new(0);
/// Whole jump-cache flushes (one MMU index's array, or all).
pub static JMP_CACHE_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Counts one event.
pub fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Sampling is on (set by [`start`]): the costlier counters below count only then.
static ON: AtomicBool = AtomicBool::new(false);
/// Interpreted instructions by iced-x86 mnemonic.
static INTERP_BY_MNEMONIC: [AtomicU64; 4096] = [const { AtomicU64::new(0) }; 4096];

/// Counts one instruction run by the interpreter helper.
pub fn count_interp(m: iced_x86::Mnemonic) {
    if ON.load(Ordering::Relaxed) {
        if let Some(c) = INTERP_BY_MNEMONIC.get(m as usize) {
            count(c);
        }
    }
}

/// The host instruction pointer a signal interrupted.
#[cfg(target_arch = "x86_64")]
fn interrupted_pc(ctx: &libc::ucontext_t) -> usize {
    ctx.uc_mcontext.gregs[libc::REG_RIP as usize] as usize
}

#[cfg(target_arch = "aarch64")]
fn interrupted_pc(ctx: &libc::ucontext_t) -> usize {
    ctx.uc_mcontext.pc as usize
}

extern "C" fn on_sigprof(_sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler.
    let rip = unsafe { interrupted_pc(&*(ctx as *const libc::ucontext_t)) };
    let used = CODE_RANGES_USED.load(Ordering::Acquire).min(CODE_RANGES.len());
    let inside =
        CODE_RANGES[..used].iter().any(|(s, e)| rip >= s.load(Ordering::Relaxed) && rip < e.load(Ordering::Relaxed));
    let bucket = match PHASE.load(Ordering::Relaxed) {
        _ if inside => &IN_CODE,
        PHASE_TRANSLATE => &IN_TRANSLATOR,
        PHASE_INTERP => &IN_INTERP,
        _ => &OUTSIDE,
    };
    bucket.fetch_add(1, Ordering::Relaxed);
}

/// Whether profiling was asked for.
pub fn enabled() -> bool {
    std::env::var("QUERN_TCG_PROFILE").is_ok_and(|v| v == "1")
}

/// Starts sampling; `code` is the (calling vCPU's) code buffer's address range. With
/// several vCPUs the counters are shared and the phase (translating, interpreting) is
/// one for all: the split is then approximate.
pub fn start(code: std::ops::Range<usize>) {
    ON.store(true, Ordering::Relaxed);
    let i = CODE_RANGES_USED.load(Ordering::Relaxed);
    if let Some((s, e)) = CODE_RANGES.get(i) {
        s.store(code.start, Ordering::Relaxed);
        e.store(code.end, Ordering::Relaxed);
        CODE_RANGES_USED.store(i + 1, Ordering::Release);
    }
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
    if REPORTED.swap(true, Ordering::Relaxed) {
        return;
    }
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let (code, tr, interp, other) = (n(&IN_CODE), n(&IN_TRANSLATOR), n(&IN_INTERP), n(&OUTSIDE));
    let total = (code + tr + interp + other).max(1);
    let pct = |x: u64| x as f64 * 100.0 / total as f64;
    eprintln!(
        "quern tcg profile: {code} samples in generated code ({:.1}%), {interp} in the interpreter ({:.1}%), \
         {tr} translating ({:.1}%), {other} in the run loop/soft-MMU/devices ({:.1}%)",
        pct(code),
        pct(interp),
        pct(tr),
        pct(other)
    );
    let translations = n(&TRANSLATIONS);
    let secs = n(&TRANSLATE_NS) as f64 / 1e9;
    eprintln!(
        "quern tcg counters: {translations} translations in {secs:.3} s ({:.0} per second of translating), \
         {} bytes of host code a block ({} blocks emitted again with fewer mapped registers), {} code buffer flushes, \
         {} dispatches, {} interpreted instructions, {} TLB-miss accesses, {} page walks, {} page invalidations ({} posted between vCPUs), {} TLB flushes, {} jump-cache flushes",
        translations as f64 / secs.max(1e-9),
        n(&CODE_BYTES) / translations.max(1),
        n(&REEMITS),
        n(&BUFFER_FLUSHES),
        n(&DISPATCHES),
        n(&INTERP_CALLS),
        n(&SLOW_ACCESSES),
        n(&PAGE_WALKS),
        n(&INVALIDATIONS),
        n(&REMOTE_INVALIDATIONS),
        n(&TLB_FLUSHES),
        n(&JMP_CACHE_FLUSHES)
    );
    eprintln!(
        "quern tcg exits: {} to look up the next block ({} jump-cache misses, {} after the interpreter, \
         {} mode changes), {} to chain, {} faults, {} requests, {} halts, {} x87 guards failed; \
         {} jump-cache refills in generated code, {} of them found the block",
        n(&EXITS[0]) + n(&EXITS[5]) + n(&EXITS[6]) + n(&EXITS[7]),
        n(&EXITS[5]),
        n(&EXITS[6]),
        n(&EXITS[7]),
        n(&EXITS[1]),
        n(&EXITS[2]),
        n(&EXITS[3]),
        n(&EXITS[4]),
        n(&EXITS[8]),
        n(&LOOKUPS),
        n(&LOOKUP_HITS)
    );
    let mut by: Vec<(u64, usize)> =
        INTERP_BY_MNEMONIC.iter().enumerate().map(|(i, c)| (n(c), i)).filter(|&(c, _)| c > 0).collect();
    by.sort_unstable_by(|a, b| b.cmp(a));
    let names: Vec<String> = by
        .iter()
        .take(16)
        .filter_map(|&(c, i)| Some(format!("{:?} {c}", iced_x86::Mnemonic::values().nth(i)?)))
        .collect();
    eprintln!("quern tcg interpreted, most often: {}", names.join(", "));
}
