//! A seeded workload for [`Sim`]: both ends post a random mix of every
//! operation to each other, with a shadow model of both memories that
//! says what every byte and every completion must be.
//!
//! Memory layout of each end (the peer's operations and the end's own
//! results never share bytes, so the final contents follow from the
//! posting order alone, which RC preserves):
//! - `SRC`: a constant pattern, the source of WRITEs, SENDs and the peer's
//!   READs;
//! - `IN`: where the peer's WRITEs land;
//! - `READ_BUF`: where this end's READ results land;
//! - `RECV`: receive slots for the peer's SENDs;
//! - `COUNTER`: the target of the peer's atomics; `ATOMIC_RESULTS`: one
//!   8-byte slot per atomic this end posts.

use std::ops::Range;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{LinkStats, Node, Schedule, Sim};
use crate::rc::{RecvWr, SendOp, SendWr, Sge, WcOpcode, WcStatus, WorkCompletion};

const SRC: Range<usize> = 0..0x1_0000;
const IN: Range<usize> = 0x1_0000..0x2_0000;
const READ_BUF: Range<usize> = 0x2_0000..0x3_0000;
const RECV: Range<usize> = 0x3_0000..0x3_8000;
const COUNTER: usize = 0x3_8000;
const ATOMIC_RESULTS: usize = 0x3_9000;
const MEM_LEN: usize = 0x4_0000;
/// Receive slots (and so SENDs and WRITEs with immediate) per direction.
const RECV_SLOTS: usize = 8;
const RECV_SLOT: usize = (RECV.end - RECV.start) / RECV_SLOTS;
/// Work requests in flight per end.
const WINDOW: usize = 16;

/// One operation and what it must produce.
#[derive(Clone, Debug)]
struct Op {
    wr_id: u64,
    op: SendOp,
    sges: Vec<Sge>,
    opcode: WcOpcode,
    byte_len: u32,
    /// Atomics: the value that must come back, and where it lands.
    atomic_result: Option<(usize, u64)>,
}

/// What the peer's receive side must report for a SEND or WRITE with
/// immediate, in order.
#[derive(Clone, Debug)]
struct ExpectedRecv {
    opcode: WcOpcode,
    byte_len: u32,
    imm: Option<u32>,
    /// SENDs: the bytes the receive slot must hold.
    data: Option<Vec<u8>>,
}

/// One direction: what `from` posts to the other end, with the shadow of
/// the memory it changes.
struct Direction {
    ops: Vec<Op>,
    recvs: Vec<ExpectedRecv>,
    /// The peer's `IN` after every WRITE.
    peer_in: Vec<u8>,
    /// This end's `READ_BUF` after every READ.
    read_buf: Vec<u8>,
    /// The peer's counter after every atomic.
    counter: u64,
}

/// The constant `SRC` contents of `node` in the run of `seed`
/// (splitmix64: cheap, and different for every seed and node).
fn pattern(node: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(31).wrapping_add(node as u64);
    (0..SRC.len() / 8)
        .flat_map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .collect()
}

/// A random range of `len` bytes within `area`.
fn place(rng: &mut StdRng, area: &Range<usize>, len: usize) -> usize {
    area.start + rng.random_range(0..=area.len() - len)
}

/// An SGE list over `[addr, addr + len)` of `node`'s region, sometimes cut
/// in two to exercise gathers and scatters.
fn sges(rng: &mut StdRng, node: &Node, offset: usize, len: usize) -> Vec<Sge> {
    let addr = node.mem.addr() as u64 + offset as u64;
    let sge = |addr: u64, length: usize| Sge {
        addr,
        length: length as u32,
        lkey: node.key,
    };
    if len >= 2 && rng.random_bool(0.3) {
        let cut = rng.random_range(1..len);
        vec![sge(addr, cut), sge(addr + cut as u64, len - cut)]
    } else {
        vec![sge(addr, len)]
    }
}

/// What the ends post to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// A random mix of every operation, both ways (10 to 40 each).
    Mixed,
    /// One end WRITEs all of its `SRC` into the other's `IN`, then READs
    /// the other's `SRC` back, whole (64 KiB each: 16 to 256 packets).
    Bulk,
}

impl Direction {
    /// Nothing posted.
    fn idle() -> Direction {
        Direction {
            ops: Vec::new(),
            recvs: Vec::new(),
            peer_in: vec![0; IN.len()],
            read_buf: vec![0; READ_BUF.len()],
            counter: 0,
        }
    }

    /// The [`Workload::Bulk`] operations of `from`.
    fn bulk(sim: &Sim, from: usize, seed: u64) -> Direction {
        let (me, peer) = (&sim.nodes[from], &sim.nodes[1 - from]);
        let mut d = Direction::idle();
        d.peer_in.copy_from_slice(&pattern(from, seed));
        d.read_buf.copy_from_slice(&pattern(1 - from, seed));
        let sge = |offset: usize, len: usize| Sge {
            addr: me.mem.addr() as u64 + offset as u64,
            length: len as u32,
            lkey: me.key,
        };
        let remote = |offset: usize| peer.mem.addr() as u64 + offset as u64;
        d.ops.push(Op {
            wr_id: 0,
            op: SendOp::Write {
                remote_addr: remote(IN.start),
                rkey: peer.key,
            },
            sges: vec![sge(SRC.start, SRC.len())],
            opcode: WcOpcode::RdmaWrite,
            byte_len: SRC.len() as u32,
            atomic_result: None,
        });
        d.ops.push(Op {
            wr_id: 1,
            op: SendOp::Read {
                remote_addr: remote(SRC.start),
                rkey: peer.key,
            },
            sges: vec![sge(READ_BUF.start, READ_BUF.len())],
            opcode: WcOpcode::RdmaRead,
            byte_len: READ_BUF.len() as u32,
            atomic_result: None,
        });
        d
    }

    /// Draws the operations `from` posts to `to` and their outcomes.
    fn draw(rng: &mut StdRng, sim: &Sim, from: usize, seed: u64, mtu: usize) -> Direction {
        let (me, peer) = (&sim.nodes[from], &sim.nodes[1 - from]);
        let src = pattern(from, seed);
        let peer_src = pattern(1 - from, seed);
        let mut d = Direction {
            ops: Vec::new(),
            recvs: Vec::new(),
            peer_in: vec![0; IN.len()],
            read_buf: vec![0; READ_BUF.len()],
            counter: 0,
        };
        let count = rng.random_range(10..40);
        let max_len = (4 * mtu + 33).min(IN.len());
        let remote = |offset: usize| peer.mem.addr() as u64 + offset as u64;
        for wr_id in 0..count as u64 {
            let kind = rng.random_range(0..7);
            let sends_left = d.recvs.len() < RECV_SLOTS;
            let atomic_slot = ATOMIC_RESULTS + 8 * wr_id as usize;
            let op = match kind {
                0 | 1 => {
                    let len = rng.random_range(0..=max_len);
                    let (s, t) = (place(rng, &SRC, len), place(rng, &IN, len));
                    d.peer_in[t - IN.start..][..len].copy_from_slice(&src[s..s + len]);
                    let imm = (kind == 1 && sends_left).then(|| rng.random());
                    if let Some(imm) = imm {
                        d.recvs.push(ExpectedRecv {
                            opcode: WcOpcode::RecvRdmaWithImm,
                            byte_len: len as u32,
                            imm: Some(imm),
                            data: None,
                        });
                    }
                    let (remote_addr, rkey) = (remote(t), peer.key);
                    Op {
                        wr_id,
                        op: match imm {
                            Some(imm) => SendOp::WriteWithImm {
                                remote_addr,
                                rkey,
                                imm,
                            },
                            None => SendOp::Write { remote_addr, rkey },
                        },
                        sges: sges(rng, me, s, len),
                        opcode: WcOpcode::RdmaWrite,
                        byte_len: len as u32,
                        atomic_result: None,
                    }
                }
                2 | 3 => {
                    let len = rng.random_range(0..=max_len);
                    let (s, t) = (place(rng, &SRC, len), place(rng, &READ_BUF, len));
                    d.read_buf[t - READ_BUF.start..][..len].copy_from_slice(&peer_src[s..s + len]);
                    Op {
                        wr_id,
                        op: SendOp::Read {
                            remote_addr: remote(s),
                            rkey: peer.key,
                        },
                        sges: sges(rng, me, t, len),
                        opcode: WcOpcode::RdmaRead,
                        byte_len: len as u32,
                        atomic_result: None,
                    }
                }
                4 if sends_left => {
                    let len = rng.random_range(0..=max_len.min(RECV_SLOT));
                    let s = place(rng, &SRC, len);
                    let imm = rng.random_bool(0.5).then(|| rng.random());
                    d.recvs.push(ExpectedRecv {
                        opcode: WcOpcode::Recv,
                        byte_len: len as u32,
                        imm,
                        data: Some(src[s..s + len].to_vec()),
                    });
                    Op {
                        wr_id,
                        op: match imm {
                            Some(imm) => SendOp::SendWithImm { imm },
                            None => SendOp::Send,
                        },
                        sges: sges(rng, me, s, len),
                        opcode: WcOpcode::Send,
                        byte_len: len as u32,
                        atomic_result: None,
                    }
                }
                5 => {
                    let add = rng.random_range(0..1000);
                    let old = d.counter;
                    d.counter = d.counter.wrapping_add(add);
                    Op {
                        wr_id,
                        op: SendOp::FetchAdd {
                            remote_addr: remote(COUNTER),
                            rkey: peer.key,
                            add,
                        },
                        sges: vec![Sge {
                            addr: me.mem.addr() as u64 + atomic_slot as u64,
                            length: 8,
                            lkey: me.key,
                        }],
                        opcode: WcOpcode::FetchAdd,
                        byte_len: 8,
                        atomic_result: Some((atomic_slot, old)),
                    }
                }
                _ => {
                    let old = d.counter;
                    let compare = if rng.random_bool(0.5) { old } else { old ^ 1 };
                    let swap = rng.random_range(0..1000);
                    if compare == old {
                        d.counter = swap;
                    }
                    Op {
                        wr_id,
                        op: SendOp::CompareSwap {
                            remote_addr: remote(COUNTER),
                            rkey: peer.key,
                            compare,
                            swap,
                        },
                        sges: vec![Sge {
                            addr: me.mem.addr() as u64 + atomic_slot as u64,
                            length: 8,
                            lkey: me.key,
                        }],
                        opcode: WcOpcode::CompareSwap,
                        byte_len: 8,
                        atomic_result: Some((atomic_slot, old)),
                    }
                }
            };
            d.ops.push(op);
        }
        d
    }
}

/// Progress of one direction while the simulation runs.
#[derive(Default)]
struct Progress {
    posted: usize,
    completed: usize,
    recvs_posted: usize,
    recvs_done: usize,
}

/// Runs the workload of `seed`; returns a description of the first rule
/// broken, if any.
pub(crate) fn run_seed(seed: u64) -> Result<String, String> {
    run(seed, None, Workload::Mixed).map(|(mtu, dirs, steps, sim)| {
        format!(
            "mtu {mtu}, {} + {} ops, {steps} steps, {:?} virtual, {:?}",
            dirs[0].ops.len(),
            dirs[1].ops.len(),
            sim.elapsed(),
            sim.stats
        )
    })
}

/// Runs the workload of `seed` (the same operations whatever the rate)
/// over a link that drops, duplicates and reorders `rate` of the packets
/// and corrupts half that, in both directions, without stalls, with every
/// receive posted up front (no RNR waits): what the link carried and the
/// virtual time the run took, for measuring the cost of loss.
pub(crate) fn run_with_faults(
    seed: u64,
    rate: f64,
    workload: Workload,
) -> Result<(LinkStats, Duration), String> {
    run(seed, Some(rate), workload).map(|(.., sim)| (sim.stats, sim.elapsed()))
}

/// A finished run: MTU, operations, steps and the simulation.
type Finished = (usize, [Direction; 2], u64, Sim);

/// Runs the workload of `seed`, over the seed's own link schedule or, with
/// `fault_rate`, the uniform one of [`run_with_faults`].
fn run(seed: u64, fault_rate: Option<f64>, workload: Workload) -> Result<Finished, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mtu = [256, 512, 1024, 2048, 4096][rng.random_range(0..5)];
    let mut schedule = Schedule::draw(&mut rng);
    if let Some(rate) = fault_rate {
        schedule = Schedule {
            drop: rate,
            duplicate: rate,
            reorder: rate,
            corrupt: rate / 2.0,
            stalls: [(Duration::ZERO, Duration::ZERO); 2],
            ..schedule
        };
    }
    let mut sim = Sim::new(seed, mtu, MEM_LEN, schedule);
    for i in 0..2 {
        sim.nodes[i].fill(SRC.start, &pattern(i, seed));
    }
    let mut dirs = [0, 1].map(|i| Direction::draw(&mut rng, &sim, i, seed, mtu));
    if workload == Workload::Bulk {
        dirs = [Direction::bulk(&sim, 0, seed), Direction::idle()];
    }
    // Receives for the peer's SENDs: some now, the rest later (the sender
    // meets RNR NAKs meanwhile).
    let mut progress = [Progress::default(), Progress::default()];
    let mut early = [0, 1].map(|i| rng.random_range(0..=dirs[1 - i].recvs.len()));
    if fault_rate.is_some() {
        early = [RECV_SLOTS; 2];
    }
    for i in 0..2 {
        post_recvs(&mut sim, i, &mut progress[i], early[i]);
    }
    let mut steps = 0u64;
    loop {
        for i in 0..2 {
            post_sends(&mut sim, i, &dirs[i], &mut progress[i]);
            if steps % 64 == 63 {
                post_recvs(&mut sim, i, &mut progress[i], 1);
            }
            check_completions(&sim, i, &dirs, &mut progress)?;
        }
        let done = (0..2).all(|i| {
            progress[i].completed == dirs[i].ops.len()
                && progress[1 - i].recvs_done == dirs[i].recvs.len()
        });
        if done {
            break;
        }
        if !sim.step() {
            let needs_recvs = (0..2).any(|i| progress[i].recvs_posted < dirs[1 - i].recvs.len());
            if !needs_recvs {
                let states = sim.nodes.each_ref().map(|n| n.qp.state());
                let counts = progress
                    .each_ref()
                    .map(|p| (p.posted, p.completed, p.recvs_posted, p.recvs_done));
                return Err(format!(
                    "stuck after {steps} steps: nothing pending; states {states:?}, \
                     (posted, completed, receives posted, received) {counts:?} of {:?}; \
                     requesters {:?}",
                    dirs.each_ref().map(|d| (d.ops.len(), d.recvs.len())),
                    sim.nodes.each_ref().map(|n| n.qp.lock().req.describe())
                ));
            }
        }
        steps += 1;
        if sim.elapsed() > Duration::from_secs(600) || steps > 5_000_000 {
            return Err(format!(
                "no end after {steps} steps, {:?} virtual",
                sim.elapsed()
            ));
        }
    }
    check_memory(&sim, &dirs)?;
    if sim.stats.missed > 0 {
        return Err(format!(
            "{} corrupted packets passed the ICRC",
            sim.stats.missed
        ));
    }
    Ok((mtu, dirs, steps, sim))
}

/// Posts `n` more receives on `node` for its peer's SENDs.
fn post_recvs(sim: &mut Sim, node: usize, p: &mut Progress, n: usize) {
    for _ in 0..n {
        if p.recvs_posted == RECV_SLOTS {
            return;
        }
        let slot = RECV.start + p.recvs_posted * RECV_SLOT;
        let n = &sim.nodes[node];
        let sge = Sge {
            addr: n.mem.addr() as u64 + slot as u64,
            length: RECV_SLOT as u32,
            lkey: n.key,
        };
        let wr = RecvWr {
            wr_id: p.recvs_posted as u64,
            sg_list: &[sge],
        };
        n.qp.post_recv(&[wr]).expect("post_recv");
        p.recvs_posted += 1;
    }
}

/// Posts `node`'s next operations while its window has room.
fn post_sends(sim: &mut Sim, node: usize, dir: &Direction, p: &mut Progress) {
    while p.posted < dir.ops.len() && p.posted - p.completed < WINDOW {
        let op = &dir.ops[p.posted];
        sim.post(node, |n, out| {
            let wr = SendWr {
                wr_id: op.wr_id,
                op: op.op,
                sg_list: &op.sges,
                signaled: true,
                solicited: false,
            };
            n.qp.post_send(&n.regions, &[wr], out).expect("post_send");
        });
        p.posted += 1;
    }
}

/// Checks every new completion of `node` against the verbs rules: send
/// completions in posting order, successful, with the right opcode and
/// length (and atomic result); receive completions in the peer's SEND
/// order with the right data.
fn check_completions(
    sim: &Sim,
    node: usize,
    dirs: &[Direction; 2],
    progress: &mut [Progress; 2],
) -> Result<(), String> {
    let n = &sim.nodes[node];
    for wc in n.completions() {
        let recv = matches!(wc.opcode, WcOpcode::Recv | WcOpcode::RecvRdmaWithImm);
        if recv {
            check_recv(n, &wc, &dirs[1 - node], &mut progress[node])?;
        } else {
            check_send(n, &wc, &dirs[node], &mut progress[node])?;
        }
    }
    Ok(())
}

fn check_send(
    n: &Node,
    wc: &WorkCompletion,
    dir: &Direction,
    p: &mut Progress,
) -> Result<(), String> {
    let Some(op) = dir.ops.get(p.completed) else {
        return Err(format!("node {:#x}: extra completion {wc:?}", n.qp.qpn));
    };
    let fine = wc.wr_id == op.wr_id
        && wc.status == WcStatus::Success
        && wc.opcode == op.opcode
        && wc.byte_len == op.byte_len;
    if !fine {
        return Err(format!("completion {wc:?} for {op:?}"));
    }
    if let Some((slot, old)) = op.atomic_result {
        let got = u64::from_ne_bytes(n.bytes(slot, 8).try_into().unwrap());
        if got != old {
            return Err(format!("atomic {op:?} returned {got}, not {old}"));
        }
    }
    p.completed += 1;
    Ok(())
}

fn check_recv(
    n: &Node,
    wc: &WorkCompletion,
    peer: &Direction,
    p: &mut Progress,
) -> Result<(), String> {
    let Some(want) = peer.recvs.get(p.recvs_done) else {
        return Err(format!("extra receive completion {wc:?}"));
    };
    let fine = wc.wr_id == p.recvs_done as u64
        && wc.status == WcStatus::Success
        && wc.opcode == want.opcode
        && wc.byte_len == want.byte_len
        && wc.imm_data == want.imm;
    if !fine {
        return Err(format!("receive {wc:?}, expected {want:?}"));
    }
    if let Some(data) = &want.data {
        let slot = RECV.start + p.recvs_done * RECV_SLOT;
        if n.bytes(slot, data.len()) != &data[..] {
            return Err(format!("receive {} holds the wrong bytes", p.recvs_done));
        }
    }
    p.recvs_done += 1;
    Ok(())
}

/// The final memory of both ends against the shadows.
fn check_memory(sim: &Sim, dirs: &[Direction; 2]) -> Result<(), String> {
    for (i, dir) in dirs.iter().enumerate() {
        let (me, peer) = (&sim.nodes[i], &sim.nodes[1 - i]);
        if let Some(at) = first_difference(peer.bytes(IN.start, IN.len()), &dir.peer_in) {
            return Err(format!("node {}'s IN differs at {at:#x}", 1 - i));
        }
        if let Some(at) = first_difference(me.bytes(READ_BUF.start, READ_BUF.len()), &dir.read_buf)
        {
            return Err(format!("node {i}'s READ_BUF differs at {at:#x}"));
        }
        let counter = u64::from_ne_bytes(peer.bytes(COUNTER, 8).try_into().unwrap());
        if counter != dir.counter {
            return Err(format!(
                "counter of node {} is {counter}, not {}",
                1 - i,
                dir.counter
            ));
        }
    }
    Ok(())
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}
