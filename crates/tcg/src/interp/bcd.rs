use super::Step;
use crate::cpu::{Cpu, Result};
use iced_x86::Instruction;
pub fn exec(_cpu: &mut Cpu, _ins: &Instruction) -> Result<Option<Step>> {
    Ok(None)
}
