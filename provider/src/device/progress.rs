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
//! in a completion-queue wait, or in the last [`MANUAL_GRACE`] one called
//! `Context::progress` or polled an empty completion queue of the device
//! for the second time in a row, as perftest's loops do; a single empty
//! poll does not count, as its thread may go on to wait or to poll another
//! device, and arming a completion queue ends its thread's claim), the
//! progress thread neither waits on the socket,
//! whose every datagram would wake it, nor takes the receive lock (a
//! holder preempted by spinning threads would stall them for a scheduler
//! tick): it only runs timers. The last spinning thread to leave wakes it,
//! so receiving passes back at once; so does a spin that gives up to sleep
//! (the claim an earlier find or `Context::progress` call left ends with
//! it; a thread still calling `progress` claims again at its next call).
//! A claim that lapses without a word (a thread that stops calling
//! `progress`) is noticed at the progress thread's next look, which comes
//! less often the longer application threads keep receiving (see
//! [`DRIVEN_LOOK_MAX`]).
//!
//! Streams: a thread blocked in the kernel wakes far slower than a
//! stream's next packets come, so after a queue pair accepted a packet the
//! progress thread keeps looking for [`PROGRESS_SPIN`] before it blocks
//! again (an off-path host's junk does not buy spinning); and
//! a large received batch sends its answers every [`ANSWER_EVERY`] packets,
//! so that the peer's requester sends more while the batch is handled
//! instead of the two ends taking turns.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, MutexGuard, PoisonError, TryLockError, Weak};
use std::time::{Duration, Instant};

use super::{BATCH, BatchLookups, SLOT_BYTES, Shared};
use crate::net::{GRO_SLOT_CAPACITY, RecvSlot};
use crate::rc::{CachedRegions, Outbox, QpCore};

/// How long after an application thread's last `progress` call the
/// progress thread still leaves the socket to it.
pub(crate) const MANUAL_GRACE: Duration = Duration::from_micros(200);

/// While application threads keep receiving, the progress thread looks
/// whether they still do after [`MANUAL_GRACE`], then twice as long each
/// time they still do, up to this: every look wakes it, and on a busy
/// machine a woken thread preempts one that works (a 64-byte WRITE
/// stream, whose requester receives its acknowledgements in its own
/// completion-queue waits, ran 10 % faster without the looks every
/// 200 µs). The longest the progress thread then takes to notice that an
/// application thread stopped calling in without a word; a spinning wait
/// that gives up, or a thread that turns to another device, wakes it at
/// once, and held acknowledgements keep the short period.
pub(crate) const DRIVEN_LOOK_MAX: Duration = Duration::from_millis(2);

/// How long the progress thread keeps looking at the socket without
/// sleeping after it last received something (yielding between looks): a
/// stream's next packets come sooner than a thread blocked in the kernel
/// wakes on a busy machine, which would stall both ends of the stream.
/// Off when idle: this long after the last datagram the thread blocks
/// again, so an idle device costs no CPU.
pub(crate) const PROGRESS_SPIN: Duration = Duration::from_micros(50);

/// Within one received batch, the answers built so far leave after every
/// this many packets instead of only at the batch's end, so that the
/// peer's requester sees its window slide (and sends more) while the rest
/// of the batch is handled: a quarter of rxe's 128-packet window.
pub(crate) const ANSWER_EVERY: usize = 32;

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
    /// Queue pairs whose reply started in the current batch (its first
    /// budget went with the request): continued from the next batch on.
    started: Vec<Arc<QpCore>>,
}

impl Rx {
    /// The answers queued (acknowledgements held back), for a thread that
    /// sends them.
    pub(super) fn acks(&mut self) -> &mut Outbox {
        &mut self.out
    }

    /// Receive slots for GRO (64 KiB each) or single packets.
    pub(crate) fn new(gro: bool) -> Self {
        let slot_bytes = if gro { GRO_SLOT_CAPACITY } else { SLOT_BYTES };
        Self {
            slots: (0..BATCH).map(|_| RecvSlot::new(slot_bytes)).collect(),
            out: Outbox::default(),
            ordered: Outbox::default(),
            replying: Vec::new(),
            started: Vec::new(),
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
    /// Times application threads held acknowledgements back: while they
    /// do, the progress thread looks every [`MANUAL_GRACE`].
    holds: AtomicU64,
}

/// A thread driving progress (see [`super::Device::driving_progress`]).
pub(crate) struct Driving<'a> {
    shared: &'a Shared,
    /// Whether the spin found what it waited for (see [`Self::found`]).
    found: bool,
}

impl<'a> Driving<'a> {
    pub(super) fn new(shared: &'a Arc<Shared>) -> Self {
        claimed_by_this_thread(shared);
        shared.manual.spinning.fetch_add(1, Relaxed);
        Self {
            shared,
            found: false,
        }
    }
}

thread_local! {
    /// The device this thread last drove progress for.
    static CLAIMED: std::cell::RefCell<Weak<Shared>> = const { std::cell::RefCell::new(Weak::new()) };
}

/// Records that this thread drives `shared`'s progress now. A thread
/// drives one device at a time: if it claimed another one before, that
/// claim ends here and the other device's progress thread takes over at
/// once (a thread that waits on one end of a connection and then on the
/// other must not leave the first without a receiver).
pub(super) fn claimed_by_this_thread(shared: &Arc<Shared>) {
    CLAIMED.with_borrow_mut(|claimed| {
        if claimed.as_ptr() == Arc::as_ptr(shared) {
            return;
        }
        if let Some(previous) = claimed.upgrade() {
            previous.manual.last_call.store(0, Relaxed);
            if let Some(thread) = previous.progress_thread.get() {
                thread.unpark();
            }
        }
        *claimed = Arc::downgrade(shared);
    });
}

thread_local! {
    /// The device this thread last polled a completion queue of and found
    /// nothing (its address, for identity only), and when (see
    /// [`Shared::since_open`]).
    static LAST_EMPTY_POLL: std::cell::Cell<(usize, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Whether this thread polls `shared`'s completion queues in a loop: its
/// previous empty poll was of the same device, within [`MANUAL_GRACE`]
/// before `now` (see [`Claim::Poll`]). Records this poll for the next.
fn polls_in_a_loop(shared: &Arc<Shared>, now: u64) -> bool {
    let device = Arc::as_ptr(shared) as usize;
    let (previous, at) = LAST_EMPTY_POLL.replace((device, now));
    previous == device && now.saturating_sub(at) < MANUAL_GRACE.as_nanos() as u64
}

/// This thread is about to wait (it armed a completion queue): a claim it
/// holds on `shared` ends, and the progress thread receives again at once
/// instead of when it next looks.
pub(super) fn end_claim(shared: &Arc<Shared>) {
    LAST_EMPTY_POLL.set((0, 0));
    let held = CLAIMED.with_borrow_mut(|claimed| {
        let held = claimed.as_ptr() == Arc::as_ptr(shared);
        if held {
            *claimed = Weak::new();
        }
        held
    });
    if held
        && shared.manual.last_call.swap(0, Relaxed) != 0
        && !shared.driven()
        && let Some(thread) = shared.progress_thread.get()
    {
        thread.unpark();
    }
}

impl Driving<'_> {
    /// Ends a spin that found what it waited for: its thread goes on
    /// working and will most likely wait again soon, so the socket stays
    /// claimed for [`MANUAL_GRACE`] (as after a [`crate::Context::progress`]
    /// call) instead of being handed back to the progress thread at once.
    pub(crate) fn found(mut self) {
        self.found = true;
        self.shared
            .manual
            .last_call
            .store(self.shared.since_open(), Relaxed);
    }
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        if !self.found {
            // This thread goes to sleep: the claim an earlier find left is
            // void, or nobody would receive until it expired.
            self.shared.manual.last_call.store(0, Relaxed);
        }
        if self.shared.manual.spinning.fetch_sub(1, Relaxed) == 1 && !self.shared.driven() {
            // The last one, going to sleep: the progress thread receives
            // again, now.
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
    /// holds; while application threads receive, only the timers. For
    /// [`PROGRESS_SPIN`] after a queue pair last accepted a packet it
    /// looks at the socket again without sleeping (datagrams no queue pair
    /// accepts, which anyone can send, do not keep it spinning).
    pub(super) fn run(&self) {
        // Reused: the loop allocates nothing per turn.
        let mut qps = Vec::new();
        let mut last_received: Option<Instant> = None;
        let mut look = MANUAL_GRACE;
        let mut holds_seen = 0;
        while !self.stop.load(Relaxed) {
            let wait = self.run_timers(&mut qps);
            if self.driven() {
                last_received = None;
                let holds = self.manual.holds.load(Relaxed);
                if holds != holds_seen {
                    holds_seen = holds;
                    look = MANUAL_GRACE;
                }
                self.park_while_driven(wait.min(look));
                look = (look * 2).min(DRIVEN_LOOK_MAX);
                self.flush_deferred_acks();
                continue;
            }
            look = MANUAL_GRACE;
            // Application threads stopped: what they held back goes now.
            self.flush_deferred_acks();
            let spinning = last_received.is_some_and(|t| t.elapsed() < PROGRESS_SPIN);
            let busy = spinning || self.replies_pending.load(Relaxed);
            if !busy && !wait.is_zero() && self.transport.wait_readable(wait).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let accepted_before = self.counters.rx_packets.load(Relaxed);
            match self.receive(&mut self.lock_rx(), Acks::Send) {
                Ok(0) if spinning => std::thread::yield_now(),
                Ok(_) if self.counters.rx_packets.load(Relaxed) != accepted_before => {
                    last_received = Some(Instant::now());
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }

    /// Parks the progress thread for `timeout` while application threads
    /// receive; held acknowledgements must leave within [`MANUAL_GRACE`],
    /// so a longer park is announced, and cut short if they are held.
    fn park_while_driven(&self, mut timeout: Duration) {
        // Either `answer` sees the announcement and wakes this thread, or
        // this sees what it holds (see `hold_watch`).
        if timeout > MANUAL_GRACE && !self.hold_watch.announce_long_park() {
            timeout = MANUAL_GRACE;
        }
        std::thread::park_timeout(timeout);
        self.hold_watch.park_ended();
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
                    let regions = CachedRegions::new(self);
                    self.in_send_order(&qp, |out| qp.on_timer(&regions, now, out));
                }
                Some(t) => wait = wait.min(t - now),
                None => {}
            }
        }
        wait
    }

    /// Receives what the socket holds (without waiting), hands every
    /// packet to its queue pair (sending the answers every
    /// [`ANSWER_EVERY`] packets), continues the READ replies in progress
    /// and sends the rest of the answers (see [`Acks`]); returns the
    /// number of datagrams.
    fn receive(&self, rx: &mut Rx, acks: Acks) -> io::Result<usize> {
        let received = self.transport.recv_batch(&mut rx.slots, None);
        let n = *received.as_ref().unwrap_or(&0);
        let mut handled = 0;
        let mut lookups = BatchLookups::new(self);
        for slot in &rx.slots[..n] {
            let addrs = (slot.src(), slot.dst().unwrap_or(self.local.ip()));
            let mut packets = slot.packets().peekable();
            while let Some(first) = packets.next() {
                let outs = (&mut rx.out, &mut rx.ordered);
                // A run of requests ends where the answers leave.
                let room = ANSWER_EVERY - handled % ANSWER_EVERY;
                let done = self.dispatch(&mut lookups, &addrs, first, &mut packets, room, outs);
                rx.started.extend(done.replying);
                handled += done.packets;
                if handled % ANSWER_EVERY == 0 && !rx.out.is_empty() {
                    self.send(&mut rx.out);
                }
            }
        }
        drop(lookups);
        self.continue_replies(rx);
        // Held back only just after something came in: a poll that finds
        // nothing sends what an earlier one held.
        self.answer(rx, if n > 0 { acks } else { Acks::Send });
        received
    }

    /// One budget of every READ reply in progress (one queue pair after
    /// the other); replies started by this batch join from the next.
    fn continue_replies(&self, rx: &mut Rx) {
        let out = &mut rx.out;
        let regions = CachedRegions::new(self);
        rx.replying.retain(|qp| qp.continue_reply(&regions, out));
        for qp in rx.started.drain(..) {
            if !rx.replying.iter().any(|q| Arc::ptr_eq(q, &qp)) {
                rx.replying.push(qp);
            }
        }
        self.replies_pending.store(!rx.replying.is_empty(), Relaxed);
    }

    /// Sends the answers queued in `rx`, or holds them back if `acks`
    /// allows and they are only acknowledgements.
    fn answer(&self, rx: &mut Rx, acks: Acks) {
        let hold = acks == Acks::HoldBack && !rx.out.is_empty() && rx.out.only_acks();
        if hold {
            // They leave ahead of whatever this thread posts next.
            rx.out.reveal_completions();
            self.manual.holds.fetch_add(1, Relaxed);
        } else {
            self.send(&mut rx.out);
        }
        if !hold {
            // Every poll passes here: no fence for what nobody waits on.
            self.hold_watch.clear();
            return;
        }
        if self.hold_watch.hold() {
            // The progress thread would look only after MANUAL_GRACE.
            if let Some(thread) = self.progress_thread.get() {
                thread.unpark();
            }
        }
    }

    /// The receive side, if it holds acknowledgements back and no other
    /// thread has it: the caller sends them ([`Rx::acks`]).
    pub(super) fn deferred_acks(&self) -> Option<MutexGuard<'_, Rx>> {
        if !self.hold_watch.held() {
            return None;
        }
        let rx = self.rx.try_lock().ok()?;
        self.hold_watch.clear();
        Some(rx)
    }

    /// Sends whatever the receive side holds back, waiting for a thread
    /// that is receiving to finish (it sends its batch's answers before it
    /// lets go): after this, no answer built so far is still unsent.
    pub(super) fn send_held_back(&self) {
        let mut rx = self.lock_rx();
        self.send(rx.acks());
        self.hold_watch.clear();
    }

    /// Sends the acknowledgements held back, unless another thread holds
    /// the receive side (which then sends them itself).
    fn flush_deferred_acks(&self) {
        if let Some(mut rx) = self.deferred_acks() {
            self.send(rx.acks());
        }
    }

    /// Runs one datagram through the receive path in the calling thread,
    /// as if the socket had delivered it from `src` to the device's own
    /// address.
    pub(super) fn receive_datagram(&self, src: SocketAddr, datagram: &[u8]) {
        let verdict = crate::net::verify(&src, &self.local, datagram, self.ipv4_id);
        let mut guard = self.lock_rx();
        let rx = &mut *guard;
        let outs = (&mut rx.out, &mut rx.ordered);
        let addrs = (src, self.local.ip());
        let mut lookups = BatchLookups::new(self);
        let mut none = std::iter::empty().peekable();
        let done = self.dispatch(
            &mut lookups,
            &addrs,
            (datagram, verdict),
            &mut none,
            1,
            outs,
        );
        drop(lookups);
        rx.started.extend(done.replying);
        self.continue_replies(rx);
        self.answer(rx, Acks::Send);
    }

    /// Receives in the calling application thread, unless another thread
    /// is receiving; returns the datagrams handled. A claim on the socket
    /// ([`Claim::Socket`], or [`Claim::Poll`] in a polling loop) keeps the
    /// progress thread off it for the next [`MANUAL_GRACE`].
    pub(super) fn progress(self: &Arc<Self>, claim: Claim) -> usize {
        // Acknowledgements are held back only for a thread that polls
        // this device in a loop (the ping-pong of `write_lat`, which posts
        // its answer next): it, or the progress thread when its claim
        // ends (see `run`), sends them soon. A single completion-queue
        // poll may be the last call its thread makes for a while.
        let acks = match claim {
            Claim::Socket => self.claim_socket(self.since_open()),
            Claim::Poll => {
                let now = self.since_open();
                if polls_in_a_loop(self, now) {
                    self.claim_socket(now)
                } else {
                    Acks::Send
                }
            }
            Claim::Spin => Acks::HoldBack,
        };
        let mut rx = match self.rx.try_lock() {
            Ok(rx) => rx,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return 0,
        };
        self.receive(&mut rx, acks).unwrap_or(0)
    }

    /// The calling thread receives for this device for the next
    /// [`MANUAL_GRACE`] after `now`; what it receives is acknowledged
    /// with [`Acks::HoldBack`].
    fn claim_socket(self: &Arc<Self>, now: u64) -> Acks {
        claimed_by_this_thread(self);
        self.manual.last_call.store(now, Relaxed);
        Acks::HoldBack
    }
}

/// Whether an application thread's receive keeps the progress thread off
/// the socket for a while.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Yes: the caller polls in a loop ([`crate::Context::progress`]).
    Socket,
    /// A completion-queue poll that found nothing: [`Self::Socket`] if the
    /// same thread's previous empty poll of this device came within
    /// [`MANUAL_GRACE`] (a polling loop, as perftest's), else a single
    /// look that claims nothing (its thread may go on to wait, or to poll
    /// another device). Arming a completion queue ([`end_claim`]) ends
    /// the claim: its thread is about to sleep.
    Poll,
    /// Already held: a look from inside a spinning completion-queue wait,
    /// whose [`super::Device::driving_progress`] guard keeps the socket
    /// claimed. When the wait gives up, or [`MANUAL_GRACE`] after it found
    /// what it waited for (unless its thread calls in again), the progress
    /// thread takes over and sends what the wait held back.
    Spin,
}

/// What a receiving thread does with the acknowledgements it produced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Acks {
    /// Send them with the batch's other answers (the progress thread).
    Send,
    /// When they are the only answers, hold them back (an application
    /// thread polling in a loop with [`crate::Context::progress`] or
    /// spinning in a completion-queue wait, which would otherwise pay a
    /// system call on its critical path, after the data it waits for has
    /// landed): they leave with the
    /// next packets the device sends (a request the application posts, in
    /// the same system call), at the next receive (a poll that finds
    /// nothing sends them), or when the progress thread next wakes (within
    /// [`MANUAL_GRACE`] while application threads poll; at once when the
    /// last spinning one stops). A held acknowledgement is replaced by a
    /// later one to the same queue pair.
    HoldBack,
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::super::{Device, DeviceOptions};
    use super::Claim;

    fn device() -> std::sync::Arc<Device> {
        let options = DeviceOptions {
            port: 0,
            ..DeviceOptions::default()
        };
        Device::open(IpAddr::V4(Ipv4Addr::LOCALHOST), &options).unwrap()
    }

    #[test]
    fn a_spin_that_gives_up_hands_the_socket_back_at_once() {
        let dev = device();
        dev.driving_progress().found();
        // The same thread waits again, finds nothing and goes to sleep: an
        // earlier claim must not keep the progress thread off the socket.
        drop(dev.driving_progress());
        assert!(!dev.shared.driven());
    }

    /// Polls `dev`'s completion queues twice in a row, finding nothing,
    /// until both polls fall within [`super::MANUAL_GRACE`] (a preempted
    /// test thread may miss it); returns whether the socket was claimed.
    fn poll_twice(dev: &Device) -> bool {
        (0..100).any(|_| {
            dev.progress(Claim::Poll);
            dev.progress(Claim::Poll);
            dev.shared.driven()
        })
    }

    #[test]
    fn a_loop_of_empty_polls_claims_the_socket_and_a_single_one_does_not() {
        let dev = device();
        dev.progress(Claim::Poll);
        assert!(!dev.shared.driven(), "one poll may be its thread's last");
        assert!(poll_twice(&dev), "a polling loop receives for the device");
    }

    #[test]
    fn arming_a_completion_queue_ends_the_claim_at_once() {
        let dev = device();
        assert!(poll_twice(&dev));
        dev.end_claim();
        assert!(!dev.shared.driven(), "the thread is about to sleep");
        // Its first poll after waking looks once again.
        dev.progress(Claim::Poll);
        assert!(!dev.shared.driven());
    }

    #[test]
    fn polls_that_alternate_between_devices_claim_neither() {
        let (a, b) = (device(), device());
        for _ in 0..4 {
            a.progress(Claim::Poll);
            b.progress(Claim::Poll);
        }
        assert!(!a.shared.driven() && !b.shared.driven());
    }

    #[test]
    fn the_socket_stays_claimed_while_another_thread_spins() {
        let dev = device();
        let spinning = dev.driving_progress();
        drop(dev.driving_progress());
        assert!(dev.shared.driven());
        drop(spinning);
        assert!(!dev.shared.driven());
    }
}
