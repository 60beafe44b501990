//! Bad input ends with a clear message and a non-zero status, never a panic.

mod common;

use std::time::Duration;

use common::{run_quern, scratch, write};

/// Runs quern expecting failure; returns stderr after checking it is a clean error.
fn fails(args: &[&str], expect: &str) {
    let run = run_quern(args, Duration::from_secs(30));
    let d = run.describe();
    assert!(matches!(run.status, Some(s) if s != 0), "expected a non-zero exit for {args:?}:\n{d}");
    assert!(!run.stderr.contains("panicked"), "panicked on {args:?}:\n{d}");
    assert!(
        run.stderr.to_lowercase().contains(&expect.to_lowercase()),
        "message for {args:?} should mention {expect:?}:\n{d}"
    );
}

#[test]
fn missing_kernel() {
    fails(&["-accel", "kvm", "-kernel", "/nonexistent/vmlinuz"], "cannot read kernel '/nonexistent/vmlinuz'");
}

#[test]
fn missing_initrd() {
    let k = scratch("k-for-missing-initrd");
    write(&k, b"whatever");
    fails(&["-accel", "kvm", "-kernel", k.to_str().unwrap(), "-initrd", "/nonexistent/initrd"], "cannot read initrd");
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let k = scratch("garbage-kernel");
    write(&k, &[0x5a; 5000]);
    fails(&["-accel", "kvm", "-kernel", k.to_str().unwrap()], "not a bzImage");
}

#[test]
fn truncated_bzimage() {
    // A setup header that claims more than the file holds.
    let mut k = vec![0u8; 0x300];
    k[0x1f1] = 30; // setup_sects
    k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    let p = scratch("truncated-bzimage");
    write(&p, &k);
    let run = run_quern(&["-accel", "kvm", "-kernel", p.to_str().unwrap()], Duration::from_secs(30));
    assert!(matches!(run.status, Some(s) if s != 0) && !run.stderr.contains("panicked"), "{}", run.describe());
    assert!(run.stderr.contains("quern: kernel"), "{}", run.describe());
}

#[test]
fn memory_out_of_range() {
    fails(&["-m", "1"], "out of range");
    fails(&["-m", "9999G"], "out of range");
    fails(&["-m", "lots"], "give a size");
}

#[test]
fn nothing_to_boot() {
    fails(&["-accel", "kvm"], "nothing to boot");
}

#[test]
fn unsupported_options_say_so() {
    fails(&["-hda", "disk.img"], "not implemented yet");
    fails(&["-M", "isapc"], "machine type 'isapc'");
    fails(&["-accel", "hvf"], "use tcg or kvm");
    fails(&["-device", "e1000"], "not supported");
    fails(&["-frobnicate"], "unexpected argument");
}

#[test]
fn bad_bios_size() {
    let b = scratch("odd-bios");
    write(&b, &[0u8; 1000]);
    fails(&["-accel", "kvm", "-bios", b.to_str().unwrap()], "multiple of 64 KiB");
}

#[test]
fn more_vcpus_than_supported() {
    let b = scratch("smp-bios");
    write(&b, &[0xf4u8; 0x10000]);
    fails(&["-accel", "tcg", "-smp", "2", "-bios", b.to_str().unwrap()], "only one vCPU is supported");
    fails(&["-smp", "lots"], "give a number of CPUs");
}
