//! On-demand-paging (ODP) memory for the soft-RoCE device, in the manner of
//! the kernel's `ib_umem_odp` and the rxe ODP usage pattern.
//!
//! A [`Umem`] registers a range of the process's memory **without pinning
//! or faulting anything**. It keeps a device page table and subscribes to the
//! [`AddressSpace`]'s interval notifier ([`notifier`]). Device accesses
//! ([`Umem::read`], [`Umem::write`], [`Umem::with_range`]) fault missing
//! pages in on first touch with the collision-retry pattern; changes to the
//! address space invalidate the page table before they happen, so the device
//! never uses a translation the process has torn down.
//!
//! ```
//! use odp::{AddressSpace, Umem, UmemOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let aspace = AddressSpace::process();
//! let buf = aspace.map_anonymous(1 << 20, 0)?;
//! let umem = Umem::new(&aspace, buf.addr(), buf.len(), UmemOptions::default())?;
//! assert_eq!(umem.present_pages(), 0); // nothing faulted at registration
//!
//! umem.write(buf.addr() + 4093, b"crosses a page")?; // faults two pages
//! assert_eq!(umem.present_pages(), 2);
//!
//! // Discard the memory through the wrapper: the device view is dropped
//! // first, and the next device read sees the zero pages.
//! unsafe { aspace.madvise(buf.ptr().cast(), buf.len(), libc::MADV_DONTNEED)? };
//! assert_eq!(umem.present_pages(), 0);
//! let mut back = [0xffu8; 14];
//! umem.read(buf.addr() + 4093, &mut back)?;
//! assert_eq!(back, [0; 14]);
//! # Ok(()) }
//! ```

mod access;
mod address_space;
mod counters;
mod events;
mod fault;
mod implicit;
mod page_table;
mod safe_atomic;
mod safe_copy;
mod sys;
mod umem;

/// The interval notifier that umems subscribe to, for users that keep
/// translations of their own alongside umems (same types, same version).
pub use notifier;

pub use access::Access;
pub use address_space::{AddressSpace, Mapping};
pub use counters::OdpCounters;
pub use events::uffd::UserfaultfdStats;
pub use fault::Advice;
pub use implicit::{IMPLICIT_CHILD_SHIFT, ImplicitStats, ImplicitUmem};
pub use page_table::PageEntry;
pub use safe_atomic::AtomicOp;
pub use sys::{is_mapped, page_size};
pub use umem::{Umem, UmemOptions};

/// Errors of the ODP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OdpError {
    /// An empty range, or one that wraps around the address space.
    #[error("invalid range {addr:#x} + {len:#x}")]
    InvalidRange {
        /// Requested address.
        addr: usize,
        /// Requested length.
        len: usize,
    },
    /// An access outside the umem.
    #[error("access {va:#x} + {len:#x} outside the umem [{start:#x}, {end:#x})")]
    OutOfRange {
        /// Accessed address.
        va: usize,
        /// Accessed length.
        len: usize,
        /// First address of the umem.
        start: usize,
        /// End of the umem (exclusive).
        end: usize,
    },
    /// Part of the range is not mapped.
    #[error("{va:#x} + {len:#x} is not mapped")]
    Unmapped {
        /// First address of the faulting span.
        va: usize,
        /// Length of the faulting span.
        len: usize,
    },
    /// The mapping (or the umem's registration) forbids the access, or the
    /// mapping cannot be faulted in at all (`PROT_NONE`, I/O mappings).
    #[error("{} access to {va:#x} + {len:#x} denied", if *write { "write" } else { "read" })]
    AccessDenied {
        /// First address of the span.
        va: usize,
        /// Length of the span.
        len: usize,
        /// Whether the access was a write.
        write: bool,
    },
    /// Locking pages in memory failed (e.g. `RLIMIT_MEMLOCK`).
    #[error("pinning {va:#x} + {len:#x} failed with errno {errno}")]
    Pin {
        /// First address of the span.
        va: usize,
        /// Length of the span.
        len: usize,
        /// The `mlock` errno.
        errno: i32,
    },
    /// An atomic operation on an address that is not 8-byte aligned.
    #[error("atomic access to {va:#x} is not 8-byte aligned")]
    Misaligned {
        /// The address.
        va: usize,
    },
    /// The address space has been released.
    #[error("address space released")]
    Released,
    /// The notifier refused the registration.
    #[error(transparent)]
    Notifier(#[from] notifier::NotifierError),
}
