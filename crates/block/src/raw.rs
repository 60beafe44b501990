//! Raw images: the medium is the file, byte for byte.

use crate::file::HostFile;
use crate::{check_range, BlockBackend, BlockError, CacheMode};

/// The magic numbers of the image formats QEMU probes for, with where they sit: a raw
/// image whose first sector would probe as one of these is no longer raw to a later
/// probe, which is why QEMU restricts writes to sector 0 of probed raw images.
const MAGICS: &[(&str, usize, &[u8])] = &[
    ("qcow2", 0, b"QFI\xfb"),
    ("qed", 0, b"QED\0"),
    ("vmdk", 0, b"KDMV"),
    ("vmdk", 0, b"COWD"),
    ("vmdk", 0, b"# Disk DescriptorFile"),
    ("vhdx", 0, b"vhdxfile"),
    ("vpc", 0, b"conectix"),
    ("luks", 0, b"LUKS\xba\xbe"),
    ("vdi", 64, b"\x7f\x10\xda\xbe"),
    ("parallels", 0, b"WithoutFreeSpace"),
    ("parallels", 0, b"WithouFreSpacExt"),
    ("bochs", 0, b"Bochs Virtual HD Image"),
    ("cloop", 0, b"#!/bin/sh\n#V2.0 Format\n"),
];

/// The format the first bytes of an image announce, `None` for raw.
pub(crate) fn probe_format(head: &[u8]) -> Option<&'static str> {
    MAGICS.iter().find(|(_, at, m)| head.len() >= at + m.len() && &head[*at..at + m.len()] == *m).map(|(n, _, _)| *n)
}

pub(crate) struct RawBackend {
    file: HostFile,
    read_only: bool,
    cache: CacheMode,
    /// The format was guessed: refuse writes that would make sector 0 probe as
    /// another format (a guest could otherwise turn the image into a qcow2 pointing at
    /// any host file as its backing file).
    probed: bool,
}

impl RawBackend {
    pub(crate) fn new(file: HostFile, read_only: bool, cache: CacheMode, probed: bool) -> RawBackend {
        RawBackend { file, read_only, cache, probed }
    }
}

impl BlockBackend for RawBackend {
    fn size(&self) -> u64 {
        self.file.size()
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len(), self.size())?;
        Ok(self.file.read_at(offset, buf)?)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, buf.len(), self.size())?;
        if self.probed && offset < 512 && !buf.is_empty() {
            let mut head = vec![0; 512.min(self.size() as usize)];
            self.file.read_at(0, &mut head)?;
            let n = buf.len().min(head.len() - offset as usize);
            head[offset as usize..offset as usize + n].copy_from_slice(&buf[..n]);
            if let Some(fmt) = probe_format(&head) {
                return Err(BlockError::Io(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "write to sector 0 refused: it would make the image probe as {fmt}; specify format=raw to allow it"
                    ),
                )));
            }
        }
        self.file.write_at(offset, buf)?;
        if self.cache.sync_each_write() {
            self.file.sync()?;
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        if self.cache.flush_syncs() {
            self.file.sync()?;
        }
        Ok(())
    }
    fn write_cache(&self) -> bool {
        !self.cache.sync_each_write()
    }
}
