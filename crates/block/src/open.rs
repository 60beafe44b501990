//! Opening an image as the command line describes it: format (given or probed), cache
//! mode, read-only, `-snapshot`, image locking, and the qcow2 backing chain.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;

use crate::file::{open_host, HostFile};
use crate::lock::{self, LockError};
use crate::qcow2::{self, Image};
use crate::raw::{probe_format, RawBackend};
use crate::snapshot::SnapshotOverlay;
use crate::BlockBackend;

/// Image formats quern reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            _ => Err(format!("unknown or unsupported image format '{s}' (quern supports raw and qcow2)")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// QEMU's `cache=` modes: whether the host page cache is used (`direct`), whether
/// the guest's FLUSH reaches the disk, and whether every write is synced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Host page cache; FLUSH → fdatasync. QEMU's default.
    #[default]
    Writeback,
    /// `O_DIRECT` (where the filesystem allows it); FLUSH → fdatasync.
    None,
    /// Host page cache; FLUSH does nothing. Fast and unsafe on a host crash.
    Unsafe,
    /// `O_DIRECT` and every write synced before it completes.
    DirectSync,
    /// Host page cache and every write synced before it completes.
    WriteThrough,
}

impl CacheMode {
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::Writeback => "writeback",
            CacheMode::None => "none",
            CacheMode::Unsafe => "unsafe",
            CacheMode::DirectSync => "directsync",
            CacheMode::WriteThrough => "writethrough",
        }
    }
    /// Bypass the host page cache.
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::DirectSync)
    }
    /// FLUSH syncs the host file.
    pub fn flush_syncs(self) -> bool {
        self != CacheMode::Unsafe
    }
    /// Each write is synced before it completes (the guest sees no write cache).
    pub fn sync_each_write(self) -> bool {
        matches!(self, CacheMode::DirectSync | CacheMode::WriteThrough)
    }
}

impl FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<CacheMode, String> {
        Ok(match s {
            "writeback" => CacheMode::Writeback,
            "none" => CacheMode::None,
            "unsafe" => CacheMode::Unsafe,
            "directsync" => CacheMode::DirectSync,
            "writethrough" => CacheMode::WriteThrough,
            _ => return Err(format!("invalid cache mode '{s}' (writeback, none, unsafe, directsync or writethrough)")),
        })
    }
}

/// How to open an image (`-drive file=,format=,readonly=,snapshot=,cache=,file.locking=`).
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub path: PathBuf,
    /// `None` probes the format as QEMU does (with its warning for raw).
    pub format: Option<Format>,
    pub read_only: bool,
    /// Writes go to a temporary overlay; the image is opened read-only and not changed.
    pub snapshot: bool,
    pub cache: CacheMode,
    /// QEMU's image locking (`locking=off` turns it off).
    pub locking: bool,
}

impl OpenOptions {
    /// QEMU's defaults: probe the format, read-write, writeback cache, locking on.
    pub fn new(path: impl Into<PathBuf>) -> OpenOptions {
        OpenOptions {
            path: path.into(),
            format: None,
            read_only: false,
            snapshot: false,
            cache: CacheMode::Writeback,
            locking: true,
        }
    }
}

/// Why an image could not be opened; every message names the file.
#[derive(Debug, Error)]
pub enum OpenError {
    /// The file cannot be opened or read (missing, permissions, a directory, ...).
    #[error("Could not open '{}': {}", .path.display(), os_text(.source))]
    Io { path: PathBuf, source: io::Error },
    /// Another quern or QEMU holds the image.
    #[error("image '{}' is in use by another process: {detail}", .path.display())]
    Locked { path: PathBuf, detail: String },
    /// A header that is corrupt or truncated, or a format that disagrees with the file.
    #[error("Could not open '{}': {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    /// A valid image using something quern does not implement (encryption, ...).
    #[error("Could not open '{}': {reason}", .path.display())]
    Unsupported { path: PathBuf, reason: String },
    /// The backing chain loops or is too long.
    #[error("Could not open backing file of '{}': {reason}", .path.display())]
    Backing { path: PathBuf, reason: String },
}

/// An OS error as QEMU prints it ("No such file or directory"), without Rust's
/// "(os error 2)" suffix.
fn os_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Longest backing chain accepted (a loop is caught separately).
const MAX_CHAIN: usize = 32;

/// Opens an image for a guest drive.
pub fn open(opts: &OpenOptions) -> Result<Arc<dyn BlockBackend>, OpenError> {
    let writable = !opts.read_only && !opts.snapshot;
    let mut chain = Chain { seen: HashSet::new(), cache: opts.cache, locking: opts.locking };
    let path = &opts.path;
    let file = chain.open_file(path, writable, opts.format != Some(Format::Raw))?;
    let (format, probed) = match opts.format {
        Some(f) => (f, false),
        None => (chain.probe(path, &file)?, true),
    };
    if probed && format == Format::Raw {
        log::warn!(
            "Image format was not specified for '{}' and probing guessed raw.\n         \
             Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         \
             Specify the 'raw' format explicitly to remove the restrictions.",
            path.display()
        );
    }
    let top: Arc<dyn BlockBackend> = match format {
        Format::Raw => Arc::new(RawBackend::new(file, !writable, opts.cache, probed)),
        Format::Qcow2 => {
            let image = chain.qcow2(path, &file, writable, 0)?;
            qcow2::backend(image, !writable, opts.cache)
        }
    };
    if opts.snapshot {
        let overlay = SnapshotOverlay::new(top).map_err(|e| OpenError::Io { path: path.clone(), source: e })?;
        return Ok(Arc::new(overlay));
    }
    Ok(top)
}

/// State while opening an image and its backing files.
struct Chain {
    /// (device, inode) of every file opened so far: a backing file already in the chain
    /// is a loop.
    seen: HashSet<(u64, u64)>,
    cache: CacheMode,
    locking: bool,
}

impl Chain {
    /// Opens and locks one file of the chain. `qcow2` says whether it may turn out to
    /// be a qcow2 image (which QEMU opens with the resize permission when writable).
    fn open_file(&mut self, path: &Path, writable: bool, qcow2: bool) -> Result<HostFile, OpenError> {
        let io_err = |e: io::Error| OpenError::Io { path: path.to_path_buf(), source: e };
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if meta.is_dir() {
            return Err(io_err(io::Error::from_raw_os_error(libc::EISDIR)));
        }
        self.seen.insert((meta.dev(), meta.ino()));
        let (file, direct) = open_host(path, writable, self.cache).map_err(io_err)?;
        if self.locking {
            let (perm, shared) = lock::perms_for(writable, qcow2);
            match lock::lock(&file, perm, shared) {
                Ok(()) => {}
                Err(LockError::Conflict(detail)) => {
                    return Err(OpenError::Locked { path: path.to_path_buf(), detail });
                }
                Err(LockError::Unsupported(e)) => {
                    log::warn!(
                        "'{}': image locking is not supported here ({}); going on without it",
                        path.display(),
                        os_text(&e)
                    );
                }
                Err(LockError::Other(e)) => return Err(io_err(e)),
            }
        }
        HostFile::new(file, direct).map_err(io_err)
    }

    /// Guesses the format from the first sector, as QEMU does.
    fn probe(&self, path: &Path, file: &HostFile) -> Result<Format, OpenError> {
        let mut head = vec![0; 512.min(file.size() as usize)];
        file.read_at(0, &mut head).map_err(|e| OpenError::Io { path: path.to_path_buf(), source: e })?;
        match probe_format(&head) {
            None => Ok(Format::Raw),
            Some("qcow2") => Ok(Format::Qcow2),
            Some(other) => Err(OpenError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("the image looks like {other}, which quern does not support (raw and qcow2 only)"),
            }),
        }
    }

    /// Opens the qcow2 image in `file` with its backing chain; `depth` counts the
    /// overlays above it.
    fn qcow2(&mut self, path: &Path, file: &HostFile, writable: bool, depth: usize) -> Result<Image, OpenError> {
        let header = qcow2::check_header(file).map_err(|reason| classify(path, reason))?;
        let backing = match &header.backing {
            None => None,
            Some(name) => Some(self.backing(path, name, header.backing_fmt.as_deref(), depth + 1)?),
        };
        qcow2::open_qcow2(file, writable, backing)
            .map_err(|e| OpenError::Invalid { path: path.to_path_buf(), reason: format!("invalid qcow2 image: {e}") })
    }

    /// Opens `name`, the backing file of `overlay`, read-only.
    fn backing(&mut self, overlay: &Path, name: &str, fmt: Option<&str>, depth: usize) -> Result<Image, OpenError> {
        let backing_err = |reason: String| OpenError::Backing { path: overlay.to_path_buf(), reason };
        if depth > MAX_CHAIN {
            return Err(backing_err(format!("the backing chain is longer than {MAX_CHAIN} images")));
        }
        if name.starts_with("json:") || (name.contains("://") && !Path::new(name).exists()) {
            return Err(backing_err(format!("backing file '{name}' is not a local file")));
        }
        // Relative names are relative to the overlay's directory, as in QEMU.
        let path = match overlay.parent() {
            Some(dir) if Path::new(name).is_relative() => dir.join(name),
            _ => PathBuf::from(name),
        };
        if let Ok(meta) = std::fs::metadata(&path) {
            if self.seen.contains(&(meta.dev(), meta.ino())) {
                return Err(backing_err(format!("backing file loop: '{}' is already in the chain", path.display())));
            }
        }
        let fmt = match fmt {
            None => None,
            Some(f) => Some(f.parse::<Format>().map_err(|_| {
                backing_err(format!("backing file format '{f}' of '{}' is not supported", path.display()))
            })?),
        };
        let file = self.open_file(&path, false, false)?;
        let fmt = match fmt {
            Some(f) => f,
            None => self.probe(&path, &file)?,
        };
        match fmt {
            Format::Raw => qcow2::open_raw(&file).map_err(|e| OpenError::Io { path: path.clone(), source: e }),
            Format::Qcow2 => self.qcow2(&path, &file, false, depth),
        }
    }
}

/// Sorts a header complaint into corrupt or unsupported.
fn classify(path: &Path, reason: String) -> OpenError {
    let path = path.to_path_buf();
    if reason.contains("not supported") || reason.contains("unsupported") || reason.contains("encrypted") {
        OpenError::Unsupported { path, reason }
    } else {
        OpenError::Invalid { path, reason }
    }
}
