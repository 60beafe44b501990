use super::*;

fn root() -> PciRoot {
    PciRoot::new()
}

fn select(r: &mut PciRoot, dev: u32, func: u32, reg: u32) {
    let addr = 0x8000_0000 | dev << 11 | func << 8 | reg;
    r.window_write(PciWindow::Address, 0, &addr.to_le_bytes());
}

fn read32(r: &mut PciRoot, dev: u32, func: u32, reg: u32) -> u32 {
    select(r, dev, func, reg);
    let mut d = [0u8; 4];
    r.window_read(PciWindow::Data, 0, &mut d);
    u32::from_le_bytes(d)
}

#[test]
fn host_and_isa_bridges_enumerate() {
    let mut r = root();
    assert_eq!(read32(&mut r, 0, 0, 0x00), 0x1237_8086);
    assert_eq!(read32(&mut r, 0, 0, 0x08), 0x0600_0002);
    assert_eq!(read32(&mut r, 1, 0, 0x00), 0x7000_8086);
    assert_eq!(read32(&mut r, 1, 0, 0x08) >> 8, 0x06_0100);
    // Header type byte through a byte read at 0xcfe.
    select(&mut r, 1, 0, 0x0c);
    let mut b = [0u8];
    r.window_read(PciWindow::Data, 2, &mut b);
    assert_eq!(b, [0x80]);
    assert_eq!(read32(&mut r, 1, 0, 0x60), 0x8080_8080, "PIRQ routing disabled");
}

#[test]
fn absent_functions_and_disabled_cycles_read_all_ones() {
    let mut r = root();
    assert_eq!(read32(&mut r, 2, 0, 0), 0xffff_ffff);
    assert_eq!(read32(&mut r, 0, 1, 0), 0xffff_ffff);
    // Bus 1.
    r.window_write(PciWindow::Address, 0, &0x8001_0000u32.to_le_bytes());
    let mut d = [0u8; 4];
    r.window_read(PciWindow::Data, 0, &mut d);
    assert_eq!(d, [0xff; 4]);
    // Enable bit clear.
    r.window_write(PciWindow::Address, 0, &0x0000_0000u32.to_le_bytes());
    r.window_read(PciWindow::Data, 0, &mut d);
    assert_eq!(d, [0xff; 4]);
}

#[test]
fn config_address_latches_dwords_only() {
    let mut r = root();
    r.window_write(PciWindow::Address, 0, &0xffff_ffffu32.to_le_bytes());
    let mut d = [0u8; 4];
    r.window_read(PciWindow::Address, 0, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x80ff_fffc);
    r.window_write(PciWindow::Address, 0, &[0x00]);
    r.window_write(PciWindow::Address, 0, &[0x00, 0x00]);
    r.window_read(PciWindow::Address, 0, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x80ff_fffc, "byte and word writes are not latched");
    let mut b = [0u8];
    r.window_read(PciWindow::Address, 0, &mut b);
    assert_eq!(b, [0xff]);
}

#[test]
fn sub_dword_writes_touch_only_their_bytes() {
    let mut r = root();
    select(&mut r, 0, 0, 0x58);
    // PAM1 (0x5a) alone, then the interrupt line byte of the ISA bridge.
    r.window_write(PciWindow::Data, 2, &[0x33]);
    assert_eq!(read32(&mut r, 0, 0, 0x58), 0x0033_0000);
    select(&mut r, 1, 0, 0x3c);
    r.window_write(PciWindow::Data, 0, &[0x0b, 0x01]);
    assert_eq!(read32(&mut r, 1, 0, 0x3c) & 0xffff, 0x000b, "interrupt pin is read-only");
    // IDs are read-only; a write past the dword is dropped.
    select(&mut r, 0, 0, 0x00);
    r.window_write(PciWindow::Data, 3, &[1, 2, 3, 4]);
    r.window_write(PciWindow::Data, 0, &0u32.to_le_bytes());
    assert_eq!(read32(&mut r, 0, 0, 0x00), 0x1237_8086);
}

#[test]
fn bars_size_themselves_and_status_clears_by_writing_ones() {
    let mut c = ConfigSpace::new(0x8086, 0x100e, [0x02, 0x00, 0x00], 3);
    c.add_bar(0, 0x2_0000, BarKind::Mem32);
    c.add_bar(1, 0x20, BarKind::Io);
    c.add_bar(7, 0x20, BarKind::Io); // no such BAR: ignored
    c.config_write(0x10, 0xffff_ffff, 0xffff_ffff);
    c.config_write(0x14, 0xffff_ffff, 0xffff_ffff);
    assert_eq!(c.config_read(0x10), 0xfffe_0000);
    assert_eq!(c.config_read(0x14), 0xffff_ffe1);
    c.config_write(0x10, 0xfebc_0000, 0xffff_ffff);
    c.config_write(0x14, 0xc041, 0xffff_ffff);
    assert_eq!(c.bar(0), Some(0xfebc_0000));
    assert_eq!(c.bar(1), Some(0xc040));
    assert_eq!(c.bar(2), None);
    c.config_write(0x04, 0x0000_0007, 0x0000_ffff);
    assert!(c.decodes(BarKind::Io) && c.decodes(BarKind::Mem32));
    assert_eq!(c.u16(0x04), 0x0007);
    c.set_u16(0x06, 0x2010); // received master abort + capabilities list
    c.config_write(0x04, 0x2000_0000, 0xffff_0000);
    assert_eq!(c.u16(0x06), 0x0010, "error bit cleared, capability bit kept");
}

#[test]
fn bus_slots() {
    let mut bus = PciBus::new();
    let dev = || Arc::new(Mutex::new(ConfigSpace::new(1, 2, [0xff, 0, 0], 0))) as SharedPciDevice;
    bus.add(3, 0, dev()).unwrap();
    assert_eq!(bus.add(3, 0, dev()), Err(PciError::SlotTaken { dev: 3, func: 0 }));
    assert_eq!(bus.add(32, 0, dev()), Err(PciError::BadAddress { dev: 32, func: 0 }));
    assert_eq!(bus.free_slot(), Some(0));
    assert_eq!(bus.config_read(3, 0, 0x01), 0x0002_0001);
    assert_eq!(bus.config_read(40, 9, 0), 0xffff_ffff);
    let mut root = PciRoot::new();
    assert_eq!(root.bus_mut().free_slot(), Some(2));
    let shared = Arc::new(Mutex::new(root));
    let devs = pci_bus_devices(&shared);
    assert_eq!(devs.iter().map(|d| (d.1, d.2)).collect::<Vec<_>>(), [(0xcf8, 1), (0xcfc, 4)]);
}

#[test]
fn bridge_headers_are_what_linux_expects() {
    let mut r = root();
    // i440FX: 8086:1237 rev 2, class 06.00.00 (host bridge), single-function type 0.
    assert_eq!(read32(&mut r, 0, 0, 0x08), 0x0600_0002);
    assert_eq!((read32(&mut r, 0, 0, 0x0c) >> 16) & 0xff, 0x00);
    // PIIX3: 8086:7000, class 06.01.00 (ISA bridge), multi-function (IDE is 01.1).
    assert_eq!(read32(&mut r, 1, 0, 0x08), 0x0601_0000);
    assert_eq!((read32(&mut r, 1, 0, 0x0c) >> 16) & 0xff, 0x80);
    // Neither bridge uses an INTx pin.
    assert_eq!((read32(&mut r, 0, 0, 0x3c) >> 8) & 0xff, 0);
    assert_eq!((read32(&mut r, 1, 0, 0x3c) >> 8) & 0xff, 0);
}

#[test]
fn piix3_pirq_route_registers() {
    let mut r = root();
    assert_eq!(read32(&mut r, 1, 0, 0x60), 0x8080_8080, "reset: all four disabled");
    assert_eq!((0..4).map(|n| r.pirq_route(n)).collect::<Vec<_>>(), [None; 4]);
    // PIRQA -> IRQ11 through a byte write at 0xcfc.
    select(&mut r, 1, 0, 0x60);
    r.window_write(PciWindow::Data, 0, &[0x0b]);
    assert_eq!(read32(&mut r, 1, 0, 0x60), 0x8080_800b);
    assert_eq!(r.pirq_route(0), Some(11));
    // PIRQC/PIRQD -> IRQ5/IRQ10 through a word write at 0xcfe.
    select(&mut r, 1, 0, 0x60);
    r.window_write(PciWindow::Data, 2, &[0x05, 0x0a]);
    assert_eq!((r.pirq_route(2), r.pirq_route(3)), (Some(5), Some(10)));
    // Reserved bits 6:4 stay zero; bit 7 disables whatever IRQ is named.
    select(&mut r, 1, 0, 0x60);
    r.window_write(PciWindow::Data, 1, &[0xfb]);
    assert_eq!(read32(&mut r, 1, 0, 0x60), 0x0a05_8b0b);
    assert_eq!(r.pirq_route(1), None);
    // IRQs PIIX3 reserves are not routes.
    for irq in [0u8, 1, 2, 8, 13] {
        select(&mut r, 1, 0, 0x60);
        r.window_write(PciWindow::Data, 1, &[irq]);
        assert_eq!(r.pirq_route(1), None, "IRQ {irq}");
    }
    assert_eq!(r.pirq_route(4), None, "only PIRQA-D");
    // A dword write sets all four; a reset disables them again.
    select(&mut r, 1, 0, 0x60);
    r.window_write(PciWindow::Data, 0, &0x0b0b_0a0au32.to_le_bytes());
    assert_eq!((0..4).map(|n| r.pirq_route(n)).collect::<Vec<_>>(), [Some(10), Some(10), Some(11), Some(11)]);
    r.reset();
    assert_eq!(read32(&mut r, 1, 0, 0x60), 0x8080_8080);
    assert_eq!(r.pirq_route(0), None);
}

#[test]
fn intx_pins_rotate_over_the_pirqs() {
    // (slot, pin) -> PIRQ: slot 1 INTA is PIRQA, each slot shifts by one.
    let cases = [(0, 0, 3), (1, 0, 0), (1, 1, 1), (1, 3, 3), (2, 0, 1), (3, 0, 2), (3, 3, 1), (31, 0, 2)];
    for (slot, pin, pirq) in cases {
        assert_eq!(pirq_for_pin(slot, pin), pirq, "slot {slot} pin {pin}");
    }
}

#[test]
fn expansion_rom_bar_sizes_and_enables() {
    let mut c = ConfigSpace::new(0x8086, 0x100e, [0x02, 0x00, 0x00], 3);
    // No ROM BAR: the register stays zero.
    c.config_write(0x30, 0xffff_ffff, !0);
    assert_eq!(c.config_read(0x30), 0);
    assert_eq!(c.rom_bar(), None);
    // 70 KiB rounds up to 128 KiB: sizing reads back the address mask and the enable bit.
    c.add_rom_bar(70 << 10);
    c.config_write(0x30, 0xffff_ffff, !0);
    assert_eq!(c.config_read(0x30), 0xfffe_0001);
    c.config_write(0x30, 0xfebc_0000, !0);
    assert_eq!(c.rom_bar(), None, "disabled");
    c.config_write(0x30, 0xfebc_0001, !0);
    assert_eq!(c.rom_bar(), Some(0xfebc_0000));
    // Enabled at address zero decodes nowhere; tiny ROMs take at least 2 KiB.
    c.config_write(0x30, 1, !0);
    assert_eq!(c.rom_bar(), None);
    let mut small = ConfigSpace::new(0x8086, 0x100e, [0x02, 0x00, 0x00], 3);
    small.add_rom_bar(100);
    small.config_write(0x30, 0xffff_ffff, !0);
    assert_eq!(small.config_read(0x30), 0xffff_f801);
}

#[test]
fn snapshot_keeps_the_address_bars_routes_and_pam() {
    use quern_core::snapshot::Snapshot;
    let mut r = root();
    select(&mut r, 1, 0, 0x60);
    r.window_write(PciWindow::Data, 0, &0x8080_0a0bu32.to_le_bytes());
    select(&mut r, 0, 0, 0x58);
    r.window_write(PciWindow::Data, 1, &[0x30]);
    select(&mut r, 1, 0, 0x3c); // CONFIG_ADDRESS left here
    let mut s = root();
    let pam = Arc::new(Mutex::new(Vec::new()));
    let seen = pam.clone();
    s.set_pam_listener(Box::new(move |p| seen.lock().unwrap().push(p[0])));
    crate::testutil::restore_into(&mut s, &r.save_state());
    assert_eq!(*pam.lock().unwrap(), [0, 0x30], "the memory views follow the restored PAM");
    let mut a = [0; 4];
    s.window_read(PciWindow::Address, 0, &mut a);
    assert_eq!(u32::from_le_bytes(a), 0x8000_083c);
    assert_eq!((s.pirq_route(0), s.pirq_route(1), s.pirq_route(2)), (Some(11), Some(10), None));
    assert_eq!(read32(&mut s, 0, 0, 0x58), 0x0000_3000);
    crate::testutil::assert_refuses_malformed(&mut s, &["/host/bytes", "/isa/bytes"]);
}

#[test]
fn snapshot_of_a_config_space_keeps_bars_and_command() {
    use quern_core::snapshot::Snapshot;
    let dev = || {
        let mut c = ConfigSpace::new(0x8086, 0x100e, [0x02, 0x00, 0x00], 3);
        c.add_bar(0, 0x2_0000, BarKind::Mem32);
        c
    };
    let mut c = dev();
    c.config_write(0x10, 0xfebc_0000, !0);
    c.config_write(0x04, 0x0002, 0xffff);
    c.config_write(0x3c, 0x0b, 0xff);
    let mut d = dev();
    crate::testutil::restore_into(&mut d, &c.save_state());
    assert_eq!(d.bar_offset(0, 0xfebc_0010, 0x2_0000), Some(0x10));
    assert_eq!(d.u8(0x3c), 0x0b);
    d.config_write(0x10, 0xffff_ffff, !0);
    assert_eq!(d.config_read(0x10), 0xfffe_0000, "the writable mask is the device's own");
    let mut other = ConfigSpace::new(0x8086, 0x7010, [0x01, 0x01, 0x80], 0);
    assert!(other.restore_state(&c.save_state()).is_err(), "another device's state");
}
