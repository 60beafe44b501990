//! SSE and SSE2.

use iced_x86::Instruction;

use super::Step;
use crate::cpu::{Cpu, Result};

/// Runs `ins` if it is an SSE/SSE2 instruction.
pub fn exec(_cpu: &mut Cpu, _ins: &Instruction) -> Result<Option<Step>> {
    Ok(None)
}
