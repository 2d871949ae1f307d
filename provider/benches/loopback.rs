//! Loopback benchmarks of the soft-RoCE device, perftest style: two
//! devices on 127.0.0.1 (each with its progress thread), one RC queue pair
//! each, path MTU 4096, up to [`TX_DEPTH`] work requests outstanding.
//! `cargo bench -p provider`.
//!
//! - `write`, `read`, `send`: bandwidth for message sizes from 64 B to
//!   4 MiB, with pinned and with ODP memory on both sides (ODP in steady
//!   state: the pages are present after the first iteration). Each
//!   iteration moves at least [`MIN_BYTES`].
//! - `latency`: one signaled 8-byte RDMA WRITE, post to completion (a full
//!   round trip: the WRITE and its ACK).
//! - `udp`: the bare transport with the same packets, sizes, batching and
//!   window, without the RC engine: one thread sends RDMA-WRITE-sized
//!   datagrams through the device's socket type, another receives them.
//!   The physical limit of this design on this machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use divan::Bencher;
use divan::counter::BytesCount;
use provider::net::{OutPacket, RecvSlot, RoceSocket, SocketConfig};
use provider::{SendOp, SendWr, WorkCompletion};

mod harness;

use harness::*;

fn main() {
    divan::main();
}

const SIZES: [usize; 6] = [64, 1024, 4096, 65_536, 1 << 20, 4 << 20];

fn bytes(size: usize) -> BytesCount {
    BytesCount::new(messages(size) * size)
}

fn bandwidth(bencher: Bencher, odp: bool, op: fn(&End, usize) -> SendOp, size: usize) {
    let (a, b) = pair(odp);
    let receiver = matches!(op(&b, 0), SendOp::Send);
    if receiver {
        prime_receives(&b, size);
    }
    bencher
        .counter(bytes(size))
        .bench_local(|| stream(&a, &b, op, size, receiver));
}

mod write {
    use super::*;

    #[divan::bench(args = SIZES, sample_count = 30, sample_size = 1)]
    fn pinned(bencher: Bencher, size: usize) {
        bandwidth(bencher, false, write_op, size);
    }

    #[divan::bench(args = SIZES, sample_count = 30, sample_size = 1)]
    fn odp(bencher: Bencher, size: usize) {
        bandwidth(bencher, true, write_op, size);
    }
}

mod read {
    use super::*;

    #[divan::bench(args = SIZES, sample_count = 30, sample_size = 1)]
    fn pinned(bencher: Bencher, size: usize) {
        bandwidth(bencher, false, read_op, size);
    }

    #[divan::bench(args = SIZES, sample_count = 30, sample_size = 1)]
    fn odp(bencher: Bencher, size: usize) {
        bandwidth(bencher, true, read_op, size);
    }
}

mod send {
    use super::*;

    #[divan::bench(args = SIZES, sample_count = 30, sample_size = 1)]
    fn pinned(bencher: Bencher, size: usize) {
        bandwidth(bencher, false, send_op, size);
    }

    #[divan::bench(args = SIZES, sample_count = 30, sample_size = 1)]
    fn odp(bencher: Bencher, size: usize) {
        bandwidth(bencher, true, send_op, size);
    }
}

mod latency {
    use super::*;

    fn write_8_bytes(bencher: Bencher, odp: bool) {
        let (a, b) = pair(odp);
        let mut wc = [WorkCompletion::default()];
        let sge = [a.mr.sge(0, 8)];
        bencher.bench_local(|| {
            a.qp.post_send(&[SendWr {
                wr_id: 1,
                op: write_op(&b, 0),
                sg_list: &sge,
                signaled: true,
                solicited: false,
            }])
            .unwrap();
            reap(&a.cq, &mut wc);
        });
    }

    #[divan::bench(sample_count = 200, sample_size = 10)]
    fn write_8_b_pinned(bencher: Bencher) {
        write_8_bytes(bencher, false);
    }

    #[divan::bench(sample_count = 200, sample_size = 10)]
    fn write_8_b_odp(bencher: Bencher) {
        write_8_bytes(bencher, true);
    }

    /// The bare transport's round trip: an 8-byte WRITE-sized datagram to
    /// a thread that answers with an ACK-sized one.
    #[divan::bench(sample_count = 200, sample_size = 10)]
    fn udp_round_trip(bencher: Bencher) {
        let config = SocketConfig::default();
        let here = RoceSocket::bind_with(SocketAddr::new(LOCALHOST, 0), config.clone()).unwrap();
        let there = RoceSocket::bind_with(SocketAddr::new(LOCALHOST, 0), config).unwrap();
        let (to, back) = (there.local_addr(), here.local_addr());
        let stop = Arc::new(AtomicBool::new(false));
        let halt = Arc::clone(&stop);
        let echo = std::thread::spawn(move || {
            let mut slot = [RecvSlot::new(4096)];
            let mut ack = [0u8; 12 + 4 + 4];
            ack[0] = 0x11;
            while !halt.load(Ordering::Relaxed) {
                if there
                    .recv_batch(&mut slot, Some(Duration::from_millis(20)))
                    .unwrap()
                    > 0
                {
                    there
                        .send_batch(&mut [OutPacket::new(back, &mut ack)])
                        .unwrap();
                }
            }
        });
        let mut write = [0u8; 12 + 16 + 8 + 4];
        write[0] = 0x0a;
        let mut slot = [RecvSlot::new(4096)];
        bencher.bench_local(|| {
            here.send_batch(&mut [OutPacket::new(to, &mut write)])
                .unwrap();
            while here
                .recv_batch(&mut slot, Some(Duration::from_secs(10)))
                .unwrap()
                == 0
            {}
        });
        stop.store(true, Ordering::Relaxed);
        echo.join().unwrap();
    }
}

/// Bare UDP for messages of `size`: the same number of datagrams, of the
/// same sizes, as the RDMA WRITEs of `write::*` put on the wire.
#[divan::bench(args = SIZES, sample_count = 30, sample_size = 1)]
fn udp(bencher: Bencher, size: usize) {
    let udp = BareUdp::new();
    let payload = size.min(MTU);
    let packets = messages(size) * size.div_ceil(MTU);
    let mut bufs = write_only_buffers();
    bencher
        .counter(bytes(size))
        .bench_local(|| udp.run(packets, payload, TX_DEPTH, &mut bufs));
}
