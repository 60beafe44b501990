//! The code buffer: one fixed region that holds every translated block.
//!
//! W^X without mprotect: the region is one memfd mapped twice, once read+execute (the
//! addresses generated code runs at and jumps between) and once read+write (where the
//! translator and the chaining patches write). No page is ever writable and executable
//! in the same mapping, and translating a block costs no system call. x86 keeps
//! instruction fetch coherent with stores through any alias, so a patch is seen at once.
//! Blocks never move, so chained jumps and block pointers stay valid until
//! [`CodeBuffer::clear`] (when the buffer is full, everything goes).
//!
//! ```text
//! let mut buf = CodeBuffer::new(1 << 20)?;
//! let at = buf.append(&bytes_assembled_for(buf.cursor()))?;  // an executable address
//! buf.patch(at + 1, &[42]);
//! // jump to at ...
//! ```

use std::io;

/// Executable memory for generated code.
pub struct CodeBuffer {
    /// The read+execute view: code addresses.
    exec: *mut u8,
    /// The read+write view of the same pages.
    write: *mut u8,
    /// The memfd behind both views (to map the executable view afresh, see
    /// [`CodeBuffer::clear`]).
    fd: libc::c_int,
    size: usize,
    used: usize,
    /// Bytes from the start whose pages are already in both views (see
    /// [`CodeBuffer::populate`]).
    populated: usize,
}

// SAFETY: the buffer is owned by one vCPU and only touched from its thread at a time.
unsafe impl Send for CodeBuffer {}

const PAGE: usize = 4096;
/// Pages are put in place this many bytes at a time, ahead of the code written there.
const POPULATE: usize = 1 << 20;

fn map(fd: libc::c_int, size: usize, prot: libc::c_int) -> io::Result<*mut u8> {
    // SAFETY: a fresh shared mapping of our own memfd; no existing memory is affected.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), size, prot, libc::MAP_SHARED, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as *mut u8)
}

/// Maps the first `size` bytes of the memfd `fd` again over our own view of them at `at`.
fn map_at(fd: libc::c_int, size: usize, prot: libc::c_int, at: *mut u8) -> io::Result<()> {
    // SAFETY: exactly over our own view of the same memfd; no other memory is affected.
    let p = unsafe { libc::mmap(at as *mut libc::c_void, size, prot, libc::MAP_SHARED | libc::MAP_FIXED, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl CodeBuffer {
    pub fn new(size: usize) -> io::Result<Self> {
        let size = size.next_multiple_of(PAGE);
        // SAFETY: memfd_create takes a NUL-terminated name and returns a new descriptor.
        let fd = unsafe { libc::memfd_create(c"quern-code".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let result = (|| {
            // SAFETY: `fd` is our own fresh memfd.
            if unsafe { libc::ftruncate(fd, size as libc::off_t) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let exec = map(fd, size, libc::PROT_READ | libc::PROT_EXEC)?;
            let write = map(fd, size, libc::PROT_READ | libc::PROT_WRITE)?;
            Ok(CodeBuffer { exec, write, fd, size, used: 0, populated: 0 })
        })();
        if result.is_err() {
            // SAFETY: closing our own descriptor, which nothing else holds.
            unsafe { libc::close(fd) };
        }
        result
    }

    /// Address the next appended byte will have (in the executable view).
    pub fn cursor(&self) -> usize {
        self.exec as usize + self.used
    }

    /// The executable view's address range.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.exec as usize..self.exec as usize + self.size
    }

    pub fn remaining(&self) -> usize {
        self.size - self.used
    }

    pub fn contains(&self, addr: usize) -> bool {
        addr >= self.exec as usize && addr < self.exec as usize + self.used
    }

    /// Appends code assembled for address [`Self::cursor`]; returns its address, or
    /// `None` when the buffer is full.
    pub fn append(&mut self, code: &[u8]) -> Option<usize> {
        if code.len() > self.remaining() {
            return None;
        }
        let at = self.used;
        if at + code.len() > self.populated {
            self.populate(at + code.len());
        }
        // SAFETY: [at, at+len) is inside the writable view.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.write.add(at), code.len()) };
        self.sync_icache(at, code.len());
        self.used += code.len();
        Some(self.exec as usize + at)
    }

    /// Puts the pages up to `end` (and on to the next [`POPULATE`] boundary) in both
    /// views with two system calls, instead of a page fault in each view for every
    /// page as code is first written there and then first run: translating a
    /// kernel's boot fills some 70 MB. Best effort: without MADV_POPULATE_* (Linux
    /// before 5.14) the pages fault in as they are reached.
    fn populate(&mut self, end: usize) {
        let from = self.populated;
        let to = end.next_multiple_of(POPULATE).min(self.size);
        for (view, advice) in [(self.write, libc::MADV_POPULATE_WRITE), (self.exec, libc::MADV_POPULATE_READ)] {
            // SAFETY: advice on a page-aligned range of our own mapping; it only
            // faults pages in.
            unsafe { libc::madvise(view.add(from) as *mut libc::c_void, to - from, advice) };
        }
        self.populated = to;
    }

    /// Overwrites bytes at executable address `addr` (chaining, unchaining).
    pub fn patch(&mut self, addr: usize, bytes: &[u8]) {
        assert!(self.contains(addr) && self.contains(addr + bytes.len() - 1), "patch outside the code buffer");
        let off = addr - self.exec as usize;
        // SAFETY: inside the writable view (checked above).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.write.add(off), bytes.len()) };
        self.sync_icache(off, bytes.len());
    }

    /// Makes bytes just written at `off` visible to instruction fetch: nothing on
    /// x86-64; on aarch64 the data cache cleaned and the instruction cache
    /// invalidated for those lines, through the executable view (both views map the
    /// same memory).
    fn sync_icache(&self, off: usize, len: usize) {
        // SAFETY: [off, off+len) is inside the buffer, whose executable view is
        // mapped readable.
        let code = unsafe { std::slice::from_raw_parts(self.exec.add(off), len) };
        dynasmrt::cache_control::synchronize_icache(code);
    }

    /// Forgets every block. The executable view is mapped afresh over itself: the
    /// same addresses now hold new code to any observer, including emulators that
    /// ignore AArch64's instruction-cache maintenance (Debian 12's qemu-user 7.2, which
    /// runs the aarch64 build's tests, would go on running what it translated from
    /// the old code). One system call, over the pages that held code.
    pub fn clear(&mut self) {
        // Only the pages that held code: the rest is new to everyone already.
        let used = self.used.next_multiple_of(PAGE);
        if used == 0 {
            return;
        }
        if let Err(e) = map_at(self.fd, used, libc::PROT_READ | libc::PROT_EXEC, self.exec) {
            // Only out of memory; the old view may be gone, and nothing can run.
            panic!("tcg: cannot map the code buffer afresh: {e}");
        }
        // (`populated` stays: the new view's pages fault in as code runs there.)
        self.used = 0;
    }
}

impl Drop for CodeBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping our own two views and closing our descriptor; nothing refers to
        // them past this point.
        unsafe {
            libc::munmap(self.exec as *mut libc::c_void, self.size);
            libc::munmap(self.write as *mut libc::c_void, self.size);
            libc::close(self.fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A host function returning `v`; its first four bytes change with `v` only.
    #[cfg(target_arch = "x86_64")]
    fn returns(v: u8) -> Vec<u8> {
        // mov eax, v; ret
        vec![0xb8, v, 0, 0, 0, 0xc3]
    }

    #[cfg(target_arch = "aarch64")]
    fn returns(v: u8) -> Vec<u8> {
        // movz w0, #v; ret
        [0x5280_0000 | u32::from(v) << 5, 0xd65f_03c0].iter().flat_map(|i: &u32| i.to_le_bytes()).collect()
    }

    /// An aarch64 build running under an emulator on an x86 host (its /proc/cpuinfo is
    /// the host's).
    fn under_user_mode_emulation() -> bool {
        cfg!(not(target_arch = "x86_64"))
            && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("vendor_id"))
    }

    #[test]
    fn append_patch_and_run() {
        let mut b = CodeBuffer::new(8192).unwrap();
        let at = b.append(&returns(1)).unwrap();
        b.patch(at, &returns(42)[..4]);
        // SAFETY: the bytes are a complete function with the C ABI.
        let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(at) };
        assert_eq!(f(), 42);
        // A patch of code that already ran is seen by the next call (on aarch64: once
        // the instruction cache is synchronised).
        b.patch(at, &returns(7)[..4]);
        if f() == 42 && under_user_mode_emulation() {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "HOST LIMIT: codebuf::append_patch_and_run: this aarch64 test runs under qemu-user, which does not \
                 see code rewritten through the buffer's writable view once it has run (qemu-user 7.2 ignores \
                 `ic ivau`); the re-patch is not checked here"
            );
        } else {
            assert_eq!(f(), 7);
        }
        assert!(b.append(&vec![0; 9000]).is_none());
    }

    #[test]
    fn no_view_is_writable_and_executable() {
        let b = CodeBuffer::new(4096).unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        for line in maps.lines() {
            let range = line.split(' ').next().unwrap();
            let start = usize::from_str_radix(range.split('-').next().unwrap(), 16).unwrap();
            if start == b.exec as usize || start == b.write as usize {
                let perms = line.split(' ').nth(1).unwrap();
                assert!(!(perms.contains('w') && perms.contains('x')), "{line}");
            }
        }
    }
}
