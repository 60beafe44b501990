//! KVM's in-kernel interrupt controllers (PIC pair, IOAPIC, PIT), kvmclock and local
//! APICs for save/restore: the kernel's own structures, byte for byte, as hex in the
//! state stream. Opaque to the rest of quern, so they load only into KVM.

use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_lapic_state, kvm_pit_state2};
use kvm_ioctls::{VcpuFd, VmFd};
use quern_core::snapshot::State;
use quern_core::CpuError;
use serde_json::json;

use crate::error::host_error;
use crate::ACCEL_NAME;

/// Plain C structures the kernel fills: all bytes are data (KVM's ABI structs have
/// explicit padding fields).
trait Pod: Copy + Default {}
impl Pod for kvm_irqchip {}
impl Pod for kvm_pit_state2 {}
impl Pod for kvm_clock_data {}
impl Pod for kvm_lapic_state {}

fn to_hex<T: Pod>(v: &T) -> State {
    // SAFETY: T is a plain C structure of size_of::<T>() initialised bytes.
    let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) };
    State::String(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn from_hex<T: Pod>(state: &State, what: &str) -> Result<T, CpuError> {
    let bad = || CpuError::Unsupported { accel: ACCEL_NAME, what: format!("a saved {what} of another size or form") };
    let s = state.as_str().ok_or_else(bad)?;
    if s.len() != 2 * std::mem::size_of::<T>() {
        return Err(bad());
    }
    let mut v = T::default();
    // SAFETY: as in to_hex; every byte pattern is a valid value of these structures.
    let bytes = unsafe { std::slice::from_raw_parts_mut((&mut v as *mut T).cast::<u8>(), std::mem::size_of::<T>()) };
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(v)
}

/// The PIC pair, IOAPIC, PIT and kvmclock of `vm`.
pub(crate) fn save_vm(vm: &VmFd) -> Result<State, CpuError> {
    let mut chips = Vec::new();
    for chip_id in 0..3 {
        let mut c = kvm_irqchip { chip_id, ..Default::default() };
        vm.get_irqchip(&mut c).map_err(host_error("KVM_GET_IRQCHIP"))?;
        chips.push(to_hex(&c));
    }
    let pit = vm.get_pit2().map_err(host_error("KVM_GET_PIT2"))?;
    let clock = vm.get_clock().map_err(host_error("KVM_GET_CLOCK"))?;
    Ok(json!({ "irqchips": chips, "pit2": to_hex(&pit), "clock": to_hex(&clock) }))
}

/// Puts back what [`save_vm`] saved (everything parsed before anything is set).
pub(crate) fn restore_vm(vm: &VmFd, state: &State) -> Result<(), CpuError> {
    let list = state["irqchips"].as_array().filter(|l| l.len() == 3);
    let list =
        list.ok_or(CpuError::Unsupported { accel: ACCEL_NAME, what: "a saved irqchip without its 3 chips".into() })?;
    let chips = list.iter().map(|c| from_hex::<kvm_irqchip>(c, "irqchip")).collect::<Result<Vec<_>, _>>()?;
    let pit: kvm_pit_state2 = from_hex(&state["pit2"], "PIT")?;
    let mut clock: kvm_clock_data = from_hex(&state["clock"], "kvmclock")?;
    // Only the clock's value carries over: the flags describe the host it was read on.
    clock.flags = 0;
    for c in &chips {
        vm.set_irqchip(c).map_err(host_error("KVM_SET_IRQCHIP"))?;
    }
    vm.set_pit2(&pit).map_err(host_error("KVM_SET_PIT2"))?;
    vm.set_clock(&clock).map_err(host_error("KVM_SET_CLOCK"))
}

/// A vCPU's in-kernel local APIC.
pub(crate) fn save_lapic(fd: &VcpuFd) -> Result<State, CpuError> {
    Ok(to_hex(&fd.get_lapic().map_err(host_error("KVM_GET_LAPIC"))?))
}

pub(crate) fn restore_lapic(fd: &VcpuFd, state: &State) -> Result<(), CpuError> {
    let lapic: kvm_lapic_state = from_hex(state, "local APIC")?;
    fd.set_lapic(&lapic).map_err(host_error("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structures_round_trip_through_hex_and_bad_ones_are_refused() {
        let mut p = kvm_pit_state2::default();
        p.channels[1].count = 0x1234_5678;
        p.flags = 7;
        let back: kvm_pit_state2 = from_hex(&to_hex(&p), "PIT").unwrap();
        assert_eq!((back.channels[1].count, back.flags), (0x1234_5678, 7));
        assert!(from_hex::<kvm_pit_state2>(&State::String("00".into()), "PIT").is_err());
        assert!(from_hex::<kvm_clock_data>(&json!(5), "clock").is_err());
        let mut s = to_hex(&kvm_clock_data::default()).as_str().unwrap().to_string();
        s.replace_range(0..2, "zz");
        assert!(from_hex::<kvm_clock_data>(&State::String(s), "clock").is_err());
    }
}
