//! One side of a test: the device, the buffer and its registration, the
//! queue pairs, and the key messages that describe them to the peer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use odp::{AddressSpace, Advice, Mapping};
use provider::{
    AccessFlags, CompletionQueue, Context, DeviceBackend, DeviceInfo, DeviceOptions, Gid,
    MemoryRegion, MrOptions, Mtu as PathMtu, ProtectionDomain, QpCaps, QueuePair, RemoteInfo, Sge,
    VerbsError, devices,
};

use super::exchange::{KeyMessage, Mtu, Tool};
use super::flags::{AtomicType, Flags};
use super::gid::{self, interface_of};
use super::{ToolError, page_round};

/// Completion queue entries (send and receive share one queue).
const CQ_DEPTH: usize = 1 << 14;
/// Receives kept posted per queue pair by SEND tests.
pub const RX_DEPTH: u32 = 512;

/// The local half of a test.
pub struct Side {
    /// The device.
    pub ctx: Context,
    /// Its protection domain.
    pub pd: ProtectionDomain,
    /// Completions of sends and receives.
    pub cq: CompletionQueue,
    /// The queue pairs.
    pub qps: Vec<QueuePair>,
    /// The registered region: every local SGE uses it, and unless
    /// `remote_mr` is set, the peer's accesses too.
    pub mr: MemoryRegion,
    /// A second registration of the same buffer for the peer's accesses,
    /// when the device cannot give one ODP region remote access (a real
    /// device without usable ODP: `mr` pins on demand for local access,
    /// this one pins the whole buffer).
    pub remote_mr: Option<MemoryRegion>,
    /// The buffer: per queue pair, `slot` bytes to send from, then `slot`
    /// bytes the peer writes into (the address in the key message).
    pub buf: Mapping,
    /// Bytes of each half of a queue pair's share of the buffer.
    pub slot: usize,
    /// Before the exchange, the MTU this side can offer: the requested one
    /// (`-m`) if the port allows it, else the port's active MTU; then the
    /// one agreed with the peer (the smaller of the two offers).
    pub mtu: PathMtu,
    /// The atomic operation of atomic tools (`-A`).
    pub atomic: AtomicType,
}

/// Resolves `-d` / `-x`, or picks the local address that routes to
/// `server`, or `fallback`. `-x` indexes the interface's GID table in
/// rxe's order ([`gid`](super::gid)).
pub fn device_address(
    flags: &Flags,
    server: Option<&str>,
    fallback: IpAddr,
) -> Result<IpAddr, ToolError> {
    let listed = || devices().map_err(|e| ToolError::Device(e.to_string()));
    let named_interface = match &flags.device {
        Some(d) if d.parse::<IpAddr>().is_err() => {
            let all = listed()?;
            let named: Vec<_> = all.iter().filter(|i| &i.name == d).collect();
            let Some(first) = named.first() else {
                let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
                return Err(ToolError::Device(format!(
                    "no device {d}; this host has {}",
                    names.join(", ")
                )));
            };
            if flags.gid_index.is_none() {
                return Ok(first.addr);
            }
            interface_of(d).map(str::to_string)
        }
        _ => None,
    };
    let Some(index) = flags.gid_index else {
        return default_address(flags, server, fallback);
    };
    let interface = match named_interface {
        Some(i) => i,
        None => {
            let addr = default_address(flags, server, fallback)?;
            let all = listed()?;
            let holder = all.iter().find(|d| d.addr == addr);
            holder
                .and_then(|d| interface_of(&d.name))
                .map(str::to_string)
                .ok_or_else(|| {
                    ToolError::Device(format!(
                        "-x {index}: no interface has the address {addr}; name the device with -d"
                    ))
                })?
        }
    };
    let table = gid::host_table(&interface).map_err(|e| ToolError::Device(e.to_string()))?;
    let Some(&addr) = table.get(index) else {
        let entries: Vec<String> = table
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{i} = {a}"))
            .collect();
        return Err(ToolError::Device(format!(
            "-x {index}: no such GID; the GID table of {interface} (rxe's order) has {}: {}",
            table.len(),
            entries.join(", ")
        )));
    };
    if let IpAddr::V6(v6) = addr
        && v6.is_unicast_link_local()
    {
        return Err(ToolError::Device(format!(
            "-x {index}: GID {index} of {interface} is the link-local address {addr}, \
             which this device cannot use; pick an IPv4 or global IPv6 GID"
        )));
    }
    Ok(addr)
}

/// `-d` as an address, or the local address that routes to `server`, or
/// `fallback`.
fn default_address(
    flags: &Flags,
    server: Option<&str>,
    fallback: IpAddr,
) -> Result<IpAddr, ToolError> {
    if let Some(ip) = flags.device.as_deref().and_then(|d| d.parse().ok()) {
        return Ok(ip);
    }
    if let Some(server) = server {
        // The source address the kernel would route from.
        let unspecified = match server.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let probe = UdpSocket::bind((unspecified, 0))
            .and_then(|s| {
                s.connect((server, provider::wire::ROCE_V2_PORT))?;
                s.local_addr()
            })
            .map_err(|e| ToolError::Device(format!("no route to {server}: {e}")))?;
        return Ok(probe.ip());
    }
    Ok(fallback)
}

/// Opens the device: the real verbs device `-d` names (with the
/// `rdma-core` feature), else the userspace device on `addr`.
fn open_context(
    flags: &Flags,
    addr: IpAddr,
    options: &DeviceOptions,
) -> Result<Context, ToolError> {
    if let Some(info) = named_kernel_device(flags)? {
        if flags.gid_index.is_some() {
            return Err(ToolError::Device(format!(
                "-x with the kernel device {}: not supported; it uses its RoCEv2 GID of {}",
                info.name, info.addr
            )));
        }
        return info
            .open()
            .map_err(|e| ToolError::Device(format!("cannot open {}: {e}", info.name)));
    }
    Context::open_with(addr, options).map_err(|e| {
        ToolError::Device(format!(
            "cannot open the device on {addr} (UDP port 4791): {e}"
        ))
    })
}

/// The real verbs device (kernel rxe, a NIC) `-d` names, if it names one.
fn named_kernel_device(flags: &Flags) -> Result<Option<DeviceInfo>, ToolError> {
    let Some(name) = &flags.device else {
        return Ok(None);
    };
    if name.parse::<IpAddr>().is_ok() {
        return Ok(None);
    }
    let all = devices().map_err(|e| ToolError::Device(e.to_string()))?;
    Ok(all
        .into_iter()
        .find(|d| &d.name == name && d.backend == DeviceBackend::RdmaCore))
}

/// Registers the buffer with `access`. A device that cannot give an ODP
/// region remote access (a real device without usable ODP) gets two
/// registrations of the same buffer instead, as verbs allows: an ODP one
/// for local SGEs (pinned on demand) and a pinned one for the peer.
fn register(
    pd: &ProtectionDomain,
    addr: usize,
    len: usize,
    access: AccessFlags,
) -> Result<(MemoryRegion, Option<MemoryRegion>), ToolError> {
    // SAFETY: the mapping is owned by the Side and outlives the regions
    // (fields drop in declaration order: the regions before `buf`), and
    // holds no Rust objects: the device and this process share plain
    // bytes. The same holds for the two registrations below.
    match unsafe { pd.reg_mr(addr, len, access) } {
        Ok(mr) => return Ok((mr, None)),
        Err(VerbsError::OdpUnavailable(why)) => {
            eprintln!(" ODP: {why}; local SGEs use an ODP region, the peer a pinned one")
        }
        Err(e) => return Err(ToolError::verbs(e)),
    }
    let local = AccessFlags::LOCAL_WRITE | AccessFlags::ON_DEMAND;
    // SAFETY: as above.
    let mr = unsafe { pd.reg_mr(addr, len, local) }.map_err(ToolError::verbs)?;
    let pinned = MrOptions {
        pin_whole_fallback: true,
        ..MrOptions::default()
    };
    // SAFETY: as above.
    let remote = unsafe { pd.reg_mr_with(addr, len, access, &pinned) }.map_err(ToolError::verbs)?;
    Ok((mr, Some(remote)))
}

/// Says once per process, on stderr, that no event source sees plain
/// unmaps of ODP memory (opted out, or the kernel refused a userfaultfd).
fn warn_without_backstop(ctx: &Context) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let sources = ctx.query_device().odp_events;
    if sources.backstop() {
        return;
    }
    WARNED.call_once(|| {
        let why = match sources.userfaultfd_error {
            Some(kind) => format!("the kernel refused a userfaultfd: {kind}"),
            None => "opted out".to_owned(),
        };
        eprintln!(
            " ODP events: no source sees plain unmaps of ODP memory ({why}); device copies rely on their copy-time checks"
        );
    });
}

/// The index of `addr` in its interface's GID table (rxe's order), if an
/// interface of this host has it.
pub fn gid_index_of(addr: IpAddr) -> Option<usize> {
    let all = devices().ok()?;
    let interface = all
        .iter()
        .find(|d| d.addr == addr)
        .and_then(|d| interface_of(&d.name))?;
    gid::host_table(interface)
        .ok()?
        .iter()
        .position(|&a| a == addr)
}

/// Whether the tool's requests are READs or atomics.
fn reads(tool: Tool) -> bool {
    matches!(tool, Tool::ReadBw | Tool::ReadLat) || tool.is_atomic()
}

/// The path MTU of `bytes` (4096 for anything unknown).
pub fn path_mtu(bytes: u32) -> PathMtu {
    match bytes {
        256 => PathMtu::Mtu256,
        512 => PathMtu::Mtu512,
        1024 => PathMtu::Mtu1024,
        2048 => PathMtu::Mtu2048,
        _ => PathMtu::Mtu4096,
    }
}

/// The exchange's MTU enum for a path MTU.
pub fn wire_mtu(m: PathMtu) -> Mtu {
    match m.bytes() {
        256 => Mtu::Mtu256,
        512 => Mtu::Mtu512,
        1024 => Mtu::Mtu1024,
        2048 => Mtu::Mtu2048,
        _ => Mtu::Mtu4096,
    }
}

impl Side {
    /// Opens the device on `addr`, maps and registers the buffer for
    /// messages up to `max_size`, and creates the queue pairs.
    pub fn open(tool: Tool, flags: &Flags, addr: IpAddr, max_size: u64) -> Result<Side, ToolError> {
        let options = DeviceOptions {
            odp_events: flags.odp_events,
            ..DeviceOptions::default()
        };
        let ctx = open_context(flags, addr, &options)?;
        let pd = ctx.alloc_pd().map_err(ToolError::verbs)?;
        let cq = ctx.create_cq(CQ_DEPTH).map_err(ToolError::verbs)?;
        let slot = page_round(max_size as usize);
        let len = 2 * slot * flags.qps as usize;
        let buf = AddressSpace::process()
            .map_anonymous(len, 0)
            .map_err(|e| ToolError::Device(format!("cannot map {len} bytes: {e}")))?;
        let mut access = AccessFlags::LOCAL_WRITE
            | AccessFlags::REMOTE_WRITE
            | AccessFlags::REMOTE_READ
            | AccessFlags::REMOTE_ATOMIC;
        if flags.odp || flags.implicit_odp {
            access |= AccessFlags::ON_DEMAND;
        }
        let (addr0, len0) = if flags.implicit_odp {
            (0, usize::MAX)
        } else {
            (buf.addr(), len)
        };
        let (mr, remote_mr) = register(&pd, addr0, len0, access)?;
        if access.contains(AccessFlags::ON_DEMAND) {
            warn_without_backstop(&ctx);
        }
        if flags.odp_prefetch {
            let whole = Sge {
                addr: buf.addr() as u64,
                length: len as u32,
                lkey: mr.lkey(),
            };
            pd.advise_mr(Advice::PrefetchWrite, &[whole])
                .map_err(ToolError::verbs)?;
        }
        let depth = flags.tx_depth.max(RX_DEPTH) * 2;
        // As perftest: as many READs and atomics in flight as the device
        // allows.
        let rd_atomic = if reads(tool) {
            ctx.query_device().max_qp_rd_atom.min(255) as u8
        } else {
            16
        };
        let mut qps = Vec::new();
        for _ in 0..flags.qps {
            let qp = pd
                .create_qp(&cq, &cq)
                .caps(QpCaps {
                    max_send_wr: depth,
                    max_recv_wr: depth,
                })
                .max_rd_atomic(rd_atomic)
                .build()
                .map_err(ToolError::verbs)?;
            qp.to_init().map_err(ToolError::verbs)?;
            qps.push(qp);
        }
        let port_mtu = ctx.query_port().active_mtu;
        // As perftest's set_mtu: a request above the active MTU gets the
        // active MTU.
        let mtu = match flags.mtu.map(path_mtu) {
            Some(m) if m.bytes() <= port_mtu.bytes() => m,
            _ => port_mtu,
        };
        Ok(Side {
            ctx,
            pd,
            cq,
            qps,
            mr,
            remote_mr,
            buf,
            slot,
            mtu,
            atomic: flags.atomic_type.unwrap_or_default(),
        })
    }

    /// The address of byte `offset` of the buffer.
    pub fn addr(&self, offset: usize) -> u64 {
        (self.buf.addr() + offset) as u64
    }

    /// Where queue pair `qp` sends from.
    pub fn source(&self, qp: usize) -> usize {
        2 * qp * self.slot
    }

    /// Where the peer writes for queue pair `qp`.
    pub fn target(&self, qp: usize) -> usize {
        2 * qp * self.slot + self.slot
    }

    /// An SGE of `len` bytes at `offset` of the buffer.
    pub fn sge(&self, offset: usize, len: u32) -> Sge {
        Sge {
            addr: self.addr(offset),
            length: len,
            lkey: self.mr.lkey(),
        }
    }

    /// The bytes at `offset`, copied.
    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.buf.len());
        // SAFETY: within the mapping; the device may write concurrently,
        // and plain bytes tolerate that (the tools read only after the
        // writes they check are complete).
        unsafe { std::slice::from_raw_parts(self.buf.ptr().add(offset), len) }.to_vec()
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.buf.len());
        // SAFETY: within the mapping, which holds no Rust objects.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.ptr().add(offset), data.len())
        }
    }

    /// The byte at `offset`, read fresh from memory (the device writes it).
    pub fn byte(&self, offset: usize) -> u8 {
        assert!(offset < self.buf.len());
        // SAFETY: within the mapping; a volatile read of one byte.
        unsafe { self.buf.ptr().add(offset).read_volatile() }
    }

    /// The key messages of the queue pairs, as perftest fills them.
    pub fn keys(&self, tool: Tool) -> Vec<KeyMessage> {
        let out_reads = if reads(tool) {
            self.ctx.query_device().max_qp_rd_atom as u16
        } else {
            1
        };
        let gid = Gid::from_ip(self.ctx.local_addr().ip()).0;
        self.qps
            .iter()
            .enumerate()
            .map(|(i, qp)| {
                let e = qp.endpoint(self.mtu);
                KeyMessage {
                    lid: 0,
                    out_reads,
                    qpn: e.qp_num,
                    psn: e.psn,
                    rkey: self.remote_mr.as_ref().unwrap_or(&self.mr).rkey(),
                    vaddr: self.addr(self.target(i)),
                    gid,
                    srqn: 0,
                }
            })
            .collect()
    }

    /// Connects queue pair `i` to the peer's, at the agreed MTU.
    pub fn connect(&mut self, remote: &[KeyMessage], mtu: Mtu) -> Result<(), ToolError> {
        if remote.len() != self.qps.len() {
            return Err(ToolError::Protocol(format!(
                "the peer has {} queue pairs, this side {}",
                remote.len(),
                self.qps.len()
            )));
        }
        self.mtu = path_mtu(256 << (mtu as u32 - 1));
        for (qp, key) in self.qps.iter().zip(remote) {
            let info = RemoteInfo {
                qp_num: key.qpn,
                psn: key.psn,
                gid: Gid(key.gid),
                port: 0,
                mtu: self.mtu,
            };
            qp.connect(&info).map_err(ToolError::verbs)?;
        }
        Ok(())
    }

    /// The source address of the device, for messages.
    pub fn local_addr(&self) -> SocketAddr {
        self.ctx.local_addr()
    }
}
