//! The kernel's UDP path and nothing else: the datagram sequence of the
//! device's RDMA WRITEs (lengths and order), sent with `sendmmsg` in GSO
//! runs planned by the device's rules and received with `recvmmsg` and
//! GRO, but with no ICRC sealed or judged and no packet built or parsed.
//! [`super::BareUdp`] carries the same sequence through the device's own
//! socket layer (ICRC on both ends); this shows what the sockets alone
//! allow the sequence.

use std::io;
use std::mem;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use provider::net::GRO_SLOT_CAPACITY;

/// `UDP_SEGMENT` and `UDP_GRO` (linux/udp.h).
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// The device's limits on one GSO send (its socket layer's
/// `MAX_GSO_SEGMENTS`, and the largest IPv4 UDP payload).
const MAX_GSO_SEGMENTS: usize = 64;
const MAX_GSO_BYTES: usize = 65_507;
/// Datagrams per `recvmmsg`, as the device's socket layer takes them.
const RECV_MSGS: usize = 64;
/// Room for one `UDP_SEGMENT` or `UDP_GRO` control message.
const CMSG_ROOM: usize = 32;
/// Socket buffers, as the device's benchmarks configure them.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// A sender socket and a receiving thread on loopback.
pub struct KernelUdp {
    tx: UdpSocket,
    dest: libc::sockaddr_in,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    rx: Option<JoinHandle<()>>,
}

impl KernelUdp {
    pub fn new() -> KernelUdp {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_buffer(&tx, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_buffer(&rx, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
        set_int(&rx, libc::SOL_UDP, UDP_GRO, 1).expect("UDP_GRO");
        // The receiving thread looks at `stop` at least this often.
        rx.set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .unwrap();
        let std::net::SocketAddr::V4(addr) = rx.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (Arc::clone(&received), Arc::clone(&stop));
        let rx = std::thread::spawn(move || {
            let mut receiver = Receiver::new();
            while !halt.load(Ordering::Relaxed) {
                let packets = receiver.receive(&rx);
                count.fetch_add(packets, Ordering::Release);
            }
        });
        KernelUdp {
            tx,
            dest: sockaddr(addr),
            received,
            stop,
            rx: Some(rx),
        }
    }

    /// Sends `packets` datagrams whose lengths repeat `lens` (buffer `i` of
    /// a batch is sent with length `lens[i % lens.len()]`), in batches of
    /// `bufs.len()` rounded down to whole cycles, at most `window` in
    /// flight; waits until all arrived.
    pub fn run_lengths(&self, lens: &[usize], packets: usize, window: usize, bufs: &mut [Vec<u8>]) {
        super::windowed(&self.received, lens, packets, window, bufs, |batch| {
            let mut iovs: Vec<libc::iovec> = batch
                .iter_mut()
                .enumerate()
                .map(|(i, b)| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: lens[i % lens.len()],
                })
                .collect();
            self.send(&mut iovs);
        });
    }

    /// Sends one datagram per iovec, in the GSO runs the device's socket
    /// layer would plan for them, with as many `sendmmsg` calls as the
    /// kernel needs.
    fn send(&self, iovs: &mut [libc::iovec]) {
        let runs = plan_runs(iovs.iter().map(|v| v.iov_len));
        let mut dest = self.dest;
        let mut cmsgs = vec![Control::EMPTY; runs.len()];
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(runs.len());
        let mut first = 0;
        for (run, cmsg) in runs.iter().zip(&mut cmsgs) {
            // SAFETY: all-zero bytes are a valid mmsghdr (null pointers,
            // zero lengths).
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = ptr::from_mut(&mut dest).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as _;
            h.msg_hdr.msg_iov = iovs[first..].as_mut_ptr();
            h.msg_hdr.msg_iovlen = run.count as _;
            if run.count > 1 {
                h.msg_hdr.msg_controllen = cmsg.set_segment(run.seg as u16) as _;
                h.msg_hdr.msg_control = ptr::from_mut(cmsg).cast();
            }
            hdrs.push(h);
            first += run.count;
        }
        let mut k = 0;
        while k < hdrs.len() {
            // SAFETY: hdrs[k..] point to `dest`, to entries of `iovs` (each
            // over a live buffer of at least its length) and to `cmsgs`, all
            // alive and unmoved for the call; the kernel only reads them
            // (and writes msg_len).
            let rc = unsafe {
                libc::sendmmsg(
                    self.tx.as_raw_fd(),
                    hdrs[k..].as_mut_ptr(),
                    (hdrs.len() - k) as libc::c_uint,
                    0,
                )
            };
            match rc {
                n if n > 0 => k += n as usize,
                _ => {
                    let error = io::Error::last_os_error();
                    assert_eq!(
                        error.kind(),
                        io::ErrorKind::Interrupted,
                        "sendmmsg: {error}"
                    );
                }
            }
        }
    }
}

impl Drop for KernelUdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(rx) = self.rx.take() {
            let _ = rx.join();
        }
    }
}

/// One GSO send: `count` datagrams of `seg` bytes, the last possibly
/// shorter.
#[derive(Debug, Clone, Copy)]
struct Run {
    seg: usize,
    count: usize,
}

/// The device socket layer's GSO plan for datagrams of `lens`: a run
/// takes the next datagram while it is no longer than the run's first
/// (a shorter one ends the run), up to [`MAX_GSO_SEGMENTS`] and
/// [`MAX_GSO_BYTES`].
fn plan_runs(lens: impl IntoIterator<Item = usize>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut closed = true;
    let mut bytes = 0;
    for len in lens {
        if let Some(run) = runs.last_mut().filter(|r| {
            !closed && len <= r.seg && r.count < MAX_GSO_SEGMENTS && bytes + len <= MAX_GSO_BYTES
        }) {
            run.count += 1;
            bytes += len;
            closed = len < run.seg;
            continue;
        }
        runs.push(Run { seg: len, count: 1 });
        bytes = len;
        closed = false;
    }
    runs
}

/// Room for one control message, aligned for its `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CMSG_ROOM]);

impl Control {
    const EMPTY: Control = Control([0; CMSG_ROOM]);

    /// Writes a `UDP_SEGMENT` control message for segments of `seg` bytes;
    /// returns its length.
    fn set_segment(&mut self, seg: u16) -> usize {
        let header = self.0.as_mut_ptr().cast::<libc::cmsghdr>();
        // SAFETY: the buffer is aligned for a cmsghdr and CMSG_ROOM bytes
        // hold CMSG_SPACE(2): the header and its two bytes of data.
        unsafe {
            header.write(libc::cmsghdr {
                cmsg_len: libc::CMSG_LEN(2) as _,
                cmsg_level: libc::SOL_UDP,
                cmsg_type: UDP_SEGMENT,
            });
            libc::CMSG_DATA(header).cast::<u16>().write_unaligned(seg);
            libc::CMSG_SPACE(2) as usize
        }
    }
}

/// Receive slots for [`RECV_MSGS`] GRO datagrams.
struct Receiver {
    /// The buffers `iovs` point into.
    _bufs: Vec<Vec<u8>>,
    cmsgs: Vec<Control>,
    iovs: Vec<libc::iovec>,
}

impl Receiver {
    fn new() -> Receiver {
        let mut bufs = vec![vec![0u8; GRO_SLOT_CAPACITY]; RECV_MSGS];
        let iovs = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        Receiver {
            _bufs: bufs,
            cmsgs: vec![Control::EMPTY; RECV_MSGS],
            iovs,
        }
    }

    /// Waits (up to the socket's read timeout) for datagrams and returns
    /// how many the kernel sent: a GRO datagram counts its segments.
    fn receive(&mut self, socket: &UdpSocket) -> u64 {
        let mut hdrs: Vec<libc::mmsghdr> = (0..RECV_MSGS)
            .map(|i| {
                // SAFETY: all-zero bytes are a valid mmsghdr.
                let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                h.msg_hdr.msg_iov = ptr::from_mut(&mut self.iovs[i]);
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = ptr::from_mut(&mut self.cmsgs[i]).cast();
                h.msg_hdr.msg_controllen = CMSG_ROOM as _;
                h
            })
            .collect();
        // SAFETY: each header points to one iovec over a live buffer of its
        // length and to a control buffer of its length, all alive and
        // unmoved for the call.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                RECV_MSGS as libc::c_uint,
                libc::MSG_WAITFORONE,
                ptr::null_mut(),
            )
        };
        if rc <= 0 {
            let error = io::Error::last_os_error();
            let expected = [io::ErrorKind::WouldBlock, io::ErrorKind::Interrupted];
            assert!(expected.contains(&error.kind()), "recvmmsg: {error}");
            return 0;
        }
        hdrs[..rc as usize]
            .iter()
            .map(|h| match gro_segment(&h.msg_hdr) {
                Some(seg) => (h.msg_len as usize).div_ceil(seg) as u64,
                None => 1,
            })
            .sum()
    }
}

/// The segment size of a GRO datagram, from its `UDP_GRO` control
/// message.
fn gro_segment(hdr: &libc::msghdr) -> Option<usize> {
    // SAFETY: `hdr` was filled by recvmmsg: its control pointer and the
    // length the kernel wrote describe initialised bytes, and
    // CMSG_FIRSTHDR/NXTHDR only return headers that lie inside them.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header inside the buffer (above).
        let c = unsafe { &*cmsg };
        if c.cmsg_level == libc::SOL_UDP && c.cmsg_type == UDP_GRO {
            // SAFETY: the kernel writes UDP_GRO's segment size as an int
            // (udp_cmsg_recv); read unaligned from CMSG_DATA.
            let seg = unsafe { ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>()) };
            return usize::try_from(seg).ok().filter(|&s| s > 0);
        }
        // SAFETY: as CMSG_FIRSTHDR above.
        cmsg = unsafe { libc::CMSG_NXTHDR(hdr, cmsg) };
    }
    None
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Sets a socket buffer with the FORCE option (past `net.core.*mem_max`,
/// needs CAP_NET_ADMIN), else the plain one.
fn set_buffer(socket: &UdpSocket, force: libc::c_int, plain: libc::c_int) {
    if set_int(socket, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
        set_int(socket, libc::SOL_SOCKET, plain, SOCKET_BUFFER).expect("socket buffer");
    }
}

fn set_int(
    socket: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads an int from the pointer and length given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            ptr::from_ref(&value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
