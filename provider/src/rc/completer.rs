//! The completer: acknowledgements, NAKs, READ responses and atomic
//! acknowledgements finish the requester's work requests, in order.

use super::Outbox;
use super::Regions;
use super::psn::{psn_add, psn_diff};
use super::qp::{QpCore, QpState};
use super::requester::read_segment_end;
use super::sge;
use crate::verbs::{SendOp, WcStatus};
use crate::wire::{NakCode, Opcode, PacketRepr, Syndrome};

impl QpCore {
    /// Handles a response packet (ACK, READ response, atomic ACK).
    pub(crate) fn complete(
        &self,
        st: &mut QpState,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
        _out: &mut Outbox,
    ) {
        let Some(mtu) = st.peer.map(|p| p.mtu) else {
            return;
        };
        let psn = pkt.bth.psn;
        let before = st.req.oldest_unacked();
        // Where this response says the requester must send again from.
        let mut retry_from = None;
        match pkt.bth.opcode {
            Opcode::RC_ACKNOWLEDGE => {
                let Some(aeth) = pkt.aeth else { return };
                match aeth.decode() {
                    Syndrome::Ack { .. } => {
                        st.req.received_before(psn_add(psn, 1));
                        acknowledge_through(st, psn);
                        // An ACK past an unanswered READ or atomic means
                        // its responses were lost: ask again.
                        if let Some(w) = st.req.sq.iter().find(|w| w.done.is_none() && w.started)
                            && w.is_read_or_atomic()
                            && psn_diff(psn, w.first_psn) >= 0
                        {
                            retry_from = Some(w.first_psn);
                        }
                    }
                    Syndrome::RnrNak { timer } => {
                        st.req.received_before(psn);
                        acknowledge_through(st, psn_add(psn, 0xff_ffff));
                        self.retire(st);
                        self.rnr_wait(st, psn, timer);
                        return;
                    }
                    Syndrome::Nak(NakCode::PsnSequenceError) => {
                        st.req.received_before(psn);
                        acknowledge_through(st, psn_add(psn, 0xff_ffff));
                        retry_from = Some(psn);
                    }
                    Syndrome::Nak(code) => {
                        acknowledge_through(st, psn_add(psn, 0xff_ffff));
                        self.retire(st);
                        let status = match code {
                            NakCode::RemoteAccessError => WcStatus::RemoteAccessError,
                            NakCode::RemoteOperationalError => WcStatus::RemoteOperationalError,
                            _ => WcStatus::RemoteInvalidRequest,
                        };
                        let failed = st.req.take_failed(status);
                        self.fail(st, failed);
                        return;
                    }
                    Syndrome::Reserved(_) => return,
                }
            }
            Opcode::RC_RDMA_READ_RESPONSE_FIRST
            | Opcode::RC_RDMA_READ_RESPONSE_MIDDLE
            | Opcode::RC_RDMA_READ_RESPONSE_LAST
            | Opcode::RC_RDMA_READ_RESPONSE_ONLY => {
                // Responses implicitly acknowledge everything before them.
                acknowledge_through(st, psn_add(psn, 0xff_ffff));
                let Some(index) = st.req.oldest_unfinished() else {
                    return;
                };
                let w = &mut st.req.sq[index];
                let SendOp::Read { .. } = w.op else { return };
                let expected = psn_add(w.first_psn, w.read_done / mtu as u32);
                if !w.started || psn != expected {
                    // A response past the next one expected means some were
                    // lost: ask once for the rest, from the first missing
                    // one (the timer covers a lost request). Duplicates
                    // are ignored.
                    if w.started && psn_diff(psn, expected) > 0 && w.reread_from != Some(expected) {
                        w.reread_from = Some(expected);
                        st.req.retry(expected, mtu);
                    }
                    return;
                }
                let room = (w.len - w.read_done) as usize;
                let len = pkt.payload.len();
                let last = pkt.bth.opcode.is_last();
                if len > room || (!last && len != mtu) {
                    return;
                }
                let offset = u64::from(w.read_done);
                if sge::scatter(regions, self.pd, &w.sges, offset, pkt.payload).is_err() {
                    let failed = (w.wr_id, w.opcode(), WcStatus::LocalProtectionError);
                    st.req.sq.remove(index);
                    self.fail(st, Some(failed));
                    return;
                }
                w.read_done += len as u32;
                st.req.acked_to(psn_add(psn, 1));
                let w = &mut st.req.sq[index];
                // The last response of a segment ends exactly where the
                // segment (or the READ) does.
                let k = psn_diff(psn, w.first_psn) as u32;
                let segment_end = read_segment_end(k, w.npsn) as u64 * mtu as u64;
                let short = last && u64::from(w.read_done) != segment_end.min(u64::from(w.len));
                if w.read_done == w.len || short {
                    w.done = Some(if short {
                        WcStatus::RemoteInvalidRequest
                    } else {
                        WcStatus::Success
                    });
                    st.req.rd_atomic_out = st.req.rd_atomic_out.saturating_sub(1);
                }
            }
            Opcode::RC_ATOMIC_ACKNOWLEDGE => {
                acknowledge_through(st, psn_add(psn, 0xff_ffff));
                let Some(orig) = pkt.atomic_ack_eth.map(|a| a.orig) else {
                    return;
                };
                let Some(index) = st.req.oldest_unfinished() else {
                    return;
                };
                let w = &mut st.req.sq[index];
                if !w.started
                    || w.first_psn != psn
                    || !matches!(w.op, SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. })
                {
                    return;
                }
                if sge::scatter(regions, self.pd, &w.sges, 0, &orig.to_ne_bytes()).is_err() {
                    let failed = (w.wr_id, w.opcode(), WcStatus::LocalProtectionError);
                    st.req.sq.remove(index);
                    self.fail(st, Some(failed));
                    return;
                }
                w.done = Some(WcStatus::Success);
                st.req.rd_atomic_out = st.req.rd_atomic_out.saturating_sub(1);
                st.req.acked_to(psn_add(psn, 1));
            }
            _ => return,
        }
        // Requests past a READ or atomic that the responder acknowledged
        // before its response came complete now.
        let received = st.req.received_to();
        acknowledge_through(st, psn_add(received, 0xff_ffff));
        self.retire(st);
        // Progress resets the retry budget and restarts the timer.
        if psn_diff(st.req.oldest_unacked(), before) > 0 {
            st.req.retries_left = st.req.retry_cnt_attr();
            st.req.retry_started = false;
            st.req.rearm();
        } else if st.req.sq.iter().all(|w| w.done.is_some() || !w.started) {
            st.req.timer = None;
        }
        if let Some(psn) = retry_from {
            st.req.retry(psn, mtu);
        }
    }
}

/// Acknowledges every PSN up to `psn`: SENDs and RDMA WRITEs that end
/// there are done, in order; the oldest unacknowledged PSN moves past
/// `psn`, but not past a READ or atomic still waiting for its response.
fn acknowledge_through(st: &mut QpState, psn: u32) {
    let mut limit = None;
    for w in st.req.sq.iter_mut() {
        if w.done.is_some() {
            continue;
        }
        // A request's PSNs are known once it started; an ACK at or past
        // its last one means every packet of it arrived, even if a go-back
        // is sending it again.
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
    st.req.acked_to(to);
}
