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
}

impl Cpu {
    /// A CPU of the default model (qemu64).
    pub fn new(mem: Arc<GuestMemory>) -> Box<Self> {
        Self::with_model(mem, Arc::new(crate::model::TcgCpuModel::default()))
    }

    pub fn with_model(mem: Arc<GuestMemory>, model: Arc<crate::model::TcgCpuModel>) -> Box<Self> {
        let state = *CpuState::new();
        Box::new(Cpu {
            state,
            mem,
            ops: None,
            watch: None,
            code_modified: false,
            start: std::time::Instant::now(),
            system_access: false,
            model,
            model_msrs: Default::default(),
            nmi_blocked: false,
            nmi_pending: false,
            wait_for_sipi: false,
            mem_generation: 0,
        })
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

    /// Linear → physical for one access, filling the TLB when the page is memory.
    pub fn translate(&mut self, linear: u64, access: Access) -> Result<u64> {
        if self.system_access {
            // Privileged accesses at CPL 3 neither use nor fill the TLB, which does not
            // record the user/supervisor distinction.
            return paging::translate(self, linear, access);
        }
        // A TLB hit saves the walk (the tags only ever hold pages whose walk, for that
        // kind of access, succeeded at the current privilege).
        let tlb = &self.state.tlb;
        let idx = crate::mmu::Tlb::index(linear);
        let e = &tlb.entries[idx];
        let page = linear & PAGE_MASK;
        let tag = match access {
            Access::Read => e.read,
            Access::Write => e.write,
            Access::Fetch => e.code,
        };
        if tag == page {
            return Ok(tlb.phys[idx] | (linear & !PAGE_MASK));
        }
        let phys = paging::translate(self, linear, access)?;
        let page = phys >> 12;
        let code_free = !self.watch_is_code(page);
        // Only a write fills the write tag: its walk has set the page's dirty bit.
        mmu::fill(&mut self.state.tlb, &self.mem, linear, phys, access, code_free);
        Ok(phys)
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

    /// Reads `buf.len()` bytes (at most 8 for MMIO) at linear `addr`.
    pub fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
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

    /// Writes `buf` at linear `addr`, invalidating translations it overwrites.
    pub fn write(&mut self, addr: u64, buf: &[u8]) -> Result<()> {
        // Translate every page first, so a fault leaves memory untouched.
        self.access(addr, buf.len(), Access::Write, |_, _, _| {})?;
        self.access(addr, buf.len(), Access::Write, |cpu, phys, range| {
            let chunk = &buf[range];
            match mmu::phys_target(&cpu.mem, phys) {
                Target::Memory { rom: false, host } => {
                    let page = phys >> 12;
                    if cpu.watch_is_code(page) {
                        if let Some(w) = cpu.watch {
                            // SAFETY: `watch` is valid while attached.
                            cpu.code_modified |= unsafe { (*w).invalidate_page(page) };
                            // A block looping on itself (never unchained) must come back
                            // to the run loop to see the new code.
                            cpu.request_exit();
                        }
                    }
                    // SAFETY: phys_target found the whole page in one region and the
                    // chunk does not cross the page; `host` points at `phys`.
                    unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), host, chunk.len()) };
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
