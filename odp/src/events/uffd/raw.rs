//! The kernel ABI of userfaultfd, as in `include/uapi/linux/userfaultfd.h`
//! (x86_64). Names follow the C header; layouts and ioctl numbers are
//! checked at compile time and by a test against the installed header.
#![allow(non_camel_case_types, dead_code)]

use std::mem::{offset_of, size_of};

/// API version requested in `uffdio_api.api`.
pub const UFFD_API: u64 = 0xAA;
/// Flag of the `userfaultfd(2)` syscall: only handle faults taken in user mode
/// (Linux 5.11+). Lets unprivileged users create the fd.
pub const UFFD_USER_MODE_ONLY: i32 = 1;

/// Feature: `UFFD_PAGEFAULT_FLAG_WP` is reported in page-fault messages.
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// Feature: `UFFD_EVENT_FORK` (needs `CAP_SYS_PTRACE`).
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
/// Feature: `UFFD_EVENT_REMAP` on `mremap`.
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// Feature: `UFFD_EVENT_REMOVE` on `madvise(DONTNEED/FREE/REMOVE)`.
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// Feature: `MODE_MISSING` registration of hugetlbfs.
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
/// Feature: `MODE_MISSING` registration of shmem.
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// Feature: `UFFD_EVENT_UNMAP` on `munmap` (also implicit unmaps, e.g. `mremap`).
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// Feature: raise `SIGBUS` instead of delivering page faults.
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
/// Feature: report the faulting thread id.
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// Feature: `MODE_MINOR` on hugetlbfs.
pub const UFFD_FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
/// Feature: `MODE_MINOR` on shmem.
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
/// Feature: fault addresses are not masked to the page.
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
/// Feature: `MODE_WP` on shmem and hugetlbfs.
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// Feature (6.4+, newer than Debian 12's header): write-protect unpopulated ptes.
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// Feature (6.6+): `UFFDIO_POISON`.
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
/// Feature (6.7+): asynchronous write-protect faults.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// Feature (6.8+): `UFFDIO_MOVE`.
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

/// Event code: page fault.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// Event code: fork (carries a new uffd for the child).
pub const UFFD_EVENT_FORK: u8 = 0x13;
/// Event code: mremap.
pub const UFFD_EVENT_REMAP: u8 = 0x14;
/// Event code: madvise remove/dontneed/free.
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
/// Event code: munmap.
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

/// Page-fault flag: the fault was a write.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
/// Page-fault flag: the fault was caused by userfaultfd write protection.
pub const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;
/// Page-fault flag: minor fault.
pub const UFFD_PAGEFAULT_FLAG_MINOR: u64 = 1 << 2;

/// Registration mode: trap faults on missing pages.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// Registration mode: write-protect tracking.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// Registration mode: minor faults.
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;

/// `uffdio_writeprotect.mode`: set (1) or clear (0) write protection.
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `uffdio_writeprotect.mode`: do not wake waiting threads.
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

/// ioctl number index of `UFFDIO_REGISTER`.
pub const _UFFDIO_REGISTER: u32 = 0x00;
/// ioctl number index of `UFFDIO_UNREGISTER`.
pub const _UFFDIO_UNREGISTER: u32 = 0x01;
/// ioctl number index of `UFFDIO_WAKE`.
pub const _UFFDIO_WAKE: u32 = 0x02;
/// ioctl number index of `UFFDIO_WRITEPROTECT`.
pub const _UFFDIO_WRITEPROTECT: u32 = 0x06;
/// ioctl number index of `UFFDIO_API`.
pub const _UFFDIO_API: u32 = 0x3F;
/// ioctl type byte of userfaultfd (`UFFDIO`, also `USERFAULTFD_IOC`).
pub const UFFDIO: u32 = 0xAA;

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = 30;
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)` of `asm-generic/ioctl.h` (x86_64 uses the generic layout).
pub const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    assert!(size < (1 << 14), "ioctl size field is 14 bits");
    (dir << IOC_DIRSHIFT)
        | (ty << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// `_IOWR(UFFDIO, _UFFDIO_API, struct uffdio_api)` = 0xc018aa3f.
pub const UFFDIO_API: u32 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    _UFFDIO_API,
    size_of::<uffdio_api>(),
);
/// `_IOWR(UFFDIO, _UFFDIO_REGISTER, struct uffdio_register)` = 0xc020aa00.
pub const UFFDIO_REGISTER: u32 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    _UFFDIO_REGISTER,
    size_of::<uffdio_register>(),
);
/// `_IOR(UFFDIO, _UFFDIO_UNREGISTER, struct uffdio_range)` = 0x8010aa01 (`_IOR` for
/// historical reasons, see the header).
pub const UFFDIO_UNREGISTER: u32 = ioc(
    IOC_READ,
    UFFDIO,
    _UFFDIO_UNREGISTER,
    size_of::<uffdio_range>(),
);
/// `_IOR(UFFDIO, _UFFDIO_WAKE, struct uffdio_range)` = 0x8010aa02.
pub const UFFDIO_WAKE: u32 = ioc(IOC_READ, UFFDIO, _UFFDIO_WAKE, size_of::<uffdio_range>());
/// `_IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, struct uffdio_writeprotect)` = 0xc018aa06.
pub const UFFDIO_WRITEPROTECT: u32 = ioc(
    IOC_READ | IOC_WRITE,
    UFFDIO,
    _UFFDIO_WRITEPROTECT,
    size_of::<uffdio_writeprotect>(),
);
/// `_IO(USERFAULTFD_IOC, 0x00)` on `/dev/userfaultfd` = 0xaa00.
pub const USERFAULTFD_IOC_NEW: u32 = ioc(IOC_NONE, UFFDIO, 0x00, 0);

/// Page-fault payload of [`uffd_msg`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct uffd_msg_pagefault {
    /// `UFFD_PAGEFAULT_FLAG_*`.
    pub flags: u64,
    /// Faulting address (page-masked unless `EXACT_ADDRESS`).
    pub address: u64,
    /// `feat.ptid`: faulting thread id with `UFFD_FEATURE_THREAD_ID`.
    pub ptid: u32,
}

/// Fork payload of [`uffd_msg`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct uffd_msg_fork {
    /// New uffd installed in the reader's fd table for the child.
    pub ufd: u32,
}

/// Remap payload of [`uffd_msg`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct uffd_msg_remap {
    /// Old start address.
    pub from: u64,
    /// New start address.
    pub to: u64,
    /// Length of the moved range.
    pub len: u64,
}

/// Remove/unmap payload of [`uffd_msg`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct uffd_msg_remove {
    /// Start of the range.
    pub start: u64,
    /// End of the range (exclusive).
    pub end: u64,
}

/// Reserved payload of [`uffd_msg`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct uffd_msg_reserved {
    /// Reserved.
    pub reserved1: u64,
    /// Reserved.
    pub reserved2: u64,
    /// Reserved.
    pub reserved3: u64,
}

/// The `arg` union of [`uffd_msg`].
#[repr(C)]
#[derive(Clone, Copy)]
pub union uffd_msg_arg {
    /// Valid for `UFFD_EVENT_PAGEFAULT`.
    pub pagefault: uffd_msg_pagefault,
    /// Valid for `UFFD_EVENT_FORK`.
    pub fork: uffd_msg_fork,
    /// Valid for `UFFD_EVENT_REMAP`.
    pub remap: uffd_msg_remap,
    /// Valid for `UFFD_EVENT_REMOVE` and `UFFD_EVENT_UNMAP`.
    pub remove: uffd_msg_remove,
    /// Raw view.
    pub reserved: uffd_msg_reserved,
}

/// Message returned by `read(2)` on a userfaultfd (`__attribute__((packed))`, 32 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub struct uffd_msg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    /// Reserved.
    pub reserved1: u8,
    /// Reserved.
    pub reserved2: u16,
    /// Reserved.
    pub reserved3: u32,
    /// Event payload.
    pub arg: uffd_msg_arg,
}

/// Argument of `UFFDIO_API`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct uffdio_api {
    /// In: `UFFD_API`.
    pub api: u64,
    /// In: requested features. Out: all features the kernel supports.
    pub features: u64,
    /// Out: bitmask of supported ioctls (`1 << _UFFDIO_*`).
    pub ioctls: u64,
}

/// A range argument (`UFFDIO_UNREGISTER`, `UFFDIO_WAKE`, ...).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct uffdio_range {
    /// Start address (page aligned).
    pub start: u64,
    /// Length in bytes (page multiple).
    pub len: u64,
}

/// Argument of `UFFDIO_REGISTER`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct uffdio_register {
    /// Range to register.
    pub range: uffdio_range,
    /// `UFFDIO_REGISTER_MODE_*`.
    pub mode: u64,
    /// Out: ioctls available on the range.
    pub ioctls: u64,
}

/// Argument of `UFFDIO_WRITEPROTECT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct uffdio_writeprotect {
    /// Range to (un)protect.
    pub range: uffdio_range,
    /// `UFFDIO_WRITEPROTECT_MODE_*`.
    pub mode: u64,
}

const _: () = {
    assert!(size_of::<uffd_msg>() == 32);
    assert!(offset_of!(uffd_msg, arg) == 8);
    assert!(size_of::<uffd_msg_arg>() == 24);
    assert!(offset_of!(uffd_msg_pagefault, address) == 8);
    assert!(offset_of!(uffd_msg_pagefault, ptid) == 16);
    assert!(size_of::<uffdio_api>() == 24);
    assert!(size_of::<uffdio_range>() == 16);
    assert!(size_of::<uffdio_register>() == 32);
    assert!(size_of::<uffdio_writeprotect>() == 24);
    assert!(UFFDIO_API == 0xc018_aa3f);
    assert!(UFFDIO_REGISTER == 0xc020_aa00);
    assert!(UFFDIO_UNREGISTER == 0x8010_aa01);
    assert!(UFFDIO_WAKE == 0x8010_aa02);
    assert!(UFFDIO_WRITEPROTECT == 0xc018_aa06);
    assert!(USERFAULTFD_IOC_NEW == 0xaa00);
};
