//! `libodp_preload.so`: symbol interposition for the `odp` crate.
//!
//! Run a program with `LD_PRELOAD=libodp_preload.so` and its calls to libc's
//! `munmap`, `mremap`, `madvise`, `mprotect`, `mmap`/`mmap64` with
//! `MAP_FIXED`, `shmdt`, `brk` and `sbrk` come here first. Each hook
//! describes the change and hands the real system call to the `odp` crate
//! linked into the program, which runs it inside an invalidation of the
//! affected ranges, so device translations are gone before the pages are.
//!
//! The library keeps no ODP state, and links no copy of the `odp` crate:
//! the program's `odp` attaches itself (`odp_preload_attach`) when it
//! creates its process address space. Until then, and in programs that do
//! not use `odp`, every hook just makes the call.
//!
//! Hooks never allocate. The system calls are made with `syscall(2)`,
//! except `brk`/`sbrk`, whose libc versions keep the break in a private
//! variable and are looked up with `dlsym(RTLD_NEXT)` at load time.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Must equal the `odp` crate's `ABI_VERSION`.
const ABI_VERSION: u32 = 1;

/// A change: a kind and the call's arguments (layout shared with `odp`).
#[repr(C)]
pub struct RawChange {
    /// One of the kinds below (`MUNMAP`, ...).
    pub kind: u32,
    /// The call's arguments, in order, as integers.
    pub args: [usize; 5],
}

const MUNMAP: u32 = 1;
const MREMAP: u32 = 2;
const MADVISE: u32 = 3;
const MPROTECT: u32 = 4;
const MMAP_FIXED: u32 = 5;
const SHMDT: u32 = 6;
const BRK_SHRINK: u32 = 7;

/// The real call, run by `odp` inside the invalidation.
pub type Call = unsafe extern "C" fn(*mut c_void) -> isize;
/// `odp`'s entry point: invalidate around `call(ctx)`.
pub type Around = unsafe extern "C" fn(*const RawChange, Call, *mut c_void) -> isize;

/// `odp`'s around function once attached (0 before).
static AROUND: AtomicUsize = AtomicUsize::new(0);
/// libc's `sbrk` and `brk`, looked up at load time.
static REAL_SBRK: AtomicUsize = AtomicUsize::new(0);
static REAL_BRK: AtomicUsize = AtomicUsize::new(0);

/// Called by the `odp` crate to receive the changes. Returns whether the
/// interface versions match.
///
/// # Safety
/// `around` must be callable as long as the process runs.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn odp_preload_attach(abi: u32, around: Around) -> bool {
    if abi != ABI_VERSION {
        return false;
    }
    AROUND.store(around as usize, Ordering::Release);
    true
}

/// The call to make, and where its outcome goes.
struct Pending<F> {
    call: Option<F>,
    errno: c_int,
}

/// Runs the pending call once and records `errno` right after it, before
/// the invalidation ends (which may make system calls of its own).
///
/// # Safety
/// `ctx` points to a live `Pending<F>`.
unsafe extern "C" fn run_pending<F: FnOnce() -> isize>(ctx: *mut c_void) -> isize {
    // SAFETY: the caller's contract.
    let pending = unsafe { &mut *ctx.cast::<Pending<F>>() };
    let Some(call) = pending.call.take() else {
        return -1;
    };
    let result = call();
    // SAFETY: errno is thread-local and always valid.
    pending.errno = unsafe { *libc::__errno_location() };
    result
}

/// Makes `call` inside `odp`'s invalidation of `change`, or directly when
/// no `odp` is attached. Preserves the call's `errno`.
fn around<F: FnOnce() -> isize>(kind: u32, args: [usize; 5], call: F) -> isize {
    let attached = AROUND.load(Ordering::Acquire);
    if attached == 0 {
        return call();
    }
    // SAFETY: only `odp_preload_attach` stores here, with an `Around`.
    let around: Around = unsafe { std::mem::transmute::<usize, Around>(attached) };
    let change = RawChange { kind, args };
    let mut pending = Pending {
        call: Some(call),
        errno: 0,
    };
    // SAFETY: `change` and `pending` outlive the call; `run_pending::<F>`
    // matches the type behind the context pointer.
    let result = unsafe {
        around(
            &change,
            run_pending::<F>,
            (&raw mut pending).cast::<c_void>(),
        )
    };
    // SAFETY: errno is thread-local and always valid.
    unsafe { *libc::__errno_location() = pending.errno };
    result
}

/// `syscall(2)` returns -1 and sets errno on failure, like the libc calls
/// it stands for.
fn sys(nr: libc::c_long, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    // SAFETY: the hooks forward their callers' arguments unchanged; the
    // kernel validates them.
    unsafe { libc::syscall(nr, a, b, c, d, e, f) as isize }
}

/// # Safety
/// As `munmap(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: usize) -> c_int {
    let a = addr as usize;
    around(MUNMAP, [a, len, 0, 0, 0], || {
        sys(libc::SYS_munmap, a, len, 0, 0, 0, 0)
    }) as c_int
}

/// `mremap` is variadic in C: `new_address` is passed only with
/// `MREMAP_FIXED`. On x86_64 a variadic integer argument travels in the same
/// register as a fifth fixed one, and it is read only when the flag says the
/// caller passed it.
///
/// # Safety
/// As `mremap(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_len: usize,
    new_len: usize,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    let new_addr = if flags & libc::MREMAP_FIXED != 0 {
        new_addr as usize
    } else {
        0
    };
    let args = [old as usize, old_len, new_len, flags as usize, new_addr];
    around(MREMAP, args, || {
        sys(
            libc::SYS_mremap,
            args[0],
            old_len,
            new_len,
            flags as usize,
            new_addr,
            0,
        )
    }) as *mut c_void
}

/// # Safety
/// As `madvise(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn madvise(addr: *mut c_void, len: usize, advice: c_int) -> c_int {
    let a = addr as usize;
    let adv = advice as usize;
    around(MADVISE, [a, len, adv, 0, 0], || {
        sys(libc::SYS_madvise, a, len, adv, 0, 0, 0)
    }) as c_int
}

/// # Safety
/// As `mprotect(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mprotect(addr: *mut c_void, len: usize, prot: c_int) -> c_int {
    let a = addr as usize;
    let p = prot as usize;
    around(MPROTECT, [a, len, 0, 0, 0], || {
        sys(libc::SYS_mprotect, a, len, p, 0, 0, 0)
    }) as c_int
}

/// # Safety
/// As `mmap(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    let (a, p, f, d, o) = (
        addr as usize,
        prot as usize,
        flags as usize,
        fd as usize,
        offset as usize,
    );
    let call = || sys(libc::SYS_mmap, a, len, p, f, d, o);
    let fixed = flags & (libc::MAP_FIXED | libc::MAP_FIXED_NOREPLACE) == libc::MAP_FIXED;
    let result = if fixed {
        around(MMAP_FIXED, [a, len, 0, 0, 0], call)
    } else {
        call()
    };
    result as *mut c_void
}

/// `mmap64` is the same call on 64-bit Linux.
///
/// # Safety
/// As `mmap(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: usize,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: libc::off_t,
) -> *mut c_void {
    // SAFETY: the caller's contract.
    unsafe { mmap(addr, len, prot, flags, fd, offset) }
}

/// # Safety
/// As `shmdt(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmdt(addr: *const c_void) -> c_int {
    let a = addr as usize;
    around(SHMDT, [a, 0, 0, 0, 0], || {
        sys(libc::SYS_shmdt, a, 0, 0, 0, 0, 0)
    }) as c_int
}

type SbrkFn = unsafe extern "C" fn(libc::intptr_t) -> *mut c_void;
type BrkFn = unsafe extern "C" fn(*mut c_void) -> c_int;

fn real_sbrk(increment: isize) -> *mut c_void {
    match REAL_SBRK.load(Ordering::Acquire) {
        0 => {
            // SAFETY: errno is thread-local and always valid.
            unsafe { *libc::__errno_location() = libc::ENOMEM };
            usize::MAX as *mut c_void
        }
        f => {
            // SAFETY: `load_real_functions` stored libc's `sbrk` here.
            let f = unsafe { std::mem::transmute::<usize, SbrkFn>(f) };
            // SAFETY: forwarding the caller's argument to libc's sbrk.
            unsafe { f(increment) }
        }
    }
}

/// # Safety
/// As `sbrk(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sbrk(increment: libc::intptr_t) -> *mut c_void {
    if increment >= 0 {
        return real_sbrk(increment);
    }
    let old_end = real_sbrk(0) as usize;
    let new_end = old_end.wrapping_add_signed(increment);
    around(BRK_SHRINK, [new_end, old_end, 0, 0, 0], || {
        real_sbrk(increment) as isize
    }) as *mut c_void
}

/// # Safety
/// As `brk(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn brk(addr: *mut c_void) -> c_int {
    let brk = REAL_BRK.load(Ordering::Acquire);
    if brk == 0 {
        // SAFETY: errno is thread-local and always valid.
        unsafe { *libc::__errno_location() = libc::ENOMEM };
        return -1;
    }
    // SAFETY: `load_real_functions` stored libc's `brk` here.
    let brk = unsafe { std::mem::transmute::<usize, BrkFn>(brk) };
    let old_end = real_sbrk(0) as usize;
    let new_end = addr as usize;
    let call = || {
        // SAFETY: forwarding the caller's argument to libc's brk.
        unsafe { brk(addr) as isize }
    };
    if new_end < old_end {
        around(BRK_SHRINK, [new_end, old_end, 0, 0, 0], call) as c_int
    } else {
        call() as c_int
    }
}

/// Looks up libc's `sbrk` and `brk` once, when the library is loaded
/// (before `main`), so that no hook calls `dlsym` (which may allocate).
extern "C" fn load_real_functions() {
    for (name, slot) in [(c"sbrk", &REAL_SBRK), (c"brk", &REAL_BRK)] {
        // SAFETY: looking up a symbol by a NUL-terminated name.
        let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
        slot.store(f as usize, Ordering::Release);
    }
}

#[used]
#[unsafe(link_section = ".init_array")]
static LOAD_REAL_FUNCTIONS: extern "C" fn() = load_real_functions;
