//! The serial console: on a terminal, Ctrl-A x quits (as in QEMU) and other keys reach
//! the guest's UART.

mod common;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bios_image, quern_bin, scratch, write};

/// A real-mode guest that echoes every byte it receives on COM1 back, upper-cased by
/// flipping bit 5 (so the test can tell the guest answered).
fn echo_guest() -> Vec<u8> {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(16).unwrap();
    let mut wait = a.create_label();
    a.set_label(&mut wait).unwrap();
    a.mov(dx, 0x3fdu32).unwrap();
    a.in_(al, dx).unwrap();
    a.test(al, 1u32).unwrap();
    a.jz(wait).unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    a.in_(al, dx).unwrap();
    a.xor(al, 0x20u32).unwrap();
    a.out(dx, al).unwrap();
    a.jmp(wait).unwrap();
    bios_image(&a.assemble(0).unwrap(), 0)
}

#[test]
fn ctrl_a_x_quits_and_keys_reach_the_guest() {
    let bios = scratch("echo.bin");
    write(&bios, &echo_guest());
    let (mut master, slave) = {
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty fills two descriptors we then own.
        let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
        assert_eq!(r, 0, "openpty failed");
        // SAFETY: fresh descriptors from openpty, owned from here on.
        unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
    };
    let mut child = Command::new(quern_bin())
        .args(["-accel", "tcg", "-nographic", "-bios", bios.to_str().unwrap()])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quern");
    // Give the console thread time to put the terminal in raw mode.
    std::thread::sleep(Duration::from_millis(300));
    master.write_all(b"abc").unwrap();
    let mut seen = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    while !seen.windows(3).any(|w| w == b"ABC") && start.elapsed() < Duration::from_secs(20) {
        let n = master.read(&mut buf).unwrap_or(0);
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.windows(3).any(|w| w == b"ABC"), "the guest did not echo: {:?}", String::from_utf8_lossy(&seen));
    master.write_all(&[0x01, b'x']).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "Ctrl-A x did not quit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("terminated"), "{err}");
}
