//! The CPU the JIT presents: CPUID resolved once from the `-cpu` model, and the MSRs
//! that belong to the model (machine-check architecture, vendor-specific registers).
//!
//! Only features the JIT executes are advertised ([`supported`]); a named model's
//! features beyond them are dropped, and asking for one with `+feat` is an error.

use quern_core::cpu_model::{feature, CpuModel, Feature, FeatureSet, FeatureWord, ModelKind, Vendor};
use quern_core::regs::ctrl;

use crate::cpu::{Cpu, Exception, Result};

/// What the JIT executes, as CPUID features (the local APIC, x2APIC and TSC-deadline
/// timer are the machine's, reached through `VmOps`). Left out on purpose: SSE3 and
/// later vector extensions, XSAVE, SYSENTER (sep), RDTSCP, MTRRs, debug extensions
/// (de), VME, SVM.
pub fn supported() -> FeatureSet {
    use feature::*;
    [
        FPU,
        PSE,
        TSC,
        MSR,
        PAE,
        MCE,
        CX8,
        APIC,
        PGE,
        MCA,
        CMOV,
        PAT,
        PSE36,
        CLFLUSH,
        MMX,
        FXSR,
        SSE,
        SSE2,
        CX16,
        X2APIC,
        POPCNT,
        TSC_DEADLINE,
        HYPERVISOR,
        CLFLUSHOPT,
        SYSCALL,
        NX,
        PDPE1GB,
        LM,
        LAHF_LM,
        ABM,
        PREFETCHW,
    ]
    .into_iter()
    .fold(FeatureSet::empty(), FeatureSet::with)
}

/// Machine-check banks, as QEMU gives its CPUs.
pub const MCE_BANKS: usize = 10;
const MCG_CTL_P: u64 = 1 << 8;
const MCG_SER_P: u64 = 1 << 24;

/// Leaves whose output depends on the sub-leaf in ECX.
fn has_subleaves(leaf: u32) -> bool {
    matches!(leaf, 4 | 7 | 0xb | 0xd | 0x8000_001d)
}

/// A model resolved for the JIT: the CPUID table and what the MSRs depend on.
#[derive(Debug)]
pub struct TcgCpuModel {
    name: &'static str,
    vendor: Vendor,
    features: FeatureSet,
    level: u32,
    xlevel: u32,
    /// (leaf, sub-leaf) → (eax, ebx, ecx, edx), sorted.
    leaves: Vec<((u32, u32), [u32; 4])>,
    signature: u32,
    /// The `-smp` topology: each vCPU's APIC ID.
    pub topology: quern_core::Topology,
}

impl Default for TcgCpuModel {
    /// `qemu64`, QEMU's default.
    fn default() -> Self {
        TcgCpuModel::new(&CpuModel::default()).expect("qemu64 resolves on tcg")
    }
}

impl TcgCpuModel {
    /// Resolves `model` against what the JIT executes.
    pub fn new(model: &CpuModel) -> std::result::Result<Self, String> {
        if model.kind() == ModelKind::Host {
            return Err("CPU model 'host' requires KVM or HVF".into());
        }
        let features = model.resolve("tcg", &supported())?;
        let mut m = TcgCpuModel {
            name: model.name(),
            vendor: model.vendor(),
            features,
            level: model.level(),
            xlevel: model.xlevel(),
            leaves: Vec::new(),
            signature: model.signature(),
            topology: model.topology,
        };
        m.build(model);
        Ok(m)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    pub fn features(&self) -> &FeatureSet {
        &self.features
    }

    pub fn has(&self, f: Feature) -> bool {
        self.features.contains(f)
    }

    /// Leaf 1 EAX, which is also EDX after reset.
    pub fn signature(&self) -> u32 {
        self.signature
    }

    /// IA32_MCG_CAP: a control register and software-recoverable error reporting, as
    /// QEMU has it; zero without the machine-check architecture.
    pub fn mcg_cap(&self) -> u64 {
        if self.has(feature::MCA) {
            MCG_CTL_P | MCG_SER_P | MCE_BANKS as u64
        } else {
            0
        }
    }

    /// EFER bits software may set on this model (LMA is the CPU's own).
    pub fn efer_writable(&self) -> u64 {
        let mut m = 0;
        if self.has(feature::SYSCALL) {
            m |= ctrl::EFER_SCE;
        }
        if self.has(feature::LM) {
            m |= ctrl::EFER_LME | ctrl::EFER_LMA;
        }
        if self.has(feature::NX) {
            m |= ctrl::EFER_NXE;
        }
        m
    }

    fn build(&mut self, model: &CpuModel) {
        let f = self.features;
        let w = |word| f.word(word);
        let (vb, vd, vc) = self.vendor.words();
        let mut put = |leaf: u32, sub: u32, regs: [u32; 4]| self.leaves.push(((leaf, sub), regs));
        put(0, 0, [self.level, vb, vc, vd]);
        // EBX: CLFLUSH line size 64 bytes (in 8-byte units), the logical processors of
        // a package (with HTT set when there are several), APIC ID (the vCPU's own,
        // put in when CPUID runs).
        let topo = model.topology;
        let (count, htt) = topo.cpuid_1_count();
        let ebx1 = if f.contains(feature::CLFLUSH) { 8 << 8 } else { 0 } | count;
        let edx1 = w(FeatureWord::Leaf1Edx) | htt;
        put(1, 0, [self.signature, ebx1, w(FeatureWord::Leaf1Ecx), edx1]);
        // Leaf 2 as QEMU's legacy cache: L1d 32K, L1i 32K, L2 2M, L3 16M descriptors.
        put(2, 0, [1, 0, 0x4d, 0x002c_307d]);
        // Leaf 4, the same caches in detail (QEMU's legacy values: 64-byte lines; L1d
        // and L1i 32 KiB 8-way, L2 4 MiB 16-way, L3 16 MiB 16-way, inclusive with complex
        // indexing) with who shares each from the topology; sub-leaf 4 ends the list.
        // (type 1 data, 2 instruction, 3 unified; level; ways; sets; EDX)
        for (sub, (kind, level, ways, sets, edx)) in
            [(1u32, 1u32, 8u32, 64u32, 0u32), (2, 1, 8, 64, 0), (3, 2, 16, 4096, 0), (3, 3, 16, 16384, 6)]
                .into_iter()
                .enumerate()
        {
            let eax = kind | level << 5 | 1 << 8 | topo.cpuid_4_sharing(level);
            put(4, sub as u32, [eax, (ways - 1) << 22 | 63, sets - 1, edx]);
        }
        put(4, 4, [0; 4]);
        let (ebx7, ecx7, edx7, eax71) =
            (w(FeatureWord::Leaf7Ebx), w(FeatureWord::Leaf7Ecx), w(FeatureWord::Leaf7Edx), w(FeatureWord::Leaf7s1Eax));
        put(7, 0, [u32::from(eax71 != 0), ebx7, ecx7, edx7]);
        put(7, 1, [eax71, 0, 0, 0]);
        // Extended topology (what x2APIC guests read; sub-leaves past 1 read zeros).
        // EDX, the x2APIC ID, is the vCPU's own.
        for sub in 0..2 {
            let [a, b, c] = topo.cpuid_0b(sub);
            put(0xb, sub, [a, b, c, 0]);
        }
        self.leaves.retain(|&((l, _), _)| l <= self.level);

        let mut ext = Vec::new();
        ext.push((0x8000_0000, [self.xlevel, vb, vc, vd]));
        let mut edx = w(FeatureWord::Ext1Edx);
        if self.vendor.is_amd() {
            // AMD repeats these leaf 1 EDX bits in 0x8000_0001 EDX (QEMU does the same).
            const AMD_ALIASES: u32 = 0x0183_f3ff;
            edx |= w(FeatureWord::Leaf1Edx) & AMD_ALIASES;
        }
        ext.push((0x8000_0001, [self.signature, 0, w(FeatureWord::Ext1Ecx), edx]));
        let mut brand = [0u8; 48];
        let id = model.model_id().as_bytes();
        brand[..id.len().min(48)].copy_from_slice(&id[..id.len().min(48)]);
        for i in 0..3u32 {
            let r: [u32; 4] = std::array::from_fn(|j| {
                let o = i as usize * 16 + j * 4;
                u32::from_le_bytes([brand[o], brand[o + 1], brand[o + 2], brand[o + 3]])
            });
            ext.push((0x8000_0002 + i, r));
        }
        // L1 and L2 caches and TLBs, QEMU's legacy AMD values.
        ext.push((0x8000_0005, [0x01ff_01ff, 0x01ff_01ff, 0x4002_0140, 0x4002_0140]));
        ext.push((0x8000_0006, [0, 0x4200_4200, 0x0200_8140, 0]));
        ext.push((0x8000_0007, [0, 0, 0, w(FeatureWord::Ext7Edx)]));
        let phys = model.overrides.phys_bits.unwrap_or(40);
        let ecx8 = if self.vendor.is_amd() { topo.cpuid_amd_80000008_ecx() } else { 0 };
        ext.push((0x8000_0008, [phys | 48 << 8, w(FeatureWord::Ext8Ebx), ecx8, 0]));
        for (leaf, regs) in ext {
            if leaf <= self.xlevel {
                self.leaves.push(((leaf, 0), regs));
            }
        }
        self.leaves.sort_by_key(|&(k, _)| k);
    }

    /// CPUID for `leaf` and sub-leaf `sub`. Beyond the highest leaf of a range the
    /// highest basic leaf answers, as Intel documents and QEMU does.
    pub fn cpuid(&self, leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
        let limit = match leaf {
            0xc000_0000.. => 0,
            0x8000_0000.. => self.xlevel,
            // No paravirtual interface: the hypervisor range reads as zeros.
            0x4000_0000.. => 0x4000_0001,
            _ => self.level,
        };
        let leaf = if leaf > limit || (0xc000_0000..).contains(&leaf) { self.level } else { leaf };
        let sub = if has_subleaves(leaf) { sub } else { 0 };
        match self.leaves.binary_search_by_key(&(leaf, sub), |&(k, _)| k) {
            Ok(i) => {
                let r = self.leaves[i].1;
                (r[0], r[1], r[2], r[3])
            }
            Err(_) => (0, 0, 0, 0),
        }
    }
}

/// The model's MSR state that is not part of the state generated code reaches.
#[derive(Clone, Debug)]
pub struct ModelMsrs {
    mcg_status: u64,
    mcg_ctl: u64,
    /// Per bank: CTL, STATUS, ADDR, MISC (MSRs 0x400 + 4 * bank + n).
    banks: [[u64; 4]; MCE_BANKS],
    /// AMD MCi_CTL_MASK (0xc001_0044 + bank).
    ctl_mask: [u64; MCE_BANKS],
    /// AMD HWCR (0xc001_0015).
    hwcr: u64,
}

impl Default for ModelMsrs {
    /// Power-on: every error type enabled for reporting, nothing logged.
    fn default() -> Self {
        ModelMsrs { mcg_status: 0, mcg_ctl: !0, banks: [[!0, 0, 0, 0]; MCE_BANKS], ctl_mask: [0; MCE_BANKS], hwcr: 0 }
    }
}

mod index {
    pub const PLATFORM_ID: u32 = 0x17;
    pub const MCG_CAP: u32 = 0x179;
    pub const MCG_STATUS: u32 = 0x17a;
    pub const MCG_CTL: u32 = 0x17b;
    pub const MC0_CTL: u32 = 0x400;
    pub const AMD_HWCR: u32 = 0xc001_0015;
    pub const AMD_MC0_CTL_MASK: u32 = 0xc001_0044;
    pub const AMD_INT_PENDING_MSG: u32 = 0xc001_0055;
}

/// HWCR.McStatusWrEn: MCi_STATUS takes non-zero writes (AMD's error injection).
const HWCR_MC_STATUS_WR_EN: u64 = 1 << 18;
/// HWCR bits KVM lets a guest set (McStatusWrEn, TscFreqSel); others are ignored.
const HWCR_WRITABLE: u64 = HWCR_MC_STATUS_WR_EN | 1 << 24;

fn bank_reg(index: u32) -> Option<(usize, usize)> {
    let off = index.checked_sub(index::MC0_CTL)? as usize;
    (off < 4 * MCE_BANKS).then_some((off / 4, off % 4))
}

fn ctl_mask_bank(index: u32) -> Option<usize> {
    let off = index.checked_sub(index::AMD_MC0_CTL_MASK)? as usize;
    (off < MCE_BANKS).then_some(off)
}

/// RDMSR of a model-specific register; #GP for what this model does not have.
pub fn read_msr(cpu: &Cpu, index: u32) -> Result<u64> {
    let model = &cpu.model;
    let s = &cpu.model_msrs;
    let mca = model.has(feature::MCA);
    let amd = model.vendor().is_amd();
    Ok(match index {
        // Platform ID 0: the microcode loader's "pf=0x1". AMD CPUs have no such MSR.
        index::PLATFORM_ID if model.vendor().is_intel() => 0,
        index::MCG_CAP if mca => model.mcg_cap(),
        index::MCG_STATUS if mca => s.mcg_status,
        index::MCG_CTL if mca => s.mcg_ctl,
        i if mca && bank_reg(i).is_some() => {
            let (b, r) = bank_reg(i).expect("checked");
            s.banks[b][r]
        }
        i if mca && amd && ctl_mask_bank(i).is_some() => s.ctl_mask[ctl_mask_bank(i).expect("checked")],
        index::AMD_HWCR if amd => s.hwcr,
        // No C1E interrupt message is pending: Linux reads this on K8 (erratum 400).
        index::AMD_INT_PENDING_MSG if amd => 0,
        _ => return Err(Exception::gp0()),
    })
}

/// WRMSR of a model-specific register, with the checks the SDM and KVM make.
pub fn write_msr(cpu: &mut Cpu, index: u32, v: u64) -> Result<()> {
    let mca = cpu.model.has(feature::MCA);
    let amd = cpu.model.vendor().is_amd();
    let s = &mut cpu.model_msrs;
    match index {
        // Only "report nothing" and "report everything".
        index::MCG_CTL if mca && (v == 0 || v == !0) => s.mcg_ctl = v,
        // RIPV, EIPV and MCIP; the rest is reserved.
        index::MCG_STATUS if mca && v & !7 == 0 => s.mcg_status = v,
        i if mca && bank_reg(i).is_some() => {
            let (b, r) = bank_reg(i).expect("checked");
            // Software may only clear a status, unless AMD's HWCR allows injecting one.
            if r == 1 && v != 0 && !(amd && s.hwcr & HWCR_MC_STATUS_WR_EN != 0) {
                return Err(Exception::gp0());
            }
            s.banks[b][r] = v;
        }
        i if mca && amd && ctl_mask_bank(i).is_some() => s.ctl_mask[ctl_mask_bank(i).expect("checked")] = v,
        index::AMD_HWCR if amd => s.hwcr = v & HWCR_WRITABLE,
        index::AMD_INT_PENDING_MSG if amd => {}
        _ => return Err(Exception::gp0()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn model(spec: &str) -> TcgCpuModel {
        TcgCpuModel::new(&CpuModel::parse(spec).unwrap()).unwrap()
    }

    fn vendor_of(m: &TcgCpuModel) -> [u8; 12] {
        let (_, b, c, d) = m.cpuid(0, 0);
        let mut v = [0; 12];
        v[..4].copy_from_slice(&b.to_le_bytes());
        v[4..8].copy_from_slice(&d.to_le_bytes());
        v[8..].copy_from_slice(&c.to_le_bytes());
        v
    }

    fn brand(m: &TcgCpuModel) -> String {
        let mut s = Vec::new();
        for leaf in 0x8000_0002..=0x8000_0004 {
            let (a, b, c, d) = m.cpuid(leaf, 0);
            for r in [a, b, c, d] {
                s.extend_from_slice(&r.to_le_bytes());
            }
        }
        String::from_utf8(s).unwrap().trim_end_matches('\0').to_string()
    }

    #[test]
    fn qemu64_is_qemus_identity_less_what_the_jit_lacks() {
        let m = TcgCpuModel::default();
        assert_eq!(&vendor_of(&m), b"AuthenticAMD");
        let (eax, ebx, ecx, edx) = m.cpuid(1, 0);
        assert_eq!(eax, 0x0006_0fb1, "family 15, model 107, stepping 1");
        assert_eq!(ebx, 0x800);
        assert_eq!(m.cpuid(0, 0).0, 0xd);
        assert_eq!(m.cpuid(0x8000_0000, 0).0, 0x8000_000a);
        assert_eq!(brand(&m), "QEMU Virtual CPU version 2.5+");
        // QEMU's qemu64 leaf 1 EDX is 0x078bfbfd; without DE, SEP and MTRR:
        assert_eq!(edx, 0x078b_e3f9, "{edx:#x}");
        assert_eq!(ecx, 1 << 13 | 1 << 31, "cx16 and hypervisor; no SSE3: {ecx:#x}");
        let (_, _, ecx, edx) = m.cpuid(0x8000_0001, 0);
        assert_eq!(ecx, 1, "lahf_lm; no svm");
        assert_ne!(edx & (1 << 29 | 1 << 20 | 1 << 11), 0);
        assert_eq!(edx & 0x0183_f3ff, 0x0183_e3f9, "AMD's leaf 1 aliases");
        assert!(m.has(feature::MCE) && m.has(feature::MCA) && !m.has(feature::POPCNT));
        assert_eq!(m.cpuid(0x8000_0008, 0).0, 0x3028);
        // Past the last leaf: the highest basic leaf, as QEMU answers.
        assert_eq!(m.cpuid(0x8000_0010, 0), m.cpuid(0xd, 0));
        assert_eq!(m.cpuid(0x4000_0000, 0), (0, 0, 0, 0));
        // Leaf 0xb: one thread of one core, x2APIC ID 0.
        assert_eq!(m.cpuid(0xb, 0), (0, 1, 0x100, 0));
        assert_eq!(m.cpuid(0xb, 1), (0, 1, 0x201, 0));
        assert_eq!(m.cpuid(0xb, 2).1, 0);
    }

    #[test]
    fn topology_leaves_follow_smp() {
        use quern_core::topology::CPUID_1_EDX_HTT;
        // -smp 8,sockets=2,cores=2,threads=2 on qemu64 (AMD): four logical processors
        // a package; threads 1 bit, cores 1 bit, so packages start at APIC ID 4.
        let mut cpu = CpuModel::default();
        cpu.topology = quern_core::Topology { sockets: 2, dies: 1, modules: 1, cores: 2, threads: 2 };
        let m = TcgCpuModel::new(&cpu).unwrap();
        let (_, ebx, _, edx) = m.cpuid(1, 0);
        assert_eq!((ebx >> 16 & 0xff, edx & CPUID_1_EDX_HTT), (4, CPUID_1_EDX_HTT));
        assert_eq!(m.cpuid(0xb, 0), (1, 2, 0x100, 0));
        assert_eq!(m.cpuid(0xb, 1), (2, 4, 0x201, 0));
        assert_eq!(m.cpuid(0x8000_0008, 0).2, 2 << 12 | 3);
        // Leaf 4: two cores a package; L1 and L2 shared by a core's two threads, L3 by
        // the package's four; sub-leaf 4 ends the list.
        let sharing = |sub| (m.cpuid(4, sub).0 >> 26, m.cpuid(4, sub).0 >> 14 & 0xfff, m.cpuid(4, sub).0 & 0x1f);
        assert_eq!([sharing(0), sharing(2), sharing(3)], [(1, 1, 1), (1, 1, 3), (1, 3, 3)]);
        assert_eq!(m.cpuid(4, 4).0 & 0x1f, 0);
        // One CPU: no HTT, no count.
        let one = TcgCpuModel::new(&CpuModel::default()).unwrap();
        assert_eq!((one.cpuid(1, 0).1 >> 16 & 0xff, one.cpuid(1, 0).3 & CPUID_1_EDX_HTT), (0, 0));
        assert_eq!(one.cpuid(0x8000_0008, 0).2, 0);
    }

    #[test]
    fn max_has_everything_the_jit_implements() {
        let m = model("max");
        assert_eq!(*m.features(), supported());
        let (_, _, ecx, _) = m.cpuid(1, 0);
        assert_ne!(ecx & (1 << 23), 0, "popcnt");
        assert_eq!(ecx & 1, 0, "no SSE3: the JIT raises #UD for it");
        let (_, _, ecx, edx) = m.cpuid(0x8000_0001, 0);
        assert_ne!(ecx & (1 << 5), 0, "lzcnt (abm)");
        assert_ne!(edx & (1 << 26), 0, "1 GiB pages");
        assert_ne!(m.cpuid(7, 0).1 & (1 << 23), 0, "clflushopt");
        assert_eq!(brand(&m), "quern TCG CPU");
        let m = model("max,-popcnt,vendor=GenuineIntel,family=6,model=58,stepping=9,model-id=x");
        assert_eq!(m.cpuid(1, 0).0, 0x306a9);
        assert_eq!(m.cpuid(1, 0).2 & (1 << 23), 0);
        assert_eq!(&vendor_of(&m), b"GenuineIntel");
        assert_eq!(brand(&m), "x");
    }

    #[test]
    fn named_models_and_flags() {
        let m = model("kvm64");
        assert_eq!(&vendor_of(&m), b"GenuineIntel");
        assert_eq!(m.cpuid(1, 0).0, 0xf61);
        assert_eq!(brand(&m), "Common KVM processor");
        assert_eq!(m.cpuid(0x8000_0001, 0).3 & 0x0183_f3ff, 0, "no AMD aliases on Intel");
        let m = model("qemu32");
        assert_eq!(m.cpuid(1, 0).0, 0x663);
        assert_eq!(m.cpuid(0, 0).0, 4);
        assert_eq!(m.cpuid(0x8000_0001, 0).3 & (1 << 29), 0, "no long mode");
        assert_eq!(m.cpuid(7, 0), m.cpuid(4, 0), "leaf 7 is past qemu32's level 4");
        let m = model("qemu64,+popcnt,-nx,+abm");
        assert_ne!(m.cpuid(1, 0).2 & (1 << 23), 0);
        assert_eq!(m.cpuid(0x8000_0001, 0).3 & (1 << 20), 0);
        assert_eq!(m.efer_writable() & ctrl::EFER_NXE, 0);
    }

    #[test]
    fn what_the_jit_cannot_do_is_refused() {
        let err = |s: &str| TcgCpuModel::new(&CpuModel::parse(s).unwrap()).unwrap_err();
        assert_eq!(err("host"), "CPU model 'host' requires KVM or HVF");
        assert_eq!(err("host,+avx512f"), "CPU model 'host' requires KVM or HVF");
        assert_eq!(err("qemu64,+avx512f"), "tcg does not support CPU feature 'avx512f' (CPUID.07H:EBX bit 16)");
        assert!(err("max,+sse3").contains("'pni'"));
        assert!(err("qemu64,enforce").contains("enforce"));
        // Taking away what the JIT lacks anyway is fine.
        assert!(!model("qemu64,-avx,-sse3").has(feature::SSE3));
    }

    fn cpu_with(spec: &str) -> Box<Cpu> {
        let mem = Arc::new(quern_core::GuestMemory::flat(1 << 16).unwrap());
        Cpu::with_model(mem, Arc::new(model(spec)))
    }

    #[test]
    fn machine_check_registers_report_no_errors() {
        let mut cpu = cpu_with("qemu64");
        assert_eq!(read_msr(&cpu, 0x179).unwrap(), 0x0100_010a, "MCG_CAP: CTL_P, SER_P, 10 banks");
        assert_eq!(read_msr(&cpu, 0x17a).unwrap(), 0);
        assert_eq!(read_msr(&cpu, 0x17b).unwrap(), !0);
        for bank in 0..10 {
            let base = 0x400 + 4 * bank;
            assert_eq!(read_msr(&cpu, base).unwrap(), !0, "MC{bank}_CTL");
            assert_eq!(read_msr(&cpu, base + 1).unwrap(), 0, "MC{bank}_STATUS");
            assert_eq!(read_msr(&cpu, base + 2).unwrap(), 0);
            assert_eq!(read_msr(&cpu, base + 3).unwrap(), 0);
            write_msr(&mut cpu, base + 1, 0).unwrap();
            assert!(write_msr(&mut cpu, base + 1, 1 << 63).is_err(), "a status can only be cleared");
        }
        assert!(read_msr(&cpu, 0x400 + 40).is_err(), "bank 10 does not exist");
        // Linux's K8 quirk clears one error type in MC4_CTL.
        write_msr(&mut cpu, 0x410, !(1 << 10)).unwrap();
        assert_eq!(read_msr(&cpu, 0x410).unwrap(), !(1 << 10));
        write_msr(&mut cpu, 0x17b, 0).unwrap();
        assert!(write_msr(&mut cpu, 0x17b, 5).is_err());
        assert!(write_msr(&mut cpu, 0x179, 0).is_err(), "MCG_CAP is read-only");
        write_msr(&mut cpu, 0x17a, 0).unwrap();
        assert!(write_msr(&mut cpu, 0x17a, 1 << 8).is_err());
        // AMD: the CTL_MASK range, and HWCR.McStatusWrEn lets a status be written.
        write_msr(&mut cpu, 0xc001_0048, 1 << 10).unwrap();
        assert_eq!(read_msr(&cpu, 0xc001_0048).unwrap(), 1 << 10);
        assert!(read_msr(&cpu, 0xc001_0044 + 10).is_err());
        write_msr(&mut cpu, 0xc001_0015, 1 << 18 | 1 << 6).unwrap();
        assert_eq!(read_msr(&cpu, 0xc001_0015).unwrap(), 1 << 18);
        write_msr(&mut cpu, 0x401, 0x8000_0000_0000_0001).unwrap();
        assert_eq!(read_msr(&cpu, 0x401).unwrap(), 0x8000_0000_0000_0001);
        assert_eq!(read_msr(&cpu, 0xc001_0055).unwrap(), 0);
        assert!(read_msr(&cpu, 0x17).is_err(), "no platform ID on AMD");
    }

    #[test]
    fn vendor_and_feature_decide_which_msrs_exist() {
        let cpu = cpu_with("kvm64");
        assert_eq!(read_msr(&cpu, 0x17).unwrap(), 0, "Intel's platform ID");
        assert!(read_msr(&cpu, 0xc001_0015).is_err(), "no HWCR on Intel");
        assert!(read_msr(&cpu, 0xc001_0044).is_err());
        assert_eq!(read_msr(&cpu, 0x179).unwrap() & 0xff, 10);
        let mut cpu = cpu_with("qemu64,-mca");
        for i in [0x179, 0x17a, 0x17b, 0x400, 0x401, 0xc001_0044] {
            assert!(read_msr(&cpu, i).is_err(), "{i:#x} without MCA");
        }
        assert!(write_msr(&mut cpu, 0x401, 0).is_err());
        assert!(read_msr(&cpu, 0x1234).is_err(), "unknown MSRs #GP");
    }
}
