//! Cases on the host CPU.
//!
//! A forked child maps the code, data and stack pages at the guest's addresses
//! (`MAP_FIXED_NOREPLACE`, so nothing of the test process can be overwritten), plus a
//! context block and a stub: the prologue saves the host's callee-saved registers and
//! stack pointer, loads RFLAGS and all sixteen GPRs from the context block and jumps
//! to the case; the case ends with a jump to the epilogue, which stores them back and
//! returns. Results go to a `MAP_SHARED` mapping made before the fork. A case that
//! kills the child (SIGFPE for #DE, SIGSEGV, ...) is recorded as a native fault and a
//! new child carries on from the next case. The child allocates nothing: it may have
//! been forked from a multi-threaded test process.

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, Code, Instruction, MemoryOperand, Register};

use super::compare::{Fault, Outcome, State};
use super::gen::{Case, X87};
use super::layout::{CODE_BASE, CODE_SIZE, CTX_BASE, DATA_BASE, DATA_SIZE, STACK_BASE, STACK_SIZE, STUB_BASE};
pub use super::Epilogues;

const CTX_FLAGS: u64 = 16 * 8;
const CTX_HOST_RSP: u64 = 17 * 8;
/// The case's MXCSR (in and out), the host's (saved by the prologue), XMM0..XMM15.
const CTX_MXCSR: u64 = 18 * 8;
const CTX_HOST_MXCSR: u64 = 18 * 8 + 4;
const CTX_XMM: u64 = 20 * 8;
/// The host's FCW (saved by the prologue).
const CTX_HOST_FCW: u64 = 19 * 8;
/// An FXSAVE image: the case's x87 registers in, the result's out.
const CTX_FX: u64 = 1024;

const XMMS: [AsmRegisterXmm; 16] =
    [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];

/// 16-bit code's way back, at this offset of the code page (inside its segment):
/// `jmp far USER_CS64:epilogue` (with an operand-size prefix for the 32-bit offset).
pub const EXIT16: u64 = 0xff00;
/// The LDT's 16-bit segments (entries 0, 1, 2; TI set, RPL 3): code based at the
/// code page, data at the buffer's, stack at the stack's, each 64 KiB.
const SEL_CODE16: u16 = 0x07;
const SEL_DATA16: u16 = 0x0f;
const SEL_STACK16: u16 = 0x17;
/// The data and stack selectors the prologue loads (DS/ES, SS).
const CTX_DS: u64 = 1008;
const CTX_SS: u64 = 1010;

/// Linux's `struct user_desc` for modify_ldt.
#[repr(C)]
struct UserDesc {
    entry_number: u32,
    base_addr: u32,
    limit: u32,
    /// seg_32bit:1, contents:2, read_exec_only:1, limit_in_pages:1,
    /// seg_not_present:1, useable:1.
    flags: u32,
}

/// Installs the 16-bit segments; false where the kernel refuses modify_ldt.
///
/// # Safety
/// A plain system call; only in a child or a probe.
unsafe fn install_ldt() -> bool {
    for (entry, base, code) in [(0u32, CODE_BASE, true), (1, DATA_BASE, false), (2, STACK_BASE, false)] {
        let d = UserDesc {
            entry_number: entry,
            base_addr: base as u32,
            limit: 0xffff,
            flags: (if code { 2 << 1 } else { 0 }) | 1 << 6,
        };
        // SAFETY: modify_ldt(1, desc, size) reads `d` only.
        let r =
            unsafe { libc::syscall(libc::SYS_modify_ldt, 1, &d as *const UserDesc, std::mem::size_of::<UserDesc>()) };
        if r != 0 {
            return false;
        }
    }
    true
}

/// Whether this host runs 16-bit code segments for a process (modify_ldt).
pub fn can_run_16bit() -> bool {
    // SAFETY: the child only makes the system call and exits.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            libc::_exit(if install_ldt() { 0 } else { 1 });
        }
        if pid < 0 {
            return false;
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}

/// Linux's user code segments: 64-bit, and 32-bit (compatibility mode).
const USER_CS64: u16 = 0x33;
const USER_CS32: u16 = 0x23;
/// Linux's user data segment, for DS/ES in compatibility mode (null there faults).
const USER_DS: u16 = 0x2b;
/// The far pointer (offset, selector) the prologue jumps through.
const CTX_FAR: u64 = 1000;
/// The 32-bit way back: `jmp far USER_CS64:epilogue` at this offset of the stub page.
const COMPAT_EXIT: u64 = 0x800;

/// The prologue/epilogue stub (at [`STUB_BASE`]) and its epilogues.
pub fn stub() -> (Vec<u8>, Epilogues) {
    let r = || -> Result<(Vec<u8>, Epilogues), iced_x86::IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let mut epilogue = a.create_label();
        for reg in [rbx, rbp, r12, r13, r14, r15] {
            a.push(reg)?;
        }
        a.mov(r15, CTX_BASE)?;
        a.mov(qword_ptr(r15 + CTX_HOST_RSP), rsp)?;
        // DS/ES usable in compatibility mode too (harmless in 64-bit mode), or the
        // 16-bit ones.
        a.mov(ax, word_ptr(r15 + CTX_DS))?;
        a.mov(ds, ax)?;
        a.mov(es, ax)?;
        a.stmxcsr(dword_ptr(r15 + CTX_HOST_MXCSR))?;
        a.fnstcw(word_ptr(r15 + CTX_HOST_FCW))?;
        // The x87 registers (the image's SSE part is then loaded over by the lines
        // below).
        a.fxrstor64(zmmword_ptr(r15 + CTX_FX))?;
        a.ldmxcsr(dword_ptr(r15 + CTX_MXCSR))?;
        for (i, &x) in XMMS.iter().enumerate() {
            a.movdqu(x, xmmword_ptr(r15 + CTX_XMM + 16 * i as u64))?;
        }
        a.push(qword_ptr(r15 + CTX_FLAGS))?;
        a.popfq()?;
        let gprs = [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15];
        for (i, &reg) in gprs.iter().enumerate() {
            if i != 4 && i != 15 {
                a.mov(reg, qword_ptr(r15 + 8 * i as u64))?;
            }
        }
        a.mov(rsp, qword_ptr(r15 + 32u64))?;
        a.mov(r15, qword_ptr(r15 + 120u64))?;
        // SS last (64-bit code ignores it), then into the case through the context's far
        // pointer: 64-bit, 32-bit or 16-bit code.
        a.add_instruction(Instruction::with2(
            Code::Mov_Sreg_rm16,
            Register::SS,
            MemoryOperand::with_base_displ_size(Register::None, (CTX_BASE + CTX_SS) as i64, 4),
        )?)?;
        a.add_instruction(Instruction::with1(
            Code::Jmp_m1632,
            MemoryOperand::with_base_displ_size(Register::None, (CTX_BASE + CTX_FAR) as i64, 4),
        )?)?;
        a.set_label(&mut epilogue)?;
        // RAX first, through its absolute-address form: no other register is free.
        a.add_instruction(Instruction::with2(
            Code::Mov_moffs64_RAX,
            MemoryOperand::with_base_displ_size(Register::None, CTX_BASE as i64, 8),
            Register::RAX,
        )?)?;
        a.mov(rax, CTX_BASE)?;
        for (i, &reg) in gprs.iter().enumerate().skip(1) {
            a.mov(qword_ptr(rax + 8 * i as u64), reg)?;
        }
        // The process's own data segments back (after 16-bit code).
        a.mov(ecx, u32::from(USER_DS))?;
        a.mov(ss, cx)?;
        a.mov(ds, cx)?;
        a.mov(es, cx)?;
        a.stmxcsr(dword_ptr(rax + CTX_MXCSR))?;
        a.fxsave64(zmmword_ptr(rax + CTX_FX))?;
        // Rust expects an empty x87 stack and its own control word.
        a.fninit()?;
        a.fldcw(word_ptr(rax + CTX_HOST_FCW))?;
        a.ldmxcsr(dword_ptr(rax + CTX_HOST_MXCSR))?;
        for (i, &x) in XMMS.iter().enumerate() {
            a.movdqu(xmmword_ptr(rax + CTX_XMM + 16 * i as u64), x)?;
        }
        a.mov(rsp, qword_ptr(rax + CTX_HOST_RSP))?;
        a.pushfq()?;
        a.pop(qword_ptr(rax + CTX_FLAGS))?;
        // Rust expects DF clear.
        a.cld()?;
        for reg in [r15, r14, r13, r12, rbp, rbx] {
            a.pop(reg)?;
        }
        a.ret()?;
        let res = a.assemble_options(STUB_BASE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
        let epi = res.label_ip(&epilogue)?;
        let mut code = res.inner.code_buffer;
        assert!(code.len() as u64 <= COMPAT_EXIT, "native stub too long");
        code.resize(COMPAT_EXIT as usize, 0xcc);
        // JMP ptr16:32 (EA cd cw), encoded for 32-bit code.
        code.push(0xea);
        code.extend((epi as u32).to_le_bytes());
        code.extend(USER_CS64.to_le_bytes());
        Ok((code, Epilogues { long: epi, compat: STUB_BASE + COMPAT_EXIT, code16: EXIT16 }))
    };
    r().expect("assembling the native stub")
}

/// Writes the case's x87 registers (and a valid MXCSR) into the context's FXSAVE
/// image. Allocates nothing.
///
/// # Safety
/// `ctx` is the mapped context block.
unsafe fn write_fx(ctx: *mut u8, c: &Case) {
    // SAFETY: the image lies inside the context block (the caller's contract).
    unsafe {
        let fx = ctx.add(CTX_FX as usize);
        std::ptr::write_bytes(fx, 0, 512);
        (fx as *mut u16).write_volatile(c.x87.fcw);
        (fx.add(2) as *mut u16).write_volatile(c.x87.fsw);
        fx.add(4).write_volatile(c.x87.ftw);
        (fx.add(24) as *mut u32).write_volatile(c.mxcsr);
        for (i, r) in c.x87.st.iter().enumerate() {
            std::ptr::copy_nonoverlapping(r.as_ptr(), fx.add(32 + 16 * i), 10);
        }
    }
}

/// The x87 registers from the context's FXSAVE image.
///
/// # Safety
/// As [`write_fx`].
unsafe fn read_fx(ctx: *const u8) -> X87 {
    // SAFETY: as in write_fx.
    unsafe {
        let fx = ctx.add(CTX_FX as usize);
        let mut st = [[0u8; 10]; 8];
        for (i, r) in st.iter_mut().enumerate() {
            std::ptr::copy_nonoverlapping(fx.add(32 + 16 * i), r.as_mut_ptr(), 10);
        }
        X87 {
            fcw: (fx as *const u16).read_volatile(),
            fsw: (fx.add(2) as *const u16).read_volatile(),
            ftw: fx.add(4).read_volatile(),
            st,
        }
    }
}

#[repr(C)]
struct Result_ {
    /// 0 not run, 1 ran to the epilogue, 2 killed by `signal`.
    status: u32,
    signal: u32,
    gprs: [u64; 16],
    rflags: u64,
    xmm: [[u8; 16]; 16],
    mxcsr: u32,
    x87: X87,
    data: [u8; DATA_SIZE],
    /// Set by the signal handler: the registers and data where the case faulted.
    faulted: u32,
    fault_gprs: [u64; 16],
    fault_rflags: u64,
    fault_data: [u8; DATA_SIZE],
    stack: [u8; STACK_SIZE],
}

#[repr(C)]
struct Header {
    /// The case the child is running (u64::MAX before the first).
    current: u64,
    /// Address the child could not map at (exit status 3).
    map_failed: u64,
}

const HEADER_SIZE: usize = 4096;
const EXIT_MAP_FAILED: i32 = 3;

/// The shared result area.
struct Shared {
    base: *mut u8,
    len: usize,
}

impl Shared {
    fn new(n: usize) -> Self {
        let len = HEADER_SIZE + n * std::mem::size_of::<Result_>();
        // SAFETY: a fresh anonymous shared mapping; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "mmap of the shared result area: {}", std::io::Error::last_os_error());
        Shared { base: p.cast(), len }
    }
    fn header(&self) -> *mut Header {
        self.base.cast()
    }
    fn result(&self, i: usize) -> *mut Result_ {
        // SAFETY: i < n, inside the mapping.
        unsafe { self.base.add(HEADER_SIZE + i * std::mem::size_of::<Result_>()).cast() }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no references into it outlive self.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Maps `len` bytes at exactly `addr` or exits the child.
///
/// # Safety
/// Only in the forked child.
unsafe fn map_fixed(h: *mut Header, addr: u64, len: usize, prot: i32) {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p as u64 != addr {
        // SAFETY: the header lies in the shared mapping.
        unsafe { (*h).map_failed = addr };
        // SAFETY: leaving the child without running destructors.
        unsafe { libc::_exit(EXIT_MAP_FAILED) };
    }
}

/// The child: runs cases from `start` on. Never returns.
///
/// # Safety
/// Only in the forked child.
/// The shared result area, for the fault handler.
static SHARED_BASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const ALT_STACK: usize = 256 * 1024;

fn rw_prot() -> i32 {
    libc::PROT_READ | libc::PROT_WRITE
}

/// A case faulted: its registers (from the signal's context) and data buffer go to
/// its result, then the signal, now at its default action, kills the child.
extern "C" fn on_fault(sig: i32, _info: *mut libc::siginfo_t, uc: *mut libc::c_void) {
    // SAFETY: async-signal-safe work only: plain loads and stores into the shared
    // mapping, whose result slot `current` names, and raise().
    unsafe {
        let base = SHARED_BASE.load(std::sync::atomic::Ordering::Relaxed) as *mut u8;
        let current = if base.is_null() {
            u64::MAX
        } else {
            std::ptr::read_volatile(&raw const (*base.cast::<Header>()).current)
        };
        if current != u64::MAX && !uc.is_null() {
            let res = base.add(HEADER_SIZE + current as usize * std::mem::size_of::<Result_>()).cast::<Result_>();
            let g = &(*uc.cast::<libc::ucontext_t>()).uc_mcontext.gregs;
            let order = [
                libc::REG_RAX,
                libc::REG_RCX,
                libc::REG_RDX,
                libc::REG_RBX,
                libc::REG_RSP,
                libc::REG_RBP,
                libc::REG_RSI,
                libc::REG_RDI,
                libc::REG_R8,
                libc::REG_R9,
                libc::REG_R10,
                libc::REG_R11,
                libc::REG_R12,
                libc::REG_R13,
                libc::REG_R14,
                libc::REG_R15,
            ];
            for (i, &r) in order.iter().enumerate() {
                (*res).fault_gprs[i] = g[r as usize] as u64;
            }
            (*res).fault_rflags = g[libc::REG_EFL as usize] as u64;
            std::ptr::copy_nonoverlapping(DATA_BASE as *const u8, (*res).fault_data.as_mut_ptr(), DATA_SIZE);
            std::ptr::write_volatile(&raw mut (*res).faulted, 1);
        }
        libc::raise(sig);
    }
}

unsafe fn child(cases: &[Case], start: usize, shared: &Shared, stub: &[u8], epilogue: u64) -> ! {
    let h = shared.header();
    // SAFETY: plain libc calls in a single-threaded child; pointers are into our
    // own fixed mappings (checked by map_fixed) and the shared area.
    unsafe {
        let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        // A fault's handler notes the state, then the signal kills the child as
        // before (reset to the default action, delivered again at once). It runs on
        // its own stack: the case's is one page.
        SHARED_BASE.store(shared.base as usize, std::sync::atomic::Ordering::Relaxed);
        let alt =
            libc::mmap(std::ptr::null_mut(), ALT_STACK, rw_prot(), libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        if alt != libc::MAP_FAILED {
            let alt_ss = libc::stack_t { ss_sp: alt, ss_flags: 0, ss_size: ALT_STACK };
            libc::sigaltstack(&alt_ss, std::ptr::null_mut());
        }
        for s in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGTRAP] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fault as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER | libc::SA_ONSTACK;
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
        // No case loops: a stuck child is killed and reported.
        libc::alarm(60);
        let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        map_fixed(h, CODE_BASE, CODE_SIZE as usize, rwx);
        map_fixed(h, DATA_BASE, DATA_SIZE, rw);
        map_fixed(h, STACK_BASE, STACK_SIZE, rw);
        map_fixed(h, CTX_BASE, 4096, rw);
        map_fixed(h, STUB_BASE, 4096, rwx);
        std::ptr::copy_nonoverlapping(stub.as_ptr(), STUB_BASE as *mut u8, stub.len());
        // 16-bit code's segments, and its way back (JMP ptr16:32 under an operand-size
        // prefix) at the end of its code segment. Without modify_ldt there are no
        // 16-bit cases (see `can_run_16bit`).
        install_ldt();
        let exit16 = (CODE_BASE + EXIT16) as *mut u8;
        let epi = epilogue as u32;
        let far_jump: [u8; 8] = {
            let mut b = [0x66, 0xea, 0, 0, 0, 0, 0, 0];
            b[2..6].copy_from_slice(&epi.to_le_bytes());
            b[6..8].copy_from_slice(&USER_CS64.to_le_bytes());
            b
        };
        std::ptr::copy_nonoverlapping(far_jump.as_ptr(), exit16, far_jump.len());
        let ctx = CTX_BASE as *mut u64;
        let enter: extern "sysv64" fn() = std::mem::transmute::<usize, extern "sysv64" fn()>(STUB_BASE as usize);
        for (i, c) in cases.iter().enumerate().skip(start) {
            std::ptr::write_volatile(&raw mut (*h).current, i as u64);
            std::ptr::copy_nonoverlapping(c.native_code.as_ptr(), CODE_BASE as *mut u8, c.native_code.len());
            std::ptr::copy_nonoverlapping(c.data.as_ptr(), DATA_BASE as *mut u8, DATA_SIZE);
            std::ptr::copy_nonoverlapping(c.stack.as_ptr(), STACK_BASE as *mut u8, STACK_SIZE);
            for (r, v) in c.gprs.iter().enumerate() {
                ctx.add(r).write_volatile(*v);
            }
            ctx.add(16).write_volatile(c.rflags);
            let far = ctx.cast::<u8>().add(CTX_FAR as usize);
            let (ip, code_sel, ds_sel, ss_sel) = match c.bits {
                16 => (0u32, SEL_CODE16, SEL_DATA16, SEL_STACK16),
                32 => (CODE_BASE as u32, USER_CS32, USER_DS, USER_DS),
                _ => (CODE_BASE as u32, USER_CS64, USER_DS, USER_DS),
            };
            (far as *mut u32).write_volatile(ip);
            (far.add(4) as *mut u16).write_volatile(code_sel);
            (ctx.cast::<u8>().add(CTX_DS as usize) as *mut u16).write_volatile(ds_sel);
            (ctx.cast::<u8>().add(CTX_SS as usize) as *mut u16).write_volatile(ss_sel);
            (ctx.add(18) as *mut u32).write_volatile(c.mxcsr);
            std::ptr::copy_nonoverlapping(c.xmm.as_ptr().cast::<u8>(), ctx.add(20).cast::<u8>(), 256);
            write_fx(CTX_BASE as *mut u8, c);
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            enter();
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
            let res = shared.result(i);
            for r in 0..16 {
                (*res).gprs[r] = ctx.add(r).read_volatile();
            }
            (*res).rflags = ctx.add(16).read_volatile();
            (*res).mxcsr = (ctx.add(18) as *const u32).read_volatile();
            std::ptr::copy_nonoverlapping(ctx.add(20).cast::<u8>(), (*res).xmm.as_mut_ptr().cast::<u8>(), 256);
            (*res).x87 = read_fx(CTX_BASE as *const u8);
            std::ptr::copy_nonoverlapping(DATA_BASE as *const u8, (*res).data.as_mut_ptr(), DATA_SIZE);
            std::ptr::copy_nonoverlapping(STACK_BASE as *const u8, (*res).stack.as_mut_ptr(), STACK_SIZE);
            std::ptr::write_volatile(&raw mut (*res).status, 1);
        }
        libc::_exit(0);
    }
}

/// Runs every case natively; one outcome per case.
pub fn run(cases: &[Case]) -> Vec<Outcome> {
    let (stub, epilogues) = stub();
    let shared = Shared::new(cases.len().max(1));
    let mut start = 0;
    while start < cases.len() {
        // SAFETY: the header is in our shared mapping.
        unsafe { (*shared.header()).current = u64::MAX };
        // SAFETY: fork; the child only runs `child`, which allocates nothing and
        // leaves through _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: we are the child.
            unsafe { child(cases, start, &shared, &stub, epilogues.long) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let w = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(w, pid, "waitpid: {}", std::io::Error::last_os_error());
        // SAFETY: the child has exited; the header is ours to read.
        let (current, map_failed) = unsafe { ((*shared.header()).current, (*shared.header()).map_failed) };
        if libc::WIFEXITED(status) {
            match libc::WEXITSTATUS(status) {
                0 => break,
                EXIT_MAP_FAILED => panic!(
                    "the native runner cannot map {map_failed:#x}: something else lives at the fixed case addresses"
                ),
                s => panic!("native runner exited with status {s}"),
            }
        }
        assert!(libc::WIFSIGNALED(status), "native runner: odd wait status {status:#x}");
        let sig = libc::WTERMSIG(status);
        assert!(
            current != u64::MAX && current as usize >= start,
            "native runner died of signal {sig} before running a case"
        );
        let res = shared.result(current as usize);
        // SAFETY: inside the shared mapping; the child is gone.
        unsafe {
            (*res).status = 2;
            (*res).signal = sig as u32;
        }
        start = current as usize + 1;
    }
    (0..cases.len())
        .map(|i| {
            // SAFETY: every child has exited; the area is only ours now.
            let r = unsafe { &*shared.result(i) };
            match r.status {
                1 => Outcome::Ok(State {
                    gprs: r.gprs,
                    rflags: r.rflags,
                    data: r.data.to_vec(),
                    stack: r.stack.to_vec(),
                    rip: None,
                    xmm: r.xmm.to_vec(),
                    mxcsr: r.mxcsr,
                    x87: r.x87,
                }),
                2 => Outcome::Signal(
                    r.signal as i32,
                    (r.faulted == 1).then(|| {
                        Box::new(Fault { gprs: r.fault_gprs, rflags: r.fault_rflags, data: r.fault_data.to_vec() })
                    }),
                ),
                _ => Outcome::Error("native runner never ran this case".into()),
            }
        })
        .collect()
}
