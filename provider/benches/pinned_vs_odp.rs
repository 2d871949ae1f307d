//! Pinned against ODP memory in steady state (every page present), as a
//! paired comparison: each round streams the same work once through a
//! pinned pair of queue pairs and once through an ODP pair, in alternating
//! order, and the ratio is taken per round. On a shared, noisy machine this
//! cancels the drift that makes two separate benchmarks disagree by more
//! than the difference being measured. Both pairs run on the same two
//! devices (sockets, progress threads), so the regions are all that
//! differs between the halves of a round. The median ratio is reported
//! with its 95 % confidence interval (distribution-free, from order
//! statistics): a claim such as "within 5 %" holds when the interval lies
//! within 0.95 - 1.05. `cargo bench -p provider --bench pinned_vs_odp`.

mod harness;

use std::time::{Duration, Instant};

use harness::sorted::Sorted;
use harness::*;
use provider::{Context, SendOp};

const ROUNDS: usize = 101;
const WARMUP: usize = 3;
/// Streams per timed round: 16 MiB, long enough that a scheduling hiccup
/// is a small part of it.
const REPEAT: usize = 16;

/// An operation: its name, how to build it, whether it needs receives.
type Op = (&'static str, fn(&End, usize) -> SendOp, bool);

fn timed(a: &End, b: &End, op: fn(&End, usize) -> SendOp, size: usize, receiver: bool) -> f64 {
    let t = Instant::now();
    for _ in 0..REPEAT {
        stream(a, b, op, size, receiver);
    }
    t.elapsed().as_secs_f64()
}

fn rate(size: usize, secs: f64) -> String {
    let bytes = (REPEAT * messages(size) * size) as f64;
    format!("{:.2} GB/s", bytes / secs / 1e9)
}

fn main() {
    println!(
        "| operation | size | pinned (median) | ODP (median) | ODP / pinned time, median of {ROUNDS} paired rounds | its 95 % interval | quartiles |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let a = Context::open_with_port(LOCALHOST, 0).expect("device");
    let b = Context::open_with_port(LOCALHOST, 0).expect("device");
    let ops: [Op; 3] = [
        ("RDMA WRITE", write_op, false),
        ("RDMA READ", read_op, false),
        ("SEND", send_op, true),
    ];
    for (name, op, receiver) in ops {
        for size in [4096, 65_536, 1 << 20] {
            let (pa, pb) = pair_on(&a, &b, false);
            let (oa, ob) = pair_on(&a, &b, true);
            if receiver {
                prime_receives(&pb, size);
                prime_receives(&ob, size);
            }
            for _ in 0..WARMUP {
                stream(&pa, &pb, op, size, receiver);
                stream(&oa, &ob, op, size, receiver);
            }
            let (mut pinned, mut odp, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                let (p, o) = if round % 2 == 0 {
                    let p = timed(&pa, &pb, op, size, receiver);
                    (p, timed(&oa, &ob, op, size, receiver))
                } else {
                    let o = timed(&oa, &ob, op, size, receiver);
                    (timed(&pa, &pb, op, size, receiver), o)
                };
                pinned.push(p);
                odp.push(o);
                ratio.push(o / p);
            }
            let ratio = Sorted::new(ratio);
            let (q1, q3) = ratio.quartiles();
            let (low, high) = ratio.median_interval();
            println!(
                "| {name} | {size} | {} | {} | {:.3} | {low:.3} - {high:.3} | {q1:.2} - {q3:.2} |",
                rate(size, Sorted::new(pinned).median()),
                rate(size, Sorted::new(odp).median()),
                ratio.median(),
            );
            // Let the devices' threads wind down before the next pairs.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
