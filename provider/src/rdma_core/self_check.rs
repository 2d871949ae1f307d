//! Is the device's ODP trustworthy? A loopback RDMA WRITE into, and READ
//! from, an ODP region at a non-zero page offset, compared byte for byte.
//! Kernel rxe 7.3.4's ODP copies to and from the start of each page,
//! whatever the offset: the check catches that, and the device's choice
//! for ON_DEMAND regions becomes pin-on-demand.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::{RdmaContext, RdmaCq, RdmaMr, RdmaPd, RdmaQp, RdmaQpConfig};
use crate::{
    AccessFlags, Mtu, RtsAttr, SelfCheck, SendOp, SendWr, VerbsError, WcStatus, WorkCompletion,
};

/// Where both transfers start in their page: not 0, not packet-aligned.
const PAGE_OFFSET: usize = 992;

/// Bytes per transfer: more than 8 KiB, so several packets and pages.
const LEN: usize = 8192 + 512;

/// The verdict for `ctx`'s device, running the check on first use (once
/// per device per process).
///
/// # Errors
/// The check could not be set up or run (not a verdict: it runs again at
/// the next registration that needs it).
pub(crate) fn verdict(ctx: &Arc<RdmaContext>) -> Result<SelfCheck, VerbsError> {
    let mut slot = ctx
        .shared
        .self_check
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(v) = *slot {
        return Ok(v);
    }
    let v = run(ctx)?;
    if !v.passed {
        ctx.shared
            .counters
            .self_check_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    *slot = Some(v);
    Ok(v)
}

/// The bytes of `mapping`.
///
/// # Safety
/// No work request may access the mapping while the slice is used.
unsafe fn bytes(mapping: &mut odp::Mapping) -> &mut [u8] {
    // SAFETY: the mapping is ours, readable and writable, `len` bytes; the
    // caller keeps the device away while the slice lives.
    unsafe { std::slice::from_raw_parts_mut(mapping.ptr(), mapping.len()) }
}

/// A byte pattern no page-aligned copy reproduces at another offset.
fn pattern(seed: u8) -> Vec<u8> {
    (0..LEN)
        .map(|i| (i as u32).wrapping_mul(131).wrapping_add(u32::from(seed)) as u8 ^ (i >> 8) as u8)
        .collect()
}

fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Two connected queue pairs on the device, looped back through it.
struct Loop {
    cq: Arc<RdmaCq>,
    a: RdmaQp,
    _b: RdmaQp,
}

impl Loop {
    fn new(pd: &Arc<RdmaPd>) -> Result<Loop, VerbsError> {
        let cq = RdmaCq::new(&pd.ctx, 16)?;
        let config = |psn| RdmaQpConfig {
            max_send_wr: 8,
            max_recv_wr: 8,
            psn,
            rts: RtsAttr {
                sq_psn: psn,
                timeout: 14,
                retry_cnt: 7,
                rnr_retry: 7,
                max_rd_atomic: 1,
            },
            min_rnr_timer: 12,
        };
        let a = RdmaQp::new(pd, &cq, &cq, config(0x100))?;
        let b = RdmaQp::new(pd, &cq, &cq, config(0x200))?;
        let mtu = pd.ctx.port.active_mtu.min(Mtu::Mtu1024);
        for (x, y) in [(&a, &b), (&b, &a)] {
            x.to_init()?;
            x.to_rtr(&y.endpoint(mtu), 12)?;
            x.to_rts(&x.default_rts())?;
        }
        Ok(Loop { cq, a, _b: b })
    }

    /// Posts `op` from `local` and waits for its completion.
    fn run(&self, op: SendOp, local: &RdmaMr) -> Result<WcStatus, VerbsError> {
        let sge = crate::Sge {
            addr: local.addr,
            length: LEN as u32,
            lkey: local.lkey(),
        };
        self.a.post_send(&[SendWr {
            wr_id: 1,
            op,
            sg_list: &[sge],
            signaled: true,
            solicited: false,
        }])?;
        let mut wc = [WorkCompletion::default()];
        if self.cq.poll_wait(&mut wc, Duration::from_secs(10)) == 0 {
            return Err(VerbsError::InvalidArgument(
                "ODP self-check: no completion in 10 s",
            ));
        }
        Ok(wc[0].status)
    }
}

/// Runs the check.
fn run(ctx: &Arc<RdmaContext>) -> Result<SelfCheck, VerbsError> {
    let pd = RdmaPd::new(ctx)?;
    let page = odp::page_size();
    let mut target = odp::AddressSpace::process().map_anonymous(4 * page, 0)?;
    let mut local = pattern(1);
    let all = AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ;
    // SAFETY: both buffers outlive their regions, and no Rust reference
    // to them is used while the device may access them (the loop waits
    // for each completion).
    let (odp_mr, local_mr) = unsafe {
        (
            RdmaMr::reg(
                &pd,
                target.addr(),
                target.len(),
                all | AccessFlags::ON_DEMAND,
                Some(crate::OdpMode::PassThrough),
            )?,
            RdmaMr::reg(&pd, local.as_mut_ptr() as usize, LEN, all, None)?,
        )
    };
    let lp = Loop::new(&pd)?;
    let remote = (target.addr() + PAGE_OFFSET) as u64;
    let rkey = odp_mr.rkey();
    let sent = local.clone();
    let write = lp.run(
        SendOp::Write {
            remote_addr: remote,
            rkey,
        },
        &local_mr,
    )?;
    let write_mismatch = if write == WcStatus::Success {
        // SAFETY: the WRITE completed, and nothing else is posted until
        // the READ below.
        let window = &unsafe { bytes(&mut target) }[PAGE_OFFSET..PAGE_OFFSET + LEN];
        first_mismatch(window, &sent)
    } else {
        Some(0)
    };
    // Fresh bytes at the same place, read back into the pinned buffer.
    let fresh = pattern(77);
    // SAFETY: as above: no request is posted.
    let window = &mut unsafe { bytes(&mut target) }[PAGE_OFFSET..PAGE_OFFSET + LEN];
    window.copy_from_slice(&fresh);
    let read = lp.run(
        SendOp::Read {
            remote_addr: remote,
            rkey,
        },
        &local_mr,
    )?;
    drop(lp);
    drop((odp_mr, local_mr));
    let read_mismatch = if read == WcStatus::Success {
        first_mismatch(&local, &fresh)
    } else {
        Some(0)
    };
    Ok(SelfCheck {
        passed: write_mismatch.is_none() && read_mismatch.is_none(),
        write_mismatch,
        read_mismatch,
        page_offset: PAGE_OFFSET,
        len: LEN,
    })
}
