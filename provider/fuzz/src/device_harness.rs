//! The device's receive path fed datagrams in-process
//! ([`Context::receive_datagram`]): ICRC check, parser, queue-pair checks
//! and the RC engine, with the responses sent for real to the peer.
//!
//! Once per process: two devices on 127.0.0.1 (ports picked by the kernel),
//! a protection domain and a completion queue on each, and on the target a
//! pinned and an on-demand region with every remote right plus a local
//! region for receive and send buffers. Per input: a fresh queue pair on
//! each side, the target's connected to the peer's with a fixed first PSN,
//! four receives posted, and the input's datagrams fed one by one as if the
//! peer had sent them. Queue pairs are made afresh so that an input behaves
//! the same whatever ran before it; what the input cannot know (queue pair
//! numbers, the target's first PSN, keys, region addresses) it can ask the
//! harness to fill in, so the fuzzer reaches the engine without guessing.
//!
//! Input: records of `[control byte][length: u16 big-endian][datagram]`
//! (a short last record takes what is left). Control bits:
//!
//! | bit | meaning |
//! |---|---|
//! | 0x01 | seal: write the ICRC the datagram needs from its source |
//! | 0x02 | destination QP := the target queue pair's number |
//! | 0x04 | PSN := base + PSN field (base: the peer's first PSN for requests, the target's for responses) |
//! | 0x08 | RETH/AtomicETH/IETH rkey := a region's key, VA := its start + VA field |
//! | 0x10 | that region is the on-demand one (else the pinned one) |
//! | 0x20 | sent from 127.0.0.2, not the peer's address |
//! | 0x40 | sent from the peer's address with another port |
//! | 0x80 | first record only: requester mode (below) |
//!
//! In requester mode the target first posts a WRITE, a READ, a
//! fetch-and-add and a SEND toward the peer queue pair, which is left in
//! RESET so that only the input answers them; otherwise the peer queue
//! pair is connected back to the target. The target's retransmit timer is
//! off (timeout 0), so nothing is resent behind the input's back.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;

use odp::{AddressSpace, Mapping};
use provider::net::{MAX_PAYLOAD_V4, MIN_PAYLOAD, seal};
use provider::wire::{BthRepr, Packet};
use provider::{
    AccessFlags, CompletionQueue, Context, Gid, MemoryRegion, Mtu, ProtectionDomain, QueuePair,
    RecvWr, RemoteInfo, SendOp, SendWr, WorkCompletion,
};

/// Control bits of a record.
const SEAL: u8 = 0x01;
const SET_QPN: u8 = 0x02;
const RELATIVE_PSN: u8 = 0x04;
const SET_KEYS: u8 = 0x08;
const ON_DEMAND_REGION: u8 = 0x10;
const OTHER_ADDRESS: u8 = 0x20;
const OTHER_PORT: u8 = 0x40;
const REQUESTER_MODE: u8 = 0x80;

/// Bytes of each region.
const REGION_LEN: usize = 1 << 16;
/// The first PSN the target expects from the peer.
const PEER_FIRST_PSN: u32 = 0x10;
/// Path MTU between the two queue pairs.
const MTU: Mtu = Mtu::Mtu1024;
/// Datagrams fed per input at most (keeps each input's time bounded).
const MAX_RECORDS: usize = 64;
/// Receives posted on the target per input, and their size.
const RECEIVES: u64 = 4;
const RECEIVE_LEN: u32 = 2048;

/// What lives for the whole process.
struct Fixture {
    target: Context,
    peer: Context,
    target_pd: ProtectionDomain,
    peer_pd: ProtectionDomain,
    target_cq: CompletionQueue,
    peer_cq: CompletionQueue,
    pinned: MemoryRegion,
    on_demand: MemoryRegion,
    local: MemoryRegion,
    memory: [Mapping; 3],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let target = Context::open_with_port(localhost, 0).expect("open the target device");
        let peer = Context::open_with_port(localhost, 0).expect("open the peer device");
        let target_pd = target.alloc_pd().expect("protection domain");
        let peer_pd = peer.alloc_pd().expect("protection domain");
        let target_cq = target.create_cq(1024).expect("completion queue");
        let peer_cq = peer.create_cq(1024).expect("completion queue");
        let aspace = AddressSpace::process();
        let map = || {
            aspace
                .map_anonymous(REGION_LEN, 0)
                .expect("anonymous memory")
        };
        let memory = [map(), map(), map()];
        let remote = AccessFlags::LOCAL_WRITE
            | AccessFlags::REMOTE_WRITE
            | AccessFlags::REMOTE_READ
            | AccessFlags::REMOTE_ATOMIC;
        let register = |m: &Mapping, access| {
            // SAFETY: the mappings live in the fixture as long as the
            // regions and back no Rust objects: peers may write them.
            unsafe { target_pd.reg_mr(m.addr(), REGION_LEN, access) }.expect("register memory")
        };
        let pinned = register(&memory[0], remote);
        let on_demand = register(&memory[1], remote | AccessFlags::ON_DEMAND);
        let local = register(&memory[2], AccessFlags::LOCAL_WRITE);
        Fixture {
            target,
            peer,
            target_pd,
            peer_pd,
            target_cq,
            peer_cq,
            pinned,
            on_demand,
            local,
            memory,
        }
    })
}

/// One datagram of the input and how to treat it.
struct Record<'a> {
    control: u8,
    datagram: &'a [u8],
}

/// Splits an input into records.
fn records(mut data: &[u8]) -> Vec<Record<'_>> {
    let mut out = Vec::new();
    while let [control, hi, lo, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let (datagram, tail) = rest.split_at(len);
        out.push(Record {
            control: *control,
            datagram,
        });
        data = tail;
        if out.len() == MAX_RECORDS {
            break;
        }
    }
    out
}

/// The queue pairs of one input.
struct Pair {
    target: QueuePair,
    _peer: QueuePair,
    /// The first PSN the target sends.
    target_psn: u32,
}

fn connect_pair(f: &Fixture, requester_mode: bool) -> Pair {
    let target = f
        .target_pd
        .create_qp(&f.target_cq, &f.target_cq)
        .timeout(0)
        .build()
        .expect("target queue pair");
    let peer = f
        .peer_pd
        .create_qp(&f.peer_cq, &f.peer_cq)
        .build()
        .expect("peer queue pair");
    target.to_init().expect("target to INIT");
    let receives: Vec<_> = (0..RECEIVES)
        .map(|i| f.local.sge(i * u64::from(RECEIVE_LEN), RECEIVE_LEN))
        .collect();
    for (i, sge) in receives.iter().enumerate() {
        let wr = RecvWr {
            wr_id: i as u64,
            sg_list: std::slice::from_ref(sge),
        };
        target.post_recv(&[wr]).expect("post a receive");
    }
    let peer_addr = f.peer.local_addr();
    target
        .connect(&RemoteInfo {
            qp_num: peer.qp_num(),
            psn: PEER_FIRST_PSN,
            gid: Gid::from_ip(peer_addr.ip()),
            port: peer_addr.port(),
            mtu: MTU,
        })
        .expect("connect the target");
    let target_psn = target.endpoint(MTU).psn;
    if requester_mode {
        post_requests(f, &target);
    } else {
        peer.connect(&target.endpoint(MTU))
            .expect("connect the peer");
    }
    Pair {
        target,
        _peer: peer,
        target_psn,
    }
}

/// A WRITE of three packets, a READ of two, a fetch-and-add and a SEND,
/// toward the peer's pinned-looking address 0x1000 with rkey 0x1234 (the
/// peer never executes them: only the input answers).
fn post_requests(f: &Fixture, qp: &QueuePair) {
    let base = RECEIVES * u64::from(RECEIVE_LEN);
    let write = [f.local.sge(base, 3000)];
    let read = [f.local.sge(base + 4096, 2000)];
    let atomic = [f.local.sge(base + 8192, 8)];
    let send = [f.local.sge(base + 8192 + 64, 100)];
    let (remote_addr, rkey) = (0x1000, 0x1234);
    let wr = |wr_id, op, sg_list| SendWr {
        wr_id,
        op,
        sg_list,
        signaled: true,
        solicited: false,
    };
    let wrs = [
        wr(10, SendOp::Write { remote_addr, rkey }, &write[..]),
        wr(11, SendOp::Read { remote_addr, rkey }, &read[..]),
        wr(
            12,
            SendOp::FetchAdd {
                remote_addr,
                rkey,
                add: 1,
            },
            &atomic[..],
        ),
        wr(13, SendOp::Send, &send[..]),
    ];
    qp.post_send(&wrs).expect("post the requests");
}

/// The datagram as the control byte asks: fields filled in, sealed.
fn prepare(f: &Fixture, pair: &Pair, record: &Record<'_>, src: SocketAddr) -> Vec<u8> {
    let control = record.control;
    let mut bytes = record.datagram.to_vec();
    if bytes.len() >= BthRepr::LEN {
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        if control & SET_QPN != 0 {
            p.set_dest_qp(pair.target.qp_num());
        }
        if control & RELATIVE_PSN != 0 {
            let base = if p.opcode().is_request() {
                PEER_FIRST_PSN
            } else {
                pair.target_psn
            };
            p.set_psn(base.wrapping_add(p.psn()) & 0xff_ffff);
        }
    }
    if control & SET_KEYS != 0
        && let Ok(mut p) = Packet::new_checked(&mut bytes[..])
    {
        let mr = if control & ON_DEMAND_REGION != 0 {
            &f.on_demand
        } else {
            &f.pinned
        };
        if let Some(va) = p.reth_va() {
            p.set_reth_va(mr.addr().wrapping_add(va));
            p.set_reth_rkey(mr.rkey());
        }
        if let Some(va) = p.atomic_va() {
            p.set_atomic_va(mr.addr().wrapping_add(va));
            p.set_atomic_rkey(mr.rkey());
        }
        if p.ieth_rkey().is_some() {
            p.set_ieth_rkey(mr.rkey());
        }
    }
    if control & SEAL != 0 && (MIN_PAYLOAD..=MAX_PAYLOAD_V4).contains(&bytes.len()) {
        seal(&src, &f.target.local_addr(), 0, &mut bytes).expect("a sealable length");
    }
    bytes
}

/// Where a record claims to come from.
fn source(f: &Fixture, control: u8) -> SocketAddr {
    let peer = f.peer.local_addr();
    if control & OTHER_ADDRESS != 0 {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), peer.port())
    } else if control & OTHER_PORT != 0 {
        SocketAddr::new(peer.ip(), peer.port().wrapping_add(1))
    } else {
        peer
    }
}

/// Empties a completion queue.
fn drain(cq: &CompletionQueue) {
    let mut wc = [WorkCompletion::default(); 32];
    while cq.poll(&mut wc) > 0 {}
}

/// A copy of bytes `offset..offset + len` of the pinned region, for tests
/// that check that inputs reach memory.
///
/// # Panics
/// If the range is not inside the region.
pub fn pinned_bytes(offset: usize, len: usize) -> Vec<u8> {
    assert!(offset.checked_add(len).is_some_and(|end| end <= REGION_LEN));
    let mapping = &fixture().memory[0];
    // SAFETY: the range lies in the mapping, which the fixture keeps mapped
    // and readable for the life of the process. Only datagrams fed from
    // the calling thread write it; concurrent callers touch other bytes.
    unsafe { std::slice::from_raw_parts(mapping.ptr().add(offset), len) }.to_vec()
}

/// Feeds one input to the target device.
pub fn run(data: &[u8]) {
    let f = fixture();
    let records = records(data);
    let requester_mode = records
        .first()
        .is_some_and(|r| r.control & REQUESTER_MODE != 0);
    let pair = connect_pair(f, requester_mode);
    for record in &records {
        let src = source(f, record.control);
        let bytes = prepare(f, &pair, record, src);
        f.target.receive_datagram(src, &bytes);
        drain(&f.target_cq);
    }
    drop(pair);
    drain(&f.target_cq);
    drain(&f.peer_cq);
}
