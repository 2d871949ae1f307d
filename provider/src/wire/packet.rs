//! One RoCEv2 packet: the BTH, the extended headers its opcode calls for,
//! the payload and the pad, followed by the ICRC.
//!
//! The opcode decides the layout. [`PacketRepr`] keeps one `Option` per
//! extended header so that code reading a parsed packet writes
//! `pkt.reth` whatever the opcode; what it may not do is contradict the
//! opcode when built by hand. [`PacketRepr::check`] holds that rule (the
//! headers present are exactly those of the opcode's [`Layout`], and the
//! field, version, pad and payload rules of [`Packet::new_checked`]), and
//! every method that writes or sizes a packet (`emit`, `emit_headers`,
//! `len`, `header_len`) goes through it and returns a [`WireError`]
//! instead of bytes `parse` would refuse. Checking at emit time rather
//! than encoding each layout as its own type keeps one plain struct for
//! the many readers of parsed packets; the property test in
//! `packet_tests.rs` holds emit and parse to each other for every opcode.

use super::opcode::Ext;
use super::view::field;
use super::{
    AethRepr, AtomicAckEthRepr, AtomicEthRepr, BthRepr, ICRC_LEN, Layout, Packet, RethRepr,
    WireError, check_len, set_be32,
};

/// A parsed packet. The payload is borrowed from the parsed buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketRepr<'a> {
    /// Base transport header.
    pub bth: BthRepr,
    /// RDMA extended transport header.
    pub reth: Option<RethRepr>,
    /// Atomic extended transport header.
    pub atomic_eth: Option<AtomicEthRepr>,
    /// ACK extended transport header.
    pub aeth: Option<AethRepr>,
    /// Atomic ACK extended transport header.
    pub atomic_ack_eth: Option<AtomicAckEthRepr>,
    /// Immediate data, in network byte order as a number.
    pub immdt: Option<u32>,
    /// The rkey to invalidate.
    pub ieth: Option<u32>,
    /// The payload, without pad.
    pub payload: &'a [u8],
    /// The pad bytes' contents (the first `bth.pad` are used; senders
    /// write zeros).
    pub pad_bytes: [u8; 3],
}

impl<'a> PacketRepr<'a> {
    /// Parses a UDP payload: headers, payload, pad and the ICRC trailer
    /// (whose value is not checked here; see [`super::icrc_of_udp_payload`]).
    ///
    /// # Errors
    /// Those of [`Packet::new_checked`], which holds the rules:
    /// [`WireError::Truncated`], [`WireError::UnknownOpcode`],
    /// [`WireError::BadVersion`], [`WireError::BadPad`],
    /// [`WireError::UnexpectedPayload`]. Never panics, whatever the input.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let p = Packet::new_checked(buf)?;
        // A checked packet holds every header of its layout, exactly sized,
        // so the header parsers cannot fail.
        let reth = p.ext(Ext::Reth).map(RethRepr::parse).transpose()?;
        let atomic_eth = p
            .ext(Ext::AtomicEth)
            .map(AtomicEthRepr::parse)
            .transpose()?;
        let aeth = p.ext(Ext::Aeth).map(AethRepr::parse).transpose()?;
        let atomic_ack_eth = p
            .ext(Ext::AtomicAckEth)
            .map(AtomicAckEthRepr::parse)
            .transpose()?;
        let mut pad_bytes = [0u8; 3];
        pad_bytes[..usize::from(p.pad())].copy_from_slice(p.pad_bytes());
        Ok(PacketRepr {
            bth: BthRepr::read(&p),
            reth,
            atomic_eth,
            aeth,
            atomic_ack_eth,
            immdt: p.immdt(),
            ieth: p.ieth_rkey(),
            payload: &buf[p.payload_range()],
            pad_bytes,
        })
    }

    /// A packet with `bth`, no extended headers and `payload`, its pad
    /// bytes zero. The BTH's pad count is used as given (see
    /// [`Self::pad_for`]); senders that place the payload themselves leave
    /// `payload` empty and emit only the headers.
    pub fn new(bth: BthRepr, payload: &'a [u8]) -> Self {
        PacketRepr {
            bth,
            reth: None,
            atomic_eth: None,
            aeth: None,
            atomic_ack_eth: None,
            immdt: None,
            ieth: None,
            payload,
            pad_bytes: [0; 3],
        }
    }

    /// The same headers without the payload (borrowed from a buffer that
    /// may not live on), for keeping after parsing.
    pub fn headers_only(&self) -> PacketRepr<'static> {
        PacketRepr {
            bth: self.bth,
            reth: self.reth,
            atomic_eth: self.atomic_eth,
            aeth: self.aeth,
            atomic_ack_eth: self.atomic_ack_eth,
            immdt: self.immdt,
            ieth: self.ieth,
            payload: &[],
            pad_bytes: self.pad_bytes,
        }
    }

    /// Checks this repr against its opcode and returns the opcode's
    /// layout: the rules [`Packet::new_checked`] applies to bytes, applied
    /// to values, so that nothing [`Self::emit`] writes is refused by
    /// [`Self::parse`] or parses back to a different repr.
    ///
    /// # Errors
    /// [`WireError::UnknownOpcode`]; [`WireError::BadVersion`] for a
    /// transport header version other than 0;
    /// [`WireError::FieldOverflow`] for a BTH or AETH value wider than its
    /// field; [`WireError::HeaderMismatch`] if the extended headers present
    /// are not exactly those of the opcode's [`Layout`];
    /// [`WireError::BadPad`] for a pad count on an opcode without payload;
    /// [`WireError::UnexpectedPayload`] for a payload on one.
    pub fn check(&self) -> Result<Layout, WireError> {
        let layout = self.check_headers()?;
        if !layout.payload && !self.payload.is_empty() {
            return Err(WireError::UnexpectedPayload(
                self.bth.opcode,
                self.payload.len(),
            ));
        }
        Ok(layout)
    }

    /// [`Self::check`] without the payload rule, for senders that place
    /// the payload themselves.
    fn check_headers(&self) -> Result<Layout, WireError> {
        let b = &self.bth;
        let layout = b
            .opcode
            .layout()
            .ok_or(WireError::UnknownOpcode(b.opcode.0))?;
        if b.tver != 0 {
            return Err(WireError::BadVersion(b.tver));
        }
        fits("BTH pad count", b.pad.into(), 2)?;
        fits("BTH reserved bits 6a", b.resv6a.into(), 6)?;
        fits("BTH destination QP", b.dest_qp, 24)?;
        fits("BTH reserved bits 7", b.resv7.into(), 7)?;
        fits("BTH PSN", b.psn, 24)?;
        if let Some(aeth) = &self.aeth {
            fits("AETH MSN", aeth.msn, 24)?;
        }
        let present = [
            (Ext::Reth, self.reth.is_some()),
            (Ext::AtomicEth, self.atomic_eth.is_some()),
            (Ext::Aeth, self.aeth.is_some()),
            (Ext::AtomicAckEth, self.atomic_ack_eth.is_some()),
            (Ext::ImmDt, self.immdt.is_some()),
            (Ext::Ieth, self.ieth.is_some()),
        ];
        for (ext, present) in present {
            if layout.has(ext) != present {
                return Err(WireError::HeaderMismatch {
                    opcode: b.opcode,
                    header: ext.name(),
                    required: layout.has(ext),
                });
            }
        }
        if !layout.payload && b.pad != 0 {
            return Err(WireError::BadPad {
                pad: b.pad,
                payload: usize::from(b.pad),
            });
        }
        Ok(layout)
    }

    /// Length of the transport headers (BTH and the extended headers of
    /// the opcode's layout).
    ///
    /// # Errors
    /// Those of [`Self::check`] except the payload rule.
    pub fn header_len(&self) -> Result<usize, WireError> {
        Ok(BthRepr::LEN + self.check_headers()?.ext_len())
    }

    /// Length on the wire: headers, payload, pad and ICRC.
    ///
    /// # Errors
    /// Those of [`Self::check`].
    pub fn len(&self) -> Result<usize, WireError> {
        let layout = self.check()?;
        Ok(BthRepr::LEN
            + layout.ext_len()
            + self.payload.len()
            + usize::from(self.bth.pad)
            + ICRC_LEN)
    }

    /// Never true for a repr that [`Self::check`] accepts: a packet has at
    /// least a BTH and an ICRC.
    ///
    /// # Errors
    /// Those of [`Self::check`].
    pub fn is_empty(&self) -> Result<bool, WireError> {
        self.len().map(|len| len == 0)
    }

    /// The pad count a payload of `len` bytes needs.
    pub fn pad_for(len: usize) -> u8 {
        (len.wrapping_neg() & 3) as u8
    }

    /// Writes headers, payload and pad into `buf` and returns how many
    /// bytes that is ([`Self::len`] minus the ICRC, which depends on the IP
    /// and UDP headers and is written by the caller). Writes nothing for a
    /// repr that [`Self::check`] refuses.
    ///
    /// # Errors
    /// Those of [`Self::check`]; [`WireError::Truncated`] if `buf` is
    /// shorter than [`Self::len`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        check_len("emit buffer", buf, self.len()?)?;
        let at = self.emit_headers(buf)?;
        let end = at + self.payload.len();
        buf[at..end].copy_from_slice(self.payload);
        let pad = usize::from(self.bth.pad);
        buf[end..end + pad].copy_from_slice(&self.pad_bytes[..pad]);
        Ok(end + pad)
    }

    /// Writes only the headers (BTH and extended headers) into `buf` and
    /// returns their length, for senders that place the payload themselves
    /// (`self.payload` is ignored; the BTH pad count is written as set).
    /// Writes nothing for headers that [`Self::check`] refuses.
    ///
    /// # Errors
    /// Those of [`Self::check`] except the payload rule;
    /// [`WireError::Truncated`] if `buf` is shorter than the headers.
    pub fn emit_headers(&self, buf: &mut [u8]) -> Result<usize, WireError> {
        let layout = self.check_headers()?;
        let len = BthRepr::LEN + layout.ext_len();
        check_len("emit buffer", buf, len)?;
        self.bth.emit(buf);
        // The layout is the opcode's and the headers present are exactly
        // its headers, so each has an offset and `len` covers them all.
        let at = |ext: Ext| {
            let start = BthRepr::LEN + layout.ext_offset(ext).unwrap_or(0);
            start..start + ext.len()
        };
        if let Some(h) = &self.reth {
            h.emit(&mut buf[at(Ext::Reth)]);
        }
        if let Some(h) = &self.atomic_eth {
            h.emit(&mut buf[at(Ext::AtomicEth)]);
        }
        if let Some(h) = &self.aeth {
            h.emit(&mut buf[at(Ext::Aeth)]);
        }
        if let Some(h) = &self.atomic_ack_eth {
            h.emit(&mut buf[at(Ext::AtomicAckEth)]);
        }
        if let Some(imm) = self.immdt {
            set_be32(&mut buf[at(Ext::ImmDt)][field::WORD], imm);
        }
        if let Some(rkey) = self.ieth {
            set_be32(&mut buf[at(Ext::Ieth)][field::WORD], rkey);
        }
        Ok(len)
    }
}

/// Whether `value` fits in a field of `bits` bits.
fn fits(field: &'static str, value: u32, bits: u32) -> Result<(), WireError> {
    if value >> bits == 0 {
        Ok(())
    } else {
        Err(WireError::FieldOverflow { field, value })
    }
}
