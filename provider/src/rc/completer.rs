//! The completer (rxe's `rxe_comp.c`): acknowledgements, NAKs, READ
//! responses and atomic acknowledgements finish the requester's work
//! requests, in order. One response runs through the steps of
//! `rxe_completer`, under the same names: [`check_psn`](QpCore::check_psn)
//! (what the response implicitly acknowledges), `check_ack` (what kind of
//! answer it is), then `write_send`, `do_read` or `do_atomic`,
//! `complete_ack`, `complete_wqe` (`do_complete` for each finished
//! request), `update_comp`, and the retry and error paths
//! (`error_retry`, `rnr_retry`, `error`).
//!
//! The completer changes the send queue only through the requester's
//! methods.

use smallvec::SmallVec;

use super::psn::{psn_add, psn_diff};
use super::qp::{QpCore, QpLocked};
use super::requester::read_segment_end;
use super::sge;
use super::{Regions, SendOp, WcStatus, WorkCompletion};
use crate::wire::{NakCode, Opcode, PacketRepr, Syndrome};

/// The completer's next step for one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CompStep {
    /// What the response implicitly acknowledges.
    CheckPsn,
    /// What kind of answer the response is.
    CheckAck,
    /// An ACK: SENDs and WRITEs it covers are done.
    WriteSend,
    /// A READ response: scatter its payload.
    Read,
    /// An atomic acknowledgement: scatter the original value.
    Atomic,
    /// The READ or atomic at this index of the send queue finished.
    CompAck { index: usize, status: WcStatus },
    /// Report the finished requests at the head of the send queue.
    CompWqe,
    /// Progress resets the retry budget; the timer follows.
    UpdateComp,
    /// The response asked the requester to go back to this PSN.
    ErrorRetry(u32),
    /// An RNR NAK with this timer code.
    RnrRetry(u8),
    /// The oldest unfinished request fails with this status (a NAK other
    /// than a PSN sequence error, or local memory that cannot take a
    /// response); the queue pair goes to error, reporting the requests
    /// finished before it first.
    Error(WcStatus),
    /// Nothing more for this response.
    Done,
}

/// One response as the steps see it.
struct Response<'a, 'p> {
    pkt: &'a PacketRepr<'p>,
    psn: u32,
    mtu: usize,
    /// The oldest unacknowledged PSN before this response.
    before: u32,
    /// Where the response asks the requester to send again from.
    retry_from: Option<u32>,
}

impl QpCore {
    /// rxe_completer: handles a response packet (ACK, NAK, READ response,
    /// atomic ACK).
    pub(crate) fn run_completer(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
    ) {
        let Some(mtu) = st.peer.map(|p| p.mtu) else {
            return;
        };
        let mut resp = Response {
            pkt,
            psn: pkt.bth.psn,
            mtu,
            before: st.req.oldest_unacked(),
            retry_from: None,
        };
        let mut step = CompStep::CheckPsn;
        while step != CompStep::Done {
            step = match step {
                CompStep::CheckPsn => check_psn(st, &resp),
                CompStep::CheckAck => check_ack(&mut resp),
                CompStep::WriteSend => write_send(st, &mut resp),
                CompStep::Read => self.do_read(st, regions, &resp),
                CompStep::Atomic => self.do_atomic(st, regions, &resp),
                CompStep::CompAck { index, status } => complete_ack(st, index, status),
                CompStep::CompWqe => self.complete_wqe(st),
                CompStep::UpdateComp => update_comp(st, &resp),
                CompStep::ErrorRetry(psn) => {
                    st.req.retry(psn, mtu);
                    CompStep::Done
                }
                CompStep::RnrRetry(timer) => {
                    self.do_complete(st);
                    self.rnr_wait(st, resp.psn, timer);
                    CompStep::Done
                }
                CompStep::Error(status) => {
                    let failed = st.req.take_failed(status);
                    self.fail(st, failed);
                    CompStep::Done
                }
                CompStep::Done => CompStep::Done,
            };
        }
    }

    /// do_read: the READ response expected next is scattered into the
    /// oldest unfinished request, which must be a READ; others are
    /// dropped, and a response past the expected one asks once for the
    /// rest.
    fn do_read(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        resp: &Response<'_, '_>,
    ) -> CompStep {
        let (psn, mtu, pkt) = (resp.psn, resp.mtu, resp.pkt);
        let Some(index) = st.req.oldest_unfinished() else {
            return CompStep::Done;
        };
        let Some(w) = st.req.wqe(index) else {
            return CompStep::Done;
        };
        let SendOp::Read { .. } = w.op else {
            return CompStep::Done;
        };
        let expected = w.next_read_psn(mtu);
        if !w.started || psn != expected {
            // A response past the next one expected means some were lost:
            // ask once for the rest, from the first missing one (the timer
            // covers a lost request). Duplicates are ignored.
            if w.started && psn_diff(psn, expected) > 0 {
                st.req.reread_after_gap(index, expected, mtu);
            }
            return CompStep::Done;
        }
        let room = (w.len - w.read_done) as usize;
        let len = pkt.payload.len();
        let last = pkt.bth.opcode.is_last();
        if len > room || (!last && len != mtu) {
            return CompStep::Done;
        }
        let offset = u64::from(w.read_done);
        if sge::scatter(regions, self.pd, &w.sges, offset, pkt.payload).is_err() {
            return CompStep::Error(WcStatus::LocalProtectionError);
        }
        st.req.read_received(index, len as u32);
        st.req.acked_to(psn_add(psn, 1));
        read_finished(st, index, psn, mtu, last)
    }

    /// do_atomic: the original value goes to the atomic request's local
    /// memory.
    fn do_atomic(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        resp: &Response<'_, '_>,
    ) -> CompStep {
        let psn = resp.psn;
        let Some(orig) = resp.pkt.atomic_ack_eth.map(|a| a.orig) else {
            return CompStep::Done;
        };
        let Some(index) = st.req.oldest_unfinished() else {
            return CompStep::Done;
        };
        let Some(w) = st.req.wqe(index) else {
            return CompStep::Done;
        };
        if !w.started
            || w.first_psn != psn
            || !matches!(w.op, SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. })
        {
            return CompStep::Done;
        }
        if sge::scatter(regions, self.pd, &w.sges, 0, &orig.to_ne_bytes()).is_err() {
            return CompStep::Error(WcStatus::LocalProtectionError);
        }
        st.req.acked_to(psn_add(psn, 1));
        CompStep::CompAck {
            index,
            status: WcStatus::Success,
        }
    }

    /// complete_wqe: requests past a READ or atomic that the responder
    /// acknowledged before its response came complete now; the finished
    /// ones at the head are reported.
    fn complete_wqe(&self, st: &mut QpLocked) -> CompStep {
        let received = st.req.received_to();
        st.req.acknowledge_through(psn_add(received, 0xff_ffff));
        self.do_complete(st);
        CompStep::UpdateComp
    }

    /// do_complete: reports the finished requests at the head of the send
    /// queue, in order (errors always; successes if signaled).
    pub(crate) fn do_complete(&self, st: &mut QpLocked) {
        // Pushed a few at a time: one lock of the queue for all of them.
        let mut done = SmallVec::<[WorkCompletion; 16]>::new();
        while let Some((w, status)) = st.req.pop_finished() {
            if w.signaled || status != WcStatus::Success {
                if done.len() == done.inline_size() {
                    self.send_cq.push_all(&done);
                    done.clear();
                }
                done.push(WorkCompletion {
                    wr_id: w.wr_id,
                    status,
                    opcode: w.opcode(),
                    byte_len: w.len,
                    imm_data: None,
                    qp_num: self.qpn,
                });
            }
        }
        if !done.is_empty() {
            self.send_cq.push_all(&done);
        }
    }
}

/// check_psn: a response implicitly acknowledges the PSNs before its own
/// (an ACK, its own too); an ACK or a NAK asking for a retransmission also
/// says which request packets the responder has.
fn check_psn(st: &mut QpLocked, resp: &Response<'_, '_>) -> CompStep {
    let psn = resp.psn;
    let before_psn = psn_add(psn, 0xff_ffff);
    match resp.pkt.bth.opcode {
        Opcode::RC_ACKNOWLEDGE => match resp.pkt.aeth.map(|a| a.decode()) {
            Some(Syndrome::Ack { .. }) => {
                st.req.received_before(psn_add(psn, 1));
                st.req.acknowledge_through(psn);
            }
            Some(Syndrome::RnrNak { .. } | Syndrome::Nak(NakCode::PsnSequenceError)) => {
                st.req.received_before(psn);
                st.req.acknowledge_through(before_psn);
            }
            Some(Syndrome::Nak(_)) => st.req.acknowledge_through(before_psn),
            Some(Syndrome::Reserved(_)) | None => return CompStep::Done,
        },
        op if is_read_response(op) || op == Opcode::RC_ATOMIC_ACKNOWLEDGE => {
            st.req.acknowledge_through(before_psn);
        }
        _ => return CompStep::Done,
    }
    CompStep::CheckAck
}

/// check_ack: which step the response leads to.
fn check_ack(resp: &mut Response<'_, '_>) -> CompStep {
    match resp.pkt.bth.opcode {
        Opcode::RC_ACKNOWLEDGE => match resp.pkt.aeth.map(|a| a.decode()) {
            Some(Syndrome::Ack { .. }) => CompStep::WriteSend,
            Some(Syndrome::RnrNak { timer }) => CompStep::RnrRetry(timer),
            Some(Syndrome::Nak(NakCode::PsnSequenceError)) => {
                resp.retry_from = Some(resp.psn);
                CompStep::CompWqe
            }
            Some(Syndrome::Nak(code)) => CompStep::Error(match code {
                NakCode::RemoteAccessError => WcStatus::RemoteAccessError,
                NakCode::RemoteOperationalError => WcStatus::RemoteOperationalError,
                _ => WcStatus::RemoteInvalidRequest,
            }),
            Some(Syndrome::Reserved(_)) | None => CompStep::Done,
        },
        op if is_read_response(op) => CompStep::Read,
        Opcode::RC_ATOMIC_ACKNOWLEDGE => CompStep::Atomic,
        _ => CompStep::Done,
    }
}

fn is_read_response(op: Opcode) -> bool {
    matches!(
        op,
        Opcode::RC_RDMA_READ_RESPONSE_FIRST
            | Opcode::RC_RDMA_READ_RESPONSE_MIDDLE
            | Opcode::RC_RDMA_READ_RESPONSE_LAST
            | Opcode::RC_RDMA_READ_RESPONSE_ONLY
    )
}

/// write_send: the SENDs and WRITEs an ACK covers are done (check_psn
/// marked them). An ACK past an unanswered READ or atomic means its
/// responses were lost: ask again.
fn write_send(st: &mut QpLocked, resp: &mut Response<'_, '_>) -> CompStep {
    if let Some(first) = st.req.overtaken_read_or_atomic(resp.psn) {
        resp.retry_from = Some(first);
    }
    CompStep::CompWqe
}

/// Whether the READ at `index` finished with the in-order response at
/// `psn`: the last response of a segment ends exactly where the segment
/// (or the READ) does, else the READ fails as an invalid request.
fn read_finished(st: &QpLocked, index: usize, psn: u32, mtu: usize, last: bool) -> CompStep {
    let Some(w) = st.req.wqe(index) else {
        return CompStep::Done;
    };
    let k = psn_diff(psn, w.first_psn) as u32;
    let segment_end = read_segment_end(k, w.npsn) as u64 * mtu as u64;
    let short = last && u64::from(w.read_done) != segment_end.min(u64::from(w.len));
    if w.read_done == w.len || short {
        let status = if short {
            WcStatus::RemoteInvalidRequest
        } else {
            WcStatus::Success
        };
        return CompStep::CompAck { index, status };
    }
    CompStep::CompWqe
}

/// complete_ack: the READ or atomic at `index` is done.
fn complete_ack(st: &mut QpLocked, index: usize, status: WcStatus) -> CompStep {
    st.req.finish_read_or_atomic(index, status);
    CompStep::CompWqe
}

/// update_comp: a response that moved the oldest unacknowledged PSN
/// resets the retry budget and restarts the timer (rxe's
/// `reset_retry_counters`); with nothing transmitted left unfinished, the
/// timer stops. Then a go-back the response asked for.
fn update_comp(st: &mut QpLocked, resp: &Response<'_, '_>) -> CompStep {
    if psn_diff(st.req.oldest_unacked(), resp.before) > 0 {
        st.req.reset_retry_counters();
    } else {
        st.req.stop_timer_if_idle();
    }
    match resp.retry_from {
        Some(psn) => CompStep::ErrorRetry(psn),
        None => CompStep::Done,
    }
}
