//! RC queue pairs: creation, the `ibv_modify_qp` state machine, and the
//! work requests `ibv_post_send` and `ibv_post_recv` post.

use std::ffi::c_int;
use std::sync::{Mutex, OnceLock, PoisonError};

use provider::{
    Gid, Mtu, ProtectionDomain, QpCaps, QpState, QueuePair, RecvWr, RemoteInfo, RtsAttr, SendOp,
    SendWr, Sge,
};

use crate::context::Ctx;
use crate::cq::Cq;
use crate::errno::{errno_of, pointer, status};
use crate::inline::{InlineRing, MAX_INLINE};
use crate::mr::Pd;
use crate::sys::*;

/// The most SGEs a work request may carry.
pub(crate) const MAX_SGE: usize = 32;
/// RoCEv2's UDP port: every peer's.
const ROCE_PORT: u16 = 4791;

/// A queue pair; `ibv` first, and `ibv_qp_ex` begins with the `ibv_qp`,
/// so `*mut ibv_qp`, `*mut ibv_qp_ex` and `*mut Qp` are one address.
#[repr(C)]
pub(crate) struct Qp {
    pub(crate) ibv: ibv_qp_ex,
    qp: QueuePair,
    /// Created by `ibv_create_qp_ex` with send operations: `ibv_qp_to_qp_ex`
    /// hands out `ibv`, whose `wr_*` functions are filled in.
    pub(crate) extended: bool,
    /// The requests being built between `wr_start` and `wr_complete`.
    pub(crate) building: Mutex<Vec<crate::qp_ex::PendingWr>>,
    /// Where inline payloads are copied; made by the first inline post.
    inline: OnceLock<InlineRing>,
    /// The send queue's size and domain, for the ring.
    max_send_wr: u32,
    pd: ProtectionDomain,
    /// The context, for its GID table.
    ctx: *mut ibv_context,
    /// Every send request is signalled.
    sq_sig_all: bool,
    /// The attributes set so far, for `ibv_query_qp`.
    attr: Mutex<ibv_qp_attr>,
    init: ibv_qp_init_attr,
}

impl Qp {
    /// The queue pair behind a pointer this library handed out.
    ///
    /// # Safety
    /// `qp` is null or came from [`ibv_create_qp`] and is not destroyed.
    pub(crate) unsafe fn from_ptr<'a>(qp: *mut ibv_qp) -> Option<&'a Qp> {
        // SAFETY: `ibv` is the first field of a live, boxed Qp.
        unsafe { qp.cast::<Qp>().as_ref() }
    }
}

/// `ibv_create_qp`: RC only.
pub(crate) unsafe extern "C" fn ibv_create_qp(
    pd: *mut ibv_pd,
    init: *mut ibv_qp_init_attr,
) -> *mut ibv_qp {
    // SAFETY: the application's domain and attributes.
    pointer(unsafe { create(pd, init) }.map(|q| Box::into_raw(q).cast()))
}

/// Creates the queue pair `init` describes (capacities written back).
///
/// # Safety
/// `pd` is NULL or a live domain of this library; `init` is NULL or
/// writable attributes whose queues are NULL or live queues of it.
pub(crate) unsafe fn create(pd: *mut ibv_pd, init: *mut ibv_qp_init_attr) -> Result<Box<Qp>, i32> {
    // SAFETY: NULL or a live domain.
    let p = unsafe { Pd::from_ptr(pd) }.ok_or(libc::EINVAL)?;
    // SAFETY: NULL or the caller's attributes (written back below).
    let init_ref = unsafe { init.as_mut() }.ok_or(libc::EINVAL)?;
    if init_ref.qp_type != ibv_qp_type_IBV_QPT_RC || !init_ref.srq.is_null() {
        return Err(libc::EOPNOTSUPP);
    }
    // SAFETY: NULL or live queues.
    let send_cq = unsafe { Cq::from_ptr(init_ref.send_cq) }.ok_or(libc::EINVAL)?;
    // SAFETY: as above.
    let recv_cq = unsafe { Cq::from_ptr(init_ref.recv_cq) }.ok_or(libc::EINVAL)?;
    // SAFETY: the domain's context is open while the domain exists.
    let ctx = unsafe { Ctx::from_ptr(p.ibv_context()) }.ok_or(libc::EINVAL)?;
    // The device's limit; it also bounds the inline ring (256 bytes a slot).
    let max_qp_wr = ctx.limits().max_qp_wr;
    let cap = &mut init_ref.cap;
    if cap.max_send_sge as usize > MAX_SGE
        || cap.max_recv_sge as usize > MAX_SGE
        || cap.max_inline_data > MAX_INLINE
        || cap.max_send_wr > max_qp_wr
        || cap.max_recv_wr > max_qp_wr
    {
        return Err(libc::EINVAL);
    }
    let caps = QpCaps {
        max_send_wr: cap.max_send_wr.max(1),
        max_recv_wr: cap.max_recv_wr.max(1),
    };
    let qp =
        p.pd.create_qp(&send_cq.cq, &recv_cq.cq)
            .caps(caps)
            .build()
            .map_err(|e| errno_of(&e))?;
    cap.max_send_wr = caps.max_send_wr;
    // Like rxe, report all the inline room there is, not just what was
    // asked (ibv_rc_pingpong sends inline whenever its size fits).
    cap.max_inline_data = MAX_INLINE;
    cap.max_recv_wr = caps.max_recv_wr;
    // SAFETY: plain C data (pointers, integers, pthread objects whose
    // all-zero state is their static initializer in glibc).
    let mut ibv: ibv_qp = unsafe { std::mem::zeroed() };
    ibv.context = p.ibv_context();
    ibv.qp_context = init_ref.qp_context;
    ibv.pd = pd;
    ibv.send_cq = init_ref.send_cq;
    ibv.recv_cq = init_ref.recv_cq;
    ibv.qp_num = qp.qp_num();
    ibv.state = ibv_qp_state_IBV_QPS_RESET;
    ibv.qp_type = ibv_qp_type_IBV_QPT_RC;
    // SAFETY: plain C data; all zeros is valid.
    let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
    attr.cap = *cap;
    // SAFETY: plain C data; all zeros is valid (no wr_* functions).
    let mut ibv_ex: ibv_qp_ex = unsafe { std::mem::zeroed() };
    ibv_ex.qp_base = ibv;
    Ok(Box::new(Qp {
        ctx: ibv.context,
        ibv: ibv_ex,
        qp,
        extended: false,
        building: Mutex::new(Vec::new()),
        inline: OnceLock::new(),
        max_send_wr: caps.max_send_wr,
        pd: p.pd.clone(),
        sq_sig_all: init_ref.sq_sig_all != 0,
        attr: Mutex::new(attr),
        init: *init_ref,
    }))
}

/// `ibv_destroy_qp`.
pub(crate) unsafe extern "C" fn ibv_destroy_qp(qp: *mut ibv_qp) -> c_int {
    if qp.is_null() {
        return status(Err(libc::EINVAL));
    }
    // SAFETY: a queue pair from ibv_create_qp, freed once.
    drop(unsafe { Box::from_raw(qp.cast::<Qp>()) });
    0
}

/// `ibv_modify_qp`: RESET -> INIT -> RTR -> RTS, as RC connects.
pub(crate) unsafe extern "C" fn ibv_modify_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    mask: c_int,
) -> c_int {
    // SAFETY: NULL or a live queue pair.
    let Some(q) = (unsafe { Qp::from_ptr(qp) }) else {
        return status(Err(libc::EINVAL));
    };
    // SAFETY: NULL or the caller's attributes.
    let Some(attr) = (unsafe { attr.as_ref() }) else {
        return status(Err(libc::EINVAL));
    };
    let mask = mask as u32;
    let result = modify(q, attr, mask);
    if result.is_ok() {
        let mut saved = q.attr.lock().unwrap_or_else(PoisonError::into_inner);
        merge(&mut saved, attr, mask);
        let state = to_ibv_state(q.qp.state());
        // SAFETY: `state` mirrors the provider's for applications that read
        // qp->state; only this library writes it.
        unsafe { (*qp).state = state };
    }
    status(result)
}

/// Runs the transition `attr` and `mask` ask for.
fn modify(q: &Qp, attr: &ibv_qp_attr, mask: u32) -> Result<(), i32> {
    if mask & ibv_qp_attr_mask_IBV_QP_STATE == 0 {
        return Ok(());
    }
    let current = q.qp.state();
    match attr.qp_state {
        ibv_qp_state_IBV_QPS_INIT if current == QpState::Init => Ok(()),
        ibv_qp_state_IBV_QPS_INIT => q.qp.to_init().map_err(|e| errno_of(&e)),
        ibv_qp_state_IBV_QPS_RTR => to_rtr(q, attr, mask),
        ibv_qp_state_IBV_QPS_RTS => {
            let saved = *q.attr.lock().unwrap_or_else(PoisonError::into_inner);
            let pick = |bit: u32, new: u8, old: u8, default: u8| {
                if mask & bit != 0 {
                    new
                } else if old != 0 {
                    old
                } else {
                    default
                }
            };
            let rts = RtsAttr {
                sq_psn: if mask & ibv_qp_attr_mask_IBV_QP_SQ_PSN != 0 {
                    attr.sq_psn
                } else {
                    saved.sq_psn
                },
                timeout: pick(
                    ibv_qp_attr_mask_IBV_QP_TIMEOUT,
                    attr.timeout,
                    saved.timeout,
                    14,
                ),
                retry_cnt: pick(
                    ibv_qp_attr_mask_IBV_QP_RETRY_CNT,
                    attr.retry_cnt,
                    saved.retry_cnt,
                    7,
                ),
                rnr_retry: pick(
                    ibv_qp_attr_mask_IBV_QP_RNR_RETRY,
                    attr.rnr_retry,
                    saved.rnr_retry,
                    7,
                ),
                max_rd_atomic: pick(
                    ibv_qp_attr_mask_IBV_QP_MAX_QP_RD_ATOMIC,
                    attr.max_rd_atomic,
                    saved.max_rd_atomic,
                    16,
                ),
            };
            q.qp.to_rts_with(&rts).map_err(|e| errno_of(&e))
        }
        ibv_qp_state_IBV_QPS_ERR => {
            q.qp.to_error();
            Ok(())
        }
        // RESET and SQD are not reachable on the device yet.
        _ => Err(libc::EOPNOTSUPP),
    }
}

/// INIT -> RTR: the peer's GID must be given (RoCE needs a GRH) and the
/// source GID must be the device's own address.
fn to_rtr(q: &Qp, attr: &ibv_qp_attr, mask: u32) -> Result<(), i32> {
    let needed = ibv_qp_attr_mask_IBV_QP_AV
        | ibv_qp_attr_mask_IBV_QP_PATH_MTU
        | ibv_qp_attr_mask_IBV_QP_DEST_QPN
        | ibv_qp_attr_mask_IBV_QP_RQ_PSN;
    if mask & needed != needed || attr.ah_attr.is_global == 0 {
        return Err(libc::EINVAL);
    }
    // SAFETY: the queue pair's context is open while it exists.
    let ctx = unsafe { Ctx::from_ptr(q.ctx) }.ok_or(libc::EINVAL)?;
    if ctx.own_gid_index() != Some(usize::from(attr.ah_attr.grh.sgid_index)) {
        return Err(libc::EINVAL);
    }
    let mtu = match attr.path_mtu {
        ibv_mtu_IBV_MTU_256 => Mtu::Mtu256,
        ibv_mtu_IBV_MTU_512 => Mtu::Mtu512,
        ibv_mtu_IBV_MTU_1024 => Mtu::Mtu1024,
        ibv_mtu_IBV_MTU_2048 => Mtu::Mtu2048,
        ibv_mtu_IBV_MTU_4096 => Mtu::Mtu4096,
        _ => return Err(libc::EINVAL),
    };
    // SAFETY: both views of the GID union are plain bytes.
    let dgid = unsafe { attr.ah_attr.grh.dgid.raw };
    let remote = RemoteInfo {
        qp_num: attr.dest_qp_num,
        psn: attr.rq_psn,
        gid: Gid(dgid),
        port: ROCE_PORT,
        mtu,
    };
    let rnr = if mask & ibv_qp_attr_mask_IBV_QP_MIN_RNR_TIMER != 0 {
        attr.min_rnr_timer
    } else {
        12
    };
    q.qp.to_rtr_with(&remote, rnr).map_err(|e| errno_of(&e))
}

/// Copies the attributes `mask` names into the saved ones.
fn merge(saved: &mut ibv_qp_attr, attr: &ibv_qp_attr, mask: u32) {
    let set = |bit: u32| mask & bit != 0;
    if set(ibv_qp_attr_mask_IBV_QP_STATE) {
        saved.qp_state = attr.qp_state;
    }
    if set(ibv_qp_attr_mask_IBV_QP_ACCESS_FLAGS) {
        saved.qp_access_flags = attr.qp_access_flags;
    }
    if set(ibv_qp_attr_mask_IBV_QP_PKEY_INDEX) {
        saved.pkey_index = attr.pkey_index;
    }
    if set(ibv_qp_attr_mask_IBV_QP_PORT) {
        saved.port_num = attr.port_num;
    }
    if set(ibv_qp_attr_mask_IBV_QP_AV) {
        saved.ah_attr = attr.ah_attr;
    }
    if set(ibv_qp_attr_mask_IBV_QP_PATH_MTU) {
        saved.path_mtu = attr.path_mtu;
    }
    if set(ibv_qp_attr_mask_IBV_QP_TIMEOUT) {
        saved.timeout = attr.timeout;
    }
    if set(ibv_qp_attr_mask_IBV_QP_RETRY_CNT) {
        saved.retry_cnt = attr.retry_cnt;
    }
    if set(ibv_qp_attr_mask_IBV_QP_RNR_RETRY) {
        saved.rnr_retry = attr.rnr_retry;
    }
    if set(ibv_qp_attr_mask_IBV_QP_RQ_PSN) {
        saved.rq_psn = attr.rq_psn;
    }
    if set(ibv_qp_attr_mask_IBV_QP_MAX_QP_RD_ATOMIC) {
        saved.max_rd_atomic = attr.max_rd_atomic;
    }
    if set(ibv_qp_attr_mask_IBV_QP_MIN_RNR_TIMER) {
        saved.min_rnr_timer = attr.min_rnr_timer;
    }
    if set(ibv_qp_attr_mask_IBV_QP_SQ_PSN) {
        saved.sq_psn = attr.sq_psn;
    }
    if set(ibv_qp_attr_mask_IBV_QP_MAX_DEST_RD_ATOMIC) {
        saved.max_dest_rd_atomic = attr.max_dest_rd_atomic;
    }
    if set(ibv_qp_attr_mask_IBV_QP_DEST_QPN) {
        saved.dest_qp_num = attr.dest_qp_num;
    }
}

/// verbs' state for the provider's.
fn to_ibv_state(state: QpState) -> ibv_qp_state {
    match state {
        QpState::Reset => ibv_qp_state_IBV_QPS_RESET,
        QpState::Init => ibv_qp_state_IBV_QPS_INIT,
        QpState::Rtr => ibv_qp_state_IBV_QPS_RTR,
        QpState::Rts => ibv_qp_state_IBV_QPS_RTS,
        QpState::Error => ibv_qp_state_IBV_QPS_ERR,
    }
}

/// `ibv_query_qp`: the attributes set so far and the current state.
pub(crate) unsafe extern "C" fn ibv_query_qp(
    qp: *mut ibv_qp,
    attr: *mut ibv_qp_attr,
    _mask: c_int,
    init_attr: *mut ibv_qp_init_attr,
) -> c_int {
    // SAFETY: NULL or a live queue pair.
    let Some(q) = (unsafe { Qp::from_ptr(qp) }) else {
        return status(Err(libc::EINVAL));
    };
    if attr.is_null() || init_attr.is_null() {
        return status(Err(libc::EINVAL));
    }
    let mut saved = *q.attr.lock().unwrap_or_else(PoisonError::into_inner);
    saved.qp_state = to_ibv_state(q.qp.state());
    saved.cur_qp_state = saved.qp_state;
    // SAFETY: the caller's writable structures.
    unsafe {
        attr.write(saved);
        init_attr.write(q.init);
    }
    0
}

/// The SGEs of a work request, copied into `out`.
///
/// # Safety
/// `list` points to `n` SGEs when `n > 0`.
unsafe fn sges(list: *const ibv_sge, n: c_int, out: &mut [Sge; MAX_SGE]) -> Result<&[Sge], i32> {
    let n = usize::try_from(n).map_err(|_| libc::EINVAL)?;
    if n > MAX_SGE || (n > 0 && list.is_null()) {
        return Err(libc::EINVAL);
    }
    for (i, slot) in out.iter_mut().enumerate().take(n) {
        // SAFETY: i < n SGEs.
        let s = unsafe { &*list.add(i) };
        *slot = Sge {
            addr: s.addr,
            length: s.length,
            lkey: s.lkey,
        };
    }
    Ok(&out[..n])
}

/// A request's SGE list as a slice.
///
/// # Safety
/// `list` points to `n` SGEs when `n > 0`.
unsafe fn raw_sges<'a>(list: *const ibv_sge, n: c_int) -> Result<&'a [ibv_sge], i32> {
    let n = usize::try_from(n).map_err(|_| libc::EINVAL)?;
    if n > MAX_SGE || (n > 0 && list.is_null()) {
        return Err(libc::EINVAL);
    }
    if n == 0 {
        return Ok(&[]);
    }
    // SAFETY: n SGEs, as the caller vouches.
    Ok(unsafe { std::slice::from_raw_parts(list, n) })
}

/// Posts one send request with verbs' send `flags` over `raw` SGEs;
/// `scratch` holds the converted list.
///
/// # Safety
/// The SGEs name the application's memory (read now for an inline
/// request).
pub(crate) unsafe fn post_one(
    q: &Qp,
    wr_id: u64,
    flags: u32,
    op: SendOp,
    raw: &[ibv_sge],
    scratch: &mut [Sge; MAX_SGE],
) -> Result<(), i32> {
    // SAFETY: as the caller vouches.
    let sg_list = unsafe { send_sges(q, flags, &op, raw, scratch) }?;
    let req = SendWr {
        wr_id,
        op,
        sg_list,
        signaled: q.sq_sig_all || flags & ibv_send_flags_IBV_SEND_SIGNALED != 0,
        solicited: flags & ibv_send_flags_IBV_SEND_SOLICITED != 0,
    };
    q.qp.post_send(&[req]).map_err(|e| errno_of(&e))
}

/// The SGEs of a send request: its own, or for an inline SEND or WRITE
/// one SGE over the copy of its payload.
///
/// # Safety
/// The SGEs name readable memory.
unsafe fn send_sges<'a>(
    q: &Qp,
    flags: u32,
    op: &SendOp,
    raw: &[ibv_sge],
    out: &'a mut [Sge; MAX_SGE],
) -> Result<&'a [Sge], i32> {
    if raw.len() > MAX_SGE {
        return Err(libc::EINVAL);
    }
    let inline = flags & ibv_send_flags_IBV_SEND_INLINE != 0;
    let carries_payload = matches!(
        op,
        SendOp::Send
            | SendOp::SendWithImm { .. }
            | SendOp::Write { .. }
            | SendOp::WriteWithImm { .. }
    );
    if !(inline && carries_payload) {
        for (slot, s) in out.iter_mut().zip(raw) {
            *slot = Sge {
                addr: s.addr,
                length: s.length,
                lkey: s.lkey,
            };
        }
        return Ok(&out[..raw.len()]);
    }
    if raw.is_empty() {
        return Ok(&out[..0]);
    }
    let ring = match q.inline.get() {
        Some(ring) => ring,
        None => {
            // Two first posts racing make two rings; one is kept.
            let ring = InlineRing::new(&q.pd, q.max_send_wr)?;
            let _ = q.inline.set(ring);
            q.inline.get().ok_or(libc::EIO)?
        }
    };
    // SAFETY: the SGEs name the application's readable memory.
    out[0] = unsafe { ring.stage(raw) }?;
    Ok(&out[..1])
}

/// The operation of a send work request.
fn send_op(wr: &ibv_send_wr) -> Result<SendOp, i32> {
    // SAFETY: the union member the opcode selects.
    let (rdma, atomic, imm) = unsafe {
        (
            wr.wr.rdma,
            wr.wr.atomic,
            u32::from_be(wr.__bindgen_anon_1.imm_data),
        )
    };
    Ok(match wr.opcode {
        ibv_wr_opcode_IBV_WR_SEND => SendOp::Send,
        ibv_wr_opcode_IBV_WR_SEND_WITH_IMM => SendOp::SendWithImm { imm },
        ibv_wr_opcode_IBV_WR_RDMA_WRITE => SendOp::Write {
            remote_addr: rdma.remote_addr,
            rkey: rdma.rkey,
        },
        ibv_wr_opcode_IBV_WR_RDMA_WRITE_WITH_IMM => SendOp::WriteWithImm {
            remote_addr: rdma.remote_addr,
            rkey: rdma.rkey,
            imm,
        },
        ibv_wr_opcode_IBV_WR_RDMA_READ => SendOp::Read {
            remote_addr: rdma.remote_addr,
            rkey: rdma.rkey,
        },
        ibv_wr_opcode_IBV_WR_ATOMIC_CMP_AND_SWP => SendOp::CompareSwap {
            remote_addr: atomic.remote_addr,
            rkey: atomic.rkey,
            compare: atomic.compare_add,
            swap: atomic.swap,
        },
        ibv_wr_opcode_IBV_WR_ATOMIC_FETCH_AND_ADD => SendOp::FetchAdd {
            remote_addr: atomic.remote_addr,
            rkey: atomic.rkey,
            add: atomic.compare_add,
        },
        _ => return Err(libc::EINVAL),
    })
}

/// `ibv_context_ops::post_send`, behind the inline `ibv_post_send`.
pub(crate) unsafe extern "C" fn post_send(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad_wr: *mut *mut ibv_send_wr,
) -> c_int {
    // SAFETY: NULL or a live queue pair.
    let Some(q) = (unsafe { Qp::from_ptr(qp) }) else {
        return libc::EINVAL;
    };
    let mut list = [Sge {
        addr: 0,
        length: 0,
        lkey: 0,
    }; MAX_SGE];
    let post = |w: &ibv_send_wr| {
        send_op(w).and_then(|op| {
            // SAFETY: the request's own SGE list.
            let raw = unsafe { raw_sges(w.sg_list, w.num_sge) }?;
            // SAFETY: the SGEs name the application's memory.
            unsafe { post_one(q, w.wr_id, w.send_flags, op, raw, &mut list) }
        })
    };
    // SAFETY: the caller's list of work requests, NULL-terminated.
    unsafe { post_each(wr, bad_wr, |w| w.next, post) }
}

/// `ibv_context_ops::post_recv`, behind the inline `ibv_post_recv`.
pub(crate) unsafe extern "C" fn post_recv(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> c_int {
    // SAFETY: NULL or a live queue pair.
    let Some(q) = (unsafe { Qp::from_ptr(qp) }) else {
        return libc::EINVAL;
    };
    let mut list = [Sge {
        addr: 0,
        length: 0,
        lkey: 0,
    }; MAX_SGE];
    let post = |w: &ibv_recv_wr| {
        // SAFETY: the request's own SGE list.
        let sg_list = unsafe { sges(w.sg_list, w.num_sge, &mut list) }?;
        q.qp.post_recv(&[RecvWr {
            wr_id: w.wr_id,
            sg_list,
        }])
        .map_err(|e| errno_of(&e))
    };
    // SAFETY: the caller's list of work requests, NULL-terminated.
    unsafe { post_each(wr, bad_wr, |w| w.next, post) }
}

/// Walks the caller's list of work requests from `first`, posting each
/// with `post`; the first that fails is written to `bad_wr` (if given) and
/// its error code returned, as verbs' post calls report it.
///
/// # Safety
/// `first` is NULL or the head of a list of live requests, linked by
/// what `next` reads and ended by NULL; `bad_wr` is NULL or writable.
unsafe fn post_each<T>(
    first: *mut T,
    bad_wr: *mut *mut T,
    next: impl Fn(&T) -> *mut T,
    mut post: impl FnMut(&T) -> Result<(), c_int>,
) -> c_int {
    let mut cur = first;
    // SAFETY: per the contract, a NULL-terminated list of live requests.
    while let Some(w) = unsafe { cur.as_ref() } {
        if let Err(code) = post(w) {
            if !bad_wr.is_null() {
                // SAFETY: the caller's out-parameter.
                unsafe { bad_wr.write(cur) };
            }
            return code;
        }
        cur = next(w);
    }
    0
}
