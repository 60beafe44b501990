//! The QMP monitors' view of the machine: quern-monitor's [`Vm`] on machine-pc's run
//! control, and the run-state changes sent to the clients as QMP events.

use std::sync::Arc;

use quern_machine_pc::chipset::NicLink;
use quern_machine_pc::runstate::{RunControl, RunObserver};
use quern_monitor::{Monitor, RunState, Vm, VmInfo};
use serde_json::json;

use crate::cli::Options;

struct MachineVm {
    run: Arc<RunControl>,
    info: VmInfo,
    nics: Vec<NicLink>,
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

/// A UUID as written (8-4-4-4-12 hex digits).
fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Starts the monitors `o` asks for (their sockets listen when this returns).
pub fn start(o: &Options, run: Arc<RunControl>, nics: Vec<NicLink>, accel: &str) -> Result<(), String> {
    if o.qmp.is_empty() {
        return Ok(());
    }
    let info = VmInfo {
        accel: accel.to_string(),
        kvm_present: std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(),
        cpus: o.cpus,
        max_cpus: o.topology.max_cpus(),
        name: o.name.clone(),
        uuid: format_uuid(&o.uuid),
        chardevs: crate::pty::chardev().into_iter().collect(),
    };
    let monitor = Monitor::new(Arc::new(MachineVm { run: run.clone(), info, nics }));
    run.set_observer(Arc::new(Events(monitor.clone())));
    for e in &o.qmp {
        let l = e.listen().map_err(|err| format!("monitor socket {e}: {err}"))?;
        l.serve(monitor.clone()).map_err(|err| format!("-qmp: {err}"))?;
    }
    Ok(())
}
