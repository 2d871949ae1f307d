//! The IPv4, IPv6 and UDP headers in front of a RoCEv2 packet: where their
//! fields lie, the fields the ICRC masks, and the headers the kernel emits
//! for the provider's datagrams. Capture decapsulation
//! ([`super::UdpDatagram`]), the ICRC ([`super::icrc`]) and the
//! transport's checks (`net::check`) all read and write them through this
//! module.
//!
//! Only what RoCEv2 uses: IPv4 without options (as rxe sends), IPv6
//! without extension headers, UDP.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use super::be16;

/// The IP protocol (IPv4) or next header (IPv6) number of UDP.
pub(crate) const IPPROTO_UDP: u8 = 17;

/// The IPv4 header without options.
pub(crate) mod ipv4 {
    use std::ops::Range;

    /// Header length.
    pub(crate) const LEN: usize = 20;
    /// Version and header length.
    pub(crate) const VERSION_IHL: usize = 0;
    /// Version 4, five 32-bit words: no options.
    pub(crate) const VERSION_IHL_NO_OPTIONS: u8 = 0x45;
    /// Type of service (DSCP, ECN): masked by the ICRC.
    pub(crate) const TOS: usize = 1;
    /// Total length, header included.
    pub(crate) const TOTAL_LEN: Range<usize> = 2..4;
    /// Identification.
    pub(crate) const ID: Range<usize> = 4..6;
    /// Flags and fragment offset.
    pub(crate) const FLAGS_FRAGMENT: Range<usize> = 6..8;
    /// Don't Fragment, offset 0.
    pub(crate) const DONT_FRAGMENT: u16 = 0x4000;
    /// More Fragments and the fragment offset: nonzero in a fragment.
    pub(crate) const FRAGMENT_BITS: u16 = 0x3fff;
    /// Time to live: masked by the ICRC.
    pub(crate) const TTL: usize = 8;
    /// Protocol.
    pub(crate) const PROTOCOL: usize = 9;
    /// Header checksum: masked by the ICRC.
    pub(crate) const CHECKSUM: Range<usize> = 10..12;
    /// Source address.
    pub(crate) const SRC: Range<usize> = 12..16;
    /// Destination address.
    pub(crate) const DST: Range<usize> = 16..20;
}

/// The IPv6 header.
pub(crate) mod ipv6 {
    use std::ops::Range;

    /// Header length.
    pub(crate) const LEN: usize = 40;
    /// Version (high nibble of byte 0): 6, traffic class 0.
    pub(crate) const VERSION: u8 = 0x60;
    /// Version, traffic class and flow label: all but the version nibble
    /// are masked by the ICRC.
    pub(crate) const VERSION_CLASS_FLOW: Range<usize> = 0..4;
    /// The version nibble of the first byte.
    pub(crate) const VERSION_MASK: u8 = 0xf0;
    /// Payload length (the header excluded).
    pub(crate) const PAYLOAD_LEN: Range<usize> = 4..6;
    /// Next header.
    pub(crate) const NEXT_HEADER: usize = 6;
    /// Hop limit: masked by the ICRC.
    pub(crate) const HOP_LIMIT: usize = 7;
    /// Source address.
    pub(crate) const SRC: Range<usize> = 8..24;
    /// Destination address.
    pub(crate) const DST: Range<usize> = 24..40;
}

/// The UDP header.
pub(crate) mod udp {
    use std::ops::Range;

    /// Header length.
    pub(crate) const LEN: usize = 8;
    /// Source port.
    pub(crate) const SRC_PORT: Range<usize> = 0..2;
    /// Destination port.
    pub(crate) const DST_PORT: Range<usize> = 2..4;
    /// Length, header included.
    pub(crate) const LENGTH: Range<usize> = 4..6;
    /// Checksum: masked by the ICRC.
    pub(crate) const CHECKSUM: Range<usize> = 6..8;
}

/// The IP header in front of a packet (options are not allowed, as in
/// kernel rxe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpHeader<'a> {
    /// A 20-byte IPv4 header.
    V4(&'a [u8; 20]),
    /// A 40-byte IPv6 header.
    V6(&'a [u8; 40]),
}

impl IpHeader<'_> {
    /// The IPv4 identification, or `None` for IPv6.
    pub fn ipv4_id(&self) -> Option<u16> {
        match self {
            IpHeader::V4(h) => Some(be16(&h[ipv4::ID])),
            IpHeader::V6(_) => None,
        }
    }

    /// The IPv6 flow label, or `None` for IPv4.
    pub fn flow_label(&self) -> Option<u32> {
        match self {
            IpHeader::V4(_) => None,
            IpHeader::V6(h) => Some(u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]])),
        }
    }
}

/// Sets the IPv4 fields a router may change to all ones, as the ICRC
/// covers them: TOS, TTL, header checksum.
pub(crate) fn mask_ipv4(h: &mut [u8; ipv4::LEN]) {
    h[ipv4::TOS] = 0xff;
    h[ipv4::TTL] = 0xff;
    h[ipv4::CHECKSUM].fill(0xff);
}

/// Sets the IPv6 fields a router may change to all ones, as the ICRC
/// covers them: traffic class, flow label, hop limit.
pub(crate) fn mask_ipv6(h: &mut [u8; ipv6::LEN]) {
    let version = h[0] & ipv6::VERSION_MASK;
    h[ipv6::VERSION_CLASS_FLOW].fill(0xff);
    h[0] = version | !ipv6::VERSION_MASK;
    h[ipv6::HOP_LIMIT] = 0xff;
}

/// Sets the UDP checksum to all ones, as the ICRC covers it.
pub(crate) fn mask_udp(h: &mut [u8; udp::LEN]) {
    h[udp::CHECKSUM].fill(0xff);
}

/// Copies `bytes` into `h` at `at`.
fn put(h: &mut [u8], at: Range<usize>, bytes: &[u8]) {
    h[at].copy_from_slice(bytes);
}

/// The IPv4 header a DF packet of `udp_len` UDP bytes gets from Linux when
/// sent from an unconnected socket with `IP_PMTUDISC_DO`: ID `id` (0, or
/// the segment index within a GSO send), DF, no options. TOS, TTL and the
/// header checksum are left 0: the ICRC masks them.
#[cfg(test)]
pub(crate) fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, id: u16, udp_len: usize) -> [u8; 20] {
    let mut h = [0u8; ipv4::LEN];
    write_ipv4_fields(&mut h, src, dst, id, udp_len);
    h
}

/// [`ipv4_header`] as the ICRC sees it ([`mask_ipv4`]), written in place
/// (see [`write_masked_udp`]).
pub(crate) fn write_masked_ipv4(
    h: &mut [u8; ipv4::LEN],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    udp_len: usize,
) {
    write_ipv4_fields(h, src, dst, id, udp_len);
    mask_ipv4(h);
}

/// Writes the fields of [`ipv4_header`] the ICRC does not mask; the
/// masked ones keep what `h` held.
fn write_ipv4_fields(
    h: &mut [u8; ipv4::LEN],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    udp_len: usize,
) {
    h[ipv4::VERSION_IHL] = ipv4::VERSION_IHL_NO_OPTIONS;
    put(
        h,
        ipv4::TOTAL_LEN,
        &((ipv4::LEN + udp_len) as u16).to_be_bytes(),
    );
    put(h, ipv4::ID, &id.to_be_bytes());
    put(h, ipv4::FLAGS_FRAGMENT, &ipv4::DONT_FRAGMENT.to_be_bytes());
    h[ipv4::PROTOCOL] = IPPROTO_UDP;
    put(h, ipv4::SRC, &src.octets());
    put(h, ipv4::DST, &dst.octets());
}

/// The IPv6 header of a UDP datagram of `udp_len` bytes. Traffic class,
/// flow label and hop limit are masked by the ICRC and left 0.
#[cfg(test)]
pub(crate) fn ipv6_header(src: &Ipv6Addr, dst: &Ipv6Addr, udp_len: usize) -> [u8; 40] {
    let mut h = [0u8; ipv6::LEN];
    write_ipv6_fields(&mut h, src, dst, udp_len);
    h
}

/// [`ipv6_header`] as the ICRC sees it ([`mask_ipv6`]), written in place
/// (see [`write_masked_udp`]).
pub(crate) fn write_masked_ipv6(
    h: &mut [u8; ipv6::LEN],
    src: &Ipv6Addr,
    dst: &Ipv6Addr,
    udp_len: usize,
) {
    write_ipv6_fields(h, src, dst, udp_len);
    mask_ipv6(h);
}

/// Writes the fields of [`ipv6_header`]; the masked ones other than the
/// version nibble keep what `h` held.
fn write_ipv6_fields(h: &mut [u8; ipv6::LEN], src: &Ipv6Addr, dst: &Ipv6Addr, udp_len: usize) {
    h[0] = ipv6::VERSION | (h[0] & !ipv6::VERSION_MASK);
    put(h, ipv6::PAYLOAD_LEN, &(udp_len as u16).to_be_bytes());
    h[ipv6::NEXT_HEADER] = IPPROTO_UDP;
    put(h, ipv6::SRC, &src.octets());
    put(h, ipv6::DST, &dst.octets());
}

/// A UDP header (checksum 0: the ICRC masks it).
#[cfg(test)]
pub(crate) fn udp_header(src_port: u16, dst_port: u16, udp_len: usize) -> [u8; 8] {
    let mut h = [0u8; udp::LEN];
    write_udp_fields(&mut h, src_port, dst_port, udp_len);
    h
}

/// [`udp_header`] as the ICRC sees it ([`mask_udp`]), written straight
/// into the ICRC's message: a header built apart and copied in would be
/// read back with wide loads right after the narrow stores that built it,
/// which cannot take their bytes from the store buffer and wait for the
/// stores to drain (a fifth of the receive path's gathering time).
pub(crate) fn write_masked_udp(
    h: &mut [u8; udp::LEN],
    src_port: u16,
    dst_port: u16,
    udp_len: usize,
) {
    write_udp_fields(h, src_port, dst_port, udp_len);
    mask_udp(h);
}

/// Writes the fields of [`udp_header`] but the checksum.
fn write_udp_fields(h: &mut [u8; udp::LEN], src_port: u16, dst_port: u16, udp_len: usize) {
    put(h, udp::SRC_PORT, &src_port.to_be_bytes());
    put(h, udp::DST_PORT, &dst_port.to_be_bytes());
    put(h, udp::LENGTH, &(udp_len as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masks_set_exactly_the_mutable_fields() {
        let mut v4 = [0u8; ipv4::LEN];
        mask_ipv4(&mut v4);
        let ones: Vec<usize> = (0..ipv4::LEN).filter(|&i| v4[i] == 0xff).collect();
        assert_eq!(ones, [1, 8, 10, 11]);
        let mut v6 = [0u8; ipv6::LEN];
        v6[0] = 0x60;
        mask_ipv6(&mut v6);
        assert_eq!(&v6[..4], &[0x6f, 0xff, 0xff, 0xff]);
        assert_eq!(v6[ipv6::HOP_LIMIT], 0xff);
        assert!(v6[4..7].iter().chain(&v6[8..]).all(|&b| b == 0));
        let mut u = [0u8; udp::LEN];
        mask_udp(&mut u);
        assert_eq!(u, [0, 0, 0, 0, 0, 0, 0xff, 0xff]);
    }

    #[test]
    fn built_headers_read_back() {
        let h = ipv4_header(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            7,
            48,
        );
        assert_eq!(IpHeader::V4(&h).ipv4_id(), Some(7));
        assert_eq!(be16(&h[ipv4::TOTAL_LEN]), 68);
        assert_eq!(&h[ipv4::SRC], &[10, 0, 0, 1]);
        let h6 = ipv6_header(&Ipv6Addr::LOCALHOST, &Ipv6Addr::LOCALHOST, 48);
        assert_eq!(IpHeader::V6(&h6).flow_label(), Some(0));
        assert_eq!(be16(&h6[ipv6::PAYLOAD_LEN]), 48);
        let u = udp_header(5000, 4791, 48);
        assert_eq!(be16(&u[udp::DST_PORT]), 4791);
        assert_eq!(be16(&u[udp::LENGTH]), 48);
    }

    #[test]
    fn headers_written_in_place_over_old_bytes_are_the_built_ones_masked() {
        // The ICRC's message room still holds the previous packet's bytes.
        for old in [0x00, 0x5a, 0xff] {
            let (s, d) = (Ipv4Addr::new(192, 168, 7, 1), Ipv4Addr::new(10, 1, 2, 3));
            let mut expected = ipv4_header(s, d, 0xbeef, 1060);
            mask_ipv4(&mut expected);
            let mut h = [old; ipv4::LEN];
            write_masked_ipv4(&mut h, s, d, 0xbeef, 1060);
            assert_eq!(h, expected);

            let (s6, d6) = (Ipv6Addr::LOCALHOST, "fe80::1".parse().unwrap());
            let mut expected = ipv6_header(&s6, &d6, 1060);
            mask_ipv6(&mut expected);
            let mut h = [old; ipv6::LEN];
            write_masked_ipv6(&mut h, &s6, &d6, 1060);
            assert_eq!(h, expected);

            let mut expected = udp_header(49152, 4791, 1060);
            mask_udp(&mut expected);
            let mut h = [old; udp::LEN];
            write_masked_udp(&mut h, 49152, 4791, 1060);
            assert_eq!(h, expected);
        }
    }
}
