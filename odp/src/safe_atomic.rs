//! Fault-tolerant 64-bit atomics for the software RDMA device: a remote
//! FETCH_ADD or COMPARE_SWAP on memory that vanished without an
//! invalidation fails instead of killing the process.
//!
//! Each operation is one locked instruction with an entry in the same
//! "exception table" as [`crate::safe_copy`]'s `rep movsb`: the shared
//! `SIGSEGV`/`SIGBUS` handler recognises the faulting instruction pointer,
//! resumes at the fixup label right after it and leaves the fault's class
//! in RDX. A locked instruction faults before it changes memory, so a
//! failed atomic has no effect.

use core::arch::global_asm;

use crate::safe_copy::{FaultKind, install};

// SysV ABI. `odp_safe_fetch_add(ptr = rdi, add = rsi)` and
// `odp_safe_compare_swap(ptr = rdi, compare = rsi, swap = rdx)` return the
// old value in RAX and 0 or the fault's class in RDX (RAX is meaningless
// after a fault). `lock cmpxchg` leaves the old value in RAX whether or not
// it swapped. The symbols are `.hidden`, as the copy routine's are.
global_asm!(
    ".pushsection .text.odp_safe_atomics,\"ax\",@progbits",
    ".p2align 4",
    ".globl odp_safe_fetch_add",
    ".hidden odp_safe_fetch_add",
    ".type odp_safe_fetch_add,@function",
    "odp_safe_fetch_add:",
    ".cfi_startproc",
    "    mov rax, rsi",
    "    xor edx, edx",
    ".globl odp_safe_fetch_add_fault_ip",
    ".hidden odp_safe_fetch_add_fault_ip",
    "odp_safe_fetch_add_fault_ip:",
    "    lock xadd qword ptr [rdi], rax",
    ".globl odp_safe_fetch_add_fixup_ip",
    ".hidden odp_safe_fetch_add_fixup_ip",
    "odp_safe_fetch_add_fixup_ip:",
    "    ret",
    ".cfi_endproc",
    ".size odp_safe_fetch_add, . - odp_safe_fetch_add",
    ".p2align 4",
    ".globl odp_safe_compare_swap",
    ".hidden odp_safe_compare_swap",
    ".type odp_safe_compare_swap,@function",
    "odp_safe_compare_swap:",
    ".cfi_startproc",
    "    mov rax, rsi",
    "    mov rcx, rdx",
    "    xor edx, edx",
    ".globl odp_safe_compare_swap_fault_ip",
    ".hidden odp_safe_compare_swap_fault_ip",
    "odp_safe_compare_swap_fault_ip:",
    "    lock cmpxchg qword ptr [rdi], rcx",
    ".globl odp_safe_compare_swap_fixup_ip",
    ".hidden odp_safe_compare_swap_fixup_ip",
    "odp_safe_compare_swap_fixup_ip:",
    "    ret",
    ".cfi_endproc",
    ".size odp_safe_compare_swap, . - odp_safe_compare_swap",
    ".popsection",
);

/// What an atomic routine returns (in RAX:RDX).
#[repr(C)]
struct Outcome {
    old: u64,
    /// 0, or `sig << 8 | si_code` of the fault.
    fault: usize,
}

unsafe extern "C" {
    fn odp_safe_fetch_add(ptr: *mut u64, add: u64) -> Outcome;
    fn odp_safe_compare_swap(ptr: *mut u64, compare: u64, swap: u64) -> Outcome;
    /// Code labels (not functions): only their addresses are used.
    fn odp_safe_fetch_add_fault_ip();
    fn odp_safe_fetch_add_fixup_ip();
    fn odp_safe_compare_swap_fault_ip();
    fn odp_safe_compare_swap_fixup_ip();
}

/// The (faulting instruction, fixup) address pairs of the atomics, for
/// the signal handler.
pub(crate) fn fixups() -> [(usize, usize); 2] {
    type Label = unsafe extern "C" fn();
    [
        (
            odp_safe_fetch_add_fault_ip as Label as usize,
            odp_safe_fetch_add_fixup_ip as Label as usize,
        ),
        (
            odp_safe_compare_swap_fault_ip as Label as usize,
            odp_safe_compare_swap_fixup_ip as Label as usize,
        ),
    ]
}

/// An atomic operation on 8 bytes, as RDMA atomics define them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomicOp {
    /// Store `swap` if the value equals `compare`.
    CompareSwap {
        /// The value expected.
        compare: u64,
        /// The value stored on a match.
        swap: u64,
    },
    /// Add `add` (wrapping).
    FetchAdd {
        /// The addend.
        add: u64,
    },
}

/// Runs `op` on the 8 bytes at `ptr` with sequentially consistent
/// ordering; returns the old value, or the class of the fault if the
/// memory is unmapped, protected or gone (then nothing changed).
///
/// # Safety
/// `ptr` must be 8-byte aligned and must not be a Rust object that other
/// code reads or writes non-atomically; it may point to unmapped or
/// protected memory. The calling thread must not block `SIGSEGV`/`SIGBUS`.
pub(crate) unsafe fn atomic_nofault(ptr: *mut u64, op: AtomicOp) -> Result<u64, FaultKind> {
    if install().is_err() {
        return Err(FaultKind::NoHandler);
    }
    // SAFETY: the handler is installed, so a fault on the locked
    // instruction resumes at its fixup; the caller guarantees alignment and
    // that no Rust reference aliases the target.
    let out = unsafe {
        match op {
            AtomicOp::FetchAdd { add } => odp_safe_fetch_add(ptr, add),
            AtomicOp::CompareSwap { compare, swap } => odp_safe_compare_swap(ptr, compare, swap),
        }
    };
    match out.fault {
        0 => Ok(out.old),
        code => Err(FaultKind::from_code(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(prot: i32) -> *mut u64 {
        // SAFETY: a fresh anonymous private mapping of one page.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                4096,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }

    #[test]
    fn atomics_return_the_old_value_and_change_memory() {
        let p = map(libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: `p` is our own aligned, writable page.
        unsafe {
            assert_eq!(atomic_nofault(p, AtomicOp::FetchAdd { add: 5 }), Ok(0));
            assert_eq!(atomic_nofault(p, AtomicOp::FetchAdd { add: 2 }), Ok(5));
            let cas = |compare, swap| AtomicOp::CompareSwap { compare, swap };
            assert_eq!(atomic_nofault(p, cas(1, 9)), Ok(7));
            assert_eq!(*p, 7);
            assert_eq!(atomic_nofault(p, cas(7, 9)), Ok(7));
            assert_eq!(*p, 9);
            libc::munmap(p.cast(), 4096);
        }
    }

    #[test]
    fn atomics_on_vanished_or_protected_memory_fail_without_effect() {
        let gone = map(libc::PROT_READ | libc::PROT_WRITE);
        let read_only = map(libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: our own pages; the atomics below are expected to fault,
        // which the handler turns into errors.
        unsafe {
            libc::munmap(gone.cast(), 4096);
            *read_only = 41;
            libc::mprotect(read_only.cast(), 4096, libc::PROT_READ);
            for op in [
                AtomicOp::FetchAdd { add: 1 },
                AtomicOp::CompareSwap {
                    compare: 41,
                    swap: 0,
                },
            ] {
                assert_eq!(atomic_nofault(gone, op), Err(FaultKind::Unmapped));
                assert_eq!(atomic_nofault(read_only, op), Err(FaultKind::Denied));
                assert_eq!(*read_only, 41);
            }
            libc::munmap(read_only.cast(), 4096);
        }
    }
}
