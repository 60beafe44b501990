//! Runs small hand-assembled guests on the host's KVM.
//!
//! Without a usable /dev/kvm these tests fail, unless QUERN_NO_KVM=1 says the host has
//! none, in which case each prints "NOT RUN" and returns.
// KVM runs x86 guests on x86-64 hosts only (the crate is empty elsewhere).
#![cfg(target_arch = "x86_64")]

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use iced_x86::code_asm::*;
use quern_accel_kvm::{is_pvm_host, CpuidMask, IrqChipMode, KvmAccelerator, KvmConfig};
use quern_core::cpu::{CpuEvent, Gp};
use quern_core::memory::{RegionKind, RegionSpec};
use quern_core::regs::{ctrl, flags, msr, power_on_state, DebugRegs, DescriptorTable, FpuState, MsrEntry, Segment};
use quern_core::{Accelerator, CpuError, GuestMemory, Vcpu, VcpuExit, VmOps};

/// Prints past the test harness's capture, so that "NOT RUN" and "HOST LIMIT" show
/// in a passing run too.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The VM under test, or None (after saying so) when QUERN_NO_KVM=1 and KVM is unusable.
fn vm(mem: GuestMemory, config: KvmConfig) -> Option<(Arc<GuestMemory>, KvmAccelerator)> {
    let mem = Arc::new(mem);
    match KvmAccelerator::new(mem.clone(), config) {
        Ok(accel) => Some((mem, accel)),
        Err(e) if std::env::var("QUERN_NO_KVM").as_deref() == Ok("1") => {
            say(&format!("NOT RUN: no usable /dev/kvm ({e})"));
            None
        }
        Err(e) => panic!("{e}\n(set QUERN_NO_KVM=1 to skip KVM tests on a host without KVM)"),
    }
}

fn flat_vm(config: KvmConfig) -> Option<(Arc<GuestMemory>, KvmAccelerator)> {
    vm(GuestMemory::flat(4 << 20).unwrap(), config)
}

/// Records what the guest did; offers one interrupt vector if told to.
#[derive(Default)]
struct Ops {
    pio: Mutex<Vec<(u16, Vec<u8>)>>,
    mmio: Mutex<Vec<(u64, Vec<u8>)>>,
    next_in: AtomicU8,
    irq: Mutex<Option<u8>>,
    stop: AtomicBool,
    /// A write to this port asks the vCPU to stop.
    stop_on_port: Option<u16>,
    /// A machine with a local APIC: its TPR as CR8 and its IA32_APIC_BASE.
    lapic: Option<Mutex<FakeLapic>>,
    /// Signals the APIC hands out through take_event.
    events: Mutex<Vec<CpuEvent>>,
}

/// What a machine's local APIC shows the KVM run loop, with a record of its updates.
#[derive(Default)]
struct FakeLapic {
    cr8: u64,
    apic_base: u64,
    cr8_writes: Vec<u64>,
    base_writes: Vec<u64>,
}

impl Ops {
    fn pio(&self) -> Vec<(u16, Vec<u8>)> {
        self.pio.lock().unwrap().clone()
    }
}

impl VmOps for Ops {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.iter_mut().for_each(|b| *b = self.next_in.fetch_add(1, Ordering::SeqCst));
        let _ = port;
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.pio.lock().unwrap().push((port, data.to_vec()));
        if self.stop_on_port == Some(port) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.mmio.lock().unwrap().push((addr, data.to_vec()));
    }
    fn interrupt_pending(&self) -> bool {
        self.irq.lock().unwrap().is_some()
    }
    fn acknowledge_interrupt(&self) -> Option<u8> {
        self.irq.lock().unwrap().take()
    }
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    fn take_event(&self) -> Option<CpuEvent> {
        self.events.lock().unwrap().pop()
    }
    fn msr_read(&self, index: u32) -> Option<Result<u64, Gp>> {
        let l = self.lapic.as_ref().filter(|_| index == msr::IA32_APIC_BASE)?;
        Some(Ok(l.lock().unwrap().apic_base))
    }
    fn msr_write(&self, index: u32, value: u64) -> Option<Result<(), Gp>> {
        let mut l = self.lapic.as_ref().filter(|_| index == msr::IA32_APIC_BASE)?.lock().unwrap();
        l.apic_base = value;
        l.base_writes.push(value);
        Some(Ok(()))
    }
    fn cr8(&self) -> Option<u64> {
        Some(self.lapic.as_ref()?.lock().unwrap().cr8)
    }
    fn set_cr8(&self, value: u64) {
        if let Some(l) = &self.lapic {
            let mut l = l.lock().unwrap();
            l.cr8 = value;
            l.cr8_writes.push(value);
        }
    }
}

const CODE: u64 = 0x1000;

/// Assembles `build`'s code for `bits`-bit mode at `ip`.
fn asm(bits: u32, ip: u64, build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).unwrap();
    build(&mut a).unwrap();
    a.assemble(ip).unwrap()
}

/// A vCPU in real mode at 0000:CODE running `code`, with SS:SP = 0000:7000.
fn real_mode_vcpu(accel: &KvmAccelerator, mem: &GuestMemory, code: &[u8]) -> Box<dyn Vcpu> {
    mem.write(CODE, code).unwrap();
    let mut vcpu = accel.create_vcpu(0).unwrap();
    let (mut regs, mut sregs) = power_on_state();
    sregs.cs = Segment::real_mode(0, true);
    vcpu.set_sregs(&sregs).unwrap();
    (regs.rip, regs.rsp) = (CODE, 0x7000);
    vcpu.set_regs(&regs).unwrap();
    vcpu
}

/// Runs with a deadline, so a vCPU that never comes back fails the test instead of
/// hanging it.
fn run_bounded(vcpu: &mut dyn Vcpu, ops: &dyn VmOps) -> Result<VcpuExit, CpuError> {
    let kicker = vcpu.kicker();
    let (done, wait) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait.recv_timeout(Duration::from_secs(20)) == Err(mpsc::RecvTimeoutError::Timeout) {
            kicker.kick();
            panic!("vCPU did not return within 20 s");
        }
    });
    let r = vcpu.run(ops);
    drop(done);
    watchdog.join().expect("watchdog");
    r
}

#[test]
fn real_mode_out_and_hlt() {
    let Some((mem, accel)) = flat_vm(KvmConfig::default()) else { return };
    let code = asm(16, CODE, |a| {
        a.mov(dx, 0x3f8)?;
        a.mov(al, b'A' as i32)?;
        a.out(dx, al)?;
        a.hlt()
    });
    let mut vcpu = real_mode_vcpu(&accel, &mem, &code);
    let ops = Ops::default();
    assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Halted);
    assert_eq!(ops.pio(), [(0x3f8, vec![b'A'])]);
    assert_eq!(vcpu.regs().unwrap().rip, CODE + code.len() as u64, "stopped after the hlt");
}

/// Identity-maps the first 1 GiB with 2 MiB pages and loads a flat 64-bit GDT.
fn long_mode_vcpu(accel: &KvmAccelerator, mem: &GuestMemory, code: &[u8]) -> Box<dyn Vcpu> {
    const PML4: u64 = 0x10000;
    const GDT: u64 = 0x500;
    mem.write_u64(PML4, (PML4 + 0x1000) | 3).unwrap();
    mem.write_u64(PML4 + 0x1000, (PML4 + 0x2000) | 3).unwrap();
    for i in 0..512u64 {
        mem.write_u64(PML4 + 0x2000 + i * 8, (i << 21) | 0x83).unwrap(); // present, writable, 2 MiB
    }
    let code_seg = Segment::flat(0x08, true, true);
    let data_seg = Segment::flat(0x10, false, false);
    for (i, s) in [Segment::default(), code_seg, data_seg].iter().enumerate() {
        let d = if i == 0 { 0 } else { s.descriptor() };
        mem.write_u64(GDT + 8 * i as u64, d).unwrap();
    }
    mem.write(0x20000, code).unwrap();

    let mut vcpu = accel.create_vcpu(0).unwrap();
    let (mut regs, mut sregs) = power_on_state();
    sregs.cs = code_seg;
    (sregs.ds, sregs.es, sregs.ss, sregs.fs, sregs.gs) = (data_seg, data_seg, data_seg, data_seg, data_seg);
    sregs.gdt = DescriptorTable { base: GDT, limit: 3 * 8 - 1 };
    sregs.cr0 = ctrl::CR0_PE | ctrl::CR0_MP | ctrl::CR0_ET | ctrl::CR0_NE | ctrl::CR0_WP | ctrl::CR0_PG;
    sregs.cr3 = PML4;
    sregs.cr4 = ctrl::CR4_PAE | ctrl::CR4_OSFXSR | ctrl::CR4_OSXMMEXCPT;
    sregs.efer = ctrl::EFER_LME | ctrl::EFER_LMA;
    vcpu.set_sregs(&sregs).unwrap();
    (regs.rip, regs.rsp, regs.rflags) = (0x20000, 0x8000, flags::FIXED1);
    vcpu.set_regs(&regs).unwrap();
    vcpu
}

#[test]
fn long_mode_code_runs() {
    let Some((mem, accel)) = flat_vm(KvmConfig::default()) else { return };
    let code = asm(64, 0x20000, |a| {
        a.mov(rax, 0x1122_3344_5566_7788u64)?;
        a.mov(qword_ptr(0x30000), rax)?;
        a.mov(r9, rax)?;
        a.shr(r9, 32)?;
        a.mov(dx, 0x3f8)?;
        a.mov(al, b'L' as i32)?;
        a.out(dx, al)?;
        a.hlt()
    });
    let mut vcpu = long_mode_vcpu(&accel, &mem, &code);
    let ops = Ops::default();
    assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Halted);
    assert_eq!(ops.pio(), [(0x3f8, vec![b'L'])]);
    assert_eq!(mem.read_u64(0x30000).unwrap(), 0x1122_3344_5566_7788);
    assert_eq!(vcpu.regs().unwrap().r9, 0x1122_3344);
    let s = vcpu.sregs().unwrap();
    assert!(s.cs.l && s.efer & ctrl::EFER_LMA != 0, "still in 64-bit mode: {s:?}");
}

fn spin_code() -> Vec<u8> {
    asm(16, CODE, |a| {
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.jmp(top)
    })
}

#[test]
fn kick_from_another_thread_stops_a_spinning_guest() {
    let Some((mem, accel)) = flat_vm(KvmConfig::default()) else { return };
    let mut vcpu = real_mode_vcpu(&accel, &mem, &spin_code());
    let ops = Ops::default();

    // A kick before run() is remembered by the flag alone.
    vcpu.kicker().kick();
    assert_eq!(vcpu.run(&ops).unwrap(), VcpuExit::Kicked);

    // Kicks at varied moments, including just around entry into KVM_RUN.
    let kicker = vcpu.kicker();
    for i in 0..50u64 {
        let k = kicker.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(i * 97 % 3000));
            k.kick();
        });
        assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Kicked, "kick {i}");
        t.join().unwrap();
    }
    assert_eq!(vcpu.regs().unwrap().rip, CODE, "the guest was spinning on its jmp");
    assert!(ops.pio().is_empty());
}

#[test]
fn string_io_delivers_every_element_in_order() {
    let Some((mem, accel)) = flat_vm(KvmConfig::default()) else { return };
    mem.write(0x2000, b"hello, world").unwrap();
    let code = asm(16, CODE, |a| {
        a.cld()?;
        a.mov(si, 0x2000)?;
        a.mov(cx, 12)?;
        a.mov(dx, 0x3f8)?;
        a.rep().outsb()?;
        // Three words in from port 0x60 to 0x3000.
        a.mov(di, 0x3000)?;
        a.mov(cx, 3)?;
        a.mov(dx, 0x60)?;
        a.rep().insw()?;
        a.hlt()
    });
    let mut vcpu = real_mode_vcpu(&accel, &mem, &code);
    let ops = Ops::default();
    assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Halted);
    let sent: Vec<u8> = ops
        .pio()
        .iter()
        .flat_map(|(port, d)| {
            assert_eq!((*port, d.len()), (0x3f8, 1), "one byte-sized access each");
            d.clone()
        })
        .collect();
    assert_eq!(sent, b"hello, world");
    let mut got = [0u8; 6];
    mem.read(0x3000, &mut got).unwrap();
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    let regs = vcpu.regs().unwrap();
    assert_eq!((regs.rcx & 0xffff, regs.rdi & 0xffff), (0, 0x3006));
}

#[test]
fn interrupt_is_injected_into_a_halted_guest() {
    let Some((mem, accel)) = flat_vm(KvmConfig::default()) else { return };
    const HANDLER: u64 = 0x1800;
    let handler = asm(16, HANDLER, |a| {
        a.mov(al, 0x42)?;
        a.out(0x80, al)?;
        a.iret()
    });
    mem.write(HANDLER, &handler).unwrap();
    mem.write_u16(0x20 * 4, HANDLER as u16).unwrap();
    mem.write_u16(0x20 * 4 + 2, 0).unwrap();
    let code = asm(16, CODE, |a| {
        a.sti()?;
        a.hlt()?;
        a.mov(al, 0x99)?;
        a.out(0x81, al)?;
        a.cli()?;
        a.hlt()
    });
    let mut vcpu = real_mode_vcpu(&accel, &mem, &code);
    let ops = Ops::default();
    *ops.irq.lock().unwrap() = Some(0x20);
    assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Halted);
    assert_eq!(ops.pio(), [(0x80, vec![0x42]), (0x81, vec![0x99])]);
    assert!(ops.irq.lock().unwrap().is_none(), "acknowledged");
}

#[test]
fn stop_after_port_in_leaves_complete_state() {
    let Some((mem, accel)) = flat_vm(KvmConfig::default()) else { return };
    let code = asm(16, CODE, |a| {
        a.mov(al, 0)?;
        a.in_(al, 0x60)?;
        a.mov(byte_ptr(0x500), al)?;
        a.hlt()
    });
    let mut vcpu = real_mode_vcpu(&accel, &mem, &code);
    let ops = Ops { next_in: AtomicU8::new(0x77), ..Default::default() };
    ops.stop.store(true, Ordering::SeqCst);
    assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Kicked);
    assert_eq!(vcpu.regs().unwrap().rax & 0xff, 0x77, "the IN completed before run() returned");
    ops.stop.store(false, Ordering::SeqCst);
    assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Halted);
    assert_eq!(mem.read_u8(0x500).unwrap(), 0x77);
}

#[test]
fn rom_is_read_only_and_holes_are_mmio() {
    // RAM [0, 64K), ROM [64K, 68K), nothing above.
    let mem = GuestMemory::new(
        &[0x10000, 0x1000],
        &[
            RegionSpec { guest_base: 0, size: 0x10000, backing: 0, offset: 0, kind: RegionKind::Ram },
            RegionSpec { guest_base: 0x10000, size: 0x1000, backing: 1, offset: 0, kind: RegionKind::Rom },
        ],
    )
    .unwrap();
    let Some((mem, accel)) = vm(mem, KvmConfig::default()) else { return };
    mem.fill(0x10000, 0x1000, 0xaa).unwrap();
    let code = asm(16, CODE, |a| {
        a.mov(ax, 0x1000)?;
        a.mov(ds, ax)?;
        a.mov(byte_ptr(0), 0x55)?;
        a.mov(al, byte_ptr(0))?;
        a.out(0x90, al)?;
        a.mov(ax, 0x2000)?;
        a.mov(ds, ax)?;
        a.mov(al, byte_ptr(0x10))?;
        a.out(0x91, al)?;
        a.hlt()
    });
    let mut vcpu = real_mode_vcpu(&accel, &mem, &code);
    let ops = Ops::default();
    assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Halted);
    assert_eq!(*ops.mmio.lock().unwrap(), [(0x10000, vec![0x55])], "the ROM write became an MMIO exit");
    assert_eq!(ops.pio(), [(0x90, vec![0xaa]), (0x91, vec![0x5a])], "ROM unchanged; hole read from MMIO");
    assert_eq!(mem.read_u8(0x10000).unwrap(), 0xaa);
}

/// Without the in-kernel irqchip the machine's LAPIC is reached through MMIO exits
/// only: CPUID shows the APIC (enabled in IA32_APIC_BASE) but not x2APIC or
/// TSC-deadline, whose MSRs KVM would not pass on.
#[test]
fn cpuid_shows_the_mask_and_an_xapic_only_without_irqchip() {
    let config = KvmConfig { cpuid_mask: CpuidMask::pvm_workarounds(), ..Default::default() };
    let Some((mem, accel)) = flat_vm(config) else { return };
    let code = asm(16, CODE, |a| {
        a.mov(eax, 1)?;
        a.cpuid()?;
        a.mov(dword_ptr(0x600), ecx)?;
        a.mov(dword_ptr(0x604), edx)?;
        a.mov(eax, 0xd)?;
        a.mov(ecx, 1)?;
        a.cpuid()?;
        a.mov(dword_ptr(0x608), eax)?;
        a.mov(ecx, 0x1b)?;
        a.rdmsr()?;
        a.mov(dword_ptr(0x60c), eax)?;
        a.hlt()
    });
    let mut vcpu = real_mode_vcpu(&accel, &mem, &code);
    assert_eq!(run_bounded(&mut *vcpu, &Ops::default()).unwrap(), VcpuExit::Halted);
    let (leaf1_ecx, leaf1_edx) = (mem.read_u32(0x600).unwrap(), mem.read_u32(0x604).unwrap());
    let xsave_features = mem.read_u32(0x608).unwrap();
    assert_ne!(leaf1_edx & (1 << 9), 0, "the APIC bit: the machine has a local APIC");
    assert_eq!(leaf1_ecx & (1 << 21 | 1 << 24), 0, "no x2APIC or TSC-deadline: {leaf1_ecx:#x}");
    assert_eq!(mem.read_u32(0x60c).unwrap(), 0xfee0_0900, "IA32_APIC_BASE: enabled BSP at the default base");
    assert_ne!(leaf1_ecx & (1 << 31), 0, "hypervisor bit");
    assert_eq!(leaf1_ecx & (1 << 13), 0, "cx16 hidden: {leaf1_ecx:#x}");
    let xsave_avx = leaf1_ecx & (1 << 26 | 1 << 28);
    if (xsave_avx != 0 || xsave_features != 0) && is_pvm_host() {
        say(&format!(
            "HOST LIMIT (kvm_pvm): the guest sees XSAVE/AVX (leaf 1 ECX {leaf1_ecx:#x}, leaf 0xd.1 EAX \
             {xsave_features:#x}) although KVM_SET_CPUID2 hid them"
        ));
    } else {
        assert_eq!(xsave_avx, 0, "xsave/avx hidden: {leaf1_ecx:#x}");
        assert_eq!(xsave_features, 0, "leaf 0xd hidden");
    }
}

/// A named `-cpu` model under KVM: QEMU's family/model/stepping and brand string, the
/// host's vendor, only the model's features.
#[test]
fn cpuid_follows_a_named_cpu_model() {
    let cpu = quern_core::CpuModel::parse("qemu64,-cx16").unwrap();
    let Some((mem, accel)) = flat_vm(KvmConfig { cpu, ..Default::default() }) else { return };
    let code = asm(16, CODE, |a| {
        a.mov(eax, 1)?;
        a.cpuid()?;
        a.mov(dword_ptr(0x600), eax)?;
        a.mov(dword_ptr(0x604), ecx)?;
        a.mov(eax, 0x8000_0002u32)?;
        a.cpuid()?;
        a.mov(dword_ptr(0x608), eax)?;
        a.mov(eax, 0)?;
        a.cpuid()?;
        a.mov(dword_ptr(0x60c), eax)?;
        a.mov(dword_ptr(0x610), ebx)?;
        a.hlt()
    });
    let mut vcpu = real_mode_vcpu(&accel, &mem, &code);
    assert_eq!(run_bounded(&mut *vcpu, &Ops::default()).unwrap(), VcpuExit::Halted);
    let word = |a| mem.read_u32(a).unwrap();
    assert_eq!(word(0x600), 0x0006_0fb1, "family 15, model 107, stepping 1");
    let leaf1_ecx = word(0x604);
    assert_eq!(leaf1_ecx & (1 << 13), 0, "cx16 taken away: {leaf1_ecx:#x}");
    if leaf1_ecx & (1 << 28) != 0 && is_pvm_host() {
        say(&format!("HOST LIMIT (kvm_pvm): the guest sees AVX (leaf 1 ECX {leaf1_ecx:#x}) although qemu64 has none"));
    } else {
        assert_eq!(leaf1_ecx & (1 << 28), 0, "no avx in qemu64: {leaf1_ecx:#x}");
    }
    assert_eq!(&word(0x608).to_le_bytes(), b"QEMU");
    assert_eq!(word(0x60c), 0xd, "qemu64's highest basic leaf");
    let host = std::arch::x86_64::__cpuid(0);
    assert_eq!(word(0x610), host.ebx, "the host's vendor, as QEMU keeps it under KVM");
}

#[test]
fn cpu_models_kvm_cannot_give_are_refused() {
    let cpu = quern_core::CpuModel::parse("host,+svm,+vmx").unwrap();
    let mem = Arc::new(GuestMemory::flat(4 << 20).unwrap());
    match KvmAccelerator::new(mem, KvmConfig { cpu, ..Default::default() }) {
        Err(e) if std::env::var("QUERN_NO_KVM").as_deref() == Ok("1") && !e.to_string().contains("CPU feature") => {
            say(&format!("NOT RUN: no usable /dev/kvm ({e})"));
        }
        Err(e) => assert!(e.to_string().starts_with("kvm does not support CPU feature '"), "{e}"),
        Ok(_) => say("NOT RUN: this host's KVM offers both svm and vmx"),
    }
}

#[test]
fn register_state_round_trips_through_kvm() {
    let Some((_mem, accel)) = flat_vm(KvmConfig::default()) else { return };
    let mut vcpu = accel.create_vcpu(0).unwrap();
    let (regs, sregs) = power_on_state();
    assert_eq!(vcpu.regs().unwrap().rip, regs.rip, "created in the power-on state");
    assert_eq!(vcpu.sregs().unwrap().cs.base, sregs.cs.base);

    let mut r = regs;
    r.set_gprs(std::array::from_fn(|i| 0x0101_0101 * i as u64));
    r.rip = 0x1234;
    vcpu.set_regs(&r).unwrap();
    assert_eq!(vcpu.regs().unwrap(), r);

    let fpu = FpuState { fcw: 0x27f, mxcsr: 0x1fa0, xmm: [[7; 16]; 16], ..Default::default() };
    vcpu.set_fpu(&fpu).unwrap();
    let got = vcpu.fpu().unwrap();
    assert_eq!((got.fcw, got.xmm), (fpu.fcw, fpu.xmm));
    if got.mxcsr != fpu.mxcsr && is_pvm_host() {
        say(&format!("HOST LIMIT (kvm_pvm): KVM_SET_FPU does not keep MXCSR (read back {:#x})", got.mxcsr));
    } else {
        assert_eq!(got.mxcsr, fpu.mxcsr);
    }

    let d = DebugRegs { db: [0x1000, 0x2000, 0x3000, 0x4000], dr6: 0xffff_0ff0, dr7: 0x400 };
    vcpu.set_debug_regs(&d).unwrap();
    assert_eq!(vcpu.debug_regs().unwrap().db, d.db);

    let mut m = [MsrEntry { index: msr::IA32_PAT, data: 0 }, MsrEntry { index: msr::IA32_SYSENTER_CS, data: 0 }];
    vcpu.set_msrs(&[MsrEntry { index: msr::IA32_SYSENTER_CS, data: 0x10 }]).unwrap();
    vcpu.msrs(&mut m).unwrap();
    assert_eq!(m[0].data, 0x0007_0406_0007_0406, "PAT set at creation");
    assert_eq!(m[1].data, 0x10);

    vcpu.reset().unwrap();
    assert_eq!(vcpu.regs().unwrap(), regs);
    assert_eq!(vcpu.fpu().unwrap().fcw, 0x37f);
}

#[test]
fn in_kernel_irqchip_takes_lines_and_halts_in_kernel() {
    let config = KvmConfig { irqchip: IrqChipMode::InAccelerator, ..Default::default() };
    let Some((mem, accel)) = flat_vm(config) else { return };
    assert_eq!(accel.irqchip_mode(), IrqChipMode::InAccelerator);
    accel.set_irq_line(4, true).unwrap();
    accel.set_irq_line(4, false).unwrap();
    let code = asm(16, CODE, |a| {
        a.mov(al, b'K' as i32)?;
        a.out(0x80, al)?;
        a.cli()?;
        a.hlt()
    });
    let mut vcpu = real_mode_vcpu(&accel, &mem, &code);
    let ops = Ops::default();
    // The kernel keeps a halted vCPU; only a kick brings it back.
    let k = vcpu.kicker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        k.kick();
    });
    assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Kicked);
    t.join().unwrap();
    assert_eq!(ops.pio(), [(0x80, vec![b'K'])]);

    let userspace = flat_vm(KvmConfig::default()).unwrap().1;
    assert_eq!(userspace.irqchip_mode(), IrqChipMode::Userspace);
    assert!(userspace.set_irq_line(4, true).is_err());
}

#[test]
fn in_kernel_pic_delivers_an_irq_line_to_the_guest() {
    let config = KvmConfig { irqchip: IrqChipMode::InAccelerator, ..Default::default() };
    let Some((mem, accel)) = flat_vm(config) else { return };
    const HANDLER: u64 = 0x1800;
    let handler = asm(16, HANDLER, |a| {
        a.mov(al, 0x42)?;
        a.out(0x80, al)?;
        a.mov(al, 0x20)?; // EOI to the in-kernel PIC
        a.out(0x20, al)?;
        a.iret()
    });
    mem.write(HANDLER, &handler).unwrap();
    mem.write_u16(0x24 * 4, HANDLER as u16).unwrap();
    mem.write_u16(0x24 * 4 + 2, 0).unwrap();
    let code = asm(16, CODE, |a| {
        // Initialise the master 8259 (handled inside KVM): vectors 0x20.., only IRQ 4 unmasked.
        for (port, v) in [(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xef)] {
            a.mov(al, v)?;
            a.out(port, al)?;
        }
        a.mov(al, 0x01)?;
        a.out(0x82, al)?; // "ready": from here the vCPU waits in the kernel
        a.sti()?;
        a.hlt()?;
        a.mov(al, 0x99)?;
        a.out(0x81, al)?;
        a.cli()?;
        a.hlt()
    });
    let mut vcpu = real_mode_vcpu(&accel, &mem, &code);
    let ops = Ops { stop_on_port: Some(0x81), ..Default::default() };
    let exit = std::thread::scope(|s| {
        s.spawn(|| {
            while !ops.pio().iter().any(|(p, _)| *p == 0x82) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(50));
            accel.set_irq_line(4, true).unwrap();
            accel.set_irq_line(4, false).unwrap();
        });
        run_bounded(&mut *vcpu, &ops)
    });
    assert_eq!(exit.unwrap(), VcpuExit::Kicked, "stopped at the marker write");
    assert_eq!(ops.pio(), [(0x82, vec![1]), (0x80, vec![0x42]), (0x81, vec![0x99])]);
}

/// `lock cmpxchg16b` at CPL 0 in long mode: real VT-x/AMD-V runs it; kvm_pvm's emulator
/// cannot, and the failure must come back as a descriptive guest error.
#[test]
fn emulator_failure_is_reported_with_rip() {
    let Some((mem, accel)) = flat_vm(KvmConfig::default()) else { return };
    let code = asm(64, 0x20000, |a| {
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.lock().cmpxchg16b(xmmword_ptr(0x30000))?;
        a.mov(al, 1)?;
        a.out(0x80, al)?;
        a.hlt()
    });
    let mut vcpu = long_mode_vcpu(&accel, &mem, &code);
    let ops = Ops::default();
    match run_bounded(&mut *vcpu, &ops) {
        Ok(exit) => {
            assert_eq!(exit, VcpuExit::Halted);
            assert_eq!(ops.pio(), [(0x80, vec![1])]);
        }
        Err(CpuError::Guest { reason, .. }) if is_pvm_host() => {
            say(&format!("HOST LIMIT (kvm_pvm): lock cmpxchg16b is not emulated: {reason}"));
            assert!(reason.contains("KVM internal error 1 (emulation failure)"), "{reason}");
            assert!(reason.contains("RIP 0x2"), "{reason}");
        }
        Err(e) => panic!("{e}"),
    }
}

/// The userspace LAPIC's CPU-side state under KVM: the APIC's TPR is the CR8 the
/// guest reads; a CR8 and an IA32_APIC_BASE the guest writes (both handled inside KVM)
/// reach the APIC by the next exit.
#[test]
fn userspace_lapic_sees_cr8_and_apic_base_through_kvm_run() {
    let Some((mem, accel)) = flat_vm(KvmConfig::default()) else { return };
    let code = asm(64, 0x20000, |a| {
        a.mov(rax, cr8)?;
        a.mov(qword_ptr(0x30000), rax)?;
        a.mov(eax, 2)?;
        a.mov(cr8, rax)?;
        a.out(0x80, al)?;
        a.mov(ecx, 0x1b)?;
        a.mov(eax, 0xfed0_0900u32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.out(0x81, al)?;
        a.hlt()
    });
    let mut vcpu = long_mode_vcpu(&accel, &mem, &code);
    let lapic = FakeLapic { cr8: 6, apic_base: 0xfee0_0900, ..Default::default() };
    let ops = Ops { lapic: Some(Mutex::new(lapic)), ..Default::default() };
    assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Halted);
    assert_eq!(mem.read_u64(0x30000).unwrap(), 6, "CR8 read as the APIC's TPR");
    let l = ops.lapic.as_ref().unwrap().lock().unwrap();
    assert_eq!(l.cr8_writes, [2], "the CR8 the guest wrote, once");
    assert_eq!(l.base_writes, [0xfed0_0900], "the relocated APIC base, once");
}

/// An NMI the machine's LAPIC signals (LINT1, ICR) goes in through KVM_NMI.
#[test]
fn userspace_lapic_nmi_is_delivered() {
    let Some((mem, accel)) = flat_vm(KvmConfig::default()) else { return };
    const HANDLER: u64 = 0x1800;
    let handler = asm(16, HANDLER, |a| {
        a.mov(al, 0x22)?;
        a.out(0x82, al)?;
        a.iret()
    });
    mem.write(HANDLER, &handler).unwrap();
    mem.write_u16(2 * 4, HANDLER as u16).unwrap();
    mem.write_u16(2 * 4 + 2, 0).unwrap();
    let code = asm(16, CODE, |a| {
        a.cli()?;
        a.mov(al, 1)?;
        a.out(0x81, al)?;
        a.hlt()
    });
    let mut vcpu = real_mode_vcpu(&accel, &mem, &code);
    let ops = Ops { events: Mutex::new(vec![CpuEvent::Nmi]), ..Default::default() };
    assert_eq!(run_bounded(&mut *vcpu, &ops).unwrap(), VcpuExit::Halted);
    assert_eq!(ops.pio(), [(0x82, vec![0x22]), (0x81, vec![1])], "the NMI, with interrupts off, first");
}
