//! Host files under an image: opening with the cache mode's flags, positional I/O with
//! bounce buffers where `O_DIRECT` needs alignment, and syncing.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::RwLock;

use crate::CacheMode;

/// Request and buffer alignment used under `O_DIRECT`. 4 KiB satisfies every logical
/// block size Linux hosts have in practice; probing the exact value (as QEMU does) would
/// only save bounce copies for 512-byte requests.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// Opens `path` with the flags `cache` asks for. `O_DIRECT` that the filesystem refuses
/// (tmpfs, some FUSE and network filesystems) falls back to the page cache with a
/// warning. Returns the file and whether `O_DIRECT` is in effect.
pub(crate) fn open_host(path: &Path, writable: bool, cache: CacheMode) -> io::Result<(File, bool)> {
    let mut o = OpenOptions::new();
    o.read(true).write(writable);
    if cache.direct() {
        let mut d = o.clone();
        d.custom_flags(libc::O_DIRECT);
        match d.open(path) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "cache={}: '{}' does not support O_DIRECT; using the host page cache instead",
                    cache.name(),
                    path.display()
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok((o.open(path)?, false))
}

/// The size of a regular file or a block device.
pub(crate) fn host_size(file: &File) -> io::Result<u64> {
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

/// fdatasync(2): what QEMU's flush does on a host file.
pub(crate) fn datasync(file: &File) -> io::Result<()> {
    file.sync_data()
}

/// A zeroed heap buffer aligned for `O_DIRECT`.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len.max(DIRECT_ALIGN), DIRECT_ALIGN).expect("bounce buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, layout }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to layout.size() initialised (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// An image file with positional I/O.
pub(crate) struct HostFile {
    file: File,
    /// `O_DIRECT` is in effect: requests go through aligned bounce buffers.
    direct: bool,
    /// The file's size when opened: bounce writes of an unaligned last block must not
    /// leave the file longer than that.
    size: u64,
    /// Read-modify-write of partial blocks under `O_DIRECT` takes it exclusively, other
    /// writes shared, so that no write's bytes are lost to another's read-modify-write.
    rmw: RwLock<()>,
}

impl HostFile {
    pub(crate) fn new(file: File, direct: bool) -> io::Result<HostFile> {
        let size = host_size(&file)?;
        Ok(HostFile { file, direct, size, rmw: RwLock::new(()) })
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    #[cfg(test)]
    pub(crate) fn direct(&self) -> bool {
        self.direct
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.read_exact_at(buf, offset);
        }
        let (start, mut bounce) = self.read_span(offset, buf.len())?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&bounce.as_mut()[skip..skip + buf.len()]);
        Ok(())
    }

    /// Reads the aligned span covering `[offset, offset + len)`; bytes past the end of
    /// the file read as zero.
    fn read_span(&self, offset: u64, len: usize) -> io::Result<(u64, AlignedBuf)> {
        let a = DIRECT_ALIGN as u64;
        let start = offset / a * a;
        let end = (offset + len as u64).div_ceil(a) * a;
        let mut bounce = AlignedBuf::new((end - start) as usize);
        let span = &mut bounce.as_mut()[..(end - start) as usize];
        let mut done = 0;
        while done < span.len() {
            match self.file.read_at(&mut span[done..], start + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((start, bounce))
    }

    pub(crate) fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if !self.direct {
            return self.file.write_all_at(buf, offset);
        }
        let a = DIRECT_ALIGN as u64;
        let aligned = (offset | buf.len() as u64) & (a - 1) == 0;
        let (_shared, _exclusive);
        if aligned {
            _shared = self.rmw.read().unwrap_or_else(|e| e.into_inner());
        } else {
            _exclusive = self.rmw.write().unwrap_or_else(|e| e.into_inner());
        }
        let (start, mut bounce) =
            if aligned { (offset, AlignedBuf::new(buf.len())) } else { self.read_span(offset, buf.len())? };
        let skip = (offset - start) as usize;
        let span_len = ((offset + buf.len() as u64).div_ceil(a) * a - start) as usize;
        let span = &mut bounce.as_mut()[..span_len];
        span[skip..skip + buf.len()].copy_from_slice(buf);
        self.file.write_all_at(span, start)?;
        if start + span_len as u64 > self.size && offset + buf.len() as u64 <= self.size {
            // The padded last block went past the end: cut the file back to its size.
            self.file.set_len(self.size)?;
        }
        Ok(())
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        datasync(&self.file)
    }
}
