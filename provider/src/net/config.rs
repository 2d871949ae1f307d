//! Options of a [`super::RoceSocket`].

use std::time::Duration;

use super::packet::Ipv4IdPolicy;
#[cfg(doc)]
use super::{RecvSlot, RoceSocket};

/// Smallest slot accepted while GRO is on: a coalesced datagram can reach
/// 64 KiB.
pub const GRO_SLOT_CAPACITY: usize = 65_536;

/// Options for [`RoceSocket::bind_with`].
#[derive(Clone, Debug)]
pub struct SocketConfig {
    /// Send runs of equal-size packets to one destination as one UDP GSO
    /// message (`UDP_SEGMENT`). IPv4 always; IPv6 only with
    /// `ipv6_zero_checksum` off (the kernel refuses GSO without checksums).
    pub gso: bool,
    /// Receive coalesced datagrams (`UDP_GRO`); every [`RecvSlot`] must then
    /// hold [`GRO_SLOT_CAPACITY`] bytes.
    pub gro: bool,
    /// IPv6: send UDP checksum 0 as kernel rxe does (`UDP_NO_CHECK6_TX`).
    /// Zero-checksum datagrams are always accepted (`UDP_NO_CHECK6_RX`).
    pub ipv6_zero_checksum: bool,
    /// How received IPv4 packets are judged.
    pub ipv4_id: Ipv4IdPolicy,
    /// Receive buffer size, if set: `SO_RCVBUFFORCE`, or `SO_RCVBUF`
    /// (capped at net.core.rmem_max) without CAP_NET_ADMIN. Bursts of
    /// small datagrams need more than the default (each costs its skb's
    /// truesize, several times its length).
    pub recv_buffer: Option<usize>,
    /// Send buffer size, if set: `SO_SNDBUFFORCE` or `SO_SNDBUF`.
    pub send_buffer: Option<usize>,
    /// How long [`RoceSocket::send_batch`] waits for send-buffer space
    /// before returning what it sent (`None`: do not wait).
    pub send_wait: Option<Duration>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        Self {
            gso: true,
            gro: false,
            ipv6_zero_checksum: true,
            ipv4_id: Ipv4IdPolicy::Solve,
            recv_buffer: None,
            send_buffer: None,
            send_wait: Some(Duration::from_secs(1)),
        }
    }
}
