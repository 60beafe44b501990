//! `-snapshot`: the guest's writes go to a temporary overlay and the image stays as it
//! was. The overlay is a sparse temporary file, unlinked as soon as it is created so
//! that nothing is left behind however quern exits, plus a bitmap of the chunks it
//! holds (QEMU uses a temporary qcow2 file for the same purpose).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::{check_range, BlockBackend, BlockError};

/// Copy-on-write granularity: a partial write first copies its chunk from the image.
const CHUNK: u64 = 64 * 1024;

pub(crate) struct SnapshotOverlay {
    base: Arc<dyn BlockBackend>,
    tmp: File,
    size: u64,
    /// One bit per chunk present in `tmp`. Writers take it exclusively, so a chunk's
    /// copy-up never races a read of it.
    present: RwLock<Vec<u64>>,
}

fn temp_file() -> io::Result<File> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::var_os("TMPDIR").map(std::path::PathBuf::from).unwrap_or_else(|| "/var/tmp".into());
    let dir = if dir.is_dir() { dir } else { std::env::temp_dir() };
    loop {
        let name = dir.join(format!("quern-snapshot-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        match OpenOptions::new().read(true).write(true).create_new(true).open(&name) {
            Ok(f) => {
                std::fs::remove_file(&name)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create a snapshot file in {}: {e}", dir.display()),
                ))
            }
        }
    }
}

impl SnapshotOverlay {
    pub(crate) fn new(base: Arc<dyn BlockBackend>) -> io::Result<SnapshotOverlay> {
        let size = base.size();
        let tmp = temp_file()?;
        tmp.set_len(size)?;
        let chunks = size.div_ceil(CHUNK);
        Ok(SnapshotOverlay { base, tmp, size, present: RwLock::new(vec![0; chunks.div_ceil(64) as usize]) })
    }
}

fn has(bits: &[u64], chunk: u64) -> bool {
    bits[(chunk / 64) as usize] & (1 << (chunk % 64)) != 0
}

/// Splits `[offset, offset + len)` at chunk boundaries: (chunk, offset, length).
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, u64, usize)> {
    let end = offset + len as u64;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let chunk = at / CHUNK;
        let n = ((chunk + 1) * CHUNK).min(end) - at;
        let r = (chunk, at, n as usize);
        at += n;
        Some(r)
    })
}

impl BlockBackend for SnapshotOverlay {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len(), self.size)?;
        let bits = self.present.read().unwrap_or_else(|e| e.into_inner());
        let mut done = 0;
        for (chunk, at, n) in pieces(offset, buf.len()) {
            let dst = &mut buf[done..done + n];
            if has(&bits, chunk) {
                self.tmp.read_exact_at(dst, at)?;
            } else {
                self.base.read_at(at, dst)?;
            }
            done += n;
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len(), self.size)?;
        let mut bits = self.present.write().unwrap_or_else(|e| e.into_inner());
        let mut done = 0;
        for (chunk, at, n) in pieces(offset, buf.len()) {
            if !has(&bits, chunk) {
                let start = chunk * CHUNK;
                let len = CHUNK.min(self.size - start) as usize;
                if n < len {
                    let mut copy = vec![0; len];
                    self.base.read_at(start, &mut copy)?;
                    self.tmp.write_all_at(&copy, start)?;
                }
            }
            self.tmp.write_all_at(&buf[done..done + n], at)?;
            bits[(chunk / 64) as usize] |= 1 << (chunk % 64);
            done += n;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        // The overlay dies with quern; there is nothing worth making durable.
        Ok(())
    }
}
