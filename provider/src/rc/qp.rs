//! One RC queue pair's state, its transitions and what both directions
//! share: building packets and moving to the error state.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::requester::Requester;
use super::responder::Responder;
use super::{CompletionSink, EngineError, WcOpcode, WcStatus, WorkCompletion};
use super::{Outbox, Regions};
use crate::wire::{BthRepr, Opcode, PacketRepr};

pub(crate) use super::error::QpState;

/// The partition key of the default partition, full membership (the only
/// entry of rxe's P_Key table).
pub(crate) const DEFAULT_PKEY: u16 = 0xffff;

/// The path of the connection: the other end, and what packets from it
/// must carry to be accepted (rxe's `check_addr` and `check_keys`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    /// Where packets go: the peer's address and UDP port.
    pub(crate) addr: SocketAddr,
    /// This end's address: received packets must be addressed to it.
    pub(crate) local: IpAddr,
    /// The UDP source port this end sends from (the flow's; see
    /// [`crate::wire::udp_source_port`]), or 0 for the device's own.
    pub(crate) source_port: u16,
    pub(crate) qpn: u32,
    pub(crate) mtu: usize,
    /// The queue pair's partition key.
    pub(crate) pkey: u16,
}

/// Why a packet addressed to a queue pair was dropped without an answer
/// (each is counted by the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RxDrop {
    /// The queue pair cannot take this packet in its state (RESET, INIT,
    /// ERROR; or a response before RTS).
    NotReady,
    /// The source or destination address is not the connection's.
    WrongAddress,
    /// The P_Key does not match the queue pair's partition.
    BadPkey,
}

/// Whether two P_Keys admit each other (IBTA 10.9.3): the same partition
/// (low 15 bits, not the invalid partition 0) and at least one full member
/// (high bit), as rxe's `pkey_match`.
pub(crate) fn pkey_match(a: u16, b: u16) -> bool {
    let partition = |k: u16| k & 0x7fff;
    partition(a) != 0 && partition(a) == partition(b) && (a | b) & 0x8000 != 0
}

/// Connection attributes set by the transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QpAttrs {
    /// First PSN the responder expects.
    pub(crate) rq_psn: u32,
    /// First PSN the requester sends.
    pub(crate) sq_psn: u32,
    /// Retransmit timeout exponent (0 = none).
    pub(crate) timeout: u8,
    /// Retries after a timeout (7 = unlimited, as rxe counts).
    pub(crate) retry_cnt: u8,
    /// Retries after RNR NAKs (7 = unlimited).
    pub(crate) rnr_retry: u8,
    /// RNR timer code this responder sends.
    pub(crate) min_rnr_timer: u8,
    /// READs and atomics the requester keeps outstanding.
    pub(crate) max_rd_atomic: u8,
}

/// Everything behind the queue pair's lock.
pub(crate) struct QpLocked {
    pub(crate) kind: QpState,
    pub(crate) peer: Option<Peer>,
    pub(crate) attrs: QpAttrs,
    pub(crate) req: Requester,
    pub(crate) resp: Responder,
}

/// A queue pair as the device and the API share it.
pub(crate) struct QpCore {
    pub(crate) qpn: u32,
    pub(crate) pd: u32,
    pub(crate) send_cq: Arc<dyn CompletionSink>,
    pub(crate) recv_cq: Arc<dyn CompletionSink>,
    pub(crate) max_send_wr: usize,
    pub(crate) max_recv_wr: usize,
    pub(crate) state: Mutex<QpLocked>,
    /// Held from building requester packets until they are on the socket,
    /// by whichever thread builds them (the poster, or the device's thread
    /// on an acknowledgement or a timeout), so that they leave in PSN
    /// order. Taken before `state`, never while holding it.
    pub(crate) send_order: Mutex<()>,
}

impl QpCore {
    pub(crate) fn new(
        qpn: u32,
        pd: u32,
        send_cq: Arc<dyn CompletionSink>,
        recv_cq: Arc<dyn CompletionSink>,
        max_send_wr: usize,
        max_recv_wr: usize,
    ) -> QpCore {
        QpCore {
            qpn,
            pd,
            send_cq,
            recv_cq,
            max_send_wr,
            max_recv_wr,
            send_order: Mutex::new(()),
            state: Mutex::new(QpLocked {
                kind: QpState::Reset,
                peer: None,
                attrs: QpAttrs {
                    rq_psn: 0,
                    sq_psn: 0,
                    timeout: 14,
                    retry_cnt: 7,
                    rnr_retry: 7,
                    min_rnr_timer: 12,
                    max_rd_atomic: 16,
                },
                req: Requester::default(),
                resp: Responder::default(),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, QpLocked> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> QpState {
        self.lock().kind
    }

    /// RESET -> INIT.
    pub(crate) fn to_init(&self) -> Result<(), EngineError> {
        let mut st = self.lock();
        if st.kind != QpState::Reset {
            return Err(bad_state(st.kind, "move to INIT"));
        }
        st.kind = QpState::Init;
        Ok(())
    }

    /// INIT -> RTR: the peer and the first PSN to expect.
    pub(crate) fn to_rtr(
        &self,
        peer: Peer,
        rq_psn: u32,
        min_rnr_timer: u8,
    ) -> Result<(), EngineError> {
        let mut st = self.lock();
        if st.kind != QpState::Init {
            return Err(bad_state(st.kind, "move to RTR"));
        }
        st.peer = Some(peer);
        st.attrs.rq_psn = rq_psn & super::PSN_MASK;
        st.attrs.min_rnr_timer = min_rnr_timer & 0x1f;
        let rq_psn = st.attrs.rq_psn;
        st.resp.reset(rq_psn);
        st.kind = QpState::Rtr;
        Ok(())
    }

    /// RTR -> RTS: the first PSN to send and the retry attributes.
    pub(crate) fn to_rts(
        &self,
        sq_psn: u32,
        timeout: u8,
        retry_cnt: u8,
        rnr_retry: u8,
        max_rd_atomic: u8,
    ) -> Result<(), EngineError> {
        let mut st = self.lock();
        if st.kind != QpState::Rtr {
            return Err(bad_state(st.kind, "move to RTS"));
        }
        st.attrs.sq_psn = sq_psn & super::PSN_MASK;
        st.attrs.timeout = timeout.min(31);
        st.attrs.retry_cnt = retry_cnt.min(7);
        st.attrs.rnr_retry = rnr_retry.min(7);
        st.attrs.max_rd_atomic = max_rd_atomic.max(1);
        let attrs = st.attrs;
        st.req.reset(&attrs);
        st.kind = QpState::Rts;
        Ok(())
    }

    /// The queue pair's lock, held across [`ReceiveRun::receive`] of one
    /// received packet or several in a row.
    pub(crate) fn receive_run(&self) -> ReceiveRun<'_> {
        ReceiveRun {
            qp: self,
            st: self.lock(),
        }
    }

    /// The next time [`Self::on_timer`] has work, if any.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let st = self.lock();
        if st.kind != QpState::Rts {
            return None;
        }
        st.req.deadline()
    }

    /// Moves to the error state: requests already finished at the head of
    /// the send queue complete first, then `failed` with its own status,
    /// then every work request still queued with a flush error.
    pub(crate) fn fail(&self, st: &mut QpLocked, failed: Option<(u64, WcOpcode, WcStatus)>) {
        self.do_complete(st);
        if let Some((wr_id, opcode, status)) = failed {
            self.send_cq.push(WorkCompletion {
                wr_id,
                status,
                opcode,
                byte_len: 0,
                imm_data: None,
                qp_num: self.qpn,
            });
        }
        st.kind = QpState::Error;
        for (wr_id, opcode) in st.req.drain() {
            self.send_cq.push(flushed(wr_id, opcode, self.qpn));
        }
        for wr_id in st.resp.drain() {
            self.recv_cq.push(flushed(wr_id, WcOpcode::Recv, self.qpn));
        }
    }
}

/// Received packets of one queue pair handled in a row under one hold of
/// its lock, instead of two atomic instructions per packet (each waits for
/// the thread's earlier stores to drain). The run takes the locks one
/// packet's handling takes, in the same order; it keeps the queue pair's
/// other users (a poster, a timer) waiting until it is dropped, so it ends
/// before its holder sends anything. A single packet is a run of one.
pub(crate) struct ReceiveRun<'a> {
    qp: &'a QpCore,
    st: MutexGuard<'a, QpLocked>,
}

impl ReceiveRun<'_> {
    /// Handles one received packet addressed to the queue pair, sent from
    /// `src` to `dst`. Packets that fail the checks of rxe's `rxe_recv.c`
    /// (state, addresses, P_Key) are dropped silently, with the reason.
    pub(crate) fn receive(
        &mut self,
        regions: &dyn Regions,
        src: IpAddr,
        dst: IpAddr,
        pkt: &PacketRepr<'_>,
        out: &mut Outbox,
    ) -> Result<(), RxDrop> {
        let (qp, st) = (self.qp, &mut *self.st);
        let request = pkt.bth.opcode.is_request();
        check_state(st.kind, request)?;
        // Borrowed, not copied: a copy's narrow stores read back wide
        // stalled every packet.
        let peer = st.peer.as_ref().ok_or(RxDrop::NotReady)?;
        check_addr(peer, src, dst)?;
        check_keys(peer, pkt.bth.pkey)?;
        if request {
            qp.respond(st, regions, pkt, out);
        } else {
            qp.run_completer(st, regions, pkt);
            if st.req.resumes_on_response() {
                qp.run_requester(st, regions, out);
            }
        }
        Ok(())
    }

    /// Whether a READ reply is in progress (to be continued with
    /// [`QpCore::continue_reply`]).
    pub(crate) fn replying(&self) -> bool {
        self.st.resp.replying()
    }
}

/// Requests are served from RTR on, responses only in RTS.
fn check_state(kind: QpState, request: bool) -> Result<(), RxDrop> {
    let ready = match kind {
        QpState::Rtr => request,
        QpState::Rts => true,
        QpState::Reset | QpState::Init | QpState::Error => false,
    };
    if ready { Ok(()) } else { Err(RxDrop::NotReady) }
}

/// The packet must come from the peer's address to this end's (the UDP
/// source port is not checked: rxe varies it per queue pair).
fn check_addr(peer: &Peer, src: IpAddr, dst: IpAddr) -> Result<(), RxDrop> {
    let canonical = |ip: IpAddr| ip.to_canonical();
    if canonical(src) == canonical(peer.addr.ip()) && canonical(dst) == canonical(peer.local) {
        Ok(())
    } else {
        Err(RxDrop::WrongAddress)
    }
}

/// The packet's P_Key must admit the queue pair's.
fn check_keys(peer: &Peer, pkey: u16) -> Result<(), RxDrop> {
    if pkey_match(pkey, peer.pkey) {
        Ok(())
    } else {
        Err(RxDrop::BadPkey)
    }
}

fn flushed(wr_id: u64, opcode: WcOpcode, qpn: u32) -> WorkCompletion {
    WorkCompletion {
        wr_id,
        status: WcStatus::WrFlushError,
        opcode,
        byte_len: 0,
        imm_data: None,
        qp_num: qpn,
    }
}

pub(crate) fn bad_state(state: QpState, what: &'static str) -> EngineError {
    EngineError::BadState { state, what }
}

/// A BTH for a packet to `peer`.
pub(crate) fn bth(
    peer: &Peer,
    opcode: Opcode,
    psn: u32,
    payload_len: usize,
    ack_req: bool,
) -> BthRepr {
    BthRepr {
        pad: PacketRepr::pad_for(payload_len),
        ack_req,
        pkey: peer.pkey,
        ..BthRepr::new(opcode, peer.qpn, psn)
    }
}

/// Headers with no extended header and no payload set.
pub(crate) fn headers(bth: BthRepr) -> PacketRepr<'static> {
    PacketRepr::new(bth, &[])
}
