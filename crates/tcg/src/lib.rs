//! The JIT accelerator: x86 guest code translated to host code (issue: "The JIT
//! translator"). It will implement quern-core's `Accelerator`/`Vcpu` traits exactly as
//! accel-kvm does; until it lands, selecting it is a clear error rather than a
//! silent fallback to another accelerator.

use std::sync::Arc;

use quern_core::{Accelerator, CpuError, GuestMemory, Vcpu};

/// The tcg accelerator.
pub struct TcgAccelerator {
    _mem: Arc<GuestMemory>,
}

impl TcgAccelerator {
    pub fn new(mem: Arc<GuestMemory>) -> Result<Self, CpuError> {
        let _ = mem;
        Err(CpuError::Unsupported {
            accel: "tcg",
            what: "the JIT accelerator (not implemented yet: use -accel kvm)".into(),
        })
    }
}

impl Accelerator for TcgAccelerator {
    fn name(&self) -> &'static str {
        "tcg"
    }
    fn create_vcpu(&self, _id: u32) -> Result<Box<dyn Vcpu>, CpuError> {
        Err(CpuError::Unsupported { accel: "tcg", what: "vCPUs".into() })
    }
}
