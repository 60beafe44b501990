//! Save and restore through QMP's `migrate` and `-incoming`, with a guest program that
//! counts in memory: a 64-bit `-kernel` (which both accelerators run here) counts to
//! N/2, printing every STEP, says WAITING and waits for a byte on its UART, then counts
//! on to N and prints the sum of all counts.
//!
//! - Saved while it waits under one accelerator and restored under the other (and
//!   under the same): the restored machine does not start over, takes the byte typed
//!   on its console, the progress lines of both runs together are every one exactly
//!   once, and the sum is N(N+1)/2 mod 2^32.
//! - A corrupt, cut-short or foreign stream is refused with a clear error, the waiting
//!   machine stays as it was, and a good stream loads afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::counting::{counting_program, EXIT_CODE, N, STEP};
use common::guest::EXIT_PORT;
use common::qmp::{socket_path, wait_socket, Raw};
use common::{kvm_usable, report, scratch, write, Console, Run};

fn expected_sum() -> String {
    let n = u64::from(N);
    format!("SUM {:08X}", (n * (n + 1) / 2) as u32)
}

/// The command line both sides share (they must describe the same machine). `accel`
/// is tcg, kvm (with quern's interrupt controller models: `kernel-irqchip=off`) or
/// kvm-irqchip (KVM's in-kernel ones, its default).
fn machine_args(accel: &str, kernel: &Path) -> Vec<String> {
    let name = if accel == "tcg" { "tcg" } else { "kvm" };
    let mut a: Vec<String> = ["-accel", name, "-nographic", "-nodefaults", "-serial", "stdio", "-m", "32"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if accel == "kvm" {
        a.extend(["-machine".into(), "pc,kernel-irqchip=off".into()]);
    }
    a.extend(["-kernel".into(), kernel.display().to_string()]);
    a.extend(["-device".into(), format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x04")]);
    a
}

/// Runs the program under `from` until it waits halfway, saves it with `migrate` to
/// a file; returns the file and what the source printed.
fn save_mid_count(from: &str, tag: &str) -> (PathBuf, String) {
    let kernel = scratch(&format!("count-{tag}.elf"));
    write(&kernel, &counting_program());
    let sock = socket_path(&format!("mig-{tag}.sock"));
    let mut args = machine_args(from, &kernel);
    args.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", sock.display())]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut src = Console::spawn(&refs);
    wait_socket(&sock, &src);
    let mut q = Raw::ready(&sock);
    src.wait_for("WAITING", Duration::from_secs(120)).unwrap_or_else(|e| panic!("{from}: {e}"));
    q.execute("stop", json!({}));
    q.execute("migrate-set-capabilities", json!({ "capabilities": [{ "capability": "events", "state": true }] }));
    let file = scratch(&format!("mig-{tag}.state"));
    let _ = std::fs::remove_file(&file);
    // QEMU's order: MIGRATION setup before the command's reply.
    q.s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    use std::io::Write;
    write!(q.s, "{}", json!({ "execute": "migrate", "arguments": { "uri": format!("file:{}", file.display()) } }))
        .unwrap();
    let first = q.read();
    assert_eq!(first["event"], "MIGRATION", "{first}");
    assert_eq!(first["data"]["status"], "setup", "{first}");
    let completed = loop {
        let v = q.read();
        if v["event"] == "MIGRATION" && v["data"]["status"] != "active" {
            break v;
        }
    };
    assert_eq!(completed["data"]["status"], "completed", "{completed}\n{}", src.describe());
    let status = q.execute("query-migrate", json!({}));
    assert_eq!(status["status"], "completed", "{status}");
    assert!(status["ram"]["transferred"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(q.execute("query-status", json!({}))["status"], "postmigrate");
    q.execute("quit", json!({}));
    let run = src.finish(Duration::from_secs(20));
    assert!(!run.stdout.contains("GO"), "{from}: the program went on before it was saved:\n{}", run.describe());
    (file, run.stdout)
}

/// Restores `file` under `to`, types the byte the program waits for once it runs,
/// and lets it finish.
fn restore(to: &str, file: &Path, tag: &str) -> Run {
    let sock = socket_path(&format!("mig-in-{tag}.sock"));
    let mut args = machine_args(to, &scratch(&format!("count-{tag}.elf")));
    args.extend(["-incoming".into(), format!("file:{}", file.display())]);
    args.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", sock.display())]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut dest = Console::spawn(&refs);
    wait_socket(&sock, &dest);
    go_once_running(&mut dest, &mut Raw::ready(&sock));
    dest.finish(Duration::from_secs(180))
}

/// Waits for the restored machine to run (a byte typed earlier would land in the UART
/// the load then replaces), then types the one the program waits for.
fn go_once_running(dest: &mut Console, q: &mut Raw) {
    let start = Instant::now();
    while q.execute("query-status", json!({}))["status"] != "running" {
        assert!(start.elapsed() < Duration::from_secs(60), "not running after the load\n{}", dest.describe());
        std::thread::sleep(Duration::from_millis(50));
    }
    dest.send_line("g");
}

fn check_continued(from: &str, to: &str, before: &str, after: &Run) {
    let who = format!("saved under {from}, restored under {to}");
    assert_eq!(after.status, Some(i32::from(EXIT_CODE) << 1 | 1), "{who}: exit status\n{}", after.describe());
    assert!(!after.stdout.contains("COUNT START"), "{who}: the restored program started over\n{}", after.describe());
    let both = format!("{before}{}", after.stdout).replace('\r', "");
    assert!(
        after.stdout.starts_with("GO"),
        "{who}: the restored program did not take the byte first\n{}",
        after.describe()
    );
    let progress: Vec<&str> = both.lines().filter(|l| l.starts_with("P ")).collect();
    let want: Vec<String> = (1..=N / STEP).map(|i| format!("P {:08X}", i * STEP)).collect();
    assert_eq!(progress, want, "{who}: progress lines of both runs\nbefore:\n{before}\nafter:\n{}", after.describe());
    assert!(both.lines().any(|l| l == expected_sum()), "{who}: want {}\n{}", expected_sum(), after.describe());
    report(&format!("{who}: continued from the saved count to {}", expected_sum()));
}

fn round_trip(from: &str, to: &str) {
    let tag = format!("{from}-{to}");
    let (file, before) = save_mid_count(from, &tag);
    let after = restore(to, &file, &tag);
    check_continued(from, to, &before, &after);
}

#[test]
fn saved_under_the_jit_continues_under_the_jit() {
    round_trip("tcg", "tcg");
}

#[test]
fn saved_under_the_jit_continues_under_kvm() {
    if kvm_usable("saved_under_the_jit_continues_under_kvm") {
        round_trip("tcg", "kvm");
    }
}

#[test]
fn saved_under_kvm_continues_under_the_jit() {
    if kvm_usable("saved_under_kvm_continues_under_the_jit") {
        round_trip("kvm", "tcg");
    }
}

/// KVM's default, its in-kernel interrupt controllers: their state (and kvmclock, and
/// the local APIC) goes as KVM's own structures and loads back under KVM; under the
/// JIT it is refused with what to do instead.
#[test]
fn saved_under_kvm_with_its_irqchip_continues_under_kvm() {
    if !kvm_usable("saved_under_kvm_with_its_irqchip_continues_under_kvm") {
        return;
    }
    let tag = "kvm-irqchip";
    let (file, before) = save_mid_count("kvm-irqchip", tag);
    let mut args = machine_args("tcg", &scratch(&format!("count-{tag}.elf")));
    args.extend(["-incoming".into(), format!("file:{}", file.display())]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = common::run_quern(&refs, Duration::from_secs(30));
    assert_eq!(refused.status, Some(1), "{}", refused.describe());
    assert!(refused.stderr.contains("in-kernel interrupt controllers"), "{}", refused.describe());
    let after = restore("kvm-irqchip", &file, tag);
    check_continued("kvm (in-kernel irqchip)", "kvm (in-kernel irqchip)", &before, &after);
}

/// `-incoming defer` and `migrate-incoming` with bad streams, then a good one.
#[test]
fn bad_streams_are_refused_and_the_machine_waits_on() {
    let (file, before) = save_mid_count("tcg", "bad");
    let good = std::fs::read(&file).unwrap();
    let kernel = scratch("count-bad.elf");
    let sock = socket_path("mig-dest.sock");
    let mut args = machine_args("tcg", &kernel);
    args.extend(["-incoming".into(), "defer".into()]);
    args.extend(["-qmp".into(), format!("unix:{},server=on,wait=off", sock.display())]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut dest = Console::spawn(&refs);
    wait_socket(&sock, &dest);
    let mut q = Raw::ready(&sock);
    assert_eq!(q.execute("query-status", json!({}))["status"], "inmigrate");
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("cut short", good[..good.len() / 3].to_vec(), "ends early"),
        ("one bit flipped", flipped, "corrupt"),
        ("not a state", b"QEVM\x00\x00\x00\x03 something else entirely".to_vec(), "not a quern state stream"),
    ];
    for (what, bytes, says) in cases {
        let f = scratch("mig-corrupt.state");
        write(&f, &bytes);
        q.execute("migrate-incoming", json!({ "uri": format!("file:{}", f.display()) }));
        let r = wait_migration(&mut q);
        assert_eq!(r["status"], "failed", "{what}: {r}");
        let desc = r["error-desc"].as_str().unwrap_or_default();
        assert!(desc.contains(says), "{what}: error {desc:?} should say {says:?}");
        assert_eq!(q.execute("query-status", json!({}))["status"], "inmigrate", "{what}");
        report(&format!("migrate-incoming of a stream {what}: refused ({desc})"));
    }
    // A machine of another shape: saved with -m 32, this one has -m 64.
    let mut args64 = machine_args("tcg", &kernel);
    args64[7] = "64".into();
    args64.extend(["-incoming".into(), format!("file:{}", file.display())]);
    let refs: Vec<&str> = args64.iter().map(String::as_str).collect();
    let run = common::run_quern(&refs, Duration::from_secs(30));
    assert!(run.stderr.contains("does not fit this machine"), "-m 64 took a -m 32 state:\n{}", run.describe());
    assert_eq!(run.status, Some(1), "a state that cannot load ends -incoming FILE:\n{}", run.describe());

    // Descriptors as libvirt passes them: getfd needs one sent with it.
    let none = q.send("{\"execute\":\"getfd\",\"arguments\":{\"fdname\":\"in\"}}\n");
    assert!(none["error"]["desc"].as_str().unwrap_or_default().contains("SCM_RIGHTS"), "{none}");
    let unknown = q.send("{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"fd:nosuch\"}}\n");
    assert!(unknown["error"]["desc"].as_str().unwrap_or_default().contains("getfd"), "{unknown}");

    // The good stream, through a descriptor passed with getfd, still loads and the
    // program finishes.
    let f = std::fs::File::open(&file).unwrap();
    let r = q.send_with_fd("{\"execute\":\"getfd\",\"arguments\":{\"fdname\":\"in\"}}\n", &f);
    assert_eq!(r["return"], json!({}), "{r}");
    drop(f);
    q.execute("migrate-incoming", json!({ "uri": "fd:in" }));
    assert_eq!(wait_migration(&mut q)["status"], "completed");
    // Without -S the machine runs once the state is in.
    go_once_running(&mut dest, &mut q);
    let after = dest.finish(Duration::from_secs(180));
    check_continued("tcg", "tcg (after three bad streams)", &before, &after);
}

fn wait_migration(q: &mut Raw) -> Value {
    let start = Instant::now();
    loop {
        let r = q.execute("query-migrate", json!({}));
        if r["status"] == "completed" || r["status"] == "failed" {
            return r;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "migration did not end: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
