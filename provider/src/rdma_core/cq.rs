//! Completion queues on a verbs device, with a completion channel to
//! sleep on.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use verbs_sys as sys;

use super::{RdmaContext, check, convert, last_error};
use crate::{VerbsError, WorkCompletion};

/// How long `poll_wait` spins before it sleeps on the channel.
const POLL_SPIN: Duration = Duration::from_micros(20);

/// Completions taken from the device per `ibv_poll_cq` call.
const BATCH: usize = 16;

/// A completion queue (`ibv_cq`) and its completion channel.
pub(crate) struct RdmaCq {
    raw: NonNull<sys::ibv_cq>,
    channel: NonNull<sys::ibv_comp_channel>,
    capacity: usize,
    /// Completions taken from the device but not yet handed out (a drain
    /// that another thread ran), served before the device's; the lock
    /// also orders every poll of the device.
    soft: Mutex<VecDeque<WorkCompletion>>,
    pub(crate) ctx: Arc<RdmaContext>,
}

// SAFETY: verbs objects may be used from any thread; polls are serialised
// by `soft`'s lock; the pointers are freed only in Drop.
unsafe impl Send for RdmaCq {}
// SAFETY: as for Send.
unsafe impl Sync for RdmaCq {}

impl RdmaCq {
    /// A queue of at least `capacity` entries on `ctx`.
    ///
    /// # Errors
    /// [`VerbsError::InvalidArgument`] for 0 or more than the device
    /// allows; a failed verbs call.
    pub(crate) fn new(ctx: &Arc<RdmaContext>, capacity: usize) -> Result<Arc<RdmaCq>, VerbsError> {
        if capacity == 0 {
            return Err(VerbsError::InvalidArgument("CQ capacity 0"));
        }
        if capacity > ctx.limits.max_cqe as usize {
            return Err(VerbsError::InvalidArgument(
                "CQ capacity above the device's max_cqe",
            ));
        }
        // SAFETY: a live context.
        let channel = NonNull::new(unsafe { sys::ibv_create_comp_channel(ctx.raw()) })
            .ok_or_else(|| last_error("ibv_create_comp_channel"))?;
        // SAFETY: the channel is live; its fd belongs to it.
        let fd = unsafe { channel.as_ref().fd };
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own; polls must not
        // block in ibv_get_cq_event.
        unsafe {
            libc::fcntl(
                fd,
                libc::F_SETFL,
                libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
            )
        };
        // SAFETY: a live context and channel; no cq_context.
        let raw = unsafe {
            sys::ibv_create_cq(
                ctx.raw(),
                capacity as i32,
                std::ptr::null_mut(),
                channel.as_ptr(),
                0,
            )
        };
        let Some(raw) = NonNull::new(raw) else {
            let err = last_error("ibv_create_cq");
            // SAFETY: the channel has no queue yet and is freed once.
            unsafe { sys::ibv_destroy_comp_channel(channel.as_ptr()) };
            return Err(err);
        };
        let cq = Arc::new(RdmaCq {
            raw,
            channel,
            capacity,
            soft: Mutex::new(VecDeque::new()),
            ctx: Arc::clone(ctx),
        });
        ctx.completions.add_cq(&cq);
        Ok(cq)
    }

    /// The raw queue, for creating queue pairs.
    pub(crate) fn raw(&self) -> *mut sys::ibv_cq {
        self.raw.as_ptr()
    }

    /// The capacity asked for.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Takes up to `out.len()` completions: first those a drain set
    /// aside, then the device's.
    pub(crate) fn poll(&self, out: &mut [WorkCompletion]) -> usize {
        let mut soft = self.soft.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = out.len().min(soft.len());
        for (slot, wc) in out.iter_mut().zip(soft.drain(..n)) {
            *slot = wc;
        }
        while n < out.len() {
            let got = self.poll_device(&mut out[n..]);
            n += got;
            if got == 0 {
                break;
            }
        }
        n
    }

    /// Moves what the device has completed into the set-aside queue, so
    /// that the work requests' memory is released now (a pin-on-demand
    /// invalidation waiting for them runs in the thread that would
    /// otherwise poll). Does nothing if another thread is polling: its
    /// poll makes the same progress. The set-aside queue holds at most the
    /// queue's capacity: past that the completions stay on the device, as
    /// they would in a queue nobody polls (the invalidation's wait is
    /// bounded).
    pub(crate) fn drain(&self) -> usize {
        let Ok(mut soft) = self.soft.try_lock() else {
            return 0;
        };
        let mut buf = [WorkCompletion::default(); BATCH];
        let mut total = 0;
        loop {
            let room = self.capacity.saturating_sub(soft.len()).min(BATCH);
            if room == 0 {
                return total;
            }
            let got = self.poll_device(&mut buf[..room]);
            soft.extend(&buf[..got]);
            total += got;
            if got < room {
                return total;
            }
        }
    }

    /// One `ibv_poll_cq` of up to `BATCH` entries, converted; the caller
    /// holds the `soft` lock.
    fn poll_device(&self, out: &mut [WorkCompletion]) -> usize {
        // SAFETY: plain data; zero is a valid value.
        let mut wcs: [sys::ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        let want = out.len().min(BATCH);
        // SAFETY: a live queue and room for `want` entries.
        let got = unsafe { sys::ibv_poll_cq(self.raw(), want as i32, wcs.as_mut_ptr()) };
        let got = got.max(0) as usize;
        for (slot, wc) in out.iter_mut().zip(&wcs[..got]) {
            *slot = convert::completion(wc);
            self.ctx.completions.completed(slot);
        }
        got
    }

    /// Like `poll`, waiting up to `timeout` for the first completion:
    /// spinning for 20 µs, then asleep on the completion channel.
    pub(crate) fn poll_wait(&self, out: &mut [WorkCompletion], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let spin_end = Instant::now() + POLL_SPIN.min(timeout);
        loop {
            let n = self.poll(out);
            if n > 0 || out.is_empty() {
                return n;
            }
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            if now < spin_end {
                std::thread::yield_now();
                continue;
            }
            // Arm, look once more (a completion may have come before the
            // arming), then sleep until the channel fires.
            if self.request_notify().is_err() {
                std::thread::sleep(Duration::from_micros(200).min(deadline - now));
                continue;
            }
            let n = self.poll(out);
            if n > 0 {
                return n;
            }
            self.sleep_on_channel(deadline - now);
        }
    }

    /// Waits up to `timeout` for the channel and consumes its events.
    fn sleep_on_channel(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.event_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        self.consume_events();
    }

    /// Reads and acknowledges the channel's pending events (the channel is
    /// non-blocking), as `ibv_destroy_cq` needs every event acknowledged.
    fn consume_events(&self) {
        let mut n = 0;
        loop {
            let mut cq = std::ptr::null_mut();
            let mut cq_ctx = std::ptr::null_mut();
            // SAFETY: a live channel and valid out-pointers.
            let rc = unsafe { sys::ibv_get_cq_event(self.channel.as_ptr(), &mut cq, &mut cq_ctx) };
            if rc != 0 {
                break;
            }
            n += 1;
        }
        if n > 0 {
            // SAFETY: acknowledges the `n` events just read for this queue
            // (the channel serves this queue only).
            unsafe { sys::ibv_ack_cq_events(self.raw(), n) };
        }
    }

    /// The completion channel's descriptor.
    pub(crate) fn event_fd(&self) -> i32 {
        // SAFETY: the channel is live while the queue is.
        unsafe { self.channel.as_ref().fd }
    }

    /// Arms the queue: the next completion fires the channel.
    pub(crate) fn request_notify(&self) -> Result<(), VerbsError> {
        self.consume_events();
        // SAFETY: a live queue.
        check("ibv_req_notify_cq", unsafe {
            sys::ibv_req_notify_cq(self.raw(), 0)
        })
    }
}

impl Drop for RdmaCq {
    fn drop(&mut self) {
        self.consume_events();
        // SAFETY: queue pairs keep their queues alive, so none uses it; the
        // queue, then its channel, are freed once.
        unsafe {
            sys::ibv_destroy_cq(self.raw());
            sys::ibv_destroy_comp_channel(self.channel.as_ptr());
        }
    }
}
