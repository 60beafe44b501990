//! The differential harness: random and structured x86-64 instruction sequences run on
//! the host CPU, under the JIT and under KVM, compared register by register.
//!
//! - [`rng`]: a small seeded generator (splitmix64), so every case is reproducible from
//!   its seed alone.
//! - [`gen`]: the case generator (iced-x86 instructions, block-encoded at fixed
//!   addresses) and the undefined-flag analysis.
//! - [`native`]: runs cases on the host CPU in a forked child at the same addresses.
//! - [`guest`]: guest memory, long-mode set-up (GDT, identity paging, an IDT whose
//!   handlers record the vector and halt), the mock machine and a watchdog.
//! - [`compare`]: outcomes and how two of them are compared and reported.
#![allow(dead_code)]

pub mod compare;
pub mod gen;
pub mod guest;
// Runs cases on the host CPU: x86-64 hosts only.
#[cfg(target_arch = "x86_64")]
pub mod native;
pub mod record;
pub mod rng;

/// The fixed addresses every backend uses (guest-physical = guest-linear = host
/// virtual for the native run).
pub mod layout {
    /// Case code: the generated body, then `hlt` (guest) or `jmp epilogue` (native).
    pub const CODE_BASE: u64 = 0x10_0000;
    pub const CODE_SIZE: u64 = 0x1_0000;
    /// The data buffer that memory operands address through RBX: two pages, RBX at
    /// the boundary, so accesses cross it.
    pub const DATA_BASE: u64 = 0x20_0000;
    pub const DATA_SIZE: usize = 0x2000;
    /// The stack page; RSP starts in its middle.
    pub const STACK_BASE: u64 = 0x30_0000;
    pub const STACK_SIZE: usize = 0x1000;
    pub const RBX_INIT: u64 = DATA_BASE + 0x1000;
    pub const RSP_INIT: u64 = STACK_BASE + 0x800;
    /// Native only: the context block and the prologue/epilogue stub.
    pub const CTX_BASE: u64 = 0x40_0000;
    pub const STUB_BASE: u64 = 0x41_0000;
    /// Guest only: RAM size and the structures below the code.
    pub const GUEST_RAM: usize = 0x40_0000;
    pub const IDT_ADDR: u64 = 0x1000;
    pub const HANDLERS: u64 = 0x2000;
    /// Exception handlers store their vector here (0xff: none).
    pub const FAULT_SLOT: u64 = 0x3000;
}

/// RSP and RBX in encoding order.
pub const RBX: usize = 3;
pub const RSP: usize = 4;

/// Where a case's code jumps to end: the 64-bit epilogue, or (32-bit cases) a far
/// jump back to it from compatibility mode.
#[derive(Clone, Copy)]
pub struct Epilogues {
    pub long: u64,
    pub compat: u64,
    /// 16-bit code: an offset in its code segment (`native::EXIT16`).
    pub code16: u64,
}

impl Epilogues {
    pub fn for_bits(self, bits: u32) -> u64 {
        match bits {
            16 => self.code16,
            32 => self.compat,
            _ => self.long,
        }
    }
}
