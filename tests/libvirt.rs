//! libvirt drives quern as it drives QEMU: Debian's libvirt-daemon-system (9.0),
//! started here by hand (no systemd; its settings as ../shared/research/libvirt.md
//! found them), probes the quern binary as a QEMU emulator and runs one domain
//! through a whole life: define, start, `virsh console` (a command typed into the
//! guest's shell answers), dominfo, domstats, suspend, resume, shutdown (the guest
//! powers off through ACPI), start again, save, restore (the guest's counter continues
//! from where it was), reboot, destroy, undefine.
//!
//! The domain: Debian's stock kernel booted directly with build/guest/initramfs-net
//! (a counter on the console every half second, a shell on the console, the ACPI power
//! button powers off), a raw IDE disk, user networking on an e1000, the serial console
//! on a pty with its log in a file the test reads.
//!
//! libvirt's system daemon reads /etc/libvirt/qemu.conf; the test writes the settings
//! it needs there and puts the original back at the end. Without the packages (or as
//! a non-root user) it says NOT RUN.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{guest_file, quern_bin, report, root, scratch};

const DOMAIN: &str = "quern-libvirt-test";

/// A file the test changes, and what to put back.
struct Saved {
    path: PathBuf,
    original: Original,
}

enum Original {
    Bytes(Option<Vec<u8>>),
    Link(PathBuf),
}

/// libvirtd running on sockets in the test's own directory.
struct Libvirtd {
    child: Child,
    dir: PathBuf,
    uri: String,
    saved: Vec<Saved>,
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        let _ = virsh_output(&self.uri, &["destroy", DOMAIN]);
        let _ = virsh_output(&self.uri, &["undefine", DOMAIN]);
        let _ = self.child.kill();
        let _ = self.child.wait();
        for s in &self.saved {
            let _ = match &s.original {
                Original::Bytes(Some(b)) => std::fs::write(&s.path, b),
                Original::Bytes(None) => std::fs::remove_file(&s.path),
                Original::Link(target) => std::os::unix::fs::symlink(target, &s.path),
            };
        }
    }
}

fn virsh_output(uri: &str, args: &[&str]) -> Output {
    Command::new("virsh").arg("-c").arg(uri).args(args).output().expect("virsh")
}

impl Libvirtd {
    /// Starts libvirtd, or says NOT RUN and why.
    fn start() -> Option<Libvirtd> {
        let have = |p: &str| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
        if !have("libvirtd") || !have("virsh") {
            report("NOT RUN: libvirt: libvirtd/virsh are not installed (apt-get install libvirt-daemon-system libvirt-clients)");
            return None;
        }
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            report("NOT RUN: libvirt: libvirt's system daemon needs root here (it reads /etc/libvirt/qemu.conf)");
            return None;
        }
        let dir = scratch("libvirt");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("run")).unwrap();
        let conf = dir.join("libvirtd.conf");
        std::fs::write(
            &conf,
            format!(
                "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
                 log_outputs = \"3:file:{}\"\n",
                dir.join("run").display(),
                dir.join("libvirtd.log").display()
            ),
        )
        .unwrap();
        let mut saved = Vec::new();
        let qemu_conf = PathBuf::from("/etc/libvirt/qemu.conf");
        saved.push(Saved { original: Original::Bytes(std::fs::read(&qemu_conf).ok()), path: qemu_conf.clone() });
        std::fs::write(
            &qemu_conf,
            "user = \"root\"\ngroup = \"root\"\nsecurity_driver = \"none\"\ncgroup_controllers = [ ]\n\
             namespaces = [ ]\nstdio_handler = \"file\"\ndynamic_ownership = 0\nremember_owner = 0\n",
        )
        .unwrap();
        // The default network would need dnsmasq and a bridge: not autostarted.
        let autostart = PathBuf::from("/etc/libvirt/qemu/networks/autostart/default.xml");
        if let Ok(target) = std::fs::read_link(&autostart) {
            let _ = std::fs::remove_file(&autostart);
            saved.push(Saved { path: autostart, original: Original::Link(target) });
        }
        let child = Command::new("setsid")
            .arg("libvirtd")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("libvirtd.stderr")).unwrap())
            .spawn()
            .expect("libvirtd");
        let uri = format!("qemu:///system?socket={}", dir.join("run/libvirt-sock").display());
        let d = Libvirtd { child, dir, uri, saved };
        let start = Instant::now();
        while !virsh_output(&d.uri, &["version"]).status.success() {
            assert!(start.elapsed() < Duration::from_secs(30), "libvirtd did not come up\n{}", d.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(d)
    }

    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let tail =
            |s: String| s.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        format!(
            "--- libvirtd.log (tail) ---\n{}\n--- libvirtd stderr ---\n{}\n--- quern's log ---\n{}",
            tail(read(&self.dir.join("libvirtd.log"))),
            read(&self.dir.join("libvirtd.stderr")),
            tail(read(Path::new(&format!("/var/log/libvirt/qemu/{DOMAIN}.log")))),
        )
    }

    /// `virsh ARGS`, which must succeed; its output.
    fn virsh(&self, args: &[&str]) -> String {
        let o = virsh_output(&self.uri, args);
        assert!(
            o.status.success(),
            "virsh {}: {}{}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn state(&self) -> String {
        self.virsh(&["domstate", DOMAIN]).trim().to_string()
    }

    fn wait_state(&self, want: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let s = self.state();
            if s == want {
                return;
            }
            assert!(start.elapsed() < limit, "domain is '{s}', not '{want}' after {limit:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The guest's console log (the pty's `logfile=`).
struct ConsoleLog(PathBuf);

impl ConsoleLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.0).unwrap_or_default()).replace('\r', "")
    }

    /// Waits for `needle` past byte `from`; returns where it ends.
    fn wait(&self, needle: &str, from: usize, limit: Duration, d: &Libvirtd) -> usize {
        let start = Instant::now();
        loop {
            let t = self.text();
            if let Some(p) = t.get(from..).and_then(|rest| rest.find(needle)) {
                return from + p + needle.len();
            }
            assert!(start.elapsed() < limit, "{needle:?} not on the console in {limit:?}\n{}\n{}", &t, d.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The counter values printed past byte `from`.
    fn counts(&self, from: usize) -> Vec<u64> {
        let t = self.text();
        t.get(from..)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("QUERN-COUNT ")?.trim().parse().ok())
            .collect()
    }
}

fn domain_xml(dir: &Path, disk: &Path, log: &Path) -> String {
    let (k, i) = (guest_file("vmlinux"), guest_file("initramfs-net.cpio.gz"));
    let emulator = std::fs::canonicalize(quern_bin()).unwrap();
    let _ = dir;
    format!(
        r#"<domain type='qemu'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{k}</kernel>
    <initrd>{i}</initrd>
    <cmdline>console=ttyS0 panic=-1 quern.count=1 quern.button=1 quern.shell=1</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{emulator}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='hda' bus='ide'/>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:3a:11:01'/>
      <model type='e1000'/>
    </interface>
    <serial type='pty'>
      <log file='{log}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        k = k.display(),
        i = i.display(),
        emulator = emulator.display(),
        disk = disk.display(),
        log = log.display(),
    )
}

#[test]
fn libvirt_runs_a_quern_domain_through_its_life() {
    let Some(d) = Libvirtd::start() else { return };
    let boot = Duration::from_secs(180);

    // The emulator as libvirt sees it after probing.
    let caps = d.virsh(&["domcapabilities", "--emulatorbin", quern_bin(), "--arch", "x86_64", "--virttype", "qemu"]);
    assert!(caps.contains("<machine>pc-i440fx-7.2</machine>"), "domcapabilities:\n{caps}");
    report("libvirt probed quern: domcapabilities lists pc-i440fx-7.2");

    let disk = d.dir.join("disk.img");
    std::fs::copy(guest_file("disk.img"), &disk).unwrap();
    let log = ConsoleLog(d.dir.join("console.log"));
    let xml = d.dir.join("domain.xml");
    std::fs::write(&xml, domain_xml(&d.dir, &disk, &log.0)).unwrap();
    d.virsh(&["define", xml.to_str().unwrap()]);
    d.virsh(&["start", DOMAIN]);
    assert_eq!(d.state(), "running");
    let mut at = log.wait("QUERN-SHELL-READY", 0, boot, &d);

    // A command typed into the guest's shell answers on `virsh console`.
    let script = root().join("tests/libvirt/console.py");
    let o = Command::new("python3")
        .arg(&script)
        .args([d.uri.as_str(), DOMAIN, "echo QUERN-$((6*7))", "QUERN-42", "60"])
        .output()
        .expect("python3");
    assert!(o.status.success(), "virsh console: no answer\n{}\n{}", String::from_utf8_lossy(&o.stdout), d.logs());
    report("virsh console: 'echo QUERN-$((6*7))' typed in the guest's shell answered QUERN-42");

    let info = d.virsh(&["dominfo", DOMAIN]);
    assert!(info.contains("running") && info.contains("262144 KiB"), "dominfo:\n{info}");
    let stats = d.virsh(&["domstats", DOMAIN]);
    for want in ["state.state=1", "block.count=1", "block.0.name=hda", "block.0.rd.reqs="] {
        assert!(stats.contains(want), "domstats lacks {want}:\n{stats}");
    }

    // suspend: the counter stands still; resume: it goes on.
    d.virsh(&["suspend", DOMAIN]);
    assert_eq!(d.state(), "paused");
    let frozen = log.text().len();
    std::thread::sleep(Duration::from_secs(2));
    assert!(log.counts(frozen).is_empty(), "the counter moved while suspended:\n{}", log.text());
    d.virsh(&["resume", DOMAIN]);
    assert_eq!(d.state(), "running");
    at = log.wait("QUERN-COUNT", frozen.max(at), Duration::from_secs(30), &d);

    // shutdown: the ACPI power button, the guest powers off.
    d.virsh(&["shutdown", DOMAIN]);
    at = log.wait("QUERN-POWER-BUTTON", at, Duration::from_secs(60), &d);
    d.wait_state("shut off", Duration::from_secs(60));
    report("virsh shutdown: the guest saw the power button and powered off");

    // start again, then save and restore: the counter continues.
    d.virsh(&["start", DOMAIN]);
    at = log.wait("QUERN-SHELL-READY", at, boot, &d);
    log.wait("QUERN-COUNT 4\n", at, Duration::from_secs(60), &d);
    let saved = d.dir.join("saved.state");
    d.virsh(&["save", DOMAIN, saved.to_str().unwrap()]);
    assert_eq!(d.state(), "shut off");
    let last = *log.counts(0).last().unwrap();
    let mark = log.text().len();
    d.virsh(&["restore", saved.to_str().unwrap()]);
    assert_eq!(d.state(), "running");
    log.wait(&format!("QUERN-COUNT {}\n", last + 3), mark, Duration::from_secs(60), &d);
    let after = log.text()[mark..].to_string();
    assert!(!after.contains("QUERN-NET-INIT-OK"), "the restored guest booted again:\n{after}");
    assert!(
        log.counts(mark).iter().all(|&n| n > last),
        "counter after restore {:?}, last before {last}",
        log.counts(mark)
    );
    report(&format!("virsh save/restore: the counter went on from {last} (the guest was not rebooted)"));

    // reboot (libvirt: the power button, then a reset): the guest boots again.
    at = log.text().len();
    d.virsh(&["reboot", DOMAIN]);
    at = log.wait("QUERN-POWER-BUTTON", at, Duration::from_secs(60), &d);
    log.wait("QUERN-NET-INIT-OK", at, boot, &d);
    assert_eq!(d.state(), "running");
    report("virsh reboot: the guest powered off by the button and booted again");

    d.virsh(&["destroy", DOMAIN]);
    assert_eq!(d.state(), "shut off");
    d.virsh(&["undefine", DOMAIN]);
    let all = d.virsh(&["list", "--all", "--name"]);
    assert!(!all.contains(DOMAIN), "still defined:\n{all}");
}
