//! The human monitor (HMP): QEMU's text commands, on the terminal (`-monitor stdio`,
//! or Ctrl-A c with `-serial mon:stdio` and `-nographic`) and through QMP's
//! `human-monitor-command`. Output follows QEMU's layout where tools parse it.

use std::fmt::Write as _;

use quern_core::bus::lock;
use quern_monitor::{RunState, Vm};

use crate::monitor::MachineVm;

/// The commands and their one-line help, as `help` lists them.
const HELP: &[(&str, &str)] = &[
    (
        "info status|registers|cpus|block|network|pci|mtree|qtree|tlb|jit|chardev|version|kvm|name|uuid",
        "show the machine",
    ),
    ("stop", "pause the guest"),
    ("cont|c", "resume the guest"),
    ("system_reset", "reset the machine"),
    ("system_powerdown", "press the ACPI power button"),
    ("x /fmt addr", "virtual memory dump (CPU 0's page tables), fmt = [count][x|d|u|c][b|h|w|g]"),
    ("xp /fmt addr", "physical memory dump"),
    ("eject [-f] device", "open the tray of a CD-ROM drive and take its disc out"),
    ("change device filename [format]", "put another disc in a CD-ROM drive"),
    ("sendkey keys [hold_ms]", "press keys, e.g. ctrl-alt-delete"),
    ("set_link name on|off", "a network card's cable"),
    ("quit|q", "quit the emulator"),
];

/// Runs one command line; its output (lines end in CRLF, as QEMU's), or an error.
pub fn execute(vm: &MachineVm, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let out = match words.as_slice() {
        [] => String::new(),
        ["help" | "?" | "h", ..] => HELP.iter().map(|(c, h)| format!("{c} -- {h}\n")).collect(),
        ["info", what, ..] => info(vm, what)?,
        ["info"] => {
            "info status|registers|cpus|block|network|pci|mtree|qtree|chardev|version|kvm|name|uuid\n".to_string()
        }
        ["stop"] => {
            vm.stop();
            String::new()
        }
        ["cont" | "c"] => vm.cont().map(|()| String::new())?,
        ["system_reset"] => {
            vm.system_reset();
            String::new()
        }
        ["system_powerdown"] => {
            vm.system_powerdown();
            String::new()
        }
        ["quit" | "q"] => {
            vm.quit();
            String::new()
        }
        ["set_link", name, state] => {
            let up = match *state {
                "on" => true,
                "off" => false,
                s => return Err(format!("set_link: '{s}': expected on or off")),
            };
            vm.set_link(name, up).map(|()| String::new())?
        }
        [cmd @ ("x" | "xp"), rest @ ..] => dump(vm, *cmd == "xp", rest)?,
        ["eject", rest @ ..] => {
            let (force, dev) = match rest {
                ["-f", d] => (true, *d),
                [d] => (false, *d),
                _ => return Err("eject [-f] device".into()),
            };
            vm.eject(dev, force).map(|()| String::new())?
        }
        ["change", dev, file, rest @ ..] => {
            let format = rest.first().copied();
            vm.change_medium(dev, file, format).map(|()| String::new())?
        }
        ["sendkey", keys, rest @ ..] => {
            let hold =
                rest.first().map(|h| h.parse::<u32>().map_err(|_| format!("sendkey: hold time '{h}'"))).transpose()?;
            let keys: Vec<String> = keys.split('-').map(str::to_string).collect();
            vm.send_keys(&keys, hold.unwrap_or(100)).map(|()| String::new())?
        }
        [cmd, ..] => {
            return Err(format!("unknown or unsupported command: '{cmd}' (help lists what quern's monitor has)"));
        }
    };
    Ok(out.replace('\n', "\r\n"))
}

fn info(vm: &MachineVm, what: &str) -> Result<String, String> {
    let i = vm.info();
    Ok(match what {
        "status" => {
            let s = vm.run_state();
            let shown = match s {
                RunState::Prelaunch => "paused (prelaunch)",
                RunState::InMigrate => "paused (inmigrate)",
                RunState::PostMigrate => "paused (postmigrate)",
                _ => s.name(),
            };
            format!("VM status: {shown}\n")
        }
        "registers" => vm.registers()?,
        "cpus" => (0..i.cpus)
            .map(|c| format!("{}CPU #{c}: thread_id={}\n", if c == 0 { "* " } else { "  " }, std::process::id()))
            .collect(),
        "version" => {
            let (a, b, c) = quern_monitor::commands::QEMU_VERSION;
            format!("{a}.{b}.{c}{}\n", quern_monitor::commands::package())
        }
        "kvm" => format!("kvm support: {}\n", if i.accel == "kvm" { "enabled" } else { "disabled" }),
        "name" => i.name.map_or(String::new(), |n| format!("{n}\n")),
        "uuid" => format!("{}\n", i.uuid),
        "chardev" => i.chardevs.iter().map(|(l, f)| format!("{l}: filename={f}\n")).collect(),
        "block" => {
            let mut t = String::new();
            for b in vm.blocks() {
                let name = if b.device.is_empty() { &b.qdev } else { &b.device };
                match &b.medium {
                    Some(m) => {
                        let ro = if m.read_only { ", read-only" } else { "" };
                        let _ = writeln!(t, "{name} ({}): {} ({}{ro})", b.node_name, m.file, m.format);
                    }
                    None => {
                        let _ = writeln!(t, "{name}: [not inserted]");
                    }
                }
                let _ = writeln!(t, "    Attached to:      {}", b.qdev);
                if b.removable {
                    let locked = if b.locked { "locked" } else { "not locked" };
                    let tray = if b.tray_open { "open" } else { "closed" };
                    let _ = writeln!(t, "    Removable device: {locked}, tray {tray}");
                }
                let _ = writeln!(t, "    Cache mode:       writeback\n");
            }
            t
        }
        "network" => vm.network_text(),
        "pci" => vm.pci_text(),
        "mtree" => vm.mtree_text(),
        "qtree" => vm.qtree_text(),
        "tlb" => vm.tlb_text()?,
        "jit" => vm.jit_text()?,
        other => return Err(format!("info {other}: not available in quern (help lists the info commands)")),
    })
}

/// `x`/`xp /fmt addr`: QEMU's memory dump.
fn dump(vm: &MachineVm, physical: bool, args: &[&str]) -> Result<String, String> {
    let (fmt, addr) = match args {
        [f, a] if f.starts_with('/') => (&f[1..], *a),
        [a] => ("", *a),
        _ => return Err("x|xp /fmt addr".into()),
    };
    let digits: String = fmt.chars().take_while(char::is_ascii_digit).collect();
    let count: usize = if digits.is_empty() { 1 } else { digits.parse().map_err(|_| "bad count")? };
    let (mut format, mut size) = ('x', 4usize);
    for c in fmt[digits.len()..].chars() {
        match c {
            'x' | 'd' | 'u' | 'c' | 'o' => format = c,
            'b' => size = 1,
            'h' => size = 2,
            'w' => size = 4,
            'g' => size = 8,
            _ => return Err(format!("invalid format character '{c}'")),
        }
    }
    if format == 'c' {
        size = 1;
    }
    let addr = parse_addr(addr)?;
    let bytes = vm.read_memory(addr, count.min(4096) * size, physical)?;
    let per_line = if format == 'c' { 16 } else { 16 / size.min(16) }.max(1);
    let mut t = String::new();
    for (n, unit) in bytes.chunks(size).enumerate() {
        if n % per_line == 0 {
            if n > 0 {
                t.push('\n');
            }
            let _ = write!(t, "{:016x}:", addr + (n * size) as u64);
        }
        let v = unit.iter().rev().fold(0u64, |v, &b| v << 8 | u64::from(b));
        let _ = match format {
            'x' => write!(t, " 0x{v:0w$x}", w = size * 2),
            'd' => write!(t, " {}", sign_extend(v, size)),
            'u' => write!(t, " {v}"),
            'o' => write!(t, " {v:#o}"),
            _ => write!(t, "{}", if (0x20..0x7f).contains(&v) { (v as u8 as char).to_string() } else { ".".into() }),
        };
    }
    t.push('\n');
    Ok(t)
}

fn sign_extend(v: u64, size: usize) -> i64 {
    let shift = 64 - 8 * size as u32;
    ((v << shift) as i64) >> shift
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("invalid address '{s}'"))
}

/// `info pci`, in QEMU's layout.
pub fn pci_text(functions: &[quern_monitor::PciFunction]) -> String {
    let mut t = String::new();
    for f in functions {
        let _ = writeln!(t, "  Bus  0, device {:3}, function {}:", f.slot, f.function);
        let _ = writeln!(t, "    Class {:04x}: PCI device {:04x}:{:04x}", f.class, f.vendor, f.device);
        if let Some((line, pin)) = f.irq {
            let _ = writeln!(t, "      IRQ {line}, pin {}.", (b'A' + pin - 1) as char);
        }
        for &(bar, io, addr, size) in &f.regions {
            let end = addr + size - 1;
            let _ = if io {
                writeln!(t, "      BAR{bar}: I/O at 0x{addr:04x} [0x{end:04x}].")
            } else {
                writeln!(t, "      BAR{bar}: 32 bit memory at 0x{addr:08x} [0x{end:08x}].")
            };
        }
        let _ = writeln!(t, "      id \"\"");
    }
    t
}

/// The functions on bus 0 with their BARs, sized as firmware sizes them (all ones
/// written, the mask read back, the value put back), all under the bus's lock so that
/// no guest access sees the probe.
pub fn pci_functions(root: &std::sync::Mutex<quern_devices::pci::PciRoot>) -> Vec<quern_monitor::PciFunction> {
    let root = lock(root);
    let bus = root.bus();
    let mut out = Vec::new();
    for slot in 0..32u8 {
        for function in 0..8u8 {
            let id = bus.config_read(slot, function, 0);
            if id == 0xffff_ffff || id == 0 {
                if function == 0 {
                    break;
                }
                continue;
            }
            let irq = bus.config_read(slot, function, 0x3c);
            let pin = (irq >> 8) as u8;
            let sub = bus.config_read(slot, function, 0x2c);
            let mut regions = Vec::new();
            for bar in 0..6u8 {
                let reg = 0x10 + 4 * u16::from(bar);
                let value = bus.config_read(slot, function, reg);
                bus.config_write(slot, function, reg, 0xffff_ffff, 0xffff_ffff);
                let mask = bus.config_read(slot, function, reg);
                bus.config_write(slot, function, reg, value, 0xffff_ffff);
                let io = mask & 1 != 0;
                let bits = if io { mask & !3 } else { mask & !0xf };
                if bits == 0 {
                    continue;
                }
                // I/O BARs decode 16 bits: the bits above count as set.
                let full = if io { bits | 0xffff_0000 } else { bits };
                let size = u64::from((!full).wrapping_add(1));
                let addr = u64::from(if io { value & !3 } else { value & !0xf });
                if addr != 0 {
                    regions.push((bar, io, addr, size));
                }
            }
            out.push(quern_monitor::PciFunction {
                slot,
                function,
                vendor: id as u16,
                device: (id >> 16) as u16,
                subsystem_vendor: sub as u16,
                subsystem: (sub >> 16) as u16,
                class: (bus.config_read(slot, function, 8) >> 16) as u16,
                irq: (pin != 0).then_some((irq as u8, pin)),
                regions,
            });
            // A single-function device answers for function 0 only.
            if function == 0 && bus.config_read(slot, 0, 0xc) >> 16 & 0x80 == 0 {
                break;
            }
        }
    }
    out
}
