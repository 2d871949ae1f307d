//! The Base Transport Header (12 bytes).

use super::{Opcode, Packet, WireError};

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

    /// A BTH as senders fill it: `opcode` to `dest_qp` at `psn` (masked to
    /// 24 bits), default partition key 0xffff, version 0, and every flag,
    /// the pad count and the reserved bits zero.
    pub fn new(opcode: Opcode, dest_qp: u32, psn: u32) -> Self {
        BthRepr {
            opcode,
            solicited: false,
            mig_req: false,
            pad: 0,
            tver: 0,
            pkey: 0xffff,
            fecn: false,
            becn: false,
            resv6a: 0,
            dest_qp: dest_qp & 0xff_ffff,
            ack_req: false,
            resv7: 0,
            psn: psn & 0xff_ffff,
        }
    }

    /// Parses the first 12 bytes of `buf`.
    ///
    /// # Errors
    /// [`WireError::Truncated`]; [`WireError::BadVersion`] for a transport
    /// header version other than 0.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let packet = Packet::new_unchecked(buf);
        packet.check_bth()?;
        Ok(Self::read(&packet))
    }

    /// The BTH of a packet whose buffer holds at least 12 bytes.
    #[inline]
    pub(super) fn read<T: AsRef<[u8]>>(p: &Packet<T>) -> Self {
        BthRepr {
            opcode: p.opcode(),
            solicited: p.solicited(),
            mig_req: p.mig_req(),
            pad: p.pad(),
            tver: p.tver(),
            pkey: p.pkey(),
            fecn: p.fecn(),
            becn: p.becn(),
            resv6a: p.resv6a(),
            dest_qp: p.dest_qp(),
            ack_req: p.ack_req(),
            resv7: p.resv7(),
            psn: p.psn(),
        }
    }

    /// Writes the header into the first 12 bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`Self::LEN`] (a caller bug: buffers are
    /// sized from [`super::PacketRepr::len`]).
    pub fn emit(&self, buf: &mut [u8]) {
        let mut p = Packet::new_unchecked(buf);
        // Every bit of the 12 bytes is written, whatever they held.
        p.set_opcode(self.opcode);
        p.set_solicited(self.solicited);
        p.set_mig_req(self.mig_req);
        p.set_pad(self.pad);
        p.set_tver(self.tver);
        p.set_pkey(self.pkey);
        p.set_fecn(self.fecn);
        p.set_becn(self.becn);
        p.set_resv6a(self.resv6a);
        p.set_dest_qp(self.dest_qp);
        p.set_ack_req(self.ack_req);
        p.set_resv7(self.resv7);
        p.set_psn(self.psn);
    }
}
