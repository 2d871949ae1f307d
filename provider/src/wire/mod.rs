//! The RoCEv2 wire format: the InfiniBand transport headers carried in UDP
//! (destination port 4791) and the invariant CRC that ends every packet.
//!
//! Two layers, smoltcp style:
//!
//! - [`Packet`] is a typed view of a buffer: getters and setters that read
//!   and write each field in place, big-endian, without copying. Use it on
//!   hot paths that look at a few fields of a received packet (PSN, QPN,
//!   opcode) or patch a few in a built one (PSN on a retransmission, the
//!   ICRC trailer). [`Packet::new_checked`] holds every validation rule.
//! - The `*Repr` structs are plain values: [`PacketRepr`] and one per
//!   header, each with `parse` (validates, never panics on any input) and
//!   `emit`. [`PacketRepr::parse`] checks with [`Packet::new_checked`],
//!   takes every header from the view, and borrows its payload from the
//!   buffer. Use them to decide on a whole packet or to build one from
//!   values. [`PacketRepr::check`] holds a built repr to the rules parse
//!   applies (its extended headers exactly those of its opcode's
//!   [`Layout`]), and `emit` refuses what it rejects.
//!
//! Field positions are defined once, in the view; parsing then emitting a
//! packet reproduces it byte for byte, reserved bits and pad bytes
//! included. No sockets and no memory registrations live here.

mod aeth;
mod atomic;
mod bth;
mod encap;
mod flow;
#[cfg(test)]
pub(crate) mod golden;
pub(crate) mod icrc;
pub(crate) mod ip_udp;
mod opcode;
mod packet;
#[cfg(test)]
mod packet_tests;
mod reth;
mod view;
#[cfg(test)]
mod view_tests;

pub use aeth::{AethRepr, NakCode, Syndrome};
pub use atomic::{AtomicAckEthRepr, AtomicEthRepr};
pub use bth::BthRepr;
pub use encap::{UdpDatagram, ip_of_ethernet};
pub use flow::{FLOW_SOURCE_PORT_BASE, flow_label, udp_source_port};
pub use icrc::{ICRC_LEN, icrc, icrc_of_udp_payload};
pub use ip_udp::IpHeader;
pub use opcode::{Layout, Opcode};
pub use packet::PacketRepr;
pub use reth::RethRepr;
pub use view::Packet;

/// The UDP destination port of RoCEv2.
pub const ROCE_V2_PORT: u16 = 4791;

/// Why bytes are not a valid packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ends inside a header or before the ICRC.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// The part that does not fit.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// An opcode this implementation does not handle.
    #[error("unknown or unsupported opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// A transport header version other than 0.
    #[error("transport header version {0}")]
    BadVersion(u8),
    /// A pad count on a packet that carries no payload, or a payload
    /// shorter than its pad.
    #[error("pad count {pad} with {payload} payload bytes")]
    BadPad {
        /// The BTH pad count.
        pad: u8,
        /// Payload bytes present (pad included).
        payload: usize,
    },
    /// A packet that carries no payload has one.
    #[error("{0} carries no payload but {1} bytes follow its headers")]
    UnexpectedPayload(Opcode, usize),
    /// A repr whose extended headers are not those of its opcode's
    /// layout (refused by `emit`, which would write a packet that parses
    /// differently or not at all).
    #[error("{opcode} {} a {header}", if *required { "requires" } else { "carries no" })]
    HeaderMismatch {
        /// The BTH opcode.
        opcode: Opcode,
        /// The extended header present without its opcode calling for it,
        /// or missing although it does.
        header: &'static str,
        /// Whether the opcode's layout has that header.
        required: bool,
    },
    /// A value wider than the header field that is to hold it (refused by
    /// `emit`, which would truncate it).
    #[error("{field} {value:#x} does not fit its field")]
    FieldOverflow {
        /// The field.
        field: &'static str,
        /// The value.
        value: u32,
    },
    /// The invariant CRC does not match.
    #[error("ICRC {found:#010x}, expected {expected:#010x}")]
    BadIcrc {
        /// The trailer.
        found: u32,
        /// What the headers and payload give.
        expected: u32,
    },
    /// The IP or UDP header around the packet is malformed.
    #[error("bad IP/UDP encapsulation: {0}")]
    BadEncapsulation(&'static str),
}

pub(crate) fn check_len(what: &'static str, buf: &[u8], need: usize) -> Result<(), WireError> {
    if buf.len() < need {
        Err(WireError::Truncated {
            what,
            need,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

// Big-endian readers and writers of slices of exactly the right length
// (callers slice after `check_len`, or with the ranges of `view::field`).
// A 24-bit field is written from the low 24 bits of its value.
pub(crate) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

pub(crate) fn be24(b: &[u8]) -> u32 {
    u32::from_be_bytes([0, b[0], b[1], b[2]])
}

pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub(crate) fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

pub(crate) fn set_be16(b: &mut [u8], value: u16) {
    b.copy_from_slice(&value.to_be_bytes());
}

pub(crate) fn set_be24(b: &mut [u8], value: u32) {
    b.copy_from_slice(&value.to_be_bytes()[1..]);
}

pub(crate) fn set_be32(b: &mut [u8], value: u32) {
    b.copy_from_slice(&value.to_be_bytes());
}

pub(crate) fn set_be64(b: &mut [u8], value: u64) {
    b.copy_from_slice(&value.to_be_bytes());
}
