//! Guest programs assembled with iced-x86's code_asm that exercise the whole machine:
//! UART output, PCI enumeration, CMOS memory size, the RTC, a PIT interrupt through
//! the PIC, and an isa-debug-exit status. The same routine bodies serve 16- and 64-bit
//! code: they only use instructions whose source form is the same in both modes.
#![allow(dead_code)]

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

/// isa-debug-exit port used by the tests (as QEMU users commonly pick).
pub const EXIT_PORT: u16 = 0xf4;

/// Where a guest program runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// From the reset vector of a 64 KiB BIOS image, at F000:0000.
    Real,
    /// Loaded as an ELF64 kernel at [`LONG_BASE`], entered in long mode.
    Long,
}

pub const LONG_BASE: u64 = 0x20_0000;
/// Scratch RAM the programs use: tick counter, IDT and IDTR (64-bit).
const TICKS: u64 = 0x500;
const IDT: u64 = 0x8_0000;
const IDTR: u64 = 0x8_1100;
const STACK: u64 = 0x7000;

/// Assembles a program until the interrupt handler's address, baked into the
/// instructions that install it, agrees with where the handler ends up.
pub fn machine_test_program(mode: Mode, exit_code: u8) -> (Vec<u8>, u64) {
    let (bits, ip) = match mode {
        Mode::Real => (16, 0),
        Mode::Long => (64, LONG_BASE),
    };
    // Branch sizes may change with the handler's address: iterate to a fixed point.
    let mut handler = 0;
    for _ in 0..8 {
        let (code, entry, h) = assemble(mode, bits, ip, handler, exit_code);
        if h == handler {
            return (code, entry);
        }
        handler = h;
    }
    panic!("the test program's layout does not settle");
}

/// Returns (code, entry, handler address).
fn assemble(mode: Mode, bits: u32, ip: u64, handler: u64, exit_code: u8) -> (Vec<u8>, u64, u64) {
    let mut a = CodeAssembler::new(bits).unwrap();
    let (entry, irq) = build(&mut a, mode, handler, exit_code).unwrap_or_else(|e| panic!("assembling: {e}"));
    let res = a.assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let code = res.inner.code_buffer.clone();
    let entry = res.label_ip(&entry).unwrap();
    let handler_ip = res.label_ip(&irq).unwrap();
    (code, entry, handler_ip)
}

/// Emits the program; returns its entry and interrupt-handler labels.
fn build(a: &mut CodeAssembler, mode: Mode, handler: u64, exit_code: u8) -> Result<(CodeLabel, CodeLabel), IcedError> {
    let (putc, hex32) = emit_routines(a)?;
    let mut irq = a.create_label();
    let mut entry = a.create_label();

    // The timer interrupt handler: count, EOI.
    a.set_label(&mut irq)?;
    match mode {
        Mode::Real => {
            a.push(ax)?;
            a.inc(byte_ptr(TICKS))?;
            a.mov(al, 0x20u32)?;
            a.out(0x20u32, al)?;
            a.pop(ax)?;
            a.iret()?;
        }
        Mode::Long => {
            a.push(rax)?;
            a.inc(byte_ptr(TICKS))?;
            a.mov(al, 0x20u32)?;
            a.out(0x20u32, al)?;
            a.pop(rax)?;
            a.iretq()?;
        }
    }

    a.set_label(&mut entry)?;
    a.cli()?;
    match mode {
        Mode::Real => {
            a.xor(ax, ax)?;
            a.mov(ds, ax)?;
            a.mov(ss, ax)?;
            a.mov(sp, STACK as u32)?;
        }
        Mode::Long => {
            a.mov(rsp, STACK)?;
        }
    }
    print(a, putc, "QUERN GUEST\n")?;

    // PCI: the host bridge at 00.0 and the ISA bridge at 01.0.
    for (name, addr) in [("PCI0 ", 0x8000_0000u32), ("PCI1 ", 0x8000_0800u32)] {
        print(a, putc, name)?;
        a.mov(dx, 0xcf8u32)?;
        a.mov(eax, addr)?;
        a.out(dx, eax)?;
        a.mov(dx, 0xcfcu32)?;
        a.in_(eax, dx)?;
        a.mov(esi, eax)?;
        a.call(hex32)?;
        print(a, putc, "\n")?;
    }

    // CMOS: memory above 16 MiB in 64 KiB units (0x34/0x35), then the RTC.
    let cmos_pair = |a: &mut CodeAssembler, hi: u8, lo: u8| -> Result<(), IcedError> {
        a.mov(al, hi as u32)?;
        a.out(0x70u32, al)?;
        a.in_(al, 0x71u32)?;
        a.mov(ah, al)?;
        a.mov(al, lo as u32)?;
        a.out(0x70u32, al)?;
        a.in_(al, 0x71u32)?;
        a.movzx(esi, ax)?;
        a.call(hex32)
    };
    print(a, putc, "MEM ")?;
    cmos_pair(a, 0x35, 0x34)?;
    print(a, putc, "\nRTC ")?;
    cmos_pair(a, 0x04, 0x02)?; // hours, minutes (BCD)
    print(a, putc, " ")?;
    cmos_pair(a, 0x0b, 0x0d)?; // status B, status D
    print(a, putc, "\n")?;

    // A PIT interrupt through the PIC: remap, unmask IRQ0 only, 100 Hz, wait for 3.
    let base = if mode == Mode::Real { 0x08u32 } else { 0x20u32 };
    for (port, val) in [(0x20u32, 0x11u32), (0x21, base), (0x21, 4), (0x21, 1), (0xa0, 0x11), (0xa1, base + 8)] {
        a.mov(al, val)?;
        a.out(port, al)?;
    }
    for (port, val) in [(0xa1u32, 2u32), (0xa1, 1), (0xa1, 0xff), (0x21, 0xfe)] {
        a.mov(al, val)?;
        a.out(port, al)?;
    }
    a.mov(byte_ptr(TICKS), 0u32)?;
    match mode {
        Mode::Real => {
            a.mov(word_ptr(8 * 4), handler as u32)?;
            a.mov(word_ptr(8 * 4 + 2), 0xf000u32)?;
        }
        Mode::Long => {
            // A 64-bit interrupt gate for vector 0x20 with the loader's CS.
            let lo = (handler & 0xffff) | (0x8eu64 << 40) | (((handler >> 16) & 0xffff) << 48);
            a.mov(rax, lo)?;
            a.xor(ecx, ecx)?;
            a.mov(cx, cs)?;
            a.shl(rcx, 16u32)?;
            a.or(rax, rcx)?;
            a.mov(qword_ptr(IDT + 0x20 * 16), rax)?;
            a.mov(rax, handler >> 32)?;
            a.mov(qword_ptr(IDT + 0x20 * 16 + 8), rax)?;
            a.mov(word_ptr(IDTR), 0xfffu32)?;
            a.mov(dword_ptr(IDTR + 2), IDT as u32)?;
            a.mov(dword_ptr(IDTR + 6), 0u32)?;
            a.lidt(ptr(IDTR))?;
        }
    }
    a.mov(al, 0x34u32)?; // channel 0, lo/hi, mode 2
    a.out(0x43u32, al)?;
    a.mov(al, (11932 & 0xff) as u32)?;
    a.out(0x40u32, al)?;
    a.mov(al, (11932 >> 8) as u32)?;
    a.out(0x40u32, al)?;
    a.sti()?;
    let mut wait_tick = a.create_label();
    a.set_label(&mut wait_tick)?;
    a.hlt()?;
    a.cmp(byte_ptr(TICKS), 3u32)?;
    a.jb(wait_tick)?;
    a.cli()?;
    print(a, putc, "TICKS OK\n")?;

    a.mov(dx, EXIT_PORT as u32)?;
    a.mov(al, exit_code as u32)?;
    a.out(dx, al)?;
    let mut stop = a.create_label();
    a.set_label(&mut stop)?;
    a.hlt()?;
    a.jmp(stop)?;

    Ok((entry, irq))
}

pub fn print(a: &mut CodeAssembler, putc: CodeLabel, s: &str) -> Result<(), IcedError> {
    for b in s.bytes() {
        a.mov(bl, b as u32)?;
        a.call(putc)?;
    }
    Ok(())
}

/// Emits `putc` (BL = character; waits for the UART's THR; clobbers AL, DX) and
/// `hex32` (prints ESI as 8 hex digits; clobbers EAX, BL, CX, DX, ESI); returns their
/// labels. The source is the same in 16-, 32- and 64-bit code.
pub fn emit_routines(a: &mut CodeAssembler) -> Result<(CodeLabel, CodeLabel), IcedError> {
    let mut putc = a.create_label();
    let mut hex32 = a.create_label();

    // putc: BL = character. Waits for THR empty. Clobbers AL, DX.
    a.set_label(&mut putc)?;
    let mut wait = a.create_label();
    a.mov(dx, 0x3fdu32)?;
    a.set_label(&mut wait)?;
    a.in_(al, dx)?;
    a.test(al, 0x20u32)?;
    a.jz(wait)?;
    a.mov(dx, 0x3f8u32)?;
    a.mov(al, bl)?;
    a.out(dx, al)?;
    a.ret()?;

    // hex32: prints ESI as 8 hex digits. Clobbers EAX, BL, CX, DX, ESI.
    a.set_label(&mut hex32)?;
    let mut digit = a.create_label();
    let mut dec = a.create_label();
    a.mov(cx, 8u32)?;
    a.set_label(&mut digit)?;
    a.rol(esi, 4u32)?;
    a.mov(eax, esi)?;
    a.and(al, 0xfu32)?;
    a.add(al, b'0' as u32)?;
    a.cmp(al, b'9' as u32)?;
    a.jbe(dec)?;
    a.add(al, 7u32)?;
    a.set_label(&mut dec)?;
    a.mov(bl, al)?;
    a.call(putc)?;
    a.dec(cx)?;
    a.jnz(digit)?;
    a.ret()?;
    Ok((putc, hex32))
}
