//! Which packets ask for an acknowledgement (the BTH's AckReq). A program
//! posts as applications do; what the requester sends is parsed and its
//! asks listed as PSN offsets from the first packet sent. Answers are
//! built by hand and handed to node 0 of a [`Sim`].

use super::{Schedule, Sim};
use crate::rc::psn::{psn_add, psn_diff};
use crate::rc::{MAX_UNACKED_PSNS, Outbox};
use crate::wire::{Opcode, PacketRepr, Syndrome};

/// The packets of one send: their PSNs and whether each asks.
struct Sent(Vec<(u32, bool)>);

impl Sent {
    fn of(out: &mut Outbox) -> Sent {
        Sent(
            out.packets_mut()
                .map(|(_, _, b)| {
                    let bth = PacketRepr::parse(b).unwrap().bth;
                    (bth.psn, bth.ack_req)
                })
                .collect(),
        )
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn first(&self) -> u32 {
        self.0[0].0
    }

    /// The offsets from `base` of the packets that ask.
    fn asks_from(&self, base: u32) -> Vec<i32> {
        self.0
            .iter()
            .filter(|(_, ask)| *ask)
            .map(|(psn, _)| psn_diff(*psn, base))
            .collect()
    }

    /// The offsets from the first packet of those that ask.
    fn asks(&self) -> Vec<i32> {
        self.asks_from(self.first())
    }
}

/// Posts `count` signaled RDMA WRITEs of `len` bytes from node 0 as one
/// post; returns what the requester sent.
fn post(sim: &Sim, count: usize, len: usize) -> Sent {
    Sent::of(&mut post_out(sim, count, len))
}

/// [`post`], returning the requester's outbox itself.
fn post_out(sim: &Sim, count: usize, len: usize) -> Outbox {
    sim.post_writes(0, count, len, true)
}

/// Hands node 0 the ACK of `psn`; returns what it sent in reply.
fn ack(sim: &Sim, psn: u32) -> Sent {
    let ack = Some(Syndrome::Ack { credits: 31 });
    Sent::of(&mut sim.answer(Opcode::RC_ACKNOWLEDGE, psn, ack, &[]))
}

#[test]
fn a_program_that_keeps_n_requests_posted_is_answered_after_half_of_them() {
    for n in [2, 16, 64, 100, 128] {
        let sim = Sim::new(20, 1024, 1 << 16, Schedule::clean());
        let sent = post(&sim, n, 64);
        assert_eq!(sent.len(), n);
        // Half of what is outstanding, then the last request queued.
        let half = n as i32 / 2;
        let want: Vec<i32> = (1..)
            .map(|k| k * half - 1)
            .take_while(|&k| k < n as i32 - 1)
            .chain([n as i32 - 1])
            .collect();
        assert_eq!(sent.asks(), want, "{n} posted together");
    }
}

#[test]
fn a_request_posted_with_nothing_outstanding_asks() {
    // A ping-pong's request, and each of a program that waits for every
    // completion before posting the next.
    let sim = Sim::new(21, 1024, 1 << 16, Schedule::clean());
    for _ in 0..3 {
        let sent = post(&sim, 1, 64);
        assert_eq!(sent.asks(), [0]);
        let answered = ack(&sim, sent.first());
        assert_eq!(answered.len(), 0);
    }
}

#[test]
fn large_packets_ask_every_128_kib_and_a_long_message_at_most_every_64_packets() {
    // 4 KiB packets: a quarter of the window, 32 packets, is 128 KiB.
    let sim = Sim::new(22, 4096, 1 << 20, Schedule::clean());
    let sent = post(&sim, 1, 64 * 4096);
    assert_eq!(sent.asks(), [31, 63]);
    // 1 KiB packets: 128 KiB would be the whole window; 64 packets are
    // the most between asks (rxe's RXE_MAX_PKT_PER_ACK), here also half
    // of what is outstanding.
    let sim = Sim::new(23, 1024, 1 << 20, Schedule::clean());
    let sent = post(&sim, 1, 128 * 1024);
    assert_eq!(sent.asks(), [63, 127]);
}

#[test]
fn a_full_window_always_holds_an_ask_whose_answer_runs_the_requester() {
    let sim = Sim::new(24, 1024, 1 << 16, Schedule::clean());
    let window = MAX_UNACKED_PSNS;
    let posted = 3 * window as usize;
    let sent = post(&sim, posted, 64);
    assert_eq!(sent.len(), window as usize, "the window's worth");
    let first = sent.first();
    // Requests stay queued behind the window: half of the window apart.
    assert_eq!(sent.asks(), [63, 127]);
    // Answering the first ask frees half the window, more than the
    // quarter (RESUME_FREE_PSNS) that runs the requester: it sends again,
    // and asks within what it sends.
    let more = ack(&sim, psn_add(first, 63));
    assert_eq!(more.len(), 64);
    assert_eq!(more.asks_from(first), [191]);
    // And so on until the queue runs dry: its last request asks.
    let mut at = psn_add(first, 127);
    let mut total = sent.len() + more.len();
    while total < posted {
        let next = ack(&sim, at);
        assert!(next.len() > 0, "an answer to an ask ran the requester");
        let asks = next.asks_from(first);
        assert!(!asks.is_empty(), "{total} sent, and no ask among the next");
        total += next.len();
        at = psn_add(first, *asks.last().unwrap() as u32);
    }
    assert_eq!(total, posted);
    assert_eq!(
        psn_diff(at, first),
        posted as i32 - 1,
        "the last request queued asks"
    );
}

/// The packets of `out`, re-emitted with the AckReq bit only where
/// `asks(k)` holds for the `k`th.
fn with_asks(out: &mut Outbox, asks: impl Fn(usize) -> bool) -> Vec<Vec<u8>> {
    out.packets_mut()
        .enumerate()
        .map(|(k, (_, _, b))| {
            let mut h = PacketRepr::parse(b).unwrap();
            h.bth.ack_req = asks(k);
            let mut bytes = vec![0u8; h.len().unwrap()];
            h.emit(&mut bytes).unwrap();
            bytes
        })
        .collect()
}

/// The PSNs of the ACKs in `out`.
fn ack_psns(out: &mut Outbox) -> Vec<u32> {
    out.packets_mut()
        .map(|(_, _, b)| PacketRepr::parse(b).unwrap())
        .filter(|p| p.bth.opcode == Opcode::RC_ACKNOWLEDGE)
        .map(|p| p.bth.psn)
        .collect()
}

#[test]
fn an_acknowledgement_not_yet_sent_covers_what_was_handled_after_the_ask() {
    let sim = Sim::new(25, 1024, 1 << 16, Schedule::clean());
    let mut sent = post_out(&sim, 8, 64);
    let first = Sent::of(&mut sent).first();
    // Only the first of a run of eight asks: the ACK it queued is brought
    // up to the last one handled, so that it acknowledges all eight.
    let bytes = with_asks(&mut sent, |k| k == 0);
    let run: Vec<PacketRepr<'_>> = bytes
        .iter()
        .map(|b| PacketRepr::parse(b).unwrap())
        .collect();
    let mut answer = sim.request_run(&run);
    assert_eq!(ack_psns(&mut answer), [psn_add(first, 7)]);
    // Packets that do not ask, with no ACK queued, queue none.
    let mut sent = post_out(&sim, 4, 64);
    let bytes = with_asks(&mut sent, |_| false);
    let run: Vec<PacketRepr<'_>> = bytes
        .iter()
        .map(|b| PacketRepr::parse(b).unwrap())
        .collect();
    let mut answer = sim.request_run(&run);
    assert_eq!(ack_psns(&mut answer), []);
}
