//! Thin wrappers over the libc calls the transport needs. Everything that
//! touches raw socket addresses or control messages lives here.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use libc::{c_int, c_void, socklen_t};

/// `UDP_NO_CHECK6_TX` (linux/udp.h): send IPv6 UDP with checksum 0.
pub(crate) const UDP_NO_CHECK6_TX: c_int = 101;
/// `UDP_NO_CHECK6_RX` (linux/udp.h): accept IPv6 UDP with checksum 0.
pub(crate) const UDP_NO_CHECK6_RX: c_int = 102;
/// `UDP_SEGMENT` (linux/udp.h): GSO segment size, as an option or a cmsg.
pub(crate) const UDP_SEGMENT: c_int = 103;
/// `UDP_GRO` (linux/udp.h): receive coalesced datagrams.
pub(crate) const UDP_GRO: c_int = 104;
/// `IPV6_PMTUDISC_DO` (linux/in6.h).
pub(crate) const IPV6_PMTUDISC_DO: c_int = 2;

/// The last OS error.
pub(crate) fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// A non-blocking, close-on-exec UDP socket of the address's family.
pub(crate) fn udp_socket(v6: bool) -> io::Result<OwnedFd> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain syscall with constant arguments; no memory is passed.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_UDP,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt(2) with an `int` value.
pub(crate) fn set_int(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, a live c_int.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast::<c_void>(),
            mem::size_of::<c_int>() as socklen_t,
        )
    };
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

/// getsockopt(2) of an `int` value.
#[cfg(test)]
pub(crate) fn get_int(fd: BorrowedFd<'_>, level: c_int, name: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = mem::size_of::<c_int>() as socklen_t;
    // SAFETY: the pointers describe `value` and `len`, live locals of the
    // sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast::<c_void>(),
            &raw mut len,
        )
    };
    if rc < 0 { Err(errno()) } else { Ok(value) }
}

/// A socket address in the C layout, large enough for both families.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    /// An all-zero address (family `AF_UNSPEC`).
    pub(crate) fn zeroed() -> Self {
        // SAFETY: both variants are plain C structs of integers, for which
        // all-zero bytes are a valid value.
        unsafe { mem::zeroed() }
    }

    /// The C form of `addr` and its length.
    pub(crate) fn new(addr: &SocketAddr) -> (Self, socklen_t) {
        let mut raw = Self::zeroed();
        match addr {
            SocketAddr::V4(a) => {
                raw.v4 = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                (raw, mem::size_of::<libc::sockaddr_in>() as socklen_t)
            }
            SocketAddr::V6(a) => {
                raw.v6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                (raw, mem::size_of::<libc::sockaddr_in6>() as socklen_t)
            }
        }
    }

    /// The address the kernel wrote, if it is one of ours and `len` covers
    /// it.
    pub(crate) fn get(&self, len: socklen_t) -> Option<SocketAddr> {
        let len = len as usize;
        // SAFETY: every bit pattern is a valid sockaddr_in/sockaddr_in6
        // (integers only), so reading either variant is sound; the family
        // field sits at the same offset in both.
        let family = c_int::from(unsafe { self.v4.sin_family });
        match family {
            libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: as above, any bytes are a valid sockaddr_in.
                let a = unsafe { self.v4 };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(a.sin_addr.s_addr.to_ne_bytes()),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, any bytes are a valid sockaddr_in6.
                let a = unsafe { self.v6 };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// Size of the buffer for the kernel to write into.
    pub(crate) const CAPACITY: socklen_t = mem::size_of::<RawAddr>() as socklen_t;
}

/// bind(2).
pub(crate) fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let (raw, len) = RawAddr::new(addr);
    // SAFETY: `raw` is a valid sockaddr of `len` bytes for the call's
    // duration.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const raw).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

/// getsockname(2).
pub(crate) fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let mut raw = RawAddr::zeroed();
    let mut len = RawAddr::CAPACITY;
    // SAFETY: `raw` has room for `len` bytes, and `len` is a live local.
    let rc = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&raw mut raw).cast::<libc::sockaddr>(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(errno());
    }
    raw.get(len)
        .ok_or_else(|| io::Error::other("getsockname returned an unexpected address family"))
}

/// Waits until `fd` has one of `events` or `timeout` passes (`None`: no
/// limit). Returns whether it became ready; an interrupted wait counts as
/// not ready (callers loop with a deadline).
pub(crate) fn wait(fd: BorrowedFd<'_>, events: i16, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `pfd` is one valid pollfd; `ts_ptr` is null or points to a
    // live timespec; no signal mask is passed.
    let rc = unsafe { libc::ppoll(&raw mut pfd, 1, ts_ptr, std::ptr::null()) };
    if rc < 0 {
        let e = errno();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(rc > 0)
}

/// What the receive path learns from a datagram's control messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RecvCmsgs {
    /// The IP header's destination (IP_PKTINFO / IPV6_PKTINFO).
    pub dst: Option<IpAddr>,
    /// The GRO segment size, for a coalesced datagram.
    pub gro_segment: Option<usize>,
}

/// Parses the control messages the kernel wrote for `hdr`.
///
/// # Safety
/// `hdr.msg_control` must point to at least `hdr.msg_controllen` readable
/// bytes written by the kernel (or be null with length 0).
pub(crate) unsafe fn parse_cmsgs(hdr: &libc::msghdr) -> RecvCmsgs {
    let mut out = RecvCmsgs::default();
    // SAFETY: `hdr` describes a valid control buffer (caller's contract);
    // CMSG_FIRSTHDR/NXTHDR only return headers that lie inside it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !cmsg.is_null() {
        // SAFETY: non-null results of CMSG_FIRSTHDR/NXTHDR point to a whole
        // cmsghdr inside the buffer.
        let c = unsafe { &*cmsg };
        // SAFETY: CMSG_DATA of a header inside the buffer.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        let header = data as usize - cmsg as usize;
        let payload = (c.cmsg_len as usize).saturating_sub(header);
        match (c.cmsg_level, c.cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO)
                if payload >= mem::size_of::<libc::in_pktinfo>() =>
            {
                // SAFETY: the payload holds an in_pktinfo (length checked);
                // unaligned read as cmsg data need not be aligned for it.
                let info = unsafe { data.cast::<libc::in_pktinfo>().read_unaligned() };
                out.dst = Some(IpAddr::V4(Ipv4Addr::from(
                    info.ipi_addr.s_addr.to_ne_bytes(),
                )));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                if payload >= mem::size_of::<libc::in6_pktinfo>() =>
            {
                // SAFETY: the payload holds an in6_pktinfo (length checked).
                let info = unsafe { data.cast::<libc::in6_pktinfo>().read_unaligned() };
                out.dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            (libc::SOL_UDP, UDP_GRO) if payload >= mem::size_of::<c_int>() => {
                // SAFETY: the payload holds an int (length checked).
                let size = unsafe { data.cast::<c_int>().read_unaligned() };
                out.gro_segment = usize::try_from(size).ok().filter(|&s| s > 0);
            }
            _ => {}
        }
        // SAFETY: `cmsg` is a header inside the buffer `hdr` describes.
        cmsg = unsafe { libc::CMSG_NXTHDR(hdr, cmsg) };
    }
    out
}

/// Space for the one send-side control message, UDP_SEGMENT (a u16).
pub(crate) const SEND_CMSG_SPACE: usize = 32;

/// Space for the receive-side control messages: IPV6_PKTINFO (20 bytes of
/// data) or IP_PKTINFO (12), and UDP_GRO (4), with headers and padding.
pub(crate) const RECV_CMSG_SPACE: usize = 128;

/// A control-message buffer aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct CmsgBuf<const N: usize>(pub [u8; N]);

impl CmsgBuf<SEND_CMSG_SPACE> {
    /// Writes a UDP_SEGMENT control message for segments of `size` bytes
    /// and returns the control length to put in the msghdr.
    pub(crate) fn set_gso_segment(&mut self, size: u16) -> usize {
        // SAFETY: pure arithmetic on constants.
        let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
        // SAFETY: as above.
        let len = unsafe { libc::CMSG_LEN(mem::size_of::<u16>() as u32) } as usize;
        assert!(space <= SEND_CMSG_SPACE);
        self.0 = [0; SEND_CMSG_SPACE];
        let hdr = libc::cmsghdr {
            cmsg_len: len as _,
            cmsg_level: libc::SOL_UDP,
            cmsg_type: UDP_SEGMENT,
        };
        // A msghdr pointing at our buffer, only for CMSG_FIRSTHDR/CMSG_DATA.
        // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_control = self.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the buffer is `space` bytes long and 8-aligned, so the
        // first header and its 2 data bytes lie inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            c.write(hdr);
            libc::CMSG_DATA(c).cast::<u16>().write_unaligned(size);
        }
        space
    }
}
