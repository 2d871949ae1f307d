//! The largest READs the protocol allows, between two devices in this
//! process: a READ of 1 GiB at path MTU 4096 and one of 2 GiB (2^31 bytes,
//! the IBTA maximum) at MTU 256, whose 2^23 response PSNs are half the PSN
//! space. Each must arrive byte for byte while a second queue pair between
//! the same devices keeps completing small WRITEs, and the process's peak
//! resident memory may grow by the destination's pages plus less than
//! 64 MiB: the responder produces responses as the send path takes them,
//! never the whole reply at once.
//!
//! Attacker position: a legitimate peer asking for as much as it may.
//!
//! Slow (gigabytes through the engine): ignored by default, run in release
//! by `.ci/run`:
//! `cargo test --release -p provider --test large_reads -- --ignored --nocapture`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{End, connect, send, status_kib};
use odp::AddressSpace;
use provider::{Mtu, SendOp, WcStatus, WorkCompletion};

const GIB: usize = 1 << 30;
/// Alternating READ and WRITE rounds for the printed comparison.
const COMPARISON_ROUNDS: usize = 3;

/// Resets the peak resident size to the current one.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// Fills `end`'s buffer with a position-dependent pattern (8 bytes of
/// offset per 8 bytes, so a misplaced block shows).
fn fill(end: &End) {
    let words = end.buf.len() / 8;
    // SAFETY: the test's own mapping, not yet used by the device.
    let slice = unsafe { std::slice::from_raw_parts_mut(end.buf.ptr().cast::<u64>(), words) };
    for (i, w) in slice.iter_mut().enumerate() {
        *w = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Drops every page of `end`'s buffer (`MADV_DONTNEED`, announced to the
/// device, which drops its translations): the next access faults in zeroed
/// pages, as on a fresh mapping.
fn discard(end: &End) {
    // SAFETY: the test's own mapping; nothing reads it until it is
    // written again.
    unsafe {
        AddressSpace::process()
            .madvise(end.buf.ptr().cast(), end.buf.len(), libc::MADV_DONTNEED)
            .unwrap();
    }
    assert!(end.get(0, 8) == [0; 8]);
}

fn same(a: &End, b: &End, len: usize) -> bool {
    // SAFETY: both mappings are the tests' own and at least `len` long; the
    // device is idle.
    unsafe {
        std::slice::from_raw_parts(a.buf.ptr(), len) == std::slice::from_raw_parts(b.buf.ptr(), len)
    }
}

/// Small WRITEs on their own queue pair until `stop`; counts completions.
fn background_writes(stop: Arc<AtomicBool>, done: Arc<AtomicU64>, mtu: Mtu) {
    let (a, b) = (End::new(4096, true), End::new(4096, true));
    connect(&a, &b, mtu);
    let mut wc = [WorkCompletion::default()];
    while !stop.load(Ordering::Relaxed) {
        let op = SendOp::Write {
            remote_addr: b.mr.addr(),
            rkey: b.mr.rkey(),
        };
        send(&a.qp, 1, op, a.mr.sge(0, 8));
        assert_eq!(a.cq.poll_wait(&mut wc, Duration::from_secs(30)), 1);
        assert_eq!(wc[0].status, WcStatus::Success);
        done.fetch_add(1, Ordering::Relaxed);
    }
}

fn transfer(from: &End, op: SendOp, len: usize) -> Duration {
    let start = Instant::now();
    send(&from.qp, 7, op, from.mr.sge(0, len as u32));
    let mut wc = [WorkCompletion::default()];
    assert_eq!(from.cq.poll_wait(&mut wc, Duration::from_secs(600)), 1);
    assert_eq!(wc[0].status, WcStatus::Success, "{:?}", wc[0]);
    start.elapsed()
}

fn largest_read(len: usize, mtu: Mtu) {
    // `reader` posts the READ of `source`'s memory.
    let reader = End::new(len, true);
    let source = End::new(len, true);
    connect(&reader, &source, mtu);
    fill(&source);
    // Both timed transfers below read `source` through translations the
    // device already holds and write into discarded (fresh, zeroed) pages
    // of `reader`: a first WRITE builds the source's translations.
    let write = SendOp::Write {
        remote_addr: reader.mr.addr(),
        rkey: reader.mr.rkey(),
    };
    transfer(&source, write, len);
    discard(&reader);

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let bg = {
        let (stop, writes) = (Arc::clone(&stop), Arc::clone(&writes));
        std::thread::spawn(move || background_writes(stop, writes, mtu))
    };
    while writes.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let rss_before = status_kib("VmRSS:");
    reset_peak();
    let writes_before = writes.load(Ordering::Relaxed);
    let read = SendOp::Read {
        remote_addr: source.mr.addr(),
        rkey: source.mr.rkey(),
    };
    let read_time = transfer(&reader, read, len);
    let writes_during = writes.load(Ordering::Relaxed) - writes_before;
    let peak = status_kib("VmHWM:");
    assert!(same(&reader, &source, len), "READ of {len} bytes not exact");
    let growth_mib = (peak.saturating_sub(rss_before) / 1024) as usize;
    let extra_mib = growth_mib.saturating_sub(len >> 20);
    println!(
        "READ {} MiB at MTU {}: {:.2} s, {} small WRITEs completed meanwhile, \
         peak RSS growth {} MiB ({} MiB beyond the destination)",
        len >> 20,
        mtu.bytes(),
        read_time.as_secs_f64(),
        writes_during,
        growth_mib,
        extra_mib
    );
    assert!(writes_during > 0, "the other queue pair made no progress");
    assert!(
        extra_mib < 64,
        "the responder's memory grew by {extra_mib} MiB"
    );
    compare_with_writes(&reader, &source, len, read_time);
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
}

/// The same bytes as WRITEs, under the same background load, for
/// comparison (printed, not asserted: the machine's speed drifts, so
/// READs and WRITEs alternate and the median of the per-round ratios is
/// reported). Every transfer goes into discarded pages of `reader`, so
/// that each first-touches every page (the faults, and the kernel zeroing
/// a gigabyte, cost about as much as the transfer itself).
fn compare_with_writes(reader: &End, source: &End, len: usize, first_read: Duration) {
    let read = SendOp::Read {
        remote_addr: source.mr.addr(),
        rkey: source.mr.rkey(),
    };
    let write = SendOp::Write {
        remote_addr: reader.mr.addr(),
        rkey: reader.mr.rkey(),
    };
    let mut read_time = first_read;
    let mut ratios = Vec::new();
    for round in 0..COMPARISON_ROUNDS {
        if round > 0 {
            discard(reader);
            read_time = transfer(reader, read, len);
            assert!(same(reader, source, len), "READ of {len} bytes not exact");
        }
        discard(reader);
        let write_time = transfer(source, write, len);
        assert!(same(reader, source, len), "WRITE of {len} bytes not exact");
        println!(
            "  round {round}: READ {:.2} s, WRITE {:.2} s, READ/WRITE {:.2}",
            read_time.as_secs_f64(),
            write_time.as_secs_f64(),
            read_time.as_secs_f64() / write_time.as_secs_f64()
        );
        ratios.push(read_time.as_secs_f64() / write_time.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "READ/WRITE time of {} MiB, median of {COMPARISON_ROUNDS} rounds: {:.2}",
        len >> 20,
        ratios[ratios.len() / 2]
    );
}

#[test]
#[ignore = "slow: moves 3 GiB; .ci/run runs it in release"]
fn the_largest_reads_are_exact_bounded_and_leave_other_queue_pairs_running() {
    largest_read(GIB, Mtu::Mtu4096);
    largest_read(2 * GIB, Mtu::Mtu256);
}
