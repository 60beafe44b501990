//! The user-mode stack driven by hand-made frames, on the host's loopback only.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use super::*;
use crate::testutil::Nic;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const GUEST_IP: [u8; 4] = [10, 0, 2, 15];

fn arp(op: u16, sender_mac: [u8; 6], sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f
}

fn is_arp(f: &[u8], op: u16, target_ip: [u8; 4]) -> bool {
    f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == op.to_be_bytes() && f[38..42] == target_ip
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4/UDP frame from the guest to 10.0.2.2:`port`, to the router's MAC.
fn udp_to_host(router_mac: [u8; 6], port: u16, payload: &[u8]) -> Vec<u8> {
    let dst = [10, 0, 2, 2];
    let udp_len = 8 + payload.len() as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&4000u16.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&GUEST_IP);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let sum = checksum(&pseudo, 0);
    let c = checksum(&udp, u32::from(!sum));
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = router_mac.to_vec();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// `hostfwd=tcp:127.0.0.1:PORT-:22`.
fn forward_to_ssh(port: u16) -> SlirpConfig {
    let fwd = HostFwd { udp: false, host_addr: Ipv4Addr::LOCALHOST, host_port: port, guest_addr: None, guest_port: 22 };
    SlirpConfig { hostfwd: vec![fwd], ..SlirpConfig::default() }
}

fn start(cfg: &SlirpConfig) -> (Arc<Nic>, SlirpBackend) {
    let nic = Arc::new(Nic::default());
    let b = SlirpBackend::start(cfg, nic.clone()).expect("libslirp starts");
    (nic, b)
}

/// Asks for the router's MAC, as a guest does first.
fn router_mac(nic: &Nic, b: &SlirpBackend) -> [u8; 6] {
    b.send(&arp(1, GUEST_MAC, GUEST_IP, [10, 0, 2, 2])).unwrap();
    b.flush();
    let reply = nic.wait_for("ARP reply from 10.0.2.2", |f| is_arp(f, 2, GUEST_IP));
    reply[22..28].try_into().unwrap()
}

#[test]
fn the_router_answers_arp() {
    let (nic, b) = start(&SlirpConfig::default());
    let mac = router_mac(&nic, &b);
    assert_ne!(mac, [0; 6]);
    assert!(!version().is_empty());
}

#[test]
fn udp_to_the_router_reaches_the_host_loopback() {
    let host = UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let port = host.local_addr().unwrap().port();
    let (nic, b) = start(&SlirpConfig::default());
    let mac = router_mac(&nic, &b);
    b.send(&udp_to_host(mac, port, b"hello from the guest")).unwrap();
    b.flush();
    let mut buf = [0u8; 64];
    let (n, from) = host.recv_from(&mut buf).expect("the datagram reaches 127.0.0.1");
    assert_eq!(&buf[..n], b"hello from the guest");
    assert!(from.ip().is_loopback());
    // The host's answer comes back to the guest through the poller's thread.
    host.send_to(b"hello guest", from).unwrap();
    let f = nic.wait_for("the host's UDP reply", |f| f.len() > 42 && f.ends_with(b"hello guest"));
    assert_eq!(f[0..6], GUEST_MAC);
}

#[test]
fn a_hostfwd_connection_reaches_for_the_guest() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = forward_to_ssh(port);
    let (nic, b) = start(&cfg);
    let _c = TcpStream::connect(("127.0.0.1", port)).expect("the forward listens");
    // The stack does not know the guest's MAC yet: it asks for 10.0.2.15 first.
    nic.wait_for("ARP request for the guest", |f| is_arp(f, 1, GUEST_IP));
    drop(b);
}

#[test]
fn a_hostfwd_on_a_taken_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = forward_to_ssh(port);
    let err = SlirpBackend::start(&cfg, Arc::new(Nic::default())).err().expect("the port is taken");
    assert!(err.to_string().contains(&format!("hostfwd=tcp:127.0.0.1:{port}-10.0.2.15:22")), "{err}");
}

#[test]
fn frames_wait_for_a_full_nic_and_come_after_resume() {
    let (nic, b) = start(&SlirpConfig::default());
    nic.full.store(true, Ordering::Release);
    b.send(&arp(1, GUEST_MAC, GUEST_IP, [10, 0, 2, 2])).unwrap();
    b.flush();
    std::thread::sleep(Duration::from_millis(50));
    assert!(nic.frames.lock().unwrap().is_empty());
    nic.full.store(false, Ordering::Release);
    b.resume();
    nic.wait_for("the held ARP reply", |f| is_arp(f, 2, GUEST_IP));
    assert_eq!(b.dropped(), 0);
}
