//! roce-dump on traffic this project's own device put on the loopback
//! interface, captured with a packet socket (as tcpdump would) while two
//! devices on 127.0.0.2 and 127.0.0.3, both on the RoCEv2 port, run WRITE,
//! READ, SEND and atomics.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use examples::dump::{self, Options};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use provider::net::SocketConfig;
use provider::{
    AccessFlags, Context, DeviceOptions, Mtu, RecvWr, SendOp, SendWr, WcStatus, WorkCompletion,
};

/// A packet socket on `lo` that keeps what the kernel sends (each frame
/// once: loopback also shows it as received).
struct Capture(OwnedFd);

impl Capture {
    fn on_loopback() -> Option<Capture> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain system call; no memory is passed.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        // SAFETY: a NUL-terminated interface name.
        addr.sll_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
        // SAFETY: binds our socket to a valid sockaddr_ll of its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        (rc == 0).then_some(Capture(fd))
    }

    /// Every outgoing frame captured so far.
    fn drain(&self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for the sizes given.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return frames;
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                frames.push(buf[..n as usize].to_vec());
            }
        }
    }
}

fn traffic(ip_a: IpAddr, ip_b: IpAddr) {
    // GSO off: on loopback a capture sees a GSO send as one unsegmented
    // super-packet, which is not a RoCEv2 frame.
    let options = DeviceOptions {
        socket: SocketConfig {
            gso: false,
            ..DeviceOptions::default().socket
        },
        ..DeviceOptions::default()
    };
    let (a, b) = (
        Context::open_with(ip_a, &options).unwrap(),
        Context::open_with(ip_b, &options).unwrap(),
    );
    let len = 1 << 16;
    let mut bufs = [vec![7u8; len], vec![0u8; len]];
    let access = AccessFlags::LOCAL_WRITE
        | AccessFlags::REMOTE_WRITE
        | AccessFlags::REMOTE_READ
        | AccessFlags::REMOTE_ATOMIC
        | AccessFlags::ON_DEMAND;
    let (pa, pb) = (a.alloc_pd().unwrap(), b.alloc_pd().unwrap());
    let (ca, cb) = (a.create_cq(64).unwrap(), b.create_cq(64).unwrap());
    let (qa, qb) = (
        pa.create_qp(&ca, &ca).build().unwrap(),
        pb.create_qp(&cb, &cb).build().unwrap(),
    );
    // SAFETY: the buffers outlive the regions (dropped at the end of this
    // function, regions first) and are not touched while the device works.
    let (ma, mb) = unsafe {
        (
            pa.reg_mr(bufs[0].as_mut_ptr() as usize, len, access)
                .unwrap(),
            pb.reg_mr(bufs[1].as_mut_ptr() as usize, len, access)
                .unwrap(),
        )
    };
    qa.connect(&qb.endpoint(Mtu::Mtu1024)).unwrap();
    qb.connect(&qa.endpoint(Mtu::Mtu1024)).unwrap();
    qb.post_recv(&[RecvWr {
        wr_id: 9,
        sg_list: &[mb.sge(0, 4096)],
    }])
    .unwrap();
    let remote = |at: u64| (mb.addr() + at, mb.rkey());
    let ops = [
        SendOp::Write {
            remote_addr: remote(0).0,
            rkey: remote(0).1,
        },
        SendOp::Read {
            remote_addr: remote(8192).0,
            rkey: remote(8192).1,
        },
        SendOp::Send,
        SendOp::FetchAdd {
            remote_addr: remote(32768).0,
            rkey: remote(32768).1,
            add: 5,
        },
        SendOp::CompareSwap {
            remote_addr: remote(32768).0,
            rkey: remote(32768).1,
            compare: 5,
            swap: 9,
        },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let length = if matches!(op, SendOp::FetchAdd { .. } | SendOp::CompareSwap { .. }) {
            8
        } else {
            3001
        };
        qa.post_send(&[SendWr {
            wr_id: i as u64,
            op,
            sg_list: &[ma.sge(40960, length)],
            signaled: true,
            solicited: false,
        }])
        .unwrap();
        let mut wc = [WorkCompletion::default()];
        assert_eq!(ca.poll_wait(&mut wc, Duration::from_secs(10)), 1);
        assert_eq!(wc[0].status, WcStatus::Success, "op {i}");
    }
    drop((ma, mb));
    bufs[1].clear();
}

#[test]
fn the_projects_own_traffic_checks_clean() {
    let Some(capture) = Capture::on_loopback() else {
        // CI runs as root and sets this, so there the test cannot skip.
        assert!(
            std::env::var_os("REQUIRE_PACKET_CAPTURE").is_none(),
            "REQUIRE_PACKET_CAPTURE is set but no packet socket could be opened"
        );
        eprintln!("skipped: a packet socket on lo needs CAP_NET_RAW");
        return;
    };
    traffic(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
    );
    std::thread::sleep(Duration::from_millis(100));
    let frames = capture.drain();
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
    for f in &frames {
        w.write_packet(&PcapPacket::new(Duration::ZERO, f.len() as u32, f))
            .unwrap();
    }
    let file = w.into_writer();
    let mut out = Vec::new();
    let outcome = dump::run(
        &file,
        Options {
            check: true,
            ..Options::default()
        },
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    eprint!("{text}");
    assert!(outcome.passed(), "{text}");
    let c = outcome.counts;
    // Every operation and its responses: 3 WRITE and 3 SEND packets (3001
    // bytes at MTU 1024), a READ request and 3 responses, 2 atomics and
    // their acknowledgements, and ACKs.
    assert!(c.roce >= 16, "{text}");
    assert_eq!(
        (c.icrc_good, c.icrc_bad, c.reemit_mismatches),
        (c.roce, 0, 0)
    );
    // Other processes' loopback traffic may be in the capture too; it is
    // counted as frames but never as RoCEv2.
    assert!(c.frames >= c.roce);
}
