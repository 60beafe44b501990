//! QEMU's isa-debug-exit: a test harness's way out. Writing `v` ends the emulator with
//! status `(v << 1) | 1`, so a guest can never fake a clean exit (status 0).

use std::sync::Arc;

use quern_core::{BusDevice, MachineControl, MachineEvent};

use crate::port::le_value;

/// The exit port; the machine picks where (QEMU's default is 0x501, 2 ports). A write
/// of 1, 2 or 4 bytes at any offset is taken as one little-endian value.
pub struct DebugExit {
    control: Arc<dyn MachineControl>,
}

impl DebugExit {
    pub fn new(control: Arc<dyn MachineControl>) -> Self {
        DebugExit { control }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let v = le_value(&data[..data.len().min(4)]);
        self.control.request(MachineEvent::Exit(((v << 1) | 1) as i32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quern_core::events::RecordingControl;

    #[test]
    fn write_exits_with_shifted_status() {
        let control = Arc::new(RecordingControl::default());
        let mut d = DebugExit::new(control.clone());
        d.write(0, &[0x10]);
        d.write(0, &[0x00, 0x01]);
        d.write(0, &0x7fff_ffffu32.to_le_bytes());
        let mut b = [0xaa; 4];
        d.read(0, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(control.events(), [MachineEvent::Exit(0x21), MachineEvent::Exit(0x201), MachineEvent::Exit(-1)]);
    }
}
