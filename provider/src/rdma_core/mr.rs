//! Memory regions on a verbs device and the choice of their ODP mode.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use odp::Advice;
use verbs_sys as sys;

use super::pod::PodMr;
use super::{RdmaPd, check, convert, last_error, self_check};
use crate::{AccessFlags, MrOptions, OdpBackendCounters, OdpCaps, OdpMode, Sge, VerbsError};

/// Regions by mode and self-check outcomes, per device.
#[derive(Debug, Default)]
pub(crate) struct ModeCounters {
    pub(crate) self_check_failures: AtomicU64,
    pass_through: AtomicU64,
    pin_on_demand: AtomicU64,
    pinned_whole: AtomicU64,
    fallbacks: AtomicU64,
}

impl ModeCounters {
    /// A snapshot.
    pub(crate) fn snapshot(&self) -> OdpBackendCounters {
        OdpBackendCounters {
            self_check_failures: self.self_check_failures.load(Relaxed),
            pass_through_regions: self.pass_through.load(Relaxed),
            pin_on_demand_regions: self.pin_on_demand.load(Relaxed),
            pinned_whole_regions: self.pinned_whole.load(Relaxed),
            self_check_fallbacks: self.fallbacks.load(Relaxed),
        }
    }

    fn count(&self, mode: OdpMode) {
        let c = match mode {
            OdpMode::PassThrough => &self.pass_through,
            OdpMode::PinOnDemand => &self.pin_on_demand,
            OdpMode::PinnedWhole => &self.pinned_whole,
            OdpMode::Native => return,
        };
        c.fetch_add(1, Relaxed);
    }
}

/// The remote rights of `access`.
fn remote(access: AccessFlags) -> bool {
    access.intersects(
        AccessFlags::REMOTE_WRITE | AccessFlags::REMOTE_READ | AccessFlags::REMOTE_ATOMIC,
    )
}

/// Whether the device's RC ODP covers a region with `access`: local use
/// (SEND source, receive target) always, plus each remote right.
pub(crate) fn caps_cover(caps: &OdpCaps, access: AccessFlags) -> bool {
    caps.general
        && caps.rc_send
        && caps.rc_recv
        && (!access.contains(AccessFlags::REMOTE_WRITE) || caps.rc_write)
        && (!access.contains(AccessFlags::REMOTE_READ) || caps.rc_read)
        && (!access.contains(AccessFlags::REMOTE_ATOMIC) || caps.rc_atomic)
}

/// The mode the device picks for an `ON_DEMAND` region with `access`,
/// given the self-check's verdict so far (`None`: not run). `None`:
/// refused.
pub(crate) fn device_choice(
    caps: &OdpCaps,
    verdict: Option<bool>,
    access: AccessFlags,
    pin_whole_fallback: bool,
) -> Option<OdpMode> {
    if caps_cover(caps, access) && verdict != Some(false) {
        Some(OdpMode::PassThrough)
    } else if !remote(access) {
        Some(OdpMode::PinOnDemand)
    } else if pin_whole_fallback {
        Some(OdpMode::PinnedWhole)
    } else {
        None
    }
}

/// What holds a region's memory for the device.
enum Backing {
    /// One `ibv_mr` (pinned, or the device's own ODP).
    Verbs(NonNull<sys::ibv_mr>),
    /// Chunks registered as work requests use them.
    Pod(PodMr),
}

/// A region registered with the device.
pub(crate) struct RdmaMr {
    backing: Backing,
    mode: Option<OdpMode>,
    pub(crate) access: AccessFlags,
    pub(crate) addr: u64,
    pub(crate) len: u64,
    /// Keeps the domain alive while the region exists.
    _pd: Arc<RdmaPd>,
}

// SAFETY: verbs objects may be used from any thread; the pointer is freed
// only in Drop.
unsafe impl Send for RdmaMr {}
// SAFETY: as for Send.
unsafe impl Sync for RdmaMr {}

impl RdmaMr {
    /// Registers `[addr, addr + len)` with `access`, in the ODP mode that
    /// `options` and the device decide (see `crate::ProtectionDomain::reg_mr_with`).
    ///
    /// # Safety
    /// As `crate::ProtectionDomain::reg_mr`.
    pub(crate) unsafe fn register(
        pd: &Arc<RdmaPd>,
        addr: usize,
        len: usize,
        access: AccessFlags,
        options: &MrOptions,
    ) -> Result<RdmaMr, VerbsError> {
        if len == 0 {
            return Err(VerbsError::InvalidArgument("zero-length memory region"));
        }
        let implicit = addr == 0 && len == usize::MAX;
        if !access.contains(AccessFlags::ON_DEMAND) {
            if implicit {
                return Err(VerbsError::InvalidArgument(
                    "implicit registration needs ON_DEMAND",
                ));
            }
            // SAFETY: the caller's promise.
            return unsafe { Self::reg(pd, addr, len, access, None) };
        }
        let mode = Self::choose(pd, access, options, implicit)?;
        if implicit && (mode != OdpMode::PassThrough || !pd.ctx.limits.odp.implicit) {
            return Err(VerbsError::OdpUnavailable(
                "implicit ODP needs the device's own implicit ODP",
            ));
        }
        let mr = match mode {
            // SAFETY: the caller's promise.
            OdpMode::PassThrough => unsafe { Self::reg(pd, addr, len, access, Some(mode)) }?,
            OdpMode::PinnedWhole => {
                let pinned = access - AccessFlags::ON_DEMAND;
                // SAFETY: the caller's promise.
                unsafe { Self::reg(pd, addr, len, pinned, Some(mode)) }?
            }
            OdpMode::PinOnDemand => {
                let writable = access.contains(AccessFlags::LOCAL_WRITE);
                RdmaMr {
                    backing: Backing::Pod(PodMr::new(pd, addr, len, writable)?),
                    mode: Some(mode),
                    access,
                    addr: addr as u64,
                    len: len as u64,
                    _pd: Arc::clone(pd),
                }
            }
            OdpMode::Native => {
                return Err(VerbsError::OdpUnavailable(
                    "native ODP belongs to the userspace device",
                ));
            }
        };
        pd.ctx.shared.counters.count(mode);
        Ok(mr)
    }

    /// The mode for an `ON_DEMAND` region: the forced one if the device
    /// can do it, else the device's choice (running the self-check when
    /// pass-through is in question).
    fn choose(
        pd: &Arc<RdmaPd>,
        access: AccessFlags,
        options: &MrOptions,
        implicit: bool,
    ) -> Result<OdpMode, VerbsError> {
        let caps = &pd.ctx.limits.odp;
        match options.odp_mode {
            Some(OdpMode::Native) => Err(VerbsError::OdpUnavailable(
                "native ODP belongs to the userspace device",
            )),
            Some(OdpMode::PassThrough) if !caps_cover(caps, access) => Err(
                VerbsError::OdpUnavailable("the device's ODP does not cover this access"),
            ),
            Some(OdpMode::PinOnDemand) if remote(access) => Err(VerbsError::OdpUnavailable(
                "pin-on-demand serves local access only (a peer holds one rkey)",
            )),
            Some(mode) => Ok(mode),
            None => {
                let verdict = if caps_cover(caps, access) && !implicit {
                    Some(self_check::verdict(&pd.ctx)?.passed)
                } else {
                    None
                };
                let mode = device_choice(caps, verdict, access, options.pin_whole_fallback)
                    .ok_or(VerbsError::OdpUnavailable(
                        "the device has no usable ODP for remote access (ask for pin_whole_fallback)",
                    ))?;
                if verdict == Some(false) {
                    pd.ctx.shared.counters.fallbacks.fetch_add(1, Relaxed);
                }
                Ok(mode)
            }
        }
    }

    /// One `ibv_reg_mr`.
    ///
    /// # Safety
    /// As `crate::ProtectionDomain::reg_mr`.
    pub(crate) unsafe fn reg(
        pd: &Arc<RdmaPd>,
        addr: usize,
        len: usize,
        access: AccessFlags,
        mode: Option<OdpMode>,
    ) -> Result<RdmaMr, VerbsError> {
        // SAFETY: a live domain; the caller promises the memory may be
        // reached by the device until the region is dropped.
        let raw = unsafe {
            sys::ibv_reg_mr(
                pd.raw(),
                addr as *mut libc::c_void,
                len,
                convert::access(access) as i32,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| last_error("ibv_reg_mr"))?;
        Ok(RdmaMr {
            backing: Backing::Verbs(raw),
            mode,
            access: access
                | if mode.is_some() {
                    AccessFlags::ON_DEMAND
                } else {
                    AccessFlags::empty()
                },
            addr: addr as u64,
            len: len as u64,
            _pd: Arc::clone(pd),
        })
    }

    /// The local key (a pin-on-demand region: its key of the context's
    /// table, which posts resolve).
    pub(crate) fn lkey(&self) -> u32 {
        match &self.backing {
            // SAFETY: the region is live; its keys are set at registration.
            Backing::Verbs(raw) => unsafe { raw.as_ref().lkey },
            Backing::Pod(pod) => pod.key,
        }
    }

    /// The remote key (a pin-on-demand region has none a peer could use:
    /// its table key, which the device does not know).
    pub(crate) fn rkey(&self) -> u32 {
        match &self.backing {
            // SAFETY: as for lkey.
            Backing::Verbs(raw) => unsafe { raw.as_ref().rkey },
            Backing::Pod(pod) => pod.key,
        }
    }

    /// ODP counters: the kernel keeps those of its own ODP, so zeros
    /// unless the region is pin-on-demand; then `faults` counts chunks
    /// pinned, `retries` pins thrown away (collisions and lost races),
    /// `invalidations` invalidate callbacks that reached the region,
    /// `pages_invalidated` chunks unpinned, and `stale_pages` chunks
    /// unpinned while work requests still used them (the wait for them
    /// ran out).
    pub(crate) fn odp_counters(&self) -> odp::OdpCounters {
        let Backing::Pod(pod) = &self.backing else {
            return odp::OdpCounters::default();
        };
        let c = pod.region.counters();
        odp::OdpCounters {
            faults: c.faults,
            retries: c.retries + c.lost_races,
            invalidations: c.invalidations,
            pages_invalidated: c.unpins,
            stale_pages: c.forced_unpins,
            ..odp::OdpCounters::default()
        }
    }

    /// The ODP mode (`None`: a plain pinned registration).
    pub(crate) fn odp_mode(&self) -> Option<OdpMode> {
        self.mode
    }
}

impl Drop for RdmaMr {
    fn drop(&mut self) {
        if let Backing::Verbs(raw) = &self.backing {
            // SAFETY: the region is live and deregistered once.
            unsafe { sys::ibv_dereg_mr(raw.as_ptr()) };
        }
    }
}

/// `IB_UVERBS_ADVISE_MR_FLAG_FLUSH` (not in verbs.h's bindings): return
/// once the pages are in.
const ADVISE_FLUSH: u32 = 1;

/// `ibv_advise_mr` for `sges` of `pd` (flush: wait until done).
///
/// # Errors
/// [`VerbsError::OdpUnavailable`] where the provider has no advise_mr
/// (EOPNOTSUPP, kernel rxe); other failures as [`VerbsError::DeviceCall`].
pub(crate) fn advise(pd: &RdmaPd, advice: Advice, sges: &[Sge]) -> Result<(), VerbsError> {
    // Pin-on-demand SGEs are prefetched by pinning their chunks now (they
    // stay pinned until invalidated); the rest goes to the device.
    let (pod, sges): (Vec<Sge>, Vec<Sge>) =
        sges.iter().partition(|s| pd.ctx.pod.is_pod_key(s.lkey));
    if !pod.is_empty() && advice != Advice::PrefetchNoFault {
        let mut pieces = Vec::new();
        pd.ctx
            .pod
            .translate(&pod, usize::MAX, &mut pieces)?
            .complete();
    }
    if sges.is_empty() {
        return Ok(());
    }
    let advice = match advice {
        Advice::Prefetch => sys::ib_uverbs_advise_mr_advice_IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH,
        Advice::PrefetchWrite => {
            sys::ib_uverbs_advise_mr_advice_IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE
        }
        Advice::PrefetchNoFault => {
            sys::ib_uverbs_advise_mr_advice_IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT
        }
    };
    let mut list: Vec<sys::ibv_sge> = sges
        .iter()
        .map(|s| sys::ibv_sge {
            addr: s.addr,
            length: s.length,
            lkey: s.lkey,
        })
        .collect();
    // SAFETY: a live domain and `list.len()` SGEs.
    let rc = unsafe {
        sys::ibv_advise_mr(
            pd.raw(),
            advice,
            ADVISE_FLUSH,
            list.as_mut_ptr(),
            list.len() as u32,
        )
    };
    match check("ibv_advise_mr", rc) {
        Err(VerbsError::DeviceCall { errno, .. }) if errno == libc::EOPNOTSUPP => Err(
            VerbsError::OdpUnavailable("the device does not implement advise_mr (prefetch)"),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(rc: bool) -> OdpCaps {
        OdpCaps {
            general: rc,
            implicit: false,
            rc_send: rc,
            rc_recv: rc,
            rc_write: rc,
            rc_read: rc,
            rc_atomic: rc,
            prefetch: false,
        }
    }

    #[test]
    fn the_device_choice_follows_caps_verdict_and_access() {
        let local = AccessFlags::LOCAL_WRITE | AccessFlags::ON_DEMAND;
        let remote = local | AccessFlags::REMOTE_WRITE;
        let pt = Some(OdpMode::PassThrough);
        assert_eq!(device_choice(&caps(true), None, local, false), pt);
        assert_eq!(device_choice(&caps(true), Some(true), remote, false), pt);
        // A failed self-check (kernel rxe 7.3.4) and no ODP (6.1) alike.
        for (c, v) in [(caps(true), Some(false)), (caps(false), None)] {
            assert_eq!(
                device_choice(&c, v, local, false),
                Some(OdpMode::PinOnDemand)
            );
            assert_eq!(device_choice(&c, v, remote, false), None);
            assert_eq!(
                device_choice(&c, v, remote, true),
                Some(OdpMode::PinnedWhole)
            );
        }
        let mut no_atomic = caps(true);
        no_atomic.rc_atomic = false;
        assert!(!caps_cover(&no_atomic, local | AccessFlags::REMOTE_ATOMIC));
        assert!(caps_cover(&no_atomic, remote));
    }
}
