//! The GSI routing of KVM's in-kernel irqchip, as QEMU's `pc` machine sets it and as
//! quern's MADT describes the board: ISA IRQ n reaches 8259 input n and IOAPIC pin n,
//! except IRQ 0 (the PIT), which reaches IOAPIC pin 2 (the interrupt source override),
//! and IRQ 2, the cascade, which no device drives. GSIs 16-23 reach only the IOAPIC.
//!
//! KVM's own default table sends GSI 0 to IOAPIC pin 0, where a guest that follows the
//! MADT never looks for the timer (Linux then reports "IO-APIC + timer doesn't work").

use kvm_bindings::{kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip};
use kvm_bindings::{KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP};

/// Pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u32 = 24;

fn route(gsi: u32, irqchip: u32, pin: u32) -> kvm_irq_routing_entry {
    kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 { irqchip: kvm_irq_routing_irqchip { irqchip, pin } },
        ..Default::default()
    }
}

/// The PC's routing table for KVM_SET_GSI_ROUTING.
pub fn pc_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for irq in (0..16).filter(|&i| i != 2) {
        let (chip, pin) = if irq < 8 { (KVM_IRQCHIP_PIC_MASTER, irq) } else { (KVM_IRQCHIP_PIC_SLAVE, irq - 8) };
        routes.push(route(irq, chip, pin));
    }
    for gsi in (0..IOAPIC_PINS).filter(|&g| g != 2) {
        routes.push(route(gsi, KVM_IRQCHIP_IOAPIC, if gsi == 0 { 2 } else { gsi }));
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (chip, pin) pairs that `gsi` reaches.
    fn targets(gsi: u32) -> Vec<(u32, u32)> {
        pc_routes()
            .iter()
            .filter(|e| e.gsi == gsi)
            .map(|e| {
                assert_eq!(e.type_, KVM_IRQ_ROUTING_IRQCHIP);
                // SAFETY: every entry was built with the irqchip member.
                let c = unsafe { e.u.irqchip };
                (c.irqchip, c.pin)
            })
            .collect()
    }

    #[test]
    fn isa_irqs_reach_both_chips_and_the_pit_pin_2() {
        assert_eq!(targets(0), [(KVM_IRQCHIP_PIC_MASTER, 0), (KVM_IRQCHIP_IOAPIC, 2)]);
        assert_eq!(targets(2), [], "the cascade input is no device's");
        assert_eq!(targets(4), [(KVM_IRQCHIP_PIC_MASTER, 4), (KVM_IRQCHIP_IOAPIC, 4)]);
        assert_eq!(targets(9), [(KVM_IRQCHIP_PIC_SLAVE, 1), (KVM_IRQCHIP_IOAPIC, 9)]);
        assert_eq!(targets(15), [(KVM_IRQCHIP_PIC_SLAVE, 7), (KVM_IRQCHIP_IOAPIC, 15)]);
        assert_eq!(targets(16), [(KVM_IRQCHIP_IOAPIC, 16)]);
        assert_eq!(targets(23), [(KVM_IRQCHIP_IOAPIC, 23)]);
        assert_eq!(pc_routes().len(), 15 + 23);
        let to_pin_2: Vec<u32> = pc_routes()
            .iter()
            // SAFETY: as above.
            .filter(|e| unsafe { e.u.irqchip } == kvm_irq_routing_irqchip { irqchip: KVM_IRQCHIP_IOAPIC, pin: 2 })
            .map(|e| e.gsi)
            .collect();
        assert_eq!(to_pin_2, [0], "only the PIT drives IOAPIC pin 2");
    }
}
