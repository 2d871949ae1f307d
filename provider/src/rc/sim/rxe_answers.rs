//! The responder against kernel rxe: every request of the golden capture
//! (`provider/tests/data`, perftest and `ibv_rc_pingpong` between two
//! kernel-rxe hosts) is fed, in capture order, to a responder set up as the
//! capture's (its QPN, expected PSN, MTU, the requester's QPN, regions
//! under the rkeys the requests name), and every answer it produces is
//! compared with the answer kernel rxe sent, in order.
//!
//! Compared, field by field: the whole BTH (opcode, solicited, MigReq,
//! pad count, version, P_Key, FECN/BECN, reserved bits, destination QPN,
//! AckReq, PSN), the AETH (syndrome, credits included, and MSN), the
//! atomic ACK's original value, and READ response payloads (length and
//! bytes). Not compared: what lies outside the engine (IP and UDP headers:
//! addresses, IPv4 ID, flow label, UDP source port; the ICRC, which the
//! transport seals and the golden tests check); the destination QPN is
//! compared but is no independent check, since the requester's QPN is
//! learnt from the kernel's answers (a request does not carry it).
//!
//! Memory: the capture's virtual addresses belong to the kernel hosts'
//! processes, so each rkey gets a local region over the span its requests
//! touch, and the requests' addresses are translated into it. The memory
//! the capture does not show is taken from the kernel's answers: each
//! atomic target starts with the original value rxe returned for it, and
//! READ sources hold the bytes rxe's responses carried, each at the offset
//! its response PSN says. So an atomic returning the value from a wrong
//! address, or a READ response carrying the wrong part of the source, is
//! caught; the memory an atomic leaves behind is checked too.
//!
//! Known differences: none. Every answer matches rxe's in every compared
//! field, the ACK's credit field included (both send 31, "unlimited"); a
//! difference found later is either fixed or listed here with its reason.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use odp::{AddressSpace, Mapping};

use super::SimRegions;
use crate::rc::psn::psn_diff;
use crate::rc::{AccessFlags, RecvWr, Sge, WcStatus, WorkCompletion};
use crate::rc::{DEFAULT_PKEY, Outbox, Peer, QpCore};
use crate::verbs::{CompletionQueue, MrInner};
use crate::wire::{Opcode, PacketRepr, ROCE_V2_PORT, golden};

/// One RC connection of the capture, seen from its responder.
struct Connection {
    responder: IpAddr,
    requester: IpAddr,
    /// The responder's QPN (the requests' destination).
    qpn: u32,
    /// The requester's QPN (the answers' destination).
    requester_qpn: Option<u32>,
    requests: Vec<PacketRepr<'static>>,
    /// What kernel rxe answered, in order.
    answers: Vec<PacketRepr<'static>>,
}

impl Connection {
    /// The path MTU: the largest payload either way, rounded up to an IB
    /// MTU (FIRST and MIDDLE packets carry exactly one).
    fn mtu(&self) -> usize {
        let largest = self
            .requests
            .iter()
            .chain(&self.answers)
            .map(|p| p.payload.len())
            .max()
            .unwrap_or(0);
        largest.next_power_of_two().clamp(256, 4096)
    }

    /// The request an answer at `psn` belongs to: the last one at or
    /// before it (a READ's responses follow its request's PSN).
    fn request_for(&self, psn: u32) -> Option<&PacketRepr<'static>> {
        self.requests
            .iter()
            .filter(|r| psn_diff(psn, r.bth.psn) >= 0)
            .min_by_key(|r| psn_diff(psn, r.bth.psn))
    }
}

/// The capture's RC connections, each with its requests and answers.
fn connections() -> Vec<Connection> {
    let mut conns: Vec<Connection> = Vec::new();
    for f in golden::frames() {
        let p = PacketRepr::parse(f.payload).expect("golden frames parse");
        let (src, dst) = (f.src.ip(), f.dst.ip());
        if p.bth.opcode.is_request() {
            let at = conns
                .iter()
                .position(|c| c.responder == dst && c.requester == src && c.qpn == p.bth.dest_qp);
            match at {
                Some(i) => conns[i].requests.push(p),
                None => conns.push(Connection {
                    responder: dst,
                    requester: src,
                    qpn: p.bth.dest_qp,
                    requester_qpn: None,
                    requests: vec![p],
                    answers: Vec::new(),
                }),
            }
            continue;
        }
        // An answer belongs to the connection between these hosts with the
        // request nearest below its PSN (PSNs start at random per queue
        // pair, so connections lie far apart).
        let conn = conns
            .iter_mut()
            .filter(|c| c.responder == src && c.requester == dst)
            .filter_map(|c| {
                let d = psn_diff(p.bth.psn, c.request_for(p.bth.psn)?.bth.psn);
                Some((d, c))
            })
            .filter(|(d, _)| *d < 1 << 16)
            .min_by_key(|(d, _)| *d)
            .map(|(_, c)| c)
            .expect("every answer follows a request");
        assert!(
            conn.requester_qpn.is_none_or(|q| q == p.bth.dest_qp),
            "one requester QPN per connection"
        );
        conn.requester_qpn = Some(p.bth.dest_qp);
        conn.answers.push(p);
    }
    conns
}

/// Local memory standing in for the capture's regions: one mapping per
/// rkey over the span its requests touch.
struct Memory {
    /// rkey -> (capture address the mapping starts at, mapping).
    spans: HashMap<u32, (u64, Mapping)>,
    regions: SimRegions,
}

const PAGE: u64 = 4096;

/// Every right a peer can use, on demand-paged memory.
fn access() -> AccessFlags {
    AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::REMOTE_ATOMIC
        | AccessFlags::ON_DEMAND
}

impl Memory {
    fn new(conn: &Connection) -> Memory {
        let mut extents: HashMap<u32, (u64, u64)> = HashMap::new();
        for r in &conn.requests {
            let Some((rkey, va, len)) = target(r) else {
                continue;
            };
            let e = extents.entry(rkey).or_insert((va, va + len));
            *e = (e.0.min(va), e.1.max(va + len));
        }
        let mut memory = Memory {
            spans: HashMap::new(),
            regions: SimRegions::default(),
        };
        for (rkey, (start, end)) in extents {
            let base = start / PAGE * PAGE;
            let len = (end - base).div_ceil(PAGE).max(1) * PAGE;
            memory.map(rkey, base, len as usize);
        }
        memory
    }

    /// Maps `len` bytes standing for `[base, base + len)` of the capture,
    /// registered under `key`.
    fn map(&mut self, key: u32, base: u64, len: usize) {
        let mapping = AddressSpace::process().map_anonymous(len, 0).expect("mmap");
        let mr = MrInner::new(key, 1, mapping.addr(), len, access()).expect("region");
        self.regions.0.insert(key, Arc::new(mr));
        self.spans.insert(key, (base, mapping));
    }

    /// The local address of the capture's `va` under `rkey`.
    fn local(&self, rkey: u32, va: u64) -> u64 {
        let (base, mapping) = &self.spans[&rkey];
        mapping.addr() as u64 + (va - base)
    }

    fn write(&self, rkey: u32, va: u64, bytes: &[u8]) {
        let mr = self.regions.0[&rkey].clone();
        mr.write(self.local(rkey, va), bytes).expect("local write");
    }

    fn read_u64(&self, rkey: u32, va: u64) -> u64 {
        let mut b = [0u8; 8];
        let mr = self.regions.0[&rkey].clone();
        mr.read(self.local(rkey, va), &mut b).expect("local read");
        u64::from_ne_bytes(b)
    }

    /// `r` with its target address translated into local memory.
    fn translate(&self, r: &PacketRepr<'static>) -> PacketRepr<'static> {
        let mut r = *r;
        if let Some(reth) = &mut r.reth
            && self.spans.contains_key(&reth.rkey)
        {
            reth.va = self.local(reth.rkey, reth.va);
        }
        if let Some(a) = &mut r.atomic_eth {
            a.va = self.local(a.rkey, a.va);
        }
        r
    }
}

/// The (rkey, address, length) a request targets, if any.
fn target(r: &PacketRepr<'_>) -> Option<(u32, u64, u64)> {
    if let Some(a) = r.atomic_eth {
        return Some((a.rkey, a.va, 8));
    }
    r.reth
        .filter(|reth| reth.len > 0)
        .map(|reth| (reth.rkey, reth.va, u64::from(reth.len)))
}

/// Fills what the capture tells of the responder's memory before the run:
/// atomic targets hold the original values rxe returned, READ sources the
/// bytes rxe's responses carried.
fn preload(conn: &Connection, memory: &Memory, mtu: usize) {
    for a in &conn.answers {
        let Some(req) = conn.request_for(a.bth.psn) else {
            continue;
        };
        if let (Some(ack), Some(at)) = (a.atomic_ack_eth, req.atomic_eth) {
            memory.write(at.rkey, at.va, &ack.orig.to_ne_bytes());
        }
        if let Some(reth) = req.reth
            && req.bth.opcode == Opcode::RC_RDMA_READ_REQUEST
            && !a.payload.is_empty()
        {
            let k = psn_diff(a.bth.psn, req.bth.psn) as u64;
            memory.write(reth.rkey, reth.va + k * mtu as u64, a.payload);
        }
    }
}

/// A responder queue pair set up as the capture's.
fn responder(conn: &Connection, mtu: usize, cq: &CompletionQueue) -> QpCore {
    let qp = QpCore::new(
        conn.qpn,
        1,
        cq.user().expect("userspace queue").inner.clone(),
        cq.user().expect("userspace queue").inner.clone(),
        1024,
        1024,
    );
    let requester_qpn = conn.requester_qpn.expect("answered connection");
    let peer = Peer {
        addr: SocketAddr::new(conn.requester, ROCE_V2_PORT),
        local: conn.responder,
        source_port: crate::wire::udp_source_port(0, conn.qpn, requester_qpn),
        qpn: requester_qpn,
        mtu,
        pkey: DEFAULT_PKEY,
    };
    qp.to_init().unwrap();
    qp.to_rtr(peer, conn.requests[0].bth.psn, 12).unwrap();
    qp.to_rts(0, 14, 7, 7, 16).unwrap();
    qp
}

/// Receive requests for the connection's SENDs, in a region of their own.
fn post_receives(conn: &Connection, qp: &QpCore, memory: &mut Memory, mtu: usize) {
    let sends = conn
        .requests
        .iter()
        .filter(|r| is_send(r.bth.opcode) && r.bth.opcode.is_first())
        .count();
    if sends == 0 {
        return;
    }
    let key = 0x00ff_fff0;
    assert!(!memory.spans.contains_key(&key));
    // The largest SEND in the capture is 2 KiB; a slot of 4 MTUs holds it.
    let slot = 4 * mtu;
    memory.map(key, 0, sends * slot);
    for i in 0..sends {
        let sge = Sge {
            addr: memory.local(key, (i * slot) as u64),
            length: slot as u32,
            lkey: key,
        };
        let wr = RecvWr {
            wr_id: i as u64,
            sg_list: &[sge],
        };
        qp.post_recv(&[wr]).expect("post_recv");
    }
}

/// What one replay left: the answers (as bytes, in order), the memory, and
/// the receive completions.
struct Replayed {
    answers: Vec<Vec<u8>>,
    memory: Memory,
    received: Vec<WorkCompletion>,
}

/// Feeds every request of `conn` to a responder like the capture's.
fn replay(conn: &Connection) -> Replayed {
    let mtu = conn.mtu();
    let mut memory = Memory::new(conn);
    preload(conn, &memory, mtu);
    let cq = CompletionQueue::new(None, 1024).expect("completion queue");
    let qp = responder(conn, mtu, &cq);
    post_receives(conn, &qp, &mut memory, mtu);
    let mut answers = Vec::new();
    let mut out = Outbox::default();
    for r in &conn.requests {
        let r = memory.translate(r);
        qp.receive_run()
            .receive(
                &memory.regions,
                conn.requester,
                conn.responder,
                &r,
                &mut out,
            )
            .expect("the request reaches the queue pair");
        while qp.continue_reply(&memory.regions, &mut out) {}
        answers.extend(out.packets_mut().map(|(_, _, bytes)| bytes.to_vec()));
        out.clear();
    }
    let mut received = vec![WorkCompletion::default(); 1024];
    let n = cq.poll(&mut received);
    received.truncate(n);
    Replayed {
        answers,
        memory,
        received,
    }
}

/// The lengths of the SEND messages among `requests`, in order.
fn send_lengths(requests: &[PacketRepr<'_>]) -> Vec<u32> {
    let mut lengths = Vec::new();
    let mut current = 0;
    for r in requests.iter().filter(|r| is_send(r.bth.opcode)) {
        current += r.payload.len() as u32;
        if r.bth.opcode.is_last() {
            lengths.push(current);
            current = 0;
        }
    }
    lengths
}

fn is_send(op: Opcode) -> bool {
    (Opcode::RC_SEND_FIRST.0..=Opcode::RC_SEND_ONLY_WITH_IMMEDIATE.0).contains(&op.0)
}

/// Where `ours` differs from `theirs`, field by field.
fn differences(ours: &PacketRepr<'_>, theirs: &PacketRepr<'_>) -> Vec<String> {
    let mut d = Vec::new();
    if ours.bth != theirs.bth {
        d.push(format!("BTH {:?} != {:?}", ours.bth, theirs.bth));
    }
    if ours.aeth != theirs.aeth {
        d.push(format!("AETH {:?} != {:?}", ours.aeth, theirs.aeth));
    }
    if ours.atomic_ack_eth != theirs.atomic_ack_eth {
        d.push(format!(
            "atomic ACK {:?} != {:?}",
            ours.atomic_ack_eth, theirs.atomic_ack_eth
        ));
    }
    if ours.payload.len() != theirs.payload.len() {
        d.push(format!(
            "payload length {} != {}",
            ours.payload.len(),
            theirs.payload.len()
        ));
    } else if ours.payload != theirs.payload {
        d.push("payload bytes differ".to_string());
    }
    d
}

/// The value an atomic leaves in memory, given the original one.
fn after_atomic(r: &PacketRepr<'_>, orig: u64) -> u64 {
    let a = r.atomic_eth.expect("an atomic request");
    match r.bth.opcode {
        Opcode::RC_FETCH_ADD => orig.wrapping_add(a.swap_add),
        _ if orig == a.compare => a.swap_add,
        _ => orig,
    }
}

#[test]
fn the_responder_answers_every_golden_request_as_kernel_rxe_did() {
    let conns = connections();
    // perftest's runs and ibv_rc_pingpong's, each direction of the latency
    // tests and of pingpong a connection of its own.
    assert_eq!(conns.len(), 19, "connections in the capture");
    let mut compared = 0;
    for conn in &conns {
        let name = format!("{} -> {} QPN {}", conn.requester, conn.responder, conn.qpn);
        let Replayed {
            answers: ours,
            memory,
            received,
        } = replay(conn);
        let ours: Vec<PacketRepr<'_>> = ours
            .iter()
            .map(|b| PacketRepr::parse(b).expect("our answers parse"))
            .collect();
        assert_eq!(ours.len(), conn.answers.len(), "{name}: answers");
        for (i, (o, t)) in ours.iter().zip(&conn.answers).enumerate() {
            let d = differences(o, t);
            assert!(d.is_empty(), "{name}, answer {i}: {}", d.join("; "));
            compared += 1;
        }
        // Every SEND filled one receive, whole, in order.
        let lengths: Vec<(u64, WcStatus, u32)> = received
            .iter()
            .map(|wc| (wc.wr_id, wc.status, wc.byte_len))
            .collect();
        let expected: Vec<(u64, WcStatus, u32)> = send_lengths(&conn.requests)
            .into_iter()
            .enumerate()
            .map(|(i, len)| (i as u64, WcStatus::Success, len))
            .collect();
        assert_eq!(lengths, expected, "{name}: receive completions");
        // Every atomic did its work once, on the right 8 bytes.
        for r in conn.requests.iter().filter(|r| r.atomic_eth.is_some()) {
            let a = r.atomic_eth.unwrap();
            let orig = conn
                .answers
                .iter()
                .find(|t| t.bth.psn == r.bth.psn)
                .and_then(|t| t.atomic_ack_eth)
                .expect("an atomic ACK")
                .orig;
            let now = memory.read_u64(a.rkey, a.va);
            assert_eq!(now, after_atomic(r, orig), "{name}: memory after an atomic");
        }
    }
    assert_eq!(
        compared,
        615 - conns.iter().map(|c| c.requests.len()).sum::<usize>()
    );
}
