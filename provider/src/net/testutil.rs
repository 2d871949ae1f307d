//! Helpers for the tests: packets, pcap frames and a packet-socket capture
//! on `lo`.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::wire::{BthRepr, ICRC_LEN, Opcode, PacketRepr, UdpDatagram};

/// A SEND_ONLY packet with `payload_len` bytes of pattern derived from
/// `psn`, plus 4 spare bytes for the ICRC.
pub(crate) fn send_only(psn: u32, payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(psn) as u8)
        .collect();
    let bth = BthRepr {
        pad: PacketRepr::pad_for(payload_len),
        ack_req: true,
        ..BthRepr::new(Opcode::RC_SEND_ONLY, 0x11, psn)
    };
    let p = PacketRepr::new(bth, &payload);
    let mut buf = vec![0u8; p.len().expect("SEND_ONLY carries no extended header")];
    let n = p.emit(&mut buf).unwrap();
    assert_eq!(n + ICRC_LEN, buf.len());
    buf
}

/// The PSN of a packet built by [`send_only`].
pub(crate) fn psn_of(payload: &[u8]) -> u32 {
    BthRepr::parse(payload).unwrap().psn
}

/// Decodes an Ethernet frame carrying UDP.
pub(crate) fn udp_frame(eth: &[u8]) -> Option<UdpDatagram<'_>> {
    UdpDatagram::from_ethernet(eth).ok()
}

/// An AF_PACKET socket on `lo` that keeps the frames the kernel sends
/// (PACKET_OUTGOING), i.e. exactly the headers it emitted.
pub(crate) struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Opens the capture; `None` without CAP_NET_RAW (tests then skip the
    /// wire checks and say so).
    pub(crate) fn on_loopback() -> Option<Self> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscall, no memory passed.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                i32::from(proto),
            )
        };
        if fd < 0 {
            eprintln!(
                "no AF_PACKET socket ({}): skipping wire checks",
                io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = c"lo";
        // SAFETY: `name` is a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "bind AF_PACKET to lo: {}",
            io::Error::last_os_error()
        );
        let big: libc::c_int = 8 << 20;
        // SAFETY: pointer and size describe `big`. Failure only means a
        // smaller buffer.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const big).cast(),
                4,
            );
        }
        Some(Self { fd })
    }

    /// Outgoing frames whose UDP destination is `dst`, until `count` are
    /// collected or `timeout` passes.
    pub(crate) fn collect(&self, dst: SocketAddr, count: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while out.len() < count && Instant::now() < deadline {
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` and `from` are writable for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &raw mut len,
                )
            };
            if n < 0 {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let frame = &buf[..n as usize];
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                continue;
            }
            if udp_frame(frame).is_some_and(|f| f.dst == dst) {
                out.push(frame.to_vec());
            }
        }
        out
    }
}

/// Sends `datagram` (an IP packet for IPv4, with IP_HDRINCL; a UDP header
/// and payload for IPv6) through a raw socket, as a crafted stand-in for
/// kernel rxe. `None` without CAP_NET_RAW.
pub(crate) fn raw_send(src: SocketAddr, dst: SocketAddr, datagram: &[u8]) -> Option<()> {
    let (domain, proto) = if dst.is_ipv4() {
        (libc::AF_INET, libc::IPPROTO_RAW)
    } else {
        (libc::AF_INET6, libc::IPPROTO_UDP)
    };
    // SAFETY: plain syscall, no memory passed.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        eprintln!("no raw socket ({}): skipping", io::Error::last_os_error());
        return None;
    }
    // SAFETY: fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    use std::os::fd::AsFd;
    // Raw sockets take no port: bind the source address only.
    let src = SocketAddr::new(src.ip(), 0);
    let dst = SocketAddr::new(dst.ip(), 0);
    super::sys::bind(fd.as_fd(), &src).unwrap();
    let (raw, len) = super::sys::RawAddr::new(&dst);
    // SAFETY: `datagram` and `raw` are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            datagram.as_ptr().cast(),
            datagram.len(),
            0,
            (&raw const raw).cast(),
            len,
        )
    };
    assert_eq!(
        n,
        datagram.len() as isize,
        "raw send: {}",
        io::Error::last_os_error()
    );
    Some(())
}
