//! The ACK Extended Transport Header (4 bytes): syndrome and MSN.

use super::view::field::aeth::{MSN, SYNDROME};
use super::{WireError, be24, check_len, set_be24};

/// A parsed AETH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AethRepr {
    /// The raw syndrome byte (see [`AethRepr::syndrome`]).
    pub syndrome: u8,
    /// Message sequence number (24 bits).
    pub msn: u32,
}

/// The meaning of an AETH syndrome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syndrome {
    /// Positive acknowledgement with a credit count (rxe sends 31,
    /// "unlimited").
    Ack {
        /// Credit count (5 bits).
        credits: u8,
    },
    /// Receiver not ready: retry after the timer this code names.
    RnrNak {
        /// RNR timer code (5 bits).
        timer: u8,
    },
    /// Negative acknowledgement.
    Nak(NakCode),
    /// A reserved syndrome: type 0b010, or the reserved high bit set. The
    /// raw byte, which encodes back as it is (so a parsed AETH re-emits
    /// exactly).
    Reserved(u8),
}

/// NAK codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NakCode {
    /// PSN sequence error (0x60).
    PsnSequenceError,
    /// Invalid request (0x61).
    InvalidRequest,
    /// Remote access error (0x62).
    RemoteAccessError,
    /// Remote operational error (0x63).
    RemoteOperationalError,
    /// Invalid RD request (0x64).
    InvalidRdRequest,
    /// A code this implementation does not name.
    Other(u8),
}

impl AethRepr {
    /// Length on the wire.
    pub const LEN: usize = 4;

    /// Parses the first 4 bytes of `buf`.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len("AETH", buf, Self::LEN)?;
        Ok(AethRepr {
            syndrome: buf[SYNDROME],
            msn: be24(&buf[MSN]),
        })
    }

    /// Writes the header into the first 4 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[SYNDROME] = self.syndrome;
        set_be24(&mut buf[MSN], self.msn);
    }

    /// An AETH from a decoded syndrome.
    pub fn new(syndrome: Syndrome, msn: u32) -> Self {
        AethRepr {
            syndrome: syndrome.to_raw(),
            msn: msn & 0xff_ffff,
        }
    }

    /// The decoded syndrome.
    pub fn decode(&self) -> Syndrome {
        Syndrome::from_raw(self.syndrome)
    }
}

impl Syndrome {
    /// The syndrome a raw AETH syndrome byte encodes.
    pub(crate) fn from_raw(byte: u8) -> Self {
        let low = byte & 0x1f;
        match byte >> 5 {
            0b000 => Syndrome::Ack { credits: low },
            0b001 => Syndrome::RnrNak { timer: low },
            0b011 => Syndrome::Nak(match low {
                0 => NakCode::PsnSequenceError,
                1 => NakCode::InvalidRequest,
                2 => NakCode::RemoteAccessError,
                3 => NakCode::RemoteOperationalError,
                4 => NakCode::InvalidRdRequest,
                other => NakCode::Other(other),
            }),
            _ => Syndrome::Reserved(byte),
        }
    }

    /// The raw AETH syndrome byte (5-bit values are truncated; a
    /// [`Syndrome::Reserved`] byte is written as it is).
    pub(crate) fn to_raw(self) -> u8 {
        match self {
            Syndrome::Ack { credits } => credits & 0x1f,
            Syndrome::RnrNak { timer } => 0x20 | (timer & 0x1f),
            Syndrome::Reserved(raw) => raw,
            Syndrome::Nak(code) => {
                0x60 | match code {
                    NakCode::PsnSequenceError => 0,
                    NakCode::InvalidRequest => 1,
                    NakCode::RemoteAccessError => 2,
                    NakCode::RemoteOperationalError => 3,
                    NakCode::InvalidRdRequest => 4,
                    NakCode::Other(c) => c & 0x1f,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_syndrome_byte_decodes_and_encodes_back() {
        for byte in 0..=u8::MAX {
            let a = AethRepr {
                syndrome: byte,
                msn: 0x12_3456,
            };
            assert_eq!(AethRepr::new(a.decode(), a.msn), a, "{byte:#04x}");
        }
        // The reserved high bit: a reserved syndrome, kept whole.
        assert_eq!(Syndrome::from_raw(0xba), Syndrome::Reserved(0xba));
        assert_eq!(Syndrome::from_raw(0x5a), Syndrome::Reserved(0x5a));
    }
}
