//! The Base Transport Header (12 bytes).

use super::{Opcode, WireError, be16, be32, check_len};

/// A parsed BTH. Reserved fields are kept so that emitting a parsed header
/// reproduces it byte for byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BthRepr {
    /// Operation and transport.
    pub opcode: Opcode,
    /// Solicited event.
    pub solicited: bool,
    /// Migration request.
    pub mig_req: bool,
    /// Pad bytes after the payload (0..=3).
    pub pad: u8,
    /// Transport header version (0).
    pub tver: u8,
    /// Partition key.
    pub pkey: u16,
    /// Forward explicit congestion notification.
    pub fecn: bool,
    /// Backward explicit congestion notification.
    pub becn: bool,
    /// Reserved bits 29:24 of the destination-QP word.
    pub resv6a: u8,
    /// Destination queue pair number (24 bits).
    pub dest_qp: u32,
    /// Acknowledge request.
    pub ack_req: bool,
    /// Reserved bits 30:24 of the PSN word.
    pub resv7: u8,
    /// Packet sequence number (24 bits).
    pub psn: u32,
}

impl BthRepr {
    /// Length on the wire.
    pub const LEN: usize = 12;

    /// Parses the first 12 bytes of `buf`.
    ///
    /// # Errors
    /// [`WireError::Truncated`]; [`WireError::BadVersion`] for a transport
    /// header version other than 0.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len("BTH", buf, Self::LEN)?;
        let flags = buf[1];
        let qp_word = be32(&buf[4..8]);
        let psn_word = be32(&buf[8..12]);
        let repr = BthRepr {
            opcode: Opcode(buf[0]),
            solicited: flags & 0x80 != 0,
            mig_req: flags & 0x40 != 0,
            pad: (flags >> 4) & 0x3,
            tver: flags & 0xf,
            pkey: be16(&buf[2..4]),
            fecn: qp_word & (1 << 31) != 0,
            becn: qp_word & (1 << 30) != 0,
            resv6a: ((qp_word >> 24) & 0x3f) as u8,
            dest_qp: qp_word & 0xff_ffff,
            ack_req: psn_word & (1 << 31) != 0,
            resv7: ((psn_word >> 24) & 0x7f) as u8,
            psn: psn_word & 0xff_ffff,
        };
        if repr.tver != 0 {
            return Err(WireError::BadVersion(repr.tver));
        }
        Ok(repr)
    }

    /// Writes the header into the first 12 bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`Self::LEN`] (a caller bug: buffers are
    /// sized from [`super::PacketRepr::len`]).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.opcode.0;
        buf[1] = (u8::from(self.solicited) << 7)
            | (u8::from(self.mig_req) << 6)
            | ((self.pad & 0x3) << 4)
            | (self.tver & 0xf);
        buf[2..4].copy_from_slice(&self.pkey.to_be_bytes());
        let qp_word = (u32::from(self.fecn) << 31)
            | (u32::from(self.becn) << 30)
            | (u32::from(self.resv6a & 0x3f) << 24)
            | (self.dest_qp & 0xff_ffff);
        buf[4..8].copy_from_slice(&qp_word.to_be_bytes());
        let psn_word = (u32::from(self.ack_req) << 31)
            | (u32::from(self.resv7 & 0x7f) << 24)
            | (self.psn & 0xff_ffff);
        buf[8..12].copy_from_slice(&psn_word.to_be_bytes());
    }
}
