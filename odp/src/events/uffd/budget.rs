//! How many VMAs the monitor's registrations may cost.
//!
//! Registering part of a mapping splits it: a run registered in the middle
//! of a mapping costs two more VMAs, and the process may hold at most
//! `vm.max_map_count` of them (65530 by default). Past that, every `mmap`,
//! and every `munmap` or `mprotect` that would split a mapping, fails with
//! `ENOMEM`, for the whole program. So registrations stop while the process
//! holds more than three quarters of the limit (at least 1024 VMAs are kept
//! free): the pages faulted then are not watched, and device copies fall
//! back to their copy-time checks (a copy from memory that vanished fails
//! and drops the stale entries).
//!
//! The process's VMA count is the line count of `/proc/self/maps`, which is
//! slow to read when large. It is read when an upper bound (the last count
//! plus two per registration since) reaches the limit, and, once over,
//! again only after [`REFUSALS_BEFORE_RECOUNT`] refusals.

use std::ops::ControlFlow;
use std::sync::{Mutex, PoisonError};

/// Registrations refused, once over the limit, before the VMAs are counted
/// again (counting tens of thousands of lines takes milliseconds).
pub(crate) const REFUSALS_BEFORE_RECOUNT: usize = 1024;
/// VMAs one registration can add: a run inside a mapping splits it twice.
const VMAS_PER_REGISTRATION: usize = 2;

/// The VMA budget of the monitor's registrations.
#[derive(Debug)]
pub(crate) struct VmaBudget {
    /// Registrations stop while the process holds more VMAs than this.
    limit: usize,
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    /// VMAs of the process at the last count.
    counted: usize,
    /// Registrations admitted since then.
    admitted: usize,
    /// Refusals left before the next count.
    refusals_left: usize,
}

impl VmaBudget {
    /// The budget for this process's `vm.max_map_count`.
    pub(crate) fn new() -> VmaBudget {
        let max = read_max_map_count().unwrap_or(65530);
        VmaBudget::with_max_map_count(max)
    }

    fn with_max_map_count(max: usize) -> VmaBudget {
        let reserve = (max / 4).max(1024);
        VmaBudget {
            limit: max.saturating_sub(reserve),
            state: Mutex::new(BudgetState {
                counted: count_vmas().unwrap_or(0),
                admitted: 0,
                refusals_left: 0,
            }),
        }
    }

    /// Whether one more registration fits; counts it if so.
    pub(crate) fn admit(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.refusals_left > 0 {
            s.refusals_left -= 1;
            return false;
        }
        let bound = |s: &BudgetState| {
            s.counted
                .saturating_add((s.admitted + 1).saturating_mul(VMAS_PER_REGISTRATION))
        };
        if bound(&s) > self.limit {
            // Without /proc, the bound stays and keeps refusing.
            if let Some(n) = count_vmas() {
                s.counted = n;
                s.admitted = 0;
            }
            if bound(&s) > self.limit {
                s.refusals_left = REFUSALS_BEFORE_RECOUNT;
                return false;
            }
        }
        s.admitted += 1;
        true
    }

    #[cfg(test)]
    /// The limit, in VMAs of the whole process.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

fn read_max_map_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The number of VMAs of this process: the lines of `/proc/self/maps`,
/// read through a fixed buffer.
pub(crate) fn count_vmas() -> Option<usize> {
    let mut buf = [0u8; 64 * 1024];
    let mut lines = 0;
    let scan = crate::sys::read_proc_maps(&mut buf, |chunk| {
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
        ControlFlow::<()>::Continue(())
    });
    scan.map(|_| lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_process_s_mappings() {
        let before = count_vmas().expect("/proc/self/maps");
        assert!(before > 5, "{before}");
        // Three mappings with different protections cannot merge.
        let pg = crate::page_size();
        // SAFETY: a fresh anonymous mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * pg,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the middle page of the mapping made above.
        let rc = unsafe { libc::mprotect(p.cast::<u8>().add(pg).cast(), pg, libc::PROT_READ) };
        assert_eq!(rc, 0);
        let after = count_vmas().unwrap();
        // SAFETY: unmaps the mapping made above.
        unsafe { libc::munmap(p, 3 * pg) };
        // Other test threads map and unmap too: only a lower bound holds.
        assert!(after + 16 >= before + 3, "{before} -> {after}");
    }

    #[test]
    fn refuses_past_the_limit_then_recounts() {
        let now = count_vmas().unwrap();
        // Room for exactly 10 registrations (reserve is 1024).
        let budget = VmaBudget::with_max_map_count(now + 1024 + 20);
        assert_eq!(budget.limit(), now + 20);
        let admitted = (0..100).take_while(|_| budget.admit()).count();
        // The bound recounts once it is reached: nothing was really
        // registered, so the recount frees the budget again, up to the
        // other test threads' mappings.
        assert!(admitted >= 10, "{admitted}");
        let far = VmaBudget::with_max_map_count(1000);
        assert_eq!(far.limit(), 0);
        assert!(!far.admit());
        // Refused without a recount for a while.
        assert!((0..REFUSALS_BEFORE_RECOUNT).all(|_| !far.admit()));
    }
}
