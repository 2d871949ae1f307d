//! The scenario of the issue: a local buffer is unmapped and mapped again
//! at the same address; which pages does the device use afterwards?

use provider::{AccessFlags, Context, OdpMode, SendOp, WcStatus};

use super::support::{Mapping, Pair, pattern};

const PAGE: usize = 4096;

/// Who reports the unmap to the regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `odp`'s `AddressSpace::munmap` wrapper.
    Explicit,
    /// Plain libc calls, the userfaultfd monitor watching.
    Userfaultfd,
    /// Plain libc calls, interposed by `libodp_preload.so`.
    Preload,
}

/// Unmaps `m` (through `source`) and maps fresh memory at its address.
fn replace_mapping(m: &Mapping, source: Source) {
    let addr = m.addr as *mut libc::c_void;
    if source == Source::Explicit {
        // SAFETY: the test's own mapping; nothing in Rust refers to it.
        unsafe { odp::AddressSpace::process().munmap(addr, m.len) }.expect("munmap");
    } else {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::munmap(addr, m.len) }, 0);
    }
    // SAFETY: maps over the address range just given back.
    let p = unsafe {
        libc::mmap(
            addr,
            m.len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(p, addr, "a new mapping at the same address");
}

/// What the device used after the local buffer was unmapped and mapped
/// again: (the WRITE sent the new pages' bytes, the READ landed in the
/// new pages).
pub fn after_remap(ctx: &Context, on_demand: bool, source: Source) -> (bool, bool) {
    let p = Pair::new(ctx);
    let len = 4 * PAGE;
    let (mut local, mut target) = (Mapping::new(len), Mapping::new(len));
    let access = if on_demand {
        AccessFlags::LOCAL_WRITE | AccessFlags::ON_DEMAND
    } else {
        AccessFlags::LOCAL_WRITE
    };
    let local_mr = p.reg(&local, access, None);
    if on_demand {
        assert_eq!(local_mr.odp_mode(), Some(OdpMode::PinOnDemand));
    }
    let all = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    let target_mr = p.reg(&target, all, None);
    let (off, n) = (100, len - 200);
    let write = || {
        let op = SendOp::Write {
            remote_addr: target_mr.addr() + off as u64,
            rkey: target_mr.rkey(),
        };
        assert_eq!(
            p.a_send(op, local_mr.sge(off as u64, n as u32)).status,
            WcStatus::Success
        );
    };
    let old = pattern(len, 1);
    local.bytes().copy_from_slice(&old);
    write();
    assert_eq!(&target.bytes()[off..off + n], &old[off..off + n]);

    let before = local_mr.odp_counters().invalidations;
    replace_mapping(&local, source);
    let new = pattern(len, 2);
    local.bytes().copy_from_slice(&new);
    if on_demand {
        // The monitor reports after the change: wait until it has.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while local_mr.odp_counters().invalidations == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no invalidation reached the region ({source:?})"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    write();
    let write_new = target.bytes()[off..off + n] == new[off..off + n];
    let fresh = pattern(len, 3);
    target.bytes().copy_from_slice(&fresh);
    let op = SendOp::Read {
        remote_addr: target_mr.addr() + off as u64,
        rkey: target_mr.rkey(),
    };
    assert_eq!(
        p.a_send(op, local_mr.sge(off as u64, n as u32)).status,
        WcStatus::Success
    );
    let read_new = local.bytes()[off..off + n] == fresh[off..off + n];
    drop((local_mr, target_mr));
    (write_new, read_new)
}
