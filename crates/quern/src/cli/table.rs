//! QEMU's option table: every option `qemu-system-x86_64` knows, whether it takes an
//! argument, and what quern does with it.
//!
//! The argument flags were read off QEMU 7.2 (`qemu-options.hx`), so that an option we
//! do not implement still consumes its argument exactly as QEMU would and can be
//! refused by name instead of being mis-parsed.

/// What quern does with an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Implemented: the parser turns it into part of [`super::Options`].
    Yes,
    /// Accepted with no effect: it changes nothing a guest can see and management
    /// tools pass it routinely (display-only settings, names, sandboxing off).
    Ignored,
    /// Known to QEMU, not built in quern yet; refused with this note.
    NotYet(&'static str),
}

/// One option: its name without the leading dash, and whether it takes an argument.
#[derive(Clone, Copy, Debug)]
pub struct OptionDef {
    pub name: &'static str,
    pub takes_arg: bool,
    pub support: Support,
}

const fn opt(name: &'static str, takes_arg: bool, support: Support) -> OptionDef {
    OptionDef { name, takes_arg, support }
}

use Support::{Ignored, NotYet, Yes};

const DISKS: Support = NotYet("quern has IDE disks and CD-ROMs only (-hda, -cdrom, -drive if=ide)");
const MONITOR: Support = NotYet("the monitor and QMP come with the management work");
const DISPLAY: Support = NotYet("quern has no graphical display; use -nographic or -display none");

/// Every option of QEMU 7.2's x86 system emulator, plus the aliases scripts use.
pub const OPTIONS: &[OptionDef] = &[
    // Help and version.
    opt("h", false, Yes),
    opt("help", false, Yes),
    opt("version", false, Yes),
    // The machine.
    opt("machine", true, Yes),
    opt("M", true, Yes),
    opt("cpu", true, Yes),
    opt("accel", true, Yes),
    opt("enable-kvm", false, Yes),
    opt("smp", true, Yes),
    opt("m", true, Yes),
    opt("numa", true, NotYet("NUMA topologies are not modelled")),
    opt("mem-path", true, NotYet("file-backed guest RAM is not built")),
    opt("mem-prealloc", false, NotYet("preallocated guest RAM is not built")),
    opt("add-fd", true, Yes),
    opt("set", true, NotYet("-set needs QEMU's configuration groups")),
    opt("global", true, NotYet("device property defaults are not built")),
    opt("boot", true, Yes),
    opt("device", true, Yes),
    opt("object", true, Yes),
    opt("name", true, Yes),
    opt("uuid", true, Yes),
    opt("readconfig", true, NotYet("configuration files are not read")),
    opt("no-user-config", false, Ignored),
    opt("nodefaults", false, Yes),
    opt("compat", true, Ignored),
    opt("preconfig", false, MONITOR),
    opt("S", false, Yes),
    opt("overcommit", true, Yes),
    opt("L", true, Yes),
    opt("bios", true, Yes),
    opt("pflash", true, NotYet("flash firmware images come with the firmware work")),
    opt("option-rom", true, NotYet("option ROMs come with the firmware work")),
    opt("fw_cfg", true, NotYet("fw_cfg comes with the firmware work")),
    opt("acpitable", true, NotYet("extra ACPI tables are not loaded")),
    opt("smbios", true, NotYet("SMBIOS comes with the firmware work")),
    opt("no-acpi", false, NotYet("a machine without ACPI is not built")),
    opt("no-hpet", false, Ignored),
    opt("rtc", true, Yes),
    opt("icount", true, NotYet("instruction counting is not built")),
    opt("seed", true, NotYet("a seeded random source is not built")),
    opt("action", true, NotYet("-action is not built; -no-reboot and -no-shutdown are")),
    opt("watchdog-action", true, NotYet("watchdog devices are not built")),
    opt("sandbox", true, Yes),
    opt("runas", true, NotYet("dropping privileges is not built")),
    opt("chroot", true, NotYet("chroot is not built")),
    opt("msg", true, Ignored),
    opt("async-teardown", false, Ignored),
    opt("enable-sync-profile", false, Ignored),
    opt("only-migratable", false, NotYet("migration is not built")),
    opt("incoming", true, Yes),
    opt("loadvm", true, NotYet("snapshots are not built")),
    opt("dump-vmstate", true, NotYet("migration is not built")),
    opt("xen-domid", true, NotYet("Xen is not supported")),
    opt("xen-attach", false, NotYet("Xen is not supported")),
    opt("xen-domid-restrict", false, NotYet("Xen is not supported")),
    opt("tpmdev", true, NotYet("TPM devices are not built")),
    // Direct kernel boot.
    opt("kernel", true, Yes),
    opt("initrd", true, Yes),
    opt("append", true, Yes),
    opt("dtb", true, NotYet("device trees are not used on a PC")),
    // Disks.
    opt("fda", true, DISKS),
    opt("fdb", true, DISKS),
    opt("hda", true, Yes),
    opt("hdb", true, Yes),
    opt("hdc", true, Yes),
    opt("hdd", true, Yes),
    opt("cdrom", true, Yes),
    opt("drive", true, Yes),
    opt("blockdev", true, Yes),
    opt("snapshot", false, Yes),
    opt("mtdblock", true, DISKS),
    opt("sd", true, DISKS),
    opt("iscsi", true, DISKS),
    opt("fsdev", true, NotYet("9p file sharing is not built")),
    opt("virtfs", true, NotYet("9p file sharing is not built")),
    // Network.
    opt("netdev", true, Yes),
    opt("nic", true, Yes),
    opt("net", true, Yes),
    // Character devices, monitor, debugging.
    opt("chardev", true, Yes),
    opt("serial", true, Yes),
    opt("parallel", true, Yes),
    opt("debugcon", true, Yes),
    opt("monitor", true, Yes),
    opt("qmp", true, Yes),
    opt("qmp-pretty", true, MONITOR),
    opt("mon", true, Yes),
    opt("echr", true, NotYet("changing the Ctrl-A escape key is not built")),
    opt("pidfile", true, Yes),
    opt("daemonize", false, Yes),
    opt("gdb", true, NotYet("the gdb stub is not built")),
    opt("s", false, NotYet("the gdb stub is not built")),
    opt("d", true, Yes),
    opt("D", true, Yes),
    opt("dfilter", true, NotYet("log address filters are not built")),
    opt("trace", true, NotYet("QEMU trace events do not exist in quern; use -d or RUST_LOG")),
    opt("plugin", true, NotYet("TCG plugins are not supported")),
    opt("singlestep", false, NotYet("one-instruction blocks are not built")),
    opt("no-reboot", false, Yes),
    opt("no-shutdown", false, Yes),
    // Display, audio, USB.
    opt("nographic", false, Yes),
    opt("display", true, Yes),
    opt("vga", true, Yes),
    opt("vnc", true, DISPLAY),
    opt("spice", true, DISPLAY),
    opt("full-screen", false, DISPLAY),
    opt("portrait", false, DISPLAY),
    opt("rotate", true, DISPLAY),
    opt("k", true, Ignored),
    opt("win2k-hack", false, DISKS),
    opt("no-fd-bootchk", false, DISKS),
    opt("audio", true, NotYet("audio devices are not built")),
    opt("audiodev", true, Yes),
    opt("audio-help", false, NotYet("audio devices are not built")),
    opt("usb", false, NotYet("USB is not built")),
    opt("usbdevice", true, NotYet("USB is not built")),
    opt("watchdog", true, NotYet("watchdog devices are not built")),
    opt("qtest", true, NotYet("qtest is not supported")),
    opt("qtest-log", true, NotYet("qtest is not supported")),
];

/// Looks an option up by its name without dashes.
pub fn lookup(name: &str) -> Option<&'static OptionDef> {
    OPTIONS.iter().find(|o| o.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, a) in OPTIONS.iter().enumerate() {
            assert!(OPTIONS[i + 1..].iter().all(|b| b.name != a.name), "{} listed twice", a.name);
        }
    }

    #[test]
    fn arguments_as_qemu_takes_them() {
        // A sample checked against qemu-system-x86_64 7.2 ("requires an argument").
        for name in ["m", "smp", "name", "boot", "rtc", "icount", "vga", "vnc", "chardev", "pidfile", "nic", "net"] {
            assert!(lookup(name).unwrap().takes_arg, "-{name} takes an argument");
        }
        for name in ["daemonize", "nodefaults", "snapshot", "usb", "S", "s", "no-reboot", "enable-kvm"] {
            assert!(!lookup(name).unwrap().takes_arg, "-{name} is a flag");
        }
    }
}
