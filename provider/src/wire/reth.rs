//! The RDMA Extended Transport Header (16 bytes): where an RDMA WRITE or
//! READ goes.

use super::view::field::reth::{DMA_LEN, RKEY, VA};
use super::{WireError, be32, be64, check_len, set_be32, set_be64};

/// A parsed RETH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RethRepr {
    /// Remote virtual address.
    pub va: u64,
    /// Remote key.
    pub rkey: u32,
    /// DMA length of the whole message.
    pub len: u32,
}

impl RethRepr {
    /// Length on the wire.
    pub const LEN: usize = 16;

    /// Parses the first 16 bytes of `buf`.
    ///
    /// # Errors
    /// [`WireError::Truncated`].
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len("RETH", buf, Self::LEN)?;
        Ok(RethRepr {
            va: be64(&buf[VA]),
            rkey: be32(&buf[RKEY]),
            len: be32(&buf[DMA_LEN]),
        })
    }

    /// Writes the header into the first 16 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        set_be64(&mut buf[VA], self.va);
        set_be32(&mut buf[RKEY], self.rkey);
        set_be32(&mut buf[DMA_LEN], self.len);
    }
}
