//! The host CPU's outcomes, recorded on x86-64 and replayed where there is no x86 CPU
//! to compare with (the aarch64 build under qemu-user).
//!
//! A record holds what the run was made of (seed, case count, the CPU features the
//! catalogue used, whether 16-bit code ran, the native epilogues) and each case's
//! native outcome. Data and stack pages are stored as the bytes that differ from the
//! case's initial ones, so a record of the default run is a few megabytes. Each case
//! also carries a hash of its code: replaying a record made by another generator is an
//! error that says to record again, never a comparison with the wrong results.

use std::io::{self, Read, Write};
use std::path::Path;

use super::compare::{Fault, Outcome, State};
use super::gen::{Case, Features, X87};
use super::Epilogues;

const MAGIC: &[u8; 8] = b"quernDR1";

/// What a recorded run was made of: the replay generates the same cases from it.
#[derive(Clone, Copy)]
pub struct Header {
    pub seed: u64,
    pub random: u64,
    pub features: Features,
    pub with_16bit: bool,
    pub epilogues: Epilogues,
}

/// A recorded run: its header and the outcome of every case, by case index.
pub struct Record {
    pub header: Header,
    /// Each case's encoded outcome, by index.
    outcomes: Vec<(u64, Vec<u8>)>,
}

struct W(Vec<u8>);

impl W {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    /// `now` as the bytes that differ from `was` (same length): (offset, value) pairs.
    fn delta(&mut self, was: &[u8], now: &[u8]) {
        assert_eq!(was.len(), now.len(), "a recorded page changed size");
        let changed: Vec<usize> = (0..now.len()).filter(|&i| was[i] != now[i]).collect();
        self.u64(changed.len() as u64);
        for i in changed {
            self.0.extend_from_slice(&(i as u32).to_le_bytes());
            self.0.push(now[i]);
        }
    }
    fn gprs(&mut self, g: &[u64; 16]) {
        g.iter().for_each(|&v| self.u64(v));
    }
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the record is truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let n = self.u64()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn delta(&mut self, was: &[u8]) -> io::Result<Vec<u8>> {
        let mut now = was.to_vec();
        for _ in 0..self.u64()? {
            let at = u32::from_le_bytes(self.take(4)?.try_into().unwrap()) as usize;
            let v = self.take(1)?[0];
            *now.get_mut(at).ok_or_else(|| bad("a changed byte lies outside its page"))? = v;
        }
        Ok(now)
    }
    fn gprs(&mut self) -> io::Result<[u64; 16]> {
        let mut g = [0; 16];
        for v in &mut g {
            *v = self.u64()?;
        }
        Ok(g)
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// FNV-1a over the case's guest code and its whole initial state: what identifies a
/// case across builds of the generator.
fn case_hash(case: &Case) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h = (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3);
        }
    };
    eat(&case.guest_code);
    case.gprs.iter().for_each(|g| eat(&g.to_le_bytes()));
    eat(&case.rflags.to_le_bytes());
    eat(&case.data);
    eat(&case.stack);
    case.xmm.iter().for_each(|x| eat(x));
    eat(&case.mxcsr.to_le_bytes());
    let x = &case.x87;
    eat(&[x.fcw.to_le_bytes(), x.fsw.to_le_bytes(), [x.ftw, 0]].concat());
    x.st.iter().for_each(|r| eat(r));
    h
}

fn features_bits(f: &Features) -> u64 {
    u64::from(f.popcnt) | u64::from(f.lzcnt) << 1 | u64::from(f.bmi1) << 2 | u64::from(f.cx16) << 3
}

fn features_from_bits(f: u64) -> Features {
    Features { popcnt: f & 1 != 0, lzcnt: f & 2 != 0, bmi1: f & 4 != 0, cx16: f & 8 != 0 }
}

/// Writes `header` and the native outcomes of `cases` to `path`.
pub fn write(path: &Path, header: &Header, cases: &[Case], outcomes: &[Outcome]) -> io::Result<()> {
    let mut w = W(MAGIC.to_vec());
    w.u64(header.seed);
    w.u64(header.random);
    w.u64(features_bits(&header.features));
    w.u64(u64::from(header.with_16bit));
    let e = header.epilogues;
    [e.long, e.compat, e.code16].iter().for_each(|&v| w.u64(v));
    w.u64(cases.len() as u64);
    for (case, o) in cases.iter().zip(outcomes) {
        // Each case's bytes behind their length: a replay finds a case without
        // decoding the others (their deltas need their own initial pages).
        let mut c = W(Vec::new());
        c.u64(case_hash(case));
        encode_outcome(&mut c, case, o)?;
        w.u64(case.index as u64);
        w.bytes(&c.0);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?.write_all(&w.0)
}

fn encode_outcome(w: &mut W, case: &Case, o: &Outcome) -> io::Result<()> {
    match o {
        Outcome::Ok(s) => {
            w.u64(0);
            w.gprs(&s.gprs);
            w.u64(s.rflags);
            w.delta(&case.data, &s.data);
            w.delta(&case.stack, &s.stack);
            w.u64(s.xmm.len() as u64);
            s.xmm.iter().for_each(|x| w.0.extend_from_slice(x));
            w.u64(u64::from(s.mxcsr));
            w.u64(u64::from(s.x87.fcw) | u64::from(s.x87.fsw) << 16 | u64::from(s.x87.ftw) << 32);
            s.x87.st.iter().for_each(|r| w.0.extend_from_slice(r));
        }
        Outcome::Signal(sig, fault) => {
            w.u64(1);
            w.u64(*sig as u64);
            match fault {
                None => w.u64(0),
                Some(f) => {
                    w.u64(1);
                    w.gprs(&f.gprs);
                    w.u64(f.rflags);
                    w.delta(&case.data, &f.data);
                }
            }
        }
        other => return Err(bad(&format!("case {}: cannot record {}", case.index, other.short()))),
    }
    Ok(())
}

impl Record {
    /// Reads a record's header and outcomes (checked against the cases by [`Record::outcome`]).
    pub fn read(path: &Path) -> io::Result<Record> {
        let mut buf = Vec::new();
        std::fs::File::open(path)?.read_to_end(&mut buf)?;
        let mut r = R(&buf);
        if r.take(8)? != MAGIC {
            return Err(bad("not a differential record (or an older format): record it again"));
        }
        let seed = r.u64()?;
        let random = r.u64()?;
        let features = features_from_bits(r.u64()?);
        let with_16bit = r.u64()? != 0;
        let epilogues = Epilogues { long: r.u64()?, compat: r.u64()?, code16: r.u64()? };
        let header = Header { seed, random, features, with_16bit, epilogues };
        let mut outcomes = Vec::new();
        for _ in 0..r.u64()? {
            let index = r.u64()?;
            outcomes.push((index, r.bytes()?));
        }
        Ok(Record { header, outcomes })
    }

    /// The recorded outcome of `case`, decoded against its initial pages.
    pub fn outcome(&self, case: &Case) -> Result<Outcome, String> {
        let Ok(at) = self.outcomes.binary_search_by_key(&(case.index as u64), |(i, _)| *i) else {
            return Err(format!("case {} is not in the record", case.index));
        };
        let mut r = R(&self.outcomes[at].1);
        let io = |e: io::Error| format!("case {}: {e}", case.index);
        if r.u64().map_err(io)? != case_hash(case) {
            return Err(format!(
                "case {} is not the case that was recorded (the generator changed since): record again",
                case.index
            ));
        }
        decode_outcome(&mut r, case).map_err(io)
    }
}

fn decode_outcome(r: &mut R, case: &Case) -> io::Result<Outcome> {
    Ok(match r.u64()? {
        0 => {
            let gprs = r.gprs()?;
            let rflags = r.u64()?;
            let data = r.delta(&case.data)?;
            let stack = r.delta(&case.stack)?;
            let n = r.u64()? as usize;
            let mut xmm = Vec::with_capacity(n);
            for _ in 0..n {
                xmm.push(r.take(16)?.try_into().unwrap());
            }
            let mxcsr = r.u64()? as u32;
            let w = r.u64()?;
            let mut st = [[0u8; 10]; 8];
            for s in &mut st {
                s.copy_from_slice(r.take(10)?);
            }
            let x87 = X87 { fcw: w as u16, fsw: (w >> 16) as u16, ftw: (w >> 32) as u8, st };
            Outcome::Ok(State { gprs, rflags, data, stack, rip: None, xmm, mxcsr, x87 })
        }
        1 => {
            let sig = r.u64()? as i32;
            let fault = match r.u64()? {
                0 => None,
                _ => {
                    let gprs = r.gprs()?;
                    let rflags = r.u64()?;
                    let data = r.delta(&case.data)?;
                    Some(Box::new(Fault { gprs, rflags, data }))
                }
            };
            Outcome::Signal(sig, fault)
        }
        k => return Err(bad(&format!("unknown outcome kind {k}"))),
    })
}
