//! Hand-built RoCEv2 packets from plain UDP sockets: what hostile and
//! misbehaving peers send.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use odp::AddressSpace;
use provider::wire::{AethRepr, BthRepr, ICRC_LEN, Opcode, PacketRepr};
use provider::{AccessFlags, Context, Gid, Mtu, RecvWr, RemoteInfo};

use super::LOCALHOST;

/// The first PSN a [`Target`] expects from its peer.
pub const TARGET_PSN: u32 = 100;

/// A plain UDP socket on `ip` (any port) that waits 200 ms for answers.
pub fn socket(ip: IpAddr) -> UdpSocket {
    let sock = UdpSocket::bind((ip, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sock
}

/// What hand-built packets are aimed at: a device on 127.0.0.1 with one
/// queue pair connected to `peer` (its QPN 0x77, expecting PSN
/// [`TARGET_PSN`]) with one receive posted, and a fresh ODP region that
/// grants local write, remote write and remote read.
pub struct Target {
    pub ctx: Context,
    pub qp: provider::QueuePair,
    pub mr: provider::MemoryRegion,
    pub buf: odp::Mapping,
    pub cq: provider::CompletionQueue,
    pub pd: provider::ProtectionDomain,
}

impl Target {
    /// A target for `peer` at `mtu` over `len` bytes.
    pub fn new(peer: SocketAddr, len: usize, mtu: Mtu) -> Target {
        let ctx = Context::open_with_port(LOCALHOST, 0).unwrap();
        let pd = ctx.alloc_pd().unwrap();
        let cq = ctx.create_cq(64).unwrap();
        let qp = pd.create_qp(&cq, &cq).build().unwrap();
        qp.to_init().unwrap();
        qp.post_recv(&[RecvWr {
            wr_id: 1,
            sg_list: &[],
        }])
        .unwrap();
        qp.connect(&RemoteInfo {
            qp_num: 0x77,
            psn: TARGET_PSN,
            gid: Gid::from_ip(peer.ip()),
            port: peer.port(),
            mtu,
        })
        .unwrap();
        let buf = AddressSpace::process().map_anonymous(len, 0).unwrap();
        let access = AccessFlags::LOCAL_WRITE
            | AccessFlags::REMOTE_WRITE
            | AccessFlags::REMOTE_READ
            | AccessFlags::ON_DEMAND;
        // SAFETY: the mapping outlives the region (fields drop in order)
        // and backs no Rust objects.
        let mr = unsafe { pd.reg_mr(buf.addr(), len, access) }.unwrap();
        Target {
            ctx,
            qp,
            mr,
            buf,
            cq,
            pd,
        }
    }
}

/// Appends the ICRC a Linux IPv4 sender (ID 0, DF) would produce.
pub fn seal(src: SocketAddr, dst: SocketAddr, mut roce: Vec<u8>) -> Vec<u8> {
    roce.extend_from_slice(&[0; ICRC_LEN]);
    provider::net::seal(&src, &dst, 0, &mut roce).unwrap();
    roce
}

/// A BTH for `dest_qp` at `psn` asking for an acknowledgement.
pub fn bth(opcode: Opcode, dest_qp: u32, psn: u32, payload: usize) -> BthRepr {
    BthRepr {
        pad: PacketRepr::pad_for(payload),
        ack_req: true,
        ..BthRepr::new(opcode, dest_qp, psn)
    }
}

/// Headers, payload and pad (the ICRC is added by `seal`).
pub fn packet(h: PacketRepr<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; h.len().expect("test packets match their opcode")];
    let n = h.emit(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// The responses the device sends back to the attacker socket.
pub fn responses(sock: &UdpSocket) -> Vec<AethRepr> {
    let mut buf = [0u8; 2048];
    let mut out = Vec::new();
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        if let Ok(p) = PacketRepr::parse(&buf[..n])
            && let Some(a) = p.aeth
        {
            out.push(a);
        }
    }
    out
}
