//! The command line, in QEMU's style so that existing scripts work.
//!
//! QEMU spells long options with one dash (`-kernel`, `-enable-kvm`); clap wants two.
//! [`normalize_args`] turns a single-dash long option we know into the double-dash form
//! before clap sees it, so both spellings work and short options (`-m`, `-s`, `-S`,
//! `-M`, `-d`) keep their meaning.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Default)]
#[command(
    name = "quern",
    version,
    about = "quern: a full-system PC emulator",
    long_about = "quern: a full-system PC emulator with a JIT (tcg) and a KVM accelerator.\n\
                  Options follow QEMU's: -kernel, -initrd, -append, -m, -accel kvm, -nographic, ...\n\
                  Ctrl-A x quits; Ctrl-A h lists the console keys."
)]
pub struct Args {
    /// Guest RAM: a number of MiB, or with a suffix (512M, 2G); also size=512M.
    #[arg(short = 'm', value_name = "SIZE", default_value = "128")]
    pub memory: String,
    /// Number of vCPUs: N or cpus=N.
    #[arg(long = "smp", value_name = "N", default_value = "1")]
    pub smp: String,
    /// Linux bzImage, vmlinux ELF (PVH), ELF64 or Multiboot kernel to boot directly.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk for -kernel.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for -kernel.
    #[arg(long, value_name = "CMDLINE", default_value = "")]
    pub append: String,
    /// Firmware image mapped below 4 GiB and run from the reset vector.
    #[arg(long, value_name = "FILE")]
    pub bios: Option<PathBuf>,
    /// Machine type and options: pc[,kernel-irqchip=on|off][,accel=kvm|tcg].
    #[arg(short = 'M', long = "machine", value_name = "TYPE[,OPTS]", default_value = "pc")]
    pub machine: String,
    /// Accelerator: tcg (the JIT, the default) or kvm.
    #[arg(long, value_name = "ACCEL")]
    pub accel: Option<String>,
    /// Same as -accel kvm.
    #[arg(long = "enable-kvm")]
    pub enable_kvm: bool,
    /// CPU model and feature flags, e.g. host,-xsave,-cx16 (with kvm).
    #[arg(long, value_name = "MODEL[,+FEAT|-FEAT...]")]
    pub cpu: Option<String>,
    /// No display: the serial port goes to the terminal.
    #[arg(long)]
    pub nographic: bool,
    /// Display backend: only "none" is supported.
    #[arg(long, value_name = "TYPE")]
    pub display: Option<String>,
    /// Where COM1 goes: stdio, none, or file:PATH.
    #[arg(long, value_name = "DEV")]
    pub serial: Vec<String>,
    /// Where the isa-debugcon port (0xe9) goes: stdio, none, or file:PATH.
    #[arg(long, value_name = "DEV")]
    pub debugcon: Option<String>,
    /// Exit instead of rebooting when the guest resets.
    #[arg(long = "no-reboot")]
    pub no_reboot: bool,
    /// Exit instead of shutting down (accepted; quern always exits on power-off).
    #[arg(long = "no-shutdown")]
    pub no_shutdown: bool,
    /// Add a device: isa-debug-exit[,iobase=0xf4][,iosize=0x04], isa-debugcon[,iobase=0xe9].
    #[arg(long, value_name = "DRIVER[,OPTS]")]
    pub device: Vec<String>,
    /// Network backend (not implemented yet).
    #[arg(long, value_name = "OPTS")]
    pub netdev: Vec<String>,
    /// Disk image on the first IDE channel (not implemented yet).
    #[arg(long)]
    pub hda: Option<PathBuf>,
    /// Disk image on the first IDE channel, slave (not implemented yet).
    #[arg(long)]
    pub hdb: Option<PathBuf>,
    /// CD-ROM image (not implemented yet).
    #[arg(long)]
    pub cdrom: Option<PathBuf>,
    /// Drive: file=...,format=...,if=... (not implemented yet).
    #[arg(long, value_name = "OPTS")]
    pub drive: Vec<String>,
    /// Wait for a gdb connection on tcp::1234 (not implemented yet).
    #[arg(short = 's')]
    pub gdb_default: bool,
    /// gdb stub address (not implemented yet).
    #[arg(long, value_name = "DEV")]
    pub gdb: Option<String>,
    /// Start with the CPU stopped (not implemented yet).
    #[arg(short = 'S')]
    pub start_stopped: bool,
    /// QMP monitor (not implemented yet).
    #[arg(long, value_name = "DEV")]
    pub qmp: Option<String>,
    /// Human monitor: only "none" is supported.
    #[arg(long, value_name = "DEV")]
    pub monitor: Option<String>,
    /// Log items, comma-separated: in_asm, int, cpu, exec, unimp, guest_errors, pio, mmio, trace (or a RUST_LOG filter).
    #[arg(short = 'd', value_name = "ITEMS")]
    pub log_items: Option<String>,
    /// Write the log to FILE instead of stderr.
    #[arg(short = 'D', value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// Long option names QEMU spells with one dash.
const LONG_OPTIONS: &[&str] = &[
    "smp",
    "kernel",
    "initrd",
    "append",
    "bios",
    "machine",
    "accel",
    "enable-kvm",
    "cpu",
    "nographic",
    "display",
    "serial",
    "debugcon",
    "no-reboot",
    "no-shutdown",
    "device",
    "netdev",
    "hda",
    "hdb",
    "cdrom",
    "drive",
    "gdb",
    "qmp",
    "monitor",
    "help",
    "version",
];

/// Rewrites `-kernel` as `--kernel` (and `-kernel=x` as `--kernel=x`) for every long
/// option we know; everything else passes through untouched.
pub fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut after_double_dash = false;
    for a in args {
        if after_double_dash {
            out.push(a);
            continue;
        }
        if a == "--" {
            after_double_dash = true;
        } else if let Some(rest) = a.strip_prefix('-').filter(|r| !r.starts_with('-')) {
            let name = rest.split('=').next().unwrap_or(rest);
            if LONG_OPTIONS.contains(&name) {
                out.push(format!("-{a}"));
                continue;
            }
        }
        out.push(a);
    }
    out
}

/// `key=value` options after a leading word: "pc,kernel-irqchip=off" → ("pc", [..]).
pub fn split_opts(s: &str) -> (&str, Vec<(&str, &str)>) {
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or("");
    let opts = parts.filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))).collect();
    (head, opts)
}

/// Parses a number as QEMU does: decimal, or hex with 0x.
pub fn parse_int(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(normalize_args(v.iter().map(|s| s.to_string())))
    }

    #[test]
    fn single_and_double_dash_long_options() {
        let a = parse(&["quern", "-kernel", "k", "--initrd", "i", "-enable-kvm", "-m", "512", "-append=x y"]).unwrap();
        assert_eq!(a.kernel.as_deref(), Some(std::path::Path::new("k")));
        assert_eq!(a.initrd.as_deref(), Some(std::path::Path::new("i")));
        assert!(a.enable_kvm);
        assert_eq!(a.memory, "512");
        assert_eq!(a.append, "x y");
    }

    #[test]
    fn short_options_keep_their_meaning() {
        let a = parse(&["quern", "-s", "-S", "-M", "pc,kernel-irqchip=off", "-d", "int"]).unwrap();
        assert!(a.gdb_default && a.start_stopped);
        assert_eq!(split_opts(&a.machine), ("pc", vec![("kernel-irqchip", "off")]));
        assert_eq!(a.log_items.as_deref(), Some("int"));
    }

    #[test]
    fn repeated_devices_and_hex_numbers() {
        let a =
            parse(&["quern", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-device", "isa-debugcon"]).unwrap();
        assert_eq!(a.device.len(), 2);
        assert_eq!(parse_int("0xf4"), Some(0xf4));
        assert_eq!(parse_int("12"), Some(12));
        assert_eq!(parse_int("zz"), None);
    }

    #[test]
    fn unknown_options_are_errors() {
        assert!(parse(&["quern", "-frobnicate"]).is_err());
    }
}
