//! The requester's steps (rxe's `rxe_requester`): posting, then for each
//! packet `req_next_wqe`, the window and `check_init_depth` limits,
//! `update_wqe_psn`, `next_opcode`, `init_req_packet`, `finish_packet` and
//! `update_state`, until the window, the outstanding-READ limit or the
//! send queue stops it.

use super::{
    HOLD_BACK_MAX, HOLD_BACK_UNACKED, MAX_BYTES_PER_ACK, MAX_PKTS_PER_ACK, MAX_UNACKED_PSNS,
    RESUME_FREE_PSNS, Requester, SendWqe, read_segment_end,
};
use crate::rc::psn::{psn_add, psn_diff};
use crate::rc::qp::{Peer, QpCore, QpLocked, QpState, bad_state, bth, headers};
use crate::rc::sge::{self, SgeError, Sges};
use crate::rc::{EngineError, SendOp, SendWr, WcStatus};
use crate::rc::{Outbox, Regions};
use crate::wire::{AtomicEthRepr, Opcode, PacketRepr, RethRepr};

/// The requester's next step.
enum ReqStep {
    /// req_next_wqe: find the request at the transmit position.
    NextWqe,
    /// The window (`RXE_MAX_UNACKED_PSNS`) and `check_init_depth` (the
    /// outstanding-READ limit) for the request at the cursor.
    CheckLimits,
    /// update_wqe_psn, next_opcode, init_req_packet, finish_packet: one
    /// packet of the request at the cursor.
    SendPacket,
    /// update_state: the packet is out; `last` if it was its request's
    /// last.
    UpdateState { last: bool },
    /// The request's local memory is bad: it completes with an error and
    /// the queue pair goes to error.
    Error,
    /// Nothing more may be sent now.
    Exit,
}

/// One request packet, built by `init_req_packet`.
struct ReqPacket {
    headers: PacketRepr<'static>,
    /// A SEND's or WRITE's payload: its offset in the request's local
    /// memory and its length.
    payload: Option<(u64, usize)>,
    /// The PSN after this packet's.
    next_psn: u32,
}

impl QpCore {
    /// Queues send work requests and transmits what the window allows.
    pub(crate) fn post_send(
        &self,
        regions: &dyn Regions,
        wrs: &[SendWr<'_>],
        out: &mut Outbox,
    ) -> Result<(), EngineError> {
        let mut st = self.lock();
        if !matches!(st.kind, QpState::Rts | QpState::Error) {
            return Err(bad_state(st.kind, "post send requests"));
        }
        if st.req.sq.len() + wrs.len() > self.max_send_wr {
            return Err(EngineError::QueueFull("send"));
        }
        for wr in wrs {
            let len = sge::total_len(wr.sg_list);
            let atomic = matches!(wr.op, SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. });
            if len > u64::from(u32::MAX) || (atomic && len != 8) {
                return Err(EngineError::InvalidArgument("SGE list length"));
            }
            let wqe = st.req.sq.push_back_mut(SendWqe {
                wr_id: wr.wr_id,
                op: SendOp::Send,
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
            // Copied straight from the request: through the new entry's
            // stack copy it was read back across two stores, which stalled
            // every post.
            wqe.op = wr.op;
        }
        if st.kind == QpState::Error {
            self.fail(&mut st, None);
            return Ok(());
        }
        if wrs.len() == 1 && st.req.may_hold_back(wrs[0].signaled) {
            return Ok(());
        }
        self.run_requester(&mut st, regions, out);
        Ok(())
    }

    /// rxe_requester: transmits packets of queued requests while the
    /// window and the outstanding-READ limit allow.
    pub(crate) fn run_requester(&self, st: &mut QpLocked, regions: &dyn Regions, out: &mut Outbox) {
        let Some(peer) = st.peer else { return };
        if st.kind != QpState::Rts || st.req.rnr_waiting() {
            return;
        }
        let mut step = ReqStep::NextWqe;
        loop {
            step = match step {
                ReqStep::NextWqe => st.req.req_next_wqe(),
                ReqStep::CheckLimits => st.req.check_limits(),
                ReqStep::SendPacket => self.send_packet(&mut st.req, regions, &peer, out),
                ReqStep::UpdateState { last } => st.req.update_state(last),
                ReqStep::Error => {
                    let failed = st.req.take_at_cursor(WcStatus::LocalProtectionError);
                    self.fail(st, failed);
                    return;
                }
                ReqStep::Exit => break,
            };
        }
        // Whatever is outstanding has a timer running, unless an RNR wait
        // stands in for it (a go-back may have found nothing to send).
        if st.req.timer.is_none() && st.req.rnr_until.is_none() {
            st.req.rearm();
        }
    }

    /// update_wqe_psn, next_opcode, init_req_packet and finish_packet: one
    /// packet of the request at the cursor goes to the outbox.
    fn send_packet(
        &self,
        req: &mut Requester,
        regions: &dyn Regions,
        peer: &Peer,
        out: &mut Outbox,
    ) -> ReqStep {
        let psn = req.next_psn;
        let w = &mut req.sq[req.cursor];
        update_wqe_psn(w, psn, peer.mtu);
        let k = psn_diff(psn, w.first_psn) as u32;
        let last = is_last_packet(w, k);
        let remaining = w.npsn - k;
        let mut packet = init_req_packet(&req.sq[req.cursor], peer, psn, k);
        match packet.payload {
            Some((_, len)) => packet.headers.bth.ack_req = req.ack_req(remaining, len),
            // A READ or atomic request always asks: its response
            // acknowledges every PSN before it.
            None => req.asked_for_ack(),
        }
        req.next_psn = packet.next_psn;
        // finish_packet: the payload is gathered from local memory.
        let result = match packet.payload {
            Some((offset, len)) => {
                let sges = &req.sq[req.cursor].sges;
                out.push(peer, &packet.headers, len, |buf| {
                    sge::gather(regions, self.pd, sges, offset, buf)
                })
            }
            None => out.push(peer, &packet.headers, 0, |_| Ok(())),
        };
        match result {
            Ok(()) => ReqStep::UpdateState { last },
            Err(SgeError::Protection | SgeError::Length) => ReqStep::Error,
        }
    }
}

impl Requester {
    /// req_next_wqe: skips requests at the transmit position that need no
    /// (more) sending; `CheckLimits` once one does.
    fn req_next_wqe(&mut self) -> ReqStep {
        let received = self.received;
        let Some(w) = self.sq.get_mut(self.cursor) else {
            return ReqStep::Exit;
        };
        if w.done.is_some() {
            // Acknowledged while a go-back was resending it.
            if psn_diff(self.next_psn, w.end_psn()) < 0 {
                self.next_psn = w.end_psn();
            }
            self.cursor += 1;
            return ReqStep::NextWqe;
        }
        // Packets the responder is known to have (acknowledged, or before
        // a NAKed PSN, even past a READ or atomic whose response was lost)
        // are not sent again during a go-back.
        if !w.is_read_or_atomic() && w.started && psn_diff(received, self.next_psn) > 0 {
            if psn_diff(received, w.end_psn()) >= 0 {
                self.next_psn = w.end_psn();
                w.transmitted = true;
                self.cursor += 1;
                return ReqStep::NextWqe;
            }
            self.next_psn = received;
        }
        ReqStep::CheckLimits
    }

    /// Whether a request posted alone may wait in the send queue for the
    /// requester's next run instead of leaving now (doorbell batching for
    /// programs that post one work request at a time, as perftest does).
    /// Only while a response to earlier PSNs is due and runs the requester
    /// (see [`Self::ack_req`]: what went out last asks for one when the
    /// queue ran dry, and a full window holds an ask that frees a quarter
    /// of it), or the retransmit timer does if that is lost; and only
    /// while at most [`HOLD_BACK_MAX`] requests would wait, so a burst
    /// leaves in sends of one more than that. A
    /// post of several requests never waits (its program batched them),
    /// and a request waits:
    /// - if `signaled`, while [`HOLD_BACK_UNACKED`] PSNs or more are
    ///   unacknowledged: a ping-pong, or a request followed by the one
    ///   whose completion its program waits for, never waits;
    /// - if not, while any PSN is: nothing waits for its completion, which
    ///   only a later signaled request reports, and that one's post sends
    ///   it (perftest signals one request in a hundred). The peer sees an
    ///   unsignaled WRITE or SEND at most the turnaround of the response
    ///   due later than it would have.
    fn may_hold_back(&self, signaled: bool) -> bool {
        let unacked = self.unacked_psns();
        let deep = if signaled {
            unacked >= HOLD_BACK_UNACKED
        } else {
            unacked > 0
        };
        deep && self.timer.is_some() && self.sq.len() - self.cursor <= HOLD_BACK_MAX
    }

    /// Whether a response just handled runs the requester: only once
    /// [`RESUME_FREE_PSNS`] of the window are free (always when little is
    /// outstanding: a go-back moves `next_psn` back, which frees it). A
    /// window reopened a few PSNs at a time (an acknowledgement per message
    /// of several packets) would send a message per system call; waiting
    /// for a quarter of it sends several in one, and the responses due for
    /// the PSNs still outstanding, or the retransmit timer, run the
    /// requester soon (32 KiB WRITEs: 0.72-0.74 -> 0.75-0.78 of one-packet
    /// bandwidth, four alternating runs of each).
    pub(crate) fn resumes_on_response(&self) -> bool {
        self.unacked_psns() <= MAX_UNACKED_PSNS - RESUME_FREE_PSNS
    }

    /// PSNs transmitted and not yet acknowledged.
    fn unacked_psns(&self) -> i32 {
        psn_diff(self.next_psn, self.oldest_unacked)
    }

    /// The window of unacknowledged PSNs, then check_init_depth: a READ or
    /// atomic waits while `max_rd_atomic` are outstanding.
    fn check_limits(&self) -> ReqStep {
        if self.unacked_psns() >= MAX_UNACKED_PSNS {
            return ReqStep::Exit;
        }
        let w = &self.sq[self.cursor];
        if w.is_read_or_atomic() && self.rd_atomic_out >= self.max_rd_atomic {
            return ReqStep::Exit;
        }
        ReqStep::SendPacket
    }

    /// Whether a SEND or WRITE packet (`remaining` packets of its request
    /// from this one on, `payload` bytes) asks for an acknowledgement.
    /// Each response costs a datagram both ways (64-byte WRITEs that all
    /// asked, answered every 32 packets, spent a quarter of the posting
    /// thread's time receiving them), so packets ask only as often as the
    /// program and the window need:
    /// - the last packet of the last request queued: its program may be
    ///   waiting for this completion;
    /// - once half the PSNs outstanding have gone by since the last ask
    ///   (those unacknowledged, the rest of this request and one for each
    ///   request queued behind it; at most the window): a program that
    ///   keeps `n` requests posted hears after `n / 2` and posts again
    ///   while the rest travel;
    /// - at least every [`MAX_PKTS_PER_ACK`] packets and
    ///   [`MAX_BYTES_PER_ACK`] bytes.
    ///
    /// A full window then always holds an ask within its last
    /// [`MAX_PKTS_PER_ACK`] PSNs, whose response frees at least
    /// [`RESUME_FREE_PSNS`] and so runs the requester again.
    fn ack_req(&mut self, remaining: u32, payload: usize) -> bool {
        self.pkts_since_ack_req += 1;
        self.bytes_since_ack_req += payload;
        let queued_after = (self.sq.len() - self.cursor - 1) as u32;
        let last_queued = remaining == 1 && queued_after == 0;
        let outstanding =
            (self.unacked_psns() as u32 + remaining + queued_after).min(MAX_UNACKED_PSNS as u32);
        let spacing = (outstanding / 2).clamp(1, MAX_PKTS_PER_ACK);
        let ack_req = last_queued
            || self.pkts_since_ack_req >= spacing
            || self.bytes_since_ack_req >= MAX_BYTES_PER_ACK;
        if ack_req {
            self.asked_for_ack();
        }
        ack_req
    }

    /// A packet just asked for an acknowledgement.
    fn asked_for_ack(&mut self) {
        self.pkts_since_ack_req = 0;
        self.bytes_since_ack_req = 0;
    }

    /// update_state: after a request's last packet it is transmitted (a
    /// READ or atomic now counts as outstanding) and the cursor moves on.
    fn update_state(&mut self, last: bool) -> ReqStep {
        if last {
            let w = &mut self.sq[self.cursor];
            w.transmitted = true;
            if w.is_read_or_atomic() {
                self.rd_atomic_out += 1;
            }
            self.cursor += 1;
        }
        ReqStep::NextWqe
    }

    /// Takes the request at the cursor out, as the failure the queue pair
    /// reports with `status`.
    fn take_at_cursor(&mut self, status: WcStatus) -> Option<(u64, crate::rc::WcOpcode, WcStatus)> {
        let w = self.sq.remove(self.cursor)?;
        Some((w.wr_id, w.opcode(), status))
    }
}

/// update_wqe_psn: a request gets its PSNs when its first packet goes out
/// (a READ one per response packet, an atomic one).
fn update_wqe_psn(w: &mut SendWqe, next_psn: u32, mtu: usize) {
    if w.started {
        return;
    }
    w.started = true;
    w.first_psn = next_psn;
    w.npsn = match w.op {
        SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. } => 1,
        _ => (w.len as usize).div_ceil(mtu).max(1) as u32,
    };
}

/// Whether packet `k` (PSN offset from the first) is its request's last:
/// an atomic request is one packet; a READ one request per segment of its
/// response PSNs; a SEND or WRITE one packet per PSN.
fn is_last_packet(w: &SendWqe, k: u32) -> bool {
    match w.op {
        SendOp::Read { .. } => read_segment_end(k, w.npsn) == w.npsn,
        SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. } => true,
        _ => k + 1 >= w.npsn,
    }
}

/// init_req_packet: the headers of packet `k` of `w`, at `psn`.
fn init_req_packet(w: &SendWqe, peer: &Peer, psn: u32, k: u32) -> ReqPacket {
    let mtu = peer.mtu;
    match w.op {
        SendOp::Read { remote_addr, rkey } => read_request(w, peer, psn, k, remote_addr, rkey),
        SendOp::CompareSwap {
            remote_addr,
            rkey,
            compare,
            swap,
        } => {
            let eth = AtomicEthRepr {
                va: remote_addr,
                rkey,
                swap_add: swap,
                compare,
            };
            atomic_request(w, peer, Opcode::RC_COMPARE_SWAP, psn, eth)
        }
        SendOp::FetchAdd {
            remote_addr,
            rkey,
            add,
        } => {
            let eth = AtomicEthRepr {
                va: remote_addr,
                rkey,
                swap_add: add,
                compare: 0,
            };
            atomic_request(w, peer, Opcode::RC_FETCH_ADD, psn, eth)
        }
        op => {
            let (target, imm) = segmented(op).unwrap_or((None, None));
            let offset = k as usize * mtu;
            let seg = (w.len as usize - offset.min(w.len as usize)).min(mtu);
            ReqPacket {
                headers: send_or_write_headers(w, target, imm, peer, psn, k, seg),
                payload: Some((offset as u64, seg)),
                next_psn: psn_add(psn, 1),
            }
        }
    }
}

/// A READ request for the segment of response PSNs holding offset `k`.
fn read_request(w: &SendWqe, peer: &Peer, psn: u32, k: u32, va: u64, rkey: u32) -> ReqPacket {
    let mtu = peer.mtu as u64;
    let end = read_segment_end(k, w.npsn);
    let offset = u64::from(k) * mtu;
    let seg_bytes = u64::from(end - k) * mtu;
    let len = (u64::from(w.len) - offset).min(seg_bytes) as u32;
    let mut h = headers(bth(peer, Opcode::RC_RDMA_READ_REQUEST, psn, 0, true));
    h.reth = Some(RethRepr {
        va: va + offset,
        rkey,
        len,
    });
    ReqPacket {
        headers: h,
        payload: None,
        next_psn: psn_add(w.first_psn, end),
    }
}

/// An atomic request: one packet, its request's only PSN.
fn atomic_request(
    w: &SendWqe,
    peer: &Peer,
    opcode: Opcode,
    psn: u32,
    eth: AtomicEthRepr,
) -> ReqPacket {
    let mut h = headers(bth(peer, opcode, psn, 0, true));
    h.atomic_eth = Some(eth);
    ReqPacket {
        headers: h,
        payload: None,
        next_psn: w.end_psn(),
    }
}

/// An RDMA WRITE's remote address and key.
type WriteTarget = Option<(u64, u32)>;

/// The RDMA target and immediate data of a SEND or RDMA WRITE; `None` for
/// the operations that are not segmented.
fn segmented(op: SendOp) -> Option<(WriteTarget, Option<u32>)> {
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

/// next_opcode: the opcode of packet `first`/`last` of a SEND (`write`
/// false) or RDMA WRITE, with or without immediate data.
fn next_opcode(write: bool, first: bool, last: bool, imm: bool) -> Opcode {
    match (write, first, last, imm) {
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
    }
}

/// The headers of packet `k` (of `w.npsn`) of a SEND or RDMA WRITE to
/// `target` (`None` for a SEND), not yet asking for an acknowledgement.
fn send_or_write_headers(
    w: &SendWqe,
    target: WriteTarget,
    imm: Option<u32>,
    peer: &Peer,
    psn: u32,
    k: u32,
    seg: usize,
) -> PacketRepr<'static> {
    let (first, last) = (k == 0, k + 1 >= w.npsn);
    let opcode = next_opcode(target.is_some(), first, last, imm.is_some());
    let mut h = headers(bth(peer, opcode, psn, seg, false));
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
