//! The invariant CRC (ICRC) of a RoCEv2 packet.
//!
//! A CRC-32 (the zlib/Ethernet polynomial, as Linux's `crc32_le` and
//! zlib's `crc32` compute it) over: eight 0xFF bytes standing for the
//! InfiniBand LRH, the IP header, the UDP header and the BTH with every field
//! a router may change set to all ones, then the rest of the transport
//! headers, the payload and the pad. It is stored after the pad as a
//! little-endian u32, as kernel rxe stores it. Checked against every frame
//! of a real kernel-rxe capture (the provider's golden tests).
//!
//! Masked to ones: the IP and UDP fields a router may change (see
//! [`super::ip_udp`]: IPv4 TOS, TTL and header checksum; IPv6 traffic
//! class, flow label and hop limit; the UDP checksum) and BTH byte 4
//! (FECN, BECN and the reserved bits).

use super::ip_udp::{IpHeader, ipv4, ipv6, mask_ipv4, mask_ipv6, mask_udp, udp};
use super::{BthRepr, WireError, check_len};

/// Length of the ICRC trailer.
pub const ICRC_LEN: usize = 4;

/// The 0xFF bytes standing for the InfiniBand LRH at the start of the
/// ICRC's message.
pub(crate) const LRH_LEN: usize = 8;

/// The ICRC of a packet: `roce` runs from the BTH to the end of the pad
/// (the ICRC itself excluded).
///
/// # Errors
/// [`WireError::Truncated`] if `roce` is shorter than a BTH.
pub fn icrc(ip: IpHeader<'_>, udp_header: &[u8; 8], roce: &[u8]) -> Result<u32, WireError> {
    let mut group = IcrcGroup::<1>::new();
    group.push(ip, udp_header, roce)?;
    let mut crc = 0;
    group.hash(|_, c| crc = c);
    Ok(crc)
}

/// The shortest input `crc32fast` folds with PCLMULQDQ instead of its
/// table-driven loop (several times slower per byte).
const FOLD_FROM: usize = 128;

/// Room for the longest IP and UDP headers.
const IP_UDP_MAX: usize = ipv6::LEN + udp::LEN;

/// Room for the masked headers and a short packet's remaining bytes.
const HEAD_MAX: usize = LRH_LEN + IP_UDP_MAX + BthRepr::LEN + FOLD_FROM;

/// How many packets the batch callers of [`IcrcGroup`] gather before they
/// hash them: enough for the first message's stores to have drained.
pub(crate) const GROUP: usize = 8;

/// The ICRCs of up to `N` packets, gathered first and hashed after.
///
/// The masked headers go to the CRC in one piece with the packet's start
/// (small pieces each pay the CRC's per-call setup), so each message is
/// copied together from pieces; a CRC's 16-byte loads right after those
/// small stores cannot take their bytes from the store buffer and wait for
/// the stores to drain. Gathering a group before hashing any lets them
/// drain meanwhile: hashing a 64-byte WRITE's 128-byte message took 25 ns
/// right after gathering it, 12 ns after gathering eight, and sealing a
/// GSO run of such packets 23 instead of 27 ns a packet (this machine, in
/// a loop).
pub(crate) struct IcrcGroup<'a, const N: usize> {
    /// Each message's masked headers, then (a short packet) its remaining
    /// bytes: a 64-byte WRITE's 48 + 80 bytes reach [`FOLD_FROM`].
    heads: [[u8; HEAD_MAX]; N],
    head_lens: [usize; N],
    /// A long packet's bytes after the BTH, hashed in place.
    tails: [&'a [u8]; N],
    len: usize,
}

impl<'a, const N: usize> IcrcGroup<'a, N> {
    /// An empty group.
    pub(crate) fn new() -> Self {
        Self {
            heads: [[0; HEAD_MAX]; N],
            head_lens: [0; N],
            tails: [&[]; N],
            len: 0,
        }
    }

    /// How many messages are gathered.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether `N` messages are gathered.
    pub(crate) fn is_full(&self) -> bool {
        self.len == N
    }

    /// Gathers the ICRC message of a packet (`roce` as for [`icrc`]).
    ///
    /// # Errors
    /// [`WireError::Truncated`] if `roce` is shorter than a BTH.
    ///
    /// # Panics
    /// If the group is full.
    pub(crate) fn push(
        &mut self,
        ip: IpHeader<'_>,
        udp_header: &[u8; 8],
        roce: &'a [u8],
    ) -> Result<(), WireError> {
        self.push_with(roce, |room| {
            let (ip_len, rest) = match ip {
                IpHeader::V4(h) => {
                    let (m, rest) = room.split_first_chunk_mut::<{ ipv4::LEN }>().unwrap();
                    *m = *h;
                    mask_ipv4(m);
                    (ipv4::LEN, rest)
                }
                IpHeader::V6(h) => {
                    let (m, rest) = room.split_first_chunk_mut::<{ ipv6::LEN }>().unwrap();
                    *m = *h;
                    mask_ipv6(m);
                    (ipv6::LEN, rest)
                }
            };
            let u = rest.first_chunk_mut::<{ udp::LEN }>().unwrap();
            *u = *udp_header;
            mask_udp(u);
            ip_len + udp::LEN
        })
    }

    /// [`Self::push`] of a packet whose IP and UDP headers, masked,
    /// `write_masked_headers` writes at the start of the room it is given
    /// (room for an IPv6 and a UDP header), returning their length.
    pub(crate) fn push_with(
        &mut self,
        roce: &'a [u8],
        write_masked_headers: impl FnOnce(&mut [u8]) -> usize,
    ) -> Result<(), WireError> {
        check_len("BTH", roce, BthRepr::LEN)?;
        assert!(!self.is_full(), "ICRC group full");
        let message = &mut self.heads[self.len];
        message[..LRH_LEN].fill(0xff);
        let at = LRH_LEN + write_masked_headers(&mut message[LRH_LEN..LRH_LEN + IP_UDP_MAX]);
        let bth = &mut message[at..at + BthRepr::LEN];
        bth.copy_from_slice(&roce[..BthRepr::LEN]);
        bth[4] = 0xff; // FECN, BECN, reserved
        let head = at + BthRepr::LEN;
        let rest = &roce[BthRepr::LEN..];
        if rest.len() < FOLD_FROM {
            message[head..head + rest.len()].copy_from_slice(rest);
            self.head_lens[self.len] = head + rest.len();
            self.tails[self.len] = &[];
        } else {
            self.head_lens[self.len] = head;
            self.tails[self.len] = rest;
        }
        self.len += 1;
        Ok(())
    }

    /// Hashes the gathered messages, calling `out(index, icrc)` for each
    /// in the order pushed, and empties the group.
    pub(crate) fn hash(&mut self, mut out: impl FnMut(usize, u32)) {
        for k in 0..self.len {
            let mut crc = crc32fast::Hasher::new();
            crc.update(&self.heads[k][..self.head_lens[k]]);
            crc.update(self.tails[k]);
            out(k, crc.finalize());
        }
        self.len = 0;
    }
}

/// The ICRC a UDP payload carries and the one its contents give, as
/// `(found, expected)`.
///
/// # Errors
/// [`WireError::Truncated`] if the payload cannot hold a BTH and an ICRC.
pub fn icrc_of_udp_payload(
    ip: IpHeader<'_>,
    udp_header: &[u8; 8],
    payload: &[u8],
) -> Result<(u32, u32), WireError> {
    check_len("packet", payload, BthRepr::LEN + ICRC_LEN)?;
    let (roce, trailer) = payload.split_at(payload.len() - ICRC_LEN);
    let found = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    Ok((found, icrc(ip, udp_header, roce)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lrh_prefix_gives_the_kernels_seed() {
        // rxe seeds crc32_le with 0xdebb20e3: the CRC state after eight
        // 0xFF bytes.
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[0xff; 8]);
        assert_eq!(crc.finalize() ^ 0xffff_ffff, 0xdebb_20e3);
    }

    #[test]
    fn short_and_long_packets_hash_the_same_message() {
        // Around the one-piece path's bound, against the message hashed
        // as written in the module's documentation.
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[1] = 0x10; // TOS, masked
        let udp = [0xc1, 0x21, 0x12, 0xb7, 0, 40, 0x12, 0x34];
        for len in BthRepr::LEN..BthRepr::LEN + 2 * FOLD_FROM + 20 {
            let roce: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut message = vec![0xff; LRH_LEN];
            let mut masked_ip = ip;
            mask_ipv4(&mut masked_ip);
            message.extend_from_slice(&masked_ip);
            message.extend_from_slice(&[0xc1, 0x21, 0x12, 0xb7, 0, 40, 0xff, 0xff]);
            message.extend_from_slice(&roce);
            message[LRH_LEN + 20 + 8 + 4] = 0xff;
            let want = crc32fast::hash(&message);
            assert_eq!(
                icrc(IpHeader::V4(&ip), &udp, &roce).unwrap(),
                want,
                "{len} bytes"
            );
        }
    }

    #[test]
    fn mutable_fields_do_not_change_the_icrc_and_others_do() {
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        let udp = [0xc1, 0x21, 0x12, 0xb7, 0, 40, 0, 0];
        let roce = [
            0x04, 0, 0xff, 0xff, 0, 0, 0, 17, 0x80, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd,
        ];
        let base = icrc(IpHeader::V4(&ip), &udp, &roce).unwrap();
        let mut ip2 = ip;
        ip2[1] = 0x10;
        ip2[8] = 64;
        ip2[10] = 0x12;
        let mut udp2 = udp;
        udp2[6] = 0x55;
        let mut roce2 = roce;
        roce2[4] = 0xc0; // FECN and BECN
        assert_eq!(icrc(IpHeader::V4(&ip2), &udp2, &roce2).unwrap(), base);
        let mut roce3 = roce;
        roce3[11] = 2; // PSN
        assert_ne!(icrc(IpHeader::V4(&ip), &udp, &roce3).unwrap(), base);
        assert!(icrc(IpHeader::V4(&ip), &udp, &roce[..11]).is_err());
    }
}
