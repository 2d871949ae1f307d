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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use divan::Bencher;
use divan::counter::BytesCount;
use odp::{AddressSpace, Mapping};
use provider::net::{OutPacket, RecvSlot, RoceSocket, SocketConfig};
use provider::{
    AccessFlags, CompletionQueue, Context, MemoryRegion, Mtu, ProtectionDomain, QpCaps, QueuePair,
    RecvWr, SendOp, SendWr, WcStatus, WorkCompletion,
};

fn main() {
    divan::main();
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const SIZES: [usize; 6] = [64, 1024, 4096, 65_536, 1 << 20, 4 << 20];
/// Bytes moved per iteration, at least (one message if larger).
const MIN_BYTES: usize = 1 << 20;
/// Work requests outstanding at most, like perftest's default tx depth.
const TX_DEPTH: usize = 128;
/// Registered bytes per side.
const REGION: usize = 8 << 20;
const MTU: usize = 4096;

fn messages(size: usize) -> usize {
    (MIN_BYTES / size).max(1)
}

fn bytes(size: usize) -> BytesCount {
    BytesCount::new(messages(size) * size)
}

/// One side: device, registered memory, queue pair.
struct End {
    _ctx: Context,
    _pd: ProtectionDomain,
    cq: CompletionQueue,
    qp: QueuePair,
    mr: MemoryRegion,
    _buf: Mapping,
}

impl End {
    fn new(odp: bool) -> End {
        let ctx = Context::open_with_port(LOCALHOST, 0).expect("device");
        let pd = ctx.alloc_pd().unwrap();
        let cq = ctx.create_cq(8192).unwrap();
        let qp = pd
            .create_qp(&cq, &cq)
            .caps(QpCaps {
                max_send_wr: 4096,
                max_recv_wr: 4096,
            })
            // As perftest does: the device's limit of outstanding READs.
            .max_rd_atomic(128)
            .build()
            .unwrap();
        let buf = AddressSpace::process().map_anonymous(REGION, 0).unwrap();
        // Present pages for both kinds, so that ODP is measured in its
        // steady state from the start.
        // SAFETY: a fresh mapping owned by this struct.
        unsafe { std::ptr::write_bytes(buf.ptr(), 1, REGION) };
        let mut access =
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
        if odp {
            access = access | AccessFlags::ON_DEMAND;
        }
        // SAFETY: the mapping outlives the region (field order) and backs
        // no Rust objects.
        let mr = unsafe { pd.reg_mr(buf.addr(), REGION, access) }.unwrap();
        End {
            _ctx: ctx,
            _pd: pd,
            cq,
            qp,
            mr,
            _buf: buf,
        }
    }
}

fn pair(odp: bool) -> (End, End) {
    let (a, b) = (End::new(odp), End::new(odp));
    a.qp.connect(&b.qp.endpoint(Mtu::Mtu4096)).unwrap();
    b.qp.connect(&a.qp.endpoint(Mtu::Mtu4096)).unwrap();
    (a, b)
}

/// Waits for completions on `cq`; returns how many, all successful.
fn reap(cq: &CompletionQueue, wc: &mut [WorkCompletion]) -> usize {
    let n = cq.poll_wait(wc, Duration::from_secs(10));
    assert!(n > 0, "no completion within 10 s");
    for c in &wc[..n] {
        assert_eq!(c.status, WcStatus::Success);
    }
    n
}

/// Posts `count` messages of `size` bytes from `a`, at most [`TX_DEPTH`]
/// outstanding, and waits for all of them. With `receiver`, `b`'s receive
/// completions are drained and its receives reposted as they are used.
fn stream(a: &End, b: &End, op: fn(&End, usize) -> SendOp, size: usize, receiver: bool) {
    let count = messages(size);
    let slots = REGION / size;
    let mut wc = vec![WorkCompletion::default(); 64];
    let mut rwc = vec![WorkCompletion::default(); 256];
    let (mut posted, mut done, mut received) = (0, 0, 0);
    let mut sges = Vec::with_capacity(64);
    while done < count {
        let first = posted;
        while posted < count && posted - done < TX_DEPTH && sges.len() < 64 {
            sges.push([a.mr.sge(((posted % slots) * size) as u64, size as u32)]);
            posted += 1;
        }
        if !sges.is_empty() {
            let batch: Vec<SendWr<'_>> = sges
                .iter()
                .enumerate()
                .map(|(k, sge)| SendWr {
                    wr_id: (first + k) as u64,
                    op: op(b, ((first + k) % slots) * size),
                    sg_list: sge,
                    signaled: true,
                    solicited: false,
                })
                .collect();
            a.qp.post_send(&batch).unwrap();
            sges.clear();
        }
        if receiver {
            loop {
                let n = b.cq.poll(&mut rwc);
                if n == 0 {
                    break;
                }
                received += n;
                repost(b, n, size);
            }
        }
        done += reap(&a.cq, &mut wc);
    }
    while receiver && received < count {
        let n = reap(&b.cq, &mut rwc);
        received += n;
        repost(b, n, size);
    }
}

/// Posts `used` receives of `size` bytes on `b`, replacing those just
/// consumed.
fn repost(b: &End, used: usize, size: usize) {
    let sge = [b.mr.sge(0, size as u32)];
    let wrs: Vec<RecvWr<'_>> = (0..used)
        .map(|_| RecvWr {
            wr_id: 0,
            sg_list: &sge,
        })
        .collect();
    if !wrs.is_empty() {
        b.qp.post_recv(&wrs).unwrap();
    }
}

fn prime_receives(b: &End, size: usize) {
    repost(b, 2 * TX_DEPTH, size);
}

fn write_op(b: &End, at: usize) -> SendOp {
    SendOp::Write {
        remote_addr: b.mr.addr() + at as u64,
        rkey: b.mr.rkey(),
    }
}

fn read_op(b: &End, at: usize) -> SendOp {
    SendOp::Read {
        remote_addr: b.mr.addr() + at as u64,
        rkey: b.mr.rkey(),
    }
}

fn send_op(_: &End, _: usize) -> SendOp {
    SendOp::Send
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

/// The bare transport: datagrams of an RDMA WRITE's packets for messages of
/// `size` bytes, sent in batches of 64 with at most `TX_DEPTH` packets in
/// flight (the RC window), received by a thread of their own.
struct BareUdp {
    tx: RoceSocket,
    dest: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    rx: Option<JoinHandle<()>>,
}

impl BareUdp {
    fn new() -> BareUdp {
        // The device's own socket options.
        let config = SocketConfig {
            gro: true,
            recv_buffer: Some(8 << 20),
            send_buffer: Some(8 << 20),
            ..SocketConfig::default()
        };
        let tx = RoceSocket::bind_with(SocketAddr::new(LOCALHOST, 0), config.clone()).unwrap();
        let rx = RoceSocket::bind_with(SocketAddr::new(LOCALHOST, 0), config).unwrap();
        let dest = rx.local_addr();
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (Arc::clone(&received), Arc::clone(&stop));
        let rx = std::thread::spawn(move || {
            let mut slots: Vec<RecvSlot> = (0..64).map(|_| RecvSlot::new(65_536)).collect();
            while !halt.load(Ordering::Relaxed) {
                let n = rx
                    .recv_batch(&mut slots, Some(Duration::from_millis(20)))
                    .unwrap();
                let mut good = 0;
                for slot in &slots[..n] {
                    good += slot.packets().filter(|(_, v)| v.is_good()).count() as u64;
                }
                count.fetch_add(good, Ordering::Release);
            }
        });
        BareUdp {
            tx,
            dest,
            received,
            stop,
            rx: Some(rx),
        }
    }

    /// Sends `packets` datagrams of `payload` bytes of data (plus BTH,
    /// RETH and ICRC, like RDMA WRITE packets) and waits until all arrived.
    fn run(&self, packets: usize, payload: usize, bufs: &mut [Vec<u8>]) {
        let start = self.received.load(Ordering::Acquire) as usize;
        let mut sent = 0;
        while sent < packets {
            let n = (packets - sent).min(bufs.len());
            while sent + n - (self.received.load(Ordering::Acquire) as usize - start) > TX_DEPTH {
                std::thread::yield_now();
            }
            let mut batch: Vec<OutPacket<'_>> = bufs[..n]
                .iter_mut()
                .map(|b| OutPacket::new(self.dest, &mut b[..12 + 16 + payload + 4]))
                .collect();
            let mut at = 0;
            while at < n {
                at += self.tx.send_batch(&mut batch[at..]).unwrap();
            }
            sent += n;
        }
        while (self.received.load(Ordering::Acquire) as usize) < start + packets {
            std::thread::yield_now();
        }
    }
}

impl Drop for BareUdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(rx) = self.rx.take() {
            let _ = rx.join();
        }
    }
}

/// Bare UDP for messages of `size`: the same number of datagrams, of the
/// same sizes, as the RDMA WRITEs of `write::*` put on the wire.
#[divan::bench(args = SIZES, sample_count = 30, sample_size = 1)]
fn udp(bencher: Bencher, size: usize) {
    let udp = BareUdp::new();
    let payload = size.min(MTU);
    let packets = messages(size) * size.div_ceil(MTU);
    let mut bufs: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            // A WRITE_ONLY BTH (opcode 0x0a, version 0) with a RETH.
            let mut b = vec![0u8; 12 + 16 + MTU + 4];
            b[0] = 0x0a;
            b[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
            b[7] = 1;
            b
        })
        .collect();
    bencher
        .counter(bytes(size))
        .bench_local(|| udp.run(packets, payload, &mut bufs));
}
