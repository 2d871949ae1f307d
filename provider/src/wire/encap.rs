//! The encapsulation around a RoCEv2 packet on the wire: an Ethernet frame
//! (optionally VLAN-tagged) or a bare IP packet, carrying UDP over IPv4
//! (no options, as rxe sends) or IPv6 (no extension headers). For tools and
//! tests that read captured frames; the device itself never sees these
//! headers (a UDP socket strips them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::ip_udp::{IPPROTO_UDP, IpHeader, ipv4, ipv6, udp};
use super::{ROCE_V2_PORT, WireError, be16, icrc_of_udp_payload};

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;

/// A UDP datagram taken out of a captured frame, with the IP header the
/// ICRC covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// The IP header (IPv4 without options, or IPv6).
    pub ip: IpHeader<'a>,
    /// The UDP header.
    pub udp: &'a [u8; 8],
    /// The UDP payload, as long as the UDP header says (Ethernet padding
    /// after it is dropped).
    pub payload: &'a [u8],
    /// Source address and UDP port.
    pub src: SocketAddr,
    /// Destination address and UDP port.
    pub dst: SocketAddr,
}

fn bad(what: &'static str) -> WireError {
    WireError::BadEncapsulation(what)
}

/// The IPv4 or IPv6 packet in an Ethernet frame (with at most one VLAN
/// tag).
///
/// # Errors
/// [`WireError::BadEncapsulation`] for other EtherTypes or a frame too
/// short for its link headers.
pub fn ip_of_ethernet(frame: &[u8]) -> Result<&[u8], WireError> {
    let mut at = 12;
    let mut ethertype = be16(frame.get(at..at + 2).ok_or(bad("short Ethernet header"))?);
    if ethertype == ETHERTYPE_VLAN {
        at += 4;
        ethertype = be16(frame.get(at..at + 2).ok_or(bad("short VLAN tag"))?);
    }
    match ethertype {
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => Ok(&frame[at + 2..]),
        _ => Err(bad("not IPv4 or IPv6")),
    }
}

/// The IP header of `packet`, its addresses, and what follows it (with
/// `cut`, as much of it as was captured).
fn ip_layer(packet: &[u8], cut: bool) -> Result<(IpHeader<'_>, IpAddr, IpAddr, &[u8]), WireError> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let h: &[u8; ipv4::LEN] = packet
                .get(..ipv4::LEN)
                .and_then(|h| h.try_into().ok())
                .ok_or(bad("short IPv4 header"))?;
            if h[ipv4::VERSION_IHL] != ipv4::VERSION_IHL_NO_OPTIONS {
                return Err(bad("IPv4 options"));
            }
            if h[ipv4::PROTOCOL] != IPPROTO_UDP {
                return Err(bad("not UDP"));
            }
            if be16(&h[ipv4::FLAGS_FRAGMENT]) & ipv4::FRAGMENT_BITS != 0 {
                return Err(bad("IPv4 fragment"));
            }
            let s = Ipv4Addr::from(octets::<4>(&h[ipv4::SRC]));
            let d = Ipv4Addr::from(octets::<4>(&h[ipv4::DST]));
            let total = usize::from(be16(&h[ipv4::TOTAL_LEN]));
            let rest = within(packet, ipv4::LEN, total, cut)
                .ok_or(bad("IPv4 total length beyond the frame"))?;
            Ok((IpHeader::V4(h), IpAddr::V4(s), IpAddr::V4(d), rest))
        }
        Some(6) => {
            let h: &[u8; ipv6::LEN] = packet
                .get(..ipv6::LEN)
                .and_then(|h| h.try_into().ok())
                .ok_or(bad("short IPv6 header"))?;
            if h[ipv6::NEXT_HEADER] != IPPROTO_UDP {
                return Err(bad("not UDP (or IPv6 extension headers)"));
            }
            let s = Ipv6Addr::from(octets::<16>(&h[ipv6::SRC]));
            let d = Ipv6Addr::from(octets::<16>(&h[ipv6::DST]));
            let total = ipv6::LEN + usize::from(be16(&h[ipv6::PAYLOAD_LEN]));
            let rest = within(packet, ipv6::LEN, total, cut)
                .ok_or(bad("IPv6 payload length beyond the frame"))?;
            Ok((IpHeader::V6(h), IpAddr::V6(s), IpAddr::V6(d), rest))
        }
        _ => Err(bad("not an IPv4 or IPv6 packet")),
    }
}

/// Bytes `from..to` of `bytes`, or, for a `cut` packet, as many of them as
/// there are.
fn within(bytes: &[u8], from: usize, to: usize, cut: bool) -> Option<&[u8]> {
    bytes
        .get(from..to)
        .or_else(|| if cut { bytes.get(from..) } else { None })
}

/// The `N` bytes of an address field (its range is `N` long).
fn octets<const N: usize>(field: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(field);
    a
}

impl<'a> UdpDatagram<'a> {
    /// Decodes an Ethernet frame (with at most one VLAN tag) carrying UDP
    /// over IPv4 or IPv6.
    ///
    /// # Errors
    /// [`WireError::BadEncapsulation`] for anything else or a frame cut
    /// short; never panics.
    pub fn from_ethernet(frame: &'a [u8]) -> Result<Self, WireError> {
        Self::from_ip(ip_of_ethernet(frame)?)
    }

    /// Decodes an IP packet (version from its first nibble) carrying UDP.
    ///
    /// # Errors
    /// [`WireError::BadEncapsulation`] for other protocols, IPv4 options,
    /// IPv6 extension headers, fragments, or lengths that do not fit;
    /// never panics.
    pub fn from_ip(packet: &'a [u8]) -> Result<Self, WireError> {
        Self::decode(packet, false)
    }

    /// Like [`Self::from_ip`], for a packet the capture cut short: the IP
    /// and UDP lengths may announce more than is there, and the payload is
    /// what was captured of it ([`Self::udp_payload_len`] says how much
    /// there was on the wire).
    ///
    /// # Errors
    /// As [`Self::from_ip`], except for the lengths beyond the packet.
    pub fn from_ip_cut(packet: &'a [u8]) -> Result<Self, WireError> {
        Self::decode(packet, true)
    }

    /// The UDP payload length the UDP header announces.
    pub fn udp_payload_len(&self) -> usize {
        usize::from(be16(&self.udp[udp::LENGTH])).saturating_sub(udp::LEN)
    }

    /// Decodes the headers; with `cut`, lengths beyond the end of `packet`
    /// are taken as truncation rather than errors.
    fn decode(packet: &'a [u8], cut: bool) -> Result<Self, WireError> {
        let (ip, src, dst, rest) = ip_layer(packet, cut)?;
        let udp_header: &[u8; udp::LEN] = rest
            .get(..udp::LEN)
            .and_then(|u| u.try_into().ok())
            .ok_or(bad("short UDP header"))?;
        let len = usize::from(be16(&udp_header[udp::LENGTH]));
        let payload = within(rest, udp::LEN, len.max(udp::LEN), cut)
            .filter(|_| len >= udp::LEN)
            .ok_or(bad("UDP length does not fit the IP packet"))?;
        Ok(UdpDatagram {
            ip,
            udp: udp_header,
            payload,
            src: SocketAddr::new(src, be16(&udp_header[udp::SRC_PORT])),
            dst: SocketAddr::new(dst, be16(&udp_header[udp::DST_PORT])),
        })
    }

    /// Whether it goes to the RoCEv2 port (4791).
    pub fn is_roce(&self) -> bool {
        self.dst.port() == ROCE_V2_PORT
    }

    /// The ICRC the payload carries and the one its contents and these
    /// headers give, as `(found, expected)`.
    ///
    /// # Errors
    /// [`WireError::Truncated`] if the payload cannot hold a BTH and an
    /// ICRC.
    pub fn icrc(&self) -> Result<(u32, u32), WireError> {
        icrc_of_udp_payload(self.ip, self.udp, self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_udp::{ipv4_header, udp_header};

    /// An Ethernet frame of UDP over IPv4 from 10.0.0.1:5000 to
    /// 10.0.0.2:4791 with `payload`, plus 6 bytes of Ethernet padding.
    fn ipv4_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let udp_len = udp::LEN + payload.len();
        let ip = ipv4_header([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 0, udp_len);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&udp_header(5000, ROCE_V2_PORT, udp_len));
        f.extend_from_slice(payload);
        f.extend_from_slice(&[0; 6]);
        f
    }

    #[test]
    fn an_ipv4_frame_decodes_and_its_padding_is_dropped() {
        let f = ipv4_frame(&[1, 2, 3]);
        let d = UdpDatagram::from_ethernet(&f).unwrap();
        assert_eq!(d.payload, &[1, 2, 3]);
        assert_eq!(d.src, "10.0.0.1:5000".parse().unwrap());
        assert_eq!(d.dst, "10.0.0.2:4791".parse().unwrap());
        assert!(d.is_roce());
        // A VLAN tag in front changes nothing.
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&f[12..]);
        assert_eq!(UdpDatagram::from_ethernet(&tagged).unwrap(), d);
    }

    #[test]
    fn every_cut_and_bad_field_is_an_error() {
        let f = ipv4_frame(&[1, 2, 3]);
        // Cut anywhere before the end of the UDP payload.
        for len in 0..f.len() - 6 {
            assert!(UdpDatagram::from_ethernet(&f[..len]).is_err(), "{len}");
        }
        for (at, value, what) in [
            (14, 0x46, "IPv4 options"),
            (14 + 9, 6, "not UDP"),
            (14 + 7, 1, "IPv4 fragment"),
            (13, 0x06, "not IPv4 or IPv6"),
        ] {
            let mut g = f.clone();
            g[at] = value;
            assert_eq!(
                UdpDatagram::from_ethernet(&g),
                Err(WireError::BadEncapsulation(what))
            );
        }
        let mut short_udp = f.clone();
        short_udp[14 + 20 + 5] = 7; // UDP length 7
        assert!(UdpDatagram::from_ethernet(&short_udp).is_err());
        // Cut inside the payload: decodable as cut, with what is there.
        let cut = UdpDatagram::from_ip_cut(&f[14..14 + 20 + 8 + 2]).unwrap();
        assert_eq!((cut.payload, cut.udp_payload_len()), (&[1, 2][..], 3));
        assert!(cut.is_roce());
        // Cut inside the UDP header: not even that.
        assert!(UdpDatagram::from_ip_cut(&f[14..14 + 20 + 7]).is_err());
        // A whole packet decodes the same either way.
        let whole = UdpDatagram::from_ethernet(&f).unwrap();
        assert_eq!(UdpDatagram::from_ip_cut(&f[14..]).unwrap(), whole);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let f = ipv4_frame(&[9; 40]);
        for _ in 0..100_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut g = f.clone();
            // A few random bytes anywhere, and a random length.
            for k in 0..3 {
                let at = (seed >> (k * 16)) as usize % g.len();
                g[at] = (seed >> (k * 8 + 40)) as u8;
            }
            g.truncate((seed >> 52) as usize % (f.len() + 1));
            let _ = UdpDatagram::from_ethernet(&g);
            let _ = UdpDatagram::from_ip(g.get(14..).unwrap_or(&[]));
        }
    }
}
