//! Loom models of the race between a fault's commit, a work request in
//! flight and an invalidation: the region's table lock, in-flight counts
//! and wakeups are loom's, and so are the notifier's sequence, lock and
//! wait queue.
//!
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p
//! provider --lib --release pin_on_demand::model`
//!
//! One chunk; a "page" that changes only between the invalidation's start
//! and end (`changed`), as the kernel changes page tables. Checked: a
//! registration in the table after the invalidation never pins the old
//! page; a request's registration stays pinned while its token is held;
//! every pin is unpinned exactly once. Loom explores every interleaving
//! with up to three preemptions (a few hundred for one request, about ten
//! thousand for two racing faults).

use std::sync::{Arc, Mutex as StdMutex};

use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::thread;

use odp::AddressSpace;
use odp::notifier::{Event, NotifierRange};

use crate::pin_on_demand::region::Slot;
use crate::pin_on_demand::{ChunkPinner, PinError, PinOnDemandRegion, PodOptions};

const ADDR: usize = 0x10_0000;

/// Pins nothing real: records whether each pin saw the page before or
/// after the change.
struct ModelPinner {
    changed: Arc<AtomicBool>,
    /// Per pin: (pinned the old page, unpinned).
    pins: StdMutex<Vec<(bool, bool)>>,
}

impl ChunkPinner for ModelPinner {
    type Pin = u32;

    fn pin(&self, _addr: usize, _len: usize, _writable: bool) -> Result<u32, PinError> {
        let old = !self.changed.load(SeqCst);
        let mut pins = self.pins.lock().unwrap();
        pins.push((old, false));
        Ok(pins.len() as u32 - 1)
    }

    fn lkey(pin: &u32) -> u32 {
        *pin
    }

    fn unpin(&self, pin: u32) {
        let mut pins = self.pins.lock().unwrap();
        assert!(!pins[pin as usize].1, "pin {pin} unpinned twice");
        pins[pin as usize].1 = true;
    }
}

impl ModelPinner {
    fn live(&self, lkey: u32) -> bool {
        !self.pins.lock().unwrap()[lkey as usize].1
    }
}

/// `requests` threads map the chunk (and hold their tokens across a yield
/// when `hold`), while the main thread invalidates it.
fn model(requests: usize, hold: bool) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let aspace = Arc::new(AddressSpace::new_private());
        let changed = Arc::new(AtomicBool::new(false));
        let pinner = Arc::new(ModelPinner {
            changed: Arc::clone(&changed),
            pins: StdMutex::default(),
        });
        let options = PodOptions {
            chunk_size: odp::page_size(),
            ..PodOptions::default()
        };
        let region = Arc::new(
            PinOnDemandRegion::new(
                &aspace,
                ADDR,
                64,
                Arc::clone(&pinner),
                options,
                Box::new(|| {}),
            )
            .unwrap(),
        );

        let spawn_request = || {
            let (region, pinner) = (Arc::clone(&region), Arc::clone(&pinner));
            thread::spawn(move || {
                let mut pieces = Vec::new();
                let Ok(token) = region.map_sge(ADDR as u64, 8, &mut pieces) else {
                    return;
                };
                assert!(pinner.live(pieces[0].lkey), "mapped an unpinned chunk");
                if hold {
                    thread::yield_now();
                    assert!(pinner.live(pieces[0].lkey), "unpinned under a request");
                }
                token.complete();
            })
        };
        let threads: Vec<_> = (0..requests).map(|_| spawn_request()).collect();
        let range = NotifierRange::new(ADDR, ADDR + 64, Event::Unmap).unwrap();
        let invalidation = aspace
            .subscriptions()
            .invalidate_range_start(&range)
            .unwrap();
        changed.store(true, SeqCst);
        invalidation.end();
        for t in threads {
            t.join().unwrap();
        }

        let committed = match &region.inner.lock()[0] {
            Slot::Pinned(chunk) => Some(chunk.lkey),
            _ => None,
        };
        if let Some(lkey) = committed {
            assert!(
                !pinner.pins.lock().unwrap()[lkey as usize].0,
                "a registration of the old page survived the invalidation"
            );
        }
        drop(Arc::into_inner(region).expect("the only reference"));
        let pins = pinner.pins.lock().unwrap();
        assert!(pins.iter().all(|&(_, unpinned)| unpinned), "{pins:?}");
    });
    eprintln!(
        "{requests} request(s), hold {hold}: {} interleavings",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn commit_retry_and_invalidation() {
    model(1, false);
}

#[test]
fn invalidation_waits_for_the_request_in_flight() {
    model(1, true);
}

#[test]
fn two_faults_race_for_the_chunk_during_an_invalidation() {
    model(2, false);
}
