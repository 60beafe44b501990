//! Guest programs that exercise the local APIC, the IOAPIC and the 8259 virtual wire
//! through the whole machine, each run under quern's JIT and under
//! `qemu-system-x86_64 -accel tcg` (the reference), and where the host allows under
//! quern with KVM's in-kernel irqchip (`-accel kvm -M pc,kernel-irqchip=on`).
//!
//! Each program is one body assembled twice with iced-x86's code_asm, into a Multiboot
//! kernel (32-bit flat protected mode: quern's JIT and QEMU) and an ELF64 kernel
//! (long mode: KVM, since a kvm_pvm host cannot run 32-bit interrupt handlers, and
//! quern's JIT again), both with an IDT whose handlers log every interrupt; ExtINT is
//! a real-mode BIOS image. Each prints `KEY XXXXXXXX` lines over the UART that the
//! tests parse and check: exactly where the architecture fixes the result, within a
//! stated tolerance for timing, and per emulator (with the reason) where QEMU, KVM and
//! quern legitimately differ. What cannot run here is reported on stderr as NOT RUN or
//! HOST LIMIT, never counted as a pass.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use iced_x86::code_asm::*;
use iced_x86::BlockEncoderOptions;

use common::guest::{emit_routines, print, EXIT_PORT};
use common::multiboot::{image_at, HEADER_LEN, LOAD_ADDR};
use common::{bios_image, elf64, report, run_qemu_tcg, run_quern, scratch, write, Run};

// ---------------------------------------------------------------------------------
// The kernel frame: IDT, logging interrupt handlers, output helpers.
// ---------------------------------------------------------------------------------

/// Scratch RAM the kernels use, below the stack (0x90000) and the image (1 MiB);
/// zeroed at entry (QEMU's firmware leaves things there).
const IDT: u32 = 0x7_0000;
const IDTR: u32 = 0x7_3f00;
/// Interrupts logged so far (the first 256 vectors are kept in LOG).
const V_LOGN: u32 = 0x7_1000;
/// How the handlers send EOI: 0 through the xAPIC page at V_APIC, 1 through the
/// x2APIC EOI MSR.
const V_EOI_MODE: u32 = 0x7_1004;
const V_APIC: u32 = 0x7_1008;
/// Non-zero: an exception is recorded and skips this many bytes of the faulting
/// instruction instead of ending the kernel.
const V_SKIP: u32 = 0x7_100c;
const V_EXC_N: u32 = 0x7_1010;
const V_EXC_LAST: u32 = 0x7_1014;
/// The TSC (8 bytes) when the last interrupt arrived.
const V_TSC: u32 = 0x7_1018;
/// Variables of the test programs.
const V_USER: u32 = 0x7_1040;
const LOG: u32 = 0x7_1100;
/// Per vector: how many times it arrived, a hook the handler calls (EBX = vector),
/// and (bytes) whether the handler must not send an EOI.
const COUNTS: u32 = 0x7_2000;
const HOOKS: u32 = 0x7_2400;
const NOEOI: u32 = 0x7_2800;
const STACK_TOP: u32 = 0x9_0000;

const APIC: u32 = 0xfee0_0000;
const IOAPIC: u32 = 0xfec0_0000;
const PM_TMR_PORT: u32 = 0x608;
/// ACPI PM timer ticks per millisecond (3.579545 MHz).
const PM_PER_MS: u32 = 3580;

/// The exit code a kernel writes when an exception it did not expect arrives.
const EXIT_FATAL: u8 = 0x7e;

type R = Result<(), IcedError>;

/// A kernel being assembled, as 32-bit (Multiboot) or 64-bit (ELF64) code from the
/// same body: bodies use 32-bit registers and the helpers here for absolute
/// addresses. Handler addresses must be baked into the instructions that build the
/// IDT, so the kernel is assembled until the addresses of its named labels settle
/// (all of them are used only as 32-bit immediates, whose encoding does not depend
/// on the value).
struct K {
    a: CodeAssembler,
    bits: u32,
    putc: CodeLabel,
    hex32: CodeLabel,
    named: Vec<(String, CodeLabel)>,
    prev: BTreeMap<String, u64>,
}

impl K {
    /// An absolute address for a memory operand. 64-bit code reaches addresses from
    /// 2 GiB up through their sign-extended alias (a 32-bit displacement is
    /// sign-extended there), which the 64-bit frame maps onto 2-4 GiB.
    fn abs(&self, addr: u32) -> u64 {
        if self.bits == 64 {
            addr as i32 as i64 as u64
        } else {
            u64::from(addr)
        }
    }

    /// `mov r, [addr]`.
    fn ld(&mut self, r: AsmRegister32, addr: u32) -> R {
        let m = self.abs(addr);
        self.a.mov(r, dword_ptr(m))
    }

    /// `mov dword [addr], v`.
    fn st(&mut self, addr: u32, v: u32) -> R {
        let m = self.abs(addr);
        self.a.mov(dword_ptr(m), v)
    }

    /// `mov [addr], r`.
    fn st_r(&mut self, addr: u32, r: AsmRegister32) -> R {
        let m = self.abs(addr);
        self.a.mov(dword_ptr(m), r)
    }

    /// PUSH/POP of ESI (RSI in 64-bit code).
    fn push_si(&mut self) -> R {
        if self.bits == 64 {
            self.a.push(rsi)
        } else {
            self.a.push(esi)
        }
    }

    fn pop_si(&mut self) -> R {
        if self.bits == 64 {
            self.a.pop(rsi)
        } else {
            self.a.pop(esi)
        }
    }

    /// The address `name` had in the previous pass (0 in the first).
    fn addr(&self, name: &str) -> u32 {
        self.prev.get(name).copied().unwrap_or(0) as u32
    }

    /// Defines the named label `name` at the next instruction.
    fn here(&mut self, name: &str) -> R {
        let mut l = self.a.create_label();
        self.a.set_label(&mut l)?;
        self.named.push((name.to_string(), l));
        Ok(())
    }

    /// Prints `text`. Clobbers EAX, EBX, EDX.
    fn say(&mut self, text: &str) -> R {
        print(&mut self.a, self.putc, text)
    }

    /// Prints `KEY ESI` (8 hex digits). Clobbers EAX, EBX, ECX, EDX, ESI.
    fn put(&mut self, key: &str) -> R {
        self.push_si()?;
        self.say(&format!("{key} "))?;
        self.pop_si()?;
        self.a.call(self.hex32)?;
        self.say("\n")
    }

    /// Prints the dword at `addr` as `KEY`.
    fn put_mem(&mut self, key: &str, addr: u32) -> R {
        self.ld(esi, addr)?;
        self.put(key)
    }

    /// Prints the xAPIC register at `off` (the default base).
    fn put_apic(&mut self, key: &str, off: u32) -> R {
        self.put_mem(key, APIC + off)
    }

    fn apic_w(&mut self, off: u32, v: u32) -> R {
        self.st(APIC + off, v)
    }

    /// Stores EAX to a user variable.
    fn save(&mut self, var: u32) -> R {
        self.a.mov(dword_ptr(var), eax)
    }

    /// Writes isa-debug-exit and stops.
    fn exit(&mut self, code: u8) -> R {
        self.a.mov(dx, u32::from(EXIT_PORT))?;
        self.a.mov(al, u32::from(code))?;
        self.a.out(dx, al)?;
        let mut stop = self.a.create_label();
        self.a.set_label(&mut stop)?;
        self.a.cli()?;
        self.a.hlt()?;
        self.a.jmp(stop)
    }

    /// Busy-waits `ticks` of the ACPI PM timer (interrupts as they are). Clobbers
    /// EAX, EDX, EDI.
    fn wait_pm(&mut self, ticks: u32) -> R {
        let a = &mut self.a;
        a.mov(dx, PM_TMR_PORT)?;
        a.in_(eax, dx)?;
        a.mov(edi, eax)?;
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.pause()?;
        a.in_(eax, dx)?;
        a.sub(eax, edi)?;
        a.and(eax, 0xff_ffffu32)?;
        a.cmp(eax, ticks)?;
        a.jb(l)
    }

    /// Busy-waits `ticks` of the PM timer with interrupts enabled, then disables them.
    fn wait_pm_sti(&mut self, ticks: u32) -> R {
        self.a.sti()?;
        self.wait_pm(ticks)?;
        self.a.cli()
    }

    /// Waits with HLT until `vector` has arrived at least `n` times in all; returns
    /// with IF=0. The check runs with interrupts off and STI;HLT closes the window,
    /// so an interrupt between the check and the HLT still ends the HLT.
    fn wait_count(&mut self, vector: u8, n: u32) -> R {
        let a = &mut self.a;
        let mut top = a.create_label();
        let mut done = a.create_label();
        a.set_label(&mut top)?;
        a.cli()?;
        a.cmp(dword_ptr(COUNTS + 4 * u32::from(vector)), n)?;
        a.jae(done)?;
        a.sti()?;
        a.hlt()?;
        a.jmp(top)?;
        a.set_label(&mut done)?;
        a.nop()
    }

    /// Like [`K::wait_count`], but giving up after `ms` milliseconds (the local APIC
    /// timer, one-shot on vector 0xFE, wakes the HLT), for interrupts a wrongly wired
    /// machine never sends: the count printed then says so instead of a hang. Uses
    /// the LVT timer and TDCR.
    fn wait_count_ms(&mut self, vector: u8, n: u32, ms: u32) -> R {
        self.a.mov(dword_ptr(COUNTS + 4 * 0xfe), 0u32)?;
        self.apic_w(0x3e0, 0b1010)?; // ÷128: 7.8125 MHz
        self.apic_w(0x320, 0xfe)?;
        self.apic_w(0x380, ms * 7812)?;
        let mut top = self.a.create_label();
        let mut done = self.a.create_label();
        let a = &mut self.a;
        a.set_label(&mut top)?;
        a.cli()?;
        a.cmp(dword_ptr(COUNTS + 4 * u32::from(vector)), n)?;
        a.jae(done)?;
        a.cmp(dword_ptr(COUNTS + 4 * 0xfe), 0)?;
        a.jne(done)?;
        a.sti()?;
        a.hlt()?;
        a.jmp(top)?;
        a.set_label(&mut done)?;
        a.nop()?;
        self.apic_w(0x380, 0)?;
        self.apic_w(0x320, 0x1_0000)
    }

    /// An interrupt window: STI, one instruction (the STI shadow), CLI. Every
    /// interrupt deliverable then is taken before the CLI.
    fn window(&mut self) -> R {
        self.a.sti()?;
        self.a.nop()?;
        if self.bits == 64 {
            // KVM on kvm_pvm injects interrupts only when the guest exits, one per
            // exit: port reads make exits for up to four. (In the 32-bit kernels CLI
            // follows at once, so quern's JIT must take every interrupt right after
            // the shadow instruction.)
            for _ in 0..4 {
                self.a.in_(al, 0x80u32)?;
            }
        }
        self.a.cli()
    }

    /// Stores the TSC at `var` (8 bytes). Clobbers EAX, EDX.
    fn tsc_to(&mut self, var: u32) -> R {
        self.a.rdtsc()?;
        self.a.mov(dword_ptr(var), eax)?;
        self.a.mov(dword_ptr(var + 4), edx)
    }

    /// Makes the named label's routine the hook of `vector`.
    fn hook(&mut self, vector: u8, name: &str) -> R {
        let addr = self.addr(name);
        self.a.mov(dword_ptr(HOOKS + 4 * u32::from(vector)), addr)
    }

    fn no_eoi(&mut self, vector: u8, on: bool) -> R {
        self.a.mov(byte_ptr(NOEOI + u32::from(vector)), u32::from(on))
    }

    /// Software-enables the local APIC with spurious vector 0xFF, TPR 0, and every LVT
    /// entry masked: the firmware (QEMU's SeaBIOS) or reset leaves LINT0/LINT1 in
    /// different states, and the programs must start alike everywhere.
    fn apic_init(&mut self) -> R {
        self.apic_w(0xf0, 0x1ff)?;
        self.apic_w(0x80, 0)?;
        for off in [0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            self.apic_w(off, 0x1_0000)?;
        }
        Ok(())
    }

    /// Sends an IPI through the xAPIC ICR: destination byte `dest`, low dword `lo`.
    fn icr(&mut self, dest: u8, lo: u32) -> R {
        self.apic_w(0x310, u32::from(dest) << 24)?;
        self.apic_w(0x300, lo)
    }

    /// Zeroes the interrupt log and counts.
    fn clear_log(&mut self) -> R {
        let a = &mut self.a;
        a.mov(dword_ptr(V_LOGN), 0u32)?;
        a.xor(eax, eax)?;
        a.mov(edi, LOG)?;
        a.mov(ecx, 256u32 / 4)?;
        a.rep().stosd()?;
        a.mov(edi, COUNTS)?;
        a.mov(ecx, 256u32)?;
        a.rep().stosd()
    }

    /// Prints the interrupt log: `KEY_N` with the count, then `KEY` with up to four
    /// vectors in arrival order (first in the high byte), `KEY2` with the next four.
    fn put_log(&mut self, key: &str) -> R {
        self.put_mem(&format!("{key}_N"), V_LOGN)?;
        self.a.mov(esi, dword_ptr(LOG))?;
        self.a.bswap(esi)?;
        self.put(key)?;
        self.a.mov(esi, dword_ptr(LOG + 4))?;
        self.a.bswap(esi)?;
        self.put(&format!("{key}2"))
    }

    /// RDMSR of `msr` with a #GP caught: the exception handler records it and skips
    /// the 2-byte instruction. Prints `KEY` = number of faults (0 or 1).
    fn rdmsr_gp(&mut self, key: &str, msr: u32) -> R {
        self.a.mov(dword_ptr(V_EXC_N), 0u32)?;
        self.a.mov(dword_ptr(V_SKIP), 2u32)?;
        self.a.mov(ecx, msr)?;
        self.a.rdmsr()?;
        self.a.mov(dword_ptr(V_SKIP), 0u32)?;
        self.put_mem(key, V_EXC_N)
    }

    /// WRMSR of EDX:EAX = `v` to `msr` with a #GP caught; prints `KEY` = faults.
    fn wrmsr_gp(&mut self, key: &str, msr: u32, v: u64) -> R {
        self.a.mov(dword_ptr(V_EXC_N), 0u32)?;
        self.a.mov(dword_ptr(V_SKIP), 2u32)?;
        self.a.mov(ecx, msr)?;
        self.a.mov(eax, v as u32)?;
        self.a.mov(edx, (v >> 32) as u32)?;
        self.a.wrmsr()?;
        self.a.mov(dword_ptr(V_SKIP), 0u32)?;
        self.put_mem(key, V_EXC_N)
    }
}

/// Exceptions that push an error code.
fn has_error_code(v: u32) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// A program as the two kernels the machines run: 32-bit Multiboot (quern's JIT and
/// QEMU) and 64-bit ELF (KVM, where kvm_pvm cannot run 32-bit handlers; also run
/// under the JIT, which checks the 64-bit frame itself).
struct Kernels {
    mb32: Vec<u8>,
    elf64: Vec<u8>,
}

/// Where the 64-bit kernel is loaded (quern's ELF64 loader identity-maps 4 GiB).
const LONG_BASE: u32 = 0x20_0000;
/// The 64-bit frame's page tables: PML4, the PDPTs for the low 4 GiB and for the top
/// of the address space, four PDs of 2 MiB pages.
const PML4: u32 = 0x7_4000;
const PT_END: u32 = 0x7_b000;

/// Assembles `body` in the kernel frame (scratch RAM zeroed, PICs masked, an IDT whose
/// handlers log every interrupt, EOI through the default xAPIC page), both ways. The
/// body ends with `k.exit(code)`.
fn kernel32(body: impl Fn(&mut K) -> R) -> Kernels {
    let build = |bits: u32, org: u32| {
        let mut prev = BTreeMap::new();
        for _ in 0..8 {
            let (code, found) =
                assemble(bits, org, &body, &prev).unwrap_or_else(|e| panic!("assembling a {bits}-bit kernel: {e}"));
            if found == prev {
                return code;
            }
            prev = found;
        }
        panic!("the {bits}-bit kernel's layout does not settle");
    };
    let entry = LOAD_ADDR + HEADER_LEN;
    let mb32 = image_at(LOAD_ADDR, entry, &build(32, entry));
    let elf64 = elf64(&build(64, LONG_BASE), u64::from(LONG_BASE), u64::from(LONG_BASE));
    Kernels { mb32, elf64 }
}

fn assemble(
    bits: u32,
    org: u32,
    body: &impl Fn(&mut K) -> R,
    prev: &BTreeMap<String, u64>,
) -> Result<(Vec<u8>, BTreeMap<String, u64>), IcedError> {
    let long = bits == 64;
    let mut a = CodeAssembler::new(bits)?;
    let mut start = a.create_label();
    a.jmp(start)?;
    let (putc, hex32) = emit_routines(&mut a)?;
    let mut k = K { a, bits, putc, hex32, named: Vec::new(), prev: prev.clone() };

    // Interrupt handler: log the vector, count it, note the TSC, call the hook, EOI.
    let mut irq = k.a.create_label();
    let mut exc = k.a.create_label();
    for v in 0..256u32 {
        k.here(&format!("stub{v}"))?;
        if v < 32 && v != 2 {
            if !has_error_code(v) {
                k.a.push(0)?;
            }
            k.a.push(v as i32)?;
            k.a.jmp(exc)?;
        } else {
            k.a.push(v as i32)?;
            k.a.jmp(irq)?;
        }
    }
    // 64-bit code has no PUSHAD: every register a hook may use is saved.
    let saved64 = [rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15];
    {
        let a = &mut k.a;
        a.set_label(&mut irq)?;
        if long {
            for r in saved64 {
                a.push(r)?;
            }
            a.mov(ebx, dword_ptr(rsp + 8 * saved64.len() as i32))?;
        } else {
            a.pushad()?;
            a.mov(ebx, dword_ptr(esp + 32))?;
        }
        let mut full = a.create_label();
        a.mov(ecx, dword_ptr(V_LOGN))?;
        a.cmp(ecx, 256u32)?;
        a.jae(full)?;
        a.mov(byte_ptr(ecx + LOG), bl)?;
        a.set_label(&mut full)?;
        a.inc(dword_ptr(V_LOGN))?;
        a.inc(dword_ptr(ebx * 4 + COUNTS))?;
        a.rdtsc()?;
        a.mov(dword_ptr(V_TSC), eax)?;
        a.mov(dword_ptr(V_TSC + 4), edx)?;
        let mut no_hook = a.create_label();
        a.mov(eax, dword_ptr(ebx * 4 + HOOKS))?;
        a.test(eax, eax)?;
        a.jz(no_hook)?;
        if long {
            a.push(rbx)?;
            a.call(rax)?;
            a.pop(rbx)?;
        } else {
            a.push(ebx)?;
            a.call(eax)?;
            a.pop(ebx)?;
        }
        a.set_label(&mut no_hook)?;
        let mut done = a.create_label();
        let mut x2 = a.create_label();
        a.cmp(byte_ptr(ebx + NOEOI), 0)?;
        a.jne(done)?;
        a.cmp(dword_ptr(V_EOI_MODE), 0)?;
        a.jne(x2)?;
        a.mov(eax, dword_ptr(V_APIC))?;
        a.mov(dword_ptr(eax + 0xb0), 0u32)?;
        a.jmp(done)?;
        a.set_label(&mut x2)?;
        a.mov(ecx, 0x80bu32)?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.set_label(&mut done)?;
        if long {
            for r in saved64.iter().rev() {
                a.pop(*r)?;
            }
            a.add(rsp, 8)?;
            a.iretq()?;
        } else {
            a.popad()?;
            a.add(esp, 4)?;
            a.iretd()?;
        }
    }
    // Exceptions: recorded and skipped when the program expects one (V_SKIP), else
    // reported with the faulting instruction pointer and the kernel ends. The stack
    // holds the vector, the error code, then the CPU's frame.
    {
        let w = if long { 8 } else { 4 };
        k.a.set_label(&mut exc)?;
        let mut fatal = k.a.create_label();
        let a = &mut k.a;
        a.cmp(dword_ptr(V_SKIP), 0)?;
        a.je(fatal)?;
        if long {
            a.push(rax)?;
            a.mov(eax, dword_ptr(rsp + 8))?;
        } else {
            a.push(eax)?;
            a.mov(eax, dword_ptr(esp + 4))?;
        }
        a.mov(dword_ptr(V_EXC_LAST), eax)?;
        a.inc(dword_ptr(V_EXC_N))?;
        a.mov(eax, dword_ptr(V_SKIP))?;
        if long {
            a.add(qword_ptr(rsp + 3 * w), rax)?;
            a.pop(rax)?;
            a.add(rsp, 2 * w)?;
            a.iretq()?;
        } else {
            a.add(dword_ptr(esp + 3 * w), eax)?;
            a.pop(eax)?;
            a.add(esp, 2 * w)?;
            a.iretd()?;
        }
        a.set_label(&mut fatal)?;
        for (key, slot) in [("EXC", 0), ("EXC_EIP", 2), ("EXC_ERR", 1)] {
            if long {
                k.a.mov(esi, dword_ptr(rsp + slot * w))?;
            } else {
                k.a.mov(esi, dword_ptr(esp + slot * w))?;
            }
            k.put(key)?;
        }
        k.exit(EXIT_FATAL)?;
    }

    k.a.set_label(&mut start)?;
    {
        let a = &mut k.a;
        a.cli()?;
        a.cld()?;
        if long {
            a.mov(rsp, u64::from(STACK_TOP))?;
        } else {
            a.mov(esp, STACK_TOP)?;
        }
        a.mov(edi, IDT)?;
        a.xor(eax, eax)?;
        a.mov(ecx, (PT_END - IDT) / 4)?;
        a.rep().stosd()?;
        if long {
            // Own page tables: 4 GiB identity-mapped by 2 MiB pages, and the top 2 GiB
            // of the address space onto 2-4 GiB, for sign-extended absolute addresses
            // of the APIC and IOAPIC pages (K::abs).
            let (pdpt_lo, pdpt_hi, pd) = (PML4 + 0x1000, PML4 + 0x2000, PML4 + 0x3000);
            a.mov(dword_ptr(PML4), pdpt_lo | 3)?;
            a.mov(dword_ptr(PML4 + 511 * 8), pdpt_hi | 3)?;
            for i in 0..4 {
                a.mov(dword_ptr(pdpt_lo + 8 * i), (pd + 0x1000 * i) | 3)?;
            }
            a.mov(dword_ptr(pdpt_hi + 510 * 8), (pd + 0x2000) | 3)?;
            a.mov(dword_ptr(pdpt_hi + 511 * 8), (pd + 0x3000) | 3)?;
            let mut fill = a.create_label();
            a.mov(edi, pd)?;
            a.mov(eax, 0x83u32)?; // present, writable, 2 MiB
            a.mov(ecx, 2048u32)?;
            a.set_label(&mut fill)?;
            a.mov(dword_ptr(rdi), eax)?;
            a.add(eax, 0x20_0000)?;
            a.add(edi, 8)?;
            a.dec(ecx)?;
            a.jnz(fill)?;
            a.mov(eax, PML4)?;
            a.mov(cr3, rax)?;
        }
        a.mov(al, 0xffu32)?;
        a.out(0x21u32, al)?;
        a.out(0xa1u32, al)?;
        a.mov(dword_ptr(V_APIC), APIC)?;
        // No EOI for NMIs and the spurious vector.
        a.mov(byte_ptr(NOEOI + 2), 1u32)?;
        a.mov(byte_ptr(NOEOI + 0xff), 1u32)?;
        // Interrupt gates with the loader's code selector.
        a.xor(ebx, ebx)?;
        a.mov(bx, cs)?;
        a.shl(ebx, 16)?;
    }
    let gate = if long { 16 } else { 8 };
    for v in 0..256u32 {
        let h = k.addr(&format!("stub{v}"));
        let a = &mut k.a;
        a.mov(eax, ebx)?;
        a.or(eax, h & 0xffff)?;
        a.mov(dword_ptr(IDT + gate * v), eax)?;
        a.mov(dword_ptr(IDT + gate * v + 4), (h & 0xffff_0000) | 0x8e00)?;
        // The upper half of a 64-bit gate (offset 63:32, reserved) stays zero.
    }
    k.a.mov(word_ptr(IDTR), (256 * gate - 1) as i32)?;
    k.a.mov(dword_ptr(IDTR + 2), IDT)?;
    k.a.mov(dword_ptr(IDTR + 6), 0u32)?;
    k.a.lidt(ptr(IDTR))?;
    body(&mut k)?;
    // A body that falls off its end.
    k.exit(EXIT_FATAL)?;

    let res = k.a.assemble_options(u64::from(org), BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let mut found = BTreeMap::new();
    for (name, l) in &k.named {
        found.insert(name.clone(), res.label_ip(l)?);
    }
    Ok((res.inner.code_buffer, found))
}

// ---------------------------------------------------------------------------------
// Running the programs.
// ---------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Emu {
    /// quern's JIT running the 32-bit kernel (or the BIOS image).
    QuernTcg,
    QemuTcg,
    /// quern's JIT running the 64-bit kernel.
    QuernTcg64,
    /// quern with KVM's in-kernel irqchip, running the 64-bit kernel (or the BIOS).
    QuernKvm,
}

impl Emu {
    fn name(self) -> &'static str {
        match self {
            Emu::QuernTcg => "quern tcg",
            Emu::QemuTcg => "QEMU tcg",
            Emu::QuernTcg64 => "quern tcg (64-bit kernel)",
            Emu::QuernKvm => "quern kvm (kernel-irqchip=on)",
        }
    }
}

/// What a program printed: its `KEY VALUE` lines and exit status.
struct Out {
    test: String,
    emu: Emu,
    vals: BTreeMap<String, u32>,
    run: Run,
}

impl Out {
    fn get(&self, key: &str) -> u32 {
        *self.vals.get(key).unwrap_or_else(|| panic!("{}: no {key} line:\n{}", self.emu.name(), self.run.describe()))
    }
}

fn parse(test: &str, emu: Emu, run: Run) -> Out {
    let mut vals = BTreeMap::new();
    for line in run.stdout.lines() {
        if let Some((k, v)) = line.trim_end_matches('\r').split_once(' ') {
            if v.len() == 8 && !k.is_empty() {
                if let Ok(v) = u32::from_str_radix(v, 16) {
                    vals.insert(k.to_string(), v);
                }
            }
        }
    }
    Out { test: test.to_string(), emu, vals, run }
}

const LIMIT: Duration = Duration::from_secs(30);

/// The exit status isa-debug-exit gives for `code`.
fn status(code: u8) -> Option<i32> {
    Some(i32::from(code) << 1 | 1)
}

fn common_args(kind: &str, image: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        ["-no-reboot", "-m", "64", "-cpu", "max", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    v.push(kind.to_string());
    v.push(image.display().to_string());
    v
}

/// Runs `image` (`-kernel` or `-bios`) under `emu`; `None` when that emulator cannot
/// run here (reported).
fn run_on(emu: Emu, test: &str, kind: &str, image: &Path) -> Option<Out> {
    let args = common_args(kind, image);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = match emu {
        Emu::QuernTcg | Emu::QuernTcg64 => {
            let mut all = vec!["-accel", "tcg", "-nographic"];
            all.extend_from_slice(&refs);
            run_quern(&all, LIMIT)
        }
        Emu::QuernKvm => {
            if !common::kvm_usable(test) {
                return None;
            }
            let mut all = vec!["-accel", "kvm", "-M", "pc,kernel-irqchip=on", "-nographic"];
            all.extend_from_slice(&refs);
            run_quern(&all, LIMIT)
        }
        Emu::QemuTcg => match run_qemu_tcg(&refs) {
            Some(r) => r,
            None => {
                report(&format!("NOT RUN: {test} under QEMU tcg: qemu-system-x86_64 is not installed"));
                return None;
            }
        },
    };
    Some(parse(test, emu, run))
}

fn kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Like [`eq`], except that under KVM on a kvm_pvm host a mismatch is reported as a
/// HOST LIMIT, saying `why`: PVM runs the guest's supervisor code through KVM's
/// instruction emulator and injects interrupts its own way, and a few results differ
/// there for reasons outside quern. Only the checks known to be affected use this.
fn eq_pvm(out: &Out, key: &str, want: u32, why: &str) {
    let got = out.get(key);
    if got != want && out.emu == Emu::QuernKvm && kvm_pvm() {
        report(&format!(
            "HOST LIMIT (kvm_pvm): {} under {}: {key} = {got:#x}, not {want:#x}: {why}",
            out.test,
            out.emu.name()
        ));
        return;
    }
    eq(out, key, want);
}

/// Runs a program's kernels on every machine and checks each with `check` (which
/// panics with what is wrong): the 32-bit kernel under quern's JIT and QEMU, the
/// 64-bit one under quern's JIT and KVM.
fn run_all(test: &str, k: &Kernels, check: impl Fn(&Out)) {
    let mb32 = scratch(&format!("{test}.bin"));
    write(&mb32, &k.mb32);
    let elf = scratch(&format!("{test}.elf"));
    write(&elf, &k.elf64);
    for emu in [Emu::QuernTcg, Emu::QemuTcg, Emu::QuernTcg64, Emu::QuernKvm] {
        let path = if matches!(emu, Emu::QuernTcg | Emu::QemuTcg) { &mb32 } else { &elf };
        if let Some(out) = run_on(emu, test, "-kernel", path) {
            check(&out);
        }
    }
}

/// Runs a BIOS image under quern's JIT, QEMU and KVM.
fn run_bios(test: &str, image: &[u8], check: impl Fn(&Out)) {
    let path = scratch(&format!("{test}.bin"));
    write(&path, image);
    for emu in [Emu::QuernTcg, Emu::QemuTcg, Emu::QuernKvm] {
        if let Some(out) = run_on(emu, test, "-bios", &path) {
            check(&out);
        }
    }
}

/// Asserts `key` is `want` in `out`.
fn eq(out: &Out, key: &str, want: u32) {
    let got = out.get(key);
    assert_eq!(got, want, "{}: {key} = {got:#x}, expected {want:#x}:\n{}", out.emu.name(), out.run.describe());
}

fn exited(out: &Out, code: u8) {
    assert_eq!(out.run.status, status(code), "{}: exit status:\n{}", out.emu.name(), out.run.describe());
}

// ---------------------------------------------------------------------------------
// 2. TPR masking and priority order.
// ---------------------------------------------------------------------------------

/// Three self-IPIs (0x40, 0x90, 0x50) sent with IF=0 sit in the IRR; the TPR lets
/// them through class by class, highest first; a vector in service (no EOI yet)
/// holds lower classes back until the EOI; within a class the higher vector wins.
#[test]
fn tpr_masking_and_priority_order() {
    let k = kernel32(|k| {
        k.apic_init()?;
        k.clear_log()?;
        for v in [0x40, 0x90, 0x50] {
            k.icr(0, 0x4_0000 | v)?; // fixed, shorthand self
        }
        k.put_apic("IRR2", 0x220)?;
        k.put_apic("IRR4", 0x240)?;
        k.apic_w(0x80, 0x50)?;
        k.put_apic("PPR_T50", 0xa0)?;
        k.window()?;
        k.put_log("A")?;
        k.apic_w(0x80, 0x45)?;
        k.window()?;
        k.put_log("B")?;
        k.apic_w(0x80, 0)?;
        k.window()?;
        k.put_log("C")?;
        k.put_apic("IRR2_AFTER", 0x220)?;

        // In service: 0x50's handler sends no EOI.
        k.clear_log()?;
        k.no_eoi(0x50, true)?;
        for v in [0x40, 0x50, 0x58] {
            k.icr(0, 0x4_0000 | v)?;
        }
        k.window()?;
        k.put_log("D")?;
        k.put_apic("ISR2", 0x120)?;
        k.put_apic("PPR_ISR", 0xa0)?;
        k.put_apic("IRR2_HELD", 0x220)?;
        k.apic_w(0xb0, 0)?;
        k.window()?;
        k.put_log("E")?;
        k.put_apic("ISR2_END", 0x120)?;
        k.put_apic("PPR_END", 0xa0)?;
        if k.bits == 64 {
            // CR8 is TPR[7:4], both ways, and masks like it.
            k.clear_log()?;
            k.a.mov(eax, 5u32)?;
            k.a.mov(cr8, rax)?;
            k.put_apic("CR8_TO_TPR", 0x80)?;
            k.apic_w(0x80, 0x80)?;
            k.a.mov(rsi, cr8)?;
            k.put("TPR_TO_CR8")?;
            k.a.mov(eax, 6u32)?;
            k.a.mov(cr8, rax)?;
            k.icr(0, 0x4_0060)?;
            k.window()?;
            k.put_mem("CR8_HELD_N", V_LOGN)?;
            k.a.xor(eax, eax)?;
            k.a.mov(cr8, rax)?;
            k.window()?;
            k.put_log("CR8_LOG")?;
        }
        k.exit(0x10)
    });
    run_all("tpr_masking_and_priority_order", &k, |o| {
        exited(o, 0x10);
        eq(o, "IRR2", 1 << 0 | 1 << 16);
        eq(o, "IRR4", 1 << 16);
        eq(o, "PPR_T50", 0x50);
        eq(o, "A_N", 1);
        eq(o, "A", 0x9000_0000);
        eq(o, "B_N", 2);
        eq(o, "B", 0x9050_0000);
        eq(o, "C_N", 3);
        eq(o, "C", 0x9050_4000);
        eq(o, "IRR2_AFTER", 0);
        let why = "PVM leaves no vector in service: ISR reads 0 in a handler that sent no EOI";
        eq_pvm(o, "ISR2", 1 << 16, why);
        eq_pvm(o, "D_N", 2, why);
        eq_pvm(o, "D", 0x5850_0000, why);
        eq_pvm(o, "PPR_ISR", 0x50, why);
        eq_pvm(o, "IRR2_HELD", 1, why);
        eq(o, "E_N", 3);
        eq(o, "E", 0x5850_4000);
        eq(o, "ISR2_END", 0);
        eq(o, "PPR_END", 0);
        if matches!(o.emu, Emu::QuernTcg64 | Emu::QuernKvm) {
            eq(o, "CR8_TO_TPR", 0x50);
            eq(o, "TPR_TO_CR8", 8);
            eq(o, "CR8_HELD_N", 0);
            eq(o, "CR8_LOG_N", 1);
            eq(o, "CR8_LOG", 0x6000_0000);
        }
    });
}

// ---------------------------------------------------------------------------------
// 1. The LAPIC timer: one-shot, periodic, TSC-deadline, against the TSC.
// ---------------------------------------------------------------------------------

// Variables of the timer program.
const T_CAL: u32 = V_USER;
const T_T0: u32 = V_USER + 8;
const T_TMP: u32 = V_USER + 16;
const T_CAL_PM: u32 = V_USER + 24;
const T_PM0: u32 = V_USER + 28;
/// The TSC is calibrated over this many ms of the ACPI PM timer.
const CAL_MS: u32 = 20;
/// One-shot: initial count and divider (÷16, TDCR 0b0011): 16 ms.
const ONESHOT_COUNT: u32 = 1_000_000;
/// Periodic: initial count and divider (÷4, TDCR 0b0001): 1 ms a period, N periods.
const PERIODIC_COUNT: u32 = 250_000;
const PERIODIC_N: u32 = 20;

impl K {
    /// Samples the PM timer and the TSC together: PM, TSC, PM again, retried (up to
    /// 1000 times, for hosts where port I/O is that slow) until the two PM reads are
    /// within 10 µs, so a host preemption between them cannot skew the pair. Leaves
    /// the first PM read in EDI, the TSC in EDX:EAX. Clobbers EBX, ECX, ESI.
    fn pm_tsc_pair(&mut self) -> R {
        let a = &mut self.a;
        let mut again = a.create_label();
        let mut take = a.create_label();
        a.mov(esi, 1000u32)?;
        a.set_label(&mut again)?;
        a.mov(dx, PM_TMR_PORT)?;
        a.in_(eax, dx)?;
        a.mov(edi, eax)?;
        a.rdtsc()?;
        a.mov(ebx, eax)?;
        a.mov(ecx, edx)?;
        a.mov(dx, PM_TMR_PORT)?;
        a.in_(eax, dx)?;
        a.sub(eax, edi)?;
        a.and(eax, 0xff_ffffu32)?;
        a.cmp(eax, 36u32)?;
        a.jbe(take)?;
        a.dec(esi)?;
        a.jnz(again)?;
        a.set_label(&mut take)?;
        a.mov(eax, ebx)?;
        a.mov(edx, ecx)
    }

    /// Measures the TSC against CAL_MS of the ACPI PM timer: T_CAL gets the TSC
    /// ticks, T_CAL_PM the PM ticks they took (a little over CAL_MS).
    fn calibrate_tsc(&mut self) -> R {
        self.pm_tsc_pair()?;
        self.a.mov(dword_ptr(T_PM0), edi)?;
        self.a.mov(dword_ptr(T_T0), eax)?;
        let mut wait = self.a.create_label();
        self.a.set_label(&mut wait)?;
        self.a.mov(dx, PM_TMR_PORT)?;
        self.a.in_(eax, dx)?;
        self.a.sub(eax, dword_ptr(T_PM0))?;
        self.a.and(eax, 0xff_ffffu32)?;
        self.a.cmp(eax, CAL_MS * 3_579_545 / 1000)?;
        self.a.jb(wait)?;
        self.pm_tsc_pair()?;
        self.a.sub(eax, dword_ptr(T_T0))?;
        self.a.mov(dword_ptr(T_CAL), eax)?;
        self.a.sub(edi, dword_ptr(T_PM0))?;
        self.a.and(edi, 0xff_ffffu32)?;
        self.a.mov(dword_ptr(T_CAL_PM), edi)
    }
}

/// The timer in its three modes. The TSC's rate is measured against the ACPI PM
/// timer (3.579545 MHz on both machines) and every delay is printed in TSC ticks;
/// the APIC timer counts at 1 GHz before its divider on quern and on QEMU.
#[test]
fn lapic_timer_modes_against_the_tsc() {
    let k = kernel32(|k| {
        k.apic_init()?;
        k.calibrate_tsc()?;
        k.put_mem("CAL", T_CAL)?;
        k.put_mem("CAL_PM", T_CAL_PM)?;

        // One-shot.
        k.clear_log()?;
        k.apic_w(0x3e0, 0b0011)?;
        k.apic_w(0x320, 0x40)?;
        k.tsc_to(T_T0)?;
        k.apic_w(0x380, ONESHOT_COUNT)?;
        k.put_apic("OS_CC1", 0x390)?;
        k.wait_pm(PM_PER_MS)?;
        k.put_apic("OS_CC2", 0x390)?;
        k.put_apic("OS_ICR", 0x380)?;
        k.wait_count(0x40, 1)?;
        k.a.mov(eax, dword_ptr(V_TSC))?;
        k.a.sub(eax, dword_ptr(T_T0))?;
        k.save(T_TMP)?;
        k.put_mem("OS_TSC", T_TMP)?;
        // No second expiry in twice the period; the count stays at 0.
        k.wait_pm_sti(32 * PM_PER_MS)?;
        k.put_mem("OS_N", COUNTS + 4 * 0x40)?;
        k.put_apic("OS_CC_END", 0x390)?;

        // Periodic. The expired one-shot is stopped first (initial count 0): KVM's
        // in-kernel APIC re-fires an expired one-shot when the divider changes.
        k.apic_w(0x380, 0)?;
        k.apic_w(0x3e0, 0b0001)?;
        k.apic_w(0x320, 0x2_0041)?;
        k.put_apic("PER_LVT", 0x320)?;
        k.tsc_to(T_T0)?;
        k.apic_w(0x380, PERIODIC_COUNT)?;
        k.put_apic("PER_CC", 0x390)?;
        k.wait_count(0x41, PERIODIC_N)?;
        k.a.mov(eax, dword_ptr(V_TSC))?;
        k.a.sub(eax, dword_ptr(T_T0))?;
        k.save(T_TMP)?;
        k.put_apic("PER_CC_RUN", 0x390)?;
        // An initial count of 0 stops it (interrupts still off since the wait's CLI).
        k.apic_w(0x380, 0)?;
        k.put_mem("PER_N_STOP", COUNTS + 4 * 0x41)?;
        k.put_mem("PER_TSC", T_TMP)?;
        k.wait_pm_sti(5 * PM_PER_MS)?;
        k.put_mem("PER_N", COUNTS + 4 * 0x41)?;
        k.put_apic("PER_CC_END", 0x390)?;

        // TSC-deadline, if CPUID.1:ECX[24] says so.
        let mut no_dl = k.a.create_label();
        k.a.mov(eax, 1u32)?;
        k.a.cpuid()?;
        k.a.mov(esi, ecx)?;
        k.a.shr(esi, 24)?;
        k.a.and(esi, 1)?;
        k.put("DL_CPUID")?;
        k.a.mov(eax, 1u32)?;
        k.a.cpuid()?;
        k.a.bt(ecx, 24)?;
        k.a.jnc(no_dl)?;
        k.apic_w(0x320, 0x4_0042)?;
        k.put_apic("DL_LVT", 0x320)?;
        // Deadline: now + a quarter of CAL (5 ms and a little more).
        {
            let a = &mut k.a;
            a.mov(ebx, dword_ptr(T_CAL))?;
            a.shr(ebx, 2)?;
            a.rdtsc()?;
            a.mov(dword_ptr(T_T0), eax)?;
            a.mov(dword_ptr(T_T0 + 4), edx)?;
            a.add(eax, ebx)?;
            a.adc(edx, 0)?;
            a.mov(ecx, 0x6e0u32)?;
            a.wrmsr()?;
        }
        k.wait_count(0x42, 1)?;
        k.a.mov(eax, dword_ptr(V_TSC))?;
        k.a.sub(eax, dword_ptr(T_T0))?;
        k.save(T_TMP)?;
        k.put_mem("DL_TSC", T_TMP)?;
        // The MSR reads 0 once it fired.
        k.a.mov(ecx, 0x6e0u32)?;
        k.a.rdmsr()?;
        k.a.or(eax, edx)?;
        k.save(T_TMP)?;
        k.put_mem("DL_MSR_AFTER", T_TMP)?;
        // Armed, then disarmed by writing 0: nothing fires.
        {
            let a = &mut k.a;
            a.rdtsc()?;
            a.add(eax, dword_ptr(T_CAL))?; // 20 ms away
            a.adc(edx, 0)?;
            a.mov(ecx, 0x6e0u32)?;
            a.wrmsr()?;
            a.xor(eax, eax)?;
            a.xor(edx, edx)?;
            a.wrmsr()?;
        }
        k.wait_pm_sti(30 * PM_PER_MS)?;
        k.put_mem("DL_N_DISARMED", COUNTS + 4 * 0x42)?;
        // A deadline already past fires at once.
        k.a.mov(ecx, 0x6e0u32)?;
        k.a.mov(eax, 1u32)?;
        k.a.xor(edx, edx)?;
        k.a.wrmsr()?;
        k.wait_count(0x42, 2)?;
        k.put_mem("DL_N", COUNTS + 4 * 0x42)?;
        k.a.set_label(&mut no_dl)?;
        k.exit(0x11)
    });
    run_all("lapic_timer_modes_against_the_tsc", &k, check_timer);
}

fn check_timer(o: &Out) {
    let d = || format!("{}:\n{}", o.emu.name(), o.run.describe());
    exited(o, 0x11);
    // TSC ticks per nanosecond, from the PM timer.
    let cal = o.get("CAL");
    let cal_ns = f64::from(o.get("CAL_PM")) * 1e9 / 3_579_545.0;
    let tsc_per_ns = f64::from(cal) / cal_ns;
    assert!(tsc_per_ns > 0.1, "TSC rate {tsc_per_ns} ticks/ns is implausible: {}", d());
    if matches!(o.emu, Emu::QuernTcg | Emu::QuernTcg64) {
        // quern's guest TSC runs at 1 GHz (apic_bus::TSC_HZ), like the PM timer off
        // the host's monotonic clock; the paired reads bound the error to 10 µs.
        assert!((0.99..1.01).contains(&tsc_per_ns), "quern's TSC is not 1 GHz: {tsc_per_ns}: {}", d());
    }
    // Elapsed time in ns from a TSC delta.
    let ns = |key: &str| f64::from(o.get(key)) / tsc_per_ns;
    // Tolerance: a timer can never fire before its time (both emulators compute the
    // count from the host clock), so the lower bound is the exact period less 3% for
    // the TSC calibration (paired reads keep its error near 0.1%; the rest is margin
    // for the PM timer's and the TSC's own granularity under an emulator).
    // It may fire late by however long the host did not run the emulator's threads:
    // on two shared cores running tests in parallel that is tens of milliseconds, so
    // the upper bound is loose (3x plus 100 ms); it still catches a wrong divider
    // (2x-128x), a timer counting in the wrong unit, or one that never stops.
    let within = |key: &str, want_ns: f64| {
        let got = ns(key);
        assert!(
            got >= want_ns * 0.97 && got <= want_ns * 3.0 + 100e6,
            "{key}: {:.3} ms, expected {:.3} ms (at least, and at most 3x + 100 ms): {}",
            got / 1e6,
            want_ns / 1e6,
            d()
        );
    };

    // One-shot, ÷16.
    let (c1, c2) = (o.get("OS_CC1"), o.get("OS_CC2"));
    assert!(c1 <= ONESHOT_COUNT && c1 > 0, "one-shot current count at start {c1}: {}", d());
    // A PM millisecond passed between the reads: at least 1 ms / 16 ns of counts.
    assert!(c2 < c1 && c1 - c2 >= 1_000_000 / 16 * 97 / 100, "current count {c1} then {c2}: {}", d());
    eq(o, "OS_ICR", ONESHOT_COUNT);
    within("OS_TSC", f64::from(ONESHOT_COUNT) * 16.0);
    eq(o, "OS_N", 1);
    eq(o, "OS_CC_END", 0);

    // Periodic, ÷4.
    eq(o, "PER_LVT", 0x2_0041);
    assert!(o.get("PER_CC") <= PERIODIC_COUNT, "{}", d());
    assert!(o.get("PER_CC_RUN") <= PERIODIC_COUNT, "{}", d());
    within("PER_TSC", f64::from(PERIODIC_N) * f64::from(PERIODIC_COUNT) * 4.0);
    // The loop saw the Nth. A host stall longer than a period between the Nth's IRET
    // and the loop's CLI lets one more in before the stop (a busy CI host does that);
    // after the stop at most the one already due in IRR may arrive.
    let (stop, n) = (o.get("PER_N_STOP"), o.get("PER_N"));
    assert!((PERIODIC_N..=PERIODIC_N + 1).contains(&stop), "periodic interrupts when stopping: {stop}: {}", d());
    assert!((stop..=stop + 1).contains(&n), "periodic interrupts: {stop} at the stop, {n} after: {}", d());
    eq(o, "PER_CC_END", 0);

    // TSC-deadline.
    if o.get("DL_CPUID") == 0 {
        assert!(!matches!(o.emu, Emu::QuernTcg | Emu::QuernTcg64), "quern's -cpu max must have TSC-deadline: {}", d());
        let why = if o.emu == Emu::QemuTcg { "QEMU 7.2's TCG does not offer it" } else { "KVM here does not offer it" };
        report(&format!(
            "NOT RUN: lapic_timer_modes_against_the_tsc: TSC-deadline mode under {}: CPUID.1:ECX[24] is clear ({why})",
            o.emu.name()
        ));
        return;
    }
    eq(o, "DL_LVT", 0x4_0042);
    // At least the deadline's distance in TSC ticks (no calibration involved).
    let ticks = o.get("DL_TSC");
    assert!(ticks >= cal / 4, "TSC deadline fired {ticks} ticks after arming, before {}: {}", cal / 4, d());
    within("DL_TSC", f64::from(cal / 4) / tsc_per_ns);
    eq(o, "DL_MSR_AFTER", 0);
    eq(o, "DL_N_DISARMED", 1);
    eq(o, "DL_N", 2);
}

// ---------------------------------------------------------------------------------
// 3. Self-IPIs through the ICR.
// ---------------------------------------------------------------------------------

/// Fixed IPIs to this APIC by every addressing the ICR has: physical destination =
/// own ID, broadcast 0xFF, logical (flat model, LDR bit 0), the self and
/// all-including-self shorthands; and ones that must not arrive: another physical
/// ID, a logical destination not in the LDR, all-excluding-self. The delivery-status
/// bit reads idle after each send, and the ICR reads back what was written.
#[test]
fn self_ipis_through_the_icr() {
    const SENDS: [(&str, u8, u32, u8); 9] = [
        // (key, destination byte, ICR low, vector)
        ("PHYS_SELF", 0, 0x0041, 0x41),
        ("PHYS_BCAST", 0xff, 0x0042, 0x42),
        ("LOGICAL", 0x01, 0x0843, 0x43),
        ("SH_SELF", 0, 0x4_0044, 0x44),
        ("SH_ALL", 0, 0x8_0045, 0x45),
        ("PHYS_OTHER", 5, 0x0046, 0x46),
        ("LOGICAL_OTHER", 0x02, 0x0847, 0x47),
        ("SH_OTHERS", 0, 0xc_0048, 0x48),
        ("LOWEST_PRIO", 0, 0x0149, 0x49),
    ];
    let k = kernel32(|k| {
        k.apic_init()?;
        k.clear_log()?;
        // Our ID (bits 31:24 of the ID register) goes into the physical sends.
        k.ld(eax, APIC + 0x20)?;
        k.a.shr(eax, 24)?;
        k.save(V_USER)?;
        k.put_mem("ID", V_USER)?;
        k.apic_w(0xe0, 0xffff_ffff)?; // DFR: flat model
        k.apic_w(0xd0, 0x0100_0000)?; // LDR: logical ID bit 0
        k.put_apic("LDR", 0xd0)?;
        for (key, dest, lo, _) in SENDS {
            if dest == 0 && lo & 0xc_0000 == 0 {
                // Physical to our own ID.
                k.ld(eax, V_USER)?;
                k.a.shl(eax, 24)?;
                k.st_r(APIC + 0x310, eax)?;
            } else {
                k.apic_w(0x310, u32::from(dest) << 24)?;
            }
            k.apic_w(0x300, lo)?;
            // Delivery is immediate in both emulators: the first read after the
            // write already shows delivery status (bit 12) idle.
            k.ld(eax, APIC + 0x300)?;
            k.save(V_USER + 4)?;
            k.put_mem(&format!("{key}_ICR"), V_USER + 4)?;
            k.window()?;
        }
        for (key, _, _, v) in SENDS {
            k.put_mem(&format!("{key}_N"), COUNTS + 4 * u32::from(v))?;
        }
        k.put_mem("TOTAL", V_LOGN)?;
        k.apic_w(0x280, 0)?;
        k.put_apic("ESR", 0x280)?;
        // An illegal vector (below 16). IF stays 0 from here: QEMU delivers it.
        k.icr(0, 0x4_0005)?;
        k.put_apic("ILLEGAL_IRR0", 0x200)?;
        k.apic_w(0x280, 0)?;
        k.put_apic("ESR_ILLEGAL", 0x280)?;
        k.exit(0x13)
    });
    run_all("self_ipis_through_the_icr", &k, |o| {
        exited(o, 0x13);
        eq(o, "ID", 0);
        eq(o, "LDR", 0x0100_0000);
        for (key, _, lo, _) in SENDS {
            // Read back as written, delivery status idle.
            eq(o, &format!("{key}_ICR"), lo);
            let arrives = !key.ends_with("OTHER") && key != "SH_OTHERS";
            eq(o, &format!("{key}_N"), u32::from(arrives));
        }
        eq(o, "TOTAL", 6);
        eq(o, "ESR", 0);
        // The SDM: a vector below 16 is an error (ESR bit 5, send illegal vector) and
        // is not delivered (quern). QEMU 7.2 and KVM accept it into the IRR with no
        // error (QEMU then delivers it; for KVM its class 0 never beats the PPR).
        match o.emu {
            Emu::QemuTcg | Emu::QuernKvm => {
                eq(o, "ILLEGAL_IRR0", 1 << 5);
                eq(o, "ESR_ILLEGAL", 0);
            }
            Emu::QuernTcg | Emu::QuernTcg64 => {
                eq(o, "ILLEGAL_IRR0", 0);
                eq(o, "ESR_ILLEGAL", 1 << 5);
            }
        }
    });
}

// ---------------------------------------------------------------------------------
// 4. The IOAPIC: redirection, masking, level-triggered pins with Remote IRR.
// ---------------------------------------------------------------------------------

impl K {
    /// Writes IOAPIC register `reg` (through IOREGSEL/IOWIN).
    fn ioapic_w(&mut self, reg: u32, v: u32) -> R {
        self.st(IOAPIC, reg)?;
        self.st(IOAPIC + 0x10, v)
    }

    /// Reads IOAPIC register `reg` into EAX.
    fn ioapic_r(&mut self, reg: u32) -> R {
        self.st(IOAPIC, reg)?;
        self.ld(eax, IOAPIC + 0x10)
    }

    fn put_ioapic(&mut self, key: &str, reg: u32) -> R {
        self.ioapic_r(reg)?;
        self.a.mov(esi, eax)?;
        self.put(key)
    }

    /// Jumps over code emitted by `f` (hooks called through the HOOKS table).
    fn aside(&mut self, f: impl FnOnce(&mut K) -> R) -> R {
        let mut over = self.a.create_label();
        self.a.jmp(over)?;
        f(self)?;
        self.a.set_label(&mut over)?;
        self.a.nop()
    }
}

/// Where the UART hook records redirection entry 4 (low dword) on its n-th call:
/// before its EOI at +8n, after at +8n+4.
const U_RIRR: u32 = V_USER + 0x40;
const U_VARS: u32 = V_USER + 0x80;

/// Edge: the PIT (ISA IRQ0 → pin 2) through a redirection entry; masking the entry
/// holds its interrupts off; rewriting the vector redirects them. Level: the UART's
/// THR-empty interrupt (IRQ4 → pin 4, level/active-high): held while masked and
/// delivered on unmasking, Remote IRR set until the EOI, set again by the EOI while
/// the UART still asserts the line, clear after an EOI once the handler turned the
/// interrupt off in IER. The 8259s are masked: nothing comes through LINT0.
#[test]
fn ioapic_edge_level_remote_irr_and_masking() {
    let k = kernel32(|k| {
        k.apic_init()?;
        k.clear_log()?;
        k.put_ioapic("IOAPIC_VER", 1)?;
        k.put_ioapic("ENTRY2_RESET", 0x14)?;

        // Edge: PIT channel 0 at 1 kHz (mode 2) on pin 2, vector 0x60, to APIC 0.
        k.ioapic_w(0x15, 0)?;
        k.ioapic_w(0x14, 0x60)?;
        for (port, v) in [(0x43u32, 0x34u32), (0x40, 1193 & 0xff), (0x40, 1193 >> 8)] {
            k.a.mov(al, v)?;
            k.a.out(port, al)?;
        }
        k.wait_count_ms(0x60, 5, 500)?;
        k.put_mem("EDGE_N", COUNTS + 4 * 0x60)?;
        k.put_ioapic("EDGE_ENTRY", 0x14)?;
        // Masked: 10 ms (10 PIT periods) with interrupts on, nothing arrives. (One
        // the IOAPIC sent before the mask may still wait in the local APIC: let it in
        // first.)
        k.ioapic_w(0x14, 0x1_0060)?;
        k.window()?;
        k.a.mov(eax, dword_ptr(COUNTS + 4 * 0x60))?;
        k.save(U_VARS + 0x24)?;
        k.wait_pm_sti(10 * PM_PER_MS)?;
        k.a.mov(eax, dword_ptr(COUNTS + 4 * 0x60))?;
        k.a.sub(eax, dword_ptr(U_VARS + 0x24))?;
        k.save(U_VARS)?;
        k.put_mem("EDGE_WHILE_MASKED", U_VARS)?;
        // Redirected to vector 0x62.
        k.ioapic_w(0x14, 0x62)?;
        k.wait_count_ms(0x62, 3, 500)?;
        k.ioapic_w(0x14, 0x1_0062)?;
        k.put_mem("REDIR_N", COUNTS + 4 * 0x62)?;
        k.a.mov(eax, dword_ptr(COUNTS + 4 * 0x60))?;
        k.a.sub(eax, dword_ptr(U_VARS + 0x24))?;
        k.save(U_VARS)?;
        k.put_mem("EDGE_OLD_VECTOR_AFTER", U_VARS)?;

        // Level: the UART hook records Remote IRR around its EOI and, on its second
        // call, clears IER first.
        k.aside(|k| {
            k.here("uart_hook")?;
            let mut keep = k.a.create_label();
            k.a.mov(ecx, dword_ptr(COUNTS + 4 * 0x61))?;
            k.a.and(ecx, 3)?;
            k.ioapic_r(0x18)?;
            k.a.mov(dword_ptr(ecx * 8 + U_RIRR), eax)?;
            k.a.cmp(ecx, 2)?;
            k.a.jb(keep)?;
            k.a.mov(dx, 0x3f9u32)?;
            k.a.xor(al, al)?;
            k.a.out(dx, al)?;
            k.a.set_label(&mut keep)?;
            k.apic_w(0xb0, 0)?;
            k.ioapic_r(0x18)?;
            k.a.mov(dword_ptr(ecx * 8 + U_RIRR + 4), eax)?;
            k.a.ret()
        })?;
        k.hook(0x61, "uart_hook")?;
        k.no_eoi(0x61, true)?;
        k.ioapic_w(0x19, 0)?;
        // Masked, level, active high, vector 0x61.
        k.ioapic_w(0x18, 0x1_8061)?;
        // MCR: DTR, RTS, OUT2 (the PC's interrupt enable); IER: THR empty. While IER
        // has THRI the UART's line stays up: print nothing until it is off.
        for (port, v) in [(0x3fcu32, 0x0bu32), (0x3f9, 0x02)] {
            k.a.mov(dx, port)?;
            k.a.mov(al, v)?;
            k.a.out(dx, al)?;
        }
        k.wait_pm_sti(5 * PM_PER_MS)?;
        k.a.mov(eax, dword_ptr(COUNTS + 4 * 0x61))?;
        k.save(U_VARS + 4)?;
        k.ioapic_r(0x18)?;
        k.save(U_VARS + 8)?;
        k.ioapic_w(0x18, 0x8061)?; // unmasked, IF still 0
        k.ioapic_r(0x18)?;
        k.save(U_VARS + 12)?;
        k.ld(eax, APIC + 0x230)?; // IRR, vectors 0x60-0x7f
        k.save(U_VARS + 16)?;
        k.ld(eax, APIC + 0x1b0)?; // TMR, vectors 0x60-0x7f
        k.save(U_VARS + 20)?;
        k.wait_count(0x61, 2)?;
        k.wait_pm_sti(5 * PM_PER_MS)?;
        k.put_mem("LEVEL_WHILE_MASKED", U_VARS + 4)?;
        k.put_mem("LEVEL_ENTRY_MASKED", U_VARS + 8)?;
        k.put_mem("LEVEL_ENTRY_UNMASKED", U_VARS + 12)?;
        k.put_mem("LEVEL_IRR3", U_VARS + 16)?;
        k.put_mem("LEVEL_TMR3", U_VARS + 20)?;
        for n in 1..=2 {
            k.put_mem(&format!("RIRR{n}_BEFORE_EOI"), U_RIRR + 8 * n)?;
            k.put_mem(&format!("RIRR{n}_AFTER_EOI"), U_RIRR + 8 * n + 4)?;
        }
        k.put_mem("LEVEL_N", COUNTS + 4 * 0x61)?;
        k.put_ioapic("LEVEL_ENTRY_END", 0x18)?;
        k.put_mem("TOTAL", V_LOGN)?;
        k.exit(0x14)
    });
    run_all("ioapic_edge_level_remote_irr_and_masking", &k, |o| {
        exited(o, 0x14);
        // The 82093AA's 0x11 (quern) or QEMU's 0x20, 24 entries (max index 23).
        let ver = o.get("IOAPIC_VER");
        assert!(ver == 0x17_0011 || ver == 0x17_0020, "{}: IOAPIC version {ver:#x}", o.emu.name());
        eq(o, "ENTRY2_RESET", 0x1_0000);
        let n = o.get("EDGE_N");
        assert!((5..=7).contains(&n), "{}: {n} PIT interrupts:\n{}", o.emu.name(), o.run.describe());
        eq(o, "EDGE_ENTRY", 0x60);
        eq(o, "EDGE_WHILE_MASKED", 0);
        let n = o.get("REDIR_N");
        assert!((3..=4).contains(&n), "{}: {n} redirected interrupts:\n{}", o.emu.name(), o.run.describe());
        eq(o, "EDGE_OLD_VECTOR_AFTER", 0);
        eq(o, "LEVEL_WHILE_MASKED", 0);
        eq(o, "LEVEL_ENTRY_MASKED", 0x1_8061);
        eq(o, "LEVEL_ENTRY_UNMASKED", 0xc061);
        eq(o, "LEVEL_IRR3", 1 << 1);
        eq(o, "LEVEL_TMR3", 1 << 1);
        eq(o, "RIRR1_BEFORE_EOI", 0xc061);
        eq(o, "RIRR1_AFTER_EOI", 0xc061);
        eq(o, "RIRR2_BEFORE_EOI", 0xc061);
        let why = "PVM's in-kernel IOAPIC delivers the pin again at the EOI after the line went low \
                   (Remote IRR reads clear before that EOI and set after it)";
        eq_pvm(o, "RIRR2_AFTER_EOI", 0x8061, why);
        eq_pvm(o, "LEVEL_N", 2, why);
        eq(o, "LEVEL_ENTRY_END", 0x8061);
    });
}

// ---------------------------------------------------------------------------------
// 5. x2APIC: MSR access and its #GP rules.
// ---------------------------------------------------------------------------------

impl K {
    /// RDMSR `msr` (expected not to fault) and prints EAX as `KEY`.
    fn put_msr(&mut self, key: &str, msr: u32) -> R {
        self.a.mov(ecx, msr)?;
        self.a.rdmsr()?;
        self.a.mov(esi, eax)?;
        self.put(key)
    }

    fn wrmsr(&mut self, msr: u32, v: u64) -> R {
        self.a.mov(ecx, msr)?;
        self.a.mov(eax, v as u32)?;
        self.a.mov(edx, (v >> 32) as u32)?;
        self.a.wrmsr()
    }

    /// Prints CPUID.1:ECX bit `bit` as `KEY` (0/1) and jumps to `absent` if clear.
    fn cpuid1_ecx(&mut self, key: &str, bit: u32, absent: CodeLabel) -> R {
        self.a.mov(eax, 1u32)?;
        self.a.cpuid()?;
        self.a.mov(esi, ecx)?;
        self.a.shr(esi, bit)?;
        self.a.and(esi, 1)?;
        self.push_si()?;
        self.put(key)?;
        self.pop_si()?;
        self.a.test(esi, esi)?;
        self.a.jz(absent)
    }
}

/// The x2APIC: entered through IA32_APIC_BASE.EXTD, its registers as MSRs (ID,
/// version, LDR derived from the ID, SVR kept from xAPIC mode, ICR as one 64-bit
/// register, SELF IPI, EOI), the #GP rules (reads of write-only registers, registers
/// that do not exist in x2APIC mode, reserved bits, writes of read-only registers,
/// x2APIC → xAPIC without disabling first), and the xAPIC page no longer the APIC.
#[test]
fn x2apic_msrs_and_gp_rules() {
    let k = kernel32(|k| {
        k.apic_init()?;
        k.clear_log()?;
        let mut absent = k.a.create_label();
        k.cpuid1_ecx("X2_CPUID", 21, absent)?;
        k.put_msr("BASE", 0x1b)?;
        k.wrmsr(0x1b, 0xfee0_0000 | 1 << 8 | 1 << 11 | 1 << 10)?;
        k.a.mov(dword_ptr(V_EOI_MODE), 1u32)?;
        k.put_msr("BASE_X2", 0x1b)?;
        k.put_msr("X2_ID", 0x802)?;
        k.put_msr("X2_VER", 0x803)?;
        k.put_msr("X2_LDR", 0x80d)?;
        k.put_msr("X2_SVR", 0x80f)?;
        k.put_msr("X2_TPR", 0x808)?;
        k.put_apic("X2_MMIO_VER", 0x30)?;
        // A write to the page is not a TPR write.
        k.apic_w(0x80, 0xf0)?;
        k.put_msr("X2_TPR_AFTER_MMIO", 0x808)?;

        k.rdmsr_gp("GP_RD_EOI", 0x80b)?;
        k.rdmsr_gp("GP_RD_SELF_IPI", 0x83f)?;
        k.rdmsr_gp("GP_RD_ICR_HI", 0x831)?;
        k.rdmsr_gp("GP_RD_DFR", 0x80e)?;
        k.rdmsr_gp("GP_RD_RESERVED", 0x800)?;
        k.rdmsr_gp("GP_RD_ICR", 0x830)?;
        k.wrmsr_gp("GP_WR_TPR_RESERVED", 0x808, 0x100)?;
        k.wrmsr_gp("GP_WR_SVR_HIGH", 0x80f, 1 << 32 | 0x1ff)?;
        k.wrmsr_gp("GP_WR_ID", 0x802, 0)?;
        k.wrmsr_gp("GP_WR_VER", 0x803, 0)?;
        k.wrmsr_gp("GP_WR_EOI_NONZERO", 0x80b, 1)?;
        k.wrmsr_gp("GP_WR_LDR", 0x80d, 0)?;
        k.wrmsr_gp("GP_WR_TPR_OK", 0x808, 0)?;

        // Interrupts: SELF IPI, the 64-bit ICR to our own x2APIC ID, TPR masking.
        k.wrmsr(0x83f, 0x45)?;
        k.window()?;
        k.wrmsr(0x830, 0x46)?;
        k.window()?;
        k.wrmsr(0x808, 0x50)?;
        k.wrmsr(0x83f, 0x47)?;
        k.window()?;
        k.put_mem("TPR_HELD", COUNTS + 4 * 0x47)?;
        k.put_msr("X2_PPR", 0x80a)?;
        k.wrmsr(0x808, 0)?;
        k.window()?;
        k.put_log("X2_LOG")?;
        k.put_msr("X2_ICR", 0x830)?;

        // x2APIC → xAPIC directly is #GP; through disabled it works.
        k.wrmsr_gp("GP_X2_TO_XAPIC", 0x1b, 0xfee0_0000 | 1 << 8 | 1 << 11)?;
        k.wrmsr_gp("GP_X2_TO_DISABLED", 0x1b, 0xfee0_0000 | 1 << 8)?;
        k.a.mov(dword_ptr(V_EOI_MODE), 0u32)?;
        k.wrmsr_gp("GP_DISABLED_TO_XAPIC", 0x1b, 0xfee0_0000 | 1 << 8 | 1 << 11)?;
        k.put_msr("BASE_END", 0x1b)?;
        k.rdmsr_gp("GP_RD_X2_IN_XAPIC", 0x802)?;
        k.put_apic("XAPIC_ID_END", 0x20)?;
        k.put_apic("XAPIC_VER_END", 0x30)?;
        k.a.set_label(&mut absent)?;
        k.exit(0x15)
    });
    run_all("x2apic_msrs_and_gp_rules", &k, |o| {
        exited(o, 0x15);
        if o.get("X2_CPUID") == 0 {
            assert!(
                !matches!(o.emu, Emu::QuernTcg | Emu::QuernTcg64),
                "quern's -cpu max must have x2apic:\n{}",
                o.run.describe()
            );
            report(&format!(
                "NOT RUN: x2apic_msrs_and_gp_rules under {}: CPUID.1:ECX[21] (x2apic) is clear with -cpu max{}",
                o.emu.name(),
                if o.emu == Emu::QemuTcg { " (QEMU 7.2's TCG has no x2APIC; it came in 8.1)" } else { "" }
            ));
            return;
        }
        eq(o, "BASE", 0xfee0_0900);
        eq(o, "BASE_X2", 0xfee0_0d00);
        eq(o, "X2_ID", 0);
        eq(o, "X2_VER", 0x5_0014);
        eq(o, "X2_LDR", 1);
        eq(o, "X2_SVR", 0x1ff);
        eq(o, "X2_TPR", 0);
        eq(o, "X2_MMIO_VER", 0xffff_ffff);
        eq(o, "X2_TPR_AFTER_MMIO", 0);
        for key in [
            "GP_RD_EOI",
            "GP_RD_SELF_IPI",
            "GP_RD_ICR_HI",
            "GP_RD_DFR",
            "GP_RD_RESERVED",
            "GP_WR_SVR_HIGH",
            "GP_WR_ID",
            "GP_WR_VER",
            "GP_WR_LDR",
            "GP_X2_TO_XAPIC",
        ] {
            eq(o, key, 1);
        }
        // The SDM makes reserved bits of the x2APIC TPR and a non-zero EOI write #GP;
        // KVM's in-kernel APIC takes both (it checks only bits 63:32), quern faults.
        let sdm = u32::from(o.emu != Emu::QuernKvm);
        eq(o, "GP_WR_TPR_RESERVED", sdm);
        eq(o, "GP_WR_EOI_NONZERO", sdm);
        for key in ["GP_RD_ICR", "GP_WR_TPR_OK", "GP_X2_TO_DISABLED", "GP_DISABLED_TO_XAPIC"] {
            eq(o, key, 0);
        }
        eq(o, "TPR_HELD", 0);
        eq(o, "X2_PPR", 0x50);
        eq(o, "X2_LOG_N", 3);
        eq(o, "X2_LOG", 0x4546_4700);
        eq(o, "X2_ICR", 0x46);
        eq(o, "BASE_END", 0xfee0_0900);
        eq(o, "GP_RD_X2_IN_XAPIC", 1);
        eq(o, "XAPIC_ID_END", 0);
        eq(o, "XAPIC_VER_END", 0x5_0014);
    });
}

// ---------------------------------------------------------------------------------
// 6. Relocation, software disable, global disable.
// ---------------------------------------------------------------------------------

/// Where the relocation test moves the xAPIC page: in the PCI hole, where nothing
/// else is mapped on either machine with -m 64.
const NEW_BASE: u32 = 0xc000_0000;

impl K {
    /// Prints CPUID.1:EDX bit 9 (APIC present) as `KEY`.
    fn put_cpuid_apic(&mut self, key: &str) -> R {
        self.a.mov(eax, 1u32)?;
        self.a.cpuid()?;
        self.a.mov(esi, edx)?;
        self.a.shr(esi, 9)?;
        self.a.and(esi, 1)?;
        self.put(key)
    }
}

/// IA32_APIC_BASE relocation (the page answers at the new base, not at the old,
/// and an IPI sent there arrives), software disable through SVR (the spurious vector
/// kept as written, LVT entries masked and kept masked, NMIs still accepted, fixed
/// IPIs not delivered), re-enabling, and global disable through IA32_APIC_BASE.EN
/// (the page stops answering, CPUID.1:EDX.APIC follows, and re-enabling gives the
/// power-up register state).
#[test]
fn apic_relocation_and_disable() {
    let k = kernel32(|k| {
        k.apic_init()?;
        k.clear_log()?;
        k.put_msr("BASE", 0x1b)?;
        k.wrmsr(0x1b, u64::from(NEW_BASE) | 0x900)?;
        k.put_msr("BASE_MOVED", 0x1b)?;
        k.put_mem("NEW_VER", NEW_BASE + 0x30)?;
        k.put_mem("NEW_SVR", NEW_BASE + 0xf0)?;
        k.put_mem("OLD_VER", APIC + 0x30)?;
        // A self-IPI through the page at its new address, EOI'd there.
        k.a.mov(dword_ptr(V_APIC), NEW_BASE)?;
        k.st(NEW_BASE + 0x300, 0x4_0049)?;
        k.window()?;
        k.put_mem("NEW_IPI_N", COUNTS + 4 * 0x49)?;
        k.wrmsr(0x1b, u64::from(APIC) | 0x900)?;
        k.a.mov(dword_ptr(V_APIC), APIC)?;
        k.put_apic("BACK_VER", 0x30)?;

        // Software disable with spurious vector 0xEF.
        k.no_eoi(0xef, true)?;
        k.apic_w(0x320, 0x4a)?;
        k.apic_w(0x370, 0x4b)?;
        k.apic_w(0xf0, 0xef)?;
        k.put_apic("SVR_OFF", 0xf0)?;
        k.put_apic("LVT_TIMER_OFF", 0x320)?;
        k.put_apic("LVT_ERROR_OFF", 0x370)?;
        k.apic_w(0x320, 0x4a)?;
        k.put_apic("LVT_TIMER_UNMASK_TRY", 0x320)?;
        k.icr(0, 0x4_004c)?;
        k.window()?;
        k.put_mem("FIXED_WHILE_OFF", COUNTS + 4 * 0x4c)?;
        k.put_apic("IRR2_WHILE_OFF", 0x220)?;
        // NMI, physical, to APIC 0 (us); neither machine takes it within the very
        // instruction that sent it, so wait a little.
        k.icr(0, 0x400)?;
        k.wait_pm(PM_PER_MS)?;
        k.put_mem("NMI_WHILE_OFF", COUNTS + 4 * 2)?;
        k.apic_w(0xf0, 0x1ef)?;
        k.put_apic("SVR_ON", 0xf0)?;
        k.put_apic("LVT_TIMER_ON", 0x320)?;
        k.window()?;
        k.put_mem("FIXED_AFTER_ON", COUNTS + 4 * 0x4c)?;
        k.put_mem("SPURIOUS_N", COUNTS + 4 * 0xef)?;

        // Global disable.
        k.put_cpuid_apic("CPUID_APIC")?;
        k.wrmsr(0x1b, u64::from(APIC) | 0x100)?;
        k.put_msr("BASE_DISABLED", 0x1b)?;
        k.put_apic("DISABLED_VER", 0x30)?;
        k.put_cpuid_apic("CPUID_APIC_DISABLED")?;
        k.wrmsr(0x1b, u64::from(APIC) | 0x900)?;
        k.put_msr("BASE_REENABLED", 0x1b)?;
        k.put_cpuid_apic("CPUID_APIC_REENABLED")?;
        k.put_apic("REENABLED_VER", 0x30)?;
        k.put_apic("REENABLED_SVR", 0xf0)?;
        k.put_apic("REENABLED_LVT_TIMER", 0x320)?;
        k.put_apic("REENABLED_LVT_LINT0", 0x350)?;
        k.put_log("LOG")?;
        k.exit(0x16)
    });
    run_all("apic_relocation_and_disable", &k, |o| {
        exited(o, 0x16);
        eq(o, "BASE", 0xfee0_0900);
        eq(o, "BASE_MOVED", 0xc000_0900);
        eq(o, "BACK_VER", 0x5_0014);
        eq(o, "SVR_OFF", 0xef);
        eq(o, "FIXED_WHILE_OFF", 0);
        eq(o, "NMI_WHILE_OFF", 1);
        eq(o, "SVR_ON", 0x1ef);
        // No spurious interrupt happens in these flows (one needs an interrupt
        // withdrawn between INTR and INTA, a race neither machine can be made to run).
        eq(o, "SPURIOUS_N", 0);
        eq(o, "CPUID_APIC", 1);
        eq(o, "BASE_DISABLED", 0xfee0_0100);
        eq(o, "CPUID_APIC_DISABLED", 0);
        eq(o, "REENABLED_LVT_LINT0", 0x1_0000);
        if o.emu == Emu::QemuTcg {
            // QEMU 7.2's TCG APIC departs from the SDM here, so only the above is
            // compared with it: its MMIO page stays at 0xFEE00000 whatever
            // IA32_APIC_BASE says ("XXX: what if the base changes?" in
            // x86_cpu_apic_realize); software disable leaves the LVT masks alone; a
            // fixed IPI arriving while software-disabled waits in the IRR and is
            // delivered once re-enabled (KVM and quern drop it: the SDM has a
            // software-disabled APIC respond to NMI, SMI, INIT and SIPI only); the
            // page still answers while globally disabled; and once globally disabled
            // the APIC cannot be enabled again before a reset.
            eq(o, "NEW_VER", 0);
            eq(o, "OLD_VER", 0x5_0014);
            eq(o, "NEW_IPI_N", 0);
            eq(o, "LVT_TIMER_OFF", 0x4a);
            eq(o, "IRR2_WHILE_OFF", 1 << 12);
            eq(o, "FIXED_AFTER_ON", 1);
            eq(o, "DISABLED_VER", 0x5_0014);
            eq(o, "BASE_REENABLED", 0xfee0_0100);
            eq(o, "LOG", 0x024c_0000);
            return;
        }
        // The SDM's behaviour (and KVM's in-kernel APIC's).
        eq(o, "NEW_VER", 0x5_0014);
        eq(o, "NEW_SVR", 0x1ff);
        eq(o, "OLD_VER", 0xffff_ffff);
        eq(o, "NEW_IPI_N", 1);
        eq(o, "LVT_TIMER_OFF", 0x1_004a);
        eq(o, "LVT_ERROR_OFF", 0x1_004b);
        eq(o, "LVT_TIMER_UNMASK_TRY", 0x1_004a);
        eq(o, "IRR2_WHILE_OFF", 0);
        eq(o, "LVT_TIMER_ON", 0x1_004a);
        eq(o, "FIXED_AFTER_ON", 0);
        eq(o, "DISABLED_VER", 0xffff_ffff);
        eq(o, "BASE_REENABLED", 0xfee0_0900);
        eq(o, "CPUID_APIC_REENABLED", 1);
        eq(o, "REENABLED_VER", 0x5_0014);
        // Re-enabled: "prior initialization to the APIC may be lost and the APIC may
        // return to" its power-up state (SDM). quern resets it (lapic.rs says so);
        // KVM keeps the registers.
        if o.emu != Emu::QuernKvm {
            eq(o, "REENABLED_SVR", 0xff);
            eq(o, "REENABLED_LVT_TIMER", 0x1_0000);
        }
        eq(o, "LOG_N", 2);
        eq(o, "LOG", 0x4902_0000);
    });
}

// ---------------------------------------------------------------------------------
// 7. NMI through the ICR (and LINT1, which nothing drives).
// ---------------------------------------------------------------------------------

/// NMIs sent through the ICR (delivery mode NMI, physical destination = own ID, then
/// the all-including-self shorthand) arrive on vector 2 with IF=0, and a second NMI
/// sent from inside the NMI handler waits until its IRET.
#[test]
fn nmi_through_the_icr_blocked_until_iret() {
    const N_INSIDE: u32 = V_USER;
    let k = kernel32(|k| {
        k.apic_init()?;
        k.clear_log()?;
        k.aside(|k| {
            k.here("nmi_hook")?;
            let mut done = k.a.create_label();
            k.a.cmp(dword_ptr(COUNTS + 4 * 2), 1)?;
            k.a.jne(done)?;
            // First NMI: send another, give it 2 ms to arrive, note the count.
            k.icr(0, 0x400)?;
            k.wait_pm(2 * PM_PER_MS)?;
            k.a.mov(eax, dword_ptr(COUNTS + 4 * 2))?;
            k.a.mov(dword_ptr(N_INSIDE), eax)?;
            k.a.set_label(&mut done)?;
            k.a.ret()
        })?;
        k.hook(2, "nmi_hook")?;
        k.apic_w(0x360, 0x400)?; // LVT LINT1: NMI, unmasked (as firmware sets it)
        k.put_apic("LVT_LINT1", 0x360)?;
        k.icr(0, 0x400)?;
        k.wait_pm(5 * PM_PER_MS)?;
        k.put_mem("NMI_INSIDE", N_INSIDE)?;
        k.put_mem("NMI_N", COUNTS + 4 * 2)?;
        k.icr(0, 0x8_0400)?;
        k.wait_pm(5 * PM_PER_MS)?;
        k.put_mem("NMI_N_ALL", COUNTS + 4 * 2)?;
        k.put_apic("ICR_NMI", 0x300)?;
        k.put_mem("TOTAL", V_LOGN)?;
        k.exit(0x17)
    });
    run_all("nmi_through_the_icr_blocked_until_iret", &k, |o| {
        exited(o, 0x17);
        eq(o, "LVT_LINT1", 0x400);
        eq(o, "NMI_INSIDE", 1);
        eq(o, "NMI_N", 2);
        eq(o, "NMI_N_ALL", 3);
        eq(o, "ICR_NMI", 0x8_0400);
        eq(o, "TOTAL", 3);
    });
    // Said in every run, so the gap stays visible.
    report(
        "NOT RUN: NMI through LINT1: nothing on quern's PC drives the LINT1 pin (no NMI source: no IOCHK/parity \
         NMI through port 0x61, no NMI button, no monitor), and QEMU raises it only from its monitor's `nmi` \
         command, which a guest cannot reach; the LINT1 path is covered by the lapic model's unit tests only",
    );
}

// ---------------------------------------------------------------------------------
// 8. ExtINT through LINT0 in real mode.
// ---------------------------------------------------------------------------------

/// A real-mode BIOS image: the 8259s programmed (vector base 8, IRQ0 only), the PIT at
/// 1 kHz, an IVT entry, STI/HLT, timer interrupts counted. They reach the CPU through
/// the local APIC's LINT0 as ExtINT (the virtual wire reset leaves there): masking
/// LINT0 stops them while the PIC holds IRQ0 in its IRR, unmasking lets it through.
/// The APIC page is reached from real mode through FS with a 4 GiB limit ("unreal"
/// mode: PE set just long enough to load FS).
fn extint_bios(exit_code: u8) -> Vec<u8> {
    const TICKS: u64 = 0x500;
    const GDT: u64 = 0x600;
    const GDTR: u64 = 0x620;
    let mut a = CodeAssembler::new(16).unwrap();
    let build = |a: &mut CodeAssembler| -> Result<CodeLabel, IcedError> {
        // IRQ0 handler at F000:0000.
        a.push(ax)?;
        a.inc(word_ptr(TICKS))?;
        a.mov(al, 0x20u32)?;
        a.out(0x20u32, al)?;
        a.pop(ax)?;
        a.iret()?;
        let (putc, hex32) = emit_routines(a)?;
        let mut entry = a.create_label();
        a.set_label(&mut entry)?;
        a.cli()?;
        a.xor(ax, ax)?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.mov(ss, ax)?;
        a.mov(sp, 0x7000u32)?;
        let put = |a: &mut CodeAssembler, key: &str| -> Result<(), IcedError> {
            a.push(esi)?;
            print(a, putc, &format!("{key} "))?;
            a.pop(esi)?;
            a.call(hex32)?;
            print(a, putc, "\n")
        };
        // Waits with STI/HLT until TICKS >= n; returns with IF=0.
        let wait_ticks = |a: &mut CodeAssembler, n: u32| -> Result<(), IcedError> {
            let mut top = a.create_label();
            let mut done = a.create_label();
            a.set_label(&mut top)?;
            a.cli()?;
            a.cmp(word_ptr(TICKS), n)?;
            a.jae(done)?;
            a.sti()?;
            a.hlt()?;
            a.jmp(top)?;
            a.set_label(&mut done)?;
            a.nop()
        };
        a.mov(word_ptr(TICKS), 0u32)?;
        a.mov(word_ptr(8 * 4), 0u32)?;
        a.mov(word_ptr(8 * 4 + 2), 0xf000u32)?;
        for (port, v) in [
            (0x20u32, 0x11u32),
            (0x21, 0x08),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xa0, 0x11),
            (0xa1, 0x70),
            (0xa1, 0x02),
            (0xa1, 0x01),
            (0xa1, 0xff),
            (0x21, 0xfe),
            (0x43, 0x34),
            (0x40, 1193 & 0xff),
            (0x40, 1193 >> 8),
        ] {
            a.mov(al, v)?;
            a.out(port, al)?;
        }
        // FS: base 0, limit 4 GiB.
        a.mov(dword_ptr(GDT), 0u32)?;
        a.mov(dword_ptr(GDT + 4), 0u32)?;
        a.mov(dword_ptr(GDT + 8), 0x0000_ffffu32)?;
        a.mov(dword_ptr(GDT + 12), 0x00cf_9200u32)?;
        a.mov(word_ptr(GDTR), 15u32)?;
        a.mov(dword_ptr(GDTR + 2), GDT as u32)?;
        a.lgdt(ptr(GDTR))?;
        a.mov(eax, cr0)?;
        a.or(al, 1u32)?;
        a.mov(cr0, eax)?;
        a.mov(bx, 8u32)?;
        a.mov(fs, bx)?;
        a.and(al, 0xfeu32)?;
        a.mov(cr0, eax)?;
        a.mov(edi, APIC)?;
        a.mov(esi, dword_ptr(edi + 0x350).fs())?;
        put(a, "LINT0_RESET")?;
        a.mov(esi, dword_ptr(edi + 0xf0).fs())?;
        put(a, "SVR_RESET")?;

        // The virtual wire as reset leaves it, if it does (LINT0 unmasked ExtINT).
        let mut no_wire = a.create_label();
        let mut wired = a.create_label();
        a.cmp(dword_ptr(edi + 0x350).fs(), 0x700u32)?;
        a.jne(no_wire)?;
        wait_ticks(a, 5)?;
        a.movzx(esi, word_ptr(TICKS))?;
        put(a, "TICKS_WIRE")?;
        a.jmp(wired)?;
        a.set_label(&mut no_wire)?;
        print(a, putc, "NO_WIRE_AT_RESET 00000001\n")?;
        a.set_label(&mut wired)?;
        // Software-enabled, LINT0 programmed as firmware does: ExtINT, unmasked.
        a.mov(dword_ptr(edi + 0xf0).fs(), 0x1ffu32)?;
        a.mov(dword_ptr(edi + 0x350).fs(), 0x700u32)?;
        a.mov(esi, dword_ptr(edi + 0x350).fs())?;
        put(a, "LINT0_ENABLED")?;
        a.mov(word_ptr(TICKS), 0u32)?;
        wait_ticks(a, 5)?;
        a.movzx(esi, word_ptr(TICKS))?;
        put(a, "TICKS_ENABLED")?;

        // LINT0 masked: IF=1, the PIC raises IRQ0 (its IRR shows it) and nothing
        // arrives. Spin until the IRR bit is up, then a while longer.
        a.mov(dword_ptr(edi + 0x350).fs(), 0x1_0700u32)?;
        a.mov(esi, dword_ptr(edi + 0x350).fs())?;
        put(a, "LINT0_MASKED")?;
        a.mov(word_ptr(TICKS), 0u32)?;
        a.mov(al, 0x0au32)?; // OCW3: read the IRR
        a.out(0x20u32, al)?;
        a.sti()?;
        let mut irr = a.create_label();
        let mut seen = a.create_label();
        // Bounded so that a slow emulator still finishes in time (a port read costs
        // QEMU's TCG microseconds under load; 10M of them once ran past the limit).
        a.mov(ecx, 2_000_000u32)?;
        a.set_label(&mut irr)?;
        a.in_(al, 0x20u32)?;
        a.test(al, 1u32)?;
        a.jnz(seen)?;
        a.dec(ecx)?;
        a.jnz(irr)?;
        a.set_label(&mut seen)?;
        let mut more = a.create_label();
        a.mov(ecx, 200_000u32)?;
        a.set_label(&mut more)?;
        a.pause()?;
        a.dec(ecx)?;
        a.jnz(more)?;
        a.cli()?;
        a.in_(al, 0x20u32)?;
        a.movzx(esi, al)?;
        put(a, "PIC_IRR_MASKED")?;
        a.movzx(esi, word_ptr(TICKS))?;
        put(a, "TICKS_MASKED")?;
        // Unmasked: the waiting IRQ0 and the next ones come through.
        a.mov(dword_ptr(edi + 0x350).fs(), 0x700u32)?;
        wait_ticks(a, 3)?;
        a.movzx(esi, word_ptr(TICKS))?;
        put(a, "TICKS_UNMASKED")?;
        a.mov(dx, u32::from(EXIT_PORT))?;
        a.mov(al, u32::from(exit_code))?;
        a.out(dx, al)?;
        let mut stop = a.create_label();
        a.set_label(&mut stop)?;
        a.hlt()?;
        a.jmp(stop)?;
        Ok(entry)
    };
    let entry = build(&mut a).unwrap_or_else(|e| panic!("assembling the ExtINT BIOS: {e}"));
    let res = a.assemble_options(0, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS).unwrap();
    let entry = res.label_ip(&entry).unwrap();
    bios_image(&res.inner.code_buffer, entry as u16)
}

#[test]
fn extint_through_lint0_in_real_mode() {
    let img = extint_bios(0x18);
    run_bios("extint_through_lint0_in_real_mode", &img, |o| {
        // The wait loop stops at its count, but a tick the PIC held while the CPU was
        // descheduled may come in as the loop leaves: one more is fine.
        let ticks = |key: &str, n: u32| {
            let got = o.get(key);
            assert!((n..=n + 1).contains(&got), "{}: {key} = {got}, expected {n}:\n{}", o.emu.name(), o.run.describe());
        };
        exited(o, 0x18);
        eq(o, "SVR_RESET", 0xff);
        if o.emu == Emu::QemuTcg {
            // QEMU's TCG APIC comes out of reset with every LVT entry masked (the
            // SDM's power-up state): firmware must program the virtual wire.
            eq(o, "LINT0_RESET", 0x1_0000);
            eq(o, "NO_WIRE_AT_RESET", 1);
        } else {
            // quern, like KVM (its LINT0_REENABLED quirk, on by default), leaves the
            // BSP's LINT0 as ExtINT so firmware that never touches the APIC gets the
            // 8259's interrupts.
            eq(o, "LINT0_RESET", 0x700);
            ticks("TICKS_WIRE", 5);
        }
        eq(o, "LINT0_ENABLED", 0x700);
        ticks("TICKS_ENABLED", 5);
        eq(o, "LINT0_MASKED", 0x1_0700);
        eq(o, "PIC_IRR_MASKED", 1);
        eq(o, "TICKS_MASKED", 0);
        ticks("TICKS_UNMASKED", 3);
    });
}

// ---------------------------------------------------------------------------------
// 9. Random register writes to the LAPIC and IOAPIC pages.
// ---------------------------------------------------------------------------------

/// Register accesses the random program makes.
const FUZZ_OPS: u32 = 20_000;

/// Seeded random accesses to the local APIC page (dword writes and reads at every
/// register, byte accesses at any offset) and the IOAPIC page (IOREGSEL/IOWIN pairs
/// over all registers, raw dword accesses anywhere in the page), with IF=0. Delivery
/// modes in the ICR, the LVT entries and the redirection entries are limited to fixed
/// and NMI (bits 8-9 cleared): an INIT would legitimately park the CPU in
/// wait-for-SIPI and end the program without proving anything. Fixed interrupts pile
/// up unserviced, NMIs (from IPIs, LINT pins, IOAPIC pins) run the NMI handler, timers
/// run in any mode and divider. The emulator must neither panic nor hang: the
/// program finishes and exits normally.
#[test]
fn random_apic_and_ioapic_writes_never_crash() {
    let seed: u32 = std::env::var("APIC_FUZZ_SEED")
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x2545_f491)
        | 1;
    const CNT: u32 = V_USER;
    const ACC: u32 = V_USER + 4;
    let k = kernel32(|k| {
        k.apic_init()?;
        k.clear_log()?;
        let mut rng = k.a.create_label();
        k.aside(|k| {
            // xorshift32 on EBP; the new state in EAX too.
            let a = &mut k.a;
            a.set_label(&mut rng)?;
            for (left, n) in [(true, 13), (false, 17), (true, 5)] {
                a.mov(eax, ebp)?;
                if left {
                    a.shl(eax, n)?;
                } else {
                    a.shr(eax, n)?;
                }
                a.xor(ebp, eax)?;
            }
            a.mov(eax, ebp)?;
            a.ret()
        })?;
        let (apic, ioapic) = (k.abs(APIC), k.abs(IOAPIC));
        let a = &mut k.a;
        let [mut top, mut next, mut lapic_read, mut lapic_byte, mut io_sel, mut io_raw, mut filt, mut store] =
            [(); 8].map(|_| a.create_label());
        a.mov(ebp, seed)?;
        a.mov(dword_ptr(CNT), FUZZ_OPS)?;
        a.set_label(&mut top)?;
        a.call(rng)?;
        a.mov(ebx, eax)?;
        a.call(rng)?;
        a.mov(edx, eax)?;
        a.mov(eax, ebx)?;
        a.and(eax, 7)?;
        a.cmp(eax, 4)?;
        a.je(lapic_read)?;
        a.cmp(eax, 5)?;
        a.je(lapic_byte)?;
        a.cmp(eax, 6)?;
        a.je(io_sel)?;
        a.cmp(eax, 7)?;
        a.je(io_raw)?;
        // 0-3: a dword write to a register.
        a.mov(edi, ebx)?;
        a.shr(edi, 4)?;
        a.and(edi, 0xff0)?;
        a.cmp(edi, 0x300)?;
        a.je(filt)?;
        a.cmp(edi, 0x320)?;
        a.jb(store)?;
        a.cmp(edi, 0x370)?;
        a.ja(store)?;
        a.set_label(&mut filt)?;
        a.and(edx, !0x300)?;
        a.set_label(&mut store)?;
        a.mov(dword_ptr(edi + apic), edx)?;
        a.jmp(next)?;
        a.set_label(&mut lapic_read)?;
        a.mov(edi, ebx)?;
        a.shr(edi, 4)?;
        a.and(edi, 0xff0)?;
        a.mov(eax, dword_ptr(edi + apic))?;
        a.xor(dword_ptr(ACC), eax)?;
        a.jmp(next)?;
        // A byte written and read back anywhere in the page (a byte cannot reach
        // a delivery-mode field).
        a.set_label(&mut lapic_byte)?;
        a.mov(edi, ebx)?;
        a.shr(edi, 4)?;
        a.and(edi, 0xfff)?;
        a.mov(byte_ptr(edi + apic), dl)?;
        a.mov(al, byte_ptr(edi + apic))?;
        a.xor(byte_ptr(ACC), al)?;
        a.jmp(next)?;
        a.set_label(&mut io_sel)?;
        a.mov(edi, ebx)?;
        a.shr(edi, 8)?;
        a.and(edi, 0x3f)?;
        a.mov(dword_ptr(ioapic), edi)?;
        a.and(edx, !0x300)?;
        a.mov(dword_ptr(ioapic + 0x10), edx)?;
        a.mov(eax, dword_ptr(ioapic + 0x10))?;
        a.xor(dword_ptr(ACC), eax)?;
        a.jmp(next)?;
        a.set_label(&mut io_raw)?;
        a.mov(edi, ebx)?;
        a.shr(edi, 4)?;
        a.and(edi, 0xffc)?;
        a.and(edx, !0x300)?;
        a.mov(dword_ptr(edi + ioapic), edx)?;
        a.mov(eax, dword_ptr(edi + ioapic))?;
        a.xor(dword_ptr(ACC), eax)?;
        a.set_label(&mut next)?;
        a.dec(dword_ptr(CNT))?;
        a.jnz(top)?;
        k.put_mem("NMIS", COUNTS + 4 * 2)?;
        k.a.mov(esi, ebp)?;
        k.put("STATE")?;
        k.say("FUZZ DONE\n")?;
        k.exit(0x19)
    });
    // The state the guest's xorshift32 ends in, after two steps per access.
    let mut x = seed;
    for _ in 0..2 * FUZZ_OPS {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
    }
    report(&format!("random_apic_and_ioapic_writes_never_crash: seed {seed:#x} (APIC_FUZZ_SEED=hex to change)"));
    run_all("random_apic_and_ioapic_writes_never_crash", &k, |o| {
        let d = || format!("{} (seed {seed:#x}):\n{}", o.emu.name(), o.run.describe());
        assert!(!o.run.stderr.contains("panicked"), "{}", d());
        assert!(o.run.stdout.contains("FUZZ DONE\n"), "{}", d());
        exited(o, 0x19);
        eq(o, "STATE", x);
    });
}
