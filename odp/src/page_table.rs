//! The device page table of one umem: one entry per page.
//!
//! The device reaches memory through the process's own virtual addresses, so
//! an entry does not translate an address; it records that the page was made
//! present (and writable) after the last invalidation that covered it, which
//! is what makes a device access to it legal. The frame number is kept where
//! `/proc/self/pagemap` shows it, for diagnostics and for tests that check a
//! page was really replaced.
//!
//! The table is guarded by the umem's driver lock; nothing here locks.

/// Entry bits. The frame number sits above them.
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const DIRTY: u64 = 1 << 2;
const PINNED: u64 = 1 << 3;
const FRAME_SHIFT: u32 = 12;

/// One page's entry, packed in a `u64` so that a large table is a zeroed
/// (lazily allocated) array, as the kernel's `pfn_list` is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageEntry(u64);

impl PageEntry {
    /// The page may be accessed by the device.
    pub fn is_present(self) -> bool {
        self.0 & PRESENT != 0
    }

    /// The page was made present for writing.
    pub fn is_writable(self) -> bool {
        self.0 & WRITABLE != 0
    }

    /// The device wrote to the page since it was made present.
    pub fn is_dirty(self) -> bool {
        self.0 & DIRTY != 0
    }

    /// The page is locked in memory by this umem.
    pub fn is_pinned(self) -> bool {
        self.0 & PINNED != 0
    }

    /// The page frame number, or 0 when unknown.
    pub fn frame(self) -> u64 {
        self.0 >> FRAME_SHIFT
    }
}

/// What clearing a range of the table found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cleared {
    pub(crate) pages: usize,
    pub(crate) dirty: usize,
    pub(crate) pinned: usize,
}

/// Entries per occupancy chunk: one 4 KiB page of the entry array.
const CHUNK: usize = 512;

/// The per-page state of one umem.
#[derive(Debug)]
pub(crate) struct PageTable {
    entries: Vec<u64>,
    /// Present entries per chunk of [`CHUNK`] entries. Clearing skips empty
    /// chunks, so tearing down a large, sparsely used table never touches
    /// the (lazily allocated) entry pages nobody used.
    chunk_present: Vec<u16>,
    present: usize,
}

impl PageTable {
    /// A table of `pages` absent entries. The zeroed allocation is lazy, so
    /// an untouched table costs address space, not memory.
    pub(crate) fn new(pages: usize) -> Self {
        Self {
            entries: vec![0; pages],
            chunk_present: vec![0; pages.div_ceil(CHUNK)],
            present: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn present(&self) -> usize {
        self.present
    }

    pub(crate) fn entry(&self, index: usize) -> PageEntry {
        PageEntry(self.entries[index])
    }

    /// Whether every page of `[first, last]` is present, and writable when
    /// `write`.
    #[inline]
    pub(crate) fn all_present(&self, first: usize, last: usize, write: bool) -> bool {
        let need = if write { PRESENT | WRITABLE } else { PRESENT };
        self.entries[first..=last].iter().all(|&e| e & need == need)
    }

    /// Records page `index` as present. A page already present keeps its
    /// dirty bit and gains (never loses) write permission and pinning.
    /// Returns whether it was absent before.
    pub(crate) fn commit(
        &mut self,
        index: usize,
        writable: bool,
        pinned: bool,
        frame: u64,
    ) -> bool {
        let old = self.entries[index];
        let mut new = PRESENT | (frame << FRAME_SHIFT);
        if writable || old & WRITABLE != 0 {
            new |= WRITABLE;
        }
        if pinned || old & PINNED != 0 {
            new |= PINNED;
        }
        let was_absent = old & PRESENT == 0;
        if was_absent {
            self.present += 1;
            self.chunk_present[index / CHUNK] += 1;
        } else {
            new |= old & DIRTY;
            if frame == 0 {
                new |= old & !(PRESENT | WRITABLE | DIRTY | PINNED);
            }
        }
        self.entries[index] = new;
        was_absent
    }

    /// Marks the present pages of `[first, last]` dirty (the device wrote).
    #[inline]
    pub(crate) fn mark_dirty(&mut self, first: usize, last: usize) {
        for e in &mut self.entries[first..=last] {
            if *e & PRESENT != 0 {
                *e |= DIRTY;
            }
        }
    }

    /// Clears `[first, last]`, calling `unpin(first_page, pages)` for every
    /// run of pinned pages. Costs O((last - first) / 512 + present pages in
    /// the range).
    pub(crate) fn clear(
        &mut self,
        first: usize,
        last: usize,
        mut unpin: impl FnMut(usize, usize),
    ) -> Cleared {
        let mut cleared = Cleared::default();
        let mut pinned_run: Option<(usize, usize)> = None;
        let mut chunk = first / CHUNK;
        while chunk <= last / CHUNK && self.present > cleared.pages {
            if self.chunk_present[chunk] == 0 {
                chunk += 1;
                continue;
            }
            let lo = first.max(chunk * CHUNK);
            let hi = last.min(chunk * CHUNK + CHUNK - 1);
            for index in lo..=hi {
                let e = self.entries[index];
                if e & PRESENT == 0 {
                    continue;
                }
                if e & PINNED != 0 {
                    pinned_run = match pinned_run {
                        Some((start, n)) if start + n == index => Some((start, n + 1)),
                        run => {
                            if let Some((start, n)) = run {
                                unpin(start, n);
                            }
                            Some((index, 1))
                        }
                    };
                    cleared.pinned += 1;
                }
                cleared.pages += 1;
                if e & DIRTY != 0 {
                    cleared.dirty += 1;
                }
                self.chunk_present[chunk] -= 1;
                self.entries[index] = 0;
            }
            chunk += 1;
        }
        if let Some((start, n)) = pinned_run {
            unpin(start, n);
        }
        self.present -= cleared.pages;
        cleared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_and_clear_keep_the_present_count() {
        let mut t = PageTable::new(8);
        assert!(t.commit(1, false, false, 0));
        assert!(t.commit(2, true, true, 77));
        assert!(!t.commit(1, true, false, 0), "second commit is not new");
        assert_eq!(t.present(), 2);
        assert!(t.entry(1).is_writable(), "write permission only grows");
        assert_eq!(t.entry(2).frame(), 77);
        assert!(t.all_present(1, 2, true));
        assert!(!t.all_present(0, 2, false));
        t.mark_dirty(0, 7);
        assert!(t.entry(2).is_dirty() && !t.entry(0).is_dirty());

        let mut runs = Vec::new();
        let c = t.clear(0, 7, |s, n| runs.push((s, n)));
        assert_eq!((c.pages, c.dirty, c.pinned), (2, 2, 1));
        assert_eq!(runs, vec![(2, 1)]);
        assert_eq!(t.present(), 0);
        assert_eq!(t.entry(2), PageEntry::default());
    }

    #[test]
    fn pinned_runs_are_reported_contiguously() {
        let mut t = PageTable::new(10);
        for i in [0, 1, 2, 5, 6, 9] {
            t.commit(i, false, true, 0);
        }
        let mut runs = Vec::new();
        t.clear(0, 9, |s, n| runs.push((s, n)));
        assert_eq!(runs, vec![(0, 3), (5, 2), (9, 1)]);
    }

    #[test]
    fn clearing_skips_empty_chunks_and_counts_exactly() {
        let mut t = PageTable::new(10 * CHUNK + 3);
        for i in [0, CHUNK - 1, CHUNK, 5 * CHUNK + 7, 10 * CHUNK + 2] {
            t.commit(i, true, false, 0);
        }
        let c = t.clear(1, 10 * CHUNK + 1, |_, _| ());
        assert_eq!(c.pages, 3);
        assert_eq!(t.present(), 2);
        assert!(t.entry(0).is_present() && t.entry(10 * CHUNK + 2).is_present());
        assert_eq!(t.clear(0, 10 * CHUNK + 2, |_, _| ()).pages, 2);
        assert_eq!(
            t.chunk_present
                .iter()
                .map(|&c| usize::from(c))
                .sum::<usize>(),
            0
        );
    }

    #[test]
    fn a_large_table_is_lazily_zeroed() {
        // 64 GiB of 4 KiB pages: 128 MiB of entries, untouched.
        let t = PageTable::new(16 << 20);
        assert_eq!(t.len(), 16 << 20);
        assert!(!t.entry(12_345_678).is_present());
    }
}
