//! What the loopback benchmark and the pinned-versus-ODP comparison share:
//! two connected ends and a perftest-style stream of work requests.

#![allow(dead_code)] // Each user takes a different part.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub mod kernel_udp;
pub mod sorted;

use odp::{AddressSpace, Mapping};
use provider::net::{OutPacket, RecvSlot, RoceSocket, SocketConfig};
use provider::{
    AccessFlags, CompletionQueue, Context, MemoryRegion, Mtu, ProtectionDomain, QpCaps, QueuePair,
    RecvWr, SendOp, SendWr, Sge, WcStatus, WorkCompletion,
};

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Bytes moved per iteration, at least (one message if larger).
pub const MIN_BYTES: usize = 1 << 20;
/// Work requests outstanding at most, like perftest's default tx depth.
pub const TX_DEPTH: usize = 128;
/// Registered bytes per side.
pub const REGION: usize = 8 << 20;
/// perftest's cycle buffer (`ib_write_bw` and this project's `write_bw`
/// place messages of up to a page within one page on both ends): the
/// message-rate stream measures the device rather than the memory system.
pub const CYCLE_BUFFER: usize = 4096;
pub const MTU: usize = 4096;

pub fn messages(size: usize) -> usize {
    (MIN_BYTES / size).max(1)
}

/// One side: device, registered memory, queue pair.
pub struct End {
    pub ctx: Context,
    _pd: ProtectionDomain,
    pub cq: CompletionQueue,
    pub qp: QueuePair,
    pub mr: MemoryRegion,
    _buf: Mapping,
}

impl End {
    /// A device on 127.0.0.1 with [`REGION`] bytes registered, pinned or
    /// on demand, and a queue pair sized for [`TX_DEPTH`] streams.
    pub fn new(odp: bool) -> End {
        End::on(&Context::open_with_port(LOCALHOST, 0).expect("device"), odp)
    }

    /// Like [`End::new`], on an open device (which several ends may
    /// share: their queue pairs then use the same sockets and threads).
    pub fn on(ctx: &Context, odp: bool) -> End {
        let ctx = ctx.clone();
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
            access |= AccessFlags::ON_DEMAND;
        }
        // SAFETY: the mapping outlives the region (field order) and backs
        // no Rust objects.
        let mr = unsafe { pd.reg_mr(buf.addr(), REGION, access) }.unwrap();
        End {
            ctx,
            _pd: pd,
            cq,
            qp,
            mr,
            _buf: buf,
        }
    }
}

/// Two ends, each on a device of its own, connected.
pub fn pair(odp: bool) -> (End, End) {
    connect(End::new(odp), End::new(odp))
}

/// Two ends on the devices `a` and `b`, connected.
pub fn pair_on(a: &Context, b: &Context, odp: bool) -> (End, End) {
    connect(End::on(a, odp), End::on(b, odp))
}

fn connect(a: End, b: End) -> (End, End) {
    a.qp.connect(&b.qp.endpoint(Mtu::Mtu4096)).unwrap();
    b.qp.connect(&a.qp.endpoint(Mtu::Mtu4096)).unwrap();
    (a, b)
}

/// Waits for completions on `cq`; returns how many, all successful.
pub fn reap(cq: &CompletionQueue, wc: &mut [WorkCompletion]) -> usize {
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
/// Messages go to consecutive places in the whole [`REGION`] on both ends.
pub fn stream(a: &End, b: &End, op: fn(&End, usize) -> SendOp, size: usize, receiver: bool) {
    stream_count(a, b, op, size, messages(size), receiver, REGION);
}

/// [`stream`] of `count` messages, placed in turn within the first `span`
/// bytes of each end's region.
pub fn stream_count(
    a: &End,
    b: &End,
    op: fn(&End, usize) -> SendOp,
    size: usize,
    count: usize,
    receiver: bool,
    span: usize,
) {
    // No more places than messages: the stream builds each place's
    // request once (as perftest builds its work requests, the loop only
    // picks them), so a short stream over a wide span does not build
    // places it never uses.
    let slots = (span.min(REGION) / size).clamp(1, count.max(1));
    let sges: Vec<[Sge; 1]> = (0..slots)
        .map(|slot| [a.mr.sge((slot * size) as u64, size as u32)])
        .collect();
    let ops: Vec<SendOp> = (0..slots).map(|slot| op(b, slot * size)).collect();
    let mut wc = vec![WorkCompletion::default(); 64];
    let mut rwc = vec![WorkCompletion::default(); 256];
    let (mut posted, mut done, mut received) = (0, 0, 0);
    let mut batch: Vec<SendWr<'_>> = Vec::with_capacity(64);
    while done < count {
        while posted < count && posted - done < TX_DEPTH && batch.len() < 64 {
            let slot = posted % slots;
            batch.push(SendWr {
                wr_id: posted as u64,
                op: ops[slot],
                sg_list: &sges[slot],
                signaled: true,
                solicited: false,
            });
            posted += 1;
        }
        if !batch.is_empty() {
            a.qp.post_send(&batch).unwrap();
            batch.clear();
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
pub fn repost(b: &End, used: usize, size: usize) {
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

pub fn prime_receives(b: &End, size: usize) {
    repost(b, 2 * TX_DEPTH, size);
}

pub fn write_op(b: &End, at: usize) -> SendOp {
    SendOp::Write {
        remote_addr: b.mr.addr() + at as u64,
        rkey: b.mr.rkey(),
    }
}

pub fn read_op(b: &End, at: usize) -> SendOp {
    SendOp::Read {
        remote_addr: b.mr.addr() + at as u64,
        rkey: b.mr.rkey(),
    }
}

pub fn send_op(_: &End, _: usize) -> SendOp {
    SendOp::Send
}

/// The bare transport: datagrams of an RDMA WRITE's packets for messages of
/// `size` bytes, sent in batches of 64 with at most `TX_DEPTH` packets in
/// flight (the RC window), received by a thread of their own.
pub struct BareUdp {
    tx: RoceSocket,
    dest: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    rx: Option<JoinHandle<()>>,
}

impl BareUdp {
    pub fn new() -> BareUdp {
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
    /// RETH and ICRC, like RDMA WRITE packets), at most `window` in flight,
    /// and waits until all arrived.
    pub fn run(&self, packets: usize, payload: usize, window: usize, bufs: &mut [Vec<u8>]) {
        self.run_lengths(&[12 + 16 + payload + 4], packets, window, bufs);
    }

    /// Sends `messages` messages of `per_message` datagrams each, laid out
    /// as the device sends an RDMA WRITE of that many full packets (FIRST
    /// and ONLY with a RETH, MIDDLE and LAST without; [`write_sequence`]),
    /// in the same order and through the same GSO planner, at most
    /// `window` datagrams in flight; waits until all arrived.
    pub fn run_messages(
        &self,
        messages: usize,
        per_message: usize,
        window: usize,
        bufs: &mut [Vec<u8>],
    ) {
        let lens = write_sequence(per_message);
        self.run_lengths(&lens, messages * per_message, window, bufs);
    }

    /// Sends `packets` datagrams whose lengths repeat `lens` (buffer `i`
    /// of a batch is sent with length `lens[i % lens.len()]`), at most
    /// `window` in flight, and waits until all arrived.
    fn run_lengths(&self, lens: &[usize], packets: usize, window: usize, bufs: &mut [Vec<u8>]) {
        windowed(&self.received, lens, packets, window, bufs, |batch| {
            let mut batch: Vec<OutPacket<'_>> = batch
                .iter_mut()
                .enumerate()
                .map(|(i, b)| OutPacket::new(self.dest, &mut b[..lens[i % lens.len()]]))
                .collect();
            send_all(&self.tx, &mut batch);
        });
    }
}

/// Sends `packets` datagrams in batches of `bufs.len()` rounded down to
/// whole cycles of `lens` (`send` sends one batch's buffers, buffer `i`
/// with length `lens[i % lens.len()]`), at most `window` ahead of what
/// `received` counts; waits until `received` counts all of them.
pub fn windowed(
    received: &AtomicU64,
    lens: &[usize],
    packets: usize,
    window: usize,
    bufs: &mut [Vec<u8>],
    mut send: impl FnMut(&mut [Vec<u8>]),
) {
    let cycle = lens.len();
    let batch_len = bufs.len() / cycle * cycle;
    let start = received.load(Ordering::Acquire) as usize;
    let mut sent = 0;
    while sent < packets {
        let n = (packets - sent).min(batch_len);
        while sent + n - (received.load(Ordering::Acquire) as usize - start) > window {
            std::thread::yield_now();
        }
        send(&mut bufs[..n]);
        sent += n;
    }
    while (received.load(Ordering::Acquire) as usize) < start + packets {
        std::thread::yield_now();
    }
}

/// Sends every packet of `batch` from `tx` (the socket may take them over
/// several calls).
pub fn send_all(tx: &RoceSocket, batch: &mut [OutPacket<'_>]) {
    let mut at = 0;
    while at < batch.len() {
        at += tx.send_batch(&mut batch[at..]).unwrap();
    }
}

/// The datagram lengths (BTH, RETH where the opcode has one, an MTU of
/// payload, ICRC) of an RDMA WRITE of `packets` full packets.
pub fn write_sequence(packets: usize) -> Vec<usize> {
    let with_reth = 12 + 16 + MTU + 4;
    let without = 12 + MTU + 4;
    (0..packets)
        .map(|i| if i == 0 { with_reth } else { without })
        .collect()
}

/// 64 buffers for [`BareUdp::run_messages`] with messages of `packets`
/// packets (64 rounded down to whole messages): each the BTH of its place
/// in the message (ONLY, or FIRST, MIDDLE, LAST), its RETH if it has one,
/// and room for an MTU of payload.
pub fn write_message_buffers(packets: usize) -> Vec<Vec<u8>> {
    let whole = 64 / packets * packets;
    (0..whole)
        .map(|i| {
            let place = i % packets;
            let opcode = match (packets, place) {
                (1, _) => 0x0a,
                (_, 0) => 0x06,
                (p, q) if q == p - 1 => 0x08,
                _ => 0x07,
            };
            let mut b = vec![0u8; 12 + 16 + MTU + 4];
            b[0] = opcode;
            b[2..4].copy_from_slice(&0xffffu16.to_be_bytes());
            b[7] = 1;
            b
        })
        .collect()
}

impl Drop for BareUdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(rx) = self.rx.take() {
            let _ = rx.join();
        }
    }
}

/// 64 buffers for [`BareUdp::run`], each a WRITE_ONLY BTH (opcode 0x0a,
/// version 0) with a RETH and room for an MTU of payload.
pub fn write_only_buffers() -> Vec<Vec<u8>> {
    write_message_buffers(1)
}
