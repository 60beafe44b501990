//! quern's own mapping of a vCPU's `kvm_run` page.
//!
//! kvm-ioctls keeps a mapping too, but hands it out only as `&mut kvm_run` tied to the
//! `VcpuFd`, while two things here must touch the page outside such a borrow: the kick
//! signal handler (which sets `immediate_exit` at any moment) and the run loop (which
//! reads `io.size` and the injection flags while the decoded exit still borrows the
//! fd). A second shared mapping of the same page gives them a raw pointer that aliases
//! no Rust reference; every access is volatile because the kernel and the signal
//! handler write it behind the compiler's back.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::{addr_of, addr_of_mut, NonNull};

use kvm_bindings::{kvm_run, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO};
use kvm_ioctls::VcpuFd;

pub(crate) struct RunPage {
    ptr: NonNull<kvm_run>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only reached through volatile raw
// accesses; the kernel object behind it is shared with the vCPU fd, not with a thread.
unsafe impl Send for RunPage {}

/// What the run loop needs from `kvm_run` beyond the decoded exit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunState {
    /// Bytes in one port access (the element size of string I/O); 0 when not an I/O exit.
    pub io_size: usize,
    /// KVM would accept KVM_INTERRUPT now: `ready_for_interrupt_injection && if_flag`.
    pub can_inject: bool,
    /// Sub-error and data words of KVM_EXIT_INTERNAL_ERROR.
    pub internal_error: Option<(u32, Vec<u64>)>,
}

impl RunPage {
    /// Maps the `len`-byte run area of `fd` (len from KVM_GET_VCPU_MMAP_SIZE).
    pub fn map(fd: &VcpuFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of the vCPU fd at offset 0, as KVM documents for
        // kvm_run; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<kvm_run>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(RunPage { ptr, len })
    }

    pub fn as_ptr(&self) -> *mut kvm_run {
        self.ptr.as_ptr()
    }

    pub fn set_immediate_exit(&self, on: bool) {
        // SAFETY: the pointer is a live mapping of a kvm_run for the life of self.
        unsafe { addr_of_mut!((*self.as_ptr()).immediate_exit).write_volatile(on.into()) }
    }

    pub fn set_request_interrupt_window(&self, on: bool) {
        // SAFETY: as in set_immediate_exit.
        unsafe { addr_of_mut!((*self.as_ptr()).request_interrupt_window).write_volatile(on.into()) }
    }

    /// CR8 as KVM had it when KVM_RUN returned (without an in-kernel LAPIC).
    pub fn cr8(&self) -> u64 {
        // SAFETY: as in set_immediate_exit; a plain u64 field.
        unsafe { addr_of!((*self.as_ptr()).cr8).read_volatile() }
    }

    /// The CR8 KVM_RUN loads before entering the guest (without an in-kernel LAPIC).
    pub fn set_cr8(&self, cr8: u64) {
        // SAFETY: as in set_immediate_exit.
        unsafe { addr_of_mut!((*self.as_ptr()).cr8).write_volatile(cr8) }
    }

    /// IA32_APIC_BASE as KVM had it when KVM_RUN returned.
    pub fn apic_base(&self) -> u64 {
        // SAFETY: as in set_immediate_exit; a plain u64 field.
        unsafe { addr_of!((*self.as_ptr()).apic_base).read_volatile() }
    }

    /// Whether KVM reported, on the last exit, that an interrupt can be injected.
    pub fn can_inject(&self) -> bool {
        let p = self.as_ptr();
        // SAFETY: as in set_immediate_exit; plain u8 fields.
        unsafe {
            addr_of!((*p).ready_for_interrupt_injection).read_volatile() != 0
                && addr_of!((*p).if_flag).read_volatile() != 0
        }
    }

    /// Reads the state of the exit KVM_RUN just returned.
    pub fn state(&self) -> RunState {
        let p = self.as_ptr();
        // SAFETY: live mapping; union members are only read for the exit reason that
        // the kernel filled them for, and every field is plain data.
        unsafe {
            let reason = addr_of!((*p).exit_reason).read_volatile();
            let io_size =
                if reason == KVM_EXIT_IO { addr_of!((*p).__bindgen_anon_1.io.size).read_volatile().into() } else { 0 };
            let internal_error = (reason == KVM_EXIT_INTERNAL_ERROR).then(|| {
                let ie = addr_of!((*p).__bindgen_anon_1.internal).read_volatile();
                (ie.suberror, ie.data[..(ie.ndata as usize).min(ie.data.len())].to_vec())
            });
            RunState { io_size, can_inject: self.can_inject(), internal_error }
        }
    }
}

impl Drop for RunPage {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in map(); nothing uses it afterwards
        // (the kick handler's pointer is unregistered when run() returns).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
