//! The requester's retries (rxe's `req_retry`, `retransmit_timer`,
//! `rnr_nak_timer`): going back to a PSN, the retransmit timeout and the
//! RNR wait, each within its retry budget.

use std::time::Instant;

use super::Requester;
use crate::rc::psn::{psn_add, psn_diff, rnr_delay};
use crate::rc::qp::{QpCore, QpLocked, QpState};
use crate::rc::{Outbox, Regions, SendOp, WcStatus};

impl Requester {
    /// A go-back asked for by a response (a NAK, an ACK past an unanswered
    /// READ or atomic, a gap in READ responses), unless one is already
    /// under way: see [`Self::retry_started`].
    pub(crate) fn retry(&mut self, psn: u32, mtu: usize) {
        if self.retry_started {
            return;
        }
        self.retry_started = true;
        self.req_retry(psn, mtu);
    }

    /// req_retry: moves the transmit position back to `psn` (go-back-N):
    /// every unfinished request from the one holding `psn` on is sent
    /// again, with the same PSNs.
    fn req_retry(&mut self, psn: u32, mtu: usize) {
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

    /// Whether an RNR wait holds transmission back. The clock is read only
    /// while one is pending; a wait that ended is cleared.
    pub(super) fn rnr_waiting(&mut self) -> bool {
        if let Some(until) = self.rnr_until {
            if self.clock.now() < until {
                return true;
            }
            self.rnr_until = None;
        }
        false
    }
}

impl QpCore {
    /// Runs expired timers: an RNR wait that ended (rxe's `rnr_nak_timer`),
    /// or a retransmit timeout (`retransmit_timer`).
    pub(crate) fn on_timer(&self, regions: &dyn Regions, now: Instant, out: &mut Outbox) {
        let mut st = self.lock();
        if st.kind != QpState::Rts {
            return;
        }
        let Some(mtu) = st.peer.map(|p| p.mtu) else {
            return;
        };
        if st.req.rnr_until.is_some_and(|t| t <= now) {
            st.req.rnr_until = None;
            self.run_requester(&mut st, regions, out);
        }
        if st.req.timer.is_some_and(|t| t <= now) {
            st.req.timer = None;
            self.retransmit_timeout(&mut st, regions, mtu, out);
        }
    }

    /// The retransmit timer expired: go back to the oldest unacknowledged
    /// PSN, or fail the oldest request when the retries are used up (7
    /// retries without limit, as rxe counts).
    fn retransmit_timeout(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        mtu: usize,
        out: &mut Outbox,
    ) {
        let oldest = st.req.oldest_unacked();
        if !st.req.sq.iter().any(|w| w.started && w.done.is_none()) {
            return;
        }
        if st.req.retries_left == 0 {
            let failed = st.req.take_failed(WcStatus::RetryExceeded);
            self.fail(st, failed);
            return;
        }
        if st.req.retry_cnt != 7 {
            st.req.retries_left -= 1;
        }
        st.req.retry_started = true;
        st.req.req_retry(oldest, mtu);
        self.run_requester(st, regions, out);
        st.req.rearm();
    }

    /// Handles an RNR NAK for `psn`: wait the time the peer asked for, then
    /// send from `psn` again; give up when the RNR retries are used up.
    pub(crate) fn rnr_wait(&self, st: &mut QpLocked, psn: u32, timer: u8) {
        let mtu = st.peer.map_or(256, |p| p.mtu);
        if st.req.rnr_left == 0 {
            let failed = st.req.take_failed(WcStatus::RnrRetryExceeded);
            self.fail(st, failed);
            return;
        }
        if st.req.rnr_retry != 7 {
            st.req.rnr_left -= 1;
        }
        st.req.req_retry(psn, mtu);
        st.req.rnr_until = Some(st.req.clock.now() + rnr_delay(timer));
        st.req.timer = None;
    }
}
