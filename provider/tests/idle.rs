//! An idle device costs no CPU: the progress threads look at their sockets
//! without sleeping only for a moment after a packet, and once a stream
//! ends they block again. (A test binary of its own, its tests one at a
//! time, so that the process's CPU time is the running test's.)

mod common;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use common::{End, connect};
use provider::{Mtu, SendOp, SendWr, WcStatus, WorkCompletion};

/// Held by each test: they measure CPU time, so they run one at a time.
static ALONE: Mutex<()> = Mutex::new(());

/// CPU time so far of this process's threads whose name `counts`, from
/// /proc/self/task/*/schedstat (nanoseconds on the CPU, first field).
fn threads_cpu(counts: impl Fn(&str) -> bool) -> Duration {
    let nanos: u64 = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let task = task.ok()?.path();
            let comm = std::fs::read_to_string(task.join("comm")).ok()?;
            if !counts(comm.trim_end()) {
                return None;
            }
            let stat = std::fs::read_to_string(task.join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Duration::from_nanos(nanos)
}

/// CPU time of every thread of this process so far.
fn process_cpu() -> Duration {
    threads_cpu(|_| true)
}

/// CPU time of this process's device threads (named `roce-<address>`).
fn device_threads_cpu() -> Duration {
    threads_cpu(|comm| comm.starts_with("roce-"))
}

/// `count` 64-byte WRITEs from `a` to `b`, 64 at a time.
fn stream(a: &End, b: &End, count: usize) {
    let mut wc = [WorkCompletion::default(); 64];
    for round in 0..count / 64 {
        let sges: Vec<_> = (0..64).map(|k| [a.mr.sge(k * 64, 64)]).collect();
        let wrs: Vec<SendWr<'_>> = sges
            .iter()
            .enumerate()
            .map(|(k, sge)| SendWr {
                wr_id: (round * 64 + k) as u64,
                op: SendOp::Write {
                    remote_addr: b.mr.addr() + (k * 64) as u64,
                    rkey: b.mr.rkey(),
                },
                sg_list: sge,
                signaled: true,
                solicited: false,
            })
            .collect();
        a.qp.post_send(&wrs).unwrap();
        let mut done = 0;
        while done < 64 {
            let n = a.cq.poll_wait(&mut wc, Duration::from_secs(10));
            assert!(n > 0, "no completion within 10 s");
            assert!(wc[..n].iter().all(|c| c.status == WcStatus::Success));
            done += n;
        }
    }
}

#[test]
fn devices_stop_spinning_when_a_stream_ends() {
    let _alone = ALONE.lock().unwrap_or_else(PoisonError::into_inner);
    let (a, b) = (End::new(1 << 20, false), End::new(1 << 20, false));
    connect(&a, &b, Mtu::Mtu4096);
    stream(&a, &b, 20_000);
    // Both progress threads received up to now; give them their spin.
    std::thread::sleep(Duration::from_millis(20));
    let before = process_cpu();
    let idle = Duration::from_millis(500);
    std::thread::sleep(idle);
    let used = process_cpu() - before;
    // Timers wake each progress thread every 20 ms at most: microseconds.
    // A thread left spinning would use the whole interval.
    assert!(
        used < idle / 10,
        "{used:?} of CPU in {idle:?} with nothing to do"
    );
}

#[test]
fn an_off_path_trickle_does_not_keep_the_device_spinning() {
    let _alone = ALONE.lock().unwrap_or_else(PoisonError::into_inner);
    // An off-path host (any address, no connection) sends a junk datagram
    // every 30 us, inside the progress thread's spin window: only packets
    // a queue pair accepts may keep it polling, so it still sleeps
    // between these (one wake-up each), instead of spinning throughout.
    let target = End::new(4096, false);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = target.ctx.local_addr();
    std::thread::sleep(Duration::from_millis(20));
    let (before, start) = (device_threads_cpu(), std::time::Instant::now());
    let mut next = start;
    while start.elapsed() < Duration::from_millis(400) {
        sock.send_to(&[0u8; 64], dest).unwrap();
        next += Duration::from_micros(30);
        while std::time::Instant::now() < next {
            std::hint::spin_loop();
        }
    }
    let (used, wall) = (device_threads_cpu() - before, start.elapsed());
    eprintln!("device threads: {used:?} of CPU in {wall:?}");
    let stats = target.ctx.stats();
    let refused = stats.rx_malformed + stats.rx_bad_icrc;
    assert!(refused > 1000, "the datagrams arrived ({refused} refused)");
    assert!(
        used < wall * 6 / 10,
        "the device threads used {used:?} of {wall:?} on junk"
    );
}
