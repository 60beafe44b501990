//! The i440FX host bridge's memory-control registers: the seven PAM registers
//! (0x59-0x5f) that route each segment of 0xc0000-0xfffff to the BIOS ROM or to
//! shadow RAM, and SMRAM (0x72), kept closed.
//!
//! The bridge only keeps the registers: the machine owns the memory map and is told
//! of every PAM change through a listener (firmware copies itself into shadow RAM and
//! write-protects it through these, and expects the change to take effect at once).

use quern_core::snapshot::{Snapshot, State};

use super::{i440fx_host_bridge, ConfigSpace, PciDevice};

/// First PAM register; PAM0 bits 5:4 cover 0xf0000-0xfffff, then each of PAM1-PAM6
/// holds two 16 KiB segments from 0xc0000 up, low nibble first.
pub const PAM0: u8 = 0x59;
pub const PAM_REGS: usize = 7;
/// SMRAM control: C_BASE_SEG reads 010 (SMRAM at 0xa0000); D_OPEN never sets, so SMRAM
/// is never visible outside SMM (quern has no SMM).
pub const SMRAM: u8 = 0x72;
/// D_CLS, D_LCK and G_SMRAME (bits 5:3) are kept for firmware to read back; D_OPEN
/// (bit 6) is not writable.
const SMRAM_WRITABLE: u8 = 0x38;

/// What a PAM segment's two bits say: read enable (reads from RAM, else ROM/PCI) and
/// write enable (writes to RAM, else to ROM/PCI, where they are lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PamMode {
    pub read_ram: bool,
    pub write_ram: bool,
}

/// The 13 segments PAM controls: (guest base, size), in the order of [`pam_modes`].
pub const PAM_SEGMENTS: [(u64, u64); 13] = {
    let mut s = [(0xf0000u64, 0x10000u64); 13];
    let mut i = 0;
    while i < 12 {
        s[i + 1] = (0xc0000 + 0x4000 * i as u64, 0x4000);
        i += 1;
    }
    s
};

/// Each segment's mode from the PAM register values (PAM0 first).
pub fn pam_modes(regs: &[u8; PAM_REGS]) -> [PamMode; 13] {
    let mode = |nibble: u8| PamMode { read_ram: nibble & 1 != 0, write_ram: nibble & 2 != 0 };
    let mut m = [mode(regs[0] >> 4); 13];
    for i in 0..12 {
        let r = regs[1 + i / 2];
        m[i + 1] = mode(if i % 2 == 0 { r & 0xf } else { r >> 4 });
    }
    m
}

/// Told the PAM register values whenever they may have changed.
pub type PamListener = Box<dyn FnMut(&[u8; PAM_REGS]) + Send>;

/// The host bridge function: its configuration space and the PAM listener.
pub struct I440fx {
    config: ConfigSpace,
    listener: Option<PamListener>,
}

impl Default for I440fx {
    fn default() -> Self {
        Self::new()
    }
}

impl I440fx {
    pub fn new() -> Self {
        let mut config = i440fx_host_bridge();
        config.set_writable(SMRAM, &[SMRAM_WRITABLE]);
        I440fx { config, listener: None }
    }

    /// The PAM registers, PAM0 first.
    pub fn pam(&self) -> [u8; PAM_REGS] {
        std::array::from_fn(|i| self.config.u8(PAM0 + i as u8))
    }

    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// Installs the listener and tells it the current state.
    pub fn set_pam_listener(&mut self, listener: PamListener) {
        self.listener = Some(listener);
        self.tell_listener();
    }

    fn tell_listener(&mut self) {
        let pam = self.pam();
        if let Some(l) = &mut self.listener {
            l(&pam);
        }
    }

    /// Power-on state: PAM all zero (every segment reads and writes the ROM side).
    pub fn reset(&mut self) {
        let listener = self.listener.take();
        *self = I440fx::new();
        if let Some(l) = listener {
            self.set_pam_listener(l);
        }
    }
}

/// The configuration space, PAM and SMRAM among it. A restore tells the PAM listener,
/// so the machine's memory views follow the restored registers.
impl Snapshot for I440fx {
    fn save_state(&self) -> State {
        self.config.save_state()
    }

    fn restore_state(&mut self, state: &State) -> Result<(), String> {
        self.config.restore_state(state)?;
        self.tell_listener();
        Ok(())
    }
}

impl PciDevice for I440fx {
    fn config_read(&mut self, reg: u16) -> u32 {
        self.config.config_read(reg)
    }

    fn config_write(&mut self, reg: u16, value: u32, mask: u32) {
        let before = self.pam();
        self.config.config_write(reg, value, mask);
        if self.pam() != before {
            self.tell_listener();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn segments_and_modes() {
        assert_eq!(PAM_SEGMENTS[0], (0xf0000, 0x10000));
        assert_eq!(PAM_SEGMENTS[1], (0xc0000, 0x4000));
        assert_eq!(PAM_SEGMENTS[12], (0xec000, 0x4000));
        let m = pam_modes(&[0x30, 0x31, 0, 0, 0, 0, 0x12]);
        assert_eq!(m[0], PamMode { read_ram: true, write_ram: true });
        assert_eq!(m[1], PamMode { read_ram: true, write_ram: false }, "0xc0000: low nibble");
        assert_eq!(m[2], PamMode { read_ram: true, write_ram: true }, "0xc4000: high nibble");
        assert_eq!(m[3], PamMode { read_ram: false, write_ram: false });
        assert_eq!(m[11], PamMode { read_ram: false, write_ram: true }, "0xe8000");
        assert_eq!(m[12], PamMode { read_ram: true, write_ram: false }, "0xec000");
    }

    #[test]
    fn listener_sees_pam_changes_and_reset() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut h = I440fx::new();
        let s = seen.clone();
        h.set_pam_listener(Box::new(move |p| s.lock().unwrap().push(*p)));
        // Dword write at 0x58 covering PAM0-PAM2 (byte 0x58 is not PAM).
        h.config_write(0x58, 0x3333_3000, 0xffff_ffff);
        // A write that changes nothing is not reported.
        h.config_write(0x58, 0x3333_3000, 0xffff_ffff);
        h.config_write(0x5c, 0x1111_1111, 0xffff_ffff);
        assert_eq!(h.config_read(0x58), 0x3333_3000);
        h.reset();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "{seen:x?}");
        assert_eq!(seen[0], [0; 7]);
        assert_eq!(seen[1], [0x30, 0x33, 0x33, 0, 0, 0, 0]);
        assert_eq!(seen[2], [0x30, 0x33, 0x33, 0x11, 0x11, 0x11, 0x11]);
        assert_eq!(seen[3], [0; 7], "reset returns to ROM");
    }

    #[test]
    fn snapshot_tells_the_listener_the_restored_pam() {
        let mut h = I440fx::new();
        h.config_write(0x58, 0x3311_3000, 0xffff_ffff);
        h.config_write(0x70, 0x38 << 16, 0xff << 16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut g = I440fx::new();
        let s = seen.clone();
        g.set_pam_listener(Box::new(move |p| s.lock().unwrap().push(*p)));
        crate::testutil::restore_into(&mut g, &h.save_state());
        assert_eq!(*seen.lock().unwrap(), [[0; 7], [0x30, 0x11, 0x33, 0, 0, 0, 0]]);
        assert_eq!(g.config_read(0x70), h.config_read(0x70), "SMRAM");
        let mut other = i440fx_host_bridge();
        other.set_u16(0x02, 0x7000);
        assert!(g.restore_state(&other.save_state()).is_err(), "another device's state");
        crate::testutil::assert_refuses_malformed(&mut g, &["/bytes"]);
        assert_eq!(seen.lock().unwrap().len(), 2, "a refused state tells the listener nothing");
    }

    #[test]
    fn smram_stays_closed() {
        let mut h = I440fx::new();
        h.config_write(0x70, 0xff << 16, 0xff << 16);
        let smram = (h.config_read(0x70) >> 16) as u8;
        assert_eq!(smram & 0x40, 0, "D_OPEN never sets");
        assert_eq!(smram, 0x3a, "C_BASE_SEG 010 plus the kept bits");
    }
}
