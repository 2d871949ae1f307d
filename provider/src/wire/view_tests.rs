//! The view against the reprs: on the kernel-rxe capture, on seeded random
//! bytes, on truncated packets, and field by field through its setters.

use super::{
    AethRepr, AtomicAckEthRepr, AtomicEthRepr, BthRepr, ICRC_LEN, Opcode, Packet, PacketRepr,
    RethRepr, Syndrome, WireError,
};

/// The opcodes with a layout.
pub(super) fn known_opcodes() -> Vec<Opcode> {
    (0..=255)
        .map(Opcode)
        .filter(|o| o.layout().is_some())
        .collect()
}

/// A seeded xorshift generator.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(super) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Every field the view decodes equals the repr's, for a checked packet.
fn assert_view_matches(p: &Packet<&[u8]>, r: &PacketRepr<'_>) {
    let bth = BthRepr {
        opcode: p.opcode(),
        solicited: p.solicited(),
        mig_req: p.mig_req(),
        pad: p.pad(),
        tver: p.tver(),
        pkey: p.pkey(),
        fecn: p.fecn(),
        becn: p.becn(),
        resv6a: p.resv6a(),
        dest_qp: p.dest_qp(),
        ack_req: p.ack_req(),
        resv7: p.resv7(),
        psn: p.psn(),
    };
    assert_eq!(bth, r.bth);
    let reth = p.reth_va().map(|va| RethRepr {
        va,
        rkey: p.reth_rkey().unwrap(),
        len: p.reth_dma_len().unwrap(),
    });
    assert_eq!(reth, r.reth);
    let atomic_eth = p.atomic_va().map(|va| AtomicEthRepr {
        va,
        rkey: p.atomic_rkey().unwrap(),
        swap_add: p.atomic_swap_add().unwrap(),
        compare: p.atomic_compare().unwrap(),
    });
    assert_eq!(atomic_eth, r.atomic_eth);
    let aeth = p.aeth_syndrome_raw().map(|syndrome| AethRepr {
        syndrome,
        msn: p.aeth_msn().unwrap(),
    });
    assert_eq!(aeth, r.aeth);
    assert_eq!(p.aeth_syndrome(), r.aeth.map(|a| a.decode()));
    let orig = p.atomic_ack_orig();
    assert_eq!(orig.map(|orig| AtomicAckEthRepr { orig }), r.atomic_ack_eth);
    assert_eq!((p.immdt(), p.ieth_rkey()), (r.immdt, r.ieth));
    assert_eq!(p.payload(), r.payload);
    assert_eq!(p.pad_bytes(), &r.pad_bytes[..usize::from(r.bth.pad)]);
    assert_eq!(Ok(p.header_len()), r.header_len());
    assert_eq!(Ok(p.as_bytes().len()), r.len());
    let bytes = p.as_bytes();
    let trailer = &bytes[bytes.len() - ICRC_LEN..];
    assert_eq!(p.icrc_trailer().to_le_bytes(), trailer);
}

#[test]
fn every_golden_frame_reads_the_same_through_the_view() {
    let frames: Vec<&[u8]> = super::golden::frames().iter().map(|f| f.payload).collect();
    assert_eq!(frames.len(), 615);
    for (i, f) in frames.iter().enumerate() {
        let p = Packet::new_checked(*f).unwrap_or_else(|e| panic!("frame {i}: {e}"));
        assert_view_matches(&p, &PacketRepr::parse(f).unwrap());
        assert_eq!(p.into_inner(), *f);
    }
}

/// What `PacketRepr::parse` must decide, restated from the rules rather
/// than shared with the code under test.
fn expected_verdict(buf: &[u8]) -> Result<(), WireError> {
    let truncated = |what, need| WireError::Truncated {
        what,
        need,
        have: buf.len(),
    };
    if buf.len() < 12 {
        return Err(truncated("BTH", 12));
    }
    if buf[1] & 0xf != 0 {
        return Err(WireError::BadVersion(buf[1] & 0xf));
    }
    let layout = Opcode(buf[0])
        .layout()
        .ok_or(WireError::UnknownOpcode(buf[0]))?;
    let need = 12 + layout.ext_len() + 4;
    let data = buf
        .len()
        .checked_sub(need)
        .ok_or(truncated("headers and ICRC", need))?;
    let pad = (buf[1] >> 4) & 3;
    match (layout.payload, data, pad) {
        (false, 1.., 0) => Err(WireError::UnexpectedPayload(Opcode(buf[0]), data)),
        (false, 1.., _) => Err(WireError::BadPad { pad, payload: data }),
        _ if data < usize::from(pad) => Err(WireError::BadPad { pad, payload: data }),
        _ => Ok(()),
    }
}

#[test]
fn random_bytes_never_panic_and_agree_with_the_repr() {
    let opcodes = known_opcodes();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = vec![0usize; opcodes.len()];
    let mut errors = [0usize; 5];
    for round in 0..200_000 {
        let len = rng.below(200);
        let mut bytes = rng.bytes(len);
        if round % 3 > 0 && bytes.len() >= 2 {
            let i = rng.below(opcodes.len());
            bytes[0] = opcodes[i].0;
            bytes[1] &= 0xf0;
            if round % 3 == 2 {
                // Exactly the headers and ICRC, plus 0..=3 bytes.
                let len = 12 + opcodes[i].layout().unwrap().ext_len() + 4 + rng.below(4);
                bytes.resize(len, 0x5a);
            }
        }
        let view = Packet::new_checked(&bytes[..]);
        let repr = PacketRepr::parse(&bytes);
        assert_eq!(view.map(|_| ()), repr.map(|_| ()), "{bytes:02x?}");
        assert_eq!(view.map(|_| ()), expected_verdict(&bytes), "{bytes:02x?}");
        match (view, repr) {
            (Ok(p), Ok(r)) => {
                assert_view_matches(&p, &r);
                accepted[opcodes.iter().position(|&o| o == p.opcode()).unwrap()] += 1;
            }
            (Err(e), _) => {
                errors[match e {
                    WireError::Truncated { .. } => 0,
                    WireError::BadVersion(_) => 1,
                    WireError::UnknownOpcode(_) => 2,
                    WireError::BadPad { .. } => 3,
                    _ => 4,
                }] += 1;
            }
            _ => unreachable!(),
        }
    }
    assert!(accepted.iter().all(|&n| n > 100), "{accepted:?}");
    assert!(errors.iter().all(|&n| n > 100), "{errors:?}");
}

#[test]
fn truncated_packets_of_every_layout_are_rejected() {
    for opcode in known_opcodes() {
        let layout = opcode.layout().unwrap();
        let full = 12 + layout.ext_len() + 4;
        let mut buf = vec![0u8; full];
        buf[0] = opcode.0;
        assert!(Packet::new_checked(&buf[..]).is_ok(), "{opcode}");
        for cut in 0..full {
            let (what, need) = if cut < 12 {
                ("BTH", 12)
            } else {
                ("headers and ICRC", full)
            };
            let expected = WireError::Truncated {
                what,
                need,
                have: cut,
            };
            assert_eq!(Packet::new_checked(&buf[..cut]), Err(expected), "{opcode}");
        }
    }
}

/// A field of the view: its width in bits, and how to read and write it.
struct Field {
    name: &'static str,
    bits: u32,
    get: fn(&Packet<&mut [u8]>) -> Option<u64>,
    set: fn(&mut Packet<&mut [u8]>, u64),
}

/// Field values as `u64`, whatever their type.
trait Bits: Sized {
    fn to_u64(self) -> Option<u64>;
    fn from_u64(v: u64) -> Self;
}

macro_rules! bits {
    ($($t:ty),*) => {$(
        impl Bits for $t {
            fn to_u64(self) -> Option<u64> {
                Some(self as u64)
            }
            fn from_u64(v: u64) -> Self {
                v as $t
            }
        }
    )*};
}
bits!(u8, u16, u32, u64);

impl Bits for bool {
    fn to_u64(self) -> Option<u64> {
        Some(self.into())
    }
    fn from_u64(v: u64) -> Self {
        v != 0
    }
}

impl<T: Bits> Bits for Option<T> {
    fn to_u64(self) -> Option<u64> {
        self.and_then(T::to_u64)
    }
    fn from_u64(v: u64) -> Self {
        Some(T::from_u64(v))
    }
}

macro_rules! fields {
    ($($get:ident, $set:ident, $bits:literal;)*) => {
        vec![$(Field {
            name: stringify!($get),
            bits: $bits,
            get: |p| Bits::to_u64(p.$get()),
            set: |p, v| p.$set(Bits::from_u64(v)),
        },)*]
    };
}

/// Every field but the opcode and the payload.
fn all_fields() -> Vec<Field> {
    fields![
        solicited, set_solicited, 1;
        mig_req, set_mig_req, 1;
        pad, set_pad, 2;
        tver, set_tver, 4;
        pkey, set_pkey, 16;
        fecn, set_fecn, 1;
        becn, set_becn, 1;
        resv6a, set_resv6a, 6;
        dest_qp, set_dest_qp, 24;
        ack_req, set_ack_req, 1;
        resv7, set_resv7, 7;
        psn, set_psn, 24;
        icrc_trailer, set_icrc_trailer, 32;
        reth_va, set_reth_va, 64;
        reth_rkey, set_reth_rkey, 32;
        reth_dma_len, set_reth_dma_len, 32;
        atomic_va, set_atomic_va, 64;
        atomic_rkey, set_atomic_rkey, 32;
        atomic_swap_add, set_atomic_swap_add, 64;
        atomic_compare, set_atomic_compare, 64;
        aeth_syndrome_raw, set_aeth_syndrome_raw, 8;
        aeth_msn, set_aeth_msn, 24;
        atomic_ack_orig, set_atomic_ack_orig, 64;
        immdt, set_immdt, 32;
        ieth_rkey, set_ieth_rkey, 32;
    ]
}

#[test]
fn setters_round_trip_and_touch_nothing_else() {
    let fields = all_fields();
    let mut rng = Rng(7);
    for opcode in known_opcodes() {
        // Room for any pad: 7 bytes after the headers.
        let len = 12 + opcode.layout().unwrap().ext_len() + 7 + ICRC_LEN;
        for _ in 0..50 {
            let mut buf = rng.bytes(len);
            buf[0] = opcode.0;
            let mut p = Packet::new_unchecked(&mut buf[..]);
            for f in &fields {
                let Some(_) = (f.get)(&p) else {
                    continue;
                };
                let before_bytes = p.as_bytes().to_vec();
                let before: Vec<_> = fields.iter().map(|g| (g.get)(&p)).collect();
                let value = rng.next() & (u64::MAX >> (64 - f.bits));
                (f.set)(&mut p, value);
                assert_eq!((f.get)(&p), Some(value), "{opcode} {}", f.name);
                for (g, old) in fields.iter().zip(&before) {
                    if g.name != f.name {
                        assert_eq!((g.get)(&p), *old, "{opcode}: {} changed {}", f.name, g.name);
                    }
                }
                let changed: Vec<usize> = (0..len)
                    .filter(|&i| p.as_bytes()[i] != before_bytes[i])
                    .collect();
                if let (Some(first), Some(last)) = (changed.first(), changed.last()) {
                    assert!(last - first < f.bits.div_ceil(8) as usize, "{}", f.name);
                }
            }
            // The payload lies between the headers and the pad.
            let header_len = p.header_len();
            let pad = usize::from(p.pad());
            let fill = rng.bytes(7 - pad);
            p.payload_mut().copy_from_slice(&fill);
            assert_eq!(&buf[header_len..header_len + 7 - pad], &fill[..]);
        }
    }
}

#[test]
fn the_decoded_syndrome_round_trips() {
    let mut buf = [0u8; 20];
    let mut p = Packet::new_unchecked(&mut buf[..]);
    p.set_opcode(Opcode::RC_ACKNOWLEDGE);
    p.set_aeth_msn(0x12_3456);
    p.set_aeth_syndrome(Syndrome::RnrNak { timer: 14 });
    assert_eq!(p.aeth_syndrome(), Some(Syndrome::RnrNak { timer: 14 }));
    assert_eq!(
        (p.aeth_syndrome_raw(), p.aeth_msn()),
        (Some(0x2e), Some(0x12_3456))
    );
    assert_eq!(p.reth_va(), None);
    assert!(Packet::new_checked(&buf[..]).is_ok());
}

#[test]
#[should_panic(expected = "RC_SEND_ONLY carries no Reth")]
fn setting_a_header_the_opcode_lacks_panics() {
    let mut buf = [0u8; 16];
    buf[0] = Opcode::RC_SEND_ONLY.0;
    Packet::new_unchecked(&mut buf[..]).set_reth_rkey(1);
}
