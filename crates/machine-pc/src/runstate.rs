//! Running, paused, shut down: the machine's run state as a monitor sees and changes
//! it (QMP's `stop`, `cont`, `system_reset`, `system_powerdown`, `-S`).
//!
//! Requests come from monitor threads and only set flags and wake the machine; the
//! machine loop acts once every vCPU has stopped (a pause is one more machine event),
//! waits while paused, and tells the [`RunObserver`] (the monitor's events) what
//! happened.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use quern_core::bus::lock;
use quern_core::{MachineControl, MachineEvent};
use quern_devices::acpi_pm::AcpiPm;

use crate::control::EventQueue;
use crate::machine::PcMachine;

/// Work for the machine's thread, done with every vCPU stopped: reading registers,
/// saving or loading the state.
type Job = Box<dyn FnOnce(&mut PcMachine) + Send>;

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
    /// `stop` asked, not yet acted on: the state to stop in.
    pause: Option<RunState>,
    /// `cont` asked, not yet acted on.
    cont: bool,
    /// The next reset is the monitor's.
    host_reset: bool,
    /// A reset since the guest shut down (`cont` is allowed again).
    reset_since_shutdown: bool,
    /// Jobs waiting for the vCPUs to stop.
    jobs: VecDeque<Job>,
    /// Run once an incoming state is loaded (no `-S`, or `cont` meanwhile).
    autostart: bool,
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
    pub(crate) fn new(
        events: Arc<EventQueue>,
        pm: Arc<Mutex<AcpiPm>>,
        start_paused: bool,
        incoming: bool,
    ) -> Arc<Self> {
        let state = match (incoming, start_paused) {
            (true, _) => RunState::InMigrate,
            (false, true) => RunState::Prelaunch,
            (false, false) => RunState::Running,
        };
        Arc::new(RunControl {
            flags: Mutex::new(Flags {
                state,
                pause: None,
                cont: false,
                host_reset: false,
                reset_since_shutdown: false,
                jobs: VecDeque::new(),
                autostart: !start_paused,
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

    /// `stop`: returns once every vCPU has left guest code (and STOP was sent), as
    /// QEMU's does.
    pub fn stop(&self) {
        let mut f = lock(&self.flags);
        if f.state == RunState::Running {
            f.pause = Some(RunState::Paused);
            drop(f);
            self.events.request(MachineEvent::Pause);
            self.wait_until(|s| s != RunState::Running);
        }
    }

    /// Waits (at most a few seconds: a vCPU stuck in the host would otherwise hang the
    /// monitor) until the state satisfies `done`.
    fn wait_until(&self, done: impl Fn(RunState) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut f = lock(&self.flags);
        while !done(f.state) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                log::warn!("the machine did not change its run state within 10 s");
                return;
            }
            f = self.cond.wait_timeout(f, left).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// A save is complete: the machine stays stopped (QEMU's `postmigrate`).
    pub(crate) fn saved(&self) {
        let mut f = lock(&self.flags);
        match f.state {
            RunState::Running => f.pause = Some(RunState::PostMigrate),
            RunState::Paused | RunState::Prelaunch => f.state = RunState::PostMigrate,
            _ => {}
        }
    }

    /// `cont`.
    pub fn cont(&self) -> Result<(), String> {
        let mut f = lock(&self.flags);
        match f.state {
            RunState::Running => return Ok(()),
            // As QEMU: run once the incoming state is in.
            RunState::InMigrate => {
                f.autostart = true;
                return Ok(());
            }
            RunState::Shutdown if !f.reset_since_shutdown => {
                return Err("Resetting the Virtual Machine is required".into());
            }
            _ => {}
        }
        f.cont = true;
        f.pause = None;
        drop(f);
        self.cond.notify_all();
        // As QEMU's: RESUME is sent and the machine runs when `cont` answers.
        self.wait_until(|s| s == RunState::Running);
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
        self.run_job(Some(Duration::from_secs(10)), |m| m.registers_text())
    }

    /// Runs `f` on the machine's thread once every vCPU has stopped (a running machine
    /// runs on afterwards) and returns its result; waits at most `timeout`, if given.
    pub fn run_job<R: Send + 'static>(
        &self,
        timeout: Option<Duration>,
        f: impl FnOnce(&mut PcMachine) -> R + Send + 'static,
    ) -> Result<R, String> {
        let (tx, rx) = mpsc::channel();
        let mut fl = lock(&self.flags);
        fl.jobs.push_back(Box::new(move |m| {
            let _ = tx.send(f(m));
        }));
        let running = fl.state == RunState::Running;
        drop(fl);
        if running {
            self.events.request(MachineEvent::Pause);
        }
        self.cond.notify_all();
        let gone = |_| "the machine ended first".to_string();
        match timeout {
            Some(t) => rx.recv_timeout(t).map_err(|_| "the vCPUs did not stop in time".to_string()),
            None => rx.recv().map_err(gone),
        }
    }

    pub(crate) fn take_job(&self) -> Option<Job> {
        lock(&self.flags).jobs.pop_front()
    }

    /// Forgets waiting jobs (their callers get an error): the machine has ended.
    pub(crate) fn drop_jobs(&self) {
        lock(&self.flags).jobs.clear();
    }

    /// An incoming state is loaded: run on, or wait for `cont`.
    pub(crate) fn incoming_done(&self) {
        let mut f = lock(&self.flags);
        f.state = RunState::Paused;
        f.cont = f.autostart;
        drop(f);
        self.cond.notify_all();
    }

    /// Whether the exit under way is `quit`'s (then forgotten).
    pub(crate) fn take_quit(&self) -> bool {
        std::mem::take(&mut lock(&self.flags).quit)
    }

    pub(crate) fn set_state(&self, state: RunState) {
        let mut f = lock(&self.flags);
        if state == RunState::Shutdown {
            f.reset_since_shutdown = false;
        }
        f.state = state;
        self.cond.notify_all();
    }

    /// The state a `stop` (or a save) waits to stop in, if any (then taken).
    pub(crate) fn take_pause(&self) -> Option<RunState> {
        lock(&self.flags).pause.take()
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
                return true;
            }
            if self.events.is_pending() || !f.jobs.is_empty() {
                return false;
            }
            f = self.cond.wait_timeout(f, Duration::from_millis(50)).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
        }
    }
}
