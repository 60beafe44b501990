//! The host terminal as the guest's serial console, the human monitor, or both.
//!
//! When stdin is a terminal it is put in raw mode, so the guest's shell gets every key
//! (Ctrl-C included) and echoes them itself. As in QEMU, Ctrl-A starts an escape:
//! Ctrl-A x quits, Ctrl-A h prints help, Ctrl-A Ctrl-A sends a Ctrl-A, and where the
//! monitor shares the terminal (`-serial mon:stdio`, `-nographic`) Ctrl-A c switches
//! between the console and the monitor's `(qemu)` prompt.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quern_core::{MachineControl, MachineEvent};
use quern_machine_pc::Serial;

use crate::cli::HmpMode;
use crate::monitor::MachineVm;

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
    /// Ctrl-A c: the console or the monitor.
    Switch,
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
                b'c' | b'C' => Key::Switch,
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

/// The human monitor's side of the terminal: a line being typed.
struct MonitorInput {
    vm: Arc<MachineVm>,
    line: Vec<u8>,
}

impl MonitorInput {
    fn banner(&self) {
        let (a, b, c) = quern_monitor::commands::QEMU_VERSION;
        print!("QEMU {a}.{b}.{c} monitor - type 'help' for more information\r\n(qemu) ");
        flush();
    }

    /// One typed byte: echoed; Enter runs the line.
    fn feed(&mut self, b: u8) {
        match b {
            b'\r' | b'\n' => {
                print!("\r\n");
                let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
                match crate::hmp::execute(&self.vm, &line) {
                    Ok(out) => print!("{out}"),
                    Err(e) => print!("{e}\r\n"),
                }
                print!("(qemu) ");
            }
            0x7f | 0x08 if self.line.pop().is_some() => print!("\x08 \x08"),
            0x20..=0x7e => {
                self.line.push(b);
                print!("{}", b as char);
            }
            _ => {}
        }
        flush();
    }
}

fn flush() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Feeds stdin to the serial port (or the human monitor, `hmp`) on a thread of its own,
/// until stdin ends.
pub fn spawn_input(
    serial: Arc<Mutex<Serial>>,
    control: Arc<dyn MachineControl>,
    hmp: Option<(Arc<MachineVm>, HmpMode)>,
) {
    let spawned = std::thread::Builder::new().name("quern-stdin".into()).spawn(move || {
        let mut esc = Escapes::default();
        let muxed = matches!(hmp, Some((_, HmpMode::Muxed)));
        let mut monitor = hmp.map(|(vm, _)| MonitorInput { vm, line: Vec::new() });
        // The monitor alone has the terminal from the start.
        let mut in_monitor = monitor.is_some() && !muxed;
        if in_monitor {
            monitor.as_ref().map(MonitorInput::banner);
        }
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                match esc.feed(b) {
                    Key::Guest(b) => match (&mut monitor, in_monitor) {
                        (Some(m), true) => m.feed(b),
                        _ => send(&serial, b),
                    },
                    Key::Switch if muxed => {
                        in_monitor = !in_monitor;
                        if in_monitor {
                            print!("\r\n");
                            monitor.as_ref().map(MonitorInput::banner);
                        }
                    }
                    Key::Switch => {}
                    Key::Quit => {
                        eprint!("\r\nquern: terminated (Ctrl-A x)\r\n");
                        control.request(MachineEvent::Exit(0));
                        return;
                    }
                    Key::Help => {
                        eprint!("\r\nC-a h    print this help\r\nC-a x    exit emulator\r\nC-a C-a  send C-a\r\n");
                        if muxed {
                            eprint!("C-a c    switch between console and monitor\r\n");
                        }
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
        assert_eq!(e.feed(CTRL_A), Key::None);
        assert_eq!(e.feed(b'c'), Key::Switch);
    }
}
