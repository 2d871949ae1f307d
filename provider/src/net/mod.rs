//! The UDP transport of the soft-RoCE device: RoCEv2 packets (UDP
//! destination port 4791; payload = BTH..pad followed by a 4-byte ICRC)
//! sent and received in batches through ordinary UDP sockets, in a form
//! kernel rxe accepts and understands.
//!
//! # What the kernel puts around our packets, and the ICRC
//! The ICRC covers the IP and UDP headers, so the sender must know them
//! before the kernel writes them:
//! - IPv4: the socket is bound to a concrete address (the source), never
//!   connected, with `IP_MTU_DISCOVER = IP_PMTUDISC_DO`. Linux then sends
//!   DF and IP ID 0 (verified by capture in the tests), so the ICRC is
//!   computed over `45 00 len | 0000 4000 | ttl 11 csum | src | dst`. A GSO
//!   send gets IDs 0, 1, 2... per segment (the kernel's segmentation numbers
//!   them; verified in the tests), and each segment's ICRC uses its index.
//! - IPv6: `IPV6_V6ONLY`, `IPV6_MTU_DISCOVER = DO` (no local
//!   fragmentation), `UDP_NO_CHECK6_TX` (checksum 0 like rxe; optional,
//!   and incompatible with GSO) and `UDP_NO_CHECK6_RX` (without it Linux
//!   drops rxe's checksum-0 datagrams). Traffic class, flow label and hop
//!   limit are masked by the ICRC; the flow label is 0 as rxe sends it
//!   (`IPV6_AUTOFLOWLABEL` off).
//! - IPv4 keeps its UDP checksum, where rxe sends 0: Linux refuses GSO on a
//!   socket without checksums (`SO_NO_CHECK`), and receivers, rxe included,
//!   accept a correct checksum.
//!
//! # Source ports
//! Receiving is on the socket's port (4791 for real peers). Sending may be
//! from per-flow source ports, as kernel rxe sends each connection from a
//! port derived from its QP numbers ([`crate::wire::udp_source_port`]):
//! [`RoceSocket::open_source_port`] binds a send-only socket on the port
//! (shared and counted; `SO_REUSEPORT`, so other sockets of the address can
//! share it too) and [`OutPacket::source_port`] picks it per packet. Each
//! run of packets with one source port is sent through its socket, and its
//! ICRC covers that port.
//!
//! # Receive check and remaining protection
//! - IPv6: all 32 bits.
//! - IPv4, ID 0 (our own senders): all 32 bits ([`IcrcVerdict::Good`]).
//! - IPv4, other ID (kernel rxe, or segment k of our GSO sends, ID k): the
//!   ID is invisible to a UDP socket; it is solved for from the 32-bit
//!   mismatch ([`ipv4_id`]), leaving 16 bits ([`IcrcVerdict::GoodWithIpId`]):
//!   a random corruption passes with probability 2^-16. Because ID 0 is
//!   tried first and the solver second, under [`Ipv4IdPolicy::Solve`]
//!   *every* IPv4 packet has that 16-bit floor (a corrupted ID-0 packet may
//!   look like some other ID). Structured errors fare better: a single-bit
//!   error is always caught unless it lies 26744 bytes or more past the
//!   start of the BTH (the first offset whose syndrome aliases an ID, far
//!   beyond any RoCE MTU); about 1 in 65536 two-bit errors is missed (the
//!   full CRC-32 catches them all at these lengths). With only this
//!   crate's senders as peers, [`Ipv4IdPolicy::UpTo`]`(63)` keeps 26 bits
//!   (and `UpTo(0)`, without GSO, all 32).
//!
//! # Buffers
//! Callers own every packet buffer ([`OutPacket`], [`RecvSlot`]); each call
//! builds its mmsghdr/iovec/address/cmsg arrays on its own stack (about
//! 15 KiB, only the entries used are initialised), so there is no
//! allocation, no lock and no shared scratch on the data path, and any
//! number of threads may send and receive on one socket at once.
//!
//! # GSO and GRO
//! Runs of equal-size packets (the last may be shorter) to one destination
//! go out as one `UDP_SEGMENT` message of up to 64 packets; each segment is
//! a complete packet whose ICRC was computed with the IPv4 ID the kernel's
//! segmentation gives it (its index). If the kernel refuses a GSO message
//! (`EINVAL`/`EIO`/`EOPNOTSUPP`) the rest of the call goes packet by packet
//! ([`RoceSocket::gso_fallbacks`] counts it). With `UDP_GRO`, one received
//! datagram may hold many packets: [`RecvSlot::packets`] yields each with
//! its own verdict.

mod check;
mod config;
pub mod ipv4_id;
mod lossy;
mod packet;
mod socket;
mod source_ports;
mod sys;

#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod socket_tests;
#[cfg(test)]
mod testutil;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use check::{MAX_PAYLOAD_V4, MAX_PAYLOAD_V6, MIN_PAYLOAD, payload_icrc, seal, verify};
pub use config::{GRO_SLOT_CAPACITY, SocketConfig};
pub use lossy::{Lossy, LossySocket, LossyStats};
pub use packet::{IcrcVerdict, Ipv4IdPolicy, OutPacket, RecvSlot};
pub use socket::RoceSocket;

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// 0.0.0.0 or ::: the ICRC covers the source address, which the socket
    /// would then not know (the kernel picks it per route). Bind the
    /// device's concrete address.
    #[error("cannot bind a RoCE socket to the unspecified address {0}: bind a concrete address")]
    UnspecifiedAddress(IpAddr),
    /// An IPv4-mapped IPv6 address: use the IPv4 address itself.
    #[error("cannot bind a RoCE socket to the IPv4-mapped address {0}: use the IPv4 address")]
    MappedAddress(IpAddr),
    /// socket(2) or getsockname(2) failed.
    #[error("creating the UDP socket failed: {0}")]
    Socket(#[source] io::Error),
    /// A socket option was refused.
    #[error("setting {name} failed: {source}")]
    SetOption {
        /// The option.
        name: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// bind(2) failed (address not local, port in use...).
    #[error("binding {addr} failed: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A fault-injection rate outside 0..=1.
    #[error("fault rate {name} = {value} is not within 0..=1")]
    BadRate {
        /// Which rate.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}

impl From<NetError> for io::Error {
    fn from(e: NetError) -> Self {
        let kind = match &e {
            NetError::Socket(s)
            | NetError::SetOption { source: s, .. }
            | NetError::Bind { source: s, .. } => s.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

/// A packet transport: [`RoceSocket`], or [`LossySocket`] around one in
/// tests. The engine can be generic over it.
pub trait Transport: Send + Sync {
    /// The bound address and port.
    fn local_addr(&self) -> SocketAddr;
    /// Seals and sends a batch; see [`RoceSocket::send_batch`].
    ///
    /// # Errors
    /// As [`RoceSocket::send_batch`].
    fn send_batch(&self, packets: &mut [OutPacket<'_>]) -> io::Result<usize>;
    /// Receives a batch; see [`RoceSocket::recv_batch`].
    ///
    /// # Errors
    /// As [`RoceSocket::recv_batch`].
    fn recv_batch(&self, slots: &mut [RecvSlot], timeout: Option<Duration>) -> io::Result<usize>;
    /// Waits at most `timeout` until a datagram can be received; whether
    /// one can.
    ///
    /// # Errors
    /// The error of ppoll(2).
    fn wait_readable(&self, timeout: Duration) -> io::Result<bool>;
    /// What fault injection did so far, if this transport injects faults.
    fn fault_stats(&self) -> Option<LossyStats> {
        None
    }
    /// Opens a UDP source port for one more flow; see
    /// [`RoceSocket::open_source_port`].
    ///
    /// # Errors
    /// As [`RoceSocket::open_source_port`].
    fn open_source_port(&self, port: u16) -> Result<(), NetError>;
    /// Gives back one use of a source port; see
    /// [`RoceSocket::close_source_port`].
    fn close_source_port(&self, port: u16);
}
