//! The QMP monitors' view of the machine: quern-monitor's [`Vm`] on machine-pc's run
//! control, and the run-state changes sent to the clients as QMP events.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use quern_block::BlockStats;
use quern_machine_pc::chipset::NicLink;
use quern_machine_pc::runstate::{RunControl, RunObserver};
use quern_monitor::{BlockCounters, BlockInfo, Medium, Monitor, RunState, Vm, VmInfo};
use serde_json::json;

use crate::cli::drives::DriveSpec;
use crate::cli::Options;

struct MachineVm {
    run: Arc<RunControl>,
    info: VmInfo,
    nics: Vec<NicLink>,
    drives: Vec<(DriveSpec, Option<Arc<BlockStats>>)>,
}

impl Vm for MachineVm {
    fn run_state(&self) -> RunState {
        self.run.state()
    }
    fn stop(&self) {
        self.run.stop();
    }
    fn cont(&self) -> Result<(), String> {
        self.run.cont()
    }
    fn system_reset(&self) {
        self.run.system_reset();
    }
    fn system_powerdown(&self) {
        self.run.system_powerdown();
    }
    fn quit(&self) {
        self.run.quit();
    }
    fn set_link(&self, name: &str, up: bool) -> Result<(), String> {
        let link = self.nics.iter().find(|l| l.id == name || l.netdev.as_deref() == Some(name));
        let link = link.ok_or_else(|| format!("Device '{name}' not found"))?;
        link.set_up(up);
        Ok(())
    }
    fn info(&self) -> VmInfo {
        self.info.clone()
    }
    fn save(&self, mut out: Box<dyn Write + Send>) -> Result<u64, String> {
        self.run.run_job(None, move |m| m.save_state(&mut out).map_err(|e| e.to_string()))?
    }
    fn load(&self, mut input: Box<dyn Read + Send>) -> Result<(), String> {
        self.run.run_job(None, move |m| m.load_state(&mut input).map_err(|e| e.to_string()))?
    }
    fn blocks(&self) -> Vec<BlockInfo> {
        self.drives.iter().map(|(d, stats)| block_info(d, stats.as_deref())).collect()
    }
    fn human(&self, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["info", "status"] => {
                let s = self.run_state();
                let shown = if s == RunState::Prelaunch { "paused (prelaunch)" } else { s.name() };
                Ok(format!("VM status: {shown}\r\n"))
            }
            ["info", "registers"] => self.run.registers().map(|t| t.replace('\n', "\r\n")),
            ["info", "version"] => {
                let (a, b, c) = quern_monitor::commands::QEMU_VERSION;
                Ok(format!("{a}.{b}.{c}{}\r\n", quern_monitor::commands::package()))
            }
            ["info", "kvm"] => Ok(format!(
                "kvm support: {}\r\n",
                if self.info.accel == "kvm" { "enabled" } else { "disabled" }
            )),
            ["info", "name"] => Ok(self.info.name.as_deref().map_or(String::new(), |n| format!("{n}\r\n"))),
            ["stop"] => {
                self.stop();
                Ok(String::new())
            }
            ["cont" | "c"] => self.cont().map(|()| String::new()),
            ["system_reset"] => {
                self.system_reset();
                Ok(String::new())
            }
            ["system_powerdown"] => {
                self.system_powerdown();
                Ok(String::new())
            }
            ["quit" | "q"] => {
                self.quit();
                Ok(String::new())
            }
            [] => Ok(String::new()),
            [cmd, ..] => Err(format!("unknown or unsupported command: '{cmd}' (quern's human monitor has info status|registers|version|kvm|name, stop, cont, system_reset, system_powerdown, quit)")),
        }
    }
}

/// `-machine none`: no guest, only the monitor, as management tools probe an
/// emulator. `quit` ends the process.
struct NoMachine {
    state: std::sync::Mutex<RunState>,
    info: VmInfo,
    quit: std::sync::mpsc::Sender<()>,
}

impl Vm for NoMachine {
    fn run_state(&self) -> RunState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn stop(&self) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = RunState::Paused;
    }
    fn cont(&self) -> Result<(), String> {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = RunState::Running;
        Ok(())
    }
    fn system_reset(&self) {}
    fn system_powerdown(&self) {}
    fn quit(&self) {
        let _ = self.quit.send(());
    }
    fn info(&self) -> VmInfo {
        self.info.clone()
    }
    fn set_link(&self, name: &str, _up: bool) -> Result<(), String> {
        Err(format!("Device '{name}' not found"))
    }
    fn human(&self, line: &str) -> Result<String, String> {
        Err(format!("'{line}': there is no machine (-machine none)"))
    }
    fn save(&self, _out: Box<dyn Write + Send>) -> Result<u64, String> {
        Err("there is no machine to save (-machine none)".into())
    }
    fn load(&self, _input: Box<dyn Read + Send>) -> Result<(), String> {
        Err("there is no machine to load into (-machine none)".into())
    }
    fn blocks(&self) -> Vec<BlockInfo> {
        Vec::new()
    }
}

/// Serves the monitors of `-machine none` until `quit`.
pub fn serve_without_machine(o: &Options, accel: &str, ready: impl FnOnce()) -> Result<(), String> {
    let (quit, quitting) = std::sync::mpsc::channel();
    let state = if o.start_paused { RunState::Prelaunch } else { RunState::Running };
    let info = VmInfo { cpus: 0, max_cpus: 1, ..vm_info(o, accel, Vec::new()) };
    let monitor = Monitor::new(Arc::new(NoMachine { state: std::sync::Mutex::new(state), info, quit }));
    listen(o, &monitor)?;
    ready();
    let _ = quitting.recv();
    monitor.event("SHUTDOWN", Some(json!({ "guest": false, "reason": "host-qmp-quit" })));
    Ok(())
}

/// The run-state changes, as QMP events.
struct Events(Arc<Monitor>);

impl RunObserver for Events {
    fn stopped(&self) {
        self.0.event("STOP", None);
    }
    fn resumed(&self) {
        self.0.event("RESUME", None);
    }
    fn reset(&self, guest: bool) {
        let reason = if guest { "guest-reset" } else { "host-qmp-system-reset" };
        self.0.event("RESET", Some(json!({ "guest": guest, "reason": reason })));
    }
    fn shutdown(&self, guest: bool, reason: &str) {
        self.0.event("SHUTDOWN", Some(json!({ "guest": guest, "reason": reason })));
    }
    fn powerdown(&self) {
        self.0.event("POWERDOWN", None);
    }
}

/// A drive as the block queries show it: a `-blockdev` drive by its `-device` id
/// and node name, a `-drive` by its id, as QEMU names them.
fn block_info(d: &DriveSpec, stats: Option<&BlockStats>) -> BlockInfo {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let medium = d.file.as_ref().map(|f| Medium {
        file: f.display().to_string(),
        format: d.format.clone().unwrap_or_else(|| "raw".into()),
        size: std::fs::metadata(f).map_or(0, |m| m.len()),
        read_only: d.read_only,
    });
    BlockInfo {
        device: if d.node_name.is_some() { String::new() } else { d.id.clone() },
        qdev: d.qdev.clone().unwrap_or_else(|| format!("/machine/unattached/{}", d.id)),
        node_name: d.node_name.clone().unwrap_or_else(|| format!("#block-{}", d.id)),
        removable: d.media == crate::cli::drives::Media::Cdrom,
        medium,
        stats: stats.map_or_else(BlockCounters::default, |s| BlockCounters {
            rd_bytes: get(&s.rd_bytes),
            wr_bytes: get(&s.wr_bytes),
            rd_ops: get(&s.rd_ops),
            wr_ops: get(&s.wr_ops),
            flush_ops: get(&s.flush_ops),
        }),
    }
}

fn vm_info(o: &Options, accel: &str, peripherals: Vec<(String, String)>) -> VmInfo {
    VmInfo {
        accel: accel.to_string(),
        kvm_present: std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(),
        cpus: o.cpus,
        max_cpus: o.topology.max_cpus(),
        name: o.name.clone(),
        uuid: format_uuid(&o.uuid),
        chardevs: crate::pty::chardev().into_iter().collect(),
        peripherals,
    }
}

/// Makes every monitor socket listen and serve `monitor`.
fn listen(o: &Options, monitor: &Arc<Monitor>) -> Result<(), String> {
    for e in &o.qmp {
        let l = e.listen().map_err(|err| format!("monitor socket {e}: {err}"))?;
        l.serve(monitor.clone()).map_err(|err| format!("-qmp: {err}"))?;
    }
    Ok(())
}

/// A UUID as written (8-4-4-4-12 hex digits).
fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Starts the monitors `o` asks for (their sockets listen when this returns), and an
/// `-incoming` load that names its source.
pub fn start(
    o: &Options,
    run: Arc<RunControl>,
    nics: Vec<NicLink>,
    accel: &str,
    stats: crate::setup::DriveStats,
) -> Result<(), String> {
    let incoming = o.incoming.as_deref().filter(|u| *u != "defer");
    if o.qmp.is_empty() && incoming.is_none() {
        return Ok(());
    }
    let mut peripherals: Vec<(String, String)> = o
        .drives
        .iter()
        .filter_map(|d| {
            let ty = if d.media == crate::cli::drives::Media::Cdrom { "ide-cd" } else { "ide-hd" };
            d.qdev.clone().map(|id| (id, ty.to_string()))
        })
        .collect();
    peripherals.extend(nics.iter().map(|n| (n.id.clone(), "e1000".to_string())));
    let info = vm_info(o, accel, peripherals);
    let drives = o.drives.iter().cloned().zip(stats).collect();
    let monitor = Monitor::new(Arc::new(MachineVm { run: run.clone(), info, nics, drives }));
    run.set_observer(Arc::new(Events(monitor.clone())));
    listen(o, &monitor)?;
    if let Some(uri) = incoming {
        monitor.incoming(uri).map_err(|e| format!("-incoming {uri}: {}", e.desc))?;
    }
    Ok(())
}
