//! The Marvell 88E1011 PHY behind MDIC, at PHY address 1.
//!
//! The link is what [`super::E1000::set_link`] says; auto-negotiation completes the
//! moment it is (re)started, at 1000 Mb/s full duplex against a partner that
//! advertises 10/100 half and full duplex (QEMU's partner). Registers: the MII set
//! (control, status, IDs 0x0141/0x0c20, advertisement, partner ability, expansion,
//! 1000BASE-T control and status) and the Marvell ones Linux reads or programs
//! (specific control 0x10 and status 0x11, extended control 0x14, receive error
//! counter 0x15, page select 0x1d/0x1e). Other registers read 0 and ignore writes.

/// MII and 88E1011 register numbers.
pub const BMCR: usize = 0x00;
pub const BMSR: usize = 0x01;
pub const PHYID1: usize = 0x02;
pub const PHYID2: usize = 0x03;
pub const ANAR: usize = 0x04;
pub const ANLPAR: usize = 0x05;
pub const CTRL1000: usize = 0x09;
pub const STAT1000: usize = 0x0a;
pub const M88_SPEC_CTRL: usize = 0x10;
pub const M88_SPEC_STATUS: usize = 0x11;
pub const M88_EXT_SPEC_CTRL: usize = 0x14;
pub const M88_PAGE_SELECT: usize = 0x1d;
pub const M88_GEN_CONTROL: usize = 0x1e;

pub const BMCR_RESET: u16 = 1 << 15;
pub const BMCR_LOOPBACK: u16 = 1 << 14;
const BMCR_AUTOEN: u16 = 1 << 12;
const BMCR_ANRESTART: u16 = 1 << 9;
const BMCR_FD: u16 = 1 << 8;
const BMCR_SPEED1000: u16 = 1 << 6;

const BMSR_EXTCAP: u16 = 1 << 0;
pub const BMSR_LINK: u16 = 1 << 2;
const BMSR_ANEG_ABLE: u16 = 1 << 3;
pub const BMSR_ANEG_DONE: u16 = 1 << 5;
const BMSR_PREAMBLE_SUPPR: u16 = 1 << 6;
const BMSR_EXTSTAT: u16 = 1 << 8;
const BMSR_10_100: u16 = 0xf << 11;

const ANLPAR_ACK: u16 = 1 << 14;
/// 88E1011 specific status: link up (bit 10).
const M88_STATUS_LINK: u16 = 1 << 10;

/// Registers that keep what the driver writes.
const WRITABLE: [usize; 8] =
    [ANAR, CTRL1000, M88_SPEC_CTRL, M88_EXT_SPEC_CTRL, M88_PAGE_SELECT, M88_GEN_CONTROL, 0x16, 0x1a];

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Phy {
    regs: [u16; 32],
}

impl Phy {
    /// The power-on registers with the link `up` or not.
    pub fn new(up: bool) -> Self {
        let mut regs = [0u16; 32];
        regs[BMCR] = BMCR_SPEED1000 | BMCR_FD | BMCR_AUTOEN;
        regs[BMSR] = BMSR_EXTCAP | BMSR_ANEG_ABLE | BMSR_PREAMBLE_SUPPR | BMSR_EXTSTAT | BMSR_10_100;
        regs[PHYID1] = 0x0141;
        regs[PHYID2] = 0x0c20;
        // Selector 802.3, 10/100 half and full, symmetric and asymmetric pause.
        regs[ANAR] = 0x0de1;
        // The partner: 10/100 half and full.
        regs[ANLPAR] = 0x01e0;
        // 1000BASE-T full duplex advertised, multi-port, manual master.
        regs[CTRL1000] = 0x0e00;
        // Partner 1000 half/full, local and remote receivers OK.
        regs[STAT1000] = 0x3c00;
        regs[M88_SPEC_CTRL] = 0x0360;
        // 1000 Mb/s, full duplex, speed and duplex resolved, link.
        regs[M88_SPEC_STATUS] = 0xac00;
        regs[M88_EXT_SPEC_CTRL] = 0x0d60;
        let mut phy = Phy { regs };
        phy.set_link(up);
        phy
    }

    pub fn read(&self, reg: usize) -> u16 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    /// A write from MDIC. Returns true when it (re)started auto-negotiation with the
    /// link up: it has completed, and the MAC signals a link status change.
    pub fn write(&mut self, reg: usize, v: u16) -> bool {
        match reg {
            BMCR => {
                // Reset and restart self-clear; bits 5:0 are reserved.
                self.regs[BMCR] = v & !(BMCR_RESET | BMCR_ANRESTART | 0x3f);
                let restart = v & (BMCR_RESET | BMCR_ANRESTART) != 0 && v & BMCR_AUTOEN != 0;
                restart && self.link()
            }
            r if WRITABLE.contains(&r) => {
                self.regs[r] = v;
                false
            }
            _ => false,
        }
    }

    pub fn link(&self) -> bool {
        self.regs[BMSR] & BMSR_LINK != 0
    }

    pub fn loopback(&self) -> bool {
        self.regs[BMCR] & BMCR_LOOPBACK != 0
    }

    /// The cable: up completes auto-negotiation at once, down loses it.
    pub fn set_link(&mut self, up: bool) {
        let bmsr = BMSR_LINK | BMSR_ANEG_DONE;
        if up {
            self.regs[BMSR] |= bmsr;
            self.regs[ANLPAR] |= ANLPAR_ACK;
            self.regs[M88_SPEC_STATUS] |= M88_STATUS_LINK;
        } else {
            self.regs[BMSR] &= !bmsr;
            self.regs[ANLPAR] &= !ANLPAR_ACK;
            self.regs[M88_SPEC_STATUS] &= !M88_STATUS_LINK;
        }
    }
}
