//! Guest physical memory: regions of host memory mapped with memmap2.
//!
//! A [`GuestMemory`] owns one or more anonymous host mappings ("backings") and a sorted
//! list of guest-physical regions, each a window onto a backing. Two regions may show
//! the same backing bytes (the PC aliases the top of the BIOS ROM below 1 MiB), and the
//! PC's holes (VGA window, PCI hole below 4 GiB) are simply addresses no region covers:
//! an access there is MMIO and goes to the bus instead.
//!
//! A region may have several *views* (the PC's PAM registers switch each 16 KiB of
//! 0xc0000-0xfffff between the BIOS ROM and shadow RAM, read-only or not): the same
//! guest range onto other host bytes or with other rights, picked at run time with
//! [`GuestMemory::select_view`]. A switch bumps [`GuestMemory::generation`], which
//! tells accelerators to drop what they cached of the old view (translations, TLB
//! entries, KVM memory slots).
//!
//! Guest memory is shared by every vCPU thread and by devices doing DMA, and the guest
//! may race with itself as real hardware allows, so access goes through raw pointers
//! with copies, never through Rust references into guest RAM.

use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use memmap2::{MmapMut, MmapOptions};
use thiserror::Error;

/// Size of the pages that code tracking and the soft-MMU work in.
pub const PAGE_SIZE: u64 = 4096;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory: {source} (try a smaller -m)")]
    Map { size: usize, source: std::io::Error },
    #[error("guest address {addr:#x}+{len:#x} is not backed by RAM or ROM")]
    Unmapped { addr: u64, len: usize },
    #[error("guest region at {base:#x} overlaps another region")]
    Overlap { base: u64 },
    #[error("guest region at {base:#x} lies outside its backing")]
    OutsideBacking { base: u64 },
    #[error("no guest region starts at {base:#x}, or it has no view {view}")]
    NoView { base: u64, view: usize },
}

/// What a region is, as the accelerators need to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Ordinary read-write RAM.
    Ram,
    /// Firmware ROM: guest writes are ignored (KVM maps it read-only).
    Rom,
}

/// One guest-physical window onto host memory, as handed to an accelerator.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub guest_base: u64,
    pub size: u64,
    /// Host address of the region's first byte; valid for the life of the GuestMemory.
    pub host_addr: *mut u8,
    pub kind: RegionKind,
}

// SAFETY: a Region only describes a mapping owned by GuestMemory; the pointer is never
// dereferenced through a Region without the bounds GuestMemory checked.
unsafe impl Send for Region {}
// SAFETY: as above; the description itself is immutable.
unsafe impl Sync for Region {}

impl Region {
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.guest_base && addr - self.guest_base < self.size
    }
    pub fn end(&self) -> u64 {
        self.guest_base + self.size
    }
}

/// A request for one region when building guest memory.
#[derive(Clone, Copy, Debug)]
pub struct RegionSpec {
    pub guest_base: u64,
    pub size: u64,
    /// Index of the backing (in the order of [`GuestMemory::new`]'s `backing_sizes`).
    pub backing: usize,
    /// Offset of the region's first byte inside its backing.
    pub offset: u64,
    pub kind: RegionKind,
}

/// Another view of a region: the same guest range onto other bytes or rights.
#[derive(Clone, Copy, Debug)]
pub struct ViewSpec {
    pub backing: usize,
    pub offset: u64,
    pub kind: RegionKind,
}

/// A region and its views; `current` indexes `views`.
struct Slot {
    guest_base: u64,
    size: u64,
    views: Vec<(*mut u8, RegionKind)>,
    current: AtomicUsize,
}

impl Slot {
    fn region(&self) -> Region {
        let (host_addr, kind) = self.views[self.current.load(Ordering::Acquire)];
        Region { guest_base: self.guest_base, size: self.size, host_addr, kind }
    }
    fn contains(&self, addr: u64) -> bool {
        addr >= self.guest_base && addr - self.guest_base < self.size
    }
}

/// The guest's physical memory. Cheap to share behind an `Arc`.
pub struct GuestMemory {
    regions: Vec<Slot>,
    /// Bumped by every view switch.
    generation: AtomicU64,
    backings: Vec<MmapMut>,
    /// One word a page of each region: bit `i` set while vCPU `i` of the JIT holds
    /// translations of the page's bytes ([`GuestMemory::claim_code`]).
    code: Vec<Vec<AtomicU64>>,
    /// Told when the host (a loader, DMA) writes a page some vCPU holds code from.
    observer: OnceLock<Arc<dyn CodeObserver>>,
}

/// What the JIT keeps of pages it translated code from, as host writes concern it.
pub trait CodeObserver: Send + Sync {
    /// The host wrote guest-physical page `page` (address >> 12), from which the vCPUs
    /// in the bit mask `owners` hold translations.
    fn host_wrote_code(&self, page: u64, owners: u64);
    /// For the JIT to find its own type again behind the trait.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

impl std::fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMemory").field("regions", &self.regions()).finish()
    }
}

impl GuestMemory {
    /// Maps `backing_sizes` anonymous host mappings and lays `regions` over them.
    pub fn new(backing_sizes: &[usize], specs: &[RegionSpec]) -> Result<Self, MemoryError> {
        let mut backings = Vec::with_capacity(backing_sizes.len());
        for &size in backing_sizes {
            let map =
                MmapOptions::new().len(size.max(1)).map_anon().map_err(|source| MemoryError::Map { size, source })?;
            // Transparent huge pages where the host allows them (as QEMU asks for
            // guest RAM): one fault per 2 MiB the guest touches instead of 512, and
            // fewer host TLB misses behind the soft TLB. Refused is fine.
            let _ = map.advise(memmap2::Advice::HugePage);
            backings.push(map);
        }
        let mut specs = specs.to_vec();
        specs.sort_by_key(|s| s.guest_base);
        let mut regions: Vec<Slot> = Vec::with_capacity(specs.len());
        for s in &specs {
            let backing = backings.get_mut(s.backing).ok_or(MemoryError::OutsideBacking { base: s.guest_base })?;
            if s.offset.checked_add(s.size).is_none_or(|end| end > backing.len() as u64) {
                return Err(MemoryError::OutsideBacking { base: s.guest_base });
            }
            if let Some(prev) = regions.last() {
                if prev.guest_base + prev.size > s.guest_base {
                    return Err(MemoryError::Overlap { base: s.guest_base });
                }
            }
            // SAFETY: offset + size was checked to lie inside the backing above.
            let host_addr = unsafe { backing.as_mut_ptr().add(s.offset as usize) };
            regions.push(Slot {
                guest_base: s.guest_base,
                size: s.size,
                views: vec![(host_addr, s.kind)],
                current: AtomicUsize::new(0),
            });
        }
        let code =
            regions.iter().map(|r| (0..r.size.div_ceil(PAGE_SIZE)).map(|_| AtomicU64::new(0)).collect()).collect();
        Ok(GuestMemory { regions, generation: AtomicU64::new(0), backings, code, observer: OnceLock::new() })
    }

    /// Gives the region that starts at `guest_base` another view (before the memory is
    /// shared); returns its index for [`select_view`](Self::select_view). View 0 is
    /// the region as built.
    pub fn add_view(&mut self, guest_base: u64, view: ViewSpec) -> Result<usize, MemoryError> {
        let i = self
            .region_index(guest_base)
            .filter(|&i| self.regions[i].guest_base == guest_base)
            .ok_or(MemoryError::NoView { base: guest_base, view: 0 })?;
        let size = self.regions[i].size;
        let backing = self.backings.get_mut(view.backing).ok_or(MemoryError::OutsideBacking { base: guest_base })?;
        if view.offset.checked_add(size).is_none_or(|end| end > backing.len() as u64) {
            return Err(MemoryError::OutsideBacking { base: guest_base });
        }
        // SAFETY: offset + size was checked to lie inside the backing above.
        let host = unsafe { backing.as_mut_ptr().add(view.offset as usize) };
        let slot = &mut self.regions[i];
        slot.views.push((host, view.kind));
        Ok(slot.views.len() - 1)
    }

    /// Shows view `view` of the region that starts at `guest_base`; returns whether
    /// that changed anything (and then bumps the generation).
    pub fn select_view(&self, guest_base: u64, view: usize) -> Result<bool, MemoryError> {
        let slot = self
            .region_index(guest_base)
            .map(|i| &self.regions[i])
            .filter(|s| s.guest_base == guest_base && view < s.views.len())
            .ok_or(MemoryError::NoView { base: guest_base, view })?;
        let changed = slot.current.swap(view, Ordering::AcqRel) != view;
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(changed)
    }

    /// Counts view switches: an accelerator that cached host addresses or rights of
    /// a switchable region revalidates when this moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The regions that have more than one view (their current view).
    pub fn switchable_regions(&self) -> Vec<Region> {
        self.regions.iter().filter(|s| s.views.len() > 1).map(Slot::region).collect()
    }

    /// Writes `buf` into the bytes view `view` of the region holding `addr` shows at
    /// `addr`, whichever view is current (the PC's shadow RAM takes writes while
    /// reads still come from ROM). The range must lie in that one region.
    pub fn write_view(&self, addr: u64, view: usize, buf: &[u8]) -> Result<(), MemoryError> {
        let unmapped = MemoryError::Unmapped { addr, len: buf.len() };
        let i = self.region_index(addr).ok_or(unmapped)?;
        let slot = &self.regions[i];
        let (host, _) = *slot.views.get(view).ok_or(MemoryError::NoView { base: slot.guest_base, view })?;
        let off = addr - slot.guest_base;
        if off.checked_add(buf.len() as u64).is_none_or(|end| end > slot.size) {
            return Err(MemoryError::Unmapped { addr, len: buf.len() });
        }
        // SAFETY: [off, off+len) lies inside the view, which lies inside its backing.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), host.add(off as usize), buf.len()) };
        self.host_wrote(i, off, buf.len() as u64);
        Ok(())
    }

    /// Plain RAM from guest address 0, in one region. Handy for tests.
    pub fn flat(size: usize) -> Result<Self, MemoryError> {
        Self::new(
            &[size],
            &[RegionSpec { guest_base: 0, size: size as u64, backing: 0, offset: 0, kind: RegionKind::Ram }],
        )
    }

    /// The regions as they are now (current views), sorted by guest address.
    pub fn regions(&self) -> Vec<Region> {
        self.regions.iter().map(Slot::region).collect()
    }

    /// The lengths of the host mappings behind guest memory (RAM, ROM, shadow RAM),
    /// as save/restore stores them.
    pub fn backing_lens(&self) -> Vec<u64> {
        self.backings.iter().map(|b| b.len() as u64).collect()
    }

    /// Copies bytes of backing `index` at `offset` into `buf` (for a save, with the
    /// vCPUs stopped).
    pub fn read_backing(&self, index: usize, offset: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let src = self.backing_ptr(index, offset, buf.len())?;
        // SAFETY: backing_ptr checked that the range lies inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` into backing `index` at `offset`: a restore, before any vCPU has
    /// run (no translated code is told).
    pub fn write_backing(&self, index: usize, offset: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let dst = self.backing_ptr(index, offset, buf.len())?;
        // SAFETY: backing_ptr checked that the range lies inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) };
        Ok(())
    }

    fn backing_ptr(&self, index: usize, offset: u64, len: usize) -> Result<*mut u8, MemoryError> {
        let b = self.backings.get(index).ok_or(MemoryError::OutsideBacking { base: offset })?;
        if offset.checked_add(len as u64).is_none_or(|end| end > b.len() as u64) {
            return Err(MemoryError::OutsideBacking { base: offset });
        }
        // SAFETY: inside the mapping, checked above.
        Ok(unsafe { b.as_ptr().add(offset as usize) as *mut u8 })
    }

    /// Which view each switchable region shows, in address order (saved with memory).
    pub fn current_views(&self) -> Vec<usize> {
        self.regions.iter().filter(|s| s.views.len() > 1).map(|s| s.current.load(Ordering::Acquire)).collect()
    }

    /// Shows `views` (from [`GuestMemory::current_views`]) again.
    pub fn restore_views(&self, views: &[usize]) -> Result<(), MemoryError> {
        let slots: Vec<&Slot> = self.regions.iter().filter(|s| s.views.len() > 1).collect();
        if slots.len() != views.len() {
            return Err(MemoryError::NoView { base: 0, view: views.len() });
        }
        for (s, &v) in slots.iter().zip(views) {
            self.select_view(s.guest_base, v)?;
        }
        Ok(())
    }

    /// Total bytes of the host mappings (RAM and ROM).
    pub fn backing_bytes(&self) -> usize {
        self.backings.iter().map(|b| b.len()).sum()
    }

    fn region_index(&self, addr: u64) -> Option<usize> {
        let i = self.regions.partition_point(|r| r.guest_base <= addr);
        (i > 0 && self.regions[i - 1].contains(addr)).then(|| i - 1)
    }

    /// The region holding `addr` (its current view), if it is RAM or ROM.
    pub fn region(&self, addr: u64) -> Option<Region> {
        self.region_index(addr).map(|i| self.regions[i].region())
    }

    /// Host pointer for `len` bytes at `addr`, if they all lie in one region.
    ///
    /// The pointer stays valid for the life of `self`; the caller must treat the
    /// memory as shared with the guest (no references, no assumptions of stability).
    pub fn host_ptr(&self, addr: u64, len: usize) -> Option<*mut u8> {
        let r = self.region(addr)?;
        let off = addr - r.guest_base;
        if off.checked_add(len as u64)? > r.size {
            return None;
        }
        // SAFETY: off + len lies within the region, which lies within its mapping.
        Some(unsafe { r.host_addr.add(off as usize) })
    }

    /// Whether `addr` is backed by RAM or ROM (false means it is MMIO space).
    pub fn is_memory(&self, addr: u64) -> bool {
        self.region_index(addr).is_some()
    }

    /// Copies guest bytes at `addr` into `buf`; the range may span regions.
    pub fn read(&self, mut addr: u64, mut buf: &mut [u8]) -> Result<(), MemoryError> {
        let whole = (addr, buf.len());
        while !buf.is_empty() {
            let r = self.region(addr).ok_or(MemoryError::Unmapped { addr: whole.0, len: whole.1 })?;
            let off = (addr - r.guest_base) as usize;
            let n = buf.len().min(r.size as usize - off);
            // SAFETY: [off, off+n) lies in the region; buf is a distinct host buffer.
            unsafe { std::ptr::copy_nonoverlapping(r.host_addr.add(off), buf.as_mut_ptr(), n) };
            addr += n as u64;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// Copies `buf` to guest memory at `addr` (telling the JIT of code it overwrote). Writes to ROM
    /// are allowed: this is the host's (loader's) view, not the guest's.
    pub fn write(&self, mut addr: u64, mut buf: &[u8]) -> Result<(), MemoryError> {
        let whole = (addr, buf.len());
        while !buf.is_empty() {
            let i = self.region_index(addr).ok_or(MemoryError::Unmapped { addr: whole.0, len: whole.1 })?;
            let r = self.regions[i].region();
            let off = (addr - r.guest_base) as usize;
            let n = buf.len().min(r.size as usize - off);
            // SAFETY: [off, off+n) lies in the region; buf is a distinct host buffer.
            unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), r.host_addr.add(off), n) };
            self.host_wrote(i, off as u64, n as u64);
            addr += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// A bus master's write (a device's DMA): RAM takes it, ROM drops it as the bus
    /// does, and a hole (device space, beyond memory) is an error, with nothing past it
    /// written.
    pub fn dma_write(&self, mut addr: u64, mut data: &[u8]) -> Result<(), MemoryError> {
        while !data.is_empty() {
            let r = self.region(addr).ok_or(MemoryError::Unmapped { addr, len: data.len() })?;
            let n = data.len().min((r.end() - addr) as usize);
            if r.kind == RegionKind::Ram {
                self.write(addr, &data[..n])?;
            }
            addr = addr.checked_add(n as u64).ok_or(MemoryError::Unmapped { addr, len: data.len() })?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Fills `len` bytes at `addr` with `byte`.
    pub fn fill(&self, addr: u64, len: usize, byte: u8) -> Result<(), MemoryError> {
        let chunk = [byte; 4096];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            self.write(addr + done as u64, &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    /// After a host write: pages some vCPU holds translations of go to the observer.
    /// The fence pairs with the one in [`Self::claim_code`]: either the write is seen by
    /// a translation made after the claim, or the claim is seen here.
    fn host_wrote(&self, region: usize, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        fence(Ordering::SeqCst);
        let words = &self.code[region];
        for page in off / PAGE_SIZE..=(off + len - 1) / PAGE_SIZE {
            // The owners drop their translations (told below): the page is theirs no
            // longer, so that later writes do not tell them again.
            let word = &words[page as usize];
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let owners = word.swap(0, Ordering::SeqCst);
            if owners != 0 {
                if let Some(o) = self.observer.get() {
                    o.host_wrote_code((self.regions[region].guest_base >> 12) + page, owners);
                }
            }
        }
    }

    /// The code-owner word of the page holding `addr`, if it is RAM or ROM.
    fn code_word(&self, addr: u64) -> Option<&AtomicU64> {
        let i = self.region_index(addr)?;
        self.code[i].get(((addr - self.regions[i].guest_base) / PAGE_SIZE) as usize)
    }

    /// The vCPUs (a bit each) holding translations of the page at `addr`.
    pub fn code_owners(&self, addr: u64) -> u64 {
        self.code_word(addr).map_or(0, |w| w.load(Ordering::SeqCst))
    }

    /// Marks the page at `addr` as holding code for the vCPUs in `bits`, before they
    /// read it; returns the owners before.
    pub fn claim_code(&self, addr: u64, bits: u64) -> u64 {
        let prev = self.code_word(addr).map_or(0, |w| w.fetch_or(bits, Ordering::SeqCst));
        fence(Ordering::SeqCst);
        prev
    }

    /// The vCPUs in `bits` dropped their translations of the page at `addr`.
    pub fn release_code(&self, addr: u64, bits: u64) {
        if let Some(w) = self.code_word(addr) {
            w.fetch_and(!bits, Ordering::SeqCst);
        }
    }

    /// The observer of host writes to code, made by `init` on first use (the JIT's
    /// vCPUs share it).
    pub fn code_observer(&self, init: impl FnOnce() -> Arc<dyn CodeObserver>) -> Arc<dyn CodeObserver> {
        self.observer.get_or_init(init).clone()
    }

    pub fn read_u8(&self, addr: u64) -> Result<u8, MemoryError> {
        let mut b = [0; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }
    pub fn read_u16(&self, addr: u64) -> Result<u16, MemoryError> {
        let mut b = [0; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    pub fn read_u32(&self, addr: u64) -> Result<u32, MemoryError> {
        let mut b = [0; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    pub fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut b = [0; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    pub fn write_u8(&self, addr: u64, v: u8) -> Result<(), MemoryError> {
        self.write(addr, &[v])
    }
    pub fn write_u16(&self, addr: u64, v: u16) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }
    pub fn write_u32(&self, addr: u64, v: u32) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }
    pub fn write_u64(&self, addr: u64, v: u64) -> Result<(), MemoryError> {
        self.write(addr, &v.to_le_bytes())
    }
}

// SAFETY: the mappings live as long as the GuestMemory and are only reached through
// copies with bounds checked; concurrent guest-style access is the intended use.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; the code-owner words are atomics.
unsafe impl Sync for GuestMemory {}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(guest_base: u64, size: u64, backing: usize, offset: u64) -> RegionSpec {
        RegionSpec { guest_base, size, backing, offset, kind: RegionKind::Ram }
    }

    #[test]
    fn read_write_round_trip() {
        let m = GuestMemory::flat(1 << 20).unwrap();
        m.write_u32(0x1000, 0xdead_beef).unwrap();
        assert_eq!(m.read_u32(0x1000).unwrap(), 0xdead_beef);
        assert_eq!(m.read_u8(0x1003).unwrap(), 0xde);
    }

    #[test]
    fn out_of_range_is_an_error() {
        let m = GuestMemory::flat(4096).unwrap();
        assert!(matches!(m.read_u32(4094), Err(MemoryError::Unmapped { .. })));
        assert!(m.write(0x10_0000, &[1]).is_err());
        assert!(m.host_ptr(4090, 8).is_none());
    }

    #[test]
    fn holes_and_aliases() {
        // RAM [0,64K) and [128K,192K); the second backing shown at 1M and at 2M.
        let m = GuestMemory::new(
            &[0x30000, 0x1000],
            &[
                spec(0, 0x10000, 0, 0),
                spec(0x20000, 0x10000, 0, 0x20000),
                spec(0x100000, 0x1000, 1, 0),
                spec(0x200000, 0x1000, 1, 0),
            ],
        )
        .unwrap();
        assert!(!m.is_memory(0x18000));
        assert!(m.read_u8(0x18000).is_err());
        m.write_u16(0x100010, 0x1234).unwrap();
        assert_eq!(m.read_u16(0x200010).unwrap(), 0x1234);
        // A read spanning two adjacent regions is allowed only without a hole.
        assert!(m.read(0xfffe, &mut [0; 4]).is_err());
    }

    #[test]
    fn overlapping_regions_are_refused() {
        let r = GuestMemory::new(&[0x2000], &[spec(0, 0x2000, 0, 0), spec(0x1000, 0x1000, 0, 0)]);
        assert!(matches!(r, Err(MemoryError::Overlap { .. })));
        let r = GuestMemory::new(&[0x1000], &[spec(0, 0x2000, 0, 0)]);
        assert!(matches!(r, Err(MemoryError::OutsideBacking { .. })));
    }

    #[test]
    fn views_switch_bytes_and_rights() {
        // RAM regions at 0 and 0x10000; a ROM backing as the second one's other view.
        let mut m =
            GuestMemory::new(&[0x20000, 0x10000], &[spec(0, 0x10000, 0, 0), spec(0x10000, 0x10000, 0, 0x10000)])
                .unwrap();
        assert!(m.add_view(0x1000, ViewSpec { backing: 1, offset: 0, kind: RegionKind::Rom }).is_err(), "not a start");
        let rom = m.add_view(0x10000, ViewSpec { backing: 1, offset: 0, kind: RegionKind::Rom }).unwrap();
        assert_eq!(rom, 1);
        assert!(m.add_view(0x10000, ViewSpec { backing: 1, offset: 1, kind: RegionKind::Rom }).is_err());
        m.write_u32(0x10010, 0x1111).unwrap();
        assert_eq!(m.switchable_regions().len(), 1);
        let g = m.generation();
        assert!(m.select_view(0x10000, rom).unwrap());
        assert!(!m.select_view(0x10000, rom).unwrap(), "no change, no new generation");
        assert_eq!(m.generation(), g + 1);
        assert_eq!(m.region(0x10010).unwrap().kind, RegionKind::Rom);
        assert_eq!(m.read_u32(0x10010).unwrap(), 0, "the ROM view's bytes");
        // The RAM view still takes writes while the ROM one is shown.
        m.write_view(0x10010, 0, &0x2222u32.to_le_bytes()).unwrap();
        assert_eq!(m.read_u32(0x10010).unwrap(), 0);
        m.select_view(0x10000, 0).unwrap();
        assert_eq!(m.read_u32(0x10010).unwrap(), 0x2222);
        assert!(m.select_view(0x10000, 2).is_err());
        assert!(m.select_view(0x10004, 0).is_err());
        assert!(m.write_view(0x1fffe, 0, &[0; 4]).is_err());
    }

    #[test]
    fn host_writes_to_code_reach_the_observer() {
        use std::sync::Mutex;
        struct Seen(Mutex<Vec<(u64, u64)>>);
        impl CodeObserver for Seen {
            fn host_wrote_code(&self, page: u64, owners: u64) {
                self.0.lock().unwrap().push((page, owners));
            }
            fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
                self
            }
        }
        let m = GuestMemory::flat(1 << 16).unwrap();
        let seen = Arc::new(Seen(Mutex::new(Vec::new())));
        let s2 = seen.clone();
        m.code_observer(|| s2);
        assert_eq!(m.claim_code(0x3000, 0b10), 0);
        assert_eq!(m.claim_code(0x3008, 0b01), 0b10);
        assert_eq!(m.code_owners(0x3fff), 0b11);
        m.write(0x2ffe, &[1, 2, 3, 4]).unwrap();
        assert_eq!(*seen.0.lock().unwrap(), [(3, 0b11)], "only the code page is reported");
        assert_eq!(m.code_owners(0x3000), 0, "the owners were told: the page is theirs no longer");
        m.write(0x3000, &[1]).unwrap();
        assert_eq!(seen.0.lock().unwrap().len(), 1, "nobody to tell again");
    }
}
