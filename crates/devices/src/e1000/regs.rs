//! Register offsets in BAR0 and the bits of them the model acts on, as the 8254x
//! software developer's manual names them.

// General.
pub const CTRL: u32 = 0x0000;
pub const STATUS: u32 = 0x0008;
pub const EECD: u32 = 0x0010;
pub const EERD: u32 = 0x0014;
pub const CTRL_EXT: u32 = 0x0018;
pub const MDIC: u32 = 0x0020;
pub const FCAL: u32 = 0x0028;
pub const FCAH: u32 = 0x002c;
pub const FCT: u32 = 0x0030;
pub const VET: u32 = 0x0038;
pub const ICR: u32 = 0x00c0;
pub const ITR: u32 = 0x00c4;
pub const ICS: u32 = 0x00c8;
pub const IMS: u32 = 0x00d0;
pub const IMC: u32 = 0x00d8;
pub const RCTL: u32 = 0x0100;
pub const FCTTV: u32 = 0x0170;
pub const TXCW: u32 = 0x0178;
pub const RXCW: u32 = 0x0180;
pub const TCTL: u32 = 0x0400;
pub const TIPG: u32 = 0x0410;
pub const AIT: u32 = 0x0458;
pub const LEDCTL: u32 = 0x0e00;
pub const PBA: u32 = 0x1000;
pub const FCRTL: u32 = 0x2160;
pub const FCRTH: u32 = 0x2168;
pub const RDBAL: u32 = 0x2800;
pub const RDBAH: u32 = 0x2804;
pub const RDLEN: u32 = 0x2808;
pub const RDH: u32 = 0x2810;
pub const RDT: u32 = 0x2818;
pub const RSRPD: u32 = 0x2c00;
pub const RDTR: u32 = 0x2820;
pub const RXDCTL: u32 = 0x2828;
pub const RADV: u32 = 0x282c;
pub const TXDMAC: u32 = 0x3000;
pub const TDBAL: u32 = 0x3800;
pub const TDBAH: u32 = 0x3804;
pub const TDLEN: u32 = 0x3808;
pub const TDH: u32 = 0x3810;
pub const TDT: u32 = 0x3818;
pub const TIDV: u32 = 0x3820;
pub const TXDCTL: u32 = 0x3828;
pub const TADV: u32 = 0x382c;
pub const RXCSUM: u32 = 0x5000;
pub const MTA: u32 = 0x5200;
pub const RA: u32 = 0x5400;
pub const VFTA: u32 = 0x5600;
pub const WUC: u32 = 0x5800;
pub const WUFC: u32 = 0x5808;
pub const WUS: u32 = 0x5810;
pub const MANC: u32 = 0x5820;
pub const IPAV: u32 = 0x5838;
pub const IP4AT: u32 = 0x5840;
pub const IP6AT: u32 = 0x5880;
pub const WUPL: u32 = 0x5900;
pub const WUPM: u32 = 0x5a00;
pub const SWSM: u32 = 0x5b50;
pub const FFLT: u32 = 0x5f00;

// Statistics (0x4000-0x40ff), all clear on read.
pub const STATS_START: u32 = 0x4000;
pub const STATS_END: u32 = 0x4100;
pub const MPC: u32 = 0x4010;
pub const PRC64: u32 = 0x405c;
pub const GPRC: u32 = 0x4074;
pub const BPRC: u32 = 0x4078;
pub const MPRC: u32 = 0x407c;
pub const GPTC: u32 = 0x4080;
pub const GORCL: u32 = 0x4088;
pub const GOTCL: u32 = 0x4090;
pub const RNBC: u32 = 0x40a0;
pub const ROC: u32 = 0x40ac;
pub const TORL: u32 = 0x40c0;
pub const TOTL: u32 = 0x40c8;
pub const TPR: u32 = 0x40d0;
pub const TPT: u32 = 0x40d4;
pub const PTC64: u32 = 0x40d8;
pub const MPTC: u32 = 0x40f0;
pub const BPTC: u32 = 0x40f4;
pub const TSCTC: u32 = 0x40f8;
/// The low halves of the 64-bit counters: reading the high half clears both.
pub const STATS_PAIRS: [u32; 4] = [GORCL, GOTCL, TORL, TOTL];

/// Size of the register window (BAR0).
pub const MMIO_SIZE: u32 = 0x20000;
/// Size of the I/O window (BAR1): IOADDR at +0, IODATA at +4.
pub const IO_SIZE: u32 = 0x40;

// CTRL.
pub const CTRL_SLU: u32 = 1 << 6;
pub const CTRL_SPD_1000: u32 = 2 << 8;
pub const CTRL_SWDPIN0: u32 = 1 << 18;
pub const CTRL_SWDPIN2: u32 = 1 << 20;
pub const CTRL_RST: u32 = 1 << 26;
pub const CTRL_VME: u32 = 1 << 30;

// STATUS: full duplex, link up, 1000 Mb/s, auto-detected speed 1000, TX clock
// running, bus master enabled (GIO), and bit 31 as QEMU shows it.
pub const STATUS_FD: u32 = 1 << 0;
pub const STATUS_LU: u32 = 1 << 1;
pub const STATUS_SPEED_1000: u32 = 2 << 6;
pub const STATUS_ASDV_1000: u32 = 3 << 8;
pub const STATUS_MTXCKOK: u32 = 1 << 10;
pub const STATUS_GIO_MASTER: u32 = 1 << 19;

// Interrupt causes (ICR, ICS, IMS, IMC).
pub const ICR_TXDW: u32 = 1 << 0;
pub const ICR_TXQE: u32 = 1 << 1;
pub const ICR_LSC: u32 = 1 << 2;
pub const ICR_RXDMT0: u32 = 1 << 4;
pub const ICR_RXO: u32 = 1 << 6;
pub const ICR_RXT0: u32 = 1 << 7;
pub const ICR_MDAC: u32 = 1 << 9;
pub const ICR_SRPD: u32 = 1 << 16;
pub const ICR_INT_ASSERTED: u32 = 1 << 31;

// RCTL.
pub const RCTL_EN: u32 = 1 << 1;
pub const RCTL_SBP: u32 = 1 << 2;
pub const RCTL_UPE: u32 = 1 << 3;
pub const RCTL_MPE: u32 = 1 << 4;
pub const RCTL_LPE: u32 = 1 << 5;
pub const RCTL_RDMTS_SHIFT: u32 = 8;
pub const RCTL_MO_SHIFT: u32 = 12;
pub const RCTL_BAM: u32 = 1 << 15;
pub const RCTL_BSIZE_SHIFT: u32 = 16;
pub const RCTL_VFE: u32 = 1 << 18;
pub const RCTL_CFIEN: u32 = 1 << 19;
pub const RCTL_CFI: u32 = 1 << 20;
pub const RCTL_BSEX: u32 = 1 << 25;
pub const RCTL_SECRC: u32 = 1 << 26;

// TCTL.
pub const TCTL_EN: u32 = 1 << 1;
pub const TCTL_PSP: u32 = 1 << 3;

// MDIC.
pub const MDIC_REG_SHIFT: u32 = 16;
pub const MDIC_PHY_SHIFT: u32 = 21;
pub const MDIC_OP_WRITE: u32 = 1 << 26;
pub const MDIC_OP_READ: u32 = 2 << 26;
pub const MDIC_READY: u32 = 1 << 28;
pub const MDIC_IE: u32 = 1 << 29;
pub const MDIC_ERROR: u32 = 1 << 30;

// RAH.
pub const RAH_AV: u32 = 1 << 31;

// MANC at power-on: management pass-through of ARP, RMCP and port 0x298 to the
// host, TCO receive (QEMU's values).
pub const MANC_INIT: u32 = (1 << 21) | (1 << 17) | (1 << 13) | (1 << 9) | (1 << 8);
