//! Guest programs assembled here run through the whole machine and the command line:
//! real mode from the reset vector of a `-bios` image, and 64-bit mode as an ELF64
//! `-kernel`. Each prints over the UART what it read from PCI, CMOS and the RTC, takes
//! PIT interrupts through the PIC, and ends with an isa-debug-exit status.

mod common;

use std::time::Duration;

use common::guest::{machine_test_program, Mode, EXIT_PORT, LONG_BASE};
use common::{bios_image, elf64, kvm_usable, run_quern, scratch, write, Run};

const LIMIT: Duration = Duration::from_secs(60);

fn exit_args(accel: &str) -> Vec<String> {
    [
        "-accel",
        accel,
        "-nographic",
        "-no-reboot",
        "-m",
        "64",
        "-device",
        &format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x04"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn run_with(accel: &str, extra: &[String]) -> Run {
    let mut args = exit_args(accel);
    args.extend_from_slice(extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_quern(&refs, LIMIT)
}

/// Checks what every machine-test program prints and its exit status.
fn check_machine_output(run: &Run, exit_code: u8) {
    let out = &run.stdout;
    let d = run.describe();
    assert!(out.contains("QUERN GUEST\n"), "no banner over the UART:\n{d}");
    assert!(out.contains("PCI0 12378086\n"), "i440fx host bridge not enumerated:\n{d}");
    assert!(out.contains("PCI1 70008086\n"), "PIIX3 not enumerated:\n{d}");
    // -m 64: (64 - 16) MiB above 16 MiB in 64 KiB units.
    assert!(out.contains("MEM 00000300\n"), "CMOS memory size wrong:\n{d}");
    let rtc = out.lines().find_map(|l| l.strip_prefix("RTC ")).unwrap_or_else(|| panic!("no RTC line:\n{d}"));
    let (time, status) = rtc.split_once(' ').unwrap();
    // Status B: 24-hour BCD (0x02); status D: valid RAM and time (0x80).
    assert_eq!(status, "00000280", "RTC status registers:\n{d}");
    let hhmm: u32 = time[4..].parse().unwrap_or_else(|_| panic!("RTC time not BCD: {time}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let host_min = (now / 60) % (24 * 60);
    let guest_min = u64::from(hhmm / 100 * 60 + hhmm % 100);
    let diff = (host_min + 24 * 60 - guest_min) % (24 * 60);
    assert!(diff <= 2, "RTC time {time} is not the host's UTC time ({host_min} min):\n{d}");
    assert!(out.contains("TICKS OK\n"), "PIT interrupt never arrived through the PIC:\n{d}");
    assert_eq!(run.status, Some(i32::from(exit_code) << 1 | 1), "exit status:\n{d}");
}

fn real_mode_program(accel: &str, exit_code: u8) -> Run {
    real_mode_program_with(accel, exit_code, &[])
}

fn real_mode_program_with(accel: &str, exit_code: u8, extra: &[&str]) -> Run {
    let (code, entry) = machine_test_program(Mode::Real, exit_code);
    let bios = scratch(&format!("real-{accel}-{}.bin", extra.len()));
    write(&bios, &bios_image(&code, entry as u16));
    let mut args = vec!["-bios".to_string(), bios.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    run_with(accel, &args)
}

fn long_mode_program(accel: &str, exit_code: u8) -> Run {
    let (code, entry) = machine_test_program(Mode::Long, exit_code);
    let kernel = scratch(&format!("long-{accel}.elf"));
    write(&kernel, &elf64(&code, LONG_BASE, entry));
    run_with(accel, &["-kernel".into(), kernel.display().to_string()])
}

#[test]
fn real_mode_program_on_kvm() {
    if !kvm_usable("real_mode_program_on_kvm") {
        return;
    }
    check_machine_output(&real_mode_program("kvm", 0x21), 0x21);
}

/// The same program with KVM's in-kernel PIC and PIT instead of quern's models.
#[test]
fn real_mode_program_on_kvm_with_kernel_irqchip() {
    if !kvm_usable("real_mode_program_on_kvm_with_kernel_irqchip") {
        return;
    }
    check_machine_output(&real_mode_program_with("kvm", 0x23, &["-M", "pc,kernel-irqchip=on"]), 0x23);
}

#[test]
fn long_mode_program_on_kvm() {
    if !kvm_usable("long_mode_program_on_kvm") {
        return;
    }
    check_machine_output(&long_mode_program("kvm", 0x2a), 0x2a);
}

#[test]
fn real_mode_program_on_tcg() {
    check_machine_output(&real_mode_program("tcg", 0x11), 0x11);
}

#[test]
fn long_mode_program_on_tcg() {
    check_machine_output(&long_mode_program("tcg", 0x2b), 0x2b);
}

/// A real-mode program that prints a marker and then does `action` (port writes).
fn control_program(accel: &str, name: &str, action: &[(u16, u8, u8)]) -> Run {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(16).unwrap();
    let (putc, _) = common::guest::emit_routines(&mut a).unwrap();
    let mut start = a.create_label();
    a.set_label(&mut start).unwrap();
    a.xor(ax, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(sp, 0x7000u32).unwrap();
    common::guest::print(&mut a, putc, "BEFORE\n").unwrap();
    for &(port, val, width) in action {
        if width == 0 {
            continue;
        }
        a.mov(dx, port as u32).unwrap();
        a.mov(al, val as u32).unwrap();
        a.out(dx, al).unwrap();
    }
    common::guest::print(&mut a, putc, "AFTER\n").unwrap();
    let mut stop = a.create_label();
    a.set_label(&mut stop).unwrap();
    a.hlt().unwrap();
    a.jmp(stop).unwrap();
    let res = a.assemble_options(0, iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let entry = res.label_ip(&start).unwrap();
    let bios = scratch(&format!("{name}-{accel}.bin"));
    write(&bios, &bios_image(&res.inner.code_buffer, entry as u16));
    // -d int logs the machine's reset and power-off decisions at info level.
    run_with(accel, &["-bios".into(), bios.display().to_string(), "-d".into(), "int".into()])
}

/// Reset through the i8042 (0xFE to port 0x64) or PIIX's 0xCF9, and ACPI soft-off (SLP_TYP
/// 5 with SLP_EN to PM1a_CNT at 0x604): each ends quern with status 0 under -no-reboot,
/// before the program goes on.
fn check_machine_control(accel: &str) {
    type PortWrites = &'static [(u16, u8, u8)];
    let cases: [(&str, PortWrites, &str); 3] = [
        ("i8042-reset", &[(0x64, 0xfe, 1)], "guest reset with -no-reboot"),
        ("cf9-reset", &[(0xcf9, 0x06, 1)], "guest reset with -no-reboot"),
        // SLP_TYP=5 (bits 10-12) and SLP_EN (bit 13) are the high byte of PM1a_CNT: 0x34.
        ("acpi-poweroff", &[(0x605, 0x34, 1)], "guest powered off"),
    ];
    for (name, action, log) in cases {
        let run = control_program(accel, name, action);
        assert!(run.stdout.contains("BEFORE\n"), "{name}: {}", run.describe());
        assert!(!run.stdout.contains("AFTER"), "{name}: the machine went on:\n{}", run.describe());
        assert_eq!(run.status, Some(0), "{name}: {}", run.describe());
        assert!(run.stderr.contains(log), "{name}: expected the log line {log:?}:\n{}", run.describe());
    }
}

#[test]
fn reset_and_poweroff_end_the_machine_on_tcg() {
    check_machine_control("tcg");
}

#[test]
fn reset_and_poweroff_end_the_machine_on_kvm() {
    if !kvm_usable("reset_and_poweroff_end_the_machine_on_kvm") {
        return;
    }
    check_machine_control("kvm");
}
