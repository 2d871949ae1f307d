//! The extended send API: `ibv_create_qp_ex` with send operations, and the
//! `ibv_wr_*` builder of `struct ibv_qp_ex` (`ibv_wr_start`, an operation,
//! its SGEs or inline data, ..., `ibv_wr_complete`).
//!
//! Requests are collected between `wr_start` and `wr_complete` and posted
//! by `wr_complete`, each as `ibv_post_send` would post it. Operations the
//! device lacks (memory windows, invalidation, TSO, UD and XRC addressing,
//! atomic write) are refused at creation; if called anyway, `wr_complete`
//! fails with `EOPNOTSUPP` and posts nothing.

use std::ffi::{c_int, c_void};
use std::sync::PoisonError;

use provider::{SendOp, Sge};

use crate::errno::pointer;
use crate::qp::{MAX_SGE, Qp, create, post_one};
use crate::sys::*;

/// A request being built.
pub(crate) struct PendingWr {
    wr_id: u64,
    flags: u32,
    /// `None` for an operation the device lacks.
    op: Option<SendOp>,
    sges: Vec<ibv_sge>,
    /// Inline data copied by `wr_set_inline_data*`.
    inline: Option<Vec<u8>>,
}

/// The send operations `wr_*` can build.
const SUPPORTED_OPS: u64 = (ibv_qp_create_send_ops_flags_IBV_QP_EX_WITH_RDMA_WRITE
    | ibv_qp_create_send_ops_flags_IBV_QP_EX_WITH_RDMA_WRITE_WITH_IMM
    | ibv_qp_create_send_ops_flags_IBV_QP_EX_WITH_SEND
    | ibv_qp_create_send_ops_flags_IBV_QP_EX_WITH_SEND_WITH_IMM
    | ibv_qp_create_send_ops_flags_IBV_QP_EX_WITH_RDMA_READ
    | ibv_qp_create_send_ops_flags_IBV_QP_EX_WITH_ATOMIC_CMP_AND_SWP
    | ibv_qp_create_send_ops_flags_IBV_QP_EX_WITH_ATOMIC_FETCH_AND_ADD)
    as u64;

/// `verbs_context::create_qp_ex`, behind the inline `ibv_create_qp_ex`:
/// RC, with a protection domain, optionally with send operations.
pub(crate) unsafe extern "C" fn create_qp_ex(
    _context: *mut ibv_context,
    attr: *mut ibv_qp_init_attr_ex,
) -> *mut ibv_qp {
    // SAFETY: NULL or the application's attributes.
    let Some(a) = (unsafe { attr.as_mut() }) else {
        return pointer(Err(libc::EINVAL));
    };
    // SAFETY: the attributes name the application's own objects.
    pointer(unsafe { create_ex(a) })
}

/// Creates the queue pair `a` describes.
///
/// # Safety
/// The attributes' domain and queues are NULL or live objects of this
/// library.
unsafe fn create_ex(a: &mut ibv_qp_init_attr_ex) -> Result<*mut ibv_qp, i32> {
    let pd_mask = ibv_qp_init_attr_mask_IBV_QP_INIT_ATTR_PD;
    let ops_mask = ibv_qp_init_attr_mask_IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
    let flags_mask = ibv_qp_init_attr_mask_IBV_QP_INIT_ATTR_CREATE_FLAGS;
    if a.comp_mask & !(pd_mask | ops_mask | flags_mask) != 0 || a.create_flags != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    if a.comp_mask & pd_mask == 0 {
        return Err(libc::EINVAL);
    }
    let with_ops = a.comp_mask & ops_mask != 0;
    if with_ops && a.send_ops_flags & !SUPPORTED_OPS != 0 {
        return Err(libc::EOPNOTSUPP);
    }
    let mut init = ibv_qp_init_attr {
        qp_context: a.qp_context,
        send_cq: a.send_cq,
        recv_cq: a.recv_cq,
        srq: a.srq,
        cap: a.cap,
        qp_type: a.qp_type,
        sq_sig_all: a.sq_sig_all,
    };
    // SAFETY: as the caller vouches.
    let mut qp = unsafe { create(a.pd, &mut init) }?;
    a.cap = init.cap;
    if with_ops {
        qp.extended = true;
        qp.ibv.comp_mask = 0;
        fill_wr_ops(&mut qp.ibv);
    }
    Ok(Box::into_raw(qp).cast())
}

/// `ibv_qp_to_qp_ex`: the extended queue pair, or NULL for one created
/// without send operations.
pub(crate) unsafe extern "C" fn ibv_qp_to_qp_ex(qp: *mut ibv_qp) -> *mut ibv_qp_ex {
    // SAFETY: NULL or a live queue pair of this library.
    match unsafe { Qp::from_ptr(qp) } {
        Some(q) if q.extended => qp.cast(),
        _ => pointer(Err(libc::EOPNOTSUPP)),
    }
}

/// Installs the builder's functions.
fn fill_wr_ops(x: &mut ibv_qp_ex) {
    x.wr_start = Some(wr_start);
    x.wr_complete = Some(wr_complete);
    x.wr_abort = Some(wr_abort);
    x.wr_send = Some(wr_send);
    x.wr_send_imm = Some(wr_send_imm);
    x.wr_rdma_write = Some(wr_rdma_write);
    x.wr_rdma_write_imm = Some(wr_rdma_write_imm);
    x.wr_rdma_read = Some(wr_rdma_read);
    x.wr_atomic_cmp_swp = Some(wr_atomic_cmp_swp);
    x.wr_atomic_fetch_add = Some(wr_atomic_fetch_add);
    x.wr_set_sge = Some(wr_set_sge);
    x.wr_set_sge_list = Some(wr_set_sge_list);
    x.wr_set_inline_data = Some(wr_set_inline_data);
    x.wr_set_inline_data_list = Some(wr_set_inline_data_list);
    x.wr_bind_mw = Some(wr_bind_mw);
    x.wr_local_inv = Some(wr_local_inv);
    x.wr_send_inv = Some(wr_send_inv);
    x.wr_send_tso = Some(wr_send_tso);
    x.wr_set_ud_addr = Some(wr_set_ud_addr);
    x.wr_set_xrc_srqn = Some(wr_set_xrc_srqn);
    x.wr_atomic_write = Some(wr_atomic_write);
}

/// Runs `f` on the queue pair's requests being built, if `qpx` is ours.
///
/// # Safety
/// `qpx` is NULL or an extended queue pair of this library.
unsafe fn with_building(qpx: *mut ibv_qp_ex, f: impl FnOnce(&Qp, &mut Vec<PendingWr>)) {
    // SAFETY: as the caller vouches; `qp_base` is the first field.
    if let Some(q) = unsafe { Qp::from_ptr(qpx.cast()) } {
        let mut building = q.building.lock().unwrap_or_else(PoisonError::into_inner);
        f(q, &mut building);
    }
}

/// Starts a request with `op` (`None`: unsupported), taking `wr_id` and
/// `wr_flags` from the structure as verbs does.
///
/// # Safety
/// As [`with_building`].
unsafe fn begin(qpx: *mut ibv_qp_ex, op: Option<SendOp>) {
    // SAFETY: as the caller vouches.
    unsafe {
        with_building(qpx, |q, building| {
            building.push(PendingWr {
                wr_id: q.ibv.wr_id,
                flags: q.ibv.wr_flags,
                op,
                sges: Vec::new(),
                inline: None,
            });
        });
    }
}

/// Changes the request being built.
///
/// # Safety
/// As [`with_building`].
unsafe fn amend(qpx: *mut ibv_qp_ex, f: impl FnOnce(&mut PendingWr)) {
    // SAFETY: as the caller vouches.
    unsafe {
        with_building(qpx, |_, building| {
            if let Some(last) = building.last_mut() {
                f(last);
            }
        });
    }
}

unsafe extern "C" fn wr_start(qpx: *mut ibv_qp_ex) {
    // SAFETY: the application passes its extended queue pair.
    unsafe { with_building(qpx, |_, b| b.clear()) };
}

unsafe extern "C" fn wr_abort(qpx: *mut ibv_qp_ex) {
    // SAFETY: as above.
    unsafe { with_building(qpx, |_, b| b.clear()) };
}

/// Posts what was built: 0, or the errno of the first request that could
/// not be posted (nothing at all if one is unsupported).
unsafe extern "C" fn wr_complete(qpx: *mut ibv_qp_ex) -> c_int {
    let mut result = Err(libc::EINVAL);
    // SAFETY: the application passes its extended queue pair.
    unsafe {
        with_building(qpx, |q, building| {
            let requests = std::mem::take(building);
            result = post_all(q, requests);
        });
    }
    match result {
        Ok(()) => 0,
        Err(code) => code,
    }
}

/// Posts the built requests in order.
fn post_all(q: &Qp, requests: Vec<PendingWr>) -> Result<(), i32> {
    if requests.iter().any(|r| r.op.is_none()) {
        return Err(libc::EOPNOTSUPP);
    }
    let mut scratch = [Sge {
        addr: 0,
        length: 0,
        lkey: 0,
    }; MAX_SGE];
    for r in requests {
        let Some(op) = r.op else { continue };
        let (flags, sges) = match &r.inline {
            Some(data) => {
                let sge = ibv_sge {
                    addr: data.as_ptr() as u64,
                    length: u32::try_from(data.len()).map_err(|_| libc::EINVAL)?,
                    lkey: 0,
                };
                (r.flags | ibv_send_flags_IBV_SEND_INLINE, vec![sge])
            }
            None => (r.flags, r.sges),
        };
        // SAFETY: the SGEs name the application's memory or our copy of
        // its inline data, alive until the call returns.
        unsafe { post_one(q, r.wr_id, flags, op, &sges, &mut scratch) }?;
    }
    Ok(())
}

unsafe extern "C" fn wr_send(qpx: *mut ibv_qp_ex) {
    // SAFETY: the application passes its extended queue pair.
    unsafe { begin(qpx, Some(SendOp::Send)) };
}

unsafe extern "C" fn wr_send_imm(qpx: *mut ibv_qp_ex, imm_data: __be32) {
    let imm = u32::from_be(imm_data);
    // SAFETY: as above.
    unsafe { begin(qpx, Some(SendOp::SendWithImm { imm })) };
}

unsafe extern "C" fn wr_rdma_write(qpx: *mut ibv_qp_ex, rkey: u32, remote_addr: u64) {
    // SAFETY: as above.
    unsafe { begin(qpx, Some(SendOp::Write { remote_addr, rkey })) };
}

unsafe extern "C" fn wr_rdma_write_imm(
    qpx: *mut ibv_qp_ex,
    rkey: u32,
    remote_addr: u64,
    imm_data: __be32,
) {
    let imm = u32::from_be(imm_data);
    // SAFETY: as above.
    unsafe {
        begin(
            qpx,
            Some(SendOp::WriteWithImm {
                remote_addr,
                rkey,
                imm,
            }),
        )
    };
}

unsafe extern "C" fn wr_rdma_read(qpx: *mut ibv_qp_ex, rkey: u32, remote_addr: u64) {
    // SAFETY: as above.
    unsafe { begin(qpx, Some(SendOp::Read { remote_addr, rkey })) };
}

unsafe extern "C" fn wr_atomic_cmp_swp(
    qpx: *mut ibv_qp_ex,
    rkey: u32,
    remote_addr: u64,
    compare: u64,
    swap: u64,
) {
    let op = SendOp::CompareSwap {
        remote_addr,
        rkey,
        compare,
        swap,
    };
    // SAFETY: as above.
    unsafe { begin(qpx, Some(op)) };
}

unsafe extern "C" fn wr_atomic_fetch_add(
    qpx: *mut ibv_qp_ex,
    rkey: u32,
    remote_addr: u64,
    add: u64,
) {
    // SAFETY: as above.
    unsafe {
        begin(
            qpx,
            Some(SendOp::FetchAdd {
                remote_addr,
                rkey,
                add,
            }),
        )
    };
}

unsafe extern "C" fn wr_set_sge(qpx: *mut ibv_qp_ex, lkey: u32, addr: u64, length: u32) {
    // SAFETY: as above.
    unsafe { amend(qpx, |r| r.sges = vec![ibv_sge { addr, length, lkey }]) };
}

unsafe extern "C" fn wr_set_sge_list(qpx: *mut ibv_qp_ex, num_sge: usize, sg_list: *const ibv_sge) {
    let sges = if num_sge == 0 || sg_list.is_null() {
        Vec::new()
    } else {
        // SAFETY: the application passes num_sge SGEs.
        unsafe { std::slice::from_raw_parts(sg_list, num_sge.min(MAX_SGE + 1)) }.to_vec()
    };
    // SAFETY: as above.
    unsafe { amend(qpx, |r| r.sges = sges) };
}

unsafe extern "C" fn wr_set_inline_data(qpx: *mut ibv_qp_ex, addr: *mut c_void, length: usize) {
    let buf = ibv_data_buf { addr, length };
    // SAFETY: one buffer the application names.
    unsafe { wr_set_inline_data_list(qpx, 1, &buf) };
}

unsafe extern "C" fn wr_set_inline_data_list(
    qpx: *mut ibv_qp_ex,
    num_buf: usize,
    buf_list: *const ibv_data_buf,
) {
    let mut data = Vec::new();
    if !buf_list.is_null() {
        // SAFETY: the application passes num_buf buffers.
        for b in unsafe { std::slice::from_raw_parts(buf_list, num_buf) } {
            // Beyond the inline room the post fails anyway: copy no more.
            if b.addr.is_null() || data.len() + b.length > crate::inline::MAX_INLINE as usize + 1 {
                data.resize(crate::inline::MAX_INLINE as usize + 1, 0);
                break;
            }
            // SAFETY: the buffer is the application's readable memory.
            data.extend_from_slice(unsafe {
                std::slice::from_raw_parts(b.addr.cast::<u8>(), b.length)
            });
        }
    }
    // SAFETY: as above.
    unsafe { amend(qpx, |r| r.inline = Some(data)) };
}

/// Marks the request being built as unsupported.
///
/// # Safety
/// As [`with_building`].
unsafe fn unsupported(qpx: *mut ibv_qp_ex) {
    // SAFETY: as the caller vouches.
    unsafe { amend(qpx, |r| r.op = None) };
}

unsafe extern "C" fn wr_bind_mw(
    qpx: *mut ibv_qp_ex,
    _mw: *mut ibv_mw,
    _rkey: u32,
    _info: *const ibv_mw_bind_info,
) {
    // SAFETY: as above.
    unsafe { begin(qpx, None) };
}

unsafe extern "C" fn wr_local_inv(qpx: *mut ibv_qp_ex, _rkey: u32) {
    // SAFETY: as above.
    unsafe { begin(qpx, None) };
}

unsafe extern "C" fn wr_send_inv(qpx: *mut ibv_qp_ex, _rkey: u32) {
    // SAFETY: as above.
    unsafe { begin(qpx, None) };
}

unsafe extern "C" fn wr_send_tso(qpx: *mut ibv_qp_ex, _hdr: *mut c_void, _hdr_sz: u16, _mss: u16) {
    // SAFETY: as above.
    unsafe { begin(qpx, None) };
}

unsafe extern "C" fn wr_atomic_write(
    qpx: *mut ibv_qp_ex,
    _rkey: u32,
    _remote_addr: u64,
    _wr: *const c_void,
) {
    // SAFETY: as above.
    unsafe { begin(qpx, None) };
}

unsafe extern "C" fn wr_set_ud_addr(qpx: *mut ibv_qp_ex, _ah: *mut ibv_ah, _qpn: u32, _qkey: u32) {
    // SAFETY: as above.
    unsafe { unsupported(qpx) };
}

unsafe extern "C" fn wr_set_xrc_srqn(qpx: *mut ibv_qp_ex, _srqn: u32) {
    // SAFETY: as above.
    unsafe { unsupported(qpx) };
}
