//! The run loop, the block cache and chaining.
//!
//! `TcgVcpu::run` looks up the block for the current (physical PC, RIP, CS base, mode)
//! and enters it through a small trampoline that pins the `Cpu` in r14. A block leaves
//! with an exit code (see `backend::exit`): to look up the next block, to chain (the run
//! loop patches the jump that left so the next time it goes straight to the target),
//! to deliver a fault, to halt, or because another thread asked (`exit_request`).
//! Hot loops run chained, never returning here; each block entry checks
//! `exit_request`, so a kick or an interrupt is seen within one block.
//!
//! Writes to a page with translated code (from the guest, through the slow path, or
//! from the host, seen through `GuestMemory`'s dirty bits) invalidate its blocks and
//! unchain every jump into them.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use quern_core::cpu::CpuEvent;
use quern_core::regs::{self, DebugRegs, FpuState, MsrEntry, Regs, SpecialRegs};
use quern_core::{CpuError, GuestMemory, Vcpu, VcpuExit, VcpuKicker, VmOps};

use crate::backend::{exit, Backend, Helpers, Host};
use crate::codebuf::CodeBuffer;
use crate::coherence::Coherence;
use crate::cpu::BlockKey as Key;
use crate::cpu::{CodeWatch, Cpu};
use crate::fxhash::FxHashMap;
use crate::interrupt::{self, Source};
use crate::mmu::{MMU_MODES, PAGE_MASK};
use crate::state::{JmpEntry, JmpTrack, Seg, CS, DS, ES, FS, GS, SS};
use crate::translate::{self, BlockMode};

/// Host code for every translated block (QEMU reserves up to 1 GiB); only what is
/// written takes memory. On aarch64, 128 MiB: every chained branch (B, ±128 MiB) then
/// reaches every block.
#[cfg(not(target_arch = "aarch64"))]
const CODE_BUFFER_SIZE: usize = 256 << 20;
#[cfg(target_arch = "aarch64")]
const CODE_BUFFER_SIZE: usize = 128 << 20;

struct Block {
    key: Key,
    host: usize,
    /// Jumps from other blocks chained to this one: (jump address, its stub).
    incoming: Vec<(usize, usize)>,
    /// Virtual page of the block's start, for the same-page chaining rule.
    vpage: u64,
    valid: bool,
    /// The instructions left to the interpreter (its helper is handed their addresses).
    #[allow(clippy::vec_box)] // boxed: generated code holds their addresses
    _insns: Vec<Box<crate::interp::Resolved>>,
}

/// Translated code and what is known about it.
struct CodeCache {
    buf: CodeBuffer,
    enter: usize,
    /// A stub that returns to the run loop asking for the next block (the jump cache's
    /// "no entry").
    next_stub: usize,
    /// Bumped when every block goes away, so the jump caches are flushed.
    generation: u64,
    /// Where blocks return to the run loop through, the jump cache's refill stub
    /// ([`helper_lookup`]) and the helpers' address table.
    stubs: crate::backend::Stubs,
    /// (RIP, host code) of blocks invalidated since the run loop last looked: their
    /// jump-cache entries must go.
    dead: Vec<(u64, usize)>,
    blocks: Vec<Block>,
    /// Key → (block, its host code): the lookup needs no second cache miss.
    map: FxHashMap<Key, (usize, usize)>,
    /// Physical page number → blocks with code from it.
    pages: FxHashMap<u64, Vec<usize>>,
    /// Chainable jump address → (its block, its stub).
    sites: FxHashMap<usize, (usize, usize)>,
    /// Guest memory, whose code-owner words say which pages this cache holds code
    /// from (this vCPU's bit, `owner_bit`), see [`crate::coherence`].
    mem: Arc<GuestMemory>,
    owner_bit: u64,
}

type EnterFn = extern "C" fn(*mut Cpu, usize) -> u32;

/// A block whose RIP's page offset is past this may have its first instruction cross
/// into the next page (at most 15 bytes long).
const PAGE_MASK_CROSS: u64 = 0x1000 - 15;

impl CodeCache {
    fn new(mem: Arc<GuestMemory>) -> std::io::Result<Self> {
        let mut c = CodeCache {
            mem,
            owner_bit: 0,
            buf: CodeBuffer::new(CODE_BUFFER_SIZE)?,
            enter: 0,
            next_stub: 0,
            generation: 0,
            stubs: Default::default(),
            dead: Vec::new(),
            blocks: Vec::new(),
            map: FxHashMap::default(),
            pages: FxHashMap::default(),
            sites: FxHashMap::default(),
        };
        c.emit_trampoline();
        Ok(c)
    }

    /// The entry/exit trampoline, at the start of the (empty) buffer.
    fn emit_trampoline(&mut self) {
        let base = self.buf.cursor();
        let t = Host::trampoline(base, &helpers());
        let at = self.buf.append(&t.code).expect("code buffer holds the trampoline");
        self.enter = at + t.enter;
        self.stubs = crate::backend::Stubs {
            epilogue: at + t.epilogue,
            lookup: at + t.lookup,
            helper_table: at + t.helper_table,
        };
        self.next_stub = at + t.next_stub;
    }

    /// Forgets every block (the buffer is full, or the machine reset).
    fn clear(&mut self) {
        self.generation += 1;
        self.dead.clear();
        self.blocks.clear();
        self.map.clear();
        for &page in self.pages.keys() {
            self.mem.release_code(page << 12, self.owner_bit);
        }
        self.pages.clear();
        self.sites.clear();
        self.buf.clear();
        self.emit_trampoline();
    }

    fn patch_jump(&mut self, site: usize, target: usize) {
        self.buf.patch(site, &Host::jump(site, target));
    }
}

impl CodeWatch for CodeCache {
    fn is_code_page(&self, page: u64) -> bool {
        self.pages.contains_key(&page)
    }

    fn invalidate_page(&mut self, page: u64) -> bool {
        let Some(ids) = self.pages.remove(&page) else { return false };
        self.mem.release_code(page << 12, self.owner_bit);
        crate::profile::count(&crate::profile::INVALIDATIONS);
        for id in ids {
            if !self.blocks[id].valid {
                continue;
            }
            self.blocks[id].valid = false;
            let key = self.blocks[id].key;
            self.dead.push((key.rip, self.blocks[id].host));
            if self.map.get(&key).is_some_and(|&(b, _)| b == id) {
                self.map.remove(&key);
            }
            for (site, stub) in std::mem::take(&mut self.blocks[id].incoming) {
                self.patch_jump(site, stub);
            }
        }
        true
    }

    fn lookup(&self, key: &Key) -> Option<usize> {
        if !self.dead.is_empty() {
            return None;
        }
        self.map.get(key).map(|&(_, host)| host)
    }
}

/// Refills the jump cache from generated code when its inline probe missed: the
/// block for the RIP just stored, when it is translated and the jump caches are in
/// sync (see [`JmpSync`]), entered in the jump cache; else 0, and the block returns to
/// the run loop. Saves the exit for an indirect branch whose target's slot held
/// another RIP (QEMU's `lookup_tb_ptr`).
pub(crate) extern "C" fn helper_lookup(cpu: &mut Cpu) -> usize {
    crate::profile::count(&crate::profile::LOOKUPS);
    // SAFETY: see TcgKicker::kick.
    let request = unsafe { AtomicU32::from_ptr(&raw mut cpu.state.exit_request) }.load(Ordering::Acquire);
    if request != 0 || cpu.state.tlb.log.unseen {
        return 0;
    }
    let s = &cpu.state;
    let (rip, cs_base) = (s.rip, s.seg[CS].base);
    let linear = cpu.wrap_linear(cs_base.wrapping_add(rip));
    let Some(phys) = s.tlb.tables[s.mmu_index()].lookup_code(linear) else { return 0 };
    // Code of ours was written (by another vCPU, or DMA): the run loop invalidates.
    if cpu.sync.as_ref().is_some_and(|(_, link)| link.pending()) {
        return 0;
    }
    let key = Key { phys, rip, cs_base, mode: s.mode_key() };
    let Some(host) = cpu.watch().and_then(|w| w.lookup(&key)) else { return 0 };
    crate::profile::count(&crate::profile::LOOKUP_HITS);
    jmp_insert(&mut cpu.state, linear, host);
    host
}

/// Enters the block at `host` for the current RIP (at `linear`) in the current MMU
/// index's jump cache, noting its slot for the next CR3 write unless its code pages
/// are global.
fn jmp_insert(s: &mut crate::state::CpuState, linear: u64, host: usize) {
    let (i, rip) = (s.mmu_index(), s.rip);
    let slot = crate::state::jmp_index(rip);
    s.jmp_cache[i][slot] = JmpEntry { rip, host: host as u64 };
    let t = &s.tlb.tables[i];
    let global = t.is_global_code(linear)
        && (linear & !PAGE_MASK < PAGE_MASK_CROSS || t.is_global_code(linear.wrapping_add(0x1000)));
    s.jmp_track[i].note(slot, linear, global);
}

/// Addresses of the Rust functions generated code calls.
fn helpers() -> Helpers {
    Helpers {
        load: crate::helpers::helper_load as *const () as usize,
        store: crate::helpers::helper_store as *const () as usize,
        flags: crate::helpers::helper_flags as *const () as usize,
        tsc: crate::helpers::helper_tsc as *const () as usize,
        sti: crate::helpers::helper_sti as *const () as usize,
        interp: crate::interp::helper_interp_resolved as *const () as usize,
        vload: crate::helpers::helper_vload as *const () as usize,
        vstore: crate::helpers::helper_vstore as *const () as usize,
        lookup: helper_lookup as *const () as usize,
    }
}

/// The CPU and its cache, shared with the kicker (which only touches `exit_request`).
struct Shared {
    cpu: UnsafeCell<Box<Cpu>>,
}

// SAFETY: the vCPU thread owns all access to the Cpu except `exit_request`, which the
// kicker writes atomically through a raw pointer.
unsafe impl Sync for Shared {}
// SAFETY: as above; the Cpu moves between threads only with its vCPU.
unsafe impl Send for Shared {}

struct TcgKicker {
    shared: Arc<Shared>,
}

impl VcpuKicker for TcgKicker {
    fn kick(&self) {
        // SAFETY: `exit_request` is a u32 at a stable address inside the boxed Cpu,
        // only ever accessed atomically (here, by the run loop, and by generated code's
        // aligned loads).
        let flag = unsafe { AtomicU32::from_ptr(&raw mut (*self.shared.cpu.get()).state.exit_request) };
        flag.store(1, Ordering::Release);
    }
}

/// The JIT accelerator.
pub struct TcgAccelerator {
    mem: Arc<GuestMemory>,
    model: Arc<crate::model::TcgCpuModel>,
}

impl TcgAccelerator {
    /// The JIT with QEMU's default CPU model, qemu64.
    pub fn new(mem: Arc<GuestMemory>) -> Result<Self, CpuError> {
        Self::with_cpu_model(mem, &quern_core::CpuModel::default())
    }

    /// The JIT presenting `model` (`-cpu`); refuses `host` and features it cannot run.
    pub fn with_cpu_model(mem: Arc<GuestMemory>, model: &quern_core::CpuModel) -> Result<Self, CpuError> {
        if !crate::backend::HOST_HAS_BACKEND {
            return Err(CpuError::Unsupported {
                accel: "tcg",
                what: format!(
                    "generating code for {} hosts (the JIT has x86-64 and aarch64 backends)",
                    std::env::consts::ARCH
                ),
            });
        }
        let model = crate::model::TcgCpuModel::new(model).map_err(CpuError::CpuModel)?;
        Ok(TcgAccelerator { mem, model: Arc::new(model) })
    }
}

impl quern_core::Accelerator for TcgAccelerator {
    fn name(&self) -> &'static str {
        "tcg"
    }
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, CpuError> {
        Ok(Box::new(TcgVcpu::build(self.mem.clone(), self.model.clone(), Some(id))?))
    }
}

/// One software vCPU.
pub struct TcgVcpu {
    shared: Arc<Shared>,
    /// The bootstrap processor (vCPU 0) starts at the reset vector; the others wait
    /// for a start-up IPI after a reset.
    bsp: bool,
    cache: CodeCache,
    /// What the jump caches hold entries for (see [`TcgVcpu::sync_jump_cache`]).
    jmp_sync: JmpSync,
}

/// What the jump-cache arrays were filled under, as of the run loop's last look.
///
/// An entry maps a guest *virtual* RIP to the block found for it, and a block holds for
/// one (physical page, RIP, CS base, mode key). So an entry stays right while the mode
/// and CS base its array was filled under hold, and while the mapping of the RIP's page
/// does. Hence, per MMU index array:
/// - the mode key and CS base it was filled under: entering a block of that index under
///   another flushes the array. The CPL is in the mode key but selects the array too,
///   so system calls and interrupts flush nothing (the kernel and user arrays each
///   keep their mode);
/// - a flush of all TLB entries (CR0.PG/WP, CR4 paging bits, EFER, memory-map switch)
///   or a cleared code buffer flushes every array;
/// - a CR3 write keeps the entries whose page (and the next one, for a block whose
///   first instruction may cross into it) is still cached as a *global* code page of
///   that index: global mappings survive CR3 writes, as in the TLB, so the kernel's
///   entries outlive context switches. It is done before any fetch refills the TLB;
/// - INVLPG drops the entries on its page (and those that may cross into it);
/// - an invalidated block drops its own entry.
///
/// Every change of these goes back to the run loop before another block runs (the
/// instructions that make them end their block; invalidation sets `exit_request`), and
/// the run loop syncs before entering any block, so generated code only ever sees
/// entries valid now. (QEMU's tb_jmp_cache, also indexed by virtual PC, is flushed on
/// every tlb_flush and per page on tlb_flush_page.)
struct JmpSync {
    /// Per MMU index: (mode key, CS base) of its array's entries.
    ctx: [(u32, u64); MMU_MODES],
    /// `FlushLog` counters and the cache generation last seen.
    all: u64,
    non_global: u64,
    cache_gen: u64,
    /// Arrays emptied whole so far (as the profile's counter, for this vCPU).
    flushes: u64,
}

fn host_err(op: &'static str, source: std::io::Error) -> CpuError {
    CpuError::Host { accel: "tcg", op, source }
}

impl TcgVcpu {
    /// A vCPU of the default model (qemu64).
    pub fn new(mem: Arc<GuestMemory>) -> Result<Self, CpuError> {
        Self::with_model(mem, Arc::new(crate::model::TcgCpuModel::default()))
    }

    pub fn with_model(mem: Arc<GuestMemory>, model: Arc<crate::model::TcgCpuModel>) -> Result<Self, CpuError> {
        Self::build(mem, model, None)
    }

    /// vCPU `index` (the first free one if `None`) of those sharing `mem`: vCPU 0 is
    /// the bootstrap processor, the others wait for INIT and a start-up IPI.
    fn build(
        mem: Arc<GuestMemory>,
        model: Arc<crate::model::TcgCpuModel>,
        index: Option<u32>,
    ) -> Result<Self, CpuError> {
        let mut cache = CodeCache::new(mem.clone()).map_err(|e| host_err("mapping the code buffer", e))?;
        let coherence = Coherence::of(&mem);
        let shared = Arc::new(Shared { cpu: UnsafeCell::new(Cpu::with_model(mem, model)) });
        let link = {
            // SAFETY: no other reference to the new Cpu exists yet.
            let cpu = unsafe { &mut *shared.cpu.get() };
            let tlb: *mut crate::mmu::Tlb = &mut cpu.state.tlb;
            let exit = &raw mut cpu.state.exit_request as *const AtomicU32;
            // SAFETY: the Cpu is boxed (a stable address) and `shared` keeps it alive
            // for the link; the TLB takes its lock for every change; the exit request
            // is only ever accessed atomically.
            unsafe { coherence.register(index, tlb, exit, shared.clone()) }
                .map_err(|what| CpuError::Unsupported { accel: "tcg", what })?
        };
        cache.owner_bit = link.bit;
        let bsp = link.index == 0;
        // SAFETY: no other reference to the Cpu is live yet.
        unsafe {
            let cpu = &mut *shared.cpu.get();
            cpu.apic_id = cpu.model.topology.apic_id(link.index);
            cpu.sync = Some((coherence, link));
        }
        let mut v = TcgVcpu {
            shared,
            bsp,
            cache,
            jmp_sync: JmpSync {
                ctx: [(u32::MAX, 0); MMU_MODES],
                all: u64::MAX,
                non_global: 0,
                cache_gen: 0,
                flushes: 0,
            },
        };
        v.reset()?;
        if crate::profile::enabled() {
            crate::profile::start(v.cache.buf.range());
        }
        Ok(v)
    }

    /// The software CPU, for tests that set up and inspect its state directly; drops
    /// every translation (the test may rewrite code behind the cache's back).
    #[cfg(test)]
    pub(crate) fn test_cpu(&mut self) -> &mut Cpu {
        self.cache.clear();
        self.cpu_mut()
    }

    fn cpu(&self) -> &Cpu {
        // SAFETY: only this vCPU's thread dereferences the Cpu (see `Shared`).
        unsafe { &*self.shared.cpu.get() }
    }

    #[allow(clippy::mut_from_ref)]
    fn cpu_mut(&mut self) -> &mut Cpu {
        // SAFETY: as in `cpu`; `&mut self` makes this the only reference.
        unsafe { &mut *self.shared.cpu.get() }
    }

    /// An application processor after reset or INIT waits, halted, for a start-up IPI.
    fn wait_for_start_up(&mut self, wait: bool) {
        let cpu = self.cpu_mut();
        cpu.wait_for_sipi = wait;
        cpu.state.halted = u32::from(wait);
    }

    fn take_exit_request(&mut self) -> bool {
        let cpu = self.cpu_mut();
        // SAFETY: see TcgKicker::kick.
        let flag = unsafe { AtomicU32::from_ptr(&raw mut cpu.state.exit_request) };
        flag.swap(0, Ordering::AcqRel) != 0
    }

    fn block_mode(cpu: &Cpu, single: bool) -> BlockMode {
        let s = &cpu.state;
        let long = s.code_bits() == 64;
        BlockMode {
            bits: s.code_bits(),
            stack_width: if long {
                8
            } else if s.seg[SS].db() {
                4
            } else {
                2
            },
            flat: s.seg_flat(),
            long,
            single,
            sse: s.sse_enabled(),
            mx_masked: s.fpu.mxcsr & crate::state::MXCSR_ALL_MASKED == crate::state::MXCSR_ALL_MASKED,
            mmu_idx: s.mmu_index(),
            cpl: s.cpl(),
            x87: (!single
                && crate::backend::caps().x87
                && s.fpu_enabled()
                && crate::lower::x87::inline_under(s.fpu.fcw))
            .then_some(crate::lower::x87::Stack::new(s.fpu.fcw, s.fpu.top() as u8, s.fpu.ftw)),
            atomic: cpu.sync.as_ref().is_some_and(|(c, _)| c.several()),
        }
    }

    /// Finds or translates the block at the current RIP (`single`: the one-instruction
    /// block of [`BlockMode::single`], cached apart from the normal one).
    fn find_block(&mut self, single: bool) -> Result<usize, crate::cpu::Exception> {
        let cpu: &mut Cpu = {
            // SAFETY: as in `cpu_mut`; the cache is a separate field, borrowed apart.
            unsafe { &mut *self.shared.cpu.get() }
        };
        let cs_base = cpu.state.seg[CS].base;
        let rip = cpu.state.rip;
        let linear = cpu.wrap_linear(cs_base.wrapping_add(rip));
        let phys = match cpu.state.tlb.tables[cpu.mmu_index()].lookup_code(linear) {
            Some(p) => p,
            None => cpu.translate(linear, crate::mmu::Access::Fetch)?,
        };
        let key = Key { phys, rip, cs_base, mode: cpu.state.mode_key() | u32::from(single) << 31 };
        if let Some(&(id, _)) = self.cache.map.get(&key) {
            return Ok(id);
        }
        if self.cache.buf.remaining() < 64 << 10 {
            log::debug!("tcg: code buffer full, flushing {} blocks", self.cache.blocks.len());
            crate::profile::count(&crate::profile::BUFFER_FLUSHES);
            self.cache.clear();
        }
        let mode = Self::block_mode(cpu, single);
        let base = self.cache.buf.cursor();
        // Pages are claimed before their code is read (see `coherence`); a block whose
        // first instruction crosses into a page not claimed yet is read again after
        // claiming it.
        Self::claim(&mut self.cache, cpu, phys >> 12);
        let t = loop {
            let t = {
                let _timing = crate::profile::Translating::start();
                translate::translate_block(cpu, mode, base, self.cache.stubs, &helpers())?
            };
            let unclaimed: Vec<u64> = t.pages.iter().copied().filter(|p| !self.cache.pages.contains_key(p)).collect();
            if unclaimed.is_empty() {
                break t;
            }
            unclaimed.into_iter().for_each(|p| Self::claim(&mut self.cache, cpu, p));
        };
        crate::profile::count(&crate::profile::TRANSLATIONS);
        crate::profile::CODE_BYTES.fetch_add(t.code.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let host = self.cache.buf.append(&t.code).expect("space was checked above");
        let id = self.cache.blocks.len();
        for &page in &t.pages {
            self.cache.pages.entry(page).or_default().push(id);
        }
        for &(s, st) in &t.chain_sites {
            self.cache.sites.insert(host + s, (id, host + st));
        }
        self.cache.blocks.push(Block {
            key,
            host,
            incoming: Vec::new(),
            vpage: linear & PAGE_MASK,
            valid: true,
            _insns: t.insns,
        });
        self.cache.map.insert(key, (id, host));
        log::trace!("tcg: translated block {id} at {rip:#x} (phys {phys:#x}), {} bytes", t.code.len());
        Ok(id)
    }

    /// Makes physical page `page` one this cache holds code from, before its bytes are
    /// read: from then on every write to it, by any vCPU or the host, reaches us.
    fn claim(cache: &mut CodeCache, cpu: &Cpu, page: u64) {
        if cache.pages.contains_key(&page) {
            return;
        }
        if let Some((c, link)) = &cpu.sync {
            c.claim(&cpu.mem, link, page);
        }
        cache.pages.insert(page, Vec::new());
    }

    /// Drops the translations of pages other vCPUs or the host wrote since the last
    /// look.
    fn drop_posted(&mut self) {
        let posted = match &self.cpu().sync {
            Some((_, link)) if link.pending() => link.take_posted(),
            _ => return,
        };
        for page in posted {
            self.cache.invalidate_page(page);
        }
    }

    /// Patches the jump that just left block `from` to go straight to block `to`.
    fn chain(&mut self, site: usize, to: usize) {
        let Some(&(from, stub)) = self.cache.sites.get(&site) else { return };
        if !self.cache.blocks[from].valid {
            return;
        }
        // With paging on, only chain within the source block's page: another page's
        // mapping may change without the code changing.
        let paging = self.cpu().state.cr0 & regs::ctrl::CR0_PG != 0;
        let target_vpage = self.cache.blocks[to].vpage;
        if paging && target_vpage != self.cache.blocks[from].vpage {
            return;
        }
        let host = self.cache.blocks[to].host;
        self.cache.patch_jump(site, host);
        self.cache.blocks[to].incoming.push((site, stub));
    }

    /// Brings the jump caches up to date with what changed since the last look (see
    /// [`JmpSync`]); then the current MMU index's array holds entries for the current
    /// mode only.
    fn sync_jump_cache(&mut self) {
        let empty = JmpEntry { rip: u64::MAX, host: self.cache.next_stub as u64 };
        let cache_gen = self.cache.generation;
        let dead = std::mem::take(&mut self.cache.dead);
        let js = &mut self.jmp_sync;
        // SAFETY: as in `cpu_mut`; the cache and `jmp_sync` are separate fields.
        let cpu: &mut Cpu = unsafe { &mut *self.shared.cpu.get() };
        let s = &mut cpu.state;
        let log = &mut s.tlb.log;
        log.unseen = false;
        if log.all != js.all || cache_gen != js.cache_gen {
            crate::profile::count(&crate::profile::JMP_CACHE_FLUSHES);
            js.flushes += 1;
            for a in &mut s.jmp_cache {
                a.fill(empty);
            }
            (js.all, js.non_global, js.cache_gen) = (log.all, log.non_global, cache_gen);
            log.pages.clear();
            s.jmp_track.iter_mut().for_each(JmpTrack::reset);
        } else {
            if log.non_global != js.non_global {
                js.non_global = log.non_global;
                // The entries noted as not global (jmp_insert) go.
                for (a, track) in s.jmp_cache.iter_mut().zip(&mut s.jmp_track) {
                    if track.drop_local(a, empty) {
                        crate::profile::count(&crate::profile::JMP_CACHE_FLUSHES);
                        js.flushes += 1;
                    }
                }
            }
            for page in log.pages.drain(..) {
                for (i, a) in s.jmp_cache.iter_mut().enumerate().filter(|(i, _)| s.jmp_track[*i].may_hold(page)) {
                    // The RIPs whose block may have code on the page: those on it and
                    // the last few before it (a first instruction crossing into it),
                    // with linear addresses wrapping at 4 GiB outside long mode.
                    let first = page.wrapping_sub(js.ctx[i].1);
                    let wrapped = first & 0xffff_ffff;
                    for start in std::iter::once(first).chain((wrapped != first).then_some(wrapped)) {
                        for rip in (0..0x1000 + 15).map(|k| start.wrapping_sub(15).wrapping_add(k)) {
                            let e = &mut a[crate::state::jmp_index(rip)];
                            if e.rip == rip {
                                *e = empty;
                            }
                        }
                    }
                }
            }
            for (rip, host) in dead {
                for a in &mut s.jmp_cache {
                    let e = &mut a[crate::state::jmp_index(rip)];
                    if e.rip == rip && e.host == host as u64 {
                        *e = empty;
                    }
                }
            }
        }
        let i = s.mmu_index();
        let ctx = (s.mode_key(), s.seg[CS].base);
        if js.ctx[i] != ctx {
            crate::profile::count(&crate::profile::JMP_CACHE_FLUSHES);
            js.flushes += 1;
            s.jmp_cache[i].fill(empty);
            s.jmp_track[i].reset();
            js.ctx[i] = ctx;
        }
    }

    /// Enters the block just found (at the current RIP, `host`) in the current MMU
    /// index's jump cache.
    fn remember_jump_target(&mut self, host: usize) {
        // Finding the block may have invalidated or cleared blocks (nothing else the
        // sync looks at changes in between).
        if self.cache.generation != self.jmp_sync.cache_gen || !self.cache.dead.is_empty() {
            self.sync_jump_cache();
        }
        let cpu = self.cpu_mut();
        let linear = cpu.wrap_linear(cpu.state.seg[CS].base.wrapping_add(cpu.state.rip));
        jmp_insert(&mut cpu.state, linear, host);
    }

    fn deliver(&mut self, e: crate::cpu::Exception) -> Option<VcpuExit> {
        match interrupt::deliver_exception(self.cpu_mut(), e) {
            Ok(()) => None,
            Err(interrupt::TripleFault) => Some(VcpuExit::Shutdown),
        }
    }

    /// NMI, INIT, start-up IPIs and SMI from the machine's local APIC, then a pending
    /// NMI if NMIs are not blocked.
    fn take_events(&mut self, ops: &dyn VmOps) -> Result<Option<VcpuExit>, CpuError> {
        while let Some(ev) = ops.take_event() {
            match ev {
                CpuEvent::Nmi => self.cpu_mut().nmi_pending = true,
                CpuEvent::Init => {
                    // The bootstrap processor restarts at the reset vector; the others
                    // wait for a start-up IPI (the APIC's BSP flag decides).
                    let bsp = ops.is_bsp().unwrap_or(self.bsp);
                    quern_core::log_limited!(log::Level::Debug, "tcg: INIT (bsp: {bsp})");
                    self.reset()?;
                    self.wait_for_start_up(!bsp);
                }
                CpuEvent::StartUp(v) if self.cpu().wait_for_sipi => {
                    let cpu = self.cpu_mut();
                    cpu.wait_for_sipi = false;
                    crate::segment::load_real(cpu, CS, u16::from(v) << 8);
                    cpu.state.rip = 0;
                    cpu.state.halted = 0;
                }
                CpuEvent::StartUp(_) => {}
                CpuEvent::Smi => quern_core::log_limited!(log::Level::Warn, "tcg: SMI ignored: quern has no SMM"),
            }
        }
        let cpu = self.cpu_mut();
        if cpu.nmi_pending && !cpu.nmi_blocked && !cpu.wait_for_sipi {
            (cpu.nmi_pending, cpu.nmi_blocked) = (false, true);
            cpu.state.inhibit_irq = 0;
            if interrupt::deliver(cpu, crate::cpu::vector::NMI, None, Source::Hardware).is_err() {
                if let Some(e) = cpu.take_fault() {
                    return Ok(self.deliver(e));
                }
            }
        }
        Ok(None)
    }

    fn run_loop(&mut self, ops: &dyn VmOps) -> Result<VcpuExit, CpuError> {
        // A guard failed: the next block is the one-instruction one.
        let mut step = false;
        loop {
            if self.take_exit_request() && ops.stop_requested() {
                return Ok(VcpuExit::Kicked);
            }
            self.drop_posted();
            if let Some(x) = self.take_events(ops)? {
                return Ok(x);
            }
            // Interrupts, between blocks.
            let cpu = self.cpu_mut();
            let mut single = false;
            if cpu.state.inhibit_irq != 0 {
                cpu.state.inhibit_irq = 0;
                // The shadow covers one instruction: with an interrupt waiting, run
                // just that one (`sti; nop; cli` must take it before the CLI).
                single = cpu.state.eflags & regs::flags::IF != 0 && ops.interrupt_pending();
            } else if step {
                single = true;
            } else if cpu.state.eflags & regs::flags::IF != 0 && ops.interrupt_pending() {
                if let Some(v) = ops.acknowledge_interrupt() {
                    if interrupt::deliver(cpu, v, None, Source::Hardware).is_err() {
                        // A fault while delivering an external interrupt: as for faults.
                        if let Some(e) = cpu.take_fault() {
                            if let Some(x) = self.deliver(e) {
                                return Ok(x);
                            }
                        }
                    }
                }
            }
            step = false;
            if self.cpu().state.halted != 0 {
                return Ok(VcpuExit::Halted);
            }
            // Before the fetch below refills the TLB (see JmpSync).
            self.sync_jump_cache();
            let block = match self.find_block(single) {
                Ok(b) => b,
                Err(e) => {
                    if let Some(x) = self.deliver(e) {
                        return Ok(x);
                    }
                    continue;
                }
            };
            let host = self.cache.blocks[block].host;
            crate::profile::count(&crate::profile::DISPATCHES);
            if single {
                // Whatever the step leads to (a chained block, the jump cache) leaves
                // at its head, back here, where the interrupt is taken.
                let cpu = self.cpu_mut();
                // SAFETY: see TcgKicker::kick.
                unsafe { AtomicU32::from_ptr(&raw mut cpu.state.exit_request) }.store(1, Ordering::Release);
            } else {
                self.remember_jump_target(host);
            }
            log::trace!(target: "quern_tcg::exec", "block {block} at rip {:#x}", self.cpu().state.rip);
            // SAFETY: `enter` is the trampoline emitted in our code buffer with this
            // signature; the block and everything it chains to live in the same buffer,
            // which is executable now; the Cpu outlives the call.
            let enter: EnterFn = unsafe { std::mem::transmute::<usize, EnterFn>(self.cache.enter) };
            let cpu_ptr: *mut Cpu = self.cpu_mut();
            let code = enter(cpu_ptr, host);
            if let Some(c) = crate::profile::EXITS.get(code as usize) {
                crate::profile::count(c);
            }
            match code {
                exit::NEXT | exit::REQUEST | exit::MISS | exit::INTERP | exit::MODE => {}
                exit::CHAIN => {
                    let site = self.cpu().state.chain_site as usize;
                    if let Ok(to) = self.find_block(false) {
                        self.chain(site, to);
                    }
                }
                exit::FAULT => {
                    if let Some(e) = self.cpu_mut().take_fault() {
                        if let Some(x) = self.deliver(e) {
                            return Ok(x);
                        }
                    }
                }
                exit::HALT => self.cpu_mut().state.halted = 1,
                exit::STEP => step = true,
                other => {
                    return Err(CpuError::Guest { accel: "tcg", reason: format!("bad exit code {other} from a block") })
                }
            }
        }
    }
}

impl Drop for TcgVcpu {
    fn drop(&mut self) {
        // Our pages lose their owner bit; other vCPUs stop reaching us.
        self.cache.clear();
        if let Some((c, link)) = self.cpu_mut().sync.take() {
            c.unregister(&link);
        }
        if crate::profile::enabled() {
            crate::profile::report();
        }
    }
}

impl Vcpu for TcgVcpu {
    fn regs(&self) -> Result<Regs, CpuError> {
        let s = &self.cpu().state;
        let mut r = Regs { rip: s.rip, rflags: s.flags(), ..Default::default() };
        r.set_gprs(s.gpr);
        Ok(r)
    }

    fn set_regs(&mut self, r: &Regs) -> Result<(), CpuError> {
        let s = &mut self.cpu_mut().state;
        s.gpr = r.gprs();
        s.rip = r.rip;
        s.set_flags(r.rflags);
        Ok(())
    }

    fn sregs(&self) -> Result<SpecialRegs, CpuError> {
        let s = &self.cpu().state;
        let seg = |i: usize| regs::Segment::from(&s.seg[i]);
        Ok(SpecialRegs {
            cs: seg(CS),
            ds: seg(DS),
            es: seg(ES),
            fs: seg(FS),
            gs: seg(GS),
            ss: seg(SS),
            tr: regs::Segment::from(&s.tr),
            ldt: regs::Segment::from(&s.ldtr),
            gdt: s.gdt,
            idt: s.idt,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
        })
    }

    fn set_sregs(&mut self, r: &SpecialRegs) -> Result<(), CpuError> {
        let s = &mut self.cpu_mut().state;
        for (i, seg) in [(CS, &r.cs), (DS, &r.ds), (ES, &r.es), (FS, &r.fs), (GS, &r.gs), (SS, &r.ss)] {
            s.seg[i] = Seg::from(seg);
        }
        s.tr = Seg::from(&r.tr);
        s.ldtr = Seg::from(&r.ldt);
        s.gdt = r.gdt;
        s.idt = r.idt;
        s.cr0 = r.cr0;
        s.cr2 = r.cr2;
        s.cr3 = r.cr3;
        s.cr4 = r.cr4;
        s.cr8 = r.cr8;
        s.efer = r.efer;
        s.apic_base = r.apic_base;
        s.tlb.flush();
        Ok(())
    }

    /// The state keeps the x87 registers by physical register; the interface (as
    /// FXSAVE) gives them as ST(0)..ST(7).
    fn fpu(&self) -> Result<FpuState, CpuError> {
        let mut f = self.cpu().state.fpu;
        let top = f.top();
        f.st.rotate_left(top);
        Ok(f)
    }

    fn set_fpu(&mut self, fpu: &FpuState) -> Result<(), CpuError> {
        let mut f = *fpu;
        let top = f.top();
        f.st.rotate_right(top);
        self.cpu_mut().state.fpu = f;
        Ok(())
    }

    fn debug_regs(&self) -> Result<DebugRegs, CpuError> {
        let d = &self.cpu().state.dr;
        Ok(DebugRegs { db: [d[0], d[1], d[2], d[3]], dr6: d[6], dr7: d[7] })
    }

    fn set_debug_regs(&mut self, r: &DebugRegs) -> Result<(), CpuError> {
        let d = &mut self.cpu_mut().state.dr;
        d[..4].copy_from_slice(&r.db);
        d[6] = r.dr6;
        d[7] = r.dr7;
        Ok(())
    }

    fn msrs(&self, entries: &mut [MsrEntry]) -> Result<(), CpuError> {
        let cpu: &mut Cpu = {
            // SAFETY: reading MSRs only reads state; no other reference is live.
            unsafe { &mut *self.shared.cpu.get() }
        };
        for e in entries {
            e.data = crate::interp::system::read_msr(cpu, e.index).unwrap_or(0);
        }
        Ok(())
    }

    fn set_msrs(&mut self, entries: &[MsrEntry]) -> Result<(), CpuError> {
        for e in entries {
            crate::interp::system::write_msr(self.cpu_mut(), e.index, e.data)
                .map_err(|_| CpuError::Unsupported { accel: "tcg", what: format!("MSR {:#x}", e.index) })?;
        }
        Ok(())
    }

    fn run(&mut self, ops: &dyn VmOps) -> Result<VcpuExit, CpuError> {
        let watch: *mut dyn CodeWatch = &mut self.cache;
        // SAFETY: `ops` and the cache outlive this call, and we detach before returning.
        unsafe { self.cpu_mut().attach(ops, watch) };
        let r = self.run_loop(ops);
        self.cpu_mut().detach();
        r
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        Arc::new(TcgKicker { shared: self.shared.clone() })
    }

    fn jit_stats(&self) -> Option<String> {
        let c = &self.cache;
        let valid = c.blocks.iter().filter(|b| b.valid).count();
        let chained: usize = c.blocks.iter().map(|b| b.incoming.len()).sum();
        let used = c.buf.cursor() - c.buf.range().start;
        Some(format!(
            "Translation blocks: {} ({valid} valid, {chained} chained jumps)\nCode buffer: {used} of {} bytes used\n",
            c.blocks.len(),
            used + c.buf.remaining()
        ))
    }

    fn waits_for_start_up(&self) -> bool {
        self.cpu().wait_for_sipi
    }

    fn set_waits_for_start_up(&mut self, wait: bool) {
        self.wait_for_start_up(wait);
    }

    fn reset(&mut self) -> Result<(), CpuError> {
        let (r, s) = regs::power_on_state();
        {
            let st = &mut self.cpu_mut().state;
            st.fpu = FpuState::default();
            st.halted = 0;
            st.inhibit_irq = 0;
            st.dr = [0, 0, 0, 0, 0, 0, 0xffff_0ff0, 0x400];
            st.fault.vector = crate::state::NO_FAULT;
        }
        self.set_sregs(&s)?;
        self.set_regs(&r)?;
        // After RESET, EDX holds the model's family/model/stepping.
        let sig = self.cpu().model.signature();
        self.cpu_mut().state.gpr[2] = u64::from(sig);
        self.cache.clear();
        let cpu = self.cpu_mut();
        (cpu.nmi_blocked, cpu.nmi_pending) = (false, false);
        self.wait_for_start_up(!self.bsp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use iced_x86::code_asm::*;

    use super::*;
    use crate::interp::testutil::Ports;

    /// Runs real-mode `main` (at 0000:1000) to its HLT with an interrupt waiting; the
    /// handler (vector 0x20) stores CX at 0x600. Returns what it stored (0xffff: the
    /// interrupt was not taken).
    fn cx_at_interrupt(main: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> u16 {
        let mem = Arc::new(GuestMemory::flat(1 << 20).unwrap());
        let mut a = CodeAssembler::new(16).unwrap();
        main(&mut a).unwrap();
        mem.write(0x1000, &a.assemble(0x1000).unwrap()).unwrap();
        let mut h = CodeAssembler::new(16).unwrap();
        h.mov(word_ptr(0x600), cx).unwrap();
        h.iret().unwrap();
        mem.write(0x2000, &h.assemble(0x2000).unwrap()).unwrap();
        mem.write_u32(0x20 * 4, 0x2000).unwrap();
        mem.write_u16(0x600, 0xffff).unwrap();

        let mut vcpu = real_mode_vcpu(&mem);
        let ops = Ports { irq: AtomicBool::new(true), ..Ports::default() };
        assert_eq!(vcpu.run(&ops).unwrap(), VcpuExit::Halted);
        mem.read_u16(0x600).unwrap()
    }

    /// A 64-bit guest whose user code calls a function and makes a system call, 100
    /// times; the kernel writes CR3 on each (as a context switch would), calls a
    /// function of its own and returns with SYSRET, then halts. Kernel code is on a
    /// global page, user code is not.
    #[test]
    fn jump_caches_survive_privilege_changes_and_keep_global_pages() {
        const P: u64 = 1;
        const RW: u64 = 2;
        const US: u64 = 4;
        const G: u64 = 1 << 8;
        let mem = Arc::new(GuestMemory::flat(1 << 20).unwrap());
        mem.write_u64(0x10000, 0x11000 | P | RW | US).unwrap();
        mem.write_u64(0x11000, 0x12000 | P | RW | US).unwrap();
        mem.write_u64(0x12000, 0x13000 | P | RW | US).unwrap();
        for i in 0..256u64 {
            let flags = if i == 1 { P | RW | G } else { P | RW | US };
            mem.write_u64(0x13000 + 8 * i, i << 12 | flags).unwrap();
        }
        let put = |at: u64, f: &dyn Fn(&mut CodeAssembler) -> Result<(), IcedError>| {
            let mut a = CodeAssembler::new(64).unwrap();
            f(&mut a).unwrap();
            mem.write(at, &a.assemble(at).unwrap()).unwrap();
        };
        // Kernel: start (to user space), the SYSCALL entry, a function.
        put(0x1000, &|a| {
            a.mov(rcx, 0x2000u64)?;
            a.mov(r11, 2u64)?;
            a.sysretq()
        });
        put(0x1100, &|a| {
            let mut done = a.create_label();
            a.inc(r12)?;
            a.mov(rax, cr3)?;
            a.mov(cr3, rax)?;
            a.mov(rax, 0x1200u64)?;
            a.call(rax)?;
            a.cmp(r12, 100)?;
            a.je(done)?;
            a.sysretq()?;
            a.set_label(&mut done)?;
            a.hlt()
        });
        put(0x1200, &|a| a.ret());
        // User: call a function, make a system call, again.
        put(0x2000, &|a| {
            let mut top = a.create_label();
            a.set_label(&mut top)?;
            a.mov(rax, 0x2100u64)?;
            a.call(rax)?;
            a.syscall()?;
            a.jmp(top)
        });
        put(0x2100, &|a| a.ret());

        let mut vcpu = TcgVcpu::new(mem.clone()).unwrap();
        let (mut r, mut s) = regs::power_on_state();
        s.cs = regs::Segment { selector: 8, type_: 0xb, s: true, present: true, l: true, ..s.cs };
        s.cs.base = 0;
        s.cs.limit = 0xffff_ffff;
        s.cr0 = regs::ctrl::CR0_PE | regs::ctrl::CR0_PG | regs::ctrl::CR0_ET;
        s.cr3 = 0x10000;
        s.cr4 = regs::ctrl::CR4_PAE | 1 << 7;
        s.efer = regs::ctrl::EFER_LME | regs::ctrl::EFER_LMA | regs::ctrl::EFER_SCE;
        for seg in [&mut s.ds, &mut s.es, &mut s.ss] {
            *seg = regs::Segment { selector: 0x10, type_: 3, s: true, present: true, db: true, ..*seg };
            seg.base = 0;
        }
        r.rip = 0x1000;
        r.rsp = 0x8000;
        vcpu.set_sregs(&s).unwrap();
        vcpu.set_regs(&r).unwrap();
        let star = 0x10u64 << 48 | 0x08 << 32;
        let msr = |index, data| MsrEntry { index, data };
        vcpu.set_msrs(&[msr(regs::msr::STAR, star), msr(regs::msr::LSTAR, 0x1100)]).unwrap();
        assert_eq!(vcpu.run(&Ports::default()).unwrap(), VcpuExit::Halted);
        let st = &vcpu.cpu().state;
        assert_eq!(st.gpr[12], 100);
        assert_eq!(st.cpl(), 0);
        // Emptied whole: every array at the first look, then each index's array once,
        // for its mode. 200 privilege changes and 100 CR3 writes flushed none.
        assert_eq!(vcpu.jmp_sync.flushes, 3);
        // The kernel's return address (after the CALL) stays cached across the CR3
        // writes: its page is global. The user's went at the last CR3 write.
        let stub = vcpu.cache.next_stub as u64;
        let live = |idx: usize| st.jmp_cache[idx].iter().filter(|e| e.host != stub).map(|e| e.rip).collect::<Vec<_>>();
        let kernel = live(crate::mmu::MMU_KERNEL);
        assert!(kernel.iter().any(|&rip| (0x1100..0x1200).contains(&rip)), "{kernel:x?}");
        assert_eq!(live(crate::mmu::MMU_USER), [0u64; 0], "user pages are not global");
    }

    /// A vCPU in real mode at 0000:1000, the stack at 0000:8000.
    fn real_mode_vcpu(mem: &Arc<GuestMemory>) -> TcgVcpu {
        let mut vcpu = TcgVcpu::new(mem.clone()).unwrap();
        let (mut r, mut s) = regs::power_on_state();
        s.cs = regs::Segment::real_mode(0, true);
        r.rip = 0x1000;
        r.rsp = 0x8000;
        vcpu.set_sregs(&s).unwrap();
        vcpu.set_regs(&r).unwrap();
        vcpu
    }

    /// Real-mode `main` (at 0000:1000) run to its HLT; returns the words it stored
    /// at 0x600...
    fn real_mode_words(main: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>, n: usize) -> Vec<u16> {
        let mem = Arc::new(GuestMemory::flat(1 << 20).unwrap());
        let mut a = CodeAssembler::new(16).unwrap();
        main(&mut a).unwrap();
        mem.write(0x1000, &a.assemble(0x1000).unwrap()).unwrap();
        let mut vcpu = real_mode_vcpu(&mem);
        assert_eq!(vcpu.run(&Ports::default()).unwrap(), VcpuExit::Halted);
        (0..n).map(|i| mem.read_u16(0x600 + 2 * i as u64).unwrap()).collect()
    }

    /// CF (and OF) set over a flag record only the state holds (after an interpreted
    /// OUT, the flags are the state's): BT and CLC keep OF and ZF, a rotate replaces
    /// OF, each reaching the state as the older operation with the new bits beside.
    #[test]
    fn carry_over_a_record_in_the_state_keeps_the_other_flags() {
        const CF: u16 = 1;
        const ZF: u16 = 1 << 6;
        const OF: u16 = 1 << 11;
        let w = real_mode_words(
            |a| {
                a.mov(ax, 0x8000u32)?;
                a.add(ax, ax)?; // CF, OF, ZF (and PF)
                a.out(0x80, al)?;
                a.xor(bx, bx)?; // (flags; the record then stays the state's: a fresh block)
                a.out(0x80, al)?;
                a.mov(bx, 1u32)?;
                a.add(ax, ax)?; // CF=0 OF=0 ZF=1
                a.out(0x80, al)?;
                a.bt(bx, 0u32)?; // CF=1, OF and ZF kept
                a.out(0x80, al)?;
                a.pushf()?;
                a.pop(word_ptr(0x600))?;
                a.mov(dx, 0x1000u32)?;
                a.add(dx, dx)?; // OF=0, CF=0, ZF=0
                a.out(0x80, al)?;
                a.rol(bx, 15u32)?; // bx = 0x8000: CF=0 (and OF undefined for counts > 1)
                a.rol(bx, 1u32)?; // bx = 1: CF=1, OF = msb ^ CF = 1
                a.out(0x80, al)?;
                a.clc()?; // CF=0, OF kept from the rotate
                a.out(0x80, al)?;
                a.pushf()?;
                a.pop(word_ptr(0x602))?;
                a.stc()?;
                a.cmc()?;
                a.cmc()?;
                a.pushf()?;
                a.pop(word_ptr(0x604))?;
                a.hlt()
            },
            3,
        );
        let st = |f: u16| f & (CF | ZF | OF);
        assert_eq!(st(w[0]), CF | ZF, "bt after an add in the state: {:#x}", w[0]);
        assert_eq!(st(w[1]), OF, "clc after a rotate in the state: {:#x}", w[1]);
        assert_eq!(st(w[2]), CF | OF, "stc; cmc; cmc: {:#x}", w[2]);
    }

    #[cfg(target_arch = "x86_64")]
    /// INC's kept CF at a block's start (after an interpreted OUT the record is only
    /// in the state), for the records read inline (CMP/SUB and ADD at 8, 32 and 64
    /// bits, logic, INC/DEC) and one left to the helper (a shift): as the host has it.
    #[test]
    fn carry_of_the_state_record_matches_the_host() {
        let samples: [u64; 6] = [0, 1, 0x7f, 0x80, 0xffff_ffff, 0x8000_0000_0000_0001];
        type Op = fn(&mut CodeAssembler) -> Result<(), IcedError>;
        let ops: [(&str, Op); 8] = [
            ("cmp r32", |a| a.cmp(eax, ebx)),
            ("sub r64", |a| a.sub(rax, rbx)),
            ("cmp r8", |a| a.cmp(al, bl)),
            ("add r32", |a| a.add(eax, ebx)),
            ("add r64", |a| a.add(rax, rbx)),
            ("and r32", |a| a.and(eax, ebx)),
            ("dec after stc", |a| {
                a.stc()?;
                a.dec(ebx)
            }),
            ("shl", |a| a.shl(eax, 1u32)),
        ];
        for (name, op) in ops {
            for &x in &samples {
                for &y in &samples {
                    let mem = Arc::new(GuestMemory::flat(1 << 20).unwrap());
                    let mut a = CodeAssembler::new(64).unwrap();
                    a.mov(rax, x).unwrap();
                    a.mov(rbx, y).unwrap();
                    op(&mut a).unwrap();
                    a.out(0x80, al).unwrap();
                    a.inc(rcx).unwrap();
                    a.pushfq().unwrap();
                    a.pop(rdx).unwrap();
                    a.hlt().unwrap();
                    mem.write(0x1000, &a.assemble(0x1000).unwrap()).unwrap();
                    let mut vcpu = TcgVcpu::new(mem.clone()).unwrap();
                    let (mut r, mut s) = regs::power_on_state();
                    s.cs = regs::Segment { selector: 8, type_: 0xb, s: true, present: true, l: true, ..s.cs };
                    s.cs.base = 0;
                    s.cr0 = regs::ctrl::CR0_PE | regs::ctrl::CR0_ET;
                    s.efer = regs::ctrl::EFER_LME | regs::ctrl::EFER_LMA;
                    s.ss = regs::Segment { selector: 0x10, type_: 3, s: true, present: true, db: true, ..s.ss };
                    s.ss.base = 0;
                    r.rip = 0x1000;
                    r.rsp = 0x8000;
                    vcpu.set_sregs(&s).unwrap();
                    vcpu.set_regs(&r).unwrap();
                    assert_eq!(vcpu.run(&Ports::default()).unwrap(), VcpuExit::Halted, "{name}");
                    let got = vcpu.cpu().state.gpr[2] & 1;
                    let want = host_cf(name, x, y);
                    assert_eq!(got, want, "{name} {x:#x}, {y:#x}: CF after INC");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    /// CF as the host's instruction leaves it.
    fn host_cf(name: &str, x: u64, y: u64) -> u64 {
        let f: u64;
        // SAFETY: register-only instructions; the flags are read with PUSHF/POP.
        unsafe {
            match name {
                "cmp r32" => {
                    std::arch::asm!("cmp {x:e}, {y:e}", "pushfq", "pop {f}", x = in(reg) x, y = in(reg) y, f = out(reg) f)
                }
                "sub r64" => {
                    std::arch::asm!("sub {x}, {y}", "pushfq", "pop {f}", x = inout(reg) x => _, y = in(reg) y, f = out(reg) f)
                }
                "cmp r8" => {
                    std::arch::asm!("cmp {x:l}, {y:l}", "pushfq", "pop {f}", x = in(reg_abcd) x, y = in(reg_abcd) y, f = out(reg) f)
                }
                "add r32" => {
                    std::arch::asm!("add {x:e}, {y:e}", "pushfq", "pop {f}", x = inout(reg) x => _, y = in(reg) y, f = out(reg) f)
                }
                "add r64" => {
                    std::arch::asm!("add {x}, {y}", "pushfq", "pop {f}", x = inout(reg) x => _, y = in(reg) y, f = out(reg) f)
                }
                "and r32" => {
                    std::arch::asm!("and {x:e}, {y:e}", "pushfq", "pop {f}", x = inout(reg) x => _, y = in(reg) y, f = out(reg) f)
                }
                "dec after stc" => {
                    std::arch::asm!("stc", "dec {y:e}", "pushfq", "pop {f}", y = inout(reg) y => _, f = out(reg) f)
                }
                _ => std::arch::asm!("shl {x:e}, 1", "pushfq", "pop {f}", x = inout(reg) x => _, f = out(reg) f),
            }
        }
        let _ = (x, y);
        f & 1
    }

    /// An interrupt waiting at STI is taken after the one instruction in STI's shadow,
    /// before anything else in the block (here the CLI that closes the window).
    #[test]
    fn interrupt_is_taken_right_after_the_sti_shadow() {
        let cx_seen = cx_at_interrupt(|a| {
            a.xor(cx, cx)?;
            a.sti()?;
            a.inc(cx)?;
            a.inc(cx)?;
            a.inc(cx)?;
            a.cli()?;
            a.hlt()
        });
        assert_eq!(cx_seen, 1, "taken after the shadow instruction");
    }

    /// RDTSC in generated code (a helper call, not the interpreter): EDX:EAX split
    /// right, the counter moving forward, within what the CPU reads before and after.
    #[test]
    fn rdtsc_splits_the_counter_and_moves_forward() {
        let mem = Arc::new(GuestMemory::flat(1 << 20).unwrap());
        let mut a = CodeAssembler::new(32).unwrap();
        a.rdtsc().unwrap();
        a.mov(dword_ptr(0x600), eax).unwrap();
        a.mov(dword_ptr(0x604), edx).unwrap();
        a.mov(ecx, 1000u32).unwrap();
        let mut spin = a.create_label();
        a.set_label(&mut spin).unwrap();
        a.dec(ecx).unwrap();
        a.jnz(spin).unwrap();
        a.rdtsc().unwrap();
        a.mov(dword_ptr(0x608), eax).unwrap();
        a.mov(dword_ptr(0x60c), edx).unwrap();
        a.hlt().unwrap();
        mem.write(0x1000, &a.assemble(0x1000).unwrap()).unwrap();
        let mut vcpu = TcgVcpu::new(mem.clone()).unwrap();
        // 32-bit flat protected mode, so the stores take 32-bit registers.
        let (mut r, mut s) = regs::power_on_state();
        s.cr0 |= regs::ctrl::CR0_PE;
        s.cs = regs::Segment { selector: 8, type_: 0xb, s: true, present: true, db: true, ..s.cs };
        s.cs.base = 0;
        s.cs.limit = 0xffff_ffff;
        for seg in [&mut s.ds, &mut s.es, &mut s.ss] {
            *seg = regs::Segment { selector: 0x10, type_: 3, s: true, present: true, db: true, ..*seg };
            seg.base = 0;
            seg.limit = 0xffff_ffff;
        }
        r.rip = 0x1000;
        r.rsp = 0x8000;
        vcpu.set_sregs(&s).unwrap();
        vcpu.set_regs(&r).unwrap();
        // A TSC in the billions, so the high half is not zero.
        vcpu.cpu_mut().state.msr.tsc_offset = 5 << 32;
        let before = vcpu.cpu().tsc();
        assert_eq!(vcpu.run(&Ports::default()).unwrap(), VcpuExit::Halted);
        let after = vcpu.cpu().tsc();
        let first = mem.read_u64(0x600).unwrap();
        let second = mem.read_u64(0x608).unwrap();
        assert!(before <= first && first < second && second <= after, "{before} {first} {second} {after}");
        assert_eq!(first >> 32, 5, "EDX holds the high half");
    }

    /// STI immediately followed by CLI lets no interrupt in.
    #[test]
    fn sti_cli_takes_no_interrupt() {
        let cx_seen = cx_at_interrupt(|a| {
            a.xor(cx, cx)?;
            a.sti()?;
            a.cli()?;
            a.inc(cx)?;
            a.hlt()
        });
        assert_eq!(cx_seen, 0xffff);
    }

    /// The shadow may start a loop the JIT would otherwise run inside one block
    /// (a Jcc back onto the block's start): the step still ends after one instruction,
    /// and a LOOP onto itself too.
    #[test]
    fn shadow_step_ends_inside_a_loop() {
        let cx_seen = cx_at_interrupt(|a| {
            let mut top = a.create_label();
            a.mov(cx, 5u32)?;
            a.sti()?;
            a.set_label(&mut top)?;
            a.dec(cx)?;
            a.jnz(top)?;
            a.cli()?;
            a.hlt()
        });
        assert_eq!(cx_seen, 4, "taken after the first DEC");
        let cx_seen = cx_at_interrupt(|a| {
            let mut top = a.create_label();
            a.mov(cx, 5u32)?;
            a.sti()?;
            a.set_label(&mut top)?;
            a.loop_(top)?;
            a.cli()?;
            a.hlt()
        });
        assert_eq!(cx_seen, 4, "taken after the first LOOP");
    }
}
