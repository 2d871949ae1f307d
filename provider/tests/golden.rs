//! Real kernel-rxe traffic (tests/data/rxe-7.3.4-perftest.pcap): every
//! RoCEv2 frame parses, carries the ICRC this crate computes, and re-emits
//! byte for byte.

use std::collections::BTreeMap;

use provider::wire::{
    ICRC_LEN, IpHeader, Opcode, PacketRepr, Syndrome, UdpDatagram, WireError, icrc_of_udp_payload,
    udp_source_port,
};

#[path = "../src/wire/golden.rs"]
#[allow(dead_code)] // `records` and `CAPTURE` serve other tests
mod golden;

use golden::frames;

#[test]
fn every_frame_parses_has_a_good_icrc_and_re_emits_byte_for_byte() {
    let frames = frames();
    let v4 = frames
        .iter()
        .filter(|f| matches!(f.ip, IpHeader::V4(_)))
        .count();
    assert_eq!((frames.len(), v4), (615, 500));
    for (i, f) in frames.iter().enumerate() {
        let packet = PacketRepr::parse(f.payload).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        let (found, expected) = icrc_of_udp_payload(f.ip, f.udp, f.payload).unwrap();
        assert_eq!(found, expected, "frame {i}: ICRC");
        let mut out = vec![0u8; packet.len().unwrap()];
        let n = packet.emit(&mut out).unwrap();
        assert_eq!(n + ICRC_LEN, f.payload.len(), "frame {i}: length");
        out[n..].copy_from_slice(&expected.to_le_bytes());
        assert_eq!(out, f.payload, "frame {i}: re-emitted bytes");
        assert_eq!(
            usize::from(packet.bth.pad),
            PacketRepr::pad_for(packet.payload.len()).into()
        );
    }
}

#[test]
fn the_capture_covers_every_rc_operation_perftest_uses() {
    let mut seen = BTreeMap::new();
    for f in frames() {
        let p = PacketRepr::parse(f.payload).unwrap();
        *seen.entry(p.bth.opcode).or_insert(0) += 1;
    }
    for op in [
        // (2048-byte sends at MTU 1024: no SEND_MIDDLE.)
        Opcode::RC_SEND_FIRST,
        Opcode::RC_SEND_LAST,
        Opcode::RC_SEND_ONLY,
        Opcode::RC_RDMA_WRITE_FIRST,
        Opcode::RC_RDMA_WRITE_MIDDLE,
        Opcode::RC_RDMA_WRITE_LAST,
        Opcode::RC_RDMA_WRITE_ONLY,
        Opcode::RC_RDMA_READ_REQUEST,
        Opcode::RC_RDMA_READ_RESPONSE_FIRST,
        Opcode::RC_RDMA_READ_RESPONSE_MIDDLE,
        Opcode::RC_RDMA_READ_RESPONSE_LAST,
        Opcode::RC_RDMA_READ_RESPONSE_ONLY,
        Opcode::RC_ACKNOWLEDGE,
        Opcode::RC_ATOMIC_ACKNOWLEDGE,
        Opcode::RC_COMPARE_SWAP,
        Opcode::RC_FETCH_ADD,
    ] {
        assert!(
            seen.contains_key(&op),
            "{op} missing from the capture: {seen:?}"
        );
    }
}

#[test]
fn fields_decode_to_what_perftest_asked_for() {
    let packets: Vec<PacketRepr<'static>> = frames()
        .iter()
        .map(|f| PacketRepr::parse(f.payload).unwrap())
        .collect();
    // ib_read_bw -s 8192 -m 1024: each request asks for 8192 bytes, and the
    // response is FIRST, 6 x MIDDLE, LAST of 1024 bytes each.
    let read = packets
        .iter()
        .find(|p| p.bth.opcode == Opcode::RC_RDMA_READ_REQUEST)
        .unwrap();
    assert_eq!(read.reth.unwrap().len, 8192);
    let first = packets
        .iter()
        .position(|p| p.bth.opcode == Opcode::RC_RDMA_READ_RESPONSE_FIRST)
        .unwrap();
    let run: Vec<Opcode> = packets[first..first + 8]
        .iter()
        .map(|p| p.bth.opcode)
        .collect();
    assert_eq!(run[0], Opcode::RC_RDMA_READ_RESPONSE_FIRST);
    assert!(
        run[1..7]
            .iter()
            .all(|&o| o == Opcode::RC_RDMA_READ_RESPONSE_MIDDLE)
    );
    assert_eq!(run[7], Opcode::RC_RDMA_READ_RESPONSE_LAST);
    assert!(
        packets[first..first + 8]
            .iter()
            .all(|p| p.payload.len() == 1024)
    );
    // PSNs of one response run are consecutive.
    let psns: Vec<u32> = packets[first..first + 8]
        .iter()
        .map(|p| p.bth.psn)
        .collect();
    assert!(psns.windows(2).all(|w| w[1] == (w[0] + 1) & 0xff_ffff));
    // Every ACK is a positive one with unlimited credits, as rxe sends them.
    for p in packets
        .iter()
        .filter(|p| p.bth.opcode == Opcode::RC_ACKNOWLEDGE)
    {
        assert_eq!(p.aeth.unwrap().decode(), Syndrome::Ack { credits: 31 });
        assert_eq!(p.bth.pkey, 0xffff);
    }
    // Fetch-and-add requests are 8-byte aligned and carry an addend.
    let fadd = packets
        .iter()
        .find(|p| p.bth.opcode == Opcode::RC_FETCH_ADD)
        .unwrap();
    assert_eq!(fadd.atomic_eth.unwrap().va % 8, 0);
}

#[test]
fn damaged_frames_are_caught() {
    let frames = frames();
    let f = frames
        .iter()
        .find(|f| PacketRepr::parse(f.payload).unwrap().bth.opcode == Opcode::RC_RDMA_WRITE_FIRST)
        .unwrap();
    // One flipped payload bit: the ICRC no longer matches.
    let mut bad = f.payload.to_vec();
    bad[40] ^= 0x01;
    let (found, expected) = icrc_of_udp_payload(f.ip, f.udp, &bad).unwrap();
    assert_ne!(found, expected);
    // A mutable field changed (FECN): the ICRC still matches.
    let mut marked = f.payload.to_vec();
    marked[4] |= 0x80;
    let (found, expected) = icrc_of_udp_payload(f.ip, f.udp, &marked).unwrap();
    assert_eq!(found, expected);
    // Truncated: a clear error.
    assert!(matches!(
        PacketRepr::parse(&f.payload[..20]),
        Err(WireError::Truncated { .. })
    ));
}

/// Kernel rxe sends every packet of a connection, requests and responses,
/// from the UDP source port `udp_source_port` derives from the two QP
/// numbers. A frame names only its destination QP; the sender's is one of
/// the QPs its address receives on, so one of those must give the port.
#[test]
fn kernel_rxe_sends_from_the_flow_port_of_each_qp_pair() {
    let frames = frames();
    let mut receives: BTreeMap<std::net::IpAddr, Vec<u32>> = BTreeMap::new();
    for f in &frames {
        let qpn = PacketRepr::parse(f.payload).unwrap().bth.dest_qp;
        let qps = receives.entry(f.dst.ip()).or_default();
        if !qps.contains(&qpn) {
            qps.push(qpn);
        }
    }
    let mut ports = std::collections::BTreeSet::new();
    for (i, f) in frames.iter().enumerate() {
        let remote = PacketRepr::parse(f.payload).unwrap().bth.dest_qp;
        let senders = &receives[&f.src.ip()];
        assert!(
            senders
                .iter()
                .any(|&local| udp_source_port(0, local, remote) == f.src.port()),
            "frame {i}: source port {:#x} is no flow port of QP {remote:#x} and {senders:x?}",
            f.src.port()
        );
        ports.insert(f.src.port());
    }
    // Many connections, many ports: not one fixed port.
    assert!(ports.len() > 5, "{ports:x?}");
}
