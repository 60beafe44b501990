//! Rust functions generated code calls: the soft-MMU slow paths and the flag
//! computation. Each takes the `Cpu` generated code runs with; faults are left in
//! `state.fault` for the block's fault exit.

use crate::cpu::Cpu;

/// A load that missed the TLB: returns the value (0 after a fault).
/// # Safety
/// Called only by generated code, with the `Cpu` it runs with (valid, not aliased).
pub unsafe extern "sysv64" fn helper_load(cpu: *mut Cpu, linear: u64, width: u64) -> u64 {
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
pub unsafe extern "sysv64" fn helper_store(cpu: *mut Cpu, linear: u64, value: u64, width: u64) -> u32 {
    // SAFETY: as in helper_load.
    let cpu = unsafe { &mut *cpu };
    crate::profile::count(&crate::profile::SLOW_ACCESSES);
    cpu.code_modified = false;
    if let Err(e) = cpu.write_n(linear, value, width as u8) {
        cpu.raise(e);
    }
    u32::from(cpu.code_modified)
}

/// EFLAGS with the status flags computed from the lazy record.
/// # Safety
/// Called only by generated code, with the `Cpu` it runs with (valid, not aliased).
pub unsafe extern "sysv64" fn helper_flags(cpu: *mut Cpu) -> u64 {
    // SAFETY: as in helper_load.
    let cpu = unsafe { &*cpu };
    cpu.state.flags()
}
