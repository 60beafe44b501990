//! The stock Debian kernel with the busybox initramfs, booted directly with -kernel.
//!
//! On hardware KVM the guest must reach its init marker and power off (status 0). On a
//! kvm_pvm host (no VT-x) supervisor code runs through KVM's instruction emulator and
//! the stock kernel cannot finish booting: there the tests say so loudly as a HOST
//! LIMIT, assert what the host can show (the kernel ran and printed through our UART),
//! and never count the boot as passed.

mod common;

use std::time::Duration;

use common::{guest_file, kvm_usable, report, run_quern_until, Run};

const MARKER: &str = "QUERN-INIT-OK";

fn is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

fn boot(kernel: &str, limit: Duration, stop_at: Option<&str>) -> Run {
    boot_with("kvm", "qemu64", kernel, limit, stop_at)
}

fn boot_with(accel: &str, cpu: &str, kernel: &str, limit: Duration, stop_at: Option<&str>) -> Run {
    let kernel = guest_file(kernel);
    let initrd = guest_file("initramfs.cpio.gz");
    run_quern_until(
        &[
            "-accel",
            accel,
            "-cpu",
            cpu,
            "-m",
            "512",
            "-nographic",
            "-no-reboot",
            "-kernel",
            kernel.to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-append",
            "console=ttyS0 panic=-1",
        ],
        limit,
        stop_at,
    )
}

fn last_line(out: &str) -> &str {
    out.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(nothing)")
}

fn check_full_boot(run: &Run) {
    assert!(run.stdout.contains(MARKER), "init marker not reached:\n{}", run.describe());
    assert_eq!(run.status, Some(0), "poweroff -f should end quern with status 0:\n{}", run.describe());
}

#[test]
fn stock_bzimage_on_kvm() {
    if !kvm_usable("stock_bzimage_on_kvm") {
        return;
    }
    if is_pvm() {
        let run = boot("vmlinuz", Duration::from_secs(20), None);
        assert!(!run.stderr.contains("panicked"), "{}", run.describe());
        assert!(
            run.status.is_none() || run.stdout.contains(MARKER),
            "quern should still be running (or done) after 20 s:\n{}",
            run.describe()
        );
        report(&format!(
            "HOST LIMIT (kvm_pvm): stock bzImage boot NOT RUN to completion; after 20 s the kernel had printed: {:?} \
             (its decompressor runs through KVM's instruction emulator; see docs/kvm-pvm.md)",
            last_line(&run.stdout)
        ));
        return;
    }
    check_full_boot(&boot("vmlinuz", Duration::from_secs(120), None));
}

#[test]
fn stock_vmlinux_pvh_on_kvm() {
    if !kvm_usable("stock_vmlinux_pvh_on_kvm") {
        return;
    }
    if is_pvm() {
        // Stop once the kernel has shown it runs: the rest takes minutes under emulation.
        let run = boot("vmlinux", Duration::from_secs(120), Some("Booting paravirtualized kernel"));
        assert!(
            run.stdout.contains("Linux version") && run.stdout.contains("Booting paravirtualized kernel"),
            "the PVH kernel should start and print through the UART even on kvm_pvm:\n{}",
            run.describe()
        );
        report(&format!(
            "HOST LIMIT (kvm_pvm): stock vmlinux (PVH) boot NOT RUN to completion; stopped after {:?} \
             (it ends in an emulation failure later: see docs/kvm-pvm.md)",
            last_line(&run.stdout)
        ));
        return;
    }
    check_full_boot(&boot("vmlinux", Duration::from_secs(120), None));
}

/// The stock kernel under the JIT: the full proof on any host.
fn boot_tcg(kernel: &str, cpu: &str) -> Run {
    boot_with("tcg", cpu, kernel, Duration::from_secs(300), None)
}

/// The kernel must find the CPU it was shown: no MSR it was promised that faults, no
/// machine-check set-up that fails, no warning with a call trace.
fn check_clean_log(run: &Run) {
    for bad in ["unchecked MSR access", "Call Trace", "WARNING:"] {
        let line = run.stdout.lines().find(|l| l.contains(bad));
        assert!(line.is_none(), "the boot log has {line:?}:\n{}", run.describe());
    }
    let mce_error = run
        .stdout
        .lines()
        .find(|l| l.contains("mce:") && ["Unable", "rror", "fail", "Firmware Bug"].iter().any(|w| l.contains(w)));
    assert!(mce_error.is_none(), "machine-check error in the boot log: {mce_error:?}:\n{}", run.describe());
}

#[test]
fn stock_vmlinux_pvh_on_tcg() {
    let run = boot_tcg("vmlinux", "qemu64");
    check_full_boot(&run);
    check_clean_log(&run);
    assert!(run.stdout.contains("AMD E400"), "qemu64 is QEMU's AMD family 15 model 107:\n{}", run.describe());
}

#[test]
fn stock_bzimage_on_tcg() {
    let run = boot_tcg("vmlinuz", "qemu64");
    check_full_boot(&run);
    check_clean_log(&run);
}

/// `max` advertises all the JIT executes, and an Intel identity takes the kernel down
/// Intel's paths (microcode loader, platform ID): both must boot as cleanly.
#[test]
fn stock_vmlinux_pvh_on_tcg_other_cpu_models() {
    for cpu in ["max", "kvm64"] {
        let run = boot_tcg("vmlinux", cpu);
        check_full_boot(&run);
        check_clean_log(&run);
    }
}
