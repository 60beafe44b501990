//! Guests for the accelerators: memory, long-mode (and 32/16-bit) set-up, an IDT whose
//! handlers record the vector and halt, a machine with no devices, and a watchdog
//! that kicks a vCPU that runs too long.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quern_core::regs::{ctrl, flags, DescriptorTable, Regs, Segment, SpecialRegs};
use quern_core::{CpuError, GuestMemory, Vcpu, VcpuExit, VcpuKicker, VmOps};

use super::compare::{Fault, Outcome, State};
use super::gen::Case;
use super::layout::*;

/// A machine with no devices: port reads give 0xff, MMIO reads 0xff, nothing is ever
/// pending; accesses are counted. `stop` is what a kick asks for (the JIT only
/// returns `Kicked` when the machine wants it back).
#[derive(Default)]
pub struct MockOps {
    pub pio: AtomicU64,
    pub mmio: AtomicU64,
    pub stop: AtomicBool,
}

impl VmOps for MockOps {
    fn pio_read(&self, _port: u16, data: &mut [u8]) {
        self.pio.fetch_add(1, Ordering::Relaxed);
        data.fill(0xff);
    }
    fn pio_write(&self, _port: u16, _data: &[u8]) {
        self.pio.fetch_add(1, Ordering::Relaxed);
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        self.mmio.fetch_add(1, Ordering::Relaxed);
        data.fill(0xff);
    }
    fn mmio_write(&self, _addr: u64, _data: &[u8]) {
        self.mmio.fetch_add(1, Ordering::Relaxed);
    }
    fn interrupt_pending(&self) -> bool {
        false
    }
    fn acknowledge_interrupt(&self) -> Option<u8> {
        None
    }
    fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// Kicks the armed vCPU when its deadline passes. One thread serves every run.
pub struct Watchdog {
    inner: Arc<(Mutex<WatchState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct WatchState {
    armed: Option<(Instant, Arc<dyn VcpuKicker>, Arc<MockOps>)>,
    fired: bool,
    quit: bool,
}

impl Watchdog {
    pub fn new() -> Self {
        let inner: Arc<(Mutex<WatchState>, Condvar)> = Arc::default();
        let i2 = inner.clone();
        let thread = std::thread::spawn(move || {
            let (m, cv) = &*i2;
            let mut st = m.lock().unwrap();
            loop {
                if st.quit {
                    return;
                }
                match &st.armed {
                    None => st = cv.wait(st).unwrap(),
                    Some((deadline, kicker, ops)) => {
                        let now = Instant::now();
                        if now >= *deadline {
                            ops.stop.store(true, Ordering::Release);
                            kicker.kick();
                            st.armed = None;
                            st.fired = true;
                        } else {
                            let d = *deadline - now;
                            st = cv.wait_timeout(st, d).unwrap().0;
                        }
                    }
                }
            }
        });
        Watchdog { inner, thread: Some(thread) }
    }

    pub fn arm(&self, kicker: Arc<dyn VcpuKicker>, ops: Arc<MockOps>, limit: Duration) {
        let (m, cv) = &*self.inner;
        let mut st = m.lock().unwrap();
        st.armed = Some((Instant::now() + limit, kicker, ops));
        st.fired = false;
        cv.notify_all();
    }

    /// Disarms; returns whether it fired.
    pub fn disarm(&self) -> bool {
        let (m, cv) = &*self.inner;
        let mut st = m.lock().unwrap();
        st.armed = None;
        cv.notify_all();
        std::mem::take(&mut st.fired)
    }
}

impl Default for Watchdog {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.inner;
            m.lock().unwrap().quit = true;
            cv.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn memory() -> Arc<GuestMemory> {
    Arc::new(GuestMemory::flat(GUEST_RAM).expect("guest memory"))
}

/// The CPU modes the guests run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Long,
    Protected32,
    Real,
}

/// Writes GDT, TSS and page tables as the machine's loader does (long mode: the first
/// 4 GiB identity-mapped with 2 MiB pages) and, if `idt`, an IDT whose 32 exception handlers store their vector at
/// [`FAULT_SLOT`] and halt; returns the special registers for `mode`. Same layout as
/// the machine's loader uses for its 64-bit entry.
pub fn setup(mem: &GuestMemory, mode: Mode, idt: bool) -> SpecialRegs {
    use quern_machine_pc::loader;
    mem.write(FAULT_SLOT, &[0xff]).unwrap();
    let mut s = match mode {
        Mode::Long => loader::long_mode(mem).expect("long-mode set-up"),
        Mode::Protected32 => loader::protected_mode(mem).expect("protected-mode set-up"),
        Mode::Real => {
            let (_, reset) = quern_core::regs::power_on_state();
            let data = Segment::real_mode(0, false);
            SpecialRegs {
                cs: Segment::real_mode(0, true),
                ds: data,
                es: data,
                fs: data,
                gs: data,
                ss: data,
                cr0: ctrl::CR0_ET,
                idt: DescriptorTable { base: 0, limit: 0 },
                ..reset
            }
        }
    };
    if idt {
        s.idt = write_idt(mem, mode);
    }
    // SSE on (as an OS enables it), with #XM for unmasked exceptions.
    s.cr4 |= ctrl::CR4_OSFXSR | ctrl::CR4_OSXMMEXCPT;
    s
}

/// 16-bit cases: real mode with CS, DS/ES and SS based at the code, buffer and stack
/// pages (as the native run's LDT segments are), 64 KiB each.
pub fn base_16bit_segments(s: &mut SpecialRegs) {
    for (seg, base) in [(&mut s.cs, CODE_BASE), (&mut s.ds, DATA_BASE), (&mut s.es, DATA_BASE), (&mut s.ss, STACK_BASE)]
    {
        seg.base = base;
        seg.selector = (base >> 4) as u16;
    }
}

/// The x87/SSE state a case starts with.
pub fn fpu_of(case: &Case) -> quern_core::regs::FpuState {
    let mut st = [[0u8; 16]; 8];
    for (d, s) in st.iter_mut().zip(&case.x87.st) {
        d[..10].copy_from_slice(s);
    }
    quern_core::regs::FpuState {
        xmm: case.xmm,
        mxcsr: case.mxcsr,
        st,
        fcw: case.x87.fcw,
        fsw: case.x87.fsw,
        ftw: case.x87.ftw,
        ..Default::default()
    }
}

/// Exception handlers: `mov byte [FAULT_SLOT], vector; hlt`, 16 bytes apart.
fn write_idt(mem: &GuestMemory, mode: Mode) -> DescriptorTable {
    for v in 0..32u64 {
        let h = HANDLERS + v * 16;
        let code: Vec<u8> = match mode {
            // mov byte [disp32], imm8 (SIB, no base: absolute in 64-bit mode).
            Mode::Long => {
                let mut c = vec![0xc6, 0x04, 0x25];
                c.extend_from_slice(&(FAULT_SLOT as u32).to_le_bytes());
                c.extend_from_slice(&[v as u8, 0xf4]);
                c
            }
            Mode::Protected32 => {
                let mut c = vec![0xc6, 0x05];
                c.extend_from_slice(&(FAULT_SLOT as u32).to_le_bytes());
                c.extend_from_slice(&[v as u8, 0xf4]);
                c
            }
            // With a CS override: 16-bit cases run with DS based elsewhere.
            Mode::Real => {
                let mut c = vec![0x2e, 0xc6, 0x06];
                c.extend_from_slice(&(FAULT_SLOT as u16).to_le_bytes());
                c.extend_from_slice(&[v as u8, 0xf4]);
                c
            }
        };
        mem.write(h, &code).unwrap();
        match mode {
            Mode::Long => {
                let lo = (h & 0xffff) | (0x10 << 16) | (0x8eu64 << 40) | (((h >> 16) & 0xffff) << 48);
                let hi = h >> 32;
                mem.write(IDT_ADDR + v * 16, &lo.to_le_bytes()).unwrap();
                mem.write(IDT_ADDR + v * 16 + 8, &hi.to_le_bytes()).unwrap();
            }
            Mode::Protected32 => {
                let d = (h & 0xffff) | (0x10 << 16) | (0x8eu64 << 40) | (((h >> 16) & 0xffff) << 48);
                mem.write(IDT_ADDR + v * 8, &d.to_le_bytes()).unwrap();
            }
            Mode::Real => {
                // IVT at 0: offset:segment.
                let d = (h as u32 & 0xffff) | ((h as u32 >> 4) & 0xf000) << 16;
                mem.write(v * 4, &d.to_le_bytes()).unwrap();
            }
        }
    }
    match mode {
        Mode::Long => DescriptorTable { base: IDT_ADDR, limit: 32 * 16 - 1 },
        Mode::Protected32 => DescriptorTable { base: IDT_ADDR, limit: 32 * 8 - 1 },
        Mode::Real => DescriptorTable { base: 0, limit: 0x3ff },
    }
}

/// Puts a case's code, data and stack in guest memory and returns its registers.
pub fn load_case(mem: &GuestMemory, case: &Case) -> Regs {
    mem.write(CODE_BASE, &case.guest_code).unwrap();
    mem.write(DATA_BASE, &case.data).unwrap();
    mem.write(STACK_BASE, &case.stack).unwrap();
    mem.write(FAULT_SLOT, &[0xff]).unwrap();
    let mut r = Regs { rip: super::gen::code_ip(case.bits), rflags: case.rflags | flags::FIXED1, ..Default::default() };
    r.set_gprs(case.gprs);
    r
}

/// The state an exception found: the handler changes no general register, and
/// RFLAGS is in the frame it was given (after the error code, if any, RIP and CS).
fn fault_state(vcpu: &mut dyn Vcpu, mem: &GuestMemory, vector: u8) -> Option<Fault> {
    let r = vcpu.regs().ok()?;
    let s = vcpu.sregs().ok()?;
    let real = s.cr0 & ctrl::CR0_PE == 0;
    let err = !real && matches!(vector, 8 | 10..=14 | 17);
    let long = s.efer & ctrl::EFER_LMA != 0;
    let w = if long {
        8
    } else if real {
        2
    } else {
        4
    };
    let sp = if long {
        r.rsp
    } else if real {
        s.ss.base + (r.rsp & 0xffff)
    } else {
        r.rsp & 0xffff_ffff
    };
    let at = sp + w * (2 + u64::from(err));
    let mut f = [0u8; 8];
    mem.read(at, &mut f[..w as usize]).ok()?;
    let mut data = vec![0u8; DATA_SIZE];
    mem.read(DATA_BASE, &mut data).ok()?;
    Some(Fault { gprs: r.gprs(), rflags: u64::from_le_bytes(f), data })
}

/// Runs a loaded case to its end: the state at `hlt`, or the exception that ended it.
pub fn run_case(
    vcpu: &mut dyn Vcpu,
    mem: &GuestMemory,
    ops: &Arc<MockOps>,
    dog: &Watchdog,
    limit: Duration,
) -> Outcome {
    ops.stop.store(false, Ordering::Release);
    dog.arm(vcpu.kicker(), ops.clone(), limit);
    let exit = vcpu.run(&**ops);
    let fired = dog.disarm();
    let exit = match exit {
        Ok(e) => e,
        Err(CpuError::Guest { reason, .. }) => return Outcome::HostLimit(reason),
        Err(e) => return Outcome::Error(e.to_string()),
    };
    match exit {
        VcpuExit::Halted => {}
        VcpuExit::Shutdown => return Outcome::Shutdown,
        VcpuExit::Kicked if fired => return Outcome::Error("still running after the time limit".into()),
        other => return Outcome::Error(format!("unexpected exit {other:?}")),
    }
    let mut slot = [0u8];
    mem.read(FAULT_SLOT, &mut slot).unwrap();
    if slot[0] != 0xff {
        return Outcome::Exception(slot[0], fault_state(vcpu, mem, slot[0]).map(Box::new));
    }
    let r = match vcpu.regs() {
        Ok(r) => r,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let mut data = vec![0u8; DATA_SIZE];
    let mut stack = vec![0u8; STACK_SIZE];
    mem.read(DATA_BASE, &mut data).unwrap();
    mem.read(STACK_BASE, &mut stack).unwrap();
    let fpu = match vcpu.fpu() {
        Ok(f) => f,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    Outcome::Ok(State {
        gprs: r.gprs(),
        rflags: r.rflags,
        data,
        stack,
        rip: Some(r.rip),
        xmm: fpu.xmm.to_vec(),
        mxcsr: fpu.mxcsr,
        x87: super::gen::X87 {
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftw: fpu.ftw,
            st: std::array::from_fn(|i| fpu.st[i][..10].try_into().unwrap()),
        },
    })
}
