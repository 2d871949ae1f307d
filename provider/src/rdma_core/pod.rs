//! Pin-on-demand on a verbs device: chunks registered with `ibv_reg_mr`
//! as work requests first use them ([`crate::pin_on_demand`] has the
//! device-independent part), regions named by keys of our own, and the
//! translation of work requests' SGEs into chunk SGEs.
//!
//! A pin-on-demand region's lkey is not a device key: it comes from
//! [`POD_KEY_BASE`] upward (a device would need 16 million regions to
//! reach that range; rxe's keys are `index << 8 | tag`), and the
//! context's table resolves it when a work request is posted. The chunk
//! references a work request holds ([`InFlight`]) stay with it in its
//! queue pair's [`Tracker`] until its completion is polled.

use std::collections::{HashMap, VecDeque};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use verbs_sys as sys;

use super::{RdmaContext, RdmaPd};
use crate::pin_on_demand::{
    ChunkPinner, InFlight, Piece, PinError, PinOnDemandRegion, PodOptions, SgeRef, map_sges,
};
use crate::{Sge, VerbsError, WcOpcode, WcStatus, WorkCompletion};

/// The first key of pin-on-demand regions.
pub(crate) const POD_KEY_BASE: u32 = 0xff00_0000;

/// Pins chunks by registering them with the device (local access only).
pub(crate) struct VerbsPinner {
    pd: Arc<RdmaPd>,
}

/// One chunk's registration.
pub(crate) struct ChunkMr(NonNull<sys::ibv_mr>);

// SAFETY: a verbs region may be deregistered from any thread; the
// pointer is only read for its key and freed once, by `unpin`.
unsafe impl Send for ChunkMr {}
// SAFETY: as for Send; shared access only reads the key.
unsafe impl Sync for ChunkMr {}

impl ChunkPinner for VerbsPinner {
    type Pin = ChunkMr;

    fn pin(&self, addr: usize, len: usize, writable: bool) -> Result<ChunkMr, PinError> {
        let access = if writable {
            sys::ibv_access_flags_IBV_ACCESS_LOCAL_WRITE
        } else {
            0
        };
        // SAFETY: a live domain; the region is used only for local SGEs of
        // work requests that hold the chunk, and deregistered by `unpin`
        // before the memory may go away (the invalidation waits for them).
        let raw = unsafe {
            sys::ibv_reg_mr(self.pd.raw(), addr as *mut libc::c_void, len, access as i32)
        };
        NonNull::new(raw).map(ChunkMr).ok_or_else(|| {
            let errno = std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            if errno == libc::EFAULT {
                PinError::Unmapped { addr, len }
            } else {
                PinError::PinRefused { addr, len, errno }
            }
        })
    }

    fn lkey(pin: &ChunkMr) -> u32 {
        // SAFETY: the registration is live while its pin exists.
        unsafe { pin.0.as_ref().lkey }
    }

    fn unpin(&self, pin: ChunkMr) {
        // SAFETY: the registration is live and freed once (`pin` is
        // consumed); deregistering waits for nothing in this process.
        unsafe { sys::ibv_dereg_mr(pin.0.as_ptr()) };
    }
}

/// A pin-on-demand region as its context's key table holds it.
pub(crate) type PodRegion = PinOnDemandRegion<VerbsPinner>;

/// The context's pin-on-demand regions by key.
#[derive(Default)]
pub(crate) struct PodTable {
    regions: RwLock<HashMap<u32, Weak<PodRegion>>>,
    /// Regions in the table: posts skip the lookup while it is 0.
    live: AtomicUsize,
    next: AtomicU32,
}

impl PodTable {
    /// Adds `region` under a fresh key.
    ///
    /// # Errors
    /// Every key of the range is in use.
    fn insert(&self, region: &Arc<PodRegion>) -> Result<u32, VerbsError> {
        let mut regions = self.regions.write().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..=0x00ff_ffff {
            let key = POD_KEY_BASE | (self.next.fetch_add(1, Relaxed) & 0x00ff_ffff);
            if let std::collections::hash_map::Entry::Vacant(e) = regions.entry(key) {
                e.insert(Arc::downgrade(region));
                self.live.fetch_add(1, Relaxed);
                return Ok(key);
            }
        }
        Err(VerbsError::InvalidArgument(
            "every pin-on-demand key is in use",
        ))
    }

    fn remove(&self, key: u32) {
        let mut regions = self.regions.write().unwrap_or_else(PoisonError::into_inner);
        if regions.remove(&key).is_some() {
            self.live.fetch_sub(1, Relaxed);
        }
    }

    /// Whether `key` names a live pin-on-demand region.
    pub(crate) fn is_pod_key(&self, key: u32) -> bool {
        self.get(key).is_some()
    }

    /// The region of `key`, if it is a live pin-on-demand key.
    fn get(&self, key: u32) -> Option<Arc<PodRegion>> {
        if key & POD_KEY_BASE != POD_KEY_BASE || self.live.load(Relaxed) == 0 {
            return None;
        }
        let regions = self.regions.read().unwrap_or_else(PoisonError::into_inner);
        regions.get(&key).and_then(Weak::upgrade)
    }

    /// Translates one work request's SGEs: plain ones as they are,
    /// pin-on-demand ones split at chunk boundaries with their chunks'
    /// lkeys (all mapped together). Appends to `out`; the token holds the
    /// chunks until the work request completes.
    ///
    /// # Errors
    /// More pieces than `max` SGEs; an SGE outside its region; a chunk
    /// that could not be pinned.
    pub(crate) fn translate(
        &self,
        sges: &[Sge],
        max: usize,
        out: &mut Vec<sys::ibv_sge>,
    ) -> Result<InFlight, VerbsError> {
        let regions: smallvec::SmallVec<[Option<Arc<PodRegion>>; 4]> =
            sges.iter().map(|s| self.get(s.lkey)).collect();
        if regions.iter().all(Option::is_none) {
            out.extend(sges.iter().map(super::qp::raw_sge));
            return Ok(InFlight::new());
        }
        let refs: smallvec::SmallVec<[SgeRef<'_, VerbsPinner>; 4]> = sges
            .iter()
            .zip(&regions)
            .filter_map(|(s, r)| {
                r.as_deref().map(|region| SgeRef {
                    region,
                    va: s.addr,
                    len: s.length,
                })
            })
            .collect();
        let plain = sges.len() - refs.len();
        let mut pieces: Vec<Piece> = Vec::new();
        let token = map_sges(&refs, max.saturating_sub(plain), &mut pieces).map_err(pin_error)?;
        // Interleave in the SGEs' order: each mapped SGE's pieces are
        // consecutive and add up to its length.
        let mut next = pieces.iter();
        for (sge, region) in sges.iter().zip(&regions) {
            if region.is_none() {
                out.push(super::qp::raw_sge(sge));
                continue;
            }
            let mut left = sge.length;
            while left > 0 {
                let Some(p) = next.next() else { break };
                out.push(sys::ibv_sge {
                    addr: p.addr,
                    length: p.len,
                    lkey: p.lkey,
                });
                left -= p.len.min(left);
            }
        }
        Ok(token)
    }
}

/// A pin-on-demand error as the verbs API reports it.
fn pin_error(e: PinError) -> VerbsError {
    let reg = |errno| VerbsError::DeviceCall {
        call: "ibv_reg_mr",
        errno,
    };
    match e {
        PinError::TooManyPieces { .. } => VerbsError::InvalidArgument(
            "SGE list length (more SGEs than the queue pair takes once split at pin-on-demand chunks)",
        ),
        PinError::OutOfRange { .. } => VerbsError::InvalidArgument("SGE outside its memory region"),
        PinError::Unmapped { .. } => reg(libc::EFAULT),
        PinError::PinRefused { errno, .. } => reg(errno),
        PinError::Busy { .. } => reg(libc::EBUSY),
        PinError::RemoteAccess => VerbsError::OdpUnavailable(
            "pin-on-demand serves local access only (a peer holds one rkey)",
        ),
        PinError::InvalidRange { .. } | PinError::BadChunkSize(_) => {
            VerbsError::InvalidArgument("pin-on-demand region range")
        }
        PinError::Released | PinError::Notifier(_) | PinError::Watch { .. } => {
            VerbsError::OdpUnavailable("the address space's notifier refused the region")
        }
    }
}

/// A registered pin-on-demand region; dropping it takes its key out of
/// the table, then unpins every chunk.
pub(crate) struct PodMr {
    pub(crate) region: Arc<PodRegion>,
    pub(crate) key: u32,
    ctx: Arc<RdmaContext>,
}

impl PodMr {
    /// Registers `[addr, addr + len)` for local access on `pd`.
    pub(crate) fn new(
        pd: &Arc<RdmaPd>,
        addr: usize,
        len: usize,
        writable: bool,
    ) -> Result<PodMr, VerbsError> {
        crate::device::before_odp_registration(crate::OdpEvents::Auto);
        let ctx = Arc::clone(&pd.ctx);
        let drain_ctx = Arc::downgrade(&ctx);
        let drain = Box::new(move || {
            if let Some(ctx) = drain_ctx.upgrade() {
                ctx.drain_cqs();
            }
        });
        let options = PodOptions {
            writable,
            ..PodOptions::default()
        };
        let pinner = Arc::new(VerbsPinner { pd: Arc::clone(pd) });
        let region = PinOnDemandRegion::new(
            &odp::AddressSpace::process(),
            addr,
            len,
            pinner,
            options,
            drain,
        )
        .map_err(pin_error)?;
        let region = Arc::new(region);
        let key = ctx.pod.insert(&region)?;
        Ok(PodMr { region, key, ctx })
    }
}

impl Drop for PodMr {
    fn drop(&mut self) {
        self.ctx.pod.remove(self.key);
    }
}

/// A work request's place in its queue's FIFO, with its chunks.
struct Pending {
    wr_id: u64,
    signaled: bool,
    token: InFlight,
}

/// The work requests of one queue pair whose completions have not been
/// polled, per queue, in posting order.
#[derive(Default)]
pub(crate) struct Tracker {
    send: Mutex<VecDeque<Pending>>,
    recv: Mutex<VecDeque<Pending>>,
}

impl Tracker {
    /// Runs `post` with the FIFO locked and `entries` (one per work
    /// request, in posting order) appended; the entries from the first
    /// one `post` reports unposted on are taken out again. Holding the
    /// lock across the post keeps a poll in another thread from seeing a
    /// completion before its entry exists.
    ///
    /// An unsignalled request that holds no chunk is not queued: no
    /// completion names it, and nothing waits for it. So a program that
    /// posts unsignalled requests from pinned memory only (which rxe
    /// allows without end) does not grow the FIFO.
    pub(crate) fn posting<T>(
        &self,
        recv: bool,
        entries: Vec<(u64, bool, InFlight)>,
        post: impl FnOnce() -> (usize, T),
    ) -> T {
        let queue = if recv { &self.recv } else { &self.send };
        let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
        let base = q.len();
        let mut queued_per_request = Vec::with_capacity(entries.len());
        for (wr_id, signaled, token) in entries {
            if signaled || !token.is_empty() {
                q.push_back(Pending {
                    wr_id,
                    signaled,
                    token,
                });
            }
            queued_per_request.push(q.len() - base);
        }
        let (posted, out) = post();
        let keep = match posted.checked_sub(1) {
            Some(last) => queued_per_request
                .get(last)
                .copied()
                .unwrap_or(q.len() - base),
            None => 0,
        };
        q.truncate(base + keep);
        out
    }

    /// A completion was polled: releases the chunks of its work request
    /// and, for a send, of the unsignalled ones posted before it.
    fn complete(&self, wc: &WorkCompletion) {
        let recv_op = matches!(wc.opcode, WcOpcode::Recv | WcOpcode::RecvRdmaWithImm);
        let order: [&Mutex<VecDeque<Pending>>; 2] = if recv_op && wc.status == WcStatus::Success {
            [&self.recv, &self.recv]
        } else if recv_op {
            [&self.recv, &self.send]
        } else {
            [&self.send, &self.recv]
        };
        for queue in order {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            // A flushed or failed request completes whether or not it was
            // signalled.
            let hit = q.iter().position(|p| {
                p.wr_id == wc.wr_id && (p.signaled || wc.status != WcStatus::Success)
            });
            if let Some(at) = hit {
                let done: Vec<Pending> = q.drain(..=at).collect();
                drop(q);
                for p in done {
                    p.token.complete();
                }
                return;
            }
        }
    }
}

/// The context's queue pairs' trackers and its completion queues, for
/// the completion path and the drain.
#[derive(Default)]
pub(crate) struct Completions {
    trackers: Mutex<HashMap<u32, Arc<Tracker>>>,
    cqs: Mutex<Vec<Weak<super::RdmaCq>>>,
}

impl Completions {
    pub(crate) fn add_qp(&self, qpn: u32, tracker: &Arc<Tracker>) {
        let mut t = self.trackers.lock().unwrap_or_else(PoisonError::into_inner);
        t.insert(qpn, Arc::clone(tracker));
    }

    pub(crate) fn remove_qp(&self, qpn: u32) {
        let mut t = self.trackers.lock().unwrap_or_else(PoisonError::into_inner);
        t.remove(&qpn);
    }

    pub(crate) fn add_cq(&self, cq: &Arc<super::RdmaCq>) {
        let mut cqs = self.cqs.lock().unwrap_or_else(PoisonError::into_inner);
        cqs.retain(|w| w.strong_count() > 0);
        cqs.push(Arc::downgrade(cq));
    }

    /// A completion was polled from the device.
    pub(crate) fn completed(&self, wc: &WorkCompletion) {
        let tracker = {
            let t = self.trackers.lock().unwrap_or_else(PoisonError::into_inner);
            t.get(&wc.qp_num).cloned()
        };
        if let Some(t) = tracker {
            t.complete(wc);
        }
    }

    /// Polls every completion queue of the context into its set-aside
    /// queue (the pin-on-demand drain hook).
    pub(crate) fn drain(&self) {
        let cqs: Vec<Arc<super::RdmaCq>> = {
            let cqs = self.cqs.lock().unwrap_or_else(PoisonError::into_inner);
            cqs.iter().filter_map(Weak::upgrade).collect()
        };
        for cq in cqs {
            cq.drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Tracker {
        fn pending(&self) -> (usize, usize) {
            let len = |q: &Mutex<VecDeque<Pending>>| q.lock().unwrap().len();
            (len(&self.send), len(&self.recv))
        }
    }

    fn wc(wr_id: u64, opcode: WcOpcode, status: WcStatus) -> WorkCompletion {
        WorkCompletion {
            wr_id,
            opcode,
            status,
            ..WorkCompletion::default()
        }
    }

    #[test]
    fn a_signalled_completion_completes_the_unsignalled_requests_before_it() {
        let t = Tracker::default();
        let (chunked, in_flight) = InFlight::for_test();
        let mut entries = vec![(1, false, chunked)];
        entries.extend([(2, false), (3, true), (4, false)].map(|(id, s)| (id, s, InFlight::new())));
        t.posting(false, entries, || (4, ()));
        // Request 1 holds a chunk, 3 is signalled; 2 and 4 need no entry.
        assert_eq!(t.pending(), (2, 0));
        assert_eq!(in_flight(), 1);
        t.posting(
            true,
            vec![(10, true, InFlight::new()), (11, true, InFlight::new())],
            || (2, ()),
        );
        // A receive completes its own request only.
        t.complete(&wc(10, WcOpcode::Recv, WcStatus::Success));
        assert_eq!(t.pending(), (2, 1));
        // A completion for a request nobody tracks changes nothing.
        t.complete(&wc(99, WcOpcode::RdmaWrite, WcStatus::Success));
        assert_eq!(t.pending(), (2, 1));
        // The signalled request takes the unsignalled one before it along,
        // and releases its chunk.
        t.complete(&wc(3, WcOpcode::Send, WcStatus::Success));
        assert_eq!(t.pending(), (0, 1));
        assert_eq!(in_flight(), 0);
        // Flushes complete whatever the opcode says.
        t.complete(&wc(11, WcOpcode::Send, WcStatus::WrFlushError));
        assert_eq!(t.pending(), (0, 0));
    }

    #[test]
    fn a_failed_unsignalled_request_with_chunks_completes_itself() {
        let t = Tracker::default();
        let (chunked, in_flight) = InFlight::for_test();
        t.posting(false, vec![(7, false, chunked)], || (1, ()));
        t.complete(&wc(7, WcOpcode::RdmaWrite, WcStatus::RetryExceeded));
        assert_eq!((t.pending(), in_flight()), ((0, 0), 0));
    }

    #[test]
    fn a_partial_post_keeps_only_the_posted_requests() {
        let t = Tracker::default();
        let entries = (0..5).map(|id| (id, true, InFlight::new())).collect();
        t.posting(false, entries, || (2, ()));
        assert_eq!(t.pending(), (2, 0));
        // Unsignalled requests without chunks are not queued; a partial
        // post still cuts after the last posted request's entry.
        let entries = (10..16)
            .map(|id| (id, id % 2 == 0, InFlight::new()))
            .collect();
        t.posting(false, entries, || (4, ()));
        assert_eq!(t.pending(), (4, 0));
        let entries = (20..22).map(|id| (id, true, InFlight::new())).collect();
        t.posting(true, entries, || (0, ()));
        assert_eq!(t.pending(), (4, 0));
    }

    #[test]
    fn unsignalled_requests_without_chunks_do_not_grow_the_fifo() {
        let t = Tracker::default();
        for round in 0..1000 {
            t.posting(false, vec![(round, false, InFlight::new())], || (1, ()));
        }
        assert_eq!(t.pending(), (0, 0));
    }
}
