//! The KVM virtual machine: /dev/kvm checks, memory slots, the optional in-kernel
//! irqchip, and vCPU creation.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_cpuid_entry2, kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_API_VERSION};
use kvm_bindings::{KvmIrqRouting, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use quern_core::cpu::IrqChipMode;
use quern_core::memory::RegionKind;
use quern_core::{Accelerator, CpuError, CpuModel, GuestMemory, Vcpu};

use crate::cpuid::{apply_model, patch_cpuid, CpuidMask, CpuidOptions};
use crate::error::{host_error, KvmError};
use crate::vcpu::KvmVcpu;
use crate::{is_pvm_host, kick, ACCEL_NAME};

/// Where KVM puts the identity page table and the TSS it needs to run real mode on
/// Intel (4 pages ending at 4 GiB - 16 MiB). QEMU's current choice: below the largest
/// BIOS flash (16 MiB, which quern's PC layout allows) and clear of the LAPIC/IOAPIC.
pub const IDENTITY_MAP_ADDR: u64 = 0xfeff_c000;
pub const TSS_ADDR: u64 = IDENTITY_MAP_ADDR + 0x1000;

/// How to build the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvmConfig {
    /// Userspace (the machine's PIC, IOAPIC and local APIC models; the default here) or
    /// KVM's PIC+IOAPIC+LAPIC and PIT, wired as on a PC (`irq_routing`). quern's command
    /// line picks the in-kernel one unless told `kernel-irqchip=off`, as QEMU does.
    pub irqchip: IrqChipMode,
    /// CPU features to hide from the guest whatever the model says (host workarounds);
    /// a feature the model asks for with `+feat` is shown again.
    pub cpuid_mask: CpuidMask,
    /// Number of vCPUs the machine will create.
    pub cpus: u32,
    /// The `-cpu` model. The default here is `host` (KVM's own CPUID); the binary's
    /// default is QEMU's, `qemu64`.
    pub cpu: CpuModel,
}

impl Default for KvmConfig {
    fn default() -> Self {
        KvmConfig { irqchip: IrqChipMode::Userspace, cpuid_mask: CpuidMask::empty(), cpus: 1, cpu: CpuModel::host() }
    }
}

impl KvmConfig {
    /// The default, plus the CPUID workarounds this host needs (kvm_pvm's emulator).
    pub fn for_host() -> Self {
        let cpuid_mask = if is_pvm_host() { CpuidMask::pvm_workarounds() } else { CpuidMask::empty() };
        KvmConfig { cpuid_mask, ..Default::default() }
    }
}

/// quern's [`Accelerator`] on Linux KVM.
pub struct KvmAccelerator {
    // Drop order: the VM before the memory its slots point at.
    vm: VmFd,
    config: KvmConfig,
    /// KVM's supported CPUID rewritten for the model; each vCPU patches its own copy.
    model_cpuid: Vec<kvm_cpuid_entry2>,
    /// What to hide on top of the model (the config's mask and what the model implies).
    mask: CpuidMask,
    run_size: usize,
    mem: Arc<GuestMemory>,
    /// What each slot was given (host address, flags), so [`Accelerator::sync_memory`]
    /// re-registers only the regions whose view changed.
    slots: Mutex<Vec<(u64, u32)>>,
    readonly_mem: bool,
}

impl std::fmt::Debug for KvmAccelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmAccelerator").field("config", &self.config).finish_non_exhaustive()
    }
}

fn require(kvm: &Kvm, cap: Cap, name: &'static str) -> Result<(), KvmError> {
    if kvm.check_extension(cap) {
        Ok(())
    } else {
        Err(KvmError::MissingCapability(name))
    }
}

impl KvmAccelerator {
    /// Opens /dev/kvm and builds a VM over `mem`.
    pub fn new(mem: Arc<GuestMemory>, config: KvmConfig) -> Result<Self, KvmError> {
        if is_pvm_host() {
            log::warn!(
                "kvm: this host's KVM is kvm_pvm (no VT-x/AMD-V): supervisor code runs through KVM's instruction \
                 emulator, which fails on some instructions (lock cmpxchg16b, xsaveopt); hide them with \
                 CpuidMask::pvm_workarounds() (kvm_pvm may still show the guest XSAVE and AVX)"
            );
        }
        let kvm = Kvm::new().map_err(KvmError::from_open)?;
        let found = kvm.get_api_version();
        if found != KVM_API_VERSION as i32 {
            return Err(KvmError::ApiVersion { found, expected: KVM_API_VERSION as i32 });
        }
        require(&kvm, Cap::UserMemory, "KVM_CAP_USER_MEMORY")?;
        require(&kvm, Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR")?;
        require(&kvm, Cap::ExtCpuid, "KVM_CAP_EXT_CPUID")?;
        // Kicks rely on immediate_exit to close the race with entering KVM_RUN.
        require(&kvm, Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT")?;
        if config.irqchip == IrqChipMode::InAccelerator {
            require(&kvm, Cap::Irqchip, "KVM_CAP_IRQCHIP")?;
            require(&kvm, Cap::Pit2, "KVM_CAP_PIT2")?;
        }
        let max = kvm.get_max_vcpus();
        if config.cpus == 0 || config.cpus as usize > max {
            return Err(KvmError::CpuCount { requested: config.cpus, max });
        }
        kick::install_handler().map_err(|source| KvmError::Ioctl { op: "sigaction (kick signal)", source })?;

        let supported_cpuid =
            kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(KvmError::ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let mut model_cpuid = supported_cpuid.as_slice().to_vec();
        let implied = apply_model(&mut model_cpuid, &config.cpu).map_err(KvmError::CpuModel)?;
        let mask = config.cpuid_mask.show_requested(&config.cpu.plus) | implied;
        let run_size = kvm.get_vcpu_mmap_size().map_err(KvmError::ioctl("KVM_GET_VCPU_MMAP_SIZE"))?;
        let vm = kvm.create_vm().map_err(KvmError::ioctl("KVM_CREATE_VM"))?;

        // Both must precede vCPU creation (api.rst).
        if kvm.check_extension(Cap::SetIdentityMapAddr) {
            vm.set_identity_map_address(IDENTITY_MAP_ADDR).map_err(KvmError::ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
        }
        vm.set_tss_address(TSS_ADDR as usize).map_err(KvmError::ioctl("KVM_SET_TSS_ADDR"))?;

        let readonly_mem = kvm.check_extension(Cap::ReadonlyMem);
        let slots = Mutex::new(register_memory(&vm, &mem, readonly_mem, &[])?);

        if config.irqchip == IrqChipMode::InAccelerator {
            vm.create_irq_chip().map_err(KvmError::ioctl("KVM_CREATE_IRQCHIP"))?;
            let routes = KvmIrqRouting::from_entries(&crate::irq_routing::pc_routes()).map_err(|e| {
                KvmError::Ioctl { op: "KVM_SET_GSI_ROUTING", source: std::io::Error::other(format!("{e:?}")) }
            })?;
            vm.set_gsi_routing(&routes).map_err(KvmError::ioctl("KVM_SET_GSI_ROUTING"))?;
            // The speaker port stays with the machine's own model.
            let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
            vm.create_pit2(pit).map_err(KvmError::ioctl("KVM_CREATE_PIT2"))?;
        }

        Ok(KvmAccelerator { vm, config, model_cpuid, mask, run_size, mem, slots, readonly_mem })
    }

    pub fn config(&self) -> &KvmConfig {
        &self.config
    }
}

/// One slot per region. ROM is read-only where KVM can do it, so guest writes to it
/// become MMIO exits the machine handles (ignores, or sends to shadow RAM). Slots whose
/// (host address, flags) are already in `old` are left alone; a changed one is deleted
/// first, as KVM cannot move a slot's host memory or change its read-only flag.
/// Returns what each slot now has.
fn register_memory(
    vm: &VmFd,
    mem: &GuestMemory,
    readonly_mem: bool,
    old: &[(u64, u32)],
) -> Result<Vec<(u64, u32)>, KvmError> {
    let mut now = Vec::new();
    for (slot, r) in mem.regions().iter().enumerate() {
        let mut flags = 0;
        if r.kind == RegionKind::Rom {
            if readonly_mem {
                flags |= KVM_MEM_READONLY;
            } else {
                log::warn!(
                    "kvm: no KVM_CAP_READONLY_MEM; ROM at {:#x}+{:#x} is writable by the guest",
                    r.guest_base,
                    r.size
                );
            }
        }
        let want = (r.host_addr as u64, flags);
        now.push(want);
        let Some(&had) = old.get(slot) else {
            set_slot(vm, slot as u32, r.guest_base, r.size, want)?;
            continue;
        };
        if had != want {
            set_slot(vm, slot as u32, r.guest_base, 0, had)?;
            set_slot(vm, slot as u32, r.guest_base, r.size, want)?;
        }
    }
    Ok(now)
}

/// Sets (or with `size` 0 deletes) memory slot `slot`.
fn set_slot(vm: &VmFd, slot: u32, guest_base: u64, size: u64, (host, flags): (u64, u32)) -> Result<(), KvmError> {
    let region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: guest_base,
        memory_size: size,
        userspace_addr: host,
    };
    // SAFETY: the host range is a live mapping owned by the GuestMemory, which the
    // accelerator and every vCPU hold (and drop after their fds); GuestMemory
    // guarantees regions do not overlap in guest-physical space.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| KvmError::MemorySlot {
        slot,
        guest_base,
        size,
        source: crate::error::os_error(e),
    })
}

impl Accelerator for KvmAccelerator {
    fn name(&self) -> &'static str {
        ACCEL_NAME
    }

    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>, CpuError> {
        if id >= self.config.cpus {
            return Err(CpuError::Unsupported {
                accel: ACCEL_NAME,
                what: format!("vCPU {id} (the VM was configured for {} vCPUs)", self.config.cpus),
            });
        }
        // KVM's vCPU id is the in-kernel local APIC's ID: the topology's, as the MADT
        // lists it (QEMU does the same).
        let apic_id = self.config.cpu.topology.apic_id(id);
        let fd = self.vm.create_vcpu(apic_id.into()).map_err(host_error("KVM_CREATE_VCPU"))?;
        let mut entries = self.model_cpuid.clone();
        let opts = CpuidOptions {
            mask: self.mask,
            in_kernel_lapic: self.config.irqchip == IrqChipMode::InAccelerator,
            vcpu_id: apic_id,
        };
        patch_cpuid(&mut entries, &opts);
        let cpuid = CpuId::from_entries(&entries)
            .map_err(|e| CpuError::Unsupported { accel: ACCEL_NAME, what: format!("a CPUID table ({e:?})") })?;
        fd.set_cpuid2(&cpuid).map_err(host_error("KVM_SET_CPUID2"))?;
        Ok(Box::new(KvmVcpu::new(fd, self.run_size, id, self.config.irqchip, self.mem.clone())?))
    }

    fn irqchip_state(&self) -> Result<Option<quern_core::snapshot::State>, CpuError> {
        if self.config.irqchip != IrqChipMode::InAccelerator {
            return Ok(None);
        }
        crate::saved_state::save_vm(&self.vm).map(Some)
    }

    fn set_irqchip_state(&self, state: &quern_core::snapshot::State) -> Result<(), CpuError> {
        crate::saved_state::restore_vm(&self.vm, state)
    }

    fn irqchip_mode(&self) -> IrqChipMode {
        self.config.irqchip
    }

    fn set_irq_line(&self, gsi: u32, high: bool) -> Result<(), CpuError> {
        if self.config.irqchip != IrqChipMode::InAccelerator {
            return Err(CpuError::Unsupported {
                accel: ACCEL_NAME,
                what: "set_irq_line without the in-kernel irqchip".into(),
            });
        }
        self.vm.set_irq_line(gsi, high).map_err(host_error("KVM_IRQ_LINE"))
    }

    fn sync_memory(&self) -> Result<(), CpuError> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let now = register_memory(&self.vm, &self.mem, self.readonly_mem, &slots)
            .map_err(|e| CpuError::Guest { accel: ACCEL_NAME, reason: format!("remapping guest memory: {e}") })?;
        *slots = now;
        Ok(())
    }
}
