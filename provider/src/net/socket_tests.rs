//! Real sockets on loopback: round trips, the headers the kernel emits,
//! checksum-0 IPv6, crafted rxe-like IPv4, truncation, GSO/GRO.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Duration;

use super::socket::MAX_GSO_SEGMENTS;
use super::testutil::{Capture, psn_of, raw_send, send_only, udp_frame};
use super::*;
use crate::wire::ip_udp::{ipv4_header, udp_header};
use crate::wire::{IpHeader, icrc_of_udp_payload};

const WAIT: Duration = Duration::from_secs(5);

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(crate) fn config(gso: bool) -> SocketConfig {
    SocketConfig {
        gso,
        ..SocketConfig::default()
    }
}

/// A receiver with room for the tests' bursts.
pub(crate) fn receiver(addr: &str) -> RoceSocket {
    receiver_with(addr, SocketConfig::default())
}

pub(crate) fn receiver_with(addr: &str, cfg: SocketConfig) -> RoceSocket {
    let cfg = SocketConfig {
        recv_buffer: Some(16 << 20),
        ..cfg
    };
    RoceSocket::bind_with(SocketAddr::new(ip(addr), 0), cfg).unwrap()
}

/// Receives until `want` packets arrived (or WAIT passed): (bytes, verdict,
/// source, destination).
pub(crate) fn recv_packets(
    sock: &impl Transport,
    slot_size: usize,
    want: usize,
) -> Vec<(Vec<u8>, IcrcVerdict, SocketAddr, Option<IpAddr>)> {
    let mut slots: Vec<RecvSlot> = (0..32).map(|_| RecvSlot::new(slot_size)).collect();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while out.len() < want && std::time::Instant::now() < deadline {
        let n = sock
            .recv_batch(&mut slots, Some(Duration::from_millis(200)))
            .unwrap();
        for s in &slots[..n] {
            for (bytes, v) in s.packets() {
                out.push((bytes.to_vec(), v, s.src(), s.dst()));
            }
        }
    }
    out
}

/// Sends `count` SEND_ONLY packets of `len` payload bytes from `tx` to
/// `rx`, receives them, checks contents, addresses and verdicts, and checks
/// what the kernel put on the wire when a capture is available.
fn round_trip(tx: &RoceSocket, rx: &RoceSocket, count: usize, len: usize) {
    let capture = Capture::on_loopback();
    let dest = rx.local_addr();
    let mut bufs: Vec<Vec<u8>> = (0..count).map(|i| send_only(i as u32, len)).collect();
    let mut packets: Vec<OutPacket<'_>> =
        bufs.iter_mut().map(|b| OutPacket::new(dest, b)).collect();
    assert_eq!(tx.send_batch(&mut packets).unwrap(), count);
    let got = recv_packets(rx, 65_536, count);
    assert_eq!(got.len(), count);
    let (mut last_id, mut gso_ids) = (0u32, 0);
    for (i, (bytes, verdict, src, dst)) in got.iter().enumerate() {
        assert_eq!(*src, tx.local_addr());
        assert_eq!(*dst, Some(dest.ip()));
        let psn = psn_of(bytes) as usize;
        assert_eq!(psn, i, "in order on loopback");
        assert_eq!(bytes[..], bufs[psn][..], "bytes, ICRC included");
        // Under GSO, segment k of a send carries IP ID k: the solved IDs of
        // consecutive packets run 0 (Good), 1, 2, ... and restart at 0.
        let want = match (tx.gso_enabled() && dest.is_ipv4(), *verdict) {
            (true, IcrcVerdict::GoodWithIpId(k)) => {
                assert!(usize::from(k) < MAX_GSO_SEGMENTS);
                assert_eq!(last_id + 1, u32::from(k), "packet {i}");
                gso_ids += 1;
                IcrcVerdict::GoodWithIpId(k)
            }
            _ => IcrcVerdict::Good,
        };
        last_id = match want {
            IcrcVerdict::GoodWithIpId(k) => u32::from(k),
            _ => 0,
        };
        assert_eq!(*verdict, want, "packet {i}");
    }
    if tx.gso_enabled() && dest.is_ipv4() && count > 1 {
        assert!(
            gso_ids >= count / 2,
            "most packets went as later GSO segments"
        );
    }
    let Some(capture) = capture else { return };
    let want = if tx.gso_enabled() { 1 } else { count };
    let frames = capture.collect(dest, want, WAIT);
    assert_eq!(frames.len(), want, "captured frames");
    for frame in &frames {
        let f = udp_frame(frame).unwrap();
        match f.ip {
            IpHeader::V4(h) => {
                assert_eq!(&h[4..8], &[0, 0, 0x40, 0x00], "IP ID 0 and DF");
            }
            IpHeader::V6(_) => {
                let csum = u16::from_be_bytes([f.udp[6], f.udp[7]]);
                let zero = tx.config().ipv6_zero_checksum;
                assert_eq!(csum == 0, zero, "UDP checksum {csum:#06x}");
            }
        }
        if !tx.gso_enabled() {
            // The ICRC over the headers the kernel really emitted: what
            // kernel rxe computes on receipt.
            let (found, expected) = icrc_of_udp_payload(f.ip, f.udp, f.payload).unwrap();
            assert_eq!(found, expected);
        }
    }
}

#[test]
fn ipv4_batch_of_64_round_trips_with_id_0_and_df_on_the_wire() {
    let rx = receiver("127.0.0.2");
    let tx = RoceSocket::bind_with(SocketAddr::new(ip("127.0.0.1"), 0), config(false)).unwrap();
    round_trip(&tx, &rx, 64, 1024);
    round_trip(&tx, &rx, 64, 3);
}

#[test]
fn ipv4_gso_batch_round_trips_with_segment_ids() {
    let rx = receiver("127.0.0.3");
    let tx = RoceSocket::bind(ip("127.0.0.1"), 0).unwrap();
    assert!(tx.gso_enabled());
    round_trip(&tx, &rx, 200, 1024);
    assert_eq!(tx.gso_fallbacks(), 0);
}

#[test]
fn ipv6_batch_of_64_round_trips_with_checksum_0() {
    let rx = receiver("::1");
    let tx = RoceSocket::bind(ip("::1"), 0).unwrap();
    assert!(!tx.gso_enabled(), "no GSO with zero checksums");
    let fd = tx.as_fd();
    assert_eq!(
        sys::get_int(fd, libc::IPPROTO_UDP, sys::UDP_NO_CHECK6_TX).unwrap(),
        1
    );
    assert_eq!(
        sys::get_int(fd, libc::IPPROTO_UDP, sys::UDP_NO_CHECK6_RX).unwrap(),
        1
    );
    assert_eq!(
        sys::get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY).unwrap(),
        1
    );
    round_trip(&tx, &rx, 64, 1024);
    round_trip(&tx, &rx, 64, 1);
}

#[test]
fn ipv6_with_checksums_uses_gso() {
    let cfg = SocketConfig {
        ipv6_zero_checksum: false,
        ..SocketConfig::default()
    };
    let rx = receiver("::1");
    let tx = RoceSocket::bind_with(SocketAddr::new(ip("::1"), 0), cfg).unwrap();
    assert!(tx.gso_enabled());
    round_trip(&tx, &rx, 130, 512);
}

#[test]
fn gro_receives_coalesced_segments_with_per_packet_verdicts() {
    for (rx_addr, tx_cfg) in [
        ("127.0.0.4", SocketConfig::default()),
        (
            "::1",
            SocketConfig {
                ipv6_zero_checksum: false,
                ..SocketConfig::default()
            },
        ),
    ] {
        let rx_cfg = SocketConfig {
            gro: true,
            ..SocketConfig::default()
        };
        let rx = receiver_with(rx_addr, rx_cfg);
        let local = if rx_addr == "::1" { "::1" } else { "127.0.0.1" };
        let tx = RoceSocket::bind_with(SocketAddr::new(ip(local), 0), tx_cfg).unwrap();
        let count = 40;
        let mut bufs: Vec<Vec<u8>> = (0..count).map(|i| send_only(i, 1000)).collect();
        bufs.push(send_only(count, 10)); // a shorter last segment
        let mut packets: Vec<_> = bufs
            .iter_mut()
            .map(|b| OutPacket::new(rx.local_addr(), b))
            .collect();
        assert_eq!(tx.send_batch(&mut packets).unwrap(), packets.len());
        let mut slots: Vec<RecvSlot> = (0..4).map(|_| RecvSlot::new(GRO_SLOT_CAPACITY)).collect();
        let n = rx.recv_batch(&mut slots, Some(WAIT)).unwrap();
        assert_eq!(n, 1, "one coalesced datagram");
        assert_eq!(slots[0].gro_segment(), Some(1012 + 4));
        assert_eq!(slots[0].packet_count(), bufs.len());
        for (k, (bytes, v)) in slots[0].packets().enumerate() {
            assert_eq!(bytes, &bufs[k][..]);
            let want = if k == 0 || rx_addr == "::1" {
                IcrcVerdict::Good
            } else {
                IcrcVerdict::GoodWithIpId(k as u16)
            };
            assert_eq!(v, want, "{rx_addr} segment {k}");
        }
        // GRO needs big slots.
        let mut small = [RecvSlot::new(2048)];
        assert!(rx.recv_batch(&mut small, None).is_err());
    }
}

#[test]
fn checksum_0_ipv6_from_a_raw_socket_is_accepted_but_a_plain_socket_drops_it() {
    let rx = receiver("::1");
    let plain = std::net::UdpSocket::bind("[::1]:0").unwrap();
    plain
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let src = SocketAddr::new(ip("::1"), 4791);
    for dst in [rx.local_addr(), plain.local_addr().unwrap()] {
        let mut payload = send_only(7, 100);
        seal(&src, &dst, 0, &mut payload).unwrap();
        let mut datagram = udp_header(4791, dst.port(), 8 + payload.len()).to_vec();
        datagram.extend_from_slice(&payload); // checksum left 0, like rxe
        if raw_send(src, dst, &datagram).is_none() {
            return;
        }
    }
    let got = recv_packets(&rx, 2048, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, IcrcVerdict::Good);
    assert_eq!(got[0].2, src);
    let mut buf = [0u8; 2048];
    assert!(
        plain.recv(&mut buf).is_err(),
        "Linux drops checksum 0 without UDP_NO_CHECK6_RX"
    );
}

#[test]
fn rxe_like_ipv4_with_a_nonzero_id_and_no_checksum_is_solved() {
    let rx = receiver("127.0.0.5");
    let src = SocketAddr::new(ip("127.0.0.1"), 0xc121);
    let dst = rx.local_addr();
    for id in [1u16, 0x1234, 0xffff] {
        let mut payload = send_only(u32::from(id), 64);
        seal(&src, &dst, id, &mut payload).unwrap();
        let udp_len = 8 + payload.len();
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
            unreachable!()
        };
        let mut datagram = ipv4_header(s, d, id, udp_len).to_vec();
        datagram[8] = 64; // TTL
        datagram.extend_from_slice(&udp_header(src.port(), dst.port(), udp_len));
        datagram.extend_from_slice(&payload);
        if raw_send(src, dst, &datagram).is_none() {
            return;
        }
        let got = recv_packets(&rx, 2048, 1);
        assert_eq!(got[0].1, IcrcVerdict::GoodWithIpId(id));
        assert_eq!(got[0].2, src);
    }
}

#[test]
fn truncated_short_and_empty_datagrams_are_reported() {
    let rx = receiver("127.0.0.6");
    let tx = RoceSocket::bind(ip("127.0.0.1"), 0).unwrap();
    let mut big = send_only(1, 2000);
    assert_eq!(
        tx.send_batch(&mut [OutPacket::new(rx.local_addr(), &mut big)])
            .unwrap(),
        1
    );
    let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    plain.send_to(&[1, 2, 3, 4, 5], rx.local_addr()).unwrap();
    plain.send_to(&[], rx.local_addr()).unwrap();
    let mut slots: Vec<RecvSlot> = (0..4).map(|_| RecvSlot::new(256)).collect();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let n = rx.recv_batch(&mut slots, Some(WAIT)).unwrap();
        assert!(n > 0, "timed out");
        seen.extend(
            slots[..n]
                .iter()
                .map(|s| (s.len(), s.wire_len(), s.truncated(), s.verdict())),
        );
    }
    assert_eq!(
        seen,
        [
            (256, 2016, true, IcrcVerdict::Truncated),
            (5, 5, false, IcrcVerdict::TooShort),
            (0, 0, false, IcrcVerdict::TooShort),
        ]
    );
    // Nothing left: non-blocking and timed receives return 0.
    assert_eq!(rx.recv_batch(&mut slots, None).unwrap(), 0);
    assert_eq!(
        rx.recv_batch(&mut slots, Some(Duration::from_millis(20)))
            .unwrap(),
        0
    );
}

#[test]
fn a_queued_burst_comes_back_in_one_call_in_order() {
    // The first recvmmsg looks at a few slots only; a full look takes the
    // rest in a second call within the same receive.
    let rx = receiver("127.0.0.7");
    let tx = RoceSocket::bind_with(SocketAddr::new(ip("127.0.0.1"), 0), config(false)).unwrap();
    let count = 50;
    let mut bufs: Vec<Vec<u8>> = (0..count).map(|i| send_only(i, 100)).collect();
    let mut packets: Vec<_> = bufs
        .iter_mut()
        .map(|b| OutPacket::new(rx.local_addr(), b))
        .collect();
    assert_eq!(tx.send_batch(&mut packets).unwrap(), count as usize);
    // Let every datagram reach the receive queue before the one call.
    assert_eq!(recv_none_for_a_moment(&tx), 0);
    let mut slots: Vec<RecvSlot> = (0..64).map(|_| RecvSlot::new(256)).collect();
    let n = rx.recv_batch(&mut slots, Some(WAIT)).unwrap();
    assert_eq!(n, count as usize);
    for (k, slot) in slots[..n].iter().enumerate() {
        assert_eq!(psn_of(slot.data()), k as u32, "slot {k}");
        assert!(slot.verdict().is_good());
    }
    assert_eq!(rx.recv_batch(&mut slots, None).unwrap(), 0);
}

/// Waits 50 ms on `sock` (which receives nothing): loopback delivery of
/// what was sent before is complete by then.
fn recv_none_for_a_moment(sock: &RoceSocket) -> usize {
    let mut slot = [RecvSlot::new(256)];
    sock.recv_batch(&mut slot, Some(Duration::from_millis(50)))
        .unwrap()
}

#[test]
fn invalid_packets_stop_the_batch_where_they_are() {
    let rx = receiver("127.0.0.7");
    let tx = RoceSocket::bind(ip("127.0.0.1"), 0).unwrap();
    let v6 = SocketAddr::new(ip("::1"), 4791);
    let mut a = send_only(0, 8);
    let mut b = send_only(1, 8);
    let mut short = vec![0u8; 15];
    let mut c = send_only(2, 8);
    let mut packets = [
        OutPacket::new(rx.local_addr(), &mut a),
        OutPacket::new(rx.local_addr(), &mut b),
        OutPacket::new(rx.local_addr(), &mut short),
        OutPacket::new(v6, &mut c),
    ];
    assert_eq!(tx.send_batch(&mut packets).unwrap(), 2);
    let e = tx.send_batch(&mut packets[2..]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    let e = tx.send_batch(&mut packets[3..]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(tx.send_batch(&mut []).unwrap(), 0);
    assert_eq!(recv_packets(&rx, 2048, 2).len(), 2);
}

#[test]
fn setup_errors_are_clear() {
    for a in ["0.0.0.0", "::"] {
        let e = RoceSocket::bind(ip(a), 0).unwrap_err();
        assert!(matches!(e, NetError::UnspecifiedAddress(_)), "{e}");
    }
    let e = RoceSocket::bind(ip("::ffff:127.0.0.1"), 0).unwrap_err();
    assert!(matches!(e, NetError::MappedAddress(_)));
    let e = RoceSocket::bind(ip("192.0.2.222"), 0).unwrap_err();
    assert!(
        matches!(e, NetError::Bind { .. }),
        "not a local address: {e}"
    );
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::AddrNotAvailable);
    let taken = RoceSocket::bind(ip("127.0.0.8"), 0).unwrap();
    let e = RoceSocket::bind(ip("127.0.0.8"), taken.local_addr().port()).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
}

#[test]
fn the_socket_is_send_and_sync_and_serves_threads_concurrently() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RoceSocket>();
    assert_send_sync::<LossySocket>();
    let rx = std::sync::Arc::new(receiver("127.0.0.9"));
    let tx = std::sync::Arc::new(RoceSocket::bind(ip("127.0.0.1"), 0).unwrap());
    let dest = rx.local_addr();
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for round in 0..10 {
                    let mut bufs: Vec<Vec<u8>> = (0..16)
                        .map(|i| send_only(t * 1000 + round * 16 + i, 200))
                        .collect();
                    let mut p: Vec<_> = bufs.iter_mut().map(|b| OutPacket::new(dest, b)).collect();
                    assert_eq!(tx.send_batch(&mut p).unwrap(), 16);
                }
            })
        })
        .collect();
    let got = recv_packets(&*rx, 2048, 640);
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(got.len(), 640);
    assert!(got.iter().all(|g| g.1.is_good()));
}

#[test]
fn a_gro_buffer_cut_after_some_segments_is_judged_segment_by_segment() {
    // Judged in groups (two segments: a small group): the cut falls after
    // packets of both sorts (ID 0 and solved IDs) and a corrupted one.
    let src = SocketAddr::new(ip("10.0.0.1"), 0xc000);
    let dst = SocketAddr::new(ip("10.0.0.2"), 4791);
    let segment = 100;
    for (count, whole) in [(2, 1), (3, 2), (20, 13)] {
        let mut slot = RecvSlot::new(4096);
        for k in 0..count {
            let mut p = send_only(k as u32, segment - 16);
            check::seal(&src, &dst, k as u16, &mut p).unwrap();
            if k == 5 {
                p[20] ^= 1;
            }
            slot.buf[k * segment..(k + 1) * segment].copy_from_slice(&p);
        }
        let cut = whole * segment + 40;
        slot.src = src;
        slot.dst = Some(dst.ip());
        slot.segment = Some(segment);
        slot.wire_len = count * segment;
        slot.len = cut;
        slot.truncated = true;
        super::socket::judge(&mut slot, dst.port(), Ipv4IdPolicy::Solve);
        let verdicts = slot.verdicts.clone();
        assert_eq!(verdicts.len(), whole + 1, "{count} segments");
        for (k, &(a, b, v)) in verdicts.iter().enumerate() {
            if k == whole {
                assert_eq!((a, b, v), (whole * segment, cut, IcrcVerdict::Truncated));
                continue;
            }
            assert_eq!((a, b), (k * segment, (k + 1) * segment), "segment {k}");
            match k {
                0 => assert_eq!(v, IcrcVerdict::Good),
                5 => assert!(matches!(v, IcrcVerdict::Bad { .. })),
                _ => assert_eq!(v, IcrcVerdict::GoodWithIpId(k as u16), "segment {k}"),
            }
        }
    }
}

#[test]
fn a_full_gro_buffer_of_the_smallest_packets_is_judged_whole() {
    // An on-path peer's largest burst: 64 KiB of 16-byte packets (a BTH
    // and an ICRC), 4096 segments in one datagram, judged a group at a
    // time; one corrupted segment in the middle of a group.
    let src = SocketAddr::new(ip("10.0.0.1"), 0xc000);
    let dst = SocketAddr::new(ip("10.0.0.2"), 4791);
    let segment = 16;
    let count = GRO_SLOT_CAPACITY / segment;
    let mut slot = RecvSlot::new(GRO_SLOT_CAPACITY);
    for k in 0..count {
        let mut p = send_only(k as u32, 0);
        assert_eq!(p.len(), segment);
        check::seal(&src, &dst, k as u16, &mut p).unwrap();
        if k == 2051 {
            p[3] ^= 1;
        }
        slot.buf[k * segment..(k + 1) * segment].copy_from_slice(&p);
    }
    slot.src = src;
    slot.dst = Some(dst.ip());
    slot.segment = Some(segment);
    slot.wire_len = GRO_SLOT_CAPACITY;
    slot.len = GRO_SLOT_CAPACITY;
    super::socket::judge(&mut slot, dst.port(), Ipv4IdPolicy::Solve);
    assert_eq!(slot.verdicts.len(), count);
    for (k, &(a, b, v)) in slot.verdicts.iter().enumerate() {
        assert_eq!((a, b), (k * segment, (k + 1) * segment), "segment {k}");
        match k {
            0 => assert_eq!(v, IcrcVerdict::Good),
            2051 => assert!(matches!(v, IcrcVerdict::Bad { .. }), "{v:?}"),
            _ => assert_eq!(v, IcrcVerdict::GoodWithIpId(k as u16), "segment {k}"),
        }
    }
}
