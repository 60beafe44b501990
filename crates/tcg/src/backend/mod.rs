//! Host backends: IR blocks → host code. Each host architecture is one module that
//! alone knows the host's instructions and registers; [`x64`] is the first.
//!
//! A backend implements [`Backend`]: it allocates host registers for the block's
//! values and for the guest registers it uses most, emits the soft-TLB probe inline
//! with out-of-line slow paths that make the guest state precise before calling Rust,
//! emits exits (chainable direct jumps, the jump-cache lookup for indirect ones), and
//! says where chainable jumps are so the run loop can patch them.

pub mod x64;

use crate::ir::Block;

/// Where a block's code will live and what it may call.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    /// Host address the code will be copied to.
    pub base: usize,
    /// The run loop's exit stub (returns the exit code to the run loop).
    pub epilogue: usize,
    pub helpers: Helpers,
    /// With paging on, the block's linear page: a direct branch out of it cannot be
    /// chained (the target page's mapping may change) and goes through the jump cache.
    pub page: Option<u64>,
    /// RIP of the block's first instruction (for its exit-request exit).
    pub block_rip: u64,
    /// A single-instruction block has no exit-request check at its head.
    pub single: bool,
}

/// Addresses of the Rust functions generated code calls.
#[derive(Clone, Copy, Debug)]
pub struct Helpers {
    pub load: usize,
    pub store: usize,
    pub flags: usize,
    pub interp: usize,
    /// Vector load/store slow paths (see [`crate::helpers::helper_vload`]).
    pub vload: usize,
    pub vstore: usize,
}

/// A block's host code.
pub struct Code {
    pub bytes: Vec<u8>,
    /// (jump offset, stub offset) of each chainable exit.
    pub chain_sites: Vec<(usize, usize)>,
}

/// What every host backend provides.
pub trait Backend {
    /// Emits `block` (already optimized) for `env`.
    fn emit(block: &Block, env: &Env) -> Code;
}
