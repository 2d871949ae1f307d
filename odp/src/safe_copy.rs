//! Fault-tolerant memory copy for the software RDMA device.
//!
//! [`copy_nofault`] copies bytes between two raw regions of the *current process* and never
//! crashes when either side is unmapped, protected or backed by a truncated file: instead of
//! dying with `SIGSEGV`/`SIGBUS` it reports how many bytes were copied before the fault. This is
//! the userspace analogue of the Linux kernel's `copy_from_user`: the copy is a single
//! `rep movsb` instruction with an "exception table" entry, and a process-wide `SIGSEGV`/`SIGBUS`
//! handler that, if (and only if) the fault happened *on that very instruction*, moves the
//! interrupted instruction pointer to a fixup label right after it. The copy routine then
//! returns normally (no `longjmp`, no unwinding through Rust frames) with `RCX` = bytes left.
//!
//! # How a fault is handled
//!
//! * `rep movsb` faults precisely: the CPU leaves `RIP` at the `rep movsb`, with `RSI`/`RDI`
//!   advanced and `RCX` decremented by the number of iterations that completed.
//! * The handler compares the interrupted `RIP` (`uc_mcontext.gregs[REG_RIP]`) with the address
//!   of the `rep movsb`; on a match (and a kernel-generated fault `si_code`) it sets
//!   `RIP := fixup`, returns, and the routine returns `RCX`.
//! * Any other `SIGSEGV`/`SIGBUS` is forwarded to the disposition that was installed before
//!   [`install`] ran (see [`install`] for the exact chaining rules), so crashes elsewhere in
//!   the process still crash exactly as before (including Rust's stack-overflow reporting and
//!   core dumps).
//!
//! # Precision of [`CopyFault::copied`]
//!
//! With "fast strings" (ERMSB/FSRM) the CPU may move data in larger internal chunks, so the
//! register state at the fault is only guaranteed to be *a* restartable point at or before the
//! first inaccessible byte. [`copy_nofault`] therefore re-tries the bytes following the reported
//! point one at a time (each still fault-protected, at most one page of them per fault) until a
//! byte faults again. Consequently:
//!
//! * bytes `[0, copied)` of the destination hold the source bytes;
//! * the byte at offset `copied` could not be read from `src` or written to `dst` at the time
//!   of the retry (so `copied` is exact for memory whose mappings do not change concurrently);
//! * bytes at offsets `>= copied` of the destination **may or may not** have been written.
//!
//! # Limitations
//!
//! * x86_64 Linux only (the code refuses to compile elsewhere).
//! * The handler must stay installed: a runtime or library that later replaces the
//!   `SIGSEGV`/`SIGBUS` disposition *without chaining* to ours disables the protection, and a
//!   fault in [`copy_nofault`] then behaves like any other fault (most likely a crash).
//! * Calling [`copy_nofault`] on a thread that has `SIGSEGV`/`SIGBUS` *blocked* (e.g. from inside
//!   a `SIGSEGV` handler that did not use `SA_NODEFER`) is not protected: the kernel kills the
//!   process for a synchronous fault on a blocked signal.
//! * No alternate signal stack is created: the handler runs on the thread's `sigaltstack` if it
//!   has one (`SA_ONSTACK`), otherwise on the thread's normal stack (it needs very little).
//! * Under a debugger, the debugger sees every fault first (`handle SIGSEGV nostop noprint pass`
//!   in gdb).

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
compile_error!(
    "safe_copy: copy_nofault is only implemented for x86_64 Linux (rep movsb + ucontext REG_RIP \
     fixup); other targets need their own faulting instruction/fixup pair and register layout"
);

use core::arch::global_asm;
use core::cell::UnsafeCell;
use core::fmt;
use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};
use std::io;
use std::sync::OnceLock;

use libc::{c_int, c_void, siginfo_t};

/// Where a copy stopped because an access faulted.
///
/// Bytes `[0, copied)` of the destination were copied; the byte at offset `copied` could not be
/// read from the source or written to the destination; bytes after `copied` may or may not have
/// been written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyFault {
    /// Number of leading bytes that are guaranteed to have been copied.
    pub copied: usize,
    /// What the faulting access hit, as the kernel classified it.
    pub kind: FaultKind,
}

/// The class of a fault, from the signal and its `si_code`: known exactly at the time of
/// the fault, unlike any later look at the memory map (which may have changed since).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Nothing mapped there (`SIGSEGV`/`SEGV_MAPERR`, or a non-canonical address).
    Unmapped,
    /// Mapped, but the protection forbids the access (`SIGSEGV`, any other code).
    Denied,
    /// The backing store is gone, e.g. beyond the end of a truncated file (`SIGBUS`).
    Bus,
    /// The signal handler could not be installed; nothing was touched.
    NoHandler,
}

impl FaultKind {
    /// Decodes the value the handler leaves in RDX: `sig << 8 | si_code`.
    pub(crate) fn from_code(code: usize) -> Self {
        let sig = (code >> 8) as c_int;
        let si_code = (code & 0xff) as c_int;
        match (sig, si_code) {
            (libc::SIGBUS, _) => FaultKind::Bus,
            (_, SEGV_MAPERR) | (_, SI_KERNEL_CODE) => FaultKind::Unmapped,
            _ => FaultKind::Denied,
        }
    }
}

/// `SEGV_MAPERR`: no mapping at the address (asm-generic/siginfo.h).
const SEGV_MAPERR: c_int = 1;
/// `SI_KERNEL` (0x80): a #GP on a non-canonical address arrives as SIGSEGV with this code.
const SI_KERNEL_CODE: c_int = 0x80;

impl fmt::Display for CopyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory access fault after copying {} bytes", self.copied)
    }
}

impl std::error::Error for CopyFault {}

// The faultable copy routine. SysV ABI: rdi = dst, rsi = src, rdx = len; returns (rax) the
// number of bytes NOT copied. DF is clear on entry (guaranteed by the ABI), so `rep movsb` copies
// forwards. The symbols are global (so every codegen unit of this crate can reference them) but
// `.hidden`, i.e. local to the linked object: they are never exported from a shared library.
//
// `odp_safe_copy_fault_ip` labels the only instruction that may fault; `odp_safe_copy_fixup_ip`
// is where the signal handler resumes execution after such a fault. At the fixup, RCX holds the
// number of bytes that were still to be copied when the fault was taken, and RDX (zeroed before
// the copy) the fault's class, which the handler writes there. Both are returned, as a pair in
// RAX:RDX.
global_asm!(
    ".pushsection .text.odp_safe_copy_rep_movsb,\"ax\",@progbits",
    ".p2align 4",
    ".globl odp_safe_copy_rep_movsb",
    ".hidden odp_safe_copy_rep_movsb",
    ".type odp_safe_copy_rep_movsb,@function",
    "odp_safe_copy_rep_movsb:",
    ".cfi_startproc",
    "    mov rcx, rdx",
    "    xor edx, edx",
    ".globl odp_safe_copy_fault_ip",
    ".hidden odp_safe_copy_fault_ip",
    "odp_safe_copy_fault_ip:",
    "    rep movsb",
    ".globl odp_safe_copy_fixup_ip",
    ".hidden odp_safe_copy_fixup_ip",
    "odp_safe_copy_fixup_ip:",
    "    mov rax, rcx",
    "    ret",
    ".cfi_endproc",
    ".size odp_safe_copy_rep_movsb, . - odp_safe_copy_rep_movsb",
    ".popsection",
);

/// What the copy routine returns (in RAX:RDX).
#[repr(C)]
struct Outcome {
    /// Bytes not copied (non-zero only if the handler redirected a fault to the fixup label).
    remaining: usize,
    /// 0, or `sig << 8 | si_code` of the fault.
    fault: usize,
}

unsafe extern "C" {
    /// Copies `len` bytes from `src` to `dst` with one `rep movsb`.
    fn odp_safe_copy_rep_movsb(dst: *mut u8, src: *const u8, len: usize) -> Outcome;
    /// Code label (not a function!) of the `rep movsb`; only its address is used.
    fn odp_safe_copy_fault_ip();
    /// Code label (not a function!) right after the `rep movsb`; only its address is used.
    fn odp_safe_copy_fixup_ip();
}

/// Address of the only instruction whose faults we recover from.
#[inline(always)]
fn fault_ip() -> usize {
    odp_safe_copy_fault_ip as unsafe extern "C" fn() as usize
}

/// Address the handler resumes at after a recovered fault.
#[inline(always)]
fn fixup_ip() -> usize {
    odp_safe_copy_fixup_ip as unsafe extern "C" fn() as usize
}

/// The fixup address for a fault at `rip`, if `rip` is one of the instructions whose faults
/// are recovered: the copy's `rep movsb` or one of [`crate::safe_atomic`]'s locked
/// instructions. Async-signal-safe (compares addresses only).
fn fixup_for(rip: usize) -> Option<usize> {
    if rip == fault_ip() {
        return Some(fixup_ip());
    }
    crate::safe_atomic::fixups()
        .into_iter()
        .find(|&(fault, _)| fault == rip)
        .map(|(_, fixup)| fixup)
}

/// Maximum number of bytes re-tried one at a time after a fault, to turn the (possibly
/// conservative) `rep movsb` fault point into the exact first inaccessible byte. Faults are
/// page-granular, so one page is always enough when the mappings do not change concurrently.
const REFINE_WINDOW: usize = 4096;

/// Copies `len` bytes from `src` to `dst` (regions must not overlap).
///
/// Returns `Err(CopyFault { copied })` if reading `src` or writing `dst` faults (`SIGSEGV` or
/// `SIGBUS`, including accesses to non-canonical or kernel addresses). Bytes `[0, copied)` of
/// `dst` then hold the corresponding source bytes, `copied` is the offset of the first byte that
/// could not be copied (as observed by a byte-wise retry right after the fault; see the module
/// documentation), and bytes of `dst` at or after `copied` may or may not have been written.
///
/// Installs the signal handler on first use (see [`install`]). If the handler cannot be
/// installed, no memory is touched and `Err(CopyFault { copied: 0 })` is returned; call
/// [`install`] early to observe the underlying error.
///
/// # Safety
///
/// `dst`/`src` may point at memory that is unmapped or protected (that is the point), but must
/// not alias any Rust reference that is live for the call's duration in a way that would make
/// the reads or writes UB (callers pass memory owned by the application, not Rust objects).
/// The regions must not overlap. The calling thread must not have `SIGSEGV`/`SIGBUS` blocked
/// (otherwise a fault kills the process, as it would without this module).
#[inline]
pub unsafe fn copy_nofault(dst: *mut u8, src: *const u8, len: usize) -> Result<(), CopyFault> {
    if len == 0 {
        return Ok(());
    }
    if install().is_err() {
        return Err(CopyFault {
            copied: 0,
            kind: FaultKind::NoHandler,
        });
    }
    // SAFETY: the handler is installed (checked above), so a fault on the `rep movsb` resumes at
    // the fixup label instead of killing the process; the caller guarantees that writing `dst`
    // and reading `src` does not violate Rust aliasing rules and that the regions don't overlap.
    let out = unsafe { odp_safe_copy_rep_movsb(dst, src, len) };
    if out.remaining == 0 {
        return Ok(());
    }
    // SAFETY: same contract as this function; `remaining <= len` by construction of the routine.
    unsafe { finish_after_fault(dst, src, len, len - out.remaining) }
}

/// Slow path after `rep movsb` faulted with `done` bytes reported as copied: refines the fault
/// point byte by byte and resumes bulk copying if the memory became accessible in the meantime.
///
/// # Safety
///
/// Same contract as [`copy_nofault`]; the handler must be installed and `done <= len`.
#[cold]
#[inline(never)]
unsafe fn finish_after_fault(
    dst: *mut u8,
    src: *const u8,
    len: usize,
    mut done: usize,
) -> Result<(), CopyFault> {
    loop {
        // Byte-wise retry: each single-byte `rep movsb` is still fault-protected. Pointer
        // arithmetic uses `wrapping_add` because the regions are not Rust allocations.
        let window = (len - done).min(REFINE_WINDOW);
        for _ in 0..window {
            // SAFETY: `done < len`, so this is one byte inside the caller's regions; contract as
            // in `copy_nofault` (handler installed, no aliasing with live references).
            let out = unsafe {
                odp_safe_copy_rep_movsb(dst.wrapping_add(done), src.wrapping_add(done), 1)
            };
            if out.remaining != 0 {
                return Err(CopyFault {
                    copied: done,
                    kind: FaultKind::from_code(out.fault),
                });
            }
            done += 1;
        }
        if done == len {
            return Ok(());
        }
        // The window was accessible after all (e.g. a page was mapped again concurrently, or the
        // CPU reported the fault very conservatively): continue in bulk.
        // SAFETY: `done < len`, so the range stays inside the caller's regions; same contract.
        let out = unsafe {
            odp_safe_copy_rep_movsb(dst.wrapping_add(done), src.wrapping_add(done), len - done)
        };
        if out.remaining == 0 {
            return Ok(());
        }
        // `remaining <= len - done`, so `done` never decreases and each iteration makes progress
        // of at least `window` bytes or returns.
        done = len - out.remaining;
    }
}

/// The disposition that was in place for one signal before [`install`] replaced it.
struct PrevAction {
    /// Set (Release) after `action` has been written, before our handler is installed; the
    /// handler reads `action` only after observing `true` (Acquire).
    ready: AtomicBool,
    /// Written exactly once, under the `INSTALLED` once-cell, before `ready` is set.
    action: UnsafeCell<MaybeUninit<libc::sigaction>>,
}

// SAFETY: `action` is written once (inside `OnceLock::get_or_init`, so by one thread) before
// `ready` is published with Release ordering, and only read after an Acquire load of `ready`
// returned true; it is never written again, so there are no data races.
unsafe impl Sync for PrevAction {}

impl PrevAction {
    const fn new() -> Self {
        Self {
            ready: AtomicBool::new(false),
            action: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Returns the saved previous action, if it has been published.
    fn get(&self) -> Option<&libc::sigaction> {
        if self.ready.load(Ordering::Acquire) {
            // SAFETY: `ready == true` (Acquire) means `action` was fully initialised before the
            // Release store and is never written again.
            Some(unsafe { (*self.action.get()).assume_init_ref() })
        } else {
            None
        }
    }
}

static PREV_SEGV: PrevAction = PrevAction::new();
static PREV_BUS: PrevAction = PrevAction::new();
/// Result of the one-time installation (`Err` holds an errno value).
static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();

/// Installs the `SIGSEGV`/`SIGBUS` handler (idempotent, thread-safe).
///
/// [`copy_nofault`] calls this lazily on first use, but callers may call it early (e.g. before
/// starting threads, and before/after other components install their own handlers: see below).
/// The outcome of the first call is cached, including a failure.
///
/// The handler is installed with `SA_SIGINFO | SA_ONSTACK` (plus `SA_RESTART` if the previous
/// disposition had it) and an empty `sa_mask`. Faults that did not happen on the copy
/// instruction are forwarded to the disposition found at installation time:
///
/// * `SIG_DFL` (or `SIG_IGN`, which the kernel treats as `SIG_DFL` for synchronous faults): the
///   default disposition is restored and the handler returns, so the faulting instruction is
///   re-executed and the process dies of the original signal (with the original `si_addr` and
///   a core dump if enabled). Signals sent with `kill`/`raise` (`si_code <= 0`) are re-raised
///   instead, because returning would not re-trigger them (and ignored if it was `SIG_IGN`).
/// * A handler: it is called with the original arguments (`(sig, info, ucontext)` if it was
///   registered with `SA_SIGINFO`, `(sig)` otherwise), with the signal mask it would have had if
///   the kernel had invoked it directly (its `sa_mask`, and the signal itself unless it used
///   `SA_NODEFER`); an `SA_RESETHAND` handler resets the disposition to `SIG_DFL` first.
///
/// Components that install a handler *after* this function must chain to it (most crash
/// reporters and managed runtimes do); otherwise [`copy_nofault`] loses its protection.
pub fn install() -> io::Result<()> {
    // SAFETY: `install_once` is only ever called here, i.e. at most once (OnceLock), which is
    // the requirement for writing the `PrevAction` statics.
    match INSTALLED.get_or_init(|| unsafe { install_once() }) {
        Ok(()) => Ok(()),
        Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
    }
}

/// Installs the handler for both signals.
///
/// # Safety
///
/// Must be called at most once per process (it writes the `PrevAction` statics).
unsafe fn install_once() -> Result<(), i32> {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        install_for(libc::SIGSEGV, &PREV_SEGV)?;
        install_for(libc::SIGBUS, &PREV_BUS)
    }
}

/// Saves the current disposition of `sig` in `slot`, publishes it, then installs our handler.
///
/// # Safety
///
/// Must be called at most once per `slot`.
unsafe fn install_for(sig: c_int, slot: &PrevAction) -> Result<(), i32> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: querying a disposition with a null new action and a valid out pointer.
    if unsafe { libc::sigaction(sig, ptr::null(), old.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    // SAFETY: sigaction succeeded, so it fully initialised `old`.
    let mut old = unsafe { old.assume_init() };
    if old.sa_sigaction == handler_addr() {
        // Defensive: never chain to ourselves (would recurse forever).
        old.sa_sigaction = libc::SIG_DFL;
        old.sa_flags = 0;
    }
    // SAFETY: called at most once per slot (caller contract) and before `ready` is set, so no
    // other thread (and no signal handler) reads `action` concurrently.
    unsafe { (*slot.action.get()).write(old) };
    slot.ready.store(true, Ordering::Release);

    // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags, SIG_DFL).
    let mut new: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    new.sa_sigaction = handler_addr();
    // SA_SIGINFO: we need the ucontext to read/patch RIP and siginfo to classify the signal.
    // SA_ONSTACK: run on the thread's sigaltstack if it has one, so that faults we merely
    //   forward (notably stack overflows detected by Rust's std handler) still get delivered.
    // No SA_NODEFER: the signal stays blocked while our (tiny, non-faulting) handler runs, so a
    //   bug here kills the process immediately instead of recursing; forwarded handlers get the
    //   mask they asked for anyway (see `chain`).
    // SA_RESTART is inherited so asynchronously sent signals restart syscalls as before.
    new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | (old.sa_flags & libc::SA_RESTART);
    // SAFETY: valid pointer to a sigset_t we own.
    unsafe { libc::sigemptyset(&mut new.sa_mask) };
    // SAFETY: `new` is a fully initialised action whose handler has the SA_SIGINFO signature.
    if unsafe { libc::sigaction(sig, &new, ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    Ok(())
}

/// Our handler's address in the form stored in `sigaction::sa_sigaction`.
fn handler_addr() -> libc::sighandler_t {
    handler as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as libc::sighandler_t
}

/// True if `(sig, si_code)` describes a fault raised synchronously by the kernel for the
/// instruction being executed (as opposed to `kill`/`raise`/`sigqueue`, or an asynchronous
/// "action optional" memory-error notification).
fn is_sync_fault(sig: c_int, si_code: c_int) -> bool {
    // si_code > 0: generated by the kernel (SEGV_MAPERR, SEGV_ACCERR, SEGV_PKUERR, SI_KERNEL for
    // #GP on non-canonical addresses, BUS_ADRERR, BUS_OBJERR, BUS_MCEERR_AR, ...).
    si_code > 0 && !(sig == libc::SIGBUS && si_code == libc::BUS_MCEERR_AO)
}

/// The `SIGSEGV`/`SIGBUS` handler. Async-signal-safe: no allocation, no locks, no I/O; only
/// atomics, plain memory accesses and async-signal-safe libc calls (on the chaining path).
extern "C" fn handler(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: for an SA_SIGINFO handler the kernel passes valid `siginfo_t` and `ucontext_t`
    // pointers (checked for null anyway); nothing else accesses this thread's signal frame.
    let sync = !info.is_null() && is_sync_fault(sig, unsafe { (*info).si_code });
    if sync && !uc.is_null() {
        // SAFETY: `uc` points to the kernel-provided ucontext for this signal; REG_RIP (16) is
        // in bounds of the 23-entry gregs array. Writing RIP here is how the interrupted context
        // is modified for the sigreturn.
        unsafe {
            let rip = &raw mut (*uc).uc_mcontext.gregs[libc::REG_RIP as usize];
            if let Some(fixup) = fixup_for(*rip as usize) {
                // The fault happened on one of our instructions: resume at its fixup, which
                // returns what the routine reports (bytes remaining, or the old value) and RDX,
                // where the fault's class goes. All other registers are left as the CPU
                // reported them.
                *rip = fixup as libc::greg_t;
                let code = ((sig as usize) << 8) | ((*info).si_code as usize & 0xff);
                (*uc).uc_mcontext.gregs[libc::REG_RDX as usize] = code as libc::greg_t;
                return;
            }
        }
    }
    // SAFETY: arguments are exactly those the kernel passed to us.
    unsafe { chain(sig, info, ctx, sync) }
}

/// Forwards a signal that was not ours to the previously installed disposition.
///
/// # Safety
///
/// Must only be called from `handler` with the arguments the kernel passed.
unsafe fn chain(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void, sync: bool) {
    let slot = if sig == libc::SIGBUS {
        &PREV_BUS
    } else {
        &PREV_SEGV
    };
    let prev = slot.get();
    let prev_handler = prev.map_or(libc::SIG_DFL, |p| p.sa_sigaction);

    if prev_handler == libc::SIG_DFL || prev_handler == libc::SIG_IGN {
        if prev_handler == libc::SIG_IGN && !sync {
            // The kernel would have discarded an ignored, asynchronously sent signal.
            return;
        }
        // SAFETY: sigaction/raise are async-signal-safe; `sig` is SIGSEGV or SIGBUS.
        unsafe {
            set_default(sig);
            if !sync {
                // Returning would not re-trigger a kill()-ed signal: re-raise it. It is blocked
                // while we run, so it is delivered (with SIG_DFL) when the handler returns.
                libc::raise(sig);
            }
        }
        // For a real fault: return, the instruction re-executes, faults again and the process
        // dies from the default action with the original siginfo.
        return;
    }

    // `prev` is Some here (SIG_DFL was substituted otherwise).
    let Some(prev) = prev else { return };
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: async-signal-safe libc calls on valid pointers; `uc` is the kernel's ucontext
    // (null-checked). Emulates what the kernel would have done when invoking `prev` directly.
    unsafe {
        if prev.sa_flags & libc::SA_RESETHAND != 0 {
            set_default(sig);
        }
        if !uc.is_null() {
            // Mask = mask at the time of the signal | prev.sa_mask | sig (unless SA_NODEFER).
            let mut mask = (*uc).uc_sigmask;
            for s in 1..=64 {
                if libc::sigismember(&prev.sa_mask, s) == 1 {
                    libc::sigaddset(&mut mask, s);
                }
            }
            if prev.sa_flags & libc::SA_NODEFER == 0 {
                libc::sigaddset(&mut mask, sig);
            } else {
                libc::sigdelset(&mut mask, sig);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &mask, ptr::null_mut());
        }
    }

    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous action was registered with SA_SIGINFO, so `sa_sigaction` is a
        // non-null function with the three-argument signature; we pass the kernel's arguments.
        unsafe {
            let f: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) =
                core::mem::transmute(prev_handler);
            f(sig, info, ctx);
        }
    } else {
        // SAFETY: without SA_SIGINFO, `sa_handler` (same storage) is a non-null, non-special
        // one-argument handler.
        unsafe {
            let f: extern "C" fn(c_int) = core::mem::transmute(prev_handler);
            f(sig);
        }
    }
    // The kernel restores the interrupted mask (from `uc_sigmask`) on sigreturn.
}

/// Resets `sig` to its default disposition (async-signal-safe).
///
/// # Safety
///
/// `sig` must be a valid catchable signal number.
unsafe fn set_default(sig: c_int) {
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask and no flags.
    let dfl: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: valid signal and fully initialised action; sigaction is async-signal-safe.
    unsafe { libc::sigaction(sig, &dfl, ptr::null_mut()) };
}

#[cfg(test)]
mod tests;
