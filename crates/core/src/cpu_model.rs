//! CPU models for `-cpu`: what a guest's CPUID says, independent of the accelerator.
//!
//! A [`CpuModel`] is parsed from QEMU's syntax `MODEL[,+feat][,-feat][,feat=on|off]
//! [,key=value...]`. Named models (`qemu64`, the default, `kvm64`, `qemu32`, `kvm32`)
//! carry QEMU's vendor, family/model/stepping and feature list; `max` and `host` stand
//! for "everything the accelerator can give". Each accelerator resolves the model
//! against what it supports with [`CpuModel::resolve`]: a named model's features the
//! accelerator lacks are dropped quietly (QEMU's model, less what cannot run), a feature
//! asked for with `+` that it lacks is an error (QEMU only warns; refusing is clearer).

use std::fmt;

/// One 32-bit register of CPUID output that holds feature bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FeatureWord {
    /// Leaf 1 EDX.
    Leaf1Edx,
    /// Leaf 1 ECX.
    Leaf1Ecx,
    /// Leaf 7 sub-leaf 0 EBX.
    Leaf7Ebx,
    /// Leaf 7 sub-leaf 0 ECX.
    Leaf7Ecx,
    /// Leaf 7 sub-leaf 0 EDX.
    Leaf7Edx,
    /// Leaf 7 sub-leaf 1 EAX.
    Leaf7s1Eax,
    /// Leaf 0xd sub-leaf 1 EAX (XSAVE extensions).
    LeafDs1Eax,
    /// Leaf 0x8000_0001 EDX.
    Ext1Edx,
    /// Leaf 0x8000_0001 ECX.
    Ext1Ecx,
    /// Leaf 0x8000_0007 EDX (power management: invariant TSC).
    Ext7Edx,
    /// Leaf 0x8000_0008 EBX.
    Ext8Ebx,
    /// Leaf 0x4000_0001 EAX (KVM's paravirtual features).
    Kvm1Eax,
}

/// A CPUID register, as an index into `(eax, ebx, ecx, edx)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

const WORDS: usize = 12;

impl FeatureWord {
    pub const ALL: [FeatureWord; WORDS] = [
        FeatureWord::Leaf1Edx,
        FeatureWord::Leaf1Ecx,
        FeatureWord::Leaf7Ebx,
        FeatureWord::Leaf7Ecx,
        FeatureWord::Leaf7Edx,
        FeatureWord::Leaf7s1Eax,
        FeatureWord::LeafDs1Eax,
        FeatureWord::Ext1Edx,
        FeatureWord::Ext1Ecx,
        FeatureWord::Ext7Edx,
        FeatureWord::Ext8Ebx,
        FeatureWord::Kvm1Eax,
    ];

    /// Where the word lives: (leaf, sub-leaf, register).
    pub const fn location(self) -> (u32, u32, Reg) {
        match self {
            FeatureWord::Leaf1Edx => (1, 0, Reg::Edx),
            FeatureWord::Leaf1Ecx => (1, 0, Reg::Ecx),
            FeatureWord::Leaf7Ebx => (7, 0, Reg::Ebx),
            FeatureWord::Leaf7Ecx => (7, 0, Reg::Ecx),
            FeatureWord::Leaf7Edx => (7, 0, Reg::Edx),
            FeatureWord::Leaf7s1Eax => (7, 1, Reg::Eax),
            FeatureWord::LeafDs1Eax => (0xd, 1, Reg::Eax),
            FeatureWord::Ext1Edx => (0x8000_0001, 0, Reg::Edx),
            FeatureWord::Ext1Ecx => (0x8000_0001, 0, Reg::Ecx),
            FeatureWord::Ext7Edx => (0x8000_0007, 0, Reg::Edx),
            FeatureWord::Ext8Ebx => (0x8000_0008, 0, Reg::Ebx),
            FeatureWord::Kvm1Eax => (0x4000_0001, 0, Reg::Eax),
        }
    }

    const fn index(self) -> usize {
        self as usize
    }

    /// QEMU's way of naming a bit's place in messages: "CPUID.07H:EBX".
    fn describe(self) -> String {
        let (leaf, sub, reg) = self.location();
        let reg = match reg {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        };
        let sub = if sub != 0 { format!(".{sub:02X}H") } else { String::new() };
        format!("CPUID.{leaf:02X}H{sub}:{reg}")
    }
}

/// One feature bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Feature {
    pub word: FeatureWord,
    pub bit: u8,
}

impl Feature {
    pub const fn new(word: FeatureWord, bit: u8) -> Self {
        Feature { word, bit }
    }

    /// The feature's canonical (QEMU) name, if it has one.
    pub fn name(self) -> Option<&'static str> {
        FEATURES.iter().find(|f| f.feature == self).map(|f| f.names[0])
    }

    /// The feature called `name` (QEMU's names; `_` and `-` are the same, as in QEMU).
    pub fn by_name(name: &str) -> Option<Feature> {
        let name = name.replace('_', "-");
        FEATURES.iter().find(|f| f.names.contains(&name.as_str())).map(|f| f.feature)
    }

    fn describe(self) -> String {
        let name = self.name().unwrap_or("?");
        format!("'{name}' ({} bit {})", self.word.describe(), self.bit)
    }
}

/// Named constants for the features accelerators test for.
pub mod feature {
    use super::{Feature, FeatureWord::*};

    pub const FPU: Feature = Feature::new(Leaf1Edx, 0);
    pub const DE: Feature = Feature::new(Leaf1Edx, 2);
    pub const PSE: Feature = Feature::new(Leaf1Edx, 3);
    pub const TSC: Feature = Feature::new(Leaf1Edx, 4);
    pub const MSR: Feature = Feature::new(Leaf1Edx, 5);
    pub const PAE: Feature = Feature::new(Leaf1Edx, 6);
    pub const MCE: Feature = Feature::new(Leaf1Edx, 7);
    pub const CX8: Feature = Feature::new(Leaf1Edx, 8);
    pub const APIC: Feature = Feature::new(Leaf1Edx, 9);
    pub const SEP: Feature = Feature::new(Leaf1Edx, 11);
    pub const MTRR: Feature = Feature::new(Leaf1Edx, 12);
    pub const PGE: Feature = Feature::new(Leaf1Edx, 13);
    pub const MCA: Feature = Feature::new(Leaf1Edx, 14);
    pub const CMOV: Feature = Feature::new(Leaf1Edx, 15);
    pub const PAT: Feature = Feature::new(Leaf1Edx, 16);
    pub const PSE36: Feature = Feature::new(Leaf1Edx, 17);
    pub const CLFLUSH: Feature = Feature::new(Leaf1Edx, 19);
    pub const MMX: Feature = Feature::new(Leaf1Edx, 23);
    pub const FXSR: Feature = Feature::new(Leaf1Edx, 24);
    pub const SSE: Feature = Feature::new(Leaf1Edx, 25);
    pub const SSE2: Feature = Feature::new(Leaf1Edx, 26);
    pub const SSE3: Feature = Feature::new(Leaf1Ecx, 0);
    pub const SSSE3: Feature = Feature::new(Leaf1Ecx, 9);
    pub const CX16: Feature = Feature::new(Leaf1Ecx, 13);
    pub const X2APIC: Feature = Feature::new(Leaf1Ecx, 21);
    pub const TSC_DEADLINE: Feature = Feature::new(Leaf1Ecx, 24);
    pub const POPCNT: Feature = Feature::new(Leaf1Ecx, 23);
    pub const XSAVE: Feature = Feature::new(Leaf1Ecx, 26);
    pub const AVX: Feature = Feature::new(Leaf1Ecx, 28);
    pub const HYPERVISOR: Feature = Feature::new(Leaf1Ecx, 31);
    pub const CLFLUSHOPT: Feature = Feature::new(Leaf7Ebx, 23);
    pub const AVX512F: Feature = Feature::new(Leaf7Ebx, 16);
    pub const SYSCALL: Feature = Feature::new(Ext1Edx, 11);
    pub const NX: Feature = Feature::new(Ext1Edx, 20);
    pub const FXSR_OPT: Feature = Feature::new(Ext1Edx, 25);
    pub const PDPE1GB: Feature = Feature::new(Ext1Edx, 26);
    pub const RDTSCP: Feature = Feature::new(Ext1Edx, 27);
    pub const LM: Feature = Feature::new(Ext1Edx, 29);
    pub const LAHF_LM: Feature = Feature::new(Ext1Ecx, 0);
    pub const SVM: Feature = Feature::new(Ext1Ecx, 2);
    pub const ABM: Feature = Feature::new(Ext1Ecx, 5);
    pub const PREFETCHW: Feature = Feature::new(Ext1Ecx, 8);
}

/// A set of feature bits, one 32-bit mask per [`FeatureWord`]. Bits without a name
/// are kept as they are (an accelerator's own set may hold them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FeatureSet([u32; WORDS]);

impl FeatureSet {
    pub const fn empty() -> Self {
        FeatureSet([0; WORDS])
    }

    /// The set of the named features.
    ///
    /// # Panics
    /// On a name that is not in the table (for built-in lists; tests check them all).
    pub fn of(names: &[&str]) -> Self {
        let mut s = Self::empty();
        for n in names {
            s.insert(Feature::by_name(n).unwrap_or_else(|| panic!("unknown feature name {n}")));
        }
        s
    }

    pub fn word(&self, w: FeatureWord) -> u32 {
        self.0[w.index()]
    }

    pub fn set_word(&mut self, w: FeatureWord, bits: u32) {
        self.0[w.index()] = bits;
    }

    pub fn contains(&self, f: Feature) -> bool {
        self.word(f.word) & (1 << f.bit) != 0
    }

    pub fn insert(&mut self, f: Feature) {
        self.0[f.word.index()] |= 1 << f.bit;
    }

    pub fn remove(&mut self, f: Feature) {
        self.0[f.word.index()] &= !(1 << f.bit);
    }

    pub fn with(mut self, f: Feature) -> Self {
        self.insert(f);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    pub fn union(&self, o: &Self) -> Self {
        FeatureSet(std::array::from_fn(|i| self.0[i] | o.0[i]))
    }

    pub fn intersection(&self, o: &Self) -> Self {
        FeatureSet(std::array::from_fn(|i| self.0[i] & o.0[i]))
    }

    pub fn difference(&self, o: &Self) -> Self {
        FeatureSet(std::array::from_fn(|i| self.0[i] & !o.0[i]))
    }

    /// Every bit set, as features (named or not).
    pub fn iter(&self) -> impl Iterator<Item = Feature> + '_ {
        FeatureWord::ALL
            .into_iter()
            .flat_map(move |w| (0..32u8).filter(move |b| self.word(w) & (1 << b) != 0).map(move |b| Feature::new(w, b)))
    }

    /// The names of the features in the set (unnamed bits left out), table order.
    pub fn names(&self) -> Vec<&'static str> {
        FEATURES.iter().filter(|f| self.contains(f.feature)).map(|f| f.names[0]).collect()
    }
}

/// The CPU vendor string of leaf 0.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vendor(pub [u8; 12]);

impl Vendor {
    pub const INTEL: Vendor = Vendor(*b"GenuineIntel");
    pub const AMD: Vendor = Vendor(*b"AuthenticAMD");

    pub fn is_amd(&self) -> bool {
        *self == Vendor::AMD || self.0 == *b"HygonGenuine"
    }

    pub fn is_intel(&self) -> bool {
        *self == Vendor::INTEL
    }

    /// Leaf 0's (EBX, EDX, ECX) order: "Genu" "ineI" "ntel".
    pub fn words(&self) -> (u32, u32, u32) {
        let w = |i: usize| u32::from_le_bytes([self.0[i], self.0[i + 1], self.0[i + 2], self.0[i + 3]]);
        (w(0), w(4), w(8))
    }
}

impl fmt::Debug for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// What a model stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A fixed definition (QEMU's), less what the accelerator cannot give.
    Named,
    /// Everything the accelerator can give.
    Max,
    /// The host CPU as KVM passes it through (KVM only).
    Host,
}

/// A built-in model.
#[derive(Debug, PartialEq, Eq)]
pub struct ModelDef {
    pub name: &'static str,
    pub description: &'static str,
    pub kind: ModelKind,
    pub vendor: Vendor,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
    /// Highest basic leaf.
    pub level: u32,
    /// Highest extended leaf.
    pub xlevel: u32,
    /// Brand string (leaves 0x8000_0002..4).
    pub model_id: &'static str,
    features: &'static [&'static str],
}

impl ModelDef {
    pub fn features(&self) -> FeatureSet {
        FeatureSet::of(self.features)
    }
}

// QEMU's PPRO_FEATURES, the base of its generic models.
macro_rules! ppro {
    ($($more:literal),* $(,)?) => {
        &["fpu", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "pge", "cmov", "pat", "fxsr",
          "mmx", "sse", "sse2", "hypervisor", $($more),*]
    };
}

/// The models `-cpu` knows, the default first. Identities and feature lists are QEMU
/// 7.2's (`query-cpu-model-expansion`); QEMU sets `hypervisor` on every model.
pub static MODELS: &[ModelDef] = &[
    ModelDef {
        name: "qemu64",
        description: "QEMU Virtual CPU version 2.5+ (the default)",
        kind: ModelKind::Named,
        vendor: Vendor::AMD,
        family: 15,
        model: 107,
        stepping: 1,
        level: 0xd,
        xlevel: 0x8000_000a,
        model_id: "QEMU Virtual CPU version 2.5+",
        features: ppro!["mtrr", "clflush", "mca", "pse36", "pni", "cx16", "lm", "syscall", "nx", "lahf-lm", "svm"],
    },
    ModelDef {
        name: "kvm64",
        description: "Common KVM processor",
        kind: ModelKind::Named,
        vendor: Vendor::INTEL,
        family: 15,
        model: 6,
        stepping: 1,
        level: 0xd,
        xlevel: 0x8000_0008,
        model_id: "Common KVM processor",
        features: ppro!["mtrr", "clflush", "mca", "pse36", "pni", "cx16", "lm", "syscall", "nx"],
    },
    ModelDef {
        name: "qemu32",
        description: "QEMU Virtual CPU version 2.5+ (32-bit)",
        kind: ModelKind::Named,
        vendor: Vendor::INTEL,
        family: 6,
        model: 6,
        stepping: 3,
        level: 4,
        xlevel: 0x8000_0004,
        model_id: "QEMU Virtual CPU version 2.5+",
        features: ppro!["pni"],
    },
    ModelDef {
        name: "kvm32",
        description: "Common 32-bit KVM processor",
        kind: ModelKind::Named,
        vendor: Vendor::INTEL,
        family: 15,
        model: 6,
        stepping: 1,
        level: 5,
        xlevel: 0x8000_0008,
        model_id: "Common 32-bit KVM processor",
        features: ppro!["mtrr", "clflush", "mca", "pse36", "pni"],
    },
    ModelDef {
        name: "max",
        description: "Enables all features supported by the accelerator",
        kind: ModelKind::Max,
        // Under tcg, QEMU's max keeps qemu64's identity; under KVM it is the host's.
        vendor: Vendor::AMD,
        family: 15,
        model: 107,
        stepping: 1,
        level: 0xd,
        xlevel: 0x8000_000a,
        model_id: "quern TCG CPU",
        features: &[],
    },
    ModelDef {
        name: "host",
        description: "KVM processor with all supported host features",
        kind: ModelKind::Host,
        vendor: Vendor::INTEL,
        family: 0,
        model: 0,
        stepping: 0,
        level: 0,
        xlevel: 0,
        model_id: "",
        features: &[],
    },
];

/// Values given with `key=value` that change the model's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub vendor: Option<Vendor>,
    pub family: Option<u32>,
    pub model: Option<u32>,
    pub stepping: Option<u32>,
    pub level: Option<u32>,
    pub xlevel: Option<u32>,
    pub model_id: Option<String>,
    /// Physical address bits (leaf 0x8000_0008 EAX[7:0]).
    pub phys_bits: Option<u32>,
}

/// A parsed `-cpu` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuModel {
    /// The text it was parsed from, for messages.
    spec: String,
    def: &'static ModelDef,
    /// Features asked for with `+feat` or `feat=on`.
    pub plus: FeatureSet,
    /// Features taken away with `-feat` or `feat=off` (these win over `plus`, as in QEMU).
    pub minus: FeatureSet,
    pub overrides: Overrides,
    /// `enforce`: fail instead of dropping a model feature the accelerator lacks.
    pub enforce: bool,
    /// `kvm=off`: hide KVM's paravirtual signature leaves.
    pub hide_kvm: bool,
    /// The CPUs' arrangement (`-smp`), which CPUID's topology fields report.
    pub topology: crate::Topology,
}

impl Default for CpuModel {
    /// QEMU's default, `qemu64`.
    fn default() -> Self {
        CpuModel::from_def(&MODELS[0])
    }
}

fn parse_num(key: &str, v: &str, max: u64) -> Result<u32, String> {
    let n = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    match n {
        Ok(n) if n <= max => Ok(n as u32),
        _ => Err(format!("invalid CPU property {key}={v} (a number from 0 to {max:#x})")),
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("invalid CPU property {key}={v} (on or off)")),
    }
}

impl CpuModel {
    fn from_def(def: &'static ModelDef) -> Self {
        CpuModel {
            spec: def.name.to_string(),
            def,
            plus: FeatureSet::empty(),
            minus: FeatureSet::empty(),
            overrides: Overrides::default(),
            enforce: false,
            hide_kvm: false,
            topology: crate::Topology::default(),
        }
    }

    /// The `host` model, unchanged.
    pub fn host() -> Self {
        Self::parse("host").expect("built-in model")
    }

    /// The `max` model, unchanged.
    pub fn max() -> Self {
        Self::parse("max").expect("built-in model")
    }

    /// Parses QEMU's `-cpu` syntax. `help` is not a model: callers print
    /// [`help_text`] for it.
    pub fn parse(spec: &str) -> Result<CpuModel, String> {
        let mut parts = spec.split(',');
        let name = parts.next().unwrap_or("");
        if name.is_empty() {
            return Err("no CPU model given (try -cpu help)".into());
        }
        // QEMU lists each named model also as its first version, "qemu64-v1".
        let def = MODELS
            .iter()
            .find(|d| d.name == name || (d.kind == ModelKind::Named && name.strip_suffix("-v1") == Some(d.name)))
            .ok_or_else(|| format!("unknown CPU model '{name}' (try -cpu help)"))?;
        let mut m = CpuModel::from_def(def);
        m.spec = spec.to_string();
        // QEMU applies +feat/-feat after all key=value settings, and - wins over +.
        let (mut plus, mut minus) = (FeatureSet::empty(), FeatureSet::empty());
        for item in parts {
            if item.is_empty() {
                continue;
            }
            if let Some(f) = item.strip_prefix('+') {
                plus.insert(Self::feature(f)?);
                continue;
            }
            if let Some(f) = item.strip_prefix('-') {
                minus.insert(Self::feature(f)?);
                continue;
            }
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            m.set(key, value)?;
        }
        for f in plus.iter() {
            m.plus.insert(f);
            m.minus.remove(f);
        }
        for f in minus.iter() {
            m.minus.insert(f);
            m.plus.remove(f);
        }
        Ok(m)
    }

    fn feature(name: &str) -> Result<Feature, String> {
        Feature::by_name(name).ok_or_else(|| format!("unknown CPU feature '{name}'"))
    }

    /// One `key=value` (or bare `feat`, meaning `feat=on`, as QEMU reads it).
    fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), String> {
        let o = &mut self.overrides;
        let need = |_: Option<&str>| value.ok_or_else(|| format!("CPU property '{key}' needs a value ({key}=...)"));
        match key.replace('_', "-").as_str() {
            "vendor" => {
                let v = need(value)?;
                let bytes: [u8; 12] =
                    v.as_bytes().try_into().map_err(|_| format!("vendor={v}: a vendor is 12 characters"))?;
                o.vendor = Some(Vendor(bytes));
            }
            "family" => o.family = Some(parse_num(key, need(value)?, 0xff + 0xf)?),
            "model" => o.model = Some(parse_num(key, need(value)?, 0xff)?),
            "stepping" => o.stepping = Some(parse_num(key, need(value)?, 0xf)?),
            "level" | "min-level" => o.level = Some(parse_num(key, need(value)?, 0xffff_ffff)?),
            "xlevel" | "min-xlevel" => {
                let v = parse_num(key, need(value)?, 0xffff_ffff)?;
                // QEMU takes a level below 0x80000000 as an offset from it.
                o.xlevel = Some(if v < 0x8000_0000 { v + 0x8000_0000 } else { v });
            }
            "model-id" => {
                let v = need(value)?;
                if v.len() > 48 {
                    return Err(format!("model-id={v}: at most 48 characters"));
                }
                o.model_id = Some(v.to_string());
            }
            "phys-bits" => {
                let v = need(value)?;
                let n = parse_num(key, v, 52)?;
                if n < 32 {
                    return Err(format!("invalid CPU property phys-bits={v} (32 to 52)"));
                }
                o.phys_bits = Some(n);
            }
            "enforce" => self.enforce = parse_bool(key, value.unwrap_or("on"))?,
            "kvm" => self.hide_kvm = !parse_bool(key, value.unwrap_or("on"))?,
            // Settings that change nothing a guest of quern can see.
            "check" | "migratable" | "l3-cache" | "legacy-cache" | "x-vendor-cpuid-only" | "full-cpuid-auto-level" => {
                parse_bool(key, value.unwrap_or("on"))?;
            }
            "pmu" => {
                if parse_bool(key, value.unwrap_or("on"))? {
                    return Err("pmu=on: a virtual PMU is not supported yet".into());
                }
            }
            k if k.starts_with("hv-") || k == "hv" => {
                return Err(format!("CPU property '{key}': Hyper-V enlightenments are not supported yet"));
            }
            _ => {
                let Some(f) = Feature::by_name(key) else {
                    return Err(match value {
                        Some(_) => format!("unknown CPU property '{key}'"),
                        None => format!("unknown CPU feature '{key}'"),
                    });
                };
                if parse_bool(key, value.unwrap_or("on"))? {
                    self.plus.insert(f);
                    self.minus.remove(f);
                } else {
                    self.minus.insert(f);
                    self.plus.remove(f);
                }
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        self.def.name
    }

    /// The `-cpu` text the model was parsed from.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    pub fn kind(&self) -> ModelKind {
        self.def.kind
    }

    /// The built-in definition the model started from.
    pub fn definition(&self) -> &'static ModelDef {
        self.def
    }

    /// The model's features before the accelerator has its say (empty for max/host).
    pub fn base_features(&self) -> FeatureSet {
        self.def.features()
    }

    pub fn vendor(&self) -> Vendor {
        self.overrides.vendor.unwrap_or(self.def.vendor)
    }

    pub fn family(&self) -> u32 {
        self.overrides.family.unwrap_or(self.def.family)
    }

    pub fn model(&self) -> u32 {
        self.overrides.model.unwrap_or(self.def.model)
    }

    pub fn stepping(&self) -> u32 {
        self.overrides.stepping.unwrap_or(self.def.stepping)
    }

    pub fn level(&self) -> u32 {
        self.overrides.level.unwrap_or(self.def.level)
    }

    pub fn xlevel(&self) -> u32 {
        self.overrides.xlevel.unwrap_or(self.def.xlevel)
    }

    pub fn model_id(&self) -> &str {
        self.overrides.model_id.as_deref().unwrap_or(self.def.model_id)
    }

    /// Leaf 1 EAX: stepping, model, family with their extended fields, encoded as the
    /// SDM says (extended family only above 15, extended model for families 6 and 15).
    pub fn signature(&self) -> u32 {
        signature(self.family(), self.model(), self.stepping())
    }

    /// The features the guest gets, given what the accelerator `accel` can give
    /// (`supported`). Named models keep their features that are supported; max and host
    /// take everything supported. Features asked for with `+` must be supported.
    pub fn resolve(&self, accel: &str, supported: &FeatureSet) -> Result<FeatureSet, String> {
        let base = match self.def.kind {
            ModelKind::Named => {
                let want = self.def.features().difference(&self.minus);
                let missing = want.difference(supported);
                if self.enforce {
                    if let Some(f) = missing.iter().next() {
                        return Err(format!(
                            "{accel} does not support feature {} of CPU model '{}' (enforce)",
                            f.describe(),
                            self.def.name
                        ));
                    }
                }
                want.intersection(supported)
            }
            ModelKind::Max | ModelKind::Host => *supported,
        };
        if let Some(f) = self.plus.difference(supported).iter().next() {
            return Err(format!("{accel} does not support CPU feature {}", f.describe()));
        }
        Ok(base.union(&self.plus).difference(&self.minus))
    }
}

/// Leaf 1 EAX for a family, model and stepping.
pub fn signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (fam, ext_fam) = if family > 0xf { (0xf, family - 0xf) } else { (family, 0) };
    (ext_fam << 20) | ((model >> 4) << 16) | (fam << 8) | ((model & 0xf) << 4) | (stepping & 0xf)
}

/// The text `-cpu help` prints, in QEMU's layout.
pub fn help_text() -> String {
    let mut s = String::from("Available CPUs:\n");
    for d in MODELS {
        s += &format!("x86 {:<16} {}\n", d.name, d.description);
    }
    s += "\nRecognized CPUID flags:\n";
    let mut names: Vec<&str> = FEATURES.iter().map(|f| f.names[0]).collect();
    names.sort_unstable();
    let mut line = String::from(" ");
    for n in names {
        if line.len() + n.len() + 1 > 76 {
            s += &line;
            s.push('\n');
            line = String::from(" ");
        }
        line.push(' ');
        line += n;
    }
    s += &line;
    s.push('\n');
    s
}

/// A feature's names: the canonical QEMU name first, then aliases.
struct FeatureInfo {
    names: &'static [&'static str],
    feature: Feature,
}

macro_rules! features {
    ($($word:ident : [$($bit:literal => [$($name:literal),+]),* $(,)?]),* $(,)?) => {
        &[$($(FeatureInfo { names: &[$($name),+], feature: Feature::new(FeatureWord::$word, $bit) }),*),*]
    };
}

/// QEMU's feature names, by where they live.
static FEATURES: &[FeatureInfo] = features![
    Leaf1Edx: [
        0 => ["fpu"], 1 => ["vme"], 2 => ["de"], 3 => ["pse"], 4 => ["tsc"], 5 => ["msr"], 6 => ["pae"],
        7 => ["mce"], 8 => ["cx8"], 9 => ["apic"], 11 => ["sep"], 12 => ["mtrr"], 13 => ["pge"], 14 => ["mca"],
        15 => ["cmov"], 16 => ["pat"], 17 => ["pse36"], 18 => ["pn"], 19 => ["clflush"], 21 => ["ds"],
        22 => ["acpi"], 23 => ["mmx"], 24 => ["fxsr"], 25 => ["sse"], 26 => ["sse2"], 27 => ["ss"], 28 => ["ht"],
        29 => ["tm"], 30 => ["ia64"], 31 => ["pbe"],
    ],
    Leaf1Ecx: [
        0 => ["pni", "sse3"], 1 => ["pclmulqdq", "pclmuldq"], 2 => ["dtes64"], 3 => ["monitor"],
        4 => ["ds-cpl"], 5 => ["vmx"], 6 => ["smx"], 7 => ["est"], 8 => ["tm2"], 9 => ["ssse3"], 10 => ["cid"],
        12 => ["fma"], 13 => ["cx16"], 14 => ["xtpr"], 15 => ["pdcm"], 17 => ["pcid"], 18 => ["dca"],
        19 => ["sse4.1", "sse4-1"], 20 => ["sse4.2", "sse4-2"], 21 => ["x2apic"], 22 => ["movbe"],
        23 => ["popcnt"], 24 => ["tsc-deadline"], 25 => ["aes"], 26 => ["xsave"], 28 => ["avx"], 29 => ["f16c"],
        30 => ["rdrand"], 31 => ["hypervisor"],
    ],
    Leaf7Ebx: [
        0 => ["fsgsbase"], 1 => ["tsc-adjust"], 2 => ["sgx"], 3 => ["bmi1"], 4 => ["hle"], 5 => ["avx2"],
        7 => ["smep"], 8 => ["bmi2"], 9 => ["erms"], 10 => ["invpcid"], 11 => ["rtm"], 14 => ["mpx"],
        16 => ["avx512f"], 17 => ["avx512dq"], 18 => ["rdseed"], 19 => ["adx"], 20 => ["smap"],
        21 => ["avx512ifma"], 22 => ["pcommit"], 23 => ["clflushopt"], 24 => ["clwb"], 25 => ["intel-pt"],
        26 => ["avx512pf"], 27 => ["avx512er"], 28 => ["avx512cd"], 29 => ["sha-ni"], 30 => ["avx512bw"],
        31 => ["avx512vl"],
    ],
    Leaf7Ecx: [
        1 => ["avx512vbmi"], 2 => ["umip"], 3 => ["pku"], 5 => ["waitpkg"], 6 => ["avx512vbmi2"], 8 => ["gfni"],
        9 => ["vaes"], 10 => ["vpclmulqdq"], 11 => ["avx512vnni"], 12 => ["avx512bitalg"],
        14 => ["avx512-vpopcntdq"], 16 => ["la57"], 22 => ["rdpid"], 24 => ["bus-lock-detect"],
        25 => ["cldemote"], 27 => ["movdiri"], 28 => ["movdir64b"], 30 => ["sgxlc"], 31 => ["pks"],
    ],
    Leaf7Edx: [
        2 => ["avx512-4vnniw"], 3 => ["avx512-4fmaps"], 4 => ["fsrm"], 8 => ["avx512-vp2intersect"],
        10 => ["md-clear"], 14 => ["serialize"], 16 => ["tsx-ldtrk"], 19 => ["arch-lbr"], 22 => ["amx-bf16"],
        23 => ["avx512-fp16"], 24 => ["amx-tile"], 25 => ["amx-int8"], 26 => ["spec-ctrl"], 27 => ["stibp"],
        29 => ["arch-capabilities"], 30 => ["core-capability"], 31 => ["ssbd"],
    ],
    Leaf7s1Eax: [4 => ["avx-vnni"], 5 => ["avx512-bf16"]],
    LeafDs1Eax: [0 => ["xsaveopt"], 1 => ["xsavec"], 2 => ["xgetbv1"], 3 => ["xsaves"]],
    Ext1Edx: [
        11 => ["syscall"], 20 => ["nx", "xd"], 22 => ["mmxext"], 25 => ["fxsr-opt", "ffxsr"], 26 => ["pdpe1gb"],
        27 => ["rdtscp"], 29 => ["lm", "i64"], 30 => ["3dnowext"], 31 => ["3dnow"],
    ],
    Ext1Ecx: [
        0 => ["lahf-lm"], 1 => ["cmp-legacy"], 2 => ["svm"], 3 => ["extapic"], 4 => ["cr8legacy"], 5 => ["abm"],
        6 => ["sse4a"], 7 => ["misalignsse"], 8 => ["3dnowprefetch"], 9 => ["osvw"], 10 => ["ibs"],
        11 => ["xop"], 12 => ["skinit"], 13 => ["wdt"], 15 => ["lwp"], 16 => ["fma4"], 17 => ["tce"],
        19 => ["nodeid-msr"], 21 => ["tbm"], 22 => ["topoext"], 23 => ["perfctr-core"], 24 => ["perfctr-nb"],
    ],
    Ext7Edx: [8 => ["invtsc"]],
    Ext8Ebx: [
        0 => ["clzero"], 2 => ["xsaveerptr"], 9 => ["wbnoinvd"], 12 => ["ibpb"], 14 => ["ibrs"],
        15 => ["amd-stibp"], 24 => ["amd-ssbd"], 25 => ["virt-ssbd"], 26 => ["amd-no-ssb"],
    ],
    Kvm1Eax: [
        0 => ["kvmclock"], 1 => ["kvm-nopiodelay"], 2 => ["kvm-mmu"], 4 => ["kvm-asyncpf"],
        5 => ["kvm-steal-time"], 6 => ["kvm-pv-eoi"], 7 => ["kvm-pv-unhalt"], 9 => ["kvm-pv-tlb-flush"],
        11 => ["kvm-pv-ipi"], 12 => ["kvm-poll-control"], 13 => ["kvm-pv-sched-yield"], 14 => ["kvm-asyncpf-int"],
        15 => ["kvm-msi-ext-dest-id"], 24 => ["kvmclock-stable-bit"],
    ],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_name_is_known_and_unique() {
        for d in MODELS {
            let _ = d.features();
        }
        let mut seen = std::collections::HashSet::new();
        for f in FEATURES {
            for n in f.names {
                assert!(seen.insert(*n), "{n} twice");
                assert!(!n.contains('_'), "{n}: table names use '-'");
            }
        }
        let mut bits = std::collections::HashSet::new();
        for f in FEATURES {
            assert!(bits.insert(f.feature), "{:?} twice", f.feature);
        }
    }

    #[test]
    fn the_default_is_qemu64_as_qemu_has_it() {
        let m = CpuModel::parse("qemu64").unwrap();
        assert_eq!(m, CpuModel::default());
        assert_eq!(m.vendor(), Vendor::AMD);
        assert_eq!((m.family(), m.model(), m.stepping()), (15, 107, 1));
        assert_eq!(m.signature(), 0x0006_0fb1);
        assert_eq!((m.level(), m.xlevel()), (0xd, 0x8000_000a));
        assert_eq!(m.model_id(), "QEMU Virtual CPU version 2.5+");
        let mut names = m.base_features().names();
        names.sort_unstable();
        let mut qemu = vec![
            "apic",
            "clflush",
            "cmov",
            "cx16",
            "cx8",
            "de",
            "fpu",
            "fxsr",
            "hypervisor",
            "lahf-lm",
            "lm",
            "mca",
            "mce",
            "mmx",
            "msr",
            "mtrr",
            "nx",
            "pae",
            "pat",
            "pge",
            "pni",
            "pse",
            "pse36",
            "sep",
            "sse",
            "sse2",
            "svm",
            "syscall",
            "tsc",
        ];
        qemu.sort_unstable();
        assert_eq!(names, qemu);
    }

    #[test]
    fn flags_and_properties_parse() {
        let m = CpuModel::parse("qemu64,+avx,-sse2,popcnt=on,cx16=off,sse4_1,family=6,model=0x3a,stepping=9").unwrap();
        assert!(m.plus.contains(feature::AVX) && m.plus.contains(feature::POPCNT));
        assert!(m.plus.contains(Feature::by_name("sse4.1").unwrap()));
        assert!(m.minus.contains(feature::SSE2) && m.minus.contains(feature::CX16));
        assert_eq!(m.signature(), 0x0003_06a9);
        let m = CpuModel::parse("max,vendor=GenuineIntel,model-id=My CPU,level=7,xlevel=8,phys-bits=39").unwrap();
        assert_eq!(m.vendor(), Vendor::INTEL);
        assert_eq!(m.model_id(), "My CPU");
        assert_eq!((m.level(), m.xlevel()), (7, 0x8000_0008));
        assert_eq!(m.overrides.phys_bits, Some(39));
        // QEMU's spellings: pni and sse3, xd and nx, lahf_lm and lahf-lm, versioned names.
        let m = CpuModel::parse("qemu64-v1,-sse3,+xd,-lahf_lm,,check,enforce,kvm=off").unwrap();
        assert!(m.minus.contains(feature::SSE3) && m.plus.contains(feature::NX) && m.minus.contains(feature::LAHF_LM));
        assert!(m.enforce && m.hide_kvm);
        // "-" wins over "+" whatever the order.
        let m = CpuModel::parse("host,-avx,+avx").unwrap();
        assert!(m.minus.contains(feature::AVX) && !m.plus.contains(feature::AVX));
        assert_eq!(CpuModel::parse("kvm64").unwrap().vendor(), Vendor::INTEL);
        assert_eq!(CpuModel::parse("host").unwrap().kind(), ModelKind::Host);
    }

    #[test]
    fn bad_specs_name_the_bad_part() {
        let err = |s: &str| CpuModel::parse(s).unwrap_err();
        assert_eq!(err("nosuchcpu"), "unknown CPU model 'nosuchcpu' (try -cpu help)");
        assert_eq!(err(""), "no CPU model given (try -cpu help)");
        assert_eq!(err(",+avx"), "no CPU model given (try -cpu help)");
        assert_eq!(err("qemu64,+foo"), "unknown CPU feature 'foo'");
        assert_eq!(err("qemu64,-foo"), "unknown CPU feature 'foo'");
        assert_eq!(err("qemu64,foo"), "unknown CPU feature 'foo'");
        assert_eq!(err("qemu64,foo=1"), "unknown CPU property 'foo'");
        assert_eq!(err("qemu64,avx=maybe"), "invalid CPU property avx=maybe (on or off)");
        assert!(err("qemu64,family=999").contains("family=999"));
        assert!(err("qemu64,stepping=x").contains("stepping=x"));
        assert!(err("qemu64,vendor=AMD").contains("12 characters"));
        assert!(err("qemu64,family").contains("needs a value"));
        assert!(err("qemu64,phys-bits=20").contains("phys-bits=20"));
        assert!(err("qemu64,hv-relaxed").contains("not supported yet"));
        assert!(err("qemu64,pmu=on").contains("not supported yet"));
        assert!(CpuModel::parse("Qemu64").is_err(), "model names are case-sensitive, as in QEMU");
    }

    #[test]
    fn resolve_filters_named_models_and_refuses_unsupported_requests() {
        let supported = FeatureSet::of(&["fpu", "sse", "sse2", "cx16", "lm", "hypervisor", "popcnt"]);
        let m = CpuModel::parse("qemu64,-cx16").unwrap();
        let f = m.resolve("tcg", &supported).unwrap();
        assert_eq!(f, FeatureSet::of(&["fpu", "sse", "sse2", "lm", "hypervisor"]));
        let f = CpuModel::parse("qemu64,+popcnt").unwrap().resolve("tcg", &supported).unwrap();
        assert!(f.contains(feature::POPCNT));
        let e = CpuModel::parse("qemu64,+avx512f").unwrap().resolve("tcg", &supported).unwrap_err();
        assert_eq!(e, "tcg does not support CPU feature 'avx512f' (CPUID.07H:EBX bit 16)");
        let e = CpuModel::parse("qemu64,enforce").unwrap().resolve("tcg", &supported).unwrap_err();
        assert!(e.contains("of CPU model 'qemu64' (enforce)"), "{e}");
        let f = CpuModel::parse("max,-popcnt").unwrap().resolve("tcg", &supported).unwrap();
        assert_eq!(f, supported.difference(&FeatureSet::of(&["popcnt"])));
        // Unnamed bits an accelerator supports survive max.
        let mut raw = supported;
        raw.set_word(FeatureWord::Leaf7Edx, raw.word(FeatureWord::Leaf7Edx) | 1 << 1);
        assert_eq!(CpuModel::max().resolve("kvm", &raw).unwrap(), raw);
    }

    #[test]
    fn signatures_encode_extended_fields() {
        assert_eq!(signature(6, 6, 3), 0x663);
        assert_eq!(signature(15, 6, 1), 0xf61);
        assert_eq!(signature(0x17, 0x31, 0), 0x0083_0f10);
    }

    #[test]
    fn help_lists_models_and_flags() {
        let h = help_text();
        assert!(h.starts_with("Available CPUs:\n"));
        for m in ["qemu64", "kvm64", "qemu32", "kvm32", "max", "host"] {
            assert!(h.lines().any(|l| l.starts_with(&format!("x86 {m} "))), "{m} in\n{h}");
        }
        assert!(h.contains("Recognized CPUID flags:"));
        let words: Vec<&str> = h.split_whitespace().collect();
        assert!(words.contains(&"avx512f") && words.contains(&"pni") && words.contains(&"3dnowprefetch"));
        assert!(h.lines().all(|l| l.len() <= 80));
    }
}
