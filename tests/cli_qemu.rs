//! quern's command line is QEMU's: real command lines from test runners, tutorials and
//! libvirt either run or are refused by naming the option quern lacks; the inputs that
//! once crashed or were mis-read give QEMU-style errors.

mod common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::process::Command;
use std::time::Duration;

use common::multiboot::{image_at, kernel, LOAD_ADDR};
use common::{quern_bin, report, run_qemu, run_quern, scratch, write, Run};

/// A Multiboot kernel that prints "CLI 0000002A" and exits through isa-debug-exit
/// (port 0xf4) with status 3, i.e. process status 7.
fn test_kernel() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let k = kernel("CLI", 3, |a| a.mov(iced_x86::code_asm::esi, 42u32));
        let p = scratch("cli-kernel.bin");
        write(&p, &k);
        p.to_str().unwrap().to_string()
    })
    .clone()
}

const PRINTED: &str = "CLI 0000002A";

fn quern(args: &[&str]) -> Run {
    run_quern(args, Duration::from_secs(60))
}

/// A clean failure: status 1, one "quern: " line that contains `expect`, no panic.
fn refused(args: &[&str], expect: &str) -> String {
    let run = quern(args);
    let d = run.describe();
    assert_eq!(run.status, Some(1), "expected status 1 for {args:?}:\n{d}");
    assert!(!run.stderr.contains("panicked"), "{args:?} panicked:\n{d}");
    assert!(run.stderr.starts_with("quern: "), "{args:?}: the error should start with 'quern: ':\n{d}");
    assert!(run.stderr.contains(expect), "{args:?}: the error should contain {expect:?}:\n{d}");
    run.stderr
}

fn split(line: &str, k: &str) -> Vec<String> {
    line.split_whitespace().map(|w| w.replace('K', k)).collect()
}

/// Runs `args`; while quern refuses an option by name ("quern: -opt ...: ... not
/// supported yet"), drops that option (and its argument) and tries again. Returns the
/// refused options and the final run.
fn strip_refused(mut args: Vec<String>) -> (Vec<String>, Run) {
    let mut refused = Vec::new();
    loop {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = quern(&refs);
        assert!(!run.stderr.contains("panicked"), "{args:?} panicked:\n{}", run.describe());
        if run.status != Some(1) || !run.stderr.contains("not supported yet") {
            return (refused, run);
        }
        // The option the message starts with: "quern: -opt VALUE: ..." or "quern: -opt: ...".
        let i = (0..args.len())
            .find(|&i| {
                let with_value = args.get(i + 1).map(|v| format!("quern: {} {v}:", args[i]));
                run.stderr.starts_with(&format!("quern: {}:", args[i]))
                    || with_value.is_some_and(|p| run.stderr.starts_with(&p))
            })
            .unwrap_or_else(|| panic!("the refusal does not name an option of {args:?}:\n{}", run.describe()));
        let takes_value = !run.stderr.starts_with(&format!("quern: {}:", args[i]));
        refused.push(args[i].clone());
        args.drain(i..if takes_value { i + 2 } else { i + 1 });
    }
}

#[test]
fn command_lines_that_run_as_under_qemu() {
    let k = test_kernel();
    let log = scratch("cli-int.log");
    let log = log.to_str().unwrap();
    let lines = [
        // kvm-unit-tests' runner (x86/run), with a Multiboot test kernel.
        "-nodefaults -display none -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x4 -machine accel=tcg -kernel K -smp 1",
        // OS-development tutorials.
        "-m 128M -no-reboot -nographic -kernel K -device isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-M pc -m 64 -no-reboot -d int,cpu_reset -D LOG -kernel K -device isa-debug-exit,iobase=0xf4,iosize=0x04 -display none -serial stdio",
        "-machine pc-i440fx-7.2,accel=tcg -cpu qemu64 -smp 1,sockets=1,cores=1,threads=1 -m size=64M -kernel K -nographic -device isa-debug-exit,iobase=0xf4,iosize=4",
        "--accel tcg,thread=single -m=96 -kernel K -display none -vga none -serial stdio -device {\"driver\":\"isa-debug-exit\",\"iobase\":244}",
        // Network tutorials: a card on the user-mode network, the new and the old way.
        "-m 64 -nographic -kernel K -device isa-debug-exit,iobase=0xf4,iosize=0x04 -nic user,model=e1000,hostfwd=tcp:127.0.0.1:0-:22",
        "-m 64 -nographic -kernel K -device isa-debug-exit,iobase=0xf4,iosize=0x04 -net nic,model=e1000 -net user",
    ];
    for line in lines {
        let args: Vec<String> = split(line, &k).into_iter().map(|w| w.replace("LOG", log)).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = quern(&refs);
        assert_eq!(run.status, Some(7), "{line}:\n{}", run.describe());
        assert!(run.stdout.contains(PRINTED), "{line}:\n{}", run.describe());
        // The same line under QEMU, where it is installed and the line is one QEMU takes
        // verbatim (quern's JSON -device and -m= spellings are not QEMU 7.2's).
        if line.contains('{') || line.contains("-m=") {
            continue;
        }
        match run_qemu(&refs) {
            Some(q) => assert_eq!(q.status, run.status, "QEMU differs on {line}:\n{}", q.describe()),
            None => report(&format!("NOT RUN: QEMU comparison of '{line}': qemu-system-x86_64 is not installed")),
        }
    }
    assert!(std::fs::metadata(log).is_ok(), "-D should create the log file");
}

#[test]
fn libvirt_command_line_is_accepted_or_refused_by_name() {
    // The command line libvirt 9.0 generates for a domain (../shared/research/libvirt.md),
    // with a kernel and an exit device so that what quern accepts can run to the end;
    // without -S (libvirt's `cont` comes through the monitor: tests/qmp.rs) and with the
    // monitor's socket at a path rather than libvirt's inherited fd=N.
    let k = test_kernel();
    let disk = scratch("libvirt-disk.img");
    write(&disk, &vec![0u8; 1 << 20]);
    let sock = scratch("libvirt-monitor.sock");
    let line = "-name guest=demo,debug-threads=on -object secret,id=masterKey0,format=raw,file=/nonexistent \
        -machine pc-i440fx-7.2,usb=off,dump-guest-core=off -accel tcg -m 512 -overcommit mem-lock=off \
        -smp 1,sockets=1,cores=1,threads=1 -uuid 5d3c0a0e-6c8f-4c3e-9a3b-1f0e6b1c2d3e -display none \
        -no-user-config -nodefaults -chardev socket,id=charmonitor,path=%MONITOR%,server=on,wait=off \
        -mon chardev=charmonitor,id=monitor,mode=control -rtc base=utc -boot strict=on \
        -blockdev {\"driver\":\"file\",\"filename\":\"%IMG%\",\"node-name\":\"libvirt-1-storage\"} \
        -blockdev {\"node-name\":\"libvirt-1-format\",\"driver\":\"raw\",\"file\":\"libvirt-1-storage\"} \
        -device ide-hd,bus=ide.0,unit=0,drive=libvirt-1-format,id=ide0-0-0,bootindex=1 \
        -netdev user,id=hostnet0 -device e1000,netdev=hostnet0,id=net0,mac=52:54:00:12:34:56,bus=pci.0,addr=0x2 \
        -chardev pty,id=charserial0 -device isa-serial,chardev=charserial0,id=serial0,index=0 \
        -audiodev {\"id\":\"audio1\",\"driver\":\"none\"} -msg timestamp=on \
        -kernel K -device isa-debug-exit,iobase=0xf4,iosize=0x04";
    let args = split(line, &k)
        .into_iter()
        .map(|a| a.replace("%IMG%", disk.to_str().unwrap()).replace("%MONITOR%", sock.to_str().unwrap()))
        .collect();
    let (refused, run) = strip_refused(args);
    assert!(refused.is_empty(), "options refused: {refused:?}");
    assert_eq!(run.status, Some(7), "the rest should run:\n{}", run.describe());
    // The console is on the pty libvirt asked for, announced as QEMU does.
    assert!(run.stderr.contains("char device redirected to /dev/pts/"), "{}", run.describe());
    assert!(run.stderr.contains("(label charserial0)"), "{}", run.describe());
}

#[test]
fn tutorial_lines_with_what_quern_lacks_are_refused_by_name() {
    let k = test_kernel();
    for (line, option) in [
        ("-kernel K -serial tcp:127.0.0.1:4555,server,nowait", "-serial tcp:127.0.0.1:4555,server,nowait"),
        ("-kernel K -s -S", "-s"),
        ("-fda floppy.img", "-fda floppy.img"),
        ("-drive file=x.img,if=virtio", "-drive file=x.img,if=virtio"),
        ("-kernel K -monitor unix:/tmp/quern-m.sock,server,nowait", "-monitor unix:/tmp/quern-m.sock,server,nowait"),
        ("-kernel K -usb", "-usb"),
        ("-kernel K -vnc :1", "-vnc :1"),
        ("-kernel K -icount shift=1", "-icount shift=1"),
        ("-kernel K -global isa-fdc.driveA=", "-global isa-fdc.driveA="),
        ("-kernel K -object memory-backend-file,id=m,size=1G,mem-path=/dev/shm", "-object memory-backend-file"),
        ("-kernel K -vga std", "-vga std"),
    ] {
        let args = split(line, &k);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = refused(&refs, "not supported yet");
        assert!(err.starts_with(&format!("quern: {option}")), "{line}: should name {option}:\n{err}");
    }
}

#[test]
fn options_once_misparsed_or_ignored() {
    let k = test_kernel();
    // Not -d aemonize: the daemon reports its start-up error through the parent.
    refused(&["-daemonize"], "quern: nothing to boot");
    refused(&["-m", "-5"], "quern: -m -5: ");
    refused(&["-m"], "quern: -m: requires an argument");
    refused(&["-nosuchoption"], "quern: -nosuchoption: invalid option");
    refused(&["-kernel", &k, "-d", "nonsense"], "quern: -d nonsense: unknown log item 'nonsense'");
    refused(&["-kernel", &k, "-accel", "tcg,bogus=1"], "quern: -accel tcg,bogus=1: unknown property 'bogus'");
    refused(&["-kernel", &k, "-M", "pc,kernel-irqchip=split"], "kernel-irqchip=split is not supported yet");
    refused(&["-kernel", &k, "-serial", "stdio", "-serial", "stdio"], "second serial port (COM2) is not supported yet");
    refused(&["-kernel", &k, "-cpu", "nosuchcpu"], "quern: -cpu nosuchcpu: ");
    refused(&["-kernel", &k, "-accel", "tcg", "-cpu", "host"], "quern: -cpu host: ");
    refused(&["-kernel", &k, "-accel", "tcg", "-cpu", "max,+nosuchfeature"], "quern: -cpu max,+nosuchfeature: ");
}

#[test]
fn help_and_lists_exit_zero() {
    for args in [
        &["-help"][..],
        &["-h"],
        &["--help"],
        &["-version"],
        &["-machine", "help"],
        &["-M", "help"],
        &["-cpu", "help"],
        &["-device", "help"],
        &["-d", "help"],
        &["-accel", "help"],
    ] {
        let run = quern(args);
        assert_eq!(run.status, Some(0), "{args:?}:\n{}", run.describe());
        assert!(!run.stdout.trim().is_empty(), "{args:?} printed nothing:\n{}", run.describe());
    }
    let v = quern(&["-version"]).stdout;
    assert!(v.starts_with("quern emulator version ") && v.contains("pc-i440fx-7.2"), "{v}");
    assert!(quern(&["-machine", "help"]).stdout.contains("pc-i440fx-7.2"));
    assert!(quern(&["-cpu", "help"]).stdout.contains("qemu64"));
}

/// Runs quern with arguments that need not be UTF-8.
fn quern_os(args: &[OsString]) -> std::process::Output {
    Command::new(quern_bin()).args(args).stdin(std::process::Stdio::null()).output().expect("spawn quern")
}

fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

#[test]
fn arguments_that_are_not_utf8() {
    let k = test_kernel();
    let cases: [(Vec<OsString>, &str); 4] = [
        (vec!["-kernel".into(), os(b"k\xff.bz")], "quern: -kernel k\u{fffd}.bz: cannot read"),
        (vec!["-kernel".into(), k.clone().into(), "-append".into(), os(b"x=\xff")], "not valid UTF-8"),
        (vec!["-m".into(), os(b"\xff")], "quern: -m \u{fffd}: the argument is not valid UTF-8"),
        (vec!["-d".into(), os(b"int,\xff")], "not valid UTF-8"),
    ];
    for (args, expect) in cases {
        let out = quern_os(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked") && err.contains(expect), "{args:?}: expected {expect:?} in {err}");
    }
    // A serial log whose name is not UTF-8 is just a file name.
    let dir = scratch("non-utf8-serial");
    std::fs::create_dir_all(&dir).unwrap();
    let mut log = dir.into_os_string();
    log.push(os(b"/s\xff.log"));
    let mut spec = OsString::from("file:");
    spec.push(&log);
    let args: Vec<OsString> = ["-kernel", &k, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-serial"]
        .iter()
        .map(OsString::from)
        .chain([spec])
        .collect();
    let out = quern_os(&args);
    assert_eq!(out.status.code(), Some(7), "{}", String::from_utf8_lossy(&out.stderr));
    let written = std::fs::read_to_string(&log).expect("the serial log exists under its non-UTF-8 name");
    assert!(written.contains(PRINTED), "{written}");
}

#[test]
fn pidfile_is_written_and_removed() {
    let k = test_kernel();
    let pid = scratch("quern.pid");
    let run = quern(&[
        "-kernel",
        &k,
        "-pidfile",
        pid.to_str().unwrap(),
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-d",
        "cpu_reset",
    ]);
    assert_eq!(run.status, Some(7), "{}", run.describe());
    assert!(!pid.exists(), "the pidfile should be removed at exit");
    // While it runs (a kernel that never exits: no exit device), it holds our PID.
    let k_loop = scratch("cli-loop.bin");
    write(&k_loop, &kernel("LOOP", 1, |a| a.mov(iced_x86::code_asm::esi, 1u32)));
    let mut child = Command::new(quern_bin())
        .args(["-kernel", k_loop.to_str().unwrap(), "-pidfile", pid.to_str().unwrap(), "-serial", "null"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&pid) {
            break t;
        }
        assert!(std::time::Instant::now() < deadline, "no pidfile after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(text.trim(), child.id().to_string());
}

#[test]
fn no_shutdown_keeps_the_stopped_machine_as_qemu_does() {
    // ud2 with no IDT: a triple fault, which -no-reboot turns into a shutdown.
    let p = scratch("cli-triple-fault.bin");
    write(&p, &image_at(LOAD_ADDR, LOAD_ADDR + 32, &[0x0f, 0x0b]));
    let p = p.to_str().unwrap();
    let run = quern(&["-kernel", p, "-no-reboot"]);
    assert_eq!(run.status, Some(0), "-no-reboot exits at the reset:\n{}", run.describe());
    let run = run_quern(&["-kernel", p, "-no-reboot", "-no-shutdown"], Duration::from_secs(2));
    assert_eq!(run.status, None, "-no-shutdown keeps quern running:\n{}", run.describe());
    assert!(run.stderr.contains("-no-shutdown keeps the machine stopped"), "{}", run.describe());
}

#[test]
fn drives_name_the_option_whose_image_is_missing() {
    for (line, expect) in [
        ("-cdrom os.iso -boot d", "quern: -cdrom os.iso: Could not open 'os.iso'"),
        ("-drive format=raw,file=os.img", "quern: -drive format=raw,file=os.img: Could not open 'os.img'"),
        ("os.img", "quern: -hda os.img: Could not open 'os.img'"),
        ("-hdb /nonexistent/b.qcow2", "quern: -hdb /nonexistent/b.qcow2: Could not open '/nonexistent/b.qcow2'"),
        ("-drive file=x.img,format=vmdk", "quern: -drive file=x.img,format=vmdk: format=vmdk is not supported yet"),
        ("-drive file=a.img,index=0 -drive file=b.img,index=0", "quern: two drives on IDE bus 0 unit 0"),
        ("-device ide-hd,drive=nothing", "quern: drive=nothing: no -drive if=none,id=nothing"),
    ] {
        let args: Vec<&str> = line.split_whitespace().collect();
        refused(&args, expect);
    }
}

/// `-rtc base=localtime`: the RTC runs in the host's time zone (here a POSIX TZ of
/// +5:30, so that the test does not depend on the machine's zone), as the guest kernel
/// reads it at boot; without it, UTC.
#[test]
fn rtc_base_localtime_follows_the_host_time_zone() {
    let guest = common::root().join("build/guest");
    let (k, i) = (guest.join("vmlinux"), guest.join("initramfs.cpio.gz"));
    let boot = |localtime: bool| -> i64 {
        let mut cmd = std::process::Command::new(common::quern_bin());
        cmd.env("TZ", "IST-5:30").args(["-accel", "tcg", "-m", "256", "-display", "none", "-nodefaults"]);
        cmd.args(["-serial", "stdio", "-no-reboot", "-kernel"]).arg(&k).arg("-initrd").arg(&i);
        cmd.args(["-append", "console=ttyS0 panic=-1"]);
        if localtime {
            cmd.args(["-rtc", "base=localtime"]);
        }
        let out = cmd.output().expect("run quern");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.contains("setting system clock to")).unwrap_or_else(|| panic!("{text}"));
        let epoch: i64 = line.rsplit('(').next().and_then(|r| r.trim_end_matches(')').parse().ok()).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        epoch - now
    };
    let utc = boot(false);
    assert!(utc.abs() < 120, "UTC RTC off by {utc} s");
    let local = boot(true);
    assert!((local - 19_800).abs() < 120, "local-time RTC off by {} s from +5:30", local - 19_800);
}
