//! The QMP monitors' view of the machine: quern-monitor's [`Vm`] on machine-pc's run
//! control, and the run-state changes sent to the clients as QMP events.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use quern_block::BlockStats;
use quern_core::bus::lock;
use quern_core::GuestMemory;
use quern_devices::i8042::I8042;
use quern_devices::ide::PiixIde;
use quern_devices::pci::PciRoot;
use quern_machine_pc::chipset::NicLink;
use quern_machine_pc::machine::PcMachine;
use quern_machine_pc::runstate::{RunControl, RunObserver};
use quern_monitor::{BlockCounters, BlockInfo, Medium, Monitor, RunState, Vm, VmInfo};
use serde_json::json;

use crate::cli::drives::DriveSpec;
use crate::cli::Options;

/// The machine as the monitors (QMP and the human monitor) see it.
pub struct MachineVm {
    run: Arc<RunControl>,
    info: VmInfo,
    nics: Vec<NicLink>,
    drives: Vec<(DriveSpec, Option<Arc<BlockStats>>)>,
    /// Each drive's medium now (a CD-ROM's changes with `eject` and `change`).
    media: Mutex<Vec<Option<Medium>>>,
    /// The netdevs: (id, type).
    netdevs: Vec<(String, String)>,
    mem: Arc<GuestMemory>,
    pci: Arc<Mutex<PciRoot>>,
    ide: Arc<Mutex<PiixIde>>,
    i8042: Arc<Mutex<I8042>>,
    /// The stateful devices' names (`info qtree`).
    devices: Vec<String>,
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
        let media = lock(&self.media);
        let ide = lock(&self.ide);
        let infos = self.drives.iter().zip(media.iter());
        infos.map(|((d, stats), m)| block_info(d, m.clone(), ide.tray(d.bus, d.unit), stats.as_deref())).collect()
    }
    fn human(&self, line: &str) -> Result<String, String> {
        crate::hmp::execute(self, line)
    }
    fn eject(&self, device: &str, force: bool) -> Result<(), String> {
        let i = self.cdrom(device)?;
        let d = &self.drives[i].0;
        lock(&self.ide).eject(d.bus, d.unit, force).map_err(|e| format!("Device '{device}' {e}"))?;
        lock(&self.media)[i] = None;
        Ok(())
    }
    fn change_medium(&self, device: &str, file: &str, format: Option<&str>) -> Result<(), String> {
        let i = self.cdrom(device)?;
        let (d, stats) = &self.drives[i];
        let path = std::path::Path::new(file);
        let mut opts = quern_block::OpenOptions::new(path);
        opts.format = format.map(str::parse).transpose().map_err(|e| format!("{file}: {e}"))?;
        opts.read_only = true;
        let opened = quern_block::open(&opts).map_err(|e| format!("{file}: {e}"))?;
        let size = opened.size();
        let medium: Arc<dyn quern_block::BlockBackend> = match stats {
            Some(s) => quern_block::Counted::into(opened, s.clone()),
            None => opened,
        };
        lock(&self.ide).insert(d.bus, d.unit, medium).map_err(|e| format!("Device '{device}' {e}"))?;
        let format = format.unwrap_or("raw").to_string();
        lock(&self.media)[i] = Some(Medium { file: file.to_string(), format, size, read_only: true });
        Ok(())
    }
    fn pci_functions(&self) -> Vec<quern_monitor::PciFunction> {
        crate::hmp::pci_functions(&self.pci)
    }
    fn send_keys(&self, keys: &[String], hold_ms: u32) -> Result<(), String> {
        let codes = keys
            .iter()
            .map(|k| quern_devices::i8042::qcode_from_hmp(k).ok_or_else(|| format!("invalid parameter: {k}")))
            .collect::<Result<Vec<_>, _>>()?;
        for c in &codes {
            lock(&self.i8042).key(c, true)?;
        }
        std::thread::sleep(std::time::Duration::from_millis(u64::from(hold_ms)));
        for c in codes.iter().rev() {
            lock(&self.i8042).key(c, false)?;
        }
        Ok(())
    }
}

impl MachineVm {
    /// Every vCPU's registers, as `info registers` shows them.
    pub(crate) fn registers(&self) -> Result<String, String> {
        self.run.registers()
    }

    /// A removable drive by its `-drive` id, `-device` id or node name: its index.
    fn cdrom(&self, device: &str) -> Result<usize, String> {
        let i = self.drives.iter().position(|(d, _)| {
            d.id == device || d.qdev.as_deref() == Some(device) || d.node_name.as_deref() == Some(device)
        });
        let i = i.ok_or_else(|| format!("Device '{device}' not found"))?;
        if self.drives[i].0.media != crate::cli::drives::Media::Cdrom {
            return Err(format!("Device '{device}' is not removable"));
        }
        Ok(i)
    }

    /// CPU 0's special registers (its paging), read between runs.
    fn cpu0_sregs(&self) -> Result<quern_core::regs::SpecialRegs, String> {
        let sregs = self.run.run_job(Some(std::time::Duration::from_secs(10)), |m| m.sregs(0))?;
        sregs.ok_or_else(|| "cannot read CPU 0's registers".into())
    }

    /// `x`/`xp`: `len` bytes of guest memory at `addr`, physical or as vCPU 0 sees it.
    pub(crate) fn read_memory(&self, addr: u64, len: usize, physical: bool) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; len];
        if physical {
            self.mem.read(addr, &mut out).map_err(|e| format!("cannot access memory at {addr:#x}: {e}"))?;
            return Ok(out);
        }
        let sregs = self.cpu0_sregs()?;
        // Page by page: contiguous virtual pages need not be contiguous physically.
        let mut done = 0;
        while done < len {
            let va = addr + done as u64;
            let chunk = (0x1000 - (va & 0xfff) as usize).min(len - done);
            let pa = quern_machine_pc::pagewalk::translate(&self.mem, &sregs, va)
                .ok_or_else(|| format!("cannot access memory at {va:#x}: not mapped"))?;
            self.mem
                .read(pa, &mut out[done..done + chunk])
                .map_err(|e| format!("cannot access memory at {va:#x}: {e}"))?;
            done += chunk;
        }
        Ok(out)
    }

    /// `info tlb`: CPU 0's page mappings, with QEMU's flag letters.
    pub(crate) fn tlb_text(&self) -> Result<String, String> {
        let sregs = self.cpu0_sregs()?;
        if sregs.cr0 & quern_core::regs::ctrl::CR0_PG == 0 {
            return Ok("PG disabled\n".into());
        }
        let mut t = String::new();
        for (va, pa, _, e) in quern_machine_pc::pagewalk::mappings(&self.mem, &sregs, 1 << 20) {
            let flag = |bit: u32, c: char| if e >> bit & 1 != 0 { c } else { '-' };
            t += &format!(
                "{va:016x}: {pa:016x} {}{}{}{}{}{}{}{}{}\n",
                flag(63, 'X'),
                flag(8, 'G'),
                flag(7, 'P'),
                flag(6, 'D'),
                flag(5, 'A'),
                flag(4, 'C'),
                flag(3, 'T'),
                flag(2, 'U'),
                flag(1, 'W')
            );
        }
        Ok(t)
    }

    /// `info jit`: the translators' state (between runs).
    pub(crate) fn jit_text(&self) -> Result<String, String> {
        self.run.run_job(Some(std::time::Duration::from_secs(10)), |m| m.jit_text())
    }

    /// `info network`: each card and its backend.
    pub(crate) fn network_text(&self) -> String {
        let mut t = String::new();
        for n in &self.nics {
            let mac: Vec<String> = n.mac.iter().map(|b| format!("{b:02x}")).collect();
            t += &format!(
                "{}: index=0,type=nic,model=e1000,macaddr={}
",
                n.id,
                mac.join(":")
            );
            if let Some(id) = &n.netdev {
                let kind = self.netdevs.iter().find(|(i, _)| i == id).map_or("?", |(_, k)| k.as_str());
                t += &format!(
                    " \\ {id}: index=0,type={kind}
"
                );
            }
        }
        t
    }

    pub(crate) fn pci_text(&self) -> String {
        crate::hmp::pci_text(&self.pci_functions())
    }

    /// `info mtree`: guest memory's regions as the vCPUs see them now.
    pub(crate) fn mtree_text(&self) -> String {
        let mut t = String::from(
            "address-space: memory
",
        );
        for r in self.mem.regions() {
            let kind = match r.kind {
                quern_core::RegionKind::Ram => "ram",
                quern_core::RegionKind::Rom => "rom",
            };
            t += &format!(
                "  {:016x}-{:016x} (prio 0, {kind})
",
                r.guest_base,
                r.end() - 1
            );
        }
        t
    }

    /// `info qtree`: the devices with state, by the names a saved state uses.
    pub(crate) fn qtree_text(&self) -> String {
        let mut t = String::from(
            "bus: main-system-bus
  type System
",
        );
        for name in &self.devices {
            t += &format!(
                "  dev: {name}
"
            );
        }
        t
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
    fn eject(&self, device: &str, _force: bool) -> Result<(), String> {
        Err(format!("Device '{device}' not found"))
    }
    fn change_medium(&self, device: &str, _file: &str, _format: Option<&str>) -> Result<(), String> {
        Err(format!("Device '{device}' not found"))
    }
    fn send_keys(&self, _keys: &[String], _hold_ms: u32) -> Result<(), String> {
        Err("there is no keyboard (-machine none)".into())
    }
    fn pci_functions(&self) -> Vec<quern_monitor::PciFunction> {
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

/// A drive's medium as the command line gave it.
fn initial_medium(d: &DriveSpec) -> Option<Medium> {
    d.file.as_ref().map(|f| Medium {
        file: f.display().to_string(),
        format: d.format.clone().unwrap_or_else(|| "raw".into()),
        size: std::fs::metadata(f).map_or(0, |m| m.len()),
        read_only: d.read_only,
    })
}

/// A drive as the block queries show it: a `-blockdev` drive by its `-device` id
/// and node name, a `-drive` by its id, as QEMU names them.
fn block_info(
    d: &DriveSpec,
    medium: Option<Medium>,
    tray: Option<quern_devices::ide::TrayState>,
    stats: Option<&BlockStats>,
) -> BlockInfo {
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    BlockInfo {
        device: if d.node_name.is_some() { String::new() } else { d.id.clone() },
        qdev: d.qdev.clone().unwrap_or_else(|| format!("/machine/unattached/{}", d.id)),
        node_name: d.node_name.clone().unwrap_or_else(|| format!("#block-{}", d.id)),
        removable: d.media == crate::cli::drives::Media::Cdrom,
        tray_open: tray.is_some_and(|t| t.tray_open),
        locked: tray.is_some_and(|t| t.locked),
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
        kvm_present: crate::setup::kvm_present(),
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

/// The machine's monitor: starts the QMP sockets `o` asks for (they listen when this
/// returns) and an `-incoming` load that names its source; returns the machine as the
/// human monitor on the terminal uses it.
pub fn start(
    o: &Options,
    machine: &PcMachine,
    accel: &str,
    stats: crate::setup::DriveStats,
) -> Result<Arc<MachineVm>, String> {
    let nics = machine.nics();
    let mut peripherals: Vec<(String, String)> = o
        .drives
        .iter()
        .filter_map(|d| {
            let ty = if d.media == crate::cli::drives::Media::Cdrom { "ide-cd" } else { "ide-hd" };
            d.qdev.clone().map(|id| (id, ty.to_string()))
        })
        .collect();
    peripherals.extend(nics.iter().map(|n| (n.id.clone(), "e1000".to_string())));
    let netdevs = o
        .netdevs
        .iter()
        .map(|n| {
            let kind = match n.kind {
                quern_net::NetdevKind::User(_) => "user",
                quern_net::NetdevKind::Stream { .. } => "stream",
                quern_net::NetdevKind::Tap(_) => "tap",
            };
            (n.id.clone(), kind.to_string())
        })
        .collect();
    let run = machine.run_control();
    let vm = Arc::new(MachineVm {
        run: run.clone(),
        info: vm_info(o, accel, peripherals),
        nics,
        drives: o.drives.iter().cloned().zip(stats).collect(),
        media: Mutex::new(o.drives.iter().map(initial_medium).collect()),
        netdevs,
        mem: machine.memory(),
        pci: machine.pci(),
        ide: machine.ide(),
        i8042: machine.i8042(),
        devices: machine.device_names(),
    });
    let monitor = Monitor::new(vm.clone());
    run.set_observer(Arc::new(Events(monitor.clone())));
    listen(o, &monitor)?;
    if let Some(uri) = o.incoming.as_deref().filter(|u| *u != "defer") {
        monitor.incoming(uri).map_err(|e| format!("-incoming {uri}: {}", e.desc))?;
    }
    Ok(vm)
}
