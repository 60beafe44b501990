//! Save and restore: the one versioned stream that holds a machine's whole state
//! (`migrate` to a file or fd, `virsh save`/`restore`).
//!
//! A device says what it needs to continue where it is through [`Snapshot`]: its state
//! as a JSON value (self-describing, so a field added later is a clear error rather
//! than a misread byte). The machine gathers those into named sections; guest memory
//! goes in raw, zero pages left out. The stream:
//!
//! ```text
//! MAGIC  format-version:u32
//! { kind:u8  name-len:u16 name  payload-len:u64 payload }*   kind: J (JSON) | M (memory)
//! E  crc32:u32 (of every byte before it)
//! ```
//!
//! All integers little-endian. Loading reads and checks the whole stream (magic,
//! version, checksum, framing) before anything of it is applied, so a corrupt or
//! foreign stream leaves the destination as it was.

use std::io::{Read, Write};

pub use serde_json::Value as State;

/// The stream's first bytes.
pub const MAGIC: &[u8; 8] = b"QUERNVM\n";
/// Bumped whenever a section's meaning changes.
pub const FORMAT_VERSION: u32 = 1;

const KIND_JSON: u8 = b'J';
const KIND_MEMORY: u8 = b'M';
const KIND_END: u8 = b'E';

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a quern state stream (it does not start with quern's magic bytes)")]
    NotAStream,
    #[error("state stream format {found}; this quern reads format {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("the state stream ends early (cut short or still being written)")]
    Truncated,
    #[error("the state stream is corrupt (checksum mismatch)")]
    Checksum,
    #[error("the state stream is larger than this machine's state can be ({0} bytes)")]
    TooLarge(u64),
    #[error("state section '{section}': {problem}")]
    Section { section: String, problem: String },
    #[error("the state does not fit this machine: {0}")]
    Mismatch(String),
    #[error("state stream I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A device whose state can be saved and put back.
pub trait Snapshot {
    /// Everything the device needs to continue where it is.
    fn save_state(&self) -> State;
    /// Puts back a state from [`Snapshot::save_state`]; on an error the device is
    /// unchanged.
    fn restore_state(&mut self, state: &State) -> Result<(), String>;
}

/// Implements [`Snapshot`] for a struct by listing the fields that hold its state
/// (each `serde::Serialize + DeserializeOwned`); handles and wiring stay as built.
/// All fields are read before any is assigned, so a bad state changes nothing. A
/// trailing `then METHOD` calls `self.METHOD()` after a restore (to drive output lines
/// from the restored levels).
#[macro_export]
macro_rules! snapshot_fields {
    ($ty:ty { $($field:ident),* $(,)? } $(then $after:ident)?) => {
        impl $crate::snapshot::Snapshot for $ty {
            fn save_state(&self) -> $crate::snapshot::State {
                let mut m = $crate::snapshot::Map::new();
                $( m.insert(stringify!($field).into(), $crate::snapshot::to_state(&self.$field)); )*
                $crate::snapshot::State::Object(m)
            }
            fn restore_state(&mut self, state: &$crate::snapshot::State) -> Result<(), String> {
                $( let $field = $crate::snapshot::field(state, stringify!($field))?; )*
                $( self.$field = $field; )*
                $( self.$after(); )?
                Ok(())
            }
        }
    };
}

pub use serde_json::Map;

/// A field's value as state (serializing plain data cannot fail).
pub fn to_state<T: serde::Serialize>(v: &T) -> State {
    serde_json::to_value(v).unwrap_or(State::Null)
}

/// Field `name` of an object state, with an error that names it.
pub fn field<T: serde::de::DeserializeOwned>(state: &State, name: &str) -> Result<T, String> {
    let v = state.get(name).ok_or_else(|| format!("no field '{name}'"))?;
    from_state(v.clone()).map_err(|e| format!("field '{name}': {e}"))
}

/// A state as a `T`.
pub fn from_state<T: serde::de::DeserializeOwned>(state: State) -> Result<T, String> {
    serde_json::from_value(state).map_err(|e| e.to_string())
}

/// Writes a stream section by section; [`StreamWriter::finish`] seals it.
pub struct StreamWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> StreamWriter<W> {
    pub fn new(out: W) -> std::io::Result<Self> {
        let mut w = StreamWriter { out, crc: crc32fast::Hasher::new(), bytes: 0 };
        w.put(MAGIC)?;
        w.put(&FORMAT_VERSION.to_le_bytes())?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.crc.update(b);
        self.bytes += b.len() as u64;
        self.out.write_all(b)
    }

    fn header(&mut self, kind: u8, name: &str, len: u64) -> std::io::Result<()> {
        self.put(&[kind])?;
        self.put(&(name.len() as u16).to_le_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&len.to_le_bytes())
    }

    /// A JSON section.
    pub fn json(&mut self, name: &str, state: &State) -> std::io::Result<()> {
        let payload = serde_json::to_vec(state).map_err(std::io::Error::other)?;
        self.header(KIND_JSON, name, payload.len() as u64)?;
        self.put(&payload)
    }

    /// A memory section: `len` bytes read through `read(offset, page)` a page at a
    /// time; pages of zeros are left out.
    pub fn memory(&mut self, name: &str, len: u64, mut read: impl FnMut(u64, &mut [u8])) -> std::io::Result<()> {
        let mut page = vec![0u8; PAGE];
        let mut present = Vec::new();
        let mut off = 0;
        while off < len {
            read(off, &mut page);
            if page.iter().any(|&b| b != 0) {
                present.push(off);
            }
            off += PAGE as u64;
        }
        // Payload: total length, page count, then (offset, page) pairs.
        let payload = 16 + present.len() as u64 * (8 + PAGE as u64);
        self.header(KIND_MEMORY, name, payload)?;
        self.put(&len.to_le_bytes())?;
        self.put(&(present.len() as u64).to_le_bytes())?;
        for off in present {
            read(off, &mut page);
            self.put(&off.to_le_bytes())?;
            self.put(&page)?;
        }
        Ok(())
    }

    /// Seals the stream with its checksum; returns the bytes written.
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.put(&[KIND_END])?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.bytes + 4)
    }
}

/// The unit of memory sections.
pub const PAGE: usize = 4096;

/// A page of a memory section: its offset and bytes.
pub type Page<'a> = (u64, &'a [u8]);

/// A checked stream, held in memory until applied.
pub struct Stream {
    data: Vec<u8>,
    sections: Vec<Section>,
}

struct Section {
    kind: u8,
    name: String,
    start: usize,
    len: usize,
}

impl Stream {
    /// Reads a whole stream from `input` (at most `limit` bytes) and checks it.
    pub fn read(input: &mut dyn Read, limit: u64) -> Result<Stream, SnapshotError> {
        let mut data = Vec::new();
        input.take(limit + 1).read_to_end(&mut data)?;
        if data.len() as u64 > limit {
            return Err(SnapshotError::TooLarge(limit));
        }
        Stream::parse(data)
    }

    /// Checks `data` as a stream.
    pub fn parse(data: Vec<u8>) -> Result<Stream, SnapshotError> {
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::NotAStream);
        }
        let mut pos = MAGIC.len();
        let found = u32::from_le_bytes(take(&data, &mut pos, 4)?.try_into().expect("4 bytes"));
        if found != FORMAT_VERSION {
            return Err(SnapshotError::Version { found });
        }
        let mut sections = Vec::new();
        loop {
            let kind = take(&data, &mut pos, 1)?[0];
            if kind == KIND_END {
                let sum = take(&data, &mut pos, 4)?;
                let want = u32::from_le_bytes(sum.try_into().expect("4 bytes"));
                if crc32fast::hash(&data[..pos - 4]) != want || pos != data.len() {
                    return Err(SnapshotError::Checksum);
                }
                break;
            }
            if kind != KIND_JSON && kind != KIND_MEMORY {
                return Err(SnapshotError::Checksum);
            }
            let n = u16::from_le_bytes(take(&data, &mut pos, 2)?.try_into().expect("2 bytes")) as usize;
            let name = String::from_utf8_lossy(take(&data, &mut pos, n)?).into_owned();
            let len = u64::from_le_bytes(take(&data, &mut pos, 8)?.try_into().expect("8 bytes"));
            let len = usize::try_from(len).map_err(|_| SnapshotError::Truncated)?;
            let start = pos;
            take(&data, &mut pos, len)?;
            sections.push(Section { kind, name, start, len });
        }
        Ok(Stream { data, sections })
    }

    /// The names of the JSON sections, in stream order.
    pub fn json_names(&self) -> Vec<&str> {
        self.sections.iter().filter(|s| s.kind == KIND_JSON).map(|s| s.name.as_str()).collect()
    }

    fn find(&self, kind: u8, name: &str) -> Result<&[u8], SnapshotError> {
        let s = self
            .sections
            .iter()
            .find(|s| s.kind == kind && s.name == name)
            .ok_or_else(|| SnapshotError::Mismatch(format!("the stream has no section '{name}'")))?;
        Ok(&self.data[s.start..s.start + s.len])
    }

    /// JSON section `name`.
    pub fn json(&self, name: &str) -> Result<State, SnapshotError> {
        serde_json::from_slice(self.find(KIND_JSON, name)?)
            .map_err(|e| SnapshotError::Section { section: name.into(), problem: e.to_string() })
    }

    /// JSON section `name` as a `T`.
    pub fn section<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, SnapshotError> {
        from_state(self.json(name)?).map_err(|problem| SnapshotError::Section { section: name.into(), problem })
    }

    /// Memory section `name`: its length and its present pages.
    pub fn memory(&self, name: &str) -> Result<(u64, Vec<Page<'_>>), SnapshotError> {
        let p = self.find(KIND_MEMORY, name)?;
        let bad = |problem: &str| SnapshotError::Section { section: name.into(), problem: problem.into() };
        if p.len() < 16 {
            return Err(bad("too short"));
        }
        let len = u64::from_le_bytes(p[..8].try_into().expect("8 bytes"));
        let count = u64::from_le_bytes(p[8..16].try_into().expect("8 bytes"));
        if count.checked_mul(8 + PAGE as u64).and_then(|b| b.checked_add(16)) != Some(p.len() as u64) {
            return Err(bad("page count does not match its length"));
        }
        let mut pages = Vec::with_capacity(count as usize);
        for rec in p[16..].chunks_exact(8 + PAGE) {
            let off = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
            if off % PAGE as u64 != 0 || off.checked_add(PAGE as u64).is_none_or(|e| e > len) {
                return Err(bad("a page lies outside the memory"));
            }
            pages.push((off, &rec[8..]));
        }
        Ok((len, pages))
    }
}

fn take<'a>(data: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], SnapshotError> {
    let end = pos.checked_add(n).filter(|&e| e <= data.len()).ok_or(SnapshotError::Truncated)?;
    let s = &data[*pos..end];
    *pos = end;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Dev {
        a: u8,
        regs: Vec<u32>,
        wiring: usize,
    }
    snapshot_fields!(Dev { a, regs });

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = StreamWriter::new(&mut out).unwrap();
        let d = Dev { a: 7, regs: vec![1, 2, 3], wiring: 9 };
        w.json("dev", &d.save_state()).unwrap();
        let mem: Vec<u8> = (0..3 * PAGE).map(|i| if i / PAGE == 1 { 0 } else { i as u8 }).collect();
        w.memory("ram", mem.len() as u64, |off, page| page.copy_from_slice(&mem[off as usize..][..PAGE])).unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn a_stream_round_trips_and_leaves_zero_pages_out() {
        let data = sample();
        assert!(data.len() < 3 * PAGE, "the zero page is not stored");
        let s = Stream::parse(data).unwrap();
        let mut d = Dev { wiring: 5, ..Default::default() };
        d.restore_state(&s.json("dev").unwrap()).unwrap();
        assert_eq!((d.a, d.regs, d.wiring), (7, vec![1, 2, 3], 5));
        let (len, pages) = s.memory("ram").unwrap();
        assert_eq!((len, pages.len()), (3 * PAGE as u64, 2));
        assert_eq!((pages[1].0, pages[1].1[5]), (2 * PAGE as u64, (2 * PAGE + 5) as u8));
    }

    #[test]
    fn corrupt_truncated_and_foreign_streams_are_refused() {
        let data = sample();
        for i in [9, 20, 100, data.len() / 2, data.len() - 1] {
            let mut bad = data.clone();
            bad[i] ^= 0x40;
            assert!(Stream::parse(bad).is_err(), "flipped byte {i}");
        }
        for n in [0, 5, 12, 40, data.len() - 1] {
            assert!(Stream::parse(data[..n].to_vec()).is_err(), "cut at {n}");
        }
        assert!(matches!(Stream::parse(b"QEVM\0\0\0\x03junk".to_vec()), Err(SnapshotError::NotAStream)));
        let mut v2 = data.clone();
        v2[8] = 2;
        assert!(matches!(Stream::parse(v2), Err(SnapshotError::Version { found: 2 })));
        assert!(matches!(Stream::read(&mut &data[..], 100), Err(SnapshotError::TooLarge(100))));
    }

    #[test]
    fn a_bad_field_leaves_the_device_unchanged() {
        let mut d = Dev { a: 1, regs: vec![4], wiring: 0 };
        let bad = serde_json::json!({ "a": 300, "regs": [9] });
        assert!(d.restore_state(&bad).unwrap_err().contains("'a'"));
        assert_eq!((d.a, d.regs.clone()), (1, vec![4]));
        assert!(d.restore_state(&serde_json::json!({ "a": 2 })).unwrap_err().contains("no field 'regs'"));
    }
}
