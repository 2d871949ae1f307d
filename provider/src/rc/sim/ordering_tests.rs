//! What the receiving application sees, and when: a received message's
//! completion shows only once the packets queued with it (its
//! acknowledgement) have been sent, so an application that answers at
//! once cannot send its answer ahead of that acknowledgement; and nothing
//! overtakes a completion waiting that way. (The peer in position here is
//! a correct one: perftest 4.5's event mode reads a send completion after
//! any event on the channel it shares between its queues, and fails when
//! the answer to its SEND arrives before the SEND's acknowledgement.)

use super::{Node, Schedule, Sim};
use crate::rc::{Outbox, RecvWr, SendOp, SendWr, Sge, WcOpcode, WcStatus, WorkCompletion};
use crate::wire::PacketRepr;

const MTU: usize = 1024;

fn sge(node: &Node, len: usize) -> Sge {
    Sge {
        addr: node.mem.addr() as u64,
        length: len as u32,
        lkey: node.key,
    }
}

/// Node 1 posts receives `wr_ids`; node 0 posts `op` over 64 bytes. Node
/// 1 receives node 0's packets into the returned outbox, which is not
/// sent yet.
fn deliver(sim: &Sim, wr_ids: &[u64], op: SendOp) -> Outbox {
    let (a, b) = (&sim.nodes[0], &sim.nodes[1]);
    let sges = [sge(b, 64)];
    let recvs: Vec<RecvWr<'_>> = wr_ids
        .iter()
        .map(|&wr_id| RecvWr {
            wr_id,
            sg_list: &sges,
        })
        .collect();
    b.qp.post_recv(&recvs).unwrap();
    let wr = SendWr {
        wr_id: 9,
        op,
        sg_list: &[sge(a, 64)],
        signaled: true,
        solicited: false,
    };
    let mut sent = Outbox::default();
    a.qp.post_send(&a.regions, &[wr], &mut sent).unwrap();
    let mut answers = Outbox::default();
    for (_, _, bytes) in sent.packets_mut() {
        let pkt = PacketRepr::parse(bytes).unwrap();
        b.qp.receive_run()
            .receive(&b.regions, a.addr.ip(), b.addr.ip(), &pkt, &mut answers)
            .unwrap();
    }
    answers
}

fn ids(wcs: &[WorkCompletion]) -> Vec<(u64, WcStatus, WcOpcode)> {
    wcs.iter().map(|w| (w.wr_id, w.status, w.opcode)).collect()
}

/// Node 1 receives `op` (on seed `seed`'s link): its completion, of
/// `opcode`, shows only once the outbox holding the ACK is emptied (the
/// device empties it after handing the ACK to the socket).
fn completes_only_after_its_ack(seed: u64, op: impl FnOnce(&Node) -> SendOp, opcode: WcOpcode) {
    let sim = Sim::new(seed, MTU, 1 << 16, Schedule::clean());
    let mut answers = deliver(&sim, &[1], op(&sim.nodes[1]));
    assert_eq!(answers.len(), 1, "the acknowledgement");
    assert!(
        sim.nodes[1].completions().is_empty(),
        "shown before its ACK left"
    );
    answers.clear();
    let want = [(1, WcStatus::Success, opcode)];
    assert_eq!(ids(&sim.nodes[1].completions()), want);
}

#[test]
fn a_received_send_completes_only_once_its_acknowledgement_was_sent() {
    completes_only_after_its_ack(1, |_| SendOp::Send, WcOpcode::Recv);
}

#[test]
fn a_write_with_immediate_completes_only_once_its_acknowledgement_was_sent() {
    let op = |b: &Node| SendOp::WriteWithImm {
        remote_addr: b.mem.addr() as u64,
        rkey: b.key,
        imm: 7,
    };
    completes_only_after_its_ack(2, op, WcOpcode::RecvRdmaWithImm);
}

#[test]
fn completions_added_behind_a_waiting_one_keep_their_order() {
    let sim = Sim::new(3, MTU, 1 << 16, Schedule::clean());
    let answers = deliver(&sim, &[1, 2], SendOp::Send);
    // The queue pair fails (as a timer in another thread may make it)
    // while the first receive's completion waits for its ACK: the flush
    // of the second must not show ahead of it.
    let b = &sim.nodes[1];
    b.qp.fail(&mut b.qp.lock(), None);
    assert!(b.completions().is_empty(), "the flush overtook");
    // An outbox dropped unsent shows what it held all the same.
    drop(answers);
    let want = [
        (1, WcStatus::Success, WcOpcode::Recv),
        (2, WcStatus::WrFlushError, WcOpcode::Recv),
    ];
    assert_eq!(ids(&b.completions()), want);
}

#[test]
fn held_acknowledgements_lead_only_once_they_cover_a_shown_completion() {
    let sim = Sim::new(4, MTU, 1 << 16, Schedule::clean());
    let b = &sim.nodes[1];
    // A polling thread holds back the ACK of a WRITE (nothing shown).
    let write = SendOp::Write {
        remote_addr: b.mem.addr() as u64,
        rkey: b.key,
    };
    let mut answers = deliver(&sim, &[], write);
    answers.reveal_completions();
    assert!(
        !answers.must_lead(),
        "nothing was shown: the next request may go first"
    );
    answers.clear();
    // Now the ACK of a SEND, whose completion the thread shows at once.
    let mut answers = deliver(&sim, &[1], SendOp::Send);
    answers.reveal_completions();
    assert_eq!(b.completions().len(), 1);
    assert!(
        answers.must_lead(),
        "the ACK of a shown completion must go first"
    );
    answers.clear();
    assert!(!answers.must_lead());
}
