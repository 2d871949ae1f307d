//! Deterministic engine tests: two queue pairs joined by an in-memory link
//! whose faults (drop, duplicate, reorder, corrupt, delay, stall) follow a
//! seeded schedule, driven step by step in virtual time, with no sockets
//! and no threads. Packets are sealed and checked with the real ICRC (for
//! two loopback addresses that no packet is ever sent to), so a corrupted
//! packet is caught as the device would catch it. Memory is real: each
//! end's regions are ODP umems over an anonymous mapping.
//!
//! A run is a function of its seed: a failure names the seed, and
//! `SIM_SEED=<n> cargo test -p provider --lib sim` replays it alone.

mod workload;

mod ack_req_tests;
mod hold_back_tests;
mod loss;
mod ordering_tests;
mod retry_tests;
mod rxe_answers;
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use odp::{AddressSpace, Mapping};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::clock::{Clock, ManualClock};
use super::{DEFAULT_PKEY, Outbox, Peer, QpCore, Regions, SendOp, SendWr, Sge};
use crate::net::{IcrcVerdict, Ipv4IdPolicy, seal, verify};
use crate::rc::{AccessFlags, Region, WorkCompletion};
use crate::verbs::{CompletionQueue, MrInner};
use crate::wire::{AethRepr, Opcode, PacketRepr, Syndrome};

pub(crate) use workload::{Workload, run_seed, run_with_faults};

/// The faults of a link, as probabilities per packet (and virtual times).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) drop: f64,
    pub(crate) duplicate: f64,
    /// Extra random delay of up to `reorder_window`, which reorders.
    pub(crate) reorder: f64,
    pub(crate) reorder_window: Duration,
    /// A byte of the packet flipped (the ICRC must catch it).
    pub(crate) corrupt: f64,
    /// One-way latency.
    pub(crate) latency: Duration,
    /// Periods in which the link delivers nothing: (start, length).
    pub(crate) stalls: [(Duration, Duration); 2],
}

impl Schedule {
    /// A schedule drawn from `rng`: clean, light or heavy faults.
    pub(crate) fn draw(rng: &mut StdRng) -> Schedule {
        let rate = [0.0, 0.01, 0.05, 0.2][rng.random_range(0..4)];
        let stall = |rng: &mut StdRng| {
            if rng.random_bool(0.3) {
                (
                    Duration::from_micros(rng.random_range(0..200_000)),
                    Duration::from_micros(rng.random_range(1_000..300_000)),
                )
            } else {
                (Duration::ZERO, Duration::ZERO)
            }
        };
        Schedule {
            drop: rate,
            duplicate: rate,
            reorder: rate,
            reorder_window: Duration::from_micros(rng.random_range(1..500)),
            corrupt: rate / 2.0,
            latency: Duration::from_micros(rng.random_range(1..50)),
            stalls: [stall(rng), stall(rng)],
        }
    }

    /// A link without faults and 10 µs of latency.
    pub(crate) fn clean() -> Schedule {
        Schedule {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_window: Duration::ZERO,
            corrupt: 0.0,
            latency: Duration::from_micros(10),
            stalls: [(Duration::ZERO, Duration::ZERO); 2],
        }
    }

    fn stalled(&self, t: Duration) -> bool {
        self.stalls
            .iter()
            .any(|&(start, len)| t >= start && t < start + len)
    }
}

/// What the link did, for the tests' own checks.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LinkStats {
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
    pub(crate) duplicated: u64,
    pub(crate) corrupted: u64,
    /// Corrupted packets the receiver's ICRC check rejected.
    pub(crate) caught: u64,
    /// Corrupted packets the receiver accepted (must stay 0).
    pub(crate) missed: u64,
    /// Packets that carry a PSN the peer must receive (requests, READ
    /// responses, atomic acknowledgements; not plain ACKs and NAKs).
    pub(crate) data_sent: u64,
    /// Of `data_sent`, the first transmission of each (sender, direction,
    /// PSN): what a link without faults would have carried.
    pub(crate) data_first: u64,
}

impl LinkStats {
    /// Data packets sent again (a go-back, a timeout, a duplicate request
    /// answered again).
    pub(crate) fn retransmitted(&self) -> u64 {
        self.data_sent - self.data_first
    }

    /// The sum of two runs' counts.
    pub(crate) fn add(&self, o: &LinkStats) -> LinkStats {
        LinkStats {
            sent: self.sent + o.sent,
            delivered: self.delivered + o.delivered,
            dropped: self.dropped + o.dropped,
            duplicated: self.duplicated + o.duplicated,
            corrupted: self.corrupted + o.corrupted,
            caught: self.caught + o.caught,
            missed: self.missed + o.missed,
            data_sent: self.data_sent + o.data_sent,
            data_first: self.data_first + o.data_first,
        }
    }
}

/// A packet in flight.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Duration,
    seq: u64,
    to: usize,
    bytes: Vec<u8>,
    corrupted: bool,
}

/// The regions of one end, by key.
#[derive(Default)]
pub(crate) struct SimRegions(HashMap<u32, Arc<dyn Region>>);

impl Regions for SimRegions {
    fn lookup_mr(&self, key: u32) -> Option<&dyn Region> {
        self.0.get(&key).map(|mr| &**mr)
    }
}

/// One end: a queue pair, its completion queue, one region over its
/// memory.
pub(crate) struct Node {
    pub(crate) qp: QpCore,
    pub(crate) cq: CompletionQueue,
    pub(crate) regions: SimRegions,
    pub(crate) mem: Mapping,
    pub(crate) key: u32,
    addr: SocketAddr,
}

impl Node {
    fn new(index: usize, mem_len: usize, clock: &Clock) -> Node {
        let cq = CompletionQueue::new(None, 1 << 14).expect("completion queue");
        let qp = QpCore::new(
            0x100 + index as u32,
            1,
            cq.user().expect("userspace queue").inner.clone(),
            cq.user().expect("userspace queue").inner.clone(),
            1024,
            1024,
        );
        qp.lock().req.set_clock(clock.clone());
        let mem = AddressSpace::process()
            .map_anonymous(mem_len, 0)
            .expect("mmap");
        let access = AccessFlags::LOCAL_WRITE
            | AccessFlags::REMOTE_WRITE
            | AccessFlags::REMOTE_READ
            | AccessFlags::REMOTE_ATOMIC
            | AccessFlags::ON_DEMAND;
        let key = 0x1000 * (index as u32 + 1) + 0x42;
        let mr = MrInner::new(key, 1, mem.addr(), mem_len, access).expect("region");
        let mut regions = SimRegions::default();
        regions.0.insert(key, Arc::new(mr));
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + index as u8)), 4791);
        Node {
            qp,
            cq,
            regions,
            mem,
            key,
            addr,
        }
    }

    /// The node's memory at `offset`.
    pub(crate) fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        assert!(offset + len <= self.mem.len());
        // SAFETY: the node's own mapping; between steps no engine call is
        // running, so nothing writes it while the slice lives.
        unsafe { std::slice::from_raw_parts(self.mem.ptr().add(offset), len) }
    }

    /// Writes `data` into the node's memory at `offset`.
    pub(crate) fn fill(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.mem.len());
        // SAFETY: as in `bytes`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.mem.ptr().add(offset), data.len())
        }
    }

    /// The completions queued so far.
    pub(crate) fn completions(&self) -> Vec<WorkCompletion> {
        let mut out = [WorkCompletion::default(); 32];
        let mut all = Vec::new();
        loop {
            let n = self.cq.poll(&mut out);
            all.extend_from_slice(&out[..n]);
            if n < out.len() {
                return all;
            }
        }
    }
}

/// Two nodes and the link between them, in virtual time.
pub(crate) struct Sim {
    pub(crate) nodes: [Node; 2],
    clock: Arc<ManualClock>,
    start: Instant,
    rng: StdRng,
    schedule: Schedule,
    flight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    pub(crate) stats: LinkStats,
    /// (sender, is a response, PSN) of every data packet sent so far.
    data_seen: HashSet<(usize, bool, u32)>,
}

impl Sim {
    /// Two connected nodes with `mem_len` bytes of memory each, at `mtu`.
    pub(crate) fn new(seed: u64, mtu: usize, mem_len: usize, schedule: Schedule) -> Sim {
        Self::with_timeout(seed, mtu, mem_len, schedule, 10)
    }

    /// [`Self::new`] with the queue pairs' retransmit `timeout` (verbs'
    /// exponent; 0 for none).
    pub(crate) fn with_timeout(
        seed: u64,
        mtu: usize,
        mem_len: usize,
        schedule: Schedule,
        timeout: u8,
    ) -> Sim {
        let clock = ManualClock::new();
        let shared = Clock::Manual(Arc::clone(&clock));
        let nodes = [
            Node::new(0, mem_len, &shared),
            Node::new(1, mem_len, &shared),
        ];
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let psns = [rng.random_range(0..1 << 24), rng.random_range(0..1 << 24)];
        for (me, other) in [(0, 1), (1, 0)] {
            let (a, b) = (&nodes[me], &nodes[other]);
            let peer = Peer {
                addr: b.addr,
                local: a.addr.ip(),
                source_port: crate::wire::udp_source_port(0, a.qp.qpn, b.qp.qpn),
                qpn: b.qp.qpn,
                mtu,
                pkey: DEFAULT_PKEY,
            };
            a.qp.to_init().unwrap();
            a.qp.to_rtr(peer, psns[other], 1).unwrap();
            a.qp.to_rts(psns[me], timeout, 7, 7, 16).unwrap();
        }
        let start = clock.now();
        Sim {
            nodes,
            clock,
            start,
            rng,
            schedule,
            flight: BinaryHeap::new(),
            seq: 0,
            stats: LinkStats::default(),
            data_seen: HashSet::new(),
        }
    }

    /// Virtual time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.clock.now() - self.start
    }

    /// Seals the packets `from` produced and puts them on the link, with
    /// the schedule's faults.
    pub(crate) fn transmit(&mut self, from: usize, out: &mut Outbox) {
        let to = 1 - from;
        let (src, dst) = (self.nodes[from].addr, self.nodes[to].addr);
        let now = self.elapsed();
        for (_, dest, bytes) in out.packets_mut() {
            debug_assert_eq!(dest, dst);
            seal(&src, &dst, 0, bytes).expect("sealable packet");
            self.stats.sent += 1;
            self.count_data(from, bytes);
            let s = self.schedule;
            if self.rng.random_bool(s.drop) || s.stalled(now) {
                self.stats.dropped += 1;
                continue;
            }
            let copies = if self.rng.random_bool(s.duplicate) {
                self.stats.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let mut bytes = bytes.to_vec();
                let mut corrupted = false;
                if self.rng.random_bool(s.corrupt) {
                    let i = self.rng.random_range(0..bytes.len());
                    bytes[i] ^= 1 << self.rng.random_range(0..8);
                    // The ICRC masks BTH byte 4 (FECN, BECN, reserved),
                    // which receivers ignore: a flip there is no
                    // corruption to catch.
                    corrupted = i != 4;
                    self.stats.corrupted += u64::from(corrupted);
                }
                let mut at = now + s.latency;
                if self.rng.random_bool(s.reorder) {
                    at += s.reorder_window.mul_f64(self.rng.random());
                }
                self.seq += 1;
                let seq = self.seq;
                self.flight.push(Reverse(InFlight {
                    at,
                    seq,
                    to,
                    bytes,
                    corrupted,
                }));
            }
        }
        out.clear();
    }

    /// Counts a data packet (see [`LinkStats::data_sent`]) from its BTH:
    /// the opcode in byte 0, the PSN in bytes 9..12.
    fn count_data(&mut self, from: usize, bytes: &[u8]) {
        let opcode = Opcode(bytes[0]);
        if opcode == Opcode::RC_ACKNOWLEDGE {
            return;
        }
        let psn = u32::from_be_bytes([0, bytes[9], bytes[10], bytes[11]]);
        self.stats.data_sent += 1;
        if self.data_seen.insert((from, !opcode.is_request(), psn)) {
            self.stats.data_first += 1;
        }
    }

    /// Hands node 0 an answer from node 1 (`opcode` at `psn`, with `aeth`
    /// and `payload`) built by hand, through its receive path but not over
    /// the link; returns what node 0 sent in reply.
    pub(crate) fn answer(
        &self,
        opcode: Opcode,
        psn: u32,
        aeth: Option<Syndrome>,
        payload: &[u8],
    ) -> Outbox {
        let peer = self.nodes[1].qp.lock().peer.unwrap();
        let mut h = super::qp::headers(super::qp::bth(&peer, opcode, psn, payload.len(), false));
        h.aeth = aeth.map(|s| AethRepr::new(s, 0));
        h.payload = payload;
        let mut bytes = vec![0u8; h.len().unwrap()];
        h.emit(&mut bytes).unwrap();
        let parsed = PacketRepr::parse(&bytes).unwrap();
        let (from, to) = (&self.nodes[1], &self.nodes[0]);
        let mut out = Outbox::default();
        to.qp
            .receive_run()
            .receive(&to.regions, from.addr.ip(), to.addr.ip(), &parsed, &mut out)
            .unwrap();
        out
    }

    /// Posts `count` RDMA WRITEs of `len` bytes each (work request IDs
    /// from `first_wr_id`) from node 0 to the start of node 1's memory, as
    /// one post, signaled or not; returns what the requester queued, not
    /// transmitted.
    pub(crate) fn post_writes(
        &self,
        first_wr_id: u64,
        count: usize,
        len: usize,
        signaled: bool,
    ) -> Outbox {
        let n = &self.nodes[0];
        let sge = [Sge {
            addr: n.mem.addr() as u64,
            length: len as u32,
            lkey: n.key,
        }];
        let wrs: Vec<SendWr<'_>> = (0..count as u64)
            .map(|i| SendWr {
                wr_id: first_wr_id + i,
                op: SendOp::Write {
                    remote_addr: self.nodes[1].mem.addr() as u64,
                    rkey: self.nodes[1].key,
                },
                sg_list: &sge,
                signaled,
                solicited: false,
            })
            .collect();
        let mut out = Outbox::default();
        n.qp.post_send(&n.regions, &wrs, &mut out).unwrap();
        out
    }

    /// Hands node 1 the request packets `requests` (from node 0, built by
    /// hand) as one received run, as a batch from the socket is handled;
    /// returns what node 1 queued in answer.
    pub(crate) fn request_run(&self, requests: &[PacketRepr<'_>]) -> Outbox {
        let (from, to) = (&self.nodes[0], &self.nodes[1]);
        let mut out = Outbox::default();
        let mut run = to.qp.receive_run();
        for pkt in requests {
            run.receive(&to.regions, from.addr.ip(), to.addr.ip(), pkt, &mut out)
                .unwrap();
        }
        out
    }

    /// Posts on `node` through `post`, then transmits what it produced.
    pub(crate) fn post(&mut self, node: usize, post: impl FnOnce(&Node, &mut Outbox)) {
        let mut out = Outbox::default();
        post(&self.nodes[node], &mut out);
        self.transmit(node, &mut out);
    }

    /// One step: READ replies continue, then the next event happens (a
    /// delivery, or an expired timer), moving the clock to it. Returns
    /// false when nothing at all is pending.
    pub(crate) fn step(&mut self) -> bool {
        let mut out = Outbox::default();
        for i in 0..2 {
            let node = &self.nodes[i];
            node.qp.continue_reply(&node.regions, &mut out);
            self.transmit(i, &mut out);
        }
        let next_packet = self.flight.peek().map(|Reverse(p)| self.start + p.at);
        let deadlines = self.nodes.each_ref().map(|n| n.qp.deadline());
        let next_timer = deadlines.iter().flatten().min().copied();
        match (next_packet, next_timer) {
            (None, None) => false,
            (Some(p), t) if t.is_none_or(|t| p <= t) => {
                self.clock.advance_to(p);
                let Some(Reverse(pkt)) = self.flight.pop() else {
                    return false;
                };
                self.deliver(pkt);
                true
            }
            (_, t) => {
                let Some(t) = t else { return false };
                self.clock.advance_to(t);
                let now = self.clock.now();
                for i in 0..2 {
                    let node = &self.nodes[i];
                    node.qp.on_timer(&node.regions, now, &mut out);
                    self.transmit(i, &mut out);
                }
                true
            }
        }
    }

    fn deliver(&mut self, pkt: InFlight) {
        let to = pkt.to;
        let (src, dst) = (self.nodes[1 - to].addr, self.nodes[to].addr);
        match verify(&src, &dst, &pkt.bytes, Ipv4IdPolicy::UpTo(0)) {
            IcrcVerdict::Good if pkt.corrupted => {
                self.stats.missed += 1;
                return;
            }
            IcrcVerdict::Good => {}
            _ => {
                self.stats.caught += 1;
                return;
            }
        }
        let Ok(parsed) = PacketRepr::parse(&pkt.bytes) else {
            self.stats.caught += 1;
            return;
        };
        self.stats.delivered += 1;
        let mut out = Outbox::default();
        let node = &self.nodes[to];
        // Drops for state are part of the protocol (e.g. after an error).
        let _ = node
            .qp
            .receive_run()
            .receive(&node.regions, src.ip(), dst.ip(), &parsed, &mut out);
        self.transmit(to, &mut out);
    }
}
