//! Tests of the image backends against real files, and of qcow2 against QEMU's own
//! tools (`qemu-img`, `qemu-io` from qemu-utils): images QEMU made are read back, images
//! quern wrote pass `qemu-img check` and `qemu-img compare`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::*;

/// A temporary directory, removed when dropped.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(tag: &str) -> TmpDir {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("quern-block-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn opts(path: &Path, format: Option<Format>) -> OpenOptions {
    OpenOptions { format, ..OpenOptions::new(path) }
}

fn open_ok(o: &OpenOptions) -> Arc<dyn BlockBackend> {
    match open(o) {
        Ok(b) => b,
        Err(e) => panic!("open {}: {e}", o.path.display()),
    }
}

fn open_err(o: &OpenOptions) -> OpenError {
    match open(o) {
        Ok(_) => panic!("open {} succeeded", o.path.display()),
        Err(e) => e,
    }
}

/// A deterministic pattern that differs per offset, so misplaced data shows.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(7) as u8 ^ seed).collect()
}

/// Writes to the stderr handle itself, past the harness's capture, so that NOT RUN
/// lines show in passing runs too.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn tool(name: &str) -> bool {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        say(&format!("NOT RUN: {name} is not installed (apt-get install qemu-utils); qcow2 interoperability untested"));
    }
    ok
}

fn run(dir: &Path, prog: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(prog).args(args).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn must(dir: &Path, prog: &str, args: &[&str]) -> String {
    let (ok, text) = run(dir, prog, args);
    assert!(ok, "{prog} {args:?} failed:\n{text}");
    text
}

/// `qemu-img check` reports no errors and no leaks.
fn check_clean(dir: &Path, img: &str) {
    let text = must(dir, "qemu-img", &["check", "-f", "qcow2", img]);
    assert!(text.contains("No errors were found"), "qemu-img check {img}:\n{text}");
    assert!(!text.contains("leaked"), "qemu-img check {img}:\n{text}");
}

/// `qemu-img compare` finds the qcow2 image equal to the raw reference.
fn compare(dir: &Path, raw: &str, img: &str) {
    must(dir, "qemu-img", &["compare", "-f", "raw", "-F", "qcow2", raw, img]);
}

/// Applies the same writes to the backend and to a reference raw file.
fn write_both(b: &dyn BlockBackend, reference: &Path, writes: &[(u64, usize, u8)]) {
    use std::os::unix::fs::FileExt;
    let r = std::fs::OpenOptions::new().write(true).open(reference).unwrap();
    for &(off, len, seed) in writes {
        let data = pattern(seed, len);
        b.write_at(off, &data).unwrap();
        r.write_all_at(&data, off).unwrap();
    }
}

/// Compares without printing megabytes: the first difference and the lengths.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!("{what}: differs at {at:?} (lengths {} and {})", got.len(), want.len());
    }
}

/// Tests that lock images run one at a time: a process another test spawns holds
/// copies of every descriptor between fork and exec, and with them their OFD locks.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn read(b: &dyn BlockBackend, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    b.read_at(off, &mut v).unwrap();
    v
}

// ---- raw ----

#[test]
fn raw_read_write_flush_read_only() {
    let _serial = serial();
    let d = TmpDir::new("raw");
    let p = d.path("disk.img");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    let b = open_ok(&opts(&p, Some(Format::Raw)));
    assert_eq!(b.size(), 1 << 20);
    assert!(!b.read_only());
    b.write_at(4096, &pattern(1, 8192)).unwrap();
    b.flush().unwrap();
    assert_eq!(read(&*b, 4096, 8192), pattern(1, 8192));
    assert_eq!(std::fs::read(&p).unwrap()[4096..4096 + 8192], pattern(1, 8192)[..]);
    assert!(matches!(b.read_at((1 << 20) - 4, &mut [0; 8]), Err(BlockError::OutOfRange { .. })));
    drop(b);

    let ro = open_ok(&OpenOptions { read_only: true, ..opts(&p, Some(Format::Raw)) });
    assert!(ro.read_only());
    assert!(matches!(ro.write_at(0, &[1; 512]), Err(BlockError::ReadOnly)));
    assert_eq!(read(&*ro, 4096, 16), pattern(1, 16));
}

#[test]
fn raw_cache_modes() {
    let _serial = serial();
    let d = TmpDir::new("cache");
    for mode in ["writeback", "none", "unsafe", "directsync", "writethrough"] {
        let cache: CacheMode = mode.parse().unwrap();
        // An odd size (not a multiple of 4 KiB) exercises the padded last block under O_DIRECT.
        let p = d.path(&format!("{mode}.img"));
        let size = 5 * 4096 + 1536;
        std::fs::write(&p, pattern(9, size)).unwrap();
        let b = open_ok(&OpenOptions { cache, ..opts(&p, Some(Format::Raw)) });
        assert_eq!(b.write_cache(), !matches!(mode, "directsync" | "writethrough"));
        let mut expect = pattern(9, size);
        for (off, len, seed) in
            [(512u64, 512usize, 1u8), (4096 - 512, 1024, 2), (8192, 4096, 3), (size as u64 - 512, 512, 4), (100, 7, 5)]
        {
            let data = pattern(seed, len);
            b.write_at(off, &data).unwrap();
            expect[off as usize..off as usize + len].copy_from_slice(&data);
        }
        b.flush().unwrap();
        same(&read(&*b, 0, size), &expect, mode);
        same(&read(&*b, 3, 5000), &expect[3..5003], mode);
        drop(b);
        same(&std::fs::read(&p).unwrap(), &expect, mode);
    }
}

#[test]
fn cache_none_uses_o_direct_on_this_filesystem() {
    let _serial = serial();
    let d = TmpDir::new("direct");
    let p = d.path("d.img");
    std::fs::write(&p, vec![0u8; 65536]).unwrap();
    let (f, direct) = crate::file::open_host(&p, true, CacheMode::None).unwrap();
    let hf = crate::file::HostFile::new(f, direct).unwrap();
    if !hf.direct() {
        say(&format!("NOT RUN: {} refuses O_DIRECT; the bounce-buffer path was not exercised", d.0.display()));
        return;
    }
    hf.write_at(513, &[7; 100]).unwrap();
    let mut b = [0; 102];
    hf.read_at(512, &mut b).unwrap();
    assert_eq!(b[0], 0);
    assert_eq!(&b[1..101], &[7; 100]);
    assert_eq!(b[101], 0);
}

#[test]
fn cache_direct_on_tmpfs_works_with_or_without_o_direct() {
    let _serial = serial();
    // Older tmpfs refuses O_DIRECT (the open then falls back to the page cache with a
    // warning), newer tmpfs accepts it: either way the drive must work.
    let dir = Path::new("/dev/shm");
    if !dir.is_dir() {
        say("NOT RUN: no /dev/shm (tmpfs) to test cache=directsync on");
        return;
    }
    let p = dir.join(format!("quern-block-direct-{}", std::process::id()));
    std::fs::write(&p, vec![0u8; 8192]).unwrap();
    let r = crate::file::open_host(&p, true, CacheMode::None);
    let b = open(&OpenOptions { cache: CacheMode::DirectSync, ..opts(&p, Some(Format::Raw)) });
    let _ = std::fs::remove_file(&p);
    let (f, direct) = r.unwrap();
    drop(f);
    let b = b.unwrap();
    b.write_at(512, &[3; 512]).unwrap();
    b.flush().unwrap();
    assert_eq!(read(&*b, 512, 512), vec![3; 512]);
    if direct {
        eprintln!("note: /dev/shm accepted O_DIRECT here; the fallback path was not taken");
    }
}

#[test]
fn errors_name_the_file() {
    let _serial = serial();
    let d = TmpDir::new("errors");
    let missing = d.path("missing.img");
    let e = open_err(&opts(&missing, None));
    assert!(matches!(e, OpenError::Io { .. }));
    assert_eq!(e.to_string(), format!("Could not open '{}': No such file or directory", missing.display()));

    let e = open_err(&opts(&d.0, None));
    assert!(e.to_string().contains("Is a directory"), "{e}");

    let p = d.path("ro.img");
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    let mut perm = std::fs::metadata(&p).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o444);
    std::fs::set_permissions(&p, perm).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Root writes mode-0444 files; an immutable file is read-only even to root.
        let imm = d.path("immutable.img");
        std::fs::write(&imm, vec![0u8; 4096]).unwrap();
        if run(&d.0, "chattr", &["+i", "immutable.img"]).0 {
            let e = open(&opts(&imm, Some(Format::Raw))).err().map(|e| e.to_string());
            let ro = open(&OpenOptions { read_only: true, ..opts(&imm, Some(Format::Raw)) }).is_ok();
            run(&d.0, "chattr", &["-i", "immutable.img"]);
            assert_eq!(e, Some(format!("Could not open '{}': Operation not permitted", imm.display())));
            assert!(ro, "a read-only open of an immutable file failed");
        } else {
            say("NOT RUN: running as root without chattr +i: opening a read-only file for writing is untested");
        }
    } else {
        let e = open_err(&opts(&p, Some(Format::Raw)));
        assert_eq!(e.to_string(), format!("Could not open '{}': Permission denied", p.display()));
    }
    // Read-only opens of it work either way.
    open_ok(&OpenOptions { read_only: true, ..opts(&p, Some(Format::Raw)) });

    let e = open_err(&opts(&p, Some(Format::Qcow2)));
    assert!(e.to_string().ends_with("not a qcow2 image"), "{e}");
    assert!("vmdk".parse::<Format>().is_err());
    assert!("bogus".parse::<CacheMode>().is_err());
}

#[test]
fn probed_raw_restricts_sector_0() {
    let _serial = serial();
    let d = TmpDir::new("probe");
    let p = d.path("p.img");
    std::fs::write(&p, vec![0u8; 8192]).unwrap();
    let b = open_ok(&opts(&p, None));
    b.write_at(0, &[0x55; 512]).unwrap();
    b.write_at(512, b"QFI\xfb").unwrap();
    let mut s0 = vec![0u8; 512];
    s0[..4].copy_from_slice(b"QFI\xfb");
    let e = b.write_at(0, &s0).unwrap_err();
    assert!(e.to_string().contains("sector 0"), "{e}");
    // A partial write that completes a magic is caught too.
    b.write_at(0, b"QF").unwrap();
    assert!(b.write_at(2, b"I\xfb").is_err());
    drop(b);
    assert_eq!(&std::fs::read(&p).unwrap()[..4], b"QF\x55\x55");
    // With format=raw the guest may write anything.
    let b = open_ok(&opts(&p, Some(Format::Raw)));
    b.write_at(0, &s0).unwrap();
}

// ---- locking ----

#[test]
fn locking_two_writers_fail_readers_coexist() {
    let _serial = serial();
    let d = TmpDir::new("lock");
    let p = d.path("l.img");
    std::fs::write(&p, vec![0u8; 65536]).unwrap();
    let w = open_ok(&opts(&p, Some(Format::Raw)));
    let e = open_err(&opts(&p, Some(Format::Raw)));
    assert!(matches!(e, OpenError::Locked { .. }));
    assert_eq!(
        e.to_string(),
        format!("image '{}' is in use by another process: Failed to get \"write\" lock", p.display())
    );
    // A reader does not share writing, as QEMU's read-only drives do not.
    let e = open_err(&OpenOptions { read_only: true, ..opts(&p, Some(Format::Raw)) });
    assert!(e.to_string().contains("Failed to get shared \"write\" lock"), "{e}");
    // locking=off opens anyway.
    open_ok(&OpenOptions { locking: false, ..opts(&p, Some(Format::Raw)) });
    drop(w);

    let r1 = open_ok(&OpenOptions { read_only: true, ..opts(&p, Some(Format::Raw)) });
    let r2 = open_ok(&OpenOptions { read_only: true, ..opts(&p, Some(Format::Raw)) });
    let e = open_err(&opts(&p, Some(Format::Raw)));
    assert!(e.to_string().contains("Failed to get \"write\" lock"), "{e}");
    // -snapshot only reads the image.
    let s = open_ok(&OpenOptions { snapshot: true, ..opts(&p, Some(Format::Raw)) });
    drop((r1, r2, s));
    open_ok(&opts(&p, Some(Format::Raw)));
}

#[test]
fn locking_against_qemu() {
    let _serial = serial();
    if !tool("qemu-io") {
        return;
    }
    let d = TmpDir::new("qlock");
    let p = d.path("q.img");
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    // quern holds the image: a QEMU writer is refused, a QEMU reader that shares
    // writing (qemu-io -r) is not.
    let w = open_ok(&opts(&p, Some(Format::Raw)));
    let (ok, text) = run(&d.0, "qemu-io", &["-f", "raw", "-c", "write 0 512", "q.img"]);
    assert!(!ok || text.contains("Failed to get \"write\" lock"), "qemu-io write on a held image:\n{text}");
    assert!(text.contains("Failed to get \"write\" lock"), "qemu-io write on a held image:\n{text}");
    must(&d.0, "qemu-io", &["-r", "-f", "raw", "-c", "read 0 512", "q.img"]);
    drop(w);
    must(&d.0, "qemu-io", &["-f", "raw", "-c", "write 0 512", "q.img"]);

    // A running QEMU holds it: quern's writer is refused.
    let qemu = "qemu-system-x86_64";
    if Command::new(qemu).arg("--version").stdout(Stdio::null()).status().is_err() {
        say(&format!("NOT RUN: {qemu} is not installed; locking against a running QEMU untested"));
        return;
    }
    let drive = format!("file={},format=raw", p.display());
    let mut child = Command::new("timeout")
        .args(["30", qemu, "-S", "-display", "none", "-nodefaults", "-machine", "accel=tcg", "-drive", &drive])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut refused = None;
    for _ in 0..200 {
        match open(&opts(&p, Some(Format::Raw))) {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(b) => drop(b),
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SIGTERM to timeout(1), which passes it on to QEMU (SIGKILL would orphan QEMU).
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let e = refused.unwrap_or_else(|| {
        panic!("QEMU never locked the image; its stderr:\n{}", String::from_utf8_lossy(&out.stderr))
    });
    assert!(matches!(e, OpenError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("Failed to get \"write\" lock"), "{e}");
}

// ---- qcow2 against qemu-img ----

#[test]
fn qcow2_reads_what_qemu_wrote() {
    let _serial = serial();
    if !tool("qemu-img") || !tool("qemu-io") {
        return;
    }
    let d = TmpDir::new("q2read");
    for compat in ["0.10", "1.1"] {
        let img = format!("w{compat}.qcow2");
        must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "-o", &format!("compat={compat}"), &img, "64M"]);
        must(
            &d.0,
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0xab 0 1M",
                "-c",
                "write -P 0xcd 5M 64k",
                "-c",
                "write -P 0x11 63M 4k",
                &img,
            ],
        );
        let b = open_ok(&opts(&d.path(&img), None));
        assert_eq!(b.size(), 64 << 20);
        assert!(read(&*b, 0, 1 << 20).iter().all(|&x| x == 0xab));
        assert!(read(&*b, 5 << 20, 65536).iter().all(|&x| x == 0xcd));
        assert!(read(&*b, (63 << 20) + 4096, 4096).iter().all(|&x| x == 0));
        assert!(read(&*b, 63 << 20, 4096).iter().all(|&x| x == 0x11));
        assert!(read(&*b, 2 << 20, 65536).iter().all(|&x| x == 0));
    }
    // v3 zero clusters hide data that was there before.
    must(&d.0, "qemu-io", &["-f", "qcow2", "-c", "write -z 64k 128k", "w1.1.qcow2"]);
    let b = open_ok(&opts(&d.path("w1.1.qcow2"), Some(Format::Qcow2)));
    assert!(read(&*b, 65536, 131072).iter().all(|&x| x == 0));
    assert!(read(&*b, 0, 65536).iter().all(|&x| x == 0xab));
    assert!(read(&*b, 196608, 65536).iter().all(|&x| x == 0xab));
}

#[test]
fn qcow2_writes_pass_qemu_img_check() {
    let _serial = serial();
    if !tool("qemu-img") {
        return;
    }
    let d = TmpDir::new("q2write");
    let writes: Vec<(u64, usize, u8)> = vec![
        (0, 512, 1),
        (512, 4096, 2),
        (65536 - 1024, 4096, 3),
        (3 << 20, 1 << 20, 4),
        ((32 << 20) + 12345 * 512, 70000 / 512 * 512, 5),
        ((64 << 20) - 4096, 4096, 6),
        (1024, 512, 7),
    ];
    for compat in ["0.10", "1.1"] {
        let img = format!("w{compat}.qcow2");
        let raw = format!("w{compat}.raw");
        must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "-o", &format!("compat={compat}"), &img, "64M"]);
        must(&d.0, "qemu-img", &["create", "-q", "-f", "raw", &raw, "64M"]);
        let b = open_ok(&opts(&d.path(&img), Some(Format::Qcow2)));
        write_both(&*b, &d.path(&raw), &writes);
        b.flush().unwrap();
        let expect = std::fs::read(d.path(&raw)).unwrap();
        for &(off, len, _) in &writes {
            same(&read(&*b, off, len), &expect[off as usize..off as usize + len], &format!("{img} at {off}"));
        }
        drop(b);
        check_clean(&d.0, &img);
        compare(&d.0, &raw, &img);
    }
}

#[test]
fn qcow2_refcount_table_grows() {
    let _serial = serial();
    if !tool("qemu-img") {
        return;
    }
    // 512-byte clusters: one refcount-table cluster covers only 8 MiB of image file.
    let d = TmpDir::new("q2grow");
    must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "g.qcow2", "64M"]);
    must(&d.0, "qemu-img", &["create", "-q", "-f", "raw", "g.raw", "64M"]);
    let writes: Vec<(u64, usize, u8)> = (0..160).map(|i| (i * 393216 % (64 << 20), 131072, i as u8)).collect();
    let b = open_ok(&opts(&d.path("g.qcow2"), Some(Format::Qcow2)));
    write_both(&*b, &d.path("g.raw"), &writes);
    b.flush().unwrap();
    drop(b);
    assert!(std::fs::metadata(d.path("g.qcow2")).unwrap().len() > 16 << 20);
    check_clean(&d.0, "g.qcow2");
    compare(&d.0, "g.raw", "g.qcow2");
}

#[test]
fn qcow2_overlay_on_raw_backing() {
    let _serial = serial();
    if !tool("qemu-img") {
        return;
    }
    let d = TmpDir::new("q2back");
    let base = pattern(0x5a, 8 << 20);
    std::fs::write(d.path("base.raw"), &base).unwrap();
    std::fs::write(d.path("expect.raw"), &base).unwrap();
    // A relative backing name: resolved against the overlay's directory, not the cwd.
    must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "ov.qcow2"]);
    let before = std::fs::read(d.path("base.raw")).unwrap();
    let b = open_ok(&opts(&d.path("ov.qcow2"), None));
    assert_eq!(b.size(), 8 << 20);
    same(&read(&*b, 12345, 100000), &base[12345..112345], "through the overlay");
    // Partial-cluster writes: the rest of each cluster comes from the backing file.
    write_both(&*b, &d.path("expect.raw"), &[(70000 / 512 * 512, 512, 1), ((4 << 20) + 512, 200 * 512, 2)]);
    b.flush().unwrap();
    same(&read(&*b, 65536, 131072), &std::fs::read(d.path("expect.raw")).unwrap()[65536..196608], "after COW");
    // The backing file is locked as read by us: a writer elsewhere is refused.
    let e = open_err(&opts(&d.path("base.raw"), Some(Format::Raw)));
    assert!(matches!(e, OpenError::Locked { .. }), "{e}");
    drop(b);
    same(&std::fs::read(d.path("base.raw")).unwrap(), &before, "the backing file");
    check_clean(&d.0, "ov.qcow2");
    compare(&d.0, "expect.raw", "ov.qcow2");

    // A qcow2 chain: base qcow2 <- mid <- top.
    must(&d.0, "qemu-img", &["convert", "-O", "qcow2", "base.raw", "base.qcow2"]);
    must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2"]);
    must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"]);
    let b = open_ok(&opts(&d.path("top.qcow2"), Some(Format::Qcow2)));
    same(&read(&*b, 1 << 20, 65536), &base[1 << 20..(1 << 20) + 65536], "through a qcow2 chain");
    b.write_at(1 << 20, &[9; 512]).unwrap();
    drop(b);
    check_clean(&d.0, "top.qcow2");
}

#[test]
fn qcow2_compressed_clusters() {
    let _serial = serial();
    if !tool("qemu-img") {
        return;
    }
    let d = TmpDir::new("q2comp");
    let mut data = pattern(3, 4 << 20);
    // Compressible stretches, so that qemu-img really stores compressed clusters.
    for c in data.chunks_mut(131072).step_by(2) {
        c.fill(0x42);
    }
    std::fs::write(d.path("c.raw"), &data).unwrap();
    must(&d.0, "qemu-img", &["convert", "-c", "-O", "qcow2", "c.raw", "c.qcow2"]);
    assert!(std::fs::metadata(d.path("c.qcow2")).unwrap().len() < 3 << 20, "qemu-img did not compress");
    let b = open_ok(&opts(&d.path("c.qcow2"), None));
    same(&read(&*b, 0, 4 << 20), &data, "compressed image");
    // Overwriting part of a compressed cluster rewrites it uncompressed.
    write_both(&*b, &d.path("c.raw"), &[(1000 * 512, 1024, 8), ((2 << 20) + 512, 512, 9)]);
    drop(b);
    check_clean(&d.0, "c.qcow2");
    compare(&d.0, "c.raw", "c.qcow2");
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, at).unwrap();
}

#[test]
fn qcow2_bad_headers_are_refused() {
    let _serial = serial();
    if !tool("qemu-img") {
        return;
    }
    let d = TmpDir::new("q2bad");
    let fresh = |name: &str| {
        must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", name, "64M"]);
        d.path(name)
    };
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        ("version", Box::new(|p| patch(p, 4, &4u32.to_be_bytes())), "unsupported qcow2 version 4"),
        ("cbits", Box::new(|p| patch(p, 20, &30u32.to_be_bytes())), "cluster bits out of range"),
        ("crypt", Box::new(|p| patch(p, 32, &2u32.to_be_bytes())), "encrypted"),
        ("l1", Box::new(|p| patch(p, 40, &(1u64 << 40).to_be_bytes())), "L1 table lies beyond the end of the file"),
        ("l1small", Box::new(|p| patch(p, 36, &0u32.to_be_bytes())), "L1 table is too small"),
        ("dirty", Box::new(|p| patch(p, 72, &1u64.to_be_bytes())), "dirty"),
        ("feature", Box::new(|p| patch(p, 72, &(1u64 << 40).to_be_bytes())), "unsupported qcow2 feature"),
        (
            "trunc",
            Box::new(|p| std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(60).unwrap()),
            "truncated qcow2 header",
        ),
        (
            "trunc2",
            Box::new(|p| std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(3 * 65536).unwrap()),
            "truncated image",
        ),
        ("reftable", Box::new(|p| patch(p, 48, &(1u64 << 40).to_be_bytes())), "refcount table lies beyond"),
    ];
    for (name, damage, expect) in cases {
        let p = fresh(&format!("{name}.qcow2"));
        damage(&p);
        let before = std::fs::read(&p).unwrap();
        for format in [None, Some(Format::Qcow2)] {
            let e = open_err(&opts(&p, format));
            let msg = e.to_string();
            assert!(msg.contains(expect), "{name}: {msg}");
            assert!(msg.contains(&p.display().to_string()), "{name}: {msg}");
        }
        same(&std::fs::read(&p).unwrap(), &before, name);
    }
}

#[test]
fn qcow2_backing_loops_and_deep_chains() {
    let _serial = serial();
    if !tool("qemu-img") {
        return;
    }
    let d = TmpDir::new("q2loop");
    must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]);
    must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2"]);
    // Unsafe rebase writes the name without opening it: a -> b -> a.
    must(&d.0, "qemu-img", &["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"]);
    let e = open_err(&opts(&d.path("b.qcow2"), None));
    assert!(matches!(e, OpenError::Backing { .. }), "{e}");
    assert!(e.to_string().contains("loop"), "{e}");
    // An image that is its own backing file.
    must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "s.qcow2", "1M"]);
    must(&d.0, "qemu-img", &["rebase", "-u", "-b", "s.qcow2", "-F", "qcow2", "s.qcow2"]);
    assert!(open_err(&opts(&d.path("s.qcow2"), None)).to_string().contains("loop"));
    // A missing backing file names it.
    must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "m.qcow2", "1M"]);
    must(&d.0, "qemu-img", &["rebase", "-u", "-b", "gone.qcow2", "-F", "qcow2", "m.qcow2"]);
    let e = open_err(&opts(&d.path("m.qcow2"), None));
    assert!(e.to_string().contains("gone.qcow2") && e.to_string().contains("No such file"), "{e}");

    // A chain of 40: refused as too deep, without hanging or overflowing the stack.
    must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", "c0.qcow2", "1M"]);
    for i in 1..40 {
        must(
            &d.0,
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-u",
                "-b",
                &format!("c{}.qcow2", i - 1),
                "-F",
                "qcow2",
                &format!("c{i}.qcow2"),
                "1M",
            ],
        );
    }
    let e = open_err(&opts(&d.path("c39.qcow2"), None));
    assert!(e.to_string().contains("backing chain is longer"), "{e}");
    open_ok(&opts(&d.path("c20.qcow2"), None));
}

#[test]
fn snapshot_leaves_the_image_untouched() {
    let _serial = serial();
    let d = TmpDir::new("snap");
    let p = d.path("s.img");
    std::fs::write(&p, pattern(4, 300_000)).unwrap();
    let mut images = vec![(p.clone(), Format::Raw)];
    if tool("qemu-img") {
        must(&d.0, "qemu-img", &["convert", "-O", "qcow2", "s.img", "s.qcow2"]);
        images.push((d.path("s.qcow2"), Format::Qcow2));
    }
    for (p, f) in images {
        let before = std::fs::read(&p).unwrap();
        let b = open_ok(&OpenOptions { snapshot: true, ..opts(&p, Some(f)) });
        assert!(!b.read_only());
        let size = b.size();
        let mut expect = read(&*b, 0, size as usize);
        for (off, len, seed) in
            [(0u64, 512usize, 1u8), (70000, 100, 2), (65536 - 10, 20, 3), (size - 7, 7, 4), (131072, 65536, 5)]
        {
            b.write_at(off, &pattern(seed, len)).unwrap();
            expect[off as usize..off as usize + len].copy_from_slice(&pattern(seed, len));
        }
        b.flush().unwrap();
        same(&read(&*b, 0, size as usize), &expect, "through the snapshot");
        drop(b);
        same(&std::fs::read(&p).unwrap(), &before, "the image under -snapshot");
    }
}

#[test]
fn qcow2_cache_modes_and_read_only() {
    let _serial = serial();
    if !tool("qemu-img") {
        return;
    }
    let d = TmpDir::new("q2cache");
    for mode in ["none", "directsync", "writethrough", "unsafe"] {
        let img = format!("{mode}.qcow2");
        let raw = format!("{mode}.raw");
        must(&d.0, "qemu-img", &["create", "-q", "-f", "qcow2", &img, "16M"]);
        must(&d.0, "qemu-img", &["create", "-q", "-f", "raw", &raw, "16M"]);
        let b = open_ok(&OpenOptions { cache: mode.parse().unwrap(), ..opts(&d.path(&img), Some(Format::Qcow2)) });
        write_both(&*b, &d.path(&raw), &[(512, 512, 1), (100_000 / 512 * 512, 70_000 / 512 * 512, 2)]);
        b.flush().unwrap();
        drop(b);
        check_clean(&d.0, &img);
        compare(&d.0, &raw, &img);
    }
    let b = open_ok(&OpenOptions { read_only: true, ..opts(&d.path("none.qcow2"), None) });
    assert!(matches!(b.write_at(0, &[0; 512]), Err(BlockError::ReadOnly)));
    assert_eq!(read(&*b, 512, 512), pattern(1, 512));
}

#[test]
fn qcow2_concurrent_writers_and_lazy_refcounts() {
    let _serial = serial();
    if !tool("qemu-img") {
        return;
    }
    let d = TmpDir::new("q2threads");
    // lazy_refcounts=on is a compatible feature: refcounts are still kept up to date.
    must(
        &d.0,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=4096", "t.qcow2", "32M"],
    );
    must(&d.0, "qemu-img", &["create", "-q", "-f", "raw", "t.raw", "32M"]);
    let b = open_ok(&opts(&d.path("t.qcow2"), Some(Format::Qcow2)));
    // Four threads write interleaved, disjoint 3 KiB pieces (so neighbours share
    // clusters and L2 tables) and read each piece back at once.
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let b = &b;
            s.spawn(move || {
                for i in 0..200u64 {
                    let off = (i * 4 + t + (i % 7) * 1024) * 3072;
                    let data = pattern((t * 31 + i) as u8, 3072);
                    b.write_at(off, &data).unwrap();
                    same(&read(&**b, off, 3072), &data, "read back by its writer");
                }
            });
        }
    });
    b.flush().unwrap();
    drop(b);
    let r = std::fs::OpenOptions::new().write(true).open(d.path("t.raw")).unwrap();
    for t in 0..4u64 {
        for i in 0..200u64 {
            let off = (i * 4 + t + (i % 7) * 1024) * 3072;
            std::os::unix::fs::FileExt::write_all_at(&r, &pattern((t * 31 + i) as u8, 3072), off).unwrap();
        }
    }
    drop(r);
    check_clean(&d.0, "t.qcow2");
    compare(&d.0, "t.raw", "t.qcow2");
}
