//! The Atomic Extended Transport Header (28 bytes) and the Atomic ACK
//! Extended Transport Header (8 bytes).

use super::view::field::{atomic_ack_eth, atomic_eth};
use super::{WireError, be32, be64, check_len, set_be32, set_be64};

/// A parsed AtomicETH. FETCH_ADD carries the addend in `swap_add`;
/// COMPARE_SWAP the swap value in `swap_add` and the compare value in
/// `compare`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtomicEthRepr {
    /// Remote virtual address (8-byte aligned).
    pub va: u64,
    /// Remote key.
    pub rkey: u32,
    /// Swap value or addend.
    pub swap_add: u64,
    /// Compare value.
    pub compare: u64,
}

impl AtomicEthRepr {
    /// Length on the wire.
    pub const LEN: usize = 28;

    /// Parses the first 28 bytes of `buf`.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len("AtomicETH", buf, Self::LEN)?;
        Ok(AtomicEthRepr {
            va: be64(&buf[atomic_eth::VA]),
            rkey: be32(&buf[atomic_eth::RKEY]),
            swap_add: be64(&buf[atomic_eth::SWAP_ADD]),
            compare: be64(&buf[atomic_eth::COMPARE]),
        })
    }

    /// Writes the header into the first 28 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        set_be64(&mut buf[atomic_eth::VA], self.va);
        set_be32(&mut buf[atomic_eth::RKEY], self.rkey);
        set_be64(&mut buf[atomic_eth::SWAP_ADD], self.swap_add);
        set_be64(&mut buf[atomic_eth::COMPARE], self.compare);
    }
}

/// A parsed AtomicAckETH: the value the target held before the operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtomicAckEthRepr {
    /// Original remote data.
    pub orig: u64,
}

impl AtomicAckEthRepr {
    /// Length on the wire.
    pub const LEN: usize = 8;

    /// Parses the first 8 bytes of `buf`.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len("AtomicAckETH", buf, Self::LEN)?;
        Ok(AtomicAckEthRepr {
            orig: be64(&buf[atomic_ack_eth::ORIG]),
        })
    }

    /// Writes the header into the first 8 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        set_be64(&mut buf[atomic_ack_eth::ORIG], self.orig);
    }
}
