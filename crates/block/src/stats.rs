//! Request counters of a drive (the monitor's `query-blockstats`, libvirt's
//! `domstats`), kept by a backend that wraps the drive's medium.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::{BlockBackend, BlockError};

/// Completed requests and bytes since the drive was opened.
#[derive(Debug, Default)]
pub struct BlockStats {
    pub rd_bytes: AtomicU64,
    pub wr_bytes: AtomicU64,
    pub rd_ops: AtomicU64,
    pub wr_ops: AtomicU64,
    pub flush_ops: AtomicU64,
}

/// A medium whose successful requests are counted in `stats`.
pub struct Counted {
    inner: Arc<dyn BlockBackend>,
    stats: Arc<BlockStats>,
}

impl Counted {
    /// Wraps `inner`; returns the wrapper and its counters.
    pub fn new(inner: Arc<dyn BlockBackend>) -> (Arc<Counted>, Arc<BlockStats>) {
        let stats = Arc::new(BlockStats::default());
        (Counted::into(inner, stats.clone()), stats)
    }

    /// Wraps `inner` counting into `stats` (a drive's new medium, its counters going on).
    pub fn into(inner: Arc<dyn BlockBackend>, stats: Arc<BlockStats>) -> Arc<Counted> {
        Arc::new(Counted { inner, stats })
    }
}

fn count(ops: &AtomicU64, bytes: &AtomicU64, len: usize) {
    ops.fetch_add(1, Ordering::Relaxed);
    bytes.fetch_add(len as u64, Ordering::Relaxed);
}

impl BlockBackend for Counted {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.inner.read_at(offset, buf)?;
        count(&self.stats.rd_ops, &self.stats.rd_bytes, buf.len());
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.inner.write_at(offset, buf)?;
        count(&self.stats.wr_ops, &self.stats.wr_bytes, buf.len());
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.inner.flush()?;
        self.stats.flush_ops.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn write_cache(&self) -> bool {
        self.inner.write_cache()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemBackend;

    #[test]
    fn successful_requests_are_counted_and_failed_ones_not() {
        let (b, s) = Counted::new(Arc::new(MemBackend::new(vec![0; 4096], false)));
        b.write_at(512, &[1; 1024]).unwrap();
        let mut buf = [0; 512];
        b.read_at(0, &mut buf).unwrap();
        b.read_at(1024, &mut buf).unwrap();
        assert!(b.read_at(4000, &mut buf).is_err());
        b.flush().unwrap();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!((get(&s.rd_ops), get(&s.rd_bytes), get(&s.wr_ops), get(&s.wr_bytes)), (2, 1024, 1, 1024));
        assert_eq!(get(&s.flush_ops), 1);
    }
}
