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
