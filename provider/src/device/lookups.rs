//! What one received batch looks up once.
//!
//! The packets of a stream name the same queue pair and region one after
//! the other, and each table lookup costs a read lock and a reference
//! count (atomic instructions that dominate a small packet's handling).
//! A batch keeps the last queue pair and region it found and counts its
//! packets locally. It holds them only while it is handled: a
//! deregistration, which waits for the references in flight, waits for at
//! most the rest of the batch, and a destroyed queue pair is kept alive no
//! longer than by a packet in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::Shared;
use crate::rc::{CachedRegions, QpCore, Region, Regions};

/// The lookups of one batch (see the module docs).
pub(super) struct BatchLookups<'a> {
    shared: &'a Shared,
    qp: Option<Arc<QpCore>>,
    regions: CachedRegions<'a>,
    /// Packets accepted, added to the device's counter at the end.
    accepted: u64,
    /// ICRCs that matched with a solved IPv4 ID (every segment of a GSO
    /// send but the first), likewise.
    solved_ip_ids: u64,
}

impl<'a> BatchLookups<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            qp: None,
            regions: CachedRegions::new(shared),
            accepted: 0,
            solved_ip_ids: 0,
        }
    }

    /// The queue pair numbered `qpn`, if it exists.
    pub(super) fn qp(&mut self, qpn: u32) -> Option<&Arc<QpCore>> {
        if self.qp.as_ref().is_none_or(|qp| qp.qpn != qpn) {
            self.qp = Some(self.shared.qp(qpn)?);
        }
        self.qp.as_ref()
    }

    /// The queue pair [`Self::qp`] found last.
    pub(super) fn current_qp(&self) -> Option<&Arc<QpCore>> {
        self.qp.as_ref()
    }

    /// Counts `n` packets queue pairs accepted.
    pub(super) fn accepted(&mut self, n: u64) {
        self.accepted += n;
    }

    /// Counts `n` ICRCs that matched with a solved IPv4 ID.
    pub(super) fn solved_ip_ids(&mut self, n: u64) {
        self.solved_ip_ids += n;
    }
}

impl Regions for BatchLookups<'_> {
    fn lookup_mr(&self, key: u32) -> Option<&dyn Region> {
        self.regions.lookup_mr(key)
    }
}

impl Drop for BatchLookups<'_> {
    fn drop(&mut self) {
        let counters = &self.shared.counters;
        for (counter, n) in [
            (&counters.rx_packets, self.accepted),
            (&counters.rx_icrc_solved_ip_id, self.solved_ip_ids),
        ] {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }
}
