//! The CPU topology `-smp` describes, and the x86 APIC IDs and CPUID fields that follow
//! from it.
//!
//! An APIC ID packs the CPU's place as bit fields, from the lowest: thread in its core,
//! core in its module, module (QEMU's `clusters`) in its die, die in its package, then
//! the package (socket). Each field is as wide as its count needs, rounded up to a
//! power of two, as on real hardware and in QEMU, so the IDs of a topology whose counts
//! are not powers of two have gaps (three cores take IDs 0, 1, 2 and the next package
//! starts at 4). CPUID's extended-topology leaves report the field offsets.

/// CPUID.1:EDX.HTT ("ht"): EBX[23:16] counts the package's logical processors.
pub const CPUID_1_EDX_HTT: u32 = 1 << 28;

/// Counts at each level, each at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub sockets: u32,
    pub dies: u32,
    pub modules: u32,
    pub cores: u32,
    pub threads: u32,
}

impl Default for Topology {
    /// One CPU.
    fn default() -> Self {
        Topology { sockets: 1, dies: 1, modules: 1, cores: 1, threads: 1 }
    }
}

/// Bits a field counting `n` things takes (⌈log2 n⌉).
fn bits(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

impl Topology {
    /// Every CPU the topology has room for (`maxcpus`).
    pub fn max_cpus(&self) -> u32 {
        self.sockets * self.per_package()
    }

    /// Logical processors in one package.
    pub fn per_package(&self) -> u32 {
        self.dies * self.modules * self.cores * self.threads
    }

    /// Where the core field starts in an APIC ID (the thread field's width).
    pub fn core_offset(&self) -> u32 {
        bits(self.threads)
    }

    /// Where the module field starts.
    pub fn module_offset(&self) -> u32 {
        self.core_offset() + bits(self.cores)
    }

    /// Where the die field starts.
    pub fn die_offset(&self) -> u32 {
        self.module_offset() + bits(self.modules)
    }

    /// Where the package field starts.
    pub fn package_offset(&self) -> u32 {
        self.die_offset() + bits(self.dies)
    }

    /// The APIC ID of CPU number `index` (0 is the bootstrap processor), numbering
    /// threads first, then cores, modules, dies and packages.
    pub fn apic_id(&self, index: u32) -> u32 {
        let t = index % self.threads;
        let c = index / self.threads % self.cores;
        let m = index / (self.threads * self.cores) % self.modules;
        let d = index / (self.threads * self.cores * self.modules) % self.dies;
        let s = index / self.per_package();
        s << self.package_offset() | d << self.die_offset() | m << self.module_offset() | c << self.core_offset() | t
    }

    /// CPUID.1:EBX[23:16], the package's logical processors (0 for one), and the EDX
    /// bits to set with it: HTT (that field is valid) when there are several.
    pub fn cpuid_1_count(&self) -> (u32, u32) {
        let n = self.per_package().min(255);
        if n > 1 {
            (n << 16, CPUID_1_EDX_HTT)
        } else {
            (0, 0)
        }
    }

    /// CPUID.0BH's EAX, EBX and ECX for sub-leaf `sub` (EDX is the CPU's own x2APIC
    /// ID): level 0 is SMT (the core field's offset, threads per core), 1 the core
    /// level (the package field's offset, logical processors per package); from 2 on,
    /// zeros end the enumeration.
    pub fn cpuid_0b(&self, sub: u32) -> [u32; 3] {
        match sub {
            0 => [self.core_offset(), self.threads, 1 << 8],
            1 => [self.package_offset(), self.per_package(), 2 << 8 | 1],
            _ => [0, 0, sub & 0xff],
        }
    }

    /// CPUID.4's EAX bits 31:14 for a cache at `level` (1 to 3): the package's cores
    /// less one (31:26) and the logical processors sharing the cache less one (25:14): a
    /// core's threads for L1 and L2, the package's for L3.
    pub fn cpuid_4_sharing(&self, level: u32) -> u32 {
        let sharing = if level >= 3 { self.per_package() } else { self.threads };
        let cores = self.per_package() / self.threads;
        (cores.clamp(1, 64) - 1) << 26 | (sharing.clamp(1, 4096) - 1) << 14
    }

    /// AMD's CPUID.80000008H:ECX: the APIC ID's core-field width (bits 15:12) and the
    /// package's logical processors less one (bits 7:0).
    pub fn cpuid_amd_80000008_ecx(&self) -> u32 {
        self.package_offset() << 12 | (self.per_package().min(256) - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(sockets: u32, dies: u32, modules: u32, cores: u32, threads: u32) -> Topology {
        Topology { sockets, dies, modules, cores, threads }
    }

    #[test]
    fn one_cpu_is_apic_id_zero_with_empty_fields() {
        let t = Topology::default();
        assert_eq!((t.max_cpus(), t.apic_id(0), t.package_offset()), (1, 0, 0));
    }

    #[test]
    fn fields_are_rounded_up_to_powers_of_two() {
        // Two sockets of three cores of two threads: thread 1 bit, core 2 bits.
        let t = topo(2, 1, 1, 3, 2);
        assert_eq!(t.max_cpus(), 12);
        assert_eq!((t.core_offset(), t.package_offset()), (1, 3));
        let ids: Vec<u32> = (0..12).map(|i| t.apic_id(i)).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]);
    }

    #[test]
    fn dies_and_modules_have_fields_of_their_own() {
        // 1 socket, 2 dies, 2 modules, 1 core, 1 thread: module bit 0, die bit 1.
        let t = topo(1, 2, 2, 1, 1);
        assert_eq!((t.module_offset(), t.die_offset(), t.package_offset()), (0, 1, 2));
        assert_eq!((0..4).map(|i| t.apic_id(i)).collect::<Vec<_>>(), [0, 1, 2, 3]);
        // Three modules need two bits: the second die starts at 4.
        let t = topo(1, 2, 3, 1, 1);
        assert_eq!((0..6).map(|i| t.apic_id(i)).collect::<Vec<_>>(), [0, 1, 2, 4, 5, 6]);
    }

    #[test]
    fn ids_are_distinct_and_below_the_package_span() {
        for t in [topo(4, 1, 1, 6, 2), topo(2, 2, 1, 5, 1), topo(64, 1, 1, 1, 1), topo(1, 1, 1, 7, 3)] {
            let ids: std::collections::BTreeSet<u32> = (0..t.max_cpus()).map(|i| t.apic_id(i)).collect();
            assert_eq!(ids.len() as u32, t.max_cpus(), "{t:?}");
            assert!(*ids.last().unwrap() < t.sockets << t.package_offset(), "{t:?}");
        }
    }
}
