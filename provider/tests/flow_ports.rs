//! Each connection's packets leave from the UDP source port kernel rxe
//! gives its flow (derived from the two QP numbers, 0xC000 and up), in both
//! directions, with an ICRC computed over that port; the device falls back
//! to its own port, and says so, when the flow's port is held elsewhere.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use common::raw::{TARGET_PSN, Target, bth, packet, seal, socket};
use common::{End, LOCALHOST, connect, pattern, send};
use provider::net::{IcrcVerdict, Ipv4IdPolicy, verify};
use provider::wire::{Opcode, PacketRepr, RethRepr, udp_source_port};
use provider::{Context, DeviceOptions, Gid, Mtu, QueuePair, RemoteInfo, SendOp, WcStatus};

/// The peer of the hand-built packets: a plain socket on 127.0.0.11.
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));
/// The QP number the hand-built peer claims.
const PEER_QPN: u32 = 0x77;

#[test]
fn both_ends_of_a_connection_send_from_its_flow_port() {
    let a = End::new(1 << 20, true);
    let b = End::new(1 << 20, false);
    connect(&a, &b, Mtu::Mtu1024);
    let port = udp_source_port(0, a.qp.qp_num(), b.qp.qp_num());
    assert!(port >= 0xC000);
    assert_eq!(
        (a.qp.udp_source_port(), b.qp.udp_source_port()),
        (port, port)
    );
    // Data moves both ways (requests from one end, responses from the
    // other, all from the flow port).
    let data = pattern(256 << 10, 3);
    a.put(0, &data);
    let (remote_addr, rkey) = (b.mr.addr(), b.mr.rkey());
    let write = SendOp::Write { remote_addr, rkey };
    send(&a.qp, 1, write, a.mr.sge(0, data.len() as u32));
    assert_eq!(a.wait().status, WcStatus::Success);
    assert_eq!(b.get(0, data.len()), data);
    let (remote_addr, rkey) = (a.mr.addr(), a.mr.rkey());
    let read = SendOp::Read { remote_addr, rkey };
    send(&b.qp, 2, read, b.mr.sge(512 << 10, data.len() as u32));
    assert_eq!(b.wait().status, WcStatus::Success);
    assert_eq!(b.get(512 << 10, data.len()), data);
    assert_eq!(a.ctx.stats().tx_flow_port_fallbacks, 0);
    assert_eq!(b.ctx.stats().tx_flow_port_fallbacks, 0);
}

/// A WRITE_ONLY of 4 bytes from the hand-built peer, asking for an ACK.
fn write_only(t: &Target) -> Vec<u8> {
    let mut h = PacketRepr::new(
        bth(Opcode::RC_RDMA_WRITE_ONLY, t.qp.qp_num(), TARGET_PSN, 4),
        b"flow",
    );
    h.reth = Some(RethRepr {
        va: t.mr.addr(),
        rkey: t.mr.rkey(),
        len: 4,
    });
    packet(h)
}

/// Sends a WRITE to the target and returns its acknowledgement's source
/// and ICRC verdict.
fn acknowledgement(t: &Target, peer: &UdpSocket) -> (SocketAddr, IcrcVerdict) {
    let me = peer.local_addr().unwrap();
    let dev = t.ctx.local_addr();
    peer.send_to(&seal(me, dev, write_only(t)), dev).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).expect("an acknowledgement");
    let ack = PacketRepr::parse(&buf[..n]).unwrap();
    assert_eq!(ack.bth.opcode, Opcode::RC_ACKNOWLEDGE);
    (from, verify(&from, &me, &buf[..n], Ipv4IdPolicy::UpTo(0)))
}

#[test]
fn acknowledgements_leave_from_the_flow_port_sealed_with_it() {
    let peer = socket(PEER);
    let t = Target::new(peer.local_addr().unwrap(), 4096, Mtu::Mtu1024);
    let port = udp_source_port(0, t.qp.qp_num(), PEER_QPN);
    assert_eq!(t.qp.udp_source_port(), port);
    let (from, verdict) = acknowledgement(&t, &peer);
    assert_eq!((from.ip(), from.port()), (LOCALHOST, port));
    assert_eq!(verdict, IcrcVerdict::Good);
}

/// A queue pair on a device of its own at `ip`, connected to `peer`.
fn connected(
    ctx: &Context,
    peer: SocketAddr,
    before_connect: impl FnOnce(&QueuePair),
) -> QueuePair {
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(16).unwrap();
    let qp = pd.create_qp(&cq, &cq).build().unwrap();
    before_connect(&qp);
    qp.connect(&RemoteInfo {
        qp_num: PEER_QPN,
        psn: TARGET_PSN,
        gid: Gid::from_ip(peer.ip()),
        port: peer.port(),
        mtu: Mtu::Mtu1024,
    })
    .unwrap();
    qp
}

#[test]
fn a_flow_port_held_by_another_socket_falls_back_to_the_device_port() {
    // An address of its own, so no other test's flow sockets share it.
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21));
    let ctx = Context::open_with_port(ip, 0).unwrap();
    let peer = socket(PEER);
    let mut holder = None;
    let qp = connected(&ctx, peer.local_addr().unwrap(), |qp| {
        let port = udp_source_port(0, qp.qp_num(), PEER_QPN);
        // A socket without SO_REUSEPORT on the flow's port.
        holder = Some(UdpSocket::bind((ip, port)).unwrap());
    });
    assert_eq!(qp.udp_source_port(), ctx.local_addr().port());
    assert_eq!(ctx.stats().tx_flow_port_fallbacks, 1);
    drop(holder);
}

#[test]
fn with_flow_ports_off_everything_leaves_from_the_device_port() {
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 22));
    let options = DeviceOptions {
        port: 0,
        flow_source_ports: false,
        ..DeviceOptions::default()
    };
    let ctx = Context::open_with(ip, &options).unwrap();
    let peer = socket(PEER);
    let qp = connected(&ctx, peer.local_addr().unwrap(), |_| {});
    assert_eq!(qp.udp_source_port(), ctx.local_addr().port());
    assert_eq!(ctx.stats().tx_flow_port_fallbacks, 0);
}

#[test]
fn an_acknowledgement_held_back_at_teardown_still_leaves_from_the_flow_port() {
    let peer = socket(PEER);
    let t = Target::new(peer.local_addr().unwrap(), 4096, Mtu::Mtu1024);
    let port = t.qp.udp_source_port();
    let me = peer.local_addr().unwrap();
    let dev = t.ctx.local_addr();
    peer.send_to(&seal(me, dev, write_only(&t)), dev).unwrap();
    // The application receives in its own thread, which holds the ACK
    // back for a request it might post next...
    let start = std::time::Instant::now();
    // SAFETY: reading the target's own mapping, which the device writes.
    while unsafe { std::ptr::read_volatile(t.buf.ptr().cast::<[u8; 4]>()) } != *b"flow" {
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        t.ctx.progress();
    }
    // ...and destroys the queue pair instead (the rest lives on).
    let Target {
        ctx,
        qp,
        mr,
        buf: mapping,
        cq,
        pd,
    } = t;
    drop(qp);
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).expect("the held acknowledgement");
    assert_eq!(
        PacketRepr::parse(&buf[..n]).unwrap().bth.opcode,
        Opcode::RC_ACKNOWLEDGE
    );
    assert_eq!(from.port(), port);
    drop((mr, mapping, cq, pd, ctx));
}
