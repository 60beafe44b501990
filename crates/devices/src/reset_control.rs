//! The PIIX3 Reset Control Register at port 0xcf9. Writing RST_CPU (bit 2) resets the
//! system; Linux's `reboot=pci` and many firmwares use it. It shares the 0xcf8 dword
//! with PCI CONFIG_ADDRESS, which claims only dword accesses.

use std::sync::Arc;

use quern_core::{BusDevice, MachineControl, MachineEvent};

use crate::port::{read_bytewise, write_bytewise};

/// System reset (hard reset when set with RST_CPU).
const SYS_RST: u8 = 1 << 1;
/// Reset the CPU: acts on the write, reads as 0.
const RST_CPU: u8 = 1 << 2;
/// Full reset (power cycle) when set with RST_CPU.
const FULL_RST: u8 = 1 << 3;

/// The reset control register (one port).
pub struct ResetControl {
    control: Arc<dyn MachineControl>,
    value: u8,
}

impl ResetControl {
    pub fn new(control: Arc<dyn MachineControl>) -> Self {
        ResetControl { control, value: 0 }
    }
}

quern_core::snapshot_fields!(ResetControl { value });

impl BusDevice for ResetControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, 1, |_| self.value);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, 1, |_, v| {
            self.value = v & (SYS_RST | FULL_RST);
            if v & RST_CPU != 0 {
                self.control.request(MachineEvent::Reset);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quern_core::events::RecordingControl;

    #[test]
    fn rst_cpu_resets_and_reads_as_zero() {
        let control = Arc::new(RecordingControl::default());
        let mut r = ResetControl::new(control.clone());
        r.write(0, &[SYS_RST]);
        assert!(control.events().is_empty());
        r.write(0, &[SYS_RST | RST_CPU | 0x80]);
        assert_eq!(control.events(), [MachineEvent::Reset]);
        let mut b = [0];
        r.read(0, &mut b);
        assert_eq!(b, [SYS_RST]);
    }

    #[test]
    fn snapshot_keeps_the_register() {
        use quern_core::snapshot::Snapshot;
        let mut r = ResetControl::new(Arc::new(RecordingControl::default()));
        r.write(0, &[FULL_RST | SYS_RST]);
        let mut s = ResetControl::new(Arc::new(RecordingControl::default()));
        crate::testutil::restore_into(&mut s, &r.save_state());
        let mut b = [0];
        s.read(0, &mut b);
        assert_eq!(b, [FULL_RST | SYS_RST]);
        crate::testutil::assert_refuses_malformed(&mut s, &[]);
    }
}
