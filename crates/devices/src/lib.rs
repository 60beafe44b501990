//! Device models of the PC: each a register state machine that raises interrupt lines.
