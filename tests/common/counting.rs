//! A guest program that counts in memory, for the save/restore and monitor tests: a
//! 64-bit `-kernel` (which both accelerators run here) counts to N/2 at [`COUNTER`],
//! adding each count to [`SUM`] and printing a progress line every STEP, says WAITING
//! and waits for a byte on its UART, then counts on to N, prints `SUM <hex>` and exits
//! through isa-debug-exit with [`EXIT_CODE`].

use iced_x86::code_asm::*;

use super::elf64;
use super::guest::{emit_routines, print, LONG_BASE};
use super::multiboot::exit_and_halt;

/// How far the program counts, and a progress line every STEP.
pub const N: u32 = 0x0040_0000;
pub const STEP: u32 = 0x0008_0000;
pub const COUNTER: u32 = 0x600;
pub const SUM: u32 = 0x604;
pub const EXIT_CODE: u8 = 0x31;

pub fn counting_program() -> Vec<u8> {
    let build = |a: &mut CodeAssembler| -> Result<CodeLabel, IcedError> {
        let (putc, hex32) = emit_routines(a)?;
        // Counts on to `to`, a progress line each STEP.
        let count_to = |a: &mut CodeAssembler, to: u32| -> Result<(), IcedError> {
            let (mut next, mut quiet) = (a.create_label(), a.create_label());
            a.set_label(&mut next)?;
            a.mov(eax, dword_ptr(COUNTER as u64))?;
            a.inc(eax)?;
            a.mov(dword_ptr(COUNTER as u64), eax)?;
            a.add(dword_ptr(SUM as u64), eax)?;
            a.test(eax, STEP - 1)?;
            a.jnz(quiet)?;
            print(a, putc, "P ")?;
            a.mov(esi, dword_ptr(COUNTER as u64))?;
            a.call(hex32)?;
            print(a, putc, "\n")?;
            a.set_label(&mut quiet)?;
            a.cmp(dword_ptr(COUNTER as u64), to)?;
            a.jb(next)
        };
        let mut entry = a.create_label();
        a.set_label(&mut entry)?;
        a.cli()?;
        a.mov(rsp, 0x7000u64)?;
        print(a, putc, "COUNT START\n")?;
        a.mov(dword_ptr(COUNTER as u64), 0u32)?;
        a.mov(dword_ptr(SUM as u64), 0u32)?;
        count_to(a, N / 2)?;
        print(a, putc, "WAITING\n")?;
        // Until the UART has received a byte (LSR bit 0), which is then read.
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.mov(dx, 0x3fdu32)?;
        a.in_(al, dx)?;
        a.test(al, 1u32)?;
        a.jz(wait)?;
        a.mov(dx, 0x3f8u32)?;
        a.in_(al, dx)?;
        print(a, putc, "GO\n")?;
        count_to(a, N)?;
        print(a, putc, "SUM ")?;
        a.mov(esi, dword_ptr(SUM as u64))?;
        a.call(hex32)?;
        print(a, putc, "\n")?;
        exit_and_halt(a, EXIT_CODE)?;
        Ok(entry)
    };
    let mut a = CodeAssembler::new(64).unwrap();
    let entry = build(&mut a).unwrap_or_else(|e| panic!("assembling: {e}"));
    let res = a.assemble_options(LONG_BASE, iced_x86::BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let entry = res.label_ip(&entry).unwrap();
    elf64(&res.inner.code_buffer, LONG_BASE, entry)
}
