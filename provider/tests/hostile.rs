//! Malformed and hostile packets from a plain UDP socket: each is dropped
//! and counted or NAKed, nothing panics, and the device keeps working.

use std::time::Duration;

mod common;

use common::LOCALHOST;
use common::raw::{Target, bth, packet, responses, seal, socket};
use provider::wire::{AethRepr, NakCode, Opcode, PacketRepr, RethRepr, Syndrome};
use provider::{Mtu, QpState};

#[test]
fn garbage_is_dropped_and_counted() {
    let sock = socket(LOCALHOST);
    let me = sock.local_addr().unwrap();
    let t = Target::new(me, 1 << 16, Mtu::Mtu1024);
    let dev = t.ctx.local_addr();
    let qpn = t.qp.qp_num();
    // Too short for a BTH and an ICRC.
    sock.send_to(&[1, 2, 3, 4, 5], dev).unwrap();
    // A good packet with one bit flipped after sealing.
    let mut bad = seal(
        me,
        dev,
        packet(PacketRepr::new(
            bth(Opcode::RC_SEND_ONLY, qpn, 100, 4),
            &[1, 2, 3, 4],
        )),
    );
    bad[13] ^= 1;
    sock.send_to(&bad, dev).unwrap();
    // Reserved opcode, version 1, ACK with a payload.
    let mut unknown = packet(PacketRepr::new(bth(Opcode::RC_SEND_ONLY, qpn, 100, 0), &[]));
    unknown[0] = 0x15;
    sock.send_to(&seal(me, dev, unknown), dev).unwrap();
    let mut version = packet(PacketRepr::new(bth(Opcode::RC_SEND_ONLY, qpn, 100, 0), &[]));
    version[1] |= 1;
    sock.send_to(&seal(me, dev, version), dev).unwrap();
    // A queue pair that does not exist.
    let nobody = packet(PacketRepr::new(
        bth(Opcode::RC_SEND_ONLY, 0xabcd, 100, 0),
        &[],
    ));
    sock.send_to(&seal(me, dev, nobody), dev).unwrap();
    // Random datagrams, sealed so they reach the parser.
    let mut seed = 0xdead_beefu32;
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let len = 12 + (seed % 120) as usize;
        let mut bytes: Vec<u8> = (0..len)
            .map(|i| (seed.rotate_left(i as u32 % 32) >> 5) as u8)
            .collect();
        // Aim some at the real QP, with version 0, to reach the engine.
        if seed.is_multiple_of(2) {
            bytes[1] &= 0xf0;
            bytes[5..8].copy_from_slice(&qpn.to_be_bytes()[1..]);
        }
        sock.send_to(&seal(me, dev, bytes), dev).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let s = t.ctx.stats();
    // The flipped bit fails the ICRC check (for IPv4 a single-bit error
    // never looks like another IP ID); everything else was sealed. The
    // 5-byte datagram, the reserved opcode and the bad version are
    // malformed.
    assert_eq!(s.rx_bad_icrc, 1, "{s:?}");
    assert!(s.rx_malformed >= 3, "{s:?}");
    assert!(s.rx_unknown_qp >= 1, "{s:?}");
    let _ = responses(&sock);
    // The device still works: a proper write at the expected PSN lands.
    let mut h = PacketRepr::new(bth(Opcode::RC_RDMA_WRITE_ONLY, qpn, 100, 4), &[9, 9, 9, 9]);
    h.reth = Some(RethRepr {
        va: t.mr.addr() + 8,
        rkey: t.mr.rkey(),
        len: 4,
    });
    let before = t.ctx.stats().rx_packets;
    sock.send_to(&seal(me, dev, packet(h)), dev).unwrap();
    let acks = responses(&sock);
    if t.qp.state() == QpState::Rts {
        assert!(
            acks.iter()
                .any(|a| a.decode() == Syndrome::Ack { credits: 31 }),
            "{acks:?}"
        );
    }
    assert!(t.ctx.stats().rx_packets > before);
}

#[test]
fn bad_keys_ranges_lengths_and_psns_are_naked() {
    let sock = socket(LOCALHOST);
    let me = sock.local_addr().unwrap();
    let send = |t: &Target, h: PacketRepr<'_>| {
        sock.send_to(&seal(me, t.ctx.local_addr(), packet(h)), t.ctx.local_addr())
            .unwrap();
        responses(&sock)
    };
    let write = |t: &Target, psn: u32, reth: RethRepr, payload: &'static [u8]| {
        let mut h = PacketRepr::new(
            bth(
                Opcode::RC_RDMA_WRITE_ONLY,
                t.qp.qp_num(),
                psn,
                payload.len(),
            ),
            payload,
        );
        h.reth = Some(reth);
        h
    };
    let nak = |code| AethRepr::new(Syndrome::Nak(code), 0).syndrome;
    static DATA: [u8; 64] = [7; 64];

    // A PSN ahead of the expected one: one PSN-sequence NAK for 100.
    let t = Target::new(me, 1 << 16, Mtu::Mtu1024);
    let ahead = write(
        &t,
        105,
        RethRepr {
            va: t.mr.addr(),
            rkey: t.mr.rkey(),
            len: 64,
        },
        &DATA,
    );
    let r = send(&t, ahead);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].syndrome, nak(NakCode::PsnSequenceError));
    assert_eq!(
        t.qp.state(),
        QpState::Rts,
        "a gap does not break the connection"
    );
    // A good write at 100 is acknowledged.
    let good = write(
        &t,
        100,
        RethRepr {
            va: t.mr.addr(),
            rkey: t.mr.rkey(),
            len: 64,
        },
        &DATA,
    );
    assert_eq!(send(&t, good)[0].decode(), Syndrome::Ack { credits: 31 });

    // Wrong rkey: remote access NAK, and the queue pair fails.
    type Case = (&'static str, fn(&Target) -> RethRepr, u8);
    let cases: [Case; 3] = [
        (
            "wrong rkey",
            |t| RethRepr {
                va: t.mr.addr(),
                rkey: t.mr.rkey() ^ 0x100,
                len: 64,
            },
            nak(NakCode::RemoteAccessError),
        ),
        (
            "VA outside the region",
            |t| RethRepr {
                va: t.mr.addr() + (1 << 16) - 32,
                rkey: t.mr.rkey(),
                len: 64,
            },
            nak(NakCode::RemoteAccessError),
        ),
        (
            "payload longer than the RETH",
            |t| RethRepr {
                va: t.mr.addr(),
                rkey: t.mr.rkey(),
                len: 16,
            },
            nak(NakCode::InvalidRequest),
        ),
    ];
    for (what, reth, expected) in cases {
        let t = Target::new(me, 1 << 16, Mtu::Mtu1024);
        let r = send(&t, write(&t, 100, reth(&t), &DATA));
        assert_eq!(r.len(), 1, "{what}");
        assert_eq!(r[0].syndrome, expected, "{what}");
        assert_eq!(t.qp.state(), QpState::Error, "{what}");
        // Nothing was written.
        let mut probe = [1u8; 64];
        // SAFETY: reading the target's own mapping.
        unsafe { std::ptr::copy_nonoverlapping(t.mr.addr() as *const u8, probe.as_mut_ptr(), 64) };
        assert_eq!(probe, [0; 64], "{what}");
    }
}

/// Makes every `send_to` on `sock` leave as segments of `size` bytes (one
/// GSO send: a receiver with GRO gets them as one datagram).
fn segment_sends(sock: &std::net::UdpSocket, size: usize) {
    use std::os::fd::AsRawFd;
    let size = size as libc::c_int;
    // SAFETY: a valid socket, and an option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
}

/// An on-path peer (it knows the queue pair, its PSNs and the rkey) packs
/// good requests, a corrupted one, one to another queue pair and one with
/// a foreign P_Key into one GSO send, which reaches the device as one GRO
/// datagram. The device handles the requests of a queue pair that follow
/// one another under one hold of its lock: each segment must still be
/// judged on its own.
#[test]
fn each_segment_of_one_gro_datagram_is_judged_on_its_own() {
    use provider::net::{RecvSlot, RoceSocket, SocketConfig};
    const PAYLOAD: usize = 8;
    let sock = socket(LOCALHOST);
    let me = sock.local_addr().unwrap();
    let t = Target::new(me, 1 << 16, Mtu::Mtu1024);
    let dev = t.ctx.local_addr();
    let qpn = t.qp.qp_num();
    // (destination QP, PSN, P_Key, payload byte; None: ICRC corrupted).
    let segments: [(u32, u32, u16, Option<u8>); 8] = [
        (qpn, 100, 0xffff, Some(1)),
        (qpn, 101, 0xffff, Some(2)),
        (qpn, 102, 0xffff, None),
        (qpn, 102, 0xffff, Some(3)),
        (0xabcd, 103, 0xffff, Some(9)),
        (qpn, 103, 0x1234, Some(9)),
        (qpn, 103, 0xffff, Some(4)),
        (qpn, 104, 0xffff, Some(5)),
    ];
    let build = |dest: std::net::SocketAddr| -> Vec<u8> {
        let mut all = Vec::new();
        let mut place = 0;
        for &(qp, psn, pkey, byte) in &segments {
            let payload = [byte.unwrap_or(7); PAYLOAD];
            let mut h = PacketRepr::new(
                provider::wire::BthRepr {
                    pkey,
                    ..bth(Opcode::RC_RDMA_WRITE_ONLY, qp, psn, PAYLOAD)
                },
                &payload,
            );
            h.reth = Some(RethRepr {
                va: t.mr.addr() + place,
                rkey: t.mr.rkey(),
                len: PAYLOAD as u32,
            });
            let mut sealed = seal(me, dest, packet(h));
            if byte.is_none() {
                sealed[20] ^= 1;
            }
            if byte.is_some_and(|b| b != 9) {
                place += PAYLOAD as u64;
            }
            all.extend_from_slice(&sealed);
        }
        all
    };
    let segment = build(dev).len() / segments.len();
    segment_sends(&sock, segment);

    // The premise: such a send reaches a GRO socket as one datagram.
    let config = SocketConfig {
        gro: true,
        ..SocketConfig::default()
    };
    let probe = RoceSocket::bind_with(std::net::SocketAddr::new(LOCALHOST, 0), config).unwrap();
    sock.send_to(&build(probe.local_addr()), probe.local_addr())
        .unwrap();
    let mut slots = [RecvSlot::new(65_536)];
    let n = probe
        .recv_batch(&mut slots, Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!((n, slots[0].packet_count()), (1, segments.len()));

    let before = t.ctx.stats();
    sock.send_to(&build(dev), dev).unwrap();
    let acks = responses(&sock);
    let s = t.ctx.stats();
    assert_eq!(s.rx_packets - before.rx_packets, 5, "{s:?}");
    assert_eq!(s.rx_bad_icrc - before.rx_bad_icrc, 1, "{s:?}");
    assert_eq!(s.rx_unknown_qp - before.rx_unknown_qp, 1, "{s:?}");
    assert_eq!(s.rx_bad_pkey - before.rx_bad_pkey, 1, "{s:?}");
    let mut landed = [0u8; 5 * PAYLOAD];
    // SAFETY: reading the target's own mapping, which the device wrote
    // before it acknowledged.
    unsafe {
        std::ptr::copy_nonoverlapping(t.mr.addr() as *const u8, landed.as_mut_ptr(), landed.len())
    };
    let expected: Vec<u8> = (1..=5).flat_map(|b| [b; PAYLOAD]).collect();
    assert_eq!(landed.as_slice(), expected, "{acks:?}");
    let last = acks.last().expect("an acknowledgement");
    assert!(matches!(last.decode(), Syndrome::Ack { .. }), "{acks:?}");
    assert_eq!(t.qp.state(), QpState::Rts);
}
