//! The userfaultfd layer and the monitor on real memory (as root and,
//! where it matters, as an unprivileged user).

mod events;

use super::fd::*;
use super::monitor::*;
use super::raw::*;
use crate::sys::page_size;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::Duration;
use std::time::Instant;

/// Serialises the tests that fork (a forked child holds copies of every fd of the
/// process, including other tests' uffds).
static FORK_LOCK: Mutex<()> = Mutex::new(());

fn pg() -> usize {
    page_size()
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

/// Anonymous private read-write mapping of `pages` pages.
fn mmap_anon(pages: usize) -> usize {
    mmap_flags(pages, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
}

fn mmap_flags(pages: usize, flags: c_int) -> usize {
    // SAFETY: anonymous mapping at a kernel-chosen address; no existing memory affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * pg(),
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap: {}", io::Error::last_os_error());
    p as usize
}

fn munmap(addr: usize, len: usize) {
    // SAFETY: the tests only unmap ranges they mapped themselves and no longer use.
    let r = unsafe { libc::munmap(addr as *mut c_void, len) };
    assert_eq!(r, 0, "munmap: {}", io::Error::last_os_error());
}

fn madvise(addr: usize, len: usize, advice: c_int) {
    // SAFETY: the tests only advise ranges they own; DONTNEED/FREE only drop contents.
    let r = unsafe { libc::madvise(addr as *mut c_void, len, advice) };
    assert_eq!(r, 0, "madvise: {}", io::Error::last_os_error());
}

fn touch(addr: usize, pages: usize) {
    for i in 0..pages {
        // SAFETY: addr..addr+pages*pg() is a live read-write mapping owned by the test.
        unsafe { std::ptr::write_volatile((addr + i * pg()) as *mut u8, i as u8 + 1) };
    }
}

/// Unmaps on drop (declare after the Monitor so it is unmapped while the monitor runs).
/// Only ever covers pages the test still owns: other tests run in parallel threads and
/// may get a hole we created, so unmapping it again could destroy their mapping.
struct Region(usize, usize);
impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the region was mapped by the test; unmapping holes is harmless.
        unsafe { libc::munmap(self.0 as *mut c_void, self.1) };
    }
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    batch: u64,
    ev: Event,
    held: bool,
}

/// Records events under a gate mutex and checks the guard protocol.
struct TestSink {
    gate: Mutex<Vec<Rec>>,
    held: AtomicBool,
    batches: AtomicU64,
    ends: AtomicU64,
    seen: AtomicU64,
    unguarded: AtomicU64,
    panic_on_event: AtomicBool,
}

struct TestGuard<'a> {
    log: MutexGuard<'a, Vec<Rec>>,
    sink: &'a TestSink,
    batch: u64,
}

impl Drop for TestGuard<'_> {
    fn drop(&mut self) {
        // Runs before the MutexGuard field is dropped, i.e. while the gate is held.
        self.sink.held.store(false, Ordering::SeqCst);
    }
}

impl TestSink {
    fn new() -> Arc<Self> {
        Arc::new(TestSink {
            gate: Mutex::new(Vec::with_capacity(4096)),
            held: AtomicBool::new(false),
            batches: AtomicU64::new(0),
            ends: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            unguarded: AtomicU64::new(0),
            panic_on_event: AtomicBool::new(false),
        })
    }

    /// Takes the gate (so every event whose changing call has returned is visible).
    fn records(&self) -> Vec<Rec> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn events(&self) -> Vec<Event> {
        self.records().into_iter().map(|r| r.ev).collect()
    }

    fn clear(&self) {
        self.gate.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl EventSink for TestSink {
    type Guard<'a> = TestGuard<'a>;

    fn begin_batch(&self) -> TestGuard<'_> {
        let log = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        assert!(!self.held.swap(true, Ordering::SeqCst), "nested batch");
        let batch = self.batches.fetch_add(1, Ordering::SeqCst) + 1;
        TestGuard {
            log,
            sink: self,
            batch,
        }
    }

    fn event(&self, guard: &mut TestGuard<'_>, event: &Event) {
        let held = self.held.load(Ordering::SeqCst);
        if !held {
            self.unguarded.fetch_add(1, Ordering::SeqCst);
        }
        if self.panic_on_event.swap(false, Ordering::SeqCst) {
            panic!("test sink panics on purpose");
        }
        guard.log.push(Rec {
            batch: guard.batch,
            ev: *event,
            held,
        });
        self.seen.fetch_add(1, Ordering::SeqCst);
    }

    fn end_batch(&self, guard: TestGuard<'_>, _delivered: usize) {
        assert!(self.held.load(Ordering::SeqCst));
        self.ends.fetch_add(1, Ordering::SeqCst);
        drop(guard);
        assert!(!self.held.load(Ordering::SeqCst));
    }
}

fn start() -> (Arc<TestSink>, Monitor) {
    let sink = TestSink::new();
    let mon = Monitor::start(Arc::clone(&sink)).expect("Monitor::start");
    (sink, mon)
}

fn assert_guarded(sink: &TestSink, recs: &[Rec]) {
    assert!(recs.iter().all(|r| r.held), "event outside guard: {recs:?}");
    assert_eq!(sink.unguarded.load(Ordering::SeqCst), 0);
}

/// Runs `f` on a helper thread; false if it did not finish within `timeout`.
fn finishes_within(timeout: Duration, f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(timeout).is_ok()
}

// ---------------------------------------------------------------- raw layer

#[test]
fn ioctl_numbers_and_layout_match_header() {
    let ours: Vec<(&str, u64)> = vec![
        ("UFFDIO_API", UFFDIO_API as u64),
        ("UFFDIO_REGISTER", UFFDIO_REGISTER as u64),
        ("UFFDIO_UNREGISTER", UFFDIO_UNREGISTER as u64),
        ("UFFDIO_WAKE", UFFDIO_WAKE as u64),
        ("UFFDIO_WRITEPROTECT", UFFDIO_WRITEPROTECT as u64),
        ("USERFAULTFD_IOC_NEW", USERFAULTFD_IOC_NEW as u64),
        ("UFFD_API", UFFD_API),
        ("UFFD_USER_MODE_ONLY", UFFD_USER_MODE_ONLY as u64),
        (
            "UFFD_FEATURE_PAGEFAULT_FLAG_WP",
            UFFD_FEATURE_PAGEFAULT_FLAG_WP,
        ),
        ("UFFD_FEATURE_EVENT_FORK", UFFD_FEATURE_EVENT_FORK),
        ("UFFD_FEATURE_EVENT_REMAP", UFFD_FEATURE_EVENT_REMAP),
        ("UFFD_FEATURE_EVENT_REMOVE", UFFD_FEATURE_EVENT_REMOVE),
        ("UFFD_FEATURE_EVENT_UNMAP", UFFD_FEATURE_EVENT_UNMAP),
        (
            "UFFD_FEATURE_WP_HUGETLBFS_SHMEM",
            UFFD_FEATURE_WP_HUGETLBFS_SHMEM,
        ),
        ("UFFD_EVENT_PAGEFAULT", UFFD_EVENT_PAGEFAULT as u64),
        ("UFFD_EVENT_FORK", UFFD_EVENT_FORK as u64),
        ("UFFD_EVENT_REMAP", UFFD_EVENT_REMAP as u64),
        ("UFFD_EVENT_REMOVE", UFFD_EVENT_REMOVE as u64),
        ("UFFD_EVENT_UNMAP", UFFD_EVENT_UNMAP as u64),
        ("UFFD_PAGEFAULT_FLAG_WRITE", UFFD_PAGEFAULT_FLAG_WRITE),
        ("UFFD_PAGEFAULT_FLAG_WP", UFFD_PAGEFAULT_FLAG_WP),
        ("UFFDIO_REGISTER_MODE_WP", UFFDIO_REGISTER_MODE_WP),
        ("UFFDIO_WRITEPROTECT_MODE_WP", UFFDIO_WRITEPROTECT_MODE_WP),
        ("MSG_SIZE", size_of::<uffd_msg>() as u64),
        ("MSG_ARG", std::mem::offset_of!(uffd_msg, arg) as u64),
        (
            "PF_ADDRESS",
            8 + std::mem::offset_of!(uffd_msg_pagefault, address) as u64,
        ),
        (
            "PF_PTID",
            8 + std::mem::offset_of!(uffd_msg_pagefault, ptid) as u64,
        ),
        (
            "REMAP_TO",
            8 + std::mem::offset_of!(uffd_msg_remap, to) as u64,
        ),
        (
            "REMAP_LEN",
            8 + std::mem::offset_of!(uffd_msg_remap, len) as u64,
        ),
        (
            "REMOVE_END",
            8 + std::mem::offset_of!(uffd_msg_remove, end) as u64,
        ),
        (
            "FORK_UFD",
            8 + std::mem::offset_of!(uffd_msg_fork, ufd) as u64,
        ),
        ("SZ_API", size_of::<uffdio_api>() as u64),
        ("SZ_RANGE", size_of::<uffdio_range>() as u64),
        ("SZ_REGISTER", size_of::<uffdio_register>() as u64),
        ("SZ_WP", size_of::<uffdio_writeprotect>() as u64),
    ];
    // Values printed by the C program below on Debian 12 (linux-libc-dev 6.1).
    let known: HashMap<&str, u64> = [
        ("UFFDIO_API", 0xc018_aa3f),
        ("UFFDIO_REGISTER", 0xc020_aa00),
        ("UFFDIO_UNREGISTER", 0x8010_aa01),
        ("UFFDIO_WAKE", 0x8010_aa02),
        ("UFFDIO_WRITEPROTECT", 0xc018_aa06),
        ("MSG_SIZE", 32),
    ]
    .into_iter()
    .collect();
    for (name, v) in &ours {
        if let Some(k) = known.get(name) {
            assert_eq!(v, k, "{name}");
        }
    }

    const C: &str = r#"
#include <stdio.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#define P(n, x) printf("%s %llu\n", n, (unsigned long long)(x))
#define Q(x) P(#x, x)
int main(void) {
  Q(UFFDIO_API); Q(UFFDIO_REGISTER); Q(UFFDIO_UNREGISTER); Q(UFFDIO_WAKE);
  Q(UFFDIO_WRITEPROTECT); Q(USERFAULTFD_IOC_NEW); Q(UFFD_API); Q(UFFD_USER_MODE_ONLY);
  Q(UFFD_FEATURE_PAGEFAULT_FLAG_WP); Q(UFFD_FEATURE_EVENT_FORK); Q(UFFD_FEATURE_EVENT_REMAP);
  Q(UFFD_FEATURE_EVENT_REMOVE); Q(UFFD_FEATURE_EVENT_UNMAP); Q(UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
  Q(UFFD_EVENT_PAGEFAULT); Q(UFFD_EVENT_FORK); Q(UFFD_EVENT_REMAP); Q(UFFD_EVENT_REMOVE);
  Q(UFFD_EVENT_UNMAP); Q(UFFD_PAGEFAULT_FLAG_WRITE); Q(UFFD_PAGEFAULT_FLAG_WP);
  Q(UFFDIO_REGISTER_MODE_WP); Q(UFFDIO_WRITEPROTECT_MODE_WP);
  P("MSG_SIZE", sizeof(struct uffd_msg)); P("MSG_ARG", offsetof(struct uffd_msg, arg));
  P("PF_ADDRESS", offsetof(struct uffd_msg, arg.pagefault.address));
  P("PF_PTID", offsetof(struct uffd_msg, arg.pagefault.feat.ptid));
  P("REMAP_TO", offsetof(struct uffd_msg, arg.remap.to));
  P("REMAP_LEN", offsetof(struct uffd_msg, arg.remap.len));
  P("REMOVE_END", offsetof(struct uffd_msg, arg.remove.end));
  P("FORK_UFD", offsetof(struct uffd_msg, arg.fork.ufd));
  P("SZ_API", sizeof(struct uffdio_api)); P("SZ_RANGE", sizeof(struct uffdio_range));
  P("SZ_REGISTER", sizeof(struct uffdio_register));
  P("SZ_WP", sizeof(struct uffdio_writeprotect));
  return 0;
}
"#;
    if !std::path::Path::new("/usr/include/linux/userfaultfd.h").exists() {
        eprintln!("SKIP header comparison: /usr/include/linux/userfaultfd.h missing");
        return;
    }
    // Build next to the test binary (inside the target dir).
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let bin = dir.join(format!("uffd_header_check_{}", std::process::id()));
    let spawn = std::process::Command::new("cc")
        .args(["-x", "c", "-", "-o"])
        .arg(&bin)
        .stdin(std::process::Stdio::piped())
        .spawn();
    let Ok(mut cc) = spawn else {
        eprintln!("SKIP header comparison: no C compiler");
        return;
    };
    {
        use std::io::Write;
        cc.stdin.take().unwrap().write_all(C.as_bytes()).unwrap();
    }
    if !cc.wait().unwrap().success() {
        eprintln!("SKIP header comparison: cc failed (unwritable target dir?)");
        return;
    }
    let out = std::process::Command::new(&bin).output().unwrap();
    let _ = std::fs::remove_file(&bin);
    let text = String::from_utf8(out.stdout).unwrap();
    let hdr: HashMap<String, u64> = text
        .lines()
        .map(|l| {
            let (n, v) = l.split_once(' ').unwrap();
            (n.to_string(), v.parse().unwrap())
        })
        .collect();
    for (name, v) in &ours {
        assert_eq!(Some(v), hdr.get(*name), "{name} differs from the C header");
    }
    eprintln!("header check: {} values match", ours.len());
}

#[test]
fn handshake_reports_features() {
    let u = Userfaultfd::open().expect("open");
    eprintln!(
        "uid={} method={:?} granted={:?} available={:?} ioctls={:#x}",
        uid(),
        u.open_method(),
        u.granted_features(),
        u.available_features(),
        u.api_ioctls()
    );
    assert!(u.granted_features().contains(REQUIRED_FEATURES));
    assert!(u.granted_features().contains(Features::PAGEFAULT_FLAG_WP));
    assert!(!u.granted_features().contains(Features::EVENT_FORK));
    assert_eq!(u.open_method(), OpenMethod::SyscallUserModeOnly);
    assert!(u.user_mode_only());
    let bits = 1u64 << _UFFDIO_REGISTER | 1 << _UFFDIO_UNREGISTER | 1 << _UFFDIO_API;
    assert_eq!(u.api_ioctls() & bits, bits);
    // Non-blocking and close-on-exec.
    // SAFETY: F_GETFL/F_GETFD on our own fd.
    let (fl, fdf) = unsafe {
        (
            libc::fcntl(u.as_raw_fd(), libc::F_GETFL),
            libc::fcntl(u.as_raw_fd(), libc::F_GETFD),
        )
    };
    assert!(fl & libc::O_NONBLOCK != 0 && fdf & libc::FD_CLOEXEC != 0);
    // Nothing pending: read_events returns 0 without blocking.
    let mut buf = [Event::Fork; 4];
    assert_eq!(u.read_events(&mut buf).unwrap(), 0);
    assert_eq!(u.read_events(&mut []).unwrap(), 0);
}

#[test]
fn raw_read_events_blocks_changers_until_read_and_reads_partially() {
    let u = Arc::new(Userfaultfd::open().unwrap());
    let a = mmap_anon(3);
    let _r = Region(a, 3 * pg());
    u.register_wp(a, 3 * pg()).unwrap();
    touch(a, 3);
    let done = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..3)
        .map(|i| {
            let done = Arc::clone(&done);
            thread::spawn(move || {
                madvise(a + i * pg(), pg(), libc::MADV_DONTNEED);
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    // Wait until all three events are queued (poll reports readable at once).
    thread::sleep(Duration::from_millis(100));
    let mut pfd = libc::pollfd {
        fd: u.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 1);
    assert_eq!(
        done.load(Ordering::SeqCst),
        0,
        "madvise returned before read()"
    );
    let mut buf = [Event::Fork; 2];
    assert_eq!(u.read_events(&mut buf).unwrap(), 2);
    let mut rest = [Event::Fork; 8];
    let n = u.read_events(&mut rest).unwrap();
    assert_eq!(n, 1);
    assert_eq!(u.read_events(&mut rest).unwrap(), 0);
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 3);
    let mut all: Vec<Event> = buf.iter().chain(&rest[..1]).copied().collect();
    all.sort_by_key(|e| match *e {
        Event::Remove { start, .. } => start,
        _ => 0,
    });
    let want: Vec<Event> = (0..3)
        .map(|i| Event::Remove {
            start: a + i * pg(),
            end: a + (i + 1) * pg(),
        })
        .collect();
    assert_eq!(all, want);
    u.unregister(a, 3 * pg()).unwrap();
}

// ---------------------------------------------------------------- registration

#[test]
fn wp_registration_first_touch_neither_blocks_nor_produces_events() {
    let (sink, mon) = start();
    let addr = mmap_anon(16);
    let _r = Region(addr, 16 * pg());
    mon.register(addr, 16 * pg()).unwrap();
    // Kernel-mode write into an untouched registered page (pipe -> read into it).
    let kaddr = mmap_anon(1);
    let _k = Region(kaddr, pg());
    mon.register(kaddr, pg()).unwrap();
    let mut p = [0 as c_int; 2];
    // SAFETY: p is a valid array of two ints.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    let data = [7u8; 64];
    // SAFETY: writes 64 bytes from `data` to our pipe; then reads them into the
    // registered, untouched page (kernel copy_to_user into an unpopulated page).
    let n = unsafe {
        libc::write(p[1], data.as_ptr().cast(), 64);
        let n = libc::read(p[0], kaddr as *mut c_void, 64);
        libc::close(p[0]);
        libc::close(p[1]);
        n
    };
    assert_eq!(
        n,
        64,
        "kernel write into registered page: {}",
        io::Error::last_os_error()
    );

    let ok = finishes_within(Duration::from_secs(5), move || {
        for i in 0..16 {
            let a = addr + i * pg();
            // SAFETY: first touch of a live registered read-write page; the read also
            // checks it is zero-filled.
            unsafe {
                assert_eq!(std::ptr::read_volatile(a as *const u8), 0);
                std::ptr::write_volatile(a as *mut u8, 0xAB);
                std::ptr::write_volatile((a + pg() - 1) as *mut u8, 0xCD);
            }
        }
    });
    assert!(ok, "first-touch writes blocked");
    thread::sleep(Duration::from_millis(50));
    assert!(sink.events().is_empty(), "{:?}", sink.events());
    assert_eq!(mon.stats(), Stats::default());
}

#[test]
fn private_file_mapping_is_unsupported() {
    let (_sink, mon) = start();
    let exe = std::ffi::CString::new(
        std::env::current_exe()
            .unwrap()
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: valid path; read-only open.
    let fd = unsafe { libc::open(exe.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: private read-only mapping of one page of our own executable.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pg(),
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            fd,
            0,
        )
    };
    // SAFETY: closing our fd; the mapping keeps its own reference.
    unsafe { libc::close(fd) };
    assert_ne!(p, libc::MAP_FAILED);
    let _r = Region(p as usize, pg());
    let e = mon.register(p as usize, pg()).unwrap_err();
    eprintln!("private file mapping: {e}");
    assert!(matches!(e, RegisterError::Unsupported { .. }), "{e:?}");
    assert!(mon.is_running());
}

#[test]
fn sysv_shm_is_unsupported() {
    let (_sink, mon) = start();
    let len = 4 * pg();
    // SAFETY: creates a private SysV segment; removed right after attaching.
    let id = unsafe { libc::shmget(libc::IPC_PRIVATE, len, libc::IPC_CREAT | 0o600) };
    assert!(id >= 0, "shmget: {}", io::Error::last_os_error());
    // SAFETY: attach at a kernel-chosen address, then mark for removal.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    // SAFETY: IPC_RMID on our own segment with a null buffer.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    assert_ne!(p as isize, -1, "shmat: {}", io::Error::last_os_error());
    let e = mon.register(p as usize, len).unwrap_err();
    eprintln!("SysV shm: {e}");
    assert!(matches!(e, RegisterError::Unsupported { .. }), "{e:?}");
    // SAFETY: detach the segment we attached.
    assert_eq!(unsafe { libc::shmdt(p) }, 0);
    assert!(mon.is_running());
}

#[test]
fn shared_anon_and_memfd_are_accepted() {
    let (sink, mon) = start();
    let a = mmap_flags(4, libc::MAP_SHARED | libc::MAP_ANONYMOUS);
    let _r = Region(a, 3 * pg()); // page 3 is unmapped below
    mon.register(a, 4 * pg()).expect("MAP_SHARED|MAP_ANONYMOUS");
    touch(a, 4);
    madvise(a, pg(), libc::MADV_REMOVE);
    munmap(a + 3 * pg(), pg());
    assert_eq!(
        sink.events(),
        vec![
            Event::Remove {
                start: a,
                end: a + pg()
            },
            Event::Unmap {
                start: a + 3 * pg(),
                end: a + 4 * pg()
            }
        ]
    );
    // memfd: MAP_SHARED is accepted; MAP_PRIVATE of a memfd is reported for information.
    // SAFETY: creates an anonymous memory file.
    let fd = unsafe { libc::memfd_create(c"uffd-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: sizing our own memfd.
    assert_eq!(unsafe { libc::ftruncate(fd, (4 * pg()) as libc::off_t) }, 0);
    for (flags, name) in [(libc::MAP_SHARED, "shared"), (libc::MAP_PRIVATE, "private")] {
        // SAFETY: maps our own memfd.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * pg(),
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let _m = Region(p as usize, 4 * pg());
        let r = mon.register(p as usize, 4 * pg());
        eprintln!("memfd MAP_{name}: {r:?}");
        if flags == libc::MAP_SHARED {
            r.expect("memfd MAP_SHARED");
        }
    }
    // SAFETY: closing our memfd.
    unsafe { libc::close(fd) };
}

#[test]
fn unmapped_misaligned_and_busy_ranges_give_clear_errors() {
    /// UFFDIO_REGISTER without the msync pre-check: the kernel's own answer.
    fn kernel_register(u: &Userfaultfd, addr: usize, len: usize) -> io::Result<()> {
        let mut reg = uffdio_register {
            range: uffdio_range {
                start: addr as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER with a valid struct; touches no memory of the range.
        let r = unsafe { libc::ioctl(u.as_raw_fd(), UFFDIO_REGISTER as libc::Ioctl, &mut reg) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    let (_sink, mon) = start();
    // Probe at low fixed addresses: mmap() without a hint allocates top-down from
    // mmap_base, so nothing else in this (multi-threaded) test process lands there,
    // unlike a hole freed in the mmap area, which a parallel test may get.
    let a = 0x2000_0000usize + (std::process::id() as usize % 64) * 0x10_0000;
    assert!(!crate::sys::is_mapped(a, 4 * pg()), "probe area in use");
    let e = mon.register(a, 4 * pg()).unwrap_err();
    eprintln!("unmapped: {e}");
    assert!(matches!(e, RegisterError::Unmapped { .. }), "{e:?}");
    let k = kernel_register(mon.userfaultfd(), a, 4 * pg());
    eprintln!("kernel answer for an unmapped range: {k:?}");
    assert_eq!(k.unwrap_err().raw_os_error(), Some(libc::EINVAL));

    // Partially mapped: hole in the middle.
    let b = a + 0x8_0000;
    // SAFETY: maps 4 pages at a free low address (NOREPLACE never clobbers).
    let p = unsafe {
        libc::mmap(
            b as *mut c_void,
            4 * pg(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    assert_eq!(p as usize, b, "{}", io::Error::last_os_error());
    let _r0 = Region(b, pg());
    let _r1 = Region(b + 2 * pg(), 2 * pg());
    munmap(b + pg(), pg());
    let e = mon.register(b, 4 * pg()).unwrap_err();
    assert!(matches!(e, RegisterError::Unmapped { .. }), "{e:?}");
    let k = kernel_register(mon.userfaultfd(), b, 4 * pg());
    eprintln!("kernel answer for a range with a hole: {k:?}");
    if k.is_ok() {
        mon.unregister(b, pg()).unwrap();
        mon.unregister(b + 2 * pg(), 2 * pg()).unwrap();
    }

    let e = mon.register(b + 1, pg()).unwrap_err();
    assert!(matches!(e, RegisterError::Misaligned { .. }), "{e:?}");
    let e = mon.register(b, 0).unwrap_err();
    assert!(matches!(e, RegisterError::Misaligned { .. }), "{e:?}");

    // EBUSY: the same range through a second userfaultfd.
    let c = mmap_anon(2);
    let _c = Region(c, 2 * pg());
    mon.register(c, 2 * pg()).unwrap();
    mon.register(c, 2 * pg())
        .expect("re-registering through the same uffd is fine");
    let other = Userfaultfd::open().unwrap();
    let e = other.register_wp(c, 2 * pg()).unwrap_err();
    eprintln!("second uffd: {e}");
    assert!(matches!(e, RegisterError::Busy { .. }), "{e:?}");
    // Unregister through the wrong uffd.
    let e = other.unregister(c, 2 * pg());
    eprintln!("unregister through another uffd: {e:?}");
    mon.unregister(c, 2 * pg()).unwrap();
    other
        .register_wp(c, 2 * pg())
        .expect("free after unregister");
    assert!(mon.is_running());
}

#[test]
fn registration_splits_vmas() {
    fn maps_lines() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count()
    }
    let (_sink, mon) = start();
    let a = mmap_anon(64);
    let _r = Region(a, 64 * pg());
    // Other tests map/unmap concurrently, so compare against this range only.
    let count_in = || {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|l| {
                let range = l.split(' ').next().unwrap();
                let (s, e) = range.split_once('-').unwrap();
                let s = usize::from_str_radix(s, 16).unwrap();
                let e = usize::from_str_radix(e, 16).unwrap();
                s < a + 64 * pg() && e > a
            })
            .count()
    };
    let before = count_in();
    for i in (0..64).step_by(2) {
        mon.register(a + i * pg(), pg()).unwrap();
    }
    let after = count_in();
    eprintln!(
        "VMAs in range: {before} -> {after} (maps lines now {})",
        maps_lines()
    );
    assert_eq!(before, 1);
    assert_eq!(after, 64);
    mon.unregister(a, 64 * pg()).unwrap();
    assert_eq!(count_in(), 1, "unregister merges the VMAs again");
}
