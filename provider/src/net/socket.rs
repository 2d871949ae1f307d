//! [`RoceSocket`]: the UDP socket of one device address, with batched
//! sending (sendmmsg, optional UDP GSO) and receiving (recvmmsg, optional
//! UDP GRO), and the ICRC computed on send and judged on receive.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libc::{c_int, c_uint};

use super::check::{self, SMALL_GROUP, check_packet};
use super::packet::{IcrcVerdict, Ipv4IdPolicy, OutPacket, RecvSlot};
use super::source_ports::{SourcePorts, make_send_only};
use super::sys::{self, CmsgBuf, RECV_CMSG_SPACE, RawAddr, SEND_CMSG_SPACE};
use super::{GRO_SLOT_CAPACITY, NetError, SocketConfig, Transport};
use crate::wire::icrc::{GROUP, IcrcGroup};

/// Messages per sendmmsg call (larger batches are sent in several calls).
const SEND_MSGS: usize = 64;
/// Packets (iovecs) per sendmmsg call: four full GSO sends.
const SEND_IOVS: usize = 256;
/// Datagrams per recvmmsg call.
const RECV_MSGS: usize = 64;
/// Slots of a receive's first recvmmsg call (see `recv_batch`).
const RECV_PROBE: usize = 4;
/// Most segments in one GSO send (the kernel's UDP_MAX_SEGMENTS is 64 on
/// older kernels, 128 on newer).
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes in one GSO send: the whole must fit one IPv4 datagram (the
/// largest UDP payload, 65535 - 20 - 8; also within IPv6's 65535 - 8).
pub(crate) const MAX_GSO_BYTES: usize = super::check::MAX_PAYLOAD_V4;

/// The UDP socket of one device address. `Send + Sync`: every call keeps
/// its scratch (mmsghdr, iovec, address and cmsg arrays) on its own stack,
/// so threads may send and receive concurrently without locks.
#[derive(Debug)]
pub struct RoceSocket {
    fd: OwnedFd,
    local: SocketAddr,
    config: SocketConfig,
    gso: bool,
    gso_fallbacks: AtomicU64,
    source_ports: SourcePorts,
}

/// The socket a run of packets goes out from, and its bound address (the
/// source the ICRC covers).
#[derive(Clone, Copy)]
struct Sender<'a> {
    fd: BorrowedFd<'a>,
    local: SocketAddr,
}

/// One sendmmsg message: `count` packets from `first`, GSO segment `seg`.
#[derive(Clone, Copy, Debug, Default)]
struct MsgPlan {
    first: usize,
    count: usize,
    seg: usize,
    bytes: usize,
    closed: bool,
}

/// How a transmit attempt ended.
enum Transmit {
    /// Every planned message went out.
    All,
    /// `sent` packets went out, then `error`.
    Partial { sent: usize, error: io::Error },
    /// `sent` packets went out, then the kernel refused a GSO message.
    GsoRefused { sent: usize },
}

fn setopt(
    fd: &OwnedFd,
    level: c_int,
    name: c_int,
    value: c_int,
    what: &'static str,
) -> Result<(), NetError> {
    sys::set_int(fd.as_fd(), level, name, value)
        .map_err(|source| NetError::SetOption { name: what, source })
}

/// The options that shape what the socket sends: IPv6 only for IPv6, no
/// local fragmentation (DF; with an unconnected IPv4 socket also IP ID 0,
/// the ID the ICRC is computed with), IPv6 flow label 0 as rxe sends
/// (the ICRC masks it), checksum 0 on IPv6 if configured, send buffer.
fn configure_sender(fd: &OwnedFd, v6: bool, config: &SocketConfig) -> Result<(), NetError> {
    if v6 {
        setopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1, "IPV6_V6ONLY")?;
        setopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            sys::IPV6_PMTUDISC_DO,
            "IPV6_MTU_DISCOVER",
        )?;
        setopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_AUTOFLOWLABEL,
            0,
            "IPV6_AUTOFLOWLABEL",
        )?;
        if config.ipv6_zero_checksum {
            setopt(
                fd,
                libc::IPPROTO_UDP,
                sys::UDP_NO_CHECK6_TX,
                1,
                "UDP_NO_CHECK6_TX",
            )?;
        }
    } else {
        setopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
            "IP_MTU_DISCOVER",
        )?;
    }
    // The FORCE variants pass net.core.wmem_max but need CAP_NET_ADMIN;
    // without it the plain one applies (capped).
    if let Some(n) = config.send_buffer {
        let n = n.min(i32::MAX as usize / 2) as c_int;
        if sys::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, n).is_err() {
            setopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, n, "SO_SNDBUF")?;
        }
    }
    Ok(())
}

/// The options of the receiving socket: the destination address of every
/// datagram (the ICRC covers it), checksum-0 IPv6 datagrams accepted
/// (rxe sends them), GRO and receive buffer if configured.
fn configure_receiver(fd: &OwnedFd, v6: bool, config: &SocketConfig) -> Result<(), NetError> {
    if v6 {
        setopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            1,
            "IPV6_RECVPKTINFO",
        )?;
        setopt(
            fd,
            libc::IPPROTO_UDP,
            sys::UDP_NO_CHECK6_RX,
            1,
            "UDP_NO_CHECK6_RX",
        )?;
    } else {
        setopt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1, "IP_PKTINFO")?;
    }
    if config.gro {
        setopt(fd, libc::SOL_UDP, sys::UDP_GRO, 1, "UDP_GRO")?;
    }
    if let Some(n) = config.recv_buffer {
        let n = n.min(i32::MAX as usize / 2) as c_int;
        if sys::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, n).is_err() {
            setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, n, "SO_RCVBUF")?;
        }
    }
    Ok(())
}

/// A send-only socket bound to `addr` (a source port of flows; see
/// [`SourcePorts`]) with the sending options of `config`.
pub(crate) fn bind_sender(addr: SocketAddr, config: &SocketConfig) -> Result<OwnedFd, NetError> {
    let v6 = addr.is_ipv6();
    let fd = sys::udp_socket(v6).map_err(NetError::Socket)?;
    configure_sender(&fd, v6, config)?;
    make_send_only(&fd)?;
    sys::bind(fd.as_fd(), &addr).map_err(|source| NetError::Bind { addr, source })?;
    Ok(fd)
}

impl RoceSocket {
    /// Binds UDP port `port` (4791 in production, 0 for an ephemeral one)
    /// on `addr` with the default [`SocketConfig`].
    ///
    /// # Errors
    /// See [`Self::bind_with`].
    pub fn bind(addr: IpAddr, port: u16) -> Result<Self, NetError> {
        Self::bind_with(SocketAddr::new(addr, port), SocketConfig::default())
    }

    /// Binds `addr` (a concrete IPv4 or IPv6 address, with a scope id for
    /// link-local IPv6) with the given options.
    ///
    /// # Errors
    /// [`NetError::UnspecifiedAddress`] for 0.0.0.0 or ::, since the ICRC
    /// covers the source address and the socket must know it;
    /// [`NetError::MappedAddress`] for IPv4-mapped IPv6; otherwise the
    /// failing system call.
    pub fn bind_with(addr: SocketAddr, config: SocketConfig) -> Result<Self, NetError> {
        if addr.ip().is_unspecified() {
            return Err(NetError::UnspecifiedAddress(addr.ip()));
        }
        if let IpAddr::V6(a) = addr.ip()
            && a.to_ipv4_mapped().is_some()
        {
            return Err(NetError::MappedAddress(addr.ip()));
        }
        let v6 = addr.is_ipv6();
        let fd = sys::udp_socket(v6).map_err(NetError::Socket)?;
        configure_sender(&fd, v6, &config)?;
        configure_receiver(&fd, v6, &config)?;
        sys::bind(fd.as_fd(), &addr).map_err(|source| NetError::Bind { addr, source })?;
        let local = sys::local_addr(fd.as_fd()).map_err(NetError::Socket)?;
        let gso = config.gso && (!v6 || !config.ipv6_zero_checksum);
        let source_ports = SourcePorts::new(local.ip(), config.clone());
        Ok(Self {
            fd,
            local,
            config,
            gso,
            gso_fallbacks: AtomicU64::new(0),
            source_ports,
        })
    }

    /// Opens UDP source port `port` for one more flow (a queue pair):
    /// packets whose [`OutPacket::source_port`] is `port` then go out from
    /// it. Ports are counted: each open needs one [`Self::close_source_port`].
    /// The socket's own port needs no opening.
    ///
    /// # Errors
    /// Binding the port failed (`EADDRINUSE`: another user's socket, or
    /// one without `SO_REUSEPORT`, holds it); packets for it then go out
    /// from the socket's own port.
    pub fn open_source_port(&self, port: u16) -> Result<(), NetError> {
        if port == self.local.port() {
            return Ok(());
        }
        self.source_ports.acquire(port)
    }

    /// Gives back one use of `port` opened with [`Self::open_source_port`].
    pub fn close_source_port(&self, port: u16) {
        if port != self.local.port() {
            self.source_ports.release(port);
        }
    }

    /// How many flows have `port` open (0 if it is not open; the socket's
    /// own port counts as 0).
    pub fn source_port_users(&self, port: u16) -> usize {
        self.source_ports.users(port)
    }

    /// The source port a packet asking for `port` goes out from: `port`
    /// if it is open, otherwise the socket's own.
    fn effective_port(&self, port: u16) -> u16 {
        if port != 0 && self.source_ports.is_open(port) {
            port
        } else {
            self.local.port()
        }
    }

    /// The bound address and port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The options the socket was bound with.
    pub fn config(&self) -> &SocketConfig {
        &self.config
    }

    /// Whether sends use UDP GSO.
    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    /// How many GSO messages the kernel refused (each was resent packet by
    /// packet). Non-zero means the route's device cannot segment UDP or a
    /// segment exceeds the path MTU.
    pub fn gso_fallbacks(&self) -> u64 {
        self.gso_fallbacks.load(Ordering::Relaxed)
    }

    /// Writes the ICRC into `packet` as if it were sent alone (IP ID 0),
    /// without sending it; see [`Self::send_sealed`].
    ///
    /// # Errors
    /// `InvalidInput` for a destination of the other family or an
    /// impossible length.
    pub fn seal(&self, packet: &mut OutPacket<'_>) -> io::Result<()> {
        let from = SocketAddr::new(self.local.ip(), self.effective_port(packet.source_port));
        check::seal(&from, &packet.dest, 0, packet.buf)
    }

    /// Sends a batch: computes each packet's ICRC over the IP and UDP
    /// headers the kernel will produce, writes it into the packet's last 4
    /// bytes and sends with sendmmsg(2) (one call per 64 datagrams or 256
    /// packets). Runs of equal-size packets to one destination go as one
    /// GSO message when enabled.
    ///
    /// Returns how many packets (a prefix of `packets`) were sent. Fewer
    /// than all means the next packet failed: calling again from there
    /// returns its error (an invalid packet, `EMSGSIZE` for one larger than
    /// the path MTU, `WouldBlock` if the send buffer stayed full for
    /// `send_wait`). `EINTR` is retried.
    ///
    /// # Errors
    /// The error of the first packet, if none was sent.
    pub fn send_batch(&self, packets: &mut [OutPacket<'_>]) -> io::Result<usize> {
        self.send_impl(packets, true, self.gso)
    }

    /// Sends packets whose ICRC the caller has written (for instance with
    /// [`Self::seal`], possibly corrupted on purpose), one datagram each, no
    /// GSO. Same return as [`Self::send_batch`].
    ///
    /// # Errors
    /// As [`Self::send_batch`].
    pub fn send_sealed(&self, packets: &mut [OutPacket<'_>]) -> io::Result<usize> {
        self.send_impl(packets, false, false)
    }

    /// Sends each run of packets with one source port from that port's
    /// socket (the socket's own if the port is not open).
    fn send_impl(&self, packets: &mut [OutPacket<'_>], seal: bool, gso: bool) -> io::Result<usize> {
        let mut done = 0;
        while done < packets.len() {
            let port = packets[done].source_port;
            let run = packets[done..]
                .iter()
                .take_while(|p| p.source_port == port)
                .count();
            let run_packets = &mut packets[done..done + run];
            // The port's socket stays open while the run is sent.
            let result = self.source_ports.with_socket(port, |fd| {
                let sender = match fd {
                    Some(fd) => Sender {
                        fd,
                        local: SocketAddr::new(self.local.ip(), port),
                    },
                    None => Sender {
                        fd: self.fd.as_fd(),
                        local: self.local,
                    },
                };
                self.send_run(sender, run_packets, seal, gso)
            });
            match result {
                Ok(sent) if sent == run => done += sent,
                Ok(sent) => return Ok(done + sent),
                Err(e) => return if done > 0 { Ok(done) } else { Err(e) },
            }
        }
        Ok(done)
    }

    /// Sends `packets` from `sender`: plans messages (GSO runs), seals,
    /// transmits, and goes on packet by packet if the kernel refuses GSO.
    fn send_run(
        &self,
        sender: Sender<'_>,
        packets: &mut [OutPacket<'_>],
        seal: bool,
        mut gso: bool,
    ) -> io::Result<usize> {
        let mut done = 0;
        let mut plans = [MsgPlan::default(); SEND_MSGS];
        while done < packets.len() {
            let (nmsgs, error) = Self::plan(sender.local, packets, done, gso, &mut plans);
            if nmsgs == 0 {
                let e = error.unwrap_or_else(|| io::Error::other("nothing planned"));
                return if done > 0 { Ok(done) } else { Err(e) };
            }
            let plans = &plans[..nmsgs];
            if seal {
                for m in plans {
                    let run = packets[m.first..m.first + m.count].iter_mut();
                    check::seal_segments(&sender.local, run.map(|p| (&p.dest, &mut *p.buf)))?;
                }
            }
            match self.transmit(sender.fd, packets, plans) {
                Transmit::All => done += plans.iter().map(|m| m.count).sum::<usize>(),
                Transmit::Partial { sent, error } => {
                    done += sent;
                    return if done > 0 { Ok(done) } else { Err(error) };
                }
                Transmit::GsoRefused { sent } => {
                    done += sent;
                    gso = false;
                    self.gso_fallbacks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(done)
    }

    /// Groups packets from `start` into at most SEND_MSGS messages and
    /// SEND_IOVS packets. Stops before an invalid packet and returns its
    /// error with the number of messages planned.
    fn plan(
        local: SocketAddr,
        packets: &[OutPacket<'_>],
        start: usize,
        gso: bool,
        out: &mut [MsgPlan; SEND_MSGS],
    ) -> (usize, Option<io::Error>) {
        let mut n = 0;
        for (i, p) in packets.iter().enumerate().skip(start).take(SEND_IOVS) {
            let len = p.buf.len();
            if let Err(e) = check_packet(&local, &p.dest, len) {
                return (n, Some(e));
            }
            if gso && n > 0 {
                let m = &mut out[n - 1];
                if !m.closed
                    && packets[m.first].dest == p.dest
                    && len <= m.seg
                    && m.count < MAX_GSO_SEGMENTS
                    && m.bytes + len <= MAX_GSO_BYTES
                {
                    m.count += 1;
                    m.bytes += len;
                    m.closed = len < m.seg;
                    continue;
                }
            }
            // A new message. Under GSO, do not start one that could not grow
            // to a full send within this call's iovecs: end the call here.
            let iovs_used = i - start;
            if n == SEND_MSGS || (gso && n > 0 && SEND_IOVS - iovs_used < MAX_GSO_SEGMENTS) {
                break;
            }
            out[n] = MsgPlan {
                first: i,
                count: 1,
                seg: len,
                bytes: len,
                closed: false,
            };
            n += 1;
        }
        (n, None)
    }

    /// Sends the planned messages, looping over partial sendmmsg results.
    fn transmit(
        &self,
        fd: BorrowedFd<'_>,
        packets: &mut [OutPacket<'_>],
        plans: &[MsgPlan],
    ) -> Transmit {
        let base = plans[0].first;
        // Only the entries used are initialised: a one-packet send costs no
        // more than it needs.
        let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; SEND_IOVS];
        let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; SEND_MSGS];
        let mut addrs = [const { MaybeUninit::<RawAddr>::uninit() }; SEND_MSGS];
        let mut cmsgs = [const { MaybeUninit::<CmsgBuf<SEND_CMSG_SPACE>>::uninit() }; SEND_MSGS];
        for (k, m) in plans.iter().enumerate() {
            for (j, p) in packets[m.first..m.first + m.count].iter_mut().enumerate() {
                iovs[m.first - base + j].write(libc::iovec {
                    iov_base: p.buf.as_mut_ptr().cast(),
                    iov_len: p.buf.len(),
                });
            }
            let (raw, len) = RawAddr::new(&packets[m.first].dest);
            // SAFETY: all-zero bytes are a valid mmsghdr (null pointers,
            // zero lengths).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = ptr::from_mut(addrs[k].write(raw)).cast();
            h.msg_hdr.msg_namelen = len;
            h.msg_hdr.msg_iov = iovs[m.first - base].as_mut_ptr();
            h.msg_hdr.msg_iovlen = m.count as _;
            if m.count > 1 {
                let c = cmsgs[k].write(CmsgBuf([0u8; SEND_CMSG_SPACE]));
                let space = c.set_gso_segment(m.seg as u16);
                h.msg_hdr.msg_control = c.0.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = space as _;
            }
            hdrs[k].write(h);
        }
        let mut k = 0;
        let mut sent = 0;
        while k < plans.len() {
            // SAFETY: hdrs[k..plans.len()] were initialised above; their
            // name, iovec (initialised entries) and control pointers point
            // into the arrays above and into the packets' buffers, all alive
            // and unmoved for the call; the kernel only reads them (and
            // writes msg_len).
            let rc = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr().cast::<libc::mmsghdr>().add(k),
                    (plans.len() - k) as c_uint,
                    0,
                )
            };
            if rc > 0 {
                let rc = rc as usize;
                sent += plans[k..k + rc].iter().map(|m| m.count).sum::<usize>();
                k += rc;
                continue;
            }
            let error = if rc == 0 {
                io::Error::new(io::ErrorKind::WriteZero, "sendmmsg sent nothing")
            } else {
                sys::errno()
            };
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => match self.wait_writable(fd) {
                    Ok(true) => continue,
                    Ok(false) => return Transmit::Partial { sent, error },
                    Err(error) => return Transmit::Partial { sent, error },
                },
                Some(libc::EINVAL | libc::EIO | libc::EOPNOTSUPP) if plans[k].count > 1 => {
                    return Transmit::GsoRefused { sent };
                }
                _ => return Transmit::Partial { sent, error },
            }
        }
        Transmit::All
    }

    /// Waits for send-buffer space for at most `send_wait`.
    fn wait_writable(&self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        let Some(limit) = self.config.send_wait else {
            return Ok(false);
        };
        let deadline = Instant::now() + limit;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            if sys::wait(fd, libc::POLLOUT, Some(deadline - now))? {
                return Ok(true);
            }
        }
    }

    /// Receives up to `slots.len()` datagrams (at most 64 per call) with one
    /// recvmmsg(2), waiting at most `timeout` for the first (`None`: do not
    /// wait). Fills each slot's bytes, source, destination address (from
    /// IP_PKTINFO / IPV6_PKTINFO), length, truncation and ICRC verdict(s).
    /// Returns the number of slots filled; 0 if nothing came in time.
    ///
    /// # Errors
    /// `InvalidInput` if GRO is on and a slot is smaller than
    /// [`GRO_SLOT_CAPACITY`]; otherwise the error of recvmmsg or ppoll.
    pub fn recv_batch(
        &self,
        slots: &mut [RecvSlot],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let n = slots.len().min(RECV_MSGS);
        let slots = &mut slots[..n];
        if self.config.gro && slots.iter().any(|s| s.capacity() < GRO_SLOT_CAPACITY) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "UDP_GRO needs receive slots of at least 65536 bytes",
            ));
        }
        if n == 0 {
            return Ok(0);
        }
        // A few slots first: a poll that finds nothing (a thread spinning
        // for one reply) then costs a few message headers, not 64. A full
        // probe means more may be queued: the rest of the slots go in one
        // more call.
        let probe = RECV_PROBE.min(n);
        let got = self.recv_waiting(&mut slots[..probe], timeout)?;
        if got < probe || probe == n {
            return Ok(got);
        }
        match self.recv_once(&mut slots[probe..]) {
            Ok(more) => Ok(probe + more),
            // What came in is handed over; an error recurs on the next call.
            Err(_) => Ok(probe),
        }
    }

    /// One recvmmsg into `slots`, waiting up to `timeout` (none: not at
    /// all) for the first datagram.
    fn recv_waiting(&self, slots: &mut [RecvSlot], timeout: Option<Duration>) -> io::Result<usize> {
        let mut deadline = None;
        loop {
            match self.recv_once(slots) {
                Ok(k) => return Ok(k),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let Some(timeout) = timeout else {
                        return Ok(0);
                    };
                    let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(0);
                    }
                    sys::wait(self.fd.as_fd(), libc::POLLIN, Some(deadline - now))?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn recv_once(&self, slots: &mut [RecvSlot]) -> io::Result<usize> {
        let n = slots.len();
        let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; RECV_MSGS];
        let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; RECV_MSGS];
        let mut addrs = [const { MaybeUninit::<RawAddr>::uninit() }; RECV_MSGS];
        let mut cmsgs = [const { MaybeUninit::<CmsgBuf<RECV_CMSG_SPACE>>::uninit() }; RECV_MSGS];
        for (k, slot) in slots.iter_mut().enumerate() {
            let iov = iovs[k].write(libc::iovec {
                iov_base: slot.buf.as_mut_ptr().cast(),
                iov_len: slot.buf.len(),
            });
            // SAFETY: all-zero bytes are a valid mmsghdr.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = ptr::from_mut(iov);
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_name = ptr::from_mut(addrs[k].write(RawAddr::zeroed())).cast();
            h.msg_hdr.msg_namelen = RawAddr::CAPACITY;
            let c = cmsgs[k].write(CmsgBuf([0u8; RECV_CMSG_SPACE]));
            h.msg_hdr.msg_control = c.0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = RECV_CMSG_SPACE as _;
            hdrs[k].write(h);
        }
        // SAFETY: hdrs[..n] were initialised above and point at live,
        // writable, initialised buffers of the stated sizes (slot buffers,
        // addrs, cmsgs) that stay put for the call; MSG_DONTWAIT makes it
        // non-blocking; no timeout pointer.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
                n as c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(sys::errno());
        }
        let got = rc as usize;
        for (k, slot) in slots.iter_mut().enumerate().take(got) {
            // SAFETY: initialised before the call (the kernel only updated
            // msg_len, msg_namelen, msg_controllen and msg_flags).
            let h = unsafe { hdrs[k].assume_init_ref() };
            // SAFETY: initialised before the call, then written by the
            // kernel.
            let name = unsafe { addrs[k].assume_init_ref() };
            slot.reset();
            // With MSG_TRUNC in the flags, msg_len is the datagram's real
            // length even when it did not fit.
            slot.wire_len = h.msg_len as usize;
            slot.len = slot.wire_len.min(slot.buf.len());
            slot.truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || slot.wire_len > slot.len;
            let src = name.get(h.msg_hdr.msg_namelen);
            slot.src = src.unwrap_or(SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                0,
            ));
            // SAFETY: msg_control/msg_controllen describe cmsgs[k] as the
            // kernel left it (controllen updated to the bytes written).
            let c = unsafe { sys::parse_cmsgs(&h.msg_hdr) };
            // Without a source address the ICRC cannot be checked: leaving
            // `dst` empty makes the verdict Unverifiable.
            slot.dst = c.dst.filter(|_| src.is_some());
            slot.segment = c.gro_segment;
            judge(slot, self.local.port(), self.config.ipv4_id);
        }
        Ok(got)
    }
}

/// Fills a slot's verdicts: one per packet (GRO segments) in the buffer.
pub(super) fn judge(slot: &mut RecvSlot, local_port: u16, policy: Ipv4IdPolicy) {
    let Some(dst_ip) = slot.dst else {
        slot.verdicts.push((0, slot.len, IcrcVerdict::Unverifiable));
        return;
    };
    let dst = SocketAddr::new(dst_ip, local_port);
    let step = match slot.segment {
        Some(seg) if seg < slot.wire_len => seg,
        _ => slot.wire_len.max(1),
    };
    if slot.wire_len.div_ceil(step) <= SMALL_GROUP {
        judge_in_groups::<SMALL_GROUP>(slot, &dst, step, policy);
    } else {
        judge_in_groups::<GROUP>(slot, &dst, step, policy);
    }
}

/// [`judge`] of the `step`-byte segments of `slot`, `N` at a time.
fn judge_in_groups<const N: usize>(
    slot: &mut RecvSlot,
    dst: &SocketAddr,
    step: usize,
    policy: Ipv4IdPolicy,
) {
    let mut at = 0;
    // Emptied by each judgement: its room is cleared once per datagram.
    let mut group = IcrcGroup::<N>::new();
    loop {
        // Up to N segments, judged together; an empty datagram is one (too
        // short) segment.
        let mut ranges = [(0, 0); N];
        let mut payloads: [&[u8]; N] = [&[]; N];
        let mut n = 0;
        let mut truncated = false;
        loop {
            let end = (at + step).min(slot.wire_len);
            if end > slot.len {
                truncated = true;
                break;
            }
            ranges[n] = (at, end);
            payloads[n] = &slot.buf[at..end];
            n += 1;
            at = end;
            if n == N || at >= slot.wire_len {
                break;
            }
        }
        let mut verdicts = [IcrcVerdict::Unverifiable; N];
        check::verify_group(
            &mut group,
            &slot.src,
            dst,
            &payloads[..n],
            policy,
            &mut verdicts,
        );
        for ((at, end), v) in ranges.into_iter().zip(verdicts).take(n) {
            slot.verdicts.push((at, end, v));
        }
        if truncated {
            slot.verdicts.push((at, slot.len, IcrcVerdict::Truncated));
            return;
        }
        if at >= slot.wire_len {
            return;
        }
    }
}

impl AsFd for RoceSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for RoceSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Transport for RoceSocket {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn send_batch(&self, packets: &mut [OutPacket<'_>]) -> io::Result<usize> {
        RoceSocket::send_batch(self, packets)
    }

    fn recv_batch(&self, slots: &mut [RecvSlot], timeout: Option<Duration>) -> io::Result<usize> {
        RoceSocket::recv_batch(self, slots, timeout)
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        sys::wait(self.fd.as_fd(), libc::POLLIN, Some(timeout))
    }

    fn open_source_port(&self, port: u16) -> Result<(), NetError> {
        RoceSocket::open_source_port(self, port)
    }

    fn close_source_port(&self, port: u16) {
        RoceSocket::close_source_port(self, port);
    }
}
