//! Devices and contexts.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{
    CompletionQueue, Gid, Mtu, OdpBackendCounters, OdpEventSources, OdpMode, ProtectionDomain,
    SelfCheck, VerbsError,
};
use crate::device::{Device, DeviceOptions, DeviceStats};
#[cfg(feature = "rdma-core")]
use crate::rdma_core::RdmaContext;
use crate::wire::ROCE_V2_PORT;

/// Which implementation serves a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceBackend {
    /// This crate's userspace soft-RoCE device over a UDP socket.
    Userspace,
    /// A verbs device of the kernel (rxe, hardware) through the system's
    /// libibverbs (feature `rdma-core`).
    RdmaCore,
}

/// A device this host can open: a soft RoCE device per interface address,
/// and (with feature `rdma-core`) each verbs device of the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `srxe-<interface>` for IPv4, `srxe6-<interface>` for IPv6; a verbs
    /// device's own name (`rxe0`, `mlx5_0`).
    pub name: String,
    /// The address the device binds (UDP port 4791); for a verbs device
    /// the address of its IPv4-mapped RoCEv2 GID if it has one, else of
    /// its global IPv6 one, else unspecified.
    pub addr: IpAddr,
    /// The interface's MTU.
    pub if_mtu: u32,
    /// Which implementation serves it.
    pub backend: DeviceBackend,
}

impl DeviceInfo {
    /// Opens the device.
    ///
    /// # Errors
    /// As [`Context::open`] or [`Context::open_rdma_core`].
    pub fn open(&self) -> Result<Context, VerbsError> {
        match self.backend {
            DeviceBackend::Userspace => Context::open(self.addr),
            DeviceBackend::RdmaCore => Context::open_rdma_core(&self.name),
        }
    }
}

/// The devices of this host: the userspace devices (every IPv4 and IPv6
/// interface address), then, with feature `rdma-core`, the kernel's verbs
/// devices (none on a host without RDMA).
///
/// # Errors
/// `getifaddrs(3)` failed; listing or opening a verbs device failed for
/// another reason than the host having no RDMA.
pub fn devices() -> Result<Vec<DeviceInfo>, VerbsError> {
    let list = userspace_devices()?;
    #[cfg(feature = "rdma-core")]
    let list = [list, crate::rdma_core::devices()?].concat();
    Ok(list)
}

/// The userspace devices: every IPv4 and IPv6 interface address.
fn userspace_devices() -> Result<Vec<DeviceInfo>, VerbsError> {
    let mut list = Vec::new();
    let mut ifaddrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut ifaddrs) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut cur = ifaddrs;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: the name is a NUL-terminated string of the node.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: `ifa_addr` points to a sockaddr whose family says its type.
        let addr = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    IpAddr::from(sin6.sin6_addr.s6_addr)
                }
                _ => continue,
            }
        };
        let if_mtu = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1500);
        let prefix = if addr.is_ipv4() { "srxe" } else { "srxe6" };
        list.push(DeviceInfo {
            name: format!("{prefix}-{name}"),
            addr,
            if_mtu,
            backend: DeviceBackend::Userspace,
        });
    }
    // SAFETY: frees the list getifaddrs returned, once.
    unsafe { libc::freeifaddrs(ifaddrs) };
    Ok(list)
}

/// On-demand-paging capabilities (verbs' `odp_caps`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OdpCaps {
    /// ODP is supported at all.
    pub general: bool,
    /// Implicit ODP (a region over the whole address space).
    pub implicit: bool,
    /// RC operations that may target or use ODP memory.
    pub rc_send: bool,
    /// RC receives into ODP memory.
    pub rc_recv: bool,
    /// RC RDMA WRITE.
    pub rc_write: bool,
    /// RC RDMA READ.
    pub rc_read: bool,
    /// RC atomics.
    pub rc_atomic: bool,
    /// Advise (prefetch) is supported.
    pub prefetch: bool,
}

/// Device limits and capabilities (verbs' `ibv_device_attr`, the parts that
/// apply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceAttr {
    /// Queue pairs.
    pub max_qp: u32,
    /// Work requests per queue.
    pub max_qp_wr: u32,
    /// SGEs per work request.
    pub max_sge: u32,
    /// Completion queue entries.
    pub max_cqe: u32,
    /// Largest memory region.
    pub max_mr_size: u64,
    /// READs and atomics outstanding per queue pair.
    pub max_qp_rd_atom: u32,
    /// 64-bit atomics are supported (and atomic among themselves).
    pub atomic: bool,
    /// ODP capabilities.
    pub odp_caps: OdpCaps,
    /// The sources that report address-space changes to ODP regions, now
    /// (per process; the first ODP registration starts the userfaultfd
    /// monitor unless the device opted out).
    pub odp_events: OdpEventSources,
    /// The mode the device chooses for an `ON_DEMAND` region with local
    /// access only (`None`: refused). The userspace device: `Native`. A
    /// verbs device: `PassThrough` if its RC ODP covers local use and the
    /// self-check has not failed (it runs at the first such registration,
    /// or [`Context::check_odp`]), else `PinOnDemand`.
    pub odp_local: Option<OdpMode>,
    /// The mode for an `ON_DEMAND` region that grants remote write and
    /// read: `Native`; `PassThrough` as for `odp_local`; `None` where a
    /// verbs device has no usable ODP (such regions are refused unless
    /// they ask for [`super::MrOptions::pin_whole_fallback`]).
    pub odp_remote: Option<OdpMode>,
}

/// Port attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortAttr {
    /// Largest path MTU.
    pub max_mtu: Mtu,
    /// The MTU the interface allows (its MTU less 80 bytes of headers, as
    /// rxe computes it).
    pub active_mtu: Mtu,
    /// GIDs in the table.
    pub gid_tbl_len: u32,
}

/// An open device (verbs' `ibv_context`).
#[derive(Clone)]
pub struct Context {
    pub(crate) imp: ContextImpl,
}

/// The backend of a context.
#[derive(Clone)]
pub(crate) enum ContextImpl {
    /// The userspace device.
    User {
        dev: Arc<Device>,
        /// The interface's MTU.
        if_mtu: u32,
    },
    /// A verbs device.
    #[cfg(feature = "rdma-core")]
    Rdma(Arc<RdmaContext>),
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("addr", &self.local_addr())
            .field("backend", &self.backend())
            .finish()
    }
}

impl Context {
    /// Opens the soft RoCE device on `addr` (UDP port 4791). Contexts on
    /// the same address share one device.
    ///
    /// # Errors
    /// The socket could not be bound (no such address, port taken by
    /// another process).
    pub fn open(addr: IpAddr) -> Result<Context, VerbsError> {
        Self::open_with_port(addr, ROCE_V2_PORT)
    }

    /// Opens a device on `addr:port`; port 0 picks a free one. Peers then
    /// need the port too ([`super::RemoteInfo::port`]); real RoCE peers
    /// only speak to port 4791.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_with_port(addr: IpAddr, port: u16) -> Result<Context, VerbsError> {
        Self::open_with(
            addr,
            &DeviceOptions {
                port,
                ..DeviceOptions::default()
            },
        )
    }

    /// Opens a device on `addr` with explicit transport options. If a
    /// device on that address and port is open already, it is shared and
    /// keeps its own options.
    ///
    /// # Errors
    /// As [`Self::open`]; [`VerbsError::Io`] of kind `InvalidInput` for a
    /// fault rate outside 0..=1.
    pub fn open_with(addr: IpAddr, options: &DeviceOptions) -> Result<Context, VerbsError> {
        let dev = Device::open(addr, options)?;
        // A loopback address without an entry of its own (127.0.0.2, ...)
        // is on the loopback interface all the same.
        let listed = devices().unwrap_or_default();
        let if_mtu = listed
            .iter()
            .find(|d| d.addr == addr)
            .or_else(|| {
                listed.iter().find(|d| {
                    addr.is_loopback() && d.addr.is_loopback() && d.addr.is_ipv4() == addr.is_ipv4()
                })
            })
            .map_or(1500, |d| d.if_mtu);
        Ok(Context {
            imp: ContextImpl::User { dev, if_mtu },
        })
    }

    /// Opens the verbs device called `name` (`rxe0`, ...) through the
    /// system's libibverbs.
    ///
    /// # Errors
    /// [`VerbsError::InvalidArgument`] when no such device is listed, or
    /// when this build has no `rdma-core` feature; a failed verbs call
    /// ([`VerbsError::DeviceCall`]).
    pub fn open_rdma_core(name: &str) -> Result<Context, VerbsError> {
        #[cfg(feature = "rdma-core")]
        return Ok(Context {
            imp: ContextImpl::Rdma(RdmaContext::open(name)?),
        });
        #[cfg(not(feature = "rdma-core"))]
        {
            let _ = name;
            Err(VerbsError::InvalidArgument(
                "verbs devices need the provider's rdma-core feature",
            ))
        }
    }

    /// Which implementation serves this context.
    pub fn backend(&self) -> DeviceBackend {
        match &self.imp {
            ContextImpl::User { .. } => DeviceBackend::Userspace,
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(_) => DeviceBackend::RdmaCore,
        }
    }

    /// The address and UDP port the device uses (a verbs device: the
    /// address of [`DeviceInfo::addr`] and port 4791).
    pub fn local_addr(&self) -> SocketAddr {
        match &self.imp {
            ContextImpl::User { dev, .. } => dev.local_addr(),
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(ctx) => SocketAddr::new(ctx.addr(), ROCE_V2_PORT),
        }
    }

    /// The verdict of the device's ODP self-check, if it ran (never on the
    /// userspace device, whose ODP is its own).
    pub fn odp_self_check(&self) -> Option<SelfCheck> {
        match &self.imp {
            ContextImpl::User { .. } => None,
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(ctx) => *ctx
                .shared
                .self_check
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }

    /// Runs the device's ODP self-check now unless it ran already, and
    /// returns its verdict; `None` where there is nothing to check (the
    /// userspace device, or a verbs device without RC ODP).
    ///
    /// # Errors
    /// The check could not be set up or run.
    pub fn check_odp(&self) -> Result<Option<SelfCheck>, VerbsError> {
        match &self.imp {
            ContextImpl::User { .. } => Ok(None),
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(ctx) => {
                let local = crate::AccessFlags::LOCAL_WRITE;
                if !crate::rdma_core::caps_cover(&ctx.limits.odp, local) {
                    return Ok(None);
                }
                crate::rdma_core::self_check_verdict(ctx).map(Some)
            }
        }
    }

    /// Counters of the ODP modes chosen on this device (zeros on the
    /// userspace device).
    pub fn odp_backend_counters(&self) -> OdpBackendCounters {
        match &self.imp {
            ContextImpl::User { .. } => OdpBackendCounters::default(),
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(ctx) => ctx.shared.counters.snapshot(),
        }
    }

    /// Device limits and ODP capabilities.
    pub fn query_device(&self) -> DeviceAttr {
        match &self.imp {
            ContextImpl::User { .. } => Self::userspace_attr(),
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(ctx) => ctx.device_attr(),
        }
    }

    /// The userspace device's limits.
    fn userspace_attr() -> DeviceAttr {
        DeviceAttr {
            max_qp: 1 << 20,
            max_qp_wr: 1 << 16,
            max_sge: 32,
            max_cqe: 1 << 20,
            max_mr_size: u64::MAX,
            max_qp_rd_atom: 128,
            atomic: true,
            odp_caps: OdpCaps {
                general: true,
                implicit: true,
                rc_send: true,
                rc_recv: true,
                rc_write: true,
                rc_read: true,
                rc_atomic: true,
                prefetch: true,
            },
            odp_events: OdpEventSources::current(),
            odp_local: Some(OdpMode::Native),
            odp_remote: Some(OdpMode::Native),
        }
    }

    /// Port attributes.
    pub fn query_port(&self) -> PortAttr {
        let if_mtu = match &self.imp {
            ContextImpl::User { if_mtu, .. } => *if_mtu,
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(ctx) => return ctx.port,
        };
        let fits = |mtu: Mtu| mtu.bytes() + 80 <= if_mtu as usize;
        let active_mtu = [Mtu::Mtu4096, Mtu::Mtu2048, Mtu::Mtu1024, Mtu::Mtu512]
            .into_iter()
            .find(|&m| fits(m))
            .unwrap_or(Mtu::Mtu256);
        PortAttr {
            max_mtu: Mtu::Mtu4096,
            active_mtu,
            gid_tbl_len: 1,
        }
    }

    /// The GID at `index` (the userspace device has one: its address; a
    /// verbs device its port's table).
    ///
    /// # Errors
    /// [`VerbsError::NoSuchGid`] for any other index.
    pub fn query_gid(&self, index: usize) -> Result<Gid, VerbsError> {
        match &self.imp {
            ContextImpl::User { dev, .. } => {
                if index != 0 {
                    return Err(VerbsError::NoSuchGid(index));
                }
                Ok(Gid::from_ip(dev.local_addr().ip()))
            }
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(ctx) => ctx.query_gid(index),
        }
    }

    /// Allocates a protection domain.
    ///
    /// # Errors
    /// Never on the userspace device; a failed `ibv_alloc_pd`.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain, VerbsError> {
        match &self.imp {
            ContextImpl::User { dev, .. } => Ok(ProtectionDomain::user(dev)),
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(ctx) => ProtectionDomain::rdma(ctx),
        }
    }

    /// Creates a completion queue of `capacity` entries.
    ///
    /// # Errors
    /// [`VerbsError::InvalidArgument`] for 0 (or, on a verbs device, more
    /// than it allows); an eventfd or verbs failure.
    pub fn create_cq(&self, capacity: usize) -> Result<CompletionQueue, VerbsError> {
        match &self.imp {
            ContextImpl::User { dev, .. } => CompletionQueue::new(Some(Arc::clone(dev)), capacity),
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(ctx) => CompletionQueue::rdma(ctx, capacity),
        }
    }

    /// Runs one RoCEv2 datagram (the UDP payload: BTH to ICRC) through the
    /// device's receive path in the calling thread, as if it had arrived
    /// from `src` at this device's address: the ICRC check, the parser, the
    /// queue-pair checks and the engine, with responses sent for real. For
    /// fuzzing and for tests that play a hostile peer without a socket.
    /// A verbs device receives in its kernel driver: nothing happens.
    pub fn receive_datagram(&self, src: SocketAddr, datagram: &[u8]) {
        match &self.imp {
            ContextImpl::User { dev, .. } => dev.receive_datagram(src, datagram),
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(_) => {}
        }
    }

    /// Receives and handles, in the calling thread, what has arrived for
    /// the device, unless another thread is doing so; returns the number
    /// of datagrams handled. For applications that wait by polling memory
    /// (a perftest `write_lat` loop): calling this in the loop saves the
    /// hand-over to the device's progress thread and back, and while it is
    /// called (up to 200 µs after each call) the progress thread leaves
    /// receiving to the caller: call it in a loop, or not at all.
    /// Completion-queue polls that find nothing receive by themselves; a
    /// loop of them keeps the progress thread off the socket the same way
    /// (see [`crate::CompletionQueue::poll`]). A verbs device progresses
    /// in its driver: 0.
    pub fn progress(&self) -> usize {
        match &self.imp {
            ContextImpl::User { dev, .. } => dev.progress(crate::device::Claim::Socket),
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(_) => 0,
        }
    }

    /// Packet counters of the userspace device (zeros for a verbs device,
    /// whose counters are the kernel's).
    pub fn stats(&self) -> DeviceStats {
        match &self.imp {
            ContextImpl::User { dev, .. } => dev.stats(),
            #[cfg(feature = "rdma-core")]
            ContextImpl::Rdma(_) => DeviceStats::default(),
        }
    }
}
