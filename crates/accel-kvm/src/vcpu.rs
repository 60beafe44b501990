//! One KVM vCPU behind quern's [`Vcpu`] trait, and its run loop.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use kvm_bindings::{
    kvm_fpu, kvm_interrupt, kvm_mp_state, kvm_regs, kvm_sregs, KVMIO, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd};
use quern_core::cpu::{CpuEvent, IrqChipMode};
use quern_core::regs::{msr, power_on_state, DebugRegs, FpuState, MsrEntry, Regs, SpecialRegs};
use quern_core::{CpuError, GuestMemory, Vcpu, VcpuExit, VcpuKicker, VmOps};

use crate::convert::{to_kvm_msrs, KvmRepr};
use crate::error::{host_error, os_error};
use crate::exit::{handle_exit, ExitAction};
use crate::kick::{KickState, KvmKicker};
use crate::run_page::RunPage;
use crate::ACCEL_NAME;

/// KVM_INTERRUPT = _IOW(KVMIO, 0x86, struct kvm_interrupt); kvm-ioctls has no wrapper.
const KVM_INTERRUPT: libc::c_ulong =
    (1 << 30) | ((size_of::<kvm_interrupt>() as libc::c_ulong) << 16) | ((KVMIO as libc::c_ulong) << 8) | 0x86;

/// PAT after reset (SDM: WB, WT, UC-, UC repeated).
const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;
/// IA32_MISC_ENABLE with fast-string operation enabled, as firmware leaves it.
const MISC_ENABLE_FAST_STRING: u64 = 1;

pub struct KvmVcpu {
    // Field order is drop order: the fd (and with it, maybe, the VM) goes before the
    // guest memory its slots point at.
    fd: VcpuFd,
    run_page: RunPage,
    id: u32,
    irqchip: IrqChipMode,
    kick: Arc<KickState>,
    /// The last exit was I/O or MMIO whose result KVM applies on the next KVM_RUN.
    io_pending: bool,
    apic_sync: ApicSync,
    /// An application processor after reset or INIT, with the userspace irqchip: it
    /// does not run until a start-up IPI (KVM's own LAPIC keeps this state itself).
    wait_for_sipi: bool,
    _mem: Arc<GuestMemory>,
}

impl KvmVcpu {
    pub(crate) fn new(
        fd: VcpuFd,
        run_size: usize,
        id: u32,
        irqchip: IrqChipMode,
        mem: Arc<GuestMemory>,
    ) -> Result<Self, CpuError> {
        let run_page = RunPage::map(&fd, run_size).map_err(|source| CpuError::Host {
            accel: ACCEL_NAME,
            op: "mmap kvm_run",
            source,
        })?;
        let mut vcpu = KvmVcpu {
            fd,
            run_page,
            id,
            irqchip,
            kick: Arc::default(),
            io_pending: false,
            apic_sync: ApicSync::default(),
            wait_for_sipi: false,
            _mem: mem,
        };
        vcpu.reset()?;
        Ok(vcpu)
    }

    /// The vCPU's index as given to KVM_CREATE_VCPU.
    pub fn id(&self) -> u32 {
        self.id
    }

    fn set_initial_msrs(&mut self) -> Result<(), CpuError> {
        let entries = [
            MsrEntry { index: msr::IA32_MISC_ENABLE, data: MISC_ENABLE_FAST_STRING },
            MsrEntry { index: msr::IA32_PAT, data: PAT_DEFAULT },
        ];
        let written = self.fd.set_msrs(&to_kvm_msrs(&entries)?).map_err(host_error("KVM_SET_MSRS"))?;
        if let Some(e) = entries.get(written) {
            log::warn!("kvm: vCPU {}: KVM refused MSR {:#x}; the guest sees its KVM default", self.id, e.index);
        }
        Ok(())
    }

    /// Delivers what the machine's local APIC signals besides maskable interrupts
    /// (userspace irqchip). KVM queues an NMI itself until the guest can take it.
    fn deliver_events(&mut self, ops: &dyn VmOps) -> Result<(), CpuError> {
        while let Some(event) = ops.take_event() {
            match event {
                CpuEvent::Nmi => self.fd.nmi().map_err(host_error("KVM_NMI"))?,
                CpuEvent::Smi => {
                    if let Err(e) = self.fd.smi() {
                        quern_core::log_limited!(log::Level::Warn, "kvm: vCPU {}: SMI not delivered: {e}", self.id);
                    }
                }
                // INIT: the vCPU resets; an application processor then waits for a
                // start-up IPI (the bootstrap processor restarts at the reset vector).
                CpuEvent::Init => {
                    let bsp = ops.is_bsp().unwrap_or(self.id == 0);
                    self.reset()?;
                    self.wait_for_sipi = !bsp;
                }
                // A start-up IPI starts a waiting processor in real mode at vector << 12.
                CpuEvent::StartUp(vector) if self.wait_for_sipi => {
                    let mut sregs = self.sregs()?;
                    sregs.cs.selector = u16::from(vector) << 8;
                    sregs.cs.base = u64::from(vector) << 12;
                    self.set_sregs(&sregs)?;
                    let mut regs = self.regs()?;
                    regs.rip = 0;
                    self.set_regs(&regs)?;
                    self.wait_for_sipi = false;
                }
                CpuEvent::StartUp(_) => {}
            }
        }
        Ok(())
    }

    /// Offers a pending interrupt (userspace irqchip): inject it if the guest can take it
    /// now, else ask KVM to exit as soon as it can.
    fn offer_interrupt(&mut self, ops: &dyn VmOps) -> Result<(), CpuError> {
        if !ops.interrupt_pending() {
            self.run_page.set_request_interrupt_window(false);
            return Ok(());
        }
        if !self.run_page.can_inject() {
            self.run_page.set_request_interrupt_window(true);
            return Ok(());
        }
        if let Some(vector) = ops.acknowledge_interrupt() {
            let irq = kvm_interrupt { irq: vector.into() };
            // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from the pointer, which is live.
            let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_INTERRUPT, &irq) };
            if ret != 0 {
                return Err(CpuError::Host {
                    accel: ACCEL_NAME,
                    op: "KVM_INTERRUPT",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        self.run_page.set_request_interrupt_window(ops.interrupt_pending());
        Ok(())
    }

    /// Returns `Kicked`, first letting KVM finish an I/O the guest is waiting on (an IN's
    /// value goes into RAX on the next KVM_RUN), so the registers read between runs are
    /// complete. With `immediate_exit` set, KVM_RUN completes it and returns EINTR
    /// without running guest code.
    fn kicked(&mut self) -> Result<VcpuExit, CpuError> {
        if std::mem::take(&mut self.io_pending) {
            self.run_page.set_immediate_exit(true);
            let result = self.fd.run().map(|_| ());
            self.run_page.set_immediate_exit(false);
            match result {
                Ok(()) => {}
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return Err(host_error("KVM_RUN (completing I/O)")(e)),
            }
        }
        Ok(VcpuExit::Kicked)
    }

    fn guest_error(&self, reason: String) -> CpuError {
        let at = match self.fd.get_regs() {
            Ok(r) => format!(" at RIP {:#x}", r.rip),
            Err(_) => String::new(),
        };
        CpuError::Guest { accel: ACCEL_NAME, reason: reason + &at }
    }
}

impl Vcpu for KvmVcpu {
    fn regs(&self) -> Result<Regs, CpuError> {
        Ok(KvmRepr(self.fd.get_regs().map_err(host_error("KVM_GET_REGS"))?).into())
    }

    fn set_regs(&mut self, regs: &Regs) -> Result<(), CpuError> {
        self.fd.set_regs(&KvmRepr::<kvm_regs>::from(regs).0).map_err(host_error("KVM_SET_REGS"))
    }

    fn sregs(&self) -> Result<SpecialRegs, CpuError> {
        Ok(KvmRepr(self.fd.get_sregs().map_err(host_error("KVM_GET_SREGS"))?).into())
    }

    fn set_sregs(&mut self, sregs: &SpecialRegs) -> Result<(), CpuError> {
        // Keep the interrupt KVM may have queued (interrupt_bitmap) rather than drop it.
        let current = self.fd.get_sregs().map_err(host_error("KVM_GET_SREGS"))?;
        let new = kvm_sregs { interrupt_bitmap: current.interrupt_bitmap, ..KvmRepr::from(sregs).0 };
        self.fd.set_sregs(&new).map_err(host_error("KVM_SET_SREGS"))
    }

    fn fpu(&self) -> Result<FpuState, CpuError> {
        Ok(KvmRepr(self.fd.get_fpu().map_err(host_error("KVM_GET_FPU"))?).into())
    }

    fn set_fpu(&mut self, fpu: &FpuState) -> Result<(), CpuError> {
        self.fd.set_fpu(&KvmRepr::<kvm_fpu>::from(fpu).0).map_err(host_error("KVM_SET_FPU"))
    }

    fn debug_regs(&self) -> Result<DebugRegs, CpuError> {
        Ok(KvmRepr(self.fd.get_debug_regs().map_err(host_error("KVM_GET_DEBUGREGS"))?).into())
    }

    fn set_debug_regs(&mut self, dregs: &DebugRegs) -> Result<(), CpuError> {
        self.fd.set_debug_regs(&KvmRepr::from(dregs).0).map_err(host_error("KVM_SET_DEBUGREGS"))
    }

    fn msrs(&self, entries: &mut [MsrEntry]) -> Result<(), CpuError> {
        let mut msrs = to_kvm_msrs(entries)?;
        let read = self.fd.get_msrs(&mut msrs).map_err(host_error("KVM_GET_MSRS"))?;
        if let Some(e) = entries.get(read) {
            return Err(CpuError::Unsupported { accel: ACCEL_NAME, what: format!("reading MSR {:#x}", e.index) });
        }
        for (e, k) in entries.iter_mut().zip(msrs.as_slice()) {
            e.data = k.data;
        }
        Ok(())
    }

    fn set_msrs(&mut self, entries: &[MsrEntry]) -> Result<(), CpuError> {
        let written = self.fd.set_msrs(&to_kvm_msrs(entries)?).map_err(host_error("KVM_SET_MSRS"))?;
        match entries.get(written) {
            Some(e) => Err(CpuError::Unsupported { accel: ACCEL_NAME, what: format!("writing MSR {:#x}", e.index) }),
            None => Ok(()),
        }
    }

    fn run(&mut self, ops: &dyn VmOps) -> Result<VcpuExit, CpuError> {
        let _registered = self.kick.enter(&self.run_page);
        loop {
            if self.kick.take() {
                return self.kicked();
            }
            let userspace = self.irqchip == IrqChipMode::Userspace;
            if userspace {
                self.apic_sync.before_entry(&self.run_page, ops);
                self.deliver_events(ops)?;
                if self.wait_for_sipi {
                    // Nothing runs until the start-up IPI, which wakes the machine's
                    // wait for this vCPU.
                    return Ok(VcpuExit::Halted);
                }
                self.offer_interrupt(ops)?;
            }
            let result = self.fd.run();
            if userspace {
                self.apic_sync.after_exit(&self.run_page, ops);
            }
            let action = match result {
                Ok(exit) => {
                    let state = self.run_page.state();
                    let is_io = matches!(
                        exit,
                        KvmExit::IoIn(..) | KvmExit::IoOut(..) | KvmExit::MmioRead(..) | KvmExit::MmioWrite(..)
                    );
                    self.io_pending = is_io;
                    handle_exit(exit, &state, ops)
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // KVM finished any pending I/O before it saw the signal.
                    self.io_pending = false;
                    self.run_page.set_immediate_exit(false);
                    self.kick.take();
                    return Ok(VcpuExit::Kicked);
                }
                Err(e) => {
                    return Err(CpuError::Host { accel: ACCEL_NAME, op: "KVM_RUN", source: os_error(e) });
                }
            };
            match action {
                ExitAction::Continue => {}
                ExitAction::Return(VcpuExit::Kicked) => return self.kicked(),
                ExitAction::Return(exit) => return Ok(exit),
                ExitAction::Fail(reason) => return Err(self.guest_error(reason)),
            }
        }
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        Arc::new(KvmKicker(self.kick.clone()))
    }

    fn lapic_state(&self) -> Result<Option<quern_core::snapshot::State>, CpuError> {
        match self.irqchip {
            IrqChipMode::InAccelerator => crate::saved_state::save_lapic(&self.fd).map(Some),
            IrqChipMode::Userspace => Ok(None),
        }
    }

    fn set_lapic_state(&mut self, state: &quern_core::snapshot::State) -> Result<(), CpuError> {
        crate::saved_state::restore_lapic(&self.fd, state)
    }

    /// With KVM's irqchip, its multiprocessing state says it.
    fn waits_for_start_up(&self) -> bool {
        match self.irqchip {
            IrqChipMode::InAccelerator => {
                self.fd.get_mp_state().is_ok_and(|m| m.mp_state == KVM_MP_STATE_UNINITIALIZED)
            }
            IrqChipMode::Userspace => self.wait_for_sipi,
        }
    }

    fn set_waits_for_start_up(&mut self, wait: bool) {
        match self.irqchip {
            IrqChipMode::InAccelerator => {
                let mp_state = if wait { KVM_MP_STATE_UNINITIALIZED } else { KVM_MP_STATE_RUNNABLE };
                if let Err(e) = self.fd.set_mp_state(kvm_mp_state { mp_state }) {
                    log::warn!("vCPU {}: KVM_SET_MP_STATE: {e}", self.id);
                }
            }
            IrqChipMode::Userspace => self.wait_for_sipi = wait,
        }
    }

    /// The power-on state; an application processor (every vCPU but 0) then waits
    /// for INIT and a start-up IPI: in KVM's LAPIC (its multiprocessing state) or here.
    fn reset(&mut self) -> Result<(), CpuError> {
        let (regs, sregs) = power_on_state();
        self.set_sregs(&sregs)?;
        self.set_regs(&regs)?;
        self.set_fpu(&FpuState::default())?;
        self.set_initial_msrs()?;
        let ap = self.id != 0;
        match self.irqchip {
            IrqChipMode::InAccelerator => {
                let mp_state = if ap { KVM_MP_STATE_UNINITIALIZED } else { KVM_MP_STATE_RUNNABLE };
                self.fd.set_mp_state(kvm_mp_state { mp_state }).map_err(host_error("KVM_SET_MP_STATE"))?;
            }
            IrqChipMode::Userspace => self.wait_for_sipi = ap,
        }
        Ok(())
    }
}

/// Keeps the machine's local APIC and KVM's copies of its CPU-side state in step
/// (userspace irqchip), as QEMU's kvm_arch_pre_run/post_run do: without an in-kernel
/// LAPIC, KVM handles MOV to/from CR8 and WRMSR IA32_APIC_BASE itself and reports the
/// values in kvm_run, which also carries CR8 in before each entry.
#[derive(Default)]
struct ApicSync {
    /// The CR8 put into kvm_run before the last entry; `None` when the machine has no
    /// local APIC (its VmOps has no CR8).
    cr8_in: Option<u64>,
    /// KVM's IA32_APIC_BASE when it was last given to the APIC.
    apic_base: Option<u64>,
}

impl ApicSync {
    /// The APIC's TPR (perhaps written through its MMIO page) becomes the guest's CR8.
    fn before_entry(&mut self, page: &RunPage, ops: &dyn VmOps) {
        self.cr8_in = ops.cr8();
        if let Some(cr8) = self.cr8_in {
            page.set_cr8(cr8);
        }
    }

    /// A CR8 the guest wrote inside KVM becomes the APIC's TPR, and a WRMSR of
    /// IA32_APIC_BASE (relocation, global disable) reaches the APIC, before the exit
    /// is handled or an interrupt offered. KVM exits with KVM_EXIT_SET_TPR when CR8 is
    /// lowered, so a held-back interrupt goes in promptly; a raised CR8 needs no exit,
    /// as nothing is injected without passing through here first.
    fn after_exit(&mut self, page: &RunPage, ops: &dyn VmOps) {
        let Some(cr8_in) = self.cr8_in else { return };
        let cr8 = page.cr8();
        if cr8 != cr8_in {
            ops.set_cr8(cr8);
        }
        let base = page.apic_base();
        if self.apic_base != Some(base) {
            self.apic_base = Some(base);
            if let Some(Ok(ours)) = ops.msr_read(msr::IA32_APIC_BASE) {
                if ours != base && matches!(ops.msr_write(msr::IA32_APIC_BASE, base), Some(Err(_))) {
                    quern_core::log_limited!(
                        log::Level::Warn,
                        "kvm: the local APIC refused IA32_APIC_BASE {base:#x} that KVM accepted"
                    );
                }
            }
        }
    }
}
