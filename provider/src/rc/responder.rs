//! The responder: carries out incoming requests in PSN order, answers
//! duplicates without doing them twice, and NAKs what it cannot do.
//!
//! A request that fails a check (key, range, right, a page that cannot be
//! made present) is NAKed with a remote access error before any memory is
//! touched, and the queue pair goes to the error state, as in kernel rxe.

use std::collections::VecDeque;
use std::sync::Arc;

use super::psn::{psn_add, psn_diff};
use super::qp::{Peer, QpCore, QpState, bth, headers};
use super::sge::{self, SgeError};
use super::{Outbox, Regions};
use crate::verbs::{
    AccessFlags, AtomicOp, MrAccessError, MrInner, Sge, WcOpcode, WcStatus, WorkCompletion,
};
use crate::wire::{AethRepr, AtomicAckEthRepr, NakCode, Opcode, PacketRepr, RethRepr, Syndrome};

/// READ and atomic requests remembered for duplicates.
const RESOURCES: usize = 128;

/// A posted receive work request.
pub(crate) struct RecvWqe {
    pub(crate) wr_id: u64,
    pub(crate) sges: Vec<Sge>,
}

/// A READ or atomic request already carried out.
#[derive(Clone, Copy)]
enum Resource {
    Read { psn: u32, npsn: u32 },
    Atomic { psn: u32, orig: u64 },
}

/// A message arriving over several packets.
enum Inbound {
    /// A SEND filling a receive request.
    Send { wqe: RecvWqe, offset: u32 },
    /// An RDMA WRITE into a region.
    Write {
        mr: Arc<MrInner>,
        va: u64,
        remaining: u32,
        total: u32,
    },
}

/// The receive side of a queue pair.
#[derive(Default)]
pub(crate) struct Responder {
    pub(crate) rq: VecDeque<RecvWqe>,
    epsn: u32,
    msn: u32,
    inbound: Option<Inbound>,
    resources: VecDeque<Resource>,
    /// A PSN sequence NAK was sent for `epsn` (send one per gap).
    nak_sent: bool,
}

impl Responder {
    pub(crate) fn reset(&mut self, epsn: u32) {
        self.epsn = epsn;
        self.msn = 0;
        self.inbound = None;
        self.resources.clear();
        self.nak_sent = false;
    }

    pub(crate) fn drain(&mut self) -> Vec<u64> {
        let mut ids: Vec<u64> = Vec::new();
        if let Some(Inbound::Send { wqe, .. }) = self.inbound.take() {
            ids.push(wqe.wr_id);
        }
        ids.extend(self.rq.drain(..).map(|w| w.wr_id));
        ids
    }

    fn remember(&mut self, r: Resource) {
        if self.resources.len() == RESOURCES {
            self.resources.pop_front();
        }
        self.resources.push_back(r);
    }
}

/// Why a request is refused.
enum Refusal {
    /// No receive request posted: RNR NAK, try again later.
    NotReady,
    Nak(NakCode),
}

impl From<MrAccessError> for Refusal {
    fn from(e: MrAccessError) -> Self {
        match e {
            MrAccessError::Misaligned => Refusal::Nak(NakCode::InvalidRequest),
            MrAccessError::Protection | MrAccessError::Fault => {
                Refusal::Nak(NakCode::RemoteAccessError)
            }
        }
    }
}

fn ack(peer: &Peer, opcode: Opcode, psn: u32, syndrome: Syndrome, msn: u32) -> PacketRepr<'static> {
    let mut h = headers(bth(peer, opcode, psn, 0, false));
    h.aeth = Some(AethRepr::new(syndrome, msn));
    h
}

impl QpCore {
    /// Handles a request packet.
    pub(crate) fn respond(
        &self,
        st: &mut QpState,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) {
        let Some(peer) = st.peer else { return };
        let psn = pkt.bth.psn;
        let d = psn_diff(psn, st.resp.epsn);
        if d > 0 {
            // A gap: ask for the missing PSN once, drop until it comes.
            if !st.resp.nak_sent {
                st.resp.nak_sent = true;
                let h = ack(
                    &peer,
                    Opcode::RC_ACKNOWLEDGE,
                    st.resp.epsn,
                    Syndrome::Nak(NakCode::PsnSequenceError),
                    st.resp.msn,
                );
                push(out, &peer, &h);
            }
            return;
        }
        if d < 0 {
            self.duplicate(st, regions, pkt, out);
            return;
        }
        match self.carry_out(st, regions, pkt, out) {
            Ok(()) => st.resp.nak_sent = false,
            Err(Refusal::NotReady) => {
                let timer = st.attrs.min_rnr_timer;
                let h = ack(
                    &peer,
                    Opcode::RC_ACKNOWLEDGE,
                    psn,
                    Syndrome::RnrNak { timer },
                    st.resp.msn,
                );
                push(out, &peer, &h);
            }
            Err(Refusal::Nak(code)) => {
                let h = ack(
                    &peer,
                    Opcode::RC_ACKNOWLEDGE,
                    psn,
                    Syndrome::Nak(code),
                    st.resp.msn,
                );
                push(out, &peer, &h);
                // A receive request being filled completes with the error.
                if let Some(Inbound::Send { wqe, offset }) = st.resp.inbound.take() {
                    self.recv_cq.push(WorkCompletion {
                        wr_id: wqe.wr_id,
                        status: if matches!(code, NakCode::InvalidRequest) {
                            WcStatus::LocalLengthError
                        } else {
                            WcStatus::LocalProtectionError
                        },
                        opcode: WcOpcode::Recv,
                        byte_len: offset,
                        imm_data: None,
                        qp_num: self.qpn,
                    });
                }
                self.fail(st, None);
            }
        }
    }

    /// Carries out the request at the expected PSN.
    fn carry_out(
        &self,
        st: &mut QpState,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) -> Result<(), Refusal> {
        let Some(peer) = st.peer else { return Ok(()) };
        let mtu = peer.mtu;
        let op = pkt.bth.opcode;
        let len = pkt.payload.len();
        let (first, last) = (op.is_first(), op.is_last());
        // Segment lengths: FIRST and MIDDLE are exactly one MTU.
        let sized = match (first, last) {
            (true, true) => len <= mtu,
            (false, true) => len <= mtu,
            _ => len == mtu,
        };
        match op {
            Opcode::RC_SEND_FIRST
            | Opcode::RC_SEND_MIDDLE
            | Opcode::RC_SEND_LAST
            | Opcode::RC_SEND_LAST_WITH_IMMEDIATE
            | Opcode::RC_SEND_ONLY
            | Opcode::RC_SEND_ONLY_WITH_IMMEDIATE => {
                let continuing = matches!(st.resp.inbound, Some(Inbound::Send { .. }));
                if continuing == first || !sized {
                    return Err(Refusal::Nak(NakCode::InvalidRequest));
                }
                if first {
                    let wqe = st.resp.rq.pop_front().ok_or(Refusal::NotReady)?;
                    st.resp.inbound = Some(Inbound::Send { wqe, offset: 0 });
                }
                let Some(Inbound::Send { wqe, offset }) = &mut st.resp.inbound else {
                    return Err(Refusal::Nak(NakCode::InvalidRequest));
                };
                match sge::scatter(regions, self.pd, &wqe.sges, u64::from(*offset), pkt.payload) {
                    Ok(()) => *offset += len as u32,
                    Err(SgeError::Length) => return Err(Refusal::Nak(NakCode::InvalidRequest)),
                    Err(SgeError::Protection) => {
                        return Err(Refusal::Nak(NakCode::RemoteOperationalError));
                    }
                }
                if last && let Some(Inbound::Send { wqe, offset }) = st.resp.inbound.take() {
                    self.recv_cq.push(WorkCompletion {
                        wr_id: wqe.wr_id,
                        status: WcStatus::Success,
                        opcode: WcOpcode::Recv,
                        byte_len: offset,
                        imm_data: pkt.immdt,
                        qp_num: self.qpn,
                    });
                }
            }
            Opcode::RC_RDMA_WRITE_FIRST
            | Opcode::RC_RDMA_WRITE_MIDDLE
            | Opcode::RC_RDMA_WRITE_LAST
            | Opcode::RC_RDMA_WRITE_LAST_WITH_IMMEDIATE
            | Opcode::RC_RDMA_WRITE_ONLY
            | Opcode::RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE => {
                let continuing = matches!(st.resp.inbound, Some(Inbound::Write { .. }));
                if continuing == first || !sized {
                    return Err(Refusal::Nak(NakCode::InvalidRequest));
                }
                // WRITE with immediate consumes a receive request: make sure
                // one is there before writing anything.
                if last && pkt.immdt.is_some() && st.resp.rq.is_empty() {
                    return Err(Refusal::NotReady);
                }
                if first {
                    let reth = pkt.reth.ok_or(Refusal::Nak(NakCode::InvalidRequest))?;
                    let mr = self.remote_region(regions, reth, AccessFlags::REMOTE_WRITE)?;
                    st.resp.inbound = mr.map(|mr| Inbound::Write {
                        mr,
                        va: reth.va,
                        remaining: reth.len,
                        total: reth.len,
                    });
                    if st.resp.inbound.is_none() && len > 0 {
                        return Err(Refusal::Nak(NakCode::InvalidRequest));
                    }
                }
                let mut total = 0;
                if let Some(Inbound::Write {
                    mr,
                    va,
                    remaining,
                    total: t,
                }) = &mut st.resp.inbound
                {
                    if len as u32 > *remaining || (last && len as u32 != *remaining) {
                        return Err(Refusal::Nak(NakCode::InvalidRequest));
                    }
                    mr.write(*va, pkt.payload)?;
                    *va += len as u64;
                    *remaining -= len as u32;
                    total = *t;
                }
                if last {
                    st.resp.inbound = None;
                    if let Some(imm) = pkt.immdt {
                        let wqe = st.resp.rq.pop_front().ok_or(Refusal::NotReady)?;
                        self.recv_cq.push(WorkCompletion {
                            wr_id: wqe.wr_id,
                            status: WcStatus::Success,
                            opcode: WcOpcode::RecvRdmaWithImm,
                            byte_len: total,
                            imm_data: Some(imm),
                            qp_num: self.qpn,
                        });
                    }
                }
            }
            Opcode::RC_RDMA_READ_REQUEST => {
                if st.resp.inbound.is_some() {
                    return Err(Refusal::Nak(NakCode::InvalidRequest));
                }
                let reth = pkt.reth.ok_or(Refusal::Nak(NakCode::InvalidRequest))?;
                let mr = self.remote_region(regions, reth, AccessFlags::REMOTE_READ)?;
                let npsn = self.read_response(
                    &peer,
                    pkt.bth.psn,
                    reth,
                    mr.as_deref(),
                    st.resp.msn + 1,
                    out,
                )?;
                st.resp.remember(Resource::Read {
                    psn: pkt.bth.psn,
                    npsn,
                });
                st.resp.epsn = psn_add(st.resp.epsn, npsn);
                st.resp.msn = (st.resp.msn + 1) & 0xff_ffff;
                return Ok(());
            }
            Opcode::RC_COMPARE_SWAP | Opcode::RC_FETCH_ADD => {
                if st.resp.inbound.is_some() {
                    return Err(Refusal::Nak(NakCode::InvalidRequest));
                }
                let a = pkt
                    .atomic_eth
                    .ok_or(Refusal::Nak(NakCode::InvalidRequest))?;
                let reth = RethRepr {
                    va: a.va,
                    rkey: a.rkey,
                    len: 8,
                };
                let mr = self
                    .remote_region(regions, reth, AccessFlags::REMOTE_ATOMIC)?
                    .ok_or(Refusal::Nak(NakCode::InvalidRequest))?;
                let atomic = if op == Opcode::RC_COMPARE_SWAP {
                    AtomicOp::CompareSwap {
                        compare: a.compare,
                        swap: a.swap_add,
                    }
                } else {
                    AtomicOp::FetchAdd { add: a.swap_add }
                };
                let orig = mr.atomic(a.va, atomic)?;
                st.resp.msn = (st.resp.msn + 1) & 0xff_ffff;
                let mut h = ack(
                    &peer,
                    Opcode::RC_ATOMIC_ACKNOWLEDGE,
                    pkt.bth.psn,
                    Syndrome::Ack { credits: 31 },
                    st.resp.msn,
                );
                h.atomic_ack_eth = Some(AtomicAckEthRepr { orig });
                push(out, &peer, &h);
                st.resp.remember(Resource::Atomic {
                    psn: pkt.bth.psn,
                    orig,
                });
                st.resp.epsn = psn_add(st.resp.epsn, 1);
                return Ok(());
            }
            _ => return Err(Refusal::Nak(NakCode::InvalidRequest)),
        }
        st.resp.epsn = psn_add(st.resp.epsn, 1);
        if last {
            st.resp.msn = (st.resp.msn + 1) & 0xff_ffff;
        }
        if pkt.bth.ack_req {
            let h = ack(
                &peer,
                Opcode::RC_ACKNOWLEDGE,
                pkt.bth.psn,
                Syndrome::Ack { credits: 31 },
                st.resp.msn,
            );
            push(out, &peer, &h);
        }
        Ok(())
    }

    /// The region a RETH names, checked for `need` over its whole range;
    /// `None` for a zero-length access (whose key is not checked, C9-88).
    fn remote_region(
        &self,
        regions: &dyn Regions,
        reth: RethRepr,
        need: AccessFlags,
    ) -> Result<Option<Arc<MrInner>>, Refusal> {
        if reth.len == 0 {
            return Ok(None);
        }
        let mr = regions
            .lookup_mr(reth.rkey)
            .ok_or(Refusal::Nak(NakCode::RemoteAccessError))?;
        mr.check(self.pd, reth.va, u64::from(reth.len), need)?;
        Ok(Some(mr))
    }

    /// Sends the responses to a READ of `reth` starting at `psn`; returns
    /// the PSNs they use. All memory is read first, so a fault NAKs the
    /// request instead of cutting a response short.
    fn read_response(
        &self,
        peer: &Peer,
        psn: u32,
        reth: RethRepr,
        mr: Option<&MrInner>,
        msn: u32,
        out: &mut Outbox,
    ) -> Result<u32, Refusal> {
        let mtu = peer.mtu;
        let total = reth.len as usize;
        let npsn = total.div_ceil(mtu).max(1) as u32;
        let start = out.len();
        for k in 0..npsn {
            let offset = k as usize * mtu;
            let seg = (total - offset).min(mtu);
            let opcode = match (k == 0, k + 1 == npsn) {
                (true, true) => Opcode::RC_RDMA_READ_RESPONSE_ONLY,
                (true, false) => Opcode::RC_RDMA_READ_RESPONSE_FIRST,
                (false, true) => Opcode::RC_RDMA_READ_RESPONSE_LAST,
                (false, false) => Opcode::RC_RDMA_READ_RESPONSE_MIDDLE,
            };
            let mut h = headers(bth(peer, opcode, psn_add(psn, k), seg, false));
            if opcode != Opcode::RC_RDMA_READ_RESPONSE_MIDDLE {
                h.aeth = Some(AethRepr::new(Syndrome::Ack { credits: 31 }, msn));
            }
            let va = reth.va + offset as u64;
            let packet = out.push(peer.addr, &h, seg, |buf| match mr {
                Some(mr) => mr.read(va, buf),
                None => Ok(()),
            });
            match packet {
                Ok(()) => {}
                Err(e) => {
                    out.truncate(start);
                    return Err(e.into());
                }
            }
        }
        Ok(npsn)
    }

    /// Answers a request whose PSN was already handled: SENDs and WRITEs
    /// are acknowledged again, READs answered again from memory, atomics
    /// answered with the value they returned the first time.
    fn duplicate(
        &self,
        st: &mut QpState,
        regions: &dyn Regions,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) {
        let Some(peer) = st.peer else { return };
        let psn = pkt.bth.psn;
        match pkt.bth.opcode {
            Opcode::RC_RDMA_READ_REQUEST => {
                let Some(reth) = pkt.reth else { return };
                // The request may resume a READ in its middle; its PSN lies
                // within a remembered one's range.
                let known = st.resp.resources.iter().any(|r| match *r {
                    Resource::Read { psn: p, npsn } => {
                        psn_diff(psn, p) >= 0 && psn_diff(psn, psn_add(p, npsn)) < 0
                    }
                    Resource::Atomic { .. } => false,
                });
                if !known {
                    return;
                }
                let Ok(mr) = self.remote_region(regions, reth, AccessFlags::REMOTE_READ) else {
                    return;
                };
                let msn = st.resp.msn;
                let _ = self.read_response(&peer, psn, reth, mr.as_deref(), msn, out);
            }
            Opcode::RC_COMPARE_SWAP | Opcode::RC_FETCH_ADD => {
                let orig = st.resp.resources.iter().find_map(|r| match *r {
                    Resource::Atomic { psn: p, orig } if p == psn => Some(orig),
                    _ => None,
                });
                if let Some(orig) = orig {
                    let mut h = ack(
                        &peer,
                        Opcode::RC_ATOMIC_ACKNOWLEDGE,
                        psn,
                        Syndrome::Ack { credits: 31 },
                        st.resp.msn,
                    );
                    h.atomic_ack_eth = Some(AtomicAckEthRepr { orig });
                    push(out, &peer, &h);
                }
            }
            _ => {
                let last = psn_add(st.resp.epsn, 0xff_ffff);
                let h = ack(
                    &peer,
                    Opcode::RC_ACKNOWLEDGE,
                    last,
                    Syndrome::Ack { credits: 31 },
                    st.resp.msn,
                );
                push(out, &peer, &h);
            }
        }
    }

    /// Queues receive work requests.
    pub(crate) fn post_recv(
        &self,
        wrs: &[crate::verbs::RecvWr<'_>],
    ) -> Result<(), crate::verbs::VerbsError> {
        let mut st = self.lock();
        if st.kind == super::QpStateKind::Reset {
            return Err(super::qp::bad_state(st.kind, "post receive requests"));
        }
        if st.resp.rq.len() + wrs.len() > self.max_recv_wr {
            return Err(crate::verbs::VerbsError::QueueFull("receive"));
        }
        for wr in wrs {
            st.resp.rq.push_back(RecvWqe {
                wr_id: wr.wr_id,
                sges: wr.sg_list.to_vec(),
            });
        }
        if st.kind == super::QpStateKind::Error {
            self.fail(&mut st, None);
        }
        Ok(())
    }
}

/// Queues a header-only response; plain ACKs coalesce (see
/// [`Outbox::push_ack`]).
fn push(out: &mut Outbox, peer: &Peer, h: &PacketRepr<'_>) {
    let plain_ack = h.bth.opcode == Opcode::RC_ACKNOWLEDGE
        && h.aeth
            .is_some_and(|a| matches!(a.decode(), Syndrome::Ack { .. }));
    if plain_ack {
        out.push_ack(peer.addr, h);
    } else {
        out.push_headers(peer.addr, h);
    }
}
