//! The CPUID a vCPU shows: what KVM supports, less what the machine or the host cannot
//! give the guest.
//!
//! Hiding a feature matters because guests pick code paths from CPUID: a Linux kernel
//! that sees CX16 or XSAVE uses `cmpxchg16b` and `xsaveopt`, which a software
//! instruction emulator (kvm_pvm's) may not implement.

use std::ops::{BitOr, BitOrAssign};

use kvm_bindings::kvm_cpuid_entry2;
use quern_core::cpu_model::{feature, CpuModel, FeatureSet, FeatureWord, ModelKind, Reg};

/// A set of CPU features to hide from the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuidMask(u32);

impl CpuidMask {
    /// CMPXCHG16B (leaf 1 ECX bit 13).
    pub const CX16: Self = Self(1 << 0);
    /// XSAVE and OSXSAVE (leaf 1 ECX bits 26-27) and the whole of leaf 0xd; implies
    /// hiding everything that needs XSAVE-managed state (AVX family, XSAVEOPT).
    pub const XSAVE: Self = Self(1 << 1);
    /// XSAVEOPT (leaf 0xd sub-leaf 1 EAX bit 0).
    pub const XSAVEOPT: Self = Self(1 << 2);
    /// AVX (leaf 1 ECX bit 28), with FMA and F16C that need its state; implies AVX2
    /// and AVX-512.
    pub const AVX: Self = Self(1 << 3);
    /// AVX2 (leaf 7 EBX bit 5).
    pub const AVX2: Self = Self(1 << 4);
    /// Every AVX-512 extension (leaf 7) and its state components (leaf 0xd).
    pub const AVX512: Self = Self(1 << 5);
    /// x2APIC (leaf 1 ECX bit 21).
    pub const X2APIC: Self = Self(1 << 6);
    /// Process-context identifiers (leaf 1 ECX bit 17).
    pub const PCID: Self = Self(1 << 7);
    /// RD/WR FS/GS BASE (leaf 7 EBX bit 0).
    pub const FSGSBASE: Self = Self(1 << 8);
    /// RDRAND (leaf 1 ECX bit 30).
    pub const RDRAND: Self = Self(1 << 9);
    /// RDSEED (leaf 7 EBX bit 18).
    pub const RDSEED: Self = Self(1 << 10);

    pub const fn empty() -> Self {
        Self(0)
    }

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// What kvm_pvm's instruction emulator cannot execute (it fails with
    /// KVM_EXIT_INTERNAL_ERROR on `lock cmpxchg16b` and `xsaveopt`), so a guest must
    /// not be told it has them. (Observed: kvm_pvm honours the CX16 bit but shows the
    /// guest XSAVE, AVX and leaf 0xd whatever KVM_SET_CPUID2 says.)
    pub const fn pvm_workarounds() -> Self {
        Self::CX16.union(Self::XSAVE).union(Self::XSAVEOPT).union(Self::AVX).union(Self::AVX2).union(Self::AVX512)
    }

    /// The feature a QEMU-style `-cpu` flag name stands for ("cx16", "xsave", ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "cx16" => Self::CX16,
            "xsave" => Self::XSAVE,
            "xsaveopt" => Self::XSAVEOPT,
            "avx" => Self::AVX,
            "avx2" => Self::AVX2,
            "avx512f" | "avx512" => Self::AVX512,
            "x2apic" => Self::X2APIC,
            "pcid" => Self::PCID,
            "fsgsbase" => Self::FSGSBASE,
            "rdrand" => Self::RDRAND,
            "rdseed" => Self::RDSEED,
            _ => return None,
        })
    }

    /// Applies one `-cpu` flag: `-feat` (or `feat=off`) hides, `+feat` (or `feat=on`)
    /// shows again.
    pub fn apply_flag(&mut self, flag: &str) -> Result<(), String> {
        let (name, hide) = match flag.split_once('=') {
            Some((n, "off")) => (n, true),
            Some((n, "on")) => (n, false),
            _ => match flag.strip_prefix('-') {
                Some(n) => (n, true),
                None => (flag.strip_prefix('+').unwrap_or(flag), false),
            },
        };
        let f = Self::from_name(name).ok_or_else(|| {
            format!("-cpu: cannot change feature '{name}' (known: cx16 xsave xsaveopt avx avx2 avx512f x2apic pcid fsgsbase rdrand rdseed)")
        })?;
        *self = if hide { self.union(f) } else { Self(self.0 & !f.0) };
        Ok(())
    }

    /// Stops hiding what `-cpu +feat` asked for by name (the user insists, e.g. `+cx16`
    /// on kvm_pvm).
    pub fn show_requested(self, plus: &FeatureSet) -> Self {
        let mut m = self;
        for name in plus.names() {
            if let Some(f) = Self::from_name(name) {
                m = Self(m.0 & !f.0);
            }
        }
        m
    }

    /// Adds what hiding a feature implies: no XSAVE means no state for AVX, no AVX means
    /// no AVX2 or AVX-512.
    pub const fn closure(self) -> Self {
        let mut m = self;
        if m.contains(Self::XSAVE) {
            m = m.union(Self::XSAVEOPT).union(Self::AVX);
        }
        if m.contains(Self::AVX) {
            m = m.union(Self::AVX2).union(Self::AVX512);
        }
        m
    }
}

impl BitOr for CpuidMask {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl BitOrAssign for CpuidMask {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = self.union(rhs);
    }
}

const fn bit(n: u32) -> u32 {
    1 << n
}

// Leaf 1.
const ECX_FMA: u32 = bit(12);
const ECX_CX16: u32 = bit(13);
const ECX_PCID: u32 = bit(17);
const ECX_X2APIC: u32 = bit(21);
const ECX_TSC_DEADLINE: u32 = bit(24);
const ECX_XSAVE: u32 = bit(26);
const ECX_OSXSAVE: u32 = bit(27);
const ECX_AVX: u32 = bit(28);
const ECX_F16C: u32 = bit(29);
const ECX_RDRAND: u32 = bit(30);
const ECX_HYPERVISOR: u32 = bit(31);
#[cfg(test)]
const EDX_APIC: u32 = bit(9);
// Leaf 7 sub-leaf 0.
const EBX7_FSGSBASE: u32 = bit(0);
const EBX7_AVX2: u32 = bit(5);
const EBX7_RDSEED: u32 = bit(18);
/// F, DQ, IFMA, PF, ER, CD, BW, VL.
const EBX7_AVX512: u32 = bit(16) | bit(17) | bit(21) | bit(26) | bit(27) | bit(28) | bit(30) | bit(31);
/// VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ.
const ECX7_AVX512: u32 = bit(1) | bit(6) | bit(11) | bit(12) | bit(14);
/// 4VNNIW, 4FMAPS, VP2INTERSECT, FP16.
const EDX7_AVX512: u32 = bit(2) | bit(3) | bit(8) | bit(23);
/// VAES and VPCLMULQDQ operate on YMM registers.
const ECX7_AVX: u32 = bit(9) | bit(10);
// Leaf 7 sub-leaf 1.
const EAX71_AVX_VNNI: u32 = bit(4);
const EAX71_AVX512_BF16: u32 = bit(5);
// Leaf 0xd: XCR0 components and sub-leaf 1 features.
const XCR0_YMM: u32 = bit(2);
const XCR0_AVX512: u32 = bit(5) | bit(6) | bit(7);
const EAX_D1_XSAVEOPT: u32 = bit(0);

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| e.function == function && e.index == index)
}

fn reg_mut(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

fn reg(e: &kvm_cpuid_entry2, r: Reg) -> u32 {
    match r {
        Reg::Eax => e.eax,
        Reg::Ebx => e.ebx,
        Reg::Ecx => e.ecx,
        Reg::Edx => e.edx,
    }
}

/// The feature words of a CPUID table (KVM's supported one), all bits kept.
pub fn feature_set(entries: &[kvm_cpuid_entry2]) -> FeatureSet {
    let mut s = FeatureSet::empty();
    for w in FeatureWord::ALL {
        let (leaf, sub, r) = w.location();
        if let Some(e) = find(entries, leaf, sub) {
            s.set_word(w, reg(e, r));
        }
    }
    s
}

/// Rewrites KVM's supported CPUID into the `-cpu` model's. `host` and `max` keep what
/// KVM supports (less `-feat`); named models keep only their features that KVM
/// supports (with QEMU's KVM defaults: x2APIC on, SVM off), and take the model's
/// family/model/stepping, brand string and leaf ranges.
/// The vendor stays the host's unless `vendor=` says otherwise, as QEMU does under KVM
/// (its SYSCALL/SYSENTER emulation depends on it). Returns what else must be hidden
/// because the model lacks it (XSAVE state for models without XSAVE or AVX).
pub fn apply_model(entries: &mut Vec<kvm_cpuid_entry2>, model: &CpuModel) -> Result<CpuidMask, String> {
    let supported = feature_set(entries);
    let mut features = model.resolve("kvm", &supported)?;
    let named = model.kind() == ModelKind::Named;
    if named {
        // QEMU's defaults for every model under KVM: x2APIC on (hidden again below
        // without an in-kernel LAPIC), nested SVM off.
        if supported.contains(feature::X2APIC) && !model.minus.contains(feature::X2APIC) {
            features.insert(feature::X2APIC);
        }
        if !model.plus.contains(feature::SVM) {
            features.remove(feature::SVM);
        }
    }
    for w in FeatureWord::ALL {
        let (leaf, sub, r) = w.location();
        let mut bits = features.word(w);
        if named && w == FeatureWord::Kvm1Eax {
            // QEMU turns KVM's paravirtual features on for every model under KVM.
            bits = (supported.word(w) | model.plus.word(w)) & !model.minus.word(w);
        }
        if let Some(e) = entries.iter_mut().find(|e| e.function == leaf && e.index == sub) {
            *reg_mut(e, r) = bits;
        }
    }

    let o = &model.overrides;
    let level = if named { Some(model.level()) } else { o.level };
    let xlevel = if named { Some(model.xlevel()) } else { o.xlevel };
    if let Some(level) = level {
        entries.retain(|e| e.function <= level || e.function >= 0x4000_0000);
    }
    if let Some(xlevel) = xlevel {
        entries.retain(|e| e.function < 0x8000_0000 || e.function > 0xbfff_ffff || e.function <= xlevel);
    }
    if model.hide_kvm {
        entries.retain(|e| !(0x4000_0000..=0x4000_00ff).contains(&e.function));
    }
    let mut set = |function: u32, f: &mut dyn FnMut(&mut kvm_cpuid_entry2)| {
        if !entries.iter().any(|e| e.function == function && e.index == 0) {
            entries.push(kvm_cpuid_entry2 { function, ..Default::default() });
        }
        entries.iter_mut().filter(|e| e.function == function && e.index == 0).for_each(f);
    };
    if let Some(level) = level {
        set(0, &mut |e| e.eax = level);
    }
    if let Some(xlevel) = xlevel {
        set(0x8000_0000, &mut |e| e.eax = xlevel);
    }
    if let Some(v) = o.vendor {
        let (b, d, c) = v.words();
        for leaf in [0, 0x8000_0000] {
            set(leaf, &mut |e| (e.ebx, e.ecx, e.edx) = (b, c, d));
        }
    }
    set(1, &mut |e| {
        let (fam, mdl, step) = decode_signature(e.eax);
        let sig = if named {
            model.signature()
        } else {
            quern_core::cpu_model::signature(
                o.family.unwrap_or(fam),
                o.model.unwrap_or(mdl),
                o.stepping.unwrap_or(step),
            )
        };
        e.eax = sig;
    });
    if named || o.model_id.is_some() {
        let mut brand = [0u8; 48];
        let id = model.model_id().as_bytes();
        brand[..id.len()].copy_from_slice(id);
        for (i, chunk) in brand.chunks(16).enumerate() {
            let w = |j: usize| u32::from_le_bytes([chunk[j], chunk[j + 1], chunk[j + 2], chunk[j + 3]]);
            set(0x8000_0002 + i as u32, &mut |e| (e.eax, e.ebx, e.ecx, e.edx) = (w(0), w(4), w(8), w(12)));
        }
    }
    if let Some(bits) = o.phys_bits {
        set(0x8000_0008, &mut |e| e.eax = (e.eax & !0xff) | bits);
    }
    // The topology of -smp, as the JIT's model reports it (quern_core::topology).
    let topo = model.topology;
    let (count, htt) = topo.cpuid_1_count();
    let amd = entries.iter().any(|e| e.function == 0 && e.ebx == u32::from_le_bytes(*b"Auth"));
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & !0x00ff_0000) | count;
                // HTT set for several; one CPU keeps what the model says (as QEMU).
                e.edx |= htt;
            }
            4 if e.eax & 0x1f != 0 => e.eax = (e.eax & 0x3fff) | topo.cpuid_4_sharing((e.eax >> 5) & 7),
            0xb if e.index < 2 => [e.eax, e.ebx, e.ecx] = topo.cpuid_0b(e.index),
            0x8000_0008 if amd => e.ecx = topo.cpuid_amd_80000008_ecx(),
            _ => {}
        }
    }

    let mut hide = CpuidMask::empty();
    if !features.contains(feature::XSAVE) {
        hide |= CpuidMask::XSAVE;
    }
    if !features.contains(feature::AVX) {
        hide |= CpuidMask::AVX;
    }
    if !features.contains(feature::AVX512F) {
        hide |= CpuidMask::AVX512;
    }
    Ok(hide)
}

/// (family, model, stepping) from leaf 1 EAX.
fn decode_signature(eax: u32) -> (u32, u32, u32) {
    let base_fam = (eax >> 8) & 0xf;
    let fam = if base_fam == 0xf { base_fam + ((eax >> 20) & 0xff) } else { base_fam };
    let mdl =
        if base_fam == 6 || base_fam == 0xf { ((eax >> 16) & 0xf) << 4 | (eax >> 4) & 0xf } else { (eax >> 4) & 0xf };
    (fam, mdl, eax & 0xf)
}

/// What a vCPU's CPUID must say about that vCPU in particular.
#[derive(Clone, Copy, Debug)]
pub struct CpuidOptions {
    pub mask: CpuidMask,
    /// Whether the local APIC is KVM's (in-kernel irqchip) rather than the machine's.
    /// The machine's model is reached only through MMIO exits: KVM without an in-kernel
    /// LAPIC answers the x2APIC MSRs with #GP and ignores IA32_TSC_DEADLINE, and cannot
    /// forward them without MSR filtering, so then x2APIC and TSC-deadline are hidden
    /// and the guest uses the xAPIC page.
    pub in_kernel_lapic: bool,
    /// The vCPU's APIC ID (also its KVM vCPU id).
    pub vcpu_id: u32,
}

/// Rewrites KVM's supported CPUID entries into the ones a vCPU gets.
pub fn patch_cpuid(entries: &mut [kvm_cpuid_entry2], opts: &CpuidOptions) {
    let m = opts.mask.closure();
    let hide = |on: bool, bits: u32| if on { bits } else { 0 };
    for e in entries.iter_mut() {
        match (e.function, e.index) {
            (1, _) => {
                e.ecx |= ECX_HYPERVISOR;
                e.ecx &= !(hide(m.contains(CpuidMask::CX16), ECX_CX16)
                    | hide(m.contains(CpuidMask::XSAVE), ECX_XSAVE | ECX_OSXSAVE)
                    | hide(m.contains(CpuidMask::AVX), ECX_AVX | ECX_FMA | ECX_F16C)
                    | hide(m.contains(CpuidMask::X2APIC) || !opts.in_kernel_lapic, ECX_X2APIC)
                    | hide(!opts.in_kernel_lapic, ECX_TSC_DEADLINE)
                    | hide(m.contains(CpuidMask::PCID), ECX_PCID)
                    | hide(m.contains(CpuidMask::RDRAND), ECX_RDRAND));
                // Initial APIC ID in EBX[31:24].
                e.ebx = (e.ebx & 0x00ff_ffff) | (opts.vcpu_id << 24);
            }
            (7, 0) => {
                e.ebx &= !(hide(m.contains(CpuidMask::FSGSBASE), EBX7_FSGSBASE)
                    | hide(m.contains(CpuidMask::AVX2), EBX7_AVX2)
                    | hide(m.contains(CpuidMask::RDSEED), EBX7_RDSEED)
                    | hide(m.contains(CpuidMask::AVX512), EBX7_AVX512));
                e.ecx &=
                    !(hide(m.contains(CpuidMask::AVX512), ECX7_AVX512) | hide(m.contains(CpuidMask::AVX), ECX7_AVX));
                e.edx &= !hide(m.contains(CpuidMask::AVX512), EDX7_AVX512);
            }
            (7, 1) => {
                e.eax &= !(hide(m.contains(CpuidMask::AVX), EAX71_AVX_VNNI)
                    | hide(m.contains(CpuidMask::AVX512), EAX71_AVX512_BF16));
            }
            (0xd, sub) => {
                if m.contains(CpuidMask::XSAVE) {
                    (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
                    continue;
                }
                let gone =
                    hide(m.contains(CpuidMask::AVX), XCR0_YMM) | hide(m.contains(CpuidMask::AVX512), XCR0_AVX512);
                match sub {
                    0 => e.eax &= !gone,
                    1 => e.eax &= !hide(m.contains(CpuidMask::XSAVEOPT), EAX_D1_XSAVEOPT),
                    // Sub-leaf n describes state component n.
                    n if n < 32 && gone & bit(n) != 0 => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
                    _ => {}
                }
            }
            // x2APIC topology: EDX is this vCPU's x2APIC ID.
            (0xb, _) | (0x1f, _) => e.edx = opts.vcpu_id,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, eax, ebx, ecx, edx, ..Default::default() }
    }

    /// A host that has everything.
    fn full() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(1, 0, 0x906ea, 0x0010_0800, 0x7ffa_fbff, 0xbfeb_fbff),
            entry(7, 0, 0, !0, !0, !0),
            entry(7, 1, !0, 0, 0, 0),
            entry(0xd, 0, 0xe7, 0xa80, 0xa80, 0),
            entry(0xd, 1, 0xf, 0, 0, 0),
            entry(0xd, 2, 0x100, 0x240, 0, 0),
            entry(0xd, 5, 0x40, 0x440, 0, 0),
            entry(0xb, 0, 1, 1, 0x100, 0),
        ]
    }

    fn get(e: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *e.iter().find(|x| x.function == f && x.index == i).unwrap()
    }

    #[test]
    fn cpu_flags_hide_and_show_features() {
        let mut m = CpuidMask::empty();
        m.apply_flag("-cx16").unwrap();
        m.apply_flag("xsave=off").unwrap();
        assert!(m.contains(CpuidMask::CX16) && m.contains(CpuidMask::XSAVE));
        m.apply_flag("+cx16").unwrap();
        assert!(!m.contains(CpuidMask::CX16));
        let e = m.apply_flag("-frob").unwrap_err();
        assert!(e.contains("frob") && e.contains("known:"), "{e}");
    }

    #[test]
    fn userspace_lapic_is_xapic_only_and_identity_is_set() {
        let mut e = full();
        patch_cpuid(&mut e, &CpuidOptions { mask: CpuidMask::empty(), in_kernel_lapic: false, vcpu_id: 3 });
        let l1 = get(&e, 1, 0);
        assert_ne!(l1.edx & EDX_APIC, 0, "the machine's LAPIC is there (KVM follows IA32_APIC_BASE.EN)");
        assert_eq!(l1.ecx & (ECX_X2APIC | ECX_TSC_DEADLINE), 0, "but only as the xAPIC page");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_CX16, 0, "nothing else hidden");
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!(get(&e, 0xb, 0).edx, 3);

        let mut e = full();
        patch_cpuid(&mut e, &CpuidOptions { mask: CpuidMask::empty(), in_kernel_lapic: true, vcpu_id: 0 });
        assert_ne!(get(&e, 1, 0).edx & EDX_APIC, 0);
        assert_ne!(get(&e, 1, 0).ecx & (ECX_X2APIC | ECX_TSC_DEADLINE), 0);
        let mut e = full();
        patch_cpuid(&mut e, &CpuidOptions { mask: CpuidMask::X2APIC, in_kernel_lapic: true, vcpu_id: 0 });
        assert_eq!(get(&e, 1, 0).ecx & ECX_X2APIC, 0, "-x2apic");
    }

    #[test]
    fn pvm_workarounds_hide_cx16_xsave_and_avx() {
        let mut e = full();
        patch_cpuid(&mut e, &CpuidOptions { mask: CpuidMask::pvm_workarounds(), in_kernel_lapic: true, vcpu_id: 0 });
        let l1 = get(&e, 1, 0);
        for b in [ECX_CX16, ECX_XSAVE, ECX_OSXSAVE, ECX_AVX, ECX_FMA, ECX_F16C] {
            assert_eq!(l1.ecx & b, 0, "bit {b:#x}");
        }
        assert_ne!(l1.ecx & ECX_RDRAND, 0);
        let l7 = get(&e, 7, 0);
        assert_eq!(l7.ebx & (EBX7_AVX2 | EBX7_AVX512), 0);
        assert_ne!(l7.ebx & (EBX7_FSGSBASE | EBX7_RDSEED), 0);
        assert_eq!(l7.ecx & ECX7_AVX512, 0);
        for sub in [0, 1, 2, 5] {
            let d = get(&e, 0xd, sub);
            assert_eq!((d.eax, d.ebx, d.ecx, d.edx), (0, 0, 0, 0), "leaf 0xd.{sub}");
        }
    }

    #[test]
    fn single_features_are_hidden_alone() {
        let mut e = full();
        let mask = CpuidMask::XSAVEOPT | CpuidMask::AVX512 | CpuidMask::PCID | CpuidMask::FSGSBASE;
        patch_cpuid(&mut e, &CpuidOptions { mask, in_kernel_lapic: true, vcpu_id: 0 });
        assert_eq!(get(&e, 0xd, 1).eax, 0xe);
        assert_eq!(get(&e, 0xd, 0).eax, 0x7, "x87, SSE and AVX state stay; AVX-512 state goes");
        assert_eq!(get(&e, 0xd, 5).eax, 0);
        assert_eq!(get(&e, 0xd, 2).eax, 0x100);
        assert_ne!(get(&e, 1, 0).ecx & ECX_AVX, 0);
        assert_eq!(get(&e, 1, 0).ecx & ECX_PCID, 0);
        assert_eq!(get(&e, 7, 0).ebx & EBX7_FSGSBASE, 0);
        assert_ne!(get(&e, 7, 0).ebx & EBX7_AVX2, 0);
    }

    /// An Intel host's table with the identity leaves and KVM's paravirtual leaves.
    fn host_table() -> Vec<kvm_cpuid_entry2> {
        let (b, d, c) = quern_core::cpu_model::Vendor::INTEL.words();
        let mut e = full();
        e.extend([
            entry(0, 0, 0x1f, b, c, d),
            entry(0x14, 0, 1, 0, 0, 0),
            entry(0x4000_0000, 0, 0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d),
            entry(0x4000_0001, 0, 0x0100_7afb, 0, 0, 0),
            entry(0x8000_0000, 0, 0x8000_0008, 0, 0, 0),
            entry(0x8000_0001, 0, 0, 0, 0x121, 0x2c10_0800),
            entry(0x8000_0002, 0, 0x6c65_746e, 0, 0, 0),
            entry(0x8000_0008, 0, 0x3027, 0, 0, 0),
        ]);
        e
    }

    fn model(spec: &str) -> CpuModel {
        CpuModel::parse(spec).unwrap()
    }

    #[test]
    fn named_models_take_their_identity_and_features_but_keep_the_host_vendor() {
        let mut e = host_table();
        let hide = apply_model(&mut e, &model("qemu64")).unwrap();
        assert_eq!((get(&e, 0, 0).eax, get(&e, 0, 0).ebx), (0xd, 0x756e_6547), "level 0xd, still Genu-ineIntel");
        assert!(e.iter().all(|x| x.function != 0x14), "leaves past the model's level go");
        let l1 = get(&e, 1, 0);
        assert_eq!(l1.eax, 0x0006_0fb1);
        assert_eq!(l1.ecx & (ECX_AVX | ECX_XSAVE | ECX_PCID), 0, "not in qemu64: {:#x}", l1.ecx);
        assert_ne!(l1.ecx & ECX_X2APIC, 0, "x2apic on, as QEMU has it under KVM");
        assert_ne!(l1.ecx & (ECX_CX16 | 1), 0, "cx16 and sse3 are");
        assert_eq!(get(&e, 7, 0).ebx, 0);
        assert!(hide.contains(CpuidMask::XSAVE) && hide.contains(CpuidMask::AVX));
        assert_eq!(get(&e, 0x8000_0000, 0).eax, 0x8000_000a);
        assert_eq!(get(&e, 0x8000_0001, 0).ecx, 1, "lahf_lm; the host has no svm");
        assert_eq!(get(&e, 0x8000_0002, 0).eax, u32::from_le_bytes(*b"QEMU"));
        assert_eq!(get(&e, 0x8000_0003, 0).edx, u32::from_le_bytes(*b"+\0\0\0"));
        assert_eq!(get(&e, 0x8000_0004, 0).eax, 0);
        assert_eq!(get(&e, 0x4000_0001, 0).eax, 0x0100_7afb, "KVM's paravirtual features stay");

        let mut e = host_table();
        e.iter_mut().filter(|x| x.function == 0x8000_0001).for_each(|x| x.ecx |= 1 << 2);
        apply_model(&mut e, &model("qemu64,-x2apic")).unwrap();
        assert_eq!(get(&e, 1, 0).ecx & ECX_X2APIC, 0);
        assert_eq!(get(&e, 0x8000_0001, 0).ecx & (1 << 2), 0, "no nested SVM unless asked for");

        let mut e = host_table();
        apply_model(&mut e, &model("kvm64,-kvmclock,+popcnt,xlevel=0x80000004,kvm=off")).unwrap();
        assert_eq!(get(&e, 1, 0).eax, 0xf61);
        assert_ne!(get(&e, 1, 0).ecx & (1 << 23), 0);
        assert!(e.iter().all(|x| x.function != 0x8000_0008 && !(0x4000_0000..0x4000_0100).contains(&x.function)));
    }

    #[test]
    fn the_smp_topology_reaches_the_count_and_topology_leaves() {
        let topo = quern_core::Topology { sockets: 2, dies: 1, modules: 1, cores: 2, threads: 2 };
        for (spec, amd) in [("qemu64", false), ("qemu64,vendor=AuthenticAMD", true)] {
            let mut e = host_table();
            let mut m = model(spec);
            m.topology = topo;
            apply_model(&mut e, &m).unwrap();
            let l1 = get(&e, 1, 0);
            let htt = quern_core::topology::CPUID_1_EDX_HTT;
            assert_eq!((l1.ebx >> 16 & 0xff, l1.edx & htt), (4, htt), "{spec}");
            let b = get(&e, 0xb, 0);
            assert_eq!((b.eax, b.ebx, b.ecx), (1, 2, 0x100), "{spec}");
            let want = if amd { 2 << 12 | 3 } else { 0 };
            assert_eq!(get(&e, 0x8000_0008, 0).ecx, want, "{spec}");
        }
        // One CPU: no count, whatever the host's table said.
        let mut e = host_table();
        e.iter_mut().filter(|x| x.function == 1).for_each(|x| x.ebx |= 8 << 16);
        apply_model(&mut e, &model("qemu64")).unwrap();
        assert_eq!(get(&e, 1, 0).ebx >> 16 & 0xff, 0);
    }

    #[test]
    fn host_keeps_kvms_cpuid_less_what_is_taken_away() {
        let mut e = host_table();
        let before = e.clone();
        assert_eq!(apply_model(&mut e, &CpuModel::host()).unwrap(), CpuidMask::empty());
        assert_eq!(feature_set(&e), feature_set(&before));
        assert_eq!((get(&e, 0, 0).eax, get(&e, 1, 0).eax), (0x1f, 0x906ea));
        assert_eq!(get(&e, 0x8000_0002, 0).eax, 0x6c65_746e, "the host's brand string");

        let mut e = host_table();
        let hide = apply_model(&mut e, &model("max,-avx,-cx16,family=6,model=0x3a,vendor=AuthenticAMD")).unwrap();
        assert_eq!(get(&e, 1, 0).ecx & (ECX_AVX | ECX_CX16), 0);
        assert_ne!(get(&e, 1, 0).ecx & ECX_XSAVE, 0);
        assert!(hide.contains(CpuidMask::AVX) && !hide.contains(CpuidMask::XSAVE));
        assert_eq!(get(&e, 1, 0).eax, 0x306aa, "family/model replaced, stepping kept");
        assert_eq!(get(&e, 0x8000_0000, 0).ebx, u32::from_le_bytes(*b"Auth"));

        let err = apply_model(&mut host_table(), &model("host,+svm")).unwrap_err();
        assert_eq!(err, "kvm does not support CPU feature 'svm' (CPUID.80000001H:ECX bit 2)");
    }

    #[test]
    fn requested_features_lift_the_host_workarounds() {
        let m = CpuidMask::pvm_workarounds().show_requested(&model("host,+cx16").plus);
        assert!(!m.contains(CpuidMask::CX16) && m.contains(CpuidMask::XSAVE));
    }

    #[test]
    fn signatures_decode() {
        assert_eq!(decode_signature(0x906ea), (6, 0x9e, 0xa));
        assert_eq!(decode_signature(0x0006_0fb1), (15, 107, 1));
        assert_eq!(decode_signature(0x0083_0f10), (0x17, 0x31, 0));
    }

    #[test]
    fn mask_closure_and_ops() {
        assert!(CpuidMask::XSAVE.closure().contains(CpuidMask::AVX512 | CpuidMask::XSAVEOPT));
        assert!(!CpuidMask::AVX.closure().contains(CpuidMask::XSAVE));
        let mut m = CpuidMask::empty();
        assert!(m.is_empty());
        m |= CpuidMask::RDRAND;
        assert_eq!(m.bits(), CpuidMask::RDRAND.bits());
    }
}
