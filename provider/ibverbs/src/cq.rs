//! Completion queues and completion channels.
//!
//! A channel's fd is an epoll instance: each CQ of the channel registers
//! its eventfd there with `EPOLLONESHOT`, and `ibv_req_notify_cq` re-arms
//! it, so the channel fd becomes readable (for `poll`/`epoll` on it, and
//! for `ibv_get_cq_event`) once an armed CQ gets a completion. As verbs
//! defines it, arming notifies on the next completion *added*: completions
//! already in the queue do not fire (perftest's event mode re-arms before
//! it polls, and counts on that).

use std::ffi::{c_int, c_void};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};

use provider::{CompletionQueue, WcOpcode, WcStatus, WorkCompletion};

use crate::context::Ctx;
use crate::errno::{errno_of, pointer, set_errno, status};
use crate::sys::*;

/// The smallest queue made: verbs lets a queue hold more than asked
/// (`ibv_cq::cqe` says how many), and room to spare keeps a program
/// whose events and polls fall out of step (perftest's `ib_send_lat -e`
/// when a peer's SEND overtakes the ACK of its own) from overflowing a
/// one-entry queue.
const MIN_CQE: usize = 64;

/// A completion channel; `ibv` first.
#[repr(C)]
struct Channel {
    ibv: ibv_comp_channel,
    epoll: OwnedFd,
}

/// A completion queue; `ibv` first.
#[repr(C)]
pub(crate) struct Cq {
    ibv: ibv_cq,
    /// The provider's queue.
    pub(crate) cq: CompletionQueue,
    /// An overflow was reported as `IBV_EVENT_CQ_ERR`.
    overflow_reported: AtomicBool,
    /// Completion events acknowledged (`ibv_ack_cq_events`).
    acked: AtomicU32,
}

impl Cq {
    /// The queue behind a pointer this library handed out.
    ///
    /// # Safety
    /// `cq` is null or came from [`ibv_create_cq`] and is not destroyed.
    pub(crate) unsafe fn from_ptr<'a>(cq: *mut ibv_cq) -> Option<&'a Cq> {
        // SAFETY: `ibv` is the first field of a live, boxed Cq.
        unsafe { cq.cast::<Cq>().as_ref() }
    }

    /// The channel's epoll fd, if the queue has a channel.
    fn channel_fd(&self) -> Option<c_int> {
        // SAFETY: the channel outlives its queues (verbs forbids destroying
        // a channel with queues on it, and we refuse to).
        unsafe { self.ibv.channel.as_ref() }.map(|c| c.fd)
    }
}

/// `ibv_create_comp_channel`.
pub(crate) unsafe extern "C" fn ibv_create_comp_channel(
    context: *mut ibv_context,
) -> *mut ibv_comp_channel {
    if context.is_null() {
        return pointer(Err(libc::EINVAL));
    }
    // SAFETY: epoll_create1 takes a flag; returns a new fd or -1.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return pointer(Err(last_errno()));
    }
    let channel = Box::new(Channel {
        ibv: ibv_comp_channel {
            context,
            fd,
            refcnt: 0,
        },
        // SAFETY: a fresh descriptor nobody else owns.
        epoll: unsafe { OwnedFd::from_raw_fd(fd) },
    });
    Box::into_raw(channel).cast()
}

/// `ibv_destroy_comp_channel`: `EBUSY` while queues use it.
pub(crate) unsafe extern "C" fn ibv_destroy_comp_channel(channel: *mut ibv_comp_channel) -> c_int {
    if channel.is_null() {
        return status(Err(libc::EINVAL));
    }
    // SAFETY: a channel from ibv_create_comp_channel.
    if unsafe { channel_refs(channel) }.load(Ordering::Acquire) > 0 {
        return status(Err(libc::EBUSY));
    }
    // SAFETY: as above, freed once.
    drop(unsafe { Box::from_raw(channel.cast::<Channel>()) });
    0
}

/// The channel's `refcnt` (queues using it), updated atomically: queues
/// may be created and destroyed from several threads at once.
///
/// # Safety
/// `channel` is a live channel of this library; its `refcnt` is only
/// accessed through this function.
unsafe fn channel_refs<'a>(channel: *mut ibv_comp_channel) -> &'a AtomicI32 {
    // SAFETY: a c_int field of a live channel, aligned for i32 and only
    // accessed atomically.
    unsafe { AtomicI32::from_ptr(&raw mut (*channel).refcnt) }
}

/// The calling thread's errno after a failed system call.
fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Changes the registration of a queue's eventfd in its channel.
fn epoll_ctl(epoll: c_int, op: c_int, cq: &Cq, events: u32) -> Result<(), i32> {
    let mut ev = libc::epoll_event {
        events,
        u64: (cq as *const Cq) as u64,
    };
    // SAFETY: valid fds and a valid event structure.
    if unsafe { libc::epoll_ctl(epoll, op, cq.cq.event_fd(), &mut ev) } < 0 {
        return Err(last_errno());
    }
    Ok(())
}

/// `ibv_create_cq`.
pub(crate) unsafe extern "C" fn ibv_create_cq(
    context: *mut ibv_context,
    cqe: c_int,
    cq_context: *mut c_void,
    channel: *mut ibv_comp_channel,
    _comp_vector: c_int,
) -> *mut ibv_cq {
    // SAFETY: NULL or an open context.
    let Some(ctx) = (unsafe { Ctx::from_ptr(context) }) else {
        return pointer(Err(libc::EINVAL));
    };
    let max_cqe = ctx.limits().max_cqe as usize;
    let entries = match usize::try_from(cqe) {
        Ok(n) if (1..=max_cqe).contains(&n) => n.max(MIN_CQE),
        _ => return pointer(Err(libc::EINVAL)),
    };
    let queue = match ctx
        .device()
        .and_then(|d| d.create_cq(entries).map_err(|e| errno_of(&e)))
    {
        Ok(q) => q,
        Err(code) => return pointer(Err(code)),
    };
    // SAFETY: plain C data (pointers, integers, pthread objects whose
    // all-zero state is their static initializer in glibc).
    let mut ibv: ibv_cq = unsafe { std::mem::zeroed() };
    ibv.context = context;
    ibv.channel = channel;
    ibv.cq_context = cq_context;
    // The actual size, as verbs reports it.
    ibv.cqe = c_int::try_from(entries).unwrap_or(c_int::MAX);
    let cq = Box::into_raw(Box::new(Cq {
        ibv,
        cq: queue,
        overflow_reported: AtomicBool::new(false),
        acked: AtomicU32::new(0),
    }));
    // SAFETY: just allocated.
    let cq_ref = unsafe { &*cq };
    if let Some(fd) = cq_ref.channel_fd() {
        // Registered disarmed: EPOLLONESHOT without EPOLLIN reports nothing
        // until ibv_req_notify_cq arms it.
        if let Err(code) = epoll_ctl(fd, libc::EPOLL_CTL_ADD, cq_ref, libc::EPOLLONESHOT as u32) {
            // SAFETY: ours, never handed out.
            drop(unsafe { Box::from_raw(cq) });
            return pointer(Err(code));
        }
        // SAFETY: the channel is live; counts the queues on it.
        unsafe { channel_refs(channel) }.fetch_add(1, Ordering::AcqRel);
    }
    cq.cast()
}

/// `ibv_destroy_cq`.
pub(crate) unsafe extern "C" fn ibv_destroy_cq(cq: *mut ibv_cq) -> c_int {
    // SAFETY: NULL or a live queue.
    let Some(c) = (unsafe { Cq::from_ptr(cq) }) else {
        return status(Err(libc::EINVAL));
    };
    if let Some(fd) = c.channel_fd() {
        // Failure only means it was not registered.
        let _ = epoll_ctl(fd, libc::EPOLL_CTL_DEL, c, 0);
        // SAFETY: the channel is live (it has this queue on it).
        unsafe { channel_refs(c.ibv.channel) }.fetch_sub(1, Ordering::AcqRel);
    }
    // SAFETY: a queue from ibv_create_cq, freed once.
    drop(unsafe { Box::from_raw(cq.cast::<Cq>()) });
    0
}

/// `ibv_context_ops::poll_cq`, behind the inline `ibv_poll_cq`.
pub(crate) unsafe extern "C" fn poll_cq(
    cq: *mut ibv_cq,
    num_entries: c_int,
    wc: *mut ibv_wc,
) -> c_int {
    // SAFETY: NULL or a live queue.
    let Some(c) = (unsafe { Cq::from_ptr(cq) }) else {
        return -1;
    };
    let Ok(wanted) = usize::try_from(num_entries) else {
        return -1;
    };
    if wc.is_null() && wanted > 0 {
        return -1;
    }
    let mut done = 0;
    let mut batch = [WorkCompletion::default(); 32];
    while done < wanted {
        let take = (wanted - done).min(batch.len());
        let n = c.cq.poll(&mut batch[..take]);
        for (i, w) in batch[..n].iter().enumerate() {
            // SAFETY: the caller passes num_entries writable ibv_wc.
            unsafe { wc.add(done + i).write(to_ibv_wc(w)) };
        }
        done += n;
        if n < take {
            break;
        }
    }
    if c.cq.overflowed() && !c.overflow_reported.swap(true, Ordering::Relaxed) {
        // SAFETY: the queue's context is open while the queue exists.
        if let Some(ctx) = unsafe { Ctx::from_ptr(c.ibv.context) } {
            ctx.async_events().report_cq_error(cq);
        }
    }
    c_int::try_from(done).unwrap_or(c_int::MAX)
}

/// A provider completion as verbs' `ibv_wc`.
fn to_ibv_wc(w: &WorkCompletion) -> ibv_wc {
    // SAFETY: plain C data; all zeros is valid.
    let mut wc: ibv_wc = unsafe { std::mem::zeroed() };
    wc.wr_id = w.wr_id;
    wc.status = match w.status {
        WcStatus::Success => ibv_wc_status_IBV_WC_SUCCESS,
        WcStatus::LocalLengthError => ibv_wc_status_IBV_WC_LOC_LEN_ERR,
        WcStatus::LocalQpOperationError => ibv_wc_status_IBV_WC_LOC_QP_OP_ERR,
        WcStatus::LocalProtectionError => ibv_wc_status_IBV_WC_LOC_PROT_ERR,
        WcStatus::WrFlushError => ibv_wc_status_IBV_WC_WR_FLUSH_ERR,
        WcStatus::RemoteAccessError => ibv_wc_status_IBV_WC_REM_ACCESS_ERR,
        WcStatus::RemoteInvalidRequest => ibv_wc_status_IBV_WC_REM_INV_REQ_ERR,
        WcStatus::RemoteOperationalError => ibv_wc_status_IBV_WC_REM_OP_ERR,
        WcStatus::RetryExceeded => ibv_wc_status_IBV_WC_RETRY_EXC_ERR,
        WcStatus::RnrRetryExceeded => ibv_wc_status_IBV_WC_RNR_RETRY_EXC_ERR,
    };
    wc.opcode = match w.opcode {
        WcOpcode::Send => ibv_wc_opcode_IBV_WC_SEND,
        WcOpcode::RdmaWrite => ibv_wc_opcode_IBV_WC_RDMA_WRITE,
        WcOpcode::RdmaRead => ibv_wc_opcode_IBV_WC_RDMA_READ,
        WcOpcode::CompareSwap => ibv_wc_opcode_IBV_WC_COMP_SWAP,
        WcOpcode::FetchAdd => ibv_wc_opcode_IBV_WC_FETCH_ADD,
        WcOpcode::Recv => ibv_wc_opcode_IBV_WC_RECV,
        WcOpcode::RecvRdmaWithImm => ibv_wc_opcode_IBV_WC_RECV_RDMA_WITH_IMM,
    };
    wc.byte_len = w.byte_len;
    if let Some(imm) = w.imm_data {
        // The provider holds the wire's big-endian value in host order;
        // verbs hands it over in network order.
        wc.__bindgen_anon_1.imm_data = imm.to_be();
        wc.wc_flags = ibv_wc_flags_IBV_WC_WITH_IMM;
    }
    wc.qp_num = w.qp_num;
    wc.pkey_index = 0;
    wc
}

/// `ibv_context_ops::req_notify_cq`, behind the inline
/// `ibv_req_notify_cq`: arms the queue's channel registration (solicited
/// only or not: any completion notifies).
pub(crate) unsafe extern "C" fn req_notify_cq(cq: *mut ibv_cq, _solicited_only: c_int) -> c_int {
    // SAFETY: NULL or a live queue.
    let Some(c) = (unsafe { Cq::from_ptr(cq) }) else {
        return libc::EINVAL;
    };
    let Some(fd) = c.channel_fd() else {
        return libc::EINVAL;
    };
    // Forget signals of completions added before now, then ask for the
    // next one.
    drain_event_fd(&c.cq);
    c.cq.request_notify();
    match epoll_ctl(
        fd,
        libc::EPOLL_CTL_MOD,
        c,
        (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
    ) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

/// `ibv_get_cq_event`: waits for an armed queue of the channel to get a
/// completion (or fails with `EAGAIN` if the application made the channel
/// fd non-blocking and none has).
pub(crate) unsafe extern "C" fn ibv_get_cq_event(
    channel: *mut ibv_comp_channel,
    cq_out: *mut *mut ibv_cq,
    cq_context: *mut *mut c_void,
) -> c_int {
    if channel.is_null() || cq_out.is_null() || cq_context.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    // SAFETY: a live channel.
    let fd = unsafe { (*channel).fd };
    // SAFETY: fcntl on our fd.
    let nonblocking = unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0;
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    loop {
        // SAFETY: one event into a valid structure.
        let n = unsafe { libc::epoll_wait(fd, &mut ev, 1, if nonblocking { 0 } else { -1 }) };
        if n == 1 {
            break;
        }
        let err = if n == 0 { libc::EAGAIN } else { last_errno() };
        if err != libc::EINTR {
            set_errno(err);
            return -1;
        }
    }
    let cq = ev.u64 as *mut Cq;
    // SAFETY: the epoll data is a queue registered on this channel, live
    // until ibv_destroy_cq removes it.
    let c = unsafe { &*cq };
    drain_event_fd(&c.cq);
    // SAFETY: the caller's out-parameters.
    unsafe {
        cq_out.write(cq.cast());
        cq_context.write(c.ibv.cq_context);
    }
    0
}

/// Resets a queue's eventfd.
fn drain_event_fd(cq: &CompletionQueue) {
    let mut value = 0u64;
    // SAFETY: reads 8 bytes into a u64 from the queue's non-blocking
    // eventfd; EAGAIN (already reset) is fine.
    unsafe { libc::read(cq.event_fd(), (&raw mut value).cast(), 8) };
}

/// `ibv_ack_cq_events`.
pub(crate) unsafe extern "C" fn ibv_ack_cq_events(cq: *mut ibv_cq, nevents: u32) {
    // SAFETY: NULL or a live queue.
    if let Some(c) = unsafe { Cq::from_ptr(cq) } {
        c.acked.fetch_add(nevents, Ordering::Relaxed);
    }
}
