use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use quern_block::{check_range, BlockBackend, BlockError, MemBackend};
use quern_core::{GuestMemory, TestIrq};

use super::*;
use crate::port::PortGroup;

const BM_BASE: u16 = 0xc000;

/// A disk of any size whose sector n holds bytes derived from n, recording what it is
/// asked to do; writes land in a small map.
#[derive(Default)]
struct Synthetic {
    size: u64,
    last_read: AtomicU64,
    flushes: AtomicUsize,
    writes: std::sync::Mutex<Vec<(u64, Vec<u8>)>>,
    /// Reports a write-through medium (no volatile write cache).
    write_through: bool,
}

fn pattern(offset: u64) -> u8 {
    let sector = offset / 512;
    (sector as u8) ^ (offset % 512) as u8 ^ (sector >> 8) as u8
}

impl BlockBackend for Synthetic {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len(), self.size)?;
        self.last_read.store(offset, Ordering::SeqCst);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(offset + i as u64);
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len(), self.size)?;
        self.writes.lock().unwrap().push((offset, buf.to_vec()));
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn write_cache(&self) -> bool {
        !self.write_through
    }
}

/// A disk image of `sectors` sectors filled with [`pattern`].
fn disk_image(sectors: usize) -> Vec<u8> {
    (0..sectors * 512).map(|i| pattern(i as u64)).collect()
}

fn cd_image(sectors: usize) -> Vec<u8> {
    (0..sectors * 2048).map(|i| ((i / 2048) as u8).wrapping_mul(7) ^ (i as u8)).collect()
}

struct Rig {
    ide: PiixIde,
    mem: Arc<GuestMemory>,
    irq: [Arc<TestIrq>; 2],
}

fn drive(backend: Arc<dyn BlockBackend>, kind: DriveKind, bus: u8, unit: u8) -> IdeDriveConfig {
    IdeDriveConfig { backend: Some(backend), kind, bus, unit }
}

impl Rig {
    fn new(drives: Vec<IdeDriveConfig>) -> Rig {
        let mem = Arc::new(GuestMemory::flat(1 << 20).unwrap());
        let irq = [Arc::new(TestIrq::default()), Arc::new(TestIrq::default())];
        let ide = PiixIde::new(mem.clone(), [irq[0].clone(), irq[1].clone()], drives).unwrap();
        Rig { ide, mem, irq }
    }

    /// One disk as primary master.
    fn disk(backend: Arc<dyn BlockBackend>) -> Rig {
        Rig::new(vec![drive(backend, DriveKind::Disk, 0, 0)])
    }

    fn access(&mut self, port: u16, data: &mut [u8], write: bool) {
        let (window, off) = match port {
            0x1f0..=0x1f7 => (IdeWindow::Command(0), port - 0x1f0),
            0x3f6 => (IdeWindow::Control(0), 0),
            0x170..=0x177 => (IdeWindow::Command(1), port - 0x170),
            0x376 => (IdeWindow::Control(1), 0),
            _ => {
                let claimed = if write { self.ide.io_write(port, data) } else { self.ide.io_read(port, data) };
                if !claimed {
                    data.fill(0xff);
                }
                return;
            }
        };
        if write {
            self.ide.window_write(window, u64::from(off), data);
        } else {
            self.ide.window_read(window, u64::from(off), data);
        }
    }

    fn outb(&mut self, port: u16, v: u8) {
        self.access(port, &mut [v], true);
    }
    fn inb(&mut self, port: u16) -> u8 {
        let mut d = [0];
        self.access(port, &mut d, false);
        d[0]
    }
    fn outw(&mut self, port: u16, v: u16) {
        self.access(port, &mut v.to_le_bytes(), true);
    }
    fn inw(&mut self, port: u16) -> u16 {
        let mut d = [0; 2];
        self.access(port, &mut d, false);
        u16::from_le_bytes(d)
    }
    fn outl(&mut self, port: u16, v: u32) {
        self.access(port, &mut v.to_le_bytes(), true);
    }
    fn inl(&mut self, port: u16) -> u32 {
        let mut d = [0; 4];
        self.access(port, &mut d, false);
        u32::from_le_bytes(d)
    }

    fn config_read(&mut self, reg: u16) -> u32 {
        self.ide.config_read(reg)
    }
    fn config_write(&mut self, reg: u16, v: u32) {
        self.ide.config_write(reg, v, 0xffff_ffff);
    }

    /// Places BAR4 at [`BM_BASE`] with I/O and bus mastering on.
    fn enable_bm(&mut self) {
        self.config_write(0x20, u32::from(BM_BASE));
        self.config_write(0x04, 0x05);
    }

    /// Sets up an LBA28 command's registers on the primary channel's master.
    fn lba28(&mut self, lba: u32, count: u8) {
        self.outb(0x1f6, 0xe0 | (lba >> 24) as u8 & 0x0f);
        self.outb(0x1f2, count);
        self.outb(0x1f3, lba as u8);
        self.outb(0x1f4, (lba >> 8) as u8);
        self.outb(0x1f5, (lba >> 16) as u8);
    }

    fn lba48(&mut self, lba: u64, count: u16) {
        self.outb(0x1f6, 0xe0);
        for shift in [8, 0] {
            self.outb(0x1f2, (count >> shift) as u8);
        }
        for (port, byte) in [(0x1f3, 0), (0x1f4, 1), (0x1f5, 2)] {
            self.outb(port, (lba >> (8 * (byte + 3))) as u8);
        }
        for (port, byte) in [(0x1f3, 0), (0x1f4, 1), (0x1f5, 2)] {
            self.outb(port, (lba >> (8 * byte)) as u8);
        }
    }

    /// Reads `n` bytes from the primary data port.
    fn read_data(&mut self, n: usize) -> Vec<u8> {
        (0..n / 2).flat_map(|_| self.inw(0x1f0).to_le_bytes()).collect()
    }

    fn write_data(&mut self, data: &[u8]) {
        for w in data.chunks(2) {
            self.outw(0x1f0, u16::from_le_bytes([w[0], w[1]]));
        }
    }

    fn identify(&mut self) -> Vec<u16> {
        self.outb(0x1f7, 0xec);
        assert_eq!(self.inb(0x3f6), 0x58, "DRDY DSC DRQ");
        self.read_data(512).chunks(2).map(|w| u16::from_le_bytes([w[0], w[1]])).collect()
    }

    /// Status, error, interrupt line of the primary channel (reading status lowers it).
    fn result(&mut self) -> (u8, u8, bool) {
        let irq = self.irq[0].level();
        let err = self.inb(0x1f1);
        (self.inb(0x1f7), err, irq)
    }
}

fn ata_string(words: &[u16]) -> String {
    words.iter().flat_map(|w| w.to_be_bytes()).map(char::from).collect::<String>().trim_end().to_string()
}

#[test]
fn pci_function_identity_bar4_and_timing_registers() {
    let mut r = Rig::new(vec![]);
    assert_eq!(r.config_read(0x00), 0x7010_8086);
    assert_eq!(r.config_read(0x08), 0x0101_8000, "class 01 01, prog-if 0x80, revision 0");
    assert_eq!(r.config_read(0x04), 0x0280_0000, "command 0, status: medium DEVSEL, fast back-to-back");
    assert_eq!(r.config_read(0x20), 1, "BAR4: I/O, unassigned");
    r.config_write(0x20, 0xffff_ffff);
    assert_eq!(r.config_read(0x20), 0xffff_fff1, "16 ports");
    for bar in [0x10, 0x14, 0x18, 0x1c, 0x24] {
        r.config_write(bar, 0xffff_ffff);
        assert_eq!(r.config_read(bar), 0, "legacy mode: no BAR {bar:#x}");
    }
    assert_eq!(r.config_read(u16::from(IDETIM)), 0x8000_8000, "both channels decode");
    r.config_write(u16::from(IDETIM), 0xa307_e377);
    assert_eq!(r.config_read(u16::from(IDETIM)), 0xa307_e377);

    // BAR4 answers only with I/O decoding on, and only where it is.
    r.config_write(0x20, u32::from(BM_BASE));
    assert_eq!(r.inb(BM_BASE + 2), 0xff);
    r.config_write(0x04, 0x01);
    r.outl(BM_BASE + 4, 0x1234_5677);
    assert_eq!(r.inl(BM_BASE + 4), 0x1234_5674, "dword aligned");
    r.outb(BM_BASE + 2, 0x60);
    assert_eq!(r.inb(BM_BASE + 2), 0x60, "drive DMA-capable bits are kept");
    r.config_write(0x20, 0xd000);
    assert_eq!(r.inb(BM_BASE + 2), 0xff, "moved away");
    assert_eq!(r.inb(0xd002), 0x60);
    assert_eq!(r.inl(0xd00c), 0, "secondary channel's PRD address");
    r.ide.reset();
    assert_eq!(r.config_read(0x20), 1);
    assert_eq!(r.inb(0xd002), 0xff);
}

#[test]
fn bar4_through_the_pci_root() {
    use crate::pci::{PciRoot, PciWindow};
    let mem = Arc::new(GuestMemory::flat(4096).unwrap());
    let ide = Arc::new(std::sync::Mutex::new(
        PiixIde::new(mem, [Arc::new(TestIrq::default()), Arc::new(TestIrq::default())], vec![]).unwrap(),
    ));
    let mut root = PciRoot::new();
    root.bus_mut().add(PCI_DEVICE, PCI_FUNCTION, ide.clone()).unwrap();
    let cfg = |root: &mut PciRoot, reg: u32, v: u32| {
        root.window_write(PciWindow::Address, 0, &(0x8000_0900 | reg).to_le_bytes());
        root.window_write(PciWindow::Data, 0, &v.to_le_bytes());
    };
    let mut b = [0u8];
    assert!(!root.bus().io_read(0xc002, &mut b), "unassigned");
    cfg(&mut root, 0x20, 0xc001);
    cfg(&mut root, 0x04, 0x05);
    assert!(root.bus().io_write(0xc002, &[0x20]));
    assert!(root.bus().io_read(0xc002, &mut b));
    assert_eq!(b, [0x20]);
    assert!(!root.bus().io_read(0xc010, &mut b), "past the 16 ports");
    assert!(!root.bus().io_read(0xbfff, &mut b));
}

#[test]
fn identify_device_words() {
    // 20480 sectors, no partition table: 20 cylinders of 16 heads, 63 sectors.
    let mut r = Rig::disk(Arc::new(MemBackend::new(disk_image(20480), false)));
    assert!(!r.irq[0].level());
    let w = r.identify();
    assert!(r.irq[0].level(), "IDENTIFY interrupts when its data is ready");
    assert_eq!(r.inb(0x1f7), 0x50, "DRQ clear after 512 bytes");
    assert!(!r.irq[0].level(), "reading status lowers INTRQ");
    assert_eq!(w[0], 0x0040);
    assert_eq!((w[1], w[3], w[6]), (20, 16, 63));
    assert_eq!((w[54], w[55], w[56]), (20, 16, 63));
    assert_eq!(u32::from(w[57]) | u32::from(w[58]) << 16, 20 * 16 * 63);
    assert_eq!(ata_string(&w[10..20]), "QM00001");
    assert_eq!(ata_string(&w[23..27]), "2.5+");
    assert_eq!(ata_string(&w[27..47]), "QEMU HARDDISK");
    assert_eq!(w[47], 0x8010);
    assert_eq!(w[49], 0x0b00, "IORDY, LBA, DMA");
    assert_eq!(w[53], 7);
    assert_eq!(w[59], 0x0110, "multiple mode on, 16 sectors");
    assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, 20480);
    assert_eq!((w[62], w[63], w[64]), (0x07, 0x07, 0x03));
    assert_eq!(w[80], 0xf0);
    assert_eq!(w[83], 0x7400, "48-bit, FLUSH CACHE, FLUSH CACHE EXT");
    assert_eq!(w[86], 0x3400);
    assert_eq!(w[82] & 0x4020, 0x4020);
    assert_eq!(w[85] & 0x20, 0x20, "write cache enabled");
    assert_eq!(w[88], 0x203f, "UDMA 0-5, UDMA5 selected");
    assert_eq!(w[93] & 0x2000, 0x2000);
    assert_eq!(w[100..104], [20480, 0, 0, 0]);
}

#[test]
fn identify_capacity_words_of_a_large_disk() {
    let sectors = 0x1_2345_6789u64;
    let mut r = Rig::disk(Arc::new(Synthetic { size: sectors * 512, ..Default::default() }));
    let w = r.identify();
    assert_eq!(u32::from(w[60]) | u32::from(w[61]) << 16, 0x0fff_ffff, "LBA28 capacity saturates");
    assert_eq!(w[100..104], [0x6789, 0x2345, 0x0001, 0]);
    assert_eq!((w[1], w[3], w[6]), (16383, 16, 63));
}

#[test]
fn geometry_follows_the_partition_table() {
    let mbr = |end_head: u8, end_sector: u8| {
        let mut img = vec![0u8; 4096 * 512];
        img[510] = 0x55;
        img[511] = 0xaa;
        img[0x1be + 5] = end_head;
        img[0x1be + 6] = end_sector;
        img[0x1be + 12..0x1be + 16].copy_from_slice(&100u32.to_le_bytes());
        guess_geometry(&MemBackend::new(img, false))
    };
    assert_eq!(mbr(3, 32), Chs { cylinders: 32, heads: 4, sectors: 32 });
    assert_eq!(mbr(254, 63), Chs { cylinders: 4, heads: 16, sectors: 63 }, "translated: standard geometry");
    assert_eq!(mbr(0, 0), Chs { cylinders: 4, heads: 16, sectors: 63 });
    assert_eq!(guess_geometry(&MemBackend::new(vec![0; 512], false)).cylinders, 2, "at least 2 cylinders");
}

/// A synthetic disk of `sectors` sectors whose sector 0 is an MBR with one partition
/// ending at head `end_head`, sector 63 (no MBR without one).
struct WithMbr(Synthetic, [u8; 512]);

impl WithMbr {
    fn new(sectors: u64, end_head: Option<u8>) -> Self {
        let mut mbr = [0u8; 512];
        if let Some(h) = end_head {
            mbr[510..].copy_from_slice(&[0x55, 0xaa]);
            mbr[0x1be + 5] = h;
            mbr[0x1be + 6] = 63;
            mbr[0x1be + 12] = 1;
        }
        WithMbr(Synthetic { size: sectors * 512, ..Default::default() }, mbr)
    }
}

impl BlockBackend for WithMbr {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.0.read_at(offset, buf)?;
        if offset == 0 {
            let n = buf.len().min(512);
            buf[..n].copy_from_slice(&self.1[..n]);
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.0.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }
}

#[test]
fn bios_translation_as_qemu_picks_it() {
    const MIB: u64 = 2048;
    assert_eq!(bios_translation(&WithMbr::new(256 * MIB, None)), 0, "520 cylinders: none");
    assert_eq!(bios_translation(&WithMbr::new(512 * MIB, None)), 1, "1040 cylinders: LBA");
    assert_eq!(bios_translation(&WithMbr::new(512 * MIB, Some(15))), 0, "the table's 16 heads are the disk's");
    assert_eq!(bios_translation(&WithMbr::new(2048 * MIB, Some(254))), 2, "255 heads, small: large");
    assert_eq!(bios_translation(&WithMbr::new(8192 * MIB, Some(254))), 1, "255 heads, 8 GiB: LBA");
    assert_eq!(guess_geometry(&WithMbr::new(2048 * MIB, Some(254))), Chs { cylinders: 4161, heads: 16, sectors: 63 });
}

#[test]
fn pio_read_lba28() {
    let mut r = Rig::disk(Arc::new(MemBackend::new(disk_image(64), false)));
    r.lba28(5, 2);
    r.outb(0x1f7, 0x20);
    for s in 5..7u64 {
        let (status, _, irq) = r.result();
        assert_eq!(status, 0x58);
        assert!(irq, "one interrupt per DRQ block");
        let data = r.read_data(512);
        assert!(data.iter().enumerate().all(|(i, &b)| b == pattern(s * 512 + i as u64)), "sector {s}");
    }
    let (status, _, irq) = r.result();
    assert_eq!(status, 0x50);
    assert!(!irq, "no interrupt after the last block of a read");
    assert_eq!((r.inb(0x1f3), r.inb(0x1f4), r.inb(0x1f5), r.inb(0x1f2)), (7, 0, 0, 0), "next LBA, count 0");
    // Data reads with DRQ clear give 0 and move nothing.
    assert_eq!(r.inw(0x1f0), 0);
    assert_eq!(r.irq[0].rising_edges(), 2);
}

#[test]
fn pio_read_with_dword_accesses() {
    let mut r = Rig::disk(Arc::new(MemBackend::new(disk_image(8), false)));
    r.lba28(3, 1);
    r.outb(0x1f7, 0x20);
    let data: Vec<u8> = (0..128).flat_map(|_| r.inl(0x1f0).to_le_bytes()).collect();
    assert!(data.iter().enumerate().all(|(i, &b)| b == pattern(3 * 512 + i as u64)));
    assert_eq!(r.inb(0x1f7), 0x50);
}

#[test]
fn pio_write_lba28_and_read_back() {
    let disk = Arc::new(MemBackend::new(vec![0; 32 * 512], false));
    let mut r = Rig::disk(disk.clone());
    r.lba28(9, 2);
    r.outb(0x1f7, 0x30);
    let (status, _, irq) = r.result();
    assert_eq!(status, 0x58);
    assert!(!irq, "the first block is asked for without an interrupt");
    r.write_data(&[0xa5; 512]);
    let (status, _, irq) = r.result();
    assert_eq!(status, 0x58);
    assert!(irq);
    r.write_data(&[0x5a; 512]);
    let (status, _, irq) = r.result();
    assert_eq!(status, 0x50);
    assert!(irq, "completion interrupts");
    let c = disk.contents();
    assert!(c[9 * 512..10 * 512].iter().all(|&b| b == 0xa5));
    assert!(c[10 * 512..11 * 512].iter().all(|&b| b == 0x5a));
    assert!(c[..9 * 512].iter().chain(&c[11 * 512..]).all(|&b| b == 0));
    assert_eq!(r.inb(0x1f3), 11);
}

#[test]
fn lba48_addresses_counts_and_hob_readback() {
    let disk = Arc::new(Synthetic { size: 1 << 50, ..Default::default() });
    let mut r = Rig::disk(disk.clone());
    let lba = 0x0123_4567_89ab;
    r.lba48(lba, 0x0102);
    assert_eq!(r.inb(0x1f2), 0x02);
    r.outb(0x3f6, 0x80);
    assert_eq!(r.inb(0x1f2), 0x01, "HOB: the high byte of the count");
    assert_eq!(r.inb(0x1f5), 0x01);
    r.outb(0x3f6, 0x00);
    r.outb(0x1f7, 0x24); // READ SECTORS EXT
    assert_eq!(disk.last_read.load(Ordering::SeqCst), lba * 512);
    for _ in 0..0x102 {
        let _ = r.read_data(512);
    }
    assert_eq!(r.inb(0x1f7), 0x50);
    assert_eq!(disk.last_read.load(Ordering::SeqCst), (lba + 0x101) * 512);
    let next = lba + 0x102;
    assert_eq!(r.inb(0x1f3), next as u8);
    r.outb(0x3f6, 0x80);
    assert_eq!(
        (r.inb(0x1f3), r.inb(0x1f4), r.inb(0x1f5)),
        ((next >> 24) as u8, (next >> 32) as u8, (next >> 40) as u8)
    );
    // A write to any command block register ends HOB read-back.
    r.outb(0x1f1, 0);
    assert_eq!(r.inb(0x1f3), next as u8);

    // Count 0 means 65536 sectors with LBA48.
    r.lba48(8, 0);
    r.outb(0x1f7, 0x42); // READ VERIFY SECTORS EXT
    assert_eq!(r.result().0, 0x50);
}

#[test]
fn chs_addressing_and_initialize_device_parameters() {
    let mut r = Rig::disk(Arc::new(MemBackend::new(disk_image(4096), false)));
    let chs = |r: &mut Rig, cyl: u16, head: u8, sector: u8| {
        r.outb(0x1f6, 0xa0 | head);
        r.outb(0x1f2, 1);
        r.outb(0x1f3, sector);
        r.outb(0x1f4, cyl as u8);
        r.outb(0x1f5, (cyl >> 8) as u8);
        r.outb(0x1f7, 0x20);
    };
    let check = |r: &mut Rig, lba: u64| {
        assert_eq!(r.inb(0x1f7), 0x58);
        let data = r.read_data(512);
        assert!(data.iter().enumerate().all(|(i, &b)| b == pattern(lba * 512 + i as u64)), "LBA {lba}");
    };
    // Default 16 heads, 63 sectors: C/H/S 1/2/3 is LBA (1*16+2)*63+2.
    chs(&mut r, 1, 2, 3);
    check(&mut r, 1136);
    assert_eq!((r.inb(0x1f4), r.inb(0x1f6) & 0x0f, r.inb(0x1f3)), (1, 2, 4), "next sector in CHS");
    // INITIALIZE DEVICE PARAMETERS: 4 heads, 32 sectors.
    r.outb(0x1f6, 0xa3);
    r.outb(0x1f2, 32);
    r.outb(0x1f7, 0x91);
    assert_eq!(r.result().0, 0x50);
    chs(&mut r, 1, 2, 3);
    check(&mut r, 194);
    let w = r.identify();
    assert_eq!((w[54], w[55], w[56]), (32, 4, 32), "current translation");
    // Sector 0 and a head past the translation do not exist.
    chs(&mut r, 0, 0, 0);
    assert_eq!(r.result(), (0x41, 0x10, true), "IDNF");
    chs(&mut r, 0, 5, 1);
    assert_eq!(r.result(), (0x41, 0x10, true));
    // Sectors per track 0 is refused.
    r.outb(0x1f2, 0);
    r.outb(0x1f7, 0x91);
    assert_eq!(r.result(), (0x41, 0x04, true));
}

#[test]
fn read_and_write_multiple() {
    let disk = Arc::new(MemBackend::new(disk_image(64), false));
    let mut r = Rig::disk(disk.clone());
    r.outb(0x1f2, 4);
    r.outb(0x1f7, 0xc6); // SET MULTIPLE MODE
    assert_eq!(r.result(), (0x50, 0, true));
    assert_eq!(r.identify()[59], 0x0104);
    r.lba28(10, 10);
    r.outb(0x1f7, 0xc4); // READ MULTIPLE: blocks of 4, 4, 2
    let mut got = Vec::new();
    for n in [4, 4, 2] {
        let (status, _, irq) = r.result();
        assert_eq!((status, irq), (0x58, true));
        got.extend(r.read_data(512 * n));
    }
    assert_eq!(r.result().0, 0x50);
    assert_eq!(got, disk.contents()[10 * 512..20 * 512]);
    assert_eq!(r.irq[0].rising_edges(), 5, "SET MULTIPLE, IDENTIFY, three blocks");

    r.lba28(40, 6);
    r.outb(0x1f7, 0xc5); // WRITE MULTIPLE: blocks of 4, 2
    assert_eq!(r.result(), (0x58, 0, false));
    r.write_data(&[1; 4 * 512]);
    assert_eq!(r.result(), (0x58, 0, true));
    r.write_data(&[2; 2 * 512]);
    assert_eq!(r.result(), (0x50, 0, true));
    let c = disk.contents();
    assert!(c[40 * 512..44 * 512].iter().all(|&b| b == 1));
    assert!(c[44 * 512..46 * 512].iter().all(|&b| b == 2));

    // Not a power of two, or more than 16: refused, the setting stays.
    for bad in [3, 32] {
        r.outb(0x1f2, bad);
        r.outb(0x1f7, 0xc6);
        assert_eq!(r.result(), (0x41, 0x04, true));
    }
    // Count 0 turns multiple mode off; then READ MULTIPLE aborts.
    r.outb(0x1f2, 0);
    r.outb(0x1f7, 0xc6);
    assert_eq!(r.result().0, 0x50);
    r.lba28(0, 1);
    r.outb(0x1f7, 0xc4);
    assert_eq!(r.result(), (0x41, 0x04, true));
}

/// Writes a PRD table at `table` from (address, byte count) pairs, EOT on the last.
fn prd_table(mem: &GuestMemory, table: u64, entries: &[(u32, u32)]) {
    for (i, &(addr, len)) in entries.iter().enumerate() {
        let eot = if i + 1 == entries.len() { 0x8000_0000 } else { 0 };
        mem.write_u32(table + 8 * i as u64, addr).unwrap();
        mem.write_u32(table + 8 * i as u64 + 4, (len & 0xffff) | eot).unwrap();
    }
}

#[test]
fn dma_read_and_write_through_prd_tables() {
    let disk = Arc::new(MemBackend::new(disk_image(256), false));
    let mut r = Rig::disk(disk.clone());
    r.enable_bm();
    prd_table(&r.mem, 0x1000, &[(0x2000, 512), (0x3000, 0x600)]);
    r.outl(BM_BASE + 4, 0x1000);
    r.lba28(8, 4);
    r.outb(0x1f7, 0xc8); // READ DMA
    assert_eq!(r.inb(0x3f6), 0x58, "DRQ until the bus master runs");
    assert!(!r.irq[0].level());
    r.outb(BM_BASE, 0x09); // to memory, start
    assert!(r.irq[0].level());
    assert_eq!(r.inb(BM_BASE + 2), 0x04, "interrupt, no longer active");
    assert_eq!(r.result(), (0x50, 0, true));
    let c = disk.contents();
    let mut got = vec![0; 512];
    r.mem.read(0x2000, &mut got).unwrap();
    assert_eq!(got, c[8 * 512..9 * 512]);
    let mut got = vec![0; 0x600];
    r.mem.read(0x3000, &mut got).unwrap();
    assert_eq!(got, c[9 * 512..12 * 512]);
    assert_eq!(r.inb(0x1f3), 12);
    r.outb(BM_BASE, 0x08);
    r.outb(BM_BASE + 2, 0x06);
    assert_eq!(r.inb(BM_BASE + 2), 0);

    // The other order: bus master first, then WRITE DMA EXT; one 64 KiB entry (count 0).
    r.mem.fill(0x10000, 0x10000, 0x77).unwrap();
    prd_table(&r.mem, 0x1000, &[(0x10000, 0)]);
    r.outb(BM_BASE, 0x01);
    assert_eq!(r.inb(BM_BASE + 2), 0x01, "active");
    r.lba48(100, 128);
    r.outb(0x1f7, 0x35);
    assert_eq!(r.inb(BM_BASE + 2), 0x04);
    assert_eq!(r.result(), (0x50, 0, true));
    let c = disk.contents();
    assert!(c[100 * 512..228 * 512].iter().all(|&b| b == 0x77));
    assert_eq!(c[228 * 512], pattern(228 * 512));
}

#[test]
fn dma_with_more_prd_space_than_needed_stays_active() {
    let mut r = Rig::disk(Arc::new(MemBackend::new(disk_image(16), false)));
    r.enable_bm();
    prd_table(&r.mem, 0x1000, &[(0x2000, 4096)]);
    r.outl(BM_BASE + 4, 0x1000);
    r.lba28(0, 1);
    r.outb(0x1f7, 0xc8);
    r.outb(BM_BASE, 0x09);
    assert_eq!(r.inb(BM_BASE + 2), 0x05, "interrupt, still active");
    assert_eq!(r.result(), (0x50, 0, true));
}

#[test]
fn dma_with_too_short_prd_table_stops_without_interrupt() {
    let disk = Arc::new(MemBackend::new(disk_image(16), false));
    let mut r = Rig::disk(disk.clone());
    r.enable_bm();
    prd_table(&r.mem, 0x1000, &[(0x2000, 512)]);
    r.outl(BM_BASE + 4, 0x1000);
    r.lba28(0, 2);
    r.outb(0x1f7, 0xc8);
    r.outb(BM_BASE, 0x09);
    assert_eq!(r.inb(BM_BASE + 2), 0x00, "neither active nor interrupt");
    assert_eq!(r.result(), (0x50, 0, false));
    assert_eq!(r.mem.read_u8(0x2000).unwrap(), 0, "nothing moved");
}

#[test]
fn dma_outside_ram_is_an_error_not_a_crash() {
    let mut r = Rig::disk(Arc::new(MemBackend::new(disk_image(16), false)));
    r.enable_bm();
    let dma = |r: &mut Rig, cmd: u8| {
        r.outb(BM_BASE + 2, 0x06);
        r.lba28(0, 2);
        r.outb(0x1f7, cmd);
        r.outb(BM_BASE, 0x09);
        let bm = r.inb(BM_BASE + 2);
        r.outb(BM_BASE, 0x00);
        (bm, r.result())
    };
    // A buffer past the end of RAM (1 MiB), for a read and for a write.
    prd_table(&r.mem, 0x1000, &[(0x2000, 512), (0xfff0_0000, 512)]);
    r.outl(BM_BASE + 4, 0x1000);
    assert_eq!(dma(&mut r, 0xc8), (0x06, (0x41, 0x04, true)), "BM error + interrupt, ABRT");
    assert_eq!(dma(&mut r, 0xca), (0x06, (0x41, 0x04, true)));
    // A buffer straddling the end of RAM.
    prd_table(&r.mem, 0x1000, &[(0x10_0000 - 256, 1024)]);
    assert_eq!(dma(&mut r, 0xc8), (0x06, (0x41, 0x04, true)));
    // The PRD table itself outside RAM.
    r.outl(BM_BASE + 4, 0xffff_fff0);
    assert_eq!(dma(&mut r, 0xc8), (0x06, (0x41, 0x04, true)));
    // Bus mastering off in the command register: a master abort.
    r.outl(BM_BASE + 4, 0x1000);
    prd_table(&r.mem, 0x1000, &[(0x2000, 1024)]);
    r.config_write(0x04, 0x01);
    assert_eq!(dma(&mut r, 0xc8), (0x06, (0x41, 0x04, true)));
    r.config_write(0x04, 0x05);
    assert_eq!(dma(&mut r, 0xc8), (0x04, (0x50, 0, true)), "and it works again");
}

#[test]
fn sectors_past_the_end_are_id_not_found() {
    let disk = Arc::new(MemBackend::new(disk_image(16), false));
    let mut r = Rig::disk(disk.clone());
    r.lba28(16, 1);
    r.outb(0x1f7, 0x20);
    assert_eq!(r.result(), (0x41, 0x10, true));
    r.lba28(16, 1);
    r.outb(0x1f7, 0x40);
    assert_eq!(r.result(), (0x41, 0x10, true), "READ VERIFY");
    // A read that runs off the end delivers what exists, then fails.
    r.lba28(15, 2);
    r.outb(0x1f7, 0x20);
    assert_eq!(r.result().0, 0x58);
    let _ = r.read_data(512);
    assert_eq!(r.result(), (0x41, 0x10, true));
    assert_eq!(r.inb(0x1f3), 16, "the LBA registers name the first sector in error");
    // A write past the end: the data is taken, then refused; nothing changes.
    r.lba28(20, 1);
    r.outb(0x1f7, 0x30);
    r.write_data(&[9; 512]);
    assert_eq!(r.result(), (0x41, 0x10, true));
    assert_eq!(disk.contents(), disk_image(16));
    // DMA past the end.
    r.enable_bm();
    prd_table(&r.mem, 0x1000, &[(0x2000, 1024)]);
    r.outl(BM_BASE + 4, 0x1000);
    r.lba48(u64::MAX >> 16, 2);
    r.outb(0x1f7, 0x25);
    r.outb(BM_BASE, 0x09);
    assert_eq!(r.result(), (0x41, 0x10, true));
    assert_eq!(r.inb(BM_BASE + 2), 0x04);
}

#[test]
fn unsupported_commands_abort() {
    let mut r = Rig::disk(Arc::new(MemBackend::new(disk_image(16), false)));
    for cmd in [0x00, 0xb0, 0xff, 0xa0, 0xa1, 0x08, 0x06] {
        r.outb(0x1f7, cmd);
        assert_eq!(r.result(), (0x41, 0x04, true), "command {cmd:#x}");
    }
    // The next command clears the error.
    r.outb(0x1f7, 0xe7);
    assert_eq!(r.result(), (0x50, 0, true));
}

#[test]
fn read_only_media_refuse_writes() {
    let disk = Arc::new(MemBackend::new(disk_image(16), true));
    let mut r = Rig::disk(disk.clone());
    for cmd in [0x30, 0x34, 0xc5, 0xca, 0x35] {
        r.lba28(0, 1);
        r.outb(0x1f7, cmd);
        assert_eq!(r.result(), (0x41, 0x04, true), "command {cmd:#x}");
    }
    r.lba28(1, 1);
    r.outb(0x1f7, 0x20);
    assert_eq!(r.result().0, 0x58, "reads work");
    assert_eq!(disk.contents(), disk_image(16));
}

#[test]
fn flush_set_features_and_power_commands() {
    let disk = Arc::new(Synthetic { size: 1 << 20, ..Default::default() });
    let mut r = Rig::disk(disk.clone());
    for cmd in [0xe7, 0xea] {
        r.outb(0x1f7, cmd);
        assert_eq!(r.result(), (0x50, 0, true));
    }
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 2);
    // Transfer mode: multiword DMA 2.
    r.outb(0x1f1, 0x03);
    r.outb(0x1f2, 0x22);
    r.outb(0x1f7, 0xef);
    assert_eq!(r.result(), (0x50, 0, true));
    let w = r.identify();
    assert_eq!((w[62], w[63], w[88]), (0x07, 0x0407, 0x3f));
    // UDMA 7 does not exist.
    r.outb(0x1f1, 0x03);
    r.outb(0x1f2, 0x47);
    r.outb(0x1f7, 0xef);
    assert_eq!(r.result(), (0x41, 0x04, true));
    // Write cache off: IDENTIFY says so (after a flush), and every write is flushed.
    r.outb(0x1f1, 0x82);
    r.outb(0x1f7, 0xef);
    assert_eq!(r.result(), (0x50, 0, true));
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 3);
    assert_eq!(r.identify()[85] & 0x20, 0);
    r.lba28(0, 1);
    r.outb(0x1f7, 0x30);
    r.write_data(&[0; 512]);
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 4);
    r.outb(0x1f1, 0x02);
    r.outb(0x1f7, 0xef);
    assert_eq!(r.identify()[85] & 0x20, 0x20);
    // Unknown subcommand.
    r.outb(0x1f1, 0x77);
    r.outb(0x1f7, 0xef);
    assert_eq!(r.result(), (0x41, 0x04, true));
    // Standby, idle, sleep, recalibrate: accepted, nothing happens.
    for cmd in [0xe0, 0xe1, 0xe2, 0xe3, 0x94, 0x95, 0xe6, 0x10] {
        r.outb(0x1f7, cmd);
        assert_eq!(r.result().0 & 0xc9, 0x40, "command {cmd:#x}");
    }
    r.outb(0x1f2, 0);
    r.outb(0x1f7, 0xe5);
    assert_eq!(r.result(), (0x50, 0, true));
    assert_eq!(r.inb(0x1f2), 0xff, "CHECK POWER MODE: active");
    r.outb(0x1f6, 0x40);
    r.outb(0x1f7, 0xf8);
    assert_eq!(r.result().0, 0x50);
    assert_eq!((r.inb(0x1f3), r.inb(0x1f4), r.inb(0x1f5), r.inb(0x1f6)), (0xff, 0x07, 0, 0xe0), "native max 2047");
}

#[test]
fn a_write_through_medium_shows_no_write_cache() {
    let disk = Arc::new(Synthetic { size: 1 << 20, write_through: true, ..Default::default() });
    let mut r = Rig::disk(disk.clone());
    assert_eq!(r.identify()[85] & 0x20, 0);
    r.lba28(3, 1);
    r.outb(0x1f7, 0x30);
    r.write_data(&[7; 512]);
    assert_eq!(r.result(), (0x50, 0, true));
    assert_eq!(disk.flushes.load(Ordering::SeqCst), 1, "each write is flushed");
    assert_eq!(disk.writes.lock().unwrap()[0], (3 * 512, vec![7; 512]));
}

#[test]
fn software_reset_signatures_and_nien() {
    let mut r = Rig::new(vec![
        drive(Arc::new(MemBackend::new(disk_image(16), false)), DriveKind::Disk, 0, 0),
        drive(Arc::new(MemBackend::new(cd_image(4), true)), DriveKind::Cdrom, 0, 1),
    ]);
    r.lba28(3, 9);
    r.outb(0x3f6, 0x06); // SRST, nIEN
    assert_eq!(r.inb(0x3f6), 0x80, "busy while SRST is held");
    r.outb(0x1f7, 0xec);
    assert_eq!(r.inb(0x3f6), 0x80, "commands are ignored while busy");
    r.outb(0x3f6, 0x02);
    assert!(!r.irq[0].level(), "nIEN keeps INTRQ off");
    let regs = |r: &mut Rig| (r.inb(0x1f1), r.inb(0x1f2), r.inb(0x1f3), r.inb(0x1f4), r.inb(0x1f5), r.inb(0x1f7));
    assert_eq!(r.inb(0x1f6) & 0x10, 0, "device 0 selected");
    assert_eq!(regs(&mut r), (0x01, 1, 1, 0, 0, 0x50), "ATA signature");
    r.outb(0x1f6, 0xb0);
    assert_eq!(regs(&mut r), (0x01, 1, 1, 0x14, 0xeb, 0x00), "ATAPI signature, DRDY clear");
    // IDENTIFY to the CD-ROM aborts and leaves the signature.
    r.outb(0x3f6, 0x00);
    r.outb(0x1f7, 0xec);
    assert_eq!((r.inb(0x1f4), r.inb(0x1f5)), (0x14, 0xeb));
    assert_eq!(r.result(), (0x41, 0x04, true));
    // EXECUTE DEVICE DIAGNOSTIC on the disk.
    r.outb(0x1f6, 0xa0);
    r.outb(0x1f7, 0x90);
    assert_eq!(r.result(), (0x50, 0x01, true));
    // With nIEN set, a command completes without an interrupt.
    r.outb(0x3f6, 0x02);
    r.outb(0x1f7, 0xe7);
    assert_eq!(r.result(), (0x50, 0, false));
}

#[test]
fn absent_devices_and_empty_channels() {
    let mut r = Rig::disk(Arc::new(MemBackend::new(disk_image(16), false)));
    // Secondary channel: nothing there, everything reads 0.
    for port in 0x171..=0x177 {
        assert_eq!(r.inb(port), 0, "port {port:#x}");
    }
    r.outb(0x177, 0xec);
    assert!(!r.irq[1].level());
    // Primary slave: absent; its status and error read 0 and commands are ignored.
    r.outb(0x1f6, 0xb0);
    assert_eq!((r.inb(0x1f7), r.inb(0x3f6), r.inb(0x1f1)), (0, 0, 0));
    r.outb(0x1f7, 0xec);
    assert_eq!(r.inb(0x1f7), 0);
    assert!(!r.irq[0].level());
    // The task file is shared: what was written reads back.
    r.outb(0x1f2, 0x55);
    assert_eq!(r.inb(0x1f2), 0x55);
    r.outb(0x1f6, 0xa0);
    assert_eq!(r.inb(0x1f2), 0x55);
    assert_eq!(r.inb(0x1f0), 0xff, "byte read of the data port");
}

#[test]
fn bad_configurations_are_refused() {
    let mem = Arc::new(GuestMemory::flat(4096).unwrap());
    let irqs = || -> [Arc<dyn quern_core::IrqLine>; 2] { [Arc::new(TestIrq::default()), Arc::new(TestIrq::default())] };
    let disk = || Some(Arc::new(MemBackend::new(vec![0; 512], false)) as Arc<dyn BlockBackend>);
    let d = |backend, kind, bus, unit| IdeDriveConfig { backend, kind, bus, unit };
    let new = |v| PiixIde::new(mem.clone(), irqs(), v).err();
    assert_eq!(new(vec![d(disk(), DriveKind::Disk, 2, 0)]), Some(IdeError::BadPosition { bus: 2, unit: 0 }));
    assert_eq!(
        new(vec![d(disk(), DriveKind::Disk, 0, 1), d(None, DriveKind::Cdrom, 0, 1)]),
        Some(IdeError::Taken { bus: 0, unit: 1 })
    );
    assert_eq!(new(vec![d(None, DriveKind::Disk, 1, 0)]), Some(IdeError::DiskWithoutMedium { bus: 1, unit: 0 }));
    assert_eq!(new(vec![d(None, DriveKind::Cdrom, 1, 0)]), None);
}

// ATAPI

/// A CD-ROM as secondary master, `sectors` 2048-byte sectors (or no disc).
fn cd_rig(sectors: Option<usize>) -> Rig {
    let backend = sectors.map(|n| Arc::new(MemBackend::new(cd_image(n), true)) as Arc<dyn BlockBackend>);
    Rig::new(vec![IdeDriveConfig { backend, kind: DriveKind::Cdrom, bus: 1, unit: 0 }])
}

/// Outcome of a packet command on the secondary channel.
#[derive(Debug, PartialEq, Eq)]
struct Packet {
    status: u8,
    error: u8,
    data: Vec<u8>,
    /// Byte counts of the DRQ blocks.
    blocks: Vec<usize>,
}

impl Rig {
    fn packet_start(&mut self, cdb: &[u8], byte_limit: u16, dma: bool) {
        self.outb(0x176, 0xa0);
        self.outb(0x171, u8::from(dma));
        self.outb(0x174, byte_limit as u8);
        self.outb(0x175, (byte_limit >> 8) as u8);
        self.outb(0x177, 0xa0);
        assert_eq!(self.inb(0x376), 0x58, "ready for the packet");
        assert_eq!(self.inb(0x172) & 3, 1, "CoD");
        let mut p = [0u8; 12];
        p[..cdb.len()].copy_from_slice(cdb);
        for w in p.chunks(2) {
            self.outw(0x170, u16::from_le_bytes([w[0], w[1]]));
        }
    }

    fn packet(&mut self, cdb: &[u8], byte_limit: u16) -> Packet {
        self.packet_start(cdb, byte_limit, false);
        let (mut data, mut blocks) = (Vec::new(), Vec::new());
        loop {
            assert!(self.irq[1].level(), "each phase interrupts");
            let status = self.inb(0x177);
            if status & 0x08 == 0 {
                assert_eq!(self.inb(0x172) & 3, 3, "IO, CoD at the end");
                return Packet { status, error: self.inb(0x171), data, blocks };
            }
            assert_eq!(self.inb(0x172) & 3, 2, "IO: data to the host");
            let n = usize::from(self.inb(0x174)) | usize::from(self.inb(0x175)) << 8;
            blocks.push(n);
            for _ in 0..n.div_ceil(2) {
                data.extend(self.inw(0x170).to_le_bytes());
            }
            data.truncate(data.len() - n % 2);
        }
    }

    fn sense(&mut self) -> (u8, u8) {
        let p = self.packet(&[0x03, 0, 0, 0, 18], 0xfffe);
        assert_eq!(p.status, 0x50);
        (p.data[2], p.data[12])
    }
}

#[test]
fn identify_packet_device() {
    let mut r = cd_rig(Some(4));
    r.outb(0x177, 0xa1);
    assert!(r.irq[1].level());
    assert_eq!(r.inb(0x177), 0x58);
    let w: Vec<u16> = (0..256).map(|_| r.inw(0x170)).collect();
    assert_eq!(w[0], 0x85c0, "ATAPI CD-ROM, removable, 12-byte packets");
    assert_eq!(ata_string(&w[10..20]), "QM00003");
    assert_eq!(ata_string(&w[27..47]), "QEMU DVD-ROM");
    assert_eq!((w[49], w[53], w[63], w[88]), (0x300, 7, 7, 0x203f));
    // ATA disk commands are refused.
    r.outb(0x177, 0x25);
    assert_eq!(r.inb(0x177), 0x41);
}

#[test]
fn inquiry_capacity_and_read10() {
    let mut r = cd_rig(Some(40));
    let p = r.packet(&[0x12, 0, 0, 0, 36], 0xfffe);
    assert_eq!((p.status, p.error, p.blocks.as_slice()), (0x50, 0, &[36][..]));
    assert_eq!(&p.data[..5], &[0x05, 0x80, 0x00, 0x21, 31]);
    assert_eq!(&p.data[8..36], b"QEMU    QEMU DVD-ROM    2.5+");
    // An odd allocation length: 5 bytes, the last word padded.
    assert_eq!(r.packet(&[0x12, 0, 0, 0, 5], 0xfffe).data, [0x05, 0x80, 0x00, 0x21, 31]);

    let p = r.packet(&[0x25], 0xfffe);
    assert_eq!(p.data, [0, 0, 0, 39, 0, 0, 8, 0], "last LBA 39, 2048-byte blocks");

    // READ(10) of 3 sectors from LBA 5 with a 4 KiB byte count limit: 4096 + 2048.
    let p = r.packet(&[0x28, 0, 0, 0, 0, 5, 0, 0, 3, 0], 0x1000);
    assert_eq!((p.status, p.blocks.as_slice()), (0x50, &[4096, 2048][..]));
    assert_eq!(p.data, cd_image(40)[5 * 2048..8 * 2048]);
    // An odd limit is rounded down to even; 0xffff means 0xfffe.
    let p = r.packet(&[0x28, 0, 0, 0, 0, 0, 0, 0, 33, 0], 0xffff);
    assert_eq!(p.blocks, [0xfffe, 33 * 2048 - 0xfffe]);
    assert_eq!(p.data, cd_image(40)[..33 * 2048]);
    let p = r.packet(&[0xa8, 0, 0, 0, 0, 1, 0, 0, 0, 1], 2047);
    assert_eq!(p.blocks, [2046, 2]);
    assert_eq!(p.data, cd_image(40)[2048..4096]);
    // READ(10) with no byte count limit: the ATA command aborts.
    r.packet_start(&[0x28, 0, 0, 0, 0, 5, 0, 0, 1, 0], 0, false);
    assert_eq!((r.inb(0x177), r.inb(0x171)), (0x41, 0x04));
    // A count of 0 transfers nothing.
    let p = r.packet(&[0x28, 0, 0, 0, 0, 5, 0, 0, 0, 0], 0xfffe);
    assert_eq!((p.status, p.data.len()), (0x50, 0));
}

#[test]
fn atapi_dma_read() {
    let mut r = cd_rig(Some(40));
    r.enable_bm();
    prd_table(&r.mem, 0x1000, &[(0x4000, 0x2000)]);
    r.outl(BM_BASE + 12, 0x1000);
    r.packet_start(&[0x28, 0, 0, 0, 0, 7, 0, 0, 4, 0], 0, true);
    assert_eq!(r.inb(0x376), 0x58, "waiting for the bus master");
    r.outb(BM_BASE + 8, 0x09);
    assert!(r.irq[1].level());
    assert_eq!(r.inb(BM_BASE + 10), 0x04);
    assert_eq!((r.inb(0x177), r.inb(0x172) & 3), (0x50, 3));
    let mut got = vec![0; 0x2000];
    r.mem.read(0x4000, &mut got).unwrap();
    assert_eq!(got, cd_image(40)[7 * 2048..11 * 2048]);
    // A reply by DMA (INQUIRY), and a command without data (TEST UNIT READY) with the
    // DMA bit set: no bus master needed.
    r.outb(BM_BASE + 8, 0x00);
    r.packet_start(&[0x12, 0, 0, 0, 36], 0, true);
    r.outb(BM_BASE + 8, 0x09);
    assert_eq!(r.inb(0x177), 0x50);
    assert_eq!(r.mem.read_u32(0x4000).unwrap(), 0x2100_8005);
    r.outb(BM_BASE + 8, 0x00);
    r.packet_start(&[0x00], 0, true);
    assert_eq!((r.inb(0x177), r.inb(0x172) & 3), (0x50, 3));
    // A buffer outside RAM.
    prd_table(&r.mem, 0x1000, &[(0xf000_0000, 0x2000)]);
    r.packet_start(&[0x28, 0, 0, 0, 0, 7, 0, 0, 4, 0], 0, true);
    r.outb(BM_BASE + 8, 0x09);
    assert_eq!(r.inb(BM_BASE + 10), 0x06);
    assert_eq!(r.inb(0x177), 0x41);
    assert_eq!(r.inb(0x171) & 0x04, 0x04);
}

#[test]
fn errors_sense_and_no_medium() {
    let mut r = cd_rig(Some(10));
    // Past the end: ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE.
    let p = r.packet(&[0x28, 0, 0, 0, 0, 9, 0, 0, 2, 0], 0xfffe);
    assert_eq!((p.status, p.error), (0x41, 0x50));
    assert_eq!(r.sense(), (0x05, 0x21));
    assert_eq!(r.sense(), (0x00, 0x00), "REQUEST SENSE consumes the sense");
    // An opcode the drive does not know.
    let p = r.packet(&[0xff], 0xfffe);
    assert_eq!((p.status, p.error), (0x41, 0x50));
    assert_eq!(r.sense(), (0x05, 0x20));
    // Saved values are not supported.
    let p = r.packet(&[0x5a, 0, 0xea, 0, 0, 0, 0, 0, 64, 0], 0xfffe);
    assert_eq!(p.status, 0x41);
    assert_eq!(r.sense(), (0x05, 0x39));

    let mut r = cd_rig(None);
    for cdb in [&[0x00][..], &[0x25], &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], &[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0]] {
        let p = r.packet(cdb, 0xfffe);
        assert_eq!((p.status, p.error), (0x41, 0x20), "{cdb:x?}: NOT READY");
        assert_eq!(r.sense(), (0x02, 0x3a), "MEDIUM NOT PRESENT");
    }
    // INQUIRY works without a disc.
    assert_eq!(r.packet(&[0x12, 0, 0, 0, 36], 0xfffe).status, 0x50);
    // GET CONFIGURATION: no current profile.
    let p = r.packet(&[0x46, 0, 0, 0, 0, 0, 0, 0, 32, 0], 0xfffe);
    assert_eq!(&p.data[..12], &[0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 3, 8]);
}

#[test]
fn medium_change_then_unit_attention() {
    let mut r = cd_rig(None);
    r.ide.change_medium(1, 0, Some(Arc::new(MemBackend::new(cd_image(8), true)))).unwrap();
    assert!(r.irq[1].level());
    // GESN (allowed under a unit attention) reports the new medium once.
    let gesn = |r: &mut Rig| r.packet(&[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], 0xfffe).data;
    assert_eq!(gesn(&mut r), [0, 4, 4, 0x10, 2, 2, 0, 0]);
    assert_eq!(gesn(&mut r), [0, 4, 4, 0x10, 0, 2, 0, 0]);
    let tur = |r: &mut Rig| {
        let p = r.packet(&[0x00], 0xfffe);
        (p.status, p.error)
    };
    assert_eq!(tur(&mut r), (0x41, 0x20), "first NOT READY");
    assert_eq!(tur(&mut r), (0x41, 0x60), "then UNIT ATTENTION");
    assert_eq!(tur(&mut r), (0x41, 0x60), "held until REQUEST SENSE");
    assert_eq!(r.packet(&[0x12, 0, 0, 0, 36], 0xfffe).status, 0x50, "INQUIRY is allowed");
    assert_eq!(r.sense(), (0x06, 0x28), "MEDIUM MAY HAVE CHANGED");
    assert_eq!(tur(&mut r), (0x50, 0));
    assert!(r.ide.change_medium(0, 0, None).is_err());
}

#[test]
fn toc_mode_sense_and_other_commands() {
    let mut r = cd_rig(Some(300));
    // READ TOC format 0, LBA: track 1 at 0, lead-out at 300.
    let p = r.packet(&[0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0], 0xfffe);
    assert_eq!(p.data, [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x16, 0xaa, 0, 0, 0, 0x01, 0x2c]);
    // MSF: lead-out at 300 + 150 frames = 00:06:00.
    let p = r.packet(&[0x43, 2, 0, 0, 0, 0, 0, 0, 100, 0], 0xfffe);
    assert_eq!(&p.data[8..12], &[0, 0, 2, 0]);
    assert_eq!(&p.data[16..20], &[0, 0, 6, 0]);
    // Only the lead-out from track 0xaa; no track 2.
    assert_eq!(r.packet(&[0x43, 0, 0, 0, 0, 0, 0xaa, 0, 100, 0], 0xfffe).data.len(), 12);
    assert_eq!(r.packet(&[0x43, 0, 0, 0, 0, 0, 2, 0, 100, 0], 0xfffe).status, 0x41);
    // Format 1 (sessions) and 2 (full TOC), asked for the SFF-8020 way (byte 9).
    let p = r.packet(&[0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0x40], 0xfffe);
    assert_eq!(p.data, [0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0]);
    let p = r.packet(&[0x43, 0, 2, 0, 0, 0, 0, 0, 100, 0], 0xfffe);
    assert_eq!(p.data.len(), 48);
    assert_eq!(&p.data[..4], &[0, 46, 1, 1]);
    // The allocation length caps the reply.
    assert_eq!(r.packet(&[0x43, 0, 0, 0, 0, 0, 0, 0, 4, 0], 0xfffe).data, [0, 18, 1, 1]);

    // MODE SENSE(10): capabilities page.
    let p = r.packet(&[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 128, 0], 0xfffe);
    assert_eq!(p.data.len(), 28);
    assert_eq!(&p.data[..2], &[0, 26]);
    assert_eq!(&p.data[8..10], &[0x2a, 0x12]);
    assert_eq!(p.data[14] & 2, 0, "not locked");
    assert_eq!(r.packet(&[0x1e, 0, 0, 0, 1], 0xfffe).status, 0x50);
    let p = r.packet(&[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 128, 0], 0xfffe);
    assert_eq!(p.data[14] & 2, 2, "locked");
    let p = r.packet(&[0x5a, 0, 0x01, 0, 0, 0, 0, 0, 128, 0], 0xfffe);
    assert_eq!(&p.data[8..12], &[0x01, 0x06, 0x00, 0x05]);
    assert_eq!(r.packet(&[0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 128, 0], 0xfffe).data.len(), 8 + 8 + 16 + 20);
    // Locked: the tray stays shut.
    let p = r.packet(&[0x1b, 0, 0, 0, 0x02], 0xfffe);
    assert_eq!(p.status, 0x41);
    assert_eq!(r.sense(), (0x02, 0x53));
    r.packet(&[0x1e, 0, 0, 0, 0], 0xfffe);
    assert_eq!(r.packet(&[0x1b, 0, 0, 0, 0x02], 0xfffe).status, 0x50, "ejected");
    assert_eq!(r.packet(&[0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8], 0xfffe).data, [0, 0x10, 0, 0, 0, 1, 0, 0], "door open");
    assert_eq!(r.packet(&[0x00], 0xfffe).error, 0x20, "no medium with the tray open");
    assert_eq!(r.packet(&[0x1b, 0, 0, 0, 0x03], 0xfffe).status, 0x50, "loaded");
    assert_eq!(r.packet(&[0x00], 0xfffe).status, 0x50);

    // GET CONFIGURATION: CD-ROM is the current profile.
    let p = r.packet(&[0x46, 2, 0, 0, 0, 0, 0, 0, 32, 0], 0xfffe);
    assert_eq!(p.data, [0, 0, 0, 16, 0, 0, 0, 8, 0, 0, 3, 8, 0, 0x10, 0, 0, 0, 0x08, 1, 0]);
    // READ DISC INFORMATION, SET CD SPEED, SEEK.
    let p = r.packet(&[0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0], 0xfffe);
    assert_eq!(&p.data[..8], &[0, 32, 0x0e, 1, 1, 1, 1, 0x20]);
    assert_eq!(r.packet(&[0xbb], 0xfffe).status, 0x50);
    assert_eq!(r.packet(&[0x2b, 0, 0, 0, 1, 0x2b], 0xfffe).status, 0x50);
    assert_eq!(r.packet(&[0x2b, 0, 0, 0, 1, 0x2c], 0xfffe).status, 0x41);
    // READ CD: user data, and a raw frame (sync, MSF header, mode 1, data).
    let p = r.packet(&[0xbe, 0, 0, 0, 0, 2, 0, 0, 1, 0x10], 0xfffe);
    assert_eq!(p.data, cd_image(300)[2 * 2048..3 * 2048]);
    let p = r.packet(&[0xbe, 0, 0, 0, 0, 2, 0, 0, 1, 0xf8], 0xfffe);
    assert_eq!(p.data.len(), 2352);
    assert_eq!(&p.data[..16], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 2, 2, 1]);
    assert_eq!(p.data[16..2064], cd_image(300)[2 * 2048..3 * 2048]);
}

#[test]
fn packet_command_details() {
    let mut r = cd_rig(Some(4));
    // Overlap requested: aborted at the ATA level.
    r.outb(0x171, 0x02);
    r.outb(0x177, 0xa0);
    assert_eq!((r.inb(0x177), r.inb(0x171)), (0x41, 0x04));
    // DEVICE RESET while a packet is expected.
    r.outb(0x171, 0);
    r.outb(0x177, 0xa0);
    assert_eq!(r.inb(0x177), 0x58);
    r.outb(0x177, 0x08);
    assert_eq!(r.inb(0x177), 0x00);
    assert_eq!((r.inb(0x174), r.inb(0x175)), (0x14, 0xeb));
    assert_eq!(r.packet(&[0x00], 0).status, 0x50, "no data: no byte count needed");
}

#[test]
fn snapshot_continues_a_pio_read_mid_sector() {
    use quern_core::snapshot::Snapshot;
    let disk = Arc::new(MemBackend::new(disk_image(64), false));
    let mut r = Rig::disk(disk.clone());
    r.enable_bm();
    r.outl(BM_BASE + 4, 0x1230);
    r.lba28(5, 2);
    r.outb(0x1f7, 0x20);
    let head = r.read_data(100);
    let mut s = Rig::disk(disk);
    crate::testutil::restore_into(&mut s.ide, &r.ide.save_state());
    assert!(s.irq[0].level(), "the DRQ block's interrupt is driven again");
    assert_eq!(s.inl(BM_BASE + 4), 0x1230, "BAR4 and the bus master registers");
    assert_eq!(s.config_read(0x04) & 0xffff, 0x05);
    let mut data = head;
    data.extend(s.read_data(412));
    assert_eq!(s.result(), (0x58, 0, true), "the second sector's block");
    data.extend(s.read_data(512));
    assert!(data.iter().enumerate().all(|(i, &b)| b == pattern(5 * 512 + i as u64)));
    assert_eq!(s.result(), (0x50, 0, false));
    assert_eq!(s.inb(0x1f3), 7, "the task file goes on");
}

#[test]
fn snapshot_continues_an_atapi_read_mid_block() {
    use quern_core::snapshot::Snapshot;
    let mut r = cd_rig(Some(40));
    r.packet_start(&[0x28, 0, 0, 0, 0, 5, 0, 0, 3, 0], 0x1000, false);
    assert_eq!(r.inb(0x177), 0x58);
    let first: Vec<u8> = (0..1000).flat_map(|_| r.inw(0x170).to_le_bytes()).collect();
    let mut s = cd_rig(Some(40));
    crate::testutil::restore_into(&mut s.ide, &r.ide.save_state());
    let mut data = first;
    data.extend((0..1048).flat_map(|_| s.inw(0x170).to_le_bytes()));
    assert_eq!(s.inb(0x177), 0x58, "the last block");
    assert_eq!(u16::from(s.inb(0x174)) | u16::from(s.inb(0x175)) << 8, 2048);
    data.extend((0..1024).flat_map(|_| s.inw(0x170).to_le_bytes()));
    assert_eq!(data, cd_image(40)[5 * 2048..8 * 2048]);
    assert_eq!(s.inb(0x177), 0x50);
}

#[test]
fn snapshot_refuses_malformed_states() {
    use quern_core::snapshot::Snapshot;
    let mut r = Rig::disk(Arc::new(MemBackend::new(disk_image(8), false)));
    r.lba28(1, 1);
    r.outb(0x1f7, 0x20);
    r.read_data(10);
    let fixed = ["/config/bytes", "/channels", "/channels/0/drives", "/channels/0/drives/0/taskfile"];
    crate::testutil::assert_refuses_malformed(&mut r.ide, &fixed);
    let good = r.ide.save_state();
    let mut bad = good.clone();
    bad["channels"][0]["drives"][0]["pos"] = 513.into();
    assert!(r.ide.restore_state(&bad).is_err(), "a position past the block");
    let mut bad = good.clone();
    bad["channels"][1]["unit"] = 2.into();
    assert!(r.ide.restore_state(&bad).is_err(), "a third device");
    assert_eq!(r.ide.save_state(), good);
}

impl Rig {
    /// REQUEST SENSE: key, ASC, ASCQ.
    fn sense_q(&mut self) -> (u8, u8, u8) {
        let p = self.packet(&[0x03, 0, 0, 0, 18], 0xfffe);
        (p.data[2], p.data[12], p.data[13])
    }
    /// TEST UNIT READY: status and error registers.
    fn tur(&mut self) -> (u8, u8) {
        let p = self.packet(&[0x00], 0xfffe);
        (p.status, p.error)
    }
    /// GESN (polled, media class): the event code and media status.
    fn gesn(&mut self) -> (u8, u8) {
        let p = self.packet(&[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], 0xfffe);
        assert_eq!(&p.data[..4], &[0, 4, 0x04, 0x10]);
        (p.data[4], p.data[5])
    }
    fn read_capacity(&mut self) -> [u8; 8] {
        self.packet(&[0x25], 0xfffe).data.try_into().unwrap()
    }
}

/// A disc whose bytes differ from [`cd_image`]'s.
fn other_cd(sectors: usize) -> Arc<dyn BlockBackend> {
    Arc::new(MemBackend::new(cd_image(sectors).iter().map(|b| !b).collect(), true))
}

#[test]
fn eject_then_insert_is_seen_as_real_drives_show_it() {
    let mut r = cd_rig(Some(8));
    assert_eq!(r.tray(), TrayState { tray_open: false, locked: false, inserted: true });
    r.ide.eject(1, 0, false).unwrap();
    assert!(r.irq[1].level(), "the change interrupts");
    assert_eq!(r.tray(), TrayState { tray_open: true, locked: false, inserted: false });
    assert!(r.ide.medium(1, 0).is_none());
    assert_eq!(r.gesn(), (3, 1), "media removal, door open");
    assert_eq!(r.gesn(), (0, 1));
    for cdb in [&[0x00][..], &[0x25], &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]] {
        assert_eq!(r.packet(cdb, 0xfffe).error, 0x20, "{cdb:x?}: NOT READY");
        assert_eq!(r.sense_q(), (0x02, 0x3a, 0x02), "MEDIUM NOT PRESENT - TRAY OPEN");
    }
    assert_eq!(r.packet(&[0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8], 0xfffe).data[1], 0x10, "door open");
    let p = r.packet(&[0x46, 0, 0, 0, 0, 0, 0, 0, 32, 0], 0xfffe);
    assert_eq!(&p.data[6..8], &[0, 0], "no current profile");

    r.ide.insert(1, 0, other_cd(20)).unwrap();
    assert_eq!(r.tray(), TrayState { tray_open: false, locked: false, inserted: true });
    assert_eq!(r.gesn(), (2, 2), "new media, present");
    assert_eq!(r.gesn(), (0, 2));
    // QEMU's sequence: the tray seems to go out (NOT READY), then the unit attention
    // holds until REQUEST SENSE reads it.
    assert_eq!(r.tur(), (0x41, 0x20));
    assert_eq!(r.sense_q(), (0x02, 0x3a, 0x02));
    assert_eq!(r.tur(), (0x41, 0x60));
    assert_eq!(r.packet(&[0x25], 0xfffe).error, 0x60 | 0x20, "held off: UNIT ATTENTION, MC");
    assert_eq!(r.sense_q(), (0x06, 0x28, 0x00), "NOT READY TO READY CHANGE");
    assert_eq!(r.tur(), (0x50, 0), "ready");
    assert_eq!(r.read_capacity(), [0, 0, 0, 19, 0, 0, 8, 0], "the new disc's size");
    assert_eq!(r.packet(&[0x28, 0, 0, 0, 0, 19, 0, 0, 1, 0], 0xfffe).data, other_cd_bytes(20, 19));
    let p = r.packet(&[0x46, 0, 0, 0, 0, 0, 0, 0, 32, 0], 0xfffe);
    assert_eq!(&p.data[6..8], &[0, 8], "CD-ROM profile");

    // An empty drive with the tray shut says so in the qualifier.
    r.ide.eject(1, 0, false).unwrap();
    r.ide.close_tray(1, 0).unwrap();
    assert_eq!(r.tray(), TrayState { tray_open: false, locked: false, inserted: false });
    assert_eq!(r.tur(), (0x41, 0x20));
    assert_eq!(r.sense_q(), (0x02, 0x3a, 0x01), "MEDIUM NOT PRESENT - TRAY CLOSED");
}

fn other_cd_bytes(sectors: usize, lba: usize) -> Vec<u8> {
    cd_image(sectors)[lba * 2048..(lba + 1) * 2048].iter().map(|b| !b).collect()
}

impl Rig {
    fn tray(&self) -> TrayState {
        self.ide.tray(1, 0).unwrap()
    }
}

#[test]
fn a_locked_tray_needs_force_and_asks_the_guest_to_eject() {
    let mut r = cd_rig(Some(8));
    assert_eq!(r.packet(&[0x1e, 0, 0, 0, 1], 0xfffe).status, 0x50, "PREVENT MEDIUM REMOVAL");
    assert!(r.tray().locked);
    let e = r.ide.eject(1, 0, false).unwrap_err();
    assert_eq!(e, MediaError::Locked);
    assert_eq!(
        format!("Device 'ide1-cd0' {e}"),
        "Device 'ide1-cd0' is locked and force was not specified, wait for tray to open and try again"
    );
    assert_eq!(r.ide.insert(1, 0, other_cd(4)), Err(MediaError::Locked));
    assert_eq!(r.tray(), TrayState { tray_open: false, locked: true, inserted: true }, "nothing moved");
    assert_eq!(r.tur(), (0x50, 0), "and the disc is still readable");
    assert_eq!(r.gesn(), (1, 2), "eject request");
    assert_eq!(r.gesn(), (0, 2));
    // The guest could comply (ALLOW, then START STOP UNIT with LoEj); force does it.
    r.ide.eject(1, 0, true).unwrap();
    assert_eq!(r.tray(), TrayState { tray_open: true, locked: false, inserted: false });
    let p = r.packet(&[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 128, 0], 0xfffe);
    assert_eq!(p.data[14] & 2, 0, "the capabilities page shows it unlocked");
    assert_eq!(r.gesn(), (3, 1));
}

#[test]
fn media_operations_need_a_cdrom_and_the_right_tray() {
    let disk = Arc::new(MemBackend::new(disk_image(8), false));
    let mut r = Rig::new(vec![
        drive(disk, DriveKind::Disk, 0, 0),
        drive(Arc::new(MemBackend::new(cd_image(4), true)), DriveKind::Cdrom, 1, 0),
    ]);
    assert_eq!(r.ide.eject(0, 0, true), Err(MediaError::NotRemovable));
    assert_eq!(r.ide.insert(0, 0, other_cd(4)), Err(MediaError::NotRemovable));
    assert_eq!(r.ide.eject(0, 1, false), Err(MediaError::NoDrive { bus: 0, unit: 1 }));
    assert_eq!(r.ide.open_tray(2, 0, false), Err(MediaError::NoDrive { bus: 2, unit: 0 }));
    assert_eq!((r.ide.tray(0, 0), r.ide.tray(1, 1)), (None, None));
    assert_eq!(r.ide.medium(0, 0).map(|m| m.size()), Some(8 * 512), "a disk's medium");
    assert_eq!(r.ide.medium(1, 0).map(|m| m.size()), Some(4 * 2048));
    // blockdev-remove-medium/-insert-medium want the tray open, and an empty one.
    assert_eq!(r.ide.remove_medium(1, 0), Err(MediaError::TrayClosed));
    assert_eq!(r.ide.insert_medium(1, 0, other_cd(4)), Err(MediaError::TrayClosed));
    r.ide.close_tray(1, 0).unwrap();
    assert_eq!(r.tur(), (0x50, 0), "closing a closed tray changes nothing");
    r.ide.open_tray(1, 0, false).unwrap();
    assert_eq!(r.ide.insert_medium(1, 0, other_cd(4)), Err(MediaError::MediumPresent));
    assert!(r.tray().inserted, "an open tray keeps its disc");
    r.ide.remove_medium(1, 0).unwrap();
    r.ide.insert_medium(1, 0, other_cd(6)).unwrap();
    assert_eq!(r.tray(), TrayState { tray_open: true, locked: false, inserted: true });
    assert_eq!(r.tur(), (0x41, 0x20), "not while the tray is open");
    r.ide.close_tray(1, 0).unwrap();
    r.tur();
    r.tur();
    r.sense_q();
    assert_eq!(r.read_capacity(), [0, 0, 0, 5, 0, 0, 8, 0]);
}

#[test]
fn snapshot_keeps_tray_lock_and_pending_changes() {
    use quern_core::snapshot::Snapshot;
    // A refused eject: locked, with the eject request not yet polled.
    let mut r = cd_rig(Some(8));
    r.packet(&[0x1e, 0, 0, 0, 1], 0xfffe);
    r.ide.eject(1, 0, false).unwrap_err();
    let mut s = cd_rig(Some(8));
    crate::testutil::restore_into(&mut s.ide, &r.ide.save_state());
    assert_eq!(s.tray(), TrayState { tray_open: false, locked: true, inserted: true });
    assert_eq!(s.gesn(), (1, 2));
    // A change half reported: the unit attention is still to come.
    let mut r = cd_rig(Some(8));
    r.ide.change_medium(1, 0, Some(other_cd(8))).unwrap();
    assert_eq!(r.tur(), (0x41, 0x20));
    let mut s = cd_rig(Some(8));
    crate::testutil::restore_into(&mut s.ide, &r.ide.save_state());
    assert_eq!((s.gesn(), s.gesn()), ((3, 2), (2, 2)), "the old disc left, a new one came");
    assert_eq!(s.tur(), (0x41, 0x60));
    assert_eq!(s.sense_q(), (0x06, 0x28, 0));
    // An open tray.
    let mut r = cd_rig(Some(8));
    r.ide.eject(1, 0, false).unwrap();
    let mut s = cd_rig(None);
    crate::testutil::restore_into(&mut s.ide, &r.ide.save_state());
    assert_eq!(s.tray(), TrayState { tray_open: true, locked: false, inserted: false });
    assert_eq!(s.gesn(), (3, 1));
    crate::testutil::assert_refuses_malformed(&mut s.ide, &["/config/bytes", "/channels", "/channels/1/drives"]);
}
