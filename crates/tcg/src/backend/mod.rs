//! Host backends: IR blocks → host code. Each host architecture is one module that
//! alone knows the host's instructions and registers: [`x64`] and [`a64`].
//!
//! A backend implements [`Backend`]: it allocates host registers for the block's
//! values and for the guest registers it uses most, emits the soft-TLB probe inline
//! with out-of-line slow paths that make the guest state precise before calling Rust,
//! emits exits (chainable direct jumps, the jump-cache lookup for indirect ones), and
//! says where chainable jumps are so the run loop can patch them.

pub mod a64;
#[cfg(target_arch = "x86_64")]
pub mod x64;

use crate::ir::Block;

/// Why generated code returned to the run loop (the trampoline's return value).
pub mod exit {
    /// RIP is in the state; look up the next block.
    pub const NEXT: u32 = 0;
    /// A direct branch not yet chained: RIP is stored and `state.chain_site` names
    /// the jump to patch.
    pub const CHAIN: u32 = 1;
    /// A guest exception is pending in `state.fault`; RIP is the faulting instruction.
    pub const FAULT: u32 = 2;
    /// `exit_request` was set (kick, interrupt); RIP is the next block's start.
    pub const REQUEST: u32 = 3;
    /// HLT; RIP is after it.
    pub const HALT: u32 = 4;
    /// As NEXT, told apart for the profile: an indirect branch's target was neither
    /// in the jump cache nor found by the lookup helper; an interpreted instruction
    /// changed control flow; an instruction changed what translation depends on.
    pub const MISS: u32 = 5;
    pub const INTERP: u32 = 6;
    pub const MODE: u32 = 7;
    /// A guard found the state other than its block was translated for: RIP is the
    /// instruction to run alone, in the interpreter, before blocks go on.
    pub const STEP: u32 = 8;
}

/// The run loop's way into and out of generated code.
pub struct Trampoline {
    pub code: Vec<u8>,
    /// Offsets in `code`: the entry (`fn(cpu, block) -> exit code`), the epilogue
    /// blocks jump to with the exit code set, a stub that returns `exit::NEXT`
    /// (the jump cache's "no entry"), and the jump cache's refill: blocks jump there
    /// with the state stored when the inline probe misses; it calls
    /// [`Helpers::lookup`] and goes on to the block found, or returns `exit::MISS`.
    pub enter: usize,
    pub epilogue: usize,
    pub next_stub: usize,
    pub lookup: usize,
    /// The helpers' addresses ([`Helpers::all`]'s order), 8 bytes each: generated
    /// code calls through them with a short RIP-relative form.
    pub helper_table: usize,
}

/// Addresses in the code buffer's trampoline that blocks jump or call to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stubs {
    /// The run loop's exit stub (returns the exit code to the run loop).
    pub epilogue: usize,
    /// The jump cache's refill stub ([`Trampoline::lookup`]).
    pub lookup: usize,
    /// [`Trampoline::helper_table`], as an address.
    pub helper_table: usize,
}

/// Where a block's code will live and what it may call.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    /// Host address the code will be copied to.
    pub base: usize,
    pub stubs: Stubs,
    pub helpers: Helpers,
    /// With paging on, the block's linear page: a direct branch out of it cannot be
    /// chained (the target page's mapping may change) and goes through the jump cache.
    pub page: Option<u64>,
    /// RIP of the block's first instruction (for its exit-request exit).
    pub block_rip: u64,
    /// A single-instruction block has no exit-request check at its head.
    pub single: bool,
    /// The MMU index of the block's accesses: which TLB and jump-cache arrays its code
    /// probes.
    pub mmu_idx: usize,
    /// Other vCPUs run: guest loads and stores must keep x86's order (TSO) on a host
    /// whose own order is weaker (aarch64: barriers; x86-64 has it already).
    pub tso: bool,
}

/// Addresses of the Rust functions generated code calls.
#[derive(Clone, Copy, Debug)]
pub struct Helpers {
    pub load: usize,
    pub store: usize,
    pub flags: usize,
    pub tsc: usize,
    pub sti: usize,
    pub interp: usize,
    /// Vector load/store slow paths (see [`crate::helpers::helper_vload`]).
    pub vload: usize,
    pub vstore: usize,
    /// The block for the stored RIP, or 0 (`exec::helper_lookup`).
    pub lookup: usize,
}

impl Helpers {
    /// Every helper, in the trampoline's table order.
    pub fn all(&self) -> [usize; 9] {
        [self.load, self.store, self.flags, self.tsc, self.sti, self.interp, self.vload, self.vstore, self.lookup]
    }

    /// Appends the table of [`Helpers::all`] to a trampoline, 8-byte aligned (padded
    /// with `fill`, after code that never falls through); returns its offset.
    pub fn append_table(&self, ops: &mut impl dynasmrt::DynasmApi, fill: u8) -> usize {
        ops.align(8, fill);
        let at = ops.offset().0;
        for f in self.all() {
            ops.extend((f as u64).to_le_bytes());
        }
        at
    }
}

/// A block's host code.
pub struct Code {
    pub bytes: Vec<u8>,
    /// (site offset, stub offset) of each chainable exit: the run loop writes
    /// [`Backend::jump`]'s bytes at the site to chain it, and to unchain it again.
    pub chain_sites: Vec<(usize, usize)>,
}

/// What every host backend provides.
pub trait Backend {
    /// Whether it emits the vector operations ([`crate::ir::Op::VBin`], ...) and the
    /// x87 ones ([`crate::ir::Op::X87Bin`], ...). A backend without them still runs
    /// every guest: the lowering then hands SSE and x87 instructions to the
    /// interpreter, so a new host starts with the integer core alone.
    const VECTOR: bool;
    const X87: bool;

    /// Emits `block` (already optimized) for `env`.
    fn emit(block: &Block, env: &Env) -> Code;
    /// The entry/exit trampoline, to live at `base`.
    fn trampoline(base: usize, helpers: &Helpers) -> Trampoline;
    /// The bytes that, written at chain site `site`, send its exit to `target` (x86-64:
    /// a JMP rel32; aarch64: the literal its indirect branch loads).
    fn jump(site: usize, target: usize) -> Vec<u8>;
}

/// The backend of the host this build runs on.
#[cfg(target_arch = "x86_64")]
pub type Host = x64::X64;
#[cfg(target_arch = "aarch64")]
pub type Host = a64::A64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub type Host = Missing;

/// What the lowering may emit for this run: the host backend's capabilities, less
/// those `QUERN_TCG_INTERPRET` names (`sse`, `x87`, comma-separated: a diagnostic, to
/// tell an inline path's fault from the interpreter's, and how the tests run the
/// path a backend without them takes).
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub vector: bool,
    pub x87: bool,
}

pub fn caps() -> Caps {
    static CAPS: std::sync::OnceLock<Caps> = std::sync::OnceLock::new();
    *CAPS.get_or_init(|| {
        let off = std::env::var("QUERN_TCG_INTERPRET").unwrap_or_default();
        let off = |name: &str| off.split(',').any(|w| w.trim() == name);
        Caps { vector: Host::VECTOR && !off("sse"), x87: Host::X87 && !off("x87") }
    })
}

/// Whether this build's host architecture has a backend. Without one the program
/// still builds (devices, machine, firmware and disks are host-neutral), and the JIT
/// accelerator refuses to start, naming the host.
pub const HOST_HAS_BACKEND: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// The stand-in [`Host`] of an architecture without a backend (neither x86-64 nor
/// aarch64): never called, since the accelerator refuses such a host before anything
/// is translated.
pub struct Missing;

impl Backend for Missing {
    const VECTOR: bool = false;
    const X87: bool = false;
    fn emit(_: &Block, _: &Env) -> Code {
        unreachable!("no backend for this host: the accelerator refuses to start")
    }
    fn trampoline(_: usize, _: &Helpers) -> Trampoline {
        unreachable!("no backend for this host: the accelerator refuses to start")
    }
    fn jump(_: usize, _: usize) -> Vec<u8> {
        unreachable!("no backend for this host: the accelerator refuses to start")
    }
}
