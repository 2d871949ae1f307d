//! Who receives, and when.
//!
//! A device makes progress in two ways:
//! - its **progress thread** runs the timers, and waits on the socket to
//!   receive, so that a passive target works without the application
//!   calling into the library;
//! - an **application thread** that polls (a completion-queue poll that
//!   finds nothing, a spinning completion-queue wait, or
//!   [`crate::Context::progress`] in a memory-polling loop) receives in its
//!   own thread, as userspace transports with manual progress do: a round
//!   trip then needs no hand-over to another thread and back.
//!
//! Receiving is serialised by one lock around the receive buffers, the
//! outboxes and the READ replies in progress, so packets are handled in the
//! order the socket gave them, and replies interleave with them in order,
//! whoever receives. While application threads drive progress (one spins
//! in a completion-queue wait, or one called `progress` in the last
//! [`MANUAL_GRACE`]), the progress thread neither waits on the socket,
//! whose every datagram would wake it, nor takes the receive lock (a
//! holder preempted by spinning threads would stall them for a scheduler
//! tick): it only runs timers. The last spinning thread to leave wakes it,
//! so receiving passes back at once.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use super::{BATCH, SLOT_BYTES, Shared};
use crate::net::{GRO_SLOT_CAPACITY, RecvSlot};
use crate::rc::{Outbox, QpCore};

/// How long after an application thread's last `progress` call the
/// progress thread still leaves the socket to it.
pub(crate) const MANUAL_GRACE: Duration = Duration::from_micros(200);

/// The longest the progress thread sleeps when nothing is due.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// What receiving needs, reused from turn to turn (no allocation per
/// packet): owned by whichever thread holds the device's receive lock.
pub(crate) struct Rx {
    slots: Vec<RecvSlot>,
    /// Answers to requests, sent with the batch.
    out: Outbox,
    /// Requester packets that responses release, sent at once.
    ordered: Outbox,
    /// Queue pairs with a READ reply in progress, continued a budget at a
    /// time after every batch.
    replying: Vec<Arc<QpCore>>,
}

impl Rx {
    /// Receive slots for GRO (64 KiB each) or single packets.
    pub(crate) fn new(gro: bool) -> Self {
        let slot_bytes = if gro { GRO_SLOT_CAPACITY } else { SLOT_BYTES };
        Self {
            slots: (0..BATCH).map(|_| RecvSlot::new(slot_bytes)).collect(),
            out: Outbox::default(),
            ordered: Outbox::default(),
            replying: Vec::new(),
        }
    }
}

/// Application threads driving progress.
#[derive(Default)]
pub(crate) struct Manual {
    /// Threads spinning in a completion-queue wait.
    spinning: AtomicUsize,
    /// When an application thread last called `progress`, in nanoseconds
    /// since the device opened, plus one (0: never).
    last_call: AtomicU64,
}

/// A thread driving progress (see [`super::Device::driving_progress`]).
pub(crate) struct Driving<'a> {
    shared: &'a Shared,
}

impl<'a> Driving<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        shared.manual.spinning.fetch_add(1, Relaxed);
        Self { shared }
    }
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        if self.shared.manual.spinning.fetch_sub(1, Relaxed) == 1 {
            // The last one: the progress thread receives again.
            if let Some(thread) = self.shared.progress_thread.get() {
                thread.unpark();
            }
        }
    }
}

impl Shared {
    fn since_open(&self) -> u64 {
        self.opened.elapsed().as_nanos() as u64 + 1
    }

    /// Whether application threads are receiving.
    fn driven(&self) -> bool {
        if self.manual.spinning.load(Relaxed) > 0 {
            return true;
        }
        let last = self.manual.last_call.load(Relaxed);
        last != 0 && self.since_open().saturating_sub(last) < MANUAL_GRACE.as_nanos() as u64
    }

    fn lock_rx(&self) -> MutexGuard<'_, Rx> {
        self.rx.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The progress thread: timers, then a wait, then what the socket
    /// holds; while application threads receive, only the timers.
    pub(super) fn run(&self) {
        // Reused: the loop allocates nothing per turn.
        let mut qps = Vec::new();
        while !self.stop.load(Relaxed) {
            let wait = self.run_timers(&mut qps);
            if self.driven() {
                std::thread::park_timeout(wait.min(MANUAL_GRACE));
                continue;
            }
            let wait = if self.replies_pending.load(Relaxed) {
                Duration::ZERO
            } else {
                wait
            };
            if !wait.is_zero() && self.transport.wait_readable(wait).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
            if self.receive(&mut self.lock_rx()).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Runs every queue pair's due timer; returns how long until the next.
    fn run_timers(&self, qps: &mut Vec<Arc<QpCore>>) -> Duration {
        let now = Instant::now();
        qps.extend(
            self.qps
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .cloned(),
        );
        let mut wait = IDLE_WAIT;
        for qp in qps.drain(..) {
            match qp.deadline() {
                Some(t) if t <= now => {
                    self.in_send_order(&qp, |out| qp.on_timer(self, now, out));
                }
                Some(t) => wait = wait.min(t - now),
                None => {}
            }
        }
        wait
    }

    /// Receives what the socket holds (without waiting), hands every
    /// packet to its queue pair, continues the READ replies in progress
    /// and sends the answers; returns the number of datagrams.
    fn receive(&self, rx: &mut Rx) -> io::Result<usize> {
        let received = self.transport.recv_batch(&mut rx.slots, None);
        let n = *received.as_ref().unwrap_or(&0);
        for slot in &rx.slots[..n] {
            let dst = slot.dst().unwrap_or(self.local.ip());
            for (bytes, verdict) in slot.packets() {
                let outs = (&mut rx.out, &mut rx.ordered);
                let replying = self.dispatch(slot.src(), dst, bytes, verdict, outs);
                note_replying(&mut rx.replying, replying);
            }
        }
        self.continue_replies(rx);
        received
    }

    /// One budget of every READ reply in progress (one queue pair after
    /// the other), then the batch's answers go out.
    fn continue_replies(&self, rx: &mut Rx) {
        let out = &mut rx.out;
        rx.replying.retain(|qp| qp.continue_reply(self, out));
        self.replies_pending.store(!rx.replying.is_empty(), Relaxed);
        self.send(&mut rx.out);
    }

    /// Runs one datagram through the receive path in the calling thread,
    /// as if the socket had delivered it from `src` to the device's own
    /// address.
    pub(super) fn receive_datagram(&self, src: SocketAddr, datagram: &[u8]) {
        let verdict = crate::net::verify(&src, &self.local, datagram, self.ipv4_id);
        let mut guard = self.lock_rx();
        let rx = &mut *guard;
        let outs = (&mut rx.out, &mut rx.ordered);
        let replying = self.dispatch(src, self.local.ip(), datagram, verdict, outs);
        note_replying(&mut rx.replying, replying);
        self.continue_replies(rx);
    }

    /// Receives in the calling application thread, unless another thread
    /// is receiving; returns the datagrams handled.
    pub(super) fn progress(&self) -> usize {
        self.manual.last_call.store(self.since_open(), Relaxed);
        let mut rx = match self.rx.try_lock() {
            Ok(rx) => rx,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return 0,
        };
        self.receive(&mut rx).unwrap_or(0)
    }
}

/// Adds a queue pair whose READ reply goes on to `replying`, once.
fn note_replying(replying: &mut Vec<Arc<QpCore>>, qp: Option<Arc<QpCore>>) {
    if let Some(qp) = qp
        && !replying.iter().any(|q| Arc::ptr_eq(q, &qp))
    {
        replying.push(qp);
    }
}
