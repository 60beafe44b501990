//! Bad input ends with a clear message and a non-zero status, never a panic.

mod common;

use std::time::Duration;

use common::{run_quern, scratch, write};

/// Runs quern expecting failure; returns stderr after checking it is a clean error.
fn fails(args: &[&str], expect: &str) {
    let run = run_quern(args, Duration::from_secs(30));
    let d = run.describe();
    assert!(matches!(run.status, Some(s) if s != 0), "expected a non-zero exit for {args:?}:\n{d}");
    assert!(!run.stderr.contains("panicked"), "panicked on {args:?}:\n{d}");
    assert!(
        run.stderr.to_lowercase().contains(&expect.to_lowercase()),
        "message for {args:?} should mention {expect:?}:\n{d}"
    );
}

#[test]
fn missing_kernel() {
    fails(&["-accel", "kvm", "-kernel", "/nonexistent/vmlinuz"], "quern: -kernel /nonexistent/vmlinuz: cannot read");
}

#[test]
fn missing_initrd() {
    let k = scratch("k-for-missing-initrd");
    write(&k, b"whatever");
    fails(
        &["-accel", "kvm", "-kernel", k.to_str().unwrap(), "-initrd", "/nonexistent/initrd"],
        "quern: -initrd /nonexistent/initrd: cannot read",
    );
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let k = scratch("garbage-kernel");
    write(&k, &[0x5a; 5000]);
    fails(&["-accel", "kvm", "-kernel", k.to_str().unwrap()], "not a bzImage");
}

#[test]
fn truncated_bzimage() {
    // A setup header that claims more than the file holds.
    let mut k = vec![0u8; 0x300];
    k[0x1f1] = 30; // setup_sects
    k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    k[0x200..0x202].copy_from_slice(&[0xeb, 0x6a]); // the jump that says where the header ends
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    let p = scratch("truncated-bzimage");
    write(&p, &k);
    let run = run_quern(&["-accel", "tcg", "-kernel", p.to_str().unwrap()], Duration::from_secs(30));
    assert!(matches!(run.status, Some(s) if s != 0) && !run.stderr.contains("panicked"), "{}", run.describe());
    assert!(run.stderr.contains("quern: kernel"), "{}", run.describe());
    assert!(run.stderr.contains("truncated") && run.stderr.contains("setup_sects 30"), "{}", run.describe());
}

#[test]
fn memory_out_of_range() {
    fails(&["-m", "1"], "out of range");
    fails(&["-m", "9999G"], "out of range");
    fails(&["-m", "lots"], "quern: -m lots: 'lots' is not a size");
}

#[test]
fn nothing_to_boot() {
    fails(&["-accel", "kvm"], "nothing to boot");
}

#[test]
fn unsupported_options_say_so() {
    fails(&["-fda", "disk.img"], "quern: -fda disk.img: -fda is not supported yet");
    fails(&["-M", "isapc"], "machine type 'isapc'");
    fails(&["-accel", "hvf"], "use tcg or kvm");
    fails(
        &["-device", "virtio-net-pci"],
        "quern: -device virtio-net-pci: device 'virtio-net-pci' is not supported yet",
    );
    fails(&["-frobnicate"], "quern: -frobnicate: invalid option");
}

/// Network options with mistakes: each refused by name, before anything runs.
#[test]
fn bad_network_options() {
    fails(&["-netdev", "user,id=n0,frobnicate=1"], "unknown or unsupported property 'frobnicate' for -netdev user");
    fails(&["-netdev", "user"], "-netdev needs id=");
    fails(&["-netdev", "user,id=n0,hostfwd=tcp::x-:22"], "hostfwd=tcp::x-:22: not a port number");
    fails(&["-netdev", "vde,id=n0"], "backend type 'vde' is not supported yet");
    fails(&["-nic", "user,model=virtio-net-pci"], "model=virtio-net-pci: not supported yet");
    fails(&["-device", "e1000,netdev=missing"], "netdev=missing: no -netdev with that id");
    fails(&["-netdev", "tap,id=t,script=/etc/qemu-ifup", "-device", "e1000,netdev=t"], "quern runs no network scripts");
    fails(&["-netdev", "socket,id=s,mcast=230.0.0.1:1234"], "quern's socket is TCP only");
    fails(&["-net", "nic", "-net", "nic", "-net", "user"], "2 cards and 1 backends on one hub");
    // A backend that cannot start (a connection refused) is an error at start-up.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let connect = format!("socket,id=s,connect=127.0.0.1:{port}");
    let kernel = common::root().join("build/guest/vmlinuz");
    let k = kernel.to_str().unwrap();
    fails(
        &["-accel", "tcg", "-kernel", k, "-netdev", &connect, "-device", "e1000,netdev=s"],
        "cannot connect to 127.0.0.1",
    );
}

/// Monitor options quern cannot honour, refused by name before anything runs.
#[test]
fn bad_monitor_options() {
    fails(&["-qmp", "unix:/tmp/x.sock,server=on,wait=on"], "wait=on");
    fails(&["-qmp", "unix:/tmp/x.sock"], "add server=on,wait=off");
    fails(&["-qmp", "pipe:/tmp/x"], "give unix:PATH or tcp:HOST:PORT");
    fails(&["-chardev", "pipe,id=c,path=/tmp/p"], "-chardev pipe is not supported yet");
    fails(&["-chardev", "pty,id=c"], "nothing uses it");
    fails(&["-device", "isa-serial,chardev=nope"], "no -chardev with that id");
    fails(&["-chardev", "socket,id=m,path=/tmp/x,server=on,wait=off"], "nothing uses it");
    fails(
        &["-chardev", "socket,id=m,path=/tmp/x,server=on,wait=off", "-mon", "chardev=m,mode=readline"],
        "mode=readline",
    );
    fails(&["-mon", "chardev=nope,mode=control"], "no -chardev with that id");
    // A descriptor that is not open, or not a socket: an error at start-up.
    let kernel = common::root().join("build/guest/vmlinuz");
    let k = kernel.to_str().unwrap();
    let fd = [
        "-accel",
        "tcg",
        "-kernel",
        k,
        "-chardev",
        "socket,id=m,fd=987,server=on,wait=off",
        "-mon",
        "chardev=m,mode=control",
    ];
    fails(&fd, "fd=987 is not open");
}

#[test]
fn bad_bios_size() {
    let b = scratch("odd-bios");
    write(&b, &[0u8; 1000]);
    fails(&["-accel", "kvm", "-bios", b.to_str().unwrap()], "multiple of 64 KiB");
}

#[test]
fn more_vcpus_than_supported() {
    let b = scratch("smp-bios");
    write(&b, &[0xf4u8; 0x10000]);
    fails(&["-accel", "tcg", "-smp", "65", "-bios", b.to_str().unwrap()], "more than 64 vCPUs");
    fails(&["-smp", "lots"], "give a number of CPUs");
}

/// A bzImage cut short after its setup code (an interrupted copy) is refused before it
/// can crash the guest: the setup header's syssize says how long it must be.
#[test]
fn bzimage_shorter_than_its_syssize() {
    let stock = common::root().join("build/guest/vmlinuz");
    let k = match std::fs::read(&stock) {
        Ok(mut k) => {
            k.truncate(k.len() * 2 / 3);
            k
        }
        // Without the test guest: one setup sector, then 0x1000 of the 0x2000 bytes
        // syssize announces.
        Err(_) => {
            let mut k = vec![0u8; 0x400];
            k[0x1f1] = 1;
            k[0x1f4..0x1f8].copy_from_slice(&0x200u32.to_le_bytes());
            k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
            k[0x200..0x202].copy_from_slice(&[0xeb, 0x6a]);
            k[0x202..0x206].copy_from_slice(b"HdrS");
            k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
            k.resize(0x1400, 0xf4);
            k
        }
    };
    let p = scratch("short-bzimage");
    write(&p, &k);
    fails(&["-accel", "tcg", "-m", "512", "-kernel", p.to_str().unwrap()], "kernel file is truncated");
    fails(&["-accel", "tcg", "-m", "512", "-kernel", p.to_str().unwrap()], "syssize");
}

/// A guest that triple-faults at once resets thousands of times a second; stderr gets
/// about a line a second with a count, not a line per reset.
#[test]
fn reset_loop_is_logged_with_a_count() {
    use common::multiboot::{image_at, LOAD_ADDR};
    let kernels = [
        // Entry point in nowhere: above RAM, below the PCI hole's devices.
        ("entry-nowhere", image_at(LOAD_ADDR, 0xd000_0000, &[0xf4; 16])),
        // ud2 with no IDT: #UD, #GP, double fault, shutdown.
        ("ud2", image_at(LOAD_ADDR, LOAD_ADDR + 32, &[0x0f, 0x0b])),
    ];
    for (name, k) in kernels {
        let p = scratch(&format!("reset-loop-{name}"));
        write(&p, &k);
        let secs = 3;
        let run = run_quern(&["-accel", "tcg", "-m", "64", "-kernel", p.to_str().unwrap()], Duration::from_secs(secs));
        let lines = run.stderr.lines().filter(|l| l.contains("triple-faulted")).count();
        let head: String = run.stderr.lines().take(20).map(|l| format!("{l}\n")).collect();
        assert_eq!(run.status, None, "{name}: the guest should reset until killed:\n{head}");
        assert!((1..=secs as usize + 3).contains(&lines), "{name}: {lines} triple-fault lines in {secs}s:\n{head}");
        assert!(run.stderr.lines().count() <= 2 * secs as usize + 6, "{name}: stderr floods:\n{head}");
        // The count says how often it happened.
        let counted: u64 = run
            .stderr
            .lines()
            .filter_map(|l| l.split("(repeated ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(counted >= 100, "{name}: the loop should be counted:\n{head}");
    }
}

#[test]
fn empty_bios() {
    let b = scratch("empty-bios");
    write(&b, &[]);
    fails(&["-accel", "tcg", "-bios", b.to_str().unwrap()], "empty");
    fails(&["-accel", "tcg", "-bios", b.to_str().unwrap()], "empty-bios");
}

/// -kernel with -bios (the firmware loading the kernel through fw_cfg) is not built
/// yet: refused by name rather than ignoring either.
#[test]
fn kernel_with_bios_is_refused() {
    let k = scratch("k-with-bios");
    write(&k, b"whatever");
    let b = scratch("bios-with-k");
    write(&b, &vec![0xf4u8; 0x10000]);
    fails(
        &["-accel", "tcg", "-kernel", k.to_str().unwrap(), "-bios", b.to_str().unwrap()],
        "-kernel together with -bios",
    );
}

/// A Multiboot kernel linked below 1 MiB, at 0x8000 as OS self-tests are, was refused
/// as overlapping the loader's boot area; it loads and runs under quern's JIT as under
/// `qemu-system-x86_64 -accel tcg` (compared when installed).
#[test]
fn multiboot_kernel_at_0x8000_runs_as_under_qemu() {
    use common::multiboot::{kernel_at, xorshift, xorshift_expected};
    use common::{report, run_qemu_tcg};
    use iced_x86::code_asm::*;
    const LOW_LOAD: u32 = 0x8000;
    /// The kernel sums this many dwords of its own image as loaded.
    const LOW_SUMMED: u32 = 16;

    let (seed, n) = (0x0bad_cafe, 1000);
    // ESI = xorshift result + the sum of the image's first dwords in memory: the kernel
    // finds itself where it was linked, not overwritten by the loader's boot data.
    let k = kernel_at(LOW_LOAD, "LOW", 0x17, |a| {
        xorshift(a, seed, n)?;
        a.mov(ecx, LOW_SUMMED)?;
        a.mov(edi, LOW_LOAD)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.add(esi, dword_ptr(edi))?;
        a.add(edi, 4u32)?;
        a.dec(ecx)?;
        a.jnz(top)
    });
    assert!(k.len() as u32 >= LOW_SUMMED * 4, "the kernel is smaller than what it sums");
    let sum = k[..LOW_SUMMED as usize * 4]
        .chunks(4)
        .fold(0u32, |s, d| s.wrapping_add(u32::from_le_bytes(d.try_into().unwrap())));
    let expected = format!("LOW {:08X}\n", xorshift_expected(seed, n).wrapping_add(sum));

    let path = scratch("low-mb.bin");
    write(&path, &k);
    let path = path.to_str().unwrap();
    let args = [
        "-no-reboot",
        "-m",
        "64",
        "-kernel",
        path,
        "-append",
        "self-test",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ];
    let mut quern_args = vec!["-accel", "tcg", "-nographic"];
    quern_args.extend(args);
    let run = run_quern(&quern_args, Duration::from_secs(60));
    assert!(run.stdout.contains(&expected), "expected {expected:?}:\n{}", run.describe());
    assert_eq!(run.status, Some(0x17 << 1 | 1), "{}", run.describe());

    match run_qemu_tcg(&args) {
        Some(q) => {
            assert!(q.stdout.contains(&expected), "QEMU printed something else:\n{}", q.describe());
            assert_eq!(q.status, run.status, "QEMU's exit status differs:\n{}", q.describe());
        }
        None => report(
            "NOT RUN: multiboot_kernel_at_0x8000_runs_as_under_qemu: qemu-system-x86_64 is not installed; checked quern only",
        ),
    }
}
