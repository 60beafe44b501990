//! The i8042 PS/2 controller (data port 0x60, status/command port 0x64) with an AT
//! keyboard behind it and an empty aux (mouse) port.
//!
//! Its reset line is how many guests reboot: command 0xFE (pulse output line 0), or
//! a write of the output port with bit 0 clear, asks the machine for a reset. The
//! output buffer is a short queue; IRQ1 (keyboard bytes) and IRQ12 (aux bytes) are
//! high while the byte at its head is theirs and the command byte enables them, and
//! drop for an instant on every read so each byte is a fresh edge at the PIC.
//!
//! No mouse is attached: commands for it (0xD4) are answered with 0xFE (resend) on the
//! aux channel, so Linux's psmouse probe gives up at once instead of timing out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use quern_core::bus::SharedDevice;
use quern_core::{IrqLine, MachineControl, MachineEvent};
use serde::{Deserialize, Serialize};

use crate::port::{read_bytewise, write_bytewise, LogOnce, PortGroup, PortWindow};

const STATUS_OBF: u8 = 0x01;
const STATUS_SYS: u8 = 0x04;
const STATUS_CMD: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX: u8 = 0x20;

const CTR_KBD_INT: u8 = 0x01;
const CTR_AUX_INT: u8 = 0x02;
const CTR_SYS: u8 = 0x04;
const CTR_KBD_DISABLE: u8 = 0x10;
const CTR_AUX_DISABLE: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;

/// Output port bit 0: the CPU reset line, active low.
const OUTPORT_RESET: u8 = 0x01;
const OUTPORT_A20: u8 = 0x02;

const ACK: u8 = 0xfa;
const RESEND: u8 = 0xfe;

/// Bytes the output queue holds before it drops more.
const QUEUE_MAX: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Source {
    Kbd,
    Aux,
}

/// A controller command waiting for its data byte on port 0x60.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Pending {
    WriteCtr,
    WriteRam,
    WriteOutport,
    KbdBuffer,
    AuxBuffer,
    ToAux,
}

/// The PS/2 controller and keyboard.
pub struct I8042 {
    control: Arc<dyn MachineControl>,
    kbd_irq: Arc<dyn IrqLine>,
    aux_irq: Arc<dyn IrqLine>,
    /// The command byte (controller RAM byte 0).
    ctr: u8,
    outport: u8,
    queue: VecDeque<(u8, Source)>,
    /// The last write went to the command port (status bit 3).
    last_was_cmd: bool,
    pending: Option<Pending>,
    /// A keyboard command waiting for its argument byte.
    kbd_arg: Option<u8>,
    scanning: bool,
    levels: (bool, bool),
    unhandled: LogOnce,
}

impl I8042 {
    pub fn new(control: Arc<dyn MachineControl>, kbd_irq: Arc<dyn IrqLine>, aux_irq: Arc<dyn IrqLine>) -> Self {
        I8042 {
            control,
            kbd_irq,
            aux_irq,
            ctr: CTR_KBD_INT | CTR_AUX_INT | CTR_SYS | CTR_TRANSLATE,
            outport: OUTPORT_RESET | OUTPORT_A20,
            queue: VecDeque::new(),
            last_was_cmd: false,
            pending: None,
            kbd_arg: None,
            scanning: true,
            levels: (false, false),
            unhandled: LogOnce::default(),
        }
    }

    /// Queues scan codes from the host keyboard (set 1 if the guest left translation
    /// on, set 2 otherwise), unless the guest disabled the keyboard.
    pub fn push_keyboard_bytes(&mut self, bytes: &[u8]) {
        if self.keyboard_enabled() {
            for &b in bytes {
                self.push(b, Source::Kbd);
            }
        }
    }

    /// Presses (`down`) or releases the key named by its QAPI `QKeyCode` ("a",
    /// "ret", "ctrl_r", "delete", "f12", "kp_enter"...), as QMP `send-key` and HMP
    /// `sendkey` do. Its scan codes are queued in the set the guest reads: set 1 while
    /// the command byte's translation bit is on (the PC default), set 2 otherwise;
    /// extended keys after an 0xE0 prefix, releases as break codes. "pause" sends its
    /// make sequence on press and nothing on release (it has no break code).
    ///
    /// The key is dropped, without error, while the guest has disabled the keyboard
    /// (0xF5 to the keyboard, or controller command 0xAD), as the other keyboard
    /// input is, or if the output queue has no room for all of its bytes. An unknown
    /// name is an error.
    pub fn key(&mut self, qcode: &str, down: bool) -> Result<(), String> {
        let bytes =
            scancodes(qcode, down, self.ctr & CTR_TRANSLATE != 0).ok_or_else(|| format!("unknown key '{qcode}'"))?;
        // All or nothing: a partial sequence (a lone 0xE0) would confuse the guest.
        if self.queue.len() + bytes.len() <= QUEUE_MAX {
            self.push_keyboard_bytes(&bytes);
        } else if self.unhandled.first(0x1000) {
            log::debug!("i8042: output queue full, dropping key '{qcode}'");
        }
        Ok(())
    }

    fn keyboard_enabled(&self) -> bool {
        self.scanning && self.ctr & CTR_KBD_DISABLE == 0
    }

    /// The A20 gate as the guest last set it through the output port.
    pub fn a20(&self) -> bool {
        self.outport & OUTPORT_A20 != 0
    }

    fn push(&mut self, b: u8, src: Source) {
        if self.queue.len() >= QUEUE_MAX {
            if self.unhandled.first(0x1000) {
                log::debug!("i8042: output queue full, dropping bytes");
            }
            return;
        }
        self.queue.push_back((b, src));
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let head = self.queue.front().map(|&(_, s)| s);
        let kbd = head == Some(Source::Kbd) && self.ctr & CTR_KBD_INT != 0;
        let aux = head == Some(Source::Aux) && self.ctr & CTR_AUX_INT != 0;
        if kbd != self.levels.0 {
            self.kbd_irq.set_level(kbd);
        }
        if aux != self.levels.1 {
            self.aux_irq.set_level(aux);
        }
        self.levels = (kbd, aux);
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_UNLOCKED;
        if self.ctr & CTR_SYS != 0 {
            s |= STATUS_SYS;
        }
        if let Some(&(_, src)) = self.queue.front() {
            s |= STATUS_OBF | if src == Source::Aux { STATUS_AUX } else { 0 };
        }
        if self.last_was_cmd {
            s |= STATUS_CMD;
        }
        s
    }

    fn read_data(&mut self) -> u8 {
        let Some((b, _)) = self.queue.pop_front() else { return 0 };
        // Drop the lines so the next byte, if any, is a new edge.
        if self.levels.0 {
            self.kbd_irq.set_level(false);
        }
        if self.levels.1 {
            self.aux_irq.set_level(false);
        }
        self.levels = (false, false);
        self.update_irq();
        b
    }

    fn reset(&self) {
        self.control.request(MachineEvent::Reset);
    }

    fn write_command(&mut self, cmd: u8) {
        self.last_was_cmd = true;
        self.pending = None;
        match cmd {
            0x20 => self.push(self.ctr, Source::Kbd),
            0x21..=0x3f => self.push(0, Source::Kbd),
            0x60 => self.pending = Some(Pending::WriteCtr),
            0x61..=0x7f => self.pending = Some(Pending::WriteRam),
            0xa7 => self.ctr |= CTR_AUX_DISABLE,
            0xa8 => self.ctr &= !CTR_AUX_DISABLE,
            // Interface tests pass; the controller self-test answers 0x55.
            0xa9 | 0xab => self.push(0x00, Source::Kbd),
            0xaa => self.push(0x55, Source::Kbd),
            0xad => self.ctr |= CTR_KBD_DISABLE,
            0xae => self.ctr &= !CTR_KBD_DISABLE,
            // Input port: keyboard not inhibited.
            0xc0 => self.push(0x80, Source::Kbd),
            0xd0 => self.push(self.outport, Source::Kbd),
            0xd1 => self.pending = Some(Pending::WriteOutport),
            0xd2 => self.pending = Some(Pending::KbdBuffer),
            0xd3 => self.pending = Some(Pending::AuxBuffer),
            0xd4 => self.pending = Some(Pending::ToAux),
            0xdd => self.outport &= !OUTPORT_A20,
            0xdf => self.outport |= OUTPORT_A20,
            // Pulse output lines: a low bit 0 pulses the reset line.
            0xf0..=0xff => {
                if cmd & 1 == 0 {
                    self.reset();
                }
            }
            _ => {
                if self.unhandled.first(u32::from(cmd)) {
                    log::debug!("i8042: unhandled controller command {cmd:#04x}");
                }
            }
        }
        self.update_irq();
    }

    fn write_data(&mut self, v: u8) {
        self.last_was_cmd = false;
        match self.pending.take() {
            Some(Pending::WriteCtr) => {
                self.ctr = v;
                self.update_irq();
            }
            Some(Pending::WriteRam) => {}
            Some(Pending::WriteOutport) => {
                self.outport = v;
                if v & OUTPORT_RESET == 0 {
                    self.reset();
                }
            }
            Some(Pending::KbdBuffer) => self.push(v, Source::Kbd),
            Some(Pending::AuxBuffer) => self.push(v, Source::Aux),
            Some(Pending::ToAux) => self.push(RESEND, Source::Aux),
            None => self.keyboard_command(v),
        }
    }

    /// A byte for the keyboard itself.
    fn keyboard_command(&mut self, v: u8) {
        if let Some(cmd) = self.kbd_arg.take() {
            self.push(ACK, Source::Kbd);
            // "Get scan code set": report set 2.
            if cmd == 0xf0 && v == 0 {
                self.push(0x02, Source::Kbd);
            }
            return;
        }
        let reply: &[u8] = match v {
            // Set LEDs, scan code set, typematic rate: an argument follows.
            0xed | 0xf0 | 0xf3 => {
                self.kbd_arg = Some(v);
                &[ACK]
            }
            0xee => &[0xee],
            // Identify: an MF2 keyboard.
            0xf2 => &[ACK, 0xab, 0x83],
            0xf4 => {
                self.scanning = true;
                &[ACK]
            }
            0xf5 => {
                self.scanning = false;
                &[ACK]
            }
            0xf6..=0xfd => &[ACK],
            // Reset: acknowledge, then the self-test passed.
            0xff => {
                self.scanning = true;
                &[ACK, 0xaa]
            }
            _ => &[RESEND],
        };
        for &b in reply {
            self.push(b, Source::Kbd);
        }
    }
}

/// Keys by QAPI `QKeyCode` name: the make code in scan code set 1 and in set 2, and
/// whether it follows an 0xE0 prefix.
const KEYS: &[(&str, u8, u8, bool)] = &[
    ("esc", 0x01, 0x76, false),
    ("1", 0x02, 0x16, false),
    ("2", 0x03, 0x1e, false),
    ("3", 0x04, 0x26, false),
    ("4", 0x05, 0x25, false),
    ("5", 0x06, 0x2e, false),
    ("6", 0x07, 0x36, false),
    ("7", 0x08, 0x3d, false),
    ("8", 0x09, 0x3e, false),
    ("9", 0x0a, 0x46, false),
    ("0", 0x0b, 0x45, false),
    ("minus", 0x0c, 0x4e, false),
    ("equal", 0x0d, 0x55, false),
    ("backspace", 0x0e, 0x66, false),
    ("tab", 0x0f, 0x0d, false),
    ("q", 0x10, 0x15, false),
    ("w", 0x11, 0x1d, false),
    ("e", 0x12, 0x24, false),
    ("r", 0x13, 0x2d, false),
    ("t", 0x14, 0x2c, false),
    ("y", 0x15, 0x35, false),
    ("u", 0x16, 0x3c, false),
    ("i", 0x17, 0x43, false),
    ("o", 0x18, 0x44, false),
    ("p", 0x19, 0x4d, false),
    ("bracket_left", 0x1a, 0x54, false),
    ("bracket_right", 0x1b, 0x5b, false),
    ("ret", 0x1c, 0x5a, false),
    ("ctrl", 0x1d, 0x14, false),
    ("a", 0x1e, 0x1c, false),
    ("s", 0x1f, 0x1b, false),
    ("d", 0x20, 0x23, false),
    ("f", 0x21, 0x2b, false),
    ("g", 0x22, 0x34, false),
    ("h", 0x23, 0x33, false),
    ("j", 0x24, 0x3b, false),
    ("k", 0x25, 0x42, false),
    ("l", 0x26, 0x4b, false),
    ("semicolon", 0x27, 0x4c, false),
    ("apostrophe", 0x28, 0x52, false),
    ("grave_accent", 0x29, 0x0e, false),
    ("shift", 0x2a, 0x12, false),
    ("backslash", 0x2b, 0x5d, false),
    ("z", 0x2c, 0x1a, false),
    ("x", 0x2d, 0x22, false),
    ("c", 0x2e, 0x21, false),
    ("v", 0x2f, 0x2a, false),
    ("b", 0x30, 0x32, false),
    ("n", 0x31, 0x31, false),
    ("m", 0x32, 0x3a, false),
    ("comma", 0x33, 0x41, false),
    ("dot", 0x34, 0x49, false),
    ("slash", 0x35, 0x4a, false),
    ("shift_r", 0x36, 0x59, false),
    ("kp_multiply", 0x37, 0x7c, false),
    ("asterisk", 0x37, 0x7c, false),
    ("alt", 0x38, 0x11, false),
    ("spc", 0x39, 0x29, false),
    ("caps_lock", 0x3a, 0x58, false),
    ("f1", 0x3b, 0x05, false),
    ("f2", 0x3c, 0x06, false),
    ("f3", 0x3d, 0x04, false),
    ("f4", 0x3e, 0x0c, false),
    ("f5", 0x3f, 0x03, false),
    ("f6", 0x40, 0x0b, false),
    ("f7", 0x41, 0x83, false),
    ("f8", 0x42, 0x0a, false),
    ("f9", 0x43, 0x01, false),
    ("f10", 0x44, 0x09, false),
    ("num_lock", 0x45, 0x77, false),
    ("scroll_lock", 0x46, 0x7e, false),
    ("kp_7", 0x47, 0x6c, false),
    ("kp_8", 0x48, 0x75, false),
    ("kp_9", 0x49, 0x7d, false),
    ("kp_subtract", 0x4a, 0x7b, false),
    ("kp_4", 0x4b, 0x6b, false),
    ("kp_5", 0x4c, 0x73, false),
    ("kp_6", 0x4d, 0x74, false),
    ("kp_add", 0x4e, 0x79, false),
    ("kp_1", 0x4f, 0x69, false),
    ("kp_2", 0x50, 0x72, false),
    ("kp_3", 0x51, 0x7a, false),
    ("kp_0", 0x52, 0x70, false),
    ("kp_decimal", 0x53, 0x71, false),
    // Alt+Print Screen, the code Linux's magic SysRq keys follow.
    ("sysrq", 0x54, 0x84, false),
    ("less", 0x56, 0x61, false),
    ("f11", 0x57, 0x78, false),
    ("f12", 0x58, 0x07, false),
    ("kp_equals", 0x59, 0x0f, false),
    ("ro", 0x73, 0x51, false),
    ("yen", 0x7d, 0x6a, false),
    ("kp_comma", 0x7e, 0x6d, false),
    ("kp_enter", 0x1c, 0x5a, true),
    ("ctrl_r", 0x1d, 0x14, true),
    ("audiomute", 0x20, 0x23, true),
    ("volumedown", 0x2e, 0x21, true),
    ("volumeup", 0x30, 0x32, true),
    ("kp_divide", 0x35, 0x4a, true),
    ("print", 0x37, 0x7c, true),
    ("alt_r", 0x38, 0x11, true),
    ("altgr", 0x38, 0x11, true),
    ("altgr_r", 0x38, 0x11, true),
    ("home", 0x47, 0x6c, true),
    ("up", 0x48, 0x75, true),
    ("pgup", 0x49, 0x7d, true),
    ("left", 0x4b, 0x6b, true),
    ("right", 0x4d, 0x74, true),
    ("end", 0x4f, 0x69, true),
    ("down", 0x50, 0x72, true),
    ("pgdn", 0x51, 0x7a, true),
    ("insert", 0x52, 0x70, true),
    ("delete", 0x53, 0x71, true),
    ("meta_l", 0x5b, 0x1f, true),
    ("meta_r", 0x5c, 0x27, true),
    ("menu", 0x5d, 0x2f, true),
    ("compose", 0x5d, 0x2f, true),
    ("power", 0x5e, 0x37, true),
    ("sleep", 0x5f, 0x3f, true),
    ("wake", 0x63, 0x5e, true),
];

/// The bytes a keyboard sends when key `qcode` goes down or up, in set 1 or set 2;
/// `None` for a name it does not have.
fn scancodes(qcode: &str, down: bool, set1: bool) -> Option<Vec<u8>> {
    if qcode == "pause" {
        // Make only: E1 with Ctrl's make and break, then NumLock's.
        return Some(match (down, set1) {
            (false, _) => vec![],
            (true, true) => vec![0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5],
            (true, false) => vec![0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77],
        });
    }
    let &(_, code1, code2, ext) = KEYS.iter().find(|k| k.0 == qcode)?;
    let mut v = Vec::with_capacity(3);
    if ext {
        v.push(0xe0);
    }
    match (down, set1) {
        (true, true) => v.push(code1),
        (false, true) => v.push(code1 | 0x80),
        (true, false) => v.push(code2),
        (false, false) => v.extend([0xf0, code2]),
    }
    Some(v)
}

/// The `QKeyCode` for a key name of HMP's `sendkey` ("ctrl-alt-delete" is the keys
/// "ctrl", "alt", "delete"). They are the QMP names, in any case, plus a few
/// spellings people type; `None` for an unknown name. (Numeric codes such as "0x1d"
/// are the caller's.)
pub fn qcode_from_hmp(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    let name = match name.as_str() {
        "enter" | "return" => "ret",
        "space" => "spc",
        "escape" => "esc",
        "del" => "delete",
        n => n,
    };
    std::iter::once("pause").chain(KEYS.iter().map(|k| k.0)).find(|&k| k == name)
}

// The controller's registers, its output queue and the keyboard's state, with the
// levels of IRQ1 and IRQ12.
quern_core::snapshot_fields!(I8042 { ctr, outport, queue, last_was_cmd, pending, kbd_arg, scanning, levels } then drive_irqs);

impl I8042 {
    /// Restored interrupt levels go out on the lines.
    fn drive_irqs(&mut self) {
        self.kbd_irq.set_level(self.levels.0);
        self.aux_irq.set_level(self.levels.1);
    }
}

/// The i8042's two ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I8042Window {
    /// 0x60.
    Data,
    /// 0x64: status on read, command on write.
    Command,
}

impl PortGroup for I8042 {
    type Window = I8042Window;
    fn window_read(&mut self, window: I8042Window, offset: u64, data: &mut [u8]) {
        read_bytewise(offset, data, 1, |_| match window {
            I8042Window::Data => self.read_data(),
            I8042Window::Command => self.status(),
        });
    }
    fn window_write(&mut self, window: I8042Window, offset: u64, data: &[u8]) {
        write_bytewise(offset, data, 1, |_, v| match window {
            I8042Window::Data => self.write_data(v),
            I8042Window::Command => self.write_command(v),
        });
    }
}

/// The i8042's bus devices with their base ports and lengths: data (0x60, 1) and
/// status/command (0x64, 1).
pub fn i8042_bus_devices(dev: &Arc<Mutex<I8042>>) -> Vec<(SharedDevice, u64, u64)> {
    vec![
        (PortWindow::shared(dev, I8042Window::Data), 0x60, 1),
        (PortWindow::shared(dev, I8042Window::Command), 0x64, 1),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use quern_core::events::RecordingControl;
    use quern_core::snapshot::Snapshot;
    use quern_core::TestIrq;

    struct Rig {
        dev: I8042,
        control: Arc<RecordingControl>,
        kbd: Arc<TestIrq>,
        aux: Arc<TestIrq>,
    }

    impl Rig {
        fn new() -> Self {
            let control = Arc::new(RecordingControl::default());
            let kbd = Arc::new(TestIrq::default());
            let aux = Arc::new(TestIrq::default());
            Rig { dev: I8042::new(control.clone(), kbd.clone(), aux.clone()), control, kbd, aux }
        }
        fn cmd(&mut self, v: u8) {
            self.dev.window_write(I8042Window::Command, 0, &[v]);
        }
        fn data(&mut self, v: u8) {
            self.dev.window_write(I8042Window::Data, 0, &[v]);
        }
        fn status(&mut self) -> u8 {
            let mut b = [0];
            self.dev.window_read(I8042Window::Command, 0, &mut b);
            b[0]
        }
        fn read(&mut self) -> u8 {
            let mut b = [0];
            self.dev.window_read(I8042Window::Data, 0, &mut b);
            b[0]
        }
        fn drain(&mut self) -> Vec<u8> {
            let mut v = vec![];
            while self.status() & STATUS_OBF != 0 {
                v.push(self.read());
            }
            v
        }
    }

    #[test]
    fn pulse_reset_and_output_port_reset() {
        let mut r = Rig::new();
        r.cmd(0xfe);
        assert_eq!(r.control.events(), [MachineEvent::Reset]);
        r.cmd(0xd1);
        r.data(0x03);
        assert_eq!(r.control.events().len(), 1, "reset line kept high");
        r.cmd(0xd0);
        assert_eq!(r.read(), 0x03);
        r.cmd(0xd1);
        r.data(0x02);
        assert_eq!(r.control.events(), [MachineEvent::Reset, MachineEvent::Reset]);
        assert!(r.dev.a20());
    }

    #[test]
    fn command_byte_and_self_tests() {
        let mut r = Rig::new();
        r.cmd(0x60);
        r.data(0x44); // interrupts off, SYS, translate
        assert_eq!(r.status() & STATUS_CMD, 0, "last write was data");
        r.cmd(0x20);
        assert_eq!(r.status() & (STATUS_OBF | STATUS_CMD | STATUS_SYS), STATUS_OBF | STATUS_CMD | STATUS_SYS);
        assert_eq!(r.read(), 0x44);
        assert_eq!(r.kbd.rising_edges(), 0, "keyboard interrupt disabled");
        r.cmd(0xaa);
        r.cmd(0xab);
        r.cmd(0xa9);
        assert_eq!(r.drain(), [0x55, 0x00, 0x00]);
        r.cmd(0xad);
        r.cmd(0xa7);
        r.cmd(0x20);
        assert_eq!(r.read(), 0x44 | CTR_KBD_DISABLE | CTR_AUX_DISABLE);
        r.cmd(0xae);
        r.cmd(0xa8);
        r.cmd(0x20);
        assert_eq!(r.read(), 0x44);
        assert_eq!(r.read(), 0, "empty buffer reads 0");
    }

    #[test]
    fn keyboard_commands_answer_with_an_edge_per_byte() {
        let mut r = Rig::new();
        r.data(0xff);
        assert!(r.kbd.level());
        assert_eq!(r.read(), ACK);
        assert!(r.kbd.level(), "next byte raised again");
        assert_eq!(r.read(), 0xaa);
        assert!(!r.kbd.level());
        assert_eq!(r.kbd.rising_edges(), 2);
        r.data(0xf2);
        assert_eq!(r.drain(), [ACK, 0xab, 0x83]);
        r.data(0xed);
        r.data(0x07);
        r.data(0xf0);
        r.data(0x00);
        r.data(0xf3);
        r.data(0x20);
        r.data(0xf4);
        r.data(0xee);
        r.data(0x12);
        assert_eq!(r.drain(), [ACK, ACK, ACK, ACK, 0x02, ACK, ACK, ACK, 0xee, RESEND]);
    }

    #[test]
    fn scan_codes_respect_disable() {
        let mut r = Rig::new();
        r.dev.push_keyboard_bytes(&[0x1e, 0x9e]);
        assert_eq!(r.drain(), [0x1e, 0x9e]);
        r.data(0xf5);
        assert_eq!(r.drain(), [ACK]);
        r.dev.push_keyboard_bytes(&[0x1e]);
        assert!(r.drain().is_empty());
        r.data(0xf4);
        r.cmd(0xad);
        assert_eq!(r.drain(), [ACK]);
        r.dev.push_keyboard_bytes(&[0x1e]);
        assert!(r.drain().is_empty());
    }

    #[test]
    fn aux_port_loops_back_and_has_no_mouse() {
        let mut r = Rig::new();
        r.cmd(0xd3);
        r.data(0x5a);
        assert_eq!(r.status() & (STATUS_OBF | STATUS_AUX), STATUS_OBF | STATUS_AUX);
        assert!(r.aux.level() && !r.kbd.level());
        assert_eq!(r.read(), 0x5a);
        assert!(!r.aux.level());
        r.cmd(0xd4);
        r.data(0xf2);
        assert_eq!(r.status() & STATUS_AUX, STATUS_AUX);
        assert_eq!(r.read(), RESEND);
        assert_eq!(r.aux.rising_edges(), 2);
    }

    #[test]
    fn snapshot_keeps_the_queue_and_half_done_commands() {
        let mut r = Rig::new();
        r.cmd(0xd1);
        r.data(0x01); // A20 off (reset line kept high)
        r.data(0xf5); // scanning off
        r.cmd(0xd3);
        r.data(0x5a); // an aux byte behind the keyboard's ACK
        r.data(0xed); // set LEDs: the argument is still to come
        r.cmd(0x60); // write the command byte: its data is still to come
        let mut s = Rig::new();
        crate::testutil::restore_into(&mut s.dev, &r.dev.save_state());
        assert!(s.kbd.level() && !s.aux.level(), "IRQ1 for the ACK at the head");
        assert_eq!(s.status(), r.status());
        assert!(!s.dev.a20());
        s.data(0x44); // the command byte: interrupts off
        assert!(!s.kbd.level());
        s.data(0x07); // the LEDs
        assert_eq!(s.drain(), [ACK, 0x5a, ACK, ACK]);
        s.dev.push_keyboard_bytes(&[0x1e]);
        assert!(s.drain().is_empty(), "scanning stays off");
        assert!(s.control.events().is_empty());
        crate::testutil::assert_refuses_malformed(&mut r.dev, &[]);
    }

    #[test]
    fn monitor_keys_in_set_1_with_translation() {
        let mut r = Rig::new();
        r.dev.key("a", true).unwrap();
        assert!(r.kbd.level(), "IRQ1 for the make code");
        r.dev.key("a", false).unwrap();
        assert_eq!(r.drain(), [0x1e, 0x9e]);
        assert_eq!(r.kbd.rising_edges(), 2, "an edge per byte");
        r.dev.key("delete", true).unwrap();
        r.dev.key("delete", false).unwrap();
        assert_eq!(r.drain(), [0xe0, 0x53, 0xe0, 0xd3]);
        for k in ["ctrl", "alt", "delete"] {
            r.dev.key(k, true).unwrap();
        }
        for k in ["delete", "alt", "ctrl"] {
            r.dev.key(k, false).unwrap();
        }
        assert_eq!(r.drain(), [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
        r.dev.key("pause", true).unwrap();
        r.dev.key("pause", false).unwrap();
        assert_eq!(r.drain(), [0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]);
        r.dev.key("f7", true).unwrap();
        r.dev.key("kp_enter", true).unwrap();
        assert_eq!(r.drain(), [0x41, 0xe0, 0x1c]);
    }

    #[test]
    fn monitor_keys_in_set_2_without_translation() {
        let mut r = Rig::new();
        r.cmd(0x60);
        r.data(CTR_KBD_INT | CTR_SYS);
        r.dev.key("a", true).unwrap();
        r.dev.key("a", false).unwrap();
        assert_eq!(r.drain(), [0x1c, 0xf0, 0x1c]);
        for k in ["ctrl", "alt", "delete"] {
            r.dev.key(k, true).unwrap();
        }
        assert_eq!(r.drain(), [0x14, 0x11, 0xe0, 0x71]);
        r.dev.key("delete", false).unwrap();
        r.dev.key("ctrl_r", false).unwrap();
        assert_eq!(r.drain(), [0xe0, 0xf0, 0x71, 0xe0, 0xf0, 0x14]);
        r.dev.key("pause", true).unwrap();
        assert_eq!(r.drain(), [0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77]);
    }

    #[test]
    fn monitor_keys_unknown_disabled_and_full() {
        let mut r = Rig::new();
        assert_eq!(r.dev.key("nosuchkey", true), Err("unknown key 'nosuchkey'".into()));
        assert!(r.dev.key("A", true).is_err(), "QKeyCode names are lower case");
        r.data(0xf5);
        assert_eq!(r.drain(), [ACK]);
        r.dev.key("a", true).unwrap();
        assert!(r.drain().is_empty(), "scanning off: dropped");
        assert!(r.dev.key("bogus", true).is_err(), "still checked");
        r.data(0xf4);
        r.cmd(0xad);
        assert_eq!(r.drain(), [ACK]);
        r.dev.key("a", true).unwrap();
        assert!(r.drain().is_empty(), "keyboard disabled at the controller: dropped");
        assert!(!r.kbd.level());
        r.cmd(0xae);
        // A key that does not fit whole is dropped whole.
        for _ in 0..QUEUE_MAX - 1 {
            r.dev.key("a", true).unwrap();
        }
        r.dev.key("delete", true).unwrap();
        let got = r.drain();
        assert_eq!(got.len(), QUEUE_MAX - 1);
        assert!(got.iter().all(|&b| b == 0x1e));
    }

    #[test]
    fn hmp_key_names() {
        let keys: Vec<_> = "ctrl-alt-delete".split('-').map(qcode_from_hmp).collect();
        assert_eq!(keys, [Some("ctrl"), Some("alt"), Some("delete")]);
        assert_eq!(qcode_from_hmp("kp_0"), Some("kp_0"));
        assert_eq!(qcode_from_hmp("Pause"), Some("pause"));
        assert_eq!(qcode_from_hmp("enter"), Some("ret"));
        assert_eq!(qcode_from_hmp("del"), Some("delete"));
        assert_eq!(qcode_from_hmp("nosuchkey"), None);
        // Every name the table has is a key.
        for (name, ..) in KEYS {
            assert_eq!(qcode_from_hmp(name), Some(*name));
            assert!(scancodes(name, true, true).is_some());
        }
    }

    #[test]
    fn queue_is_bounded_and_odd_accesses_are_safe() {
        let mut r = Rig::new();
        for _ in 0..100 {
            r.cmd(0x20);
        }
        assert_eq!(r.drain().len(), QUEUE_MAX);
        let mut b = [0u8; 4];
        r.dev.window_read(I8042Window::Command, 0, &mut b);
        assert_eq!(b[1..], [0xff; 3]);
        r.dev.window_write(I8042Window::Data, 0, &[0xff, 0xff, 0xff, 0xff]);
        for v in 0..=255u8 {
            if v & 0xf1 != 0xf0 {
                r.cmd(v);
                r.data(v);
            }
        }
    }
}
