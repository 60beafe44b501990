//! Running, paused, shut down: the machine's run state as a monitor sees and changes
//! it (QMP's `stop`, `cont`, `system_reset`, `system_powerdown`, `-S`).
//!
//! Requests come from monitor threads and only set flags and wake the machine; the
//! machine loop acts once every vCPU has stopped (a pause is one more machine event),
//! waits while paused, and tells the [`RunObserver`] (the monitor's events) what
//! happened.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use quern_core::bus::lock;
use quern_core::{MachineControl, MachineEvent};
use quern_devices::acpi_pm::AcpiPm;

use crate::control::EventQueue;

pub use quern_core::RunState;

/// Told of run-state changes (QMP's STOP, RESUME, RESET, SHUTDOWN, POWERDOWN events).
pub trait RunObserver: Send + Sync {
    fn stopped(&self);
    fn resumed(&self);
    /// `guest`: the guest reset itself (not a monitor command).
    fn reset(&self, guest: bool);
    fn shutdown(&self, guest: bool, reason: &str);
    fn powerdown(&self);
}

struct Flags {
    state: RunState,
    /// `stop` asked, not yet acted on.
    pause: bool,
    /// `cont` asked, not yet acted on.
    cont: bool,
    /// The next reset is the monitor's.
    host_reset: bool,
    /// A reset since the guest shut down (`cont` is allowed again).
    reset_since_shutdown: bool,
    /// `info registers` asked: the machine fills `registers` between vCPU runs.
    registers_wanted: bool,
    registers: Option<String>,
    /// The exit under way is the monitor's `quit`.
    quit: bool,
}

/// The run state and the monitor's requests.
pub struct RunControl {
    flags: Mutex<Flags>,
    cond: Condvar,
    events: Arc<EventQueue>,
    pm: Arc<Mutex<AcpiPm>>,
    observer: OnceLock<Arc<dyn RunObserver>>,
}

impl RunControl {
    pub(crate) fn new(events: Arc<EventQueue>, pm: Arc<Mutex<AcpiPm>>, start_paused: bool) -> Arc<Self> {
        let state = if start_paused { RunState::Prelaunch } else { RunState::Running };
        Arc::new(RunControl {
            flags: Mutex::new(Flags {
                state,
                pause: false,
                cont: false,
                host_reset: false,
                reset_since_shutdown: false,
                registers_wanted: false,
                registers: None,
                quit: false,
            }),
            cond: Condvar::new(),
            events,
            pm,
            observer: OnceLock::new(),
        })
    }

    /// Connects the monitor's events (once).
    pub fn set_observer(&self, o: Arc<dyn RunObserver>) {
        let _ = self.observer.set(o);
    }

    pub(crate) fn observer(&self) -> Option<&Arc<dyn RunObserver>> {
        self.observer.get()
    }

    pub fn state(&self) -> RunState {
        lock(&self.flags).state
    }

    /// `stop`: takes effect once every vCPU has left guest code.
    pub fn stop(&self) {
        let mut f = lock(&self.flags);
        if f.state == RunState::Running {
            f.pause = true;
            drop(f);
            self.events.request(MachineEvent::Pause);
        }
    }

    /// `cont`.
    pub fn cont(&self) -> Result<(), String> {
        let mut f = lock(&self.flags);
        match f.state {
            RunState::Running => return Ok(()),
            RunState::Shutdown if !f.reset_since_shutdown => {
                return Err("Resetting the Virtual Machine is required".into());
            }
            _ => {}
        }
        f.cont = true;
        f.pause = false;
        drop(f);
        self.cond.notify_all();
        Ok(())
    }

    /// `system_reset`: a reset the guest did not ask for.
    pub fn system_reset(&self) {
        lock(&self.flags).host_reset = true;
        self.events.request(MachineEvent::Reset);
        self.cond.notify_all();
    }

    /// `system_powerdown`: the ACPI power button; the guest decides what to do.
    pub fn system_powerdown(&self) {
        lock(&self.pm).power_button();
        if let Some(o) = self.observer() {
            o.powerdown();
        }
    }

    /// `quit` (its SHUTDOWN event comes from the machine as it acts, after the
    /// command's reply, as QEMU orders them).
    pub fn quit(&self) {
        lock(&self.flags).quit = true;
        self.events.request(MachineEvent::Exit(0));
        self.cond.notify_all();
    }

    /// Every vCPU's registers as text (`info registers`), read between vCPU runs: a
    /// running machine stops for the moment it takes.
    pub fn registers(&self) -> Result<String, String> {
        let mut f = lock(&self.flags);
        f.registers_wanted = true;
        f.registers = None;
        let running = f.state == RunState::Running;
        drop(f);
        if running {
            self.events.request(MachineEvent::Pause);
        }
        self.cond.notify_all();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut f = lock(&self.flags);
        loop {
            if let Some(text) = f.registers.take() {
                return Ok(text);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                f.registers_wanted = false;
                return Err("the vCPUs did not stop to be read".into());
            }
            f = self
                .cond
                .wait_timeout(f, left.min(Duration::from_millis(50)))
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Whether the exit under way is `quit`'s (then forgotten).
    pub(crate) fn take_quit(&self) -> bool {
        std::mem::take(&mut lock(&self.flags).quit)
    }

    /// Whether `info registers` waits (then taken).
    pub(crate) fn take_registers_request(&self) -> bool {
        std::mem::take(&mut lock(&self.flags).registers_wanted)
    }

    pub(crate) fn put_registers(&self, text: String) {
        lock(&self.flags).registers = Some(text);
        self.cond.notify_all();
    }

    pub(crate) fn set_state(&self, state: RunState) {
        let mut f = lock(&self.flags);
        if state == RunState::Shutdown {
            f.reset_since_shutdown = false;
        }
        f.state = state;
    }

    /// Whether a `stop` waits to be acted on (then taken).
    pub(crate) fn take_pause(&self) -> bool {
        std::mem::take(&mut lock(&self.flags).pause)
    }

    /// Whether the reset being done is the monitor's (then forgotten).
    pub(crate) fn take_host_reset(&self) -> bool {
        let mut f = lock(&self.flags);
        if f.state == RunState::Shutdown {
            f.reset_since_shutdown = true;
        }
        std::mem::take(&mut f.host_reset)
    }

    /// Waits while stopped: until `cont` (true) or a machine event to act on (false).
    pub(crate) fn wait_while_stopped(&self) -> bool {
        let mut f = lock(&self.flags);
        loop {
            if std::mem::take(&mut f.cont) {
                f.state = RunState::Running;
                return true;
            }
            if self.events.is_pending() || f.registers_wanted {
                return false;
            }
            f = self.cond.wait_timeout(f, Duration::from_millis(50)).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
        }
    }
}
