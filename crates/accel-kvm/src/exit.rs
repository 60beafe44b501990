//! What to do about one KVM exit: a free function over the decoded exit, so that every
//! mapping from KVM exits to `VmOps` calls and `VcpuExit`s is testable without /dev/kvm.

use kvm_bindings::{
    KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KVM_INTERNAL_ERROR_SIMUL_EX, KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::VcpuExit as KvmExit;
use quern_core::{VcpuExit, VmOps};

pub use crate::run_page::RunState;

/// The run loop's next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again.
    Continue,
    /// Return this from `Vcpu::run`.
    Return(VcpuExit),
    /// The guest cannot go on; the reason is for the user.
    Fail(String),
}

/// Handles one exit. `state` is what `kvm_run` said besides the decoded exit.
///
/// String I/O (`rep ins/outs`) arrives as one exit whose data holds `count` elements of
/// `state.io_size` bytes each, in the order the guest accesses the port; each element
/// is one device access.
pub fn handle_exit(exit: KvmExit<'_>, state: &RunState, ops: &dyn VmOps) -> ExitAction {
    let element = state.io_size.max(1);
    match exit {
        KvmExit::IoOut(port, data) => {
            data.chunks(element).for_each(|d| ops.pio_write(port, d));
            after_io(ops)
        }
        KvmExit::IoIn(port, data) => {
            data.chunks_mut(element).for_each(|d| ops.pio_read(port, d));
            after_io(ops)
        }
        KvmExit::MmioRead(addr, data) => {
            ops.mmio_read(addr, data);
            after_io(ops)
        }
        KvmExit::MmioWrite(addr, data) => {
            ops.mmio_write(addr, data);
            after_io(ops)
        }
        KvmExit::IrqWindowOpen => ExitAction::Continue,
        // The guest lowered CR8 (userspace irqchip); the run loop has given the APIC the
        // new TPR and now offers what it held back.
        KvmExit::SetTpr => ExitAction::Continue,
        // Only with the userspace irqchip; an interrupt that can be taken wakes the CPU.
        KvmExit::Hlt if state.can_inject && ops.interrupt_pending() => ExitAction::Continue,
        KvmExit::Hlt => ExitAction::Return(VcpuExit::Halted),
        KvmExit::Shutdown => ExitAction::Return(VcpuExit::Shutdown),
        KvmExit::SystemEvent(kind, _) if kind == KVM_SYSTEM_EVENT_SHUTDOWN || kind == KVM_SYSTEM_EVENT_RESET => {
            ExitAction::Return(VcpuExit::Shutdown)
        }
        KvmExit::Debug(_) => ExitAction::Return(VcpuExit::Debug),
        KvmExit::Intr => ExitAction::Return(VcpuExit::Kicked),
        KvmExit::InternalError => ExitAction::Fail(describe_internal_error(state.internal_error.as_ref())),
        KvmExit::FailEntry(reason, cpu) => {
            // 0x80000021 is VMX's "VM-entry failure due to invalid guest state".
            let hint = if reason == 0x8000_0021 { " (invalid guest state)" } else { "" };
            ExitAction::Fail(format!(
                "KVM could not enter the guest: hardware reason {reason:#x}{hint} on host CPU {cpu}"
            ))
        }
        KvmExit::Unknown => ExitAction::Fail("KVM exit with an unknown hardware exit reason".into()),
        other => ExitAction::Fail(format!("unexpected KVM exit {other:?}")),
    }
}

fn after_io(ops: &dyn VmOps) -> ExitAction {
    if ops.stop_requested() {
        ExitAction::Return(VcpuExit::Kicked)
    } else {
        ExitAction::Continue
    }
}

/// "KVM internal error 1 (emulation failure)", plus KVM's data words if it gave any.
pub fn describe_internal_error(error: Option<&(u32, Vec<u64>)>) -> String {
    let Some((suberror, data)) = error else { return "KVM internal error".into() };
    let what = match *suberror {
        KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
        KVM_INTERNAL_ERROR_SIMUL_EX => "simultaneous exceptions",
        KVM_INTERNAL_ERROR_DELIVERY_EV => "exception delivery failed",
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown sub-error",
    };
    let mut s = format!("KVM internal error {suberror} ({what})");
    let mut data = &data[..];
    // With KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, data[1..3] hold a length
    // byte and up to 15 bytes fetched at RIP: the instruction KVM could not emulate.
    if *suberror == KVM_INTERNAL_ERROR_EMULATION
        && data.len() >= 3
        && data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
    {
        let bytes: Vec<u8> = data[1..3].iter().flat_map(|w| w.to_le_bytes()).collect();
        let n = usize::from(bytes[0]).min(15);
        let hex: Vec<String> = bytes[1..=n].iter().map(|b| format!("{b:02x}")).collect();
        s += &format!(" on instruction bytes [{}]", hex.join(" "));
        data = &data[3..];
    }
    if !data.is_empty() {
        let words: Vec<String> = data.iter().map(|w| format!("{w:#x}")).collect();
        s += &format!(", data [{}]", words.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Ops {
        log: Mutex<Vec<String>>,
        pending: bool,
        stop: bool,
        next_in: AtomicU8,
    }

    impl VmOps for Ops {
        fn pio_read(&self, port: u16, data: &mut [u8]) {
            data.iter_mut().for_each(|b| *b = self.next_in.fetch_add(1, Ordering::Relaxed));
            self.log.lock().unwrap().push(format!("in {port:#x} {}", data.len()));
        }
        fn pio_write(&self, port: u16, data: &[u8]) {
            self.log.lock().unwrap().push(format!("out {port:#x} {data:?}"));
        }
        fn mmio_read(&self, addr: u64, data: &mut [u8]) {
            data.fill(0xee);
            self.log.lock().unwrap().push(format!("rd {addr:#x} {}", data.len()));
        }
        fn mmio_write(&self, addr: u64, data: &[u8]) {
            self.log.lock().unwrap().push(format!("wr {addr:#x} {data:?}"));
        }
        fn interrupt_pending(&self) -> bool {
            self.pending
        }
        fn acknowledge_interrupt(&self) -> Option<u8> {
            None
        }
        fn stop_requested(&self) -> bool {
            self.stop
        }
    }

    fn io(size: usize) -> RunState {
        RunState { io_size: size, ..Default::default() }
    }

    fn log(ops: &Ops) -> Vec<String> {
        std::mem::take(&mut *ops.log.lock().unwrap())
    }

    #[test]
    fn port_io_single_and_string() {
        let ops = Ops::default();
        assert_eq!(handle_exit(KvmExit::IoOut(0x3f8, b"A"), &io(1), &ops), ExitAction::Continue);
        // rep outsw, three elements.
        assert_eq!(handle_exit(KvmExit::IoOut(0x1f0, &[1, 2, 3, 4, 5, 6]), &io(2), &ops), ExitAction::Continue);
        assert_eq!(log(&ops), ["out 0x3f8 [65]", "out 0x1f0 [1, 2]", "out 0x1f0 [3, 4]", "out 0x1f0 [5, 6]"]);

        // rep insd, two elements: each filled by its own access, in order.
        let mut buf = [0u8; 8];
        assert_eq!(handle_exit(KvmExit::IoIn(0xcfc, &mut buf), &io(4), &ops), ExitAction::Continue);
        assert_eq!(buf, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(log(&ops), ["in 0xcfc 4", "in 0xcfc 4"]);
    }

    #[test]
    fn mmio_goes_to_ops() {
        let ops = Ops::default();
        let mut buf = [0u8; 4];
        assert_eq!(handle_exit(KvmExit::MmioRead(0xfee0_0030, &mut buf), &io(0), &ops), ExitAction::Continue);
        assert_eq!(buf, [0xee; 4]);
        assert_eq!(handle_exit(KvmExit::MmioWrite(0xffff_0000, &[9, 8]), &io(0), &ops), ExitAction::Continue);
        assert_eq!(log(&ops), ["rd 0xfee00030 4", "wr 0xffff0000 [9, 8]"]);
    }

    #[test]
    fn stop_request_after_io_kicks() {
        let ops = Ops { stop: true, ..Default::default() };
        assert_eq!(handle_exit(KvmExit::IoOut(0x64, &[0xfe]), &io(1), &ops), ExitAction::Return(VcpuExit::Kicked));
        assert_eq!(log(&ops).len(), 1, "the access happened before the stop");
        let mut b = [0];
        assert_eq!(handle_exit(KvmExit::MmioRead(0, &mut b), &io(0), &ops), ExitAction::Return(VcpuExit::Kicked));
    }

    #[test]
    fn halt_waits_unless_an_interrupt_can_be_taken() {
        let idle = Ops::default();
        let pending = Ops { pending: true, ..Default::default() };
        let open = RunState { can_inject: true, ..Default::default() };
        assert_eq!(handle_exit(KvmExit::Hlt, &open, &idle), ExitAction::Return(VcpuExit::Halted));
        assert_eq!(handle_exit(KvmExit::Hlt, &RunState::default(), &pending), ExitAction::Return(VcpuExit::Halted));
        assert_eq!(handle_exit(KvmExit::Hlt, &open, &pending), ExitAction::Continue);
        assert_eq!(handle_exit(KvmExit::IrqWindowOpen, &open, &pending), ExitAction::Continue);
        assert_eq!(handle_exit(KvmExit::SetTpr, &open, &pending), ExitAction::Continue);
    }

    #[test]
    fn machine_level_exits() {
        let ops = Ops::default();
        let s = RunState::default();
        assert_eq!(handle_exit(KvmExit::Shutdown, &s, &ops), ExitAction::Return(VcpuExit::Shutdown));
        assert_eq!(handle_exit(KvmExit::Debug(Default::default()), &s, &ops), ExitAction::Return(VcpuExit::Debug));
        assert_eq!(handle_exit(KvmExit::Intr, &s, &ops), ExitAction::Return(VcpuExit::Kicked));
        assert_eq!(
            handle_exit(KvmExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]), &s, &ops),
            ExitAction::Return(VcpuExit::Shutdown)
        );
    }

    #[test]
    fn errors_are_described() {
        let ops = Ops::default();
        let s = RunState { internal_error: Some((1, vec![0x10, 0x2])), ..Default::default() };
        let ExitAction::Fail(msg) = handle_exit(KvmExit::InternalError, &s, &ops) else { panic!() };
        assert_eq!(msg, "KVM internal error 1 (emulation failure), data [0x10, 0x2]");
        assert_eq!(describe_internal_error(Some(&(3, vec![]))), "KVM internal error 3 (exception delivery failed)");
        // As kvm_pvm reports `lock cmpxchg16b`: flags, then length 15 and the bytes.
        let insn = (1, vec![0x1, 0x0025_0cc7_0f48_f00f, 0xf480_e601_b000_0300, 0x1000]);
        assert_eq!(
            describe_internal_error(Some(&insn)),
            "KVM internal error 1 (emulation failure) on instruction bytes \
             [f0 48 0f c7 0c 25 00 00 03 00 b0 01 e6 80 f4], data [0x1000]"
        );
        let ExitAction::Fail(msg) = handle_exit(KvmExit::FailEntry(0x8000_0021, 2), &s, &ops) else { panic!() };
        assert!(msg.contains("invalid guest state") && msg.contains("CPU 2"), "{msg}");
        let ExitAction::Fail(msg) = handle_exit(KvmExit::Unsupported(99), &s, &ops) else { panic!() };
        assert!(msg.contains("Unsupported(99)"), "{msg}");
        assert!(matches!(handle_exit(KvmExit::Unknown, &s, &ops), ExitAction::Fail(_)));
    }
}
