//! The stock Debian kernel with the busybox initramfs, booted directly with -kernel.
//!
//! On hardware KVM the guest must reach its init marker and power off (status 0). On a
//! kvm_pvm host (no VT-x) supervisor code runs through KVM's instruction emulator and
//! the stock kernel cannot finish booting: there the tests say so loudly as a HOST
//! LIMIT, assert what the host can show (the kernel ran and printed through our UART),
//! and never count the boot as passed.

mod common;

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use common::{guest_file, kvm_usable, report, run_quern_until, Console, Run};

const MARKER: &str = "QUERN-INIT-OK";

fn is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

fn boot(kernel: &str, limit: Duration, stop_at: Option<&str>) -> Run {
    boot_with("kvm", "qemu64", kernel, limit, stop_at)
}

/// The tests' guests share the host's cores; those that check the kernel's TSC and
/// APIC timer calibration run alone (write), the others side by side (read). Linux
/// calibrates by timing PIT reads over a few milliseconds and gives up when one read
/// took much longer than the others, which happens when the host deschedules the vCPU
/// thread: with several guests on 2 cores it did in about a quarter of the boots.
static HOST: RwLock<()> = RwLock::new(());

fn share_host() -> RwLockReadGuard<'static, ()> {
    HOST.read().unwrap_or_else(|e| e.into_inner())
}

fn host_alone() -> RwLockWriteGuard<'static, ()> {
    HOST.write().unwrap_or_else(|e| e.into_inner())
}

fn boot_with(accel: &str, cpu: &str, kernel: &str, limit: Duration, stop_at: Option<&str>) -> Run {
    let _shared = share_host();
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
        // About 25 s on an idle host; over 120 s when other work loads its 2 cores.
        let run = boot("vmlinux", Duration::from_secs(300), Some("Booting paravirtualized kernel"));
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

/// Time for the kernel to reach the shell under the JIT (about 3-6 s on an idle
/// machine; generous for a loaded CI host), and for one shell command.
const SHELL_BOOT_LIMIT: Duration = Duration::from_secs(300);
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// The stock kernel under the JIT with the busybox shell on its console, at the prompt,
/// with console logging turned down so that kernel messages do not land in the
/// middle of command output (`dmesg` still has them all).
fn shell_on_tcg(kernel: &str, append: &str) -> Console {
    let kernel = guest_file(kernel);
    let initrd = guest_file("initramfs-shell.cpio.gz");
    let append = format!("console=ttyS0 panic=-1 {append}");
    let mut console = Console::spawn(&[
        "-accel",
        "tcg",
        "-m",
        "512",
        "-nographic",
        "-no-reboot",
        "-kernel",
        kernel.to_str().unwrap(),
        "-initrd",
        initrd.to_str().unwrap(),
        "-append",
        &append,
    ]);
    console.wait_for(MARKER, SHELL_BOOT_LIMIT).unwrap_or_else(|e| panic!("{e}"));
    console.wait_for("# ", COMMAND_LIMIT).unwrap_or_else(|e| panic!("no shell prompt: {e}"));
    shell(&mut console, "dmesg -n 1");
    console
}

fn shell(console: &mut Console, cmd: &str) -> String {
    console.command(cmd, COMMAND_LIMIT).unwrap_or_else(|e| panic!("`{cmd}` did not complete: {e}"))
}

/// Powers the guest off from its shell; the run must end with status 0 and a boot log
/// as clean as the plain boots' (which includes the `dmesg` dumps the tests printed).
fn power_off(mut console: Console) -> Run {
    console.send_line("poweroff -f");
    let run = console.finish(COMMAND_LIMIT);
    check_full_boot(&run);
    check_clean_log(&run);
    run
}

/// The words after `name:` on its /proc/interrupts row: count, chip, pin/trigger, device.
fn irq_row(interrupts: &str, name: &str) -> Vec<String> {
    let label = format!("{name}:");
    interrupts
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(label.as_str())).then(|| words.map(String::from).collect())
        })
        .unwrap_or_else(|| panic!("no {label} row in /proc/interrupts:\n{interrupts}"))
}

fn irq_count(interrupts: &str, name: &str) -> u64 {
    let row = irq_row(interrupts, name);
    row[0].parse().unwrap_or_else(|_| panic!("{name}: count {:?} is not a number:\n{interrupts}", row[0]))
}

/// Kernel log lines that say the local APIC, the timers, TSC calibration or interrupt
/// routing is missing or broken (from arch/x86/kernel/{apic,tsc,io_apic}.c and the
/// IRQ core), compared case-insensitively.
const INTERRUPT_TROUBLE: &[&str] = &[
    "APIC calibration",
    "APIC timer disabled",
    "APIC frequency too slow",
    "Could not enable APIC",
    "No local APIC",
    "APIC error on CPU",
    "timer doesn't work",
    "MP-BIOS bug",
    "timer (IRQ0) through the 8259A",
    "timer as Virtual Wire IRQ",
    "timer as ExtINT IRQ",
    "Fast TSC calibration failed",
    "Unable to calibrate",
    "calibration failed",
    "Marking TSC unstable",
    "as unstable",
    "nobody cared",
    "spurious",
];

/// Fails on any [`INTERRUPT_TROUBLE`] line of `dmesg` but those containing one of
/// `expected` (what the command line asked for, e.g. `nolapic`'s "No local APIC").
fn check_no_interrupt_trouble(dmesg: &str, expected: &[&str]) {
    let bad: Vec<&str> = dmesg
        .lines()
        .filter(|l| {
            let lower = l.to_lowercase();
            INTERRUPT_TROUBLE.iter().any(|t| lower.contains(&t.to_lowercase()))
                && !expected.iter().any(|e| l.contains(e))
        })
        .collect();
    assert!(bad.is_empty(), "the kernel reports interrupt or timer trouble: {bad:#?}\n--- dmesg ---\n{dmesg}");
}

/// Lines of `dmesg` about a calibration that went wrong: the TSC against the PIT, or
/// the APIC timer.
fn calibration_trouble(dmesg: &str) -> Vec<&str> {
    let words = ["calibration failed", "Unable to calibrate", "APIC calibration"];
    dmesg.lines().filter(|l| words.iter().any(|w| l.to_lowercase().contains(&w.to_lowercase()))).collect()
}

/// Boots into the shell (alone among this file's guests) until the kernel's
/// calibrations succeed, at most five times: a broken PIT or APIC timer fails every
/// boot, while a host that deschedules the vCPU thread at the wrong moment fails some
/// (on a 2-core host under a load of 5, two boots in a row did). Each retry is
/// reported. Returns the shell, with `dmesg` as of the prompt.
fn calibrated_shell_on_tcg(test: &str, kernel: &str, append: &str) -> (Console, String) {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        let mut console = shell_on_tcg(kernel, append);
        let dmesg = shell(&mut console, "dmesg");
        let trouble = calibration_trouble(&dmesg);
        if trouble.is_empty() {
            return (console, dmesg);
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load.split_whitespace().next().unwrap_or("?");
        assert!(attempt < ATTEMPTS, "{test}: calibration failed in {ATTEMPTS} boots in a row: {trouble:#?}\n{dmesg}");
        report(&format!(
            "RETRY: {test}: boot {attempt} of {ATTEMPTS}: the kernel's calibration failed ({trouble:?}) with a host \
             load average of {load}; booting again"
        ));
    }
    unreachable!()
}

/// The TSC was calibrated against the PIT, as QEMU's guests do it.
fn check_pit_calibration(dmesg: &str) {
    let calibrated = dmesg.lines().any(|l| {
        l.contains("tsc: Fast TSC calibration using PIT")
            || (l.contains("tsc: Detected ") && l.contains(" MHz processor"))
    });
    assert!(calibrated, "no TSC calibration line:\n{dmesg}");
}

/// The stock kernel on the APIC platform: ISA interrupts through the IOAPIC (the PIT on
/// pin 2 through ACPI's override), the local APIC timer ticking, the PCI functions
/// found through ACPI, no complaints about APIC, timers or TSC calibration, and no
/// page-table isolation (qemu64 is an AMD CPU, for which Linux does not enable it).
#[test]
fn stock_kernel_uses_the_apic_on_tcg() {
    let _alone = host_alone();
    let (mut c, dmesg) = calibrated_shell_on_tcg("stock_kernel_uses_the_apic_on_tcg", "vmlinuz", "");
    check_no_interrupt_trouble(&dmesg, &[]);
    check_pit_calibration(&dmesg);

    let interrupts = shell(&mut c, "cat /proc/interrupts");
    assert_eq!(irq_row(&interrupts, "0")[1..], ["IO-APIC", "2-edge", "timer"], "{interrupts}");
    assert_eq!(irq_row(&interrupts, "4")[1..], ["IO-APIC", "4-edge", "ttyS0"], "{interrupts}");

    let loc = shell(&mut c, "grep LOC: /proc/interrupts; sleep 1; grep LOC: /proc/interrupts");
    let counts: Vec<u64> = loc.lines().filter(|l| l.contains("LOC:")).map(|l| irq_count(l, "LOC")).collect();
    assert_eq!(counts.len(), 2, "{loc}");
    assert!(counts[0] > 0 && counts[1] > counts[0], "the local APIC timer does not tick: LOC {counts:?}");

    let devices = shell(&mut c, "ls /sys/bus/pci/devices");
    for (dev, ids) in [("0000:00:00.0", ["0x8086", "0x1237"]), ("0000:00:01.0", ["0x8086", "0x7000"])] {
        assert!(devices.contains(dev), "{dev} not in /sys/bus/pci/devices: {devices:?}");
        let read = shell(&mut c, &format!("cat /sys/bus/pci/devices/{dev}/vendor /sys/bus/pci/devices/{dev}/device"));
        assert_eq!(read.split_whitespace().collect::<Vec<_>>(), ids, "{dev} vendor/device");
    }

    // Again, for anything the commands above set off.
    let dmesg = shell(&mut c, "dmesg");
    check_no_interrupt_trouble(&dmesg, &[]);
    assert!(dmesg.contains("APIC: Switch to symmetric I/O mode setup"), "{dmesg}");
    let isolation: Vec<&str> = dmesg.lines().filter(|l| l.to_lowercase().contains("isolation")).collect();
    assert!(
        !isolation.iter().any(|l| l.contains("page tables isolation: enabled")),
        "the kernel turned page-table isolation on: {isolation:?}"
    );
    power_off(c);
}

/// The 8259 path the kernel takes with `noapic nolapic`: every line on the XT-PIC, the
/// TSC calibrated through the PIT, and the serial console still served after IRQ 4 is
/// made level-triggered through the ELCR (port 0x4d0), which needs the UART to hold
/// its interrupt as a level rather than pulse it (a pulse vanishes from the IRR of a
/// level-triggered input, and the console stops).
#[test]
fn stock_kernel_on_the_8259s_with_a_level_triggered_serial_line_on_tcg() {
    let _alone = host_alone();
    let test = "stock_kernel_on_the_8259s_with_a_level_triggered_serial_line_on_tcg";
    let (mut c, dmesg) = calibrated_shell_on_tcg(test, "vmlinux", "noapic nolapic");
    // nolapic: "No local APIC present" is what was asked for.
    check_no_interrupt_trouble(&dmesg, &["No local APIC present"]);
    check_pit_calibration(&dmesg);

    let interrupts = shell(&mut c, "cat /proc/interrupts");
    assert!(!interrupts.contains("IO-APIC"), "{interrupts}");
    assert_eq!(irq_row(&interrupts, "0")[1..], ["XT-PIC", "timer"], "{interrupts}");
    assert_eq!(irq_row(&interrupts, "4")[1..], ["XT-PIC", "ttyS0"], "{interrupts}");
    let serial_before = irq_count(&interrupts, "4");

    // 0o20 = bit 4 of ELCR1. The marker after it already needs the UART's interrupts.
    shell(&mut c, "printf '\\020' | dd of=/dev/port bs=1 seek=$((0x4d0)) 2>/dev/null");
    let elcr = shell(&mut c, "dd if=/dev/port bs=1 skip=$((0x4d0)) count=1 2>/dev/null | od -An -tx1");
    assert_eq!(elcr.trim(), "10", "ELCR1 after the write");
    let echoed = shell(&mut c, "echo LEVEL-$((6 * 7))");
    assert_eq!(echoed.trim(), "LEVEL-42");
    let interrupts = shell(&mut c, "cat /proc/interrupts");
    let serial_after = irq_count(&interrupts, "4");
    assert!(serial_after > serial_before, "IRQ 4 count {serial_before} -> {serial_after}");

    // Again: a level-triggered line the UART left high would be "nobody cared".
    let dmesg = shell(&mut c, "dmesg");
    check_no_interrupt_trouble(&dmesg, &["No local APIC present"]);
    assert!(dmesg.contains("APIC: Keep in PIC mode(8259)") || dmesg.contains("APIC disabled"), "{dmesg}");
    power_off(c);
}
