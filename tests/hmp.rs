//! The human monitor on the terminal, as a QEMU user types into it: `-serial mon:stdio`,
//! Ctrl-A c to the `(qemu)` prompt and back, and its commands on a running guest (the
//! counting program of tests/common/counting.rs, waiting halfway for a byte on its
//! UART): `info status|registers|pci|mtree|cpus|block|network`, `xp` and `x` reading
//! the count it keeps in memory, `stop`/`cont`, an unknown command, `sendkey`; then
//! back on the console the byte it waits for, and it finishes. `-monitor stdio` gives
//! the terminal to the monitor alone.

mod common;

use std::time::Duration;

use common::counting::{counting_program, COUNTER, EXIT_CODE, N};
use common::guest::EXIT_PORT;
use common::{scratch, write, Console};

const CTRL_A: &str = "\x01";
const WAIT: Duration = Duration::from_secs(60);

/// Types `cmd` at the monitor's prompt; what it printed up to the next prompt.
fn monitor(c: &mut Console, cmd: &str) -> String {
    c.send_line(cmd);
    // The echo of the line, then the output, then the next prompt.
    c.wait_for(&format!("{cmd}\r\n"), WAIT).unwrap_or_else(|e| panic!("{cmd}: no echo: {e}"));
    c.wait_for("(qemu) ", WAIT).unwrap_or_else(|e| panic!("{cmd}: no prompt after it: {e}"))
}

fn type_raw(c: &mut Console, bytes: &str) {
    c.send_raw(bytes.as_bytes());
}

#[test]
fn the_monitor_shares_the_terminal_with_the_serial_console() {
    let kernel = scratch("hmp-count.elf");
    write(&kernel, &counting_program());
    let disk = scratch("hmp-disk.img");
    write(&disk, &vec![0u8; 1 << 20]);
    let exit = format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x04");
    let drive = format!("file={},format=raw,if=ide", disk.display());
    let mut c = Console::spawn(&[
        "-accel",
        "tcg",
        "-display",
        "none",
        "-nodefaults",
        "-serial",
        "mon:stdio",
        "-m",
        "32",
        "-kernel",
        kernel.to_str().unwrap(),
        "-device",
        &exit,
        "-drive",
        &drive,
        "-netdev",
        "user,id=n0,restrict=on",
        "-device",
        "e1000,netdev=n0,id=nic0",
    ]);
    c.wait_for("WAITING", WAIT).unwrap();

    type_raw(&mut c, &format!("{CTRL_A}c"));
    c.wait_for("monitor - type 'help' for more information\r\n(qemu) ", WAIT).unwrap();
    assert!(monitor(&mut c, "info status").contains("VM status: running"));
    let half = N / 2;
    let xp = monitor(&mut c, &format!("xp /4xb {COUNTER:#x}"));
    let bytes: Vec<String> = half.to_le_bytes().iter().map(|b| format!("0x{b:02x}")).collect();
    assert!(xp.contains(&format!("{COUNTER:016x}: {}", bytes.join(" "))), "xp of the counter:\n{xp}");
    let x = monitor(&mut c, &format!("x /1xw {COUNTER:#x}"));
    assert!(x.contains(&format!("0x{half:08x}")), "x (through the page tables) of the counter:\n{x}");
    let regs = monitor(&mut c, "info registers");
    assert!(regs.contains("RIP=") && regs.contains("CR0="), "{regs}");
    let pci = monitor(&mut c, "info pci");
    assert!(pci.contains("PCI device 8086:1237") && pci.contains("PCI device 8086:100e"), "info pci:\n{pci}");
    assert!(monitor(&mut c, "info mtree").contains("(prio 0, ram)"));
    assert!(monitor(&mut c, "info cpus").contains("* CPU #0"));
    // The loader's identity map: the counter's page maps to itself.
    let tlb = monitor(&mut c, "info tlb");
    assert!(tlb.lines().any(|l| l.starts_with("0000000000000000: 0000000000000000")), "info tlb:\n{tlb}");
    let jit = monitor(&mut c, "info jit");
    assert!(jit.contains("Translation blocks: ") && jit.contains("Code buffer: "), "info jit:\n{jit}");
    let block = monitor(&mut c, "info block");
    assert!(block.contains("ide0-hd0") && block.contains("hmp-disk.img (raw)"), "info block:\n{block}");
    let net = monitor(&mut c, "info network");
    assert!(net.contains("nic0: index=0,type=nic,model=e1000") && net.contains("n0: index=0,type=user"), "{net}");
    monitor(&mut c, "stop");
    assert!(monitor(&mut c, "info status").contains("VM status: paused"));
    monitor(&mut c, "cont");
    assert!(monitor(&mut c, "info status").contains("VM status: running"));
    assert!(monitor(&mut c, "frobnicate").contains("unknown or unsupported command: 'frobnicate'"));
    assert!(monitor(&mut c, "xp /4xz 0").contains("invalid format"));
    // Keys reach the keyboard controller (the program ignores them).
    assert_eq!(monitor(&mut c, "sendkey ctrl-alt-delete"), "");
    assert!(monitor(&mut c, "sendkey nosuchkey").contains("nosuchkey"));

    // Back to the console: the byte goes to the guest, which finishes.
    type_raw(&mut c, &format!("{CTRL_A}c"));
    c.send_line("g");
    c.wait_for("GO", WAIT).unwrap();
    let run = c.finish(WAIT);
    assert_eq!(run.status, Some(i32::from(EXIT_CODE) << 1 | 1), "{}", run.describe());
}

#[test]
fn monitor_stdio_has_the_terminal_alone() {
    let kernel = scratch("hmp-alone.elf");
    write(&kernel, &counting_program());
    let out = scratch("hmp-alone.serial");
    let serial = format!("file:{}", out.display());
    let mut c = Console::spawn(&[
        "-accel",
        "tcg",
        "-display",
        "none",
        "-nodefaults",
        "-monitor",
        "stdio",
        "-serial",
        &serial,
        "-m",
        "32",
        "-kernel",
        kernel.to_str().unwrap(),
    ]);
    c.wait_for("(qemu) ", WAIT).unwrap();
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("WAITING") {
        assert!(start.elapsed() < WAIT, "the guest did not get halfway");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(monitor(&mut c, "info status").contains("running"));
    c.send_line("quit");
    let run = c.finish(WAIT);
    assert_eq!(run.status, Some(0), "{}", run.describe());
}
