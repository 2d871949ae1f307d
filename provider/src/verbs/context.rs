//! Devices and contexts.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::{CompletionQueue, Gid, Mtu, OdpEventSources, ProtectionDomain, VerbsError};
use crate::device::{Device, DeviceOptions, DeviceStats};
use crate::wire::ROCE_V2_PORT;

/// A soft RoCE device this host can open: one per interface address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `srxe-<interface>` for IPv4, `srxe6-<interface>` for IPv6.
    pub name: String,
    /// The address the device binds (UDP port 4791).
    pub addr: IpAddr,
    /// The interface's MTU.
    pub if_mtu: u32,
}

impl DeviceInfo {
    /// Opens the device.
    ///
    /// # Errors
    /// As [`Context::open`].
    pub fn open(&self) -> Result<Context, VerbsError> {
        Context::open(self.addr)
    }
}

/// The devices of this host: every IPv4 and IPv6 interface address.
///
/// # Errors
/// `getifaddrs(3)` failed.
pub fn devices() -> Result<Vec<DeviceInfo>, VerbsError> {
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
    pub(crate) dev: Arc<Device>,
    if_mtu: u32,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("addr", &self.dev.local_addr())
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
        Ok(Context { dev, if_mtu })
    }

    /// The address and UDP port the device uses.
    pub fn local_addr(&self) -> SocketAddr {
        self.dev.local_addr()
    }

    /// Device limits and ODP capabilities.
    pub fn query_device(&self) -> DeviceAttr {
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
        }
    }

    /// Port attributes.
    pub fn query_port(&self) -> PortAttr {
        let fits = |mtu: Mtu| mtu.bytes() + 80 <= self.if_mtu as usize;
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

    /// The GID at `index` (one: the device's address).
    ///
    /// # Errors
    /// [`VerbsError::NoSuchGid`] for any other index.
    pub fn query_gid(&self, index: usize) -> Result<Gid, VerbsError> {
        if index != 0 {
            return Err(VerbsError::NoSuchGid(index));
        }
        Ok(Gid::from_ip(self.dev.local_addr().ip()))
    }

    /// Allocates a protection domain.
    ///
    /// # Errors
    /// Never, today; kept fallible like verbs.
    pub fn alloc_pd(&self) -> Result<ProtectionDomain, VerbsError> {
        Ok(ProtectionDomain {
            id: self.dev.new_pd(),
            dev: Arc::clone(&self.dev),
        })
    }

    /// Creates a completion queue of `capacity` entries.
    ///
    /// # Errors
    /// [`VerbsError::InvalidArgument`] for 0; an eventfd failure.
    pub fn create_cq(&self, capacity: usize) -> Result<CompletionQueue, VerbsError> {
        CompletionQueue::new(Some(Arc::clone(&self.dev)), capacity)
    }

    /// Runs one RoCEv2 datagram (the UDP payload: BTH to ICRC) through the
    /// device's receive path in the calling thread, as if it had arrived
    /// from `src` at this device's address: the ICRC check, the parser, the
    /// queue-pair checks and the engine, with responses sent for real. For
    /// fuzzing and for tests that play a hostile peer without a socket.
    pub fn receive_datagram(&self, src: SocketAddr, datagram: &[u8]) {
        self.dev.receive_datagram(src, datagram);
    }

    /// Receives and handles, in the calling thread, what has arrived for
    /// the device, unless another thread is doing so; returns the number
    /// of datagrams handled. For applications that wait by polling memory
    /// (a perftest `write_lat` loop): calling this in the loop saves the
    /// hand-over to the device's progress thread and back, and while it is
    /// called (up to 200 µs after each call) the progress thread leaves
    /// receiving to the caller: call it in a loop, or not at all.
    /// Completion-queue polls that find nothing receive by themselves
    /// (without keeping the progress thread off the socket).
    pub fn progress(&self) -> usize {
        self.dev.progress(crate::device::Claim::Socket)
    }

    /// Packet counters of the device.
    pub fn stats(&self) -> DeviceStats {
        self.dev.stats()
    }
}
