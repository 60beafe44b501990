//! The PIIX3 IDE controller, PCI function 00:01.1 (8086:7010), with its drives: ATA
//! disks and ATAPI CD-ROMs, two per channel, PIO through the legacy ports and
//! bus-master DMA through BAR4.
//!
//! | channel | command block | control block | IRQ |
//! | --- | --- | --- | --- |
//! | primary (0) | 0x1f0-0x1f7 | 0x3f6 | 14 |
//! | secondary (1) | 0x170-0x177 | 0x376 | 15 |
//!
//! The function runs in legacy mode (programming interface 0x80, as on QEMU's `pc`):
//! the channels stay at their ISA ports and IRQs whatever the guest does. BAR4 holds the
//! bus-master registers, 8 ports per channel; they move when the guest programs BAR4,
//! so the machine reaches them through [`PciDevice::io_read`]/[`PciDevice::io_write`],
//! which it calls for ports no fixed device claims. They decode while the command
//! register's I/O bit is set; DMA needs its bus-master bit.
//!
//! Modules: `channel` (task file, status, interrupts, the data port, SRST, command
//! dispatch), `drive` (one device's registers, addressing, geometry), `ata` (the ATA
//! command set and IDENTIFY), `atapi` (a CD-ROM's packet commands), `bmdma` (bus-master
//! registers, PRD tables, DMA through guest memory).
//!
//! Commands complete within the port access that starts them (I/O on the medium is
//! synchronous), so a guest sees BSY only while it holds SRST. What a guest can read
//! about a drive (model, serial, firmware revision, IDENTIFY and INQUIRY data, sense
//! codes) follows QEMU, so guests meet the same drives under both.
//!
//! The monitor changes a CD-ROM's medium through [`PiixIde::eject`],
//! [`PiixIde::insert`] and the tray operations beside them; [`PiixIde::tray`] reports
//! the tray.

mod ata;
mod atapi;
mod bmdma;
mod channel;
mod drive;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use quern_block::BlockBackend;
use quern_core::bus::SharedDevice;
use quern_core::snapshot::{Snapshot, State};
use quern_core::{GuestMemory, IrqLine};
use thiserror::Error;

use crate::pci::{BarKind, ConfigSpace, PciDevice};
use crate::port::{read_bytewise, write_bytewise, PortGroup, PortWindow};
use crate::snapshot::{parts_state, restored, restored_parts};
use channel::Channel;
use drive::Drive;

pub use drive::{bios_translation, guess_geometry, Chs};

/// Where the function sits on bus 0: device 1 (PIIX3), function 1.
pub const PCI_DEVICE: u8 = 1;
pub const PCI_FUNCTION: u8 = 1;
/// Each channel's command block, control block (device control / alternate status)
/// and ISA IRQ.
pub const CHANNELS: [(u16, u16, u8); 2] = [(0x1f0, 0x3f6, 14), (0x170, 0x376, 15)];
/// Ports in BAR4: the bus-master registers of both channels.
pub const BM_PORTS: u16 = 16;
/// Configuration register of the primary channel's IDE timing (IDETIM); the
/// secondary's follows at +2. Bit 15 enables the channel's decode.
pub const IDETIM: u8 = 0x40;

/// What a drive holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveKind {
    /// An ATA hard disk ("QEMU HARDDISK").
    Disk,
    /// An ATAPI CD/DVD-ROM drive ("QEMU DVD-ROM"), 2048-byte sectors.
    Cdrom,
}

/// A drive to attach.
pub struct IdeDriveConfig {
    /// The medium; `None` only for a CD-ROM drive with no disc in it.
    pub backend: Option<Arc<dyn BlockBackend>>,
    pub kind: DriveKind,
    /// Channel: 0 primary, 1 secondary.
    pub bus: u8,
    /// 0 master, 1 slave.
    pub unit: u8,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdeError {
    #[error("IDE bus {bus} unit {unit} does not exist (bus 0-1, unit 0-1)")]
    BadPosition { bus: u8, unit: u8 },
    #[error("IDE bus {bus} unit {unit} has two drives; give each drive its own index")]
    Taken { bus: u8, unit: u8 },
    #[error("IDE bus {bus} unit {unit}: a hard disk needs a medium")]
    DiskWithoutMedium { bus: u8, unit: u8 },
    #[error("IDE bus {bus} unit {unit} holds no CD-ROM drive")]
    NotCdrom { bus: u8, unit: u8 },
}

/// Why a media operation was refused. The messages are QEMU's, without the device's
/// name: they read on from "Device 'ide1-cd0' ".
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MediaError {
    #[error("does not exist (no drive at IDE bus {bus} unit {unit})")]
    NoDrive { bus: u8, unit: u8 },
    /// A hard disk.
    #[error("is not removable")]
    NotRemovable,
    /// The guest prevents medium removal; it was asked to eject (GESN eject request).
    #[error("is locked and force was not specified, wait for tray to open and try again")]
    Locked,
    #[error("has its tray closed (open it first)")]
    TrayClosed,
    #[error("already has a medium (remove it first)")]
    MediumPresent,
}

/// A CD-ROM drive's tray as the monitor reports it (QMP query-block's `tray_open`,
/// `locked`, and whether a medium is inserted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrayState {
    pub tray_open: bool,
    /// The guest prevents medium removal (PREVENT ALLOW MEDIUM REMOVAL).
    pub locked: bool,
    /// A medium is in the drive (on the tray, if it is open).
    pub inserted: bool,
}

/// The controller: the PCI function and both channels. One lock covers the legacy
/// ports, configuration space and bus-master registers.
pub struct PiixIde {
    config: ConfigSpace,
    channels: [Channel; 2],
}

/// The function's configuration space at power-on.
fn config_space() -> ConfigSpace {
    let mut c = ConfigSpace::new(0x8086, 0x7010, [0x01, 0x01, 0x80], 0x00);
    // Status: medium DEVSEL timing, fast back-to-back capable (read-only).
    c.set_u16(0x06, 0x0280);
    c.add_bar(4, u32::from(BM_PORTS), BarKind::Io);
    // IDETIM (primary, secondary) and SIDETIM: timings the guest programs and reads
    // back; they do not change how the model behaves.
    c.set_writable(IDETIM, &[0xff; 5]);
    // The decode-enable bits start set, unlike the chip's zero: firmware sets them
    // (SeaBIOS writes 0x8000 to both), and Linux's ata_piix skips a channel whose bit
    // is clear, which would lose the disks when a kernel is booted without firmware.
    c.set_u16(IDETIM, 0x8000);
    c.set_u16(IDETIM + 2, 0x8000);
    c
}

impl PiixIde {
    /// The controller with `drives`, DMA into `mem`, and each channel's interrupt line
    /// (ISA IRQ 14 and 15 on the PC).
    pub fn new(
        mem: Arc<GuestMemory>,
        irqs: [Arc<dyn IrqLine>; 2],
        drives: Vec<IdeDriveConfig>,
    ) -> Result<Self, IdeError> {
        let [irq0, irq1] = irqs;
        let mut channels = [Channel::new(mem.clone(), irq0), Channel::new(mem, irq1)];
        for d in drives {
            let (bus, unit) = (d.bus, d.unit);
            if bus > 1 || unit > 1 {
                return Err(IdeError::BadPosition { bus, unit });
            }
            let slot = &mut channels[usize::from(bus)].drives[usize::from(unit)];
            if slot.present {
                return Err(IdeError::Taken { bus, unit });
            }
            if d.kind == DriveKind::Disk && d.backend.is_none() {
                return Err(IdeError::DiskWithoutMedium { bus, unit });
            }
            // QEMU numbers its IDE drives in bus order: QM00001 is the primary master.
            let serial = format!("QM{:05}", 1 + 2 * u32::from(bus) + u32::from(unit));
            *slot = Drive::new(d.kind, d.backend, serial);
        }
        let mut ide = PiixIde { config: config_space(), channels };
        ide.reset();
        Ok(ide)
    }

    /// A system reset: both channels and their drives return to the power-on state
    /// (media stay), the configuration space too (BAR4 unassigned, decoding off).
    pub fn reset(&mut self) {
        self.config = config_space();
        for c in &mut self.channels {
            c.power_on_reset();
        }
        self.sync_bus_master();
    }

    /// The drive at `bus`/`unit`, if one is attached.
    fn drive(&self, bus: u8, unit: u8) -> Option<&Drive> {
        let d = self.channels.get(usize::from(bus))?.drives.get(usize::from(unit))?;
        d.present.then_some(d)
    }

    /// The channel of the CD-ROM drive at `bus`/`unit`.
    fn cdrom_channel(&mut self, bus: u8, unit: u8) -> Result<&mut Channel, MediaError> {
        match self.drive(bus, unit).map(|d| d.kind) {
            None => Err(MediaError::NoDrive { bus, unit }),
            Some(DriveKind::Disk) => Err(MediaError::NotRemovable),
            Some(DriveKind::Cdrom) => Ok(&mut self.channels[usize::from(bus)]),
        }
    }

    /// The tray of the CD-ROM drive at `bus`/`unit`; `None` for a disk or an empty slot.
    pub fn tray(&self, bus: u8, unit: u8) -> Option<TrayState> {
        let d = self.drive(bus, unit).filter(|d| d.kind == DriveKind::Cdrom)?;
        Some(TrayState { tray_open: d.atapi.tray_open, locked: d.atapi.tray_locked, inserted: d.backend.is_some() })
    }

    /// The medium in the drive at `bus`/`unit`: a disk's, or a CD-ROM's (also on an
    /// open tray).
    pub fn medium(&self, bus: u8, unit: u8) -> Option<Arc<dyn BlockBackend>> {
        self.drive(bus, unit)?.backend.clone()
    }

    // The media operations follow QEMU's block layer and its IDE callbacks (QMP
    // blockdev-open-tray, -close-tray, -remove-medium, -insert-medium; eject and
    // blockdev-change-medium are made of them). Each event raises the channel's
    // interrupt, as QEMU does: guests learn what happened from GESN and sense codes.

    /// Opens the tray of the CD-ROM drive at `bus`/`unit` (the medium stays on it).
    /// While the guest prevents removal this needs `force`, which unlocks it; without
    /// it the guest is asked to eject (a GESN eject request, as from the drive's
    /// button) and the call fails with [`MediaError::Locked`].
    pub fn open_tray(&mut self, bus: u8, unit: u8, force: bool) -> Result<(), MediaError> {
        let c = self.cdrom_channel(bus, unit)?;
        let a = &mut c.drives[usize::from(unit)].atapi;
        if a.tray_open {
            return Ok(());
        }
        let refused = a.tray_locked && !force;
        if refused {
            a.eject_request = true;
        } else {
            a.tray_locked = false;
            a.tray_moved(true);
        }
        c.raise_irq();
        if refused {
            Err(MediaError::Locked)
        } else {
            Ok(())
        }
    }

    /// Shuts the tray: GESN reports new media, and with a medium in, the next
    /// command gets NOT READY, then UNIT ATTENTION (medium may have changed).
    pub fn close_tray(&mut self, bus: u8, unit: u8) -> Result<(), MediaError> {
        let c = self.cdrom_channel(bus, unit)?;
        let a = &mut c.drives[usize::from(unit)].atapi;
        if a.tray_open {
            a.tray_moved(false);
            c.raise_irq();
        }
        Ok(())
    }

    /// Takes the medium off the open tray (nothing to do without one).
    pub fn remove_medium(&mut self, bus: u8, unit: u8) -> Result<(), MediaError> {
        let c = self.cdrom_channel(bus, unit)?;
        let d = &mut c.drives[usize::from(unit)];
        if !d.atapi.tray_open {
            return Err(MediaError::TrayClosed);
        }
        if d.backend.take().is_some() {
            d.atapi.media_removal = true;
            c.raise_irq();
        }
        Ok(())
    }

    /// Puts `medium` on the open, empty tray; the guest sees it once the tray shuts.
    pub fn insert_medium(&mut self, bus: u8, unit: u8, medium: Arc<dyn BlockBackend>) -> Result<(), MediaError> {
        let d = &mut self.cdrom_channel(bus, unit)?.drives[usize::from(unit)];
        if !d.atapi.tray_open {
            return Err(MediaError::TrayClosed);
        }
        if d.backend.is_some() {
            return Err(MediaError::MediumPresent);
        }
        d.backend = Some(medium);
        Ok(())
    }

    /// QMP `eject`: opens the tray (see [`PiixIde::open_tray`] for `force`) and takes
    /// the medium out. The tray stays open.
    pub fn eject(&mut self, bus: u8, unit: u8, force: bool) -> Result<(), MediaError> {
        self.open_tray(bus, unit, force)?;
        self.remove_medium(bus, unit)
    }

    /// QMP `blockdev-change-medium` (HMP `change`): opens the tray, replaces the
    /// medium with `medium` and shuts the tray. Refused while the guest locks the
    /// tray; [`PiixIde::eject`] with `force` first overrides that.
    pub fn insert(&mut self, bus: u8, unit: u8, medium: Arc<dyn BlockBackend>) -> Result<(), MediaError> {
        self.open_tray(bus, unit, false)?;
        self.remove_medium(bus, unit)?;
        self.insert_medium(bus, unit, medium)?;
        self.close_tray(bus, unit)
    }

    /// A forced change in one step: `Some` is [`PiixIde::insert`] after a forced
    /// eject, `None` a forced [`PiixIde::eject`].
    pub fn change_medium(
        &mut self,
        bus: u8,
        unit: u8,
        medium: Option<Arc<dyn BlockBackend>>,
    ) -> Result<(), MediaError> {
        self.eject(bus, unit, true)?;
        match medium {
            Some(m) => self.insert(bus, unit, m),
            None => Ok(()),
        }
    }

    /// Where BAR4 decodes, if the guest enabled I/O and gave it an address.
    fn sync_bus_master(&mut self) {
        let on = self.config.u8(0x04) & 0x04 != 0;
        for c in &mut self.channels {
            c.bus_master = on;
        }
    }
}

/// The function's configuration space (BAR4, command register) and both channels,
/// with each CD-ROM's tray, lock and changes still to report; the media themselves
/// are not in it and stay as attached.
impl Snapshot for PiixIde {
    fn save_state(&self) -> State {
        serde_json::json!({ "config": self.config.save_state(), "channels": parts_state(&self.channels) })
    }

    fn restore_state(&mut self, state: &State) -> Result<(), String> {
        let config = restored(&self.config, state, "config")?;
        self.channels = restored_parts(&self.channels, state, "channels")?;
        self.config = config;
        self.sync_bus_master();
        self.channels.iter().for_each(Channel::sync_irq);
        Ok(())
    }
}

/// The legacy ports of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdeWindow {
    /// Command block (8 ports): data, error/features, sector count, LBA low/mid/high,
    /// device, status/command.
    Command(u8),
    /// Control block (1 port): alternate status / device control.
    Control(u8),
}

impl PortGroup for PiixIde {
    type Window = IdeWindow;

    fn window_read(&mut self, window: IdeWindow, offset: u64, data: &mut [u8]) {
        match window {
            IdeWindow::Command(ch) => {
                let c = &mut self.channels[usize::from(ch & 1)];
                if offset == 0 && data.len() >= 2 {
                    c.data_read(data);
                } else {
                    read_bytewise(offset, data, 8, |off| c.read_reg(off as u8));
                }
            }
            IdeWindow::Control(ch) => {
                let c = &self.channels[usize::from(ch & 1)];
                read_bytewise(offset, data, 1, |_| c.alt_status());
            }
        }
    }

    fn window_write(&mut self, window: IdeWindow, offset: u64, data: &[u8]) {
        match window {
            IdeWindow::Command(ch) => {
                let c = &mut self.channels[usize::from(ch & 1)];
                if offset == 0 && data.len() >= 2 {
                    c.data_write(data);
                } else {
                    write_bytewise(offset, data, 8, |off, v| c.write_reg(off as u8, v));
                }
            }
            IdeWindow::Control(ch) => {
                let c = &mut self.channels[usize::from(ch & 1)];
                write_bytewise(offset, data, 1, |_, v| c.write_control(v));
            }
        }
    }
}

impl PciDevice for PiixIde {
    fn config_read(&mut self, reg: u16) -> u32 {
        self.config.config_read(reg)
    }

    fn config_write(&mut self, reg: u16, value: u32, mask: u32) {
        self.config.config_write(reg, value, mask);
        self.sync_bus_master();
    }

    fn io_read(&mut self, port: u16, data: &mut [u8]) -> bool {
        let Some(off) = self.config.bar_offset(4, u64::from(port), u64::from(BM_PORTS)) else { return false };
        let channels = &mut self.channels;
        read_bytewise(off, data, u64::from(BM_PORTS), |o| channels[(o / 8) as usize].bm.read(o % 8));
        true
    }

    fn io_write(&mut self, port: u16, data: &[u8]) -> bool {
        let Some(off) = self.config.bar_offset(4, u64::from(port), u64::from(BM_PORTS)) else { return false };
        let channels = &mut self.channels;
        write_bytewise(off, data, u64::from(BM_PORTS), |o, v| channels[(o / 8) as usize].bm_write(o % 8, v));
        true
    }
}

/// The legacy ports as bus devices with their base ports and lengths. BAR4's
/// registers are not among them: they move with the BAR (see [`PciDevice::io_read`]).
pub fn ide_bus_devices(ide: &Arc<Mutex<PiixIde>>) -> Vec<(SharedDevice, u64, u64)> {
    let mut v = Vec::new();
    for (ch, (cmd, ctrl, _)) in CHANNELS.iter().enumerate() {
        let ch = ch as u8;
        v.push((PortWindow::shared(ide, IdeWindow::Command(ch)), u64::from(*cmd), 8));
        v.push((PortWindow::shared(ide, IdeWindow::Control(ch)), u64::from(*ctrl), 1));
    }
    v
}
