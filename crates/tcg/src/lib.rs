//! The JIT accelerator: x86 guest code translated to x86-64 host code.
//!
//! Pipeline: [`translate`] decodes guest code with iced-x86 into translation blocks
//! and describes each instruction to the host backend [`x64`] (the only module that
//! emits host code, so a second host architecture is one more backend); blocks go into
//! the [`codebuf`] (W^X), are looked up by physical PC and mode in [`exec`]'s cache,
//! and are chained by patched jumps so hot loops stay in generated code.
//!
//! Guest state is one `#[repr(C)]` struct ([`state::CpuState`]) that generated code
//! reaches through r14; EFLAGS are lazy ([`flags`]). Memory accesses probe the soft
//! TLB inline ([`mmu`]); misses go to Rust ([`helpers`], [`cpu`], [`paging`]), which
//! also dispatches MMIO to the machine's buses. Instructions without an inline
//! translation run in the interpreter helper ([`interp`]); exceptions and interrupts
//! are delivered by [`interrupt`].

pub mod backend;
pub mod codebuf;
pub mod coherence;
pub mod cpu;
pub mod exec;
pub mod flags;
pub mod fxhash;
pub mod helpers;
pub mod interp;
pub mod interrupt;
pub mod ir;
pub mod lower;
pub mod mmu;
pub mod model;
pub mod paging;
pub mod profile;
pub mod segment;
pub mod state;
pub mod translate;

pub use exec::{TcgAccelerator, TcgVcpu};
pub use model::TcgCpuModel;
