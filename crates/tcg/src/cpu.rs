//! The software CPU: guest state plus what helpers need to reach the machine.
//!
//! Generated code holds a pointer to a [`Cpu`]; its first field is the
//! [`CpuState`], so the same pointer serves field offsets and helper calls. Helpers and
//! the instruction interpreter access guest memory through [`Cpu::read`] and
//! [`Cpu::write`]: linear address → page walk → RAM, ROM or MMIO, filling the TLB that
//! generated code probes inline.

use std::sync::Arc;

use quern_core::memory::PAGE_SIZE;
use quern_core::{GuestMemory, VmOps};

use crate::mmu::{self, Access, Target, PAGE_MASK};
use crate::paging;
use crate::state::{CpuState, Fault, NO_FAULT};

/// Exception vectors.
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
    pub const XM: u8 = 19;
}

/// A guest exception, as Rust code returns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    pub vector: u8,
    pub error_code: Option<u32>,
    /// Faulting linear address, for #PF.
    pub address: u64,
}

impl Exception {
    pub fn new(vector: u8) -> Self {
        Exception { vector, error_code: None, address: 0 }
    }
    pub fn with_code(vector: u8, code: u32) -> Self {
        Exception { vector, error_code: Some(code), address: 0 }
    }
    pub fn gp0() -> Self {
        Self::with_code(vector::GP, 0)
    }
    pub fn ud() -> Self {
        Self::new(vector::UD)
    }
}

pub type Result<T> = std::result::Result<T, Exception>;

/// Pages that hold translated code, by guest-physical page number, so writes to them
/// can invalidate translations first.
pub trait CodeWatch {
    /// Whether physical page `page` (address >> 12) holds translated code.
    fn is_code_page(&self, page: u64) -> bool;
    /// Drops every translation on `page`; returns whether there was any.
    fn invalidate_page(&mut self, page: u64) -> bool;
    /// The host code of the valid block for `key`, if one is translated and nothing
    /// awaits the run loop (the jump cache's refill from generated code).
    fn lookup(&self, _key: &BlockKey) -> Option<usize> {
        None
    }
}

/// Lookup key of a translated block: everything its host code depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub phys: u64,
    pub rip: u64,
    pub cs_base: u64,
    /// [`CpuState::mode_key`](crate::state::CpuState::mode_key), bit 31 for the
    /// one-instruction blocks of an interrupt shadow.
    pub mode: u32,
}

/// The software CPU.
#[repr(C)]
pub struct Cpu {
    pub state: CpuState,
    pub mem: Arc<GuestMemory>,
    /// The machine during `run`; `None` between runs.
    ops: Option<*const dyn VmOps>,
    /// The code cache's view of code pages (set by the run loop).
    watch: Option<*mut dyn CodeWatch>,
    /// Set when a write hit translated code: the current block must end.
    pub code_modified: bool,
    /// Time base of the TSC (1 GHz).
    start: std::time::Instant,
    /// Set while the CPU itself reads or writes a system structure (GDT, LDT, IDT,
    /// TSS): those accesses are supervisor accesses whatever the CPL.
    pub system_access: bool,
    /// The `-cpu` model: CPUID and which model-specific MSRs exist.
    pub model: Arc<crate::model::TcgCpuModel>,
    /// Machine-check and vendor MSRs of the model.
    pub model_msrs: crate::model::ModelMsrs,
    /// An NMI is being handled: further NMIs wait until the next IRET.
    pub nmi_blocked: bool,
    /// An NMI that arrived while blocked.
    pub nmi_pending: bool,
    /// After INIT, an application processor waits for a start-up IPI.
    pub wait_for_sipi: bool,
    /// The guest memory's view generation the TLB and translations were made under.
    mem_generation: u64,
    /// The other vCPUs' caches, told of writes to their code (`None`: a CPU alone, as
    /// in the interpreter's tests).
    pub sync: Option<(Arc<crate::coherence::Coherence>, Arc<crate::coherence::Link>)>,
    /// The page [`Cpu::host_span`] last gave for writing through the slow path, for
    /// [`Cpu::span_written`].
    span_page: Option<u64>,
    /// This vCPU's initial APIC ID, as CPUID reports it.
    pub apic_id: u32,
}

impl Cpu {
    /// A CPU of the default model (qemu64).
    pub fn new(mem: Arc<GuestMemory>) -> Box<Self> {
        Self::with_model(mem, Arc::new(crate::model::TcgCpuModel::default()))
    }

    pub fn with_model(mem: Arc<GuestMemory>, model: Arc<crate::model::TcgCpuModel>) -> Box<Self> {
        // Built in place (the state is too big for the stack), field by field, in
        // zeroed memory: the megabytes of TLB are then empty without being touched.
        let mut cpu = Box::<Cpu>::new_zeroed();
        let p = cpu.as_mut_ptr();
        // SAFETY: `p` is valid for writes and zeroed, and every field is written
        // before `assume_init`.
        unsafe {
            CpuState::init(&raw mut (*p).state);
            (&raw mut (*p).mem).write(mem);
            (&raw mut (*p).ops).write(None);
            (&raw mut (*p).watch).write(None);
            (&raw mut (*p).code_modified).write(false);
            (&raw mut (*p).start).write(std::time::Instant::now());
            (&raw mut (*p).system_access).write(false);
            (&raw mut (*p).model).write(model);
            (&raw mut (*p).model_msrs).write(Default::default());
            (&raw mut (*p).nmi_blocked).write(false);
            (&raw mut (*p).nmi_pending).write(false);
            (&raw mut (*p).wait_for_sipi).write(false);
            (&raw mut (*p).mem_generation).write(0);
            (&raw mut (*p).sync).write(None);
            (&raw mut (*p).span_page).write(None);
            (&raw mut (*p).apic_id).write(0);
            cpu.assume_init()
        }
    }

    /// Connects the machine for the duration of a run.
    ///
    /// # Safety
    /// `ops` and `watch` must stay valid until [`Cpu::detach`].
    pub unsafe fn attach(&mut self, ops: &dyn VmOps, watch: *mut dyn CodeWatch) {
        // SAFETY: the caller keeps `ops` alive until detach; we erase its lifetime only
        // to store it in this struct, never past detach.
        let ops: &'static dyn VmOps = unsafe { std::mem::transmute::<&dyn VmOps, &'static dyn VmOps>(ops) };
        self.ops = Some(ops as *const dyn VmOps);
        self.watch = Some(watch);
    }

    /// The code cache, during a run.
    pub fn watch(&self) -> Option<&dyn CodeWatch> {
        // SAFETY: `watch` is valid while attached (attach's contract).
        self.watch.map(|w| unsafe { &*w })
    }

    pub fn detach(&mut self) {
        self.ops = None;
        self.watch = None;
    }

    /// The machine. Only valid during a run.
    pub fn ops(&self) -> Option<&dyn VmOps> {
        // SAFETY: `attach`'s contract keeps the pointer valid until `detach` clears it.
        self.ops.map(|p| unsafe { &*p })
    }

    /// Makes generated code return to the run loop at the next block head.
    pub fn request_exit(&mut self) {
        // SAFETY: `exit_request` is only ever accessed atomically (the kicker writes it
        // from other threads); the pointer is to our own live field.
        let flag = unsafe { std::sync::atomic::AtomicU32::from_ptr(&raw mut self.state.exit_request) };
        flag.store(1, std::sync::atomic::Ordering::Release);
    }

    /// The time-stamp counter: the machine's (which the local APIC's TSC-deadline
    /// timer also counts) or, without a machine, nanoseconds since creation; plus what
    /// WRMSR set.
    pub fn tsc(&self) -> u64 {
        let base = self.ops().and_then(|o| o.tsc()).unwrap_or_else(|| self.start.elapsed().as_nanos() as u64);
        base.wrapping_add(self.state.msr.tsc_offset)
    }

    pub fn raise(&mut self, e: Exception) {
        self.state.fault = Fault {
            vector: u32::from(e.vector),
            error_code: e.error_code.unwrap_or(0),
            has_error_code: u32::from(e.error_code.is_some()),
            _pad: 0,
            address: e.address,
        };
    }

    pub fn take_fault(&mut self) -> Option<Exception> {
        let f = self.state.fault;
        if f.vector == NO_FAULT {
            return None;
        }
        self.state.fault.vector = NO_FAULT;
        Some(Exception {
            vector: f.vector as u8,
            error_code: (f.has_error_code != 0).then_some(f.error_code),
            address: f.address,
        })
    }

    /// The MMU index of the accesses made now: the kernel's for the CPU's own accesses
    /// to system structures ([`Self::system_access`]), else the CPL's.
    pub fn mmu_index(&self) -> usize {
        if self.system_access {
            crate::mmu::MMU_KERNEL
        } else {
            self.state.mmu_index()
        }
    }

    /// Linear → physical for one access, filling the TLB of the current MMU index when
    /// the page is memory.
    pub fn translate(&mut self, linear: u64, access: Access) -> Result<u64> {
        let idx = self.mmu_index();
        // A TLB hit saves the walk (the tags only ever hold pages whose walk, for that
        // kind of access, succeeded with this index's rules).
        if let Some(phys) = self.state.tlb.tables[idx].lookup(linear, access) {
            return Ok(phys);
        }
        let w = paging::walk(self, linear, access)?;
        let own_code = self.watch_is_code(w.phys >> 12);
        self.state.tlb.fill(idx, &self.mem, linear, w, access, own_code);
        Ok(w.phys)
    }

    /// The host address of `len` bytes at linear `lin` when the current MMU index's TLB
    /// holds their page for `access` (the probe generated code makes).
    fn tlb_host(&self, lin: u64, len: usize, access: Access) -> Option<*mut u8> {
        if len == 0 {
            return None;
        }
        self.state.tlb.tables[self.mmu_index()].host(lin, len, access)
    }

    /// Catches up with guest memory view switches (the PC's PAM registers remapping
    /// 0xc0000-0xfffff, done by the port write just executed): drops the TLB and every
    /// translation from the switchable regions, and ends the current block, so no
    /// stale host address or code of the old view is used again. Returns whether the
    /// map had changed.
    pub fn sync_memory_map(&mut self) -> bool {
        let g = self.mem.generation();
        if g == self.mem_generation {
            return false;
        }
        self.mem_generation = g;
        self.state.tlb.flush();
        if let Some(w) = self.watch {
            for r in self.mem.switchable_regions() {
                for page in r.guest_base >> 12..(r.guest_base + r.size).div_ceil(PAGE_SIZE) {
                    // SAFETY: `watch` is valid while attached.
                    unsafe { (*w).invalidate_page(page) };
                }
            }
        }
        self.code_modified = true;
        true
    }

    fn watch_is_code(&self, page: u64) -> bool {
        // SAFETY: `watch` is valid while attached (attach's contract).
        self.watch.is_some_and(|w| unsafe { (*w).is_code_page(page) })
    }

    /// Whether guest accesses from Rust need barriers to keep x86's order: on a host
    /// with a weaker one (aarch64) while other vCPUs run (generated code has its own,
    /// `backend::Env::tso`).
    #[inline]
    fn weak_host_order(&self) -> bool {
        cfg!(target_arch = "aarch64") && self.sync.as_ref().is_some_and(|(c, _)| c.several())
    }

    /// Reads `buf.len()` bytes (at most 8 for MMIO) at linear `addr`.
    pub fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let r = self.read_unordered(addr, buf);
        if self.weak_host_order() {
            // x86 orders a load before every later load and store.
            std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        }
        r
    }

    fn read_unordered(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let lin = self.wrap_linear(addr);
        if let Some(host) = self.tlb_host(lin, buf.len(), Access::Read) {
            // SAFETY: a TLB hit: the bytes lie in one page of a RAM or ROM region, which
            // `host` points into (the region lives as long as `self.mem`; a memory-map
            // switch flushes the TLB first).
            unsafe { std::ptr::copy_nonoverlapping(host, buf.as_mut_ptr(), buf.len()) };
            return Ok(());
        }
        self.access(addr, buf.len(), Access::Read, |cpu, phys, range| {
            let chunk = &mut buf[range];
            match mmu::phys_target(&cpu.mem, phys) {
                Target::Memory { .. } => {
                    if cpu.mem.read(phys, chunk).is_err() {
                        chunk.fill(0xff);
                    }
                }
                Target::Mmio => match cpu.ops() {
                    Some(ops) => ops.mmio_read(phys, chunk),
                    None => chunk.fill(0xff),
                },
            }
        })
    }

    /// The host address of `len` bytes at linear `lin` within one page of RAM (or ROM,
    /// for a read), translated for `access`; None for MMIO and ROM writes. A write
    /// invalidates the translations on the page first, as [`Self::write`] does.
    pub fn host_span(&mut self, lin: u64, len: usize, access: Access) -> Result<Option<*mut u8>> {
        let lin = self.wrap_linear(lin);
        debug_assert!(len > 0 && (lin & !PAGE_MASK) as usize + len <= PAGE_SIZE as usize);
        if let Some(host) = self.tlb_host(lin, len, access) {
            return Ok(Some(host));
        }
        let phys = self.translate(lin, access)?;
        match mmu::phys_target(&self.mem, phys) {
            Target::Memory { rom, host } if !(rom && access == Access::Write) => {
                if access == Access::Write {
                    self.code_written(phys >> 12);
                    self.span_page = Some(phys >> 12);
                }
                Ok(Some(host))
            }
            _ => Ok(None),
        }
    }

    /// The bytes [`Self::host_span`] gave for writing are written: other vCPUs'
    /// translations of them go.
    pub fn span_written(&mut self) {
        if let Some(page) = self.span_page.take() {
            self.wrote_page(page);
        }
    }

    /// Guest RAM page `page` was written through the slow path: other vCPUs holding
    /// code from it drop that code (see [`crate::coherence`]).
    fn wrote_page(&self, page: u64) {
        if let Some((c, link)) = &self.sync {
            c.wrote(&self.mem, link, page);
        }
    }

    /// Guest RAM page `page` is being written: its translations go.
    fn code_written(&mut self, page: u64) {
        if self.watch_is_code(page) {
            if let Some(w) = self.watch {
                // SAFETY: `watch` is valid while attached.
                self.code_modified |= unsafe { (*w).invalidate_page(page) };
                // A block looping on itself (never unchained) must come back to the
                // run loop to see the new code.
                self.request_exit();
            }
        }
    }

    /// Writes `buf` at linear `addr`, invalidating translations it overwrites.
    pub fn write(&mut self, addr: u64, buf: &[u8]) -> Result<()> {
        if self.weak_host_order() {
            // x86 orders a store after every earlier store.
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        }
        let lin = self.wrap_linear(addr);
        if let Some(host) = self.tlb_host(lin, buf.len(), Access::Write) {
            // SAFETY: as in `read`; a write tag is only ever set on RAM without
            // translated code, so nothing needs invalidating.
            unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), host, buf.len()) };
            return Ok(());
        }
        // Translate every page first, so a fault leaves memory untouched.
        self.access(addr, buf.len(), Access::Write, |_, _, _| {})?;
        self.access(addr, buf.len(), Access::Write, |cpu, phys, range| {
            let chunk = &buf[range];
            match mmu::phys_target(&cpu.mem, phys) {
                Target::Memory { rom: false, host } => {
                    cpu.code_written(phys >> 12);
                    // SAFETY: phys_target found the whole page in one region and the
                    // chunk does not cross the page; `host` points at `phys`.
                    unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), host, chunk.len()) };
                    cpu.wrote_page(phys >> 12);
                }
                Target::Memory { rom: true, .. } => {
                    if let Some(ops) = cpu.ops() {
                        ops.mmio_write(phys, chunk);
                    }
                }
                Target::Mmio => {
                    if let Some(ops) = cpu.ops() {
                        ops.mmio_write(phys, chunk);
                    }
                }
            }
        })
    }

    /// Splits an access at page boundaries and runs `f` on each piece's physical
    /// address and byte range.
    fn access(
        &mut self,
        addr: u64,
        len: usize,
        kind: Access,
        mut f: impl FnMut(&mut Self, u64, std::ops::Range<usize>),
    ) -> Result<()> {
        let mut done = 0;
        while done < len {
            let lin = self.wrap_linear(addr.wrapping_add(done as u64));
            let in_page = (PAGE_SIZE - (lin & !PAGE_MASK)) as usize;
            let n = in_page.min(len - done);
            let phys = self.translate(lin, kind)?;
            f(self, phys, done..done + n);
            done += n;
        }
        Ok(())
    }

    /// Linear addresses are 32 bits wide outside long mode.
    pub fn wrap_linear(&self, a: u64) -> u64 {
        if self.state.long_mode() {
            a
        } else {
            a & 0xffff_ffff
        }
    }

    /// Reads a system structure (descriptor table, TSS) with supervisor rights.
    pub fn read_system(&mut self, a: u64, buf: &mut [u8]) -> Result<()> {
        let old = std::mem::replace(&mut self.system_access, true);
        let r = self.read(a, buf);
        self.system_access = old;
        r
    }

    /// Writes a system structure (a descriptor's accessed bit) with supervisor rights.
    pub fn write_system(&mut self, a: u64, buf: &[u8]) -> Result<()> {
        let old = std::mem::replace(&mut self.system_access, true);
        let r = self.write(a, buf);
        self.system_access = old;
        r
    }

    /// Reads `width` bytes of a system structure, zero-extended.
    pub fn read_system_n(&mut self, a: u64, width: u8) -> Result<u64> {
        let mut b = [0; 8];
        self.read_system(a, &mut b[..width as usize])?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn read_u8(&mut self, a: u64) -> Result<u8> {
        let mut b = [0; 1];
        self.read(a, &mut b)?;
        Ok(b[0])
    }
    pub fn read_u16(&mut self, a: u64) -> Result<u16> {
        let mut b = [0; 2];
        self.read(a, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    pub fn read_u32(&mut self, a: u64) -> Result<u32> {
        let mut b = [0; 4];
        self.read(a, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    pub fn read_u64(&mut self, a: u64) -> Result<u64> {
        let mut b = [0; 8];
        self.read(a, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Reads `width` bytes (1, 2, 4, 8) zero-extended.
    pub fn read_n(&mut self, a: u64, width: u8) -> Result<u64> {
        let mut b = [0; 8];
        self.read(a, &mut b[..width as usize])?;
        Ok(u64::from_le_bytes(b))
    }
    /// Writes the low `width` bytes of `v`.
    pub fn write_n(&mut self, a: u64, v: u64, width: u8) -> Result<()> {
        self.write(a, &v.to_le_bytes()[..width as usize])
    }
}

#[cfg(test)]
mod tests {
    use quern_core::regs::ctrl;

    use super::*;
    use crate::interp::testutil::{self, run, Ports};
    use crate::mmu::{MMU_KERNEL, MMU_USER};
    use crate::state::CS;

    const P: u64 = 1;
    const RW: u64 = 2;
    const US: u64 = 4;
    const G: u64 = 1 << 8;
    /// Supervisor-only, writable.
    const KERNEL_PAGE: u64 = 0x20000;
    /// User, read-only.
    const USER_RO: u64 = 0x21000;
    /// User, writable, global.
    const GLOBAL: u64 = 0x22000;
    /// User, writable.
    const PLAIN: u64 = 0x5000;

    /// A 64-bit CPU with 4-level paging identity-mapping the first 2 MiB with 4 KiB
    /// pages (user, writable) but for the pages above; CR4.PGE on; at CPL 0.
    fn paged() -> Box<Cpu> {
        let mut cpu = testutil::cpu(64);
        let m = cpu.mem.clone();
        m.write_u64(0x10000, 0x11000 | P | RW | US).unwrap();
        m.write_u64(0x11000, 0x12000 | P | RW | US).unwrap();
        m.write_u64(0x12000, 0x13000 | P | RW | US).unwrap();
        for i in 0..512u64 {
            let a = i << 12;
            let flags = match a {
                KERNEL_PAGE => P | RW,
                USER_RO => P | US,
                GLOBAL => P | RW | US | G,
                _ => P | RW | US,
            };
            m.write_u64(0x13000 + 8 * i, a | flags).unwrap();
        }
        let s = &mut cpu.state;
        s.cr3 = 0x10000;
        s.cr4 |= ctrl::CR4_PAE | 1 << 7;
        s.cr0 |= ctrl::CR0_PG;
        s.efer |= ctrl::EFER_SCE;
        // SYSCALL to selector 8 at LSTAR; SYSRET to selector 0x23 (base 0x10).
        s.msr.star = 0x10 << 48 | 0x08 << 32;
        s.msr.lstar = 0x1000;
        cpu
    }

    fn set_cpl(cpu: &mut Cpu, cpl: u16) {
        let a = &mut cpu.state.seg[CS].attr;
        *a = (*a & !(3 << 5)) | cpl << 5;
        assert_eq!(cpu.state.cpl(), cpl as u8);
    }

    fn cached(cpu: &Cpu, idx: usize, a: u64, access: Access) -> bool {
        cpu.state.tlb.tables[idx].lookup(a, access).is_some()
    }

    fn pf_code(r: Result<()>) -> u32 {
        let e = r.expect_err("a page fault");
        assert_eq!(e.vector, vector::PF);
        e.error_code.unwrap()
    }

    #[test]
    fn user_and_kernel_entries_are_apart() {
        let mut cpu = paged();
        let mut b = [0u8; 4];
        // A kernel entry for a supervisor page does not let CPL 3 in.
        cpu.read(KERNEL_PAGE, &mut b).unwrap();
        assert!(cached(&cpu, MMU_KERNEL, KERNEL_PAGE, Access::Read));
        set_cpl(&mut cpu, 3);
        assert_eq!(pf_code(cpu.read(KERNEL_PAGE, &mut b)), 0b101, "present, user, read");
        assert!(!cached(&cpu, MMU_USER, KERNEL_PAGE, Access::Read));
        // The kernel may write a read-only page while CR0.WP is clear; its write tag
        // does not let CPL 3 write.
        set_cpl(&mut cpu, 0);
        cpu.write(USER_RO, &[1]).unwrap();
        assert!(cached(&cpu, MMU_KERNEL, USER_RO, Access::Write));
        set_cpl(&mut cpu, 3);
        assert_eq!(pf_code(cpu.write(USER_RO, &[2])), 0b111, "present, write, user");
        cpu.read(USER_RO, &mut b[..1]).unwrap();
        assert_eq!(b[0], 1);
        assert!(cached(&cpu, MMU_USER, USER_RO, Access::Read));
        assert!(!cached(&cpu, MMU_USER, USER_RO, Access::Write));
        // And the other way: a user entry is not the kernel's.
        cpu.write(PLAIN, &[3]).unwrap();
        assert!(cached(&cpu, MMU_USER, PLAIN, Access::Write));
        assert!(!cached(&cpu, MMU_KERNEL, PLAIN, Access::Read));
        // The CPU's own supervisor accesses at CPL 3 use (and fill) the kernel's.
        cpu.read_system(KERNEL_PAGE + 8, &mut b).unwrap();
        // With CR0.WP (a flush), the kernel write to a read-only page faults too.
        set_cpl(&mut cpu, 0);
        cpu.state.gpr[0] = cpu.state.cr0 | ctrl::CR0_WP;
        run(&mut cpu, &[0x0f, 0x22, 0xc0]).unwrap(); // mov cr0, rax
        assert!(!cached(&cpu, MMU_KERNEL, USER_RO, Access::Write));
        assert_eq!(pf_code(cpu.write(USER_RO, &[4])), 0b011, "present, write, supervisor");
    }

    #[test]
    fn privilege_changes_keep_the_tlb() {
        let mut cpu = paged();
        let mut b = [0u8; 8];
        cpu.read(KERNEL_PAGE, &mut b).unwrap();
        cpu.write(PLAIN, &[1]).unwrap();
        cpu.state.rip = 0x1000;
        cpu.state.gpr[1] = 0x3000; // RCX: SYSRET's target
        assert_eq!(run(&mut cpu, &[0x48, 0x0f, 0x07]).unwrap(), crate::interp::Step::Jump); // sysretq
        assert_eq!(cpu.state.cpl(), 3);
        assert!(cached(&cpu, MMU_KERNEL, KERNEL_PAGE, Access::Read));
        assert!(cached(&cpu, MMU_KERNEL, PLAIN, Access::Write));
        cpu.write(PLAIN, &[2]).unwrap();
        assert!(cached(&cpu, MMU_USER, PLAIN, Access::Write));
        assert_eq!(run(&mut cpu, &[0x0f, 0x05]).unwrap(), crate::interp::Step::Jump); // syscall
        assert_eq!(cpu.state.cpl(), 0);
        assert!(cached(&cpu, MMU_USER, PLAIN, Access::Write));
        assert!(cached(&cpu, MMU_KERNEL, KERNEL_PAGE, Access::Read));
        assert_eq!(cpu.state.tlb.log.all + cpu.state.tlb.log.non_global, 0, "no flush");
    }

    /// Fills read entries for GLOBAL and PLAIN in both MMU indexes; returns at CPL 0.
    fn fill_both(cpu: &mut Cpu) {
        let mut b = [0u8; 1];
        for cpl in [3, 0] {
            set_cpl(cpu, cpl);
            cpu.read(GLOBAL, &mut b).unwrap();
            cpu.read(PLAIN, &mut b).unwrap();
        }
        for idx in [MMU_KERNEL, MMU_USER] {
            assert!(cached(cpu, idx, GLOBAL, Access::Read) && cached(cpu, idx, PLAIN, Access::Read));
        }
    }

    #[test]
    fn cr3_write_flushes_all_but_global_pages() {
        let mut cpu = paged();
        fill_both(&mut cpu);
        cpu.state.gpr[0] = cpu.state.cr3;
        run(&mut cpu, &[0x0f, 0x22, 0xd8]).unwrap(); // mov cr3, rax
        for idx in [MMU_KERNEL, MMU_USER] {
            assert!(cached(&cpu, idx, GLOBAL, Access::Read), "global pages stay");
            assert!(!cached(&cpu, idx, PLAIN, Access::Read));
        }
        // Clearing CR4.PGE drops the global pages too; other CR4 bits keep entries.
        fill_both(&mut cpu);
        cpu.state.gpr[0] = cpu.state.cr4 | ctrl::CR4_OSFXSR;
        run(&mut cpu, &[0x0f, 0x22, 0xe0]).unwrap(); // mov cr4, rax
        assert!(cached(&cpu, MMU_KERNEL, PLAIN, Access::Read));
        cpu.state.gpr[0] = cpu.state.cr4 & !(1 << 7);
        run(&mut cpu, &[0x0f, 0x22, 0xe0]).unwrap();
        for idx in [MMU_KERNEL, MMU_USER] {
            assert!(!cached(&cpu, idx, GLOBAL, Access::Read) && !cached(&cpu, idx, PLAIN, Access::Read));
        }
        // Without PGE, nothing is global.
        fill_both(&mut cpu);
        cpu.state.gpr[0] = cpu.state.cr3;
        run(&mut cpu, &[0x0f, 0x22, 0xd8]).unwrap();
        assert!(!cached(&cpu, MMU_KERNEL, GLOBAL, Access::Read));
    }

    #[test]
    fn invlpg_drops_the_page_in_every_index() {
        let mut cpu = paged();
        fill_both(&mut cpu);
        cpu.state.gpr[0] = GLOBAL + 0x123;
        run(&mut cpu, &[0x0f, 0x01, 0x38]).unwrap(); // invlpg [rax]
        for idx in [MMU_KERNEL, MMU_USER] {
            assert!(!cached(&cpu, idx, GLOBAL, Access::Read), "global or not");
            assert!(cached(&cpu, idx, PLAIN, Access::Read), "other pages stay");
        }
        assert_eq!(cpu.state.tlb.log.pages, [GLOBAL]);
    }

    /// Code pages as a set; invalidations recorded.
    #[derive(Default)]
    struct Watch {
        code: Vec<u64>,
        invalidated: Vec<u64>,
    }

    impl CodeWatch for Watch {
        fn is_code_page(&self, page: u64) -> bool {
            self.code.contains(&page)
        }
        fn invalidate_page(&mut self, page: u64) -> bool {
            self.invalidated.push(page);
            true
        }
    }

    /// The interpreter's accesses use TLB hits directly, and a write to a page with
    /// translated code still takes the way that invalidates it.
    #[test]
    fn interpreter_writes_to_code_pages_still_invalidate() {
        let mut cpu = paged();
        let ops = Ports::default();
        let mut watch = Watch { code: vec![0x30], ..Default::default() };
        cpu.mem.claim_code(0x30000, 1);
        // SAFETY: `ops` and `watch` outlive the attachment (detached below).
        unsafe { cpu.attach(&ops, &mut watch as *mut dyn CodeWatch) };
        let mut b = [0u8; 4];
        cpu.read(0x30000, &mut b).unwrap(); // a read entry, no write tag
        cpu.write(0x30000, &[1, 2]).unwrap();
        cpu.write(0x30002, &[3, 4]).unwrap();
        assert!(!cached(&cpu, MMU_KERNEL, 0x30000, Access::Write));
        // A page without code gets a write tag, and later writes hit it.
        cpu.write(0x31000, &[5; 4]).unwrap();
        assert!(cached(&cpu, MMU_KERNEL, 0x31000, Access::Write));
        cpu.write(0x31ffe, &[6, 7]).unwrap();
        cpu.read(0x31ffe, &mut b[..2]).unwrap();
        assert_eq!(b[..2], [6, 7]);
        // Crossing into the next page takes the slow way, and still works.
        cpu.write(0x31fff, &[8, 9]).unwrap();
        assert_eq!(cpu.mem.read_u16(0x31fff).unwrap(), 0x0908);
        // The page gets code: its owner claims it, and write tags to it go.
        let host = cpu.mem.host_ptr(0x31000, 1).unwrap() as u64;
        cpu.mem.claim_code(0x31000, 1);
        cpu.state.tlb.protect_host_page(host);
        cpu.detach();
        watch.code.push(0x31);
        // SAFETY: as above.
        unsafe { cpu.attach(&ops, &mut watch as *mut dyn CodeWatch) };
        cpu.write(0x31000, &[0xaa]).unwrap();
        cpu.detach();
        assert_eq!(watch.invalidated, [0x30, 0x30, 0x31]);
        assert_eq!(cpu.mem.read_u32(0x30000).unwrap(), 0x0403_0201);
        assert_eq!(cpu.mem.read_u8(0x31000).unwrap(), 0xaa);
    }
}
