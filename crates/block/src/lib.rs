//! The block layer: what a disk controller (IDE today; virtio-blk and AHCI later) sees
//! of a drive's medium, whatever image format is behind it.
//!
//! A [`BlockBackend`] is a byte-addressed medium of fixed size. Controllers work in
//! their sector size and call it with sector-aligned offsets; formats (raw, qcow2) and
//! options (read-only, `-snapshot` overlays, cache modes, image locking) live behind it.
//!
//! [`open`] is the one entry point the command line uses: it probes or checks the
//! format, takes QEMU's image locks, opens qcow2 backing chains and wraps `-snapshot`
//! overlays, and its [`OpenError`]s name the file and what is wrong with it. Backends
//! are `Send + Sync` with `&self` methods; each locks what it needs internally.

use thiserror::Error;

mod file;
#[cfg(test)]
mod image_tests;
mod lock;
mod open;
mod qcow2;
mod raw;
mod snapshot;
mod stats;

pub use open::{open, CacheMode, Format, OpenError, OpenOptions};
pub use stats::{BlockStats, Counted};

/// Errors a medium reports; the controller turns them into the guest's error status.
#[derive(Debug, Error)]
pub enum BlockError {
    #[error("I/O error on the image: {0}")]
    Io(#[from] std::io::Error),
    #[error("access beyond the end of the medium (offset {offset:#x}, length {len:#x}, size {size:#x})")]
    OutOfRange { offset: u64, len: usize, size: u64 },
    #[error("the medium is read-only")]
    ReadOnly,
    #[error("the image is corrupt: {0}")]
    Corrupt(String),
}

/// A drive's medium.
pub trait BlockBackend: Send + Sync {
    /// The medium's size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Writes `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Makes every completed write durable (the guest's FLUSH CACHE): with
    /// `cache=writeback` or `none` this reaches the host file with fsync.
    fn flush(&self) -> Result<(), BlockError>;
    /// Whether the medium has a volatile write cache that FLUSH empties (what IDENTIFY
    /// reports as the write cache being enabled). `cache=writethrough` and `directsync`
    /// sync every write, so the guest sees none.
    fn write_cache(&self) -> bool {
        true
    }
}

/// Checks that `[offset, offset + len)` lies within a medium of `size` bytes.
pub fn check_range(offset: u64, len: usize, size: u64) -> Result<(), BlockError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}

/// A medium in memory, for tests of controllers and formats.
pub struct MemBackend {
    data: std::sync::Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemBackend {
    pub fn new(data: Vec<u8>, read_only: bool) -> Self {
        MemBackend { data: std::sync::Mutex::new(data), read_only }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl BlockBackend for MemBackend {
    fn size(&self) -> u64 {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        check_range(offset, buf.len(), data.len() as u64)?;
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
        check_range(offset, buf.len(), data.len() as u64)?;
        data[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_read_only() {
        let m = MemBackend::new(vec![0; 1024], false);
        m.write_at(512, &[7; 512]).unwrap();
        let mut b = [0; 4];
        m.read_at(1020, &mut b).unwrap();
        assert_eq!(b, [7; 4]);
        assert!(matches!(m.read_at(1021, &mut b), Err(BlockError::OutOfRange { .. })));
        assert!(matches!(m.read_at(u64::MAX, &mut b), Err(BlockError::OutOfRange { .. })));
        let ro = MemBackend::new(vec![0; 512], true);
        assert!(matches!(ro.write_at(0, &[1]), Err(BlockError::ReadOnly)));
    }
}
