//! The QEMU Machine Protocol (QMP), as management tools (libvirt, the `qemu.qmp`
//! client, scripts) speak it: JSON objects over a socket, a greeting, capability
//! negotiation, commands with an `id` echoed in their reply, errors with QEMU's
//! classes, and asynchronous events with timestamps.
//!
//! - [`server`]: where clients come from (`-qmp unix:PATH|tcp:HOST:PORT`, a
//!   `-chardev socket` with `-mon mode=control`, a listening socket inherited as a file
//!   descriptor, as libvirt passes it); one thread per listener and per client.
//! - [`session`]: one client's conversation: framing, negotiation, dispatch.
//! - [`commands`]: the commands and what they answer.
//! - [`migration`]: `migrate`/`migrate-incoming` (save and restore) and their events.
//!
//! The monitor never touches the machine's state itself: it asks through [`Vm`]
//! (implemented by the machine, which acts between vCPU runs) and is told of run-state
//! changes through [`Monitor::event`], which it broadcasts to every negotiated client.

pub mod block;
pub mod commands;
pub mod migration;
pub mod server;
pub mod session;

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub use quern_core::RunState;

/// What the monitor asks of the machine. Requests return at once; the machine acts
/// between vCPU runs and reports through [`Monitor::event`].
pub trait Vm: Send + Sync {
    fn run_state(&self) -> RunState;
    /// `stop`: pause every vCPU.
    fn stop(&self);
    /// `cont`: run again (from prelaunch, paused, or shutdown after a reset).
    fn cont(&self) -> Result<(), String>;
    /// `system_reset`.
    fn system_reset(&self);
    /// `system_powerdown`: press the ACPI power button.
    fn system_powerdown(&self);
    /// `quit`: end the emulator.
    fn quit(&self);
    /// Static facts for the query commands.
    fn info(&self) -> VmInfo;
    /// `set_link`: a network card's cable in or out, by the card's or its netdev's id.
    fn set_link(&self, name: &str, up: bool) -> Result<(), String>;
    /// `human-monitor-command`'s `info registers` and friends: text, or an error.
    fn human(&self, command: &str) -> Result<String, String>;
    /// `migrate`: writes the machine's whole state to `out`, the vCPUs stopped (the
    /// machine stays stopped after); returns the bytes written once done.
    fn save(&self, out: Box<dyn Write + Send>) -> Result<u64, String>;
    /// `migrate-incoming`: loads a saved state (the machine waits for it, `-incoming`).
    fn load(&self, input: Box<dyn Read + Send>) -> Result<(), String>;
    /// The block devices, for `query-block` and friends.
    fn blocks(&self) -> Vec<BlockInfo>;
    /// `eject`: opens a CD-ROM drive's tray and takes its disc out (by the drive's or
    /// its `-device`'s id); a disc the guest locked stays unless `force`.
    fn eject(&self, device: &str, force: bool) -> Result<(), String>;
    /// `blockdev-change-medium`: puts image `file` (`format`, or probed) in the drive.
    fn change_medium(&self, device: &str, file: &str, format: Option<&str>) -> Result<(), String>;
    /// `send-key`: presses `keys` (QEMU's key names) together for `hold_ms`.
    fn send_keys(&self, keys: &[String], hold_ms: u32) -> Result<(), String>;
    /// The PCI functions on bus 0, for `query-pci` and `info pci`.
    fn pci_functions(&self) -> Vec<PciFunction>;
}

/// A PCI function as `query-pci` reports it.
#[derive(Clone, Debug, Default)]
pub struct PciFunction {
    pub slot: u8,
    pub function: u8,
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    /// Base class and subclass (config bytes 0x0b, 0x0a).
    pub class: u16,
    /// The interrupt line and pin (1 = INTA), if the function has a pin.
    pub irq: Option<(u8, u8)>,
    /// Decoded BARs: (index, is I/O, address, size).
    pub regions: Vec<(u8, bool, u64, u64)>,
}

/// A drive and its medium, as `query-block`, `query-blockstats` and
/// `query-named-block-nodes` report it.
#[derive(Clone, Debug, Default)]
pub struct BlockInfo {
    /// The drive's name (`-drive id=`, or QEMU's default such as ide0-hd0); empty for
    /// a drive made with `-blockdev` + `-device`.
    pub device: String,
    /// The `-device`'s id (libvirt's `ide0-0-0`), for the `qdev` member.
    pub qdev: String,
    /// The format node's name (`-blockdev node-name=`), or one quern made up.
    pub node_name: String,
    pub removable: bool,
    /// A removable drive's tray: open or closed, and locked by the guest.
    pub tray_open: bool,
    pub locked: bool,
    /// The medium: its file, format ("raw", "qcow2"), size, read-only; `None` for an
    /// empty CD-ROM drive.
    pub medium: Option<Medium>,
    /// Counters since start.
    pub stats: BlockCounters,
}

#[derive(Clone, Debug, Default)]
pub struct Medium {
    pub file: String,
    pub format: String,
    pub size: u64,
    pub read_only: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct BlockCounters {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_ops: u64,
    pub wr_ops: u64,
    pub flush_ops: u64,
}

/// Facts about the machine the query commands report.
#[derive(Clone, Debug, Default)]
pub struct VmInfo {
    /// The accelerator: "kvm" or "tcg".
    pub accel: String,
    /// Whether /dev/kvm is usable here.
    pub kvm_present: bool,
    pub cpus: u32,
    pub max_cpus: u32,
    /// `-name guest=`.
    pub name: Option<String>,
    /// `-uuid`, formatted.
    pub uuid: String,
    /// Character devices: (label, QEMU's filename, e.g. "pty:/dev/pts/3").
    pub chardevs: Vec<(String, String)>,
    /// Devices with an `id=`: (id, QOM type), as `qom-list /machine/peripheral` lists them.
    pub peripherals: Vec<(String, String)>,
}

/// The clients to broadcast events to, and the machine behind them.
pub struct Monitor {
    vm: Arc<dyn Vm>,
    clients: Mutex<Vec<Weak<session::Client>>>,
    migration: migration::Migration,
    fds: Mutex<Fds>,
}

/// Descriptors clients passed (SCM_RIGHTS), and those `getfd` named.
#[derive(Default)]
struct Fds {
    received: VecDeque<OwnedFd>,
    named: HashMap<String, OwnedFd>,
}

impl Monitor {
    pub fn new(vm: Arc<dyn Vm>) -> Arc<Monitor> {
        Arc::new(Monitor {
            vm,
            clients: Mutex::new(Vec::new()),
            migration: Default::default(),
            fds: Default::default(),
        })
    }

    /// A descriptor arrived with a client's bytes; `getfd` names it.
    fn fd_received(&self, fd: OwnedFd) {
        let mut f = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        // A client that sends descriptors without ever naming them cannot pile them up.
        if f.received.len() >= 16 {
            f.received.pop_front();
        }
        f.received.push_back(fd);
    }

    /// `getfd`: the descriptor that came with the command, under `name`.
    fn name_fd(&self, name: &str) -> Result<(), String> {
        let mut f = self.fds.lock().unwrap_or_else(|e| e.into_inner());
        let fd = f.received.pop_back().ok_or("No file descriptor supplied via SCM_RIGHTS")?;
        f.received.clear();
        f.named.insert(name.to_string(), fd);
        Ok(())
    }

    /// `closefd`, or a migration taking its descriptor.
    fn take_named_fd(&self, name: &str) -> Option<OwnedFd> {
        self.fds.lock().unwrap_or_else(|e| e.into_inner()).named.remove(name)
    }

    pub fn vm(&self) -> &Arc<dyn Vm> {
        &self.vm
    }

    fn add_client(&self, c: &Arc<session::Client>) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|w| w.strong_count() > 0);
        clients.push(Arc::downgrade(c));
    }

    /// Sends event `name` (with `data`, if any) to every client past negotiation.
    pub fn event(&self, name: &str, data: Option<Value>) {
        let mut msg = json!({ "event": name, "timestamp": timestamp() });
        if let Some(d) = data {
            msg["data"] = d;
        }
        log::debug!("qmp: event {msg}");
        let clients: Vec<Arc<session::Client>> = {
            let c = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            c.iter().filter_map(Weak::upgrade).collect()
        };
        for c in clients {
            c.send_event(&msg);
        }
    }
}

/// QMP's event timestamp: seconds and microseconds of the wall clock.
fn timestamp() -> Value {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    json!({ "seconds": t.as_secs(), "microseconds": t.subsec_micros() })
}

/// Writes one JSON message and a CRLF, as QEMU ends its lines.
fn write_message(w: &mut dyn Write, msg: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).unwrap_or_default();
    line.extend_from_slice(b"\r\n");
    w.write_all(&line)?;
    w.flush()
}
