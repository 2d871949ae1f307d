//! What the verbs-device tests share: finding the device, two connected
//! queue pairs on it, page-aligned buffers.

use std::time::Duration;

use provider::{
    AccessFlags, CompletionQueue, Context, DeviceBackend, DeviceInfo, MemoryRegion, MrOptions, Mtu,
    ProtectionDomain, QueuePair, SendOp, SendWr, Sge, VerbsError, WorkCompletion, devices,
};

/// The first verbs device and a context on it; `None` (after saying so)
/// when there is none and `SRXE_RDMA_CORE_REQUIRE` is not `1`.
pub fn device() -> Option<(DeviceInfo, Context)> {
    let list = devices().expect("devices() on a host without RDMA lists the userspace ones");
    let Some(info) = list
        .into_iter()
        .find(|d| d.backend == DeviceBackend::RdmaCore)
    else {
        assert!(
            std::env::var("SRXE_RDMA_CORE_REQUIRE").as_deref() != Ok("1"),
            "SRXE_RDMA_CORE_REQUIRE=1 but no verbs device is listed"
        );
        eprintln!("skipped: no verbs device (kernel RDMA) on this host");
        return None;
    };
    let ctx = info.open().expect("open the verbs device");
    Some((info, ctx))
}

/// What `SRXE_LAB_KERNEL_ODP` says about the kernel's rxe ODP.
pub fn kernel_odp() -> Option<bool> {
    match std::env::var("SRXE_LAB_KERNEL_ODP").as_deref() {
        Ok("1") => Some(true),
        Ok("0") => Some(false),
        _ => None,
    }
}

/// `len` bytes that differ from page to page and from any shifted copy.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(167).wrapping_add(u32::from(seed)) as u8 ^ (i >> 9) as u8)
        .collect()
}

/// Anonymous private memory, unmapped on drop (unless the test unmapped
/// it itself).
pub struct Mapping {
    pub addr: usize,
    pub len: usize,
}

impl Mapping {
    pub fn new(len: usize) -> Mapping {
        // SAFETY: a fresh anonymous mapping nothing else refers to.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        Mapping {
            addr: p as usize,
            len,
        }
    }

    /// The bytes; the device may change them between calls, so the slice
    /// is only looked at while no work request runs.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: our mapping, readable and writable, `len` bytes.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping (regions over it are dropped first by
        // declaration order in the tests, or never used again).
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Two RC queue pairs on one device, connected to each other.
pub struct Pair {
    pub a: QueuePair,
    pub b: QueuePair,
    pub cq_a: CompletionQueue,
    pub cq_b: CompletionQueue,
    pub pd: ProtectionDomain,
}

impl Pair {
    pub fn new(ctx: &Context) -> Pair {
        let pd = ctx.alloc_pd().unwrap();
        let (cq_a, cq_b) = (ctx.create_cq(64).unwrap(), ctx.create_cq(64).unwrap());
        let a = pd.create_qp(&cq_a, &cq_a).build().unwrap();
        let b = pd.create_qp(&cq_b, &cq_b).build().unwrap();
        let mtu = ctx.query_port().active_mtu.min(Mtu::Mtu1024);
        a.connect(&b.endpoint(mtu)).unwrap();
        b.connect(&a.endpoint(mtu)).unwrap();
        Pair {
            a,
            b,
            cq_a,
            cq_b,
            pd,
        }
    }

    /// Registers all of `m`.
    pub fn try_reg(
        &self,
        m: &Mapping,
        access: AccessFlags,
        options: Option<MrOptions>,
    ) -> Result<MemoryRegion, VerbsError> {
        // SAFETY: test memory that only the device and the test's byte
        // checks (between work requests) touch; the mapping outlives it.
        unsafe {
            self.pd
                .reg_mr_with(m.addr, m.len, access, &options.unwrap_or_default())
        }
    }

    pub fn reg(
        &self,
        m: &Mapping,
        access: AccessFlags,
        options: Option<MrOptions>,
    ) -> MemoryRegion {
        self.try_reg(m, access, options).expect("registration")
    }

    /// Posts `op` with one SGE on A and waits for its completion.
    pub fn a_send(&self, op: SendOp, sge: Sge) -> WorkCompletion {
        self.a
            .post_send(&[SendWr {
                wr_id: 7,
                op,
                sg_list: &[sge],
                signaled: true,
                solicited: false,
            }])
            .expect("post_send");
        wait(&self.cq_a)
    }

    /// B's next completion.
    pub fn b_wait(&self) -> WorkCompletion {
        wait(&self.cq_b)
    }
}

/// The next completion of `cq`, within 10 s.
pub fn wait(cq: &CompletionQueue) -> WorkCompletion {
    let mut wc = [WorkCompletion::default()];
    assert_eq!(
        cq.poll_wait(&mut wc, Duration::from_secs(10)),
        1,
        "no completion in 10 s"
    );
    wc[0]
}
