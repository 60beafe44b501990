//! The PIIX3 IDE controller as a guest driver sees it: a Multiboot kernel built here
//! identifies the primary master, reads sectors 0-3 of a raw image by PIO (READ
//! SECTORS, polling status), then programs BAR4 itself and reads sectors 4-7 by
//! bus-master DMA (READ DMA through a PRD table), and prints a checksum of what it got.
//! Under quern it boots without firmware (BAR4 unassigned until the kernel sets it);
//! QEMU runs SeaBIOS first. Both must print the checksum computed here.

mod common;

use std::time::Duration;

use iced_x86::code_asm::*;

use common::multiboot::kernel;
use common::{report, run_qemu_tcg, run_quern, scratch, write, Run};

/// Where the kernel moves the bus-master registers (free under both: QEMU's
/// firmware puts its NIC and BAR4 at 0xc000 up).
const BM_BASE: u32 = 0xd000;
const PRD_TABLE: u32 = 0x18_0000;
const DMA_BUFFER: u32 = 0x20_0000;
const EXIT_CODE: u8 = 0x21;

fn image() -> Vec<u8> {
    (0..8 * 512usize).map(|i| (i.wrapping_mul(7) ^ ((i >> 9) * 0x35)) as u8).collect()
}

/// What the kernel leaves in ESI: rol 5 and xor over IDENTIFY words 10-46 (serial,
/// words 20-22, firmware revision, model), the words of sectors 0-3, the dwords of
/// sectors 4-7.
fn expected(img: &[u8]) -> u32 {
    let mut identify = [0u16; 256];
    let put = |w: &mut [u16], s: &str| {
        let b: Vec<u8> = s.bytes().chain(std::iter::repeat(b' ')).take(2 * w.len()).collect();
        for (i, v) in w.iter_mut().enumerate() {
            *v = u16::from(b[2 * i]) << 8 | u16::from(b[2 * i + 1]);
        }
    };
    put(&mut identify[10..20], "QM00001");
    // Buffer type, cache size, ECC bytes: QEMU's retired words.
    identify[20..23].copy_from_slice(&[3, 512, 4]);
    put(&mut identify[23..27], "2.5+");
    put(&mut identify[27..47], "QEMU HARDDISK");
    let mut acc = 0u32;
    let mut mix = |v: u32| acc = acc.rotate_left(5) ^ v;
    identify[10..47].iter().for_each(|&w| mix(u32::from(w)));
    img[..2048].chunks(2).for_each(|w| mix(u32::from(u16::from_le_bytes([w[0], w[1]]))));
    img[2048..4096].chunks(4).for_each(|d| mix(u32::from_le_bytes([d[0], d[1], d[2], d[3]])));
    acc
}

fn outb(a: &mut CodeAssembler, port: u32, v: u32) -> Result<(), IcedError> {
    a.mov(dx, port)?;
    a.mov(al, v)?;
    a.out(dx, al)
}

fn outd(a: &mut CodeAssembler, port: u32, v: u32) -> Result<(), IcedError> {
    a.mov(dx, port)?;
    a.mov(eax, v)?;
    a.out(dx, eax)
}

/// Waits for BSY to clear, then requires DRQ (else ESI = 0xbad000 | `stage`).
fn wait_drq(a: &mut CodeAssembler, fail: CodeLabel, stage: u32) -> Result<(), IcedError> {
    let mut wait = a.create_label();
    a.nop()?; // a label of its own (callers may have one just before)
    a.set_label(&mut wait)?;
    a.mov(dx, 0x1f7u32)?;
    a.in_(al, dx)?;
    a.test(al, 0x80u32)?;
    a.jnz(wait)?;
    a.mov(edi, 0xbad000 | stage)?;
    a.test(al, 0x08u32)?;
    a.jz(fail)
}

/// Reads 256 data words, mixing words `from..to` of them into ESI.
fn read_block(a: &mut CodeAssembler, from: u32, to: u32) -> Result<(), IcedError> {
    let (mut next, mut skip) = (a.create_label(), a.create_label());
    a.xor(ebx, ebx)?;
    a.set_label(&mut next)?;
    a.mov(dx, 0x1f0u32)?;
    a.in_(ax, dx)?;
    a.movzx(eax, ax)?;
    a.cmp(ebx, from)?;
    a.jb(skip)?;
    a.cmp(ebx, to)?;
    a.jae(skip)?;
    a.rol(esi, 5)?;
    a.xor(esi, eax)?;
    a.set_label(&mut skip)?;
    a.inc(ebx)?;
    a.cmp(ebx, 256u32)?;
    a.jb(next)
}

fn body(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let (mut fail, mut done) = (a.create_label(), a.create_label());
    a.xor(esi, esi)?;
    // IDENTIFY DEVICE on the primary master.
    outb(a, 0x1f6, 0xa0)?;
    outb(a, 0x1f7, 0xec)?;
    wait_drq(a, fail, 1)?;
    read_block(a, 10, 47)?;
    // READ SECTORS: 4 from LBA 0, one DRQ block each.
    outb(a, 0x1f6, 0xe0)?;
    outb(a, 0x1f2, 4)?;
    for port in 0x1f3..=0x1f5 {
        outb(a, port, 0)?;
    }
    outb(a, 0x1f7, 0x20)?;
    a.mov(ecx, 4u32)?;
    let mut block = a.create_label();
    a.set_label(&mut block)?;
    wait_drq(a, fail, 2)?;
    read_block(a, 0, 256)?;
    a.dec(ecx)?;
    a.jnz(block)?;
    // Function 00:01.1: BAR4 here, I/O decoding and bus mastering on.
    outd(a, 0xcf8, 0x8000_0920)?;
    outd(a, 0xcfc, BM_BASE)?;
    outd(a, 0xcf8, 0x8000_0904)?;
    a.mov(dx, 0xcfcu32)?;
    a.mov(ax, 0x0005u32)?;
    a.out(dx, ax)?;
    // One PRD: 2048 bytes at DMA_BUFFER, end of table.
    a.mov(dword_ptr(PRD_TABLE), DMA_BUFFER)?;
    a.mov(dword_ptr(PRD_TABLE + 4), 0x8000_0800u32)?;
    outd(a, BM_BASE + 4, PRD_TABLE)?;
    outb(a, BM_BASE + 2, 0x06)?;
    outb(a, BM_BASE, 0x08)?;
    // READ DMA: 4 from LBA 4; start the engine, wait for its interrupt bit.
    outb(a, 0x1f2, 4)?;
    outb(a, 0x1f3, 4)?;
    outb(a, 0x1f7, 0xc8)?;
    outb(a, BM_BASE, 0x09)?;
    let mut poll = a.create_label();
    a.set_label(&mut poll)?;
    a.mov(dx, BM_BASE + 2)?;
    a.in_(al, dx)?;
    a.mov(edi, 0xbad003u32)?;
    a.test(al, 0x02u32)?;
    a.jnz(fail)?;
    a.test(al, 0x04u32)?;
    a.jz(poll)?;
    outb(a, BM_BASE, 0x08)?;
    a.mov(dx, 0x1f7u32)?;
    a.in_(al, dx)?;
    a.mov(edi, 0xbad004u32)?;
    a.test(al, 0x89u32)?;
    a.jnz(fail)?;
    a.mov(ebx, DMA_BUFFER)?;
    let mut sum = a.create_label();
    a.set_label(&mut sum)?;
    a.rol(esi, 5)?;
    a.xor(esi, dword_ptr(ebx))?;
    a.add(ebx, 4u32)?;
    a.cmp(ebx, DMA_BUFFER + 2048)?;
    a.jb(sum)?;
    a.jmp(done)?;
    a.set_label(&mut fail)?;
    a.mov(esi, edi)?;
    a.set_label(&mut done)?;
    a.nop()
}

fn args(kernel: &str, disk: &str) -> Vec<String> {
    let drive = format!("file={disk},format=raw,if=ide");
    ["-no-reboot", "-m", "64", "-kernel", kernel, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-drive", &drive]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn pio_and_dma_reads_match_the_image_and_qemu() {
    let img = image();
    let disk = scratch("ide-guest.img");
    write(&disk, &img);
    let k = scratch("ide-guest-mb.bin");
    write(&k, &kernel("IDE", EXIT_CODE, body));
    let (k, disk) = (k.to_str().unwrap(), disk.to_str().unwrap());
    let expected = format!("IDE {:08X}\n", expected(&img));

    let mut a: Vec<String> = ["-accel", "tcg", "-nographic"].iter().map(|s| s.to_string()).collect();
    a.extend(args(k, disk));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let run: Run = run_quern(&refs, Duration::from_secs(60));
    assert!(run.stdout.contains(&expected), "expected {expected:?}:\n{}", run.describe());
    assert_eq!(run.status, Some(i32::from(EXIT_CODE) << 1 | 1), "{}", run.describe());

    let q = args(k, disk);
    let refs: Vec<&str> = q.iter().map(String::as_str).collect();
    match run_qemu_tcg(&refs) {
        Some(q) => {
            assert!(q.stdout.contains(&expected), "QEMU printed something else:\n{}", q.describe());
            assert_eq!(q.status, run.status, "QEMU's exit status differs:\n{}", q.describe());
        }
        None => report(
            "NOT RUN: pio_and_dma_reads_match_the_image_and_qemu: qemu-system-x86_64 is not installed; \
             checked quern only",
        ),
    }
}
