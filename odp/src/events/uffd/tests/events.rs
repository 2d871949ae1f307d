//! Events, robustness and fork behaviour of the monitor.

use super::*;

// ---------------------------------------------------------------- events

#[test]
fn dontneed_gives_one_remove_delivered_under_the_gate_before_madvise_returns() {
    let (sink, mon) = start();
    let a = mmap_anon(8);
    let _r = Region(a, 8 * pg());
    mon.register(a, 8 * pg()).unwrap();
    touch(a, 8);
    madvise(a + 2 * pg(), 2 * pg(), libc::MADV_DONTNEED);
    // Taking the gate after madvise returned must show the event: the monitor took
    // the gate before read(), and read() is what released madvise.
    let recs = sink.records();
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(
        recs[0].ev,
        Event::Remove {
            start: a + 2 * pg(),
            end: a + 4 * pg()
        }
    );
    assert_guarded(&sink, &recs);
    // SAFETY: reading a live page of our mapping; DONTNEED made it zero again.
    let byte = unsafe { std::ptr::read_volatile((a + 2 * pg()) as *const u8) };
    assert_eq!(byte, 0);
    assert_eq!(mon.stats().remove, 1);

    // Without the gate the changing thread can run ahead of the callback: measure.
    let mut ahead = 0;
    const N: u64 = 300;
    for i in 0..N {
        touch(a, 1);
        madvise(a, pg(), libc::MADV_DONTNEED);
        if sink.seen.load(Ordering::SeqCst) < 2 + i {
            ahead += 1;
        }
    }
    let recs = sink.records();
    assert_eq!(recs.len() as u64, 1 + N);
    assert_guarded(&sink, &recs);
    eprintln!("madvise returned before event() ran (no gate taken): {ahead}/{N}");
}

#[test]
fn munmap_gives_unmap_and_removes_registration() {
    fn map_fixed_over(addr: usize) {
        // SAFETY: MAP_FIXED atomically replaces one page of the test's own mapping.
        let p = unsafe {
            libc::mmap(
                addr as *mut c_void,
                pg(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(p as usize, addr);
    }
    let (sink, mon) = start();
    let a = mmap_anon(4);
    let _r0 = Region(a, 2 * pg());
    let _r1 = Region(a + 3 * pg(), pg()); // page 2 is unmapped below
    mon.register(a, 4 * pg()).unwrap();
    munmap(a + 2 * pg(), pg());
    assert_eq!(
        sink.events(),
        vec![Event::Unmap {
            start: a + 2 * pg(),
            end: a + 3 * pg()
        }]
    );
    // mmap(MAP_FIXED) over a registered page: Unmap of the replaced page...
    map_fixed_over(a + pg());
    assert_eq!(
        sink.events()[1],
        Event::Unmap {
            start: a + pg(),
            end: a + 2 * pg()
        }
    );
    // ...and the new mapping at the same address is not registered: no event.
    touch(a + pg(), 1);
    madvise(a + pg(), pg(), libc::MADV_DONTNEED);
    assert_eq!(sink.events().len(), 2);
    // The neighbours still are.
    madvise(a, pg(), libc::MADV_DONTNEED);
    assert_eq!(
        sink.events()[2],
        Event::Remove {
            start: a,
            end: a + pg()
        }
    );
    assert_guarded(&sink, &sink.records());
}

#[test]
fn mremap_move_gives_remap_then_unmap_each_under_a_guard() {
    let (sink, mon) = start();
    let a = mmap_anon(4);
    let b = mmap_anon(4); // target, not registered
    let _rb = Region(b, 4 * pg());
    mon.register(a, 4 * pg()).unwrap();
    touch(a, 4);
    let batches0 = sink.batches.load(Ordering::SeqCst);
    // SAFETY: moves our own 4-page mapping onto our own 4-page target.
    let p = unsafe {
        libc::mremap(
            a as *mut c_void,
            4 * pg(),
            4 * pg(),
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            b as *mut c_void,
        )
    };
    assert_eq!(p as usize, b, "mremap: {}", io::Error::last_os_error());
    let recs = sink.records();
    let evs: Vec<Event> = recs.iter().map(|r| r.ev).collect();
    assert_eq!(
        evs,
        vec![
            Event::Remap {
                from: a,
                to: b,
                len: 4 * pg()
            },
            Event::Unmap {
                start: a,
                end: a + 4 * pg()
            }
        ]
    );
    assert_guarded(&sink, &recs);
    let batches = sink.batches.load(Ordering::SeqCst) - batches0;
    eprintln!("mremap move delivered in {batches} batch(es): {recs:?}");
    assert!((1..=2).contains(&batches));
    assert_eq!(
        sink.ends.load(Ordering::SeqCst),
        sink.batches.load(Ordering::SeqCst)
    );
    // The registration moved with the mapping.
    madvise(b, pg(), libc::MADV_DONTNEED);
    assert_eq!(
        sink.events()[2],
        Event::Remove {
            start: b,
            end: b + pg()
        }
    );
    assert_eq!(mon.stats().remap, 1);
}

#[test]
fn mremap_shrink_gives_unmap_of_tail() {
    let (sink, mon) = start();
    let a = mmap_anon(4);
    let _r = Region(a, 2 * pg()); // the tail is unmapped below
    mon.register(a, 4 * pg()).unwrap();
    // SAFETY: shrinks our own mapping in place.
    let p = unsafe { libc::mremap(a as *mut c_void, 4 * pg(), 2 * pg(), 0) };
    assert_eq!(p as usize, a);
    assert_eq!(
        sink.events(),
        vec![Event::Unmap {
            start: a + 2 * pg(),
            end: a + 4 * pg()
        }]
    );
}

#[test]
fn madv_free_gives_remove() {
    let (sink, mon) = start();
    let a = mmap_anon(4);
    let _r = Region(a, 4 * pg());
    mon.register(a, 4 * pg()).unwrap();
    touch(a, 4);
    madvise(a, 3 * pg(), libc::MADV_FREE);
    assert_eq!(
        sink.events(),
        vec![Event::Remove {
            start: a,
            end: a + 3 * pg()
        }]
    );
}

#[test]
fn raw_syscall_munmap_gives_unmap() {
    let (sink, mon) = start();
    let a = mmap_anon(4);
    let _r = Region(a, 2 * pg()); // the rest is unmapped below
    mon.register(a, 4 * pg()).unwrap();
    // SAFETY: raw munmap of the last two pages of our own mapping.
    let r = unsafe { libc::syscall(libc::SYS_munmap, a + 2 * pg(), 2 * pg()) };
    assert_eq!(r, 0);
    assert_eq!(
        sink.events(),
        vec![Event::Unmap {
            start: a + 2 * pg(),
            end: a + 4 * pg()
        }]
    );
}

#[test]
fn glibc_free_of_large_chunk_gives_unmap_if_registered() {
    let (sink, mon) = start();
    // A large malloc is served by mmap (64 MiB: above glibc's maximum dynamic mmap
    // threshold of 32 MiB); register its pages, then free().
    let len = 64 << 20;
    let v: Vec<u8> = vec![0u8; len];
    let p = v.as_ptr() as usize;
    let start = (p + pg() - 1) & !(pg() - 1);
    let end = (p + len) & !(pg() - 1);
    mon.register(start, end - start).unwrap();
    drop(v);
    let evs = sink.events();
    eprintln!("free() of a 64 MiB chunk: {evs:?}");
    assert_eq!(evs.len(), 1);
    // The event carries glibc's whole munmap range (chunk header page included).
    assert!(matches!(evs[0], Event::Unmap { start: s, end: e } if s <= start && e >= end));
}

/// Unmap reports the whole munmap() argument range, Remove only the registered VMA.
#[test]
fn event_ranges_vs_registered_part() {
    let (sink, mon) = start();
    let a = mmap_anon(3);
    mon.register(a + pg(), pg()).unwrap();
    touch(a, 3);
    madvise(a, 3 * pg(), libc::MADV_DONTNEED);
    munmap(a, 3 * pg());
    let evs = sink.events();
    eprintln!("register middle page, DONTNEED + munmap of 3 pages: {evs:?}");
    assert_eq!(
        evs,
        vec![
            Event::Remove {
                start: a + pg(),
                end: a + 2 * pg()
            },
            Event::Unmap {
                start: a,
                end: a + 3 * pg()
            }
        ]
    );
}

#[test]
fn concurrent_changes_from_many_threads_are_all_delivered() {
    let (sink, mon) = start();
    const T: usize = 4;
    const N: usize = 200;
    let a = mmap_anon(T);
    let _r = Region(a, T * pg());
    mon.register(a, T * pg()).unwrap();
    let handles: Vec<_> = (0..T)
        .map(|t| {
            thread::spawn(move || {
                for _ in 0..N {
                    touch(a + t * pg(), 1);
                    madvise(a + t * pg(), pg(), libc::MADV_DONTNEED);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let recs = sink.records();
    assert_eq!(recs.len(), T * N);
    assert_guarded(&sink, &recs);
    let s = mon.stats();
    eprintln!(
        "{} events in {} batches ({} empty), max batch {}",
        recs.len(),
        s.batches,
        s.empty_batches,
        recs.chunk_by(|x, y| x.batch == y.batch)
            .map(|c| c.len())
            .max()
            .unwrap()
    );
    assert_eq!(s.remove, (T * N) as u64);
    for t in 0..T {
        let ev = Event::Remove {
            start: a + t * pg(),
            end: a + (t + 1) * pg(),
        };
        assert_eq!(recs.iter().filter(|r| r.ev == ev).count(), N);
    }
}

#[test]
fn register_from_other_threads_while_running() {
    let (sink, mon) = start();
    let mon = Arc::new(mon);
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let mon = Arc::clone(&mon);
            thread::spawn(move || {
                for _ in 0..50 {
                    let a = mmap_anon(2);
                    mon.register(a, 2 * pg()).unwrap();
                    madvise(a, pg(), libc::MADV_DONTNEED);
                    mon.unregister(a, pg()).unwrap();
                    madvise(a, pg(), libc::MADV_DONTNEED); // no longer registered
                    munmap(a, 2 * pg()); // Unmap of the still registered page only
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // Take the gate first: the counters of a batch are updated under its guard.
    assert_eq!(sink.events().len(), 400);
    let s = mon.stats();
    assert_eq!((s.remove, s.unmap), (200, 200), "{s:?}");
}

// ---------------------------------------------------------------- robustness

#[test]
fn wp_fault_is_resolved_and_counted() {
    let (sink, mon) = start();
    let a = mmap_anon(2);
    let _r = Region(a, 2 * pg());
    mon.register(a, 2 * pg()).unwrap();
    touch(a, 2);
    mon.userfaultfd().write_protect(a, pg(), true).unwrap();
    let ok = finishes_within(Duration::from_secs(5), move || {
        // SAFETY: write to our live mapping; it faults (WP) until the monitor clears it.
        unsafe { std::ptr::write_volatile((a + 8) as *mut u8, 42) };
    });
    assert!(ok, "writer stayed blocked on a WP fault");
    let evs = sink.events();
    assert_eq!(
        evs,
        vec![Event::Pagefault {
            addr: a,
            write: true,
            wp: true
        }]
    );
    let s = mon.stats();
    assert_eq!(
        (s.pagefault, s.pagefaults_woken, s.wake_failures),
        (1, 1, 0)
    );
    // SAFETY: reading back the value written above.
    assert_eq!(unsafe { std::ptr::read_volatile((a + 8) as *const u8) }, 42);
}

extern "C" fn noop_handler(_: c_int) {}

#[test]
fn signals_eintr_do_not_stop_the_monitor() {
    // SAFETY: installs a no-op SIGUSR2 handler without SA_RESTART; sigaction is
    // initialised field by field from a zeroed struct.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = noop_handler as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    let (sink, mon) = start();
    let a = mmap_anon(1);
    let _r = Region(a, pg());
    mon.register(a, pg()).unwrap();
    let tid = mon.thread.as_ref().unwrap().as_pthread_t();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (sent2, stop2) = (Arc::clone(&sent), Arc::clone(&stop));
    let tid_bits = tid as usize;
    let killer = thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            // SAFETY: the monitor thread is alive until `stop` is set (we join the
            // killer before dropping the monitor); SIGUSR2 has a no-op handler.
            unsafe { libc::pthread_kill(tid_bits as libc::pthread_t, libc::SIGUSR2) };
            sent2.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_micros(20));
        }
    });
    // Keep producing events until enough signals were sent and the monitor was
    // interrupted in poll() a few times.
    let t0 = Instant::now();
    let mut n = 0;
    while n < 300
        || sent.load(Ordering::SeqCst) < 2000
        || (mon.stats().poll_eintr < 10 && t0.elapsed() < Duration::from_secs(10))
    {
        touch(a, 1);
        madvise(a, pg(), libc::MADV_DONTNEED);
        n += 1;
        if n % 16 == 0 {
            thread::sleep(Duration::from_micros(200)); // let the monitor sit in poll()
        }
    }
    stop.store(true, Ordering::SeqCst);
    killer.join().unwrap();
    assert_eq!(sink.events().len(), n);
    assert!(mon.is_running());
    let s = mon.stats();
    eprintln!(
        "{} signals sent to the monitor thread, {n} events; stats {s:?}",
        sent.load(Ordering::SeqCst)
    );
    assert!(s.poll_eintr > 0, "poll() was never interrupted");
    assert_eq!((s.poll_errors, s.read_errors), (0, 0));
}

#[test]
fn dev_userfaultfd_path_works_when_accessible() {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
    match uffd_dev(flags) {
        Ok(fd) => {
            let api = api_handshake(&fd, REQUIRED_FEATURES).expect("handshake");
            eprintln!(
                "/dev/userfaultfd works: features {:?}",
                Features::from_bits_retain(api.features)
            );
            assert!(Features::from_bits_retain(api.features).contains(REQUIRED_FEATURES));
        }
        Err(e) => {
            eprintln!("/dev/userfaultfd not usable as uid {}: {e}", uid());
            assert_ne!(uid(), 0, "root should be able to use /dev/userfaultfd");
        }
    }
}

#[test]
fn event_fork_needs_cap_sys_ptrace() {
    let (fd, _) = create_fd().unwrap();
    let r = api_handshake(&fd, REQUIRED_FEATURES | Features::EVENT_FORK);
    eprintln!(
        "requesting EVENT_FORK as uid {}: {:?}",
        uid(),
        r.as_ref().map(|_| ())
    );
    if uid() != 0 {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EPERM));
    }
}

#[test]
fn sink_panic_does_not_leave_threads_blocked() {
    let (sink, mon) = start();
    let a = mmap_anon(2);
    let _r = Region(a, 2 * pg());
    mon.register(a, 2 * pg()).unwrap();
    sink.panic_on_event.store(true, Ordering::SeqCst);
    let ok = finishes_within(Duration::from_secs(5), move || {
        madvise(a, pg(), libc::MADV_DONTNEED);
    });
    assert!(ok);
    madvise(a + pg(), pg(), libc::MADV_DONTNEED);
    assert_eq!(
        sink.events(),
        vec![Event::Remove {
            start: a + pg(),
            end: a + 2 * pg()
        }]
    );
    let s = mon.stats();
    assert_eq!((s.sink_panics, s.dropped_events, s.remove), (1, 1, 2));
    assert!(mon.is_running());
}

#[test]
fn drop_joins_promptly() {
    for registered in [false, true] {
        let (_sink, mon) = start();
        let a = mmap_anon(1);
        if registered {
            mon.register(a, pg()).unwrap();
        }
        thread::sleep(Duration::from_millis(20));
        assert!(mon.is_running());
        let t = Instant::now();
        drop(mon);
        let dt = t.elapsed();
        eprintln!("Monitor drop (registered={registered}) took {dt:?}");
        assert!(dt < Duration::from_millis(100), "{dt:?}");
        // The uffd is closed: the registration is gone, munmap does not block.
        assert!(finishes_within(Duration::from_secs(2), move || munmap(
            a,
            pg()
        )));
    }
}

// ---------------------------------------------------------------- fork

fn wait_child(pid: libc::pid_t, timeout: Duration) -> Option<c_int> {
    let t = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        if t.elapsed() > timeout {
            return None;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn kill_and_reap(pid: libc::pid_t) {
    // SAFETY: SIGKILL to our own child, then reap it.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

#[test]
fn forked_child_is_unmonitored_and_its_munmap_does_not_block() {
    let _l = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (sink, mon) = start();
    let a = mmap_anon(4);
    let _r = Region(a + pg(), 3 * pg()); // page 0 is unmapped below
    mon.register(a, 4 * pg()).unwrap();
    touch(a, 4);
    // SAFETY: after fork the child only calls async-signal-safe functions (alarm,
    // madvise, munmap, getpid via register's owner check, _exit).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: child; raw syscalls only, then _exit.
        unsafe {
            libc::alarm(5); // if anything blocks, SIGALRM kills the child
            let code = if libc::madvise(a as *mut c_void, pg(), libc::MADV_DONTNEED) != 0 {
                2
            } else if libc::munmap(a as *mut c_void, 4 * pg()) != 0 {
                3
            } else {
                0
            };
            libc::_exit(code);
        }
    }
    let status = wait_child(pid, Duration::from_secs(10));
    let Some(status) = status else {
        kill_and_reap(pid);
        panic!("child blocked");
    };
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), 0);
    thread::sleep(Duration::from_millis(20));
    assert!(
        sink.events().is_empty(),
        "child's changes were reported: {:?}",
        sink.events()
    );
    // The parent is still monitored.
    munmap(a, pg());
    assert_eq!(
        sink.events(),
        vec![Event::Unmap {
            start: a,
            end: a + pg()
        }]
    );
}

#[test]
fn forked_child_cannot_use_the_parents_monitor() {
    let _l = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (sink, mon) = start();
    let a = mmap_anon(1);
    // SAFETY: the child calls register (getpid + integer checks, no allocation on the
    // PermissionDenied path), drops nothing, and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = match mon.register(a, pg()) {
            Err(RegisterError::PermissionDenied { .. }) => 0,
            Ok(()) => 1,
            Err(_) => 2,
        };
        // SAFETY: leave the child without running destructors.
        unsafe { libc::_exit(code) };
    }
    let status = wait_child(pid, Duration::from_secs(10)).expect("child blocked");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child register was not refused"
    );
    // The parent's range was not registered by the child.
    munmap(a, pg());
    assert!(sink.events().is_empty());
    sink.clear();
}

/// A forked child that does not exec must not keep the parent's uffd alive: with the
/// atfork handler, dropping the parent's Monitor releases the registrations although
/// the child still runs. `raw_clone = true` forks with a raw clone(SIGCHLD) syscall,
/// which bypasses the atfork handlers and shows the hazard the handler removes.
fn fork_then_drop_monitor(raw_clone: bool) -> bool {
    let _l = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (_sink, mon) = start();
    let a = mmap_anon(2);
    mon.register(a, 2 * pg()).unwrap();
    let pid = if raw_clone {
        // SAFETY: fork-like clone (only the exit signal, null stack = copy of ours);
        // the child only calls async-signal-safe functions below.
        unsafe {
            libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) as libc::pid_t
        }
    } else {
        // SAFETY: as above, with fork().
        unsafe { libc::fork() }
    };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: child; wait to be killed (alarm as a safety net).
        unsafe {
            libc::alarm(20);
            loop {
                libc::pause();
            }
        }
    }
    drop(mon);
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    thread::spawn(move || {
        munmap(a, 2 * pg());
        let _ = tx.send(Instant::now());
    });
    let first = rx.recv_timeout(Duration::from_millis(300));
    let blocked = first.is_err();
    let t_kill = Instant::now();
    kill_and_reap(pid);
    let done = first.or_else(|_| rx.recv_timeout(Duration::from_secs(5)));
    eprintln!(
        "{}: parent munmap after Monitor drop with a live child: blocked={blocked}, \
         completed {:?} after killing the child (total {:?})",
        if raw_clone { "raw clone" } else { "fork()" },
        done.map(|t| t.saturating_duration_since(t_kill)),
        t0.elapsed()
    );
    assert!(done.is_ok(), "munmap still blocked after the child died");
    blocked
}

#[test]
fn forked_child_does_not_keep_parent_registrations_alive() {
    assert!(
        !fork_then_drop_monitor(false),
        "atfork handler did not neutralise the fd"
    );
}

#[test]
fn raw_clone_child_keeps_parent_registrations_alive_hazard() {
    assert!(
        fork_then_drop_monitor(true),
        "expected the hazard (kernel changed?)"
    );
}
