//! How a region with [`AccessFlags::ON_DEMAND`](super::AccessFlags) gets
//! its pages on each kind of device, and what the real-device backend
//! measured about its device's ODP.

/// How an on-demand region is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OdpMode {
    /// The userspace device's own ODP (faults and invalidations in this
    /// process, nothing pinned).
    Native,
    /// A real device's ODP: `IBV_ACCESS_ON_DEMAND` passed to the kernel
    /// driver, which faults and invalidates by itself.
    PassThrough,
    /// A real device without (trustworthy) ODP, for regions with local
    /// access only: aligned chunks are registered (pinned) with the device
    /// when first used and deregistered when the address space changes
    /// under them.
    PinOnDemand,
    /// A real device without (trustworthy) ODP, for a region that grants
    /// remote access: the whole range pinned at registration, as asked
    /// for with [`MrOptions::pin_whole_fallback`]. Later changes of the
    /// address space are not seen.
    PinnedWhole,
}

/// Options of [`super::ProtectionDomain::reg_mr_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MrOptions {
    /// The mode of an `ON_DEMAND` region; `None`: the device chooses (see
    /// [`super::DeviceAttr::odp_local`] and
    /// [`super::DeviceAttr::odp_remote`]). Forcing a mode the device
    /// cannot do is an error. Ignored without `ON_DEMAND`.
    pub odp_mode: Option<OdpMode>,
    /// On a real device without usable ODP, register an `ON_DEMAND`
    /// region that grants remote access by pinning the whole range
    /// ([`OdpMode::PinnedWhole`]) instead of refusing it.
    pub pin_whole_fallback: bool,
}

/// The verdict of a real device's ODP self-check: a loopback RDMA WRITE
/// into, and READ from, an ODP region at a non-zero page offset, compared
/// byte for byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelfCheck {
    /// Both transfers came back byte-exact.
    pub passed: bool,
    /// The first offset (from the start of the transfer) whose byte was
    /// wrong after the WRITE, if any.
    pub write_mismatch: Option<usize>,
    /// The first offset whose byte was wrong after the READ, if any.
    pub read_mismatch: Option<usize>,
    /// The page offset both transfers started at.
    pub page_offset: usize,
    /// Bytes per transfer.
    pub len: usize,
}

/// Counters of the real-device backend's ODP choices (zeros on the
/// userspace device).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OdpBackendCounters {
    /// Self-checks that found the device's ODP corrupting data.
    pub self_check_failures: u64,
    /// Regions registered in [`OdpMode::PassThrough`].
    pub pass_through_regions: u64,
    /// Regions registered in [`OdpMode::PinOnDemand`].
    pub pin_on_demand_regions: u64,
    /// Regions registered in [`OdpMode::PinnedWhole`].
    pub pinned_whole_regions: u64,
    /// Regions that would have been pass-through but for a failed
    /// self-check, and became pin-on-demand or pinned-whole instead.
    pub self_check_fallbacks: u64,
}
