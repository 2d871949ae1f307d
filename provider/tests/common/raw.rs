//! Hand-built RoCEv2 packets from plain UDP sockets: what hostile and
//! misbehaving peers send.

use std::net::{SocketAddr, UdpSocket};

use provider::wire::{AethRepr, BthRepr, ICRC_LEN, Opcode, PacketRepr};

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
    let mut buf = vec![0u8; h.len()];
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
