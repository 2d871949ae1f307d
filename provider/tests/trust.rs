//! The trust boundary, tested from each position an attacker can hold:
//! - an off-path host on the same network, which knows the queue pair's
//!   number, the PSN it expects and a region's key, but not the peer's
//!   address: its packets are dropped and counted, nothing is executed;
//! - the peer itself, sending a wrong P_Key, or stopping in the middle of
//!   a message: dropped, or the application's deregistration and teardown
//!   still finish at once;
//! - the application unmapping registered memory behind the device (no
//!   event source sees a plain `munmap` unless one is enabled): a remote
//!   atomic into it fails as a remote access error, the process lives on.

mod common;

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use common::raw::{TARGET_PSN, Target, bth, packet, responses, seal, socket};
use common::{End, LOCALHOST, connect, send, status_kib};
use odp::AddressSpace;
use provider::wire::{NakCode, Opcode, PacketRepr, RethRepr, Syndrome};
use provider::{AccessFlags, Context, Mtu, QpState, SendOp, WcStatus};

/// The queue pair's peer: a plain socket on 127.0.0.11.
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11));
/// An off-path host: 127.0.0.99.
const OFF_PATH: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 99));

/// What the tests below send to a [`Target`].
impl Target {
    fn first_bytes(&self) -> [u8; 4] {
        let mut b = [0u8; 4];
        // SAFETY: reading the target's own mapping while nothing writes it.
        unsafe { std::ptr::copy_nonoverlapping(self.buf.ptr(), b.as_mut_ptr(), 4) };
        b
    }

    /// A WRITE_ONLY of `data` to the start of the region.
    fn write(&self, psn: u32, pkey: u16, data: &'static [u8]) -> PacketRepr<'static> {
        let mut h = PacketRepr::new(
            bth(
                Opcode::RC_RDMA_WRITE_ONLY,
                self.qp.qp_num(),
                psn,
                data.len(),
            ),
            data,
        );
        h.bth.pkey = pkey;
        h.reth = Some(RethRepr {
            va: self.mr.addr(),
            rkey: self.mr.rkey(),
            len: data.len() as u32,
        });
        h
    }

    fn send_from(&self, sock: &UdpSocket, h: PacketRepr<'_>) -> Vec<provider::wire::AethRepr> {
        let me = sock.local_addr().unwrap();
        let dev = self.ctx.local_addr();
        sock.send_to(&seal(me, dev, packet(h)), dev).unwrap();
        responses(sock)
    }
}

#[test]
fn an_off_path_sender_cannot_write_even_with_the_qpn_psn_and_rkey() {
    let (peer, attacker) = (socket(PEER), socket(OFF_PATH));
    let t = Target::new(peer.local_addr().unwrap(), 1 << 16, Mtu::Mtu1024);
    let answers = t.send_from(&attacker, t.write(TARGET_PSN, 0xffff, b"evil"));
    assert!(answers.is_empty(), "no answer to an off-path sender");
    assert_eq!(t.first_bytes(), [0; 4], "nothing was written");
    let s = t.ctx.stats();
    assert_eq!((s.rx_wrong_address, s.rx_packets), (1, 0), "{s:?}");
    // The same packet from the peer's address is carried out.
    let answers = t.send_from(&peer, t.write(TARGET_PSN, 0xffff, b"good"));
    assert_eq!(answers[0].decode(), Syndrome::Ack { credits: 31 });
    assert_eq!(&t.first_bytes(), b"good");
    assert_eq!(t.ctx.stats().rx_packets, 1);
    assert_eq!(t.qp.state(), QpState::Rts);
}

#[test]
fn p_keys_follow_the_partition_membership_rules() {
    let peer = socket(PEER);
    let t = Target::new(peer.local_addr().unwrap(), 1 << 16, Mtu::Mtu1024);
    // Another partition, the invalid partition (as full and limited
    // member): dropped and counted.
    for (i, pkey) in [0x8001u16, 0x0001, 0x0000, 0x8000].into_iter().enumerate() {
        assert!(
            t.send_from(&peer, t.write(TARGET_PSN, pkey, b"evil"))
                .is_empty()
        );
        assert_eq!(t.ctx.stats().rx_bad_pkey, i as u64 + 1, "{pkey:#x}");
    }
    assert_eq!(t.first_bytes(), [0; 4]);
    // A limited member of the default partition may talk to a full one.
    let answers = t.send_from(&peer, t.write(TARGET_PSN, 0x7fff, b"lim "));
    assert_eq!(answers[0].decode(), Syndrome::Ack { credits: 31 });
    assert_eq!(&t.first_bytes(), b"lim ");
}

#[test]
fn a_queue_pair_that_is_not_connected_takes_nothing() {
    let ctx = Context::open_with_port(LOCALHOST, 0).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(8).unwrap();
    let qp = pd.create_qp(&cq, &cq).build().unwrap();
    qp.to_init().unwrap();
    let sock = socket(LOCALHOST);
    let h = PacketRepr::new(bth(Opcode::RC_SEND_ONLY, qp.qp_num(), 0, 4), b"abcd");
    let dev = ctx.local_addr();
    sock.send_to(&seal(sock.local_addr().unwrap(), dev, packet(h)), dev)
        .unwrap();
    assert!(responses(&sock).is_empty());
    assert_eq!(ctx.stats().rx_qp_not_ready, 1);
}

#[test]
fn keys_of_successive_registrations_carry_random_bits() {
    let ctx = Context::open_with_port(LOCALHOST, 0).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let buf = AddressSpace::process().map_anonymous(4096, 0).unwrap();
    let mut low_bytes: Vec<u32> = (0..32)
        .map(|_| {
            // SAFETY: the mapping outlives the region.
            let mr = unsafe { pd.reg_mr(buf.addr(), 4096, AccessFlags::ON_DEMAND) }.unwrap();
            mr.rkey() & 0xff
        })
        .collect();
    assert!(low_bytes.windows(2).all(|w| w[0] != w[1]));
    low_bytes.sort_unstable();
    low_bytes.dedup();
    assert!(low_bytes.len() > 4, "{low_bytes:?}");
}

/// A peer that starts a WRITE and never finishes it: the application
/// still deregisters at once, and the rest of the message is NAKed.
#[test]
fn deregistration_and_teardown_never_wait_for_a_stalled_peer() {
    let peer = socket(PEER);
    let t = Target::new(peer.local_addr().unwrap(), 1 << 16, Mtu::Mtu1024);
    let mut first = PacketRepr::new(
        bth(Opcode::RC_RDMA_WRITE_FIRST, t.qp.qp_num(), TARGET_PSN, 1024),
        &[5; 1024],
    );
    first.reth = Some(RethRepr {
        va: t.mr.addr(),
        rkey: t.mr.rkey(),
        len: 4096,
    });
    t.send_from(&peer, first);
    let Target {
        ctx,
        qp,
        mr,
        buf,
        cq,
        pd,
    } = t;
    let qpn = qp.qp_num();
    let start = Instant::now();
    drop(mr);
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "deregistration took {took:?}"
    );
    // The rest of the message names a region that is gone.
    let middle = PacketRepr::new(
        bth(Opcode::RC_RDMA_WRITE_MIDDLE, qpn, TARGET_PSN + 1, 1024),
        &[6; 1024],
    );
    let me = peer.local_addr().unwrap();
    peer.send_to(
        &seal(me, ctx.local_addr(), packet(middle)),
        ctx.local_addr(),
    )
    .unwrap();
    let answers = responses(&peer);
    assert_eq!(
        answers[0].decode(),
        Syndrome::Nak(NakCode::RemoteAccessError),
        "{answers:?}"
    );
    assert_eq!(qp.state(), QpState::Error);
    let start = Instant::now();
    drop((qp, pd, cq));
    drop(ctx);
    let took = start.elapsed();
    assert!(took < Duration::from_millis(100), "teardown took {took:?}");
    drop(buf);
}

/// A real peer whose large WRITE fails half way (the second half of its
/// source is made inaccessible behind its device): it completes with a
/// local protection error and stops sending; the target deregisters at
/// once. (`PROT_NONE` rather than `munmap`: a hole in a test process
/// whose other threads map memory could be reused by one of them.)
#[test]
fn a_write_abandoned_half_way_does_not_hold_the_target_region() {
    const LEN: usize = 16 << 20;
    let (a, b) = (End::new(LEN, true), End::new(LEN, true));
    connect(&a, &b, Mtu::Mtu1024);
    let half = a.buf.addr() + LEN / 2;
    // SAFETY: the second half of A's own mapping, never touched so far.
    let rc = unsafe { libc::mprotect(half as *mut libc::c_void, LEN / 2, libc::PROT_NONE) };
    assert_eq!(rc, 0);
    let op = SendOp::Write {
        remote_addr: b.mr.addr(),
        rkey: b.mr.rkey(),
    };
    send(&a.qp, 1, op, a.mr.sge(0, LEN as u32));
    let wc = a.wait();
    assert_eq!(wc.status, WcStatus::LocalProtectionError);
    std::thread::sleep(Duration::from_millis(50));
    let End { mr, .. } = b;
    let start = Instant::now();
    drop(mr);
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "deregistration took {took:?}"
    );
}

/// The application unmaps registered memory behind the device (a plain
/// `munmap` no event source reports); the peer's atomics into it fail as
/// remote access errors and the target process lives on.
#[test]
fn remote_atomics_into_memory_unmapped_behind_the_device_fail_cleanly() {
    let page = odp::page_size();
    for op in ["fetch-add", "compare-swap"] {
        let a = End::new(4096, true);
        let ctx = Context::open_with_port(LOCALHOST, 0).unwrap();
        let pd = ctx.alloc_pd().unwrap();
        let cq = ctx.create_cq(8).unwrap();
        let qp = pd.create_qp(&cq, &cq).build().unwrap();
        // Owned by hand: after the hole is made, only pages 0 and 2 are
        // unmapped at the end.
        let (base, len) = AddressSpace::process()
            .map_anonymous(3 * page, 0)
            .unwrap()
            .into_raw();
        let access = AccessFlags::REMOTE_ATOMIC | AccessFlags::ON_DEMAND;
        // SAFETY: the memory is this test's own and backs no Rust objects.
        let mr = unsafe { pd.reg_mr(base, len, access) }.unwrap();
        qp.connect(&a.qp.endpoint(Mtu::Mtu1024)).unwrap();
        a.qp.connect(&qp.endpoint(Mtu::Mtu1024)).unwrap();
        let target = mr.addr() + page as u64;
        let atomic = |wr_id| {
            let sop = match op {
                "fetch-add" => SendOp::FetchAdd {
                    remote_addr: target,
                    rkey: mr.rkey(),
                    add: 1,
                },
                _ => SendOp::CompareSwap {
                    remote_addr: target,
                    rkey: mr.rkey(),
                    compare: 0,
                    swap: 1,
                },
            };
            send(&a.qp, wr_id, sop, a.mr.sge(0, 8));
            a.wait()
        };
        // The first atomic faults the page in: the device's page table
        // then says present.
        assert_eq!(atomic(1).status, WcStatus::Success, "{op}");
        // SAFETY: page 1 of the test's own memory.
        let rc = unsafe { libc::munmap(target as *mut libc::c_void, page) };
        assert_eq!(rc, 0);
        let wc = atomic(2);
        assert_eq!(wc.status, WcStatus::RemoteAccessError, "{op}");
        assert_eq!(qp.state(), QpState::Error, "{op}");
        drop((mr, qp));
        for p in [0, 2] {
            // SAFETY: the test's own pages; the hole is left alone.
            unsafe { libc::munmap((base + p * page) as *mut libc::c_void, page) };
        }
    }
}

fn read_request(qpn: u32, psn: u32, va: u64, rkey: u32, len: u32) -> PacketRepr<'static> {
    let mut h = PacketRepr::new(bth(Opcode::RC_RDMA_READ_REQUEST, qpn, psn, 0), &[]);
    h.reth = Some(RethRepr { va, rkey, len });
    h
}

/// Every packet the device sends to `sock` until it goes quiet.
fn all_packets(sock: &UdpSocket) -> Vec<(Opcode, u32)> {
    let mut buf = [0u8; 4200];
    let mut out = Vec::new();
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        if let Ok(p) = PacketRepr::parse(&buf[..n]) {
            out.push((p.bth.opcode, p.bth.psn));
        }
    }
    out
}

/// The peer asks for 2^31 bytes at MTU 256 (2^23 response PSNs, half the
/// PSN space), then sends the next request and asks again for the READ's
/// last PSN only: the duplicate is recognised inside the huge READ, its
/// answer replaces the reply in progress, and the next request is carried
/// out at the PSN after the READ's 2^23.
#[test]
fn the_largest_read_keeps_the_psn_arithmetic_right() {
    const LEN: u32 = 1 << 31;
    let peer = socket(PEER);
    let me = peer.local_addr().unwrap();
    // Bound whole: its memory, queues and domain live to the end.
    let target = Target::new(me, LEN as usize, Mtu::Mtu256);
    let (ctx, qp, mr) = (&target.ctx, &target.qp, &target.mr);
    let dev = ctx.local_addr();
    let qpn = qp.qp_num();
    let after = (TARGET_PSN + (1 << 23)) & 0xff_ffff;
    let last = (after + 0xff_ffff) & 0xff_ffff;
    let send = |h: PacketRepr<'_>| peer.send_to(&seal(me, dev, packet(h)), dev).unwrap();
    send(read_request(qpn, TARGET_PSN, mr.addr(), mr.rkey(), LEN));
    send(PacketRepr::new(
        bth(Opcode::RC_SEND_ONLY, qpn, after, 0),
        &[],
    ));
    let tail = mr.addr() + u64::from(LEN) - 256;
    send(read_request(qpn, last, tail, mr.rkey(), 256));
    let got = all_packets(&peer);
    assert!(
        got.contains(&(Opcode::RC_RDMA_READ_RESPONSE_ONLY, last)),
        "the duplicate for PSN {last:#x} was answered: {:?}",
        &got[got.len().saturating_sub(4)..]
    );
    assert!(
        got.contains(&(Opcode::RC_ACKNOWLEDGE, after)),
        "the request after the READ was carried out at {after:#x}"
    );
    assert_eq!(qp.state(), QpState::Rts);
    // The reply runs a budget (64 packets) per turn of the device until the
    // duplicate arrives, which takes as many turns as the scheduler lets
    // this thread wait between its sends; the whole reply would be 2^23.
    assert!(
        got.len() < 4096,
        "the abandoned reply stopped: {} packets",
        got.len()
    );
}

/// One READ request for 1 GiB whose responses nobody reads (a spoofed or
/// greedy peer): the responder streams them without building the reply in
/// memory.
#[test]
fn an_unread_gigabyte_read_costs_the_responder_little_memory() {
    const LEN: u32 = 1 << 30;
    let peer = socket(PEER);
    let me = peer.local_addr().unwrap();
    // Bound whole: its memory, queues and domain live to the end.
    let target = Target::new(me, LEN as usize, Mtu::Mtu4096);
    let (ctx, qp, mr) = (&target.ctx, &target.qp, &target.mr);
    let dev = ctx.local_addr();
    let rss = || status_kib("VmRSS:") >> 10;
    let before = rss();
    let mut peak = before;
    let h = read_request(qp.qp_num(), TARGET_PSN, mr.addr(), mr.rkey(), LEN);
    peer.send_to(&seal(me, dev, packet(h)), dev).unwrap();
    let responses = (LEN >> 12) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while ctx.stats().tx_packets < responses && Instant::now() < deadline {
        peak = peak.max(rss());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ctx.stats().tx_packets, responses, "every response went out");
    assert!(peak - before < 64, "RSS grew by {} MiB", peak - before);
}
