//! [`PacketRepr`]: examples of every layout, malformed input, and property
//! tests holding [`PacketRepr::emit`] and [`PacketRepr::parse`] to each
//! other: seeded random reprs of every opcode (and of unknown ones),
//! with arbitrary header values, payload lengths and pads, some of them
//! contradicting their opcode in one or more ways. Whatever `emit`
//! accepts parses back to the same repr; every contradiction is refused
//! and leaves the buffer untouched.

use super::opcode::Ext;
use super::view_tests::{Rng, known_opcodes};
use super::{
    AethRepr, AtomicAckEthRepr, AtomicEthRepr, BthRepr, ICRC_LEN, Layout, NakCode, Opcode,
    PacketRepr, RethRepr, Syndrome, WireError,
};

/// Reprs generated per test.
const CASES: usize = 60_000;

/// A random repr and whether it is consistent with its opcode (the
/// generator's own account of every deviation it made).
struct Case<'a> {
    repr: PacketRepr<'a>,
    valid: bool,
}

/// Draws reprs, each rule broken with a small probability.
struct Gen {
    rng: Rng,
    opcodes: Vec<Opcode>,
}

impl Gen {
    fn new(seed: u64) -> Self {
        Gen {
            rng: Rng(seed),
            opcodes: known_opcodes(),
        }
    }

    /// True once in `n` draws.
    fn one_in(&mut self, n: usize) -> bool {
        self.rng.below(n) == 0
    }

    /// A value of `bits` bits, or (once in 40 draws, recorded in `valid`)
    /// a wider one that still fits a `u{width}`.
    fn field(&mut self, bits: u32, width: u32, valid: &mut bool) -> u32 {
        let v = (self.rng.next() as u32) >> (32 - width);
        if self.one_in(40) && v >> bits != 0 {
            *valid = false;
            v
        } else {
            v & ((1 << bits) - 1)
        }
    }

    fn case<'a>(&mut self, payload_pool: &'a [u8]) -> Case<'a> {
        let mut valid = true;
        let opcode = if self.one_in(20) {
            Opcode(self.rng.next() as u8)
        } else {
            self.opcodes[self.rng.below(self.opcodes.len())]
        };
        // Unknown opcodes get the headers of a random known one.
        let layout = opcode.layout().unwrap_or_else(|| {
            valid = false;
            let other = self.opcodes[self.rng.below(self.opcodes.len())];
            other.layout().unwrap_or(Layout::NONE)
        });
        let payload_len = if layout.payload {
            self.rng.below(payload_pool.len() + 1)
        } else if self.one_in(20) {
            valid = false;
            1 + self.rng.below(8)
        } else {
            0
        };
        let bth = self.bth(opcode, layout, &mut valid);
        let mut pad_bytes = [0u8; 3];
        let used = usize::from(bth.pad).min(3);
        pad_bytes[..used].copy_from_slice(&self.rng.bytes(used));
        let mut repr = PacketRepr::new(bth, &payload_pool[..payload_len]);
        repr.pad_bytes = pad_bytes;
        self.extended_headers(&mut repr, layout, &mut valid);
        Case { repr, valid }
    }

    fn bth(&mut self, opcode: Opcode, layout: Layout, valid: &mut bool) -> BthRepr {
        let tver = if self.one_in(40) {
            *valid = false;
            1 + self.rng.below(255) as u8
        } else {
            0
        };
        let pad = if layout.payload {
            self.field(2, 8, valid) as u8
        } else if self.one_in(20) {
            *valid = false;
            1 + self.rng.below(3) as u8
        } else {
            0
        };
        let bits = self.rng.next();
        BthRepr {
            opcode,
            solicited: bits & 1 != 0,
            mig_req: bits & 2 != 0,
            pad,
            tver,
            pkey: (bits >> 8) as u16,
            fecn: bits & 4 != 0,
            becn: bits & 8 != 0,
            resv6a: self.field(6, 8, valid) as u8,
            dest_qp: self.field(24, 32, valid),
            ack_req: bits & 16 != 0,
            resv7: self.field(7, 8, valid) as u8,
            psn: self.field(24, 32, valid),
        }
    }

    /// Sets the headers of `layout`, each one flipped (added or left out)
    /// once in 30 draws.
    fn extended_headers(&mut self, r: &mut PacketRepr<'_>, layout: Layout, valid: &mut bool) {
        for ext in Ext::ALL {
            let mut present = layout.has(ext);
            if self.one_in(30) {
                present = !present;
                *valid = false;
            }
            if !present {
                continue;
            }
            let (a, b, c) = (self.rng.next(), self.rng.next(), self.rng.next());
            match ext {
                Ext::Reth => {
                    r.reth = Some(RethRepr {
                        va: a,
                        rkey: b as u32,
                        len: (b >> 32) as u32,
                    });
                }
                Ext::AtomicEth => {
                    r.atomic_eth = Some(AtomicEthRepr {
                        va: a,
                        rkey: b as u32,
                        swap_add: c,
                        compare: b.rotate_left(17),
                    });
                }
                Ext::Aeth => {
                    r.aeth = Some(AethRepr {
                        syndrome: a as u8,
                        msn: self.field(24, 32, valid),
                    });
                }
                Ext::AtomicAckEth => r.atomic_ack_eth = Some(AtomicAckEthRepr { orig: a }),
                Ext::ImmDt => r.immdt = Some(a as u32),
                Ext::Ieth => r.ieth = Some(a as u32),
            }
        }
    }
}

/// Emits `r` into a buffer of `r.len()` bytes, the ICRC bytes left as
/// they are (`parse` does not check their value).
fn emit(r: &PacketRepr<'_>) -> Vec<u8> {
    let len = r.len().expect("a valid repr has a length");
    let mut buf = vec![0u8; len];
    let n = r.emit(&mut buf).expect("a valid repr emits");
    assert_eq!(n + ICRC_LEN, len);
    buf
}

#[test]
fn whatever_emit_accepts_parses_back_to_the_same_repr() {
    let pool: Vec<u8> = Rng(3).bytes(300);
    let mut g = Gen::new(0x5eed_0f9a_c4e7);
    let mut accepted = vec![0usize; 256];
    for _ in 0..CASES {
        let Case { repr, valid } = g.case(&pool);
        if repr.check().is_err() {
            continue;
        }
        assert!(valid, "emit accepts a contradiction: {repr:?}");
        let bytes = emit(&repr);
        assert_eq!(PacketRepr::parse(&bytes), Ok(repr));
        // The headers alone are the same prefix.
        let header_len = repr.header_len().unwrap();
        let mut headers = vec![0u8; header_len];
        assert_eq!(repr.emit_headers(&mut headers), Ok(header_len));
        assert_eq!(headers[..], bytes[..header_len]);
        accepted[usize::from(repr.bth.opcode.0)] += 1;
    }
    for opcode in known_opcodes() {
        assert!(accepted[usize::from(opcode.0)] > 100, "{opcode}: too few");
    }
}

#[test]
fn reprs_that_contradict_their_opcode_are_refused() {
    let pool: Vec<u8> = Rng(5).bytes(300);
    let mut g = Gen::new(0xbad_c0de_1234_5678);
    let mut refused = 0;
    for _ in 0..CASES {
        let Case { repr, valid } = g.case(&pool);
        if valid {
            assert_eq!(repr.check().map(|_| ()), Ok(()), "{repr:?}");
            continue;
        }
        refused += 1;
        let err = repr.check().expect_err("a contradiction is refused");
        assert_eq!(repr.len(), Err(err));
        assert_eq!(repr.is_empty(), Err(err));
        let mut buf = vec![0xa5u8; 400];
        assert_eq!(repr.emit(&mut buf), Err(err));
        assert!(buf.iter().all(|&b| b == 0xa5), "emit wrote on refusal");
        // emit_headers refuses the same, unless the payload rule alone is
        // broken (it leaves the payload to its caller).
        match (repr.emit_headers(&mut buf), err) {
            (Ok(_), WireError::UnexpectedPayload(..)) => {}
            (got, _) => assert_eq!(got, Err(err), "{repr:?}"),
        }
    }
    assert!(refused > CASES / 10, "{refused} contradictions only");
}

#[test]
fn each_kind_of_contradiction_has_its_error() {
    let payload = [7u8; 5];
    let write = |r: &mut PacketRepr<'_>| {
        r.reth = Some(RethRepr {
            va: 1,
            rkey: 2,
            len: 5,
        });
    };
    let mut base = PacketRepr::new(
        BthRepr {
            pad: PacketRepr::pad_for(5),
            ..BthRepr::new(Opcode::RC_RDMA_WRITE_ONLY, 1, 2)
        },
        &payload,
    );
    write(&mut base);
    assert!(base.check().is_ok());
    emit(&base);

    let mut no_reth = base;
    no_reth.reth = None;
    assert_eq!(
        no_reth.check().map(|_| ()),
        Err(WireError::HeaderMismatch {
            opcode: Opcode::RC_RDMA_WRITE_ONLY,
            header: "RETH",
            required: true,
        })
    );
    let mut extra_imm = base;
    extra_imm.immdt = Some(9);
    assert!(matches!(
        extra_imm.emit(&mut [0; 64]),
        Err(WireError::HeaderMismatch {
            header: "ImmDt",
            required: false,
            ..
        })
    ));
    let mut psn = base;
    psn.bth.psn = 1 << 24;
    assert!(matches!(
        psn.emit(&mut [0; 64]),
        Err(WireError::FieldOverflow {
            field: "BTH PSN",
            ..
        })
    ));
    let mut version = base;
    version.bth.tver = 1;
    assert_eq!(version.len(), Err(WireError::BadVersion(1)));
    let mut unknown = base;
    unknown.bth.opcode = Opcode(0x15);
    assert_eq!(unknown.header_len(), Err(WireError::UnknownOpcode(0x15)));

    let mut read = PacketRepr::new(BthRepr::new(Opcode::RC_RDMA_READ_REQUEST, 1, 2), &payload);
    write(&mut read);
    assert_eq!(
        read.emit(&mut [0; 64]),
        Err(WireError::UnexpectedPayload(
            Opcode::RC_RDMA_READ_REQUEST,
            5
        ))
    );
    read.payload = &[];
    read.bth.pad = 2;
    assert!(matches!(
        read.emit(&mut [0; 64]),
        Err(WireError::BadPad { pad: 2, .. })
    ));
    read.bth.pad = 0;
    assert_eq!(
        PacketRepr::parse(&emit(&read)).map(|p| p.reth),
        Ok(read.reth)
    );
}

fn bth(opcode: Opcode, pad: u8) -> BthRepr {
    BthRepr {
        opcode,
        solicited: false,
        mig_req: false,
        pad,
        tver: 0,
        pkey: 0xffff,
        fecn: false,
        becn: false,
        resv6a: 0,
        dest_qp: 0x11,
        ack_req: true,
        resv7: 0,
        psn: 0x9e_323c,
    }
}

fn roundtrip(p: &PacketRepr<'_>) {
    let mut buf = vec![0u8; p.len().unwrap()];
    let n = p.emit(&mut buf).unwrap();
    assert_eq!(Ok(n + ICRC_LEN), p.len());
    assert_eq!(&PacketRepr::parse(&buf).unwrap(), p);
}

#[test]
fn every_layout_round_trips() {
    let payload = [1u8, 2, 3, 4, 5];
    roundtrip(&PacketRepr {
        bth: bth(
            Opcode::RC_RDMA_WRITE_ONLY_WITH_IMMEDIATE,
            PacketRepr::pad_for(5),
        ),
        reth: Some(RethRepr {
            va: 0x5569_979b_3000,
            rkey: 0x2da,
            len: 5,
        }),
        atomic_eth: None,
        aeth: None,
        atomic_ack_eth: None,
        immdt: Some(0xdead_beef),
        ieth: None,
        payload: &payload,
        pad_bytes: [0; 3],
    });
    roundtrip(&PacketRepr {
        bth: bth(Opcode::RC_ATOMIC_ACKNOWLEDGE, 0),
        reth: None,
        atomic_eth: None,
        aeth: Some(AethRepr::new(Syndrome::Ack { credits: 31 }, 7)),
        atomic_ack_eth: Some(AtomicAckEthRepr { orig: 42 }),
        immdt: None,
        ieth: None,
        payload: &[],
        pad_bytes: [0; 3],
    });
    roundtrip(&PacketRepr {
        bth: bth(Opcode::RC_COMPARE_SWAP, 0),
        reth: None,
        atomic_eth: Some(AtomicEthRepr {
            va: 8,
            rkey: 9,
            swap_add: 10,
            compare: 11,
        }),
        aeth: None,
        atomic_ack_eth: None,
        immdt: None,
        ieth: None,
        payload: &[],
        pad_bytes: [0; 3],
    });
}

#[test]
fn syndromes_decode_and_encode() {
    for s in [
        Syndrome::Ack { credits: 31 },
        Syndrome::RnrNak { timer: 14 },
        Syndrome::Nak(NakCode::PsnSequenceError),
        Syndrome::Nak(NakCode::RemoteAccessError),
        Syndrome::Nak(NakCode::Other(9)),
    ] {
        assert_eq!(AethRepr::new(s, 5).decode(), s);
    }
    assert_eq!(
        AethRepr::new(Syndrome::Nak(NakCode::InvalidRequest), 0).syndrome,
        0x61
    );
}

#[test]
fn malformed_packets_are_errors_not_panics() {
    let ack = [
        0x11u8, 0, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 1, 0x1f, 0, 0, 1, 0, 0, 0, 0,
    ];
    assert!(PacketRepr::parse(&ack).is_ok());
    for cut in 0..ack.len() {
        assert!(
            matches!(
                PacketRepr::parse(&ack[..cut]),
                Err(WireError::Truncated { .. })
            ),
            "{cut}"
        );
    }
    let mut unknown = ack;
    unknown[0] = 0x15;
    assert_eq!(
        PacketRepr::parse(&unknown),
        Err(WireError::UnknownOpcode(0x15))
    );
    let mut version = ack;
    version[1] = 0x01;
    assert_eq!(PacketRepr::parse(&version), Err(WireError::BadVersion(1)));
    let mut ack_with_data = ack.to_vec();
    ack_with_data.splice(16..16, [9, 9]);
    assert!(matches!(
        PacketRepr::parse(&ack_with_data),
        Err(WireError::UnexpectedPayload(..))
    ));
    // SEND_ONLY claiming 3 pad bytes with 2 bytes after its BTH.
    let send = [
        0x04u8, 0x30, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 1, 7, 7, 0, 0, 0, 0,
    ];
    assert!(matches!(
        PacketRepr::parse(&send),
        Err(WireError::BadPad { pad: 3, payload: 2 })
    ));
    // Every byte string of up to 3 bytes after a valid prefix, and
    // random garbage, parse or fail without panicking.
    let mut seed = 0x1234_5678u32;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let len = (seed % 80) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|i| (seed.rotate_left(i as u32) >> 3) as u8)
            .collect();
        let _ = PacketRepr::parse(&bytes);
    }
}
