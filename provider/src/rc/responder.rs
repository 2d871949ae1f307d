//! The responder: carries out incoming requests in PSN order, answers
//! duplicates without doing them twice, and NAKs what it cannot do. Its
//! steps are those of rxe's `rxe_resp.c`, under the same names:
//! [`check_psn`](QpCore::check_psn), `check_op_seq`, `check_op_valid`,
//! `check_resource`, `check_length`, `check_rkey`, then `execute`
//! (`write_data` / `send_data` / `atomic_reply` / `start_read_reply`),
//! `acknowledge`, `duplicate_request`, and the error path
//! ([`Refusal`] -> NAK, queue pair to error).
//!
//! Bounded by construction, whatever the peer sends:
//! - a READ is answered by `read_reply` ([`super::read_reply`]) a bounded
//!   number of packets at a time, resumed by the device's
//!   progress loop as the send path takes them; requests that arrive
//!   meanwhile wait in a bounded queue and run in order
//!   once the reply is out;
//! - a multi-packet WRITE keeps the region's key, not the region: every
//!   packet looks the region up again, so deregistering it never waits for
//!   a peer, and the packets of a message whose region is gone get a
//!   remote access NAK.
//!
//! A request that fails a check (key, range, right, a page that cannot be
//! made present) is NAKed before memory is touched where the check allows
//! it, and the queue pair goes to the error state, as in kernel rxe.

use std::collections::VecDeque;

use super::psn::{psn_add, psn_diff};
use super::qp::{Peer, QpCore, QpLocked, bth, headers};
use super::read_reply::{ReadReply, hold};
use super::sge::{self, SgeError, Sges};
use super::{
    AccessFlags, AtomicOp, Outbox, Region, RegionError, Regions, WcOpcode, WcStatus, WorkCompletion,
};
use crate::wire::{AethRepr, AtomicAckEthRepr, NakCode, Opcode, PacketRepr, RethRepr, Syndrome};

/// READ and atomic requests remembered for duplicates.
const RESOURCES: usize = 128;
/// The largest message an RETH may describe (IBTA: 2^31 bytes).
const MAX_MESSAGE: u32 = 1 << 31;

/// A posted receive work request.
pub(crate) struct RecvWqe {
    pub(crate) wr_id: u64,
    pub(crate) sges: Sges,
}

/// A READ or atomic request already carried out (rxe's `resp_res`).
#[derive(Clone, Copy)]
pub(super) enum Resource {
    Read { psn: u32, npsn: u32 },
    Atomic { psn: u32, orig: u64 },
}

impl Resource {
    /// Whether `psn` lies within the PSNs of a READ (unsigned distance, so
    /// a READ of 2^23 PSNs, the largest at MTU 256, still compares right).
    fn read_covers(&self, psn: u32) -> bool {
        match *self {
            Resource::Read { psn: first, npsn } => psn.wrapping_sub(first) & 0xff_ffff < npsn,
            Resource::Atomic { .. } => false,
        }
    }
}

/// A message arriving over several packets.
enum Inbound {
    /// A SEND filling a receive request.
    Send { wqe: RecvWqe, offset: u32 },
    /// An RDMA WRITE into the region with key `rkey` (looked up again for
    /// every packet).
    Write {
        rkey: u32,
        va: u64,
        remaining: u32,
        total: u32,
    },
}

/// The receive side of a queue pair.
#[derive(Default)]
pub(crate) struct Responder {
    pub(crate) rq: VecDeque<RecvWqe>,
    pub(super) epsn: u32,
    pub(super) msn: u32,
    inbound: Option<Inbound>,
    pub(super) resources: VecDeque<Resource>,
    /// A PSN sequence NAK was sent for `epsn` (send one per gap).
    nak_sent: bool,
    pub(super) read_reply: Option<ReadReply>,
    /// Requests that arrived during a READ reply, as packet bytes.
    pub(super) held: VecDeque<Vec<u8>>,
}

impl Responder {
    pub(crate) fn reset(&mut self, epsn: u32) {
        self.epsn = epsn;
        self.msn = 0;
        self.inbound = None;
        self.resources.clear();
        self.nak_sent = false;
        self.read_reply = None;
        self.held.clear();
    }

    pub(crate) fn drain(&mut self) -> Vec<u64> {
        self.read_reply = None;
        self.held.clear();
        let mut ids: Vec<u64> = Vec::new();
        if let Some(Inbound::Send { wqe, .. }) = self.inbound.take() {
            ids.push(wqe.wr_id);
        }
        ids.extend(self.rq.drain(..).map(|w| w.wr_id));
        ids
    }

    /// Whether a READ reply has responses left to produce.
    pub(crate) fn replying(&self) -> bool {
        self.read_reply.is_some()
    }

    pub(super) fn remember(&mut self, r: Resource) {
        if self.resources.len() == RESOURCES {
            self.resources.pop_front();
        }
        self.resources.push_back(r);
    }

    pub(super) fn next_msn(&mut self) -> u32 {
        self.msn = (self.msn + 1) & 0xff_ffff;
        self.msn
    }
}

/// Why a request is refused (rxe's error states).
pub(super) enum Refusal {
    /// No receive request posted: RNR NAK, try again later.
    NotReady,
    Nak(NakCode),
}

impl From<RegionError> for Refusal {
    fn from(e: RegionError) -> Self {
        match e {
            RegionError::Misaligned => Refusal::Nak(NakCode::InvalidRequest),
            RegionError::Protection | RegionError::Fault => {
                Refusal::Nak(NakCode::RemoteAccessError)
            }
        }
    }
}

pub(super) const INVALID: Refusal = Refusal::Nak(NakCode::InvalidRequest);
pub(super) const ACCESS: Refusal = Refusal::Nak(NakCode::RemoteAccessError);

fn ack(peer: &Peer, opcode: Opcode, psn: u32, syndrome: Syndrome, msn: u32) -> PacketRepr<'static> {
    let mut h = headers(bth(peer, opcode, psn, 0, false));
    h.aeth = Some(AethRepr::new(syndrome, msn));
    h
}

/// Where a request packet stands against the expected PSN.
enum PsnCheck {
    Expected,
    Duplicate,
    Gap,
}

impl QpCore {
    /// Handles a request packet.
    pub(crate) fn respond(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) {
        let replying = st.resp.replying();
        self.respond_one(st, regions, pkt, out);
        if !replying && st.resp.replying() {
            // Answer what fits now; the device's progress loop resumes it.
            self.read_reply(st, regions, out);
        }
    }

    /// Handles a request packet without producing READ responses.
    pub(super) fn respond_one(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) {
        let Some(peer) = st.peer else { return };
        match self.check_psn(st, pkt) {
            PsnCheck::Gap => self.nak_gap_once(st, &peer, out),
            PsnCheck::Duplicate => self.duplicate_request(st, regions, pkt, out),
            PsnCheck::Expected if st.resp.replying() => hold(st, pkt),
            PsnCheck::Expected => self.execute_request(st, regions, &peer, pkt, out),
        }
    }

    /// Runs the checks and the operation of the request at the expected
    /// PSN, and answers it.
    fn execute_request(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        peer: &Peer,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) {
        let result = check_op_seq(st, pkt)
            .and_then(|()| check_op_valid(pkt))
            .and_then(|()| check_resource(st, pkt))
            .and_then(|()| check_length(peer, pkt))
            .and_then(|()| self.execute(st, regions, peer, pkt, out));
        match result {
            Ok(()) => st.resp.nak_sent = false,
            Err(Refusal::NotReady) => {
                let timer = st.attrs.min_rnr_timer;
                let syndrome = Syndrome::RnrNak { timer };
                send_ack(out, peer, pkt.bth.psn, syndrome, st.resp.msn);
            }
            Err(Refusal::Nak(code)) => self.error_nak(st, peer, pkt.bth.psn, code, out),
        }
    }

    /// check_psn: expected, duplicate (already done) or ahead (a gap).
    fn check_psn(&self, st: &QpLocked, pkt: &PacketRepr<'_>) -> PsnCheck {
        match psn_diff(pkt.bth.psn, st.resp.epsn) {
            0 => PsnCheck::Expected,
            d if d < 0 => PsnCheck::Duplicate,
            _ => PsnCheck::Gap,
        }
    }

    /// A gap: ask for the missing PSN once, drop until it comes.
    fn nak_gap_once(&self, st: &mut QpLocked, peer: &Peer, out: &mut Outbox) {
        if st.resp.nak_sent {
            return;
        }
        st.resp.nak_sent = true;
        let syndrome = Syndrome::Nak(NakCode::PsnSequenceError);
        send_ack(out, peer, st.resp.epsn, syndrome, st.resp.msn);
    }

    /// The error path: NAK `psn` with `code`; a receive request being
    /// filled completes with the error, and the queue pair fails.
    pub(super) fn error_nak(
        &self,
        st: &mut QpLocked,
        peer: &Peer,
        psn: u32,
        code: NakCode,
        out: &mut Outbox,
    ) {
        send_ack(out, peer, psn, Syndrome::Nak(code), st.resp.msn);
        if let Some(Inbound::Send { wqe, offset }) = st.resp.inbound.take() {
            let status = match code {
                NakCode::InvalidRequest => WcStatus::LocalLengthError,
                _ => WcStatus::LocalProtectionError,
            };
            out.complete_after_send(
                &self.recv_cq,
                WorkCompletion {
                    wr_id: wqe.wr_id,
                    status,
                    opcode: WcOpcode::Recv,
                    byte_len: offset,
                    imm_data: None,
                    qp_num: self.qpn,
                },
            );
        }
        self.fail(st, None);
    }

    /// execute: the operation itself, then its acknowledgement.
    fn execute(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        peer: &Peer,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) -> Result<(), Refusal> {
        match pkt.bth.opcode {
            Opcode::RC_RDMA_READ_REQUEST => return self.start_read_reply(st, regions, pkt),
            Opcode::RC_COMPARE_SWAP | Opcode::RC_FETCH_ADD => {
                return self.atomic_reply(st, regions, peer, pkt, out);
            }
            op if is_write(op) => self.write_data(st, regions, pkt, out)?,
            _ => self.send_data(st, regions, pkt, out)?,
        }
        self.acknowledge(st, peer, pkt, out);
        Ok(())
    }

    /// A SEND packet: scatter it into the receive request; the last one
    /// completes it.
    fn send_data(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) -> Result<(), Refusal> {
        if pkt.bth.opcode.is_first() {
            let wqe = st.resp.rq.pop_front().ok_or(Refusal::NotReady)?;
            st.resp.inbound = Some(Inbound::Send { wqe, offset: 0 });
        }
        let Some(Inbound::Send { wqe, offset }) = &mut st.resp.inbound else {
            return Err(INVALID);
        };
        match sge::scatter(regions, self.pd, &wqe.sges, u64::from(*offset), pkt.payload) {
            Ok(()) => *offset += pkt.payload.len() as u32,
            Err(SgeError::Length) => return Err(INVALID),
            Err(SgeError::Protection) => return Err(Refusal::Nak(NakCode::RemoteOperationalError)),
        }
        if pkt.bth.opcode.is_last()
            && let Some(Inbound::Send { wqe, offset }) = st.resp.inbound.take()
        {
            out.complete_after_send(
                &self.recv_cq,
                WorkCompletion {
                    wr_id: wqe.wr_id,
                    status: WcStatus::Success,
                    opcode: WcOpcode::Recv,
                    byte_len: offset,
                    imm_data: pkt.immdt,
                    qp_num: self.qpn,
                },
            );
        }
        Ok(())
    }

    /// An RDMA WRITE packet: check_rkey for the first, then write. The
    /// region is looked up by key for every later packet (the first's check
    /// covers the whole RETH range, its own packet included).
    fn write_data(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) -> Result<(), Refusal> {
        let len = pkt.payload.len() as u32;
        let mut checked = None;
        if pkt.bth.opcode.is_first() {
            let reth = pkt.reth.ok_or(INVALID)?;
            // A zero-length WRITE names no region (C9-88): nothing to write.
            if reth.len == 0 {
                if len > 0 {
                    return Err(INVALID);
                }
                return self.complete_write_with_imm(st, pkt, 0, out);
            }
            checked = Some(self.check_rkey(regions, reth, AccessFlags::REMOTE_WRITE)?);
            st.resp.inbound = Some(Inbound::Write {
                rkey: reth.rkey,
                va: reth.va,
                remaining: reth.len,
                total: reth.len,
            });
        }
        let Some(Inbound::Write {
            rkey,
            va,
            remaining,
            total,
        }) = &mut st.resp.inbound
        else {
            return Err(INVALID);
        };
        let last = pkt.bth.opcode.is_last();
        if len > *remaining || (last && len != *remaining) {
            return Err(INVALID);
        }
        let mr = match checked {
            // The packet lies within the RETH range checked (len <= remaining).
            Some(mr) => mr,
            None => {
                let reth = RethRepr {
                    va: *va,
                    rkey: *rkey,
                    len,
                };
                self.check_rkey(regions, reth, AccessFlags::REMOTE_WRITE)?
            }
        };
        mr.write(*va, pkt.payload)?;
        *va += u64::from(len);
        *remaining -= len;
        let total = *total;
        if last {
            st.resp.inbound = None;
            self.complete_write_with_imm(st, pkt, total, out)?;
        }
        Ok(())
    }

    /// The last packet of a WRITE with immediate consumes a receive request
    /// (check_resource made sure there is one).
    fn complete_write_with_imm(
        &self,
        st: &mut QpLocked,
        pkt: &PacketRepr<'_>,
        total: u32,
        out: &mut Outbox,
    ) -> Result<(), Refusal> {
        let Some(imm) = pkt.immdt else { return Ok(()) };
        let wqe = st.resp.rq.pop_front().ok_or(Refusal::NotReady)?;
        out.complete_after_send(
            &self.recv_cq,
            WorkCompletion {
                wr_id: wqe.wr_id,
                status: WcStatus::Success,
                opcode: WcOpcode::RecvRdmaWithImm,
                byte_len: total,
                imm_data: Some(imm),
                qp_num: self.qpn,
            },
        );
        Ok(())
    }

    /// An atomic: run it once, remember its result for duplicates, answer
    /// with the original value.
    fn atomic_reply(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        peer: &Peer,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) -> Result<(), Refusal> {
        let a = pkt.atomic_eth.ok_or(INVALID)?;
        let reth = RethRepr {
            va: a.va,
            rkey: a.rkey,
            len: 8,
        };
        let mr = self.check_rkey(regions, reth, AccessFlags::REMOTE_ATOMIC)?;
        let op = if pkt.bth.opcode == Opcode::RC_COMPARE_SWAP {
            AtomicOp::CompareSwap {
                compare: a.compare,
                swap: a.swap_add,
            }
        } else {
            AtomicOp::FetchAdd { add: a.swap_add }
        };
        let orig = mr.atomic(a.va, op)?;
        let psn = pkt.bth.psn;
        let msn = st.resp.next_msn();
        send_atomic_ack(out, peer, psn, msn, orig);
        st.resp.remember(Resource::Atomic { psn, orig });
        st.resp.epsn = psn_add(psn, 1);
        Ok(())
    }

    /// check_rkey: the region `reth` names, checked for `need` over its
    /// whole range.
    pub(super) fn check_rkey<'r>(
        &self,
        regions: &'r dyn Regions,
        reth: RethRepr,
        need: AccessFlags,
    ) -> Result<&'r dyn Region, Refusal> {
        let mr = regions.lookup_mr(reth.rkey).ok_or(ACCESS)?;
        mr.check(self.pd, reth.va, u64::from(reth.len), need)?;
        Ok(mr)
    }

    /// acknowledge: the ACK a SEND or WRITE packet asked for. One that did
    /// not ask still brings an ACK queued for its queue pair (and not yet
    /// sent) up to its PSN: when it leaves, it covers everything handled,
    /// not only up to the last packet that asked (requesters ask once in
    /// many packets, see `Requester::ack_req`).
    fn acknowledge(&self, st: &mut QpLocked, peer: &Peer, pkt: &PacketRepr<'_>, out: &mut Outbox) {
        st.resp.epsn = psn_add(pkt.bth.psn, 1);
        if pkt.bth.opcode.is_last() {
            st.resp.next_msn();
        }
        let syndrome = Syndrome::Ack { credits: 31 };
        let h = ack(
            peer,
            Opcode::RC_ACKNOWLEDGE,
            pkt.bth.psn,
            syndrome,
            st.resp.msn,
        );
        if pkt.bth.ack_req {
            out.push_ack(peer, &h);
        } else {
            out.replace_ack(peer, &h);
        }
    }

    /// duplicate_request: SENDs and WRITEs are acknowledged again, READs
    /// answered again from memory (from the PSN asked for: the request may
    /// resume a READ in its middle, and replaces a reply in progress),
    /// atomics answered with the value they returned the first time.
    fn duplicate_request(
        &self,
        st: &mut QpLocked,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) {
        let Some(peer) = st.peer else { return };
        let psn = pkt.bth.psn;
        match pkt.bth.opcode {
            Opcode::RC_RDMA_READ_REQUEST => {
                let Some(reth) = pkt.reth else { return };
                if !st.resp.resources.iter().any(|r| r.read_covers(psn)) {
                    return;
                }
                if reth.len > 0
                    && self
                        .check_rkey(regions, reth, AccessFlags::REMOTE_READ)
                        .is_err()
                {
                    return;
                }
                st.resp.read_reply = Some(ReadReply::new(reth, psn, st.resp.msn));
                self.read_reply(st, regions, out);
            }
            Opcode::RC_COMPARE_SWAP | Opcode::RC_FETCH_ADD => {
                let orig = st.resp.resources.iter().find_map(|r| match *r {
                    Resource::Atomic { psn: p, orig } if p == psn => Some(orig),
                    _ => None,
                });
                if let Some(orig) = orig {
                    send_atomic_ack(out, &peer, psn, st.resp.msn, orig);
                }
            }
            _ => {
                let last = psn_add(st.resp.epsn, 0xff_ffff);
                let syndrome = Syndrome::Ack { credits: 31 };
                send_ack(out, &peer, last, syndrome, st.resp.msn);
            }
        }
    }

    /// Queues receive work requests.
    pub(crate) fn post_recv(&self, wrs: &[super::RecvWr<'_>]) -> Result<(), super::EngineError> {
        let mut st = self.lock();
        if st.kind == super::QpState::Reset {
            return Err(super::qp::bad_state(st.kind, "post receive requests"));
        }
        if st.resp.rq.len() + wrs.len() > self.max_recv_wr {
            return Err(super::EngineError::QueueFull("receive"));
        }
        for wr in wrs {
            st.resp.rq.push_back(RecvWqe {
                wr_id: wr.wr_id,
                sges: Sges::from_slice(wr.sg_list),
            });
        }
        if st.kind == super::QpState::Error {
            self.fail(&mut st, None);
        }
        Ok(())
    }
}

fn is_write(op: Opcode) -> bool {
    matches!(
        op,
        Opcode::RC_RDMA_WRITE_FIRST
            | Opcode::RC_RDMA_WRITE_MIDDLE
            | Opcode::RC_RDMA_WRITE_LAST
            | Opcode::RC_RDMA_WRITE_LAST_WITH_IMMEDIATE
            | Opcode::RC_RDMA_WRITE_ONLY
            | Opcode::RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE
    )
}

fn is_send(op: Opcode) -> bool {
    matches!(
        op,
        Opcode::RC_SEND_FIRST
            | Opcode::RC_SEND_MIDDLE
            | Opcode::RC_SEND_LAST
            | Opcode::RC_SEND_LAST_WITH_IMMEDIATE
            | Opcode::RC_SEND_ONLY
            | Opcode::RC_SEND_ONLY_WITH_IMMEDIATE
    )
}

/// check_op_seq: a FIRST or ONLY packet starts a message only when none is
/// in progress; a MIDDLE or LAST continues one of its own kind; READs and
/// atomics never interrupt a message.
fn check_op_seq(st: &QpLocked, pkt: &PacketRepr<'_>) -> Result<(), Refusal> {
    let op = pkt.bth.opcode;
    let continuing = match st.resp.inbound {
        None => None,
        Some(Inbound::Send { .. }) => Some(is_send(op)),
        Some(Inbound::Write { .. }) => Some(is_write(op)),
    };
    let ok = match continuing {
        None => op.is_first() || !(is_send(op) || is_write(op)),
        Some(same_kind) => same_kind && !op.is_first(),
    };
    if ok { Ok(()) } else { Err(INVALID) }
}

/// check_op_valid: the operations this responder carries out (SEND with
/// invalidate is not one of them).
fn check_op_valid(pkt: &PacketRepr<'_>) -> Result<(), Refusal> {
    let op = pkt.bth.opcode;
    let valid = is_send(op)
        || is_write(op)
        || matches!(
            op,
            Opcode::RC_RDMA_READ_REQUEST | Opcode::RC_COMPARE_SWAP | Opcode::RC_FETCH_ADD
        );
    if valid { Ok(()) } else { Err(INVALID) }
}

/// check_resource: a SEND needs a posted receive; so does a WRITE with
/// immediate, checked before anything is written.
fn check_resource(st: &QpLocked, pkt: &PacketRepr<'_>) -> Result<(), Refusal> {
    let op = pkt.bth.opcode;
    let needs_wqe = (is_send(op) && op.is_first()) || (is_write(op) && pkt.immdt.is_some());
    if needs_wqe && st.resp.rq.is_empty() {
        Err(Refusal::NotReady)
    } else {
        Ok(())
    }
}

/// check_length: FIRST and MIDDLE packets carry exactly one MTU, LAST and
/// ONLY at most one; no message exceeds 2^31 bytes.
fn check_length(peer: &Peer, pkt: &PacketRepr<'_>) -> Result<(), Refusal> {
    let op = pkt.bth.opcode;
    let len = pkt.payload.len();
    let sized = if op.is_last() || !(is_send(op) || is_write(op)) {
        len <= peer.mtu
    } else {
        len == peer.mtu
    };
    let message_ok = pkt.reth.is_none_or(|r| r.len <= MAX_MESSAGE);
    if sized && message_ok {
        Ok(())
    } else {
        Err(INVALID)
    }
}

/// Queues an RC ACKNOWLEDGE (ACK, NAK or RNR NAK) of `psn`.
fn send_ack(out: &mut Outbox, peer: &Peer, psn: u32, syndrome: Syndrome, msn: u32) {
    push(
        out,
        peer,
        &ack(peer, Opcode::RC_ACKNOWLEDGE, psn, syndrome, msn),
    );
}

fn send_atomic_ack(out: &mut Outbox, peer: &Peer, psn: u32, msn: u32, orig: u64) {
    let syndrome = Syndrome::Ack { credits: 31 };
    let mut h = ack(peer, Opcode::RC_ATOMIC_ACKNOWLEDGE, psn, syndrome, msn);
    h.atomic_ack_eth = Some(AtomicAckEthRepr { orig });
    push(out, peer, &h);
}

/// Queues a header-only response; plain ACKs coalesce (see
/// [`Outbox::push_ack`]).
fn push(out: &mut Outbox, peer: &Peer, h: &PacketRepr<'_>) {
    let plain_ack = h.bth.opcode == Opcode::RC_ACKNOWLEDGE
        && h.aeth
            .is_some_and(|a| matches!(a.decode(), Syndrome::Ack { .. }));
    if plain_ack {
        out.push_ack(peer, h);
    } else {
        out.push_headers(peer, h);
    }
}
