//! The requester (rxe's `rxe_req.c`): the send queue's state, and the
//! methods through which the completer moves it. Its steps live in
//! [`send`] (`rxe_requester`: `req_next_wqe`, the window and
//! `check_init_depth` limits, `update_wqe_psn`, `next_opcode`,
//! `init_req_packet`, `finish_packet`, `update_state`) and [`retry`]
//! (`req_retry`, `rnr_nak_timer`, `retransmit_timer`). Go-back-N: a
//! timeout or a response asking for it moves the transmit position back
//! to the oldest PSN the responder may lack.
//!
//! The fields are private to this module and its steps: the completer
//! changes the send queue only through the methods below.

mod retry;
mod send;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::clock::Clock;
use super::psn::{psn_add, psn_diff, retransmit_timeout};
use super::qp::QpAttrs;
use super::sge::Sges;
use super::{SendOp, WcOpcode, WcStatus};

/// PSNs the requester may have outstanding (rxe's `RXE_MAX_UNACKED_PSNS`).
pub(crate) const MAX_UNACKED_PSNS: i32 = 128;
/// Free PSNs of the window from which a response runs the requester again
/// (a quarter of it; see `Requester::resumes_on_response`).
pub(crate) const RESUME_FREE_PSNS: i32 = 32;
/// Response PSNs one READ request asks for: a longer READ goes out as
/// several requests, one per segment, each sent when the window has room.
/// The responder then never answers more than the window at once, so READ
/// responses are paced like WRITEs instead of overrunning the requester's
/// receive buffer (a lost response costs a go-back).
pub(crate) const READ_SEGMENT_PSNS: u32 = 64;

/// The PSN offset (from a READ's first) where the segment holding offset
/// `k` ends, for a READ of `npsn` response PSNs.
pub(crate) fn read_segment_end(k: u32, npsn: u32) -> u32 {
    ((k / READ_SEGMENT_PSNS + 1) * READ_SEGMENT_PSNS).min(npsn)
}
/// Packets at most between acknowledgement requests (rxe's
/// `RXE_MAX_PKT_PER_ACK`).
const MAX_PKTS_PER_ACK: u32 = 64;
/// Payload bytes at most between acknowledgement requests: a quarter of
/// the window of 4 KiB packets, where a response costs little next to the
/// bytes it lets go (see `Requester::ack_req`).
const MAX_BYTES_PER_ACK: usize = 128 << 10;
/// Unacknowledged PSNs from which a signaled request posted alone may
/// wait for the requester's next run (see `Requester::may_hold_back`): a
/// ping-pong has fewer in flight, so its posts always leave at once.
pub(crate) const HOLD_BACK_UNACKED: i32 = 16;
/// Requests at most that wait for the requester's next run: the post that
/// would make one more sends them all.
pub(crate) const HOLD_BACK_MAX: usize = 32;

/// A posted send work request.
pub(crate) struct SendWqe {
    pub(crate) wr_id: u64,
    pub(crate) op: SendOp,
    pub(crate) sges: Sges,
    pub(crate) signaled: bool,
    /// Local bytes (payload, or read/atomic destination).
    pub(crate) len: u32,
    /// Whether PSNs have been assigned.
    pub(crate) started: bool,
    pub(crate) first_psn: u32,
    /// PSNs the request uses (a READ uses one per response packet).
    pub(crate) npsn: u32,
    /// All its packets are out (in the current pass).
    pub(crate) transmitted: bool,
    /// READ: response bytes received in order.
    pub(crate) read_done: u32,
    /// READ: the PSN from which the rest was last asked for again after a
    /// gap in the responses (asked once per gap).
    pub(crate) reread_from: Option<u32>,
    /// Finished, with this status.
    pub(crate) done: Option<WcStatus>,
}

impl SendWqe {
    pub(crate) fn opcode(&self) -> WcOpcode {
        match self.op {
            SendOp::Send | SendOp::SendWithImm { .. } => WcOpcode::Send,
            SendOp::Write { .. } | SendOp::WriteWithImm { .. } => WcOpcode::RdmaWrite,
            SendOp::Read { .. } => WcOpcode::RdmaRead,
            SendOp::CompareSwap { .. } => WcOpcode::CompareSwap,
            SendOp::FetchAdd { .. } => WcOpcode::FetchAdd,
        }
    }

    pub(crate) fn is_read_or_atomic(&self) -> bool {
        matches!(
            self.op,
            SendOp::Read { .. } | SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. }
        )
    }

    /// The PSN after the request's last.
    pub(crate) fn end_psn(&self) -> u32 {
        psn_add(self.first_psn, self.npsn)
    }

    /// READ: the PSN of the next response expected in order.
    pub(crate) fn next_read_psn(&self, mtu: usize) -> u32 {
        psn_add(self.first_psn, self.read_done / mtu as u32)
    }
}

/// The send side of a queue pair.
#[derive(Default)]
pub(crate) struct Requester {
    sq: VecDeque<SendWqe>,
    /// Index in `sq` of the first request not fully transmitted.
    cursor: usize,
    /// The PSN of the next packet to transmit.
    next_psn: u32,
    /// The oldest PSN not yet acknowledged or answered.
    oldest_unacked: u32,
    /// The responder has every request packet before this PSN (see
    /// [`Self::received_to`]).
    received: u32,
    /// READs and atomics transmitted and not finished.
    rd_atomic_out: u32,
    retries_left: u8,
    /// A response made the requester go back, and no response has made
    /// progress since (rxe's `comp.started_retry`): further responses
    /// asking for the same retransmission (a duplicated NAK, the ACKs of
    /// later requests overtaking a READ's or atomic's lost response, late
    /// packets of the first pass) do not start another go-back.
    retry_started: bool,
    rnr_left: u8,
    /// When the retransmit timer expires.
    timer: Option<Instant>,
    /// When an RNR wait ends.
    rnr_until: Option<Instant>,
    /// SEND and WRITE packets, and their payload bytes, since the last
    /// packet that asked for an acknowledgement.
    pkts_since_ack_req: u32,
    bytes_since_ack_req: usize,
    timeout: Option<Duration>,
    retry_cnt: u8,
    rnr_retry: u8,
    max_rd_atomic: u32,
    /// Where the timers read the time.
    clock: Clock,
}

impl Requester {
    /// The state of the send queue in one line, for test failures.
    #[cfg(test)]
    pub(crate) fn describe(&self) -> String {
        let sq: Vec<_> = self
            .sq
            .iter()
            .map(|w| {
                (
                    w.first_psn,
                    w.npsn,
                    w.started,
                    w.transmitted,
                    w.done,
                    w.read_done,
                )
            })
            .collect();
        format!(
            "cursor {} next {:#x} unacked {:#x} timer {} rnr {} rd_out {} sq (first, npsn, started, sent, done, read) {sq:?}",
            self.cursor,
            self.next_psn,
            self.oldest_unacked,
            self.timer.is_some(),
            self.rnr_until.is_some(),
            self.rd_atomic_out
        )
    }

    /// Makes the timers read `clock`.
    #[cfg(test)]
    pub(crate) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The request at `index` in the send queue.
    pub(crate) fn wqe(&self, index: usize) -> Option<&SendWqe> {
        self.sq.get(index)
    }

    /// Index in the send queue of the oldest request not finished.
    pub(crate) fn oldest_unfinished(&self) -> Option<usize> {
        self.sq.iter().position(|w| w.done.is_none())
    }

    /// Takes the oldest unfinished request out, as the failure the queue
    /// pair reports with `status` when it goes to the error state.
    pub(crate) fn take_failed(&mut self, status: WcStatus) -> Option<(u64, WcOpcode, WcStatus)> {
        let index = self.oldest_unfinished()?;
        self.sq.remove(index).map(|w| (w.wr_id, w.opcode(), status))
    }

    pub(crate) fn reset(&mut self, attrs: &QpAttrs) {
        self.next_psn = attrs.sq_psn;
        self.oldest_unacked = attrs.sq_psn;
        self.received = attrs.sq_psn;
        self.timeout = retransmit_timeout(attrs.timeout);
        self.retry_cnt = attrs.retry_cnt;
        self.rnr_retry = attrs.rnr_retry;
        self.retries_left = attrs.retry_cnt;
        self.rnr_left = attrs.rnr_retry;
        self.max_rd_atomic = u32::from(attrs.max_rd_atomic);
        self.retry_started = false;
    }

    /// The oldest PSN not yet acknowledged (or answered).
    pub(crate) fn oldest_unacked(&self) -> u32 {
        self.oldest_unacked
    }

    /// Notes that the responder has every request packet before `psn` (an
    /// ACK of `psn - 1`, a NAK of `psn`); never moves back, nor past the
    /// PSNs handed out (an answer to a PSN never sent says nothing).
    pub(crate) fn received_before(&mut self, psn: u32) {
        let assigned_end = self
            .sq
            .iter()
            .rev()
            .find(|w| w.started)
            .map_or(self.next_psn, SendWqe::end_psn);
        if psn_diff(psn, self.received) > 0 && psn_diff(psn, assigned_end) <= 0 {
            self.received = psn;
        }
    }

    /// The first PSN the responder may lack: requests before it arrived,
    /// though a READ's or atomic's response may still be missing. Never
    /// before the oldest unacknowledged PSN.
    pub(crate) fn received_to(&self) -> u32 {
        self.received
    }

    /// Moves the oldest unacknowledged PSN forward to `psn` (never back),
    /// and the received mark with it (READ responses alone may move it
    /// any distance; the two must stay within comparing range).
    pub(crate) fn acked_to(&mut self, psn: u32) {
        if psn_diff(psn, self.oldest_unacked) > 0 {
            self.oldest_unacked = psn;
        }
        if psn_diff(self.oldest_unacked, self.received) > 0 {
            self.received = self.oldest_unacked;
        }
    }

    /// Acknowledges every PSN up to `psn`: SENDs and RDMA WRITEs that end
    /// there are done, in order; the oldest unacknowledged PSN moves past
    /// `psn`, but not past a READ or atomic still waiting for its response.
    pub(crate) fn acknowledge_through(&mut self, psn: u32) {
        let mut limit = None;
        for w in self.sq.iter_mut() {
            if w.done.is_some() {
                continue;
            }
            // A request's PSNs are known once it started; an ACK at or past
            // its last one means every packet of it arrived, even if a
            // go-back is sending it again.
            if !w.started {
                break;
            }
            if w.is_read_or_atomic() {
                limit = Some(w.first_psn);
                break;
            }
            let last = psn_add(w.end_psn(), 0xff_ffff);
            if psn_diff(psn, last) < 0 {
                break;
            }
            w.done = Some(WcStatus::Success);
        }
        let next = psn_add(psn, 1);
        let to = match limit {
            Some(l) if psn_diff(next, l) > 0 => l,
            _ => next,
        };
        self.acked_to(to);
    }

    /// The first PSN of the oldest started, unfinished request if it is a
    /// READ or atomic that an ACK of `psn` has overtaken: its response was
    /// lost.
    pub(crate) fn overtaken_read_or_atomic(&self, psn: u32) -> Option<u32> {
        let w = self.sq.iter().find(|w| w.done.is_none() && w.started)?;
        (w.is_read_or_atomic() && psn_diff(psn, w.first_psn) >= 0).then_some(w.first_psn)
    }

    /// A READ response arrived past `expected`, the next in order: asks
    /// once per gap for the rest of the READ at `index`, from `expected`.
    pub(crate) fn reread_after_gap(&mut self, index: usize, expected: u32, mtu: usize) {
        let Some(w) = self.sq.get_mut(index) else {
            return;
        };
        if w.reread_from != Some(expected) {
            w.reread_from = Some(expected);
            self.retry(expected, mtu);
        }
    }

    /// The READ at `index` received `len` more response bytes in order.
    pub(crate) fn read_received(&mut self, index: usize, len: u32) {
        if let Some(w) = self.sq.get_mut(index) {
            w.read_done += len;
        }
    }

    /// The READ or atomic at `index` finished with `status`: it no longer
    /// counts against the outstanding-READ limit.
    pub(crate) fn finish_read_or_atomic(&mut self, index: usize, status: WcStatus) {
        if let Some(w) = self.sq.get_mut(index) {
            w.done = Some(status);
            self.rd_atomic_out = self.rd_atomic_out.saturating_sub(1);
        }
    }

    /// A response made progress (rxe's `reset_retry_counters`): the retry
    /// budget is full again, a later go-back may start, and the timer
    /// restarts.
    pub(crate) fn reset_retry_counters(&mut self) {
        self.retries_left = self.retry_cnt;
        self.retry_started = false;
        self.rearm();
    }

    /// Stops the retransmit timer when nothing transmitted is unfinished.
    pub(crate) fn stop_timer_if_idle(&mut self) {
        if self.sq.iter().all(|w| w.done.is_some() || !w.started) {
            self.timer = None;
        }
    }

    /// Takes the oldest request out if it finished: the completer reports
    /// it (rxe's `do_complete`).
    pub(crate) fn pop_finished(&mut self) -> Option<(SendWqe, WcStatus)> {
        let status = self.sq.front()?.done?;
        let w = self.sq.pop_front()?;
        if self.cursor == 0 {
            // It was being sent again (a go-back) when it finished: the
            // transmit position moves past it with the cursor.
            if psn_diff(self.next_psn, w.end_psn()) < 0 {
                self.next_psn = w.end_psn();
            }
        } else {
            self.cursor -= 1;
        }
        Some((w, status))
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        match (self.timer, self.rnr_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes every unfinished request out, for flushing.
    pub(crate) fn drain(&mut self) -> Vec<(u64, WcOpcode)> {
        self.cursor = 0;
        self.timer = None;
        self.rnr_until = None;
        self.sq
            .drain(..)
            .filter(|w| w.done.is_none())
            .map(|w| (w.wr_id, w.opcode()))
            .collect()
    }

    /// (Re)arms the retransmit timer while anything is outstanding.
    pub(crate) fn rearm(&mut self) {
        let outstanding = self.sq.iter().any(|w| w.started && w.done.is_none());
        self.timer = match (outstanding, self.timeout) {
            (true, Some(t)) => Some(self.clock.now() + t),
            _ => None,
        };
    }
}
