//! Fault recovery, chaining to earlier handlers, concurrency.
use super::*;
use std::hint::black_box;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::sync::atomic::AtomicUsize;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

/// Tests that create mappings hold this shared; the remapping test holds it exclusively, so
/// no other test's small `mmap` can land in the page-sized hole it punches with `munmap`.
static MAP_LOCK: RwLock<()> = RwLock::new(());

fn map_guard() -> RwLockReadGuard<'static, ()> {
    MAP_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

fn map_guard_exclusive() -> RwLockWriteGuard<'static, ()> {
    MAP_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

fn page() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).expect("page size")
}

/// Deterministic, non page-periodic byte pattern.
fn pat(i: usize, seed: u8) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 9) ^ usize::from(seed)) as u8
}

/// An mmap'd region, unmapped on drop (munmap tolerates holes punched into it).
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn anon(len: usize) -> Self {
        // SAFETY: fresh anonymous mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
        Self { ptr: p.cast(), len }
    }

    fn shared_fd(fd: c_int, len: usize) -> Self {
        // SAFETY: fresh shared file mapping at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
        Self { ptr: p.cast(), len }
    }

    fn at(&self, off: usize) -> *mut u8 {
        self.ptr.wrapping_add(off)
    }

    fn fill(&self, f: impl Fn(usize) -> u8) {
        for i in 0..self.len {
            // SAFETY: in bounds of a readable+writable mapping (called before protecting).
            unsafe { self.ptr.add(i).write(f(i)) };
        }
    }

    fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        // SAFETY: caller reads only accessible parts of the mapping.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len).to_vec() }
    }

    fn protect(&self, off: usize, len: usize, prot: c_int) {
        // SAFETY: page-aligned sub-range of our own mapping.
        let r = unsafe { libc::mprotect(self.ptr.add(off).cast(), len, prot) };
        assert_eq!(r, 0, "mprotect: {}", io::Error::last_os_error());
    }

    fn unmap(&self, off: usize, len: usize) {
        // SAFETY: page-aligned sub-range of our own mapping, not referenced by Rust objects.
        let r = unsafe { libc::munmap(self.ptr.add(off).cast(), len) };
        assert_eq!(r, 0, "munmap: {}", io::Error::last_os_error());
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping our own region; nothing references it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// memfd of `len` bytes filled with `pat(_, seed)`.
fn memfd(len: usize, seed: u8) -> c_int {
    // SAFETY: valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"safe_copy_test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    let data: Vec<u8> = (0..len).map(|i| pat(i, seed)).collect();
    // SAFETY: writing from a valid buffer to our fd.
    let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), len, 0) };
    assert_eq!(n, len as isize);
    fd
}

fn truncate(fd: c_int, len: usize) {
    // SAFETY: plain syscall on our fd.
    let r = unsafe { libc::ftruncate(fd, len as libc::off_t) };
    assert_eq!(r, 0);
}

fn close(fd: c_int) {
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
}

/// Bytes copied before the fault, if any (see `copy_kind` for the fault class).
fn copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), usize> {
    copy_kind(dst, src, len).map_err(|f| f.copied)
}

fn copy_kind(dst: *mut u8, src: *const u8, len: usize) -> Result<(), CopyFault> {
    // SAFETY: tests only pass pointers into mmap'd test regions or wild addresses; no Rust
    // references alias them during the call.
    unsafe { copy_nofault(dst, src, len) }
}

#[test]
fn copy_between_mapped_buffers_is_exact() {
    let _g = map_guard();
    let p = page();
    let lens = [0usize, 1, 7, 4095, 4096, 4097, 1 << 20];
    let offsets = [
        (0usize, 0usize),
        (1, 3),
        (7, 0),
        (0, 5),
        (13, 61),
        (4095, 1),
    ];
    let cap = (1 << 20) + 2 * p;
    let src = Mapping::anon(cap);
    src.fill(|i| pat(i, 0x5a));
    let dst = Mapping::anon(cap);
    for &len in &lens {
        for &(so, d_o) in &offsets {
            dst.fill(|_| 0xAA);
            assert_eq!(
                copy(dst.at(d_o), src.at(so), len),
                Ok(()),
                "len {len} off {so}/{d_o}"
            );
            assert_eq!(
                dst.read(d_o, len),
                src.read(so, len),
                "len {len} off {so}/{d_o}"
            );
            // Nothing outside [d_o, d_o + len) was touched.
            assert!(dst.read(0, d_o).iter().all(|&b| b == 0xAA));
            let tail = d_o + len;
            assert!(
                dst.read(tail, (cap - tail).min(256))
                    .iter()
                    .all(|&b| b == 0xAA)
            );
        }
    }
}

/// Source = 2 pages whose second page is made inaccessible by `poison`; copies from
/// `off` through the end of page 2 must stop exactly at the page boundary.
fn check_src_fault(poison: impl Fn(&Mapping)) {
    let p = page();
    for off in [0usize, 1, 100, p - 1] {
        let src = Mapping::anon(2 * p);
        src.fill(|i| pat(i, 0x11));
        poison(&src);
        let dst = Mapping::anon(2 * p);
        dst.fill(|_| 0xAA);
        for len in [2 * p - off, p - off + 1, p - off + 64] {
            let r = copy(dst.ptr, src.at(off), len);
            let Err(copied) = r else {
                panic!("expected fault, got {r:?}")
            };
            // Required bound, and (thanks to the byte-wise refinement) exact.
            assert!(copied <= p - off);
            assert_eq!(copied, p - off, "off {off} len {len}");
            assert_eq!(dst.read(0, copied), src.read(off, copied));
        }
    }
}

/// Destination = 2 pages whose second page is made non-writable by `poison`.
fn check_dst_fault(poison: impl Fn(&Mapping)) {
    let p = page();
    for off in [0usize, 3, 2048, p - 1] {
        let src = Mapping::anon(2 * p);
        src.fill(|i| pat(i, 0x22));
        let dst = Mapping::anon(2 * p);
        dst.fill(|_| 0xAA);
        poison(&dst);
        for len in [2 * p - off, p - off + 1] {
            let r = copy(dst.at(off), src.ptr, len);
            let Err(copied) = r else {
                panic!("expected fault, got {r:?}")
            };
            assert!(copied <= p - off);
            assert_eq!(copied, p - off, "off {off} len {len}");
            assert_eq!(dst.read(off, copied), src.read(0, copied));
        }
    }
}

#[test]
fn src_second_page_unmapped() {
    let _g = map_guard();
    check_src_fault(|m| m.unmap(page(), page()));
}

#[test]
fn src_second_page_prot_none() {
    let _g = map_guard();
    check_src_fault(|m| m.protect(page(), page(), libc::PROT_NONE));
}

#[test]
fn dst_second_page_read_only() {
    let _g = map_guard();
    check_dst_fault(|m| m.protect(page(), page(), libc::PROT_READ));
}

#[test]
fn dst_second_page_unmapped() {
    let _g = map_guard();
    check_dst_fault(|m| m.unmap(page(), page()));
}

#[test]
fn sigbus_reading_past_end_of_truncated_memfd() {
    let _g = map_guard();
    let p = page();
    for off in [0usize, 1, 777, p - 1] {
        let fd = memfd(2 * p, 0x33);
        let src = Mapping::shared_fd(fd, 2 * p);
        truncate(fd, p); // second page now lies beyond EOF -> SIGBUS on access
        let dst = Mapping::anon(2 * p);
        dst.fill(|_| 0xAA);
        let r = copy(dst.ptr, src.at(off), 2 * p - off);
        assert_eq!(r, Err(p - off), "off {off}");
        let expected: Vec<u8> = (off..p).map(|i| pat(i, 0x33)).collect();
        assert_eq!(dst.read(0, p - off), expected);
        drop(src);
        close(fd);
    }
}

#[test]
fn sigbus_writing_past_end_of_truncated_memfd() {
    let _g = map_guard();
    let p = page();
    let fd = memfd(2 * p, 0);
    let dst = Mapping::shared_fd(fd, 2 * p);
    truncate(fd, p);
    let src = Mapping::anon(2 * p);
    src.fill(|i| pat(i, 0x44));
    for off in [0usize, 5, p - 1] {
        let r = copy(dst.at(off), src.ptr, 2 * p - off);
        assert_eq!(r, Err(p - off), "off {off}");
        assert_eq!(dst.read(off, p - off), src.read(0, p - off));
    }
    drop(dst);
    close(fd);
}

#[test]
fn wild_addresses_fault_without_copying() {
    let _g = map_guard();
    let buf = Mapping::anon(page());
    buf.fill(|i| pat(i, 1));
    let wild: [usize; 5] = [
        0,                     // null page
        8,                     // near-null
        0xffff_ffff_8100_0000, // kernel text (SEGV, page fault from user mode)
        0x8000_0000_0000_0000, // non-canonical (#GP -> SIGSEGV/SI_KERNEL)
        usize::MAX - 3,        // wraps around the address space
    ];
    for &w in &wild {
        assert_eq!(copy(buf.ptr, w as *const u8, 64), Err(0), "{w:#x}");
        assert_eq!(copy(w as *mut u8, buf.ptr, 64), Err(0), "{w:#x}");
    }
    // The buffer used as the accessible side is intact and copying still works afterwards.
    assert_eq!(
        buf.read(0, 64),
        (0..64).map(|i| pat(i, 1)).collect::<Vec<_>>()
    );
    let other = Mapping::anon(page());
    assert_eq!(copy(other.ptr, buf.ptr, page()), Ok(()));
    assert_eq!(other.read(0, page()), buf.read(0, page()));
}

/// Diagnostic: how precisely does the raw `rep movsb` report the fault point on this CPU?
/// Architecturally it must never claim more than the accessible prefix.
#[test]
fn raw_rep_movsb_fault_point_is_a_lower_bound() {
    let _g = map_guard();
    install().unwrap();
    let p = page();
    let src = Mapping::anon(2 * p);
    src.fill(|i| pat(i, 9));
    src.unmap(p, p);
    let dst = Mapping::anon(2 * p);
    let mut report = Vec::new();
    for off in [0usize, 1, 63, 64, 100, 2048, p - 65, p - 1] {
        let len = 2 * p - off;
        // SAFETY: handler installed; test-owned mappings.
        let rem = unsafe { odp_safe_copy_rep_movsb(dst.ptr, src.at(off), len) }.remaining;
        let raw = len - rem;
        assert!(raw <= p - off);
        report.push(format!("off {off}: raw {raw} exact {}", p - off));
    }
    // Destination side: second destination page read-only.
    let src2 = Mapping::anon(2 * p);
    let dst2 = Mapping::anon(2 * p);
    dst2.protect(p, p, libc::PROT_READ);
    for off in [0usize, 1, 100, p - 1] {
        let len = 2 * p - off;
        // SAFETY: handler installed; test-owned mappings.
        let rem = unsafe { odp_safe_copy_rep_movsb(dst2.at(off), src2.ptr, len) }.remaining;
        let raw = len - rem;
        assert!(raw <= p - off);
        report.push(format!("dst off {off}: raw {raw} exact {}", p - off));
    }
    eprintln!("raw rep movsb fault points: {report:?}");
}

/// The slow path turns a conservative (too early) fault report into the exact fault point,
/// also when the inaccessible byte lies beyond the byte-wise refinement window.
#[test]
fn refinement_finds_exact_fault_point_from_conservative_report() {
    let _g = map_guard();
    install().unwrap();
    let p = page();
    for (pages_ok, reported) in [(1usize, 0usize), (1, p - 200), (3, 0), (3, 17), (5, p + 1)] {
        let src = Mapping::anon((pages_ok + 1) * p);
        src.fill(|i| pat(i, 0x77));
        src.unmap(pages_ok * p, p);
        let dst = Mapping::anon((pages_ok + 1) * p);
        let len = (pages_ok + 1) * p - 9;
        // Pretend rep movsb reported a fault after only `reported` bytes.
        // SAFETY: handler installed; test-owned mappings; reported <= len.
        let r = unsafe { finish_after_fault(dst.ptr, src.ptr, len, reported) };
        assert_eq!(
            r,
            Err(CopyFault {
                copied: pages_ok * p,
                kind: FaultKind::Unmapped
            }),
            "{pages_ok} {reported}"
        );
        assert_eq!(
            dst.read(reported, pages_ok * p - reported),
            src.read(reported, pages_ok * p - reported)
        );
        // A "fault" that went away (memory fully accessible) completes successfully.
        let whole = Mapping::anon(3 * p);
        whole.fill(|i| pat(i, 0x78));
        let dst2 = Mapping::anon(3 * p);
        // SAFETY: as above.
        let r = unsafe { finish_after_fault(dst2.ptr, whole.ptr, 3 * p, 0) };
        assert_eq!(r, Ok(()));
        assert_eq!(dst2.read(0, 3 * p), whole.read(0, 3 * p));
    }
}

/// Faults are recovered on threads without a sigaltstack as well as on threads with one
/// (std gives its threads one when its own SIGSEGV handler is installed).
#[test]
fn fault_recovered_with_and_without_sigaltstack() {
    let _g = map_guard();
    let p = page();
    let src = Mapping::anon(2 * p);
    src.fill(|i| pat(i, 0x12));
    src.unmap(p, p);
    let src_addr = src.ptr as usize;
    for disable in [false, true] {
        std::thread::spawn(move || {
            if disable {
                // SAFETY: all-zero stack_t + SS_DISABLE is a valid argument.
                let mut ss: libc::stack_t = unsafe { MaybeUninit::zeroed().assume_init() };
                ss.ss_flags = libc::SS_DISABLE;
                // SAFETY: valid stack_t pointer.
                assert_eq!(unsafe { libc::sigaltstack(&ss, ptr::null_mut()) }, 0);
            }
            let mut dst = vec![0u8; 2 * p];
            let r = copy(dst.as_mut_ptr(), src_addr as *const u8, 2 * p);
            assert_eq!(r, Err(p));
        })
        .join()
        .unwrap();
    }
}

#[test]
fn install_is_idempotent_and_thread_safe() {
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..100 {
                    install().unwrap();
                }
            });
        }
    });
    // Our handler is the current disposition for both signals.
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        let mut cur = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: query only (null new action, valid out pointer).
        let r = unsafe { libc::sigaction(sig, ptr::null(), cur.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: initialised by sigaction.
        let cur = unsafe { cur.assume_init() };
        assert_eq!(cur.sa_sigaction, handler_addr());
        assert_eq!(cur.sa_flags & libc::SA_SIGINFO, libc::SA_SIGINFO);
        assert_eq!(cur.sa_flags & libc::SA_ONSTACK, libc::SA_ONSTACK);
    }
}

#[test]
fn many_threads_fault_concurrently() {
    let _g = map_guard();
    let p = page();
    let src = Mapping::anon(2 * p);
    src.fill(|i| pat(i, 7));
    src.unmap(p, p);
    let src_addr = src.ptr as usize;
    std::thread::scope(|s| {
        for t in 0..8usize {
            s.spawn(move || {
                let mut dst = vec![0u8; 2 * p];
                for _ in 0..500 {
                    let r = copy(dst.as_mut_ptr(), (src_addr + t) as *const u8, 2 * p - t);
                    assert_eq!(r, Err(p - t));
                }
                let expected: Vec<u8> = (t..p).map(|i| pat(i, 7)).collect();
                assert_eq!(&dst[..p - t], &expected[..]);
            });
        }
    });
}

/// 4 copier threads vs. one thread that keeps unmapping/remapping the middle page of the
/// source. The source is a memfd, so whenever the page is mapped it has the right content.
#[test]
fn concurrent_copies_while_source_page_is_remapped() {
    let _g = map_guard_exclusive();
    let p = page();
    let fd = memfd(3 * p, 0x66);
    let src = Mapping::shared_fd(fd, 3 * p);
    let expected: Vec<u8> = (0..3 * p).map(|i| pat(i, 0x66)).collect();
    let mid = src.ptr as usize + p;
    let stop = AtomicBool::new(false);
    let oks = AtomicUsize::new(0);
    let errs = AtomicUsize::new(0);
    let cycles = AtomicUsize::new(0);
    let src_addr = src.ptr as usize;

    std::thread::scope(|s| {
        for t in 0..4usize {
            let (stop, oks, errs, expected) = (&stop, &oks, &errs, &expected);
            s.spawn(move || {
                let off = 3 * t + 1; // unaligned
                let len = 3 * p - off;
                let mut dst = vec![0u8; len];
                while !stop.load(Ordering::Relaxed) {
                    dst.fill(0);
                    match copy(dst.as_mut_ptr(), (src_addr + off) as *const u8, len) {
                        Ok(()) => {
                            assert!(dst[..] == expected[off..], "Ok but wrong data");
                            oks.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(copied) => {
                            // Only the middle page ever disappears.
                            assert!((p - off..2 * p - off).contains(&copied), "{copied}");
                            assert!(dst[..copied] == expected[off..off + copied]);
                            errs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        let (stop, cycles) = (&stop, &cycles);
        s.spawn(move || {
            let spin = |n: usize| (0..n).for_each(|_| std::hint::spin_loop());
            let remap_file = |flags: c_int| {
                // SAFETY: maps the memfd's middle page over our own middle page (MAP_FIXED
                // replaces only our PROT_NONE placeholder; MAP_FIXED_NOREPLACE fills our
                // own hole and fails instead of clobbering anything else).
                let r = unsafe {
                    libc::mmap(
                        mid as *mut c_void,
                        p,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED | flags,
                        fd,
                        p as libc::off_t,
                    )
                };
                assert_eq!(r as usize, mid, "remap: {}", io::Error::last_os_error());
            };
            let start = Instant::now();
            let mut i = 0usize;
            while start.elapsed() < Duration::from_millis(700) {
                if i.is_multiple_of(2) {
                    // SAFETY: our own page; the copiers only access it via copy_nofault.
                    assert_eq!(unsafe { libc::munmap(mid as *mut c_void, p) }, 0);
                    spin(2000);
                    remap_file(libc::MAP_FIXED_NOREPLACE);
                } else {
                    // SAFETY: atomically replaces our own page with an inaccessible one.
                    let r = unsafe {
                        libc::mmap(
                            mid as *mut c_void,
                            p,
                            libc::PROT_NONE,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                            -1,
                            0,
                        )
                    };
                    assert_eq!(r as usize, mid);
                    spin(2000);
                    remap_file(libc::MAP_FIXED);
                }
                spin(2000);
                i += 1;
            }
            cycles.store(i, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
        });
    });
    let (ok, err, cyc) = (oks.into_inner(), errs.into_inner(), cycles.into_inner());
    eprintln!("remap test: {cyc} remap cycles, {ok} Ok copies, {err} faulted copies");
    assert!(
        ok > 0 && err > 0,
        "both outcomes should occur ({ok} ok, {err} err)"
    );
    drop(src);
    close(fd);
}

// ---------------------------------------------------------------------------------------
// Child-process tests: faults outside copy_nofault must behave exactly as before.
// ---------------------------------------------------------------------------------------

const CHILD_ENV: &str = "ODP_SAFE_COPY_CHILD_MODE";
static EXPECTED_ADDR: AtomicUsize = AtomicUsize::new(0);

/// Async-signal-safe marker output on fd 1 (bypasses libtest's capture).
fn out(s: &str) {
    // SAFETY: writing a valid buffer to stdout.
    unsafe { libc::write(1, s.as_ptr().cast(), s.len()) };
}

fn run_child(mode: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "safe_copy::tests::child_process_entry",
            "--nocapture",
        ])
        .args(["--test-threads=1"])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap()
}

fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn set_disposition(sig: c_int, handler: libc::sighandler_t, flags: c_int, mask_sig: c_int) {
    // SAFETY: all-zero sigaction is valid; we then fill in handler/flags/mask.
    let mut sa: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    sa.sa_sigaction = handler;
    sa.sa_flags = flags;
    // SAFETY: valid sigset pointer; valid signal numbers; valid action.
    unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        if mask_sig != 0 {
            libc::sigaddset(&mut sa.sa_mask, mask_sig);
        }
        assert_eq!(libc::sigaction(sig, &sa, ptr::null_mut()), 0);
    }
}

fn sig_blocked(sig: c_int) -> bool {
    let mut cur = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: query the current mask into a valid buffer; async-signal-safe.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, ptr::null(), cur.as_mut_ptr());
        libc::sigismember(cur.as_ptr(), sig) == 1
    }
}

extern "C" fn custom_siginfo(sig: c_int, info: *mut siginfo_t, _ctx: *mut c_void) {
    out("CUSTOM_SIGINFO_CALLED\n");
    // SAFETY: kernel-provided siginfo for a fault.
    let addr = unsafe { (*info).si_addr() } as usize;
    if addr == EXPECTED_ADDR.load(Ordering::Relaxed) {
        out("ADDR_OK\n");
    }
    if sig_blocked(sig) {
        out("MASK_SIG_BLOCKED\n");
    }
    if sig_blocked(libc::SIGUSR2) {
        out("SA_MASK_APPLIED\n");
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(if sig == libc::SIGBUS { 44 } else { 42 }) };
}

extern "C" fn custom_plain(sig: c_int) {
    out("CUSTOM_PLAIN_CALLED\n");
    if !sig_blocked(sig) {
        out("MASK_SIG_UNBLOCKED\n");
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(43) };
}

extern "C" fn custom_resethand(_sig: c_int, _info: *mut siginfo_t, _ctx: *mut c_void) {
    // Returns: the fault re-executes and, the disposition being SIG_DFL now, kills us.
    out("RESETHAND_CALLED\n");
}

/// In the child: checks that copy_nofault is protected (for `sig`), printing a marker.
fn child_verify_protection(sig: c_int) {
    let p = page();
    let r = if sig == libc::SIGBUS {
        let fd = memfd(2 * p, 0);
        let src = Mapping::shared_fd(fd, 2 * p);
        truncate(fd, p);
        let dst = Mapping::anon(2 * p);
        let r = copy(dst.ptr, src.ptr, 2 * p);
        std::mem::forget(src);
        r
    } else {
        let src = Mapping::anon(2 * p);
        src.unmap(p, p);
        let dst = Mapping::anon(2 * p);
        copy(dst.ptr, src.ptr, 2 * p)
    };
    if r == Err(p) {
        out("PROTECTED_COPY_OK\n");
    } else {
        out("PROTECTED_COPY_BAD\n");
        // SAFETY: plain exit.
        unsafe { libc::_exit(5) };
    }
}

/// In the child: a plain memory access (ordinary Rust code) that faults with `sig`.
fn child_fault(sig: c_int) -> ! {
    let p = page();
    let target = if sig == libc::SIGBUS {
        let fd = memfd(2 * p, 0);
        let m = Mapping::shared_fd(fd, 2 * p);
        truncate(fd, p);
        let t = m.at(p);
        std::mem::forget(m);
        t
    } else {
        let m = Mapping::anon(p);
        m.protect(0, p, libc::PROT_NONE);
        let t = m.ptr;
        std::mem::forget(m);
        t
    };
    EXPECTED_ADDR.store(target as usize, Ordering::Relaxed);
    out("ABOUT_TO_FAULT\n");
    // SAFETY: deliberately not safe: this access faults (that is what is being tested).
    let v = unsafe { ptr::read_volatile(target) };
    black_box(v);
    out("SURVIVED_FAULT\n");
    // SAFETY: plain exit.
    unsafe { libc::_exit(3) }
}

/// Entry point for child processes (a no-op in the normal test run).
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    // No core dumps from the deliberately crashing children.
    // SAFETY: plain prctl.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
    let info_flags = libc::SA_SIGINFO;
    let h_siginfo = custom_siginfo as extern "C" fn(c_int, *mut siginfo_t, *mut c_void);
    let h_plain = custom_plain as extern "C" fn(c_int);
    let h_reset = custom_resethand as extern "C" fn(c_int, *mut siginfo_t, *mut c_void);
    match mode.as_str() {
        // Previous disposition = Rust std's stack-overflow handler (installed at startup).
        "std_prev_segv" => {
            install().unwrap();
            child_verify_protection(libc::SIGSEGV);
            child_fault(libc::SIGSEGV)
        }
        "dfl_prev_segv" | "ign_prev_segv" | "dfl_prev_bus" => {
            let sig = if mode.ends_with("bus") {
                libc::SIGBUS
            } else {
                libc::SIGSEGV
            };
            let disp = if mode.starts_with("ign") {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            };
            set_disposition(sig, disp, 0, 0);
            install().unwrap();
            child_verify_protection(sig);
            child_fault(sig)
        }
        "chain_siginfo_segv" | "chain_siginfo_bus" => {
            let sig = if mode.ends_with("bus") {
                libc::SIGBUS
            } else {
                libc::SIGSEGV
            };
            set_disposition(sig, h_siginfo as usize, info_flags, libc::SIGUSR2);
            install().unwrap();
            child_verify_protection(sig);
            child_fault(sig)
        }
        "chain_plain_nodefer_segv" => {
            set_disposition(libc::SIGSEGV, h_plain as usize, libc::SA_NODEFER, 0);
            install().unwrap();
            child_verify_protection(libc::SIGSEGV);
            child_fault(libc::SIGSEGV)
        }
        "chain_resethand_segv" => {
            let flags = info_flags | libc::SA_RESETHAND;
            set_disposition(libc::SIGSEGV, h_reset as usize, flags, 0);
            install().unwrap();
            child_verify_protection(libc::SIGSEGV);
            child_fault(libc::SIGSEGV)
        }
        "raise_dfl_segv" | "raise_ign_segv" => {
            let disp = if mode.contains("ign") {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            };
            set_disposition(libc::SIGSEGV, disp, 0, 0);
            install().unwrap();
            out("ABOUT_TO_RAISE\n");
            // SAFETY: raise is a plain libc call.
            unsafe { libc::raise(libc::SIGSEGV) };
            out("SURVIVED_RAISE\n");
            // SAFETY: plain exit.
            unsafe { libc::_exit(0) }
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn assert_killed_by(mode: &str, sig: c_int, markers: &[&str]) {
    let o = run_child(mode);
    let so = stdout_of(&o);
    assert_eq!(
        o.status.signal(),
        Some(sig),
        "{mode}: status {:?}\n{so}",
        o.status
    );
    for m in markers {
        assert!(so.contains(m), "{mode}: missing {m}\n{so}");
    }
    assert!(!so.contains("SURVIVED"), "{mode}\n{so}");
}

fn assert_exit_code(mode: &str, code: i32, markers: &[&str]) {
    let o = run_child(mode);
    let so = stdout_of(&o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "{mode}: status {:?}\n{so}",
        o.status
    );
    for m in markers {
        assert!(so.contains(m), "{mode}: missing {m}\n{so}");
    }
}

#[test]
fn foreign_fault_with_std_handler_prev_kills_with_sigsegv() {
    assert_killed_by(
        "std_prev_segv",
        libc::SIGSEGV,
        &["PROTECTED_COPY_OK", "ABOUT_TO_FAULT"],
    );
}

#[test]
fn foreign_fault_with_sig_dfl_prev_kills_with_sigsegv() {
    assert_killed_by(
        "dfl_prev_segv",
        libc::SIGSEGV,
        &["PROTECTED_COPY_OK", "ABOUT_TO_FAULT"],
    );
}

#[test]
fn foreign_fault_with_sig_ign_prev_kills_with_sigsegv() {
    assert_killed_by(
        "ign_prev_segv",
        libc::SIGSEGV,
        &["PROTECTED_COPY_OK", "ABOUT_TO_FAULT"],
    );
}

#[test]
fn foreign_sigbus_with_sig_dfl_prev_kills_with_sigbus() {
    assert_killed_by(
        "dfl_prev_bus",
        libc::SIGBUS,
        &["PROTECTED_COPY_OK", "ABOUT_TO_FAULT"],
    );
}

#[test]
fn chains_to_previous_siginfo_handler() {
    let markers = [
        "PROTECTED_COPY_OK",
        "ABOUT_TO_FAULT",
        "CUSTOM_SIGINFO_CALLED",
        "ADDR_OK",
        "MASK_SIG_BLOCKED",
        "SA_MASK_APPLIED",
    ];
    assert_exit_code("chain_siginfo_segv", 42, &markers);
    assert_exit_code("chain_siginfo_bus", 44, &markers);
}

#[test]
fn chains_to_previous_plain_nodefer_handler() {
    let markers = [
        "PROTECTED_COPY_OK",
        "CUSTOM_PLAIN_CALLED",
        "MASK_SIG_UNBLOCKED",
    ];
    assert_exit_code("chain_plain_nodefer_segv", 43, &markers);
}

#[test]
fn chains_to_previous_resethand_handler_once() {
    let mode = "chain_resethand_segv";
    assert_killed_by(
        mode,
        libc::SIGSEGV,
        &["PROTECTED_COPY_OK", "RESETHAND_CALLED"],
    );
    let so = stdout_of(&run_child(mode));
    assert_eq!(so.matches("RESETHAND_CALLED").count(), 1, "{so}");
}

#[test]
fn raised_sigsegv_is_not_swallowed() {
    assert_killed_by("raise_dfl_segv", libc::SIGSEGV, &["ABOUT_TO_RAISE"]);
    // With SIG_IGN previously in place, a raise()d (asynchronous) SIGSEGV stays ignored.
    assert_exit_code("raise_ign_segv", 0, &["ABOUT_TO_RAISE", "SURVIVED_RAISE"]);
}

// ---------------------------------------------------------------------------------------
// Performance (run: cargo test --release -- --ignored --nocapture bench)
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "benchmark; run explicitly with --release"]
fn bench_hot_copy_vs_copy_nonoverlapping() {
    install().unwrap();
    for &len in &[64usize, 256, 1024, 4096, 16384, 65536] {
        let src: Vec<u8> = (0..len).map(|i| pat(i, 3)).collect();
        let mut dst = vec![0u8; len];
        let iters = (200_000_000 / (len + 64)).max(1000);
        let mut best_std = f64::MAX;
        let mut best_nf = f64::MAX;
        for _round in 0..7 {
            let t = Instant::now();
            for _ in 0..iters {
                // SAFETY: distinct Vec buffers of `len` bytes.
                unsafe {
                    ptr::copy_nonoverlapping(
                        black_box(src.as_ptr()),
                        black_box(dst.as_mut_ptr()),
                        black_box(len),
                    )
                };
            }
            best_std = best_std.min(t.elapsed().as_nanos() as f64 / iters as f64);
            let t = Instant::now();
            for _ in 0..iters {
                let r = copy(
                    black_box(dst.as_mut_ptr()),
                    black_box(src.as_ptr()),
                    black_box(len),
                );
                black_box(r).unwrap();
            }
            best_nf = best_nf.min(t.elapsed().as_nanos() as f64 / iters as f64);
        }
        assert_eq!(src, dst);
        eprintln!(
            "len {len:6}: copy_nonoverlapping {best_std:8.1} ns, copy_nofault {best_nf:8.1} ns, \
             ratio {:.2}",
            best_nf / best_std
        );
    }
}

#[test]
#[ignore = "benchmark"]
fn bench_fault_path() {
    let _g = map_guard();
    install().unwrap();
    let p = page();
    let src = Mapping::anon(2 * p);
    src.unmap(p, p);
    let dst = Mapping::anon(2 * p);
    let iters = 20_000;
    let t = Instant::now();
    for _ in 0..iters {
        assert!(copy(dst.ptr, src.ptr, 2 * p).is_err());
    }
    let per = t.elapsed().as_nanos() as f64 / iters as f64;
    eprintln!("faulting copy_nofault (2 signals: fault + byte retry): {per:.0} ns each");
    let t = Instant::now();
    for _ in 0..iters {
        // SAFETY: handler installed; test-owned mappings.
        let rem = unsafe { odp_safe_copy_rep_movsb(dst.ptr, src.ptr, 2 * p) }.remaining;
        assert_eq!(rem, p);
    }
    let per = t.elapsed().as_nanos() as f64 / iters as f64;
    eprintln!("single faulting rep movsb (1 signal): {per:.0} ns each");
}

/// The fault class comes from the signal itself, so it is right even if the
/// memory map changes again right after the fault.
#[test]
fn faults_are_classified_by_the_kernel_signal() {
    let _g = map_guard();
    let p = page();
    let src = Mapping::anon(2 * p);
    src.fill(|i| pat(i, 9));
    let dst = Mapping::anon(2 * p);
    let kind_of = |d: *mut u8, s: *const u8| copy_kind(d, s, 2 * p).unwrap_err().kind;

    src.protect(p, p, libc::PROT_NONE);
    assert_eq!(
        kind_of(dst.ptr, src.ptr),
        FaultKind::Denied,
        "PROT_NONE source"
    );
    src.protect(p, p, libc::PROT_READ | libc::PROT_WRITE);
    dst.protect(p, p, libc::PROT_READ);
    assert_eq!(
        kind_of(dst.ptr, src.ptr),
        FaultKind::Denied,
        "read-only destination"
    );
    dst.protect(p, p, libc::PROT_READ | libc::PROT_WRITE);
    src.unmap(p, p);
    assert_eq!(
        kind_of(dst.ptr, src.ptr),
        FaultKind::Unmapped,
        "unmapped source"
    );
    let non_canonical = 0x8000_0000_0000_0000usize as *const u8;
    assert_eq!(
        kind_of(dst.ptr, non_canonical),
        FaultKind::Unmapped,
        "non-canonical"
    );

    let fd = memfd(2 * p, 0x55);
    let file = Mapping::shared_fd(fd, 2 * p);
    truncate(fd, p);
    assert_eq!(
        kind_of(dst.ptr, file.ptr),
        FaultKind::Bus,
        "beyond the end of a file"
    );
    drop(file);
    close(fd);
}
