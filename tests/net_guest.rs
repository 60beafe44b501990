//! The network as a guest uses it: Debian's stock kernel with its e1000 module
//! (build/guest/initramfs-net.cpio.gz, scripts/build-net-guest.sh) on quern's 82540EM.
//!
//! - `-netdev user`: a DHCP lease from the user-mode stack, a 16 MiB download from an
//!   HTTP server this test runs on 127.0.0.1 (reached as 10.0.2.2), a 16 MiB upload to
//!   it, and the host fetching a file the guest serves through `hostfwd`; every
//!   transfer checked by SHA-256. With `restrict=on` the host is out of reach but a
//!   `guestfwd` to a command (`cat`) answers.
//! - Two guests wired back to back by `-netdev stream` (UNIX socket) and by `-netdev
//!   socket` (TCP on the loopback): one pings the other and downloads its file.
//! - `-netdev tap` inside a network namespace this test makes (NOT RUN where the host
//!   forbids namespaces or TAP devices).
//! - PXE: SeaBIOS runs iPXE's option ROM (Debian's ipxe-qemu) from the card's ROM BAR,
//!   which boots pxelinux over the user-mode stack's TFTP, which loads the stock kernel.
//! - A guest program that writes garbage into the card's registers and rings
//!   (addresses outside RAM, in ROM and MMIO, empty and overlong rings) ends normally.
//!
//! Traffic stays on the loopback and in namespaces made here (the project's network
//! rule): the user-mode stack turns 10.0.2.2 into 127.0.0.1, and no name is resolved.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::HttpServer;
use common::multiboot::kernel;
use common::{guest_file, report, run_quern, scratch, write, Console};

/// A boot of the stock kernel under the JIT takes 5-20 s; transfers a few more.
const LIMIT: Duration = Duration::from_secs(240);

fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sha256sum");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// Deterministic pseudo-random bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path` from 127.0.0.1:`port`; the body.
fn http_get(port: u16, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the forwarded port");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP header") + 4;
    assert!(all.starts_with(b"HTTP/1.") && all[..at].windows(3).any(|w| w == b"200"), "not a 200 answer");
    all.split_off(at)
}

/// The word after `marker` on its line.
fn word_after(c: &mut Console, marker: &str) -> String {
    c.wait_for(marker, LIMIT).unwrap_or_else(|e| panic!("{e}"));
    let line = c.wait_for("\n", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    line.split_whitespace().next().unwrap_or_default().to_string()
}

fn net_guest(netdev: &str, mac: &str, append: &str) -> Vec<String> {
    let (k, i) = (guest_file("vmlinux"), guest_file("initramfs-net.cpio.gz"));
    let mut a: Vec<String> =
        ["-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-kernel"].iter().map(|s| s.to_string()).collect();
    a.push(k.to_str().unwrap().into());
    a.extend(["-initrd".into(), i.to_str().unwrap().into(), "-netdev".into(), netdev.into(), "-device".into()]);
    a.push(format!("e1000,netdev=n0,mac={mac}"));
    a.extend(["-append".into(), format!("console=ttyS0 panic=-1 {append}")]);
    a
}

fn spawn(args: &[String]) -> Console {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Console::spawn(&refs)
}

/// Waits for QUERN-NET-DONE and a clean power-off.
fn finish(mut c: Console) {
    c.wait_for("QUERN-NET-DONE", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    let run = c.finish(Duration::from_secs(30));
    assert_eq!(run.status, Some(0), "{}", run.describe());
    assert!(!run.stdout.contains("QUERN-NET-FAIL"), "{}", run.describe());
}

#[test]
fn user_network_dhcp_transfers_and_hostfwd() {
    let data = pattern(16 << 20, 0x5eed);
    let want = sha256(&data);
    let server = HttpServer::start(data);
    let (fwd, done) = (free_port(), free_port());
    let netdev = format!("user,id=n0,hostfwd=tcp:127.0.0.1:{fwd}-:80,hostfwd=tcp:127.0.0.1:{done}-:7777");
    let sp = server.port;
    let append = format!(
        "quern.ip=dhcp quern.get=http://10.0.2.2:{sp}/data quern.serve=16 quern.put=http://10.0.2.2:{sp}/up \
         quern.wait=7777"
    );
    let mut c = spawn(&net_guest(&netdev, "52:54:00:12:34:56", &append));
    assert_eq!(word_after(&mut c, "QUERN-NET-LEASE"), "10.0.2.15", "the first DHCP address");
    let got = word_after(&mut c, "QUERN-NET-GET");
    assert_eq!(got, want, "the guest's download from the host (10.0.2.2 = 127.0.0.1)");
    let served = word_after(&mut c, "QUERN-NET-SERVE");
    c.wait_for("QUERN-NET-PUT-OK", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    let up = server.posted.lock().unwrap().take().expect("the guest's upload arrived");
    assert_eq!(up.len(), 16 << 20);
    assert_eq!(sha256(&up), served, "the guest's upload to the host");
    let fetched = http_get(fwd, "/data.bin");
    assert_eq!(fetched.len(), 16 << 20);
    assert_eq!(sha256(&fetched), served, "the host's download through hostfwd");
    drop(TcpStream::connect(("127.0.0.1", done)).expect("the second forward"));
    finish(c);
}

/// `restrict=on`: the host's loopback is out of reach, but a `guestfwd` to a command
/// on the host still answers. (16 KiB: libslirp ends an exec forward's stream early
/// once the command has exited, here at about 450 KB, under QEMU alike.)
#[test]
fn user_network_restrict_and_guestfwd() {
    let data = pattern(16 << 10, 0xf0d);
    let file = scratch("net-guestfwd.bin");
    let mut body = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
    body.extend_from_slice(&data);
    write(&file, &body);
    let server = HttpServer::start(data.clone());
    let netdev = format!("user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:1234-cmd:cat {}", file.display());
    let append =
        format!("quern.ip=dhcp quern.fwd=http://10.0.2.100:1234/ quern.blocked=http://10.0.2.2:{}/data", server.port);
    let mut c = spawn(&net_guest(&netdev, "52:54:00:12:34:56", &append));
    assert_eq!(word_after(&mut c, "QUERN-NET-FWD"), sha256(&data), "the file through guestfwd");
    c.wait_for("QUERN-NET-BLOCKED", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    finish(c);
}

/// Guest A serves 4 MiB and waits; guest B pings it and downloads the file.
fn back_to_back(a_netdev: &str, b_netdev: &str, ready: impl Fn() -> bool) {
    let mut a =
        spawn(&net_guest(a_netdev, "52:54:00:00:00:01", "quern.ip=192.168.100.1/24 quern.serve=4 quern.wait=7777"));
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(30), "guest A's socket never appeared\n{}", a.describe());
        std::thread::sleep(Duration::from_millis(20));
    }
    let served = word_after(&mut a, "QUERN-NET-SERVE");
    let mut b = spawn(&net_guest(
        b_netdev,
        "52:54:00:00:00:02",
        "quern.ip=192.168.100.2/24 quern.ping=192.168.100.1 quern.get=http://192.168.100.1/data.bin",
    ));
    b.wait_for("QUERN-NET-PING-OK", LIMIT).unwrap_or_else(|e| panic!("{e}\n--- guest A ---\n{}", a.describe()));
    let got = word_after(&mut b, "QUERN-NET-GET");
    assert_eq!(got, served, "B's copy of A's file");
    finish(b);
}

#[test]
fn two_guests_over_a_stream_socket() {
    let sock = scratch("net-stream.sock");
    let _ = std::fs::remove_file(&sock);
    let s = sock.to_str().unwrap();
    back_to_back(
        &format!("stream,id=n0,server=on,addr.type=unix,addr.path={s}"),
        &format!("stream,id=n0,server=off,addr.type=unix,addr.path={s}"),
        || sock.exists(),
    );
}

#[test]
fn two_guests_over_a_tcp_socket() {
    let port = free_port();
    back_to_back(
        &format!("socket,id=n0,listen=127.0.0.1:{port}"),
        &format!("socket,id=n0,connect=127.0.0.1:{port}"),
        || listening(port),
    );
}

/// Whether something listens on 127.0.0.1:`port`, without connecting (a connection
/// would be the peer): /proc/net/tcp's LISTEN state.
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X} 00000000:0000 0A");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| t.contains(&want))
}

/// Runs `ip` with `args`; the error text if it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

#[test]
fn tap_inside_a_network_namespace() {
    let name = format!("quern-net-{}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &name]) {
        report(&format!("NOT RUN: tap_inside_a_network_namespace: cannot make a network namespace ({e})"));
        return;
    }
    let ns = Netns(name);
    let setup = [
        vec!["netns", "exec", &ns.0, "ip", "tuntap", "add", "dev", "qtap0", "mode", "tap"],
        vec!["netns", "exec", &ns.0, "ip", "addr", "add", "192.168.77.1/24", "dev", "qtap0"],
        vec!["netns", "exec", &ns.0, "ip", "link", "set", "qtap0", "up"],
        vec!["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"],
    ];
    for s in &setup {
        if let Err(e) = ip(s) {
            report(&format!("NOT RUN: tap_inside_a_network_namespace: cannot make a TAP device ({e})"));
            return;
        }
    }
    // The namespace's side: an HTTP server (Python's) with a file, on the tap's address.
    let dir = scratch("net-tap-www");
    std::fs::create_dir_all(&dir).unwrap();
    let data = pattern(4 << 20, 0x7a9);
    write(&dir.join("data"), &data);
    let mut http = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-m", "http.server", "8000", "--bind", "192.168.77.1"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3's http.server");
    let mut args = vec!["netns".to_string(), "exec".into(), ns.0.clone(), common::quern_bin().into()];
    args.extend(net_guest(
        "tap,id=n0,ifname=qtap0,script=no,downscript=no",
        "52:54:00:12:34:56",
        "quern.ip=192.168.77.2/24 quern.ping=192.168.77.1 quern.get=http://192.168.77.1:8000/data",
    ));
    let mut c = {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Console::spawn_program("ip", &refs)
    };
    c.wait_for("QUERN-NET-PING-OK", LIMIT).unwrap_or_else(|e| panic!("{e}"));
    let got = word_after(&mut c, "QUERN-NET-GET");
    let _ = http.kill();
    let _ = http.wait();
    assert_eq!(got, sha256(&data), "the guest's download over the tap");
    finish(c);
}

#[test]
fn pxe_boot_through_ipxe_and_tftp() {
    let tftp = guest_file("tftp");
    assert!(
        Path::new("/usr/lib/ipxe/qemu/efi-e1000.rom").exists() || std::env::var_os("QUERN_FIRMWARE_DIR").is_some(),
        "iPXE's ROM is missing: install Debian's ipxe-qemu (scripts/test.sh does)"
    );
    let netdev = format!("user,id=n0,tftp={},bootfile=pxelinux.0", tftp.display());
    let args = [
        "-accel",
        "tcg",
        "-m",
        "256",
        "-nographic",
        "-no-reboot",
        "-netdev",
        &netdev,
        "-device",
        "e1000,netdev=n0",
        "-boot",
        "n",
    ];
    let run = run_quern(&args, LIMIT);
    // SeaBIOS's serial console moves the cursor (ESC [ row ; col H) in the middle of
    // lines when the screen scrolls: read the text without those sequences.
    let text = strip_escapes(&run.stdout);
    for marker in ["iPXE", "pxelinux.0", "QUERN-BOOTLOADER pxelinux", "QUERN-INIT-OK"] {
        assert!(text.contains(marker), "no {marker:?} on the console\n{}", run.describe());
    }
    assert_eq!(run.status, Some(0), "{}", run.describe());
}

/// `s` without ANSI escape sequences (ESC [ parameters, a final letter).
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The card's registers under a guest gone wrong: a Multiboot kernel puts BAR0 at
/// `MMIO`, turns bus mastering on, fills a scratch area with garbage, then writes
/// 10 000 pseudo-random values to the ring and control registers, the addresses among
/// them outside RAM, in ROM, at the APICs, inside the garbage; each write to a tail
/// register makes the card walk its ring. Then it resets the card and prints its IDs.
mod garbage {
    use iced_x86::code_asm::*;

    const SLOT: u32 = 5;
    const MMIO: u32 = 0xfebc_0000;
    const SCRATCH: u32 = 0x40_0000;
    pub const EXIT_CODE: u8 = 0x31;
    /// Where the kernel keeps the address table's address.
    const ADDRS_AT: u32 = 0x3f_f000;

    fn config(a: &mut CodeAssembler, reg: u32, v: Option<u32>) -> Result<(), IcedError> {
        a.mov(dx, 0xcf8u32)?;
        a.mov(eax, 0x8000_0000 | SLOT << 11 | reg)?;
        a.out(dx, eax)?;
        a.mov(dx, 0xcfcu32)?;
        match v {
            Some(v) => {
                a.mov(eax, v)?;
                a.out(dx, eax)
            }
            None => a.in_(eax, dx),
        }
    }

    /// ebx = xorshift32(ebx).
    fn next(a: &mut CodeAssembler) -> Result<(), IcedError> {
        for (shl, n) in [(true, 13u32), (false, 17), (true, 5)] {
            a.mov(eax, ebx)?;
            if shl {
                a.shl(eax, n)?;
            } else {
                a.shr(eax, n)?;
            }
            a.xor(ebx, eax)?;
        }
        Ok(())
    }

    pub fn body(a: &mut CodeAssembler) -> Result<(), IcedError> {
        config(a, 0x10, Some(MMIO))?;
        config(a, 0x04, Some(0x0007))?;
        // Garbage in the scratch area (1 MiB).
        a.mov(ebx, 0x1234_5679u32)?;
        a.mov(edi, SCRATCH)?;
        let mut fill = a.create_label();
        a.set_label(&mut fill)?;
        next(a)?;
        a.mov(dword_ptr(edi), ebx)?;
        a.add(edi, 4u32)?;
        a.cmp(edi, SCRATCH + (1 << 20))?;
        a.jb(fill)?;
        // The tables' addresses, by call and pop: ebp the register offsets, [ADDRS_AT]
        // the addresses.
        let (mut after_regs, mut after_addrs) = (a.create_label(), a.create_label());
        a.call(after_regs)?;
        // RDBAL, RDLEN, RDH, RDT, TDBAL, TDLEN, TDH, TDT, RCTL, TCTL, TDT again, ICS,
        // IMS, EERD, MDIC, RDT again.
        for r in [
            0x2800u32, 0x2808, 0x2810, 0x2818, 0x3800, 0x3808, 0x3810, 0x3818, 0x100, 0x400, 0x3818, 0xc8, 0xd0, 0x14,
            0x20, 0x2818,
        ] {
            a.dd(&[r])?;
        }
        a.set_label(&mut after_regs)?;
        a.pop(ebp)?;
        a.call(after_addrs)?;
        for v in
            [SCRATCH, SCRATCH + 0xff000, 0x0400_0000, 0xfee0_0000, 0xfec0_0000, 0xffff_f000, 0x000f_0000, 0xffff_fff0]
        {
            a.dd(&[v])?;
        }
        a.set_label(&mut after_addrs)?;
        a.pop(eax)?;
        a.mov(dword_ptr(ADDRS_AT), eax)?;
        a.mov(ecx, 10_000u32)?;
        let mut lp = a.create_label();
        a.set_label(&mut lp)?;
        next(a)?;
        a.mov(esi, ebx)?;
        a.and(esi, 15u32)?;
        a.mov(edi, dword_ptr(ebp + esi * 4))?;
        next(a)?;
        // Ring lengths up to 64 KiB (4096 descriptors: each tail write walks at most
        // a ring, and the test has a time limit); heads and tails below 0x1100; base
        // registers a listed address; the rest the raw value.
        let (mut raw, mut pick, mut not_len) = (a.create_label(), a.create_label(), a.create_label());
        a.mov(eax, edi)?;
        a.and(eax, 0xefffu32)?;
        a.cmp(eax, 0x2808u32)?;
        a.jne(not_len)?;
        a.and(ebx, 0xffffu32)?;
        a.set_label(&mut not_len)?;
        // Heads and tails mostly inside the ring, now and then past its end.
        let mut not_ptr = a.create_label();
        a.mov(eax, edi)?;
        a.and(eax, 0xeff7u32)?;
        a.cmp(eax, 0x2810u32)?;
        a.jne(not_ptr)?;
        a.and(ebx, 0x10ffu32)?;
        a.set_label(&mut not_ptr)?;
        a.cmp(edi, 0x3800u32)?;
        a.je(pick)?;
        a.cmp(edi, 0x2800u32)?;
        a.jne(raw)?;
        a.set_label(&mut pick)?;
        a.mov(esi, ebx)?;
        a.and(esi, 7u32)?;
        a.mov(edx, dword_ptr(ADDRS_AT))?;
        a.mov(ebx, dword_ptr(edx + esi * 4))?;
        a.set_label(&mut raw)?;
        a.mov(dword_ptr(edi + MMIO), ebx)?;
        // Read something back now and then (ICR, a statistics register).
        a.mov(eax, dword_ptr(MMIO + 0xc0))?;
        a.mov(eax, dword_ptr(MMIO + 0x4074))?;
        // The listed address replaced the generator's state: stir it back.
        a.xor(ebx, ecx)?;
        a.or(ebx, 1u32)?;
        a.dec(ecx)?;
        a.jnz(lp)?;
        // Reset, then the IDs.
        a.mov(dword_ptr(MMIO), 0x0400_0000u32)?;
        a.mov(eax, dword_ptr(MMIO + 8))?;
        config(a, 0, None)?;
        a.mov(esi, eax)
    }
}

#[test]
fn garbage_in_the_rings_never_hurts_the_host() {
    let k = scratch("net-garbage-mb.bin");
    write(&k, &kernel("E1000", garbage::EXIT_CODE, garbage::body));
    let args = [
        "-accel",
        "tcg",
        "-nographic",
        "-no-reboot",
        "-m",
        "64",
        "-kernel",
        k.to_str().unwrap(),
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
        // restrict=on: whatever the garbage frames say, nothing leaves the stack.
        "-netdev",
        "user,id=n0,restrict=on",
        "-device",
        "e1000,netdev=n0,addr=5",
    ];
    let run = run_quern(&args, Duration::from_secs(120));
    assert!(run.stdout.contains("E1000 100E8086"), "{}", run.describe());
    assert_eq!(run.status, Some(i32::from(garbage::EXIT_CODE) << 1 | 1), "{}", run.describe());
}
