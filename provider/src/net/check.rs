//! The ICRC over the IP and UDP headers the kernel will emit (or did emit;
//! built by [`crate::wire::ip_udp`]): sealing outgoing packets and judging
//! received ones.

use std::io;
use std::net::{IpAddr, SocketAddr};

use super::ipv4_id::{ID_OFFSET_IN_CRC_MESSAGE, solve_ipv4_id};
use super::{IcrcVerdict, Ipv4IdPolicy};
use crate::wire::icrc::{GROUP, IcrcGroup, LRH_LEN};
use crate::wire::ip_udp::{
    ipv4, ipv6, udp, write_masked_ipv4, write_masked_ipv6, write_masked_udp,
};
use crate::wire::{BthRepr, ICRC_LEN};

/// Largest UDP payload in an IPv4 datagram (65535 - 20 - 8).
pub const MAX_PAYLOAD_V4: usize = 65_507;
/// Largest UDP payload in an IPv6 datagram without jumbograms (65535 - 8).
pub const MAX_PAYLOAD_V6: usize = 65_527;
/// Smallest RoCEv2 UDP payload: a BTH and an ICRC.
pub const MIN_PAYLOAD: usize = BthRepr::LEN + ICRC_LEN;

/// Bytes of the ICRC message after the IPv4 ID: the rest of the IPv4 header,
/// the UDP header and `roce_len` bytes of BTH..pad.
const fn bytes_after_ipv4_id(roce_len: usize) -> usize {
    LRH_LEN + ipv4::LEN + udp::LEN + roce_len - (ID_OFFSET_IN_CRC_MESSAGE + 2)
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Checks that a UDP payload of `len` bytes can travel from `src` to `dst`.
pub(crate) fn check_packet(src: &SocketAddr, dst: &SocketAddr, len: usize) -> io::Result<()> {
    let max = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => MAX_PAYLOAD_V4,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => MAX_PAYLOAD_V6,
        _ => {
            return Err(invalid(
                "destination address family differs from the socket's",
            ));
        }
    };
    if len < MIN_PAYLOAD {
        return Err(invalid("packet shorter than a BTH plus the 4 ICRC bytes"));
    }
    if len > max {
        return Err(invalid("packet longer than a UDP datagram can be"));
    }
    Ok(())
}

/// The ICRC of a UDP payload (`payload` = BTH..pad followed by the 4 ICRC
/// bytes, whose contents are ignored) sent from `src` to `dst` with IPv4 ID
/// `ip_id` (ignored for IPv6).
///
/// # Errors
/// `InvalidInput` if the families differ or the length is impossible.
pub fn payload_icrc(
    src: &SocketAddr,
    dst: &SocketAddr,
    ip_id: u16,
    payload: &[u8],
) -> io::Result<u32> {
    check_packet(src, dst, payload.len())?;
    let mut group = IcrcGroup::<1>::new();
    gather(
        &mut group,
        src,
        dst,
        ip_id,
        &payload[..payload.len() - ICRC_LEN],
    )?;
    let mut crc = 0;
    group.hash(|_, c| crc = c);
    Ok(crc)
}

/// Gathers into `group` the ICRC message of a packet from `src` to `dst`
/// whose UDP payload is `roce` and the ICRC (families and length checked by
/// [`check_packet`]).
fn gather<'a, const N: usize>(
    group: &mut IcrcGroup<'a, N>,
    src: &SocketAddr,
    dst: &SocketAddr,
    ip_id: u16,
    roce: &'a [u8],
) -> io::Result<()> {
    let udp_len = udp::LEN + roce.len() + ICRC_LEN;
    let ports = (src.port(), dst.port());
    // Written in place: see `write_masked_udp`.
    let write_udp = |room: &mut [u8]| {
        let h = room.first_chunk_mut::<{ udp::LEN }>().unwrap();
        write_masked_udp(h, ports.0, ports.1, udp_len);
    };
    let gathered = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => group.push_with(roce, |room| {
            let (ip, rest) = room.split_first_chunk_mut::<{ ipv4::LEN }>().unwrap();
            write_masked_ipv4(ip, s, d, ip_id, udp_len);
            write_udp(rest);
            ipv4::LEN + udp::LEN
        }),
        (IpAddr::V6(s), IpAddr::V6(d)) => group.push_with(roce, |room| {
            let (ip, rest) = room.split_first_chunk_mut::<{ ipv6::LEN }>().unwrap();
            write_masked_ipv6(ip, &s, &d, udp_len);
            write_udp(rest);
            ipv6::LEN + udp::LEN
        }),
        _ => {
            return Err(invalid(
                "destination address family differs from the socket's",
            ));
        }
    };
    gathered.map_err(|_| invalid("packet shorter than a BTH"))
}

/// Writes the ICRC into the last 4 bytes of `payload` (little-endian, as
/// kernel rxe stores it).
///
/// # Errors
/// As [`payload_icrc`].
pub fn seal(src: &SocketAddr, dst: &SocketAddr, ip_id: u16, payload: &mut [u8]) -> io::Result<()> {
    let crc = payload_icrc(src, dst, ip_id, payload)?;
    let at = payload.len() - ICRC_LEN;
    payload[at..].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// [`seal`]s the segments of one GSO send from `src`, given as
/// `(destination, payload)`: the k-th with IPv4 ID k, as the kernel numbers
/// them. Gathers [`GROUP`] messages before hashing any (see
/// [`IcrcGroup`]), or [`SMALL_GROUP`] for a send that small.
///
/// # Errors
/// As [`payload_icrc`]; the segments before the failing one are sealed.
pub(crate) fn seal_segments<'p>(
    src: &SocketAddr,
    segments: impl ExactSizeIterator<Item = (&'p SocketAddr, &'p mut [u8])>,
) -> io::Result<()> {
    // A latency tool's sends are one or two packets: clearing room for
    // eight messages would cost them more than the drained stores save.
    if segments.len() <= SMALL_GROUP {
        seal_in_groups::<SMALL_GROUP>(src, segments)
    } else {
        seal_in_groups::<GROUP>(src, segments)
    }
}

/// The smaller group, for one or two packets.
pub(crate) const SMALL_GROUP: usize = 2;

/// [`seal_segments`] gathering `N` messages at a time.
fn seal_in_groups<'p, const N: usize>(
    src: &SocketAddr,
    segments: impl Iterator<Item = (&'p SocketAddr, &'p mut [u8])>,
) -> io::Result<()> {
    let mut segments = segments.enumerate();
    // Emptied by each hash: its room is cleared once per send.
    let mut group = IcrcGroup::<N>::new();
    loop {
        let mut trailers: [&mut [u8]; N] = std::array::from_fn(|_| Default::default());
        let mut failed = None;
        for trailer in &mut trailers {
            let Some((id, (dest, payload))) = segments.next() else {
                break;
            };
            if let Err(e) = check_packet(src, dest, payload.len()) {
                failed = Some(e);
                break;
            }
            let (roce, icrc) = payload.split_at_mut(payload.len() - ICRC_LEN);
            if let Err(e) = gather(&mut group, src, dest, id as u16, roce) {
                failed = Some(e);
                break;
            }
            *trailer = icrc;
        }
        let gathered = group.len();
        group.hash(|k, crc| trailers[k].copy_from_slice(&crc.to_le_bytes()));
        if let Some(e) = failed {
            return Err(e);
        }
        if gathered < N {
            return Ok(());
        }
    }
}

/// Judges the ICRC of a received UDP payload that came from `src` to `dst`
/// (the destination address from the IP header, the local port).
///
/// IPv6: the full 32-bit check. IPv4: ID 0 first (our own senders); then
/// the ID that would make it match, if any and if `policy` admits it.
pub fn verify(
    src: &SocketAddr,
    dst: &SocketAddr,
    payload: &[u8],
    policy: Ipv4IdPolicy,
) -> IcrcVerdict {
    let mut verdict = [IcrcVerdict::Unverifiable];
    let mut group = IcrcGroup::<1>::new();
    verify_group(&mut group, src, dst, &[payload], policy, &mut verdict);
    verdict[0]
}

/// [`verify`] of up to `N` payloads from `src` to `dst`, into `verdicts`
/// in the same order. Gathers their messages in `group` (empty, and left
/// so) before hashing any (see [`IcrcGroup`]).
///
/// # Panics
/// If there are more than `N` payloads.
pub(crate) fn verify_group<'a, const N: usize>(
    group: &mut IcrcGroup<'a, N>,
    src: &SocketAddr,
    dst: &SocketAddr,
    payloads: &[&'a [u8]],
    policy: Ipv4IdPolicy,
    verdicts: &mut [IcrcVerdict; N],
) {
    // Which payload each gathered message is.
    let mut gathered = [0; N];
    for (i, payload) in payloads.iter().enumerate() {
        verdicts[i] = if payload.len() < MIN_PAYLOAD {
            IcrcVerdict::TooShort
        } else if check_packet(src, dst, payload.len()).is_err()
            || gather(group, src, dst, 0, &payload[..payload.len() - ICRC_LEN]).is_err()
        {
            // Mixed families or an impossible length: not a datagram a
            // kernel could have delivered to this socket.
            IcrcVerdict::Unverifiable
        } else {
            gathered[group.len() - 1] = i;
            continue;
        };
    }
    group.hash(|k, expected| {
        let i = gathered[k];
        verdicts[i] = judge_icrc(src, payloads[i], expected, policy);
    });
}

/// The verdict on `payload` (from `src`, at least [`MIN_PAYLOAD`] bytes)
/// whose contents give `expected` with IPv4 ID 0.
// Inlined: a verdict returned through the stack was read back wider than
// it was written, which stalled every packet.
#[inline(always)]
fn judge_icrc(
    src: &SocketAddr,
    payload: &[u8],
    expected: u32,
    policy: Ipv4IdPolicy,
) -> IcrcVerdict {
    let t = &payload[payload.len() - ICRC_LEN..];
    let found = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
    if found == expected {
        return IcrcVerdict::Good;
    }
    if src.is_ipv4() {
        let roce_len = payload.len() - ICRC_LEN;
        let max = match policy {
            Ipv4IdPolicy::Solve => u16::MAX,
            Ipv4IdPolicy::UpTo(max) => max,
        };
        if let Some(id) = solve_ipv4_id(found ^ expected, bytes_after_ipv4_id(roce_len))
            && id <= max
        {
            return IcrcVerdict::GoodWithIpId(id);
        }
    }
    IcrcVerdict::Bad { found, expected }
}
