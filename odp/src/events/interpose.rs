//! The attachment to the interposition library, `libodp_preload.so`
//! (the `odp-preload` crate).
//!
//! Started with `LD_PRELOAD=libodp_preload.so`, a program's calls to libc's
//! `munmap`, `mremap`, `madvise`, `mprotect`, `mmap(MAP_FIXED)`, `shmdt`,
//! `brk` and `sbrk` land in the library first. The library holds no ODP
//! state: when this crate creates the process address space it looks the
//! library up (`odp_preload_attach`) and hands it [`odp_preload_around`],
//! which the library then calls with a description of each change and the
//! real system call to make inside the invalidation. Before the attachment
//! (no umem can exist yet) the library just makes the call.
//!
//! What it cannot see: glibc's calls to its own internals (`free` of a
//! large chunk unmaps through an internal alias, `malloc` trims the heap
//! through internal `brk`), raw `syscall`s, and statically linked code.
//! The userfaultfd monitor covers those.

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

use super::Change;
use crate::address_space::AddressSpace;

/// Version of the interface below; the library refuses other versions.
pub(crate) const ABI_VERSION: u32 = 1;

/// A change as the library describes it: a kind and the call's arguments.
#[repr(C)]
pub(crate) struct RawChange {
    kind: u32,
    args: [usize; 5],
}

// Kinds of `RawChange` (the library defines the same numbers).
const MUNMAP: u32 = 1;
const MREMAP: u32 = 2;
const MADVISE: u32 = 3;
const MPROTECT: u32 = 4;
const MMAP_FIXED: u32 = 5;
const SHMDT: u32 = 6;
const BRK_SHRINK: u32 = 7;

/// The real system call, made by the library: returns its result.
type Call = unsafe extern "C" fn(*mut c_void) -> isize;
type Attach = unsafe extern "C" fn(u32, Around) -> bool;
type Around = unsafe extern "C" fn(*const RawChange, Call, *mut c_void) -> isize;

/// The process address space once attached (never freed).
static ATTACHED: AtomicPtr<AddressSpace> = AtomicPtr::new(std::ptr::null_mut());

impl RawChange {
    fn decode(&self) -> Option<Change> {
        let [a, b, c, d, e] = self.args;
        Some(match self.kind {
            MUNMAP => Change::Munmap { addr: a, len: b },
            MREMAP => Change::Mremap {
                old: a,
                old_len: b,
                new_len: c,
                flags: d as libc::c_int,
                new_addr: e,
            },
            MADVISE => Change::Madvise {
                addr: a,
                len: b,
                advice: c as libc::c_int,
            },
            MPROTECT => Change::Mprotect { addr: a, len: b },
            MMAP_FIXED => Change::MmapFixed { addr: a, len: b },
            SHMDT => Change::Shmdt { addr: a },
            BRK_SHRINK => Change::BrkShrink {
                new_end: a,
                old_end: b,
            },
            _ => return None,
        })
    }
}

/// Called by the library around each interposed call.
///
/// # Safety
/// `change` points to a valid `RawChange`; `call(ctx)` is safe to run
/// once.
unsafe extern "C" fn odp_preload_around(
    change: *const RawChange,
    call: Call,
    ctx: *mut c_void,
) -> isize {
    let aspace = ATTACHED.load(Ordering::Acquire);
    // SAFETY: `change` is valid for the call (the library's contract); a
    // non-null `aspace` is the process address space, which lives forever.
    let (aspace, change) =
        unsafe { (aspace.as_ref(), change.as_ref().and_then(RawChange::decode)) };
    match (aspace, change) {
        // SAFETY: the library's contract on `call` and `ctx`.
        (Some(aspace), Some(change)) => aspace.around(change, || unsafe { call(ctx) }),
        // SAFETY: as above.
        _ => unsafe { call(ctx) },
    }
}

/// Attaches the process address space to the interposition library, if the
/// program was started with it. `aspace` must be the process instance.
pub(crate) fn attach(aspace: &Arc<AddressSpace>) {
    ATTACHED.store(Arc::as_ptr(aspace).cast_mut(), Ordering::Release);
    // SAFETY: looking up a symbol by a NUL-terminated name.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"odp_preload_attach".as_ptr()) };
    if sym.is_null() {
        return;
    }
    // SAFETY: the library exports `odp_preload_attach` with the `Attach`
    // signature; the version argument guards against a mismatch.
    let attach: Attach = unsafe { std::mem::transmute::<*mut c_void, Attach>(sym) };
    // SAFETY: as above; `odp_preload_around` has the `Around` signature.
    let attached = unsafe { attach(ABI_VERSION, odp_preload_around) };
    INTERPOSED.store(attached, Ordering::Release);
}

static INTERPOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl AddressSpace {
    /// Whether calls into libc are interposed: the process runs with
    /// `libodp_preload.so` and this is the process address space.
    pub fn interposition_active(&self) -> bool {
        INTERPOSED.load(Ordering::Acquire) && std::ptr::eq(ATTACHED.load(Ordering::Acquire), self)
    }
}
