//! Neutral x86 register types, shared by both accelerators.
//!
//! Each backend converts to and from its own layout (KVM's `kvm_regs`, the JIT's
//! CPU-state struct); nothing backend-specific appears here.

/// General-purpose registers, instruction pointer and flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

impl Regs {
    /// The sixteen general registers in encoding order (rax, rcx, rdx, rbx, rsp, rbp,
    /// rsi, rdi, r8..r15).
    pub fn gprs(&self) -> [u64; 16] {
        [
            self.rax, self.rcx, self.rdx, self.rbx, self.rsp, self.rbp, self.rsi, self.rdi, self.r8, self.r9, self.r10,
            self.r11, self.r12, self.r13, self.r14, self.r15,
        ]
    }

    /// Sets the sixteen general registers from encoding order.
    pub fn set_gprs(&mut self, g: [u64; 16]) {
        [
            self.rax, self.rcx, self.rdx, self.rbx, self.rsp, self.rbp, self.rsi, self.rdi, self.r8, self.r9, self.r10,
            self.r11, self.r12, self.r13, self.r14, self.r15,
        ] = g;
    }
}

/// RFLAGS bits.
pub mod flags {
    pub const CF: u64 = 1 << 0;
    pub const FIXED1: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    /// The six arithmetic status flags.
    pub const STATUS: u64 = CF | PF | AF | ZF | SF | OF;
}

/// A segment register with its hidden descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    /// Descriptor type (4 bits).
    pub type_: u8,
    pub present: bool,
    pub dpl: u8,
    /// Default operation size (D/B).
    pub db: bool,
    /// Descriptor type: code/data (true) or system (false).
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    pub g: bool,
    pub avl: bool,
    pub unusable: bool,
}

impl Segment {
    /// A real-mode segment for `selector`: base selector*16, 64 KiB limit.
    pub fn real_mode(selector: u16, code: bool) -> Self {
        Segment {
            base: u64::from(selector) << 4,
            limit: 0xffff,
            selector,
            type_: if code { 0xb } else { 0x3 },
            present: true,
            s: true,
            ..Default::default()
        }
    }

    /// A flat 4 GiB segment as protected-mode boot protocols leave them.
    pub fn flat(selector: u16, code: bool, long: bool) -> Self {
        Segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_: if code { 0xb } else { 0x3 },
            present: true,
            s: true,
            db: !long,
            l: long && code,
            g: true,
            ..Default::default()
        }
    }

    /// The 8-byte GDT descriptor encoding this segment (base and limit truncated to
    /// 32 bits), for loaders that build a GDT.
    pub fn descriptor(&self) -> u64 {
        let limit = if self.g { self.limit >> 12 } else { self.limit } as u64;
        let base = self.base & 0xffff_ffff;
        let access = u64::from(self.type_ & 0xf)
            | (u64::from(self.s) << 4)
            | (u64::from(self.dpl & 3) << 5)
            | (u64::from(self.present) << 7);
        let fl = u64::from(self.avl) | (u64::from(self.l) << 1) | (u64::from(self.db) << 2) | (u64::from(self.g) << 3);
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (access << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (fl << 52)
            | ((base >> 24) << 56)
    }
}

/// A descriptor-table register (GDTR, IDTR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Segment, descriptor-table and control registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// Control-register and EFER bits used by loaders and accelerators.
pub mod ctrl {
    pub const CR0_PE: u64 = 1 << 0;
    pub const CR0_MP: u64 = 1 << 1;
    pub const CR0_ET: u64 = 1 << 4;
    pub const CR0_NE: u64 = 1 << 5;
    pub const CR0_WP: u64 = 1 << 16;
    pub const CR0_PG: u64 = 1 << 31;
    pub const CR4_PAE: u64 = 1 << 5;
    pub const CR4_OSFXSR: u64 = 1 << 9;
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    pub const EFER_SCE: u64 = 1 << 0;
    pub const EFER_LME: u64 = 1 << 8;
    pub const EFER_LMA: u64 = 1 << 10;
    pub const EFER_NXE: u64 = 1 << 11;
}

/// Debug registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DebugRegs {
    pub db: [u64; 4],
    pub dr6: u64,
    pub dr7: u64,
}

/// x87, MMX and SSE state in FXSAVE terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FpuState {
    /// ST0..ST7 / MM0..MM7, 80 bits each in the low 10 bytes.
    pub st: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    /// Abridged tag word (one bit a register, 1 = valid), as FXSAVE stores it.
    pub ftw: u8,
    pub fop: u16,
    pub fip: u64,
    pub fdp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl FpuState {
    /// TOP, the x87 stack's top (FSW bits 11..13): ST(i) is physical register
    /// (TOP + i) mod 8.
    pub fn top(&self) -> usize {
        usize::from(self.fsw >> 11) & 7
    }
}

impl Default for FpuState {
    /// The state after FNINIT and reset of MXCSR.
    fn default() -> Self {
        FpuState {
            st: [[0; 16]; 8],
            fcw: 0x37f,
            fsw: 0,
            ftw: 0,
            fop: 0,
            fip: 0,
            fdp: 0,
            xmm: [[0; 16]; 16],
            mxcsr: 0x1f80,
        }
    }
}

/// One model-specific register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsrEntry {
    pub index: u32,
    pub data: u64,
}

/// Well-known MSR numbers.
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_APIC_BASE: u32 = 0x1b;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// The register state after RESET or INIT (SDM vol. 3, "Processor State After Reset"):
/// real mode, CS base 0xffff0000 with IP 0xfff0, so the first fetch is 16 bytes below
/// 4 GiB.
pub fn power_on_state() -> (Regs, SpecialRegs) {
    let regs = Regs { rip: 0xfff0, rflags: flags::FIXED1, rdx: 0x600, ..Default::default() };
    let data = Segment::real_mode(0, false);
    let cs = Segment { base: 0xffff_0000, ..Segment::real_mode(0xf000, true) };
    let sregs = SpecialRegs {
        cs,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: Segment { type_: 0xb, s: false, present: true, limit: 0xffff, ..Default::default() },
        ldt: Segment { type_: 0x2, s: false, present: true, limit: 0xffff, ..Default::default() },
        gdt: DescriptorTable { base: 0, limit: 0xffff },
        idt: DescriptorTable { base: 0, limit: 0xffff },
        cr0: 0x6000_0010,
        apic_base: 0xfee0_0900,
        ..Default::default()
    };
    (regs, sregs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_descriptor_matches_the_sdm_encoding() {
        // The classic 0x00cf9b000000ffff flat 32-bit code descriptor (accessed bit set).
        assert_eq!(Segment::flat(0x10, true, false).descriptor(), 0x00cf_9b00_0000_ffff);
        // 64-bit code: L set, D clear.
        assert_eq!(Segment::flat(0x08, true, true).descriptor(), 0x00af_9b00_0000_ffff);
        assert_eq!(Segment::flat(0x18, false, false).descriptor(), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn gprs_round_trip_in_encoding_order() {
        let mut r = Regs::default();
        let g: [u64; 16] = std::array::from_fn(|i| i as u64 * 3);
        r.set_gprs(g);
        assert_eq!(r.rcx, 3);
        assert_eq!(r.rsp, 12);
        assert_eq!(r.gprs(), g);
    }
}
