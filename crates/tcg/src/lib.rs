//! The JIT accelerator: x86 guest code translated to host code.
