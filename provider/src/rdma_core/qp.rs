//! Reliable-connected queue pairs on a verbs device.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

use verbs_sys as sys;

use super::context::PORT;
use super::pod::Tracker;
use super::{RdmaCq, RdmaPd, check, convert, last_error};
use crate::pin_on_demand::InFlight;
use crate::{Mtu, QpState, RecvWr, RemoteInfo, RtsAttr, SendOp, SendWr, Sge, VerbsError};

/// The UDP port of RoCEv2, the only one a kernel device speaks to.
const ROCE_V2_PORT: u16 = 4791;

/// What a queue pair is created with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RdmaQpConfig {
    pub(crate) max_send_wr: u32,
    pub(crate) max_recv_wr: u32,
    pub(crate) psn: u32,
    pub(crate) rts: RtsAttr,
    pub(crate) min_rnr_timer: u8,
}

/// A queue pair (`ibv_qp`); it keeps its domain and queues alive.
pub(crate) struct RdmaQp {
    raw: NonNull<sys::ibv_qp>,
    config: RdmaQpConfig,
    /// SGEs per work request the queue pair was created with.
    max_sge: u32,
    /// The state as our transitions left it (the device may since have
    /// moved it to ERROR; [`Self::state`] asks the device).
    state: Mutex<QpState>,
    pub(crate) pd: Arc<RdmaPd>,
    /// Posted work requests whose completions have not been polled, with
    /// the pin-on-demand chunks they use.
    tracker: Arc<Tracker>,
    _send_cq: Arc<RdmaCq>,
    _recv_cq: Arc<RdmaCq>,
}

// SAFETY: verbs objects may be used from any thread (providers lock their
// queues); the pointer is freed only in Drop.
unsafe impl Send for RdmaQp {}
// SAFETY: as for Send.
unsafe impl Sync for RdmaQp {}

impl RdmaQp {
    /// Creates an RC queue pair in RESET.
    ///
    /// # Errors
    /// Queues above the device's limits; a failed verbs call.
    pub(crate) fn new(
        pd: &Arc<RdmaPd>,
        send_cq: &Arc<RdmaCq>,
        recv_cq: &Arc<RdmaCq>,
        config: RdmaQpConfig,
    ) -> Result<RdmaQp, VerbsError> {
        let limits = pd.ctx.limits;
        if config.max_send_wr > limits.max_qp_wr || config.max_recv_wr > limits.max_qp_wr {
            return Err(VerbsError::InvalidArgument(
                "queue size above the device's max_qp_wr",
            ));
        }
        let max_sge = limits.max_sge.clamp(1, 32);
        // SAFETY: plain data; zero is a valid value.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = send_cq.raw();
        init.recv_cq = recv_cq.raw();
        init.cap = sys::ibv_qp_cap {
            max_send_wr: config.max_send_wr,
            max_recv_wr: config.max_recv_wr,
            max_send_sge: max_sge,
            max_recv_sge: max_sge,
            max_inline_data: 0,
        };
        init.qp_type = sys::ibv_qp_type_IBV_QPT_RC;
        // SAFETY: a live domain and queues, and a filled init attribute.
        let raw = NonNull::new(unsafe { sys::ibv_create_qp(pd.raw(), &mut init) })
            .ok_or_else(|| last_error("ibv_create_qp"))?;
        let tracker = Arc::new(Tracker::default());
        // SAFETY: the queue pair is live; qp_num is set at creation.
        pd.ctx
            .completions
            .add_qp(unsafe { raw.as_ref().qp_num }, &tracker);
        Ok(RdmaQp {
            raw,
            config,
            max_sge,
            state: Mutex::new(QpState::Reset),
            tracker,
            pd: Arc::clone(pd),
            _send_cq: Arc::clone(send_cq),
            _recv_cq: Arc::clone(recv_cq),
        })
    }

    /// The queue pair number.
    pub(crate) fn qp_num(&self) -> u32 {
        // SAFETY: the queue pair is live; qp_num is set at creation.
        unsafe { self.raw.as_ref().qp_num }
    }

    /// The state, as the device reports it.
    pub(crate) fn state(&self) -> QpState {
        // SAFETY: plain data; zero is a valid value.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: plain data; zero is a valid value.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: a live queue pair and valid out-structs.
        let rc = unsafe {
            sys::ibv_query_qp(
                self.raw.as_ptr(),
                &mut attr,
                sys::ibv_qp_attr_mask_IBV_QP_STATE as i32,
                &mut init,
            )
        };
        if rc == 0 {
            convert::qp_state_from(attr.qp_state)
        } else {
            *self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// What a peer needs to connect: our RoCEv2 GID (IPv4-mapped if the
    /// device has one), QPN, PSN and port 4791.
    pub(crate) fn endpoint(&self, mtu: Mtu) -> RemoteInfo {
        let ctx = &self.pd.ctx;
        RemoteInfo {
            qp_num: self.qp_num(),
            psn: self.config.psn,
            gid: ctx
                .gid_v4
                .or(ctx.gid_v6)
                .map_or(crate::Gid([0; 16]), |e| e.gid),
            port: ROCE_V2_PORT,
            mtu,
        }
    }

    /// Moves from `from` to `to` with `attr` and `mask` (STATE added),
    /// refusing other starting states as the userspace device does.
    fn modify(
        &self,
        from: QpState,
        to: QpState,
        what: &'static str,
        mut attr: sys::ibv_qp_attr,
        mask: u32,
    ) -> Result<(), VerbsError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *state != from {
            return Err(VerbsError::BadState {
                state: *state,
                what,
            });
        }
        attr.qp_state = convert::qp_state(to);
        let mask = mask | sys::ibv_qp_attr_mask_IBV_QP_STATE;
        // SAFETY: a live queue pair and an attribute filled for `mask`.
        check("ibv_modify_qp", unsafe {
            sys::ibv_modify_qp(self.raw.as_ptr(), &mut attr, mask as i32)
        })?;
        *state = to;
        Ok(())
    }

    /// RESET -> INIT, granting peers every remote right (regions decide).
    pub(crate) fn to_init(&self) -> Result<(), VerbsError> {
        // SAFETY: plain data; zero is a valid value.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.pkey_index = 0;
        attr.port_num = PORT;
        attr.qp_access_flags = sys::ibv_access_flags_IBV_ACCESS_REMOTE_WRITE
            | sys::ibv_access_flags_IBV_ACCESS_REMOTE_READ
            | sys::ibv_access_flags_IBV_ACCESS_REMOTE_ATOMIC;
        let mask = sys::ibv_qp_attr_mask_IBV_QP_PKEY_INDEX
            | sys::ibv_qp_attr_mask_IBV_QP_PORT
            | sys::ibv_qp_attr_mask_IBV_QP_ACCESS_FLAGS;
        self.modify(QpState::Reset, QpState::Init, "move to INIT", attr, mask)
    }

    /// INIT -> RTR toward `remote`: a GRH address vector from our GID of
    /// the peer's address family.
    pub(crate) fn to_rtr(&self, remote: &RemoteInfo, min_rnr_timer: u8) -> Result<(), VerbsError> {
        if remote.port != 0 && remote.port != ROCE_V2_PORT {
            return Err(VerbsError::InvalidArgument(
                "a verbs device reaches peers on UDP port 4791 only",
            ));
        }
        let sgid = self
            .pd
            .ctx
            .gid_for(&remote.gid)
            .ok_or(VerbsError::InvalidArgument(
                "the device has no RoCEv2 GID of the peer's address family",
            ))?;
        // SAFETY: plain data; zero is a valid value.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.path_mtu = convert::mtu(remote.mtu);
        attr.dest_qp_num = remote.qp_num & 0xff_ffff;
        attr.rq_psn = remote.psn & 0xff_ffff;
        let rd_atom = self.pd.ctx.limits.max_qp_rd_atom.clamp(1, 255) as u8;
        attr.max_dest_rd_atomic = self.config.rts.max_rd_atomic.clamp(1, rd_atom);
        attr.min_rnr_timer = min_rnr_timer & 0x1f;
        attr.ah_attr.is_global = 1;
        attr.ah_attr.port_num = PORT;
        attr.ah_attr.grh.dgid.raw = remote.gid.0;
        attr.ah_attr.grh.sgid_index = sgid.index;
        attr.ah_attr.grh.hop_limit = 64;
        let mask = sys::ibv_qp_attr_mask_IBV_QP_AV
            | sys::ibv_qp_attr_mask_IBV_QP_PATH_MTU
            | sys::ibv_qp_attr_mask_IBV_QP_DEST_QPN
            | sys::ibv_qp_attr_mask_IBV_QP_RQ_PSN
            | sys::ibv_qp_attr_mask_IBV_QP_MAX_DEST_RD_ATOMIC
            | sys::ibv_qp_attr_mask_IBV_QP_MIN_RNR_TIMER;
        self.modify(QpState::Init, QpState::Rtr, "move to RTR", attr, mask)
    }

    /// RTR -> RTS with `rts`.
    pub(crate) fn to_rts(&self, rts: &RtsAttr) -> Result<(), VerbsError> {
        // SAFETY: plain data; zero is a valid value.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.sq_psn = rts.sq_psn & 0xff_ffff;
        attr.timeout = rts.timeout.min(31);
        attr.retry_cnt = rts.retry_cnt.min(7);
        attr.rnr_retry = rts.rnr_retry.min(7);
        let rd_atom = self.pd.ctx.limits.max_qp_rd_atom.clamp(1, 255) as u8;
        attr.max_rd_atomic = rts.max_rd_atomic.clamp(1, rd_atom);
        let mask = sys::ibv_qp_attr_mask_IBV_QP_SQ_PSN
            | sys::ibv_qp_attr_mask_IBV_QP_TIMEOUT
            | sys::ibv_qp_attr_mask_IBV_QP_RETRY_CNT
            | sys::ibv_qp_attr_mask_IBV_QP_RNR_RETRY
            | sys::ibv_qp_attr_mask_IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(QpState::Rtr, QpState::Rts, "move to RTS", attr, mask)
    }

    /// The PSN and attributes given at creation.
    pub(crate) fn default_rts(&self) -> RtsAttr {
        self.config.rts
    }

    /// The RNR timer given at creation.
    pub(crate) fn min_rnr_timer(&self) -> u8 {
        self.config.min_rnr_timer
    }

    /// Any state -> ERROR: queued requests complete with flush errors.
    pub(crate) fn to_error(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: plain data; zero is a valid value.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = sys::ibv_qp_state_IBV_QPS_ERR;
        // SAFETY: a live queue pair; only the state is set.
        let rc = unsafe {
            sys::ibv_modify_qp(
                self.raw.as_ptr(),
                &mut attr,
                sys::ibv_qp_attr_mask_IBV_QP_STATE as i32,
            )
        };
        if rc == 0 {
            *state = QpState::Error;
        }
    }

    /// Checks a list of SGEs as the userspace engine does.
    fn check_sges(&self, sges: &[Sge], atomic: bool) -> Result<(), VerbsError> {
        let len: u64 = sges.iter().map(|s| u64::from(s.length)).sum();
        if sges.len() > self.max_sge as usize || len > u64::from(u32::MAX) || (atomic && len != 8) {
            return Err(VerbsError::InvalidArgument("SGE list length"));
        }
        Ok(())
    }

    /// Checks and translates the SGE lists of a batch of work requests,
    /// each given with its id, whether it is signalled and whether it is
    /// an atomic.
    ///
    /// # Errors
    /// An SGE list too long or too large for the request; an SGE the
    /// pin-on-demand table cannot map.
    fn translate_batch<'a>(
        &self,
        wrs: impl ExactSizeIterator<Item = (&'a [Sge], u64, bool, bool)>,
    ) -> Result<Batch, VerbsError> {
        let mut batch = Batch {
            sges: Vec::new(),
            spans: Vec::with_capacity(wrs.len()),
            entries: Vec::with_capacity(wrs.len()),
        };
        for (sg_list, wr_id, signaled, atomic) in wrs {
            self.check_sges(sg_list, atomic)?;
            let first = batch.sges.len();
            let token =
                self.pd
                    .ctx
                    .pod
                    .translate(sg_list, self.max_sge as usize, &mut batch.sges)?;
            batch.spans.push((first, batch.sges.len() - first));
            batch.entries.push((wr_id, signaled, token));
        }
        Ok(batch)
    }

    /// Posts send work requests (`ibv_post_send`).
    pub(crate) fn post_send(&self, wrs: &[SendWr<'_>]) -> Result<(), VerbsError> {
        let state = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(state, QpState::Rts | QpState::Error) {
            return Err(VerbsError::BadState {
                state,
                what: "post send requests",
            });
        }
        if wrs.is_empty() {
            return Ok(());
        }
        let mut batch = self.translate_batch(wrs.iter().map(|wr| {
            let atomic = matches!(wr.op, SendOp::CompareSwap { .. } | SendOp::FetchAdd { .. });
            (wr.sg_list, wr.wr_id, wr.signaled, atomic)
        }))?;
        let mut raw: Vec<sys::ibv_send_wr> = wrs.iter().map(send_wr).collect();
        batch.attach(&mut raw, |w, sg, n| (w.sg_list, w.num_sge) = (sg, n));
        link(&mut raw, |w, next| w.next = next);
        let entries = std::mem::take(&mut batch.entries);
        self.tracker.posting(false, entries, || {
            let mut bad = std::ptr::null_mut();
            // SAFETY: a live queue pair; the chain and its SGEs live in
            // `raw` and `batch` for the call, which copies them.
            let rc = unsafe { sys::ibv_post_send(self.raw.as_ptr(), raw.as_mut_ptr(), &mut bad) };
            (
                posted(&raw, rc, bad),
                post_result("ibv_post_send", rc, "send"),
            )
        })
    }

    /// Posts receive work requests (`ibv_post_recv`).
    pub(crate) fn post_recv(&self, wrs: &[RecvWr<'_>]) -> Result<(), VerbsError> {
        let state = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state == QpState::Reset {
            return Err(VerbsError::BadState {
                state,
                what: "post receive requests",
            });
        }
        if wrs.is_empty() {
            return Ok(());
        }
        // Every receive completes: each counts as signalled.
        let mut batch =
            self.translate_batch(wrs.iter().map(|wr| (wr.sg_list, wr.wr_id, true, false)))?;
        let mut raw: Vec<sys::ibv_recv_wr> = wrs
            .iter()
            .map(|wr| sys::ibv_recv_wr {
                wr_id: wr.wr_id,
                next: std::ptr::null_mut(),
                sg_list: std::ptr::null_mut(),
                num_sge: 0,
            })
            .collect();
        batch.attach(&mut raw, |w, sg, n| (w.sg_list, w.num_sge) = (sg, n));
        link(&mut raw, |w, next| w.next = next);
        let entries = std::mem::take(&mut batch.entries);
        self.tracker.posting(true, entries, || {
            let mut bad = std::ptr::null_mut();
            // SAFETY: as in post_send.
            let rc = unsafe { sys::ibv_post_recv(self.raw.as_ptr(), raw.as_mut_ptr(), &mut bad) };
            (
                posted(&raw, rc, bad),
                post_result("ibv_post_recv", rc, "receive"),
            )
        })
    }
}

/// The SGEs of a batch of work requests as the device takes them
/// (pin-on-demand SGEs split into chunk SGEs), where each request's run
/// begins and how long it is, and the chunk references each request holds
/// until its completion.
struct Batch {
    sges: Vec<sys::ibv_sge>,
    spans: Vec<(usize, usize)>,
    entries: Vec<(u64, bool, InFlight)>,
}

impl Batch {
    /// Points each work request of `list` at its run of the batch's SGEs.
    fn attach<T>(&mut self, list: &mut [T], set: impl Fn(&mut T, *mut sys::ibv_sge, i32)) {
        for (w, &(first, n)) in list.iter_mut().zip(&self.spans) {
            let ptr = if n == 0 {
                std::ptr::null_mut()
            } else {
                self.sges[first..].as_mut_ptr()
            };
            set(w, ptr, n as i32);
        }
    }
}

/// How many work requests of `list` a post took: all on success, else
/// those before the one it reports bad.
fn posted<T>(list: &[T], rc: i32, bad: *mut T) -> usize {
    if rc == 0 {
        return list.len();
    }
    let start = list.as_ptr() as usize;
    let at = (bad as usize).wrapping_sub(start) / std::mem::size_of::<T>().max(1);
    at.min(list.len())
}

/// Chains `list[i].next = &list[i + 1]`.
fn link<T>(list: &mut [T], set: impl Fn(&mut T, *mut T)) {
    let base = list.as_mut_ptr();
    for i in 0..list.len().saturating_sub(1) {
        // SAFETY: `i + 1` is within the slice.
        set(&mut list[i], unsafe { base.add(i + 1) });
    }
}

/// A post's return: ENOMEM is a full queue.
fn post_result(call: &'static str, rc: i32, queue: &'static str) -> Result<(), VerbsError> {
    match check(call, rc) {
        Err(VerbsError::DeviceCall { errno, .. }) if errno == libc::ENOMEM => {
            Err(VerbsError::QueueFull(queue))
        }
        other => other,
    }
}

pub(crate) fn raw_sge(s: &Sge) -> sys::ibv_sge {
    sys::ibv_sge {
        addr: s.addr,
        length: s.length,
        lkey: s.lkey,
    }
}

/// A send work request without its SGEs and chain.
fn send_wr(wr: &SendWr<'_>) -> sys::ibv_send_wr {
    // SAFETY: plain data; zero is a valid value.
    let mut w: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
    w.wr_id = wr.wr_id;
    if wr.signaled {
        w.send_flags |= sys::ibv_send_flags_IBV_SEND_SIGNALED;
    }
    if wr.solicited {
        w.send_flags |= sys::ibv_send_flags_IBV_SEND_SOLICITED;
    }
    let rdma = |remote_addr, rkey| sys::ibv_send_wr__bindgen_ty_2 {
        rdma: sys::ibv_send_wr__bindgen_ty_2__bindgen_ty_1 { remote_addr, rkey },
    };
    let atomic = |remote_addr, rkey, compare_add, swap| sys::ibv_send_wr__bindgen_ty_2 {
        atomic: sys::ibv_send_wr__bindgen_ty_2__bindgen_ty_2 {
            remote_addr,
            compare_add,
            swap,
            rkey,
        },
    };
    // Immediate data travels in network order; verbs wants it so in memory.
    match wr.op {
        SendOp::Send => w.opcode = sys::ibv_wr_opcode_IBV_WR_SEND,
        SendOp::SendWithImm { imm } => {
            w.opcode = sys::ibv_wr_opcode_IBV_WR_SEND_WITH_IMM;
            w.__bindgen_anon_1.imm_data = imm.to_be();
        }
        SendOp::Write { remote_addr, rkey } => {
            w.opcode = sys::ibv_wr_opcode_IBV_WR_RDMA_WRITE;
            w.wr = rdma(remote_addr, rkey);
        }
        SendOp::WriteWithImm {
            remote_addr,
            rkey,
            imm,
        } => {
            w.opcode = sys::ibv_wr_opcode_IBV_WR_RDMA_WRITE_WITH_IMM;
            w.wr = rdma(remote_addr, rkey);
            w.__bindgen_anon_1.imm_data = imm.to_be();
        }
        SendOp::Read { remote_addr, rkey } => {
            w.opcode = sys::ibv_wr_opcode_IBV_WR_RDMA_READ;
            w.wr = rdma(remote_addr, rkey);
        }
        SendOp::CompareSwap {
            remote_addr,
            rkey,
            compare,
            swap,
        } => {
            w.opcode = sys::ibv_wr_opcode_IBV_WR_ATOMIC_CMP_AND_SWP;
            w.wr = atomic(remote_addr, rkey, compare, swap);
        }
        SendOp::FetchAdd {
            remote_addr,
            rkey,
            add,
        } => {
            w.opcode = sys::ibv_wr_opcode_IBV_WR_ATOMIC_FETCH_AND_ADD;
            w.wr = atomic(remote_addr, rkey, add, 0);
        }
    }
    w
}

impl Drop for RdmaQp {
    fn drop(&mut self) {
        let qpn = self.qp_num();
        // SAFETY: the queue pair is live and destroyed once.
        unsafe { sys::ibv_destroy_qp(self.raw.as_ptr()) };
        // The device is done with its work requests: their chunks go.
        self.pd.ctx.completions.remove_qp(qpn);
    }
}
