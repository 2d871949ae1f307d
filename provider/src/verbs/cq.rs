//! Completion queues.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::VerbsError;
use crate::device::{Claim, Device};
use crate::rc::{CompletionSink, WorkCompletion};
#[cfg(feature = "rdma-core")]
use crate::rdma_core::RdmaCq;

/// How long [`CompletionQueue::poll_wait`] spins at most before it sleeps
/// (receiving for its device meanwhile): long enough to cover the peer's
/// handling of a window of full-size packets (128 of 4 KiB take it about
/// 150 µs here), so that a stream's waits rarely pay a sleep and a
/// wake-up. A sleep also hands receiving to the progress thread: a third
/// busy thread on a two-core machine, which slows the peer, whose next
/// answer then outlasts the spin again (64 KiB WRITEs streamed at 1.5
/// instead of 3.5 GB/s, the waiting thread sleeping 433 times in 16384
/// packets, with a spin of 100 µs).
const POLL_SPIN: Duration = Duration::from_micros(500);

/// The shared state of a completion queue.
pub(crate) struct CqInner {
    entries: Mutex<Entries>,
    capacity: usize,
    ready: Condvar,
    /// Threads in `poll_wait`; changed only under the `entries` lock, so a
    /// push that sees 0 under that lock has nobody to wake.
    waiters: AtomicUsize,
    /// The number of visible entries, for polls that spin without the
    /// lock; written under the `entries` lock.
    len: AtomicUsize,
    overflowed: AtomicBool,
    /// Signalled when a completion arrives in an empty queue, for `epoll`,
    /// once someone asked for it ([`CompletionQueue::event_fd`]).
    event_fd: OwnedFd,
    events_wanted: AtomicBool,
    /// Set by `request_notify`: the next completion signals `event_fd`
    /// even if the queue is not empty.
    notify_next: AtomicBool,
}

/// The queued completions: the first `visible` can be polled; the rest
/// wait for [`CompletionSink::reveal`] (the first of them was added
/// hidden, and nothing overtakes it).
struct Entries {
    queue: VecDeque<WorkCompletion>,
    visible: usize,
}

impl CompletionSink for CqInner {
    /// Adds completions; a full queue drops the rest and records the
    /// overflow, as verbs reports a CQ overrun.
    fn push_all(&self, wcs: &[WorkCompletion]) {
        let (entries, behind_hidden) = self.add(wcs);
        // Behind a hidden one they wait for its reveal.
        if !behind_hidden {
            self.show_all(entries);
        }
    }

    fn push_hidden(&self, wc: WorkCompletion) {
        drop(self.add(&[wc]));
    }

    fn reveal(&self) {
        self.show_all(self.lock_entries());
    }
}

impl CqInner {
    /// Moves up to `out.len()` visible completions of the locked
    /// `entries` into `out`, keeping the count spinning polls read.
    fn take_from(&self, entries: &mut Entries, out: &mut [WorkCompletion]) -> usize {
        let n = out.len().min(entries.visible);
        for (slot, wc) in out.iter_mut().zip(entries.queue.drain(..n)) {
            *slot = wc;
        }
        entries.visible -= n;
        self.len.store(entries.visible, Ordering::Release);
        n
    }

    fn lock_entries(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues what fits of `wcs` (not yet visible); also says whether
    /// hidden completions are queued before them.
    fn add(&self, wcs: &[WorkCompletion]) -> (MutexGuard<'_, Entries>, bool) {
        let mut entries = self.lock_entries();
        let behind_hidden = entries.visible < entries.queue.len();
        let room = self.capacity.saturating_sub(entries.queue.len());
        if wcs.len() > room {
            self.overflowed.store(true, Ordering::Relaxed);
        }
        entries.queue.extend(wcs.iter().take(room).copied());
        (entries, behind_hidden)
    }

    /// Makes every queued completion visible, and wakes whoever can be
    /// waiting for them.
    fn show_all(&self, mut entries: MutexGuard<'_, Entries>) {
        if entries.visible == entries.queue.len() {
            return;
        }
        let was_empty = entries.visible == 0;
        entries.visible = entries.queue.len();
        self.len.store(entries.visible, Ordering::Release);
        // A waiter sleeps only on an empty queue, and the push that ended
        // the emptiness woke it: later pushes have nobody to wake.
        let wake = was_empty && self.waiters.load(Ordering::Relaxed) > 0;
        drop(entries);
        // Both cost a system call, so only when someone can be waiting: a
        // thread in poll_wait, or an epoll user who drained the queue.
        if wake {
            self.ready.notify_all();
        }
        let requested = self.notify_next.load(Ordering::Relaxed)
            && self.notify_next.swap(false, Ordering::AcqRel);
        if (was_empty && self.events_wanted.load(Ordering::Relaxed)) || requested {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd; a full
            // counter (EAGAIN) only means the reader is far behind.
            unsafe { libc::write(self.event_fd.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }
}

/// A completion queue. Cloning shares the queue.
#[derive(Clone)]
pub struct CompletionQueue {
    pub(crate) imp: CqImpl,
}

/// The backend of a completion queue.
#[derive(Clone)]
pub(crate) enum CqImpl {
    /// The userspace device's queue.
    User(UserCq),
    /// A verbs device's `ibv_cq`.
    #[cfg(feature = "rdma-core")]
    Rdma(Arc<RdmaCq>),
}

/// A completion queue of the userspace device.
#[derive(Clone)]
pub(crate) struct UserCq {
    pub(crate) inner: Arc<CqInner>,
    /// The device whose receive path a poll that finds nothing runs (none
    /// for the engine's simulation, which has no device).
    dev: Option<Arc<Device>>,
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl CompletionQueue {
    /// A queue of the userspace device `dev` (none: the engine's
    /// simulation).
    pub(crate) fn new(dev: Option<Arc<Device>>, capacity: usize) -> Result<Self, VerbsError> {
        Ok(CompletionQueue {
            imp: CqImpl::User(UserCq::new(dev, capacity)?),
        })
    }

    /// A queue of the verbs device `ctx`.
    #[cfg(feature = "rdma-core")]
    pub(crate) fn rdma(
        ctx: &Arc<crate::rdma_core::RdmaContext>,
        capacity: usize,
    ) -> Result<Self, VerbsError> {
        Ok(CompletionQueue {
            imp: CqImpl::Rdma(RdmaCq::new(ctx, capacity)?),
        })
    }

    /// The userspace queue (the engine's sink), if this is one.
    #[cfg(test)]
    pub(crate) fn user(&self) -> Option<&UserCq> {
        match &self.imp {
            CqImpl::User(u) => Some(u),
            #[cfg(feature = "rdma-core")]
            CqImpl::Rdma(_) => None,
        }
    }

    /// Moves up to `out.len()` completions into `out`; returns how many.
    /// Finding none, the userspace device receives in the calling thread
    /// (see [`crate::Context::progress`]) and looks again. A thread that
    /// finds none twice in a row (a polling loop) becomes the device's
    /// receiver, as with `Context::progress`, until it stops polling or
    /// arms a completion queue with [`Self::request_notify`].
    pub fn poll(&self, out: &mut [WorkCompletion]) -> usize {
        match &self.imp {
            CqImpl::User(u) => u.poll(out),
            #[cfg(feature = "rdma-core")]
            CqImpl::Rdma(r) => r.poll(out),
        }
    }

    /// Like [`Self::poll`], but waits up to `timeout` for the first
    /// completion: spinning for the first 100 µs on the userspace device
    /// (receiving for it, yielding the CPU between looks), 20 µs on a verbs
    /// device, then asleep (a verbs device: on its completion channel).
    pub fn poll_wait(&self, out: &mut [WorkCompletion], timeout: Duration) -> usize {
        match &self.imp {
            CqImpl::User(u) => u.poll_wait(out, timeout),
            #[cfg(feature = "rdma-core")]
            CqImpl::Rdma(r) => r.poll_wait(out, timeout),
        }
    }

    /// An eventfd for `epoll` (the completion channel of verbs): from the
    /// first call on, it becomes readable when a completion arrives in an
    /// empty queue (until then the queue signals nothing, which saves a
    /// system call per completion), and on the next completion after
    /// [`Self::request_notify`]. After an event, read the eventfd (which
    /// resets it) and poll until the queue is empty before waiting again,
    /// as with `ibv_get_cq_event` and `ibv_req_notify_cq`; poll once after
    /// the first call too, for completions queued before it.
    ///
    /// On a verbs device this is the descriptor of the queue's completion
    /// channel: it becomes readable on the next completion after
    /// [`Self::request_notify`] only. Do not read it: [`Self::poll_wait`]
    /// and [`Self::request_notify`] consume its events (libibverbs must
    /// acknowledge each one before the queue can be destroyed).
    pub fn event_fd(&self) -> RawFd {
        match &self.imp {
            CqImpl::User(u) => u.event_fd(),
            #[cfg(feature = "rdma-core")]
            CqImpl::Rdma(r) => r.event_fd(),
        }
    }

    /// Asks for the next completion to signal [`Self::event_fd`] even if it
    /// arrives in a queue that is not empty (verbs' `ibv_req_notify_cq`:
    /// notify on the next completion added). On a verbs device a failed
    /// `ibv_req_notify_cq` leaves the queue unarmed (a later
    /// [`Self::poll_wait`] still wakes: it re-arms and sleeps in bounded
    /// steps). On the userspace device, a polling loop of the calling
    /// thread stops receiving for the device here (see [`Self::poll`]): it
    /// is about to wait, and the device's thread receives at once.
    pub fn request_notify(&self) {
        match &self.imp {
            CqImpl::User(u) => u.request_notify(),
            #[cfg(feature = "rdma-core")]
            CqImpl::Rdma(r) => {
                let _ = r.request_notify();
            }
        }
    }

    /// Whether a completion was dropped because the queue was full (a
    /// verbs device reports an overrun as an asynchronous event instead,
    /// which this API does not read: always false there).
    pub fn overflowed(&self) -> bool {
        match &self.imp {
            CqImpl::User(u) => u.inner.overflowed.load(Ordering::Relaxed),
            #[cfg(feature = "rdma-core")]
            CqImpl::Rdma(_) => false,
        }
    }

    /// The queue's capacity.
    pub fn capacity(&self) -> usize {
        match &self.imp {
            CqImpl::User(u) => u.inner.capacity,
            #[cfg(feature = "rdma-core")]
            CqImpl::Rdma(r) => r.capacity(),
        }
    }
}

impl UserCq {
    fn new(dev: Option<Arc<Device>>, capacity: usize) -> Result<Self, VerbsError> {
        if capacity == 0 {
            return Err(VerbsError::InvalidArgument("CQ capacity 0"));
        }
        // SAFETY: eventfd takes integer arguments and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(UserCq {
            inner: Arc::new(CqInner {
                entries: Mutex::new(Entries {
                    queue: VecDeque::with_capacity(capacity.min(1 << 16)),
                    visible: 0,
                }),
                capacity,
                ready: Condvar::new(),
                waiters: AtomicUsize::new(0),
                len: AtomicUsize::new(0),
                overflowed: AtomicBool::new(false),
                notify_next: AtomicBool::new(false),
                // SAFETY: `fd` is a fresh descriptor nobody else owns.
                event_fd: unsafe { OwnedFd::from_raw_fd(fd) },
                events_wanted: AtomicBool::new(false),
            }),
            dev,
        })
    }

    /// See [`CompletionQueue::poll`].
    fn poll(&self, out: &mut [WorkCompletion]) -> usize {
        let n = self.take(out);
        if n > 0 || out.is_empty() || self.progress(Claim::Poll) == 0 {
            return n;
        }
        self.take(out)
    }

    /// Moves up to `out.len()` queued completions into `out`.
    fn take(&self, out: &mut [WorkCompletion]) -> usize {
        self.inner.take_from(&mut self.inner.lock_entries(), out)
    }

    /// See [`CompletionQueue::poll_wait`].
    fn poll_wait(&self, out: &mut [WorkCompletion], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        self.spin_until_nonempty(POLL_SPIN.min(timeout));
        let mut entries = self.inner.lock_entries();
        while entries.visible == 0 {
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            self.inner.waiters.fetch_add(1, Ordering::Relaxed);
            entries = self
                .inner
                .ready
                .wait_timeout(entries, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            self.inner.waiters.fetch_sub(1, Ordering::Relaxed);
        }
        self.inner.take_from(&mut entries, out)
    }

    /// Drives the device's progress in this thread for at most `limit`
    /// until a completion is queued (yielding the CPU when nothing came
    /// in): a completion that comes within the spin costs no hand-over
    /// between threads, no sleep and no wake-up.
    fn spin_until_nonempty(&self, limit: Duration) {
        let driving = self.dev.as_ref().map(|d| d.driving_progress());
        let start = Instant::now();
        while self.inner.len.load(Ordering::Acquire) == 0 && start.elapsed() < limit {
            if self.progress(Claim::Spin) == 0 {
                std::thread::yield_now();
            }
        }
        if let Some(d) = driving
            && self.inner.len.load(Ordering::Acquire) > 0
        {
            d.found();
        }
    }

    /// One receive for the device in this thread (see
    /// [`Device::progress`]); a spinning wait holds the socket with its
    /// [`Device::driving_progress`] guard instead of claiming it per call.
    fn progress(&self, claim: Claim) -> usize {
        self.dev.as_ref().map_or(0, |d| d.progress(claim))
    }

    /// See [`CompletionQueue::event_fd`].
    fn event_fd(&self) -> RawFd {
        self.inner.events_wanted.store(true, Ordering::Relaxed);
        self.inner.event_fd.as_raw_fd()
    }

    /// See [`CompletionQueue::request_notify`].
    fn request_notify(&self) {
        self.inner.notify_next.store(true, Ordering::Release);
        if let Some(dev) = &self.dev {
            dev.end_claim();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn wc(wr_id: u64) -> WorkCompletion {
        WorkCompletion {
            wr_id,
            ..WorkCompletion::default()
        }
    }

    fn user(cq: &CompletionQueue) -> &Arc<CqInner> {
        match &cq.imp {
            CqImpl::User(u) => &u.inner,
            #[cfg(feature = "rdma-core")]
            CqImpl::Rdma(_) => unreachable!(),
        }
    }

    #[test]
    fn a_batch_past_the_capacity_keeps_the_first_in_order_and_records_the_overrun() {
        let cq = CompletionQueue::new(None, 4).unwrap();
        let sink = user(&cq);
        sink.push_all(&[wc(1), wc(2), wc(3)]);
        assert!(!cq.overflowed());
        sink.push_all(&[wc(4), wc(5), wc(6)]);
        assert!(cq.overflowed(), "the overrun is recorded");
        let mut out = [WorkCompletion::default(); 8];
        let n = cq.poll(&mut out);
        let ids: Vec<u64> = out[..n].iter().map(|c| c.wr_id).collect();
        assert_eq!(ids, [1, 2, 3, 4]);
        // A full queue drained makes room again.
        sink.push_all(&[wc(7)]);
        assert_eq!(cq.poll(&mut out), 1);
        assert_eq!(out[0].wr_id, 7);
    }

    /// A thread waiting up to 10 s on `cq`; joined, the ids it got.
    fn waiter(cq: &CompletionQueue) -> std::thread::JoinHandle<Vec<u64>> {
        let cq = cq.clone();
        std::thread::spawn(move || {
            let mut out = [WorkCompletion::default(); 8];
            let n = cq.poll_wait(&mut out, Duration::from_secs(10));
            out[..n].iter().map(|c| c.wr_id).collect()
        })
    }

    #[test]
    fn a_batch_wakes_a_waiter_once_with_all_of_it() {
        let cq = CompletionQueue::new(None, 64).unwrap();
        let sink = Arc::clone(user(&cq));
        let waiter = waiter(&cq);
        // Past the wait's spin, so the waiter sleeps (if it is still
        // spinning, it finds the batch all the same).
        std::thread::sleep(Duration::from_millis(5));
        sink.push_all(&[wc(1), wc(2), wc(3)]);
        assert_eq!(waiter.join().unwrap(), [1, 2, 3]);
    }

    #[test]
    fn a_hidden_completion_wakes_nobody_until_revealed() {
        let cq = CompletionQueue::new(None, 64).unwrap();
        let sink = Arc::clone(user(&cq));
        let fd = cq.event_fd();
        let readable = || {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no waiting.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        let waiter = waiter(&cq);
        std::thread::sleep(Duration::from_millis(5));
        sink.push_hidden(wc(1));
        // Behind the hidden one: hidden too.
        sink.push_all(&[wc(2)]);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "a hidden completion woke the waiter");
        assert!(!readable(), "a hidden completion signalled the event fd");
        sink.reveal();
        assert_eq!(waiter.join().unwrap(), [1, 2]);
        assert!(readable());
    }

    #[test]
    fn hidden_and_visible_completions_against_a_model() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        // The model: every completion added is either shown or waiting;
        // one waits if it was added hidden or after one still waiting; a
        // reveal shows all. Polls return the shown ones, oldest first.
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let capacity = rng.random_range(1..12);
            let cq = CompletionQueue::new(None, capacity).unwrap();
            let sink = user(&cq);
            let mut model: VecDeque<(u64, bool)> = VecDeque::new(); // (id, waiting)
            let mut overflowed = false;
            let mut next = 0u64;
            // A full queue drops what comes and records the overrun.
            let add = |model: &mut VecDeque<(u64, bool)>, overflowed: &mut bool, id, waiting| {
                if model.len() < capacity {
                    model.push_back((id, waiting));
                } else {
                    *overflowed = true;
                }
            };
            for _ in 0..200 {
                match rng.random_range(0..4) {
                    0 => {
                        let n = rng.random_range(0..4);
                        let waiting = model.back().is_some_and(|&(_, w)| w);
                        let ids: Vec<u64> = (next..next + n).collect();
                        next += n;
                        let wcs: Vec<WorkCompletion> = ids.iter().map(|&i| wc(i)).collect();
                        sink.push_all(&wcs);
                        for id in ids {
                            add(&mut model, &mut overflowed, id, waiting);
                        }
                    }
                    1 => {
                        sink.push_hidden(wc(next));
                        add(&mut model, &mut overflowed, next, true);
                        next += 1;
                    }
                    2 => {
                        sink.reveal();
                        model.iter_mut().for_each(|e| e.1 = false);
                    }
                    _ => {
                        let mut out = [WorkCompletion::default(); 5];
                        let want = rng.random_range(0..=out.len());
                        let n = cq.poll(&mut out[..want]);
                        let shown = model.iter().take_while(|e| !e.1).count();
                        let expected: Vec<u64> =
                            model.drain(..want.min(shown)).map(|e| e.0).collect();
                        let got: Vec<u64> = out[..n].iter().map(|c| c.wr_id).collect();
                        assert_eq!(got, expected, "seed {seed}");
                    }
                }
                let shown = model.iter().take_while(|e| !e.1).count();
                assert_eq!(sink.len.load(Ordering::Acquire), shown, "seed {seed}");
                assert_eq!(cq.overflowed(), overflowed, "seed {seed}");
            }
        }
    }
}
