//! What the user asked for: the machine's configuration, independent of the command
//! line that produced it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use quern_block::BlockBackend;

/// Where a character device's output goes.
pub type CharOut = Box<dyn Write + Send>;

/// QEMU's isa-debug-exit device: a write of v to `iobase` exits with (v << 1) | 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugExitConfig {
    pub iobase: u16,
    pub iosize: u16,
}

impl Default for DebugExitConfig {
    fn default() -> Self {
        DebugExitConfig { iobase: 0x501, iosize: 2 }
    }
}

/// What a drive holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    Disk,
    Cdrom,
}

/// A drive on the PIIX3 IDE controller (-hda, -cdrom, -drive if=ide, -device ide-hd/cd).
pub struct DriveConfig {
    /// The medium; `None` for a CD-ROM drive with no disc in it.
    pub backend: Option<Arc<dyn BlockBackend>>,
    pub media: Media,
    /// IDE channel: 0 primary (0x1f0, IRQ 14), 1 secondary (0x170, IRQ 15).
    pub bus: u8,
    /// 0 master, 1 slave.
    pub unit: u8,
    /// Boot priority (`bootindex=`), lowest first.
    pub bootindex: Option<u32>,
    /// The name QEMU would give it (ide0-hd0, ...), for messages and the monitor.
    pub id: String,
}

/// A network card on the PCI bus (-device e1000, -nic, -net nic).
pub struct NicConfig {
    /// The MAC address.
    pub mac: [u8; 6],
    /// The PCI device number (`addr=`); the first free slot when unset.
    pub slot: Option<u8>,
    /// Its backend (`netdev=`); a card without one has a dead wire.
    pub netdev: Option<quern_net::Netdev>,
    /// The option ROM firmware boots it with (iPXE's, for PXE), read in whole.
    pub rom: Option<Vec<u8>>,
    /// The name given by `id=` (or made up), for messages and the monitor.
    pub id: String,
}

/// One PC's configuration.
pub struct MachineConfig {
    /// Guest RAM in bytes (-m).
    pub ram_bytes: u64,
    /// Number of vCPUs (-smp).
    pub cpus: u32,
    /// Their arrangement (-smp sockets=,cores=,...): the APIC IDs follow it.
    pub topology: quern_core::Topology,
    /// Linux bzImage, vmlinux ELF or Multiboot kernel (-kernel).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Kernel command line (-append).
    pub append: String,
    /// Firmware image mapped below 4 GiB (-bios).
    pub bios: Option<PathBuf>,
    /// What the RTC adds to UTC, in seconds (`-rtc base=localtime`: the host's offset).
    pub rtc_offset_secs: i64,
    /// Start paused, waiting for the monitor's `cont` (-S).
    pub start_paused: bool,
    /// `-incoming`: wait for a saved state (`migrate-incoming`) before running.
    pub incoming: bool,
    /// Exit instead of resetting (-no-reboot).
    pub no_reboot: bool,
    /// Stop instead of exiting when the guest powers off (-no-shutdown); with
    /// `no_reboot`, a reset stops the machine too.
    pub no_shutdown: bool,
    /// COM1's output; `None` leaves COM1 present but unconnected.
    pub serial: Option<CharOut>,
    /// isa-debugcon's output at port 0xe9 (-debugcon).
    pub debugcon: Option<CharOut>,
    pub debug_exit: Option<DebugExitConfig>,
    /// IDE drives, at most one per (bus, unit).
    pub drives: Vec<DriveConfig>,
    /// Network cards (82540EM, "e1000").
    pub nics: Vec<NicConfig>,
    /// `-boot order=` (drive letters: c disk, d CD-ROM, n network), `None` for the
    /// firmware's default.
    pub boot_order: Option<String>,
    /// `-boot strict=on`: boot only what the boot order names.
    pub boot_strict: bool,
    /// `-boot menu=on`: the firmware offers its boot menu.
    pub boot_menu: bool,
    /// `-uuid`, in its written byte order; the firmware's SMBIOS shows it.
    pub uuid: [u8; 16],
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            ram_bytes: 128 << 20,
            cpus: 1,
            topology: quern_core::Topology::default(),
            kernel: None,
            initrd: None,
            append: String::new(),
            bios: None,
            rtc_offset_secs: 0,
            start_paused: false,
            incoming: false,
            no_reboot: false,
            no_shutdown: false,
            serial: None,
            debugcon: None,
            debug_exit: None,
            drives: Vec::new(),
            nics: Vec::new(),
            boot_order: None,
            boot_strict: false,
            boot_menu: false,
            uuid: [0; 16],
        }
    }
}
