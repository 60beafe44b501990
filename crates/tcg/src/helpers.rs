//! Rust functions generated code calls: the soft-MMU slow paths and the flag
//! computation. Each takes the `Cpu` generated code runs with; faults are left in
//! `state.fault` for the block's fault exit.

use crate::cpu::Cpu;

/// A load that missed the TLB: returns the value (0 after a fault).
/// # Safety
/// Called only by generated code, with the `Cpu` it runs with (valid, not aliased).
pub unsafe extern "C" fn helper_load(cpu: *mut Cpu, linear: u64, width: u64) -> u64 {
    // SAFETY: generated code passes the Cpu it runs with, valid and unaliased for the
    // duration of the call.
    let cpu = unsafe { &mut *cpu };
    crate::profile::count(&crate::profile::SLOW_ACCESSES);
    match cpu.read_n(linear, width as u8) {
        Ok(v) => v,
        Err(e) => {
            cpu.raise(e);
            0
        }
    }
}

/// A store that missed the TLB. Returns nonzero when it overwrote translated code (the
/// block must end after this instruction).
/// # Safety
/// Called only by generated code, with the `Cpu` it runs with (valid, not aliased).
pub unsafe extern "C" fn helper_store(cpu: *mut Cpu, linear: u64, value: u64, width: u64) -> u32 {
    // SAFETY: as in helper_load.
    let cpu = unsafe { &mut *cpu };
    crate::profile::count(&crate::profile::SLOW_ACCESSES);
    cpu.code_modified = false;
    if let Err(e) = cpu.write_n(linear, value, width as u8) {
        cpu.raise(e);
    }
    u32::from(cpu.code_modified)
}

/// Splits a vector access's packed width and alignment flag (`w | align << 8`), and
/// raises #GP(0) for a misaligned 16-byte access of an aligned form.
fn vector_access(cpu: &mut Cpu, linear: u64, wa: u64) -> Option<usize> {
    let w = (wa & 0xff) as usize;
    if wa & 0x100 != 0 && w == 16 && linear & 15 != 0 {
        cpu.raise(crate::cpu::Exception::gp0());
        return None;
    }
    Some(w)
}

/// A vector load that missed the TLB (or is misaligned): the state's vector at byte
/// offset `off` = `w` bytes at `linear`, zero-extended; left alone after a fault.
/// # Safety
/// Called only by generated code, with the `Cpu` it runs with (valid, not aliased),
/// and `off` the offset of a 16-byte vector inside its state.
pub unsafe extern "C" fn helper_vload(cpu: *mut Cpu, linear: u64, wa: u64, off: u64) {
    // SAFETY: as in helper_load.
    let cpu = unsafe { &mut *cpu };
    crate::profile::count(&crate::profile::SLOW_ACCESSES);
    let Some(w) = vector_access(cpu, linear, wa) else { return };
    let mut v = [0u8; 16];
    match cpu.read(linear, &mut v[..w]) {
        // SAFETY: `off` names a vector inside the state (the caller's contract).
        Ok(()) => unsafe { (&raw mut cpu.state).cast::<u8>().add(off as usize).cast::<[u8; 16]>().write_unaligned(v) },
        Err(e) => cpu.raise(e),
    }
}

/// A vector store that missed the TLB: `w` bytes of the state's vector at `off` to
/// `linear`. Returns nonzero when it overwrote translated code.
/// # Safety
/// As [`helper_vload`].
pub unsafe extern "C" fn helper_vstore(cpu: *mut Cpu, linear: u64, wa: u64, off: u64) -> u32 {
    // SAFETY: as in helper_load.
    let cpu = unsafe { &mut *cpu };
    crate::profile::count(&crate::profile::SLOW_ACCESSES);
    cpu.code_modified = false;
    let Some(w) = vector_access(cpu, linear, wa) else { return 0 };
    // SAFETY: `off` names a vector inside the state (the caller's contract).
    let v = unsafe { (&raw const cpu.state).cast::<u8>().add(off as usize).cast::<[u8; 16]>().read_unaligned() };
    if let Err(e) = cpu.write(linear, &v[..w]) {
        cpu.raise(e);
    }
    u32::from(cpu.code_modified)
}

/// EFLAGS with the status flags computed from the lazy record.
/// # Safety
/// Called only by generated code, with the `Cpu` it runs with (valid, not aliased).
pub unsafe extern "C" fn helper_flags(cpu: *mut Cpu) -> u64 {
    // SAFETY: as in helper_load.
    let cpu = unsafe { &*cpu };
    cpu.state.flags()
}

/// The time-stamp counter (RDTSC).
/// # Safety
/// As [`helper_flags`].
pub unsafe extern "C" fn helper_tsc(cpu: *mut Cpu) -> u64 {
    // SAFETY: as in helper_load.
    let cpu = unsafe { &*cpu };
    cpu.tsc()
}

/// STI's effect outside EFLAGS (see [`crate::ir::Helper::Sti`]), with EFLAGS in the
/// state still as before the instruction.
/// # Safety
/// As [`helper_flags`].
pub unsafe extern "C" fn helper_sti(cpu: *mut Cpu) -> u64 {
    // SAFETY: as in helper_load.
    let cpu = unsafe { &mut *cpu };
    crate::interp::system::sti_shadow(cpu)
}
