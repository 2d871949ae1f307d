//! The caller-owned buffers the socket sends from and receives into, and
//! the per-packet ICRC verdict.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

#[cfg(doc)]
use super::RoceSocket;

/// One packet to send. The socket writes the ICRC into the last 4 bytes of
/// `buf` and sends all of `buf` as one UDP datagram to `dest`.
#[derive(Debug)]
pub struct OutPacket<'a> {
    /// Destination: IP address and UDP port (4791 for RoCEv2 peers).
    pub dest: SocketAddr,
    /// The UDP source port to send from, if it was opened with
    /// [`RoceSocket::open_source_port`]; 0 (or a port not open) means the
    /// socket's own port.
    pub source_port: u16,
    /// BTH..pad followed by 4 spare bytes for the ICRC.
    pub buf: &'a mut [u8],
}

impl<'a> OutPacket<'a> {
    /// A packet of `buf` (BTH..pad plus 4 spare bytes) for `dest`, sent
    /// from the socket's own port.
    pub fn new(dest: SocketAddr, buf: &'a mut [u8]) -> Self {
        Self::from_port(0, dest, buf)
    }

    /// A packet for `dest` sent from UDP source port `source_port` (see
    /// [`OutPacket::source_port`]).
    pub fn from_port(source_port: u16, dest: SocketAddr, buf: &'a mut [u8]) -> Self {
        Self {
            dest,
            source_port,
            buf,
        }
    }
}

/// The outcome of checking a received packet's ICRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcrcVerdict {
    /// The full 32-bit ICRC matches: IPv6, or IPv4 with IP ID 0 (what this
    /// crate's senders use).
    Good,
    /// IPv4 only: the ICRC matches if the IP ID (which a UDP socket cannot
    /// see) was this value; solved from the mismatch, leaving a 16-bit check.
    /// Kernel rxe's packets land here (its IDs are not 0).
    GoodWithIpId(u16),
    /// No admissible header makes the ICRC match: the packet is corrupt (or
    /// was not built by a RoCEv2 stack). For IPv4, `expected` assumes ID 0.
    Bad {
        /// The trailer the packet carries.
        found: u32,
        /// The ICRC its contents give.
        expected: u32,
    },
    /// The datagram is shorter than a BTH plus an ICRC (16 bytes).
    TooShort,
    /// The datagram (or this GRO segment) did not fit the buffer and was cut
    /// (MSG_TRUNC); the buffer holds only its start.
    Truncated,
    /// Cannot be decided: the kernel gave no destination address (no
    /// IP_PKTINFO/IPV6_PKTINFO control message, e.g. the control buffer was
    /// cut), or the addresses are of mixed families. Never seen in practice;
    /// treat like `Bad`.
    Unverifiable,
}

impl IcrcVerdict {
    /// Whether the packet may be processed (`Good` or `GoodWithIpId`).
    pub fn is_good(self) -> bool {
        matches!(self, Self::Good | Self::GoodWithIpId(_))
    }
}

/// How the receive path treats IPv4 packets whose ICRC does not match with
/// IP ID 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ipv4IdPolicy {
    /// Solve for the ID and accept any (needed for kernel rxe peers, whose
    /// IDs are arbitrary): a 16-bit residual check.
    #[default]
    Solve,
    /// Solve for the ID but accept only IDs up to this value. This crate's
    /// senders use ID 0, or 0..=63 for the segments of a GSO send, so with
    /// only such peers `UpTo(63)` leaves 32 - 6 = 26 bits of check and
    /// `UpTo(0)` (no GSO) the full 32.
    UpTo(u16),
}

/// Initial capacity for per-segment verdicts; a GRO datagram holds at most
/// 64 (UDP_GRO_CNT_MAX) and a loopback GSO one at most UDP_MAX_SEGMENTS
/// (64 or 128 depending on the kernel).
const SEGMENTS: usize = 128;

/// One receive buffer with the metadata of the datagram last received into
/// it. Create once, reuse for every call: receiving never allocates.
#[derive(Debug)]
pub struct RecvSlot {
    pub(crate) buf: Box<[u8]>,
    pub(crate) len: usize,
    pub(crate) wire_len: usize,
    pub(crate) truncated: bool,
    pub(crate) src: SocketAddr,
    pub(crate) dst: Option<IpAddr>,
    pub(crate) segment: Option<usize>,
    /// Per packet: start, end and verdict.
    pub(crate) verdicts: Vec<(usize, usize, IcrcVerdict)>,
}

impl RecvSlot {
    /// A slot whose buffer holds `capacity` bytes. Use 65536 with GRO
    /// enabled; otherwise the largest packet expected (MTU + 64 is enough
    /// for RoCE; larger datagrams are reported as truncated).
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0u8; capacity].into_boxed_slice(),
            len: 0,
            wire_len: 0,
            truncated: false,
            src: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            dst: None,
            segment: None,
            verdicts: Vec::with_capacity(SEGMENTS),
        }
    }

    /// The buffer's size.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The received bytes (the whole UDP payload, or its start if it was
    /// truncated; several packets if GRO coalesced them).
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Mutable access to the received bytes (e.g. to parse in place).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    /// Bytes received into the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was received into the slot.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The datagram's length as sent (larger than [`Self::len`] if it was
    /// truncated).
    pub fn wire_len(&self) -> usize {
        self.wire_len
    }

    /// Whether the datagram was longer than the buffer (MSG_TRUNC).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The sender's address and UDP port.
    pub fn src(&self) -> SocketAddr {
        self.src
    }

    /// The destination address of the IP header (one of this host's; the
    /// socket's own when bound to a concrete address), if the kernel told.
    pub fn dst(&self) -> Option<IpAddr> {
        self.dst
    }

    /// The segment size if GRO coalesced several packets into this datagram.
    pub fn gro_segment(&self) -> Option<usize> {
        self.segment
    }

    /// The ICRC verdict of the first (usually only) packet.
    pub fn verdict(&self) -> IcrcVerdict {
        self.verdicts
            .first()
            .map_or(IcrcVerdict::TooShort, |&(_, _, v)| v)
    }

    /// The packets in the datagram (one, or one per GRO segment) with their
    /// verdicts. A truncated last segment comes with `Truncated`.
    pub fn packets(&self) -> impl Iterator<Item = (&[u8], IcrcVerdict)> + '_ {
        self.verdicts
            .iter()
            .map(|&(start, end, v)| (&self.buf[start..end], v))
    }

    /// Number of packets in the datagram (GRO segments, or 1).
    pub fn packet_count(&self) -> usize {
        self.verdicts.len()
    }

    /// Clears the metadata before a receive.
    pub(crate) fn reset(&mut self) {
        self.len = 0;
        self.wire_len = 0;
        self.truncated = false;
        self.dst = None;
        self.segment = None;
        self.verdicts.clear();
    }
}
