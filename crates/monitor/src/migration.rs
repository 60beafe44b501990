//! `migrate` and `migrate-incoming` as QEMU's QMP has them: a URI (`fd:NAME` from
//! `getfd` or an inherited descriptor number, `file:PATH`, `exec:COMMAND`), the
//! transfer on a thread of its own, MIGRATION events (`setup` before the command's
//! reply, as libvirt requires, then `active` and `completed` or `failed`) when the
//! `events` capability is on, and `query-migrate`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use crate::commands::QmpError;
use crate::Monitor;

/// Where a migration's state goes or comes from.
enum Channel {
    File(File),
    /// A shell command reading (outgoing) or writing (incoming) the stream.
    Exec(Child),
}

/// The last migration, as `query-migrate` reports it.
#[derive(Default)]
pub struct Migration {
    status: Mutex<Status>,
    /// Capabilities set with `migrate-set-capabilities` (only `events` acts).
    capabilities: Mutex<HashMap<String, bool>>,
}

#[derive(Default)]
struct Status {
    state: Option<&'static str>,
    started: Option<Instant>,
    total_ms: u64,
    bytes: u64,
    error: Option<String>,
}

/// Capabilities QEMU 7.2 lists that quern accepts; only `events` changes anything.
const CAPABILITIES: &[&str] = &["events", "xbzrle", "auto-converge", "zero-blocks", "compress", "postcopy-ram"];

impl Migration {
    pub fn capabilities(&self) -> Value {
        let set = self.capabilities.lock().unwrap_or_else(|e| e.into_inner());
        let caps: Vec<Value> = CAPABILITIES
            .iter()
            .map(|c| json!({ "capability": c, "state": set.get(*c).copied().unwrap_or(false) }))
            .collect();
        Value::Array(caps)
    }

    pub fn set_capabilities(&self, list: &Value) -> Result<(), QmpError> {
        let items = list
            .as_array()
            .ok_or_else(|| QmpError::generic("Invalid parameter type for 'capabilities', expected: array"))?;
        let mut parsed = Vec::new();
        for c in items {
            match (c.get("capability").and_then(Value::as_str), c.get("state").and_then(Value::as_bool)) {
                (Some(name), Some(state)) if CAPABILITIES.contains(&name) => {
                    if state && name != "events" {
                        return Err(QmpError::generic(format!(
                            "Migration capability '{name}' is not supported by quern"
                        )));
                    }
                    parsed.push((name.to_string(), state));
                }
                (Some(name), Some(_)) => {
                    return Err(QmpError::generic(format!("Parameter 'capability' does not accept value '{name}'")))
                }
                _ => {
                    return Err(QmpError::generic("each capability needs 'capability' (string) and 'state' (boolean)"))
                }
            }
        }
        self.capabilities.lock().unwrap_or_else(|e| e.into_inner()).extend(parsed);
        Ok(())
    }

    pub fn query(&self) -> Value {
        let s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = s.state else { return json!({}) };
        let mut r = json!({ "status": state });
        match state {
            "completed" => {
                r["total-time"] = json!(s.total_ms);
                r["ram"] = json!({ "transferred": s.bytes, "total": s.bytes, "remaining": 0, "duplicate": 0,
                                   "normal": s.bytes / 4096, "normal-bytes": s.bytes, "mbps": 0,
                                   "dirty-sync-count": 1, "skipped": 0, "postcopy-requests": 0,
                                   "multifd-bytes": 0, "pages-per-second": 0, "precopy-bytes": s.bytes,
                                   "downtime-bytes": 0, "postcopy-bytes": 0, "dirty-pages-rate": 0 });
                r["downtime"] = json!(s.total_ms);
                r["setup-time"] = json!(0);
            }
            "failed" => r["error-desc"] = json!(s.error.clone().unwrap_or_default()),
            _ => {
                let ms = s.started.map_or(0, |t| t.elapsed().as_millis() as u64);
                r["total-time"] = json!(ms);
            }
        }
        r
    }

    fn running(&self) -> bool {
        matches!(self.status.lock().unwrap_or_else(|e| e.into_inner()).state, Some("setup" | "active"))
    }
}

impl Monitor {
    fn set_migration_state(&self, state: &'static str, update: impl FnOnce(&mut Status)) {
        {
            let mut s = self.migration.status.lock().unwrap_or_else(|e| e.into_inner());
            s.state = Some(state);
            update(&mut s);
        }
        let events = self.migration.capabilities.lock().unwrap_or_else(|e| e.into_inner()).get("events") == Some(&true);
        if events {
            self.event("MIGRATION", Some(json!({ "status": state })));
        }
    }

    /// `migrate`: starts saving to `uri`; returns once the transfer is under way.
    pub(crate) fn migrate(self: &Arc<Self>, uri: &str) -> Result<(), QmpError> {
        if self.migration.running() {
            return Err(QmpError::generic("There's a migration process in progress"));
        }
        let channel = self.open(uri, true)?;
        self.transfer("quern-migrate", move |m| match channel {
            Channel::File(f) => m.vm.save(Box::new(f)),
            Channel::Exec(mut child) => {
                let stdin = child.stdin.take().map(|s| Box::new(s) as Box<dyn Write + Send>);
                let r = stdin.map_or_else(|| Err("the command has no input".into()), |s| m.vm.save(s));
                finish_child(child, r)
            }
        })
    }

    /// `-incoming URI`: as `migrate-incoming`, but a state that cannot be loaded ends
    /// quern (as QEMU), since nothing else would ever run the machine.
    pub fn incoming(self: &Arc<Self>, uri: &str) -> Result<(), QmpError> {
        self.start_incoming(uri, true)
    }

    /// `migrate-incoming`: starts loading from `uri`; a failure leaves the machine
    /// waiting for another.
    pub(crate) fn migrate_incoming(self: &Arc<Self>, uri: &str) -> Result<(), QmpError> {
        self.start_incoming(uri, false)
    }

    fn start_incoming(self: &Arc<Self>, uri: &str, fatal: bool) -> Result<(), QmpError> {
        if self.vm.run_state() != crate::RunState::InMigrate {
            return Err(QmpError::generic("'-incoming' was not specified on the command line"));
        }
        if self.migration.running() {
            return Err(QmpError::generic("The incoming migration has already been started"));
        }
        let channel = self.open(uri, false)?;
        self.transfer("quern-incoming", move |m| {
            let result = match channel {
                Channel::File(f) => m.vm.load(Box::new(f)),
                Channel::Exec(mut child) => {
                    let stdout = child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
                    let r = stdout.map_or_else(|| Err("the command has no output".into()), |s| m.vm.load(s));
                    finish_child(child, r)
                }
            };
            if let (true, Err(e)) = (fatal, &result) {
                eprintln!("quern: -incoming: the saved state cannot be loaded: {e}");
                std::process::exit(1);
            }
            result.map(|()| 0)
        })
    }

    /// Says `setup` (before the command answers, as libvirt needs), then runs `work`
    /// on a thread of its own between `active` and `completed` or `failed`.
    fn transfer(
        self: &Arc<Self>,
        thread: &str,
        work: impl FnOnce(&Arc<Monitor>) -> Result<u64, String> + Send + 'static,
    ) -> Result<(), QmpError> {
        self.set_migration_state("setup", |s| *s = Status { started: Some(Instant::now()), ..Default::default() });
        let m = self.clone();
        let spawned = std::thread::Builder::new().name(thread.into()).spawn(move || {
            m.set_migration_state("active", |_| {});
            let started = Instant::now();
            let result = work(&m);
            m.finish(result, started);
        });
        spawned.map(|_| ()).map_err(|e| QmpError::generic(format!("cannot start the migration: {e}")))
    }

    fn finish(&self, result: Result<u64, String>, started: Instant) {
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(bytes) => {
                log::info!("migration completed ({bytes} bytes, {ms} ms)");
                self.set_migration_state("completed", |s| (s.total_ms, s.bytes) = (ms, bytes));
            }
            Err(e) => {
                log::error!("migration failed: {e}");
                self.set_migration_state("failed", |s| s.error = Some(e));
            }
        }
    }

    /// Opens a migration URI for writing (`out`) or reading.
    fn open(&self, uri: &str, out: bool) -> Result<Channel, QmpError> {
        let bad = |why: String| QmpError::generic(format!("migration URI '{uri}': {why}"));
        if let Some(name) = uri.strip_prefix("fd:") {
            let fd = match self.take_named_fd(name) {
                Some(fd) => fd,
                None => match name.parse::<i32>() {
                    // An inherited descriptor, as `-incoming fd:N` gives one.
                    // SAFETY: checked open with fcntl; ours from here on.
                    Ok(n) if n > 2 && unsafe { libc::fcntl(n, libc::F_GETFD) } >= 0 => unsafe {
                        OwnedFd::from_raw_fd(n)
                    },
                    _ => return Err(bad(format!("no file descriptor '{name}' (pass one with getfd first)"))),
                },
            };
            return Ok(Channel::File(File::from(fd)));
        }
        if let Some(path) = uri.strip_prefix("file:") {
            let f = if out { File::create(path) } else { File::open(path) };
            return f.map(Channel::File).map_err(|e| bad(e.to_string()));
        }
        if let Some(cmd) = uri.strip_prefix("exec:") {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(cmd);
            if out {
                c.stdin(Stdio::piped());
            } else {
                c.stdout(Stdio::piped()).stdin(Stdio::null());
            }
            return c.spawn().map(Channel::Exec).map_err(|e| bad(e.to_string()));
        }
        Err(bad("quern takes fd:NAME, file:PATH or exec:COMMAND (tcp: live migration is not supported)".into()))
    }
}

/// Waits for an `exec:` command; its failure fails the migration.
fn finish_child<T>(mut child: Child, r: Result<T, String>) -> Result<T, String> {
    let status = child.wait().map_err(|e| e.to_string())?;
    match r {
        Ok(v) if status.success() => Ok(v),
        Ok(_) => Err(format!("the migration command failed ({status})")),
        Err(e) => Err(e),
    }
}
