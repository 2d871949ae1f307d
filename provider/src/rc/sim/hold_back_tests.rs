//! When the requester sends. Requests posted one at a time while a
//! response is due wait for the requester's next run (doorbell batching):
//! signaled ones while many PSNs are unacknowledged, unsignaled ones while
//! any is. A full window reopened by responses sends again once a quarter
//! of it is free. The programs are the application itself, posting as
//! perftest does; answers are built by hand and handed to one end of a
//! [`Sim`], and what the requester sends is counted.

use super::{Schedule, Sim};
use crate::rc::psn::psn_add;
use crate::rc::{
    HOLD_BACK_MAX, HOLD_BACK_UNACKED, MAX_UNACKED_PSNS, Outbox, RESUME_FREE_PSNS, WcStatus,
};
use crate::wire::{Opcode, PacketRepr, Syndrome};

const MTU: usize = 1024;
/// Bytes per WRITE: one packet each.
const LEN: usize = 64;

/// Posts `count` signaled one-packet WRITEs from node 0, as one post;
/// returns the PSNs of the packets sent.
fn post(sim: &Sim, first_wr_id: u64, count: usize) -> Vec<u32> {
    post_as(sim, first_wr_id, count, true)
}

/// [`post`] of unsignaled WRITEs.
fn post_unsignaled(sim: &Sim, first_wr_id: u64, count: usize) -> Vec<u32> {
    post_as(sim, first_wr_id, count, false)
}

fn post_as(sim: &Sim, first_wr_id: u64, count: usize, signaled: bool) -> Vec<u32> {
    psns(&mut sim.post_writes(first_wr_id, count, LEN, signaled))
}

fn psns(out: &mut Outbox) -> Vec<u32> {
    out.packets_mut()
        .map(|(_, _, b)| PacketRepr::parse(b).unwrap().bth.psn)
        .collect()
}

/// Posts WRITEs one at a time until [`HOLD_BACK_UNACKED`] are out
/// unacknowledged; returns the first one's PSN.
fn fill(sim: &Sim) -> u32 {
    let mut first = None;
    for i in 0..HOLD_BACK_UNACKED as u64 {
        let sent = post(sim, i, 1);
        assert_eq!(sent.len(), 1, "post {i} of the first {HOLD_BACK_UNACKED}");
        first.get_or_insert(sent[0]);
    }
    first.unwrap()
}

/// Hands node 0 the ACK of `psn` from node 1; returns the PSNs it sent in
/// reply.
fn ack(sim: &Sim, psn: u32) -> Vec<u32> {
    let ack = Some(Syndrome::Ack { credits: 31 });
    psns(&mut sim.answer(Opcode::RC_ACKNOWLEDGE, psn, ack, &[]))
}

fn consecutive(first: u32, count: u32) -> Vec<u32> {
    (0..count).map(|k| psn_add(first, k)).collect()
}

#[test]
fn a_request_posted_alone_waits_for_the_next_answer_and_then_leaves_in_order() {
    let sim = Sim::new(1, MTU, 1 << 16, Schedule::clean());
    let first = fill(&sim);
    let unacked = HOLD_BACK_UNACKED as u32;
    assert_eq!(post(&sim, 100, 1), [], "held back");
    assert_eq!(post(&sim, 101, 1), [], "held back");
    // The first WRITE's ACK runs the requester: both leave, after the
    // others, in posting order.
    assert_eq!(ack(&sim, first), consecutive(psn_add(first, unacked), 2));
    assert_eq!(ack(&sim, psn_add(first, unacked + 1)), []);
    let wcs = sim.nodes[0].completions();
    let ids: Vec<u64> = wcs.iter().map(|wc| wc.wr_id).collect();
    let mut want: Vec<u64> = (0..HOLD_BACK_UNACKED as u64).collect();
    want.extend([100, 101]);
    assert_eq!(ids, want);
    assert!(wcs.iter().all(|wc| wc.status == WcStatus::Success));
}

#[test]
fn fewer_unacknowledged_psns_or_a_post_of_several_leave_at_once() {
    let sim = Sim::new(2, MTU, 1 << 16, Schedule::clean());
    for i in 0..HOLD_BACK_UNACKED as u64 - 1 {
        assert_eq!(post(&sim, i, 1).len(), 1);
    }
    // The sixteenth of a ping-pong's in-flight count is never reached
    // there; here it is, and a post of two is the program's own batch.
    assert_eq!(post(&sim, 50, 1).len(), 1);
    assert_eq!(post(&sim, 60, 2).len(), 2);
    assert_eq!(post(&sim, 70, 1), []);
}

#[test]
fn the_post_that_would_hold_back_one_too_many_sends_them_all() {
    let sim = Sim::new(3, MTU, 1 << 16, Schedule::clean());
    let first = fill(&sim);
    for i in 0..HOLD_BACK_MAX as u64 {
        assert_eq!(post(&sim, 100 + i, 1), [], "waiting request {i}");
    }
    let unacked = HOLD_BACK_UNACKED as u32;
    let burst = HOLD_BACK_MAX as u32 + 1;
    assert_eq!(
        post(&sim, 200, 1),
        consecutive(psn_add(first, unacked), burst)
    );
}

#[test]
fn a_held_request_leaves_with_the_go_back_when_every_answer_is_lost() {
    let mut sim = Sim::new(4, MTU, 1 << 16, Schedule::clean());
    fill(&sim);
    assert_eq!(post(&sim, 100, 1), []);
    // No answer comes: the retransmit timer fires and everything
    // unacknowledged goes again, the held request with it.
    let before = sim.stats.data_sent;
    assert!(sim.step(), "the retransmit timer is armed");
    assert_eq!(
        sim.stats.data_sent - before,
        HOLD_BACK_UNACKED as u64 + 1,
        "the go-back and the held request"
    );
}

#[test]
fn without_a_retransmit_timer_nothing_is_held_back() {
    // A lost answer would then leave a held request waiting forever.
    let sim = Sim::with_timeout(5, MTU, 1 << 16, Schedule::clean(), 0);
    fill(&sim);
    assert_eq!(post(&sim, 100, 1).len(), 1);
}

#[test]
fn an_unsignaled_request_waits_while_any_psn_is_unacknowledged() {
    let sim = Sim::new(6, MTU, 1 << 16, Schedule::clean());
    let first = post(&sim, 0, 1)[0];
    assert_eq!(post_unsignaled(&sim, 1, 1), [], "held back");
    assert_eq!(post_unsignaled(&sim, 2, 1), [], "held back");
    assert_eq!(ack(&sim, first), consecutive(psn_add(first, 1), 2));
    assert_eq!(ack(&sim, psn_add(first, 2)), []);
    let wcs = sim.nodes[0].completions();
    assert_eq!(wcs.len(), 1, "only the signaled request completes visibly");
    assert_eq!((wcs[0].wr_id, wcs[0].status), (0, WcStatus::Success));
}

#[test]
fn an_unsignaled_request_leaves_at_once_when_everything_is_acknowledged() {
    let sim = Sim::new(7, MTU, 1 << 16, Schedule::clean());
    let first = post_unsignaled(&sim, 0, 1);
    assert_eq!(first.len(), 1, "nothing was unacknowledged");
    assert_eq!(ack(&sim, first[0]), []);
    assert_eq!(post_unsignaled(&sim, 1, 1).len(), 1, "nor is anything now");
}

#[test]
fn a_signaled_post_sends_the_unsignaled_requests_held_before_it() {
    // A program that posts unsignaled requests and then the signaled one
    // whose completion it waits for: the wait never includes a hold.
    let sim = Sim::new(8, MTU, 1 << 16, Schedule::clean());
    let first = post(&sim, 0, 1)[0];
    for i in 1..4 {
        assert_eq!(post_unsignaled(&sim, i, 1), [], "held back");
    }
    assert_eq!(post(&sim, 4, 1), consecutive(psn_add(first, 1), 4));
    assert_eq!(ack(&sim, psn_add(first, 4)), []);
    let ids: Vec<u64> = sim.nodes[0]
        .completions()
        .iter()
        .map(|wc| wc.wr_id)
        .collect();
    assert_eq!(ids, [0, 4]);
}

#[test]
fn held_unsignaled_requests_leave_with_the_go_back_when_every_answer_is_lost() {
    let mut sim = Sim::new(9, MTU, 1 << 16, Schedule::clean());
    post(&sim, 0, 1);
    assert_eq!(post_unsignaled(&sim, 1, 1), []);
    let before = sim.stats.data_sent;
    assert!(sim.step(), "the retransmit timer is armed");
    assert_eq!(
        sim.stats.data_sent - before,
        2,
        "the go-back and the held request"
    );
}

#[test]
fn a_full_window_sends_again_once_a_quarter_of_it_is_free() {
    let sim = Sim::new(10, MTU, 1 << 16, Schedule::clean());
    let (window, resume) = (MAX_UNACKED_PSNS as u32, RESUME_FREE_PSNS as u32);
    let sent = post(&sim, 0, (window + resume) as usize);
    assert_eq!(sent.len(), window as usize, "the window's worth");
    let first = sent[0];
    // Acknowledgements that free less than a quarter send nothing.
    assert_eq!(ack(&sim, psn_add(first, 7)), []);
    assert_eq!(ack(&sim, psn_add(first, resume - 2)), []);
    // The one that frees a quarter sends a quarter's worth, in order.
    assert_eq!(
        ack(&sim, psn_add(first, resume - 1)),
        consecutive(psn_add(first, window), resume)
    );
    assert_eq!(ack(&sim, psn_add(first, window + resume - 1)), []);
    let ids: Vec<u64> = sim.nodes[0]
        .completions()
        .iter()
        .map(|wc| wc.wr_id)
        .collect();
    assert_eq!(ids, (0..u64::from(window + resume)).collect::<Vec<_>>());
}
