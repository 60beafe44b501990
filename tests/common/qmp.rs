//! A raw QMP client for the tests: a UNIX socket, lines of JSON, and descriptors
//! passed with SCM_RIGHTS (as libvirt passes them with `getfd`).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A fresh path for a monitor socket (an old one removed).
pub fn socket_path(name: &str) -> PathBuf {
    let p = super::scratch(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// Waits (20 s at most) for quern in `c` to make its monitor socket `sock`.
pub fn wait_socket(sock: &Path, c: &super::Console) {
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no QMP socket\n{}", c.describe());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A QMP connection that reads replies and events line by line.
pub struct Raw {
    pub s: UnixStream,
    pub r: BufReader<UnixStream>,
}

impl Raw {
    pub fn connect(sock: &Path) -> Raw {
        let s = UnixStream::connect(sock).expect("connect to the QMP socket");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let r = BufReader::new(s.try_clone().unwrap());
        let mut raw = Raw { s, r };
        let greeting = raw.read();
        assert_eq!(greeting["QMP"]["version"]["qemu"]["major"], 7, "{greeting}");
        assert_eq!(greeting["QMP"]["capabilities"], json!([]));
        raw
    }

    pub fn read(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("a QMP line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
    }

    /// Sends `text`; the reply (events before it, which may come at any time, are
    /// skipped).
    pub fn send(&mut self, text: &str) -> Value {
        self.s.write_all(text.as_bytes()).unwrap();
        loop {
            let v = self.read();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    pub fn negotiate(&mut self) {
        assert_eq!(self.send("{\"execute\":\"qmp_capabilities\"}\n"), json!({ "return": {} }));
    }
}

pub fn class(v: &Value) -> &str {
    v["error"]["class"].as_str().unwrap_or_else(|| panic!("not an error: {v}"))
}

impl Raw {
    /// Connects and negotiates.
    pub fn ready(sock: &Path) -> Raw {
        let mut r = Raw::connect(sock);
        r.negotiate();
        r
    }

    /// Runs `name` with `args`; its `return`, or a panic with the error.
    pub fn execute(&mut self, name: &str, args: Value) -> Value {
        let r = self.send(&format!("{}\n", json!({ "execute": name, "arguments": args })));
        r.get("return").cloned().unwrap_or_else(|| panic!("{name}: {r}"))
    }

    /// Waits for event `name` (others are skipped); its data.
    pub fn event(&mut self, name: &str) -> Value {
        loop {
            let v = self.read();
            if v["event"] == name {
                return v["data"].clone();
            }
        }
    }

    /// Sends `text` with `fd` attached (SCM_RIGHTS); the reply.
    pub fn send_with_fd(&mut self, text: &str, fd: &impl AsRawFd) -> Value {
        let raw = fd.as_raw_fd();
        let mut control = [0u64; 4];
        let mut iov = libc::iovec { iov_base: text.as_ptr() as *mut _, iov_len: text.len() };
        // SAFETY: a zeroed msghdr is empty; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE/CMSG_FIRSTHDR/CMSG_DATA on our own buffer, sized for one fd.
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE(4) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as _;
            libc::CMSG_DATA(c).cast::<libc::c_int>().write_unaligned(raw);
            assert_eq!(libc::sendmsg(self.s.as_raw_fd(), &msg, 0), text.len() as isize, "sendmsg");
        }
        loop {
            let v = self.read();
            if v.get("event").is_none() {
                return v;
            }
        }
    }
}
