//! The command line, parsed as QEMU parses it, so that scripts and management tools
//! that drive `qemu-system-x86_64` drive quern unchanged.
//!
//! Every option is looked up in QEMU's own table ([`table`]): it takes its argument
//! as QEMU's does (`-opt ARG`, `--opt ARG`, or `-opt=ARG`), an option quern does not
//! build yet is refused by name, and nothing is read as a bundle of one-letter flags.
//! Arguments stay `OsString`s until an option needs text; paths never need to be UTF-8.
//! The result is an [`Options`] value: what the user asked for, checked, with no side
//! effects (files are opened later, by the binary's setup).

pub mod drives;
pub mod monitor;
pub mod net;
mod opts;
mod size;
pub mod table;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub use opts::Opts;
pub use size::parse_u64;

use crate::logging::{self, LogItem};
use table::Support;

/// The machine version quern models and reports.
pub const MACHINE_VERSION: &str = "pc-i440fx-7.2";

/// What the command line asks for.
#[derive(Debug)]
pub enum Action {
    /// Build and run a machine.
    Run(Box<Options>),
    /// Print this (help, a list, the version) and exit with status 0.
    Print(String),
}

/// A command-line error: the text after "quern: ".
#[derive(Debug, PartialEq, Eq)]
pub struct CliError(pub String);

type Result<T> = std::result::Result<T, CliError>;

/// The accelerators quern has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelKind {
    Tcg,
    Kvm,
}

/// Where the interrupt controllers live under KVM (`kernel-irqchip=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelIrqchip {
    On,
    Off,
}

/// One accelerator to try, with its properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccelChoice {
    pub kind: AccelKind,
    pub kernel_irqchip: Option<KernelIrqchip>,
}

/// A character device's destination (`-serial`, `-debugcon`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CharDev {
    Stdio,
    Null,
    File(PathBuf),
    /// A new pseudo-terminal, with the chardev's label and `logfile=` (path, append).
    Pty(String, Option<(PathBuf, bool)>),
}

/// How the human monitor shares the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmpMode {
    /// `-monitor stdio`: the terminal is the monitor's.
    Alone,
    /// `-serial mon:stdio` (and `-nographic`): the serial console's, Ctrl-A c switches.
    Muxed,
}

/// A `-device` quern builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// isa-debug-exit: a write of v to `iobase` exits with status (v << 1) | 1.
    DebugExit { iobase: u16, iosize: u16 },
    /// isa-debugcon at port 0xe9, written to stdout.
    DebugCon,
}

/// Everything the command line asks for, checked.
#[derive(Debug)]
pub struct Options {
    pub ram_bytes: u64,
    pub cpus: u32,
    /// `-smp`'s sockets, dies, clusters, cores and threads (maxcpus is their product).
    pub topology: quern_core::Topology,
    /// Accelerators in the order to try them (never empty).
    pub accels: Vec<AccelChoice>,
    /// `kernel-irqchip=` from `-machine`, for KVM.
    pub machine_irqchip: Option<KernelIrqchip>,
    /// `-machine none`: no guest, only the monitors (libvirt probes this way).
    pub machine_none: bool,
    /// The human monitor on the terminal, if any.
    pub hmp_stdio: Option<HmpMode>,
    /// The `-cpu` string (model and features), resolved by the accelerator's setup.
    pub cpu: String,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    pub bios: Option<PathBuf>,
    /// `-L` directories searched for a relative `-bios`.
    pub firmware_dirs: Vec<PathBuf>,
    /// COM1; `None` leaves the port unconnected.
    pub serial: Option<CharDev>,
    pub debugcon: Option<CharDev>,
    pub devices: Vec<Device>,
    /// IDE drives, with their slots assigned.
    pub drives: Vec<drives::DriveSpec>,
    /// `-boot order=` / `once=` drive letters.
    pub boot_order: Option<String>,
    /// `-boot strict=on`, `menu=on`.
    pub boot_strict: bool,
    pub boot_menu: bool,
    /// `-uuid`, in written byte order.
    pub uuid: [u8; 16],
    pub no_reboot: bool,
    pub no_shutdown: bool,
    /// `-display none` (or `-nographic`): no window is expected.
    pub display_none: bool,
    pub log_items: Vec<&'static LogItem>,
    pub log_file: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    /// Network backends, each used by one of `nics`.
    pub netdevs: Vec<quern_net::Netdev>,
    pub nics: Vec<net::NicSpec>,
    /// QMP monitors' sockets.
    pub qmp: Vec<quern_monitor::server::Endpoint>,
    /// `-S`: start paused.
    pub start_paused: bool,
    /// `-incoming URI`: wait for a saved state (`defer`: from `migrate-incoming`).
    pub incoming: Option<String>,
    /// `-name guest=`.
    pub name: Option<String>,
    /// `-daemonize`: detach once the monitors listen and the pidfile is written.
    pub daemonize: bool,
    /// `-rtc base=localtime`: the RTC keeps local time, not UTC.
    pub rtc_localtime: bool,
}

/// Parses `args` (the program name first, as `std::env::args_os` gives it).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Action> {
    let mut b = Builder::default();
    let mut args = args.into_iter().skip(1);
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        let (def, inline) = if bytes.len() > 1 && bytes[0] == b'-' {
            let body = bytes.strip_prefix(b"--").unwrap_or(&bytes[1..]);
            let (name, inline) = match body.iter().position(|&c| c == b'=') {
                Some(i) => (&body[..i], Some(OsStr::from_bytes(&body[i + 1..]).to_os_string())),
                None => (body, None),
            };
            let name = std::str::from_utf8(name).ok();
            match name.and_then(table::lookup) {
                Some(def) => (def, inline),
                None => {
                    return Err(CliError(format!("{}: invalid option (quern -help lists them)", arg.to_string_lossy())))
                }
            }
        } else {
            // A bare argument is a disk image, as in QEMU (`qemu-system-x86_64 disk.img`).
            (table::lookup("hda").expect("hda is in the table"), Some(arg))
        };
        let value = if def.takes_arg {
            match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(CliError(format!("-{}: requires an argument", def.name))),
            }
        } else if inline.is_some() {
            return Err(CliError(format!("-{}: takes no argument", def.name)));
        } else {
            OsString::new()
        };
        match def.support {
            Support::Yes => {
                if let Some(text) = b.apply(def.name, &value)? {
                    return Ok(Action::Print(text));
                }
            }
            Support::Ignored => {}
            Support::NotYet(note) => {
                let shown = if def.takes_arg {
                    format!("-{} {}", def.name, value.to_string_lossy())
                } else {
                    format!("-{}", def.name)
                };
                return Err(CliError(format!("{shown}: -{} is not supported yet ({note})", def.name)));
            }
        }
    }
    b.finish().map(|o| Action::Run(Box::new(o)))
}

/// Options as they arrive, before the cross-option checks of [`Builder::finish`].
#[derive(Default)]
struct Builder {
    ram_bytes: Option<u64>,
    /// `-add-fd`: (set, descriptor), for paths `/dev/fdset/SET`.
    fdsets: Vec<(i32, i32)>,
    /// `-monitor stdio`.
    monitor_stdio: bool,
    /// `-serial mon:stdio`.
    serial_mux: bool,
    /// `-object memory-backend-ram`: (id, size).
    ram_backends: Vec<(String, u64)>,
    cpus: Option<(u32, quern_core::Topology)>,
    machine: Opts,
    accel: Vec<AccelChoice>,
    enable_kvm: bool,
    cpu: Option<String>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    bios: Option<PathBuf>,
    firmware_dirs: Vec<PathBuf>,
    serial: Vec<Option<CharDev>>,
    debugcon: Option<CharDev>,
    devices: Vec<Device>,
    drives: drives::Drives,
    boot: Boot,
    uuid: [u8; 16],
    nodefaults: bool,
    no_reboot: bool,
    no_shutdown: bool,
    nographic: bool,
    display_none: bool,
    log_items: Vec<&'static LogItem>,
    log_file: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    net: net::Net,
    monitors: monitor::Monitors,
    start_paused: bool,
    incoming: Option<String>,
    name: Option<String>,
    daemonize: bool,
    /// `-device isa-serial,chardev=ID`.
    serial_chardev: Option<String>,
    rtc_localtime: bool,
}

/// An error about one option's value: "-opt VALUE: what is wrong".
fn bad(name: &str, value: &OsStr, what: impl std::fmt::Display) -> CliError {
    CliError(format!("-{name} {}: {what}", value.to_string_lossy()))
}

/// The value as text; paths do not go through here.
fn text<'a>(name: &str, value: &'a OsStr) -> Result<&'a str> {
    value.to_str().ok_or_else(|| bad(name, value, "the argument is not valid UTF-8"))
}

fn is_help(v: &str) -> bool {
    v == "help" || v == "?"
}

impl Builder {
    /// Applies one implemented option; `Some(text)` when it asks to print and exit.
    fn apply(&mut self, name: &str, value: &OsStr) -> Result<Option<String>> {
        let path = || PathBuf::from(value);
        match name {
            "h" | "help" => return Ok(Some(usage())),
            "version" => return Ok(Some(version())),
            "machine" | "M" => {
                let o = Opts::parse(text(name, value)?, Some("type")).map_err(|e| bad(name, value, e))?;
                if o.get("type").is_some_and(is_help) {
                    return Ok(Some(machine_help()));
                }
                self.machine.merge(o);
            }
            "cpu" => {
                let v = text(name, value)?;
                if is_help(v) {
                    return Ok(Some(crate::setup::cpu_help()));
                }
                self.cpu = Some(v.to_string());
            }
            "accel" => {
                let o = Opts::parse(text(name, value)?, Some("accel")).map_err(|e| bad(name, value, e))?;
                if o.get("accel").is_some_and(is_help) {
                    return Ok(Some("Accelerators supported in quern:\ntcg\nkvm\n".into()));
                }
                self.accel.push(accel_choice(&o).map_err(|e| bad(name, value, e))?);
            }
            "enable-kvm" => self.enable_kvm = true,
            "smp" => self.cpus = Some(parse_smp(text(name, value)?).map_err(|e| bad(name, value, e))?),
            "m" => self.ram_bytes = Some(parse_memory(text(name, value)?).map_err(|e| bad(name, value, e))?),
            "boot" => {
                let b = parse_boot(text(name, value)?).map_err(|e| bad(name, value, e))?;
                // Repeated -boot options merge, as QEMU's do.
                self.boot = Boot {
                    order: b.order.or(self.boot.order.take()),
                    strict: b.strict.or(self.boot.strict),
                    menu: b.menu.or(self.boot.menu),
                };
            }
            "hda" | "hdb" | "hdc" | "hdd" => {
                let index = u32::from(name.as_bytes()[2] - b'a');
                self.drives.legacy(index, drives::Media::Disk, path());
            }
            "cdrom" => self.drives.legacy(2, drives::Media::Cdrom, path()),
            "drive" => {
                let o = Opts::parse(text(name, value)?, None).map_err(|e| bad(name, value, e))?;
                self.drives.drive(&o).map_err(|e| bad(name, value, e))?;
            }
            "blockdev" => {
                let o = Opts::parse(text(name, value)?, Some("driver")).map_err(|e| bad(name, value, e))?;
                self.drives.blockdev(&o).map_err(|e| bad(name, value, e))?;
            }
            "snapshot" => self.drives.snapshot_all = true,
            "device" => {
                let o = Opts::parse(text(name, value)?, Some("driver")).map_err(|e| bad(name, value, e))?;
                match o.get("driver") {
                    Some(d) if is_help(d) => return Ok(Some(device_help())),
                    Some("ide-hd" | "ide-drive") => {
                        self.drives.device(drives::Media::Disk, &o).map_err(|e| bad(name, value, e))?
                    }
                    Some("ide-cd") => self.drives.device(drives::Media::Cdrom, &o).map_err(|e| bad(name, value, e))?,
                    Some("e1000") => self.net.device(&o).map_err(|e| bad(name, value, e))?,
                    Some("isa-serial") => {
                        if let Some(k) = o.unknown_key(&["driver", "chardev", "id", "index", "iobase", "irq"]) {
                            return Err(bad(name, value, format!("unknown property '{k}' for isa-serial")));
                        }
                        if o.get("index").is_some_and(|i| i != "0") || o.get("iobase").is_some_and(|b| b != "0x3f8") {
                            return Err(bad(name, value, "only COM1 (index=0, iobase 0x3f8) is supported yet"));
                        }
                        let id = o.get("chardev").ok_or_else(|| bad(name, value, "isa-serial needs chardev="))?;
                        self.serial_chardev = Some(id.to_string());
                    }
                    _ => self.devices.push(parse_device(&o).map_err(|e| bad(name, value, e))?),
                }
            }
            "uuid" => self.uuid = parse_uuid(text(name, value)?).map_err(|e| bad(name, value, e))?,
            "name" => {
                let o = Opts::parse(text(name, value)?, Some("guest")).map_err(|e| bad(name, value, e))?;
                if let Some(k) = o.unknown_key(&["guest", "process", "debug-threads"]) {
                    return Err(bad(name, value, format!("unknown property '{k}'")));
                }
                self.name = o.get("guest").map(str::to_string);
            }
            "daemonize" => self.daemonize = true,
            "nodefaults" => self.nodefaults = true,
            "S" => self.start_paused = true,
            "incoming" => {
                let uri = text(name, value)?;
                let known = ["defer", "fd:", "file:", "exec:"].iter().any(|p| uri.starts_with(p));
                if !known {
                    return Err(bad(name, value, "quern takes defer, fd:N, file:PATH or exec:COMMAND"));
                }
                self.incoming = Some(uri.to_string());
            }
            "qmp" => self.monitors.qmp(text(name, value)?).map_err(|e| bad(name, value, e))?,
            "chardev" => self.monitors.chardev(text(name, value)?).map_err(|e| bad(name, value, e))?,
            "mon" => self.monitors.mon(text(name, value)?).map_err(|e| bad(name, value, e))?,
            "overcommit" => {
                let o = Opts::parse(text(name, value)?, None).map_err(|e| bad(name, value, e))?;
                check_props(&o, &[("mem-lock", &["off"]), ("cpu-pm", &["off"])]).map_err(|e| bad(name, value, e))?;
            }
            "L" => self.firmware_dirs.push(path()),
            "bios" => self.bios = Some(path()),
            "rtc" => {
                let o = Opts::parse(text(name, value)?, None).map_err(|e| bad(name, value, e))?;
                check_props(&o, &[("base", &["utc", "localtime"]), ("clock", &["host"]), ("driftfix", &["none"])])
                    .map_err(|e| bad(name, value, e))?;
                self.rtc_localtime = o.get("base") == Some("localtime");
            }
            "object" => {
                // Secrets (libvirt passes its master key this way) are accepted and kept
                // nowhere: nothing in quern decrypts yet. Other objects are refused.
                let o = Opts::parse(text(name, value)?, Some("qom-type")).map_err(|e| bad(name, value, e))?;
                match o.get("qom-type") {
                    Some("secret") => {
                        if let Some(k) = o.unknown_key(&["qom-type", "id", "format", "file", "data", "keyid", "iv"]) {
                            return Err(bad(name, value, format!("unknown property '{k}' for secret")));
                        }
                        if o.get("id").is_none() {
                            return Err(bad(name, value, "secret needs id="));
                        }
                    }
                    // Guest RAM as an object (libvirt's form): its size, for
                    // -machine memory-backend=ID.
                    Some("memory-backend-ram") => {
                        if let Some(k) = o.unknown_key(&["qom-type", "id", "size"]) {
                            return Err(bad(name, value, format!("unknown property '{k}' for memory-backend-ram")));
                        }
                        let id = o.get("id").ok_or_else(|| bad(name, value, "memory-backend-ram needs id="))?;
                        let size = o.get("size").ok_or_else(|| bad(name, value, "memory-backend-ram needs size="))?;
                        let size = size::parse_size(size, 1).map_err(|e| bad(name, value, e))?;
                        self.ram_backends.push((id.to_string(), size));
                    }
                    Some(t) => {
                        return Err(bad(
                            name,
                            value,
                            format!("-object {t} is not supported yet (quern takes secret and memory-backend-ram)"),
                        ))
                    }
                    None => return Err(bad(name, value, "name the object's type (qom-type)")),
                }
            }
            "add-fd" => {
                let o = Opts::parse(text(name, value)?, None).map_err(|e| bad(name, value, e))?;
                if let Some(k) = o.unknown_key(&["set", "fd", "opaque"]) {
                    return Err(bad(name, value, format!("unknown property '{k}'")));
                }
                let num = |k: &str| o.get(k).and_then(|v| v.parse::<i32>().ok()).filter(|n| *n >= 0);
                let (Some(set), Some(fd)) = (num("set"), num("fd")) else {
                    return Err(bad(name, value, "give set=N and fd=M (numbers)"));
                };
                // SAFETY: fcntl(F_GETFD) only asks whether the descriptor is open.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return Err(bad(name, value, format!("fd={fd} is not open")));
                }
                self.fdsets.push((set, fd));
            }
            "sandbox" => {
                let o = Opts::parse(text(name, value)?, Some("enable")).map_err(|e| bad(name, value, e))?;
                if o.get_bool("enable").map_err(|e| bad(name, value, e))? != Some(false) {
                    return Err(bad(name, value, "-sandbox on is not supported yet (quern has no seccomp filter)"));
                }
            }
            "kernel" => self.kernel = Some(path()),
            "initrd" => self.initrd = Some(path()),
            "append" => self.append = Some(text(name, value)?.to_string()),
            "netdev" => self.net.netdev(text(name, value)?).map_err(|e| bad(name, value, e))?,
            "nic" => self.net.nic(text(name, value)?).map_err(|e| bad(name, value, e))?,
            "net" => self.net.net(text(name, value)?).map_err(|e| bad(name, value, e))?,
            // The serial port and the monitor on the terminal, Ctrl-A c between them.
            "serial" if value == "mon:stdio" => {
                self.serial.push(Some(CharDev::Stdio));
                self.serial_mux = true;
            }
            "serial" => self.serial.push(char_dev(name, value)?),
            "parallel" => {
                if value != "none" {
                    return Err(bad(name, value, "parallel ports are not supported yet (-parallel none is accepted)"));
                }
            }
            "debugcon" => self.debugcon = char_dev(name, value)?,
            "monitor" => match text(name, value)? {
                "none" => {}
                "stdio" => self.monitor_stdio = true,
                _ => {
                    return Err(bad(
                        name,
                        value,
                        "the human monitor is not supported yet on that (quern has -monitor stdio and -serial \
                         mon:stdio; QMP on -qmp)",
                    ))
                }
            },
            "pidfile" => self.pidfile = Some(path()),
            "d" => match logging::check_items(text(name, value)?).map_err(|e| bad(name, value, e))? {
                Some(items) => self.log_items.extend(items),
                None => return Ok(Some(logging::help())),
            },
            "D" => self.log_file = Some(path()),
            "no-reboot" => self.no_reboot = true,
            "no-shutdown" => self.no_shutdown = true,
            "nographic" => self.nographic = true,
            "display" => {
                let o = Opts::parse(text(name, value)?, Some("type")).map_err(|e| bad(name, value, e))?;
                match o.get("type") {
                    Some(t) if is_help(t) => return Ok(Some("Available display backend types:\nnone\n".into())),
                    Some("none") if o.keys().all(|k| k == "type") => self.display_none = true,
                    _ => {
                        return Err(bad(
                            name,
                            value,
                            "graphical displays are not supported yet (use -display none or -nographic)",
                        ))
                    }
                }
            }
            "vga" => match text(name, value)? {
                "none" => {}
                v if is_help(v) => return Ok(Some("none             no graphics card\n".into())),
                _ => return Err(bad(name, value, "graphics cards are not supported yet (-vga none is accepted)")),
            },
            "audiodev" => {
                let o = Opts::parse(text(name, value)?, Some("driver")).map_err(|e| bad(name, value, e))?;
                if o.get("driver") != Some("none") {
                    return Err(bad(name, value, "audio backends are not supported yet (driver none is accepted)"));
                }
            }
            other => unreachable!("option -{other} is marked implemented in the table but has no handler"),
        }
        Ok(None)
    }

    /// The checks that need the whole command line.
    fn finish(self) -> Result<Options> {
        let (machine_accels, machine_irqchip) = check_machine(&self.machine).map_err(|e| {
            let shown: Vec<String> =
                self.machine.keys().map(|k| format!("{k}={}", self.machine.get(k).unwrap_or(""))).collect();
            CliError(format!("-machine {}: {e}", shown.join(",")))
        })?;
        let mut ram_bytes = self.ram_bytes;
        if let Some(id) = self.machine.get("memory-backend") {
            let Some(&(_, size)) = self.ram_backends.iter().find(|(i, _)| i == id) else {
                return Err(CliError(format!("-machine memory-backend={id}: no -object memory-backend-ram,id={id}")));
            };
            if ram_bytes.is_some_and(|m| m != size) {
                return Err(CliError(format!(
                    "-machine memory-backend={id}: its size ({size} bytes) differs from -m's ({} bytes)",
                    ram_bytes.unwrap_or_default()
                )));
            }
            ram_bytes = Some(size);
        }
        let mut accels = self.accel;
        if self.enable_kvm {
            accels.insert(0, AccelChoice { kind: AccelKind::Kvm, kernel_irqchip: None });
        }
        if !machine_accels.is_empty() {
            if !accels.is_empty() {
                return Err(CliError("-accel and -machine accel= cannot be used together; use -accel".into()));
            }
            accels = machine_accels;
        }
        if accels.is_empty() {
            accels.push(AccelChoice { kind: AccelKind::Tcg, kernel_irqchip: None });
        }
        if self.kernel.is_none() {
            if self.initrd.is_some() {
                return Err(CliError("-initrd only makes sense with -kernel".into()));
            }
            if self.append.is_some() {
                return Err(CliError("-append only makes sense with -kernel".into()));
            }
        }
        let serial_given = !self.serial.is_empty();
        let mut serial = self.serial.into_iter();
        let mut monitors = self.monitors;
        let log = match &self.serial_chardev {
            Some(id) => monitors.serial_chardev(id).map_err(|e| CliError(format!("-device isa-serial: {e}")))?,
            None => None,
        };
        let log = log.map(|(p, append)| fdset_path(&self.fdsets, p).map(|p| (p, append))).transpose()?;
        let from_device = self.serial_chardev.map(|id| Some(CharDev::Pty(id, log)));
        let explicit = from_device.is_some() || serial_given;
        let com1 = match from_device.or_else(|| serial.next()) {
            Some(Some(CharDev::Stdio)) if self.daemonize => {
                return Err(CliError("-serial stdio cannot be used with -daemonize (there is no terminal)".into()))
            }
            Some(dev) => dev,
            // QEMU's default serial port follows the terminal with -nographic; quern has
            // no window, so it always does, unless -nodefaults removed it (or there is
            // no terminal: -daemonize).
            None if self.nodefaults || self.daemonize => None,
            None => Some(CharDev::Stdio),
        };
        // As QEMU: -nographic would put the serial port on the missing terminal, unless
        // -nodefaults took that default away.
        if self.daemonize && self.nographic && !self.nodefaults {
            return Err(CliError(
                "-nographic cannot be used with -daemonize (there is no terminal; add -nodefaults)".into(),
            ));
        }
        if serial.any(|d| d.is_some()) {
            return Err(CliError("-serial: a second serial port (COM2) is not supported yet".into()));
        }
        // The human monitor on the terminal: alone (-monitor stdio), or sharing it with
        // the serial port (-serial mon:stdio, and QEMU's -nographic default).
        let com1_on_stdio = com1 == Some(CharDev::Stdio);
        let hmp_stdio = if self.monitor_stdio {
            if com1_on_stdio {
                return Err(CliError(
                    "-monitor stdio: the serial port is on the terminal too; use -serial mon:stdio to share it".into(),
                ));
            }
            Some(HmpMode::Alone)
        } else if com1_on_stdio && (self.serial_mux || (self.nographic && !explicit)) {
            Some(HmpMode::Muxed)
        } else {
            None
        };
        if hmp_stdio.is_some() && self.daemonize {
            return Err(CliError("the monitor on stdio cannot be used with -daemonize (there is no terminal)".into()));
        }
        let mut devices = self.devices;
        let debugcon = match self.debugcon {
            Some(d) => Some(d),
            None if devices.contains(&Device::DebugCon) => Some(CharDev::Stdio),
            None => None,
        };
        devices.retain(|d| *d != Device::DebugCon);
        let drives = self.drives.finish().map_err(CliError)?;
        // QEMU's default network (an e1000 on a user-mode network) unless -nodefaults or a
        // network option; a build without libslirp has no user-mode network to give.
        let (netdevs, nics) = self.net.finish(!self.nodefaults && cfg!(feature = "slirp")).map_err(CliError)?;
        Ok(Options {
            ram_bytes: ram_bytes.unwrap_or(128 << 20),
            cpus: self.cpus.map_or(1, |c| c.0),
            topology: self.cpus.map(|c| c.1).unwrap_or_default(),
            accels,
            machine_irqchip,
            machine_none: self.machine.get("type") == Some("none"),
            hmp_stdio,
            cpu: self.cpu.unwrap_or_else(|| "qemu64".into()),
            kernel: self.kernel,
            initrd: self.initrd,
            append: self.append,
            bios: self.bios,
            firmware_dirs: self.firmware_dirs,
            serial: com1,
            debugcon,
            devices,
            drives,
            boot_order: self.boot.order,
            boot_strict: self.boot.strict.unwrap_or(false),
            boot_menu: self.boot.menu.unwrap_or(false),
            uuid: self.uuid,
            no_reboot: self.no_reboot,
            no_shutdown: self.no_shutdown,
            display_none: self.display_none || self.nographic,
            log_items: self.log_items,
            log_file: self.log_file,
            pidfile: self.pidfile,
            netdevs,
            nics,
            qmp: monitors.finish().map_err(CliError)?,
            start_paused: self.start_paused,
            incoming: self.incoming,
            name: self.name,
            daemonize: self.daemonize,
            rtc_localtime: self.rtc_localtime,
        })
    }
}

/// `-serial`/`-debugcon` destinations: stdio, none/null, file:PATH.
fn char_dev(name: &str, value: &OsStr) -> Result<Option<CharDev>> {
    let b = value.as_bytes();
    if let Some(p) = b.strip_prefix(b"file:") {
        if p.is_empty() {
            return Err(bad(name, value, "file: needs a path"));
        }
        return Ok(Some(CharDev::File(PathBuf::from(OsStr::from_bytes(p)))));
    }
    match text(name, value)? {
        "stdio" => Ok(Some(CharDev::Stdio)),
        "null" => Ok(Some(CharDev::Null)),
        "pty" if name == "serial" => Ok(Some(CharDev::Pty("serial0".into(), None))),
        "none" => Ok(None),
        v if is_help(v) => Err(bad(name, value, "quern's character devices are stdio, null, none, pty and file:PATH")),
        v => {
            let kind = v.split(':').next().unwrap_or(v);
            Err(bad(
                name,
                value,
                format!("the '{kind}' character device is not supported yet (use stdio, null, none or file:PATH)"),
            ))
        }
    }
}

/// `-m [size=]N[,slots=N,maxmem=SIZE]`.
fn parse_memory(v: &str) -> std::result::Result<u64, String> {
    let o = Opts::parse(v, Some("size"))?;
    if let Some(k) = o.unknown_key(&["size", "slots", "maxmem"]) {
        return Err(format!("unknown property '{k}' (-m takes size, slots and maxmem)"));
    }
    let size = o.get("size").ok_or("give a size, like 512M or 2G")?;
    let bytes = size::parse_size(size, 1 << 20)?;
    for key in ["slots", "maxmem"] {
        if let Some(x) = o.get(key) {
            if key == "maxmem" {
                size::parse_size(x, 1 << 20)?;
            } else {
                parse_u64(x).ok_or_else(|| format!("slots={x}: give a number"))?;
            }
            return Err(format!("{key}= (memory hotplug) is not supported yet"));
        }
    }
    Ok(bytes)
}

/// `-smp [cpus=]N[,maxcpus=M][,sockets=S][,dies=D][,clusters=C][,cores=C][,threads=T]`:
/// the number of CPUs at start and the topology, as QEMU derives them (x86 calls
/// clusters modules).
fn parse_smp(v: &str) -> std::result::Result<(u32, quern_core::Topology), String> {
    let o = Opts::parse(v, Some("cpus"))?;
    const KEYS: [&str; 7] = ["cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads"];
    if let Some(k) = o.unknown_key(&KEYS) {
        return Err(format!("unknown property '{k}'"));
    }
    let mut n = [None; 7];
    for (slot, key) in n.iter_mut().zip(KEYS) {
        if let Some(x) = o.get(key) {
            let v: u32 = x.parse().map_err(|_| format!("{key}={x}: give a number of CPUs"))?;
            if v == 0 && key != "cpus" {
                return Err(format!("{key}=0: must be at least 1"));
            }
            *slot = Some(v);
        }
    }
    // QEMU's derivation: fill in what is missing from what is given, preferring
    // sockets over cores over threads, then check that the product is maxcpus.
    let [cpus, maxcpus, sockets, dies, clusters, cores, threads] = n.map(|x| x.unwrap_or(0));
    let (dies, clusters) = (dies.max(1), clusters.max(1));
    let (mut sockets, mut cores, mut threads, mut maxcpus) = (sockets, cores, threads, maxcpus);
    let fill = |given: u32, others: u32| given.checked_div(others).map_or(0, |n| n.max(1));
    if cpus == 0 && maxcpus == 0 {
        (sockets, cores, threads) = (sockets.max(1), cores.max(1), threads.max(1));
    } else {
        maxcpus = if maxcpus == 0 { cpus } else { maxcpus };
        if sockets == 0 {
            (cores, threads) = (cores.max(1), threads.max(1));
            sockets = fill(maxcpus, dies * clusters * cores * threads);
        } else if cores == 0 {
            threads = threads.max(1);
            cores = fill(maxcpus, sockets * dies * clusters * threads);
        } else if threads == 0 {
            threads = fill(maxcpus, sockets * dies * clusters * cores);
        }
    }
    let product = [sockets, dies, clusters, cores, threads]
        .iter()
        .try_fold(1u32, |p, &x| p.checked_mul(x))
        .ok_or("the topology is too large")?;
    if maxcpus == 0 {
        maxcpus = product;
    }
    let cpus = if cpus == 0 { maxcpus } else { cpus };
    if product != maxcpus {
        return Err(format!(
            "invalid CPU topology: sockets ({sockets}) * dies ({dies}) * clusters ({clusters}) * cores ({cores}) * threads ({threads}) must equal maxcpus ({maxcpus})"
        ));
    }
    if maxcpus < cpus {
        return Err(format!("maxcpus ({maxcpus}) must be at least cpus ({cpus})"));
    }
    Ok((cpus, quern_core::Topology { sockets, dies, modules: clusters, cores, threads }))
}

/// `-boot` as given: each `None` where the option did not say.
#[derive(Default)]
struct Boot {
    order: Option<String>,
    strict: Option<bool>,
    menu: Option<bool>,
}

/// `-boot [order=DRIVES][,once=DRIVES][,menu=on|off][,strict=on|off]`; the firmware is
/// given `once=` if present (quern does not reboot into another order).
fn parse_boot(v: &str) -> std::result::Result<Boot, String> {
    let o = Opts::parse(v, Some("order"))?;
    if let Some(k) = o.unknown_key(&["order", "once", "menu", "strict", "splash", "splash-time", "reboot-timeout"]) {
        return Err(format!("unknown property '{k}'"));
    }
    if let Some(k) = o.keys().find(|k| matches!(*k, "splash" | "splash-time" | "reboot-timeout")) {
        return Err(format!("{k}= is not supported yet"));
    }
    for key in ["order", "once"] {
        if let Some(d) = o.get(key) {
            if d.is_empty() || !d.bytes().all(|c| (b'a'..=b'p').contains(&c)) {
                return Err(format!("{key}={d}: drives are letters a-p (c disk, d CD-ROM, n network)"));
            }
        }
    }
    Ok(Boot {
        order: o.get("once").or(o.get("order")).map(str::to_string),
        strict: o.get_bool("strict")?,
        menu: o.get_bool("menu")?,
    })
}

/// A UUID as written (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), in that byte order.
fn parse_uuid(v: &str) -> std::result::Result<[u8; 16], String> {
    let bad = || "not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)".to_string();
    let groups: Vec<&str> = v.split('-').collect();
    if !groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) {
        return Err(bad());
    }
    let hex: String = groups.concat();
    if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Each property present must have one of its accepted values; unknown ones are errors.
fn check_props(o: &Opts, accepted: &[(&str, &[&str])]) -> std::result::Result<(), String> {
    for key in o.keys() {
        let Some((_, values)) = accepted.iter().find(|(k, _)| *k == key) else {
            return Err(format!("unknown property '{key}'"));
        };
        let v = o.get(key).unwrap_or("");
        if !values.contains(&v) {
            return Err(format!("{key}={v} is not supported yet (accepted: {})", values.join(", ")));
        }
    }
    Ok(())
}

fn accel_kind(name: &str) -> std::result::Result<AccelKind, String> {
    match name {
        "tcg" => Ok(AccelKind::Tcg),
        "kvm" => Ok(AccelKind::Kvm),
        "xen" | "hvf" | "whpx" | "nvmm" | "hax" | "qtest" => {
            Err(format!("accelerator '{name}' is not available in quern: use tcg or kvm"))
        }
        _ => Err(format!("invalid accelerator '{name}': use tcg or kvm")),
    }
}

fn irqchip(v: &str) -> std::result::Result<KernelIrqchip, String> {
    match v {
        "on" => Ok(KernelIrqchip::On),
        "off" => Ok(KernelIrqchip::Off),
        "split" => Err("kernel-irqchip=split is not supported yet (it comes with the local APIC work)".into()),
        _ => Err(format!("kernel-irqchip={v}: expected on, off or split")),
    }
}

/// `-accel NAME[,prop=value...]`.
fn accel_choice(o: &Opts) -> std::result::Result<AccelChoice, String> {
    let kind = accel_kind(o.get("accel").ok_or("name an accelerator: tcg or kvm")?)?;
    let mut choice = AccelChoice { kind, kernel_irqchip: None };
    for key in o.keys().filter(|k| *k != "accel") {
        let v = o.get(key).unwrap_or("");
        match (kind, key) {
            // One vCPU today: single- and multi-threaded TCG are the same thing.
            (AccelKind::Tcg, "thread") if matches!(v, "single" | "multi") => {}
            // quern's code buffer is always W^X (two mappings); the setting changes nothing.
            (AccelKind::Tcg, "split-wx") if opts::parse_bool(v).is_some() => {}
            (AccelKind::Tcg, "thread" | "split-wx") => return Err(format!("{key}={v}: bad value")),
            (AccelKind::Tcg, "tb-size" | "one-insn-per-tb") => return Err(format!("{key} is not supported yet")),
            (AccelKind::Kvm, "kernel-irqchip") => choice.kernel_irqchip = Some(irqchip(v)?),
            (
                AccelKind::Kvm,
                "kvm-shadow-mem" | "dirty-ring-size" | "notify-vmexit" | "notify-window" | "eager-split-size",
            ) => return Err(format!("{key} is not supported yet")),
            _ => return Err(format!("unknown property '{key}' for this accelerator")),
        }
    }
    Ok(choice)
}

/// A path `/dev/fdset/N` names the descriptor `-add-fd set=N` passed in (as libvirt
/// hands over log files); it is reopened through /proc/self/fd.
fn fdset_path(fdsets: &[(i32, i32)], p: PathBuf) -> Result<PathBuf> {
    let Some(set) = p.to_str().and_then(|s| s.strip_prefix("/dev/fdset/")) else { return Ok(p) };
    let fd = set.parse::<i32>().ok().and_then(|n| fdsets.iter().find(|(s, _)| *s == n)).map(|(_, fd)| *fd);
    let fd = fd.ok_or_else(|| CliError(format!("{}: no -add-fd set={set}", p.display())))?;
    Ok(PathBuf::from(format!("/proc/self/fd/{fd}")))
}

/// `-machine`: the type and the properties quern honours; returns the accelerators
/// named by `accel=` and the `kernel-irqchip=` setting.
fn check_machine(o: &Opts) -> std::result::Result<(Vec<AccelChoice>, Option<KernelIrqchip>), String> {
    let ty = o.get("type").unwrap_or("pc");
    match ty {
        "pc" => {}
        t if t == MACHINE_VERSION => {}
        t if t.starts_with("pc-i440fx-") => {
            return Err(format!("quern models {MACHINE_VERSION} (also called pc) and no other version of it"))
        }
        t if t == "q35" || t.starts_with("pc-q35-") => {
            return Err(format!("machine type '{t}' is not supported yet (the q35 machine comes later; use pc)"))
        }
        // No machine at all: only the monitor, for management tools' probes.
        "none" => {}
        "isapc" | "microvm" | "x-remote" => return Err(format!("machine type '{ty}' is not supported yet (use pc)")),
        t => return Err(format!("unsupported machine type '{t}' (-machine help lists them)")),
    }
    let mut accels = Vec::new();
    let mut kernel_irqchip = None;
    for key in o.keys() {
        let v = o.get(key).unwrap_or("");
        let not_yet = || format!("{key}={v} is not supported yet");
        match key {
            "type" => {}
            "accel" => {
                accels = v
                    .split(':')
                    .map(|a| accel_kind(a).map(|kind| AccelChoice { kind, kernel_irqchip: None }))
                    .collect::<std::result::Result<_, _>>()?
            }
            "kernel-irqchip" | "kernel_irqchip" => kernel_irqchip = Some(irqchip(v)?),
            // Settings that change nothing quern's machine shows a guest.
            "dump-guest-core" | "mem-merge" | "suppress-vmdesc" | "graphics" => {
                opts::parse_bool(v).ok_or_else(|| format!("{key}={v}: expected on or off"))?;
            }
            // Devices quern's pc does not have: off (or auto, which quern resolves to
            // off) is what it is; asking for them is refused.
            "usb" | "hpet" | "nvdimm" | "hmat" => {
                if opts::parse_bool(v) != Some(false) {
                    return Err(not_yet());
                }
            }
            "vmport" | "smm" => {
                if !matches!(v, "off" | "auto") {
                    return Err(not_yet());
                }
            }
            "acpi" | "i8042" => {
                if !matches!(v, "on" | "auto") {
                    return Err(not_yet());
                }
            }
            // Resolved against the -object memory-backend-ram in `finish`.
            "memory-backend" => {}
            "pcspk-audiodev"
            | "confidential-guest-support"
            | "max-ram-below-4g"
            | "sgx-epc"
            | "smbios-entry-point-type"
            | "firmware"
            | "dumpdtb"
            | "phandle-start"
            | "dt-compatible"
            | "boot"
            | "memory-encryption"
            | "pflash0"
            | "pflash1"
            | "pic"
            | "pit"
            | "sata"
            | "bus-lock-ratelimit" => return Err(not_yet()),
            _ => return Err(format!("unknown property '{key}' for machine type pc")),
        }
    }
    Ok((accels, kernel_irqchip))
}

/// `-device DRIVER[,prop=value...]` for the devices quern has.
fn parse_device(o: &Opts) -> std::result::Result<Device, String> {
    let driver = o.get("driver").ok_or("name a device driver (-device help lists them)")?;
    let num = |k: &str, max: u64| -> std::result::Result<Option<u64>, String> {
        o.get(k)
            .map(|v| parse_u64(v).filter(|n| *n <= max).ok_or_else(|| format!("{k}={v}: give a number up to {max:#x}")))
            .transpose()
    };
    match driver {
        "isa-debug-exit" => {
            if let Some(k) = o.unknown_key(&["driver", "iobase", "iosize", "id"]) {
                return Err(format!("unknown property '{k}' for isa-debug-exit"));
            }
            let iobase = num("iobase", 0xffff)?.unwrap_or(0x501) as u16;
            let iosize = num("iosize", 4)?.unwrap_or(2) as u16;
            if iosize == 0 {
                return Err("iosize=0: must be 1 to 4".into());
            }
            Ok(Device::DebugExit { iobase, iosize })
        }
        "isa-debugcon" => {
            if let Some(k) = o.unknown_key(&["driver", "iobase", "id"]) {
                let hint =
                    if k == "chardev" { " (-chardev is not supported yet; use -debugcon stdio|file:PATH)" } else { "" };
                return Err(format!("unknown property '{k}' for isa-debugcon{hint}"));
            }
            if num("iobase", 0xffff)?.is_some_and(|b| b != 0xe9) {
                return Err("iobase: only 0xe9 is supported yet".into());
            }
            Ok(Device::DebugCon)
        }
        d => Err(format!("device '{d}' is not supported yet (-device help lists quern's devices)")),
    }
}

fn usage() -> String {
    let mut s = format!(
        "{}\nusage: quern [options] [disk_image]\n\n\
         Options follow qemu-system-x86_64's; these are implemented:\n",
        version_line()
    );
    const IMPLEMENTED: &[(&str, &str)] = &[
        ("-machine pc[,accel=tcg|kvm][,kernel-irqchip=on|off]", "the i440fx PC (-M pc-i440fx-7.2)"),
        ("-accel tcg|kvm, -enable-kvm", "the JIT (default) or KVM"),
        ("-cpu MODEL[,+feat,-feat]", "CPU model (-cpu help)"),
        ("-m [size=]SIZE", "guest RAM, e.g. 512M or 1.5G (default 128M)"),
        ("-smp 1", "one vCPU for now"),
        ("-kernel FILE, -initrd FILE, -append CMDLINE", "boot a Linux or Multiboot kernel directly"),
        ("-bios FILE, -L DIR", "firmware image and where to look for it"),
        ("-nographic, -display none", "no window: the serial port is the terminal"),
        ("-serial stdio|null|none|file:PATH", "COM1"),
        ("-debugcon stdio|null|none|file:PATH", "the isa-debugcon port 0xe9"),
        ("-device isa-debug-exit|isa-debugcon", "test devices (-device help)"),
        ("-no-reboot", "exit when the guest resets"),
        ("-no-shutdown", "stop, not exit, when the guest powers off (Ctrl-A x quits)"),
        ("-d ITEMS, -D FILE", "logging (-d help)"),
        ("-pidfile FILE", "write the process ID to FILE"),
        ("-nodefaults, -name, -uuid, -msg, -rtc base=utc", "accepted as QEMU accepts them"),
        ("-version, -help", "this"),
    ];
    for (o, h) in IMPLEMENTED {
        s.push_str(&format!("  {o:<52} {h}\n"));
    }
    s.push_str("\nQEMU's other options are recognised and refused as not supported yet.\nCtrl-A x quits; Ctrl-A h lists the console keys.\n");
    s
}

fn version_line() -> String {
    format!(
        "quern emulator version {} (machine {MACHINE_VERSION}, QEMU-compatible command line)",
        env!("CARGO_PKG_VERSION")
    )
}

fn version() -> String {
    format!("{}\nCopyright (c) 2026 the quern developers\n", version_line())
}

fn machine_help() -> String {
    format!(
        "Supported machines are:\n\
         pc                   Standard PC (i440FX + PIIX, 1996) (alias of {MACHINE_VERSION})\n\
         {MACHINE_VERSION}        Standard PC (i440FX + PIIX, 1996) (default)\n"
    )
}

fn device_help() -> String {
    "Devices quern has:\n\
     name \"isa-debug-exit\", bus ISA, desc \"exit with status (v << 1) | 1 on a write of v\" (iobase, iosize)\n\
     name \"isa-debugcon\", bus ISA, desc \"ISA debug console at port 0xe9\" (iobase=0xe9)\n"
        .into()
}

#[cfg(test)]
mod tests;
