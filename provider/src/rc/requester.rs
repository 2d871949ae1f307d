//! The requester: turns send work requests into packets, in PSN order,
//! within the window, and goes back to the oldest unacknowledged PSN when a
//! timer expires or the peer asks for it (go-back-N).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::clock::Clock;
use super::psn::{psn_add, psn_diff, retransmit_timeout, rnr_delay};
use super::qp::{QpAttrs, QpCore, QpState, QpStateKind, bad_state, bth, headers};
use super::sge::{self, SgeError, Sges};
use super::{Outbox, Regions};
use crate::verbs::{SendOp, SendWr, VerbsError, WcOpcode, WcStatus, WorkCompletion};
use crate::wire::{AtomicEthRepr, Opcode, RethRepr};

/// PSNs the requester may have outstanding (rxe's `RXE_MAX_UNACKED_PSNS`).
const MAX_UNACKED_PSNS: i32 = 128;
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
/// Packets between acknowledgement requests within one message.
const MAX_PKTS_PER_ACK: u32 = 64;

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
}

/// The send side of a queue pair.
#[derive(Default)]
pub(crate) struct Requester {
    pub(crate) sq: VecDeque<SendWqe>,
    /// Index in `sq` of the first request not fully transmitted.
    pub(crate) cursor: usize,
    pub(crate) next_psn: u32,
    /// The oldest PSN not yet acknowledged or answered.
    pub(crate) una: u32,
    /// The responder has every request packet before this PSN (see
    /// [`Self::received_to`]).
    received: u32,
    /// READs and atomics transmitted and not finished.
    pub(crate) rd_atomic_out: u32,
    pub(crate) retries_left: u8,
    /// A response made the requester go back, and no response has made
    /// progress since (rxe's `comp.started_retry`): further responses
    /// asking for the same retransmission (a duplicated NAK, the ACKs of
    /// later requests overtaking a READ's or atomic's lost response, late
    /// packets of the first pass) do not start another go-back.
    pub(crate) retry_started: bool,
    pub(crate) rnr_left: u8,
    pub(crate) timer: Option<Instant>,
    pub(crate) rnr_until: Option<Instant>,
    pkts_since_ack_req: u32,
    timeout: Option<Duration>,
    retry_cnt: u8,
    rnr_retry: u8,
    max_rd_atomic: u32,
    /// Where the timers read the time.
    pub(crate) clock: Clock,
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
            "cursor {} next {:#x} una {:#x} timer {} rnr {} rd_out {} sq (first, npsn, started, sent, done, read) {sq:?}",
            self.cursor,
            self.next_psn,
            self.una,
            self.timer.is_some(),
            self.rnr_until.is_some(),
            self.rd_atomic_out
        )
    }

    /// Index in `sq` of the oldest request not finished.
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
        self.una = attrs.sq_psn;
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
        self.una
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
        if psn_diff(psn, self.una) > 0 {
            self.una = psn;
        }
        if psn_diff(self.una, self.received) > 0 {
            self.received = self.una;
        }
    }

    /// The retry budget a timeout starts from.
    pub(crate) fn retry_cnt_attr(&self) -> u8 {
        self.retry_cnt
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

    /// A go-back asked for by a response (a NAK, an ACK past an unanswered
    /// READ or atomic, a gap in READ responses), unless one is already
    /// under way: see [`Self::retry_started`].
    pub(crate) fn retry(&mut self, psn: u32, mtu: usize) {
        if self.retry_started {
            return;
        }
        self.retry_started = true;
        self.go_back(psn, mtu);
    }

    /// Moves the transmit position back to `psn` (go-back-N): every
    /// unfinished request from the one holding `psn` on is sent again, with
    /// the same PSNs.
    pub(crate) fn go_back(&mut self, psn: u32, mtu: usize) {
        let Some(index) = self.sq.iter().position(|w| {
            w.done.is_none()
                && w.started
                && psn_diff(psn, w.first_psn) >= 0
                && psn_diff(psn, w.end_psn()) < 0
        }) else {
            return;
        };
        let w = &self.sq[index];
        let psn = if matches!(w.op, SendOp::Read { .. }) {
            // A READ is asked again from its first missing response.
            psn_add(w.first_psn, w.read_done / mtu as u32)
        } else {
            psn
        };
        self.cursor = index;
        self.next_psn = psn;
        for w in self.sq.iter_mut().skip(index) {
            w.transmitted = false;
        }
        self.rd_atomic_out = self
            .sq
            .iter()
            .take(index)
            .filter(|w| w.done.is_none() && w.is_read_or_atomic())
            .count() as u32;
    }
}

impl QpCore {
    /// Queues send work requests and transmits what the window allows.
    pub(crate) fn post_send(
        &self,
        regions: &dyn Regions,
        wrs: &[SendWr<'_>],
        out: &mut Outbox,
    ) -> Result<(), VerbsError> {
        let mut st = self.lock();
        if !matches!(st.kind, QpStateKind::Rts | QpStateKind::Error) {
            return Err(bad_state(st.kind, "post send requests"));
        }
        if st.req.sq.len() + wrs.len() > self.max_send_wr {
            return Err(VerbsError::QueueFull("send"));
        }
        for wr in wrs {
            let len = sge::total_len(wr.sg_list);
            let atomic = matches!(wr.op, SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. });
            if len > u64::from(u32::MAX) || (atomic && len != 8) {
                return Err(VerbsError::InvalidArgument("SGE list length"));
            }
            st.req.sq.push_back(SendWqe {
                wr_id: wr.wr_id,
                op: wr.op,
                sges: Sges::from_slice(wr.sg_list),
                signaled: wr.signaled,
                len: len as u32,
                started: false,
                first_psn: 0,
                npsn: 0,
                transmitted: false,
                read_done: 0,
                reread_from: None,
                done: None,
            });
        }
        if st.kind == QpStateKind::Error {
            let failed = None;
            self.fail(&mut st, failed);
            return Ok(());
        }
        self.fill(&mut st, regions, out);
        Ok(())
    }

    /// Transmits packets of queued requests while the window and the
    /// outstanding-READ limit allow.
    pub(crate) fn fill(&self, st: &mut QpState, regions: &dyn Regions, out: &mut Outbox) {
        let Some(peer) = st.peer else { return };
        if st.kind != QpStateKind::Rts {
            return;
        }
        // Called for every response: the clock is read only while an RNR
        // wait is pending.
        if let Some(until) = st.req.rnr_until {
            if st.req.clock.now() < until {
                return;
            }
            st.req.rnr_until = None;
        }
        let mtu = peer.mtu;
        loop {
            let req = &mut st.req;
            let oldest = req.oldest_unacked();
            let received = req.received_to();
            let Some(w) = req.sq.get_mut(req.cursor) else {
                break;
            };
            if w.done.is_some() {
                // Acknowledged while a go-back was resending it.
                if psn_diff(req.next_psn, w.end_psn()) < 0 {
                    req.next_psn = w.end_psn();
                }
                req.cursor += 1;
                continue;
            }
            // Packets the responder is known to have (acknowledged, or
            // before a NAKed PSN, even past a READ or atomic whose response
            // was lost) are not sent again during a go-back.
            if !w.is_read_or_atomic() && w.started && psn_diff(received, req.next_psn) > 0 {
                if psn_diff(received, w.end_psn()) >= 0 {
                    req.next_psn = w.end_psn();
                    w.transmitted = true;
                    req.cursor += 1;
                    continue;
                }
                req.next_psn = received;
            }
            if psn_diff(req.next_psn, oldest) >= MAX_UNACKED_PSNS {
                break;
            }
            if w.is_read_or_atomic() && req.rd_atomic_out >= req.max_rd_atomic {
                break;
            }
            if !w.started {
                w.started = true;
                w.first_psn = req.next_psn;
                w.npsn = match w.op {
                    SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. } => 1,
                    _ => (w.len as usize).div_ceil(mtu).max(1) as u32,
                };
            }
            let psn = req.next_psn;
            let k = psn_diff(psn, w.first_psn) as u32;
            // An atomic request is one packet; a READ one request per
            // segment of its response PSNs; a SEND or WRITE one per PSN.
            let last = match w.op {
                SendOp::Read { .. } => read_segment_end(k, w.npsn) == w.npsn,
                SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. } => true,
                _ => k + 1 >= w.npsn,
            };
            req.pkts_since_ack_req += 1;
            let ack_req = last || req.pkts_since_ack_req >= MAX_PKTS_PER_ACK;
            if ack_req {
                req.pkts_since_ack_req = 0;
            }
            let packet = match w.op {
                SendOp::Read { remote_addr, rkey } => {
                    let end = read_segment_end(k, w.npsn);
                    let offset = u64::from(k) * mtu as u64;
                    let seg_bytes = u64::from(end - k) * mtu as u64;
                    let len = (u64::from(w.len) - offset).min(seg_bytes) as u32;
                    let mut h = headers(bth(&peer, Opcode::RC_RDMA_READ_REQUEST, psn, 0, true));
                    h.reth = Some(RethRepr {
                        va: remote_addr + offset,
                        rkey,
                        len,
                    });
                    req.next_psn = psn_add(w.first_psn, end);
                    out.push(&peer, &h, 0, |_| Ok(()))
                }
                SendOp::CompareSwap {
                    remote_addr,
                    rkey,
                    compare,
                    swap,
                } => {
                    let mut h = headers(bth(&peer, Opcode::RC_COMPARE_SWAP, psn, 0, true));
                    h.atomic_eth = Some(AtomicEthRepr {
                        va: remote_addr,
                        rkey,
                        swap_add: swap,
                        compare,
                    });
                    req.next_psn = w.end_psn();
                    out.push(&peer, &h, 0, |_| Ok(()))
                }
                SendOp::FetchAdd {
                    remote_addr,
                    rkey,
                    add,
                } => {
                    let mut h = headers(bth(&peer, Opcode::RC_FETCH_ADD, psn, 0, true));
                    h.atomic_eth = Some(AtomicEthRepr {
                        va: remote_addr,
                        rkey,
                        swap_add: add,
                        compare: 0,
                    });
                    req.next_psn = w.end_psn();
                    out.push(&peer, &h, 0, |_| Ok(()))
                }
                op => {
                    let (target, imm) = segmented(op).unwrap_or((None, None));
                    let offset = k as usize * mtu;
                    let seg = (w.len as usize - offset.min(w.len as usize)).min(mtu);
                    let h = send_or_write_headers(w, target, imm, &peer, psn, k, seg, ack_req);
                    req.next_psn = psn_add(psn, 1);
                    let sges = &w.sges;
                    out.push(&peer, &h, seg, |buf| {
                        sge::gather(regions, self.pd, sges, offset as u64, buf)
                    })
                }
            };
            let w = &mut st.req.sq[st.req.cursor];
            match packet {
                Ok(()) => {}
                Err(SgeError::Protection | SgeError::Length) => {
                    // The local memory of the request is bad: it completes
                    // with an error and the queue pair goes to error.
                    let failed = (w.wr_id, w.opcode(), WcStatus::LocalProtectionError);
                    st.req.sq.remove(st.req.cursor);
                    self.fail(st, Some(failed));
                    return;
                }
            }
            if last {
                w.transmitted = true;
                if w.is_read_or_atomic() {
                    st.req.rd_atomic_out += 1;
                }
                st.req.cursor += 1;
            }
        }
        // Whatever is outstanding has a timer running, unless an RNR wait
        // stands in for it (a go-back may have found nothing to send).
        if st.req.timer.is_none() && st.req.rnr_until.is_none() {
            st.req.rearm();
        }
    }

    /// Runs expired timers: an RNR wait that ended, or a retransmit timeout
    /// (go back to the oldest unacknowledged PSN, or give up).
    pub(crate) fn on_timer(&self, regions: &dyn Regions, now: Instant, out: &mut Outbox) {
        let mut st = self.lock();
        if st.kind != QpStateKind::Rts {
            return;
        }
        let Some(mtu) = st.peer.map(|p| p.mtu) else {
            return;
        };
        if st.req.rnr_until.is_some_and(|t| t <= now) {
            st.req.rnr_until = None;
            self.fill(&mut st, regions, out);
        }
        if st.req.timer.is_some_and(|t| t <= now) {
            st.req.timer = None;
            let oldest = st.req.oldest_unacked();
            if !st.req.sq.iter().any(|w| w.started && w.done.is_none()) {
                return;
            }
            if st.req.retries_left == 0 {
                let failed = st.req.take_failed(WcStatus::RetryExceeded);
                self.fail(&mut st, failed);
                return;
            }
            if st.req.retry_cnt != 7 {
                st.req.retries_left -= 1;
            }
            st.req.retry_started = true;
            st.req.go_back(oldest, mtu);
            self.fill(&mut st, regions, out);
            st.req.rearm();
        }
    }

    /// Handles an RNR NAK for `psn`: wait the time the peer asked for, then
    /// send from `psn` again; give up when the RNR retries are used up.
    pub(crate) fn rnr_wait(&self, st: &mut QpState, psn: u32, timer: u8) {
        let mtu = st.peer.map_or(256, |p| p.mtu);
        if st.req.rnr_left == 0 {
            let failed = st.req.take_failed(WcStatus::RnrRetryExceeded);
            self.fail(st, failed);
            return;
        }
        if st.req.rnr_retry != 7 {
            st.req.rnr_left -= 1;
        }
        st.req.go_back(psn, mtu);
        st.req.rnr_until = Some(st.req.clock.now() + rnr_delay(timer));
        st.req.timer = None;
    }

    /// Completes finished requests at the head of the send queue, in order.
    pub(crate) fn retire(&self, st: &mut QpState) {
        while let Some(w) = st.req.sq.front() {
            let Some(status) = w.done else { break };
            if w.signaled || status != WcStatus::Success {
                self.send_cq.push(WorkCompletion {
                    wr_id: w.wr_id,
                    status,
                    opcode: w.opcode(),
                    byte_len: w.len,
                    imm_data: None,
                    qp_num: self.qpn,
                });
            }
            let end = w.end_psn();
            st.req.sq.pop_front();
            if st.req.cursor == 0 {
                // It was being sent again (a go-back) when it finished:
                // the transmit position moves past it with the cursor.
                if psn_diff(st.req.next_psn, end) < 0 {
                    st.req.next_psn = end;
                }
            } else {
                st.req.cursor -= 1;
            }
        }
    }
}

/// An RDMA WRITE's remote address and key.
type Target = Option<(u64, u32)>;

/// The RDMA target and immediate data of a SEND or RDMA WRITE; `None` for
/// the operations that are not segmented.
fn segmented(op: SendOp) -> Option<(Target, Option<u32>)> {
    match op {
        SendOp::Send => Some((None, None)),
        SendOp::SendWithImm { imm } => Some((None, Some(imm))),
        SendOp::Write { remote_addr, rkey } => Some((Some((remote_addr, rkey)), None)),
        SendOp::WriteWithImm {
            remote_addr,
            rkey,
            imm,
        } => Some((Some((remote_addr, rkey)), Some(imm))),
        _ => None,
    }
}

/// The headers of packet `k` (of `w.npsn`) of a SEND or RDMA WRITE to
/// `target` (`None` for a SEND).
#[allow(clippy::too_many_arguments)]
fn send_or_write_headers(
    w: &SendWqe,
    target: Target,
    imm: Option<u32>,
    peer: &super::Peer,
    psn: u32,
    k: u32,
    seg: usize,
    ack_req: bool,
) -> crate::wire::PacketRepr<'static> {
    let (first, last) = (k == 0, k + 1 >= w.npsn);
    let write = target.is_some();
    let opcode = match (write, first, last, imm.is_some()) {
        (false, true, true, false) => Opcode::RC_SEND_ONLY,
        (false, true, true, true) => Opcode::RC_SEND_ONLY_WITH_IMMEDIATE,
        (false, true, false, _) => Opcode::RC_SEND_FIRST,
        (false, false, false, _) => Opcode::RC_SEND_MIDDLE,
        (false, false, true, false) => Opcode::RC_SEND_LAST,
        (false, false, true, true) => Opcode::RC_SEND_LAST_WITH_IMMEDIATE,
        (true, true, true, false) => Opcode::RC_RDMA_WRITE_ONLY,
        (true, true, true, true) => Opcode::RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE,
        (true, true, false, _) => Opcode::RC_RDMA_WRITE_FIRST,
        (true, false, false, _) => Opcode::RC_RDMA_WRITE_MIDDLE,
        (true, false, true, false) => Opcode::RC_RDMA_WRITE_LAST,
        (true, false, true, true) => Opcode::RC_RDMA_WRITE_LAST_WITH_IMMEDIATE,
    };
    let mut h = headers(bth(peer, opcode, psn, seg, ack_req));
    if let (true, Some((va, rkey))) = (first, target) {
        h.reth = Some(RethRepr {
            va,
            rkey,
            len: w.len,
        });
    }
    if last {
        h.immdt = imm;
    }
    h
}
