//! ODP regions follow plain libc changes by default: the first ODP
//! registration starts the process's userfaultfd monitor. A peer streams
//! WRITEs and READs into a region while the test discards, unmaps and moves
//! other parts of it with plain `madvise`, `munmap` and `mremap`.
//!
//! The monitor serves the whole process, so these tests have a test binary
//! of their own; the cases that need a process without it (opt-outs, a
//! kernel that refuses userfaultfd, the interposition library) run in
//! child processes.

mod common;
#[allow(dead_code)] // the helpers for odp's own tests too
#[path = "../../odp/tests/common/mod.rs"]
mod preload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use common::{End, LOCALHOST, any_port, pattern, send};
use odp::{AddressSpace, OdpCounters, UserfaultfdStats};
use preload::Preload;
use provider::{CompletionQueue, DeviceOptions, Mtu, OdpEvents, QueuePair, SendOp, WcStatus};

const PAGE: usize = 4096;
/// The target region: 256 pages.
const TARGET_PAGES: usize = 256;
/// Pages `[0, 64)`: streamed by the peer all along, never changed.
const STREAMED: usize = 64 * PAGE;
/// Pages `[64, 96)`: discarded with `madvise(MADV_DONTNEED)`.
const DISCARDED: (usize, usize) = (64, 32);
/// Pages `[96, 112)`: unmapped.
const UNMAPPED: (usize, usize) = (96, 16);
/// Pages `[128, 136)` move onto `[144, 152)` with `mremap`.
const MOVED_FROM: usize = 128;
const MOVED_TO: usize = 144;
const MOVED_PAGES: usize = 8;

/// A second queue pair into the target's device, for the probes, so that
/// an expected remote access error does not stop the stream.
struct Probe {
    a: End,
    /// The target's side, kept alive with its completion queue.
    _target_qp: QueuePair,
    _target_cq: CompletionQueue,
}

impl Probe {
    fn new(target: &End) -> Probe {
        let a = End::new(TARGET_PAGES * PAGE, false);
        let cq = target.ctx.create_cq(64).unwrap();
        let qp = target.pd.create_qp(&cq, &cq).build().unwrap();
        a.qp.connect(&qp.endpoint(Mtu::Mtu4096)).unwrap();
        qp.connect(&a.qp.endpoint(Mtu::Mtu4096)).unwrap();
        Probe {
            a,
            _target_qp: qp,
            _target_cq: cq,
        }
    }

    /// WRITEs `len` bytes of the probe's buffer at `page` of the target
    /// (the same offset on both sides).
    fn write(&self, target: &End, page: usize, len: usize) -> WcStatus {
        let op = SendOp::Write {
            remote_addr: target.mr.addr() + (page * PAGE) as u64,
            rkey: target.mr.rkey(),
        };
        send(
            &self.a.qp,
            1,
            op,
            self.a.mr.sge((page * PAGE) as u64, len as u32),
        );
        self.a.wait().status
    }

    /// READs `len` bytes at `page` of the target into the same offset of
    /// the probe's buffer; returns them on success.
    fn read(&self, target: &End, page: usize, len: usize) -> Result<Vec<u8>, WcStatus> {
        let op = SendOp::Read {
            remote_addr: target.mr.addr() + (page * PAGE) as u64,
            rkey: target.mr.rkey(),
        };
        self.a.put(page * PAGE, &vec![0xee; len]);
        send(
            &self.a.qp,
            2,
            op,
            self.a.mr.sge((page * PAGE) as u64, len as u32),
        );
        match self.a.wait().status {
            WcStatus::Success => Ok(self.a.get(page * PAGE, len)),
            status => Err(status),
        }
    }
}

/// The peer that WRITEs and READs back the streamed pages until told to
/// stop; returns the rounds it completed, each checked byte for byte.
fn stream(target: &End, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    let a = End::new(2 * STREAMED, false);
    common::connect(&a, target, Mtu::Mtu4096);
    let (remote_addr, rkey) = (target.mr.addr(), target.mr.rkey());
    thread::spawn(move || {
        let mut rounds = 0u64;
        while !stop.load(Ordering::Relaxed) || rounds == 0 {
            let data = pattern(STREAMED, rounds as u8);
            a.put(0, &data);
            let op = SendOp::Write { remote_addr, rkey };
            send(&a.qp, 1, op, a.mr.sge(0, STREAMED as u32));
            assert_eq!(a.wait().status, WcStatus::Success, "stream write {rounds}");
            let op = SendOp::Read { remote_addr, rkey };
            send(&a.qp, 2, op, a.mr.sge(STREAMED as u64, STREAMED as u32));
            assert_eq!(a.wait().status, WcStatus::Success, "stream read {rounds}");
            assert!(a.get(STREAMED, STREAMED) == data, "stream round {rounds}");
            rounds += 1;
        }
        rounds
    })
}

fn uffd_stats() -> UserfaultfdStats {
    AddressSpace::process()
        .userfaultfd_stats()
        .expect("the monitor runs")
}

/// What one change did to the target's counters.
struct Delta {
    invalidations: u64,
    pages_invalidated: u64,
    uffd_events: u64,
}

fn delta(before: (OdpCounters, UserfaultfdStats), target: &End) -> Delta {
    let (c, u) = (target.mr.odp_counters(), uffd_stats());
    let events = |s: &UserfaultfdStats| s.removes + s.unmaps + s.remaps;
    Delta {
        invalidations: c.invalidations - before.0.invalidations,
        pages_invalidated: c.pages_invalidated - before.0.pages_invalidated,
        uffd_events: events(&u) - events(&before.1),
    }
}

/// Runs the scenario; `preloaded`: the interposition library reports every
/// change too.
fn follow_plain_changes(preloaded: bool) {
    let target = End::new(TARGET_PAGES * PAGE, true);
    let sources = target.ctx.query_device().odp_events;
    assert!(sources.userfaultfd, "{sources:?}");
    assert_eq!(sources.interposition, preloaded, "{sources:?}");
    assert!(sources.backstop());

    let stop = Arc::new(AtomicBool::new(false));
    let streamer = stream(&target, Arc::clone(&stop));
    let probe = Probe::new(&target);
    let rest = TARGET_PAGES - STREAMED / PAGE;
    let data = pattern(rest * PAGE, 7);
    probe.a.put(STREAMED, &data);
    assert_eq!(
        probe.write(&target, STREAMED / PAGE, rest * PAGE),
        WcStatus::Success
    );
    assert!(target.get(STREAMED, rest * PAGE) == data);
    let at = |page: usize| target.buf.addr() + page * PAGE;
    let old = |page: usize, pages: usize| {
        let off = (page * PAGE) - STREAMED;
        data[off..off + pages * PAGE].to_vec()
    };
    // Each source reports each change: one invalidation per source.
    let sources_per_change = if preloaded { 2 } else { 1 };
    let snapshot = || (target.mr.odp_counters(), uffd_stats());

    // Discard: the device sees the zero pages afterwards.
    let before = snapshot();
    let (page, pages) = DISCARDED;
    // SAFETY: pages of the target's own mapping; the device's view of
    // them is what is being tested.
    let rc = unsafe {
        libc::madvise(
            at(page) as *mut libc::c_void,
            pages * PAGE,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0);
    // A device access waits for the monitor's handling of the change.
    assert_eq!(
        probe.read(&target, page, pages * PAGE),
        Ok(vec![0; pages * PAGE])
    );
    let d = delta(before, &target);
    assert!(d.uffd_events >= 1 && d.invalidations >= sources_per_change);
    assert!(d.pages_invalidated >= pages as u64);
    assert_eq!(probe.write(&target, page, pages * PAGE), WcStatus::Success);
    assert!(target.get(page * PAGE, pages * PAGE) == probe.a.get(page * PAGE, pages * PAGE));

    // Unmap: the pages around the hole keep working.
    let before = snapshot();
    let (page, pages) = UNMAPPED;
    // SAFETY: as above; the hole is never touched by the CPU again.
    let rc = unsafe { libc::munmap(at(page) as *mut libc::c_void, pages * PAGE) };
    assert_eq!(rc, 0);
    let after_hole = page + pages;
    assert_eq!(
        probe.read(&target, after_hole, 16 * PAGE),
        Ok(old(after_hole, 16))
    );
    let d = delta(before, &target);
    assert!(d.uffd_events >= 1 && d.invalidations >= sources_per_change);
    assert!(d.pages_invalidated >= pages as u64);

    // Move: the device reads the moved pages at their new address.
    let before = snapshot();
    let flags = libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED;
    // SAFETY: both ranges are the target's own pages.
    let p = unsafe {
        libc::mremap(
            at(MOVED_FROM) as *mut libc::c_void,
            MOVED_PAGES * PAGE,
            MOVED_PAGES * PAGE,
            flags,
            at(MOVED_TO) as *mut libc::c_void,
        )
    };
    assert_eq!(p as usize, at(MOVED_TO));
    let moved = probe.read(&target, MOVED_TO, MOVED_PAGES * PAGE);
    assert_eq!(moved, Ok(old(MOVED_FROM, MOVED_PAGES)));
    let d = delta(before, &target);
    assert!(d.uffd_events >= 1 && d.invalidations >= sources_per_change);
    assert!(d.pages_invalidated >= 2 * MOVED_PAGES as u64);

    // The stream never noticed; nothing was found stale by a copy.
    stop.store(true, Ordering::Relaxed);
    let rounds = streamer.join().expect("stream");
    assert!(rounds >= 1);
    assert_eq!(target.mr.odp_counters().stale_pages, 0);
    // Memory that is really gone: a remote access error.
    assert_eq!(
        probe.write(&target, UNMAPPED.0, PAGE),
        WcStatus::RemoteAccessError
    );
    drop(probe);
    release(target, &[UNMAPPED, (MOVED_FROM, MOVED_PAGES)]);
}

/// Drops a target whose mapping has `holes` (pages, counts), unmapping
/// what is left (a hole another thread's `mmap` was given stays its own).
fn release(target: End, holes: &[(usize, usize)]) {
    let End { mr, buf, .. } = target;
    drop(mr);
    let holes: Vec<(usize, usize)> = holes
        .iter()
        .map(|&(page, pages)| (buf.addr() + page * PAGE, pages * PAGE))
        .collect();
    buf.unmap_around(&holes);
}

#[test]
fn plain_libc_changes_invalidate_while_a_peer_writes_and_reads() {
    follow_plain_changes(false);
}

#[test]
fn with_the_interposition_library_too_both_sources_report() {
    let out = preload::run_child_with("child_with_preload", &[], Preload::Yes);
    preload::assert_child_passed(&out);
}

#[test]
#[ignore = "runs as a child of with_the_interposition_library_too_both_sources_report"]
fn child_with_preload() {
    follow_plain_changes(true);
}

#[test]
fn opting_out_leaves_the_monitor_off() {
    let env = [(provider::ODP_EVENTS_ENV, "none")];
    preload::assert_child_passed(&preload::run_child_with("child_opt_out", &env, Preload::No));
}

fn device_with(odp_events: OdpEvents, len: usize) -> End {
    let options = DeviceOptions {
        odp_events,
        ..any_port()
    };
    End::with_device(LOCALHOST, &options, len, true)
}

#[test]
#[ignore = "runs as a child of opting_out_leaves_the_monitor_off"]
fn child_opt_out() {
    // Opted out in the options, then through the environment.
    for choice in [OdpEvents::None, OdpEvents::Auto] {
        let end = device_with(choice, PAGE);
        let sources = end.ctx.query_device().odp_events;
        assert!(
            !sources.userfaultfd && !sources.backstop(),
            "{choice:?}: {sources:?}"
        );
        assert_eq!(sources.userfaultfd_refusals, 0);
    }
    let sources = provider::OdpEventSources::current();
    assert_eq!(sources.unwatched_registrations, 2, "{sources:?}");
    // Asked for explicitly, the environment does not matter.
    let end = device_with(OdpEvents::Userfaultfd, PAGE);
    assert!(end.ctx.query_device().odp_events.userfaultfd);
}

#[test]
fn a_refused_userfaultfd_leaves_registration_working() {
    let out = preload::run_child_with("child_refused", &[], Preload::No);
    preload::assert_child_passed(&out);
}

#[test]
#[ignore = "runs as a child of a_refused_userfaultfd_leaves_registration_working"]
fn child_refused() {
    deny_userfaultfd();
    let target = End::new(TARGET_PAGES * PAGE, true);
    let sources = target.ctx.query_device().odp_events;
    assert!(!sources.userfaultfd && !sources.backstop(), "{sources:?}");
    assert!(sources.userfaultfd_refusals >= 1, "{sources:?}");
    assert_eq!(
        sources.userfaultfd_error,
        Some(std::io::ErrorKind::PermissionDenied)
    );
    assert_eq!(sources.unwatched_registrations, 1);
    let probe = Probe::new(&target);
    probe.a.put(0, &pattern(TARGET_PAGES * PAGE, 3));
    assert_eq!(
        probe.write(&target, 0, TARGET_PAGES * PAGE),
        WcStatus::Success
    );
    // Unseen unmap: the copy-time check turns the access into an error.
    let (page, pages) = UNMAPPED;
    let at = target.buf.addr() + page * PAGE;
    // SAFETY: pages of the target's own mapping, never touched again.
    let rc = unsafe { libc::munmap(at as *mut libc::c_void, pages * PAGE) };
    assert_eq!(rc, 0);
    assert_eq!(
        probe.read(&target, 0, 16 * PAGE),
        Ok(pattern(TARGET_PAGES * PAGE, 3)[..16 * PAGE].to_vec())
    );
    assert_eq!(
        probe.write(&target, page, PAGE),
        WcStatus::RemoteAccessError
    );
    assert!(target.mr.odp_counters().stale_pages >= 1);
    drop(probe);
    release(target, &[UNMAPPED]);
}

/// Makes the kernel refuse userfaultfds to this process: a seccomp filter
/// answers `EPERM` to `userfaultfd(2)` and to `/dev/userfaultfd`'s
/// `USERFAULTFD_IOC_NEW`, for every thread.
fn deny_userfaultfd() {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    /// `_IO(0xAA, 0x00)`.
    const USERFAULTFD_IOC_NEW: u32 = 0xaa00;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = |offset: u32| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    let allow = stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW);
    let deny = stmt(
        libc::BPF_RET | libc::BPF_K,
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
    );
    // seccomp_data: nr at 0, arch at 4, args[1] (low half) at 24. Jumps
    // count the instructions skipped.
    let mut filter = [
        load(4),                                 // 0
        jeq(AUDIT_ARCH, 1, 0),                   // 1: other arch -> 2
        allow,                                   // 2
        load(0),                                 // 3
        jeq(libc::SYS_userfaultfd as u32, 4, 0), // 4: -> 9
        jeq(libc::SYS_ioctl as u32, 0, 2),       // 5: other call -> 8
        load(24),                                // 6
        jeq(USERFAULTFD_IOC_NEW, 1, 0),          // 7: -> 9, else 8
        allow,                                   // 8
        deny,                                    // 9
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    // SAFETY: `prog` points to a valid filter for the duration of the
    // call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_TSYNC,
            &prog as *const libc::sock_fprog,
        )
    };
    assert_eq!(rc, 0, "seccomp: {}", std::io::Error::last_os_error());
}
