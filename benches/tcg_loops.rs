//! Guest loops under quern's JIT, QEMU's TCG and natively, in one run, as ratios.
//!
//! Each workload is a Multiboot kernel (32-bit flat protected mode) that runs a loop,
//! prints its result and exits through isa-debug-exit. quern and
//! `qemu-system-x86_64 -accel tcg` boot the same file; an empty kernel's time is
//! subtracted from both (QEMU spends most of its start-up in SeaBIOS). The native column
//! runs the same loop body assembled for 64-bit mode in this process. Guest instruction
//! counts come from the loop structure (see each workload).
//!
//! Run: `cargo bench --bench tcg_loops` (prints a table; QEMU is skipped if missing).
//! `QUERN_TCG_PROFILE=1` is set for quern to report the share of samples in generated
//! code. `QUERN_BENCH_KEEP=1` keeps the kernel files (to run them with `-d exec` etc.).

#[path = "../tests/common/guest.rs"]
mod guest;
#[path = "../tests/common/multiboot.rs"]
mod multiboot;

use std::process::Command;
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;

const BUF: u32 = 0x20_0000;
const BUF2: u32 = 0x30_0000;

/// A benchmark loop: its body (32-bit registers; `wide` = 64-bit code for the native
/// run), and how many guest instructions it executes.
struct Workload {
    name: &'static str,
    body: fn(&mut CodeAssembler, bool) -> Result<(), IcedError>,
    instructions: u64,
}

const XS_N: u32 = 300_000_000;
const CK_LEN: u32 = 64 << 10;
const CK_REPS: u32 = 1500;
const MC_DWORDS: u32 = 16 << 10;
const MC_REPS: u32 = 3000;
const FIB_N: u32 = 35;
const SORT_N: u32 = 2048;
const SORT_REPS: u32 = 40;
const X87_N: u32 = 30_000_000;

fn fib_calls(n: u32) -> u64 {
    // calls(n) = 1 + calls(n-1) + calls(n-2) for n >= 2, 1 otherwise.
    let (mut a, mut b) = (1u64, 1u64);
    for _ in 2..=n {
        let c = 1 + a + b;
        a = b;
        b = c;
    }
    b
}

/// Counts what [`sort`] executes by running the same algorithm here.
fn sort_instructions() -> u64 {
    let mut x: u32 = 0x9e37_79b9;
    let mut n: u64 = 1;
    for _ in 0..SORT_REPS {
        let mut v: Vec<u32> = (0..SORT_N)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x
            })
            .collect();
        n += 1 + 13 * u64::from(SORT_N) + 2;
        for i in 1..v.len() {
            let key = v[i];
            let mut j = i;
            n += 2;
            loop {
                n += 3;
                if v[j - 1] <= key {
                    break;
                }
                v[j] = v[j - 1];
                j -= 1;
                n += 3;
                if j == 0 {
                    break;
                }
            }
            v[j] = key;
            n += 4;
        }
        n += 3;
    }
    n + 2
}

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "xorshift (12-insn body)",
            body: |a, _| multiboot::xorshift(a, 0x1234_5678, XS_N),
            instructions: 12 * XS_N as u64,
        },
        Workload { name: "xorshift + rol (13-insn body)", body: xorshift_rol, instructions: 13 * XS_N as u64 },
        Workload { name: "rotates + inc/dec (7-insn body)", body: rotate_mix, instructions: 7 * XS_N as u64 },
        Workload { name: "checksum (bytes)", body: checksum, instructions: 5 * CK_LEN as u64 * CK_REPS as u64 },
        Workload { name: "memcpy (dwords)", body: memcpy, instructions: 6 * MC_DWORDS as u64 * MC_REPS as u64 },
        Workload { name: "fib(35) recursive", body: fib, instructions: 11 * fib_calls(FIB_N) },
        Workload { name: "insertion sort", body: sort, instructions: sort_instructions() },
        Workload { name: "x87 y = y*a + b (8-insn body)", body: x87_affine, instructions: 8 * X87_N as u64 },
    ]
}

/// 32-bit compiled floating-point code's shape: x87 loads, arithmetic with memory
/// operands, a store, a compare and register moves. ESI = the limit, 2, as an integer.
fn x87_affine(a: &mut CodeAssembler, _wide: bool) -> Result<(), IcedError> {
    a.mov(edi, BUF)?;
    // a = 0.5, b = 1.0: y converges to 2.
    a.mov(dword_ptr(edi), 0)?;
    a.mov(dword_ptr(edi + 4), 0x3fe0_0000)?;
    a.mov(dword_ptr(edi + 8), 0)?;
    a.mov(dword_ptr(edi + 12), 0x3ff0_0000)?;
    a.fninit()?;
    a.fld1()?;
    a.mov(ecx, X87_N)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.fld(st0)?;
    a.fmul(qword_ptr(edi))?;
    a.fadd(qword_ptr(edi + 8))?;
    a.fst(qword_ptr(edi + 16))?;
    a.fucomi(st0, st1)?;
    a.fstp(st1)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.fistp(dword_ptr(edi + 24))?;
    a.mov(esi, dword_ptr(edi + 24))
}

/// The xorshift loop with a rotate of the sum: a rotate's CF/OF meet the DEC's
/// flags, which real code (hashes, ciphers) does in every round.
fn xorshift_rol(a: &mut CodeAssembler, _wide: bool) -> Result<(), IcedError> {
    a.mov(eax, 0x1234_5678u32)?;
    a.xor(ebx, ebx)?;
    a.mov(ecx, XS_N)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    multiboot::xorshift_step(a)?;
    a.add(ebx, eax)?;
    a.rol(ebx, 3u32)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.mov(esi, eax)?;
    a.add(esi, ebx)
}

/// Rotates in both directions mixed with INC and DEC (the shape of SHA-2's rounds).
fn rotate_mix(a: &mut CodeAssembler, _wide: bool) -> Result<(), IcedError> {
    a.mov(eax, 0x6a09_e667u32)?;
    a.mov(ebx, 0xbb67_ae85u32)?;
    a.mov(edx, 0x3c6e_f372u32)?;
    a.mov(ecx, XS_N)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.ror(eax, 7u32)?;
    a.xor(eax, ebx)?;
    a.inc(ebx)?;
    a.rol(edx, 11u32)?;
    a.add(edx, eax)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.mov(esi, eax)?;
    a.add(esi, edx)
}

/// ESI = sum of the bytes of a 64 KiB buffer, summed CK_REPS times.
fn checksum(a: &mut CodeAssembler, _wide: bool) -> Result<(), IcedError> {
    a.xor(eax, eax)?;
    a.mov(ebx, CK_REPS)?;
    let mut rep = a.create_label();
    a.set_label(&mut rep)?;
    a.mov(esi, BUF)?;
    a.mov(edi, BUF + CK_LEN)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.movzx(edx, byte_ptr(esi))?;
    a.add(eax, edx)?;
    a.inc(esi)?;
    a.cmp(esi, edi)?;
    a.jne(top)?;
    a.dec(ebx)?;
    a.jnz(rep)?;
    a.mov(esi, eax)
}

/// Copies 64 KiB dword by dword MC_REPS times; ESI = the last dword copied.
fn memcpy(a: &mut CodeAssembler, _wide: bool) -> Result<(), IcedError> {
    a.mov(ebx, MC_REPS)?;
    let mut rep = a.create_label();
    a.set_label(&mut rep)?;
    a.mov(esi, BUF)?;
    a.mov(edi, BUF2)?;
    a.mov(ecx, MC_DWORDS)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.mov(edx, dword_ptr(esi))?;
    a.mov(dword_ptr(edi), edx)?;
    a.add(esi, 4u32)?;
    a.add(edi, 4u32)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    a.dec(ebx)?;
    a.jnz(rep)?;
    a.mov(esi, dword_ptr(BUF2 + 4 * MC_DWORDS - 4))
}

/// ESI = fib(FIB_N), recursively (11 instructions a call).
fn fib(a: &mut CodeAssembler, wide: bool) -> Result<(), IcedError> {
    let mut f = a.create_label();
    let mut done = a.create_label();
    let mut small = a.create_label();
    a.mov(eax, FIB_N)?;
    a.call(f)?;
    a.mov(esi, eax)?;
    a.jmp(done)?;
    // fib(eax) -> eax; clobbers ecx.
    a.set_label(&mut f)?;
    a.cmp(eax, 2u32)?;
    a.jb(small)?;
    if wide {
        a.push(rax)?
    } else {
        a.push(eax)?
    }
    a.dec(eax)?;
    a.call(f)?;
    if wide {
        a.pop(rcx)?
    } else {
        a.pop(ecx)?
    }
    if wide {
        a.push(rax)?
    } else {
        a.push(eax)?
    }
    a.lea(eax, ptr(ecx - 2))?;
    a.call(f)?;
    if wide {
        a.pop(rcx)?
    } else {
        a.pop(ecx)?
    }
    a.add(eax, ecx)?;
    a.set_label(&mut small)?;
    a.ret()?;
    a.set_label(&mut done)
}

/// Insertion sort of SORT_N xorshift values, SORT_REPS times; ESI = a checksum.
fn sort(a: &mut CodeAssembler, wide: bool) -> Result<(), IcedError> {
    a.mov(ebp, SORT_REPS)?;
    a.mov(eax, 0x9e37_79b9u32)?;
    let mut rep = a.create_label();
    a.set_label(&mut rep)?;
    // Fill.
    a.xor(ecx, ecx)?;
    let mut fill = a.create_label();
    a.set_label(&mut fill)?;
    multiboot::xorshift_step(a)?;
    a.mov(dword_ptr(ecx * 4 + BUF), eax)?;
    a.inc(ecx)?;
    a.cmp(ecx, SORT_N)?;
    a.jne(fill)?;
    // Sort: for i in 1..n { x = a[i]; j = i; while j > 0 && a[j-1] > x { a[j] = a[j-1]; j-- } a[j] = x }
    if wide {
        a.push(rax)?
    } else {
        a.push(eax)?
    }
    a.mov(ebx, 1u32)?;
    let mut outer = a.create_label();
    let mut inner = a.create_label();
    let mut place = a.create_label();
    a.set_label(&mut outer)?;
    a.mov(eax, dword_ptr(ebx * 4 + BUF))?;
    a.mov(ecx, ebx)?;
    a.set_label(&mut inner)?;
    a.mov(edx, dword_ptr(ecx * 4 + (BUF - 4)))?;
    a.cmp(edx, eax)?;
    a.jbe(place)?;
    a.mov(dword_ptr(ecx * 4 + BUF), edx)?;
    a.dec(ecx)?;
    a.jnz(inner)?;
    a.set_label(&mut place)?;
    a.mov(dword_ptr(ecx * 4 + BUF), eax)?;
    a.inc(ebx)?;
    a.cmp(ebx, SORT_N)?;
    a.jne(outer)?;
    if wide {
        a.pop(rax)?
    } else {
        a.pop(eax)?
    }
    a.dec(ebp)?;
    a.jnz(rep)?;
    a.mov(esi, dword_ptr(BUF + 4 * (SORT_N / 2)))?;
    a.add(esi, dword_ptr(BUF))
}

fn kernel_file(name: &str, body: fn(&mut CodeAssembler, bool) -> Result<(), IcedError>) -> String {
    let k = multiboot::kernel("R", 0x11, |a| body(a, false));
    let path = std::env::temp_dir().join(format!("quern-bench-{}-{name}.bin", std::process::id()));
    std::fs::write(&path, k).unwrap();
    path.display().to_string()
}

/// Wall time of one emulator run; None if it failed.
fn time_run(program: &str, pre: &[&str], kernel: &str, env: &[(&str, &str)]) -> Option<(Duration, String)> {
    let start = Instant::now();
    let out = Command::new(program)
        .args(pre)
        .args(["-nographic", "-no-reboot", "-m", "64", "-kernel", kernel])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .envs(env.iter().copied())
        .output()
        .ok()?;
    let t = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() != Some(0x11 << 1 | 1) {
        eprintln!("{program} failed on {kernel}: {:?}\n{stdout}\n{stderr}", out.status);
        return None;
    }
    Some((t, format!("{stdout}\n{stderr}")))
}

/// Best of `n` runs (the machines are noisy; the minimum is the least disturbed).
fn best(n: usize, mut f: impl FnMut() -> Option<(Duration, String)>) -> Option<(Duration, String)> {
    (0..n).filter_map(|_| f()).min_by_key(|r| r.0)
}

/// Runs the body natively, assembled for 64-bit mode, with its buffers mapped at the
/// same addresses as in the guest.
fn native(body: fn(&mut CodeAssembler, bool) -> Result<(), IcedError>) -> Option<Duration> {
    // SAFETY: fixed mappings at otherwise unused low addresses (NOREPLACE refuses a
    // clash); the code is a complete function that saves what the C ABI requires.
    unsafe {
        for base in [BUF, BUF2] {
            let p = libc::mmap(
                base as usize as *mut libc::c_void,
                1 << 20,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            );
            if p as usize != base as usize && p != libc::MAP_FAILED {
                return None;
            }
        }
        let mut a = CodeAssembler::new(64).ok()?;
        a.push(rbx).ok()?;
        a.push(rbp).ok()?;
        a.push(rsi).ok()?;
        a.push(rdi).ok()?;
        body(&mut a, true).ok()?;
        a.mov(eax, esi).ok()?;
        a.pop(rdi).ok()?;
        a.pop(rsi).ok()?;
        a.pop(rbp).ok()?;
        a.pop(rbx).ok()?;
        a.ret().ok()?;
        let code = a.assemble(0).ok()?;
        let mem = libc::mmap(
            std::ptr::null_mut(),
            code.len(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        std::ptr::copy_nonoverlapping(code.as_ptr(), mem as *mut u8, code.len());
        libc::mprotect(mem, code.len(), libc::PROT_READ | libc::PROT_EXEC);
        let f: extern "C" fn() -> u32 = std::mem::transmute(mem);
        let start = Instant::now();
        std::hint::black_box(f());
        Some(start.elapsed())
    }
}

fn main() {
    let quern = env!("CARGO_BIN_EXE_quern");
    let qemu = "qemu-system-x86_64";
    let have_qemu = Command::new(qemu).arg("--version").output().is_ok_and(|o| o.status.success());
    let reps: usize = std::env::var("QUERN_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);

    let empty = kernel_file("empty", |a, _| a.xor(esi, esi));
    let q_base = best(reps, || time_run(quern, &["-accel", "tcg"], &empty, &[])).map(|r| r.0).unwrap_or_default();
    let qe_base = if have_qemu {
        best(reps, || time_run(qemu, &["-accel", "tcg", "-display", "none"], &empty, &[])).map(|r| r.0)
    } else {
        None
    };

    println!("quern tcg vs QEMU tcg vs native, best of {reps}; start-up (empty kernel) subtracted:");
    println!(
        "quern start-up {:.3} s, QEMU start-up {}",
        q_base.as_secs_f64(),
        qe_base.map_or("n/a".into(), |d| format!("{:.3} s", d.as_secs_f64()))
    );
    println!(
        "| workload | guest insns | quern s | QEMU s | quern/QEMU time | native s | quern/native time | quern Minsn/s | in generated code |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // QUERN_BENCH_ONLY=x87 runs the workloads whose names contain it.
    let only = std::env::var("QUERN_BENCH_ONLY").unwrap_or_default();
    for w in workloads().into_iter().filter(|w| w.name.contains(only.as_str())) {
        let k = kernel_file(w.name.split(' ').next().unwrap(), w.body);
        let q = best(reps, || time_run(quern, &["-accel", "tcg"], &k, &[("QUERN_TCG_PROFILE", "1")]));
        let qe = if have_qemu {
            best(reps, || time_run(qemu, &["-accel", "tcg", "-display", "none"], &k, &[]))
        } else {
            None
        };
        let n = native(w.body);
        let qs = q.as_ref().map(|r| r.0.saturating_sub(q_base).as_secs_f64());
        let qes = qe.as_ref().zip(qe_base).map(|(r, b)| r.0.saturating_sub(b).as_secs_f64());
        let ns = n.map(|d| d.as_secs_f64());
        let share = q
            .as_ref()
            .and_then(|r| r.1.lines().find(|l| l.contains("tcg profile")).map(|l| l.to_string()))
            .and_then(|l| l.split('(').nth(1).and_then(|s| s.split(')').next()).map(str::to_string))
            .unwrap_or_else(|| "n/a".into());
        let f = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.3}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "n/a".into(),
        };
        let insns = if w.instructions > 0 { format!("{}M", w.instructions / 1_000_000) } else { "-".into() };
        let mips = match (qs, w.instructions) {
            (Some(s), n) if n > 0 && s > 0.0 => format!("{:.0}", n as f64 / s / 1e6),
            _ => "n/a".into(),
        };
        println!(
            "| {} | {insns} | {} | {} | {} | {} | {} | {mips} | {share} |",
            w.name,
            f(qs),
            f(qes),
            ratio(qs, qes),
            f(ns),
            ratio(qs, ns)
        );
        if std::env::var_os("QUERN_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_file(&k);
        } else {
            println!("kept {k}");
        }
    }
    let _ = std::fs::remove_file(&empty);
}
