use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use super::*;

fn args(v: &[&str]) -> Vec<OsString> {
    std::iter::once("quern").chain(v.iter().copied()).map(OsString::from).collect()
}

fn run(v: &[&str]) -> Options {
    match parse(args(v)) {
        Ok(Action::Run(o)) => *o,
        other => panic!("{v:?} gave {other:?}"),
    }
}

fn err(v: &[&str]) -> String {
    match parse(args(v)) {
        Err(CliError(e)) => e,
        other => panic!("{v:?} should fail, gave {other:?}"),
    }
}

#[test]
fn spellings_of_an_option() {
    for v in [&["-m", "512"][..], &["--m", "512"], &["-m=512"], &["--m=512"], &["-m", "size=512M"]] {
        assert_eq!(run(v).ram_bytes, 512 << 20, "{v:?}");
    }
    assert_eq!(run(&["-m", "1.5G"]).ram_bytes, 1536 << 20);
    assert_eq!(run(&["-kernel", "k", "-append=a=b c"]).append.as_deref(), Some("a=b c"));
}

#[test]
fn the_last_m_wins_and_serial_accumulates() {
    assert_eq!(run(&["-m", "256", "-m", "1G"]).ram_bytes, 1 << 30);
    assert!(err(&["-serial", "stdio", "-serial", "file:/tmp/x"]).contains("second serial port"));
    assert_eq!(run(&["-serial", "stdio", "-serial", "none"]).serial, Some(CharDev::Stdio));
}

#[test]
fn no_bundles_of_one_letter_flags() {
    // QEMU's options, once mis-read as -d aemonize or "unexpected argument '-n'".
    for (o, arg) in [
        ("-usb", None),
        ("-global", Some("isa-fdc.driveA=")),
        ("-icount", Some("shift=1")),
        ("-vnc", Some(":0")),
        ("-qmp-pretty", Some("unix:q")),
    ] {
        let mut v = vec![o];
        v.extend(arg);
        let e = err(&v);
        assert!(e.contains(&format!("{o} is not supported yet")), "{v:?}: {e}");
    }
    for v in [
        &["-nodefaults"][..],
        &["-daemonize"],
        &["-object", "secret,id=masterKey0,format=raw,file=/nonexistent"],
        &["-rtc", "base=localtime"],
        &["-name", "guest=x,debug-threads=on"],
        &["-nic", "none"],
        &["-net", "none"],
        &["-rtc", "base=utc"],
        &["-boot", "strict=on"],
        &["-vga", "none"],
        &["-pidfile", "/tmp/p"],
        &["-snapshot"],
    ] {
        run(v);
    }
    assert!(err(&["-nic", "user,model=rtl8139"]).contains("not supported yet"));
    assert!(err(&["-frobnicate"]).contains("-frobnicate: invalid option"));
}

#[test]
fn values_that_look_like_options() {
    let e = err(&["-m", "-5"]);
    assert!(e.starts_with("-m -5: "), "{e}");
    assert_eq!(err(&["-kernel"]), "-kernel: requires an argument");
    assert_eq!(err(&["-nographic=1"]), "-nographic: takes no argument");
}

#[test]
fn non_utf8_arguments() {
    let with = |opt: &str, bytes: &[u8]| {
        let mut a = args(&[opt]);
        a.push(OsString::from_vec(bytes.to_vec()));
        parse(a)
    };
    let Ok(Action::Run(o)) = with("-kernel", b"k\xff.bz") else { panic!("a non-UTF-8 path is a path") };
    assert_eq!(o.kernel.unwrap().as_os_str().as_bytes(), b"k\xff.bz");
    let Ok(Action::Run(o)) = with("-serial", b"file:s\xff") else { panic!("file: takes any path") };
    assert_eq!(o.serial, Some(CharDev::File(PathBuf::from(OsString::from_vec(b"s\xff".to_vec())))));
    let e = with("-m", b"\xff").unwrap_err().0;
    assert!(e.contains("not valid UTF-8"), "{e}");
    let mut a = args(&["-kernel", "k"]);
    a.extend([OsString::from("-append"), OsString::from_vec(b"x=\xff".to_vec())]);
    assert!(parse(a).unwrap_err().0.contains("-append"));
    let a = vec![OsString::from("quern"), OsString::from_vec(b"-\xff".to_vec())];
    assert!(parse(a).unwrap_err().0.contains("invalid option"));
}

#[test]
fn help_lists_print_and_exit() {
    for v in [
        &["-help"][..],
        &["-h"],
        &["-version"],
        &["-machine", "help"],
        &["-M", "?"],
        &["-device", "help"],
        &["-d", "help"],
        &["-accel", "help"],
        &["-cpu", "help"],
    ] {
        assert!(matches!(parse(args(v)), Ok(Action::Print(t)) if !t.is_empty()), "{v:?}");
    }
    let Ok(Action::Print(v)) = parse(args(&["-version"])) else { unreachable!() };
    assert!(v.starts_with("quern emulator version "), "{v}");
}

#[test]
fn machine_and_accelerators() {
    let o = run(&["-machine", "pc,accel=kvm:tcg,usb=off,dump-guest-core=off"]);
    assert_eq!(o.accels.iter().map(|a| a.kind).collect::<Vec<_>>(), [AccelKind::Kvm, AccelKind::Tcg]);
    assert_eq!(run(&[]).accels[0].kind, AccelKind::Tcg);
    assert_eq!(run(&["-enable-kvm"]).accels[0].kind, AccelKind::Kvm);
    assert_eq!(run(&["-M", MACHINE_VERSION]).accels[0].kind, AccelKind::Tcg);
    assert_eq!(run(&["-M", "pc,kernel-irqchip=off"]).machine_irqchip, Some(KernelIrqchip::Off));
    assert!(err(&["-M", "pc,kernel-irqchip=split"]).contains("not supported yet"));
    assert!(err(&["-M", "q35"]).contains("not supported yet"));
    assert!(err(&["-M", "pc-i440fx-2.0"]).contains(MACHINE_VERSION));
    assert!(err(&["-M", "nonesuch"]).contains("unsupported machine type"));
    assert!(err(&["-M", "pc,usb=on"]).contains("usb=on is not supported yet"));
    assert!(err(&["-M", "pc,bogus=1"]).contains("unknown property 'bogus'"));
    assert!(err(&["-accel", "tcg,bogus=1"]).contains("unknown property 'bogus'"));
    run(&["-accel", "tcg,thread=multi"]);
    assert!(err(&["-accel", "hvf"]).contains("use tcg or kvm"));
    assert!(err(&["-accel", "tcg", "-M", "accel=kvm"]).contains("cannot be used together"));
    assert_eq!(run(&["-accel", "kvm,kernel-irqchip=on"]).accels[0].kernel_irqchip, Some(KernelIrqchip::On));
}

#[test]
fn boot_and_uuid() {
    let o = run(&["-boot", "order=dc,menu=on", "-boot", "strict=on"]);
    assert_eq!((o.boot_order.as_deref(), o.boot_menu, o.boot_strict), (Some("dc"), true, true));
    assert_eq!(run(&["-boot", "c,once=d"]).boot_order.as_deref(), Some("d"));
    assert!(err(&["-boot", "splash=x.bmp"]).contains("splash= is not supported yet"));
    assert!(err(&["-boot", "order=z"]).contains("letters a-p"));
    let o = run(&["-uuid", "5d3c0a0e-6c8f-4c3e-9a3b-1f0e6b1c2d3e"]);
    assert_eq!(o.uuid[..4], [0x5d, 0x3c, 0x0a, 0x0e]);
    assert_eq!(o.uuid[15], 0x3e);
    for bad in
        ["5d3c0a0e-6c8f-4c3e-9a3b", "+d3c0a0e-6c8f-4c3e-9a3b-1f0e6b1c2d3e", "5d3c0a0e-6c8f-4c3e-9a3b-1f0e6b1c2dxx"]
    {
        assert!(err(&["-uuid", bad]).contains("not a UUID"), "{bad}");
    }
}

#[test]
fn smp_forms() {
    assert_eq!(run(&["-smp", "2"]).cpus, 2);
    assert_eq!(run(&["-smp", "cpus=1,sockets=1,cores=1,threads=1"]).cpus, 1);
    assert_eq!(run(&["-smp", "sockets=2,cores=2"]).cpus, 4);
    assert_eq!(run(&["-smp", "2,maxcpus=4"]).cpus, 2);
    assert!(err(&["-smp", "lots"]).contains("give a number of CPUs"));
    assert!(err(&["-smp", "4,maxcpus=2"]).contains("maxcpus"));
    assert!(err(&["-smp", "4,sockets=1,cores=2,threads=1"]).contains("topology"));
    assert_eq!(run(&["-smp", "4,sockets=1,cores=2"]).cpus, 4, "threads=2 derived, as QEMU does");
    let t = run(&["-smp", "4,sockets=1,cores=2"]).topology;
    assert_eq!((t.sockets, t.dies, t.modules, t.cores, t.threads), (1, 1, 1, 2, 2));
    let t = run(&["-smp", "8,sockets=2,dies=2,clusters=2"]).topology;
    assert_eq!((t.sockets, t.dies, t.modules, t.cores, t.threads), (2, 2, 2, 1, 1), "cores derived");
    assert_eq!(run(&[]).topology, quern_core::Topology::default());
    assert_eq!(run(&["-smp", "1,sockets=1,cores=1,threads=1"]).cpus, 1);
    assert_eq!(run(&["-smp", "cores=2"]).cpus, 2);
}

#[test]
fn memory_forms() {
    assert!(err(&["-m", "512,slots=2,maxmem=4G"]).contains("memory hotplug) is not supported yet"));
    assert!(err(&["-m", "512,maxmem=lots"]).contains("not a size"));
    assert!(err(&["-m", "512,frob=1"]).contains("unknown property"));
}

#[test]
fn devices_and_logging() {
    let o = run(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-device", "isa-debugcon"]);
    assert_eq!(o.devices, [Device::DebugExit { iobase: 0xf4, iosize: 4 }]);
    assert_eq!(o.debugcon, Some(CharDev::Stdio));
    let o = run(&["-device", r#"{"driver":"isa-debug-exit","iobase":244}"#]);
    assert_eq!(o.devices, [Device::DebugExit { iobase: 0xf4, iosize: 2 }]);
    assert!(err(&["-device", "virtio-net-pci"]).contains("device 'virtio-net-pci' is not supported yet"));
    assert!(err(&["-device", "isa-debug-exit,iobase=0x10000"]).contains("iobase"));
    assert_eq!(run(&["-d", "int,cpu_reset", "-D", "log"]).log_items.len(), 2);
    assert!(err(&["-d", "nonsense"]).contains("unknown log item 'nonsense'"));
    assert!(err(&["-d", "nochain"]).contains("not supported yet"));
}

#[test]
fn monitors_and_start_paused() {
    use quern_monitor::server::Endpoint;
    let o = run(&["-qmp", "unix:/tmp/a.sock,server,nowait", "-qmp", "tcp:127.0.0.1:4444,server=on,wait=off", "-S"]);
    assert_eq!(o.qmp, [Endpoint::Unix("/tmp/a.sock".into()), Endpoint::Tcp { host: "127.0.0.1".into(), port: 4444 }]);
    assert!(o.start_paused);
    let o = run(&[
        "-chardev",
        "socket,id=charmonitor,fd=26,server=on,wait=off",
        "-mon",
        "chardev=charmonitor,id=monitor,mode=control",
    ]);
    assert_eq!(o.qmp, [Endpoint::Fd(26)]);
    assert!(!o.start_paused);
    assert!(err(&["-mon", "chardev=x"]).contains("mode=readline"));
    assert!(err(&["-chardev", "socket,id=a,path=/x,port=4,server=on,wait=off"]).contains("exactly one of"));
}

#[test]
fn libvirt_forms_of_memory_logs_probes_and_incoming() {
    let o = run(&[
        "-machine",
        "pc-i440fx-7.2,memory-backend=pc.ram",
        "-object",
        "memory-backend-ram,id=pc.ram,size=268435456",
    ]);
    assert_eq!(o.ram_bytes, 256 << 20);
    let both = ["-m", "128", "-machine", "pc,memory-backend=r", "-object", "memory-backend-ram,id=r,size=256M"];
    assert!(err(&both).contains("differs from -m"));
    assert!(err(&["-machine", "pc,memory-backend=r"]).contains("no -object memory-backend-ram,id=r"));
    assert!(run(&["-machine", "none,accel=kvm:tcg", "-nodefaults"]).machine_none);
    assert!(err(&["-add-fd", "set=0,fd=987654"]).contains("fd=987654 is not open"));
    assert!(err(&["-add-fd", "set=x,fd=1"]).contains("set=N and fd=M"));
    let pty = ["-chardev", "pty,id=c,logfile=/dev/fdset/3", "-device", "isa-serial,chardev=c"];
    assert!(err(&pty).contains("no -add-fd set=3"));
    assert_eq!(run(&["-incoming", "defer"]).incoming.as_deref(), Some("defer"));
    assert_eq!(run(&["-incoming", "fd:12"]).incoming.as_deref(), Some("fd:12"));
    assert!(err(&["-incoming", "tcp:0:4444"]).contains("defer, fd:N, file:PATH or exec:COMMAND"));
    assert!(err(&["-nographic", "-daemonize"]).contains("add -nodefaults"));
}

#[test]
fn defaults_and_nodefaults() {
    let o = run(&[]);
    assert_eq!((o.ram_bytes, o.cpus, o.cpu.as_str(), o.serial), (128 << 20, 1, "qemu64", Some(CharDev::Stdio)));
    assert_eq!(run(&["-nodefaults"]).serial, None);
    assert_eq!(run(&["-nodefaults", "-serial", "stdio"]).serial, Some(CharDev::Stdio));
    assert_eq!(run(&["-nodefaults", "-serial", "mon:stdio"]).hmp_stdio, Some(HmpMode::Muxed));
    assert_eq!(run(&["-nographic"]).hmp_stdio, Some(HmpMode::Muxed), "QEMU's -nographic shares the terminal");
    assert_eq!(run(&["-nographic", "-serial", "stdio"]).hmp_stdio, None);
    assert_eq!(run(&["-monitor", "stdio", "-serial", "null"]).hmp_stdio, Some(HmpMode::Alone));
    assert!(err(&["-monitor", "stdio", "-serial", "stdio"]).contains("-serial mon:stdio"));
    assert!(err(&["-monitor", "unix:/x,server"]).contains("not supported yet"));
    assert!(err(&["-append", "x"]).contains("-append only makes sense with -kernel"));
    // A bare argument is the first disk, as in QEMU.
    assert_eq!(run(&["disk.img"]).drives[0].id, "ide0-hd0");
    assert_eq!(run(&["-cdrom", "x.iso", "-boot", "d"]).boot_order.as_deref(), Some("d"));
    assert!(err(&["-fda", "f.img"]).contains("-fda is not supported yet"));
}

#[test]
fn every_implemented_option_has_a_handler() {
    for def in table::OPTIONS.iter().filter(|d| d.support == Support::Yes) {
        let mut b = Builder::default();
        // Any outcome but a panic: "none" is a valid value for many of them.
        let _ = b.apply(def.name, OsStr::new("none"));
    }
}

/// A small deterministic generator (xorshift64*) for the fuzz test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

#[test]
fn random_argument_vectors_never_panic() {
    const PIECES: &[&str] = &[
        "",
        "-",
        "--",
        "=",
        ",",
        ",,",
        "help",
        "?",
        "on",
        "off",
        "none",
        "stdio",
        "file:",
        "0x",
        "1.5G",
        "-5",
        "99999999999999999999",
        "{",
        "{\"driver\":",
        "}",
        "\"",
        "pc",
        "tcg",
        "kvm",
        "accel=",
        "kvm:tcg",
        "kernel-irqchip=",
        "split",
        "cpus=",
        "maxcpus=",
        "sockets=0",
        "iobase=",
        "isa-debug-exit",
        "isa-debugcon",
        "mon:",
        "int",
        "qemu64",
        "+avx",
        "size=",
        "slots=",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let n = rng.next() % 8;
        let mut argv = vec![OsString::from("quern")];
        for _ in 0..n {
            let mut a: Vec<u8> = Vec::new();
            if rng.next().is_multiple_of(2) {
                a.push(b'-');
                a.extend(rng.pick(table::OPTIONS).name.as_bytes());
            }
            for _ in 0..rng.next() % 4 {
                match rng.next() % 4 {
                    0 => a.push(rng.next() as u8),
                    _ => a.extend(rng.pick(PIECES).as_bytes()),
                }
            }
            argv.push(OsString::from_vec(a));
        }
        let shown = format!("{argv:?}");
        if let Err(p) = std::panic::catch_unwind(|| parse(argv)) {
            panic!("parser panicked on {shown}: {p:?}");
        }
    }
}
