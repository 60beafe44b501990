//! The code buffer: one fixed mapping that holds every translated block.
//!
//! W^X: the mapping is never writable and executable at once. The run loop calls
//! [`CodeBuffer::writable`] before it translates or patches and
//! [`CodeBuffer::executable`] before it runs generated code; only the pages touched in
//! between change protection. Blocks never move, so chained jumps and block pointers
//! stay valid until [`CodeBuffer::clear`] (when the buffer is full, everything goes).
//!
//! ```text
//! let mut buf = CodeBuffer::new(1 << 20)?;
//! buf.writable();
//! let at = buf.append(&bytes_assembled_for(buf.cursor()))?;
//! buf.executable();
//! // jump to at ...
//! ```

use std::io;

/// Executable memory for generated code.
pub struct CodeBuffer {
    base: *mut u8,
    size: usize,
    used: usize,
    /// Page range written since the last switch to executable.
    dirty: Option<(usize, usize)>,
    writable: bool,
}

// SAFETY: the buffer is owned by one vCPU and only touched from its thread at a time.
unsafe impl Send for CodeBuffer {}

const PAGE: usize = 4096;

impl CodeBuffer {
    pub fn new(size: usize) -> io::Result<Self> {
        let size = size.next_multiple_of(PAGE);
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(CodeBuffer { base: p as *mut u8, size, used: 0, dirty: None, writable: false })
    }

    /// Address the next appended byte will have.
    pub fn cursor(&self) -> usize {
        self.base as usize + self.used
    }

    /// The whole mapping's address range.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.base as usize..self.base as usize + self.size
    }

    pub fn remaining(&self) -> usize {
        self.size - self.used
    }

    pub fn contains(&self, addr: usize) -> bool {
        addr >= self.base as usize && addr < self.base as usize + self.used
    }

    fn protect(&self, from: usize, to: usize, prot: i32) {
        let start = from / PAGE * PAGE;
        let end = to.next_multiple_of(PAGE).min(self.size);
        // SAFETY: the range lies inside our own mapping.
        let r = unsafe { libc::mprotect(self.base.add(start) as *mut libc::c_void, end - start, prot) };
        assert_eq!(r, 0, "mprotect of the code buffer failed: {}", io::Error::last_os_error());
    }

    /// Allows writes to pages as they are touched (call before translating/patching).
    pub fn writable(&mut self) {
        self.writable = true;
    }

    fn touch(&mut self, from: usize, to: usize) {
        debug_assert!(self.writable, "code buffer written while executable");
        let (lo, hi) = match self.dirty {
            Some((lo, hi)) if from >= lo && to <= hi => return,
            Some((lo, hi)) => (lo.min(from / PAGE * PAGE), hi.max(to.next_multiple_of(PAGE))),
            None => (from / PAGE * PAGE, to.next_multiple_of(PAGE)),
        };
        self.protect(lo, hi, libc::PROT_READ | libc::PROT_WRITE);
        self.dirty = Some((lo, hi));
    }

    /// Makes everything written since [`Self::writable`] executable again.
    pub fn executable(&mut self) {
        if let Some((lo, hi)) = self.dirty.take() {
            self.protect(lo, hi, libc::PROT_READ | libc::PROT_EXEC);
        }
        self.writable = false;
    }

    /// Appends code assembled for address [`Self::cursor`]; returns its address, or
    /// `None` when the buffer is full.
    pub fn append(&mut self, code: &[u8]) -> Option<usize> {
        if code.len() > self.remaining() {
            return None;
        }
        let at = self.used;
        self.touch(at, at + code.len());
        // SAFETY: [at, at+len) is inside the mapping and was just made writable.
        unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), self.base.add(at), code.len()) };
        self.used += code.len();
        Some(self.base as usize + at)
    }

    /// Overwrites bytes at absolute address `addr` (chaining, unchaining).
    pub fn patch(&mut self, addr: usize, bytes: &[u8]) {
        assert!(self.contains(addr) && self.contains(addr + bytes.len() - 1), "patch outside the code buffer");
        let off = addr - self.base as usize;
        self.touch(off, off + bytes.len());
        // SAFETY: inside the mapping and writable (touched above).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(off), bytes.len()) };
    }

    /// Forgets every block.
    pub fn clear(&mut self) {
        self.used = 0;
    }
}

impl Drop for CodeBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; nothing refers to it past this point.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_patch_and_run() {
        let mut b = CodeBuffer::new(8192).unwrap();
        b.writable();
        // mov eax, 1; ret
        let at = b.append(&[0xb8, 1, 0, 0, 0, 0xc3]).unwrap();
        b.patch(at + 1, &[42]);
        b.executable();
        // SAFETY: the bytes are a complete function with the C ABI.
        let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(at) };
        assert_eq!(f(), 42);
        assert!(b.append(&vec![0; 9000]).is_none());
    }
}
