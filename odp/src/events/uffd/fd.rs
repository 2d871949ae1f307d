//! The userfaultfd itself: opening it (unprivileged when possible), the
//! API handshake, write-protect-only registration, and reading events.

use std::ffi::{CStr, c_int, c_void};
use std::fmt;
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::raw::*;
use crate::sys::page_size;

/// Size in bytes of one [`raw::uffd_msg`].
const MSG_SIZE: usize = size_of::<uffd_msg>();

/// Maximum number of messages the monitor reads with one `read(2)`.
pub const MAX_BATCH: usize = 64;

/// Features the monitor cannot work without.
pub const REQUIRED_FEATURES: Features = Features::EVENT_UNMAP
    .union(Features::EVENT_REMOVE)
    .union(Features::EVENT_REMAP);
/// Features requested if the kernel offers them.
pub const OPTIONAL_FEATURES: Features = Features::PAGEFAULT_FLAG_WP;

/// An address-space change (or, exceptionally, a page fault) reported by the kernel.
///
/// All ranges are half-open `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `madvise(MADV_DONTNEED | MADV_FREE | MADV_REMOVE)`. Sent **before** the pages are
    /// zapped; the range stays registered.
    Remove {
        /// Start address.
        start: usize,
        /// End address (exclusive).
        end: usize,
    },
    /// `munmap`, `mmap(MAP_FIXED)` over the range, `mremap` shrink/move, `brk` shrink, ...
    /// Sent **after** the range is gone; its registration is gone with it.
    Unmap {
        /// Start address.
        start: usize,
        /// End address (exclusive).
        end: usize,
    },
    /// `mremap` moved `[from, from + len)` to `[to, to + len)`. Sent after the move; the
    /// registration moves with the mapping. A move is followed by `Unmap` of the old range.
    Remap {
        /// Old start address.
        from: usize,
        /// New start address.
        to: usize,
        /// Length of the moved range.
        len: usize,
    },
    /// A page fault. Not expected with write-protect-only registration when nothing is
    /// write-protected; the monitor resolves it so the faulting thread never stays blocked.
    Pagefault {
        /// Faulting address (page aligned unless `EXACT_ADDRESS`).
        addr: usize,
        /// The fault was a write.
        write: bool,
        /// The fault was caused by userfaultfd write protection.
        wp: bool,
    },
    /// A fork event (only with `EVENT_FORK`, which is never requested). The child's uffd
    /// that came with it has already been closed.
    Fork,
}

impl Event {
    fn decode(msg: &uffd_msg) -> Option<Event> {
        let code = msg.event;
        // The union is plain old data: every variant is made of integers, so any bit pattern
        // is a valid value of any variant. `msg` is a by-value copy of a packed struct, so
        // copying the union field out is an (unaligned) by-value read, never a reference.
        let arg = msg.arg;
        match code {
            UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP => {
                // SAFETY: see above; all variants are integer-only POD.
                let r = unsafe { arg.remove };
                let (start, end) = (r.start as usize, r.end as usize);
                Some(if code == UFFD_EVENT_REMOVE {
                    Event::Remove { start, end }
                } else {
                    Event::Unmap { start, end }
                })
            }
            UFFD_EVENT_REMAP => {
                // SAFETY: see above; all variants are integer-only POD.
                let r = unsafe { arg.remap };
                Some(Event::Remap {
                    from: r.from as usize,
                    to: r.to as usize,
                    len: r.len as usize,
                })
            }
            UFFD_EVENT_PAGEFAULT => {
                // SAFETY: see above; all variants are integer-only POD.
                let p = unsafe { arg.pagefault };
                Some(Event::Pagefault {
                    addr: p.address as usize,
                    write: p.flags & UFFD_PAGEFAULT_FLAG_WRITE != 0,
                    wp: p.flags & UFFD_PAGEFAULT_FLAG_WP != 0,
                })
            }
            UFFD_EVENT_FORK => {
                // SAFETY: see above; all variants are integer-only POD.
                let f = unsafe { arg.fork };
                let fd = f.ufd as RawFd;
                if fd >= 0 {
                    // SAFETY: the kernel installed this fd in our table for us (it is the
                    // child's uffd) and nothing else refers to it; wrapping and dropping
                    // it closes it exactly once.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
                Some(Event::Fork)
            }
            _ => None,
        }
    }
}

bitflags::bitflags! {
    /// A set of `UFFD_FEATURE_*` bits (named as in the C header, without
    /// the prefix). Bits this list does not name are kept as they are.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct Features: u64 {
        /// `UFFD_FEATURE_PAGEFAULT_FLAG_WP`.
        const PAGEFAULT_FLAG_WP = UFFD_FEATURE_PAGEFAULT_FLAG_WP;
        /// `UFFD_FEATURE_EVENT_FORK`.
        const EVENT_FORK = UFFD_FEATURE_EVENT_FORK;
        /// `UFFD_FEATURE_EVENT_REMAP`.
        const EVENT_REMAP = UFFD_FEATURE_EVENT_REMAP;
        /// `UFFD_FEATURE_EVENT_REMOVE`.
        const EVENT_REMOVE = UFFD_FEATURE_EVENT_REMOVE;
        /// `UFFD_FEATURE_MISSING_HUGETLBFS`.
        const MISSING_HUGETLBFS = UFFD_FEATURE_MISSING_HUGETLBFS;
        /// `UFFD_FEATURE_MISSING_SHMEM`.
        const MISSING_SHMEM = UFFD_FEATURE_MISSING_SHMEM;
        /// `UFFD_FEATURE_EVENT_UNMAP`.
        const EVENT_UNMAP = UFFD_FEATURE_EVENT_UNMAP;
        /// `UFFD_FEATURE_SIGBUS`.
        const SIGBUS = UFFD_FEATURE_SIGBUS;
        /// `UFFD_FEATURE_THREAD_ID`.
        const THREAD_ID = UFFD_FEATURE_THREAD_ID;
        /// `UFFD_FEATURE_MINOR_HUGETLBFS`.
        const MINOR_HUGETLBFS = UFFD_FEATURE_MINOR_HUGETLBFS;
        /// `UFFD_FEATURE_MINOR_SHMEM`.
        const MINOR_SHMEM = UFFD_FEATURE_MINOR_SHMEM;
        /// `UFFD_FEATURE_EXACT_ADDRESS`.
        const EXACT_ADDRESS = UFFD_FEATURE_EXACT_ADDRESS;
        /// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`.
        const WP_HUGETLBFS_SHMEM = UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        /// `UFFD_FEATURE_WP_UNPOPULATED`.
        const WP_UNPOPULATED = UFFD_FEATURE_WP_UNPOPULATED;
        /// `UFFD_FEATURE_POISON`.
        const POISON = UFFD_FEATURE_POISON;
        /// `UFFD_FEATURE_WP_ASYNC`.
        const WP_ASYNC = UFFD_FEATURE_WP_ASYNC;
        /// `UFFD_FEATURE_MOVE`.
        const MOVE = UFFD_FEATURE_MOVE;
        // Features of newer kernels, kept when reported.
        const _ = !0;
    }
}

/// How the userfaultfd was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMethod {
    /// `userfaultfd(2)` with `UFFD_USER_MODE_ONLY`.
    SyscallUserModeOnly,
    /// `userfaultfd(2)` without `UFFD_USER_MODE_ONLY` (kernel < 5.11 or flag rejected).
    Syscall,
    /// `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW` (with `UFFD_USER_MODE_ONLY`).
    DevUserfaultfd,
}

/// Why a range could not be (un)registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// `addr` or `len` is not page aligned, `len` is 0, or the range overflows.
    #[error("range {addr:#x}+{len:#x} is empty, overflows, or is not page aligned")]
    Misaligned {
        /// Requested start.
        addr: usize,
        /// Requested length.
        len: usize,
    },
    /// EINVAL on a mapped range: the mapping type cannot be registered in WP mode (private
    /// file mapping, SysV shm, VM_PFNMAP/VM_IO, misaligned hugetlb, ...).
    #[error("mapping type in {addr:#x}+{len:#x} does not support userfaultfd WP registration")]
    Unsupported {
        /// Requested start.
        addr: usize,
        /// Requested length.
        len: usize,
    },
    /// EBUSY: (part of) the range is already registered with another userfaultfd.
    #[error("range {addr:#x}+{len:#x} is already registered with another userfaultfd")]
    Busy {
        /// Requested start.
        addr: usize,
        /// Requested length.
        len: usize,
    },
    /// (Part of) the range is not mapped (detected with `msync(MS_ASYNC)`, which fails with
    /// ENOMEM on holes; the kernel itself answers EINVAL for a fully unmapped range).
    #[error("range {addr:#x}+{len:#x} is not (fully) mapped")]
    Unmapped {
        /// Requested start.
        addr: usize,
        /// Requested length.
        len: usize,
    },
    /// ENOMEM although the range is mapped: splitting VMAs failed, most likely because
    /// `vm.max_map_count` is exhausted.
    #[error("registration needed to split VMAs and failed (vm.max_map_count exhausted?)")]
    VmaLimit,
    /// EPERM: e.g. a shared mapping without `VM_MAYWRITE`, or the call was made from a
    /// process other than the one that opened the userfaultfd (e.g. a forked child).
    #[error("registration of {addr:#x}+{len:#x} not permitted")]
    PermissionDenied {
        /// Requested start.
        addr: usize,
        /// Requested length.
        len: usize,
    },
    /// Any other error.
    #[error("userfaultfd ioctl failed: {0}")]
    Os(#[from] io::Error),
}

/// An initialised userfaultfd (API handshake done), owning its fd.
///
/// `Send + Sync`: all operations are ioctls/reads on the fd and may be issued from any
/// thread. The fd is non-blocking and close-on-exec.
pub struct Userfaultfd {
    fd: OwnedFd,
    granted: Features,
    available: Features,
    ioctls: u64,
    method: OpenMethod,
    owner_pid: libc::pid_t,
    fork_slot: Option<usize>,
}

impl fmt::Debug for Userfaultfd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Userfaultfd")
            .field("fd", &self.fd.as_raw_fd())
            .field("method", &self.method)
            .field("granted", &self.granted)
            .field("available", &self.available)
            .field("ioctls", &format_args!("{:#x}", self.ioctls))
            .finish()
    }
}

pub(crate) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub(crate) fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

fn uffd_syscall(flags: c_int) -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd(2) takes an integer flag argument and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags as libc::c_long) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a freshly created fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

pub(crate) fn uffd_dev(flags: c_int) -> io::Result<OwnedFd> {
    const DEV: &CStr = c"/dev/userfaultfd";
    // SAFETY: DEV is a valid NUL-terminated path; open returns a new fd or -1.
    let dev = unsafe { libc::open(DEV.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if dev < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dev is a freshly opened fd that nothing else owns.
    let dev = unsafe { OwnedFd::from_raw_fd(dev) };
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags as an integer argument, not a pointer.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            USERFAULTFD_IOC_NEW as libc::Ioctl,
            flags as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Creates a raw (not yet handshaken) userfaultfd, trying the unprivileged variants first.
pub(crate) fn create_fd() -> io::Result<(OwnedFd, OpenMethod)> {
    let base = libc::O_CLOEXEC | libc::O_NONBLOCK;
    let first = match uffd_syscall(base | UFFD_USER_MODE_ONLY) {
        Ok(fd) => return Ok((fd, OpenMethod::SyscallUserModeOnly)),
        Err(e) => e,
    };
    // EINVAL: kernel < 5.11 does not know UFFD_USER_MODE_ONLY.
    if first.raw_os_error() == Some(libc::EINVAL) {
        match uffd_syscall(base) {
            Ok(fd) => return Ok((fd, OpenMethod::Syscall)),
            Err(e) if e.raw_os_error() != Some(libc::EPERM) => return Err(e),
            Err(_) => {}
        }
    }
    // EPERM/ENOSYS (seccomp, LSM, ...): /dev/userfaultfd is gated only by file permissions.
    match uffd_dev(base | UFFD_USER_MODE_ONLY) {
        Ok(fd) => Ok((fd, OpenMethod::DevUserfaultfd)),
        Err(_) => Err(first),
    }
}

pub(crate) fn api_handshake(fd: &OwnedFd, features: Features) -> io::Result<uffdio_api> {
    let mut api = uffdio_api {
        api: UFFD_API,
        features: features.bits(),
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes exactly one `uffdio_api`, which `api` is, and the
    // pointer is valid for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as libc::Ioctl, &mut api) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(api)
}

/// Slots holding the fd numbers of live [`Userfaultfd`]s, for the fork child handler.
const FORK_SLOTS: usize = 64;
static LIVE_UFFDS: [AtomicI32; FORK_SLOTS] = [const { AtomicI32::new(-1) }; FORK_SLOTS];

/// `pthread_atfork` child handler: in a forked child, replace every live uffd fd number by
/// an inert eventfd. Without `EVENT_FORK` the child's VMAs are not registered anyway, but
/// its copy of the fd would keep the parent's uffd context (and registrations) alive after
/// the parent closed its own fd, so a later change in the parent would block with nobody
/// reading. The number stays occupied, so a `Userfaultfd` dropped in the child closes the
/// placeholder, never an unrelated fd. Only async-signal-safe operations (atomics, raw
/// syscalls).
extern "C" fn fork_child_handler() {
    for slot in &LIVE_UFFDS {
        let fd = slot.swap(-1, Ordering::Relaxed);
        if fd < 0 {
            continue;
        }
        // SAFETY: raw syscalls on integers; in the child `fd` is our copy of the uffd, and
        // dup3 atomically replaces it by the placeholder.
        unsafe {
            let ph = libc::syscall(libc::SYS_eventfd2, 0, libc::EFD_CLOEXEC) as c_int;
            if ph >= 0 {
                libc::dup3(ph, fd, libc::O_CLOEXEC);
                libc::close(ph);
            }
        }
    }
}

/// Registers `fd` for replacement in forked children; returns its slot.
fn fork_guard_add(fd: RawFd) -> Option<usize> {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only performs async-signal-safe operations.
        unsafe { libc::pthread_atfork(None, None, Some(fork_child_handler)) };
    });
    LIVE_UFFDS.iter().position(|slot| {
        slot.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })
}

impl Drop for Userfaultfd {
    fn drop(&mut self) {
        if let Some(i) = self.fork_slot {
            // Before the fd is closed (fields drop after this), so the child handler never
            // touches a reused fd number.
            let _ = LIVE_UFFDS[i].compare_exchange(
                self.fd.as_raw_fd(),
                -1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
    }
}

impl Userfaultfd {
    /// Creates a non-blocking, close-on-exec userfaultfd and performs the API handshake.
    ///
    /// Requests [`REQUIRED_FEATURES`] (fails with `ErrorKind::Unsupported` if the kernel
    /// lacks one of them) plus [`OPTIONAL_FEATURES`] when available. Use
    /// [`granted_features`](Self::granted_features) and
    /// [`available_features`](Self::available_features) to see the outcome.
    ///
    /// The first call installs a `pthread_atfork` child handler: in a child created by
    /// `fork()`, the fd numbers of the up to 64 live userfaultfds are replaced by inert
    /// eventfds (see [`Monitor`] on fork). Raw `clone()`/`vfork()` bypass it.
    pub fn open() -> io::Result<Self> {
        let wanted = REQUIRED_FEATURES | OPTIONAL_FEATURES;
        let (fd, method) = create_fd()?;
        let (fd, method, api, requested) = match api_handshake(&fd, wanted) {
            Ok(api) => (fd, method, api, wanted),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // Some requested feature is unknown. Probe the supported set on a fresh fd
                // (UFFDIO_API succeeds only once per fd), then ask for what is possible.
                drop(fd);
                let (probe, _) = create_fd()?;
                let available =
                    Features::from_bits_retain(api_handshake(&probe, Features::empty())?.features);
                drop(probe);
                if !available.contains(REQUIRED_FEATURES) {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!(
                            "userfaultfd lacks required features {:?}",
                            REQUIRED_FEATURES.difference(available)
                        ),
                    ));
                }
                let requested = REQUIRED_FEATURES | (OPTIONAL_FEATURES & available);
                let (fd, method) = create_fd()?;
                let api = api_handshake(&fd, requested)?;
                (fd, method, api, requested)
            }
            Err(e) => return Err(e),
        };
        // Kernels 6.0/6.1 briefly ignored unknown features instead of failing: check.
        let available = Features::from_bits_retain(api.features);
        if !available.contains(REQUIRED_FEATURES) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "userfaultfd lacks required features {:?}",
                    REQUIRED_FEATURES.difference(available)
                ),
            ));
        }
        let fork_slot = fork_guard_add(fd.as_raw_fd());
        Ok(Userfaultfd {
            fd,
            fork_slot,
            granted: requested & available,
            available,
            ioctls: api.ioctls,
            method,
            owner_pid: getpid(),
        })
    }

    #[cfg(test)]
    /// Features enabled on this fd (requested and supported).
    pub fn granted_features(&self) -> Features {
        self.granted
    }

    #[cfg(test)]
    /// All features the kernel reported as available during the handshake.
    pub fn available_features(&self) -> Features {
        self.available
    }

    #[cfg(test)]
    /// The `ioctls` bitmask returned by the handshake (`1 << _UFFDIO_*`).
    pub fn api_ioctls(&self) -> u64 {
        self.ioctls
    }

    #[cfg(test)]
    /// How the fd was created.
    pub fn open_method(&self) -> OpenMethod {
        self.method
    }

    #[cfg(test)]
    /// True if the fd only handles user-mode faults (`UFFD_USER_MODE_ONLY`).
    pub fn user_mode_only(&self) -> bool {
        self.method != OpenMethod::Syscall
    }

    fn check_range(addr: usize, len: usize) -> Result<(), RegisterError> {
        let mask = page_size() - 1;
        if len == 0 || addr & mask != 0 || len & mask != 0 || addr.checked_add(len).is_none() {
            return Err(RegisterError::Misaligned { addr, len });
        }
        Ok(())
    }

    fn check_owner(&self, addr: usize, len: usize) -> Result<(), RegisterError> {
        // A forked child sharing this fd would operate on the *parent's* address space.
        if getpid() != self.owner_pid {
            return Err(RegisterError::PermissionDenied { addr, len });
        }
        Ok(())
    }

    fn classify(addr: usize, len: usize, err: io::Error) -> RegisterError {
        match err.raw_os_error() {
            Some(libc::EINVAL) if !crate::sys::is_mapped(addr, len) => {
                RegisterError::Unmapped { addr, len }
            }
            Some(libc::EINVAL) => RegisterError::Unsupported { addr, len },
            Some(libc::EBUSY) => RegisterError::Busy { addr, len },
            Some(libc::ENOMEM) if !crate::sys::is_mapped(addr, len) => {
                RegisterError::Unmapped { addr, len }
            }
            Some(libc::ENOMEM) => RegisterError::VmaLimit,
            Some(libc::EPERM) => RegisterError::PermissionDenied { addr, len },
            _ => RegisterError::Os(err),
        }
    }

    /// Registers `[addr, addr + len)` in write-protect-only mode (`UFFDIO_REGISTER_MODE_WP`).
    ///
    /// Nothing is ever write-protected, so page faults are not trapped; UNMAP, REMOVE and
    /// REMAP events are delivered for the range. Registration is per VMA: it splits VMAs at
    /// the range boundaries (counts against `vm.max_map_count`) and a mapping created later
    /// at the same address is not registered.
    pub fn register_wp(&self, addr: usize, len: usize) -> Result<(), RegisterError> {
        Self::check_range(addr, len)?;
        self.check_owner(addr, len)?;
        // The kernel registers the VMAs it finds and does not reject holes, and it answers
        // EINVAL (like "unsupported") for a fully unmapped range: check first.
        if !crate::sys::is_mapped(addr, len) {
            return Err(RegisterError::Unmapped { addr, len });
        }
        self.register_wp_span(addr, len)
    }

    /// [`register_wp`](Self::register_wp) of a span that may contain holes:
    /// the kernel registers every mapping in it and fails (`Unsupported`)
    /// if one cannot be registered, or if there is none.
    pub fn register_wp_span(&self, addr: usize, len: usize) -> Result<(), RegisterError> {
        Self::check_range(addr, len)?;
        self.check_owner(addr, len)?;
        let mut reg = uffdio_register {
            range: uffdio_range {
                start: addr as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads/writes exactly one `uffdio_register`; `reg` is valid
        // for the call. Registering does not touch the memory of the range.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                UFFDIO_REGISTER as libc::Ioctl,
                &mut reg,
            )
        };
        if r < 0 {
            return Err(Self::classify(addr, len, io::Error::last_os_error()));
        }
        Ok(())
    }

    #[cfg(test)]
    /// Unregisters `[addr, addr + len)`. Unregistered VMAs inside the range are skipped;
    /// errors as for [`register_wp`](Self::register_wp).
    pub fn unregister(&self, addr: usize, len: usize) -> Result<(), RegisterError> {
        Self::check_range(addr, len)?;
        self.check_owner(addr, len)?;
        let mut range = uffdio_range {
            start: addr as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_UNREGISTER reads exactly one `uffdio_range`; `range` is valid.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                UFFDIO_UNREGISTER as libc::Ioctl,
                &mut range,
            )
        };
        if r < 0 {
            return Err(Self::classify(addr, len, io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Wakes threads waiting on a page fault in `[addr, addr + len)` (`UFFDIO_WAKE`).
    pub fn wake(&self, addr: usize, len: usize) -> io::Result<()> {
        let mut range = uffdio_range {
            start: addr as u64,
            len: len as u64,
        };
        // SAFETY: UFFDIO_WAKE reads exactly one `uffdio_range`; `range` is valid.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE as libc::Ioctl, &mut range) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets (`protect = true`) or clears write protection on `[addr, addr + len)`
    /// (`UFFDIO_WRITEPROTECT`); clearing wakes threads waiting on WP faults there.
    ///
    /// The monitor only ever clears. Setting protection makes writers block until the
    /// monitor clears it again (it does so for any WP fault it sees), so it is useful for
    /// tests only.
    pub fn write_protect(&self, addr: usize, len: usize, protect: bool) -> io::Result<()> {
        let mut wp = uffdio_writeprotect {
            range: uffdio_range {
                start: addr as u64,
                len: len as u64,
            },
            mode: if protect {
                UFFDIO_WRITEPROTECT_MODE_WP
            } else {
                0
            },
        };
        // SAFETY: UFFDIO_WRITEPROTECT reads/writes one `uffdio_writeprotect`; `wp` is valid.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                UFFDIO_WRITEPROTECT as libc::Ioctl,
                &mut wp,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads pending events into `buf` without blocking; returns how many were stored.
    ///
    /// Returns `Ok(0)` when nothing is pending (EAGAIN). Retries on EINTR. Reads at most
    /// [`MAX_BATCH`] messages per `read(2)` (into a stack buffer, no allocation) and keeps
    /// reading while `buf` has room and the previous read was full. Reading an event is what
    /// releases the thread that caused it. Messages with an unknown code are skipped; a
    /// `Fork` message's child uffd is closed. If a later read fails after events were
    /// stored, those events are returned and the error is dropped.
    pub fn read_events(&self, buf: &mut [Event]) -> io::Result<usize> {
        let mut raw = [MaybeUninit::<uffd_msg>::uninit(); MAX_BATCH];
        let mut filled = 0;
        while filled < buf.len() {
            let want = (buf.len() - filled).min(MAX_BATCH);
            let n = loop {
                // SAFETY: `raw` is writable for MAX_BATCH * MSG_SIZE >= want * MSG_SIZE
                // bytes; uffd_msg has alignment 1 and no invalid bit patterns.
                let r = unsafe {
                    libc::read(
                        self.fd.as_raw_fd(),
                        raw.as_mut_ptr().cast::<c_void>(),
                        want * MSG_SIZE,
                    )
                };
                if r >= 0 {
                    break r as usize;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => break 0,
                    _ if filled > 0 => return Ok(filled),
                    _ => return Err(e),
                }
            };
            let msgs = n / MSG_SIZE;
            for slot in &raw[..msgs] {
                // SAFETY: the kernel wrote `msgs` complete messages to the front of `raw`.
                let msg = unsafe { slot.assume_init() };
                if let Some(ev) = Event::decode(&msg) {
                    buf[filled] = ev;
                    filled += 1;
                }
            }
            if msgs < want {
                break;
            }
        }
        Ok(filled)
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Userfaultfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
