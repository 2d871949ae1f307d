//! The RDMA Extended Transport Header (16 bytes): where an RDMA WRITE or
//! READ goes.

use super::{WireError, be32, be64, check_len};

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
            va: be64(&buf[0..8]),
            rkey: be32(&buf[8..12]),
            len: be32(&buf[12..16]),
        })
    }

    /// Writes the header into the first 16 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..8].copy_from_slice(&self.va.to_be_bytes());
        buf[8..12].copy_from_slice(&self.rkey.to_be_bytes());
        buf[12..16].copy_from_slice(&self.len.to_be_bytes());
    }
}
