//! One QMP client: the greeting, then JSON objects in (any whitespace between them,
//! none needed), one reply out per command, in order, with the command's `id`.
//! Until `qmp_capabilities` only that command is accepted, and no events are sent.
//!
//! Malformed input gets QEMU's `GenericError` replies and the session goes on: a
//! parse error skips to the end of the bad object's line. A message over
//! [`MAX_MESSAGE`] bytes closes the connection (the machine is not affected).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::commands::{self, QmpError};
use crate::{write_message, Monitor};

/// The longest message a client may send (QEMU's JSON parser stops at 64 MiB; real
/// commands are a few KiB).
pub const MAX_MESSAGE: usize = 1 << 20;

/// A connected client's writing side.
pub struct Client {
    out: Mutex<Box<dyn Write + Send>>,
    negotiated: AtomicBool,
}

impl Client {
    fn send(&self, msg: &Value) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        write_message(&mut **out, msg)
    }

    pub(crate) fn send_event(&self, msg: &Value) {
        if self.negotiated.load(Ordering::Acquire) {
            // A client gone away is noticed by its reader.
            let _ = self.send(msg);
        }
    }
}

/// QEMU's greeting: the version and the capabilities on offer (none).
pub fn greeting() -> Value {
    let (major, minor, micro) = commands::QEMU_VERSION;
    json!({ "QMP": {
        "version": { "qemu": { "major": major, "minor": minor, "micro": micro }, "package": commands::package() },
        "capabilities": []
    }})
}

/// Serves one client until it disconnects or `quit` ends the emulator.
pub fn serve(monitor: &Arc<Monitor>, input: impl Read, output: Box<dyn Write + Send>) {
    let client = Arc::new(Client { out: Mutex::new(output), negotiated: AtomicBool::new(false) });
    if client.send(&greeting()).is_err() {
        return;
    }
    monitor.add_client(&client);
    let mut reader = BufReader::new(input);
    loop {
        let msg = match read_message(&mut reader) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                log::warn!("qmp: closing a client: {e}");
                return;
            }
        };
        let (reply, quit) = match serde_json::from_slice::<Value>(&msg) {
            Ok(v) => {
                let quit = v.get("execute").and_then(Value::as_str) == Some("quit");
                let r = handle(monitor, &client, v);
                let ok = r.as_ref().is_some_and(|r| r.get("return").is_some());
                (r, quit && ok)
            }
            Err(e) => (Some(error_reply(&QmpError::generic(format!("JSON parse error, {e}")), None)), false),
        };
        if let Some(r) = reply {
            let sent = client.send(&r);
            // `quit` acts only once its answer is on its way, as QEMU's.
            if quit {
                monitor.vm.quit();
            }
            if sent.is_err() {
                return;
            }
        }
    }
}

fn error_reply(e: &QmpError, id: Option<Value>) -> Value {
    let mut r = json!({ "error": { "class": e.class, "desc": e.desc } });
    if let Some(id) = id {
        r["id"] = id;
    }
    r
}

/// One message: the reply to send, if any.
fn handle(monitor: &Arc<Monitor>, client: &Client, msg: Value) -> Option<Value> {
    let Value::Object(mut obj) = msg else {
        return Some(error_reply(&QmpError::generic("QMP input must be a JSON object"), None));
    };
    let id = obj.remove("id");
    let command = match obj.remove("execute").or_else(|| obj.remove("exec-oob")) {
        Some(Value::String(c)) => c,
        Some(_) => return Some(error_reply(&QmpError::generic("QMP input member 'execute' must be a string"), id)),
        None => return Some(error_reply(&QmpError::generic("QMP input lacks member 'execute'"), id)),
    };
    let args = match obj.remove("arguments") {
        None => Value::Object(Default::default()),
        Some(a @ Value::Object(_)) => a,
        Some(_) => return Some(error_reply(&QmpError::generic("QMP input member 'arguments' must be an object"), id)),
    };
    if let Some(k) = obj.keys().next() {
        return Some(error_reply(&QmpError::generic(format!("QMP input member '{k}' is unexpected")), id));
    }
    let negotiated = client.negotiated.load(Ordering::Acquire);
    let result = match (command.as_str(), negotiated) {
        ("qmp_capabilities", false) => {
            client.negotiated.store(true, Ordering::Release);
            Ok(json!({}))
        }
        ("qmp_capabilities", true) => Err(QmpError {
            class: "CommandNotFound",
            desc: "Capabilities negotiation is already complete, command ignored".into(),
        }),
        (_, false) => Err(QmpError {
            class: "CommandNotFound",
            desc: "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
        }),
        (c, true) => commands::execute(monitor, c, &args),
    };
    Some(match result {
        Ok(ret) => {
            let mut r = json!({ "return": ret });
            if let Some(id) = id {
                r["id"] = id;
            }
            r
        }
        Err(e) => error_reply(&e, id),
    })
}

/// Reads one JSON value's bytes: from the first `{` (or other non-space) to where its
/// brackets balance outside strings. `None` at end of input.
fn read_message(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut msg = Vec::new();
    let (mut depth, mut in_str, mut escaped) = (0i32, false, false);
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        let mut used = 0;
        let mut done = false;
        for &b in buf {
            used += 1;
            if msg.is_empty() && b.is_ascii_whitespace() {
                continue;
            }
            msg.push(b);
            if in_str {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_str = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => in_str = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => depth -= 1,
                    _ => {}
                }
                // A complete value: balanced brackets, or a scalar ended by a newline.
                if (depth <= 0 && matches!(b, b'}' | b']')) || (depth == 0 && b == b'\n') {
                    done = true;
                    break;
                }
            }
        }
        r.consume(used);
        if done {
            return Ok(Some(msg));
        }
        if msg.len() > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a message of more than {MAX_MESSAGE} bytes"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(input: &str) -> Vec<String> {
        let mut r = BufReader::new(input.as_bytes());
        let mut out = Vec::new();
        while let Some(m) = read_message(&mut r).unwrap() {
            out.push(String::from_utf8(m).unwrap());
        }
        out
    }

    #[test]
    fn framing_finds_each_object() {
        assert_eq!(
            messages("{\"execute\":\"a\"}{\"execute\": \"b\", \"arguments\": {\"x\": \"}{\\\"\"}}\n  {\"e\":[1,{}]}"),
            ["{\"execute\":\"a\"}", "{\"execute\": \"b\", \"arguments\": {\"x\": \"}{\\\"\"}}", "{\"e\":[1,{}]}"]
        );
        assert_eq!(messages("garbage\n{\"x\":1}"), ["garbage\n", "{\"x\":1}"]);
    }

    #[test]
    fn a_huge_message_is_refused() {
        let big = format!("{{\"execute\":\"{}", "a".repeat(MAX_MESSAGE + 10));
        let mut r = BufReader::new(big.as_bytes());
        assert!(read_message(&mut r).is_err());
    }
}
