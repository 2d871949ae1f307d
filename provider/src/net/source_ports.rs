//! Send-only sockets on the UDP source ports of flows.
//!
//! Kernel rxe sends every packet of a queue pair from the UDP source port
//! its QPN pair hashes to ([`crate::wire::udp_source_port`]), so that ECMP
//! fabrics keep a connection on one path and spread connections over all
//! of them. A UDP socket sends from the port it is bound to, so each port
//! in use gets a socket of its own, shared by the queue pairs whose flows
//! hash to it. Receiving stays on the device's socket (RoCEv2 peers send to
//! 4791): these sockets only send. Each is bound with `SO_REUSEPORT`, so
//! devices of this process (or of other processes of the same user) on one
//! address can share a port; and with the smallest receive buffer, so
//! stray datagrams addressed to the port cost at most a few kilobytes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{PoisonError, RwLock};

use super::sys;
use super::{NetError, SocketConfig};

/// The open source-port sockets of one device address.
#[derive(Debug)]
pub(crate) struct SourcePorts {
    ip: IpAddr,
    config: SocketConfig,
    open: RwLock<HashMap<u16, PortSocket>>,
}

/// One source port's socket and the number of flows using it.
#[derive(Debug)]
struct PortSocket {
    fd: OwnedFd,
    users: usize,
}

impl SourcePorts {
    /// No ports open yet; sockets will be bound on `ip` with `config`'s
    /// send options.
    pub(crate) fn new(ip: IpAddr, config: SocketConfig) -> Self {
        Self {
            ip,
            config,
            open: RwLock::new(HashMap::new()),
        }
    }

    /// Opens `port` for one more flow: binds its socket if no flow uses
    /// it yet.
    ///
    /// # Errors
    /// The failing system call: typically `EADDRINUSE` when a socket
    /// without `SO_REUSEPORT` (or of another user) holds the port.
    pub(crate) fn acquire(&self, port: u16) -> Result<(), NetError> {
        let mut open = self.open.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(socket) = open.get_mut(&port) {
            socket.users += 1;
            return Ok(());
        }
        let fd = super::socket::bind_sender(SocketAddr::new(self.ip, port), &self.config)?;
        open.insert(port, PortSocket { fd, users: 1 });
        Ok(())
    }

    /// Gives back one flow's use of `port`; the last one closes its
    /// socket. Releasing a port that is not open does nothing.
    pub(crate) fn release(&self, port: u16) {
        let mut open = self.open.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(socket) = open.get_mut(&port) {
            socket.users -= 1;
            if socket.users == 0 {
                open.remove(&port);
            }
        }
    }

    /// Whether `port` is open.
    pub(crate) fn is_open(&self, port: u16) -> bool {
        self.open
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&port)
    }

    /// How many flows use `port` (0 if it is not open).
    pub(crate) fn users(&self, port: u16) -> usize {
        self.open
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&port)
            .map_or(0, |s| s.users)
    }

    /// Runs `f` with `port`'s socket (`None` if the port is not open),
    /// holding it open for the call.
    pub(crate) fn with_socket<T>(
        &self,
        port: u16,
        f: impl FnOnce(Option<BorrowedFd<'_>>) -> T,
    ) -> T {
        let open = self.open.read().unwrap_or_else(PoisonError::into_inner);
        f(open.get(&port).map(|s| s.fd.as_fd()))
    }
}

/// Sets `SO_REUSEPORT` and the smallest receive buffer on a send-only
/// socket.
pub(crate) fn make_send_only(fd: &OwnedFd) -> Result<(), NetError> {
    sys::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).map_err(|source| {
        NetError::SetOption {
            name: "SO_REUSEPORT",
            source,
        }
    })?;
    // The kernel raises this to its minimum (a few KiB).
    sys::set_int(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 1).map_err(|source| {
        NetError::SetOption {
            name: "SO_RCVBUF",
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::super::socket_tests::{ip, receiver, recv_packets};
    use super::super::testutil::{Capture, send_only, udp_frame};
    use super::super::{IcrcVerdict, OutPacket, RoceSocket};
    use crate::wire::IpHeader;

    /// A port in the flow range that nothing on `addr` holds (a plain bind
    /// of it succeeds; the socket is closed again at once).
    fn free_flow_port(addr: &str) -> u16 {
        (0xC000..=0xFFFFu16)
            .step_by(97)
            .find(|&p| UdpSocket::bind((ip(addr), p)).is_ok())
            .expect("a free port in 0xC000..")
    }

    /// Sends one packet from `source_port` and returns the source it
    /// arrived from and its verdict.
    fn send_from(tx: &RoceSocket, rx: &RoceSocket, source_port: u16) -> (u16, IcrcVerdict) {
        let mut buf = send_only(1, 64);
        let mut p = [OutPacket::from_port(source_port, rx.local_addr(), &mut buf)];
        assert_eq!(tx.send_batch(&mut p).unwrap(), 1);
        let got = recv_packets(rx, 65_536, 1);
        assert_eq!(got.len(), 1);
        (got[0].2.port(), got[0].1)
    }

    #[test]
    fn packets_go_out_from_the_opened_port_with_an_icrc_that_covers_it() {
        for (a, b) in [("127.0.0.1", "127.0.0.2"), ("::1", "::1")] {
            let tx = receiver(a);
            let rx = receiver(b);
            let port = free_flow_port(a);
            // Not open: the socket's own port.
            assert_eq!(
                send_from(&tx, &rx, port),
                (tx.local_addr().port(), IcrcVerdict::Good)
            );
            tx.open_source_port(port).unwrap();
            assert_eq!(send_from(&tx, &rx, port), (port, IcrcVerdict::Good));
            // 0 always means the socket's own port.
            assert_eq!(send_from(&tx, &rx, 0).0, tx.local_addr().port());
            tx.close_source_port(port);
            assert_eq!(tx.source_port_users(port), 0);
            assert_eq!(send_from(&tx, &rx, port).0, tx.local_addr().port());
        }
    }

    #[test]
    fn ports_are_counted_and_shared_between_sockets_of_one_address() {
        let a = receiver("127.0.0.1");
        let b = receiver("127.0.0.1");
        let port = free_flow_port("127.0.0.1");
        a.open_source_port(port).unwrap();
        a.open_source_port(port).unwrap();
        // Another device's socket on the same address shares the port.
        b.open_source_port(port).unwrap();
        assert_eq!(
            (a.source_port_users(port), b.source_port_users(port)),
            (2, 1)
        );
        a.close_source_port(port);
        assert_eq!(a.source_port_users(port), 1);
        let rx = receiver("127.0.0.2");
        assert_eq!(send_from(&a, &rx, port).0, port);
        a.close_source_port(port);
        b.close_source_port(port);
        assert_eq!(a.source_port_users(port), 0);
        // Closing what is not open does nothing.
        a.close_source_port(port);
        // The socket's own port is never opened or closed.
        a.open_source_port(a.local_addr().port()).unwrap();
        assert_eq!(a.source_port_users(a.local_addr().port()), 0);
    }

    #[test]
    fn a_port_held_by_another_socket_is_refused() {
        let port = free_flow_port("127.0.0.1");
        let _holder = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        let tx = receiver("127.0.0.1");
        assert!(tx.open_source_port(port).is_err());
        assert_eq!(tx.source_port_users(port), 0);
    }

    #[test]
    fn ipv6_packets_carry_flow_label_zero_as_kernel_rxe_sends() {
        let Some(capture) = Capture::on_loopback() else {
            return;
        };
        let tx = receiver("::1");
        let rx = receiver("::1");
        let port = free_flow_port("::1");
        tx.open_source_port(port).unwrap();
        for source_port in [0, port] {
            send_from(&tx, &rx, source_port);
            let frames = capture.collect(rx.local_addr(), 1, std::time::Duration::from_secs(2));
            let frame = udp_frame(&frames[0]).unwrap();
            let IpHeader::V6(header) = frame.ip else {
                panic!("an IPv6 frame");
            };
            let label = u32::from_be_bytes([0, header[1] & 0x0f, header[2], header[3]]);
            assert_eq!(label, 0, "from port {source_port}");
        }
    }
}
