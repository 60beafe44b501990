use std::sync::atomic::{AtomicUsize, Ordering};

use quern_core::memory::RegionSpec;
use quern_core::{RegionKind, TestIrq};

use super::tx::{fold, ones_sum};
use super::*;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const BAR0: u64 = 0xfebc_0000;
const BAR1: u16 = 0xc000;
const ROM_AT: u64 = 0xfeb0_0000;
const RX_RING: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x2_0000;
const TX_RING: u64 = 0x3_0000;
const TX_BUFS: u64 = 0x4_0000;

/// A backend that records what is sent and how often it is told to resume.
#[derive(Default)]
struct FakeBackend {
    sent: Mutex<Vec<Vec<u8>>>,
    resumes: AtomicUsize,
}

impl NetBackend for FakeBackend {
    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        self.sent.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
    fn resume(&self) {
        self.resumes.fetch_add(1, Ordering::SeqCst);
    }
}

struct Rig {
    mem: Arc<GuestMemory>,
    irq: Arc<TestIrq>,
    nic: Arc<E1000>,
    pci: SharedPciDevice,
    backend: Arc<FakeBackend>,
}

impl Rig {
    fn with(mem: GuestMemory, rom: Option<Vec<u8>>) -> Rig {
        Rig::with_mac(mem, rom, MAC)
    }

    fn with_mac(mem: GuestMemory, rom: Option<Vec<u8>>, mac: [u8; 6]) -> Rig {
        let mem = Arc::new(mem);
        let irq = Arc::new(TestIrq::default());
        let nic = E1000::new(mem.clone(), irq.clone(), E1000Config { mac, rom });
        let pci = nic.pci_function();
        let backend = Arc::new(FakeBackend::default());
        nic.connect(backend.clone());
        let rig = Rig { mem, irq, nic, pci, backend };
        rig.cfg_write(0x10, BAR0 as u32);
        rig.cfg_write(0x14, u32::from(BAR1));
        rig.cfg_write(0x04, 0x7);
        rig
    }

    fn new() -> Rig {
        Rig::with(GuestMemory::flat(1 << 20).unwrap(), None)
    }

    fn cfg_read(&self, reg: u16) -> u32 {
        lock(&self.pci).config_read(reg)
    }
    fn cfg_write(&self, reg: u16, v: u32) {
        lock(&self.pci).config_write(reg, v, !0);
    }
    fn r(&self, off: u32) -> u32 {
        let mut d = [0u8; 4];
        assert!(lock(&self.pci).mmio_read(BAR0 + u64::from(off), &mut d));
        u32::from_le_bytes(d)
    }
    fn w(&self, off: u32, v: u32) {
        assert!(lock(&self.pci).mmio_write(BAR0 + u64::from(off), &v.to_le_bytes()));
    }
    fn io_read(&self, port: u16) -> u32 {
        let mut d = [0u8; 4];
        assert!(lock(&self.pci).io_read(BAR1 + port, &mut d));
        u32::from_le_bytes(d)
    }
    fn io_write(&self, port: u16, v: u32) {
        assert!(lock(&self.pci).io_write(BAR1 + port, &v.to_le_bytes()));
    }
    fn sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.backend.sent.lock().unwrap())
    }
    fn receive(&self, frame: &[u8]) -> bool {
        self.nic.sink().receive(frame)
    }

    /// A receive ring of `n` descriptors with `buf`-byte buffers, all handed to the
    /// NIC (tail at n - 1), receiving with `rctl` (EN added).
    fn rx_setup(&self, n: u32, rctl: u32) {
        for i in 0..u64::from(n) {
            self.mem.write_u64(RX_RING + 16 * i, RX_BUFS + 0x4000 * i).unwrap();
            self.mem.write_u64(RX_RING + 16 * i + 8, 0).unwrap();
        }
        self.w(regs::RDBAL, RX_RING as u32);
        self.w(regs::RDBAH, 0);
        self.w(regs::RDLEN, 16 * n);
        self.w(regs::RDH, 0);
        self.w(regs::RDT, n - 1);
        self.w(regs::RCTL, rctl | regs::RCTL_EN);
    }

    /// Descriptor `i` of the receive ring: (length, status, special).
    fn rx_desc(&self, i: u64) -> (u16, u8, u16) {
        let mut d = [0u8; 8];
        self.mem.read(RX_RING + 16 * i + 8, &mut d).unwrap();
        (u16::from_le_bytes([d[0], d[1]]), d[4], u16::from_le_bytes([d[6], d[7]]))
    }

    fn rx_buf(&self, i: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read(RX_BUFS + 0x4000 * i, &mut v).unwrap();
        v
    }

    fn tx_setup(&self, n: u32) {
        self.w(regs::TDBAL, TX_RING as u32);
        self.w(regs::TDBAH, 0);
        self.w(regs::TDLEN, 16 * n);
        self.w(regs::TDH, 0);
        self.w(regs::TDT, 0);
        self.w(regs::TCTL, regs::TCTL_EN | regs::TCTL_PSP);
    }

    /// Writes transmit descriptor `i`: buffer, (cmd | length) dword, upper dword.
    fn tx_desc(&self, i: u64, addr: u64, lower: u32, upper: u32) {
        self.mem.write_u64(TX_RING + 16 * i, addr).unwrap();
        self.mem.write_u32(TX_RING + 16 * i + 8, lower).unwrap();
        self.mem.write_u32(TX_RING + 16 * i + 12, upper).unwrap();
    }
}

fn frame_to(dest: [u8; 6], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dest);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, b) in f.iter_mut().enumerate().skip(14) {
        *b = i as u8;
    }
    f
}

// ---- EEPROM ----

/// Reads an EEPROM word through EECD as Linux's e1000_read_eeprom does for a
/// microwire part: acquire, opcode and address out, 16 bits in, standby.
fn bitbang_read(rig: &Rig, addr: u16) -> u16 {
    const SK: u32 = 1;
    const CS: u32 = 2;
    const DI: u32 = 4;
    const DO: u32 = 8;
    const REQ: u32 = 0x40;
    const GNT: u32 = 0x80;
    let mut eecd = rig.r(regs::EECD);
    assert_eq!(eecd & 0x100, 0x100, "EEPROM present");
    assert_eq!(eecd & 0x200, 0, "64-word part");
    eecd |= REQ;
    rig.w(regs::EECD, eecd);
    assert_ne!(rig.r(regs::EECD) & GNT, 0);
    eecd &= !(DI | SK);
    rig.w(regs::EECD, eecd);
    eecd |= CS;
    rig.w(regs::EECD, eecd);
    let shift_out = |eecd: &mut u32, data: u32, count: u32| {
        for i in (0..count).rev() {
            *eecd &= !DI;
            if data & (1 << i) != 0 {
                *eecd |= DI;
            }
            rig.w(regs::EECD, *eecd);
            rig.w(regs::EECD, *eecd | SK);
            rig.w(regs::EECD, *eecd & !SK);
        }
        *eecd &= !DI;
        rig.w(regs::EECD, *eecd);
    };
    shift_out(&mut eecd, 0b110, 3);
    shift_out(&mut eecd, u32::from(addr), 6);
    let mut data = 0u16;
    eecd &= !(DO | DI);
    for _ in 0..16 {
        data <<= 1;
        rig.w(regs::EECD, eecd | SK);
        eecd = rig.r(regs::EECD) & !DI;
        if eecd & DO != 0 {
            data |= 1;
        }
        eecd &= !SK;
        rig.w(regs::EECD, eecd);
    }
    // Standby, then release.
    rig.w(regs::EECD, eecd & !CS);
    rig.w(regs::EECD, eecd & !(CS | REQ));
    data
}

#[test]
fn eeprom_bitbang_gives_mac_and_checksum() {
    let rig = Rig::new();
    let words: Vec<u16> = (0..64).map(|a| bitbang_read(&rig, a)).collect();
    assert_eq!(words[0].to_le_bytes(), [MAC[0], MAC[1]]);
    assert_eq!(words[1].to_le_bytes(), [MAC[2], MAC[3]]);
    assert_eq!(words[2].to_le_bytes(), [MAC[4], MAC[5]]);
    assert_eq!(words[0x0b], DEVICE_ID);
    assert_eq!(words.iter().fold(0u16, |s, &w| s.wrapping_add(w)), eeprom::CHECKSUM_SUM);
}

#[test]
fn eeprom_eerd_gives_words() {
    let rig = Rig::new();
    // iPXE's probe: START alone; the 82540 answers with DONE in bit 4, not bit 1.
    rig.w(regs::EERD, 1);
    let v = rig.r(regs::EERD);
    assert_eq!(v & 0x12, 0x10);
    assert_eq!((v >> 16) as u16, u16::from_le_bytes([MAC[0], MAC[1]]));
    let mut sum = 0u16;
    for a in 0..64u32 {
        rig.w(regs::EERD, 1 | a << 8);
        let v = rig.r(regs::EERD);
        assert_ne!(v & 0x10, 0);
        sum = sum.wrapping_add((v >> 16) as u16);
        if a == 2 {
            assert_eq!((v >> 16) as u16, u16::from_le_bytes([MAC[4], MAC[5]]));
        }
    }
    assert_eq!(sum, 0xbaba);
}

// ---- PHY ----

fn mdic(rig: &Rig, phy: u32, reg: u32, op: u32, data: u16) -> u32 {
    rig.w(regs::MDIC, op | phy << 21 | reg << 16 | u32::from(data));
    let v = rig.r(regs::MDIC);
    assert_ne!(v & regs::MDIC_READY, 0);
    v
}

#[test]
fn phy_ids_and_link_through_mdic() {
    let rig = Rig::new();
    let read = |reg| mdic(&rig, 1, reg, regs::MDIC_OP_READ, 0);
    assert_eq!(read(2) & 0xffff, 0x0141);
    assert_eq!(read(3) & 0xffff, 0x0c20);
    let bmsr = read(1);
    assert_eq!(bmsr & regs::MDIC_ERROR, 0);
    assert_ne!(bmsr & u32::from(phy::BMSR_LINK), 0);
    assert_ne!(bmsr & u32::from(phy::BMSR_ANEG_DONE), 0);
    assert_eq!(read(0x11) & 0xffff, 0xac00);
    assert_eq!(read(0x1f) & 0xffff, 0, "unknown registers read 0");
    // Another PHY address: error.
    assert_ne!(mdic(&rig, 2, 1, regs::MDIC_OP_READ, 0) & regs::MDIC_ERROR, 0);
    // Advertisement is writable; restart of auto-negotiation self-clears.
    mdic(&rig, 1, 4, regs::MDIC_OP_WRITE, 0x01e1);
    assert_eq!(read(4) & 0xffff, 0x01e1);
    mdic(&rig, 1, 0, regs::MDIC_OP_WRITE, 0x1340);
    assert_eq!(read(0) & 0xffff, 0x1140);
    // IE raises MDAC.
    rig.w(regs::IMS, regs::ICR_MDAC);
    assert!(!rig.irq.level());
    mdic(&rig, 1, 2, regs::MDIC_OP_READ | regs::MDIC_IE, 0);
    assert!(rig.irq.level());
    assert_ne!(rig.r(regs::ICR) & regs::ICR_MDAC, 0);
    assert!(!rig.irq.level());
    // The link pulled: STATUS and PHY follow, LSC raised.
    rig.w(regs::IMS, regs::ICR_LSC);
    rig.nic.set_link(false);
    assert_eq!(rig.r(regs::STATUS) & regs::STATUS_LU, 0);
    assert_eq!(read(1) & u32::from(phy::BMSR_LINK), 0);
    assert!(rig.irq.level());
    assert_ne!(rig.r(regs::ICR) & regs::ICR_LSC, 0);
    rig.nic.set_link(true);
    assert_ne!(rig.r(regs::STATUS) & regs::STATUS_LU, 0);
}

// ---- PCI ----

#[test]
fn config_space_and_bar_sizing() {
    let rig = Rig::with(GuestMemory::flat(1 << 20).unwrap(), Some(vec![0x55, 0xaa, 0x40]));
    assert_eq!(rig.cfg_read(0x00), 0x100e_8086);
    assert_eq!(rig.cfg_read(0x08), 0x0200_0003);
    assert_eq!(rig.cfg_read(0x2c), 0x1100_1af4);
    assert_eq!((rig.cfg_read(0x3c) >> 8) & 0xff, 1, "INTA");
    for (reg, v, size) in [(0x10, 0xffff_ffff, 0xfffe_0000), (0x14, 0xffff_ffff, 0xffff_ffc1), (0x30, !0, 0xffff_f801)]
    {
        let old = rig.cfg_read(reg);
        rig.cfg_write(reg, v);
        assert_eq!(rig.cfg_read(reg), size, "BAR at {reg:#x}");
        rig.cfg_write(reg, old);
    }
    assert_eq!(rig.r(regs::STATUS), 0x8008_0783);
    // The ROM answers once enabled.
    rig.cfg_write(0x30, ROM_AT as u32 | 1);
    let mut d = [0u8; 4];
    assert!(lock(&rig.pci).mmio_read(ROM_AT, &mut d));
    assert_eq!(d, [0x55, 0xaa, 0x40, 0xff]);
    assert!(lock(&rig.pci).mmio_write(ROM_AT, &[0]), "ROM writes are claimed and dropped");
    assert!(lock(&rig.pci).mmio_read(ROM_AT, &mut d[..1]));
    assert_eq!(d[0], 0x55);
    // Memory decoding off: neither the registers nor the ROM answer.
    rig.cfg_write(0x04, 0x5);
    assert!(!lock(&rig.pci).mmio_read(BAR0, &mut d));
    assert!(!lock(&rig.pci).mmio_read(ROM_AT, &mut d));
    assert!(lock(&rig.pci).io_read(BAR1, &mut d));
    assert!(!lock(&rig.pci).io_read(BAR1 + 0x40, &mut d));
}

#[test]
fn io_window_reaches_the_registers() {
    let rig = Rig::new();
    rig.io_write(0, regs::STATUS);
    assert_eq!(rig.io_read(0), regs::STATUS);
    assert_eq!(rig.io_read(4), 0x8008_0783);
    rig.io_write(0, regs::IMS);
    rig.io_write(4, regs::ICR_RXT0);
    assert_eq!(rig.r(regs::IMS), regs::ICR_RXT0);
    // Linux resets the 82540 through the I/O window: RA[0] returns to the EEPROM's.
    rig.w(regs::RA, 0x1122_3344);
    rig.io_write(0, regs::CTRL);
    rig.io_write(4, rig.r(regs::CTRL) | regs::CTRL_RST);
    assert_eq!(rig.r(regs::CTRL) & regs::CTRL_RST, 0);
    assert_eq!(rig.r(regs::RA), u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]));
    assert_eq!(rig.r(regs::RA + 4), 0x8000_0000 | u32::from(u16::from_le_bytes([MAC[4], MAC[5]])));
    assert_eq!(rig.r(regs::IMS), 0);
    assert_eq!(rig.io_read(0x20), 0, "reserved ports read 0");
}

#[test]
fn narrow_and_wide_register_accesses() {
    let rig = Rig::new();
    // Byte writes to IMS set the bits of the byte written only.
    assert!(lock(&rig.pci).mmio_write(BAR0 + u64::from(regs::IMS) + 1, &[0x02]));
    assert_eq!(rig.r(regs::IMS), regs::ICR_MDAC);
    // A 16-bit write to the upper half of RAL keeps the lower half.
    assert!(lock(&rig.pci).mmio_write(BAR0 + u64::from(regs::RA) + 2, &[0xaa, 0xbb]));
    assert_eq!(rig.r(regs::RA), u32::from_le_bytes([MAC[0], MAC[1], 0xaa, 0xbb]));
    // An 8-byte read covers two registers.
    let mut d = [0u8; 8];
    assert!(lock(&rig.pci).mmio_read(BAR0 + u64::from(regs::RA), &mut d));
    assert_eq!(u32::from_le_bytes(d[4..].try_into().unwrap()), rig.r(regs::RA + 4));
    let mut b = [0u8; 1];
    assert!(lock(&rig.pci).mmio_read(BAR0 + u64::from(regs::STATUS) + 3, &mut b));
    assert_eq!(b[0], 0x80);
    // Unknown registers read 0 and keep nothing.
    rig.w(0x1_2340, 0xdead_beef);
    assert_eq!(rig.r(0x1_2340), 0);
}

// ---- Interrupts ----

#[test]
fn interrupt_causes_mask_and_line() {
    let rig = Rig::new();
    rig.w(regs::ICS, regs::ICR_TXDW);
    assert!(!rig.irq.level(), "masked");
    assert_eq!(rig.r(regs::ICS), regs::ICR_TXDW | regs::ICR_INT_ASSERTED);
    rig.w(regs::IMS, regs::ICR_TXDW | regs::ICR_RXT0);
    assert!(rig.irq.level());
    assert_ne!(rig.cfg_read(0x04) & (1 << 19), 0, "PCI interrupt status");
    assert_eq!(rig.r(regs::IMS), regs::ICR_TXDW | regs::ICR_RXT0);
    rig.w(regs::IMC, regs::ICR_TXDW);
    assert!(!rig.irq.level());
    assert_eq!(rig.cfg_read(0x04) & (1 << 19), 0);
    rig.w(regs::IMS, regs::ICR_TXDW);
    assert!(rig.irq.level());
    // INTx disable lowers the line; the status bit stays.
    rig.cfg_write(0x04, 0x407);
    assert!(!rig.irq.level());
    assert_ne!(rig.cfg_read(0x04) & (1 << 19), 0);
    rig.cfg_write(0x04, 0x7);
    assert!(rig.irq.level());
    // Reading ICR clears it and lowers the line.
    assert_eq!(rig.r(regs::ICR), regs::ICR_TXDW | regs::ICR_INT_ASSERTED);
    assert!(!rig.irq.level());
    assert_eq!(rig.r(regs::ICR), 0);
    // Writing ICR clears the causes written.
    rig.w(regs::ICS, regs::ICR_TXDW | regs::ICR_LSC);
    rig.w(regs::ICR, regs::ICR_TXDW);
    assert!(!rig.irq.level());
    assert_eq!(rig.r(regs::ICS), regs::ICR_LSC | regs::ICR_INT_ASSERTED);
}

// ---- Receive ----

#[test]
fn receive_lands_in_the_ring() {
    let rig = Rig::new();
    rig.rx_setup(8, regs::RCTL_BAM);
    rig.w(regs::IMS, regs::ICR_RXT0);
    let f = frame_to(MAC, 100);
    assert!(rig.receive(&f));
    assert_eq!(rig.rx_desc(0), (104, 0x07, 0), "DD, EOP, IXSM; length with FCS");
    assert_eq!(rig.rx_buf(0, 100), f);
    assert_eq!(rig.r(regs::RDH), 1);
    assert!(rig.irq.level());
    assert_ne!(rig.r(regs::ICR) & regs::ICR_RXT0, 0);
    assert_eq!(rig.r(regs::GPRC), 1);
    assert_eq!(rig.r(regs::GPRC), 0, "statistics clear on read");
    assert_eq!(rig.r(regs::GORCL), 104);
    assert_eq!(rig.r(regs::GORCL + 4), 0);
    // Short frames are padded to 60 bytes; SECRC drops the FCS.
    rig.w(regs::RCTL, rig.r(regs::RCTL) | regs::RCTL_SECRC);
    assert!(rig.receive(&frame_to(MAC, 42)));
    assert_eq!(rig.rx_desc(1).0, 60);
    assert_eq!(rig.rx_buf(1, 60)[42..], [0; 18]);
}

#[test]
fn receive_spans_descriptors() {
    let rig = Rig::new();
    // 256-byte buffers.
    rig.rx_setup(8, 3 << regs::RCTL_BSIZE_SHIFT);
    let f = frame_to(MAC, 600);
    assert!(rig.receive(&f));
    assert_eq!(rig.rx_desc(0), (256, 0x01, 0));
    assert_eq!(rig.rx_desc(1), (256, 0x01, 0));
    assert_eq!(rig.rx_desc(2), (92, 0x07, 0));
    assert_eq!(rig.rx_buf(1, 256), f[256..512]);
    assert_eq!(rig.rx_buf(2, 88), f[512..]);
    assert_eq!(rig.r(regs::RDH), 3);
    // Too long without LPE: dropped and counted.
    assert!(rig.receive(&frame_to(MAC, 1519)));
    assert_eq!(rig.r(regs::RDH), 3);
    assert_eq!(rig.r(regs::ROC), 1);
}

#[test]
fn receive_filters() {
    let rig = Rig::new();
    rig.rx_setup(16, 0);
    let head = || rig.r(regs::RDH);
    assert!(rig.receive(&frame_to([0x02, 9, 9, 9, 9, 9], 64)));
    assert_eq!(head(), 0, "other unicast dropped");
    assert!(rig.receive(&frame_to([0xff; 6], 64)));
    assert_eq!(head(), 0, "broadcast without BAM dropped");
    rig.w(regs::RCTL, regs::RCTL_EN | regs::RCTL_BAM);
    assert!(rig.receive(&frame_to([0xff; 6], 64)));
    assert_eq!(head(), 1);
    // A second RA entry.
    rig.w(regs::RA + 8, 0x0909_0902);
    rig.w(regs::RA + 12, 0x8000_0909);
    assert!(rig.receive(&frame_to([0x02, 9, 9, 9, 9, 9], 64)));
    assert_eq!(head(), 2);
    // Multicast through the MTA hash (MO 0: bits 47:36 of the address).
    let group = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
    assert!(rig.receive(&frame_to(group, 64)));
    assert_eq!(head(), 2);
    let hash = ((u32::from(group[5]) << 8 | u32::from(group[4])) >> 4) & 0xfff;
    rig.w(regs::MTA + 4 * (hash >> 5), 1 << (hash & 31));
    assert!(rig.receive(&frame_to(group, 64)));
    assert_eq!(head(), 3);
    assert_eq!(rig.r(regs::MPRC), 1);
    // Promiscuous.
    rig.w(regs::RCTL, regs::RCTL_EN | regs::RCTL_UPE | regs::RCTL_MPE);
    assert!(rig.receive(&frame_to([0x02, 7, 7, 7, 7, 7], 64)));
    assert!(rig.receive(&frame_to([0x03, 7, 7, 7, 7, 7], 64)));
    assert_eq!(head(), 5);
    // Receiver off: consumed and dropped.
    rig.w(regs::RCTL, 0);
    assert!(rig.receive(&frame_to(MAC, 64)));
    assert_eq!(head(), 5);
}

#[test]
fn receive_strips_and_filters_vlans() {
    let rig = Rig::new();
    rig.rx_setup(8, regs::RCTL_VFE);
    rig.w(regs::CTRL, rig.r(regs::CTRL) | regs::CTRL_VME);
    let mut f = frame_to(MAC, 100);
    f[12..18].copy_from_slice(&[0x81, 0x00, 0x20, 0x05, 0x08, 0x00]);
    assert!(rig.receive(&f));
    assert_eq!(rig.r(regs::RDH), 0, "VLAN 5 not in VFTA");
    rig.w(regs::VFTA, 1 << 5);
    assert!(rig.receive(&f));
    assert_eq!(rig.rx_desc(0), (100, 0x0f, 0x2005), "VP with the tag in special");
    let got = rig.rx_buf(0, 96);
    assert_eq!(got[..12], f[..12]);
    assert_eq!(got[12..], f[16..]);
}

#[test]
fn receive_without_room_is_held_then_resumed() {
    let rig = Rig::new();
    rig.rx_setup(8, 0);
    rig.w(regs::RDT, 0);
    let f = frame_to(MAC, 64);
    assert!(!rig.receive(&f), "RDH == RDT: no descriptors");
    assert_eq!(rig.r(regs::MPC), 0, "held, not missed");
    let resumes = rig.backend.resumes.load(Ordering::SeqCst);
    rig.w(regs::RDT, 2);
    assert_eq!(rig.backend.resumes.load(Ordering::SeqCst), resumes + 1);
    assert!(rig.receive(&f));
    assert!(rig.receive(&f));
    assert!(!rig.receive(&f));
    // Some room, but not enough: dropped and counted as missed.
    rig.w(regs::RDT, 3);
    rig.w(regs::RCTL, regs::RCTL_EN | regs::RCTL_LPE | 3 << regs::RCTL_BSIZE_SHIFT);
    rig.w(regs::IMS, regs::ICR_RXO);
    assert!(rig.receive(&frame_to(MAC, 600)));
    assert_eq!(rig.r(regs::MPC), 1);
    assert!(rig.irq.level());
    // Bus mastering off: held; turning it on resumes.
    rig.cfg_write(0x04, 0x3);
    assert!(!rig.receive(&f));
    let resumes = rig.backend.resumes.load(Ordering::SeqCst);
    rig.cfg_write(0x04, 0x7);
    assert_eq!(rig.backend.resumes.load(Ordering::SeqCst), resumes + 1);
    assert!(rig.receive(&f));
}

#[test]
fn receive_raises_rxdmt0_at_the_threshold() {
    let rig = Rig::new();
    // 8 descriptors, threshold half: RXDMT0 once 4 or fewer are free.
    rig.rx_setup(8, 0);
    rig.w(regs::RDT, 7);
    for i in 0..3 {
        assert!(rig.receive(&frame_to(MAC, 64)));
        let icr = rig.r(regs::ICR);
        assert_eq!(icr & regs::ICR_RXDMT0 != 0, i == 2, "frame {i}: ICR {icr:#x}");
    }
}

// ---- Transmit ----

#[test]
fn transmit_legacy_frame() {
    let rig = Rig::new();
    rig.tx_setup(8);
    rig.w(regs::IMS, regs::ICR_TXDW);
    let f = frame_to([0xff; 6], 100);
    rig.mem.write(TX_BUFS, &f).unwrap();
    // EOP, IFCS, RS.
    rig.tx_desc(0, TX_BUFS, 0x0b00_0000 | 100, 0);
    rig.w(regs::TDT, 1);
    assert_eq!(rig.sent(), vec![f.clone()]);
    assert_eq!(rig.mem.read_u8(TX_RING + 12).unwrap() & 1, 1, "DD written back");
    assert_eq!(rig.r(regs::TDH), 1);
    assert!(rig.irq.level());
    assert_eq!(rig.r(regs::ICR), regs::ICR_TXDW | regs::ICR_TXQE | regs::ICR_INT_ASSERTED);
    assert_eq!(rig.r(regs::GPTC), 1);
    assert_eq!(rig.r(regs::BPTC), 1);
    // A frame in two buffers, padded (PSP), with a VLAN tag inserted (VLE + VME).
    rig.w(regs::CTRL, rig.r(regs::CTRL) | regs::CTRL_VME);
    rig.mem.write(TX_BUFS + 0x1000, &f[..20]).unwrap();
    rig.mem.write(TX_BUFS + 0x2000, &f[20..40]).unwrap();
    rig.tx_desc(1, TX_BUFS + 0x1000, 20, 0);
    rig.tx_desc(2, TX_BUFS + 0x2000, 0x4300_0000 | 20, 0x0007_0000);
    rig.w(regs::TDT, 3);
    let sent = rig.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].len(), 60);
    assert_eq!(sent[0][12..16], [0x81, 0x00, 0x00, 0x07]);
    assert_eq!(sent[0][16..44], f[12..40]);
    // Legacy IC: a checksum of bytes 14.. at offset 50 (which the driver zeroes).
    rig.w(regs::CTRL, rig.r(regs::CTRL) & !regs::CTRL_VME);
    rig.mem.write(TX_BUFS + 50, &[0, 0]).unwrap();
    rig.tx_desc(3, TX_BUFS, 0x0d00_0000 | 50 << 16 | 100, 14 << 8);
    rig.w(regs::TDT, 4);
    let sent = rig.sent();
    assert_eq!(fold(ones_sum(&sent[0][14..])), 0xffff);
}

/// An Ethernet + IPv4 + TCP packet with `payload` bytes; the TCP checksum field holds
/// the pseudo-header sum, with the TCP length when `with_len`.
fn tcp_packet(payload: usize, with_len: bool) -> Vec<u8> {
    let mut p = frame_to([0x02, 1, 2, 3, 4, 5], 54 + payload);
    let ip_len = (20 + 20 + payload) as u16;
    let ip = &mut p[14..34];
    ip.copy_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 2, 15, 10, 0, 2, 2]);
    if with_len {
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    }
    let tcp = &mut p[34..54];
    tcp.fill(0);
    tcp[0..4].copy_from_slice(&[0x30, 0x39, 0x00, 0x50]);
    tcp[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x19; // FIN, PSH, ACK
    let tcp_len = if with_len { 20 + payload as u64 } else { 0 };
    let pseudo = ones_sum(&p[26..34]) + 6 + tcp_len;
    p[50..52].copy_from_slice(&fold(pseudo).to_be_bytes());
    p
}

/// Checks a segment's IPv4 header and TCP checksums by recomputing them.
fn verify_tcp(seg: &[u8]) {
    assert_eq!(fold(ones_sum(&seg[14..34])), 0xffff, "IPv4 header checksum");
    let tcp_len = seg.len() - 34;
    assert_eq!(u16::from_be_bytes([seg[16], seg[17]]) as usize, seg.len() - 14, "IPv4 total length");
    let pseudo = ones_sum(&seg[26..34]) + 6 + tcp_len as u64;
    assert_eq!(fold(pseudo + ones_sum(&seg[34..])), 0xffff, "TCP checksum");
}

/// A context descriptor: IP 14/24/33, TCP from 34 with the checksum at 50.
fn context(rig: &Rig, i: u64, cmd: u32, hdr_len: u8, mss: u16) {
    let lower_setup = 14 | 24 << 8 | 33 << 16;
    rig.mem.write_u32(TX_RING + 16 * i, lower_setup).unwrap();
    rig.mem.write_u32(TX_RING + 16 * i + 4, 34 | 50 << 8).unwrap();
    rig.mem.write_u32(TX_RING + 16 * i + 8, cmd | 1 << 29).unwrap();
    rig.mem.write_u32(TX_RING + 16 * i + 12, u32::from(hdr_len) << 8 | u32::from(mss) << 16).unwrap();
}

#[test]
fn transmit_checksum_offload() {
    let rig = Rig::new();
    rig.tx_setup(8);
    let p = tcp_packet(333, true);
    rig.mem.write(TX_BUFS, &p).unwrap();
    // Context (TCP, IP), then one data descriptor with POPTS IXSM | TXSM.
    context(&rig, 0, 0x0300_0000, 0, 0);
    rig.tx_desc(1, TX_BUFS, 0x2b10_0000 | p.len() as u32, 0x3 << 8);
    rig.w(regs::TDT, 2);
    let sent = rig.sent();
    assert_eq!(sent.len(), 1);
    verify_tcp(&sent[0]);
    assert_eq!(sent[0][54..], p[54..]);
}

/// Receive checksum offload: a good TCP/IPv4 frame says IPCS and TCPCS, a corrupted one
/// TCPE, a frame that is not IPv4 IXSM; without RXCSUM's bits, IXSM for all.
#[test]
fn receive_checksum_offload() {
    let rig = Rig::new();
    rig.rx_setup(8, regs::RCTL_BAM);
    rig.w(regs::RXCSUM, 0x300);
    let mut p = tcp_packet(101, true);
    p[..6].copy_from_slice(&MAC);
    let ip_sum = !fold(ones_sum(&p[14..34]));
    p[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    p[50..52].fill(0);
    let tcp_sum = !fold(ones_sum(&p[26..34]) + 6 + (p.len() - 34) as u64 + ones_sum(&p[34..]));
    p[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
    let errors = |i: u64| {
        let mut e = [0u8];
        rig.mem.read(RX_RING + 16 * i + 13, &mut e).unwrap();
        e[0]
    };
    assert!(rig.receive(&p));
    assert_eq!((rig.rx_desc(0).1, errors(0)), (0x63, 0), "DD, EOP, TCPCS, IPCS; no errors");
    p[60] ^= 0x55;
    assert!(rig.receive(&p));
    assert_eq!((rig.rx_desc(1).1, errors(1)), (0x63, 0x20), "TCPE");
    p[24] ^= 1;
    assert!(rig.receive(&p));
    assert_eq!(errors(2), 0x60, "IPE and TCPE");
    assert!(rig.receive(&frame_to(MAC, 100)));
    assert_eq!((rig.rx_desc(3).1, errors(3)), (0x07, 0), "not IPv4: IXSM");
    rig.w(regs::RXCSUM, 0);
    p[24] ^= 1;
    assert!(rig.receive(&p));
    assert_eq!((rig.rx_desc(4).1, errors(4)), (0x07, 0), "offload off: IXSM");
}

#[test]
fn transmit_tso_segments() {
    let rig = Rig::new();
    rig.tx_setup(16);
    const PAYLOAD: usize = 10_000;
    const MSS: usize = 1448;
    let p = tcp_packet(PAYLOAD, false);
    rig.mem.write(TX_BUFS, &p).unwrap();
    // TSO context: TSE | IP | TCP with PAYLEN, header 54, MSS 1448.
    context(&rig, 0, 0x0700_0000 | PAYLOAD as u32, 54, MSS as u16);
    // Header alone, then the payload in three pieces; TSE on each, EOP on the last.
    let pieces = [(0usize, 54usize), (54, 4000), (4054, 3000), (7054, 3000)];
    for (i, &(start, len)) in pieces.iter().enumerate() {
        let eop = if i == pieces.len() - 1 { 0x0900_0000 } else { 0 };
        rig.tx_desc(1 + i as u64, TX_BUFS + start as u64, 0x2410_0000 | eop | len as u32, 0x3 << 8);
    }
    rig.w(regs::TDT, 5);
    let sent = rig.sent();
    assert_eq!(sent.len(), PAYLOAD.div_ceil(MSS));
    let mut offset = 0;
    for (i, seg) in sent.iter().enumerate() {
        let last = i == sent.len() - 1;
        let len = seg.len() - 54;
        assert_eq!(len, if last { PAYLOAD - MSS * i } else { MSS });
        verify_tcp(seg);
        assert_eq!(u16::from_be_bytes([seg[18], seg[19]]), 0x1234 + i as u16, "IP identification");
        let seq = u32::from_be_bytes(seg[38..42].try_into().unwrap());
        assert_eq!(seq, 0x1000_0000 + offset as u32);
        assert_eq!(seg[47] & 0x09, if last { 0x09 } else { 0 }, "FIN/PSH on the last only");
        assert_eq!(seg[54..], p[54 + offset..54 + offset + len]);
        offset += len;
    }
    assert_eq!(offset, PAYLOAD);
    assert_eq!(rig.r(regs::TSCTC), 1);
    assert_eq!(rig.r(regs::TDH), 5);
}

#[test]
fn transmit_needs_enable_and_bus_master() {
    let rig = Rig::new();
    rig.tx_setup(8);
    rig.w(regs::TCTL, 0);
    rig.mem.write(TX_BUFS, &frame_to(MAC, 64)).unwrap();
    rig.tx_desc(0, TX_BUFS, 0x0b00_0000 | 64, 0);
    rig.w(regs::TDT, 1);
    assert!(rig.sent().is_empty());
    // Bus mastering off: nothing read, nothing written back.
    rig.cfg_write(0x04, 0x3);
    rig.w(regs::TCTL, regs::TCTL_EN);
    assert!(rig.sent().is_empty());
    assert_eq!(rig.r(regs::TDH), 0);
    assert_eq!(rig.mem.read_u8(TX_RING + 12).unwrap(), 0);
    // Bus mastering on: the pending descriptor goes.
    rig.cfg_write(0x04, 0x7);
    assert_eq!(rig.sent().len(), 1);
    assert_eq!(rig.r(regs::TDH), 1);
}

/// A backend that answers every frame at once, from inside `send`, as a user-mode
/// stack answering ARP does.
struct Echo(Mutex<Option<Arc<dyn FrameSink>>>);

impl NetBackend for Echo {
    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let sink = self.0.lock().unwrap().clone();
        if let Some(s) = sink {
            let mut reply = frame.to_vec();
            reply[..6].copy_from_slice(&MAC);
            s.receive(&reply);
        }
        Ok(())
    }
    fn resume(&self) {}
}

#[test]
fn backend_may_answer_from_inside_send() {
    let rig = Rig::new();
    let echo = Arc::new(Echo(Mutex::new(Some(rig.nic.sink()))));
    rig.nic.connect(echo);
    rig.rx_setup(8, 0);
    rig.tx_setup(8);
    let f = frame_to([0xff; 6], 64);
    rig.mem.write(TX_BUFS, &f).unwrap();
    rig.tx_desc(0, TX_BUFS, 0x0b00_0000 | 64, 0);
    rig.w(regs::TDT, 1);
    assert_eq!(rig.r(regs::RDH), 1, "the answer was received");
    assert_eq!(rig.rx_buf(0, 6), MAC);
}

// ---- Malformed rings ----

/// RAM below 1 MiB, 64 KiB of ROM above it, nothing else.
fn ram_and_rom() -> GuestMemory {
    GuestMemory::new(
        &[1 << 20, 0x1_0000],
        &[
            RegionSpec { guest_base: 0, size: 1 << 20, backing: 0, offset: 0, kind: RegionKind::Ram },
            RegionSpec { guest_base: 1 << 20, size: 0x1_0000, backing: 1, offset: 0, kind: RegionKind::Rom },
        ],
    )
    .unwrap()
}

#[test]
fn malformed_receive_rings_are_harmless() {
    let rig = Rig::with(ram_and_rom(), None);
    let f = frame_to(MAC, 200);
    rig.rx_setup(8, 0);
    // Length 0, heads and tails past the end: refused.
    rig.w(regs::RDLEN, 0);
    assert!(!rig.receive(&f));
    rig.w(regs::RDLEN, 128);
    rig.w(regs::RDH, 9);
    assert!(!rig.receive(&f));
    rig.w(regs::RDH, 0);
    rig.w(regs::RDT, 0xffff);
    assert!(!rig.receive(&f));
    // Buffers in ROM (dropped), in a hole, straddling the end of RAM, at the top of
    // the address space.
    rig.w(regs::RDT, 3);
    let bufs = [1u64 << 20, 0x8000_0000, (1 << 20) - 100, u64::MAX - 50];
    for (i, &b) in bufs.iter().enumerate().take(3) {
        rig.mem.write_u64(RX_RING + 16 * i as u64, b).unwrap();
    }
    for _ in 0..3 {
        assert!(rig.receive(&f));
    }
    let mut rom = [0u8; 256];
    rig.mem.read(1 << 20, &mut rom).unwrap();
    assert_eq!(rom, [0; 256], "ROM unchanged");
    let mut tail = [0u8; 100];
    rig.mem.read((1 << 20) - 100, &mut tail).unwrap();
    assert_eq!(tail[..], f[..100], "the part in RAM was written");
    rig.w(regs::RDH, 0);
    rig.mem.write_u64(RX_RING, bufs[3]).unwrap();
    assert!(rig.receive(&f));
    // The ring itself outside memory, or in ROM.
    for base in [0x8000_0000u64, 0xffff_ffff_ffff_fff0, 1 << 20] {
        rig.w(regs::RDBAL, base as u32);
        rig.w(regs::RDBAH, (base >> 32) as u32);
        rig.w(regs::RDH, 0);
        rig.w(regs::RDT, 3);
        assert!(rig.receive(&f));
    }
    rig.mem.read(1 << 20, &mut rom).unwrap();
    assert_eq!(rom, [0; 256], "ROM unchanged");
    // An oversized frame from the backend: dropped.
    rig.w(regs::RDH, 0);
    assert!(rig.receive(&vec![0u8; quern_net::MAX_FRAME]));
}

#[test]
fn malformed_transmit_rings_are_harmless() {
    let rig = Rig::with(ram_and_rom(), None);
    rig.tx_setup(8);
    rig.mem.write(TX_BUFS, &frame_to(MAC, 64)).unwrap();
    rig.tx_desc(0, TX_BUFS, 0x0b00_0000 | 64, 0);
    // Length 0, heads and tails past the end: nothing happens.
    rig.w(regs::TDLEN, 0);
    rig.w(regs::TDT, 1);
    rig.w(regs::TDLEN, 128);
    rig.w(regs::TDT, 200);
    rig.w(regs::TDH, 300);
    rig.w(regs::TDT, 1);
    assert!(rig.sent().is_empty());
    // Buffers outside memory: the packet is dropped, the descriptor completed.
    rig.w(regs::TDH, 0);
    rig.tx_desc(0, 0x8000_0000, 0x0b00_0000 | 64, 0);
    rig.tx_desc(1, u64::MAX - 10, 0x0b00_0000 | 64, 0);
    rig.w(regs::TDT, 2);
    assert!(rig.sent().is_empty());
    assert_eq!(rig.r(regs::TDH), 2);
    // The ring in a hole, or in ROM (write-back dropped).
    for base in [0x8000_0000u64, 0xffff_ffff_ffff_fff0] {
        rig.w(regs::TDBAL, base as u32);
        rig.w(regs::TDBAH, (base >> 32) as u32);
        rig.w(regs::TDH, 0);
        rig.w(regs::TDT, 3);
        assert_eq!(rig.r(regs::TDH), 0);
    }
    rig.w(regs::TDBAL, 1 << 20);
    rig.w(regs::TDBAH, 0);
    rig.w(regs::TDH, 0);
    rig.w(regs::TDT, 3);
    assert_eq!(rig.r(regs::TDH), 3);
    let mut rom = [0u8; 64];
    rig.mem.read(1 << 20, &mut rom).unwrap();
    assert_eq!(rom, [0; 64]);
    // A chain without EOP past the bound: 64 descriptors of 8 KiB, then EOP. Dropped,
    // every descriptor completed.
    rig.w(regs::TDBAL, TX_RING as u32);
    rig.w(regs::TDLEN, 16 * 128);
    rig.w(regs::TDH, 0);
    for i in 0..65 {
        let eop = if i == 64 { 0x0100_0000 } else { 0 };
        rig.tx_desc(i, TX_BUFS, 0x0800_0000 | eop | 0x2000, 0);
    }
    rig.w(regs::TDT, 65);
    assert!(rig.sent().is_empty());
    assert_eq!(rig.r(regs::TDH), 65);
    // The next packet goes out again.
    rig.tx_desc(65, TX_BUFS, 0x0b00_0000 | 64, 0);
    rig.w(regs::TDT, 66);
    assert_eq!(rig.sent().len(), 1);
    // TSO with a header longer than the packet, and MSS 0.
    context(&rig, 66, 0x0700_0000, 200, 0);
    rig.tx_desc(67, TX_BUFS, 0x2d10_0000 | 64, 0x3 << 8);
    context(&rig, 68, 0x0700_0000, 54, 0);
    rig.tx_desc(69, TX_BUFS, 0x2d10_0000 | 100, 0x3 << 8);
    rig.w(regs::TDT, 70);
    assert_eq!(rig.sent().len(), 1);
}

// ---- Reset ----

#[test]
fn reset_returns_to_power_on() {
    let rig = Rig::new();
    rig.rx_setup(8, regs::RCTL_UPE);
    rig.w(regs::RA, 0);
    rig.w(regs::IMS, !0);
    rig.w(regs::ICS, regs::ICR_TXDW);
    assert!(rig.irq.level());
    rig.nic.reset();
    assert!(!rig.irq.level());
    assert_eq!(rig.cfg_read(0x10), 0, "BAR0 unassigned");
    assert_eq!(rig.cfg_read(0x04) & 0xffff, 0);
    rig.cfg_write(0x10, BAR0 as u32);
    rig.cfg_write(0x04, 0x7);
    assert_eq!(rig.r(regs::RCTL), 0);
    assert_eq!(rig.r(regs::RDLEN), 0);
    assert_eq!(rig.r(regs::IMS), 0);
    assert_eq!(rig.r(regs::ICR), 0);
    assert_eq!(rig.r(regs::STATUS), 0x8008_0783);
    assert_eq!(rig.r(regs::RA), u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]));
    assert!(rig.receive(&frame_to(MAC, 64)), "receiver off: dropped");
    // The cable stays pulled across a reset.
    rig.nic.set_link(false);
    rig.nic.reset();
    rig.cfg_write(0x10, BAR0 as u32);
    rig.cfg_write(0x04, 0x7);
    assert_eq!(rig.r(regs::STATUS) & regs::STATUS_LU, 0);
}

// ---- Save and restore ----

#[test]
fn snapshot_keeps_registers_eeprom_phy_and_a_packet_half_sent() {
    let r = Rig::new();
    r.w(regs::RA + 8, 0x1234_5678);
    r.w(regs::MTA + 4, 0x8000);
    r.w(regs::IMS, regs::ICR_LSC);
    r.nic.set_link(false);
    assert!(r.irq.level());
    mdic(&r, 1, 4, regs::MDIC_OP_WRITE, 0x01e1);
    r.io_write(0, regs::RCTL);
    // A TSO packet whose header and first payload piece the NIC has taken.
    r.tx_setup(16);
    let p = tcp_packet(6000, false);
    r.mem.write(TX_BUFS, &p).unwrap();
    context(&r, 0, 0x0700_0000 | 6000, 54, 1448);
    r.tx_desc(1, TX_BUFS, 0x2410_0000 | 54, 0x3 << 8);
    r.tx_desc(2, TX_BUFS + 54, 0x2410_0000 | 3000, 0x3 << 8);
    r.w(regs::TDT, 3);
    assert!(r.sent().is_empty());

    let s = Rig::with_mac(GuestMemory::flat(1 << 20).unwrap(), None, [0x02, 0, 0, 0, 0, 9]);
    let mut ram = vec![0; 1 << 20];
    r.mem.read(0, &mut ram).unwrap();
    s.mem.write(0, &ram).unwrap(); // the machine restores memory alongside
    let state = lock(&r.nic.state()).save_state();
    crate::testutil::restore_into(&mut *lock(&s.nic.state()), &state);
    assert!(s.irq.level(), "INTA is driven again");
    for off in [regs::CTRL, regs::STATUS, regs::ICS, regs::IMS, regs::RA, regs::RA + 4, regs::RA + 8, regs::MTA + 4] {
        assert_eq!(s.r(off), r.r(off), "register {off:#x}");
    }
    assert_eq!(
        (0..0x40).map(|a| bitbang_read(&s, a)).collect::<Vec<_>>(),
        (0..0x40).map(|a| bitbang_read(&r, a)).collect::<Vec<_>>()
    );
    assert_eq!(mdic(&s, 1, 4, regs::MDIC_OP_READ, 0) & 0xffff, 0x01e1);
    assert_eq!(mdic(&s, 1, 1, regs::MDIC_OP_READ, 0) & 4, 0, "the PHY's link is down too");
    assert_eq!(s.io_read(0), regs::RCTL, "IOADDR");
    // The rest of the packet completes it on both.
    for rig in [&r, &s] {
        rig.tx_desc(3, TX_BUFS + 3054, 0x2d10_0000 | 3000, 0x3 << 8);
        rig.w(regs::TDT, 4);
    }
    let sent = s.sent();
    assert_eq!(sent.len(), 5);
    assert_eq!(sent, r.sent());
    let fixed = ["/config/bytes", "/regs", "/eeprom/words", "/phy/regs"];
    crate::testutil::assert_refuses_malformed(&mut *lock(&s.nic.state()), &fixed);
}
