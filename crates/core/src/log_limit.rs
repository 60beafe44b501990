//! Logging for events a guest can repeat at will (triple faults in a reset loop,
//! accesses to unassigned ports, unhandled device commands).
//!
//! Logging each occurrence lets a misbehaving guest write hundreds of thousands of
//! lines a second. A [`LogLimiter`] prints the first occurrence at once, counts the
//! ones that follow within its interval (one second by default) without formatting
//! them, and prints the next occurrence after the interval with the count:
//!
//! ```text
//! [WARN  quern_machine_pc::machine] guest triple-faulted: resetting
//! [WARN  quern_machine_pc::machine] guest triple-faulted: resetting (repeated 183211 times in the last 1.0s)
//! ```
//!
//! [`LogLimiter::flush`] (also run on drop) reports occurrences still uncounted when
//! the burst ends; limiters made by [`log_limited!`](crate::log_limited) are statics,
//! which never drop, so [`flush_all`] reports theirs (the machine calls it on exit).
//!
//! Cost: a suppressed occurrence is one level check, one clock read and two relaxed
//! atomic operations; nothing is formatted and no lock is taken.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often a repeating message is printed by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// One rate-limited message source. Shareable between threads.
pub struct LogLimiter {
    level: log::Level,
    target: &'static str,
    interval_ns: u64,
    /// When the last line was printed, in ns since [`epoch`] plus one; 0 = never.
    last: AtomicU64,
    /// Occurrences since the last line that no line has counted yet.
    pending: AtomicU64,
    /// Every occurrence ever, printed or not.
    total: AtomicU64,
    /// The last printed text, repeated by [`LogLimiter::flush`].
    last_text: Mutex<String>,
}

/// Limiters from [`log_limited!`](crate::log_limited) that have printed, for [`flush_all`].
static REGISTRY: Mutex<Vec<&'static LogLimiter>> = Mutex::new(Vec::new());

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64 + 1
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl LogLimiter {
    /// A limiter printing at `level` under `target` (a module path, so that `-d` and
    /// RUST_LOG filters apply as to the module's other messages), at most once per
    /// [`DEFAULT_INTERVAL`].
    pub const fn new(level: log::Level, target: &'static str) -> Self {
        Self::with_interval(level, target, DEFAULT_INTERVAL)
    }

    pub const fn with_interval(level: log::Level, target: &'static str, interval: Duration) -> Self {
        LogLimiter {
            level,
            target,
            interval_ns: interval.as_nanos() as u64,
            last: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last_text: Mutex::new(String::new()),
        }
    }

    /// Records one occurrence; prints `args` if this is the first one or the interval
    /// has passed since the last line (then with the count of those in between).
    /// Returns whether a line was printed.
    pub fn log(&self, args: fmt::Arguments<'_>) -> bool {
        self.total.fetch_add(1, Relaxed);
        if self.level > log::max_level() {
            return false;
        }
        let now = now_ns();
        let last = self.last.load(Relaxed);
        // One thread wins each interval's line; the others only count.
        if (last != 0 && now - last.min(now) < self.interval_ns)
            || self.last.compare_exchange(last, now, Relaxed, Relaxed).is_err()
        {
            self.pending.fetch_add(1, Relaxed);
            return false;
        }
        if !log::log_enabled!(target: self.target, self.level) {
            return false;
        }
        let text = args.to_string();
        match self.pending.swap(0, Relaxed) {
            0 => log::log!(target: self.target, self.level, "{text}"),
            n => log::log!(
                target: self.target,
                self.level,
                "{text} (repeated {} times in the last {:.1}s)",
                n + 1,
                secs(now - last)
            ),
        }
        *self.last_text.lock().unwrap_or_else(|e| e.into_inner()) = text;
        true
    }

    /// [`log`](Self::log) for a limiter in a static: the first line registers it for
    /// [`flush_all`].
    pub fn log_static(&'static self, args: fmt::Arguments<'_>) -> bool {
        let first = self.last.load(Relaxed) == 0;
        let printed = self.log(args);
        if printed && first {
            REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).push(self);
        }
        printed
    }

    /// Prints the count of occurrences no line has reported yet, if any.
    pub fn flush(&self) {
        let n = self.pending.swap(0, Relaxed);
        if n == 0 {
            return;
        }
        let since = secs(now_ns().saturating_sub(self.last.load(Relaxed)));
        let text = self.last_text.lock().unwrap_or_else(|e| e.into_inner());
        log::log!(target: self.target, self.level, "{text} (repeated {n} more times in the last {since:.1}s)");
    }

    /// Occurrences recorded so far, printed or not.
    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }
}

impl Drop for LogLimiter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Flushes every [`log_limited!`](crate::log_limited) site that has printed.
pub fn flush_all() {
    let sites = REGISTRY.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for l in sites {
        l.flush();
    }
}

/// `log::log!` for a message a guest can repeat: one [`LogLimiter`] per call site.
///
/// ```
/// quern_core::log_limited!(log::Level::Debug, "pic: line {} does not exist", 17);
/// ```
#[macro_export]
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMITER: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new($level, module_path!());
        LIMITER.log_static(format_args!($($arg)+));
    }};
}

/// A logger for unit tests that keeps every line.
#[cfg(test)]
pub(crate) mod test_log {
    use std::sync::{Mutex, Once};

    struct Capture(Mutex<Vec<(String, String)>>);
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            self.0.lock().unwrap().push((r.target().to_string(), r.args().to_string()));
        }
        fn flush(&self) {}
    }
    static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

    /// The lines logged so far under `target` that contain `text` (tests run in
    /// parallel: each picks its own target or text). Installs the logger.
    pub fn lines(target: &str, text: &str) -> Vec<String> {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            log::set_logger(&CAPTURE).unwrap();
            log::set_max_level(log::LevelFilter::Trace);
        });
        let all = CAPTURE.0.lock().unwrap();
        all.iter().filter(|(t, m)| t == target && m.contains(text)).map(|(_, m)| m.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn lines(target: &str) -> Vec<String> {
        test_log::lines(target, "")
    }

    #[test]
    fn a_burst_prints_its_first_line_then_a_count() {
        lines("");
        let l = LogLimiter::with_interval(log::Level::Warn, "burst", Duration::from_secs(3600));
        for i in 0..100_000 {
            l.log(format_args!("fault {i}"));
        }
        assert_eq!(lines("burst"), ["fault 0"]);
        l.flush();
        // The elapsed time is the machine's (slow under emulation): not compared.
        let got = lines("burst");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], "fault 0");
        assert!(
            got[1].starts_with("fault 0 (repeated 99999 more times in the last ") && got[1].ends_with("s)"),
            "{got:?}"
        );
        l.flush();
        drop(l);
        assert_eq!(lines("burst").len(), 2, "nothing pending: nothing more to say");
    }

    #[test]
    fn after_the_interval_the_next_line_carries_the_count() {
        lines("");
        let l = LogLimiter::with_interval(log::Level::Info, "interval", Duration::from_millis(50));
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(230) {
            l.log(format_args!("reset"));
        }
        let got = lines("interval");
        assert!((4..=6).contains(&got.len()), "{got:?}");
        assert_eq!(got[0], "reset");
        for line in &got[1..] {
            assert!(line.starts_with("reset (repeated ") && line.contains(" times in the last 0."), "{line}");
        }
        // Every occurrence is in some line: the first, a counted one, or the flush.
        let count = |s: &str| s["reset (repeated ".len()..].split(' ').next().unwrap().parse::<u64>().unwrap();
        let total = l.total();
        drop(l);
        let all = lines("interval");
        assert_eq!(all.len(), got.len() + 1, "{all:?}");
        assert!(all.last().unwrap().contains("more times"), "{all:?}");
        assert_eq!(1 + all[1..].iter().map(|s| count(s)).sum::<u64>(), total);
        assert!(total > 1000, "{total}");
    }

    #[test]
    fn threads_share_one_limiter_and_lose_no_count() {
        lines("");
        let l = Arc::new(LogLimiter::with_interval(log::Level::Debug, "threads", Duration::from_secs(3600)));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    (0..10_000).for_each(|_| {
                        l.log(format_args!("port 0x80"));
                    })
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        assert_eq!(l.total(), 40_000);
        l.flush();
        assert_eq!(lines("threads"), ["port 0x80", "port 0x80 (repeated 39999 more times in the last 0.0s)"]);
    }

    #[test]
    fn macro_sites_are_flushed_by_flush_all() {
        lines("");
        fn site(i: u32) {
            crate::log_limited!(log::Level::Trace, "site {i}");
        }
        for i in 0..10 {
            site(i);
        }
        flush_all();
        let t = module_path!();
        assert_eq!(lines(t), ["site 0", "site 0 (repeated 9 more times in the last 0.0s)"]);
    }
}
