//! Conversions between quern's neutral register types and KVM's structs.
//!
//! Both sides are foreign to this crate, so the KVM struct travels in a local wrapper,
//! [`KvmRepr`], which makes plain `From` impls possible in both directions:
//! `Regs::from(KvmRepr(fd.get_regs()?))` and `KvmRepr::<kvm_regs>::from(&regs).0`.

use kvm_bindings::{kvm_debugregs, kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use quern_core::regs::{DebugRegs, DescriptorTable, FpuState, MsrEntry, Regs, Segment, SpecialRegs};

/// A KVM register struct on its way to or from a neutral type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmRepr<T>(pub T);

impl From<KvmRepr<kvm_regs>> for Regs {
    fn from(KvmRepr(r): KvmRepr<kvm_regs>) -> Self {
        Regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

impl From<&Regs> for KvmRepr<kvm_regs> {
    fn from(r: &Regs) -> Self {
        KvmRepr(kvm_regs {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        })
    }
}

impl From<KvmRepr<kvm_segment>> for Segment {
    fn from(KvmRepr(s): KvmRepr<kvm_segment>) -> Self {
        Segment {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.type_,
            present: s.present != 0,
            dpl: s.dpl,
            db: s.db != 0,
            s: s.s != 0,
            l: s.l != 0,
            g: s.g != 0,
            avl: s.avl != 0,
            unusable: s.unusable != 0,
        }
    }
}

impl From<&Segment> for KvmRepr<kvm_segment> {
    fn from(s: &Segment) -> Self {
        KvmRepr(kvm_segment {
            base: s.base,
            limit: s.limit,
            selector: s.selector,
            type_: s.type_,
            present: s.present.into(),
            dpl: s.dpl,
            db: s.db.into(),
            s: s.s.into(),
            l: s.l.into(),
            g: s.g.into(),
            avl: s.avl.into(),
            unusable: s.unusable.into(),
            padding: 0,
        })
    }
}

impl From<KvmRepr<kvm_dtable>> for DescriptorTable {
    fn from(KvmRepr(t): KvmRepr<kvm_dtable>) -> Self {
        DescriptorTable { base: t.base, limit: t.limit }
    }
}

impl From<&DescriptorTable> for KvmRepr<kvm_dtable> {
    fn from(t: &DescriptorTable) -> Self {
        KvmRepr(kvm_dtable { base: t.base, limit: t.limit, padding: [0; 3] })
    }
}

fn seg(s: kvm_segment) -> Segment {
    KvmRepr(s).into()
}

fn kseg(s: &Segment) -> kvm_segment {
    KvmRepr::from(s).0
}

impl From<KvmRepr<kvm_sregs>> for SpecialRegs {
    fn from(KvmRepr(s): KvmRepr<kvm_sregs>) -> Self {
        SpecialRegs {
            cs: seg(s.cs),
            ds: seg(s.ds),
            es: seg(s.es),
            fs: seg(s.fs),
            gs: seg(s.gs),
            ss: seg(s.ss),
            tr: seg(s.tr),
            ldt: seg(s.ldt),
            gdt: KvmRepr(s.gdt).into(),
            idt: KvmRepr(s.idt).into(),
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
        }
    }
}

/// The result has an empty `interrupt_bitmap`; the vCPU carries KVM's current one over
/// so that setting sregs does not drop an interrupt KVM has queued.
impl From<&SpecialRegs> for KvmRepr<kvm_sregs> {
    fn from(s: &SpecialRegs) -> Self {
        KvmRepr(kvm_sregs {
            cs: kseg(&s.cs),
            ds: kseg(&s.ds),
            es: kseg(&s.es),
            fs: kseg(&s.fs),
            gs: kseg(&s.gs),
            ss: kseg(&s.ss),
            tr: kseg(&s.tr),
            ldt: kseg(&s.ldt),
            gdt: KvmRepr::from(&s.gdt).0,
            idt: KvmRepr::from(&s.idt).0,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            cr8: s.cr8,
            efer: s.efer,
            apic_base: s.apic_base,
            interrupt_bitmap: [0; 4],
        })
    }
}

impl From<KvmRepr<kvm_fpu>> for FpuState {
    fn from(KvmRepr(f): KvmRepr<kvm_fpu>) -> Self {
        FpuState {
            st: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftw: f.ftwx,
            fop: f.last_opcode,
            fip: f.last_ip,
            fdp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&FpuState> for KvmRepr<kvm_fpu> {
    fn from(f: &FpuState) -> Self {
        KvmRepr(kvm_fpu {
            fpr: f.st,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftw,
            pad1: 0,
            last_opcode: f.fop,
            last_ip: f.fip,
            last_dp: f.fdp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            pad2: 0,
        })
    }
}

impl From<KvmRepr<kvm_debugregs>> for DebugRegs {
    fn from(KvmRepr(d): KvmRepr<kvm_debugregs>) -> Self {
        DebugRegs { db: d.db, dr6: d.dr6, dr7: d.dr7 }
    }
}

impl From<&DebugRegs> for KvmRepr<kvm_debugregs> {
    fn from(d: &DebugRegs) -> Self {
        KvmRepr(kvm_debugregs { db: d.db, dr6: d.dr6, dr7: d.dr7, ..Default::default() })
    }
}

impl From<KvmRepr<kvm_msr_entry>> for MsrEntry {
    fn from(KvmRepr(e): KvmRepr<kvm_msr_entry>) -> Self {
        MsrEntry { index: e.index, data: e.data }
    }
}

impl From<&MsrEntry> for KvmRepr<kvm_msr_entry> {
    fn from(e: &MsrEntry) -> Self {
        KvmRepr(kvm_msr_entry { index: e.index, data: e.data, ..Default::default() })
    }
}

/// Builds KVM's variable-length MSR list (the `Msrs` FAM wrapper) from neutral entries.
pub fn to_kvm_msrs(entries: &[MsrEntry]) -> Result<kvm_bindings::Msrs, quern_core::CpuError> {
    let raw: Vec<kvm_msr_entry> = entries.iter().map(|e| KvmRepr::from(e).0).collect();
    kvm_bindings::Msrs::from_entries(&raw).map_err(|e| quern_core::CpuError::Unsupported {
        accel: crate::ACCEL_NAME,
        what: format!("an MSR list of {} entries ({e:?})", entries.len()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quern_core::regs::power_on_state;

    #[test]
    fn regs_round_trip() {
        let mut r = Regs::default();
        r.set_gprs(std::array::from_fn(|i| 0x1111 * (i as u64 + 1)));
        r.rip = 0xfff0;
        r.rflags = 0x202;
        let k = KvmRepr::<kvm_regs>::from(&r).0;
        assert_eq!((k.rcx, k.rsp, k.r15, k.rip), (0x2222, 0x5555, 0x11110, 0xfff0));
        assert_eq!(Regs::from(KvmRepr(k)), r);
    }

    #[test]
    fn sregs_round_trip_power_on_and_long_mode() {
        let (_, mut s) = power_on_state();
        let k = KvmRepr::<kvm_sregs>::from(&s).0;
        assert_eq!((k.cs.base, k.cs.selector, k.cs.type_, k.cs.present), (0xffff_0000, 0xf000, 0xb, 1));
        assert_eq!(k.interrupt_bitmap, [0; 4]);
        assert_eq!(SpecialRegs::from(KvmRepr(k)), s);

        s.cs = Segment::flat(8, true, true);
        s.ss = Segment { dpl: 3, avl: true, unusable: true, ..Segment::flat(0x10, false, false) };
        s.gdt = DescriptorTable { base: 0x1000, limit: 23 };
        (s.cr0, s.cr3, s.cr4, s.efer, s.cr8) = (0x8000_0011, 0x2000, 0x20, 0x500, 5);
        let k = KvmRepr::<kvm_sregs>::from(&s).0;
        assert_eq!((k.cs.l, k.cs.db, k.ss.dpl, k.ss.unusable, k.gdt.limit), (1, 0, 3, 1, 23));
        assert_eq!(SpecialRegs::from(KvmRepr(k)), s);
    }

    #[test]
    fn fpu_debug_and_msrs_round_trip() {
        let mut f =
            FpuState { fcw: 0x27f, fsw: 0x3800, ftw: 0x81, fop: 0x1d9, fip: 0x1234, fdp: 0x5678, ..Default::default() };
        f.st[7][9] = 0x40;
        f.xmm[15] = [0xab; 16];
        let k = KvmRepr::<kvm_fpu>::from(&f).0;
        assert_eq!((k.ftwx, k.last_opcode, k.xmm[15][3], k.mxcsr), (0x81, 0x1d9, 0xab, 0x1f80));
        assert_eq!(FpuState::from(KvmRepr(k)), f);

        let d = DebugRegs { db: [1, 2, 3, 4], dr6: 0xffff_0ff0, dr7: 0x401 };
        assert_eq!(DebugRegs::from(KvmRepr(KvmRepr::<kvm_debugregs>::from(&d).0)), d);

        let entries = [MsrEntry { index: 0x277, data: 0x0007_0406_0007_0406 }, MsrEntry { index: 0x10, data: 7 }];
        let msrs = to_kvm_msrs(&entries).unwrap();
        let back: Vec<MsrEntry> = msrs.as_slice().iter().map(|&e| KvmRepr(e).into()).collect();
        assert_eq!(back, entries);
    }
}
