//! Requests from devices to the machine: reset, power off, exit with a status.
//!
//! A device that ends or resets the machine (i8042 reset line, PIIX reset control
//! register, ACPI sleep control, isa-debug-exit) holds a [`MachineControl`] and calls
//! [`MachineControl::request`]; the machine's loop acts on it once the current vCPU
//! access returns.

/// What a device asks of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineEvent {
    /// A system reset (with `-no-reboot`, the emulator exits instead).
    Reset,
    /// ACPI soft-off: the emulator exits with status 0.
    PowerOff,
    /// Exit the emulator with this status (isa-debug-exit).
    Exit(i32),
    /// Stop the vCPUs for the monitor (`stop`); never replaces another request.
    Pause,
}

/// The machine's run state, as a monitor reports and changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Started paused (`-S`), not yet run.
    Prelaunch,
    Running,
    /// Stopped by the monitor.
    Paused,
    /// The guest powered off and `-no-shutdown` keeps the machine.
    Shutdown,
    /// Started with `-incoming`: waiting for a saved state to load.
    InMigrate,
    /// Stopped after its state was saved (`migrate`).
    PostMigrate,
}

impl RunState {
    /// The name QMP's `query-status` gives it.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Shutdown => "shutdown",
            RunState::InMigrate => "inmigrate",
            RunState::PostMigrate => "postmigrate",
        }
    }
}

/// The machine, as a device that can reset or stop it sees it.
pub trait MachineControl: Send + Sync {
    fn request(&self, event: MachineEvent);
}

/// Records requests, for tests of devices.
#[derive(Debug, Default)]
pub struct RecordingControl {
    events: std::sync::Mutex<Vec<MachineEvent>>,
}

impl RecordingControl {
    /// The requests made so far, oldest first.
    pub fn events(&self) -> Vec<MachineEvent> {
        self.events.lock().unwrap().clone()
    }
}

impl MachineControl for RecordingControl {
    fn request(&self, event: MachineEvent) {
        self.events.lock().unwrap().push(event);
    }
}
