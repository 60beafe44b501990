//! The stock Debian kernel with several vCPUs under the JIT: it brings every AP up,
//! each CPU's local timer ticks, nothing stalls, and a minute of parallel busybox work
//! (compressing, checksumming, starting processes, filling and freeing memory) comes
//! out right.

mod common;

use std::time::Duration;

use common::{guest_file, report, Console, Run};

const MARKER: &str = "QUERN-INIT-OK";
/// What the disk image's /init prints.
const DISK_MARKER: &str = "QUERN-DISK-INIT-OK";
const BOOT_LIMIT: Duration = Duration::from_secs(300);
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Kernel log lines that say a CPU did not come up or stopped making progress.
const SMP_TROUBLE: &[&str] = &[
    "failed to respond",
    "not responding",
    "soft lockup",
    "hard LOCKUP",
    "rcu_sched self-detected stall",
    "rcu: INFO",
    "stall on CPU",
    "hung_task",
    "blocked for more than",
    "BUG:",
    "Oops",
    "WARNING:",
    "Call Trace",
    "segfault",
    "general protection",
    "Kernel panic",
    "TSC synchronization",
];

/// The kernel at its busybox shell with `-smp cpus`, console logging turned down.
fn shell(cpus: u32, mem: &str) -> Console {
    shell_with(cpus, mem, &["-no-reboot"])
}

fn shell_with(cpus: u32, mem: &str, extra: &[&str]) -> Console {
    let kernel = guest_file("vmlinux");
    let initrd = guest_file("initramfs-shell.cpio.gz");
    let smp = cpus.to_string();
    let mut args = vec!["-accel", "tcg", "-smp", &smp, "-m", mem, "-nographic"];
    args.extend_from_slice(extra);
    let (kernel, initrd) = (kernel.to_str().unwrap(), initrd.to_str().unwrap());
    args.extend(["-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1"]);
    let mut c = Console::spawn(&args);
    at_prompt(&mut c, cpus);
    c
}

/// Waits for the init marker and the shell's prompt, then turns console logging down.
fn at_prompt(c: &mut Console, cpus: u32) {
    c.wait_for(MARKER, BOOT_LIMIT).unwrap_or_else(|e| panic!("-smp {cpus}: {e}"));
    c.wait_for("# ", COMMAND_LIMIT).unwrap_or_else(|e| panic!("-smp {cpus}: no shell prompt: {e}"));
    run(c, "dmesg -n 1");
}

fn run(c: &mut Console, cmd: &str) -> String {
    c.command(cmd, COMMAND_LIMIT).unwrap_or_else(|e| panic!("`{cmd}` did not complete: {e}"))
}

fn check_no_smp_trouble(dmesg: &str, what: &str) {
    let bad: Vec<&str> = dmesg.lines().filter(|l| SMP_TROUBLE.iter().any(|t| l.contains(t))).collect();
    assert!(bad.is_empty(), "{what}: the kernel reports trouble: {bad:#?}\n--- dmesg ---\n{dmesg}");
}

/// Each CPU's count on the LOC (local APIC timer) row of /proc/interrupts.
fn loc_counts(interrupts: &str, cpus: u32) -> Vec<u64> {
    let row = interrupts
        .lines()
        .find(|l| l.trim_start().starts_with("LOC:"))
        .unwrap_or_else(|| panic!("no LOC row:\n{interrupts}"));
    let counts: Vec<u64> = row.split_whitespace().skip(1).take(cpus as usize).map(|w| w.parse().unwrap_or(0)).collect();
    assert_eq!(counts.len(), cpus as usize, "LOC row without a count per CPU: {row}");
    counts
}

fn power_off(mut c: Console, what: &str) -> Run {
    c.send_line("poweroff -f");
    let r = c.finish(COMMAND_LIMIT);
    assert_eq!(r.status, Some(0), "{what}: poweroff -f should end quern with status 0:\n{}", r.describe());
    check_no_smp_trouble(&r.stdout, what);
    r
}

/// -smp 2 and -smp 4 (more vCPUs than this 2-core host has cores): every CPU is listed,
/// every CPU's timer ticks, and the log is clean.
#[test]
fn stock_kernel_brings_up_every_cpu_on_tcg() {
    for cpus in [2u32, 4] {
        let what = format!("-smp {cpus}");
        let mut c = shell(cpus, "512");
        let dmesg = run(&mut c, "dmesg");
        assert!(dmesg.contains(&format!("smp: Brought up 1 node, {cpus} CPUs")), "{what}:\n{dmesg}");
        check_no_smp_trouble(&dmesg, &what);
        let listed = run(&mut c, "grep -c ^processor /proc/cpuinfo");
        assert_eq!(listed.trim(), cpus.to_string(), "{what}: /proc/cpuinfo");
        let online = run(&mut c, "cat /sys/devices/system/cpu/online");
        assert_eq!(online.trim(), format!("0-{}", cpus - 1), "{what}: online CPUs");
        // Work on every CPU, so each one's timer fires (idle CPUs tick rarely), then
        // compare the counts from before and after.
        let before = loc_counts(&run(&mut c, "cat /proc/interrupts"), cpus);
        let spin = (0..cpus)
            .map(|i| format!("taskset -c {i} sh -c 'i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done' &"))
            .collect::<String>();
        run(&mut c, &format!("{spin} wait"));
        let after = loc_counts(&run(&mut c, "cat /proc/interrupts"), cpus);
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert!(a > b, "{what}: CPU{i}'s local timer did not tick: LOC {before:?} then {after:?}");
        }
        power_off(c, &what);
    }
}

/// A minute (QUERN_SMP_STRESS_SECS) of six busybox workers on four vCPUs with 256 MiB:
/// compression round trips checked against a checksum, short-lived processes (each
/// exec maps and translates code anew, each exit frees pages for reuse, so code pages
/// are invalidated throughout) and tmpfs files filled and freed for memory pressure.
#[test]
fn four_cpus_under_a_minute_of_parallel_work() {
    let secs: u64 = std::env::var("QUERN_SMP_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let mut c = shell(4, "256");
    let script = format!(
        "dd if=/dev/zero of=/tmp/z bs=1M count=4 2>/dev/null; want=$(sha256sum </tmp/z); \
         end=$(( $(cut -d. -f1 /proc/uptime) + {secs} )); \
         worker() {{ n=0; bad=0; while [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do \
           s=$(gzip -c /tmp/z | gunzip -c | sha256sum); [ \"$s\" = \"$want\" ] || bad=$((bad+1)); \
           x=$(seq 1 300 | awk '{{s+=$1}} END {{print s}}'); [ \"$x\" = 45150 ] || bad=$((bad+1)); \
           dd if=/dev/urandom of=/tmp/m$1 bs=1M count=12 2>/dev/null; \
           [ $(wc -c </tmp/m$1) = 12582912 ] || bad=$((bad+1)); rm -f /tmp/m$1; n=$((n+1)); done; \
           echo \"W$1 $n $bad\"; }}; \
         for i in 1 2 3 4 5 6; do worker $i & done; wait"
    );
    let out = c
        .command(&script, Duration::from_secs(secs + 240))
        .unwrap_or_else(|e| panic!("the parallel workload did not finish: {e}"));
    let workers: Vec<(u64, u64)> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix('W'))
        .map(|l| {
            let w: Vec<u64> = l.split_whitespace().skip(1).map(|n| n.parse().unwrap_or(u64::MAX)).collect();
            (w[0], w[1])
        })
        .collect();
    assert_eq!(workers.len(), 6, "every worker reports:\n{out}");
    for (i, &(rounds, bad)) in workers.iter().enumerate() {
        assert!(rounds >= 1 && bad == 0, "worker {i}: {rounds} rounds, {bad} wrong results:\n{out}");
    }
    let rounds: u64 = workers.iter().map(|w| w.0).sum();
    report(&format!("smp stress: 6 workers on -smp 4 for {secs} s: {rounds} rounds, all right"));
    let dmesg = run(&mut c, "dmesg");
    check_no_smp_trouble(&dmesg, "stress");
    power_off(c, "stress");
}

/// The firmware path: SeaBIOS (which counts the CPUs itself, waking the APs and putting
/// them back to sleep) and SYSLINUX boot the disk image on `-smp 2`, and the kernel
/// then brings both CPUs up.
#[test]
fn seabios_disk_boot_brings_up_two_cpus() {
    let disk = common::scratch("smp-disk.img");
    std::fs::copy(guest_file("disk.img"), &disk).expect("copy build/guest/disk.img");
    let drive = format!("file={},format=raw,if=ide", disk.display());
    let run = common::run_quern_until(
        &["-accel", "tcg", "-smp", "2", "-m", "512", "-nographic", "-no-reboot", "-drive", &drive],
        BOOT_LIMIT,
        Some(DISK_MARKER),
    );
    let d = run.describe();
    assert!(run.stdout.contains("SeaBIOS (version"), "no SeaBIOS banner:\n{d}");
    assert!(run.stdout.contains("smp: Brought up 1 node, 2 CPUs"), "the kernel did not bring up 2 CPUs:\n{d}");
    assert!(run.stdout.contains(DISK_MARKER), "no init marker:\n{d}");
    check_no_smp_trouble(&run.stdout, "SeaBIOS -smp 2");
}

/// A reboot on `-smp 2` (no `-no-reboot`): the machine resets every vCPU, the APs wait
/// for their start-up IPI again, and the kernel brings both up a second time.
#[test]
fn reboot_brings_both_cpus_up_again() {
    let mut c = shell_with(2, "512", &[]);
    c.send_line("reboot -f");
    at_prompt(&mut c, 2);
    let dmesg = run(&mut c, "dmesg");
    assert!(dmesg.contains("smp: Brought up 1 node, 2 CPUs"), "after the reboot:\n{dmesg}");
    check_no_smp_trouble(&dmesg, "after the reboot");
    assert_eq!(run(&mut c, "grep -c ^processor /proc/cpuinfo").trim(), "2");
    power_off(c, "after the reboot");
}
