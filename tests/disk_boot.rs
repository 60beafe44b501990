//! Unmodified disk and CD images boot through SeaBIOS: build/guest's disk.img (an MBR, a
//! FAT16 partition with SYSLINUX, Debian's stock kernel and an initramfs that loads
//! ata_piix; scripts/build-test-disks.sh) under `-accel tcg` prints the firmware's
//! banner, the boot loader's lines, the kernel's log and the init's markers on the serial
//! port; the guest reads a known 4 MiB region (its hash is in disk.layout), writes a
//! 1 MiB pattern and reads it back, and the host finds the pattern in the image file
//! afterwards and every other byte as built. The same through PIO (disk-pio.img), as a
//! qcow2 image, as a qcow2 overlay on a raw backing file, with `-snapshot` (the image
//! stays byte-identical), from the El Torito CD (cd.iso, isolinux), under KVM as far as
//! the host allows, and QEMU's tcg on the same images as the reference. Broken images
//! and bad `-drive` lines given to the binary are clear errors that leave the image
//! alone. scripts/check-test-disks.sh is the shell version of these checks.
//!
//! Needs scripts/build-test-guest.sh (build/guest, build/roms) and qemu-img (qemu-utils);
//! QEMU itself only for the comparison tests (reported NOT RUN without it).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{guest_file, kvm_usable, report, run_quern, Run};

/// One boot under quern's JIT takes 8-20 s; the limit leaves room for a loaded 2-core
/// machine running two of these tests at once.
const TCG_LIMIT: Duration = Duration::from_secs(240);
/// On kvm_pvm the boot ends within seconds in an emulation failure (see the KVM test).
const KVM_LIMIT: Duration = Duration::from_secs(180);
/// The options every boot here gets, as in scripts/check-test-disks.sh.
const COMMON: [&str; 5] = ["-m", "512", "-nographic", "-no-reboot", "-accel"];

/// build/guest/disk.layout: byte offsets and hashes of the data regions.
struct Layout {
    disk_size: u64,
    read_sha256: String,
    write_offset: u64,
    write_length: u64,
    write_sha256: String,
}

fn layout() -> Layout {
    let text = std::fs::read_to_string(guest_file("disk.layout")).unwrap();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_else(|| panic!("disk.layout has no {k}: rebuild build/guest"))
            .trim()
            .to_string()
    };
    let num = |k: &str| get(k).parse::<u64>().unwrap();
    Layout {
        disk_size: num("disk_size"),
        read_sha256: get("read_sha256"),
        write_offset: num("write_offset"),
        write_length: num("write_length"),
        write_sha256: get("write_sha256"),
    }
}

fn cd_sha256() -> String {
    std::fs::read_to_string(guest_file("cd.sha256")).unwrap().trim().to_string()
}

/// A directory for one test's images, removed afterwards (immutable files made mutable
/// first).
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("quern-disk-boot-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A sparse copy of build/guest/`name` (the guests write to their disks).
    fn copy_of(&self, name: &str) -> PathBuf {
        let dst = self.path(name);
        let ok = Command::new("cp").arg("--sparse=always").arg(guest_file(name)).arg(&dst).status().unwrap();
        assert!(ok.success(), "cp {name}");
        dst
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = Command::new("chattr").arg("-i").arg(e.path()).stderr(Stdio::null()).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sha256_of(data: &[u8]) -> String {
    let mut child =
        Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", p.display());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn region(p: &Path, off: u64, len: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(p).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut buf = vec![0; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// The image `img` (raw) after a guest's run: the write region holds the pattern and
/// every other byte is as in build/guest/`original`.
fn only_write_region_changed(img: &Path, original: &str, l: &Layout) {
    let orig = guest_file(original);
    assert_eq!(std::fs::metadata(img).unwrap().len(), l.disk_size, "{} changed size", img.display());
    assert_eq!(
        sha256_of(&region(img, l.write_offset, l.write_length)),
        l.write_sha256,
        "the write region of {} does not hold the guest's pattern",
        img.display()
    );
    let (mut a, mut b) = (std::fs::File::open(&orig).unwrap(), std::fs::File::open(img).unwrap());
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let write = l.write_offset..l.write_offset + l.write_length;
    let mut off = 0u64;
    while off < l.disk_size {
        a.read_exact(&mut x).unwrap();
        b.read_exact(&mut y).unwrap();
        if x != y {
            let outside = (0..x.len() as u64)
                .map(|i| off + i)
                .find(|&at| x[(at - off) as usize] != y[(at - off) as usize] && !write.contains(&at));
            if let Some(at) = outside {
                panic!("{} differs from {original} at byte {at:#x}, outside the write region", img.display());
            }
        }
        off += 1 << 20;
    }
}

/// The serial output as text: SeaBIOS's serial console moves the cursor (ESC [ ... H) at
/// arbitrary points, even inside a word; escape sequences and carriage returns dropped.
fn clean(out: &str) -> String {
    let mut text = String::new();
    let mut chars = out.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.next_if_eq(&'[').is_some() {
                    for p in chars.by_ref() {
                        if p.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => text.push(c),
        }
    }
    text
}

/// The rest of the first line of `text` that starts with `prefix`.
fn line_after<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(prefix)).map(str::trim)
}

/// `needles` appear in `text` in this order.
fn in_order(text: &str, needles: &[&str], d: &str) {
    let mut at = 0;
    for n in needles {
        match text[at..].find(n) {
            Some(p) => at += p + n.len(),
            None => panic!("{n:?} missing (or out of order: after {:?}) in the serial output:\n{d}", &text[..at]),
        }
    }
}

/// A program run with a time limit (`timeout`), for QEMU and qemu-img.
fn run_program(program: &str, args: &[&str], limit: Duration) -> Run {
    let out = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    Run {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn have(program: &str, test: &str, package: &str) -> bool {
    let ok = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        report(&format!("NOT RUN: {test}: {program} is not installed (apt-get install {package})"));
    }
    ok
}

#[derive(Clone, Copy, PartialEq)]
enum Emu {
    Quern,
    Qemu,
}

/// Boots `args` (after the common options and `-accel accel`) to power-off.
fn boot(emu: Emu, accel: &str, args: &[&str], what: &str) -> Run {
    let mut all: Vec<&str> = COMMON.to_vec();
    all.push(accel);
    all.extend_from_slice(args);
    let limit = if accel == "kvm" { KVM_LIMIT } else { TCG_LIMIT };
    let start = Instant::now();
    let run = match emu {
        Emu::Quern => run_quern(&all, limit),
        Emu::Qemu => run_program("qemu-system-x86_64", &all, limit),
    };
    let name = if emu == Emu::Quern { "quern" } else { "QEMU" };
    report(&format!(
        "disk_boot: {what} under {name} {accel}: {:.1} s (status {:?})",
        start.elapsed().as_secs_f64(),
        run.status
    ));
    run
}

/// The firmware's part: SeaBIOS's banner and, in the kernel's log, the SMBIOS type 0
/// SeaBIOS reports (its own version and date, as under QEMU).
fn check_firmware(text: &str, d: &str) {
    let version = line_after(text, "SeaBIOS (version ")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no SeaBIOS banner:\n{d}"));
    let dmi = text
        .lines()
        .find_map(|l| l.split_once("] DMI: ").map(|(_, r)| r.trim()))
        .unwrap_or_else(|| panic!("no DMI line in the kernel's log:\n{d}"));
    assert!(
        dmi.ends_with(&format!("BIOS {version} 04/01/2014")),
        "DMI line {dmi:?} does not name SeaBIOS {version}\n{d}"
    );
}

/// A disk boot through SYSLINUX to the init's last marker, with the transfer mode
/// `dma` or PIO, and a clean power-off.
fn check_disk_boot(run: &Run, dma: bool, l: &Layout) {
    let d = run.describe();
    assert!(!run.stderr.contains("panicked"), "{d}");
    let text = clean(&run.stdout);
    in_order(
        &text,
        &[
            "SeaBIOS (version ",
            "Booting from Hard Disk...",
            "SYSLINUX 6.04",
            "\nQUERN-BOOTLOADER syslinux",
            "Loading /vmlinuz... ok",
            "Loading /initrd.gz...ok",
            "Linux version ",
            "Command line: BOOT_IMAGE=/vmlinuz console=ttyS0",
            "\nQUERN-DISK-INIT-OK",
            "\nQUERN-DISK-XFER ",
            &format!("\nQUERN-DISK-SHA {}", l.read_sha256),
            "\nQUERN-DISK-WRITE-OK",
            &format!("\nQUERN-DISK-READBACK {}", l.write_sha256),
        ],
        &d,
    );
    assert!(!text.contains("QUERN-DISK-FAIL"), "{d}");
    assert_eq!(line_after(&text, "QUERN-DISK-SHA "), Some(&*l.read_sha256), "{d}");
    assert_eq!(line_after(&text, "QUERN-DISK-READBACK "), Some(&*l.write_sha256), "{d}");
    check_firmware(&text, &d);
    let xfer = line_after(&text, "QUERN-DISK-XFER ").unwrap();
    if dma {
        assert!(xfer.starts_with("XFER_MW_DMA") || xfer.starts_with("XFER_UDMA"), "transfer mode {xfer}, not DMA\n{d}");
    } else {
        assert!(xfer.starts_with("XFER_PIO"), "transfer mode {xfer}, not PIO\n{d}");
    }
    assert_eq!(run.status, Some(0), "poweroff -f should end the emulator with status 0:\n{d}");
}

/// A CD boot through ISOLINUX to the CD init's markers (data.bin's hash).
fn check_cd_boot(run: &Run) {
    let d = run.describe();
    assert!(!run.stderr.contains("panicked"), "{d}");
    let text = clean(&run.stdout);
    in_order(
        &text,
        &[
            "SeaBIOS (version ",
            "Booting from DVD/CD...",
            "ISOLINUX 6.04",
            "\nQUERN-BOOTLOADER isolinux",
            "Loading /vmlinuz... ok",
            "Linux version ",
            "\nQUERN-CD-INIT-OK",
            "\nQUERN-CD-XFER XFER_",
            &format!("\nQUERN-CD-SHA {}", cd_sha256()),
        ],
        &d,
    );
    assert!(!text.contains("QUERN-CD-FAIL"), "{d}");
    assert_eq!(line_after(&text, "QUERN-CD-SHA "), Some(&*cd_sha256()), "{d}");
    check_firmware(&text, &d);
    assert_eq!(run.status, Some(0), "{d}");
}

fn drive(file: &Path, format: &str) -> String {
    format!("file={},format={format},if=ide", s(file))
}

/// Boots a raw copy of build/guest/`image` and checks the guest's run and the file.
fn raw_disk(emu: Emu, image: &str, dma: bool) {
    let l = layout();
    let dir = Scratch::new(&format!("{image}-{}", emu as u8));
    let img = dir.copy_of(image);
    let run = boot(emu, "tcg", &["-drive", &drive(&img, "raw")], image);
    check_disk_boot(&run, dma, &l);
    only_write_region_changed(&img, image, &l);
}

#[test]
fn raw_disk_boots_through_seabios_and_syslinux_with_dma() {
    raw_disk(Emu::Quern, "disk.img", true);
}

#[test]
fn raw_disk_with_pio() {
    raw_disk(Emu::Quern, "disk-pio.img", false);
}

/// The reference: QEMU's tcg on the same image prints the same markers and leaves the
/// same file (this proves the images and the expectations).
#[test]
fn raw_disk_under_qemu_as_reference() {
    if have("qemu-system-x86_64", "raw_disk_under_qemu_as_reference", "qemu-system-x86") {
        raw_disk(Emu::Qemu, "disk.img", true);
    }
}

fn qemu_img(args: &[&str]) -> Run {
    run_program("qemu-img", args, Duration::from_secs(120))
}

/// `qemu-img check` is clean and, converted back to raw, only the write region differs
/// from disk.img (`qemu-img compare` finds the first difference there).
fn check_qcow2_after_boot(dir: &Scratch, qcow2: &Path, l: &Layout) {
    let check = qemu_img(&["check", s(qcow2)]);
    assert_eq!(check.status, Some(0), "qemu-img check {}:\n{}", qcow2.display(), check.describe());
    assert!(check.stdout.contains("No errors were found on the image."), "{}", check.describe());
    let orig = guest_file("disk.img");
    let cmp = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", s(&orig), s(qcow2)]);
    assert_eq!(cmp.status, Some(1), "qemu-img compare should find a difference:\n{}", cmp.describe());
    assert!(
        cmp.stdout.contains(&format!("Content mismatch at offset {}!", l.write_offset)),
        "the first difference should be the write region at {}:\n{}",
        l.write_offset,
        cmp.describe()
    );
    let back = dir.path("back.img");
    let conv = qemu_img(&["convert", "-f", "qcow2", "-O", "raw", s(qcow2), s(&back)]);
    assert_eq!(conv.status, Some(0), "{}", conv.describe());
    only_write_region_changed(&back, "disk.img", l);
}

#[test]
fn qcow2_disk_boots_and_stays_consistent() {
    if !have("qemu-img", "qcow2_disk_boots_and_stays_consistent", "qemu-utils") {
        return;
    }
    let l = layout();
    let dir = Scratch::new("qcow2");
    let qcow2 = dir.path("disk.qcow2");
    let conv = qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&guest_file("disk.img")), s(&qcow2)]);
    assert_eq!(conv.status, Some(0), "{}", conv.describe());
    let run = boot(Emu::Quern, "tcg", &["-drive", &drive(&qcow2, "qcow2")], "disk.qcow2");
    check_disk_boot(&run, true, &l);
    check_qcow2_after_boot(&dir, &qcow2, &l);
}

#[test]
fn qcow2_overlay_on_a_raw_backing_file() {
    if !have("qemu-img", "qcow2_overlay_on_a_raw_backing_file", "qemu-utils") {
        return;
    }
    let l = layout();
    let dir = Scratch::new("overlay");
    let base = dir.copy_of("disk.img");
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    let overlay = dir.path("overlay.qcow2");
    let create = qemu_img(&["create", "-q", "-f", "qcow2", "-b", s(&base), "-F", "raw", s(&overlay)]);
    assert_eq!(create.status, Some(0), "{}", create.describe());
    let run = boot(Emu::Quern, "tcg", &["-drive", &drive(&overlay, "qcow2")], "qcow2 overlay on disk.img");
    check_disk_boot(&run, true, &l);
    assert_eq!(sha256_file(&base), sha256_file(&guest_file("disk.img")), "the backing file changed");
    check_qcow2_after_boot(&dir, &overlay, &l);
}

#[test]
fn snapshot_leaves_the_image_byte_identical() {
    let l = layout();
    let dir = Scratch::new("snapshot");
    let img = dir.copy_of("disk.img");
    let before = sha256_file(&img);
    let run = boot(Emu::Quern, "tcg", &["-drive", &drive(&img, "raw"), "-snapshot"], "disk.img -snapshot");
    // The guest reads back its own writes (from the overlay) ...
    check_disk_boot(&run, true, &l);
    // ... and the image never sees them.
    assert_eq!(sha256_file(&img), before, "-snapshot changed the image");
}

/// `readonly=on` (which QEMU refuses for IDE disks, "Block node is read-only") on an
/// image file the host made read-only: quern opens it, the guest reads its data and its
/// writes fail (ABRT, I/O errors in the guest), and the file stays as it was.
#[test]
fn readonly_drive_refuses_the_guests_writes() {
    let l = layout();
    let dir = Scratch::new("readonly");
    let img = dir.copy_of("disk.img");
    let before = sha256_file(&img);
    let immutable = make_read_only(&img);
    let run = boot(Emu::Quern, "tcg", &["-drive", &format!("{},readonly=on", drive(&img, "raw"))], "readonly=on");
    let d = run.describe();
    let text = clean(&run.stdout);
    in_order(
        &text,
        &[
            "QUERN-BOOTLOADER syslinux",
            "\nQUERN-DISK-INIT-OK",
            &format!("\nQUERN-DISK-SHA {}", l.read_sha256),
            "error: { ABRT }",
            "\nQUERN-DISK-FAIL write /dev/sda",
        ],
        &d,
    );
    assert!(!text.contains("QUERN-DISK-WRITE-OK"), "{d}");
    assert_eq!(run.status, Some(0), "{d}");
    if !immutable {
        report("NOTE: readonly_drive_refuses_the_guests_writes: the file could not be made immutable (chattr +i)");
    }
    assert_eq!(sha256_file(&img), before, "a readonly=on drive changed its image");
}

/// Makes `p` read-only: mode 0444, and immutable when running as root (root writes
/// mode-0444 files). Returns whether a write-open now fails.
fn make_read_only(p: &Path) -> bool {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let _ = Command::new("chattr").arg("+i").arg(p).stderr(Stdio::null()).status();
    }
    std::fs::OpenOptions::new().write(true).open(p).is_err()
}

fn cd_boot(emu: Emu, args: &[&str], what: &str) {
    let iso = guest_file("cd.iso");
    let before = std::fs::metadata(&iso).unwrap().modified().unwrap();
    let run = boot(emu, "tcg", args, what);
    check_cd_boot(&run);
    assert_eq!(std::fs::metadata(&iso).unwrap().modified().unwrap(), before, "cd.iso was modified");
}

#[test]
fn cd_boots_with_cdrom_and_boot_d() {
    let iso = guest_file("cd.iso");
    cd_boot(Emu::Quern, &["-cdrom", s(&iso), "-boot", "d"], "-cdrom cd.iso -boot d");
}

/// The CD as the secondary master through -drive, with no -boot: SeaBIOS finds no hard
/// disk and boots the CD, as under QEMU.
#[test]
fn cd_boots_as_a_drive_with_media_cdrom() {
    let iso = guest_file("cd.iso");
    let d = format!("file={},media=cdrom,if=ide,index=2", s(&iso));
    cd_boot(Emu::Quern, &["-drive", &d], "-drive media=cdrom,index=2");
}

#[test]
fn cd_under_qemu_as_reference() {
    if have("qemu-system-x86_64", "cd_under_qemu_as_reference", "qemu-system-x86") {
        let iso = guest_file("cd.iso");
        cd_boot(Emu::Qemu, &["-cdrom", s(&iso), "-boot", "d"], "-cdrom cd.iso -boot d");
    }
}

/// How far a boot got, for the HOST LIMIT line.
fn stages_reached(text: &str) -> Vec<&'static str> {
    [
        ("SeaBIOS (version ", "SeaBIOS's banner"),
        ("Booting from Hard Disk", "SeaBIOS's boot of the disk"),
        ("SYSLINUX 6.04", "SYSLINUX's banner"),
        ("QUERN-BOOTLOADER syslinux", "SYSLINUX's config"),
        ("Loading /vmlinuz... ok", "SYSLINUX loaded the kernel"),
        ("Linux version ", "the kernel's first line"),
        ("QUERN-DISK-INIT-OK", "the init marker"),
    ]
    .into_iter()
    .filter(|(needle, _)| text.contains(needle))
    .map(|(_, what)| what)
    .collect()
}

/// The raw disk under KVM. Hardware KVM: the full checks. kvm_pvm: real mode and simple
/// protected-mode code run, but SYSLINUX's protected-mode code stops in KVM's
/// instruction emulator (an IRET it cannot emulate: "emulation failure", as under
/// QEMU -accel kvm on the same host); the test requires SeaBIOS and SYSLINUX's banner and
/// reports the rest as HOST LIMIT.
#[test]
fn raw_disk_under_kvm() {
    if !kvm_usable("raw_disk_under_kvm") {
        return;
    }
    let l = layout();
    let dir = Scratch::new("kvm");
    let img = dir.copy_of("disk.img");
    let run = boot(Emu::Quern, "kvm", &["-drive", &drive(&img, "raw")], "disk.img");
    let text = clean(&run.stdout);
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    if !pvm || text.contains("QUERN-DISK-READBACK") {
        check_disk_boot(&run, true, &l);
        only_write_region_changed(&img, "disk.img", &l);
        return;
    }
    let d = run.describe();
    assert!(!run.stderr.contains("panicked"), "{d}");
    in_order(&text, &["SeaBIOS (version ", "Booting from Hard Disk...", "SYSLINUX 6.04"], &d);
    let stages = stages_reached(&text);
    let why =
        run.stderr.lines().rev().find(|l| l.starts_with("quern:")).unwrap_or("(no error: killed at the time limit)");
    report(&format!(
        "HOST LIMIT (kvm_pvm): raw_disk_under_kvm: the disk boot NOT RUN to completion under -accel kvm; it got to {} \
         and stopped: {why} (QEMU -accel kvm stops at the same instruction on this host; see docs/kvm-pvm.md)",
        stages.last().unwrap()
    ));
    if !text.contains("QUERN-DISK-WRITE-OK") {
        assert_eq!(sha256_file(&img), sha256_file(&guest_file("disk.img")), "the image changed:\n{d}");
    }
}

/// Runs quern expecting a clean refusal: status 1, `quern: ` and `expect` on stderr, no
/// panic, no guest output, and `img` unchanged.
fn refused(args: &[&str], expect: &str, img: &Path) {
    let before = sha256_file(img);
    let mut all = vec!["-accel", "tcg", "-m", "128", "-nographic", "-no-reboot"];
    all.extend_from_slice(args);
    let run = run_quern(&all, Duration::from_secs(60));
    let d = run.describe();
    assert_eq!(run.status, Some(1), "expected status 1 for {args:?}:\n{d}");
    assert!(!run.stderr.contains("panicked"), "{d}");
    let msg = run.stderr.lines().find(|l| l.starts_with("quern: ")).unwrap_or_else(|| panic!("no error line:\n{d}"));
    assert!(msg.contains(expect), "the error for {args:?} should say {expect:?}:\n{d}");
    assert!(!run.stdout.contains("SeaBIOS"), "the machine ran:\n{d}");
    assert_eq!(sha256_file(img), before, "{args:?} changed {}", img.display());
}

/// A guest that holds its drive open: prints "R" on the serial port, then halts with
/// interrupts off.
fn idle_kernel(dir: &Scratch) -> PathBuf {
    use common::guest::LONG_BASE;
    // mov dx, 0x3f8; mov al, 'R'; out dx, al; cli; 1: hlt; jmp 1b
    let code = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'R', 0xee, 0xfa, 0xf4, 0xeb, 0xfd];
    let p = dir.path("idle.elf");
    common::write(&p, &common::elf64(&code, LONG_BASE, LONG_BASE));
    p
}

/// Broken images and bad `-drive` lines through the binary (the block crate's tests
/// cover the same on the library; tests/cli_qemu.rs missing images and formats).
#[test]
fn bad_images_and_drive_options_are_clear_errors() {
    if !have("qemu-img", "bad_images_and_drive_options_are_clear_errors", "qemu-utils") {
        return;
    }
    let dir = Scratch::new("bad");
    let good = dir.path("good.qcow2");
    let conv = qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&guest_file("disk.img")), s(&good)]);
    assert_eq!(conv.status, Some(0), "{}", conv.describe());
    let variant = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = std::fs::read(&good).unwrap();
        edit(&mut bytes);
        let p = dir.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let qcow2 = |p: &Path| format!("file={},format=qcow2,if=ide", s(p));

    // Cut inside the header, and after the header but before the L1 table.
    let cut = variant("header-cut.qcow2", &|b| b.truncate(100));
    refused(&["-drive", &qcow2(&cut)], "truncated qcow2 v3 header", &cut);
    let cut = variant("truncated.qcow2", &|b| b.truncate(64 << 10));
    refused(&["-drive", &qcow2(&cut)], "beyond the end of the file", &cut);
    // Corrupt headers: cluster_bits 40; version 9; the magic (format probed: then it is
    // a raw image, which boots, so name the format).
    let bad = variant("cluster-bits.qcow2", &|b| b[20..24].copy_from_slice(&40u32.to_be_bytes()));
    refused(&["-drive", &qcow2(&bad)], "cluster bits out of range: 40", &bad);
    refused(&["-hda", s(&bad)], "cluster bits out of range: 40", &bad);
    let bad = variant("version.qcow2", &|b| b[4..8].copy_from_slice(&9u32.to_be_bytes()));
    refused(&["-drive", &qcow2(&bad)], "unsupported qcow2 version 9", &bad);
    let bad = variant("magic.qcow2", &|b| b[3] = 0);
    refused(&["-drive", &qcow2(&bad)], "not a qcow2 image", &bad);

    // A backing-file loop: a -> b -> a.
    let (a, b) = (dir.path("a.qcow2"), dir.path("b.qcow2"));
    for (img, backing) in [(&a, &b), (&b, &a)] {
        let r = qemu_img(&["create", "-q", "-u", "-f", "qcow2", "-b", s(backing), "-F", "qcow2", s(img), "128M"]);
        assert_eq!(r.status, Some(0), "{}", r.describe());
    }
    let b_before = sha256_file(&b);
    refused(&["-drive", &qcow2(&a)], "backing file loop", &a);
    assert_eq!(sha256_file(&b), b_before, "the backing file changed");

    // -drive with an unknown option, and a bad value.
    let raw = dir.copy_of("disk.img");
    let rawd = drive(&raw, "raw");
    refused(&["-drive", &format!("{rawd},bogus=1")], "unknown property 'bogus'", &raw);
    refused(&["-drive", &format!("{rawd},cache=fast")], "cache=fast", &raw);

    // A second writer on a locked image (the first quern holds it open, idle), also
    // read-only: QEMU's locks refuse both.
    let serial = dir.path("serial.txt");
    let mut holder = Command::new(common::quern_bin())
        .args(["-accel", "tcg", "-m", "64", "-display", "none", "-serial"])
        .arg(format!("file:{}", s(&serial)))
        .arg("-kernel")
        .arg(idle_kernel(&dir))
        .args(["-drive", &rawd])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quern");
    let start = Instant::now();
    while !std::fs::read(&serial).is_ok_and(|b| b.contains(&b'R')) {
        if let Some(st) = holder.try_wait().unwrap() {
            let mut e = String::new();
            let _ = holder.stderr.take().unwrap().read_to_string(&mut e);
            panic!("the first quern exited ({st}) before its guest ran:\n{e}");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the first quern's guest did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    refused(&["-drive", &rawd], "Failed to get \"write\" lock", &raw);
    refused(&["-drive", &format!("{rawd},readonly=on")], "Failed to get shared \"write\" lock", &raw);
    assert!(holder.try_wait().unwrap().is_none(), "the first quern should still run");
    holder.kill().unwrap();
    holder.wait().unwrap();

    // With the first gone the image is free again; made read-only on the host, opening
    // it for writing fails (root: immutable).
    if make_read_only(&raw) {
        refused(&["-drive", &rawd], &format!("Could not open '{}'", s(&raw)), &raw);
    } else {
        report(
            "NOT RUN: bad_images_and_drive_options_are_clear_errors: the image could not be made read-only (chattr +i)",
        );
    }
}
