//! Helpers for the tests: packets, pcap frames and a packet-socket capture
//! on `lo`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::wire::{BthRepr, ICRC_LEN, IpHeader, Opcode, PacketRepr, ROCE_V2_PORT};

/// A SEND_ONLY packet with `payload_len` bytes of pattern derived from
/// `psn`, plus 4 spare bytes for the ICRC.
pub(crate) fn send_only(psn: u32, payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(psn) as u8)
        .collect();
    let p = PacketRepr {
        bth: BthRepr {
            opcode: Opcode::RC_SEND_ONLY,
            solicited: false,
            mig_req: false,
            pad: PacketRepr::pad_for(payload_len),
            tver: 0,
            pkey: 0xffff,
            fecn: false,
            becn: false,
            resv6a: 0,
            dest_qp: 0x11,
            ack_req: true,
            resv7: 0,
            psn: psn & 0xff_ffff,
        },
        reth: None,
        atomic_eth: None,
        aeth: None,
        atomic_ack_eth: None,
        immdt: None,
        ieth: None,
        payload: &payload,
        pad_bytes: [0; 3],
    };
    let mut buf = vec![0u8; p.len()];
    let n = p.emit(&mut buf).unwrap();
    assert_eq!(n + ICRC_LEN, buf.len());
    buf
}

/// The PSN of a packet built by [`send_only`].
pub(crate) fn psn_of(payload: &[u8]) -> u32 {
    BthRepr::parse(payload).unwrap().psn
}

/// The records of a classic little-endian pcap file.
pub(crate) fn pcap_records(file: &[u8]) -> Vec<&[u8]> {
    assert_eq!(&file[..4], &[0xd4, 0xc3, 0xb2, 0xa1], "little-endian pcap");
    assert_eq!(
        u32::from_le_bytes(file[20..24].try_into().unwrap()),
        1,
        "Ethernet"
    );
    let mut records = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let len = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap()) as usize;
        records.push(&file[at + 16..at + 16 + len]);
        at += 16 + len;
    }
    records
}

/// A UDP frame: IP header, UDP header, UDP payload, and the addresses.
pub(crate) struct Frame<'a> {
    pub ip: IpHeader<'a>,
    pub udp: &'a [u8; 8],
    pub payload: &'a [u8],
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Parses an Ethernet frame carrying UDP over IPv4 (no options) or IPv6.
pub(crate) fn udp_frame(eth: &[u8]) -> Option<Frame<'_>> {
    let ethertype = u16::from_be_bytes([*eth.get(12)?, *eth.get(13)?]);
    let ip = eth.get(14..)?;
    let (header, src, dst, rest) = match ethertype {
        0x0800 if ip.first() == Some(&0x45) && ip.get(9) == Some(&17) => {
            let h: &[u8; 20] = ip.get(..20)?.try_into().ok()?;
            let s = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&h[12..16]).ok()?));
            let d = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&h[16..20]).ok()?));
            (IpHeader::V4(h), s, d, &ip[20..])
        }
        0x86dd if ip.get(6) == Some(&17) => {
            let h: &[u8; 40] = ip.get(..40)?.try_into().ok()?;
            let s = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).ok()?));
            let d = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).ok()?));
            (IpHeader::V6(h), s, d, &ip[40..])
        }
        _ => return None,
    };
    let udp: &[u8; 8] = rest.get(..8)?.try_into().ok()?;
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    Some(Frame {
        ip: header,
        udp,
        payload: rest.get(8..len)?,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
    })
}

/// RoCEv2 frames (UDP destination port 4791) of the kernel-rxe capture.
pub(crate) fn capture_frames(file: &[u8]) -> Vec<Frame<'_>> {
    pcap_records(file)
        .into_iter()
        .filter_map(udp_frame)
        .filter(|f| f.dst.port() == ROCE_V2_PORT)
        .collect()
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
