//! Test scaffolding for the interpreter families: a software CPU over flat RAM in a
//! chosen mode, instruction assembly and decoding, and host-CPU reference runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use iced_x86::code_asm::CodeAssembler;
use iced_x86::{Decoder, DecoderOptions, Instruction};
use quern_core::cpu::Gp;
use quern_core::regs::{ctrl, flags};
use quern_core::{GuestMemory, VmOps};

use super::{exec, Step};
use crate::cpu::{CodeWatch, Cpu, Result};
use crate::state::{attr, CS};

/// RAM size of test CPUs.
pub const RAM: usize = 1 << 20;

/// The status flags, for comparisons.
pub const STATUS: u64 = flags::STATUS;

/// A CPU over 1 MiB of flat RAM in `bits` (16: real mode, 32: flat protected mode,
/// 64: unpaged long mode), RIP 0x1000, RSP 0x8000.
pub fn cpu(bits: u32) -> Box<Cpu> {
    cpu_on(Arc::new(GuestMemory::flat(RAM).expect("guest RAM")), bits)
}

/// A CPU as [`cpu`] makes, over `mem` (shared with another, for SMP tests).
pub fn cpu_on(mem: Arc<GuestMemory>, bits: u32) -> Box<Cpu> {
    let mut cpu = Cpu::new(mem);
    let s = &mut cpu.state;
    for seg in &mut s.seg {
        seg.limit = 0xffff;
        seg.attr = attr::P | attr::S | 3;
    }
    s.seg[CS].attr = attr::P | attr::S | 0xb;
    match bits {
        64 => {
            s.cr0 |= ctrl::CR0_PE;
            s.efer |= ctrl::EFER_LME | ctrl::EFER_LMA;
            s.seg[CS].attr |= attr::L;
        }
        32 => {
            s.cr0 |= ctrl::CR0_PE;
            for seg in &mut s.seg {
                seg.limit = 0xffff_ffff;
                seg.attr |= attr::DB | attr::G;
            }
        }
        _ => {}
    }
    s.rip = 0x1000;
    s.gpr[4] = 0x8000;
    assert_eq!(s.code_bits(), bits);
    cpu
}

/// Assembles with iced's code assembler for `bits`-bit code.
pub fn asm(bits: u32, f: impl FnOnce(&mut CodeAssembler) -> std::result::Result<(), iced_x86::IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).expect("bitness");
    f(&mut a).expect("assemble");
    a.assemble(0x1000).expect("assemble")
}

/// Decodes one instruction at the CPU's RIP.
pub fn decode(cpu: &Cpu, bytes: &[u8]) -> Instruction {
    let mut d = Decoder::with_ip(cpu.state.code_bits(), bytes, cpu.state.rip, DecoderOptions::NONE);
    let ins = d.decode();
    assert_ne!(ins.code(), iced_x86::Code::INVALID, "bytes {bytes:02x?} do not decode");
    ins
}

/// Decodes and runs one instruction at RIP; RIP advances on `Step::Next`.
pub fn run(cpu: &mut Cpu, bytes: &[u8]) -> Result<Step> {
    let ins = decode(cpu, bytes);
    let step = exec(cpu, &ins)?;
    if step == Step::Next {
        cpu.state.rip = ins.next_ip();
    }
    Ok(step)
}

/// Runs an instruction to completion, re-running it while a REP loop yields.
pub fn run_all(cpu: &mut Cpu, bytes: &[u8]) -> Result<u32> {
    let ins = decode(cpu, bytes);
    let mut rounds = 0;
    loop {
        rounds += 1;
        let step = exec(cpu, &ins)?;
        if step == Step::Next {
            cpu.state.rip = ins.next_ip();
        }
        if cpu.state.rip != ins.ip() {
            return Ok(rounds);
        }
    }
}

/// Status flags plus the fixed bit, as EFLAGS to start from.
pub fn set_status(cpu: &mut Cpu, f: u64) {
    let v = (cpu.state.flags() & !STATUS) | (f & STATUS);
    cpu.state.set_flags(v);
}

/// Runs one host instruction (or a short sequence) with RAX, RCX and RDX given and the
/// status flags set to `$f`; returns [rax, rcx, rdx, status flags].
#[cfg(target_arch = "x86_64")]
macro_rules! host {
    ($insn:literal) => {{
        fn f(a: u64, c: u64, d: u64, fl: u64) -> [u64; 4] {
            let (mut a, mut c, mut d) = (a, c, d);
            let mut fl = (fl & $crate::interp::testutil::STATUS) | 2;
            // SAFETY: register arithmetic on the named registers; the flags image
            // pushed and popped stays balanced on the stack.
            unsafe {
                std::arch::asm!(
                    concat!("push {f}; popfq; ", $insn, "; pushfq; pop {f}"),
                    inout("rax") a, inout("rcx") c, inout("rdx") d, f = inout(reg) fl,
                );
            }
            [a, c, d, fl & $crate::interp::testutil::STATUS]
        }
        f as fn(u64, u64, u64, u64) -> [u64; 4]
    }};
}
#[cfg(target_arch = "x86_64")]
pub(crate) use host;

/// Runs `bytes` on the software CPU in 64-bit mode with the same inputs as [`host!`].
pub fn emu(bytes: &[u8], a: u64, c: u64, d: u64, fl: u64) -> Result<[u64; 4]> {
    let mut cpu = cpu(64);
    cpu.state.gpr[0] = a;
    cpu.state.gpr[1] = c;
    cpu.state.gpr[2] = d;
    set_status(&mut cpu, fl);
    run(&mut cpu, bytes)?;
    let s = &cpu.state;
    Ok([s.gpr[0], s.gpr[1], s.gpr[2], s.flags() & STATUS])
}

/// Interesting operand values.
pub const SAMPLES: [u64; 16] = [
    0,
    1,
    2,
    3,
    7,
    0x7f,
    0x80,
    0xff,
    0x1234,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x8000_0000_0000_0000,
    0xffff_ffff_ffff_ffff,
];

/// Flag values to start from.
pub const FLAG_INPUTS: [u64; 2] = [0, STATUS];

/// The machine of unit tests: ports read as a counter and writes are recorded; MMIO
/// reads all ones; an interrupt (vector 0x20) waits while `irq` is set; a local APIC
/// that answers IA32_APIC_BASE only, when `apic_base` holds a value.
#[derive(Default)]
pub struct Ports {
    pub next_in: Mutex<u32>,
    pub written: Mutex<Vec<(u16, Vec<u8>)>>,
    pub reads: Mutex<Vec<(u16, usize)>>,
    pub irq: AtomicBool,
    pub apic_base: Mutex<Option<u64>>,
}

impl VmOps for Ports {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        let mut n = self.next_in.lock().unwrap();
        for b in data.iter_mut() {
            *b = *n as u8;
            *n += 1;
        }
        self.reads.lock().unwrap().push((port, data.len()));
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.written.lock().unwrap().push((port, data.to_vec()));
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&self, _addr: u64, _data: &[u8]) {}
    fn interrupt_pending(&self) -> bool {
        self.irq.load(Ordering::SeqCst)
    }
    fn acknowledge_interrupt(&self) -> Option<u8> {
        self.irq.swap(false, Ordering::SeqCst).then_some(0x20)
    }
    fn msr_read(&self, index: u32) -> Option<std::result::Result<u64, Gp>> {
        let base = (*self.apic_base.lock().unwrap())?;
        (index == quern_core::regs::msr::IA32_APIC_BASE).then_some(Ok(base))
    }
    fn stop_requested(&self) -> bool {
        false
    }
}

/// A code cache with no code in it.
pub struct NoCode;

impl CodeWatch for NoCode {
    fn is_code_page(&self, _page: u64) -> bool {
        false
    }
    fn invalidate_page(&mut self, _page: u64) -> bool {
        false
    }
}

/// Writes bytes to guest memory at a linear address.
pub fn poke(cpu: &mut Cpu, a: u64, bytes: &[u8]) {
    cpu.write(a, bytes).expect("poke");
}

/// Reads bytes of guest memory at a linear address.
pub fn peek(cpu: &mut Cpu, a: u64, n: usize) -> Vec<u8> {
    let mut b = vec![0; n];
    cpu.read(a, &mut b).expect("peek");
    b
}
