//! The 82540EM's serial EEPROM: 64 16-bit words of a microwire part (93C46), read
//! by bit-banging EECD or a word at a time through EERD.
//!
//! Contents: the MAC address in words 0-2, then the image QEMU gives its 82540EM
//! (the manual's tables 5-2 and 5-3: compatibility, PCI IDs, init control words,
//! LED and PHY settings), and in word 0x3f the value that makes the sum of all 64
//! words 0xbaba, which drivers check.
//!
//! Microwire through EECD: the driver owns the part after setting REQ and seeing GNT
//! (granted at once here), raises CS, then clocks bits with SK: on each rising edge
//! the part samples DI; the read opcode (110b) and 6 address bits come first, after
//! which the word's 16 bits appear on DO most significant first, one per clock
//! (the part moves to the next bit on each falling edge). Dropping CS ends the
//! command. While not reading, DO reads 1 (the ready state). Writes and the other
//! opcodes are not modelled: the contents never change.

/// Words in the part.
pub const WORDS: usize = 64;
/// The word holding the checksum.
const CHECKSUM_WORD: usize = 0x3f;
/// What words 0x00-0x3f add up to.
pub const CHECKSUM_SUM: u16 = 0xbaba;
/// The microwire READ opcode.
const OPCODE_READ: u32 = 0b110;

// EECD bits.
const SK: u32 = 1 << 0;
const CS: u32 = 1 << 1;
const DI: u32 = 1 << 2;
const DO: u32 = 1 << 3;
const FWE: u32 = 3 << 4;
const REQ: u32 = 1 << 6;
const GNT: u32 = 1 << 7;
const PRES: u32 = 1 << 8;

// EERD: start (bit 0), done (bit 4), word address (15:8), data (31:16), the 82540's
// layout.
const EERD_START: u32 = 1 << 0;
const EERD_DONE: u32 = 1 << 4;
const EERD_ADDR_SHIFT: u32 = 8;
const EERD_DATA_SHIFT: u32 = 16;

/// QEMU's 82540EM image; words 0-2 (MAC), 0x0b and 0x0d (device ID) and 0x3f
/// (checksum) are filled in by [`Eeprom::new`].
const TEMPLATE: [u16; WORDS] = [
    0x0000, 0x0000, 0x0000, 0x0000, 0xffff, 0x0000, 0x0000, 0x0000, //
    0x3000, 0x1000, 0x6403, 0x0000, 0x8086, 0x0000, 0x8086, 0x3040, //
    0x0008, 0x2000, 0x7e14, 0x0048, 0x1000, 0x00d8, 0x0000, 0x2700, //
    0x6cc9, 0x3150, 0x0722, 0x040b, 0x0984, 0x0000, 0xc000, 0x0706, //
    0x1008, 0x0000, 0x0f04, 0x7fff, 0x4d01, 0xffff, 0xffff, 0xffff, //
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, //
    0x0100, 0x4000, 0x121c, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, //
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0x0000, //
];

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Eeprom {
    #[serde(with = "crate::snapshot::big_array")]
    words: [u16; WORDS],
    /// The EECD bits the driver drives (SK, CS, DI, FWE, REQ), as last written.
    pins: u32,
    /// Bits shifted in since CS rose.
    shift_in: u32,
    bits_in: u32,
    /// Position of the bit on DO: word in bits 9:4, bit (from the top) in 3:0.
    bit_out: u32,
    reading: bool,
}

impl Eeprom {
    pub fn new(mac: [u8; 6], device_id: u16) -> Self {
        let mut words = TEMPLATE;
        for (i, pair) in mac.chunks(2).enumerate() {
            words[i] = u16::from_le_bytes([pair[0], pair[1]]);
        }
        words[0x0b] = device_id;
        words[0x0d] = device_id;
        let sum = words[..CHECKSUM_WORD].iter().fold(0u16, |s, &w| s.wrapping_add(w));
        words[CHECKSUM_WORD] = CHECKSUM_SUM.wrapping_sub(sum);
        Eeprom { words, pins: 0, shift_in: 0, bits_in: 0, bit_out: 0, reading: false }
    }

    /// The MAC address words 0-2 hold.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0; 6];
        for (i, pair) in mac.chunks_mut(2).enumerate() {
            pair.copy_from_slice(&self.words[i].to_le_bytes());
        }
        mac
    }

    /// Back to idle (CS low), as after a reset.
    pub fn reset_interface(&mut self) {
        *self = Eeprom { words: self.words, pins: 0, shift_in: 0, bits_in: 0, bit_out: 0, reading: false };
    }

    /// EECD as read: present, granted, the driven pins, and DO.
    pub fn eecd_read(&self) -> u32 {
        let data_out = if self.reading {
            let word = self.words[((self.bit_out >> 4) as usize) % WORDS];
            (word >> (15 - (self.bit_out & 0xf))) & 1 != 0
        } else {
            true
        };
        PRES | GNT | self.pins | if data_out { DO } else { 0 }
    }

    /// EECD written: follows CS and the clock edges.
    pub fn eecd_write(&mut self, v: u32) {
        let old = self.pins;
        self.pins = v & (SK | CS | DI | FWE | REQ);
        if v & CS == 0 {
            return;
        }
        if old & CS == 0 {
            // A new command.
            self.shift_in = 0;
            self.bits_in = 0;
            self.bit_out = 0;
            self.reading = false;
        }
        if (old ^ v) & SK == 0 {
            return;
        }
        if v & SK == 0 {
            // Falling edge: the next output bit.
            self.bit_out = self.bit_out.wrapping_add(1);
            return;
        }
        // Rising edge: sample DI.
        self.shift_in = (self.shift_in << 1) | u32::from(v & DI != 0);
        self.bits_in = self.bits_in.saturating_add(1);
        if self.bits_in == 9 && !self.reading {
            // Opcode and address are in: the word's top bit comes out after the
            // falling edge that follows.
            self.bit_out = ((self.shift_in & 0x3f) << 4).wrapping_sub(1);
            self.reading = (self.shift_in >> 6) & 7 == OPCODE_READ;
        }
    }

    /// EERD as read for the value last written: done with the word's data once a
    /// read was started (at once), else the written value.
    pub fn eerd_read(&self, eerd: u32) -> u32 {
        if eerd & EERD_START == 0 {
            return eerd;
        }
        let r = eerd & !EERD_START;
        let addr = ((r >> EERD_ADDR_SHIFT) & 0xff) as usize;
        match self.words.get(addr) {
            Some(&w) => (u32::from(w) << EERD_DATA_SHIFT) | EERD_DONE | (r & 0xffff),
            None => EERD_DONE | r,
        }
    }
}
