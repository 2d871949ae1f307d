//! The requester's go-backs, packet by packet: answers are built by hand
//! and handed to one end of a [`Sim`] (nothing goes over its link), and
//! what the requester sends back is counted.

use super::{Node, Schedule, Sim};
use crate::rc::Outbox;
use crate::rc::psn::psn_add;
use crate::rc::{SendOp, SendWr, Sge, WcOpcode, WcStatus};
use crate::wire::{NakCode, Opcode, Syndrome};

const MTU: usize = 1024;

/// Posts `op` over `len` bytes at offset 0 of node 0's memory, targeting
/// node 1's memory at 0; returns the packets it sent.
fn post(sim: &Sim, wr_id: u64, op: SendOp, len: usize) -> usize {
    post_at(sim, wr_id, op, 0, len)
}

/// As [`post`], over `len` bytes at `offset` of node 0's memory.
fn post_at(sim: &Sim, wr_id: u64, op: SendOp, offset: usize, len: usize) -> usize {
    let n: &Node = &sim.nodes[0];
    let sge = Sge {
        addr: (n.mem.addr() + offset) as u64,
        length: len as u32,
        lkey: n.key,
    };
    let wr = SendWr {
        wr_id,
        op,
        sg_list: &[sge],
        signaled: true,
        solicited: false,
    };
    let mut out = Outbox::default();
    n.qp.post_send(&n.regions, &[wr], &mut out).unwrap();
    out.len()
}

/// Hands node 0 an answer from node 1 (see [`Sim::answer`]); returns how
/// many packets node 0 sent in reply.
fn answer(sim: &Sim, opcode: Opcode, psn: u32, aeth: Option<Syndrome>, payload: &[u8]) -> usize {
    sim.answer(opcode, psn, aeth, payload).len()
}

fn write(sim: &Sim) -> SendOp {
    SendOp::Write {
        remote_addr: sim.nodes[1].mem.addr() as u64,
        rkey: sim.nodes[1].key,
    }
}

fn first_psn(sim: &Sim, index: usize) -> u32 {
    sim.nodes[0]
        .qp
        .lock()
        .req
        .wqe(index)
        .expect("a queued request")
        .first_psn
}

const ACK: Option<Syndrome> = Some(Syndrome::Ack { credits: 31 });

#[test]
fn a_duplicated_nak_does_not_start_a_second_go_back() {
    let sim = Sim::new(1, MTU, 1 << 16, Schedule::clean());
    assert_eq!(post(&sim, 1, write(&sim), 8 * MTU), 8);
    let psn = first_psn(&sim, 0);
    let nak = Some(Syndrome::Nak(NakCode::PsnSequenceError));
    let ack =
        |k: u32, syndrome| answer(&sim, Opcode::RC_ACKNOWLEDGE, psn_add(psn, k), syndrome, &[]);
    // The NAK of the fourth packet: the last five are sent again, once.
    assert_eq!(ack(3, nak), 5);
    assert_eq!(ack(3, nak), 0);
    // Progress, then a NAK of a later gap: a go-back again.
    assert_eq!(ack(4, ACK), 0);
    assert_eq!(ack(6, nak), 2);
    assert_eq!(ack(7, ACK), 0);
    let wcs = sim.nodes[0].completions();
    assert_eq!(wcs.len(), 1);
    assert_eq!((wcs[0].wr_id, wcs[0].status), (1, WcStatus::Success));
}

#[test]
fn acks_past_a_lost_read_response_ask_for_the_read_alone_once() {
    let sim = Sim::new(2, MTU, 1 << 16, Schedule::clean());
    let read = SendOp::Read {
        remote_addr: sim.nodes[1].mem.addr() as u64,
        rkey: sim.nodes[1].key,
    };
    assert_eq!(post(&sim, 1, read, 16), 1);
    for wr_id in 2..6 {
        assert_eq!(post(&sim, wr_id, write(&sim), 16), 1);
    }
    let read_psn = first_psn(&sim, 0);
    // The READ's response is lost; the ACK of the last WRITE arrives (the
    // device coalesces ACKs), twice, then late ones of the others. The
    // first asks for the READ again, and only for it: the WRITEs arrived.
    let sent: Vec<usize> = [4, 4, 1, 2, 3]
        .map(|k| answer(&sim, Opcode::RC_ACKNOWLEDGE, psn_add(read_psn, k), ACK, &[]))
        .to_vec();
    assert_eq!(sent, [1, 0, 0, 0, 0]);
    assert!(
        sim.nodes[0].completions().is_empty(),
        "a READ is unanswered"
    );
    // The READ's answer completes it and the WRITEs behind it, in order.
    let data = [7u8; 16];
    let only = Opcode::RC_RDMA_READ_RESPONSE_ONLY;
    assert_eq!(answer(&sim, only, read_psn, ACK, &data), 0);
    let wcs = sim.nodes[0].completions();
    let got: Vec<(u64, WcStatus, WcOpcode)> =
        wcs.iter().map(|w| (w.wr_id, w.status, w.opcode)).collect();
    let mut want = vec![(1, WcStatus::Success, WcOpcode::RdmaRead)];
    want.extend((2..6).map(|i| (i, WcStatus::Success, WcOpcode::RdmaWrite)));
    assert_eq!(got, want);
    assert_eq!(sim.nodes[0].bytes(0, 16), data);
}

#[test]
fn requests_acknowledged_by_a_failing_read_response_complete_before_it() {
    const MEM: usize = 1 << 16;
    let sim = Sim::new(3, MTU, MEM, Schedule::clean());
    assert_eq!(post(&sim, 1, write(&sim), 16), 1);
    let read = SendOp::Read {
        remote_addr: sim.nodes[1].mem.addr() as u64,
        rkey: sim.nodes[1].key,
    };
    // The READ's destination runs past the end of the local region.
    assert_eq!(post_at(&sim, 2, read, MEM - 8, 16), 1);
    let write_psn = first_psn(&sim, 0);
    // The WRITE's ACK is lost; the READ's response acknowledges it, then
    // cannot be scattered: the WRITE completes, then the READ fails.
    let only = Opcode::RC_RDMA_READ_RESPONSE_ONLY;
    answer(&sim, only, psn_add(write_psn, 1), ACK, &[7u8; 16]);
    let got: Vec<(u64, WcStatus)> = sim.nodes[0]
        .completions()
        .iter()
        .map(|w| (w.wr_id, w.status))
        .collect();
    assert_eq!(
        got,
        [(1, WcStatus::Success), (2, WcStatus::LocalProtectionError)]
    );
}
