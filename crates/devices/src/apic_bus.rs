//! What travels between interrupt controllers on a PC with APICs: an IOAPIC
//! redirection entry, an MSI or a local APIC's ICR all produce an [`ApicMessage`];
//! the machine's router (which knows every local APIC) delivers it.
//!
//! Device models never call each other: a register write that sends something
//! returns it (see [`ApicAction`]), and the caller delivers it after releasing the
//! model's lock. That keeps the locking order trivial and self-IPIs deadlock-free.

/// How a message is delivered (the ICR's and redirection entries' 3-bit field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
    ExtInt,
}

impl DeliveryMode {
    /// Decodes the 3-bit field; `None` for the reserved encoding 0b011.
    pub fn from_bits(bits: u32) -> Option<Self> {
        Some(match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::StartUp,
            7 => Self::ExtInt,
            _ => return None,
        })
    }

    pub fn bits(self) -> u32 {
        match self {
            Self::Fixed => 0,
            Self::LowestPriority => 1,
            Self::Smi => 2,
            Self::Nmi => 4,
            Self::Init => 5,
            Self::StartUp => 6,
            Self::ExtInt => 7,
        }
    }
}

/// Whom a message is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Destination {
    /// APIC ID match (0xff in xAPIC / 0xffff_ffff in x2APIC is broadcast).
    Physical(u32),
    /// A logical destination, matched against each local APIC's LDR (and DFR in
    /// xAPIC mode).
    Logical(u32),
    /// ICR shorthand: the sender only.
    SelfOnly,
    /// ICR shorthand: everyone, sender included.
    AllIncludingSelf,
    /// ICR shorthand: everyone but the sender.
    AllExcludingSelf,
}

/// One interrupt message on the APIC bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ApicMessage {
    pub dest: Destination,
    pub mode: DeliveryMode,
    pub vector: u8,
    /// Level-triggered (the IOAPIC then waits for the EOI of `vector`).
    pub level: bool,
    /// For INIT level de-assert (ICR level bit clear with trigger level): ignored by
    /// modern CPUs, kept so the router can ignore it knowingly.
    pub assert: bool,
    /// The sender's APIC ID, for the shorthands; `None` from an IOAPIC or MSI.
    pub source: Option<u32>,
}

/// A side effect a local APIC register write asks the machine to carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicAction {
    /// Deliver this message (an ICR write).
    Send(ApicMessage),
    /// The EOI of a level-triggered vector: the IOAPICs clear the Remote IRR of the
    /// entries with this vector (the EOI broadcast).
    EoiBroadcast(u8),
}
