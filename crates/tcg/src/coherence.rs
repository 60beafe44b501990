//! Translated code kept true to guest memory when several vCPUs (each with its own
//! code cache) and the host write it.
//!
//! Every guest RAM page has a word of owners in [`GuestMemory`]: bit `i` while vCPU
//! `i` holds translations of the page. The rules that keep every cache right:
//!
//! - A vCPU *claims* a page (sets its bit) before it reads code from it. The first
//!   claim of a page takes write permission from every vCPU's TLB entries for it,
//!   under each TLB's lock, and a TLB fill (under the same lock) enters a page for
//!   writing only while it has no owner. So from the claim on, every guest write to
//!   the page takes the slow path.
//! - A slow-path write, after writing, reads the owners (Dekker's pattern with the
//!   claim: the fences make either the write visible to the translation or the claim
//!   visible to the writer) and posts the page to every other owner; a host write
//!   (DMA, a loader) does the same through [`CodeObserver`].
//! - A vCPU drops the posted pages' translations at its next block boundary: posting
//!   kicks it, and the run loop and the jump-cache refill look at the post first. The
//!   poster clears their owner bits at once (they will not run that code again), so
//!   later writes are fast again even while an owner sleeps in HLT.
//!   It never frees code another thread runs: each vCPU runs its own cache only.
//!
//! A store that hit the TLB just before a claim took its permission may land after
//! the claimer read the page: a write racing with the first execution elsewhere, which
//! x86 leaves to the program's own synchronization (QEMU's TLB_NOTDIRTY has the same
//! window).

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use quern_core::bus::lock;
use quern_core::memory::CodeObserver;
use quern_core::GuestMemory;

use crate::mmu::Tlb;

/// vCPUs the JIT runs at most: one owner bit each.
pub const MAX_VCPUS: u32 = 64;

/// One vCPU, as other threads reach it.
pub struct Link {
    pub index: u32,
    pub bit: u64,
    /// Pages (address >> 12) whose translations the vCPU must drop.
    posted: Mutex<Vec<u64>>,
    pending: AtomicBool,
    /// The vCPU's TLB and exit-request flag, inside its boxed `Cpu`, which `_owner`
    /// keeps alive.
    tlb: *mut Tlb,
    exit_request: *const AtomicU32,
    _owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: other threads touch the TLB only under its lock (`Tlb::protect_remote`) and
// the exit request only atomically; the rest are atomics and mutexes.
unsafe impl Send for Link {}
// SAFETY: as above.
unsafe impl Sync for Link {}

impl Link {
    /// Whether pages were posted since the last [`Link::take_posted`].
    pub fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    pub fn take_posted(&self) -> Vec<u64> {
        let mut p = lock(&self.posted);
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut *p)
    }

    fn post(&self, page: u64) {
        let mut p = lock(&self.posted);
        if p.last() != Some(&page) {
            p.push(page);
        }
        self.pending.store(true, Ordering::Release);
        drop(p);
        // SAFETY: the flag lives in the Cpu `_owner` keeps alive; only ever atomic.
        unsafe { &*self.exit_request }.store(1, Ordering::Release);
    }
}

/// The vCPUs sharing one guest memory.
#[derive(Default)]
pub struct Coherence {
    links: RwLock<Vec<Arc<Link>>>,
    /// More than one vCPU was ever registered (sticky: blocks translated for one vCPU
    /// would not be atomic).
    several: AtomicBool,
}

impl Coherence {
    /// The one for `mem` (made on first use, and then told of host writes to code).
    pub fn of(mem: &GuestMemory) -> Arc<Coherence> {
        let o = mem.code_observer(|| Arc::new(Coherence::default()));
        o.into_any().downcast::<Coherence>().unwrap_or_else(|_| panic!("guest memory has a foreign code observer"))
    }

    /// Enters a vCPU: `index` if given (its owner bit), else the first free one.
    ///
    /// # Safety
    /// `tlb` and `exit_request` must point into a CPU that `owner` keeps alive, and the
    /// TLB must take its lock around every change of its entries and slot logs.
    pub unsafe fn register(
        &self,
        index: Option<u32>,
        tlb: *mut Tlb,
        exit_request: *const AtomicU32,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> Result<Arc<Link>, String> {
        let mut links = self.links.write().unwrap_or_else(|e| e.into_inner());
        let taken = |i: u32| links.iter().any(|l| l.index == i);
        let index = match index {
            Some(i) if i >= MAX_VCPUS => return Err(format!("more than {MAX_VCPUS} vCPUs")),
            Some(i) if taken(i) => return Err(format!("vCPU {i} exists already")),
            Some(i) => i,
            None => (0..MAX_VCPUS).find(|&i| !taken(i)).ok_or(format!("more than {MAX_VCPUS} vCPUs"))?,
        };
        let link = Arc::new(Link {
            index,
            bit: 1 << index,
            posted: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            tlb,
            exit_request,
            _owner: owner,
        });
        links.push(link.clone());
        if links.len() > 1 {
            self.several.store(true, Ordering::Relaxed);
        }
        Ok(link)
    }

    /// Whether other vCPUs may run beside any one: locked instructions must then be
    /// atomic on the host.
    pub fn several(&self) -> bool {
        self.several.load(Ordering::Relaxed)
    }

    pub fn unregister(&self, link: &Arc<Link>) {
        self.links.write().unwrap_or_else(|e| e.into_inner()).retain(|l| !Arc::ptr_eq(l, link));
    }

    /// `link`'s vCPU is about to read code from page `page`: it becomes an owner, and
    /// if it is the first, no TLB keeps the page writable.
    pub fn claim(&self, mem: &GuestMemory, link: &Link, page: u64) {
        if mem.claim_code(page << 12, link.bit) != 0 {
            return;
        }
        let Some(host) = mem.host_ptr(page << 12, 1) else { return };
        for l in self.links.read().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: `register`'s contract: the TLB is alive and locked for changes.
            unsafe { Tlb::protect_remote(l.tlb, host as u64) };
        }
    }

    /// A guest write through the slow path reached page `page` (already written):
    /// the other owners drop their translations of it.
    pub fn wrote(&self, mem: &GuestMemory, me: &Link, page: u64) {
        if !self.several() {
            // Alone: no other owner to tell (and no fence to pay on every slow store).
            return;
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        let others = mem.code_owners(page << 12) & !me.bit;
        if others != 0 {
            // They drop the page's translations at their next block boundary (kicked
            // first): it is theirs no longer from now, so that later writes (a halted
            // vCPU may not look for a while) take the fast path again instead of
            // posting anew. Their own TLBs still keep it read-only while their caches
            // hold code from it (`Tlb::fill`'s `own_code`).
            self.post(page, others);
            mem.release_code(page << 12, others);
        }
    }

    fn post(&self, page: u64, owners: u64) {
        for l in self.links.read().unwrap_or_else(|e| e.into_inner()).iter() {
            if l.bit & owners != 0 {
                crate::profile::count(&crate::profile::REMOTE_INVALIDATIONS);
                l.post(page);
            }
        }
    }
}

impl CodeObserver for Coherence {
    fn host_wrote_code(&self, page: u64, owners: u64) {
        self.post(page, owners);
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}
