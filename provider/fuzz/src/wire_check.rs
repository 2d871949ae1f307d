//! The wire parser on arbitrary bytes. Properties, not only "no panic":
//!
//! - the zero-copy view ([`Packet::new_checked`]) and the repr
//!   ([`PacketRepr::parse`]) accept and reject the same buffers, with the
//!   same error;
//! - on an accepted buffer every view getter agrees with the repr;
//! - the repr emits exactly the bytes it was parsed from (ICRC aside, which
//!   the emitter leaves to the caller), and those bytes parse to the same
//!   repr;
//! - writing every field back through the view's setters changes no byte;
//! - the IP/UDP encapsulation parsers accept only what they can hand on,
//!   and the ICRC of what they accept can be computed.
//!
//! Every failed property panics, which is what the fuzzer and the
//! regression tests catch.

use provider::wire::{
    AethRepr, AtomicAckEthRepr, AtomicEthRepr, BthRepr, ICRC_LEN, Packet, PacketRepr, RethRepr,
    UdpDatagram, ip_of_ethernet,
};

/// Runs every check on `data`.
pub fn check(data: &[u8]) {
    transport(data);
    encapsulation(data);
}

/// The transport parsers on `data` taken as a UDP payload.
fn transport(data: &[u8]) {
    let view = Packet::new_checked(data);
    let repr = PacketRepr::parse(data);
    match (view, repr) {
        (Err(a), Err(b)) => assert_eq!(a, b, "view and repr reject differently"),
        (Ok(view), Ok(repr)) => {
            view_matches_repr(&view, &repr);
            reemits_exactly(data, &repr);
            setters_keep_every_byte(data);
        }
        (view, repr) => panic!("view and repr disagree: {view:?} / {repr:?}"),
    }
    // The BTH parser alone accepts whatever holds a version-0 BTH.
    if let Ok(bth) = BthRepr::parse(data) {
        assert_eq!(bth.tver, 0);
        let mut out = [0u8; BthRepr::LEN];
        bth.emit(&mut out);
        assert_eq!(out, data[..BthRepr::LEN], "BTH re-emits differently");
    }
}

/// Every getter of a checked view against the repr parsed from it.
fn view_matches_repr(v: &Packet<&[u8]>, r: &PacketRepr<'_>) {
    let b = &r.bth;
    assert_eq!(
        (v.opcode(), v.solicited(), v.mig_req(), v.pad(), v.tver()),
        (b.opcode, b.solicited, b.mig_req, b.pad, b.tver)
    );
    assert_eq!(
        (v.pkey(), v.fecn(), v.becn(), v.resv6a(), v.dest_qp()),
        (b.pkey, b.fecn, b.becn, b.resv6a, b.dest_qp)
    );
    assert_eq!(
        (v.ack_req(), v.resv7(), v.psn()),
        (b.ack_req, b.resv7, b.psn)
    );
    let layout = v.layout().expect("a checked packet has a known opcode");
    assert_eq!(v.header_len(), BthRepr::LEN + layout.ext_len());
    assert_eq!(Ok(v.header_len()), r.header_len());
    let reth = v.reth_va().map(|va| RethRepr {
        va,
        rkey: v.reth_rkey().unwrap(),
        len: v.reth_dma_len().unwrap(),
    });
    assert_eq!(reth, r.reth);
    let atomic = v.atomic_va().map(|va| AtomicEthRepr {
        va,
        rkey: v.atomic_rkey().unwrap(),
        swap_add: v.atomic_swap_add().unwrap(),
        compare: v.atomic_compare().unwrap(),
    });
    assert_eq!(atomic, r.atomic_eth);
    let aeth = v.aeth_syndrome_raw().map(|syndrome| AethRepr {
        syndrome,
        msn: v.aeth_msn().unwrap(),
    });
    assert_eq!(aeth, r.aeth);
    if let Some(a) = aeth {
        assert_eq!(v.aeth_syndrome(), Some(a.decode()));
        // The decoded syndrome encodes back to the same byte.
        assert_eq!(
            AethRepr::new(a.decode(), a.msn),
            a,
            "AETH syndrome round trip"
        );
    }
    let ack = v.atomic_ack_orig().map(|orig| AtomicAckEthRepr { orig });
    assert_eq!(ack, r.atomic_ack_eth);
    assert_eq!(v.immdt(), r.immdt);
    assert_eq!(v.ieth_rkey(), r.ieth);
    // The presence of each header is what the opcode's layout says.
    assert_eq!(
        (
            r.reth.is_some(),
            r.atomic_eth.is_some(),
            r.aeth.is_some(),
            r.atomic_ack_eth.is_some(),
            r.immdt.is_some(),
            r.ieth.is_some()
        ),
        (
            layout.reth,
            layout.atomic_eth,
            layout.aeth,
            layout.atomic_ack_eth,
            layout.immdt,
            layout.ieth
        )
    );
    assert_eq!(v.payload(), r.payload);
    assert_eq!(v.pad_bytes(), &r.pad_bytes[..usize::from(b.pad)]);
    let _ = v.icrc_trailer();
}

/// Emitting the repr gives back the parsed bytes, which parse to the same
/// repr.
fn reemits_exactly(data: &[u8], r: &PacketRepr<'_>) {
    assert_eq!(r.check().map(|_| ()), Ok(()), "a parsed repr is valid");
    assert_eq!(
        r.len(),
        Ok(data.len()),
        "repr length differs from the packet's"
    );
    let mut out = vec![0u8; data.len()];
    let n = r
        .emit(&mut out)
        .expect("a buffer of len() bytes holds the packet");
    assert_eq!(n + ICRC_LEN, data.len(), "emit wrote a different length");
    assert_eq!(&out[..n], &data[..n], "re-emitted bytes differ");
    out[n..].copy_from_slice(&data[n..]);
    let again = PacketRepr::parse(&out).expect("re-emitted bytes parse");
    assert_eq!(&again, r, "re-emitted bytes parse to another repr");
    // Headers alone: the same prefix.
    let mut headers = vec![0u8; r.header_len().expect("a parsed repr is valid")];
    let h = r
        .emit_headers(&mut headers)
        .expect("header_len() bytes hold the headers");
    assert_eq!(&headers[..h], &data[..h]);
    // One byte short is an error, not a panic.
    if let Some(short) = out.len().checked_sub(1) {
        assert!(r.emit(&mut out[..short]).is_err());
    }
}

/// Reading each field through the view and writing it back through its
/// setter leaves the buffer unchanged.
fn setters_keep_every_byte(data: &[u8]) {
    let mut buf = data.to_vec();
    let mut p = Packet::new_checked(&mut buf[..]).expect("checked before");
    p.set_opcode(p.opcode());
    p.set_solicited(p.solicited());
    p.set_mig_req(p.mig_req());
    p.set_pad(p.pad());
    p.set_tver(p.tver());
    p.set_pkey(p.pkey());
    p.set_fecn(p.fecn());
    p.set_becn(p.becn());
    p.set_resv6a(p.resv6a());
    p.set_dest_qp(p.dest_qp());
    p.set_ack_req(p.ack_req());
    p.set_resv7(p.resv7());
    p.set_psn(p.psn());
    if let (Some(va), Some(rkey), Some(len)) = (p.reth_va(), p.reth_rkey(), p.reth_dma_len()) {
        p.set_reth_va(va);
        p.set_reth_rkey(rkey);
        p.set_reth_dma_len(len);
    }
    if let (Some(va), Some(rkey), Some(swap), Some(cmp)) = (
        p.atomic_va(),
        p.atomic_rkey(),
        p.atomic_swap_add(),
        p.atomic_compare(),
    ) {
        p.set_atomic_va(va);
        p.set_atomic_rkey(rkey);
        p.set_atomic_swap_add(swap);
        p.set_atomic_compare(cmp);
    }
    if let (Some(s), Some(msn)) = (p.aeth_syndrome(), p.aeth_msn()) {
        p.set_aeth_syndrome(s);
        p.set_aeth_msn(msn);
    }
    if let Some(orig) = p.atomic_ack_orig() {
        p.set_atomic_ack_orig(orig);
    }
    if let Some(imm) = p.immdt() {
        p.set_immdt(imm);
    }
    if let Some(rkey) = p.ieth_rkey() {
        p.set_ieth_rkey(rkey);
    }
    let payload = p.payload().to_vec();
    p.payload_mut().copy_from_slice(&payload);
    p.set_icrc_trailer(p.icrc_trailer());
    assert_eq!(buf, data, "a setter changed bytes it was given back");
}

/// The IP/UDP parsers on `data` taken as an Ethernet frame and as an IP
/// packet.
fn encapsulation(data: &[u8]) {
    if let Ok(ip) = ip_of_ethernet(data) {
        assert!(ip.len() <= data.len());
        let framed = UdpDatagram::from_ethernet(data);
        assert_eq!(framed, UdpDatagram::from_ip(ip));
    }
    let whole = UdpDatagram::from_ip(data);
    let cut = UdpDatagram::from_ip_cut(data);
    if let Ok(d) = &whole {
        // A whole datagram reads the same when cut short is allowed.
        assert_eq!(cut.as_ref().ok(), Some(d));
        assert_eq!(d.payload.len(), d.udp_payload_len());
    }
    for d in [whole, cut].into_iter().flatten() {
        assert!(d.payload.len() <= data.len());
        let _ = (d.is_roce(), d.udp_payload_len());
        match d.icrc() {
            Ok(_) => assert!(d.payload.len() >= BthRepr::LEN + ICRC_LEN),
            Err(_) => assert!(d.payload.len() < BthRepr::LEN + ICRC_LEN),
        }
        transport(d.payload);
    }
}
