//! The host terminal as the guest's serial console.
//!
//! When stdin is a terminal it is put in raw mode, so the guest's shell gets every key
//! (Ctrl-C included) and echoes them itself. As in QEMU, Ctrl-A starts an escape:
//! Ctrl-A x quits, Ctrl-A h prints help, Ctrl-A Ctrl-A sends a Ctrl-A.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quern_core::{MachineControl, MachineEvent};
use quern_machine_pc::Serial;

const CTRL_A: u8 = 0x01;

/// Restores the terminal's settings when dropped.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Puts stdin in raw mode if it is a terminal.
    pub fn enter() -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(0) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is a terminal (checked above) and `saved` is a valid termios.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the host's own messages still start lines.
        raw.c_oflag |= libc::OPOST;
        // SAFETY: valid descriptor and struct, as above.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same descriptor in `enter`.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// What one byte of input means once escapes are taken into account.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    Guest(u8),
    Quit,
    Help,
    None,
}

#[derive(Default)]
struct Escapes {
    after_ctrl_a: bool,
}

impl Escapes {
    fn feed(&mut self, b: u8) -> Key {
        if std::mem::take(&mut self.after_ctrl_a) {
            return match b {
                b'x' | b'X' => Key::Quit,
                b'h' | b'H' | b'?' => Key::Help,
                CTRL_A => Key::Guest(CTRL_A),
                _ => Key::None,
            };
        }
        if b == CTRL_A {
            self.after_ctrl_a = true;
            return Key::None;
        }
        Key::Guest(b)
    }
}

/// Feeds stdin to the serial port on a thread of its own, until stdin ends.
pub fn spawn_input(serial: Arc<Mutex<Serial>>, control: Arc<dyn MachineControl>) {
    let spawned = std::thread::Builder::new().name("quern-stdin".into()).spawn(move || {
        let mut esc = Escapes::default();
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                match esc.feed(b) {
                    Key::Guest(b) => send(&serial, b),
                    Key::Quit => {
                        eprint!("\r\nquern: terminated (Ctrl-A x)\r\n");
                        control.request(MachineEvent::Exit(0));
                        return;
                    }
                    Key::Help => {
                        eprint!("\r\nC-a h    print this help\r\nC-a x    exit emulator\r\nC-a C-a  send C-a\r\n")
                    }
                    Key::None => {}
                }
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("no console input: cannot start the stdin thread: {e}");
    }
}

/// Hands one byte to the UART, waiting while its receive FIFO is full.
pub(crate) fn send(serial: &Mutex<Serial>, b: u8) {
    loop {
        if quern_core::bus::lock(serial).enqueue_input(&[b]) == 1 {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_a_escapes() {
        let mut e = Escapes::default();
        assert_eq!(e.feed(b'a'), Key::Guest(b'a'));
        assert_eq!(e.feed(CTRL_A), Key::None);
        assert_eq!(e.feed(CTRL_A), Key::Guest(CTRL_A));
        assert_eq!(e.feed(CTRL_A), Key::None);
        assert_eq!(e.feed(b'x'), Key::Quit);
        assert_eq!(e.feed(b'x'), Key::Guest(b'x'));
        assert_eq!(e.feed(CTRL_A), Key::None);
        assert_eq!(e.feed(b'h'), Key::Help);
    }
}
