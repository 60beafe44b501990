//! Multiboot v1 test kernels (a.out-kludge images: a header and flat 32-bit code),
//! as QEMU's and quern's `-kernel` both load them: 32-bit flat protected mode, paging
//! off. Each prints what it computed over the UART and writes an isa-debug-exit status.
#![allow(dead_code)]

use iced_x86::code_asm::*;

use super::guest::{emit_routines, print, EXIT_PORT};

/// Where the image is loaded by default.
pub const LOAD_ADDR: u32 = 0x10_0000;
pub const HEADER_LEN: u32 = 32;

/// Wraps 32-bit code (assembled for LOAD_ADDR + HEADER_LEN, entered at its start) in a
/// Multiboot header with the a.out-kludge address fields.
pub fn image(code: &[u8]) -> Vec<u8> {
    image_at(LOAD_ADDR, LOAD_ADDR + HEADER_LEN, code)
}

/// [`image`] loaded at `load` and entered at `entry` (normally `load + HEADER_LEN`,
/// where `code` starts).
pub fn image_at(load: u32, entry: u32, code: &[u8]) -> Vec<u8> {
    const MAGIC: u32 = 0x1bad_b002;
    const FLAGS: u32 = 1 << 16 | 1 << 1; // address fields valid; memory info wanted
    let checksum = 0u32.wrapping_sub(MAGIC.wrapping_add(FLAGS));
    let mut img = Vec::new();
    for v in [MAGIC, FLAGS, checksum, load, load, 0, 0, entry] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.extend_from_slice(code);
    img
}

/// Assembles a kernel body: `body` computes something and leaves the value to print
/// in ESI; the kernel prints `"{label} {ESI:08X}\n"` and exits with `exit_code`.
pub fn kernel(label: &str, exit_code: u8, body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    kernel_at(LOAD_ADDR, label, exit_code, body)
}

/// [`kernel`] loaded at `load` (its stack is below 0x90000: keep the image clear of it).
pub fn kernel_at(
    load: u32,
    label: &str,
    exit_code: u8,
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<u8> {
    let mut a = CodeAssembler::new(32).unwrap();
    let build = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        let mut start = a.create_label();
        a.jmp(start)?;
        let (putc, hex32) = emit_routines(a)?;
        a.set_label(&mut start)?;
        a.mov(esp, 0x9_0000u32)?;
        body(a)?;
        a.push(esi)?;
        print(a, putc, label)?;
        print(a, putc, " ")?;
        a.pop(esi)?;
        a.call(hex32)?;
        print(a, putc, "\n")?;
        exit_and_halt(a, exit_code)
    };
    build(&mut a).unwrap_or_else(|e| panic!("assembling a multiboot kernel: {e}"));
    assemble_image(load, &mut a)
}

/// Writes `exit_code` to isa-debug-exit, then halts for good (if the device is absent).
pub fn exit_and_halt(a: &mut CodeAssembler, exit_code: u8) -> Result<(), IcedError> {
    a.mov(dx, EXIT_PORT as u32)?;
    a.mov(al, exit_code as u32)?;
    a.out(dx, al)?;
    let mut stop = a.create_label();
    a.set_label(&mut stop)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(stop)
}

/// The image of 32-bit code in `a`, loaded at `load` and entered at its start.
pub fn assemble_image(load: u32, a: &mut CodeAssembler) -> Vec<u8> {
    let entry = load + HEADER_LEN;
    image_at(load, entry, &a.assemble(u64::from(entry)).unwrap())
}

/// The xorshift32 loop of the benchmarks: a 12-instruction body run `n` times; ESI gets
/// the final state plus the running sum.
pub fn xorshift(a: &mut CodeAssembler, seed: u32, n: u32) -> Result<(), IcedError> {
    a.mov(eax, seed)?;
    a.xor(ebx, ebx)?;
    a.mov(ecx, n)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    xorshift_step(a)?;
    a.add(ebx, eax)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.mov(esi, eax)?;
    a.add(esi, ebx)
}

/// One xorshift32 step on EAX (9 instructions; clobbers EDX).
pub fn xorshift_step(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for (left, n) in [(true, 13u32), (false, 17), (true, 5)] {
        a.mov(edx, eax)?;
        if left {
            a.shl(edx, n)?;
        } else {
            a.shr(edx, n)?;
        }
        a.xor(eax, edx)?;
    }
    Ok(())
}

/// What [`xorshift`] leaves in ESI.
pub fn xorshift_expected(seed: u32, n: u32) -> u32 {
    let (mut x, mut sum) = (seed, 0u32);
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        sum = sum.wrapping_add(x);
    }
    x.wrapping_add(sum)
}
