//! What the user asked for: the machine's configuration, independent of the command
//! line that produced it.

use std::io::Write;
use std::path::PathBuf;

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

/// One PC's configuration.
pub struct MachineConfig {
    /// Guest RAM in bytes (-m).
    pub ram_bytes: u64,
    /// Number of vCPUs (-smp).
    pub cpus: u32,
    /// Linux bzImage, vmlinux ELF or Multiboot kernel (-kernel).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Kernel command line (-append).
    pub append: String,
    /// Firmware image mapped below 4 GiB (-bios).
    pub bios: Option<PathBuf>,
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
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            ram_bytes: 128 << 20,
            cpus: 1,
            kernel: None,
            initrd: None,
            append: String::new(),
            bios: None,
            no_reboot: false,
            no_shutdown: false,
            serial: None,
            debugcon: None,
            debug_exit: None,
        }
    }
}
