//! QMP, as management tools use it, on a running guest: Debian's stock kernel with
//! build/guest/initramfs-net.cpio.gz (`quern.count=1`: a counter on the console every
//! half second; `quern.button=1`: waits for the ACPI power button, then powers off).
//!
//! - Python's `qemu.qmp` client (PyPI; tests/qmp/driver.py) drives it: `-S` starts it
//!   in prelaunch, `cont` runs it (RESUME), `stop` pauses it (STOP; the counter stands
//!   still), `human-monitor-command "info registers"`, `system_reset` (RESET; the
//!   kernel boots again), `system_powerdown` (POWERDOWN; the guest's button driver sees
//!   the press and it powers off: SHUTDOWN with guest=true), and quern exits 0.
//! - Bad input on the socket itself: commands before negotiation, malformed JSON, a
//!   non-object, unknown commands and arguments, wrong types, a huge message, a client
//!   that vanishes mid-command, several clients at once: QMP errors or a closed
//!   connection, and the guest goes on counting.
//! - A CD-ROM's disc changed with `eject` and `blockdev-change-medium` while the stock
//!   kernel's sr driver waits for another disc.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::qmp::{class, socket_path, wait_socket, Raw};
use common::{guest_file, report, scratch, Console};

const LIMIT: Duration = Duration::from_secs(240);

fn guest(sock: &Path, paused: bool) -> Console {
    let (k, i) = (guest_file("vmlinux"), guest_file("initramfs-net.cpio.gz"));
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut args = vec![
        "-accel",
        "tcg",
        "-m",
        "256",
        "-nographic",
        "-no-reboot",
        "-kernel",
        k.to_str().unwrap(),
        "-initrd",
        i.to_str().unwrap(),
        "-qmp",
        &qmp,
        "-append",
        "console=ttyS0 panic=-1 quern.count=1 quern.button=1",
    ];
    if paused {
        args.push("-S");
    }
    let c = Console::spawn(&args);
    wait_socket(sock, &c);
    c
}

/// The Python client, one JSON line per request.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    fn start(sock: &Path) -> Option<Driver> {
        let ok = Command::new("python3").args(["-c", "import qemu.qmp"]).status().is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let script = common::root().join("tests/qmp/driver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(sock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut d = Driver { child, stdin, stdout };
        assert_eq!(d.read()["connected"], true);
        Some(d)
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("the driver's answer");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("driver said {line:?}: {e}"))
    }

    fn call(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        self.read()
    }

    fn execute(&mut self, name: &str, args: Option<Value>) -> Value {
        let line = match args {
            Some(a) => format!("execute {name} {a}"),
            None => format!("execute {name}"),
        };
        let r = self.call(&line);
        assert!(r.get("return").is_some(), "{name}: {r}");
        r["return"].clone()
    }

    fn event(&mut self, name: &str) -> Value {
        let e = self.call(&format!("event {name}"));
        assert_eq!(e["event"], name);
        assert!(e["timestamp"]["seconds"].as_u64().is_some_and(|s| s > 1_700_000_000), "{e}");
        e["data"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn counts(c: &Console) -> usize {
    c.describe().matches("QUERN-COUNT").count()
}

#[test]
fn qemu_qmp_client_drives_a_guest() {
    let sock = socket_path("qmp-driver.sock");
    let mut c = guest(&sock, true);
    let Some(mut q) = Driver::start(&sock) else {
        report("NOT RUN: qemu_qmp_client_drives_a_guest: Python's qemu.qmp is not installed (pip install qemu.qmp)");
        return;
    };
    let v = q.execute("query-version", None);
    assert_eq!(v["qemu"]["major"], 7);
    assert!(v["package"].as_str().unwrap().contains("quern"));
    assert_eq!(
        q.execute("query-status", None),
        json!({ "status": "prelaunch", "running": false, "singlestep": false })
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!c.describe().contains("Linux version"), "-S: nothing runs before cont");

    q.execute("cont", None);
    q.event("RESUME");
    c.wait_for("QUERN-BUTTON-READY", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    c.wait_for("QUERN-COUNT", LIMIT).unwrap_or_else(|e| panic!("{e}"));

    q.execute("stop", None);
    q.event("STOP");
    assert_eq!(q.execute("query-status", None)["status"], "paused");
    let before = counts(&c);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(counts(&c), before, "the guest runs while paused");
    let regs = q.execute("human-monitor-command", Some(json!({ "command-line": "info registers" })));
    let regs = regs.as_str().unwrap();
    assert!(regs.contains("RIP=ffffffff") && regs.contains("CR3=") && regs.contains("EFER="), "{regs}");

    q.execute("cont", None);
    q.event("RESUME");
    let start = Instant::now();
    while counts(&c) == before {
        assert!(start.elapsed() < Duration::from_secs(30), "the guest does not run again after cont");
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = q.execute("human-monitor-command", Some(json!({ "command-line": "info status" })));
    assert_eq!(status, "VM status: running\r\n");

    let e = q.call("execute frobnicate");
    assert_eq!(e["error"], "CommandNotFound", "{e}");

    q.execute("system_reset", None);
    assert_eq!(q.event("RESET"), json!({ "guest": false, "reason": "host-qmp-system-reset" }));
    c.wait_for("QUERN-NET-INIT-OK", LIMIT).unwrap_or_else(|e| panic!("the kernel again after the reset: {e}"));
    c.wait_for("QUERN-BUTTON-READY", LIMIT).unwrap_or_else(|e| panic!("{e}"));

    q.execute("system_powerdown", None);
    q.event("POWERDOWN");
    c.wait_for("QUERN-POWER-BUTTON", LIMIT).unwrap_or_else(|e| panic!("the guest saw no power button: {e}"));
    assert_eq!(q.event("SHUTDOWN"), json!({ "guest": true, "reason": "guest-shutdown" }));
    let run = c.finish(Duration::from_secs(30));
    assert_eq!(run.status, Some(0), "{}", run.describe());
}

/// A raw QMP connection: the greeting read, then lines out and JSON values in.
#[test]
fn bad_input_on_the_socket_never_hurts_the_guest() {
    let sock = socket_path("qmp-raw.sock");
    let mut c = guest(&sock, false);
    c.wait_for("QUERN-COUNT", LIMIT).unwrap_or_else(|e| panic!("{e}"));

    let mut q = Raw::connect(&sock);
    assert_eq!(class(&q.send("{\"execute\":\"query-status\"}")), "CommandNotFound", "before negotiation");
    q.negotiate();
    assert_eq!(class(&q.send("{\"execute\":\"qmp_capabilities\"}")), "CommandNotFound", "negotiated twice");
    assert_eq!(class(&q.send("{\"execute\": }\n")), "GenericError", "malformed JSON");
    assert_eq!(class(&q.send("[1, 2]")), "GenericError", "not an object");
    assert_eq!(class(&q.send("{\"execute\": 5}")), "GenericError", "execute not a string");
    assert_eq!(class(&q.send("{\"arguments\": {}}")), "GenericError", "no execute");
    assert_eq!(class(&q.send("{\"execute\":\"nope\",\"id\":7}")), "CommandNotFound");
    let r = q.send("{\"execute\":\"query-status\",\"arguments\":{\"verbose\":true},\"id\":\"x\"}");
    assert_eq!((class(&r), &r["id"]), ("GenericError", &json!("x")), "unknown argument, id echoed");
    let r = q.send("{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":42}}");
    assert_eq!(class(&r), "GenericError", "a wrong type: {r}");
    let r = q.send("{\"execute\":\"query-status\",\"id\":{\"a\":[1,\"}\"]}}");
    assert_eq!((r["return"]["status"].as_str(), &r["id"]), (Some("running"), &json!({ "a": [1, "}"] })));

    // A message past the limit: the connection closes; the next client is served.
    let huge = format!("{{\"execute\":\"query-status\",\"id\":\"{}\"}}", "x".repeat(2 << 20));
    let _ = q.s.write_all(huge.as_bytes());
    let mut rest = Vec::new();
    let _ = q.r.read_to_end(&mut rest);
    drop(q);
    // A client gone mid-command.
    let mut q = Raw::connect(&sock);
    q.s.write_all(b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"query-").unwrap();
    drop(q);
    // Several at once: served one after another, each to the end.
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut q = Raw::connect(&sock);
                q.negotiate();
                let r = q.send(&format!("{{\"execute\":\"query-status\",\"id\":{i}}}"));
                assert_eq!(r["id"], i);
                r["return"]["status"].as_str().unwrap().to_string()
            })
        })
        .collect();
    for t in clients {
        assert_eq!(t.join().unwrap(), "running");
    }
    // The guest went on counting through all of it.
    let before = counts(&c);
    let start = Instant::now();
    while counts(&c) < before + 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "the guest stopped counting\n{}", c.describe());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut q = Raw::connect(&sock);
    q.negotiate();
    // The card's cable out and in again: the guest's driver sees both.
    let r = q.send("{\"execute\":\"set_link\",\"arguments\":{\"name\":\"nope\",\"up\":false}}");
    assert_eq!(class(&r), "DeviceNotFound");
    c.wait_for("NIC Link is Up", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        q.send("{\"execute\":\"set_link\",\"arguments\":{\"name\":\"net0\",\"up\":false}}"),
        json!({ "return": {} })
    );
    c.wait_for("NIC Link is Down", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        q.send("{\"execute\":\"set_link\",\"arguments\":{\"name\":\"net0\",\"up\":true}}"),
        json!({ "return": {} })
    );
    c.wait_for("NIC Link is Up", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.send("{\"execute\":\"quit\"}"), json!({ "return": {} }));
    let run = c.finish(Duration::from_secs(30));
    assert_eq!(run.status, Some(0), "{}", run.describe());
}

/// libvirt's way: it binds the monitor's socket itself and passes the listening
/// descriptor (`-chardev socket,id=charmonitor,fd=N,server=on,wait=off -mon
/// chardev=charmonitor,mode=control`); quern serves it, and a second client after the
/// first has gone.
#[test]
fn a_monitor_socket_passed_as_a_descriptor() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::os::unix::process::CommandExt;

    let sock = socket_path("qmp-fd.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    let (k, i) = (guest_file("vmlinux"), guest_file("initramfs-net.cpio.gz"));
    let mut cmd = Command::new(common::quern_bin());
    cmd.args(["-accel", "tcg", "-m", "256", "-display", "none", "-nodefaults", "-no-reboot", "-S", "-kernel"])
        .arg(k)
        .arg("-initrd")
        .arg(i)
        .args(["-chardev", "socket,id=charmonitor,fd=100,server=on,wait=off"])
        .args(["-mon", "chardev=charmonitor,id=monitor,mode=control"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: dup2 between fork and exec, on descriptors this process owns (100: clear
    // of the child's standard streams and of whatever number the listener has).
    unsafe {
        cmd.pre_exec(move || if libc::dup2(fd, 100) < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = cmd.spawn().expect("spawn quern");
    drop(listener);
    std::thread::sleep(Duration::from_millis(300));
    if let Some(s) = child.try_wait().unwrap() {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("quern ended at once ({s}): {err}");
    }
    for _ in 0..2 {
        let mut q = Raw::connect(&sock);
        q.negotiate();
        assert_eq!(q.send("{\"execute\":\"query-status\"}")["return"]["status"], "prelaunch");
    }
    let mut q = Raw::connect(&sock);
    q.negotiate();
    assert_eq!(q.send("{\"execute\":\"quit\"}"), json!({ "return": {} }));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "quern did not quit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(status.code(), Some(0), "{err}");
}

/// `-daemonize -pidfile`: the command returns 0 once the monitor listens and the pidfile
/// names the running daemon; `quit` ends it (and removes the pidfile).
#[test]
fn daemonize_returns_once_the_monitor_listens() {
    let sock = socket_path("qmp-daemon.sock");
    let pidfile = scratch("qmp-daemon.pid");
    let _ = std::fs::remove_file(&pidfile);
    let (k, i) = (guest_file("vmlinux"), guest_file("initramfs-net.cpio.gz"));
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let out = Command::new(common::quern_bin())
        .args(["-accel", "tcg", "-m", "256", "-display", "none", "-no-reboot", "-daemonize", "-pidfile"])
        .arg(&pidfile)
        .arg("-kernel")
        .arg(k)
        .arg("-initrd")
        .arg(i)
        .args(["-qmp", &qmp, "-name", "guest=demo,debug-threads=on", "-uuid", "5d3c0a0e-6c8f-4c3e-9a3b-1f0e6b1c2d3e"])
        .args(["-append", "console=ttyS0 panic=-1 quern.button=1"])
        .output()
        .expect("run quern -daemonize");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let pid: i32 = std::fs::read_to_string(&pidfile).expect("the pidfile").trim().parse().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "the daemon runs");
    let mut q = Raw::connect(&sock);
    q.negotiate();
    assert_eq!(q.send("{\"execute\":\"query-name\"}"), json!({ "return": { "name": "demo" } }));
    assert_eq!(
        q.send("{\"execute\":\"query-uuid\"}"),
        json!({ "return": { "UUID": "5d3c0a0e-6c8f-4c3e-9a3b-1f0e6b1c2d3e" } })
    );
    assert_eq!(q.send("{\"execute\":\"query-status\"}")["return"]["status"], "running");
    assert_eq!(q.send("{\"execute\":\"quit\"}"), json!({ "return": {} }));
    let start = Instant::now();
    // Gone, or a zombie nobody reaps (the daemon's parent exited; in a container the
    // pid 1 that inherits it may not wait for it).
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
    };
    while alive(pid) {
        assert!(start.elapsed() < Duration::from_secs(30), "the daemon did not quit");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pidfile.exists(), "the pidfile is removed at exit");
}

/// `-chardev pty -device isa-serial` (libvirt's serial console): quern prints the pty
/// as QEMU does, `query-chardev` reports it, and a shell in the guest answers on it
/// (what `virsh console` does).
#[test]
fn serial_console_on_a_pty() {
    let sock = socket_path("qmp-pty.sock");
    let (k, i) = (guest_file("vmlinux"), guest_file("initramfs-shell.cpio.gz"));
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let args = [
        "-accel",
        "tcg",
        "-m",
        "256",
        "-display",
        "none",
        "-nodefaults",
        "-no-reboot",
        "-kernel",
        k.to_str().unwrap(),
        "-initrd",
        i.to_str().unwrap(),
        "-chardev",
        "pty,id=charserial0",
        "-device",
        "isa-serial,chardev=charserial0,id=serial0,index=0",
        "-qmp",
        &qmp,
        "-append",
        "console=ttyS0 panic=-1",
    ];
    let c = Console::spawn(&args);
    wait_socket(&sock, &c);
    let mut q = Raw::connect(&sock);
    q.negotiate();
    let devs = q.send("{\"execute\":\"query-chardev\"}")["return"].clone();
    let file = devs[0]["filename"].as_str().unwrap_or_else(|| panic!("{devs}")).to_string();
    assert_eq!(devs[0]["label"], "charserial0");
    let path = file.strip_prefix("pty:").unwrap_or_else(|| panic!("{file}")).to_string();
    assert!(c.describe().contains(&format!("char device redirected to {path} (label charserial0)")));
    let mut pty = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open the pty");
    // Read until `want` shows up (the guest's output, from boot on).
    let mut seen = String::new();
    let mut read_until = |pty: &mut std::fs::File, want: &str| {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            assert!(start.elapsed() < LIMIT, "no {want:?} on the pty; got:\n{seen}");
            let mut pfd = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(pty), events: libc::POLLIN, revents: 0 };
            // SAFETY: poll on one live pollfd.
            unsafe { libc::poll(&mut pfd, 1, 200) };
            if pfd.revents & libc::POLLIN != 0 {
                let n = pty.read(&mut buf).unwrap_or(0);
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    };
    read_until(&mut pty, "QUERN-INIT-OK");
    std::thread::sleep(Duration::from_millis(500));
    pty.write_all(b"echo pty-$((6 * 7))\n").unwrap();
    read_until(&mut pty, "pty-42");
    assert_eq!(q.send("{\"execute\":\"quit\"}"), json!({ "return": {} }));
    let run = c.finish(Duration::from_secs(30));
    assert_eq!(run.status, Some(0), "{}", run.describe());
}

/// A CD-ROM's disc changed from the monitor, as `virsh change-media` does it: the stock
/// kernel's sr driver reads the first disc, sees the tray open (`eject`) and another
/// disc go in (`blockdev-change-medium`, an ISO made here with xorriso), and mounts it;
/// `query-block` and `info block` follow the tray and the medium; a hard disk cannot
/// be ejected.
#[test]
fn a_cd_rom_disc_changed_from_the_monitor() {
    let have_xorriso = Command::new("xorriso").arg("-version").output().is_ok_and(|o| o.status.success());
    if !have_xorriso {
        report("NOT RUN: a_cd_rom_disc_changed_from_the_monitor: xorriso is not installed (it makes the second disc)");
        return;
    }
    let dir = scratch("cd-change");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("root")).unwrap();
    std::fs::write(dir.join("root/quern.txt"), "the second disc\n").unwrap();
    let iso = dir.join("second.iso");
    let made = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "QUERN_SECOND", "-R", "-o"])
        .arg(&iso)
        .arg(dir.join("root"))
        .output()
        .expect("xorriso");
    assert!(made.status.success(), "xorriso failed: {}", String::from_utf8_lossy(&made.stderr));
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();

    let sock = socket_path("qmp-cd.sock");
    let (k, i, cd) = (guest_file("vmlinux"), guest_file("initramfs-cd.cpio.gz"), guest_file("cd.iso"));
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let hd = format!("file={},format=raw,if=ide,index=0", disk.display());
    let mut c = Console::spawn(&[
        "-accel",
        "tcg",
        "-m",
        "256",
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        k.to_str().unwrap(),
        "-initrd",
        i.to_str().unwrap(),
        "-append",
        "console=ttyS0 panic=-1 quern.cdchange=1",
        "-drive",
        &hd,
        "-cdrom",
        cd.to_str().unwrap(),
        "-qmp",
        &qmp,
    ]);
    c.wait_for("QUERN-CD-WAIT-CHANGE", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    let mut q = Raw::ready(&sock);
    let cdrom = |q: &mut Raw| -> Value {
        let blocks = q.execute("query-block", json!({}));
        blocks
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["device"] == "ide1-cd0")
            .cloned()
            .unwrap_or_else(|| panic!("{blocks}"))
    };
    let b = cdrom(&mut q);
    assert_eq!((&b["removable"], &b["tray_open"]), (&json!(true), &json!(false)), "{b}");
    assert!(b["inserted"]["file"].as_str().unwrap().ends_with("cd.iso"), "{b}");

    let r = q.send("{\"execute\":\"eject\",\"arguments\":{\"device\":\"ide0-hd0\"}}\n");
    assert!(r["error"]["desc"].as_str().unwrap_or_default().contains("not removable"), "{r}");
    let r = q.send("{\"execute\":\"eject\",\"arguments\":{\"device\":\"nosuch\"}}\n");
    assert_eq!(class(&r), "DeviceNotFound", "{r}");
    let r = q.send("{\"execute\":\"device_del\",\"arguments\":{\"id\":\"nosuch\"}}\n");
    assert_eq!(class(&r), "DeviceNotFound", "{r}");

    // The guest's sr driver locks the door while it has the device open: forced, as
    // libvirt's change-media does it.
    q.execute("eject", json!({ "device": "ide1-cd0", "force": true }));
    let b = cdrom(&mut q);
    assert_eq!(b["tray_open"], json!(true), "{b}");
    assert!(b.get("inserted").is_none(), "ejected, still inserted: {b}");
    q.execute(
        "blockdev-change-medium",
        json!({ "device": "ide1-cd0", "filename": iso.to_str().unwrap(), "format": "raw" }),
    );
    let b = cdrom(&mut q);
    assert_eq!(b["tray_open"], json!(false), "{b}");
    assert!(b["inserted"]["file"].as_str().unwrap().ends_with("second.iso"), "{b}");
    // The IDE function with the bus-master BAR the guest's ata_piix enabled (16 ports).
    let pci = q.execute("query-pci", json!({}));
    let ide = pci[0]["devices"].as_array().unwrap().iter().find(|d| d["slot"] == 1 && d["function"] == 1).cloned();
    let ide = ide.unwrap_or_else(|| panic!("no 00:01.1 in {pci}"));
    assert_eq!(
        (&ide["id"]["vendor"], &ide["id"]["device"], &ide["class_info"]["class"]),
        (&json!(0x8086), &json!(0x7010), &json!(0x0101)),
        "{ide}"
    );
    let bar4 = ide["regions"].as_array().unwrap().iter().find(|r| r["bar"] == 4).cloned();
    assert_eq!(bar4.map(|r| (r["type"].clone(), r["size"].clone())), Some((json!("io"), json!(16))), "{ide}");
    let info = q.execute("human-monitor-command", json!({ "command-line": "info block" }));
    assert!(info.as_str().unwrap().contains("second.iso (raw"), "{info}");

    c.wait_for("QUERN-CD-CHANGED QUERN_SECOND", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    c.wait_for("QUERN-CD-FILE the second disc", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    report("eject and blockdev-change-medium: the guest's sr driver saw the tray open and mounted the new disc");
    let run = c.finish(LIMIT);
    assert_eq!(run.status, Some(0), "{}", run.describe());
}
