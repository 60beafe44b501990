//! Booting the stock kernel with build/guest/initramfs-programs.cpio.gz under an
//! emulator and reading what its /init reports (`QUERN-BENCH name start end` timings,
//! `QUERN-CHECK name ok|FAIL` checks): shared by the programs and SMP benchmarks.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A full run takes about 45 s under QEMU's TCG and 2 minutes under quern on the
/// project's 2-core machines.
const LIMIT: Duration = Duration::from_secs(1200);

/// Exits with a message when the programs guest has not been built.
pub fn require_programs_guest() {
    for f in ["vmlinuz", "initramfs-programs.cpio.gz"] {
        if !guest().join(f).exists() {
            eprintln!("build/guest/{f} is missing: run scripts/build-test-guest.sh first");
            std::process::exit(1);
        }
    }
}

pub fn guest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/guest")
}

/// One boot of the programs guest.
pub struct Run {
    /// Start to exit.
    pub wall: Duration,
    /// (workload, seconds inside the guest).
    pub timings: Vec<(String, f64)>,
    /// (workload, the guest's uptime when it started).
    pub starts: Vec<(String, f64)>,
    /// (workload, "ok" or "FAIL ...").
    pub checks: Vec<(String, String)>,
    /// Why the run did not end cleanly (no marker, a status other than 0, killed).
    pub trouble: Option<String>,
}

/// The words after `tag` on each line that has it.
pub fn tagged<'a>(text: &'a str, tag: &'a str) -> impl Iterator<Item = Vec<&'a str>> + 'a {
    text.lines().filter_map(move |l| {
        let at = l.find(tag)?;
        Some(l[at + tag.len()..].split_whitespace().collect())
    })
}

pub fn boot(program: &str, pre: &[&str], append: &str) -> Run {
    let g = guest();
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(pre)
        .args(["-m", "1024", "-nographic", "-no-reboot", "-kernel"])
        .arg(g.join("vmlinuz"))
        .arg("-initrd")
        .arg(g.join("initramfs-programs.cpio.gz"))
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = collect(Box::new(child.stdout.take().unwrap()));
    let err = collect(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = start.elapsed();
    let text = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let timings = tagged(&text, "QUERN-BENCH ")
        .filter_map(|w| {
            let a: f64 = w.get(1)?.parse().ok()?;
            let b: f64 = w.get(2)?.parse().ok()?;
            Some((w[0].to_string(), b - a))
        })
        .collect();
    let starts =
        tagged(&text, "QUERN-BENCH ").filter_map(|w| Some((w.first()?.to_string(), w.get(1)?.parse().ok()?))).collect();
    let checks =
        tagged(&text, "QUERN-CHECK ").filter(|w| w.len() >= 2).map(|w| (w[0].to_string(), w[1..].join(" "))).collect();
    let trouble = match status {
        None => Some(format!("killed after {LIMIT:?}")),
        Some(st) if !st.success() => Some(format!("exit status {st}")),
        Some(_) if !text.contains("QUERN-INIT-OK") => Some("no QUERN-INIT-OK".into()),
        Some(_) => None,
    }
    .map(|t| {
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let err_tail: Vec<&str> = err.lines().rev().take(3).collect();
        format!("{t}; last lines: {tail:?}; stderr: {err_tail:?}")
    });
    Run { wall, timings, starts, checks, trouble }
}

/// The best of an emulator's runs: per workload the least time among the runs whose
/// check passed, or None if any run's check failed.
#[derive(Default)]
pub struct Best {
    pub workloads: Vec<(String, Option<f64>)>,
    pub wall: Option<Duration>,
}

impl Best {
    pub fn add(&mut self, run: &Run) {
        for (name, t) in &run.timings {
            let ok = run.checks.iter().any(|(n, c)| n == name && c == "ok");
            let v = ok.then_some(*t);
            match self.workloads.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 = e.1.zip(v).map(|(a, b)| a.min(b)),
                None => self.workloads.push((name.clone(), v)),
            }
        }
        if run.trouble.is_none() {
            self.wall = Some(self.wall.map_or(run.wall, |w| w.min(run.wall)));
        }
    }

    pub fn get(&self, name: &str) -> Option<Option<f64>> {
        self.workloads.iter().find(|(n, _)| n == name).map(|e| e.1)
    }
}
