//! A Multiboot kernel built here runs under -accel tcg exactly as under QEMU: it prints
//! what it computed and exits with the status it wrote. QEMU (Debian's
//! qemu-system-x86) is compared against when installed; without it that comparison is
//! reported as NOT RUN and the result is still checked against the value computed here.

mod common;

use std::time::Duration;

use common::multiboot::{kernel, xorshift, xorshift_expected};
use common::{report, run_quern, scratch, write, Run};

fn args(kernel: &str) -> Vec<String> {
    ["-nographic", "-no-reboot", "-m", "64", "-kernel", kernel, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn run_qemu(kernel: &str) -> Option<Run> {
    let qemu = "qemu-system-x86_64";
    let found = std::process::Command::new(qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        return None;
    }
    let mut a = vec!["-accel".to_string(), "tcg".to_string(), "-display".into(), "none".into()];
    a.extend(args(kernel).into_iter().filter(|s| s != "-nographic"));
    a.extend(["-serial".into(), "stdio".into(), "-monitor".into(), "none".into()]);
    let out = std::process::Command::new("timeout").arg("60").arg(qemu).args(&a).output().ok()?;
    Some(Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[test]
fn xorshift_kernel_matches_qemu() {
    let (seed, n) = (0x1234_5678, 1_000_000);
    let k = kernel("XS", 0x15, |a| xorshift(a, seed, n));
    let path = scratch("xorshift-mb.bin");
    write(&path, &k);
    let path = path.to_str().unwrap();

    let mut a = vec!["-accel".to_string(), "tcg".to_string()];
    a.extend(args(path));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let run = run_quern(&refs, Duration::from_secs(60));
    let expected = format!("XS {:08X}\n", xorshift_expected(seed, n));
    assert!(run.stdout.contains(&expected), "expected {expected:?}:\n{}", run.describe());
    assert_eq!(run.status, Some(0x15 << 1 | 1), "{}", run.describe());

    match run_qemu(path) {
        Some(q) => {
            assert!(q.stdout.contains(&expected), "QEMU printed something else:\n{}", q.describe());
            assert_eq!(q.status, run.status, "QEMU's exit status differs:\n{}", q.describe());
        }
        None => {
            report("NOT RUN: xorshift_kernel_matches_qemu: qemu-system-x86_64 is not installed; checked quern only")
        }
    }
}

/// Self-modifying code: a loop rewrites the immediate of its own first instruction,
/// and code it has already run once. The JIT must see each store take effect as the
/// CPU (and QEMU) do.
#[test]
fn self_modifying_code_matches_qemu() {
    use iced_x86::code_asm::*;
    // 32-bit code has no RIP-relative addressing: `call; pop` finds where the code is.
    let k = kernel("SMC", 0x16, |a| {
        let mut here = a.create_label();
        let mut top = a.create_label();
        a.xor(ebx, ebx)?;
        a.mov(ecx, 10u32)?;
        a.call(here)?;
        a.set_label(&mut here)?;
        a.pop(edi)?; // 1 byte: `top` is at edi + 1
        a.set_label(&mut top)?;
        // mov eax, imm32 (B8 id): the store below rewrites its immediate.
        a.db(&[0xb8, 0x11, 0x11, 0x11, 0x11])?;
        a.add(ebx, eax)?;
        a.mov(dword_ptr(edi + 2), 1u32)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        // Code that ran once is rewritten, then run again.
        let mut here2 = a.create_label();
        let mut patch = a.create_label();
        a.mov(ecx, 3u32)?;
        a.call(here2)?;
        a.set_label(&mut here2)?;
        a.pop(edi)?;
        a.set_label(&mut patch)?;
        a.db(&[0x81, 0xc3, 0x00, 0x01, 0x00, 0x00])?; // add ebx, 0x100
        a.mov(dword_ptr(edi + 3), 0x1000u32)?;
        a.dec(ecx)?;
        a.jnz(patch)?;
        a.mov(esi, ebx)
    });
    let path = scratch("smc-mb.bin");
    write(&path, &k);
    let path = path.to_str().unwrap();
    // 0x11111111 + 9 * 1, then 0x100 + 2 * 0x1000.
    let expected = format!("SMC {:08X}\n", 0x1111_1111u32 + 9 + 0x100 + 0x2000);
    let mut a = vec!["-accel".to_string(), "tcg".to_string()];
    a.extend(args(path));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let run = run_quern(&refs, Duration::from_secs(60));
    assert!(run.stdout.contains(&expected), "expected {expected:?}:\n{}", run.describe());
    assert_eq!(run.status, Some(0x16 << 1 | 1), "{}", run.describe());
    match run_qemu(path) {
        Some(q) => assert!(q.stdout.contains(&expected), "QEMU printed something else:\n{}", q.describe()),
        None => report("NOT RUN: self_modifying_code_matches_qemu: qemu-system-x86_64 is not installed"),
    }
}
