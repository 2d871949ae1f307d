//! The device's UDP socket: RoCEv2 packets with their ICRC.
//!
//! One socket per device address. Sending computes the ICRC over the IP and
//! UDP headers the kernel will put in front: from an unconnected IPv4
//! socket with path-MTU discovery on, Linux sends IP ID 0 with DF set, so
//! the header is known exactly. Receiving checks the ICRC fully for IPv6;
//! for IPv4 the sender's IP ID is invisible to a UDP socket, so a packet is
//! checked assuming ID 0 (what this device sends) and otherwise counted as
//! unverified and accepted.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::wire::{ICRC_LEN, IpHeader, icrc};

/// The verdict on a received packet's ICRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Icrc {
    Good,
    Bad,
    /// IPv4 from a sender whose IP ID is not 0: not checkable here.
    Unverified,
}

pub(crate) struct Socket {
    sock: UdpSocket,
    local: SocketAddr,
}

fn setsockopt(fd: i32, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live i32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `UDP_NO_CHECK6_TX` / `UDP_NO_CHECK6_RX`: send and accept IPv6 UDP
/// checksum 0, as kernel rxe does.
const UDP_NO_CHECK6_TX: i32 = 101;
const UDP_NO_CHECK6_RX: i32 = 102;

impl Socket {
    pub(crate) fn bind(ip: IpAddr, port: u16) -> io::Result<Socket> {
        let sock = UdpSocket::bind(SocketAddr::new(ip, port))?;
        let fd = sock.as_raw_fd();
        match ip {
            IpAddr::V4(_) => setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DO,
            )?,
            IpAddr::V6(_) => {
                setsockopt(fd, libc::IPPROTO_UDP, UDP_NO_CHECK6_TX, 1)?;
                setsockopt(fd, libc::IPPROTO_UDP, UDP_NO_CHECK6_RX, 1)?;
            }
        }
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20)?;
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 8 << 20)?;
        let local = sock.local_addr()?;
        Ok(Socket { sock, local })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The ICRC of `roce` (BTH to pad) sent from `src` to `dst`.
    fn icrc_for(src: SocketAddr, dst: SocketAddr, roce: &[u8], ipv4_id: u16) -> u32 {
        let udp_len = (8 + roce.len() + ICRC_LEN) as u16;
        let mut udp = [0u8; 8];
        udp[0..2].copy_from_slice(&src.port().to_be_bytes());
        udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        let crc = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
                ip[4..6].copy_from_slice(&ipv4_id.to_be_bytes());
                ip[6] = 0x40; // DF
                ip[9] = 17;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                icrc(IpHeader::V4(&ip), &udp, roce)
            }
            (s, d) => {
                let to6 = |a: IpAddr| match a {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let mut ip = [0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
                ip[6] = 17;
                ip[8..24].copy_from_slice(&to6(s).octets());
                ip[24..40].copy_from_slice(&to6(d).octets());
                icrc(IpHeader::V6(&ip), &udp, roce)
            }
        };
        crc.unwrap_or(0)
    }

    /// Sends one packet; `buf` ends with ICRC_LEN spare bytes, which get the
    /// ICRC.
    pub(crate) fn send(&self, dst: SocketAddr, buf: &mut [u8]) -> io::Result<()> {
        let n = buf.len() - ICRC_LEN;
        let crc = Self::icrc_for(self.local, dst, &buf[..n], 0);
        buf[n..].copy_from_slice(&crc.to_le_bytes());
        self.sock.send_to(buf, dst)?;
        Ok(())
    }

    /// Receives one datagram into `buf`, waiting up to `timeout`.
    pub(crate) fn recv(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> io::Result<Option<(usize, SocketAddr, Icrc)>> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_micros(1))))?;
        let (len, src) = match self.sock.recv_from(buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if len < ICRC_LEN + 12 {
            return Ok(Some((len, src, Icrc::Bad)));
        }
        let n = len - ICRC_LEN;
        let found = u32::from_le_bytes([buf[n], buf[n + 1], buf[n + 2], buf[n + 3]]);
        let expected = Self::icrc_for(src, self.local, &buf[..n], 0);
        let verdict = if found == expected {
            Icrc::Good
        } else if src.is_ipv4() {
            Icrc::Unverified
        } else {
            Icrc::Bad
        };
        Ok(Some((len, src, verdict)))
    }
}
