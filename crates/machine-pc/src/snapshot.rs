//! Saving and loading the whole PC (QMP's `migrate` and `migrate-incoming`, libvirt's
//! `virsh save`/`restore`) in quern-core's state stream.
//!
//! Sections: `machine` (the shape a stream must match to be loaded here), `clock`, a
//! `cpuN` for each vCPU through the CPU trait (so a state saved under one accelerator
//! loads under the other), one per device with state (named by the chipset), and
//! guest memory: every host mapping behind it (RAM, ROM, shadow RAM) and which view
//! each switchable region shows.
//!
//! With KVM's in-kernel interrupt controllers, their state (and kvmclock, and each
//! vCPU's local APIC) goes in as KVM's own structures (`kvm-irqchip`, `kvm-lapicN`):
//! such a state loads under KVM with its irqchip; the models' state (the JIT, or KVM
//! with `kernel-irqchip=off`) loads under either accelerator.
//!
//! The TSC is not saved: under the JIT it follows the restored clock; KVM's counts on
//! from the host's.

use std::io::{Read, Write};

use quern_core::regs::{msr, DebugRegs, FpuState, MsrEntry, Regs, SpecialRegs};
use quern_core::snapshot::{to_state, SnapshotError, State, Stream, StreamWriter};
use quern_core::Vcpu;
use serde::{Deserialize, Serialize};

use crate::machine::PcMachine;

/// The MSRs a vCPU's section holds besides what the special registers carry (EFER,
/// the FS/GS bases and APIC base are there).
const SAVED_MSRS: &[u32] = &[
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
    msr::KERNEL_GS_BASE,
    msr::IA32_SYSENTER_CS,
    msr::IA32_SYSENTER_ESP,
    msr::IA32_SYSENTER_EIP,
    msr::IA32_PAT,
    msr::IA32_MISC_ENABLE,
];

/// One vCPU, in the neutral register types both accelerators convert.
#[derive(Serialize, Deserialize)]
struct CpuState {
    regs: Regs,
    sregs: SpecialRegs,
    fpu: FpuState,
    debug: DebugRegs,
    msrs: Vec<(u32, u64)>,
    /// An application processor not yet started.
    waits_for_start_up: bool,
}

/// What a stream must agree on with the machine that loads it.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Shape {
    /// Whose interrupt controllers: "models" (quern's) or "kvm" (in-kernel).
    irqchip: String,
    cpus: u32,
    /// The lengths of guest memory's host mappings (RAM size, firmware size).
    memory: Vec<u64>,
    /// The devices with state, by section name.
    devices: Vec<String>,
}

fn cpu_state(v: &dyn Vcpu) -> Result<CpuState, SnapshotError> {
    let err = |e: quern_core::CpuError| SnapshotError::Mismatch(format!("reading a vCPU: {e}"));
    let mut msrs: Vec<MsrEntry> = SAVED_MSRS.iter().map(|&index| MsrEntry { index, data: 0 }).collect();
    v.msrs(&mut msrs).map_err(err)?;
    Ok(CpuState {
        regs: v.regs().map_err(err)?,
        sregs: v.sregs().map_err(err)?,
        fpu: v.fpu().map_err(err)?,
        debug: v.debug_regs().map_err(err)?,
        msrs: msrs.iter().map(|e| (e.index, e.data)).collect(),
        waits_for_start_up: v.waits_for_start_up(),
    })
}

fn set_cpu_state(v: &mut dyn Vcpu, s: &CpuState) -> Result<(), quern_core::CpuError> {
    v.set_sregs(&s.sregs)?;
    v.set_regs(&s.regs)?;
    v.set_fpu(&s.fpu)?;
    v.set_debug_regs(&s.debug)?;
    let msrs: Vec<MsrEntry> = s.msrs.iter().map(|&(index, data)| MsrEntry { index, data }).collect();
    v.set_msrs(&msrs)?;
    v.set_waits_for_start_up(s.waits_for_start_up);
    Ok(())
}

impl PcMachine {
    fn irqchip_ours(&self) -> bool {
        crate::machine::userspace_irqchip(&self.accel)
    }

    fn shape(&self) -> Shape {
        Shape {
            irqchip: if self.irqchip_ours() { "models" } else { "kvm" }.into(),
            cpus: self.vcpus.len() as u32,
            memory: self.mem.backing_lens(),
            devices: self.chipset.stateful.iter().map(|(n, _)| n.clone()).collect(),
        }
    }

    /// Writes the whole machine's state to `out` (every vCPU stopped); returns the
    /// bytes written.
    pub fn save_state(&mut self, out: &mut dyn Write) -> Result<u64, SnapshotError> {
        let accel_err =
            |e: quern_core::CpuError| SnapshotError::Mismatch(format!("reading the interrupt controllers: {e}"));
        let mut w = StreamWriter::new(out)?;
        w.json("machine", &to_state(&self.shape()))?;
        w.json("clock", &to_state(&self.chipset.clock.now_ns()))?;
        for (i, v) in self.vcpus.iter().enumerate() {
            w.json(&format!("cpu{i}"), &to_state(&cpu_state(&**v)?))?;
        }
        for (name, dev) in &self.chipset.stateful {
            w.json(name, &quern_core::bus::lock(dev).save_state())?;
        }
        if let Some(chips) = self.accel.irqchip_state().map_err(accel_err)? {
            w.json("kvm-irqchip", &chips)?;
            for (i, v) in self.vcpus.iter().enumerate() {
                let lapic = v.lapic_state().map_err(accel_err)?.unwrap_or_default();
                w.json(&format!("kvm-lapic{i}"), &lapic)?;
            }
        }
        w.json("memory.views", &to_state(&self.mem.current_views()))?;
        for (i, len) in self.mem.backing_lens().into_iter().enumerate() {
            let mem = &self.mem;
            w.memory(&format!("memory{i}"), len, |off, page| {
                // The range lies inside the mapping: the writer stays below `len`.
                let _ = mem.read_backing(i, off, page);
            })?;
        }
        let bytes = w.finish()?;
        self.run.saved();
        Ok(bytes)
    }

    /// Loads a whole machine's state from `input`. The stream is read and checked in
    /// full (framing, checksum, shape, every vCPU section) before anything is applied;
    /// the machine must not have run yet (`-incoming`).
    pub fn load_state(&mut self, input: &mut dyn Read) -> Result<(), SnapshotError> {
        let backing: u64 = self.mem.backing_lens().iter().sum();
        // Pages and their offsets, and generous room for the JSON sections.
        let limit = backing + backing / 512 + (64 << 20);
        let stream = Stream::read(input, limit)?;
        let shape: Shape = stream.section("machine")?;
        let here = self.shape();
        if shape.irqchip != here.irqchip {
            return Err(SnapshotError::Mismatch(if shape.irqchip == "kvm" {
                "it was saved with KVM's in-kernel interrupt controllers, whose state loads only under KVM with \
                 them (-accel kvm, without kernel-irqchip=off); a state saved with quern's own (under the JIT, or \
                 KVM with kernel-irqchip=off) loads under either"
                    .to_string()
            } else {
                "it was saved with quern's interrupt controller models; load it under the JIT or under KVM with \
                 -machine kernel-irqchip=off"
                    .to_string()
            }));
        }
        if shape != here {
            return Err(SnapshotError::Mismatch(format!(
                "it was saved from a machine with {} vCPUs, memory mappings {:?} and devices {:?}; this one has {} \
                 vCPUs, {:?} and {:?} (start it with the same -m, -smp, -bios and devices)",
                shape.cpus, shape.memory, shape.devices, here.cpus, here.memory, here.devices
            )));
        }
        let clock: u64 = stream.section("clock")?;
        let cpus =
            (0..self.vcpus.len()).map(|i| stream.section(&format!("cpu{i}"))).collect::<Result<Vec<CpuState>, _>>()?;
        let views: Vec<usize> = stream.section("memory.views")?;
        let devices = here.devices.iter().map(|n| stream.json(n)).collect::<Result<Vec<State>, _>>()?;
        let memory =
            (0..here.memory.len()).map(|i| stream.memory(&format!("memory{i}"))).collect::<Result<Vec<_>, _>>()?;
        let kvm = if self.irqchip_ours() {
            None
        } else {
            let lapics =
                (0..self.vcpus.len()).map(|i| stream.json(&format!("kvm-lapic{i}"))).collect::<Result<Vec<_>, _>>()?;
            Some((stream.json("kvm-irqchip")?, lapics))
        };

        let mismatch = |what: String| SnapshotError::Mismatch(what);
        for (i, (_, pages)) in memory.iter().enumerate() {
            // Pages left out of the stream were zero.
            let len = here.memory[i];
            let zero = vec![0u8; quern_core::snapshot::PAGE];
            let mut present = pages.iter().peekable();
            let mut off = 0;
            while off < len {
                let bytes = match present.peek() {
                    Some((o, b)) if *o == off => {
                        present.next();
                        *b
                    }
                    _ => &zero[..],
                };
                self.mem.write_backing(i, off, bytes).map_err(|e| mismatch(format!("memory{i}: {e}")))?;
                off += quern_core::snapshot::PAGE as u64;
            }
        }
        self.mem.restore_views(&views).map_err(|e| mismatch(format!("memory views: {e}")))?;
        for ((name, dev), state) in self.chipset.stateful.iter().zip(&devices) {
            quern_core::bus::lock(dev)
                .restore_state(state)
                .map_err(|problem| SnapshotError::Section { section: name.clone(), problem })?;
        }
        for (i, (v, s)) in self.vcpus.iter_mut().zip(&cpus).enumerate() {
            set_cpu_state(&mut **v, s).map_err(|e| mismatch(format!("vCPU {i}: {e}")))?;
        }
        if let Some((chips, lapics)) = &kvm {
            // After the registers (the APIC base), as KVM wants the local APICs.
            for (i, (v, l)) in self.vcpus.iter_mut().zip(lapics).enumerate() {
                v.set_lapic_state(l).map_err(|e| mismatch(format!("vCPU {i}'s local APIC: {e}")))?;
            }
            self.accel.set_irqchip_state(chips).map_err(|e| mismatch(format!("interrupt controllers: {e}")))?;
        }
        self.chipset.clock.set_now_ns(clock);
        self.rearm.rearm();
        self.run.incoming_done();
        Ok(())
    }
}
