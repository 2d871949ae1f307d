//! Access to registered memory as the engine needs it: regions looked up
//! by key, checked for range and rights, and read, written and updated
//! atomically through the ODP layer. The device's key table provides the
//! regions; the verbs API's memory regions implement [`Region`].

use std::cell::OnceCell;
use std::sync::Arc;

pub(crate) use odp::AtomicOp;

bitflags::bitflags! {
    /// Access rights of a memory region (verbs' `IBV_ACCESS_*`, same bit
    /// values).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
    pub struct AccessFlags: u32 {
        /// The local device may write (receives, read results).
        const LOCAL_WRITE = 1;
        /// Peers may RDMA WRITE.
        const REMOTE_WRITE = 2;
        /// Peers may RDMA READ.
        const REMOTE_READ = 4;
        /// Peers may run atomics.
        const REMOTE_ATOMIC = 8;
        /// On-demand paging: nothing is pinned or faulted at registration.
        const ON_DEMAND = 0x40;
    }
}

/// Why an access to a region failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegionError {
    /// Outside the region, wrong protection domain, or missing right.
    #[error("outside the region, wrong protection domain or missing right")]
    Protection,
    /// The memory is unmapped or protected (a fault the ODP layer
    /// reported).
    #[error("memory unmapped or protected")]
    Fault,
    /// A misaligned atomic.
    #[error("misaligned atomic")]
    Misaligned,
}

impl From<odp::OdpError> for RegionError {
    fn from(_: odp::OdpError) -> Self {
        RegionError::Fault
    }
}

/// A registered memory region as the engine accesses it.
pub(crate) trait Region: Send + Sync {
    /// The region's local and remote key.
    fn key(&self) -> u32;

    /// Checks that `[va, va + len)` lies in the region, that it belongs to
    /// `pd`, and that it grants `need`.
    fn check(&self, pd: u32, va: u64, len: u64, need: AccessFlags) -> Result<(), RegionError>;

    /// Copies memory at `va` into `dst`.
    fn read(&self, va: u64, dst: &mut [u8]) -> Result<(), RegionError>;

    /// Copies `src` into memory at `va`.
    fn write(&self, va: u64, src: &[u8]) -> Result<(), RegionError>;

    /// Runs `op` atomically on the 8 bytes at `va` (8-byte aligned, else
    /// [`RegionError::Misaligned`]); returns the old value. Memory that
    /// vanished without an invalidation gives [`RegionError::Fault`],
    /// never a crash.
    fn atomic(&self, va: u64, op: AtomicOp) -> Result<u64, RegionError>;

    /// Prefetches `[va, va + len)` as `advice` says (`ibv_advise_mr`).
    fn advise(&self, va: u64, len: u64, advice: odp::Advice) -> Result<(), odp::OdpError>;
}

/// The device's table of memory regions by key.
pub(crate) trait RegionTable {
    /// The region with local/remote key `key`, if registered, with a
    /// reference of its own: a region is not torn down while a reference
    /// is alive.
    fn find_mr(&self, key: u32) -> Option<Arc<dyn Region>>;
}

/// What the engine needs: memory regions by key, lent for a batch of work
/// (see [`CachedRegions`]).
pub(crate) trait Regions {
    /// The region with local/remote key `key`, if registered; not torn
    /// down while `self` is borrowed.
    fn lookup_mr(&self, key: u32) -> Option<&dyn Region>;
}

/// Regions a [`CachedRegions`] keeps in one piece of its list.
const CACHED_REGIONS: usize = 4;

/// [`Regions`] for a batch of work whose pieces name the same keys (one
/// received batch, one post call): each region is looked up in the table
/// once, and lent from then on. A table lookup costs a read lock and a
/// reference count taken and dropped: atomic instructions, each of which
/// waits for the thread's earlier stores to drain. Keep one only for that
/// batch: it holds references, which a deregistration waits for. The list
/// grows by one entry per region found (unknown keys take none), so a
/// batch holds at most as many as it names.
pub(crate) struct CachedRegions<'a> {
    table: &'a dyn RegionTable,
    found: Found,
}

/// The regions found so far, in the order found: slots never change once
/// set (lookups lend from them), and a full list continues in another.
#[derive(Default)]
struct Found {
    slots: [OnceCell<(u32, Arc<dyn Region>)>; CACHED_REGIONS],
    more: OnceCell<Box<Found>>,
}

impl<'a> CachedRegions<'a> {
    pub(crate) fn new(table: &'a dyn RegionTable) -> Self {
        Self {
            table,
            found: Found::default(),
        }
    }
}

impl Regions for CachedRegions<'_> {
    fn lookup_mr(&self, key: u32) -> Option<&dyn Region> {
        let mut found = &self.found;
        loop {
            for slot in &found.slots {
                let (found_key, mr) = match slot.get() {
                    Some(entry) => entry,
                    None => {
                        let mr = self.table.find_mr(key)?;
                        slot.get_or_init(|| (key, mr))
                    }
                };
                if *found_key == key {
                    return Some(&**mr);
                }
            }
            found = found.more.get_or_init(Box::default);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A region that grants nothing: only its key matters here.
    struct Keyed(u32);

    impl Region for Keyed {
        fn key(&self) -> u32 {
            self.0
        }
        fn check(&self, _: u32, _: u64, _: u64, _: AccessFlags) -> Result<(), RegionError> {
            Err(RegionError::Protection)
        }
        fn read(&self, _: u64, _: &mut [u8]) -> Result<(), RegionError> {
            Err(RegionError::Protection)
        }
        fn write(&self, _: u64, _: &[u8]) -> Result<(), RegionError> {
            Err(RegionError::Protection)
        }
        fn atomic(&self, _: u64, _: AtomicOp) -> Result<u64, RegionError> {
            Err(RegionError::Protection)
        }
        fn advise(&self, _: u64, _: u64, _: odp::Advice) -> Result<(), odp::OdpError> {
            Ok(())
        }
    }

    /// Regions with even keys below 100; counts the lookups.
    #[derive(Default)]
    struct Table {
        finds: Cell<usize>,
        regions: Vec<Arc<dyn Region>>,
    }

    impl RegionTable for Table {
        fn find_mr(&self, key: u32) -> Option<Arc<dyn Region>> {
            self.finds.set(self.finds.get() + 1);
            self.regions.iter().find(|mr| mr.key() == key).cloned()
        }
    }

    #[test]
    fn a_batch_finds_each_region_in_the_table_once_however_many_it_names() {
        let table = Table {
            regions: (0..50)
                .map(|k| Arc::new(Keyed(2 * k)) as Arc<dyn Region>)
                .collect(),
            ..Table::default()
        };
        let cached = CachedRegions::new(&table);
        // More keys than one piece of the list holds, each named often,
        // with unknown keys between them.
        let keys: Vec<u32> = (0..3 * CACHED_REGIONS as u32).map(|k| 4 * k).collect();
        let mut lent = Vec::new();
        for round in 0..5 {
            for &key in &keys {
                let mr = cached.lookup_mr(key).expect("registered");
                assert_eq!(mr.key(), key);
                if round == 0 {
                    lent.push(mr);
                }
                assert!(cached.lookup_mr(key + 1).is_none(), "odd keys are unknown");
            }
        }
        // Lent regions stay valid while the batch lives (the borrow
        // checker holds them to it), and each was looked up once; every
        // unknown key each time.
        assert!(lent.iter().zip(&keys).all(|(mr, &key)| mr.key() == key));
        assert_eq!(table.finds.get(), keys.len() + 5 * keys.len());
        // The references the batch held are dropped with it.
        drop(lent);
        drop(cached);
        assert!(table.regions.iter().all(|mr| Arc::strong_count(mr) == 1));
    }
}
