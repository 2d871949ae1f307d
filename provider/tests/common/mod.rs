//! What the provider's integration tests share: one end of a connection
//! (device, registered memory, queue pair) and small helpers.

#![allow(dead_code)] // Each test binary uses a different part.

pub mod raw;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use odp::{AddressSpace, Mapping};
use provider::{
    AccessFlags, CompletionQueue, Context, DeviceOptions, MemoryRegion, Mtu, ProtectionDomain,
    QueuePair, SendOp, SendWr, Sge, WorkCompletion,
};

/// 127.0.0.1.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// One end: a device, memory registered in it, a queue pair.
pub struct End {
    pub ctx: Context,
    pub pd: ProtectionDomain,
    pub cq: CompletionQueue,
    pub qp: QueuePair,
    pub mr: MemoryRegion,
    pub buf: Mapping,
}

impl End {
    /// A device on 127.0.0.1 (any port) with `len` bytes registered for
    /// every access, on demand or pinned.
    pub fn new(len: usize, odp: bool) -> End {
        End::with_device(LOCALHOST, &any_port(), len, odp)
    }

    /// A device on `ip` with `options`, `len` bytes registered for every
    /// access, on demand or pinned.
    pub fn with_device(ip: IpAddr, options: &DeviceOptions, len: usize, odp: bool) -> End {
        let ctx = Context::open_with(ip, options).expect("device");
        let pd = ctx.alloc_pd().unwrap();
        let cq = ctx.create_cq(4096).unwrap();
        let qp = pd.create_qp(&cq, &cq).build().unwrap();
        let buf = AddressSpace::process().map_anonymous(len, 0).unwrap();
        let mut access = AccessFlags::LOCAL_WRITE
            | AccessFlags::REMOTE_WRITE
            | AccessFlags::REMOTE_READ
            | AccessFlags::REMOTE_ATOMIC;
        if odp {
            access |= AccessFlags::ON_DEMAND;
        }
        // SAFETY: the mapping is owned by this struct, outlives the region
        // (fields drop in order), and backs no Rust objects.
        let mr = unsafe { pd.reg_mr(buf.addr(), len, access) }.unwrap();
        End {
            ctx,
            pd,
            cq,
            qp,
            mr,
            buf,
        }
    }

    /// Copies `len` bytes at `offset` of the buffer.
    pub fn get(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.buf.len());
        // SAFETY: within the test's own mapping; the device touches it
        // only while the test waits for completions.
        unsafe { std::slice::from_raw_parts(self.buf.ptr().add(offset), len) }.to_vec()
    }

    /// Writes `data` at `offset` of the buffer.
    pub fn put(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.buf.len());
        // SAFETY: as in `get`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.ptr().add(offset), data.len())
        }
    }

    /// The next completion, waiting up to 10 s.
    pub fn wait(&self) -> WorkCompletion {
        let mut wc = [WorkCompletion::default()];
        let n = self.cq.poll_wait(&mut wc, Duration::from_secs(10));
        assert_eq!(n, 1, "no completion within 10 s");
        wc[0]
    }
}

/// Default device options on any free port.
pub fn any_port() -> DeviceOptions {
    DeviceOptions {
        port: 0,
        ..DeviceOptions::default()
    }
}

/// Connects the two ends' queue pairs at `mtu`.
pub fn connect(a: &End, b: &End, mtu: Mtu) {
    a.qp.connect(&b.qp.endpoint(mtu)).unwrap();
    b.qp.connect(&a.qp.endpoint(mtu)).unwrap();
}

/// `len` bytes of a pattern that differs with `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Posts one signaled work request.
pub fn send(qp: &QueuePair, wr_id: u64, op: SendOp, sge: Sge) {
    qp.post_send(&[SendWr {
        wr_id,
        op,
        sg_list: &[sge],
        signaled: true,
        solicited: false,
    }])
    .unwrap();
}

/// A field of /proc/self/status in KiB.
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}
