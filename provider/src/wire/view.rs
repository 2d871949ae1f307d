//! A typed zero-copy view of one RoCEv2 packet: accessors that read and
//! write header fields in place in a buffer.
//!
//! The byte and bit positions of every field are defined here and only
//! here: [`BthRepr`] reads and writes through a [`Packet`], the other
//! header reprs through [`field`], and [`Packet::new_checked`] holds the
//! rules that [`super::PacketRepr::parse`] applies.

use std::ops::Range;

use super::opcode::Ext;
use super::{
    BthRepr, ICRC_LEN, Layout, Opcode, Syndrome, WireError, be16, be24, be32, be64, check_len,
    set_be16, set_be24, set_be32, set_be64,
};

/// Positions of fields, counted from the start of their header: byte
/// ranges of big-endian numbers, and `(byte, mask)` pairs of bit fields.
pub(super) mod field {
    use std::ops::Range;

    /// A bit field: the byte and the mask of its bits there.
    pub(crate) type Bits = (usize, u8);

    pub(crate) mod bth {
        use super::{Bits, Range};

        pub(crate) const OPCODE: usize = 0;
        pub(crate) const SOLICITED: Bits = (1, 0x80);
        pub(crate) const MIG_REQ: Bits = (1, 0x40);
        pub(crate) const PAD: Bits = (1, 0x30);
        pub(crate) const TVER: Bits = (1, 0x0f);
        pub(crate) const PKEY: Range<usize> = 2..4;
        pub(crate) const FECN: Bits = (4, 0x80);
        pub(crate) const BECN: Bits = (4, 0x40);
        pub(crate) const RESV6A: Bits = (4, 0x3f);
        pub(crate) const DEST_QP: Range<usize> = 5..8;
        pub(crate) const ACK_REQ: Bits = (8, 0x80);
        pub(crate) const RESV7: Bits = (8, 0x7f);
        pub(crate) const PSN: Range<usize> = 9..12;
    }

    pub(crate) mod reth {
        use super::Range;

        pub(crate) const VA: Range<usize> = 0..8;
        pub(crate) const RKEY: Range<usize> = 8..12;
        pub(crate) const DMA_LEN: Range<usize> = 12..16;
    }

    pub(crate) mod atomic_eth {
        use super::Range;

        pub(crate) const VA: Range<usize> = 0..8;
        pub(crate) const RKEY: Range<usize> = 8..12;
        pub(crate) const SWAP_ADD: Range<usize> = 12..20;
        pub(crate) const COMPARE: Range<usize> = 20..28;
    }

    pub(crate) mod aeth {
        use super::Range;

        pub(crate) const SYNDROME: usize = 0;
        pub(crate) const MSN: Range<usize> = 1..4;
    }

    pub(crate) mod atomic_ack_eth {
        use super::Range;

        pub(crate) const ORIG: Range<usize> = 0..8;
    }

    /// ImmDt and IETH: one 32-bit number each.
    pub(crate) const WORD: Range<usize> = 0..4;
}

use field::{Bits, aeth, atomic_ack_eth, atomic_eth, bth, reth};

/// A RoCEv2 packet in a buffer: a UDP payload made of the BTH, the extended
/// headers of its opcode, the payload, the pad, and the 4-byte ICRC trailer.
///
/// Accessors read and write the buffer in place, so a view costs nothing to
/// create; [`super::PacketRepr`] is the owned, plain-struct counterpart.
/// The opcode decides which extended headers are present and where they
/// start: getters of a header the opcode's layout lacks return `None`.
///
/// Made with [`Packet::new_checked`], no accessor panics. Made with
/// [`Packet::new_unchecked`], accessors panic when the buffer is too short
/// for the field they touch (or for the pad and ICRC, for [`Packet::payload`],
/// [`Packet::pad_bytes`] and the trailer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checking it (see the type's documentation for
    /// when accessors panic).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps `buffer` after checking that it holds a whole packet of a known
    /// opcode: every header of the opcode's layout and the ICRC fit, the
    /// transport header version is 0, the pad fits in what follows the
    /// headers, and nothing follows the headers of an opcode that carries
    /// no payload. The ICRC's value is not checked (see
    /// [`super::icrc_of_udp_payload`]).
    ///
    /// # Errors
    /// [`WireError::Truncated`], [`WireError::BadVersion`],
    /// [`WireError::UnknownOpcode`], [`WireError::BadPad`],
    /// [`WireError::UnexpectedPayload`], checked in that order. Never
    /// panics, whatever the input.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_bth()?;
        let opcode = packet.opcode();
        let layout = opcode.layout().ok_or(WireError::UnknownOpcode(opcode.0))?;
        let header_len = BthRepr::LEN + layout.ext_len();
        let buf = packet.buffer.as_ref();
        check_len("headers and ICRC", buf, header_len + ICRC_LEN)?;
        // Payload and pad.
        let data = buf.len() - header_len - ICRC_LEN;
        let pad = packet.pad();
        if !layout.payload && data > 0 {
            return Err(if pad > 0 {
                WireError::BadPad { pad, payload: data }
            } else {
                WireError::UnexpectedPayload(opcode, data)
            });
        }
        if data < usize::from(pad) {
            return Err(WireError::BadPad { pad, payload: data });
        }
        Ok(packet)
    }

    /// The BTH rules alone: 12 bytes, version 0.
    pub(super) fn check_bth(&self) -> Result<(), WireError> {
        check_len("BTH", self.buffer.as_ref(), BthRepr::LEN)?;
        match self.tver() {
            0 => Ok(()),
            v => Err(WireError::BadVersion(v)),
        }
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole packet, ICRC trailer included.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn bits(&self, (byte, mask): Bits) -> u8 {
        (self.buffer.as_ref()[byte] & mask) >> mask.trailing_zeros()
    }

    /// Operation and transport.
    pub fn opcode(&self) -> Opcode {
        Opcode(self.buffer.as_ref()[bth::OPCODE])
    }

    /// Solicited event.
    pub fn solicited(&self) -> bool {
        self.bits(bth::SOLICITED) != 0
    }

    /// Migration request.
    pub fn mig_req(&self) -> bool {
        self.bits(bth::MIG_REQ) != 0
    }

    /// Pad bytes after the payload (0..=3).
    pub fn pad(&self) -> u8 {
        self.bits(bth::PAD)
    }

    /// Transport header version.
    pub fn tver(&self) -> u8 {
        self.bits(bth::TVER)
    }

    /// Partition key.
    pub fn pkey(&self) -> u16 {
        be16(&self.buffer.as_ref()[bth::PKEY])
    }

    /// Forward explicit congestion notification.
    pub fn fecn(&self) -> bool {
        self.bits(bth::FECN) != 0
    }

    /// Backward explicit congestion notification.
    pub fn becn(&self) -> bool {
        self.bits(bth::BECN) != 0
    }

    /// Reserved bits 29:24 of the destination-QP word.
    pub fn resv6a(&self) -> u8 {
        self.bits(bth::RESV6A)
    }

    /// Destination queue pair number (24 bits).
    pub fn dest_qp(&self) -> u32 {
        be24(&self.buffer.as_ref()[bth::DEST_QP])
    }

    /// Acknowledge request.
    pub fn ack_req(&self) -> bool {
        self.bits(bth::ACK_REQ) != 0
    }

    /// Reserved bits 30:24 of the PSN word.
    pub fn resv7(&self) -> u8 {
        self.bits(bth::RESV7)
    }

    /// Packet sequence number (24 bits).
    pub fn psn(&self) -> u32 {
        be24(&self.buffer.as_ref()[bth::PSN])
    }

    /// The extended headers the opcode carries; `None` for an unknown
    /// opcode.
    pub fn layout(&self) -> Option<Layout> {
        self.opcode().layout()
    }

    /// Length of the BTH and the extended headers (the BTH alone for an
    /// unknown opcode).
    pub fn header_len(&self) -> usize {
        BthRepr::LEN + self.layout().map_or(0, |l| l.ext_len())
    }

    /// Where `ext` starts in the buffer, if the opcode's layout has it.
    #[inline]
    fn ext_at(&self, ext: Ext) -> Option<usize> {
        Some(BthRepr::LEN + self.layout()?.ext_offset(ext)?)
    }

    /// The bytes of `ext`, if the opcode's layout has it.
    #[inline]
    pub(super) fn ext(&self, ext: Ext) -> Option<&[u8]> {
        let at = self.ext_at(ext)?;
        Some(&self.buffer.as_ref()[at..at + ext.len()])
    }

    /// RETH: remote virtual address.
    pub fn reth_va(&self) -> Option<u64> {
        self.ext(Ext::Reth).map(|h| be64(&h[reth::VA]))
    }

    /// RETH: remote key.
    pub fn reth_rkey(&self) -> Option<u32> {
        self.ext(Ext::Reth).map(|h| be32(&h[reth::RKEY]))
    }

    /// RETH: DMA length of the whole message.
    pub fn reth_dma_len(&self) -> Option<u32> {
        self.ext(Ext::Reth).map(|h| be32(&h[reth::DMA_LEN]))
    }

    /// AtomicETH: remote virtual address.
    pub fn atomic_va(&self) -> Option<u64> {
        self.ext(Ext::AtomicEth).map(|h| be64(&h[atomic_eth::VA]))
    }

    /// AtomicETH: remote key.
    pub fn atomic_rkey(&self) -> Option<u32> {
        self.ext(Ext::AtomicEth).map(|h| be32(&h[atomic_eth::RKEY]))
    }

    /// AtomicETH: swap value (COMPARE_SWAP) or addend (FETCH_ADD).
    pub fn atomic_swap_add(&self) -> Option<u64> {
        self.ext(Ext::AtomicEth)
            .map(|h| be64(&h[atomic_eth::SWAP_ADD]))
    }

    /// AtomicETH: compare value.
    pub fn atomic_compare(&self) -> Option<u64> {
        self.ext(Ext::AtomicEth)
            .map(|h| be64(&h[atomic_eth::COMPARE]))
    }

    /// AETH: the raw syndrome byte.
    pub fn aeth_syndrome_raw(&self) -> Option<u8> {
        self.ext(Ext::Aeth).map(|h| h[aeth::SYNDROME])
    }

    /// AETH: the decoded syndrome.
    pub fn aeth_syndrome(&self) -> Option<Syndrome> {
        self.aeth_syndrome_raw().map(Syndrome::from_raw)
    }

    /// AETH: message sequence number (24 bits).
    pub fn aeth_msn(&self) -> Option<u32> {
        self.ext(Ext::Aeth).map(|h| be24(&h[aeth::MSN]))
    }

    /// AtomicAckETH: the value the target held before the operation.
    pub fn atomic_ack_orig(&self) -> Option<u64> {
        self.ext(Ext::AtomicAckEth)
            .map(|h| be64(&h[atomic_ack_eth::ORIG]))
    }

    /// Immediate data, in network byte order as a number.
    pub fn immdt(&self) -> Option<u32> {
        self.ext(Ext::ImmDt).map(|h| be32(&h[field::WORD]))
    }

    /// IETH: the rkey to invalidate.
    pub fn ieth_rkey(&self) -> Option<u32> {
        self.ext(Ext::Ieth).map(|h| be32(&h[field::WORD]))
    }

    /// Where the payload lies in the buffer: from the end of the headers to
    /// the pad.
    #[inline]
    pub(super) fn payload_range(&self) -> Range<usize> {
        let end = self.buffer.as_ref().len() - ICRC_LEN - usize::from(self.pad());
        self.header_len()..end
    }

    /// The payload, without pad.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    /// The pad bytes (as many as [`Packet::pad`] says; senders write zeros).
    pub fn pad_bytes(&self) -> &[u8] {
        let buf = self.buffer.as_ref();
        &buf[self.payload_range().end..buf.len() - ICRC_LEN]
    }

    /// The ICRC trailer, read little-endian as kernel rxe stores it.
    pub fn icrc_trailer(&self) -> u32 {
        let buf = self.buffer.as_ref();
        let t = &buf[buf.len() - ICRC_LEN..];
        u32::from_le_bytes([t[0], t[1], t[2], t[3]])
    }
}

/// Setters write one field in place and leave every other bit of the
/// buffer as it was. Only [`Packet::set_opcode`] and [`Packet::set_pad`]
/// move the boundaries the other accessors see.
impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the low bits of `value` into a bit field.
    fn set_bits(&mut self, (byte, mask): Bits, value: u8) {
        let b = &mut self.buffer.as_mut()[byte];
        *b = (*b & !mask) | ((value << mask.trailing_zeros()) & mask);
    }

    /// Sets the opcode, and with it the layout every other accessor
    /// assumes: nothing moves, so the buffer must already be sized and
    /// filled for the new opcode's layout (as when building a packet for
    /// it, or when switching between opcodes of the same layout).
    pub fn set_opcode(&mut self, opcode: Opcode) {
        self.buffer.as_mut()[bth::OPCODE] = opcode.0;
    }

    /// Sets the solicited-event bit.
    pub fn set_solicited(&mut self, value: bool) {
        self.set_bits(bth::SOLICITED, value.into());
    }

    /// Sets the migration-request bit.
    pub fn set_mig_req(&mut self, value: bool) {
        self.set_bits(bth::MIG_REQ, value.into());
    }

    /// Sets the pad count (low 2 bits). This moves the end of the payload:
    /// the packet stays valid only if the pad fits after the headers (and
    /// is 0 for an opcode without payload).
    pub fn set_pad(&mut self, value: u8) {
        self.set_bits(bth::PAD, value);
    }

    /// Sets the transport header version (low 4 bits; only 0 is valid).
    pub fn set_tver(&mut self, value: u8) {
        self.set_bits(bth::TVER, value);
    }

    /// Sets the partition key.
    pub fn set_pkey(&mut self, value: u16) {
        set_be16(&mut self.buffer.as_mut()[bth::PKEY], value);
    }

    /// Sets the FECN bit.
    pub fn set_fecn(&mut self, value: bool) {
        self.set_bits(bth::FECN, value.into());
    }

    /// Sets the BECN bit.
    pub fn set_becn(&mut self, value: bool) {
        self.set_bits(bth::BECN, value.into());
    }

    /// Sets the reserved bits of the destination-QP word (low 6 bits).
    pub fn set_resv6a(&mut self, value: u8) {
        self.set_bits(bth::RESV6A, value);
    }

    /// Sets the destination queue pair number (low 24 bits).
    pub fn set_dest_qp(&mut self, value: u32) {
        set_be24(&mut self.buffer.as_mut()[bth::DEST_QP], value);
    }

    /// Sets the acknowledge-request bit.
    pub fn set_ack_req(&mut self, value: bool) {
        self.set_bits(bth::ACK_REQ, value.into());
    }

    /// Sets the reserved bits of the PSN word (low 7 bits).
    pub fn set_resv7(&mut self, value: u8) {
        self.set_bits(bth::RESV7, value);
    }

    /// Sets the packet sequence number (low 24 bits).
    pub fn set_psn(&mut self, value: u32) {
        set_be24(&mut self.buffer.as_mut()[bth::PSN], value);
    }

    /// The bytes of `ext`.
    ///
    /// # Panics
    /// If the opcode's layout lacks `ext`: setting a field of a header the
    /// packet does not have is a caller bug.
    fn ext_mut(&mut self, ext: Ext) -> &mut [u8] {
        let Some(at) = self.ext_at(ext) else {
            panic!("{} carries no {ext:?}", self.opcode())
        };
        &mut self.buffer.as_mut()[at..at + ext.len()]
    }

    /// Sets the RETH remote virtual address.
    ///
    /// # Panics
    /// If the opcode carries no RETH (as every RETH setter).
    pub fn set_reth_va(&mut self, value: u64) {
        set_be64(&mut self.ext_mut(Ext::Reth)[reth::VA], value);
    }

    /// Sets the RETH remote key.
    pub fn set_reth_rkey(&mut self, value: u32) {
        set_be32(&mut self.ext_mut(Ext::Reth)[reth::RKEY], value);
    }

    /// Sets the RETH DMA length.
    pub fn set_reth_dma_len(&mut self, value: u32) {
        set_be32(&mut self.ext_mut(Ext::Reth)[reth::DMA_LEN], value);
    }

    /// Sets the AtomicETH remote virtual address.
    ///
    /// # Panics
    /// If the opcode carries no AtomicETH (as every AtomicETH setter).
    pub fn set_atomic_va(&mut self, value: u64) {
        set_be64(&mut self.ext_mut(Ext::AtomicEth)[atomic_eth::VA], value);
    }

    /// Sets the AtomicETH remote key.
    pub fn set_atomic_rkey(&mut self, value: u32) {
        set_be32(&mut self.ext_mut(Ext::AtomicEth)[atomic_eth::RKEY], value);
    }

    /// Sets the AtomicETH swap value or addend.
    pub fn set_atomic_swap_add(&mut self, value: u64) {
        set_be64(
            &mut self.ext_mut(Ext::AtomicEth)[atomic_eth::SWAP_ADD],
            value,
        );
    }

    /// Sets the AtomicETH compare value.
    pub fn set_atomic_compare(&mut self, value: u64) {
        set_be64(
            &mut self.ext_mut(Ext::AtomicEth)[atomic_eth::COMPARE],
            value,
        );
    }

    /// Sets the raw AETH syndrome byte.
    ///
    /// # Panics
    /// If the opcode carries no AETH (as every AETH setter).
    pub fn set_aeth_syndrome_raw(&mut self, value: u8) {
        self.ext_mut(Ext::Aeth)[aeth::SYNDROME] = value;
    }

    /// Sets the AETH syndrome from its decoded form.
    pub fn set_aeth_syndrome(&mut self, value: Syndrome) {
        self.set_aeth_syndrome_raw(value.to_raw());
    }

    /// Sets the AETH message sequence number (low 24 bits).
    pub fn set_aeth_msn(&mut self, value: u32) {
        set_be24(&mut self.ext_mut(Ext::Aeth)[aeth::MSN], value);
    }

    /// Sets the AtomicAckETH original value.
    ///
    /// # Panics
    /// If the opcode carries no AtomicAckETH.
    pub fn set_atomic_ack_orig(&mut self, value: u64) {
        set_be64(
            &mut self.ext_mut(Ext::AtomicAckEth)[atomic_ack_eth::ORIG],
            value,
        );
    }

    /// Sets the immediate data.
    ///
    /// # Panics
    /// If the opcode carries no ImmDt.
    pub fn set_immdt(&mut self, value: u32) {
        set_be32(&mut self.ext_mut(Ext::ImmDt)[field::WORD], value);
    }

    /// Sets the rkey to invalidate.
    ///
    /// # Panics
    /// If the opcode carries no IETH.
    pub fn set_ieth_rkey(&mut self, value: u32) {
        set_be32(&mut self.ext_mut(Ext::Ieth)[field::WORD], value);
    }

    /// The payload, without pad, for writing in place.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.payload_range();
        &mut self.buffer.as_mut()[range]
    }

    /// Sets the ICRC trailer, written little-endian as kernel rxe stores it.
    pub fn set_icrc_trailer(&mut self, value: u32) {
        let buf = self.buffer.as_mut();
        let at = buf.len() - ICRC_LEN;
        buf[at..].copy_from_slice(&value.to_le_bytes());
    }
}
