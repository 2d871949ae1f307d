//! Who tells the notifier that the address space changes, and when.
//!
//! | source | sees | reports | window left to the device |
//! |---|---|---|---|
//! | explicit wrappers ([`AddressSpace::munmap`], ... in [`crate::address_space`]) | calls made through them | before the change | none |
//! | [`interpose`] (`libodp_preload.so`) | calls into libc's `munmap`, `mremap`, `madvise`, `mprotect`, `mmap(MAP_FIXED)`, `shmdt`, `brk`, `sbrk` from any code but glibc itself | before the change | none |
//! | userfaultfd monitor | every unmap, remap and discard of registered memory, raw syscalls and glibc's own included | discards before, unmaps and remaps after | see the monitor |
//!
//! Every source describes a change the same way ([`Change`]), so the ranges
//! a given call invalidates are computed in one place.

pub(crate) mod interpose;
pub(crate) mod uffd;

use notifier::Event;

use crate::address_space::AddressSpace;
use crate::sys;

/// An address-space change, described by the call that makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Munmap {
        addr: usize,
        len: usize,
    },
    Mremap {
        old: usize,
        old_len: usize,
        new_len: usize,
        flags: libc::c_int,
        new_addr: usize,
    },
    Madvise {
        addr: usize,
        len: usize,
        advice: libc::c_int,
    },
    Mprotect {
        addr: usize,
        len: usize,
    },
    /// `mmap` with `MAP_FIXED`, which replaces whatever was mapped there.
    MmapFixed {
        addr: usize,
        len: usize,
    },
    /// `shmdt`: the segment's length is looked up in the memory map.
    Shmdt {
        addr: usize,
    },
    /// `brk`/`sbrk` moving the program break down from `old_end`.
    BrkShrink {
        new_end: usize,
        old_end: usize,
    },
}

/// A range `[start, start + len)` to invalidate, and why.
type Affected = Option<(usize, usize, Event)>;

impl Change {
    /// The ranges the change tears down or replaces (at most two).
    pub(crate) fn affected(&self) -> [Affected; 2] {
        match *self {
            Change::Munmap { addr, len } | Change::MmapFixed { addr, len } => {
                [Some((addr, len, Event::Unmap)), None]
            }
            Change::Mremap {
                old,
                old_len,
                new_len,
                flags,
                new_addr,
            } => {
                // What moves (all of it, if the kernel may move it) or what
                // is cut off; and the destination of MREMAP_FIXED, whose
                // old contents are replaced.
                let moved = if flags & libc::MREMAP_MAYMOVE != 0 {
                    Some((old, old_len, Event::Remap))
                } else if new_len < old_len {
                    Some((old + new_len, old_len - new_len, Event::Remap))
                } else {
                    None
                };
                let replaced =
                    (flags & libc::MREMAP_FIXED != 0).then_some((new_addr, new_len, Event::Unmap));
                [moved, replaced]
            }
            Change::Madvise { addr, len, advice } => [
                discards_contents(advice).then_some((addr, len, Event::Clear)),
                None,
            ],
            Change::Mprotect { addr, len } => [Some((addr, len, Event::ProtectionVma)), None],
            Change::Shmdt { addr } => [
                sys::mapping_len_at(addr).map(|len| (addr, len, Event::Unmap)),
                None,
            ],
            Change::BrkShrink { new_end, old_end } => [
                (new_end < old_end).then(|| (new_end, old_end - new_end, Event::Unmap)),
                None,
            ],
        }
    }
}

/// Whether `madvise` with `advice` discards or replaces page contents
/// (other advice changes nothing a device could see).
pub(crate) fn discards_contents(advice: libc::c_int) -> bool {
    matches!(
        advice,
        libc::MADV_DONTNEED | libc::MADV_DONTNEED_LOCKED | libc::MADV_FREE | libc::MADV_REMOVE
    )
}

impl AddressSpace {
    /// Runs `call`, the system call that makes `change`, between the start
    /// and the end of invalidations of every range it affects.
    pub(crate) fn around<R>(&self, change: Change, call: impl FnOnce() -> R) -> R {
        let [first, second] = change.affected();
        let _first = first.and_then(|(addr, len, event)| self.invalidate(addr, len, event));
        let _second = second.and_then(|(addr, len, event)| self.invalidate(addr, len, event));
        call()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mremap_invalidates_what_moves_or_is_cut_off_and_what_is_replaced() {
        let grow_in_place = Change::Mremap {
            old: 0x1000,
            old_len: 0x2000,
            new_len: 0x4000,
            flags: 0,
            new_addr: 0,
        };
        assert_eq!(grow_in_place.affected(), [None, None]);
        let shrink = Change::Mremap {
            old: 0x1000,
            old_len: 0x4000,
            new_len: 0x1000,
            flags: 0,
            new_addr: 0,
        };
        assert_eq!(shrink.affected()[0], Some((0x2000, 0x3000, Event::Remap)));
        let moved = Change::Mremap {
            old: 0x1000,
            old_len: 0x2000,
            new_len: 0x2000,
            flags: libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            new_addr: 0x9000,
        };
        assert_eq!(
            moved.affected(),
            [
                Some((0x1000, 0x2000, Event::Remap)),
                Some((0x9000, 0x2000, Event::Unmap))
            ]
        );
    }

    #[test]
    fn only_discarding_advice_and_shrinking_breaks_invalidate() {
        let willneed = Change::Madvise {
            addr: 0x1000,
            len: 0x1000,
            advice: libc::MADV_WILLNEED,
        };
        assert_eq!(willneed.affected(), [None, None]);
        for advice in [libc::MADV_DONTNEED, libc::MADV_FREE, libc::MADV_REMOVE] {
            let c = Change::Madvise {
                addr: 0x1000,
                len: 0x1000,
                advice,
            };
            assert_eq!(c.affected()[0], Some((0x1000, 0x1000, Event::Clear)));
        }
        let grow = Change::BrkShrink {
            new_end: 0x5000,
            old_end: 0x4000,
        };
        assert_eq!(grow.affected(), [None, None]);
    }
}
