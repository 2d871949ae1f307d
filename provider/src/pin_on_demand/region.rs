//! The region: geometry, the chunk table, and the map/fault path.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use odp::notifier::{IntervalNotifier, IntervalSubscription, NotifierRange};
use odp::{AddressSpace, OdpError};

use super::inflight::{ChunkUse, InFlight};
use super::sync::{Mutex, MutexGuard};
use super::{
    ChunkPinner, DrainHook, FAULT_TIMEOUT, INVALIDATE_WAIT_LIMIT, Piece, PinError, PodCounters,
    PodOptions,
};

/// One committed registration of a chunk.
pub(super) struct Chunk<T> {
    pub(super) addr: usize,
    pub(super) len: usize,
    pub(super) lkey: u32,
    /// Taken exactly once, by whoever unpins; held while unpinning so that
    /// a second invalidation of the chunk returns only after the unpin.
    pub(super) pin: Mutex<Option<T>>,
    pub(super) usage: Arc<ChunkUse>,
}

/// A slot of the chunk table.
pub(super) enum Slot<T> {
    Empty,
    /// Committed: work requests may use it.
    Pinned(Arc<Chunk<T>>),
    /// Taken out by a running invalidation, which unpins it and then
    /// empties the slot. Faults cannot commit meanwhile (the notifier's
    /// sequence), and lookups treat it as missing.
    Retiring(Arc<Chunk<T>>),
}

/// Which chunks cover the region: `[start, end)` in page units, split at
/// multiples of `1 << shift`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    /// The registered bytes (what SGEs are checked against).
    pub(super) addr: usize,
    pub(super) len: usize,
    /// The pages covering them (what chunks are clipped to).
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) shift: u32,
}

impl Geometry {
    pub(super) fn chunk_of(&self, va: usize) -> usize {
        (va >> self.shift) - (self.start >> self.shift)
    }

    pub(super) fn slots(&self) -> usize {
        self.chunk_of(self.end - 1) + 1
    }

    /// The address and length of chunk `idx`, clipped to the region.
    pub(super) fn span(&self, idx: usize) -> (usize, usize) {
        let lo = ((self.start >> self.shift) + idx) << self.shift;
        let first = lo.max(self.start);
        let end = lo.saturating_add(1 << self.shift).min(self.end);
        (first, end - first)
    }

    /// The chunks `[first, last]` that `[va, va + len)` touches, after
    /// checking it lies in the registered bytes; `None` for `len == 0`.
    fn chunks_of(&self, va: u64, len: u32) -> Result<Option<(usize, usize)>, PinError> {
        let out = PinError::OutOfRange {
            va,
            len: len.into(),
            start: self.addr,
            end: self.addr + self.len,
        };
        let va = usize::try_from(va).map_err(|_| out)?;
        let end = va.checked_add(len as usize).ok_or(out)?;
        if va < self.addr || end > self.addr + self.len {
            return Err(out);
        }
        Ok((len > 0).then(|| (self.chunk_of(va), self.chunk_of(end - 1))))
    }
}

/// A region of memory registered with pin on demand (module comment).
///
/// Dropping it removes the subscription first, then unpins every chunk,
/// waiting for work requests in flight as an invalidation does.
pub(crate) struct PinOnDemandRegion<P: ChunkPinner> {
    /// Removed first in `drop`, so that no callback runs during teardown.
    pub(super) sub: ManuallyDrop<IntervalSubscription>,
    pub(super) inner: Arc<Inner<P>>,
}

/// What the invalidation callback shares with the region.
pub(super) struct Inner<P: ChunkPinner> {
    pub(super) aspace: Arc<AddressSpace>,
    pub(super) pinner: Arc<P>,
    pub(super) geometry: Geometry,
    pub(super) writable: bool,
    pub(super) table: Mutex<Vec<Slot<P::Pin>>>,
    pub(super) drain: DrainHook,
    pub(super) counters: Counters,
}

/// The live counters behind [`PodCounters`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) faults: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) lost_races: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) nonblocking_refusals: AtomicU64,
    pub(super) chunks_pinned: AtomicU64,
    pub(super) bytes_pinned: AtomicU64,
    pub(super) unpins: AtomicU64,
    pub(super) forced_unpins: AtomicU64,
    pub(super) drain_calls: AtomicU64,
}

/// One scatter/gather entry of a work request, in the region it uses.
pub(crate) struct SgeRef<'a, P: ChunkPinner> {
    /// The region the entry's lkey named.
    pub(crate) region: &'a PinOnDemandRegion<P>,
    /// First address.
    pub(crate) va: u64,
    /// Length in bytes.
    pub(crate) len: u32,
}

impl Counters {
    pub(super) fn snapshot(&self) -> PodCounters {
        let g = |a: &AtomicU64| a.load(Relaxed);
        PodCounters {
            faults: g(&self.faults),
            retries: g(&self.retries),
            lost_races: g(&self.lost_races),
            invalidations: g(&self.invalidations),
            nonblocking_refusals: g(&self.nonblocking_refusals),
            chunks_pinned: g(&self.chunks_pinned),
            bytes_pinned: g(&self.bytes_pinned),
            unpins: g(&self.unpins),
            forced_unpins: g(&self.forced_unpins),
            drain_calls: g(&self.drain_calls),
        }
    }
}

impl<P: ChunkPinner> PinOnDemandRegion<P> {
    /// Registers `[addr, addr + len)` of `aspace`; pins nothing yet.
    ///
    /// # Errors
    /// [`PinError::RemoteAccess`], [`PinError::BadChunkSize`],
    /// [`PinError::InvalidRange`], [`PinError::Notifier`] (the address
    /// space was released).
    pub(crate) fn new(
        aspace: &Arc<AddressSpace>,
        addr: usize,
        len: usize,
        pinner: Arc<P>,
        options: PodOptions,
        drain: DrainHook,
    ) -> Result<Self, PinError> {
        if options.remote_access {
            return Err(PinError::RemoteAccess);
        }
        let page = odp::page_size();
        let chunk = options.chunk_size;
        if !chunk.is_power_of_two() || chunk < page {
            return Err(PinError::BadChunkSize(chunk));
        }
        let invalid = PinError::InvalidRange { addr, len };
        let end = addr.checked_add(len).filter(|_| len > 0).ok_or(invalid)?;
        let page_end = end.checked_add(page - 1).ok_or(invalid)? & !(page - 1);
        let geometry = Geometry {
            addr,
            len,
            start: addr & !(page - 1),
            end: page_end,
            shift: chunk.trailing_zeros(),
        };
        let table = (0..geometry.slots()).map(|_| Slot::Empty).collect();
        let inner = Arc::new(Inner {
            aspace: Arc::clone(aspace),
            pinner,
            geometry,
            writable: options.writable,
            table: Mutex::new(table),
            drain,
            counters: Counters::default(),
        });
        let callback = Arc::clone(&inner);
        let sub = aspace.subscriptions().insert(
            geometry.start,
            geometry.end - geometry.start,
            move |sub: &IntervalNotifier, range: &NotifierRange, cur_seq| {
                callback.invalidate(sub, range, cur_seq)
            },
        )?;
        Ok(Self {
            sub: ManuallyDrop::new(sub),
            inner,
        })
    }

    /// First registered address.
    pub(crate) fn addr(&self) -> usize {
        self.inner.geometry.addr
    }

    /// Registered length.
    pub(crate) fn len(&self) -> usize {
        self.inner.geometry.len
    }

    /// The chunk size.
    pub(crate) fn chunk_size(&self) -> usize {
        1 << self.inner.geometry.shift
    }

    /// A snapshot of the counters.
    pub(crate) fn counters(&self) -> PodCounters {
        self.inner.counters.snapshot()
    }

    /// Splits `[va, va + len)` at chunk boundaries into `out` (appended),
    /// pinning missing chunks, and returns a token that keeps them in use.
    ///
    /// # Errors
    /// As [`map_sges`].
    pub(crate) fn map_sge(
        &self,
        va: u64,
        len: u32,
        out: &mut Vec<Piece>,
    ) -> Result<InFlight, PinError> {
        map_sges(
            &[SgeRef {
                region: self,
                va,
                len,
            }],
            usize::MAX,
            out,
        )
    }

    /// Takes every chunk of `[first, last]` for a work request under one
    /// table lock, appending pieces of `[va, va + len)`; the first chunk
    /// that is not committed is returned as the error.
    fn take(
        &self,
        va: u64,
        len: u32,
        (first, last): (usize, usize),
        out: &mut Vec<Piece>,
        token: &mut InFlight,
    ) -> Result<(), usize> {
        let table = self.inner.lock();
        let (va, end) = (va as usize, va as usize + len as usize);
        for idx in first..=last {
            let Slot::Pinned(chunk) = &table[idx] else {
                return Err(idx);
            };
            let lo = va.max(chunk.addr);
            let hi = end.min(chunk.addr + chunk.len);
            token.push(chunk.usage.acquire());
            out.push(Piece {
                addr: lo as u64,
                len: (hi - lo) as u32,
                lkey: chunk.lkey,
            });
        }
        Ok(())
    }
}

/// Maps the entries of one work request (possibly in several regions):
/// splits each at chunk boundaries into `out` (appended), pinning missing
/// chunks, and returns a token holding every chunk used.
///
/// All chunks are taken together: when one is missing, the references
/// taken so far are released before it is faulted, so that this call never
/// holds a chunk while it waits for an invalidation (which could be waiting
/// for that very chunk).
///
/// # Errors
/// [`PinError::OutOfRange`] or [`PinError::TooManyPieces`] before anything
/// is pinned; otherwise the fault's errors ([`PinError::Unmapped`],
/// [`PinError::PinRefused`], [`PinError::Busy`], [`PinError::Released`],
/// [`PinError::Watch`]). `out` is left as it was on error.
pub(crate) fn map_sges<P: ChunkPinner>(
    sges: &[SgeRef<'_, P>],
    max_pieces: usize,
    out: &mut Vec<Piece>,
) -> Result<InFlight, PinError> {
    let mut spans = smallvec::SmallVec::<[Option<(usize, usize)>; 4]>::new();
    let mut pieces = 0usize;
    for sge in sges {
        let span = sge.region.inner.geometry.chunks_of(sge.va, sge.len)?;
        pieces += span.map_or(0, |(first, last)| last - first + 1);
        spans.push(span);
    }
    if pieces > max_pieces {
        return Err(PinError::TooManyPieces {
            pieces,
            max: max_pieces,
        });
    }
    let base = out.len();
    'attempt: loop {
        out.truncate(base);
        let mut token = InFlight::new();
        for (sge, span) in sges.iter().zip(&spans) {
            let Some(span) = *span else { continue };
            if let Err(missing) = sge.region.take(sge.va, sge.len, span, out, &mut token) {
                out.truncate(base);
                drop(token);
                sge.region.fault(missing)?;
                continue 'attempt;
            }
        }
        return Ok(token);
    }
}

impl<P: ChunkPinner> PinOnDemandRegion<P> {
    /// Pins chunk `idx` and commits it, with the kernel's collision-retry
    /// pattern. Returns once the slot holds a committed chunk (this one, or
    /// one another thread committed first).
    fn fault(&self, idx: usize) -> Result<(), PinError> {
        let inner = &*self.inner;
        let (addr, len) = inner.geometry.span(idx);
        let deadline = Instant::now() + FAULT_TIMEOUT;
        loop {
            let seq = self.sub.read_begin();
            // After read_begin, as the kernel checks mmget_not_zero.
            if inner.aspace.subscriptions().is_released() {
                return Err(PinError::Released);
            }
            // Watched before it is pinned: an unmap after this point is
            // reported and collides with the commit below.
            inner.aspace.watch_range(addr, len).map_err(|e| match e {
                OdpError::Unmapped { .. } => PinError::Unmapped { addr, len },
                error => PinError::Watch { addr, error },
            })?;
            let pin = inner.pinner.pin(addr, len, inner.writable)?;
            let mut table = inner.lock();
            if self.sub.read_retry(seq) {
                drop(table);
                inner.pinner.unpin(pin);
                inner.counters.retries.fetch_add(1, Relaxed);
                if Instant::now() >= deadline {
                    return Err(PinError::Busy { addr });
                }
                continue;
            }
            if let Slot::Pinned(_) = table[idx] {
                drop(table);
                inner.pinner.unpin(pin);
                inner.counters.lost_races.fetch_add(1, Relaxed);
                return Ok(());
            }
            debug_assert!(
                matches!(table[idx], Slot::Empty),
                "commit over a retiring chunk"
            );
            table[idx] = Slot::Pinned(Arc::new(Chunk {
                addr,
                len,
                lkey: P::lkey(&pin),
                pin: Mutex::new(Some(pin)),
                usage: Arc::new(ChunkUse::new()),
            }));
            drop(table);
            let c = &inner.counters;
            c.faults.fetch_add(1, Relaxed);
            c.chunks_pinned.fetch_add(1, Relaxed);
            c.bytes_pinned.fetch_add(len as u64, Relaxed);
            return Ok(());
        }
    }
}

impl<P: ChunkPinner> Inner<P> {
    /// The table lock. A panic while it was held leaves the table
    /// consistent (slots are replaced whole), so poisoning is ignored.
    pub(super) fn lock(&self) -> MutexGuard<'_, Vec<Slot<P::Pin>>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Unpins `chunk` unless someone did already; `idle` says whether it
    /// waited out every work request.
    pub(super) fn unpin(&self, chunk: &Chunk<P::Pin>, idle: bool) {
        let mut pin = chunk.pin.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(pin) = pin.take() else { return };
        self.pinner.unpin(pin);
        let c = &self.counters;
        c.unpins.fetch_add(1, Relaxed);
        if !idle {
            c.forced_unpins.fetch_add(1, Relaxed);
        }
        c.chunks_pinned.fetch_sub(1, Relaxed);
        c.bytes_pinned.fetch_sub(chunk.len as u64, Relaxed);
    }

    /// Waits (bounded by `deadline`, draining completions) until no work
    /// request uses `chunk`; returns whether it got there.
    pub(super) fn wait_idle(&self, chunk: &Chunk<P::Pin>, deadline: Instant) -> bool {
        let drain = || {
            self.counters.drain_calls.fetch_add(1, Relaxed);
            (self.drain)();
        };
        chunk
            .usage
            .wait_idle(deadline, super::DRAIN_INTERVAL, &drain)
    }

    /// The deadline of a wait that starts now.
    pub(super) fn wait_deadline() -> Instant {
        Instant::now() + INVALIDATE_WAIT_LIMIT
    }
}
