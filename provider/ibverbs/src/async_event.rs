//! Asynchronous events (`ibv_get_async_event`): the one the device reports
//! is `IBV_EVENT_CQ_ERR`, once per completion queue that overflowed (a
//! completion was dropped because the queue was full).

use std::collections::VecDeque;
use std::ffi::c_int;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

use crate::context::Ctx;
use crate::errno::set_errno;
use crate::sys::*;

/// A context's pending events and the `async_fd` that signals them.
pub(crate) struct AsyncEvents {
    fd: OwnedFd,
    queue: Mutex<VecDeque<ibv_async_event>>,
}

impl AsyncEvents {
    /// An empty queue with a fresh eventfd.
    pub(crate) fn new() -> Result<AsyncEvents, i32> {
        // SAFETY: eventfd takes integer arguments; returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(AsyncEvents {
            // SAFETY: a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            queue: Mutex::new(VecDeque::new()),
        })
    }

    /// The fd applications poll (`ibv_context::async_fd`).
    pub(crate) fn raw_fd(&self) -> c_int {
        self.fd.as_raw_fd()
    }

    /// Queues `IBV_EVENT_CQ_ERR` for `cq` and wakes a waiter.
    pub(crate) fn report_cq_error(&self, cq: *mut ibv_cq) {
        let event = ibv_async_event {
            element: ibv_async_event__bindgen_ty_1 { cq },
            event_type: ibv_event_type_IBV_EVENT_CQ_ERR,
        };
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(event);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 to our eventfd.
        unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    fn take(&self) -> Option<ibv_async_event> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }
}

/// `ibv_get_async_event`: the next event, waiting for one (or `EAGAIN` if
/// the application made `async_fd` non-blocking).
pub(crate) unsafe extern "C" fn ibv_get_async_event(
    context: *mut ibv_context,
    event: *mut ibv_async_event,
) -> c_int {
    // SAFETY: NULL or an open context.
    let Some(ctx) = (unsafe { Ctx::from_ptr(context) }) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    if event.is_null() {
        set_errno(libc::EINVAL);
        return -1;
    }
    let events = ctx.async_events();
    loop {
        if let Some(e) = events.take() {
            // SAFETY: the caller's writable event.
            unsafe { event.write(e) };
            return 0;
        }
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into a u64 from our eventfd.
        let n = unsafe { libc::read(events.raw_fd(), (&raw mut value).cast(), 8) };
        if n < 0 {
            let err = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if err != libc::EINTR {
                set_errno(err);
                return -1;
            }
        }
    }
}

/// `ibv_ack_async_event`: nothing to release.
pub(crate) extern "C" fn ibv_ack_async_event(_event: *mut ibv_async_event) {}
