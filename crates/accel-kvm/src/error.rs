//! Errors from setting up KVM, worded to say what the user can do about them.

use std::io;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KvmError {
    #[error("KVM is not available: /dev/kvm does not exist; load kvm_intel/kvm_amd or use -accel tcg")]
    NoDevice,
    #[error(
        "KVM is not available: permission denied opening /dev/kvm; add yourself to the kvm group or use -accel tcg"
    )]
    PermissionDenied,
    #[error("KVM is not available: cannot open /dev/kvm: {0}; use -accel tcg")]
    Open(io::Error),
    #[error("KVM API version {found} is not the supported version {expected}; use another kernel or -accel tcg")]
    ApiVersion { found: i32, expected: i32 },
    #[error("KVM lacks the {0} capability that quern needs; use a newer kernel or -accel tcg")]
    MissingCapability(&'static str),
    #[error("KVM supports 1 to {max} vCPUs here, not {requested}; use a smaller -smp")]
    CpuCount { requested: u32, max: usize },
    #[error("KVM {op} failed: {source}")]
    Ioctl { op: &'static str, source: io::Error },
    #[error(
        "cannot register guest memory {guest_base:#x}+{size:#x} as KVM slot {slot}: {source} \
         (too many regions, or try a smaller -m)"
    )]
    MemorySlot { slot: u32, guest_base: u64, size: u64, source: io::Error },
    /// The `-cpu` model asks for what KVM cannot give here.
    #[error("{0}")]
    CpuModel(String),
}

/// kvm-ioctls reports failures as a bare errno.
pub(crate) fn os_error(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

impl KvmError {
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
        move |e| KvmError::Ioctl { op, source: os_error(e) }
    }

    /// Classifies a failure to open /dev/kvm.
    pub(crate) fn from_open(e: kvm_ioctls::Error) -> KvmError {
        match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NoDevice,
            libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
            _ => KvmError::Open(os_error(e)),
        }
    }
}

/// The `CpuError` for a failed vCPU ioctl.
pub(crate) fn host_error(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> quern_core::CpuError {
    move |e| quern_core::CpuError::Host { accel: crate::ACCEL_NAME, op, source: os_error(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_failures_say_what_to_do() {
        let no_dev = KvmError::from_open(kvm_ioctls::Error::new(libc::ENOENT)).to_string();
        assert!(no_dev.contains("/dev/kvm does not exist") && no_dev.contains("-accel tcg"), "{no_dev}");
        let denied = KvmError::from_open(kvm_ioctls::Error::new(libc::EACCES)).to_string();
        assert!(denied.contains("add yourself to the kvm group or use -accel tcg"), "{denied}");
        assert!(matches!(KvmError::from_open(kvm_ioctls::Error::new(libc::EIO)), KvmError::Open(_)));
        let slot = KvmError::MemorySlot { slot: 2, guest_base: 0x10_0000, size: 0x1000, source: io::Error::other("x") };
        assert!(slot.to_string().contains("slot 2"), "{slot}");
    }
}
