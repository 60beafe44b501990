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

/// In-block self-modifying code, in 64-, 32- and 16-bit (real-mode) code: a store
/// rewrites the imm8 of a `mov al, imm8` two instructions further on in the same
/// block, which must then load the new value, as on the CPU and under QEMU. The store
/// is a MOV, a REP STOSB (the interpreter) and a PUSH (which still has RSP to write
/// after its store); the kernel prints the three AL values and exits.
mod in_block_smc {
    use iced_x86::code_asm::*;
    use iced_x86::BlockEncoderOptions;

    use super::common::guest::{emit_routines, print, EXIT_PORT};
    use super::common::multiboot::{image, LOAD_ADDR};

    /// Where the mode-specific code is copied and run (below 64 KiB for real mode).
    const SNIPPET: u64 = 0x4000;
    const STACK: u32 = 0x7000;
    const GDT: u64 = 0x3000;
    const GDTR: u64 = 0x3100;
    /// PML4, PDPT and PD for 64-bit mode, one after the other.
    const PML4: u32 = 0x1_0000;
    /// Null, flat code32 (0x08), flat data (0x10), 64 KiB code16 (0x18) and data16
    /// (0x20) at base 0, code64 (0x28).
    const GDT_ENTRIES: [u64; 6] = [
        0,
        0x00cf_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        0x0000_9a00_0000_ffff,
        0x0000_9200_0000_ffff,
        0x00af_9a00_0000_ffff,
    ];
    /// What the three `mov al` load once rewritten: MOV, REP STOSB, PUSH.
    pub const EXPECTED: u32 = 0x0044_3322;

    /// Addresses the snippet's own code uses: the three rewritten immediates and the
    /// real-mode entry (found by assembling until they settle).
    #[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
    struct Marks {
        imm: [u64; 3],
        real: u64,
    }

    /// The Multiboot kernel: 32-bit code that copies the snippet to SNIPPET, loads a
    /// GDT and enters the snippet in `bits`-bit mode (16: real mode).
    pub fn kernel(bits: u32, label: &str, exit_code: u8) -> Vec<u8> {
        let snippet = snippet(bits, label, exit_code);
        let mut a = CodeAssembler::new(32).unwrap();
        let mut build = || -> Result<(), IcedError> {
            let mut over = a.create_label();
            a.cli()?;
            a.cld()?;
            a.mov(esp, 0x9_0000u32)?;
            // `call` over the snippet's bytes puts their address on the stack.
            a.call(over)?;
            a.db(&snippet)?;
            a.set_label(&mut over)?;
            a.pop(esi)?;
            a.mov(edi, SNIPPET as u32)?;
            a.mov(ecx, snippet.len() as u32)?;
            a.rep().movsb()?;
            for (i, d) in GDT_ENTRIES.iter().enumerate() {
                a.mov(dword_ptr(GDT + 8 * i as u64), *d as u32)?;
                a.mov(dword_ptr(GDT + 8 * i as u64 + 4), (*d >> 32) as u32)?;
            }
            a.mov(word_ptr(GDTR), (8 * GDT_ENTRIES.len() - 1) as u32)?;
            a.mov(dword_ptr(GDTR + 2), GDT as u32)?;
            a.lgdt(ptr(GDTR))?;
            a.mov(eax, 0x10u32)?;
            for s in [ds, es, fs, gs, ss] {
                a.mov(s, ax)?;
            }
            match bits {
                32 => {
                    a.mov(eax, SNIPPET as u32)?;
                    a.jmp(eax)?;
                }
                16 => a.db(&far_jmp32(0x18, SNIPPET))?,
                _ => {
                    // Identity-map the first 2 MiB with one large page; enable long mode.
                    a.mov(edi, PML4)?;
                    a.xor(eax, eax)?;
                    a.mov(ecx, 3 * 1024u32)?;
                    a.rep().stosd()?;
                    a.mov(dword_ptr(u64::from(PML4)), PML4 + 0x1003)?;
                    a.mov(dword_ptr(u64::from(PML4) + 0x1000), PML4 + 0x2003)?;
                    a.mov(dword_ptr(u64::from(PML4) + 0x2000), 0x83u32)?;
                    a.mov(eax, cr4)?;
                    a.or(eax, 0x20u32)?; // PAE
                    a.mov(cr4, eax)?;
                    a.mov(eax, PML4)?;
                    a.mov(cr3, eax)?;
                    a.mov(ecx, 0xc000_0080u32)?; // EFER
                    a.rdmsr()?;
                    a.or(eax, 0x100u32)?; // LME
                    a.wrmsr()?;
                    a.mov(eax, cr0)?;
                    a.or(eax, 0x8000_0000u32)?; // PG
                    a.mov(cr0, eax)?;
                    a.db(&far_jmp32(0x28, SNIPPET))?;
                }
            }
            Ok(())
        };
        build().unwrap_or_else(|e| panic!("assembling the {bits}-bit SMC kernel: {e}"));
        // Position-independent: where it is assembled for does not change its bytes.
        image(&a.assemble(u64::from(LOAD_ADDR)).unwrap())
    }

    /// `jmp far sel:off` in 32-bit code.
    fn far_jmp32(sel: u16, off: u64) -> Vec<u8> {
        let mut b = vec![0xea];
        b.extend_from_slice(&(off as u32).to_le_bytes());
        b.extend_from_slice(&sel.to_le_bytes());
        b
    }

    fn snippet(bits: u32, label: &str, exit_code: u8) -> Vec<u8> {
        let mut marks = Marks::default();
        for _ in 0..8 {
            let (code, found) = assemble_snippet(bits, label, exit_code, marks)
                .unwrap_or_else(|e| panic!("assembling the {bits}-bit SMC snippet: {e}"));
            if found == marks {
                return code;
            }
            marks = found;
        }
        panic!("the {bits}-bit SMC snippet's layout does not settle");
    }

    fn assemble_snippet(bits: u32, label: &str, exit_code: u8, m: Marks) -> Result<(Vec<u8>, Marks), IcedError> {
        let mut a = CodeAssembler::new(bits)?;
        let mut targets = [a.create_label(), a.create_label(), a.create_label()];
        let mut real = a.create_label();
        let mut start = a.create_label();
        if bits == 16 {
            // Entered in 16-bit protected mode: 64 KiB segments, then PE off.
            a.mov(ax, 0x20u32)?;
            for s in [ds, es, ss] {
                a.mov(s, ax)?;
            }
            a.mov(eax, cr0)?;
            a.and(eax, !1i32)?;
            a.mov(cr0, eax)?;
            let [lo, hi] = (m.real as u16).to_le_bytes();
            a.db(&[0xea, lo, hi, 0, 0])?; // jmp far 0000:real
            a.set_label(&mut real)?;
            a.xor(ax, ax)?;
            for s in [ds, es, ss] {
                a.mov(s, ax)?;
            }
        }
        a.mov(esp, STACK)?;
        a.cld()?;
        a.jmp(start)?;
        let (putc, hex32) = emit_routines(&mut a)?;
        a.set_label(&mut start)?;
        // Each case starts a block (a jump to the next instruction ends the one
        // before), so the store and the `mov al` are translated together.
        let new_block = |a: &mut CodeAssembler| -> Result<(), IcedError> {
            let mut l = a.create_label();
            a.jmp(l)?;
            a.set_label(&mut l)
        };

        // MOV of an immediate to memory.
        new_block(&mut a)?;
        a.mov(byte_ptr(m.imm[0]), 0x22u32)?;
        a.nop()?;
        a.set_label(&mut targets[0])?;
        a.mov(al, 0x11u32)?;
        a.movzx(esi, al)?;

        // REP STOSB of one byte (ES:DI in real mode).
        new_block(&mut a)?;
        a.mov(edi, m.imm[1] as u32)?;
        a.mov(al, 0x33u32)?;
        a.mov(ecx, 1u32)?;
        a.rep().stosb()?;
        a.nop()?;
        a.set_label(&mut targets[1])?;
        a.mov(al, 0x11u32)?;
        a.movzx(ebx, al)?;
        a.shl(ebx, 8u32)?;
        a.or(esi, ebx)?;

        // PUSH of a stack-width value whose low byte is the new immediate and whose
        // other bytes are the NOPs after the `mov al`. AL gets the stack pointer's
        // distance from where the push must have left it added.
        let width = u64::from(bits / 8);
        new_block(&mut a)?;
        a.mov(esp, (m.imm[2] + width) as u32)?;
        match bits {
            16 => {
                a.mov(ax, 0x9044u32)?;
                a.push(ax)?;
            }
            32 => {
                a.mov(eax, 0x9090_9044u32)?;
                a.push(eax)?;
            }
            _ => {
                a.mov(rax, 0x9090_9090_9090_9044u64)?;
                a.push(rax)?;
            }
        }
        a.nop()?;
        a.set_label(&mut targets[2])?;
        a.mov(al, 0x11u32)?;
        for _ in 1..width {
            a.nop()?;
        }
        a.mov(edx, esp)?;
        a.sub(edx, m.imm[2] as u32)?;
        a.add(al, dl)?;
        a.mov(esp, STACK)?;
        a.movzx(ebx, al)?;
        a.shl(ebx, 16u32)?;
        a.or(esi, ebx)?;

        print(&mut a, putc, label)?;
        print(&mut a, putc, " ")?;
        a.call(hex32)?;
        print(&mut a, putc, "\n")?;
        a.mov(dx, u32::from(EXIT_PORT))?;
        a.mov(al, u32::from(exit_code))?;
        a.out(dx, al)?;
        let mut stop = a.create_label();
        a.set_label(&mut stop)?;
        a.hlt()?;
        a.jmp(stop)?;

        let res = a.assemble_options(SNIPPET, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
        let mut found = Marks { real: if bits == 16 { res.label_ip(&real)? } else { 0 }, ..m };
        for (i, t) in targets.iter().enumerate() {
            // `mov al, imm8` is B0 ib: the immediate is its second byte.
            found.imm[i] = res.label_ip(t)? + 1;
        }
        Ok((res.inner.code_buffer, found))
    }
}

fn check_in_block_smc(bits: u32, exit_code: u8) {
    let name = format!("in_block_smc_{bits}bit_matches_qemu");
    let label = format!("SMC{bits}");
    let k = in_block_smc::kernel(bits, &label, exit_code);
    let path = scratch(&format!("smc{bits}-in-block-mb.bin"));
    write(&path, &k);
    let path = path.to_str().unwrap();
    let expected = format!("{label} {:08X}\n", in_block_smc::EXPECTED);
    let status = Some(i32::from(exit_code) << 1 | 1);

    let mut a = vec!["-accel".to_string(), "tcg".to_string()];
    a.extend(args(path));
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let run = run_quern(&refs, Duration::from_secs(60));
    match run_qemu(path) {
        Some(q) => {
            assert!(q.stdout.contains(&expected), "{name}: QEMU printed something else:\n{}", q.describe());
            assert_eq!(q.status, status, "{name}: QEMU's exit status:\n{}", q.describe());
        }
        None => report(&format!("NOT RUN: {name}: qemu-system-x86_64 is not installed; checked quern only")),
    }
    assert!(run.stdout.contains(&expected), "{name}: expected {expected:?} (as QEMU):\n{}", run.describe());
    assert_eq!(run.status, status, "{name}: {}", run.describe());
}

#[test]
fn in_block_smc_64bit_matches_qemu() {
    check_in_block_smc(64, 0x31);
}

#[test]
fn in_block_smc_32bit_matches_qemu() {
    check_in_block_smc(32, 0x32);
}

#[test]
fn in_block_smc_16bit_matches_qemu() {
    check_in_block_smc(16, 0x33);
}
