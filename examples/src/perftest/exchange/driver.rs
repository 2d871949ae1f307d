//! A blocking driver of the exchange over `std::net::TcpStream`, one method
//! per step. Every read and write is bounded by the timeout in force, and a
//! peer that closes or resets the connection is an error, not a hang.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use super::ExchangeError;
use super::wire::{
    BwReport, DONE_MESSAGE, KeyFormat, KeyMessage, MTU_MESSAGE_LEN, Mtu, PERFTEST_VERSION,
    PeerVersion, REPORT_FIELD_LEN, SYS_DATA_FIELD_LEN, SysData, VERSION_MESSAGE_LEN, be_i32,
    encode_version,
};

/// How long to wait between connect attempts, or between accept polls.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// How long [`Exchange::close`] waits for the peer's `"done"` at most.
const DONE_WAIT: Duration = Duration::from_secs(1);

/// Which end of the exchange this is. perftest's client is the side given a
/// server name; it writes first in every exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Connects; writes, then reads.
    Client,
    /// Accepts; reads, then writes.
    Server,
}

/// The outcome of [`Exchange::sys_data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysDataAgreement {
    /// What this side sent.
    pub local: SysData,
    /// What the peer sent.
    pub remote: SysData,
    /// The larger of each, which both sides use.
    pub agreed: SysData,
}

/// The outcome of [`Exchange::mtu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtuAgreement {
    /// What this side sent.
    pub local: Mtu,
    /// What the peer sent, `None` if it was not a valid `ibv_mtu` (perftest
    /// then keeps its own).
    pub remote: Option<Mtu>,
    /// The smaller valid MTU, which both sides use.
    pub agreed: Mtu,
}

/// The outcome of [`Exchange::close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseOutcome {
    /// The key message received in the final handshake.
    pub remote_key: KeyMessage,
    /// Whether the peer's `"done\0"` arrived (perftest 6.06 sends it; newer
    /// releases do not, so its absence is not an error).
    pub peer_sent_done: bool,
}

/// One side of a perftest exchange over TCP.
#[derive(Debug)]
pub struct Exchange {
    stream: TcpStream,
    role: Role,
    timeout: Option<Duration>,
    key_format: KeyFormat,
    report_per_port: bool,
    peer_version: Option<PeerVersion>,
}

/// Rejects a zero timeout, which `set_read_timeout` cannot take.
fn nonzero(timeout: Option<Duration>) -> Result<Option<Duration>, ExchangeError> {
    match timeout {
        Some(t) if t.is_zero() => Err(ExchangeError::ZeroTimeout),
        other => Ok(other),
    }
}

impl Exchange {
    /// Connects to a perftest server at `host:port` (perftest's default port
    /// is [`DEFAULT_PORT`](super::DEFAULT_PORT)), as the client. Tries each
    /// resolved address, IPv4 first (perftest's server binds IPv4 only),
    /// and retries refused connections until `timeout` has passed, so the
    /// client may be started before the server. `timeout` then bounds every
    /// read and write.
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Exchange, ExchangeError> {
        nonzero(Some(timeout))?;
        let target = format!("{host}:{port}");
        let mut addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|source| ExchangeError::Resolve {
                target: target.clone(),
                source,
            })?
            .collect();
        if addrs.is_empty() {
            let source = io::Error::new(io::ErrorKind::NotFound, "no address");
            return Err(ExchangeError::Resolve { target, source });
        }
        addrs.sort_by_key(|a| a.is_ipv6());
        let deadline = Instant::now() + timeout;
        let mut last = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
        loop {
            for addr in &addrs {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match TcpStream::connect_timeout(addr, left) {
                    Ok(stream) => {
                        return Exchange::from_stream(stream, Role::Client, Some(timeout));
                    }
                    Err(e) => last = e,
                }
            }
            if Instant::now() + RETRY_INTERVAL >= deadline {
                return Err(ExchangeError::Connect {
                    target,
                    timeout,
                    source: last,
                });
            }
            thread::sleep(RETRY_INTERVAL);
        }
    }

    /// Binds the server's listening socket like perftest: `0.0.0.0:port`
    /// with `SO_REUSEADDR` (which `std` sets on Unix). Port 0 picks a free
    /// port.
    pub fn listen(port: u16) -> Result<TcpListener, ExchangeError> {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|source| ExchangeError::Io {
            step: "listen",
            source,
        })
    }

    /// Accepts one client on `listener` within `timeout`, as the server.
    /// `timeout` then bounds every read and write.
    pub fn accept(listener: &TcpListener, timeout: Duration) -> Result<Exchange, ExchangeError> {
        nonzero(Some(timeout))?;
        let io_err = |source| ExchangeError::Io {
            step: "accept",
            source,
        };
        listener.set_nonblocking(true).map_err(io_err)?;
        let deadline = Instant::now() + timeout;
        let accepted = loop {
            match listener.accept() {
                Ok((stream, _)) => break Ok(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        break Err(ExchangeError::AcceptTimeout(timeout));
                    }
                    thread::sleep(RETRY_INTERVAL);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(io_err(e)),
            }
        };
        listener.set_nonblocking(false).map_err(io_err)?;
        let stream = accepted?;
        stream.set_nonblocking(false).map_err(io_err)?;
        Exchange::from_stream(stream, Role::Server, Some(timeout))
    }

    /// perftest's server: binds `0.0.0.0:port`, accepts one client within
    /// `timeout` and closes the listener.
    pub fn serve(port: u16, timeout: Duration) -> Result<Exchange, ExchangeError> {
        let listener = Exchange::listen(port)?;
        Exchange::accept(&listener, timeout)
    }

    /// Wraps an already connected stream. `timeout` bounds every read and
    /// write; `None` waits forever, as perftest does.
    pub fn from_stream(
        stream: TcpStream,
        role: Role,
        timeout: Option<Duration>,
    ) -> Result<Exchange, ExchangeError> {
        // Each message is one small write answered by the peer; do not let
        // Nagle hold it back.
        stream
            .set_nodelay(true)
            .map_err(|source| ExchangeError::Io {
                step: "set TCP_NODELAY",
                source,
            })?;
        let mut exchange = Exchange {
            stream,
            role,
            timeout: None,
            key_format: KeyFormat::default(),
            report_per_port: false,
            peer_version: None,
        };
        exchange.set_timeout(timeout)?;
        Ok(exchange)
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Result<SocketAddr, ExchangeError> {
        self.stream.peer_addr().map_err(|source| ExchangeError::Io {
            step: "peer address",
            source,
        })
    }

    /// The timeout bounding each read and write.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Changes the timeout for the following steps; `None` waits forever.
    /// A half-duplex bw server waits in its post-run handshake for as long
    /// as the client's whole test takes, so widen it for that step.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ExchangeError> {
        let timeout = nonzero(timeout)?;
        let io_err = |source| ExchangeError::Io {
            step: "set socket timeout",
            source,
        };
        self.stream.set_read_timeout(timeout).map_err(io_err)?;
        self.stream.set_write_timeout(timeout).map_err(io_err)?;
        self.timeout = timeout;
        Ok(())
    }

    /// The key-message layout in use ([`KeyFormat::Gid`] unless changed).
    pub fn key_format(&self) -> KeyFormat {
        self.key_format
    }

    /// Sets the key-message layout; both sides must use the same one.
    pub fn set_key_format(&mut self, format: KeyFormat) {
        self.key_format = format;
    }

    /// Whether bw results include the per-port fields (`--report-per-port`
    /// on both sides).
    pub fn set_report_per_port(&mut self, per_port: bool) {
        self.report_per_port = per_port;
    }

    /// The peer's version, once [`Exchange::versions`] has run.
    pub fn peer_version(&self) -> Option<&PeerVersion> {
        self.peer_version.as_ref()
    }

    /// The raw stream, for tests that play a misbehaving peer.
    #[cfg(test)]
    pub(super) fn stream_for_tests(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Maps a socket error of `step` to a timeout, a closed peer or an I/O
    /// error.
    fn classify(&self, step: &'static str, e: io::Error) -> ExchangeError {
        use io::ErrorKind::*;
        match e.kind() {
            WouldBlock | TimedOut => ExchangeError::Timeout {
                step,
                timeout: self.timeout,
            },
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
                ExchangeError::PeerClosed { step }
            }
            _ => ExchangeError::Io { step, source: e },
        }
    }

    fn send(&mut self, step: &'static str, msg: &[u8]) -> Result<(), ExchangeError> {
        let result = self.stream.write_all(msg);
        result.map_err(|e| self.classify(step, e))
    }

    fn recv(&mut self, step: &'static str, len: usize) -> Result<Vec<u8>, ExchangeError> {
        let mut buf = vec![0u8; len];
        let result = self.stream.read_exact(&mut buf);
        result.map_err(|e| self.classify(step, e))?;
        Ok(buf)
    }

    /// One `ctx_xchg_data` / `ctx_hand_shake` exchange: the client writes
    /// `mine` and reads `theirs_len` bytes; the server reads, then writes.
    fn swap(
        &mut self,
        step: &'static str,
        mine: &[u8],
        theirs_len: usize,
    ) -> Result<Vec<u8>, ExchangeError> {
        match self.role {
            Role::Client => {
                self.send(step, mine)?;
                self.recv(step, theirs_len)
            }
            Role::Server => {
                let theirs = self.recv(step, theirs_len)?;
                self.send(step, mine)?;
                Ok(theirs)
            }
        }
    }

    /// Swaps versions (16 bytes each way), sending [`PERFTEST_VERSION`].
    /// Fails with [`ExchangeError::IncompatibleVersion`] if the peer is older
    /// than 5.70, as perftest does.
    pub fn versions(&mut self) -> Result<PeerVersion, ExchangeError> {
        let mine = encode_version(PERFTEST_VERSION)?;
        let theirs = self.swap("version exchange", &mine, VERSION_MESSAGE_LEN)?;
        let peer = PeerVersion::decode(&theirs)?;
        if !peer.is_compatible() {
            return Err(ExchangeError::IncompatibleVersion { text: peer.text });
        }
        self.peer_version = Some(peer.clone());
        Ok(peer)
    }

    /// Swaps `cycle_buffer`, then `cache_line_size` (4 bytes each way, twice).
    pub fn sys_data(&mut self, local: SysData) -> Result<SysDataAgreement, ExchangeError> {
        let mine = local.encode();
        let cycle = self.swap(
            "sys data (cycle_buffer)",
            &mine[..SYS_DATA_FIELD_LEN],
            SYS_DATA_FIELD_LEN,
        )?;
        let line = self.swap(
            "sys data (cache_line_size)",
            &mine[SYS_DATA_FIELD_LEN..],
            SYS_DATA_FIELD_LEN,
        )?;
        let remote = SysData {
            cycle_buffer: be_i32(&cycle),
            cache_line_size: be_i32(&line),
        };
        Ok(SysDataAgreement {
            local,
            remote,
            agreed: local.agree(&remote),
        })
    }

    /// Swaps the MTU (2 bytes each way). An invalid remote value is ignored,
    /// as perftest ignores it.
    pub fn mtu(&mut self, local: Mtu) -> Result<MtuAgreement, ExchangeError> {
        let theirs = self.swap("MTU exchange", &local.encode(), MTU_MESSAGE_LEN)?;
        let remote = match Mtu::decode(&theirs) {
            Ok(mtu) => Some(mtu),
            Err(ExchangeError::InvalidMtu { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(MtuAgreement {
            local,
            remote,
            agreed: Mtu::agree(local, remote),
        })
    }

    /// One `ctx_hand_shake` per QP, QP 0 first: returns the peer's key
    /// message for each. Both sides must pass the same number of QPs.
    pub fn keys(&mut self, local: &[KeyMessage]) -> Result<Vec<KeyMessage>, ExchangeError> {
        local
            .iter()
            .map(|key| self.key_swap("key exchange", key))
            .collect()
    }

    /// One extra `ctx_hand_shake`, used by perftest as a barrier. Pass QP
    /// 0's real key message: perftest stores what it receives as the remote
    /// QP 0 data and uses it afterwards.
    pub fn handshake(&mut self, local: &KeyMessage) -> Result<KeyMessage, ExchangeError> {
        self.key_swap("handshake", local)
    }

    fn key_swap(
        &mut self,
        step: &'static str,
        local: &KeyMessage,
    ) -> Result<KeyMessage, ExchangeError> {
        let format = self.key_format;
        let theirs = self.swap(step, &local.encode(format)?, format.message_len())?;
        KeyMessage::decode(&theirs, format)
    }

    /// `xchg_bw_reports`: swaps each field of the report in its own 8-byte
    /// exchange and returns the peer's.
    pub fn bw_results(&mut self, local: &BwReport) -> Result<BwReport, ExchangeError> {
        let per_port = self.report_per_port;
        let mut theirs = Vec::with_capacity(BwReport::wire_len(per_port));
        for field in local.wire_fields(per_port) {
            theirs.extend(self.swap("bw results", &field, REPORT_FIELD_LEN)?);
        }
        BwReport::decode(&theirs, per_port)
    }

    /// `ctx_close_connection`: a final handshake with QP 0's key message,
    /// then `"done\0"`. The peer's `"done"` is awaited briefly and not
    /// required (perftest never reads it, and newer releases do not send
    /// it); a peer gone after the handshake is not an error either.
    pub fn close(mut self, local: &KeyMessage) -> Result<CloseOutcome, ExchangeError> {
        let remote_key = self.handshake(local)?;
        match self.send("done", DONE_MESSAGE) {
            Ok(()) | Err(ExchangeError::PeerClosed { .. }) => {}
            Err(e) => return Err(e),
        }
        let wait = self.timeout.map_or(DONE_WAIT, |t| t.min(DONE_WAIT));
        let mut done = [0u8; DONE_MESSAGE.len()];
        let peer_sent_done = self.stream.set_read_timeout(Some(wait)).is_ok()
            && self.stream.read_exact(&mut done).is_ok()
            && &done == DONE_MESSAGE;
        let _ = self.stream.shutdown(Shutdown::Both);
        Ok(CloseOutcome {
            remote_key,
            peer_sent_done,
        })
    }
}
