//! rxe's `read_reply`: the responses to a READ, produced a bounded number
//! at a time and resumed by the device's progress loop as the send path
//! takes them, so that no READ, however long (up to 2^31 bytes, 2^23 PSNs
//! at MTU 256), costs the responder more than one budget of packets per
//! step. Requests that arrive meanwhile are held, in order and bounded.

use super::psn::psn_add;
use super::qp::{Peer, QpCore, QpLocked, bth, headers};
use super::responder::{INVALID, Refusal, Resource};
use super::{AccessFlags, Outbox, QpState, Region, RegionError, Regions};
use crate::wire::{AethRepr, NakCode, Opcode, PacketRepr, RethRepr, Syndrome};

/// READ response packets produced per call of [`QpCore::read_reply`]:
/// at most 64 packets (256 KiB at MTU 4096) are built before the device
/// sends them and serves other queue pairs.
pub(crate) const READ_REPLY_BUDGET: usize = 64;
/// Requests held while a READ is being answered (twice the requester's
/// window); more are dropped, and the requester sends them again.
const HELD_LIMIT: usize = 256;

/// The READ being answered: what is left to send (rxe's `res->read`).
#[derive(Clone, Copy)]
pub(super) struct ReadReply {
    pub(super) rkey: u32,
    pub(super) va: u64,
    pub(super) remaining: u32,
    /// PSN of the next response.
    pub(super) psn: u32,
    /// Whether the next response is the first of the reply.
    pub(super) first: bool,
    pub(super) msn: u32,
}

impl ReadReply {
    /// A reply to the READ described by `reth`, from response PSN `psn`,
    /// acknowledging MSN `msn`.
    pub(super) fn new(reth: RethRepr, psn: u32, msn: u32) -> Self {
        Self {
            rkey: reth.rkey,
            va: reth.va,
            remaining: reth.len,
            psn,
            first: true,
            msn,
        }
    }
}

impl QpCore {
    /// Continues the READ reply in progress, if any (called by the device
    /// between receive batches); returns whether one is still in progress.
    pub(crate) fn continue_reply(&self, regions: &dyn Regions, out: &mut Outbox) -> bool {
        let mut st = self.lock();
        if st.resp.replying() && matches!(st.kind, QpState::Rtr | QpState::Rts) {
            self.read_reply(&mut st, regions, out);
        }
        st.resp.replying()
    }

    /// A READ request: check_rkey, remember it, and set up the reply that
    /// [`Self::read_reply`] produces. Its PSNs are taken at once.
    pub(super) fn start_read_reply(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
    ) -> Result<(), Refusal> {
        let reth = pkt.reth.ok_or(INVALID)?;
        if reth.len > 0 {
            self.check_rkey(regions, reth, AccessFlags::REMOTE_READ)?;
        }
        let mtu = st.peer.map_or(256, |p| p.mtu) as u32;
        let npsn = reth.len.div_ceil(mtu).max(1);
        let psn = pkt.bth.psn;
        let msn = st.resp.next_msn();
        st.resp.remember(Resource::Read { psn, npsn });
        st.resp.epsn = psn_add(psn, npsn);
        st.resp.read_reply = Some(ReadReply::new(reth, psn, msn));
        Ok(())
    }

    /// read_reply: produces up to [`READ_REPLY_BUDGET`] responses of the
    /// READ being answered. When the reply is complete, the requests held
    /// meanwhile run in order. A region that vanished or a page that cannot
    /// be read NAKs the READ at the response's PSN (remote access error),
    /// as rxe's `read_reply` does.
    pub(crate) fn read_reply(&self, st: &mut QpLocked, regions: &dyn Regions, out: &mut Outbox) {
        let Some(peer) = st.peer else { return };
        let Some(mut reply) = st.resp.read_reply else {
            return;
        };
        let mr = (reply.remaining > 0)
            .then(|| regions.lookup_mr(reply.rkey))
            .flatten();
        if reply.remaining > 0 && mr.is_none() {
            st.resp.read_reply = None;
            return self.error_nak(st, &peer, reply.psn, NakCode::RemoteAccessError, out);
        }
        for _ in 0..READ_REPLY_BUDGET {
            let seg = reply.remaining.min(peer.mtu as u32);
            let last = seg == reply.remaining;
            let packet = read_response(&peer, &reply, last, mr, seg as usize, out);
            if let Err(e) = packet {
                st.resp.read_reply = None;
                let Refusal::Nak(code) = Refusal::from(e) else {
                    return;
                };
                return self.error_nak(st, &peer, reply.psn, code, out);
            }
            reply.va += u64::from(seg);
            reply.remaining -= seg;
            reply.psn = psn_add(reply.psn, 1);
            reply.first = false;
            if last {
                st.resp.read_reply = None;
                return self.run_held(st, regions, out);
            }
        }
        st.resp.read_reply = Some(reply);
    }

    /// Runs the requests held during a READ reply, in order, until another
    /// READ reply starts (the rest stay held; the next call of
    /// [`Self::read_reply`] answers it).
    fn run_held(&self, st: &mut QpLocked, regions: &dyn Regions, out: &mut Outbox) {
        while !st.resp.replying() {
            let Some(bytes) = st.resp.held.pop_front() else {
                return;
            };
            if let Ok(pkt) = PacketRepr::parse(&bytes) {
                self.respond_one(st, regions, &pkt, out);
            }
        }
    }
}

/// Keeps a request that arrived during a READ reply for later, or drops it
/// when the queue is full (the requester sends it again).
pub(super) fn hold(st: &mut QpLocked, pkt: &PacketRepr<'_>) {
    if st.resp.held.len() >= HELD_LIMIT {
        return;
    }
    // A parsed packet is valid, so its length is known.
    let Ok(len) = pkt.len() else { return };
    let mut bytes = vec![0u8; len];
    if pkt.emit(&mut bytes).is_ok() {
        st.resp.held.push_back(bytes);
    }
}

/// Queues the next response of `reply` (`seg` bytes read from `mr`).
fn read_response(
    peer: &Peer,
    reply: &ReadReply,
    last: bool,
    mr: Option<&dyn Region>,
    seg: usize,
    out: &mut Outbox,
) -> Result<(), RegionError> {
    let opcode = match (reply.first, last) {
        (true, true) => Opcode::RC_RDMA_READ_RESPONSE_ONLY,
        (true, false) => Opcode::RC_RDMA_READ_RESPONSE_FIRST,
        (false, true) => Opcode::RC_RDMA_READ_RESPONSE_LAST,
        (false, false) => Opcode::RC_RDMA_READ_RESPONSE_MIDDLE,
    };
    let mut h = headers(bth(peer, opcode, reply.psn, seg, false));
    if opcode != Opcode::RC_RDMA_READ_RESPONSE_MIDDLE {
        h.aeth = Some(AethRepr::new(Syndrome::Ack { credits: 31 }, reply.msn));
    }
    let va = reply.va;
    out.push(peer, &h, seg, |buf| match mr {
        Some(mr) => mr.read(va, buf),
        None => Ok(()),
    })
}
