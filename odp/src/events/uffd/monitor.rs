//! The monitor thread: polls the userfaultfd and hands each batch of
//! events to a sink under the sink's gate.

use std::ffi::c_void;
use std::fmt;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::fd::{Event, MAX_BATCH, RegisterError, Userfaultfd, errno, getpid};
use crate::sys::page_size;

/// Receives the monitor's events.
///
/// The guard is a generic associated type rather than `Box<dyn Any>`: no allocation per
/// batch, the guard is typed (e.g. a `MutexGuard` of the structure that the invalidation
/// must update), and [`event`](Self::event) receives it mutably, so "event() runs under the
/// guard" is enforced by the type system instead of a convention. `Monitor::start` is
/// generic over the sink, but `Monitor` itself is not (the thread owns the sink). A sink that
/// needs dynamic dispatch can use `type Guard<'a> = Box<dyn Any + 'a>` itself.
pub trait EventSink: Send + Sync + 'static {
    /// The gate guard held across `read(2)` and the callbacks of one batch.
    type Guard<'a>
    where
        Self: 'a;

    /// Called on the monitor thread after `poll` reported the fd readable and **before** the
    /// events are read: the threads that caused them are still blocked in the kernel.
    ///
    /// Must not change registered mappings and must not block on a thread that might be
    /// changing one (that thread waits for this monitor).
    fn begin_batch(&self) -> Self::Guard<'_>;

    /// Called for each event of the batch, in kernel order, with the batch's guard.
    fn event(&self, guard: &mut Self::Guard<'_>, event: &Event);

    /// Called once per batch after the last event (also when the read found nothing).
    /// `delivered` is the number of events of the batch. The default drops the guard; a
    /// sink can flush accumulated invalidations here before releasing the gate.
    fn end_batch(&self, guard: Self::Guard<'_>, delivered: usize) {
        let _ = delivered;
        drop(guard);
    }
}

/// Monitor counters (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// `Remove` events.
    pub remove: u64,
    /// `Unmap` events.
    pub unmap: u64,
    /// `Remap` events.
    pub remap: u64,
    /// `Pagefault` events.
    pub pagefault: u64,
    /// `Fork` events.
    pub fork: u64,
    /// Batches (begin_batch/end_batch pairs).
    pub batches: u64,
    /// Batches whose read found nothing (poll raced with a vanished event).
    pub empty_batches: u64,
    /// Page faults resolved (WP cleared or thread woken).
    pub pagefaults_woken: u64,
    /// Page faults whose resolution ioctl failed.
    pub wake_failures: u64,
    /// `read(2)` errors other than EINTR/EAGAIN.
    pub read_errors: u64,
    /// `poll(2)` errors other than EINTR, and POLLERR/POLLNVAL on the uffd.
    pub poll_errors: u64,
    /// `poll(2)` calls interrupted by a signal (EINTR), retried.
    pub poll_eintr: u64,
    /// Batches in which the sink panicked (the monitor kept running).
    pub sink_panics: u64,
    /// Events read but not delivered because the sink panicked.
    pub dropped_events: u64,
}

#[derive(Default)]
struct Counters {
    remove: AtomicU64,
    unmap: AtomicU64,
    remap: AtomicU64,
    pagefault: AtomicU64,
    fork: AtomicU64,
    batches: AtomicU64,
    empty_batches: AtomicU64,
    pagefaults_woken: AtomicU64,
    wake_failures: AtomicU64,
    read_errors: AtomicU64,
    poll_errors: AtomicU64,
    poll_eintr: AtomicU64,
    sink_panics: AtomicU64,
    dropped_events: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            remove: g(&self.remove),
            unmap: g(&self.unmap),
            remap: g(&self.remap),
            pagefault: g(&self.pagefault),
            fork: g(&self.fork),
            batches: g(&self.batches),
            empty_batches: g(&self.empty_batches),
            pagefaults_woken: g(&self.pagefaults_woken),
            wake_failures: g(&self.wake_failures),
            read_errors: g(&self.read_errors),
            poll_errors: g(&self.poll_errors),
            poll_eintr: g(&self.poll_eintr),
            sink_panics: g(&self.sink_panics),
            dropped_events: g(&self.dropped_events),
        }
    }
}

struct Shared {
    uffd: Userfaultfd,
    stop: OwnedFd,
    counters: Counters,
}

impl Shared {
    /// Unblocks a faulting thread: clear WP for WP faults (which also wakes), plain wake
    /// otherwise (or if clearing failed).
    fn resolve_pagefault(&self, addr: usize, wp: bool) {
        let page = page_size();
        let start = addr & !(page - 1);
        let ok = (wp && self.uffd.write_protect(start, page, false).is_ok())
            || self.uffd.wake(start, page).is_ok();
        bump(if ok {
            &self.counters.pagefaults_woken
        } else {
            &self.counters.wake_failures
        });
    }

    /// Counts events and resolves page faults (before any sink code runs, so a panicking
    /// sink cannot leave a faulting thread blocked).
    fn account(&self, events: &[Event]) {
        let c = &self.counters;
        for ev in events {
            match *ev {
                Event::Remove { .. } => bump(&c.remove),
                Event::Unmap { .. } => bump(&c.unmap),
                Event::Remap { .. } => bump(&c.remap),
                Event::Fork => bump(&c.fork),
                Event::Pagefault { addr, wp, .. } => {
                    bump(&c.pagefault);
                    self.resolve_pagefault(addr, wp);
                }
            }
        }
    }
}

/// A thread that watches a [`Userfaultfd`] and feeds its events to an [`EventSink`].
///
/// Dropping the monitor stops and joins the thread, then closes the uffd, which removes
/// every registration made through it and releases any thread still waiting for an event.
///
/// **fork():** `EVENT_FORK` is not requested, so a child's VMAs lose their registration
/// and the child is simply unmonitored (its `munmap` does not block). A child that does not
/// `exec` would also inherit a copy of the uffd, which keeps the parent's uffd context
/// alive: if the parent then dropped the `Monitor`, its registrations would stay in place
/// with nobody reading, and its next `munmap` of such a range would block until the child
/// exits (measured). The `pthread_atfork` handler installed by [`Userfaultfd::open`]
/// replaces the child's copy by an inert eventfd, which closes that hole for `fork()`
/// (not for a raw `clone()` syscall). A `Monitor` value used in a forked child is inert:
/// `register` fails with `PermissionDenied`, and `Drop` neither signals the parent's thread
/// (the shutdown eventfd is shared with the parent) nor joins.
pub struct Monitor {
    shared: Arc<Shared>,
    pub(super) thread: Option<JoinHandle<()>>,
    owner_pid: libc::pid_t,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("uffd", &self.shared.uffd)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Name of the monitor thread.
pub const THREAD_NAME: &str = "uffd-monitor";

impl Monitor {
    /// Opens a [`Userfaultfd`] and starts the monitor thread (named [`THREAD_NAME`]).
    pub fn start<S: EventSink>(sink: Arc<S>) -> io::Result<Monitor> {
        Self::start_with(Userfaultfd::open()?, sink)
    }

    /// Starts the monitor thread on an existing [`Userfaultfd`].
    pub fn start_with<S: EventSink>(uffd: Userfaultfd, sink: Arc<S>) -> io::Result<Monitor> {
        // SAFETY: eventfd takes integer arguments and returns a new fd or -1.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `stop` is a freshly created fd that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let shared = Arc::new(Shared {
            uffd,
            stop,
            counters: Counters::default(),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || run(&thread_shared, &*sink))?;
        Ok(Monitor {
            shared,
            thread: Some(thread),
            owner_pid: getpid(),
        })
    }

    /// Registers `[addr, addr + len)` (write-protect-only); see [`Userfaultfd::register_wp`].
    /// May be called from any thread, including from the sink.
    pub fn register(&self, addr: usize, len: usize) -> Result<(), RegisterError> {
        self.shared.uffd.register_wp(addr, len)
    }

    /// Registers every mapping in `[addr, addr + len)`, holes allowed; see
    /// [`Userfaultfd::register_wp_span`].
    pub fn register_span(&self, addr: usize, len: usize) -> Result<(), RegisterError> {
        self.shared.uffd.register_wp_span(addr, len)
    }

    #[cfg(test)]
    /// Unregisters `[addr, addr + len)`; see [`Userfaultfd::unregister`].
    pub fn unregister(&self, addr: usize, len: usize) -> Result<(), RegisterError> {
        self.shared.uffd.unregister(addr, len)
    }

    #[cfg(test)]
    /// The underlying userfaultfd (features, raw fd).
    pub fn userfaultfd(&self) -> &Userfaultfd {
        &self.shared.uffd
    }

    /// A snapshot of the counters. The counters of a batch are updated while its guard is
    /// held, so a caller holding (or having taken) the gate sees complete numbers.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    #[cfg(test)]
    /// True while the monitor thread is running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let Some(handle) = self.thread.take() else {
            return;
        };
        if getpid() != self.owner_pid {
            // Forked child: the thread does not exist here and the eventfd is shared with
            // the parent. Do not signal, do not join; our fd copies are closed below.
            std::mem::forget(handle);
            return;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        let _ = unsafe {
            libc::write(
                self.shared.stop.as_raw_fd(),
                (&one as *const u64).cast::<c_void>(),
                size_of::<u64>(),
            )
        };
        if handle.thread().id() == thread::current().id() {
            // Dropped from inside the sink: the loop sees the eventfd and exits by itself.
            return;
        }
        let _ = handle.join();
    }
}

/// The monitor loop.
fn run<S: EventSink>(shared: &Shared, sink: &S) {
    let mut events = [Event::Fork; MAX_BATCH];
    let mut fds = [
        libc::pollfd {
            fd: shared.uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: shared.stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let c = &shared.counters;
    loop {
        fds[0].revents = 0;
        fds[1].revents = 0;
        // SAFETY: `fds` is a valid array of 2 pollfd for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if errno() == libc::EINTR {
                bump(&c.poll_eintr);
            } else {
                bump(&c.poll_errors);
                thread::sleep(Duration::from_millis(1));
            }
            continue;
        }
        if fds[1].revents != 0 {
            return;
        }
        let rev = fds[0].revents;
        if rev == 0 {
            continue;
        }
        if rev & (libc::POLLERR | libc::POLLNVAL) != 0 {
            // Not expected on an initialised non-blocking uffd. Still try to read (below)
            // so nobody stays blocked, but do not spin.
            bump(&c.poll_errors);
        }
        let n = batch(shared, sink, &mut events);
        if n == 0 && rev & libc::POLLIN == 0 {
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// One batch: gate, read, deliver, release. Returns the number of events read.
///
/// All counters of the batch are updated while the guard is held, so a thread that takes
/// the gate after a changing call returned sees them.
fn batch<S: EventSink>(shared: &Shared, sink: &S, events: &mut [Event; MAX_BATCH]) -> usize {
    let c = &shared.counters;
    let mut read_n = 0usize;
    let mut delivered = 0usize;
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut guard = sink.begin_batch();
        bump(&c.batches);
        read_n = match shared.uffd.read_events(events) {
            Ok(n) => n,
            Err(_) => {
                bump(&c.read_errors);
                0
            }
        };
        // Count and resolve page faults before any event callback can panic.
        shared.account(&events[..read_n]);
        if read_n == 0 {
            bump(&c.empty_batches);
        }
        for ev in &events[..read_n] {
            sink.event(&mut guard, ev);
            delivered += 1;
        }
        sink.end_batch(guard, read_n);
    }));
    if outcome.is_err() {
        bump(&c.sink_panics);
        c.dropped_events
            .fetch_add((read_n - delivered) as u64, Ordering::Relaxed);
        if read_n == 0 {
            // The sink panicked before the read (e.g. in begin_batch): drain anyway, without
            // the gate, so the changing threads are not left blocked forever.
            if let Ok(n) = shared.uffd.read_events(events) {
                shared.account(&events[..n]);
                c.dropped_events.fetch_add(n as u64, Ordering::Relaxed);
                read_n = n;
            }
        }
    }
    read_n
}
