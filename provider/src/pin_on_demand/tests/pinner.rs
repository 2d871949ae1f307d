//! A real pinner for tests: `mlock`/`munlock`, with a record of every pin.
//!
//! `mlock` does not nest, and racing faults may pin the same chunk twice
//! (one of them is thrown away), so the pinner counts locks per page and
//! unlocks a page only when its last pin goes. Each pin gets a generation,
//! which is also its lkey, and records its range and, when
//! `/proc/self/pagemap` shows them (root), the frames it pinned.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::pin_on_demand::{ChunkPinner, PinError};

/// What one pin did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PinRecord {
    pub(super) addr: usize,
    pub(super) len: usize,
    /// The frame of each page when pinned (empty if frames are hidden).
    pub(super) frames: Vec<u64>,
    pub(super) unpinned: bool,
}

/// A registration: its generation (also its lkey).
#[derive(Debug)]
pub(super) struct TestPin(u32);

#[derive(Default)]
struct State {
    last_generation: u32,
    pins: HashMap<u32, PinRecord>,
    /// Pins holding each locked page.
    locks: HashMap<usize, u32>,
    /// Unpins of a pin that was unpinned already (must stay 0).
    double_unpins: u64,
    /// The errno the next pins fail with, if set.
    refuse: Option<i32>,
}

pub(super) struct MlockPinner {
    state: Mutex<State>,
    pagemap: Option<File>,
}

pub(super) fn page() -> usize {
    odp::page_size()
}

impl MlockPinner {
    /// `frames`: record frames (pass `aspace.frames_visible()`).
    pub(super) fn new(frames: bool) -> Self {
        Self {
            state: Mutex::default(),
            pagemap: frames.then(|| File::open("/proc/self/pagemap").expect("pagemap")),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next pins fail with `errno` (or succeed again with `None`).
    pub(super) fn refuse(&self, errno: Option<i32>) {
        self.state().refuse = errno;
    }

    /// The record of the pin with lkey `lkey`.
    pub(super) fn record(&self, lkey: u32) -> PinRecord {
        self.state()
            .pins
            .get(&lkey)
            .cloned()
            .expect("a pin of this pinner")
    }

    /// Whether the pin with lkey `lkey` is still pinned.
    pub(super) fn is_live(&self, lkey: u32) -> bool {
        !self.record(lkey).unpinned
    }

    /// (pins made, pins still live, double unpins).
    pub(super) fn totals(&self) -> (usize, usize, u64) {
        let st = self.state();
        let live = st.pins.values().filter(|r| !r.unpinned).count();
        (st.pins.len(), live, st.double_unpins)
    }

    /// Whether frames are recorded.
    pub(super) fn frames_visible(&self) -> bool {
        self.pagemap.is_some()
    }

    /// The frames that back `[addr, addr + len)` now (empty if hidden);
    /// 0 for a page that is not present.
    pub(super) fn frames_now(&self, addr: usize, len: usize) -> Vec<u64> {
        let Some(pagemap) = &self.pagemap else {
            return Vec::new();
        };
        (addr..addr + len)
            .step_by(page())
            .map(|va| {
                let mut entry = [0u8; 8];
                let offset = (va / page() * 8) as u64;
                pagemap
                    .read_exact_at(&mut entry, offset)
                    .expect("pagemap entry");
                let entry = u64::from_ne_bytes(entry);
                if entry >> 63 == 1 {
                    entry & ((1 << 55) - 1)
                } else {
                    0
                }
            })
            .collect()
    }
}

/// Faults `[addr, addr + len)` in and locks it, as a registration pins
/// it. The faulting is explicit (`MADV_POPULATE_READ`) because
/// AddressSanitizer turns `mlock` into a no-op: under it the pages are
/// still made present, and holes still fail.
fn mlock(addr: usize, len: usize) -> Result<(), i32> {
    let last_errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: populating only faults pages of existing mappings in; a
    // range with holes fails with ENOMEM.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_READ) } != 0 {
        return Err(last_errno());
    }
    // SAFETY: mlock changes only the residency of `[addr, addr + len)`;
    // a range with holes fails with ENOMEM.
    if unsafe { libc::mlock(addr as *const libc::c_void, len) } != 0 {
        return Err(last_errno());
    }
    Ok(())
}

fn munlock(addr: usize, len: usize) {
    // SAFETY: as mlock; an unmapped range only makes it fail, which is
    // fine: its pages are gone with their locks.
    unsafe { libc::munlock(addr as *const libc::c_void, len) };
}

impl State {
    /// Unlocks the pages of `[addr, addr + len)` that no pin holds.
    fn unlock_unheld(&self, addr: usize, len: usize) {
        for va in (addr..addr + len).step_by(page()) {
            if !self.locks.contains_key(&va) {
                munlock(va, page());
            }
        }
    }
}

impl ChunkPinner for MlockPinner {
    type Pin = TestPin;

    fn pin(&self, addr: usize, len: usize, _writable: bool) -> Result<TestPin, PinError> {
        let mut st = self.state();
        if let Some(errno) = st.refuse {
            return Err(PinError::PinRefused { addr, len, errno });
        }
        if let Err(errno) = mlock(addr, len) {
            // mlock locked the pages before the hole: undo what no pin holds.
            st.unlock_unheld(addr, len);
            return Err(match errno {
                libc::ENOMEM => PinError::Unmapped { addr, len },
                errno => PinError::PinRefused { addr, len, errno },
            });
        }
        for va in (addr..addr + len).step_by(page()) {
            *st.locks.entry(va).or_default() += 1;
        }
        st.last_generation += 1;
        let generation = st.last_generation;
        let frames = self.frames_now(addr, len);
        st.pins.insert(
            generation,
            PinRecord {
                addr,
                len,
                frames,
                unpinned: false,
            },
        );
        Ok(TestPin(generation))
    }

    fn lkey(pin: &TestPin) -> u32 {
        pin.0
    }

    fn unpin(&self, pin: TestPin) {
        let mut st = self.state();
        let Some(record) = st.pins.get_mut(&pin.0) else {
            panic!("unpin of an unknown pin {}", pin.0);
        };
        if record.unpinned {
            st.double_unpins += 1;
            return;
        }
        record.unpinned = true;
        let (addr, len) = (record.addr, record.len);
        for va in (addr..addr + len).step_by(page()) {
            let count = st.locks.get_mut(&va).expect("a locked page");
            *count -= 1;
            if *count == 0 {
                st.locks.remove(&va);
            }
        }
        st.unlock_unheld(addr, len);
    }
}
