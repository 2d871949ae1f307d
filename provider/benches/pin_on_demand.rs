//! Pin-on-demand against a pinned registration of the same range, on a
//! real verbs device (feature `rdma-core`; it measures nothing without
//! one, so it runs in the rxe lab's guest):
//!
//! ```sh
//! CARGO_TARGET_DIR=target/rdma-core cargo bench -p provider --features rdma-core --bench pin_on_demand --no-run
//! bash tests/lab/guest-exec.sh --push target/rdma-core/release/deps/pin_on_demand-<hash> -- ./pin_on_demand-<hash> --bench
//! ```
//!
//! Paired rounds, alternating which goes first, ratio per round (the
//! guest's speed drifts):
//! - *first use*: register `len` bytes and WRITE all of them once to a
//!   pinned target through a loopback queue pair. Pinned registration pins
//!   every page in `reg_mr`; pin-on-demand registers nothing there and
//!   pins 2 MiB chunks as the WRITEs reach them.
//! - *steady state*: 64 KiB WRITEs from a region whose chunks are all
//!   registered: the cost of resolving SGEs to chunk keys at each post.

use std::time::{Duration, Instant};

use odp::{AddressSpace, Mapping};
use provider::{
    AccessFlags, CompletionQueue, Context, DeviceBackend, MemoryRegion, MrOptions, Mtu, OdpMode,
    ProtectionDomain, QueuePair, SendOp, SendWr, WcStatus, WorkCompletion, devices,
};

mod harness;

use harness::sorted::Sorted;

const ROUNDS: usize = 7;
const WRITE_CHUNK: usize = 1 << 20;
const STEADY_SIZE: usize = 64 << 10;
const STEADY_WRITES: usize = 200;

/// `len` bytes of anonymous memory with every page touched (so CPU page
/// faults are in neither measurement), unmapped on drop.
fn buffer(len: usize) -> Mapping {
    let buf = AddressSpace::process()
        .map_anonymous(len, 0)
        .expect("map the buffer");
    // SAFETY: the mapping is ours, `len` bytes, readable and writable, and
    // no region covers it yet.
    unsafe { std::ptr::write_bytes(buf.ptr(), 0x5a, len) };
    buf
}

/// Registers `buf` for local access and remote WRITEs, pinned.
fn target(pd: &ProtectionDomain, buf: &Mapping) -> MemoryRegion {
    // SAFETY: callers drop the region before `buf`, which holds plain
    // bytes only.
    unsafe {
        pd.reg_mr(
            buf.addr(),
            buf.len(),
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
        )
    }
    .expect("register the target")
}

/// Two queue pairs of one device connected to each other, on one CQ.
struct Loopback {
    cq: CompletionQueue,
    qp: QueuePair,
    _peer: QueuePair,
}

impl Loopback {
    fn new(ctx: &Context, pd: &ProtectionDomain) -> Loopback {
        let cq = ctx.create_cq(256).expect("create a CQ");
        let qp = pd.create_qp(&cq, &cq).build().expect("create a QP");
        let peer = pd.create_qp(&cq, &cq).build().expect("create a QP");
        let mtu = ctx.query_port().active_mtu.min(Mtu::Mtu4096);
        let (a, b) = (qp.endpoint(mtu), peer.endpoint(mtu));
        qp.connect(&b).expect("connect");
        peer.connect(&a).expect("connect");
        Loopback {
            cq,
            qp,
            _peer: peer,
        }
    }

    /// WRITEs `[offset, offset + len)` of `src` to the same offset of
    /// `dst`, one signalled request per `piece` bytes, and waits for all.
    fn write(&self, src: &MemoryRegion, dst: &MemoryRegion, len: usize, piece: usize) {
        let mut posted = 0;
        let mut done = 0;
        let mut offset = 0;
        let mut wcs = [WorkCompletion::default(); 16];
        while done < len.div_ceil(piece) {
            while offset < len && posted - done < 16 {
                let n = piece.min(len - offset);
                let sge = [src.sge(offset as u64, n as u32)];
                let wr = SendWr {
                    wr_id: offset as u64,
                    op: SendOp::Write {
                        remote_addr: dst.addr() + offset as u64,
                        rkey: dst.rkey(),
                    },
                    sg_list: &sge,
                    signaled: true,
                    solicited: false,
                };
                self.qp.post_send(&[wr]).expect("post a WRITE");
                offset += n;
                posted += 1;
            }
            let n = self.cq.poll_wait(&mut wcs, Duration::from_secs(30));
            assert!(n > 0, "no completion within 30 s");
            for wc in &wcs[..n] {
                assert_eq!(wc.status, WcStatus::Success, "{wc:?}");
            }
            done += n;
        }
    }
}

/// A registration of `buf`: pinned, or pin-on-demand for local access.
fn register(pd: &ProtectionDomain, buf: &Mapping, on_demand: bool) -> MemoryRegion {
    let (access, options) = if on_demand {
        (
            AccessFlags::LOCAL_WRITE | AccessFlags::ON_DEMAND,
            MrOptions {
                odp_mode: Some(OdpMode::PinOnDemand),
                ..MrOptions::default()
            },
        )
    } else {
        (AccessFlags::LOCAL_WRITE, MrOptions::default())
    };
    // SAFETY: `buf` outlives the region (callers drop the region first)
    // and holds plain bytes only.
    unsafe { pd.reg_mr_with(buf.addr(), buf.len(), access, &options) }.expect("register")
}

/// One first-use measurement: register `src`, WRITE all of it.
fn first_use(
    pd: &ProtectionDomain,
    lb: &Loopback,
    dst: &MemoryRegion,
    len: usize,
    pod: bool,
) -> f64 {
    let src = buffer(len);
    let t = Instant::now();
    let mr = register(pd, &src, pod);
    lb.write(&mr, dst, len, WRITE_CHUNK);
    let elapsed = t.elapsed().as_secs_f64();
    drop(mr);
    elapsed
}

/// One steady-state measurement: the region is registered and every chunk
/// used once before the clock starts.
fn steady(pd: &ProtectionDomain, lb: &Loopback, dst: &MemoryRegion, pod: bool) -> f64 {
    let src = buffer(STEADY_SIZE);
    let mr = register(pd, &src, pod);
    lb.write(&mr, dst, STEADY_SIZE, STEADY_SIZE);
    let t = Instant::now();
    for _ in 0..STEADY_WRITES {
        lb.write(&mr, dst, STEADY_SIZE, STEADY_SIZE);
    }
    let elapsed = t.elapsed().as_secs_f64() / STEADY_WRITES as f64;
    drop(mr);
    elapsed
}

fn median(v: Vec<f64>) -> f64 {
    Sorted::new(v).median()
}

/// Runs `measure(pin_on_demand)` paired with `measure(pinned)` for
/// `ROUNDS` rounds, alternating the order; prints the medians and the
/// per-round ratios.
fn paired(name: &str, mut measure: impl FnMut(bool) -> f64) {
    let (mut pinned, mut pod, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (p, o) = if round % 2 == 0 {
            let p = measure(false);
            (p, measure(true))
        } else {
            let o = measure(true);
            (measure(false), o)
        };
        pinned.push(p);
        pod.push(o);
        ratios.push(o / p);
    }
    let per_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "{name}: pinned {:.3} ms, pin-on-demand {:.3} ms, ratio median {:.2} (rounds {})",
        median(pinned) * 1e3,
        median(pod) * 1e3,
        median(ratios),
        per_round.join(" ")
    );
}

fn main() {
    let Some(info) = devices()
        .expect("list devices")
        .into_iter()
        .find(|d| d.backend == DeviceBackend::RdmaCore)
    else {
        println!(
            "no real verbs device on this host: nothing to measure (run it in the rxe lab's guest)"
        );
        return;
    };
    let ctx = info.open().expect("open the device");
    let pd = ctx.alloc_pd().expect("allocate a PD");
    let lb = Loopback::new(&ctx, &pd);
    println!(
        "device {} ({}), {ROUNDS} paired rounds",
        info.name, info.addr
    );
    for len in [2usize << 20, 16 << 20, 64 << 20] {
        let buf = buffer(len);
        let dst = target(&pd, &buf);
        paired(&format!("first use of {} MiB", len >> 20), |pod| {
            first_use(&pd, &lb, &dst, len, pod)
        });
    }
    let buf = buffer(STEADY_SIZE);
    let dst = target(&pd, &buf);
    paired("steady 64 KiB WRITE", |pod| steady(&pd, &lb, &dst, pod));
}
