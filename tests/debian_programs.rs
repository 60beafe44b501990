//! Real Debian programs give correct results under quern's JIT: the stock kernel with
//! build/guest/initramfs-programs.cpio.gz (scripts/build-programs-guest.sh) and
//! `quern.quick=1`, which selects small inputs. The guest's /init runs a workload of
//! each program and compares its result with what the host computed at build time,
//! printing `QUERN-CHECK <name> ok` or `QUERN-CHECK <name> FAIL <why>`; then the init
//! marker and `poweroff -f`. (benches/programs.rs runs the full sizes under quern and
//! QEMU and times them.)

mod common;

use std::time::{Duration, Instant};

use common::{guest_file, run_quern, Run};

/// Every workload of the guest's /init, in its order: each must print its ok line.
const PROGRAMS: &[&str] = &[
    "data",           // busybox awk (the seeded text generator) and tr
    "sha256sum",      // busybox
    "md5sum",         // busybox
    "gzip",           // gzip -6 and -d
    "bzip2",          // bzip2 -9 and -d
    "xz",             // xz -6 and -d (xz-utils)
    "zstd",           // zstd -19 and -d
    "openssl-sha256", // openssl dgst -sha256
    "openssl-aes",    // openssl enc -aes-128-cbc and -d, and the FIPS-197 known answer
    "sqlite3",        // inserts in a transaction, an index, aggregate queries
    "perl",           // perl-base: regexes, a hash
    "python3",        // python3.11-minimal: dicts, strings, json, hashlib, zlib
    "awk",            // busybox seq | awk: floating-point arithmetic and formatting
];

/// The quick run takes about 20 s under quern on the project's 2-core machines; the
/// limit leaves room for a loaded CI host.
const LIMIT: Duration = Duration::from_secs(300);

fn boot_quick() -> Run {
    let kernel = guest_file("vmlinuz");
    let initrd = guest_file("initramfs-programs.cpio.gz");
    run_quern(
        &[
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-nographic",
            "-no-reboot",
            "-kernel",
            kernel.to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-append",
            "console=ttyS0 panic=-1 quern.quick=1",
        ],
        LIMIT,
    )
}

#[test]
fn debian_programs_give_correct_results_on_tcg() {
    let start = Instant::now();
    let run = boot_quick();
    let took = start.elapsed();
    assert!(
        run.stdout.contains("QUERN-PROGRAMS mode=quick"),
        "the guest did not start its workloads in quick mode (after {took:?}):\n{}",
        run.describe()
    );
    let mut problems = Vec::new();
    for name in PROGRAMS {
        if run.stdout.contains(&format!("QUERN-CHECK {name} ok")) {
            continue;
        }
        let tag = format!("QUERN-CHECK {name} ");
        let line = run.stdout.lines().find(|l| l.contains(&tag)).unwrap_or("(no QUERN-CHECK line)");
        problems.push(format!("{name}: {line}"));
    }
    assert!(
        problems.is_empty(),
        "{} of {} Debian programs failed under quern's JIT:\n  {}\n\nwhole run ({took:?}):\n{}",
        problems.len(),
        PROGRAMS.len(),
        problems.join("\n  "),
        run.describe()
    );
    assert!(run.stdout.contains("QUERN-INIT-OK"), "no init marker:\n{}", run.describe());
    assert_eq!(run.status, Some(0), "poweroff -f should end quern with status 0:\n{}", run.describe());
}
