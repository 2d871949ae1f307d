//! Who receives: an application thread that polls (`Context::progress`, a
//! completion-queue poll or wait) receives for its device in its own
//! thread, and the device's progress thread takes over whenever the
//! application stops. Each test checks that nothing waited for a
//! retransmission: the requester sent each packet exactly once.

mod common;

use std::time::{Duration, Instant};

use common::raw::{TARGET_PSN, Target, bth, packet, responses, seal, socket};
use common::{End, LOCALHOST, connect, pattern, send};
use provider::wire::{Opcode, PacketRepr, RethRepr, Syndrome};
use provider::{Mtu, RecvWr, SendOp, SendWr, WcStatus};

/// Two ends connected at MTU 1024 with `len` bytes each.
fn pair(len: usize) -> (End, End) {
    let (a, b) = (End::new(len, true), End::new(len, false));
    connect(&a, &b, Mtu::Mtu1024);
    (a, b)
}

fn write(from: &End, to: &End, len: usize) {
    let op = SendOp::Write {
        remote_addr: to.mr.addr(),
        rkey: to.mr.rkey(),
    };
    send(&from.qp, 1, op, from.mr.sge(0, len as u32));
}

/// Posts `messages` 64-byte WRITEs from `a` to consecutive places of `b`
/// in one call, only the last one signaled.
fn post_small_writes(a: &End, b: &End, messages: u64) {
    let sges: Vec<_> = (0..messages).map(|k| [a.mr.sge(k * 64, 64)]).collect();
    let wrs: Vec<SendWr<'_>> = sges
        .iter()
        .enumerate()
        .map(|(k, sge)| SendWr {
            wr_id: k as u64,
            op: SendOp::Write {
                remote_addr: b.mr.addr() + (k * 64) as u64,
                rkey: b.mr.rkey(),
            },
            sg_list: sge,
            signaled: k + 1 == messages as usize,
            solicited: false,
        })
        .collect();
    a.qp.post_send(&wrs).unwrap();
}

/// Calls `end`'s `progress` until `done` holds (at most 10 s).
fn progress_until(end: &End, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "no progress");
        if end.ctx.progress() == 0 {
            std::thread::yield_now();
        }
    }
}

#[test]
fn a_polling_thread_receives_and_the_acknowledgement_it_held_still_leaves() {
    let (a, b) = pair(4096);
    let data = pattern(64, 1);
    a.put(0, &data);
    write(&a, &b, data.len());
    // B's application receives the WRITE itself, holding the ACK back...
    progress_until(&b, || b.get(0, data.len()) == data);
    // ...then stops calling in: the ACK must leave all the same.
    assert_eq!(a.wait().status, WcStatus::Success);
    assert_eq!(a.ctx.stats().tx_packets, 1, "A retransmitted");
    assert_eq!(b.ctx.stats().tx_packets, 1, "B sent one ACK");
}

#[test]
fn a_spinning_completion_wait_holds_its_acknowledgement_and_it_still_leaves() {
    let (a, b) = pair(4096);
    b.qp.post_recv(&[RecvWr {
        wr_id: 7,
        sg_list: &[b.mr.sge(0, 64)],
    }])
    .unwrap();
    let data = pattern(64, 5);
    a.put(0, &data);
    send(&a.qp, 1, SendOp::Send, a.mr.sge(0, 64));
    // B's application receives the SEND in its own spinning wait, which
    // holds the ACK back for a post that would carry it...
    let wc = b.wait();
    assert_eq!((wc.wr_id, wc.status), (7, WcStatus::Success));
    assert_eq!(b.get(0, data.len()), data);
    // ...but posts nothing and stops calling in: the ACK must leave all
    // the same, before A's retransmission timer.
    assert_eq!(a.wait().status, WcStatus::Success);
    assert_eq!(a.ctx.stats().tx_packets, 1, "A retransmitted");
    assert_eq!(b.ctx.stats().tx_packets, 1, "B sent one ACK");
}

#[test]
fn the_progress_thread_takes_over_when_the_application_stops_polling() {
    let (a, b) = pair(4096);
    // B's application drives progress for a while with nothing to
    // receive, then stops; A's WRITE comes after.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(20) {
        b.ctx.progress();
    }
    let data = pattern(64, 2);
    a.put(0, &data);
    write(&a, &b, data.len());
    assert_eq!(a.wait().status, WcStatus::Success);
    assert_eq!(b.get(0, data.len()), data);
    assert_eq!(a.ctx.stats().tx_packets, 1, "A retransmitted");
}

#[test]
fn a_read_reply_goes_on_while_the_responders_application_polls() {
    // 4 MiB at MTU 1024: 4096 responses, many budgets of the reply, all
    // produced while B's application thread is the one receiving.
    let len = 4 << 20;
    let (a, b) = pair(len);
    let data = pattern(len, 3);
    b.put(0, &data);
    let op = SendOp::Read {
        remote_addr: b.mr.addr(),
        rkey: b.mr.rkey(),
    };
    send(&a.qp, 2, op, a.mr.sge(0, len as u32));
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                b.ctx.progress();
            }
        });
        let wc = a.wait();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(wc.status, WcStatus::Success);
    });
    assert!(a.get(0, len) == data, "READ data differ");
}

#[test]
fn completion_queue_polls_receive_for_their_device() {
    let (a, b) = pair(4096);
    let data = pattern(64, 4);
    a.put(0, &data);
    write(&a, &b, data.len());
    // A polls without waiting until its completion shows: the ACK is
    // received by these polls or by A's progress thread, never lost.
    let mut wc = [provider::WorkCompletion::default()];
    let start = Instant::now();
    while a.cq.poll(&mut wc) == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "no completion");
    }
    assert_eq!(wc[0].status, WcStatus::Success);
    assert_eq!(b.get(0, data.len()), data);
    assert_eq!(a.ctx.stats().tx_packets, 1, "A retransmitted");
}

#[test]
fn a_large_received_batch_is_answered_as_it_is_handled_not_only_at_its_end() {
    // The peer is a requester that asks for an acknowledgement in every
    // packet, as kernel rxe's does at every message's end: 128 64-byte
    // WRITEs (rxe's window), one datagram each.
    let sock = socket(LOCALHOST);
    let me = sock.local_addr().unwrap();
    let t = Target::new(me, 1 << 16, Mtu::Mtu1024);
    let dev = t.ctx.local_addr();
    // The target's application claims its socket (as a memory-polling
    // loop does), so that the requests pile up in the socket and are
    // handled in batches of up to 64 by its next calls instead of one by
    // one by its progress thread.
    t.ctx.progress();
    let messages: u32 = 128;
    for k in 0..messages {
        let psn = TARGET_PSN + k;
        let opcode = Opcode::RC_RDMA_WRITE_ONLY;
        let mut h = PacketRepr::new(bth(opcode, t.qp.qp_num(), psn, 64), &[7; 64]);
        h.reth = Some(RethRepr {
            va: t.mr.addr() + u64::from(k) * 64,
            rkey: t.mr.rkey(),
            len: 64,
        });
        sock.send_to(&seal(me, dev, packet(h)), dev).unwrap();
    }
    let start = Instant::now();
    while t.ctx.stats().rx_packets < u64::from(messages) {
        assert!(start.elapsed() < Duration::from_secs(10), "no progress");
        if t.ctx.progress() == 0 {
            std::thread::yield_now();
        }
    }
    // However the socket split them into batches, at least one answer
    // left per 32 packets handled (the peer's window slides while the
    // rest of a batch is handled); answers only at a batch's end would be
    // two.
    let acks = responses(&sock);
    assert!(
        acks.len() >= messages.div_ceil(32) as usize,
        "{} acknowledgements for {messages} packets",
        acks.len()
    );
    let ack = Syndrome::Ack { credits: 31 };
    assert!(acks.iter().all(|a| a.decode() == ack), "{acks:?}");
}

#[test]
fn a_post_of_a_window_of_writes_asks_twice_and_each_ask_is_answered() {
    let (a, b) = pair(1 << 20);
    b.ctx.progress();
    let messages: u64 = 128; // rxe's window of unacknowledged packets
    post_small_writes(&a, &b, messages);
    progress_until(&b, || b.ctx.stats().rx_packets == messages);
    assert_eq!(a.wait().status, WcStatus::Success);
    // The 64th packet asks (half of what was outstanding) and the last
    // (nothing queued behind it); B answers each as it handles it, not
    // both at once at its batch's end.
    assert_eq!(b.ctx.stats().tx_packets, 2, "B's acknowledgements");
    assert_eq!(a.ctx.stats().tx_packets, messages, "A retransmitted");
}

#[test]
fn a_gso_sends_later_segments_count_as_solved_ipv4_ids_once_their_batch_is_handled() {
    let (a, b) = pair(4096);
    // Eight equal WRITEs posted together leave in one GSO send: the kernel
    // numbers its segments' IPv4 IDs 0 to 7, so every segment but the first
    // matches its ICRC only with a solved ID. The batch counts them and
    // adds them to the device's counters when it is done, before its
    // acknowledgement leaves.
    let messages: u64 = 8;
    post_small_writes(&a, &b, messages);
    assert_eq!(a.wait().status, WcStatus::Success);
    let stats = b.ctx.stats();
    assert_eq!(stats.rx_packets, messages);
    assert_eq!(stats.rx_icrc_solved_ip_id, messages - 1);
}

#[test]
fn a_program_that_posts_one_request_at_a_time_and_polls_in_a_loop_sends_each_packet_once() {
    post_one_at_a_time_and_poll(1);
}

#[test]
fn a_program_that_signals_one_request_in_a_hundred_sends_each_packet_once() {
    post_one_at_a_time_and_poll(100);
}

/// perftest's pattern: single posts while up to 128 are outstanding,
/// every `signal_every`th signaled (perftest's `cq_mod`, 100 by default),
/// completion-queue polls in a loop. Posts made while PSNs are
/// unacknowledged (16 or more, for a signaled one) wait for the next
/// response, which sends them: none may be lost, reordered, or left for
/// the retransmit timer.
fn post_one_at_a_time_and_poll(signal_every: u64) {
    const SLOTS: u64 = 256;
    let (a, b) = pair((SLOTS * 64) as usize);
    let data = pattern((SLOTS * 64) as usize, 7);
    a.put(0, &data);
    let messages: u64 = 2000;
    let (mut posted, mut done) = (0u64, 0u64);
    let mut wc = [provider::WorkCompletion::default(); 16];
    let start = Instant::now();
    while done < messages {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "stalled at {done}"
        );
        while posted < messages && posted - done < 128 {
            let at = (posted % SLOTS) * 64;
            let wr = SendWr {
                wr_id: posted,
                op: SendOp::Write {
                    remote_addr: b.mr.addr() + at,
                    rkey: b.mr.rkey(),
                },
                sg_list: &[a.mr.sge(at, 64)],
                signaled: (posted + 1) % signal_every == 0,
                solicited: false,
            };
            a.qp.post_send(&[wr]).unwrap();
            posted += 1;
        }
        let n = a.cq.poll(&mut wc);
        for c in &wc[..n] {
            assert_eq!(c.status, WcStatus::Success);
            assert_eq!(
                c.wr_id,
                done + signal_every - 1,
                "completions in posting order"
            );
            done += signal_every;
        }
    }
    assert_eq!(b.get(0, data.len()), data);
    assert_eq!(a.ctx.stats().tx_packets, messages, "A retransmitted");
}
