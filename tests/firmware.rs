//! SeaBIOS boots on quern: Debian's `bios-256k.bin` (from build/roms, which
//! roms/fetch-firmware.sh fills, or /usr/share/seabios) runs through fw_cfg and PAM
//! shadowing to its banner and "No bootable device." on the serial port, line for
//! line what QEMU's tcg prints with the same firmware; broken firmware files are
//! clear errors.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{kvm_usable, report, root, run_quern, run_quern_until, scratch, write, Run};

const BANNER: &str = "SeaBIOS (version ";
const NO_BOOT: &str = "No bootable device.";
/// SeaBIOS reaches the boot failure in well under a second under tcg; the limit
/// leaves room for a loaded 2-core CI machine.
const TCG_LIMIT: Duration = Duration::from_secs(60);
/// kvm_pvm runs real mode through KVM's instruction emulator: seconds.
const KVM_LIMIT: Duration = Duration::from_secs(120);

/// The SeaBIOS image: the cached copy first (what CI fetches), else the system's.
fn seabios() -> Option<PathBuf> {
    let cached = root().join("build/roms/bios-256k.bin");
    let system = PathBuf::from("/usr/share/seabios/bios-256k.bin");
    [cached, system].into_iter().find(|p| p.is_file())
}

fn seabios_or_report(test: &str) -> Option<PathBuf> {
    let p = seabios();
    if p.is_none() {
        report(&format!(
            "NOT RUN: {test}: no bios-256k.bin in build/roms or /usr/share/seabios \
             (run roms/fetch-firmware.sh, which scripts/build-test-guest.sh runs)"
        ));
    }
    p
}

/// The serial output as lines: SeaBIOS's console escape sequences, carriage returns
/// and blank lines dropped.
fn lines(out: &str) -> Vec<String> {
    let mut clean = String::new();
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            clean.push(c);
            continue;
        }
        // ESC c, or ESC [ parameters final-byte.
        if chars.next_if_eq(&'[').is_some() {
            for p in chars.by_ref() {
                if p.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    clean.lines().map(|l| l.trim_end_matches('\r').trim_end().to_string()).filter(|l| !l.is_empty()).collect()
}

/// Runs `qemu-system-x86_64` until its output holds `stop_at` or `limit` passes;
/// `None` without QEMU.
fn run_qemu_until(args: &[&str], limit: Duration, stop_at: &str) -> Option<Run> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let o = out.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            o.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().ok()? {
            break st.code();
        }
        if String::from_utf8_lossy(&out.lock().unwrap()).contains(stop_at) || start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let stdout = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    Some(Run { status, stdout, stderr })
}

/// Boots `bios` with `accel` to the boot failure; checks the banner and the failure
/// lines and returns the serial lines and the time it took.
fn boot_to_no_bootable_device(accel: &str, bios: &str, extra: &[&str], limit: Duration) -> (Vec<String>, Duration) {
    let start = Instant::now();
    // -nodefaults: no default network card (its iPXE ROM would join the boot), as QEMU
    // is run below.
    let mut args = vec!["-accel", accel, "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot", "-m", "128"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-bios", bios]);
    let run = run_quern_until(&args, limit, Some(NO_BOOT));
    let took = start.elapsed();
    let d = run.describe();
    assert!(!run.stderr.contains("panicked"), "{d}");
    assert!(run.stdout.contains(BANNER), "no SeaBIOS banner within {limit:?} under {accel}:\n{d}");
    assert!(run.stdout.contains(NO_BOOT), "no '{NO_BOOT}' within {limit:?} under {accel}:\n{d}");
    let l = lines(&run.stdout);
    assert!(l.iter().any(|x| x.starts_with("Booting from Hard Disk")), "{d}");
    assert!(l.iter().any(|x| x.starts_with("Boot failed:")), "{d}");
    (l, took)
}

#[test]
fn seabios_boots_to_its_banner_and_the_boot_failure_under_tcg_as_under_qemu() {
    let Some(bios) = seabios_or_report("seabios_boots_to_its_banner_and_the_boot_failure_under_tcg") else { return };
    let bios = bios.to_str().unwrap();
    let (ours, took) = boot_to_no_bootable_device("tcg", bios, &[], TCG_LIMIT);
    report(&format!("firmware: SeaBIOS under quern tcg reached '{NO_BOOT}' in {took:.2?}"));

    // QEMU with the same firmware and no devices that bring option ROMs (-nodefaults;
    // vapic off drops kvmvapic.bin, which SeaBIOS would list as a boot device).
    let start = Instant::now();
    let qemu_args = [
        "-accel",
        "tcg",
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
        "-m",
        "128",
        "-global",
        "apic-common.vapic=off",
        "-bios",
        bios,
    ];
    let Some(qemu) = run_qemu_until(&qemu_args, TCG_LIMIT, NO_BOOT) else {
        report(
            "NOT RUN: the comparison with QEMU: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
        );
        return;
    };
    report(&format!("firmware: SeaBIOS under QEMU tcg reached '{NO_BOOT}' in {:.2?}", start.elapsed()));
    let theirs = lines(&qemu.stdout);
    assert!(theirs.iter().any(|l| l == NO_BOOT), "QEMU did not get there:\n{}", qemu.describe());
    assert_eq!(ours, theirs, "quern's serial output differs from QEMU's");
}

#[test]
fn seabios_boots_under_kvm() {
    if !kvm_usable("seabios_boots_under_kvm") {
        return;
    }
    let Some(bios) = seabios_or_report("seabios_boots_under_kvm") else { return };
    let (_, took) = boot_to_no_bootable_device("kvm", bios.to_str().unwrap(), &[], KVM_LIMIT);
    report(&format!("firmware: SeaBIOS under quern kvm reached '{NO_BOOT}' in {took:.2?}"));
    // The userspace interrupt controllers as well as KVM's own.
    boot_to_no_bootable_device("kvm", bios.to_str().unwrap(), &["-machine", "pc,kernel-irqchip=off"], KVM_LIMIT);
}

#[test]
fn relative_bios_names_are_found_through_l() {
    let Some(bios) = seabios_or_report("relative_bios_names_are_found_through_l") else { return };
    let dir = bios.parent().unwrap().to_str().unwrap().to_string();
    boot_to_no_bootable_device("tcg", "bios-256k.bin", &["-L", &dir], TCG_LIMIT);
}

/// Runs quern expecting a clean failure that mentions `expect`.
fn fails(args: &[&str], expect: &str) {
    let run = run_quern(args, Duration::from_secs(30));
    let d = run.describe();
    assert!(matches!(run.status, Some(s) if s != 0), "expected a non-zero exit for {args:?}:\n{d}");
    assert!(!run.stderr.contains("panicked"), "{d}");
    assert!(run.stderr.contains(expect), "message for {args:?} should mention {expect:?}:\n{d}");
}

#[test]
fn missing_truncated_and_empty_firmware_are_clear_errors() {
    fails(&["-accel", "tcg", "-nographic", "-bios", "/nonexistent/bios-256k.bin"], "cannot read");
    fails(&["-accel", "tcg", "-nographic", "-bios", "no-such-firmware.bin"], "cannot read");
    let empty = scratch("empty-bios.bin");
    write(&empty, &[]);
    fails(&["-accel", "tcg", "-nographic", "-bios", empty.to_str().unwrap()], "empty");
    // A download cut short: not a whole number of 64 KiB blocks.
    let mut image = seabios().map(|p| std::fs::read(p).unwrap()).unwrap_or_else(|| vec![0xf4; 256 << 10]);
    image.truncate(100_000);
    let cut = scratch("truncated-bios.bin");
    write(&cut, &image);
    fails(&["-accel", "tcg", "-nographic", "-bios", cut.to_str().unwrap()], "multiple of 64 KiB");
}
