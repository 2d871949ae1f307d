//! The range an invalidation covers and why it happens (the kernel's
//! `struct mmu_notifier_range` and `enum mmu_notifier_event`).

use crate::NotifierError;

/// Why an address range is being invalidated.
///
/// Callbacks may treat events differently: a protection change may only need
/// write access revoked, while an unmap must drop every translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Event {
    /// The range is being unmapped (`munmap`, or a `MAP_FIXED` mapping
    /// replacing it).
    Unmap,
    /// The range is moving or shrinking (`mremap`). The kernel reports this as
    /// an unmap of the old range; userspace sources can tell it apart.
    Remap,
    /// The page contents are being discarded or replaced while the mapping
    /// stays (`madvise(MADV_DONTNEED/MADV_FREE/MADV_REMOVE)`, page
    /// replacement). Later accesses may see zero-filled or different pages.
    Clear,
    /// The protection of the whole range changes (`mprotect`).
    ProtectionVma,
    /// The whole address space is going away; every subscription is hit once.
    Release,
}

/// An address range `[start, end)` being invalidated, with its event and
/// whether the callbacks may sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifierRange {
    start: usize,
    end: usize,
    event: Event,
    blockable: bool,
}

impl NotifierRange {
    /// A blockable range `[start, end)`.
    ///
    /// # Errors
    /// [`NotifierError::EmptyRange`] unless `start < end`.
    pub fn new(start: usize, end: usize, event: Event) -> Result<Self, NotifierError> {
        if start >= end {
            return Err(NotifierError::EmptyRange { start, end });
        }
        Ok(Self {
            start,
            end,
            event,
            blockable: true,
        })
    }

    /// The range covering every address a subscription can hold (see
    /// [`crate::Subscriptions::insert`]).
    pub(crate) fn whole_address_space(event: Event) -> Self {
        Self {
            start: 0,
            end: usize::MAX,
            event,
            blockable: true,
        }
    }

    /// The same range, marked non-blockable: callbacks must not sleep and
    /// return `false` when they would have to.
    #[must_use]
    pub fn nonblocking(mut self) -> Self {
        self.blockable = false;
        self
    }

    /// First address of the range.
    pub fn start(&self) -> usize {
        self.start
    }

    /// One past the last address of the range.
    pub fn end(&self) -> usize {
        self.end
    }

    /// Last address of the range (inclusive), as the interval tree uses it.
    pub fn last(&self) -> usize {
        self.end - 1
    }

    /// Why the range is invalidated.
    pub fn event(&self) -> Event {
        self.event
    }

    /// Whether callbacks may sleep (take blocking locks, wait for a device).
    pub fn is_blockable(&self) -> bool {
        self.blockable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_reversed_ranges_are_rejected() {
        assert_eq!(
            NotifierRange::new(0x1000, 0x1000, Event::Unmap),
            Err(NotifierError::EmptyRange {
                start: 0x1000,
                end: 0x1000
            })
        );
        assert!(NotifierRange::new(0x2000, 0x1000, Event::Clear).is_err());
    }

    #[test]
    fn last_is_inclusive_and_nonblocking_is_sticky() {
        let r = NotifierRange::new(0x1000, 0x3000, Event::ProtectionVma).unwrap();
        assert_eq!((r.start(), r.last(), r.end()), (0x1000, 0x2fff, 0x3000));
        assert!(r.is_blockable());
        let nb = r.nonblocking();
        assert!(!nb.is_blockable());
        assert_eq!(nb.event(), Event::ProtectionVma);
    }
}
