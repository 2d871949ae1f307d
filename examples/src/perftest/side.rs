//! One side of a test: the device, the buffer and its registration, the
//! queue pairs, and the key messages that describe them to the peer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

use odp::{AddressSpace, Advice, Mapping};
use provider::{
    AccessFlags, CompletionQueue, Context, DeviceOptions, Gid, MemoryRegion, Mtu as PathMtu,
    ProtectionDomain, QpCaps, QueuePair, RemoteInfo, Sge, devices,
};

use super::exchange::{KeyMessage, Mtu, Tool};
use super::flags::Flags;
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
    /// The registered region.
    pub mr: MemoryRegion,
    /// The buffer: per queue pair, `slot` bytes to send from, then `slot`
    /// bytes the peer writes into (the address in the key message).
    pub buf: Mapping,
    /// Bytes of each half of a queue pair's share of the buffer.
    pub slot: usize,
    /// The agreed path MTU, once connected.
    pub mtu: PathMtu,
}

/// Resolves `-d` / `-x`, or picks the local address that routes to
/// `server`, or `fallback`.
pub fn device_address(
    flags: &Flags,
    server: Option<&str>,
    fallback: IpAddr,
) -> Result<IpAddr, ToolError> {
    if let Some(d) = &flags.device {
        if let Ok(ip) = d.parse() {
            return Ok(ip);
        }
        let all = devices().map_err(|e| ToolError::Device(e.to_string()))?;
        let named: Vec<_> = all.iter().filter(|i| &i.name == d).collect();
        if named.is_empty() {
            let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
            return Err(ToolError::Device(format!(
                "no device {d}; this host has {}",
                names.join(", ")
            )));
        }
        return named.get(flags.gid_index).map(|i| i.addr).ok_or_else(|| {
            ToolError::Device(format!(
                "-x {}: {d} has {} GIDs",
                flags.gid_index,
                named.len()
            ))
        });
    }
    if let Some(server) = server {
        // The source address the kernel would route from.
        let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| {
                s.connect((server, provider::wire::ROCE_V2_PORT))?;
                s.local_addr()
            })
            .map_err(|e| ToolError::Device(format!("no route to {server}: {e}")))?;
        return Ok(probe.ip());
    }
    Ok(fallback)
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
        let ctx = Context::open_with(addr, &options).map_err(|e| {
            ToolError::Device(format!(
                "cannot open the device on {addr} (UDP port 4791): {e}"
            ))
        })?;
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
            access = access | AccessFlags::ON_DEMAND;
        }
        let (addr0, len0) = if flags.implicit_odp {
            (0, usize::MAX)
        } else {
            (buf.addr(), len)
        };
        // SAFETY: the mapping is owned by this Side and outlives the region
        // (fields drop in declaration order: `mr` before `buf`), and holds
        // no Rust objects: the device and this process share plain bytes.
        let mr = unsafe { pd.reg_mr(addr0, len0, access) }.map_err(ToolError::verbs)?;
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
        let mtu = flags.mtu.map_or(port_mtu, path_mtu);
        Ok(Side {
            ctx,
            pd,
            cq,
            qps,
            mr,
            buf,
            slot,
            mtu,
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
                    rkey: self.mr.rkey(),
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
